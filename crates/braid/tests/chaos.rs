//! Chaos: one MPTCP connection between a lab's client and server carries a
//! verified byte stream in both directions for 60 s while 100 random
//! events, at random times, hit the paths (carrier loss and return,
//! blackholes, address removal and return, delay and loss changes) and the
//! daemon (SIGKILL, then a restart with the same state file), with at least
//! one path up at every instant. Then: every byte arrived, in order and
//! intact, on the same MPTCP connection; once the paths are back and the
//! daemon has settled, the kernel's endpoints, limits and default routes,
//! the state file and the daemon's status agree; after a SIGTERM nothing of
//! Braid's is left (endpoints, standby initcwnd, state).
//!
//! The run is seeded: the seed is printed (and kept with the logs in
//! /tmp/braid-chaos-SEED/ when the test fails); `BRAID_CHAOS_SEED=N`
//! replays it. The seed also picks the daemon's mode (handover or the
//! default, aggregate) unless `BRAID_CHAOS_MODE` says which;
//! `BRAID_CHAOS_KEEP_LOGS=1` keeps the logs of a run that passes too.

mod common;
use common::{in_ns, BRAID};
#[path = "common/daemon_kit.rs"]
mod daemon_kit;
use daemon_kit::{Daemon, Lab};

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

const PATHS: usize = 3;
const EVENTS: usize = 100;
const TRANSFER: Duration = Duration::from_secs(60);
/// Events fall in this window of the transfer (ms).
const FIRST_EVENT_MS: u64 = 1_000;
const LAST_EVENT_MS: u64 = 57_000;
const PORT: u16 = 5470;
/// `policy.standby_initcwnd`'s default.
const STANDBY_INITCWND: u64 = 200;
/// The operator's own initcwnd on path 2's default route (table 102).
const OPERATOR_INITCWND: u64 = 15;
/// Carrier losses per path: each one within a minute doubles the daemon's
/// carrier debounce (500 ms); five keep it at 8 s at most, so the daemon
/// settles within the test's time.
const MAX_CARRIER_CUTS: u32 = 5;
/// Longest a killed daemon stays away.
const MAX_DOWN_MS: u64 = 1_500;

/// Timing-sensitive tests take turns so they do not disturb each other on
/// a 2-core machine.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

// ---------------------------------------------------------------------
// Seeded randomness.

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn seed() -> u64 {
    match std::env::var("BRAID_CHAOS_SEED") {
        Ok(s) => {
            let s = s.trim();
            match s.strip_prefix("0x") {
                Some(h) => u64::from_str_radix(h, 16),
                None => s.parse(),
            }
            .unwrap_or_else(|_| panic!("BRAID_CHAOS_SEED={s} is not a number"))
        }
        Err(_) => {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            mix(t ^ ((std::process::id() as u64) << 32))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Handover,
    Aggregate,
}

fn mode(seed: u64) -> Mode {
    match std::env::var("BRAID_CHAOS_MODE").as_deref() {
        Ok("handover") => Mode::Handover,
        Ok("aggregate") => Mode::Aggregate,
        Ok(other) => panic!("BRAID_CHAOS_MODE={other}: handover or aggregate"),
        Err(_) if mix(seed ^ 0x6d6f_6465) & 1 == 0 => Mode::Handover,
        Err(_) => Mode::Aggregate,
    }
}

// ---------------------------------------------------------------------
// The verified stream: the lab's pattern (traffic::pattern_byte), made
// eight bytes at a time.

fn pattern_word(w: u64) -> [u8; 8] {
    mix(w.wrapping_add(0x9e37_79b9_7f4a_7c15)).to_le_bytes()
}

/// `buf[j]` = `braid_lab::traffic::pattern_byte(offset + j)`.
fn fill(buf: &mut [u8], offset: u64) {
    let (mut i, mut j) = (offset, 0usize);
    while j < buf.len() {
        let word = pattern_word(i >> 3);
        let k = (i & 7) as usize;
        let n = (8 - k).min(buf.len() - j);
        buf[j..j + n].copy_from_slice(&word[k..k + n]);
        i += n as u64;
        j += n;
    }
}

fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::WouldBlock
            | std::io::ErrorKind::TimedOut
            | std::io::ErrorKind::Interrupted
    )
}

/// Bytes sent, and why sending stopped early if it did.
type Sent = (u64, Option<String>);

/// Send the pattern until `stop`, then end the direction (DATA_FIN).
fn write_pattern(mut s: TcpStream, stop: Arc<AtomicBool>, sent_now: Arc<AtomicU64>) -> Sent {
    let _ = s.set_write_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 64 << 10];
    let mut pos = buf.len();
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if pos == buf.len() {
            fill(&mut buf, sent);
            pos = 0;
        }
        match s.write(&buf[pos..]) {
            Ok(0) => return (sent, Some("write returned 0".into())),
            Ok(n) => {
                pos += n;
                sent += n as u64;
                sent_now.store(sent, Ordering::Relaxed);
            }
            Err(e) if transient(&e) => {}
            Err(e) => return (sent, Some(format!("write at byte {sent}: {e}"))),
        }
    }
    if let Err(e) = s.shutdown(std::net::Shutdown::Write) {
        return (sent, Some(format!("shutdown after {sent} bytes: {e}")));
    }
    (sent, None)
}

