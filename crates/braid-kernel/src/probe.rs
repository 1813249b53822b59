//! ICMP echoes from a given address out of a given interface: does the
//! path still carry packets? Used when a receiving subflow goes silent,
//! where TCP itself cannot tell (a receiver has nothing outstanding), and
//! to measure the loss of a path that carries no traffic.
//!
//! Two ways to send it ([`Method`]): a raw ICMP socket, which needs
//! CAP_NET_RAW, or an ICMP datagram ("ping") socket, which needs no
//! capability but is allowed only when the process's group (or one of its
//! supplementary groups) is within `net.ipv4.ping_group_range`. That range
//! is per network namespace, covers ICMPv6 too, and is "1 0" (nobody) in a
//! new namespace; CAP_NET_RAW does not bypass it. [`detect`] says which
//! way works here, and why neither does.

use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::unix::AsyncFd;

use crate::error::{Error, Op, Result};

static SEQ: AtomicU16 = AtomicU16::new(1);

const ECHO_REQUEST_V4: u8 = 8;
const ECHO_REPLY_V4: u8 = 0;
const ECHO_REQUEST_V6: u8 = 128;
const ECHO_REPLY_V6: u8 = 129;

/// How echo requests are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A raw ICMP socket (SOCK_RAW): needs CAP_NET_RAW.
    Raw,
    /// An ICMP datagram socket (SOCK_DGRAM, IPPROTO_ICMP or ICMPV6): no
    /// capability, but a group of the process must be within
    /// `net.ipv4.ping_group_range`. The kernel sets the echo identifier
    /// and checksum and hands the socket only the replies to it.
    Datagram,
}

impl Method {
    fn socket_type(self) -> Type {
        match self {
            Method::Raw => Type::RAW,
            Method::Datagram => Type::DGRAM,
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Method::Raw => "raw ICMP socket (CAP_NET_RAW)",
            Method::Datagram => "ICMP datagram socket (net.ipv4.ping_group_range)",
        }
    }
}

fn family(ipv6: bool) -> (Domain, Protocol) {
    if ipv6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    }
}

/// The first way of sending echoes that this process may use, for IPv4
/// or IPv6: a raw socket, else a datagram socket. Only opens (and closes)
/// a socket; nothing is sent. Err: why neither works, in words.
pub fn detect(ipv6: bool) -> std::result::Result<Method, String> {
    let (domain, proto) = family(ipv6);
    let raw = match Socket::new(domain, Type::RAW, Some(proto)) {
        Ok(_) => return Ok(Method::Raw),
        Err(e) => e,
    };
    let dgram = match Socket::new(domain, Type::DGRAM, Some(proto)) {
        Ok(_) => return Ok(Method::Datagram),
        Err(e) => e,
    };
    let raw_why = match raw.raw_os_error() {
        Some(libc::EPERM | libc::EACCES) => "no CAP_NET_RAW for a raw ICMP socket".to_string(),
        Some(libc::EAFNOSUPPORT) => format!(
            "{} sockets are not allowed here (systemd's RestrictAddressFamilies?) or not supported",
            if ipv6 { "AF_INET6" } else { "AF_INET" }
        ),
        _ => format!("a raw ICMP socket: {raw}"),
    };
    let dgram_why = match dgram.raw_os_error() {
        Some(libc::EACCES | libc::EPERM) => format!(
            "no group of this process ({}) is within net.ipv4.ping_group_range ({}) for an ICMP datagram socket",
            process_groups(),
            ping_group_range().unwrap_or_else(|| "unreadable".into())
        ),
        Some(libc::EAFNOSUPPORT) if raw.raw_os_error() == Some(libc::EAFNOSUPPORT) => {
            return Err(raw_why)
        }
        _ => format!("an ICMP datagram socket: {dgram}"),
    };
    Err(format!("{raw_why}, and {dgram_why}"))
}

