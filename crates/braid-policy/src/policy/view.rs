//! What the policy shows: warnings, counters, paths and its whole view.

use super::*;

impl Policy {
    /// What needs the operator's attention (shown by `braid status`, logged
    /// by the daemon when it appears).
    pub fn warnings(&self) -> Vec<String> {
        let mut warnings = Vec::new();
        let (wanted, extra) = self.wanted();
        if !extra.is_empty() {
            warnings.push(format!(
                "{} usable addresses but the kernel uses at most {KERNEL_MAX_ENDPOINTS} endpoints per connection: {} not used",
                wanted.len() + extra.len(),
                extra.iter().map(|w| format!("{} ({})", w.addr, w.iface)).collect::<Vec<_>>().join(", ")
            ));
        }
        if self.synced && wanted.is_empty() {
            warnings
                .push("no usable address: connections stay on whatever path they start on".into());
        }
        let now = self.clock.now();
        let retry = |at: Time| match now.until(at) {
            0 => "at the next event".to_string(),
            ms => format!("in {ms} ms"),
        };
        if let Some(r) = &self.limits_refused {
            warnings.push(format!(
                "the kernel refused limits subflows {} add_addr_accepted {}: {}; tried again {}, or at once when the endpoints change or the configuration is reloaded",
                r.wanted.subflows, r.wanted.add_addr_accepted, r.error, retry(r.retry_at())
            ));
        }
        if let Some(r) = &self.cflag_refused {
            warnings.push(format!(
                "the kernel refused net.mptcp.allow_join_initial_addr_port = {}: {}; tried again {}, or at once on reload",
                if r.wanted { 0 } else { 1 },
                r.error,
                retry(r.retry_at())
            ));
        }
        for (id, r) in &self.flags_refused {
            let addr = self
                .kernel
                .get(id)
                .map_or_else(|| "?".to_string(), |e| e.addr.to_string());
            warnings.push(format!(
                "the kernel refused flags '{}' on endpoint {addr} id {id}: {}; it stays Braid's and is tried again {}, or at once when its address or link changes",
                flag_names(r.wanted),
                r.error,
                retry(r.retry_at())
            ));
        }
        if let Some(why) = &self.handover_held {
            warnings.push(format!("a switch of traffic is held back: {why}"));
        }
        for ((ifindex, table, _), error) in &self.initcwnd_refused {
            let name = self.links.get(ifindex).map_or("?", |l| l.name.as_str());
            warnings.push(format!(
                "the kernel refused initcwnd on {name}'s default route in table {table}: {error}; a takeover by {name} slow-starts from 10 segments"
            ));
        }
        warnings
    }

    /// The counters `view` shows, without building the rest of it.
    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// How many of the kernel's endpoints are Braid's, and how many not.
    pub fn endpoint_counts(&self) -> (usize, usize) {
        let owned = self
            .kernel
            .keys()
            .filter(|id| self.owned.contains(*id))
            .count();
        (owned, self.kernel.len() - owned)
    }

    /// The endpoints Braid made, as the model holds them (for the state file).
    pub fn owned_endpoints(&self) -> Vec<KernelEndpoint> {
        self.kernel
            .values()
            .filter(|e| self.owned.contains(&e.id))
            .cloned()
            .collect()
    }

    /// Each address family of each interface (loopback aside): its role,
    /// whether it carries traffic, stands by or is unused, and its
    /// addresses. Cheaper than `view`, for metrics.
    pub fn paths(&self) -> Vec<PathView> {
        let backup = Flag::Backup.bit();
        let mut out = Vec::new();
        for l in self.links.values().filter(|l| !l.loopback) {
            let role = self.interface_role(&l.name, Some(l.index));
            for ipv6 in [false, true] {
                let addrs: Vec<&Address> = self
                    .addresses
                    .values()
                    .filter(|a| a.ifindex == l.index && a.ip.is_ipv6() == ipv6)
                    .collect();
                let endpoints: Vec<&KernelEndpoint> = self
                    .kernel
                    .values()
                    .filter(|e| {
                        e.addr.is_ipv6() == ipv6
                            && (e.ifindex == Some(l.index) || addrs.iter().any(|a| a.ip == e.addr))
                    })
                    .collect();
                let state = if endpoints.iter().any(|e| (e.flags & backup) == 0) {
                    PathState::Active
                } else if !endpoints.is_empty() {
                    PathState::Standby
                } else {
                    PathState::Unused
                };
                let usable = addrs.iter().any(|a| self.usability(a).is_ok());
                out.push(PathView {
                    ifindex: l.index,
                    interface: l.name.clone(),
                    ipv6,
                    role,
                    state,
                    in_use: usable || !endpoints.is_empty(),
                    addresses: addrs.iter().map(|a| a.ip).collect(),
                });
            }
        }
        out
    }

