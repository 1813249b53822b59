//! `braid lab ...`: build multipath labs, change their paths live, run
//! scenarios and compare path managers.

use std::path::PathBuf;

use braid_kernel::Error;
use braid_lab::lab::{self, Cut, Lab, LabConfig, Sysctl};
use braid_lab::relay_bench;
use braid_lab::spec::{self, PathSpec};
use braid_lab::LabError;
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
    /// Run a scenario in a fresh lab: aggregate, failover-carrier, failover-blackhole, failover-address, late-interface, flap, lossy-primary.
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
    /// Random loss per path and direction, e.g. 0,1%.
    #[arg(long, default_value = "0")]
    pub loss: String,
    /// Let jitter reorder packets.
    #[arg(long)]
    pub reorder: bool,
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
            loss: "0".into(),
            reorder: false,
            rate_by: "tbf".into(),
        }
    }
}

#[derive(Args)]
pub struct RunArgs {
    /// aggregate, failover-carrier, failover-blackhole, failover-address, late-interface, flap or lossy-primary.
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
    /// What happens to the primary: carrier, blackhole, address, lossy.
    #[arg(long, default_value = "carrier,blackhole,address,lossy")]
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
    /// Length of a failover run (the primary fails at 40 %).
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
    let losses = spec::per_path(&a.loss, n, "loss")?;
    (0..n)
        .map(|k| {
            Ok(PathSpec {
                rate_bps: parse_rate_opt(rates[k])?,
                delay_us: spec::parse_duration_us(delays[k])?,
                jitter_us: spec::parse_duration_us(jitters[k])?,
                loss: spec::parse_loss(losses[k])?,
                reorder: a.reorder,
                rate_in_emulator: a.rate_by == "emulator",
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

fn onoff(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
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

fn bench_throughput(
    rb: &RelayBench,
    via: &str,
    paths: usize,
    duration: &str,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    let vias = parse_vias(via)?;
    relay_bench::check_available(&vias)?;
    let d = std::time::Duration::from_micros(spec::parse_duration_us(duration)?);
    let mut reports = Vec::new();
    for v in vias {
        eprintln!("braid: one download through {} for {d:?}", v.name());
        reports.push(relay_bench::throughput(exe, name, v, paths, d)?);
    }
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", throughput_table(&reports));
    }
    Ok(())
}

fn throughput_table(reports: &[relay_bench::ThroughputReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "{:<12} {:>9} {:>16} {:>17} {:>19} {:>20}",
        "via",
        "Gbit/s",
        "relay CPU s/GB",
        "client CPU s/GB",
        "Gbit/s per relay core",
        "Gbit/s per client core"
    )
    .unwrap();
    for r in reports {
        writeln!(
            out,
            "{:<12} {:>9.2} {:>16} {:>17} {:>19} {:>20}",
            r.via,
            r.gbit_per_s,
            opt(r.relay_cpu_s_per_gb, 2),
            opt(r.client_cpu_s_per_gb, 2),
            opt(r.gbit_per_s_per_relay_core, 2),
            opt(r.gbit_per_s_per_client_core, 2)
        )
        .unwrap();
    }
    out
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
    let vias = parse_vias(via)?;
    relay_bench::check_available(&vias)?;
    let mut reports = Vec::new();
    for v in vias {
        for opts in relay_bench::ttfb_options(v, fast_open, early_reply) {
            eprintln!(
                "braid: {samples} short requests through {} (fast open {}, early reply {})",
                v.name(),
                onoff(opts.fast_open),
                onoff(opts.early_reply)
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
    }
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", ttfb_table(&reports));
    }
    Ok(())
}

fn ttfb_table(reports: &[relay_bench::TtfbReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "{:<12} {:>9} {:>11} {:>9} {:>9} {:>9} {:>14} {:>9}",
        "via", "fast open", "early reply", "p50 ms", "p90 ms", "max ms", "path RTT ms", "no answer"
    )
    .unwrap();
    for r in reports {
        let direct = r.via == "direct";
        writeln!(
            out,
            "{:<12} {:>9} {:>11} {:>9.1} {:>9.1} {:>9.1} {:>14.1} {:>9}",
            r.via,
            if direct { "-" } else { onoff(r.fast_open) },
            if direct { "-" } else { onoff(r.early_reply) },
            r.p50_ms,
            r.p90_ms,
            r.max_ms,
            r.path_rtt_ms,
            format!("{}/{}", r.failures, r.samples + r.failures)
        )
        .unwrap();
    }
    out
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
    let vias = parse_vias(via)?;
    relay_bench::check_available(&vias)?;
    let mut reports = Vec::new();
    for v in vias {
        eprintln!(
            "braid: {runs} pages of {connections} connections through {}",
            v.name()
        );
        reports.push(relay_bench::page_load(
            exe,
            name,
            v,
            path_specs(2, link)?,
            connections,
            bytes,
            runs,
        )?);
    }
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", page_load_table(&reports));
    }
    Ok(())
}

fn page_load_table(reports: &[relay_bench::PageLoadReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "{:<12} {:>12} {:>14} {:>12} {:>12}",
        "via", "connections", "response bytes", "median ms", "worst ms"
    )
    .unwrap();
    for r in reports {
        writeln!(
            out,
            "{:<12} {:>12} {:>14} {:>12.1} {:>12.1}",
            if r.via == "direct" {
                "direct (TCP, primary)"
            } else {
                r.via
            },
            r.connections,
            r.response_bytes,
            r.median_ms,
            r.worst_ms
        )
        .unwrap();
    }
    out
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
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", quic_table(&reports));
    }
    Ok(())
}

fn quic_table(reports: &[relay_bench::QuicFirstReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    writeln!(
        out,
        "{:<8} {:>9} {:>10} {:>9} {:>9}",
        "quic", "samples", "over QUIC", "p50 ms", "worst ms"
    )
    .unwrap();
    for r in reports {
        writeln!(
            out,
            "{:<8} {:>9} {:>10} {:>9.1} {:>9.1}",
            r.quic, r.samples, r.over_quic, r.p50_ms, r.worst_ms
        )
        .unwrap();
    }
    out
}

fn bench_scale(
    rb: &RelayBench,
    via: &str,
    clients: usize,
    per_client: usize,
) -> Result<(), LabError> {
    let RelayBench { ctx, exe, name } = rb;
    let vias = parse_vias(via)?;
    relay_bench::check_available(&vias)?;
    let mut reports = Vec::new();
    for v in vias {
        eprintln!(
            "braid: {clients} clients x {per_client} connections through {}",
            v.name()
        );
        reports.push(relay_bench::scale(exe, name, v, clients, per_client)?);
    }
    if ctx.json {
        print_json(&reports);
    } else {
        print!("{}", scale_lines(&reports));
    }
    Ok(())
}

fn scale_lines(reports: &[relay_bench::ScaleReport]) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    for r in reports {
        writeln!(
        out,
            "{}: {} connections ({} failed) open in {:.2} s; CONNECT answered p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; first response p50 {:.1} ms, p99 {:.1} ms",
            r.via, r.connections, r.failures, r.all_open_s, r.setup_p50_ms, r.setup_p99_ms, r.setup_max_ms, r.response_p50_ms, r.response_p99_ms
        ).unwrap();
        writeln!(
        out,
            "  relay:  RSS {} -> {} KiB ({:.1} KiB per connection), fds {} -> {} -> {} after close, CPU {:.3} ms per connection",
            r.relay_rss_idle_kib, r.relay_rss_peak_kib, r.relay_rss_per_connection_kib, r.relay_fds_idle, r.relay_fds_peak, r.relay_fds_after, r.relay_cpu_ms_per_connection
        ).unwrap();
        writeln!(
        out,
            "  client: RSS {} -> {} KiB ({:.1} KiB per connection), fds {} -> {} after close, CPU {:.3} ms per connection",
            r.client_rss_idle_kib, r.client_rss_peak_kib, r.client_rss_per_connection_kib, r.client_fds_idle, r.client_fds_after, r.client_cpu_ms_per_connection
        ).unwrap();
    }
    out
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

use braid_lab::pm::PmKind;
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

fn run_config(a: &RunArgs, pm: PmKind, via: Via, i: usize) -> Result<RunConfig, LabError> {
    // As many paths as the longest per-path list, and at least two.
    let n = [&a.link.rate, &a.link.delay, &a.link.jitter, &a.link.loss]
        .iter()
        .map(|l| l.split(',').count())
        .max()
        .unwrap_or(1)
        .max(2);
    let duration_us = spec::parse_duration_us(&a.duration)?;
    if duration_us < 2_000_000 {
        return Err(LabError::Invalid("--duration must be at least 2s".into()));
    }
    Ok(RunConfig {
        scenario: Scenario::parse(&a.scenario)?,
        pm,
        paths: path_specs(n, &a.link)?,
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
        via,
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
        for via in &vias {
            for pm in pms {
                let cfg = run_config(a, *pm, *via, i)?;
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

/// Median and worst per configuration, one column each.
pub fn summary_table(reports: &[Report]) -> String {
    use braid_lab::summary;
    let groups = summary::summarize(reports);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        "path manager".into(),
        groups.iter().map(|g| g.pm.to_string()).collect(),
    ));
    if groups.iter().any(|g| g.via != "direct") {
        rows.push((
            "via".into(),
            groups.iter().map(|g| g.via.to_string()).collect(),
        ));
    }
    rows.push((
        "runs".into(),
        groups.iter().map(|g| g.runs.to_string()).collect(),
    ));
    rows.push((
        "connection died".into(),
        groups.iter().map(|g| g.died.to_string()).collect(),
    ));
    for (name, _) in summary::MEASUREMENTS {
        if !groups
            .iter()
            .any(|g| g.measurements.iter().any(|(n, _)| n == name))
        {
            continue;
        }
        let digits = if *name == "aggregation_ratio" { 3 } else { 1 };
        rows.push((
            format!("{name} (median / worst)"),
            groups
                .iter()
                .map(|g| {
                    g.measurements
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| format!("{:.digits$} / {:.digits$}", s.median, s.worst))
                        .unwrap_or_else(|| "-".into())
                })
                .collect(),
        ));
    }
    rows.push((
        "bytes corrupt".into(),
        groups.iter().map(|g| g.bytes_corrupt.to_string()).collect(),
    ));
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..groups.len())
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8))
        .collect();
    let mut out = String::new();
    if let Some(first) = reports.first() {
        out.push_str(&format!(
            "scenario {} ({:.0} s), {} runs in all\n",
            first.scenario,
            first.duration_s,
            reports.len()
        ));
    }
    for (name, vals) in &rows {
        out.push_str(&format!("{name:<w0$}"));
        for (v, w) in vals.iter().zip(&widths) {
            out.push_str(&format!("  {v:>w$}"));
        }
        out.push('\n');
    }
    out
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
        print!("{}", summary_table(reports));
    } else {
        print!("{}", table(reports));
    }
    Ok(())
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// One column per report, one row per metric.
pub fn table(reports: &[Report]) -> String {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_string(), reports.iter().map(f).collect()));
    };
    row("path manager", &|r| r.pm.to_string());
    if reports.iter().any(|r| r.via != "direct") {
        row("via", &|r| r.via.to_string());
    }
    row("survived", &|r| {
        if r.survived {
            "yes".into()
        } else {
            "NO".into()
        }
    });
    row("transport", &|r| r.transport.clone());
    let has = |f: &dyn Fn(&Report) -> bool| reports.iter().any(f);
    if has(&|r| r.metrics.goodput_mbps.is_some()) {
        row("goodput (Mbit/s)", &|r| opt(r.metrics.goodput_mbps, 1));
        row("per path (Mbit/s)", &|r| {
            r.metrics
                .per_path_mbps
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        });
    }
    if has(&|r| r.metrics.aggregation_ratio.is_some()) {
        row("aggregation ratio", &|r| {
            opt(r.metrics.aggregation_ratio, 2)
        });
    }
    if has(&|r| r.metrics.stall_ms.is_some()) {
        row("data resumes after (ms)", &|r| opt(r.metrics.resume_ms, 0));
        row("stall at failure (ms)", &|r| opt(r.metrics.stall_ms, 0));
        row("recovery (ms)", &|r| opt(r.metrics.recovery_ms, 0));
    }
    if has(&|r| r.metrics.longest_stall_ms.is_some()) {
        row("longest stall (ms)", &|r| {
            opt(r.metrics.longest_stall_ms, 0)
        });
    }
    if has(&|r| r.scenario == "late-interface") {
        row("new path carries data (ms)", &|r| {
            opt(r.metrics.new_path_ms, 0)
        });
    }
    if has(&|r| r.scenario == "flap") {
        row("primary reused after (ms)", &|r| opt(r.metrics.reuse_ms, 0));
    }
    if has(&|r| r.metrics.probe.is_some()) {
        let p = |f: fn(&braid_lab::traffic::ProbeResult) -> String| {
            move |r: &Report| {
                r.metrics
                    .probe
                    .as_ref()
                    .map(f)
                    .unwrap_or_else(|| "-".into())
            }
        };
        row("probe p50 (ms)", &p(|p| format!("{:.1}", p.p50_ms)));
        row("probe p95 (ms)", &p(|p| format!("{:.1}", p.p95_ms)));
        row("probe p99 (ms)", &p(|p| format!("{:.1}", p.p99_ms)));
        row("probe max (ms)", &p(|p| format!("{:.1}", p.max_ms)));
        row("probe late/lost", &p(|p| format!("{}/{}", p.late, p.lost)));
    }
    row("bytes verified", &|r| r.bytes_verified.to_string());
    row("bytes corrupt", &|r| r.bytes_corrupt.to_string());
    row("error", &|r| r.error.clone().unwrap_or_else(|| "-".into()));
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..reports.len())
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8))
        .collect();
    let mut out = String::new();
    if let Some(first) = reports.first() {
        out.push_str(&format!(
            "scenario {} ({:.0} s)\n",
            first.scenario, first.duration_s
        ));
        for e in &first.events {
            out.push_str(&format!("  at {:>6.0} ms: {}\n", e.t_ms, e.what));
        }
        for s in &first.sysctls {
            out.push_str(&format!("  sysctl {s}\n"));
        }
    }
    for (name, vals) in &rows {
        out.push_str(&format!("{name:<w0$}"));
        for (v, w) in vals.iter().zip(&widths) {
            out.push_str(&format!("  {v:>w$}"));
        }
        out.push('\n');
    }
    out
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
    let cfg = SweepConfig {
        delays: sweep::parse_delays(&a.delays)?,
        losses: sweep::parse_losses(&a.loss)?,
        faults: a
            .faults
            .split(',')
            .map(Fault::parse)
            .collect::<Result<_, _>>()?,
        directions,
        pms: parse_pms(&a.pm)?,
        lossy_pms: parse_pms(&a.lossy_pm)?,
        repeat: a.repeat,
        duration: duration(&a.duration, "--duration")?,
        lossy_duration: duration(&a.lossy_duration, "--lossy-duration")?,
        rates: (parse_rate_opt(rates[0])?, parse_rate_opt(rates[1])?),
        out: a.out.clone(),
        emulator_exe: std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?,
        lab_prefix: format!("sw{}x", std::process::id() % 10_000),
    };
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
    let md = sweep::markdown(&cells);
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

