//! `braid status`: what the kernel's MPTCP is set to, and each problem found
//! with the exact command that fixes it.

use braid_daemon::control::DaemonStatus;
use braid_doctor::{Facts, Hint, Severity};
use braid_kernel::pm::Limits;
use braid_kernel::{sysctl, Result};
use serde::Serialize;

use crate::endpoint::{limits_line, EndpointView};
use crate::{print_json, Ctx};

#[derive(Serialize)]
struct Status {
    kernel: String,
    mptcp_available: bool,
    mptcp_enabled: Option<bool>,
    path_manager: Option<String>,
    available_path_managers: Option<String>,
    scheduler: Option<String>,
    available_schedulers: Option<String>,
    limits: Option<Limits>,
    endpoints: Vec<EndpointView>,
    mptcp_listeners: usize,
    mptcp_connections: usize,
    hints: Vec<Hint>,
    /// systemd units where 'braid enable' made programs use MPTCP.
    mptcp_units: Vec<String>,
    /// The daemon's own view, when one answers on the control socket.
    #[serde(skip_serializing_if = "Option::is_none")]
    daemon: Option<DaemonStatus>,
    /// A relay or relay client running here (their default status sockets).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    relays: Vec<braid_relay::stats::Status>,
}

/// The facts, the doctor's hints on them, and what is shown besides.
fn gather(socket: &std::path::Path) -> Status {
    let daemon = crate::daemon::daemon_status(socket);
    let facts = braid_doctor::facts::read(daemon.is_some());
    let hints = braid_doctor::hints(&facts);
    let read = |k: &str| sysctl::read(k).ok();
    let Facts {
        mptcp_available,
        mptcp_enabled,
        path_manager,
        pm_table,
        interfaces,
        connections,
        ..
    } = facts;
    let (limits, endpoints) = match pm_table {
        Some(Ok(t)) => (Some(t.limits), t.endpoints),
        _ => (None, Vec::new()),
    };
    let connections = connections.unwrap_or_default();
    Status {
        kernel: braid_kernel::kernel_release(),
        mptcp_available,
        mptcp_enabled,
        path_manager,
        available_path_managers: read("available_path_managers"),
        scheduler: read("scheduler"),
        available_schedulers: read("available_schedulers"),
        limits,
        endpoints: endpoints
            .into_iter()
            .map(|e| EndpointView::new(e, interfaces.as_ref()))
            .collect(),
        mptcp_listeners: connections.listeners,
        mptcp_connections: connections.connections,
        hints,
        mptcp_units: braid_apps::systemd::enabled_units(std::path::Path::new("/")),
        daemon,
        relays: crate::relay::running(),
    }
}

pub fn run(ctx: &Ctx, socket: &std::path::Path) -> Result<()> {
    let s = gather(socket);
    if ctx.json {
        print_json(&s);
        return Ok(());
    }
    let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    println!("kernel          {}", s.kernel);
    println!(
        "mptcp           {}",
        match (s.mptcp_available, s.mptcp_enabled) {
            (false, _) => "not available".to_string(),
            (true, Some(true)) => "enabled".into(),
            (true, Some(false)) => "DISABLED".into(),
            (true, None) => "unknown".into(),
        }
    );
    println!(
        "path manager    {} (available: {})",
        opt(&s.path_manager),
        opt(&s.available_path_managers)
    );
    println!(
        "scheduler       {} (available: {})",
        opt(&s.scheduler),
        opt(&s.available_schedulers)
    );
    if let Some(l) = &s.limits {
        println!("limits          {}", limits_line(l));
    }
    println!(
        "connections     {} MPTCP, {} listening",
        s.mptcp_connections, s.mptcp_listeners
    );
    if s.endpoints.is_empty() {
        println!("endpoints       none");
    } else {
        println!("endpoints");
        for e in &s.endpoints {
            println!("  {}", e.line());
        }
    }
    if !s.mptcp_units.is_empty() {
        println!(
            "MPTCP enabled   {} (braid enable)",
            s.mptcp_units.join(", ")
        );
    }
    match &s.daemon {
        Some(d) => print_daemon(d),
        None => println!(
            "daemon          not running (start it with 'braid daemon' or the braid.service unit)"
        ),
    }
    for r in &s.relays {
        println!("{}", crate::relay::one_line(r));
    }
    if s.hints.is_empty() {
        println!("\nno problems found");
    } else {
        println!();
        for h in &s.hints {
            let tag = match h.severity {
                Severity::Error => "error",
                Severity::Warning => "warning",
                Severity::Info => "note",
            };
            println!("{tag}: {}\n  fix: {}", h.problem, h.fix);
        }
    }
    Ok(())
}

