//! A small synchronous netlink transport: send one request, collect the
//! replies (a dump or a do with ACK), turn NLMSG_ERROR into [`Error::Kernel`]
//! with the kernel's extended-ack text.

use std::fmt::Debug;

use netlink_packet_core::{
    NetlinkDeserializable, NetlinkHeader, NetlinkMessage, NetlinkPayload, NetlinkSerializable,
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST,
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
    let mut offset = 0;
    while offset + NLMSG_HDR_LEN <= rx.len() {
        let bytes = &rx[offset..];
        let len = u32::from_ne_bytes(bytes[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDR_LEN || len > bytes.len() {
            return Err(Error::decode(op, format!("bad netlink length {len}")));
        }
        let msg_seq = u32::from_ne_bytes(bytes[8..12].try_into().unwrap());
        let frame = &bytes[..len];
        offset += align4(len);
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
        let kind = u16::from_ne_bytes([tlvs[i + 2], tlvs[i + 3]]) & 0x3fff;
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

/// Iterate the netlink attributes in `buf`, yielding (kind without flags,
/// value). Malformed trailing bytes end the iteration with an error.
#[doc(hidden)]
pub fn attrs(buf: &[u8]) -> AttrIter<'_> {
    AttrIter { buf, pos: 0 }
}

#[doc(hidden)]
pub struct AttrIter<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Iterator for AttrIter<'a> {
    type Item = std::result::Result<(u16, &'a [u8]), String>;
    fn next(&mut self) -> Option<Self::Item> {
        let rest = &self.buf[self.pos.min(self.buf.len())..];
        if rest.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([rest[0], rest[1]]) as usize;
        let kind = u16::from_ne_bytes([rest[2], rest[3]]) & 0x3fff;
        if len < 4 || len > rest.len() {
            self.pos = self.buf.len();
            return Some(Err(format!(
                "attribute {kind} claims {len} bytes but {} remain",
                rest.len()
            )));
        }
        self.pos += align4(len);
        Some(Ok((kind, &rest[4..len])))
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

pub(crate) const NLA_F_NESTED: u16 = 1 << 15;

#[cfg(test)]
mod tests {
    use super::*;

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
    fn extack_is_found_after_echoed_header() {
        let mut payload = vec![0u8; NLMSG_HDR_LEN];
        push_attr(&mut payload, NLMSGERR_ATTR_MSG, b"limit reached\0");
        assert_eq!(extack_message(&payload).as_deref(), Some("limit reached"));
        assert_eq!(extack_message(&payload[..4]), None);
    }
}
