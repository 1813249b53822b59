//! The C library's own functions behind the ones this library interposes.
//!
//! Every pointer is resolved once, with `dlsym(RTLD_NEXT, ..)`, in the
//! library's constructor (`resolve`), before the program's `main` and its
//! threads: dlsym is neither async-signal-safe nor free of races with
//! threads, so it is never called on a socket call. Until the constructor
//! has run (another library's constructor may open sockets first), or if
//! a symbol is missing, the system call itself is made: the program gets
//! the kernel's behaviour, and this library does nothing else for it.
//!
//! Code in this crate must call these, never `libc::close` and the like:
//! those names resolve to this library's own interposers.

use std::sync::OnceLock;

use libc::{c_char, c_int, c_long, c_void, epoll_event, sockaddr, socklen_t};

type SocketFn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type SetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *const c_void, socklen_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type DupFn = unsafe extern "C" fn(c_int) -> c_int;
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;
type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;
type EpollCtlFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut epoll_event) -> c_int;

struct Next {
    socket: Option<SocketFn>,
    connect: Option<ConnectFn>,
    listen: Option<ListenFn>,
    setsockopt: Option<SetsockoptFn>,
    close: Option<CloseFn>,
    dup: Option<DupFn>,
    dup2: Option<Dup2Fn>,
    dup3: Option<Dup3Fn>,
    fcntl: Option<FcntlFn>,
    fcntl64: Option<FcntlFn>,
    epoll_ctl: Option<EpollCtlFn>,
}

static NEXT: OnceLock<Next> = OnceLock::new();

/// # Safety
/// `T` must be the function pointer type of the C function `name`
/// (NUL-terminated).
unsafe fn sym<T: Copy>(name: &[u8]) -> Option<T> {
    debug_assert_eq!(name.last(), Some(&0));
    debug_assert_eq!(std::mem::size_of::<T>(), std::mem::size_of::<*mut c_void>());
    let p = libc::dlsym(libc::RTLD_NEXT, name.as_ptr() as *const c_char);
    (!p.is_null()).then(|| std::mem::transmute_copy::<*mut c_void, T>(&p))
}

/// Resolve every function. Called once, from the constructor.
pub fn resolve() {
    // SAFETY: each type matches the C prototype of the named function.
    let next = unsafe {
        Next {
            socket: sym(b"socket\0"),
            connect: sym(b"connect\0"),
            listen: sym(b"listen\0"),
            setsockopt: sym(b"setsockopt\0"),
            close: sym(b"close\0"),
            dup: sym(b"dup\0"),
            dup2: sym(b"dup2\0"),
            dup3: sym(b"dup3\0"),
            fcntl: sym(b"fcntl\0"),
            fcntl64: sym(b"fcntl64\0"),
            epoll_ctl: sym(b"epoll_ctl\0"),
        }
    };
    let _ = NEXT.set(next);
}

fn next() -> Option<&'static Next> {
    NEXT.get()
}

pub unsafe fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int {
    match next().and_then(|n| n.socket) {
        Some(f) => f(domain, ty, protocol),
        None => libc::syscall(
            libc::SYS_socket,
            domain as c_long,
            ty as c_long,
            protocol as c_long,
        ) as c_int,
    }
}

pub unsafe fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    match next().and_then(|n| n.connect) {
        Some(f) => f(fd, addr, len),
        None => libc::syscall(libc::SYS_connect, fd as c_long, addr, len as c_long) as c_int,
    }
}

pub unsafe fn listen(fd: c_int, backlog: c_int) -> c_int {
    match next().and_then(|n| n.listen) {
        Some(f) => f(fd, backlog),
        None => libc::syscall(libc::SYS_listen, fd as c_long, backlog as c_long) as c_int,
    }
}

pub unsafe fn setsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *const c_void,
    len: socklen_t,
) -> c_int {
    match next().and_then(|n| n.setsockopt) {
        Some(f) => f(fd, level, name, value, len),
        None => libc::syscall(
            libc::SYS_setsockopt,
            fd as c_long,
            level as c_long,
            name as c_long,
            value,
            len as c_long,
        ) as c_int,
    }
}

pub unsafe fn close(fd: c_int) -> c_int {
    match next().and_then(|n| n.close) {
        Some(f) => f(fd),
        None => sys_close(fd),
    }
}

/// close(2) without the C library: not a cancellation point, for the
/// library's own descriptors while it holds a lock.
pub unsafe fn sys_close(fd: c_int) -> c_int {
    libc::syscall(libc::SYS_close, fd as c_long) as c_int
}

pub unsafe fn dup(fd: c_int) -> c_int {
    match next().and_then(|n| n.dup) {
        Some(f) => f(fd),
        None => libc::syscall(libc::SYS_dup, fd as c_long) as c_int,
    }
}

pub unsafe fn dup2(old: c_int, new: c_int) -> c_int {
    match next().and_then(|n| n.dup2) {
        Some(f) => f(old, new),
        // Not every architecture has a dup2 system call; dup3 refuses
        // equal descriptors, for which dup2 only checks `old` is open.
        None if old == new => {
            if libc::syscall(libc::SYS_fcntl, old as c_long, libc::F_GETFD as c_long) < 0 {
                -1
            } else {
                new
            }
        }
        None => dup3(old, new, 0),
    }
}

pub unsafe fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    match next().and_then(|n| n.dup3) {
        Some(f) => f(old, new, flags),
        None => libc::syscall(
            libc::SYS_dup3,
            old as c_long,
            new as c_long,
            flags as c_long,
        ) as c_int,
    }
}

/// fcntl(2) with its optional third argument as a machine word (an int or
/// a pointer, which is what the variadic C function reads).
pub unsafe fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match next().and_then(|n| n.fcntl) {
        Some(f) => f(fd, cmd, arg),
        None => libc::syscall(libc::SYS_fcntl, fd as c_long, cmd as c_long, arg) as c_int,
    }
}

pub unsafe fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    match next().and_then(|n| n.fcntl64) {
        Some(f) => f(fd, cmd, arg),
        None => fcntl(fd, cmd, arg),
    }
}

pub unsafe fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, event: *mut epoll_event) -> c_int {
    match next().and_then(|n| n.epoll_ctl) {
        Some(f) => f(epfd, op, fd, event),
        None => libc::syscall(
            libc::SYS_epoll_ctl,
            epfd as c_long,
            op as c_long,
            fd as c_long,
            event,
        ) as c_int,
    }
}
