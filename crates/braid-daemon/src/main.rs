//! `braidd`: the path-manager daemon as its own small binary, for the
//! system service (`braid daemon` runs the same code from the CLI). Kept
//! free of the CLI's dependencies so its resident memory stays small.

use std::path::PathBuf;
use std::process::ExitCode;

use braid_daemon::{config_file, shell};

const USAGE: &str = "usage: braidd [--config FILE] [--check-config | --remove-endpoints]
  --config FILE        configuration (default /etc/braid/braid.toml; missing = defaults)
  --check-config       check the configuration and exit
  --remove-endpoints   remove the endpoints a stopped braidd made (its state file
                       says which) and exit; the package's removal runs it
Logs go to stderr; BRAID_LOG=error|warn|info|debug sets the level.";

fn main() -> ExitCode {
    let mut config = None;
    let mut check = false;
    let mut remove = false;
    let mut rcvbuf = None;
    let mut state_file = PathBuf::from(shell::STATE_FILE);
    let mut resync = Some(shell::DEFAULT_RESYNC_INTERVAL);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--config" | "-c" => match args.next() {
                Some(v) => config = Some(PathBuf::from(v)),
                None => return usage_error("--config needs a file"),
            },
            "--check-config" => check = true,
            "--remove-endpoints" => remove = true,
            "--netlink-rcvbuf" => rcvbuf = args.next().and_then(|v| v.parse().ok()),
            "--state-file" => match args.next() {
                Some(v) => state_file = PathBuf::from(v),
                None => return usage_error("--state-file needs a file"),
            },
            // Hidden, for tests: 0 turns the periodic resynchronisation off.
            "--resync-interval-ms" => match args.next().and_then(|v| v.parse::<u64>().ok()) {
                Some(0) => resync = None,
                Some(ms) => resync = Some(std::time::Duration::from_millis(ms)),
                None => return usage_error("--resync-interval-ms needs a number"),
            },
            "--help" | "-h" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            other => return usage_error(&format!("unknown argument '{other}'")),
        }
    }
    if remove {
        return match shell::remove_owned(&state_file) {
            Ok(lines) => {
                for l in lines {
                    println!("{l}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("braidd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let explicit = config.is_some();
    let path = config.unwrap_or_else(|| PathBuf::from(config_file::DEFAULT_PATH));
    if check {
        return match config_file::load_settings(&path, explicit) {
            Ok(s) => {
                for n in s.notes {
                    eprintln!("braidd: note: {n}");
                }
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("braidd: {e}");
                ExitCode::FAILURE
            }
        };
    }
    braid_daemon::logging::init();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("braidd: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = shell::Options {
        config_path: path,
        config_explicit: explicit,
        netlink_rcvbuf: rcvbuf,
        state_file,
        resync_interval: resync,
    };
    match rt.block_on(shell::run(opts)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("braidd: {e}");
            ExitCode::FAILURE
        }
    }
}

fn usage_error(msg: &str) -> ExitCode {
    eprintln!("braidd: {msg}\n{USAGE}");
    ExitCode::from(2)
}
