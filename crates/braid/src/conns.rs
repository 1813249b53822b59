//! `braid conns`: MPTCP connections and their subflows from sock_diag.

use braid_kernel::diag::{self, Connection, Subflow};
use braid_kernel::Result;
use clap::Args;
use serde::Serialize;

use crate::{print_json, Ctx};
use braid_kernel::interfaces::Interfaces;

#[derive(Args)]
pub struct ConnsArgs {
    /// Include listening sockets.
    #[arg(long, short = 'a')]
    all: bool,
    /// Control socket of the daemon (for each connection's rule and mode
    /// when it runs with pm = "userspace").
    #[arg(long, default_value = "/run/braid/braid.sock")]
    socket: std::path::PathBuf,
}

#[derive(Serialize)]
struct SubflowView<'a> {
    #[serde(flatten)]
    sf: &'a Subflow,
    /// Interface holding the subflow's local address.
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
}

#[derive(Serialize)]
struct ConnView<'a> {
    #[serde(flatten)]
    conn: &'a Connection,
    /// The daemon's mode for it and the rule that chose it.
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
    #[serde(rename = "subflows")]
    subflow_views: Vec<SubflowView<'a>>,
}

fn dev_of(ifs: Option<&Interfaces>, sf: &Subflow) -> Option<String> {
    let ifs = ifs?;
    if sf.bound_ifindex != 0 {
        return ifs.name(sf.bound_ifindex).map(str::to_string);
    }
    ifs.owner_of(sf.local.ip()).map(|l| l.name.clone())
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B")
    } else {
        format!("{v:.1}{}", UNITS[u])
    }
}

pub fn run(ctx: &Ctx, args: ConnsArgs) -> Result<()> {
    let conns = diag::connections(args.all)?;
    let ifs = Interfaces::load().ok();
    // Each connection's rule and mode, from a daemon of this namespace.
    let modes: std::collections::HashMap<u32, braid_policy::conns::ConnView> =
        crate::daemon::daemon_status(&args.socket)
            .filter(|d| d.netns.is_none() || d.netns == braid_kernel::netns::current_inode())
            .map(|d| d.connections.into_iter().map(|c| (c.token, c)).collect())
            .unwrap_or_default();
    let views: Vec<ConnView> = conns
        .iter()
        .map(|c| ConnView {
            conn: c,
            mode: c.token.and_then(|t| modes.get(&t)).map(|m| m.mode.name()),
            rule: c.token.and_then(|t| modes.get(&t)).map(|m| m.rule.clone()),
            subflow_views: c
                .subflows
                .iter()
                .map(|sf| SubflowView {
                    sf,
                    dev: dev_of(ifs.as_ref(), sf),
                })
                .collect(),
        })
        .collect();
    if ctx.json {
        print_json(&views);
        return Ok(());
    }
    if views.is_empty() {
        println!("no MPTCP connections");
        return Ok(());
    }
    for v in &views {
        let c = v.conn;
        let token = c
            .token
            .map(|t| format!("{t:08x}"))
            .unwrap_or_else(|| "-".into());
        let mode = if c.fell_back {
            "  FELL BACK TO TCP"
        } else {
            ""
        };
        let (sent, recv) = c
            .info
            .as_ref()
            .map(|i| (i.bytes_sent.unwrap_or(0), i.bytes_received.unwrap_or(0)))
            .unwrap_or((0, 0));
        let per_conn = match (v.mode, &v.rule) {
            (Some(m), Some(r)) => format!("  {m} ({r})"),
            _ => String::new(),
        };
        println!(
            "{} -> {}  {}  token {}  subflows {}  sent {} recv {}{}{}",
            c.local,
            c.remote,
            c.state,
            token,
            c.subflows.len(),
            human_bytes(sent),
            human_bytes(recv),
            mode,
            per_conn
        );
        for s in &v.subflow_views {
            let sf = s.sf;
            let backup = match (sf.backup_local, sf.backup_remote) {
                (true, true) => " backup(both)",
                (true, false) => " backup",
                (false, true) => " backup(peer)",
                _ => "",
            };
            let tcp = sf.tcp.as_ref();
            println!(
                "  {:<22} -> {:<22} {:<8} {:<11} ids {}/{}{} rtt {:.1}ms cwnd {} retrans {} sent {} unsent {} recv {}",
                sf.local.to_string(),
                sf.remote.to_string(),
                s.dev.as_deref().unwrap_or("-"),
                sf.state,
                sf.local_id,
                sf.remote_id,
                backup,
                tcp.map(|t| t.rtt_us as f64 / 1000.0).unwrap_or(0.0),
                tcp.map(|t| t.snd_cwnd).unwrap_or(0),
                tcp.map(|t| t.total_retrans).unwrap_or(0),
                human_bytes(tcp.and_then(|t| t.bytes_sent).unwrap_or(0)),
                human_bytes(u64::from(tcp.and_then(|t| t.notsent_bytes).unwrap_or(0))),
                human_bytes(tcp.and_then(|t| t.bytes_received).unwrap_or(0)),
            );
        }
    }
    Ok(())
}
