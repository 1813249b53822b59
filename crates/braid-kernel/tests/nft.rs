//! nf_tables through braid_kernel::nft, each test in a network namespace
//! of its own (needs root): install, list, atomic replace and remove; the
//! same rules as `nft` shows them; redirect and reject on real traffic;
//! refusals that leave the installed table as it was.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use braid_kernel::nft::{
    self, Chain, ChainKind, Family, Hook, InstalledRule, Match, Rule, Table, Verdict,
};
use braid_kernel::{netns, socket, Error};

fn ns_name(tag: &str) -> String {
    format!("bk-nft{}-{tag}", std::process::id() % 100_000)
}

/// Chain "nat_out": nat, on the output hook, at the usual dstnat priority.
fn nat_out(rules: Vec<Rule>) -> Chain {
    Chain {
        name: "nat_out".into(),
        hook: Hook::Output,
        kind: ChainKind::Nat,
        priority: -100,
        rules,
    }
}

/// Chain "filter_out": filter, on the output hook, priority 0.
fn filter_out(rules: Vec<Rule>) -> Chain {
    Chain {
        name: "filter_out".into(),
        hook: Hook::Output,
        kind: ChainKind::Filter,
        priority: 0,
        rules,
    }
}

fn ip(ns: &str, args: &str) -> String {
    common::ip(&format!("-n {ns} {args}"))
}

/// Run `f` inside the namespace.
fn inside<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    netns::run_in::<_, Error>(ns, f)
}

fn has_nft() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `nft ARGS` inside the namespace: (success, stdout, stderr).
fn nft_in(ns: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, "nft"])
        .args(args)
        .output()
        .expect("ip netns exec runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn rule(matches: Vec<Match>, verdict: Verdict, comment: &str) -> Rule {
    Rule {
        matches,
        verdict,
        comment: comment.to_string(),
    }
}

const TCP: Match = Match::Protocol { number: 6 };
const UDP: Match = Match::Protocol { number: 17 };

fn dport(port: u16) -> Match {
    Match::DestinationPort { port }
}

fn dst(prefix: &str) -> Match {
    Match::Destination {
        prefix: prefix.parse().unwrap(),
    }
}

