//! UDP through a tunnel: one MPTCP connection per flow, each datagram one
//! frame (frames are authenticated units, so datagram boundaries survive).
//! A flow ends when either side says so or nothing passed either way for
//! the idle time (UDP has no close).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

use crate::pipe::{add, next_frame, seal_into, sealed_len, send_frame, Counters, Outcome, Tunnel};
use crate::wire::{FrameKind, MessageReader};

/// The largest UDP payload (IPv4: 65535 - 20 - 8).
pub const MAX_DATAGRAM: usize = 65_507;
/// A flow with no datagram either way for this long ends (the NAT idle
/// timeout of most home routers for UDP is 30 to 180 s; QUIC keeps its
/// connections alive well within it).
pub const IDLE: Duration = Duration::from_secs(120);

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
    counters: Counters,
) -> Outcome {
    let (mut r, mut w) = tunnel_stream.split();
    let mut plain = vec![0u8; MessageReader::CAPACITY];
    let mut frame = Vec::with_capacity(1 + MAX_DATAGRAM);
    let mut out = vec![0u8; sealed_len(MAX_DATAGRAM)];
    loop {
        // Datagrams already read from the tunnel first.
        loop {
            match next_frame(&mut t.reader, &mut t.opener, &mut plain) {
                Ok(None) => break,
                Ok(Some((FrameKind::Data, d))) => {
                    add(&counters.out_of_tunnel, d.len());
                    to_local(d);
                }
                Ok(Some((FrameKind::End, _))) => return Outcome::Closed,
                Ok(Some((FrameKind::Reset, _))) => return Outcome::PeerReset,
                Err(e) => return Outcome::TunnelBroken(e),
            }
        }
        tokio::select! {
            d = from_local.recv() => match d {
                Some(d) if d.len() <= MAX_DATAGRAM => {
                    let sealed = match seal_into(&mut t.sealer, &mut frame, FrameKind::Data, &d, &mut out) {
                        Ok(m) => m,
                        Err(e) => return Outcome::TunnelBroken(e.to_string()),
                    };
                    if let Err(e) = w.write_all(&out[..sealed]).await {
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
            // Whole messages were taken out above: room for a read.
            n = r.read(t.reader.spare()) => match n {
                Ok(0) => return Outcome::TunnelBroken("the tunnel closed without an end-of-flow frame".into()),
                Ok(n) => t.reader.filled(n),
                Err(e) => return Outcome::TunnelBroken(format!("reading the tunnel: {e}")),
            },
            _ = tokio::time::sleep(idle) => {
                let _ = send_frame(&mut w, &mut t.sealer, FrameKind::End, &[]).await;
                return Outcome::Closed;
            }
        }
    }
}
