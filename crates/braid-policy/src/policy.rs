//! The path manager: keeps the kernel's endpoints in step with the usable
//! addresses of the machine. Every call takes one event and the time, and
//! returns the actions to carry out, each with the reason it was decided.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::Serialize;

use crate::config::{glob, Config, Flag, Mode, PathMode, Role};
use crate::health::{HealthTracker, PathHealth, MIN_WITNESSES, PROBE_AFTER_MIN_MS};
use crate::model::*;
use crate::time::{backoff_ms, Clock, Time};

/// The kernel uses at most this many endpoints per connection.
pub const KERNEL_MAX_ENDPOINTS: usize = 8;
/// Flags that SET_FLAGS can change on a live endpoint.
const CHANGEABLE: u32 = 4 | 8;
const RECENT_DECISIONS: usize = 64;
/// A limits, sysctl or endpoint-flags write the kernel refused is tried
/// again after this long (doubled for each further refusal, at most
/// `RETRY_MAX_MS`), or at once when what it is about changes.
const RETRY_FIRST_MS: u64 = 2000;
const RETRY_MAX_MS: u64 = 300_000;
/// Carrier losses are remembered this long: each one within it doubles the
/// time a returning carrier must hold (`policy.carrier_debounce_ms`) ...
const FLAP_WINDOW_MS: u64 = 60_000;
/// ... up to this (or the debounce itself, if longer).
const MAX_SETTLE_MS: u64 = 30_000;
/// A path with an endpoint but no subflow while another path has some is
/// re-added after this long (then after a doubling back-off, see
/// `note_missing_subflows`).
const MISSING_SUBFLOW_MS: u64 = 1000;
const REJOIN_FIRST_MS: u64 = 2000;
const REJOIN_MAX_MS: u64 = 300_000;

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
    /// Switches of traffic made on measurements, and how many times one
    /// was held back by `policy.max_handovers`.
    pub handovers: u64,
    pub handovers_held_back: u64,
    pub mptcp_events: BTreeMap<String, u64>,
    /// Changes of the paths that carry traffic (handover and interactive),
    /// by cause: "unreachable", "stalled", "lossy" (measurements), "rtt"
    /// (interactive: a faster path), "path_gone" (carrier, address or
    /// route lost), "recovered" (handover: the primary takes traffic back).
    pub switches: BTreeMap<String, u64>,
}

/// Whether one address family of an interface carries traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathState {
    /// An endpoint without the backup flag: the kernel sends data on it.
    Active,
    /// Endpoints, all with the backup flag: subflows stand by.
    Standby,
    /// No endpoint.
    Unused,
}

impl PathState {
    pub const ALL: [PathState; 3] = [PathState::Active, PathState::Standby, PathState::Unused];

    pub fn name(self) -> &'static str {
        match self {
            PathState::Active => "active",
            PathState::Standby => "standby",
            PathState::Unused => "unused",
        }
    }
}

/// One address family of one interface (a "path"), for metrics.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathView {
    pub ifindex: u32,
    pub interface: String,
    pub ipv6: bool,
    /// Its role for the handover mode (configured, or primary when it
    /// holds a main-table default route).
    pub role: Role,
    pub state: PathState,
    /// An address of this family on it is usable, or has an endpoint.
    pub in_use: bool,
    /// Its addresses of this family.
    pub addresses: Vec<IpAddr>,
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
    /// Flag changes the kernel refused, by endpoint id. The endpoint stays
    /// Braid's; the change is tried again when its address or link changes,
    /// the wanted flags change, on reload or resync, or after a back-off.
    flags_refused: BTreeMap<u8, Refusal<u32>>,
    /// The flags an endpoint had before the last change decided for it
    /// (put back in the model if the change is refused).
    flags_before: BTreeMap<u8, u32>,
    limits: Option<Limits>,
    limits_refused: Option<Refusal<Limits>>,
    cflag_applied: Option<bool>,
    cflag_refused: Option<Refusal<bool>>,
    synced: bool,
    stopping: bool,
    counters: Counters,
    recent: VecDeque<LoggedDecision>,
    clock: Clock,
    /// Carrier history per interface, for the debounce of returning carrier.
    carrier: BTreeMap<u32, CarrierState>,
    /// Since when each wanted address has been usable: a primary nobody's
    /// connection measures takes traffic back after hold_ms of that.
    usable_since: BTreeMap<IpAddr, Time>,
    health: HealthTracker,
    /// Handover: no primary is healthy, the secondaries carry traffic.
    failed_over: bool,
    /// Interactive: the interface carrying traffic, and since when.
    active_path: Option<u32>,
    /// Whether the active path was chosen with RTT measurements at hand.
    active_informed: bool,
    last_switch: Time,
    /// When switches of traffic were made on measurements (within
    /// `policy.handover_window_ms`), for `policy.max_handovers`.
    handovers: VecDeque<Time>,
    /// Why a switch on measurements is being held back, if one is.
    handover_held: Option<String>,
    /// Interactive: why the active path was chosen.
    active_reason: String,
    path_state: String,
    /// Why a path's backup flag is what it is (for the decision's reason).
    mode_reasons: BTreeMap<IpAddr, String>,
    /// Interfaces seen stalled (to act once per stall).
    stalled_paths: BTreeSet<u32>,
    /// A stalled path whose subflows were not reopened, and why (shown in
    /// the path state while the stall lasts).
    reset_skipped: Option<(u32, String)>,
    /// Paths with a subflow endpoint on which no connection has a subflow
    /// while another path's connections have: since when.
    missing_subflows: BTreeMap<u32, Time>,
    /// When a path was last re-added for a missing subflow, and how many
    /// times in a row.
    rejoined: BTreeMap<u32, (Time, u32)>,
    /// Endpoints to re-add this round so the kernel opens missing subflows.
    rejoin_pending: BTreeMap<IpAddr, String>,
    /// Endpoints to re-add because their path stalled, with the reason.
    reset_pending: BTreeMap<IpAddr, String>,
    /// Probes decided this round.
    probes_pending: Vec<Decision>,
    /// Whether the shell can send probes to IPv4 and IPv6 hosts (see
    /// `set_probing`).
    can_probe_v4: bool,
    can_probe_v6: bool,
    /// Default routes whose initcwnd Braid set, with the value they had.
    initcwnd_set: BTreeMap<RouteKey, Option<u32>>,
    /// Default routes the kernel would not change, with the error; tried
    /// again when the route changes.
    initcwnd_refused: BTreeMap<RouteKey, String>,
}