/// What `list` should say about a rule: chain, expression names, comment.
type Expected = (&'static str, Vec<&'static str>, Option<&'static str>);

/// A table with every Match and Verdict variant, and what `list` should
/// say about each rule (chain, expression names, comment).
fn full_table(name: &str) -> (Table, Vec<Expected>) {
    let table = Table {
        name: name.to_string(),
        chains: vec![
            nat_out(vec![
                rule(
                    vec![TCP, dport(8080), dst("10.77.0.0/24")],
                    Verdict::Redirect { port: 9090 },
                    "to the relay",
                ),
                rule(vec![dst("10.0.0.0/8")], Verdict::Return, "private v4"),
                rule(
                    vec![Match::Mark {
                        mask: 0xff00,
                        value: 0x4200,
                    }],
                    Verdict::Return,
                    "marked",
                ),
                rule(vec![Match::SocketUid { uid: 1000 }], Verdict::Accept, ""),
                rule(
                    vec![Match::SocketCgroup { level: 1, id: 4242 }],
                    Verdict::Return,
                    "cgroup",
                ),
                rule(
                    vec![
                        Match::Family {
                            family: Family::Ipv6,
                        },
                        dst("2001:db8::/33"),
                    ],
                    Verdict::Return,
                    "v6 documentation",
                ),
                rule(
                    vec![Match::InputInterface {
                        name: "lan0".into(),
                    }],
                    Verdict::Return,
                    "lan",
                ),
            ]),
            filter_out(vec![
                rule(
                    vec![UDP, dport(443)],
                    Verdict::RejectPortUnreachable,
                    "no quic",
                ),
                rule(
                    vec![
                        TCP,
                        dport(443),
                        Match::Family {
                            family: Family::Ipv4,
                        },
                        Match::Mark {
                            mask: u32::MAX,
                            value: 7,
                        },
                    ],
                    Verdict::Accept,
                    "tls marked 7",
                ),
            ]),
        ],
    };
    let c = "cmp";
    let m = "meta";
    let expected = vec![
        (
            "nat_out",
            vec![m, c, "payload", c, m, c, "payload", c, "immediate", "redir"],
            Some("to the relay"),
        ),
        (
            "nat_out",
            vec![m, c, "payload", c, "immediate"],
            Some("private v4"),
        ),
        (
            "nat_out",
            vec![m, "bitwise", c, "immediate"],
            Some("marked"),
        ),
        ("nat_out", vec![m, c, "immediate"], None),
        ("nat_out", vec!["socket", c, "immediate"], Some("cgroup")),
        (
            "nat_out",
            vec![m, c, m, c, "payload", "bitwise", c, "immediate"],
            Some("v6 documentation"),
        ),
        ("nat_out", vec![m, c, "immediate"], Some("lan")),
        (
            "filter_out",
            vec![m, c, "payload", c, "reject"],
            Some("no quic"),
        ),
        (
            "filter_out",
            vec![m, c, "payload", c, m, c, m, c, "immediate"],
            Some("tls marked 7"),
        ),
    ];
    (table, expected)
}

fn check_listing(got: &[InstalledRule], expected: &[Expected]) {
    assert_eq!(got.len(), expected.len(), "{got:#?}");
    for (g, (chain, exprs, comment)) in got.iter().zip(expected) {
        assert_eq!(g.chain, *chain, "{g:?}");
        assert_eq!(g.expressions, *exprs, "{g:?}");
        assert_eq!(g.comment.as_deref(), *comment, "{g:?}");
        assert!(g.handle > 0, "{g:?}");
    }
    // Handles grow in rule order within a chain.
    for w in got.windows(2) {
        if w[0].chain == w[1].chain {
            assert!(w[0].handle < w[1].handle, "{w:?}");
        }
    }
}

/// Another table, made without braid's nft module when `nft` is there, and
/// a way to read it back.
fn make_other_table(ns: &str) -> Box<dyn Fn() -> String> {
    if has_nft() {
        for cmd in [
            "add table ip other",
            "add chain ip other input { type filter hook input priority 0 ; policy accept ; }",
            "add rule ip other input tcp dport 22 accept comment \"someone else's\"",
        ] {
            let args: Vec<&str> = cmd.split(' ').collect();
            let (ok, _, err) = nft_in(ns, &args);
            assert!(ok, "nft {cmd}: {err}");
        }
        let ns = ns.to_string();
        Box::new(move || {
            let (ok, out, err) = nft_in(&ns, &["-a", "list", "table", "ip", "other"]);
            assert!(ok, "{err}");
            out
        })
    } else {
        let other = Table {
            name: "other".into(),
            chains: vec![Chain {
                name: "c".into(),
                hook: Hook::Prerouting,
                kind: ChainKind::Filter,
                priority: 0,
                rules: vec![rule(
                    vec![TCP, dport(22)],
                    Verdict::Accept,
                    "someone else's",
                )],
            }],
        };
        inside(ns, move || nft::install(&other)).unwrap();
        let ns = ns.to_string();
        Box::new(move || format!("{:?}", inside(&ns, || nft::list("other")).unwrap()))
    }
}

#[test]
fn install_list_replace_remove() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = ns_name("a");
    let _guard = common::Namespaces::create(&[&ns]);
    let other = make_other_table(&ns);
    let other_before = other();
    let tables_before = inside(&ns, nft::tables).unwrap();
    assert!(!tables_before.iter().any(|(_, n)| n == "braid"));

    // Nothing there yet.
    assert_eq!(inside(&ns, || nft::list("braid")).unwrap(), None);

    let (table, expected) = full_table("braid");
    let t = table.clone();
    inside(&ns, move || nft::install(&t)).unwrap();
    let listed = inside(&ns, || nft::list("braid")).unwrap().unwrap();
    check_listing(&listed, &expected);
    let tables = inside(&ns, nft::tables).unwrap();
    assert!(tables.contains(&(1, "braid".to_string())), "{tables:?}");

    // The same again replaces rather than appends.
    let t = table.clone();
    inside(&ns, move || nft::install(&t)).unwrap();
    let again = inside(&ns, || nft::list("braid")).unwrap().unwrap();
    check_listing(&again, &expected);

    // Another rule set replaces everything: old chains are gone.
    let replacement = Table {
        name: "braid".into(),
        chains: vec![Chain {
            name: "lan_in".into(),
            hook: Hook::Prerouting,
            kind: ChainKind::Nat,
            priority: -100,
            rules: vec![rule(
                vec![
                    Match::InputInterface {
                        name: "lan0".into(),
                    },
                    TCP,
                    dport(80),
                ],
                Verdict::Redirect { port: 9091 },
                "lan web",
            )],
        }],
    };
    inside(&ns, move || nft::install(&replacement)).unwrap();
    let replaced = inside(&ns, || nft::list("braid")).unwrap().unwrap();
    check_listing(
        &replaced,
        &[(
            "lan_in",
            vec![
                "meta",
                "cmp",
                "meta",
                "cmp",
                "payload",
                "cmp",
                "immediate",
                "redir",
            ],
            Some("lan web"),
        )],
    );

    // An empty table is a table too.
    inside(&ns, || {
        nft::install(&Table {
            name: "braid".into(),
            chains: vec![],
        })
    })
    .unwrap();
    assert_eq!(inside(&ns, || nft::list("braid")).unwrap(), Some(vec![]));

    assert!(inside(&ns, || nft::remove("braid")).unwrap());
    assert!(!inside(&ns, || nft::remove("braid")).unwrap());
    assert_eq!(inside(&ns, || nft::list("braid")).unwrap(), None);
    let tables_after = inside(&ns, nft::tables).unwrap();
    assert_eq!(tables_after, tables_before);
    assert_eq!(other(), other_before, "the other table was touched");
}

