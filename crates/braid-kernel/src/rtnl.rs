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

use crate::error::{Error, Op, Result};
use crate::netlink::{Kind, NlSocket};

pub use braid_types::net::{DefaultRoute, Link};

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
    let carrier_changes = msg.attributes.iter().find_map(|a| match a {
        LinkAttribute::CarrierChanges(n) => Some(*n),
        _ => None,
    });
    let flags = msg.header.flags;
    Link {
        index: msg.header.index,
        name,
        up: flags.contains(LinkFlags::Up),
        carrier: flags.contains(LinkFlags::LowerUp),
        loopback: flags.contains(LinkFlags::Loopback),
        carrier_changes,
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

/// A dump request, each reply that `pick` keeps.
fn dump<T>(
    request: RouteNetlinkMessage,
    pick: impl FnMut(RouteNetlinkMessage) -> Option<T>,
) -> Result<Vec<T>> {
    let replies: Vec<RouteNetlinkMessage> =
        open()?.request(request, Kind::Dump, 0, Op::Rtnetlink)?;
    Ok(replies.into_iter().filter_map(pick).collect())
}

pub fn links() -> Result<Vec<Link>> {
    dump(
        RouteNetlinkMessage::GetLink(LinkMessage::default()),
        |m| match m {
            RouteNetlinkMessage::NewLink(l) => Some(link_from_message(&l)),
            _ => None,
        },
    )
}

pub fn addresses() -> Result<Vec<Address>> {
    dump(
        RouteNetlinkMessage::GetAddress(AddressMessage::default()),
        |m| match m {
            RouteNetlinkMessage::NewAddress(a) => address_from_message(&a),
            _ => None,
        },
    )
}

/// The index of the interface called `name`.
pub fn link_index(name: &str) -> Result<Option<u32>> {
    Ok(links()?
        .into_iter()
        .find(|l| l.name == name)
        .map(|l| l.index))
}

// ---- configuration (used by the lab and the daemon's tests) ----

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::{
    address::AddressHeaderFlags,
    route::{
        RouteAddress, RouteAttribute, RouteFlags, RouteMessage, RouteProtocol, RouteScope,
        RouteType,
    },
    rule::{RuleAction, RuleAttribute, RuleMessage},
    AddressFamily,
};

fn family_of(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

/// Set a link administratively up or down.
pub fn set_link_up(index: u32, up: bool) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.change_mask = LinkFlags::Up;
    if up {
        msg.header.flags = LinkFlags::Up;
    }
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::SetLink(msg),
        Kind::Do,
        0,
        Op::Rtnetlink,
    )?;
    Ok(())
}

fn address_message(index: u32, addr: IpAddr, prefix_len: u8) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family_of(&addr);
    msg.header.prefix_len = prefix_len;
    msg.header.index = index;
    // No duplicate address detection: lab and test addresses are usable at once.
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes.push(AddressAttribute::Local(addr));
    msg.attributes.push(AddressAttribute::Address(addr));
    msg
}

pub fn add_address(index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
    let msg = address_message(index, addr, prefix_len);
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::NewAddress(msg),
        Kind::Do,
        NLM_F_CREATE | NLM_F_EXCL,
        Op::Rtnetlink,
    )?;
    Ok(())
}

pub fn del_address(index: u32, addr: IpAddr, prefix_len: u8) -> Result<()> {
    let msg = address_message(index, addr, prefix_len);
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::DelAddress(msg),
        Kind::Do,
        0,
        Op::Rtnetlink,
    )?;
    Ok(())
}

