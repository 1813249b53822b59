//! The I/O shell: feeds kernel changes, MPTCP events, signals and control
//! requests into the policy and carries out its decisions.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use braid_kernel::events::{EventKind, EventStream, StreamItem};
use braid_kernel::pm::{EndpointFlags, EndpointSelector, NewEndpoint, PathManager};
use braid_kernel::rtnl::{self, Change, Monitor};
use braid_policy::health::SubflowSample;
use braid_policy::model::{self as m, Action, Event, MptcpEventKind};
use braid_policy::policy::ChangedRoute;
use braid_policy::{Config, Policy};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::signal::unix::{signal, SignalKind};
use tracing::{error, info, warn};

use crate::config_file;
use crate::control::{self, Reply, Request};

pub const STATE_FILE: &str = "/run/braid/daemon-state.json";

pub struct Options {
    pub config_path: PathBuf,
    pub config_explicit: bool,
    /// Shrink the rtnetlink receive buffer (tests use it to provoke ENOBUFS).
    pub netlink_rcvbuf: Option<usize>,
    pub state_file: PathBuf,
}

#[derive(serde::Serialize, serde::Deserialize, Default, Clone, PartialEq)]
struct SavedState {
    owned_ids: Vec<u8>,
    #[serde(default)]
    changed_routes: Vec<ChangedRoute>,
}

