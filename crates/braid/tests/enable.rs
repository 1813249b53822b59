//! `braid enable` only names files that only root can change in a unit's
//! drop-in (issue 11), and `braid install` makes such copies: a braid binary
//! and preload library in a directory someone else owns are refused with the
//! fix in the message; `braid install --destdir` writes root-owned files with
//! the right modes; `enable` accepts an install. Everything happens in
//! directories under /tmp, removed on every path out: the real /usr/local and
//! /etc/systemd are never touched.

mod common;
use common::BRAID;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

const PRELOAD: &str = "libbraid_preload.so";
const NOBODY: u32 = 65534;

/// A root-owned 0755 directory under /tmp, removed when dropped (on panic too).
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = PathBuf::from(format!(
            "/tmp/braid-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        TempDir(p)
    }

    fn s(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let r = unsafe { libc::geteuid() } == 0;
    if !r {
        eprintln!("skip: needs root (chown, root-owned installs)");
    }
    r
}

/// The preload library the build put next to `braid`.
fn built_preload() -> PathBuf {
    let p = Path::new(BRAID).parent().unwrap().join(PRELOAD);
    assert!(
        p.is_file(),
        "{} is missing: cargo build --workspace",
        p.display()
    );
    p
}

/// Run a braid binary without BRAID_PRELOAD_LIB from the environment.
fn braid(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .env_remove("BRAID_PRELOAD_LIB")
        .output()
        .unwrap()
}

/// A root filesystem for `enable --root` with one unit in it.
fn unit_root() -> TempDir {
    let r = TempDir::new("enable-root");
    let dir = r.0.join("lib/systemd/system");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("web.service"),
        "[Service]\nExecStart=/usr/bin/web\n",
    )
    .unwrap();
    r
}

