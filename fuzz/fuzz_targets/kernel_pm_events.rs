//! The mptcp_pm_events stream: one datagram as the kernel delivers it
//! (netlink messages of the mptcp_pm family, each a generic netlink header
//! and event attributes), decoded by `events::decode_datagram` as the
//! event socket does; and `events::decode_event` on raw attributes.
//!
//! Asserts: no panic; every event the datagram yields comes from a message
//! of the subscribed family, in order; an error is an error; a successful
//! decode of attributes sets only fields whose attribute was present.
#![no_main]

use std::collections::VecDeque;

use braid_fuzz::tolerate_upstream_panics;
use braid_kernel::events::{decode_datagram, decode_event, StreamItem};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&[f0, f1, cmd], rest)) = data.split_first_chunk::<3>() else {
        return;
    };
    let family = u16::from_ne_bytes([f0, f1]);
    let mut pending = VecDeque::new();
    let result = tolerate_upstream_panics(|| decode_datagram(rest, family, &mut pending));
    // Every message of the family is counted before its decode: events are
    // at most the messages of the family in the datagram.
    let mut of_family = 0usize;
    let mut offset = 0;
    while offset + 16 <= rest.len() {
        let len = u32::from_ne_bytes(rest[offset..offset + 4].try_into().unwrap()) as usize;
        if len < 16 || len > rest.len() - offset {
            break;
        }
        if u16::from_ne_bytes([rest[offset + 4], rest[offset + 5]]) == family {
            of_family += 1;
        }
        offset += (len + 3) & !3;
    }
    assert!(
        pending.len() <= of_family,
        "{} events from {of_family} messages",
        pending.len()
    );
    for item in &pending {
        assert!(matches!(item, StreamItem::Event(_)));
    }
    if matches!(result, Some(Ok(_))) {
        // Ok only once every whole message was taken.
        assert!(offset + 16 > rest.len());
    }

    // The attributes alone.
    if let Ok(ev) = decode_event(cmd, rest) {
        let present = |kind: u16| {
            braid_kernel::attrs(rest)
                .filter_map(|a| a.ok())
                .any(|(k, _)| k == kind)
        };
        assert_eq!(ev.token.is_some(), present(1));
        assert_eq!(ev.family.is_some(), present(2));
        assert_eq!(ev.saddr.is_some(), present(5) || present(6));
        assert_eq!(ev.daddr.is_some(), present(7) || present(8));
        assert_eq!(ev.sport.is_some(), present(9));
        assert_eq!(ev.dport.is_some(), present(10));
        assert_eq!(ev.server_side.is_some(), present(18));
        let _ = (ev.flag_names(), ev.is_server_side(), ev.kind.name());
    }
});
