//! The path managers a scenario can run with, set up on the lab's client.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use braid_kernel::pm::{EndpointFlags, NewEndpoint, PathManager};
use serde::Serialize;

use crate::lab::Lab;
use crate::LabError;

pub const MPTCPD: &str = "/usr/libexec/mptcpd";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PmKind {
    /// No endpoints: single path.
    None,
    /// Static in-kernel endpoints set up front.
    Kernel,
    /// Static endpoints, the secondary ones flagged backup.
    KernelBackup,
    /// Braid's own daemon (aggregate mode).
    Braid,
    /// Braid's daemon in handover mode.
    BraidHandover,
    /// Braid's daemon in interactive mode.
    BraidInteractive,
    /// Braid's daemon as the userspace path manager, each connection in
    /// aggregate mode.
    BraidConn,
    /// ... each connection in handover mode.
    BraidConnHandover,
    /// ... each connection in interactive mode.
    BraidConnInteractive,
    /// Debian's mptcpd with --addr-flags=subflow.
    Mptcpd,
}

impl PmKind {
    pub fn parse(s: &str) -> Result<PmKind, LabError> {
        match s {
            "none" => Ok(PmKind::None),
            "kernel" => Ok(PmKind::Kernel),
            "kernel:backup" => Ok(PmKind::KernelBackup),
            "braid" | "braid:aggregate" => Ok(PmKind::Braid),
            "braid:handover" => Ok(PmKind::BraidHandover),
            "braid:interactive" => Ok(PmKind::BraidInteractive),
            "braid-conn" | "braid-conn:aggregate" => Ok(PmKind::BraidConn),
            "braid-conn:handover" => Ok(PmKind::BraidConnHandover),
            "braid-conn:interactive" => Ok(PmKind::BraidConnInteractive),
            "mptcpd" => Ok(PmKind::Mptcpd),
            other => Err(LabError::Invalid(format!(
                "unknown path manager '{other}': choose none, kernel, kernel:backup, braid, braid:handover, braid:interactive, braid-conn, braid-conn:handover, braid-conn:interactive (the per-connection path manager) or mptcpd"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            PmKind::None => "none",
            PmKind::Kernel => "kernel",
            PmKind::KernelBackup => "kernel:backup",
            PmKind::Braid => "braid",
            PmKind::BraidHandover => "braid:handover",
            PmKind::BraidInteractive => "braid:interactive",
            PmKind::BraidConn => "braid-conn",
            PmKind::BraidConnHandover => "braid-conn:handover",
            PmKind::BraidConnInteractive => "braid-conn:interactive",
            PmKind::Mptcpd => "mptcpd",
        }
    }

    /// Why this path manager cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            PmKind::None | PmKind::Kernel | PmKind::KernelBackup => None,
            PmKind::Mptcpd if !Path::new(MPTCPD).exists() => Some(format!(
                "mptcpd is not installed ({MPTCPD} is missing): 'apt-get install mptcpd' to compare with it"
            )),
            _ => None,
        }
    }

    /// Braid's daemon: its mode, and whether it is the per-connection
    /// (userspace) path manager.
    pub fn braid(self) -> Option<(&'static str, bool)> {
        match self {
            PmKind::Braid => Some(("aggregate", false)),
            PmKind::BraidHandover => Some(("handover", false)),
            PmKind::BraidInteractive => Some(("interactive", false)),
            PmKind::BraidConn => Some(("aggregate", true)),
            PmKind::BraidConnHandover => Some(("handover", true)),
            PmKind::BraidConnInteractive => Some(("interactive", true)),
            _ => None,
        }
    }
}

/// A running path manager; stopped on drop.
pub struct RunningPm {
    child: Option<Child>,
}

impl Drop for RunningPm {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            for _ in 0..50 {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// One setting of the lab daemon's `[policy]` (`--policy NAME=VALUE`),
/// to try a policy setting in the lab against the defaults it ships with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicySetting {
    pub name: String,
    /// A TOML value, written as given: `10`, `false`, `"text"`.
    pub value: String,
}

impl PolicySetting {
    pub fn parse(s: &str) -> Result<PolicySetting, LabError> {
        let bad = |why: &str| {
            LabError::Invalid(format!(
                "--policy '{s}': {why} (expected NAME=VALUE with a name of the daemon's [policy] section, e.g. standby_initcwnd=10; contrib/braid.toml lists them)"
            ))
        };
        let (name, value) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let (name, value) = (name.trim(), value.trim());
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(bad("the name is not a setting's name"));
        }
        if name == "mode" {
            return Err(bad(
                "the mode is the path manager's: --pm braid, braid:handover or braid:interactive",
            ));
        }
        if value.is_empty() {
            return Err(bad("no value"));
        }
        if value.contains(['\n', '\r']) {
            return Err(bad("the value is not one line"));
        }
        Ok(PolicySetting {
            name: name.to_string(),
            value: value.to_string(),
        })
    }
}

impl std::fmt::Display for PolicySetting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} = {}", self.name, self.value)
    }
}

