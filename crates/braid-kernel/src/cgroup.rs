//! cgroup v2: where it is mounted, a process's own cgroup, a cgroup's id
//! and the path of an id (what `[[app]]` rules match, what `braid run`
//! makes).

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// A cgroup v2 mount: where it is, and which part of the hierarchy it
/// shows (`/` unless a subtree was mounted, as in some containers).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub root: String,
}

impl Mount {
    /// The directory of the hierarchy path `path` (as /proc/PID/cgroup and
    /// the rules write it), if the mount shows it.
    pub fn dir_of(&self, path: &str) -> PathBuf {
        let below = path
            .strip_prefix(self.root.trim_end_matches('/'))
            .unwrap_or(path);
        self.point.join(below.trim_start_matches('/'))
    }
}

/// Where the cgroup v2 hierarchy is mounted, from /proc/self/mountinfo:
/// `/sys/fs/cgroup` on most systems, `/sys/fs/cgroup/unified` on hybrid
/// ones. A later mount may hide an earlier one: the last one still
/// reachable.
pub fn mount() -> Option<Mount> {
    let text = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    parse_mounts(&text)
        .into_iter()
        .rev()
        .find(|m| m.point.join("cgroup.controllers").exists())
}

fn parse_mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (before, after) = line.split_once(" - ")?;
            if after.split_whitespace().next()? != "cgroup2" {
                return None;
            }
            let f: Vec<&str> = before.split_whitespace().collect();
            // Fields: id, parent, major:minor, root, mount point, ...
            let unescape = |s: &str| s.replace("\\040", " ");
            Some(Mount {
                point: PathBuf::from(unescape(f.get(4)?)),
                root: unescape(f.get(3)?),
            })
        })
        .collect()
}

/// Where cgroup v2 is mounted.
pub fn root() -> Option<PathBuf> {
    mount().map(|m| m.point)
}

/// A cgroup's id as the kernel reports it to BPF: its directory's inode.
pub fn id(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    Ok(std::fs::metadata(path)?.ino())
}

/// The cgroup v2 directory of the calling process.
pub fn own() -> Option<PathBuf> {
    let m = mount()?;
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(m.dir_of(rel))
}

/// cgroup ids to paths (`/system.slice/ssh.service`), from a walk of the
/// cgroup v2 hierarchy.
pub struct CgroupPaths {
    root: PathBuf,
    /// The part of the hierarchy the mount shows (`/` but in containers
    /// that mount a subtree): paths are given from the hierarchy's root.
    shown: String,
    by_id: HashMap<u64, String>,
}

/// Directories deeper than this are not walked (a loop guard; real
/// hierarchies are a few levels deep).
const MAX_DEPTH: usize = 32;

impl CgroupPaths {
    /// The hierarchy where cgroup v2 is mounted: `/sys/fs/cgroup` on
    /// unified hosts, `/sys/fs/cgroup/unified` on hybrid ones.
    pub fn new() -> CgroupPaths {
        match mount() {
            Some(m) => CgroupPaths {
                shown: m.root.trim_end_matches('/').to_string(),
                ..CgroupPaths::at(m.point)
            },
            None => CgroupPaths::at("/sys/fs/cgroup"),
        }
    }

    pub fn at(root: impl Into<PathBuf>) -> CgroupPaths {
        CgroupPaths {
            root: root.into(),
            shown: String::new(),
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
            .map(|r| format!("{}/{}", self.shown, r.display()))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup2_mount_is_found_on_unified_and_hybrid_hosts() {
        let hybrid = "25 20 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n\
            26 25 0:23 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
            27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n";
        assert_eq!(
            parse_mounts(hybrid),
            vec![Mount {
                point: "/sys/fs/cgroup/unified".into(),
                root: "/".into()
            }]
        );
        let container = "30 20 0:25 /lxc/c1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
        let m = &parse_mounts(container)[0];
        assert_eq!(
            m.dir_of("/lxc/c1/app.scope"),
            PathBuf::from("/sys/fs/cgroup/app.scope")
        );
        assert_eq!(m.dir_of("/"), PathBuf::from("/sys/fs/cgroup"));
    }

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
}
