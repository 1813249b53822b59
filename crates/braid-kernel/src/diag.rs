//! sock_diag dumps: MPTCP connections (inet_diag for IPPROTO_MPTCP, carrying
//! `struct mptcp_info`) and their TCP subflows (`tcp_info` plus the MPTCP
//! ULP info), joined by the connection's local token.
//!
//! Responses are decoded with `netlink-packet-sock-diag`; the request is
//! written here because that crate's request type has no room for the
//! INET_DIAG_REQ_PROTOCOL attribute that IPPROTO_MPTCP (262, wider than the
//! request's u8 protocol field) needs.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use netlink_packet_core::{NetlinkSerializable, Nla};
use netlink_packet_sock_diag::{
    inet::{nlas::Nla as DiagNla, InetResponse},
    SockDiagMessage,
};
use netlink_sys::protocols::NETLINK_SOCK_DIAG;
use serde::Serialize;

use crate::error::{Error, Op, Result};
use crate::info::{tcp_state_name, MptcpInfo, TcpInfo};
use crate::netlink::{attrs, push_attr, Kind, NlSocket};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const INET_DIAG_INFO: u16 = 2;
const INET_DIAG_SKMEMINFO: u16 = 7;
/// What a dump asks for besides the socket: tcp_info (or mptcp_info)
/// and the socket's memory (its receive buffer).
const DUMP_EXT: u8 = (1 << (INET_DIAG_INFO - 1)) | (1 << (INET_DIAG_SKMEMINFO - 1));
const INET_DIAG_ULP_INFO: u16 = 19;
const INET_DIAG_REQ_PROTOCOL: u16 = 3;
const INET_DIAG_CGROUP_ID: u16 = 21;
const INET_ULP_INFO_NAME: u16 = 1;
const INET_ULP_INFO_MPTCP: u16 = 3;
const TCP_LISTEN: u8 = 10;

// MPTCP_SUBFLOW_ATTR_* and MPTCP_SUBFLOW_FLAG_* (include/uapi/linux/mptcp.h).
const SF_TOKEN_REM: u16 = 1;
const SF_TOKEN_LOC: u16 = 2;
const SF_FLAGS: u16 = 8;
const SF_ID_REM: u16 = 9;
const SF_ID_LOC: u16 = 10;
pub const SUBFLOW_FLAG_MCAP_REM: u32 = 1 << 0;
pub const SUBFLOW_FLAG_MCAP_LOC: u32 = 1 << 1;
pub const SUBFLOW_FLAG_JOIN_REM: u32 = 1 << 2;
pub const SUBFLOW_FLAG_JOIN_LOC: u32 = 1 << 3;
pub const SUBFLOW_FLAG_BKUP_REM: u32 = 1 << 4;
pub const SUBFLOW_FLAG_BKUP_LOC: u32 = 1 << 5;
pub const SUBFLOW_FLAG_FULLY_ESTABLISHED: u32 = 1 << 6;
pub const SUBFLOW_FLAG_CONNECTED: u32 = 1 << 7;

/// One TCP subflow of an MPTCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Subflow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// Interface the socket is bound to, when it is (0: routed freely).
    pub bound_ifindex: u32,
    pub state: &'static str,
    pub token_local: u32,
    pub token_remote: u32,
    pub local_id: u8,
    pub remote_id: u8,
    pub flags: u32,
    /// This side asked for the subflow to be a backup (MP_PRIO / MP_JOIN B bit).
    pub backup_local: bool,
    /// The peer marked the subflow as backup.
    pub backup_remote: bool,
    pub tcp: Option<TcpInfo>,
    /// The subflow's receive buffer (sk_rcvbuf, from INET_DIAG_SKMEMINFO).
    pub rcvbuf: Option<u32>,
}

