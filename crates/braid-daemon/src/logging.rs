//! Logging to stderr (journald captures it under systemd), with the level
//! from BRAID_LOG.

use tracing::level_filters::LevelFilter;

pub fn init() {
    let level = match std::env::var("BRAID_LOG")
        .unwrap_or_default()
        .to_ascii_lowercase()
        .as_str()
    {
        "error" => LevelFilter::ERROR,
        "warn" => LevelFilter::WARN,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::INFO,
    };
    // journald adds its own timestamps.
    let under_journal = std::env::var_os("JOURNAL_STREAM").is_some();
    let builder = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(false);
    if under_journal {
        builder.without_time().init();
    } else {
        builder.init();
    }
}

/// At most `per_second` lines of one kind a second; the rest are counted
/// and told before the first line of a later second. With thousands of
/// connections a second, per-connection decisions would flood the log
/// (the journal, `braid monitor`, keeps every one).
#[derive(Debug)]
pub struct RateLimit {
    per_second: u32,
    second: u64,
    logged: u32,
    held: u64,
}

impl RateLimit {
    pub fn new(per_second: u32) -> RateLimit {
        RateLimit {
            per_second,
            second: 0,
            logged: 0,
            held: 0,
        }
    }

    /// Whether a line may be logged at `now_ms`, and how many were held
    /// back in the seconds before (to say so first).
    pub fn allow(&mut self, now_ms: u64) -> (bool, u64) {
        let second = now_ms / 1000;
        let mut held_before = 0;
        if second != self.second {
            held_before = std::mem::take(&mut self.held);
            self.second = second;
            self.logged = 0;
        }
        if self.logged < self.per_second {
            self.logged += 1;
            (true, held_before)
        } else {
            self.held += 1;
            (false, held_before)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_over_the_budget_are_counted_and_told_in_the_next_second() {
        let mut r = RateLimit::new(2);
        assert_eq!(r.allow(1_000), (true, 0));
        assert_eq!(r.allow(1_100), (true, 0));
        assert_eq!(r.allow(1_200), (false, 0));
        assert_eq!(r.allow(1_900), (false, 0));
        assert_eq!(r.allow(2_000), (true, 2));
        assert_eq!(r.allow(2_001), (true, 0));
    }
}
