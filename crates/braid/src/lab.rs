//! `braid lab ...`: build multipath labs, change their paths live, run
//! scenarios and compare path managers.

use std::path::PathBuf;

use braid_kernel::Error;
use braid_lab::lab::{self, Cut, Lab, LabConfig, Sysctl};
use braid_lab::spec::{self, PathSpec};
use braid_lab::LabError;
use braid_lab::{relay_bench, relay_bench_table, report_table};
use clap::{Args, Subcommand};

use crate::{print_json, Ctx};

#[derive(Subcommand)]
pub enum LabCmd {
    /// Build a lab: a client and a server namespace joined by emulated paths.
    Up(UpArgs),
    /// Remove a lab and everything it made.
    Down {
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Show the labs that are up and their paths.
    #[command(alias = "ls", alias = "show")]
    List,
    /// Change a path live: --rate, --delay, --jitter, --loss.
    Set(SetArgs),
    /// Cut a path: --carrier (link loses carrier) or --blackhole (silently drops all).
    Cut {
        /// Path number (0 is the primary).
        path: String,
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, conflicts_with = "blackhole")]
        carrier: bool,
        #[arg(long)]
        blackhole: bool,
    },
    /// Undo cuts and go back to the path's initial setting and address.
    Restore {
        path: String,
        #[arg(long, default_value = "lab")]
        name: String,
    },
    /// Remove or add the client's address on a path.
    Addr {
        path: String,
        #[arg(long, default_value = "lab")]
        name: String,
        #[arg(long, conflicts_with = "add")]
        remove: bool,
        #[arg(long)]
        add: bool,
    },
    /// Run a scenario in a fresh lab: aggregate, failover-carrier, failover-blackhole, failover-address, late-interface, flap, lossy-primary, standby-carrier.
    Run(RunArgs),
    /// Run a scenario with several path managers, one after the other, and compare.
    Compare(RunArgs),
    /// The no-harm sweep: failover and lossy-primary over a grid of delays,
    /// primary loss, faults and directions, for several path managers;
    /// resumable (runs are kept in OUT/runs.jsonl), with a table, the goals
    /// of each cell and a heat map.
    Sweep(SweepArgs),
    /// The newcomer's tour: aggregate, failover-carrier and late-interface, each with the mode Braid recommends for it against the kernel's own configurations.
    Demo(DemoArgs),
    /// Measure the link emulator: added delay, loss, throughput and CPU at a rate.
    BenchEmulator(BenchArgs),
    /// Measure the relay against shadowsocks: forwarding cost, time to first byte, many connections.
    #[command(subcommand)]
    BenchRelay(BenchRelayCmd),
    /// (internal) run the link emulator of a lab.
    #[command(hide = true)]
    Emulate {
        #[arg(long)]
        config: PathBuf,
    },
}

#[derive(Args)]
pub struct UpArgs {
    #[arg(long, default_value = "lab")]
    pub name: String,
    /// Number of paths (1 to 8).
    #[arg(long, default_value_t = 2)]
    pub paths: usize,
    #[command(flatten)]
    pub link: LinkArgs,
}

/// How the paths are impaired (one value for all paths, or one per path).
#[derive(Args, Clone)]
pub struct LinkArgs {
    /// Rate per path, e.g. 40mbit,20mbit; "none" for unlimited.
    #[arg(long, default_value = "40mbit,20mbit")]
    pub rate: String,
    /// One-way delay per path and direction, e.g. 10ms,40ms.
    #[arg(long, default_value = "10ms,40ms")]
    pub delay: String,
    /// Jitter per path, e.g. 0,5ms.
    #[arg(long, default_value = "0")]
    pub jitter: String,
    /// Random loss per path and direction, e.g. 0,1% [default: 0].
    #[arg(long)]
    pub loss: Option<String>,
    /// Let jitter reorder packets.
    #[arg(long)]
    pub reorder: bool,
    /// Lose the first N MP_PRIO options (backup flags) sent each way on
    /// each path, e.g. 1,0: a peer that misses a backup flag, on purpose.
    #[arg(long, value_name = "N")]
    pub lose_mp_prio: Option<String>,
    /// Lose the first N SYNs with MP_CAPABLE sent to the server on each
    /// path, e.g. 3,0: three make the kernel fall back to TCP and turn
    /// active MPTCP off (a large N is a middlebox that drops MPTCP).
    #[arg(long, value_name = "N")]
    pub lose_mp_capable_syn: Option<String>,
    /// Where the rate is applied: a tbf qdisc on each end, or the emulator.
    #[arg(long, value_parser = ["tbf", "emulator"], default_value = "tbf")]
    pub rate_by: String,
}

impl Default for LinkArgs {
    fn default() -> Self {
        LinkArgs {
            rate: "40mbit,20mbit".into(),
            delay: "10ms,40ms".into(),
            jitter: "0".into(),
            loss: None,
            reorder: false,
            lose_mp_prio: None,
            lose_mp_capable_syn: None,
            rate_by: "tbf".into(),
        }
    }
}

