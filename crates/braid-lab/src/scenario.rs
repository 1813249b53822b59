//! Scenarios: a lab, a path manager, traffic, and events on a timeline,
//! measured into one report.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::guard::LabGuard;
use crate::lab::{Cut, Lab, LabConfig, LabState, Sysctl};
use crate::pm::{self, PmKind, PolicySetting};
use crate::runlogs::RunLogs;
use crate::spec::PathSpec;
use crate::traffic::{Bulk, BulkResult, Endpoints, Probe, ProbeResult};
use crate::via::{self, RunningVia, Via};
use crate::LabError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    Aggregate,
    FailoverCarrier,
    FailoverBlackhole,
    /// The client's address on the primary goes away; the link stays up.
    FailoverAddress,
    LateInterface,
    Flap,
    LossyPrimary,
    /// The secondary (path 1), which stands by in handover mode, loses
    /// carrier while the primary carries the transfer: nothing should
    /// notice.
    StandbyCarrier,
}

impl Scenario {
    pub const ALL: [Scenario; 8] = [
        Scenario::Aggregate,
        Scenario::FailoverCarrier,
        Scenario::FailoverBlackhole,
        Scenario::FailoverAddress,
        Scenario::LateInterface,
        Scenario::Flap,
        Scenario::LossyPrimary,
        Scenario::StandbyCarrier,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Scenario::Aggregate => "aggregate",
            Scenario::FailoverCarrier => "failover-carrier",
            Scenario::FailoverBlackhole => "failover-blackhole",
            Scenario::FailoverAddress => "failover-address",
            Scenario::LateInterface => "late-interface",
            Scenario::Flap => "flap",
            Scenario::LossyPrimary => "lossy-primary",
            Scenario::StandbyCarrier => "standby-carrier",
        }
    }

    /// The path the scenario takes away (path 1 only when it is the one
    /// standing by).
    pub fn failed_path(self) -> usize {
        match self {
            Scenario::StandbyCarrier => 1,
            _ => 0,
        }
    }

    pub fn parse(s: &str) -> Result<Scenario, LabError> {
        Scenario::ALL
            .into_iter()
            .find(|x| x.name() == s)
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "unknown scenario '{s}': choose one of {}",
                    Scenario::ALL.map(|x| x.name()).join(", ")
                ))
            })
    }
}

/// How to run a scenario.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub pm: PmKind,
    pub paths: Vec<PathSpec>,
    pub duration: Duration,
    pub emulator_exe: PathBuf,
    /// Unique per run (lab names must not collide).
    pub lab_name: String,
    /// Bulk data from client to server instead of the default download.
    pub upload: bool,
    /// Keep the run's logs (MPTCP events on both ends, the path manager's
    /// log, scenario events) in this directory.
    pub logs: Option<PathBuf>,
    /// Sysctls set in the client's and the server's namespace before the
    /// traffic starts.
    pub client_sysctls: Vec<Sysctl>,
    pub server_sysctls: Vec<Sysctl>,
    /// Settings of Braid's daemon's `[policy]` for the run (none: its
    /// defaults); other path managers have no such settings.
    pub policy: Vec<PolicySetting>,
    /// How the client reaches the server: directly over MPTCP, or through
    /// a relay to a plain-TCP origin.
    pub via: Via,
    /// TCP congestion control in every namespace of the lab (None: the
    /// host's default, which new namespaces start with).
    pub congestion: Option<String>,
    /// Seed of the emulator's random loss and jitter: the same seed drops
    /// the same packets (by their order on each path and direction), so
    /// repeated runs need different seeds to be different samples.
    pub seed: u64,
}

/// A seed for a run that is to be a new sample.
pub fn fresh_seed() -> u64 {
    fastrand::u64(..)
}

#[derive(Debug, Clone, Serialize)]
pub struct TimedEvent {
    pub t_ms: f64,
    pub what: String,
}

