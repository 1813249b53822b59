//! One ICMP echo from a given address out of a given interface: does the
//! path still carry packets? Used when a receiving subflow goes silent,
//! where TCP itself cannot tell (a receiver has nothing outstanding).
//! Raw ICMP sockets need CAP_NET_RAW (the daemon runs as root).

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Op, Result};

static SEQ: AtomicU16 = AtomicU16::new(1);

const SECOND_AFTER: Duration = Duration::from_millis(10);

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// Send echo requests from `local` to `remote` out of `ifindex` (a second
/// one `SECOND_AFTER` after the first, so one lost packet is not taken for
/// a dead path) and wait up to `timeout` from the first for a reply to
/// either. Ok(None): no reply in time.
pub async fn echo(
    local: IpAddr,
    remote: IpAddr,
    ifindex: u32,
    timeout: Duration,
) -> Result<Option<Duration>> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(Error::Invalid(format!(
            "cannot probe {remote} from {local}: different address families"
        )));
    }
    let (domain, proto) = match remote {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let io = |e| Error::io(Op::Probe, e);
    let sock = Socket::new(domain, Type::RAW, Some(proto)).map_err(io)?;
    sock.bind(&SocketAddr::new(local, 0).into()).map_err(io)?;
    let name = interface_name(ifindex)?;
    sock.bind_device(Some(name.as_bytes())).map_err(io)?;
    sock.set_nonblocking(true).map_err(io)?;
    let id = (std::process::id() as u16).wrapping_mul(31);
    let seq = SEQ.fetch_add(2, Ordering::Relaxed);
    let to = SocketAddr::new(remote, 0).into();
    let start = Instant::now();
    sock.send_to(&echo_request(remote.is_ipv6(), id, seq), &to)
        .map_err(io)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open
    // and the same for as long as the AsyncFd lives.
    let fd = unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(|e| io(e.into()))?;
    let v6 = remote.is_ipv6();
    let wait = async {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        let second = tokio::time::sleep(SECOND_AFTER);
        tokio::pin!(second);
        let mut second_sent = false;
        loop {
            tokio::select! {
                _ = &mut second, if !second_sent => {
                    second_sent = true;
                    fd.get_ref().send_to(&echo_request(v6, id, seq.wrapping_add(1)), &to)?;
                }
                ready = fd.readable() => {
                    let mut ready = ready?;
                    let Ok(res) = ready.try_io(|s| s.get_ref().recv_from(&mut buf)) else {
                        continue;
                    };
                    let (n, from) = res?;
                    // SAFETY: recv_from initialised the first n bytes.
                    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
                    let ours = is_reply(bytes, v6, id, seq) || is_reply(bytes, v6, id, seq.wrapping_add(1));
                    if from.as_socket().map(|a| a.ip()) == Some(remote) && ours {
                        return Ok::<_, std::io::Error>(start.elapsed());
                    }
                }
            }
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(rtt)) => Ok(Some(rtt)),
        Ok(Err(e)) => Err(io(e)),
        Err(_) => Ok(None),
    }
}

fn interface_name(ifindex: u32) -> Result<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: the buffer is IF_NAMESIZE long, as if_indextoname requires.
    let p = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if p.is_null() {
        return Err(Error::Invalid(format!("no interface with index {ifindex}")));
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name into buf.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// An echo request with a 16-byte payload. The kernel fills in the
/// ICMPv6 checksum itself; ICMPv4's is ours.
fn echo_request(ipv6: bool, id: u16, seq: u16) -> Vec<u8> {
    let mut p = vec![0u8; 8 + 16];
    p[0] = if ipv6 {
        ECHO_REQUEST_V6
    } else {
        ECHO_REQUEST_V4
    };
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"braid path probe");
    if !ipv6 {
        let c = checksum(&p);
        p[2..4].copy_from_slice(&c.to_be_bytes());
    }
    p
}

/// Whether `packet` (IPv4: with its IP header, as raw sockets deliver it;
/// IPv6: the ICMPv6 message alone) is the reply to our request.
fn is_reply(packet: &[u8], ipv6: bool, id: u16, seq: u16) -> bool {
    let icmp = if ipv6 {
        packet
    } else {
        let Some(first) = packet.first() else {
            return false;
        };
        let header_len = usize::from(first & 0x0f) * 4;
        match packet.get(header_len..) {
            Some(rest) => rest,
            None => return false,
        }
    };
    let want = if ipv6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    icmp.len() >= 8
        && icmp[0] == want
        && icmp[4..6] == id.to_be_bytes()
        && icmp[6..8] == seq.to_be_bytes()
}

/// The Internet checksum (RFC 1071).
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_checksum_verifies_and_replies_are_matched() {
        let req = echo_request(false, 0x1234, 7);
        assert_eq!(checksum(&req), 0, "a packet with its checksum sums to 0");
        // An IPv4 reply as a raw socket delivers it: 20-byte IP header first.
        let mut reply = vec![0x45u8];
        reply.extend([0u8; 19]);
        let mut icmp = req.clone();
        icmp[0] = ECHO_REPLY_V4;
        reply.extend(&icmp);
        assert!(is_reply(&reply, false, 0x1234, 7));
        assert!(!is_reply(&reply, false, 0x1234, 8), "another probe's reply");
        assert!(!is_reply(&reply[..22], false, 0x1234, 7), "truncated");
        // Our own request, looped back, is not a reply.
        let mut looped = vec![0x45u8];
        looped.extend([0u8; 19]);
        looped.extend(&req);
        assert!(!is_reply(&looped, false, 0x1234, 7));
        let mut v6 = echo_request(true, 9, 9);
        v6[0] = ECHO_REPLY_V6;
        assert!(is_reply(&v6, true, 9, 9));
    }
}