/// The TCP congestion control of a lab's runs.
#[derive(Args, Clone, Default)]
pub struct CcArgs {
    /// TCP congestion control in the lab's namespaces, e.g. cubic, bbr
    /// [default: the host's, which new namespaces start with].
    #[arg(long, value_name = "NAME")]
    pub cc: Option<String>,
}

#[derive(Args)]
pub struct RunArgs {
    /// aggregate, failover-carrier, failover-blackhole, failover-address, late-interface, flap, lossy-primary (10 % loss on the primary unless --loss is given) or standby-carrier.
    pub scenario: String,
    /// Path manager(s): none, kernel, kernel:backup, braid, braid:handover, braid:interactive, braid-conn, braid-conn:handover, braid-conn:interactive (Braid as the per-connection userspace path manager), mptcpd (comma-separated for compare).
    #[arg(long, default_value = "kernel")]
    pub pm: String,
    /// How long the traffic runs.
    #[arg(long, default_value = "10s")]
    pub duration: String,
    /// Write per-path goodput over time as SVG.
    #[arg(long)]
    pub plot: Option<PathBuf>,
    /// Also write the JSON report to this file.
    #[arg(long, value_name = "FILE")]
    pub save: Option<PathBuf>,
    /// Bulk data from the client to the server (default: a download).
    #[arg(long)]
    pub upload: bool,
    /// Keep each run's logs here: MPTCP events on client and server
    /// (`PM-client-events.jsonl`, `PM-server-events.jsonl`), the path
    /// manager's log and the scenario's events, all with UTC times.
    #[arg(long, value_name = "DIR")]
    pub logs: Option<PathBuf>,
    /// Set a sysctl in the client's namespace before the traffic starts
    /// (repeatable), e.g. net.ipv4.tcp_rmem="4096 16777216 33554432".
    #[arg(long, value_name = "NAME=VALUE")]
    pub client_sysctl: Vec<String>,
    /// The same in the server's namespace.
    #[arg(long, value_name = "NAME=VALUE")]
    pub server_sysctl: Vec<String>,
    /// A setting of Braid's daemon's [policy] for the run (repeatable),
    /// e.g. standby_initcwnd=10 or stall_ms=150, to try it against the
    /// defaults (contrib/braid.toml lists them). Braid's path managers only.
    #[arg(long, value_name = "NAME=VALUE")]
    pub policy: Vec<String>,
    #[command(flatten)]
    pub cc: CcArgs,
    /// Seed of the emulator's random loss and jitter, to make a run's
    /// losses again (the report gives each run's; with --repeat, round k
    /// uses SEED + k) [default: a new one per round].
    #[arg(long)]
    pub seed: Option<u64>,
    /// How the client reaches the server: direct (MPTCP), relay (Braid's
    /// relay to a plain-TCP origin behind the server, through SOCKS5) or
    /// shadowsocks (shadowsocks-libev under mptcpize, the same way);
    /// comma-separated for compare.
    #[arg(long, default_value = "direct")]
    pub via: String,
    /// Run every configuration this many times (interleaved) and show the
    /// median and the worst of each measurement.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[command(flatten)]
    pub link: LinkArgs,
}

#[derive(Args)]
pub struct SweepArgs {
    /// Directory for runs.jsonl (appended run by run; runs already there
    /// are not made again), summary.md, summary.json and heatmap.svg.
    #[arg(long, default_value = "sweep")]
    pub out: PathBuf,
    /// One-way delays of primary/secondary, ms.
    #[arg(long, default_value = "0/0,1/10,10/40,50/100")]
    pub delays: String,
    /// Random loss on the primary (each direction).
    #[arg(long, default_value = "0,1%,10%")]
    pub loss: String,
    /// What happens: to the primary, carrier, blackhole, address, lossy; or standby (the secondary loses carrier).
    #[arg(long, default_value = "carrier,blackhole,address,lossy,standby")]
    pub faults: String,
    /// download, upload or both.
    #[arg(long, default_value = "download,upload")]
    pub directions: String,
    /// Path managers of the failover cells.
    #[arg(
        long,
        default_value = "kernel,kernel:backup,braid,braid:handover,braid:interactive"
    )]
    pub pm: String,
    /// Path managers of the lossy cells (a probe over --lossy-duration).
    #[arg(long, default_value = "kernel,kernel:backup,braid:interactive")]
    pub lossy_pm: String,
    /// Runs per cell and path manager.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// A setting of Braid's daemon's [policy] in its runs (repeatable), as
    /// for `lab run`; a directory's Braid runs all have the same.
    #[arg(long, value_name = "NAME=VALUE")]
    pub policy: Vec<String>,
    /// Length of a failover run (the primary fails at 40 %, a carrier cut
    /// no sooner than 2 s after the lab came up: see the kernel's link watch
    /// in docs/benchmarks.md).
    #[arg(long, default_value = "4s")]
    pub duration: String,
    /// Length of a lossy-primary probe run.
    #[arg(long, default_value = "60s")]
    pub lossy_duration: String,
    /// Rate of the primary and the secondary.
    #[arg(long, default_value = "40mbit,20mbit")]
    pub rate: String,
    /// Make no runs: summarise what OUT/runs.jsonl holds.
    #[arg(long)]
    pub report_only: bool,
    #[command(flatten)]
    pub cc: CcArgs,
}

