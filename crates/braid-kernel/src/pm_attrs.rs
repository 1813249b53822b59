//! The `mptcp_pm` generic netlink family's commands and attribute sets,
//! typed with `netlink-packet-core`'s `Nla` machinery (one enum per
//! attribute set, an `Other(DefaultNla)` variant for the attributes of a
//! newer kernel), as the kernel's spec `Documentation/netlink/specs/mptcp_pm.yaml`
//! and `include/uapi/linux/mptcp_pm.h` define them.
//!
//! Decoding is a little more lenient than netlink-packet-core's parsers,
//! as Braid always was: a fixed-size value longer than its type is read by
//! its first bytes (the kernel pads some), a shorter one is an error.
//! Nothing here panics on malformed input.

use std::net::{Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, Nla, NlaBuffer, Parseable, NLA_F_NESTED,
};

use crate::netlink::nlas;

/// Commands (`enum mptcp_pm_command`). Events use `braid_types::event::EventKind`.
pub mod cmd {
    pub const ADD_ADDR: u8 = 1;
    pub const DEL_ADDR: u8 = 2;
    pub const GET_ADDR: u8 = 3;
    pub const FLUSH_ADDRS: u8 = 4;
    pub const SET_LIMITS: u8 = 5;
    pub const GET_LIMITS: u8 = 6;
    pub const SET_FLAGS: u8 = 7;
    pub const ANNOUNCE: u8 = 8;
    pub const REMOVE: u8 = 9;
    pub const SUBFLOW_CREATE: u8 = 10;
    pub const SUBFLOW_DESTROY: u8 = 11;
}

// MPTCP_PM_ATTR_*
const ATTR_ADDR: u16 = 1;
const ATTR_RCV_ADD_ADDRS: u16 = 2;
const ATTR_SUBFLOWS: u16 = 3;
const ATTR_TOKEN: u16 = 4;
const ATTR_LOC_ID: u16 = 5;
const ATTR_ADDR_REMOTE: u16 = 6;

// MPTCP_PM_ADDR_ATTR_*
const ADDR_FAMILY: u16 = 1;
const ADDR_ID: u16 = 2;
const ADDR_ADDR4: u16 = 3;
const ADDR_ADDR6: u16 = 4;
const ADDR_PORT: u16 = 5;
const ADDR_FLAGS: u16 = 6;
const ADDR_IF_IDX: u16 = 7;

// MPTCP_ATTR_* (events)
const EV_TOKEN: u16 = 1;
const EV_FAMILY: u16 = 2;
const EV_LOC_ID: u16 = 3;
const EV_REM_ID: u16 = 4;
const EV_SADDR4: u16 = 5;
const EV_SADDR6: u16 = 6;
const EV_DADDR4: u16 = 7;
const EV_DADDR6: u16 = 8;
const EV_SPORT: u16 = 9;
const EV_DPORT: u16 = 10;
const EV_BACKUP: u16 = 11;
const EV_ERROR: u16 = 12;
const EV_FLAGS: u16 = 13;
const EV_TIMEOUT: u16 = 14;
const EV_IF_IDX: u16 = 15;
const EV_RESET_REASON: u16 = 16;
const EV_RESET_FLAGS: u16 = 17;
const EV_SERVER_SIDE: u16 = 18;

/// The first `N` bytes of an attribute's value.
fn arr<const N: usize>(value: &[u8]) -> Result<[u8; N], DecodeError> {
    value
        .get(..N)
        .and_then(|s| s.try_into().ok())
        .ok_or_else(|| format!("attribute of {} bytes, expected {N}", value.len()).into())
}

fn u32_ne(v: &[u8]) -> Result<u32, DecodeError> {
    arr(v).map(u32::from_ne_bytes)
}

fn u16_ne(v: &[u8]) -> Result<u16, DecodeError> {
    arr(v).map(u16::from_ne_bytes)
}

fn u8_(v: &[u8]) -> Result<u8, DecodeError> {
    arr::<1>(v).map(|[b]| b)
}