/// One MPTCP connection (an MPTCP socket, `msk`) with its subflows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Connection {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub state: &'static str,
    pub token: Option<u32>,
    pub inode: u32,
    /// The connection fell back to plain TCP.
    pub fell_back: bool,
    pub info: Option<MptcpInfo>,
    pub subflows: Vec<Subflow>,
}

/// What names one TCP socket to the kernel's lookup: its addresses, and
/// the interface it is bound to (a socket bound to one is found only
/// when the lookup names it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SocketKey {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub bound_ifindex: u32,
}

impl Subflow {
    pub fn key(&self) -> SocketKey {
        SocketKey {
            local: self.local,
            remote: self.remote,
            bound_ifindex: self.bound_ifindex,
        }
    }
}

/// A sock_diag request with the protocol carried as an attribute.
#[derive(Debug)]
struct DiagRequest {
    family: u8,
    protocol: u32,
    ext: u8,
    states: u32,
    /// The socket cookie to look up one socket (for MPTCP, `[token, 0]`);
    /// None: a dump, or a lookup by `socket`.
    cookie: Option<[u32; 2]>,
    /// The socket to look up by its addresses.
    socket: Option<SocketKey>,
}

/// An address as `struct inet_diag_sockid` holds it: four big-endian
/// words, an IPv4 address in the first.
fn sockid_addr(ip: std::net::IpAddr) -> [u8; 16] {
    let mut b = [0u8; 16];
    match ip {
        std::net::IpAddr::V4(v4) => b[..4].copy_from_slice(&v4.octets()),
        std::net::IpAddr::V6(v6) => b.copy_from_slice(&v6.octets()),
    }
    b
}

const REQ_LEN: usize = 56;

impl DiagRequest {
    fn bytes(&self) -> Vec<u8> {
        let mut b = vec![0u8; REQ_LEN];
        b[0] = self.family;
        b[1] = self.protocol.min(255) as u8;
        b[2] = self.ext;
        b[4..8].copy_from_slice(&self.states.to_ne_bytes());
        if let Some(k) = &self.socket {
            b[8..10].copy_from_slice(&k.local.port().to_be_bytes());
            b[10..12].copy_from_slice(&k.remote.port().to_be_bytes());
            b[12..28].copy_from_slice(&sockid_addr(k.local.ip()));
            b[28..44].copy_from_slice(&sockid_addr(k.remote.ip()));
            b[44..48].copy_from_slice(&k.bound_ifindex.to_ne_bytes());
        }
        // Without a token, the cookie is "no cookie": all ones.
        match self.cookie {
            Some([a, c]) => {
                b[48..52].copy_from_slice(&a.to_ne_bytes());
                b[52..56].copy_from_slice(&c.to_ne_bytes());
            }
            None => b[48..56].copy_from_slice(&[0xff; 8]),
        }
        if self.protocol > 255 {
            push_attr(&mut b, INET_DIAG_REQ_PROTOCOL, &self.protocol.to_ne_bytes());
        }
        b
    }
}

impl NetlinkSerializable for DiagRequest {
    fn message_type(&self) -> u16 {
        SOCK_DIAG_BY_FAMILY
    }
    fn buffer_len(&self) -> usize {
        self.bytes().len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.bytes());
    }
}

/// One raw dumped socket.
struct DumpedSocket {
    local: SocketAddr,
    remote: SocketAddr,
    bound_ifindex: u32,
    state: u8,
    inode: u32,
    info: Option<Vec<u8>>,
    ulp: Option<Vec<u8>>,
    rcvbuf: Option<u32>,
}

fn dump(protocol: u32) -> Result<Vec<DumpedSocket>> {
    dump_families(protocol, true, u32::MAX)
}

