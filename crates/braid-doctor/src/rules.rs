//! The rules: each problem worth reporting, from [`Facts`] alone.

use braid_kernel::interfaces::Interfaces;
use braid_kernel::pm::{Endpoint, EndpointFlags, Limits, KERNEL_MAX_LIMIT};
use braid_kernel::Error;
use serde::Serialize;

use crate::facts::{Facts, PmTable};

#[derive(Debug, Serialize, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Error,
    Warning,
    Info,
}

/// One problem and the command that fixes it.
#[derive(Debug, Serialize)]
pub struct Hint {
    pub severity: Severity,
    pub problem: String,
    pub fix: String,
}

fn hint(hints: &mut Vec<Hint>, severity: Severity, problem: String, fix: String) {
    hints.push(Hint {
        severity,
        problem,
        fix,
    });
}

/// Every problem the facts show, errors first.
pub fn hints(facts: &Facts) -> Vec<Hint> {
    let mut hints = Vec::new();
    if !facts.mptcp_available {
        hint(&mut hints, Severity::Error,
            "this kernel has no MPTCP (no /proc/sys/net/mptcp)".into(),
            "load the module with 'modprobe mptcp' or boot a kernel built with CONFIG_MPTCP=y (5.6+, 6.1+ recommended)".into());
        return hints;
    }
    if facts.mptcp_enabled == Some(false) {
        hint(
            &mut hints,
            Severity::Error,
            "MPTCP is disabled: programs asking for MPTCP sockets get an error or plain TCP".into(),
            "sysctl -w net.mptcp.enabled=1   (persist it in /etc/sysctl.d/90-mptcp.conf)".into(),
        );
    }
    let pm = facts.path_manager.as_deref();
    match &facts.pm_table {
        Some(Ok(table)) => {
            limit_hints(&mut hints, &table.limits, &table.endpoints, pm);
            if let Some(ifs) = &facts.interfaces {
                interface_hints(&mut hints, &table.endpoints, ifs);
            }
        }
        Some(Err(e)) => pm_unreadable(&mut hints, e),
        // Only without MPTCP, which returned above.
        None => {}
    }
    let endpoints = match &facts.pm_table {
        Some(Ok(PmTable { endpoints, .. })) => endpoints.as_slice(),
        _ => &[],
    };
    server_hints(&mut hints, facts, endpoints);
    if facts.no_dss_in_window > 0 {
        let dropped = facts.no_dss_in_window;
        hint(&mut hints, Severity::Warning,
            format!("the kernel dropped {dropped} MPTCP data segment(s) for lack of receive buffer (MPTcpExtNoDSSInWindow): subflows had already acknowledged them, so only slow MPTCP-level retransmissions recover them and downloads crawl for seconds; typical when a path rejoins a download that ran on a slower one"),
            "start TCP receive buffers larger: sysctl -w net.ipv4.tcp_rmem='4096 16777216 33554432' (all TCP; memory is used only while data waits; see docs/benchmarks.md, flap)".into());
    }
    small_buffer_hint(&mut hints, &facts.small_receive_buffers);
    deep_queue_hint(&mut hints, facts);
    syn_fallback_hints(&mut hints, facts);
    if pm == Some("userspace") && !facts.daemon_answers {
        hint(&mut hints, Severity::Warning,
            "net.mptcp.path_manager is 'userspace' and no Braid daemon answers: existing connections keep the subflows they have, new MPTCP connections get none beyond their first (nothing opens them)".into(),
            "start the daemon (systemctl start braid, or braid daemon), or go back to the in-kernel path manager: sysctl -w net.mptcp.path_manager=kernel".into());
    }
    if pm == Some("kernel") && endpoints.is_empty() && !facts.daemon_answers {
        hint(&mut hints, Severity::Warning,
            "no endpoints: every MPTCP connection stays on a single path".into(),
            "add one per extra interface, e.g. 'braid endpoint add 192.0.2.10 dev wlan0 subflow' (clients) or '... signal' (servers)".into());
    }
    hints.sort_by_key(|h| h.severity);
    hints
}

/// Connections that fell back to TCP when their MP_CAPABLE SYNs went
/// unanswered, and the kernel's namespace-wide verdict that may follow
/// (`braid_kernel::counters::active_mptcp_off`).
fn syn_fallback_hints(hints: &mut Vec<Hint>, facts: &Facts) {
    if let Some((problem, fix)) =
        braid_kernel::counters::active_mptcp_off(facts.mptcp_blackholes, facts.blackhole_timeout_s)
    {
        hint(hints, Severity::Warning, problem, fix);
    } else if facts.mpc_syn_drops > 0 {
        let n = facts.mpc_syn_drops;
        hint(hints, Severity::Info,
            format!("{n} connection(s) opened from here fell back to plain TCP after their MP_CAPABLE SYN and its retransmissions went unanswered (MPTcpExtMPCapableSYNTXDrop): they stay single-path for their whole life; lost SYNs on a lossy path, or a middlebox dropping MPTCP options"),
            "nothing to do for one-off losses; to wait longer before falling back: sysctl -w net.mptcp.syn_retrans_before_tcp_fallback=4".into());
    }
}

fn pm_unreadable(hints: &mut Vec<Hint>, e: &Error) {
    hint(
        hints,
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
    );
}

fn errno_is_perm(errno: i32) -> bool {
    errno == libc::EPERM || errno == libc::EACCES
}

