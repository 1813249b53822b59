//! `braid lab ...`: build multipath labs, change their paths live, run
//! scenarios and compare path managers.

use std::path::PathBuf;

use braid_kernel::Error;
use braid_lab::lab::{self, Cut, Lab, LabConfig};
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
    /// Rate per path (tbf), e.g. 40mbit,20mbit; "none" for unlimited.
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

pub fn path_specs(a: &UpArgs) -> Result<Vec<PathSpec>, LabError> {
    if !(1..=8).contains(&a.paths) {
        return Err(LabError::Invalid(format!("--paths {} is out of range: 1 to 8", a.paths)));
    }
    let n = a.paths;
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
            })
        })
        .collect()
}

pub fn parse_path(s: &str) -> Result<usize, LabError> {
    s.trim_start_matches('p')
        .parse()
        .map_err(|_| LabError::Invalid(format!("invalid path '{s}': use its number, 0 for the primary")))
}

pub fn describe(spec: &PathSpec) -> String {
    let mut s = spec.rate_bps.map(spec::format_rate).unwrap_or_else(|| "unlimited".into());
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
            let paths = path_specs(&a)?;
            let exe = std::env::current_exe().map_err(|e| LabError::Io(e.to_string()))?;
            let lab = Lab::up(LabConfig {
                name: a.name.clone(),
                paths,
                emulator_exe: exe,
                client_addr_absent: Vec::new(),
                seed: 1,
            })?;
            print_lab(ctx, &lab);
            Ok(())
        }
        LabCmd::Down { name } => lab::teardown(&name, None),
        LabCmd::List => {
            let labs: Vec<Lab> = lab::list().iter().filter_map(|n| Lab::open(n).ok()).collect();
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
        LabCmd::Set(a) => {
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
        LabCmd::Cut { path, name, carrier, blackhole } => {
            let k = parse_path(&path)?;
            let how = match (carrier, blackhole) {
                (_, true) => Cut::Blackhole,
                (true, false) => Cut::Carrier,
                _ => return Err(LabError::Invalid("say how to cut: --carrier or --blackhole".into())),
            };
            Lab::open(&name)?.cut(k, how)
        }
        LabCmd::Restore { path, name } => Lab::open(&name)?.restore(parse_path(&path)?),
        LabCmd::Addr { path, name, remove, add } => {
            let k = parse_path(&path)?;
            let lab = Lab::open(&name)?;
            match (remove, add) {
                (true, _) => lab.remove_client_addr(k),
                (_, true) => lab.add_client_addr(k),
                _ => Err(LabError::Invalid("say what to do: --remove or --add".into())),
            }
        }
        LabCmd::Emulate { config } => {
            let bytes = std::fs::read(&config)
                .map_err(|e| LabError::Io(format!("reading {}: {e}", config.display())))?;
            let cfg = serde_json::from_slice(&bytes)
                .map_err(|e| LabError::Invalid(format!("{} is not an emulator config: {e}", config.display())))?;
            braid_lab::emulator::run(cfg)
        }
    }
}

fn print_lab(ctx: &Ctx, lab: &Lab) {
    let s = &lab.state;
    if ctx.json {
        print_json(s);
        return;
    }
    println!("lab {}: client namespace {}, server namespace {}", s.name, s.client_ns, s.server_ns);
    for (k, p) in s.paths.iter().enumerate() {
        println!(
            "  path {k} ({}): client {} <-> server {}  {}",
            p.dev,
            p.client_addr,
            p.server_addr,
            describe(&p.spec)
        );
    }
    println!("  try: braid -n {} conns   |   braid lab down --name {}", s.client_ns, s.name);
}