#[cfg(test)]
mod scenario_table_tests {
    use braid_lab::scenario::{Metrics, Report, TimedEvent};
    use braid_lab::traffic::ProbeResult;

    use super::{summary_table, table};

    /// A flap run: every metric row present on the first report.
    fn flap(pm: &'static str, via: &'static str, stall_ms: f64) -> Report {
        Report {
            scenario: "flap",
            pm,
            via,
            direction: "download",
            duration_s: 20.0,
            paths: Vec::new(),
            survived: true,
            bytes_sent: 200_000_000,
            bytes_verified: 123_456_789,
            bytes_corrupt: 0,
            transport: "mptcp".into(),
            metrics: Metrics {
                goodput_mbps: Some(41.27),
                aggregation_ratio: Some(0.9134),
                per_path_mbps: vec![20.5, 20.77],
                longest_stall_ms: Some(stall_ms + 60.0),
                resume_ms: Some(120.4),
                stall_ms: Some(stall_ms),
                recovery_ms: Some(900.6),
                new_path_ms: None,
                reuse_ms: Some(1500.2),
                probe: Some(ProbeResult {
                    late: 2,
                    lost: 1,
                    p50_ms: 21.04,
                    p95_ms: 48.96,
                    p99_ms: 250.5,
                    max_ms: 310.0,
                    ..ProbeResult::default()
                }),
            },
            events: vec![
                TimedEvent {
                    t_ms: 5000.0,
                    what: "path 0 down".into(),
                },
                TimedEvent {
                    t_ms: 10000.4,
                    what: "path 0 up".into(),
                },
            ],
            sysctls: vec!["client: net.ipv4.tcp_rmem=4096 131072 6291456".into()],
            error: None,
            series_total_mbps: Vec::new(),
            series_path_mbps: Vec::new(),
        }
    }