/// An attribute Braid does not know, kept with its type (flags included).
fn other(buf: &NlaBuffer<&[u8]>) -> Result<DefaultNla, DecodeError> {
    DefaultNla::parse(buf)
}

/// Emit a list of attributes (a request's payload or a nest's value).
pub fn emit_nlas<A: Nla>(list: &[A]) -> Vec<u8> {
    let mut out = vec![0u8; list.buffer_len()];
    list.emit(&mut out);
    out
}

/// One attribute of the address nest (`MPTCP_PM_ADDR_ATTR_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrAttr {
    Family(u16),
    Id(u8),
    Addr4(Ipv4Addr),
    Addr6(Ipv6Addr),
    /// Host byte order: the kernel applies htons() itself.
    Port(u16),
    Flags(u32),
    /// The kernel's s32 interface index.
    IfIdx(i32),
    Other(DefaultNla),
}

impl Nla for AddrAttr {
    fn value_len(&self) -> usize {
        match self {
            AddrAttr::Id(_) => 1,
            AddrAttr::Family(_) | AddrAttr::Port(_) => 2,
            AddrAttr::Addr4(_) | AddrAttr::Flags(_) | AddrAttr::IfIdx(_) => 4,
            AddrAttr::Addr6(_) => 16,
            AddrAttr::Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            AddrAttr::Family(_) => ADDR_FAMILY,
            AddrAttr::Id(_) => ADDR_ID,
            AddrAttr::Addr4(_) => ADDR_ADDR4,
            AddrAttr::Addr6(_) => ADDR_ADDR6,
            AddrAttr::Port(_) => ADDR_PORT,
            AddrAttr::Flags(_) => ADDR_FLAGS,
            AddrAttr::IfIdx(_) => ADDR_IF_IDX,
            AddrAttr::Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            AddrAttr::Family(v) | AddrAttr::Port(v) => buf.copy_from_slice(&v.to_ne_bytes()),
            AddrAttr::Id(v) => buf[0] = *v,
            AddrAttr::Addr4(a) => buf.copy_from_slice(&a.octets()),
            AddrAttr::Addr6(a) => buf.copy_from_slice(&a.octets()),
            AddrAttr::Flags(v) => buf.copy_from_slice(&v.to_ne_bytes()),
            AddrAttr::IfIdx(v) => buf.copy_from_slice(&v.to_ne_bytes()),
            AddrAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a> Parseable<NlaBuffer<&'a [u8]>> for AddrAttr {
    fn parse(buf: &NlaBuffer<&'a [u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            ADDR_FAMILY => AddrAttr::Family(u16_ne(v)?),
            ADDR_ID => AddrAttr::Id(u8_(v)?),
            ADDR_ADDR4 => AddrAttr::Addr4(Ipv4Addr::from(arr::<4>(v)?)),
            ADDR_ADDR6 => AddrAttr::Addr6(Ipv6Addr::from(arr::<16>(v)?)),
            ADDR_PORT => AddrAttr::Port(u16_ne(v)?),
            ADDR_FLAGS => AddrAttr::Flags(u32_ne(v)?),
            ADDR_IF_IDX => AddrAttr::IfIdx(arr(v).map(i32::from_ne_bytes)?),
            _ => AddrAttr::Other(other(buf)?),
        })
    }
}

/// One top-level attribute of the commands (`MPTCP_PM_ATTR_*`): the
/// endpoint nest, the limits, and the userspace PM's token, local id and
/// remote address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PmAttr {
    Addr(Vec<AddrAttr>),
    RcvAddAddrs(u32),
    Subflows(u32),
    Token(u32),
    LocId(u8),
    AddrRemote(Vec<AddrAttr>),
    Other(DefaultNla),
}

