//! The `mptcp_pm` generic netlink commands: endpoints and limits of the
//! in-kernel path manager, and the userspace path-manager commands that act
//! on one connection (by token).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use netlink_packet_generic::GenlMessage;
use serde::Serialize;

use crate::error::{Error, Op, Result};
use crate::genl::{open_genl, resolve_family, Family, PmPayload, MPTCP_PM_NAME};
use crate::netlink::{attrs, push_attr, Kind, NlSocket, NLA_F_NESTED};

// Commands (include/uapi/linux/mptcp_pm.h).
const CMD_ADD_ADDR: u8 = 1;
const CMD_DEL_ADDR: u8 = 2;
const CMD_GET_ADDR: u8 = 3;
const CMD_FLUSH_ADDRS: u8 = 4;
const CMD_SET_LIMITS: u8 = 5;
const CMD_GET_LIMITS: u8 = 6;
const CMD_SET_FLAGS: u8 = 7;
const CMD_ANNOUNCE: u8 = 8;
const CMD_REMOVE: u8 = 9;
const CMD_SUBFLOW_CREATE: u8 = 10;
const CMD_SUBFLOW_DESTROY: u8 = 11;

// Top-level attributes.
const ATTR_ADDR: u16 = 1;
const ATTR_RCV_ADD_ADDRS: u16 = 2;
const ATTR_SUBFLOWS: u16 = 3;
const ATTR_TOKEN: u16 = 4;
const ATTR_LOC_ID: u16 = 5;
const ATTR_ADDR_REMOTE: u16 = 6;