#[derive(Debug, Default)]
struct Received {
    bytes: u64,
    corrupt: u64,
    first_bad: Option<u64>,
    eof: bool,
    error: Option<String>,
}

/// Read and check every byte until the end of the stream (or `abort`).
fn read_verified(mut s: TcpStream, got: Arc<AtomicU64>, abort: Arc<AtomicBool>) -> Received {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut buf = vec![0u8; 128 << 10];
    let mut want = vec![0u8; 128 << 10];
    let mut r = Received::default();
    while !abort.load(Ordering::Relaxed) {
        match s.read(&mut buf) {
            Ok(0) => {
                r.eof = true;
                break;
            }
            Ok(n) => {
                fill(&mut want[..n], r.bytes);
                if buf[..n] != want[..n] {
                    let bad: Vec<usize> = (0..n).filter(|&j| buf[j] != want[j]).collect();
                    r.first_bad.get_or_insert(r.bytes + bad[0] as u64);
                    r.corrupt += bad.len() as u64;
                }
                r.bytes += n as u64;
                got.store(r.bytes, Ordering::Relaxed);
            }
            Err(e) if transient(&e) => {}
            Err(e) => {
                r.error = Some(format!("read at byte {}: {e}", r.bytes));
                break;
            }
        }
    }
    r
}

/// What the client's MPTCP socket said while the transfer ran.
#[derive(Debug, Default)]
struct Watch {
    token: Option<u32>,
    problems: Vec<String>,
    samples: u64,
    min_subflows: Option<usize>,
    max_subflows: usize,
    no_subflow_ms: u64,
    longest_no_subflow_ms: u64,
    /// Longest time without a new byte received, up and down.
    longest_stall_ms: [u64; 2],
    /// When the connection had no established subflow (s since the start)
    /// and for how long (ms), when it was 1 s or more.
    no_subflow_periods: Vec<(f64, u64)>,
}

/// Every 100 ms: the connection's token (one MPTCP connection from start
/// to end), fallback, established subflows, progress each way.
fn watch(s: TcpStream, t0: Instant, got: [Arc<AtomicU64>; 2], stop: Arc<AtomicBool>) -> Watch {
    let mut w = Watch::default();
    let mut last = [(0u64, Instant::now()); 2];
    let mut no_subflow_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        let at = t0.elapsed().as_secs_f64();
        w.samples += 1;
        match braid_kernel::socket::subflow_info(&s) {
            Ok((info, subflows)) => {
                if info.fell_back() {
                    w.problems
                        .push(format!("t={at:.1}s: the connection fell back to TCP"));
                }
                match w.token {
                    None => w.token = Some(info.token),
                    Some(t) if t != info.token => w.problems.push(format!(
                        "t={at:.1}s: the MPTCP token changed from {t:#x} to {:#x}",
                        info.token
                    )),
                    _ => {}
                }
                let n = subflows
                    .iter()
                    .filter(|sf| sf.tcp.as_ref().is_some_and(|t| t.state == 1))
                    .count();
                w.min_subflows = Some(w.min_subflows.map_or(n, |m| m.min(n)));
                w.max_subflows = w.max_subflows.max(n);
                if n == 0 {
                    let since = *no_subflow_since.get_or_insert_with(Instant::now);
                    w.no_subflow_ms += 100;
                    w.longest_no_subflow_ms = w
                        .longest_no_subflow_ms
                        .max(since.elapsed().as_millis() as u64);
                } else if let Some(since) = no_subflow_since.take() {
                    let ms = since.elapsed().as_millis() as u64;
                    if ms >= 1000 {
                        let from = since.duration_since(t0).as_secs_f64();
                        w.no_subflow_periods.push((from, ms));
                    }
                }
            }
            Err(e) => {
                if w.problems.len() < 20 {
                    w.problems
                        .push(format!("t={at:.1}s: MPTCP_FULL_INFO failed: {e}"));
                }
            }
        }
        for d in 0..2 {
            let now = got[d].load(Ordering::Relaxed);
            if now != last[d].0 {
                last[d] = (now, Instant::now());
            }
            w.longest_stall_ms[d] =
                w.longest_stall_ms[d].max(last[d].1.elapsed().as_millis() as u64);
        }
    }
    w
}

/// Both directions of one MPTCP connection: 0 is the upload (client to
/// server), 1 the download.
struct Transfer {
    t0: Instant,
    stop_writers: Arc<AtomicBool>,
    stop_watch: Arc<AtomicBool>,
    abort: Arc<AtomicBool>,
    sent: [Arc<AtomicU64>; 2],
    got: [Arc<AtomicU64>; 2],
    writers: Vec<JoinHandle<Sent>>,
    readers: Vec<JoinHandle<Received>>,
    watcher: Option<JoinHandle<Watch>>,
    /// Joins (MP_JOIN) arrive on the listener: it stays open.
    _listener: TcpListener,
}

