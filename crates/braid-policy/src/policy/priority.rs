//! Backup flags that missed a join: an endpoint's flag change reaches a
//! connection's subflow as an MP_PRIO, and the kernel sends none to a
//! subflow whose join is not complete yet. It skips that subflow
//! silently (`mptcp_pm_mp_prio_send_ack` passes over subflows that are not
//! `__mptcp_subflow_active`, which a join is not until the peer has
//! acknowledged its third ACK, one RTT of the path after its SYN-ACK). A
//! change made in that window leaves the subflow with the flag it joined
//! with, for good: measured in `braid lab run lossy-primary --pm
//! braid:interactive --delay 50ms,100ms --loss 10%,0`, where interactive
//! leaves the lossy path while the 200 ms path is still joining in about
//! one run in five, and both subflows then stay backups, so the kernel
//! sends on both and half the probes cross the lossy path.
//!
//! Such a subflow is found in a health round (`local_backup` of a joined,
//! complete subflow against its endpoint's flag), and the flag is set
//! again: to the other value and back, since setting the same flags
//! changes nothing and sends nothing. That sends two MP_PRIOs to every
//! connection with a subflow from the address; the others end as they
//! were.

use super::*;
use crate::health::SubflowSample;

/// A flag re-sent for an endpoint whose subflow still differs is re-sent
/// again after this long, doubled each time, at most `RESEND_MAX_MS`.
const RESEND_FIRST_MS: u64 = 1000;
const RESEND_MAX_MS: u64 = 60_000;

impl Policy {
    /// Note the endpoints with a joined subflow whose backup flag is not
    /// theirs (from a health round's live samples).
    pub(super) fn note_missed_priorities(&mut self, samples: &[SubflowSample]) {
        let now = self.clock.now();
        let mut differing = BTreeSet::new();
        for s in samples {
            let Some(backup) = s.local_backup else {
                continue;
            };
            let Some(e) = self
                .kernel
                .values()
                .find(|e| e.addr == s.local.ip() && self.manages(e.id))
            else {
                continue;
            };
            let wanted = e.flags & Flag::Backup.bit() != 0;
            // A change the kernel refused is retried by reconcile.
            if backup == wanted || self.flags_refused.contains_key(&e.id) {
                continue;
            }
            differing.insert(e.id);
            if let Some((at, times)) = self.priority_resent.get(&e.id) {
                if now.since(*at) < backoff_ms(RESEND_FIRST_MS, RESEND_MAX_MS, *times) {
                    continue;
                }
            }
            let state = |b: bool| if b { "set" } else { "cleared" };
            self.priority_pending.entry(e.id).or_insert_with(|| {
                format!(
                    "the subflow {} -> {} has its backup flag {} while its endpoint has it {}: most likely the endpoint changed while the subflow was joining, and the kernel sends no MP_PRIO before a join is complete (it skips the subflow silently); the flag is set to the other value and back, which sends it again to every connection with a subflow from {}",
                    s.local,
                    s.remote,
                    state(backup),
                    state(wanted),
                    e.addr
                )
            });
        }
        // An endpoint whose subflows all agree starts afresh.
        self.priority_resent.retain(|id, _| differing.contains(id));
    }

    /// Step 5: set the pending flags again, as two changes each (the other
    /// value, then the endpoint's own). After the other decisions: a
    /// change decided this round sends its own MP_PRIO already.
    pub(super) fn resend_missed_priorities(&mut self, out: &mut Vec<Decision>) {
        let now = self.clock.now();
        for (id, why) in std::mem::take(&mut self.priority_pending) {
            let decided = out.iter().any(|d| match d.action {
                Action::SetEndpointFlags { id: i, .. } | Action::RemoveEndpoint { id: i, .. } => {
                    i == id
                }
                _ => false,
            });
            let Some(e) = self.kernel.get(&id).cloned() else {
                continue;
            };
            if decided {
                continue;
            }
            let other = e.flags ^ Flag::Backup.bit();
            // If the second change is refused, the kernel keeps the other
            // value: `undo` puts it in the model and reconcile retries.
            self.flags_before.insert(id, other);
            for (flags, step) in [(other, "1 of 2"), (e.flags, "2 of 2")] {
                out.push(Decision {
                    id: 0,
                    action: Action::SetEndpointFlags {
                        id,
                        addr: e.addr,
                        flags,
                    },
                    reason: format!("{why} (step {step})"),
                });
            }
            let times = self.priority_resent.get(&id).map_or(1, |(_, n)| n + 1);
            self.priority_resent.insert(id, (now, times));
            self.counters.priorities_resent += 1;
        }
    }
}