#[derive(Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "100mbit")]
    pub rate: String,
    #[arg(long, default_value_t = 10_000)]
    pub packets: u64,
    #[arg(long, default_value = "10ms")]
    pub delay: String,
    #[arg(long, default_value = "1%")]
    pub loss: String,
}

#[derive(Subcommand)]
pub enum BenchRelayCmd {
    /// One TCP download through each proxy over veth paths at full speed; CPU per GB.
    Throughput {
        /// direct, relay, shadowsocks (comma-separated).
        #[arg(long, default_value = "direct,relay,shadowsocks")]
        via: String,
        #[arg(long, default_value_t = 2)]
        paths: usize,
        #[arg(long, default_value = "10s")]
        duration: String,
    },
    /// Time from connecting to the response of a short request, over the emulated paths.
    Ttfb {
        #[arg(long, default_value = "direct,relay,shadowsocks")]
        via: String,
        #[arg(long, default_value_t = 50)]
        samples: usize,
        /// TCP Fast Open on the proxies: on, off, or both (one run each).
        #[arg(long, value_parser = ["on", "off", "both"], default_value = "on")]
        fast_open: String,
        /// Braid's relay client answers CONNECT before the relay does
        /// (early_reply): on, off, or both. shadowsocks always does.
        #[arg(long, value_parser = ["on", "off", "both"], default_value = "off")]
        early_reply: String,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// A page load: 50 parallel short connections, all through the relay, against plain TCP on the primary path.
    Pageload {
        #[arg(long, default_value = "direct,transparent,relay")]
        via: String,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        /// Size of each response.
        #[arg(long, default_value_t = 16384)]
        bytes: usize,
        #[arg(long, default_value_t = 5)]
        runs: usize,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// A browser-like client that tries QUIC first, through transparent mode, with QUIC refused and allowed.
    Quic {
        #[arg(long, default_value_t = 20)]
        samples: usize,
        #[command(flatten)]
        link: LinkArgs,
    },
    /// Many relayed connections open at once: set-up time, memory, descriptors.
    Scale {
        #[arg(long, default_value = "relay,shadowsocks")]
        via: String,
        #[arg(long, default_value_t = 100)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        per_client: usize,
    },
}

#[derive(Args)]
pub struct DemoArgs {
    /// How long each scenario's traffic runs.
    #[arg(long, default_value = "6s")]
    pub duration: String,
    /// Where the SVG plots go.
    #[arg(long, default_value = "braid-demo")]
    pub out: PathBuf,
    /// Run each configuration this many times and show the median and the
    /// worst (the README's figures come from --repeat 5).
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
}

#[derive(Args)]
pub struct SetArgs {
    pub path: String,
    #[arg(long, default_value = "lab")]
    pub name: String,
    #[arg(long)]
    pub rate: Option<String>,
    #[arg(long)]
    pub delay: Option<String>,
    #[arg(long)]
    pub jitter: Option<String>,
    #[arg(long)]
    pub loss: Option<String>,
}

fn lab_err(e: LabError) -> Error {
    match e {
        LabError::Kernel(k) => k,
        other => Error::Invalid(other.to_string()),
    }
}

fn parse_rate_opt(s: &str) -> Result<Option<u64>, LabError> {
    if s == "none" || s == "0" {
        Ok(None)
    } else {
        spec::parse_rate(s).map(Some)
    }
}

pub fn path_specs(n: usize, a: &LinkArgs) -> Result<Vec<PathSpec>, LabError> {
    if !(1..=8).contains(&n) {
        return Err(LabError::Invalid(format!(
            "--paths {n} is out of range: 1 to 8"
        )));
    }
    let rates = spec::per_path(&a.rate, n, "rate")?;
    let delays = spec::per_path(&a.delay, n, "delay")?;
    let jitters = spec::per_path(&a.jitter, n, "jitter")?;
    let losses = spec::per_path(a.loss.as_deref().unwrap_or("0"), n, "loss")?;
    let lost_prios = spec::per_path(a.lose_mp_prio.as_deref().unwrap_or("0"), n, "lose-mp-prio")?;
    let lost_syns = spec::per_path(
        a.lose_mp_capable_syn.as_deref().unwrap_or("0"),
        n,
        "lose-mp-capable-syn",
    )?;
    (0..n)
        .map(|k| {
            Ok(PathSpec {
                rate_bps: parse_rate_opt(rates[k])?,
                delay_us: spec::parse_duration_us(delays[k])?,
                jitter_us: spec::parse_duration_us(jitters[k])?,
                loss: spec::parse_loss(losses[k])?,
                reorder: a.reorder,
                rate_in_emulator: a.rate_by == "emulator",
                lose_mp_prio: spec::parse_count(lost_prios[k], "lose-mp-prio")?,
                lose_mp_capable_syn: spec::parse_count(lost_syns[k], "lose-mp-capable-syn")?,
            })
        })
        .collect()
}

pub fn parse_path(s: &str) -> Result<usize, LabError> {
    s.trim_start_matches('p').parse().map_err(|_| {
        LabError::Invalid(format!(
            "invalid path '{s}': use its number, 0 for the primary"
        ))
    })
}

pub fn describe(spec: &PathSpec) -> String {
    let mut s = spec
        .rate_bps
        .map(spec::format_rate)
        .unwrap_or_else(|| "unlimited".into());
    if spec.rate_in_emulator && spec.rate_bps.is_some() {
        s.push_str(" (emulator)");
    }
    s.push_str(&format!(" delay {}ms", spec.delay_us as f64 / 1000.0));
    if spec.jitter_us > 0 {
        s.push_str(&format!(" jitter {}ms", spec.jitter_us as f64 / 1000.0));
    }
    if spec.loss > 0.0 {
        s.push_str(&format!(" loss {}%", spec.loss * 100.0));
    }
    if spec.lose_mp_prio > 0 {
        s.push_str(&format!(
            " (its first {} MP_PRIO each way lost)",
            spec.lose_mp_prio
        ));
    }
    if spec.lose_mp_capable_syn > 0 {
        s.push_str(&format!(
            " (its first {} MP_CAPABLE SYNs lost)",
            spec.lose_mp_capable_syn
        ));
    }
    s
}

pub fn run(ctx: &Ctx, cmd: LabCmd) -> Result<(), Error> {
    run_lab(ctx, cmd).map_err(lab_err)
}

fn run_lab(ctx: &Ctx, cmd: LabCmd) -> Result<(), LabError> {
    match cmd {
        LabCmd::Up(a) => {
            let paths = path_specs(a.paths, &a.link)?;
            let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
            let lab = Lab::up(LabConfig {
                name: a.name.clone(),
                paths,
                emulator_exe: exe,
                client_addr_absent: Vec::new(),
                origin: false,
                seed: 1,
            })?;
            print_lab(ctx, &lab);
            Ok(())
        }
        LabCmd::Down { name } => lab::teardown(&name, None),
        LabCmd::List => list_labs(ctx),
        LabCmd::Set(a) => set_path(a),
        LabCmd::Cut {
            path,
            name,
            carrier,
            blackhole,
        } => {
            let k = parse_path(&path)?;
            let how = match (carrier, blackhole) {
                (_, true) => Cut::Blackhole,
                (true, false) => Cut::Carrier,
                _ => {
                    return Err(LabError::Invalid(
                        "say how to cut: --carrier or --blackhole".into(),
                    ))
                }
            };
            Lab::open(&name)?.cut(k, how)
        }
        LabCmd::Restore { path, name } => Lab::open(&name)?.restore(parse_path(&path)?),
        LabCmd::Addr {
            path,
            name,
            remove,
            add,
        } => {
            let k = parse_path(&path)?;
            let lab = Lab::open(&name)?;
            match (remove, add) {
                (true, _) => lab.remove_client_addr(k),
                (_, true) => lab.add_client_addr(k),
                _ => Err(LabError::Invalid(
                    "say what to do: --remove or --add".into(),
                )),
            }
        }
        LabCmd::Run(a) => {
            let pms = parse_pms(&a.pm)?;
            if pms.len() != 1 || parse_vias(&a.via)?.len() != 1 {
                return Err(LabError::Invalid(
                    "'lab run' takes one --pm and one --via; use 'lab compare' for several".into(),
                ));
            }
            let reports = run_all(&a, &pms)?;
            output(ctx, &a, &reports)
        }
        LabCmd::Compare(a) => {
            let pms = parse_pms(&a.pm)?;
            let reports = run_all(&a, &pms)?;
            output(ctx, &a, &reports)
        }
        LabCmd::Sweep(a) => sweep(ctx, a),
        LabCmd::Demo(d) => demo(ctx, d),
        LabCmd::BenchEmulator(b) => bench_emulator(ctx, b),
        LabCmd::BenchRelay(b) => bench_relay(ctx, b),
        LabCmd::Emulate { config } => {
            let bytes = std::fs::read(&config)
                .map_err(|e| LabError::Io(format!("reading {}: {e}", config.display())))?;
            let cfg = serde_json::from_slice(&bytes).map_err(|e| {
                LabError::Invalid(format!(
                    "{} is not an emulator config: {e}",
                    config.display()
                ))
            })?;
            braid_lab::emulator::run(cfg)
        }
    }
}

fn list_labs(ctx: &Ctx) -> Result<(), LabError> {
    let labs: Vec<Lab> = lab::list()
        .iter()
        .filter_map(|n| Lab::open(n).ok())
        .collect();
    if ctx.json {
        print_json(&labs.iter().map(|l| &l.state).collect::<Vec<_>>());
    } else if labs.is_empty() {
        println!("no labs are up");
    } else {
        for l in &labs {
            print_lab(ctx, l);
        }
    }
    Ok(())
}

fn set_path(a: SetArgs) -> Result<(), LabError> {
    let k = parse_path(&a.path)?;
    let mut lab = Lab::open(&a.name)?;
    let mut spec = lab.path(k)?.spec;
    if let Some(r) = &a.rate {
        spec.rate_bps = parse_rate_opt(r)?;
    }
    if let Some(d) = &a.delay {
        spec.delay_us = spec::parse_duration_us(d)?;
    }
    if let Some(j) = &a.jitter {
        spec.jitter_us = spec::parse_duration_us(j)?;
    }
    if let Some(l) = &a.loss {
        spec.loss = spec::parse_loss(l)?;
    }
    lab.set(k, spec)
}

fn bench_emulator(ctx: &Ctx, b: BenchArgs) -> Result<(), LabError> {
    install_signal_teardown();
    let r = braid_lab::bench::accuracy(
        std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?,
        &unique_lab_name(99),
        spec::parse_rate(&b.rate)?,
        b.packets,
        spec::parse_duration_us(&b.delay)?,
        spec::parse_loss(&b.loss)?,
    )?;
    if ctx.json {
        print_json(&r);
    } else {
        println!(
            "rate {} ({} packets of {} bytes)",
            spec::format_rate(r.rate_bps),
            r.packets_sent,
            r.packet_bytes
        );
        println!(
            "delay: set {:.3} ms, added {:.3} ms (error {:+.3} ms; base {:.3} ms, p99 {:.3} ms)",
            r.set_delay_ms, r.added_delay_ms, r.delay_error_ms, r.base_delay_ms, r.p99_delay_ms
        );
        println!(
            "loss: set {:.2}%, measured {:.2}% ({:+.1}% relative)",
            r.set_loss * 100.0,
            r.measured_loss * 100.0,
            r.loss_error_relative * 100.0
        );
        println!(
            "received {:.1} Mbit/s; emulator CPU {:.0}% of one core",
            r.received_bps / 1e6,
            r.emulator_cpu * 100.0
        );
    }
    Ok(())
}

/// Reports as JSON, or as the table `table` makes of them.
fn print_reports<R: serde::Serialize>(ctx: &Ctx, reports: &[R], table: fn(&[R]) -> String) {
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", table(reports));
    }
}

/// What every relay benchmark runs with.
struct RelayBench<'a> {
    ctx: &'a Ctx,
    exe: PathBuf,
    name: String,
}

