//! What the library knows about each descriptor that may still be
//! replaced by an MPTCP socket (the `connect` and `listen` scopes).
//!
//! One slot per descriptor number, in chunks mapped with mmap on first use
//! (no malloc: socket calls may come from signal handlers, and malloc may
//! itself be interposed). A slot holds:
//! - the socket cookie (`SO_COOKIE`, unique for the life of the system) of
//!   the TCP socket `socket()` returned under that number. It ties the
//!   record to one socket: a descriptor closed or reused behind the
//!   library's back (`close_range`, a raw system call, `fclose` of an
//!   `fdopen`ed socket) no longer matches, and is left alone. Zero: nothing
//!   to replace;
//! - the options the program set, in order (level, name, value bytes), to
//!   replay on the MPTCP socket;
//! - flags for what makes replacing wrong: registered with epoll, shared
//!   with another descriptor or process, an option that cannot be replayed;
//! - the fork generation when the socket was made;
//! - the socket's address family (`AF_INET` or `AF_INET6`), as `socket()`
//!   was asked for it: the cookie proves the descriptor still holds that
//!   socket, so nothing about it needs asking again.
//!
//! Changes to a slot are made under its lock, with every signal blocked,
//! so that a signal handler calling into the library never waits for the
//! code it interrupted; only plain stores (forgetting a slot) skip it. The
//! lock is held over a few non-blocking system calls, never over a
//! cancellation point. A lock held by another thread when the process
//! forked can never be released in the child: it is taken over there.

use std::cell::UnsafeCell;
use std::ptr;
use std::sync::atomic::{AtomicI32, AtomicPtr, AtomicU32, AtomicU64, Ordering};

use libc::{c_int, c_void, socklen_t};

/// Bytes of recorded options per socket; more and it stays TCP.
const RECORD_BYTES: usize = 480;
const ENTRY_HEADER: usize = 12;
const CHUNK_SLOTS: usize = 256;
/// Descriptors from 1 048 576 up are never replaced.
const CHUNKS: usize = 4096;

/// Added to an epoll set: the interest is on the file, which a
/// replacement would close.
pub const EPOLL: u32 = 1;
/// Another descriptor refers to the same socket (dup, dup2, F_DUPFD).
pub const SHARED: u32 = 2;
/// An option was set that cannot be recorded or replayed.
pub const UNREPLAYABLE: u32 = 4;

/// Bumped after every fork (parent and child): sockets made before it are
/// shared with another process, and replacing one would split them.
static FORK_GEN: AtomicU32 = AtomicU32::new(0);
/// Bumped in the child after a fork: locks held before it are stale.
static CHILD_EPOCH: AtomicU32 = AtomicU32::new(0);

#[repr(C)]
pub struct Slot {
    lock: AtomicU32,
    flags: AtomicU32,
    fork_gen: AtomicU32,
    len: AtomicU32,
    domain: AtomicI32,
    cookie: AtomicU64,
    record: UnsafeCell<[u8; RECORD_BYTES]>,
}

// SAFETY: `record` is only accessed with `lock` held.
unsafe impl Sync for Slot {}

static TABLE: [AtomicPtr<Slot>; CHUNKS] = [const { AtomicPtr::new(ptr::null_mut()) }; CHUNKS];

fn index(fd: c_int) -> Option<(usize, usize)> {
    let fd = usize::try_from(fd).ok()?;
    (fd < CHUNKS * CHUNK_SLOTS).then_some((fd / CHUNK_SLOTS, fd % CHUNK_SLOTS))
}

/// The slot of `fd`, if its chunk exists (it does for every descriptor a
/// tracked socket ever had).
pub fn slot(fd: c_int) -> Option<&'static Slot> {
    let (c, i) = index(fd)?;
    let chunk = TABLE[c].load(Ordering::Acquire);
    // SAFETY: chunks are never unmapped; `i` is in range.
    (!chunk.is_null()).then(|| unsafe { &*chunk.add(i) })
}

/// The slot of `fd` if it holds a socket that may still be replaced.
pub fn tracked(fd: c_int) -> Option<&'static Slot> {
    slot(fd)
        .filter(|s| s.cookie.load(Ordering::Acquire) != 0 && s.flags.load(Ordering::Relaxed) == 0)
}

