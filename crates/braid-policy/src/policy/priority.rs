//! Backup flags that missed a join: an endpoint's flag change reaches each
//! connection as an MP_PRIO on its first active subflow from the address,
//! and the kernel passes over, silently, a subflow whose join is not
//! complete (`mptcp_pm_mp_prio_send_ack` skips subflows that are not
//! `__mptcp_subflow_active`, which a join is not until the peer has
//! acknowledged its third ACK, one RTT of the path after its SYN-ACK). A
//! change made in that window leaves the subflow with the flag it joined
//! with, at both ends, for good: measured in `braid lab run lossy-primary
//! --pm braid:interactive --delay 50ms,100ms --loss 10%,0`, where
//! interactive leaves the lossy path while the 200 ms path is still
//! joining in about one run in three; both subflows then stay backups, the
//! kernels send on both, and half the probes cross the lossy path.
//!
//! Such a subflow is found in a health round (`local_backup` of a joined,
//! complete subflow against its endpoint's flag), and the flag is set
//! again: to the other value and back, since setting the same flags sends
//! nothing. That sends two MP_PRIOs to every connection with a subflow
//! from the address. Towards active, the others are backups for an
//! instant, which moves nothing. Towards backup, they would be active for
//! an instant, and a peer with data waiting fills the path's window at
//! once (seen when the same flip was tried at a silence probe: design.md),
//! so that direction is taken only when no other subflow from the address
//! would be flipped. Each subflow gets one try per endpoint flag: one that
//! still differs is not the first from its address in its connection, and
//! no flip reaches it.
//!
//! The MP_PRIO itself may be lost: it is sent once, on the path whose
//! flag changed, which is the lossy one when a path is left for loss, and
//! nothing retransmits it. The peer then keeps the path active and sends
//! on it. That shows as data arriving on a subflow this end has as a
//! backup, a large share of its connection's, while another path carries
//! data too (`note_ignored_backups`, with `crate::backup_watch`); the
//! flag is set again the same way, at most three times.
//!
//! A change made while a subflow from the address is joining is followed
//! by health rounds every `JOIN_RECHECK_MS` until the join is complete,
//! so it is set again within a few milliseconds of the join's end, not a
//! poll interval later. In the lab's lossy cell, each 20 ms that both
//! subflows stay backups is one more request and answer that may cross
//! the lossy path, and each one lost there holds the probes behind it for
//! a retransmission timeout.

use std::net::IpAddr;

use super::*;
use crate::backup_watch::{observe_backups, IGNORED_MAX_TRIES};
use crate::health::SubflowSample;

impl Policy {
    /// Note the endpoints with a joined subflow whose backup flag is not
    /// theirs (from a health round's live samples).
    pub(super) fn note_missed_priorities(&mut self, samples: &[SubflowSample]) {
        self.priority_pending.clear();
        let joining: BTreeSet<IpAddr> = samples
            .iter()
            .filter(|s| s.joining)
            .map(|s| s.local.ip())
            .collect();
        let now = self.clock.now();
        self.joins_watched
            .retain(|addr, until| joining.contains(addr) && *until > now);
        let mut differing = BTreeSet::new();
        // A connection's first subflow always gets the MP_PRIO (see
        // `note_ignored_backups` for one its peer missed).
        for s in samples.iter().filter(|s| !s.first) {
            let Some(backup) = s.local_backup else {
                continue;
            };
            let Some(e) = self.managed_endpoint_of(s.local.ip()).cloned() else {
                continue;
            };
            let wanted = e.is_backup();
            if backup == wanted {
                continue;
            }
            let key = (s.local, s.remote);
            differing.insert(key);
            // A change the kernel refused is tried again by reconcile.
            if self.flags_refused.contains_key(&e.id) {
                continue;
            }
            // Tried for these flags already: no flip reaches it.
            if self.priority_resent.get(&key) == Some(&e.flags) {
                if self.priority_given_up.insert(key) {
                    self.notes.push(format!(
                        "the subflow {} -> {} still has its backup flag {} after it was set again (unless the kernel refused that, see the log): it is most likely not its connection's first subflow from {}, which the kernel's MP_PRIO goes to; left as it is, not tried again until the endpoint's flags change",
                        s.local,
                        s.remote,
                        flag_state(backup),
                        e.addr
                    ));
                }
                continue;
            }
            if wanted {
                let others = made_active_by_flip(samples, e.addr, key);
                if others > 0 {
                    if self.priority_given_up.insert(key) {
                        self.notes.push(format!(
                            "the subflow {} -> {} is not a backup while its endpoint {} is (it was joining when the flag changed, and the kernel sends no MP_PRIO then); left as it is: setting the flag again would make the path active for an instant on {others} other subflow(s) from {}, and their peers would fill it with data",
                            s.local, s.remote, e.addr, e.addr
                        ));
                    }
                    continue;
                }
            }
            let pending = self.priority_pending.entry(e.id).or_insert_with(|| {
                let why = format!(
                    "the subflow {} -> {} has its backup flag {} while its endpoint has it {}: most likely the endpoint changed while the subflow was joining, and the kernel sends no MP_PRIO before a join is complete (it skips the subflow silently); the flag is set to the other value and back, which sends it again to each connection's first subflow from {}",
                    s.local,
                    s.remote,
                    flag_state(backup),
                    flag_state(wanted),
                    e.addr
                );
                (why, Vec::new())
            });
            pending.1.push(key);
        }
        // A subflow that agrees now, or is gone, starts afresh.
        self.priority_resent.retain(|k, _| differing.contains(k));
        self.priority_given_up.retain(|k| differing.contains(k));
    }