fn bench_relay(ctx: &Ctx, b: BenchRelayCmd) -> Result<(), LabError> {
    install_signal_teardown();
    let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
    let name = format!("rb{}", std::process::id() % 100_000);
    let rb = RelayBench { ctx, exe, name };
    match b {
        BenchRelayCmd::Throughput {
            via,
            paths,
            duration,
        } => bench_throughput(&rb, &via, paths, &duration),
        BenchRelayCmd::Ttfb {
            via,
            samples,
            fast_open,
            early_reply,
            link,
        } => bench_ttfb(&rb, &via, samples, &fast_open, &early_reply, &link),
        BenchRelayCmd::Pageload {
            via,
            connections,
            bytes,
            runs,
            link,
        } => bench_page_load(&rb, &via, connections, bytes, runs, &link),
        BenchRelayCmd::Quic { samples, link } => bench_quic(&rb, samples, &link),
        BenchRelayCmd::Scale {
            via,
            clients,
            per_client,
        } => bench_scale(&rb, &via, clients, per_client),
    }
}

/// Parse `via`, check each way is available, run the benchmark through
/// each in turn and print what they report.
fn bench_each_via<R: serde::Serialize>(
    ctx: &Ctx,
    via: &str,
    table: fn(&[R]) -> String,
    mut run: impl FnMut(Via) -> Result<Vec<R>, LabError>,
) -> Result<(), LabError> {
    let vias = parse_vias(via)?;
    relay_bench::check_available(&vias)?;
    let mut reports = Vec::new();
    for v in vias {
        reports.extend(run(v)?);
    }
    print_reports(ctx, &reports, table);
    Ok(())
}

