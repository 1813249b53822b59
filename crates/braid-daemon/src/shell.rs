//! The I/O shell: feeds kernel changes, MPTCP events, signals and control
//! requests into the policy and carries out its decisions.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_kernel::events::{EventKind, EventStream, StreamItem};
use braid_kernel::pm::{EndpointFlags, EndpointSelector, NewEndpoint, PathManager};
use braid_kernel::rtnl::{self, Change, Monitor};
use braid_policy::config::PmKind;
use braid_policy::health::SubflowSample;
use braid_policy::model::{self as m, Action, Event};
use braid_policy::{Config, Policy};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, error, info, warn};

use crate::census::{Census, Plan};
use crate::config_file;
use crate::conns::ConnShell;
use crate::control::{self, Answer, DaemonStatus, JournalReply, Pending, Reply, Request};
use crate::crash;
use crate::features::{Feature, ProbeSupport};
use crate::journal::{unix_ms_now, Journal, What};
use crate::metrics::{self, MetricsConfig};
use crate::metrics_server;
use crate::state::{self, OwnedEndpoint, SavedState};

pub const STATE_FILE: &str = "/run/braid/daemon-state.json";

/// How often the daemon dumps everything and puts right what changed
/// behind its back (an `ip mptcp endpoint flush`, `ip mptcp limits set`):
/// no event tells it about those.
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(30);

/// A failing health round is retried at least this far apart.
const FAILED_POLL_RETRY: Duration = Duration::from_secs(1);
/// The kernel's count of namespace-wide MPTCP shutdowns is read at most
/// this often while health rounds run (a few kB of /proc/net/netstat).
const BLACKHOLE_CHECK: Duration = Duration::from_secs(1);

pub struct Options {
    pub config_path: PathBuf,
    pub config_explicit: bool,
    /// Shrink the rtnetlink receive buffer (tests use it to provoke ENOBUFS).
    pub netlink_rcvbuf: Option<usize>,
    pub state_file: PathBuf,
    /// Period of the full resynchronisation (None: only after a netlink
    /// overflow and on reload).
    pub resync_interval: Option<Duration>,
}

fn addr_of(a: &rtnl::Address) -> m::Address {
    m::Address {
        ifindex: a.ifindex,
        ip: a.addr,
        prefix_len: a.prefix_len,
        temporary: a.is_temporary(),
        deprecated: a.is_deprecated(),
        tentative: a.is_tentative(),
    }
}

/// Everything the kernel says, as one policy event.
fn snapshot(pm: &mut PathManager) -> braid_kernel::Result<Event> {
    Ok(Event::Snapshot {
        links: rtnl::links()?,
        addresses: rtnl::addresses()?.iter().map(addr_of).collect(),
        default_routes: rtnl::default_routes()?,
        endpoints: kernel_endpoints(pm)?,
        limits: pm.limits()?,
    })
}

fn kernel_endpoints(pm: &mut PathManager) -> braid_kernel::Result<Vec<m::KernelEndpoint>> {
    Ok(pm
        .endpoints()?
        .into_iter()
        .map(|e| m::KernelEndpoint {
            id: e.id,
            addr: e.addr,
            flags: e.flags.0,
            ifindex: e.ifindex,
        })
        .collect())
}

/// `braidd --remove-endpoints`: remove the endpoints the state file says
/// Braid made and the kernel still holds with the same address, then the
/// file. For when Braid goes away for good (the package's removal runs it
/// after the daemon stopped; the daemon puts routes back itself when it
/// stops). Returns a line per endpoint removed or left alone.
pub fn remove_owned(state_file: &std::path::Path) -> Result<Vec<String>, String> {
    let saved = match state::load(state_file) {
        state::Loaded::Missing => return Ok(Vec::new()),
        state::Loaded::Read(s) => s,
        state::Loaded::KeptAside(msg) | state::Loaded::Unusable(msg) => return Err(msg),
    };
    let mut pm = PathManager::open().map_err(|e| e.to_string())?;
    let kernel = kernel_endpoints(&mut pm).map_err(|e| e.to_string())?;
    let (ids, mut lines) = saved.adopt(&kernel);
    for e in kernel.iter().filter(|e| ids.contains(&e.id)) {
        pm.del_endpoint(&EndpointSelector::Id(e.id))
            .map_err(|err| format!("removing endpoint id {} ({}): {err}", e.id, e.addr))?;
        lines.push(format!(
            "removed endpoint id {} ({}), Braid's",
            e.id, e.addr
        ));
    }
    match std::fs::remove_file(state_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(format!("removing {}: {e}", state_file.display()))
        }
        _ => Ok(lines),
    }
}

/// Actions whose effect the state file must know about before they run.
fn touches_state(a: &Action) -> bool {
    matches!(
        a,
        Action::AddEndpoint { .. }
            | Action::RemoveEndpoint { .. }
            | Action::SetRouteInitcwnd { .. }
    )
}

/// An action that could not be carried out.
struct Failure {
    error: String,
    /// Already explained once (a feature that is off): not logged again.
    quiet: bool,
}

impl From<braid_kernel::Error> for Failure {
    fn from(e: braid_kernel::Error) -> Self {
        Failure {
            error: e.to_string(),
            quiet: false,
        }
    }
}

/// What a probe started by `Action::ProbePath` found.
struct ProbeOutcome {
    /// The decision that sent the probe.
    id: u64,
    action: Action,
    /// Asked for by the per-connection path manager (its answer goes
    /// there).
    for_conns: bool,
    result: braid_kernel::Result<Option<Duration>>,
}

/// Errors logged once per kind until things work again.
#[derive(Default)]
struct LoggedOnce(BTreeSet<String>);

impl LoggedOnce {
    /// True the first time `kind` is seen since the last `clear`.
    fn first(&mut self, kind: String) -> bool {
        self.0.insert(kind)
    }
    /// True if anything had been logged.
    fn clear(&mut self) -> bool {
        let had = !self.0.is_empty();
        self.0.clear();
        had
    }
}

fn error_kind(e: &braid_kernel::Error) -> String {
    match e {
        braid_kernel::Error::Kernel { errno, .. } => format!("errno {errno}"),
        braid_kernel::Error::Io { source, .. } => match source.raw_os_error() {
            Some(n) => format!("errno {n}"),
            None => format!("io {:?}", source.kind()),
        },
        braid_kernel::Error::Decode { .. } => "decode".into(),
        other => other.to_string(),
    }
}

/// Health polling: how it goes, for the status.
pub use crate::control::HealthPolls;

