//! Per-connection path management over the kernel's userspace path
//! manager (`net.mptcp.path_manager = "userspace"`): each MPTCP connection
//! gets the mode of the first rule that matches its owner and destination
//! (handover, interactive, aggregate), subflows on the usable local
//! addresses that mode asks for with per-subflow backup flags, and a new
//! subflow when one closes while its address is still usable (the
//! in-kernel path manager never re-creates one). A server announces its
//! other addresses to each connection.
//!
//! Sans-IO like [`crate::Policy`]: events in with the time, decisions out,
//! each with its reason. Which local addresses are usable is the host-wide
//! policy's call; it arrives here as [`ConnEvent::Paths`].
//!
//! Health is the connection's own: its subflows' tcp_info, through the
//! same [`HealthTracker`] the host-wide policy pools every connection in,
//! plus what the host-wide policy knows about a path (a probe went
//! unanswered): a receiver cannot tell a dead path from an idle server
//! on its own.

pub mod rules;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::backup_watch::{observe_backups, BackupWatch, IGNORED_MAX_TRIES};
use crate::budget::SwitchBudget;
use crate::config::{PathMode, PolicyConfig, Role};
use crate::health::{
    left_for_loss_wait, CheckDue, CheckVerdict, HealthTracker, PathProblem, ProblemKind,
    SubflowSample,
};
use crate::time::{backoff_ms, Clock, Time};
use rules::{first_match, AppRule, Owner};

/// A subflow that closes is re-created at once; one that closes within
/// `STABLE_MS` of being established (again), after a back-off doubling
/// from `RETRY_FIRST_MS` to `RETRY_MAX_MS`: a path that accepts the join
/// and resets the subflow at once must not be hammered, while a subflow
/// that worked for a while is simply replaced.
const STABLE_MS: u64 = 1_000;
const RETRY_FIRST_MS: u64 = 1_000;
const RETRY_MAX_MS: u64 = 60_000;
/// A path a connection left because of its measurements (stall, loss,
/// unreachable) is not taken back on its RTT or its healing for this long,
/// doubled for each further time within `SUSPECT_MEMORY_MS`, at most
/// `SUSPECT_MAX_MS`: a standby path carries nothing, so its loss is not
/// measured and fades; without this a lossy primary is left and retaken
/// over and over.
const SUSPECT_FIRST_MS: u64 = 30_000;
/// A create whose subflow neither came up nor failed within this long is
/// forgotten (a lost event must not block the address for good).
const CREATE_TIMEOUT_MS: u64 = 10_000;
const SUSPECT_MAX_MS: u64 = 600_000;
const SUSPECT_MEMORY_MS: u64 = 600_000;

/// One usable local address and the path it belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPath {
    pub ifindex: u32,
    pub name: String,
    pub addr: IpAddr,
    pub role: Role,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnEvent {
    /// The usable local addresses, after any change.
    Paths(Vec<LocalPath>),
    Created {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
        owner: Owner,
    },
    /// A connection the kernel has and this policy never heard of: its
    /// CREATED event was missed (the daemon started after it, or events
    /// were lost). Its subflows as the kernel lists them, with the backup
    /// flag this side gave each.
    Adopted {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
        owner: Owner,
        subflows: Vec<AdoptedSubflow>,
    },
    /// Fully established: subflows can join now.
    Established {
        token: u32,
    },
    /// A subflow is up. (The event's backup attribute is the peer's
    /// MP_PRIO, not ours: what this side asked for is known here.)
    SubEstablished {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    },
    SubClosed {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    },
    Closed {
        token: u32,
    },
    /// An action the shell could not carry out.
    Failed {
        action: ConnAction,
        error: String,
    },
    /// A round of measurements: each connection's subflows (`conn` its
    /// token, `ifindex` filled in), and the paths the host-wide policy
    /// found failing, by interface, with why.
    Health {
        samples: Vec<SubflowSample>,
        path_problems: BTreeMap<u32, PathProblem>,
    },
    /// The host-wide policy's failing paths changed between rounds of
    /// measurements (a probe went unanswered): acted on at once.
    PathProblems(BTreeMap<u32, PathProblem>),
    /// The answer to `ConnAction::ProbeLoss`: whether the echo came back.
    LossEcho {
        ifindex: u32,
        answered: bool,
    },
    /// The answer to `ConnAction::CheckPath`: whether an echo came back;
    /// None if the check could not be sent (probing is off).
    CheckAnswer {
        ifindex: u32,
        remote: IpAddr,
        answered: Option<bool>,
    },
    /// Time passed (see [`ConnPolicy::wake_at_ms`]).
    Tick,
}

/// One subflow of an adopted connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdoptedSubflow {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The address id this side gave it (0: the initial subflow's).
    pub local_id: u8,
    pub backup: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum ConnAction {
    /// SUBFLOW_CREATE from `local` (address id `local_id` on this connection).
    CreateSubflow {
        token: u32,
        local_id: u8,
        local: IpAddr,
        remote: SocketAddr,
        backup: bool,
    },
    /// SET_FLAGS on one subflow: MP_PRIO.
    SetBackup {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        backup: bool,
    },
    /// ANNOUNCE (ADD_ADDR) of a server address to one connection.
    Announce { token: u32, id: u8, addr: IpAddr },
    /// REMOVE of local address id `id` (`addr`) on one connection: the
    /// peer hears RM_ADDR and closes its subflows from it, and this side's
    /// are closed; what was in flight on them is resent on the others at
    /// once instead of after their timeouts.
    Remove { token: u32, id: u8, addr: IpAddr },
    /// SUBFLOW_DESTROY of one subflow: what it had in flight is sent again
    /// on the others at once (a REMOVE tells the peer, not this side's
    /// sender).
    DestroySubflow {
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
    },
    /// One echo from `local` to `remote` out of `ifindex`, answered with
    /// `ConnEvent::LossEcho`: a path some connection left for loss carries
    /// none of its traffic, so only echoes tell whether it is still lossy.
    /// One per path and interval, whatever the number of connections.
    ProbeLoss {
        ifindex: u32,
        local: IpAddr,
        remote: IpAddr,
        timeout_ms: u64,
    },
    /// A path probe (several echoes) from `local` to `remote` out of
    /// `ifindex`, answered with `ConnEvent::CheckAnswer`: a primary that
    /// stood by carried nothing, so it shows it still works before a
    /// connection gives it traffic back.
    CheckPath {
        ifindex: u32,
        local: IpAddr,
        remote: IpAddr,
        timeout_ms: u64,
    },
}

