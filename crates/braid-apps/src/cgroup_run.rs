//! A program in a cgroup of its own: named for its mode (braidd's
//! userspace path manager reads the mode from the name), with the
//! MPTCP-forcing BPF program attached for that cgroup only when asked.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, ExitStatus};

use braid_kernel::{bpf, cgroup, Error};
use braid_policy::config::PathMode;
use braid_policy::conns::rules::run_cgroup_name;

/// Run the program in a fresh cgroup: named for `mode` (braidd reads the
/// mode from the name), with the BPF program attached for that cgroup only
/// when `bpf`; detach and remove the cgroup when it ends. The program's
/// exit status is returned.
pub fn run_in_cgroup(
    mut cmd: Command,
    mode: Option<PathMode>,
    bpf: bool,
) -> Result<ExitStatus, Error> {
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
    // Opened before the fork: between fork and exec only async-signal-safe
    // calls are sound (no allocation), so the child just write(2)s to it.
    // std opens it close-on-exec, so the program does not inherit it.
    let procs_path = cg.join("cgroup.procs");
    let procs = match std::fs::OpenOptions::new().write(true).open(&procs_path) {
        Ok(f) => f,
        Err(e) => {
            drop(link);
            cleanup(&cg);
            return Err(Error::Invalid(format!(
                "{why}: opening {}: {e}",
                procs_path.display()
            )));
        }
    };
    let procs_fd = procs.as_raw_fd();
    unsafe {
        cmd.pre_exec(move || {
            // Move this child into the cgroup before exec ("0": the writer).
            if libc::write(procs_fd, b"0".as_ptr().cast(), 1) == 1 {
                Ok(())
            } else {
                Err(std::io::Error::last_os_error())
            }
        });
    }
    let status = cmd.status();
    drop(procs);
    drop(link);
    cleanup(&cg);
    status.map_err(|e| Error::Invalid(format!("cannot run the program: {e}")))
}
