//! The kernel's MPTCP counters (`MPTcpExt*` in /proc/net/netstat, what
//! `nstat` shows) for the calling thread's network namespace.

use std::collections::BTreeMap;

use crate::error::{Error, Op, Result};

/// Every MPTcpExt counter by name (without the prefix), e.g. `NoDSSInWindow`.
pub fn mptcp() -> Result<BTreeMap<String, u64>> {
    let text =
        std::fs::read_to_string("/proc/net/netstat").map_err(|e| Error::io(Op::Counters, e))?;
    parse(&text, "MPTcpExt")
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
