//! Reconciliation: which addresses should be endpoints, with which flags,
//! and the decisions that bring the kernel's table there.

use super::*;

impl Policy {
    /// Why `a` can or cannot carry an endpoint.
    pub(super) fn usability(&self, a: &Address) -> Result<(), String> {
        self.usability_with(a, true)
    }

    /// `debounce`: whether a link whose carrier has just returned must wait
    /// (`policy.carrier_debounce_ms`). Not when no other path is usable:
    /// waiting then only leaves the host without any path.
    pub(super) fn usability_with(&self, a: &Address, debounce: bool) -> Result<(), String> {
        let Some(link) = self.links.get(&a.ifindex) else {
            return Err(format!("interface #{} is unknown", a.ifindex));
        };
        self.link_allowed(link)?;
        let name = &link.name;
        if !link.up {
            return Err(format!("{name} is down"));
        }
        if !link.carrier {
            return Err(format!("{name} has no carrier"));
        }
        if let Some((ago, need, losses)) = self.settling(a.ifindex).filter(|_| debounce) {
            return Err(format!(
                "{name}'s carrier came back {ago} ms ago: it is used once it has held for {need} ms (policy.carrier_debounce_ms{})",
                if losses > 1 {
                    format!(", doubled for each of its {losses} carrier losses in the last {} s", FLAP_WINDOW_MS / 1000)
                } else {
                    String::new()
                }
            ));
        }
        self.address_usability(a)
    }

    /// Whether the configuration lets Braid use `link` at all.
    fn link_allowed(&self, link: &Link) -> Result<(), String> {
        let f = &self.config.filter;
        let name = &link.name;
        if link.loopback {
            return Err(format!("{name} is a loopback interface"));
        }
        if let Some(ic) = self.config.interface(name) {
            if ic.ignore {
                return Err(format!("{name} is ignored by the configuration"));
            }
        } else {
            if f.exclude.iter().any(|p| glob(p, name)) {
                return Err(format!("{name} is excluded by filter.exclude"));
            }
            if !f.include.iter().any(|p| glob(p, name)) {
                return Err(format!("{name} is not in filter.include"));
            }
        }
        Ok(())
    }

    /// What the address itself allows, whatever its link's state.
    fn address_usability(&self, a: &Address) -> Result<(), String> {
        let f = &self.config.filter;
        let name = self.links.get(&a.ifindex).map_or("?", |l| l.name.as_str());
        if a.ip.is_ipv4() && !f.ipv4 || a.ip.is_ipv6() && !f.ipv6 {
            return Err(format!(
                "{} addresses are disabled by the configuration",
                if a.ip.is_ipv4() { "IPv4" } else { "IPv6" }
            ));
        }
        if a.ip.is_loopback() {
            return Err("a loopback address".into());
        }
        if is_link_local(&a.ip) && !f.link_local {
            return Err("a link-local address (filter.link_local = false)".into());
        }
        if is_ula(&a.ip) && !f.ula {
            return Err("an IPv6 unique local address (filter.ula = false)".into());
        }
        if a.temporary && !f.temporary {
            return Err("a temporary (privacy) address (filter.temporary = false)".into());
        }
        if a.deprecated {
            return Err("the address is deprecated (its preferred lifetime ended)".into());
        }
        if a.tentative {
            return Err(
                "the address is tentative (duplicate address detection is not done)".into(),
            );
        }
        if f.require_default_route
            && !self
                .default_routes
                .iter()
                .any(|r| r.ifindex == a.ifindex && r.ipv6 == a.ip.is_ipv6())
        {
            return Err(format!(
                "{name} has no {} default route (filter.require_default_route = true)",
                if a.ip.is_ipv6() { "IPv6" } else { "IPv4" }
            ));
        }
        if let Some(err) = self.refused.get(&a.ip) {
            return Err(format!("the kernel refused its endpoint: {err}"));
        }
        Ok(())
    }

    pub(super) fn flags_for(&self, iface: &str) -> u32 {
        match self.config.interface(iface).and_then(|i| i.flags.as_ref()) {
            Some(list) => flags_of(list),
            None => match self.config.mode {
                Mode::Client => Flag::Subflow.bit(),
                Mode::Server => Flag::Signal.bit(),
            },
        }
    }