/// The daemon's view, from its status reply.
fn print_daemon(d: &DaemonStatus) {
    let v = &d.view;
    println!(
        "daemon          running (pid {}, up {} s, mode {}, config {})",
        d.pid,
        d.uptime_s,
        v.mode.name(),
        d.config.display()
    );
    // What the daemon found it can and cannot do where it runs.
    if !d.features.is_empty() {
        println!("features");
        for f in &d.features {
            let text = [f.how.as_deref(), f.why.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join("; ");
            println!(
                "  {:<4} {}: {text}",
                if f.on { "on" } else { "OFF" },
                f.name
            );
        }
    }
    for w in &d.warnings {
        println!("warning: {w}");
    }
    // The state names its mode ("handover: ...").
    if v.path_state.is_empty() {
        println!(
            "paths           {}: no measurements yet",
            v.path_mode.name()
        );
    } else {
        println!("paths           {}", v.path_state);
    }
    print_health(v);
    print_interfaces(v);
    for w in &v.warnings {
        println!("warning: {w}");
    }
    let ds = &v.recent_decisions;
    if !ds.is_empty() {
        println!("recent decisions");
        for x in &ds[ds.len().saturating_sub(10)..] {
            let err = x
                .error
                .as_ref()
                .map(|e| format!("  FAILED: {e}"))
                .unwrap_or_default();
            println!(
                "  +{:.1}s {}: {}{}",
                x.at_ms as f64 / 1000.0,
                x.action,
                x.reason,
                err
            );
        }
    }
    if !d.connections.is_empty() {
        println!("connections     per connection (pm = \"userspace\")");
        for c in d.connections.iter().take(20) {
            println!(
                "  {:08x} -> {:<22} {:<11} {} subflow(s), {}",
                c.token,
                c.remote.to_string(),
                c.mode.name(),
                c.subflows,
                c.rule
            );
        }
        if d.connections.len() > 20 {
            println!("  and {} more", d.connections.len() - 20);
        }
    }
    let c = &v.counters;
    let mptcp = serde_json::to_string(&c.mptcp_events).unwrap_or_default();
    println!(
        "events          {} link ({} carrier losses read first, {} standby endpoints kept without carrier), {} backup flags set again after a join missed them, {} address, {} route, {} resyncs, {} reloads, {} actions ({} failed), {} path probes ({} unanswered, {} of them while data came), MPTCP {mptcp}",
        c.link_events, c.carrier_losses_polled, c.standby_endpoints_kept, c.backup_flags_resent, c.address_events, c.route_events, c.resyncs, c.reloads, c.actions, c.failed_actions,
        c.probes, c.probes_unanswered, c.probes_unanswered_data_came
    );
}

/// Measured health per interface.
fn print_health(v: &braid_policy::policy::PolicyView) {
    if !v.health.is_empty() {
        println!("health (from subflow tcp_info)");
        for (name, x) in &v.health {
            let rtt = x
                .srtt_ms
                .map(|r| format!("{r:.1} ms"))
                .unwrap_or_else(|| "-".into());
            let stalled = Some(x.stalled_ms)
                .filter(|s| *s > 0)
                .map(|s| format!(", no ACK for {s} ms"))
                .unwrap_or_default();
            let unreachable = x
                .unreachable
                .as_ref()
                .map(|why| format!(", {why}"))
                .unwrap_or_default();
            println!(
                "  {:<12} rtt {rtt}, loss {:.1} %{}{stalled}{unreachable}, {} subflow(s)",
                name,
                x.loss * 100.0,
                if x.lossy { " (lossy)" } else { "" },
                x.subflows
            );
        }
    }
}

/// Interfaces and why each address is, or is not, an endpoint.
fn print_interfaces(v: &braid_policy::policy::PolicyView) {
    if !v.interfaces.is_empty() {
        println!("interfaces");
        for i in &v.interfaces {
            let state = match (i.up, i.carrier) {
                (true, true) => "up",
                (true, false) => "no-carrier",
                _ => "down",
            };
            let initcwnd = i
                .standby_initcwnd
                .map(|w| format!(", standby: routes initcwnd {w}"))
                .unwrap_or_default();
            println!("  {:<12} {:<10} {}{initcwnd}", i.name, state, i.role);
            for a in &i.addresses {
                let ep = a
                    .endpoint_id
                    .map(|id| format!(" (endpoint id {id})"))
                    .unwrap_or_default();
                println!("      {}/{}  {}{}", a.ip, a.prefix_len, a.why, ep);
            }
        }
    }
}
