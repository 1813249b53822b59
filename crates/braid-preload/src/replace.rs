//! Replacing a TCP socket with an MPTCP socket under the same descriptor
//! number, right before `connect()` or `listen()`.
//!
//! Only a socket that is exactly as `socket()` made it, plus what the
//! library saw the program do to it, is replaced: created by `socket()`
//! here (same cookie), TCP, in the CLOSE state (never connected,
//! connecting, listening), not added to an epoll set, not duplicated or
//! shared with a forked process, and every option the program set replayed
//! without error. Otherwise the program keeps its TCP socket, untouched: a
//! socket is never left half-configured.

use std::fmt;

use libc::{c_int, c_void, sockaddr, socklen_t};

use crate::fdtable::{self, Blocked};
use crate::real;

pub const IPPROTO_MPTCP: c_int = 262;
/// `tcp_info.tcpi_state` of a socket that is not connected, connecting or
/// listening (include/net/tcp_states.h).
const TCP_CLOSE: u8 = 7;
/// fcntl commands of every Linux architecture but parisc (asm-generic).
const F_SETSIG: c_int = 10;
const F_GETSIG: c_int = 11;

pub fn errno() -> c_int {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() }
}

pub fn set_errno(e: c_int) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = e }
}

/// Why a socket stays TCP.
#[derive(Clone, Copy, Debug)]
pub enum Kept {
    Slot(Blocked),
    OtherSocket,
    NotTcp,
    NotClosed(u8),
    MptcpRefused(c_int),
    OptionRefused {
        level: c_int,
        name: c_int,
        errno: c_int,
    },
    Address(c_int),
    FileFlags(c_int),
    Dup(c_int),
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Kept::Slot(Blocked::Untracked) => f.write_str("not a TCP socket made by socket()"),
            Kept::Slot(Blocked::Epoll) => {
                f.write_str("it was added to an epoll set, which a replacement would break")
            }
            Kept::Slot(Blocked::Shared) => f.write_str("another descriptor refers to it (dup)"),
            Kept::Slot(Blocked::Forked) => f.write_str("it is shared with a forked process"),
            Kept::Slot(Blocked::Unreplayable) => {
                f.write_str("an option was set that cannot be replayed")
            }
            Kept::OtherSocket => f.write_str("the descriptor was reused behind the library's back"),
            Kept::NotTcp => f.write_str("not a TCP/IP socket"),
            Kept::NotClosed(s) => write!(f, "it is already in use (TCP state {s})"),
            Kept::MptcpRefused(e) => write!(f, "the kernel refused an MPTCP socket (errno {e})"),
            Kept::OptionRefused { level, name, errno } => write!(
                f,
                "MPTCP refused the program's option level {level} name {name} (errno {errno})"
            ),
            Kept::Address(e) => write!(f, "the bound address could not be kept (errno {e})"),
            Kept::FileFlags(e) => write!(f, "the file flags could not be copied (errno {e})"),
            Kept::Dup(e) => write!(f, "dup3 failed (errno {e})"),
        }
    }
}

pub fn getsockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: valid pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            level,
            name,
            &mut v as *mut c_int as *mut c_void,
            &mut len,
        )
    };
    (rc == 0).then_some(v)
}

fn setsockopt_int(fd: c_int, level: c_int, name: c_int, v: c_int) -> bool {
    // SAFETY: valid pointer of the right size.
    unsafe {
        real::setsockopt(
            fd,
            level,
            name,
            &v as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as socklen_t,
        ) == 0
    }
}

/// The TCP state (`tcpi_state`, the first byte of `struct tcp_info`).
fn tcp_state(fd: c_int) -> Option<u8> {
    let mut info = [0u8; 8];
    let mut len = info.len() as socklen_t;
    // SAFETY: the kernel writes at most `len` bytes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            info.as_mut_ptr() as *mut c_void,
            &mut len,
        )
    };
    (rc == 0 && len >= 1).then_some(info[0])
}

/// The MPTCP socket being prepared; closed unless it took the place of
/// the program's socket. (A raw close: the lock is held, and close() is a
/// cancellation point.)
struct Temp(c_int);

impl Drop for Temp {
    fn drop(&mut self) {
        // SAFETY: our own descriptor.
        unsafe { real::sys_close(self.0) };
    }
}