struct Shell {
    policy: Policy,
    pm: PathManager,
    start: Instant,
    opts: Options,
    /// What the state file holds (as last written successfully).
    saved: SavedState,
    /// The last state file write failed: the next feed tries again.
    save_failed: Option<String>,
    /// Where probes started by `Action::ProbePath` report back.
    probe_results: tokio::sync::mpsc::UnboundedSender<ProbeOutcome>,
    probe: ProbeSupport,
    probe_errors: LoggedOnce,
    control_group: Feature,
    health: HealthPolls,
    health_errors: LoggedOnce,
    /// Which subflows the health rounds read, and whether by dump.
    census: Census,
    /// When a health round last read the links (ms on the policy's clock).
    links_read_at_ms: Option<u64>,
    /// Problems found by the shell itself (a corrupt state file kept aside...).
    shell_warnings: Vec<String>,
    /// Warnings last logged, so each is logged when it appears.
    warnings: Vec<String>,
    /// MPTcpExtBlackhole as last read, so each rise is told once, and
    /// when it was read.
    blackholes_seen: u64,
    blackholes_read_at: Option<Instant>,
    /// The kernel turned active MPTCP off (see `check_active_mptcp`).
    active_mptcp_off: Option<String>,
    /// Decisions, refusals and the shell's own errors, counted for the metrics.
    tallies: Tallies,
    /// `[metrics]` as the daemon started with it (changes need a restart).
    metrics_config: MetricsConfig,
    /// Per-path totals, kept only when metrics are on.
    metrics: Option<metrics::Accounts>,
    /// Where the metrics are served, or why they are not.
    metrics_listen: Option<Result<SocketAddr, String>>,
    /// The last textfile write failed.
    textfile_error: Option<String>,
    /// Unix time of the start, seconds.
    started_unix: f64,
    /// What happened and why, for `braid monitor`.
    journal: Journal,
    /// This daemon's network namespace (inode), told to journal readers.
    netns: Option<u64>,
    /// The per-connection path manager (`pm = "userspace"`).
    conns: Option<ConnShell>,
}

/// Counts kept for the metrics (cheap enough to keep always).
#[derive(Default)]
struct Tallies {
    decisions: BTreeMap<&'static str, u64>,
    failed: BTreeMap<&'static str, u64>,
    errors: BTreeMap<&'static str, u64>,
}

impl Tallies {
    fn error(&mut self, kind: &'static str) {
        *self.errors.entry(kind).or_default() += 1;
    }
}

