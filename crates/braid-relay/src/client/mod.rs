//! `braid relay connect`: the relay client's I/O shell. Programs reach it
//! through SOCKS5 or HTTP CONNECT; each of their connections becomes its
//! own MPTCP connection to the relay (so the path manager's endpoints and
//! modes apply to it, and one slow stream never blocks another), whose
//! first message carries the destination.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use braid_kernel::rtnl::{Change, Monitor};
use tokio::net::TcpListener;
use tracing::{info, warn};

use crate::config::{ClientConfig, Scope};
use crate::interceptor::Interceptor;
use crate::keys::{PrivateKey, PublicKey};
use crate::stats::{
    ClientStatus, PathTotals, Refusal, RefusalCounters, Status as StatusReport, StreamCounters,
    TransparentStatus,
};
use crate::wire::Destination;
use crate::{control, paths, RelayError};

mod proxy;
mod transparent;
mod tunnel;
mod udp;

use proxy::{accept_loop, Proxy};

/// How long a program may take to send its proxy request.
const PROXY_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// With `early_reply`, how long to wait for a program's first bytes.
const EARLY_DATA_WAIT: Duration = Duration::from_millis(20);
/// A resolved relay name is used this long before it is resolved again.
const RELAY_NAME_TTL: Duration = Duration::from_secs(60);

struct Shared {
    cfg: ClientConfig,
    key: PrivateKey,
    public: PublicKey,
    relay: Destination,
    started: Instant,
    totals: Arc<StreamCounters>,
    failures: RefusalCounters,
    last_failure: Mutex<Option<String>>,
    paths: PathTotals,
    over_mptcp: AtomicU64,
    over_tcp: AtomicU64,
    fast_open: Mutex<String>,
    resolved: Mutex<Option<(Instant, Vec<SocketAddr>)>>,
    /// Where the tunnels go, for the status's live path view.
    relay_addrs: Mutex<Vec<SocketAddr>>,
    relay_health: RelayHealth,
    transparent: transparent::Counters,
    /// Transparent mode's rules, once installed; removed when the client
    /// stops.
    interceptor: Mutex<Option<Interceptor>>,
}

/// Whether the relay answers: set when a tunnel fails to reach it, cleared
/// by any answer. Transparent mode falls back while it is down.
struct RelayHealth {
    down: tokio::sync::watch::Sender<bool>,
}

impl RelayHealth {
    fn new() -> RelayHealth {
        RelayHealth {
            down: tokio::sync::watch::channel(false).0,
        }
    }

    fn failed(&self) {
        self.down.send_if_modified(|d| !std::mem::replace(d, true));
    }

    fn answered(&self) {
        self.down.send_if_modified(|d| std::mem::replace(d, false));
    }

    fn is_down(&self) -> bool {
        *self.down.borrow()
    }

    fn subscribe(&self) -> tokio::sync::watch::Receiver<bool> {
        self.down.subscribe()
    }
}

/// Transparent mode's listeners: TCP and (for DNS) UDP on the same port.
struct TransparentListeners {
    tcp: Vec<TcpListener>,
    /// DNS queries (transparent_port).
    udp: Vec<tokio::net::UdpSocket>,
    /// Other redirected UDP, QUIC (transparent_port + 1).
    flows: Vec<tokio::net::UdpSocket>,
}

/// A UDP socket on `addr`; `None` (with a warning) for IPv6 where the host
/// has none.
fn bind_udp(addr: SocketAddr, what: &str) -> Result<Option<tokio::net::UdpSocket>, RelayError> {
    let bound = std::net::UdpSocket::bind(addr)
        .and_then(|s| s.set_nonblocking(true).map(|_| s))
        .and_then(tokio::net::UdpSocket::from_std);
    match bound {
        Ok(s) => Ok(Some(s)),
        Err(e) if addr.is_ipv6() => {
            warn!("transparent {what} without IPv6 ({addr}): {e}");
            Ok(None)
        }
        Err(e) => Err(RelayError::Io(format!(
            "cannot receive {what} on {addr}: {e} (pick another transparent_port)"
        ))),
    }
}

