//! `braid run`, `braid enable` and `braid disable`: make unmodified programs
//! and services use MPTCP, with LD_PRELOAD (plus GODEBUG for Go) or, with
//! `--bpf`, a cgroup-scoped BPF program for what LD_PRELOAD cannot reach.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use braid_kernel::Error;
use braid_kernel::{bpf, cgroup};
use braid_policy::config::PathMode;
use braid_policy::conns::rules::run_cgroup_name;
use clap::Args;

use crate::{print_json, Ctx};

pub const PRELOAD_NAME: &str = "libbraid_preload.so";
pub const DROPIN_NAME: &str = "50-braid-mptcp.conf";

#[derive(Args)]
pub struct RunArgs {
    /// Only sockets that listen become MPTCP.
    #[arg(long, conflicts_with = "connect_only")]
    pub listen_only: bool,
    /// Only sockets that connect become MPTCP.
    #[arg(long)]
    pub connect_only: bool,
    /// Log each rewritten socket on stderr.
    #[arg(long)]
    pub debug: bool,
    /// Force MPTCP with a BPF program scoped to the program's cgroup (also
    /// reaches static binaries); needs a kernel that allows fmod_ret programs.
    #[arg(long)]
    pub bpf: bool,
    /// The MPTCP mode of the program's connections, whatever braidd's rules
    /// say: the program runs in a cgroup whose name carries it. Applied by
    /// braidd with pm = "userspace".
    #[arg(long, value_parser = ["aggregate", "handover", "interactive"])]
    pub mode: Option<String>,
    /// The program and its arguments.
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PROGRAM"
    )]
    pub command: Vec<String>,
}

#[derive(Args)]
pub struct EnableArgs {
    /// The systemd unit (".service" is added when no type is given).
    pub unit: String,
    /// Show the drop-in instead of writing it.
    #[arg(long)]
    pub dry_run: bool,
    /// Use this directory as the root of the filesystem (for tests and images).
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    #[arg(long, conflicts_with = "connect_only")]
    pub listen_only: bool,
    #[arg(long)]
    pub connect_only: bool,
    /// Also force MPTCP with BPF in the unit's cgroup (ExecStartPre/ExecStopPost).
    #[arg(long)]
    pub bpf: bool,
    /// The MPTCP mode of the unit's connections: a rule file in apps.d next
    /// to braidd's configuration, before its own rules (pm = "userspace").
    #[arg(long, value_parser = ["aggregate", "handover", "interactive"])]
    pub mode: Option<String>,
    /// braidd's configuration (its apps.d directory gets the rule).
    #[arg(long, default_value = braid_daemon::config_file::DEFAULT_PATH)]
    pub config: PathBuf,
    /// braidd's control socket, to have it read the rule at once.
    #[arg(long, default_value = "/run/braid/braid.sock")]
    pub socket: PathBuf,
    /// Where 'braid install' put braid and the preload library (PREFIX/bin,
    /// PREFIX/lib/braid); looked at before the copies next to this binary.
    /// Only files that only root can change are written into the drop-in.
    #[arg(long, default_value = crate::install::DEFAULT_PREFIX)]
    pub prefix: PathBuf,
}

#[derive(Args)]
pub struct DisableArgs {
    pub unit: String,
    #[arg(long)]
    pub dry_run: bool,
    #[arg(long, default_value = "/")]
    pub root: PathBuf,
    /// braidd's configuration (its apps.d directory holds the unit's rule).
    #[arg(long, default_value = braid_daemon::config_file::DEFAULT_PATH)]
    pub config: PathBuf,
    /// braidd's control socket, to have it drop the rule at once.
    #[arg(long, default_value = "/run/braid/braid.sock")]
    pub socket: PathBuf,
}

/// Where the unit's `--mode` rule file is, under `root`.
fn app_rule_path(root: &Path, config: &Path, unit: &str) -> PathBuf {
    use braid_daemon::config_file::{app_file, apps_dir};
    app_file(&apps_dir(&under(root, &config.to_string_lossy())), unit)
}

/// Ask braidd to read its configuration and rules again; what happened,
/// in words.
fn reload_braidd(root: &Path, socket: &Path) -> String {
    if root != Path::new("/") {
        return "braidd reads it when it next starts or reloads".into();
    }
    use braid_daemon::control::{request, Request};
    match request(socket, &Request::Reload) {
        Ok(r) if r.ok => "braidd reloaded: the unit's new connections get this mode".into(),
        Ok(r) => format!(
            "braidd refused to reload: {} (fix it, then 'braid daemon reload')",
            r.error.unwrap_or_default()
        ),
        Err(e) => format!(
            "braidd does not answer on {} ({e}): the rule applies when it starts",
            socket.display()
        ),
    }
}

