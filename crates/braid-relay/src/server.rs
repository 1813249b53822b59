//! `braid relay serve`: the relay server's I/O shell. It accepts MPTCP (or
//! TCP) connections, runs the handshake with a deadline, checks the client,
//! the replay guard, the limits and the destination policy, connects to the
//! destination over plain TCP and forwards. Peers that fail authentication
//! hear nothing: the connection is held silently until the handshake
//! deadline and closed, as a server waiting for more would.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::time::timeout_at;
use tracing::{debug, info, warn};

use crate::config::ServerConfig;
use crate::destinations::DestinationPolicy;
use crate::keys::{PrivateKey, PublicKey};
use crate::limits::{Admission, ConnectionLimits, Handshakes, LogDecision, LogLimiter};
use crate::net::{self, FastOpen};
use crate::noise::{Responder, FIRST_MESSAGE_OVERHEAD};
use crate::pipe::{self, Counters, Outcome, Tunnel};
use crate::replay::ReplayGuard;
use crate::stats::{
    ClientEntryStatus, PathTotals, Refusal, RefusalCounters, ServerStatus, Status as StatusReport,
    StreamCounters,
};
use crate::wire::{self, Destination, Host, MessageReader, Reply, Request, Status};
use crate::{control, paths, RelayError};

/// The smallest first message: the handshake plus the shortest request.
const MIN_FIRST_MESSAGE: usize = FIRST_MESSAGE_OVERHEAD + 2 + 8 + 1 + 4 + 2;
/// First messages remembered by the replay guard at most.
const REPLAY_CAPACITY: usize = 1_000_000;

struct AllowedClient {
    name: String,
    max_connections: Option<u32>,
    counters: Arc<StreamCounters>,
}

/// Everything the connection tasks share.
struct Shared {
    cfg: ServerConfig,
    key: PrivateKey,
    public: PublicKey,
    clients: HashMap<PublicKey, AllowedClient>,
    policy: DestinationPolicy,
    started: Instant,
    replay: Mutex<ReplayGuard>,
    limits: Mutex<ConnectionLimits>,
    refusal_log: Mutex<LogLimiter>,
    /// Handshakes in progress, each with how to close it when evicted.
    handshakes: Mutex<Handshakes<oneshot::Sender<()>>>,
    totals: Arc<StreamCounters>,
    refused: RefusalCounters,
    paths: PathTotals,
    over_mptcp: AtomicU64,
    over_tcp: AtomicU64,
    local_addrs: RwLock<Vec<IpAddr>>,
    listeners: Vec<(SocketAddr, String)>,
    fast_open: String,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn local_addresses() -> Vec<IpAddr> {
    braid_kernel::rtnl::addresses()
        .map(|v| v.into_iter().map(|a| a.addr).collect())
        .unwrap_or_default()
}

/// A relay server ready to run: its key is loaded and its listeners bound.
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
    control: Option<control::ControlListener>,
}

