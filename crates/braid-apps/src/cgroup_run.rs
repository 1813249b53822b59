//! A program in a cgroup of its own: named for its mode (braidd's
//! userspace path manager reads the mode from the name), with the
//! MPTCP-forcing BPF program attached for that cgroup only when asked.

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
    status.map_err(|e| Error::Invalid(format!("cannot run the program: {e}")))
}