fn scope(listen_only: bool, connect_only: bool) -> &'static str {
    match (listen_only, connect_only) {
        (true, _) => "listen",
        (_, true) => "connect",
        _ => "all",
    }
}

/// Where the preload library is: next to the binary, or in the install prefix.
/// Where `braid install` puts the preload library under `prefix`.
pub fn installed_preload(prefix: &Path) -> PathBuf {
    prefix.join("lib/braid").join(PRELOAD_NAME)
}

/// Where the preload library may be, in the order it is looked for: the
/// copy installed under `prefix` (when given), then next to the braid
/// executable in `dir` (a build tree), then in `dir/../lib/braid` (an
/// installed tree).
pub fn preload_candidates(dir: &Path, prefix: Option<&Path>) -> Vec<PathBuf> {
    prefix
        .map(installed_preload)
        .into_iter()
        .chain([
            dir.join(PRELOAD_NAME),
            dir.join("../lib/braid").join(PRELOAD_NAME),
        ])
        .collect()
}

pub fn find_preload() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("BRAID_PRELOAD_LIB") {
        let p = PathBuf::from(p);
        return if p.exists() {
            Ok(p)
        } else {
            Err(Error::Invalid(format!(
                "BRAID_PRELOAD_LIB points to {}, which does not exist",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe()
        .map_err(|e| Error::Invalid(format!("cannot find the braid executable: {e}")))?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let mut candidates = preload_candidates(dir, None);
    candidates.extend(["/usr/local", "/usr"].map(|p| installed_preload(Path::new(p))));
    candidates.iter().find(|p| p.exists()).map(|p| p.canonicalize().unwrap_or(p.clone())).ok_or_else(|| {
        Error::Invalid(format!(
            "the preload library {PRELOAD_NAME} was not found (looked in {}); build it with 'cargo build -p braid-preload' \
             and install it next to braid or in /usr/local/lib/braid/, or set BRAID_PRELOAD_LIB",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// `existing` with `ours` appended (space-separated, as ld.so reads it).
pub fn append_preload(existing: Option<&str>, ours: &str) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if e.split([' ', ':']).any(|x| x == ours) => e.to_string(),
        Some(e) => format!("{e} {ours}"),
        None => ours.to_string(),
    }
}

/// `existing` GODEBUG with multipathtcp=1 appended (unless it says otherwise).
pub fn append_godebug(existing: Option<&str>) -> String {
    match existing.map(str::trim).filter(|s| !s.is_empty()) {
        Some(e) if e.split(',').any(|x| x.trim().starts_with("multipathtcp=")) => e.to_string(),
        Some(e) => format!("{e},multipathtcp=1"),
        None => "multipathtcp=1".to_string(),
    }
}

pub fn run(a: RunArgs) -> Result<(), Error> {
    let lib = find_preload()?;
    let lib = lib.to_string_lossy().into_owned();
    let mut cmd = Command::new(&a.command[0]);
    cmd.args(&a.command[1..]);
    cmd.env(
        "LD_PRELOAD",
        append_preload(std::env::var("LD_PRELOAD").ok().as_deref(), &lib),
    );
    cmd.env(
        "GODEBUG",
        append_godebug(std::env::var("GODEBUG").ok().as_deref()),
    );
    cmd.env("BRAID_MPTCP_SCOPE", scope(a.listen_only, a.connect_only));
    if a.debug {
        cmd.env("BRAID_MPTCP_DEBUG", "1");
    }
    let mode = a.mode.as_deref().map(parse_mode).transpose()?;
    if let Some(m) = mode {
        if let Some(why) = mode_not_applied(m) {
            eprintln!("braid: {why}");
        }
    }
    if a.bpf || mode.is_some() {
        return run_in_cgroup(cmd, mode, a.bpf);
    }
    // Replace braid with the program: its exit code and signals are its own.
    let err = cmd.exec();
    Err(Error::Invalid(format!(
        "cannot run '{}': {err}",
        a.command[0]
    )))
}

fn parse_mode(name: &str) -> Result<PathMode, Error> {
    [
        PathMode::Aggregate,
        PathMode::Handover,
        PathMode::Interactive,
    ]
    .into_iter()
    .find(|m| m.name() == name)
    .ok_or_else(|| {
        Error::Invalid(format!(
            "unknown mode '{name}': aggregate, handover or interactive"
        ))
    })
}

/// Why `--mode` will not be applied here, if it will not: only braidd's
/// userspace path manager applies per-connection modes.
fn mode_not_applied(mode: PathMode) -> Option<String> {
    match braid_kernel::sysctl::path_manager() {
        Ok(pm) if pm == "userspace" => None,
        Ok(pm) => Some(format!(
            "--mode {} is applied by braidd with pm = \"userspace\"; this network namespace's path manager is '{pm}', so these connections get the host-wide mode (see 'braid status')",
            mode.name()
        )),
        Err(e) => Some(format!(
            "--mode {}: the path manager cannot be read ({e}); the mode is applied only by braidd with pm = \"userspace\"",
            mode.name()
        )),
    }
}

/// Run the program in a fresh cgroup: named for `mode` (braidd reads the
/// mode from the name), with the BPF program attached for that cgroup only
/// when `bpf`; detach and remove the cgroup when it ends.
fn run_in_cgroup(mut cmd: Command, mode: Option<PathMode>, bpf: bool) -> Result<(), Error> {
    let why = if bpf { "--bpf" } else { "--mode" };
    let parent = cgroup::own().ok_or_else(|| {
        Error::Invalid(format!(
            "{why} needs cgroup v2 (no cgroup2 mount or no unified cgroup for this process)"
        ))
    })?;
    let pid = std::process::id();
    let name = match mode {
        Some(m) => run_cgroup_name(pid, m),
        None => format!("braid-run-{pid}"),
    };
    let cg = parent.join(name);
    std::fs::create_dir(&cg).map_err(|e| {
        Error::Invalid(format!(
            "{why}: creating cgroup {}: {e} (the program runs in a cgroup of its own, made under this shell's; run as root or from a delegated cgroup, e.g. under systemd-run --user --scope)",
            cg.display()
        ))
    })?;
    let cleanup = |cg: &Path| {
        let _ = std::fs::remove_dir(cg);
    };
    let link = if bpf {
        let attached = cgroup::id(&cg)
            .map_err(|e| e.to_string())
            .and_then(|id| bpf::load(id).map_err(|e| e.to_string()))
            .and_then(|p| bpf::attach(&p).map_err(|e| e.to_string()));
        match attached {
            Ok(l) => Some(l),
            Err(e) => {
                cleanup(&cg);
                return Err(Error::Invalid(format!("cannot force MPTCP with BPF: {e}")));
            }
        }
    } else {
        None
    };
    let procs = cg.join("cgroup.procs");
    unsafe {
        cmd.pre_exec(move || {
            // Move this child into the cgroup before exec.
            std::fs::write(&procs, b"0")?;
            Ok(())
        });
    }
    let status = cmd.status();
    drop(link);
    cleanup(&cg);
    let status = status.map_err(|e| Error::Invalid(format!("cannot run the program: {e}")))?;
    use std::os::unix::process::ExitStatusExt;
    if let Some(sig) = status.signal() {
        // Die the same way.
        unsafe {
            libc::signal(sig, libc::SIG_DFL);
            libc::raise(sig);
        }
    }
    std::process::exit(status.code().unwrap_or(1));
}

fn unit_name(u: &str) -> Result<String, Error> {
    if u.is_empty() || u.contains('/') || u.starts_with('.') {
        return Err(Error::Invalid(format!("'{u}' is not a systemd unit name")));
    }
    Ok(if u.contains('.') {
        u.to_string()
    } else {
        format!("{u}.service")
    })
}

fn under(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Split a systemd `Environment=` value into assignments (quotes honoured).
pub fn split_environment(v: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut has = false;
    for c in v.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (None, '"' | '\'') => {
                quote = Some(c);
                has = true;
            }
            (None, c) if c.is_whitespace() => {
                if has {
                    out.push(std::mem::take(&mut cur));
                    has = false;
                }
            }
            (_, c) => {
                cur.push(c);
                has = true;
            }
        }
    }
    if has {
        out.push(cur);
    }
    out
}

/// The unit's own LD_PRELOAD and GODEBUG (unit file and other drop-ins),
/// and whether it reads an EnvironmentFile.
fn unit_environment(root: &Path, unit: &str) -> (Option<String>, Option<String>, bool) {
    let mut files = Vec::new();
    for dir in [
        "/etc/systemd/system",
        "/run/systemd/system",
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
    ] {
        let f = under(root, dir).join(unit);
        if f.exists() {
            files.push(f);
            break;
        }
    }
    for dir in [
        "/usr/lib/systemd/system",
        "/lib/systemd/system",
        "/run/systemd/system",
        "/etc/systemd/system",
    ] {
        if let Ok(rd) = std::fs::read_dir(under(root, dir).join(format!("{unit}.d"))) {
            let mut confs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "conf") && !p.ends_with(DROPIN_NAME))
                .collect();
            confs.sort();
            files.extend(confs);
        }
    }
    let (mut preload, mut godebug, mut envfile) = (None, None, false);
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap_or_default();
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with("EnvironmentFile=") {
                envfile = true;
            }
            if let Some(v) = line.strip_prefix("Environment=") {
                if v.is_empty() {
                    preload = None;
                    godebug = None;
                }
                for a in split_environment(v) {
                    if let Some(x) = a.strip_prefix("LD_PRELOAD=") {
                        preload = Some(x.to_string());
                    } else if let Some(x) = a.strip_prefix("GODEBUG=") {
                        godebug = Some(x.to_string());
                    }
                }
            }
        }
    }
    (preload, godebug, envfile)
}

pub fn dropin_text(
    unit: &str,
    lib: &str,
    preload: Option<&str>,
    godebug: Option<&str>,
    scope: &str,
    bpf_exe: Option<&str>,
) -> String {
    let mut s = format!(
        "# Written by 'braid enable {unit}': the unit's programs use MPTCP.\n\
         # Remove with 'braid disable {unit}'. The unit's own LD_PRELOAD and\n\
         # GODEBUG are kept: a drop-in's Environment= replaces them otherwise.\n\
         [Service]\n\
         Environment=\"LD_PRELOAD={}\"\n\
         Environment=\"GODEBUG={}\"\n\
         Environment=\"BRAID_MPTCP_SCOPE={scope}\"\n",
        append_preload(preload, lib),
        append_godebug(godebug),
    );
    if let Some(exe) = bpf_exe {
        let pin = format!("/sys/fs/bpf/braid/{unit}");
        s.push_str(&format!(
            "# BPF: force MPTCP in this unit's cgroup, also for static binaries.\n\
             ExecStartPre=+{exe} bpf attach --self-cgroup --pin {pin}\n\
             ExecStopPost=+{exe} bpf detach --pin {pin}\n"
        ));
    }
    s
}

fn systemd_running(root: &Path) -> bool {
    root == Path::new("/") && Path::new("/run/systemd/system").exists()
}

/// `--mode`: the unit's rule file for braidd, then a reload.
fn write_mode_rule(a: &EnableArgs, unit: &str, mode: PathMode) -> Result<(PathBuf, String), Error> {
    let path = app_rule_path(&a.root, &a.config, unit);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| Error::Invalid(format!("creating {}: {e}", dir.display())))?;
    }
    let text = braid_daemon::config_file::app_file_text(unit, mode);
    std::fs::write(&path, text)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    if a.root == Path::new("/") {
        if let Some(why) = mode_not_applied(mode) {
            eprintln!("braid: {why}");
        }
    }
    Ok((path, reload_braidd(&a.root, &a.socket)))
}

