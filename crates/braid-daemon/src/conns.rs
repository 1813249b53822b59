//! The shell of the per-connection path manager (`pm = "userspace"`):
//! switches the kernel to its userspace path manager (and back on stop),
//! turns MPTCP events and the usable paths into
//! [`braid_policy::conns::ConnEvent`]s, looks up each new connection's
//! owner, and carries out the decisions with the userspace PM commands.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};

use braid_kernel::cgroup::CgroupPaths;
use braid_kernel::events::{Event as KernelEvent, EventKind};
use braid_kernel::owner::exe_of_socket;
use braid_kernel::pm::PathManager;
use braid_policy::config::Config;
use braid_policy::conns::rules::Owner;
use braid_policy::conns::{
    AdoptedSubflow, ConnAction, ConnDecision, ConnEvent, ConnPolicy, ConnView, LocalPath,
};
use braid_policy::health::SubflowSample;
use braid_policy::model::Action;
use tracing::{debug, info, warn};

use crate::journal::{unix_ms_now, Journal, What};
use crate::logging::RateLimit;

pub struct ConnShell {
    policy: ConnPolicy,
    cgroups: CgroupPaths,
    /// Some rule asks for the executable: only then are /proc's
    /// descriptors scanned for each new connection.
    need_exe: bool,
    /// The path manager as found, put back on stop.
    restore: Option<String>,
    /// Per-connection decisions and refusals in the log (the journal keeps
    /// them all).
    log_budget: RateLimit,
    /// Refusals in the log, apart from the decisions' budget.
    refusal_budget: RateLimit,
    /// Listing the kernel's connections failed (told once).
    listing_failed: bool,
    /// Loss echoes and checks the policy asked for, for the daemon's
    /// prober (`Action::ProbeLoss`, `Action::ProbePath`).
    probes: Vec<Action>,
}

/// Lines of per-connection decisions a second, at most.
const DECISION_LINES_PER_SECOND: u32 = 20;

impl ConnShell {
    /// Switch this namespace to the userspace path manager.
    pub fn start(config: &Config) -> Result<ConnShell, String> {
        use braid_kernel::sysctl::{path_manager, set_path_manager};
        let before = path_manager().map_err(|e| {
            format!("pm = \"userspace\" needs the kernel's userspace path manager (Linux 5.19+), and the current one cannot be read: {e}")
        })?;
        // Already on: a previous braidd that did not stop (killed, crashed)
        // left it; the in-kernel path manager is what goes back on stop.
        let original = if before == "userspace" {
            warn!("the userspace path manager was already on (a previous braidd that did not stop?): the in-kernel one is put back when this one stops");
            "kernel".to_string()
        } else {
            set_path_manager("userspace").map_err(|e| {
                format!("pm = \"userspace\": switching the kernel to its userspace path manager failed: {e}")
            })?;
            info!(from = %before, "the userspace path manager decides each connection's subflows");
            before
        };
        Ok(ConnShell {
            policy: ConnPolicy::new(config.apps.clone(), config.policy.clone()),
            cgroups: CgroupPaths::new(),
            need_exe: config.apps.iter().any(|a| a.exe.is_some()),
            restore: Some(original),
            log_budget: RateLimit::new(DECISION_LINES_PER_SECOND),
            refusal_budget: RateLimit::new(DECISION_LINES_PER_SECOND),
            listing_failed: false,
            probes: Vec::new(),
        })
    }

    /// Put the path manager back as it was found.
    pub fn stop(&mut self) {
        if let Some(name) = self.restore.take() {
            if let Err(e) = braid_kernel::sysctl::set_path_manager(&name) {
                warn!(path_manager = %name, error = %e, "could not put the path manager back");
            }
        }
    }

    /// New `[[app]]` rules and `[policy]` tuning (a reload): for the
    /// connections created from now on.
    pub fn reconfigure(&mut self, config: &Config) {
        self.need_exe = config.apps.iter().any(|a| a.exe.is_some());
        self.policy
            .reconfigure(config.apps.clone(), config.policy.clone());
    }

