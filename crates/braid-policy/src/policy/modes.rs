//! The path modes: which paths carry traffic (handover, interactive,
//! aggregate) and the budget of switches made on measurements.

use super::*;

impl Policy {
    pub(super) fn role_of(&self, w: &Want) -> Role {
        let ifindex = self
            .addresses
            .values()
            .find(|a| a.ip == w.addr)
            .map(|a| a.ifindex);
        self.interface_role(&w.iface, ifindex)
    }

    /// The role configured for interface `name`, else primary if it holds
    /// a main-table default route.
    pub(super) fn interface_role(&self, name: &str, ifindex: Option<u32>) -> Role {
        if let Some(r) = self.config.interface(name).and_then(|i| i.role) {
            return r;
        }
        let main_default = self
            .default_routes
            .iter()
            .any(|r| Some(r.ifindex) == ifindex && r.table == 254);
        if main_default {
            Role::Primary
        } else {
            Role::Secondary
        }
    }

    pub(super) fn ifindex_of(&self, ip: IpAddr) -> Option<u32> {
        self.addresses
            .values()
            .find(|a| a.ip == ip)
            .map(|a| a.ifindex)
    }

    /// A problem of the path for every connection (see
    /// `PathHealth::host_problem`): what the modes act on.
    pub(super) fn path_problem(&self, ifindex: Option<u32>) -> Option<PathProblem> {
        let p = &self.config.policy;
        ifindex
            .and_then(|i| self.health.paths.get(&i))
            .and_then(|h| h.host_problem(p.stall_ms, p.loss_threshold, p.loss_hosts as usize))
    }

    /// What is wrong with some connections of the path but is not taken as
    /// the path's problem, for the path state.
    pub(super) fn unconfirmed_problems(&self, wanted: &[Want]) -> String {
        let p = &self.config.policy;
        let mut seen = BTreeSet::new();
        let notes: Vec<String> = wanted
            .iter()
            .filter_map(|w| {
                let i = self.ifindex_of(w.addr)?;
                if !seen.insert(i) {
                    return None;
                }
                let note = self.health.paths.get(&i)?.unconfirmed_problem(
                    p.stall_ms,
                    p.loss_threshold,
                    p.loss_hosts as usize,
                )?;
                Some(format!("{}: {note}", w.iface))
            })
            .collect();
        if notes.is_empty() {
            String::new()
        } else {
            format!(" ({})", notes.join("; "))
        }
    }

    /// Whether a switch of traffic made on measurements (and the resets
    /// that go with it) may happen now, under `policy.max_handovers` per
    /// `policy.handover_window_ms`; if not, why.
    pub(super) fn handover_budget(&mut self) -> Result<(), String> {
        let now = self.clock.now();
        let pc = &self.config.policy;
        self.handovers
            .check(now, pc.max_handovers, pc.handover_window_ms)
    }

    /// A change of the paths carrying traffic, by cause (see
    /// `Counters::switches`).
    pub(super) fn count_switch(&mut self, cause: &str) {
        *self.counters.switches.entry(cause.to_string()).or_default() += 1;
    }

    pub(super) fn spend_handover(&mut self) {
        if self.handovers.spend(self.clock.now()) {
            self.counters.handovers += 1;
        }
    }

    /// Counted in `reconcile`, once per time it is held back.
    pub(super) fn hold_back_handover(&mut self, why: String) {
        self.handover_held = Some(why);
    }

    /// Resets of stalled paths' subflows disturb every connection on them:
    /// they come with the switch of this round, or take a switch from
    /// the budget themselves, or are dropped (the stall stays noted: one
    /// reset per stall at most).
    pub(super) fn budget_resets(&mut self, wanted: &[Want]) {
        let resets = wanted.iter().any(|w| {
            self.reset_pending.contains_key(&w.addr) && self.managed_endpoint_of(w.addr).is_some()
        });
        if !resets {
            self.reset_pending.clear();
            return;
        }
        match self.handover_budget() {
            Ok(()) => self.spend_handover(),
            Err(why) => {
                self.reset_pending.clear();
                self.path_state = format!(
                    "{}; reopening the stalled path's subflows is held back: {why}",
                    self.path_state
                );
                self.hold_back_handover(why);
            }
        }
    }