    /// A run that died, with few metrics.
    fn died(pm: &'static str, via: &'static str) -> Report {
        Report {
            survived: false,
            bytes_verified: 0,
            bytes_corrupt: 3,
            transport: "tcp".into(),
            metrics: Metrics {
                goodput_mbps: None,
                aggregation_ratio: None,
                per_path_mbps: Vec::new(),
                probe: None,
                ..flap(pm, via, 0.0).metrics
            },
            error: Some("connection reset".into()),
            ..flap(pm, via, 0.0)
        }
    }

    const TWO_RUNS: &str = concat!(
        "scenario flap (20 s)\n",
        "  at   5000 ms: path 0 down\n",
        "  at  10000 ms: path 0 up\n",
        "  sysctl client: net.ipv4.tcp_rmem=4096 131072 6291456\n",
        "path manager                    kernel             braid\n",
        "via                             direct             relay\n",
        "survived                           yes                NO\n",
        "transport                        mptcp               tcp\n",
        "goodput (Mbit/s)                  41.3                 -\n",
        "per path (Mbit/s)          20.5 / 20.8                  \n",
        "aggregation ratio                 0.91                 -\n",
        "data resumes after (ms)            120               120\n",
        "stall at failure (ms)              250                 0\n",
        "recovery (ms)                      901               901\n",
        "longest stall (ms)                 310                60\n",
        "primary reused after (ms)         1500              1500\n",
        "probe p50 (ms)                    21.0                 -\n",
        "probe p95 (ms)                    49.0                 -\n",
        "probe p99 (ms)                   250.5                 -\n",
        "probe max (ms)                   310.0                 -\n",
        "probe late/lost                    2/1                 -\n",
        "bytes verified               123456789                 0\n",
        "bytes corrupt                        0                 3\n",
        "error                                -  connection reset\n",
    );