impl Server {
    /// Load the key, bind the listeners and the control socket. Errors say
    /// what to fix.
    pub fn bind(cfg: ServerConfig) -> Result<Server, RelayError> {
        let key = PrivateKey::load(&cfg.key_file)?;
        let public = key.public();
        let mut clients = HashMap::new();
        for c in &cfg.clients {
            if *c.public_key.get_ref() == public {
                return Err(RelayError::Config(format!(
                    "client '{}' has the relay's own public key: each client needs its own key pair ('braid relay keygen' on the client)",
                    c.name.get_ref()
                )));
            }
            clients.insert(
                *c.public_key.get_ref(),
                AllowedClient {
                    name: c.name.get_ref().clone(),
                    max_connections: c.max_connections,
                    counters: Arc::default(),
                },
            );
        }
        let mut listeners = Vec::new();
        let mut described = Vec::new();
        let mut fast_open = Vec::new();
        for addr in &cfg.listen {
            let (l, t, fo) = net::listen(*addr, cfg.mptcp, cfg.fast_open).map_err(|e| {
                RelayError::Io(format!(
                    "cannot listen on {addr}: {e}{}",
                    match e.raw_os_error() {
                        Some(libc::EADDRINUSE) =>
                            " (another program, or another relay, uses that port)",
                        Some(libc::EADDRNOTAVAIL) => " (no interface has that address)",
                        Some(libc::EACCES) => " (ports below 1024 need CAP_NET_BIND_SERVICE)",
                        _ => "",
                    }
                ))
            })?;
            let transport = match t {
                braid_kernel::socket::Transport::Mptcp => "mptcp",
                braid_kernel::socket::Transport::Tcp => "tcp",
            };
            if t == braid_kernel::socket::Transport::Tcp && cfg.mptcp {
                warn!(%addr, "the kernel refused MPTCP (net.mptcp.enabled = 0?): listening with plain TCP, clients get one path");
            }
            described.push((*addr, transport.to_string()));
            fast_open.push(fo);
            listeners.push(l);
        }
        let fast_open = match fast_open.iter().find(|f| **f != FastOpen::On) {
            Some(off) => off.describe(),
            None => FastOpen::On.describe(),
        };
        let control = control::ControlListener::bind(&cfg.control_socket)?;
        let started_ms = unix_ms();
        let shared = Shared {
            policy: cfg.destination_policy(),
            replay: Mutex::new(ReplayGuard::new(
                cfg.replay_window_s * 1000,
                started_ms,
                REPLAY_CAPACITY,
            )),
            limits: Mutex::new(ConnectionLimits::new(cfg.max_connections)),
            refusal_log: Mutex::new(LogLimiter::new(20, 60_000)),
            handshakes: Mutex::new(Handshakes::new(
                cfg.max_handshakes as usize,
                cfg.max_handshakes_per_source,
            )),
            totals: Arc::default(),
            refused: RefusalCounters::default(),
            paths: PathTotals::default(),
            over_mptcp: AtomicU64::new(0),
            over_tcp: AtomicU64::new(0),
            local_addrs: RwLock::new(local_addresses()),
            listeners: described,
            fast_open,
            started: Instant::now(),
            key,
            public,
            clients,
            cfg,
        };
        Ok(Server {
            shared: Arc::new(shared),
            listeners,
            control: Some(control),
        })
    }