/// Where redirected traffic arrives: loopback for this host's programs
/// (REDIRECT in the output hook sends to 127.0.0.1 / ::1), any address for
/// a LAN (REDIRECT in prerouting sends to the receiving interface's own).
fn bind_transparent(cfg: &ClientConfig) -> Result<TransparentListeners, RelayError> {
    let (v4, v6): (IpAddr, IpAddr) = match cfg.scope {
        Scope::Lan(_) => (Ipv4Addr::UNSPECIFIED.into(), Ipv6Addr::UNSPECIFIED.into()),
        _ => (Ipv4Addr::LOCALHOST.into(), Ipv6Addr::LOCALHOST.into()),
    };
    let port = cfg.transparent_port;
    let mut l = TransparentListeners {
        tcp: vec![bind_listener(
            SocketAddr::new(v4, port),
            "redirected connections",
        )?],
        udp: Vec::new(),
        flows: Vec::new(),
    };
    // IPv6 may be off on the host: then there is nothing to redirect there.
    match bind_listener(SocketAddr::new(v6, port), "redirected connections") {
        Ok(t) => l.tcp.push(t),
        Err(e) => warn!("transparent mode without IPv6: {e}"),
    }
    for ip in [v4, v6] {
        if cfg.dns == crate::config::Dns::Relay {
            l.udp
                .extend(bind_udp(SocketAddr::new(ip, port), "DNS queries")?);
        }
        if cfg.quic == crate::config::Quic::Relay {
            l.flows
                .extend(bind_udp(SocketAddr::new(ip, port + 1), "QUIC")?);
        }
    }
    Ok(l)
}

