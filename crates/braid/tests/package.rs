//! The .deb from scripts/package (issue 15): built from this build's
//! binaries (`--profile dev --no-build`), installed with dpkg into an empty
//! root, checked file by file, run from there (`braid --version`, `braid
//! status`, `braid run`, and braidd started as braid.service's ExecStart=
//! says, in a fresh network namespace, then stopped with SIGTERM as
//! systemctl does), then purged: nothing may be left but dpkg's database.

mod common;
use common::{unique, Netns, BRAID};

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const UNITS: [&str; 3] = ["braid", "braid-relay", "braid-relay-client"];

/// A directory under /tmp, removed on every path out.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// braidd as systemd would run it, its stderr in a file (the journal):
/// killed on every path out.
struct Service(Child, PathBuf);

impl Service {
    fn log(&self) -> String {
        fs::read_to_string(&self.1).unwrap_or_default()
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[track_caller]
fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dpkg --root=ROOT ARGS`. Maintainer scripts run without chroot (the
/// root has no /bin/sh) with DPKG_ROOT set, which they honour.
fn dpkg(root: &Path, args: &[&str]) -> Output {
    Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .arg("--force-script-chrootless")
        .args(args)
        .output()
        .unwrap()
}

/// Every path under `dir`, relative to it.
fn walk(dir: &Path, base: &Path, out: &mut Vec<PathBuf>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        out.push(p.strip_prefix(base).unwrap().to_path_buf());
        if p.is_dir() && !p.is_symlink() {
            walk(&p, base, out);
        }
    }
}

/// The values of `key=` lines in a unit's [Service] section.
fn unit_values(text: &str, key: &str) -> Vec<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .map(str::to_string)
        .collect()
}

fn cstr(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

/// `program` with a clean environment, in the network namespace `ns` and
/// a private mount namespace where /run is `run` (so /run/braid is the
/// unit's runtime directory and nothing touches the host's) and /etc/braid
/// is the package's when the host has one (else the missing file means the
/// defaults, which the packaged file spells out).
fn confined(program: &Path, root: &Path, ns: &Netns, run: &Path) -> Command {
    let netns = fs::File::open(format!("/run/netns/{}", ns.name)).unwrap();
    let (none, slash, runc, etc_host) = (
        CString::new("none").unwrap(),
        CString::new("/").unwrap(),
        cstr(run),
        CString::new("/etc/braid").unwrap(),
    );
    let etc_pkg = cstr(&root.join("etc/braid"));
    let bind_etc = Path::new("/etc/braid").is_dir();
    let mut cmd = Command::new(program);
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    // SAFETY: only async-signal-safe calls on values prepared before the
    // fork; any failure aborts the start, so the program never runs in the
    // host's namespaces.
    unsafe {
        cmd.pre_exec(move || {
            let check = |r: libc::c_int| {
                if r == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            };
            check(libc::setns(
                std::os::fd::AsRawFd::as_raw_fd(&netns),
                libc::CLONE_NEWNET,
            ))?;
            check(libc::unshare(libc::CLONE_NEWNS))?;
            check(libc::mount(
                none.as_ptr(),
                slash.as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ))?;
            check(libc::mount(
                runc.as_ptr(),
                c"/run".as_ptr(),
                std::ptr::null(),
                libc::MS_BIND,
                std::ptr::null(),
            ))?;
            if bind_etc {
                check(libc::mount(
                    etc_pkg.as_ptr(),
                    etc_host.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ))?;
            }
            Ok(())
        });
    }
    cmd
}

/// Start the unit's ExecStart= (programs under `root`) as systemd would,
/// [`confined`]: the unit's Environment=, its RuntimeDirectory= created,
/// NOTIFY_SOCKET for Type=notify.
fn start_unit(unit: &str, root: &Path, ns: &Netns, run: &Path, notify: &Path) -> Service {
    let mut argv: Vec<String> = unit_values(unit, "ExecStart")[0]
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let program = root.join(argv.remove(0).trim_start_matches('/'));
    for dir in unit_values(unit, "RuntimeDirectory") {
        let d = run.join(dir);
        fs::create_dir_all(&d).unwrap();
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let mut cmd = confined(&program, root, ns, run);
    cmd.args(&argv)
        .env("NOTIFY_SOCKET", notify)
        .stdout(Stdio::null())
        .stderr(fs::File::create(run.with_file_name("braidd.log")).unwrap());
    for e in unit_values(unit, "Environment") {
        let (k, v) = e.split_once('=').unwrap();
        cmd.env(k, v);
    }
    Service(cmd.spawn().unwrap(), run.with_file_name("braidd.log"))
}

/// What systemctl start waits for with Type=notify: READY=1.
fn wait_ready(sock: &UnixDatagram, svc: &mut Service) {
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = sock.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n])
                .lines()
                .any(|l| l == "READY=1")
            {
                return;
            }
        }
        if let Some(status) = svc.0.try_wait().unwrap() {
            panic!("braidd exited before READY=1 ({status}): {}", svc.log());
        }
    }
    panic!("braidd sent no READY=1 in 20 s: {}", svc.log());
}

#[test]
fn the_deb_installs_runs_and_purges_clean() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root (dpkg installs root-owned files, network namespaces)");
        return;
    }
    for tool in ["dpkg-deb", "dpkg"] {
        if !have(tool) {
            eprintln!(
                "skipped: {tool} is not installed (not a Debian system); the .deb is not tested"
            );
            return;
        }
    }
    let started = Instant::now();
    let tmp = TempDir(std::env::temp_dir().join(unique("deb")));
    fs::create_dir_all(&tmp.0).unwrap();
    // `braid run`/`enable` only trust root-owned paths no one else can write.
    fs::set_permissions(&tmp.0, fs::Permissions::from_mode(0o755)).unwrap();

    // Build: the binaries cargo built for this test run.
    let target = Path::new(BRAID).parent().unwrap().parent().unwrap();
    let out = tmp.0.join("out");
    let text = ok(
        Command::new(repo().join("scripts/package"))
            .args(["--profile", "dev", "--no-build", "--out"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", target)
            .output()
            .unwrap(),
        "scripts/package",
    );
    let version = env!("CARGO_PKG_VERSION");
    let arch = ok(
        Command::new("dpkg")
            .arg("--print-architecture")
            .output()
            .unwrap(),
        "dpkg",
    );
    let deb = out.join(format!("braid_{version}_{}.deb", arch.trim()));
    assert!(deb.is_file(), "no {} ({text})", deb.display());
    let fields = ok(
        Command::new("dpkg-deb")
            .arg("--field")
            .arg(&deb)
            .output()
            .unwrap(),
        "dpkg-deb --field",
    );
    assert!(fields.contains("\nDepends: libc6 (>= 2."), "{fields}");
    assert!(fields.contains("\nRecommends: iproute2\n"), "{fields}");

    // An empty root with an empty dpkg database.
    let root = tmp.0.join("root");
    let admin = root.join("var/lib/dpkg");
    for d in ["info", "updates"] {
        fs::create_dir_all(admin.join(d)).unwrap();
    }
    for f in ["status", "available"] {
        fs::write(admin.join(f), "").unwrap();
    }
    // Directories the system (systemd) owns, not the package.
    fs::create_dir_all(root.join("etc/systemd/system")).unwrap();
    fs::create_dir_all(root.join("run")).unwrap();
    // libc6 and libgcc-s1 are the host's: this database does not know them.
    let install = dpkg(
        &root,
        &["--force-depends", "--install", deb.to_str().unwrap()],
    );
    ok(install, "dpkg --install");
    let status = ok(
        Command::new("dpkg-query")
            .arg(format!("--admindir={}", admin.display()))
            .args(["-W", "-f", "${Status} ${Conffiles}\n", "braid"])
            .output()
            .unwrap(),
        "dpkg-query",
    );
    assert!(status.starts_with("install ok installed"), "{status}");
    assert!(status.contains("/etc/braid/braid.toml "), "{status}");
    // Every file matches the package's checksums (DEBIAN/md5sums).
    let verify = dpkg(&root, &["--verify", "braid"]);
    let problems = ok(verify, "dpkg --verify");
    assert!(problems.is_empty(), "dpkg --verify: {problems}");

    // Every file, with its mode, owned by root.
    let files = [
        ("usr/bin/braid", 0o755),
        ("usr/bin/braidd", 0o755),
        ("usr/lib/braid/libbraid_preload.so", 0o755),
        ("usr/lib/systemd/system/braid.service", 0o644),
        ("usr/lib/systemd/system/braid-relay.service", 0o644),
        ("usr/lib/systemd/system/braid-relay-client.service", 0o644),
        ("etc/braid/braid.toml", 0o644),
        ("usr/share/man/man1/braid.1.gz", 0o644),
        ("usr/share/man/man1/braid-status.1.gz", 0o644),
        ("usr/share/man/man1/braid-completions.1.gz", 0o644),
        ("usr/share/man/man8/braidd.8.gz", 0o644),
        ("usr/share/bash-completion/completions/braid", 0o644),
        ("usr/share/zsh/vendor-completions/_braid", 0o644),
        ("usr/share/fish/vendor_completions.d/braid.fish", 0o644),
        ("usr/share/doc/braid/copyright", 0o644),
    ];
    for (f, mode) in files {
        let md = fs::metadata(root.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(md.is_file(), "{f}");
        assert_eq!(md.mode() & 0o7777, mode, "{f}");
        assert_eq!((md.uid(), md.gid()), (0, 0), "{f}");
    }
    assert_eq!(
        fs::read(root.join("etc/braid/braid.toml")).unwrap(),
        fs::read(repo().join("contrib/braid.toml")).unwrap()
    );
    assert!(
        !root.join("usr/share/man/man1/braid-man.1.gz").exists(),
        "the hidden `braid man` has no page"
    );

    // The units start programs the package holds, under /usr.
    for u in UNITS {
        let text =
            fs::read_to_string(root.join(format!("usr/lib/systemd/system/{u}.service"))).unwrap();
        assert!(!text.contains("/usr/local"), "{u}: {text}");
        for key in ["ExecStart", "ExecStartPre", "ExecStopPost", "ExecReload"] {
            for cmd in unit_values(&text, key) {
                let program = cmd.split_whitespace().next().unwrap();
                if program.starts_with("/usr/bin/braid") {
                    assert!(root.join(&program[1..]).is_file(), "{u}: {cmd}");
                }
            }
        }
    }

    // The installed programs run on this host.
    let braid = root.join("usr/bin/braid");
    let v = ok(
        Command::new(&braid).arg("--version").output().unwrap(),
        "braid --version",
    );
    assert_eq!(v.trim(), format!("braid {version}"));
    ok(
        Command::new(&braid).arg("status").output().unwrap(),
        "braid status",
    );
    let braidd = root.join("usr/bin/braidd");
    ok(
        Command::new(&braidd)
            .args(["--check-config", "--config"])
            .arg(root.join("etc/braid/braid.toml"))
            .output()
            .unwrap(),
        "braidd --check-config",
    );
    // `braid run` finds the packaged preload library (../lib/braid).
    let lib = root.join("usr/lib/braid/libbraid_preload.so");
    let preload = ok(
        Command::new(&braid)
            .args(["run", "sh", "-c", "printf %s \"$LD_PRELOAD\""])
            .output()
            .unwrap(),
        "braid run",
    );
    assert_eq!(preload, lib.to_str().unwrap());
    // `braid enable` trusts it (root-owned all the way up) and writes a
    // drop-in naming it; the package's removal takes the drop-in out.
    let enabled = ok(
        Command::new(&braid)
            .args(["enable", "nginx", "--root"])
            .arg(&root)
            .output()
            .unwrap(),
        "braid enable",
    );
    let dropin = root.join("etc/systemd/system/nginx.service.d/50-braid-mptcp.conf");
    assert!(
        fs::read_to_string(&dropin)
            .unwrap()
            .contains(lib.to_str().unwrap()),
        "{enabled}"
    );

    // braidd started as braid.service says, stopped as systemctl stops it.
    let unit = fs::read_to_string(root.join("usr/lib/systemd/system/braid.service")).unwrap();
    assert_eq!(unit_values(&unit, "Type"), ["notify"]);
    assert_eq!(unit_values(&unit, "ExecStart"), ["/usr/bin/braidd"]);
    let ns = Netns::new("deb");
    // An address for braidd to make an endpoint of, and someone else's
    // endpoint it must leave alone.
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"]);
    ns.ip(&["addr", "add", "10.77.0.1/24", "dev", "p0"]);
    ns.ip(&["link", "set", "p0", "up"]);
    ns.ip(&["link", "set", "p1", "up"]);
    ns.ip(&["route", "add", "default", "via", "10.77.0.254", "dev", "p0"]);
    ns.ip(&["mptcp", "endpoint", "add", "10.77.0.9", "id", "9", "signal"]);
    let run = tmp.0.join("run");
    fs::create_dir_all(&run).unwrap();
    let notify = tmp.0.join("notify.sock");
    let sock = UnixDatagram::bind(&notify).unwrap();
    let mut svc = start_unit(&unit, &root, &ns, &run, &notify);
    wait_ready(&sock, &mut svc);
    let control = run.join("braid/braid.sock");
    let shown = ok(
        Command::new(&braid)
            .args(["-n", &ns.name, "status", "--socket"])
            .arg(&control)
            .output()
            .unwrap(),
        "braid status --socket",
    );
    assert!(
        shown.contains(&format!("daemon          running (pid {}", svc.0.id())),
        "{shown}\n{}",
        svc.log()
    );
    let endpoints = || ns.ip_out(&["mptcp", "endpoint", "show"]);
    assert!(
        common::wait_for(10, || endpoints().contains("10.77.0.1 ")),
        "braidd made no endpoint: {}\n{}",
        endpoints(),
        svc.log()
    );
    // SAFETY: a signal
    assert_eq!(unsafe { libc::kill(svc.0.id() as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let exit = loop {
        if let Some(s) = svc.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "braidd ignored SIGTERM for 10 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "braidd stopped with {exit}: {}", svc.log());
    assert!(!control.exists(), "the control socket outlived the daemon");
    // Stopped, braidd leaves its endpoint for the next start to adopt; what
    // the package's prerm runs after stopping it removes that one only.
    let state = run.join("braid/daemon-state.json");
    assert!(endpoints().contains("10.77.0.1 ") && state.exists());
    let removed = ok(
        confined(&braidd, &root, &ns, &run)
            .arg("--remove-endpoints")
            .output()
            .unwrap(),
        "braidd --remove-endpoints",
    );
    assert!(removed.contains("10.77.0.1"), "{removed}");
    let left = endpoints();
    assert!(
        !left.contains("10.77.0.1 ") && left.contains("10.77.0.9 "),
        "{left}"
    );
    assert!(!state.exists());

    // Manual pages render, every one of them.
    let mut pages = Vec::new();
    for sect in ["man1", "man8"] {
        for e in fs::read_dir(root.join("usr/share/man").join(sect)).unwrap() {
            pages.push(e.unwrap().path());
        }
    }
    assert!(pages.len() > 20, "{pages:?}");
    let man = have("man");
    for p in &pages {
        let roff = ok(
            Command::new("gzip").arg("-dc").arg(p).output().unwrap(),
            "gzip -dc",
        );
        assert!(
            roff.lines().any(|l| l.starts_with(".TH ")),
            "{}: no .TH",
            p.display()
        );
        if man {
            let out = Command::new("man")
                .arg("-l")
                .arg(p)
                .env("MANWIDTH", "80")
                .env("MAN_KEEP_STDERR", "1")
                .output()
                .unwrap();
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(
                out.status.success() && out.stdout.len() > 100 && err.trim().is_empty(),
                "man -l {}: {err}",
                p.display()
            );
        }
    }
    if !man {
        eprintln!("man is not installed: the pages were checked for .TH only");
    }
    // braidd's page (hand-written) describes every option braidd knows.
    let help = ok(
        Command::new(&braidd).arg("--help").output().unwrap(),
        "braidd --help",
    );
    let page = ok(
        Command::new("gzip")
            .arg("-dc")
            .arg(root.join("usr/share/man/man8/braidd.8.gz"))
            .output()
            .unwrap(),
        "gzip -dc",
    )
    .replace("\\-", "-");
    for opt in help
        .split_whitespace()
        .filter(|w| w.starts_with("--"))
        .map(|w| w.trim_end_matches([',', ']']))
    {
        assert!(page.contains(opt), "braidd.8 does not describe {opt}");
    }

    // Completions load.
    let bash = root.join("usr/share/bash-completion/completions/braid");
    let complete = ok(
        Command::new("bash")
            .arg("-c")
            .arg(format!("source '{}' && complete -p braid", bash.display()))
            .output()
            .unwrap(),
        "bash completion",
    );
    assert!(complete.contains("_braid") && complete.trim_end().ends_with(" braid"));
    for (shell, file) in [
        ("zsh", "usr/share/zsh/vendor-completions/_braid"),
        ("fish", "usr/share/fish/vendor_completions.d/braid.fish"),
    ] {
        if have(shell) {
            ok(
                Command::new(shell)
                    .arg("-n")
                    .arg(root.join(file))
                    .output()
                    .unwrap(),
                shell,
            );
        }
    }

    // What systemd and the daemon leave behind on a real host: the link
    // `systemctl enable braid` makes (made by systemctl itself, offline,
    // when it is here: the unit's [Install] section works) and the runtime
    // directory (RuntimeDirectoryPreserve=yes).
    let wants = root.join("etc/systemd/system/multi-user.target.wants");
    if have("systemctl") {
        ok(
            Command::new("systemctl")
                .arg(format!("--root={}", root.display()))
                .args(["enable", "braid.service"])
                .output()
                .unwrap(),
            "systemctl --root enable braid",
        );
    } else {
        fs::create_dir_all(&wants).unwrap();
        symlink(
            "/usr/lib/systemd/system/braid.service",
            wants.join("braid.service"),
        )
        .unwrap();
    }
    assert!(wants.join("braid.service").is_symlink());
    fs::create_dir_all(root.join("run/braid")).unwrap();
    fs::write(root.join("run/braid/daemon-state.json"), "{}").unwrap();

    // Removal keeps the conffile and takes the drop-in out; purge removes
    // everything.
    ok(dpkg(&root, &["--remove", "braid"]), "dpkg --remove");
    assert!(root.join("etc/braid/braid.toml").is_file());
    assert!(!root.join("usr/bin/braid").exists());
    assert!(!dropin.exists(), "the drop-in outlived the package");
    ok(dpkg(&root, &["--purge", "braid"]), "dpkg --purge");
    let mut left = Vec::new();
    walk(&root, &root, &mut left);
    let system = [
        "var",
        "var/lib",
        "etc",
        "etc/systemd",
        "etc/systemd/system",
        "run",
    ];
    let left: Vec<_> = left
        .into_iter()
        .filter(|p| !p.starts_with("var/lib/dpkg") && !system.iter().any(|s| p == Path::new(s)))
        .collect();
    assert!(left.is_empty(), "left behind by the purge: {left:?}");
    eprintln!("package test took {:.1?}", started.elapsed());
}