    pub fn public_key(&self) -> PublicKey {
        self.shared.public
    }

    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
    }

    /// Serve until `stop` completes; `ready` is called once everything is
    /// in place.
    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
        ready: impl FnOnce(),
    ) -> Result<(), RelayError> {
        let shared = self.shared.clone();
        info!(
            listen = ?shared.listeners,
            public_key = %shared.public,
            clients = shared.clients.len(),
            fast_open = %shared.fast_open,
            "relay serving"
        );
        let mut tasks = tokio::task::JoinSet::new();
        for l in std::mem::take(&mut self.listeners) {
            tasks.spawn(accept_loop(l, shared.clone()));
        }
        if let Some(c) = self.control.take() {
            tasks.spawn(c.serve(shared.clone(), |sh| async move {
                StatusReport::Server(Box::new(status(&sh).await))
            }));
        }
        let sh = shared.clone();
        tasks.spawn(async move {
            // The relay's own addresses change (DHCP, new interfaces).
            loop {
                tokio::time::sleep(Duration::from_secs(10)).await;
                if let Ok(a) = tokio::task::spawn_blocking(local_addresses).await {
                    *sh.local_addrs.write().expect("not poisoned") = a;
                }
            }
        });
        ready();
        stop.await;
        tasks.abort_all();
        info!("relay stopping");
        Ok(())
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(v) => v,
            Err(e) => {
                // EMFILE and friends: wait instead of spinning.
                warn!("accepting a connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let (tx, evicted) = oneshot::channel();
        let admission = shared
            .handshakes
            .lock()
            .expect("not poisoned")
            .admit(peer.ip(), tx);
        let id = match admission {
            Admission::Admit { id, evict } => {
                if let Some(old) = evict {
                    shared.refused.count(Refusal::TooManyHandshakes);
                    let _ = old.send(());
                }
                id
            }
            Admission::Refuse(why) => {
                shared.refused.count(Refusal::TooManyHandshakes);
                log_refusal(&shared, peer, &format!("{why}: closed at once"));
                drop(stream);
                continue;
            }
        };
        tokio::spawn(handle(stream, peer, shared.clone(), id, evicted));
    }
}

fn log_refusal(shared: &Shared, peer: SocketAddr, why: &str) {
    let decision = shared
        .refusal_log
        .lock()
        .expect("not poisoned")
        .decide(shared.started.elapsed().as_millis() as u64);
    match decision {
        LogDecision::Log { suppressed: 0 } => info!(%peer, "refused: {why}"),
        LogDecision::Log { suppressed } => {
            info!(%peer, "refused: {why} ({suppressed} more refusals not logged in the last minute)")
        }
        LogDecision::Drop => {}
    }
}

/// Hold a refused peer's connection silently until the handshake deadline,
/// discarding what it sends, then close it.
async fn silence(mut stream: TcpStream, deadline: tokio::time::Instant) {
    let mut sink = [0u8; 4096];
    let _ = timeout_at(deadline, async {
        loop {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

enum Refused {
    Silently(Refusal, String),
}

/// The first message, read by the deadline.
async fn read_first(
    stream: &mut TcpStream,
    reader: &mut MessageReader,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, Refused> {
    let read = async {
        loop {
            if let Some(n) = reader.peek_length() {
                // Judge the length as soon as it is there: nothing valid is
                // shorter, and nothing is worth waiting for if it is.
                if n < MIN_FIRST_MESSAGE {
                    return Err(Refused::Silently(
                        Refusal::BadHandshake,
                        format!("a first message of {n} bytes, shorter than any valid one"),
                    ));
                }
            }
            if let Some(m) = reader.next_message() {
                return Ok(m.to_vec());
            }
            let spare = reader.spare();
            match stream.read(spare).await {
                Ok(0) => {
                    return Err(Refused::Silently(
                        Refusal::BadHandshake,
                        "closed before a complete first message".into(),
                    ))
                }
                Ok(n) => reader.filled(n),
                Err(e) => {
                    return Err(Refused::Silently(
                        Refusal::BadHandshake,
                        format!("reading the first message: {e}"),
                    ))
                }
            }
        }
    };
    match timeout_at(deadline, read).await {
        Ok(r) => r,
        Err(_) => Err(Refused::Silently(
            Refusal::HandshakeTimeout,
            "no complete first message before the handshake deadline".into(),
        )),
    }
}

/// Ends a handshake's entry in the table when dropped.
struct HandshakeSlot<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for HandshakeSlot<'_> {
    fn drop(&mut self) {
        self.shared
            .handshakes
            .lock()
            .expect("not poisoned")
            .finish(self.id);
    }
}

/// Releases a connection slot when dropped.
struct ConnectionSlot {
    shared: Arc<Shared>,
    client: String,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        self.shared
            .limits
            .lock()
            .expect("not poisoned")
            .release(&self.client);
    }
}

async fn handle(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: Arc<Shared>,
    id: u64,
    mut evicted: oneshot::Receiver<()>,
) {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.handshake_timeout_ms);
    let slot = HandshakeSlot {
        shared: &shared,
        id,
    };
    let mut reader = MessageReader::new();
    let accepted = tokio::select! {
        first = read_first(&mut stream, &mut reader, deadline) => match first {
            Ok(first) => authenticate(&shared, &first),
            Err(r) => Err(r),
        },
        // Made room for a newer peer: close, as a busy server would.
        _ = &mut evicted => return,
    };
    let (responder, client_key, request) = match accepted {
        Ok(v) => v,
        Err(Refused::Silently(kind, why)) => {
            shared.refused.count(kind);
            log_refusal(&shared, peer, &why);
            tokio::select! {
                _ = silence(stream, deadline) => {}
                _ = &mut evicted => {}
            }
            drop(slot);
            return;
        }
    };
    drop(slot);
    let client = &shared.clients[&client_key];
    net::tune_tunnel(&stream);
    let over_mptcp = net::is_mptcp(&stream);
    if over_mptcp {
        shared.over_mptcp.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.over_tcp.fetch_add(1, Ordering::Relaxed);
    }
    let limit = shared
        .limits
        .lock()
        .expect("not poisoned")
        .acquire(&client.name, client.max_connections);
    let conn_slot = match limit {
        Ok(()) => ConnectionSlot {
            shared: shared.clone(),
            client: client.name.clone(),
        },
        Err(why) => {
            shared.refused.count(Refusal::OverLimit);
            log_refusal(&shared, peer, &format!("client '{}': {why}", client.name));
            let _ = answer(&mut stream, responder, Status::GeneralFailure, &why).await;
            return;
        }
    };
    let dest = request.destination.clone();
    if request.kind == wire::Kind::Udp {
        return relay_udp(stream, peer, &shared, client, responder, request).await;
    }
    let connected = match request.kind {
        wire::Kind::Tcp => open_destination(&shared, &dest).await,
        wire::Kind::Dns => open_resolver(&shared).await,
        wire::Kind::Ping => {
            let _ = answer(&mut stream, responder, Status::Connected, "").await;
            return;
        }
        wire::Kind::Udp => unreachable!("handled above"),
    };
    let destination = match connected {
        Ok(d) => d,
        Err((status, why)) => {
            shared.refused.count(Refusal::for_status(status));
            info!(client = %client.name, %peer, destination = %dest, "not connected: {why}");
            let _ = answer(&mut stream, responder, status, &why).await;
            return;
        }
    };
    let session = match answer(&mut stream, responder, Status::Connected, "").await {
        Ok(Some(s)) => s,
        _ => return,
    };
    let (sealer, opener) = session.split();
    let mut destination = destination;
    if !request.early_data.is_empty() {
        use tokio::io::AsyncWriteExt;
        if destination.write_all(&request.early_data).await.is_err() {
            return;
        }
    }
    debug!(client = %client.name, %peer, destination = %dest, mptcp = over_mptcp, "relaying");
    let counters = stream_started(&shared, client);
    let tunnel = Tunnel {
        sealer,
        opener,
        reader,
    };
    let outcome = pipe::forward(destination, &mut stream, tunnel, counters).await;
    paths::record(&shared.paths, &outcome.paths);
    stream_ended(&shared, client);
    match &outcome.end {
        Outcome::TunnelBroken(why) => {
            debug!(client = %client.name, %peer, destination = %dest, "tunnel broken: {why}")
        }
        other => debug!(client = %client.name, %peer, destination = %dest, "ended: {other:?}"),
    }
    drop(conn_slot);
}

/// A relayed stream (or UDP flow) starts: counted as active, in the
/// totals and the client's; where its bytes are counted.
fn stream_started(shared: &Shared, client: &AllowedClient) -> Counters {
    for c in [&shared.totals, &client.counters] {
        c.active.fetch_add(1, Ordering::Relaxed);
        c.total.fetch_add(1, Ordering::Relaxed);
    }
    Counters {
        // Toward the tunnel is from the destination: down.
        into_tunnel: vec![
            shared.totals.bytes_down.clone(),
            client.counters.bytes_down.clone(),
        ],
        out_of_tunnel: vec![
            shared.totals.bytes_up.clone(),
            client.counters.bytes_up.clone(),
        ],
    }
}

/// A stream counted by [`stream_started`] ended.
fn stream_ended(shared: &Shared, client: &AllowedClient) {
    for c in [&shared.totals, &client.counters] {
        c.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A UDP flow: a socket connected to the destination, each datagram one
/// frame of the tunnel; the first rides in the first message.
async fn relay_udp(
    mut stream: TcpStream,
    peer: SocketAddr,
    shared: &Arc<Shared>,
    client: &AllowedClient,
    responder: Responder,
    request: Request,
) {
    let dest = request.destination;
    let udp = match open_udp(shared, &dest).await {
        Ok(u) => Arc::new(u),
        Err((status, why)) => {
            shared.refused.count(Refusal::for_status(status));
            info!(client = %client.name, %peer, destination = %dest, "UDP not relayed: {why}");
            let _ = answer(&mut stream, responder, status, &why).await;
            return;
        }
    };
    let Ok(Some(session)) = answer(&mut stream, responder, Status::Connected, "").await else {
        return;
    };
    if !request.early_data.is_empty() {
        let _ = udp.send(&request.early_data).await;
    }
    let (sealer, opener) = session.split();
    let (tx, rx) = tokio::sync::mpsc::channel(256);
    let reader = {
        let udp = udp.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; crate::datagrams::MAX_DATAGRAM];
            while let Ok(n) = udp.recv(&mut buf).await {
                if tx.send(buf[..n].to_vec()).await.is_err() {
                    return;
                }
            }
        })
    };
    let counters = stream_started(shared, client);
    let tunnel = Tunnel {
        sealer,
        opener,
        reader: MessageReader::new(),
    };
    let sender = udp.clone();
    let end = crate::datagrams::forward(
        &mut stream,
        tunnel,
        rx,
        move |d| {
            let _ = sender.try_send(d);
        },
        crate::datagrams::IDLE,
        counters,
    )
    .await;
    reader.abort();
    stream_ended(shared, client);
    debug!(client = %client.name, %peer, destination = %dest, "UDP flow ended: {end:?}");
}

type Authenticated = (Responder, PublicKey, Request);

fn authenticate(shared: &Shared, first: &[u8]) -> Result<Authenticated, Refused> {
    let bad = |why: String| Refused::Silently(Refusal::BadHandshake, why);
    let mut responder = Responder::new(&shared.key).map_err(|e| bad(e.to_string()))?;
    let msg = responder
        .read_first(first)
        .map_err(|_| bad("a first message that does not decrypt (not a Braid client, or one configured with another relay key)".into()))?;
    if !shared.clients.contains_key(&msg.client) {
        return Err(Refused::Silently(
            Refusal::UnknownKey,
            format!(
                "client key {} is not in [[relay.server.client]] (add it to allow this client)",
                msg.client
            ),
        ));
    }
    let request = Request::decode(&msg.payload).map_err(|e| {
        bad(format!(
            "client '{}': malformed request: {e}",
            shared.clients[&msg.client].name
        ))
    })?;
    shared
        .replay
        .lock()
        .expect("not poisoned")
        .check(&msg.ephemeral, request.timestamp_ms, unix_ms())
        .map_err(|r| {
            Refused::Silently(
                Refusal::Replay,
                format!(
                    "client '{}': {}",
                    shared.clients[&msg.client].name,
                    r.describe()
                ),
            )
        })?;
    Ok((responder, msg.client, request))
}

/// TCP_SYN_RECV (include/net/tcp_states.h).
const TCP_SYN_RECV: u8 = 3;

/// Wait until a Fast Open connection has finished its handshake. Linux
/// 6.18 never sends what an MPTCP server writes between accepting data in
/// the SYN and the client's final ACK (plain TCP sends it at once), so the
/// answer waits for that ACK: at most one client round trip, and nothing
/// for connections without Fast Open.
async fn wait_established(stream: &TcpStream, deadline: tokio::time::Instant) {
    if braid_kernel::socket::socket_protocol(stream).ok() != Some(libc::IPPROTO_MPTCP) {
        return;
    }
    while tokio::time::Instant::now() < deadline {
        match braid_kernel::socket::tcp_info(stream) {
            Ok(Some(info)) if info.state == TCP_SYN_RECV => {
                tokio::time::sleep(Duration::from_millis(1)).await
            }
            _ => return,
        }
    }
}

/// Send the reply; the session when connected.
async fn answer(
    stream: &mut TcpStream,
    responder: Responder,
    status: Status,
    reason: &str,
) -> std::io::Result<Option<crate::noise::Session>> {
    use tokio::io::AsyncWriteExt;
    let reply = Reply {
        status,
        reason: reason.to_string(),
    };
    let (msg, session) = responder
        .reply(&reply.encode())
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    wait_established(stream, tokio::time::Instant::now() + Duration::from_secs(5)).await;
    let mut out = wire::length_prefix(msg.len()).to_vec();
    out.extend_from_slice(&msg);
    stream.write_all(&out).await?;
    if status == Status::Connected {
        Ok(Some(session))
    } else {
        let _ = stream.shutdown().await;
        Ok(None)
    }
}

/// The resolver that answers clients' DNS: the configured one, or the
/// first nameserver of /etc/resolv.conf (read each time: it changes).
fn resolver(cfg: &ServerConfig) -> Result<SocketAddr, String> {
    if let Some(a) = cfg.dns {
        return Ok(a);
    }
    let text = std::fs::read_to_string("/etc/resolv.conf")
        .map_err(|e| format!("no relay.server.dns and /etc/resolv.conf unreadable: {e}"))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .find_map(|a| a.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .ok_or_else(|| {
            "no nameserver in /etc/resolv.conf: set relay.server.dns (e.g. \"9.9.9.9:53\")"
                .to_string()
        })
}

/// Connect to the relay's own resolver over TCP (not subject to the
/// destination policy: it is the relay's configuration, often on loopback).
async fn open_resolver(shared: &Shared) -> Result<TcpStream, (Status, String)> {
    let addr = resolver(&shared.cfg).map_err(|why| (Status::GeneralFailure, why))?;
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.connect_timeout_ms);
    match timeout_at(deadline, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(e)) => Err((
            Status::HostUnreachable,
            format!("the relay's resolver {addr} refused DNS over TCP: {e}"),
        )),
        Err(_) => Err((
            Status::TimedOut,
            format!("the relay's resolver {addr} did not answer in time"),
        )),
    }
}

/// The destination's addresses the policy allows (resolved at the relay).
async fn allowed_addresses(
    shared: &Shared,
    dest: &Destination,
    deadline: tokio::time::Instant,
) -> Result<Vec<SocketAddr>, (Status, String)> {
    let candidates: Vec<SocketAddr> = match &dest.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, dest.port)],
        Host::Name(name) => {
            let lookup = tokio::net::lookup_host((name.as_str(), dest.port));
            match timeout_at(deadline, lookup).await {
                Ok(Ok(addrs)) => addrs.collect(),
                Ok(Err(e)) => {
                    return Err((
                        Status::HostUnreachable,
                        format!("cannot resolve {name} at the relay: {e}"),
                    ))
                }
                Err(_) => {
                    return Err((
                        Status::TimedOut,
                        format!("resolving {name} at the relay timed out"),
                    ))
                }
            }
        }
    };
    let local = shared.local_addrs.read().expect("not poisoned").clone();
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|a| match shared.policy.check(a.ip(), a.port(), &local) {
            Ok(()) => true,
            Err(why) => {
                refusal.get_or_insert(why);
                false
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            Status::NotAllowed,
            refusal.unwrap_or_else(|| format!("{dest} has no address")),
        ));
    }
    Ok(allowed)
}