impl Shell {
    /// Tell the policy which families the daemon can probe.
    fn tell_probing(&mut self) {
        let (v4, v6) = (self.probe.v4.is_ok(), self.probe.v6.is_ok());
        self.policy.set_probing(v4, v6);
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// When the policy wants `Event::Tick`, on the tokio clock.
    fn policy_wake(&self) -> Option<tokio::time::Instant> {
        let conns = self.conns.as_ref().and_then(|c| c.wake_at_ms());
        let at_ms = match (self.policy.wake_at_ms(), conns) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b)?,
        };
        let from_now = Duration::from_millis(at_ms.saturating_sub(self.now_ms()));
        Some(tokio::time::Instant::now() + from_now)
    }

    /// Hand one event to the policy and carry out its decisions; returns
    /// how many there were.
    fn feed(&mut self, ev: Event) -> usize {
        let now = self.now_ms();
        // What may change which paths exist or carry traffic without a
        // decision (a snapshot, a link or address change).
        let mut paths_may_change = !matches!(
            ev,
            Event::Health(_)
                | Event::Mptcp(_)
                | Event::ProbeResult { .. }
                | Event::Tick
                | Event::LinksPolled(_)
        );
        if !matches!(ev, Event::Snapshot { .. }) {
            if let Some(text) = ev.summary() {
                self.journal.record(unix_ms_now(), What::Change { text });
            }
        }
        let decisions = self.policy.handle(ev, now);
        let count = decisions.len();
        // What the policy learnt or chose not to do (a carrier loss read
        // ahead of its announcement, a standby endpoint kept): the paths
        // may have changed without a decision.
        for note in self.policy.take_notes() {
            paths_may_change = true;
            info!(note = %note, "policy");
            self.journal
                .record(unix_ms_now(), What::Change { text: note });
        }
        if decisions.iter().any(|d| touches_state(&d.action)) {
            // Intent first: the file names every endpoint and route this
            // batch may leave changed before the kernel is touched, so a
            // crash at any point orphans nothing and loses no initcwnd.
            let intent = self.saved.union(&self.current_state());
            self.save_state(intent);
        }
        for d in decisions {
            // Loss echoes go ten a second while a lossy path stands by:
            // the path's state says why, the log and journal need not.
            if matches!(d.action, Action::ProbeLoss { .. }) {
                debug!(action = %d.action, reason = %d.reason, "decision");
            } else {
                info!(action = %d.action, reason = %d.reason, "decision");
                self.journal.record(
                    unix_ms_now(),
                    What::Decision {
                        id: d.id,
                        action: d.action.clone(),
                        reason: d.reason.clone(),
                    },
                );
            }
            let kind = metrics::action_name(&d.action);
            *self.tallies.decisions.entry(kind).or_default() += 1;
            crash::around("before", &d.action);
            let result = self.execute(&d.action, d.id);
            crash::around("after", &d.action);
            if let Err(f) = result {
                *self.tallies.failed.entry(kind).or_default() += 1;
                if f.quiet {
                    debug!(action = %d.action, error = %f.error, "not carried out");
                } else {
                    warn!(action = %d.action, error = %f.error, "the kernel refused the action");
                }
                self.journal.record(
                    unix_ms_now(),
                    What::Refused {
                        id: d.id,
                        action: d.action.clone(),
                        error: f.error.clone(),
                    },
                );
                let now = self.now_ms();
                self.policy.handle(
                    Event::ActionFailed {
                        id: d.id,
                        action: d.action.clone(),
                        error: f.error,
                    },
                    now,
                );
            }
        }
        // Cheap to build and compare (a snapshot can drop owned ids
        // without deciding anything; a failed write is retried here).
        let now = self.current_state();
        self.save_state(now);
        if count > 0 {
            self.log_new_warnings();
        }
        if self.metrics.is_some() && (count > 0 || paths_may_change) {
            self.observe_paths();
        }
        if self.conns.is_some() && (count > 0 || paths_may_change) {
            let paths = self.policy.usable_paths();
            let now = self.now_ms();
            if let Some(c) = self.conns.as_mut() {
                c.paths(paths, now, &mut self.pm, &mut self.journal);
            }
        }
        count
    }

    /// A health round for the per-connection path manager: each
    /// connection's subflows, and the paths the host-wide policy finds
    /// failing.
    fn conns_health(&mut self, subflows: &[braid_kernel::diag::Subflow]) {
        if self.conns.is_none() {
            return;
        }
        let samples = subflow_samples(subflows).collect();
        let problems = self.policy.path_problems();
        let now = self.now_ms();
        let Some(c) = self.conns.as_mut() else {
            return;
        };
        c.health(samples, problems, now, &mut self.pm, &mut self.journal);
    }

    /// Send the loss echoes and checks the per-connection policy asked for. A
    /// check that cannot be sent is told as such: the connection waits
    /// for nothing.
    fn send_conn_probes(&mut self) {
        let Some(probes) = self.conns.as_mut().map(|c| c.take_probes()) else {
            return;
        };
        for action in probes {
            let check = match action {
                Action::ProbePath {
                    ifindex, remote, ..
                } => Some((ifindex, remote)),
                _ => None,
            };
            let Err(f) = self.send_echo(0, action, true) else {
                continue;
            };
            debug!(error = %f.error, "connection probe not sent");
            if let Some((ifindex, remote)) = check {
                self.conn_check_answer(ifindex, remote, None);
            }
        }
    }

    fn conn_check_answer(&mut self, ifindex: u32, remote: IpAddr, answered: Option<bool>) {
        let now = self.now_ms();
        if let Some(c) = self.conns.as_mut() {
            c.check_answer(
                ifindex,
                remote,
                answered,
                now,
                &mut self.pm,
                &mut self.journal,
            );
        }
    }

    /// Read the links while connections are measured: a carrier loss the
    /// kernel has not announced yet is taken at once (see
    /// `Event::LinksPolled`). At most twice per `policy.poll_interval_ms`:
    /// rounds come sooner when a stall threshold is near, and each read is
    /// a dump of every interface. Not once: regular rounds come a little
    /// less than an interval apart as often as not, and every other one
    /// would be skipped (measured: the reads then came too late to matter).
    /// A failed read is counted, not fatal: the announcement still comes.
    fn poll_links(&mut self) {
        let now = self.now_ms();
        let every = self.policy.config().policy.poll_interval_ms;
        if self
            .links_read_at_ms
            .is_some_and(|at| now.saturating_sub(at) < every / 2)
        {
            return;
        }
        self.links_read_at_ms = Some(now);
        match rtnl::links() {
            Ok(links) => {
                self.feed(Event::LinksPolled(links));
            }
            Err(e) => {
                self.tallies.error("link_poll");
                debug!(error = %e, "reading the links in a health round failed");
            }
        }
    }

    /// One rtnetlink change (or failure) into the policy; true if it led
    /// to a full resynchronisation.
    fn take_change(&mut self, change: braid_kernel::Result<Change>) -> bool {
        let ev = match change {
            Ok(Change::Overflow) => {
                self.resync("the rtnetlink buffer overflowed (ENOBUFS)", false);
                return true;
            }
            Err(e) => {
                error!(error = %e, "reading rtnetlink failed");
                self.tallies.error("rtnetlink");
                self.resync("rtnetlink read error", false);
                return false;
            }
            Ok(Change::Link(l)) => Event::LinkChanged(l),
            Ok(Change::LinkRemoved(i)) => Event::LinkRemoved { index: i },
            Ok(Change::AddressAdded(a)) => Event::AddressAdded(addr_of(&a)),
            Ok(Change::AddressRemoved(a)) => Event::AddressRemoved(addr_of(&a)),
            Ok(Change::DefaultRouteAdded(r)) => Event::DefaultRouteAdded(r),
            Ok(Change::DefaultRouteRemoved(r)) => Event::DefaultRouteRemoved(r),
        };
        self.feed(ev);
        false
    }

    /// One item of the MPTCP event stream into the journal and the policy;
    /// true if it says a connection may have subflows to measure.
    fn take_mptcp(&mut self, item: braid_kernel::Result<StreamItem>) -> bool {
        match item {
            Ok(StreamItem::Event(ev)) => {
                let kind = ev.kind;
                self.census.mptcp_event(kind);
                self.journal
                    .record(unix_ms_now(), What::Mptcp { event: ev.clone() });
                let now = self.now_ms();
                if let Some(c) = self.conns.as_mut() {
                    c.mptcp(&ev, now, &mut self.pm, &mut self.journal);
                }
                self.feed(Event::Mptcp(kind));
                !matches!(
                    kind,
                    EventKind::Closed | EventKind::ListenerCreated | EventKind::ListenerClosed
                )
            }
            Ok(StreamItem::Overflow) => {
                self.census.may_have_new();
                self.tallies.error("mptcp_events_lost");
                warn!("MPTCP events were lost (ENOBUFS)");
                let now = self.now_ms();
                if let Some(c) = self.conns.as_mut() {
                    c.resync(now, &mut self.pm, &mut self.journal);
                }
                self.journal.record(
                    unix_ms_now(),
                    What::Note {
                        text: "MPTCP events were lost: the kernel dropped them (ENOBUFS)".into(),
                    },
                );
                false
            }
            Err(e) => {
                self.tallies.error("mptcp_events");
                warn!(error = %e, "reading MPTCP events failed");
                false
            }
        }
    }

    /// Credit the time since the last look to each path's state, and
    /// take the states as they are now.
    fn observe_paths(&mut self) {
        let now = self.now_ms();
        let paths = self.policy.paths();
        if let Some(m) = self.metrics.as_mut() {
            m.observe_paths(&paths, now);
        }
    }

    /// Everything the metrics show, as of now.
    fn metrics_snapshot(&mut self) -> metrics::Snapshot {
        self.observe_paths();
        let c = self.policy.counters();
        let cfg = self.policy.config();
        let (owned, other) = self.policy.endpoint_counts();
        let mut errors = self.tallies.errors.clone();
        errors.insert("health_poll", self.health.failed);
        metrics::Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            mode: cfg.mode.name(),
            path_mode: cfg.policy.mode.name(),
            start_time_seconds: self.started_unix,
            paths: self.metrics.as_ref().map(|m| m.paths()).unwrap_or_default(),
            decisions: self.tallies.decisions.clone(),
            decisions_failed: self.tallies.failed.clone(),
            switches: c.switches.clone(),
            switches_held_back: c.handovers_held_back,
            mptcp_events: c.mptcp_events.clone(),
            probes: c.probes,
            probes_unanswered: c.probes_unanswered,
            probes_unanswered_data_came: c.probes_unanswered_data_came,
            link_events: c.link_events,
            carrier_losses_polled: c.carrier_losses_polled,
            standby_endpoints_kept: c.standby_endpoints_kept,
            backup_flags_resent: c.backup_flags_resent,
            address_events: c.address_events,
            route_events: c.route_events,
            resyncs: c.resyncs,
            reloads: c.reloads,
            health_polls: self.health.rounds,
            errors,
            endpoints_braid: owned as u64,
            endpoints_other: other as u64,
            kernel: braid_kernel::counters::mptcp().ok(),
        }
    }

    fn metrics_text(&mut self) -> String {
        metrics::render(&self.metrics_snapshot())
    }

    /// Write `metrics.textfile`; a failure is logged when it starts and
    /// shown in the status until a write works again.
    fn write_textfile(&mut self) {
        let Some(path) = self.metrics_config.textfile.clone() else {
            return;
        };
        let text = self.metrics_text();
        match metrics_server::write_textfile(&path, &text) {
            Ok(()) => {
                if self.textfile_error.take().is_some() {
                    info!(file = %path.display(), "the metrics textfile is written again");
                }
            }
            Err(e) => {
                self.tallies.error("textfile");
                let msg = e.to_string();
                if self.textfile_error.as_deref() != Some(&msg) {
                    error!(error = %e, file = %path.display(), "cannot write the metrics textfile");
                }
                self.textfile_error = Some(msg);
            }
        }
    }

    /// One health round's subflows, for the per-path totals.
    fn account_subflows(&mut self, subflows: &[braid_kernel::diag::Subflow]) {
        if let Some(m) = self.metrics.as_mut() {
            let counters: Vec<metrics::SubflowCounters> = subflows
                .iter()
                .filter_map(metrics::SubflowCounters::of)
                .collect();
            m.observe_subflows(&counters);
        }
    }

    /// The state the policy's model holds: owned endpoints with their
    /// addresses, changed routes with their old initcwnd.
    fn current_state(&self) -> SavedState {
        let owned = self
            .policy
            .owned_endpoints()
            .iter()
            .map(|e| OwnedEndpoint {
                id: e.id,
                addr: e.addr,
            })
            .collect();
        SavedState::new(owned, self.policy.changed_routes())
    }

    fn save_state(&mut self, s: SavedState) {
        if s == self.saved && self.save_failed.is_none() {
            return;
        }
        match state::store(&self.opts.state_file, &s) {
            Ok(()) => {
                if self.save_failed.take().is_some() {
                    info!(file = %self.opts.state_file.display(), "the state file is written again");
                }
                self.saved = s;
            }
            Err(e) => {
                self.tallies.error("state_file");
                let msg = e.to_string();
                if self.save_failed.as_deref() != Some(&msg) {
                    error!(error = %e, file = %self.opts.state_file.display(), "cannot save the owned endpoints and changed routes: a restart would not know them");
                }
                self.save_failed = Some(msg);
            }
        }
    }

    /// Tell when the kernel has turned active MPTCP off for the namespace
    /// (its blackhole detection, `braid_kernel::counters::active_mptcp_off`):
    /// connections then open as plain TCP and no path manager can help
    /// them. Checked at start, with each periodic resynchronisation, and
    /// at most every `BLACKHOLE_CHECK` while health rounds run: a
    /// fallen-back connection brings no MPTCP event, and an idle daemon
    /// must not wake for it (issue 4). So with no other MPTCP connection
    /// the warning comes within `resync_interval` (30 s). The kernel shows
    /// the count, not whether the window is still open.
    fn check_active_mptcp(&mut self) {
        self.blackholes_read_at = Some(Instant::now());
        let Ok(counters) = braid_kernel::counters::mptcp() else {
            return;
        };
        let times = counters
            .get(braid_kernel::counters::BLACKHOLES)
            .copied()
            .unwrap_or(0);
        if times <= self.blackholes_seen {
            return;
        }
        self.blackholes_seen = times;
        let timeout = braid_kernel::sysctl::read("blackhole_timeout")
            .ok()
            .and_then(|v| v.parse().ok());
        if let Some((problem, fix)) = braid_kernel::counters::active_mptcp_off(times, timeout) {
            let text = format!("{problem}; {fix}");
            warn!("{text}");
            self.journal
                .record(unix_ms_now(), What::Note { text: text.clone() });
            self.active_mptcp_off = Some(text);
        }
    }

    fn log_new_warnings(&mut self) {
        let now = self.policy.warnings();
        for w in now.iter().filter(|w| !self.warnings.contains(w)) {
            warn!("{w}");
        }
        self.warnings = now;
    }

    fn execute(&mut self, a: &Action, id: u64) -> Result<(), Failure> {
        match a {
            Action::AddEndpoint {
                id,
                addr,
                flags,
                ifindex,
            } => self.pm.add_endpoint(&NewEndpoint {
                addr: *addr,
                id: Some(*id),
                port: None,
                flags: EndpointFlags(*flags),
                ifindex: *ifindex,
            })?,
            Action::RemoveEndpoint { id, .. } => {
                match self.pm.del_endpoint(&EndpointSelector::Id(*id)) {
                    // Already gone (someone flushed the table): that is what we wanted.
                    Err(braid_kernel::Error::Kernel { errno, .. })
                        if errno == libc::EINVAL || errno == libc::ENOENT => {}
                    r => r?,
                }
            }
            Action::SetEndpointFlags { id, flags, .. } => self
                .pm
                .set_endpoint_flags(&EndpointSelector::Id(*id), EndpointFlags(*flags))?,
            Action::SetLimits {
                subflows,
                add_addr_accepted,
            } => self
                .pm
                .set_limits(Some(*subflows), Some(*add_addr_accepted))?,
            Action::SetSysctl { name, value } => braid_kernel::sysctl::write(name, value)?,
            Action::ProbePath { .. } | Action::ProbeLoss { .. } => {
                self.send_echo(id, a.clone(), false)?
            }
            Action::SetRouteInitcwnd {
                ifindex,
                table,
                ipv6,
                initcwnd,
            } => {
                rtnl::set_default_route_initcwnd(*ifindex, *table, *ipv6, *initcwnd)?;
            }
        }
        Ok(())
    }

    /// An ICMP echo for a probe action, in the background; its outcome
    /// comes back through `probe_results`.
    fn send_echo(&self, id: u64, action: Action, for_conns: bool) -> Result<(), Failure> {
        let (Action::ProbePath {
            ifindex,
            local,
            remote,
            timeout_ms,
        }
        | Action::ProbeLoss {
            ifindex,
            local,
            remote,
            timeout_ms,
        }) = action
        else {
            return Ok(());
        };
        let method = self.probe.method(remote.is_ipv6()).map_err(|why| Failure {
            error: format!("path probing is off: {why}"),
            quiet: true,
        })?;
        let timeout = Duration::from_millis(timeout_ms);
        let echoes = action.echoes().unwrap_or(1);
        let tx = self.probe_results.clone();
        tokio::spawn(async move {
            let result =
                braid_kernel::probe::echo_with(method, local, remote, ifindex, timeout, echoes)
                    .await;
            let _ = tx.send(ProbeOutcome {
                id,
                action,
                for_conns,
                result,
            });
        });
        Ok(())
    }

    /// A probe's result: fed back to the policy; a probe that could not be
    /// sent is logged once per kind of error, and a refused socket makes
    /// the daemon find out again how (or whether) it can probe.
    fn probe_done(&mut self, o: ProbeOutcome) {
        let (ifindex, remote, loss_echo) = match o.action {
            Action::ProbePath {
                ifindex, remote, ..
            } => (ifindex, remote, false),
            Action::ProbeLoss {
                ifindex, remote, ..
            } => (ifindex, remote, true),
            _ => return,
        };
        match o.result {
            Ok(rtt) if loss_echo => {
                if self.probe_errors.clear() {
                    info!("path probes are sent again");
                }
                debug!(%remote, answered = rtt.is_some(), "loss echo");
                let answered = rtt.is_some();
                if o.for_conns {
                    let now = self.now_ms();
                    if let Some(c) = self.conns.as_mut() {
                        c.loss_echo(ifindex, answered, now, &mut self.pm, &mut self.journal);
                    }
                } else {
                    self.feed(Event::LossEcho { ifindex, answered });
                }
            }
            Ok(rtt) if o.for_conns => {
                if self.probe_errors.clear() {
                    info!("path probes are sent again");
                }
                match rtt {
                    Some(d) => {
                        info!(%remote, rtt_ms = format!("{:.1}", d.as_secs_f64() * 1000.0), "connection check answered")
                    }
                    None => warn!(%remote, "connection check unanswered"),
                }
                self.conn_check_answer(ifindex, remote, Some(rtt.is_some()));
            }
            Ok(rtt) => {
                if self.probe_errors.clear() {
                    info!("path probes are sent again");
                }
                let rtt_ms = rtt.map(|d| d.as_secs_f64() * 1000.0);
                match rtt_ms {
                    Some(ms) => info!(%remote, rtt_ms = format!("{ms:.1}"), "path probe answered"),
                    None => warn!(%remote, "path probe unanswered"),
                }
                self.feed(Event::ProbeResult {
                    ifindex,
                    remote,
                    rtt_ms,
                });
                // The connections' modes act on a stall probe's verdict
                // now; a silence probe's comes with the round the main
                // loop makes at once (`silence_verdict_waiting`).
                let problems = self.policy.path_problems();
                let now = self.now_ms();
                if let Some(c) = self.conns.as_mut() {
                    c.path_problems(problems, now, &mut self.pm, &mut self.journal);
                }
            }
            Err(e) => {
                *self
                    .tallies
                    .failed
                    .entry(metrics::action_name(&o.action))
                    .or_default() += 1;
                let refused = matches!(
                    e.errno(),
                    Some(libc::EPERM | libc::EACCES | libc::EAFNOSUPPORT)
                );
                if refused {
                    let before = self.probe.feature();
                    self.probe.redetect(remote.is_ipv6());
                    let after = self.probe.feature();
                    if after != before {
                        warn!(feature = ?after, "path probing changed: the kernel refused the probe socket");
                    }
                    self.tell_probing();
                }
                if self.probe_errors.first(error_kind(&e)) {
                    warn!(error = %e, %remote, "the path probe could not be sent (logged once until probes work again)");
                }
                // A refused socket says nothing of the path: the check is
                // waived. Any other error (unreachable, no such address)
                // is the path failing to carry the echo: unanswered.
                if o.for_conns && !loss_echo {
                    let answered = if refused { None } else { Some(false) };
                    self.conn_check_answer(ifindex, remote, answered);
                    return;
                }
                let now = self.now_ms();
                self.policy.handle(
                    Event::ActionFailed {
                        id: o.id,
                        action: o.action,
                        error: e.to_string(),
                    },
                    now,
                );
            }
        }
    }

    /// Dump everything and feed it. `routine`: the periodic check, quiet
    /// unless it finds something to put right.
    fn resync(&mut self, why: &str, routine: bool) {
        if routine {
            debug!(why, "resynchronising from full dumps");
        } else {
            warn!(why, "resynchronising from full dumps");
            self.journal.record(
                unix_ms_now(),
                What::Note {
                    text: format!("resynchronising from full dumps: {why}"),
                },
            );
        }
        let now = self.now_ms();
        if let Some(c) = self.conns.as_mut() {
            c.resync(now, &mut self.pm, &mut self.journal);
        }
        match snapshot(&mut self.pm) {
            Ok(ev) => {
                let n = self.feed(ev);
                if routine && n > 0 {
                    warn!(
                        actions = n,
                        "the periodic resynchronisation found the kernel changed behind the daemon's back (an endpoint flush, new limits...) and put it right"
                    );
                }
            }
            Err(e) => error!(error = %e, "resynchronisation failed; will retry"),
        }
    }

    fn reload(&mut self) -> Result<(), String> {
        match config_file::load_settings(&self.opts.config_path, self.opts.config_explicit) {
            Ok(settings) => {
                let cfg = settings.config;
                info!(config = %self.opts.config_path.display(), rules = cfg.apps.len(), "configuration reloaded");
                for n in &settings.notes {
                    warn!("{n}");
                }
                if settings.metrics != self.metrics_config {
                    warn!(
                        "[metrics] changed: the new settings take effect when the daemon restarts"
                    );
                }
                if cfg.pm != self.policy.config().pm {
                    warn!("pm changed: the new path manager takes effect when the daemon restarts");
                }
                if let Some(c) = self.conns.as_mut() {
                    c.reconfigure(&cfg);
                }
                self.probe = ProbeSupport::detect(cfg.policy.probe_silent_paths);
                self.probe_errors.clear();
                log_feature(&self.probe.feature());
                self.tell_probing();
                self.feed(Event::ConfigReloaded(Box::new(cfg)));
                // Whatever else changed behind the daemon's back is put
                // right now, not at the next periodic check.
                self.resync("reload", true);
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "reload refused: the running configuration stays in force");
                Err(e)
            }
        }
    }

    fn health_ok(&mut self) {
        self.health.rounds += 1;
        if self.health_errors.clear() {
            info!("health monitoring works again (sock_diag answers)");
        }
        self.health.last_error = None;
    }

    fn health_failed(&mut self, e: braid_kernel::Error) {
        self.health.rounds += 1;
        self.health.failed += 1;
        if self.health_errors.first(error_kind(&e)) {
            error!(error = %e, "cannot read the subflows (sock_diag): path health is not measured; retrying (logged once until it works)");
        }
        self.health.last_error = Some(e.to_string());
    }

    fn features(&self) -> Vec<Feature> {
        let health = match &self.health.last_error {
            None => Feature::on(
                "health_monitoring",
                "sock_diag: tcp_info of each subflow, polled while MPTCP connections exist",
            ),
            Some(e) => Feature::off(
                "health_monitoring",
                format!(
                    "sock_diag fails ({} of {} rounds): {e}; path health is not measured, still retrying",
                    self.health.failed, self.health.rounds
                ),
            ),
        };
        let state = match &self.save_failed {
            None => Feature::on(
                "state_file",
                format!(
                    "{} (written before each change, atomically)",
                    self.opts.state_file.display()
                ),
            ),
            Some(e) => Feature::off(
                "state_file",
                format!(
                    "cannot write {}: {e}; a restarted daemon would not know the endpoints and routes it changed",
                    self.opts.state_file.display()
                ),
            ),
        };
        let resync = match self.opts.resync_interval {
            Some(d) => Feature::on(
                "periodic_resync",
                format!("full dumps every {} and on reload", humanize(d)),
            ),
            None => Feature::off("periodic_resync", "turned off (--resync-interval-ms 0)"),
        };
        vec![
            self.probe.feature(),
            health,
            self.control_group.clone(),
            state,
            resync,
            self.metrics_feature(),
        ]
    }

    fn metrics_feature(&self) -> Feature {
        const NAME: &str = "metrics";
        let c = &self.metrics_config;
        if !c.enabled() {
            return Feature::off(
                NAME,
                "[metrics] is not configured (listen = \"127.0.0.1:9853\" serves Prometheus; textfile = \"...\" writes for node_exporter)",
            );
        }
        let mut how = Vec::new();
        let mut why = Vec::new();
        match &self.metrics_listen {
            Some(Ok(addr)) => how.push(format!("Prometheus text format at http://{addr}/metrics")),
            Some(Err(e)) => why.push(e.clone()),
            None => {}
        }
        if let Some(f) = &c.textfile {
            match &self.textfile_error {
                None => how.push(format!(
                    "written to {} every {} s",
                    f.display(),
                    c.textfile_interval_s
                )),
                Some(e) => why.push(format!("cannot write {}: {e}", f.display())),
            }
        }
        let join = |v: Vec<String>| (!v.is_empty()).then(|| v.join("; "));
        Feature {
            name: NAME.into(),
            on: !how.is_empty(),
            how: join(how),
            why: join(why),
        }
    }

    fn status(&self) -> DaemonStatus {
        DaemonStatus {
            pid: std::process::id(),
            netns: self.netns,
            config: self.opts.config_path.clone(),
            uptime_s: self.start.elapsed().as_secs(),
            features: self.features(),
            warnings: self
                .shell_warnings
                .iter()
                .chain(&self.active_mptcp_off)
                .cloned()
                .collect(),
            health_polls: self.health.clone(),
            view: self.policy.view(),
            connections: self.conns.as_ref().map(|c| c.view()).unwrap_or_default(),
        }
    }

    fn answer(&mut self, p: Pending) {
        let answer = match p.request {
            Request::Status => Answer::Once(Reply {
                ok: true,
                status: Some(self.status()),
                ..Reply::default()
            }),
            Request::Reload => Answer::Once(match self.reload() {
                Ok(()) => Reply {
                    ok: true,
                    ..Reply::default()
                },
                Err(e) => control::error_reply(e),
            }),
            Request::Journal {
                since_ms,
                follow,
                without_mptcp,
            } => self.journal_answer(since_ms, follow, !without_mptcp),
        };
        let _ = p.reply.send(answer);
    }

    /// The journal's window and, for a follower, its live receiver, taken
    /// together here so that no entry falls between them or comes twice.
    fn journal_answer(&self, since_ms: Option<u64>, follow: bool, with_mptcp: bool) -> Answer {
        let entries = match since_ms {
            Some(ms) => self
                .journal
                .since(unix_ms_now().saturating_sub(ms), with_mptcp),
            None => Vec::new(),
        };
        let reply = Reply {
            ok: true,
            journal: Some(JournalReply {
                netns: self.netns,
                entries,
            }),
            ..Reply::default()
        };
        if !follow {
            return Answer::Once(reply);
        }
        match self.journal.follow() {
            Ok(rx) => Answer::Follow(reply, rx),
            Err(e) => Answer::Once(control::error_reply(e)),
        }
    }
}

