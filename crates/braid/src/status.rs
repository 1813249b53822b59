//! `braid status`: what the kernel's MPTCP is set to, and each problem found
//! with the exact command that fixes it.

use braid_daemon::control::DaemonStatus;
use braid_kernel::diag;
use braid_kernel::pm::{EndpointFlags, Limits, PathManager, KERNEL_MAX_LIMIT};
use braid_kernel::{sysctl, Error, Result};
use serde::Serialize;

use crate::endpoint::{limits_line, EndpointView};
use crate::names::Interfaces;
use crate::{print_json, Ctx};

#[derive(Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

#[derive(Serialize)]
pub struct Hint {
    pub severity: Severity,
    pub problem: String,
    pub fix: String,
}

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

fn hint(hints: &mut Vec<Hint>, severity: Severity, problem: String, fix: String) {
    hints.push(Hint {
        severity,
        problem,
        fix,
    });
}

fn gather(socket: &std::path::Path) -> Status {
    let mut hints = Vec::new();
    let available = sysctl::available();
    let read = |k: &str| sysctl::read(k).ok();
    let enabled = read("enabled").map(|v| v == "1");
    let path_manager = sysctl::path_manager().ok();
    let mut status = Status {
        kernel: braid_kernel::kernel_release(),
        mptcp_available: available,
        mptcp_enabled: enabled,
        path_manager,
        available_path_managers: read("available_path_managers"),
        scheduler: read("scheduler"),
        available_schedulers: read("available_schedulers"),
        limits: None,
        endpoints: Vec::new(),
        mptcp_listeners: 0,
        mptcp_connections: 0,
        hints: Vec::new(),
        daemon: crate::daemon::daemon_status(socket),
        relays: crate::relay::running(),
        mptcp_units: braid_apps::systemd::enabled_units(std::path::Path::new("/")),
    };
    if !available {
        hint(&mut hints, Severity::Error,
            "this kernel has no MPTCP (no /proc/sys/net/mptcp)".into(),
            "load the module with 'modprobe mptcp' or boot a kernel built with CONFIG_MPTCP=y (5.6+, 6.1+ recommended)".into());
        status.hints = hints;
        return status;
    }
    if enabled == Some(false) {
        hint(
            &mut hints,
            Severity::Error,
            "MPTCP is disabled: programs asking for MPTCP sockets get an error or plain TCP".into(),
            "sysctl -w net.mptcp.enabled=1   (persist it in /etc/sysctl.d/90-mptcp.conf)".into(),
        );
    }

    let ifs = Interfaces::load().ok();
    match PathManager::open().and_then(|mut pm| Ok((pm.limits()?, pm.endpoints()?))) {
        Ok((limits, eps)) => {
            status.limits = Some(limits);
            endpoint_hints(
                &mut hints,
                &limits,
                &eps,
                ifs.as_ref(),
                status.path_manager.as_deref(),
            );
            status.endpoints = eps
                .into_iter()
                .map(|e| EndpointView::new(e, ifs.as_ref()))
                .collect();
        }
        Err(e) => hint(
            &mut hints,
            Severity::Error,
            format!("cannot read the path manager's endpoints and limits: {e}"),
            if e.errno().is_some_and(errno_is_perm) {
                "run 'braid status' as root (reading endpoints needs CAP_NET_ADMIN on some kernels)"
                    .into()
            } else if matches!(e, Error::NoMptcpFamily) {
                "load MPTCP ('modprobe mptcp') or use a kernel built with CONFIG_MPTCP=y".into()
            } else {
                "see the error above".into()
            },
        ),
    }

    if let Ok(conns) = diag::connections(true) {
        status.mptcp_listeners = conns.iter().filter(|c| c.state == "listen").count();
        status.mptcp_connections = conns.len() - status.mptcp_listeners;
        let server_only = status.mptcp_listeners > 0
            && conns
                .iter()
                .all(|c| c.state == "listen" || is_server_side(c, &conns));
        let has_subflow_only = status.endpoints.iter().any(|v| {
            v.ep.flags.contains(EndpointFlags::SUBFLOW)
                && !v.ep.flags.contains(EndpointFlags::SIGNAL)
        });
        if server_only && has_subflow_only {
            hint(&mut hints, Severity::Info,
                "this host only accepts MPTCP connections (it has listeners and no outgoing ones), yet it has 'subflow' endpoints: a server rarely reaches clients behind NAT with new subflows; it needs 'signal' to announce its extra addresses".into(),
                "for each extra address: braid endpoint del ID; braid endpoint add ADDR signal".into());
        }
    }

    let dropped = braid_kernel::counters::mptcp()
        .ok()
        .and_then(|c| c.get("NoDSSInWindow").copied())
        .unwrap_or(0);
    if dropped > 0 {
        hint(&mut hints, Severity::Warning,
            format!("the kernel dropped {dropped} MPTCP data segment(s) for lack of receive buffer (MPTcpExtNoDSSInWindow): subflows had already acknowledged them, so only slow MPTCP-level retransmissions recover them and downloads crawl for seconds; typical when a path rejoins a download that ran on a slower one"),
            "start TCP receive buffers larger: sysctl -w net.ipv4.tcp_rmem='4096 16777216 33554432' (all TCP; memory is used only while data waits; see docs/benchmarks.md, flap)".into());
    }
    if status.path_manager.as_deref() == Some("userspace") && status.daemon.is_none() {
        hint(&mut hints, Severity::Warning,
            "net.mptcp.path_manager is 'userspace' and no Braid daemon answers: existing connections keep the subflows they have, new MPTCP connections get none beyond their first (nothing opens them)".into(),
            "start the daemon (systemctl start braid, or braid daemon), or go back to the in-kernel path manager: sysctl -w net.mptcp.path_manager=kernel".into());
    }
    if status.path_manager.as_deref() == Some("kernel")
        && status.endpoints.is_empty()
        && status.daemon.is_none()
    {
        hint(&mut hints, Severity::Warning,
            "no endpoints: every MPTCP connection stays on a single path".into(),
            "add one per extra interface, e.g. 'braid endpoint add 192.0.2.10 dev wlan0 subflow' (clients) or '... signal' (servers)".into());
    }
    hints.sort_by_key(|h| h.severity);
    status.hints = hints;
    status
}