/// A relay client ready to run: key loaded, listeners bound.
pub struct Client {
    shared: Arc<Shared>,
    socks: Option<TcpListener>,
    http: Option<TcpListener>,
    transparent: Option<TransparentListeners>,
    control: Option<control::ControlListener>,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn bind_listener(addr: SocketAddr, what: &str) -> Result<TcpListener, RelayError> {
    let bind = || -> std::io::Result<TcpListener> {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        if addr.is_ipv6() {
            s.set_only_v6(true)?;
        }
        s.bind(&addr.into())?;
        s.listen(1024)?;
        s.set_nonblocking(true)?;
        TcpListener::from_std(s.into())
    };
    let l = bind().map_err(|e| {
        RelayError::Io(format!(
            "cannot listen for {what} on {addr}: {e}{}",
            if e.raw_os_error() == Some(libc::EADDRINUSE) {
                " (another proxy uses that port: pick another in the configuration)"
            } else {
                ""
            }
        ))
    })?;
    if !addr.ip().is_loopback() {
        warn!(
            %addr,
            "the {what} listener is reachable from the network and asks no password: anyone who reaches it uses your relay"
        );
    }
    Ok(l)
}

impl Shared {
    /// The mark on the client's own sockets, in transparent mode.
    fn mark(&self) -> Option<u32> {
        self.cfg.transparent.then_some(self.cfg.mark)
    }
}

impl Client {
    pub fn bind(cfg: ClientConfig) -> Result<Client, RelayError> {
        let key = PrivateKey::load(&cfg.key_file)?;
        let public = key.public();
        if public == cfg.relay_public_key {
            return Err(RelayError::Config(
                "relay_public_key is this client's own public key: it must be the relay's ('braid relay pubkey' on the relay)".into(),
            ));
        }
        let socks = cfg
            .socks
            .0
            .map(|a| bind_listener(a, "SOCKS5"))
            .transpose()?;
        let http = cfg
            .http
            .0
            .map(|a| bind_listener(a, "HTTP CONNECT"))
            .transpose()?;
        let transparent = cfg
            .transparent
            .then(|| bind_transparent(&cfg))
            .transpose()?;
        let control = control::ControlListener::bind(&cfg.control_socket)?;
        let shared = Shared {
            key,
            public,
            relay: cfg.relay_destination(),
            started: Instant::now(),
            totals: Arc::default(),
            failures: RefusalCounters::default(),
            last_failure: Mutex::new(None),
            paths: PathTotals::default(),
            over_mptcp: AtomicU64::new(0),
            over_tcp: AtomicU64::new(0),
            fast_open: Mutex::new("not used yet".into()),
            resolved: Mutex::new(None),
            relay_addrs: Mutex::new(Vec::new()),
            relay_health: RelayHealth::new(),
            transparent: transparent::Counters::default(),
            interceptor: Mutex::new(None),
            cfg,
        };
        Ok(Client {
            shared: Arc::new(shared),
            socks,
            http,
            transparent,
            control: Some(control),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.shared.public
    }

    /// The bound SOCKS5 and HTTP listeners' addresses.
    pub fn listen_addrs(&self) -> (Option<SocketAddr>, Option<SocketAddr>) {
        (
            self.socks.as_ref().and_then(|l| l.local_addr().ok()),
            self.http.as_ref().and_then(|l| l.local_addr().ok()),
        )
    }

    /// Run until `stop` completes; `ready` is called once everything is in
    /// place (in transparent mode: the rules installed).
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
        ready: impl FnOnce(),
    ) -> Result<(), RelayError> {
        let shared = self.shared.clone();
        let (socks_addr, http_addr) = self.listen_addrs();
        info!(
            relay = %shared.relay,
            public_key = %shared.public,
            socks = ?socks_addr,
            http = ?http_addr,
            "relay client ready"
        );
        let mut tasks = tokio::task::JoinSet::new();
        if let Some(l) = self.socks.take() {
            tasks.spawn(accept_loop(l, shared.clone(), Proxy::Socks));
        }
        if let Some(l) = self.http.take() {
            tasks.spawn(accept_loop(l, shared.clone(), Proxy::Http));
        }
        if let Some(c) = self.control.take() {
            tasks.spawn(c.serve(shared.clone(), |sh| async move {
                StatusReport::Client(Box::new(status(&sh).await))
            }));
        }
        if let Some(listeners) = self.transparent.take() {
            // Listeners first, then the rules that send traffic to them.
            for l in listeners.tcp {
                tasks.spawn(transparent::accept_tcp(l, shared.clone()));
            }
            for u in listeners.udp {
                tasks.spawn(transparent::serve_dns(u, shared.clone()));
            }
            for u in listeners.flows {
                tasks.spawn(transparent::serve_udp(u, shared.clone()));
            }
            tasks.spawn(transparent::watch_relay(shared.clone()));
            Interceptor::clean_leftovers()?;
            let addrs = tunnel::relay_addrs(&shared).await.map_err(RelayError::Io)?;
            let ips: Vec<IpAddr> = addrs.iter().map(|a| a.ip()).collect();
            let i = Interceptor::install(&shared.cfg, &ips)?;
            *shared.interceptor.lock().expect("not poisoned") = Some(i);
            tasks.spawn(keep_rules_current(shared.clone()));
        }
        ready();
        stop.await;
        tasks.abort_all();
        let installed = shared.interceptor.lock().expect("not poisoned").take();
        if let Some(mut i) = installed {
            i.remove();
        }
        info!("relay client stopping");
        Ok(())
    }
}

/// Keep the rules matching the host: at once when one of its addresses
/// comes or goes (its subnets are excluded) and when the relay goes down or
/// comes back (see [`crate::transparent::HostFacts::relay_down`]); and every
/// [`RELAY_NAME_TTL`], for the relay's name (it may resolve elsewhere) and a
/// cgroup scope (the cgroup may be recreated).
async fn keep_rules_current(shared: Arc<Shared>) {
    let mut health = shared.relay_health.subscribe();
    let mut monitor = match Monitor::subscribe(None) {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(
                "transparent mode cannot follow address changes ({e}): they are picked up every {} s",
                RELAY_NAME_TTL.as_secs()
            );
            None
        }
    };
    let mut slow =
        tokio::time::interval_at(tokio::time::Instant::now() + RELAY_NAME_TTL, RELAY_NAME_TTL);
    slow.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = slow.tick() => {}
            r = health.changed() => if r.is_err() { return },
            _ = address_changed(&mut monitor) => {}
        }
        let ips: Vec<IpAddr> = match tunnel::relay_addrs(&shared).await {
            Ok(a) => a.iter().map(|a| a.ip()).collect(),
            Err(_) => continue,
        };
        let sh = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            let down = sh.relay_health.is_down();
            if let Some(i) = sh.interceptor.lock().expect("not poisoned").as_mut() {
                if let Err(e) = i.refresh(&sh.cfg, &ips, down) {
                    warn!("updating the transparent-mode rules: {e}");
                }
            }
        })
        .await;
    }
}

