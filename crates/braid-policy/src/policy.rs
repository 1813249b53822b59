//! The path manager: keeps the kernel's endpoints in step with the usable
//! addresses of the machine. Every call takes one event and the time, and
//! returns the actions to carry out, each with the reason it was decided.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use crate::config::{glob, Config, Flag, Mode, PathMode, Role};
use crate::health::{HealthTracker, PathHealth};
use crate::model::*;

/// The kernel uses at most this many endpoints per connection.
pub const KERNEL_MAX_ENDPOINTS: usize = 8;
/// Flags that SET_FLAGS can change on a live endpoint.
const CHANGEABLE: u32 = 4 | 8;
const RECENT_DECISIONS: usize = 64;

#[derive(Debug, Clone, Serialize)]
pub struct LoggedDecision {
    pub at_ms: u64,
    pub action: String,
    pub reason: String,
    /// Filled in when the action failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counters {
    pub link_events: u64,
    pub address_events: u64,
    pub route_events: u64,
    pub resyncs: u64,
    pub reloads: u64,
    pub actions: u64,
    pub failed_actions: u64,
    /// Probes of silent receiving paths, and how many went unanswered.
    pub probes: u64,
    pub probes_unanswered: u64,
    pub mptcp_events: BTreeMap<String, u64>,
}

/// Why an address is, or is not, an endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AddressView {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub usable: bool,
    pub why: String,
    pub endpoint_id: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InterfaceView {
    pub index: u32,
    pub name: String,
    pub up: bool,
    pub carrier: bool,
    pub default_route: bool,
    /// "subflow", "signal backup", ... or why it is not used.
    pub role: String,
    pub addresses: Vec<AddressView>,
    /// The initcwnd Braid set on this interface's default routes (standby).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_initcwnd: Option<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PolicyView {
    pub mode: Mode,
    pub path_mode: PathMode,
    /// Which paths carry traffic now and why (handover, interactive).
    pub path_state: String,
    /// Measured health per interface name.
    pub health: BTreeMap<String, PathHealth>,
    pub interfaces: Vec<InterfaceView>,
    pub owned_endpoints: Vec<KernelEndpoint>,
    pub foreign_endpoints: Vec<KernelEndpoint>,
    pub limits: Option<Limits>,
    pub warnings: Vec<String>,
    pub recent_decisions: Vec<LoggedDecision>,
    pub counters: Counters,
}

pub struct Policy {
    config: Config,
    links: BTreeMap<u32, Link>,
    addresses: BTreeMap<(u32, IpAddr), Address>,
    default_routes: BTreeSet<DefaultRoute>,
    /// The kernel's endpoint table as last seen plus our own changes.
    kernel: BTreeMap<u8, KernelEndpoint>,
    /// Ids of the endpoints Braid made.
    owned: BTreeSet<u8>,
    /// Addresses whose endpoint the kernel refused, with the error; retried
    /// when something about the address or its link changes.
    refused: BTreeMap<IpAddr, String>,
    limits: Option<Limits>,
    cflag_applied: Option<bool>,
    synced: bool,
    stopping: bool,
    counters: Counters,
    recent: VecDeque<LoggedDecision>,
    now_ms: u64,
    health: HealthTracker,
    /// Handover: no primary is healthy, the secondaries carry traffic.
    failed_over: bool,
    /// Interactive: the interface carrying traffic, and since when.
    active_path: Option<u32>,
    /// Whether the active path was chosen with RTT measurements at hand.
    active_informed: bool,
    last_switch_ms: u64,
    path_state: String,
    /// Why a path's backup flag is what it is (for the decision's reason).
    mode_reasons: BTreeMap<IpAddr, String>,
    /// Interfaces seen stalled (to act once per stall).
    stalled_paths: BTreeSet<u32>,
    /// Endpoints to re-add because their path stalled, with the reason.
    reset_pending: BTreeMap<IpAddr, String>,
    /// Probes decided this round.
    probes_pending: Vec<Decision>,
    /// Default routes whose initcwnd Braid set, with the value they had.
    initcwnd_set: BTreeMap<RouteKey, Option<u32>>,
    /// Default routes the kernel would not change, with the error; tried
    /// again when the route changes.
    initcwnd_refused: BTreeMap<RouteKey, String>,
}

