//! Transparent mode's rules, sans-IO: from the configuration and what the
//! host looks like (its subnets, the relay's addresses, the cgroup id),
//! the nftables table that sends the scope's outgoing TCP to the relay
//! client, and why each rule is there.
//!
//! One table, `inet braid`. Chain `redirect` (nat, output hook; prerouting
//! for a LAN): the client's own sockets (marked) and loopback go out
//! untouched; DNS (UDP and TCP port 53) goes to the client when DNS is
//! carried, before the other exclusions because resolvers are often on the
//! local network; the other exclusions (link-local, multicast, this host's
//! subnets, the relay, the configured ones) go out untouched; the rest of
//! the scope's TCP is redirected. Chain `quic` (filter) refuses the
//! scope's UDP 443 with port unreachable, so programs fall back to TCP at
//! once instead of going around the relay.

use std::net::IpAddr;

use braid_kernel::nft::{Chain, ChainKind, Hook, Match, Rule, Table, Verdict};
use ipnet::IpNet;

use crate::config::{ClientConfig, Dns, Fallback, Quic, Scope, MARK_MASK};

/// The table's name (family inet).
pub const TABLE: &str = "braid";

const TCP: u8 = 6;
const UDP: u8 = 17;

/// Never redirected: loopback first (it comes before DNS), then the rest.
pub const LOOPBACK: &[&str] = &["127.0.0.0/8", "::1/128"];
pub const ALWAYS_EXCLUDED: &[&str] = &[
    "0.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "255.255.255.255/32",
    "fe80::/10",
    "ff00::/8",
];

/// What the rules depend on besides the configuration.
#[derive(Debug, Clone, Default)]
pub struct HostFacts {
    /// The relay's addresses (its connections must never loop back).
    pub relay_addrs: Vec<IpAddr>,
    /// This host's own subnets (reached directly, not through the relay).
    pub local_nets: Vec<IpNet>,
    /// For a cgroup scope: its level below the root and its id.
    pub cgroup: Option<(u32, u64)>,
    /// The relay does not answer. With `fallback = "direct"`, DNS is then
    /// left to the host's own resolver and QUIC goes out directly, rather
    /// than being sent to a relay that cannot carry them.
    pub relay_down: bool,
}

fn parse(nets: &[&str]) -> Vec<IpNet> {
    nets.iter()
        .map(|n| n.parse().expect("valid built-in prefix"))
        .collect()
}

fn host_net(ip: IpAddr) -> IpNet {
    IpNet::from(ip)
}

/// The scope's matches; one list per rule (a LAN of several interfaces
/// takes one rule each).
fn scope_matches(scope: &Scope, facts: &HostFacts) -> Result<Vec<Vec<Match>>, String> {
    Ok(match scope {
        Scope::Host => vec![vec![]],
        Scope::Uid(uid) => vec![vec![Match::SocketUid { uid: *uid }]],
        Scope::Cgroup(path) => {
            let (level, id) = facts
                .cgroup
                .ok_or_else(|| format!("the cgroup {path} was not found"))?;
            vec![vec![Match::SocketCgroup { level, id }]]
        }
        Scope::Lan(ifs) => ifs
            .iter()
            .map(|name| vec![Match::InputInterface { name: name.clone() }])
            .collect(),
    })
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: impl Into<String>) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.into(),
    }
}

fn returns(prefixes: &[(IpNet, String)]) -> Vec<Rule> {
    prefixes
        .iter()
        .map(|(p, why)| {
            rule(
                vec![Match::Destination { prefix: *p }],
                Verdict::Return,
                why.clone(),
            )
        })
        .collect()
}

