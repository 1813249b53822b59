//! `braid check HOST[:PORT]`: does a server speak MPTCP, from here? The
//! probe and the verdict are `braid_kernel::check`; this only parses and
//! prints.

use std::process::ExitCode;
use std::time::Duration;

use braid_kernel::check::{self, Mptcp, Options};
use clap::Args;

use crate::Ctx;

#[derive(Args)]
#[command(
    after_help = "Exit status: 0 when the server speaks MPTCP with this host, 1 when it does not (plain TCP or a fallback to TCP), 2 when it could not be checked (bad input, unknown host, no address answered, no MPTCP on this host).\n\nOne byte (0x16) is sent after the connect unless --no-data: the handshake completes, and a second subflow can be tried, only when the server has acknowledged something."
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
    #[arg(long)]
    pub no_data: bool,
}

pub fn run(ctx: &Ctx, a: CheckArgs) -> ExitCode {
    let target = match check::parse_target(&a.target) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("braid check: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = Options {
        connect_timeout: a.timeout,
        wait: a.wait,
        send_byte: !a.no_data,
    };
    match check::probe(&target, &opts) {
        Ok(report) => {
            let o = &report.observations;
            let v = &report.verdict;
            if ctx.json {
                crate::print_json(&report);
            } else {
                println!("{target} ({}): {}", o.address.ip(), v.summary);
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
            if v.mptcp == Mptcp::Yes {
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
