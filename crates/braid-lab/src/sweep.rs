//! The no-harm sweep: the failover and lossy-primary scenarios over a grid
//! of path delays, primary loss, kinds of failure and directions, for
//! several path managers and several runs per cell.
//!
//! Every run is appended to `runs.jsonl` as soon as it ends, so a sweep of
//! hours can be stopped and resumed (runs already in the file are not run
//! again). The logs of a run whose connection died or whose data came back
//! wrong, or whose stall or probe p99 alone is over its goal's bound
//! (`Cell::run_over_bound`), are kept in `failed-runs/`. The runs are reduced to the median and the worst of each cell
//! and path manager (`summarize`), checked against the goals (`goals`), and
//! drawn as a heat map (`heatmap_svg`).

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::pm::{PmKind, PolicySetting};
use crate::reaction::{self, Reaction};
use crate::scenario::{self, Report, RunConfig, Scenario};
use crate::spec::{self, PathSpec};
use crate::summary::{spread, Spread, Worse};
use crate::via::Via;
use crate::LabError;

/// What happens in a cell: to the primary, or (standby) to the secondary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fault {
    /// The link loses carrier.
    Carrier,
    /// Every packet is silently dropped, the link stays up.
    Blackhole,
    /// The client's address goes away, the link stays up.
    Address,
    /// Nothing fails: the primary is lossy and a request/response probe
    /// measures the latency an interactive application sees.
    Lossy,
    /// The primary is fine; the secondary, standing by, loses carrier:
    /// the transfer should not notice.
    Standby,
}

impl Fault {
    pub const ALL: [Fault; 5] = [
        Fault::Carrier,
        Fault::Blackhole,
        Fault::Address,
        Fault::Lossy,
        Fault::Standby,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Fault::Carrier => "carrier",
            Fault::Blackhole => "blackhole",
            Fault::Address => "address",
            Fault::Lossy => "lossy",
            Fault::Standby => "standby",
        }
    }

    pub fn parse(s: &str) -> Result<Fault, LabError> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s.trim())
            .ok_or_else(|| {
                LabError::Invalid(format!(
                    "unknown fault '{s}': choose from carrier, blackhole, address, lossy, standby"
                ))
            })
    }

    fn scenario(self) -> Scenario {
        match self {
            Fault::Carrier => Scenario::FailoverCarrier,
            Fault::Blackhole => Scenario::FailoverBlackhole,
            Fault::Address => Scenario::FailoverAddress,
            Fault::Lossy => Scenario::LossyPrimary,
            Fault::Standby => Scenario::StandbyCarrier,
        }
    }
}

/// One cell of the grid. Integers, so cells compare exactly when a sweep
/// is resumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Cell {
    pub fault: Fault,
    /// Bulk data from the client (false: a download; lossy cells: unused).
    pub upload: bool,
    /// One-way delay added on the primary and the secondary, microseconds.
    pub primary_delay_us: u64,
    pub secondary_delay_us: u64,
    /// Random loss on the primary in each direction, basis points (1 % = 100).
    pub primary_loss_bp: u32,
}

impl Cell {
    pub fn direction(&self) -> &'static str {
        match (self.fault, self.upload) {
            (Fault::Lossy, _) => "request/response",
            (_, true) => "upload",
            (_, false) => "download",
        }
    }

    /// RTTs the emulator adds (the namespaces' own is well under 1 ms).
    pub fn primary_rtt_ms(&self) -> f64 {
        2.0 * self.primary_delay_us as f64 / 1000.0
    }

    pub fn secondary_rtt_ms(&self) -> f64 {
        2.0 * self.secondary_delay_us as f64 / 1000.0
    }

    /// Goal 2's bound on handover's median stall in a blackhole cell:
    /// detection plus one resend.
    pub fn blackhole_bound_ms(&self) -> f64 {
        3.0 * self.primary_rtt_ms() + self.secondary_rtt_ms() + 30.0
    }

    /// Goal 3's bound on interactive's probe p99 in a lossy cell.
    pub fn lossy_bound_ms(&self) -> f64 {
        2.0 * self.secondary_rtt_ms() + 10.0
    }

    /// Whether one run of `pm` is over its goal's bound by itself (goal 2
    /// for handover in a blackhole cell, goal 3 for interactive in a lossy
    /// one): its logs are worth keeping.
    pub fn run_over_bound(
        &self,
        pm: &str,
        stall_ms: Option<f64>,
        probe_p99_ms: Option<f64>,
    ) -> bool {
        match (self.fault, pm) {
            (Fault::Blackhole, "braid:handover") => {
                stall_ms.is_some_and(|v| v > self.blackhole_bound_ms())
            }
            (Fault::Lossy, "braid:interactive") if self.primary_loss_bp >= 100 => {
                probe_p99_ms.is_some_and(|v| v > self.lossy_bound_ms())
            }
            _ => false,
        }
    }

    pub fn label(&self) -> String {
        format!(
            "{} {} {}/{} ms, {}% loss",
            self.fault.name(),
            self.direction(),
            ms(self.primary_delay_us),
            ms(self.secondary_delay_us),
            self.primary_loss_bp as f64 / 100.0
        )
    }
}

fn ms(us: u64) -> String {
    format!("{}", us as f64 / 1000.0)
}

/// The grid and how to run it.
#[derive(Debug, Clone)]
pub struct SweepConfig {
    /// One-way delays (primary, secondary), microseconds.
    pub delays: Vec<(u64, u64)>,
    /// Primary loss, basis points.
    pub losses: Vec<u32>,
    pub faults: Vec<Fault>,
    pub directions: Vec<bool>,
    pub pms: Vec<PmKind>,
    /// Path managers of the lossy cells (the probe runs long).
    pub lossy_pms: Vec<PmKind>,
    pub repeat: usize,
    pub duration: Duration,
    pub lossy_duration: Duration,
    /// Rate of the primary and the secondary.
    pub rates: (Option<u64>, Option<u64>),
    pub out: PathBuf,
    pub emulator_exe: PathBuf,
    /// Lab names are this prefix and a number.
    pub lab_prefix: String,
    /// TCP congestion control of every run (None: the host's default).
    pub congestion: Option<String>,
    /// Settings of Braid's daemon's `[policy]` in its runs (none: its
    /// defaults).
    pub policy: Vec<PolicySetting>,
}