    /// The endpoints there should be, best first, at most the kernel maximum.
    pub(super) fn wanted(&self) -> (Vec<Want>, Vec<Want>) {
        // A returning link waits out its debounce only if another path
        // carries traffic meanwhile; one let in early stays in.
        let settled_path = self
            .addresses
            .values()
            .any(|a| self.usability_with(a, true).is_ok());
        // A kept standby's endpoint (`keep_standby`) is not in use: its
        // returning carrier waits out the debounce like any other.
        // One waiting to be added back after a reopen is (`readd_at`).
        let in_use = |ip: IpAddr| {
            self.kernel.values().any(|e| e.addr == ip) && !self.kept_standby.contains_key(&ip)
                || self.readd_at.contains_key(&ip)
        };
        let carried = settled_path
            || self
                .addresses
                .values()
                .any(|a| in_use(a.ip) && self.usability_with(a, false).is_ok());
        let mut all: Vec<Want> = self
            .addresses
            .values()
            .filter(|a| {
                self.usability_with(a, true).is_ok()
                    || ((!carried || in_use(a.ip)) && self.usability_with(a, false).is_ok())
            })
            .map(|a| {
                let iface = self.links[&a.ifindex].name.clone();
                Want {
                    addr: a.ip,
                    flags: self.flags_for(&iface),
                    ifindex: self.config.endpoints.bind_to_device.then_some(a.ifindex),
                    iface,
                }
            })
            .collect();
        // Non-backup first, then IPv4 before IPv6, then by interface index.
        all.sort_by_key(|w| {
            (
                w.flags & Flag::Backup.bit() != 0,
                w.addr.is_ipv6(),
                w.ifindex,
                w.addr,
            )
        });
        let extra = if all.len() > KERNEL_MAX_ENDPOINTS {
            all.split_off(KERNEL_MAX_ENDPOINTS)
        } else {
            Vec::new()
        };
        (all, extra)
    }

    pub(super) fn manages(&self, id: u8) -> bool {
        self.config.endpoints.own_all || self.owned.contains(&id)
    }

    /// The endpoint with address `ip`, if it is Braid's to manage (the
    /// kernel holds one endpoint per address).
    pub(super) fn managed_endpoint_of(&self, ip: IpAddr) -> Option<&KernelEndpoint> {
        self.kernel
            .values()
            .find(|e| e.addr == ip)
            .filter(|e| self.manages(e.id))
    }

