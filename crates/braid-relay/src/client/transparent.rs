//! Transparent mode's connections: TCP redirected by the nftables rules
//! (its destination read back from conntrack with SO_ORIGINAL_DST), DNS
//! queries (UDP, each carried to the relay's resolver), and what happens
//! while the relay cannot be reached (`fallback`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tracing::{debug, info, warn};

use super::tunnel::{open_tunnel, relay, TunnelError};
use super::udp;
use super::{first_bytes, Shared};
use crate::config::{Dns, Fallback};
use crate::net;
use crate::pipe::{self, Tunnel};
use crate::wire::{self, Destination, FrameKind, Kind};

/// While the relay is down, it is probed this often.
const PROBE_EVERY: Duration = Duration::from_secs(3);
/// A DNS answer through the relay, at most.
const DNS_TIMEOUT: Duration = Duration::from_secs(5);

/// What transparent mode counts.
#[derive(Debug, Default)]
pub(super) struct Counters {
    /// Redirected connections carried through the relay.
    pub relayed: AtomicU64,
    /// Connections that went out directly while the relay was down.
    pub direct: AtomicU64,
    /// Connections refused while the relay was down (fallback = block),
    /// or that the relay refused.
    pub blocked: AtomicU64,
    pub dns_answered: AtomicU64,
    pub dns_failed: AtomicU64,
    /// Redirected UDP datagrams (QUIC) sent through the relay.
    pub udp_datagrams: AtomicU64,
}

pub(super) async fn accept_tcp(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((app, peer)) => {
                let _ = app.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move { redirected(app, peer, &shared).await });
            }
            Err(e) => {
                warn!("accepting a redirected connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn redirected(mut app: TcpStream, peer: SocketAddr, shared: &Shared) {
    let dst = match braid_kernel::socket::original_destination(&app) {
        Ok(Some(d)) => d,
        Ok(None) => {
            // Someone connected to the port itself: nothing to carry.
            return debug!(%peer, "a connection that was not redirected: closed");
        }
        Err(e) => return warn!(%peer, "reading a redirected connection's destination: {e}"),
    };
    let port = shared.cfg.transparent_port;
    if dst.port() == port && (dst.ip().is_loopback() || dst.ip().is_unspecified()) {
        return debug!(%peer, "a connection to the transparent port itself: closed");
    }
    let t = &shared.transparent;
    let dns = dst.port() == 53 && shared.cfg.dns == Dns::Relay;
    let kind = if dns { Kind::Dns } else { Kind::Tcp };
    let dest = Destination::from(dst);
    let pending = first_bytes(&mut app, wire::early_data_room(&dest)).await;
    if shared.relay_health.is_down() {
        return fall_back(app, dst, pending, shared).await;
    }
    match open_tunnel(shared, kind, &dest, pending.clone()).await {
        Ok((stream, tunnel)) => {
            t.relayed.fetch_add(1, Ordering::Relaxed);
            relay(app, stream, tunnel, Vec::new(), shared, &dest).await
        }
        Err(TunnelError {
            relay_down: true, ..
        }) => fall_back(app, dst, pending, shared).await,
        Err(TunnelError { why, .. }) => {
            t.blocked.fetch_add(1, Ordering::Relaxed);
            info!(%peer, destination = %dest, "{why}: the program's connection is reset");
            pipe::reset_on_close(&app);
        }
    }
}

/// The relay is down: go out directly (the socket is marked, so the rules
/// leave it alone) or refuse.
async fn fall_back(mut app: TcpStream, dst: SocketAddr, pending: Vec<u8>, shared: &Shared) {
    let t = &shared.transparent;
    if shared.cfg.fallback == Fallback::Block {
        t.blocked.fetch_add(1, Ordering::Relaxed);
        pipe::reset_on_close(&app);
        return;
    }
    let direct = net::connect(dst, true, false, shared.mark()).await;
    let mut out = match direct {
        Ok((s, _, _)) => s,
        Err(e) => {
            debug!(destination = %dst, "direct connection failed: {e}");
            pipe::reset_on_close(&app);
            return;
        }
    };
    t.direct.fetch_add(1, Ordering::Relaxed);
    if !pending.is_empty() && out.write_all(&pending).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut app, &mut out).await;
}

/// While the relay is down, probe it; when it answers, it is up again.
pub(super) async fn watch_relay(shared: Arc<Shared>) {
    let mut changes = shared.relay_health.subscribe();
    loop {
        if !*changes.borrow_and_update() {
            if changes.changed().await.is_err() {
                return;
            }
            continue;
        }
        warn!(
            relay = %shared.relay,
            fallback = ?shared.cfg.fallback,
            "the relay cannot be reached: transparent mode {} until it answers again",
            match shared.cfg.fallback {
                Fallback::Direct => "sends connections out directly",
                Fallback::Block => "refuses connections",
            }
        );
        while shared.relay_health.is_down() {
            tokio::time::sleep(PROBE_EVERY).await;
            let probe = Destination::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9));
            if open_tunnel(&shared, Kind::Ping, &probe, Vec::new())
                .await
                .is_ok()
            {
                info!(relay = %shared.relay, "the relay answers again: transparent mode carries connections through it");
            }
        }
    }
}

