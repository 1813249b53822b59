//! What the health rounds trigger: probes of silent paths, stalled paths
//! reopened, missing subflows re-added.

use super::*;

impl Policy {
    /// A path that has just stalled gets its endpoints re-added: closing
    /// its subflows makes the kernel resend their unacknowledged data at
    /// once on the path that takes over, instead of waiting for timeouts on
    /// the dead one. Reopened subflows tell when the path works again.
    /// A path that was receiving and went silent is probed, and probed
    /// again while the silence lasts if it answered (see
    /// `PathHealth::next_silence_probe_ms`): a receiver has nothing
    /// outstanding, so silence alone cannot tell a dead path from a
    /// sender with nothing to send. One probe of a path at a time.
    pub(super) fn probes_due(&mut self) {
        let can_probe = self.probe_filter();
        let (now, stall_ms) = (self.clock.now().ms(), self.config.policy.stall_ms);
        for (ifindex, h) in self.health.paths.iter_mut() {
            // A connection waits for an ACK, and no other host's does:
            // whether the path itself is gone, only a probe can tell.
            if !h.wants_stall_probe(stall_ms, now) {
                continue;
            }
            let Some((local, remote)) = h.stall_pair.filter(|(_, r)| can_probe(r)) else {
                continue;
            };
            h.stall_probe_sent(remote, now);
            let reason = format!(
                "{}: a connection to {remote} has waited {} ms for an ACK with data outstanding, and no connection to another host shows it: is the path itself gone? (a stall is acted on for every connection only if the probe goes unanswered)",
                link_name(&self.links, *ifindex),
                h.stalled_ms
            );
            let timeout_ms = h.probe_timeout_ms();
            self.probes_pending
                .push(probe_decision(*ifindex, local, remote, timeout_ms, reason));
        }
        // With the per-connection path manager, it echoes the paths its
        // connections left (one stream per path, not two). Aggregate mode
        // acts on no loss: nothing to measure it for.
        let echoes =
            self.config.pm != PmKind::Userspace && self.config.policy.mode != PathMode::Aggregate;
        for (ifindex, h) in self.health.paths.iter_mut() {
            if !echoes {
                break;
            }
            let Some((local, remote, timeout_ms)) = h.loss_echo_due(now, can_probe) else {
                continue;
            };
            self.probes_pending.push(Decision {
                id: 0,
                action: Action::ProbeLoss {
                    ifindex: *ifindex,
                    local,
                    remote,
                    timeout_ms,
                },
                reason: format!(
                    "{} is lossy ({:.1} %) and carries too little traffic to tell whether it still is: echoes every {LOSS_ECHO_INTERVAL_MS} ms measure it, so its loss does not fade unmeasured",
                    link_name(&self.links, *ifindex),
                    h.loss * 100.0
                ),
            });
        }
        for (ifindex, h) in self.health.paths.iter_mut() {
            if !h.wants_probe() {
                continue;
            }
            let Some((local, remote)) = h.probe_pair.filter(|(_, r)| can_probe(r)) else {
                continue;
            };
            let again = if h.next_silence_probe_ms() > h.probe_after_ms() {
                " again, an earlier probe of this silence was answered"
            } else {
                ""
            };
            let timeout_ms = h.silence_probe_timeout_ms(now);
            h.silence_probe_sent(timeout_ms);
            let reason = format!(
                "{} was receiving and no data has come for {} ms (probed after {} ms: {}{again}): is the path still there? (an answer is due within {})",
                link_name(&self.links, *ifindex),
                h.rx_silent_ms,
                h.probe_after_ms(),
                h.probe_after_basis(),
                h.silence_probe_basis(now)
            );
            self.probes_pending
                .push(probe_decision(*ifindex, local, remote, timeout_ms, reason));
        }
    }

    /// The checks wanted of paths standing by (`PathHealth::want_check`),
    /// sent at once: a hand-back can come at a wake-up with no health
    /// round after it (the last connection closed).
    pub(super) fn checks_due(&mut self) {
        let can_probe = self.probe_filter();
        let now = self.clock.now().ms();
        for (ifindex, h) in self.health.paths.iter_mut() {
            let Some(due) = h.check_due(now, can_probe) else {
                continue;
            };
            let reason = format!(
                "{} has been healthy while it stood by, but carried nothing that shows it still works: does it answer before it takes traffic? (an answer is due within {} ms){}",
                link_name(&self.links, *ifindex),
                due.timeout_ms,
                due.again_note()
            );
            self.probes_pending.push(probe_decision(
                *ifindex,
                due.local,
                due.remote,
                due.timeout_ms,
                reason,
            ));
        }
    }

