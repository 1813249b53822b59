//! What the relay and its client count, and the status they report (`braid
//! relay status`): one definition shared by the services and the CLI.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// Bytes one path carried for the relay's connections: subflows grouped by
/// their local and remote addresses.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathBytes {
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    /// Subflows open now on this path.
    pub subflows: u32,
    /// Bytes sent and acknowledged, and bytes received (subflow tcp_info),
    /// over connections that ended and those open now.
    pub bytes_sent: u64,
    pub bytes_received: u64,
}

/// A path: the local and remote address of its subflows.
type PathKey = (Option<IpAddr>, Option<IpAddr>);

/// Per-path totals (bytes sent, received) of connections that have ended.
#[derive(Debug, Default)]
pub struct PathTotals {
    by_path: Mutex<BTreeMap<PathKey, (u64, u64)>>,
}

impl PathTotals {
    pub fn add(&self, local: Option<IpAddr>, remote: Option<IpAddr>, sent: u64, received: u64) {
        let mut m = self.by_path.lock().expect("not poisoned");
        let e = m.entry((local, remote)).or_default();
        e.0 += sent;
        e.1 += received;
    }

    /// Totals so far plus what the open subflows have carried.
    pub fn with_live(&self, live: &[PathBytes]) -> Vec<PathBytes> {
        let mut m: BTreeMap<PathKey, PathBytes> = self
            .by_path
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, (s, r))| {
                (
                    *k,
                    PathBytes {
                        local: k.0,
                        remote: k.1,
                        subflows: 0,
                        bytes_sent: *s,
                        bytes_received: *r,
                    },
                )
            })
            .collect();
        for l in live {
            let e = m.entry((l.local, l.remote)).or_insert_with(|| PathBytes {
                local: l.local,
                remote: l.remote,
                ..Default::default()
            });
            e.subflows += l.subflows;
            e.bytes_sent += l.bytes_sent;
            e.bytes_received += l.bytes_received;
        }
        m.into_values().collect()
    }
}

/// Why a connection attempt was refused or failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refusal {
    /// No complete first message before the handshake timeout.
    HandshakeTimeout,
    /// Garbage, a wrong relay key, or a corrupted first message.
    BadHandshake,
    /// A valid handshake from a key not in the allowed list.
    UnknownKey,
    /// A replayed (or badly clocked) first message.
    Replay,
    /// Too many peers in their handshake: the oldest closed to make room,
    /// or a source over its own limit closed at once.
    TooManyHandshakes,
    /// A connection limit (global or per client).
    OverLimit,
    /// The destination policy refused it.
    DestinationRefused,
    /// The destination could not be resolved or reached.
    ConnectFailed,
    /// Client side: the relay could not be reached or did not answer.
    RelayUnreachable,
    /// Client side: the program's proxy request was malformed or unsupported.
    BadProxyRequest,
}

impl Refusal {
    /// What a relay's refusal with `status` counts as.
    pub fn for_status(status: crate::wire::Status) -> Refusal {
        if status == crate::wire::Status::NotAllowed {
            Refusal::DestinationRefused
        } else {
            Refusal::ConnectFailed
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Refusal::HandshakeTimeout => "handshake_timeout",
            Refusal::BadHandshake => "bad_handshake",
            Refusal::UnknownKey => "unknown_key",
            Refusal::Replay => "replay",
            Refusal::TooManyHandshakes => "too_many_handshakes",
            Refusal::OverLimit => "over_limit",
            Refusal::DestinationRefused => "destination_refused",
            Refusal::ConnectFailed => "connect_failed",
            Refusal::RelayUnreachable => "relay_unreachable",
            Refusal::BadProxyRequest => "bad_proxy_request",
        }
    }
}

