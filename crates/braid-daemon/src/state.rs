//! The daemon's state file (`/run/braid/daemon-state.json`): the endpoints
//! Braid made, by id *and address*, and the default routes whose initcwnd
//! it changed, with the value they had. A restarted daemon, even after a
//! crash, adopts the first and can still put the second back.
//!
//! The shell writes it before touching the kernel (the union of the state
//! before and after the change: the intent) and again once done, so at
//! every instant the file names everything of Braid's in the kernel (and
//! perhaps a little more, which adoption sorts out). Writes are atomic: a
//! temporary file in the same directory, fsync, rename, fsync of the
//! directory; no symlink is ever followed. A file that cannot be read as
//! state is renamed aside and reported, never taken for "nothing".

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use braid_policy::model::KernelEndpoint;
use braid_policy::policy::ChangedRoute;
use serde::{Deserialize, Serialize};

/// Larger than any real state (255 endpoints and a few routes).
const MAX_SIZE: u64 = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct OwnedEndpoint {
    pub id: u8,
    pub addr: IpAddr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SavedState {
    /// Endpoints Braid made or is about to make.
    #[serde(default)]
    pub owned: Vec<OwnedEndpoint>,
    /// Routes whose initcwnd Braid changed or is about to change.
    #[serde(default)]
    pub changed_routes: Vec<ChangedRoute>,
    /// Files from before addresses were kept hold ids alone; read, never written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub owned_ids: Vec<u8>,
}

fn route_key(r: &ChangedRoute) -> (u32, u32, bool) {
    (r.ifindex, r.table, r.ipv6)
}

impl SavedState {
    pub fn new(owned: Vec<OwnedEndpoint>, changed_routes: Vec<ChangedRoute>) -> SavedState {
        SavedState {
            owned,
            changed_routes,
            owned_ids: Vec::new(),
        }
        .normalized()
    }

    pub fn is_empty(&self) -> bool {
        self.owned.is_empty() && self.changed_routes.is_empty() && self.owned_ids.is_empty()
    }

    /// Sorted, without duplicates: equal states compare equal.
    fn normalized(mut self) -> SavedState {
        self.owned.sort();
        self.owned.dedup();
        self.changed_routes.sort_by_key(route_key);
        self.changed_routes.dedup_by_key(|r| route_key(r));
        self.owned_ids.sort();
        self.owned_ids.dedup();
        self
    }

    /// What must be on disk while the kernel goes from `self` to `after`:
    /// everything in either. For a route in both, `after`'s value before
    /// the change (the policy's own record) wins.
    pub fn union(&self, after: &SavedState) -> SavedState {
        let mut owned = self.owned.clone();
        owned.extend(after.owned.iter().copied());
        let mut routes = after.changed_routes.clone();
        for r in &self.changed_routes {
            if !routes.iter().any(|x| route_key(x) == route_key(r)) {
                routes.push(r.clone());
            }
        }
        SavedState {
            owned,
            changed_routes: routes,
            owned_ids: self.owned_ids.clone(),
        }
        .normalized()
    }

    /// Which of the kernel's endpoints are Braid's: an id the file names,
    /// still holding the address the file names (an id that someone else
    /// reused for another address is theirs). Files without addresses
    /// are trusted by id. Returns the ids, and a line for each one not
    /// adopted.
    pub fn adopt(&self, kernel: &[KernelEndpoint]) -> (Vec<u8>, Vec<String>) {
        let mut ids = Vec::new();
        let mut notes = Vec::new();
        for e in kernel {
            let listed: Vec<&OwnedEndpoint> = self.owned.iter().filter(|o| o.id == e.id).collect();
            if listed.iter().any(|o| o.addr == e.addr) || self.owned_ids.contains(&e.id) {
                ids.push(e.id);
            } else if let Some(o) = listed.first() {
                notes.push(format!(
                    "the state file lists endpoint id {} as Braid's {}, but the kernel's id {} is {}: someone else's, left alone",
                    o.id, o.addr, e.id, e.addr
                ));
            }
        }
        ids.sort();
        ids.dedup();
        (ids, notes)
    }
}

pub enum Loaded {
    /// No file: nothing of Braid's in the kernel.
    Missing,
    Read(SavedState),
    /// The file was not state (corrupt, truncated, a symlink, ...): renamed
    /// aside. The message says what and where it went.
    KeptAside(String),
    /// It could not be read nor moved; the message says why.
    Unusable(String),
}

/// Read the state file, never following a symlink.
pub fn load(path: &Path) -> Loaded {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path);
    let problem = match file {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Loaded::Missing,
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            "it is a symbolic link (not followed)".to_string()
        }
        Err(e) => return Loaded::Unusable(format!("cannot read {}: {e}", path.display())),
        Ok(f) => match read_state(f) {
            Ok(s) => return Loaded::Read(s.normalized()),
            Err(why) => why,
        },
    };
    match keep_aside(path) {
        Ok(to) => Loaded::KeptAside(format!(
            "the state file {} was not usable ({problem}); it was kept as {} and the endpoints it may have listed are treated as someone else's",
            path.display(),
            to.display()
        )),
        Err(e) => Loaded::Unusable(format!(
            "the state file {} is not usable ({problem}) and could not be moved aside: {e}",
            path.display()
        )),
    }
}