pub fn enable(ctx: &Ctx, a: EnableArgs) -> Result<(), Error> {
    let unit = unit_name(&a.unit)?;
    let mode = a.mode.as_deref().map(parse_mode).transpose()?;
    // Only files that only root can change (issue 11): the unit loads the
    // library, and with --bpf runs braid as root.
    let (lib, exe) = crate::install::enable_paths(&unit, &a.prefix, a.bpf)?;
    let lib = lib.to_string_lossy().into_owned();
    let exe = exe.map(|p| p.to_string_lossy().into_owned());
    let (preload, godebug, envfile) = unit_environment(&a.root, &unit);
    if a.bpf {
        if let Err(e) = bpf::probe() {
            eprintln!("braid: warning: the BPF part will not work on this kernel: {e}");
        }
    }
    let text = dropin_text(
        &unit,
        &lib,
        preload.as_deref(),
        godebug.as_deref(),
        scope(a.listen_only, a.connect_only),
        exe.as_deref(),
    );
    let dir = under(&a.root, "/etc/systemd/system").join(format!("{unit}.d"));
    let path = dir.join(DROPIN_NAME);
    if envfile {
        eprintln!("braid: warning: {unit} reads an EnvironmentFile=; if it sets LD_PRELOAD or GODEBUG, that file wins over this drop-in");
    }
    if a.dry_run
        || (!systemd_running(&a.root)
            && a.root == Path::new("/")
            && !Path::new("/etc/systemd/system").exists())
    {
        if !a.dry_run {
            eprintln!(
                "braid: systemd is not present here; this is the drop-in that would be written:"
            );
        }
        let rule = mode.map(|m| {
            (
                app_rule_path(&a.root, &a.config, &unit),
                braid_daemon::config_file::app_file_text(&unit, m),
            )
        });
        if ctx.json {
            print_json(
                &serde_json::json!({"path": path, "content": text, "written": false,
                "mode_rule": rule.as_ref().map(|(p, t)| serde_json::json!({"path": p, "content": t}))}),
            );
        } else {
            println!("# {}\n{text}", path.display());
            if let Some((p, t)) = &rule {
                println!("# {}\n{t}", p.display());
            }
        }
        return Ok(());
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| Error::Invalid(format!("creating {}: {e}", dir.display())))?;
    std::fs::write(&path, &text)
        .map_err(|e| Error::Invalid(format!("writing {}: {e}", path.display())))?;
    let rule = mode.map(|m| write_mode_rule(&a, &unit, m)).transpose()?;
    let reloaded = reload_systemd(&a.root);
    if ctx.json {
        print_json(
            &serde_json::json!({"path": path, "content": text, "written": true, "systemd_reloaded": reloaded,
                "mode_rule": rule.as_ref().map(|(p, said)| serde_json::json!({"path": p, "braidd": said}))}),
        );
    } else {
        println!("wrote {}", path.display());
        if let Some((p, said)) = &rule {
            println!("wrote {} ({said})", p.display());
        }
        if reloaded {
            println!("systemd reloaded; restart the unit to apply: systemctl restart {unit}");
        } else {
            println!(
                "systemd is not running here: the drop-in applies when it next loads the unit"
            );
        }
    }
    Ok(())
}