/// Returns when an address of the host came or went, or changes were lost
/// (then everything is re-read anyway); never without a monitor (one that
/// fails is dropped, with a warning).
async fn address_changed(monitor: &mut Option<Monitor>) {
    loop {
        let change = match monitor.as_mut() {
            Some(m) => m.next().await,
            None => return std::future::pending().await,
        };
        match change {
            Ok(Change::AddressAdded(_) | Change::AddressRemoved(_) | Change::Overflow) => return,
            Ok(_) => {}
            Err(e) => {
                warn!(
                    "transparent mode stops following address changes ({e}): they are picked up every {} s",
                    RELAY_NAME_TTL.as_secs()
                );
                *monitor = None;
            }
        }
    }
}

/// The program's first bytes, at most `room`, if it speaks first: programs
/// that do (HTTP, TLS) send within microseconds; the others cost
/// [`EARLY_DATA_WAIT`] once.
async fn first_bytes(app: &mut tokio::net::TcpStream, room: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut first = vec![0u8; room.min(64 * 1024)];
    match tokio::time::timeout(EARLY_DATA_WAIT, app.read(&mut first)).await {
        Ok(Ok(n)) => {
            first.truncate(n);
            first
        }
        _ => Vec::new(),
    }
}

fn fail(shared: &Shared, kind: Refusal, why: String) {
    shared.failures.count(kind);
    *shared.last_failure.lock().expect("not poisoned") = Some(why);
}

async fn status(shared: &Shared) -> ClientStatus {
    let relays = shared.relay_addrs.lock().expect("not poisoned").clone();
    let transparent_on = shared.cfg.transparent;
    let (live, in_kernel) = tokio::task::spawn_blocking(move || {
        let live = paths::live(|c| relays.contains(&c.remote));
        let rules = transparent_on
            .then(|| {
                braid_kernel::nft::list(crate::transparent::TABLE)
                    .ok()
                    .flatten()
            })
            .flatten()
            .map(|r| r.len());
        (live, rules)
    })
    .await
    .unwrap_or_default();
    let cfg = &shared.cfg;
    let t = &shared.transparent;
    let transparent = cfg.transparent.then(|| TransparentStatus {
        scope: cfg.scope.describe(),
        port: cfg.transparent_port,
        fallback: format!("{:?}", cfg.fallback).to_lowercase(),
        quic: format!("{:?}", cfg.quic).to_lowercase(),
        dns: format!("{:?}", cfg.dns).to_lowercase(),
        rules_installed: shared
            .interceptor
            .lock()
            .expect("not poisoned")
            .as_ref()
            .map_or(0, Interceptor::rules),
        rules_in_kernel: in_kernel,
        relayed: t.relayed.load(Ordering::Relaxed),
        direct: t.direct.load(Ordering::Relaxed),
        blocked: t.blocked.load(Ordering::Relaxed),
        dns_answered: t.dns_answered.load(Ordering::Relaxed),
        dns_failed: t.dns_failed.load(Ordering::Relaxed),
        udp_datagrams: t.udp_datagrams.load(Ordering::Relaxed),
    });
    ClientStatus {
        pid: std::process::id(),
        uptime_s: shared.started.elapsed().as_secs(),
        relay: shared.relay.to_string(),
        relay_public_key: shared.cfg.relay_public_key.to_text(),
        public_key: shared.public.to_text(),
        socks: shared.cfg.socks.0,
        http: shared.cfg.http.0,
        fast_open: shared.fast_open.lock().expect("not poisoned").clone(),
        streams: shared.totals.snapshot(),
        over_mptcp: shared.over_mptcp.load(Ordering::Relaxed),
        over_tcp: shared.over_tcp.load(Ordering::Relaxed),
        failures: shared.failures.snapshot(),
        last_failure: shared.last_failure.lock().expect("not poisoned").clone(),
        relay_reachable: !shared.relay_health.is_down(),
        paths: shared.paths.with_live(&live),
        transparent,
    }
}
