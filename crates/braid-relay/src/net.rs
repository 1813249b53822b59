//! Sockets for the relay's shells: MPTCP listeners and connections (TCP
//! where the kernel refuses MPTCP), TCP Fast Open on both, and the first
//! flight written so that it rides in the SYN when a Fast Open cookie is
//! known.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use braid_kernel::socket::{self as ksock, Transport};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};

/// Pending Fast Open requests a listener queues (the kernel's `qlen`).
const FASTOPEN_QUEUE: libc::c_int = 256;

fn stream_socket(addr: &SocketAddr, mptcp: bool) -> io::Result<(Socket, Transport)> {
    if mptcp {
        return ksock::stream_socket(addr);
    }
    let s = Socket::new(
        Domain::for_address(*addr),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    Ok((s, Transport::Tcp))
}

fn setsockopt_int(
    s: &Socket,
    level: libc::c_int,
    name: libc::c_int,
    v: libc::c_int,
) -> io::Result<()> {
    // SAFETY: a valid int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            name,
            &v as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Whether Fast Open is in use on a socket, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FastOpen {
    On,
    Off(String),
}

impl FastOpen {
    pub fn describe(&self) -> String {
        match self {
            FastOpen::On => "on".into(),
            FastOpen::Off(why) => format!("off: {why}"),
        }
    }
}

/// `net.ipv4.tcp_fastopen` of this namespace (it applies to IPv6 too).
pub fn fastopen_sysctl() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_fastopen")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// A listener: MPTCP unless refused, IPv6 listeners IPv6-only (so one can
/// listen on 0.0.0.0 and [::] at once), Fast Open when asked and allowed.
pub fn listen(
    addr: SocketAddr,
    mptcp: bool,
    fast_open: bool,
) -> io::Result<(TcpListener, Transport, FastOpen)> {
    let (s, t) = stream_socket(&addr, mptcp)?;
    s.set_reuse_address(true)?;
    if addr.is_ipv6() {
        s.set_only_v6(true)?;
    }
    let fo = if !fast_open {
        FastOpen::Off("disabled in the configuration (fast_open = false)".into())
    } else if fastopen_sysctl().is_some_and(|v| v & 2 == 0) {
        FastOpen::Off(
            "net.ipv4.tcp_fastopen lacks the server bit (2): 'sysctl -w net.ipv4.tcp_fastopen=3' saves clients a round trip".into(),
        )
    } else {
        match setsockopt_int(&s, libc::IPPROTO_TCP, libc::TCP_FASTOPEN, FASTOPEN_QUEUE) {
            Ok(()) => FastOpen::On,
            Err(e) => FastOpen::Off(format!("the kernel refused TCP_FASTOPEN: {e}")),
        }
    };
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    s.set_nonblocking(true)?;
    let std: std::net::TcpListener = s.into();
    Ok((TcpListener::from_std(std)?, t, fo))
}

/// Connect for the tunnel. With `fast_open`, connect returns at once and
/// the first write carries the SYN (see [`write_first_flight`]).
/// `mark` (SO_MARK, needs CAP_NET_ADMIN) lets transparent mode's rules
/// leave the connection alone; MPTCP copies it to every subflow.
pub async fn connect(
    addr: SocketAddr,
    mptcp: bool,
    fast_open: bool,
    mark: Option<u32>,
) -> io::Result<(TcpStream, Transport, FastOpen)> {
    let (s, t) = stream_socket(&addr, mptcp)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    let fo = if !fast_open {
        FastOpen::Off("disabled in the configuration (fast_open = false)".into())
    } else if fastopen_sysctl().is_some_and(|v| v & 1 == 0) {
        FastOpen::Off("net.ipv4.tcp_fastopen lacks the client bit (1)".into())
    } else {
        match setsockopt_int(&s, libc::IPPROTO_TCP, libc::TCP_FASTOPEN_CONNECT, 1) {
            Ok(()) => FastOpen::On,
            Err(e) => FastOpen::Off(format!("the kernel refused TCP_FASTOPEN_CONNECT: {e}")),
        }
    };
    s.set_nonblocking(true)?;
    let std: std::net::TcpStream = s.into();
    let socket = tokio::net::TcpSocket::from_std_stream(std);
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok((stream, t, fo))
}

/// Write the first flight. With a deferred (Fast Open) connect the kernel
/// answers EINPROGRESS when it had no cookie to put data in the SYN: the
/// data was not taken, so wait for the handshake and write it then.
pub async fn write_first_flight(s: &TcpStream, data: &[u8]) -> io::Result<()> {
    let mut off = 0;
    while off < data.len() {
        let n = s
            .async_io(Interest::WRITABLE, || {
                // SAFETY: data[off..] is valid for reads of its length.
                let rc = unsafe {
                    libc::send(
                        s.as_raw_fd(),
                        data[off..].as_ptr() as *const libc::c_void,
                        data.len() - off,
                        libc::MSG_NOSIGNAL,
                    )
                };
                if rc >= 0 {
                    return Ok(rc as usize);
                }
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINPROGRESS) {
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Err(e)
                }
            })
            .await?;
        off += n;
    }
    Ok(())
}

/// Whether a connected socket really runs MPTCP (not fallen back).
pub fn is_mptcp(s: &TcpStream) -> bool {
    ksock::is_mptcp_active(s).unwrap_or(false)
}

/// Keepalive on the tunnel: a client that vanished (suspended laptop,
/// dead path without a FIN) is noticed within about two minutes.
pub fn tune_tunnel(s: &TcpStream) {
    let sock = socket2::SockRef::from(s);
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(std::time::Duration::from_secs(60))
        .with_interval(std::time::Duration::from_secs(10))
        .with_retries(6);
    let _ = sock.set_tcp_keepalive(&ka);
}