impl SweepConfig {
    /// The cells in the order they are run: lossy cells only with loss.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &fault in &self.faults {
            let directions: &[bool] = if fault == Fault::Lossy {
                &[false]
            } else {
                &self.directions
            };
            for &upload in directions {
                for &(p, s) in &self.delays {
                    for &loss in &self.losses {
                        if fault == Fault::Lossy && loss == 0 {
                            continue;
                        }
                        cells.push(Cell {
                            fault,
                            upload,
                            primary_delay_us: p,
                            secondary_delay_us: s,
                            primary_loss_bp: loss,
                        });
                    }
                }
            }
        }
        cells
    }

    fn pms_of(&self, cell: &Cell) -> &[PmKind] {
        if cell.fault == Fault::Lossy {
            &self.lossy_pms
        } else {
            &self.pms
        }
    }

    /// Every run of the sweep, interleaved: each round goes over every
    /// cell and path manager once, so a drift of the machine spreads over
    /// all of them.
    pub fn plan(&self) -> Vec<(Cell, PmKind, usize)> {
        let cells = self.cells();
        let mut plan = Vec::new();
        for run in 0..self.repeat {
            for cell in &cells {
                for pm in self.pms_of(cell) {
                    plan.push((*cell, *pm, run));
                }
            }
        }
        plan
    }

    fn paths(&self, cell: &Cell) -> Vec<PathSpec> {
        let path = |rate, delay_us, loss| PathSpec {
            rate_bps: rate,
            delay_us,
            loss,
            ..PathSpec::default()
        };
        vec![
            path(
                self.rates.0,
                cell.primary_delay_us,
                cell.primary_loss_bp as f64 / 10_000.0,
            ),
            path(self.rates.1, cell.secondary_delay_us, 0.0),
        ]
    }
}

/// Parse `0/0,1/10,10/40` (one-way delay of primary/secondary, ms unless
/// a unit is given).
pub fn parse_delays(s: &str) -> Result<Vec<(u64, u64)>, LabError> {
    let one = |x: &str| -> Result<u64, LabError> {
        let x = x.trim();
        let with_unit = if x.ends_with(|c: char| c.is_ascii_digit()) {
            format!("{x}ms")
        } else {
            x.to_string()
        };
        spec::parse_duration_us(&with_unit)
    };
    s.split(',')
        .map(|pair| {
            let (p, q) = pair.split_once('/').ok_or_else(|| {
                LabError::Invalid(format!(
                    "invalid delay pair '{pair}': write primary/secondary one-way delays, e.g. 10/40"
                ))
            })?;
            Ok((one(p)?, one(q)?))
        })
        .collect()
}

/// Parse `0,1%,10%` into basis points.
pub fn parse_losses(s: &str) -> Result<Vec<u32>, LabError> {
    s.split(',')
        .map(|x| {
            let x = x.trim();
            let v = spec::parse_loss(
                if x.ends_with('%') || x == "0" {
                    x.to_string()
                } else {
                    format!("{x}%")
                }
                .as_str(),
            )?;
            Ok((v * 10_000.0).round() as u32)
        })
        .collect()
}

/// One run, as appended to `runs.jsonl`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub cell: Cell,
    pub pm: String,
    pub run: usize,
    /// The longest gap in received data the failure caused.
    pub stall_ms: Option<f64>,
    /// From the failure until the hole it left is filled.
    pub resume_ms: Option<f64>,
    /// Lossy cells: request/response round trips.
    pub probe_p50_ms: Option<f64>,
    pub probe_p99_ms: Option<f64>,
    pub survived: bool,
    pub bytes_sent: u64,
    pub bytes_verified: u64,
    pub bytes_corrupt: u64,
    /// The run could not be made (the lab, the path manager...).
    pub error: Option<String>,
    /// When the run ended (seconds since the epoch).
    pub at_unix_s: u64,
    /// Braid's path managers: when the daemon suspected and acted on the
    /// fault, from the run's logs (runs of earlier sweeps have none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reaction: Option<Reaction>,
    /// The TCP congestion control of the run's namespaces (runs of sweeps
    /// before 2026-11-28 have none; they ran under this host's default, BBR).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub congestion_control: Option<String>,
    /// The emulator's seed (runs of sweeps before 2026-11-28 have none:
    /// they all had seed 7, so their repeats met the same losses).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    /// How the measured connection travelled: "mptcp", or
    /// `traffic::FELL_BACK` when the kernel gave up on MPTCP (after three
    /// unanswered MP_CAPABLE SYNs, `net.mptcp.syn_retrans_before_tcp_fallback`),
    /// so that no path manager could act on it. Runs of sweeps before
    /// 2026-11-28 have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Braid's runs: the daemon's policy settings where not its defaults
    /// (`NAME = VALUE`, from `--policy`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policy: Vec<String>,
}

impl RunRecord {
    fn from_report(cell: Cell, pm: PmKind, run: usize, r: &Report) -> RunRecord {
        RunRecord {
            cell,
            pm: pm.name().into(),
            run,
            stall_ms: r.metrics.stall_ms,
            resume_ms: r.metrics.resume_ms,
            probe_p50_ms: r.metrics.probe.as_ref().map(|p| p.p50_ms),
            probe_p99_ms: r.metrics.probe.as_ref().map(|p| p.p99_ms),
            survived: r.survived,
            bytes_sent: r.bytes_sent,
            bytes_verified: r.bytes_verified,
            bytes_corrupt: r.bytes_corrupt,
            error: r.error.clone(),
            at_unix_s: unix_now(),
            reaction: None,
            congestion_control: Some(r.congestion_control.clone()),
            seed: Some(r.seed),
            transport: Some(r.transport.clone()),
            policy: r.policy.clone(),
        }
    }

    /// A run that could not be made, as `rc` asked for it.
    fn failed(cell: Cell, pm: PmKind, run: usize, rc: &RunConfig, e: &LabError) -> RunRecord {
        RunRecord {
            cell,
            pm: pm.name().into(),
            run,
            stall_ms: None,
            resume_ms: None,
            probe_p50_ms: None,
            probe_p99_ms: None,
            survived: false,
            bytes_sent: 0,
            bytes_verified: 0,
            bytes_corrupt: 0,
            error: Some(e.to_string()),
            at_unix_s: unix_now(),
            reaction: None,
            congestion_control: rc.congestion.clone(),
            seed: Some(rc.seed),
            transport: None,
            policy: crate::pm::policy_record(pm, &rc.policy),
        }
    }

    /// The kernel fell back to plain TCP in the handshake: the run
    /// measured TCP on the primary, not the path manager.
    pub fn fell_back(&self) -> bool {
        self.transport.as_deref() == Some(crate::traffic::FELL_BACK)
    }

    /// The connection lasted the run and every byte came back right.
    pub fn intact(&self) -> bool {
        self.survived && self.bytes_corrupt == 0 && self.error.is_none()
    }

    /// The measurement the cell is about.
    pub fn value(&self) -> Option<f64> {
        if self.cell.fault == Fault::Lossy {
            self.probe_p99_ms
        } else {
            self.stall_ms
        }
    }
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub const RUNS_FILE: &str = "runs.jsonl";

/// The runs recorded so far in `dir`. A line that does not parse (a run
/// cut off while written) is skipped and told.
pub fn load_runs(dir: &Path) -> Result<Vec<RunRecord>, LabError> {
    let path = dir.join(RUNS_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(LabError::Io(format!("reading {}: {e}", path.display()))),
    };
    let mut runs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(r) => runs.push(r),
            Err(e) => eprintln!(
                "braid: {} line {} is not a run ({e}); it is ignored and the run made again",
                path.display(),
                i + 1
            ),
        }
    }
    Ok(runs)
}

