//! `braid install`: root-owned copies of braid, braidd and the preload
//! library (and the units) where `braid enable` looks first; the check
//! that what it copies from, and the directories it writes, are safe is
//! `braid_apps::trust`.

use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use braid_apps::preload::{preload_candidates, PRELOAD_NAME};
use braid_apps::trust::trusted_path;
pub use braid_apps::trust::DEFAULT_PREFIX;
use braid_kernel::Error;
use clap::Args;

use crate::{print_json, Ctx};

/// The systemd units `braid install --units` writes (from contrib/, built in).
const UNITS: [(&str, &str); 3] = [
    (
        "braid.service",
        include_str!("../../../contrib/braid.service"),
    ),
    (
        "braid-relay.service",
        include_str!("../../../contrib/braid-relay.service"),
    ),
    (
        "braid-relay-client.service",
        include_str!("../../../contrib/braid-relay-client.service"),
    ),
];

#[derive(Args)]
pub struct InstallArgs {
    /// Binaries go to PREFIX/bin, the preload library to PREFIX/lib/braid.
    #[arg(long, default_value = DEFAULT_PREFIX)]
    pub prefix: PathBuf,
    /// Also install the systemd units (braid, braid-relay, braid-relay-client)
    /// in /etc/systemd/system.
    #[arg(long)]
    pub units: bool,
    /// Stage everything under this directory instead of / (like DESTDIR, for packages).
    #[arg(long, value_name = "DIR")]
    pub destdir: Option<PathBuf>,
    /// The preload library to install (default: the one next to this binary,
    /// or in ../lib/braid from it).
    #[arg(long, value_name = "FILE")]
    pub preload: Option<PathBuf>,
}

/// What goes where.
struct Item {
    from: Source,
    to: PathBuf,
    mode: u32,
}