/// `net.ipv4.ping_group_range` of this thread's network namespace, as "low high".
pub fn ping_group_range() -> Option<String> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ping_group_range").ok()?;
    Some(s.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// "gid 0" or "gid 0, groups 4 27".
fn process_groups() -> String {
    // SAFETY: getegid cannot fail.
    let egid = unsafe { libc::getegid() };
    let mut groups = vec![0 as libc::gid_t; 64];
    // SAFETY: the buffer holds the number of entries passed.
    let n = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(n.max(0) as usize);
    groups.retain(|g| *g != egid);
    if groups.is_empty() {
        format!("gid {egid}")
    } else {
        let list: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        format!("gid {egid}, groups {}", list.join(" "))
    }
}

/// [`echo_with`] by raw socket, `echoes` echoes.
pub async fn echo(
    local: IpAddr,
    remote: IpAddr,
    ifindex: u32,
    timeout: Duration,
    echoes: u16,
) -> Result<Option<Duration>> {
    echo_with(Method::Raw, local, remote, ifindex, timeout, echoes).await
}

/// Send `echoes` echo requests (at least one) from `local` to `remote`
/// out of `ifindex` and wait up to `timeout` from the first for a reply
/// to any of them. They leave `timeout / (2 x echoes)` apart, all within
/// the first half of the wait, so each has at least half of it to be
/// answered, and a lost packet, or a few, is not taken for a dead path.
/// Ok(Some): the round-trip time of the first echo answered, from its own
/// request. Ok(None): no reply in time (an ICMP error in reply counts as
/// no reply).
pub async fn echo_with(
    method: Method,
    local: IpAddr,
    remote: IpAddr,
    ifindex: u32,
    timeout: Duration,
    echoes: u16,
) -> Result<Option<Duration>> {
    if local.is_ipv4() != remote.is_ipv4() {
        return Err(Error::Invalid(format!(
            "cannot probe {remote} from {local}: different address families"
        )));
    }
    let echoes = echoes.max(1);
    let v6 = remote.is_ipv6();
    let (domain, proto) = family(v6);
    let io = |e| Error::io(Op::Probe, e);
    let sock = Socket::new(domain, method.socket_type(), Some(proto)).map_err(io)?;
    sock.bind(&SocketAddr::new(local, 0).into()).map_err(io)?;
    let name = interface_name(ifindex)?;
    sock.bind_device(Some(name.as_bytes())).map_err(io)?;
    sock.set_nonblocking(true).map_err(io)?;
    // A datagram socket's identifier is the one the kernel gave it (it
    // replaces ours and delivers only replies carrying it).
    let id = (std::process::id() as u16).wrapping_mul(31);
    let check_id = (method == Method::Raw).then_some(id);
    // A raw IPv4 socket delivers the IP header too; the others do not.
    let ip_header = method == Method::Raw && !v6;
    let seq = SEQ.fetch_add(echoes, Ordering::Relaxed);
    let gap = timeout / (2 * u32::from(echoes));
    let to = SocketAddr::new(remote, 0).into();
    let start = Instant::now();
    sock.send_to(&echo_request(v6, id, seq), &to).map_err(io)?;
    // SAFETY: the AsyncFd owns the socket, so its descriptor stays open
    // and the same for as long as the AsyncFd lives.
    let fd = unsafe { AsyncFd::register_with_interest(sock, tokio::io::Interest::READABLE) }
        .map_err(|e| io(e.into()))?;
    let wait = async {
        let mut buf = [MaybeUninit::<u8>::uninit(); 1500];
        // When each echo left: the answer's RTT is from its own request.
        let mut sent_at = vec![start];
        let mut sending = true;
        let next = tokio::time::sleep(gap);
        tokio::pin!(next);
        loop {
            let sent = sent_at.len() as u16;
            tokio::select! {
                _ = &mut next, if sending && sent < echoes => {
                    let request = echo_request(v6, id, seq.wrapping_add(sent));
                    if fd.get_ref().send_to(&request, &to).is_err() {
                        // The first is out and may still be answered: a
                        // later one that cannot leave (the route went away
                        // meanwhile, or the send buffer is full) ends the
                        // sending, not the wait.
                        sending = false;
                        continue;
                    }
                    sent_at.push(Instant::now());
                    next.as_mut().reset(tokio::time::Instant::from_std(start) + gap * u32::from(sent + 1));
                }
                ready = fd.readable() => {
                    let mut ready = ready?;
                    let Ok(res) = ready.try_io(|s| s.get_ref().recv_from(&mut buf)) else {
                        continue;
                    };
                    let (n, from) = match res {
                        Ok(r) => r,
                        // An ICMP error for our request: not an answer.
                        Err(e) if matches!(
                            e.raw_os_error(),
                            Some(libc::EHOSTUNREACH | libc::ENETUNREACH | libc::ECONNREFUSED | libc::EHOSTDOWN)
                        ) => continue,
                        Err(e) => return Err(e),
                    };
                    // SAFETY: recv_from initialised the first n bytes.
                    let bytes: &[u8] = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast(), n) };
                    let icmp = if ip_header { strip_ipv4_header(bytes) } else { Some(bytes) };
                    let answered = icmp.and_then(|icmp| {
                        (0..sent).find(|i| is_reply(icmp, v6, check_id, seq.wrapping_add(*i)))
                    });
                    if let (Some(i), true) = (answered, from.as_socket().map(|a| a.ip()) == Some(remote)) {
                        return Ok::<_, std::io::Error>(sent_at[usize::from(i)].elapsed());
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
/// ICMPv6 checksum itself (and, on datagram sockets, the ICMPv4 one);
/// a raw socket's ICMPv4 checksum is ours.
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

/// The ICMP message of an IPv4 packet as a raw socket delivers it.
fn strip_ipv4_header(packet: &[u8]) -> Option<&[u8]> {
    let header_len = usize::from(packet.first()? & 0x0f) * 4;
    packet.get(header_len..)
}

/// Whether the ICMP message `icmp` is the reply to our request `seq`
/// (with identifier `id`, when the socket does not filter by it).
fn is_reply(icmp: &[u8], ipv6: bool, id: Option<u16>, seq: u16) -> bool {
    let want = if ipv6 { ECHO_REPLY_V6 } else { ECHO_REPLY_V4 };
    icmp.len() >= 8
        && icmp[0] == want
        && id.is_none_or(|id| icmp[4..6] == id.to_be_bytes())
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
        let raw = |p: &[u8], seq| {
            strip_ipv4_header(p).is_some_and(|i| is_reply(i, false, Some(0x1234), seq))
        };
        assert!(raw(&reply, 7));
        assert!(!raw(&reply, 8), "another probe's reply");
        assert!(!raw(&reply[..22], 7), "truncated");
        assert!(
            !strip_ipv4_header(&reply).is_some_and(|i| is_reply(i, false, Some(0x9999), 7)),
            "another process's id"
        );
        // A datagram socket delivers the ICMP message alone, with the
        // kernel's identifier: any id matches.
        assert!(is_reply(&icmp, false, None, 7));
        // Our own request, looped back, is not a reply.
        let mut looped = vec![0x45u8];
        looped.extend([0u8; 19]);
        looped.extend(&req);
        assert!(!raw(&looped, 7));
        let mut v6 = echo_request(true, 9, 9);
        v6[0] = ECHO_REPLY_V6;
        assert!(is_reply(&v6, true, Some(9), 9));
        assert!(is_reply(&v6, true, None, 9));
    }

    /// Both methods against the loopback of a new network namespace (needs
    /// root): a datagram socket only once ping_group_range allows our gid.
    #[test]
    fn both_methods_are_answered_on_loopback() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        std::thread::spawn(|| {
            // SAFETY: moves only this thread into a new network namespace.
            assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0);
            crate::rtnl::set_link_up(1, true).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let probe = |m, a: &str| {
                let a: IpAddr = a.parse().unwrap();
                rt.block_on(echo_with(m, a, a, 1, Duration::from_secs(2), 1))
            };
            // A new namespace lets no group open ping sockets.
            assert_eq!(ping_group_range().as_deref(), Some("1 0"));
            assert_eq!(detect(false), Ok(Method::Raw), "root has CAP_NET_RAW");
            let dgram = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::ICMPV4));
            assert_eq!(dgram.unwrap_err().raw_os_error(), Some(libc::EACCES));
            for a in ["127.0.0.1", "::1"] {
                assert!(probe(Method::Raw, a).unwrap().is_some(), "raw {a}");
            }
            std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0").unwrap();
            for a in ["127.0.0.1", "::1"] {
                assert!(
                    probe(Method::Datagram, a).unwrap().is_some(),
                    "datagram {a}"
                );
            }
        })
        .join()
        .unwrap();
    }
}
