//! Benchmarks of the relay against shadowsocks-libev under mptcpize, in
//! the same topology and the same run: forwarding cost at full speed
//! (veth lab), time to first byte over emulated paths, and many
//! connections at once.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::guard::LabGuard;
use crate::lab::LabConfig;
use crate::pm::{self, PmKind};
use crate::spec::PathSpec;
use crate::traffic::{client_connect, percentile, socks5_connect, ClientWay};
use crate::vethlab::VethLab;
use crate::via::{self, cpu_time, fd_count, rss_kib, ProxyOptions, RunningVia, Site, Via};
use crate::LabError;

const SOURCE_PORT: u16 = 5300;
const ECHO_PORT: u16 = 5301;
const REQUEST: usize = 100;
const RESPONSE: usize = 1000;

/// A server in a namespace (a thread of this process), stopped when dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The listening socket (a second handle), to wake the accept loop.
    listener: std::net::TcpListener,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // shutdown(2) on a listening socket makes a blocked accept(2)
        // return at once, whatever became of its namespace (a connection
        // to wake it cannot be made once the lab is gone, and the join
        // below then waited for ever).
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RDWR) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[derive(Clone, Copy)]
enum Serve {
    /// Send data for this long, then close.
    Source(Duration),
    /// Answer each connection's request with a response of this many
    /// bytes, then wait for the client to close.
    RespondBytes(usize),
}

/// Serve in `ns` on `addr` (MPTCP when `mptcp`, so a direct client can use
/// its paths), one thread per connection.
fn serve(ns: &str, addr: SocketAddr, mptcp: bool, what: Serve) -> Result<Server, LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel::<Result<std::net::TcpListener, String>>();
    let ns = ns.to_string();
    let stop2 = stop.clone();
    let thread = std::thread::spawn(move || {
        if let Err(e) = braid_kernel::netns::enter(&ns) {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
        let listener = if mptcp {
            braid_kernel::socket::listen(addr).map(|(l, _)| l)
        } else {
            std::net::TcpListener::bind(addr)
        };
        let listener = match listener {
            Ok(l) => l,
            Err(e) => {
                let _ = tx.send(Err(format!("listening on {addr}: {e}")));
                return;
            }
        };
        match listener.try_clone() {
            Ok(second) => {
                let _ = tx.send(Ok(second));
            }
            Err(e) => {
                let _ = tx.send(Err(format!("listening on {addr}: {e}")));
                return;
            }
        }
        for conn in listener.incoming() {
            if stop2.load(Ordering::Relaxed) {
                break;
            }
            let Ok(mut s) = conn else { continue };
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || match what {
                Serve::Source(d) => {
                    let buf = vec![0x5au8; 256 * 1024];
                    let end = Instant::now() + d;
                    while Instant::now() < end {
                        if s.write_all(&buf).is_err() {
                            return;
                        }
                    }
                }
                Serve::RespondBytes(size) => {
                    let mut req = [0u8; REQUEST];
                    if s.read_exact(&mut req).is_err() {
                        return;
                    }
                    if s.write_all(&vec![0xa5u8; size]).is_err() {
                        return;
                    }
                    let mut sink = [0u8; 64];
                    while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
                }
            });
        }
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(listener)) => Ok(Server {
            stop,
            thread: Some(thread),
            listener,
        }),
        Ok(Err(e)) => Err(LabError::Io(e)),
        Err(_) => Err(LabError::Io("the benchmark server did not start".into())),
    }
}

/// Connect from the client namespace's thread, the way the run says.
fn connect(way: ClientWay, target: SocketAddr) -> std::io::Result<std::net::TcpStream> {
    client_connect(way, target).map(|(s, _)| s)
}

fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> Result<T, LabError> + Send + 'static,
) -> Result<T, LabError> {
    braid_kernel::netns::run_in::<_, LabError>(ns, f)
}

