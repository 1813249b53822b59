//! Programs that speak a proxy protocol: SOCKS5 and HTTP CONNECT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout_at;
use tracing::{debug, info, warn};

use super::tunnel::{open_tunnel, relay};
use super::udp;
use super::{fail, first_bytes, Shared, PROXY_REQUEST_TIMEOUT};
use crate::http_connect;
use crate::pipe;
use crate::socks;
use crate::stats::Refusal;
use crate::wire::{self, Destination, Kind, Status};

#[derive(Clone, Copy)]
pub(super) enum Proxy {
    Socks,
    Http,
}

pub(super) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, proxy: Proxy) {
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
        Err(e) => return refuse_socks(&mut app, peer, &shared, e).await,
    };
    buf.drain(..used);
    let request = match read_until(&mut app, &mut buf, deadline, socks::parse_request).await {
        Ok(r) => r,
        Err(why) => return debug!(%peer, "SOCKS: {why}"),
    };
    let (dest, used) = match request {
        Ok((socks::Command::Connect(d), used)) => (d, used),
        Ok((socks::Command::UdpAssociate, _)) => return udp_associate(app, peer, shared).await,
        Err(e) => return refuse_socks(&mut app, peer, &shared, e).await,
    };
    buf.drain(..used);
    serve_connect(app, peer, &shared, dest, buf, Proxy::Socks).await;
}

/// SOCKS5 UDP ASSOCIATE: a UDP socket for the program, next to the
/// listener; each destination it sends to becomes a flow through the
/// relay, until the request's TCP connection closes.
/// A SOCKS request that cannot be served: the client gets the answer the
/// parser chose (if any), the refusal is counted and logged.
async fn refuse_socks(
    app: &mut TcpStream,
    peer: SocketAddr,
    shared: &Shared,
    e: socks::SocksError,
) {
    if let Some(a) = e.answer {
        let _ = app.write_all(&a).await;
    }
    fail(
        shared,
        Refusal::BadProxyRequest,
        format!("SOCKS client {peer}: {}", e.why),
    );
    info!(%peer, "SOCKS: {}", e.why);
}

async fn udp_associate(mut app: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let local = match app.local_addr() {
        Ok(a) => a,
        Err(_) => return,
    };
    let socket = match tokio::net::UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
        Ok(s) => Arc::new(s),
        Err(e) => {
            warn!("a UDP socket for SOCKS client {peer}: {e}");
            let _ = app
                .write_all(&socks::reply(socks::REPLY_GENERAL_FAILURE, None))
                .await;
            return;
        }
    };
    let bound = socket.local_addr().ok();
    if app.write_all(&socks::reply(0, bound)).await.is_err() {
        return;
    }
    let flows = Arc::new(udp::Flows::default());
    let mut control = [0u8; 64];
    let mut buf = vec![0u8; crate::datagrams::MAX_DATAGRAM + 300];
    loop {
        tokio::select! {
            // The association lives as long as its TCP connection.
            r = app.read(&mut control) => match r {
                Ok(n) if n > 0 => {}
                _ => break,
            },
            r = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = r else { continue };
                // Only the program that asked may use the association.
                if from.ip() != peer.ip() {
                    continue;
                }
                let (dest, data) = match socks::parse_udp(&buf[..n]) {
                    Ok(v) => v,
                    Err(why) => {
                        debug!(%peer, "SOCKS UDP: {why}");
                        continue;
                    }
                };
                let header = socks::udp_header(&dest);
                let (sock, to) = (socket.clone(), from);
                let reply: udp::Reply = Arc::new(move |d: &[u8]| {
                    let mut out = header.clone();
                    out.extend_from_slice(d);
                    let _ = sock.try_send_to(&out, to);
                });
                udp::send(&shared, &flows, from, dest, data.to_vec(), reply);
            }
        }
    }
    flows.close_all();
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
        match open_tunnel(shared, Kind::Tcp, &dest, Vec::new()).await {
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
            Err(super::tunnel::TunnelError { status, why, .. }) => {
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
        pending = first_bytes(&mut app, room).await;
    }
    let rest = pending.split_off(pending.len().min(room));
    match open_tunnel(shared, Kind::Tcp, &dest, pending).await {
        Ok((tunnel_stream, tunnel)) => relay(app, tunnel_stream, tunnel, rest, shared, &dest).await,
        Err(super::tunnel::TunnelError { why, .. }) => {
            info!(%peer, destination = %dest, "{why} (the program was answered early: its connection is reset)");
            pipe::reset_on_close(&app);
        }
    }
}
