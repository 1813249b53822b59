//! Whether a file may be named in a root service's drop-in (issue 11).
//!
//! A drop-in makes systemd load the preload library into the service's
//! processes (and, with `--bpf`, run `braid` as root before it starts). If
//! anyone but root can change those files, or any directory above them,
//! they get the service's privileges: `sudo ./target/release/braid enable
//! nginx` would hand root to whoever owns `target/`. So `enable` only names
//! files that [`trusted_path`] accepts, and `braid install` puts root-owned
//! copies where `enable` looks first.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use braid_kernel::Error;

use crate::preload::{preload_candidates, PRELOAD_NAME};

/// Where `braid install` puts its copies, and where `braid enable` looks first.
pub const DEFAULT_PREFIX: &str = "/usr/local";

/// Symbolic links followed before giving up (as the kernel's MAXSYMLINKS).
const MAX_LINKS: u32 = 40;

/// Why a path is not safe to hand to a root service.
#[derive(Debug)]
pub enum Why {
    /// Owned by someone other than root.
    NotRootOwned { uid: u32 },
    /// A symbolic link owned by someone other than root (who may replace it
    /// in a sticky directory).
    LinkNotRootOwned { uid: u32 },
    /// A file its group or others can write.
    Writable { mode: u32 },
    /// A directory its group or others can write, without the sticky bit:
    /// they can replace what is in it.
    WritableDir { mode: u32 },
    /// A component before the last one is not a directory.
    NotADirectory,
    /// The last component is neither a regular file nor a directory.
    NotAFile,
    /// More than [`MAX_LINKS`] symbolic links.
    TooManyLinks,
    /// It cannot be examined (missing, ...).
    Io(io::Error),
}

/// A path that is not safe, with the component at fault and the reason.
#[derive(Debug)]
pub struct Untrusted {
    /// The component at fault (a real path, symbolic links resolved up to it).
    pub path: PathBuf,
    pub why: Why,
}

impl fmt::Display for Untrusted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = self.path.display();
        match &self.why {
            Why::NotRootOwned { uid } => write!(f, "{p} is owned by uid {uid}, not root"),
            Why::LinkNotRootOwned { uid } => {
                write!(f, "the symbolic link {p} is owned by uid {uid}, not root")
            }
            Why::Writable { mode } => write!(
                f,
                "{p} is writable by its group or others (mode {:04o})",
                mode & 0o7777
            ),
            Why::WritableDir { mode } => write!(
                f,
                "directory {p} is writable by its group or others without the sticky bit (mode {:04o})",
                mode & 0o7777
            ),
            Why::NotADirectory => write!(f, "{p} is not a directory"),
            Why::NotAFile => write!(f, "{p} is not a regular file"),
            Why::TooManyLinks => write!(f, "{p}: too many levels of symbolic links"),
            Why::Io(e) => write!(f, "{p}: {e}"),
        }
    }
}

impl std::error::Error for Untrusted {}

enum Step {
    Root,
    Parent,
    Name(OsString),
}

fn steps(p: &Path) -> impl DoubleEndedIterator<Item = Step> + '_ {
    p.components().filter_map(|c| match c {
        Component::RootDir | Component::Prefix(_) => Some(Step::Root),
        Component::ParentDir => Some(Step::Parent),
        Component::CurDir => None,
        Component::Normal(n) => Some(Step::Name(n.to_os_string())),
    })
}

fn untrusted(path: &Path, why: Why) -> Untrusted {
    Untrusted {
        path: path.to_path_buf(),
        why,
    }
}

/// Only root can change `md` (a file or directory, not a link).
fn check_entry(path: &Path, md: &fs::Metadata, last: bool) -> Result<(), Untrusted> {
    if md.uid() != 0 {
        return Err(untrusted(path, Why::NotRootOwned { uid: md.uid() }));
    }
    let mode = md.mode();
    if md.is_dir() {
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(untrusted(path, Why::WritableDir { mode }));
        }
    } else if !last {
        return Err(untrusted(path, Why::NotADirectory));
    } else if !md.is_file() {
        return Err(untrusted(path, Why::NotAFile));
    } else if mode & 0o022 != 0 {
        return Err(untrusted(path, Why::Writable { mode }));
    }
    Ok(())
}

