//! The `mptcp_pm` generic netlink commands: endpoints and limits of the
//! in-kernel path manager, and the userspace path-manager commands that act
//! on one connection (by token).

use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use netlink_packet_core::{Nla, NLA_TYPE_MASK};
use netlink_packet_generic::GenlMessage;
use serde::Serialize;

use crate::error::{Error, Op, Result};
use crate::genl::{open_genl, resolve_family, Family, PmPayload, MPTCP_PM_NAME};
use crate::netlink::{nlas, Kind, NlSocket};
use crate::pm_attrs::{cmd, emit_nlas, AddrAttr, PmAttr};

pub use braid_types::endpoint::{EndpointFlags, Limits, KERNEL_MAX_LIMIT};

/// One endpoint of the in-kernel path manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Endpoint {
    pub id: u8,
    pub addr: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub flags: EndpointFlags,
    /// Interface index the endpoint is bound to (`dev`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    /// Attribute types this version of Braid does not know.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_attrs: Vec<u16>,
}

/// What to add: like `ip mptcp endpoint add ADDR [port P] [dev D] [id I] FLAGS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEndpoint {
    pub addr: IpAddr,
    pub id: Option<u8>,
    pub port: Option<u16>,
    pub flags: EndpointFlags,
    pub ifindex: Option<u32>,
}

/// Identifies an endpoint for `del` and `set`: by id or by address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EndpointSelector {
    Id(u8),
    Addr(IpAddr),
}

/// Generic netlink client for the `mptcp_pm` family.
pub struct PathManager {
    sock: NlSocket,
    family: Family,
}

impl PathManager {
    /// Open a socket and resolve the family in the current network namespace.
    pub fn open() -> Result<Self> {
        let mut sock = open_genl(Op::ResolveFamily)?;
        let family = resolve_family(&mut sock, MPTCP_PM_NAME)?;
        Ok(PathManager { sock, family })
    }

    fn call(&mut self, cmd: u8, attrs: &[PmAttr], kind: Kind, op: Op) -> Result<Vec<PmPayload>> {
        let mut msg = GenlMessage::from_payload(PmPayload {
            family_id: self.family.id,
            cmd,
            attrs: emit_nlas(attrs),
        });
        msg.finalize();
        let replies: Vec<GenlMessage<PmPayload>> = self.sock.request(msg, kind, 0, op)?;
        Ok(replies.into_iter().map(|m| m.payload).collect())
    }

    pub fn add_endpoint(&mut self, ep: &NewEndpoint) -> Result<()> {
        if ep.id == Some(0) {
            return Err(Error::Invalid(
                "endpoint id 0 is reserved for the address of the initial subflow: use an id from 1 to 255".into(),
            ));
        }
        let addr = AddrAttrs {
            addr: Some(ep.addr),
            id: ep.id,
            port: ep.port,
            flags: Some(ep.flags.0),
            ifindex: ep.ifindex,
        };
        self.call(
            cmd::ADD_ADDR,
            &[PmAttr::Addr(addr.nest())],
            Kind::Do,
            Op::AddEndpoint,
        )?;
        Ok(())
    }

    pub fn del_endpoint(&mut self, sel: &EndpointSelector) -> Result<()> {
        let addr = PmAttr::Addr(selector_attrs(sel, None).nest());
        self.call(cmd::DEL_ADDR, &[addr], Kind::Do, Op::DelEndpoint)?;
        Ok(())
    }

    pub fn get_endpoint(&mut self, id: u8) -> Result<Endpoint> {
        let addr = PmAttr::Addr(selector_attrs(&EndpointSelector::Id(id), None).nest());
        let replies = self.call(cmd::GET_ADDR, &[addr], Kind::Do, Op::GetEndpoint)?;
        let reply = replies
            .first()
            .ok_or_else(|| Error::decode(Op::GetEndpoint, "no reply to GET_ADDR"))?;
        decode_endpoint_reply(reply)
    }