fn link_of(l: &rtnl::Link) -> m::Link {
    m::Link {
        index: l.index,
        name: l.name.clone(),
        up: l.up,
        carrier: l.carrier,
        loopback: l.loopback,
    }
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

fn route_of(r: &rtnl::DefaultRoute) -> m::DefaultRoute {
    m::DefaultRoute {
        ifindex: r.ifindex,
        table: r.table,
        ipv6: r.ipv6,
        initcwnd: r.initcwnd,
    }
}

fn mptcp_kind(k: EventKind) -> MptcpEventKind {
    match k {
        EventKind::Created => MptcpEventKind::Created,
        EventKind::Established => MptcpEventKind::Established,
        EventKind::Closed => MptcpEventKind::Closed,
        EventKind::Announced => MptcpEventKind::Announced,
        EventKind::Removed => MptcpEventKind::Removed,
        EventKind::SubEstablished => MptcpEventKind::SubEstablished,
        EventKind::SubClosed => MptcpEventKind::SubClosed,
        EventKind::SubPriority => MptcpEventKind::SubPriority,
        EventKind::ListenerCreated => MptcpEventKind::ListenerCreated,
        EventKind::ListenerClosed => MptcpEventKind::ListenerClosed,
        EventKind::Unknown(_) => MptcpEventKind::Unknown,
    }
}

/// Everything the kernel says, as one policy event.
fn snapshot(pm: &mut PathManager) -> braid_kernel::Result<Event> {
    Ok(Event::Snapshot {
        links: rtnl::links()?.iter().map(link_of).collect(),
        addresses: rtnl::addresses()?.iter().map(addr_of).collect(),
        default_routes: rtnl::default_routes()?.iter().map(route_of).collect(),
        endpoints: pm
            .endpoints()?
            .into_iter()
            .map(|e| m::KernelEndpoint {
                id: e.id,
                addr: e.addr,
                flags: e.flags.0,
                ifindex: e.ifindex,
            })
            .collect(),
        limits: {
            let l = pm.limits()?;
            m::Limits {
                subflows: l.subflows,
                add_addr_accepted: l.add_addr_accepted,
            }
        },
    })
}

struct Shell {
    policy: Policy,
    pm: PathManager,
    start: Instant,
    opts: Options,
    saved: SavedState,
    /// Where probes started by `Action::ProbePath` report back.
    probe_results: tokio::sync::mpsc::UnboundedSender<Event>,
    /// Warnings last logged, so each is logged when it appears.
    warnings: Vec<String>,
}

impl Shell {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn feed(&mut self, ev: Event) {
        let now = self.now_ms();
        let decisions = self.policy.handle(ev, now);
        let decided = !decisions.is_empty();
        for d in decisions {
            info!(action = %d.action, reason = %d.reason, "decision");
            if let Err(e) = self.execute(&d.action) {
                warn!(action = %d.action, error = %e, "the kernel refused the action");
                let now = self.now_ms();
                self.policy.handle(
                    Event::ActionFailed {
                        action: d.action.clone(),
                        error: e,
                    },
                    now,
                );
            }
        }
        self.save_state();
        if decided {
            self.log_new_warnings();
        }
    }

    fn log_new_warnings(&mut self) {
        let now = self.policy.view().warnings;
        for w in now.iter().filter(|w| !self.warnings.contains(w)) {
            warn!("{w}");
        }
        self.warnings = now;
    }

    fn execute(&mut self, a: &Action) -> Result<(), String> {
        match a {
            Action::AddEndpoint {
                id,
                addr,
                flags,
                ifindex,
            } => self
                .pm
                .add_endpoint(&NewEndpoint {
                    addr: *addr,
                    id: Some(*id),
                    port: None,
                    flags: EndpointFlags(*flags),
                    ifindex: *ifindex,
                })
                .map_err(|e| e.to_string()),
            Action::RemoveEndpoint { id, .. } => {
                match self.pm.del_endpoint(&EndpointSelector::Id(*id)) {
                    // Already gone (someone flushed the table): that is what we wanted.
                    Err(braid_kernel::Error::Kernel { errno, .. })
                        if errno == libc::EINVAL || errno == libc::ENOENT =>
                    {
                        Ok(())
                    }
                    r => r.map_err(|e| e.to_string()),
                }
            }
            Action::SetEndpointFlags { id, flags, .. } => self
                .pm
                .set_endpoint_flags(&EndpointSelector::Id(*id), EndpointFlags(*flags))
                .map_err(|e| e.to_string()),
            Action::SetLimits {
                subflows,
                add_addr_accepted,
            } => self
                .pm
                .set_limits(Some(*subflows), Some(*add_addr_accepted))
                .map_err(|e| e.to_string()),
            Action::SetSysctl { name, value } => {
                braid_kernel::sysctl::write(name, value).map_err(|e| e.to_string())
            }
            Action::ProbePath {
                ifindex,
                local,
                remote,
                timeout_ms,
            } => {
                let (ifindex, local, remote) = (*ifindex, *local, *remote);
                let timeout = std::time::Duration::from_millis(*timeout_ms);
                let tx = self.probe_results.clone();
                tokio::spawn(async move {
                    let rtt_ms =
                        match braid_kernel::probe::echo(local, remote, ifindex, timeout).await {
                            Ok(rtt) => rtt.map(|d| d.as_secs_f64() * 1000.0),
                            Err(e) => {
                                // No verdict: the silence stays unexplained.
                                warn!(error = %e, "the path probe could not be sent");
                                return;
                            }
                        };
                    let _ = tx.send(Event::ProbeResult {
                        ifindex,
                        remote,
                        rtt_ms,
                    });
                });
                Ok(())
            }
            Action::SetRouteInitcwnd {
                ifindex,
                table,
                ipv6,
                initcwnd,
            } => rtnl::set_default_route_initcwnd(*ifindex, *table, *ipv6, *initcwnd)
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    fn save_state(&mut self) {
        let now = SavedState {
            owned_ids: self.policy.owned_ids(),
            changed_routes: self.policy.changed_routes(),
        };
        if now == self.saved {
            return;
        }
        if now == SavedState::default() {
            // Nothing of ours left in the kernel: nothing to remember.
            let _ = std::fs::remove_file(&self.opts.state_file);
            self.saved = now;
            return;
        }
        let text = serde_json::to_string(&now).expect("state serializes");
        if let Some(dir) = self.opts.state_file.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        match std::fs::write(&self.opts.state_file, text) {
            Ok(()) => self.saved = now,
            Err(e) => {
                warn!(error = %e, file = %self.opts.state_file.display(), "cannot save the owned endpoints and changed routes")
            }
        }
    }

    fn resync(&mut self, why: &str) {
        warn!(why, "resynchronising from full dumps");
        match snapshot(&mut self.pm) {
            Ok(ev) => self.feed(ev),
            Err(e) => error!(error = %e, "resynchronisation failed; will retry on the next change"),
        }
    }

    fn reload(&mut self) -> Result<(), String> {
        match config_file::load(&self.opts.config_path, self.opts.config_explicit) {
            Ok(cfg) => {
                info!(config = %self.opts.config_path.display(), "configuration reloaded");
                self.feed(Event::ConfigReloaded(Box::new(cfg)));
                Ok(())
            }
            Err(e) => {
                error!(error = %e, "reload refused: the running configuration stays in force");
                Err(e)
            }
        }
    }

    fn status(&self) -> serde_json::Value {
        serde_json::json!({
            "pid": std::process::id(),
            "config": self.opts.config_path,
            "uptime_s": self.start.elapsed().as_secs(),
            "view": self.policy.view(),
        })
    }
}

/// One round of subflow measurements; None when there are no subflows
/// (polling stops until the next MPTCP event).
fn health_samples() -> Option<Vec<SubflowSample>> {
    let subflows = braid_kernel::diag::subflows().ok()?;
    if subflows.is_empty() {
        return None;
    }
    Some(
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
                    segs_out: t.segs_out.unwrap_or(0),
                    unacked: t.unacked,
                    last_ack_recv_ms: t.last_ack_recv_ms,
                    bytes_received: t.bytes_received.unwrap_or(0),
                    last_data_recv_ms: t.last_data_recv_ms,
                })
            })
            .collect(),
    )
}