impl std::fmt::Display for ConnAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ConnAction::CreateSubflow {
                token,
                local_id,
                local,
                remote,
                backup,
            } => write!(
                f,
                "token {token:08x}: create subflow {local} (id {local_id}) -> {remote}{}",
                if *backup { " backup" } else { "" }
            ),
            ConnAction::SetBackup {
                token,
                local,
                remote,
                backup,
            } => write!(
                f,
                "token {token:08x}: subflow {local} -> {remote} {}",
                if *backup { "backup" } else { "nobackup" }
            ),
            ConnAction::Announce { token, id, addr } => {
                write!(f, "token {token:08x}: announce {addr} id {id}")
            }
            ConnAction::Remove { token, id, addr } => {
                write!(f, "token {token:08x}: remove {addr} id {id}")
            }
            ConnAction::DestroySubflow {
                token,
                local,
                remote,
            } => write!(f, "token {token:08x}: destroy subflow {local} -> {remote}"),
            ConnAction::ProbeLoss {
                ifindex,
                local,
                remote,
                timeout_ms,
            } => f.write_str(&crate::model::loss_echo_text(
                *ifindex,
                *local,
                *remote,
                *timeout_ms,
            )),
            ConnAction::CheckPath {
                ifindex,
                local,
                remote,
                timeout_ms,
            } => crate::model::Action::ProbePath {
                ifindex: *ifindex,
                local: *local,
                remote: *remote,
                timeout_ms: *timeout_ms,
            }
            .fmt(f),
        }
    }
}