fn bench_throughput(
    rb: &RelayBench,
    via: &str,
    paths: usize,
    duration: &str,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    bench_each_via(ctx, via, relay_bench_table::throughput, |v| {
        // Here, so that a bad --via is reported before a bad duration.
        let d = std::time::Duration::from_micros(spec::parse_duration_us(duration)?);
        eprintln!("braid: one download through {} for {d:?}", v.name());
        Ok(vec![relay_bench::throughput(exe, name, v, paths, d)?])
    })
}

fn bench_ttfb(
    rb: &RelayBench,
    via: &str,
    samples: usize,
    fast_open: &str,
    early_reply: &str,
    link: &LinkArgs,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    bench_each_via(ctx, via, relay_bench_table::ttfb, |v| {
        let mut reports = Vec::new();
        for opts in relay_bench::ttfb_options(v, fast_open, early_reply) {
            eprintln!(
                "braid: {samples} short requests through {} (fast open {}, early reply {})",
                v.name(),
                relay_bench_table::on_off(opts.fast_open),
                relay_bench_table::on_off(opts.early_reply)
            );
            reports.push(relay_bench::ttfb(
                exe,
                name,
                v,
                opts,
                path_specs(2, link)?,
                samples,
            )?);
        }
        Ok(reports)
    })
}