fn read_saved(path: &std::path::Path) -> SavedState {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<SavedState>(&b).ok())
        .unwrap_or_default()
}

fn bind_control(cfg: &Config) -> Result<(tokio::net::UnixListener, Option<u32>), String> {
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
    let group = match &cfg.control.group {
        Some(name) => Some(
            control::group_id(name)
                .ok_or_else(|| format!("control.group '{name}' does not exist (see /etc/group)"))?,
        ),
        None => None,
    };
    use std::os::unix::fs::PermissionsExt;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
    if let Some(g) = group {
        let c = std::ffi::CString::new(cfg.control.socket.as_bytes()).unwrap();
        unsafe { libc::chown(c.as_ptr(), 0, g) };
    }
    Ok((listener, group))
}

/// When the next health round is due: after the poll interval, or sooner
/// when a path waiting for an ACK would reach its stall threshold.
fn next_poll(shell: &Shell) -> tokio::time::Instant {
    let interval = shell.policy.config().policy.poll_interval_ms.max(10);
    let ms = match shell.policy.health_check_due_in_ms() {
        Some(due) => due.clamp(MIN_POLL_MS, interval),
        None => interval,
    };
    tokio::time::Instant::now() + std::time::Duration::from_millis(ms)
}

/// Health rounds never come closer together than this.
const MIN_POLL_MS: u64 = 5;