fn slot_or_map(fd: c_int) -> Option<&'static Slot> {
    if let Some(s) = slot(fd) {
        return Some(s);
    }
    let (c, _) = index(fd)?;
    let size = CHUNK_SLOTS * std::mem::size_of::<Slot>();
    // SAFETY: a fresh anonymous mapping; all-zero bytes are a valid Slot.
    let p = unsafe {
        libc::mmap(
            ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    if let Err(_other) = TABLE[c].compare_exchange(
        ptr::null_mut(),
        p as *mut Slot,
        Ordering::AcqRel,
        Ordering::Acquire,
    ) {
        // Another thread mapped it first.
        // SAFETY: our own mapping, never published.
        unsafe { libc::munmap(p, size) };
    }
    slot(fd)
}

/// The fork generation, read before creating a socket: a fork between
/// this read and the socket's registration marks it shared.
pub fn fork_generation() -> u32 {
    FORK_GEN.load(Ordering::Acquire)
}

pub extern "C" fn after_fork_parent() {
    FORK_GEN.fetch_add(1, Ordering::AcqRel);
}

pub extern "C" fn after_fork_child() {
    FORK_GEN.fetch_add(1, Ordering::AcqRel);
    CHILD_EPOCH.fetch_add(1, Ordering::AcqRel);
}

/// The socket's cookie, 0 when the kernel does not say.
pub fn socket_cookie(fd: c_int) -> u64 {
    let mut v: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as socklen_t;
    // SAFETY: valid pointers of the right size.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            &mut v as *mut u64 as *mut c_void,
            &mut len,
        )
    };
    if rc == 0 && len as usize == std::mem::size_of::<u64>() {
        v
    } else {
        0
    }
}

/// A TCP socket of family `domain` that `socket()` just returned under
/// `fd`: start its record.
pub fn adopt(fd: c_int, fork_gen: u32, domain: c_int) {
    let cookie = socket_cookie(fd);
    let Some(s) = slot_or_map(fd) else { return };
    let g = s.lock();
    s.len.store(0, Ordering::Relaxed);
    s.flags.store(0, Ordering::Relaxed);
    s.fork_gen.store(fork_gen, Ordering::Relaxed);
    s.domain.store(domain, Ordering::Relaxed);
    s.cookie.store(cookie, Ordering::Release);
    drop(g);
}

/// `fd` was closed or something else now has its number.
pub fn forget(fd: c_int) {
    if let Some(s) = slot(fd) {
        s.cookie.store(0, Ordering::Release);
    }
}

/// Options whose value is not self-contained: a pointer to the program's
/// memory (classic BPF programs) or a descriptor number (eBPF programs),
/// which may be gone by the time it would be replayed.
fn unreplayable(level: c_int, name: c_int) -> bool {
    level == libc::SOL_SOCKET
        && matches!(
            name,
            libc::SO_ATTACH_FILTER
                | libc::SO_ATTACH_BPF
                | libc::SO_ATTACH_REUSEPORT_CBPF
                | libc::SO_ATTACH_REUSEPORT_EBPF
        )
}

pub struct Locked<'a> {
    slot: &'a Slot,
    mask: libc::sigset_t,
}

impl Slot {
    /// Lock the slot with every signal blocked (until the guard drops).
    pub fn lock(&self) -> Locked<'_> {
        // SAFETY: plain sigset manipulation on our own stack values.
        let mask = unsafe {
            let mut all: libc::sigset_t = std::mem::zeroed();
            let mut old: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old);
            old
        };
        let me = CHILD_EPOCH.load(Ordering::Acquire).wrapping_add(1).max(1);
        let mut spins = 0u32;
        loop {
            let cur = self.lock.load(Ordering::Relaxed);
            // Free (0), or taken before a fork by a thread this process
            // does not have (an older epoch): ours to take.
            if cur != me
                && self
                    .lock
                    .compare_exchange_weak(cur, me, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            {
                break;
            }
            spins += 1;
            if spins < 64 {
                std::hint::spin_loop();
            } else {
                // SAFETY: no arguments.
                unsafe { libc::sched_yield() };
            }
        }
        Locked { slot: self, mask }
    }

    /// Whether `socket()` registered a socket under this number (which
    /// may have been replaced or closed since).
    pub fn has_socket(&self) -> bool {
        self.cookie.load(Ordering::Acquire) != 0
    }

    /// Mark the socket as not to be replaced (no lock needed: flags only
    /// ever gain bits until the slot is adopted again).
    pub fn mark(&self, flag: u32) {
        self.flags.fetch_or(flag, Ordering::AcqRel);
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        self.slot.lock.store(0, Ordering::Release);
        // SAFETY: restoring the mask saved by `lock`.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &self.mask, ptr::null_mut()) };
    }
}

