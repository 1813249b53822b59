//! The original destination of a redirected flow, looked up in the
//! kernel's connection tracking table over ctnetlink (`NETLINK_NETFILTER`,
//! subsystem `NFNL_SUBSYS_CTNETLINK`).
//!
//! A TCP socket can ask for its connection's original destination itself
//! (`SO_ORIGINAL_DST`, see [`crate::socket::original_destination`]); a UDP
//! socket that receives datagrams redirected by nftables (`redirect to
//! :PORT`, [`crate::nft::Verdict::Redirect`]) cannot, since it has no
//! connection. Conntrack knows every such flow by its reply direction
//! (from our socket back to the sender), and its original direction names
//! the address the sender meant to reach.
//!
//! Everything acts on the network namespace of the calling thread.

use std::net::{IpAddr, SocketAddr, SocketAddrV6};

use netlink_packet_netfilter::conntrack::{
    ConntrackAttribute, ConntrackMessage, IPTuple, ProtoTuple, Protocol as CtProtocol, Tuple,
};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};

use crate::error::{Error, Op, Result};
use crate::netlink::{Kind, NlSocket};
use crate::socket::unmap;

/// The transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        }
    }
}

/// The original destination of a redirected flow, from conntrack: `local`
/// is where the packets arrived after REDIRECT (our socket's address,
/// e.g. 127.0.0.1:7002), `peer` the program that sent them. Ok(None) when
/// conntrack has no such flow (not redirected, or expired).
///
/// The flow is found by its reply tuple (`local` → `peer`), the answer's
/// original tuple gives the destination the sender addressed. A flow that
/// conntrack knows but that was not translated (its original destination
/// is `local` itself) is also `Ok(None)`, as with
/// [`crate::socket::original_destination`].
///
/// `peer` must be the sender's address as the socket saw it (recv_from,
/// accept), which is not always the sender's own: when two flows of one
/// sending socket are redirected to the same local port, their reply
/// tuples would be the same, and the kernel rewrites the source port of
/// the later one too.
///
/// `local` must be the address the packets really arrived at: a socket
/// bound to the wildcard address (0.0.0.0 or ::) does not know it from
/// its own address and must learn it per datagram (`IP_PKTINFO` /
/// `IPV6_RECVPKTINFO`); an unspecified `local` is refused. IPv4-mapped
/// IPv6 addresses (from dual-stack sockets) are looked up, and answered,
/// as the IPv4 addresses they stand for. Link-local scope ids are not
/// part of conntrack's tuples and are not returned.
///
/// Conntrack keeps flows only in a namespace where something needs it
/// (a nat chain does) and forgets a UDP flow 30 s after its last packet
/// (`net.netfilter.nf_conntrack_udp_timeout`, longer once answered), so
/// look the destination up when the first datagram of a peer arrives.
///
/// Needs CAP_NET_ADMIN (every ctnetlink request does, reads included) and
/// a kernel with conntrack over netlink (CONFIG_NF_CT_NETLINK). One
/// netlink round trip per call; the lookup is exact, not a dump.
pub fn original_destination(
    protocol: Protocol,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<Option<SocketAddr>> {
    let op = Op::ConntrackGet;
    let (request, local, peer) = lookup(protocol, local, peer)?;
    let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER, op)?;
    let replies = match sock.request::<_, NetfilterMessage>(request, Kind::Do, 0, op) {
        Ok(r) => r,
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let attributes = replies
        .into_iter()
        .find_map(|m| match m.inner {
            // The kernel answers a GET with a NEW message (as it reports
            // new flows); take a GET as well.
            NetfilterMessageInner::Conntrack(
                ConntrackMessage::Get(a) | ConntrackMessage::New(a),
            ) => Some(a),
            _ => None,
        })
        .ok_or_else(|| {
            Error::decode(
                op,
                "the kernel acknowledged the conntrack lookup but sent no flow",
            )
        })?;
    original_from_answer(protocol, local, peer, &attributes).map_err(|d| Error::decode(op, d))
}

/// The IPCTNL_MSG_CT_GET request for the flow whose reply direction runs
/// from `local` to `peer`, or the reason it cannot be asked.
#[doc(hidden)]
pub fn get_request(
    protocol: Protocol,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<NetfilterMessage> {
    lookup(protocol, local, peer).map(|(request, _, _)| request)
}

/// [`get_request`], with the two addresses unmapped (as the answer is
/// checked against).
fn lookup(
    protocol: Protocol,
    local: SocketAddr,
    peer: SocketAddr,
) -> Result<(NetfilterMessage, SocketAddr, SocketAddr)> {
    let (l, p) = (unmap(local), unmap(peer));
    let family = match (l, p) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => NetfilterProtoFamily::IPv4,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => NetfilterProtoFamily::IPv6,
        _ => {
            return Err(Error::Invalid(format!(
                "cannot look up a {} flow between {local} and {peer} in conntrack: one is IPv4 and the other IPv6, and a flow has one address family; pass the addresses the socket reports (IPv4-mapped IPv6 addresses are fine)",
                protocol.name()
            )))
        }
    };
    for (what, a) in [("local", l), ("peer", p)] {
        if a.ip().is_unspecified() {
            return Err(Error::Invalid(format!(
                "cannot look up a {} flow in conntrack with the unspecified {what} address {a}: conntrack knows flows by the addresses their packets carry; {}",
                protocol.name(),
                if what == "local" {
                    "a socket bound to the wildcard address must learn each datagram's destination address (IP_PKTINFO / IPV6_RECVPKTINFO) and pass that"
                } else {
                    "pass the sender's address as recv_from or accept reported it"
                }
            )));
        }
        if a.port() == 0 {
            return Err(Error::Invalid(format!(
                "cannot look up a {} flow in conntrack with port 0 as the {what} port ({a}): no {} packet carries port 0; pass the port the socket reports",
                protocol.name(),
                protocol.name()
            )));
        }
    }
    // The reply direction: from our socket back to the sender.
    let reply = vec![
        Tuple::Ip(vec![
            IPTuple::SourceAddress(l.ip()),
            IPTuple::DestinationAddress(p.ip()),
        ]),
        Tuple::Proto(vec![
            ProtoTuple::Protocol(CtProtocol::from(protocol.number())),
            ProtoTuple::SourcePort(l.port()),
            ProtoTuple::DestinationPort(p.port()),
        ]),
    ];
    let request = NetfilterMessage::new(
        // NFNETLINK_V0, resource id 0.
        NetfilterHeader::new(family, 0, 0),
        ConntrackMessage::Get(vec![ConntrackAttribute::CtaTupleReply(reply)]),
    );
    Ok((request, l, p))
}

/// The parts of one conntrack tuple that were present.
#[derive(Debug, Default, PartialEq, Eq)]
struct Ends {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    src_port: Option<u16>,
    dst_port: Option<u16>,
}

fn ends(tuple: &[Tuple]) -> Ends {
    let mut e = Ends::default();
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(a) => e.src = Some(*a),
                        IPTuple::DestinationAddress(a) => e.dst = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for p in protos {
                    match p {
                        ProtoTuple::Protocol(n) => e.protocol = Some(u8::from(*n)),
                        ProtoTuple::SourcePort(n) => e.src_port = Some(*n),
                        ProtoTuple::DestinationPort(n) => e.dst_port = Some(*n),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    e
}

/// The original destination from the attributes of conntrack's answer
/// about the flow whose reply direction runs from `local` to `peer`
/// (both already unmapped); `None` when it was not translated. The error
/// says what is wrong with the answer.
#[doc(hidden)]
pub fn original_from_answer(
    protocol: Protocol,
    local: SocketAddr,
    peer: SocketAddr,
    attributes: &[ConntrackAttribute],
) -> std::result::Result<Option<SocketAddr>, String> {
    let mut orig = None;
    let mut reply = None;
    for a in attributes {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => orig = Some(ends(t)),
            ConntrackAttribute::CtaTupleReply(t) => reply = Some(ends(t)),
            _ => {}
        }
    }
    let orig = orig.ok_or("the conntrack answer has no original tuple (CTA_TUPLE_ORIG)")?;
    // The kernel found the flow by this tuple: anything else would be an
    // answer about another flow.
    if let Some(r) = reply {
        let asked = Ends {
            src: Some(local.ip()),
            dst: Some(peer.ip()),
            protocol: Some(protocol.number()),
            src_port: Some(local.port()),
            dst_port: Some(peer.port()),
        };
        if r != asked {
            return Err(format!(
                "conntrack answered about another flow: asked for the reply tuple {asked:?}, got {r:?}"
            ));
        }
    }
    match orig.protocol {
        Some(n) if n == protocol.number() => {}
        Some(n) => {
            return Err(format!(
                "conntrack's original tuple has protocol {n} for a {} flow (protocol {})",
                protocol.name(),
                protocol.number()
            ))
        }
        None => return Err("conntrack's original tuple has no protocol (CTA_PROTO_NUM)".into()),
    }
    let ip = orig.dst.ok_or(
        "conntrack's original tuple has no destination address (CTA_IP_V4_DST / CTA_IP_V6_DST)",
    )?;
    let port = orig
        .dst_port
        .ok_or("conntrack's original tuple has no destination port (CTA_PROTO_DST_PORT)")?;
    if ip.is_ipv4() != local.is_ipv4() {
        return Err(format!(
            "conntrack's original destination {ip} is of another address family than the flow's local address {}",
            local.ip()
        ));
    }
    let original = match ip {
        IpAddr::V4(v4) => SocketAddr::new(IpAddr::V4(v4), port),
        IpAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(v6, port, 0, 0)),
    };
    Ok((original != local).then_some(original))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_REQUEST};

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn tuple(src: &str, dst: &str, protocol: u8) -> Vec<Tuple> {
        let (s, d) = (sa(src), sa(dst));
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress(s.ip()),
                IPTuple::DestinationAddress(d.ip()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(CtProtocol::from(protocol)),
                ProtoTuple::SourcePort(s.port()),
                ProtoTuple::DestinationPort(d.port()),
            ]),
        ]
    }

    #[test]
    fn request_is_a_ct_get_by_reply_tuple() {
        let m = get_request(
            Protocol::Udp,
            sa("127.0.0.1:7002"),
            sa("[::ffff:10.77.0.1]:40000"),
        )
        .unwrap();
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(m));
        msg.finalize();
        let mut buf = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut buf);
        // nlmsg_type: NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_GET.
        assert_eq!(u16::from_ne_bytes([buf[4], buf[5]]), (1 << 8) | 1);
        // nfgenmsg: AF_INET, version 0, res_id 0.
        assert_eq!(&buf[16..20], &[2, 0, 0, 0]);
        // CTA_TUPLE_REPLY (2), nested.
        let kind = u16::from_ne_bytes([buf[22], buf[23]]);
        assert_eq!(kind & 0x3fff, 2);
        let body = &buf[20..];
        // Addresses and ports in network byte order.
        let find = |needle: &[u8]| body.windows(needle.len()).any(|w| w == needle);
        assert!(find(&[127, 0, 0, 1]));
        assert!(find(&[10, 77, 0, 1]));
        assert!(find(&7002u16.to_be_bytes()));
        assert!(find(&40000u16.to_be_bytes()));

        let m6 = get_request(Protocol::Tcp, sa("[::1]:7002"), sa("[fd77::1]:5")).unwrap();
        assert_eq!(u8::from(m6.header.family), 10);
    }

    #[test]
    fn requests_that_cannot_match_are_refused_with_reasons() {
        for (l, p) in [
            ("127.0.0.1:7002", "[fd77::1]:5"),
            ("0.0.0.0:7002", "10.0.0.1:5"),
            ("[::]:7002", "[fd77::1]:5"),
            ("127.0.0.1:0", "10.0.0.1:5"),
            ("127.0.0.1:7002", "10.0.0.1:0"),
            ("127.0.0.1:7002", "0.0.0.0:5"),
        ] {
            match get_request(Protocol::Udp, sa(l), sa(p)) {
                Err(Error::Invalid(msg)) => assert!(msg.len() > 60, "{msg}"),
                other => panic!("{l} {p}: {other:?}"),
            }
        }
    }

    #[test]
    fn answers_are_read_and_checked() {
        let local = sa("127.0.0.1:7002");
        let peer = sa("10.77.0.1:40000");
        let reply =
            ConntrackAttribute::CtaTupleReply(tuple("127.0.0.1:7002", "10.77.0.1:40000", 17));
        let orig = ConntrackAttribute::CtaTupleOrig(tuple("10.77.0.1:40000", "10.77.0.5:443", 17));
        let got = original_from_answer(Protocol::Udp, local, peer, &[orig.clone(), reply.clone()]);
        assert_eq!(got, Ok(Some(sa("10.77.0.5:443"))));
        // Without the reply tuple, the original one is enough.
        let got = original_from_answer(Protocol::Udp, local, peer, std::slice::from_ref(&orig));
        assert_eq!(got, Ok(Some(sa("10.77.0.5:443"))));
        // Not translated: going where it arrived.
        let direct =
            ConntrackAttribute::CtaTupleOrig(tuple("10.77.0.1:40000", "127.0.0.1:7002", 17));
        assert_eq!(
            original_from_answer(Protocol::Udp, local, peer, &[direct, reply.clone()]),
            Ok(None)
        );
        // IPv6.
        let local6 = sa("[::1]:7002");
        let peer6 = sa("[fd77::1]:40000");
        let got = original_from_answer(
            Protocol::Udp,
            local6,
            peer6,
            &[
                ConntrackAttribute::CtaTupleOrig(tuple("[fd77::1]:40000", "[fd77::5]:443", 17)),
                ConntrackAttribute::CtaTupleReply(tuple("[::1]:7002", "[fd77::1]:40000", 17)),
            ],
        );
        assert_eq!(got, Ok(Some(sa("[fd77::5]:443"))));

        // Malformed or unrelated answers are errors, never panics.
        let bad: Vec<Vec<ConntrackAttribute>> = vec![
            vec![],
            vec![reply.clone()],
            vec![ConntrackAttribute::CtaTupleOrig(vec![])],
            vec![ConntrackAttribute::CtaTupleOrig(tuple(
                "10.77.0.1:40000",
                "10.77.0.5:443",
                6,
            ))],
            vec![ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(vec![
                ProtoTuple::Protocol(CtProtocol::Udp),
                ProtoTuple::DestinationPort(443),
            ])])],
            vec![ConntrackAttribute::CtaTupleOrig(vec![
                Tuple::Ip(vec![IPTuple::DestinationAddress(sa("10.0.0.1:1").ip())]),
                Tuple::Proto(vec![ProtoTuple::Protocol(CtProtocol::Udp)]),
            ])],
            vec![ConntrackAttribute::CtaTupleOrig(tuple(
                "[fd77::1]:40000",
                "[fd77::5]:443",
                17,
            ))],
            vec![
                orig.clone(),
                ConntrackAttribute::CtaTupleReply(tuple("127.0.0.1:7002", "10.77.0.2:40000", 17)),
            ],
        ];
        for attrs in bad {
            match original_from_answer(Protocol::Udp, local, peer, &attrs) {
                Err(msg) => assert!(msg.contains("conntrack"), "{msg}"),
                Ok(v) => panic!("{attrs:?} gave {v:?}"),
            }
        }
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        assert_eq!(unmap(sa("[::ffff:10.0.0.1]:5")), sa("10.0.0.1:5"));
        assert_eq!(unmap(sa("[fd77::1]:5")), sa("[fd77::1]:5"));
        assert_eq!(unmap(sa("10.0.0.1:5")), sa("10.0.0.1:5"));
    }
}