#[derive(Debug, Clone, Serialize, Default)]
pub struct Metrics {
    /// Mean goodput over the measured window, Mbit/s.
    pub goodput_mbps: Option<f64>,
    /// Goodput / sum of path rates (aggregate).
    pub aggregation_ratio: Option<f64>,
    pub per_path_mbps: Vec<f64>,
    /// Longest gap between received bytes over the whole run.
    pub longest_stall_ms: Option<f64>,
    /// From the failure until data flows again (the hole it left filled).
    pub resume_ms: Option<f64>,
    /// The longest gap in received data the failure caused.
    pub stall_ms: Option<f64>,
    /// From the failure until goodput is back to half of what the surviving
    /// paths can carry.
    pub recovery_ms: Option<f64>,
    /// late-interface: from the address appearing until the path carries data.
    pub new_path_ms: Option<f64>,
    /// flap: from the primary's return until it carries data again.
    pub reuse_ms: Option<f64>,
    pub probe: Option<ProbeResult>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: &'static str,
    pub pm: &'static str,
    pub via: &'static str,
    pub direction: &'static str,
    pub duration_s: f64,
    pub paths: Vec<PathSpec>,
    pub survived: bool,
    pub bytes_sent: u64,
    pub bytes_verified: u64,
    pub bytes_corrupt: u64,
    pub transport: String,
    pub metrics: Metrics,
    pub events: Vec<TimedEvent>,
    /// The TCP congestion control the lab's namespaces used.
    pub congestion_control: String,
    /// The emulator's seed (`--seed` makes the same losses again).
    pub seed: u64,
    /// Sysctls set for the run (`client: NAME=VALUE`, `server: ...`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub sysctls: Vec<String>,
    /// The daemon's policy settings for the run (`NAME = VALUE`), where
    /// not its defaults.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The client namespace's counters of connections the kernel made
    /// plain TCP, where not 0: `MPCapableSYNTXDrop` (MP_CAPABLE SYNs went
    /// unanswered) and `Blackhole` (the kernel then turned active MPTCP
    /// off for the namespace).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub client_fallbacks: std::collections::BTreeMap<String, u64>,
    /// Goodput series (Mbit/s per 100 ms): total, then per path.
    pub series_total_mbps: Vec<f64>,
    pub series_path_mbps: Vec<Vec<f64>>,
}

const BULK_PORT: u16 = 5201;
const PROBE_PORT: u16 = 5202;

fn mbps(bytes_per_bucket: &[u64]) -> Vec<f64> {
    bytes_per_bucket
        .iter()
        .map(|b| *b as f64 * 8.0 / 0.1 / 1e6)
        .collect()
}

fn sleep_until(bulk_t0: u64, t_ms: f64) {
    let due = bulk_t0 + (t_ms * 1e6) as u64;
    let now = crate::emulator::mono_ns();
    if due > now {
        std::thread::sleep(Duration::from_nanos(due - now));
    }
}

fn record(events: &mut Vec<TimedEvent>, logs: &mut Option<RunLogs>, t_ms: f64, what: String) {
    if let Some(l) = logs {
        l.note(t_ms, &what);
    }
    events.push(TimedEvent { t_ms, what });
}

fn sysctl_notes(cfg: &RunConfig) -> Vec<String> {
    let side = |who: &str, l: &[Sysctl]| -> Vec<String> {
        l.iter()
            .map(|x| format!("{who}: {}={}", x.name, x.value))
            .collect()
    };
    let mut v = side("client", &cfg.client_sysctls);
    v.extend(side("server", &cfg.server_sysctls));
    v
}