impl ConnAction {
    /// The connection it is for (0: a path's, for every connection).
    pub fn token(&self) -> u32 {
        match self {
            ConnAction::CreateSubflow { token, .. }
            | ConnAction::SetBackup { token, .. }
            | ConnAction::Announce { token, .. }
            | ConnAction::Remove { token, .. }
            | ConnAction::DestroySubflow { token, .. } => *token,
            ConnAction::ProbeLoss { .. } | ConnAction::CheckPath { .. } => 0,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnDecision {
    #[serde(flatten)]
    pub action: ConnAction,
    pub reason: String,
}

/// A connection as `braid conns` and `braid status` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnView {
    pub token: u32,
    pub remote: SocketAddr,
    pub mode: PathMode,
    /// Which rule gave the mode ("default" when none matched).
    pub rule: String,
    pub subflows: usize,
}

#[derive(Debug, Clone)]
struct Subflow {
    local: SocketAddr,
    remote: SocketAddr,
    backup: bool,
    since: Time,
}

#[derive(Debug, Clone, Default)]
struct Retry {
    /// Closures in a row, each within `STABLE_MS` of its creation.
    failures: u32,
    at: Option<Time>,
}

struct Conn {
    remote: SocketAddr,
    initial_local: SocketAddr,
    server_side: bool,
    mode: PathMode,
    rule: String,
    established: bool,
    /// Established subflows by (local, remote) address: a client opens one
    /// per local address, a server's come from the client's addresses.
    subflows: BTreeMap<(SocketAddr, SocketAddr), Subflow>,
    /// Creates asked for and not yet established or failed, with the
    /// backup flag asked for.
    creating: BTreeMap<IpAddr, (Time, bool)>,
    retries: BTreeMap<IpAddr, Retry>,
    /// Address ids given on this connection (0 is the initial subflow's).
    ids: BTreeMap<IpAddr, u8>,
    /// This connection's subflows measured, by interface.
    health: HealthTracker,
    /// Handover: the secondaries carry this connection.
    failed_over: bool,
    /// Interactive: the local address carrying this connection, why, and
    /// whether it was chosen on measurements (a blind choice is replaced as
    /// soon as RTTs are known).
    active: Option<(IpAddr, String, bool)>,
    last_switch: Time,
    /// Switches made on measurements, under `policy.max_handovers`.
    budget: SwitchBudget,
    /// Paths left on measurements: until when they are not taken back,
    /// and how many times in a row.
    suspect: BTreeMap<IpAddr, (Time, u32)>,
    /// Local addresses to remove from the connection (REMOVE) at the next
    /// reconcile, with why: gone, or a dead primary handed over from.
    to_remove: BTreeMap<IpAddr, String>,
    /// Local addresses removed and not used by a subflow since.
    removed: BTreeSet<IpAddr>,
    /// Local addresses that left the usable paths, with their interface
    /// and why: removed at the next reconcile, unless their subflows
    /// stand by idle while another carries the connection (closing them
    /// would make both kernels resend all data in flight); those are kept
    /// for as long as that holds.
    leaving: BTreeMap<IpAddr, (u32, String)>,
    /// Backup subflows watched for a peer that still sends on them.
    backups_watched: BTreeMap<(SocketAddr, SocketAddr), BackupWatch>,
    /// Backup subflows whose peer is to be told again at the next
    /// reconcile, with why.
    tell_again: Vec<((SocketAddr, SocketAddr), String)>,
    /// Interactive: interfaces left for loss whose data waits for an ACK
    /// past TCP's own expectation, their subflows closed for this wait
    /// (`ConnPolicy::lossy_waits`).
    lossy_waits: BTreeSet<u32>,
}

impl Conn {
    /// `addr` was left on measurements: not trusted again for a while.
    fn left_for_cause(&mut self, addr: IpAddr, now: Time) {
        let strikes = match self.suspect.get(&addr) {
            Some((until, n)) if now.since(*until) < SUSPECT_MEMORY_MS => n + 1,
            _ => 1,
        };
        let wait = backoff_ms(SUSPECT_FIRST_MS, SUSPECT_MAX_MS, strikes);
        self.suspect.insert(addr, (now.plus(wait), strikes));
    }

    /// How much longer `addr` is not trusted, if it is not.
    fn suspected(&self, addr: IpAddr, now: Time) -> Option<u64> {
        self.suspect
            .get(&addr)
            .map(|(until, _)| now.until(*until))
            .filter(|ms| *ms > 0)
    }
}

impl Conn {
    /// REMOVE (and SUBFLOW_DESTROY) of the addresses asked for: those that
    /// left the usable paths, and dead primaries handed over from; each
    /// once.
    fn removals(&mut self, token: u32, out: &mut Vec<ConnDecision>) {
        let left: Vec<(IpAddr, u32, String)> = self
            .leaving
            .iter()
            .map(|(a, (i, why))| (*a, *i, why.clone()))
            .collect();
        for (addr, ifindex, reason) in left {
            if self.stands_by_idle(addr, ifindex) {
                continue;
            }
            self.leaving.remove(&addr);
            if self.subflows.keys().any(|(l, _)| l.ip() == addr) {
                self.to_remove.insert(addr, reason);
            }
        }
        for (addr, reason) in std::mem::take(&mut self.to_remove) {
            let Some(id) = self.ids.get(&addr).copied() else {
                continue;
            };
            // Never the connection's last subflows: with nothing else to
            // carry it, removing them would end it; the path may come back.
            let carried_elsewhere = self
                .subflows
                .keys()
                .any(|(l, _)| l.ip() != addr && !self.removed.contains(&l.ip()));
            if !carried_elsewhere || !self.removed.insert(addr) {
                continue;
            }
            out.push(ConnDecision {
                action: ConnAction::Remove { token, id, addr },
                reason: reason.clone(),
            });
            for (local, remote) in self.subflows.keys().filter(|(l, _)| l.ip() == addr) {
                out.push(ConnDecision {
                    action: ConnAction::DestroySubflow {
                        token,
                        local: *local,
                        remote: *remote,
                    },
                    reason: format!("{reason}; its data in flight goes on the other subflows"),
                });
            }
        }
    }

    /// Whether this connection's subflows from `addr` (on interface
    /// `ifindex`) are all backups carrying nothing (per this connection's
    /// measurements) while a subflow from another address carries it:
    /// what a standby that lost its path looks like, and closing it would
    /// cost a resend of everything in flight (`Policy::keep_standby`).
    fn stands_by_idle(&self, addr: IpAddr, ifindex: u32) -> bool {
        let mut on = self
            .subflows
            .values()
            .filter(|s| s.local.ip() == addr)
            .peekable();
        let all_backup = on.peek().is_some() && on.all(|s| s.backup);
        let carried = self.subflows.values().any(|s| {
            let other = s.local.ip();
            other != addr
                && !s.backup
                && !self.removed.contains(&other)
                && !self.leaving.contains_key(&other)
                && !self.to_remove.contains_key(&other)
        });
        let idle = self
            .health
            .paths
            .get(&ifindex)
            .is_some_and(|h| h.measured() && h.idle());
        all_backup && carried && idle
    }

    /// Watch this connection's backup subflows (`BackupWatch`): a peer
    /// that still sends a large share of the connection's data on one
    /// most likely lost the MP_PRIO that told it, and is told again at the
    /// next reconcile. With the userspace path manager, SET_FLAGS sends
    /// the MP_PRIO even when the flag does not change, so the same flag is
    /// set again (no flip, unlike endpoints). What is left as it is goes
    /// into `notes`.
    fn watch_backups(&mut self, now: Time, samples: &[SubflowSample], notes: &mut Vec<String>) {
        self.tell_again.clear();
        let backups: Vec<&SubflowSample> = samples
            .iter()
            .filter(|s| s.local_backup == Some(true) && !s.joining)
            .filter(|s| {
                self.subflows
                    .get(&(s.local, s.remote))
                    .is_some_and(|sf| sf.backup)
            })
            .collect();
        for (s, seen) in observe_backups(&mut self.backups_watched, now, samples, &backups) {
            let key = (s.local, s.remote);
            let Some(w) = self.backups_watched.get_mut(&key) else {
                continue;
            };
            match w.try_again(now, s) {
                Some(attempt) => self.tell_again.push((
                    key,
                    format!(
                        "the subflow {} -> {} is a backup at this end, yet its peer sent {seen} while another path carried data: the MP_PRIO that told it (sent once, on this path) was most likely lost; it is sent again (try {attempt} of {IGNORED_MAX_TRIES})",
                        s.local, s.remote
                    ),
                )),
                None if w.first_note() => notes.push(format!(
                    "the peer of {} -> {} still sends on it after its backup flag was sent again {IGNORED_MAX_TRIES} times: left as it is (a peer may ignore MP_PRIO)",
                    s.local, s.remote
                )),
                None => {}
            }
        }
    }

    /// The address id for a new subflow or announcement from `addr`.
    /// Never 0: that is the initial subflow's, and SUBFLOW_CREATE refuses
    /// it ("missing local addr id"), so re-opening the initial address
    /// takes a new id.
    fn id_for(&mut self, addr: IpAddr) -> Option<u8> {
        if let Some(id) = self.ids.get(&addr).filter(|id| **id != 0) {
            return Some(*id);
        }
        let id = (1..=u8::MAX).find(|i| !self.ids.values().any(|x| x == i))?;
        self.ids.insert(addr, id);
        Some(id)
    }
}

pub struct ConnPolicy {
    rules: Vec<AppRule>,
    default_mode: PathMode,
    /// Thresholds and hold times, as for the host-wide modes.
    tuning: PolicyConfig,
    /// The host-wide policy's failing paths, by interface.
    path_problems: BTreeMap<u32, PathProblem>,
    paths: Vec<LocalPath>,
    conns: BTreeMap<u32, Conn>,
    clock: Clock,
    /// What was found and left as it is, for the log (`take_notes`).
    notes: Vec<String>,
}

impl ConnPolicy {
    pub fn new(rules: Vec<AppRule>, tuning: PolicyConfig) -> ConnPolicy {
        ConnPolicy {
            rules,
            default_mode: tuning.mode,
            tuning,
            path_problems: BTreeMap::new(),
            paths: Vec::new(),
            conns: BTreeMap::new(),
            clock: Clock::default(),
            notes: Vec::new(),
        }
    }

    pub fn handle(&mut self, ev: ConnEvent, now_ms: u64) -> Vec<ConnDecision> {
        let now = self.clock.advance(now_ms);
        let mut out = Vec::new();
        let (tokens, why): (Vec<u32>, String) = match ev {
            ConnEvent::Paths(paths) => {
                if !self.paths_changed(paths) {
                    return out;
                }
                (
                    self.conns.keys().copied().collect(),
                    "the usable paths changed".into(),
                )
            }
            ConnEvent::Created {
                token,
                local,
                remote,
                server_side,
                owner,
            } => {
                // Already adopted from a dump that came before this event.
                if !self.conns.contains_key(&token) {
                    self.created(token, local, remote, server_side, &owner);
                }
                return out;
            }
            ConnEvent::Adopted {
                token,
                local,
                remote,
                server_side,
                owner,
                subflows,
            } => {
                if !self.adopted(token, local, remote, server_side, &owner, subflows) {
                    return out;
                }
                (
                    vec![token],
                    "adopted (its creation was missed: the daemon started after it, or events were lost)".into(),
                )
            }
            ConnEvent::Established { token } => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return out;
                };
                // Adopted from a dump before this event came: the dump
                // listed its subflows as they are.
                if c.established {
                    return out;
                }
                c.established = true;
                // The initial subflow, until an event says more.
                let (local, remote) = (c.initial_local, c.remote);
                c.subflows.entry((local, remote)).or_insert(Subflow {
                    local,
                    remote,
                    backup: false,
                    since: now,
                });
                (vec![token], "the connection is established".into())
            }
            ConnEvent::SubEstablished {
                token,
                local,
                remote,
            } => {
                if !self.subflow_up(token, local, remote) {
                    return out;
                }
                (vec![token], "a subflow was established".into())
            }
            ConnEvent::SubClosed {
                token,
                local,
                remote,
            } => {
                self.subflow_closed(token, local, remote);
                (vec![token], format!("the subflow from {local} closed"))
            }
            ConnEvent::Closed { token } => {
                self.conns.remove(&token);
                return out;
            }
            // The shell logs the error; here the model goes back to what
            // the kernel has, and a create waits for its back-off.
            ConnEvent::Failed { action, error: _ } => {
                self.failed(&action);
                return out;
            }
            ConnEvent::Health {
                samples,
                path_problems,
            } => {
                self.measured(samples, path_problems);
                self.loss_echoes_due(&mut out);
                (self.conns.keys().copied().collect(), "measurements".into())
            }
            ConnEvent::PathProblems(problems) => {
                if std::mem::replace(&mut self.path_problems, problems) == self.path_problems {
                    return out;
                }
                (
                    self.conns.keys().copied().collect(),
                    "the host's verdict on a path changed".into(),
                )
            }
            // Counted into each connection's view of the path at the next
            // round of measurements.
            ConnEvent::LossEcho { ifindex, answered } => {
                self.loss_echo(ifindex, answered);
                return out;
            }
            ConnEvent::CheckAnswer {
                ifindex,
                remote,
                answered,
            } => (
                self.check_answer(ifindex, remote, answered),
                "a check of a path standing by ended".into(),
            ),
            ConnEvent::Tick => (self.retries_due(), "its back-off is over".into()),
        };
        for t in tokens {
            self.reconcile(t, &why, &mut out);
        }
        self.checks_due(&mut out);
        out
    }