    /// Bring the model to the kernel's connections: forget those it no
    /// longer has, adopt those never heard of (the daemon started after
    /// them, or their events were lost). At start, on lost events, and
    /// periodically.
    pub fn resync(&mut self, now_ms: u64, pm: &mut PathManager, journal: &mut Journal) {
        let list = match braid_kernel::diag::connections(true) {
            Ok(list) => list,
            Err(e) => {
                if !std::mem::replace(&mut self.listing_failed, true) {
                    warn!(error = %e, "cannot list the kernel's MPTCP connections (sock_diag, mptcp_diag): connections older than braidd, or whose events were lost, are not managed; load the mptcp_diag module and run braidd with CAP_NET_ADMIN");
                }
                return;
            }
        };
        self.listing_failed = false;
        let (listeners, conns): (Vec<_>, Vec<_>) =
            list.into_iter().partition(|c| c.state == "listen");
        let tokens = conns.iter().filter_map(|c| c.token).collect();
        self.policy.keep_only(&tokens);
        for c in conns {
            let Some(token) = c.token.filter(|t| !self.policy.knows(*t)) else {
                continue;
            };
            // Not established yet: its events are still to come.
            if c.state != "established" || c.fell_back {
                continue;
            }
            // Accepted from one of this host's listeners: the server side.
            let server_side = listeners.iter().any(|l| {
                l.local.port() == c.local.port()
                    && (l.local.ip().is_unspecified() || l.local.ip() == c.local.ip())
            });
            let subflows = c
                .subflows
                .iter()
                .filter(|sf| sf.state == "established")
                .map(|sf| AdoptedSubflow {
                    local: sf.local,
                    remote: sf.remote,
                    local_id: sf.local_id,
                    backup: sf.backup_local,
                })
                .collect();
            let event = ConnEvent::Adopted {
                token,
                local: c.local,
                remote: c.remote,
                server_side,
                owner: self.owner(token),
                subflows,
            };
            let ds = self.policy.handle(event, now_ms);
            self.carry_out(ds, now_ms, pm, journal);
        }
    }

    pub fn view(&self) -> Vec<ConnView> {
        self.policy.view()
    }

    pub fn wake_at_ms(&self) -> Option<u64> {
        self.policy.wake_at_ms()
    }

    /// The usable local addresses (nothing happens if they did not change).
    pub fn paths(
        &mut self,
        paths: Vec<LocalPath>,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let ds = self.policy.handle(ConnEvent::Paths(paths), now_ms);
        self.carry_out(ds, now_ms, pm, journal);
    }

    /// A health round: each connection's subflows (by token), and the
    /// paths the host-wide policy finds failing.
    pub fn health(
        &mut self,
        samples: Vec<SubflowSample>,
        path_problems: BTreeMap<u32, braid_policy::health::PathProblem>,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let ds = self.policy.handle(
            ConnEvent::Health {
                samples,
                path_problems,
            },
            now_ms,
        );
        self.carry_out(ds, now_ms, pm, journal);
    }

    /// The host-wide policy's failing paths, when a probe changed them
    /// (between health rounds).
    pub fn path_problems(
        &mut self,
        problems: BTreeMap<u32, braid_policy::health::PathProblem>,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let ds = self
            .policy
            .handle(ConnEvent::PathProblems(problems), now_ms);
        self.carry_out(ds, now_ms, pm, journal);
    }

