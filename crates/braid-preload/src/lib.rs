//! `libbraid_preload.so`: loaded with LD_PRELOAD, it turns the TCP sockets a
//! program opens into MPTCP sockets, and falls back to the program's own
//! request whenever the kernel refuses MPTCP, so a program never fails
//! because of it.
//!
//! Environment:
//! - `BRAID_MPTCP_SCOPE`: `all` (default) rewrites at `socket()`;
//!   `connect` only sockets that connect, `listen` only sockets that
//!   listen: those are recreated as MPTCP right before `connect()` or
//!   `listen()`, keeping the descriptor number, flags, common options and
//!   the bound address.
//! - `BRAID_MPTCP_DEBUG=1`: one line on stderr per rewritten socket.
//!
//! Only libc is used: this runs inside every process it is loaded into.

use std::sync::atomic::{AtomicUsize, Ordering};

use libc::{c_char, c_int, c_void, sockaddr, socklen_t};

const IPPROTO_MPTCP: c_int = 262;
const SOCK_TYPE_MASK: c_int = 0xf;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Connect,
    Listen,
}

static REAL_SOCKET: AtomicUsize = AtomicUsize::new(0);
static REAL_CONNECT: AtomicUsize = AtomicUsize::new(0);
static REAL_LISTEN: AtomicUsize = AtomicUsize::new(0);

type SocketFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;

unsafe fn next_symbol(cache: &AtomicUsize, name: &[u8]) -> usize {
    let mut f = cache.load(Ordering::Relaxed);
    if f == 0 {
        f = libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char) as usize;
        cache.store(f, Ordering::Relaxed);
    }
    f
}

unsafe fn real_socket() -> Option<SocketFn> {
    let f = next_symbol(&REAL_SOCKET, b"socket\0");
    (f != 0).then(|| std::mem::transmute::<usize, SocketFn>(f))
}
unsafe fn real_connect() -> Option<ConnectFn> {
    let f = next_symbol(&REAL_CONNECT, b"connect\0");
    (f != 0).then(|| std::mem::transmute::<usize, ConnectFn>(f))
}
unsafe fn real_listen() -> Option<ListenFn> {
    let f = next_symbol(&REAL_LISTEN, b"listen\0");
    (f != 0).then(|| std::mem::transmute::<usize, ListenFn>(f))
}

fn env_is(name: &[u8], value: &[u8]) -> bool {
    // SAFETY: getenv with a NUL-terminated name; the result is only read.
    unsafe {
        let p = libc::getenv(name.as_ptr() as *const c_char);
        !p.is_null() && std::ffi::CStr::from_ptr(p).to_bytes() == value
    }
}

fn scope() -> Scope {
    if env_is(b"BRAID_MPTCP_SCOPE\0", b"connect") {
        Scope::Connect
    } else if env_is(b"BRAID_MPTCP_SCOPE\0", b"listen") {
        Scope::Listen
    } else {
        Scope::All
    }
}

fn debug(msg: &str, fd: c_int) {
    if !env_is(b"BRAID_MPTCP_DEBUG\0", b"1") {
        return;
    }
    // Formatting without allocation-heavy machinery: a fixed buffer.
    let mut buf = [0u8; 160];
    let mut n = 0;
    for part in [
        b"braid-preload: ".as_slice(),
        msg.as_bytes(),
        b" fd ".as_slice(),
    ] {
        let take = part.len().min(buf.len() - n);
        buf[n..n + take].copy_from_slice(&part[..take]);
        n += take;
    }
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = fd.unsigned_abs();
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 && n < buf.len() - 1 {
        d -= 1;
        buf[n] = digits[d];
        n += 1;
    }
    buf[n] = b'\n';
    // SAFETY: writing our own buffer to stderr.
    unsafe { libc::write(2, buf.as_ptr() as *const c_void, n + 1) };
}

fn is_tcp_request(domain: c_int, ty: c_int, protocol: c_int) -> bool {
    (domain == libc::AF_INET || domain == libc::AF_INET6)
        && ty & SOCK_TYPE_MASK == libc::SOCK_STREAM
        && (protocol == 0 || protocol == libc::IPPROTO_TCP)
}

/// Errnos with which the kernel says "no MPTCP" (not built, disabled,
/// refused by policy): the program gets what it asked for instead.
fn mptcp_refused(errno: c_int) -> bool {
    matches!(
        errno,
        libc::EPROTONOSUPPORT | libc::EINVAL | libc::ENOPROTOOPT | libc::EACCES | libc::EPERM
    )
}

unsafe fn errno() -> c_int {
    *libc::__errno_location()
}
unsafe fn set_errno(e: c_int) {
    *libc::__errno_location() = e;
}