/// A failure through a proxy, with the end of the proxies' logs.
fn explain<T>(r: Result<T, LabError>, proxies: &Option<RunningVia>) -> Result<T, LabError> {
    match (r, proxies) {
        (Err(e), Some(p)) => Err(LabError::Io(format!("{e}\n{}", p.log_tail()))),
        (r, _) => r,
    }
}

/// CPU seconds of `pids` together.
fn cpu_of(pids: &[u32]) -> f64 {
    pids.iter()
        .filter_map(|p| cpu_time(*p))
        .map(|d| d.as_secs_f64())
        .sum()
}

#[derive(Debug, Clone, Serialize)]
pub struct ThroughputReport {
    pub via: &'static str,
    pub paths: usize,
    pub seconds: f64,
    pub bytes: u64,
    pub gbit_per_s: f64,
    /// CPU seconds used per GB (10^9 bytes) carried.
    pub relay_cpu_s_per_gb: Option<f64>,
    pub client_cpu_s_per_gb: Option<f64>,
    /// Goodput per core of CPU the relay (server side) used.
    pub gbit_per_s_per_relay_core: Option<f64>,
    pub gbit_per_s_per_client_core: Option<f64>,
}

/// An error naming the first of `vias` this host cannot run, if any.
pub fn check_available(vias: &[Via]) -> Result<(), LabError> {
    for v in vias {
        if let Some(why) = v.unavailable() {
            return Err(LabError::Invalid(format!("--via {}: {why}", v.name())));
        }
    }
    Ok(())
}

/// The proxy settings `ttfb` measures through `via`, in order:
/// `fast_open` and `early_reply` are "on", "off" or "both". Direct always
/// has fast open, and only the relay has an early reply.
pub fn ttfb_options(via: Via, fast_open: &str, early_reply: &str) -> Vec<ProxyOptions> {
    let choices = |s: &str| -> &'static [bool] {
        match s {
            "on" => &[true],
            "off" => &[false],
            _ => &[true, false],
        }
    };
    let fos = if via == Via::Direct {
        &[true][..]
    } else {
        choices(fast_open)
    };
    let ers = if via == Via::Relay {
        choices(early_reply)
    } else {
        &[false][..]
    };
    let mut out = Vec::new();
    for fo in fos {
        for er in ers {
            out.push(ProxyOptions {
                fast_open: *fo,
                early_reply: *er,
                quic: "block",
            });
        }
    }
    out
}