impl Transfer {
    fn start(lab: &Lab) -> Transfer {
        let listen = SocketAddr::from(([0, 0, 0, 0], PORT));
        let listener = in_ns(&lab.server, move || braid_kernel::socket::listen(listen))
            .expect("listen in the server namespace")
            .0;
        let target = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)), PORT);
        let (client, transport) = in_ns(&lab.client, move || braid_kernel::socket::connect(target))
            .expect("connect from the client namespace");
        let (server, _) = listener.accept().expect("accept");
        assert_eq!(transport, braid_kernel::socket::Transport::Mptcp);
        assert!(
            braid_kernel::socket::is_mptcp_active(&client).unwrap(),
            "the connection is not MPTCP"
        );
        let t0 = Instant::now();
        let stop_writers = Arc::new(AtomicBool::new(false));
        let stop_watch = Arc::new(AtomicBool::new(false));
        let abort = Arc::new(AtomicBool::new(false));
        let sent = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let got = [Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0))];
        let mut writers = Vec::new();
        let mut readers = Vec::new();
        for (d, (from, to)) in [(&client, &server), (&server, &client)]
            .into_iter()
            .enumerate()
        {
            let (w, stop, n) = (
                from.try_clone().unwrap(),
                stop_writers.clone(),
                sent[d].clone(),
            );
            writers.push(std::thread::spawn(move || write_pattern(w, stop, n)));
            let (r, g, a) = (to.try_clone().unwrap(), got[d].clone(), abort.clone());
            readers.push(std::thread::spawn(move || read_verified(r, g, a)));
        }
        let (s, g, stop) = (client, got.clone(), stop_watch.clone());
        let watcher = Some(std::thread::spawn(move || watch(s, t0, g, stop)));
        Transfer {
            t0,
            stop_writers,
            stop_watch,
            abort,
            sent,
            got,
            writers,
            readers,
            watcher,
            _listener: listener,
        }
    }

    fn elapsed_ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64
    }

    fn progress(&self) -> String {
        let l = |a: &Arc<AtomicU64>| a.load(Ordering::Relaxed);
        format!(
            "up {}/{} B, down {}/{} B received/sent",
            l(&self.got[0]),
            l(&self.sent[0]),
            l(&self.got[1]),
            l(&self.sent[1])
        )
    }

    /// Stop sending, wait up to `drain` for both streams to end, and say
    /// what each direction sent and received.
    fn finish(mut self, drain: Duration) -> ([Sent; 2], [Received; 2], Watch) {
        self.stop_writers.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + drain;
        while Instant::now() < deadline && !self.readers.iter().all(|r| r.is_finished()) {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.abort.store(true, Ordering::Relaxed);
        let mut readers = self.readers.drain(..).map(|r| r.join().unwrap());
        let received = [readers.next().unwrap(), readers.next().unwrap()];
        let mut writers = self.writers.drain(..).map(|w| w.join().unwrap());
        let sent = [writers.next().unwrap(), writers.next().unwrap()];
        self.stop_watch.store(true, Ordering::Relaxed);
        let w = self.watcher.take().unwrap().join().unwrap();
        (sent, received, w)
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        for f in [&self.stop_writers, &self.stop_watch, &self.abort] {
            f.store(true, Ordering::Relaxed);
        }
        for h in self.writers.drain(..) {
            let _ = h.join();
        }
        for h in self.readers.drain(..) {
            let _ = h.join();
        }
        if let Some(h) = self.watcher.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------
// The lab and the daemon.

impl Lab {
    fn up() -> Lab {
        let name = format!("ch{}", std::process::id() % 100_000);
        Lab::create(
            name,
            &[
                "--paths",
                "3",
                "--rate",
                "8mbit",
                "--delay",
                "10ms,25ms,40ms",
            ],
        )
    }

    /// `braid lab ARGS --name NAME`, which must succeed.
    fn lab(&self, args: &[&str]) {
        let out = Command::new(BRAID)
            .arg("lab")
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "braid lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn sysctl(&self, ns: &str, name: &str, value: &str) {
        let s = braid_lab::lab::Sysctl {
            name: name.into(),
            value: value.into(),
        };
        braid_kernel::netns::run_in::<_, braid_lab::LabError>(ns, move || s.apply()).unwrap();
    }
}

impl Daemon {
    fn new(lab: &Lab, mode: Mode) -> Daemon {
        let policy = match mode {
            Mode::Handover => "[policy]\nmode = \"handover\"\n",
            Mode::Aggregate => "",
        };
        // Endpoints removed at the stop, so that "nothing left" can be checked.
        Daemon::configure(
            lab,
            "chaos",
            &format!("[endpoints]\nremove_on_stop = true\n{policy}"),
        )
    }

    /// Start (the log is appended to) and wait until it answers.
    fn start(&mut self) {
        let cmd = self.in_client();
        self.launch(cmd, &[], &[], false);
        if !self.wait_up() {
            if let Some(st) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the daemon exited at start ({st}):\n{}", self.log_tail(40));
            }
            panic!(
                "the daemon did not answer within 10 s:\n{}",
                self.log_tail(40)
            );
        }
    }

    /// The status as JSON, the shape `braid --json status` shows.
    fn status(&self) -> Option<Value> {
        let s =
            braid_daemon::control::request(&self.socket, &braid_daemon::control::Request::Status)
                .ok()?
                .status?;
        serde_json::to_value(s).ok()
    }
}

// ---------------------------------------------------------------------
// Events.

#[derive(Debug, Clone, Copy, Default)]
struct PathModel {
    carrier_cut: bool,
    blackholed: bool,
    addr_removed: bool,
    /// Delay or loss differ from the lab's initial setting.
    tweaked: bool,
    carrier_cuts: u32,
    addr_ever_removed: bool,
}

impl PathModel {
    fn up(&self) -> bool {
        !self.carrier_cut && !self.blackholed && !self.addr_removed
    }
}

#[derive(Debug, Clone, Copy)]
enum Event {
    Carrier(usize),
    Blackhole(usize),
    AddrRemove(usize),
    AddrAdd(usize),
    Restore(usize),
    Set {
        path: usize,
        delay_ms: u64,
        loss_tenths: u64,
    },
    KillDaemon {
        down_ms: u64,
    },
    RestartDaemon,
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Event::Carrier(k) => write!(f, "lab cut {k} --carrier"),
            Event::Blackhole(k) => write!(f, "lab cut {k} --blackhole"),
            Event::AddrRemove(k) => write!(f, "lab addr {k} --remove"),
            Event::AddrAdd(k) => write!(f, "lab addr {k} --add"),
            Event::Restore(k) => write!(f, "lab restore {k}"),
            Event::Set {
                path,
                delay_ms,
                loss_tenths,
            } => write!(
                f,
                "lab set {path} --delay {delay_ms}ms --loss {}.{}%",
                loss_tenths / 10,
                loss_tenths % 10
            ),
            Event::KillDaemon { down_ms } => {
                write!(f, "daemon SIGKILL (restart in {down_ms} ms)")
            }
            Event::RestartDaemon => write!(f, "daemon restart"),
        }
    }
}