fn humanize(d: Duration) -> String {
    if d.as_millis() % 1000 == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

fn log_feature(f: &Feature) {
    match (f.on, &f.why) {
        (true, None) => info!(
            feature = %f.name,
            how = f.how.as_deref().unwrap_or(""),
            "feature on"
        ),
        (true, Some(why)) => {
            warn!(feature = %f.name, how = f.how.as_deref().unwrap_or(""), why = %why, "feature partly on")
        }
        (false, why) => warn!(
            feature = %f.name,
            why = why.as_deref().unwrap_or(""),
            "feature off"
        ),
    }
}

/// One round of health polling.
enum HealthRound {
    /// The MPTCP subflows, whatever their state: every one after a dump,
    /// the ones still there of those the last dump found otherwise (see
    /// `census`).
    Subflows(Vec<braid_kernel::diag::Subflow>),
    /// No MPTCP subflow exists: polling stops until the next MPTCP event.
    NoSubflows,
    /// sock_diag failed: nothing is known, which is not "no subflows".
    Failed(braid_kernel::Error),
}

fn health_round(census: &mut Census, now_ms: u64) -> HealthRound {
    if let Plan::Lookup(keys) = census.plan(now_ms) {
        match braid_kernel::diag::lookup_subflows(&keys) {
            Ok(found) => {
                let left = census.looked_up(&keys, found);
                if !left.is_empty() {
                    return HealthRound::Subflows(left);
                }
            }
            Err(e) => return HealthRound::Failed(e),
        }
    }
    // A dump: planned, or every subflow looked up has gone (to tell "none
    // left" from "others came").
    let subflows = match braid_kernel::diag::subflows() {
        Ok(s) => s,
        Err(e) => return HealthRound::Failed(e),
    };
    census.dumped(&subflows, now_ms);
    if subflows.is_empty() {
        return HealthRound::NoSubflows;
    }
    HealthRound::Subflows(subflows)
}

/// What the host-wide policy measures: the established subflows'
/// tcp_info. With the per-connection path manager on, the host's path
/// manager is the userspace one, which endpoint flags do not reach: no
/// backup flag is compared then.
fn host_samples(shell: &Shell, subflows: &[braid_kernel::diag::Subflow]) -> Vec<SubflowSample> {
    let per_connection = shell.conns.is_some();
    subflow_samples(subflows)
        .map(|mut s| {
            if per_connection {
                s.local_backup = None;
                s.joining = false;
            }
            s
        })
        .collect()
}

/// Each measurable subflow, with its connection's token.
fn subflow_samples(
    subflows: &[braid_kernel::diag::Subflow],
) -> impl Iterator<Item = SubflowSample> + '_ {
    subflows
        .iter()
        // A subflow still in its handshake (or closing) measures nothing
        // about its path yet: its SYN is "unacknowledged data" with no
        // ACK ever received.
        .filter(|sf| sf.state == "established")
        .filter_map(|sf| {
            let t = sf.tcp.as_ref()?;
            Some(SubflowSample {
                local: sf.local,
                remote: sf.remote,
                ifindex: 0,
                rtt_us: t.rtt_us,
                rttvar_us: t.rttvar_us,
                total_retrans: t.total_retrans,
                data_segs_out: t.data_segs_out.unwrap_or(0),
                unacked: t.unacked,
                last_ack_recv_ms: t.last_ack_recv_ms,
                bytes_received: t.bytes_received.unwrap_or(0),
                last_data_recv_ms: t.last_data_recv_ms,
                data_segs_in: t.data_segs_in.unwrap_or(0),
                min_rtt_us: t.min_rtt_us.unwrap_or(0),
                rcv_rtt_us: t.rcv_rtt_us,
                rcv_ooopack: t.rcv_ooopack.unwrap_or(0),
                local_backup: (own_join(sf) == Some(true) || own_first(sf))
                    .then_some(sf.backup_local),
                joining: own_join(sf) == Some(false),
                first: own_first(sf),
                conn: sf.token_local,
            })
        })
}