/// Add or replace a route to `dst/prefix_len` out of `oif` in `table`
/// (254 = main), with an optional preferred source address.
pub fn replace_route(
    table: u32,
    dst: IpAddr,
    prefix_len: u8,
    oif: u32,
    src: Option<IpAddr>,
) -> Result<()> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family_of(&dst);
    msg.header.destination_prefix_length = prefix_len;
    msg.header.table = if table < 256 { table as u8 } else { 0 };
    msg.header.protocol = RouteProtocol::Static;
    msg.header.scope = RouteScope::Link;
    msg.header.kind = RouteType::Unicast;
    if prefix_len > 0 {
        msg.attributes
            .push(RouteAttribute::Destination(route_addr(dst)));
    }
    msg.attributes.push(RouteAttribute::Oif(oif));
    msg.attributes.push(RouteAttribute::Table(table));
    if let Some(s) = src {
        msg.attributes
            .push(RouteAttribute::PrefSource(route_addr(s)));
    }
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::NewRoute(msg),
        Kind::Do,
        NLM_F_CREATE | NLM_F_REPLACE,
        Op::Rtnetlink,
    )?;
    Ok(())
}

/// Create a veth pair: `name` in the calling thread's namespace, its peer
/// `peer` in the namespace open at `peer_netns` (a /run/netns file).
pub fn add_veth(name: &str, peer: &str, peer_netns: std::os::fd::BorrowedFd<'_>) -> Result<()> {
    use netlink_packet_route::link::{InfoData, InfoKind, InfoVeth, LinkInfo};
    use std::os::fd::AsRawFd;
    let mut peer_msg = LinkMessage::default();
    peer_msg
        .attributes
        .push(LinkAttribute::IfName(peer.to_string()));
    peer_msg
        .attributes
        .push(LinkAttribute::NetNsFd(peer_netns.as_raw_fd()));
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer_msg))),
    ]));
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::NewLink(msg),
        Kind::Do,
        NLM_F_CREATE | NLM_F_EXCL,
        Op::Rtnetlink,
    )?;
    Ok(())
}

/// Add a policy rule: packets from `src` look up `table`.
pub fn add_source_rule(src: IpAddr, table: u32, priority: u32) -> Result<()> {
    let mut msg = RuleMessage::default();
    msg.header.family = family_of(&src);
    msg.header.src_len = if src.is_ipv4() { 32 } else { 128 };
    msg.header.action = RuleAction::ToTable;
    msg.header.table = if table < 256 { table as u8 } else { 0 };
    msg.attributes.push(RuleAttribute::Source(src));
    msg.attributes.push(RuleAttribute::Table(table));
    msg.attributes.push(RuleAttribute::Priority(priority));
    open()?.request::<_, RouteNetlinkMessage>(
        RouteNetlinkMessage::NewRule(msg),
        Kind::Do,
        NLM_F_CREATE | NLM_F_EXCL,
        Op::Rtnetlink,
    )?;
    Ok(())
}

// ---- default routes and the change monitor (used by the daemon) ----

use netlink_packet_route::route::{RouteMetric, RouteType as RtType};

/// The default routes a route message describes (one per next hop).
pub fn default_routes_of(msg: &RouteMessage) -> Vec<DefaultRoute> {
    let h = &msg.header;
    if h.destination_prefix_length != 0 || h.kind != RtType::Unicast {
        return Vec::new();
    }
    let ipv6 = h.address_family == AddressFamily::Inet6;
    let mut table = h.table as u32;
    let mut oifs = Vec::new();
    let mut initcwnd = None;
    for a in &msg.attributes {
        match a {
            RouteAttribute::Table(t) => table = *t,
            RouteAttribute::Metrics(ms) => {
                initcwnd = ms.iter().find_map(|m| match m {
                    RouteMetric::InitCwnd(w) => Some(*w),
                    _ => None,
                })
            }
            RouteAttribute::Oif(i) => oifs.push(*i),
            RouteAttribute::MultiPath(hops) => oifs.extend(hops.iter().map(|n| n.interface_index)),
            _ => {}
        }
    }
    oifs.into_iter()
        .map(|ifindex| DefaultRoute {
            ifindex,
            table,
            ipv6,
            initcwnd,
        })
        .collect()
}