    /// The paths (by interface) this policy finds failing for every
    /// connection, with why: the per-connection manager counts them too.
    pub fn path_problems(&self) -> BTreeMap<u32, PathProblem> {
        self.health
            .paths
            .keys()
            .filter_map(|i| Some((*i, self.path_problem(Some(*i))?)))
            .collect()
    }

    /// The usable local addresses, each with its path's role: what the
    /// per-connection path manager opens subflows from.
    pub fn usable_paths(&self) -> Vec<crate::conns::LocalPath> {
        let (wanted, _) = self.wanted();
        wanted
            .iter()
            .filter_map(|w| {
                let ifindex = self.ifindex_of(w.addr)?;
                Some(crate::conns::LocalPath {
                    ifindex,
                    name: w.iface.clone(),
                    addr: w.addr,
                    role: self.interface_role(&w.iface, Some(ifindex)),
                })
            })
            .collect()
    }

    /// Everything `braid status` shows about the daemon's view.
    pub fn view(&self) -> PolicyView {
        let warnings = self.warnings();
        let (_, extra) = self.wanted();
        let interfaces = self
            .links
            .values()
            .map(|l| {
                let addresses: Vec<AddressView> = self
                    .addresses
                    .values()
                    .filter(|a| a.ifindex == l.index)
                    .map(|a| {
                        let u = self.usability(a);
                        let endpoint_id =
                            self.kernel.values().find(|e| e.addr == a.ip).map(|e| e.id);
                        let why = match (&u, extra.iter().any(|w| w.addr == a.ip)) {
                            (Ok(()), true) => "usable, but over the kernel maximum".into(),
                            (Ok(()), false) => "in use".into(),
                            (Err(w), _) if self.kept_standby.contains_key(&a.ip) => format!(
                                "{w}; its endpoint is kept while the path stands by idle (removing it would make the kernels resend all data in flight)"
                            ),
                            (Err(w), _) => w.clone(),
                        };
                        AddressView {
                            ip: a.ip,
                            prefix_len: a.prefix_len,
                            usable: u.is_ok(),
                            why,
                            endpoint_id,
                        }
                    })
                    .collect();
                let default_route = self.default_routes.iter().any(|r| r.ifindex == l.index);
                let kept = addresses
                    .iter()
                    .find(|a| self.kept_standby.contains_key(&a.ip));
                let role = if addresses.iter().any(|a| a.usable) {
                    flag_names(self.flags_for(&l.name))
                } else if let Some(a) = kept {
                    format!("kept: {}", a.why)
                } else {
                    addresses
                        .first()
                        .map(|a| format!("unused: {}", a.why))
                        .unwrap_or_else(|| "unused: no address".into())
                };
                let standby_initcwnd = self
                    .default_routes
                    .iter()
                    .filter(|r| r.ifindex == l.index && self.initcwnd_set.contains_key(&r.key()))
                    .find_map(|r| r.initcwnd);
                InterfaceView {
                    index: l.index,
                    name: l.name.clone(),
                    up: l.up,
                    carrier: l.carrier,
                    default_route,
                    role,
                    addresses,
                    standby_initcwnd,
                }
            })
            .collect();
        PolicyView {
            mode: self.config.mode,
            path_mode: self.config.policy.mode,
            path_state: self.path_state.clone(),
            health: self
                .health
                .paths
                .iter()
                .map(|(i, h)| (link_name(&self.links, *i), h.clone()))
                .collect(),
            interfaces,
            owned_endpoints: self.owned_endpoints(),
            foreign_endpoints: self
                .kernel
                .values()
                .filter(|e| !self.owned.contains(&e.id))
                .cloned()
                .collect(),
            limits: self.limits,
            warnings,
            recent_decisions: self.recent.iter().cloned().collect(),
            counters: self.counters.clone(),
        }
    }
}