fn dropin(r: &TempDir) -> PathBuf {
    r.0.join("etc/systemd/system/web.service.d/50-braid-mptcp.conf")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn enable_refuses_a_binary_in_a_directory_someone_else_owns() {
    if !root() {
        return;
    }
    let t = TempDir::new("untrusted");
    let theirs = t.0.join("target");
    std::fs::create_dir(&theirs).unwrap();
    let exe = theirs.join("braid");
    std::fs::copy(BRAID, &exe).unwrap();
    std::fs::copy(built_preload(), theirs.join(PRELOAD)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let r = unit_root();
    // No install to fall back on: --prefix names an empty directory.
    let none = TempDir::new("no-prefix");
    for extra in [&[][..], &["--bpf"][..]] {
        let mut args = vec!["enable", "--root", r.s(), "--prefix", none.s()];
        args.extend_from_slice(extra);
        args.push("web");
        let out = braid(&exe, &args);
        let msg = text(&out);
        assert!(!out.status.success(), "{msg}");
        assert!(
            msg.contains(&format!(
                "{} is owned by uid 65534, not root",
                theirs.display()
            )),
            "the message names the directory and why: {msg}"
        );
        assert!(
            msg.contains(&format!(
                "sudo {} install --prefix {}",
                exe.display(),
                none.s()
            )) && msg.contains("/lib/braid")
                && msg.contains("Fix:"),
            "the message names the fix: {msg}"
        );
        assert!(!dropin(&r).exists(), "nothing is written");
        // --dry-run refuses the same way.
        let mut dry = args.clone();
        dry.insert(1, "--dry-run");
        assert!(!braid(&exe, &dry).status.success());
    }
    // The default prefix's fix is the plain command.
    if !Path::new("/usr/local/lib/braid").join(PRELOAD).exists() {
        let out = braid(&exe, &["enable", "--root", r.s(), "web"]);
        let msg = text(&out);
        assert!(
            !out.status.success()
                && msg.contains(&format!("run `sudo {} install` first", exe.display())),
            "{msg}"
        );
    }
    // A group-writable library next to a trusted binary is refused too.
    let open = TempDir::new("groupw");
    let exe2 = open.0.join("braid");
    std::fs::copy(BRAID, &exe2).unwrap();
    let lib2 = open.0.join(PRELOAD);
    std::fs::copy(built_preload(), &lib2).unwrap();
    std::fs::set_permissions(&lib2, std::fs::Permissions::from_mode(0o775)).unwrap();
    let out = braid(
        &exe2,
        &["enable", "--root", r.s(), "--prefix", none.s(), "web"],
    );
    let msg = text(&out);
    assert!(
        !out.status.success() && msg.contains("writable by its group or others"),
        "{msg}"
    );
    // And BRAID_PRELOAD_LIB cannot name an untrusted library either.
    let out = Command::new(BRAID)
        .args(["enable", "--root", r.s(), "--prefix", none.s(), "web"])
        .env("BRAID_PRELOAD_LIB", theirs.join(PRELOAD))
        .output()
        .unwrap();
    assert!(
        !out.status.success() && text(&out).contains("not root"),
        "{}",
        text(&out)
    );
}

#[test]
fn install_to_a_destdir_makes_root_owned_copies() {
    if !root() {
        return;
    }
    let d = TempDir::new("destdir");
    let out = braid(Path::new(BRAID), &["install", "--destdir", d.s()]);
    assert!(out.status.success(), "{}", text(&out));
    let bin = d.0.join("usr/local/bin");
    let lib = d.0.join("usr/local/lib/braid");
    let mut expect = vec![(bin.join("braid"), PathBuf::from(BRAID))];
    let braidd = Path::new(BRAID).parent().unwrap().join("braidd");
    if braidd.is_file() {
        expect.push((bin.join("braidd"), braidd));
    }
    expect.push((lib.join(PRELOAD), built_preload()));
    for (installed, from) in &expect {
        let md = std::fs::symlink_metadata(installed)
            .unwrap_or_else(|e| panic!("{}: {e}\n{}", installed.display(), text(&out)));
        assert!(md.is_file(), "{}", installed.display());
        assert_eq!(
            (md.uid(), md.gid(), md.mode() & 0o7777),
            (0, 0, 0o755),
            "{}",
            installed.display()
        );
        assert_eq!(
            std::fs::read(installed).unwrap(),
            std::fs::read(from).unwrap(),
            "{} is a copy of {}",
            installed.display(),
            from.display()
        );
        assert!(
            text(&out).contains(&installed.display().to_string()),
            "what was installed is printed: {}",
            text(&out)
        );
    }
    for dir in [&bin, &lib] {
        let md = std::fs::metadata(dir).unwrap();
        assert_eq!(
            (md.uid(), md.mode() & 0o777),
            (0, 0o755),
            "{}",
            dir.display()
        );
        // No temporary file is left behind.
        let names: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.starts_with('.')), "{names:?}");
    }
    assert!(
        !d.0.join("etc").exists(),
        "units only with --units: {}",
        text(&out)
    );

    // With --units and another prefix: the units, 0644, pointing at the prefix.
    let d2 = TempDir::new("destdir-units");
    let out = braid(
        Path::new(BRAID),
        &[
            "install",
            "--destdir",
            d2.s(),
            "--prefix",
            "/opt/braid",
            "--units",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(d2.0.join("opt/braid/bin/braid").is_file());
    assert!(d2.0.join("opt/braid/lib/braid").join(PRELOAD).is_file());
    for unit in [
        "braid.service",
        "braid-relay.service",
        "braid-relay-client.service",
    ] {
        let p = d2.0.join("etc/systemd/system").join(unit);
        let md = std::fs::metadata(&p).unwrap();
        assert_eq!(
            (md.uid(), md.mode() & 0o7777),
            (0, 0o644),
            "{}",
            p.display()
        );
        let body = std::fs::read_to_string(&p).unwrap();
        assert!(
            body.contains("ExecStart=/opt/braid/bin/") && !body.contains("/usr/local/bin/"),
            "{body}"
        );
    }
    // Installing again replaces the files in place.
    let out = braid(Path::new(BRAID), &["install", "--destdir", d.s()]);
    assert!(out.status.success(), "{}", text(&out));
    // A relative prefix is refused.
    let out = braid(
        Path::new(BRAID),
        &["install", "--destdir", d.s(), "--prefix", "opt"],
    );
    assert!(!out.status.success() && text(&out).contains("absolute"));
}

#[test]
fn enable_accepts_a_trusted_install() {
    if !root() {
        return;
    }
    let d = TempDir::new("install");
    let out = braid(Path::new(BRAID), &["install", "--destdir", d.s()]);
    assert!(out.status.success(), "{}", text(&out));
    let prefix = d.0.join("usr/local");
    let installed_braid = prefix.join("bin/braid");
    let installed_lib = prefix.join("lib/braid").join(PRELOAD);

    // The installed binary, with its prefix: the installed copies are named.
    let r = unit_root();
    let out = braid(
        &installed_braid,
        &[
            "enable",
            "--root",
            r.s(),
            "--prefix",
            prefix.to_str().unwrap(),
            "--bpf",
            "web",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(dropin(&r)).unwrap();
    assert!(
        conf.contains(&format!("LD_PRELOAD={}\"", installed_lib.display())),
        "{conf}"
    );
    assert!(
        conf.contains(&format!(
            "ExecStartPre=+{} bpf attach",
            installed_braid.display()
        )),
        "{conf}"
    );
    let out = braid(&installed_braid, &["disable", "--root", r.s(), "web"]);
    assert!(
        out.status.success() && !dropin(&r).exists(),
        "{}",
        text(&out)
    );

    // An untrusted build of braid uses the trusted install under --prefix
    // instead of the files next to it.
    let t = TempDir::new("untrusted-build");
    let theirs = t.0.join("target");
    std::fs::create_dir(&theirs).unwrap();
    let exe = theirs.join("braid");
    std::fs::copy(BRAID, &exe).unwrap();
    std::fs::copy(built_preload(), theirs.join(PRELOAD)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let r2 = unit_root();
    let out = braid(
        &exe,
        &[
            "enable",
            "--root",
            r2.s(),
            "--prefix",
            prefix.to_str().unwrap(),
            "--bpf",
            "web",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let conf = std::fs::read_to_string(dropin(&r2)).unwrap();
    assert!(
        conf.contains(&installed_lib.display().to_string())
            && conf.contains(&format!("+{} ", installed_braid.display()))
            && !conf.contains(&theirs.display().to_string()),
        "{conf}"
    );
}