/// Whether only root can change `path`: the file (or directory) itself and
/// every directory above it up to `/` must be owned by root and not writable
/// by group or others (directories may be, with the sticky bit, as `/tmp`).
/// Symbolic links are followed one hop at a time: each link must be owned by
/// root and sit in such a directory, and where it points is checked the same
/// way. Returns the real path.
pub fn trusted_path(path: &Path) -> Result<PathBuf, Untrusted> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| untrusted(path, Why::Io(e)))?
            .join(path)
    };
    let mut todo: VecDeque<Step> = steps(&abs).collect();
    let mut cur = PathBuf::from("/");
    let root = fs::symlink_metadata(&cur).map_err(|e| untrusted(&cur, Why::Io(e)))?;
    check_entry(&cur, &root, true)?;
    let mut links = 0;
    while let Some(step) = todo.pop_front() {
        match step {
            Step::Root => cur = PathBuf::from("/"),
            // `cur` is real and checked, so its parent is an ancestor
            // checked already.
            Step::Parent => {
                cur.pop();
            }
            Step::Name(n) => {
                let next = cur.join(&n);
                let md = fs::symlink_metadata(&next).map_err(|e| untrusted(&next, Why::Io(e)))?;
                if md.file_type().is_symlink() {
                    if md.uid() != 0 {
                        return Err(untrusted(&next, Why::LinkNotRootOwned { uid: md.uid() }));
                    }
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(untrusted(&next, Why::TooManyLinks));
                    }
                    let target = fs::read_link(&next).map_err(|e| untrusted(&next, Why::Io(e)))?;
                    // A relative target is walked from `cur`, the link's
                    // directory; an absolute one starts again at `/`.
                    for s in steps(&target).rev() {
                        todo.push_front(s);
                    }
                    continue;
                }
                check_entry(&next, &md, todo.is_empty())?;
                cur = next;
            }
        }
    }
    Ok(cur)
}

/// The fix to print when `enable` refuses: install with this prefix.
fn install_hint(prefix: &Path) -> String {
    let exe = std::env::current_exe()
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "braid".into());
    let mut cmd = format!("sudo {exe} install");
    if prefix != Path::new(DEFAULT_PREFIX) {
        cmd.push_str(&format!(" --prefix {}", prefix.display()));
    }
    format!(
        "Fix: run `{cmd}` first, which copies braid and {PRELOAD_NAME} to {} and {} \
         (owned by root, mode 0755); `braid enable` then uses those copies",
        prefix.join("bin").display(),
        prefix.join("lib/braid").display()
    )
}

/// The first trusted one of the `candidates` that exist, or why none is.
fn pick(candidates: &[PathBuf]) -> Result<PathBuf, Vec<Untrusted>> {
    let mut refused = Vec::new();
    for c in candidates.iter().filter(|c| c.exists()) {
        match trusted_path(c) {
            Ok(real) => return Ok(real),
            Err(u) => refused.push(u),
        }
    }
    Err(refused)
}

fn refusal(unit: &str, what: &str, refused: &[Untrusted], prefix: &Path) -> Error {
    let reasons = refused
        .iter()
        .map(|u| format!("\n  {u}"))
        .collect::<String>();
    Error::Invalid(format!(
        "refusing to write {what} into {unit}'s drop-in: whoever can change it, or a directory \
         above it, would get {unit}'s privileges (root for a root service), and here:{reasons}\n{}",
        install_hint(prefix)
    ))
}

