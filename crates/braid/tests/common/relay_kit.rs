//! Test support shared by `relay.rs` and `transparent.rs` (and included
//! only by them, with `#[path]`): temp directories, spawned processes,
//! `braid relay status` / `keygen`, and the origin test server with the
//! client side of its protocol.
//!
//! The protocol: the client sends `up` and `down` (u64 BE), then `up`
//! bytes of one pseudo-random pattern, while the origin sends `down` bytes
//! of another; once the origin has read the client's end of stream it
//! sends a trailer (bytes received, bytes that did not match) and closes.
#![allow(dead_code)]

use crate::common::{unique, wait_for, Netns, BRAID};

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::Value;

/// No socket of a test waits longer than this for one read or write.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);
pub const SEED_UP: u64 = 0x5eed_0001;
pub const SEED_DOWN: u64 = 0x5eed_0002;

// ---------------------------------------------------------------- patterns

/// Byte i of a stream: position-dependent, so loss, duplication and
/// reordering all show.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut i = 0u64;
    while out.len() < len {
        let mut z = seed.wrapping_add(i.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        out.extend_from_slice(&z.to_le_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

pub fn header(up: usize, down: usize) -> [u8; 16] {
    let mut h = [0u8; 16];
    h[..8].copy_from_slice(&(up as u64).to_be_bytes());
    h[8..].copy_from_slice(&(down as u64).to_be_bytes());
    h
}

pub fn split16(b: &[u8; 16]) -> (u64, u64) {
    (
        u64::from_be_bytes(b[..8].try_into().unwrap()),
        u64::from_be_bytes(b[8..].try_into().unwrap()),
    )
}

// ------------------------------------------------------------ temp files

/// A per-test directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(unique(tag));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ------------------------------------------------------------- processes

/// A spawned process, its output in a log file; killed on drop (its log
/// printed when the test is failing).
pub struct Proc {
    pub name: String,
    child: Child,
    log: PathBuf,
    exited: Option<ExitStatus>,
}

impl Proc {
    pub fn spawn(name: &str, cmd: &mut Command, log: PathBuf) -> Proc {
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc {
            name: name.to_string(),
            child,
            log,
            exited: None,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn has_exited(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().unwrap();
        }
        self.exited
    }

    /// Panic (with the log) if the process has exited.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.has_exited() {
            panic!("{} exited ({st}); its output:\n{}", self.name, self.log());
        }
    }

    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill has no memory-safety preconditions; the pid is our
        // own child, not yet reaped.
        unsafe { libc::kill(self.pid(), sig) };
    }

    /// Wait for the process to end by itself.
    pub fn wait_exit(&mut self, secs: u64) -> Option<ExitStatus> {
        wait_for(secs, || self.has_exited().is_some());
        self.has_exited()
    }

    /// Wait until its status socket answers.
    pub fn wait_ready(&mut self, socket: &Path) -> Value {
        let mut last = String::new();
        let ready = wait_for(10, || {
            self.assert_alive();
            match try_status(socket) {
                Ok(_) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        });
        assert!(
            ready,
            "{} never answered on {}: {last}\n{}",
            self.name,
            socket.display(),
            self.log()
        );
        status(socket)
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- {} output -----\n{}", self.name, self.log());
        }
    }
}

/// A child with piped standard streams, killed on drop.
pub struct Piped(pub Child);

impl Drop for Piped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Run a command that must end by itself within `secs` (killed otherwise,
/// and the test fails), `stdin` written to it (and closed) if given.
pub fn run_bounded(cmd: &mut Command, stdin: Option<&[u8]>, secs: u64) -> Output {
    let mut child = Piped(
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}")),
    );
    if let Some(input) = stdin {
        let mut i = child.0.stdin.take().unwrap();
        i.write_all(input).unwrap();
    }
    wait_output(&mut child, secs, &format!("{cmd:?}"))
}

/// The output of a piped child that must end within `secs`.
pub fn wait_output(child: &mut Piped, secs: u64, what: &str) -> Output {
    // Read both pipes on threads: a full pipe must not stall the child.
    let mut out = child.0.stdout.take();
    let mut err = child.0.stderr.take();
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = out.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        if let Some(s) = err.as_mut() {
            let _ = s.read_to_end(&mut v);
        }
        v
    });
    let ended = wait_for(secs, || child.0.try_wait().unwrap().is_some());
    if !ended {
        let _ = child.0.kill();
    }
    let status = child.0.wait().unwrap();
    let output = Output {
        status,
        stdout: o.join().unwrap(),
        stderr: e.join().unwrap(),
    };
    assert!(
        ended,
        "{what} was still running after {secs} s: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `braid relay status --socket PATH --json`.
pub fn try_status(socket: &Path) -> Result<Value, String> {
    let out = Command::new(BRAID)
        .args(["relay", "status", "--json", "--socket"])
        .arg(socket)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| format!("status is not JSON: {e}"))
}