// Address attributes (nested).
const ADDR_FAMILY: u16 = 1;
const ADDR_ID: u16 = 2;
const ADDR_ADDR4: u16 = 3;
const ADDR_ADDR6: u16 = 4;
const ADDR_PORT: u16 = 5;
const ADDR_FLAGS: u16 = 6;
const ADDR_IF_IDX: u16 = 7;

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

    fn call(&mut self, cmd: u8, attrs: Vec<u8>, kind: Kind, op: Op) -> Result<Vec<PmPayload>> {
        let mut msg = GenlMessage::from_payload(PmPayload {
            family_id: self.family.id,
            cmd,
            attrs,
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
        let mut buf = Vec::new();
        addr.push(&mut buf, ATTR_ADDR);
        self.call(CMD_ADD_ADDR, buf, Kind::Do, Op::AddEndpoint)?;
        Ok(())
    }

    pub fn del_endpoint(&mut self, sel: &EndpointSelector) -> Result<()> {
        let mut buf = Vec::new();
        selector_attrs(sel, None).push(&mut buf, ATTR_ADDR);
        self.call(CMD_DEL_ADDR, buf, Kind::Do, Op::DelEndpoint)?;
        Ok(())
    }

    pub fn get_endpoint(&mut self, id: u8) -> Result<Endpoint> {
        let mut buf = Vec::new();
        selector_attrs(&EndpointSelector::Id(id), None).push(&mut buf, ATTR_ADDR);
        let replies = self.call(CMD_GET_ADDR, buf, Kind::Do, Op::GetEndpoint)?;
        let reply = replies
            .first()
            .ok_or_else(|| Error::decode(Op::GetEndpoint, "no reply to GET_ADDR"))?;
        decode_endpoint_reply(reply)
    }

    pub fn endpoints(&mut self) -> Result<Vec<Endpoint>> {
        let replies = self.call(CMD_GET_ADDR, Vec::new(), Kind::Dump, Op::GetEndpoint)?;
        let mut eps = replies
            .iter()
            .map(decode_endpoint_reply)
            .collect::<Result<Vec<_>>>()?;
        eps.sort_by_key(|e| e.id);
        Ok(eps)
    }

    pub fn flush_endpoints(&mut self) -> Result<()> {
        // The kernel wants an (empty) address attribute for FLUSH on some versions.
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_ADDR | NLA_F_NESTED, &[]);
        self.call(CMD_FLUSH_ADDRS, buf, Kind::Do, Op::FlushEndpoints)?;
        Ok(())
    }

    /// Change the flags of an endpoint (in-kernel PM). Only `backup`,
    /// `fullmesh` and `laminar` can change on a live endpoint.
    pub fn set_endpoint_flags(
        &mut self,
        sel: &EndpointSelector,
        flags: EndpointFlags,
    ) -> Result<()> {
        let mut buf = Vec::new();
        selector_attrs(sel, Some(flags.0)).push(&mut buf, ATTR_ADDR);
        self.call(CMD_SET_FLAGS, buf, Kind::Do, Op::SetFlags)?;
        Ok(())
    }

    pub fn limits(&mut self) -> Result<Limits> {
        let replies = self.call(CMD_GET_LIMITS, Vec::new(), Kind::Do, Op::GetLimits)?;
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
        let mut buf = Vec::new();
        if let Some(v) = add_addr_accepted {
            push_attr(&mut buf, ATTR_RCV_ADD_ADDRS, &v.to_ne_bytes());
        }
        if let Some(v) = subflows {
            push_attr(&mut buf, ATTR_SUBFLOWS, &v.to_ne_bytes());
        }
        self.call(CMD_SET_LIMITS, buf, Kind::Do, Op::SetLimits)?;
        Ok(())
    }

    // ---- userspace path manager (net.mptcp.path_manager = userspace) ----

    /// Announce a local address with id `id` on connection `token` (ADD_ADDR).
    pub fn announce(&mut self, token: u32, id: u8, addr: IpAddr, port: Option<u16>) -> Result<()> {
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_TOKEN, &token.to_ne_bytes());
        AddrAttrs {
            addr: Some(addr),
            id: Some(id),
            port,
            flags: Some(EndpointFlags::SIGNAL),
            ifindex: None,
        }
        .push(&mut buf, ATTR_ADDR);
        self.call(CMD_ANNOUNCE, buf, Kind::Do, Op::Announce)?;
        Ok(())
    }

    /// Withdraw an announced address id from connection `token` (RM_ADDR).
    pub fn remove(&mut self, token: u32, id: u8) -> Result<()> {
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_TOKEN, &token.to_ne_bytes());
        push_attr(&mut buf, ATTR_LOC_ID, &[id]);
        self.call(CMD_REMOVE, buf, Kind::Do, Op::Remove)?;
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
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_TOKEN, &token.to_ne_bytes());
        AddrAttrs {
            addr: Some(local),
            id: Some(local_id),
            port: None,
            flags: backup.then_some(EndpointFlags::BACKUP),
            ifindex: None,
        }
        .push(&mut buf, ATTR_ADDR);
        AddrAttrs::socket(remote).push(&mut buf, ATTR_ADDR_REMOTE);
        self.call(CMD_SUBFLOW_CREATE, buf, Kind::Do, Op::SubflowCreate)?;
        Ok(())
    }

    /// Close the subflow of `token` between `local` and `remote` (exact ports).
    pub fn subflow_destroy(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    ) -> Result<()> {
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_TOKEN, &token.to_ne_bytes());
        AddrAttrs::socket(local).push(&mut buf, ATTR_ADDR);
        AddrAttrs::socket(remote).push(&mut buf, ATTR_ADDR_REMOTE);
        self.call(CMD_SUBFLOW_DESTROY, buf, Kind::Do, Op::SubflowDestroy)?;
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
        let mut buf = Vec::new();
        push_attr(&mut buf, ATTR_TOKEN, &token.to_ne_bytes());
        let mut l = AddrAttrs::socket(local);
        l.flags = Some(if backup { EndpointFlags::BACKUP } else { 0 });
        l.push(&mut buf, ATTR_ADDR);
        AddrAttrs::socket(remote).push(&mut buf, ATTR_ADDR_REMOTE);
        self.call(CMD_SET_FLAGS, buf, Kind::Do, Op::SetFlags)?;
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

    fn push(&self, out: &mut Vec<u8>, kind: u16) {
        let mut nested = Vec::new();
        match self.addr {
            Some(IpAddr::V4(a)) => {
                push_attr(
                    &mut nested,
                    ADDR_FAMILY,
                    &(libc::AF_INET as u16).to_ne_bytes(),
                );
                push_attr(&mut nested, ADDR_ADDR4, &a.octets());
            }
            Some(IpAddr::V6(a)) => {
                push_attr(
                    &mut nested,
                    ADDR_FAMILY,
                    &(libc::AF_INET6 as u16).to_ne_bytes(),
                );
                push_attr(&mut nested, ADDR_ADDR6, &a.octets());
            }
            None => {}
        }
        if let Some(id) = self.id {
            push_attr(&mut nested, ADDR_ID, &[id]);
        }
        if let Some(port) = self.port {
            // Host byte order: the kernel applies htons() itself.
            push_attr(&mut nested, ADDR_PORT, &port.to_ne_bytes());
        }
        if let Some(flags) = self.flags {
            push_attr(&mut nested, ADDR_FLAGS, &flags.to_ne_bytes());
        }
        if let Some(ifindex) = self.ifindex {
            push_attr(&mut nested, ADDR_IF_IDX, &(ifindex as i32).to_ne_bytes());
        }
        push_attr(out, kind | NLA_F_NESTED, &nested);
    }
}