fn errno_is_perm(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}

/// A connection accepted by one of our listeners (same local port).
fn is_server_side(c: &diag::Connection, all: &[diag::Connection]) -> bool {
    all.iter()
        .any(|l| l.state == "listen" && l.local.port() == c.local.port())
}

fn endpoint_hints(
    hints: &mut Vec<Hint>,
    limits: &Limits,
    eps: &[braid_kernel::pm::Endpoint],
    ifs: Option<&Interfaces>,
    pm: Option<&str>,
) {
    let subflow_eps = eps
        .iter()
        .filter(|e| e.flags.contains(EndpointFlags::SUBFLOW))
        .count() as u32;
    if subflow_eps > 0 && limits.subflows == 0 {
        hint(hints, Severity::Error,
            format!("the 'subflows' limit is 0, so none of the {subflow_eps} 'subflow' endpoint(s) can ever open an extra subflow"),
            format!("braid limits set subflows {}", subflow_eps.min(KERNEL_MAX_LIMIT)));
    } else if subflow_eps > limits.subflows {
        hint(hints, Severity::Warning,
            format!("{subflow_eps} 'subflow' endpoints but the 'subflows' limit is {}: some endpoints will not be used", limits.subflows),
            format!("braid limits set subflows {}", subflow_eps.min(KERNEL_MAX_LIMIT)));
    }
    if limits.add_addr_accepted == 0 && limits.subflows > 0 {
        hint(hints, Severity::Info,
            "'add_addr_accepted' is 0: addresses the server announces (ADD_ADDR) are ignored, so a client will not reach a multihomed server's other addresses".into(),
            "braid limits set add_addr_accepted 1   (on clients talking to multihomed servers)".into());
    }
    if eps.len() > KERNEL_MAX_LIMIT as usize {
        hint(
            hints,
            Severity::Warning,
            format!(
                "{} endpoints: the kernel uses at most {KERNEL_MAX_LIMIT} per connection",
                eps.len()
            ),
            "delete the endpoints on the least useful interfaces with 'braid endpoint del ID'"
                .into(),
        );
    }
    if pm == Some("userspace") && !eps.is_empty() {
        hint(hints, Severity::Warning,
            "net.mptcp.path_manager is 'userspace': the in-kernel endpoints listed here are ignored; a userspace daemon decides instead".into(),
            "sysctl -w net.mptcp.path_manager=kernel   (to use these endpoints)".into());
    }
    let Some(ifs) = ifs else { return };
    for ep in eps {
        match ifs.owner_of(ep.addr) {
            None => hint(hints, Severity::Warning,
                format!("endpoint {} (id {}) is on an address no interface has any more: subflows from it fail", ep.addr, ep.id),
                format!("braid endpoint del id {}", ep.id)),
            Some(link) if !link.up || !link.carrier => hint(hints, Severity::Warning,
                format!("endpoint {} (id {}) is on {}, which is {}: subflows from it stall until it returns",
                    ep.addr, ep.id, link.name, if !link.up { "down" } else { "without carrier" }),
                format!("braid endpoint del id {}   (or bring {} up again)", ep.id, link.name)),
            Some(_) => {}
        }
        if let Some(i) = ep.ifindex {
            if ifs.link(i).is_none() {
                hint(hints, Severity::Warning,
                    format!("endpoint {} (id {}) is bound to interface index {i}, which no longer exists", ep.addr, ep.id),
                    format!("braid endpoint del id {}", ep.id));
            }
        }
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
        "events          {} link, {} address, {} route, {} resyncs, {} reloads, {} actions ({} failed), {} path probes ({} unanswered), MPTCP {mptcp}",
        c.link_events, c.address_events, c.route_events, c.resyncs, c.reloads, c.actions, c.failed_actions,
        c.probes, c.probes_unanswered
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
