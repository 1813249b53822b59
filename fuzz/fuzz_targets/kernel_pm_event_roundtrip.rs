//! Structured: an arbitrary MPTCP event, encoded as the kernel encodes it
//! (mptcp_event_put_* in net/mptcp/pm_netlink.c: host byte order except
//! ports, big endian), in a generic netlink message of the family, then
//! decoded by `events::decode_datagram`.
//!
//! Asserts: decode(encode(event)) == event, for every command and every
//! combination of attributes, including unknown attributes and trailing
//! messages of other families (skipped).
#![no_main]

use std::collections::VecDeque;
use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::{genl_message, ip};
use braid_kernel::events::{decode_datagram, Event, EventKind, StreamItem};
use braid_kernel::push_attr;
use libfuzzer_sys::fuzz_target;

/// Attributes of a newer kernel: (type, value).
type UnknownAttrs = Vec<(u16, Vec<u8>)>;

fn event(u: &mut Unstructured<'_>) -> arbitrary::Result<(u8, Event, UnknownAttrs)> {
    let cmd = u8::arbitrary(u)?;
    let opt = |u: &mut Unstructured<'_>| u.ratio(1, 2);
    let mut ev = Event::empty(EventKind::from_cmd(cmd));
    if opt(u)? {
        ev.token = Some(u32::arbitrary(u)?);
    }
    if opt(u)? {
        ev.family = Some(u16::arbitrary(u)?);
    }
    if opt(u)? {
        ev.saddr = Some(ip(u)?);
    }
    if opt(u)? {
        ev.daddr = Some(ip(u)?);
    }
    if opt(u)? {
        ev.sport = Some(u16::arbitrary(u)?);
    }
    if opt(u)? {
        ev.dport = Some(u16::arbitrary(u)?);
    }
    if opt(u)? {
        ev.loc_id = Some(u8::arbitrary(u)?);
    }
    if opt(u)? {
        ev.rem_id = Some(u8::arbitrary(u)?);
    }
    if opt(u)? {
        ev.backup = Some(bool::arbitrary(u)?);
    }
    if opt(u)? {
        ev.error = Some(u8::arbitrary(u)?);
    }
    if opt(u)? {
        ev.flags = Some(u16::arbitrary(u)?);
    }
    if opt(u)? {
        ev.timeout = Some(u32::arbitrary(u)?);
    }
    if opt(u)? {
        ev.ifindex = Some(u32::arbitrary(u)?);
    }
    if opt(u)? {
        ev.reset_reason = Some(u32::arbitrary(u)?);
    }
    if opt(u)? {
        ev.reset_flags = Some(u32::arbitrary(u)?);
    }
    if opt(u)? {
        ev.server_side = Some(bool::arbitrary(u)?);
    }
    // Attributes of a newer kernel: any type above the known ones.
    let mut unknown = Vec::new();
    for _ in 0..u.int_in_range(0..=3)? {
        let kind = u.int_in_range(19..=0x3fff)?;
        let value: Vec<u8> = Vec::arbitrary(u)?;
        let value = value[..value.len().min(64)].to_vec();
        ev.unknown_attrs.push(kind);
        unknown.push((kind, value));
    }
    Ok((cmd, ev, unknown))
}

fn encode(ev: &Event, unknown: &[(u16, Vec<u8>)], u: &mut Unstructured<'_>) -> Vec<u8> {
    let mut a: Vec<(u16, Vec<u8>)> = Vec::new();
    if let Some(v) = ev.token {
        a.push((1, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.family {
        a.push((2, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.loc_id {
        a.push((3, vec![v]));
    }
    if let Some(v) = ev.rem_id {
        a.push((4, vec![v]));
    }
    match ev.saddr {
        Some(IpAddr::V4(v)) => a.push((5, v.octets().to_vec())),
        Some(IpAddr::V6(v)) => a.push((6, v.octets().to_vec())),
        None => {}
    }
    match ev.daddr {
        Some(IpAddr::V4(v)) => a.push((7, v.octets().to_vec())),
        Some(IpAddr::V6(v)) => a.push((8, v.octets().to_vec())),
        None => {}
    }
    if let Some(v) = ev.sport {
        a.push((9, v.to_be_bytes().to_vec()));
    }
    if let Some(v) = ev.dport {
        a.push((10, v.to_be_bytes().to_vec()));
    }
    if let Some(v) = ev.backup {
        a.push((11, vec![v as u8]));
    }
    if let Some(v) = ev.error {
        a.push((12, vec![v]));
    }
    if let Some(v) = ev.flags {
        a.push((13, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.timeout {
        a.push((14, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.ifindex {
        a.push((15, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.reset_reason {
        a.push((16, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.reset_flags {
        a.push((17, v.to_ne_bytes().to_vec()));
    }
    if let Some(v) = ev.server_side {
        a.push((18, vec![v as u8]));
    }
    // Known attributes in any order (the kernel's order is not a contract),
    // unknown ones in their order (the decoder lists them as they come).
    let mut shuffled = Vec::new();
    while !a.is_empty() {
        let i = u.choose_index(a.len()).unwrap_or(0);
        shuffled.push(a.remove(i));
    }
    let mut buf = Vec::new();
    for (k, v) in shuffled.iter().chain(unknown) {
        push_attr(&mut buf, *k, v);
    }
    buf
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok((cmd, ev, unknown)) = event(&mut u) else {
        return;
    };
    let family = u16::arbitrary(&mut u).unwrap_or(0x20).max(16);
    let attrs = encode(&ev, &unknown, &mut u);
    let mut datagram = genl_message(family, cmd, 0, &attrs);
    // A message of another family after it, as a shared socket may see.
    datagram.extend(genl_message(family.wrapping_add(1).max(16), 1, 0, &[]));
    let mut pending = VecDeque::new();
    decode_datagram(&datagram, family, &mut pending).expect("a well-formed event decodes");
    assert_eq!(pending.len(), 1);
    match pending.pop_front() {
        Some(StreamItem::Event(back)) => assert_eq!(back, ev),
        other => panic!("expected the event, got {other:?}"),
    }
});