fn bench_page_load(
    rb: &RelayBench,
    via: &str,
    connections: usize,
    bytes: usize,
    runs: usize,
    link: &LinkArgs,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    bench_each_via(ctx, via, relay_bench_table::page_load, |v| {
        eprintln!(
            "braid: {runs} pages of {connections} connections through {}",
            v.name()
        );
        Ok(vec![relay_bench::page_load(
            exe,
            name,
            v,
            path_specs(2, link)?,
            connections,
            bytes,
            runs,
        )?])
    })
}

fn bench_quic(rb: &RelayBench, samples: usize, link: &LinkArgs) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    relay_bench::check_available(&[Via::Transparent])?;
    let mut reports = Vec::new();
    for mode in ["block", "relay", "allow"] {
        eprintln!("braid: {samples} QUIC-first requests with quic = {mode}");
        reports.push(relay_bench::quic_first(
            exe,
            name,
            mode,
            path_specs(2, link)?,
            samples,
        )?);
    }
    print_reports(ctx, &reports, relay_bench_table::quic_first);
    Ok(())
}

fn bench_scale(
    rb: &RelayBench,
    via: &str,
    clients: usize,
    per_client: usize,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    bench_each_via(ctx, via, relay_bench_table::scale, |v| {
        eprintln!(
            "braid: {clients} clients x {per_client} connections through {}",
            v.name()
        );
        Ok(vec![relay_bench::scale(exe, name, v, clients, per_client)?])
    })
}

fn print_lab(ctx: &Ctx, lab: &Lab) {
    let s = &lab.state;
    if ctx.json {
        print_json(s);
        return;
    }
    println!(
        "lab {}: client namespace {}, server namespace {}",
        s.name, s.client_ns, s.server_ns
    );
    for (k, p) in s.paths.iter().enumerate() {
        println!(
            "  path {k} ({}): client {} <-> server {}  {}",
            p.dev,
            p.client_addr,
            p.server_addr,
            describe(&p.spec)
        );
    }
    if let Ok(stats) = lab.stats() {
        for (k, [up, down]) in stats.iter().enumerate() {
            println!(
                "  path {k} emulator: up {} packets ({} dropped), down {} packets ({} dropped)",
                up.packets_in, up.dropped, down.packets_in, down.dropped
            );
        }
    }
    println!(
        "  try: braid -n {} conns   |   braid lab down --name {}",
        s.client_ns, s.name
    );
}

use braid_lab::pm::{PmKind, PolicySetting};
use braid_lab::scenario::{self, Report, RunConfig, Scenario};
use braid_lab::via::Via;

fn parse_pms(s: &str) -> Result<Vec<PmKind>, LabError> {
    s.split(',').map(|p| PmKind::parse(p.trim())).collect()
}

/// Tear down this process's labs on Ctrl-C or SIGTERM, then exit.
fn install_signal_teardown() {
    use signal_hook::consts::{SIGINT, SIGTERM};
    if let Ok(mut signals) = signal_hook::iterator::Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!("braid: interrupted, removing the lab");
                braid_lab::guard::teardown_active();
                std::process::exit(128 + sig);
            }
        });
    }
}

fn unique_lab_name(i: usize) -> String {
    format!("r{}x{i}", std::process::id() % 1_000_000)
}

fn parse_vias(s: &str) -> Result<Vec<Via>, LabError> {
    s.split(',').map(|v| Via::parse(v.trim())).collect()
}

/// The primary's loss in `lossy-primary` when --loss is not given.
const LOSSY_PRIMARY_LOSS: f64 = 0.10;

fn run_config(
    a: &RunArgs,
    pm: PmKind,
    via: Via,
    i: usize,
    seed: u64,
    policy: &[PolicySetting],
) -> Result<RunConfig, LabError> {
    let scenario = Scenario::parse(&a.scenario)?;
    if let Some(name) = &a.cc.cc {
        braid_lab::lab::check_congestion_name(name)?;
    }
    let link = &a.link;
    // As many paths as the longest per-path list, and at least two.
    let n = [
        Some(&link.rate),
        Some(&link.delay),
        Some(&link.jitter),
        link.loss.as_ref(),
    ]
    .iter()
    .flatten()
    .map(|l| l.split(',').count())
    .max()
    .unwrap_or(1)
    .max(2);
    let duration_us = spec::parse_duration_us(&a.duration)?;
    if duration_us < 2_000_000 {
        return Err(LabError::Invalid("--duration must be at least 2s".into()));
    }
    let mut paths = path_specs(n, link)?;
    // The lossy-primary scenario is about a lossy primary: 10 % unless
    // --loss says otherwise (an explicit 0 is a clean control).
    if scenario == Scenario::LossyPrimary && link.loss.is_none() {
        paths[0].loss = LOSSY_PRIMARY_LOSS;
    }
    Ok(RunConfig {
        scenario,
        pm,
        paths,
        duration: std::time::Duration::from_micros(duration_us),
        emulator_exe: std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?,
        lab_name: unique_lab_name(i),
        upload: a.upload,
        logs: a.logs.clone(),
        client_sysctls: a
            .client_sysctl
            .iter()
            .map(|s| Sysctl::parse(s))
            .collect::<Result<_, _>>()?,
        server_sysctls: a
            .server_sysctl
            .iter()
            .map(|s| Sysctl::parse(s))
            .collect::<Result<_, _>>()?,
        policy: policy.to_vec(),
        via,
        congestion: a.cc.cc.clone(),
        seed,
    })
}