/// For a subflow this end opened with MP_JOIN, whether the peer has
/// acknowledged the join (None for other subflows): only then does the
/// kernel send it an MP_PRIO.
fn own_join(sf: &braid_kernel::diag::Subflow) -> Option<bool> {
    use braid_kernel::diag::{SUBFLOW_FLAG_FULLY_ESTABLISHED, SUBFLOW_FLAG_JOIN_LOC};
    (sf.flags & SUBFLOW_FLAG_JOIN_LOC != 0)
        .then_some(sf.flags & SUBFLOW_FLAG_FULLY_ESTABLISHED != 0)
}

/// Whether this end opened the connection with this subflow (it sent
/// MP_CAPABLE): the first subflow from its address, which an endpoint's
/// flag change always reaches.
fn own_first(sf: &braid_kernel::diag::Subflow) -> bool {
    use braid_kernel::diag::{SUBFLOW_FLAG_JOIN_LOC, SUBFLOW_FLAG_MCAP_LOC};
    sf.flags & SUBFLOW_FLAG_MCAP_LOC != 0 && sf.flags & SUBFLOW_FLAG_JOIN_LOC == 0
}

/// Run one health round and say when the next is due (None: no polling
/// until an MPTCP event).
fn poll_health(shell: &mut Shell) -> Option<tokio::time::Instant> {
    let now_ms = shell.now_ms();
    match health_round(&mut shell.census, now_ms) {
        HealthRound::Subflows(subflows) => {
            shell.health_ok();
            shell.poll_links();
            shell.account_subflows(&subflows);
            let samples = host_samples(shell, &subflows);
            shell.feed(Event::Health(samples));
            shell.conns_health(&subflows);
            if shell
                .blackholes_read_at
                .is_none_or(|t| t.elapsed() >= BLACKHOLE_CHECK)
            {
                shell.check_active_mptcp();
            }
            Some(next_poll(shell))
        }
        HealthRound::NoSubflows => {
            shell.health_ok();
            shell.account_subflows(&[]);
            None
        }
        HealthRound::Failed(e) => {
            shell.health_failed(e);
            let interval = Duration::from_millis(shell.policy.config().policy.poll_interval_ms);
            Some(tokio::time::Instant::now() + interval.max(FAILED_POLL_RETRY))
        }
    }
}