/// Dump IPv4 sockets, and IPv6 ones when `v6`, in the TCP states of the
/// `states` bit mask (bit n: state n).
fn dump_families(protocol: u32, v6: bool, states: u32) -> Result<Vec<DumpedSocket>> {
    let mut sock = NlSocket::open(NETLINK_SOCK_DIAG, Op::SockDiag)?;
    let mut out = Vec::new();
    let families: &[u8] = if v6 {
        &[libc::AF_INET as u8, libc::AF_INET6 as u8]
    } else {
        &[libc::AF_INET as u8]
    };
    for &family in families {
        let req = DiagRequest {
            family,
            protocol,
            ext: DUMP_EXT,
            states,
            cookie: None,
            socket: None,
        };
        let replies: Vec<SockDiagMessage> = match sock.request(req, Kind::Dump, 0, Op::SockDiag) {
            Ok(r) => r,
            // No MPTCP diag module, or no IPv6: nothing to list there. No
            // TCP diag for IPv4 is an error, not "no sockets": without it
            // no subflow can ever be seen.
            Err(Error::Kernel { errno, .. })
                if (errno == libc::ENOENT || errno == libc::EAFNOSUPPORT)
                    && (protocol != libc::IPPROTO_TCP as u32 || family != libc::AF_INET as u8) =>
            {
                continue
            }
            Err(e) => return Err(e),
        };
        for reply in replies {
            let SockDiagMessage::InetResponse(resp) = reply else {
                continue;
            };
            out.push(dumped_socket(*resp));
        }
    }
    Ok(out)
}

/// What Braid reads of one dumped socket, taking the response (dumps of
/// many thousand sockets: the tcp_info bytes move, no copy).
fn dumped_socket(resp: InetResponse) -> DumpedSocket {
    let id = &resp.header.socket_id;
    let mut s = DumpedSocket {
        local: SocketAddr::new(id.source_address, id.source_port),
        remote: SocketAddr::new(id.destination_address, id.destination_port),
        bound_ifindex: id.interface_id,
        state: resp.header.state,
        inode: resp.header.inode,
        info: None,
        ulp: None,
        rcvbuf: None,
    };
    for nla in resp.nlas {
        match nla {
            DiagNla::TcpInfo(bytes) => s.info = Some(bytes),
            DiagNla::MemInfo(m) => s.rcvbuf = Some(m.receive_queue_max),
            DiagNla::Other(raw) if raw.kind() & 0x3fff == INET_DIAG_ULP_INFO => {
                let mut v = vec![0u8; raw.value_len()];
                raw.emit_value(&mut v);
                s.ulp = Some(v);
            }
            _ => {}
        }
    }
    s
}

/// The MPTCP subflow attributes Braid reads (MPTCP_SUBFLOW_ATTR_* up to
/// SF_ID_LOC): the first four bytes of each and its length, no allocation.
#[derive(Default)]
struct UlpFields([Option<(usize, [u8; 4])>; 11]);

/// The MPTCP part of a subflow's ULP info.
fn decode_ulp(ulp: &[u8]) -> Result<Option<UlpFields>> {
    let mut is_mptcp = false;
    let mut fields = UlpFields::default();
    for attr in attrs(ulp) {
        let (kind, value) = attr.map_err(|e| Error::decode(Op::SockDiag, e))?;
        match kind {
            INET_ULP_INFO_NAME => is_mptcp = value.starts_with(b"mptcp"),
            INET_ULP_INFO_MPTCP => {
                for inner in attrs(value) {
                    let (k, v) = inner.map_err(|e| Error::decode(Op::SockDiag, e))?;
                    if let Some(slot) = fields.0.get_mut(k as usize) {
                        let mut b = [0u8; 4];
                        let n = v.len().min(4);
                        b[..n].copy_from_slice(&v[..n]);
                        *slot = Some((v.len(), b));
                    }
                }
            }
            _ => {}
        }
    }
    Ok(is_mptcp.then_some(fields))
}

fn field_u32(fields: &UlpFields, k: u16) -> u32 {
    match fields.0.get(k as usize) {
        Some(Some((len, b))) if *len >= 4 => u32::from_ne_bytes(*b),
        _ => 0,
    }
}

