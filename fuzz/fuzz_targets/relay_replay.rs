//! The replay guard (`replay::ReplayGuard::check`) over a sequence of first
//! messages: ephemeral keys from a small set (so repeats happen), client
//! timestamps anywhere in u64 (the request's timestamp is the client's
//! word) or near the relay's clock, and a relay clock that moves on (or
//! back, as a stepped clock does) between checks.
//!
//! Asserts: no panic (no overflow on any timestamp); every answer is the
//! one of a reference model in exact arithmetic (window, start, memory
//! and capacity rules as documented); the memory never exceeds the
//! capacity and forgets a key once its timestamp is out of the window.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::{Arbitrary, Unstructured};
use braid_relay::replay::{Replay, ReplayGuard};
use libfuzzer_sys::fuzz_target;

/// The documented rules, in u128 so nothing wraps.
struct Model {
    window: u128,
    started: u128,
    capacity: usize,
    /// key -> forget at
    seen: BTreeMap<u8, u128>,
}

impl Model {
    fn check(&mut self, key: u8, ts: u64, now: u64) -> Result<(), Replay> {
        let (ts, now) = (ts as u128, now as u128);
        self.seen.retain(|_, at| *at > now);
        if ts + self.window < now {
            return Err(Replay::TooOld {
                skew_ms: (now - ts) as u64,
            });
        }
        if ts > now + self.window {
            return Err(Replay::TooNew {
                skew_ms: (ts - now) as u64,
            });
        }
        if ts < self.started {
            return Err(Replay::BeforeStart {
                by_ms: (self.started - ts) as u64,
            });
        }
        if self.seen.contains_key(&key) {
            return Err(Replay::Seen);
        }
        if self.seen.len() >= self.capacity {
            return Err(Replay::Full);
        }
        self.seen.insert(key, ts + self.window + 1);
        Ok(())
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    // As the configuration allows: 5 s to 1 h.
    let Ok(window_s) = u.int_in_range(5u64..=3600) else {
        return;
    };
    let window = window_s * 1000;
    // A relay clock between 1970 and the year 10000.
    let Ok(mut now) = u.int_in_range(0u64..=253_402_300_800_000) else {
        return;
    };
    let started = now.saturating_sub(u.int_in_range(0..=10 * window).unwrap_or(0));
    let capacity = u.int_in_range(1usize..=8).unwrap_or(4);
    let mut guard = ReplayGuard::new(window, started, capacity);
    let mut model = Model {
        window: window as u128,
        started: started as u128,
        capacity,
        seen: BTreeMap::new(),
    };
    while !u.is_empty() {
        let key = u.int_in_range(0u8..=9).unwrap_or(0);
        let ts = match u.int_in_range(0..=3).unwrap_or(0) {
            // Anything the client may send.
            0 => u64::arbitrary(&mut u).unwrap_or(0),
            // Near the edges of the window, either side.
            _ => {
                let d = u
                    .int_in_range(-(2 * window as i64)..=2 * window as i64)
                    .unwrap_or(0);
                now.saturating_add_signed(d)
            }
        };
        let got = guard.check(&[key; 32], ts, now);
        let want = model.check(key, ts, now);
        assert_eq!(
            got, want,
            "key {key} ts {ts} now {now} window {window} started {started}"
        );
        if let Err(e) = got {
            let _ = e.describe();
        }
        assert!(guard.remembered() <= capacity);
        assert_eq!(guard.remembered(), model.seen.len());
        // The clock moves on, mostly forward.
        let step = u.int_in_range(-1000i64..=3 * window as i64).unwrap_or(0);
        now = now.saturating_add_signed(step).min(253_402_300_800_000);
    }
});