fn route_dump(family: AddressFamily) -> Result<Vec<RouteMessage>> {
    let mut msg = RouteMessage::default();
    msg.header.address_family = family;
    dump(RouteNetlinkMessage::GetRoute(msg), |r| match r {
        RouteNetlinkMessage::NewRoute(m) => Some(m),
        _ => None,
    })
}

pub fn default_routes() -> Result<Vec<DefaultRoute>> {
    let mut out = Vec::new();
    for family in [AddressFamily::Inet, AddressFamily::Inet6] {
        for m in route_dump(family)? {
            out.extend(default_routes_of(&m));
        }
    }
    Ok(out)
}

/// Set (or with None, clear) `initcwnd` on the default routes of `table`
/// that leave by `ifindex` alone (multipath routes are left as they are),
/// keeping every other attribute. Returns how many routes were changed.
pub fn set_default_route_initcwnd(
    ifindex: u32,
    table: u32,
    ipv6: bool,
    initcwnd: Option<u32>,
) -> Result<usize> {
    let family = if ipv6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let mut changed = 0;
    for mut m in route_dump(family)? {
        let routes = default_routes_of(&m);
        let [r] = routes.as_slice() else { continue };
        if r.ifindex != ifindex || r.table != table || r.initcwnd == initcwnd {
            continue;
        }
        // Kernel-filled state a new route must not carry: the dump marks a
        // route on a link without carrier LINKDOWN (or DEAD), and the kernel
        // refuses those flags in a request ("Invalid rtm_flags").
        m.header
            .flags
            .remove(RouteFlags::Dead | RouteFlags::Linkdown);
        m.attributes
            .retain(|a| !matches!(a, RouteAttribute::CacheInfo(_)));
        let mut metrics: Vec<RouteMetric> = Vec::new();
        m.attributes.retain(|a| match a {
            RouteAttribute::Metrics(ms) => {
                metrics = ms.clone();
                false
            }
            _ => true,
        });
        metrics.retain(|x| !matches!(x, RouteMetric::InitCwnd(_)));
        if let Some(w) = initcwnd {
            metrics.push(RouteMetric::InitCwnd(w));
        }
        if !metrics.is_empty() {
            m.attributes.push(RouteAttribute::Metrics(metrics));
        }
        open()?.request::<_, RouteNetlinkMessage>(
            RouteNetlinkMessage::NewRoute(m),
            Kind::Do,
            NLM_F_REPLACE,
            Op::Rtnetlink,
        )?;
        changed += 1;
    }
    Ok(changed)
}

/// A change reported by rtnetlink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Link(Link),
    LinkRemoved(u32),
    AddressAdded(Address),
    AddressRemoved(Address),
    DefaultRouteAdded(DefaultRoute),
    DefaultRouteRemoved(DefaultRoute),
    /// The receive buffer overflowed (ENOBUFS): changes were lost; dump again.
    Overflow,
}

const RTNLGRP_LINK: u32 = 1;
const RTNLGRP_IPV4_IFADDR: u32 = 5;
const RTNLGRP_IPV4_ROUTE: u32 = 7;
const RTNLGRP_IPV6_IFADDR: u32 = 9;
const RTNLGRP_IPV6_ROUTE: u32 = 11;

/// Subscription to link, address and route changes of the current namespace.
pub struct Monitor {
    sock: netlink_sys::Socket,
    fd: Option<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>>,
    buf: Vec<u8>,
    pending: std::collections::VecDeque<Change>,
}

impl Monitor {
    /// Subscribe; `rcvbuf` shrinks the receive buffer (tests provoke ENOBUFS with it).
    pub fn subscribe(rcvbuf: Option<usize>) -> Result<Monitor> {
        let mut sock =
            netlink_sys::Socket::new(NETLINK_ROUTE).map_err(|e| Error::io(Op::Rtnetlink, e))?;
        sock.bind_auto().map_err(|e| Error::io(Op::Rtnetlink, e))?;
        for g in [
            RTNLGRP_LINK,
            RTNLGRP_IPV4_IFADDR,
            RTNLGRP_IPV4_ROUTE,
            RTNLGRP_IPV6_IFADDR,
            RTNLGRP_IPV6_ROUTE,
        ] {
            sock.add_membership(g)
                .map_err(|e| Error::io(Op::Rtnetlink, e))?;
        }
        if let Some(n) = rcvbuf {
            sock.set_rx_buf_sz(n)
                .map_err(|e| Error::io(Op::Rtnetlink, e))?;
        }
        Ok(Monitor {
            sock,
            fd: None,
            buf: Vec::with_capacity(1 << 16),
            pending: Default::default(),
        })
    }