fn append_run(dir: &Path, r: &RunRecord) -> Result<(), LabError> {
    use std::io::{Read, Seek, SeekFrom};
    let path = dir.join(RUNS_FILE);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .open(&path)
        .map_err(|e| LabError::Io(format!("opening {}: {e}", path.display())))?;
    // A line cut off by an interrupted sweep is ended first, so that only
    // it is lost and not the run appended after it.
    let mut last = [b'\n'];
    if f.seek(SeekFrom::End(-1)).is_ok() {
        let _ = f.read_exact(&mut last);
    }
    let mut line = String::new();
    if last[0] != b'\n' {
        line.push('\n');
    }
    line.push_str(&serde_json::to_string(r).expect("a run serializes"));
    line.push('\n');
    f.write_all(line.as_bytes())
        .and_then(|_| f.sync_data())
        .map_err(|e| LabError::Io(format!("writing {}: {e}", path.display())))
}

/// Run what the plan holds and `dir` does not, appending each run.
/// `progress` is told each run before it starts (index, total, what).
pub fn run(
    cfg: &SweepConfig,
    mut progress: impl FnMut(usize, usize, &str),
) -> Result<(), LabError> {
    std::fs::create_dir_all(&cfg.out)
        .map_err(|e| LabError::Io(format!("creating {}: {e}", cfg.out.display())))?;
    let earlier = load_runs(&cfg.out)?;
    // Every run of a directory is made under one congestion control: the
    // first recorded one. Checked up front when --cc names it, and after
    // each run in any case (the host's default may differ or change).
    let mut congestion: Option<String> = earlier.iter().find_map(|r| r.congestion_control.clone());
    if let (Some(had), Some(asked)) = (&congestion, &cfg.congestion) {
        if had != asked {
            return Err(mixed_congestion(&cfg.out, had, asked));
        }
    }
    // Likewise one policy for Braid's runs: a sweep under another is
    // another sweep.
    let asked = cfg.policy.iter().map(|p| p.to_string()).collect::<Vec<_>>();
    if let Some(had) = earlier.iter().find(|r| is_braid(&r.pm)).map(|r| &r.policy) {
        if *had != asked && cfg.plan().iter().any(|(_, pm, _)| pm.braid().is_some()) {
            return Err(mixed_policy(&cfg.out, had, &asked));
        }
    }
    let done: BTreeSet<(Cell, String, usize)> =
        earlier.into_iter().map(|r| (r.cell, r.pm, r.run)).collect();
    let todo: Vec<(Cell, PmKind, usize)> = cfg
        .plan()
        .into_iter()
        .filter(|(c, pm, run)| !done.contains(&(*c, pm.name().to_string(), *run)))
        .collect();
    for (i, (cell, pm, run)) in todo.iter().enumerate() {
        progress(
            i,
            todo.len(),
            &format!("{} with --pm {} (run {})", cell.label(), pm.name(), run + 1),
        );
        // Every run keeps its logs (MPTCP events of both ends, the path
        // manager's log) until it is known to have gone well: a connection
        // that dies once in a hundred runs can then be read about.
        let logs = cfg.out.join("failed-runs").join(format!(
            "{}-{}-{}-{}-{}bp-{}-run{}",
            cell.fault.name(),
            cell.direction().replace('/', "-"),
            cell.primary_delay_us,
            cell.secondary_delay_us,
            cell.primary_loss_bp,
            pm.name().replace(':', "-"),
            run + 1
        ));
        let rc = RunConfig {
            scenario: cell.fault.scenario(),
            pm: *pm,
            paths: cfg.paths(cell),
            duration: if cell.fault == Fault::Lossy {
                cfg.lossy_duration
            } else {
                cfg.duration
            },
            emulator_exe: cfg.emulator_exe.clone(),
            lab_name: format!("{}{}", cfg.lab_prefix, i % 1000),
            upload: cell.upload,
            logs: Some(logs.clone()),
            client_sysctls: Vec::new(),
            server_sysctls: Vec::new(),
            policy: cfg.policy.clone(),
            via: Via::Direct,
            congestion: cfg.congestion.clone(),
            seed: run_seed(cell, *run),
        };
        let record = match scenario::run(&rc) {
            Ok(r) => RunRecord {
                reaction: read_reaction(&logs, *pm),
                ..RunRecord::from_report(*cell, *pm, *run, &r)
            },
            // A run that cannot be made at all (no lab) stops the sweep:
            // every other run would fail the same way.
            Err(e @ LabError::Invalid(_)) => return Err(e),
            Err(e) => RunRecord::failed(*cell, *pm, *run, &rc, &e),
        };
        if let Some(had) = record.congestion_control.as_ref() {
            match &congestion {
                Some(first) if first != had => {
                    let now = match cfg.congestion {
                        Some(_) => had.clone(),
                        None => format!("{had} (the host's default)"),
                    };
                    return Err(mixed_congestion(&cfg.out, first, &now));
                }
                _ => congestion = Some(had.clone()),
            }
        }
        let over = cell.run_over_bound(&record.pm, record.stall_ms, record.probe_p99_ms);
        if record.survived && record.error.is_none() && record.bytes_corrupt == 0 && !over {
            let _ = std::fs::remove_dir_all(&logs);
        }
        append_run(&cfg.out, &record)?;
    }
    Ok(())
}

