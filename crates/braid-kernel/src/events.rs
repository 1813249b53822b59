//! The `mptcp_pm_events` multicast stream, decoded into typed events.
//! Unknown event types and attributes are kept, never a panic.

use std::net::IpAddr;
use std::os::fd::OwnedFd;

use netlink_packet_core::{NetlinkPayload, Nla, NLA_TYPE_MASK};
use netlink_packet_generic::GenlMessage;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Op, Result};
use crate::genl::{open_genl, resolve_family, PmPayload, MPTCP_PM_EVENTS_GROUP, MPTCP_PM_NAME};
use crate::netlink::{deserialize_caught, messages, nlas};
use crate::pm_attrs::EventAttr;

pub use braid_types::event::EventKind;

/// Event flags (MPTCP_ATTR_FLAGS).
pub const EVENT_FLAG_DENY_JOIN_ID0: u16 = 1 << 0;
pub const EVENT_FLAG_SERVER_SIDE: u16 = 1 << 1;

/// One decoded MPTCP event. Attributes the kernel did not send are `None`.
/// Deserializable so the daemon's journal can carry events to `braid monitor`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub saddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub daddr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dport: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub loc_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rem_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backup: Option<bool>,
    /// Copy of the subflow's sk_err (an errno).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_reason: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reset_flags: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_side: Option<bool>,
    /// Attributes this version of Braid does not know, by type.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(default)]
    pub unknown_attrs: Vec<u16>,
}

impl Event {
    /// An event of `kind` with no attribute (decoding and fuzzing fill it).
    pub fn empty(kind: EventKind) -> Self {
        Event {
            kind,
            token: None,
            family: None,
            saddr: None,
            daddr: None,
            sport: None,
            dport: None,
            loc_id: None,
            rem_id: None,
            backup: None,
            error: None,
            flags: None,
            timeout: None,
            ifindex: None,
            reset_reason: None,
            reset_flags: None,
            server_side: None,
            unknown_attrs: Vec::new(),
        }
    }

    /// Names of the event flags that are set (deny_join_id0, server_side, unknown bits).
    pub fn flag_names(&self) -> Vec<String> {
        let Some(flags) = self.flags else {
            return Vec::new();
        };
        let mut out = Vec::new();
        if flags & EVENT_FLAG_DENY_JOIN_ID0 != 0 {
            out.push("deny_join_id0".to_string());
        }
        if flags & EVENT_FLAG_SERVER_SIDE != 0 {
            out.push("server_side".to_string());
        }
        let unknown = flags & !(EVENT_FLAG_DENY_JOIN_ID0 | EVENT_FLAG_SERVER_SIDE);
        if unknown != 0 {
            out.push(format!("unknown(0x{unknown:x})"));
        }
        out
    }

    /// Whether this is the server side of its connection, from either the
    /// old `server_side` attribute or the newer flag.
    pub fn is_server_side(&self) -> bool {
        self.server_side.unwrap_or(false)
            || self.flags.is_some_and(|f| f & EVENT_FLAG_SERVER_SIDE != 0)
    }
}

/// MPTCP reset reason codes (RFC 8684 section 3.6), in words.
pub fn reset_reason_name(code: u32) -> &'static str {
    match code {
        0 => "unspecified",
        1 => "mptcp-specific error",
        2 => "lack of resources",
        3 => "administratively prohibited",
        4 => "too much outstanding data",
        5 => "unacceptable performance",
        6 => "middlebox interference",
        _ => "unknown reason",
    }
}