    const ONE_RUN: &str = concat!(
        "scenario flap (20 s)\n",
        "  at   5000 ms: path 0 down\n",
        "  at  10000 ms: path 0 up\n",
        "  sysctl client: net.ipv4.tcp_rmem=4096 131072 6291456\n",
        "path manager                    kernel\n",
        "survived                           yes\n",
        "transport                        mptcp\n",
        "goodput (Mbit/s)                  41.3\n",
        "per path (Mbit/s)          20.5 / 20.8\n",
        "aggregation ratio                 0.91\n",
        "data resumes after (ms)            120\n",
        "stall at failure (ms)              250\n",
        "recovery (ms)                      901\n",
        "longest stall (ms)                 310\n",
        "primary reused after (ms)         1500\n",
        "probe p50 (ms)                    21.0\n",
        "probe p95 (ms)                    49.0\n",
        "probe p99 (ms)                   250.5\n",
        "probe max (ms)                   310.0\n",
        "probe late/lost                    2/1\n",
        "bytes verified               123456789\n",
        "bytes corrupt                        0\n",
        "error                                -\n",
    );

    const SUMMARY: &str = concat!(
        "scenario flap (20 s), 4 runs in all\n",
        "path manager                                 kernel            braid\n",
        "via                                          direct            relay\n",
        "runs                                              2                2\n",
        "connection died                                   0                1\n",
        "goodput_mbps (median / worst)           41.3 / 41.3      41.3 / 41.3\n",
        "aggregation_ratio (median / worst)    0.913 / 0.913    0.913 / 0.913\n",
        "resume_ms (median / worst)            120.4 / 120.4    120.4 / 120.4\n",
        "stall_ms (median / worst)             250.0 / 410.0       0.0 / 90.0\n",
        "recovery_ms (median / worst)          900.6 / 900.6    900.6 / 900.6\n",
        "longest_stall_ms (median / worst)     310.0 / 470.0     60.0 / 150.0\n",
        "reuse_ms (median / worst)           1500.2 / 1500.2  1500.2 / 1500.2\n",
        "probe_p99_ms (median / worst)         250.5 / 250.5    250.5 / 250.5\n",
        "bytes corrupt                                     0                3\n",
    );

