//! A small synchronous netlink transport: send one request, collect the
//! replies (a dump or a do with ACK), turn NLMSG_ERROR into [`Error::Kernel`]
//! with the kernel's extended-ack text.

use std::fmt::Debug;

use netlink_packet_core::{
    DecodeError, NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload,
    NetlinkSerializable, NlaBuffer, Parseable, NLA_TYPE_MASK, NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
};
use netlink_sys::{Socket, SocketAddr};

use crate::error::{Error, Op, Result};

const RECV_BUF: usize = 1 << 16;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NLMSG_HDR_LEN: usize = 16;

pub(crate) struct NlSocket {
    sock: Socket,
    seq: u32,
}

/// Whether a request is a dump (many replies, ended by DONE) or a single
/// operation acknowledged by the kernel.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Dump,
    Do,
}

impl NlSocket {
    pub fn open(protocol: isize, op: Op) -> Result<Self> {
        let mut sock = Socket::new(protocol).map_err(|e| Error::io(op, e))?;
        sock.bind_auto().map_err(|e| Error::io(op, e))?;
        sock.connect(&SocketAddr::new(0, 0))
            .map_err(|e| Error::io(op, e))?;
        // Extended acks carry the kernel's reason in words; capped acks keep
        // error replies small. Both are best effort on old kernels.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(NlSocket { sock, seq: 0 })
    }

    pub fn into_socket(self) -> Socket {
        self.sock
    }

    /// Send `payload` and collect the inner replies.
    pub fn request<Req, Resp>(
        &mut self,
        payload: Req,
        kind: Kind,
        extra_flags: u16,
        op: Op,
    ) -> Result<Vec<Resp>>
    where
        Req: NetlinkSerializable + Debug,
        Resp: NetlinkDeserializable + Debug,
    {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST
            | extra_flags
            | match kind {
                Kind::Dump => NLM_F_DUMP,
                Kind::Do => NLM_F_ACK,
            };
        header.sequence_number = seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut tx = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut tx);
        self.sock.send(&tx, 0).map_err(|e| Error::io(op, e))?;

        let mut replies = Vec::new();
        let mut rx: Vec<u8> = Vec::with_capacity(RECV_BUF);
        loop {
            rx.clear();
            let n = self.sock.recv(&mut rx, 0).map_err(|e| Error::io(op, e))?;
            if n > rx.len() {
                return Err(Error::decode(op, "netlink reply truncated"));
            }
            if decode_replies(&rx, seq, op, &mut replies)? {
                return Ok(replies);
            }
        }
    }
}

/// Decode one netlink message. The netlink-packet-* decoders panic on
/// some malformed nested attributes (found by fuzzing); only the kernel
/// sends these bytes, but a daemon must not die of them: a panic there is
/// a decode error.
pub(crate) fn deserialize_caught<T>(frame: &[u8], op: Op) -> Result<NetlinkMessage<T>>
where
    T: NetlinkDeserializable,
{
    std::panic::catch_unwind(|| NetlinkMessage::<T>::deserialize(frame))
        .map_err(|_| Error::decode(op, "the netlink decoder panicked on a malformed message"))?
        .map_err(|e| Error::decode(op, e))
}

