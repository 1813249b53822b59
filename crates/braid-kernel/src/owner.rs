//! Who owns a socket, in words a rule can match: the executable of the
//! process holding a socket inode (cgroup paths: [`crate::cgroup`]).
//!
//! Costs (measured on this kernel, see docs/benchmarks.md): sock_diag gives
//! the uid and the cgroup id of an MPTCP socket in one request; the cgroup
//! id is the inode of the cgroup's directory, so its path needs a walk of
//! /sys/fs/cgroup (cached; walked again only when an id is unknown). The
//! executable needs the process, which only a scan of every /proc/*/fd
//! finds: done only when a rule asks for `exe`.

/// The file name of the executable (`/proc/PID/exe`) of a process holding
/// the socket with this inode, found by scanning every process's
/// descriptors. Not `comm`: that is cut to 15 bytes and any process can
/// set its own.
pub fn exe_of_socket(inode: u32) -> Option<String> {
    if inode == 0 {
        return None; // not yet owned by a descriptor (a server's before accept)
    }
    let want = format!("socket:[{inode}]");
    for p in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = p.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == want.as_str()));
        if holds {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).ok()?;
            return exe.file_name().map(|n| n.to_string_lossy().into_owned());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_owner_of_a_socket_of_this_process_is_found() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor and a stat buffer of the right size.
        assert_eq!(unsafe { libc::fstat(l.as_raw_fd(), &mut st) }, 0);
        let me = std::env::current_exe().unwrap();
        let me = me.file_name().unwrap().to_str().unwrap();
        assert_eq!(exe_of_socket(st.st_ino as u32).as_deref(), Some(me));
        assert_eq!(exe_of_socket(0), None);
        assert_eq!(exe_of_socket(u32::MAX), None);
    }
}
