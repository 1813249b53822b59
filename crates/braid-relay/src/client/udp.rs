//! UDP through the relay: programs' datagrams grouped into flows (one
//! program address and one destination), each flow its own tunnel, its
//! first datagram riding in the first message. Used by SOCKS5 UDP
//! ASSOCIATE and by transparent mode (QUIC).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;
use tracing::debug;

use super::tunnel::open_tunnel;
use super::Shared;
use crate::datagrams;
use crate::pipe::Counters;
use crate::wire::{Destination, Kind};

/// Datagrams waiting for a flow's tunnel: beyond this they are dropped, as
/// a full network queue would.
const QUEUE: usize = 256;

/// How a flow's answers reach the program.
pub(super) type Reply = Arc<dyn Fn(&[u8]) + Send + Sync>;

/// A flow: the program's address and the destination.
type FlowKey = (SocketAddr, Destination);
/// A flow's id (which of successive flows of one key) and its queue.
type FlowEntry = (u64, mpsc::Sender<Vec<u8>>);

/// The open flows of one local socket. Dropping every flow's sender (by
/// clearing the map) ends the flows.
#[derive(Default)]
pub(super) struct Flows {
    open: Mutex<HashMap<FlowKey, FlowEntry>>,
    next: std::sync::atomic::AtomicU64,
}

impl Flows {
    /// End every flow (their tunnels send an end-of-flow frame).
    pub fn close_all(&self) {
        self.open.lock().expect("not poisoned").clear();
    }
}

/// Send `data` from the program at `from` to `dest`: through the flow's
/// tunnel, opened (with `data` as its first datagram) if there is none.
pub(super) fn send(
    shared: &Arc<Shared>,
    flows: &Arc<Flows>,
    from: SocketAddr,
    dest: Destination,
    data: Vec<u8>,
    reply: Reply,
) {
    let key = (from, dest.clone());
    {
        let open = flows.open.lock().expect("not poisoned");
        if let Some((_, tx)) = open.get(&key) {
            match tx.try_send(data) {
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => return,
                // The flow ended: open a new one below.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    drop(open);
                    return start(shared, flows, key, d, reply);
                }
            }
        }
    }
    start(shared, flows, key, data, reply)
}

fn start(shared: &Arc<Shared>, flows: &Arc<Flows>, key: FlowKey, first: Vec<u8>, reply: Reply) {
    let (tx, rx) = mpsc::channel(QUEUE);
    let id = flows
        .next
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    flows
        .open
        .lock()
        .expect("not poisoned")
        .insert(key.clone(), (id, tx));
    let (shared, flows) = (shared.clone(), flows.clone());
    tokio::spawn(async move {
        let (from, dest) = &key;
        match open_tunnel(&shared, Kind::Udp, dest, first).await {
            Ok((mut stream, tunnel)) => {
                let counters = Counters {
                    into_tunnel: vec![shared.totals.bytes_up.clone()],
                    out_of_tunnel: vec![shared.totals.bytes_down.clone()],
                };
                let end = datagrams::forward(
                    &mut stream,
                    tunnel,
                    rx,
                    move |d| reply(d),
                    datagrams::IDLE,
                    counters,
                )
                .await;
                debug!(%from, destination = %dest, "UDP flow ended: {end:?}");
            }
            Err(e) => debug!(%from, destination = %dest, "UDP flow not opened: {}", e.why),
        }
        let mut open = flows.open.lock().expect("not poisoned");
        // Only if it is still this flow's entry (a newer one may have come).
        if open.get(&key).is_some_and(|(i, _)| *i == id) {
            open.remove(&key);
        }
    });
}
