//! Network namespaces by name (/run/netns/NAME, as `ip netns` makes them).
//! Every kernel interface in this crate works on the namespace of the
//! calling thread, so entering one is all it takes.

use std::fs::File;
use std::os::fd::AsRawFd;

use crate::error::{Error, Op, Result};

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
/// thread stays where it is.
pub fn run_in<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    let name = name.to_string();
    std::thread::spawn(move || {
        enter(&name)?;
        f()
    })
    .join()
    .map_err(|_| Error::Invalid("a thread inside the network namespace panicked".into()))?
}
