//! Which mode a connection gets: rules matched on its owner and its
//! destination, first match wins, in the configuration's order.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::config::PathMode;

/// What is known about the process that owns a connection's socket. Any
/// part may be unknown (the socket's owner went away, or the lookup is
/// not allowed): a rule that asks about an unknown part does not match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub uid: Option<u32>,
    /// The cgroup v2 path, e.g. `/system.slice/ssh.service`.
    pub cgroup: Option<String>,
    /// The executable's file name, e.g. `ssh`.
    pub exe: Option<String>,
}

/// One `[[app]]` rule: every condition given must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppRule {
    /// A systemd unit: matches a cgroup whose last component is this name.
    pub unit: Option<String>,
    /// A cgroup path prefix (`/user.slice/user-1000.slice`).
    pub cgroup: Option<String>,
    pub exe: Option<String>,
    pub uid: Option<u32>,
    /// Destination port.
    pub dport: Option<u16>,
    /// Destination prefix, e.g. `203.0.113.0/24`.
    pub dst: Option<String>,
    pub mode: PathMode,
}

impl AppRule {
    /// A readable name for reasons: the conditions it checks.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        if let Some(u) = &self.unit {
            v.push(format!("unit {u}"));
        }
        if let Some(c) = &self.cgroup {
            v.push(format!("cgroup {c}"));
        }
        if let Some(e) = &self.exe {
            v.push(format!("exe {e}"));
        }
        if let Some(u) = self.uid {
            v.push(format!("uid {u}"));
        }
        if let Some(p) = self.dport {
            v.push(format!("dport {p}"));
        }
        if let Some(d) = &self.dst {
            v.push(format!("dst {d}"));
        }
        if v.is_empty() {
            "any connection".into()
        } else {
            v.join(", ")
        }
    }

    /// Whether the rule is well formed; the error says what to fix.
    pub fn validate(&self) -> Result<(), String> {
        if let Some(d) = &self.dst {
            parse_prefix(d)?;
        }
        if let Some(u) = &self.unit {
            if u.is_empty() || u.contains('/') {
                return Err(format!(
                    "unit '{u}' must be a unit name such as ssh.service (use cgroup for paths)"
                ));
            }
        }
        Ok(())
    }

    pub fn matches(&self, owner: &Owner, remote: SocketAddr) -> bool {
        let cgroup = owner.cgroup.as_deref();
        let unit_ok = |u: &String| cgroup.is_some_and(|c| c.rsplit('/').next() == Some(u));
        if self.unit.as_ref().is_some_and(|u| !unit_ok(u)) {
            return false;
        }
        if let Some(p) = &self.cgroup {
            let under = |c: &str| c == p || c.starts_with(&format!("{}/", p.trim_end_matches('/')));
            if !cgroup.is_some_and(under) {
                return false;
            }
        }
        if self.exe.is_some() && owner.exe != self.exe {
            return false;
        }
        if self.uid.is_some() && owner.uid != self.uid {
            return false;
        }
        if self.dport.is_some_and(|p| p != remote.port()) {
            return false;
        }
        if let Some(d) = &self.dst {
            match parse_prefix(d) {
                Ok((net, len)) if in_prefix(remote.ip(), net, len) => {}
                _ => return false,
            }
        }
        true
    }
}

/// The first rule that matches, with its position; None: the default.
pub fn first_match<'a>(
    rules: &'a [AppRule],
    owner: &Owner,
    remote: SocketAddr,
) -> Option<(usize, &'a AppRule)> {
    rules
        .iter()
        .enumerate()
        .find(|(_, r)| r.matches(owner, remote))
}

/// The cgroup `braid run --mode MODE` puts a program in: its name carries
/// the mode, so the daemon needs no message from `braid run`, nothing is
/// left to clean up when the program ends, and a daemon started (or
/// restarted) later still knows.
pub fn run_cgroup_name(pid: u32, mode: PathMode) -> String {
    format!("{RUN_CGROUP_PREFIX}{pid}.{}", mode.name())
}

const RUN_CGROUP_PREFIX: &str = "braid-run-";

/// The mode `braid run --mode` asked for, if the owner runs in (or below)
/// a cgroup made by it, and that cgroup's name.
pub fn run_mode(owner: &Owner) -> Option<(PathMode, &str)> {
    let cgroup = owner.cgroup.as_deref()?;
    cgroup.rsplit('/').find_map(|c| {
        let (_, mode) = c.strip_prefix(RUN_CGROUP_PREFIX)?.rsplit_once('.')?;
        let mode = [
            PathMode::Aggregate,
            PathMode::Handover,
            PathMode::Interactive,
        ]
        .into_iter()
        .find(|m| m.name() == mode)?;
        Some((mode, c))
    })
}

fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let bad =
        || format!("dst '{s}' is not an address prefix such as 203.0.113.0/24 or 2001:db8::/32");
    let (addr, len) = s.split_once('/').unwrap_or((s, ""));
    let addr: IpAddr = addr.parse().map_err(|_| bad())?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    let len = if len.is_empty() {
        max
    } else {
        len.parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(bad)?
    };
    Ok((addr, len))
}

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    let bits = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        }
    };
    // An IPv4-mapped IPv6 remote is compared as the IPv4 address it is.
    let ip = match ip {
        IpAddr::V6(v) => v.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_ipv4() != net.is_ipv4() {
        return false;
    }
    // IPv4 sits in the top 32 bits, so a prefix length counts from the top
    // for both families.
    if len == 0 {
        return true;
    }
    let mask = u128::MAX << (128 - u32::from(len).min(128));
    bits(ip) & mask == bits(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(cgroup: &str, exe: &str, uid: u32) -> Owner {
        Owner {
            uid: Some(uid),
            cgroup: Some(cgroup.into()),
            exe: Some(exe.into()),
        }
    }

    fn rule(mode: PathMode) -> AppRule {
        AppRule {
            mode,
            ..AppRule::default()
        }
    }

    #[test]
    fn first_match_wins_and_unknown_owners_match_only_destination_rules() {
        let rules = vec![
            AppRule {
                unit: Some("ssh.service".into()),
                ..rule(PathMode::Interactive)
            },
            AppRule {
                dport: Some(22),
                ..rule(PathMode::Interactive)
            },
            AppRule {
                exe: Some("rsync".into()),
                ..rule(PathMode::Aggregate)
            },
            AppRule {
                dst: Some("203.0.113.0/24".into()),
                ..rule(PathMode::Handover)
            },
        ];
        let ssh = owner("/system.slice/ssh.service", "sshd", 0);
        let remote: SocketAddr = "198.51.100.7:443".parse().unwrap();
        assert_eq!(first_match(&rules, &ssh, remote).unwrap().0, 0);
        let rsync = owner("/user.slice/user-1000.slice/session-2.scope", "rsync", 1000);
        assert_eq!(first_match(&rules, &rsync, remote).unwrap().0, 2);
        let nobody = Owner::default();
        assert!(first_match(&rules, &nobody, remote).is_none());
        let to22: SocketAddr = "198.51.100.7:22".parse().unwrap();
        assert_eq!(first_match(&rules, &nobody, to22).unwrap().0, 1);
        let to_net: SocketAddr = "[::ffff:203.0.113.9]:80".parse().unwrap();
        assert_eq!(first_match(&rules, &nobody, to_net).unwrap().0, 3);
    }

    #[test]
    fn braid_runs_cgroup_carries_the_mode() {
        let name = run_cgroup_name(4242, PathMode::Interactive);
        assert_eq!(name, "braid-run-4242.interactive");
        let o = owner(&format!("/user.slice/session-3.scope/{name}"), "ssh", 0);
        assert_eq!(run_mode(&o), Some((PathMode::Interactive, name.as_str())));
        // A child cgroup the program made itself still counts.
        let o = owner(&format!("/{name}/inner"), "ssh", 0);
        assert_eq!(run_mode(&o).map(|m| m.0), Some(PathMode::Interactive));
        // --bpf without --mode, other names, unknown modes: no mode.
        for c in [
            "/braid-run-4242",
            "/braid-run-1.fast",
            "/x/ssh.service",
            "/run-1.handover",
        ] {
            assert_eq!(run_mode(&owner(c, "x", 0)), None, "{c}");
        }
        assert_eq!(run_mode(&Owner::default()), None);
    }

    #[test]
    fn a_unit_matches_the_last_cgroup_component_only() {
        let r = AppRule {
            unit: Some("ssh.service".into()),
            ..rule(PathMode::Interactive)
        };
        let remote: SocketAddr = "192.0.2.1:22".parse().unwrap();
        assert!(!r.matches(&owner("/system.slice/ssh.service.d", "x", 0), remote));
        assert!(!r.matches(&owner("/not-ssh.service/child", "x", 0), remote));
        let c = AppRule {
            cgroup: Some("/user.slice".into()),
            ..rule(PathMode::Aggregate)
        };
        assert!(c.matches(&owner("/user.slice/user-1000.slice", "x", 0), remote));
        assert!(!c.matches(&owner("/user.slicer", "x", 0), remote));
    }

    #[test]
    fn prefixes_are_checked_and_bad_ones_are_clear_errors() {
        assert!(in_prefix(
            "10.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(!in_prefix(
            "11.1.2.3".parse().unwrap(),
            "10.0.0.0".parse().unwrap(),
            8
        ));
        assert!(in_prefix(
            "2001:db8::1".parse().unwrap(),
            "2001:db8::".parse().unwrap(),
            32
        ));
        assert!(!in_prefix(
            "10.0.0.1".parse().unwrap(),
            "::".parse().unwrap(),
            0
        ));
        assert!(in_prefix(
            "10.0.0.1".parse().unwrap(),
            "0.0.0.0".parse().unwrap(),
            0
        ));
        for bad in ["10.0.0.0/33", "nope/8", "10.0.0.0/x"] {
            let r = AppRule {
                dst: Some(bad.into()),
                ..rule(PathMode::Aggregate)
            };
            assert!(
                r.validate().unwrap_err().contains("not an address prefix"),
                "{bad}"
            );
        }
        let r = AppRule {
            unit: Some("/system.slice/ssh.service".into()),
            ..rule(PathMode::Aggregate)
        };
        assert!(r.validate().is_err());
    }
}