/// Why a recorded socket cannot be replaced, from its slot alone.
#[derive(Clone, Copy, Debug)]
pub enum Blocked {
    Untracked,
    Epoll,
    Shared,
    Forked,
    Unreplayable,
}

impl Locked<'_> {
    pub fn cookie(&self) -> u64 {
        self.slot.cookie.load(Ordering::Acquire)
    }

    /// The socket's address family, as recorded by `adopt`.
    pub fn domain(&self) -> c_int {
        self.slot.domain.load(Ordering::Relaxed)
    }

    /// Whether the slot allows replacing its socket.
    pub fn check(&self) -> Result<u64, Blocked> {
        let cookie = self.cookie();
        let flags = self.slot.flags.load(Ordering::Acquire);
        if cookie == 0 {
            Err(Blocked::Untracked)
        } else if flags & EPOLL != 0 {
            Err(Blocked::Epoll)
        } else if flags & SHARED != 0 {
            Err(Blocked::Shared)
        } else if flags & UNREPLAYABLE != 0 {
            Err(Blocked::Unreplayable)
        } else if self.slot.fork_gen.load(Ordering::Relaxed) != FORK_GEN.load(Ordering::Acquire) {
            Err(Blocked::Forked)
        } else {
            Ok(cookie)
        }
    }

    /// Append an option the program set successfully.
    ///
    /// # Safety
    /// `value` must be readable for `len` bytes (the kernel just read it).
    pub unsafe fn record(&self, level: c_int, name: c_int, value: *const c_void, len: socklen_t) {
        let used = (self.slot.len.load(Ordering::Relaxed) as usize).min(RECORD_BYTES);
        let n = len as usize;
        if unreplayable(level, name)
            || (n > 0 && value.is_null())
            || ENTRY_HEADER + n > RECORD_BYTES - used
        {
            self.slot.mark(UNREPLAYABLE);
            return;
        }
        let rec = &mut *self.slot.record.get();
        rec[used..used + 4].copy_from_slice(&level.to_ne_bytes());
        rec[used + 4..used + 8].copy_from_slice(&name.to_ne_bytes());
        rec[used + 8..used + 12].copy_from_slice(&len.to_ne_bytes());
        if n > 0 {
            let src = std::slice::from_raw_parts(value as *const u8, n);
            rec[used + ENTRY_HEADER..used + ENTRY_HEADER + n].copy_from_slice(src);
        }
        self.slot
            .len
            .store((used + ENTRY_HEADER + n) as u32, Ordering::Release);
    }

    /// Call `f(level, name, value)` for each recorded option in the order
    /// the program set them; stops at the first `Err`.
    pub fn replay<E>(
        &self,
        mut f: impl FnMut(c_int, c_int, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let used = (self.slot.len.load(Ordering::Acquire) as usize).min(RECORD_BYTES);
        // SAFETY: the lock is held.
        let rec = unsafe { &*self.slot.record.get() };
        let word = |at: usize| [rec[at], rec[at + 1], rec[at + 2], rec[at + 3]];
        let mut at = 0;
        while at + ENTRY_HEADER <= used {
            let level = c_int::from_ne_bytes(word(at));
            let name = c_int::from_ne_bytes(word(at + 4));
            let n = u32::from_ne_bytes(word(at + 8)) as usize;
            let end = (at + ENTRY_HEADER + n).min(used);
            f(level, name, &rec[at + ENTRY_HEADER..end])?;
            at = end;
        }
        Ok(())
    }

    /// The socket under this number was replaced: nothing more to do.
    pub fn forget(&self) {
        self.slot.cookie.store(0, Ordering::Release);
    }
}