/// Decode one received datagram of answers to request `seq`, appending the
/// inner messages to `replies`. `Ok(true)`: the answer is complete (DONE,
/// or the ACK); `Ok(false)`: more datagrams follow. Messages of other
/// sequence numbers (late replies to earlier requests) are skipped.
#[doc(hidden)]
pub fn decode_replies<Resp>(rx: &[u8], seq: u32, op: Op, replies: &mut Vec<Resp>) -> Result<bool>
where
    Resp: NetlinkDeserializable + Debug,
{
    for frame in messages(rx) {
        let frame = frame.map_err(|e| Error::decode(op, e))?;
        let msg_seq = u32::from_ne_bytes(frame[8..12].try_into().unwrap());
        if msg_seq != seq {
            continue; // a late reply to an earlier request
        }
        let parsed = deserialize_caught::<Resp>(frame, op)?;
        match parsed.payload {
            // A "do" with NLM_F_ACK gets its answer first and the ACK
            // after it, so keep reading until the ACK.
            NetlinkPayload::InnerMessage(inner) => replies.push(inner),
            NetlinkPayload::Done(_) => return Ok(true),
            NetlinkPayload::Error(err) => match err.code {
                None => return Ok(true),
                // Saturating: i32::MIN (no errno) must not panic.
                Some(code) => {
                    return Err(Error::Kernel {
                        op,
                        errno: code.get().saturating_neg(),
                        extack: extack_message(&err.header),
                    })
                }
            },
            NetlinkPayload::Noop | NetlinkPayload::Overrun(_) => {}
            _ => {}
        }
    }
    Ok(false)
}

/// Readiness for tokio on a netlink socket: the socket goes non-blocking
/// and a duplicate of its descriptor is registered (the AsyncFd owns it).
pub(crate) fn async_readiness(
    sock: &Socket,
    op: Op,
) -> Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    use std::os::fd::AsFd;
    sock.set_non_blocking(true).map_err(|e| Error::io(op, e))?;
    let dup = sock
        .as_fd()
        .try_clone_to_owned()
        .map_err(|e| Error::io(op, e))?;
    // SAFETY: the AsyncFd owns the duplicate, so the descriptor stays open
    // for as long as it is registered.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(dup, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io(op, e.into()))
}

pub(crate) fn align4(len: usize) -> usize {
    (len + 3) & !3
}

/// The NLMSGERR_ATTR_MSG string from the TLVs that follow the echoed
/// request header in an error reply (capped ack: header only).
#[doc(hidden)]
pub fn extack_message(after_code: &[u8]) -> Option<String> {
    let tlvs = after_code.get(NLMSG_HDR_LEN..)?;
    let mut i = 0;
    while i + 4 <= tlvs.len() {
        let len = u16::from_ne_bytes([tlvs[i], tlvs[i + 1]]) as usize;
        let kind = u16::from_ne_bytes([tlvs[i + 2], tlvs[i + 3]]) & NLA_TYPE_MASK;
        if len < 4 || i + len > tlvs.len() {
            return None;
        }
        if kind == NLMSGERR_ATTR_MSG {
            let value = &tlvs[i + 4..i + len];
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        i += align4(len);
    }
    None
}

/// The netlink messages of one datagram, each a whole frame (header
/// included; at least a header long). A length that is below a header's
/// or runs past the datagram ends the iteration with an error; bytes after
/// the last whole message that cannot hold a header are ignored.
/// The one splitter of the crate: replies, events, nf_tables batch answers
/// and the rtnetlink change monitor all read datagrams through it.
pub(crate) fn messages(buf: &[u8]) -> Messages<'_> {
    Messages { buf, pos: 0 }
}

pub(crate) struct Messages<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for Messages<'a> {
    type Item = std::result::Result<&'a [u8], String>;
    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.buf.get(self.pos..)?;
        if rest.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        if len < NLMSG_HDR_LEN || len > rest.len() {
            self.pos = self.buf.len();
            return Some(Err(format!("bad netlink length {len}")));
        }
        self.pos += align4(len);
        Some(Ok(&rest[..len]))
    }
}

/// Iterate the netlink attributes in `buf`, yielding (kind without flags,
/// value). Malformed trailing bytes end the iteration with an error;
/// fewer than 4 trailing bytes (no room for a header) are ignored.
#[doc(hidden)]
pub fn attrs(buf: &[u8]) -> AttrIter<'_> {
    AttrIter { buf, pos: 0 }
}

