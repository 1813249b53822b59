//! Forwarding between a plain TCP connection (the program on the client
//! side, the destination on the relay side) and the encrypted tunnel, both
//! ways at once, with backpressure (each side reads only as fast as the
//! other writes), half-close (an authenticated end-of-stream frame becomes
//! a FIN) and resets (a reset on one side becomes a reset on the other).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

use crate::noise::{CryptoError, Opener, Sealer, TAG_LEN};
use crate::paths::{self, SubflowBytes};
use crate::wire::{self, FrameKind, MessageReader, LENGTH_PREFIX};

/// Bytes read from the plain side at once.
const READ_SIZE: usize = 64 * 1024;
/// Data per frame. The receiver can release a frame's bytes only once all
/// of it has arrived and authenticated, so a frame is a unit of delay: when
/// a path fails and the survivor restarts from a small window (10 segments,
/// ~14 KB per round trip), a 64 KiB frame holds the program's data for
/// four round trips. Measured (docs/benchmarks.md, relay frames): carrier
/// failover of a download stalls 253 ms with 64 KiB frames, 188 ms with
/// 16 KiB, 173 ms with 8 KiB against 163 ms direct; 8 KiB still forwards
/// 4.4 Gbit/s in one stream (6 Gbit/s per relay core).
pub const FRAME_DATA: usize = 8 * 1024 - 1;

/// The tunnel's state after the handshake.
pub struct Tunnel {
    pub sealer: Sealer,
    pub opener: Opener,
    /// Bytes of the tunnel already read (after the handshake message).
    pub reader: MessageReader,
}

/// How a forwarded connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Both sides ended their streams.
    Closed,
    /// The plain side reset its connection (passed on to the peer).
    PlainReset,
    /// The peer said its side was reset (passed on to the plain side).
    PeerReset,
    /// The tunnel broke (closed without an end-of-stream frame, failed
    /// authentication, or an I/O error); the plain side was reset.
    TunnelBroken(String),
}

/// Where the bytes are counted: toward the tunnel and out of it.
#[derive(Clone, Default)]
pub struct Counters {
    pub into_tunnel: Vec<Arc<AtomicU64>>,
    pub out_of_tunnel: Vec<Arc<AtomicU64>>,
}

pub(crate) fn add(counters: &[Arc<AtomicU64>], n: usize) {
    for c in counters {
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// How many bytes a frame carrying `data` bytes takes on the wire.
pub(crate) const fn sealed_len(data: usize) -> usize {
    LENGTH_PREFIX + 1 + data + TAG_LEN
}

/// Seal a frame of `kind` carrying `data` and put it, length-prefixed, at
/// the start of `out` (at least [`sealed_len`] bytes); returns the bytes of
/// `out` it took. `frame` stages the plaintext: keep it across calls and
/// it allocates once.
pub(crate) fn seal_into(
    sealer: &mut Sealer,
    frame: &mut Vec<u8>,
    kind: FrameKind,
    data: &[u8],
    out: &mut [u8],
) -> Result<usize, CryptoError> {
    frame.clear();
    frame.push(kind as u8);
    frame.extend_from_slice(data);
    let n = sealer.seal(frame, &mut out[LENGTH_PREFIX..])?;
    out[..LENGTH_PREFIX].copy_from_slice(&wire::length_prefix(n));
    Ok(LENGTH_PREFIX + n)
}

/// The next frame already read from the tunnel (`reader`), opened into
/// `plain` (at least [`MessageReader::CAPACITY`] bytes): its kind and data;
/// `None` until more is read. An error is a broken tunnel.
pub(crate) fn next_frame<'p>(
    reader: &mut MessageReader,
    opener: &mut Opener,
    plain: &'p mut [u8],
) -> Result<Option<(FrameKind, &'p [u8])>, String> {
    let Some(msg) = reader.next_message() else {
        return Ok(None);
    };
    let n = opener.open(msg, plain).map_err(|e| e.to_string())?;
    wire::parse_frame(&plain[..n])
        .map(Some)
        .map_err(|e| e.to_string())
}

/// Seal one frame and write it.
pub async fn send_frame<W: tokio::io::AsyncWrite + Unpin>(
    w: &mut W,
    sealer: &mut Sealer,
    kind: FrameKind,
    data: &[u8],
) -> std::io::Result<()> {
    let mut frame = Vec::with_capacity(1 + data.len());
    let mut out = vec![0u8; sealed_len(data.len())];
    let n = seal_into(sealer, &mut frame, kind, data, &mut out)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    w.write_all(&out[..n]).await
}

/// Make the socket's close a reset (SO_LINGER 0).
pub fn reset_on_close(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(std::time::Duration::ZERO));
}