/// The emulator's seed for run `run` of `cell`: the same for every path
/// manager (each meets the same losses, so they are compared on equal
/// terms), different from run to run and cell to cell (each run a new
/// sample of where the losses fall).
pub fn run_seed(cell: &Cell, run: usize) -> u64 {
    let mut x = cell.primary_delay_us
        ^ cell.secondary_delay_us.rotate_left(20)
        ^ (cell.primary_loss_bp as u64).rotate_left(40)
        ^ ((cell.fault as u64) << 56)
        ^ ((cell.upload as u64) << 62)
        ^ (run as u64).rotate_left(48);
    // splitmix64's finalizer: nearby inputs give unrelated seeds.
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn mixed_congestion(out: &Path, had: &str, now: &str) -> LabError {
    LabError::Invalid(format!(
        "{} holds runs under the congestion control {had}, and this sweep runs under {now}: a sweep compares runs made alike (give --cc {had}, or another --out)",
        out.display()
    ))
}

fn mixed_policy(out: &Path, had: &[String], now: &[String]) -> LabError {
    let list = |l: &[String]| {
        if l.is_empty() {
            "its defaults".to_string()
        } else {
            l.join(", ")
        }
    };
    LabError::Invalid(format!(
        "{} holds Braid runs under the policy settings {}, and this sweep asks for {}: a sweep compares runs made alike (give the same --policy, or another --out)",
        out.display(),
        list(had),
        list(now)
    ))
}

/// Whether `pm` (a recorded name) is one of Braid's path managers.
fn is_braid(pm: &str) -> bool {
    PmKind::parse(pm).is_ok_and(|k| k.braid().is_some())
}

/// Braid's policy settings in the runs, for the summary's first lines
/// (None: its defaults everywhere).
pub fn policy_note(runs: &[RunRecord]) -> Option<String> {
    let mut seen: Vec<&Vec<String>> = runs
        .iter()
        .filter(|r| is_braid(&r.pm) && !r.policy.is_empty())
        .map(|r| &r.policy)
        .collect();
    seen.sort();
    seen.dedup();
    (!seen.is_empty()).then(|| {
        let sets: Vec<String> = seen.iter().map(|p| p.join(", ")).collect();
        format!(
            "Braid's policy settings (not its defaults): {}",
            sets.join("; ")
        )
    })
}

/// The daemon's reaction to the fault, from the run's logs (Braid's path
/// managers only: the kernel's own says nothing of its decisions).
fn read_reaction(logs: &Path, pm: PmKind) -> Option<Reaction> {
    let prefix = pm.name().replace(':', "-");
    let read = |name: &str| std::fs::read_to_string(logs.join(format!("{prefix}-{name}"))).ok();
    reaction::from_logs(&read("scenario.txt")?, &read("braid-daemon.log")?)
}

/// One path manager in one cell.
#[derive(Debug, Clone, Serialize)]
pub struct PmCell {
    pub pm: String,
    pub runs: usize,
    /// Stall (ms) in failover cells, probe p99 (ms) in lossy cells.
    pub value: Option<Spread>,
    /// When the daemon acted on the fault (ms after it), over the runs
    /// whose logs say.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub acted: Option<Spread>,
    /// Data the run moved (MB: received and verified) in failover cells,
    /// over the runs that survived: what a policy's choice of path costs
    /// or gains beside the stall (worst is the least).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub moved_mb: Option<Spread>,
    /// Runs whose connection died or whose data came back wrong, or that
    /// could not be made.
    pub died: usize,
    /// Runs whose connection the kernel made plain TCP in the handshake
    /// (counted in `value`, as a user would meet them, and named beside it).
    pub fell_back: usize,
    pub bytes_corrupt: u64,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct GoalCheck {
    /// The goal's number in issue 14.
    pub goal: u8,
    pub met: bool,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct CellSummary {
    pub cell: Cell,
    pub label: String,
    pub pms: Vec<PmCell>,
    pub goals: Vec<GoalCheck>,
}

impl CellSummary {
    pub fn pm(&self, name: &str) -> Option<&PmCell> {
        self.pms.iter().find(|p| p.pm == name)
    }

    /// The better median of the kernel alone and the kernel with a backup
    /// endpoint: what a policy must never be worse than.
    pub fn best_kernel_median(&self) -> Option<(f64, &'static str)> {
        [("kernel", "kernel"), ("kernel:backup", "kernel:backup")]
            .iter()
            .filter_map(|(n, label)| {
                self.pm(n)
                    .and_then(|p| p.value.as_ref())
                    .map(|s| (s.median, *label))
            })
            .min_by(|a, b| a.0.total_cmp(&b.0))
    }
}

/// Reduce the runs to one summary per cell, in grid order, with the goals
/// each cell is held to.
pub fn summarize(runs: &[RunRecord]) -> Vec<CellSummary> {
    let mut cells: Vec<Cell> = runs.iter().map(|r| r.cell).collect();
    cells.sort();
    cells.dedup();
    cells
        .into_iter()
        .map(|cell| {
            let mut names: Vec<&str> = Vec::new();
            for r in runs.iter().filter(|r| r.cell == cell) {
                if !names.contains(&r.pm.as_str()) {
                    names.push(&r.pm);
                }
            }
            names.sort_by_key(|n| pm_order(n));
            let pms = names
                .into_iter()
                .map(|pm| {
                    let these: Vec<&RunRecord> = runs
                        .iter()
                        .filter(|r| r.cell == cell && r.pm == pm)
                        .collect();
                    PmCell {
                        pm: pm.to_string(),
                        runs: these.len(),
                        value: spread(
                            these.iter().filter_map(|r| r.value()).collect(),
                            Worse::Higher,
                        ),
                        acted: spread(
                            these
                                .iter()
                                .filter_map(|r| r.reaction.map(|x| x.acted_ms))
                                .collect(),
                            Worse::Higher,
                        ),
                        moved_mb: spread(
                            these
                                .iter()
                                .filter(|r| cell.fault != Fault::Lossy && r.intact())
                                .map(|r| r.bytes_verified as f64 / 1e6)
                                .collect(),
                            Worse::Lower,
                        ),
                        died: these.iter().filter(|r| !r.intact()).count(),
                        fell_back: these.iter().filter(|r| r.fell_back()).count(),
                        bytes_corrupt: these.iter().map(|r| r.bytes_corrupt).sum(),
                        errors: these.iter().filter_map(|r| r.error.clone()).collect(),
                    }
                })
                .collect();
            let mut s = CellSummary {
                cell,
                label: cell.label(),
                pms,
                goals: Vec::new(),
            };
            s.goals = goals(&s);
            s
        })
        .collect()
}

fn pm_order(name: &str) -> usize {
    [
        "kernel",
        "kernel:backup",
        "braid",
        "braid:handover",
        "braid:interactive",
    ]
    .iter()
    .position(|n| *n == name)
    .unwrap_or(99)
}

/// The goals of issue 14 that apply to a cell, where it has what they need.
pub fn goals(s: &CellSummary) -> Vec<GoalCheck> {
    let c = &s.cell;
    let mut out = Vec::new();
    let handover = s.pm("braid:handover").and_then(|p| p.value.clone());
    if c.fault != Fault::Lossy {
        if let (Some(h), Some((best, which))) = (&handover, s.best_kernel_median()) {
            let bound = best + 10.0;
            out.push(GoalCheck {
                goal: 1,
                met: h.worst <= bound,
                detail: format!(
                    "braid:handover worst {:.0} ms vs {which} median {best:.0} ms + 10",
                    h.worst
                ),
            });
        }
    }
    if c.fault == Fault::Blackhole {
        if let Some(h) = &handover {
            let bound = c.blackhole_bound_ms();
            let mut detail = format!(
                "braid:handover median {:.0} ms vs 3 x {} + {} + 30 = {bound:.0} ms",
                h.median,
                c.primary_rtt_ms(),
                c.secondary_rtt_ms()
            );
            // Split the stall where the logs allow: detection is the
            // daemon's part, the rest is the kernel resending.
            if let Some(a) = s.pm("braid:handover").and_then(|p| p.acted.as_ref()) {
                detail.push_str(&format!(
                    " (the daemon acted {:.0} ms after the fault, budget 3 x {} + 30; \
                     the kernel's resend took the other {:.0}, budget {})",
                    a.median,
                    c.primary_rtt_ms(),
                    (h.median - a.median).max(0.0),
                    c.secondary_rtt_ms()
                ));
            }
            out.push(GoalCheck {
                goal: 2,
                met: h.median <= bound,
                detail,
            });
        }
    }
    if c.fault == Fault::Lossy && c.primary_loss_bp >= 100 {
        if let Some(p) = s.pm("braid:interactive").and_then(|p| p.value.clone()) {
            let bound = c.lossy_bound_ms();
            out.push(GoalCheck {
                goal: 3,
                met: p.worst <= bound,
                detail: format!(
                    "braid:interactive p99 worst {:.0} ms vs 2 x {} + 10 = {bound:.0} ms",
                    p.worst,
                    c.secondary_rtt_ms()
                ),
            });
        }
    }
    let broken: Vec<String> = s
        .pms
        .iter()
        .filter(|p| p.died > 0)
        .map(|p| format!("{}: {} of {} runs", p.pm, p.died, p.runs))
        .collect();
    out.push(GoalCheck {
        goal: 4,
        met: broken.is_empty(),
        detail: if broken.is_empty() {
            "every connection survived with every byte".into()
        } else {
            format!("died, lost or corrupt: {}", broken.join(", "))
        },
    });
    out
}

/// Which TCP congestion control the runs had, for the summary's first
/// line.
pub fn congestion_note(runs: &[RunRecord]) -> String {
    let mut named: Vec<&str> = runs
        .iter()
        .filter_map(|r| r.congestion_control.as_deref())
        .collect();
    named.sort();
    named.dedup();
    let unrecorded = runs
        .iter()
        .filter(|r| r.congestion_control.is_none())
        .count();
    if named.is_empty() {
        return "TCP congestion control: not recorded".into();
    }
    let mut s = format!("TCP congestion control: {}", named.join(", "));
    if unrecorded > 0 {
        let runs = if unrecorded == 1 { "run" } else { "runs" };
        s.push_str(&format!(" ({unrecorded} {runs} did not record theirs)"));
    }
    s
}

/// The path managers of these cells, in the tables' order.
fn pm_names<'a>(cells: impl Iterator<Item = &'a CellSummary>) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for c in cells {
        for p in &c.pms {
            if !names.contains(&p.pm) {
                names.push(p.pm.clone());
            }
        }
    }
    names.sort_by_key(|n| pm_order(n));
    names
}

/// A table's first two lines: the cell, a column per path manager, and
/// `last` for what the row says of them.
fn table_head(names: &[String], last: &str) -> String {
    let mut s = String::from("| cell |");
    for n in names {
        s.push_str(&format!(" {n} |"));
    }
    s.push_str(&format!(" {last} |\n|---|"));
    for _ in names {
        s.push_str("---|");
    }
    s.push_str("---|\n");
    s
}

/// The sweep as a Markdown table: a row per cell, a column per path
/// manager (median / worst), then the goals not met.
pub fn markdown(cells: &[CellSummary]) -> String {
    let names = pm_names(cells.iter());
    let mut s = table_head(&names, "goals");
    for c in cells {
        s.push_str(&format!("| {} |", c.label));
        for n in &names {
            let v = match c.pm(n) {
                Some(p) => {
                    let mut v = p
                        .value
                        .as_ref()
                        .map(|v| format!("{:.0} / {:.0}", v.median, v.worst))
                        .unwrap_or_else(|| "-".into());
                    if p.died > 0 {
                        v.push_str(&format!(" ({} died)", p.died));
                    }
                    if p.fell_back > 0 {
                        v.push_str(&format!(" ({} fell back to TCP)", p.fell_back));
                    }
                    v
                }
                None => "".into(),
            };
            s.push_str(&format!(" {v} |"));
        }
        let missed: Vec<String> = c
            .goals
            .iter()
            .filter(|g| !g.met)
            .map(|g| format!("**{} missed**: {}", g.goal, g.detail))
            .collect();
        let met: Vec<String> = c
            .goals
            .iter()
            .filter(|g| g.met)
            .map(|g| g.goal.to_string())
            .collect();
        let mut text = String::new();
        if !met.is_empty() {
            text.push_str(&format!("met {}", met.join(",")));
        }
        if !missed.is_empty() {
            if !text.is_empty() {
                text.push_str("; ");
            }
            text.push_str(&missed.join("; "));
        }
        s.push_str(&format!(" {text} |\n"));
    }
    s
}

/// The kernel configuration that uses the paths as a Braid mode does,
/// for data moved: aggregate sends on every path, as the kernel alone;
/// handover and interactive keep the other paths standing by, as
/// kernel:backup.
pub fn kernel_alike(pm: &str) -> Option<&'static str> {
    match PmKind::parse(pm).ok()?.braid()?.0 {
        "aggregate" => Some("kernel"),
        _ => Some("kernel:backup"),
    }
}