/// Replace `fd` by an MPTCP socket if, and only if, that is safe (see the
/// module). errno is the caller's to save.
///
/// # Safety
/// `slot` is `fd`'s slot.
pub unsafe fn to_mptcp(slot: &fdtable::Slot, fd: c_int) -> Result<(), Kept> {
    let g = slot.lock();
    let cookie = g.check().map_err(Kept::Slot)?;
    // The same socket socket() made: a TCP stream socket of the family
    // recorded then (sockets already MPTCP are never adopted).
    if fdtable::socket_cookie(fd) != cookie {
        return Err(Kept::OtherSocket);
    }
    let domain = g.domain();
    match tcp_state(fd) {
        Some(TCP_CLOSE) => {}
        Some(s) => return Err(Kept::NotClosed(s)),
        None => return Err(Kept::NotTcp),
    }
    let new = real::socket(
        domain,
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
        IPPROTO_MPTCP,
    );
    if new < 0 {
        return Err(Kept::MptcpRefused(errno()));
    }
    let new = Temp(new);
    // Every option the program set, in its order, before binding (some,
    // like SO_REUSEADDR, IP_FREEBIND or IP_BIND_ADDRESS_NO_PORT, decide
    // how the bind goes).
    g.replay(|level, name, value| {
        let ptr = value.as_ptr() as *const c_void;
        if real::setsockopt(new.0, level, name, ptr, value.len() as socklen_t) == 0 {
            Ok(())
        } else {
            Err(Kept::OptionRefused {
                level,
                name,
                errno: errno(),
            })
        }
    })?;
    keep_address(fd, new.0)?;
    copy_file_flags(fd, new.0)?;
    let fd_flags = real::fcntl(fd, libc::F_GETFD, 0);
    if fd_flags < 0 {
        return Err(Kept::FileFlags(errno()));
    }
    let cloexec = if fd_flags & libc::FD_CLOEXEC != 0 {
        libc::O_CLOEXEC
    } else {
        0
    };
    // Atomically closes the TCP socket and puts the MPTCP one in its place
    // (`new` is never `fd`: `fd` is open).
    if real::dup3(new.0, fd, cloexec) < 0 {
        return Err(Kept::Dup(errno()));
    }
    g.forget();
    Ok(())
}

/// Bind `new` where `old` is bound, if it is.
unsafe fn keep_address(old: c_int, new: c_int) -> Result<(), Kept> {
    let mut ss: libc::sockaddr_storage = std::mem::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    if libc::getsockname(old, &mut ss as *mut _ as *mut sockaddr, &mut len) != 0 {
        return Err(Kept::Address(errno()));
    }
    let (unspecified, port) = match ss.ss_family as c_int {
        libc::AF_INET => {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in);
            (a.sin_addr.s_addr == 0, a.sin_port)
        }
        libc::AF_INET6 => {
            let a = &*(&ss as *const _ as *const libc::sockaddr_in6);
            (a.sin6_addr.s6_addr == [0; 16], a.sin6_port)
        }
        _ => return Err(Kept::NotTcp),
    };
    let addr = &ss as *const _ as *const sockaddr;
    if port == 0 {
        if unspecified {
            return Ok(()); // not bound
        }
        // An address without a port: bound with IP_BIND_ADDRESS_NO_PORT,
        // replayed above, so the port is still chosen at connect().
        return if libc::bind(new, addr, len) == 0 {
            Ok(())
        } else {
            Err(Kept::Address(errno()))
        };
    }
    // The same port, even one the kernel picked at bind(): the program may
    // have read it with getsockname() and told a peer. Both sockets need
    // SO_REUSEADDR to hold it together for a moment (neither listens); the
    // program's setting is put back on both.
    let Some(reuse) = getsockopt_int(old, libc::SOL_SOCKET, libc::SO_REUSEADDR) else {
        return Err(Kept::Address(errno()));
    };
    let rc = if setsockopt_int(old, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
        && setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)
    {
        libc::bind(new, addr, len)
    } else {
        -1
    };
    let e = errno();
    let restored_new = setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    let restored_old = setsockopt_int(old, libc::SOL_SOCKET, libc::SO_REUSEADDR, reuse);
    if rc != 0 {
        Err(Kept::Address(e))
    } else if !(restored_new && restored_old) {
        Err(Kept::Address(errno()))
    } else {
        Ok(())
    }
}

/// File status flags (O_NONBLOCK, O_ASYNC, ...), owner and signal for
/// O_ASYNC/SIGURG: they belong to the open file, which is replaced.
/// FD_CLOEXEC belongs to the descriptor and is given to dup3.
unsafe fn copy_file_flags(old: c_int, new: c_int) -> Result<(), Kept> {
    let fl = real::fcntl(old, libc::F_GETFL, 0);
    if fl < 0 || real::fcntl(new, libc::F_SETFL, fl as usize) < 0 {
        return Err(Kept::FileFlags(errno()));
    }
    // The C library's F_GETOWN answers process groups as negative numbers;
    // -1 is its error.
    let owner = real::fcntl(old, libc::F_GETOWN, 0);
    if owner == -1 {
        return Err(Kept::FileFlags(errno()));
    }
    if owner != 0 && real::fcntl(new, libc::F_SETOWN, owner as isize as usize) < 0 {
        return Err(Kept::FileFlags(errno()));
    }
    let sig = real::fcntl(old, F_GETSIG, 0);
    if sig < 0 || (sig != 0 && real::fcntl(new, F_SETSIG, sig as usize) < 0) {
        return Err(Kept::FileFlags(errno()));
    }
    Ok(())
}
