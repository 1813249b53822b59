//! Which destinations the relay opens connections to, sans-IO. A relay is
//! never an open door into its own network: by default the special-purpose
//! ranges (loopback, private, link-local, shared, multicast, reserved) and
//! the relay host's own addresses are refused, each refusal with the rule
//! that refused it and how to change it.

use std::net::{IpAddr, Ipv4Addr};

use ipnet::IpNet;

/// Special-purpose ranges refused unless listed in `allow` (IANA's
/// special-purpose registries, RFC 6890 and successors).
pub const SPECIAL_RANGES: &[(&str, &str)] = &[
    ("0.0.0.0/8", "'this network'"),
    ("10.0.0.0/8", "private-use (RFC 1918)"),
    (
        "100.64.0.0/10",
        "shared address space (RFC 6598, carrier-grade NAT)",
    ),
    ("127.0.0.0/8", "loopback"),
    ("169.254.0.0/16", "link-local"),
    ("172.16.0.0/12", "private-use (RFC 1918)"),
    ("192.0.0.0/24", "IETF protocol assignments"),
    ("192.168.0.0/16", "private-use (RFC 1918)"),
    ("198.18.0.0/15", "benchmarking (RFC 2544)"),
    ("224.0.0.0/4", "multicast"),
    ("240.0.0.0/4", "reserved, and broadcast"),
    ("::/128", "unspecified"),
    ("::1/128", "loopback"),
    ("100::/64", "discard-only (RFC 6666)"),
    ("fc00::/7", "unique local (RFC 4193)"),
    ("fe80::/10", "link-local"),
    ("ff00::/8", "multicast"),
];

/// A port or an inclusive range of ports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn parse(s: &str) -> Result<PortRange, String> {
        let bad = || format!("'{s}' is not a port or a range of ports (e.g. 443 or 1024-65535)");
        let (a, b) = match s.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (s.trim(), s.trim()),
        };
        let first: u16 = a.parse().map_err(|_| bad())?;
        let last: u16 = b.parse().map_err(|_| bad())?;
        if first == 0 || last < first {
            return Err(bad());
        }
        Ok(PortRange { first, last })
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.first..=self.last).contains(&port)
    }
}

#[derive(Debug, Clone, Default)]
pub struct DestinationPolicy {
    /// Always refused (wins over everything).
    pub deny: Vec<IpNet>,
    /// Allowed even inside a special range or on the relay's own addresses
    /// (e.g. a private network behind the relay that clients should reach).
    pub allow: Vec<IpNet>,
    /// Allowed ports; empty means every port.
    pub ports: Vec<PortRange>,
}

/// An IPv4 address hidden in an IPv6 one (mapped ::ffff:a.b.c.d or NAT64
/// 64:ff9b::a.b.c.d) is judged as the IPv4 address it reaches.
fn effective(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let o = v6.octets();
                return IpAddr::V4(Ipv4Addr::new(o[12], o[13], o[14], o[15]));
            }
            IpAddr::V6(v6)
        }
        v4 => v4,
    }
}

fn special_range(ip: IpAddr) -> Option<(IpNet, &'static str)> {
    SPECIAL_RANGES.iter().find_map(|(net, what)| {
        let net: IpNet = net.parse().expect("valid built-in range");
        net.contains(&ip).then_some((net, *what))
    })
}

impl DestinationPolicy {
    /// Whether the relay may connect to `ip:port`; `local` are the relay
    /// host's own addresses. The error says which rule refused and how to
    /// change it.
    pub fn check(&self, ip: IpAddr, port: u16, local: &[IpAddr]) -> Result<(), String> {
        let ip = effective(ip);
        if !self.ports.is_empty() && !self.ports.iter().any(|r| r.contains(port)) {
            return Err(format!(
                "port {port} is not in relay.server.destinations.ports"
            ));
        }
        if let Some(net) = self.deny.iter().find(|n| n.contains(&ip)) {
            return Err(format!(
                "{ip} is in {net}, listed in relay.server.destinations.deny"
            ));
        }
        if self.allow.iter().any(|n| n.contains(&ip)) {
            return Ok(());
        }
        if let Some((net, what)) = special_range(ip) {
            return Err(format!(
                "{ip} is in {net} ({what}), refused by default; list it in relay.server.destinations.allow to permit it"
            ));
        }
        if local.iter().any(|l| effective(*l) == ip) {
            return Err(format!(
                "{ip} is an address of the relay host itself, refused by default; list it in relay.server.destinations.allow to permit it"
            ));
        }
        Ok(())
    }
}

/// For tests and the lab: is this address in a special range?
pub fn is_special(ip: IpAddr) -> bool {
    special_range(effective(ip)).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn special_ranges_refused_by_default_with_the_fix() {
        let p = DestinationPolicy::default();
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
        ] {
            let e = p.check(ip(a), 80, &[]).unwrap_err();
            assert!(e.contains("relay.server.destinations.allow"), "{a}: {e}");
        }
        for a in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert_eq!(p.check(ip(a), 443, &[]), Ok(()), "{a}");
        }
        let e = p
            .check(ip("203.0.113.7"), 80, &[ip("203.0.113.7")])
            .unwrap_err();
        assert!(e.contains("relay host itself"), "{e}");
    }

    #[test]
    fn allow_deny_and_ports() {
        let p = DestinationPolicy {
            deny: vec![
                "1.1.1.0/24".parse().unwrap(),
                "10.9.9.9/32".parse().unwrap(),
            ],
            allow: vec!["10.9.0.0/16".parse().unwrap()],
            ports: vec![
                PortRange::parse("443").unwrap(),
                PortRange::parse("8000-8100").unwrap(),
            ],
        };
        assert_eq!(p.check(ip("10.9.1.1"), 443, &[]), Ok(()));
        assert!(p
            .check(ip("10.9.9.9"), 443, &[])
            .unwrap_err()
            .contains("deny"));
        assert!(p
            .check(ip("1.1.1.1"), 443, &[])
            .unwrap_err()
            .contains("deny"));
        assert!(p
            .check(ip("8.8.8.8"), 80, &[])
            .unwrap_err()
            .contains("port 80"));
        assert_eq!(p.check(ip("8.8.8.8"), 8050, &[]), Ok(()));
        assert!(PortRange::parse("0").is_err());
        assert!(PortRange::parse("9-3").is_err());
        assert!(PortRange::parse("http").is_err());
        assert!(is_special(ip("::ffff:192.168.0.1")));
    }
}