enum Signal {
    /// The plain side failed: tell the peer with a reset frame.
    SendReset,
    /// Stop sending, nothing more to say.
    Stop,
}

/// How forwarding ended, and what each path of the tunnel carried (read
/// while the subflows were still there).
pub struct Forwarded {
    pub end: Outcome,
    pub paths: Vec<SubflowBytes>,
}

/// The tunnel's subflow counters, taken when a direction ends: the last
/// one taken is the connection's total, before the closing handshake
/// removes the subflows.
struct PathSnapshot {
    /// The tunnel socket, which outlives the forwarding (it is borrowed
    /// for all of it).
    tunnel: RawFd,
    taken: Mutex<Option<Vec<SubflowBytes>>>,
}

impl PathSnapshot {
    fn take(&self) {
        // SAFETY: the fd belongs to the tunnel stream that `forward`
        // borrows for as long as this snapshot exists.
        let fd = unsafe { BorrowedFd::borrow_raw(self.tunnel) };
        let now = paths::snapshot(&fd);
        if !now.is_empty() {
            *self.taken.lock().expect("not poisoned") = Some(now);
        }
    }
}

/// Forward until both directions have ended or one side resets.
pub async fn forward(
    plain: TcpStream,
    tunnel: &mut TcpStream,
    t: Tunnel,
    counters: Counters,
) -> Forwarded {
    let (plain_r, plain_w) = plain.into_split();
    let snapshot = PathSnapshot {
        tunnel: tunnel.as_raw_fd(),
        taken: Mutex::new(None),
    };
    let (tunnel_r, tunnel_w) = tunnel.split();
    let (signal_tx, signal_rx) = oneshot::channel();
    let up = to_tunnel(
        plain_r,
        tunnel_w,
        t.sealer,
        signal_rx,
        counters.into_tunnel,
        &snapshot,
    );
    let down = from_tunnel(
        tunnel_r,
        plain_w,
        t.opener,
        t.reader,
        signal_tx,
        counters.out_of_tunnel,
        &snapshot,
    );
    let (up, down) = tokio::join!(up, down);
    let end = match (up, down) {
        (Outcome::Closed, Outcome::Closed) => Outcome::Closed,
        (_, Outcome::PeerReset) => Outcome::PeerReset,
        (Outcome::PlainReset, _) | (_, Outcome::PlainReset) => Outcome::PlainReset,
        (Outcome::TunnelBroken(e), _) | (_, Outcome::TunnelBroken(e)) => Outcome::TunnelBroken(e),
        _ => Outcome::Closed,
    };
    if snapshot.taken.lock().expect("not poisoned").is_none() {
        snapshot.take();
    }
    let paths = snapshot
        .taken
        .into_inner()
        .expect("not poisoned")
        .unwrap_or_default();
    Forwarded { end, paths }
}