pub fn status(socket: &Path) -> Value {
    try_status(socket).unwrap_or_else(|e| panic!("braid relay status: {e}"))
}

/// `braid relay keygen --out FILE`: the file and the public key printed.
pub fn keygen(dir: &TempDir, name: &str) -> (PathBuf, String) {
    let path = dir.path(name);
    let out = run_bounded(
        Command::new(BRAID)
            .args(["relay", "keygen", "--out"])
            .arg(&path),
        None,
        10,
    );
    assert!(
        out.status.success(),
        "keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        path,
        String::from_utf8_lossy(&out.stdout).trim().to_string(),
    )
}

// -------------------------------------------------------------- services

/// A TCP server thread inside a namespace, each connection on a thread of
/// its own; stopped (and joined) on drop.
pub struct Service {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Service {
    pub fn start<F>(ns: &Netns, addr: SocketAddr, handle: F) -> Service
    where
        F: Fn(TcpStream, SocketAddr) + Send + Sync + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let handle = Arc::new(handle);
        let (ready_tx, ready_rx) = mpsc::channel();
        let st = stop.clone();
        let thread = ns.spawn(move || {
            let l = match TcpListener::bind(addr) {
                Ok(l) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("binding {addr}: {e}")));
                    return;
                }
            };
            l.set_nonblocking(true).unwrap();
            let _ = ready_tx.send(Ok(()));
            while !st.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let h = handle.clone();
                        std::thread::spawn(move || h(s, peer));
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5))
                    }
                    Err(e) => panic!("accept on {addr}: {e}"),
                }
            }
        });
        let mut svc = Service {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(10)) {
            Ok(Ok(())) => svc,
            other => {
                svc.stop.store(true, Ordering::SeqCst);
                let _ = svc.thread.take().map(|t| t.join());
                panic!("a server on {addr} did not start: {other:?}")
            }
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------- origin

/// What the origin saw of one connection.
#[derive(Debug, Clone)]
pub struct OriginConn {
    pub peer: SocketAddr,
    /// `up` announced in the header.
    pub up: u64,
    pub received: u64,
    pub bad: u64,
    /// The client's end of stream was seen.
    pub eof: bool,
    pub error: Option<String>,
}

/// The test server (plain TCP), on one or more addresses sharing one
/// record of connections.
pub struct Origin {
    accepted: Arc<AtomicUsize>,
    conns: Arc<Mutex<Vec<OriginConn>>>,
    _svcs: Vec<Service>,
}

impl Origin {
    pub fn start(o: &Netns, addrs: &[SocketAddr]) -> Origin {
        let accepted = Arc::new(AtomicUsize::new(0));
        let conns = Arc::new(Mutex::new(Vec::new()));
        let svcs = addrs
            .iter()
            .map(|&addr| {
                let (acc, cs) = (accepted.clone(), conns.clone());
                Service::start(o, addr, move |s, peer| {
                    acc.fetch_add(1, Ordering::SeqCst);
                    let rec = serve_origin_conn(s, peer);
                    cs.lock().unwrap().push(rec);
                })
            })
            .collect();
        Origin {
            accepted,
            conns,
            _svcs: svcs,
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// The records of finished connections, once there are `n`.
    pub fn wait_conns(&self, n: usize) -> Vec<OriginConn> {
        let done = wait_for(20, || self.conns.lock().unwrap().len() >= n);
        let v = self.conns.lock().unwrap().clone();
        assert!(done, "the origin finished {} connections, not {n}", v.len());
        v
    }
}

pub fn serve_origin_conn(mut s: TcpStream, peer: SocketAddr) -> OriginConn {
    let mut rec = OriginConn {
        peer,
        up: 0,
        received: 0,
        bad: 0,
        eof: false,
        error: None,
    };
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(IO_TIMEOUT));
    let _ = s.set_write_timeout(Some(IO_TIMEOUT));
    let mut h = [0u8; 16];
    if let Err(e) = s.read_exact(&mut h) {
        rec.error = Some(format!("reading the header: {e}"));
        return rec;
    }
    let (up, down) = split16(&h);
    rec.up = up;
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&pattern(SEED_DOWN, down as usize)));
    let expect = pattern(SEED_UP, up as usize);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match s.read(&mut buf) {
            Ok(0) => {
                rec.eof = true;
                break;
            }
            Ok(n) => {
                let at = rec.received as usize;
                let end = (at + n).min(expect.len());
                let fits = end.saturating_sub(at);
                let good = at < expect.len() && buf[..fits] == expect[at..end];
                if !good || fits < n {
                    rec.bad += buf[..n]
                        .iter()
                        .enumerate()
                        .filter(|(i, b)| expect.get(at + i) != Some(b))
                        .count() as u64;
                }
                rec.received += n as u64;
            }
            Err(e) => {
                rec.error = Some(format!("reading: {e}"));
                break;
            }
        }
    }
    let wrote = writer.join().unwrap();
    if let Err(e) = &wrote {
        rec.error.get_or_insert(format!("writing: {e}"));
    }
    if rec.eof && wrote.is_ok() {
        // After the client's FIN: the half-closed connection still carries
        // this direction.
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&rec.received.to_be_bytes());
        t[8..].copy_from_slice(&rec.bad.to_be_bytes());
        if let Err(e) = s.write_all(&t).and_then(|_| s.shutdown(Shutdown::Write)) {
            rec.error = Some(format!("writing the trailer: {e}"));
        }
    }
    rec
}

