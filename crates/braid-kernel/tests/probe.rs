//! The path probe against real namespaces: answered over a working veth,
//! unanswered when the peer ignores echoes (needs root).

mod common;
use common::ip;

use std::time::Duration;

use braid_kernel::{netns, probe, rtnl, Error};

fn probe_from(ns: &str, timeout_ms: u64, echoes: u16) -> Option<Duration> {
    netns::run_in::<_, Error>(ns, move || {
        let ifindex = rtnl::link_index("v0")?.unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(probe::echo(
            "10.78.0.1".parse().unwrap(),
            "10.78.0.2".parse().unwrap(),
            ifindex,
            Duration::from_millis(timeout_ms),
            echoes,
        ))
    })
    .unwrap()
}

#[test]
fn echo_is_answered_and_a_silent_peer_is_not() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (format!("bk-pa{tag}"), format!("bk-pb{tag}"));
    let _guard = common::Namespaces::create(&[&a, &b]);
    ip(&format!(
        "-n {a} link add v0 type veth peer name v1 netns {b}"
    ));
    ip(&format!("-n {a} addr add 10.78.0.1/24 dev v0"));
    ip(&format!("-n {b} addr add 10.78.0.2/24 dev v1"));
    ip(&format!("-n {a} link set v0 up"));
    ip(&format!("-n {b} link set v1 up"));
    let rtt = probe_from(&a, 1000, 5).expect("the peer answers");
    assert!(rtt < Duration::from_millis(1000));
    // The peer stops answering: no reply.
    netns::run_in::<_, Error>(&b, || {
        std::fs::write("/proc/sys/net/ipv4/icmp_echo_ignore_all", "1")
            .map_err(|e| Error::Invalid(e.to_string()))
    })
    .unwrap();
    // Every echo goes out within the wait, each its own packet.
    for echoes in [1, 5] {
        let before = icmp_in_msgs(&b);
        assert_eq!(probe_from(&a, 100, echoes), None);
        assert_eq!(icmp_in_msgs(&b) - before, u64::from(echoes));
    }
}

/// ICMP messages received in namespace `ns` (Icmp InMsgs; /proc/net follows the main thread, not this one).
fn icmp_in_msgs(ns: &str) -> u64 {
    netns::run_in::<_, Error>(ns, || {
        let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp")
            .map_err(|e| Error::Invalid(e.to_string()))?;
        let mut rows = snmp.lines().filter(|l| l.starts_with("Icmp:"));
        let (names, values) = (rows.next().unwrap(), rows.next().unwrap());
        let at = names
            .split_whitespace()
            .position(|n| n == "InMsgs")
            .unwrap();
        Ok(values.split_whitespace().nth(at).unwrap().parse().unwrap())
    })
    .unwrap()
}
