//! What the rules look at, and the one place that reads it from the kernel.

use std::net::SocketAddr;

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
    /// Subflows receiving with tcp_rmem's initial buffer while a sibling's
    /// grew (`small_receive_buffers`), and tcp_rmem's initial size.
    pub small_receive_buffers: Vec<SmallBuffer>,
    /// Subflows of multipath connections holding a long queue not yet sent
    /// (`deep_send_queues`).
    pub deep_send_queues: Vec<DeepSendQueue>,
    /// The largest bandwidth × RTT among the MPTCP subflows seen
    /// (`largest_bdp`).
    pub largest_bdp: u64,
    /// `net.ipv4.tcp_wmem` (minimum, initial, maximum), when readable.
    pub send_buffer_sizes: Option<[u32; 3]>,
}

/// A subflow that receives with its receive buffer still at
/// `net.ipv4.tcp_rmem`'s initial size while another subflow of its
/// connection has a buffer several times larger. The kernel raises
/// subflows' buffers only when it raises the connection's
/// (`mptcp_rcv_space_adjust`): a subflow joined after the last raise keeps
/// the initial one, and the window it advertises caps its path (lab,
/// sweep60: 80 kB a 200 ms round trip, 3.3 Mbit/s on a 20 Mbit/s path).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallBuffer {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub rcvbuf: u32,
    /// The largest receive buffer among the connection's other subflows.
    pub grown: u32,
}

/// A sibling's buffer this many times the subflow's shows the
/// connection's autotuning raised the others and passed this one over.
const GROWN_FACTOR: u32 = 4;
/// Received at least this much: the subflow carries a transfer in, not a
/// few requests (whose window never fills).
const RECEIVED_ENOUGH: u64 = 1 << 20;

/// The subflows of `conns` that receive with a buffer no larger than
/// `initial` (tcp_rmem's middle value) while a sibling's is at least
/// `GROWN_FACTOR` times larger.
pub fn small_receive_buffers(conns: &[Connection], initial: u32) -> Vec<SmallBuffer> {
    let mut out = Vec::new();
    for c in conns {
        for (i, sf) in c.subflows.iter().enumerate() {
            let Some(rcvbuf) = sf.rcvbuf.filter(|b| *b <= initial) else {
                continue;
            };
            let received = sf.tcp.as_ref().and_then(|t| t.bytes_received);
            if sf.state != "established" || received.unwrap_or(0) < RECEIVED_ENOUGH {
                continue;
            }
            let grown = c
                .subflows
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .filter_map(|(_, o)| o.rcvbuf)
                .max()
                .unwrap_or(0);
            if grown >= rcvbuf.saturating_mul(GROWN_FACTOR) {
                out.push(SmallBuffer {
                    local: sf.local,
                    remote: sf.remote,
                    rcvbuf,
                    grown,
                });
            }
        }
    }
    out
}

/// A subflow holding more unsent data than it delivers in
/// `DEEP_QUEUE_MS`, in a connection where another subflow carries data
/// too. When that other path fails, the kernel resends its data on the
/// surviving subflow behind this queue, and the transfer waits for the
/// queue to drain: the failover stall of aggregate mode and of the kernel
/// alone (lab, 10/40 ms paths: 393–644 ms under tcp_wmem's 4 MB maximum,
/// 212–234 with 1 MB; `net.ipv4.tcp_notsent_lowat` did not bound a
/// subflow's queue). A standby (backup) subflow carries nothing, so a
/// queue beside one is no such hazard: what was queued moves to an empty
/// path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeepSendQueue {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub notsent: u32,
    /// How long the subflow takes to send that queue at its delivery rate.
    pub queued_ms: u64,
}

/// A queue this long (in time at the subflow's delivery rate) is what a
/// failover waits for.
pub(crate) const DEEP_QUEUE_MS: u64 = 200;
/// ... and this large: a short queue on a slow path is no stall to speak of.
pub(crate) const DEEP_QUEUE_BYTES: u32 = 256 * 1024;
/// Acknowledged at least this much: past its first round trips, whose
/// rate samples are low while the window opens.
const ACKED_ENOUGH: u64 = 1 << 20;

/// The subflow's delivery rate (bytes/s) when its sample says what the
/// path carries: a sample taken while the sender had too little to send,
/// or before `ACKED_ENOUGH` was acknowledged, says less.
fn measured_rate(sf: &diag::Subflow) -> Option<u64> {
    let t = sf.tcp.as_ref()?;
    let acked = t.bytes_acked.unwrap_or(0);
    (!t.delivery_rate_app_limited && acked >= ACKED_ENOUGH)
        .then_some(t.delivery_rate?)
        .filter(|rate| *rate > 0)
}