fn field_u8(fields: &UlpFields, k: u16) -> u8 {
    match fields.0.get(k as usize) {
        Some(Some((len, b))) if *len >= 1 => b[0],
        _ => 0,
    }
}

/// All TCP sockets that are MPTCP subflows, in the current namespace.
pub fn subflows() -> Result<Vec<Subflow>> {
    let mut out = Vec::new();
    for s in dump(libc::IPPROTO_TCP as u32)? {
        if let Some(sf) = subflow_from(&s)? {
            out.push(sf);
        }
    }
    Ok(out)
}

/// The subflows `keys` name, each looked up on its own (a hash lookup in
/// the kernel, where a dump walks its whole TCP hash table: 262,144
/// buckets, ~1 ms, per family on a host with a few GB of memory).
/// None for a key whose socket is gone or is no MPTCP subflow.
pub fn lookup_subflows(keys: &[SocketKey]) -> Result<Vec<Option<Subflow>>> {
    let mut sock = NlSocket::open(NETLINK_SOCK_DIAG, Op::SockDiag)?;
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let family = if key.local.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let req = DiagRequest {
            family: family as u8,
            protocol: libc::IPPROTO_TCP as u32,
            ext: DUMP_EXT,
            states: u32::MAX,
            cookie: None,
            socket: Some(*key),
        };
        let replies: Vec<SockDiagMessage> = match sock.request(req, Kind::Do, 0, Op::SockDiag) {
            Ok(r) => r,
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => {
                out.push(None);
                continue;
            }
            Err(e) => return Err(e),
        };
        // With no established socket for the key, the kernel's lookup
        // falls back to a listener on the local port, and an MPTCP
        // listener's TCP socket carries the MPTCP ULP too: only the
        // socket with these very addresses is the subflow asked for.
        let mut found = None;
        for reply in replies {
            if let SockDiagMessage::InetResponse(resp) = reply {
                found = subflow_from(&dumped_socket(*resp))?
                    .filter(|sf| sf.local == key.local && sf.remote == key.remote);
            }
        }
        out.push(found);
    }
    Ok(out)
}

/// The subflow a dumped TCP socket is, if it is an MPTCP subflow.
fn subflow_from(s: &DumpedSocket) -> Result<Option<Subflow>> {
    let Some(ulp) = s.ulp.as_deref() else {
        return Ok(None);
    };
    let Some(fields) = decode_ulp(ulp)? else {
        return Ok(None);
    };
    let flags = field_u32(&fields, SF_FLAGS);
    Ok(Some(Subflow {
        local: s.local,
        remote: s.remote,
        bound_ifindex: s.bound_ifindex,
        state: tcp_state_name(s.state),
        token_local: field_u32(&fields, SF_TOKEN_LOC),
        token_remote: field_u32(&fields, SF_TOKEN_REM),
        local_id: field_u8(&fields, SF_ID_LOC),
        remote_id: field_u8(&fields, SF_ID_REM),
        flags,
        backup_local: flags & SUBFLOW_FLAG_BKUP_LOC != 0,
        backup_remote: flags & SUBFLOW_FLAG_BKUP_REM != 0,
        tcp: s.info.as_deref().and_then(TcpInfo::parse),
        rcvbuf: s.rcvbuf,
    }))
}

/// What `subflows()` makes of one dumped TCP socket (`Ok(None)`: not an
/// MPTCP subflow), and the `struct mptcp_info` that `connections()` reads
/// from the same attribute of a dumped MPTCP socket.
#[doc(hidden)]
pub fn decode_response(resp: &InetResponse) -> (Result<Option<Subflow>>, Option<MptcpInfo>) {
    let s = dumped_socket(resp.clone());
    (
        subflow_from(&s),
        s.info.as_deref().and_then(MptcpInfo::parse),
    )
}