/// # Safety
/// Called by the C library's users exactly like `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let Some(real) = real_socket() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if scope() == Scope::All && is_tcp_request(domain, ty, protocol) {
        let fd = real(domain, ty, IPPROTO_MPTCP);
        if fd >= 0 {
            debug("socket() is MPTCP", fd);
            return fd;
        }
        if !mptcp_refused(errno()) {
            return fd;
        }
        debug("MPTCP refused by the kernel, using TCP for socket()", -1);
    }
    real(domain, ty, protocol)
}

fn getsockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
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

fn setsockopt_int(fd: c_int, level: c_int, name: c_int, v: c_int) {
    // SAFETY: valid pointer of the right size.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &v as *const c_int as *const c_void,
            std::mem::size_of::<c_int>() as socklen_t,
        )
    };
}

/// Replace TCP socket `fd` with an MPTCP socket under the same number,
/// keeping status flags, close-on-exec, common options and the bound
/// address. Leaves `fd` untouched when anything does not work out.
unsafe fn recreate_as_mptcp(fd: c_int, why: &str) {
    let Some(real) = real_socket() else { return };
    if getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) != Some(libc::IPPROTO_TCP)
        || getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM)
    {
        return;
    }
    let Some(domain) = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN) else {
        return;
    };
    let saved = errno();
    let new = real(domain, libc::SOCK_STREAM, IPPROTO_MPTCP);
    if new < 0 {
        set_errno(saved);
        return;
    }
    const INT_OPTS: [(c_int, c_int); 7] = [
        (libc::SOL_SOCKET, libc::SO_REUSEADDR),
        (libc::SOL_SOCKET, libc::SO_REUSEPORT),
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE),
        (libc::SOL_SOCKET, libc::SO_RCVBUF),
        (libc::SOL_SOCKET, libc::SO_SNDBUF),
        (libc::IPPROTO_TCP, libc::TCP_NODELAY),
        (libc::IPPROTO_IPV6, libc::IPV6_V6ONLY),
    ];
    for (level, name) in INT_OPTS {
        if level == libc::IPPROTO_IPV6 && domain != libc::AF_INET6 {
            continue;
        }
        if let Some(v) = getsockopt_int(fd, level, name) {
            // SO_RCVBUF/SO_SNDBUF read back doubled; only copy explicit settings.
            if (name == libc::SO_RCVBUF || name == libc::SO_SNDBUF) && v > 0 {
                continue;
            }
            setsockopt_int(new, level, name, v);
        }
    }
    // The bound address, if the program bound one.
    let mut ss: libc::sockaddr_storage = std::mem::zeroed();
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    if libc::getsockname(fd, &mut ss as *mut _ as *mut sockaddr, &mut len) == 0 {
        let port = match domain {
            libc::AF_INET => (*(&ss as *const _ as *const libc::sockaddr_in)).sin_port,
            _ => (*(&ss as *const _ as *const libc::sockaddr_in6)).sin6_port,
        };
        if port != 0 {
            // Both sockets need SO_REUSEADDR to share the port for a moment
            // (neither is listening); the program's own setting is restored.
            let old_reuse = getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0);
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1);
            let rc = libc::bind(new, &ss as *const _ as *const sockaddr, len);
            setsockopt_int(new, libc::SOL_SOCKET, libc::SO_REUSEADDR, old_reuse);
            setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, old_reuse);
            if rc != 0 {
                libc::close(new);
                set_errno(saved);
                return;
            }
        }
    }
    let fl = libc::fcntl(fd, libc::F_GETFL);
    let fdfl = libc::fcntl(fd, libc::F_GETFD);
    // dup3 would reject equal numbers; dup2 atomically closes the old socket.
    if libc::dup2(new, fd) < 0 {
        libc::close(new);
        set_errno(saved);
        return;
    }
    libc::close(new);
    if fl >= 0 {
        libc::fcntl(fd, libc::F_SETFL, fl);
    }
    if fdfl >= 0 {
        libc::fcntl(fd, libc::F_SETFD, fdfl);
    }
    debug(why, fd);
    set_errno(saved);
}

/// # Safety
/// Called by the C library's users exactly like `connect(2)`.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    let Some(real) = real_connect() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if scope() == Scope::Connect {
        recreate_as_mptcp(fd, "connect() on an MPTCP socket");
    }
    real(fd, addr, len)
}

/// # Safety
/// Called by the C library's users exactly like `listen(2)`.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(real) = real_listen() else {
        set_errno(libc::ENOSYS);
        return -1;
    };
    if scope() == Scope::Listen {
        recreate_as_mptcp(fd, "listen() on an MPTCP socket");
    }
    real(fd, backlog)
}