fn run_all(a: &RunArgs, pms: &[PmKind]) -> Result<Vec<Report>, LabError> {
    install_signal_teardown();
    // Refuse up front rather than after minutes of runs.
    Scenario::parse(&a.scenario)?;
    for pm in pms {
        if let Some(why) = pm.unavailable() {
            return Err(LabError::Invalid(format!("--pm {}: {why}", pm.name())));
        }
    }
    let policy = braid_lab::pm::policy_settings(&a.policy, pms)?;
    let vias = parse_vias(&a.via)?;
    for via in &vias {
        if let Some(why) = via.unavailable() {
            return Err(LabError::Invalid(format!("--via {}: {why}", via.name())));
        }
    }
    if !(1..=100).contains(&a.repeat) {
        return Err(LabError::Invalid(
            "--repeat must be between 1 and 100".into(),
        ));
    }
    let mut reports = Vec::new();
    let mut i = 0;
    // Interleaved, so a slow drift of the machine spreads over all.
    for rep in 0..a.repeat {
        // One seed per round: every configuration meets the same losses,
        // and each round is a new sample (--seed repeats the first).
        let seed = match a.seed {
            Some(s) => s.wrapping_add(rep as u64),
            None => scenario::fresh_seed(),
        };
        for via in &vias {
            for pm in pms {
                let cfg = run_config(a, *pm, *via, i, seed, &policy)?;
                i += 1;
                eprintln!(
                    "braid: running {} with --pm {} --via {} for {:?}{}",
                    a.scenario,
                    pm.name(),
                    via.name(),
                    cfg.duration,
                    if a.repeat > 1 {
                        format!(" (run {} of {})", rep + 1, a.repeat)
                    } else {
                        String::new()
                    }
                );
                reports.push(scenario::run(&cfg)?);
            }
        }
    }
    Ok(reports)
}

fn output(ctx: &Ctx, a: &RunArgs, reports: &[Report]) -> Result<(), LabError> {
    if let Some(p) = &a.plot {
        // The first round of runs: repeats would draw over each other.
        let first_round = reports.len() / a.repeat.max(1);
        let refs: Vec<&Report> = reports.iter().take(first_round).collect();
        std::fs::write(p, braid_lab::plot::svg(&refs))
            .map_err(|e| LabError::Io(format!("writing {}: {e}", p.display())))?;
        eprintln!("braid: plot written to {}", p.display());
    }
    if let Some(p) = &a.save {
        std::fs::write(
            p,
            serde_json::to_vec_pretty(reports).expect("reports serialize"),
        )
        .map_err(|e| LabError::Io(format!("writing {}: {e}", p.display())))?;
    }
    if ctx.json {
        print_json(&reports);
    } else if a.repeat > 1 {
        print!("{}", report_table::summary(reports));
    } else {
        print!("{}", report_table::per_run(reports));
    }
    Ok(())
}