/// MPTCP connections with their subflows. Listening sockets are left out
/// unless `include_listeners`.
pub fn connections(include_listeners: bool) -> Result<Vec<Connection>> {
    let (mut conns, v6) = mptcp_sockets(include_listeners)?;
    let mut by_token: BTreeMap<u32, Vec<Subflow>> = BTreeMap::new();
    for sf in subflows_of(v6, include_listeners)? {
        by_token.entry(sf.token_local).or_default().push(sf);
    }
    for c in &mut conns {
        let mut subflows = c
            .token
            .and_then(|t| by_token.remove(&t))
            .unwrap_or_default();
        subflows.sort_by_key(|sf| (sf.local_id, sf.local, sf.remote));
        c.subflows = subflows;
    }
    conns.sort_by_key(|c| (c.local, c.remote));
    Ok(conns)
}

/// MPTCP connections without their subflows (one dump: cheaper than
/// `connections` when only connection-level figures are needed), and
/// whether any is an IPv6 socket (only those can have IPv6 subflows).
pub fn mptcp_sockets(include_listeners: bool) -> Result<(Vec<Connection>, bool)> {
    let mut conns = Vec::new();
    let mut v6 = false;
    for s in dump(libc::IPPROTO_MPTCP as u32)? {
        if s.state == TCP_LISTEN && !include_listeners {
            continue;
        }
        v6 |= s.local.is_ipv6();
        let info = s.info.as_deref().and_then(MptcpInfo::parse);
        let token = info.as_ref().map(|i| i.token).filter(|t| *t != 0);
        conns.push(Connection {
            local: s.local,
            remote: s.remote,
            state: tcp_state_name(s.state),
            token,
            inode: s.inode,
            fell_back: info.as_ref().is_some_and(|i| i.fell_back()),
            info,
            subflows: Vec::new(),
        });
    }
    Ok((conns, v6))
}

/// MPTCP subflows: IPv6 ones only when `v6` (the IPv6 dump walks the
/// whole TCP hash table again), listening ones only when `listeners`.
pub fn subflows_of(v6: bool, listeners: bool) -> Result<Vec<Subflow>> {
    let states = if listeners {
        u32::MAX
    } else {
        !(1u32 << TCP_LISTEN)
    };
    let mut out = Vec::new();
    for s in dump_families(libc::IPPROTO_TCP as u32, v6, states)? {
        if let Some(sf) = subflow_from(&s)? {
            out.push(sf);
        }
    }
    Ok(out)
}

/// Who owns an MPTCP connection's socket, as sock_diag tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SocketOwner {
    pub uid: u32,
    pub inode: u32,
    /// The cgroup v2 id (the inode of its directory under /sys/fs/cgroup);
    /// None on kernels without socket cgroup data.
    pub cgroup_id: Option<u64>,
}