/// The limits in a GET_LIMITS reply.
#[doc(hidden)]
pub fn decode_limits(reply: &PmPayload) -> Result<Limits> {
    let mut limits = Limits::default();
    for attr in attrs(&reply.attrs) {
        let (kind, value) = attr.map_err(|e| Error::decode(Op::GetLimits, e))?;
        match kind {
            ATTR_RCV_ADD_ADDRS => limits.add_addr_accepted = read_u32(value, Op::GetLimits)?,
            ATTR_SUBFLOWS => limits.subflows = read_u32(value, Op::GetLimits)?,
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
    let mut buf = Vec::new();
    AddrAttrs {
        addr,
        id,
        port,
        flags,
        ifindex,
    }
    .push(&mut buf, ATTR_ADDR);
    buf
}

#[doc(hidden)]
pub fn decode_endpoint_reply(reply: &PmPayload) -> Result<Endpoint> {
    for attr in attrs(&reply.attrs) {
        let (kind, value) = attr.map_err(|e| Error::decode(Op::GetEndpoint, e))?;
        if kind == ATTR_ADDR {
            return decode_endpoint(value);
        }
    }
    Err(Error::decode(
        Op::GetEndpoint,
        "GET_ADDR reply without an address",
    ))
}

/// Decode a nested MPTCP_PM_ATTR_ADDR into an endpoint.
pub fn decode_endpoint(nested: &[u8]) -> Result<Endpoint> {
    let op = Op::GetEndpoint;
    let mut id = None;
    let mut addr = None;
    let mut port = None;
    let mut flags = 0;
    let mut ifindex = None;
    let mut unknown_attrs = Vec::new();
    for attr in attrs(nested) {
        let (kind, value) = attr.map_err(|e| Error::decode(op, e))?;
        match kind {
            ADDR_FAMILY => {}
            ADDR_ID => id = Some(*value.first().ok_or_else(|| Error::decode(op, "empty id"))?),
            ADDR_ADDR4 => addr = Some(IpAddr::V4(Ipv4Addr::from(read_array::<4>(value, op)?))),
            ADDR_ADDR6 => addr = Some(IpAddr::V6(Ipv6Addr::from(read_array::<16>(value, op)?))),
            ADDR_PORT => {
                let p = u16::from_ne_bytes(read_array::<2>(value, op)?);
                port = (p != 0).then_some(p);
            }
            ADDR_FLAGS => flags = read_u32(value, op)?,
            ADDR_IF_IDX => {
                let i = i32::from_ne_bytes(read_array::<4>(value, op)?);
                ifindex = (i > 0).then_some(i as u32);
            }
            other => unknown_attrs.push(other),
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

pub(crate) fn read_array<const N: usize>(value: &[u8], op: Op) -> Result<[u8; N]> {
    value
        .get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| {
            Error::decode(
                op,
                format!("attribute of {} bytes, expected {N}", value.len()),
            )
        })
}

pub(crate) fn read_u32(value: &[u8], op: Op) -> Result<u32> {
    Ok(u32::from_ne_bytes(read_array::<4>(value, op)?))
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

    #[test]
    fn endpoint_encoding_decodes_back() {
        let mut buf = Vec::new();
        AddrAttrs {
            addr: Some("10.0.0.1".parse().unwrap()),
            id: Some(7),
            port: Some(8080),
            flags: Some(EndpointFlags::SIGNAL),
            ifindex: Some(3),
        }
        .push(&mut buf, ATTR_ADDR);
        let (_, nested) = attrs(&buf).next().unwrap().unwrap();
        let ep = decode_endpoint(nested).unwrap();
        assert_eq!(ep.id, 7);
        assert_eq!(ep.port, Some(8080));
        assert_eq!(ep.ifindex, Some(3));
        assert_eq!(ep.flags.0, EndpointFlags::SIGNAL);
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
