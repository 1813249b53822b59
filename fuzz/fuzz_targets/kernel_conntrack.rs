//! Conntrack answers as `conntrack::original_destination` reads them: one
//! datagram decoded by `decode_replies` into `NetfilterMessage`s, the flow's
//! attributes (GET or NEW) checked and read by
//! `conntrack::original_from_answer` against the flow that was asked for;
//! and the request's round trip (`conntrack::get_request` encoded, decoded
//! back: the reply tuple asked for is the one sent).
//!
//! Input: selector byte; then protocol, local and peer addresses from the
//! input and a sequence number and datagram, or (round trip) the addresses.
//! Asserts: no panic; an original destination is of the flow's family and
//! never the local address itself; the request carries the flow asked.
#![no_main]

use std::net::{IpAddr, SocketAddr};

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::{ip, tolerate_upstream_panics, SEQ};
use braid_kernel::conntrack::{get_request, original_from_answer, Protocol};
use braid_kernel::{decode_replies, Op};
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Tuple,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

fn addr(u: &mut Unstructured<'_>) -> arbitrary::Result<SocketAddr> {
    Ok(SocketAddr::new(ip(u)?, u16::arbitrary(u)?))
}

fn unmap(a: SocketAddr) -> SocketAddr {
    match a.ip() {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), a.port()),
            None => a,
        },
        _ => a,
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let mut u = Unstructured::new(rest);
    let protocol = if bool::arbitrary(&mut u).unwrap_or(false) {
        Protocol::Tcp
    } else {
        Protocol::Udp
    };
    let (Ok(local), Ok(peer)) = (addr(&mut u), addr(&mut u)) else {
        return;
    };
    if selector % 2 == 0 {
        let Ok(seq) = u32::arbitrary(&mut u) else {
            return;
        };
        let datagram = u.take_rest();
        let mut replies: Vec<NetfilterMessage> = Vec::new();
        tolerate_upstream_panics(|| decode_replies(datagram, seq, Op::ConntrackGet, &mut replies));
        for m in replies {
            let NetfilterMessageInner::Conntrack(
                ConntrackMessage::Get(a) | ConntrackMessage::New(a),
            ) = m.inner
            else {
                continue;
            };
            let (local, peer) = (unmap(local), unmap(peer));
            if let Ok(Some(original)) = original_from_answer(protocol, local, peer, &a) {
                assert_ne!(original, local);
                assert_eq!(original.is_ipv4(), local.is_ipv4());
            }
        }
        return;
    }
    // The request's round trip.
    let Ok(request) = get_request(protocol, local, peer) else {
        return;
    };
    let mut header = NetlinkHeader::default();
    header.sequence_number = SEQ;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(request));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    let mut back: Vec<NetfilterMessage> = Vec::new();
    decode_replies(&buf, SEQ, Op::ConntrackGet, &mut back).expect("the request decodes");
    let [NetfilterMessage {
        inner: NetfilterMessageInner::Conntrack(ConntrackMessage::Get(attrs)),
        ..
    }] = back.as_slice()
    else {
        panic!("not one conntrack GET: {back:?}");
    };
    let [ConntrackAttribute::CtaTupleReply(tuple)] = attrs.as_slice() else {
        panic!("not one reply tuple: {attrs:?}");
    };
    let (l, p) = (unmap(local), unmap(peer));
    let mut seen = (None, None, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for i in ips {
                    match i {
                        IPTuple::SourceAddress(a) => seen.0 = Some(*a),
                        IPTuple::DestinationAddress(a) => seen.1 = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(ps) => {
                for x in ps {
                    match x {
                        ProtoTuple::SourcePort(n) => seen.2 = Some(*n),
                        ProtoTuple::DestinationPort(n) => seen.3 = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        (Some(l.ip()), Some(p.ip()), Some(l.port()), Some(p.port()))
    );
});