    /// The next change, waiting without blocking the tokio runtime.
    pub async fn next(&mut self) -> Result<Change> {
        if let Some(c) = self.pending.pop_front() {
            return Ok(c);
        }
        if self.fd.is_none() {
            let fd = crate::netlink::async_readiness(&self.sock, Op::Rtnetlink)?;
            self.fd = Some(fd);
        }
        loop {
            let mut guard = self
                .fd
                .as_ref()
                .expect("registered above")
                .readable()
                .await
                .map_err(|e| Error::io(Op::Rtnetlink, e))?;
            self.buf.clear();
            match self.sock.recv(&mut self.buf, 0) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => {
                    guard.clear_ready();
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                    self.drain();
                    return Ok(Change::Overflow);
                }
                Err(e) => return Err(Error::io(Op::Rtnetlink, e)),
            }
            decode_changes(&self.buf, &mut self.pending);
            if let Some(c) = self.pending.pop_front() {
                return Ok(c);
            }
        }
    }
}

impl Monitor {
    /// Throw away everything queued: the caller dumps the full state next.
    /// An empty queue also re-arms the kernel's overflow report (netlink
    /// reports ENOBUFS once per congestion), so a later loss is not silent.
    fn drain(&mut self) {
        self.pending.clear();
        loop {
            self.buf.clear();
            match self.sock.recv(&mut self.buf, libc::MSG_DONTWAIT) {
                Ok(_) => continue,
                Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => continue,
                Err(_) => break,
            }
        }
    }
}

/// Decode every message in a datagram; undecodable ones are skipped.
#[doc(hidden)]
pub fn decode_changes(buf: &[u8], out: &mut std::collections::VecDeque<Change>) {
    use netlink_packet_core::NetlinkPayload;
    for frame in crate::netlink::messages(buf) {
        // Unlike a request's replies, a broken frame is not an error here:
        // the rest of the datagram is dropped and the next resync covers it.
        let Ok(frame) = frame else {
            return;
        };
        // A message the decoder cannot read (or panics on: see
        // netlink::deserialize_caught) is skipped; the next resync covers it.
        let Ok(msg) =
            crate::netlink::deserialize_caught::<RouteNetlinkMessage>(frame, Op::Rtnetlink)
        else {
            continue;
        };
        let NetlinkPayload::InnerMessage(m) = msg.payload else {
            continue;
        };
        match m {
            RouteNetlinkMessage::NewLink(l) => out.push_back(Change::Link(link_from_message(&l))),
            RouteNetlinkMessage::DelLink(l) => out.push_back(Change::LinkRemoved(l.header.index)),
            RouteNetlinkMessage::NewAddress(a) => {
                if let Some(a) = address_from_message(&a) {
                    out.push_back(Change::AddressAdded(a));
                }
            }
            RouteNetlinkMessage::DelAddress(a) => {
                if let Some(a) = address_from_message(&a) {
                    out.push_back(Change::AddressRemoved(a));
                }
            }
            RouteNetlinkMessage::NewRoute(r) => out.extend(
                default_routes_of(&r)
                    .into_iter()
                    .map(Change::DefaultRouteAdded),
            ),
            RouteNetlinkMessage::DelRoute(r) => out.extend(
                default_routes_of(&r)
                    .into_iter()
                    .map(Change::DefaultRouteRemoved),
            ),
            _ => {}
        }
    }
}