    #[test]
    fn one_column_per_run() {
        let reports = [flap("kernel", "direct", 250.0), died("braid", "relay")];
        assert_eq!(table(&reports), TWO_RUNS);
    }

    #[test]
    fn no_via_row_when_every_run_is_direct() {
        assert_eq!(table(&[flap("kernel", "direct", 250.0)]), ONE_RUN);
    }

    #[test]
    fn median_and_worst_per_configuration() {
        let reports = [
            flap("kernel", "direct", 250.0),
            flap("kernel", "direct", 410.0),
            flap("braid", "relay", 90.0),
            died("braid", "relay"),
        ];
        assert_eq!(summary_table(&reports), SUMMARY);
    }
}

#[cfg(test)]
mod relay_bench_table_tests {
    use braid_lab::relay_bench::{
        PageLoadReport, QuicFirstReport, ScaleReport, ThroughputReport, TtfbReport,
    };

    use super::{page_load_table, quic_table, scale_lines, throughput_table, ttfb_table};

    const THROUGHPUT: &str = concat!(
        "via             Gbit/s   relay CPU s/GB   client CPU s/GB Gbit/s per relay core Gbit/s per client core\n",
        "direct            9.88                -              0.21                   -                37.50\n",
        "transparent       3.50             1.00              0.90                7.96                 8.88\n",
    );