    /// Interactive: a path left for loss whose subflows hold data that has
    /// waited for an ACK past the point TCP itself expected one
    /// (`PathHealth::stall_probe_at_ms`) gets its subflows reopened. On a
    /// lossy path that wait is a lost segment, and a switch does not move
    /// it: it waits for the path's retransmission timeout (200 ms or more,
    /// doubled if the resend is lost too) and everything the connection
    /// sent after it waits in the same byte stream. Seen in the lab
    /// (10/40 ms, 10 % loss): a request sent 34 ms before the switch took
    /// 639 ms, and the 23 requests behind it more than 170 ms. Closing the
    /// subflows makes the kernel resend their data on the chosen path at
    /// once. Only when every connection on the path has a subflow on the
    /// chosen one, once per wait.
    pub(super) fn note_lossy_waits(&mut self, samples: &[SubflowSample]) {
        let waiting_before = std::mem::take(&mut self.lossy_waits);
        let Some(active) = self.active_path else {
            return;
        };
        if self.config.policy.mode != PathMode::Interactive
            || self.path_problem(Some(active)).is_some()
            || !self.links.get(&active).is_some_and(Link::can_carry)
        {
            return;
        }
        let stall_ms = self.config.policy.stall_ms;
        let left: Vec<(u32, (u64, u64))> = self
            .health
            .paths
            .iter()
            .filter(|(i, _)| **i != active)
            .filter(|(i, _)| {
                self.path_problem(Some(**i))
                    .is_some_and(|p| p.kind == ProblemKind::Lossy)
            })
            .filter_map(|(i, h)| Some((*i, h.overdue_ack(stall_ms)?)))
            .collect();
        for (i, (waited_ms, expected_ms)) in left {
            self.lossy_waits.insert(i);
            if waiting_before.contains(&i) {
                continue;
            }
            let (name, chosen) = (link_name(&self.links, i), link_name(&self.links, active));
            let what = format!(
                "interactive: {}",
                left_for_loss_wait(&name, waited_ms, expected_ms)
            );
            if let Some(alone) = only_on_path(samples, i, active) {
                self.notes.push(format!(
                    "{what}; its subflows are left as they are: {alone} has no subflow on {chosen}, and reopening would leave it none"
                ));
                continue;
            }
            for a in self.addresses.values().filter(|a| a.ifindex == i) {
                self.reset_pending.insert(
                    a.ip,
                    format!("{what}; reopening its subflows so their data is resent on {chosen} at once"),
                );
            }
        }
    }

    /// A path with a subflow endpoint on which no connection has a subflow
    /// while another path's connections have one, for `MISSING_SUBFLOW_MS`,
    /// gets its endpoint re-added: the kernel's path manager never retries
    /// a join that failed or was never made, and adding an endpoint makes
    /// it open subflows from it for every existing connection. Seen in the
    /// lab (7 of 216 handover runs): a connection made within milliseconds
    /// of the endpoints never got its second subflow and died with the
    /// primary. A path with a problem (stalled, unreachable, lossy) is left
    /// alone; repeated re-adds back off (servers that refuse joins).
    pub(super) fn note_missing_subflows(&mut self) {
        let now = self.clock.now();
        let carrying: BTreeSet<u32> = self
            .health
            .paths
            .iter()
            .filter(|(_, h)| h.measured())
            .map(|(i, _)| *i)
            .collect();
        let with_endpoint: BTreeSet<u32> = self
            .kernel
            .values()
            .filter(|e| self.manages(e.id) && e.flags & Flag::Subflow.bit() != 0)
            .filter_map(|e| self.ifindex_of(e.addr))
            // A standby endpoint kept without carrier (`keep_standby`)
            // cannot be joined: re-adding it would close what it has.
            .filter(|i| self.links.get(i).is_some_and(Link::can_carry))
            .collect();
        self.missing_subflows
            .retain(|i, _| with_endpoint.contains(i));
        self.rejoined.retain(|i, _| with_endpoint.contains(i));
        for i in with_endpoint {
            if carrying.contains(&i) {
                self.missing_subflows.remove(&i);
                self.rejoined.remove(&i);
                continue;
            }
            let Some(other) = carrying.iter().find(|o| **o != i) else {
                self.missing_subflows.remove(&i);
                continue;
            };
            let since = *self.missing_subflows.entry(i).or_insert(now);
            let missing_ms = now.since(since);
            if missing_ms < MISSING_SUBFLOW_MS || self.path_problem(Some(i)).is_some() {
                continue;
            }
            let tries = self.rejoined.get(&i).map_or(0, |(_, n)| *n);
            if let Some((at, n)) = self.rejoined.get(&i) {
                if now.since(*at) < backoff_ms(REJOIN_FIRST_MS, REJOIN_MAX_MS, *n) {
                    continue;
                }
            }
            self.rejoined.insert(i, (now, tries.saturating_add(1)));
            self.missing_subflows.insert(i, now);
            let reason = format!(
                "no connection has a subflow on {} for {missing_ms} ms while {} carries some: re-adding its endpoint makes the kernel open the missing subflows (it does not retry a join on its own){}",
                link_name(&self.links, i),
                link_name(&self.links, *other),
                if tries > 0 {
                    format!("; tried {tries} time(s) before, the server may refuse joins")
                } else {
                    String::new()
                }
            );
            for a in self.addresses.values().filter(|a| a.ifindex == i) {
                self.rejoin_pending.insert(a.ip, reason.clone());
            }
        }
    }