    /// A new connection: its owner's rule gives its mode.
    fn created(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
        owner: &Owner,
    ) {
        let now = self.clock.now();
        // What `braid run --mode` asked for comes before the rules: it is
        // the most specific wish there is.
        let (mode, rule) = match (
            rules::run_mode(owner),
            first_match(&self.rules, owner, remote),
        ) {
            (Some((mode, cgroup)), _) => (
                mode,
                format!("braid run --mode {} (cgroup {cgroup})", mode.name()),
            ),
            (None, Some((i, r))) => (r.mode, format!("rule {} ({})", i + 1, r.describe())),
            (None, None) => (self.default_mode, "default".to_string()),
        };
        let mut ids = BTreeMap::new();
        ids.insert(local.ip(), 0);
        self.conns.insert(
            token,
            Conn {
                remote,
                initial_local: local,
                server_side,
                mode,
                rule,
                established: false,
                subflows: BTreeMap::new(),
                creating: BTreeMap::new(),
                retries: BTreeMap::new(),
                ids,
                health: HealthTracker::default(),
                failed_over: false,
                active: None,
                last_switch: now,
                budget: SwitchBudget::default(),
                suspect: BTreeMap::new(),
                to_remove: BTreeMap::new(),
                removed: BTreeSet::new(),
                leaving: BTreeMap::new(),
                backups_watched: BTreeMap::new(),
                tell_again: Vec::new(),
                lossy_waits: BTreeSet::new(),
            },
        );
    }

    /// New usable paths; false if nothing changed. The connections'
    /// subflows on addresses that left them are to be removed.
    fn paths_changed(&mut self, paths: Vec<LocalPath>) -> bool {
        if paths == self.paths {
            return false;
        }
        // Only addresses that were usable and no longer are: one
        // Braid never managed (loopback, a VPN) is left alone. They go at
        // the connection's next reconcile (`Conn::removals`), unless they
        // stand by idle there.
        let left: Vec<(IpAddr, u32)> = self
            .paths
            .iter()
            .filter(|p| !paths.iter().any(|q| q.addr == p.addr))
            .map(|p| (p.addr, p.ifindex))
            .collect();
        for c in self.conns.values_mut() {
            c.leaving.retain(|a, _| !paths.iter().any(|p| p.addr == *a));
            for (a, ifindex) in &left {
                if c.subflows.keys().any(|(l, _)| l.ip() == *a) && !c.removed.contains(a) {
                    c.leaving.insert(*a, (*ifindex, format!("{a} is no longer usable: the peer is told, so it resends what was in flight on the other subflows")));
                }
            }
        }
        self.paths = paths;
        true
    }

    /// A subflow came up; false if the connection is not known.
    fn subflow_up(&mut self, token: u32, local: SocketAddr, remote: SocketAddr) -> bool {
        let now = self.clock.now();
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        // Ours carries the flag it was created with; one the peer opened
        // starts without.
        let backup = c.creating.remove(&local.ip()).is_some_and(|(_, b)| b);
        c.removed.remove(&local.ip());
        // One adopted from a dump before this event came keeps what the
        // dump said.
        c.subflows.entry((local, remote)).or_insert(Subflow {
            local,
            remote,
            backup,
            since: now,
        });
        true
    }

    /// A connection the kernel has and this policy never heard of, with
    /// the subflows it has. False if it was known already.
    fn adopted(
        &mut self,
        token: u32,
        local: SocketAddr,
        remote: SocketAddr,
        server_side: bool,
        owner: &Owner,
        subflows: Vec<AdoptedSubflow>,
    ) -> bool {
        if self.conns.contains_key(&token) {
            return false;
        }
        let now = self.clock.now();
        self.created(token, local, remote, server_side, owner);
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        c.established = true;
        for sf in subflows {
            c.ids.insert(sf.local.ip(), sf.local_id);
            c.subflows.insert(
                (sf.local, sf.remote),
                Subflow {
                    local: sf.local,
                    remote: sf.remote,
                    backup: sf.backup,
                    since: now,
                },
            );
        }
        true
    }

    /// A subflow (or a join that never came up) closed: opened again at
    /// once if it had worked for `STABLE_MS`, else after a back-off.
    fn subflow_closed(&mut self, token: u32, local: SocketAddr, remote: SocketAddr) {
        let now = self.clock.now();
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let joining = c.creating.remove(&local.ip()).is_some();
        let lived = c
            .subflows
            .remove(&(local, remote))
            .map(|s| now.since(s.since));
        if !joining && lived.is_none() {
            return; // not one of ours (a peer's join that never came up)
        }
        let r = c.retries.entry(local.ip()).or_default();
        if lived.is_some_and(|ms| ms >= STABLE_MS) {
            r.failures = 0;
        }
        r.failures += 1;
        // A working subflow that died is replaced at once; a join that
        // failed, or a subflow that died at once, waits.
        r.at = (joining || r.failures > 1).then(|| {
            now.plus(backoff_ms(
                RETRY_FIRST_MS,
                RETRY_MAX_MS,
                r.failures.max(2) - 1,
            ))
        });
    }

    /// The kernel refused an action: the model goes back to what it has.
    fn failed(&mut self, action: &ConnAction) {
        let now = self.clock.now();
        let Some(c) = self.conns.get_mut(&action.token()) else {
            return;
        };
        match action {
            ConnAction::CreateSubflow { local, .. } => {
                c.creating.remove(local);
                let r = c.retries.entry(*local).or_default();
                r.failures += 1;
                r.at = Some(now.plus(backoff_ms(RETRY_FIRST_MS, RETRY_MAX_MS, r.failures)));
            }
            ConnAction::SetBackup {
                local,
                remote,
                backup,
                ..
            } => {
                // Tried again at the next reconcile.
                if let Some(s) = c.subflows.get_mut(&(*local, *remote)) {
                    s.backup = !backup;
                }
            }
            ConnAction::Announce { addr, .. } => {
                c.ids.remove(addr);
            }
            // Its subflows close with the path anyway.
            ConnAction::Remove { .. } | ConnAction::DestroySubflow { .. } => {}
            // Sent again at the next interval.
            ConnAction::ProbeLoss { .. } => {}
            // The shell answers it with `CheckAnswer`, sent or not.
            ConnAction::CheckPath { .. } => {}
        }
    }