/// Run one scenario in a fresh lab that is removed afterwards.
pub fn run(cfg: &RunConfig) -> Result<Report, LabError> {
    let paths = scenario_paths(cfg)?;
    let absent = if cfg.scenario == Scenario::LateInterface {
        vec![1]
    } else {
        Vec::new()
    };
    let mut guard = LabGuard::up(LabConfig {
        name: cfg.lab_name.clone(),
        paths: paths.clone(),
        emulator_exe: cfg.emulator_exe.clone(),
        client_addr_absent: absent,
        seed: cfg.seed,
        origin: cfg.via != Via::Direct,
    })?;
    set_congestion(guard.lab(), cfg.congestion.as_deref())?;
    let mut logs = match &cfg.logs {
        Some(dir) => Some(RunLogs::start(dir, cfg.pm, guard.lab(), &cfg.emulator_exe)?),
        None => None,
    };
    let _pm = pm::start(cfg.pm, guard.lab(), &cfg.emulator_exe, &cfg.policy)?;
    let st = guard.lab().state.clone();
    apply_sysctls(&st, cfg)?;
    let congestion = congestion_of(&st)?;
    let proxies = via::start(cfg.via, guard.lab(), &cfg.emulator_exe)?;
    let ep = endpoints(&st, &proxies);
    let mut events = Vec::new();

    if cfg.scenario == Scenario::LossyPrimary {
        let probe = Probe::start(
            &ep,
            PROBE_PORT,
            Duration::from_millis(20),
            cfg.duration,
            200.0,
        )?;
        let p = probe.finish()?;
        drop(proxies);
        drop(_pm);
        if let Some(l) = logs {
            l.probe_timeline(&p);
            l.finish(guard.lab());
        }
        let mut report = lossy_primary_report(cfg, paths, congestion, p, events);
        report.client_fallbacks = client_fallbacks(guard.lab());
        return Ok(report);
    }

    let dir = if cfg.upload {
        crate::traffic::Direction::Upload
    } else {
        crate::traffic::Direction::Download
    };
    let bulk = Bulk::start_dir(&ep, BULK_PORT, cfg.duration, dir)?;
    let lab = guard.lab_mut();
    let at = inject(cfg, lab, &bulk, &mut events, &mut logs)?;
    let r = bulk.finish()?;
    drop(proxies);
    drop(_pm);
    if let Some(l) = logs {
        l.finish(guard.lab());
    }
    let fallbacks = client_fallbacks(guard.lab());
    drop(guard);
    let mut report = report(
        cfg,
        paths,
        congestion,
        r,
        events,
        at.fail_at,
        at.addr_at,
        at.restore_at,
    );
    report.client_fallbacks = fallbacks;
    Ok(report)
}

/// `Report::client_fallbacks`, read in the client's namespace (empty if
/// the counters cannot be read).
fn client_fallbacks(lab: &Lab) -> std::collections::BTreeMap<String, u64> {
    let counters = braid_kernel::netns::run_in::<_, LabError>(&lab.state.client_ns, || {
        Ok(braid_kernel::counters::mptcp().unwrap_or_default())
    })
    .unwrap_or_default();
    use braid_kernel::counters::{BLACKHOLES, MPC_SYN_DROPS};
    [MPC_SYN_DROPS, BLACKHOLES]
        .into_iter()
        .filter_map(|n| Some((n.to_string(), *counters.get(n).filter(|v| **v > 0)?)))
        .collect()
}

/// Set `name` as the congestion control of every namespace of the lab
/// (when given).
fn set_congestion(lab: &Lab, name: Option<&str>) -> Result<(), LabError> {
    let Some(name) = name else {
        return Ok(());
    };
    let st = &lab.state;
    for ns in [&st.client_ns, &st.server_ns]
        .into_iter()
        .chain(st.origin.as_ref().map(|o| &o.ns))
    {
        let name = name.to_string();
        braid_kernel::netns::run_in::<_, LabError>(ns, move || {
            crate::lab::set_congestion_control(&name)
        })?;
    }
    Ok(())
}

/// The congestion control the run has (after its sysctls): one name, or
/// each end's when they differ (the sender's is the one that counts).
fn congestion_of(st: &LabState) -> Result<String, LabError> {
    let of =
        |ns: &str| braid_kernel::netns::run_in::<_, LabError>(ns, crate::lab::congestion_control);
    let (client, server) = (of(&st.client_ns)?, of(&st.server_ns)?);
    Ok(if client == server {
        client
    } else {
        format!("{client} (client), {server} (server)")
    })
}

/// The lab's paths for `cfg`, once it is known the scenario can run.
fn scenario_paths(cfg: &RunConfig) -> Result<Vec<PathSpec>, LabError> {
    if let Some(why) = cfg.pm.unavailable().or_else(|| cfg.via.unavailable()) {
        return Err(LabError::Invalid(why));
    }
    if cfg.paths.len() < 2 {
        return Err(LabError::Invalid("scenarios need at least 2 paths".into()));
    }
    Ok(cfg.paths.clone())
}

/// The run's sysctls, in the client's and the server's namespaces.
fn apply_sysctls(st: &LabState, cfg: &RunConfig) -> Result<(), LabError> {
    for (ns, list) in [
        (&st.client_ns, &cfg.client_sysctls),
        (&st.server_ns, &cfg.server_sysctls),
    ] {
        let list = list.clone();
        braid_kernel::netns::run_in::<_, LabError>(ns, move || {
            list.iter().try_for_each(Sysctl::apply)
        })?;
    }
    Ok(())
}

