//! What each path carried for the relay: the tunnel's subflows, read from
//! the socket when a connection ends (MPTCP_FULL_INFO) and from sock_diag
//! for the connections still open.

use std::net::IpAddr;
use std::os::fd::AsFd;

use braid_kernel::{diag, socket};

use crate::stats::{PathBytes, PathTotals};

/// One subflow's counters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubflowBytes {
    pub local: Option<IpAddr>,
    pub remote: Option<IpAddr>,
    pub sent: u64,
    pub received: u64,
}

/// The subflows of a tunnel socket now: one per subflow for MPTCP, the
/// socket itself for TCP. Empty when the kernel tells nothing.
pub fn snapshot(fd: &impl AsFd) -> Vec<SubflowBytes> {
    match socket::connection_info(fd) {
        Ok(socket::ConnectionInfo::Mptcp { subflows, .. }) => subflows
            .into_iter()
            .filter_map(|sf| {
                let tcp = sf.tcp?;
                Some(SubflowBytes {
                    local: sf.local.map(|a| a.ip()),
                    remote: sf.remote.map(|a| a.ip()),
                    sent: tcp.bytes_acked.unwrap_or(0),
                    received: tcp.bytes_received.unwrap_or(0),
                })
            })
            .collect(),
        Ok(socket::ConnectionInfo::Tcp { tcp: Some(tcp), .. }) => {
            let s = socket2::SockRef::from(fd);
            vec![SubflowBytes {
                local: s
                    .local_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map(|a| a.ip()),
                remote: s
                    .peer_addr()
                    .ok()
                    .and_then(|a| a.as_socket())
                    .map(|a| a.ip()),
                sent: tcp.bytes_acked.unwrap_or(0),
                received: tcp.bytes_received.unwrap_or(0),
            }]
        }
        _ => Vec::new(),
    }
}

/// Add an ended connection's subflows to the totals.
pub fn record(totals: &PathTotals, subflows: &[SubflowBytes]) {
    for sf in subflows {
        totals.add(sf.local, sf.remote, sf.sent, sf.received);
    }
}

/// The open MPTCP connections `mine` selects, as per-path counters.
pub fn live(mine: impl Fn(&diag::Connection) -> bool) -> Vec<PathBytes> {
    let Ok(conns) = diag::connections(false) else {
        return Vec::new();
    };
    conns
        .iter()
        .filter(|c| mine(c))
        .flat_map(|c| c.subflows.iter())
        .map(|sf| PathBytes {
            local: Some(sf.local.ip()),
            remote: Some(sf.remote.ip()),
            subflows: 1,
            bytes_sent: sf.tcp.as_ref().and_then(|t| t.bytes_acked).unwrap_or(0),
            bytes_received: sf.tcp.as_ref().and_then(|t| t.bytes_received).unwrap_or(0),
        })
        .collect()
}