impl Nla for PmAttr {
    fn value_len(&self) -> usize {
        match self {
            PmAttr::Addr(nest) | PmAttr::AddrRemote(nest) => nest.as_slice().buffer_len(),
            PmAttr::RcvAddAddrs(_) | PmAttr::Subflows(_) | PmAttr::Token(_) => 4,
            PmAttr::LocId(_) => 1,
            PmAttr::Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        match self {
            PmAttr::Addr(_) => ATTR_ADDR | NLA_F_NESTED,
            PmAttr::RcvAddAddrs(_) => ATTR_RCV_ADD_ADDRS,
            PmAttr::Subflows(_) => ATTR_SUBFLOWS,
            PmAttr::Token(_) => ATTR_TOKEN,
            PmAttr::LocId(_) => ATTR_LOC_ID,
            PmAttr::AddrRemote(_) => ATTR_ADDR_REMOTE | NLA_F_NESTED,
            PmAttr::Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        match self {
            PmAttr::Addr(nest) | PmAttr::AddrRemote(nest) => nest.as_slice().emit(buf),
            PmAttr::RcvAddAddrs(v) | PmAttr::Subflows(v) | PmAttr::Token(v) => {
                buf.copy_from_slice(&v.to_ne_bytes())
            }
            PmAttr::LocId(v) => buf[0] = *v,
            PmAttr::Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a> Parseable<NlaBuffer<&'a [u8]>> for PmAttr {
    fn parse(buf: &NlaBuffer<&'a [u8]>) -> Result<Self, DecodeError> {
        let v = buf.value();
        Ok(match buf.kind() {
            ATTR_ADDR => PmAttr::Addr(nlas(v).collect::<Result<_, _>>()?),
            ATTR_RCV_ADD_ADDRS => PmAttr::RcvAddAddrs(u32_ne(v)?),
            ATTR_SUBFLOWS => PmAttr::Subflows(u32_ne(v)?),
            ATTR_TOKEN => PmAttr::Token(u32_ne(v)?),
            ATTR_LOC_ID => PmAttr::LocId(u8_(v)?),
            ATTR_ADDR_REMOTE => PmAttr::AddrRemote(nlas(v).collect::<Result<_, _>>()?),
            _ => PmAttr::Other(other(buf)?),
        })
    }
}

/// One attribute of an event (`MPTCP_ATTR_*` of `mptcp_pm_events`), in the
/// byte order `mptcp_event_put_*` writes: host order except the ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventAttr {
    Token(u32),
    Family(u16),
    LocId(u8),
    RemId(u8),
    Saddr4(Ipv4Addr),
    Saddr6(Ipv6Addr),
    Daddr4(Ipv4Addr),
    Daddr6(Ipv6Addr),
    /// Network byte order on the wire.
    Sport(u16),
    /// Network byte order on the wire.
    Dport(u16),
    Backup(u8),
    /// Copy of the subflow's sk_err.
    Error(u8),
    Flags(u16),
    Timeout(u32),
    IfIdx(u32),
    ResetReason(u32),
    ResetFlags(u32),
    ServerSide(u8),
    Other(DefaultNla),
}

impl Nla for EventAttr {
    fn value_len(&self) -> usize {
        use EventAttr::*;
        match self {
            LocId(_) | RemId(_) | Backup(_) | Error(_) | ServerSide(_) => 1,
            Family(_) | Sport(_) | Dport(_) | Flags(_) => 2,
            Token(_) | Saddr4(_) | Daddr4(_) | Timeout(_) | IfIdx(_) | ResetReason(_)
            | ResetFlags(_) => 4,
            Saddr6(_) | Daddr6(_) => 16,
            Other(nla) => nla.value_len(),
        }
    }
    fn kind(&self) -> u16 {
        use EventAttr::*;
        match self {
            Token(_) => EV_TOKEN,
            Family(_) => EV_FAMILY,
            LocId(_) => EV_LOC_ID,
            RemId(_) => EV_REM_ID,
            Saddr4(_) => EV_SADDR4,
            Saddr6(_) => EV_SADDR6,
            Daddr4(_) => EV_DADDR4,
            Daddr6(_) => EV_DADDR6,
            Sport(_) => EV_SPORT,
            Dport(_) => EV_DPORT,
            Backup(_) => EV_BACKUP,
            Error(_) => EV_ERROR,
            Flags(_) => EV_FLAGS,
            Timeout(_) => EV_TIMEOUT,
            IfIdx(_) => EV_IF_IDX,
            ResetReason(_) => EV_RESET_REASON,
            ResetFlags(_) => EV_RESET_FLAGS,
            ServerSide(_) => EV_SERVER_SIDE,
            Other(nla) => nla.kind(),
        }
    }
    fn emit_value(&self, buf: &mut [u8]) {
        use EventAttr::*;
        match self {
            LocId(v) | RemId(v) | Backup(v) | Error(v) | ServerSide(v) => buf[0] = *v,
            Family(v) | Flags(v) => buf.copy_from_slice(&v.to_ne_bytes()),
            Sport(v) | Dport(v) => buf.copy_from_slice(&v.to_be_bytes()),
            Token(v) | Timeout(v) | IfIdx(v) | ResetReason(v) | ResetFlags(v) => {
                buf.copy_from_slice(&v.to_ne_bytes())
            }
            Saddr4(a) | Daddr4(a) => buf.copy_from_slice(&a.octets()),
            Saddr6(a) | Daddr6(a) => buf.copy_from_slice(&a.octets()),
            Other(nla) => nla.emit_value(buf),
        }
    }
}

impl<'a> Parseable<NlaBuffer<&'a [u8]>> for EventAttr {
    fn parse(buf: &NlaBuffer<&'a [u8]>) -> Result<Self, DecodeError> {
        use EventAttr::*;
        let v = buf.value();
        Ok(match buf.kind() {
            EV_TOKEN => Token(u32_ne(v)?),
            EV_FAMILY => Family(u16_ne(v)?),
            EV_LOC_ID => LocId(u8_(v)?),
            EV_REM_ID => RemId(u8_(v)?),
            EV_SADDR4 => Saddr4(Ipv4Addr::from(arr::<4>(v)?)),
            EV_SADDR6 => Saddr6(Ipv6Addr::from(arr::<16>(v)?)),
            EV_DADDR4 => Daddr4(Ipv4Addr::from(arr::<4>(v)?)),
            EV_DADDR6 => Daddr6(Ipv6Addr::from(arr::<16>(v)?)),
            EV_SPORT => Sport(arr(v).map(u16::from_be_bytes)?),
            EV_DPORT => Dport(arr(v).map(u16::from_be_bytes)?),
            EV_BACKUP => Backup(u8_(v)?),
            EV_ERROR => Error(u8_(v)?),
            EV_FLAGS => Flags(u16_ne(v)?),
            EV_TIMEOUT => Timeout(u32_ne(v)?),
            EV_IF_IDX => IfIdx(u32_ne(v)?),
            EV_RESET_REASON => ResetReason(u32_ne(v)?),
            EV_RESET_FLAGS => ResetFlags(u32_ne(v)?),
            EV_SERVER_SIDE => ServerSide(u8_(v)?),
            _ => Other(other(buf)?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::{attrs, push_attr};

    fn parse_all<A>(buf: &[u8]) -> Result<Vec<A>, DecodeError>
    where
        A: for<'a> Parseable<NlaBuffer<&'a [u8]>>,
    {
        nlas(buf).collect()
    }

    #[test]
    fn pm_attrs_round_trip_with_nests_and_unknown() {
        let list = vec![
            PmAttr::Token(0xdead_beef),
            PmAttr::Addr(vec![
                AddrAttr::Family(libc::AF_INET6 as u16),
                AddrAttr::Addr6("2001:db8::1".parse().unwrap()),
                AddrAttr::Id(9),
                AddrAttr::Port(443),
                AddrAttr::Flags(5),
                AddrAttr::IfIdx(-1),
                AddrAttr::Other(DefaultNla::new(42, vec![1, 2, 3])),
            ]),
            PmAttr::AddrRemote(vec![AddrAttr::Addr4("10.0.0.2".parse().unwrap())]),
            PmAttr::LocId(3),
            PmAttr::RcvAddAddrs(4),
            PmAttr::Subflows(8),
            PmAttr::Addr(vec![]),
            PmAttr::Other(DefaultNla::new(77, vec![0; 5])),
        ];
        let buf = emit_nlas(&list);
        assert_eq!(buf.len() % 4, 0);
        assert_eq!(parse_all::<PmAttr>(&buf).unwrap(), list);
        // The nests carry the nested flag on the wire.
        let kinds: Vec<u16> = (0..buf.len())
            .scan(0usize, |pos, _| {
                (*pos + 4 <= buf.len()).then(|| {
                    let len = u16::from_ne_bytes([buf[*pos], buf[*pos + 1]]) as usize;
                    let kind = u16::from_ne_bytes([buf[*pos + 2], buf[*pos + 3]]);
                    *pos += (len + 3) & !3;
                    kind
                })
            })
            .collect();
        assert_eq!(
            kinds,
            vec![
                4,
                1 | NLA_F_NESTED,
                6 | NLA_F_NESTED,
                5,
                2,
                3,
                1 | NLA_F_NESTED,
                77
            ]
        );
    }

    #[test]
    fn event_attrs_round_trip_and_byte_order() {
        let list = vec![
            EventAttr::Token(1),
            EventAttr::Family(2),
            EventAttr::LocId(3),
            EventAttr::RemId(4),
            EventAttr::Saddr4("10.0.0.1".parse().unwrap()),
            EventAttr::Saddr6("::1".parse().unwrap()),
            EventAttr::Daddr4("10.0.0.2".parse().unwrap()),
            EventAttr::Daddr6("::2".parse().unwrap()),
            EventAttr::Sport(40000),
            EventAttr::Dport(5201),
            EventAttr::Backup(1),
            EventAttr::Error(110),
            EventAttr::Flags(3),
            EventAttr::Timeout(30),
            EventAttr::IfIdx(7),
            EventAttr::ResetReason(6),
            EventAttr::ResetFlags(1),
            EventAttr::ServerSide(1),
            EventAttr::Other(DefaultNla::new(19, vec![9])),
        ];
        let buf = emit_nlas(&list);
        assert_eq!(parse_all::<EventAttr>(&buf).unwrap(), list);
        let (kind, sport) = attrs(&buf).nth(8).unwrap().unwrap();
        assert_eq!((kind, sport), (EV_SPORT, &40000u16.to_be_bytes()[..]));
    }

    #[test]
    fn truncated_and_garbage_input_is_an_error() {
        // A value shorter than its type.
        let mut short = Vec::new();
        push_attr(&mut short, EV_TOKEN, &[1, 2]);
        assert!(parse_all::<EventAttr>(&short).is_err());
        // A length running past the buffer.
        let mut cut = emit_nlas(&[PmAttr::Token(1)]);
        cut[0] = 40;
        assert!(parse_all::<PmAttr>(&cut).is_err());
        // A length under the header's.
        assert!(parse_all::<AddrAttr>(&[2, 0, 1, 0, 0, 0, 0, 0]).is_err());
        // A malformed nest inside a well-formed attribute.
        let mut bad_nest = Vec::new();
        push_attr(&mut bad_nest, ATTR_ADDR | NLA_F_NESTED, &[9, 0, 3, 0, 10]);
        assert!(parse_all::<PmAttr>(&bad_nest).is_err());
        // Anything at all: an answer, never a panic.
        for seed in 0u32..2000 {
            let bytes: Vec<u8> = (0..(seed % 41))
                .map(|i| (seed.wrapping_mul(2_654_435_761).rotate_left(i) & 0xff) as u8)
                .collect();
            let _ = parse_all::<PmAttr>(&bytes);
            let _ = parse_all::<EventAttr>(&bytes);
            let _ = parse_all::<AddrAttr>(&bytes);
        }
        // A longer fixed-size value is read by its first bytes, as before.
        let mut long = Vec::new();
        push_attr(&mut long, EV_LOC_ID, &[5, 0, 0, 0]);
        assert_eq!(
            parse_all::<EventAttr>(&long).unwrap(),
            vec![EventAttr::LocId(5)]
        );
    }
}
