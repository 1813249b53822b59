//! `braid relay connect`: the relay client's I/O shell. Programs reach it
//! through SOCKS5 or HTTP CONNECT; each of their connections becomes its
//! own MPTCP connection to the relay (so the path manager's endpoints and
//! modes apply to it, and one slow stream never blocks another), whose
//! first message carries the destination.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout_at;
use tracing::{debug, info, warn};

use crate::config::ClientConfig;
use crate::http_connect;
use crate::keys::{PrivateKey, PublicKey};
use crate::net::{self, FastOpen};
use crate::noise::Initiator;
use crate::pipe::{self, Counters, Tunnel};
use crate::socks;
use crate::stats::{
    ClientStatus, PathTotals, Refusal, RefusalCounters, Status as StatusReport, StreamCounters,
};
use crate::wire::{self, Destination, Host, Kind, MessageReader, Reply, Request, Status};
use crate::{control, paths, RelayError};

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
}

/// A relay client ready to run: key loaded, listeners bound.
pub struct Client {
    shared: Arc<Shared>,
    socks: Option<TcpListener>,
    http: Option<TcpListener>,
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
            cfg,
        };
        Ok(Client {
            shared: Arc::new(shared),
            socks,
            http,
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

    pub async fn run(
        mut self,
        stop: impl std::future::Future<Output = ()>,
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
            let sh = shared.clone();
            tasks.spawn(async move {
                c.serve(move || {
                    let sh = sh.clone();
                    async move { StatusReport::Client(status(&sh).await) }
                })
                .await
            });
        }
        stop.await;
        tasks.abort_all();
        info!("relay client stopping");
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Proxy {
    Socks,
    Http,
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, proxy: Proxy) {
    loop {
        match listener.accept().await {
            Ok((app, peer)) => {
                let _ = app.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    match proxy {
                        Proxy::Socks => socks_connection(app, peer, shared).await,
                        Proxy::Http => http_connection(app, peer, shared).await,
                    }
                });
            }
            Err(e) => {
                warn!("accepting a program's connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

fn fail(shared: &Shared, kind: Refusal, why: String) {
    shared.failures.count(kind);
    *shared.last_failure.lock().expect("not poisoned") = Some(why);
}

/// Read from the program until `parse` finds a whole message, within the
/// proxy request timeout.
async fn read_until<T, E>(
    app: &mut TcpStream,
    buf: &mut Vec<u8>,
    deadline: tokio::time::Instant,
    parse: impl Fn(&[u8]) -> Result<Option<T>, E>,
) -> Result<Result<T, E>, String> {
    loop {
        match parse(buf) {
            Ok(Some(v)) => return Ok(Ok(v)),
            Ok(None) => {}
            Err(e) => return Ok(Err(e)),
        }
        let mut chunk = [0u8; 2048];
        let n = match timeout_at(deadline, app.read(&mut chunk)).await {
            Ok(Ok(0)) => return Err("the program closed before its request was complete".into()),
            Ok(Ok(n)) => n,
            Ok(Err(e)) => return Err(format!("reading the program's request: {e}")),
            Err(_) => return Err("the program sent no complete request in 10 s".into()),
        };
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn socks_connection(mut app: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + PROXY_REQUEST_TIMEOUT;
    let mut buf = Vec::new();
    let greeting = match read_until(&mut app, &mut buf, deadline, socks::parse_greeting).await {
        Ok(g) => g,
        Err(why) => return debug!(%peer, "SOCKS: {why}"),
    };
    let used = match greeting {
        Ok((answer, used)) => {
            if app.write_all(&answer).await.is_err() {
                return;
            }
            used
        }
        Err(e) => {
            if let Some(a) = e.answer {
                let _ = app.write_all(&a).await;
            }
            fail(
                &shared,
                Refusal::BadProxyRequest,
                format!("SOCKS client {peer}: {}", e.why),
            );
            return info!(%peer, "SOCKS: {}", e.why);
        }
    };
    buf.drain(..used);
    let request = match read_until(&mut app, &mut buf, deadline, socks::parse_request).await {
        Ok(r) => r,
        Err(why) => return debug!(%peer, "SOCKS: {why}"),
    };
    let (dest, used) = match request {
        Ok((socks::Command::Connect(d), used)) => (d, used),
        Err(e) => {
            if let Some(a) = e.answer {
                let _ = app.write_all(&a).await;
            }
            fail(
                &shared,
                Refusal::BadProxyRequest,
                format!("SOCKS client {peer}: {}", e.why),
            );
            return info!(%peer, "SOCKS: {}", e.why);
        }
    };
    buf.drain(..used);
    serve_connect(app, peer, &shared, dest, buf, Proxy::Socks).await;
}

async fn http_connection(mut app: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let deadline = tokio::time::Instant::now() + PROXY_REQUEST_TIMEOUT;
    let mut buf = Vec::new();
    let request = match read_until(&mut app, &mut buf, deadline, http_connect::parse_request).await
    {
        Ok(r) => r,
        Err(why) => return debug!(%peer, "HTTP CONNECT: {why}"),
    };
    let (dest, used) = match request {
        Ok(v) => v,
        Err(e) => {
            let _ = app.write_all(&e.answer).await;
            fail(
                &shared,
                Refusal::BadProxyRequest,
                format!("HTTP client {peer}: {}", e.why),
            );
            return info!(%peer, "HTTP CONNECT: {}", e.why);
        }
    };
    buf.drain(..used);
    serve_connect(app, peer, &shared, dest, buf, Proxy::Http).await;
}

/// The proxy protocol's answer to a CONNECT.
fn proxy_answer(proxy: Proxy, status: Status, why: &str) -> Vec<u8> {
    match proxy {
        Proxy::Socks => socks::reply(status.socks_code(), None),
        Proxy::Http => http_connect::answer(status, why),
    }
}

/// Serve a program's CONNECT to `dest`; `pending` are bytes it sent after
/// its request. By default the program hears the relay's verdict (the
/// right SOCKS or HTTP error when the destination is refused or down).
/// With `early_reply` it hears "connected" at once and its first bytes
/// ride with the destination in the first message: one round trip less,
/// but a failure then shows as a reset connection.
async fn serve_connect(
    mut app: TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    dest: Destination,
    mut pending: Vec<u8>,
    proxy: Proxy,
) {
    if !shared.cfg.early_reply {
        match open_tunnel(shared, &dest, Vec::new()).await {
            Ok((tunnel_stream, tunnel)) => {
                if app
                    .write_all(&proxy_answer(proxy, Status::Connected, ""))
                    .await
                    .is_err()
                {
                    return;
                }
                relay(app, tunnel_stream, tunnel, pending, shared, &dest).await;
            }
            Err((status, why)) => {
                info!(%peer, destination = %dest, "{why}");
                let _ = app.write_all(&proxy_answer(proxy, status, &why)).await;
            }
        }
        return;
    }
    if app
        .write_all(&proxy_answer(proxy, Status::Connected, ""))
        .await
        .is_err()
    {
        return;
    }
    let room = wire::early_data_room(&dest);
    if pending.is_empty() {
        // Programs that speak first (HTTP, TLS) do so within microseconds
        // of the answer; the others cost this wait once.
        let mut first = vec![0u8; room.min(64 * 1024)];
        if let Ok(Ok(n)) = tokio::time::timeout(EARLY_DATA_WAIT, app.read(&mut first)).await {
            first.truncate(n);
            pending = first;
        }
    }
    let rest = pending.split_off(pending.len().min(room));
    match open_tunnel(shared, &dest, pending).await {
        Ok((tunnel_stream, tunnel)) => relay(app, tunnel_stream, tunnel, rest, shared, &dest).await,
        Err((_, why)) => {
            info!(%peer, destination = %dest, "{why} (the program was answered early: its connection is reset)");
            pipe::reset_on_close(&app);
        }
    }
}

/// Forward a program's connection through an open tunnel; `pending` are
/// bytes the program sent after its proxy request.
async fn relay(
    app: TcpStream,
    mut tunnel_stream: TcpStream,
    mut tunnel: Tunnel,
    pending: Vec<u8>,
    shared: &Shared,
    dest: &Destination,
) {
    if !pending.is_empty() {
        let (_, mut w) = tunnel_stream.split();
        for chunk in pending.chunks(pipe::FRAME_DATA) {
            if pipe::send_frame(&mut w, &mut tunnel.sealer, wire::FrameKind::Data, chunk)
                .await
                .is_err()
            {
                return;
            }
        }
        shared
            .totals
            .bytes_up
            .fetch_add(pending.len() as u64, Ordering::Relaxed);
    }
    shared.totals.active.fetch_add(1, Ordering::Relaxed);
    shared.totals.total.fetch_add(1, Ordering::Relaxed);
    let counters = Counters {
        into_tunnel: vec![shared.totals.bytes_up.clone()],
        out_of_tunnel: vec![shared.totals.bytes_down.clone()],
    };
    let done = pipe::forward(app, &mut tunnel_stream, tunnel, counters).await;
    paths::record(&shared.paths, &done.paths);
    shared.totals.active.fetch_sub(1, Ordering::Relaxed);
    debug!(destination = %dest, "ended: {:?}", done.end);
}

/// The relay's addresses (a name is resolved at most once a minute).
async fn relay_addrs(shared: &Shared) -> Result<Vec<SocketAddr>, String> {
    let name = match &shared.relay.host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, shared.relay.port)]),
        Host::Name(n) => n.clone(),
    };
    if let Some((at, addrs)) = &*shared.resolved.lock().expect("not poisoned") {
        if at.elapsed() < RELAY_NAME_TTL {
            return Ok(addrs.clone());
        }
    }
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((name.as_str(), shared.relay.port))
        .await
        .map_err(|e| format!("cannot resolve the relay {name}: {e}"))?
        .collect();
    *shared.resolved.lock().expect("not poisoned") = Some((Instant::now(), addrs.clone()));
    Ok(addrs)
}

/// Connect to the relay, send the request in the first flight, read the
/// answer. The error carries the status to give the program.
async fn open_tunnel(
    shared: &Shared,
    dest: &Destination,
    early_data: Vec<u8>,
) -> Result<(TcpStream, Tunnel), (Status, String)> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.connect_timeout_ms);
    let unreachable = |why: String| {
        fail(shared, Refusal::RelayUnreachable, why.clone());
        (Status::GeneralFailure, why)
    };
    let addrs = relay_addrs(shared).await.map_err(unreachable)?;
    let mut stream = None;
    let mut last_err = String::from("no address");
    for addr in &addrs {
        match timeout_at(
            deadline,
            net::connect(*addr, shared.cfg.mptcp, shared.cfg.fast_open),
        )
        .await
        {
            Ok(Ok((s, _, fo))) => {
                *shared.fast_open.lock().expect("not poisoned") = fo.describe();
                if fo != FastOpen::On {
                    debug!("fast open {}", fo.describe());
                }
                stream = Some((s, *addr));
                break;
            }
            Ok(Err(e)) => last_err = format!("{addr}: {e}"),
            Err(_) => last_err = format!("{addr}: timed out"),
        }
    }
    let Some((mut stream, addr)) = stream else {
        let name = match &shared.relay.host {
            Host::Name(_) => format!("{} ", shared.relay),
            Host::Ip(_) => String::new(),
        };
        return Err(unreachable(format!(
            "cannot connect to the relay {name}({last_err})"
        )));
    };
    {
        let mut seen = shared.relay_addrs.lock().expect("not poisoned");
        if !seen.contains(&addr) {
            seen.push(addr);
        }
    }
    let mut initiator = Initiator::new(&shared.key, &shared.cfg.relay_public_key)
        .map_err(|e| unreachable(e.to_string()))?;
    let request = Request {
        kind: Kind::Tcp,
        timestamp_ms: unix_ms(),
        destination: dest.clone(),
        early_data,
    };
    let msg = initiator
        .first_message(&request.encode())
        .map_err(|e| unreachable(e.to_string()))?;
    let mut flight = wire::length_prefix(msg.len()).to_vec();
    flight.extend_from_slice(&msg);
    if let Err(e) = timeout_at(deadline, net::write_first_flight(&stream, &flight)).await {
        let _ = e;
        return Err(unreachable(format!(
            "the relay {} did not accept the connection in time",
            shared.relay
        )));
    }
    let mut reader = MessageReader::new();
    let silent = || {
        format!(
            "the relay {} did not answer within {} ms: it is unreachable, or it does not accept this client (check that relay_public_key is the relay's key, and that this client's key {} is listed in the relay's [[relay.server.client]])",
            shared.relay, shared.cfg.connect_timeout_ms, shared.public
        )
    };
    let answer = loop {
        if let Some(m) = reader.next_message() {
            break m.to_vec();
        }
        let spare = reader.spare();
        match timeout_at(deadline, stream.read(spare)).await {
            Ok(Ok(0)) => return Err(unreachable(silent())),
            Ok(Ok(n)) => reader.filled(n),
            Ok(Err(e)) => {
                return Err(unreachable(format!(
                    "reading the answer of the relay {} ({addr}): {e}",
                    shared.relay
                )))
            }
            Err(_) => return Err(unreachable(silent())),
        }
    };
    let (payload, session) = initiator.read_reply(&answer).map_err(|_| {
        unreachable(format!(
            "the relay's answer failed authentication: {} is not the relay whose key is relay_public_key",
            shared.relay
        ))
    })?;
    let reply = Reply::decode(&payload)
        .map_err(|e| unreachable(format!("malformed answer from the relay: {e}")))?;
    if reply.status != Status::Connected {
        let kind = if reply.status == Status::NotAllowed {
            Refusal::DestinationRefused
        } else {
            Refusal::ConnectFailed
        };
        let why = format!(
            "the relay refused {dest}: {} ({})",
            reply.status.describe(),
            reply.reason
        );
        fail(shared, kind, why.clone());
        return Err((reply.status, why));
    }
    net::tune_tunnel(&stream);
    if net::is_mptcp(&stream) {
        shared.over_mptcp.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.over_tcp.fetch_add(1, Ordering::Relaxed);
    }
    let (sealer, opener) = session.split();
    let _ = &mut stream;
    Ok((
        stream,
        Tunnel {
            sealer,
            opener,
            reader,
        },
    ))
}

async fn status(shared: &Shared) -> ClientStatus {
    let relays = shared.relay_addrs.lock().expect("not poisoned").clone();
    let live = tokio::task::spawn_blocking(move || paths::live(|c| relays.contains(&c.remote)))
        .await
        .unwrap_or_default();
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
        paths: shared.paths.with_live(&live),
    }
}
