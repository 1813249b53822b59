//! MPTCP sockets for std and tokio, with automatic fallback to TCP where the
//! kernel refuses MPTCP, and the MPTCP socket options that tell what a
//! connection is doing (MPTCP_INFO, MPTCP_FULL_INFO).

use std::io;
use std::mem::size_of;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd};

use serde::Serialize;
use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use crate::info::{MptcpInfo, TcpInfo, MPTCP_INFO_SIZE, TCP_INFO_SIZE};

/// Not in the libc crate (include/linux/socket.h, include/uapi/linux/mptcp.h).
pub const SOL_MPTCP: libc::c_int = 284;
pub const MPTCP_INFO: libc::c_int = 1;
pub const MPTCP_TCPINFO: libc::c_int = 2;
pub const MPTCP_SUBFLOW_ADDRS: libc::c_int = 3;
pub const MPTCP_FULL_INFO: libc::c_int = 4;

/// Which protocol a socket really uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    Mptcp,
    /// MPTCP was refused by the kernel; this is a plain TCP socket.
    Tcp,
}

/// Errnos with which a kernel says "no MPTCP here" (not built, disabled by
/// sysctl, or too old), so a plain TCP socket is the right answer.
pub fn is_mptcp_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EPROTONOSUPPORT) | Some(libc::EINVAL) | Some(libc::ENOPROTOOPT)
    )
}

/// A stream socket for `addr`'s family: MPTCP when the kernel allows it,
/// TCP otherwise.
pub fn stream_socket(addr: &SocketAddr) -> io::Result<(Socket, Transport)> {
    let domain = Domain::for_address(*addr);
    match Socket::new(domain, Type::STREAM, Some(Protocol::MPTCP)) {
        Ok(s) => Ok((s, Transport::Mptcp)),
        Err(e) if is_mptcp_unavailable(&e) => Ok((
            Socket::new(domain, Type::STREAM, Some(Protocol::TCP))?,
            Transport::Tcp,
        )),
        Err(e) => Err(e),
    }
}

/// Connect over MPTCP (or TCP when MPTCP is unavailable), blocking.
pub fn connect(addr: SocketAddr) -> io::Result<(TcpStream, Transport)> {
    let (s, t) = stream_socket(&addr)?;
    s.connect(&SockAddr::from(addr))?;
    Ok((s.into(), t))
}

/// Connect from a given local address (to pick the path of the first subflow).
pub fn connect_from(local: SocketAddr, addr: SocketAddr) -> io::Result<(TcpStream, Transport)> {
    let (s, t) = stream_socket(&addr)?;
    s.bind(&SockAddr::from(local))?;
    s.connect(&SockAddr::from(addr))?;
    Ok((s.into(), t))
}

/// Listen over MPTCP (or TCP when MPTCP is unavailable), blocking.
pub fn listen(addr: SocketAddr) -> io::Result<(TcpListener, Transport)> {
    let (s, t) = stream_socket(&addr)?;
    s.set_reuse_address(true)?;
    s.bind(&SockAddr::from(addr))?;
    s.listen(1024)?;
    Ok((s.into(), t))
}

/// Connect over MPTCP (or TCP) for tokio.
pub async fn connect_tokio(addr: SocketAddr) -> io::Result<(tokio::net::TcpStream, Transport)> {
    let (s, t) = stream_socket(&addr)?;
    s.set_nonblocking(true)?;
    let std: TcpStream = s.into();
    let socket = tokio::net::TcpSocket::from_std_stream(std);
    Ok((socket.connect(addr).await?, t))
}

/// Listen over MPTCP (or TCP) for tokio.
pub fn listen_tokio(addr: SocketAddr) -> io::Result<(tokio::net::TcpListener, Transport)> {
    let (l, t) = listen(addr)?;
    l.set_nonblocking(true)?;
    Ok((tokio::net::TcpListener::from_std(l)?, t))
}

/// The protocol the socket was created with (SO_PROTOCOL).
pub fn socket_protocol(fd: &impl AsFd) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: v and len are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PROTOCOL,
            &mut v as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

fn getsockopt_bytes(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    buf: &mut [u8],
) -> io::Result<usize> {
    let mut len = buf.len() as libc::socklen_t;
    // SAFETY: buf is valid for writes of len bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr() as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(len as usize)
}

