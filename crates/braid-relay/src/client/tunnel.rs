//! Tunnels to the relay: connect, first message, answer; then forwarding.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::timeout_at;
use tracing::debug;

use super::{fail, unix_ms, Shared, RELAY_NAME_TTL};
use crate::net::{self, FastOpen};
use crate::noise::Initiator;
use crate::paths;
use crate::pipe::{self, Counters, Tunnel};
use crate::stats::Refusal;
use crate::wire::{self, Destination, Host, Kind, MessageReader, Reply, Request, Status};

/// Forward a program's connection through an open tunnel; `pending` are
/// bytes the program sent after its proxy request.
pub(super) async fn relay(
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
pub(super) async fn relay_addrs(shared: &Shared) -> Result<Vec<SocketAddr>, String> {
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

/// Why a tunnel did not open.
pub(super) struct TunnelError {
    /// What to tell the program.
    pub status: Status,
    pub why: String,
    /// The relay itself could not be reached (rather than refusing).
    pub relay_down: bool,
}

/// The relay could not be reached, or did not answer as the relay: counted,
/// and told to the program as a general failure.
fn relay_unreachable(shared: &Shared, why: String) -> TunnelError {
    fail(shared, Refusal::RelayUnreachable, why.clone());
    shared.relay_health.failed();
    TunnelError {
        status: Status::GeneralFailure,
        why,
        relay_down: true,
    }
}

/// A connection to the first of the relay's addresses that takes one
/// before `deadline`, and that address (remembered as one of the relay's).
async fn connect_relay(
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<(TcpStream, SocketAddr), TunnelError> {
    let unreachable = |why: String| relay_unreachable(shared, why);
    let addrs = relay_addrs(shared).await.map_err(unreachable)?;
    let mut stream = None;
    let mut last_err = String::from("no address");
    for addr in &addrs {
        match timeout_at(
            deadline,
            net::connect(*addr, shared.cfg.mptcp, shared.cfg.fast_open, shared.mark()),
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
    let Some((stream, addr)) = stream else {
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
    Ok((stream, addr))
}

/// The relay's answer (one whole message), read from `stream` at `addr`
/// before `deadline`; what follows it stays in `reader`.
async fn read_answer(
    shared: &Shared,
    stream: &mut TcpStream,
    reader: &mut MessageReader,
    addr: SocketAddr,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, TunnelError> {
    let unreachable = |why: String| relay_unreachable(shared, why);
    let silent = || {
        format!(
            "the relay {} did not answer within {} ms: it is unreachable, or it does not accept this client (check that relay_public_key is the relay's key, and that this client's key {} is listed in the relay's [[relay.server.client]])",
            shared.relay, shared.cfg.connect_timeout_ms, shared.public
        )
    };
    loop {
        if let Some(m) = reader.next_message() {
            return Ok(m.to_vec());
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
    }
}

/// Connect to the relay, send the request in the first flight, read the
/// answer. The error carries the status to give the program.
pub(super) async fn open_tunnel(
    shared: &Shared,
    kind: Kind,
    dest: &Destination,
    early_data: Vec<u8>,
) -> Result<(TcpStream, Tunnel), TunnelError> {
    let deadline =
        tokio::time::Instant::now() + Duration::from_millis(shared.cfg.connect_timeout_ms);
    let unreachable = |why: String| relay_unreachable(shared, why);
    let (mut stream, addr) = connect_relay(shared, deadline).await?;
    let mut initiator = Initiator::new(&shared.key, &shared.cfg.relay_public_key)
        .map_err(|e| unreachable(e.to_string()))?;
    let request = Request {
        kind,
        timestamp_ms: unix_ms(),
        destination: dest.clone(),
        early_data,
    };
    let msg = initiator
        .first_message(&request.encode())
        .map_err(|e| unreachable(e.to_string()))?;
    let mut flight = wire::length_prefix(msg.len()).to_vec();
    flight.extend_from_slice(&msg);
    match timeout_at(deadline, net::write_first_flight(&stream, &flight)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(unreachable(format!(
                "connecting to the relay {} failed: {e}",
                shared.relay
            )))
        }
        Err(_) => {
            return Err(unreachable(format!(
                "the relay {} did not accept the connection in time",
                shared.relay
            )))
        }
    }
    let mut reader = MessageReader::new();
    let answer = read_answer(shared, &mut stream, &mut reader, addr, deadline).await?;
    let (payload, session) = initiator.read_reply(&answer).map_err(|_| {
        unreachable(format!(
            "the relay's answer failed authentication: {} is not the relay whose key is relay_public_key",
            shared.relay
        ))
    })?;
    let reply = Reply::decode(&payload)
        .map_err(|e| unreachable(format!("malformed answer from the relay: {e}")))?;
    if reply.status != Status::Connected {
        let kind = Refusal::for_status(reply.status);
        let why = format!(
            "the relay refused {dest}: {} ({})",
            reply.status.describe(),
            reply.reason
        );
        fail(shared, kind, why.clone());
        shared.relay_health.answered();
        return Err(TunnelError {
            status: reply.status,
            why,
            relay_down: false,
        });
    }
    shared.relay_health.answered();
    net::tune_tunnel(&stream);
    if net::is_mptcp(&stream) {
        shared.over_mptcp.fetch_add(1, Ordering::Relaxed);
    } else {
        shared.over_tcp.fetch_add(1, Ordering::Relaxed);
    }
    let (sealer, opener) = session.split();
    Ok((
        stream,
        Tunnel {
            sealer,
            opener,
            reader,
        },
    ))
}