/// A subflow the sender schedules data on: neither end marked it backup.
fn carries(sf: &diag::Subflow) -> bool {
    sf.state == "established" && !sf.backup_local && !sf.backup_remote
}

/// The subflows of `conns` whose unsent queue takes `DEEP_QUEUE_MS` or
/// longer to send, in connections with two carrying subflows or more.
pub fn deep_send_queues(conns: &[Connection]) -> Vec<DeepSendQueue> {
    let mut out = Vec::new();
    for c in conns {
        let carrying: Vec<_> = c.subflows.iter().filter(|sf| carries(sf)).collect();
        if carrying.len() < 2 {
            continue;
        }
        for sf in carrying {
            let notsent = sf.tcp.as_ref().and_then(|t| t.notsent_bytes).unwrap_or(0);
            let Some(rate) = measured_rate(sf).filter(|_| notsent >= DEEP_QUEUE_BYTES) else {
                continue;
            };
            let queued_ms = u64::from(notsent) * 1000 / rate;
            if queued_ms >= DEEP_QUEUE_MS {
                out.push(DeepSendQueue {
                    local: sf.local,
                    remote: sf.remote,
                    notsent,
                    queued_ms,
                });
            }
        }
    }
    out
}

/// The largest bandwidth × RTT (bytes) among the MPTCP subflows of
/// `conns` whose rate is measured: what a smaller send buffer must still
/// leave room for. Plain TCP connections are not seen.
pub fn largest_bdp(conns: &[Connection]) -> u64 {
    conns
        .iter()
        .flat_map(|c| &c.subflows)
        .filter_map(|sf| {
            let rtt_us = sf.tcp.as_ref()?.rtt_us;
            Some(measured_rate(sf)?.saturating_mul(u64::from(rtt_us)) / 1_000_000)
        })
        .max()
        .unwrap_or(0)
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
        small_receive_buffers: Vec::new(),
        deep_send_queues: Vec::new(),
        largest_bdp: 0,
        send_buffer_sizes: sysctl::tcp_wmem().ok(),
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
    let conns = diag::connections(true).ok();
    facts.connections = conns.as_deref().map(ConnectionSummary::of);
    if let (Some(conns), Ok([_, initial, _])) = (&conns, sysctl::tcp_rmem()) {
        facts.small_receive_buffers = small_receive_buffers(conns, initial);
    }
    if let Some(conns) = &conns {
        facts.deep_send_queues = deep_send_queues(conns);
        facts.largest_bdp = largest_bdp(conns);
    }
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

    fn subflow(local: &str, rcvbuf: u32, received: u64) -> diag::Subflow {
        let tcp = braid_kernel::info::TcpInfo {
            bytes_received: Some(received),
            ..Default::default()
        };
        diag::Subflow {
            local: local.parse().unwrap(),
            remote: "198.51.100.1:443".parse().unwrap(),
            bound_ifindex: 0,
            state: "established",
            token_local: 1,
            token_remote: 2,
            local_id: 0,
            remote_id: 0,
            flags: 0,
            backup_local: false,
            backup_remote: false,
            tcp: Some(tcp),
            rcvbuf: Some(rcvbuf),
        }
    }

    fn with(subflows: Vec<diag::Subflow>) -> Connection {
        Connection {
            subflows,
            ..conn("established", "192.0.2.1:50000")
        }
    }

    /// sweep60's trace: the first subflow's buffer grew to 3 MB, the
    /// joined one's stayed at 128 KB while it carried the transfer.
    #[test]
    fn a_receiving_subflow_left_at_the_initial_buffer_is_found() {
        let c = with(vec![
            subflow("192.0.2.1:50000", 3_145_728, 40 << 20),
            subflow("192.0.2.2:50001", 131_072, 8 << 20),
        ]);
        let found = small_receive_buffers(&[c], 131_072);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].local, "192.0.2.2:50001".parse().unwrap());
        assert_eq!((found[0].rcvbuf, found[0].grown), (131_072, 3_145_728));
    }

    #[test]
    fn grown_or_idle_or_lone_subflows_are_not_reported() {
        // Both grew; one small but hardly received; a lone subflow.
        let grown = with(vec![
            subflow("192.0.2.1:50000", 3_145_728, 40 << 20),
            subflow("192.0.2.2:50001", 1_048_576, 8 << 20),
        ]);
        let idle = with(vec![
            subflow("192.0.2.1:50000", 3_145_728, 40 << 20),
            subflow("192.0.2.2:50001", 131_072, 4096),
        ]);
        let alone = with(vec![subflow("192.0.2.2:50001", 131_072, 8 << 20)]);
        // Siblings not much larger: nothing raised the others either.
        let close = with(vec![
            subflow("192.0.2.1:50000", 262_144, 40 << 20),
            subflow("192.0.2.2:50001", 131_072, 8 << 20),
        ]);
        assert!(small_receive_buffers(&[grown, idle, alone, close], 131_072).is_empty());
    }

    /// A subflow sending: `notsent` bytes queued, delivering `rate`
    /// bytes a second over `rtt_ms`, 8 MB acknowledged.
    fn sending(local: &str, notsent: u32, rate: u64, rtt_ms: u32) -> diag::Subflow {
        let mut sf = subflow(local, 131_072, 0);
        let tcp = sf.tcp.as_mut().unwrap();
        tcp.notsent_bytes = Some(notsent);
        tcp.delivery_rate = Some(rate);
        tcp.bytes_acked = Some(8 << 20);
        tcp.rtt_us = rtt_ms * 1000;
        sf
    }

    /// The lab's trace (late-interface, 10/40 ms, tcp_wmem's 4 MB
    /// maximum): 2.6 MB queued on the 20 Mbit/s path, 1.5 MB on the 40.
    fn lab_trace() -> Connection {
        with(vec![
            sending("192.0.2.1:50000", 1_500_000, 5_000_000, 22),
            sending("192.0.2.2:50001", 2_600_000, 2_500_000, 83),
        ])
    }

    #[test]
    fn a_subflow_with_a_second_of_unsent_data_is_found() {
        let found = deep_send_queues(&[lab_trace()]);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[1].local, "192.0.2.2:50001".parse().unwrap());
        assert_eq!((found[1].notsent, found[1].queued_ms), (2_600_000, 1040));
        assert_eq!(found[0].queued_ms, 300);
        // 2.5 MB/s × 83 ms against 5 MB/s × 22 ms.
        assert_eq!(largest_bdp(&[lab_trace()]), 207_500);
    }

    #[test]
    fn short_or_small_or_lone_queues_are_not_reported() {
        // 1 MB at 10 MB/s is 100 ms; 200 KB at 0.5 MB/s is 400 ms but
        // small; a lone subflow has nowhere else to resend from; a
        // subflow that has delivered nothing yet has no rate.
        let short = with(vec![
            sending("192.0.2.1:50000", 1_000_000, 10_000_000, 20),
            sending("192.0.2.2:50001", 0, 2_500_000, 80),
        ]);
        let small = with(vec![
            sending("192.0.2.1:50000", 200_000, 500_000, 20),
            sending("192.0.2.2:50001", 0, 2_500_000, 80),
        ]);
        let alone = with(vec![sending("192.0.2.2:50001", 2_600_000, 2_500_000, 80)]);
        let no_rate = with(vec![
            sending("192.0.2.1:50000", 2_600_000, 0, 20),
            sending("192.0.2.2:50001", 0, 2_500_000, 80),
        ]);
        assert!(deep_send_queues(&[short, small, alone, no_rate]).is_empty());
    }

    /// Handover: the primary holds the queue, the standby nothing; when
    /// the primary fails its data goes to an empty path (81 ms in the lab
    /// under the default 4 MB maximum).
    #[test]
    fn a_queue_beside_a_standby_is_no_failover_hazard() {
        let mut c = lab_trace();
        c.subflows[0].backup_remote = true;
        assert!(deep_send_queues(&[c.clone()]).is_empty());
        c.subflows[0].backup_remote = false;
        c.subflows[0].backup_local = true;
        assert!(deep_send_queues(&[c]).is_empty());
    }

    /// A rate sampled while the sender had little to send, or in the
    /// first round trips, is below what the path carries: it would make
    /// the queue look longer and the paths' bandwidth × RTT smaller.
    #[test]
    fn rates_sampled_app_limited_or_early_are_not_used() {
        let mut c = lab_trace();
        c.subflows[1]
            .tcp
            .as_mut()
            .unwrap()
            .delivery_rate_app_limited = true;
        let found = deep_send_queues(&[c.clone()]);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].local, "192.0.2.1:50000".parse().unwrap());
        assert_eq!(largest_bdp(&[c.clone()]), 110_000);
        c.subflows[0].tcp.as_mut().unwrap().bytes_acked = Some(500_000);
        assert!(deep_send_queues(&[c.clone()]).is_empty());
        assert_eq!(largest_bdp(&[c]), 0);
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
