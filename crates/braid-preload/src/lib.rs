//! `libbraid_preload.so`: loaded with LD_PRELOAD, it turns the TCP sockets a
//! program opens into MPTCP sockets, and falls back to the program's own
//! request whenever the kernel refuses MPTCP, so a program never fails
//! because of it.
//!
//! Environment, read once when the library is loaded (a constructor), never
//! on a socket call (getenv races with a program's setenv):
//! - `BRAID_MPTCP_SCOPE`: `all` (default) asks for MPTCP at `socket()`;
//!   `connect` only sockets that connect, `listen` only sockets that
//!   listen: those are recreated as MPTCP right before `connect()` or
//!   `listen()`, under the same descriptor number, with every option the
//!   program set, its file flags and its bound address (see `replace`).
//! - `BRAID_MPTCP_DEBUG=1`: one line on stderr per socket made MPTCP, or
//!   kept TCP and why.
//!
//! The real C library functions are resolved in the same constructor
//! (`real`). What the program does to a socket that may still be replaced
//! is recorded per descriptor (`fdtable`) by interposing `setsockopt`,
//! `close`, `dup`/`dup2`/`dup3`/`fcntl(F_DUPFD)` and `epoll_ctl`.
//!
//! Only libc is used: this runs inside every process it is loaded into.
//! Nothing here allocates on a socket call or waits on a lock a signal
//! handler could hold.

mod fdtable;
mod real;
mod replace;

use std::fmt::{self, Write as _};
use std::sync::OnceLock;

use libc::{c_char, c_int, c_void, epoll_event, sockaddr, socklen_t};

use replace::{errno, set_errno, IPPROTO_MPTCP};

const SOCK_TYPE_MASK: c_int = 0xf;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    All,
    Connect,
    Listen,
}

struct Config {
    scope: Scope,
    debug: bool,
}

static CONFIG: OnceLock<Config> = OnceLock::new();

/// The constructor: the dynamic loader runs it before the program's
/// `main` (and before any of its threads).
#[used]
#[link_section = ".init_array"]
static INIT: extern "C" fn() = init;

extern "C" fn init() {
    real::resolve();
    let scope = if env_is(b"BRAID_MPTCP_SCOPE\0", b"connect") {
        Scope::Connect
    } else if env_is(b"BRAID_MPTCP_SCOPE\0", b"listen") {
        Scope::Listen
    } else {
        Scope::All
    };
    if scope != Scope::All {
        // SAFETY: registering two functions that only bump counters.
        unsafe {
            libc::pthread_atfork(
                None,
                Some(fdtable::after_fork_parent as unsafe extern "C" fn()),
                Some(fdtable::after_fork_child as unsafe extern "C" fn()),
            )
        };
    }
    let debug = env_is(b"BRAID_MPTCP_DEBUG\0", b"1");
    let _ = CONFIG.set(Config { scope, debug });
}

fn env_is(name: &[u8], value: &[u8]) -> bool {
    // SAFETY: getenv with a NUL-terminated name, in the constructor; the
    // result is only read, at once.
    unsafe {
        let p = libc::getenv(name.as_ptr() as *const c_char);
        !p.is_null() && std::ffi::CStr::from_ptr(p).to_bytes() == value
    }
}

/// None until the constructor has run: then the library stays out of the
/// way and every call goes to the C library (or the kernel).
fn config() -> Option<&'static Config> {
    CONFIG.get()
}

/// Whether sockets may be replaced later, so what is done to them matters.
fn tracking() -> bool {
    config().is_some_and(|c| c.scope != Scope::All)
}

/// A line on stderr, formatted on the stack.
fn debug_line(args: fmt::Arguments<'_>) {
    struct Line {
        buf: [u8; 256],
        n: usize,
    }
    impl fmt::Write for Line {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            let room = self.buf.len() - 1 - self.n;
            let take = s.len().min(room);
            self.buf[self.n..self.n + take].copy_from_slice(&s.as_bytes()[..take]);
            self.n += take;
            Ok(())
        }
    }
    let mut line = Line {
        buf: [0; 256],
        n: 0,
    };
    let _ = line.write_str("braid-preload: ");
    let _ = line.write_fmt(args);
    line.buf[line.n] = b'\n';
    let saved = errno();
    // SAFETY: writing our own buffer to stderr.
    unsafe { libc::write(2, line.buf.as_ptr() as *const c_void, line.n + 1) };
    set_errno(saved);
}

macro_rules! debug {
    ($($t:tt)*) => {
        if config().is_some_and(|c| c.debug) {
            debug_line(format_args!($($t)*));
        }
    };
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

/// # Safety
/// Called by the C library's users exactly like `socket(2)`.
#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    let Some(cfg) = config() else {
        return real::socket(domain, ty, protocol);
    };
    if !is_tcp_request(domain, ty, protocol) {
        return real::socket(domain, ty, protocol);
    }
    if cfg.scope == Scope::All {
        let saved = errno();
        let fd = real::socket(domain, ty, IPPROTO_MPTCP);
        if fd >= 0 {
            debug!("fd {fd}: socket() is MPTCP");
            return fd;
        }
        let e = errno();
        if !mptcp_refused(e) {
            return fd;
        }
        debug!("the kernel refused MPTCP (errno {e}), socket() is TCP");
        set_errno(saved);
        return real::socket(domain, ty, protocol);
    }
    // Read before the socket exists: a fork from now on shares it.
    let fork_gen = fdtable::fork_generation();
    let fd = real::socket(domain, ty, protocol);
    if fd >= 0 {
        let saved = errno();
        // Already MPTCP (a cgroup BPF program made it so): nothing to replace.
        if replace::getsockopt_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL) == Some(IPPROTO_MPTCP) {
            fdtable::forget(fd);
        } else {
            fdtable::adopt(fd, fork_gen, domain);
        }
        set_errno(saved);
    }
    fd
}

