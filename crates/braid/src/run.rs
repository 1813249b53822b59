//! `braid run`, `braid enable` and `braid disable`: make unmodified programs
//! and services use MPTCP, with LD_PRELOAD (plus GODEBUG for Go) or, with
//! `--bpf`, a cgroup-scoped BPF program for what LD_PRELOAD cannot reach.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use braid_apps::cgroup_run::run_in_cgroup;
use braid_apps::modes::{app_rule_path, mode_not_applied, parse_mode, reload_braidd, write_rule};
use braid_apps::preload::{append_godebug, append_preload, find_preload, scope};
use braid_apps::systemd::{
    dropin_text, reload_systemd, systemd_running, under, unit_environment, unit_name, DROPIN_NAME,
};
use braid_kernel::Error;
use braid_kernel::{bpf, cgroup};
use braid_policy::config::PathMode;
use clap::Args;

use crate::{print_json, Ctx};

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
        let status = run_in_cgroup(cmd, mode, a.bpf)?;
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
    // Replace braid with the program: its exit code and signals are its own.
    let err = cmd.exec();
    Err(Error::Invalid(format!(
        "cannot run '{}': {err}",
        a.command[0]
    )))
}

/// `--mode`: the unit's rule file for braidd, then a reload.
fn write_mode_rule(a: &EnableArgs, unit: &str, mode: PathMode) -> Result<(PathBuf, String), Error> {
    let path = write_rule(&a.root, &a.config, unit, mode)?;
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
    let (lib, exe) = braid_apps::trust::enable_paths(&unit, &a.prefix, a.bpf)?;
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
