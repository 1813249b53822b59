//! UDP through a tunnel: one MPTCP connection per flow, each datagram one
//! frame (frames are authenticated units, so datagram boundaries survive).
//! A flow ends when either side says so or nothing passed either way for
//! the idle time (UDP has no close).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::noise::TAG_LEN;
use crate::pipe::{send_frame, Outcome, Tunnel};
use crate::wire::{self, FrameKind, MessageReader, LENGTH_PREFIX};

/// The largest UDP payload (IPv4: 65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65_507;
/// A flow with no datagram either way for this long ends (the NAT idle
/// timeout of most home routers for UDP is 30 to 180 s; QUIC keeps its
/// connections alive well within it).
pub const IDLE: Duration = Duration::from_secs(120);

/// Where a flow's datagrams are counted.
#[derive(Clone, Default)]
pub struct DatagramCounters {
    pub into_tunnel: Vec<Arc<AtomicU64>>,
    pub out_of_tunnel: Vec<Arc<AtomicU64>>,
}

fn add(counters: &[Arc<AtomicU64>], n: usize) {
    for c in counters {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Carry datagrams between the local side (`from_local` in, `to_local`
/// out: it must not block, a datagram it cannot send is dropped, as the
/// network would) and the tunnel, until either side ends or `idle` passes
/// without a datagram.
pub async fn forward(
    tunnel_stream: &mut TcpStream,
    mut t: Tunnel,
    mut from_local: mpsc::Receiver<Vec<u8>>,
    to_local: impl Fn(&[u8]),
    idle: Duration,
    counters: DatagramCounters,
) -> Outcome {
    let (mut r, mut w) = tunnel_stream.split();
    let mut plain = vec![0u8; MessageReader::CAPACITY];
    let mut frame = vec![0u8; 1 + MAX_DATAGRAM];
    frame[0] = FrameKind::Data as u8;
    let mut out = vec![0u8; LENGTH_PREFIX + 1 + MAX_DATAGRAM + TAG_LEN];
    let mut inbuf = vec![0u8; 64 * 1024];
    loop {
        // Datagrams already read from the tunnel first.
        while let Some(msg) = t.reader.next_message() {
            let n = match t.opener.open(msg, &mut plain) {
                Ok(n) => n,
                Err(e) => return Outcome::TunnelBroken(e.to_string()),
            };
            match wire::parse_frame(&plain[..n]) {
                Ok((FrameKind::Data, d)) => {
                    add(&counters.out_of_tunnel, d.len());
                    to_local(d);
                }
                Ok((FrameKind::End, _)) => return Outcome::Closed,
                Ok((FrameKind::Reset, _)) => return Outcome::PeerReset,
                Err(e) => return Outcome::TunnelBroken(e.to_string()),
            }
        }
        tokio::select! {
            d = from_local.recv() => match d {
                Some(d) if d.len() <= MAX_DATAGRAM => {
                    frame[1..1 + d.len()].copy_from_slice(&d);
                    let sealed = match t.sealer.seal(&frame[..1 + d.len()], &mut out[LENGTH_PREFIX..]) {
                        Ok(m) => m,
                        Err(e) => return Outcome::TunnelBroken(e.to_string()),
                    };
                    out[..LENGTH_PREFIX].copy_from_slice(&wire::length_prefix(sealed));
                    if let Err(e) = w.write_all(&out[..LENGTH_PREFIX + sealed]).await {
                        return Outcome::TunnelBroken(format!("writing to the tunnel: {e}"));
                    }
                    add(&counters.into_tunnel, d.len());
                }
                // Too large for UDP: cannot have come from a UDP socket.
                Some(_) => {}
                None => {
                    let _ = send_frame(&mut w, &mut t.sealer, FrameKind::End, &[]).await;
                    return Outcome::Closed;
                }
            },
            n = r.read(&mut inbuf) => match n {
                Ok(0) => return Outcome::TunnelBroken("the tunnel closed without an end-of-flow frame".into()),
                // Whole messages were taken out above: room for a read.
                Ok(n) => {
                    t.reader.push(&inbuf[..n]);
                }
                Err(e) => return Outcome::TunnelBroken(format!("reading the tunnel: {e}")),
            },
            _ = tokio::time::sleep(idle) => {
                let _ = send_frame(&mut w, &mut t.sealer, FrameKind::End, &[]).await;
                return Outcome::Closed;
            }
        }
    }
}