fn read_state(mut f: File) -> Result<SavedState, String> {
    let meta = f.metadata().map_err(|e| e.to_string())?;
    let kind = meta.file_type();
    if !kind.is_file() {
        return Err(
            if kind.is_fifo() || kind.is_socket() || kind.is_block_device() || kind.is_char_device()
            {
                "it is not a regular file".into()
            } else {
                "it is a directory".into()
            },
        );
    }
    if meta.len() > MAX_SIZE {
        return Err(format!("{} bytes, more than any state", meta.len()));
    }
    let mut text = Vec::new();
    Read::by_ref(&mut f)
        .take(MAX_SIZE)
        .read_to_end(&mut text)
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&text).map_err(|e| format!("not valid state: {e}"))
}

/// Rename `path` to `path.corrupt-SECONDS[-N]`.
fn keep_aside(path: &Path) -> io::Result<PathBuf> {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    for n in 0..100 {
        let suffix = if n == 0 {
            format!("{name}.corrupt-{secs}")
        } else {
            format!("{name}.corrupt-{secs}-{n}")
        };
        let to = path.with_file_name(suffix);
        if fs::symlink_metadata(&to).is_ok() {
            continue;
        }
        fs::rename(path, &to)?;
        return Ok(to);
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        "too many files kept aside already",
    ))
}

