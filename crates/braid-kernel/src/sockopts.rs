//! Which common socket options work on MPTCP sockets on this kernel: each
//! is set on a real MPTCP socket (listening or connected, as programs do)
//! and read back, so users know what to expect when a program is switched
//! to MPTCP.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};

use serde::Serialize;

#[derive(Debug, Clone, Serialize)]
pub struct SockoptResult {
    pub option: &'static str,
    /// Where it was tried: "connected", "listener" or "before connect".
    pub on: &'static str,
    pub set: String,
    pub read_back: String,
    pub works: bool,
}

fn errno_text(e: std::io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

fn set_int(fd: &impl AsFd, level: i32, name: i32, v: i32) -> Result<(), String> {
    // SAFETY: pointer and size of one int.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &v as *const i32 as *const libc::c_void,
            4,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(errno_text(std::io::Error::last_os_error()))
    }
}

fn get_int(fd: &impl AsFd, level: i32, name: i32) -> Result<i32, String> {
    let mut v = 0i32;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: pointer and size of one int.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &mut v as *mut i32 as *mut libc::c_void,
            &mut len,
        )
    };
    if rc == 0 {
        Ok(v)
    } else {
        Err(errno_text(std::io::Error::last_os_error()))
    }
}

fn try_int(
    fd: &impl AsFd,
    option: &'static str,
    on: &'static str,
    level: i32,
    name: i32,
    v: i32,
) -> SockoptResult {
    let set = set_int(fd, level, name, v);
    let got = get_int(fd, level, name);
    let works = set.is_ok() && got.as_ref().is_ok_and(|g| *g == v || (v != 0 && *g != 0));
    SockoptResult {
        option,
        on,
        set: match set {
            Ok(()) => format!("ok ({v})"),
            Err(e) => e,
        },
        read_back: match got {
            Ok(g) => g.to_string(),
            Err(e) => e,
        },
        works,
    }
}

fn try_congestion(fd: &impl AsFd) -> SockoptResult {
    let name = b"reno";
    // SAFETY: pointer and size of the name.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            name.as_ptr() as *const libc::c_void,
            4,
        )
    };
    let set = if rc == 0 {
        Ok(())
    } else {
        Err(errno_text(std::io::Error::last_os_error()))
    };
    let mut buf = [0u8; 16];
    let mut len = 16 as libc::socklen_t;
    // SAFETY: buffer of the given size.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CONGESTION,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    let got = if rc == 0 {
        Ok(String::from_utf8_lossy(
            &buf[..buf.iter().position(|b| *b == 0).unwrap_or(len as usize)],
        )
        .into_owned())
    } else {
        Err(errno_text(std::io::Error::last_os_error()))
    };
    SockoptResult {
        option: "TCP_CONGESTION",
        on: "connected",
        works: set.is_ok() && got.as_deref() == Ok("reno"),
        set: set.map(|_| "ok (reno)".to_string()).unwrap_or_else(|e| e),
        read_back: got.unwrap_or_else(|e| e),
    }
}

fn new_socket(mptcp: bool) -> std::io::Result<socket2::Socket> {
    let proto = if mptcp {
        socket2::Protocol::MPTCP
    } else {
        socket2::Protocol::TCP
    };
    socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, Some(proto))
}

/// Try every option over loopback in the current namespace, on MPTCP
/// sockets (`mptcp`) or plain TCP ones for comparison.
pub fn survey(mptcp: bool) -> std::io::Result<Vec<SockoptResult>> {
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let lsock = new_socket(mptcp)?;
    let mut out = vec![
        try_int(
            &lsock,
            "SO_REUSEADDR",
            "listener",
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            1,
        ),
        try_int(
            &lsock,
            "SO_REUSEPORT",
            "listener",
            libc::SOL_SOCKET,
            libc::SO_REUSEPORT,
            1,
        ),
    ];
    lsock.bind(&any.into())?;
    lsock.listen(16)?;
    out.push(try_int(
        &lsock,
        "TCP_FASTOPEN",
        "listener",
        libc::IPPROTO_TCP,
        libc::TCP_FASTOPEN,
        16,
    ));
    out.push(try_int(
        &lsock,
        "TCP_DEFER_ACCEPT",
        "listener",
        libc::IPPROTO_TCP,
        libc::TCP_DEFER_ACCEPT,
        1,
    ));
    let listener: TcpListener = lsock.into();
    let addr = listener.local_addr()?;
    let csock = new_socket(mptcp)?;
    out.push(try_int(
        &csock,
        "TCP_FASTOPEN_CONNECT",
        "before connect",
        libc::IPPROTO_TCP,
        libc::TCP_FASTOPEN_CONNECT,
        1,
    ));
    csock.connect(&addr.into())?;
    let client: TcpStream = csock.into();
    let _server = listener.accept()?;
    let fd = &client;
    for (name, level, opt, v) in [
        ("TCP_NODELAY", libc::IPPROTO_TCP, libc::TCP_NODELAY, 1),
        ("SO_KEEPALIVE", libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        ("TCP_KEEPIDLE", libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, 30),
        ("TCP_KEEPINTVL", libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 5),
        ("TCP_KEEPCNT", libc::IPPROTO_TCP, libc::TCP_KEEPCNT, 3),
        (
            "TCP_USER_TIMEOUT",
            libc::IPPROTO_TCP,
            libc::TCP_USER_TIMEOUT,
            10_000,
        ),
        ("TCP_CORK", libc::IPPROTO_TCP, libc::TCP_CORK, 1),
        ("TCP_QUICKACK", libc::IPPROTO_TCP, libc::TCP_QUICKACK, 1),
        (
            "TCP_NOTSENT_LOWAT",
            libc::IPPROTO_TCP,
            libc::TCP_NOTSENT_LOWAT,
            65536,
        ),
        ("TCP_MAXSEG", libc::IPPROTO_TCP, libc::TCP_MAXSEG, 1200),
        ("SO_RCVBUF", libc::SOL_SOCKET, libc::SO_RCVBUF, 262_144),
        ("SO_SNDBUF", libc::SOL_SOCKET, libc::SO_SNDBUF, 262_144),
        ("SO_PRIORITY", libc::SOL_SOCKET, libc::SO_PRIORITY, 3),
        ("SO_MARK", libc::SOL_SOCKET, libc::SO_MARK, 7),
        ("IP_TOS", libc::IPPROTO_IP, libc::IP_TOS, 0x10),
        ("IP_FREEBIND", libc::IPPROTO_IP, libc::IP_FREEBIND, 1),
        ("IP_TRANSPARENT", libc::IPPROTO_IP, libc::IP_TRANSPARENT, 1),
    ] {
        out.push(try_int(fd, name, "connected", level, opt, v));
    }
    out.push(try_congestion(fd));
    Ok(out)
}