    /// A round of measurements into each connection's health.
    fn measured(&mut self, samples: Vec<SubflowSample>, path_problems: BTreeMap<u32, PathProblem>) {
        let now = self.clock.now();
        self.path_problems = path_problems;
        let mut by_conn: BTreeMap<u32, Vec<SubflowSample>> = BTreeMap::new();
        for mut s in samples {
            if s.ifindex == 0 {
                s.ifindex = self.path_of(s.local.ip()).map_or(0, |p| p.ifindex);
            }
            by_conn.entry(s.conn).or_default().push(s);
        }
        let t = &self.tuning;
        let (stall, loss) = (t.stall_ms, t.loss_threshold);
        // An idle path's loss fades as in the host-wide policy.
        let decay = t.hold_ms.saturating_mul(4);
        for (token, c) in self.conns.iter_mut() {
            let mut samples = by_conn.remove(token).unwrap_or_default();
            // A subflow from an address that left the usable paths is
            // measured on the interface it left from (`stands_by_idle`).
            for s in samples.iter_mut().filter(|s| s.ifindex == 0) {
                if let Some((i, _)) = c.leaving.get(&s.local.ip()) {
                    s.ifindex = *i;
                }
            }
            c.health.loss_on_the_way_in = c.mode == PathMode::Interactive;
            c.health.update(now.ms(), &samples, stall, loss, decay, 1);
            c.watch_backups(now, &samples, &mut self.notes);
            // A join that neither came up nor failed for this long is
            // forgotten (its event was lost): it may be tried again.
            c.creating
                .retain(|_, (at, _)| now.since(*at) < CREATE_TIMEOUT_MS);
        }
    }

    /// An echo's outcome, for every connection that finds the path lossy.
    fn loss_echo(&mut self, ifindex: u32, answered: bool) {
        let now = self.clock.now().ms();
        for c in self.conns.values_mut() {
            if let Some(h) = c.health.paths.get_mut(&ifindex).filter(|h| h.lossy) {
                h.loss_echo_result(answered, now);
            }
        }
    }

    /// A check's outcome, for each connection that asked for it: the
    /// connections to reconcile.
    fn check_answer(&mut self, ifindex: u32, remote: IpAddr, answered: Option<bool>) -> Vec<u32> {
        let now = self.clock.now().ms();
        let name = self.path_name(ifindex);
        let hold_ms = self.tuning.hold_ms;
        let mut tokens = Vec::new();
        for (token, c) in self.conns.iter_mut() {
            let Some(h) = c
                .health
                .paths
                .get_mut(&ifindex)
                .filter(|h| h.check_under_way(remote))
            else {
                continue;
            };
            tokens.push(*token);
            let Some(answered) = answered else {
                h.waive_check();
                continue;
            };
            let note = match h.check_result(answered, now) {
                CheckVerdict::Answered => continue,
                CheckVerdict::Unanswered => format!(
                    "token {token:08x}: {name} did not answer a check although {remote} answers echoes: it keeps standing by until it has been healthy for another {hold_ms} ms"
                ),
                CheckVerdict::Waived => format!(
                    "token {token:08x}: {name} did not answer a check, but {remote} was never heard answering an echo on it, which says nothing: it takes traffic back"
                ),
            };
            self.notes.push(note);
        }
        tokens
    }

    /// The checks the connections' modes asked for (`choose_handover`),
    /// one probe per path and peer.
    fn checks_due(&mut self, out: &mut Vec<ConnDecision>) {
        let now = self.clock.now().ms();
        let mut due: BTreeMap<(u32, IpAddr), CheckDue> = BTreeMap::new();
        for c in self.conns.values_mut() {
            for (ifindex, h) in c.health.paths.iter_mut() {
                // Connections to the same peer share one probe: its answer
                // comes to every connection that waits (`check_answer`).
                if let Some(d) = h.check_due(now, |_| true) {
                    due.entry((*ifindex, d.remote)).or_insert(d);
                }
            }
        }
        for ((ifindex, remote), d) in due {
            let name = self.path_name(ifindex);
            let timeout_ms = d.timeout_ms;
            out.push(ConnDecision {
                action: ConnAction::CheckPath {
                    ifindex,
                    local: d.local,
                    remote,
                    timeout_ms,
                },
                reason: format!(
                    "{name} has been healthy while it stood by for a connection to {remote}, but carried nothing that shows it still works: does it answer before it takes traffic back? (an answer is due within {timeout_ms} ms){}",
                    d.again_note()
                ),
            });
        }
    }

    fn path_name(&self, ifindex: u32) -> String {
        self.paths
            .iter()
            .find(|p| p.ifindex == ifindex)
            .map_or_else(|| format!("#{ifindex}"), |p| p.name.clone())
    }

    /// The connections with a re-creation whose back-off is over.
    fn retries_due(&self) -> Vec<u32> {
        let now = self.clock.now();
        self.conns
            .iter()
            .filter(|(_, c)| c.retries.values().any(|r| r.at.is_some_and(|t| t <= now)))
            .map(|(t, _)| *t)
            .collect()
    }

    /// Echoes for the paths some connection left for loss and no longer
    /// measures with its traffic: one per path, for all of them.
    fn loss_echoes_due(&mut self, out: &mut Vec<ConnDecision>) {
        let now = self.clock.now().ms();
        let mut due: BTreeMap<u32, (IpAddr, IpAddr, u64, f64)> = BTreeMap::new();
        for c in self.conns.values_mut() {
            for (ifindex, h) in c.health.paths.iter_mut() {
                if let Some((local, remote, timeout_ms)) = h.loss_echo_due(now, |_| true) {
                    due.entry(*ifindex)
                        .or_insert((local, remote, timeout_ms, h.loss));
                }
            }
        }
        for (ifindex, (local, remote, timeout_ms, loss)) in due {
            let name = self.path_name(ifindex);
            out.push(ConnDecision {
                action: ConnAction::ProbeLoss {
                    ifindex,
                    local,
                    remote,
                    timeout_ms,
                },
                reason: format!(
                    "a connection left {name} for loss ({:.1} %) and sends nothing on it: echoes measure it, so its loss does not fade unmeasured",
                    loss * 100.0
                ),
            });
        }
    }

