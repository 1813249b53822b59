//! `braid check HOST[:PORT]`: does a server speak MPTCP, from this host?
//!
//! [`probe`] gathers [`Observations`] with real mechanisms: an
//! IPPROTO_MPTCP connect, `MPTCP_INFO` right after it (was MP_CAPABLE
//! answered: `MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED`, or did the socket fall
//! back at once), one byte sent so the server's acknowledgement completes
//! the MPTCP handshake (a client is "fully established", and only then
//! opens more subflows, when the server's first MPTCP-aware packet
//! arrives), and the `mptcp_pm` events of this connection's token: the C
//! flag (`deny_join_id0` in the flags of `created`/`established`),
//! `announced` addresses, and `sub_established`/`sub_closed` for the
//! second subflow that the in-kernel path manager opens from this host's
//! `subflow` endpoints. It waits at most `wait` after the connect and
//! stops as soon as every question is answered.
//!
//! [`verdict`] turns observations into a verdict with its reasons: a pure
//! function, tested without a kernel.

use std::io;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::events::{Event, EventKind, EventStream, StreamItem, EVENT_FLAG_DENY_JOIN_ID0};
use crate::info::{MPTCP_INFO_FLAG_FALLBACK, MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED};
use crate::pm::{EndpointFlags, PathManager};
use crate::socket::{is_mptcp_active, is_mptcp_unavailable, mptcp_info, subflow_info, tcp_info};

/// The port checked when none is given (HTTPS).
pub const DEFAULT_PORT: u16 = 443;

/// A host (name or address) and port to check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

/// Parse `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address.
pub fn parse_target(s: &str) -> Result<Target, String> {
    let s = s.trim();
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(0) | Err(_) => Err(format!(
                "'{p}' is not a port: give a number from 1 to 65535 after the colon (HOST:PORT), or no port for {DEFAULT_PORT}"
            )),
            Ok(n) => Ok(n),
        }
    };
    let (host, p) = if let Some(rest) = s.strip_prefix('[') {
        let (h, after) = rest.split_once(']').ok_or_else(|| {
            format!("'{s}': an IPv6 address in brackets needs its closing ']' ([2001:db8::1]:443)")
        })?;
        match after {
            "" => (h, DEFAULT_PORT),
            a => match a.strip_prefix(':') {
                Some(p) => (h, port(p)?),
                None => return Err(format!("'{s}': after ']' only ':PORT' may follow")),
            },
        }
    } else if s.matches(':').count() > 1 {
        // A bare IPv6 address: its colons are not a port separator.
        if s.parse::<IpAddr>().is_err() {
            return Err(format!(
                "'{s}' is neither HOST:PORT nor an IPv6 address; write an IPv6 address with a port as [ADDR]:PORT"
            ));
        }
        (s, DEFAULT_PORT)
    } else if let Some((h, p)) = s.split_once(':') {
        (h, port(p)?)
    } else {
        (s, DEFAULT_PORT)
    };
    if host.is_empty() {
        return Err(
            "no host given: braid check HOST[:PORT], e.g. example.org or 192.0.2.1:443".into(),
        );
    }
    Ok(Target {
        host: host.to_string(),
        port: p,
    })
}

/// How the probe runs.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time allowed for each address's TCP handshake.
    pub connect_timeout: Duration,
    /// Longest wait for the server's answers and the kernel's events after
    /// the connect.
    pub wait: Duration,
    /// Send one byte after the connect (needed for the handshake to
    /// complete and a second subflow to be tried when the server speaks
    /// only when spoken to).
    pub send_byte: bool,
    /// Bytes to send after the connect instead of the one byte (e.g. a
    /// Braid relay's first message), sent whether MPTCP is in use or not.
    pub first_flight: Option<Vec<u8>>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            connect_timeout: Duration::from_secs(3),
            wait: Duration::from_secs(1),
            send_byte: true,
            first_flight: None,
        }
    }
}

/// An address that could not be reached, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    pub address: SocketAddr,
    pub error: String,
}

/// What could not be checked at all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum CheckError {
    /// The name did not resolve.
    Resolve { host: String, detail: String },
    /// This host's kernel refuses MPTCP sockets.
    NoLocalMptcp { detail: String },
    /// No address answered.
    Connect { failures: Vec<Failure> },
}

impl std::fmt::Display for CheckError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckError::Resolve { host, detail } => {
                write!(f, "cannot resolve '{host}': {detail}")
            }
            CheckError::NoLocalMptcp { detail } => write!(
                f,
                "this host cannot open MPTCP sockets ({detail}): enable it with 'sysctl -w net.mptcp.enabled=1' or use a kernel with CONFIG_MPTCP"
            ),
            CheckError::Connect { failures } => {
                let parts: Vec<String> = failures
                    .iter()
                    .map(|x| format!("{}: {}", x.address, x.error))
                    .collect();
                write!(f, "could not connect: {}", parts.join("; "))
            }
        }
    }
}

