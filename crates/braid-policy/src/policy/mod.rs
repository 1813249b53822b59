//! The path manager: keeps the kernel's endpoints in step with the usable
//! addresses of the machine. Every call takes one event and the time, and
//! returns the actions to carry out, each with the reason it was decided.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::backup_watch::BackupWatch;
use crate::budget::SwitchBudget;
use crate::config::{glob, Config, Flag, Mode, PathMode, PmKind, Role};
use crate::health::{
    left_for_loss_wait, CheckVerdict, HealthTracker, PathHealth, PathProblem, ProblemKind,
    SilenceVerdict, SubflowKey, SubflowSample, LOSS_ECHO_INTERVAL_MS, MIN_WITNESSES,
};
use crate::model::*;
use crate::time::{backoff_ms, Clock, Time};
use braid_types::endpoint::EndpointFlags;

mod intake;
mod modes;
mod priority;
mod reconcile;
mod routes;
mod view;
mod watch;

/// The kernel uses at most this many endpoints per connection.
pub const KERNEL_MAX_ENDPOINTS: usize = braid_types::endpoint::KERNEL_MAX_LIMIT as usize;
/// Flags that SET_FLAGS can change on a live endpoint.
const CHANGEABLE: u32 = EndpointFlags::BACKUP | EndpointFlags::FULLMESH;
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
/// Added to the slowest other path's RTT before a reopened endpoint comes
/// back (`readd_wait_ms`), and the least it waits.
const READD_MARGIN_MS: u64 = 10;
const READD_MIN_MS: u64 = 20;
/// A standby found without carrier at start is kept this long at most
/// without a health round to say its subflows are idle (rounds come
/// every `policy.poll_interval_ms` while any subflow exists).
const UNCONFIRMED_KEEP_MS: u64 = 2000;
const REJOIN_FIRST_MS: u64 = 2000;
const REJOIN_MAX_MS: u64 = 300_000;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LoggedDecision {
    pub id: u64,
    pub at_ms: u64,
    pub action: String,
    pub reason: String,
    /// Filled in when the action failed.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Counters {
    pub link_events: u64,
    /// Carrier losses read in a health round before the kernel announced
    /// them (not in `link_events`: those are the announcements).
    #[serde(default)]
    pub carrier_losses_polled: u64,
    pub address_events: u64,
    pub route_events: u64,
    pub resyncs: u64,
    pub reloads: u64,
    pub actions: u64,
    pub failed_actions: u64,
    /// Probes of silent receiving paths, and how many went unanswered.
    pub probes: u64,
    pub probes_unanswered: u64,
    /// Unanswered silence probes that the next round contradicted: data
    /// had come on the path while the probe waited.
    #[serde(default)]
    pub probes_unanswered_data_came: u64,
    /// Switches of traffic made on measurements, and how many times one
    /// was held back by `policy.max_handovers`.
    pub handovers: u64,
    pub handovers_held_back: u64,
    /// Times a standby path lost carrier and its endpoint was kept
    /// (removing it would have made the kernels resend data in flight).
    #[serde(default)]
    pub standby_endpoints_kept: u64,
    /// Times an endpoint's backup flag was set again because a subflow
    /// that was joining when it changed had missed it.
    #[serde(default)]
    pub backup_flags_resent: u64,
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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressView {
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub usable: bool,
    pub why: String,
    pub endpoint_id: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// The id of the last decision returned (see `Decision::id`).
    last_decision_id: u64,
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
    handovers: SwitchBudget,
    /// Why a switch on measurements is being held back, if one is.
    handover_held: Option<String>,
    /// Interactive: why the active path was chosen.
    active_reason: String,
    path_state: String,
    /// Why a path's backup flag is what it is (for the decision's reason).
    mode_reasons: BTreeMap<IpAddr, String>,
    /// Interfaces seen stalled (to act once per stall).
    stalled_paths: BTreeSet<u32>,
    /// Interactive: paths left for loss whose data waits for an ACK past
    /// TCP's own expectation (to reopen them once per wait,
    /// `note_lossy_waits`).
    lossy_waits: BTreeSet<u32>,
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
    /// Links that carried no data (their subflows idle) when they lost
    /// carrier, until the carrier is back and settled.
    idle_when_lost: BTreeSet<u32>,
    /// Addresses of our standby endpoints that went away while their path
    /// carried no data, with the link they were on: kept like a standby
    /// without carrier (`keep_standby`) while their subflows stay idle.
    idle_when_address_lost: BTreeMap<IpAddr, u32>,
    /// Links found without carrier at start, holding a backup endpoint of
    /// ours: a daemon started (or restarted) during the loss cannot know
    /// whether the standby was idle, so it keeps the endpoint until a
    /// health round says (`recheck_kept`), and no longer than this.
    unconfirmed_idle: BTreeMap<u32, Time>,
    /// Reopened endpoints waiting to be added again, until when and why.
    readd_at: BTreeMap<IpAddr, (Time, String)>,
    /// Standby endpoints kept while their link has no carrier, with why.
    kept_standby: BTreeMap<IpAddr, String>,
    /// Endpoints whose backup flag missed joined subflows, or a peer
    /// (its MP_PRIO lost), with why and which: set again this round
    /// (`priority.rs`).
    priority_pending: BTreeMap<u8, (String, Vec<SubflowKey>)>,
    /// Subflows whose endpoint's flags were set again for them, with those
    /// flags: one try each.
    priority_resent: BTreeMap<SubflowKey, u32>,
    /// Subflows left with a flag that differs (noted once).
    priority_given_up: BTreeSet<SubflowKey>,
    /// Addresses whose endpoint's flags changed, watched while a subflow
    /// from them is joining, until when at most (`priority.rs`).
    joins_watched: BTreeMap<IpAddr, Time>,
    /// Subflows this end has as backups, watched for a peer that still
    /// sends on them (`priority.rs`).
    backups_watched: BTreeMap<SubflowKey, BackupWatch>,
    /// What the policy chose not to do, or learnt, since the shell last
    /// asked (`take_notes`): for the log, with no action to carry it.
    notes: Vec<String>,
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
    problem: Option<PathProblem>,
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
            last_decision_id: 0,
            clock: Clock::default(),
            carrier: BTreeMap::new(),
            usable_since: BTreeMap::new(),
            health: HealthTracker::default(),
            failed_over: false,
            active_path: None,
            active_informed: false,
            last_switch: Time::ZERO,
            handovers: SwitchBudget::default(),
            handover_held: None,
            active_reason: String::new(),
            path_state: String::new(),
            mode_reasons: BTreeMap::new(),
            stalled_paths: BTreeSet::new(),
            lossy_waits: BTreeSet::new(),
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
            idle_when_lost: BTreeSet::new(),
            idle_when_address_lost: BTreeMap::new(),
            unconfirmed_idle: BTreeMap::new(),
            readd_at: BTreeMap::new(),
            kept_standby: BTreeMap::new(),
            priority_pending: BTreeMap::new(),
            priority_resent: BTreeMap::new(),
            priority_given_up: BTreeSet::new(),
            joins_watched: BTreeMap::new(),
            backups_watched: BTreeMap::new(),
            notes: Vec::new(),
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

    /// Whether a host at a remote address can be probed (by its family),
    /// as a function that holds no borrow of the policy.
    fn probe_filter(&self) -> impl Fn(&IpAddr) -> bool + Copy {
        let (v4, v6) = self.probing();
        move |remote: &IpAddr| if remote.is_ipv6() { v6 } else { v4 }
    }

    /// How soon the next health round should come, if sooner than the
    /// regular interval: when a path waiting for an ACK would reach its
    /// stall threshold, so a stall is seen when it happens rather than up
    /// to a poll interval later.
    /// An unanswered silence probe waits for a health round to be judged:
    /// the shell makes one at once.
    pub fn silence_verdict_waiting(&self) -> bool {
        self.health.silence_verdict_waiting()
    }

    pub fn health_check_due_in_ms(&self) -> Option<u64> {
        let joins = self.join_recheck_due_in_ms();
        let (v4, v6) = self.probing();
        let stall = self
            .health
            .until_next_stall_ms(self.config.policy.stall_ms, v4 || v6);
        joins.into_iter().chain(stall).min()
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
            .and_then(|_| self.handovers.frees_at(window));
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
        let readd = self.readd_at.values().map(|(at, _)| *at);
        let unconfirmed = self.unconfirmed_idle.values().copied();
        settling
            .chain(readd)
            .chain(unconfirmed)
            .chain(retries)
            .chain(held)
            .chain(healthy)
            .chain(switch)
    }

    /// What the policy chose not to do, or learnt without acting, since
    /// the last call: each a sentence for the log.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Take one event at `now_ms` (the shell's monotonic clock) and return
    /// the decisions it leads to, numbered, each with its reason.
    pub fn handle(&mut self, event: Event, now_ms: u64) -> Vec<Decision> {
        let now = self.clock.advance(now_ms);
        if !self.take(event) || !self.synced {
            return Vec::new();
        }
        let mut decisions = if self.stopping {
            self.stop()
        } else {
            self.reconcile()
        };
        decisions.append(&mut self.probes_pending);
        for d in &mut decisions {
            self.last_decision_id += 1;
            d.id = self.last_decision_id;
            self.counters.actions += 1;
            if self.recent.len() == RECENT_DECISIONS {
                self.recent.pop_front();
            }
            self.recent.push_back(LoggedDecision {
                id: d.id,
                at_ms: now.ms(),
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
        let ok = link.can_carry();
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
                    } else {
                        // A later change has been decided since (or this
                        // was the first of two, `priority.rs`): what was
                        // there before this one is no longer the model's.
                        self.flags_before.remove(id);
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
            // The echo is sent again at the next interval.
            Action::ProbeLoss { .. } => {}
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
}

/// An interface's name, or `#index` if it is unknown.
fn link_name(links: &BTreeMap<u32, Link>, i: u32) -> String {
    links
        .get(&i)
        .map(|l| l.name.clone())
        .unwrap_or_else(|| format!("#{i}"))
}

/// A probe of the path `ifindex` from `local` to `remote`, waiting
/// `timeout_ms` for the answer (what the path's measurements say it may
/// take).
fn probe_decision(
    ifindex: u32,
    local: IpAddr,
    remote: IpAddr,
    timeout_ms: u64,
    reason: String,
) -> Decision {
    Decision {
        id: 0,
        action: Action::ProbePath {
            ifindex,
            local,
            remote,
            timeout_ms,
        },
        reason,
    }
}

/// The cause of a switch away from a path with `problem` (see
/// `PathHealth::host_problem`), as a word for the counters.
fn fmt_rtt(ms: Option<f64>) -> String {
    ms.map(|m| format!("{m:.1} ms"))
        .unwrap_or_else(|| "rtt unknown".into())
}

#[cfg(test)]
mod tests;
