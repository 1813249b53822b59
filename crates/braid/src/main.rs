//! `braid`: the command line over Braid's crates. Each subcommand lives in
//! its own module; this file only parses arguments and reports errors.

mod check;
mod conns;
mod daemon;
mod docs;
mod endpoint;
mod install;
mod lab;
mod monitor;
mod relay;
mod run;
mod status;
mod top;

use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "braid",
    version,
    about = "Braid: the Multipath TCP control plane for Linux",
    long_about = "Braid keeps the kernel's MPTCP path manager in step with the machine and shows what MPTCP is doing.\nCommands act on the current network namespace, or on the one given with --netns."
)]
struct Cli {
    /// Print JSON instead of text (JSON lines for `monitor`).
    #[arg(long, short = 'j', global = true)]
    json: bool,
    /// Run inside this network namespace (as `ip -n NAME`).
    #[arg(long, short = 'n', global = true, value_name = "NAME")]
    netns: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernel MPTCP state and what to fix, with the exact commands; the daemon's view when it runs.
    Status {
        /// Control socket of the daemon.
        #[arg(long, default_value = "/run/braid/braid.sock")]
        socket: std::path::PathBuf,
    },
    /// Manage the in-kernel path manager's endpoints (like `ip mptcp endpoint`).
    #[command(subcommand, alias = "endpoints", alias = "ep")]
    Endpoint(endpoint::EndpointCmd),
    /// Read or set the in-kernel path manager's limits (like `ip mptcp limits`).
    #[command(subcommand)]
    Limits(endpoint::LimitsCmd),
    /// MPTCP events live, one line each, with the daemon's decisions and their reasons when it runs.
    Monitor(monitor::MonitorArgs),
    /// MPTCP connections and their subflows.
    #[command(alias = "connections")]
    Conns(conns::ConnsArgs),
    /// The path-manager daemon: keeps endpoints in step with the interfaces.
    Daemon(daemon::DaemonArgs),
    /// Run a program with its TCP sockets turned into MPTCP (LD_PRELOAD, GODEBUG, or --bpf).
    Run(run::RunArgs),
    /// Make a systemd service use MPTCP (a drop-in; the unit file is never edited).
    Enable(run::EnableArgs),
    /// Remove what 'braid enable' wrote.
    Disable(run::DisableArgs),
    /// Copy braid, braidd and the preload library to PREFIX (root-owned), where 'braid enable' looks first.
    Install(install::InstallArgs),
    /// Which common socket options work on MPTCP sockets on this kernel.
    Sockopts,
    /// Force MPTCP with BPF: probe, attach, detach (used by 'enable --bpf').
    #[command(subcommand)]
    Bpf(run::BpfCmd),
    /// Multipath labs: emulated paths in namespaces, scenarios, comparisons.
    #[command(subcommand)]
    Lab(Box<lab::LabCmd>),
    /// Does a server speak MPTCP with this host: MP_CAPABLE, announced addresses, a second subflow, the C flag.
    Check(check::CheckArgs),
    /// Multipath to any server: an encrypted MPTCP relay and its SOCKS5/HTTP client.
    #[command(subcommand)]
    Relay(relay::RelayCmd),
    /// Live view of paths, MPTCP connections and subflows, events and the daemon (q quits).
    Top(top::TopArgs),
    /// Print a shell completion script: `braid completions bash > /etc/bash_completion.d/braid` (packages ship them).
    Completions(docs::CompletionsArgs),
    /// Write the manual pages (for packages).
    #[command(hide = true)]
    Man(docs::ManArgs),
}

/// Output options every command gets.
pub struct Ctx {
    pub json: bool,
}

fn run(cli: Cli) -> Result<(), braid_kernel::Error> {
    if let Some(ns) = &cli.netns {
        // The CLI is single-threaded up to here, so the whole process moves.
        braid_kernel::netns::enter(ns)?;
    }
    let ctx = Ctx { json: cli.json };
    match cli.command {
        Command::Status { socket } => status::run(&ctx, &socket),
        Command::Endpoint(cmd) => endpoint::run_endpoint(&ctx, cmd),
        Command::Limits(cmd) => endpoint::run_limits(&ctx, cmd),
        Command::Monitor(a) => monitor::run(&ctx, a),
        Command::Conns(args) => conns::run(&ctx, args),
        Command::Lab(cmd) => lab::run(&ctx, *cmd),
        Command::Daemon(a) => daemon::run(&ctx, a),
        Command::Run(a) => run::run(a),
        Command::Enable(a) => run::enable(&ctx, a),
        Command::Disable(a) => run::disable(&ctx, a),
        Command::Install(a) => install::install(&ctx, a),
        Command::Bpf(c) => run::bpf_cmd(&ctx, c),
        Command::Sockopts => run::sockopts(&ctx),
        Command::Relay(c) => relay::run(&ctx, c),
        Command::Top(a) => top::run(a),
        Command::Completions(a) => {
            docs::completions(Cli::command(), a);
            Ok(())
        }
        Command::Man(a) => docs::man(Cli::command(), a),
        Command::Check(_) => unreachable!("handled in main for its exit codes"),
    }
}

/// Commands that only print: when their reader goes away (`braid status |
/// head`) they end quietly, as Unix tools do. Services and the lab keep
/// SIGPIPE ignored (Rust's default): a peer closing a socket must never
/// kill them.
fn prints_only(c: &Command) -> bool {
    match c {
        Command::Status { .. }
        | Command::Endpoint(_)
        | Command::Limits(_)
        | Command::Monitor(_)
        | Command::Conns(_)
        | Command::Sockopts
        | Command::Top(_)
        | Command::Completions(_)
        | Command::Check(_) => true,
        Command::Relay(r) => matches!(
            r,
            relay::RelayCmd::Keygen { .. }
                | relay::RelayCmd::Pubkey { .. }
                | relay::RelayCmd::Status { .. }
        ),
        _ => false,
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if prints_only(&cli.command) {
        // SAFETY: restoring a signal's default action, before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Command::Check(a) = cli.command {
        if let Some(ns) = &cli.netns {
            if let Err(e) = braid_kernel::netns::enter(ns) {
                eprintln!("braid: {e}");
                return ExitCode::from(2);
            }
        }
        return check::run(&Ctx { json: cli.json }, a);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("braid: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Print a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).expect("Braid's own types always serialize")
    );
}