    const TTFB: &str = concat!(
        "via          fast open early reply    p50 ms    p90 ms    max ms    path RTT ms no answer\n",
        "direct               -           -      40.3      41.0      45.5           40.0      0/50\n",
        "socks               on         off     120.0     123.0    5000.0           40.0      2/50\n",
    );

    const PAGE_LOAD: &str = concat!(
        "via           connections response bytes    median ms     worst ms\n",
        "direct (TCP, primary)            6         100000        210.4        260.1\n",
        "http                    6         100000        330.0       1402.8\n",
    );

    const QUIC: &str = concat!(
        "quic       samples  over QUIC    p50 ms  worst ms\n",
        "block           20          0      41.2      45.0\n",
        "allow           20         20      30.1    1033.3\n",
    );

    const SCALE: &str = concat!(
        "socks: 1000 connections (3 failed) open in 1.55 s; CONNECT answered p50 1.3 ms, p99 8.0 ms, max 20.0 ms; first response p50 2.5 ms, p99 9.9 ms\n",
        "  relay:  RSS 4000 -> 52000 KiB (48.0 KiB per connection), fds 10 -> 2010 -> 10 after close, CPU 0.123 ms per connection\n",
        "  client: RSS 3000 -> 41000 KiB (38.0 KiB per connection), fds 8 -> 8 after close, CPU 0.050 ms per connection\n",
    );