/// Run the daemon until SIGTERM or SIGINT.
pub async fn run(opts: Options) -> Result<(), String> {
    let config = config_file::load(&opts.config_path, opts.config_explicit)?;
    let saved = read_saved(&opts.state_file);
    let pm = PathManager::open().map_err(|e| e.to_string())?;
    // Subscribe before the first dump so no change falls in between.
    let mut monitor = Monitor::subscribe(opts.netlink_rcvbuf).map_err(|e| e.to_string())?;
    let mut mptcp = EventStream::subscribe().map_err(|e| e.to_string())?;
    let (listener, group) = bind_control(&config)?;
    let socket_path = PathBuf::from(&config.control.socket);
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| e.to_string())?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;

    info!(config = %opts.config_path.display(), mode = ?config.mode, "braid daemon starting");
    let mut policy = Policy::new(config, saved.owned_ids.clone());
    policy.adopt_changed_routes(saved.changed_routes.clone());
    let (probe_results, mut probe_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut shell = Shell {
        policy,
        pm,
        start: Instant::now(),
        opts,
        saved,
        probe_results,
        warnings: Vec::new(),
    };
    let first = snapshot(&mut shell.pm).map_err(|e| e.to_string())?;
    shell.feed(first);
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    info!("ready");
    // Health is polled only while MPTCP connections exist: an MPTCP event
    // starts the timer, a round without subflows stops it.
    let mut poll: Option<tokio::time::Instant> = None;
    if health_samples().is_some() {
        poll = Some(next_poll(&shell));
    }

    loop {
        let tick = async {
            match poll {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tick => match health_samples() {
                Some(samples) => {
                    shell.feed(Event::Health(samples));
                    poll = Some(next_poll(&shell));
                }
                None => poll = None,
            },
            Some(result) = probe_rx.recv() => {
                if let Event::ProbeResult { rtt_ms, remote, .. } = &result {
                    match rtt_ms {
                        Some(ms) => info!(%remote, rtt_ms = format!("{ms:.1}"), "path probe answered"),
                        None => warn!(%remote, "path probe unanswered"),
                    }
                }
                shell.feed(result);
            }
            change = monitor.next() => match change {
                Ok(Change::Overflow) => shell.resync("the rtnetlink buffer overflowed (ENOBUFS)"),
                Ok(c) => {
                    let ev = match c {
                        Change::Link(l) => Event::LinkChanged(link_of(&l)),
                        Change::LinkRemoved(i) => Event::LinkRemoved { index: i },
                        Change::AddressAdded(a) => Event::AddressAdded(addr_of(&a)),
                        Change::AddressRemoved(a) => Event::AddressRemoved(addr_of(&a)),
                        Change::DefaultRouteAdded(r) => Event::DefaultRouteAdded(route_of(&r)),
                        Change::DefaultRouteRemoved(r) => Event::DefaultRouteRemoved(route_of(&r)),
                        Change::Overflow => unreachable!(),
                    };
                    shell.feed(ev);
                }
                Err(e) => {
                    error!(error = %e, "reading rtnetlink failed");
                    shell.resync("rtnetlink read error");
                }
            },
            item = mptcp.next() => match item {
                Ok(StreamItem::Event(ev)) => {
                    shell.feed(Event::Mptcp(mptcp_kind(ev.kind)));
                    if poll.is_none() && !matches!(ev.kind, EventKind::Closed | EventKind::ListenerCreated | EventKind::ListenerClosed) {
                        poll = Some(next_poll(&shell));
                    }
                }
                Ok(StreamItem::Overflow) => warn!("MPTCP events were lost (ENOBUFS)"),
                Err(e) => warn!(error = %e, "reading MPTCP events failed"),
            },
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                if !control::peer_allowed(stream.as_raw_fd(), group) {
                    warn!("control connection refused: not root and not in control.group");
                    continue;
                }
                let (rd, mut wr) = stream.into_split();
                let mut line = String::new();
                let mut rd = BufReader::new(rd);
                // A client that sends nothing must not stall the daemon.
                let read = tokio::time::timeout(std::time::Duration::from_secs(2), rd.read_line(&mut line)).await;
                if !matches!(read, Ok(Ok(_))) {
                    continue;
                }
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Status) => Reply { ok: true, error: None, status: Some(shell.status()) },
                    Ok(Request::Reload) => match shell.reload() {
                        Ok(()) => Reply { ok: true, error: None, status: None },
                        Err(e) => Reply { ok: false, error: Some(e), status: None },
                    },
                    Err(e) => Reply { ok: false, error: Some(format!("bad request: {e}")), status: None },
                };
                let _ = wr.write_all(format!("{}\n", serde_json::to_string(&reply).unwrap()).as_bytes()).await;
            }
            _ = sighup.recv() => { let _ = shell.reload(); }
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
        }
    }
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    info!("stopping");
    shell.feed(Event::Stopping);
    let _ = std::fs::remove_file(&socket_path);
    Ok(())
}