/// Redirected UDP (QUIC) on transparent_port + 1: each program address
/// and original destination (from conntrack) is a flow through the relay;
/// answers leave from this socket, which conntrack turns back into the
/// destination the program sent to.
pub(super) async fn serve_udp(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let Ok(local) = socket.local_addr() else {
        return;
    };
    let flows = Arc::new(udp::Flows::default());
    // Each program address's original destination, looked up once.
    let mut destinations: std::collections::HashMap<SocketAddr, SocketAddr> = Default::default();
    let mut buf = vec![0u8; crate::datagrams::MAX_DATAGRAM];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!("receiving a redirected datagram failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let dst = match destinations.get(&from) {
            Some(d) => *d,
            None => {
                let lookup = tokio::task::spawn_blocking(move || {
                    braid_kernel::conntrack::original_destination(
                        braid_kernel::conntrack::Protocol::Udp,
                        local,
                        from,
                    )
                })
                .await;
                match lookup {
                    Ok(Ok(Some(d))) => {
                        if destinations.len() > 65_536 {
                            destinations.clear();
                        }
                        destinations.insert(from, d);
                        d
                    }
                    other => {
                        debug!(%from, "a redirected datagram without a conntrack entry: dropped ({other:?})");
                        continue;
                    }
                }
            }
        };
        let (sock, to) = (socket.clone(), from);
        let reply: udp::Reply = Arc::new(move |d: &[u8]| {
            let _ = sock.try_send_to(d, to);
        });
        shared
            .transparent
            .udp_datagrams
            .fetch_add(1, Ordering::Relaxed);
        udp::send(
            &shared,
            &flows,
            from,
            Destination::from(dst),
            buf[..n].to_vec(),
            reply,
        );
    }
}

pub(super) async fn serve_dns(socket: UdpSocket, shared: Arc<Shared>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(v) => v,
            Err(e) => {
                warn!("receiving a DNS query failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, shared) = (socket.clone(), shared.clone());
        tokio::spawn(async move {
            let t = &shared.transparent;
            match tokio::time::timeout(DNS_TIMEOUT, dns_through_relay(&shared, &query)).await {
                Ok(Ok(answer)) => {
                    t.dns_answered.fetch_add(1, Ordering::Relaxed);
                    // From the socket the query came to: conntrack turns the
                    // source back into the resolver the program asked.
                    let _ = socket.send_to(&answer, from).await;
                }
                Ok(Err(why)) => {
                    t.dns_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, "DNS query not answered: {why}");
                }
                Err(_) => {
                    t.dns_failed.fetch_add(1, Ordering::Relaxed);
                    debug!(%from, "DNS query not answered within {DNS_TIMEOUT:?}");
                }
            }
        });
    }
}

/// One DNS query over TCP to the relay's resolver (RFC 7766 framing).
async fn dns_through_relay(shared: &Shared, query: &[u8]) -> Result<Vec<u8>, String> {
    if query.len() > u16::MAX as usize {
        return Err("query too long".into());
    }
    let mut framed = (query.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    let dest = Destination::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 53));
    let (mut stream, mut tunnel) = open_tunnel(shared, Kind::Dns, &dest, framed)
        .await
        .map_err(|e| e.why)?;
    let answer = read_dns_message(&mut stream, &mut tunnel).await?;
    let (_, mut w) = stream.split();
    let _ = pipe::send_frame(&mut w, &mut tunnel.sealer, FrameKind::End, &[]).await;
    Ok(answer)
}

/// Read frames until one whole length-prefixed DNS message has arrived.
async fn read_dns_message(stream: &mut TcpStream, tunnel: &mut Tunnel) -> Result<Vec<u8>, String> {
    let mut data = Vec::new();
    let mut plain = vec![0u8; wire::MessageReader::CAPACITY];
    loop {
        while let Some(frame) =
            pipe::next_frame(&mut tunnel.reader, &mut tunnel.opener, &mut plain)?
        {
            match frame {
                (FrameKind::Data, d) => data.extend_from_slice(d),
                (kind, _) => return Err(format!("the resolver ended the stream ({kind:?})")),
            }
            if data.len() >= 2 {
                let len = u16::from_be_bytes([data[0], data[1]]) as usize;
                if data.len() >= 2 + len {
                    return Ok(data[2..2 + len].to_vec());
                }
            }
        }
        let spare = tunnel.reader.spare();
        match stream.read(spare).await {
            Ok(0) => return Err("the relay closed before the answer".into()),
            Ok(n) => tunnel.reader.filled(n),
            Err(e) => return Err(e.to_string()),
        }
    }
}
