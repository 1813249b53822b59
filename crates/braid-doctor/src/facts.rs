//! What the rules look at, and the one place that reads it from the kernel.

use braid_kernel::diag::{self, Connection};
use braid_kernel::interfaces::Interfaces;
use braid_kernel::pm::{Endpoint, Limits, PathManager};
use braid_kernel::{sysctl, Error};

/// The host's MPTCP setup as the rules see it.
pub struct Facts {
    /// `/proc/sys/net/mptcp` exists.
    pub mptcp_available: bool,
    /// `net.mptcp.enabled`, when readable.
    pub mptcp_enabled: Option<bool>,
    /// `net.mptcp.path_manager`, when readable.
    pub path_manager: Option<String>,
    /// The in-kernel path manager's limits and endpoints, or why they could
    /// not be read; None when not asked (no MPTCP in this kernel).
    pub pm_table: Option<Result<PmTable, Error>>,
    /// Links and addresses, when they could be read.
    pub interfaces: Option<Interfaces>,
    /// MPTCP sockets, when sock_diag answered.
    pub connections: Option<ConnectionSummary>,
    /// MPTcpExtNoDSSInWindow: data segments dropped for lack of receive
    /// buffer.
    pub no_dss_in_window: u64,
    /// MPTcpExtBlackhole: times the kernel turned active MPTCP off, taking
    /// unanswered MP_CAPABLE SYNs for a middlebox that drops MPTCP.
    pub mptcp_blackholes: u64,
    /// MPTcpExtMPCapableSYNTXDrop: connections this host opened that fell
    /// back to TCP after their MP_CAPABLE SYNs went unanswered.
    pub mpc_syn_drops: u64,
    /// `net.mptcp.blackhole_timeout` (seconds; 0: the detection is off).
    pub blackhole_timeout_s: Option<u64>,
    /// A Braid daemon answers on its control socket.
    pub daemon_answers: bool,
}

/// The in-kernel path manager's table.
pub struct PmTable {
    pub limits: Limits,
    pub endpoints: Vec<Endpoint>,
}

/// MPTCP sockets, counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectionSummary {
    pub listeners: usize,
    /// Connections that are not listeners.
    pub connections: usize,
    /// Every connection was accepted by one of our listeners (none opened
    /// from here); true when there are none.
    pub all_accepted: bool,
}

impl ConnectionSummary {
    pub fn of(conns: &[Connection]) -> Self {
        let listeners = conns.iter().filter(|c| c.state == "listen").count();
        ConnectionSummary {
            listeners,
            connections: conns.len() - listeners,
            all_accepted: conns
                .iter()
                .all(|c| c.state == "listen" || is_accepted(c, conns)),
        }
    }
}

/// A connection accepted by one of our listeners (same local port).
fn is_accepted(c: &Connection, all: &[Connection]) -> bool {
    all.iter()
        .any(|l| l.state == "listen" && l.local.port() == c.local.port())
}

/// Read the facts from the kernel of the calling thread's namespace.
/// Whether a daemon answers is the caller's to find out.
pub fn read(daemon_answers: bool) -> Facts {
    let available = sysctl::available();
    let mut facts = Facts {
        mptcp_available: available,
        mptcp_enabled: sysctl::read("enabled").ok().map(|v| v == "1"),
        path_manager: sysctl::path_manager().ok(),
        // Not asked: without MPTCP there is no path manager to ask.
        pm_table: None,
        interfaces: None,
        connections: None,
        no_dss_in_window: 0,
        mptcp_blackholes: 0,
        mpc_syn_drops: 0,
        blackhole_timeout_s: sysctl::read("blackhole_timeout")
            .ok()
            .and_then(|v| v.parse().ok()),
        daemon_answers,
    };
    if !available {
        return facts;
    }
    facts.interfaces = Interfaces::load().ok();
    facts.pm_table = Some(PathManager::open().and_then(|mut pm| {
        Ok(PmTable {
            limits: pm.limits()?,
            endpoints: pm.endpoints()?,
        })
    }));
    facts.connections = diag::connections(true)
        .ok()
        .map(|conns| ConnectionSummary::of(&conns));
    let counters = braid_kernel::counters::mptcp().unwrap_or_default();
    let counter = |name: &str| counters.get(name).copied().unwrap_or(0);
    facts.no_dss_in_window = counter("NoDSSInWindow");
    facts.mptcp_blackholes = counter(braid_kernel::counters::BLACKHOLES);
    facts.mpc_syn_drops = counter(braid_kernel::counters::MPC_SYN_DROPS);
    facts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(state: &'static str, local: &str) -> Connection {
        Connection {
            local: local.parse().unwrap(),
            remote: "198.51.100.1:40000".parse().unwrap(),
            state,
            token: None,
            inode: 0,
            fell_back: false,
            info: None,
            subflows: Vec::new(),
        }
    }

    #[test]
    fn counts_listeners_apart() {
        let s = ConnectionSummary::of(&[
            conn("listen", "0.0.0.0:443"),
            conn("established", "192.0.2.1:443"),
            conn("established", "192.0.2.1:50000"),
        ]);
        assert_eq!((s.listeners, s.connections), (1, 2));
        assert!(!s.all_accepted, "port 50000 has no listener: opened here");
    }

    #[test]
    fn connections_on_a_listening_port_are_accepted() {
        let s = ConnectionSummary::of(&[
            conn("listen", "0.0.0.0:443"),
            conn("established", "192.0.2.1:443"),
        ]);
        assert!(s.all_accepted);
        assert!(ConnectionSummary::of(&[]).all_accepted);
    }
}
