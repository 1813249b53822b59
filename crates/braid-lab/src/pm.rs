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

/// Configure the client side of `lab` for `kind` and start what it needs.
/// `braid_exe` is the `braid` binary (for `--pm braid`).
pub fn start(kind: PmKind, lab: &Lab, braid_exe: &Path) -> Result<RunningPm, LabError> {
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
            let pm = if per_connection {
                "pm = \"userspace\"\n"
            } else {
                ""
            };
            std::fs::write(
                &config,
                format!(
                    "{pm}[control]\nsocket = \"{}\"\n[policy]\nmode = \"{mode}\"\n",
                    socket.display()
                ),
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