/// What the in-kernel path manager of this host would do for a second
/// subflow, read before the connect.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalPaths {
    /// `net.mptcp.path_manager` ("kernel" or "userspace"), when readable.
    pub path_manager: Option<String>,
    /// Addresses of `subflow` endpoints (the kernel joins from these).
    pub subflow_endpoints: Vec<IpAddr>,
    pub subflows_limit: Option<u32>,
    pub add_addr_accepted_limit: Option<u32>,
    /// This host's other usable addresses of the server's family (not the
    /// first subflow's, not loopback or link-local): the paths a second
    /// subflow could take.
    pub other_addresses: Vec<IpAddr>,
    /// Why the above could not be read, if it could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unreadable: Option<String>,
}

/// An address the server announced (ADD_ADDR).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Announced {
    pub address: IpAddr,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    pub id: Option<u8>,
}

/// A second subflow the kernel opened or tried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JoinAttempt {
    pub local: Option<IpAddr>,
    pub remote: Option<SocketAddr>,
    pub established: bool,
    /// errno text or MPTCP reset reason when it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything the probe saw; the input of [`verdict`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Observations {
    pub target: Target,
    /// The address that answered (the first that did, in resolver order).
    pub address: SocketAddr,
    pub local: Option<SocketAddr>,
    /// Addresses tried before it, and why they failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failed: Vec<Failure>,
    pub connect_ms: f64,
    pub total_ms: f64,
    /// Smoothed RTT of the first subflow, when known.
    pub rtt_ms: Option<f64>,
    /// The server answered MP_CAPABLE (the remote key was received).
    pub mp_capable: bool,
    /// The socket was still MPTCP at the end (not fallen back to TCP).
    pub mptcp_at_end: bool,
    /// The byte, or [`Options::first_flight`], was sent.
    pub byte_sent: bool,
    /// Why events could not be read, if they could not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events_unavailable: Option<String>,
    /// The kernel dropped events (receive buffer full) during the check.
    pub events_overflowed: bool,
    /// MPTCP token of the connection (local), when it is MPTCP.
    pub token: Option<u32>,
    /// The `established` event (handshake complete) was seen.
    pub fully_established: bool,
    /// `created`/`established` carried the flags attribute with
    /// deny_join_id0 set: `Some(true)`; seen without it: `Some(false)`;
    /// no such event: `None`.
    pub deny_join_id0: Option<bool>,
    /// The running kernel reports the C flag in events (Linux 6.17+).
    pub kernel_reports_c_flag: bool,
    pub kernel: String,
    pub announced: Vec<Announced>,
    pub joins: Vec<JoinAttempt>,
    pub local_paths: LocalPaths,
}