type RouteKey = (u32, u32, bool);

/// A write the kernel refused, kept so that it is not tried again on every
/// event: only when what is wanted changes, when something it depends on
/// changes (the caller forgets the refusal then), or after a back-off.
#[derive(Debug, Clone)]
struct Refusal<T> {
    wanted: T,
    error: String,
    at: Time,
    failures: u32,
}

impl<T: PartialEq> Refusal<T> {
    fn after(previous: Option<&Refusal<T>>, wanted: T, error: &str, at: Time) -> Refusal<T> {
        let failures = previous
            .filter(|p| p.wanted == wanted)
            .map_or(1, |p| p.failures.saturating_add(1));
        Refusal {
            wanted,
            error: error.to_string(),
            at,
            failures,
        }
    }

    fn retry_at(&self) -> Time {
        self.at
            .plus(backoff_ms(RETRY_FIRST_MS, RETRY_MAX_MS, self.failures))
    }
}

/// Whether to write `wanted` now, given the last refusal.
enum Attempt {
    /// Never refused, or something changed since: write it.
    Now,
    /// Refused before, and its back-off is over: write it, saying so.
    Retry(String),
    /// Refused before, and its back-off is not over.
    Wait,
}

fn attempt<T: PartialEq>(refusal: Option<&Refusal<T>>, wanted: &T, now: Time) -> Attempt {
    match refusal {
        Some(r) if r.wanted == *wanted => {
            if now >= r.retry_at() {
                Attempt::Retry(format!(
                    " (tried again after a {} ms back-off: the kernel refused it {} time(s), last with: {})",
                    r.at.until(r.retry_at()),
                    r.failures,
                    r.error
                ))
            } else {
                Attempt::Wait
            }
        }
        _ => Attempt::Now,
    }
}