enum Source {
    File(PathBuf),
    Text(&'static str, String),
}

impl Source {
    fn describe(&self) -> String {
        match self {
            Source::File(p) => p.display().to_string(),
            Source::Text(name, _) => format!("contrib/{name} (built in)"),
        }
    }
}

fn staged(destdir: Option<&Path>, p: &Path) -> PathBuf {
    match destdir {
        Some(d) => d.join(p.strip_prefix("/").unwrap_or(p)),
        None => p.to_path_buf(),
    }
}

/// Write `from` to `to` through a temporary file in the same directory,
/// owned by root (when possible with `destdir`) with `mode`, then rename it
/// over `to`: a reader sees the old file or the new one, never a part.
fn write_atomic(from: &Source, to: &Path, mode: u32, must_chown: bool) -> io::Result<()> {
    let dir = to.parent().unwrap_or(Path::new("/"));
    let name = to.file_name().unwrap_or_default().to_string_lossy();
    let tmp = dir.join(format!(".{name}.braid-install.{}", std::process::id()));
    let _ = fs::remove_file(&tmp); // left by a run with the same pid that died
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let result = (|| {
        match from {
            Source::File(p) => {
                let mut src = fs::File::open(p)?;
                if !src.metadata()?.is_file() {
                    return Err(io::Error::other(format!(
                        "{} is not a regular file",
                        p.display()
                    )));
                }
                let mut buf = Vec::new();
                src.read_to_end(&mut buf)?;
                f.write_all(&buf)?;
            }
            Source::Text(_, text) => f.write_all(text.as_bytes())?,
        }
        match std::os::unix::fs::fchown(&f, Some(0), Some(0)) {
            Ok(()) => {}
            Err(e) if !must_chown && e.kind() == io::ErrorKind::PermissionDenied => {}
            Err(e) => return Err(e),
        }
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.sync_all()?;
        fs::rename(&tmp, to)?;
        if let Ok(d) = fs::File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Create `dir` and the missing directories above it, mode 0755 whatever
/// the umask (services that are not root must read what is installed).
fn create_dirs(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dirs(parent)?;
    }
    match fs::DirBuilder::new().mode(0o755).create(dir) {
        Ok(()) => fs::set_permissions(dir, fs::Permissions::from_mode(0o755)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// A unit's text for `prefix`: its ExecStart= paths say /usr/local/bin.
fn unit_text(text: &str, prefix: &Path) -> String {
    if prefix == Path::new(DEFAULT_PREFIX) {
        text.to_string()
    } else {
        text.replace(
            "/usr/local/bin/",
            &format!("{}/", prefix.join("bin").display()),
        )
    }
}

/// The preload library: the one `--preload` names, else the first found
/// next to the executable.
fn preload_to_install(preload: Option<&PathBuf>, dir: &Path, exe: &Path) -> Result<PathBuf, Error> {
    match preload {
        Some(p) if p.is_file() => Ok(p.clone()),
        Some(p) => Err(Error::Invalid(format!(
            "--preload {}: no such file",
            p.display()
        ))),
        None => {
            let candidates = preload_candidates(dir, None);
            match candidates.iter().find(|p| p.is_file()) {
                Some(p) => Ok(p.canonicalize().unwrap_or_else(|_| p.clone())),
                None => Err(Error::Invalid(format!(
                    "{PRELOAD_NAME} is not next to {} (looked for {}): build it with \
                     'cargo build --release -p braid-preload' (it lands next to braid in \
                     target/release) or name it with --preload FILE",
                    exe.display(),
                    candidates
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))),
            }
        }
    }
}

/// The directories, then the files, of `items`.
fn copy_all(items: &[Item], destdir: Option<&Path>) -> Result<(), Error> {
    // Every directory first: on the real system each must be one only root
    // can change, or the copies would be no safer than the originals.
    let mut dirs: Vec<&Path> = items.iter().filter_map(|i| i.to.parent()).collect();
    dirs.dedup();
    for d in &dirs {
        create_dirs(d).map_err(|e| Error::Invalid(format!("creating {}: {e}", d.display())))?;
        if destdir.is_none() {
            trusted_path(d).map_err(|u| {
                Error::Invalid(format!(
                    "not installing into {}: {u}; services must not run files from there \
                     (make it root's: chown root:root, chmod go-w; or choose another --prefix)",
                    d.display()
                ))
            })?;
        }
    }
    for i in items {
        write_atomic(&i.from, &i.to, i.mode, destdir.is_none()).map_err(|e| {
            Error::Invalid(format!(
                "installing {} as {}: {e}",
                i.from.describe(),
                i.to.display()
            ))
        })?;
    }
    Ok(())
}

fn print_installed(
    ctx: &Ctx,
    items: &[Item],
    missing_braidd: bool,
    exe: &Path,
    destdir: Option<&Path>,
    units: bool,
) {
    if ctx.json {
        print_json(&serde_json::json!({
            "installed": items.iter().map(|i| serde_json::json!({
                "path": i.to,
                "from": i.from.describe(),
                "mode": format!("{:04o}", i.mode),
            })).collect::<Vec<_>>(),
            "braidd_missing": missing_braidd,
        }));
        return;
    }
    for i in items {
        println!(
            "installed {} (mode {:04o}, from {})",
            i.to.display(),
            i.mode,
            i.from.describe()
        );
    }
    if missing_braidd {
        println!(
            "braidd is not next to {}, not installed (build it with 'cargo build --release -p braid-daemon')",
            exe.display()
        );
    }
    if destdir.is_none() {
        println!("'braid enable UNIT' now uses these copies");
        if units {
            println!("then: systemctl daemon-reload && systemctl enable --now braid");
        }
    }
}

pub fn install(ctx: &Ctx, a: InstallArgs) -> Result<(), Error> {
    if !a.prefix.is_absolute() {
        return Err(Error::Invalid(format!(
            "--prefix must be an absolute path, not {}",
            a.prefix.display()
        )));
    }
    let destdir = a.destdir.as_deref();
    // SAFETY: geteuid has no preconditions.
    if destdir.is_none() && unsafe { libc::geteuid() } != 0 {
        return Err(Error::Invalid(format!(
            "braid install writes root-owned files under {}: run it as root (sudo braid install)",
            a.prefix.display()
        )));
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the braid executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/")).to_path_buf();
    let lib = preload_to_install(a.preload.as_ref(), &dir, &exe)?;
    let bin = staged(destdir, &a.prefix.join("bin"));
    let libdir = staged(destdir, &a.prefix.join("lib/braid"));
    let mut items = vec![Item {
        from: Source::File(exe.clone()),
        to: bin.join("braid"),
        mode: 0o755,
    }];
    let braidd = dir.join("braidd");
    let missing_braidd = !braidd.is_file();
    if !missing_braidd {
        items.push(Item {
            from: Source::File(braidd),
            to: bin.join("braidd"),
            mode: 0o755,
        });
    }
    items.push(Item {
        from: Source::File(lib),
        to: libdir.join(PRELOAD_NAME),
        mode: 0o755,
    });
    if a.units {
        let unitdir = staged(destdir, Path::new("/etc/systemd/system"));
        for (name, text) in UNITS {
            items.push(Item {
                from: Source::Text(name, unit_text(text, &a.prefix)),
                to: unitdir.join(name),
                mode: 0o644,
            });
        }
    }
    copy_all(&items, destdir)?;
    print_installed(ctx, &items, missing_braidd, &exe, destdir, a.units);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_follow_the_prefix() {
        let t = unit_text(UNITS[0].1, Path::new("/opt/braid"));
        assert!(t.contains("ExecStart=/opt/braid/bin/braidd"), "{t}");
        assert!(!t.contains("/usr/local/bin/"));
        assert_eq!(unit_text(UNITS[0].1, Path::new(DEFAULT_PREFIX)), UNITS[0].1);
    }
}