/// Whether MPTCP works with the server, in one word.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mptcp {
    Yes,
    /// The server answered without MP_CAPABLE.
    NoPlainTcp,
    /// MP_CAPABLE answered, then the connection fell back to TCP.
    NoFellBack,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Tri {
    Yes,
    No,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub mptcp: Mptcp,
    /// Other addresses announced, `None` when unknown.
    pub announced: Option<usize>,
    /// A second subflow joined: Yes, No (tried and failed), Unknown (not tried).
    pub join: Tri,
    pub c_flag: Tri,
    /// The one-line verdict, after "HOST:PORT (ADDR): ".
    pub summary: String,
    /// Why, one sentence each.
    pub reasons: Vec<String>,
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The verdict from what was observed. Pure: no I/O, no clock.
pub fn verdict(o: &Observations) -> Verdict {
    let mut reasons = Vec::new();
    let mptcp = match (o.mp_capable, o.mptcp_at_end) {
        (true, true) => Mptcp::Yes,
        (true, false) => Mptcp::NoFellBack,
        (false, _) => Mptcp::NoPlainTcp,
    };
    match mptcp {
        Mptcp::NoPlainTcp => {
            reasons.push("the server answered without MP_CAPABLE: it does not speak MPTCP (or something on the path removed the option from the SYN or SYN-ACK), so the connection is plain TCP".into());
            return Verdict {
                mptcp,
                announced: None,
                join: Tri::Unknown,
                c_flag: Tri::Unknown,
                summary: "MPTCP no: the server answered without MP_CAPABLE (plain TCP)".into(),
                reasons,
            };
        }
        Mptcp::NoFellBack => {
            reasons.push("the server answered MP_CAPABLE, then the connection fell back to TCP: something on the path removes MPTCP options after the handshake (a middlebox), or the server dropped MPTCP".into());
            return Verdict {
                mptcp,
                announced: None,
                join: Tri::Unknown,
                c_flag: Tri::Unknown,
                summary: "MPTCP no: MP_CAPABLE answered, then fallback to TCP (MPTCP options lost on the path)".into(),
                reasons,
            };
        }
        Mptcp::Yes => {
            reasons.push("the server answered MP_CAPABLE and the connection stayed MPTCP".into())
        }
    }
    if let Some(why) = &o.events_unavailable {
        return verdict_without_events(o, mptcp, reasons, why);
    }
    if o.events_overflowed {
        reasons.push("the kernel dropped MPTCP events during the check (busy host): what follows may miss some".into());
    }
    let (c_flag, c_text) = c_flag_of(o, &mut reasons);
    let n = o.announced.len();
    let ann_text = announced_text(o, &mut reasons);
    let (join, join_text) = join_of(o, c_flag, n, &mut reasons);
    Verdict {
        mptcp,
        announced: Some(n),
        join,
        c_flag,
        summary: format!("MPTCP yes — {ann_text}, {join_text}, {c_text}"),
        reasons,
    }
}

/// MPTCP held, but its events could not be read: only MPTCP_INFO is left.
fn verdict_without_events(
    o: &Observations,
    mptcp: Mptcp,
    mut reasons: Vec<String>,
    why: &str,
) -> Verdict {
    // MPTCP_INFO still lists the subflows: a join can be seen, the
    // rest cannot.
    reasons.push(format!(
        "MPTCP events could not be read ({why}): announced addresses and the C flag are unknown"
    ));
    let join = if o.joins.iter().any(|j| j.established) {
        reasons.push("a second subflow joined (seen with MPTCP_FULL_INFO)".into());
        Tri::Yes
    } else {
        let hint = if o.local_paths.subflow_endpoints.is_empty() {
            format!("; {}", no_endpoint_reason(&o.local_paths))
        } else {
            "; without events the reason is unknown".to_string()
        };
        reasons.push(format!(
            "no second subflow was seen with MPTCP_FULL_INFO within the wait{hint}"
        ));
        Tri::Unknown
    };
    let join_text = if join == Tri::Yes {
        "join OK"
    } else {
        "join unknown"
    };
    Verdict {
        mptcp,
        announced: None,
        join,
        c_flag: Tri::Unknown,
        summary: format!(
            "MPTCP yes — announcements unknown, {join_text}, C flag unknown ({})",
            if why.contains("ermission") || why.contains("EPERM") {
                "no access to MPTCP events: run as root".to_string()
            } else {
                format!("MPTCP events could not be read: {why}")
            }
        ),
        reasons,
    }
}

/// The C flag, and how the summary says it.
fn c_flag_of(o: &Observations, reasons: &mut Vec<String>) -> (Tri, String) {
    let c_flag = match o.deny_join_id0 {
        Some(true) => Tri::Yes,
        Some(false) if o.kernel_reports_c_flag => Tri::No,
        _ => Tri::Unknown,
    };
    let c_text = match c_flag {
        Tri::Yes => {
            reasons.push("the server set the C flag: it accepts new subflows only to addresses it announces, not to the one of the first subflow (typical behind a load balancer)".into());
            "C flag on".to_string()
        }
        Tri::No => "C flag off".to_string(),
        Tri::Unknown => {
            if o.kernel_reports_c_flag {
                reasons.push("the C flag is unknown: no created/established event of this connection was seen".into());
            } else {
                reasons.push(format!("the C flag is unknown: this kernel ({}) does not report it in MPTCP events (Linux 6.17 and later do)", o.kernel));
            }
            "C flag unknown".to_string()
        }
    };
    (c_flag, c_text)
}

/// The server's other addresses, and how the summary says them.
fn announced_text(o: &Observations, reasons: &mut Vec<String>) -> String {
    let n = o.announced.len();
    match n {
        0 => "no other address announced".to_string(),
        _ => {
            let list: Vec<String> = o
                .announced
                .iter()
                .map(|a| match a.port {
                    Some(p) => SocketAddr::new(a.address, p).to_string(),
                    None => a.address.to_string(),
                })
                .collect();
            reasons.push(format!("the server announced {}", list.join(", ")));
            format!(
                "{} announced",
                plural(n, "other address", "other addresses")
            )
        }
    }
}

/// Whether a second subflow joined, and how the summary says it.
fn join_of(o: &Observations, c_flag: Tri, n: usize, reasons: &mut Vec<String>) -> (Tri, String) {
    let ok = o.joins.iter().find(|j| j.established);
    if let Some(j) = ok {
        let path = match (j.local, j.remote) {
            (Some(l), Some(r)) => format!(" ({l} -> {r})"),
            _ => String::new(),
        };
        reasons.push(format!("a second subflow joined{path}"));
        (Tri::Yes, "join OK".to_string())
    } else if let Some(j) = o.joins.first() {
        let why = j.error.clone().unwrap_or_else(|| "closed".into());
        reasons.push(format!(
            "the second subflow{} was refused or failed: {why}",
            j.local.map(|l| format!(" from {l}")).unwrap_or_default()
        ));
        (Tri::No, "join failed".to_string())
    } else {
        let why = not_tried_reason(o, c_flag, n);
        reasons.push(format!("join not tried: {why}"));
        (Tri::Unknown, "join not tried".to_string())
    }
}

/// Why the kernel did not try a second subflow, as far as this host can tell.
fn not_tried_reason(o: &Observations, c_flag: Tri, n: usize) -> String {
    let lp = &o.local_paths;
    if !o.fully_established && !o.byte_sent {
        "the handshake was not completed: no byte was sent (--no-data) and the server sent nothing, and the kernel opens further subflows only after that".to_string()
    } else if !o.fully_established {
        "the handshake did not complete within the wait (the server did not acknowledge with MPTCP)"
            .to_string()
    } else if lp.path_manager.as_deref() == Some("userspace") {
        "this namespace uses the userspace path manager, which opens subflows only when a program asks it".to_string()
    } else if lp.unreadable.is_some() && lp.subflow_endpoints.is_empty() {
        format!(
            "this host's path manager could not be read ({})",
            lp.unreadable.clone().unwrap_or_default()
        )
    } else if lp.subflows_limit == Some(0) {
        "this host's limit 'subflows' is 0 (braid limits set subflows 2)".to_string()
    } else if c_flag == Tri::Yes && n == 0 {
        "the C flag forbids joining the first address and the server announced no other".to_string()
    } else if lp.subflow_endpoints.is_empty() && (n == 0 || lp.add_addr_accepted_limit == Some(0)) {
        no_endpoint_reason(lp)
    } else {
        "the kernel did not open a second subflow within the wait".to_string()
    }
}

/// Why no second subflow is opened on a host without `subflow` endpoints.
fn no_endpoint_reason(lp: &LocalPaths) -> String {
    if lp.other_addresses.is_empty() {
        "this host has one path to the server (no other usable address), so there is no second subflow to try".to_string()
    } else {
        let list: Vec<String> = lp.other_addresses.iter().map(|a| a.to_string()).collect();
        format!(
            "this host has other addresses ({}) but no 'subflow' endpoint, so its kernel opens no second subflow (add one per extra path: braid endpoint add ADDR dev IF subflow, or run braidd)",
            list.join(", ")
        )
    }
}

/// The verdict and what it came from.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub verdict: Verdict,
    pub observations: Observations,
}