/// A random event that leaves at least one path up.
fn pick(rng: &mut Rng, paths: &[PathModel; PATHS], daemon_alive: bool) -> Event {
    let mut choices: Vec<(u64, Event)> = Vec::new();
    for (k, p) in paths.iter().enumerate() {
        let others_up = paths.iter().enumerate().any(|(j, q)| j != k && q.up());
        if others_up && !p.carrier_cut && p.carrier_cuts < MAX_CARRIER_CUTS {
            choices.push((3, Event::Carrier(k)));
        }
        if others_up && !p.blackholed {
            choices.push((3, Event::Blackhole(k)));
        }
        if others_up && !p.addr_removed {
            choices.push((2, Event::AddrRemove(k)));
        }
        if p.addr_removed {
            choices.push((2, Event::AddrAdd(k)));
        }
        if !p.up() || p.tweaked {
            choices.push((4, Event::Restore(k)));
        }
        let delay_ms = 1 + rng.below(80);
        let loss_tenths = [0, 0, 5, 10, 20, 30, 50][rng.below(7) as usize];
        choices.push((
            2,
            Event::Set {
                path: k,
                delay_ms,
                loss_tenths,
            },
        ));
    }
    if daemon_alive {
        choices.push((
            3,
            Event::KillDaemon {
                down_ms: rng.below(MAX_DOWN_MS + 1),
            },
        ));
    }
    let total: u64 = choices.iter().map(|c| c.0).sum();
    let mut x = rng.below(total);
    for (w, e) in choices {
        if x < w {
            return e;
        }
        x -= w;
    }
    unreachable!()
}

fn apply(ev: Event, lab: &Lab, paths: &mut [PathModel; PATHS], daemon: &mut Daemon) {
    let s = |k: usize| k.to_string();
    match ev {
        Event::Carrier(k) => {
            lab.lab(&["cut", &s(k), "--carrier"]);
            paths[k].carrier_cut = true;
            paths[k].carrier_cuts += 1;
        }
        Event::Blackhole(k) => {
            lab.lab(&["cut", &s(k), "--blackhole"]);
            paths[k].blackholed = true;
        }
        Event::AddrRemove(k) => {
            lab.lab(&["addr", &s(k), "--remove"]);
            paths[k].addr_removed = true;
            paths[k].addr_ever_removed = true;
        }
        Event::AddrAdd(k) => {
            lab.lab(&["addr", &s(k), "--add"]);
            paths[k].addr_removed = false;
        }
        Event::Restore(k) => {
            lab.lab(&["restore", &s(k)]);
            let p = &mut paths[k];
            (p.carrier_cut, p.blackholed, p.addr_removed, p.tweaked) = (false, false, false, false);
        }
        Event::Set {
            path,
            delay_ms,
            loss_tenths,
        } => {
            let loss = format!("{}.{}%", loss_tenths / 10, loss_tenths % 10);
            lab.lab(&[
                "set",
                &s(path),
                "--delay",
                &format!("{delay_ms}ms"),
                "--loss",
                &loss,
            ]);
            paths[path].tweaked = true;
        }
        // SIGKILL (Child::kill), and reaped.
        Event::KillDaemon { .. } => daemon.kill(),
        Event::RestartDaemon => daemon.start(),
    }
    assert!(paths.iter().any(|p| p.up()), "the test cut every path");
}

// ---------------------------------------------------------------------
// What the kernel, the state file and the daemon say.

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Endpoint {
    id: u64,
    addr: String,
    dev: String,
    /// signal 1, subflow 2, backup 4, fullmesh 8 (the kernel's bits).
    flags: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Route {
    table: u64,
    dev: String,
    initcwnd: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
struct Observed {
    endpoints: Vec<Endpoint>,
    limits: (u64, u64),
    routes: Vec<Route>,
    /// None: no file; Some(Null): unreadable.
    state: Option<Value>,
}

fn kernel_endpoints(lab: &Lab) -> Vec<Endpoint> {
    let v: Value = serde_json::from_str(&lab.ip(&["-j", "mptcp", "endpoint", "show"]))
        .unwrap_or(Value::Array(Vec::new()));
    let mut eps: Vec<Endpoint> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let bit = |k: &str, b: u64| if e[k] == true { b } else { 0 };
            Endpoint {
                id: e["id"].as_u64().unwrap(),
                addr: e["address"].as_str().unwrap_or_default().to_string(),
                dev: e["dev"].as_str().unwrap_or_default().to_string(),
                flags: bit("signal", 1) | bit("subflow", 2) | bit("backup", 4) | bit("fullmesh", 8),
            }
        })
        .collect();
    eps.sort();
    eps
}