    /// Paths that have just stalled for every connection (seen towards
    /// `MIN_WITNESSES` hosts, or confirmed unreachable by a probe) get their
    /// subflows reopened. A stall seen towards one host only resets nothing:
    /// it is probed (`probes_due`) and acted on only if the probe fails.
    /// In every mode: aggregate, which changes no flags, left a blackholed
    /// path's data to the kernel's MPTCP retransmission timer (0.4-1.4 s
    /// in the lab's sweep60), where reopening resends it at once.
    pub(super) fn note_stalls(&mut self) {
        let stall_ms = self.config.policy.stall_ms;
        let now_stalled: BTreeSet<u32> = self
            .health
            .paths
            .iter()
            .filter(|(_, h)| {
                h.unreachable.is_some()
                    || (h.is_stalled(stall_ms) && h.stall_witnesses >= MIN_WITNESSES)
            })
            .map(|(i, _)| *i)
            .collect();
        if self
            .reset_skipped
            .as_ref()
            .is_some_and(|(i, _)| !now_stalled.contains(i))
        {
            self.reset_skipped = None;
        }
        // Paths with an endpoint, carrier and no problem: where resent data
        // can go (a standby kept without carrier is no such path).
        let working: BTreeSet<u32> = self
            .kernel
            .values()
            .filter_map(|e| self.ifindex_of(e.addr))
            .filter(|i| !now_stalled.contains(i))
            .filter(|i| self.links.get(i).is_some_and(Link::can_carry))
            .collect();
        for i in now_stalled.difference(&self.stalled_paths.clone()) {
            let name = link_name(&self.links, *i);
            let what = match self.health.paths.get(i) {
                Some(h) => match &h.unreachable {
                    Some(why) => format!("{name} is {why}"),
                    None => format!("{name} stalled ({})", h.describe()),
                },
                None => format!("{name} stalled"),
            };
            let left_idle = self
                .health
                .paths
                .get(i)
                .and_then(PathHealth::carried_nothing_when_lost)
                .filter(|_| self.stands_by(*i));
            if let Some(answered_ms) = left_idle {
                self.notes.push(format!(
                    "{what}; its subflows are left as they are: it stands by, nothing of ours waits for an ACK there, and it answered a probe {answered_ms} ms into its silence, long enough for the peer to have resent anything lost on it, so nothing was in flight there (reopening would resend nothing, and the kernels would send everything in flight on the other paths again)"
                ));
                continue;
            }
            if working.iter().all(|w| w == i) {
                // Reopening the last path would resend its data onto the
                // same path, after a handshake: only slower. Seen in the lab
                // when a path that had just taken over was probed while its
                // queue filled with the failed path's data.
                self.reset_skipped = Some((
                    *i,
                    format!(
                        "{what}, but no other path works: its subflows are left as they are (reopening them would resend onto the same path)"
                    ),
                ));
                continue;
            }
            for a in self.addresses.values().filter(|a| a.ifindex == *i) {
                self.reset_pending.insert(
                    a.ip,
                    format!(
                        "{what}: reopening its subflows so their data is resent on the other path"
                    ),
                );
            }
        }
        self.stalled_paths = now_stalled;
    }
}

impl Policy {
    /// Whether every endpoint of Braid's on interface `ifindex` is a
    /// backup: the peer schedules no new data on the path.
    fn stands_by(&self, ifindex: u32) -> bool {
        let mut ours = self.managed_endpoints_on(ifindex).peekable();
        ours.peek().is_some() && ours.all(KernelEndpoint::is_backup)
    }
}

/// A connection with a subflow on `path` and none on `other`, if any: by
/// token, or by remote host when the token is not known (0).
fn only_on_path(samples: &[SubflowSample], path: u32, other: u32) -> Option<String> {
    let on = |i: u32| samples.iter().filter(move |s| s.ifindex == i);
    on(path)
        .find(|s| {
            !on(other).any(|o| {
                if s.conn != 0 {
                    o.conn == s.conn
                } else {
                    o.remote.ip() == s.remote.ip()
                }
            })
        })
        .map(|s| match s.conn {
            0 => format!("a connection to {}", s.remote),
            t => format!("connection {t:08x} (to {})", s.remote),
        })
}