    #[test]
    fn throughput() {
        assert_eq!(
            throughput_table(&[
                ThroughputReport {
                    via: "direct",
                    paths: 2,
                    seconds: 10.0,
                    bytes: 1,
                    gbit_per_s: 9.876,
                    relay_cpu_s_per_gb: None,
                    client_cpu_s_per_gb: Some(0.214),
                    gbit_per_s_per_relay_core: None,
                    gbit_per_s_per_client_core: Some(37.5)
                },
                ThroughputReport {
                    via: "transparent",
                    paths: 2,
                    seconds: 10.0,
                    bytes: 1,
                    gbit_per_s: 3.5,
                    relay_cpu_s_per_gb: Some(1.005),
                    client_cpu_s_per_gb: Some(0.9),
                    gbit_per_s_per_relay_core: Some(7.96),
                    gbit_per_s_per_client_core: Some(8.88)
                },
            ]),
            THROUGHPUT
        );
    }

    #[test]
    fn ttfb() {
        assert_eq!(
            ttfb_table(&[
                TtfbReport {
                    via: "direct",
                    fast_open: true,
                    early_reply: true,
                    samples: 50,
                    failures: 0,
                    p50_ms: 40.26,
                    p90_ms: 41.0,
                    max_ms: 45.55,
                    path_rtt_ms: 40.0
                },
                TtfbReport {
                    via: "socks",
                    fast_open: true,
                    early_reply: false,
                    samples: 48,
                    failures: 2,
                    p50_ms: 120.04,
                    p90_ms: 122.96,
                    max_ms: 5000.0,
                    path_rtt_ms: 40.0
                },
            ]),
            TTFB
        );
    }

    #[test]
    fn page_load() {
        assert_eq!(
            page_load_table(&[
                PageLoadReport {
                    via: "direct",
                    connections: 6,
                    response_bytes: 100000,
                    runs: 5,
                    median_ms: 210.44,
                    worst_ms: 260.06
                },
                PageLoadReport {
                    via: "http",
                    connections: 6,
                    response_bytes: 100000,
                    runs: 5,
                    median_ms: 330.0,
                    worst_ms: 1402.75
                },
            ]),
            PAGE_LOAD
        );
    }

    #[test]
    fn quic_first() {
        assert_eq!(
            quic_table(&[
                QuicFirstReport {
                    quic: "block",
                    samples: 20,
                    over_quic: 0,
                    p50_ms: 41.2,
                    worst_ms: 45.0
                },
                QuicFirstReport {
                    quic: "allow",
                    samples: 20,
                    over_quic: 20,
                    p50_ms: 30.06,
                    worst_ms: 1033.3
                },
            ]),
            QUIC
        );
    }

    #[test]
    fn scale() {
        assert_eq!(
            scale_lines(&[ScaleReport {
                via: "socks",
                connections: 1000,
                failures: 3,
                setup_p50_ms: 1.26,
                setup_p99_ms: 8.04,
                setup_max_ms: 20.0,
                response_p50_ms: 2.5,
                response_p99_ms: 9.95,
                relay_cpu_ms_per_connection: 0.1234,
                client_cpu_ms_per_connection: 0.05,
                all_open_s: 1.555,
                relay_rss_idle_kib: 4000,
                relay_rss_peak_kib: 52000,
                relay_rss_per_connection_kib: 48.0,
                client_rss_idle_kib: 3000,
                client_rss_peak_kib: 41000,
                client_rss_per_connection_kib: 38.04,
                relay_fds_idle: 10,
                relay_fds_peak: 2010,
                relay_fds_after: 10,
                client_fds_idle: 8,
                client_fds_after: 8
            }]),
            SCALE
        );
    }
}
