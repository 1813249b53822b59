//! One error type for every kernel interface, carrying what was attempted,
//! the errno and the kernel's own extended-ack message so callers can explain
//! *what*, *why* and *what to do*.

use std::fmt;
use std::io;

/// What Braid was doing when the kernel said no. Used to pick an explanation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    ResolveFamily,
    AddEndpoint,
    DelEndpoint,
    GetEndpoint,
    FlushEndpoints,
    SetLimits,
    GetLimits,
    SetFlags,
    Announce,
    Remove,
    SubflowCreate,
    SubflowDestroy,
    Subscribe,
    ReadEvents,
    SockDiag,
    Rtnetlink,
    Sysctl,
    Socket,
    Netns,
    Probe,
    Counters,
    NftInstall,
    NftRemove,
    NftList,
    ConntrackGet,
}

impl Op {
    pub fn describe(self) -> &'static str {
        match self {
            Op::ResolveFamily => "resolving the mptcp_pm generic netlink family",
            Op::AddEndpoint => "adding an MPTCP endpoint",
            Op::DelEndpoint => "deleting an MPTCP endpoint",
            Op::GetEndpoint => "reading MPTCP endpoints",
            Op::FlushEndpoints => "flushing MPTCP endpoints",
            Op::SetLimits => "setting MPTCP limits",
            Op::GetLimits => "reading MPTCP limits",
            Op::SetFlags => "changing MPTCP endpoint flags",
            Op::Announce => "announcing an address (userspace PM)",
            Op::Remove => "removing an announced address (userspace PM)",
            Op::SubflowCreate => "creating a subflow (userspace PM)",
            Op::SubflowDestroy => "destroying a subflow (userspace PM)",
            Op::Subscribe => "subscribing to MPTCP events",
            Op::ReadEvents => "reading MPTCP events",
            Op::SockDiag => "dumping sockets with sock_diag",
            Op::Rtnetlink => "reading links and addresses",
            Op::Sysctl => "accessing a net.mptcp sysctl",
            Op::Socket => "using an MPTCP socket",
            Op::Netns => "entering a network namespace",
            Op::Probe => "probing a path with an ICMP echo",
            Op::Counters => "reading the kernel's MPTCP counters (/proc/net/netstat)",
            Op::NftInstall => "installing an nf_tables table",
            Op::NftRemove => "removing an nf_tables table",
            Op::NftList => "reading nf_tables tables and rules",
            Op::ConntrackGet => "looking up a flow's original destination in conntrack",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel answered with an errno.
    #[error("{}", kernel_message(*.op, *.errno, .extack.as_deref()))]
    Kernel {
        op: Op,
        errno: i32,
        /// The kernel's extended ack message (NLMSGERR_ATTR_MSG), when sent.
        extack: Option<String>,
    },
    /// A local I/O failure (socket creation, file access...).
    #[error("{} failed: {source}{}", .op.describe(), io_hint(*.op, .source))]
    Io {
        op: Op,
        #[source]
        source: io::Error,
    },
    /// The kernel sent something Braid could not decode.
    #[error("{} failed: malformed netlink message: {detail}", .op.describe())]
    Decode { op: Op, detail: String },
    /// The generic netlink family is not registered: no MPTCP in this kernel.
    #[error("the kernel has no 'mptcp_pm' generic netlink family: MPTCP is not built into this kernel or the module is not loaded (try 'modprobe mptcp' or a kernel with CONFIG_MPTCP=y)")]
    NoMptcpFamily,
    /// Input that Braid refuses before asking the kernel.
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, Error>;

/// The kernel's extended ack when a per-connection SET_FLAGS finds no
/// active subflow with the addresses given.
const SUBFLOW_NOT_FOUND: &str = "subflow not found";

impl Error {
    pub fn io(op: Op, source: io::Error) -> Self {
        Error::Io { op, source }
    }
    pub fn decode(op: Op, detail: impl fmt::Display) -> Self {
        Error::Decode {
            op,
            detail: detail.to_string(),
        }
    }
    /// A per-connection priority change the kernel could not send: the
    /// subflow is gone, or its join is not complete yet (a race that the
    /// next attempt wins).
    pub fn is_subflow_not_found(&self) -> bool {
        matches!(self, Error::Kernel { op: Op::SetFlags, errno, extack: Some(m) }
            if *errno == libc::EINVAL && m == SUBFLOW_NOT_FOUND)
    }

    /// The errno behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

fn io_hint(op: Op, e: &io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EPERM) if op == Op::Netns => {
            " (entering a network namespace needs CAP_SYS_ADMIN: run as root)"
        }
        Some(libc::EPERM) if op == Op::Probe => {
            " (raw ICMP sockets need CAP_NET_RAW: run the daemon as root or grant it)"
        }
        Some(libc::EPERM) | Some(libc::EACCES) => {
            " (this needs CAP_NET_ADMIN: run as root or with that capability)"
        }
        _ => "",
    }
}

/// The C library's text for an errno, without Rust's "(os error N)" suffix.
fn errno_name(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.find(" (os error") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// Explain an errno in words for the operation that got it, with what to do.
fn kernel_message(op: Op, errno: i32, extack: Option<&str>) -> String {
    let why = match (op, errno) {
        (_, libc::EPERM) | (_, libc::EACCES) => {
            "permission denied: this needs CAP_NET_ADMIN; run as root (sudo) or grant the capability".to_string()
        }
        (Op::AddEndpoint, libc::EEXIST | libc::EBUSY) => {
            "an endpoint with this address or id already exists; list them with 'braid endpoint list' and delete or change it first".into()
        }
        (Op::AddEndpoint, libc::EADDRNOTAVAIL) => {
            "a 'signal' endpoint with a port needs a listening socket, and this address is not configured on any interface; add the address first".into()
        }
        (Op::AddEndpoint, libc::ERANGE) => {
            "the kernel's endpoint table is full (at most 8 endpoints are used per connection and the ids run from 1 to 255); delete unused endpoints with 'braid endpoint del'".into()
        }
        // The userspace path manager's per-connection change, which the
        // kernel can only send as an MP_PRIO on an active subflow.
        (Op::SetFlags, libc::EINVAL) if extack == Some(SUBFLOW_NOT_FOUND) => {
            "no subflow of that connection with these addresses can take the change now: it is gone, or its join is not complete yet (the kernel sends no MP_PRIO before the peer has acknowledged the join, one round trip after its SYN-ACK)".into()
        }
        (Op::AddEndpoint | Op::SetFlags, libc::EINVAL) => {
            "the kernel rejected this endpoint: the flag combination or address is not allowed (e.g. 'fullmesh' together with 'signal', a port without 'signal', or an id of 0)".into()
        }
        (Op::DelEndpoint | Op::GetEndpoint | Op::SetFlags, libc::EINVAL | libc::ENOENT) => {
            "no such endpoint; list them with 'braid endpoint list'".into()
        }
        (Op::SetLimits, libc::EINVAL) => {
            "limits must be between 0 and 8 (the kernel maximum)".into()
        }
        (Op::Announce | Op::Remove | Op::SubflowCreate | Op::SubflowDestroy, libc::EINVAL) => {
            "the userspace path manager refused the request: check that net.mptcp.path_manager is 'userspace', that the token names a live connection and that the addresses and ids match it".into()
        }
        (Op::SubflowDestroy, libc::ESRCH) => "no subflow matches those addresses and ports on that connection".into(),
        (Op::NftInstall, libc::EOPNOTSUPP) => {
            "the kernel refused a chain or rule: the chain type does not allow this hook or priority (nat chains need a priority above -200, e.g. -100) or an expression is not allowed in this chain; nothing was changed".into()
        }
        (Op::NftInstall, libc::ENOENT) => {
            "an expression, chain type or object the rules need is missing from this kernel (modules nft_chain_nat, nft_redir, nft_reject_inet, nft_socket); load them (modprobe) or use a kernel with them; nothing was changed".into()
        }
        (Op::NftInstall | Op::NftRemove | Op::NftList, libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => {
            "this kernel has no nf_tables for the inet family (CONFIG_NF_TABLES_INET); load the nf_tables module or use a kernel with it".into()
        }
        (Op::ConntrackGet, libc::ENOENT) => {
            "conntrack has no such flow: it was not seen, or its entry expired".into()
        }
        (Op::ConntrackGet, libc::EINVAL) => {
            "the kernel refused the lookup: either it has no conntrack netlink interface (CONFIG_NF_CT_NETLINK; load it with 'modprobe nf_conntrack_netlink') or the flow's addresses, ports or protocol are not ones conntrack tracks".into()
        }
        (Op::ConntrackGet, libc::EOPNOTSUPP | libc::EPROTONOSUPPORT | libc::EAFNOSUPPORT) => {
            "this kernel does not track connections of this address family or protocol (CONFIG_NF_CONNTRACK and its IPv4/IPv6 support); load nf_conntrack or use a kernel with it".into()
        }
        (_, libc::EOPNOTSUPP) => {
            "this kernel does not support the request (it may be too old for this command or flag)".into()
        }
        (_, libc::ENOBUFS) => {
            "the netlink receive buffer overflowed: events were lost; a full resynchronisation is needed".into()
        }
        (_, e) => errno_name(e),
    };
    let mut s = format!("{} failed: {}", op.describe(), why);
    if let Some(msg) = extack.filter(|m| !m.is_empty()) {
        s.push_str(&format!(" (kernel says: {msg})"));
    }
    s.push_str(&format!(" [errno {}: {}]", errno, errno_name(errno)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_priority_change_on_a_joining_subflow_is_not_called_a_bad_flag() {
        let joining = Error::Kernel {
            op: Op::SetFlags,
            errno: libc::EINVAL,
            extack: Some("subflow not found".into()),
        };
        assert!(joining.is_subflow_not_found());
        let joining = joining.to_string();
        assert!(joining.contains("join is not complete"), "{joining}");
        assert!(!joining.contains("flag combination"), "{joining}");
        let bad_flags = Error::Kernel {
            op: Op::SetFlags,
            errno: libc::EINVAL,
            extack: None,
        }
        .to_string();
        assert!(bad_flags.contains("flag combination"), "{bad_flags}");
    }
}
