//! Helpers shared by the fuzz targets: netlink framing as the kernel writes
//! it, and generators of valid values for the round-trip targets.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use arbitrary::{Arbitrary, Result, Unstructured};
use braid_relay::wire::{Destination, Host};

/// Sequence number the decoders are asked to match in the reply targets
/// (the first four bytes of an input override it).
pub const SEQ: u32 = 1;

/// One netlink message: header (length, type, flags, sequence, port) and
/// payload, padded to 4 bytes as the kernel aligns messages in a datagram.
pub fn nl_message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let len = 16 + payload.len();
    let mut out = Vec::with_capacity(len + 3);
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize((out.len() + 3) & !3, 0);
    out
}

/// NLMSG_DONE for `seq`.
pub fn nl_done(seq: u32) -> Vec<u8> {
    nl_message(3, 2, seq, &0i32.to_ne_bytes())
}

/// A generic netlink message: genlmsghdr (cmd, version, reserved) then attributes.
pub fn genl_message(family: u16, cmd: u8, seq: u32, attrs: &[u8]) -> Vec<u8> {
    let mut p = vec![cmd, 1, 0, 0];
    p.extend_from_slice(attrs);
    nl_message(family, 0, seq, &p)
}

/// Split an input into a sequence number (first 4 bytes) and the rest.
pub fn seq_and_rest(data: &[u8]) -> Option<(u32, &[u8])> {
    let (s, rest) = data.split_first_chunk::<4>()?;
    Some((u32::from_ne_bytes(*s), rest))
}

/// Any IPv4 or IPv6 address.
pub fn ip(u: &mut Unstructured<'_>) -> Result<IpAddr> {
    Ok(if bool::arbitrary(u)? {
        IpAddr::V4(Ipv4Addr::from(u32::arbitrary(u)?))
    } else {
        IpAddr::V6(Ipv6Addr::from(u128::arbitrary(u)?))
    })
}

/// A host name `wire::check_name` accepts, in lower case (as decoders
/// return names): labels of 1 to 63 of [a-z0-9_-], 1 to 253 bytes in all,
/// optionally with the final dot.
pub fn host_name(u: &mut Unstructured<'_>) -> Result<String> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789-_";
    let labels = u.int_in_range(1..=8)?;
    let mut name = String::new();
    for i in 0..labels {
        let len = u.int_in_range(1..=63)?;
        if i > 0 {
            name.push('.');
        }
        for _ in 0..len {
            name.push(*u.choose(CHARS)? as char);
        }
    }
    name.truncate(252);
    while name.ends_with('.') {
        name.pop();
    }
    if name.is_empty() {
        name.push('a');
    }
    if bool::arbitrary(u)? && name.len() < 253 {
        name.push('.');
    }
    Ok(name)
}

/// A destination the relay protocol can carry (port not 0, valid name).
pub fn destination(u: &mut Unstructured<'_>) -> Result<Destination> {
    let host = if u.ratio(1, 3)? {
        Host::Name(host_name(u)?)
    } else {
        Host::Ip(ip(u)?)
    };
    Ok(Destination {
        host,
        port: u.int_in_range(1..=u16::MAX)?,
    })
}

/// Source paths of the netlink-packet-* crates (crates.io registry or git
/// checkouts), whose parsers panic on some malformed nested attributes.
const UPSTREAM: &str = "/netlink-packet-";

std::thread_local! {
    static TOLERATING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, a decode of bytes that only the kernel sends, tolerating the
/// known panics of the netlink-packet-* parsers (see fuzz/README.md): a
/// panic located in those crates' sources makes this return `None`
/// (noted once on stderr); any other panic aborts as usual, so Braid's own
/// code is still checked on the same inputs.
pub fn tolerate_upstream_panics<R>(f: impl FnOnce() -> R) -> Option<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    static NOTED: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // libfuzzer-sys's hook aborts: keep it for every other panic.
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let upstream = info.location().is_some_and(|l| l.file().contains(UPSTREAM));
            if upstream && TOLERATING.get() {
                NOTED.call_once(|| eprintln!("braid-fuzz: tolerated (upstream): {info}"));
            } else {
                previous(info);
            }
        }));
    });
    TOLERATING.set(true);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    TOLERATING.set(false);
    result.ok()
}