fn errno_text(e: &io::Error) -> String {
    let s = e.to_string();
    s.split(" (os error").next().unwrap_or(&s).to_string()
}

fn connect_error(e: &io::Error, timeout: Duration) -> String {
    match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => {
            "refused (nothing listens on that port, or a firewall rejects it)".into()
        }
        Some(libc::ENETUNREACH) | Some(libc::EHOSTUNREACH) => {
            format!("unreachable ({}: no route to it from here)", errno_text(e))
        }
        _ if e.kind() == io::ErrorKind::TimedOut || e.kind() == io::ErrorKind::WouldBlock => {
            format!(
                "no answer within {} ms (filtered or down)",
                timeout.as_millis()
            )
        }
        _ => errno_text(e),
    }
}

fn resolve(target: &Target) -> Result<Vec<SocketAddr>, CheckError> {
    if let Ok(ip) = target.host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, target.port)]);
    }
    match (target.host.as_str(), target.port).to_socket_addrs() {
        Ok(a) => {
            let v: Vec<SocketAddr> = a.collect();
            if v.is_empty() {
                Err(CheckError::Resolve {
                    host: target.host.clone(),
                    detail: "the name has no address".into(),
                })
            } else {
                Ok(v)
            }
        }
        Err(e) => Err(CheckError::Resolve {
            host: target.host.clone(),
            detail: e.to_string(),
        }),
    }
}