    pub fn endpoints(&mut self) -> Result<Vec<Endpoint>> {
        let replies = self.call(cmd::GET_ADDR, &[], Kind::Dump, Op::GetEndpoint)?;
        let mut eps = replies
            .iter()
            .map(decode_endpoint_reply)
            .collect::<Result<Vec<_>>>()?;
        eps.sort_by_key(|e| e.id);
        Ok(eps)
    }

    pub fn flush_endpoints(&mut self) -> Result<()> {
        // The kernel wants an (empty) address attribute for FLUSH on some versions.
        let empty = PmAttr::Addr(Vec::new());
        self.call(cmd::FLUSH_ADDRS, &[empty], Kind::Do, Op::FlushEndpoints)?;
        Ok(())
    }

    /// Change the flags of an endpoint (in-kernel PM). Only `backup`,
    /// `fullmesh` and `laminar` can change on a live endpoint.
    pub fn set_endpoint_flags(
        &mut self,
        sel: &EndpointSelector,
        flags: EndpointFlags,
    ) -> Result<()> {
        let addr = PmAttr::Addr(selector_attrs(sel, Some(flags.0)).nest());
        self.call(cmd::SET_FLAGS, &[addr], Kind::Do, Op::SetFlags)?;
        Ok(())
    }

    pub fn limits(&mut self) -> Result<Limits> {
        let replies = self.call(cmd::GET_LIMITS, &[], Kind::Do, Op::GetLimits)?;
        let reply = replies
            .first()
            .ok_or_else(|| Error::decode(Op::GetLimits, "no reply to GET_LIMITS"))?;
        decode_limits(reply)
    }

    /// Set one or both limits; a `None` keeps the kernel's current value.
    pub fn set_limits(
        &mut self,
        subflows: Option<u32>,
        add_addr_accepted: Option<u32>,
    ) -> Result<()> {
        for v in [subflows, add_addr_accepted].into_iter().flatten() {
            if v > KERNEL_MAX_LIMIT {
                return Err(Error::Invalid(format!(
                    "limit {v} is out of range: the kernel allows 0 to {KERNEL_MAX_LIMIT}"
                )));
            }
        }
        let attrs: Vec<PmAttr> = [
            add_addr_accepted.map(PmAttr::RcvAddAddrs),
            subflows.map(PmAttr::Subflows),
        ]
        .into_iter()
        .flatten()
        .collect();
        self.call(cmd::SET_LIMITS, &attrs, Kind::Do, Op::SetLimits)?;
        Ok(())
    }

    // ---- userspace path manager (net.mptcp.path_manager = userspace) ----

    /// Announce a local address with id `id` on connection `token` (ADD_ADDR).
    pub fn announce(&mut self, token: u32, id: u8, addr: IpAddr, port: Option<u16>) -> Result<()> {
        let addr = AddrAttrs {
            addr: Some(addr),
            id: Some(id),
            port,
            flags: Some(EndpointFlags::SIGNAL),
            ifindex: None,
        };
        let attrs = [PmAttr::Token(token), PmAttr::Addr(addr.nest())];
        self.call(cmd::ANNOUNCE, &attrs, Kind::Do, Op::Announce)?;
        Ok(())
    }

    /// Withdraw an announced address id from connection `token` (RM_ADDR).
    pub fn remove(&mut self, token: u32, id: u8) -> Result<()> {
        let attrs = [PmAttr::Token(token), PmAttr::LocId(id)];
        self.call(cmd::REMOVE, &attrs, Kind::Do, Op::Remove)?;
        Ok(())
    }