/// (subflows, add_addr_accepted); iproute2 6.1 prints text even with -j.
fn kernel_limits(lab: &Lab) -> (u64, u64) {
    let text = lab.ip(&["mptcp", "limits", "show"]);
    let words: Vec<&str> = text.split_whitespace().collect();
    let get = |k: &str| {
        words
            .iter()
            .position(|w| *w == k)
            .and_then(|i| words.get(i + 1)?.parse().ok())
            .unwrap_or_else(|| panic!("no {k} in 'ip mptcp limits': {text}"))
    };
    (get("subflows"), get("add_addr_accepted"))
}

fn default_routes(lab: &Lab) -> Vec<Route> {
    let v: Value =
        serde_json::from_str(&lab.ip(&["-4", "-j", "route", "show", "table", "all"])).unwrap();
    let mut routes: Vec<Route> = v
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["dst"] == "default")
        .map(|r| Route {
            table: match r["table"].as_str() {
                None | Some("main") => 254,
                Some(t) => t.parse().unwrap(),
            },
            dev: r["dev"].as_str().unwrap_or_default().to_string(),
            initcwnd: r["metrics"]
                .as_array()
                .and_then(|m| m.iter().find_map(|x| x["initcwnd"].as_u64())),
        })
        .collect();
    routes.sort();
    routes
}

fn observe(lab: &Lab, daemon: &Daemon) -> Observed {
    Observed {
        endpoints: kernel_endpoints(lab),
        limits: kernel_limits(lab),
        routes: default_routes(lab),
        state: std::fs::read(&daemon.state)
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap_or(Value::Null)),
    }
}

fn ifindexes(lab: &Lab) -> BTreeMap<String, u64> {
    braid_kernel::netns::run_in(&lab.client, braid_kernel::rtnl::links)
        .unwrap()
        .into_iter()
        .map(|l| (l.name, l.index as u64))
        .collect()
}

/// What a default route's initcwnd may be when Braid has not changed it:
/// as before the daemon started, or, for a route the lab made again
/// (its path's address was removed and added back), none.
fn allowed_initcwnd(
    r: &Route,
    before: &[Route],
    paths: &[PathModel; PATHS],
) -> BTreeSet<Option<u64>> {
    let mut ok = BTreeSet::new();
    if let Some(b) = before.iter().find(|b| b.table == r.table && b.dev == r.dev) {
        ok.insert(b.initcwnd);
    }
    let remade = r
        .dev
        .strip_prefix('p')
        .and_then(|k| k.parse::<usize>().ok());
    if remade.is_some_and(|k| k < PATHS && paths[k].addr_ever_removed) {
        ok.insert(None);
    }
    ok
}