/// Whether a connected socket is really using MPTCP. False for plain TCP
/// sockets and for MPTCP sockets that fell back to TCP (peer without MPTCP,
/// options stripped): the kernel answers MPTCP_INFO with a zero length only
/// while MPTCP is in use.
pub fn is_mptcp_active(fd: &impl AsFd) -> io::Result<bool> {
    if socket_protocol(fd)? != libc::IPPROTO_MPTCP {
        return Ok(false);
    }
    match getsockopt_bytes(fd, SOL_MPTCP, MPTCP_INFO, &mut []) {
        Ok(_) => Ok(true),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
            ) =>
        {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// `struct mptcp_info` of an MPTCP socket; `None` when the socket is not (or
/// no longer) MPTCP.
pub fn mptcp_info(fd: &impl AsFd) -> io::Result<Option<MptcpInfo>> {
    let mut buf = vec![0u8; MPTCP_INFO_SIZE];
    match getsockopt_bytes(fd, SOL_MPTCP, MPTCP_INFO, &mut buf) {
        Ok(n) => Ok(MptcpInfo::parse(&buf[..n])),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
            ) =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// `struct tcp_info` of a TCP socket, or of the single subflow of a socket
/// that fell back.
pub fn tcp_info(fd: &impl AsFd) -> io::Result<Option<TcpInfo>> {
    let mut buf = vec![0u8; TCP_INFO_SIZE];
    let n = getsockopt_bytes(fd, libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf)?;
    Ok(TcpInfo::parse(&buf[..n]))
}

/// One subflow as seen from its MPTCP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SubflowInfo {
    pub id: u32,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub tcp: Option<TcpInfo>,
}

/// What the kernel says about a connected stream socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum ConnectionInfo {
    Mptcp {
        info: MptcpInfo,
        subflows: Vec<SubflowInfo>,
    },
    /// Plain TCP, or MPTCP that fell back to TCP.
    Tcp {
        fell_back: bool,
        tcp: Option<TcpInfo>,
    },
}

#[doc(hidden)]
pub const SUBFLOW_INFO_SIZE: usize = 264;
#[doc(hidden)]
pub const FULL_INFO_HEADER: usize = 40;
#[doc(hidden)]
pub const MAX_SUBFLOWS_READ: usize = 16;

/// Per-subflow info with MPTCP_FULL_INFO (Linux 6.5+).
pub fn subflow_info(fd: &impl AsFd) -> io::Result<(MptcpInfo, Vec<SubflowInfo>)> {
    let mut sf_buf = vec![0u8; SUBFLOW_INFO_SIZE * MAX_SUBFLOWS_READ];
    let mut tcp_buf = vec![0u8; TCP_INFO_SIZE * MAX_SUBFLOWS_READ];
    let mut full = vec![0u8; FULL_INFO_HEADER + MPTCP_INFO_SIZE];
    full[4..8].copy_from_slice(&(TCP_INFO_SIZE as u32).to_ne_bytes());
    full[12..16].copy_from_slice(&(SUBFLOW_INFO_SIZE as u32).to_ne_bytes());
    full[20..24].copy_from_slice(&(MAX_SUBFLOWS_READ as u32).to_ne_bytes());
    full[24..32].copy_from_slice(&(sf_buf.as_mut_ptr() as u64).to_ne_bytes());
    full[32..40].copy_from_slice(&(tcp_buf.as_mut_ptr() as u64).to_ne_bytes());
    let n = getsockopt_bytes(fd, SOL_MPTCP, MPTCP_FULL_INFO, &mut full)?;
    decode_full_info(&full, n, &sf_buf, &tcp_buf)
}

/// Decode what MPTCP_FULL_INFO wrote: `full` (FULL_INFO_HEADER +
/// MPTCP_INFO_SIZE bytes, `n` of them reported) and the subflow and
/// tcp_info arrays it points at (MAX_SUBFLOWS_READ entries each).
#[doc(hidden)]
pub fn decode_full_info(
    full: &[u8],
    n: usize,
    sf_buf: &[u8],
    tcp_buf: &[u8],
) -> io::Result<(MptcpInfo, Vec<SubflowInfo>)> {
    let invalid = |what: &str| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("MPTCP_FULL_INFO: {what}"),
        )
    };
    let info = MptcpInfo::parse(full.get(FULL_INFO_HEADER..n).unwrap_or(&[]))
        .ok_or_else(|| invalid("short mptcp_info"))?;
    let rd = |o: usize| u32::from_ne_bytes(full[o..o + 4].try_into().unwrap()) as usize;
    let tcp_kernel = rd(0).min(TCP_INFO_SIZE);
    let sf_kernel = rd(8).min(SUBFLOW_INFO_SIZE);
    let count = rd(16).min(MAX_SUBFLOWS_READ);
    let mut subflows = Vec::with_capacity(count);
    for i in 0..count {
        let sf = &sf_buf[i * SUBFLOW_INFO_SIZE..i * SUBFLOW_INFO_SIZE + sf_kernel];
        let tcp = &tcp_buf[i * TCP_INFO_SIZE..i * TCP_INFO_SIZE + tcp_kernel];
        subflows.push(SubflowInfo {
            id: sf
                .get(0..4)
                .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
                .unwrap_or(0),
            local: sf.get(8..136).and_then(parse_sockaddr),
            remote: sf.get(136..264).and_then(parse_sockaddr),
            tcp: TcpInfo::parse(tcp),
        });
    }
    Ok((info, subflows))
}

