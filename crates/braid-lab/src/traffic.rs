//! Traffic built into Braid, run inside a lab's namespaces over MPTCP:
//! a bulk download with every byte verified, receiver-side goodput in
//! 100 ms buckets (overall and per path, from subflow counters) and the
//! longest stall; and a request/response probe for latency.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use braid_kernel::{diag, netns, socket};
use serde::Serialize;

use crate::emulator::mono_ns;
use crate::LabError;

pub const BUCKET_NS: u64 = 100_000_000;
/// Subflow counters are sampled this often (5 samples per bucket).
pub const SAMPLE_NS: u64 = 20_000_000;

/// The byte expected at stream offset `i`: a keyed sequence, so lost,
/// duplicated, reordered or corrupted bytes all fail verification.
pub fn pattern_byte(i: u64) -> u8 {
    let mut z = (i >> 3).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z >> ((i & 7) * 8)) as u8
}

fn fill_pattern(buf: &mut [u8], offset: u64) {
    for (j, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(offset + j as u64);
    }
}

/// Where the traffic runs.
#[derive(Debug, Clone)]
pub struct Endpoints {
    pub client_ns: String,
    /// Where the traffic's servers listen: the lab's server, or the
    /// plain-TCP origin behind a relay.
    pub server_ns: String,
    pub server_addr: IpAddr,
    /// Where the server side's MPTCP subflows are: the server itself, or
    /// the relay in front of the origin.
    pub mptcp_server_ns: String,
    /// The client's address on each path, to attribute subflows to paths.
    pub path_client_addrs: Vec<IpAddr>,
    /// How the client's program reaches the server.
    pub way: ClientWay,
}

/// How the client's program reaches its server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientWay {
    /// An MPTCP socket straight to the server.
    Mptcp,
    /// Plain TCP through this SOCKS5 proxy in the client's namespace, as a
    /// program configured for a proxy would.
    Socks5(SocketAddr),
    /// Plain TCP straight to the server's address, as any unmodified
    /// program would (transparent mode redirects it).
    Tcp,
}

/// Connect from the client to `target` the way `way` says. Returns the
/// stream and how it travels.
pub fn client_connect(
    way: ClientWay,
    target: SocketAddr,
) -> std::io::Result<(std::net::TcpStream, String)> {
    match way {
        ClientWay::Mptcp => {
            let (s, t) = socket::connect(target)?;
            let transport = transport_of(&s, t);
            Ok((s, transport))
        }
        ClientWay::Socks5(proxy) => {
            Ok((socks5_connect(proxy, target)?, "tcp through a proxy".into()))
        }
        ClientWay::Tcp => Ok((std::net::TcpStream::connect(target)?, "tcp".into())),
    }
}

/// A SOCKS5 CONNECT (RFC 1928, no authentication) over plain TCP.
pub fn socks5_connect(
    proxy: SocketAddr,
    target: SocketAddr,
) -> std::io::Result<std::net::TcpStream> {
    use std::io::{Error, ErrorKind};
    let mut s = std::net::TcpStream::connect(proxy)?;
    s.set_nodelay(true)?;
    s.write_all(&[5, 1, 0])?;
    let mut choice = [0u8; 2];
    s.read_exact(&mut choice)?;
    if choice != [5, 0] {
        return Err(Error::other(format!(
            "the SOCKS5 proxy {proxy} refused: {choice:?}"
        )));
    }
    let mut req = vec![5, 1, 0];
    match target.ip() {
        IpAddr::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
    }
    req.extend_from_slice(&target.port().to_be_bytes());
    s.write_all(&req)?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head)?;
    if head[1] != 0 {
        return Err(Error::new(
            ErrorKind::ConnectionRefused,
            format!(
                "the SOCKS5 proxy {proxy} could not connect to {target} (reply {})",
                head[1]
            ),
        ));
    }
    let rest = match head[3] {
        1 => 4 + 2,
        4 => 16 + 2,
        3 => {
            let mut n = [0u8; 1];
            s.read_exact(&mut n)?;
            n[0] as usize + 2
        }
        other => {
            return Err(Error::other(format!(
                "SOCKS5 reply with address type {other}"
            )))
        }
    };
    let mut skip = vec![0u8; rest];
    s.read_exact(&mut skip)?;
    Ok(s)
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct BulkResult {
    pub bytes_sent: u64,
    pub bytes_received: u64,
    pub bytes_verified: u64,
    pub bytes_corrupt: u64,
    /// Bytes received per 100 ms bucket since the start.
    pub buckets: Vec<u64>,
    /// Per path, bytes received per 100 ms bucket (from subflow counters).
    pub path_buckets: Vec<Vec<u64>>,
    /// Per path, bytes received per 20 ms sample (finer, for timings).
    #[serde(skip)]
    pub path_samples: Vec<Vec<u64>>,
    /// The longest gap between received bytes, and where it started.
    pub longest_stall_ms: f64,
    pub longest_stall_at_ms: f64,
    /// Receive times (ms since start) of every read, for event analysis.
    #[serde(skip)]
    pub read_times_ms: Vec<f64>,
    /// The transfer ran to its end (the server finished and closed cleanly).
    pub survived: bool,
    pub transport: String,
    pub error: Option<String>,
}

