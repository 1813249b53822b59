//! The policy's clock: milliseconds on the shell's monotonic clock, passed
//! in with every event. Every sum and difference saturates, so no
//! configured duration (however large) and no clock value (however close to
//! `u64::MAX`) can wrap or panic, and the policy's own "now" never goes
//! backwards even if the shell's does.

use serde::Serialize;

/// A point on the policy's clock, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize)]
#[serde(transparent)]
pub struct Time(u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub const fn from_ms(ms: u64) -> Time {
        Time(ms)
    }

    pub const fn ms(self) -> u64 {
        self.0
    }

    /// `ms` later (saturating at the end of time).
    pub const fn plus(self, ms: u64) -> Time {
        Time(self.0.saturating_add(ms))
    }

    /// Milliseconds from `earlier` to `self`; 0 if `earlier` is not earlier.
    pub const fn since(self, earlier: Time) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Milliseconds from `self` to `later`; 0 if `later` has passed.
    pub const fn until(self, later: Time) -> u64 {
        later.0.saturating_sub(self.0)
    }
}

/// "Now", which only moves forwards.
#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    now: Time,
}

impl Clock {
    /// Take the shell's time; a time earlier than one already seen is
    /// taken as the one already seen.
    pub fn advance(&mut self, now_ms: u64) -> Time {
        self.now = self.now.max(Time(now_ms));
        self.now
    }

    pub fn now(&self) -> Time {
        self.now
    }
}

/// Exponential back-off: `first_ms` after the first failure, doubled for
/// each further one, at most `max_ms`.
pub fn backoff_ms(first_ms: u64, max_ms: u64, failures: u32) -> u64 {
    let doublings = failures.saturating_sub(1).min(32);
    first_ms.saturating_mul(1u64 << doublings).min(max_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_saturates() {
        let end = Time::from_ms(u64::MAX - 5);
        assert_eq!(end.plus(u64::MAX), Time::from_ms(u64::MAX));
        assert_eq!(Time::ZERO.since(end), 0);
        assert_eq!(end.since(Time::ZERO), u64::MAX - 5);
        assert_eq!(end.until(Time::ZERO), 0);
    }

    #[test]
    fn the_clock_never_goes_backwards() {
        let mut c = Clock::default();
        assert_eq!(c.advance(100), Time::from_ms(100));
        assert_eq!(c.advance(50), Time::from_ms(100));
        assert_eq!(c.advance(u64::MAX), Time::from_ms(u64::MAX));
        assert_eq!(c.advance(0), Time::from_ms(u64::MAX));
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        assert_eq!(backoff_ms(2000, 300_000, 1), 2000);
        assert_eq!(backoff_ms(2000, 300_000, 2), 4000);
        assert_eq!(backoff_ms(2000, 300_000, 9), 300_000);
        assert_eq!(backoff_ms(2000, 300_000, u32::MAX), 300_000);
        assert_eq!(backoff_ms(u64::MAX, u64::MAX, 40), u64::MAX);
    }
}