/// Below this share of the data moved by the kernel set up alike
/// (`kernel_alike`), a Braid path manager's median is named in the data
/// table: the runs' spread is about this wide.
pub const MOVED_LESS_SHARE: f64 = 0.9;

/// Data moved per failover cell (MB, median / least of the runs), with
/// Braid's path managers whose median is below `MOVED_LESS_SHARE` of the
/// kernel set up alike. Not one of issue 14's goals: a stall says what a
/// fault cost, this what the path a policy chose cost or gained over the
/// whole run. `None` when the sweep has no failover cell.
pub fn moved_markdown(cells: &[CellSummary]) -> Option<String> {
    let cells: Vec<&CellSummary> = cells
        .iter()
        .filter(|c| c.cell.fault != Fault::Lossy)
        .collect();
    if cells.is_empty() {
        return None;
    }
    let names = pm_names(cells.iter().copied());
    let mut s = String::from("Data moved in each run (MB): median / least\n\n");
    s.push_str(&table_head(
        &names,
        "moved less than the kernel set up alike",
    ));
    for c in cells {
        s.push_str(&format!("| {} |", c.label));
        for n in &names {
            let v = c
                .pm(n)
                .and_then(|p| p.moved_mb.as_ref())
                .map(|v| format!("{:.1} / {:.1}", v.median, v.worst))
                .unwrap_or_default();
            s.push_str(&format!(" {v} |"));
        }
        let median = |pm: &str| c.pm(pm)?.moved_mb.as_ref().map(|m| m.median);
        let less: Vec<String> = c
            .pms
            .iter()
            .filter_map(|p| {
                let anchor = kernel_alike(&p.pm)?;
                let (m, a) = (median(&p.pm)?, median(anchor)?);
                (m < a * MOVED_LESS_SHARE).then(|| {
                    format!(
                        "{} {m:.1} vs {anchor} {a:.1} ({:+.0} %)",
                        p.pm,
                        (m / a - 1.0) * 100.0
                    )
                })
            })
            .collect();
        s.push_str(&format!(" {} |\n", less.join("; ")));
    }
    Some(s)
}

/// The sweep's `summary.md`: the congestion control, Braid's policy
/// settings where not the defaults, the stall table with the goals, and
/// the data moved.
pub fn summary_markdown(runs: &[RunRecord], cells: &[CellSummary]) -> String {
    let mut s = format!("{}\n\n", congestion_note(runs));
    if let Some(note) = policy_note(runs) {
        s.push_str(&format!("{note}\n\n"));
    }
    s.push_str(&markdown(cells));
    if let Some(moved) = moved_markdown(cells) {
        s.push_str(&format!("\n{moved}"));
    }
    s
}