impl BulkResult {
    /// Mean goodput in bit/s over `from_ms..to_ms`.
    pub fn goodput_bps(&self, from_ms: f64, to_ms: f64) -> f64 {
        let (a, b) = (
            (from_ms / 100.0) as usize,
            ((to_ms / 100.0) as usize).min(self.buckets.len()),
        );
        if b <= a {
            return 0.0;
        }
        self.buckets[a..b].iter().sum::<u64>() as f64 * 8.0 / ((b - a) as f64 * 0.1)
    }

    pub fn path_goodput_bps(&self, k: usize, from_ms: f64, to_ms: f64) -> f64 {
        let Some(series) = self.path_buckets.get(k) else {
            return 0.0;
        };
        let (a, b) = (
            (from_ms / 100.0) as usize,
            ((to_ms / 100.0) as usize).min(series.len()),
        );
        if b <= a {
            return 0.0;
        }
        series[a..b].iter().sum::<u64>() as f64 * 8.0 / ((b - a) as f64 * 0.1)
    }

    /// The end of the first 20 ms sample at or after `t_ms` in which path
    /// `k` carried at least `min_bytes`: when the path was seen carrying data.
    pub fn path_active_after(&self, k: usize, t_ms: f64, min_bytes: u64) -> Option<f64> {
        let series = self.path_samples.get(k)?;
        let step = SAMPLE_NS as f64 / 1e6;
        let start = (t_ms / step) as usize;
        series
            .iter()
            .enumerate()
            .skip(start)
            .find(|(_, b)| **b >= min_bytes)
            .map(|(i, _)| (i + 1) as f64 * step)
    }

    /// The longest gap in received (in-order) data that ends after `t_ms`
    /// and starts within `window_ms` of it: the stall an event caused. Data
    /// in flight on a failed path is still delivered for a while and then
    /// blocks the stream until it is sent again, so the gap rarely spans
    /// the event itself. If data never resumes, the gap runs to `end_ms`.
    pub fn stall_after(&self, t_ms: f64, window_ms: f64, end_ms: f64) -> f64 {
        let r = &self.read_times_ms;
        let mut longest = 0.0f64;
        for i in 1..r.len() {
            if r[i] >= t_ms && r[i - 1] <= t_ms + window_ms {
                longest = longest.max(r[i] - r[i - 1].max(t_ms.min(r[i])));
            }
        }
        if let Some(last) = r.last() {
            if !self.survived && *last <= t_ms + window_ms {
                longest = longest.max(end_ms - last.max(t_ms));
            }
        }
        longest
    }

    /// From `t_ms` until data flows again after the first pause of at
    /// least `min_pause_ms` the event caused: when the hole the failure left
    /// in the stream is filled. Pauses after that (data the receiver already
    /// holds being sent again, slow start) count in `stall_after`.
    pub fn resume_after(&self, t_ms: f64, min_pause_ms: f64) -> Option<f64> {
        let r = &self.read_times_ms;
        (1..r.len())
            .find(|&i| r[i] > t_ms && r[i] - r[i - 1].max(t_ms) >= min_pause_ms)
            .map(|i| r[i] - t_ms)
    }
}

fn in_thread<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> JoinHandle<Result<T, LabError>> {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns)?;
        Ok(f())
    })
}

/// A bulk transfer that runs for `duration`: a download (server to
/// client) by default, or an upload.
pub struct Bulk {
    t0: u64,
    sender: JoinHandle<Result<(u64, Option<String>), LabError>>,
    receiver: JoinHandle<Result<ReceiverSide, LabError>>,
    sampler: JoinHandle<Result<Vec<Vec<u64>>, LabError>>,
    stop: Arc<AtomicBool>,
    deadline_ns: u64,
    _listener: std::net::TcpListener,
}

