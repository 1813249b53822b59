//! What a scenario run leaves behind when asked to (`--logs DIR`): the MPTCP
//! events on both ends, the path manager's own log, the scenario's events and
//! (lossy-primary) every probe's latency, all with UTC wall-clock times so
//! they line up with each other.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::SystemTime;

use crate::lab::Lab;
use crate::pm::{spawn_in_netns, PmKind};
use crate::LabError;

pub struct RunLogs {
    dir: PathBuf,
    prefix: String,
    monitors: Vec<Child>,
    scenario: std::fs::File,
}

/// UTC wall-clock time as RFC 3339 with milliseconds.
pub fn wall_clock() -> String {
    humantime::format_rfc3339_millis(SystemTime::now()).to_string()
}

impl RunLogs {
    /// Start `braid monitor --json` in both namespaces of `lab`.
    pub fn start(dir: &Path, pm: PmKind, lab: &Lab, braid_exe: &Path) -> Result<RunLogs, LabError> {
        std::fs::create_dir_all(dir).map_err(|e| {
            LabError::Invalid(format!(
                "creating the --logs directory {}: {e}",
                dir.display()
            ))
        })?;
        let prefix = pm.name().replace(':', "-");
        let scenario_path = dir.join(format!("{prefix}-scenario.txt"));
        let scenario = std::fs::File::create(&scenario_path)
            .map_err(|e| LabError::Io(format!("creating {}: {e}", scenario_path.display())))?;
        let mut logs = RunLogs {
            dir: dir.to_path_buf(),
            prefix,
            monitors: Vec::new(),
            scenario,
        };
        for (side, ns) in [
            ("client", &lab.state.client_ns),
            ("server", &lab.state.server_ns),
        ] {
            let out = logs.path(&format!("{side}-events.jsonl"));
            let child = spawn_in_netns(
                ns,
                Command::new(braid_exe).args(["monitor", "--json"]),
                &out,
            )?;
            logs.monitors.push(child);
        }
        // The subscription is made within a few ms of the exec.
        std::thread::sleep(std::time::Duration::from_millis(100));
        Ok(logs)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{}-{name}", self.prefix))
    }

    /// Record a scenario event (`t_ms` after the traffic started).
    pub fn note(&mut self, t_ms: f64, what: &str) {
        let _ = writeln!(self.scenario, "{} t={t_ms:.1}ms {what}", wall_clock());
    }

    /// Write each probe reply as a line `sent-at-UTC,ms-after-start,latency-ms`,
    /// sorted by send time, so a late reply can be set beside the daemon's
    /// decisions.
    pub fn probe_timeline(&self, probe: &crate::traffic::ProbeResult) {
        let Some(started) = probe.started else {
            return;
        };
        let mut rows = probe.samples.clone();
        rows.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut out = String::from("sent_utc,sent_ms,latency_ms\n");
        for (sent_ms, latency_ms) in rows {
            let at = started + std::time::Duration::from_secs_f64(sent_ms.max(0.0) / 1e3);
            out.push_str(&format!(
                "{},{sent_ms:.1},{latency_ms:.2}\n",
                humantime::format_rfc3339_millis(at)
            ));
        }
        let path = self.path("probe.csv");
        if let Err(e) = std::fs::write(&path, out) {
            eprintln!("braid: writing {}: {e}", path.display());
        }
    }

    /// Copy the path manager's log out of the lab's state directory (which
    /// is removed with the lab) and stop the monitors.
    pub fn finish(mut self, lab: &Lab) {
        let state = crate::lab::state_dir(&lab.state.name);
        for name in ["braid-daemon.log", "mptcpd.log"] {
            let from = state.join(name);
            if from.exists() {
                let _ = std::fs::copy(&from, self.path(name));
            }
        }
        self.stop_monitors();
        eprintln!(
            "braid: logs written to {}/{}-*",
            self.dir.display(),
            self.prefix
        );
    }

    fn stop_monitors(&mut self) {
        for mut c in self.monitors.drain(..) {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }
}

impl Drop for RunLogs {
    fn drop(&mut self) {
        self.stop_monitors();
    }
}