/// `systemctl daemon-reload` when systemd runs this root (no D-Bus crate needed).
fn reload_systemd(root: &Path) -> bool {
    systemd_running(root)
        && Command::new("systemctl")
            .arg("daemon-reload")
            .status()
            .is_ok_and(|s| s.success())
}

pub fn disable(ctx: &Ctx, a: DisableArgs) -> Result<(), Error> {
    let unit = unit_name(&a.unit)?;
    let dir = under(&a.root, "/etc/systemd/system").join(format!("{unit}.d"));
    let path = dir.join(DROPIN_NAME);
    let rule = app_rule_path(&a.root, &a.config, &unit);
    let found: Vec<&PathBuf> = [&path, &rule].into_iter().filter(|p| p.exists()).collect();
    if found.is_empty() {
        return Err(Error::Invalid(format!(
            "MPTCP is not enabled for {unit} (no {} and no {})",
            path.display(),
            rule.display()
        )));
    }
    if a.dry_run {
        for p in found {
            println!("would remove {}", p.display());
        }
        return Ok(());
    }
    for p in &found {
        std::fs::remove_file(p)
            .map_err(|e| Error::Invalid(format!("removing {}: {e}", p.display())))?;
    }
    let _ = std::fs::remove_dir(&dir); // only if empty
    let reloaded = reload_systemd(&a.root);
    let braidd = found
        .contains(&&rule)
        .then(|| reload_braidd(&a.root, &a.socket));
    if ctx.json {
        print_json(
            &serde_json::json!({"removed": found, "systemd_reloaded": reloaded, "braidd": braidd}),
        );
    } else {
        for p in &found {
            println!("removed {}", p.display());
        }
        if let Some(said) = braidd {
            println!(
                "{}",
                said.replace("get this mode", "follow braidd's own rules again")
            );
        }
    }
    Ok(())
}

