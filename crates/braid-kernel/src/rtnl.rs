//! Links and addresses from rtnetlink (dumps), as the facts `status` and
//! the path manager need: name, index, up/carrier, addresses with flags.

use std::net::IpAddr;

use netlink_packet_route::{
    address::{AddressAttribute, AddressMessage},
    link::{LinkAttribute, LinkFlags, LinkMessage},
    RouteNetlinkMessage,
};
use netlink_sys::protocols::NETLINK_ROUTE;
use serde::Serialize;

use crate::error::{Op, Result};
use crate::netlink::{Kind, NlSocket};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier present (IFF_LOWER_UP).
    pub carrier: bool,
    pub loopback: bool,
}

// IFA_F_* (include/uapi/linux/if_addr.h).
pub const IFA_F_TEMPORARY: u32 = 0x01;
pub const IFA_F_DADFAILED: u32 = 0x08;
pub const IFA_F_DEPRECATED: u32 = 0x20;
pub const IFA_F_TENTATIVE: u32 = 0x40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifindex: u32,
    pub addr: IpAddr,
    pub prefix_len: u8,
    /// IFA_F_* flags (the 32-bit IFA_FLAGS attribute when present).
    pub flags: u32,
}

impl Address {
    pub fn is_temporary(&self) -> bool {
        self.flags & IFA_F_TEMPORARY != 0 && self.addr.is_ipv6()
    }
    pub fn is_deprecated(&self) -> bool {
        self.flags & IFA_F_DEPRECATED != 0
    }
    pub fn is_tentative(&self) -> bool {
        self.flags & (IFA_F_TENTATIVE | IFA_F_DADFAILED) != 0
    }
}

pub(crate) fn open() -> Result<NlSocket> {
    NlSocket::open(NETLINK_ROUTE, Op::Rtnetlink)
}

pub fn link_from_message(msg: &LinkMessage) -> Link {
    let name = msg
        .attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::IfName(n) => Some(n.clone()),
            _ => None,
        })
        .unwrap_or_default();
    let flags = msg.header.flags;
    Link {
        index: msg.header.index,
        name,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        loopback: flags.contains(LinkFlags::Loopback),
    }
}

pub fn address_from_message(msg: &AddressMessage) -> Option<Address> {
    let mut local = None;
    let mut address = None;
    let mut flags = msg.header.flags.bits() as u32;
    for a in &msg.attributes {
        match a {
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Flags(f) => flags = f.bits(),
            _ => {}
        }
    }
    // For point-to-point links IFA_LOCAL is ours and IFA_ADDRESS the peer's.
    Some(Address {
        ifindex: msg.header.index,
        addr: local.or(address)?,
        prefix_len: msg.header.prefix_len,
        flags,
    })
}

pub fn links() -> Result<Vec<Link>> {
    let mut sock = open()?;
    let replies: Vec<RouteNetlinkMessage> = sock.request(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        Kind::Dump,
        0,
        Op::Rtnetlink,
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
            _ => None,
        })
        .collect())
}

pub fn addresses() -> Result<Vec<Address>> {
    let mut sock = open()?;
    let replies: Vec<RouteNetlinkMessage> = sock.request(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        Kind::Dump,
        0,
        Op::Rtnetlink,
    )?;
    Ok(replies
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewAddress(a) => address_from_message(a),
            _ => None,
        })
        .collect())
}

/// The index of the interface called `name`.
pub fn link_index(name: &str) -> Result<Option<u32>> {
    Ok(links()?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index))
}