/// Decode the attributes of one event message.
pub fn decode_event(cmd: u8, payload: &[u8]) -> Result<Event> {
    let mut ev = Event::empty(EventKind::from_cmd(cmd));
    for attr in nlas(payload) {
        match attr.map_err(|e| Error::decode(Op::ReadEvents, e))? {
            EventAttr::Token(v) => ev.token = Some(v),
            EventAttr::Family(v) => ev.family = Some(v),
            EventAttr::LocId(v) => ev.loc_id = Some(v),
            EventAttr::RemId(v) => ev.rem_id = Some(v),
            EventAttr::Saddr4(a) => ev.saddr = Some(IpAddr::V4(a)),
            EventAttr::Saddr6(a) => ev.saddr = Some(IpAddr::V6(a)),
            EventAttr::Daddr4(a) => ev.daddr = Some(IpAddr::V4(a)),
            EventAttr::Daddr6(a) => ev.daddr = Some(IpAddr::V6(a)),
            EventAttr::Sport(v) => ev.sport = Some(v),
            EventAttr::Dport(v) => ev.dport = Some(v),
            EventAttr::Backup(v) => ev.backup = Some(v != 0),
            EventAttr::Error(v) => ev.error = Some(v),
            EventAttr::Flags(v) => ev.flags = Some(v),
            EventAttr::Timeout(v) => ev.timeout = Some(v),
            EventAttr::IfIdx(v) => ev.ifindex = Some(v),
            EventAttr::ResetReason(v) => ev.reset_reason = Some(v),
            EventAttr::ResetFlags(v) => ev.reset_flags = Some(v),
            EventAttr::ServerSide(v) => ev.server_side = Some(v != 0),
            EventAttr::Other(nla) => ev.unknown_attrs.push(nla.kind() & NLA_TYPE_MASK),
        }
    }
    Ok(ev)
}

/// What one read of the event socket produced.
#[derive(Debug)]
pub enum StreamItem {
    Event(Event),
    /// The socket's receive buffer overflowed (ENOBUFS): events were lost and
    /// the reader must resynchronise its view from dumps.
    Overflow,
}

/// A subscription to `mptcp_pm_events` in the current network namespace.
pub struct EventStream {
    reader: Reader,
    /// Readiness for tokio, on a duplicate of the socket's descriptor.
    async_fd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
}

struct Reader {
    sock: netlink_sys::Socket,
    family_id: u16,
    pending: std::collections::VecDeque<StreamItem>,
    buf: Vec<u8>,
}

impl EventStream {
    pub fn subscribe() -> Result<Self> {
        let mut nl = open_genl(Op::Subscribe)?;
        let family = resolve_family(&mut nl, MPTCP_PM_NAME)?;
        let group = *family.groups.get(MPTCP_PM_EVENTS_GROUP).ok_or_else(|| {
            Error::decode(
                Op::Subscribe,
                "the mptcp_pm family has no 'mptcp_pm_events' group",
            )
        })?;
        let sock = nl.into_socket();
        sock.add_membership(group)
            .map_err(|e| Error::io(Op::Subscribe, e))?;
        Ok(EventStream {
            reader: Reader {
                sock,
                family_id: family.id,
                pending: Default::default(),
                buf: Vec::with_capacity(1 << 16),
            },
            async_fd: None,
        })
    }

    /// Shrink the receive buffer (tests use this to provoke ENOBUFS).
    pub fn set_receive_buffer(&self, bytes: usize) -> Result<()> {
        self.reader
            .sock
            .set_rx_buf_sz(bytes)
            .map_err(|e| Error::io(Op::Subscribe, e))
    }

    /// Block until the next event (or overflow notice).
    pub fn next_blocking(&mut self) -> Result<StreamItem> {
        loop {
            if let Some(item) = self.reader.pending.pop_front() {
                return Ok(item);
            }
            self.reader.read_once()?;
        }
    }

    /// The next event (or overflow notice), waiting at most `timeout`;
    /// `None` when nothing came in time.
    pub fn next_timeout(&mut self, timeout: std::time::Duration) -> Result<Option<StreamItem>> {
        use std::os::fd::AsRawFd;
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(item) = self.reader.pending.pop_front() {
                return Ok(Some(item));
            }
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let mut pfd = libc::pollfd {
                fd: self.reader.sock.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // Round up so a sub-millisecond remainder still waits.
            let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = std::io::Error::last_os_error();
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(Error::io(Op::ReadEvents, e));
            }
            if rc == 0 {
                return Ok(None);
            }
            self.reader.read_once()?;
        }
    }

    /// Wait for the next event without blocking the tokio runtime.
    pub async fn next(&mut self) -> Result<StreamItem> {
        if let Some(item) = self.reader.pending.pop_front() {
            return Ok(item);
        }
        if self.async_fd.is_none() {
            let fd = crate::netlink::async_readiness(&self.reader.sock, Op::ReadEvents)?;
            self.async_fd = Some(fd);
        }
        loop {
            let fd = self.async_fd.as_ref().expect("registered above");
            let mut guard = fd
                .readable()
                .await
                .map_err(|e| Error::io(Op::ReadEvents, e))?;
            match self.reader.read_once() {
                Err(e) if e.errno() == Some(libc::EAGAIN) => guard.clear_ready(),
                Err(e) => return Err(e),
                Ok(()) => {
                    if let Some(item) = self.reader.pending.pop_front() {
                        return Ok(item);
                    }
                }
            }
        }
    }
}