/// The owner of the MPTCP connection `token` (IPv4 or IPv6), with one
/// sock_diag request: MPTCP's diag looks a connection up by its token.
pub fn mptcp_owner(token: u32) -> Result<SocketOwner> {
    let mut sock = NlSocket::open(NETLINK_SOCK_DIAG, Op::SockDiag)?;
    let mut last = None;
    for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
        let req = DiagRequest {
            family,
            protocol: libc::IPPROTO_MPTCP as u32,
            ext: 0,
            states: u32::MAX,
            cookie: Some([token, 0]),
            socket: None,
        };
        let replies: Vec<SockDiagMessage> = match sock.request(req, Kind::Do, 0, Op::SockDiag) {
            Ok(r) => r,
            Err(e) => {
                last = Some(e);
                continue;
            }
        };
        for reply in replies {
            let SockDiagMessage::InetResponse(resp) = reply else {
                continue;
            };
            let cgroup_id = resp.nlas.iter().find_map(|n| match n {
                DiagNla::Other(raw) if raw.kind() & 0x3fff == INET_DIAG_CGROUP_ID => {
                    let mut v = [0u8; 8];
                    (raw.value_len() == 8).then(|| {
                        raw.emit_value(&mut v);
                        u64::from_ne_bytes(v)
                    })
                }
                _ => None,
            });
            return Ok(SocketOwner {
                uid: resp.header.uid,
                inode: resp.header.inode,
                cgroup_id,
            });
        }
    }
    Err(last.unwrap_or_else(|| {
        Error::decode(
            Op::SockDiag,
            format!("no MPTCP connection with token {token:08x}"),
        )
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_carries_protocol_attribute_only_when_wide() {
        let r = DiagRequest {
            family: 2,
            protocol: 262,
            ext: 2,
            states: !0,
            cookie: Some([0xdead_beef, 0]),
            socket: None,
        };
        let b = r.bytes();
        assert_eq!(b.len(), REQ_LEN + 8);
        assert_eq!(
            b[48..52],
            0xdead_beef_u32.to_ne_bytes(),
            "the token goes in the cookie"
        );
        assert_eq!(u16::from_ne_bytes([b[58], b[59]]), INET_DIAG_REQ_PROTOCOL);
        let t = DiagRequest {
            family: 2,
            protocol: 6,
            ext: 2,
            states: !0,
            cookie: None,
            socket: None,
        };
        assert_eq!(t.bytes().len(), REQ_LEN);
        assert_eq!(t.bytes()[48..56], [0xff; 8]);
    }

    /// `struct inet_diag_sockid`: ports and addresses in network order,
    /// the interface in host order, then the cookie.
    #[test]
    fn a_lookup_names_the_socket_as_inet_diag_sockid_lays_it_out() {
        let r = DiagRequest {
            family: 2,
            protocol: 6,
            ext: 2,
            states: !0,
            cookie: None,
            socket: Some(SocketKey {
                local: "10.0.1.1:40000".parse().unwrap(),
                remote: "10.0.2.2:443".parse().unwrap(),
                bound_ifindex: 7,
            }),
        };
        let b = r.bytes();
        assert_eq!(b.len(), REQ_LEN);
        assert_eq!(b[8..12], [0x9c, 0x40, 0x01, 0xbb]);
        assert_eq!(b[12..16], [10, 0, 1, 1]);
        assert_eq!(b[16..28], [0; 12]);
        assert_eq!(b[28..32], [10, 0, 2, 2]);
        assert_eq!(b[44..48], 7u32.to_ne_bytes());
        assert_eq!(b[48..56], [0xff; 8]);
        let v6 = DiagRequest {
            family: 10,
            socket: Some(SocketKey {
                local: "[2001:db8::1]:1".parse().unwrap(),
                remote: "[::ffff:10.0.0.1]:2".parse().unwrap(),
                bound_ifindex: 0,
            }),
            ..r
        };
        let b = v6.bytes();
        assert_eq!(
            b[12..28],
            "2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
        );
        assert_eq!(b[40..44], [10, 0, 0, 1]);
    }

    #[test]
    fn ulp_info_is_decoded_and_other_ulps_ignored() {
        let mut inner = Vec::new();
        push_attr(&mut inner, SF_TOKEN_LOC, &77u32.to_ne_bytes());
        push_attr(&mut inner, SF_ID_LOC, &[3]);
        let mut ulp = Vec::new();
        push_attr(&mut ulp, INET_ULP_INFO_NAME, b"mptcp\0");
        push_attr(&mut ulp, INET_ULP_INFO_MPTCP, &inner);
        let f = decode_ulp(&ulp).unwrap().unwrap();
        assert_eq!(
            (field_u32(&f, SF_TOKEN_LOC), field_u8(&f, SF_ID_LOC)),
            (77, 3)
        );
        let mut tls = Vec::new();
        push_attr(&mut tls, INET_ULP_INFO_NAME, b"tls\0");
        assert!(decode_ulp(&tls).unwrap().is_none());
    }
}
