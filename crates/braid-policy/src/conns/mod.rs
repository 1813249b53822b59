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
//! Not yet here (issue 13): switching on a connection's own subflow
//! health (the flags follow path roles and usability only), and the
//! daemon shell that feeds this from MPTCP events and sock_diag.

pub mod rules;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::config::{PathMode, Role};
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
    /// Time passed (see [`ConnPolicy::wake_at_ms`]).
    Tick,
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
        }
    }
}

impl ConnAction {
    pub fn token(&self) -> u32 {
        match self {
            ConnAction::CreateSubflow { token, .. }
            | ConnAction::SetBackup { token, .. }
            | ConnAction::Announce { token, .. } => *token,
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

#[derive(Debug, Clone)]
struct Conn {
    remote: SocketAddr,
    initial_local: SocketAddr,
    server_side: bool,
    mode: PathMode,
    rule: String,
    established: bool,
    /// Established subflows by local address (one per address).
    subflows: BTreeMap<IpAddr, Subflow>,
    /// Creates asked for and not yet established or failed, with the
    /// backup flag asked for.
    creating: BTreeMap<IpAddr, (Time, bool)>,
    retries: BTreeMap<IpAddr, Retry>,
    /// Address ids given on this connection (0 is the initial subflow's).
    ids: BTreeMap<IpAddr, u8>,
}

impl Conn {
    fn id_for(&mut self, addr: IpAddr) -> Option<u8> {
        if let Some(id) = self.ids.get(&addr) {
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
    paths: Vec<LocalPath>,
    conns: BTreeMap<u32, Conn>,
    clock: Clock,
}

impl ConnPolicy {
    pub fn new(rules: Vec<AppRule>, default_mode: PathMode) -> ConnPolicy {
        ConnPolicy {
            rules,
            default_mode,
            paths: Vec::new(),
            conns: BTreeMap::new(),
            clock: Clock::default(),
        }
    }

    pub fn handle(&mut self, ev: ConnEvent, now_ms: u64) -> Vec<ConnDecision> {
        let now = self.clock.advance(now_ms);
        let mut out = Vec::new();
        match ev {
            ConnEvent::Paths(paths) => {
                self.paths = paths;
                let tokens: Vec<u32> = self.conns.keys().copied().collect();
                for t in tokens {
                    self.reconcile(t, "the usable paths changed", &mut out);
                }
            }
            ConnEvent::Created {
                token,
                local,
                remote,
                server_side,
                owner,
            } => {
                let (mode, rule) = match first_match(&self.rules, &owner, remote) {
                    Some((i, r)) => (r.mode, format!("rule {} ({})", i + 1, r.describe())),
                    None => (self.default_mode, "default".to_string()),
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
                    },
                );
            }
            ConnEvent::Established { token } => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return out;
                };
                c.established = true;
                // The initial subflow, until sock_diag or an event says more.
                let (local, remote) = (c.initial_local, c.remote);
                c.subflows.entry(local.ip()).or_insert(Subflow {
                    local,
                    remote,
                    backup: false,
                    since: now,
                });
                self.reconcile(token, "the connection is established", &mut out);
            }
            ConnEvent::SubEstablished {
                token,
                local,
                remote,
            } => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return out;
                };
                // Ours carries the flag it was created with; one the peer
                // opened starts without.
                let backup = c.creating.remove(&local.ip()).is_some_and(|(_, b)| b);
                c.subflows.insert(
                    local.ip(),
                    Subflow {
                        local,
                        remote,
                        backup,
                        since: now,
                    },
                );
                self.reconcile(token, "a subflow was established", &mut out);
            }
            ConnEvent::SubClosed {
                token,
                local,
                remote: _,
            } => {
                let Some(c) = self.conns.get_mut(&token) else {
                    return out;
                };
                c.creating.remove(&local.ip());
                if let Some(s) = c.subflows.remove(&local.ip()) {
                    let r = c.retries.entry(local.ip()).or_default();
                    if now.since(s.since) >= STABLE_MS {
                        r.failures = 0;
                    }
                    r.failures += 1;
                    r.at = (r.failures > 1).then(|| {
                        now.plus(backoff_ms(RETRY_FIRST_MS, RETRY_MAX_MS, r.failures - 1))
                    });
                }
                self.reconcile(token, &format!("the subflow from {local} closed"), &mut out);
            }
            ConnEvent::Closed { token } => {
                self.conns.remove(&token);
            }
            // The shell logs the error; here only the retry matters.
            ConnEvent::Failed { action, error: _ } => {
                let token = action.token();
                if let (ConnAction::CreateSubflow { local, .. }, Some(c)) =
                    (&action, self.conns.get_mut(&token))
                {
                    c.creating.remove(local);
                    let r = c.retries.entry(*local).or_default();
                    r.failures += 1;
                    r.at = Some(now.plus(backoff_ms(RETRY_FIRST_MS, RETRY_MAX_MS, r.failures)));
                }
            }
            ConnEvent::Tick => {
                let due: Vec<u32> = self
                    .conns
                    .iter()
                    .filter(|(_, c)| c.retries.values().any(|r| r.at.is_some_and(|t| t <= now)))
                    .map(|(t, _)| *t)
                    .collect();
                for t in due {
                    self.reconcile(t, "its back-off is over", &mut out);
                }
            }
        }
        out
    }

    /// When a back-off ends (the shell sends `Tick` then).
    pub fn wake_at_ms(&self) -> Option<u64> {
        self.conns
            .values()
            .flat_map(|c| c.retries.values().filter_map(|r| r.at))
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

    /// Whether a subflow from `addr` should stand by on a connection in
    /// `mode`, with the usable paths as they are.
    fn standby(&self, mode: PathMode, addr: IpAddr, family_v4: bool) -> bool {
        let role = |a: IpAddr| self.paths.iter().find(|p| p.addr == a).map(|p| p.role);
        match mode {
            PathMode::Aggregate => false,
            // Handover, and interactive until it measures the connection's
            // own subflows: the primaries carry traffic while one is usable.
            PathMode::Handover | PathMode::Interactive => {
                let primary_usable = self
                    .paths
                    .iter()
                    .any(|p| p.role == Role::Primary && p.addr.is_ipv4() == family_v4);
                primary_usable && role(addr) != Some(Role::Primary)
            }
        }
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
        let flags: Vec<(IpAddr, bool)> = usable
            .iter()
            .map(|p| (p.addr, self.standby(mode, p.addr, v4)))
            .chain(c.subflows.keys().map(|a| (*a, self.standby(mode, *a, v4))))
            .collect();
        let standby_of = |a: IpAddr| flags.iter().find(|(x, _)| *x == a).is_some_and(|f| f.1);
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let label = format!("{} mode ({})", mode.name(), c.rule);
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
            return;
        }
        for p in &usable {
            let waiting = c.retries.get(&p.addr).and_then(|r| r.at);
            if c.subflows.contains_key(&p.addr)
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
        for s in c.subflows.values_mut() {
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
    }
}

#[cfg(test)]
mod tests;