struct ReceiverSide {
    received: u64,
    corrupt: u64,
    reads: Vec<(u64, u64)>,
    clean_eof: bool,
    transport: String,
    error: Option<String>,
}

/// Which way the bulk data flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Download,
    Upload,
}

/// Send the pattern for `dur_ns`, then close the sending side and wait
/// for the receiver to finish.
fn send_pattern(s: &mut std::net::TcpStream, dur_ns: u64) -> (u64, Option<String>) {
    // A dead path must not block the sender forever.
    let _ = s.set_write_timeout(Some(Duration::from_millis(500)));
    let start = mono_ns();
    let mut sent = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    while mono_ns() - start < dur_ns {
        fill_pattern(&mut buf, sent);
        match s.write(&buf) {
            Ok(n) => sent += n as u64,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return (sent, Some(format!("send: {e}"))),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Write);
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink);
    (sent, None)
}

/// Read and verify until the end (or the deadline), timing every read.
fn receive_pattern(
    s: &mut std::net::TcpStream,
    t0: u64,
    deadline_ns: u64,
    transport: String,
) -> ReceiverSide {
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    let mut side = ReceiverSide {
        received: 0,
        corrupt: 0,
        reads: Vec::with_capacity(100_000),
        clean_eof: false,
        transport,
        error: None,
    };
    let mut buf = vec![0u8; 256 * 1024];
    while mono_ns() - t0 < deadline_ns {
        match s.read(&mut buf) {
            Ok(0) => {
                side.clean_eof = true;
                break;
            }
            Ok(n) => {
                let off = side.received;
                side.corrupt += buf[..n]
                    .iter()
                    .enumerate()
                    .filter(|(j, b)| **b != pattern_byte(off + *j as u64))
                    .count() as u64;
                side.received += n as u64;
                side.reads.push((mono_ns() - t0, n as u64));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => {
                side.error = Some(format!("receive: {e}"));
                break;
            }
        }
    }
    side.transport = fallen_back_since(s, side.transport);
    // The sender waits for this close before it finishes.
    let _ = s.shutdown(std::net::Shutdown::Both);
    side
}

/// The transport of an MPTCP socket whose connection the kernel made plain
/// TCP (in the handshake, or since).
pub const FELL_BACK: &str = "tcp (fell back)";

/// `transport` as it is now: a connection that was MPTCP may have fallen
/// back since it was last looked at (the peer's end fell back in the
/// handshake, a middlebox stripped options).
fn fallen_back_since(s: &std::net::TcpStream, transport: String) -> String {
    if transport == "mptcp" && matches!(socket::is_mptcp_active(s), Ok(false)) {
        FELL_BACK.into()
    } else {
        transport
    }
}

fn transport_of(s: &std::net::TcpStream, t: socket::Transport) -> String {
    fallen_back_since(s, format!("{t:?}").to_lowercase())
}

impl Bulk {
    /// Start and return once the connection is established.
    pub fn start(ep: &Endpoints, port: u16, duration: Duration) -> Result<Bulk, LabError> {
        Bulk::start_dir(ep, port, duration, Direction::Download)
    }

    pub fn start_dir(
        ep: &Endpoints,
        port: u16,
        duration: Duration,
        dir: Direction,
    ) -> Result<Bulk, LabError> {
        let listen = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
        let dur_ns = duration.as_nanos() as u64;
        let deadline_ns = dur_ns + 3_000_000_000;
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        // The server side accepts; the transfer threads take the sockets.
        // The listener must outlive the transfer: new subflows (MP_JOIN)
        // arrive on it.
        let server = in_thread(
            &ep.server_ns,
            move || -> Option<(std::net::TcpListener, std::net::TcpStream)> {
                let listener = match socket::listen(listen) {
                    Ok((l, _)) => l,
                    Err(e) => {
                        let _ = ready_tx.send(Err(format!("listening on {listen}: {e}")));
                        return None;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let conn = listener.accept().ok().map(|(s, _)| s)?;
                Some((listener, conn))
            },
        );
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Io(e)),
            Err(_) => return Err(LabError::Io("the traffic server did not start".into())),
        }
        let target = SocketAddr::new(ep.server_addr, port);
        let client_ns = ep.client_ns.clone();
        let way = ep.way;
        let client = in_thread(&client_ns, move || client_connect(way, target));
        let (cstream, transport) = client
            .join()
            .map_err(|_| LabError::Io("traffic client panicked".into()))??
            .map_err(|e| LabError::Io(format!("connecting to {target}: {e}")))?;
        let (listener, sstream) = server
            .join()
            .map_err(|_| LabError::Io("traffic server panicked".into()))??
            .ok_or_else(|| LabError::Io("the traffic server did not accept".into()))?;
        let t0 = mono_ns();
        // Sockets keep their namespace: the threads need not enter one.
        // Subflows are sampled where the receiving side's MPTCP is.
        let (mut send_s, mut recv_s, recv_ns) = match dir {
            Direction::Download => (sstream, cstream, ep.client_ns.clone()),
            Direction::Upload => (cstream, sstream, ep.mptcp_server_ns.clone()),
        };
        let sender = std::thread::spawn(move || Ok(send_pattern(&mut send_s, dur_ns)));
        let receiver = std::thread::spawn(move || {
            Ok(receive_pattern(&mut recv_s, t0, deadline_ns, transport))
        });
        let addrs = ep.path_client_addrs.clone();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let by_remote = dir == Direction::Upload;
        let sampler = in_thread(&recv_ns, move || {
            sample_paths(&addrs, t0, &stop2, by_remote)
        });
        Ok(Bulk {
            t0,
            sender,
            receiver,
            sampler,
            stop,
            deadline_ns,
            _listener: listener,
        })
    }

    /// Milliseconds since the transfer started.
    pub fn elapsed_ms(&self) -> f64 {
        (mono_ns() - self.t0) as f64 / 1e6
    }

    pub fn t0(&self) -> u64 {
        self.t0
    }

    /// Wait for the end and collect the measurements.
    pub fn finish(self) -> Result<BulkResult, LabError> {
        let client = self
            .receiver
            .join()
            .map_err(|_| LabError::Io("traffic client panicked".into()))??;
        self.stop.store(true, Ordering::Relaxed);
        let (sent, server_err) = self
            .sender
            .join()
            .map_err(|_| LabError::Io("traffic server panicked".into()))??;
        let path_samples = self
            .sampler
            .join()
            .map_err(|_| LabError::Io("sampler panicked".into()))??;
        let per_bucket = (BUCKET_NS / SAMPLE_NS) as usize;
        let path_buckets: Vec<Vec<u64>> = path_samples
            .iter()
            .map(|s| s.chunks(per_bucket).map(|c| c.iter().sum()).collect())
            .collect();
        let end_ns = client.reads.last().map(|r| r.0).unwrap_or(0);
        let n_buckets = (end_ns / BUCKET_NS + 1) as usize;
        let mut buckets = vec![0u64; n_buckets];
        for (t, n) in &client.reads {
            buckets[(t / BUCKET_NS) as usize] += n;
        }
        let mut longest = (0.0f64, 0.0f64);
        for w in client.reads.windows(2) {
            let gap = (w[1].0 - w[0].0) as f64 / 1e6;
            if gap > longest.0 {
                longest = (gap, w[0].0 as f64 / 1e6);
            }
        }
        // Alive at the end: the stream ended cleanly, or data was still
        // arriving in the last second (a large send buffer draining over a
        // slower surviving path is not a dead connection).
        let last_read_ns = client.reads.last().map(|r| r.0).unwrap_or(0);
        let still_flowing = last_read_ns + 1_000_000_000 >= self.deadline_ns;
        let survived =
            (client.clean_eof || still_flowing) && server_err.is_none() && client.error.is_none();
        if !survived {
            // Data stopped for good: the stall runs to the end of the run.
            let last = client.reads.last().map(|r| r.0 as f64 / 1e6).unwrap_or(0.0);
            let planned_end = path_buckets
                .first()
                .map(|b| b.len() as f64 * 100.0)
                .unwrap_or(last);
            if planned_end - last > longest.0 {
                longest = (planned_end - last, last);
            }
        }
        Ok(BulkResult {
            bytes_sent: sent,
            bytes_received: client.received,
            bytes_verified: client.received - client.corrupt,
            bytes_corrupt: client.corrupt,
            buckets,
            path_buckets,
            longest_stall_ms: longest.0,
            longest_stall_at_ms: longest.1,
            read_times_ms: client.reads.iter().map(|r| r.0 as f64 / 1e6).collect(),
            path_samples,
            survived,
            transport: client.transport,
            error: client.error.or(server_err),
        })
    }
}

/// Poll the receiver's subflows every 20 ms and attribute received bytes to
/// paths by the client's address of the subflow.
fn sample_paths(addrs: &[IpAddr], t0: u64, stop: &AtomicBool, by_remote: bool) -> Vec<Vec<u64>> {
    let mut series: Vec<Vec<u64>> = vec![Vec::new(); addrs.len()];
    let mut last: std::collections::HashMap<(SocketAddr, SocketAddr), u64> = Default::default();
    let mut tick = 1u64;
    while !stop.load(Ordering::Relaxed) {
        let due = t0 + tick * SAMPLE_NS;
        let now = mono_ns();
        if due > now {
            std::thread::sleep(Duration::from_nanos(due - now));
        }
        let mut per_path = vec![0u64; addrs.len()];
        if let Ok(sfs) = diag::subflows() {
            for sf in sfs {
                let client_ip = if by_remote {
                    sf.remote.ip()
                } else {
                    sf.local.ip()
                };
                let Some(k) = addrs.iter().position(|a| *a == client_ip) else {
                    continue;
                };
                let Some(rx) = sf.tcp.as_ref().and_then(|t| t.bytes_received) else {
                    continue;
                };
                let prev = last.insert((sf.local, sf.remote), rx).unwrap_or(0);
                per_path[k] += rx.saturating_sub(prev);
            }
        }
        for (k, b) in per_path.into_iter().enumerate() {
            series[k].push(b);
        }
        tick += 1;
    }
    series
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct ProbeResult {
    pub sent: u64,
    pub replies: u64,
    pub late: u64,
    pub lost: u64,
    pub corrupt: u64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub late_threshold_ms: f64,
    /// Per reply: (sent at, ms after the first request; latency, ms).
    #[serde(skip)]
    pub samples: Vec<(f64, f64)>,
    /// Wall-clock time of the first request, so `samples` line up with the
    /// daemon's log.
    #[serde(skip)]
    pub started: Option<std::time::SystemTime>,
    /// How the probe's connection travelled: "mptcp", or "tcp (fell back)"
    /// when the kernel gave up on MPTCP during the handshake.
    #[serde(skip)]
    pub transport: String,
}

const PROBE_SIZE: usize = 1024;

fn probe_message(seq: u64, ts: u64) -> Vec<u8> {
    let mut m = vec![0u8; PROBE_SIZE];
    m[..8].copy_from_slice(&seq.to_be_bytes());
    m[8..16].copy_from_slice(&ts.to_be_bytes());
    fill_pattern(&mut m[16..], seq * PROBE_SIZE as u64);
    m
}

fn probe_valid(m: &[u8]) -> bool {
    let seq = u64::from_be_bytes(m[..8].try_into().unwrap());
    m[16..]
        .iter()
        .enumerate()
        .all(|(j, b)| *b == pattern_byte(seq * PROBE_SIZE as u64 + j as u64))
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

/// A request/response probe: a 1 KiB request every `interval`, echoed by
/// the server; latency measured per request on one MPTCP connection.
pub struct Probe {
    client: JoinHandle<Result<Result<ProbeResult, String>, LabError>>,
    server: JoinHandle<Result<(), LabError>>,
}

impl Probe {
    pub fn start(
        ep: &Endpoints,
        port: u16,
        interval: Duration,
        duration: Duration,
        late_ms: f64,
    ) -> Result<Probe, LabError> {
        let listen = SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), port);
        let (ready_tx, ready_rx) = mpsc::channel::<Result<(), String>>();
        let server = in_thread(&ep.server_ns, move || {
            let listener = match socket::listen(listen) {
                Ok((l, _)) => l,
                Err(e) => {
                    let _ = ready_tx.send(Err(format!("probe listen: {e}")));
                    return;
                }
            };
            let _ = ready_tx.send(Ok(()));
            let Ok((mut s, _)) = listener.accept() else {
                return;
            };
            let _ = s.set_nodelay(true);
            let mut m = vec![0u8; PROBE_SIZE];
            while s.read_exact(&mut m).is_ok() {
                if s.write_all(&m).is_err() {
                    break;
                }
            }
        });
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(LabError::Io(e)),
            Err(_) => return Err(LabError::Io("the probe server did not start".into())),
        }
        let target = SocketAddr::new(ep.server_addr, port);
        let way = ep.way;
        let client = in_thread(&ep.client_ns, move || -> Result<ProbeResult, String> {
            let (s, transport) =
                client_connect(way, target).map_err(|e| format!("probe connect: {e}"))?;
            let _ = s.set_nodelay(true);
            let mut reader = s.try_clone().map_err(|e| e.to_string())?;
            let mut writer = s;
            let t0 = mono_ns();
            let started = std::time::SystemTime::now();
            let count = (duration.as_nanos() / interval.as_nanos()) as u64;
            let recv = std::thread::spawn(move || {
                let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
                let mut got: Vec<(u64, f64, f64)> = Vec::new();
                let mut corrupt = 0u64;
                let mut m = vec![0u8; PROBE_SIZE];
                let mut filled = 0;
                let end = t0 + duration.as_nanos() as u64 + 2_000_000_000;
                while mono_ns() < end && (got.len() as u64) < count {
                    match reader.read(&mut m[filled..]) {
                        Ok(0) => break,
                        Ok(n) => {
                            filled += n;
                            if filled == PROBE_SIZE {
                                filled = 0;
                                let now = mono_ns();
                                let seq = u64::from_be_bytes(m[..8].try_into().unwrap());
                                let ts = u64::from_be_bytes(m[8..16].try_into().unwrap());
                                if !probe_valid(&m) {
                                    corrupt += 1;
                                }
                                got.push((seq, (ts - t0) as f64 / 1e6, (now - ts) as f64 / 1e6));
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => break,
                    }
                }
                (got, corrupt)
            });
            let _ = writer.set_write_timeout(Some(Duration::from_millis(500)));
            let mut sent = 0u64;
            for seq in 0..count {
                let due = t0 + seq * interval.as_nanos() as u64;
                let now = mono_ns();
                if due > now {
                    std::thread::sleep(Duration::from_nanos(due - now));
                }
                if writer.write_all(&probe_message(seq, mono_ns())).is_err() {
                    break;
                }
                sent += 1;
            }
            let (got, corrupt) = recv
                .join()
                .map_err(|_| "probe receiver panicked".to_string())?;
            let transport = fallen_back_since(&writer, transport);
            let _ = writer.shutdown(std::net::Shutdown::Both);
            let mut lat: Vec<f64> = got.iter().map(|g| g.2).collect();
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            Ok(ProbeResult {
                sent,
                replies: got.len() as u64,
                late: lat.iter().filter(|l| **l > late_ms).count() as u64,
                lost: sent.saturating_sub(got.len() as u64),
                corrupt,
                p50_ms: percentile(&lat, 50.0),
                p95_ms: percentile(&lat, 95.0),
                p99_ms: percentile(&lat, 99.0),
                max_ms: lat.last().copied().unwrap_or(0.0),
                late_threshold_ms: late_ms,
                samples: got.iter().map(|g| (g.1, g.2)).collect(),
                started: Some(started),
                transport,
            })
        });
        Ok(Probe { client, server })
    }

    pub fn finish(self) -> Result<ProbeResult, LabError> {
        let r = self
            .client
            .join()
            .map_err(|_| LabError::Io("probe client panicked".into()))??;
        let _ = self.server.join();
        r.map_err(LabError::Io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_depends_on_offset() {
        let a: Vec<u8> = (0..64).map(pattern_byte).collect();
        let b: Vec<u8> = (1..65).map(pattern_byte).collect();
        assert_ne!(a, b);
        assert!(probe_valid(&probe_message(7, 99)));
        let mut m = probe_message(7, 99);
        m[100] ^= 1;
        assert!(!probe_valid(&m));
    }

    #[test]
    fn percentiles_and_gaps() {
        let v: Vec<f64> = (1..=100).map(|x| x as f64).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        let r = BulkResult {
            read_times_ms: vec![0.0, 10.0, 500.0, 510.0, 900.0],
            survived: true,
            ..Default::default()
        };
        assert_eq!(r.stall_after(100.0, 1000.0, 1000.0), 400.0);
        assert_eq!(r.stall_after(505.0, 1000.0, 1000.0), 390.0);
        let dead = BulkResult {
            read_times_ms: vec![0.0, 10.0],
            ..Default::default()
        };
        assert_eq!(dead.stall_after(100.0, 1000.0, 5000.0), 4900.0);
        assert_eq!(r.resume_after(100.0, 20.0), Some(400.0));
        assert_eq!(r.resume_after(505.0, 20.0), Some(395.0));
        assert_eq!(dead.resume_after(100.0, 20.0), None);
    }
}