/// Units with Braid's drop-in, for `braid status`.
pub fn enabled_units(root: &Path) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(under(root, "/etc/systemd/system"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().join(DROPIN_NAME).exists())
                .filter_map(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .strip_suffix(".d")
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[derive(clap::Subcommand)]
pub enum BpfCmd {
    /// Attach the MPTCP-forcing program for a cgroup and pin it.
    Attach {
        /// Scope it to the cgroup this command runs in (ExecStartPre in a unit).
        #[arg(long)]
        self_cgroup: bool,
        /// Scope it to this cgroup directory.
        #[arg(long, conflicts_with = "self_cgroup")]
        cgroup: Option<PathBuf>,
        /// Pin the link here (bpffs) so it outlives this command.
        #[arg(long)]
        pin: PathBuf,
    },
    /// Remove a pinned program (it detaches when unpinned).
    Detach {
        #[arg(long)]
        pin: PathBuf,
    },
    /// Say whether this kernel can force MPTCP with BPF, and why not.
    Probe,
}

pub fn bpf_cmd(ctx: &Ctx, c: BpfCmd) -> Result<(), Error> {
    match c {
        BpfCmd::Probe => {
            let r = bpf::probe();
            if ctx.json {
                print_json(
                    &serde_json::json!({"supported": r.is_ok(), "reason": r.as_ref().err().map(|e| e.to_string())}),
                );
            } else {
                if r.is_ok() {
                    println!(
                        "this kernel can force MPTCP with BPF (fmod_ret on {})",
                        bpf::HOOK
                    );
                }
            }
            r.map_err(|e| Error::Invalid(e.to_string()))
        }
        BpfCmd::Attach {
            self_cgroup,
            cgroup,
            pin,
        } => {
            let cg = match (self_cgroup, cgroup) {
                (true, _) => cgroup::own()
                    .ok_or_else(|| Error::Invalid("no cgroup v2 for this process".into()))?,
                (_, Some(c)) => c,
                _ => {
                    return Err(Error::Invalid(
                        "say which cgroup: --self-cgroup or --cgroup DIR".into(),
                    ))
                }
            };
            let id =
                cgroup::id(&cg).map_err(|e| Error::Invalid(format!("{}: {e}", cg.display())))?;
            let link = bpf::load(id)
                .and_then(|p| bpf::attach(&p))
                .map_err(|e| Error::Invalid(e.to_string()))?;
            if let Some(dir) = pin.parent() {
                let _ = std::fs::create_dir_all(dir);
            }
            let _ = std::fs::remove_file(&pin);
            bpf::pin(&link, &pin).map_err(|e| Error::Invalid(e.to_string()))
        }
        BpfCmd::Detach { pin } => match std::fs::remove_file(&pin) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::Invalid(format!("removing {}: {e}", pin.display()))),
        },
    }
}