/// The settings as a run of `kind` records them (`NAME = VALUE`): none
/// for a path manager other than Braid's daemon, which alone reads them.
pub fn policy_record(kind: PmKind, policy: &[PolicySetting]) -> Vec<String> {
    if kind.braid().is_none() {
        return Vec::new();
    }
    policy.iter().map(|p| p.to_string()).collect()
}

/// The lab daemon's configuration file: its control socket, its mode and
/// the run's policy settings.
pub fn daemon_config(
    socket: &Path,
    mode: &str,
    per_connection: bool,
    policy: &[PolicySetting],
) -> String {
    let pm = if per_connection {
        "pm = \"userspace\"\n"
    } else {
        ""
    };
    let mut text = format!(
        "{pm}[control]\nsocket = \"{}\"\n[policy]\nmode = \"{mode}\"\n",
        socket.display()
    );
    for setting in policy {
        text.push_str(&format!("{setting}\n"));
    }
    text
}

/// `--policy` arguments for runs of path managers `pms`, parsed and
/// checked (`check_policy`); refused when none of `pms` is Braid's
/// daemon, which alone reads them.
pub fn policy_settings(args: &[String], pms: &[PmKind]) -> Result<Vec<PolicySetting>, LabError> {
    let policy = args
        .iter()
        .map(|s| PolicySetting::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    if !policy.is_empty() && pms.iter().all(|p| p.braid().is_none()) {
        let names: Vec<&str> = pms.iter().map(|p| p.name()).collect();
        return Err(LabError::Invalid(format!(
            "--policy sets Braid's daemon's [policy], and no path manager given runs it (--pm {}): add braid, braid:handover or braid:interactive",
            names.join(",")
        )));
    }
    check_policy(&policy)?;
    Ok(policy)
}

/// Whether the daemon would take these policy settings: checked before
/// any lab is made, with the daemon's own parser, so that a typo fails at
/// once and says why rather than in the daemon's log of the first run.
fn check_policy(policy: &[PolicySetting]) -> Result<(), LabError> {
    let parse = |settings: &[PolicySetting]| {
        let text = daemon_config(
            Path::new("/run/braid/check.sock"),
            "handover",
            false,
            settings,
        );
        braid_daemon::config_file::parse(&text).map(|_| ())
    };
    for (i, setting) in policy.iter().enumerate() {
        if policy[..i].iter().any(|p| p.name == setting.name) {
            return Err(LabError::Invalid(format!(
                "--policy {} is given more than once: give each setting once",
                setting.name
            )));
        }
    }
    // One by one, to name the setting at fault; then together, as the
    // daemon will read them.
    for setting in policy {
        parse(std::slice::from_ref(setting)).map_err(|e| {
            LabError::Invalid(format!(
                "--policy {}={}: {}",
                setting.name,
                setting.value,
                without_file_position(&e)
            ))
        })?;
    }
    parse(policy).map_err(|e| {
        LabError::Invalid(format!(
            "--policy settings together: {}",
            without_file_position(&e)
        ))
    })
}

/// The parser's message without where in the generated file it was (a
/// user gave one setting, not the file): its last line, which says what
/// is wrong, less a leading "line N, ".
fn without_file_position(message: &str) -> &str {
    let last = message
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or(message);
    match last.split_once(", ") {
        Some((head, rest))
            if head
                .strip_prefix("line ")
                .is_some_and(|n| n.chars().all(|c| c.is_ascii_digit())) =>
        {
            rest
        }
        _ => last,
    }
}

/// Configure the client side of `lab` for `kind` and start what it needs.
/// `braid_exe` is the `braid` binary (for `--pm braid`); `policy` goes to
/// its daemon's `[policy]`.
pub fn start(
    kind: PmKind,
    lab: &Lab,
    braid_exe: &Path,
    policy: &[PolicySetting],
) -> Result<RunningPm, LabError> {
    if let Some(why) = kind.unavailable() {
        return Err(LabError::Invalid(why));
    }
    let st = &lab.state;
    let extra: Vec<_> = st.paths.iter().skip(1).map(|p| p.client_addr).collect();
    let extra_addrs = extra.clone();
    let ns = st.client_ns.clone();
    let limit = (st.paths.len() as u32 - 1).clamp(1, 8);
    braid_kernel::netns::run_in::<_, LabError>(&ns, move || {
        let mut pm = PathManager::open()?;
        pm.flush_endpoints()?;
        pm.set_limits(Some(limit), Some(limit))?;
        if matches!(kind, PmKind::Kernel | PmKind::KernelBackup) {
            let backup = if kind == PmKind::KernelBackup {
                EndpointFlags::BACKUP
            } else {
                0
            };
            for addr in extra {
                pm.add_endpoint(&NewEndpoint {
                    addr,
                    id: None,
                    port: None,
                    flags: EndpointFlags(EndpointFlags::SUBFLOW | backup),
                    ifindex: None,
                })?;
            }
        }
        Ok(())
    })?;
    let dir = crate::lab::state_dir(&st.name);
    let child = match kind.braid() {
        Some((mode, per_connection)) => {
            let socket = dir.join("braid.sock");
            let config = dir.join("braid.toml");
            std::fs::write(
                &config,
                daemon_config(&socket, mode, per_connection, policy),
            )
            .map_err(|e| LabError::Io(format!("writing {}: {e}", config.display())))?;
            let child = spawn_in_netns(
                &ns,
                Command::new(braid_exe)
                    .arg("daemon")
                    .arg("--config")
                    .arg(&config)
                    .arg("--state-file")
                    .arg(dir.join("braid-daemon-state.json")),
                &dir.join("braid-daemon.log"),
            )?;
            // Ready once the daemon answers on its control socket: it is
            // bound before the daemon's first decisions and connecting
            // succeeds then, but the answer comes after them. A connection
            // opened before the daemon's first endpoints existed never got
            // its second subflow from the kernel (about 1 run in 10, which
            // the daemon repaired only after a second).
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !daemon_answers(&socket) {
                if std::time::Instant::now() > deadline {
                    let log =
                        std::fs::read_to_string(dir.join("braid-daemon.log")).unwrap_or_default();
                    return Err(LabError::Io(format!(
                        "the braid daemon did not start: {}",
                        log.trim()
                    )));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            Some(child)
        }
        None if kind == PmKind::Mptcpd => Some(spawn_in_netns(
            &ns,
            Command::new(MPTCPD).args([
                "--log=stderr",
                "--path-manager=addr_adv",
                "--addr-flags=subflow",
                "--notify-flags=existing,skip_link_local,skip_loopback",
            ]),
            &crate::lab::state_dir(&st.name).join("mptcpd.log"),
        )?),
        _ => None,
    };
    let running = RunningPm { child };
    if kind == PmKind::Mptcpd {
        wait_for_endpoints(
            &ns,
            &extra_addrs,
            &crate::lab::state_dir(&st.name).join("mptcpd.log"),
        )?;
    }
    Ok(running)
}

/// Wait until the client's endpoint table (in `ns`) holds every address
/// of `addrs`: mptcpd adds them on its own time, and a connection made
/// before would never get those subflows (see docs/design.md), which
/// would compare mptcpd on one path.
fn wait_for_endpoints(ns: &str, addrs: &[std::net::IpAddr], log: &Path) -> Result<(), LabError> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let have = braid_kernel::netns::run_in::<_, LabError>(ns, || {
            Ok(PathManager::open()?.endpoints()?)
        })?;
        let missing: Vec<String> = addrs
            .iter()
            .filter(|a| !have.iter().any(|e| e.addr == **a))
            .map(|a| a.to_string())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(LabError::Io(format!(
                "mptcpd added no endpoint for {} within 5 s, so the comparison would be single-path; its log: {}",
                missing.join(", "),
                text.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the daemon behind `socket` answers a status request.
fn daemon_answers(socket: &Path) -> bool {
    use braid_daemon::control::{request, Request};
    request(socket, &Request::Status).is_ok_and(|reply| reply.ok)
}

/// Start a program inside a named network namespace (setns between fork
/// and exec), its output going to `log`.
pub fn spawn_in_netns(ns: &str, cmd: &mut Command, log: &Path) -> Result<Child, LabError> {
    let log = std::fs::File::create(log)
        .map_err(|e| LabError::Io(format!("creating {}: {e}", log.display())))?;
    let file = std::fs::File::open(braid_kernel::netns::path(ns)?)
        .map_err(|e| LabError::Io(format!("opening namespace {ns}: {e}")))?;
    let fd = file.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // Ends with the lab's process (even if it is killed), as long
            // as the thread that started it lives: call from the main one.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
            Ok(())
        });
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(log.try_clone().map_err(|e| LabError::Io(e.to_string()))?)
        .stderr(log)
        .spawn()
        .map_err(|e| LabError::Io(format!("starting {:?}: {e}", cmd.get_program())))?;
    drop(file);
    Ok(child)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_settings_reach_the_daemons_config_and_bad_ones_say_why() {
        let ok = PolicySetting::parse(" standby_initcwnd = 10 ").unwrap();
        assert_eq!(ok.to_string(), "standby_initcwnd = 10");
        let text = daemon_config(
            Path::new("/run/x.sock"),
            "handover",
            true,
            std::slice::from_ref(&ok),
        );
        let cfg = braid_daemon::config_file::parse(&text).unwrap();
        assert_eq!(cfg.policy.standby_initcwnd, 10);
        assert!(text.starts_with("pm = \"userspace\"\n"), "{text}");
        check_policy(&[ok]).unwrap();

        for (arg, why) in [
            ("stall_ms", "no '='"),
            ("=5", "not a setting's name"),
            ("a.b=5", "not a setting's name"),
            ("stall_ms=", "no value"),
            ("mode=\"aggregate\"", "the mode is the path manager's"),
            ("stall_ms=1\n[control]", "not one line"),
        ] {
            let e = PolicySetting::parse(arg).unwrap_err().to_string();
            assert!(e.contains(why) && e.contains("NAME=VALUE"), "{arg}: {e}");
        }
        for (arg, why) in [
            ("no_such=1", "--policy no_such=1: unknown field `no_such`"),
            (
                "stall_ms=\"soon\"",
                "--policy stall_ms=\"soon\": invalid type",
            ),
            (
                "standby_initcwnd=1000",
                "--policy standby_initcwnd=1000: key 'policy.standby_initcwnd': must be between 0",
            ),
        ] {
            let e = check_policy(&[PolicySetting::parse(arg).unwrap()])
                .unwrap_err()
                .to_string();
            assert!(e.contains(why) && !e.contains('\n'), "{arg}: {e}");
        }
        let twice = ["stall_ms=150", "stall_ms=200"].map(|a| PolicySetting::parse(a).unwrap());
        let e = check_policy(&twice).unwrap_err().to_string();
        assert!(
            e.contains("--policy stall_ms is given more than once"),
            "{e}"
        );
    }
}