/// Goals met and missed over the whole sweep, per goal.
pub fn goal_totals(cells: &[CellSummary]) -> Vec<(u8, usize, usize)> {
    (1..=4)
        .filter_map(|g| {
            let checks: Vec<&GoalCheck> = cells
                .iter()
                .flat_map(|c| c.goals.iter())
                .filter(|x| x.goal == g)
                .collect();
            (!checks.is_empty()).then(|| {
                let met = checks.iter().filter(|x| x.met).count();
                (g, met, checks.len() - met)
            })
        })
        .collect()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// Green below 1 (better than the kernel), white at 1, red above, on a
/// log scale saturating at 4x either way.
fn ratio_color(r: f64) -> String {
    let x = (r.max(1e-3).log2() / 2.0).clamp(-1.0, 1.0);
    let (red, green, blue) = if x >= 0.0 {
        (255.0, 255.0 * (1.0 - x * 0.75), 255.0 * (1.0 - x * 0.75))
    } else {
        (255.0 * (1.0 + x * 0.6), 255.0, 255.0 * (1.0 + x * 0.6))
    };
    format!("rgb({:.0},{:.0},{:.0})", red, green, blue)
}

/// Heatmap cell sizes, in pixels.
const CW: f64 = 160.0;
const CH: f64 = 34.0;

/// One cell of a mode's panel at (`x`, `y`): grey when not measured,
/// framed when the mode missed its goal there.
fn heatmap_cell(s: &mut String, cell: Option<&CellSummary>, mode: &str, x: f64, y: f64) {
    let Some(cell) = cell else {
        s.push_str(&format!(
            "<rect x=\"{x}\" y=\"{y}\" width=\"{CW}\" height=\"{CH}\" fill=\"#eeeeee\" stroke=\"white\"/>\n"
        ));
        return;
    };
    let braid = cell.pm(mode).and_then(|p| p.value.as_ref());
    let (fill, text) = match (braid, cell.best_kernel_median()) {
        (Some(b), Some((k, _))) => {
            let ratio = if k > 0.0 { b.median / k } else { 1.0 };
            (
                ratio_color(ratio),
                format!("{ratio:.2}  ({:.0}/{:.0} vs {k:.0})", b.median, b.worst),
            )
        }
        (Some(b), None) => ("#eeeeee".into(), format!("{:.0}/{:.0}", b.median, b.worst)),
        _ => ("#eeeeee".into(), String::new()),
    };
    let missed = mode != "braid"
        && cell.goals.iter().any(|g| {
            !g.met
                && ((g.goal == 1 && mode == "braid:handover")
                    || (g.goal == 3 && mode == "braid:interactive"))
        });
    let stroke = if missed {
        "stroke=\"black\" stroke-width=\"2\""
    } else {
        "stroke=\"white\""
    };
    s.push_str(&format!(
        "<rect x=\"{x}\" y=\"{y}\" width=\"{CW}\" height=\"{CH}\" fill=\"{fill}\" {stroke}/>\n<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-size=\"10\">{}</text>\n",
        x + CW / 2.0,
        y + CH / 2.0 + 4.0,
        esc(&text)
    ));
}

/// A heat map per Braid mode: for each cell the ratio of Braid's median
/// (stall, or probe p99) to the better kernel median, with both figures
/// written in; a cell that misses goal 1 or 3 is framed in black.
pub fn heatmap_svg(cells: &[CellSummary]) -> String {
    const LEFT: f64 = 150.0;
    const TOP: f64 = 70.0;
    let modes: Vec<&str> = ["braid", "braid:handover", "braid:interactive"]
        .into_iter()
        .filter(|m| cells.iter().any(|c| c.pm(m).is_some()))
        .collect();
    let mut cols: Vec<(Fault, bool)> = cells
        .iter()
        .map(|c| (c.cell.fault, c.cell.upload))
        .collect();
    cols.sort();
    cols.dedup();
    let mut rows: Vec<(u64, u64, u32)> = cells
        .iter()
        .map(|c| {
            (
                c.cell.primary_delay_us,
                c.cell.secondary_delay_us,
                c.cell.primary_loss_bp,
            )
        })
        .collect();
    rows.sort();
    rows.dedup();
    let panel_h = TOP + CH * rows.len() as f64 + 30.0;
    let width = (LEFT + CW * cols.len() as f64 + 20.0).max(760.0);
    let height = panel_h * modes.len().max(1) as f64 + 40.0;
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    for (m, mode) in modes.iter().enumerate() {
        let y0 = m as f64 * panel_h;
        s.push_str(&format!(
            "<text x=\"10\" y=\"{}\" font-size=\"14\" font-weight=\"bold\">{}</text>\n<text x=\"10\" y=\"{}\">median / the better median of kernel and kernel:backup (stall; probe p99 in lossy cells). Green: Braid better. Framed: a goal missed.</text>\n",
            y0 + 20.0,
            esc(mode),
            y0 + 38.0
        ));
        for (j, (fault, upload)) in cols.iter().enumerate() {
            let dir = match (fault, upload) {
                (Fault::Lossy, _) => "p99",
                (_, true) => "upload",
                (_, false) => "download",
            };
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" font-weight=\"bold\">{} {dir}</text>\n",
                LEFT + CW * (j as f64 + 0.5),
                y0 + TOP - 8.0,
                fault.name()
            ));
        }
        for (i, (p, q, loss)) in rows.iter().enumerate() {
            let y = y0 + TOP + CH * i as f64;
            s.push_str(&format!(
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}/{} ms, {}% loss</text>\n",
                LEFT - 8.0,
                y + CH / 2.0 + 4.0,
                ms(*p),
                ms(*q),
                *loss as f64 / 100.0
            ));
            for (j, (fault, upload)) in cols.iter().enumerate() {
                let x = LEFT + CW * j as f64;
                let cell = cells.iter().find(|c| {
                    c.cell.fault == *fault
                        && c.cell.upload == *upload
                        && (
                            c.cell.primary_delay_us,
                            c.cell.secondary_delay_us,
                            c.cell.primary_loss_bp,
                        ) == (*p, *q, *loss)
                });
                heatmap_cell(&mut s, cell, mode, x, y);
            }
        }
    }
    s.push_str(&format!(
        "<text x=\"10\" y=\"{}\">Each cell: ratio (Braid median/worst ms vs the better kernel median ms). Grey: not measured.</text>\n</svg>\n",
        height - 14.0
    ));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(cell: Cell, pm: &str, run: usize, v: f64, survived: bool) -> RunRecord {
        RunRecord {
            cell,
            pm: pm.into(),
            run,
            stall_ms: Some(v),
            resume_ms: Some(v),
            probe_p50_ms: None,
            probe_p99_ms: None,
            survived,
            bytes_sent: 1,
            bytes_verified: 1,
            bytes_corrupt: 0,
            error: None,
            at_unix_s: 0,
            reaction: None,
            congestion_control: Some("cubic".into()),
            seed: None,
            transport: Some("mptcp".into()),
            policy: Vec::new(),
        }
    }

    fn blackhole() -> Cell {
        Cell {
            fault: Fault::Blackhole,
            upload: true,
            primary_delay_us: 10_000,
            secondary_delay_us: 40_000,
            primary_loss_bp: 0,
        }
    }

    #[test]
    fn grids_parse_and_refuse_nonsense() {
        assert_eq!(
            parse_delays("0/0,1/10,10ms/40ms").unwrap(),
            vec![(0, 0), (1000, 10_000), (10_000, 40_000)]
        );
        assert!(parse_delays("10").is_err());
        assert!(parse_delays("a/b").is_err());
        assert_eq!(parse_losses("0,1%,10").unwrap(), vec![0, 100, 1000]);
        assert!(parse_losses("150%").is_err());
        assert!(Fault::parse("meteor").is_err());
    }

    #[test]
    fn the_plan_interleaves_rounds_and_gives_lossy_cells_loss_only() {
        let cfg = SweepConfig {
            delays: vec![(0, 0), (10_000, 40_000)],
            losses: vec![0, 100],
            faults: vec![Fault::Carrier, Fault::Lossy],
            directions: vec![false, true],
            pms: vec![PmKind::Kernel, PmKind::BraidHandover],
            lossy_pms: vec![PmKind::BraidInteractive],
            repeat: 2,
            duration: Duration::from_secs(4),
            lossy_duration: Duration::from_secs(60),
            rates: (None, None),
            out: PathBuf::new(),
            emulator_exe: PathBuf::new(),
            lab_prefix: "t".into(),
            congestion: None,
            policy: Vec::new(),
        };
        let cells = cfg.cells();
        // carrier: 2 directions x 2 delays x 2 losses; lossy: 2 delays x 1 loss.
        assert_eq!(cells.len(), 8 + 2);
        assert!(cells
            .iter()
            .filter(|c| c.fault == Fault::Lossy)
            .all(|c| c.primary_loss_bp > 0 && !c.upload));
        let plan = cfg.plan();
        assert_eq!(plan.len(), 2 * (8 * 2 + 2));
        // The second round starts only after every cell had its first run.
        let first_second = plan.iter().position(|(_, _, r)| *r == 1).unwrap();
        assert!(plan[..first_second].iter().all(|(_, _, r)| *r == 0));
        assert_eq!(first_second, 18);
    }

    #[test]
    fn goals_compare_worst_handover_with_the_better_kernel_median() {
        let c = blackhole();
        let mut runs = Vec::new();
        for (i, v) in [100.0, 120.0, 400.0].into_iter().enumerate() {
            runs.push(record(c, "kernel", i, v, true));
        }
        for (i, v) in [90.0, 95.0, 200.0].into_iter().enumerate() {
            runs.push(record(c, "kernel:backup", i, v, true));
        }
        for (i, v) in [80.0, 85.0, 104.0].into_iter().enumerate() {
            runs.push(record(c, "braid:handover", i, v, true));
        }
        let s = &summarize(&runs)[0];
        assert_eq!(s.best_kernel_median(), Some((95.0, "kernel:backup")));
        let g1 = s.goals.iter().find(|g| g.goal == 1).unwrap();
        assert!(g1.met, "{}", g1.detail);
        // 3 x 20 + 80 + 30 = 170
        let g2 = s.goals.iter().find(|g| g.goal == 2).unwrap();
        assert!(g2.met, "{}", g2.detail);
        // One more bad run: the worst decides goal 1.
        runs.push(record(c, "braid:handover", 3, 106.0, true));
        let s = &summarize(&runs)[0];
        assert!(!s.goals.iter().find(|g| g.goal == 1).unwrap().met);
    }

    #[test]
    fn data_moved_names_a_braid_median_below_nine_tenths_of_the_kernel_set_up_alike() {
        let c = blackhole();
        let mut runs = Vec::new();
        let mut add = |pm: &str, mb: &[f64]| {
            for (i, m) in mb.iter().enumerate() {
                let mut r = record(c, pm, i, 50.0, true);
                r.bytes_verified = (m * 1e6) as u64;
                runs.push(r);
            }
        };
        add("kernel", &[13.0, 14.0, 15.0]);
        add("kernel:backup", &[12.0, 13.5, 14.0]);
        add("braid:handover", &[10.0, 10.7, 11.0]);
        add("braid", &[12.5, 13.0, 13.0]);
        // A dead run's short count is not data moved.
        let mut dead = record(c, "braid:handover", 3, 50.0, false);
        dead.bytes_verified = 1_000;
        runs.push(dead);
        let cells = summarize(&runs);
        let handover = cells[0].pm("braid:handover").unwrap();
        let moved = handover.moved_mb.as_ref().unwrap();
        assert_eq!((moved.median, moved.worst, moved.runs), (10.7, 10.0, 3));
        let md = moved_markdown(&cells).unwrap();
        assert!(
            md.contains("| braid:handover 10.7 vs kernel:backup 13.5 (-21 %) |"),
            "{md}"
        );
        // Aggregate is held to the kernel alone: 13.0 is within 9/10 of 14.
        assert!(!md.contains("braid 13.0 vs"), "{md}");
        assert_eq!(kernel_alike("braid:interactive"), Some("kernel:backup"));
        assert_eq!(kernel_alike("kernel"), None);
        // A sweep of lossy cells only has no data table.
        let lossy = Cell {
            fault: Fault::Lossy,
            ..c
        };
        let only_lossy = summarize(&[record(lossy, "kernel", 0, 5.0, true)]);
        assert_eq!(moved_markdown(&only_lossy), None);
    }

    #[test]
    fn the_logs_of_a_braid_run_over_its_goals_bound_are_kept() {
        // 3 x 20 + 80 + 30 = 170 ms, for handover only.
        let c = blackhole();
        assert!(c.run_over_bound("braid:handover", Some(171.0), None));
        assert!(!c.run_over_bound("braid:handover", Some(170.0), None));
        assert!(!c.run_over_bound("kernel:backup", Some(900.0), None));
        // 2 x 80 + 10 = 170 ms, for interactive on a lossy primary.
        let lossy = Cell {
            fault: Fault::Lossy,
            upload: false,
            primary_loss_bp: 1000,
            ..c
        };
        assert!(lossy.run_over_bound("braid:interactive", None, Some(501.0)));
        assert!(!lossy.run_over_bound("braid:interactive", None, Some(113.0)));
        assert!(!lossy.run_over_bound("kernel", None, Some(501.0)));
        let clean = Cell {
            primary_loss_bp: 0,
            ..lossy
        };
        assert!(!clean.run_over_bound("braid:interactive", None, Some(501.0)));
    }

    #[test]
    fn a_missed_blackhole_bound_is_split_into_detection_and_resend_when_logs_say() {
        let c = blackhole();
        let mut runs = Vec::new();
        for (i, (stall, acted)) in [(300.0, 120.0), (320.0, 140.0), (900.0, 150.0)]
            .into_iter()
            .enumerate()
        {
            let mut r = record(c, "braid:handover", i, stall, true);
            r.reaction = Some(Reaction {
                suspected_ms: Some(acted - 60.0),
                acted_ms: acted,
            });
            runs.push(r);
        }
        let s = &summarize(&runs)[0];
        let g2 = s.goals.iter().find(|g| g.goal == 2).unwrap();
        assert!(!g2.met);
        assert!(
            g2.detail
                .contains("the daemon acted 140 ms after the fault")
                && g2.detail.contains("the kernel's resend took the other 180"),
            "{}",
            g2.detail
        );
        // Runs of an older sweep, without logs: the bare figure.
        runs.iter_mut().for_each(|r| r.reaction = None);
        let s = &summarize(&runs)[0];
        let g2 = s.goals.iter().find(|g| g.goal == 2).unwrap();
        assert!(!g2.detail.contains("acted"), "{}", g2.detail);
    }

    #[test]
    fn a_dead_connection_misses_goal_four_whoever_it_was() {
        let c = blackhole();
        let runs = vec![
            record(c, "kernel", 0, 100.0, false),
            record(c, "braid:handover", 0, 50.0, true),
        ];
        let s = &summarize(&runs)[0];
        let g4 = s.goals.iter().find(|g| g.goal == 4).unwrap();
        assert!(!g4.met);
        assert!(g4.detail.contains("kernel: 1 of 1"), "{}", g4.detail);
        assert!(markdown(&summarize(&runs)).contains("(1 died)"));
        assert!(heatmap_svg(&summarize(&runs)).contains("<svg"));
    }

    #[test]
    fn a_run_the_kernel_made_plain_tcp_is_named_beside_the_figure() {
        let c = blackhole();
        let mut fell = record(c, "braid:handover", 1, 400.0, true);
        fell.transport = Some(crate::traffic::FELL_BACK.into());
        let mut older = record(c, "braid:handover", 2, 60.0, true);
        older.transport = None;
        let runs = vec![record(c, "braid:handover", 0, 50.0, true), fell, older];
        let s = &summarize(&runs)[0];
        let h = s.pm("braid:handover").unwrap();
        assert_eq!(h.fell_back, 1);
        // Still counted: a user on that path meets it too.
        assert_eq!(h.value.as_ref().unwrap().worst, 400.0);
        assert!(markdown(&summarize(&runs)).contains("(1 fell back to TCP)"));
        // An old line without the field reads as not known, not as fallen back.
        let line = serde_json::to_string(&runs[2]).unwrap();
        assert!(!line.contains("transport"), "{line}");
        let back: RunRecord = serde_json::from_str(&line).unwrap();
        assert!(!back.fell_back());
    }

    #[test]
    fn runs_are_resumed_from_the_file_and_a_torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("braid-sweep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(RUNS_FILE));
        append_run(&dir, &record(blackhole(), "kernel", 0, 10.0, true)).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(RUNS_FILE))
            .unwrap();
        f.write_all(b"{\"cell\":{\"fault\":\"carr").unwrap();
        append_run(&dir, &record(blackhole(), "braid:handover", 0, 20.0, true)).unwrap();
        let runs = load_runs(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(runs.len(), 2);
        assert_eq!(
            (runs[0].pm.as_str(), runs[1].pm.as_str()),
            ("kernel", "braid:handover")
        );
    }

    /// A sweep of `blackhole()` alone, one run of each of `pms`, into `out`.
    fn blackhole_sweep(out: &Path, pms: Vec<PmKind>) -> SweepConfig {
        SweepConfig {
            delays: vec![(10_000, 40_000)],
            losses: vec![0],
            faults: vec![Fault::Blackhole],
            directions: vec![true],
            pms,
            lossy_pms: Vec::new(),
            repeat: 1,
            duration: Duration::from_secs(4),
            lossy_duration: Duration::from_secs(60),
            rates: (None, None),
            out: out.to_path_buf(),
            emulator_exe: PathBuf::new(),
            lab_prefix: "t".into(),
            congestion: None,
            policy: Vec::new(),
        }
    }

    #[test]
    fn a_sweep_is_not_resumed_under_another_congestion_control() {
        let dir = std::env::temp_dir().join(format!("braid-sweep-cc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(RUNS_FILE));
        // The record helper's runs ran under cubic.
        append_run(&dir, &record(blackhole(), "kernel", 0, 10.0, true)).unwrap();
        let cfg = SweepConfig {
            repeat: 2,
            congestion: Some("reno".into()),
            ..blackhole_sweep(&dir, vec![PmKind::Kernel])
        };
        let mut asked = 0;
        let r = run(&cfg, |_, _, _| asked += 1);
        let e = r.unwrap_err().to_string();
        assert!(
            e.contains("under the congestion control cubic") && e.contains("--cc cubic"),
            "{e}"
        );
        assert_eq!(asked, 0, "no run is started");
        // Under the same one it goes on (here: nothing left to run).
        let same = SweepConfig {
            repeat: 1,
            congestion: Some("cubic".into()),
            ..cfg
        };
        let r = run(&same, |_, _, _| asked += 1);
        std::fs::remove_dir_all(&dir).unwrap();
        r.unwrap();
        assert_eq!(asked, 0);
    }

    #[test]
    fn a_sweep_is_not_resumed_under_other_policy_settings() {
        let dir = std::env::temp_dir().join(format!("braid-sweep-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let _ = std::fs::remove_file(dir.join(RUNS_FILE));
        let tuned = RunRecord {
            policy: vec!["standby_initcwnd = 10".into()],
            ..record(blackhole(), "braid:handover", 0, 10.0, true)
        };
        append_run(&dir, &record(blackhole(), "kernel", 0, 10.0, true)).unwrap();
        append_run(&dir, &tuned).unwrap();
        let cfg = blackhole_sweep(&dir, vec![PmKind::Kernel, PmKind::BraidHandover]);
        let mut asked = 0;
        let e = run(&cfg, |_, _, _| asked += 1).unwrap_err().to_string();
        assert!(
            e.contains("standby_initcwnd = 10") && e.contains("its defaults"),
            "{e}"
        );
        assert_eq!(asked, 0, "no run is started");
        // Kernel runs alone have no policy to differ in.
        let kernel_only = SweepConfig {
            pms: vec![PmKind::Kernel],
            ..cfg.clone()
        };
        run(&kernel_only, |_, _, _| asked += 1).unwrap();
        // The same settings go on (nothing left to run).
        let same = SweepConfig {
            policy: vec![PolicySetting::parse("standby_initcwnd=10").unwrap()],
            ..cfg
        };
        let r = run(&same, |_, _, _| asked += 1);
        let runs = load_runs(&dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        r.unwrap();
        assert_eq!(asked, 0);
        assert_eq!(
            policy_note(&runs).as_deref(),
            Some("Braid's policy settings (not its defaults): standby_initcwnd = 10")
        );
        assert_eq!(policy_note(&runs[..1]), None, "a kernel run has none");
    }

    #[test]
    fn each_run_of_a_cell_meets_other_losses_and_each_cell_too() {
        let other = Cell {
            primary_loss_bp: 100,
            ..blackhole()
        };
        let seeds = [
            run_seed(&blackhole(), 0),
            run_seed(&blackhole(), 1),
            run_seed(&blackhole(), 2),
            run_seed(&other, 0),
        ];
        for (i, a) in seeds.iter().enumerate() {
            for b in &seeds[i + 1..] {
                assert_ne!(a, b);
            }
        }
        // The same run of the same cell: the same losses for every path manager.
        assert_eq!(run_seed(&blackhole(), 1), seeds[1]);
    }

    #[test]
    fn the_summary_says_which_congestion_control_the_runs_had() {
        let mut old = record(blackhole(), "kernel", 0, 10.0, true);
        old.congestion_control = None;
        let new = record(blackhole(), "kernel", 1, 10.0, true);
        assert_eq!(
            congestion_note(&[old.clone(), new.clone()]),
            "TCP congestion control: cubic (1 run did not record theirs)"
        );
        assert_eq!(congestion_note(&[new]), "TCP congestion control: cubic");
        assert_eq!(
            congestion_note(&[old]),
            "TCP congestion control: not recorded"
        );
    }
}