/// The preload library and, with `--bpf`, the braid binary that `braid
/// enable UNIT` writes into the drop-in: the copies `braid install` put
/// under `prefix` when they exist and are trusted, else the ones next to
/// this binary when they are trusted (`BRAID_PRELOAD_LIB`, when set, names
/// the only library considered); otherwise an error naming the fix.
pub fn enable_paths(
    unit: &str,
    prefix: &Path,
    bpf: bool,
) -> Result<(PathBuf, Option<PathBuf>), Error> {
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the braid executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let libs = match std::env::var_os("BRAID_PRELOAD_LIB") {
        Some(p) => vec![PathBuf::from(p)],
        None => preload_candidates(dir, Some(prefix)),
    };
    let lib = match pick(&libs) {
        Ok(l) => l,
        Err(refused) if refused.is_empty() => {
            return Err(Error::Invalid(format!(
                "the preload library {PRELOAD_NAME} was not found (looked for {}); build it with \
                 'cargo build --release -p braid-preload', then run 'sudo braid install'",
                libs.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        Err(refused) => {
            return Err(refusal(
                unit,
                &format!("the preload library {PRELOAD_NAME}"),
                &refused,
                prefix,
            ))
        }
    };
    if !bpf {
        return Ok((lib, None));
    }
    let exes = [prefix.join("bin/braid"), exe];
    match pick(&exes) {
        Ok(e) => Ok((lib, Some(e))),
        Err(refused) => Err(refusal(
            unit,
            "the braid binary (run as root by --bpf's ExecStartPre=+)",
            &refused,
            prefix,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{lchown, symlink, DirBuilderExt, PermissionsExt};
    use std::sync::atomic::{AtomicU32, Ordering};

    const NOBODY: u32 = 65534;

    /// A root-owned 0755 directory under /tmp, removed on every path out.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static N: AtomicU32 = AtomicU32::new(0);
            let p = PathBuf::from(format!(
                "/tmp/braid-trust-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = fs::remove_dir_all(&p);
            fs::DirBuilder::new().mode(0o755).create(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
            TempDir(p)
        }

        fn file(&self, rel: &str, mode: u32) -> PathBuf {
            let p = self.0.join(rel);
            fs::write(&p, b"x").unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }

        fn dir(&self, rel: &str, mode: u32) -> PathBuf {
            let p = self.0.join(rel);
            fs::create_dir(&p).unwrap();
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn root() -> bool {
        // SAFETY: geteuid has no preconditions.
        let r = unsafe { libc::geteuid() } == 0;
        if !r {
            eprintln!("skip: needs root (chown)");
        }
        r
    }

    fn chown(p: &Path, uid: u32) {
        lchown(p, Some(uid), None).unwrap();
    }

    #[track_caller]
    fn refused(p: &Path) -> Untrusted {
        match trusted_path(p) {
            Ok(real) => panic!("{} ({}) was trusted", p.display(), real.display()),
            Err(u) => u,
        }
    }

    #[test]
    fn root_owned_files_in_root_owned_directories_are_trusted() {
        if !root() {
            return;
        }
        let t = TempDir::new();
        let f = t.file("lib.so", 0o755);
        assert_eq!(trusted_path(&f).unwrap(), f);
        // /tmp itself is world-writable with the sticky bit: fine.
        let sticky = t.dir("sticky", 0o1777);
        let g = sticky.join("lib.so");
        fs::write(&g, b"x").unwrap();
        assert_eq!(trusted_path(&g).unwrap(), g);
        assert!(trusted_path(Path::new("/")).is_ok());
        // ".." after a real directory.
        let d = t.dir("d", 0o755);
        assert_eq!(trusted_path(&d.join("../lib.so")).unwrap(), f);
    }

    #[test]
    fn files_others_own_or_can_write_are_refused() {
        if !root() {
            return;
        }
        let t = TempDir::new();
        let f = t.file("theirs.so", 0o755);
        chown(&f, NOBODY);
        let u = refused(&f);
        assert!(matches!(u.why, Why::NotRootOwned { uid: NOBODY }) && u.path == f);
        assert!(u.to_string().contains("owned by uid 65534"), "{u}");
        for mode in [0o775, 0o757] {
            let g = t.file(&format!("w{mode:o}.so"), mode);
            let u = refused(&g);
            assert!(matches!(u.why, Why::Writable { .. }), "{u}");
            assert!(u.to_string().contains("writable by its group or others"));
        }
        let u = refused(&t.0.join("missing.so"));
        assert!(
            matches!(&u.why, Why::Io(e) if e.kind() == io::ErrorKind::NotFound),
            "{u}"
        );
    }

    #[test]
    fn directories_others_own_or_can_write_are_refused() {
        if !root() {
            return;
        }
        let t = TempDir::new();
        let theirs = t.dir("theirs", 0o755);
        let f = theirs.join("lib.so");
        fs::write(&f, b"x").unwrap();
        chown(&theirs, NOBODY);
        let u = refused(&f);
        assert!(
            matches!(u.why, Why::NotRootOwned { uid: NOBODY }) && u.path == theirs,
            "{u}"
        );
        // Deeper down: any ancestor counts.
        let inner = theirs.join("inner");
        fs::DirBuilder::new().mode(0o755).create(&inner).unwrap();
        fs::write(inner.join("lib.so"), b"x").unwrap();
        assert_eq!(refused(&inner.join("lib.so")).path, theirs);
        for mode in [0o775, 0o777] {
            let open = t.dir(&format!("open{mode:o}"), mode);
            let g = open.join("lib.so");
            fs::write(&g, b"x").unwrap();
            let u = refused(&g);
            assert!(
                matches!(u.why, Why::WritableDir { .. }) && u.path == open,
                "{u}"
            );
            assert!(u.to_string().contains("without the sticky bit"), "{u}");
        }
        // In a sticky directory, an entry someone else owns is theirs to replace.
        let sticky = t.dir("sticky", 0o1777);
        let g = sticky.join("lib.so");
        fs::write(&g, b"x").unwrap();
        chown(&g, NOBODY);
        assert!(matches!(refused(&g).why, Why::NotRootOwned { .. }));
        // A file where a directory should be.
        let plain = t.file("plain", 0o644);
        let u = refused(&plain.join("x"));
        assert!(
            matches!(u.why, Why::NotADirectory) && u.path == plain,
            "{u}"
        );
    }

    #[test]
    fn symbolic_links_are_checked_hop_by_hop() {
        if !root() {
            return;
        }
        let t = TempDir::new();
        let good = t.file("good.so", 0o755);
        let theirs = t.dir("theirs", 0o755);
        let bad = theirs.join("bad.so");
        fs::write(&bad, b"x").unwrap();
        chown(&theirs, NOBODY);

        // A root-owned link to a trusted file: the real path comes back.
        let l1 = t.0.join("l1.so");
        symlink("good.so", &l1).unwrap();
        assert_eq!(trusted_path(&l1).unwrap(), good);
        // Two hops, one absolute, through a directory link.
        let ldir = t.0.join("ldir");
        symlink(&t.0, &ldir).unwrap();
        let l2 = t.0.join("l2.so");
        symlink(ldir.join("l1.so"), &l2).unwrap();
        assert_eq!(trusted_path(&l2).unwrap(), good);
        // A trusted link to a file in an untrusted directory.
        let l3 = t.0.join("l3.so");
        symlink(&bad, &l3).unwrap();
        assert_eq!(refused(&l3).path, theirs);
        // An untrusted hop in the middle: a root-owned file behind it does
        // not help.
        let l4 = theirs.join("l4.so");
        symlink(&good, &l4).unwrap();
        let l5 = t.0.join("l5.so");
        symlink(&l4, &l5).unwrap();
        assert_eq!(refused(&l5).path, theirs);
        // A link someone else owns in a sticky directory.
        let sticky = t.dir("sticky", 0o1777);
        let l6 = sticky.join("l6.so");
        symlink(&good, &l6).unwrap();
        chown(&l6, NOBODY);
        let u = refused(&l6);
        assert!(
            matches!(u.why, Why::LinkNotRootOwned { uid: NOBODY }),
            "{u}"
        );
        // "..": resolved after the link, as the kernel does.
        let sub = t.dir("sub", 0o755);
        let l7 = t.0.join("l7");
        symlink(&sub, &l7).unwrap();
        assert_eq!(trusted_path(&l7.join("../good.so")).unwrap(), good);
        // A loop ends.
        let a = t.0.join("a");
        let b = t.0.join("b");
        symlink(&b, &a).unwrap();
        symlink(&a, &b).unwrap();
        assert!(matches!(refused(&a).why, Why::TooManyLinks));
    }
}
