//! Refusing replayed first messages, sans-IO (time is passed in).
//!
//! A recorded first message would authenticate again and make the relay
//! open the same connection (and send the same early data) again. So the
//! relay accepts a first message only when its timestamp is within
//! `window` of the relay's clock and its ephemeral key was not seen within
//! that window: an old message fails the clock, a recent one the memory.
//! The memory is lost on restart, so messages stamped before the relay
//! started are refused too (the same rule TLS 1.3 servers apply to early
//! data, RFC 8446 section 8).

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use crate::keys::KEY_LEN;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Replay {
    /// This ephemeral key was used before: a replayed message.
    Seen,
    /// The timestamp is older than the window: a replayed message, or a
    /// client whose clock is behind.
    TooOld { skew_ms: u64 },
    /// The timestamp is ahead of the window: a client whose clock is ahead.
    TooNew { skew_ms: u64 },
    /// Stamped before the relay started, when its memory was empty.
    BeforeStart { by_ms: u64 },
    /// The memory is full (more first messages within one window than it
    /// holds): refused rather than forgotten.
    Full,
}

impl Replay {
    pub fn describe(&self) -> String {
        match self {
            Replay::Seen => "replayed first message (ephemeral key seen before)".into(),
            Replay::TooOld { skew_ms } => format!(
                "first message stamped {skew_ms} ms in the past, beyond the replay window: a replay, or the client's clock is behind (synchronise it, e.g. with NTP)"
            ),
            Replay::TooNew { skew_ms } => format!(
                "first message stamped {skew_ms} ms in the future, beyond the replay window: the client's clock is ahead (synchronise it, e.g. with NTP)"
            ),
            Replay::BeforeStart { by_ms } => format!(
                "first message stamped {by_ms} ms before the relay started (refused: it cannot know whether it saw it)"
            ),
            Replay::Full => "too many first messages within one replay window".into(),
        }
    }
}

pub struct ReplayGuard {
    window_ms: u64,
    started_ms: u64,
    capacity: usize,
    seen: HashSet<[u8; KEY_LEN]>,
    /// (forget at, key), oldest first.
    expiry: BTreeSet<(u64, [u8; KEY_LEN])>,
}

impl ReplayGuard {
    pub fn new(window_ms: u64, started_ms: u64, capacity: usize) -> ReplayGuard {
        ReplayGuard {
            window_ms,
            started_ms,
            capacity,
            seen: HashSet::new(),
            expiry: BTreeSet::new(),
        }
    }

    /// Check a first message's ephemeral key and timestamp at `now_ms` (Unix
    /// milliseconds); remember it when accepted.
    pub fn check(
        &mut self,
        ephemeral: &[u8; KEY_LEN],
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), Replay> {
        self.forget_before(now_ms);
        // The timestamp is the client's word: any u64 (no overflow).
        if timestamp_ms.saturating_add(self.window_ms) < now_ms {
            return Err(Replay::TooOld {
                skew_ms: now_ms - timestamp_ms,
            });
        }
        if timestamp_ms > now_ms.saturating_add(self.window_ms) {
            return Err(Replay::TooNew {
                skew_ms: timestamp_ms - now_ms,
            });
        }
        if timestamp_ms < self.started_ms {
            return Err(Replay::BeforeStart {
                by_ms: self.started_ms - timestamp_ms,
            });
        }
        if self.seen.contains(ephemeral) {
            return Err(Replay::Seen);
        }
        if self.seen.len() >= self.capacity {
            return Err(Replay::Full);
        }
        // Once the timestamp is out of the window the clock check refuses
        // the message: it need not be remembered longer.
        self.seen.insert(*ephemeral);
        self.expiry
            .insert((timestamp_ms.saturating_add(self.window_ms + 1), *ephemeral));
        Ok(())
    }

    fn forget_before(&mut self, now_ms: u64) {
        while let Some(first) = self.expiry.first() {
            if first.0 > now_ms {
                break;
            }
            let (_, key) = self.expiry.pop_first().expect("not empty");
            self.seen.remove(&key);
        }
    }

    pub fn remembered(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const START: u64 = 1_800_000_000_000;

    #[test]
    fn replays_are_refused_fresh_messages_accepted() {
        let mut g = ReplayGuard::new(60_000, START, 100);
        let e1 = [1u8; 32];
        assert_eq!(g.check(&e1, START + 10, START + 20), Ok(()));
        assert_eq!(g.check(&e1, START + 10, START + 30), Err(Replay::Seen));
        // The same key much later fails the clock even once forgotten.
        assert_eq!(
            g.check(&e1, START + 10, START + 120_000),
            Err(Replay::TooOld { skew_ms: 119_990 })
        );
        assert_eq!(g.remembered(), 0);
        assert_eq!(
            g.check(&[2; 32], START + 200_000, START + 100_000),
            Err(Replay::TooNew { skew_ms: 100_000 })
        );
        assert_eq!(
            g.check(&[3; 32], START - 5, START + 1),
            Err(Replay::BeforeStart { by_ms: 5 })
        );
        // Skew within the window is fine both ways.
        assert_eq!(g.check(&[4; 32], START + 50_000, START + 10_000), Ok(()));
        assert_eq!(g.check(&[5; 32], START + 10_000, START + 69_000), Ok(()));
    }

    #[test]
    fn memory_is_bounded_and_refuses_when_full() {
        let mut g = ReplayGuard::new(1_000, START, 3);
        for i in 0..3u8 {
            assert_eq!(g.check(&[i; 32], START + 100, START + 100), Ok(()));
        }
        assert_eq!(
            g.check(&[9; 32], START + 100, START + 100),
            Err(Replay::Full)
        );
        // Once the window has passed, room again.
        assert_eq!(g.check(&[9; 32], START + 1_200, START + 1_200), Ok(()));
        assert_eq!(g.remembered(), 1);
    }
}