/// Counters of one party (a client of the relay, or the relay client itself).
#[derive(Debug, Default)]
pub struct StreamCounters {
    pub active: AtomicU64,
    pub total: AtomicU64,
    /// Toward the destination (client to server); shared with the
    /// forwarding tasks, which count as they go.
    pub bytes_up: Arc<AtomicU64>,
    /// From the destination.
    pub bytes_down: Arc<AtomicU64>,
}

impl StreamCounters {
    pub fn snapshot(&self) -> StreamCount {
        StreamCount {
            active: self.active.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamCount {
    pub active: u64,
    pub total: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

/// Refusals by kind.
#[derive(Debug, Default)]
pub struct RefusalCounters {
    by_kind: Mutex<BTreeMap<Refusal, u64>>,
}

impl RefusalCounters {
    pub fn count(&self, r: Refusal) {
        *self
            .by_kind
            .lock()
            .expect("not poisoned")
            .entry(r)
            .or_default() += 1;
    }

    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.by_kind
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|(k, v)| (k.name().to_string(), *v))
            .collect()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientEntryStatus {
    pub name: String,
    pub public_key: String,
    pub max_connections: Option<u32>,
    #[serde(flatten)]
    pub streams: StreamCount,
}

/// `braid relay status` of a relay server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub pid: u32,
    pub uptime_s: u64,
    pub listen: Vec<SocketAddr>,
    pub public_key: String,
    /// Whether each listener really is MPTCP ("mptcp") or fell back ("tcp").
    pub transports: Vec<String>,
    pub fast_open: String,
    pub streams: StreamCount,
    /// Relayed connections that reached the relay over MPTCP / plain TCP.
    pub over_mptcp: u64,
    pub over_tcp: u64,
    pub clients: Vec<ClientEntryStatus>,
    pub handshakes_in_progress: u64,
    pub refused: BTreeMap<String, u64>,
    pub replay_memory: u64,
    pub paths: Vec<PathBytes>,
}

/// `braid relay status` of a relay client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub pid: u32,
    pub uptime_s: u64,
    pub relay: String,
    pub relay_public_key: String,
    pub public_key: String,
    pub socks: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    pub fast_open: String,
    pub streams: StreamCount,
    pub over_mptcp: u64,
    pub over_tcp: u64,
    /// Connections refused or failed, by reason.
    pub failures: BTreeMap<String, u64>,
    /// The most recent failure, worded for a person.
    pub last_failure: Option<String>,
    /// Whether the relay answered the last attempt to reach it.
    pub relay_reachable: bool,
    pub paths: Vec<PathBytes>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transparent: Option<TransparentStatus>,
}

/// Transparent mode, in `braid relay status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransparentStatus {
    pub scope: String,
    pub port: u16,
    pub fallback: String,
    pub quic: String,
    pub dns: String,
    /// Rules in the nftables table inet braid, as installed by this client
    /// and as found in the kernel now (they differ only if someone else
    /// changed the table).
    pub rules_installed: usize,
    pub rules_in_kernel: Option<usize>,
    pub relayed: u64,
    pub direct: u64,
    pub blocked: u64,
    pub dns_answered: u64,
    pub dns_failed: u64,
    #[serde(default)]
    pub udp_datagrams: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "role", rename_all = "snake_case")]
pub enum Status {
    Server(Box<ServerStatus>),
    Client(Box<ClientStatus>),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_totals_merge_with_live_subflows() {
        let t = PathTotals::default();
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let b: IpAddr = "10.2.0.1".parse().unwrap();
        t.add(Some(a), None, 100, 10);
        t.add(Some(a), None, 50, 5);
        let live = [PathBytes {
            local: Some(b),
            remote: None,
            subflows: 2,
            bytes_sent: 7,
            bytes_received: 1,
        }];
        let v = t.with_live(&live);
        assert_eq!(v.len(), 2);
        assert_eq!(
            (v[0].bytes_sent, v[0].bytes_received, v[0].subflows),
            (150, 15, 0)
        );
        assert_eq!((v[1].bytes_sent, v[1].subflows), (7, 2));
    }
}