/// Everything the kernel says about a connected stream socket.
pub fn connection_info(fd: &impl AsFd) -> io::Result<ConnectionInfo> {
    let is_mptcp_socket = socket_protocol(fd)? == libc::IPPROTO_MPTCP;
    if is_mptcp_socket && is_mptcp_active(fd)? {
        let (info, subflows) = match subflow_info(fd) {
            Ok(v) => v,
            // Before Linux 6.5 there is no MPTCP_FULL_INFO: report the
            // connection-level info alone.
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOPROTOOPT)
                ) =>
            {
                let info = mptcp_info(fd)?
                    .ok_or_else(|| io::Error::from_raw_os_error(libc::EOPNOTSUPP))?;
                (info, Vec::new())
            }
            Err(e) => return Err(e),
        };
        return Ok(ConnectionInfo::Mptcp { info, subflows });
    }
    Ok(ConnectionInfo::Tcp {
        fell_back: is_mptcp_socket,
        tcp: tcp_info(fd)?,
    })
}

/// `SO_ORIGINAL_DST` (linux/netfilter_ipv4.h) and `IP6T_SO_ORIGINAL_DST`
/// (linux/netfilter_ipv6/ip6_tables.h): the same number at SOL_IP and
/// SOL_IPV6.
pub const SO_ORIGINAL_DST: libc::c_int = 80;

/// Where an accepted TCP connection was going before a `redirect` (or any
/// destination NAT) sent it here, from conntrack: `None` when it was not
/// redirected (no conntrack entry, or one whose original destination is
/// this socket's own address). IPv4 connections (also IPv4-mapped ones on an IPv6
/// listener) are asked at SOL_IP and give an IPv4 address; IPv6 ones at
/// SOL_IPV6.
///
/// The kernel answers this for TCP sockets, including MPTCP sockets that
/// fell back to TCP; a live MPTCP socket refuses the option (EOPNOTSUPP).
pub fn original_destination(fd: &impl AsFd) -> io::Result<Option<SocketAddr>> {
    let sock = socket2::SockRef::from(fd);
    let peer = sock.peer_addr()?;
    let ipv4 = match peer.as_socket() {
        Some(SocketAddr::V4(_)) => true,
        Some(SocketAddr::V6(a)) => a.ip().to_ipv4_mapped().is_some(),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "original_destination needs an IPv4 or IPv6 socket",
            ))
        }
    };
    let (level, size) = if ipv4 {
        (libc::SOL_IP, size_of::<libc::sockaddr_in>())
    } else {
        (libc::SOL_IPV6, size_of::<libc::sockaddr_in6>())
    };
    let mut buf = [0u8; size_of::<libc::sockaddr_in6>()];
    match getsockopt_bytes(fd, level, SO_ORIGINAL_DST, &mut buf[..size]) {
        Ok(n) => {
            let original = parse_sockaddr(&buf[..n]).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    "SO_ORIGINAL_DST: unexpected address",
                )
            })?;
            // Conntrack knows every connection once it is loaded; one that
            // was not translated was going where it arrived.
            let local = sock.local_addr()?.as_socket().map(unmap);
            Ok((Some(original) != local).then_some(original))
        }
        // No conntrack entry: the connection was not translated.
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        // No conntrack in the kernel at all (the option is unknown) on a
        // TCP socket: nothing can have been translated either.
        Err(e)
            if e.raw_os_error() == Some(libc::ENOPROTOOPT)
                && socket_protocol(fd)? == libc::IPPROTO_TCP =>
        {
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// An IPv4-mapped IPv6 socket address as the IPv4 one it stands for.
pub(crate) fn unmap(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        v4 => v4,
    }
}

/// Set the socket's mark (SO_MARK), which routing rules and nf_tables
/// (`meta mark`) see on its packets. Needs CAP_NET_ADMIN.
pub fn set_mark(fd: &impl AsFd, mark: u32) -> io::Result<()> {
    // The kernel reads the mark as the int's bits.
    setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_MARK, mark as libc::c_int)
}

/// Set an int-valued socket option.
pub(crate) fn setsockopt_int(
    fd: &impl AsFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: value is a valid c_int for the size given.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_fd().as_raw_fd(),
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[doc(hidden)]
pub fn parse_sockaddr(b: &[u8]) -> Option<SocketAddr> {
    let family = u16::from_ne_bytes(b.get(0..2)?.try_into().ok()?) as i32;
    let port = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
    match family {
        libc::AF_INET => {
            let a: [u8; 4] = b.get(4..8)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port))
        }
        libc::AF_INET6 => {
            let a: [u8; 16] = b.get(8..24)?.try_into().ok()?;
            Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_parsing() {
        let mut b = [0u8; 128];
        b[0..2].copy_from_slice(&(libc::AF_INET as u16).to_ne_bytes());
        b[2..4].copy_from_slice(&80u16.to_be_bytes());
        b[4..8].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(parse_sockaddr(&b), Some("10.1.2.3:80".parse().unwrap()));
        assert_eq!(parse_sockaddr(&[0u8; 128]), None);
        assert_eq!(parse_sockaddr(&[2]), None);
    }

    #[test]
    fn unavailable_errnos() {
        for e in [libc::EPROTONOSUPPORT, libc::EINVAL, libc::ENOPROTOOPT] {
            assert!(is_mptcp_unavailable(&io::Error::from_raw_os_error(e)));
        }
        assert!(!is_mptcp_unavailable(&io::Error::from_raw_os_error(
            libc::EACCES
        )));
    }
}