fn local_paths() -> LocalPaths {
    let path_manager = crate::sysctl::read("net.mptcp.path_manager").ok();
    let mut lp = LocalPaths {
        path_manager,
        subflow_endpoints: Vec::new(),
        subflows_limit: None,
        add_addr_accepted_limit: None,
        other_addresses: Vec::new(),
        unreadable: None,
    };
    let read = || -> crate::Result<_> {
        let mut pm = PathManager::open()?;
        Ok((pm.endpoints()?, pm.limits()?))
    };
    match read() {
        Ok((eps, limits)) => {
            lp.subflow_endpoints = eps
                .iter()
                .filter(|e| e.flags.contains(EndpointFlags::SUBFLOW))
                .map(|e| e.addr)
                .collect();
            lp.subflows_limit = Some(limits.subflows);
            lp.add_addr_accepted_limit = Some(limits.add_addr_accepted);
        }
        Err(e) => lp.unreadable = Some(e.to_string()),
    }
    lp
}

/// This host's addresses that a second subflow to `server` could use.
fn other_addresses(server: IpAddr, first: Option<IpAddr>) -> Vec<IpAddr> {
    let Ok(addrs) = crate::rtnl::addresses() else {
        return Vec::new();
    };
    addrs
        .iter()
        .filter(|a| !a.is_tentative() && !a.is_deprecated())
        .map(|a| a.addr)
        .filter(|a| a.is_ipv4() == server.is_ipv4() && Some(*a) != first)
        .filter(|a| match a {
            IpAddr::V4(v4) => !v4.is_loopback() && !v4.is_link_local() && !v4.is_unspecified(),
            IpAddr::V6(v6) => {
                !v6.is_loopback() && !v6.is_unspecified() && (v6.segments()[0] & 0xffc0) != 0xfe80
            }
        })
        .collect()
}

/// Parse the release's "major.minor" and tell whether it is at least 6.17.
fn reports_c_flag(release: &str) -> bool {
    let mut it = release.split(|c: char| !c.is_ascii_digit());
    let major: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    let minor: u32 = it.next().and_then(|s| s.parse().ok()).unwrap_or(0);
    (major, minor) >= (6, 17)
}

