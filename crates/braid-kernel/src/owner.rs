//! Who owns a socket, in words a rule can match: the cgroup path of a
//! cgroup id, the executable of the process holding a socket inode.
//!
//! Costs (measured on this kernel, see docs/benchmarks.md): sock_diag gives
//! the uid and the cgroup id of an MPTCP socket in one request; the cgroup
//! id is the inode of the cgroup's directory, so its path needs a walk of
//! /sys/fs/cgroup (cached; walked again only when an id is unknown). The
//! executable needs the process, which only a scan of every /proc/*/fd
//! finds: done only when a rule asks for `exe`.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// cgroup ids to paths (`/system.slice/ssh.service`), from a walk of the
/// cgroup v2 hierarchy.
pub struct CgroupPaths {
    root: PathBuf,
    by_id: HashMap<u64, String>,
}

/// Directories deeper than this are not walked (a loop guard; real
/// hierarchies are a few levels deep).
const MAX_DEPTH: usize = 32;

impl CgroupPaths {
    pub fn new() -> CgroupPaths {
        CgroupPaths::at("/sys/fs/cgroup")
    }

    pub fn at(root: impl Into<PathBuf>) -> CgroupPaths {
        CgroupPaths {
            root: root.into(),
            by_id: HashMap::new(),
        }
    }

    /// The path of cgroup `id`, walking the hierarchy again if it is new.
    pub fn path_of(&mut self, id: u64) -> Option<String> {
        if let Some(p) = self.by_id.get(&id) {
            return Some(p.clone());
        }
        self.by_id.clear();
        let root = self.root.clone();
        let dev = std::fs::metadata(&root).ok()?.dev();
        self.walk(&root, dev, 0);
        self.by_id.get(&id).cloned()
    }

    /// Directories of the hierarchy's own filesystem only (`dev`): inode
    /// numbers of other mounts under it (cgroup v1 on hybrid hosts) could
    /// collide with cgroup ids.
    fn walk(&mut self, dir: &Path, dev: u64, depth: usize) {
        let Ok(meta) = std::fs::metadata(dir) else {
            return;
        };
        if meta.dev() != dev {
            return;
        }
        let rel = dir
            .strip_prefix(&self.root)
            .map(|r| format!("/{}", r.display()))
            .unwrap_or_else(|_| "/".into());
        self.by_id.insert(meta.ino(), rel);
        if depth >= MAX_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                self.walk(&e.path(), dev, depth + 1);
            }
        }
    }
}

impl Default for CgroupPaths {
    fn default() -> Self {
        CgroupPaths::new()
    }
}

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
    fn cgroup_ids_are_directory_inodes_found_by_a_walk() {
        let dir = std::env::temp_dir().join(format!("braid-cg-{}", std::process::id()));
        let leaf = dir.join("system.slice/ssh.service");
        std::fs::create_dir_all(&leaf).unwrap();
        let id = std::fs::metadata(&leaf).unwrap().ino();
        let mut c = CgroupPaths::at(&dir);
        assert_eq!(c.path_of(id).as_deref(), Some("/system.slice/ssh.service"));
        // A new cgroup is found by walking again.
        let late = dir.join("user.slice");
        std::fs::create_dir_all(&late).unwrap();
        let late_id = std::fs::metadata(&late).unwrap().ino();
        assert_eq!(c.path_of(late_id).as_deref(), Some("/user.slice"));
        assert_eq!(c.path_of(u64::MAX), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

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
