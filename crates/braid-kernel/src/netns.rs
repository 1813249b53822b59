//! Network namespaces by name (/run/netns/NAME, as `ip netns` makes them).
//! Every kernel interface in this crate works on the namespace of the
//! calling thread, so entering one is all it takes.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{Error, Op, Result};

/// The inode of this thread's network namespace: two processes see the
/// same network when these are equal.
pub fn current_inode() -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| m.ino())
}

pub fn path(name: &str) -> Result<std::path::PathBuf> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(Error::Invalid(format!(
            "'{name}' is not a valid network namespace name"
        )));
    }
    Ok(std::path::Path::new("/run/netns").join(name))
}

/// Move the calling thread into the named network namespace.
pub fn enter(name: &str) -> Result<()> {
    let p = path(name)?;
    let file = File::open(&p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Invalid(format!(
                "network namespace '{name}' does not exist (no {}); list them with 'ip netns list'",
                p.display()
            ))
        } else {
            Error::io(Op::Netns, e)
        }
    })?;
    // SAFETY: a valid fd and a namespace type.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc < 0 {
        return Err(Error::io(Op::Netns, std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Run `f` on a new thread inside the named namespace; the caller's own
/// thread stays where it is. Any error type that kernel errors convert into
/// will do.
pub fn run_in<T, E>(
    name: &str,
    f: impl FnOnce() -> std::result::Result<T, E> + Send + 'static,
) -> std::result::Result<T, E>
where
    T: Send + 'static,
    E: From<Error> + Send + 'static,
{
    let owned = name.to_string();
    std::thread::spawn(move || {
        enter(&owned)?;
        f()
    })
    .join()
    .map_err(|_| {
        E::from(Error::Invalid(format!(
            "a thread inside network namespace {name} panicked"
        )))
    })?
}

/// Create a named network namespace, as `ip netns add NAME` does: a new
/// namespace kept alive by a bind mount at /run/netns/NAME.
pub fn create(name: &str) -> Result<()> {
    let p = path(name)?;
    std::fs::create_dir_all("/run/netns").map_err(|e| Error::io(Op::Netns, e))?;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Error::Invalid(format!("network namespace '{name}' already exists"))
            } else {
                Error::io(Op::Netns, e)
            }
        })?;
    let target = p.clone();
    let made = std::thread::spawn(move || -> Result<()> {
        // SAFETY: plain syscalls on this thread only; the new namespace is
        // pinned by the bind mount before the thread exits.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } < 0 {
            return Err(Error::io(Op::Netns, std::io::Error::last_os_error()));
        }
        let src = std::ffi::CString::new("/proc/thread-self/ns/net").unwrap();
        let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).unwrap();
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dst.as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            )
        };
        if rc < 0 {
            return Err(Error::io(Op::Netns, std::io::Error::last_os_error()));
        }
        Ok(())
    })
    .join()
    .map_err(|_| Error::Invalid("namespace creation thread panicked".into()))?;
    if made.is_err() {
        let _ = std::fs::remove_file(&p);
    }
    made
}

/// Delete a named network namespace (unmount and remove its file). The
/// namespace itself goes when its last user (process or socket) is gone.
pub fn delete(name: &str) -> Result<()> {
    let p = path(name)?;
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: a valid C string path.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(Op::Netns, e)),
    }
}

/// Processes whose network namespace is the named one (as `ip netns
/// pids`): the same device and inode as its file.
pub fn pids(name: &str) -> Vec<u32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) =
        path(name).and_then(|p| std::fs::metadata(&p).map_err(|e| Error::io(Op::Netns, e)))
    else {
        return Vec::new();
    };
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    procs
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.dev() == target.dev() && m.ino() == target.ino())
                .unwrap_or(false)
        })
        .collect()
}

/// End every process in the named namespace: SIGTERM, then SIGKILL for
/// those still there after `grace`.
pub fn kill_all(name: &str, grace: std::time::Duration) {
    let victims = pids(name);
    if victims.is_empty() {
        return;
    }
    for pid in &victims {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    let deadline = std::time::Instant::now() + grace;
    while std::time::Instant::now() < deadline && !pids(name).is_empty() {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    for pid in pids(name) {
        // SAFETY: as above.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}

/// Whether a named namespace exists.
pub fn exists(name: &str) -> bool {
    path(name).map(|p| p.exists()).unwrap_or(false)
}

/// Names of all named namespaces.
pub fn list() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