/// Fold one event of our connection into the observations.
fn observe(o: &mut Observations, ev: &Event) {
    match ev.kind {
        EventKind::Created | EventKind::Established => {
            if ev.kind == EventKind::Established {
                o.fully_established = true;
            }
            let deny = ev.flags.is_some_and(|f| f & EVENT_FLAG_DENY_JOIN_ID0 != 0);
            o.deny_join_id0 = Some(o.deny_join_id0.unwrap_or(false) || deny);
        }
        EventKind::Announced => {
            if let Some(a) = ev.daddr {
                o.announced.push(Announced {
                    address: a,
                    port: ev.dport,
                    id: ev.rem_id,
                });
            }
        }
        EventKind::SubEstablished => o.joins.push(JoinAttempt {
            local: ev.saddr,
            remote: ev.daddr.map(|a| SocketAddr::new(a, ev.dport.unwrap_or(0))),
            established: true,
            error: None,
        }),
        EventKind::SubClosed => {
            // A subflow that closes before it was established is a failed join.
            let same = |j: &JoinAttempt| j.established && j.local == ev.saddr;
            if !o.joins.iter().any(same) {
                let mut error = ev
                    .error
                    .filter(|e| *e != 0)
                    .map(|e| errno_text(&io::Error::from_raw_os_error(e as i32)));
                if let Some(r) = ev.reset_reason {
                    error = Some(format!(
                        "reset by the server ({})",
                        crate::events::reset_reason_name(r)
                    ));
                }
                o.joins.push(JoinAttempt {
                    local: ev.saddr,
                    remote: ev.daddr.map(|a| SocketAddr::new(a, ev.dport.unwrap_or(0))),
                    established: false,
                    error,
                });
            }
        }
        _ => {}
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Check `target` from the current network namespace.
pub fn probe(target: &Target, opts: &Options) -> Result<Report, CheckError> {
    probe_keep(target, opts).map(|(report, _, _)| report)
}

/// [`probe`], the connection it made (blocking) and when it was
/// connected, to read what the server answered to [`Options::first_flight`].
pub fn probe_keep(
    target: &Target,
    opts: &Options,
) -> Result<(Report, std::net::TcpStream, Instant), CheckError> {
    let started = Instant::now();
    let addrs = resolve(target)?;
    let local_paths = local_paths();
    let kernel = crate::kernel_release();
    // Subscribe before connecting: the first events come with the SYN-ACK.
    let (mut events, events_unavailable) = match EventStream::subscribe() {
        Ok(s) => (Some(s), None),
        Err(e) => (None, Some(e.to_string())),
    };
    let (address, sock, connect_time, failed) = connect_first(&addrs, opts)?;
    let connected_at = Instant::now();
    let local = sock.local_addr().ok().and_then(|a| a.as_socket());
    let mut local_paths = local_paths;
    local_paths.other_addresses = other_addresses(address.ip(), local.map(|l| l.ip()));
    let info = mptcp_info(&sock).ok().flatten();
    let mp_capable = info.as_ref().is_some_and(|i| {
        i.flags & MPTCP_INFO_FLAG_FALLBACK == 0
            && i.flags & MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED != 0
    });
    let token = info.as_ref().filter(|_| mp_capable).map(|i| i.token);
    let rtt = tcp_info(&sock)
        .ok()
        .flatten()
        .map(|t| Duration::from_micros(t.rtt_us as u64));
    let mut o = Observations {
        target: target.clone(),
        address,
        local,
        failed,
        connect_ms: ms(connect_time),
        total_ms: 0.0,
        rtt_ms: rtt.map(ms),
        mp_capable,
        mptcp_at_end: mp_capable,
        byte_sent: false,
        events_unavailable,
        events_overflowed: false,
        token,
        fully_established: false,
        deny_join_id0: None,
        kernel_reports_c_flag: reports_c_flag(&kernel),
        kernel,
        announced: Vec::new(),
        joins: Vec::new(),
        local_paths,
    };
    if let Some(flight) = &opts.first_flight {
        o.byte_sent = socket2::SockRef::from(&sock.as_fd()).send(flight).is_ok();
    }
    if mp_capable {
        if opts.send_byte && opts.first_flight.is_none() {
            // 0x16 opens a TLS handshake record: a TLS server waits for the
            // rest, most others wait for a full request line.
            o.byte_sent = socket2::SockRef::from(&sock.as_fd()).send(&[0x16]).is_ok();
        }
        watch(&mut o, &sock, &mut events, token, connected_at, rtt, opts);
        if o.mptcp_at_end {
            o.mptcp_at_end = is_mptcp_active(&sock).unwrap_or(false);
        }
    }
    o.total_ms = ms(started.elapsed());
    Ok((
        Report {
            verdict: verdict(&o),
            observations: o,
        },
        sock.into(),
        connected_at,
    ))
}

/// A connection to the first of `addrs` that takes one, with how long it
/// took and why the ones before failed.
fn connect_first(
    addrs: &[SocketAddr],
    opts: &Options,
) -> Result<(SocketAddr, socket2::Socket, Duration, Vec<Failure>), CheckError> {
    let mut failed = Vec::new();
    let mut connected = None;
    for addr in addrs {
        let domain = socket2::Domain::for_address(*addr);
        let sock = match socket2::Socket::new(
            domain,
            socket2::Type::STREAM,
            Some(socket2::Protocol::MPTCP),
        ) {
            Ok(s) => s,
            Err(e) if is_mptcp_unavailable(&e) => {
                return Err(CheckError::NoLocalMptcp {
                    detail: errno_text(&e),
                })
            }
            Err(e) => {
                failed.push(Failure {
                    address: *addr,
                    error: errno_text(&e),
                });
                continue;
            }
        };
        let t0 = Instant::now();
        match sock.connect_timeout(&(*addr).into(), opts.connect_timeout) {
            Ok(()) => {
                connected = Some((*addr, sock, t0.elapsed()));
                break;
            }
            Err(e) => failed.push(Failure {
                address: *addr,
                error: connect_error(&e, opts.connect_timeout),
            }),
        }
    }
    let Some((address, sock, connect_time)) = connected else {
        return Err(CheckError::Connect { failures: failed });
    };
    Ok((address, sock, connect_time, failed))
}

/// Waits, up to `opts.wait` after the connection, for what the server
/// announces and for a second subflow, or until MPTCP falls back.
fn watch(
    o: &mut Observations,
    sock: &socket2::Socket,
    events: &mut Option<EventStream>,
    token: Option<u32>,
    connected_at: Instant,
    rtt: Option<Duration>,
    opts: &Options,
) {
    let deadline = connected_at + opts.wait;
    // The server announces its addresses as soon as its side of the
    // handshake completes (on the ACK that also carries our byte), so
    // ADD_ADDR arrives with, or just after, the handshake's last ACK:
    // one more round trip after `established` covers it.
    let settle = rtt.unwrap_or(Duration::ZERO).max(Duration::from_millis(20));
    let mut established_at: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        if !is_mptcp_active(sock).unwrap_or(false) {
            o.mptcp_at_end = false;
            break;
        }
        let Some(stream) = events.as_mut() else {
            // Without events (no CAP_NET_ADMIN), MPTCP_FULL_INFO still
            // lists the subflows: a join shows there.
            joins_from_full_info(o, sock);
            let settled = now >= connected_at + settle.max(Duration::from_millis(100));
            if !o.joins.is_empty() || (settled && !join_expected(o)) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            continue;
        };
        if let Some(at) = established_at {
            let join_resolved = !o.joins.is_empty() || !join_expected(o);
            if join_resolved && now >= at + settle {
                break;
            }
        }
        let slice = deadline
            .saturating_duration_since(now)
            .min(Duration::from_millis(10));
        match stream.next_timeout(slice) {
            Ok(Some(StreamItem::Event(ev))) => {
                if ev.token.is_some() && ev.token == token {
                    observe(o, &ev);
                    if o.fully_established && established_at.is_none() {
                        established_at = Some(Instant::now());
                    }
                }
            }
            Ok(Some(StreamItem::Overflow)) => o.events_overflowed = true,
            Ok(None) => {}
            Err(e) => {
                o.events_unavailable = Some(e.to_string());
                *events = None;
            }
        }
    }
}

/// The joins MPTCP_FULL_INFO lists, if none is known yet.
fn joins_from_full_info(o: &mut Observations, sock: &socket2::Socket) {
    if let Ok((_, subflows)) = subflow_info(sock) {
        if o.joins.is_empty() {
            o.joins.extend(
                subflows
                    .iter()
                    .filter(|s| s.local.is_some() && s.local != o.local)
                    .map(|s| JoinAttempt {
                        local: s.local.map(|a| a.ip()),
                        remote: s.remote,
                        established: true,
                        error: None,
                    }),
            );
        }
    }
}

/// Whether the kernel will try a second subflow for this connection.
fn join_expected(o: &Observations) -> bool {
    let lp = &o.local_paths;
    if lp.path_manager.as_deref() == Some("userspace") || lp.subflows_limit == Some(0) {
        return false;
    }
    let to_first = !lp.subflow_endpoints.is_empty() && o.deny_join_id0 != Some(true);
    let to_announced = !o.announced.is_empty()
        && (lp.add_addr_accepted_limit.unwrap_or(0) > 0 || !lp.subflow_endpoints.is_empty());
    to_first || to_announced
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs() -> Observations {
        Observations {
            target: Target {
                host: "example.org".into(),
                port: 443,
            },
            address: "192.0.2.1:443".parse().unwrap(),
            local: None,
            failed: vec![],
            connect_ms: 10.0,
            total_ms: 30.0,
            rtt_ms: Some(10.0),
            mp_capable: true,
            mptcp_at_end: true,
            byte_sent: true,
            events_unavailable: None,
            events_overflowed: false,
            token: Some(1),
            fully_established: true,
            deny_join_id0: Some(false),
            kernel_reports_c_flag: true,
            kernel: "6.18.0".into(),
            announced: vec![],
            joins: vec![],
            local_paths: LocalPaths {
                path_manager: Some("kernel".into()),
                subflow_endpoints: vec!["10.0.2.1".parse().unwrap()],
                subflows_limit: Some(2),
                add_addr_accepted_limit: Some(0),
                other_addresses: vec!["10.0.2.1".parse().unwrap()],
                unreadable: None,
            },
        }
    }

    #[test]
    fn targets() {
        let t = |s: &str| parse_target(s).map(|t| (t.host, t.port));
        assert_eq!(t("example.org"), Ok(("example.org".into(), 443)));
        assert_eq!(t("example.org:80"), Ok(("example.org".into(), 80)));
        assert_eq!(t("10.0.1.2:8443"), Ok(("10.0.1.2".into(), 8443)));
        assert_eq!(t("2001:db8::1"), Ok(("2001:db8::1".into(), 443)));
        assert_eq!(t("[2001:db8::1]:22"), Ok(("2001:db8::1".into(), 22)));
        assert_eq!(t("[2001:db8::1]"), Ok(("2001:db8::1".into(), 443)));
        for bad in [
            "host:0",
            "host:99999",
            "host:http",
            "",
            ":443",
            "[::1",
            "[::1]x",
            "a:b:c",
        ] {
            assert!(parse_target(bad).is_err(), "{bad} should be refused");
        }
        assert_eq!(
            parse_target("[2001:db8::1]:22").unwrap().to_string(),
            "[2001:db8::1]:22"
        );
    }

    #[test]
    fn mptcp_with_join() {
        let mut o = obs();
        o.joins.push(JoinAttempt {
            local: Some("10.0.2.1".parse().unwrap()),
            remote: Some("192.0.2.1:443".parse().unwrap()),
            established: true,
            error: None,
        });
        o.announced.push(Announced {
            address: "192.0.2.9".parse().unwrap(),
            port: None,
            id: Some(1),
        });
        let v = verdict(&o);
        assert_eq!(v.mptcp, Mptcp::Yes);
        assert_eq!(
            (v.join, v.c_flag, v.announced),
            (Tri::Yes, Tri::No, Some(1))
        );
        assert_eq!(
            v.summary,
            "MPTCP yes — 1 other address announced, join OK, C flag off"
        );
    }

    #[test]
    fn plain_tcp_and_fallback() {
        let mut o = obs();
        o.mp_capable = false;
        o.mptcp_at_end = false;
        let v = verdict(&o);
        assert_eq!(v.mptcp, Mptcp::NoPlainTcp);
        assert!(v
            .summary
            .starts_with("MPTCP no: the server answered without MP_CAPABLE"));
        o.mp_capable = true;
        let v = verdict(&o);
        assert_eq!(v.mptcp, Mptcp::NoFellBack);
        assert!(v.summary.contains("fallback"));
    }

    #[test]
    fn c_flag_without_announcement_explains_no_join() {
        let mut o = obs();
        o.deny_join_id0 = Some(true);
        let v = verdict(&o);
        assert_eq!((v.c_flag, v.join), (Tri::Yes, Tri::Unknown));
        assert!(
            v.summary.ends_with("join not tried, C flag on"),
            "{}",
            v.summary
        );
        assert!(v.reasons.iter().any(|r| r.contains("forbids joining")));
        assert!(!join_expected(&o));
    }

    #[test]
    fn c_flag_unknown_on_old_kernels() {
        let mut o = obs();
        o.kernel_reports_c_flag = false;
        o.kernel = "6.6.0".into();
        let v = verdict(&o);
        assert_eq!(v.c_flag, Tri::Unknown);
        assert!(v.reasons.iter().any(|r| r.contains("6.6.0")));
        assert!(
            reports_c_flag("6.18.0-1-amd64") && !reports_c_flag("6.6.30") && !reports_c_flag("x")
        );
    }

    #[test]
    fn no_events_degrades() {
        let mut o = obs();
        o.events_unavailable = Some("permission denied".into());
        let v = verdict(&o);
        assert_eq!(
            (v.mptcp, v.join, v.c_flag),
            (Mptcp::Yes, Tri::Unknown, Tri::Unknown)
        );
        assert!(v.summary.contains("unknown"));
        o.joins.push(JoinAttempt {
            local: None,
            remote: None,
            established: true,
            error: None,
        });
        let v = verdict(&o);
        assert_eq!(v.join, Tri::Yes);
        assert!(
            v.summary.contains("join OK, C flag unknown"),
            "{}",
            v.summary
        );
    }

    #[test]
    fn join_not_tried_reasons() {
        let mut o = obs();
        o.local_paths.subflow_endpoints.clear();
        let v = verdict(&o);
        assert!(v
            .reasons
            .iter()
            .any(|r| r.contains("other addresses (10.0.2.1) but no 'subflow' endpoint")));
        o.local_paths.other_addresses.clear();
        let v = verdict(&o);
        assert!(v.reasons.iter().any(|r| r.contains("one path")));
        o.fully_established = false;
        o.byte_sent = false;
        let v = verdict(&o);
        assert!(v.reasons.iter().any(|r| r.contains("--no-data")));
    }

    #[test]
    fn failed_join_is_no() {
        let mut o = obs();
        let ev = Event {
            saddr: Some("10.0.2.1".parse().unwrap()),
            error: Some(libc::ECONNRESET as u8),
            ..Event::empty(EventKind::SubClosed)
        };
        observe(&mut o, &ev);
        let v = verdict(&o);
        assert_eq!(v.join, Tri::No);
        assert!(v.summary.contains("join failed"));
    }

    #[test]
    fn events_fold() {
        let mut o = obs();
        o.deny_join_id0 = None;
        let created = Event {
            flags: Some(EVENT_FLAG_DENY_JOIN_ID0),
            ..Event::empty(EventKind::Created)
        };
        observe(&mut o, &created);
        observe(&mut o, &Event::empty(EventKind::Established));
        assert_eq!(o.deny_join_id0, Some(true));
        let ann = Event {
            daddr: Some("10.0.2.2".parse().unwrap()),
            rem_id: Some(1),
            ..Event::empty(EventKind::Announced)
        };
        observe(&mut o, &ann);
        assert_eq!(o.announced.len(), 1);
        assert!(join_expected(&o) || o.local_paths.add_addr_accepted_limit == Some(0));
    }
}