/// The table for `cfg` on a host described by `facts`.
pub fn table(cfg: &ClientConfig, facts: &HostFacts) -> Result<Table, String> {
    let falling_back = facts.relay_down && cfg.fallback == Fallback::Direct;
    let dns = if falling_back { Dns::Off } else { cfg.dns };
    let quic = match cfg.quic {
        Quic::Relay if falling_back => Quic::Allow,
        q => q,
    };
    let hook = match cfg.scope {
        Scope::Lan(_) => Hook::Prerouting,
        _ => Hook::Output,
    };
    let scopes = scope_matches(&cfg.scope, facts)?;
    let port = cfg.transparent_port;
    let own = rule(
        vec![Match::Mark {
            mask: MARK_MASK,
            value: cfg.mark,
        }],
        Verdict::Return,
        "the relay client's own connections",
    );
    let loopback: Vec<(IpNet, String)> = parse(LOOPBACK)
        .into_iter()
        .map(|p| (p, "loopback".to_string()))
        .collect();
    let mut others: Vec<(IpNet, String)> = parse(ALWAYS_EXCLUDED)
        .into_iter()
        .map(|p| (p, "never carried: special-purpose".to_string()))
        .collect();
    others.extend(
        facts
            .local_nets
            .iter()
            .map(|n| (n.trunc(), "this host's own subnet".to_string())),
    );
    others.extend(
        facts
            .relay_addrs
            .iter()
            .map(|a| (host_net(*a), "the relay".to_string())),
    );
    others.extend(
        cfg.exclude
            .iter()
            .map(|n| (n.trunc(), "excluded in the configuration".to_string())),
    );
    others.dedup_by(|a, b| a.0 == b.0);

    let mut redirect = vec![own.clone()];
    redirect.extend(returns(&loopback));
    if dns == Dns::Relay {
        for scope in &scopes {
            for proto in [UDP, TCP] {
                let mut m = scope.clone();
                m.push(Match::Protocol { number: proto });
                m.push(Match::DestinationPort { port: 53 });
                redirect.push(rule(
                    m,
                    Verdict::Redirect { port },
                    "DNS, answered through the relay",
                ));
            }
        }
    }
    redirect.extend(returns(&others));
    for scope in &scopes {
        let mut m = scope.clone();
        m.push(Match::Protocol { number: TCP });
        redirect.push(rule(
            m,
            Verdict::Redirect { port },
            "TCP, carried through the relay",
        ));
        if quic == Quic::Relay {
            let mut m = scope.clone();
            m.push(Match::Protocol { number: UDP });
            m.push(Match::DestinationPort { port: 443 });
            redirect.push(rule(
                m,
                Verdict::Redirect { port: port + 1 },
                "QUIC, carried through the relay",
            ));
        }
    }
    let mut chains = vec![Chain {
        name: "redirect".into(),
        hook,
        kind: ChainKind::Nat,
        priority: -100,
        rules: redirect,
    }];
    if quic == Quic::Block {
        let mut refuse = vec![own];
        refuse.extend(returns(&loopback));
        refuse.extend(returns(&others));
        for scope in &scopes {
            let mut m = scope.clone();
            m.push(Match::Protocol { number: UDP });
            m.push(Match::DestinationPort { port: 443 });
            refuse.push(rule(
                m,
                Verdict::RejectPortUnreachable,
                "QUIC refused: programs fall back to TCP through the relay",
            ));
        }
        chains.push(Chain {
            name: "quic".into(),
            hook,
            kind: ChainKind::Filter,
            priority: 0,
            rules: refuse,
        });
    }
    Ok(Table {
        name: TABLE.into(),
        chains,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ClientConfig;
    use crate::keys::PrivateKey;

    fn cfg(scope: Scope) -> ClientConfig {
        let mut c = ClientConfig::new(
            "192.0.2.1:7000",
            PrivateKey::generate().unwrap().public(),
            "/k".into(),
        )
        .unwrap();
        c.transparent = true;
        c.scope = scope;
        c.fallback = Fallback::Block;
        c.exclude = vec!["198.51.100.0/24".parse().unwrap()];
        c
    }

    fn facts() -> HostFacts {
        HostFacts {
            relay_addrs: vec!["192.0.2.1".parse().unwrap()],
            local_nets: vec!["10.1.0.7/24".parse().unwrap()],
            cgroup: Some((2, 4242)),
            relay_down: false,
        }
    }

    fn position(rules: &[Rule], pred: impl Fn(&Rule) -> bool) -> usize {
        rules.iter().position(pred).expect("rule present")
    }

    #[test]
    fn order_own_loopback_dns_exclusions_redirect() {
        let t = table(&cfg(Scope::Host), &facts()).unwrap();
        assert_eq!(t.name, "braid");
        let r = &t.chains[0];
        assert_eq!(
            (r.hook, r.kind, r.priority),
            (Hook::Output, ChainKind::Nat, -100)
        );
        assert!(matches!(
            r.rules[0].matches[0],
            Match::Mark {
                mask: MARK_MASK,
                value: 0x00b2_0000
            }
        ));
        let loop4 = position(&r.rules, |x| {
            x.matches
                == vec![Match::Destination {
                    prefix: "127.0.0.0/8".parse().unwrap(),
                }]
        });
        let dns = position(&r.rules, |x| {
            x.matches.contains(&Match::DestinationPort { port: 53 })
        });
        let subnet = position(&r.rules, |x| {
            x.matches
                == vec![Match::Destination {
                    prefix: "10.1.0.0/24".parse().unwrap(),
                }]
        });
        let relay = position(&r.rules, |x| {
            x.matches
                == vec![Match::Destination {
                    prefix: "192.0.2.1/32".parse().unwrap(),
                }]
        });
        let excluded = position(&r.rules, |x| {
            x.matches
                == vec![Match::Destination {
                    prefix: "198.51.100.0/24".parse().unwrap(),
                }]
        });
        let last = r.rules.last().unwrap();
        assert!(loop4 < dns && dns < subnet && subnet < last_index(r) && relay < last_index(r));
        assert!(excluded < last_index(r));
        assert_eq!(last.matches, vec![Match::Protocol { number: 6 }]);
        assert_eq!(last.verdict, Verdict::Redirect { port: 7001 });
        // QUIC refused after the same exclusions.
        let q = &t.chains[1];
        assert_eq!((q.kind, q.priority), (ChainKind::Filter, 0));
        assert_eq!(
            q.rules.last().unwrap().verdict,
            Verdict::RejectPortUnreachable
        );
    }

    fn last_index(c: &Chain) -> usize {
        c.rules.len() - 1
    }

    #[test]
    fn scopes_and_switches() {
        let t = table(&cfg(Scope::Uid(1000)), &facts()).unwrap();
        assert!(t.chains[0]
            .rules
            .last()
            .unwrap()
            .matches
            .contains(&Match::SocketUid { uid: 1000 }));
        let t = table(&cfg(Scope::Cgroup("/a/b".into())), &facts()).unwrap();
        assert!(t.chains[0]
            .rules
            .last()
            .unwrap()
            .matches
            .contains(&Match::SocketCgroup { level: 2, id: 4242 }));
        let mut no_cgroup = facts();
        no_cgroup.cgroup = None;
        assert!(table(&cfg(Scope::Cgroup("/a/b".into())), &no_cgroup).is_err());
        let t = table(
            &cfg(Scope::Lan(vec!["lan0".into(), "lan1".into()])),
            &facts(),
        )
        .unwrap();
        assert_eq!(t.chains[0].hook, Hook::Prerouting);
        let redirects = t.chains[0]
            .rules
            .iter()
            .filter(|r| {
                r.matches
                    == vec![
                        Match::InputInterface {
                            name: "lan1".into(),
                        },
                        Match::Protocol { number: 6 },
                    ]
            })
            .count();
        assert_eq!(redirects, 1);
        let mut c = cfg(Scope::Host);
        c.quic = Quic::Relay;
        let t = table(&c, &facts()).unwrap();
        assert_eq!(t.chains.len(), 1, "no reject chain when QUIC is relayed");
        let quic = t.chains[0].rules.last().unwrap();
        assert_eq!(quic.verdict, Verdict::Redirect { port: 7002 });
        assert!(quic.matches.contains(&Match::DestinationPort { port: 443 }));
        c.quic = Quic::Allow;
        c.dns = Dns::Off;
        let t = table(&c, &facts()).unwrap();
        assert_eq!(t.chains.len(), 1);
        assert!(!t.chains[0]
            .rules
            .iter()
            .any(|r| r.matches.contains(&Match::DestinationPort { port: 53 })));
    }

    #[test]
    fn relay_down_with_direct_fallback_leaves_dns_and_quic_alone() {
        let carried = |t: &Table, port: u16| {
            t.chains[0]
                .rules
                .iter()
                .any(|r| r.matches.contains(&Match::DestinationPort { port }))
        };
        let mut c = cfg(Scope::Host);
        c.quic = Quic::Relay;
        c.fallback = Fallback::Direct;
        let mut down = facts();
        down.relay_down = true;
        let up = table(&c, &facts()).unwrap();
        assert!(carried(&up, 53) && carried(&up, 443));
        let t = table(&c, &down).unwrap();
        assert!(!carried(&t, 53) && !carried(&t, 443), "{t:#?}");
        assert_eq!(t.chains.len(), 1, "QUIC allowed, not refused");
        // TCP is still redirected: the client itself connects directly.
        assert_eq!(
            t.chains[0].rules.last().unwrap().verdict,
            Verdict::Redirect { port: 7001 }
        );
        // QUIC refused stays refused.
        c.quic = Quic::Block;
        assert_eq!(table(&c, &down).unwrap().chains.len(), 2);
        // With fallback = "block" nothing changes while the relay is down.
        c.quic = Quic::Relay;
        c.fallback = Fallback::Block;
        assert_eq!(table(&c, &down).unwrap(), table(&c, &facts()).unwrap());
    }
}
