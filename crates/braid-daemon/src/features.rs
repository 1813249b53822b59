//! What the daemon can do where it runs, found out at start (and on
//! reload) rather than assumed: a feature that cannot work is off, with
//! the reason, in the status (`braid status` lists it) and the log, once.

use braid_kernel::probe::{self, Method};
use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// One entry of the status's `features` list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub name: Cow<'static, str>,
    pub on: bool,
    /// How it works here, when on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub how: Option<String>,
    /// Why it is off (or only partly on), with what would turn it on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
}

impl Feature {
    pub fn on(name: &'static str, how: impl Into<String>) -> Feature {
        Feature {
            name: Cow::Borrowed(name),
            on: true,
            how: Some(how.into()),
            why: None,
        }
    }

    pub fn off(name: &'static str, why: impl Into<String>) -> Feature {
        Feature {
            name: Cow::Borrowed(name),
            on: false,
            how: None,
            why: Some(why.into()),
        }
    }
}

/// How path probes (ICMP echoes) can be sent, per address family.
#[derive(Debug, Clone)]
pub struct ProbeSupport {
    /// `policy.probe_silent_paths`.
    pub wanted: bool,
    pub v4: Result<Method, String>,
    pub v6: Result<Method, String>,
}

const FIX: &str = "grant CAP_NET_RAW (the shipped unit does), or put the daemon's group within net.ipv4.ping_group_range";

impl ProbeSupport {
    pub fn detect(wanted: bool) -> ProbeSupport {
        if !wanted {
            let off = || Err("policy.probe_silent_paths = false".to_string());
            return ProbeSupport {
                wanted,
                v4: off(),
                v6: off(),
            };
        }
        ProbeSupport {
            wanted,
            v4: probe::detect(false),
            v6: probe::detect(true),
        }
    }

    /// Whether any probe can be sent (the policy decides probes only then).
    pub fn usable(&self) -> bool {
        self.v4.is_ok() || self.v6.is_ok()
    }

    pub fn method(&self, ipv6: bool) -> Result<Method, String> {
        if ipv6 { &self.v6 } else { &self.v4 }.clone()
    }

    /// The method for a family stopped working (the kernel refused the
    /// socket mid-run): find out again what works.
    pub fn redetect(&mut self, ipv6: bool) {
        let now = probe::detect(ipv6);
        if ipv6 {
            self.v6 = now;
        } else {
            self.v4 = now;
        }
    }

    pub fn feature(&self) -> Feature {
        const NAME: &str = "path_probe";
        if !self.wanted {
            return Feature::off(NAME, "policy.probe_silent_paths = false");
        }
        match (&self.v4, &self.v6) {
            (Ok(a), Ok(b)) if a == b => Feature::on(NAME, a.describe()),
            (Ok(a), Ok(b)) => Feature::on(
                NAME,
                format!("IPv4: {}; IPv6: {}", a.describe(), b.describe()),
            ),
            (Ok(a), Err(e)) => Feature {
                how: Some(format!("IPv4: {}", a.describe())),
                why: Some(format!("IPv6 paths are not probed: {e}")),
                ..Feature::on(NAME, "")
            },
            (Err(e), Ok(b)) => Feature {
                how: Some(format!("IPv6: {}", b.describe())),
                why: Some(format!("IPv4 paths are not probed: {e}")),
                ..Feature::on(NAME, "")
            },
            (Err(a), Err(b)) => {
                let why = if a == b {
                    a.clone()
                } else {
                    format!("IPv4: {a}; IPv6: {b}")
                };
                Feature::off(
                    NAME,
                    format!(
                        "{why}; silent receiving paths are not probed, so a download fails over only on the server's timeouts ({FIX})"
                    ),
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_feature_says_how_or_why() {
        let p = |v4, v6| ProbeSupport {
            wanted: true,
            v4,
            v6,
        };
        let f = p(Ok(Method::Raw), Ok(Method::Raw)).feature();
        assert!(f.on && f.how.as_deref().unwrap().contains("CAP_NET_RAW") && f.why.is_none());
        let f = p(Ok(Method::Datagram), Err("no v6".into())).feature();
        assert!(
            f.on && f
                .why
                .as_deref()
                .unwrap()
                .contains("IPv6 paths are not probed")
        );
        let f = p(Err("x".into()), Err("x".into())).feature();
        assert!(!f.on && f.why.as_deref().unwrap().starts_with("x; "));
        assert!(!p(Err("x".into()), Err("x".into())).usable());
        let off = ProbeSupport::detect(false);
        assert!(!off.usable());
        assert_eq!(
            off.feature().why.as_deref(),
            Some("policy.probe_silent_paths = false")
        );
    }
}
