//! Test support: network namespaces and veth paths that are removed on
//! every path out of a test (Drop runs on panic too), and helpers to run
//! `braid` inside them. Setup uses iproute2 on purpose: it is the
//! independent reference Braid is compared with.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

pub const BRAID: &str = env!("CARGO_BIN_EXE_braid");

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A unique namespace name: short (IFNAMSIZ-friendly), per process and call.
pub fn unique(tag: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("bt-{tag}-{}-{n}", std::process::id())
}

pub fn sh(args: &[&str]) {
    sh_out(args);
}

/// Run a command, require success, return stdout.
pub fn sh_out(args: &[&str]) -> String {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("run command");
    assert!(
        out.status.success(),
        "{:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Run a closure on a thread inside the named network namespace.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    braid_kernel::netns::run_in::<_, braid_kernel::Error>(ns, move || Ok(f())).unwrap()
}

pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        let name = unique(tag);
        sh(&["ip", "netns", "add", &name]);
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn ip(&self, args: &[&str]) {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh(&full);
    }

    pub fn ip_out(&self, args: &[&str]) -> String {
        let mut full = vec!["ip", "-n", &self.name];
        full.extend_from_slice(args);
        sh_out(&full)
    }

    pub fn sysctl(&self, key: &str, value: &str) {
        let (k, v) = (key.to_string(), value.to_string());
        braid_kernel::netns::run_in(&self.name, move || braid_kernel::sysctl::write(&k, &v))
            .unwrap();
    }

    /// Run `braid -n NS ARGS...`.
    pub fn braid(&self, args: &[&str]) -> Output {
        Command::new(BRAID)
            .arg("-n")
            .arg(&self.name)
            .args(args)
            .output()
            .expect("run braid")
    }

    /// Run braid, require success, return stdout.
    pub fn braid_ok(&self, args: &[&str]) -> String {
        let out = self.braid(args);
        assert!(
            out.status.success(),
            "braid {:?} failed: {}",
            args,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Run a closure on a thread inside this namespace.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        in_ns(&self.name, f)
    }

    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> std::thread::JoinHandle<T> {
        let name = self.name.clone();
        std::thread::spawn(move || {
            braid_kernel::netns::enter(&name).unwrap();
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A client and a server namespace joined by two veth paths:
/// path k: client 10.0.{k+1}.1 <-> server 10.0.{k+1}.2 (k = 0, 1).
pub struct TwoPaths {
    pub client: Netns,
    pub server: Netns,
}

impl TwoPaths {
    pub fn new(tag: &str) -> TwoPaths {
        let client = Netns::new(&format!("{tag}c"));
        let server = Netns::new(&format!("{tag}s"));
        for k in 0..2 {
            let (c, s) = (format!("c{k}"), format!("s{k}"));
            client.ip(&[
                "link",
                "add",
                &c,
                "type",
                "veth",
                "peer",
                "name",
                &s,
                "netns",
                &server.name,
            ]);
            client.ip(&["addr", "add", &format!("10.0.{}.1/24", k + 1), "dev", &c]);
            server.ip(&["addr", "add", &format!("10.0.{}.2/24", k + 1), "dev", &s]);
            client.ip(&["link", "set", &c, "up"]);
            server.ip(&["link", "set", &s, "up"]);
        }
        for ns in [&client, &server] {
            ns.ip(&[
                "mptcp",
                "limits",
                "set",
                "subflows",
                "4",
                "add_addr_accepted",
                "4",
            ]);
        }
        TwoPaths { client, server }
    }

    pub fn server_addr(port: u16) -> SocketAddr {
        SocketAddr::from(([10, 0, 1, 2], port))
    }
}

/// Wait for `cond` up to `secs`, polling; true if it became true.
pub fn wait_for(secs: u64, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    while std::time::Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    cond()
}

/// `braid -n NS --json monitor` in the background; killed on drop.
pub struct Monitor {
    child: std::process::Child,
    pub events: std::sync::mpsc::Receiver<serde_json::Value>,
}

impl Monitor {
    /// Start and wait until it has subscribed.
    pub fn start(ns: &Netns) -> Monitor {
        Monitor::with_args(&["-n", &ns.name, "--json", "monitor"]).0
    }

    /// `braid ARGS` (a monitor), started and waited for; with the line it
    /// said on stderr.
    pub fn with_args(args: &[&str]) -> (Monitor, String) {
        use std::io::{BufRead, BufReader};
        let mut child = Command::new(BRAID)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start braid monitor");
        let mut banner = String::new();
        BufReader::new(child.stderr.take().unwrap())
            .read_line(&mut banner)
            .unwrap();
        assert!(banner.contains("listening"), "monitor said: {banner}");
        let (tx, events) = std::sync::mpsc::channel();
        let stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let v: serde_json::Value =
                    serde_json::from_str(&line).expect("monitor prints JSON lines");
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        (Monitor { child, events }, banner)
    }

    /// The first event matching `pred` within `secs`, keeping none of the others.
    pub fn wait_for(
        &self,
        secs: u64,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            match self.events.recv_timeout(left) {
                Ok(ev) if pred(&ev) => return Some(ev),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }
}

impl Drop for Monitor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
