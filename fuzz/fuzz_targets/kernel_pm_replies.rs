//! Answers of the generic netlink controller and of the mptcp_pm family,
//! as `NlSocket::request` receives them: one datagram decoded by
//! `decode_replies` (framing, sequence numbers, DONE, ACK, errors with
//! the kernel's extended ack), then turned into Braid's types by
//! `family_from_reply` (CTRL_CMD_GETFAMILY), `decode_endpoint_reply`
//! (GET_ADDR) and `decode_limits` (GET_LIMITS). Also the nested address
//! attributes alone (`decode_endpoint`) and their round trip through the
//! encoder the requests use.
//!
//! Input: selector byte, sequence number (4 bytes), datagram.
//! Asserts: no panic; a resolved family has an id; a decoded endpoint has
//! the attributes it reports; decode(encode(endpoint)) == endpoint.
#![no_main]

use std::net::IpAddr;

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::{seq_and_rest, tolerate_upstream_panics};
use braid_kernel::genl::{family_from_reply, PmPayload};
use braid_kernel::pm::{decode_endpoint, decode_endpoint_reply, decode_limits, encode_addr_attr};
use braid_kernel::{decode_replies, Op};
use libfuzzer_sys::fuzz_target;
use netlink_packet_generic::ctrl::GenlCtrl;
use netlink_packet_generic::GenlMessage;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let Some((seq, datagram)) = seq_and_rest(rest) else {
        return;
    };
    match selector % 4 {
        0 => {
            let mut replies: Vec<GenlMessage<GenlCtrl>> = Vec::new();
            tolerate_upstream_panics(|| {
                decode_replies(datagram, seq, Op::ResolveFamily, &mut replies)
            });
            for r in replies {
                if let Ok(f) = family_from_reply(r) {
                    assert_ne!(f.id, 0);
                }
            }
        }
        1 => {
            let mut replies: Vec<GenlMessage<PmPayload>> = Vec::new();
            tolerate_upstream_panics(|| {
                decode_replies(datagram, seq, Op::GetEndpoint, &mut replies)
            });
            for r in &replies {
                let _ = decode_endpoint_reply(&r.payload);
                let _ = decode_limits(&r.payload);
            }
        }
        2 => {
            if let Ok(ep) = decode_endpoint(rest) {
                let present = |kind: u16| {
                    braid_kernel::attrs(rest)
                        .filter_map(|a| a.ok())
                        .any(|(k, _)| k == kind)
                };
                assert!(present(2), "an endpoint without its id attribute");
                assert!(present(3) || present(4));
                assert!(ep.port.is_none() || present(5));
                assert!(ep.ifindex.is_none_or(|i| i > 0 && i <= i32::MAX as u32));
                let _ = (ep.flags.names(), ep.flags.to_string());
            }
        }
        _ => {
            // Round trip of the request encoder and the reply decoder.
            let mut u = Unstructured::new(rest);
            let Ok(addr) = braid_fuzz::ip(&mut u) else {
                return;
            };
            let id = u8::arbitrary(&mut u).unwrap_or(1);
            let port = Option::<u16>::arbitrary(&mut u).unwrap_or(None);
            let flags = u32::arbitrary(&mut u).unwrap_or(0);
            let ifindex = Option::<u32>::arbitrary(&mut u).unwrap_or(None);
            let buf = encode_addr_attr(Some(addr), Some(id), port, Some(flags), ifindex);
            let (kind, nested) = braid_kernel::attrs(&buf).next().unwrap().unwrap();
            assert_eq!(kind, 1);
            let ep = decode_endpoint(nested).expect("an encoded endpoint decodes");
            assert_eq!(ep.id, id);
            assert_eq!(ep.addr, addr);
            // Port 0 means none; the kernel's ifindex is an s32, > 0 when set.
            assert_eq!(ep.port, port.filter(|p| *p != 0));
            assert_eq!(ep.flags.0, flags);
            assert_eq!(
                ep.ifindex,
                ifindex.filter(|i| (1..=i32::MAX as u32).contains(i))
            );
            assert!(ep.unknown_attrs.is_empty());
            let _: IpAddr = ep.addr;
            let payload = PmPayload {
                family_id: 0,
                cmd: 3,
                attrs: buf,
            };
            assert_eq!(decode_endpoint_reply(&payload).unwrap(), ep);
        }
    }
});