/// Disagreements between the kernel, the state file and the daemon's status.
fn inconsistencies(
    obs: &Observed,
    status: &Value,
    mode: Mode,
    ifindex: &BTreeMap<String, u64>,
    before: &[Route],
    paths: &[PathModel; PATHS],
    failed_over: bool,
) -> Vec<String> {
    let mut p = Vec::new();
    let view = &status["view"];
    let name_of: BTreeMap<u64, String> = ifindex.iter().map(|(n, i)| (*i, n.clone())).collect();
    if view["foreign_endpoints"]
        .as_array()
        .is_none_or(|a| !a.is_empty())
    {
        p.push(format!(
            "the daemon sees foreign endpoints: {}",
            view["foreign_endpoints"]
        ));
    }
    // Endpoints: kernel == status.
    let mut owned: Vec<Endpoint> = view["owned_endpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| Endpoint {
                    id: e["id"].as_u64().unwrap_or(0),
                    addr: e["addr"].as_str().unwrap_or_default().to_string(),
                    dev: e["ifindex"]
                        .as_u64()
                        .and_then(|i| name_of.get(&i).cloned())
                        .unwrap_or_default(),
                    flags: e["flags"].as_u64().unwrap_or(0),
                })
                .collect()
        })
        .unwrap_or_default();
    owned.sort();
    if owned != obs.endpoints {
        p.push(format!(
            "kernel endpoints {:?} but the daemon's status says {:?}",
            obs.endpoints, owned
        ));
    }
    // Endpoints: kernel == state file.
    let kernel_ids: BTreeSet<(u64, String)> = obs
        .endpoints
        .iter()
        .map(|e| (e.id, e.addr.clone()))
        .collect();
    let state = obs.state.clone().unwrap_or(Value::Null);
    let file_ids: BTreeSet<(u64, String)> = state["owned"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| {
                    (
                        o["id"].as_u64().unwrap_or(0),
                        o["addr"].as_str().unwrap_or_default().to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    if state.is_null() {
        p.push(format!(
            "the state file is missing or unreadable: {:?}",
            obs.state
        ));
    } else if kernel_ids != file_ids {
        p.push(format!(
            "kernel endpoints {kernel_ids:?} but the state file owns {file_ids:?}"
        ));
    }
    // Limits follow the endpoints.
    let n = obs.endpoints.len() as u64;
    let said = (
        view["limits"]["subflows"].as_u64().unwrap_or(u64::MAX),
        view["limits"]["add_addr_accepted"]
            .as_u64()
            .unwrap_or(u64::MAX),
    );
    if obs.limits != said || obs.limits != (n, n) {
        p.push(format!(
            "kernel limits (subflows, add_addr_accepted) {:?}, the daemon says {said:?}, {n} endpoints",
            obs.limits
        ));
    }
    // Standby routes: initcwnd, the state file's record, the status.
    let standby: BTreeMap<String, u64> = view["interfaces"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| {
                    Some((
                        i["name"].as_str()?.to_string(),
                        i["standby_initcwnd"].as_u64()?,
                    ))
                })
                .collect()
        })
        .unwrap_or_default();
    let changed: Vec<Value> = state["changed_routes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let record = |r: &Route| {
        changed.iter().find(|c| {
            c["ifindex"].as_u64() == ifindex.get(&r.dev).copied()
                && c["table"].as_u64() == Some(r.table)
        })
    };
    for r in &obs.routes {
        let allowed = allowed_initcwnd(r, before, paths);
        match standby.get(&r.dev) {
            Some(&w) => {
                if r.initcwnd != Some(w) {
                    p.push(format!("{r:?}: {} stands by with initcwnd {w}", r.dev));
                }
                match record(r) {
                    None => p.push(format!("{r:?} is not in the state file's changed_routes")),
                    Some(c) => {
                        let was = c["initcwnd_before"].as_u64();
                        if !allowed.contains(&was) {
                            p.push(format!(
                                "{r:?}: the state file remembers initcwnd {was:?}, it was {allowed:?}"
                            ));
                        }
                    }
                }
            }
            None => {
                if !allowed.contains(&r.initcwnd) {
                    p.push(format!(
                        "{r:?}: not standing by, its initcwnd should be {allowed:?}"
                    ));
                }
                if let Some(c) = record(r) {
                    p.push(format!(
                        "{r:?} does not stand by but the state file has {c}"
                    ));
                }
            }
        }
    }
    for c in &changed {
        let known = obs.routes.iter().any(|r| {
            standby.contains_key(&r.dev)
                && c["ifindex"].as_u64() == ifindex.get(&r.dev).copied()
                && c["table"].as_u64() == Some(r.table)
        });
        if !known {
            p.push(format!(
                "the state file has a changed route that is not a standby route: {c}"
            ));
        }
    }
    // Backup flags are the standby paths (handover), or, failed over, the
    // primary's alone; none in aggregate.
    for e in &obs.endpoints {
        let backup = e.flags & 4 != 0;
        let standby_route = standby.contains_key(&e.dev);
        let expect = mode == Mode::Handover && standby_route != failed_over;
        if backup != expect {
            p.push(format!(
                "{e:?}: backup {backup}, but standing by: {standby_route}{}",
                if failed_over { " (failed over)" } else { "" }
            ));
        }
    }
    if failed_over
        && !view["path_state"]
            .as_str()
            .is_some_and(|s| s.contains("takes over"))
    {
        p.push(format!(
            "failed over, but the daemon's path state does not say so: {}",
            view["path_state"]
        ));
    }
    if mode == Mode::Aggregate && !standby.is_empty() {
        p.push(format!("aggregate mode, yet standby routes: {standby:?}"));
    }
    p
}

/// All paths back: one endpoint per path; in handover mode the
/// secondaries standing by (or, `failed_over`, the primary). The larger
/// initial window goes with the role, not with who carries traffic now
/// (`policy::routes::standby_in`): a failed-over daemon keeps it on the
/// secondaries, which would take over again if the one carrying failed.
fn unsettled(obs: &Observed, mode: Mode, failed_over: bool) -> Vec<String> {
    let standby = |dev: &str| mode == Mode::Handover && (dev == "p0") == failed_over;
    let secondary = |dev: &str| mode == Mode::Handover && dev != "p0";
    let want: Vec<Endpoint> = (0..PATHS)
        .map(|k| Endpoint {
            id: 0,
            addr: format!("10.{}.0.1", k + 1),
            dev: format!("p{k}"),
            flags: 2 | if standby(&format!("p{k}")) { 4 } else { 0 },
        })
        .collect();
    let mut have: Vec<Endpoint> = obs
        .endpoints
        .iter()
        .map(|e| Endpoint { id: 0, ..e.clone() })
        .collect();
    have.sort_by(|a, b| a.dev.cmp(&b.dev));
    let mut p = Vec::new();
    if have != want {
        p.push(format!("endpoints {have:?}, expected {want:?}"));
    }
    for r in &obs.routes {
        if secondary(&r.dev) != (r.initcwnd == Some(STANDBY_INITCWND)) {
            p.push(format!(
                "{r:?}: a secondary: {} (initcwnd {STANDBY_INITCWND})",
                secondary(&r.dev)
            ));
        }
    }
    p
}