/// A UDP socket connected to the destination.
async fn open_udp(shared: &Shared, dest: &Destination) -> Result<UdpSocket, (Status, String)> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.connect_timeout_ms);
    let addr = allowed_addresses(shared, dest, deadline).await?[0];
    let any: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(any).await.map_err(|e| {
        (
            Status::GeneralFailure,
            format!("a UDP socket for {dest}: {e}"),
        )
    })?;
    socket
        .connect(addr)
        .await
        .map_err(|e| (Status::NetworkUnreachable, format!("UDP to {addr}: {e}")))?;
    Ok(socket)
}

/// Resolve, check against the policy, connect.
async fn open_destination(
    shared: &Shared,
    dest: &Destination,
) -> Result<TcpStream, (Status, String)> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.connect_timeout_ms);
    let allowed = allowed_addresses(shared, dest, deadline).await?;
    let mut last = (Status::GeneralFailure, String::new());
    for addr in allowed {
        match timeout_at(deadline, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                let _ = s.set_nodelay(true);
                return Ok(s);
            }
            Ok(Err(e)) => {
                let status = match e.raw_os_error() {
                    Some(libc::ECONNREFUSED) => Status::ConnectionRefused,
                    Some(libc::ENETUNREACH) => Status::NetworkUnreachable,
                    Some(libc::EHOSTUNREACH) => Status::HostUnreachable,
                    Some(libc::ETIMEDOUT) => Status::TimedOut,
                    _ => Status::GeneralFailure,
                };
                last = (status, format!("connecting to {addr}: {e}"));
            }
            Err(_) => {
                return Err((
                    Status::TimedOut,
                    format!(
                        "connecting to {dest} timed out after {} ms",
                        shared.cfg.connect_timeout_ms
                    ),
                ))
            }
        }
    }
    Err(last)
}