impl Reader {
    fn read_once(&mut self) -> Result<()> {
        self.buf.clear();
        match self.sock.recv(&mut self.buf, 0) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.pending.push_back(StreamItem::Overflow);
                return Ok(());
            }
            Err(e) => return Err(Error::io(Op::ReadEvents, e)),
        }
        decode_datagram(&self.buf, self.family_id, &mut self.pending)
    }
}

/// Decode one datagram of the event socket (messages of other families
/// than `family_id` skipped), appending the events to `pending`.
#[doc(hidden)]
pub fn decode_datagram(
    buf: &[u8],
    family_id: u16,
    pending: &mut std::collections::VecDeque<StreamItem>,
) -> Result<()> {
    for frame in messages(buf) {
        let frame = frame.map_err(|e| Error::decode(Op::ReadEvents, e))?;
        let msg = deserialize_caught::<GenlMessage<PmPayload>>(frame, Op::ReadEvents)?;
        if msg.header.message_type != family_id {
            continue;
        }
        if let NetlinkPayload::InnerMessage(genl) = msg.payload {
            let ev = decode_event(genl.payload.cmd, &genl.payload.attrs)?;
            pending.push_back(StreamItem::Event(ev));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::push_attr;

    #[test]
    fn sub_established_decodes_all_attributes() {
        let mut p = Vec::new();
        push_attr(&mut p, 1, &0xdeadbeefu32.to_ne_bytes());
        push_attr(&mut p, 2, &(libc::AF_INET as u16).to_ne_bytes());
        push_attr(&mut p, 3, &[2]);
        push_attr(&mut p, 4, &[0]);
        push_attr(&mut p, 5, &[10, 0, 2, 1]);
        push_attr(&mut p, 7, &[10, 0, 2, 2]);
        push_attr(&mut p, 9, &40000u16.to_be_bytes());
        push_attr(&mut p, 10, &5201u16.to_be_bytes());
        push_attr(&mut p, 11, &[1]);
        push_attr(&mut p, 15, &4u32.to_ne_bytes());
        push_attr(&mut p, 13, &(EVENT_FLAG_SERVER_SIDE | 0x80).to_ne_bytes());
        push_attr(&mut p, 42, &[9, 9]);
        let ev = decode_event(10, &p).unwrap();
        assert_eq!(ev.kind, EventKind::SubEstablished);
        assert_eq!(ev.token, Some(0xdeadbeef));
        assert_eq!(ev.saddr, Some("10.0.2.1".parse().unwrap()));
        assert_eq!(ev.sport, Some(40000));
        assert_eq!(ev.dport, Some(5201));
        assert_eq!(ev.backup, Some(true));
        assert_eq!(ev.ifindex, Some(4));
        assert!(ev.is_server_side());
        assert_eq!(ev.flag_names(), vec!["server_side", "unknown(0x80)"]);
        assert_eq!(ev.unknown_attrs, vec![42]);
    }

    #[test]
    fn unknown_event_and_malformed_attrs() {
        assert_eq!(decode_event(99, &[]).unwrap().kind, EventKind::Unknown(99));
        let mut p = Vec::new();
        push_attr(&mut p, 1, &[1, 2]); // token too short
        assert!(decode_event(1, &p).is_err());
        assert!(decode_event(1, &[8, 0, 1]).is_ok()); // trailing garbage under 4 bytes ignored
    }
}