    /// What was found and left as it is since the last call, for the log.
    pub fn take_notes(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notes)
    }

    /// Forget the connections the kernel no longer has (their CLOSED event
    /// was lost when the event socket overflowed).
    pub fn keep_only(&mut self, tokens: &BTreeSet<u32>) {
        self.conns.retain(|t, _| tokens.contains(t));
    }

    /// Whether connection `token` is known (else the shell adopts it).
    pub fn knows(&self, token: u32) -> bool {
        self.conns.contains_key(&token)
    }

    /// New rules and tuning (a reload): connections created from now on
    /// follow them; existing ones keep their mode.
    pub fn reconfigure(&mut self, rules: Vec<AppRule>, tuning: PolicyConfig) {
        self.rules = rules;
        self.default_mode = tuning.mode;
        self.tuning = tuning;
    }
    /// When a back-off ends (the shell sends `Tick` then). Only retries
    /// of usable addresses count: one whose address went is dropped by
    /// `reconcile`, and the address coming back is news of its own.
    pub fn wake_at_ms(&self) -> Option<u64> {
        self.conns
            .values()
            .flat_map(|c| {
                c.retries
                    .iter()
                    .filter(|(a, _)| self.path_of(**a).is_some())
                    .filter_map(|(_, r)| r.at)
            })
            .min()
            .map(Time::ms)
    }

    pub fn view(&self) -> Vec<ConnView> {
        self.conns
            .iter()
            .map(|(t, c)| ConnView {
                token: *t,
                remote: c.remote,
                mode: c.mode,
                rule: c.rule.clone(),
                subflows: c.subflows.len(),
            })
            .collect()
    }

    fn path_of(&self, addr: IpAddr) -> Option<&LocalPath> {
        self.paths.iter().find(|p| p.addr == addr)
    }

    /// What is wrong with the path of `addr` for connection `c`: the
    /// host-wide policy's verdict (it probes), or the connection's own
    /// subflow's measurements.
    fn problem(&self, c: &Conn, addr: IpAddr) -> Option<PathProblem> {
        let ifindex = self.path_of(addr)?.ifindex;
        if let Some(p) = self.path_problems.get(&ifindex) {
            return Some(p.clone());
        }
        let t = &self.tuning;
        c.health
            .paths
            .get(&ifindex)
            .filter(|h| h.subflows > 0)
            .and_then(|h| h.problem(t.stall_ms, t.loss_threshold))
    }

    /// The connection's smoothed RTT on the path of `addr`.
    fn srtt(&self, c: &Conn, addr: IpAddr) -> Option<f64> {
        let ifindex = self.path_of(addr)?.ifindex;
        c.health.paths.get(&ifindex).and_then(|h| h.srtt_ms)
    }

    /// Healthy (by this connection's measurements) for `hold_ms`, or not
    /// measured at all.
    fn held(&self, c: &Conn, addr: IpAddr) -> bool {
        let now = self.clock.now();
        self.problem(c, addr).is_none()
            && self.path_of(addr).is_some_and(|p| {
                c.health.paths.get(&p.ifindex).is_none_or(|h| {
                    h.healthy_since_ms
                        .is_none_or(|t| now.since(Time::from_ms(t)) >= self.tuning.hold_ms)
                })
            })
    }

    /// Which of the usable `addrs` stand by on connection `token`, and why.
    fn choose(&mut self, token: u32, addrs: &[IpAddr]) -> (Vec<IpAddr>, String) {
        let Some(mode) = self.conns.get(&token).map(|c| c.mode) else {
            return (Vec::new(), String::new());
        };
        match mode {
            PathMode::Aggregate => (Vec::new(), "every usable path carries traffic".into()),
            PathMode::Handover => self.choose_handover(token, addrs),
            PathMode::Interactive => self.choose_interactive(token, addrs),
        }
    }

    /// Handover: the primaries carry the connection while one is healthy
    /// for it; the secondaries when none is, until one has been healthy
    /// for `hold_ms`.
    fn choose_handover(&mut self, token: u32, addrs: &[IpAddr]) -> (Vec<IpAddr>, String) {
        let Some(c) = self.conns.get(&token) else {
            return (Vec::new(), String::new());
        };
        let primary = |a: &IpAddr| self.path_of(*a).is_some_and(|p| p.role == Role::Primary);
        let (primaries, secondaries): (Vec<IpAddr>, Vec<IpAddr>) =
            addrs.iter().copied().partition(primary);
        if primaries.is_empty() || secondaries.is_empty() {
            let why = if primaries.is_empty() {
                "no primary path is usable: the secondaries carry traffic"
            } else {
                "no secondary path to hand over to"
            };
            if let Some(c) = self.conns.get_mut(&token) {
                c.failed_over = false;
            }
            return (Vec::new(), why.into());
        }
        let troubles: Vec<(IpAddr, PathProblem)> = primaries
            .iter()
            .filter_map(|a| Some((*a, self.problem(c, *a)?)))
            .collect();
        let now = self.clock.now();
        let back: Vec<IpAddr> = primaries
            .iter()
            .copied()
            .filter(|a| self.held(c, *a) && c.suspected(*a, now).is_none())
            .collect();
        // As in the host-wide handover (`Policy::apply_handover`): a
        // primary that stood by carried nothing, so a failure meanwhile
        // does not show in its measurements. It answers a probe first.
        let unproven: Vec<u32> =
            if c.failed_over && !back.is_empty() && !back.iter().any(|a| self.proven(c, *a)) {
                back.iter()
                    .filter_map(|a| self.path_of(*a).map(|p| p.ifindex))
                    .collect()
            } else {
                Vec::new()
            };
        let failed = if c.failed_over {
            back.is_empty() || !unproven.is_empty()
        } else {
            troubles.len() == primaries.len()
        };
        let primary_paths: Vec<u32> = primaries
            .iter()
            .filter_map(|a| self.path_of(*a).map(|p| p.ifindex))
            .collect();
        let (max, window) = (self.tuning.max_handovers, self.tuning.handover_window_ms);
        let Some(c) = self.conns.get_mut(&token) else {
            return (Vec::new(), String::new());
        };
        // Leaving the primaries on measurements is rate-limited; taking
        // them back is not (as in the host-wide mode).
        let mut failed = failed;
        let mut held_back = None;
        if failed && !c.failed_over {
            match c.budget.check(now, max, window) {
                Ok(()) => {
                    c.budget.spend(now);
                }
                Err(why) => {
                    failed = false;
                    held_back = Some(why);
                }
            }
        }
        let said = troubles
            .iter()
            .map(|(a, p)| format!("{a} is {p}"))
            .collect::<Vec<_>>()
            .join("; ");
        let why = match (failed, c.failed_over) {
            _ if held_back.is_some() => format!(
                "{said}; the primary keeps traffic: {}",
                held_back.unwrap_or_default()
            ),
            (true, false) => format!("{said}: the secondary takes over"),
            (true, true) if !unproven.is_empty() => format!(
                "the primary has been healthy for {} ms, but it carried nothing while it stood by: it answers a probe before it takes traffic back; the secondary keeps traffic",
                self.tuning.hold_ms
            ),
            (true, true) => match primaries.iter().filter_map(|a| c.suspected(*a, now)).min() {
                Some(ms) => format!(
                    "the primary failed on measurements and is not trusted for another {ms} ms: the secondary keeps traffic"
                ),
                None => {
                    "the primary is not healthy long enough yet: the secondary keeps traffic".into()
                }
            },
            (false, true) => format!(
                "the primary has been healthy for {} ms: it takes traffic back",
                self.tuning.hold_ms
            ),
            (false, false) => "the primary carries traffic, the secondary stands by".into(),
        };
        if c.failed_over != failed {
            c.last_switch = now;
            if failed {
                for a in &primaries {
                    c.left_for_cause(*a, now);
                }
                // A dead primary (stalled, unreachable; not a lossy one,
                // which still delivers) is removed from the connection:
                // the peer hears it and resends on the secondary at once,
                // as the host-wide handover does by re-adding the endpoint.
                for (a, problem) in &troubles {
                    if !problem.still_delivers() {
                        c.to_remove.insert(*a, format!("{a} is {problem}"));
                    }
                }
            }
        }
        c.failed_over = failed;
        for i in &primary_paths {
            if let Some(h) = c.health.paths.get_mut(i) {
                if unproven.contains(i) {
                    h.want_check();
                } else if !failed {
                    h.forget_check();
                }
            }
        }
        (if failed { primaries } else { secondaries }, why)
    }

    /// Whether the path of `addr` may take connection `c` without a check
    /// (`PathHealth::proven`, by `c`'s own measurements).
    fn proven(&self, c: &Conn, addr: IpAddr) -> bool {
        let now = self.clock.now().ms();
        self.path_of(addr)
            .and_then(|p| c.health.paths.get(&p.ifindex))
            .is_none_or(|h| h.proven(now))
    }

    /// Interactive: the healthy path with the lowest RTT for this
    /// connection carries it; a switch needs the active one failing, or a
    /// path better by `rtt_ratio` and `rtt_margin_ms` and `hold_ms` since
    /// the last switch.
    fn choose_interactive(&mut self, token: u32, addrs: &[IpAddr]) -> (Vec<IpAddr>, String) {
        let Some(c) = self.conns.get(&token) else {
            return (Vec::new(), String::new());
        };
        let now = self.clock.now();
        let t = &self.tuning;
        let rtt = |a: IpAddr| self.srtt(c, a).unwrap_or(f64::MAX);
        let fmt = |a: IpAddr| {
            self.srtt(c, a)
                .map_or("rtt unknown".to_string(), |r| format!("{r:.1} ms"))
        };
        let healthy: Vec<IpAddr> = addrs
            .iter()
            .copied()
            .filter(|a| self.problem(c, *a).is_none())
            .collect();
        // Paths left on measurements are taken again only when nothing
        // else is healthy.
        let trusted: Vec<IpAddr> = healthy
            .iter()
            .copied()
            .filter(|a| c.suspected(*a, now).is_none())
            .collect();
        let pool = if trusted.is_empty() {
            &healthy
        } else {
            &trusted
        };
        let Some(best) = pool
            .iter()
            .copied()
            .min_by(|a, b| rtt(*a).total_cmp(&rtt(*b)))
        else {
            return (
                Vec::new(),
                "no healthy path: every path carries traffic".into(),
            );
        };
        let current = c.active.clone().filter(|(a, _, _)| addrs.contains(a));
        let lowest = || {
            (
                best,
                format!("{best} has the lowest RTT ({})", fmt(best)),
                false,
            )
        };
        // `held`: as host-wide, the faster path has been healthy for
        // `hold_ms` (and again after a check it left unanswered).
        let faster = |cur: IpAddr| {
            best != cur
                && rtt(cur) > rtt(best) * t.rtt_ratio + t.rtt_margin_ms as f64
                && now.since(c.last_switch) >= t.hold_ms
                && self.held(c, best)
        };
        let over = |cur: IpAddr| {
            format!(
                "{cur} RTT {} is over {}x{} + {} ms of {best}",
                fmt(cur),
                t.rtt_ratio,
                fmt(best),
                t.rtt_margin_ms
            )
        };
        // As host-wide (`Policy::choose_interactive`): the faster path's
        // RTT is from when it last carried something.
        let mut check = None;
        // The last of each: whether this is a switch made on measurements
        // (rate-limited).
        let (active, why, measured) = match current.clone() {
            None => lowest(),
            Some((cur, _, false))
                if self.problem(c, cur).is_none() && self.srtt(c, best).is_some() =>
            {
                lowest()
            }
            Some((cur, _, _)) if self.problem(c, cur).is_some() => (
                best,
                format!(
                    "{cur} is {}: switching to {best} ({})",
                    self.problem(c, cur).map(|p| p.why).unwrap_or_default(),
                    fmt(best)
                ),
                best != cur,
            ),
            // `cur` stays, for the reason it was chosen.
            Some((cur, kept, _)) if faster(cur) && !self.proven(c, best) => {
                check = self.path_of(best).map(|p| {
                    (
                        p.ifindex,
                        format!(
                            "{}, but {best} carried nothing while it stood by: it answers a probe before it takes traffic; staying on {cur}",
                            over(cur)
                        ),
                    )
                });
                (cur, kept, false)
            }
            Some((cur, _, _)) if faster(cur) => (best, format!("{}: switching", over(cur)), true),
            Some((cur, kept, _)) => (cur, kept, false),
        };
        let (max, window) = (t.max_handovers, t.handover_window_ms);
        let informed = self.srtt(c, active).is_some();
        let left = c
            .active
            .as_ref()
            .map(|(a, _, _)| *a)
            .filter(|a| *a != active && self.problem(c, *a).is_some());
        let Some(c) = self.conns.get_mut(&token) else {
            return (Vec::new(), String::new());
        };
        if let (true, Some((cur, _, cur_informed))) = (measured, current) {
            if let Err(held) = c.budget.check(now, max, window) {
                c.active = Some((cur, format!("{why}; staying: {held}"), cur_informed));
                return (
                    addrs.iter().copied().filter(|a| *a != cur).collect(),
                    format!("{why}; staying on {cur}: {held}"),
                );
            }
            c.budget.spend(now);
        }
        if c.active.as_ref().map(|(a, _, _)| *a) != Some(active) {
            c.last_switch = now;
        }
        if let Some(a) = left {
            c.left_for_cause(a, now);
        }
        c.active = Some((active, why.clone(), informed));
        // Only the path being checked keeps its check: a waiver is for
        // one switch, not for good.
        let checking = check.as_ref().map(|(i, _)| *i);
        for (i, h) in c.health.paths.iter_mut() {
            if Some(*i) != checking {
                h.forget_check();
            }
        }
        let why = match check {
            Some((ifindex, waiting)) => {
                if let Some(h) = c.health.paths.get_mut(&ifindex) {
                    h.want_check();
                }
                waiting
            }
            None => why,
        };
        (
            addrs.iter().copied().filter(|a| *a != active).collect(),
            why,
        )
    }

    /// Interactive, as host-wide (`Policy::note_lossy_waits`): the
    /// connection's subflows on a path it left for loss whose data has
    /// waited for an ACK past what TCP expected hold a lost segment, which
    /// would wait for that path's retransmission timeout with everything
    /// sent after it. They are closed, so the kernel resends their data
    /// on the chosen path at once, and re-created as backups (a working
    /// subflow that closes is replaced at once, `subflow_closed`): it costs
    /// this connection only. Once per wait, and only while the connection
    /// has a subflow on the chosen path. The interfaces waiting now, and
    /// the closes.
    fn lossy_waits(&self, token: u32, why: &str) -> (BTreeSet<u32>, Vec<ConnDecision>) {
        let mut waiting = BTreeSet::new();
        let mut closes = Vec::new();
        let Some(c) = self.conns.get(&token) else {
            return (waiting, closes);
        };
        let Some((active, _, _)) = c
            .active
            .as_ref()
            .filter(|_| c.mode == PathMode::Interactive)
        else {
            return (waiting, closes);
        };
        let carried =
            c.subflows.keys().any(|(l, _)| l.ip() == *active) && self.problem(c, *active).is_none();
        if !carried || c.server_side {
            return (waiting, closes);
        }
        let stall_ms = self.tuning.stall_ms;
        for p in self.paths.iter().filter(|p| p.addr != *active) {
            // Its own loss flag, or the host's verdict: a wait that
            // reaches the stall threshold makes the connection's own
            // verdict "stalled", still on a path left for loss.
            let Some(h) = c.health.paths.get(&p.ifindex) else {
                continue;
            };
            let host_lossy = self
                .path_problems
                .get(&p.ifindex)
                .is_some_and(|x| x.kind == ProblemKind::Lossy);
            if !h.lossy && !host_lossy {
                continue;
            }
            let Some((waited_ms, expected_ms)) = h.overdue_ack(stall_ms) else {
                continue;
            };
            waiting.insert(p.ifindex);
            if c.lossy_waits.contains(&p.ifindex) {
                continue;
            }
            for (local, remote) in c.subflows.keys().filter(|(l, _)| l.ip() == p.addr) {
                closes.push(ConnDecision {
                    action: ConnAction::DestroySubflow {
                        token,
                        local: *local,
                        remote: *remote,
                    },
                    reason: format!(
                        "{why}: {}; closing the subflow so its data is resent on {active} at once (it is re-created as a backup)",
                        left_for_loss_wait(&p.name, waited_ms, expected_ms)
                    ),
                });
            }
        }
        (waiting, closes)
    }

    /// Bring one connection to what its mode wants: subflows on every
    /// usable address of the remote's family, backup flags as the mode
    /// says; a server announces its other addresses.
    fn reconcile(&mut self, token: u32, why: &str, out: &mut Vec<ConnDecision>) {
        let now = self.clock.now();
        let Some(c) = self.conns.get(&token) else {
            return;
        };
        if !c.established {
            return;
        }
        let v4 = c.remote.ip().is_ipv4();
        let mode = c.mode;
        let usable: Vec<LocalPath> = self
            .paths
            .iter()
            .filter(|p| p.addr.is_ipv4() == v4)
            .cloned()
            .collect();
        let addrs: Vec<IpAddr> = usable.iter().map(|p| p.addr).collect();
        let server_side = c.server_side;
        let (standby, choice) = if server_side {
            (Vec::new(), String::new())
        } else {
            self.choose(token, &addrs)
        };
        let standby_of = |a: IpAddr| standby.contains(&a);
        let (waiting, closes) = self.lossy_waits(token, why);
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        c.lossy_waits = waiting;
        out.extend(closes);
        let label = format!("{} mode ({}): {choice}", mode.name(), c.rule);
        if c.server_side {
            for p in &usable {
                if p.addr == c.initial_local.ip() || c.ids.contains_key(&p.addr) {
                    continue;
                }
                let Some(id) = c.id_for(p.addr) else { break };
                out.push(ConnDecision {
                    action: ConnAction::Announce {
                        token,
                        id,
                        addr: p.addr,
                    },
                    reason: format!(
                        "{why}: {} on {} is usable; the client may join it",
                        p.addr, p.name
                    ),
                });
            }
            c.removals(token, out);
            return;
        }
        for p in &usable {
            let waiting = c.retries.get(&p.addr).and_then(|r| r.at);
            if c.subflows.keys().any(|(l, _)| l.ip() == p.addr)
                || c.creating.contains_key(&p.addr)
                || waiting.is_some_and(|t| t > now)
            {
                continue;
            }
            let Some(local_id) = c.id_for(p.addr) else {
                break; // 255 addresses used on one connection
            };
            if let Some(r) = c.retries.get_mut(&p.addr) {
                r.at = None;
            }
            let backup = standby_of(p.addr);
            c.creating.insert(p.addr, (now, backup));
            let again = c.retries.get(&p.addr).is_some_and(|r| r.failures > 0);
            out.push(ConnDecision {
                action: ConnAction::CreateSubflow {
                    token,
                    local_id,
                    local: p.addr,
                    remote: c.remote,
                    backup,
                },
                reason: format!(
                    "{why}: {} on {} has no subflow{}; {label}{}",
                    p.addr,
                    p.name,
                    if again { " (re-created)" } else { "" },
                    if backup { ", as a backup" } else { "" }
                ),
            });
        }
        // A retry of an address that is no longer usable is dropped.
        for (a, r) in c.retries.iter_mut() {
            if !addrs.contains(a) {
                r.at = None;
            }
        }
        c.removals(token, out);
        for s in c.subflows.values_mut() {
            // One on an address that is no longer usable keeps its flag:
            // the kernel closes it, or it comes back. One being removed
            // is closing.
            if !addrs.contains(&s.local.ip()) || c.removed.contains(&s.local.ip()) {
                continue;
            }
            let want = standby_of(s.local.ip());
            if s.backup == want {
                continue;
            }
            s.backup = want;
            out.push(ConnDecision {
                action: ConnAction::SetBackup {
                    token,
                    local: s.local,
                    remote: s.remote,
                    backup: want,
                },
                reason: format!(
                    "{why}: the subflow from {} {} in {label}",
                    s.local,
                    if want { "stands by" } else { "carries traffic" }
                ),
            });
        }
        // After the changes: one changed this round sent its own MP_PRIO.
        for (key, reason) in std::mem::take(&mut c.tell_again) {
            let standing_by = c.subflows.get(&key).is_some_and(|s| s.backup);
            let changed = out.iter().any(|d| {
                matches!(d.action, ConnAction::SetBackup { token: t, local, remote, .. }
                    if t == token && (local, remote) == key)
            });
            let usable = addrs.contains(&key.0.ip()) && !c.removed.contains(&key.0.ip());
            if !standing_by || changed || !usable {
                continue;
            }
            out.push(ConnDecision {
                action: ConnAction::SetBackup {
                    token,
                    local: key.0,
                    remote: key.1,
                    backup: true,
                },
                reason,
            });
        }
    }
}

#[cfg(test)]
mod tests;
