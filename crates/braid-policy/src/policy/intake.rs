//! Events into the model: what each one changes, and whether it can
//! change what is decided.

use super::*;

impl Policy {
    /// Take one event into the model; false when it cannot change what
    /// is decided (nothing to reconcile).
    pub(super) fn take(&mut self, event: Event) -> bool {
        match event {
            // Every round may change a verdict the modes act on.
            Event::Health(samples) => self.take_health(samples),
            Event::ProbeResult {
                ifindex,
                remote,
                rtt_ms,
            } => return self.take_probe_result(ifindex, remote, rtt_ms),
            // Counted into the path's loss at the next health round.
            Event::LossEcho { ifindex, answered } => {
                let now = self.clock.now().ms();
                if let Some(h) = self.health.paths.get_mut(&ifindex) {
                    h.loss_echo_result(answered, now);
                }
                return false;
            }
            Event::Snapshot {
                links,
                addresses,
                default_routes,
                endpoints,
                limits,
            } => self.take_snapshot(links, addresses, default_routes, endpoints, limits),
            Event::LinkChanged(link) => {
                self.counters.link_events += 1;
                // An announcement sent before a carrier change that a read
                // already brought (it waited in the socket while the read
                // was made) would undo that change.
                let known = self.links.get(&link.index).and_then(|l| l.carrier_changes);
                if let (Some(known), Some(sent)) = (known, link.carrier_changes) {
                    if sent < known {
                        return false;
                    }
                }
                self.take_link(link);
            }
            Event::LinksPolled(links) => {
                let mut changed = false;
                for link in links {
                    let had_carrier = self.links.get(&link.index).is_some_and(Link::can_carry);
                    if had_carrier && link.up && !link.carrier {
                        self.counters.carrier_losses_polled += 1;
                        self.notes.push(format!(
                            "{} lost carrier: read in a health round before the kernel announced it (its link watch holds such a change up to a second)",
                            link.name
                        ));
                        self.take_link(link);
                        changed = true;
                    }
                }
                return changed;
            }
            Event::LinkRemoved { index } => {
                self.counters.link_events += 1;
                self.forget_refusals_on(index);
                self.carrier.remove(&index);
                self.idle_when_lost.remove(&index);
                self.idle_when_address_lost.retain(|_, i| *i != index);
                self.unconfirmed_idle.remove(&index);
                self.links.remove(&index);
                self.addresses.retain(|(i, _), _| *i != index);
                self.default_routes.retain(|r| r.ifindex != index);
            }
            Event::AddressAdded(a) => {
                self.counters.address_events += 1;
                self.forget_refusals_of(a.ip);
                self.idle_when_address_lost.remove(&a.ip);
                self.addresses.insert((a.ifindex, a.ip), a);
            }
            Event::AddressRemoved(a) => {
                self.counters.address_events += 1;
                self.forget_refusals_of(a.ip);
                self.note_idle_address_loss(&a);
                self.addresses.remove(&(a.ifindex, a.ip));
            }
            Event::DefaultRouteAdded(r) => {
                self.counters.route_events += 1;
                self.initcwnd_refused.remove(&r.key());
                self.default_routes.retain(|x| x.key() != r.key());
                self.default_routes.insert(r);
            }
            Event::DefaultRouteRemoved(r) => {
                self.counters.route_events += 1;
                self.default_routes.retain(|x| x.key() != r.key());
            }
            Event::ConfigReloaded(cfg) => {
                self.counters.reloads += 1;
                self.config = *cfg;
                // The operator may have fixed what made the kernel refuse.
                self.refused.clear();
                self.flags_refused.clear();
                self.limits_refused = None;
                self.cflag_refused = None;
            }
            Event::ActionFailed { id, action, error } => {
                self.counters.failed_actions += 1;
                self.undo(&action, &error);
                if let Some(d) = self.recent.iter_mut().rev().find(|d| id != 0 && d.id == id) {
                    d.error = Some(error);
                }
                return false;
            }
            Event::Mptcp(kind) => {
                // Unknown kinds share one name: the counters' labels stay bounded.
                let name = match kind {
                    MptcpEventKind::Unknown(_) => "unknown".to_string(),
                    known => known.name(),
                };
                *self.counters.mptcp_events.entry(name).or_default() += 1;
                return false;
            }
            Event::Tick => {}
            Event::Stopping => {
                self.stopping = true;
            }
        }
        true
    }

    /// A link as it is now, announced or read.
    fn take_link(&mut self, link: Link) {
        self.forget_refusals_on(link.index);
        if !link.can_carry() {
            // Its measurements are about a path that is gone; whether it
            // carried data when it went is kept (`keep_standby`).
            if let Some(h) = self.health.paths.remove(&link.index) {
                if h.measured() && h.idle() {
                    self.idle_when_lost.insert(link.index);
                } else {
                    self.idle_when_lost.remove(&link.index);
                }
            }
        }
        self.note_carrier(&link);
        self.links.insert(link.index, link);
    }