#[test]
fn nft_reads_the_rules_as_intended() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    if !has_nft() {
        eprintln!("skipped: the nft binary (package nftables) is not installed");
        return;
    }
    let ns = ns_name("b");
    let _guard = common::Namespaces::create(&[&ns]);
    let (table, expected) = full_table("braid");
    inside(&ns, move || nft::install(&table)).unwrap();

    let (ok, text, err) = nft_in(&ns, &["list", "table", "inet", "braid"]);
    assert!(ok, "{err}");
    println!("nft list table inet braid:\n{text}");
    let lines: Vec<&str> = text.lines().map(str::trim).collect();
    let has = |needles: &[&str]| {
        assert!(
            lines.iter().any(|l| needles.iter().all(|n| l.contains(n))),
            "no line with all of {needles:?} in:\n{text}"
        )
    };
    // nft names -100 "dstnat" in newer releases.
    assert!(
        lines.iter().any(
            |l| *l == "type nat hook output priority -100; policy accept;"
                || *l == "type nat hook output priority dstnat; policy accept;"
        ),
        "{text}"
    );
    has(&["type filter hook output priority filter; policy accept;"]);
    has(&[
        "tcp dport 8080",
        "ip daddr 10.77.0.0/24",
        "redirect to :9090",
        "comment \"to the relay\"",
    ]);
    has(&["ip daddr 10.0.0.0/8 return", "comment \"private v4\""]);
    has(&["meta mark & 0x0000ff00 == 0x00004200 return", "\"marked\""]);
    has(&["meta skuid 1000 accept"]);
    has(&["socket cgroupv2 level 1", "return", "\"cgroup\""]);
    has(&["ip6 daddr 2001:db8::/33 return", "\"v6 documentation\""]);
    has(&["iifname \"lan0\" return", "\"lan\""]);
    has(&["udp dport 443 reject", "\"no quic\""]);
    has(&["tcp dport 443", "meta mark 0x00000007 accept"]);

    // The JSON form parses and has the rules in order with their comments.
    let (ok, json, err) = nft_in(&ns, &["-j", "list", "table", "inet", "braid"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&json).expect("nft -j gives JSON");
    let rules: Vec<&serde_json::Value> = v["nftables"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|o| o.get("rule"))
        .collect();
    assert_eq!(rules.len(), expected.len(), "{json}");
    for (r, (chain, _, comment)) in rules.iter().zip(&expected) {
        assert_eq!(r["chain"], *chain, "{r}");
        assert_eq!(r["comment"].as_str(), *comment, "{r}");
    }
    let redirect = &rules[0]["expr"];
    assert!(
        redirect
            .to_string()
            .contains("\"redirect\":{\"port\":9090}"),
        "{redirect}"
    );
    let reject = rules[7]["expr"].to_string();
    assert!(reject.contains("\"reject\""), "{reject}");
}

