//! A peer that goes on sending on a subflow this end has as a backup.
//!
//! The peer learns that a subflow is a backup from one MP_PRIO, sent once
//! on that subflow and never retransmitted. When a path is left for its
//! loss, that subflow is the lossy one, and the MP_PRIO can be lost with
//! the rest: seen in `braid lab run lossy-primary --delay 50ms,100ms
//! --loss 10%,0`, where the server's end of the lossy subflow never had
//! the backup flag and sent half of its answers there for the whole run.
//! What this end sees is data arriving on its backup, a large share of
//! the connection's, while another path carries data too.
//!
//! The host-wide policy (`Policy::note_ignored_backups`, endpoint flags)
//! and the per-connection one (`ConnPolicy`, per-subflow flags) watch each
//! backup subflow with a [`BackupWatch`] and tell the peer again, in the
//! way their path manager allows, at most [`IGNORED_MAX_TRIES`] times.

use std::collections::BTreeMap;

use crate::health::{SubflowKey, SubflowSample};
use crate::time::Time;

/// How often a backup flag a peer ignores is told again before it is left.
pub const IGNORED_MAX_TRIES: u32 = 3;

/// Data segments a peer may still send on a subflow it was told is a
/// backup, per window, before the telling is taken to have been lost: a
/// few retransmissions of what was in flight.
const IGNORED_MIN_SEGS: u32 = 4;

/// One backup subflow, watched a window at a time after a grace for data
/// already in flight.
#[derive(Debug, Clone, Copy)]
pub struct BackupWatch {
    /// Until then, data already in flight when the peer was told may come.
    grace_until: Time,
    /// The window being measured: when it began, the data segments
    /// received on the subflow then, and on the rest of its connection.
    window: Option<(Time, u32, u32)>,
    /// Times the peer was told again so far.
    tries: u32,
    /// Whether leaving it as it is was said.
    noted: bool,
}

impl BackupWatch {
    /// Start watching `s`, just seen as a backup.
    pub fn new(now: Time, s: &SubflowSample) -> BackupWatch {
        BackupWatch {
            grace_until: now.plus(grace_ms(s)),
            window: None,
            tries: 0,
            noted: false,
        }
    }

    /// One health round: the subflow's sample, and the data segments the
    /// rest of its connection received on its active subflows so far
    /// ([`received_elsewhere`]). When a window closes with the peer
    /// sending on the backup, what was seen, for the reason.
    pub fn observe(&mut self, now: Time, s: &SubflowSample, others_in: u32) -> Option<String> {
        if now < self.grace_until {
            return None;
        }
        let Some((from, segs_in, others_then)) = self.window else {
            self.window = Some((now, s.data_segs_in, others_in));
            return None;
        };
        let window_ms = window_ms(s);
        let elapsed = now.since(from);
        if elapsed < window_ms {
            return None;
        }
        self.window = Some((now, s.data_segs_in, others_in));
        // Counters that went back (a new subflow with the same addresses)
        // or rounds too far apart for a window: measured afresh.
        if s.data_segs_in < segs_in || others_in < others_then || elapsed > 3 * window_ms {
            return None;
        }
        let got = s.data_segs_in - segs_in;
        let others_got = others_in - others_then;
        // A few retransmissions of what was in flight are no sign; a
        // quarter of what the connection receives, while another path
        // receives too, is.
        (got >= IGNORED_MIN_SEGS && others_got > 0 && got * 4 >= got + others_got).then(|| {
            format!(
                "{got} data segments on it in the last {elapsed} ms ({}% of what the connection received)",
                got * 100 / (got + others_got)
            )
        })
    }

    /// Count one more telling, if [`IGNORED_MAX_TRIES`] allows it, and
    /// give its MP_PRIO a grace of its own: which try this is.
    pub fn try_again(&mut self, now: Time, s: &SubflowSample) -> Option<u32> {
        if self.tries >= IGNORED_MAX_TRIES {
            return None;
        }
        self.tries += 1;
        self.grace_until = now.plus(grace_ms(s));
        self.window = None;
        Some(self.tries)
    }

    /// True the first time only: whether to say that it is left as it is.
    pub fn first_note(&mut self) -> bool {
        !std::mem::replace(&mut self.noted, true)
    }
}

/// One health round of a policy's watches: `backups` are this end's
/// backup subflows among `samples`. Those no longer backups are
/// forgotten, new ones watched; returned are those whose window closed
/// with the peer sending on them, with what was seen.
pub fn observe_backups<'a>(
    watched: &mut BTreeMap<SubflowKey, BackupWatch>,
    now: Time,
    samples: &[SubflowSample],
    backups: &[&'a SubflowSample],
) -> Vec<(&'a SubflowSample, String)> {
    watched.retain(|k, _| backups.iter().any(|s| (s.local, s.remote) == *k));
    backups
        .iter()
        .filter_map(|s| {
            let others_in = received_elsewhere(samples, s);
            let w = watched
                .entry((s.local, s.remote))
                .or_insert_with(|| BackupWatch::new(now, s));
            w.observe(now, s, others_in).map(|seen| (*s, seen))
        })
        .collect()
}

/// The data segments the rest of `s`'s connection received so far on its
/// subflows that are not backups at this end.
fn received_elsewhere(samples: &[SubflowSample], s: &SubflowSample) -> u32 {
    samples
        .iter()
        .filter(|o| o.conn == s.conn && (o.local, o.remote) != (s.local, s.remote))
        .filter(|o| o.local_backup != Some(true))
        .map(|o| o.data_segs_in)
        .fold(0, u32::wrapping_add)
}

/// Data already in flight when a peer was told a subflow is a backup
/// arrives for about two RTTs (queues included).
fn grace_ms(s: &SubflowSample) -> u64 {
    2 * u64::from(s.rtt_us) / 1000 + 50
}

/// A window of two RTTs, 200 ms at least.
fn window_ms(s: &SubflowSample) -> u64 {
    (2 * u64::from(s.rtt_us) / 1000).max(200)
}