    /// Set the backup bit of each wanted endpoint for handover or interactive.
    pub(super) fn apply_path_mode(&mut self, wanted: &mut [Want]) {
        self.mode_reasons.clear();
        match self.config.policy.mode {
            PathMode::Aggregate => {
                self.path_state = "aggregate: every usable path carries traffic".into();
            }
            PathMode::Handover => self.apply_handover(wanted),
            PathMode::Interactive => self.apply_interactive(wanted),
        }
    }

    /// Handover: the primaries carry traffic while one is healthy, the
    /// secondaries stand by; the other way round when none is.
    fn apply_handover(&mut self, wanted: &mut [Want]) {
        let roles: Vec<Role> = wanted.iter().map(|w| self.role_of(w)).collect();
        let primaries: Vec<usize> = (0..wanted.len())
            .filter(|i| roles[*i] == Role::Primary)
            .collect();
        if primaries.len() == wanted.len() {
            self.failed_over = false;
            self.path_state = "handover: no secondary path to hand over to".into();
            return;
        }
        let healthy: Vec<usize> = primaries
            .iter()
            .copied()
            .filter(|i| {
                self.path_problem(self.ifindex_of(wanted[*i].addr))
                    .is_none()
            })
            .collect();
        let held: Vec<usize> = healthy
            .iter()
            .copied()
            .filter(|i| self.primary_held(&wanted[*i]))
            .collect();
        // A primary that stood by carried nothing: failed meanwhile, it
        // would look as healthy as one that did not. Seen in the lab: a
        // primary left for loss, blackholed while it stood by, was given
        // the traffic back 3 s later (a 400 ms stall). It answers a probe
        // first.
        let unproven = self.failed_over
            && !held.is_empty()
            && !held
                .iter()
                .any(|i| self.proven(self.ifindex_of(wanted[*i].addr)));
        if unproven {
            for i in &held {
                if let Some(x) = self.ifindex_of(wanted[*i].addr) {
                    self.want_check(x);
                }
            }
            self.checks_due();
        }
        let held = !held.is_empty() && !unproven;
        let why_down = self.why_primaries_fail(wanted, &primaries);
        let mut failed = if self.failed_over {
            !held
        } else {
            healthy.is_empty()
        };
        // A usable primary measured as failing: a switch made on
        // measurements, which the rate limit may hold back. A primary that
        // is gone (carrier, address, route) is left at once, always.
        let mut held_back = None;
        if failed && !self.failed_over && !primaries.is_empty() {
            match self.handover_budget() {
                Ok(()) => self.spend_handover(),
                Err(why) => {
                    failed = false;
                    held_back = Some(why);
                }
            }
        }
        let reason = if unproven {
            format!(
                "handover: the primary has been healthy for {} ms, but it carried nothing while it stood by: it answers a probe before it takes traffic back; the secondary keeps traffic",
                self.config.policy.hold_ms
            )
        } else if let Some(why) = held_back {
            let reason = format!("handover: {why_down}; the primary keeps traffic: {why}");
            self.hold_back_handover(why);
            reason
        } else if failed {
            format!("handover: {why_down}; the secondary takes over")
        } else if self.failed_over {
            format!(
                "handover: the primary has been healthy for {} ms; it takes traffic back, the secondary stands by",
                self.config.policy.hold_ms
            )
        } else {
            format!(
                "handover: the primary is healthy; it carries traffic, the secondary stands by{}",
                self.unconfirmed_problems(wanted)
            )
        };
        // The first decision (no path state yet) is no switch: a daemon
        // starting with only secondaries usable moved nothing.
        if failed && !self.failed_over && !self.path_state.is_empty() {
            let cause = if primaries.is_empty() {
                "path_gone"
            } else {
                primaries
                    .iter()
                    .find_map(|i| self.path_problem(self.ifindex_of(wanted[*i].addr)))
                    .map_or("unhealthy", |p| p.kind.name())
            };
            self.count_switch(cause);
        } else if !failed && self.failed_over {
            self.count_switch("recovered");
        }
        self.failed_over = failed;
        if !failed {
            for h in self.health.paths.values_mut() {
                h.forget_check();
            }
        }
        self.path_state = reason.clone();
        for (i, w) in wanted.iter_mut().enumerate() {
            let standby = (roles[i] == Role::Primary) == failed;
            self.set_standby(w, standby, &reason);
        }
    }

