//! Bounds, sans-IO: connection limits (all clients, and per client) and a
//! rate limit on logging refused peers, so a scan or a flood cannot fill
//! the journal.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// Open relayed connections, counted against the global and per-client
/// limits.
#[derive(Debug)]
pub struct ConnectionLimits {
    max_total: u32,
    total: u32,
    per_client: HashMap<String, u32>,
}

impl ConnectionLimits {
    pub fn new(max_total: u32) -> ConnectionLimits {
        ConnectionLimits {
            max_total,
            total: 0,
            per_client: HashMap::new(),
        }
    }

    /// Take a slot for `client` (whose own limit is `client_max`), or say
    /// which limit is reached.
    pub fn acquire(&mut self, client: &str, client_max: Option<u32>) -> Result<(), String> {
        let mine = self.per_client.get(client).copied().unwrap_or(0);
        if let Some(max) = client_max {
            if mine >= max {
                return Err(format!(
                    "client '{client}' has {mine} connections open, its limit (relay.server.client max_connections = {max})"
                ));
            }
        }
        if self.total >= self.max_total {
            return Err(format!(
                "the relay has {} connections open, its limit (relay.server.max_connections = {})",
                self.total, self.max_total
            ));
        }
        self.total += 1;
        *self.per_client.entry(client.to_string()).or_default() += 1;
        Ok(())
    }

    pub fn release(&mut self, client: &str) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_client.get_mut(client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(client);
            }
        }
    }

    pub fn open(&self) -> u32 {
        self.total
    }
}

/// Peers in their handshake: at most `max_total` at once (a newcomer over
/// that evicts the oldest, so peers that stall cannot keep clients out:
/// a real client finishes in one round trip and is rarely the oldest) and
/// at most `max_per_source` from one address. Each holds a `T` of the
/// caller's (the server's: how to close it).
#[derive(Debug)]
pub struct Handshakes<T> {
    max_total: usize,
    max_per_source: u32,
    next_id: u64,
    /// By id, which is also age: the first is the oldest.
    by_id: BTreeMap<u64, (IpAddr, T)>,
    per_source: HashMap<IpAddr, u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission<T> {
    /// Go ahead as handshake `id`; `evict` is what the oldest handshake,
    /// removed to make room, held: close it.
    Admit { id: u64, evict: Option<T> },
    /// Close at once, for this reason.
    Refuse(String),
}

impl<T> Handshakes<T> {
    pub fn new(max_total: usize, max_per_source: u32) -> Handshakes<T> {
        Handshakes {
            max_total: max_total.max(1),
            max_per_source: max_per_source.max(1),
            next_id: 0,
            by_id: BTreeMap::new(),
            per_source: HashMap::new(),
        }
    }

    /// A peer from `source` starts its handshake, holding `held`.
    pub fn admit(&mut self, source: IpAddr, held: T) -> Admission<T> {
        let mine = self.per_source.get(&source).copied().unwrap_or(0);
        if mine >= self.max_per_source {
            return Admission::Refuse(format!(
                "{source} has {mine} handshakes in progress (relay.server.max_handshakes_per_source)"
            ));
        }
        let evict = if self.by_id.len() >= self.max_total {
            self.by_id.pop_first().map(|(_, (src, held))| {
                self.left(src);
                held
            })
        } else {
            None
        };
        let id = self.next_id;
        self.next_id += 1;
        self.by_id.insert(id, (source, held));
        *self.per_source.entry(source).or_default() += 1;
        Admission::Admit { id, evict }
    }

    /// Handshake `id` is over (done, failed or evicted): what it held;
    /// unknown ids are ignored.
    pub fn finish(&mut self, id: u64) -> Option<T> {
        let (source, held) = self.by_id.remove(&id)?;
        self.left(source);
        Some(held)
    }

    fn left(&mut self, source: IpAddr) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    pub fn in_progress(&self) -> usize {
        self.by_id.len()
    }
}

/// What to do with one more line of a kind that is rate-limited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDecision {
    /// Log it; `suppressed` lines were dropped since the last one logged.
    Log {
        suppressed: u64,
    },
    Drop,
}

/// At most `burst` lines per `window_ms`.
#[derive(Debug)]
pub struct LogLimiter {
    burst: u32,
    window_ms: u64,
    window_start: u64,
    in_window: u32,
    suppressed: u64,
}

impl LogLimiter {
    pub fn new(burst: u32, window_ms: u64) -> LogLimiter {
        LogLimiter {
            burst,
            window_ms,
            window_start: 0,
            in_window: 0,
            suppressed: 0,
        }
    }

    pub fn decide(&mut self, now_ms: u64) -> LogDecision {
        if now_ms >= self.window_start + self.window_ms {
            self.window_start = now_ms;
            self.in_window = 0;
        }
        if self.in_window < self.burst {
            self.in_window += 1;
            let suppressed = std::mem::take(&mut self.suppressed);
            LogDecision::Log { suppressed }
        } else {
            self.suppressed += 1;
            LogDecision::Drop
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_client_and_global() {
        let mut l = ConnectionLimits::new(3);
        assert!(l.acquire("a", Some(2)).is_ok());
        assert!(l.acquire("a", Some(2)).is_ok());
        let e = l.acquire("a", Some(2)).unwrap_err();
        assert!(e.contains("client 'a'") && e.contains("= 2"), "{e}");
        assert!(l.acquire("b", None).is_ok());
        let e = l.acquire("b", None).unwrap_err();
        assert!(e.contains("relay.server.max_connections = 3"), "{e}");
        l.release("a");
        assert!(l.acquire("b", None).is_ok());
        assert_eq!(l.open(), 3);
        for c in ["a", "b", "b", "zzz"] {
            l.release(c);
        }
        assert_eq!(l.open(), 0);
    }

    #[test]
    fn handshakes_evict_the_oldest_and_bound_each_source() {
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        // Each holds its own id, so what an eviction hands back is checked.
        let mut h = Handshakes::new(3, 2);
        assert_eq!(h.admit(a, 0), Admission::Admit { id: 0, evict: None });
        assert_eq!(h.admit(a, 1), Admission::Admit { id: 1, evict: None });
        assert!(
            matches!(h.admit(a, 99), Admission::Refuse(why) if why.contains("192.0.2.1 has 2"))
        );
        assert_eq!(h.admit(b, 2), Admission::Admit { id: 2, evict: None });
        // Full: the oldest (0, from a) makes room.
        assert_eq!(
            h.admit(b, 3),
            Admission::Admit {
                id: 3,
                evict: Some(0)
            }
        );
        assert_eq!(h.in_progress(), 3);
        // a has one left in progress, so it may start another.
        assert_eq!(h.finish(2), Some(2));
        assert_eq!(h.admit(a, 4), Admission::Admit { id: 4, evict: None });
        for id in 0..10 {
            h.finish(id);
        }
        assert_eq!(h.in_progress(), 0);
    }

    #[test]
    fn log_limiter_counts_what_it_drops() {
        let mut l = LogLimiter::new(2, 1000);
        assert_eq!(l.decide(0), LogDecision::Log { suppressed: 0 });
        assert_eq!(l.decide(10), LogDecision::Log { suppressed: 0 });
        assert_eq!(l.decide(20), LogDecision::Drop);
        assert_eq!(l.decide(30), LogDecision::Drop);
        assert_eq!(l.decide(1000), LogDecision::Log { suppressed: 2 });
    }
}