/// What the policy remembers of an interface's carrier.
#[derive(Debug, Clone, Default)]
struct CarrierState {
    /// Up with carrier as last seen.
    ok: bool,
    /// When its carrier came back, while it has not held long enough to be
    /// used again; None once settled (or if it had carrier when first seen).
    returned: Option<Time>,
    /// When it lost carrier (or went down), within `FLAP_WINDOW_MS`.
    losses: VecDeque<Time>,
}

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
            flags_refused: BTreeMap::new(),
            flags_before: BTreeMap::new(),
            limits: None,
            limits_refused: None,
            cflag_applied: None,
            cflag_refused: None,
            synced: false,
            stopping: false,
            counters: Counters::default(),
            recent: VecDeque::new(),
            clock: Clock::default(),
            carrier: BTreeMap::new(),
            usable_since: BTreeMap::new(),
            health: HealthTracker::default(),
            failed_over: false,
            active_path: None,
            active_informed: false,
            last_switch: Time::ZERO,
            handovers: VecDeque::new(),
            handover_held: None,
            active_reason: String::new(),
            path_state: String::new(),
            mode_reasons: BTreeMap::new(),
            stalled_paths: BTreeSet::new(),
            reset_skipped: None,
            missing_subflows: BTreeMap::new(),
            rejoined: BTreeMap::new(),
            rejoin_pending: BTreeMap::new(),
            reset_pending: BTreeMap::new(),
            probes_pending: Vec::new(),
            can_probe_v4: true,
            can_probe_v6: true,
            initcwnd_set: BTreeMap::new(),
            initcwnd_refused: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Whether the shell can probe paths towards IPv4 and IPv6 hosts (both
    /// by default). `policy.probe_silent_paths` still decides whether paths
    /// are probed at all; this only says what can be sent. To be called at
    /// start, on reload and whenever the shell finds out again.
    pub fn set_probing(&mut self, v4: bool, v6: bool) {
        self.can_probe_v4 = v4;
        self.can_probe_v6 = v6;
    }

    /// Whether paths towards IPv4 and IPv6 hosts are probed.
    fn probing(&self) -> (bool, bool) {
        let on = self.config.policy.probe_silent_paths;
        (on && self.can_probe_v4, on && self.can_probe_v6)
    }

    /// How soon the next health round should come, if sooner than the
    /// regular interval: when a path waiting for an ACK would reach its
    /// stall threshold, so a stall is seen when it happens rather than up
    /// to a poll interval later.
    pub fn health_check_due_in_ms(&self) -> Option<u64> {
        if self.config.policy.mode == PathMode::Aggregate {
            return None;
        }
        let (v4, v6) = self.probing();
        self.health
            .until_next_stall_ms(self.config.policy.stall_ms, v4 || v6)
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

    /// Ids of the endpoints Braid owns now.
    pub fn owned_ids(&self) -> Vec<u8> {
        self.owned.iter().copied().collect()
    }

    /// The policy's "now": the latest time passed to `handle` (it never
    /// goes backwards, even if the times passed in do).
    pub fn now_ms(&self) -> u64 {
        self.clock.now().ms()
    }

    /// When the policy next has something to decide that no event will
    /// bring: a returning carrier that will have held long enough, a
    /// refused write whose back-off ends, a switch held back by
    /// `policy.max_handovers` that becomes allowed. The shell should call
    /// `handle(Event::Tick, ..)` then (any other event then does as well).
    pub fn wake_at_ms(&self) -> Option<u64> {
        let now = self.clock.now();
        self.deadlines().filter(|t| *t > now).min().map(Time::ms)
    }

    fn deadlines(&self) -> impl Iterator<Item = Time> + '_ {
        let settling = self
            .carrier
            .values()
            .filter_map(|c| Some(c.returned?.plus(self.settle_ms(c))));
        let retries = self
            .limits_refused
            .iter()
            .map(|r| r.retry_at())
            .chain(self.cflag_refused.iter().map(|r| r.retry_at()))
            .chain(self.flags_refused.values().map(|r| r.retry_at()));
        let window = self.config.policy.handover_window_ms;
        let held = self
            .handover_held
            .as_ref()
            .and_then(|_| self.handovers.front())
            .map(move |t| t.plus(window));
        // A path healthy for hold_ms may take traffic back (handover) or
        // be switched to (interactive): that moment needs no event either.
        let hold = self.config.policy.hold_ms;
        let acts_on_health = self.config.policy.mode != PathMode::Aggregate;
        let healthy = self
            .health
            .paths
            .values()
            .filter(move |_| acts_on_health)
            .filter_map(move |h| Some(Time::from_ms(h.healthy_since_ms?).plus(hold)));
        let switch = std::iter::once(self.last_switch.plus(hold))
            .chain(self.usable_since.values().map(move |t| t.plus(hold)))
            .filter(move |_| acts_on_health);
        settling
            .chain(retries)
            .chain(held)
            .chain(healthy)
            .chain(switch)
    }

    /// Whether a deadline (see `wake_at_ms`) has passed.
    fn due(&self) -> bool {
        let now = self.clock.now();
        self.deadlines().any(|t| t <= now)
    }

    pub fn handle(&mut self, event: Event, now_ms: u64) -> Vec<Decision> {
        let now = self.clock.advance(now_ms);
        let now_ms = now.ms();
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
                let decay = hold.saturating_mul(4);
                let hosts = p.loss_hosts as usize;
                self.health
                    .update(now_ms, &samples, stall, loss, decay, hosts);
                self.note_missing_subflows();
                if self.config.policy.mode == PathMode::Aggregate {
                    if !self.due() && self.rejoin_pending.is_empty() {
                        return Vec::new();
                    }
                } else {
                    self.note_stalls();
                    self.probes_due();
                }
            }
            Event::ProbeResult {
                ifindex,
                remote,
                rtt_ms,
            } => {
                self.counters.probes += 1;
                let answered = rtt_ms.is_some();
                if !answered {
                    self.counters.probes_unanswered += 1;
                }
                if self.config.policy.mode == PathMode::Aggregate {
                    return Vec::new(); // aggregate acts on no measurement
                }
                let stall_ms = self.config.policy.stall_ms;
                let Some(h) = self.health.paths.get_mut(&ifindex) else {
                    return Vec::new();
                };
                // A probe about a wait for an ACK: unanswered while the path
                // is stalled, the path is unreachable.
                let mut changed = h.stall_probe_result(remote, answered, stall_ms);
                // A probe about a silence: answered, or data came back
                // meanwhile (which ends the silence the probe was for), the
                // path is there.
                if !answered
                    && h.probed
                    && h.rx_silent_ms >= h.probe_after_ms()
                    && h.unreachable.is_none()
                {
                    let why = format!(
                        "unreachable: data stopped {} ms ago and {remote} did not answer a probe within {} ms",
                        h.rx_silent_ms,
                        h.probe_timeout_ms()
                    );
                    h.mark_unreachable(why);
                    changed = true;
                }
                if !changed {
                    return Vec::new();
                }
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
                let known: BTreeSet<u32> = links.iter().map(|l| l.index).collect();
                self.carrier.retain(|i, _| known.contains(i));
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
                // Owned ids that are gone, or now hold another address (the
                // table was flushed and someone else took the id), are
                // forgotten. Ids adopted from a previous run (not in the
                // model yet) are taken as they are.
                let kernel = &self.kernel;
                self.owned
                    .retain(|id| match (kernel.get(id), before.get(id)) {
                        (Some(now), Some(was)) => now.addr == was.addr,
                        (Some(_), None) => true,
                        (None, _) => false,
                    });
                self.limits = Some(limits);
                // The kernel's state is known afresh: try everything again.
                self.refused.clear();
                self.flags_refused.clear();
                self.limits_refused = None;
                self.synced = true;
            }
            Event::LinkChanged(link) => {
                self.counters.link_events += 1;
                self.forget_refusals_on(link.index);
                if !(link.up && link.carrier) {
                    // Its measurements are about a path that is gone.
                    self.health.paths.remove(&link.index);
                }
                self.note_carrier(&link);
                self.links.insert(link.index, link);
            }
            Event::LinkRemoved { index } => {
                self.counters.link_events += 1;
                self.forget_refusals_on(index);
                self.carrier.remove(&index);
                self.links.remove(&index);
                self.addresses.retain(|(i, _), _| *i != index);
                self.default_routes.retain(|r| r.ifindex != index);
            }
            Event::AddressAdded(a) => {
                self.counters.address_events += 1;
                self.forget_refusals_of(a.ip);
                self.addresses.insert((a.ifindex, a.ip), a);
            }
            Event::AddressRemoved(a) => {
                self.counters.address_events += 1;
                self.forget_refusals_of(a.ip);
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
            Event::Tick => {}
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

    /// Follow a link's carrier: losses are counted, a return starts the
    /// debounce. A link seen for the first time with carrier is used at once.
    fn note_carrier(&mut self, link: &Link) {
        let now = self.clock.now();
        let ok = link.up && link.carrier;
        let c = self.carrier.entry(link.index).or_insert(CarrierState {
            ok,
            returned: None,
            losses: VecDeque::new(),
        });
        while c
            .losses
            .front()
            .is_some_and(|t| now.since(*t) >= FLAP_WINDOW_MS)
        {
            c.losses.pop_front();
        }
        if c.ok && !ok {
            c.losses.push_back(now);
            c.returned = None;
        } else if !c.ok && ok {
            c.returned = Some(now);
        }
        c.ok = ok;
    }

    /// How long a returning carrier must hold: `policy.carrier_debounce_ms`,
    /// doubled for each further loss within `FLAP_WINDOW_MS`.
    fn settle_ms(&self, c: &CarrierState) -> u64 {
        let debounce = self.config.policy.carrier_debounce_ms;
        let losses = c.losses.len().max(1) as u32;
        backoff_ms(debounce, MAX_SETTLE_MS.max(debounce), losses)
    }

    /// The interface's carrier came back and has not held long enough:
    /// (how long ago, how long it must hold, losses within the window).
    fn settling(&self, ifindex: u32) -> Option<(u64, u64, usize)> {
        let c = self.carrier.get(&ifindex)?;
        let ago = self.clock.now().since(c.returned?);
        let need = self.settle_ms(c);
        (ago < need).then_some((ago, need, c.losses.len()))
    }

    fn forget_refusals_on(&mut self, ifindex: u32) {
        let ips: Vec<IpAddr> = self
            .addresses
            .keys()
            .filter(|(i, _)| *i == ifindex)
            .map(|(_, ip)| *ip)
            .collect();
        for ip in ips {
            self.forget_refusals_of(ip);
        }
    }

    /// Something about address `ip` changed: what the kernel refused about
    /// it is tried again.
    fn forget_refusals_of(&mut self, ip: IpAddr) {
        self.refused.remove(&ip);
        let kernel = &self.kernel;
        self.flags_refused
            .retain(|id, _| kernel.get(id).is_none_or(|e| e.addr != ip));
    }

    /// Take back the model change of an action the kernel refused.
    fn undo(&mut self, action: &Action, error: &str) {
        let now = self.clock.now();
        match action {
            Action::AddEndpoint { id, addr, .. } => {
                // Only if the id still holds what was added: a late report
                // must not make Braid forget (and reuse) another endpoint.
                if self.kernel.get(id).is_some_and(|e| e.addr == *addr) {
                    self.kernel.remove(id);
                    self.owned.remove(id);
                }
                self.refused.insert(*addr, error.to_string());
            }
            // A failed removal: the endpoint is most likely gone already.
            Action::RemoveEndpoint { .. } => {}
            Action::SetEndpointFlags { id, addr, flags } => {
                // The endpoint is still there and still Braid's: the kernel
                // most likely kept its old flags. Put them back in the model
                // and remember the refusal, so the change is neither
                // forgotten nor retried on every event.
                if let Some(e) = self.kernel.get_mut(id) {
                    if e.addr == *addr && e.flags == *flags {
                        if let Some(before) = self.flags_before.remove(id) {
                            e.flags = before;
                        }
                    }
                }
                let r = Refusal::after(self.flags_refused.get(id), *flags, error, now);
                self.flags_refused.insert(*id, r);
            }
            Action::SetLimits {
                subflows,
                add_addr_accepted,
            } => {
                self.limits = None;
                let wanted = Limits {
                    subflows: *subflows,
                    add_addr_accepted: *add_addr_accepted,
                };
                let r = Refusal::after(self.limits_refused.as_ref(), wanted, error, now);
                self.limits_refused = Some(r);
            }
            Action::SetSysctl { value, .. } => {
                // The kernel most likely kept the other value.
                let deny = value == "0";
                self.cflag_applied = Some(!deny);
                let r = Refusal::after(self.cflag_refused.as_ref(), deny, error, now);
                self.cflag_refused = Some(r);
            }
            // No answer either way: the path's silence or wait stays
            // unexplained (and the kernel's own timeouts remain). The probe
            // is no longer under way: it may be sent again.
            Action::ProbePath {
                ifindex, remote, ..
            } => {
                if let Some(h) = self.health.paths.get_mut(ifindex) {
                    h.probe_failed(*remote);
                }
            }
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
        self.usability_with(a, true)
    }

    /// `debounce`: whether a link whose carrier has just returned must wait
    /// (`policy.carrier_debounce_ms`). Not when no other path is usable:
    /// waiting then only leaves the host without any path.
    fn usability_with(&self, a: &Address, debounce: bool) -> Result<(), String> {
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
        // A returning link waits out its debounce only if another path
        // carries traffic meanwhile; one let in early stays in.
        let settled_path = self
            .addresses
            .values()
            .any(|a| self.usability_with(a, true).is_ok());
        let in_use = |ip: IpAddr| self.kernel.values().any(|e| e.addr == ip);
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

    fn manages(&self, id: u8) -> bool {
        self.config.endpoints.own_all || self.owned.contains(&id)
    }

    fn free_id(&self) -> Option<u8> {
        (1..=255u8).find(|id| !self.kernel.contains_key(id))
    }

    fn reconcile(&mut self) -> Vec<Decision> {
        let mut out = Vec::new();
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
                Some(e)
                    if self.reset_pending.contains_key(&w.addr)
                        || self.rejoin_pending.contains_key(&w.addr) =>
                {
                    // Re-adding closes a stalled path's subflows, or makes
                    // the kernel open the ones no connection has.
                    let reason = (self.reset_pending.remove(&w.addr))
                        .or_else(|| self.rejoin_pending.remove(&w.addr))
                        .unwrap_or_default();
                    self.remove(&e, &mut out, reason.clone());
                    self.add(w, &mut out, reason);
                }
                Some(e) if e.flags == w.flags && e.ifindex == w.ifindex => {
                    self.flags_refused.remove(&e.id);
                }
                Some(e)
                    if (e.flags & !CHANGEABLE) == (w.flags & !CHANGEABLE)
                        && e.ifindex == w.ifindex =>
                {
                    let retry = match attempt(self.flags_refused.get(&e.id), &w.flags, now) {
                        // Refused, and neither the wanted flags nor anything
                        // about the address changed since: not yet.
                        Attempt::Wait => continue,
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
                        action: Action::SetEndpointFlags {
                            id: e.id,
                            addr: e.addr,
                            flags: w.flags,
                        },
                        reason: format!("{why}{retry}"),
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
                    let reason = format!(
                        "{} on {} is usable ({} is up with carrier{}){settled}",
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
            let retry = match attempt(self.limits_refused.as_ref(), &want, now) {
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
            if let Some(retry) = retry {
                let reason = match self.config.mode {
                    Mode::Client => format!("{n} usable endpoint(s): allow as many extra subflows and accepted announcements{retry}"),
                    Mode::Server => format!("a server accepts up to the kernel maximum of joins and ignores announcements{retry}"),
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
        if self.cflag_applied == Some(deny) {
            self.cflag_refused = None;
        } else if deny || self.cflag_applied.is_some() {
            let retry = match attempt(self.cflag_refused.as_ref(), &deny, now) {
                Attempt::Wait => None,
                Attempt::Now => Some(String::new()),
                Attempt::Retry(note) => Some(note),
            };
            if let Some(retry) = retry {
                self.cflag_applied = Some(deny);
                let why = if deny {
                    "server.deny_join_initial_address: clients must join other addresses (anycast or load balancer)"
                } else {
                    "server.deny_join_initial_address was turned off"
                };
                out.push(Decision {
                    action: Action::SetSysctl {
                        name: "net.mptcp.allow_join_initial_addr_port".into(),
                        value: if deny { "0" } else { "1" }.into(),
                    },
                    reason: format!("{why}{retry}"),
                });
            }
        }
        self.reset_pending.clear();
        self.rejoin_pending.clear();
        // Refusals about endpoints that are gone are moot.
        let kernel = &self.kernel;
        self.flags_refused.retain(|id, _| kernel.contains_key(id));
        self.flags_before.retain(|id, _| kernel.contains_key(id));
        if !self.config.limits.manage {
            self.limits_refused = None;
        }
        // Carriers that have held long enough are settled for good.
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
        }
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
        let (v4, v6) = self.probing();
        let can_probe = |remote: &IpAddr| if remote.is_ipv6() { v6 } else { v4 };
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
            self.probes_pending
                .push(probe_decision(*ifindex, local, remote, h, reason));
        }
        for (ifindex, h) in self.health.paths.iter_mut() {
            if !h.wants_probe() {
                continue;
            }
            let Some((local, remote)) = h.probe_pair.filter(|(_, r)| can_probe(r)) else {
                continue;
            };
            h.probed = true;
            let reason = format!(
                "{} was receiving and no data has come for {} ms (probed after {} ms: one smoothed RTT, at least {PROBE_AFTER_MIN_MS}): is the path still there?",
                link_name(&self.links, *ifindex),
                h.rx_silent_ms,
                h.probe_after_ms()
            );
            self.probes_pending
                .push(probe_decision(*ifindex, local, remote, h, reason));
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
    fn note_missing_subflows(&mut self) {
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
    fn note_stalls(&mut self) {
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
        // Paths with an endpoint and no problem: where resent data can go.
        let working: BTreeSet<u32> = self
            .kernel
            .values()
            .filter_map(|e| self.ifindex_of(e.addr))
            .filter(|i| !now_stalled.contains(i))
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
            let name = link_name(&self.links, r.ifindex);
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
        let ifindex = self
            .addresses
            .values()
            .find(|a| a.ip == w.addr)
            .map(|a| a.ifindex);
        self.interface_role(&w.iface, ifindex)
    }

    /// The role configured for interface `name`, else primary if it holds
    /// a main-table default route.
    fn interface_role(&self, name: &str, ifindex: Option<u32>) -> Role {
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

    fn ifindex_of(&self, ip: IpAddr) -> Option<u32> {
        self.addresses
            .values()
            .find(|a| a.ip == ip)
            .map(|a| a.ifindex)
    }

    /// A problem of the path for every connection (see
    /// `PathHealth::host_problem`): what the modes act on.
    fn path_problem(&self, ifindex: Option<u32>) -> Option<String> {
        let p = &self.config.policy;
        ifindex
            .and_then(|i| self.health.paths.get(&i))
            .and_then(|h| h.host_problem(p.stall_ms, p.loss_threshold, p.loss_hosts as usize))
    }

    /// What is wrong with some connections of the path but is not taken as
    /// the path's problem, for the path state.
    fn unconfirmed_problems(&self, wanted: &[Want]) -> String {
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
    fn handover_budget(&mut self) -> Result<(), String> {
        let now = self.clock.now();
        let pc = &self.config.policy;
        let (max, window) = (pc.max_handovers as usize, pc.handover_window_ms);
        while self
            .handovers
            .front()
            .is_some_and(|t| now.since(*t) >= window)
        {
            self.handovers.pop_front();
        }
        if self.spent_this_round() || self.handovers.len() < max {
            return Ok(());
        }
        let next = self.handovers.front().map_or(now, |t| t.plus(window));
        Err(format!(
            "{} switches were made on measurements in the last {window} ms (policy.max_handovers = {max} per policy.handover_window_ms); the next is allowed in {} ms",
            self.handovers.len(),
            now.until(next)
        ))
    }

    /// A switch was made (or a reset decided) on measurements in this
    /// round: what follows in the same round comes with it.
    fn spent_this_round(&self) -> bool {
        self.handovers.back() == Some(&self.clock.now())
    }

    /// A change of the paths carrying traffic, by cause (see
    /// `Counters::switches`).
    fn count_switch(&mut self, cause: &str) {
        *self.counters.switches.entry(cause.to_string()).or_default() += 1;
    }

    fn spend_handover(&mut self) {
        if !self.spent_this_round() {
            self.handovers.push_back(self.clock.now());
            self.counters.handovers += 1;
        }
    }

    /// Counted in `reconcile`, once per time it is held back.
    fn hold_back_handover(&mut self, why: String) {
        self.handover_held = Some(why);
    }

    /// Resets of stalled paths' subflows disturb every connection on them:
    /// they come with the switch of this round, or take a switch from
    /// the budget themselves, or are dropped (the stall stays noted: one
    /// reset per stall at most).
    fn budget_resets(&mut self, wanted: &[Want]) {
        let resets = wanted.iter().any(|w| {
            self.reset_pending.contains_key(&w.addr)
                && self
                    .kernel
                    .values()
                    .any(|e| e.addr == w.addr && self.manages(e.id))
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
    fn apply_path_mode(&mut self, wanted: &mut [Want]) {
        self.mode_reasons.clear();
        let backup = Flag::Backup.bit();
        let pc = self.config.policy.clone();
        let now = self.clock.now();
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
                // Healthy for hold_ms; or, when no connection has a subflow
                // on it to measure (it came back while traffic was
                // elsewhere and the kernel opened none), usable for hold_ms:
                // no evidence against it, as on a fresh start.
                let held = healthy.iter().any(|i| {
                    let h = self
                        .ifindex_of(wanted[*i].addr)
                        .and_then(|x| self.health.paths.get(&x));
                    match h.filter(|h| h.measured()) {
                        Some(h) => h
                            .healthy_since_ms
                            .is_some_and(|t| now.since(Time::from_ms(t)) >= pc.hold_ms),
                        None => self
                            .usable_since
                            .get(&wanted[*i].addr)
                            .is_some_and(|t| now.since(*t) >= pc.hold_ms),
                    }
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
                let mut failed = if self.failed_over {
                    !held
                } else {
                    healthy.is_empty()
                };
                // A usable primary measured as failing: a switch made on
                // measurements, which the rate limit may hold back. A
                // primary that is gone (carrier, address, route) is left at
                // once, always.
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
                let reason = if let Some(why) = held_back {
                    let reason = format!("handover: {why_down}; the primary keeps traffic: {why}");
                    self.hold_back_handover(why);
                    reason
                } else if failed {
                    format!("handover: {why_down}; the secondary takes over")
                } else if self.failed_over {
                    format!("handover: the primary has been healthy for {} ms; it takes traffic back, the secondary stands by", pc.hold_ms)
                } else {
                    format!(
                        "handover: the primary is healthy; it carries traffic, the secondary stands by{}",
                        self.unconfirmed_problems(wanted)
                    )
                };
                // The first decision (no path state yet) is no switch: a
                // daemon starting with only secondaries usable moved nothing.
                if failed && !self.failed_over && !self.path_state.is_empty() {
                    let cause = if primaries.is_empty() {
                        "path_gone"
                    } else {
                        primaries
                            .iter()
                            .find_map(|i| self.path_problem(self.ifindex_of(wanted[*i].addr)))
                            .map_or("unhealthy", |p| switch_cause(&p))
                    };
                    self.count_switch(cause);
                } else if !failed && self.failed_over {
                    self.count_switch("recovered");
                }
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
                let Some(best) = healthy
                    .iter()
                    .min_by(|a, b| rtt(a).total_cmp(&rtt(b)))
                    .map(|b| (*b).clone())
                else {
                    return;
                };
                let links = self.links.clone();
                let name = |i: u32| link_name(&links, i);
                let current = self
                    .active_path
                    .and_then(|a| paths.iter().find(|p| p.ifindex == a).cloned());
                let informed = self.active_informed;
                let unconfirmed = self.unconfirmed_problems(wanted);
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
                    // Switches made on measurements: the rate limit may
                    // hold them back.
                    Some(cur) if cur.problem.is_some() => {
                        let problem = cur.problem.clone().unwrap_or_default();
                        match self.handover_budget() {
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
                        }
                    }
                    Some(cur) => {
                        let better = best.ifindex != cur.ifindex
                            && rtt(&cur) > rtt(&best) * pc.rtt_ratio + pc.rtt_margin_ms as f64
                            && best
                                .healthy_since
                                .is_some_and(|t| now.since(Time::from_ms(t)) >= pc.hold_ms)
                            && now.since(self.last_switch) >= pc.hold_ms;
                        let why = format!(
                            "interactive: {} RTT {} is over {}x{} + {} ms of {}",
                            name(cur.ifindex),
                            fmt_rtt(cur.srtt),
                            pc.rtt_ratio,
                            fmt_rtt(best.srtt),
                            pc.rtt_margin_ms,
                            name(best.ifindex)
                        );
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
                            (cur.ifindex, kept)
                        } else {
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
                };
                if let Some(cur) = self.active_path.filter(|c| *c != active) {
                    let cause = match paths.iter().find(|p| p.ifindex == cur) {
                        None => "path_gone",
                        Some(p) => p.problem.as_deref().map_or("rtt", switch_cause),
                    };
                    self.count_switch(cause);
                }
                if self.handover_held.is_none() {
                    self.active_reason = reason.clone();
                }
                let reason = format!("{reason}{unconfirmed}");
                if self.active_path != Some(active) {
                    self.last_switch = now;
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

/// An interface's name, or `#index` if it is unknown.
fn link_name(links: &BTreeMap<u32, Link>, i: u32) -> String {
    links
        .get(&i)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("#{i}"))
}

/// A probe of the path `ifindex` from `local` to `remote`, waiting what
/// the path's measurements say an answer may take.
fn probe_decision(
    ifindex: u32,
    local: IpAddr,
    remote: IpAddr,
    h: &PathHealth,
    reason: String,
) -> Decision {
    Decision {
        action: Action::ProbePath {
            ifindex,
            local,
            remote,
            timeout_ms: h.probe_timeout_ms(),
        },
        reason,
    }
}

/// The cause of a switch away from a path with `problem` (see
/// `PathHealth::host_problem`), as a word for the counters.
fn switch_cause(problem: &str) -> &'static str {
    ["unreachable", "stalled", "lossy"]
        .into_iter()
        .find(|c| problem.starts_with(*c))
        .unwrap_or("unhealthy")
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::SubflowSample;
    use std::net::SocketAddr;

    /// eth0 (10.0.0.2, primary) and wlan0 (192.168.1.5, secondary), in
    /// handover mode.
    fn handover() -> Policy {
        let mut cfg = Config::default();
        cfg.policy.mode = PathMode::Handover;
        let mut p = Policy::new(cfg, Vec::new());
        let link = |index: u32, name: &str| Link {
            index,
            name: name.into(),
            up: true,
            carrier: true,
            loopback: false,
        };
        let addr = |ifindex: u32, ip: &str| Address {
            ifindex,
            ip: ip.parse().unwrap(),
            prefix_len: 24,
            temporary: false,
            deprecated: false,
            tentative: false,
        };
        let route = |ifindex: u32, table: u32| DefaultRoute {
            ifindex,
            table,
            ipv6: false,
            initcwnd: None,
        };
        p.handle(
            Event::Snapshot {
                links: vec![link(2, "eth0"), link(3, "wlan0")],
                addresses: vec![addr(2, "10.0.0.2"), addr(3, "192.168.1.5")],
                default_routes: vec![route(2, 254), route(3, 200)],
                endpoints: vec![],
                limits: Limits {
                    subflows: 2,
                    add_addr_accepted: 2,
                },
            },
            0,
        );
        p
    }

    /// A download on eth0 from `remote`: `rx_bytes` received so far, the
    /// last data `last_rx_ms` ago.
    fn receiving(remote: &str, rx_bytes: u64, last_rx_ms: u32) -> Event {
        Event::Health(vec![SubflowSample {
            local: "10.0.0.2:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            ifindex: 0,
            rtt_us: 20_000,
            rttvar_us: 5_000,
            total_retrans: 0,
            segs_out: 10,
            unacked: 0,
            last_ack_recv_ms: 5,
            bytes_received: rx_bytes,
            last_data_recv_ms: last_rx_ms,
        }])
    }

    fn probes(ds: &[Decision]) -> Vec<Action> {
        ds.iter()
            .filter(|d| matches!(d.action, Action::ProbePath { .. }))
            .map(|d| d.action.clone())
            .collect()
    }

    /// Receiving from `remote`, then silent for 40 ms (the minimum): the
    /// decisions of the silent round.
    fn silence(p: &mut Policy, remote: &str) -> Vec<Decision> {
        p.handle(receiving(remote, 0, 0), 0);
        p.handle(receiving(remote, 500_000, 1), 100);
        p.handle(receiving(remote, 500_000, 40), 140)
    }

    #[test]
    fn paths_are_probed_only_where_the_remotes_family_can_be() {
        // Only IPv6 can be probed: the IPv4 host's silence is not probed.
        let mut p = handover();
        p.set_probing(false, true);
        assert!(probes(&silence(&mut p, "203.0.113.1:443")).is_empty());
        // IPv4 can be probed again (a redetect): it is.
        p.set_probing(true, false);
        let ds = p.handle(receiving("203.0.113.1:443", 500_000, 60), 160);
        assert_eq!(probes(&ds).len(), 1, "{ds:?}");
        // Neither: nothing, and the configuration still rules over both.
        let mut p = handover();
        p.set_probing(false, false);
        assert!(probes(&silence(&mut p, "203.0.113.1:443")).is_empty());
        let mut cfg = p.config().clone();
        cfg.policy.probe_silent_paths = false;
        let mut p = handover();
        p.handle(Event::ConfigReloaded(Box::new(cfg)), 0);
        p.set_probing(true, true);
        assert!(probes(&silence(&mut p, "203.0.113.1:443")).is_empty());
    }

    #[test]
    fn a_probe_that_could_not_be_sent_is_sent_again() {
        let mut p = handover();
        let ds = silence(&mut p, "203.0.113.1:443");
        let sent = probes(&ds);
        assert_eq!(sent.len(), 1, "{ds:?}");
        // Once per silence while it is under way.
        let ds = p.handle(receiving("203.0.113.1:443", 500_000, 60), 160);
        assert!(probes(&ds).is_empty(), "{ds:?}");
        p.handle(
            Event::ActionFailed {
                action: sent[0].clone(),
                error: "Network is unreachable".into(),
            },
            170,
        );
        let ds = p.handle(receiving("203.0.113.1:443", 500_000, 80), 180);
        assert_eq!(probes(&ds), sent, "{ds:?}");
    }

    #[test]
    fn a_failed_stall_probe_is_no_longer_under_way() {
        let mut p = handover();
        let remote: SocketAddr = "203.0.113.1:443".parse().unwrap();
        let waiting = |last_ack: u32| {
            Event::Health(vec![SubflowSample {
                local: "10.0.0.2:40000".parse().unwrap(),
                remote,
                ifindex: 0,
                rtt_us: 20_000,
                rttvar_us: 5_000,
                total_retrans: 0,
                segs_out: 100,
                unacked: 5,
                last_ack_recv_ms: last_ack,
                bytes_received: 0,
                last_data_recv_ms: 0,
            }])
        };
        p.handle(waiting(5), 0);
        // stall_ms 100 by default, rtt 20 ms: probed from 50 ms of waiting.
        let ds = p.handle(waiting(250), 250);
        let sent = probes(&ds);
        assert_eq!(sent.len(), 1, "{ds:?}");
        p.handle(
            Event::ActionFailed {
                action: sent[0].clone(),
                error: "Network is unreachable".into(),
            },
            260,
        );
        let h = &p.health.paths[&2];
        assert!(h.stall_probe.as_ref().is_some_and(|s| s.failed));
        let note = h.unconfirmed_problem(100, 0.05, 1).unwrap();
        assert!(note.contains("could not be sent"), "{note}");
        // Sent again after the back-off, not at every round.
        assert!(probes(&p.handle(waiting(300), 300)).is_empty());
        let ds = p.handle(waiting(1300), 1300);
        assert_eq!(probes(&ds).len(), 1, "{ds:?}");
    }
}
