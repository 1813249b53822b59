//! rtnetlink: the change monitor's datagrams (`rtnl::decode_changes`: link,
//! address and route notifications into `Change`s; undecodable messages
//! skipped) and dump answers as `links()`, `addresses()` and
//! `default_routes()` receive them (`decode_replies` into
//! `RouteNetlinkMessage`s, then `link_from_message`,
//! `address_from_message`, `default_routes_of`).
//!
//! Input: selector byte, then (monitor) a datagram or (dump) a sequence
//! number (4 bytes) and a datagram.
//! Asserts: no panic; at most one change per message except routes (one
//! per next hop); a default route is only reported for a unicast /0.
#![no_main]

use std::collections::VecDeque;

use braid_fuzz::{seq_and_rest, tolerate_upstream_panics};
use braid_kernel::rtnl::{
    address_from_message, decode_changes, default_routes_of, link_from_message, Change,
};
use braid_kernel::{decode_replies, Op};
use libfuzzer_sys::fuzz_target;
use netlink_packet_route::route::RouteType;
use netlink_packet_route::RouteNetlinkMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    if selector % 2 == 0 {
        let mut out = VecDeque::new();
        tolerate_upstream_panics(|| decode_changes(rest, &mut out));
        let messages = rest.len() / 16;
        let routes = out
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Change::DefaultRouteAdded(_) | Change::DefaultRouteRemoved(_)
                )
            })
            .count();
        assert!(out.len() - routes <= messages);
        assert!(!out.iter().any(|c| matches!(c, Change::Overflow)));
        return;
    }
    let Some((seq, datagram)) = seq_and_rest(rest) else {
        return;
    };
    let mut replies: Vec<RouteNetlinkMessage> = Vec::new();
    tolerate_upstream_panics(|| decode_replies(datagram, seq, Op::Rtnetlink, &mut replies));
    for r in &replies {
        match r {
            RouteNetlinkMessage::NewLink(l) => {
                let link = link_from_message(l);
                assert_eq!(link.index, l.header.index);
            }
            RouteNetlinkMessage::NewAddress(a) => {
                if let Some(addr) = address_from_message(a) {
                    assert_eq!(addr.prefix_len, a.header.prefix_len);
                    let _ = (
                        addr.is_temporary(),
                        addr.is_deprecated(),
                        addr.is_tentative(),
                    );
                }
            }
            RouteNetlinkMessage::NewRoute(m) => {
                let routes = default_routes_of(m);
                if !routes.is_empty() {
                    assert_eq!(m.header.destination_prefix_length, 0);
                    assert_eq!(m.header.kind, RouteType::Unicast);
                }
            }
            _ => {}
        }
    }
});