/// Where the traffic goes: to the origin behind the proxies when there are
/// any, else straight to the server over MPTCP.
fn endpoints(st: &LabState, proxies: &Option<RunningVia>) -> Endpoints {
    let (server_ns, server_addr) = match &st.origin {
        Some(o) if proxies.is_some() => (o.ns.clone(), o.addr),
        _ => (st.server_ns.clone(), st.paths[0].server_addr),
    };
    Endpoints {
        client_ns: st.client_ns.clone(),
        server_ns,
        server_addr,
        mptcp_server_ns: st.server_ns.clone(),
        path_client_addrs: st.paths.iter().map(|p| p.client_addr).collect(),
        way: proxies
            .as_ref()
            .map(|p| p.way)
            .unwrap_or(crate::traffic::ClientWay::Mptcp),
    }
}

fn lossy_primary_report(
    cfg: &RunConfig,
    paths: Vec<PathSpec>,
    congestion_control: String,
    p: ProbeResult,
    events: Vec<TimedEvent>,
) -> Report {
    let survived = p.lost == 0 || p.replies > 0;
    Report {
        scenario: cfg.scenario.name(),
        pm: cfg.pm.name(),
        via: cfg.via.name(),
        direction: "request/response",
        duration_s: cfg.duration.as_secs_f64(),
        paths,
        survived,
        bytes_sent: p.sent * 1024,
        bytes_verified: (p.replies - p.corrupt) * 1024,
        bytes_corrupt: p.corrupt * 1024,
        transport: p.transport.clone(),
        metrics: Metrics {
            probe: Some(p),
            ..Default::default()
        },
        events,
        congestion_control,
        seed: cfg.seed,
        sysctls: sysctl_notes(cfg),
        policy: pm::policy_record(cfg.pm, &cfg.policy),
        error: None,
        client_fallbacks: Default::default(),
        series_total_mbps: Vec::new(),
        series_path_mbps: Vec::new(),
    }
}

/// When the scenario's events happened (ms into the bulk transfer).
#[derive(Default)]
struct EventTimes {
    fail_at: Option<f64>,
    addr_at: Option<f64>,
    restore_at: Option<f64>,
}

/// The scenario's events on the lab, each at its point of the transfer.
fn inject(
    cfg: &RunConfig,
    lab: &mut Lab,
    bulk: &Bulk,
    events: &mut Vec<TimedEvent>,
    logs: &mut Option<RunLogs>,
) -> Result<EventTimes, LabError> {
    let t0 = bulk.t0();
    let d_ms = cfg.duration.as_secs_f64() * 1000.0;
    let mut at = EventTimes::default();
    match cfg.scenario {
        Scenario::Aggregate | Scenario::LossyPrimary => {}
        Scenario::FailoverCarrier | Scenario::FailoverBlackhole => {
            let t = d_ms * 0.4;
            sleep_until(t0, t);
            let how = if cfg.scenario == Scenario::FailoverCarrier {
                Cut::Carrier
            } else {
                Cut::Blackhole
            };
            if how == Cut::Carrier {
                lab.wait_for_quiet_link_watch();
            }
            lab.cut(0, how)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                format!(
                    "path 0 {}",
                    if how == Cut::Carrier {
                        "loses carrier"
                    } else {
                        "blackholed"
                    }
                ),
            );
            at.fail_at = Some(events.last().unwrap().t_ms);
        }
        Scenario::StandbyCarrier => {
            sleep_until(t0, d_ms * 0.4);
            lab.wait_for_quiet_link_watch();
            lab.cut(1, Cut::Carrier)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                "path 1 (standing by) loses carrier".into(),
            );
            at.fail_at = Some(events.last().unwrap().t_ms);
        }
        Scenario::FailoverAddress => {
            sleep_until(t0, d_ms * 0.4);
            lab.remove_client_addr(0)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                "path 0 loses the client's address".into(),
            );
            at.fail_at = Some(events.last().unwrap().t_ms);
        }
        Scenario::LateInterface => {
            sleep_until(t0, d_ms * 0.3);
            lab.add_client_addr(1)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                "path 1 gets its address".into(),
            );
            at.addr_at = Some(events.last().unwrap().t_ms);
            sleep_until(t0, d_ms * 0.6);
            lab.wait_for_quiet_link_watch();
            lab.cut(0, Cut::Carrier)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                "path 0 loses carrier".into(),
            );
            at.fail_at = Some(events.last().unwrap().t_ms);
        }
        Scenario::Flap => {
            sleep_until(t0, d_ms * 0.3);
            lab.wait_for_quiet_link_watch();
            lab.remove_client_addr(0)?;
            lab.cut(0, Cut::Carrier)?;
            record(
                events,
                logs,
                bulk.elapsed_ms(),
                "path 0 goes away (address and carrier)".into(),
            );
            at.fail_at = Some(events.last().unwrap().t_ms);
            // The cut may have waited for the link watch: the path stays
            // away for at least 30 % of the run all the same.
            let away_until = (d_ms * 0.6).max(at.fail_at.unwrap_or(0.0) + d_ms * 0.3);
            sleep_until(t0, away_until);
            lab.restore(0)?;
            record(events, logs, bulk.elapsed_ms(), "path 0 comes back".into());
            at.restore_at = Some(events.last().unwrap().t_ms);
        }
    }
    Ok(at)
}

