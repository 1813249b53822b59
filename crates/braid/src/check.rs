//! `braid check HOST[:PORT]`: does a server speak MPTCP, from here? The
//! probe and the verdict are `braid_kernel::check`; this only parses and
//! prints.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use braid_kernel::check::{self, Mptcp, Options};
use clap::Args;

use crate::Ctx;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when the server speaks MPTCP with this host (and, with --relay, the relay completed the handshake), 1 when it does not (plain TCP or a fallback to TCP; or the relay did not answer), 2 when it could not be checked (bad input, unknown host, no address answered, no MPTCP on this host, no relay keys).\n\nOne byte (0x16) is sent after the connect unless --no-data: the handshake completes, and a second subflow can be tried, only when the server has acknowledged something. With --relay the relay's ping (a Noise IK first message) is sent instead."
)]
pub struct CheckArgs {
    /// HOST[:PORT], a name or an address (IPv6 as [ADDR]:PORT); port 443 by default.
    pub target: String,
    /// Time allowed for each address's TCP handshake.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Longest wait for the server's answers and the kernel's events after the connect.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
    /// Send nothing: the handshake may then not complete and no join is tried.
    #[arg(long, conflicts_with = "relay")]
    pub no_data: bool,
    /// TARGET is a Braid relay: send a ping with this client's key (from [relay.client] of --config, or --relay-key and --key) and check that it answers.
    #[arg(long)]
    pub relay: bool,
    /// Configuration with [relay.client] (for --relay; default /etc/braid/braid.toml).
    #[arg(long, short = 'c', value_name = "FILE", requires = "relay")]
    pub config: Option<PathBuf>,
    /// The relay's public key (for --relay, with --key).
    #[arg(long, value_name = "KEY", requires_all = ["relay", "key"])]
    pub relay_key: Option<String>,
    /// This client's private key file (for --relay, with --relay-key).
    #[arg(long, value_name = "FILE", requires_all = ["relay", "relay_key"])]
    pub key: Option<PathBuf>,
}

/// This client's key and the relay's, from the flags or [relay.client].
fn relay_keys(
    a: &CheckArgs,
) -> Result<(braid_relay::keys::PrivateKey, braid_relay::keys::PublicKey), String> {
    use braid_relay::keys::{PrivateKey, PublicKey};
    if let (Some(k), Some(r)) = (&a.key, &a.relay_key) {
        let own = PrivateKey::load(k).map_err(|e| e.to_string())?;
        let relay = PublicKey::from_text(r).map_err(|e| format!("--relay-key: {e}"))?;
        return Ok((own, relay));
    }
    let path = a
        .config
        .clone()
        .unwrap_or_else(|| PathBuf::from(braid_relay::config::DEFAULT_PATH));
    let client = braid_relay::config::load(Path::new(&path))
        .map_err(|e| format!("{e} (or give --relay-key and --key)"))?
        .client
        .ok_or_else(|| {
            format!(
                "{} has no [relay.client] section (or give --relay-key and --key)",
                path.display()
            )
        })?;
    let own = PrivateKey::load(&client.key_file).map_err(|e| e.to_string())?;
    Ok((own, client.relay_public_key))
}

pub fn run(ctx: &Ctx, a: CheckArgs) -> ExitCode {
    let target = match check::parse_target(&a.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("braid check: {e}");
            return ExitCode::from(2);
        }
    };
    let flight = if a.relay {
        let made =
            relay_keys(&a).and_then(|(own, relay)| braid_relay::check::ping_flight(&own, &relay));
        match made {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("braid check: --relay: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        None
    };
    let opts = Options {
        connect_timeout: a.timeout,
        wait: a.wait,
        send_byte: !a.no_data,
        first_flight: flight.as_ref().map(|f| f.bytes.clone()),
    };
    match check::probe_keep(&target, &opts) {
        Ok((report, mut stream, connected)) => {
            // The relay answers a ping at once: the same wait as for the
            // server's other answers, from the connect.
            let relay =
                flight.map(|f| braid_relay::check::read_answer(f, &mut stream, connected, a.wait));
            let o = &report.observations;
            let v = &report.verdict;
            if ctx.json {
                crate::print_json(&serde_json::json!({
                    "verdict": v,
                    "observations": o,
                    "relay": relay,
                }));
            } else {
                println!("{target} ({}): {}", o.address.ip(), v.summary);
                if let Some(r) = &relay {
                    println!("  {}", r.summary());
                }
                for r in &v.reasons {
                    println!("  {r}");
                }
                for f in &o.failed {
                    println!("  {} did not answer first: {}", f.address, f.error);
                }
                println!(
                    "  connect {:.1} ms, check {:.1} ms{}",
                    o.connect_ms,
                    o.total_ms,
                    o.rtt_ms
                        .map(|r| format!(", RTT {r:.1} ms"))
                        .unwrap_or_default()
                );
            }
            let relay_ok = relay
                .as_ref()
                .is_none_or(|r| *r == braid_relay::check::RelayAnswer::Answered);
            if v.mptcp == Mptcp::Yes && relay_ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            if ctx.json {
                crate::print_json(
                    &serde_json::json!({"target": target, "failure": e, "message": e.to_string()}),
                );
            } else {
                eprintln!("braid check: {target}: {e}");
            }
            ExitCode::from(2)
        }
    }
}