fn sweep(ctx: &Ctx, a: SweepArgs) -> Result<(), LabError> {
    use braid_lab::sweep::{self, Fault, SweepConfig};
    let duration = |s: &str, what: &str| -> Result<std::time::Duration, LabError> {
        let us = spec::parse_duration_us(s)?;
        if us < 2_000_000 {
            return Err(LabError::Invalid(format!("{what} must be at least 2s")));
        }
        Ok(std::time::Duration::from_micros(us))
    };
    let rates = spec::per_path(&a.rate, 2, "rate")?;
    let directions = a
        .directions
        .split(',')
        .map(|d| match d.trim() {
            "download" => Ok(false),
            "upload" => Ok(true),
            other => Err(LabError::Invalid(format!(
                "unknown direction '{other}': use download, upload or both"
            ))),
        })
        .collect::<Result<Vec<bool>, LabError>>()?;
    if !(1..=100).contains(&a.repeat) {
        return Err(LabError::Invalid(
            "--repeat must be between 1 and 100".into(),
        ));
    }
    let pms = parse_pms(&a.pm)?;
    let lossy_pms = parse_pms(&a.lossy_pm)?;
    let all_pms: Vec<PmKind> = pms.iter().chain(&lossy_pms).copied().collect();
    let policy = braid_lab::pm::policy_settings(&a.policy, &all_pms)?;
    let cfg = SweepConfig {
        delays: sweep::parse_delays(&a.delays)?,
        losses: sweep::parse_losses(&a.loss)?,
        faults: a
            .faults
            .split(',')
            .map(Fault::parse)
            .collect::<Result<_, _>>()?,
        directions,
        pms,
        lossy_pms,
        repeat: a.repeat,
        duration: duration(&a.duration, "--duration")?,
        lossy_duration: duration(&a.lossy_duration, "--lossy-duration")?,
        rates: (parse_rate_opt(rates[0])?, parse_rate_opt(rates[1])?),
        out: a.out.clone(),
        emulator_exe: std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?,
        lab_prefix: format!("sw{}x", std::process::id() % 10_000),
        congestion: a.cc.cc.clone(),
        policy,
    };
    if let Some(name) = &cfg.congestion {
        braid_lab::lab::check_congestion_name(name)?;
    }
    for pm in cfg.pms.iter().chain(&cfg.lossy_pms) {
        if let Some(why) = pm.unavailable() {
            return Err(LabError::Invalid(format!("--pm {}: {why}", pm.name())));
        }
    }
    if !a.report_only {
        install_signal_teardown();
        let started = std::time::Instant::now();
        sweep::run(&cfg, |i, n, what| {
            let eta = if i > 0 {
                let per = started.elapsed().as_secs_f64() / i as f64;
                format!(", about {:.0} min left", per * (n - i) as f64 / 60.0)
            } else {
                String::new()
            };
            eprintln!("braid: sweep {}/{n}{eta}: {what}", i + 1);
        })?;
    }
    let runs = sweep::load_runs(&cfg.out)?;
    let cells = sweep::summarize(&runs);
    let md = sweep::summary_markdown(&runs, &cells);
    let write = |name: &str, bytes: &[u8]| -> Result<(), LabError> {
        let p = cfg.out.join(name);
        std::fs::write(&p, bytes).map_err(|e| LabError::Io(format!("writing {}: {e}", p.display())))
    };
    write("summary.md", md.as_bytes())?;
    write(
        "summary.json",
        &serde_json::to_vec_pretty(&cells).expect("summary serializes"),
    )?;
    write("heatmap.svg", sweep::heatmap_svg(&cells).as_bytes())?;
    if ctx.json {
        print_json(&cells);
        return Ok(());
    }
    let most = cells
        .iter()
        .flat_map(|c| c.pms.iter().map(|p| p.runs))
        .max()
        .unwrap_or(0);
    println!(
        "stall at failure (ms; probe p99 in lossy cells): median / worst of up to {most} runs"
    );
    print!("{md}");
    for (goal, met, missed) in sweep::goal_totals(&cells) {
        println!("goal {goal}: met in {met} cells, missed in {missed}");
    }
    eprintln!(
        "braid: {} runs in {}; summary.md, summary.json and heatmap.svg written there",
        runs.len(),
        cfg.out.display()
    );
    Ok(())
}

fn demo(ctx: &Ctx, d: DemoArgs) -> Result<(), LabError> {
    // Each scenario with the mode Braid recommends for it, against the
    // kernel configurations a user would otherwise have.
    let plan: [(&str, &[PmKind], &str); 3] = [
        (
            "aggregate",
            &[PmKind::Kernel, PmKind::Braid],
            "Braid in aggregate mode (every path carries traffic) against the kernel's static endpoints",
        ),
        (
            "failover-carrier",
            &[PmKind::Kernel, PmKind::KernelBackup, PmKind::BraidHandover],
            "Braid in handover mode (recommended when one path is preferred: the others stand by and take over at once) against the kernel's static endpoints, without and with a backup endpoint",
        ),
        (
            "late-interface",
            &[PmKind::Kernel, PmKind::Braid],
            "Braid in aggregate mode against the kernel's static endpoints (set up before the interface came)",
        ),
    ];
    std::fs::create_dir_all(&d.out)
        .map_err(|e| LabError::Io(format!("creating {}: {e}", d.out.display())))?;
    for (sc, pms, what) in plan {
        let a = RunArgs {
            scenario: sc.into(),
            pm: pms.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
            duration: d.duration.clone(),
            plot: Some(d.out.join(format!("{sc}.svg"))),
            save: None,
            upload: false,
            logs: None,
            client_sysctl: Vec::new(),
            server_sysctl: Vec::new(),
            policy: Vec::new(),
            cc: CcArgs::default(),
            seed: None,
            via: "direct".into(),
            repeat: d.repeat,
            link: LinkArgs::default(),
        };
        if !ctx.json {
            println!("\n{sc}: {what}");
        }
        let reports = run_all(&a, pms)?;
        output(ctx, &a, &reports)?;
    }
    if !ctx.json {
        println!(
            "\nplots: {}/aggregate.svg, failover-carrier.svg, late-interface.svg",
            d.out.display()
        );
        println!("every lab made for the demo has been removed");
    }
    Ok(())
}