pub fn sockopts(ctx: &Ctx) -> Result<(), Error> {
    let mptcp = braid_kernel::sockopts::survey(true)
        .map_err(|e| Error::Invalid(format!("cannot open MPTCP sockets on loopback: {e}")))?;
    let tcp = braid_kernel::sockopts::survey(false)
        .map_err(|e| Error::Invalid(format!("cannot open TCP sockets on loopback: {e}")))?;
    if ctx.json {
        print_json(&serde_json::json!({"mptcp": mptcp, "tcp": tcp}));
    } else {
        println!(
            "{:<22} {:<15} {:<6} {:<5} {:<26} read back (MPTCP)",
            "option", "on", "MPTCP", "TCP", "set (MPTCP)"
        );
        for (m, t) in mptcp.iter().zip(&tcp) {
            let yn = |b: bool| if b { "yes" } else { "no" };
            let mark = if m.works != t.works {
                "  <- differs"
            } else {
                ""
            };
            println!(
                "{:<22} {:<15} {:<6} {:<5} {:<26} {}{mark}",
                m.option,
                m.on,
                yn(m.works),
                yn(t.works),
                m.set,
                m.read_back
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_merging() {
        assert_eq!(append_preload(None, "/b.so"), "/b.so");
        assert_eq!(append_preload(Some("/a.so"), "/b.so"), "/a.so /b.so");
        assert_eq!(append_preload(Some("/a.so /b.so"), "/b.so"), "/a.so /b.so");
        assert_eq!(
            append_godebug(Some("http2debug=1")),
            "http2debug=1,multipathtcp=1"
        );
        assert_eq!(append_godebug(Some("multipathtcp=0")), "multipathtcp=0");
        assert_eq!(
            split_environment("A=1 \"B=two words\" 'C=3'"),
            vec!["A=1", "B=two words", "C=3"]
        );
    }
}