    /// Last step: set the pending flags again, as two changes each (the
    /// other value, then the endpoint's own). After the other decisions: a
    /// change decided this round sends its own MP_PRIOs already.
    pub(super) fn resend_missed_priorities(&mut self, out: &mut Vec<Decision>) {
        for (id, (why, subflows)) in std::mem::take(&mut self.priority_pending) {
            let decided = out.iter().any(|d| match d.action {
                Action::SetEndpointFlags { id: i, .. } | Action::RemoveEndpoint { id: i, .. } => {
                    i == id
                }
                _ => false,
            });
            let Some(e) = self.kernel.get(&id).cloned().filter(|_| !decided) else {
                continue;
            };
            let other = e.flags ^ Flag::Backup.bit();
            // If only the second change is refused, the kernel is left with
            // the other value: `undo` puts it in the model, and reconcile
            // sets the endpoint's own again.
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
            for key in subflows {
                self.priority_resent.insert(key, e.flags);
            }
            self.counters.backup_flags_resent += 1;
        }
    }

    /// Find the subflows this end has as backups whose peer still sends a
    /// large share of the connection's data on them (`BackupWatch`): the
    /// one MP_PRIO that told the peer was most likely lost. The flag is
    /// set again as for a missed join (to the other value and back).
    pub(super) fn note_ignored_backups(&mut self, samples: &[SubflowSample]) {
        let now = self.clock.now();
        let backups: Vec<&SubflowSample> = samples
            .iter()
            .filter(|s| s.local_backup == Some(true) && !s.joining && s.conn != 0)
            .filter(|s| {
                self.managed_endpoint_of(s.local.ip())
                    .is_some_and(KernelEndpoint::is_backup)
            })
            .collect();
        let ignored = observe_backups(&mut self.backups_watched, now, samples, &backups);
        for (s, seen) in ignored {
            let key = (s.local, s.remote);
            let Some(e) = self.managed_endpoint_of(s.local.ip()).cloned() else {
                continue;
            };
            if self.flags_refused.contains_key(&e.id) {
                continue;
            }
            let others = made_active_by_flip(samples, e.addr, key);
            let Some(w) = self.backups_watched.get_mut(&key) else {
                continue;
            };
            // A try is counted even if this round's own change of the
            // endpoint takes the resend's place: that change sends an
            // MP_PRIO too. Its instant as an active path is not measured.
            let attempt = if others > 0 {
                None
            } else {
                w.try_again(now, s)
            };
            let Some(attempt) = attempt else {
                if w.first_note() {
                    self.notes.push(if others > 0 {
                        format!(
                            "the peer of {} -> {} sends on it though it is a backup (its MP_PRIO was most likely lost); left as it is: setting the flag again would make the path active for an instant on {others} other subflow(s) from {}",
                            s.local, s.remote, e.addr
                        )
                    } else {
                        format!(
                            "the peer of {} -> {} still sends on it after its backup flag was set again {IGNORED_MAX_TRIES} times: left as it is (a peer may ignore MP_PRIO)",
                            s.local, s.remote
                        )
                    });
                }
                continue;
            };
            let why = format!(
                "the subflow {} -> {} is a backup at this end, yet its peer sent {seen} while another path carried data: the MP_PRIO that told it (sent once, on this path) was most likely lost; the flag is set to the other value and back, which sends it again (try {attempt} of {IGNORED_MAX_TRIES})",
                s.local, s.remote
            );
            self.priority_pending
                .entry(e.id)
                .or_insert_with(|| (why, Vec::new()))
                .1
                .push(key);
        }
    }

    /// Watch the joins that this round's flag changes pass over. Every
    /// changed address is watched: a change decided on an event, not in a
    /// health round, may meet a join the last round did not see; the next
    /// round, 10 ms later, keeps only those with a join under way.
    pub(super) fn watch_joins(&mut self, out: &[Decision]) {
        let until = self.clock.now().plus(JOIN_WATCH_MAX_MS);
        for d in out {
            if let Action::SetEndpointFlags { addr, .. } = d.action {
                // The first deadline holds: a resend's flips do not extend it.
                self.joins_watched.entry(addr).or_insert(until);
            }
        }
    }

    /// When the next health round should come for a watched join.
    pub(super) fn join_recheck_due_in_ms(&self) -> Option<u64> {
        (!self.joins_watched.is_empty()).then_some(JOIN_RECHECK_MS)
    }
}

/// How often a join an endpoint flag change passed over is looked at: a
/// health round each time (the known subflows looked up one by one, or a
/// dump of ~1 ms per address family), for about one RTT of the path.
const JOIN_RECHECK_MS: u64 = 10;

/// A join not complete after this is no longer watched (its third ACK
/// unanswered: the ordinary rounds find it if it ever completes).
const JOIN_WATCH_MAX_MS: u64 = 2_000;

/// The other subflows from `addr` that setting its endpoint's flag to the
/// other value and back would make active for an instant (those not known
/// to be active already): a peer with data waiting fills the path at once.
fn made_active_by_flip(samples: &[SubflowSample], addr: IpAddr, except: SubflowKey) -> usize {
    samples
        .iter()
        .filter(|o| o.local.ip() == addr && (o.local, o.remote) != except)
        .filter(|o| o.local_backup != Some(false))
        .count()
}

fn flag_state(backup: bool) -> &'static str {
    if backup {
        "set"
    } else {
        "cleared"
    }
}