type RouteKey = (u32, u32, bool);

/// A default route whose initcwnd Braid changed, and what it was before:
/// kept in the daemon's state file so a restarted daemon (even after a
/// crash) can still put the route back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ChangedRoute {
    pub ifindex: u32,
    pub table: u32,
    pub ipv6: bool,
    pub initcwnd_before: Option<u32>,
}

/// A path the interactive mode can choose.
#[derive(Debug, Clone)]
struct Candidate {
    ifindex: u32,
    srtt: Option<f64>,
    problem: Option<String>,
    healthy_since: Option<u64>,
}

/// A desired endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Want {
    addr: IpAddr,
    flags: u32,
    ifindex: Option<u32>,
    iface: String,
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_link_local(),
        IpAddr::V6(a) => (a.segments()[0] & 0xffc0) == 0xfe80,
    }
}

fn is_ula(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if (a.segments()[0] & 0xfe00) == 0xfc00)
}

fn flags_of(list: &[Flag]) -> u32 {
    list.iter().map(|f| f.bit()).fold(0, |a, b| a | b)
}

impl Policy {
    /// `previously_owned`: endpoint ids a previous run of the daemon made
    /// (from its state file), adopted if they are still in the kernel.
    pub fn new(config: Config, previously_owned: Vec<u8>) -> Policy {
        Policy {
            config,
            links: BTreeMap::new(),
            addresses: BTreeMap::new(),
            default_routes: BTreeSet::new(),
            kernel: BTreeMap::new(),
            owned: previously_owned.into_iter().collect(),
            refused: BTreeMap::new(),
            limits: None,
            cflag_applied: None,
            synced: false,
            stopping: false,
            counters: Counters::default(),
            recent: VecDeque::new(),
            now_ms: 0,
            health: HealthTracker::default(),
            failed_over: false,
            active_path: None,
            active_informed: false,
            last_switch_ms: 0,
            path_state: String::new(),
            mode_reasons: BTreeMap::new(),
            stalled_paths: BTreeSet::new(),
            reset_pending: BTreeMap::new(),
            probes_pending: Vec::new(),
            initcwnd_set: BTreeMap::new(),
            initcwnd_refused: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Ids of the endpoints Braid owns now (for the state file).
    /// How soon the next health round should come, if sooner than the
    /// regular interval: when a path waiting for an ACK would reach its
    /// stall threshold, so a stall is seen when it happens rather than up
    /// to a poll interval later.
    pub fn health_check_due_in_ms(&self) -> Option<u64> {
        if self.config.policy.mode == PathMode::Aggregate {
            return None;
        }
        let p = &self.config.policy;
        self.health
            .until_next_stall_ms(p.stall_ms, p.probe_silent_paths)
    }

    /// Routes a previous run changed (from its state file); taken as ours
    /// to put back, if they still exist.
    pub fn adopt_changed_routes(&mut self, routes: Vec<ChangedRoute>) {
        for r in routes {
            self.initcwnd_set
                .insert((r.ifindex, r.table, r.ipv6), r.initcwnd_before);
        }
    }

    pub fn changed_routes(&self) -> Vec<ChangedRoute> {
        self.initcwnd_set
            .iter()
            .map(|(&(ifindex, table, ipv6), before)| ChangedRoute {
                ifindex,
                table,
                ipv6,
                initcwnd_before: *before,
            })
            .collect()
    }

    pub fn owned_ids(&self) -> Vec<u8> {
        self.owned.iter().copied().collect()
    }

    pub fn handle(&mut self, event: Event, now_ms: u64) -> Vec<Decision> {
        self.now_ms = now_ms;
        match event {
            Event::Health(mut samples) => {
                // Attribute each subflow to the interface holding its address.
                samples.retain_mut(|s| match self.ifindex_of(s.local.ip()) {
                    Some(i) => {
                        s.ifindex = i;
                        true
                    }
                    None => false,
                });
                let p = &self.config.policy;
                let (stall, loss, hold) = (p.stall_ms, p.loss_threshold, p.hold_ms);
                // An idle path's loss fades slowly: it is tried again only
                // after several hold times without evidence.
                self.health.update(now_ms, &samples, stall, loss, 4 * hold);
                if self.config.policy.mode == PathMode::Aggregate {
                    return Vec::new();
                }
                self.note_stalls();
                self.probes_due();
            }
            Event::ProbeResult {
                ifindex,
                remote,
                rtt_ms,
            } => {
                self.counters.probes += 1;
                let Some(h) = self.health.paths.get_mut(&ifindex) else {
                    return Vec::new();
                };
                // Answered, or data came back meanwhile (which ends the
                // silence the probe was for): the path is there.
                if rtt_ms.is_some() || !h.probed || h.rx_silent_ms < h.probe_after_ms() {
                    return Vec::new();
                }
                self.counters.probes_unanswered += 1;
                let why = format!(
                    "unreachable: data stopped {} ms ago and {remote} did not answer a probe within {} ms",
                    h.rx_silent_ms,
                    h.probe_timeout_ms()
                );
                h.mark_unreachable(why);
                self.note_stalls();
            }
            Event::Snapshot {
                links,
                addresses,
                default_routes,
                endpoints,
                limits,
            } => {
                if self.synced {
                    self.counters.resyncs += 1;
                }
                self.links = links.into_iter().map(|l| (l.index, l)).collect();
                self.addresses = addresses
                    .into_iter()
                    .map(|a| ((a.ifindex, a.ip), a))
                    .collect();
                self.default_routes = default_routes.into_iter().collect();
                self.kernel = endpoints.into_iter().map(|e| (e.id, e)).collect();
                // Owned ids that are gone, or now hold another address, are forgotten.
                let kernel = &self.kernel;
                self.owned.retain(|id| kernel.contains_key(id));
                self.limits = Some(limits);
                self.refused.clear();
                self.synced = true;
            }
            Event::LinkChanged(link) => {
                self.counters.link_events += 1;
                self.forget_refusals_on(link.index);
                if !(link.up && link.carrier) {
                    // Its measurements are about a path that is gone.
                    self.health.paths.remove(&link.index);
                }
                self.links.insert(link.index, link);
            }
            Event::LinkRemoved { index } => {
                self.counters.link_events += 1;
                self.forget_refusals_on(index);
                self.links.remove(&index);
                self.addresses.retain(|(i, _), _| *i != index);
                self.default_routes.retain(|r| r.ifindex != index);
            }
            Event::AddressAdded(a) => {
                self.counters.address_events += 1;
                self.refused.remove(&a.ip);
                self.addresses.insert((a.ifindex, a.ip), a);
            }
            Event::AddressRemoved(a) => {
                self.counters.address_events += 1;
                self.refused.remove(&a.ip);
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
                self.refused.clear();
            }
            Event::ActionFailed { action, error } => {
                self.counters.failed_actions += 1;
                self.undo(&action, &error);
                if let Some(d) = self
                    .recent
                    .iter_mut()
                    .rev()
                    .find(|d| d.action == action.to_string())
                {
                    d.error = Some(error);
                }
                return Vec::new();
            }
            Event::Mptcp(kind) => {
                let name = serde_json_name(kind);
                *self.counters.mptcp_events.entry(name).or_default() += 1;
                return Vec::new();
            }
            Event::Stopping => {
                self.stopping = true;
            }
        }
        if !self.synced {
            return Vec::new();
        }
        let mut decisions = if self.stopping {
            self.stop()
        } else {
            self.reconcile()
        };
        decisions.append(&mut self.probes_pending);
        for d in &decisions {
            self.counters.actions += 1;
            if self.recent.len() == RECENT_DECISIONS {
                self.recent.pop_front();
            }
            self.recent.push_back(LoggedDecision {
                at_ms: now_ms,
                action: d.action.to_string(),
                reason: d.reason.clone(),
                error: None,
            });
        }
        decisions
    }

    fn forget_refusals_on(&mut self, ifindex: u32) {
        let ips: Vec<IpAddr> = self
            .addresses
            .keys()
            .filter(|(i, _)| *i == ifindex)
            .map(|(_, ip)| *ip)
            .collect();
        for ip in ips {
            self.refused.remove(&ip);
        }
    }

    /// Take back the model change of an action the kernel refused.
    fn undo(&mut self, action: &Action, error: &str) {
        match action {
            Action::AddEndpoint { id, addr, .. } => {
                self.kernel.remove(id);
                self.owned.remove(id);
                self.refused.insert(*addr, error.to_string());
            }
            // A failed removal: the endpoint is most likely gone already.
            Action::RemoveEndpoint { .. } => {}
            Action::SetEndpointFlags { id, .. } => {
                // Unknown state now: forget it; the next snapshot tells.
                self.kernel.remove(id);
                self.owned.remove(id);
            }
            Action::SetLimits { .. } => self.limits = None,
            Action::SetSysctl { .. } => self.cflag_applied = None,
            // No answer either way: the path's silence stays unexplained
            // (and the kernel's own timeouts remain).
            Action::ProbePath { .. } => {}
            Action::SetRouteInitcwnd {
                ifindex,
                table,
                ipv6,
                ..
            } => {
                let key = (*ifindex, *table, *ipv6);
                self.initcwnd_refused.insert(key, error.to_string());
            }
        }
    }

    /// Why `a` can or cannot carry an endpoint.
    fn usability(&self, a: &Address) -> Result<(), String> {
        let f = &self.config.filter;
        let Some(link) = self.links.get(&a.ifindex) else {
            return Err(format!("interface #{} is unknown", a.ifindex));
        };
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
        if !link.up {
            return Err(format!("{name} is down"));
        }
        if !link.carrier {
            return Err(format!("{name} has no carrier"));
        }
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

    fn flags_for(&self, iface: &str) -> u32 {
        match self.config.interface(iface).and_then(|i| i.flags.as_ref()) {
            Some(list) => flags_of(list),
            None => match self.config.mode {
                Mode::Client => Flag::Subflow.bit(),
                Mode::Server => Flag::Signal.bit(),
            },
        }
    }

    /// The endpoints there should be, best first, at most the kernel maximum.
    fn wanted(&self) -> (Vec<Want>, Vec<Want>) {
        let mut all: Vec<Want> = self
            .addresses
            .values()
            .filter(|a| self.usability(a).is_ok())
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

    fn manages(&self, id: u8) -> bool {
        self.config.endpoints.own_all || self.owned.contains(&id)
    }

    fn free_id(&self) -> Option<u8> {
        (1..=255u8).find(|id| !self.kernel.contains_key(id))
    }

    fn reconcile(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
        let (mut wanted, _beyond_kernel_max) = self.wanted();
        self.apply_path_mode(&mut wanted);
        let wanted_addrs: BTreeSet<IpAddr> = wanted.iter().map(|w| w.addr).collect();

        // 1. Endpoints that should go.
        let stale: Vec<KernelEndpoint> = self
            .kernel
            .values()
            .filter(|e| self.manages(e.id) && !wanted_addrs.contains(&e.addr))
            .cloned()
            .collect();
        for e in stale {
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
            self.remove(&e, &mut out, reason);
        }

        // 2. Endpoints that should be there, or be different.
        for w in &wanted {
            let existing = self.kernel.values().find(|e| e.addr == w.addr).cloned();
            match existing {
                Some(e) if !self.manages(e.id) => {} // someone else's endpoint covers it
                Some(e) if self.reset_pending.contains_key(&w.addr) => {
                    // Its path stalled: re-adding closes the stalled subflows.
                    let reason = self.reset_pending.remove(&w.addr).unwrap_or_default();
                    self.remove(&e, &mut out, reason.clone());
                    self.add(w, &mut out, reason);
                }
                Some(e) if e.flags == w.flags && e.ifindex == w.ifindex => {}
                Some(e)
                    if (e.flags & !CHANGEABLE) == (w.flags & !CHANGEABLE)
                        && e.ifindex == w.ifindex =>
                {
                    self.kernel.insert(
                        e.id,
                        KernelEndpoint {
                            flags: w.flags,
                            ..e.clone()
                        },
                    );
                    out.push(Decision {
                        action: Action::SetEndpointFlags {
                            id: e.id,
                            addr: e.addr,
                            flags: w.flags,
                        },
                        reason: self.mode_reasons.get(&w.addr).cloned().unwrap_or_else(|| {
                            format!(
                                "the configuration for {} asks for '{}'",
                                w.iface,
                                flag_names(w.flags)
                            )
                        }),
                    });
                }
                Some(e) => {
                    // Signal/subflow or the bound device changed: only re-adding does that.
                    let reason = format!(
                        "{} changes to '{}' on {}: it must be re-added",
                        e.addr,
                        flag_names(w.flags),
                        w.iface
                    );
                    self.remove(&e, &mut out, reason);
                    self.add(w, &mut out, "its settings changed".into());
                }
                None => {
                    let reason = format!(
                        "{} on {} is usable ({} is up with carrier{})",
                        w.addr,
                        w.iface,
                        w.iface,
                        if self.config.filter.require_default_route {
                            " and a default route"
                        } else {
                            ""
                        }
                    );
                    self.add(w, &mut out, reason);
                }
            }
        }

        // 3. Limits matched to the endpoints. The kernel checks them when it
        // decides to open a subflow, so a raise goes before the new endpoints
        // and a cut after the removals.
        if self.config.limits.manage {
            let n = wanted.len().min(KERNEL_MAX_ENDPOINTS) as u32;
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
            if self.limits != Some(want) {
                let reason = match self.config.mode {
                    Mode::Client => format!("{n} usable endpoint(s): allow as many extra subflows and accepted announcements"),
                    Mode::Server => "a server accepts up to the kernel maximum of joins and ignores announcements".into(),
                };
                let raise = self.limits.is_none_or(|l| {
                    want.subflows > l.subflows || want.add_addr_accepted > l.add_addr_accepted
                });
                self.limits = Some(want);
                let d = Decision {
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
        }

        // 4. The server's C flag.
        let deny = self.config.server.deny_join_initial_address;
        if self.cflag_applied != Some(deny) && (deny || self.cflag_applied.is_some()) {
            self.cflag_applied = Some(deny);
            out.push(Decision {
                action: Action::SetSysctl {
                    name: "net.mptcp.allow_join_initial_addr_port".into(),
                    value: if deny { "0" } else { "1" }.into(),
                },
                reason: if deny {
                    "server.deny_join_initial_address: clients must join other addresses (anycast or load balancer)".into()
                } else {
                    "server.deny_join_initial_address was turned off".into()
                },
            });
        }
        self.reset_pending.clear();
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
        out
    }

    /// A path that has just stalled gets its endpoints re-added: closing
    /// its subflows makes the kernel resend their unacknowledged data at
    /// once on the path that takes over, instead of waiting for timeouts on
    /// the dead one. Reopened subflows tell when the path works again.
    /// A path that was receiving and went silent is probed once: a
    /// receiver has nothing outstanding, so silence alone cannot tell a
    /// dead path from a sender with nothing to send.
    fn probes_due(&mut self) {
        if !self.config.policy.probe_silent_paths {
            return;
        }
        let names: BTreeMap<u32, String> = self
            .links
            .iter()
            .map(|(i, l)| (*i, l.name.clone()))
            .collect();
        for (ifindex, h) in self.health.paths.iter_mut() {
            if !h.wants_probe() {
                continue;
            }
            let Some((local, remote)) = h.probe_pair else {
                continue;
            };
            h.probed = true;
            let name = names
                .get(ifindex)
                .cloned()
                .unwrap_or_else(|| format!("#{ifindex}"));
            self.probes_pending.push(Decision {
                action: Action::ProbePath {
                    ifindex: *ifindex,
                    local,
                    remote,
                    timeout_ms: h.probe_timeout_ms(),
                },
                reason: format!(
                    "{name} was receiving and no data has come for {} ms (2 RTTs): is the path still there?",
                    h.rx_silent_ms
                ),
            });
        }
    }

    fn note_stalls(&mut self) {
        let stall_ms = self.config.policy.stall_ms;
        let now_stalled: BTreeSet<u32> = self
            .health
            .paths
            .iter()
            .filter(|(_, h)| h.is_stalled(stall_ms) || h.unreachable.is_some())
            .map(|(i, _)| *i)
            .collect();
        for i in now_stalled.difference(&self.stalled_paths.clone()) {
            let name = self
                .links
                .get(i)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("#{i}"));
            let what = match self.health.paths.get(i) {
                Some(h) => match &h.unreachable {
                    Some(why) => format!("{name} is {why}"),
                    None => format!("{name} stalled ({})", h.describe()),
                },
                None => format!("{name} stalled"),
            };
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

    /// The interfaces that stand by and may have to take over at once.
    fn standby_interfaces(&self, wanted: &[Want]) -> BTreeSet<u32> {
        let on = |w: &&Want| match self.config.policy.mode {
            PathMode::Aggregate => false,
            PathMode::Interactive => true,
            PathMode::Handover => self.role_of(w) == Role::Secondary,
        };
        wanted
            .iter()
            .filter(on)
            .filter_map(|w| self.ifindex_of(w.addr))
            .collect()
    }

    /// Give the default routes of standby paths a larger initial window
    /// (`policy.standby_initcwnd`) and put back what other routes had.
    /// `wanted` empty (stopping): every route Braid changed is restored.
    fn reconcile_standby_windows(&mut self, wanted: &[Want], out: &mut Vec<Decision>) {
        let window = self.config.policy.standby_initcwnd;
        let standby = if window == 0 {
            BTreeSet::new()
        } else {
            self.standby_interfaces(wanted)
        };
        let routes: Vec<DefaultRoute> = self.default_routes.iter().copied().collect();
        for r in routes {
            let key = r.key();
            if self.initcwnd_refused.contains_key(&key) {
                continue;
            }
            let name = self
                .links
                .get(&r.ifindex)
                .map(|l| l.name.clone())
                .unwrap_or_else(|| format!("#{}", r.ifindex));
            let (target, reason) = if standby.contains(&r.ifindex) {
                self.initcwnd_set.entry(key).or_insert(r.initcwnd);
                (
                    Some(window),
                    format!(
                        "{name} stands by ({} mode): when it takes over it resends the failed path's data in flight, so TCP starts there with {window} segments instead of 10 (policy.standby_initcwnd)",
                        self.config.policy.mode.name()
                    ),
                )
            } else if let Some(before) = self.initcwnd_set.remove(&key) {
                let why = if self.stopping {
                    "the daemon is stopping"
                } else {
                    "it no longer stands by"
                };
                (before, format!("{why}: {name}'s initcwnd is put back"))
            } else {
                continue;
            };
            if r.initcwnd == target {
                continue;
            }
            self.default_routes.retain(|x| x.key() != key);
            self.default_routes.insert(DefaultRoute {
                initcwnd: target,
                ..r
            });
            out.push(Decision {
                action: Action::SetRouteInitcwnd {
                    ifindex: r.ifindex,
                    table: r.table,
                    ipv6: r.ipv6,
                    initcwnd: target,
                },
                reason,
            });
        }
        // Routes that are gone need nothing put back.
        let present: BTreeSet<RouteKey> = self.default_routes.iter().map(|r| r.key()).collect();
        self.initcwnd_set.retain(|k, _| present.contains(k));
    }

    fn role_of(&self, w: &Want) -> Role {
        if let Some(r) = self.config.interface(&w.iface).and_then(|i| i.role) {
            return r;
        }
        let ifindex = self
            .addresses
            .values()
            .find(|a| a.ip == w.addr)
            .map(|a| a.ifindex);
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

    fn ifindex_of(&self, ip: IpAddr) -> Option<u32> {
        self.addresses
            .values()
            .find(|a| a.ip == ip)
            .map(|a| a.ifindex)
    }

    fn path_problem(&self, ifindex: Option<u32>) -> Option<String> {
        let p = &self.config.policy;
        ifindex
            .and_then(|i| self.health.paths.get(&i))
            .and_then(|h| h.problem(p.stall_ms, p.loss_threshold))
    }

    /// Set the backup bit of each wanted endpoint for handover or interactive.
    fn apply_path_mode(&mut self, wanted: &mut [Want]) {
        self.mode_reasons.clear();
        let backup = Flag::Backup.bit();
        let pc = self.config.policy.clone();
        let now = self.now_ms;
        match pc.mode {
            PathMode::Aggregate => {
                self.path_state = "aggregate: every usable path carries traffic".into();
            }
            PathMode::Handover => {
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
                let held = healthy.iter().any(|i| {
                    let h = self
                        .ifindex_of(wanted[*i].addr)
                        .and_then(|x| self.health.paths.get(&x));
                    h.and_then(|h| h.healthy_since_ms)
                        .is_some_and(|t| now.saturating_sub(t) >= pc.hold_ms)
                });
                let why_down = if primaries.is_empty() {
                    "no primary path is usable".to_string()
                } else {
                    primaries
                        .iter()
                        .map(|i| {
                            let w = &wanted[*i];
                            format!(
                                "{} {}",
                                w.iface,
                                self.path_problem(self.ifindex_of(w.addr))
                                    .unwrap_or_else(|| "not healthy long enough".into())
                            )
                        })
                        .collect::<Vec<_>>()
                        .join("; ")
                };
                let failed = if self.failed_over {
                    !held
                } else {
                    healthy.is_empty()
                };
                let reason = if failed {
                    format!("handover: {why_down}; the secondary takes over")
                } else if self.failed_over {
                    format!("handover: the primary has been healthy for {} ms; it takes traffic back, the secondary stands by", pc.hold_ms)
                } else {
                    "handover: the primary is healthy; it carries traffic, the secondary stands by"
                        .to_string()
                };
                self.failed_over = failed;
                self.path_state = reason.clone();
                for (i, w) in wanted.iter_mut().enumerate() {
                    let standby = (roles[i] == Role::Primary) == failed;
                    w.flags = if standby {
                        w.flags | backup
                    } else {
                        w.flags & !backup
                    };
                    self.mode_reasons.insert(w.addr, reason.clone());
                }
            }
            PathMode::Interactive => {
                let mut paths: Vec<Candidate> = Vec::new();
                for w in wanted.iter() {
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
                let healthy: Vec<&Candidate> =
                    paths.iter().filter(|p| p.problem.is_none()).collect();
                if healthy.is_empty() {
                    self.active_path = None;
                    self.path_state =
                        "interactive: no healthy path; every path carries traffic".into();
                    return;
                }
                let rtt = |p: &Candidate| p.srtt.unwrap_or(f64::MAX);
                let best = (*healthy
                    .iter()
                    .min_by(|a, b| rtt(a).partial_cmp(&rtt(b)).unwrap())
                    .unwrap())
                .clone();
                let name = |i: u32| {
                    self.links
                        .get(&i)
                        .map(|l| l.name.clone())
                        .unwrap_or_else(|| format!("#{i}"))
                };
                let current = self
                    .active_path
                    .and_then(|a| paths.iter().find(|p| p.ifindex == a).cloned());
                let informed = self.active_informed;
                let (active, reason) = match current {
                    Some(cur) if !informed && cur.problem.is_none() && best.srtt.is_some() => (
                        best.ifindex,
                        format!(
                            "interactive: {} has the lowest RTT ({})",
                            name(best.ifindex),
                            fmt_rtt(best.srtt)
                        ),
                    ),
                    None => (
                        best.ifindex,
                        format!(
                            "interactive: {} has the lowest RTT ({})",
                            name(best.ifindex),
                            fmt_rtt(best.srtt)
                        ),
                    ),
                    Some(cur) if cur.problem.is_some() => (
                        best.ifindex,
                        format!(
                            "interactive: {} is {}; switching to {} ({})",
                            name(cur.ifindex),
                            cur.problem.clone().unwrap(),
                            name(best.ifindex),
                            fmt_rtt(best.srtt)
                        ),
                    ),
                    Some(cur) => {
                        let better = best.ifindex != cur.ifindex
                            && rtt(&cur) > rtt(&best) * pc.rtt_ratio + pc.rtt_margin_ms as f64
                            && best
                                .healthy_since
                                .is_some_and(|t| now.saturating_sub(t) >= pc.hold_ms)
                            && now.saturating_sub(self.last_switch_ms) >= pc.hold_ms;
                        if better {
                            (
                                best.ifindex,
                                format!(
                                    "interactive: {} RTT {} is over {}x{} + {} ms of {}; switching",
                                    name(cur.ifindex),
                                    fmt_rtt(cur.srtt),
                                    pc.rtt_ratio,
                                    fmt_rtt(best.srtt),
                                    pc.rtt_margin_ms,
                                    name(best.ifindex)
                                ),
                            )
                        } else {
                            (cur.ifindex, self.path_state.clone())
                        }
                    }
                };
                if self.active_path != Some(active) {
                    self.last_switch_ms = now;
                }
                self.active_informed = paths
                    .iter()
                    .find(|p| p.ifindex == active)
                    .is_some_and(|p| p.srtt.is_some());
                self.active_path = Some(active);
                self.path_state = reason.clone();
                for w in wanted.iter_mut() {
                    let on = self.ifindex_of(w.addr) == Some(active);
                    w.flags = if on {
                        w.flags & !backup
                    } else {
                        w.flags | backup
                    };
                    self.mode_reasons.insert(w.addr, reason.clone());
                }
            }
        }
    }

    fn add(&mut self, w: &Want, out: &mut Vec<Decision>, reason: String) {
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
    fn remove(&mut self, e: &KernelEndpoint, out: &mut Vec<Decision>, reason: String) {
        self.kernel.remove(&e.id);
        self.owned.remove(&e.id);
        out.push(Decision {
            action: Action::RemoveEndpoint {
                id: e.id,
                addr: e.addr,
            },
            reason,
        });
    }

    fn stop(&mut self) -> Vec<Decision> {
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
                    action: Action::RemoveEndpoint { id, addr: e.addr },
                    reason: "the daemon is stopping (endpoints.remove_on_stop = true)".into(),
                });
            }
        }
        self.owned.clear();
        out
    }

    /// Everything `braid status` shows about the daemon's view.
    pub fn view(&self) -> PolicyView {
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
        for ((ifindex, table, _), error) in &self.initcwnd_refused {
            let name = self.links.get(ifindex).map_or("?", |l| l.name.as_str());
            warnings.push(format!(
                "the kernel refused initcwnd on {name}'s default route in table {table}: {error}; a takeover by {name} slow-starts from 10 segments"
            ));
        }
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
                let role = if addresses.iter().any(|a| a.usable) {
                    flag_names(self.flags_for(&l.name))
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
                .map(|(i, h)| {
                    (
                        self.links
                            .get(i)
                            .map(|l| l.name.clone())
                            .unwrap_or_else(|| format!("#{i}")),
                        h.clone(),
                    )
                })
                .collect(),
            interfaces,
            owned_endpoints: self
                .kernel
                .values()
                .filter(|e| self.owned.contains(&e.id))
                .cloned()
                .collect(),
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

fn fmt_rtt(ms: Option<f64>) -> String {
    ms.map(|m| format!("{m:.1} ms"))
        .unwrap_or_else(|| "rtt unknown".into())
}

fn serde_json_name(kind: MptcpEventKind) -> String {
    format!("{kind:?}")
        .chars()
        .enumerate()
        .flat_map(|(i, c)| {
            let mut s = String::new();
            if c.is_uppercase() && i > 0 {
                s.push('_');
            }
            s.push(c.to_ascii_lowercase());
            s.chars().collect::<Vec<_>>()
        })
        .collect()
}
