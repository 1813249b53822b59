//! The kernel's MPTCP counters (`MPTcpExt*` in /proc/net/netstat, what
//! `nstat` shows) for the calling thread's network namespace.

use std::collections::BTreeMap;

use crate::error::{Error, Op, Result};

/// Every MPTcpExt counter by name (without the prefix), e.g. `NoDSSInWindow`.
pub fn mptcp() -> Result<BTreeMap<String, u64>> {
    // /proc/net is the process's namespace (its first thread's); a thread
    // that entered another one reads its own through thread-self.
    let text = std::fs::read_to_string("/proc/thread-self/net/netstat")
        .map_err(|e| Error::io(Op::Counters, e))?;
    parse(&text, "MPTcpExt")
}

/// MPTcpExt counter of connections opened here that fell back to TCP
/// because their MP_CAPABLE SYNs went unanswered.
pub const MPC_SYN_DROPS: &str = "MPCapableSYNTXDrop";
/// MPTcpExt counter of the times the kernel turned active MPTCP off for
/// the namespace (`active_mptcp_off`).
pub const BLACKHOLES: &str = "Blackhole";

/// The kernel's verdict that a middlebox drops MPTCP (kernel 6.12+), in
/// words: a connection whose MP_CAPABLE SYN and its retransmissions went
/// unanswered (`net.mptcp.syn_retrans_before_tcp_fallback`, 2 by default:
/// three SYNs, one second apart) falls back to TCP, and when the plain SYN
/// after them is answered at once the kernel turns active MPTCP off for
/// the whole namespace for `blackhole_timeout` seconds, doubling each time
/// up to 64 times (MPTcpExtBlackhole counts the times). On a lossy path
/// three failed handshakes in a row are enough: about 1 connection in 150
/// at 10 % loss each way. Returns what
/// happened and how to undo it, for `times` > 0 and a timeout that is not 0.
pub fn active_mptcp_off(times: u64, timeout_s: Option<u64>) -> Option<(String, String)> {
    if times == 0 || timeout_s == Some(0) {
        return None;
    }
    let window = match timeout_s {
        Some(t) => format!("{t} s after the last time, doubling each time (up to 64 x)"),
        None => "net.mptcp.blackhole_timeout seconds, doubling each time".into(),
    };
    let current = timeout_s.unwrap_or(3600);
    Some((
        format!("the kernel turned active MPTCP off {times} time(s) since this namespace started (MPTcpExtBlackhole): an MP_CAPABLE SYN and its retransmissions went unanswered (net.mptcp.syn_retrans_before_tcp_fallback) and a plain SYN was answered, which it takes for a middlebox that drops MPTCP; for {window}, connections opened from here are plain single-path TCP. On a lossy path three failed handshakes in a row are enough, with no middlebox at all"),
        format!("turn it back on now: sysctl -w net.mptcp.blackhole_timeout={current} (writing the setting clears the kernel's verdict); if no middlebox on your paths drops MPTCP options, sysctl -w net.mptcp.blackhole_timeout=0 turns the detection off (connections still fall back one by one)"),
    ))
}

/// The `prefix:` header line and the value line after it, zipped.
#[doc(hidden)]
pub fn parse(text: &str, prefix: &str) -> Result<BTreeMap<String, u64>> {
    let tag = format!("{prefix}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&tag));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return Ok(BTreeMap::new());
    };
    let names: Vec<&str> = names[tag.len()..].split_whitespace().collect();
    let values: Vec<&str> = values[tag.len()..].split_whitespace().collect();
    if names.len() != values.len() {
        return Err(Error::decode(
            Op::Counters,
            format!(
                "/proc/net/netstat has {} {prefix} names but {} values",
                names.len(),
                values.len()
            ),
        ));
    }
    names
        .into_iter()
        .zip(values)
        .map(|(n, v)| {
            v.parse::<u64>().map(|v| (n.to_string(), v)).map_err(|_| {
                Error::decode(Op::Counters, format!("{prefix} {n} is not a number: '{v}'"))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_names_with_values_and_refuses_mismatches() {
        let text =
            "TcpExt: A B\nTcpExt: 1 2\nMPTcpExt: NoDSSInWindow DuplicateData\nMPTcpExt: 628 2015\n";
        let m = parse(text, "MPTcpExt").unwrap();
        assert_eq!(m["NoDSSInWindow"], 628);
        assert_eq!(m["DuplicateData"], 2015);
        assert!(parse("MPTcpExt: A B\nMPTcpExt: 1\n", "MPTcpExt").is_err());
        assert!(parse("MPTcpExt: A\nMPTcpExt: x\n", "MPTcpExt").is_err());
        assert!(parse("TcpExt: A\nTcpExt: 1\n", "MPTcpExt")
            .unwrap()
            .is_empty());
    }

    #[test]
    fn this_kernel_has_the_counter_the_status_hint_reads() {
        if let Ok(m) = mptcp() {
            if !m.is_empty() {
                assert!(m.contains_key("NoDSSInWindow"), "{m:?}");
            }
        }
    }
}
