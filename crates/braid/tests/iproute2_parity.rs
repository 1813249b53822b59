//! Endpoints and limits written by braid read back identically with
//! `ip mptcp`, and the other way round, for every flag iproute2 knows.

mod common;
use common::Netns;

/// (braid/ip words after the address, expected ip/braid output suffix)
const CASES: &[(&str, &str)] = &[
    ("10.0.1.1 id 1 signal", "10.0.1.1 id 1 signal"),
    ("10.0.1.1 id 2 subflow", "10.0.1.1 id 2 subflow"),
    (
        "10.0.1.1 id 3 subflow backup",
        "10.0.1.1 id 3 subflow backup",
    ),
    ("10.0.1.1 id 4 signal backup", "10.0.1.1 id 4 signal backup"),
    (
        "10.0.1.1 id 5 subflow fullmesh",
        "10.0.1.1 id 5 subflow fullmesh",
    ),
    (
        "10.0.1.1 id 6 subflow backup fullmesh",
        "10.0.1.1 id 6 subflow backup fullmesh",
    ),
    (
        "10.0.1.1 id 7 subflow dev p0",
        "10.0.1.1 id 7 subflow dev p0",
    ),
    (
        "10.0.1.1 id 8 signal port 4242",
        "10.0.1.1 port 4242 id 8 signal",
    ),
    ("2001:db8::1 id 9 subflow", "2001:db8::1 id 9 subflow"),
    ("10.0.1.1 id 10 backup", "10.0.1.1 id 10 backup"),
    ("10.0.1.1 id 200", "10.0.1.1 id 200"),
];

fn setup() -> Netns {
    let ns = Netns::new("par");
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["link", "set", "p0", "up"]);
    ns.ip(&["link", "set", "p1", "up"]);
    // A signal endpoint with a port opens a listener: the address must exist.
    ns.ip(&["addr", "add", "10.0.1.1/24", "dev", "p0"]);
    ns
}

fn normalize(s: &str) -> Vec<String> {
    s.lines()
        .map(|l| l.trim_end().to_string())
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn braid_writes_ip_reads() {
    let ns = setup();
    for (words, expected) in CASES {
        let w: Vec<&str> = words.split_whitespace().collect();
        let mut args = vec!["endpoint", "add"];
        args.extend_from_slice(&w);
        ns.braid_ok(&args);
        let shown = normalize(&ns.ip_out(&["mptcp", "endpoint", "show"]));
        assert_eq!(
            shown,
            vec![expected.to_string()],
            "after braid endpoint add {words}"
        );
        // And braid's own listing says the same.
        assert_eq!(normalize(&ns.braid_ok(&["endpoint", "list"])), shown);
        ns.braid_ok(&["endpoint", "flush"]);
        assert!(ns.ip_out(&["mptcp", "endpoint", "show"]).trim().is_empty());
    }
    for (sub, acc) in [(0, 0), (2, 1), (8, 8), (3, 0)] {
        ns.braid_ok(&[
            "limits",
            "set",
            "subflows",
            &sub.to_string(),
            "add_addr_accepted",
            &acc.to_string(),
        ]);
        let ip = ns.ip_out(&["mptcp", "limits"]);
        assert_eq!(ip.trim(), format!("add_addr_accepted {acc} subflows {sub}"));
        assert_eq!(ns.braid_ok(&["limits", "get"]).trim(), ip.trim());
    }
}

#[test]
fn ip_writes_braid_reads() {
    let ns = setup();
    for (words, expected) in CASES {
        let w: Vec<&str> = words.split_whitespace().collect();
        let mut args = vec!["mptcp", "endpoint", "add"];
        args.extend_from_slice(&w);
        ns.ip(&args);
        assert_eq!(
            normalize(&ns.braid_ok(&["endpoint", "list"])),
            vec![expected.to_string()],
            "after ip mptcp endpoint add {words}"
        );
        let id = w[w.iter().position(|x| *x == "id").unwrap() + 1];
        assert_eq!(
            normalize(&ns.braid_ok(&["endpoint", "list", "id", id])),
            vec![expected.to_string()]
        );
        ns.ip(&["mptcp", "endpoint", "flush"]);
    }
    for (sub, acc) in [(1, 2), (8, 0), (0, 8)] {
        ns.ip(&[
            "mptcp",
            "limits",
            "set",
            "subflow",
            &sub.to_string(),
            "add_addr_accepted",
            &acc.to_string(),
        ]);
        assert_eq!(
            ns.braid_ok(&["limits", "get"]).trim(),
            format!("add_addr_accepted {acc} subflows {sub}")
        );
        let json: serde_json::Value =
            serde_json::from_str(&ns.braid_ok(&["--json", "limits", "get"])).unwrap();
        assert_eq!(json["subflows"], sub);
        assert_eq!(json["add_addr_accepted"], acc);
    }
}

#[test]
fn set_and_delete_match_ip() {
    let ns = setup();
    ns.braid_ok(&["endpoint", "add", "10.0.1.1", "id", "3", "subflow"]);
    ns.braid_ok(&["endpoint", "set", "id", "3", "backup", "fullmesh"]);
    assert_eq!(
        normalize(&ns.ip_out(&["mptcp", "endpoint", "show"])),
        vec!["10.0.1.1 id 3 subflow backup fullmesh"]
    );
    // `ip mptcp endpoint change` replaces backup and fullmesh with what it
    // is given, so "nobackup" also clears fullmesh; braid changes only the
    // flags it is given (documented in the README).
    ns.ip(&["mptcp", "endpoint", "change", "id", "3", "nobackup"]);
    assert_eq!(
        normalize(&ns.braid_ok(&["endpoint", "list"])),
        vec!["10.0.1.1 id 3 subflow"]
    );
    ns.braid_ok(&["endpoint", "set", "3", "fullmesh"]);
    ns.braid_ok(&["endpoint", "set", "3", "backup"]);
    assert_eq!(
        normalize(&ns.ip_out(&["mptcp", "endpoint", "show"])),
        vec!["10.0.1.1 id 3 subflow backup fullmesh"]
    );
    ns.braid_ok(&["endpoint", "set", "10.0.1.1", "nofullmesh", "nobackup"]);
    assert_eq!(
        normalize(&ns.ip_out(&["mptcp", "endpoint", "show"])),
        vec!["10.0.1.1 id 3 subflow"]
    );
    ns.braid_ok(&["endpoint", "del", "10.0.1.1"]);
    assert!(ns.ip_out(&["mptcp", "endpoint", "show"]).trim().is_empty());
    ns.ip(&["mptcp", "endpoint", "add", "10.0.1.1", "id", "4", "signal"]);
    ns.braid_ok(&["endpoint", "del", "id", "4"]);
    assert!(ns.ip_out(&["mptcp", "endpoint", "show"]).trim().is_empty());
}

/// `laminar` (Linux 6.18) is newer than the iproute2 on these machines, so
/// it is checked against the kernel's own dump only.
#[test]
fn laminar_round_trips_through_the_kernel() {
    let ns = setup();
    let out = ns.braid(&["endpoint", "add", "10.0.1.1", "id", "5", "laminar"]);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("not support") || err.contains("rejected"),
            "unexpected error: {err}"
        );
        eprintln!("skip: this kernel has no laminar endpoints: {err}");
        return;
    }
    assert_eq!(
        normalize(&ns.braid_ok(&["endpoint", "list"])),
        vec!["10.0.1.1 id 5 laminar"]
    );
}
