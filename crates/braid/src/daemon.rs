//! `braid daemon`: run the path manager, check its configuration, reload it.

use std::path::PathBuf;

use braid_daemon::{config_file, control, shell};
use braid_kernel::Error;
use clap::{Args, Subcommand};

use crate::{print_json, Ctx};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DaemonArgs {
    #[command(subcommand)]
    pub cmd: Option<DaemonCmd>,
    /// Configuration file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Check the configuration and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Receive buffer of the rtnetlink socket in bytes (for tests).
    #[arg(long, hide = true)]
    pub netlink_rcvbuf: Option<usize>,
    /// Where the daemon remembers the endpoints it made.
    #[arg(long, hide = true, default_value = shell::STATE_FILE)]
    pub state_file: PathBuf,
    /// Period of the full resynchronisation in milliseconds (0: off; for tests).
    #[arg(long, hide = true)]
    pub resync_interval_ms: Option<u64>,
}

#[derive(Subcommand)]
pub enum DaemonCmd {
    /// Make the running daemon re-read its configuration.
    Reload {
        /// Control socket of the daemon.
        #[arg(long, default_value = "/run/braid/braid.sock")]
        socket: PathBuf,
    },
}

fn config_path(a: &DaemonArgs) -> (PathBuf, bool) {
    match &a.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(config_file::DEFAULT_PATH), false),
    }
}

pub fn run(ctx: &Ctx, a: DaemonArgs) -> Result<(), Error> {
    if let Some(DaemonCmd::Reload { socket }) = &a.cmd {
        let reply = control::request(socket, &control::Request::Reload).map_err(Error::Invalid)?;
        if !reply.ok {
            return Err(Error::Invalid(format!(
                "reload refused, the running configuration stays in force: {}",
                reply.error.unwrap_or_default()
            )));
        }
        if ctx.json {
            print_json(&serde_json::json!({"reloaded": true}));
        } else {
            println!("configuration reloaded");
        }
        return Ok(());
    }
    let (path, explicit) = config_path(&a);
    if a.check_config {
        let settings = config_file::load_settings(&path, explicit).map_err(Error::Invalid)?;
        for n in &settings.notes {
            eprintln!("braid: note: {n}");
        }
        let cfg = settings.config;
        if ctx.json {
            print_json(&cfg);
        } else if explicit || path.exists() {
            println!("{}: configuration is valid", path.display());
        } else {
            println!("{} does not exist: the defaults apply", path.display());
        }
        return Ok(());
    }
    braid_daemon::logging::init();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Invalid(format!("starting the runtime: {e}")))?;
    rt.block_on(shell::run(shell::Options {
        config_path: path,
        config_explicit: explicit,
        netlink_rcvbuf: a.netlink_rcvbuf,
        state_file: a.state_file,
        resync_interval: match a.resync_interval_ms {
            None => Some(shell::DEFAULT_RESYNC_INTERVAL),
            Some(0) => None,
            Some(ms) => Some(std::time::Duration::from_millis(ms)),
        },
    }))
    .map_err(Error::Invalid)
}

/// The daemon's view for `braid status`, if a daemon answers.
pub fn daemon_status(socket: &std::path::Path) -> Option<control::DaemonStatus> {
    let reply = control::request(socket, &control::Request::Status).ok()?;
    reply.status
}