fn transfer_problems(sent: &[Sent; 2], received: &[Received; 2], w: &Watch) -> Vec<String> {
    let mut p = Vec::new();
    for (d, what) in ["upload", "download"].iter().enumerate() {
        let (s, r) = (&sent[d], &received[d]);
        if let Some(e) = &s.1 {
            p.push(format!("{what}: the sender failed: {e}"));
        }
        if let Some(e) = &r.error {
            p.push(format!("{what}: the receiver failed: {e}"));
        }
        if r.corrupt > 0 {
            p.push(format!(
                "{what}: {} corrupt bytes, the first at offset {:?}",
                r.corrupt, r.first_bad
            ));
        }
        if !r.eof {
            p.push(format!(
                "{what}: the stream did not end (no DATA_FIN within the drain time)"
            ));
        }
        if r.bytes != s.0 {
            p.push(format!("{what}: {} bytes sent, {} received", s.0, r.bytes));
        }
        if s.0 == 0 {
            p.push(format!("{what}: nothing was sent"));
        }
    }
    p.extend(w.problems.iter().cloned());
    if w.token.is_none() {
        p.push("the MPTCP connection was never seen (MPTCP_FULL_INFO)".into());
    }
    p
}

/// Keep the logs where a failure can be looked at, and say where.
fn keep_logs(seed: u64, events: &[String], daemon: &Daemon) -> String {
    let dir = std::env::temp_dir().join(format!("braid-chaos-{seed}"));
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(dir.join("events.txt"), events.join("\n") + "\n");
    let _ = std::fs::write(dir.join("daemon.log"), daemon.log());
    dir.display().to_string()
}