    /// Whether the path of a standby endpoint's address that goes away
    /// carried data: if not, the endpoint is kept (`keep_standby`), as when
    /// a standby loses carrier. The health round before the loss says.
    fn note_idle_address_loss(&mut self, a: &Address) {
        // A signal endpoint kept would go on announcing an address the
        // host no longer has.
        let standby = self
            .managed_endpoint_of(a.ip)
            .is_some_and(|e| e.is_backup() && e.flags & Flag::Signal.bit() == 0);
        // A link that lost carrier first (DHCP clients drop the lease
        // then) has no path health left: whether it was idle then says.
        let idle = self
            .health
            .paths
            .get(&a.ifindex)
            .is_some_and(|h| h.measured() && h.idle())
            || self.idle_when_lost.contains(&a.ifindex)
                && !self.unconfirmed_idle.contains_key(&a.ifindex);
        if standby && idle {
            self.idle_when_address_lost.insert(a.ip, a.ifindex);
        } else {
            self.idle_when_address_lost.remove(&a.ip);
        }
    }

    /// Addresses gone while idle stay kept only while subflows from them
    /// remain and none of them has data outstanding.
    fn recheck_gone_addresses(&mut self, samples: &[crate::health::SubflowSample]) {
        self.idle_when_address_lost
            .retain(|ip, _| still_idle(samples.iter().filter(|s| s.local.ip() == *ip)));
    }

    /// A round of subflow measurements.
    fn take_health(&mut self, mut samples: Vec<crate::health::SubflowSample>) {
        // Subflows from an address that is gone measure no path; they only
        // tell whether a standby kept for them is still idle.
        self.recheck_gone_addresses(&samples);
        // Attribute each subflow to the interface holding its address.
        samples.retain_mut(|s| match self.ifindex_of(s.local.ip()) {
            Some(i) => {
                s.ifindex = i;
                true
            }
            None => false,
        });
        // Subflows on a link without carrier (a kept standby's) measure no
        // path: they only tell whether there is still something to keep.
        let (samples, dark): (Vec<_>, Vec<_>) = samples
            .into_iter()
            .partition(|s| self.links.get(&s.ifindex).is_some_and(Link::can_carry));
        self.recheck_kept(&dark);
        self.note_missed_priorities(&samples);
        self.note_ignored_backups(&samples);
        let p = &self.config.policy;
        let (stall, loss, hold) = (p.stall_ms, p.loss_threshold, p.hold_ms);
        // An idle path's loss fades slowly: it is tried again only after
        // several hold times without evidence.
        let decay = hold.saturating_mul(4);
        let hosts = p.loss_hosts as usize;
        let now_ms = self.clock.now().ms();
        self.health.loss_on_the_way_in = self.config.policy.mode == PathMode::Interactive;
        self.health
            .update(now_ms, &samples, stall, loss, decay, hosts);
        self.judge_unanswered_silences();
        self.note_missing_subflows();
        self.note_stalls();
        self.note_lossy_waits(&samples);
        self.probes_due();
    }

    /// Unanswered silence probes, judged against this round: a path whose
    /// data came back while its probe waited is not unreachable (said in a
    /// note, and counted).
    fn judge_unanswered_silences(&mut self) {
        for (i, h) in self.health.paths.iter_mut() {
            if let Some(SilenceVerdict::DataCame(why)) = h.judge_unanswered_silence() {
                self.counters.probes_unanswered_data_came += 1;
                self.notes
                    .push(format!("{}: {why}", link_name(&self.links, *i)));
            }
        }
    }

    /// At start, a link that is up without carrier and holds a backup
    /// endpoint of ours may be a standby that lost carrier while idle
    /// before this daemon ran (it was restarted meanwhile): removing the
    /// endpoint would close its subflows and make both kernels resend
    /// everything in flight. It is kept until the first health round
    /// re-checks it (`recheck_kept`), or for `UNCONFIRMED_KEEP_MS` if
    /// none comes (no subflow anywhere: nothing to keep).
    fn keep_dark_standbys_found_at_start(&mut self) {
        let until = self.clock.now().plus(UNCONFIRMED_KEEP_MS);
        let dark: Vec<u32> = self
            .links
            .values()
            .filter(|l| l.up && !l.carrier)
            .map(|l| l.index)
            .collect();
        for i in dark {
            let standby = self.managed_endpoints_on(i).any(KernelEndpoint::is_backup);
            if standby {
                self.idle_when_lost.insert(i);
                self.unconfirmed_idle.insert(i, until);
            }
        }
    }