async fn to_tunnel(
    mut plain: OwnedReadHalf,
    mut tunnel: WriteHalf<'_>,
    mut sealer: Sealer,
    mut signal: oneshot::Receiver<Signal>,
    counters: Vec<Arc<AtomicU64>>,
    snapshot: &PathSnapshot,
) -> Outcome {
    let mut plain_buf = vec![0u8; READ_SIZE];
    let mut frame = Vec::with_capacity(1 + FRAME_DATA);
    let frames_per_read = READ_SIZE.div_ceil(FRAME_DATA);
    let mut out = vec![0u8; frames_per_read * sealed_len(FRAME_DATA)];
    // The other direction may finish first (it drops its sender): this
    // direction goes on until its own end.
    let mut signal_live = true;
    loop {
        tokio::select! {
            biased;
            s = &mut signal, if signal_live => match s {
                Ok(Signal::SendReset) => {
                    let _ = send_frame(&mut tunnel, &mut sealer, FrameKind::Reset, &[]).await;
                    return Outcome::PlainReset;
                }
                Ok(Signal::Stop) => return Outcome::Closed,
                Err(_) => signal_live = false,
            },
            r = plain.read(&mut plain_buf) => match r {
                Ok(0) => {
                    snapshot.take();
                    // End of stream, authenticated, then a FIN: the peer's
                    // reader knows the stream is complete.
                    if send_frame(&mut tunnel, &mut sealer, FrameKind::End, &[]).await.is_err() {
                        return Outcome::TunnelBroken("writing to the tunnel failed".into());
                    }
                    let _ = tunnel.shutdown().await;
                    return Outcome::Closed;
                }
                Ok(n) => {
                    // Frames of at most FRAME_DATA, written together.
                    let mut len = 0;
                    for chunk in plain_buf[..n].chunks(FRAME_DATA) {
                        match seal_into(&mut sealer, &mut frame, FrameKind::Data, chunk, &mut out[len..]) {
                            Ok(m) => len += m,
                            Err(e) => return Outcome::TunnelBroken(e.to_string()),
                        }
                    }
                    if let Err(e) = tunnel.write_all(&out[..len]).await {
                        return Outcome::TunnelBroken(format!("writing to the tunnel: {e}"));
                    }
                    add(&counters, n);
                }
                Err(_) => {
                    let _ = send_frame(&mut tunnel, &mut sealer, FrameKind::Reset, &[]).await;
                    let _ = tunnel.shutdown().await;
                    return Outcome::PlainReset;
                }
            },
        }
    }
}

async fn from_tunnel(
    mut tunnel: ReadHalf<'_>,
    mut plain: OwnedWriteHalf,
    mut opener: Opener,
    mut reader: MessageReader,
    signal: oneshot::Sender<Signal>,
    counters: Vec<Arc<AtomicU64>>,
    snapshot: &PathSnapshot,
) -> Outcome {
    let mut plain_buf = vec![0u8; MessageReader::CAPACITY];
    let mut ended = false;
    let broken = |plain: &OwnedWriteHalf, why: String| {
        reset_on_close(plain.as_ref());
        Outcome::TunnelBroken(why)
    };
    loop {
        // Whole messages already buffered first (the handshake may have
        // read some).
        loop {
            match next_frame(&mut reader, &mut opener, &mut plain_buf) {
                Ok(None) => break,
                Ok(Some((FrameKind::Data, _))) if ended => {
                    let _ = signal.send(Signal::Stop);
                    return broken(&plain, "data after the end of the stream".into());
                }
                Ok(Some((FrameKind::Data, d))) => {
                    if plain.write_all(d).await.is_err() {
                        reset_on_close(plain.as_ref());
                        let _ = signal.send(Signal::SendReset);
                        return Outcome::PlainReset;
                    }
                    add(&counters, d.len());
                }
                Ok(Some((FrameKind::End, _))) => {
                    ended = true;
                    snapshot.take();
                    let _ = plain.shutdown().await;
                }
                Ok(Some((FrameKind::Reset, _))) => {
                    reset_on_close(plain.as_ref());
                    let _ = signal.send(Signal::Stop);
                    return Outcome::PeerReset;
                }
                Err(e) => {
                    let _ = signal.send(Signal::Stop);
                    return broken(&plain, e);
                }
            }
        }
        let spare = reader.spare();
        match tunnel.read(spare).await {
            Ok(0) if ended => return Outcome::Closed,
            Ok(0) => {
                let _ = signal.send(Signal::Stop);
                return broken(
                    &plain,
                    "the tunnel closed without an end-of-stream frame".into(),
                );
            }
            Ok(n) => reader.filled(n),
            Err(e) => {
                let _ = signal.send(Signal::Stop);
                return broken(&plain, format!("reading the tunnel: {e}"));
            }
        }
    }
}