    /// Open a new subflow on `token` from `local` (port 0: any) with local
    /// address id `local_id` to `remote`.
    pub fn subflow_create(
        &mut self,
        token: u32,
        local_id: u8,
        local: IpAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> Result<()> {
        let local = AddrAttrs {
            addr: Some(local),
            id: Some(local_id),
            port: None,
            flags: backup.then_some(EndpointFlags::BACKUP),
            ifindex: None,
        };
        let attrs = [
            PmAttr::Token(token),
            PmAttr::Addr(local.nest()),
            PmAttr::AddrRemote(AddrAttrs::socket(remote).nest()),
        ];
        self.call(cmd::SUBFLOW_CREATE, &attrs, Kind::Do, Op::SubflowCreate)?;
        Ok(())
    }

    /// Close the subflow of `token` between `local` and `remote` (exact ports).
    pub fn subflow_destroy(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<()> {
        let attrs = [
            PmAttr::Token(token),
            PmAttr::Addr(AddrAttrs::socket(local).nest()),
            PmAttr::AddrRemote(AddrAttrs::socket(remote).nest()),
        ];
        self.call(cmd::SUBFLOW_DESTROY, &attrs, Kind::Do, Op::SubflowDestroy)?;
        Ok(())
    }

    /// Set the backup flag of one subflow of `token` (MP_PRIO), userspace PM.
    pub fn set_subflow_backup(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    ) -> Result<()> {
        let mut l = AddrAttrs::socket(local);
        l.flags = Some(if backup { EndpointFlags::BACKUP } else { 0 });
        let attrs = [
            PmAttr::Token(token),
            PmAttr::Addr(l.nest()),
            PmAttr::AddrRemote(AddrAttrs::socket(remote).nest()),
        ];
        self.call(cmd::SET_FLAGS, &attrs, Kind::Do, Op::SetFlags)?;
        Ok(())
    }
}

fn selector_attrs(sel: &EndpointSelector, flags: Option<u32>) -> AddrAttrs {
    match sel {
        EndpointSelector::Id(id) => AddrAttrs {
            addr: None,
            id: Some(*id),
            port: None,
            flags,
            ifindex: None,
        },
        EndpointSelector::Addr(a) => AddrAttrs {
            addr: Some(*a),
            id: None,
            port: None,
            flags,
            ifindex: None,
        },
    }
}

/// The nested MPTCP_PM_ADDR_ATTR_* set, for requests.
struct AddrAttrs {
    addr: Option<IpAddr>,
    id: Option<u8>,
    port: Option<u16>,
    flags: Option<u32>,
    ifindex: Option<u32>,
}

impl AddrAttrs {
    fn socket(sa: SocketAddr) -> Self {
        AddrAttrs {
            addr: Some(sa.ip()),
            id: None,
            port: Some(sa.port()),
            flags: None,
            ifindex: None,
        }
    }

    /// The address nest, in the order Braid always sent it.
    fn nest(&self) -> Vec<AddrAttr> {
        let mut nest = Vec::new();
        match self.addr {
            Some(IpAddr::V4(a)) => {
                nest.push(AddrAttr::Family(libc::AF_INET as u16));
                nest.push(AddrAttr::Addr4(a));
            }
            Some(IpAddr::V6(a)) => {
                nest.push(AddrAttr::Family(libc::AF_INET6 as u16));
                nest.push(AddrAttr::Addr6(a));
            }
            None => {}
        }
        nest.extend(self.id.map(AddrAttr::Id));
        nest.extend(self.port.map(AddrAttr::Port));
        nest.extend(self.flags.map(AddrAttr::Flags));
        nest.extend(self.ifindex.map(|i| AddrAttr::IfIdx(i as i32)));
        nest
    }
}

/// The limits in a GET_LIMITS reply.
#[doc(hidden)]
pub fn decode_limits(reply: &PmPayload) -> Result<Limits> {
    let mut limits = Limits::default();
    for attr in nlas(&reply.attrs) {
        match attr.map_err(|e| Error::decode(Op::GetLimits, e))? {
            PmAttr::RcvAddAddrs(v) => limits.add_addr_accepted = v,
            PmAttr::Subflows(v) => limits.subflows = v,
            _ => {}
        }
    }
    Ok(limits)
}

/// The MPTCP_PM_ATTR_ADDR attribute (with its nested address attributes)
/// that requests carry, for the fuzz targets' round trips.
#[doc(hidden)]
pub fn encode_addr_attr(
    addr: Option<IpAddr>,
    id: Option<u8>,
    port: Option<u16>,
    flags: Option<u32>,
    ifindex: Option<u32>,
) -> Vec<u8> {
    let attrs = AddrAttrs {
        addr,
        id,
        port,
        flags,
        ifindex,
    };
    emit_nlas(&[PmAttr::Addr(attrs.nest())])
}

/// The endpoint of a GET_ADDR reply (its first address attribute).
#[doc(hidden)]
pub fn decode_endpoint_reply(reply: &PmPayload) -> Result<Endpoint> {
    for attr in nlas(&reply.attrs) {
        if let PmAttr::Addr(nest) = attr.map_err(|e| Error::decode(Op::GetEndpoint, e))? {
            return endpoint_from(nest);
        }
    }
    Err(Error::decode(
        Op::GetEndpoint,
        "GET_ADDR reply without an address",
    ))
}

/// Decode a nested MPTCP_PM_ATTR_ADDR into an endpoint.
pub fn decode_endpoint(nested: &[u8]) -> Result<Endpoint> {
    let nest = nlas(nested)
        .collect::<std::result::Result<Vec<AddrAttr>, _>>()
        .map_err(|e| Error::decode(Op::GetEndpoint, e))?;
    endpoint_from(nest)
}

fn endpoint_from(nest: Vec<AddrAttr>) -> Result<Endpoint> {
    let op = Op::GetEndpoint;
    let mut id = None;
    let mut addr = None;
    let mut port = None;
    let mut flags = 0;
    let mut ifindex = None;
    let mut unknown_attrs = Vec::new();
    for attr in nest {
        match attr {
            AddrAttr::Family(_) => {}
            AddrAttr::Id(i) => id = Some(i),
            AddrAttr::Addr4(a) => addr = Some(IpAddr::V4(a)),
            AddrAttr::Addr6(a) => addr = Some(IpAddr::V6(a)),
            AddrAttr::Port(p) => port = (p != 0).then_some(p),
            AddrAttr::Flags(f) => flags = f,
            AddrAttr::IfIdx(i) => ifindex = (i > 0).then_some(i as u32),
            AddrAttr::Other(nla) => unknown_attrs.push(nla.kind() & NLA_TYPE_MASK),
        }
    }
    Ok(Endpoint {
        id: id.ok_or_else(|| Error::decode(op, "endpoint without an id"))?,
        addr: addr.ok_or_else(|| Error::decode(op, "endpoint without an address"))?,
        port,
        flags: EndpointFlags(flags),
        ifindex,
        unknown_attrs,
    })
}

impl FromStr for EndpointSelector {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        if let Ok(id) = s.parse::<u8>() {
            return Ok(EndpointSelector::Id(id));
        }
        s.parse::<IpAddr>()
            .map(EndpointSelector::Addr)
            .map_err(|_| {
                Error::Invalid(format!(
                    "'{s}' is neither an endpoint id (1-255) nor an IP address"
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_names_round_trip_and_unknown_bits() {
        let f = EndpointFlags(EndpointFlags::SUBFLOW | EndpointFlags::BACKUP | 0x400);
        assert_eq!(f.names(), vec!["subflow", "backup", "unknown(0x400)"]);
        assert_eq!(
            EndpointFlags::parse_name("fullmesh").unwrap(),
            EndpointFlags::FULLMESH
        );
        assert!(EndpointFlags::parse_name("implicit").is_err());
        assert!(EndpointFlags::parse_name("bogus").is_err());
    }

    use crate::netlink::{attrs, push_attr};

    const ADDR_ID: u16 = 2;
    const ADDR_ADDR4: u16 = 3;

    #[test]
    fn endpoint_encoding_decodes_back() {
        let buf = encode_addr_attr(
            Some("10.0.0.1".parse().unwrap()),
            Some(7),
            Some(8080),
            Some(EndpointFlags::SIGNAL),
            Some(3),
        );
        let (_, nested) = attrs(&buf).next().unwrap().unwrap();
        let ep = decode_endpoint(nested).unwrap();
        assert_eq!(ep.id, 7);
        assert_eq!(ep.port, Some(8080));
        assert_eq!(ep.ifindex, Some(3));
        assert_eq!(ep.flags.0, EndpointFlags::SIGNAL);
    }

    #[test]
    fn requests_are_encoded_as_before() {
        // The bytes the hand-written encoder sent, attribute by attribute.
        let mut nested = Vec::new();
        push_attr(&mut nested, 1, &(libc::AF_INET6 as u16).to_ne_bytes());
        push_attr(
            &mut nested,
            4,
            &"2001:db8::7"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        push_attr(&mut nested, 2, &[7]);
        push_attr(&mut nested, 5, &8080u16.to_ne_bytes());
        push_attr(&mut nested, 6, &5u32.to_ne_bytes());
        push_attr(&mut nested, 7, &3i32.to_ne_bytes());
        let mut want = Vec::new();
        push_attr(&mut want, 1 | netlink_packet_core::NLA_F_NESTED, &nested);
        let got = encode_addr_attr(
            Some("2001:db8::7".parse().unwrap()),
            Some(7),
            Some(8080),
            Some(5),
            Some(3),
        );
        assert_eq!(got, want);
        // Token, local id; limits in the order RCV_ADD_ADDRS, SUBFLOWS.
        let mut want = Vec::new();
        push_attr(&mut want, 4, &0x1234u32.to_ne_bytes());
        push_attr(&mut want, 5, &[9]);
        push_attr(&mut want, 2, &2u32.to_ne_bytes());
        push_attr(&mut want, 3, &8u32.to_ne_bytes());
        push_attr(&mut want, 1 | netlink_packet_core::NLA_F_NESTED, &[]);
        let got = emit_nlas(&[
            PmAttr::Token(0x1234),
            PmAttr::LocId(9),
            PmAttr::RcvAddAddrs(2),
            PmAttr::Subflows(8),
            PmAttr::Addr(Vec::new()),
        ]);
        assert_eq!(got, want);
    }

    #[test]
    fn replies_keep_unknown_attributes() {
        let mut nested = Vec::new();
        push_attr(&mut nested, ADDR_ID, &[4]);
        push_attr(&mut nested, ADDR_ADDR4, &[10, 0, 0, 4]);
        push_attr(&mut nested, 8, &[0; 4]);
        push_attr(&mut nested, 0x3fff, &[]);
        let mut reply = Vec::new();
        push_attr(&mut reply, 77, &[1]);
        push_attr(&mut reply, 1 | netlink_packet_core::NLA_F_NESTED, &nested);
        push_attr(&mut reply, 2, &3u32.to_ne_bytes());
        let payload = PmPayload {
            family_id: 0,
            cmd: cmd::GET_ADDR,
            attrs: reply,
        };
        let ep = decode_endpoint_reply(&payload).unwrap();
        assert_eq!((ep.id, ep.unknown_attrs.clone()), (4, vec![8, 0x3fff]));
        assert_eq!(decode_limits(&payload).unwrap().add_addr_accepted, 3);
        // A truncated reply is an error.
        let mut cut = payload.clone();
        cut.attrs.truncate(10);
        assert!(decode_endpoint_reply(&cut).is_err());
    }

    #[test]
    fn malformed_endpoint_is_an_error_not_a_panic() {
        let mut nested = Vec::new();
        push_attr(&mut nested, ADDR_ID, &[1]);
        push_attr(&mut nested, ADDR_ADDR4, &[10, 0]); // short
        assert!(decode_endpoint(&nested).is_err());
        let mut no_addr = Vec::new();
        push_attr(&mut no_addr, ADDR_ID, &[1]);
        push_attr(&mut no_addr, 99, &[1, 2, 3, 4]);
        assert!(decode_endpoint(&no_addr).is_err());
    }
}
