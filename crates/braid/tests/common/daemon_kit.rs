//! Test support shared by `daemon.rs` and `chaos.rs` (and included only by
//! them, with `#[path]`): a `braid lab` and a `braid daemon` in its client
//! namespace, both removed on every path out of a test (Drop guards).
#![allow(dead_code)]

use crate::common::{wait_for, BRAID};

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A `braid lab` (namespaces NAME-c and NAME-s); taken down on drop.
pub struct Lab {
    pub name: String,
    pub client: String,
    pub server: String,
}

impl Lab {
    /// `braid lab up --name NAME ARGS`, which must succeed.
    pub fn create(name: String, args: &[&str]) -> Lab {
        let lab = Lab {
            client: format!("{name}-c"),
            server: format!("{name}-s"),
            name,
        };
        let out = Command::new(BRAID)
            .args(["lab", "up", "--name", &lab.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lab
    }

    /// `ip -n CLIENT ARGS`, which must succeed: its output.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.client])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/braid/lab/{}", self.name))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(BRAID)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// `braid daemon` in a lab's client namespace, its standard error in a log
/// file; killed on drop.
pub struct Daemon {
    pub child: Option<Child>,
    pub client: String,
    pub socket: PathBuf,
    pub config: PathBuf,
    pub state: PathBuf,
    pub log: PathBuf,
    /// How many times it was launched.
    pub starts: u32,
}

impl Daemon {
    /// Files in the lab's directory named after `prefix` (PREFIX.sock,
    /// PREFIX.toml, PREFIX-state.json, PREFIX.log) and the configuration
    /// written: the control socket, then `config_extra`. Nothing started.
    pub fn configure(lab: &Lab, prefix: &str, config_extra: &str) -> Daemon {
        let dir = lab.dir();
        let socket = dir.join(format!("{prefix}.sock"));
        let config = dir.join(format!("{prefix}.toml"));
        // Top-level keys of `config_extra` (before its first table) must
        // come before [control].
        let split = config_extra
            .match_indices('[')
            .find(|(i, _)| *i == 0 || config_extra.as_bytes()[i - 1] == b'\n')
            .map_or(config_extra.len(), |(i, _)| i);
        let (top, tables) = config_extra.split_at(split);
        std::fs::write(
            &config,
            format!(
                "{top}[control]\nsocket = \"{}\"\n{tables}",
                socket.display()
            ),
        )
        .unwrap();
        Daemon {
            child: None,
            client: lab.client.clone(),
            socket,
            config,
            state: dir.join(format!("{prefix}-state.json")),
            log: dir.join(format!("{prefix}.log")),
            starts: 0,
        }
    }

    /// `braid -n CLIENT`, to launch with.
    pub fn in_client(&self) -> Command {
        let mut cmd = Command::new(BRAID);
        cmd.args(["-n", &self.client]);
        cmd
    }

    /// Start `cmd daemon --config .. --state-file .. ARGS`; the log is
    /// started afresh or appended to.
    pub fn launch(
        &mut self,
        mut cmd: Command,
        args: &[&str],
        env: &[(&str, &str)],
        fresh_log: bool,
    ) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(!fresh_log)
            .truncate(fresh_log)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .args(["daemon", "--config"])
            .arg(&self.config)
            .arg("--state-file")
            .arg(&self.state)
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.starts += 1;
    }

    /// Wait (10 s at most) until the control socket answers (true) or the
    /// daemon is gone.
    pub fn wait_up(&mut self) -> bool {
        let socket = self.socket.clone();
        let child = self.child.as_mut().unwrap();
        wait_for(10, || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
                || child.try_wait().unwrap().is_some()
        });
        self.child.as_mut().unwrap().try_wait().unwrap().is_none()
            && std::os::unix::net::UnixStream::connect(&socket).is_ok()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    pub fn alive(&self) -> bool {
        self.child.is_some()
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait (`secs` at most, then SIGKILL): how it ended.
    pub fn stop_within(&mut self, secs: u64) -> Result<ExitStatus, String> {
        let mut c = self.child.take().ok_or("not running")?;
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = c.try_wait().unwrap() {
                return Ok(st);
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(format!(
                    "the daemon did not stop within {secs} s of SIGTERM"
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The log's last `n` lines.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}