async fn status(shared: &Shared) -> ServerStatus {
    let ports: Vec<u16> = shared.listeners.iter().map(|(a, _)| a.port()).collect();
    let live =
        tokio::task::spawn_blocking(move || paths::live(|c| ports.contains(&c.local.port())))
            .await
            .unwrap_or_default();
    let mut clients: Vec<ClientEntryStatus> = shared
        .clients
        .iter()
        .map(|(k, c)| ClientEntryStatus {
            name: c.name.clone(),
            public_key: k.to_text(),
            max_connections: c.max_connections,
            streams: c.counters.snapshot(),
        })
        .collect();
    clients.sort_by(|a, b| a.name.cmp(&b.name));
    ServerStatus {
        pid: std::process::id(),
        uptime_s: shared.started.elapsed().as_secs(),
        listen: shared.listeners.iter().map(|(a, _)| *a).collect(),
        public_key: shared.public.to_text(),
        transports: shared.listeners.iter().map(|(_, t)| t.clone()).collect(),
        fast_open: shared.fast_open.clone(),
        streams: shared.totals.snapshot(),
        over_mptcp: shared.over_mptcp.load(Ordering::Relaxed),
        over_tcp: shared.over_tcp.load(Ordering::Relaxed),
        clients,
        handshakes_in_progress: shared
            .handshakes
            .lock()
            .expect("not poisoned")
            .in_progress() as u64,
        refused: shared.refused.snapshot(),
        replay_memory: shared.replay.lock().expect("not poisoned").remembered() as u64,
        paths: shared.paths.with_live(&live),
    }
}