/// Read the state file; a file that is not state is kept aside and reported.
fn read_saved(path: &std::path::Path, warnings: &mut Vec<String>) -> SavedState {
    match state::load(path) {
        state::Loaded::Missing => SavedState::default(),
        state::Loaded::Read(s) => s,
        state::Loaded::KeptAside(msg) | state::Loaded::Unusable(msg) => {
            error!("{msg}");
            warnings.push(msg);
            SavedState::default()
        }
    }
}

/// Bind the control socket; the feature says whether `control.group` works.
fn bind_control(cfg: &Config) -> Result<(tokio::net::UnixListener, Option<u32>, Feature), String> {
    let path = std::path::Path::new(&cfg.control.socket);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another Braid daemon is running (its control socket {} answers)",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("binding {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    // Root only, until (and unless) the group is given the socket.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("setting the mode of {}: {e}", path.display()))?;
    const NAME: &str = "control_group";
    let Some(name) = &cfg.control.group else {
        let f = Feature::off(
            NAME,
            "control.group is not set: only root may use the control socket",
        );
        return Ok((listener, None, f));
    };
    let g = control::group_id(name)
        .ok_or_else(|| format!("control.group '{name}' does not exist (see /etc/group)"))?;
    // Without CAP_CHOWN a process may give its own file only to a group it
    // is a member of (SupplementaryGroups= in the unit).
    let chown = std::os::unix::fs::chown(path, None, Some(g))
        .and_then(|()| std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)));
    let f = match chown {
        Ok(()) => Feature::on(
            NAME,
            format!(
                "{} belongs to group {name} (gid {g}), mode 0660",
                path.display()
            ),
        ),
        Err(e) => {
            let fix = if e.raw_os_error() == Some(libc::EPERM) {
                format!(": without CAP_CHOWN the daemon can give the socket only to a group it is a member of; add SupplementaryGroups={name} to the unit (systemctl edit braid)")
            } else {
                String::new()
            };
            Feature::off(
                NAME,
                format!(
                    "cannot give {} to group {name} (gid {g}): {e}{fix}; only root may use it",
                    path.display()
                ),
            )
        }
    };
    let group = f.on.then_some(g);
    Ok((listener, group, f))
}