    /// A healthy primary has been so for `hold_ms`; or, when no connection
    /// has a subflow on it to measure (it came back while traffic was
    /// elsewhere and the kernel opened none), usable for `hold_ms`: no
    /// evidence against it, as on a fresh start.
    fn primary_held(&self, w: &Want) -> bool {
        let now = self.clock.now();
        let hold_ms = self.config.policy.hold_ms;
        let h = self
            .ifindex_of(w.addr)
            .and_then(|x| self.health.paths.get(&x));
        match h.filter(|h| h.measured()) {
            Some(h) => h
                .healthy_since_ms
                .is_some_and(|t| now.since(Time::from_ms(t)) >= hold_ms),
            None => self
                .usable_since
                .get(&w.addr)
                .is_some_and(|t| now.since(*t) >= hold_ms),
        }
    }

    /// Whether a path standing by may take traffic without a check
    /// (`PathHealth::proven`), or cannot be checked: its peer's family
    /// cannot be probed.
    fn proven(&self, ifindex: Option<u32>) -> bool {
        let now = self.clock.now().ms();
        let can_probe = self.probe_filter();
        ifindex
            .and_then(|x| self.health.paths.get(&x))
            .is_none_or(|h| h.proven(now) || !h.echo_pair().is_some_and(|(_, r)| can_probe(&r)))
    }

    /// Ask for a check of a path standing by (sent by `checks_due`).
    fn want_check(&mut self, ifindex: u32) {
        if let Some(h) = self.health.paths.get_mut(&ifindex) {
            h.want_check();
        }
    }

