//! The daemon's memory of what happened and why: MPTCP events, the
//! changes it saw (links, addresses, routes, probe answers, reloads), its
//! decisions and the actions the kernel refused, each numbered and timed.
//! `braid monitor` reads it live and, with `--since`, from the past.
//!
//! Bounded: MPTCP events come four or more per connection and would push
//! decisions out of a shared buffer on a busy host, so each kind has its
//! own ring of [`KEEP`] entries.

use std::collections::VecDeque;

use braid_kernel::events::Event as MptcpEvent;
use braid_policy::conns::ConnAction;
use braid_policy::model::Action;
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Entries kept of each kind (MPTCP events; everything else).
pub const KEEP: usize = 1024;
/// Live followers at once: each holds one of the control socket's slots,
/// and `braid status` must still get one.
pub const MAX_FOLLOWERS: usize = 8;
/// Entries buffered for a follower that reads slowly; beyond this it is
/// told how many it missed.
const LIVE_BUFFER: usize = 1024;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Increases by one per entry from the daemon's start (0: a notice
    /// to one follower, not part of the journal).
    pub seq: u64,
    /// Wall-clock time, milliseconds since the Unix epoch.
    pub unix_ms: u64,
    #[serde(flatten)]
    pub what: What,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum What {
    /// An MPTCP event as the kernel sent it.
    Mptcp { event: MptcpEvent },
    /// A change the daemon saw (link, address, route, probe answer, reload).
    Change { text: String },
    /// What the daemon did, and why; `id` numbers the daemon's decisions.
    Decision {
        id: u64,
        action: Action,
        reason: String,
    },
    /// The action of decision `id`, refused by the kernel.
    Refused {
        id: u64,
        action: Action,
        error: String,
    },
    /// What the per-connection path manager did on one connection, and why.
    ConnDecision { action: ConnAction, reason: String },
    /// A per-connection action the kernel refused.
    ConnRefused { action: ConnAction, error: String },
    /// About the daemon itself: events lost, a resynchronisation.
    Note { text: String },
    /// A follower read too slowly and missed this many entries.
    Missed { count: u64 },
}

impl What {
    /// About one connection (its events, the per-connection manager's
    /// decisions): kept apart, so connection churn cannot push the
    /// host's decisions out.
    fn is_per_connection(&self) -> bool {
        matches!(
            self,
            What::Mptcp { .. } | What::ConnDecision { .. } | What::ConnRefused { .. }
        )
    }
}

pub struct Journal {
    next_seq: u64,
    per_connection: VecDeque<Entry>,
    other: VecDeque<Entry>,
    live: broadcast::Sender<Entry>,
}

impl Default for Journal {
    fn default() -> Self {
        Journal {
            next_seq: 1,
            per_connection: VecDeque::new(),
            other: VecDeque::new(),
            live: broadcast::channel(LIVE_BUFFER).0,
        }
    }
}

impl Journal {
    pub fn record(&mut self, unix_ms: u64, what: What) {
        let entry = Entry {
            seq: self.next_seq,
            unix_ms,
            what,
        };
        self.next_seq += 1;
        if self.live.receiver_count() > 0 {
            let _ = self.live.send(entry.clone());
        }
        let ring = if entry.what.is_per_connection() {
            &mut self.per_connection
        } else {
            &mut self.other
        };
        if ring.len() == KEEP {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// What was recorded at or after `from_unix_ms`, oldest first.
    pub fn since(&self, from_unix_ms: u64, with_per_connection: bool) -> Vec<Entry> {
        let mut v: Vec<Entry> = self
            .per_connection
            .iter()
            .filter(|_| with_per_connection)
            .chain(self.other.iter())
            .filter(|e| e.unix_ms >= from_unix_ms)
            .cloned()
            .collect();
        v.sort_by_key(|e| e.seq);
        v
    }

    /// A receiver of every entry recorded from now on; refused when
    /// [`MAX_FOLLOWERS`] already follow.
    pub fn follow(&self) -> Result<broadcast::Receiver<Entry>, String> {
        if self.live.receiver_count() >= MAX_FOLLOWERS {
            return Err(format!(
                "{MAX_FOLLOWERS} clients already follow the daemon's journal; stop one (braid monitor) and try again"
            ));
        }
        Ok(self.live.subscribe())
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn unix_ms_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_kernel::events::EventKind;

    fn note(t: &str) -> What {
        What::Note { text: t.into() }
    }

    fn mptcp() -> What {
        What::Mptcp {
            event: MptcpEvent::empty(EventKind::Created),
        }
    }

    #[test]
    fn a_flood_of_mptcp_events_does_not_push_decisions_out() {
        let mut j = Journal::default();
        j.record(10, note("first"));
        for t in 0..(3 * KEEP as u64) {
            j.record(20 + t, mptcp());
        }
        let all = j.since(0, true);
        assert_eq!(all.len(), KEEP + 1);
        assert_eq!(all[0].what, note("first"));
        assert!(all.windows(2).all(|w| w[0].seq < w[1].seq));
    }

    #[test]
    fn since_keeps_order_and_cuts_by_time() {
        let mut j = Journal::default();
        j.record(100, note("a"));
        j.record(200, mptcp());
        j.record(300, note("b"));
        let v = j.since(200, true);
        assert_eq!(j.since(0, false).len(), 2);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].seq, v[1].seq), (2, 3));
        assert!(j.since(301, true).is_empty());
    }

    #[test]
    fn followers_get_what_comes_after_and_are_bounded() {
        let mut j = Journal::default();
        j.record(1, note("before"));
        let mut rx = j.follow().unwrap();
        j.record(2, note("after"));
        assert_eq!(rx.try_recv().unwrap().what, note("after"));
        let mut keep = vec![rx];
        while keep.len() < MAX_FOLLOWERS {
            keep.push(j.follow().unwrap());
        }
        assert!(j.follow().unwrap_err().contains("already follow"));
        keep.pop();
        assert!(j.follow().is_ok());
    }

    #[test]
    fn entries_read_back_as_written() {
        let e = Entry {
            seq: 7,
            unix_ms: 1,
            what: What::Decision {
                id: 12,
                action: Action::RemoveEndpoint {
                    id: 3,
                    addr: "10.0.0.1".parse().unwrap(),
                },
                reason: "eth1 lost its carrier".into(),
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), e);
        let m = Entry {
            seq: 8,
            unix_ms: 2,
            what: mptcp(),
        };
        let text = serde_json::to_string(&m).unwrap();
        assert_eq!(serde_json::from_str::<Entry>(&text).unwrap(), m);
    }
}