    /// Braid's endpoints on addresses of interface `ifindex`.
    pub(super) fn managed_endpoints_on(
        &self,
        ifindex: u32,
    ) -> impl Iterator<Item = &KernelEndpoint> + '_ {
        self.kernel
            .values()
            .filter(move |e| self.manages(e.id) && self.addresses.contains_key(&(ifindex, e.addr)))
    }

    pub(super) fn free_id(&self) -> Option<u8> {
        (1..=255u8).find(|id| !self.kernel.contains_key(id))
    }

    /// Every decision that brings the kernel to what is wanted now.
    pub(super) fn reconcile(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        self.expire_unconfirmed_keeps();
        let wanted = self.wanted_now();
        self.remove_unwanted(&wanted, &mut out);
        for w in &wanted {
            self.bring_endpoint(w, &mut out);
        }
        // A wait ends at its deadline, whether or not the address was
        // wanted meanwhile (it may come back within it: it still waits).
        let now = self.clock.now();
        self.readd_at.retain(|_, (at, _)| now < *at);
        for (addr, (at, _)) in &self.readd_at {
            self.path_state = format!(
                "{}; {addr}'s endpoint is added back in {} ms, once the peer has its REMOVE_ADDR",
                self.path_state,
                now.until(*at)
            );
        }
        self.reconcile_limits(&wanted, &mut out);
        self.reconcile_cflag(&mut out);
        self.end_round();
        self.reconcile_standby_windows(&wanted, &mut out);
        // A path taking over is made active only after the failed one is
        // gone: closing the failed subflows rewinds the connection to its
        // first unacknowledged byte, and while the standby is still a
        // backup nothing else is sent on it, so the resent data goes first.
        // Made active first, it would be given new data ahead of the resend.
        out.sort_by_key(|d| match d.action {
            Action::SetEndpointFlags { flags, .. } if flags & Flag::Backup.bit() == 0 => 1,
            _ => 0,
        });
        // Each in its order (the other value, then the endpoint's own),
        // which the sort above would undo for a standby.
        self.resend_missed_priorities(&mut out);
        self.watch_joins(&out);
        out
    }

    /// The wanted endpoints with the path mode's backup flags.
    fn wanted_now(&mut self) -> Vec<Want> {
        let now = self.clock.now();
        let (mut wanted, _beyond_kernel_max) = self.wanted();
        // A switch held back is counted once, when it starts being held.
        let was_held = self.handover_held.take().is_some();
        self.usable_since
            .retain(|ip, _| wanted.iter().any(|w| w.addr == *ip));
        for w in &wanted {
            // Counted from the last problem seen on the path, if any.
            let troubled = self.path_problem(self.ifindex_of(w.addr)).is_some();
            let since = self.usable_since.entry(w.addr).or_insert(now);
            if troubled {
                *since = now;
            }
        }
        self.apply_path_mode(&mut wanted);
        if let Some((_, why)) = &self.reset_skipped {
            self.path_state = format!("{}; {why}", self.path_state);
        }
        self.budget_resets(&wanted);
        if self.handover_held.is_some() && !was_held {
            self.counters.handovers_held_back += 1;
        }
        wanted
    }

    /// Step 1: Braid's endpoints whose address is no longer wanted go.
    fn remove_unwanted(&mut self, wanted: &[Want], out: &mut Vec<Decision>) {
        let wanted_addrs: BTreeSet<IpAddr> = wanted.iter().map(|w| w.addr).collect();
        let stale: Vec<KernelEndpoint> = self
            .kernel
            .values()
            .filter(|e| self.manages(e.id) && !wanted_addrs.contains(&e.addr))
            .cloned()
            .collect();
        let mut kept = BTreeMap::new();
        for e in stale {
            // Kept endpoints take room the kernel's maximum leaves.
            let room = wanted.len() + kept.len() < KERNEL_MAX_ENDPOINTS;
            if let Some(why) = self.keep_standby(&e, wanted).filter(|_| room) {
                if !self.kept_standby.contains_key(&e.addr) {
                    self.counters.standby_endpoints_kept += 1;
                    self.notes.push(why.clone());
                }
                kept.insert(e.addr, why);
                continue;
            }
            let reason = match self.addresses.values().find(|a| a.ip == e.addr) {
                Some(a) => match self.usability(a) {
                    Err(why) => format!("{} is no longer usable: {why}", e.addr),
                    Ok(()) => format!(
                        "{} is beyond the kernel's maximum of {KERNEL_MAX_ENDPOINTS} endpoints",
                        e.addr
                    ),
                },
                None => format!("address {} is gone", e.addr),
            };
            self.remove(&e, out, reason);
        }
        for why in kept.values() {
            self.path_state = if self.path_state.is_empty() {
                why.clone()
            } else {
                format!("{}; {why}", self.path_state)
            };
        }
        self.kept_standby = kept;
    }

    /// A standby found without carrier at start that no health round has
    /// confirmed idle in time is not kept: no subflow exists anywhere.
    fn expire_unconfirmed_keeps(&mut self) {
        let now = self.clock.now();
        let (links, idle) = (&self.links, &mut self.idle_when_lost);
        self.unconfirmed_idle.retain(|i, until| {
            if now < *until {
                return true;
            }
            if !links.get(i).is_some_and(Link::can_carry) {
                idle.remove(i);
            }
            false
        });
    }

    /// Why a standby endpoint whose link lost carrier is kept, if it is:
    /// removing it closes its subflows, and a closing subflow makes the
    /// kernel at either end send again its whole unacknowledged MPTCP
    /// data on the paths left (`__mptcp_retransmit_pending_data`), so a
    /// path that carried nothing would stall the one that carries the
    /// transfer, for as long as its send buffer takes to drain (measured
    /// with `braid lab compare standby-carrier`). Kept, it costs what the
    /// kernel's own backup endpoint costs: new connections try a join over
    /// it until the carrier is back. Only while another path carries
    /// traffic: with none, the backup subflows carry it and must go.
    /// The same holds for a standby whose address went away while it was
    /// idle (`idle_when_address_lost`): measured in the lab's address
    /// cells, where handover had left a lossy primary and the primary's
    /// address then went, removing the endpoint stalled the transfer on
    /// the standby for ~440 ms.
    fn keep_standby(&self, e: &KernelEndpoint, wanted: &[Want]) -> Option<String> {
        if !e.is_backup() {
            return None;
        }
        let carrying = wanted.iter().find(|w| w.flags & Flag::Backup.bit() == 0)?;
        if let Some(i) = self.idle_when_address_lost.get(&e.addr) {
            // Unless a reload has since left its interface out.
            let allowed = self
                .links
                .get(i)
                .is_some_and(|l| self.link_allowed(l).is_ok());
            if allowed && self.ifindex_of(e.addr).is_none() {
                return Some(format!(
                    "{} lost its address {} while standing by: the endpoint stays, because removing it would close its idle subflows and make the kernels resend all data in flight over {} for nothing; it goes once those subflows are gone or one has data outstanding, or when no other path carries traffic",
                    link_name(&self.links, *i),
                    e.addr,
                    carrying.iface
                ));
            }
        }
        let a = self.addresses.values().find(|a| a.ip == e.addr)?;
        let link = self.links.get(&a.ifindex)?;
        let carrier_out = !link.carrier || self.settling(a.ifindex).is_some();
        if !link.up || !carrier_out {
            return None;
        }
        // The backup flag is this end's wish: the peer may still send on
        // the path (a join whose handshake missed the flag's MP_PRIO, or
        // no other subflow it can use), and that data must be resent.
        // A path without subflows has nothing to keep.
        if !self.idle_when_lost.contains(&a.ifindex) {
            return None;
        }
        self.link_allowed(link).ok()?;
        self.address_usability(a).ok()?;
        let what = if link.carrier {
            "has its carrier back, still settling,"
        } else if self.unconfirmed_idle.contains_key(&a.ifindex) {
            "had no carrier when the daemon started (a health round will tell whether its subflows are idle)"
        } else {
            "lost carrier"
        };
        Some(format!(
            "{} {what} while standing by: its endpoint {} stays, because removing it would close its subflows and make the kernels resend all data in flight over {} for nothing; new connections' joins over it are retried by TCP until the carrier is back or they time out, as with the kernel's own backup endpoint",
            link.name,
            e.addr,
            carrying.iface
        ))
    }

    /// Step 2: A wanted endpoint is there, with the wanted flags.
    fn bring_endpoint(&mut self, w: &Want, out: &mut Vec<Decision>) {
        let existing = self.kernel.values().find(|e| e.addr == w.addr).cloned();
        match existing {
            Some(e) if !self.manages(e.id) => {} // someone else's endpoint covers it
            Some(e)
                if self.reset_pending.contains_key(&w.addr)
                    || self.rejoin_pending.contains_key(&w.addr) =>
            {
                // Re-adding closes a stalled path's subflows, or makes
                // the kernel open the ones no connection has.
                if let Some(reason) = self.reset_pending.remove(&w.addr) {
                    self.remove(&e, out, reason.clone());
                    // Its new join would take address id 0 again (the
                    // initial subflow's address), and a REMOVE_ADDR for id
                    // 0 still crossing a slower path closes it on arrival:
                    // the join waits until the peer has that.
                    let wait = self.readd_wait_ms(w.addr);
                    let at = self.clock.now().plus(wait);
                    self.readd_at.insert(
                        w.addr,
                        (at, format!("{reason}; re-added {wait} ms after its removal, once the peer has its REMOVE_ADDR (over the slowest other path: a join from the same address reuses its id, and a late REMOVE_ADDR would close it)")),
                    );
                    return;
                }
                let reason = self.rejoin_pending.remove(&w.addr).unwrap_or_default();
                self.remove(&e, out, reason.clone());
                self.add(w, out, reason);
            }
            Some(e) if e.flags == w.flags && e.ifindex == w.ifindex => {
                self.flags_refused.remove(&e.id);
            }
            Some(e)
                if (e.flags & !CHANGEABLE) == (w.flags & !CHANGEABLE) && e.ifindex == w.ifindex =>
            {
                self.change_flags(&e, w, out);
            }
            Some(e) => {
                // Signal/subflow or the bound device changed: only re-adding does that.
                let reason = format!(
                    "{} changes to '{}' on {}: it must be re-added",
                    e.addr,
                    flag_names(w.flags),
                    w.iface
                );
                self.remove(&e, out, reason);
                self.add(w, out, "its settings changed".into());
            }
            None => {
                if let Some((at, why)) = self.readd_at.get(&w.addr) {
                    if self.clock.now() < *at {
                        return;
                    }
                    let why = why.clone();
                    self.readd_at.remove(&w.addr);
                    self.add(w, out, why);
                    return;
                }
                let reason = self.why_usable(w);
                self.add(w, out, reason);
            }
        }
    }

    /// How long a reopened path's endpoint waits before it is added again:
    /// the smoothed RTT of the slowest subflow on the other paths (its
    /// REMOVE_ADDR crosses one of them, to the farthest peer too), plus
    /// `READD_MARGIN_MS`, at least `READD_MIN_MS`.
    fn readd_wait_ms(&self, addr: IpAddr) -> u64 {
        let mine = self.ifindex_of(addr);
        let slowest = self
            .health
            .paths
            .iter()
            .filter(|(i, _)| Some(**i) != mine)
            .filter_map(|(_, h)| h.slowest_srtt_ms)
            .fold(0.0_f64, f64::max);
        (slowest as u64 + READD_MARGIN_MS).max(READD_MIN_MS)
    }

    /// Change a live endpoint's changeable flags, unless the kernel
    /// refused the same change and nothing has changed since.
    fn change_flags(&mut self, e: &KernelEndpoint, w: &Want, out: &mut Vec<Decision>) {
        let retry = match attempt(self.flags_refused.get(&e.id), &w.flags, self.clock.now()) {
            // Refused, and neither the wanted flags nor anything about the
            // address changed since: not yet.
            Attempt::Wait => return,
            Attempt::Now => String::new(),
            Attempt::Retry(note) => note,
        };
        self.flags_before.insert(e.id, e.flags);
        self.kernel.insert(
            e.id,
            KernelEndpoint {
                flags: w.flags,
                ..e.clone()
            },
        );
        let why = self.mode_reasons.get(&w.addr).cloned().unwrap_or_else(|| {
            format!(
                "the configuration for {} asks for '{}'",
                w.iface,
                flag_names(w.flags)
            )
        });
        out.push(Decision {
            id: 0,
            action: Action::SetEndpointFlags {
                id: e.id,
                addr: e.addr,
                flags: w.flags,
            },
            reason: format!("{why}{retry}"),
        });
    }

    /// Why a new endpoint is added for `w`.
    fn why_usable(&self, w: &Want) -> String {
        let now = self.clock.now();
        let settled = self
            .ifindex_of(w.addr)
            .and_then(|i| self.carrier.get(&i))
            .and_then(|c| {
                let ago = now.since(c.returned?);
                let need = self.settle_ms(c);
                Some(if ago < need {
                    format!("; its carrier came back only {ago} ms ago (policy.carrier_debounce_ms asks for {need} ms), but no other path is usable")
                } else {
                    format!("; its carrier came back {ago} ms ago and has held for the {need} ms required (policy.carrier_debounce_ms)")
                })
            })
            .unwrap_or_default();
        format!(
            "{} on {} is usable ({} is up with carrier{}){settled}",
            w.addr,
            w.iface,
            w.iface,
            if self.config.filter.require_default_route {
                " and a default route"
            } else {
                ""
            }
        )
    }

    /// Step 3: Limits matched to the endpoints. The kernel checks them when it
    /// decides to open a subflow, so a raise goes before the new endpoints
    /// and a cut after the removals.
    fn reconcile_limits(&mut self, wanted: &[Want], out: &mut Vec<Decision>) {
        if !self.config.limits.manage {
            return;
        }
        // Kept standby endpoints still have subflows: limits cover them.
        let kept = self.kept_standby.len();
        let n = (wanted.len() + kept).min(KERNEL_MAX_ENDPOINTS) as u32;
        let want = match self.config.mode {
            Mode::Client => Limits {
                subflows: n,
                add_addr_accepted: n,
            },
            Mode::Server => Limits {
                subflows: KERNEL_MAX_ENDPOINTS as u32,
                add_addr_accepted: 0,
            },
        };
        let retry = match attempt(self.limits_refused.as_ref(), &want, self.clock.now()) {
            _ if self.limits == Some(want) => {
                self.limits_refused = None;
                None
            }
            // Refused, and what is wanted has not changed: not on every
            // event, only after the back-off.
            Attempt::Wait => None,
            Attempt::Now => Some(String::new()),
            Attempt::Retry(note) => Some(note),
        };
        let Some(retry) = retry else { return };
        let reason = match self.config.mode {
            Mode::Client if kept > 0 => format!("{} usable endpoint(s) and {kept} kept for a standby path that lost carrier: allow as many extra subflows and accepted announcements{retry}", n as usize - kept.min(n as usize)),
            Mode::Client => format!("{n} usable endpoint(s): allow as many extra subflows and accepted announcements{retry}"),
            Mode::Server => format!("a server accepts up to the kernel maximum of joins and ignores announcements{retry}"),
        };
        let raise = self.limits.is_none_or(|l| {
            want.subflows > l.subflows || want.add_addr_accepted > l.add_addr_accepted
        });
        self.limits = Some(want);
        let d = Decision {
            id: 0,
            action: Action::SetLimits {
                subflows: want.subflows,
                add_addr_accepted: want.add_addr_accepted,
            },
            reason,
        };
        if raise {
            let first_add = out
                .iter()
                .position(|d| matches!(d.action, Action::AddEndpoint { .. }))
                .unwrap_or(out.len());
            out.insert(first_add, d);
        } else {
            out.push(d);
        }
    }

    /// Step 4: The server's C flag.
    fn reconcile_cflag(&mut self, out: &mut Vec<Decision>) {
        let deny = self.config.server.deny_join_initial_address;
        if self.cflag_applied == Some(deny) {
            self.cflag_refused = None;
            return;
        }
        if !deny && self.cflag_applied.is_none() {
            return;
        }
        let retry = match attempt(self.cflag_refused.as_ref(), &deny, self.clock.now()) {
            Attempt::Wait => return,
            Attempt::Now => String::new(),
            Attempt::Retry(note) => note,
        };
        self.cflag_applied = Some(deny);
        let why = if deny {
            "server.deny_join_initial_address: clients must join other addresses (anycast or load balancer)"
        } else {
            "server.deny_join_initial_address was turned off"
        };
        out.push(Decision {
            id: 0,
            action: Action::SetSysctl {
                name: "net.mptcp.allow_join_initial_addr_port".into(),
                value: if deny { "0" } else { "1" }.into(),
            },
            reason: format!("{why}{retry}"),
        });
    }

    /// What is left of the round: pending re-adds done, refusals about
    /// endpoints that are gone dropped, returned carriers that held settled.
    fn end_round(&mut self) {
        self.reset_pending.clear();
        self.rejoin_pending.clear();
        let kernel = &self.kernel;
        self.flags_refused.retain(|id, _| kernel.contains_key(id));
        self.flags_before.retain(|id, _| kernel.contains_key(id));
        if !self.config.limits.manage {
            self.limits_refused = None;
        }
        let settled: Vec<u32> = self
            .carrier
            .iter()
            .filter(|(i, c)| c.returned.is_some() && self.settling(**i).is_none())
            .map(|(i, _)| *i)
            .collect();
        for i in settled {
            if let Some(c) = self.carrier.get_mut(&i) {
                c.returned = None;
            }
            self.idle_when_lost.remove(&i);
        }
    }

    pub(super) fn add(&mut self, w: &Want, out: &mut Vec<Decision>, reason: String) {
        let Some(id) = self.free_id() else {
            return; // 255 endpoints: nothing sensible left to do
        };
        self.kernel.insert(
            id,
            KernelEndpoint {
                id,
                addr: w.addr,
                flags: w.flags,
                ifindex: w.ifindex,
            },
        );
        self.owned.insert(id);
        out.push(Decision {
            id: 0,
            action: Action::AddEndpoint {
                id,
                addr: w.addr,
                flags: w.flags,
                ifindex: w.ifindex,
            },
            reason,
        });
    }

    /// Forget endpoint `e` and decide its removal.
    pub(super) fn remove(&mut self, e: &KernelEndpoint, out: &mut Vec<Decision>, reason: String) {
        self.kernel.remove(&e.id);
        self.owned.remove(&e.id);
        out.push(Decision {
            id: 0,
            action: Action::RemoveEndpoint {
                id: e.id,
                addr: e.addr,
            },
            reason,
        });
    }

    pub(super) fn stop(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        // Routes are shared with every other program: always put them back.
        self.reconcile_standby_windows(&[], &mut out);
        if !self.config.endpoints.remove_on_stop {
            return out;
        }
        let ids: Vec<u8> = self.owned.iter().copied().collect();
        for id in ids {
            if let Some(e) = self.kernel.remove(&id) {
                out.push(Decision {
                    id: 0,
                    action: Action::RemoveEndpoint { id, addr: e.addr },
                    reason: "the daemon is stopping (endpoints.remove_on_stop = true)".into(),
                });
            }
        }
        self.owned.clear();
        out
    }
}