/// Read a line's worth from a stream (a short echo check).
fn echo(mut client: TcpStream, mut server: TcpStream) {
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    server.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
}

#[test]
fn redirect_and_reject_work_on_real_traffic() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = ns_name("c");
    let _guard = common::Namespaces::create(&[&ns]);
    ip(&ns, "link set lo up");
    ip(&ns, "link add v0 type veth peer name v1");
    ip(&ns, "link set v1 up");
    ip(&ns, "link set v0 up");
    ip(&ns, "addr add 10.77.0.1/24 dev v0");
    ip(&ns, "-6 addr add fd77::1/64 dev v0 nodad");
    let table = Table {
        name: "braid".into(),
        chains: vec![
            nat_out(vec![
                rule(
                    vec![TCP, dport(8080), dst("10.77.0.0/24")],
                    Verdict::Redirect { port: 9090 },
                    "v4 to the relay",
                ),
                rule(
                    vec![TCP, dport(8080), dst("fd77::/64")],
                    Verdict::Redirect { port: 9090 },
                    "v6 to the relay",
                ),
            ]),
            filter_out(vec![rule(
                vec![UDP, dport(443)],
                Verdict::RejectPortUnreachable,
                "no quic",
            )]),
        ],
    };
    inside(&ns, move || nft::install(&table)).unwrap();

    let report = inside(&ns, || {
        let io = |e: std::io::Error| Error::io(braid_kernel::Op::Socket, e);
        let timeout = Duration::from_secs(5);
        // IPv4: a connection to an address nobody has reaches the listener.
        let listener = TcpListener::bind("0.0.0.0:9090").map_err(io)?;
        let target: SocketAddr = "10.77.0.5:8080".parse().unwrap();
        let client = TcpStream::connect_timeout(&target, timeout).map_err(io)?;
        let (server, peer) = listener.accept().map_err(io)?;
        assert_eq!(peer.ip(), client.local_addr().unwrap().ip());
        assert_eq!(
            server.local_addr().unwrap(),
            "127.0.0.1:9090".parse().unwrap()
        );
        assert_eq!(
            socket::original_destination(&server).map_err(io)?,
            Some(target)
        );
        echo(client, server);

        // A direct connection was not redirected.
        let direct: SocketAddr = "127.0.0.1:9090".parse().unwrap();
        let _c = TcpStream::connect_timeout(&direct, timeout).map_err(io)?;
        let (s, _) = listener.accept().map_err(io)?;
        assert_eq!(socket::original_destination(&s).map_err(io)?, None);
        drop((_c, s));

        // IPv6, to a v6-only listener on the same port.
        let l6 =
            socket2::Socket::new(socket2::Domain::IPV6, socket2::Type::STREAM, None).map_err(io)?;
        l6.set_only_v6(true).map_err(io)?;
        // As std does for its listeners: the port is bound again below
        // while connections of this one linger in TIME_WAIT.
        l6.set_reuse_address(true).map_err(io)?;
        l6.bind(&"[::]:9090".parse::<SocketAddr>().unwrap().into())
            .map_err(io)?;
        l6.listen(8).map_err(io)?;
        let l6: TcpListener = l6.into();
        let target6: SocketAddr = "[fd77::5]:8080".parse().unwrap();
        let c6 = TcpStream::connect_timeout(&target6, timeout).map_err(io)?;
        let (s6, _) = l6.accept().map_err(io)?;
        assert_eq!(s6.local_addr().unwrap(), "[::1]:9090".parse().unwrap());
        assert_eq!(
            socket::original_destination(&s6).map_err(io)?,
            Some(target6)
        );
        echo(c6, s6);

        // An IPv4 connection to a dual-stack listener is IPv4-mapped; its
        // original destination is still the IPv4 one.
        drop(listener);
        drop(l6);
        let dual = TcpListener::bind("[::]:9090").map_err(io)?;
        let c = TcpStream::connect_timeout(&target, timeout).map_err(io)?;
        let (s, peer) = dual.accept().map_err(io)?;
        assert!(peer.is_ipv6(), "{peer}");
        let mapped = socket::original_destination(&s).map_err(io)?;
        drop((c, s, dual));

        // MPTCP on both ends, when the kernel has it.
        let (ml, transport) = socket::listen("0.0.0.0:9090".parse().unwrap()).map_err(io)?;
        let (mc, _) = socket::connect(target).map_err(io)?;
        let (ms, _) = ml.accept().map_err(io)?;
        let mptcp_active = socket::is_mptcp_active(&ms).map_err(io)?;
        let mptcp = socket::original_destination(&ms);
        drop(mc);

        // UDP to port 443 is refused at once, other ports are not.
        let udp = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
        udp.connect("10.77.0.5:443").map_err(io)?;
        udp.set_read_timeout(Some(Duration::from_secs(3)))
            .map_err(io)?;
        let started = Instant::now();
        let sent = udp.send(b"hello");
        let mut buf = [0u8; 16];
        let received = udp.recv(&mut buf);
        let refused_after = started.elapsed();
        let other = UdpSocket::bind("0.0.0.0:0").map_err(io)?;
        other.connect("10.77.0.5:444").map_err(io)?;
        other
            .set_read_timeout(Some(Duration::from_millis(300)))
            .map_err(io)?;
        other.send(b"hello").map_err(io)?;
        let other_recv = other.recv(&mut buf);
        Ok((
            sent.map_err(|e| e.raw_os_error()),
            received.map(|_| ()).map_err(|e| e.raw_os_error()),
            refused_after,
            other_recv.map(|_| ()).map_err(|e| e.kind()),
            mapped,
            transport,
            mptcp_active,
            mptcp.map_err(|e| e.raw_os_error()),
        ))
    })
    .unwrap();
    let (sent, received, refused_after, other_recv, mapped, transport, mptcp_active, mptcp) =
        report;
    println!(
        "udp send {sent:?} recv {received:?} after {refused_after:?}; port 444 recv {other_recv:?}; \
         v4-mapped original destination {mapped:?}; {transport:?} listener, MPTCP active {mptcp_active}, \
         original destination {mptcp:?}"
    );
    // The reject drops the datagram (send may report EPERM for that) and
    // the ICMP port unreachable it answers makes the socket fail.
    assert!(
        sent.is_ok() || sent == Err(Some(libc::EPERM)),
        "send: {sent:?}"
    );
    assert_eq!(received, Err(Some(libc::ECONNREFUSED)));
    assert!(refused_after < Duration::from_secs(1), "{refused_after:?}");
    assert!(
        matches!(other_recv, Err(ErrorKind::WouldBlock | ErrorKind::TimedOut)),
        "{other_recv:?}"
    );
    assert_eq!(mapped, Some("10.77.0.5:8080".parse().unwrap()));
    // A live MPTCP socket does not pass SO_ORIGINAL_DST to its subflow;
    // plain TCP and fallen-back sockets answer it.
    if mptcp_active {
        assert!(
            mptcp == Ok(Some("10.77.0.5:8080".parse().unwrap()))
                || mptcp == Err(Some(libc::EOPNOTSUPP)),
            "{mptcp:?}"
        );
    } else {
        assert_eq!(mptcp, Ok(Some("10.77.0.5:8080".parse().unwrap())));
    }
}