/// When the next health round is due: after the poll interval, or sooner
/// when a path waiting for an ACK would reach its stall threshold.
fn next_poll(shell: &Shell) -> tokio::time::Instant {
    let interval = shell.policy.config().policy.poll_interval_ms.max(10);
    let ms = match shell.policy.health_check_due_in_ms() {
        Some(due) => due.clamp(MIN_POLL_MS, interval),
        None => interval,
    };
    tokio::time::Instant::now() + Duration::from_millis(ms)
}

/// Health rounds never come closer together than this.
const MIN_POLL_MS: u64 = 5;

/// The metrics listener, or why there is none (None: not configured).
async fn bind_metrics(
    c: &MetricsConfig,
) -> (
    Option<tokio::net::TcpListener>,
    Option<Result<SocketAddr, String>>,
) {
    let Some(addr) = c.listen_addr() else {
        return (None, None);
    };
    match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => {
            let at = l.local_addr().unwrap_or(addr);
            info!(listen = %at, "metrics served at http://{at}/metrics");
            (Some(l), Some(Ok(at)))
        }
        Err(e) => {
            let why = format!("cannot listen on {addr} (metrics.listen): {e}");
            error!("{why}; metrics are not served");
            (None, Some(Err(why)))
        }
    }
}

/// Sleep until `at`; forever if there is no deadline.
async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Clients of one kind served at once: at most `max`, each holding a slot.
struct Gate {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
    what: &'static str,
    busy_logged: Option<Instant>,
}

impl Gate {
    fn new(max: usize, what: &'static str) -> Gate {
        Gate {
            slots: Arc::new(tokio::sync::Semaphore::new(max)),
            max,
            what,
            busy_logged: None,
        }
    }

    /// A slot for one more client, or None when all are taken (logged at
    /// most once a minute; the caller tells the client and closes).
    fn admit(&mut self) -> Option<tokio::sync::OwnedSemaphorePermit> {
        match self.slots.clone().try_acquire_owned() {
            Ok(slot) => Some(slot),
            Err(_) => {
                if self
                    .busy_logged
                    .is_none_or(|t| t.elapsed() > Duration::from_secs(60))
                {
                    warn!(
                        max = self.max,
                        "{} refused: too many at once (logged at most once a minute)", self.what
                    );
                    self.busy_logged = Some(Instant::now());
                }
                None
            }
        }
    }
}

/// What the daemon listens to, besides the shell. The fields are in the
/// reverse of the order they are made in: they are dropped, after the
/// shell, as locals of one function would be.
struct Io {
    probe_rx: tokio::sync::mpsc::UnboundedReceiver<ProbeOutcome>,
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
    sighup: tokio::signal::unix::Signal,
    socket_path: PathBuf,
    group: Option<u32>,
    listener: tokio::net::UnixListener,
    metrics_listener: Option<tokio::net::TcpListener>,
    mptcp: EventStream,
    monitor: Monitor,
}