/// Make `fd` MPTCP before `what` if it is safe, else leave it alone.
unsafe fn before(fd: c_int, what: &str) {
    // Descriptors socket() did not register cost no lock.
    let Some(slot) = fdtable::slot(fd).filter(|s| s.has_socket()) else {
        return;
    };
    let saved = errno();
    match replace::to_mptcp(slot, fd) {
        Ok(()) => debug!("fd {fd}: {what} on an MPTCP socket"),
        Err(replace::Kept::Slot(fdtable::Blocked::Untracked)) => {}
        Err(why) => debug!("fd {fd}: {what} keeps TCP: {why}"),
    }
    set_errno(saved);
}

/// # Safety
/// Called by the C library's users exactly like `connect(2)`.
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    if config().is_some_and(|c| c.scope == Scope::Connect)
        && !addr.is_null()
        && len as usize >= std::mem::size_of::<libc::sa_family_t>()
        && matches!((*addr).sa_family as c_int, libc::AF_INET | libc::AF_INET6)
    {
        before(fd, "connect()");
    }
    // No lock or other destructor is pending here: connect() is a
    // cancellation point, and a forced unwind must pass through cleanly.
    real::connect(fd, addr, len)
}

/// # Safety
/// Called by the C library's users exactly like `listen(2)`.
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    if config().is_some_and(|c| c.scope == Scope::Listen) {
        before(fd, "listen()");
    }
    real::listen(fd, backlog)
}

/// Options set on a socket that may still be replaced are recorded, to be
/// replayed on its MPTCP replacement.
///
/// # Safety
/// Called by the C library's users exactly like `setsockopt(2)`.
#[no_mangle]
pub unsafe extern "C" fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    if tracking() {
        if let Some(slot) = fdtable::tracked(fd) {
            // Under the lock, so that a replacement in another thread
            // sees this option either recorded or not yet set.
            let g = slot.lock();
            let rc = real::setsockopt(fd, level, name, value, len);
            let e = errno();
            if rc == 0 && g.cookie() != 0 {
                g.record(level, name, value, len);
            }
            drop(g);
            set_errno(e);
            return rc;
        }
    }
    real::setsockopt(fd, level, name, value, len)
}

/// # Safety
/// Called by the C library's users exactly like `close(2)`.
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    if tracking() {
        fdtable::forget(fd);
    }
    real::close(fd)
}

/// Run `dup` (which makes another descriptor for `old`'s file); a socket
/// with two descriptors is never replaced: the other one would keep the
/// TCP socket. The new descriptor's number starts afresh.
unsafe fn duplicating(old: c_int, dup: impl FnOnce() -> c_int) -> c_int {
    if !tracking() {
        return dup();
    }
    let new = match fdtable::tracked(old) {
        Some(slot) => {
            let g = slot.lock();
            let new = dup();
            let e = errno();
            if new >= 0 {
                slot.mark(fdtable::SHARED);
            }
            drop(g);
            set_errno(e);
            new
        }
        None => dup(),
    };
    if new >= 0 && new != old {
        fdtable::forget(new);
    }
    new
}

/// # Safety
/// Called by the C library's users exactly like `dup(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    duplicating(old, || real::dup(old))
}

/// # Safety
/// Called by the C library's users exactly like `dup2(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old == new {
        return real::dup2(old, new);
    }
    duplicating(old, || real::dup2(old, new))
}

/// # Safety
/// Called by the C library's users exactly like `dup3(2)`.
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    duplicating(old, || real::dup3(old, new, flags))
}

/// `fcntl` is variadic in C; on these architectures an optional integer or
/// pointer argument travels in the same register as a fixed one, so a
/// three-argument function receives it unchanged (and passes it on).
///
/// # Safety
/// Called by the C library's users exactly like `fcntl(2)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return duplicating(fd, || real::fcntl(fd, cmd, arg));
    }
    real::fcntl(fd, cmd, arg)
}

/// The name `fcntl` has in programs built with 64-bit file offsets.
///
/// # Safety
/// Called by the C library's users exactly like `fcntl(2)`.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        return duplicating(fd, || real::fcntl64(fd, cmd, arg));
    }
    real::fcntl64(fd, cmd, arg)
}

/// A socket added to an epoll set before `connect()`/`listen()` stays TCP.
///
/// Why not replace it anyway: an epoll interest is held on the open file,
/// not on the descriptor number; replacing the socket closes that file,
/// which silently drops the interest, and the program waits forever for
/// events of a socket the kernel no longer watches. Re-adding the new
/// socket would mean re-issuing every registration (all epoll sets, their
/// events and user data, EPOLLEXCLUSIVE, ...) exactly, which the library
/// cannot know it has seen in full. Why not make every socket MPTCP at
/// `socket()`, where nothing is registered yet: that is the `all` scope;
/// the `connect`/`listen` scopes exist because a socket's use is only
/// known when it connects or listens. So the library remembers which
/// sockets were added to an epoll set and leaves those alone.
///
/// # Safety
/// Called by the C library's users exactly like `epoll_ctl(2)`.
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    if op == libc::EPOLL_CTL_ADD && tracking() {
        if let Some(slot) = fdtable::tracked(fd) {
            // Under the lock: a replacement in another thread happens
            // entirely before this registration or not at all.
            let g = slot.lock();
            let rc = real::epoll_ctl(epfd, op, fd, event);
            let e = errno();
            if rc == 0 {
                slot.mark(fdtable::EPOLL);
            }
            drop(g);
            set_errno(e);
            return rc;
        }
    }
    real::epoll_ctl(epfd, op, fd, event)
}