    /// The loss echoes and checks asked for since the last call, to be sent by
    /// the daemon's prober (answers come back through `loss_echo` and
    /// `check_answer`).
    pub fn take_probes(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.probes)
    }

    /// A check's outcome: None if it could not be sent.
    pub fn check_answer(
        &mut self,
        ifindex: u32,
        remote: IpAddr,
        answered: Option<bool>,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let ds = self.policy.handle(
            ConnEvent::CheckAnswer {
                ifindex,
                remote,
                answered,
            },
            now_ms,
        );
        self.carry_out(ds, now_ms, pm, journal);
    }

    /// A loss echo's outcome.
    pub fn loss_echo(
        &mut self,
        ifindex: u32,
        answered: bool,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let ds = self
            .policy
            .handle(ConnEvent::LossEcho { ifindex, answered }, now_ms);
        self.carry_out(ds, now_ms, pm, journal);
    }

    pub fn tick(&mut self, now_ms: u64, pm: &mut PathManager, journal: &mut Journal) {
        let ds = self.policy.handle(ConnEvent::Tick, now_ms);
        self.carry_out(ds, now_ms, pm, journal);
    }

    /// One MPTCP event of any connection.
    pub fn mptcp(
        &mut self,
        ev: &KernelEvent,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        let Some(event) = self.conn_event(ev) else {
            return;
        };
        let ds = self.policy.handle(event, now_ms);
        self.carry_out(ds, now_ms, pm, journal);
    }

    fn conn_event(&mut self, ev: &KernelEvent) -> Option<ConnEvent> {
        let token = ev.token?;
        let pair = || -> Option<(SocketAddr, SocketAddr)> {
            Some((
                SocketAddr::new(ev.saddr?, ev.sport?),
                SocketAddr::new(ev.daddr?, ev.dport?),
            ))
        };
        Some(match ev.kind {
            EventKind::Created => {
                let (local, remote) = pair()?;
                ConnEvent::Created {
                    token,
                    local,
                    remote,
                    server_side: ev.is_server_side(),
                    owner: self.owner(token),
                }
            }
            EventKind::Established => ConnEvent::Established { token },
            EventKind::SubEstablished => {
                let (local, remote) = pair()?;
                ConnEvent::SubEstablished {
                    token,
                    local,
                    remote,
                }
            }
            EventKind::SubClosed => {
                let (local, remote) = pair()?;
                ConnEvent::SubClosed {
                    token,
                    local,
                    remote,
                }
            }
            EventKind::Closed => ConnEvent::Closed { token },
            _ => return None,
        })
    }

    /// Who owns connection `token`: unknown parts stay unknown (a rule
    /// asking about them does not match).
    fn owner(&mut self, token: u32) -> Owner {
        let s = match braid_kernel::diag::mptcp_owner(token) {
            Ok(s) => s,
            Err(e) => {
                debug!(token = format!("{token:08x}"), error = %e, "the connection's owner is unknown");
                return Owner::default();
            }
        };
        Owner {
            uid: Some(s.uid),
            cgroup: s.cgroup_id.and_then(|id| self.cgroups.path_of(id)),
            exe: if self.need_exe {
                exe_of_socket(s.inode)
            } else {
                None
            },
        }
    }

    fn carry_out(
        &mut self,
        mut ds: Vec<ConnDecision>,
        now_ms: u64,
        pm: &mut PathManager,
        journal: &mut Journal,
    ) {
        for note in self.policy.take_notes() {
            info!(note = %note, "connection policy");
            journal.record(unix_ms_now(), What::Change { text: note });
        }
        // A refusal can lead to nothing at once (a retry waits), so this ends.
        while !ds.is_empty() {
            let mut next = Vec::new();
            for d in ds {
                // Loss echoes go to the daemon's prober, ten a second while
                // a path is measured: not logged.
                if let ConnAction::ProbeLoss {
                    ifindex,
                    local,
                    remote,
                    timeout_ms,
                } = d.action
                {
                    debug!(action = %d.action, reason = %d.reason, "connection decision");
                    self.probes.push(Action::ProbeLoss {
                        ifindex,
                        local,
                        remote,
                        timeout_ms,
                    });
                    continue;
                }
                // Checks are rare (one per hand-back): logged below.
                if let ConnAction::CheckPath {
                    ifindex,
                    local,
                    remote,
                    timeout_ms,
                } = d.action
                {
                    self.probes.push(Action::ProbePath {
                        ifindex,
                        local,
                        remote,
                        timeout_ms,
                    });
                }
                let (log, held) = self.log_budget.allow(now_ms);
                if held > 0 {
                    info!(held, "more connection decisions than {DECISION_LINES_PER_SECOND} a second: {held} were not logged ('braid monitor' shows every one)");
                }
                if log {
                    info!(action = %d.action, reason = %d.reason, "connection decision");
                }
                journal.record(
                    unix_ms_now(),
                    What::ConnDecision {
                        action: d.action.clone(),
                        reason: d.reason.clone(),
                    },
                );
                if let Err(e) = execute(pm, &d.action) {
                    let error = e.to_string();
                    if matches!(d.action, ConnAction::DestroySubflow { .. }) {
                        // Often closed already by the REMOVE before it:
                        // not a refusal worth the log's budget.
                        debug!(action = %d.action, %error, "subflow not destroyed");
                    } else if e.is_subflow_not_found() {
                        // A join not complete yet takes no MP_PRIO: the
                        // next round sets it again (design.md).
                        if self.refusal_budget.allow(now_ms).0 {
                            info!(action = %d.action, "no active subflow for the priority change yet (joining, or gone): set again at the next round");
                        }
                    } else if self.refusal_budget.allow(now_ms).0 {
                        warn!(action = %d.action, %error, "the kernel refused the connection action");
                    }
                    journal.record(
                        unix_ms_now(),
                        What::ConnRefused {
                            action: d.action.clone(),
                            error: error.clone(),
                        },
                    );
                    next.extend(self.policy.handle(
                        ConnEvent::Failed {
                            action: d.action,
                            error,
                        },
                        now_ms,
                    ));
                }
            }
            ds = next;
        }
    }
}

fn execute(pm: &mut PathManager, a: &ConnAction) -> braid_kernel::Result<()> {
    match a {
        ConnAction::CreateSubflow {
            token,
            local_id,
            local,
            remote,
            backup,
        } => pm.subflow_create(*token, *local_id, *local, *remote, *backup),
        ConnAction::SetBackup {
            token,
            local,
            remote,
            backup,
        } => pm.set_subflow_backup(*token, *local, *remote, *backup),
        ConnAction::Announce { token, id, addr } => pm.announce(*token, *id, *addr, None),
        ConnAction::Remove { token, id, .. } => pm.remove(*token, *id),
        ConnAction::DestroySubflow {
            token,
            local,
            remote,
        } => pm.subflow_destroy(*token, *local, *remote),
        // Sent by the daemon's prober (see `carry_out`).
        ConnAction::ProbeLoss { .. } | ConnAction::CheckPath { .. } => Ok(()),
    }
}