/// Everything up to the daemon's readiness: the configuration, the kernel's
/// state, the sockets and signals, and the shell around the policy.
async fn start(opts: Options) -> Result<(Io, Shell), String> {
    let settings = config_file::load_settings(&opts.config_path, opts.config_explicit)?;
    let (config, metrics_config) = (settings.config, settings.metrics);
    for n in &settings.notes {
        warn!("{n}");
    }
    let mut shell_warnings = settings.notes;
    let saved = read_saved(&opts.state_file, &mut shell_warnings);
    let mut pm = PathManager::open().map_err(|e| e.to_string())?;
    // Subscribe before the first dump so no change falls in between.
    let monitor = Monitor::subscribe(opts.netlink_rcvbuf).map_err(|e| e.to_string())?;
    let mptcp = EventStream::subscribe().map_err(|e| e.to_string())?;
    // Metrics are an extra: a port that cannot be had turns them off (the
    // status says why), it does not stop the path manager. Bound before
    // the control socket, whose answer tells that the daemon is up.
    let (metrics_listener, metrics_listen) = bind_metrics(&metrics_config).await;
    let (listener, group, control_group) = bind_control(&config)?;
    let socket_path = PathBuf::from(&config.control.socket);
    let sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    info!(config = %opts.config_path.display(), mode = ?config.mode, "braid daemon starting");
    let probe = ProbeSupport::detect(config.policy.probe_silent_paths);
    log_feature(&probe.feature());
    if config.control.group.is_some() {
        log_feature(&control_group);
    }
    let first = snapshot(&mut pm).map_err(|e| e.to_string())?;
    // Adopt what the file names and the kernel still has, address and all.
    let (adopted, notes) = match &first {
        Event::Snapshot { endpoints, .. } => saved.adopt(endpoints),
        _ => unreachable!(),
    };
    for n in notes {
        warn!("{n}");
    }
    if !adopted.is_empty() {
        info!(ids = ?adopted, "adopted the endpoints a previous run made");
    }
    // Before the first decision, so no connection meets the wrong manager.
    let conns = match config.pm {
        PmKind::Userspace => Some(ConnShell::start(&config)?),
        PmKind::Kernel => None,
    };
    let mut policy = Policy::new(config, adopted);
    policy.set_probing(probe.v4.is_ok(), probe.v6.is_ok());
    policy.adopt_changed_routes(saved.changed_routes.clone());
    let (probe_results, probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut shell = Shell {
        policy,
        pm,
        start: Instant::now(),
        opts,
        saved,
        save_failed: None,
        probe_results,
        probe,
        probe_errors: LoggedOnce::default(),
        control_group,
        health: HealthPolls::default(),
        health_errors: LoggedOnce::default(),
        census: Census::default(),
        links_read_at_ms: None,
        shell_warnings,
        warnings: Vec::new(),
        blackholes_seen: 0,
        blackholes_read_at: None,
        active_mptcp_off: None,
        tallies: Tallies::default(),
        metrics: metrics_config.enabled().then(metrics::Accounts::default),
        metrics_config,
        metrics_listen,
        textfile_error: None,
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        journal: Journal::default(),
        netns: braid_kernel::netns::current_inode(),
        conns,
    };
    shell.journal.record(
        unix_ms_now(),
        What::Note {
            text: format!("daemon started (pid {})", std::process::id()),
        },
    );
    shell.feed(first);
    // Connections older than this daemon get their mode and subflows too.
    let now = shell.now_ms();
    if let Some(c) = shell.conns.as_mut() {
        c.resync(now, &mut shell.pm, &mut shell.journal);
    }
    if shell.metrics.is_some() {
        log_feature(&shell.metrics_feature());
    }
    shell.check_active_mptcp();
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!("ready");
    Ok((
        Io {
            probe_rx,
            sigint,
            sigterm,
            sighup,
            socket_path,
            group,
            listener,
            metrics_listener,
            mptcp,
            monitor,
        },
        shell,
    ))
}

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> Result<(), String> {
    let (mut io, mut shell) = start(opts).await?;
    let metrics_listener = &io.metrics_listener;
    // Health is polled only while MPTCP connections exist: an MPTCP event
    // starts the timer, a round without subflows stops it. A failing
    // round is retried: an error is not "no subflows".
    let mut poll = poll_health(&mut shell);
    let resync_every = shell.opts.resync_interval;
    let next_resync = |now: tokio::time::Instant| resync_every.map(|d| now + d);
    let mut resync_at = next_resync(tokio::time::Instant::now());

    // Control clients: each in its own task, a bounded number at once.
    let (ctl_tx, mut ctl_rx) = tokio::sync::mpsc::channel::<Pending>(control::MAX_CLIENTS);
    let mut control_gate = Gate::new(control::MAX_CLIENTS, "control clients");
    // Scrapers likewise; the textfile is written at once, then every interval.
    let (scrape_tx, mut scrape_rx) =
        tokio::sync::mpsc::channel::<metrics_server::Scrape>(metrics_server::MAX_SCRAPERS);
    let mut scrape_gate = Gate::new(metrics_server::MAX_SCRAPERS, "metrics scrapers");
    let textfile_every = Duration::from_secs(shell.metrics_config.textfile_interval_s);
    let mut textfile_at = shell
        .metrics_config
        .textfile
        .as_ref()
        .map(|_| tokio::time::Instant::now());

    loop {
        let tick = sleep_until(poll);
        let resync_tick = sleep_until(resync_at);
        // The policy's own deadlines (a returning carrier has held long
        // enough, a refused write's back-off is over...): no event brings them.
        let wake = sleep_until(shell.policy_wake());
        let textfile_tick = sleep_until(textfile_at);
        let scraper = async {
            match &metrics_listener {
                Some(l) => l.accept().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tick => poll = poll_health(&mut shell),
            _ = wake => {
                shell.feed(Event::Tick);
                let now = shell.now_ms();
                if let Some(c) = shell.conns.as_mut() {
                    c.tick(now, &mut shell.pm, &mut shell.journal);
                }
            }
            _ = resync_tick => {
                shell.resync("periodic check", true);
                shell.check_active_mptcp();
                resync_at = next_resync(tokio::time::Instant::now());
            }
            Some(outcome) = io.probe_rx.recv() => {
                shell.probe_done(outcome);
                // An unanswered probe is judged by a fresh round (did data
                // come while it waited?); an answered one may bring the
                // next probe of the silence closer than the timer.
                if shell.policy.silence_verdict_waiting() {
                    poll = poll_health(&mut shell);
                } else if let Some(at) = poll {
                    poll = Some(at.min(next_poll(&shell)));
                }
            }
            change = io.monitor.next() => {
                if shell.take_change(change) {
                    resync_at = next_resync(tokio::time::Instant::now());
                }
            }
            item = io.mptcp.next() => {
                if shell.take_mptcp(item) && poll.is_none() {
                    poll = Some(next_poll(&shell));
                }
            }
            conn = io.listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                match control_gate.admit() {
                    Some(slot) => {
                        let to_loop = ctl_tx.clone();
                        let group = io.group;
                        tokio::spawn(async move {
                            control::serve(stream, group, to_loop).await;
                            drop(slot);
                        });
                    }
                    // Never wait for a slot here: tell the client and close.
                    None => { let _ = stream.try_write(&control::busy_line()); }
                }
            }
            Some(pending) = ctl_rx.recv() => shell.answer(pending),
            conn = scraper => {
                let Ok((stream, _)) = conn else { continue };
                match scrape_gate.admit() {
                    Some(slot) => {
                        let to_loop = scrape_tx.clone();
                        tokio::spawn(async move {
                            metrics_server::serve(stream, to_loop).await;
                            drop(slot);
                        });
                    }
                    None => { let _ = stream.try_write(&metrics_server::busy_response()); }
                }
            }
            Some(reply) = scrape_rx.recv() => { let _ = reply.send(shell.metrics_text()); }
            _ = textfile_tick => {
                shell.write_textfile();
                textfile_at = Some(tokio::time::Instant::now() + textfile_every);
            }
            _ = io.sighup.recv() => { let _ = shell.reload(); }
            _ = io.sigterm.recv() => break,
            _ = io.sigint.recv() => break,
        }
        shell.send_conn_probes();
        // A decision made on any event (a link change, a command, a
        // deadline) may want the next health round sooner: a flag change
        // to check on a join.
        if let Some(at) = poll {
            poll = Some(at.min(next_poll(&shell)));
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!("stopping");
    shell.feed(Event::Stopping);
    if let Some(c) = shell.conns.as_mut() {
        c.stop();
    }
    let _ = std::fs::remove_file(&io.socket_path);
    Ok(())
}
