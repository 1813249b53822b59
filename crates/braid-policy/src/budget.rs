//! The rate limit on switches of traffic made on measurements: at most
//! `policy.max_handovers` in any `policy.handover_window_ms`. A flapping
//! path must not move traffic (and reset subflows) over and over. The
//! host-wide modes keep one budget; each connection of the per-connection
//! path manager keeps its own.

use std::collections::VecDeque;

use crate::time::Time;

#[derive(Debug, Clone, Default)]
pub struct SwitchBudget {
    /// When switches were made, oldest first, within the window.
    spent: VecDeque<Time>,
}

impl SwitchBudget {
    /// Whether a switch may be made at `now`; if not, why and when the
    /// next one may. A switch already made at `now` (in the same round)
    /// takes what comes with it along.
    pub fn check(&mut self, now: Time, max: u32, window_ms: u64) -> Result<(), String> {
        while self
            .spent
            .front()
            .is_some_and(|t| now.since(*t) >= window_ms)
        {
            self.spent.pop_front();
        }
        if self.spent_at(now) || self.spent.len() < max as usize {
            return Ok(());
        }
        let next = self.spent.front().map_or(now, |t| t.plus(window_ms));
        Err(format!(
            "{} switches were made on measurements in the last {window_ms} ms (policy.max_handovers = {max} per policy.handover_window_ms); the next is allowed in {} ms",
            self.spent.len(),
            now.until(next)
        ))
    }

    /// A switch is made at `now`. False if one was already counted at
    /// `now` (one round counts once).
    pub fn spend(&mut self, now: Time) -> bool {
        if self.spent_at(now) {
            return false;
        }
        self.spent.push_back(now);
        true
    }

    /// Whether a switch was made at `now`.
    pub fn spent_at(&self, now: Time) -> bool {
        self.spent.back() == Some(&now)
    }

    /// When the oldest switch in the window leaves it.
    pub fn frees_at(&self, window_ms: u64) -> Option<Time> {
        self.spent.front().map(|t| t.plus(window_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_switches_per_window_and_one_round_counts_once() {
        let mut b = SwitchBudget::default();
        let t = Time::from_ms;
        for ms in [0, 10] {
            assert!(b.check(t(ms), 2, 1_000).is_ok());
            assert!(b.spend(t(ms)));
        }
        // The same round as the last switch: allowed, not counted again.
        assert!(b.check(t(10), 2, 1_000).is_ok());
        assert!(!b.spend(t(10)));
        let e = b.check(t(500), 2, 1_000).unwrap_err();
        assert!(
            e.contains("2 switches") && e.contains("allowed in 500 ms"),
            "{e}"
        );
        assert_eq!(b.frees_at(1_000), Some(t(1_000)));
        // The first leaves the window.
        assert!(b.check(t(1_000), 2, 1_000).is_ok());
    }
}