/// A host that only accepts connections, with endpoints only a client uses.
fn server_hints(hints: &mut Vec<Hint>, facts: &Facts, endpoints: &[Endpoint]) {
    let Some(conns) = facts.connections else {
        return;
    };
    let server_only = conns.listeners > 0 && conns.all_accepted;
    let has_subflow_only = endpoints.iter().any(|e| {
        e.flags.contains(EndpointFlags::SUBFLOW) && !e.flags.contains(EndpointFlags::SIGNAL)
    });
    if server_only && has_subflow_only {
        hint(hints, Severity::Info,
            "this host only accepts MPTCP connections (it has listeners and no outgoing ones), yet it has 'subflow' endpoints: a server rarely reaches clients behind NAT with new subflows; it needs 'signal' to announce its extra addresses".into(),
            "for each extra address: braid endpoint del ID; braid endpoint add ADDR signal".into());
    }
}

/// Limits that leave endpoints unused, and endpoints the kernel ignores.
fn limit_hints(hints: &mut Vec<Hint>, limits: &Limits, eps: &[Endpoint], pm: Option<&str>) {
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
}

/// Endpoints on addresses or interfaces that are gone or down.
fn interface_hints(hints: &mut Vec<Hint>, eps: &[Endpoint], ifs: &Interfaces) {
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

#[cfg(test)]
mod tests;

/// The initial TCP receive buffer the receive-buffer hint gives: in the
/// lab (sweep60) 4 MB on the receiver took a late-joined subflow from
/// 2.8 MB moved in 4 s to 10.5 and 13.2.
const RECOMMENDED_INITIAL_RMEM: u32 = 4 * 1024 * 1024;

/// Subflows receiving with tcp_rmem's initial buffer while a sibling's
/// grew (`crate::facts::small_receive_buffers`).
fn small_buffer_hint(hints: &mut Vec<Hint>, small: &[crate::facts::SmallBuffer]) {
    // Already started at the size the fix gives (or larger): a sibling
    // that grew past it is no reason to start larger still.
    let Some(first) = small
        .first()
        .filter(|s| s.rcvbuf < RECOMMENDED_INITIAL_RMEM)
    else {
        return;
    };
    hint(hints, Severity::Warning,
        format!("{} MPTCP subflow(s) receive with a {} KB buffer, net.ipv4.tcp_rmem's initial size, while another subflow of the same connection has {} KB (e.g. {} from {}): the kernel raises subflows' receive buffers only when it raises the connection's, so a subflow joined after that keeps the initial one, and the window it advertises caps that path (measured: 3.3 Mbit/s on a 20 Mbit/s path with a 200 ms RTT)",
            small.len(), kib(first.rcvbuf.into()), kib(first.grown.into()), first.local, first.remote),
        format!("start TCP receive buffers larger: sysctl -w net.ipv4.tcp_rmem='4096 {RECOMMENDED_INITIAL_RMEM} 33554432' (all TCP; memory is used only while data waits; on a relay server too, which receives its clients' uploads; see docs/benchmarks.md, sweep60)"));
}

/// The smallest send-buffer maximum the send-queue hint gives: in the lab
/// (10/40 ms paths, 40 and 20 Mbit/s) 1 MB cost no throughput.
const SMALLEST_MAX_WMEM: u64 = 1024 * 1024;
/// Room left for this many times the largest bandwidth × RTT: BBR keeps
/// about twice it in flight, and the buffer counts memory, not payload.
const WMEM_PER_BDP: u64 = 3;

fn kib(bytes: u64) -> u64 {
    bytes / 1024
}

/// Subflows whose unsent queue a failover would wait for
/// (`crate::facts::deep_send_queues`).
fn deep_queue_hint(hints: &mut Vec<Hint>, facts: &Facts) {
    let queues = &facts.deep_send_queues;
    let (Some(worst), Some([min, initial, max])) = (
        queues.iter().max_by_key(|q| q.queued_ms),
        facts.send_buffer_sizes,
    ) else {
        return;
    };
    let cap = WMEM_PER_BDP
        .saturating_mul(facts.largest_bdp)
        .checked_next_power_of_two()
        .unwrap_or(u64::MAX)
        .max(SMALLEST_MAX_WMEM);
    // The paths seen need the maximum in force, or more: a cap below it
    // would cost them throughput.
    if cap >= u64::from(max) {
        return;
    }
    // The kernel starts a socket's buffer at the initial size whatever
    // the maximum: it must not be above the cap.
    let initial = u64::from(initial).min(cap);
    hint(hints, Severity::Warning,
        format!("{} MPTCP subflow(s) hold {} ms or more of unsent data at their delivery rate, beside another subflow that carries data (e.g. {} KB from {} to {}, {} ms): when that other path fails, the kernel resends its data behind this queue, and the transfer stalls about that long (lab, 10/40 ms paths: 393–644 ms with tcp_wmem's 4 MB maximum, 212–234 ms with 1 MB)",
            queues.len(), crate::facts::DEEP_QUEUE_MS, kib(u64::from(worst.notsent)), worst.local, worst.remote, worst.queued_ms),
        format!("cap TCP send buffers: sysctl -w net.ipv4.tcp_wmem='{min} {initial} {cap}' (all TCP on this host; {} KB leaves room for {WMEM_PER_BDP} times the largest bandwidth × RTT among the MPTCP subflows seen now, {} KB; a plain TCP connection with more would be slowed; net.ipv4.tcp_notsent_lowat does not bound an MPTCP subflow's queue; see docs/benchmarks.md, \"A failover waits for the send queue\")",
            kib(cap), kib(facts.largest_bdp)));
}