#[allow(clippy::too_many_arguments)]
fn report(
    cfg: &RunConfig,
    paths: Vec<PathSpec>,
    congestion_control: String,
    r: BulkResult,
    events: Vec<TimedEvent>,
    fail_at: Option<f64>,
    addr_at: Option<f64>,
    restore_at: Option<f64>,
) -> Report {
    let d_ms = cfg.duration.as_secs_f64() * 1000.0;
    let mut m = Metrics {
        longest_stall_ms: Some(r.longest_stall_ms),
        ..Default::default()
    };
    // Leave out the first second (slow start) from rates.
    let window = match fail_at {
        Some(t) => (t + 1000.0, d_ms),
        None => (1000.0_f64.min(d_ms / 4.0), d_ms),
    };
    let goodput = r.goodput_bps(window.0, window.1);
    m.goodput_mbps = Some(goodput / 1e6);
    m.per_path_mbps = (0..paths.len())
        .map(|k| r.path_goodput_bps(k, window.0, window.1) / 1e6)
        .collect();
    if cfg.scenario == Scenario::Aggregate {
        let sum: u64 = paths.iter().map(|p| p.rate_bps.unwrap_or(0)).sum();
        if sum > 0 {
            m.aggregation_ratio = Some(goodput / sum as f64);
        }
    }
    if let Some(t) = fail_at {
        m.stall_ms = Some(r.stall_after(t, 3000.0, d_ms));
        m.resume_ms = r.resume_after(t, 20.0);
        let failed = cfg.scenario.failed_path();
        let survivors: u64 = paths
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != failed)
            .map(|(_, p)| p.rate_bps.unwrap_or(0))
            .sum();
        let threshold = survivors as f64 * 0.5 * 0.1 / 8.0; // bytes per 100 ms bucket
        let start = (t / 100.0) as usize;
        m.recovery_ms = r
            .buckets
            .iter()
            .enumerate()
            .skip(start + 1)
            .find(|(_, b)| **b as f64 >= threshold)
            .map(|(i, _)| (i + 1) as f64 * 100.0 - t);
    }
    if let Some(t) = addr_at {
        m.new_path_ms = r.path_active_after(1, t, 1).map(|x| x - t);
    }
    if let Some(t) = restore_at {
        m.reuse_ms = r.path_active_after(0, t, 1).map(|x| x - t);
    }
    Report {
        scenario: cfg.scenario.name(),
        pm: cfg.pm.name(),
        via: cfg.via.name(),
        direction: if cfg.upload { "upload" } else { "download" },
        duration_s: cfg.duration.as_secs_f64(),
        paths,
        survived: r.survived,
        bytes_sent: r.bytes_sent,
        bytes_verified: r.bytes_verified,
        bytes_corrupt: r.bytes_corrupt,
        transport: r.transport.clone(),
        metrics: m,
        events,
        congestion_control,
        seed: cfg.seed,
        sysctls: sysctl_notes(cfg),
        policy: pm::policy_record(cfg.pm, &cfg.policy),
        error: r.error.clone(),
        client_fallbacks: Default::default(),
        series_total_mbps: mbps(&r.buckets),
        series_path_mbps: r.path_buckets.iter().map(|b| mbps(b)).collect(),
    }
}