    /// Why the primaries cannot (or cannot yet) carry traffic.
    fn why_primaries_fail(&self, wanted: &[Want], primaries: &[usize]) -> String {
        if primaries.is_empty() {
            return "no primary path is usable".to_string();
        }
        primaries
            .iter()
            .map(|i| {
                let w = &wanted[*i];
                format!(
                    "{} {}",
                    w.iface,
                    self.path_problem(self.ifindex_of(w.addr))
                        .map_or_else(|| "not healthy long enough".into(), |p| p.why)
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// The backup bit of `w` for the mode's choice, and why.
    fn set_standby(&mut self, w: &mut Want, standby: bool, reason: &str) {
        let backup = Flag::Backup.bit();
        w.flags = if standby {
            w.flags | backup
        } else {
            w.flags & !backup
        };
        self.mode_reasons.insert(w.addr, reason.to_string());
    }

    /// Interactive: the healthy path with the lowest RTT carries traffic,
    /// the others stand by; a switch needs a clearly better path (or the
    /// active one failing) and is rate-limited.
    fn apply_interactive(&mut self, wanted: &mut [Want]) {
        let paths = self.candidates(wanted);
        let rtt = |p: &Candidate| p.srtt.unwrap_or(f64::MAX);
        let Some(best) = paths
            .iter()
            .filter(|p| p.problem.is_none())
            .min_by(|a, b| rtt(a).total_cmp(&rtt(b)))
            .cloned()
        else {
            self.active_path = None;
            self.path_state = "interactive: no healthy path; every path carries traffic".into();
            return;
        };
        let current = self
            .active_path
            .and_then(|a| paths.iter().find(|p| p.ifindex == a).cloned());
        let unconfirmed = self.unconfirmed_problems(wanted);
        let (active, reason) = self.choose_interactive(current, &best);
        if let Some(cur) = self.active_path.filter(|c| *c != active) {
            let cause = match paths.iter().find(|p| p.ifindex == cur) {
                None => "path_gone",
                Some(p) => p.problem.as_ref().map_or("rtt", |x| x.kind.name()),
            };
            self.count_switch(cause);
        }
        if self.handover_held.is_none() {
            self.active_reason = reason.clone();
        }
        let reason = format!("{reason}{unconfirmed}");
        if self.active_path != Some(active) {
            self.last_switch = self.clock.now();
        }
        self.active_informed = paths
            .iter()
            .find(|p| p.ifindex == active)
            .is_some_and(|p| p.srtt.is_some());
        self.active_path = Some(active);
        // Only the best path, while it has not taken traffic, keeps its
        // check (`choose_interactive`): a waiver is for one switch.
        for (i, h) in self.health.paths.iter_mut() {
            if *i != best.ifindex || *i == active {
                h.forget_check();
            }
        }
        self.path_state = reason.clone();
        for w in wanted.iter_mut() {
            let standby = self.ifindex_of(w.addr) != Some(active);
            self.set_standby(w, standby, &reason);
        }
    }

    /// One candidate per interface of the wanted endpoints, with its health.
    fn candidates(&self, wanted: &[Want]) -> Vec<Candidate> {
        let mut paths: Vec<Candidate> = Vec::new();
        for w in wanted {
            let Some(i) = self.ifindex_of(w.addr) else {
                continue;
            };
            if paths.iter().any(|p| p.ifindex == i) {
                continue;
            }
            let h = self.health.paths.get(&i);
            paths.push(Candidate {
                ifindex: i,
                srtt: h.and_then(|h| h.srtt_ms),
                problem: self.path_problem(Some(i)),
                healthy_since: h.and_then(|h| h.healthy_since_ms),
            });
        }
        paths
    }

    /// Which interface carries traffic, given the one that does (if any)
    /// and the best healthy one, and why.
    fn choose_interactive(
        &mut self,
        current: Option<Candidate>,
        best: &Candidate,
    ) -> (u32, String) {
        let pc = self.config.policy.clone();
        let now = self.clock.now();
        let links = self.links.clone();
        let name = |i: u32| link_name(&links, i);
        let rtt = |p: &Candidate| p.srtt.unwrap_or(f64::MAX);
        let lowest = || {
            (
                best.ifindex,
                format!(
                    "interactive: {} has the lowest RTT ({})",
                    name(best.ifindex),
                    fmt_rtt(best.srtt)
                ),
            )
        };
        let cur = match current {
            None => return lowest(),
            Some(cur) if !self.active_informed && cur.problem.is_none() && best.srtt.is_some() => {
                return lowest()
            }
            Some(cur) => cur,
        };
        // Switches made on measurements: the rate limit may hold them back.
        if let Some(problem) = cur.problem.clone() {
            return match self.handover_budget() {
                Ok(()) => {
                    self.spend_handover();
                    (
                        best.ifindex,
                        format!(
                            "interactive: {} is {problem}; switching to {} ({})",
                            name(cur.ifindex),
                            name(best.ifindex),
                            fmt_rtt(best.srtt)
                        ),
                    )
                }
                Err(why) => {
                    let reason = format!(
                        "interactive: {} is {problem}; it keeps traffic: {why}",
                        name(cur.ifindex)
                    );
                    self.hold_back_handover(why);
                    (cur.ifindex, reason)
                }
            };
        }
        let better = best.ifindex != cur.ifindex
            && rtt(&cur) > rtt(best) * pc.rtt_ratio + pc.rtt_margin_ms as f64
            && best
                .healthy_since
                .is_some_and(|t| now.since(Time::from_ms(t)) >= pc.hold_ms)
            && now.since(self.last_switch) >= pc.hold_ms;
        if !better {
            // Nothing new: the reason it was chosen stands.
            let kept = if self.active_reason.is_empty() {
                format!(
                    "interactive: {} carries traffic ({})",
                    name(cur.ifindex),
                    fmt_rtt(cur.srtt)
                )
            } else {
                self.active_reason.clone()
            };
            return (cur.ifindex, kept);
        }
        let why = format!(
            "interactive: {} RTT {} is over {}x{} + {} ms of {}",
            name(cur.ifindex),
            fmt_rtt(cur.srtt),
            pc.rtt_ratio,
            fmt_rtt(best.srtt),
            pc.rtt_margin_ms,
            name(best.ifindex)
        );
        // The faster path stood by: its RTT is what it was when it last
        // carried something, and it may have failed since (as handover's
        // primary, `apply_handover`).
        if !self.proven(Some(best.ifindex)) {
            self.want_check(best.ifindex);
            self.checks_due();
            return (
                cur.ifindex,
                format!(
                    "{why}; but {} carried nothing while it stood by: it answers a probe before it takes traffic; {} keeps it",
                    name(best.ifindex),
                    name(cur.ifindex)
                ),
            );
        }
        match self.handover_budget() {
            Ok(()) => {
                self.spend_handover();
                (best.ifindex, format!("{why}; switching"))
            }
            Err(held) => {
                let reason = format!("{why}; staying: {held}");
                self.hold_back_handover(held);
                (cur.ifindex, reason)
            }
        }
    }
}