/// The attributes in `buf` parsed as the typed attribute set `A` (one of
/// `pm_attrs`' enums), framed as [`attrs`] frames them. Lazy: parsing
/// stops where the caller stops.
pub(crate) fn nlas<'a, A>(
    buf: &'a [u8],
) -> impl Iterator<Item = std::result::Result<A, DecodeError>> + 'a
where
    A: Parseable<NlaBuffer<&'a [u8]>> + 'a,
{
    let mut it = attrs(buf);
    std::iter::from_fn(move || {
        let raw = it.next_raw()?;
        Some(
            raw.map_err(DecodeError::from)
                .and_then(|raw| A::parse(&NlaBuffer::new(raw))),
        )
    })
}

#[doc(hidden)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> AttrIter<'a> {
    /// The next attribute whole (header included).
    fn next_raw(&mut self) -> Option<std::result::Result<&'a [u8], String>> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        if len < 4 || len > rest.len() {
            self.pos = self.buf.len();
            let kind = u16::from_ne_bytes([rest[2], rest[3]]) & NLA_TYPE_MASK;
            return Some(Err(format!(
                "attribute {kind} claims {len} bytes but {} remain",
                rest.len()
            )));
        }
        self.pos += align4(len);
        Some(Ok(&rest[..len]))
    }
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = std::result::Result<(u16, &'a [u8]), String>;
    fn next(&mut self) -> Option<Self::Item> {
        Some(self.next_raw()?.map(|raw| {
            let kind = u16::from_ne_bytes([raw[2], raw[3]]) & NLA_TYPE_MASK;
            (kind, &raw[4..])
        }))
    }
}

/// Append one attribute to `out`.
#[doc(hidden)]
pub fn push_attr(out: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    out.extend_from_slice(&(len as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(value);
    out.resize(align4(out.len()), 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NLA_F_NESTED;

    #[test]
    fn attribute_round_trip_and_truncation() {
        let mut buf = Vec::new();
        push_attr(&mut buf, 1, &[1, 2, 3]);
        push_attr(&mut buf, 2 | NLA_F_NESTED, &7u32.to_ne_bytes());
        let got: Vec<_> = attrs(&buf).collect::<std::result::Result<_, _>>().unwrap();
        assert_eq!(
            got,
            vec![(1, &[1u8, 2, 3][..]), (2, &7u32.to_ne_bytes()[..])]
        );
        // A length that runs past the buffer is an error, not a panic.
        let mut bad = buf.clone();
        bad[0] = 200;
        assert!(attrs(&bad).next().unwrap().is_err());
        assert!(attrs(&[1, 0]).next().is_none());
    }

    #[test]
    fn messages_split_a_datagram_and_stop_at_a_bad_length() {
        let frame = |len: u32, fill: u8| {
            let mut f = len.to_ne_bytes().to_vec();
            f.resize(len as usize, fill);
            f
        };
        let mut dgram = frame(17, 1);
        dgram.resize(20, 0); // padding to 4
        dgram.extend(frame(16, 2));
        let got: Vec<_> = messages(&dgram)
            .collect::<std::result::Result<_, _>>()
            .unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].len(), got[1].len()), (17, 16));
        // Fewer than a header's bytes at the end: ignored.
        dgram.extend([0u8; 15]);
        assert_eq!(messages(&dgram).count(), 2);
        // A length past the end, or under a header's: an error, then nothing.
        let mut bad = frame(16, 0);
        bad.extend(frame(16, 0));
        bad[16] = 99;
        let mut it = messages(&bad);
        assert!(it.next().unwrap().is_ok());
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none());
        assert!(messages(&[8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
            .next()
            .unwrap()
            .is_err());
    }

    #[test]
    fn extack_is_found_after_echoed_header() {
        let mut payload = vec![0u8; NLMSG_HDR_LEN];
        push_attr(&mut payload, NLMSGERR_ATTR_MSG, b"limit reached\0");
        assert_eq!(extack_message(&payload).as_deref(), Some("limit reached"));
        assert_eq!(extack_message(&payload[..4]), None);
    }
}