// ------------------------------------------------------------ the client

/// What a program saw of one exchange with the origin.
#[derive(Debug)]
pub struct Exchanged {
    /// The `down` bytes arrived intact.
    pub down_ok: bool,
    /// The origin's trailer: bytes it received, bytes that did not match.
    pub trailer: (u64, u64),
    /// The origin's end of stream arrived after the trailer.
    pub eof: bool,
}

/// Run the test protocol on `s`: send `up` bytes while receiving `down`,
/// then half-close and read the origin's trailer and end of stream. With a
/// gate, only the first 64 KiB go before it opens.
pub fn exchange(
    mut s: TcpStream,
    up: usize,
    down: usize,
    gate: Option<mpsc::Receiver<()>>,
) -> Exchanged {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || -> std::io::Result<()> {
        w.write_all(&header(up, down))?;
        let data = pattern(SEED_UP, up);
        let first = data.len().min(64 << 10);
        w.write_all(&data[..first])?;
        if let Some(g) = gate {
            let _ = g.recv_timeout(IO_TIMEOUT);
        }
        w.write_all(&data[first..])?;
        w.shutdown(Shutdown::Write)
    });
    let mut got = vec![0u8; down];
    s.read_exact(&mut got).expect("reading the origin's bytes");
    let down_ok = got == pattern(SEED_DOWN, down);
    writer.join().unwrap().expect("writing to the origin");
    let mut t = [0u8; 16];
    s.read_exact(&mut t)
        .expect("the origin's trailer, sent after it saw our end of stream");
    let eof = matches!(s.read(&mut [0u8; 1]), Ok(0));
    Exchanged {
        down_ok,
        trailer: split16(&t),
        eof,
    }
}

pub fn assert_exchange(ex: &Exchanged, up: usize) {
    assert!(ex.down_ok, "the origin's bytes arrived corrupted: {ex:?}");
    assert_eq!(
        ex.trailer,
        (up as u64, 0),
        "the origin got (bytes, mismatches) = {:?}, sent {up}",
        ex.trailer
    );
    assert!(ex.eof, "no end of stream from the origin after its trailer");
}