#[test]
fn refusals_leave_the_installed_table_alone() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = ns_name("d");
    let _guard = common::Namespaces::create(&[&ns]);
    let good = Table {
        name: "braid".into(),
        chains: vec![nat_out(vec![rule(
            vec![TCP, dport(8080)],
            Verdict::Redirect { port: 9090 },
            "keep me",
        )])],
    };

    // Refused before anything is sent: nothing appears.
    let redirect_in_filter = Table {
        name: "braid".into(),
        chains: vec![filter_out(vec![rule(
            vec![],
            Verdict::Redirect { port: 9090 },
            "",
        )])],
    };
    let t = redirect_in_filter.clone();
    let err = inside(&ns, move || nft::install(&t)).unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    assert!(err.to_string().contains("nat chain"), "{err}");
    assert_eq!(inside(&ns, nft::tables).unwrap(), vec![]);

    // A refused first install leaves no table either.
    let mut bad_priority = good.clone();
    bad_priority.chains[0].priority = -300;
    let t = bad_priority.clone();
    let err = inside(&ns, move || nft::install(&t)).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EOPNOTSUPP), "{err}");
    assert_eq!(inside(&ns, nft::tables).unwrap(), vec![]);

    let t = good.clone();
    inside(&ns, move || nft::install(&t)).unwrap();
    let before = inside(&ns, || nft::list("braid")).unwrap().unwrap();
    assert_eq!(before.len(), 1);

    // The kernel refuses a nat chain at priority -300 (nat needs more than
    // -200): the batch, delete of the old table included, is undone.
    let mut bad = bad_priority.clone();
    bad.chains.insert(
        0,
        filter_out(vec![rule(
            vec![UDP, dport(443)],
            Verdict::RejectPortUnreachable,
            "",
        )]),
    );
    let err = inside(&ns, move || nft::install(&bad)).unwrap_err();
    println!("kernel refusal: {err}");
    match &err {
        Error::Kernel { errno, .. } => assert_eq!(*errno, libc::EOPNOTSUPP),
        other => panic!("{other:?}"),
    }
    assert!(err.to_string().contains("errno 95"), "{err}");
    assert_eq!(inside(&ns, || nft::list("braid")).unwrap().unwrap(), before);

    // Refused locally, naming what to do.
    for t in [
        redirect_in_filter,
        Table {
            name: "x".repeat(256),
            chains: vec![],
        },
        Table {
            name: "braid".into(),
            chains: vec![Chain {
                name: "c".repeat(300),
                ..good.chains[0].clone()
            }],
        },
        Table {
            name: "braid".into(),
            chains: vec![nat_out(vec![rule(vec![dport(80)], Verdict::Return, "")])],
        },
        Table {
            name: "braid".into(),
            chains: vec![nat_out(vec![rule(
                vec![],
                Verdict::RejectPortUnreachable,
                "",
            )])],
        },
        Table {
            name: "braid".into(),
            chains: vec![nat_out(vec![rule(
                vec![Match::InputInterface {
                    name: "sixteen-bytes-xx".into(),
                }],
                Verdict::Return,
                "",
            )])],
        },
    ] {
        let err = inside(&ns, move || nft::install(&t)).unwrap_err();
        assert!(matches!(err, Error::Invalid(_)), "{err:?}");
    }
    assert_eq!(inside(&ns, || nft::list("braid")).unwrap().unwrap(), before);
    assert!(matches!(nft::remove(""), Err(Error::Invalid(_))));
}