fn dir_of(path: &Path) -> &Path {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replace the state file atomically with `state` (an empty state removes
/// it): a crash leaves either the old file or the new one, whole.
pub fn store(path: &Path, state: &SavedState) -> io::Result<()> {
    let dir = dir_of(path);
    if state.is_empty() {
        return match fs::remove_file(path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        };
    }
    fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the state file has no name"))?;
    let tmp = dir.join(format!(".{}.tmp", name.to_string_lossy()));
    // One left by a crash, or planted: unlink does not follow symlinks.
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let text = serde_json::to_vec(state).expect("state serializes");
    {
        // O_EXCL: never an existing file, never through a symlink.
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
    }
    crate::crash::point("before:state_rename");
    // rename replaces whatever `path` is (a symlink included) and never
    // writes through it.
    if let Err(e) = fs::rename(&tmp, path) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("braid-state-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn ep(id: u8, a: &str) -> OwnedEndpoint {
        OwnedEndpoint {
            id,
            addr: a.parse().unwrap(),
        }
    }

    fn route(ifindex: u32, before: Option<u32>) -> ChangedRoute {
        ChangedRoute {
            ifindex,
            table: 101,
            ipv6: false,
            initcwnd_before: before,
        }
    }

    #[test]
    fn written_atomically_read_back_and_removed_when_empty() {
        let d = dir("rw");
        let p = d.join("state.json");
        let s = SavedState::new(
            vec![ep(2, "10.2.0.1"), ep(1, "10.1.0.1")],
            vec![route(3, Some(15))],
        );
        store(&p, &s).unwrap();
        match load(&p) {
            Loaded::Read(r) => assert_eq!(r, s),
            _ => panic!("not read back"),
        }
        // A temporary file left by a crash is replaced, not appended to.
        fs::write(d.join(".state.json.tmp"), "garbage").unwrap();
        store(&p, &s).unwrap();
        assert!(!d.join(".state.json.tmp").exists());
        store(&p, &SavedState::default()).unwrap();
        assert!(matches!(load(&p), Loaded::Missing));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn symlinks_are_never_followed() {
        let d = dir("ln");
        let p = d.join("state.json");
        let victim = d.join("victim");
        fs::write(&victim, "precious").unwrap();
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        // Reading: not followed, the link is moved aside.
        assert!(matches!(load(&p), Loaded::KeptAside(m) if m.contains("symbolic link")));
        assert!(fs::symlink_metadata(&p).is_err());
        // Writing over a symlink replaces the link, not its target.
        std::os::unix::fs::symlink(&victim, &p).unwrap();
        store(&p, &SavedState::new(vec![ep(1, "10.1.0.1")], vec![])).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        assert!(fs::symlink_metadata(&p).unwrap().file_type().is_file());
        // A symlink planted as the temporary file is not written through.
        std::os::unix::fs::symlink(&victim, d.join(".state.json.tmp")).unwrap();
        store(&p, &SavedState::new(vec![ep(2, "10.2.0.1")], vec![])).unwrap();
        assert_eq!(fs::read_to_string(&victim).unwrap(), "precious");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_corrupt_file_is_kept_aside_not_taken_for_empty() {
        let d = dir("bad");
        let p = d.join("state.json");
        for bad in ["", "{\"owned\": [", "[1,2]", "{\"owned\": 5}"] {
            fs::write(&p, bad).unwrap();
            let Loaded::KeptAside(msg) = load(&p) else {
                panic!("{bad:?} was taken for state")
            };
            assert!(msg.contains("kept as"), "{msg}");
            assert!(!p.exists());
        }
        let aside = fs::read_dir(&d)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .contains(".corrupt-")
            })
            .count();
        assert_eq!(aside, 4, "each bad file kept under its own name");
        // The format before addresses were kept still reads.
        fs::write(&p, r#"{"owned_ids":[1,2],"changed_routes":[]}"#).unwrap();
        assert!(matches!(load(&p), Loaded::Read(s) if s.owned_ids == vec![1, 2]));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn union_and_adoption() {
        let before = SavedState::new(
            vec![ep(1, "10.1.0.1"), ep(2, "10.2.0.1")],
            vec![route(3, Some(15))],
        );
        let after = SavedState::new(
            vec![ep(1, "10.1.0.1"), ep(2, "10.2.0.9")],
            vec![route(4, None)],
        );
        let u = before.union(&after);
        assert_eq!(
            u.owned,
            vec![ep(1, "10.1.0.1"), ep(2, "10.2.0.1"), ep(2, "10.2.0.9")]
        );
        assert_eq!(u.changed_routes, vec![route(3, Some(15)), route(4, None)]);
        let k = |id, a: &str| KernelEndpoint {
            id,
            addr: a.parse().unwrap(),
            flags: 2,
            ifindex: None,
        };
        // id 1 is still ours; id 2 was reused by someone else for another
        // address; id 3 was never ours.
        let (ids, notes) = before.adopt(&[k(1, "10.1.0.1"), k(2, "192.0.2.7"), k(3, "10.3.0.1")]);
        assert_eq!(ids, vec![1]);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("192.0.2.7"), "{}", notes[0]);
        let legacy = SavedState {
            owned_ids: vec![2],
            ..Default::default()
        };
        assert_eq!(legacy.adopt(&[k(2, "192.0.2.7")]).0, vec![2]);
    }
}