#[test]
fn chaos_keeps_one_connection_and_every_byte() {
    let _turn = heavy();
    let started = Instant::now();
    let seed = seed();
    let mode = mode(seed);
    eprintln!(
        "chaos seed {seed}, mode {mode:?} (replay: BRAID_CHAOS_SEED={seed} cargo test -p braid --test chaos)"
    );
    for i in 0..4096u64 {
        let mut b = [0u8; 1];
        fill(&mut b, i);
        assert_eq!(b[0], braid_lab::traffic::pattern_byte(i));
    }
    let mut rng = Rng(seed);

    let lab = Lab::up();
    // A large initial receive buffer keeps a returning path from overflowing
    // the MPTCP receive queue (README: a crawl of seconds, not a loss).
    for ns in [&lab.client, &lab.server] {
        lab.sysctl(ns, "net.ipv4.tcp_rmem", "4096 16777216 33554432");
    }
    // The operator's own initcwnd on a standby route must come back.
    lab.ip(&[
        "route",
        "replace",
        "table",
        "102",
        "default",
        "dev",
        "p2",
        "initcwnd",
        &OPERATOR_INITCWND.to_string(),
    ]);
    let routes_before = default_routes(&lab);
    let ifindex = ifindexes(&lab);
    let mut daemon = Daemon::new(&lab, mode);
    daemon.start();
    assert!(
        common::wait_for(10, || kernel_endpoints(&lab).len() == PATHS),
        "endpoints at start: {:?}\n{}",
        kernel_endpoints(&lab),
        daemon.log_tail(30)
    );

    // The schedule: 100 random times; what happens is drawn at each.
    let mut times: Vec<u64> = (0..EVENTS)
        .map(|_| FIRST_EVENT_MS + rng.below(LAST_EVENT_MS - FIRST_EVENT_MS))
        .collect();
    times.sort();
    let mut paths = [PathModel::default(); PATHS];
    let mut events: Vec<String> = Vec::new();
    let mut restart_at: Option<u64> = None;
    let (mut kills, mut next) = (0, 0);
    let transfer = Transfer::start(&lab);
    while next < times.len() || restart_at.is_some() {
        let restart_first = restart_at.is_some_and(|r| next >= times.len() || r <= times[next]);
        let at = if restart_first {
            restart_at.unwrap()
        } else {
            times[next]
        };
        let now = transfer.elapsed_ms();
        if at > now {
            std::thread::sleep(Duration::from_millis(at - now));
        }
        let ev = if restart_first {
            restart_at = None;
            Event::RestartDaemon
        } else {
            next += 1;
            pick(&mut rng, &paths, daemon.alive())
        };
        if let Event::KillDaemon { down_ms } = ev {
            kills += 1;
            restart_at = Some(at + down_ms);
        }
        events.push(format!(
            "t={:6.3}s {ev}",
            transfer.elapsed_ms() as f64 / 1000.0
        ));
        apply(ev, &lab, &mut paths, &mut daemon);
    }
    // The end: every path back, then the streams end.
    let now = transfer.elapsed_ms();
    let end = TRANSFER.as_millis() as u64;
    if end > now {
        std::thread::sleep(Duration::from_millis(end - now));
    }
    for k in 0..PATHS {
        apply(Event::Restore(k), &lab, &mut paths, &mut daemon);
    }
    events.push(format!(
        "t={:6.3}s every path restored; {}; the senders stop",
        transfer.elapsed_ms() as f64 / 1000.0,
        transfer.progress()
    ));
    let (sent, received, w) = transfer.finish(Duration::from_secs(20));
    let mut problems = transfer_problems(&sent, &received, &w);
    let transfer_done = started.elapsed();

    // Settled: the paths' endpoints back, and everything agreeing, twice in
    // a row. In handover mode the primary takes traffic back after
    // `hold_ms` of measured health; a daemon still failed over once the
    // connection is gone (nothing left to measure) is accepted after 10 s
    // if all else agrees, and said.
    let settling = Instant::now();
    let mut last: Option<(Observed, Value, Vec<String>)> = None;
    let mut still_failed_over;
    loop {
        let obs = observe(&lab, &daemon);
        let status = daemon.status().unwrap_or(Value::Null);
        let shape = unsettled(&obs, mode, false);
        let failed_over = mode == Mode::Handover && unsettled(&obs, mode, true).is_empty();
        let agree = inconsistencies(
            &obs,
            &status,
            mode,
            &ifindex,
            &routes_before,
            &paths,
            failed_over,
        );
        let stable = last
            .as_ref()
            .is_some_and(|(prev, _, i)| *prev == obs && i.is_empty());
        let waited = settling.elapsed();
        let done = agree.is_empty()
            && stable
            && (shape.is_empty() || failed_over && waited > Duration::from_secs(10));
        still_failed_over = done && !shape.is_empty();
        let mut issues = agree;
        if !failed_over {
            issues.extend(shape);
        }
        last = Some((obs, status, issues));
        if done || waited > Duration::from_secs(20) {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    let settle_time = settling.elapsed();
    let (running, status, issues) = last.unwrap();
    for i in issues {
        problems.push(format!("after settling: {i}"));
    }
    if !problems.is_empty() {
        problems.push(format!(
            "the daemon's view: {}\n{}",
            status["view"]["path_state"],
            serde_json::to_string_pretty(&status["view"]["interfaces"]).unwrap_or_default()
        ));
    }

    // The stop: nothing of Braid's is left.
    match daemon.stop_within(10) {
        Ok(st) if st.success() => {}
        Ok(st) => problems.push(format!("the daemon's stop: {st}")),
        Err(e) => problems.push(e),
    }
    let after = observe(&lab, &daemon);
    if !after.endpoints.is_empty() {
        problems.push(format!(
            "endpoints left after the stop: {:?}",
            after.endpoints
        ));
    }
    let key = |r: &Route| (r.table, r.dev.clone());
    if after.routes.iter().map(key).collect::<Vec<_>>()
        != routes_before.iter().map(key).collect::<Vec<_>>()
    {
        problems.push(format!(
            "default routes before {routes_before:?}, after the stop {:?}",
            after.routes
        ));
    }
    for r in &after.routes {
        let allowed = allowed_initcwnd(r, &routes_before, &paths);
        if !allowed.contains(&r.initcwnd) {
            problems.push(format!(
                "after the stop {r:?}: initcwnd should be {allowed:?} (as before the daemon)"
            ));
        }
    }
    match &after.state {
        None => {}
        Some(s)
            if s["owned"].as_array().is_some_and(|a| a.is_empty())
                && s["changed_routes"].as_array().is_some_and(|a| a.is_empty()) => {}
        Some(s) => problems.push(format!("the state file after the stop: {s}")),
    }
    let log = daemon.log();
    if log.contains("panicked") {
        problems.push("the daemon panicked (see its log)".into());
    }
    let count = |level: &str| log.lines().filter(|l| l.contains(level)).count();

    let summary = format!(
        "chaos seed {seed}, mode {mode:?}: {} events ({kills} daemon kills, {} starts); \
         up {} B, down {} B verified; subflows {:?}..{}, none for {} ms in all (longest {} ms); \
         longest stall up {} ms, down {} ms; {} WARN and {} ERROR lines in the daemon's log; \
         settled in {:.1} s{}; transfer over at {:.1} s, all done in {:.1} s",
        events.len(),
        daemon.starts,
        received[0].bytes - received[0].corrupt,
        received[1].bytes - received[1].corrupt,
        w.min_subflows,
        w.max_subflows,
        w.no_subflow_ms,
        w.longest_no_subflow_ms,
        w.longest_stall_ms[0],
        w.longest_stall_ms[1],
        count(" WARN "),
        count(" ERROR "),
        settle_time.as_secs_f64(),
        if still_failed_over {
            format!(
                " (still failed over: {})",
                status["view"]["path_state"].as_str().unwrap_or("?")
            )
        } else {
            String::new()
        },
        transfer_done.as_secs_f64(),
        started.elapsed().as_secs_f64(),
    );
    eprintln!("{summary}");
    eprintln!("events:\n{}", events.join("\n"));
    for (from, ms) in &w.no_subflow_periods {
        eprintln!("no established subflow from t={from:.1}s for {ms} ms");
    }
    if std::env::var_os("BRAID_CHAOS_KEEP_LOGS").is_some() {
        eprintln!("logs kept in {}", keep_logs(seed, &events, &daemon));
    }
    if !problems.is_empty() {
        let kept = keep_logs(seed, &events, &daemon);
        panic!(
            "{summary}\n\nPROBLEMS:\n- {}\n\nwhile running: {running:?}\nafter the stop: {after:?}\n\nEVENTS:\n{}\n\nDAEMON LOG (last 80 lines; all of it and the events in {kept}):\n{}",
            problems.join("\n- "),
            events.join("\n"),
            daemon.log_tail(80)
        );
    }
    drop(daemon);
    drop(lab);
    assert!(
        !braid_kernel::netns::list()
            .iter()
            .any(|n| n.starts_with(&format!("ch{}-", std::process::id() % 100_000))),
        "the lab's namespaces are left"
    );
}