/// One TCP download from the origin through `via` for `duration`, on veth
/// paths at full speed.
pub fn throughput(
    exe: &Path,
    name: &str,
    via_kind: Via,
    paths: usize,
    duration: Duration,
) -> Result<ThroughputReport, LabError> {
    let lab = VethLab::up(name, paths)?;
    let site = lab.site();
    let proxies = via::start_at(via_kind, &site, exe, ProxyOptions::recommended(via_kind))?;
    let (server_ns, target) = match via_kind {
        Via::Direct => (
            site.server_ns.clone(),
            SocketAddr::new(site.server_addr, SOURCE_PORT),
        ),
        _ => (
            lab.origin_ns.clone(),
            SocketAddr::new(site.origin_addr, SOURCE_PORT),
        ),
    };
    let _server = serve(
        &server_ns,
        target,
        via_kind == Via::Direct,
        Serve::Source(duration),
    )?;
    let proxy = proxies.as_ref().map(|p| p.way).unwrap_or(ClientWay::Mptcp);
    let (relay_pids, client_pids) = match &proxies {
        Some(p) => (vec![p.pids()[0]], vec![p.pids()[1]]),
        None => (Vec::new(), Vec::new()),
    };
    let cpu0 = (cpu_of(&relay_pids), cpu_of(&client_pids));
    let (bytes, seconds) = in_ns(&site.client_ns, move || {
        let mut s = connect(proxy, target).map_err(|e| LabError::Io(format!("connecting: {e}")))?;
        let t0 = Instant::now();
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(e) => return Err(LabError::Io(format!("receiving: {e}"))),
            }
        }
        Ok((n, t0.elapsed().as_secs_f64()))
    })?;
    let cpu1 = (cpu_of(&relay_pids), cpu_of(&client_pids));
    drop(proxies);
    let gb = bytes as f64 / 1e9;
    let gbps = bytes as f64 * 8.0 / seconds / 1e9;
    let per_gb = |c: f64| (via_kind != Via::Direct && gb > 0.0).then_some(c / gb);
    let per_core = |c: f64| (via_kind != Via::Direct && c > 0.0).then_some(gbps * seconds / c);
    Ok(ThroughputReport {
        via: via_kind.name(),
        paths,
        seconds,
        bytes,
        gbit_per_s: gbps,
        relay_cpu_s_per_gb: per_gb(cpu1.0 - cpu0.0),
        client_cpu_s_per_gb: per_gb(cpu1.1 - cpu0.1),
        gbit_per_s_per_relay_core: per_core(cpu1.0 - cpu0.0),
        gbit_per_s_per_client_core: per_core(cpu1.1 - cpu0.1),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct TtfbReport {
    pub via: &'static str,
    pub fast_open: bool,
    pub early_reply: bool,
    pub samples: usize,
    /// Requests without a response within 5 s (given up on).
    pub failures: usize,
    /// From starting to connect until the whole (one-segment) response of a
    /// 100-byte request has arrived.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub max_ms: f64,
    /// The client–server round trip of the first path (twice its delay).
    pub path_rtt_ms: f64,
}

/// Time to first byte of short requests over the emulated paths: directly
/// over MPTCP to the server, or through a relay to the origin behind it
/// (which adds no delay of its own).
pub fn ttfb(
    exe: &Path,
    name: &str,
    via_kind: Via,
    opts: ProxyOptions,
    paths: Vec<PathSpec>,
    samples: usize,
) -> Result<TtfbReport, LabError> {
    let path_rtt_ms = paths[0].delay_us as f64 * 2.0 / 1000.0;
    let es = emulated_site(exe, name, via_kind, opts, paths)?;
    let target = SocketAddr::new(es.server_ip, ECHO_PORT);
    let direct = via_kind == Via::Direct;
    let server = serve(&es.server_ns, target, direct, Serve::RespondBytes(RESPONSE))?;
    // Directly: over MPTCP to the server (page_load's direct is plain TCP).
    let proxy = if direct { ClientWay::Mptcp } else { es.way };
    let times = in_ns(&es.site.client_ns, move || {
        let mut times = Vec::with_capacity(samples);
        let mut failures = 0;
        // One warm-up connection: it fetches the Fast Open cookie.
        for i in 0..samples + 1 {
            let t0 = Instant::now();
            let mut s =
                connect(proxy, target).map_err(|e| LabError::Io(format!("connecting: {e}")))?;
            let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
            s.write_all(&[1u8; REQUEST])
                .map_err(|e| LabError::Io(format!("sending: {e}")))?;
            let mut resp = [0u8; RESPONSE];
            match s.read_exact(&mut resp) {
                Ok(()) if i > 0 => times.push(t0.elapsed().as_secs_f64() * 1000.0),
                Ok(()) => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    failures += 1;
                    // Enough to tell it does not work.
                    if failures == 3 {
                        break;
                    }
                }
                Err(e) => return Err(LabError::Io(format!("receiving: {e}"))),
            }
            drop(s);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((times, failures))
    });
    let (mut times, failures) = explain(times, &es.proxies)?;
    // The server before its lab.
    drop(server);
    drop(es);
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok(TtfbReport {
        via: via_kind.name(),
        fast_open: opts.fast_open,
        early_reply: opts.early_reply || via_kind == Via::Shadowsocks,
        samples: times.len(),
        failures,
        p50_ms: percentile(&times, 50.0),
        p90_ms: percentile(&times, 90.0),
        max_ms: times.last().copied().unwrap_or(0.0),
        path_rtt_ms,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleReport {
    pub via: &'static str,
    pub connections: usize,
    pub failures: usize,
    /// From starting to connect until the proxy answered the CONNECT
    /// (the relay reached the origin).
    pub setup_p50_ms: f64,
    pub setup_p99_ms: f64,
    pub setup_max_ms: f64,
    /// From starting to connect until the response to a 100-byte request
    /// (comparable across proxies that answer CONNECT early and late).
    pub response_p50_ms: f64,
    pub response_p99_ms: f64,
    /// CPU time to open one connection (and relay its request and
    /// response): the relay, and the client side.
    pub relay_cpu_ms_per_connection: f64,
    pub client_cpu_ms_per_connection: f64,
    /// All connections opened, in this long.
    pub all_open_s: f64,
    pub relay_rss_idle_kib: u64,
    pub relay_rss_peak_kib: u64,
    pub relay_rss_per_connection_kib: f64,
    pub client_rss_idle_kib: u64,
    pub client_rss_peak_kib: u64,
    pub client_rss_per_connection_kib: f64,
    pub relay_fds_idle: usize,
    pub relay_fds_peak: usize,
    /// After every connection closed (waits up to 10 s for the count to
    /// come back).
    pub relay_fds_after: usize,
    pub client_fds_idle: usize,
    pub client_fds_after: usize,
}

/// `clients` threads each open `per_client` connections through `via` and
/// keep them open until all are open; then all close.
pub fn scale(
    exe: &Path,
    name: &str,
    via_kind: Via,
    clients: usize,
    per_client: usize,
) -> Result<ScaleReport, LabError> {
    if via_kind == Via::Direct {
        return Err(LabError::Invalid(
            "the scale benchmark measures a relay: --via relay or shadowsocks".into(),
        ));
    }
    let lab = VethLab::up(name, 2)?;
    let site = lab.site();
    let proxies: RunningVia =
        via::start_at(via_kind, &site, exe, ProxyOptions::recommended(via_kind))?.expect("a proxy");
    let target = SocketAddr::new(site.origin_addr, ECHO_PORT);
    let _server = serve(&lab.origin_ns, target, false, Serve::RespondBytes(RESPONSE))?;
    let (relay, client) = (proxies.pids()[0], proxies.pids()[1]);
    let idle = (rss_kib(relay).unwrap_or(0), rss_kib(client).unwrap_or(0));
    let fds_idle = (fd_count(relay).unwrap_or(0), fd_count(client).unwrap_or(0));
    let ClientWay::Socks5(proxy) = proxies.way else {
        return Err(LabError::Invalid(
            "the scale benchmark goes through SOCKS5: --via relay or shadowsocks".into(),
        ));
    };
    let total = clients * per_client;
    let all_open = Arc::new(Barrier::new(clients + 1));
    let release = Arc::new(Barrier::new(clients + 1));
    let failures = Arc::new(AtomicU64::new(0));
    let cpu0 = (cpu_of(&[relay]), cpu_of(&[client]));
    let t0 = Instant::now();
    let mut threads = Vec::new();
    for _ in 0..clients {
        let (all_open, release, failures) = (all_open.clone(), release.clone(), failures.clone());
        let ns = site.client_ns.clone();
        threads.push(std::thread::spawn(move || -> Vec<(f64, f64)> {
            let mut setups = Vec::new();
            let mut open = Vec::new();
            if braid_kernel::netns::enter(&ns).is_ok() {
                for _ in 0..per_client {
                    let t = Instant::now();
                    match socks5_connect(proxy, target) {
                        Ok(mut s) => {
                            let setup = t.elapsed().as_secs_f64() * 1000.0;
                            let mut resp = [0u8; RESPONSE];
                            if s.write_all(&[1u8; REQUEST])
                                .and_then(|_| s.read_exact(&mut resp))
                                .is_err()
                            {
                                failures.fetch_add(1, Ordering::Relaxed);
                            } else {
                                setups.push((setup, t.elapsed().as_secs_f64() * 1000.0));
                            }
                            open.push(s);
                        }
                        Err(_) => {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            all_open.wait();
            release.wait();
            drop(open);
            setups
        }));
    }
    all_open.wait();
    let all_open_s = t0.elapsed().as_secs_f64();
    let cpu1 = (cpu_of(&[relay]), cpu_of(&[client]));
    // Let the kernel and the proxies settle before reading memory.
    std::thread::sleep(Duration::from_millis(300));
    let peak = (rss_kib(relay).unwrap_or(0), rss_kib(client).unwrap_or(0));
    let fds_peak = fd_count(relay).unwrap_or(0);
    release.wait();
    let timings: Vec<(f64, f64)> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap_or_default())
        .collect();
    let mut setups: Vec<f64> = timings.iter().map(|t| t.0).collect();
    let mut responses: Vec<f64> = timings.iter().map(|t| t.1).collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = (fd_count(relay).unwrap_or(0), fd_count(client).unwrap_or(0));
    while (after.0 > fds_idle.0 || after.1 > fds_idle.1) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        after = (fd_count(relay).unwrap_or(0), fd_count(client).unwrap_or(0));
    }
    drop(proxies);
    setups.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    responses.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let per = |p: u64, i: u64| (p.saturating_sub(i)) as f64 / total as f64;
    Ok(ScaleReport {
        via: via_kind.name(),
        connections: total,
        failures: failures.load(Ordering::Relaxed) as usize,
        setup_p50_ms: percentile(&setups, 50.0),
        setup_p99_ms: percentile(&setups, 99.0),
        setup_max_ms: setups.last().copied().unwrap_or(0.0),
        response_p50_ms: percentile(&responses, 50.0),
        response_p99_ms: percentile(&responses, 99.0),
        relay_cpu_ms_per_connection: (cpu1.0 - cpu0.0) * 1000.0 / total as f64,
        client_cpu_ms_per_connection: (cpu1.1 - cpu0.1) * 1000.0 / total as f64,
        all_open_s,
        relay_rss_idle_kib: idle.0,
        relay_rss_peak_kib: peak.0,
        relay_rss_per_connection_kib: per(peak.0, idle.0),
        client_rss_idle_kib: idle.1,
        client_rss_peak_kib: peak.1,
        client_rss_per_connection_kib: per(peak.1, idle.1),
        relay_fds_idle: fds_idle.0,
        relay_fds_peak: fds_peak,
        relay_fds_after: after.0,
        client_fds_idle: fds_idle.1,
        client_fds_after: after.1,
    })
}

/// A UDP echo thread in `ns` on `addr`, stopped when dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn udp_echo(ns: &str, addr: SocketAddr) -> Result<UdpEcho, LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let (tx, rx) = std::sync::mpsc::channel::<Result<(), String>>();
    let ns = ns.to_string();
    let thread = std::thread::spawn(move || {
        if let Err(e) = braid_kernel::netns::enter(&ns) {
            let _ = tx.send(Err(e.to_string()));
            return;
        }
        let s = match std::net::UdpSocket::bind(addr) {
            Ok(s) => s,
            Err(e) => {
                let _ = tx.send(Err(format!("UDP echo on {addr}: {e}")));
                return;
            }
        };
        let _ = s.set_read_timeout(Some(Duration::from_millis(50)));
        let _ = tx.send(Ok(()));
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::Relaxed) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(5)) {
        Ok(Ok(())) => Ok(UdpEcho {
            stop,
            thread: Some(thread),
        }),
        Ok(Err(e)) => Err(LabError::Io(e)),
        Err(_) => Err(LabError::Io("the UDP echo did not start".into())),
    }
}

/// An emulated lab with an origin, the kernel's static endpoints on the
/// client and the proxies of `via`; the server to talk to and its address.
struct EmulatedSite {
    proxies: Option<RunningVia>,
    _pm: pm::RunningPm,
    site: Site,
    way: ClientWay,
    server_ns: String,
    server_ip: std::net::IpAddr,
    _guard: LabGuard,
}

fn emulated_site(
    exe: &Path,
    name: &str,
    via_kind: Via,
    opts: ProxyOptions,
    paths: Vec<PathSpec>,
) -> Result<EmulatedSite, LabError> {
    let guard = LabGuard::up(LabConfig {
        name: name.to_string(),
        paths,
        emulator_exe: exe.to_path_buf(),
        client_addr_absent: Vec::new(),
        seed: 3,
        origin: true,
    })?;
    let pm = pm::start(PmKind::Kernel, guard.lab(), exe, &[])?;
    let site = Site::of(guard.lab())?;
    let proxies = via::start_at(via_kind, &site, exe, opts)?;
    let origin_ns = guard
        .lab()
        .state
        .origin
        .as_ref()
        .expect("lab with origin")
        .ns
        .clone();
    let (server_ns, server_ip) = match via_kind {
        Via::Direct => (site.server_ns.clone(), site.server_addr),
        _ => (origin_ns, site.origin_addr),
    };
    Ok(EmulatedSite {
        way: proxies.as_ref().map(|p| p.way).unwrap_or(ClientWay::Tcp),
        proxies,
        _pm: pm,
        site,
        server_ns,
        server_ip,
        _guard: guard,
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct PageLoadReport {
    pub via: &'static str,
    pub connections: usize,
    pub response_bytes: usize,
    pub runs: usize,
    /// From the first connect until every response has arrived.
    pub median_ms: f64,
    pub worst_ms: f64,
}

/// A page's worth of parallel short connections (a 100-byte request and a
/// response each, all started at once), `runs` times. `Via::Direct` is
/// plain TCP to the server over the primary path alone, as a program
/// without MPTCP and without a relay gets.
pub fn page_load(
    exe: &Path,
    name: &str,
    via_kind: Via,
    paths: Vec<PathSpec>,
    connections: usize,
    response_bytes: usize,
    runs: usize,
) -> Result<PageLoadReport, LabError> {
    let es = emulated_site(
        exe,
        name,
        via_kind,
        ProxyOptions::recommended(via_kind),
        paths,
    )?;
    let target = SocketAddr::new(es.server_ip, ECHO_PORT);
    let _server = serve(
        &es.server_ns,
        target,
        false,
        Serve::RespondBytes(response_bytes),
    )?;
    let way = es.way;
    let ns = es.site.client_ns.clone();
    let mut times = Vec::new();
    // One warm-up page (cookies, the relay's first connection).
    for run in 0..runs + 1 {
        let t0 = Instant::now();
        let threads: Vec<_> = (0..connections)
            .map(|_| {
                let ns = ns.clone();
                std::thread::spawn(move || -> Result<(), String> {
                    braid_kernel::netns::enter(&ns).map_err(|e| e.to_string())?;
                    let mut s = connect(way, target).map_err(|e| e.to_string())?;
                    let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                    s.write_all(&[1u8; REQUEST]).map_err(|e| e.to_string())?;
                    let mut resp = vec![0u8; response_bytes];
                    s.read_exact(&mut resp).map_err(|e| e.to_string())
                })
            })
            .collect();
        for t in threads {
            t.join()
                .map_err(|_| LabError::Io("a page-load connection panicked".into()))?
                .map_err(|e| LabError::Io(format!("a page-load connection failed: {e}")))?;
        }
        if run > 0 {
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok(PageLoadReport {
        via: via_kind.name(),
        connections,
        response_bytes,
        runs,
        median_ms: percentile(&times, 50.0),
        worst_ms: *times.last().expect("at least one run"),
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct QuicFirstReport {
    pub quic: &'static str,
    pub samples: usize,
    /// Requests answered over QUIC (the rest fell back to TCP).
    pub over_quic: usize,
    /// From the first QUIC packet until the TCP response arrived.
    pub p50_ms: f64,
    pub worst_ms: f64,
}

/// How long it waits for QUIC before it uses TCP, as a browser racing
/// the two does.
pub const QUIC_WAIT: Duration = Duration::from_millis(300);

/// A browser-like client through transparent mode: it tries QUIC (a UDP
/// datagram to port 443 of the origin, where an echo answers), and when
/// that fails or stays unanswered for [`QUIC_WAIT`], makes its request over
/// TCP. `quic` is the client's setting: "block", "relay" or "allow".
pub fn quic_first(
    exe: &Path,
    name: &str,
    quic_mode: &'static str,
    paths: Vec<PathSpec>,
    samples: usize,
) -> Result<QuicFirstReport, LabError> {
    let opts = ProxyOptions {
        quic: quic_mode,
        ..ProxyOptions::recommended(Via::Transparent)
    };
    let es = emulated_site(exe, name, Via::Transparent, opts, paths)?;
    let target = SocketAddr::new(es.server_ip, ECHO_PORT);
    let quic = SocketAddr::new(es.server_ip, 443);
    let _server = serve(&es.server_ns, target, false, Serve::RespondBytes(RESPONSE))?;
    let _echo = udp_echo(&es.server_ns, quic)?;
    let (mut times, over_quic) = in_ns(&es.site.client_ns, move || {
        let mut times = Vec::new();
        let mut over_quic = 0;
        for _ in 0..samples {
            let t0 = Instant::now();
            let u =
                std::net::UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::Io(e.to_string()))?;
            let _ = u.connect(quic);
            let _ = u.set_read_timeout(Some(QUIC_WAIT));
            // Answered, refused at once (EPERM or ECONNREFUSED) or not.
            let mut buf = [0u8; 2048];
            if u.send(&[0xc3u8; 1200]).is_ok() && u.recv(&mut buf).is_ok() {
                over_quic += 1;
                times.push(t0.elapsed().as_secs_f64() * 1000.0);
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            let mut s = connect(ClientWay::Tcp, target)
                .map_err(|e| LabError::Io(format!("connecting: {e}")))?;
            s.write_all(&[1u8; REQUEST])
                .map_err(|e| LabError::Io(format!("sending: {e}")))?;
            let mut resp = [0u8; RESPONSE];
            s.read_exact(&mut resp)
                .map_err(|e| LabError::Io(format!("receiving: {e}")))?;
            times.push(t0.elapsed().as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok((times, over_quic))
    })?;
    times.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    Ok(QuicFirstReport {
        quic: quic_mode,
        samples,
        over_quic,
        p50_ms: percentile(&times, 50.0),
        worst_ms: times.last().copied().unwrap_or(0.0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (a network namespace); skipped otherwise.
    #[test]
    fn a_server_stops_at_once_even_after_its_namespace_is_gone() {
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root to create a network namespace");
            return;
        }
        let ns = format!("braid-test-srv-{}", std::process::id());
        struct Removed(String);
        impl Drop for Removed {
            fn drop(&mut self) {
                let _ = braid_kernel::netns::delete(&self.0);
            }
        }
        braid_kernel::netns::create(&ns).unwrap();
        let removed = Removed(ns.clone());
        let server = serve(
            &ns,
            "0.0.0.0:5999".parse().unwrap(),
            false,
            Serve::RespondBytes(1),
        )
        .unwrap();
        // As the ttfb benchmark did: the lab first, then its server.
        drop(removed);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            drop(server);
            let _ = tx.send(());
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "dropping the server hung (its accept was never woken)"
        );
    }
}