    /// Links that lost carrier while idle stay so only while they still
    /// have subflows and none of ours has data outstanding on them (this
    /// host's kernel put data there after all: it must be resent); the
    /// endpoint goes at the next reconcile otherwise.
    fn recheck_kept(&mut self, dark: &[crate::health::SubflowSample]) {
        let links = &self.links;
        self.idle_when_lost.retain(|i| {
            if links.get(i).is_some_and(Link::can_carry) {
                return true; // back, settling: measured like any path
            }
            still_idle(dark.iter().filter(|s| s.ifindex == *i))
        });
        // A round has said, for the keeps found at start too.
        self.unconfirmed_idle.clear();
    }

    /// A probe's answer, or its absence.
    fn take_probe_result(&mut self, ifindex: u32, remote: IpAddr, rtt_ms: Option<f64>) -> bool {
        self.counters.probes += 1;
        let answered = rtt_ms.is_some();
        if !answered {
            self.counters.probes_unanswered += 1;
        }
        let stall_ms = self.config.policy.stall_ms;
        let now_ms = self.clock.now().ms();
        let Some(h) = self.health.paths.get_mut(&ifindex) else {
            return false;
        };
        // One probe of a path is under way at a time (`wants_probe`,
        // `wants_stall_probe`), so the result is that probe's.
        let changed = if h.stall_probe_under_way(remote) {
            // About a wait for an ACK: unanswered while the path is
            // stalled, the path is unreachable.
            h.stall_probe_result(remote, answered, stall_ms)
        } else if h.check_under_way(remote) {
            let verdict = h.check_result(answered, now_ms);
            self.notes.push(match verdict {
                CheckVerdict::Answered => format!("{} answered: it may take traffic", link_name(&self.links, ifindex)),
                CheckVerdict::Unanswered => format!(
                    "{} did not answer although its peer answers echoes: it keeps standing by, and must be healthy for another {} ms",
                    link_name(&self.links, ifindex),
                    self.config.policy.hold_ms
                ),
                CheckVerdict::Waived => format!(
                    "{} did not answer, but its peer was never heard answering an echo on it, which says nothing: it may take traffic",
                    link_name(&self.links, ifindex)
                ),
            });
            return true;
        } else if h.silence_probe_under_way(remote) {
            match rtt_ms {
                Some(rtt) => {
                    h.silence_probe_answered(rtt, now_ms);
                    false
                }
                // Unanswered: judged at the round the shell makes at once,
                // by whether data came while the probe waited.
                None if h.unreachable.is_none() => {
                    h.silence_probe_unanswered();
                    false
                }
                None => false,
            }
        } else {
            false
        };
        if !changed {
            return false;
        }
        self.note_stalls();
        true
    }

    /// The whole state, at start and after a resynchronisation.
    fn take_snapshot(
        &mut self,
        links: Vec<Link>,
        addresses: Vec<Address>,
        default_routes: Vec<DefaultRoute>,
        endpoints: Vec<KernelEndpoint>,
        limits: Limits,
    ) {
        if self.synced {
            self.counters.resyncs += 1;
        }
        let known: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
        self.carrier.retain(|i, _| known.contains(i));
        self.idle_when_lost.retain(|i| known.contains(i));
        self.idle_when_address_lost
            .retain(|ip, i| known.contains(i) && !addresses.iter().any(|a| a.ip == *ip));
        self.unconfirmed_idle.retain(|i, _| known.contains(i));
        for l in &links {
            self.note_carrier(l);
        }
        self.links = links.into_iter().map(|l| (l.index, l)).collect();
        self.addresses = addresses
            .into_iter()
            .map(|a| ((a.ifindex, a.ip), a))
            .collect();
        self.default_routes = default_routes.into_iter().collect();
        let before = std::mem::take(&mut self.kernel);
        self.kernel = endpoints.into_iter().map(|e| (e.id, e)).collect();
        // Owned ids that are gone, or now hold another address (the table
        // was flushed and someone else took the id), are forgotten. Ids
        // adopted from a previous run (not in the model yet) are taken as
        // they are.
        let kernel = &self.kernel;
        self.owned
            .retain(|id| match (kernel.get(id), before.get(id)) {
                (Some(now), Some(was)) => now.addr == was.addr,
                (Some(_), None) => true,
                (None, _) => false,
            });
        self.limits = Some(limits);
        if !self.synced {
            self.keep_dark_standbys_found_at_start();
        }
        // The kernel's state is known afresh: try everything again.
        self.refused.clear();
        self.flags_refused.clear();
        self.limits_refused = None;
        self.synced = true;
    }
}

/// Whether a kept standby's subflows are still there to keep, and none of
/// ours has data outstanding on them.
fn still_idle<'a>(subflows: impl Iterator<Item = &'a crate::health::SubflowSample>) -> bool {
    let mut on = subflows.peekable();
    on.peek().is_some() && on.all(|s| s.unacked == 0)
}
