//! Prometheus metrics: the `[metrics]` configuration, the per-path totals
//! the daemon accumulates from its health rounds, and the exposition text
//! (Prometheus text format 0.0.4) rendered from a [`Snapshot`] by a pure
//! function. Serving it (HTTP, textfile) is `metrics_server`'s job.
//!
//! Conventions (<https://prometheus.io/docs/practices/naming/>): base units
//! (seconds, bytes), counters end in `_total`, no per-connection labels (a
//! path is an interface and an address family; `role` is its handover
//! role), enumerations as one gauge per state.
//!
//! The kernel's MPTcpExt counters are exported one metric per counter,
//! `braid_kernel_mptcp_<name lowercased>_total`, rather than one metric
//! with a `counter` label: the values of different counters do not add
//! up to anything (a `sum()` over such a label would be meaningless, which
//! the naming guide says is a sign of a label that should be a name); each
//! name maps one to one to `nstat`'s `MPTcpExt<Name>`, which is what the
//! kernel's documentation and bug reports use; and counters a newer kernel
//! adds simply appear, as node_exporter does for `/proc/net/netstat`. The
//! one value there that is not a counter (`MPCurrEstab`, connections
//! established now) is a gauge without `_total`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use braid_policy::config::Role;
use braid_policy::policy::{PathState, PathView};
use serde::{Deserialize, Serialize};

/// `[metrics]` in the daemon's configuration. Off unless `listen` or
/// `textfile` is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `GET /metrics` over HTTP on this address and port, e.g.
    /// "127.0.0.1:9853".
    pub listen: Option<String>,
    /// Write the metrics to this file for node_exporter's textfile
    /// collector (atomically: a temporary file renamed over it).
    pub textfile: Option<PathBuf>,
    /// How often the textfile is written, in seconds.
    pub textfile_interval_s: u64,
}

pub const DEFAULT_TEXTFILE_INTERVAL_S: u64 = 15;

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: None,
            textfile: None,
            textfile_interval_s: DEFAULT_TEXTFILE_INTERVAL_S,
        }
    }
}

impl MetricsConfig {
    pub fn enabled(&self) -> bool {
        self.listen.is_some() || self.textfile.is_some()
    }

    /// The listening address, checked by `validate`.
    pub fn listen_addr(&self) -> Option<SocketAddr> {
        self.listen.as_deref().and_then(|l| l.trim().parse().ok())
    }

    /// Checks serde cannot express. Returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        if let Some(l) = &self.listen {
            let addr: SocketAddr = l.trim().parse().map_err(|_| {
                (
                    "metrics.listen".to_string(),
                    format!("'{l}' is not an IP address and port: write e.g. \"127.0.0.1:9853\" or \"[::1]:9853\" (host names are not resolved)"),
                )
            })?;
            if addr.port() == 0 {
                return Err((
                    "metrics.listen".into(),
                    "port 0 is not allowed: Prometheus must know the port to scrape (9853, say)"
                        .into(),
                ));
            }
        }
        if let Some(f) = &self.textfile {
            if !f.is_absolute() {
                return Err(("metrics.textfile".into(), "must be an absolute path".into()));
            }
            let name = f.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".prom") || name.len() <= ".prom".len() {
                return Err((
                    "metrics.textfile".into(),
                    "must be a file name ending in .prom (node_exporter's textfile collector reads only those)".into(),
                ));
            }
        }
        if !(1..=3600).contains(&self.textfile_interval_s) {
            return Err((
                "metrics.textfile_interval_s".into(),
                format!(
                    "must be between 1 and 3600 (is {})",
                    self.textfile_interval_s
                ),
            ));
        }
        Ok(())
    }
}

/// One MPTCP subflow's cumulative counters, as read from `tcp_info`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubflowCounters {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The connection's local token (tells a reused 4-tuple apart).
    pub token: u32,
    pub established: bool,
    /// Smoothed RTT, microseconds.
    pub rtt_us: u32,
    /// Bytes sent and acknowledged by the peer (retransmissions aside).
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub total_retrans: u32,
    /// Data segments that arrived behind a hole (tcpi_rcv_ooopack).
    pub rcv_ooopack: u32,
    /// Bytes written to the subflow and not yet sent (tcpi_notsent_bytes).
    pub unsent_bytes: u32,
}

impl SubflowCounters {
    pub fn of(sf: &braid_kernel::diag::Subflow) -> Option<SubflowCounters> {
        let t = sf.tcp.as_ref()?;
        Some(SubflowCounters {
            local: sf.local,
            remote: sf.remote,
            token: sf.token_local,
            established: sf.state == "established",
            rtt_us: t.rtt_us,
            bytes_acked: t.bytes_acked.unwrap_or(0),
            bytes_received: t.bytes_received.unwrap_or(0),
            total_retrans: t.total_retrans,
            rcv_ooopack: t.rcv_ooopack.unwrap_or(0),
            unsent_bytes: t.notsent_bytes.unwrap_or(0),
        })
    }
}

type SubflowKey = (SocketAddr, SocketAddr, u32);

#[derive(Debug, Clone, Copy, Default)]
struct SubflowLast {
    bytes_acked: u64,
    bytes_received: u64,
    total_retrans: u32,
    rcv_ooopack: u32,
}

/// What the daemon keeps about one path (interface, family).
#[derive(Debug, Clone)]
struct PathTotals {
    interface: String,
    role: Role,
    state: PathState,
    /// It has been in use (usable, an endpoint, subflows) since the
    /// daemon started: from then on it is exported, unused or not, until
    /// its interface goes.
    seen: bool,
    transmit_bytes: u64,
    receive_bytes: u64,
    retransmits: u64,
    received_out_of_order: u64,
    /// Established subflows in the last health round, and the sum of
    /// their smoothed RTTs.
    subflows: u64,
    rtt_sum_us: u64,
    /// Unsent bytes on those subflows in the last health round.
    unsent_bytes: u64,
    seconds: [f64; 3],
}

/// Per-path totals, accumulated by the daemon: the kernel only has
/// per-subflow counters, and those go with their subflow. Each health
/// round adds what every subflow counted since the round before (a
/// subflow seen for the first time counts from zero); totals never go
/// backwards. What a subflow counts after the last round that saw it is
/// lost, and so is a subflow that lives less than one round.
#[derive(Debug, Default)]
pub struct Accounts {
    paths: BTreeMap<(u32, bool), PathTotals>,
    /// Local address -> interface, from the last `observe_paths`.
    by_addr: HashMap<IpAddr, u32>,
    subflows: HashMap<SubflowKey, SubflowLast>,
    /// When states were last observed (daemon clock, ms).
    observed_ms: Option<u64>,
}

fn state_index(s: PathState) -> usize {
    match s {
        PathState::Active => 0,
        PathState::Standby => 1,
        PathState::Unused => 2,
    }
}

impl Accounts {
    /// The policy's paths at `now_ms`: the time since the last call is
    /// credited to the state each path was in; paths whose interface is
    /// gone are forgotten.
    pub fn observe_paths(&mut self, paths: &[PathView], now_ms: u64) {
        let elapsed_s = self
            .observed_ms
            .map_or(0.0, |t| now_ms.saturating_sub(t) as f64 / 1000.0);
        self.observed_ms = Some(now_ms.max(self.observed_ms.unwrap_or(0)));
        for p in self.paths.values_mut() {
            p.seconds[state_index(p.state)] += elapsed_s;
        }
        self.paths
            .retain(|k, _| paths.iter().any(|p| (p.ifindex, p.ipv6) == *k));
        self.by_addr.clear();
        for p in paths {
            for a in &p.addresses {
                self.by_addr.insert(*a, p.ifindex);
            }
            let t = self
                .paths
                .entry((p.ifindex, p.ipv6))
                .or_insert_with(|| PathTotals {
                    interface: p.interface.clone(),
                    role: p.role,
                    state: p.state,
                    seen: false,
                    transmit_bytes: 0,
                    receive_bytes: 0,
                    retransmits: 0,
                    received_out_of_order: 0,
                    subflows: 0,
                    rtt_sum_us: 0,
                    unsent_bytes: 0,
                    seconds: [0.0; 3],
                });
            if t.interface != p.interface {
                t.interface.clone_from(&p.interface);
            }
            t.role = p.role;
            t.state = p.state;
            t.seen |= p.in_use;
        }
    }

    /// One health round: every MPTCP subflow there is now (an empty list
    /// when there are none).
    pub fn observe_subflows(&mut self, subflows: &[SubflowCounters]) {
        for p in self.paths.values_mut() {
            p.subflows = 0;
            p.rtt_sum_us = 0;
            p.unsent_bytes = 0;
        }
        let mut current = HashMap::with_capacity(subflows.len());
        for sf in subflows {
            let key = (sf.local, sf.remote, sf.token);
            let last = self.subflows.get(&key).copied().unwrap_or_default();
            current.insert(
                key,
                SubflowLast {
                    bytes_acked: sf.bytes_acked,
                    bytes_received: sf.bytes_received,
                    total_retrans: sf.total_retrans,
                    rcv_ooopack: sf.rcv_ooopack,
                },
            );
            // An IPv4 subflow of an IPv6 socket shows a mapped address.
            let ip = sf.local.ip().to_canonical();
            let Some(ifindex) = self.by_addr.get(&ip) else {
                continue;
            };
            let Some(p) = self.paths.get_mut(&(*ifindex, ip.is_ipv6())) else {
                continue;
            };
            // A counter that went backwards belongs to a new socket.
            let delta = |now: u64, last: u64| now.checked_sub(last).unwrap_or(now);
            p.transmit_bytes = p
                .transmit_bytes
                .saturating_add(delta(sf.bytes_acked, last.bytes_acked));
            p.receive_bytes = p
                .receive_bytes
                .saturating_add(delta(sf.bytes_received, last.bytes_received));
            p.retransmits = p
                .retransmits
                .saturating_add(delta(sf.total_retrans.into(), last.total_retrans.into()));
            p.received_out_of_order = p
                .received_out_of_order
                .saturating_add(delta(sf.rcv_ooopack.into(), last.rcv_ooopack.into()));
            p.seen = true;
            if sf.established {
                p.subflows += 1;
                p.rtt_sum_us += u64::from(sf.rtt_us);
                p.unsent_bytes += u64::from(sf.unsent_bytes);
            }
        }
        self.subflows = current;
    }

    /// The paths to export, in a stable order.
    pub fn paths(&self) -> Vec<PathSample> {
        self.paths
            .iter()
            .filter(|(_, t)| t.seen)
            .map(|((_, ipv6), t)| PathSample {
                interface: t.interface.clone(),
                role: t.role.name(),
                family: if *ipv6 { "ipv6" } else { "ipv4" },
                state: t.state,
                subflows: t.subflows,
                rtt_seconds: (t.subflows > 0)
                    .then(|| t.rtt_sum_us as f64 / t.subflows as f64 / 1e6),
                unsent_bytes: t.unsent_bytes,
                transmit_bytes: t.transmit_bytes,
                receive_bytes: t.receive_bytes,
                retransmits: t.retransmits,
                received_out_of_order: t.received_out_of_order,
                active_seconds: t.seconds[0],
                standby_seconds: t.seconds[1],
            })
            .collect()
    }
}

/// One path as exported.
#[derive(Debug, Clone, PartialEq)]
pub struct PathSample {
    pub interface: String,
    pub role: &'static str,
    pub family: &'static str,
    pub state: PathState,
    pub subflows: u64,
    pub rtt_seconds: Option<f64>,
    /// Bytes on the path's subflows not yet sent: data resent here after
    /// another path fails waits behind them.
    pub unsent_bytes: u64,
    pub transmit_bytes: u64,
    pub receive_bytes: u64,
    pub retransmits: u64,
    /// Data segments that arrived behind a hole: the peer's losses on the
    /// way in (the policy's loss figure counts them, see health.rs).
    pub received_out_of_order: u64,
    pub active_seconds: f64,
    pub standby_seconds: f64,
}

/// Everything the exposition shows, gathered by the daemon.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub version: &'static str,
    /// "client" or "server", and the path mode.
    pub mode: &'static str,
    pub path_mode: &'static str,
    /// Unix time the daemon started, seconds.
    pub start_time_seconds: f64,
    pub paths: Vec<PathSample>,
    /// Decisions by action ("add_endpoint", ...), and those the kernel refused.
    pub decisions: BTreeMap<&'static str, u64>,
    pub decisions_failed: BTreeMap<&'static str, u64>,
    /// Switches of the paths carrying traffic, by cause.
    pub switches: BTreeMap<String, u64>,
    pub switches_held_back: u64,
    pub mptcp_events: BTreeMap<String, u64>,
    pub probes: u64,
    pub probes_unanswered: u64,
    pub probes_unanswered_data_came: u64,
    pub link_events: u64,
    pub carrier_losses_polled: u64,
    pub standby_endpoints_kept: u64,
    pub backup_flags_resent: u64,
    pub address_events: u64,
    pub route_events: u64,
    pub resyncs: u64,
    pub reloads: u64,
    pub health_polls: u64,
    /// The daemon's own errors by kind ("health_poll", "state_file", ...).
    pub errors: BTreeMap<&'static str, u64>,
    pub endpoints_braid: u64,
    pub endpoints_other: u64,
    /// The kernel's MPTcpExt counters (None: /proc/net/netstat could not
    /// be read).
    pub kernel: Option<BTreeMap<String, u64>>,
}

/// Every action the policy decides, by the name its JSON uses.
pub const ACTIONS: [&str; 8] = [
    "add_endpoint",
    "remove_endpoint",
    "set_endpoint_flags",
    "set_limits",
    "set_sysctl",
    "probe_path",
    "set_route_initcwnd",
    "probe_loss",
];

pub fn action_name(a: &braid_policy::Action) -> &'static str {
    use braid_policy::Action as A;
    match a {
        A::AddEndpoint { .. } => ACTIONS[0],
        A::RemoveEndpoint { .. } => ACTIONS[1],
        A::SetEndpointFlags { .. } => ACTIONS[2],
        A::SetLimits { .. } => ACTIONS[3],
        A::SetSysctl { .. } => ACTIONS[4],
        A::ProbePath { .. } => ACTIONS[5],
        A::SetRouteInitcwnd { .. } => ACTIONS[6],
        A::ProbeLoss { .. } => ACTIONS[7],
    }
}

/// The causes `Counters::switches` uses (see braid-policy).
pub const SWITCH_CAUSES: [&str; 7] = [
    "unreachable",
    "stalled",
    "lossy",
    "rtt",
    "path_gone",
    "recovered",
    "unhealthy",
];

/// MPTCP event types as the policy's counters name them.
pub const MPTCP_EVENTS: [&str; 11] = [
    "created",
    "established",
    "closed",
    "announced",
    "removed",
    "sub_established",
    "sub_closed",
    "sub_priority",
    "listener_created",
    "listener_closed",
    "unknown",
];

/// The daemon's own errors, by kind.
pub const ERRORS: [&str; 7] = [
    "health_poll",
    "link_poll",
    "state_file",
    "rtnetlink",
    "mptcp_events",
    "mptcp_events_lost",
    "textfile",
];

/// MPTcpExt values that go down as well as up (MPTCP_MIB_CURRESTAB: the
/// MPTCP connections established now): gauges, not counters.
pub const KERNEL_GAUGES: [&str; 1] = ["MPCurrEstab"];

/// The content type of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const COUNTER: &str = "counter";
const GAUGE: &str = "gauge";

enum Value {
    Int(u64),
    Float(f64),
}

type Labels<'a> = Vec<(&'static str, &'a str)>;

#[derive(Default)]
struct Out {
    text: String,
}

impl Out {
    /// One metric family: HELP, TYPE and its samples; nothing at all if it
    /// has no samples.
    fn family<'a>(
        &mut self,
        name: &str,
        kind: &str,
        help: &str,
        samples: impl IntoIterator<Item = (Labels<'a>, Value)>,
    ) {
        let mut samples = samples.into_iter().peekable();
        if samples.peek().is_none() {
            return;
        }
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        for (labels, value) in samples {
            self.text.push_str(name);
            if !labels.is_empty() {
                self.text.push('{');
                for (i, (k, v)) in labels.iter().enumerate() {
                    if i > 0 {
                        self.text.push(',');
                    }
                    let _ = write!(self.text, "{k}=\"{}\"", escape_label(v));
                }
                self.text.push('}');
            }
            self.text.push(' ');
            match value {
                Value::Int(v) => {
                    let _ = write!(self.text, "{v}");
                }
                Value::Float(v) => self.text.push_str(&float(v)),
            }
            self.text.push('\n');
        }
    }

    /// A family of one sample without labels.
    fn single(&mut self, name: &str, kind: &str, help: &str, value: Value) {
        self.family(name, kind, help, [(Vec::new(), value)]);
    }
}

/// A float as the text format writes it (Go's ParseFloat reads it back).
fn float(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        String::from(if v > 0.0 { "+Inf" } else { "-Inf" })
    } else {
        format!("{v}")
    }
}

/// Label values: backslash, double quote and line feed escaped.
pub fn escape_label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// HELP text: backslash and line feed escaped.
pub fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A kernel counter's name as part of a metric name: lower case, anything
/// but letters, digits and underscores made an underscore.
pub fn metric_part(name: &str) -> String {
    name.chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '_') => c,
            _ => '_',
        })
        .collect()
}

/// The `known` names first (0 where absent), then any others `have` has.
fn known_then_rest<'a>(known: &[&'a str], have: Vec<(&'a str, u64)>) -> Vec<(&'a str, u64)> {
    let mut out: Vec<(&'a str, u64)> = known
        .iter()
        .map(|k| {
            let v = have.iter().find(|(h, _)| h == k).map_or(0, |(_, v)| *v);
            (*k, v)
        })
        .collect();
    out.extend(have.into_iter().filter(|(h, _)| !known.contains(h)));
    out
}

fn by_label<'a>(
    label: &'static str,
    counts: Vec<(&'a str, u64)>,
) -> impl Iterator<Item = (Labels<'a>, Value)> {
    counts
        .into_iter()
        .map(move |(k, v)| (vec![(label, k)], Value::Int(v)))
}

fn path_labels(p: &PathSample) -> Labels<'_> {
    vec![
        ("interface", p.interface.as_str()),
        ("role", p.role),
        ("family", p.family),
    ]
}

fn statics(m: &BTreeMap<&'static str, u64>) -> Vec<(&'static str, u64)> {
    m.iter().map(|(k, v)| (*k, *v)).collect()
}

fn strings(m: &BTreeMap<String, u64>) -> Vec<(&str, u64)> {
    m.iter().map(|(k, v)| (k.as_str(), *v)).collect()
}

const ACCUMULATED: &str = "Accumulated by the daemon from each MPTCP subflow's tcp_info (sock_diag) at every health round, every policy.poll_interval_ms while MPTCP connections exist: what a subflow counts after the last round that sees it, or in a life shorter than a round, is not counted.";

/// The exposition text (Prometheus text format 0.0.4) of `s`.
pub fn render(s: &Snapshot) -> String {
    let mut o = Out::default();
    render_info(&mut o, s);
    render_paths(&mut o, s);
    render_decisions(&mut o, s);
    render_kernel_events(&mut o, s);
    render_daemon_health(&mut o, s);
    render_kernel_counters(&mut o, s);
    o.text
}

fn render_info(o: &mut Out, s: &Snapshot) {
    o.family(
        "braid_info",
        GAUGE,
        "The Braid daemon's version, mode (client or server) and path mode (aggregate, handover, interactive); always 1.",
        [(
            vec![
                ("version", s.version),
                ("mode", s.mode),
                ("path_mode", s.path_mode),
            ],
            Value::Int(1),
        )],
    );
    o.single(
        "braid_start_time_seconds",
        GAUGE,
        "When the daemon started, in seconds since the Unix epoch.",
        Value::Float(s.start_time_seconds),
    );
}

/// Paths: one address family of one interface each.
fn render_paths(o: &mut Out, s: &Snapshot) {
    o.family(
        "braid_path_state",
        GAUGE,
        "1 for the state a path (an interface's address family) is in, 0 for the others: active (an endpoint without the backup flag, the kernel sends data on it), standby (backup endpoints only) or unused (no endpoint).",
        s.paths.iter().flat_map(|p| {
            PathState::ALL.into_iter().map(move |st| {
                let mut l = path_labels(p);
                l.push(("state", st.name()));
                (l, Value::Int(u64::from(p.state == st)))
            })
        }),
    );
    o.family(
        "braid_path_state_seconds_total",
        COUNTER,
        "Time a path has been active or standing by since the daemon started, in seconds.",
        s.paths.iter().flat_map(|p| {
            [
                (PathState::Active, p.active_seconds),
                (PathState::Standby, p.standby_seconds),
            ]
            .into_iter()
            .map(move |(st, secs)| {
                let mut l = path_labels(p);
                l.push(("state", st.name()));
                (l, Value::Float(secs))
            })
        }),
    );
    o.family(
        "braid_path_subflows",
        GAUGE,
        "Established MPTCP subflows on a path at the daemon's last health round (0 once no MPTCP connection is left).",
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.subflows))),
    );
    o.family(
        "braid_path_rtt_seconds",
        GAUGE,
        "Mean smoothed RTT (tcp_info) of a path's established MPTCP subflows at the last health round, in seconds; absent while the path has none.",
        s.paths
            .iter()
            .filter_map(|p| Some((path_labels(p), Value::Float(p.rtt_seconds?)))),
    );
    o.family(
        "braid_path_unsent_bytes",
        GAUGE,
        "Bytes written to a path's established MPTCP subflows and not yet sent (tcp_info notsent_bytes) at the last health round: when another path fails, the data resent on this one waits behind them (bounded by net.ipv4.tcp_wmem's maximum, not by tcp_notsent_lowat).",
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.unsent_bytes))),
    );
    o.family(
        "braid_path_transmit_bytes_total",
        COUNTER,
        &format!("Bytes sent on a path's MPTCP subflows and acknowledged by the peer (retransmissions not counted again). {ACCUMULATED}"),
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.transmit_bytes))),
    );
    o.family(
        "braid_path_receive_bytes_total",
        COUNTER,
        &format!("Bytes received on a path's MPTCP subflows. {ACCUMULATED}"),
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.receive_bytes))),
    );
    o.family(
        "braid_path_retransmitted_segments_total",
        COUNTER,
        &format!("Segments retransmitted on a path's MPTCP subflows (tcp_info total_retrans). {ACCUMULATED}"),
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.retransmits))),
    );
    o.family(
        "braid_path_received_out_of_order_segments_total",
        COUNTER,
        &format!("Data segments that arrived on a path's MPTCP subflows behind a hole (tcp_info rcv_ooopack): the peer's losses on the way in show here, not in the retransmissions. {ACCUMULATED}"),
        s.paths
            .iter()
            .map(|p| (path_labels(p), Value::Int(p.received_out_of_order))),
    );
}

fn render_decisions(o: &mut Out, s: &Snapshot) {
    o.family(
        "braid_decisions_total",
        COUNTER,
        "Actions the policy decided, by action (each is logged with its reason).",
        by_label("action", known_then_rest(&ACTIONS, statics(&s.decisions))),
    );
    o.family(
        "braid_decisions_failed_total",
        COUNTER,
        "Decided actions the kernel refused or that could not be carried out, by action.",
        by_label(
            "action",
            known_then_rest(&ACTIONS, statics(&s.decisions_failed)),
        ),
    );
    o.family(
        "braid_path_switches_total",
        COUNTER,
        "Changes of the paths that carry traffic (handover and interactive modes), by cause: unreachable (an unanswered probe), stalled, lossy, rtt (a faster path), path_gone (carrier, address or route lost), recovered (the primary takes traffic back), unhealthy (other).",
        by_label("cause", known_then_rest(&SWITCH_CAUSES, strings(&s.switches))),
    );
    o.single(
        "braid_path_switches_held_back_total",
        COUNTER,
        "Times a switch made on measurements was held back by policy.max_handovers.",
        Value::Int(s.switches_held_back),
    );
    o.single(
        "braid_path_probes_total",
        COUNTER,
        "ICMP probes of silent or stalled paths.",
        Value::Int(s.probes),
    );
    o.single(
        "braid_path_probes_unanswered_total",
        COUNTER,
        "ICMP probes of silent or stalled paths that went unanswered.",
        Value::Int(s.probes_unanswered),
    );
    o.single(
        "braid_path_probes_unanswered_data_came_total",
        COUNTER,
        "Unanswered probes of silent paths not acted on: data came on the path while the probe waited.",
        Value::Int(s.probes_unanswered_data_came),
    );
}

/// What the kernel said.
fn render_kernel_events(o: &mut Out, s: &Snapshot) {
    o.family(
        "braid_mptcp_events_total",
        COUNTER,
        "MPTCP events from the kernel's mptcp_pm netlink family, by type.",
        by_label(
            "type",
            known_then_rest(&MPTCP_EVENTS, strings(&s.mptcp_events)),
        ),
    );
    o.family(
        "braid_netlink_changes_total",
        COUNTER,
        "Link, address and default-route changes heard over rtnetlink, by kind.",
        by_label(
            "kind",
            vec![
                ("link", s.link_events),
                ("address", s.address_events),
                ("route", s.route_events),
            ],
        ),
    );
    o.single(
        "braid_carrier_losses_polled_total",
        COUNTER,
        "Carrier losses read in a health round before the kernel announced them over rtnetlink (its link watch holds such a change up to a second).",
        Value::Int(s.carrier_losses_polled),
    );
    o.single(
        "braid_standby_endpoints_kept_total",
        COUNTER,
        "Times a standby path lost carrier and its endpoint was kept: removing it would close its subflows, and the kernels would resend all data in flight over the path carrying traffic.",
        Value::Int(s.standby_endpoints_kept),
    );
    o.single(
        "braid_backup_flags_resent_total",
        COUNTER,
        "Times an endpoint's backup flag was set again because a subflow that was joining when it changed kept its old flag (the kernel sends no MP_PRIO before a join is complete).",
        Value::Int(s.backup_flags_resent),
    );
    o.family(
        "braid_endpoints",
        GAUGE,
        "The kernel's MPTCP endpoints, by who made them (braid, or other: someone else's, left alone).",
        by_label(
            "owner",
            vec![("braid", s.endpoints_braid), ("other", s.endpoints_other)],
        ),
    );
}

fn render_daemon_health(o: &mut Out, s: &Snapshot) {
    o.single(
        "braid_resyncs_total",
        COUNTER,
        "Full resynchronisations from kernel dumps (periodic, after a netlink overflow, on reload).",
        Value::Int(s.resyncs),
    );
    o.single(
        "braid_reloads_total",
        COUNTER,
        "Configuration reloads accepted.",
        Value::Int(s.reloads),
    );
    o.single(
        "braid_health_polls_total",
        COUNTER,
        "Health rounds (sock_diag dumps of the MPTCP subflows), failed or not.",
        Value::Int(s.health_polls),
    );
    o.family(
        "braid_errors_total",
        COUNTER,
        "The daemon's own errors, by kind: health_poll (sock_diag failed), link_poll (reading the links in a health round failed), state_file (writing it failed), rtnetlink and mptcp_events (reading failed), mptcp_events_lost (the kernel dropped events: ENOBUFS), textfile (writing metrics.textfile failed).",
        by_label("kind", known_then_rest(&ERRORS, statics(&s.errors))),
    );
}

/// The kernel's counters.
fn render_kernel_counters(o: &mut Out, s: &Snapshot) {
    o.single(
        "braid_kernel_mptcp_counters_available",
        GAUGE,
        "1 if the kernel's MPTcpExt counters could be read from /proc/net/netstat, else 0.",
        Value::Int(u64::from(s.kernel.is_some())),
    );
    let mut names: BTreeMap<String, (&str, u64)> = BTreeMap::new();
    for (name, v) in s.kernel.iter().flatten() {
        let part = metric_part(name);
        if !part.is_empty() {
            names.entry(part).or_insert((name.as_str(), *v));
        }
    }
    for (part, (name, v)) in names {
        if KERNEL_GAUGES.contains(&name) {
            o.single(
                &format!("braid_kernel_mptcp_{part}"),
                GAUGE,
                &format!("The kernel's MPTcpExt{name} value, a current count rather than a counter (/proc/net/netstat in the daemon's network namespace; nstat calls it MPTcpExt{name})."),
                Value::Int(v),
            );
            continue;
        }
        o.single(
            &format!("braid_kernel_mptcp_{part}_total"),
            COUNTER,
            &format!("The kernel's MPTcpExt{name} counter (/proc/net/netstat in the daemon's network namespace, since boot; nstat calls it MPTcpExt{name})."),
            Value::Int(v),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(ifindex: u32, name: &str, ipv6: bool, state: PathState, addrs: &[&str]) -> PathView {
        PathView {
            ifindex,
            interface: name.into(),
            ipv6,
            role: Role::Primary,
            state,
            in_use: state != PathState::Unused,
            addresses: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        }
    }

    fn sf(local: &str, token: u32, tx: u64, rx: u64, retrans: u32) -> SubflowCounters {
        SubflowCounters {
            local: local.parse().unwrap(),
            remote: "192.0.2.1:443".parse().unwrap(),
            token,
            established: true,
            rtt_us: 20_500,
            bytes_acked: tx,
            bytes_received: rx,
            total_retrans: retrans,
            rcv_ooopack: retrans * 2,
            unsent_bytes: 4096,
        }
    }

    /// Checks what `promtool check metrics` checks first, without it:
    /// HELP then TYPE before each family's samples, one family per name,
    /// counters named `_total`, every sample's value a number.
    fn check_format(text: &str) {
        let mut declared = std::collections::BTreeSet::new();
        let mut current: Option<(String, String)> = None;
        let mut help: Option<String> = None;
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(declared.insert(name.clone()), "{name} declared twice");
                help = Some(name);
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut f = rest.split(' ');
                let (name, kind) = (f.next().unwrap(), f.next().unwrap());
                assert_eq!(help.as_deref(), Some(name), "TYPE without HELP: {line}");
                if kind == "counter" {
                    assert!(name.ends_with("_total"), "counter {name}");
                } else {
                    assert_eq!(kind, "gauge", "{line}");
                    assert!(!name.ends_with("_total"), "gauge {name}");
                }
                for unit in ["_ms", "_milliseconds", "_us", "_kb", "_kib", "_mb"] {
                    assert!(!name.contains(unit), "not a base unit: {name}");
                }
                current = Some((name.to_string(), kind.to_string()));
            } else {
                assert!(!line.starts_with('#'), "{line}");
                let name_end = line.find(['{', ' ']).unwrap();
                let name = &line[..name_end];
                let (family, _) = current.as_ref().expect("a sample before any TYPE");
                assert_eq!(name, family.as_str(), "sample outside its family: {line}");
                let value = line.rsplit(' ').next().unwrap();
                assert!(
                    value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value),
                    "{line}"
                );
            }
        }
    }

    fn snapshot() -> Snapshot {
        let mut a = Accounts::default();
        a.observe_paths(
            &[
                path(2, "eth0", false, PathState::Active, &["10.0.0.2"]),
                path(3, "wl\"an\\0", false, PathState::Standby, &["192.168.1.5"]),
                path(3, "wl\"an\\0", true, PathState::Unused, &[]),
            ],
            0,
        );
        a.observe_subflows(&[sf("10.0.0.2:40000", 1, 1000, 5000, 3)]);
        a.observe_paths(
            &[
                path(2, "eth0", false, PathState::Active, &["10.0.0.2"]),
                path(3, "wl\"an\\0", false, PathState::Standby, &["192.168.1.5"]),
            ],
            2500,
        );
        Snapshot {
            version: "0.1.0",
            mode: "client",
            path_mode: "handover",
            start_time_seconds: 1_764_000_000.25,
            paths: a.paths(),
            decisions: [("add_endpoint", 2)].into_iter().collect(),
            switches: [("stalled".to_string(), 1), ("something_new".to_string(), 2)]
                .into_iter()
                .collect(),
            mptcp_events: [("created".to_string(), 4)].into_iter().collect(),
            errors: [("state_file", 1)].into_iter().collect(),
            kernel: Some(
                [
                    ("MPCapableSYNRX".to_string(), 7),
                    ("MPJoinAckHMacFailure".to_string(), 1),
                    ("MPCurrEstab".to_string(), 3),
                ]
                .into_iter()
                .collect(),
            ),
            ..Snapshot::default()
        }
    }

    #[test]
    fn exposition_follows_the_conventions() {
        let text = render(&snapshot());
        check_format(&text);
        for line in [
            "braid_info{version=\"0.1.0\",mode=\"client\",path_mode=\"handover\"} 1",
            "braid_start_time_seconds 1764000000.25",
            "braid_path_state{interface=\"eth0\",role=\"primary\",family=\"ipv4\",state=\"active\"} 1",
            "braid_path_state{interface=\"eth0\",role=\"primary\",family=\"ipv4\",state=\"standby\"} 0",
            "braid_path_state_seconds_total{interface=\"eth0\",role=\"primary\",family=\"ipv4\",state=\"active\"} 2.5",
            "braid_path_rtt_seconds{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 0.0205",
            "braid_path_transmit_bytes_total{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 1000",
            "braid_path_receive_bytes_total{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 5000",
            "braid_path_retransmitted_segments_total{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 3",
            "braid_path_received_out_of_order_segments_total{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 6",
            "braid_path_subflows{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 1",
            "braid_path_unsent_bytes{interface=\"eth0\",role=\"primary\",family=\"ipv4\"} 4096",
            // Label values escaped: the quote and the backslash.
            "braid_path_state_seconds_total{interface=\"wl\\\"an\\\\0\",role=\"primary\",family=\"ipv4\",state=\"standby\"} 2.5",
            "braid_decisions_total{action=\"add_endpoint\"} 2",
            "braid_decisions_total{action=\"set_route_initcwnd\"} 0",
            "braid_path_switches_total{cause=\"stalled\"} 1",
            "braid_path_switches_total{cause=\"recovered\"} 0",
            "braid_path_switches_total{cause=\"something_new\"} 2",
            "braid_mptcp_events_total{type=\"created\"} 4",
            "braid_mptcp_events_total{type=\"sub_closed\"} 0",
            "braid_errors_total{kind=\"state_file\"} 1",
            "braid_kernel_mptcp_counters_available 1",
            "braid_kernel_mptcp_mpcapablesynrx_total 7",
            "braid_kernel_mptcp_mpjoinackhmacfailure_total 1",
            "# TYPE braid_kernel_mptcp_mpcurrestab gauge",
            "braid_kernel_mptcp_mpcurrestab 3",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        // The unused IPv6 family of wlan0 was never in use: not exported;
        // a path without subflows has no RTT.
        assert!(!text.contains("ipv6"), "{text}");
        assert!(
            !text.contains("braid_path_rtt_seconds{interface=\"wl"),
            "{text}"
        );
        assert!(text.contains("# HELP braid_kernel_mptcp_mpcapablesynrx_total The kernel's MPTcpExtMPCapableSYNRX counter"));
        assert!(text.ends_with('\n'));
    }

    /// Every metric the example Grafana dashboard queries exists.
    #[test]
    fn the_example_dashboard_queries_metrics_that_exist() {
        let text = render(&snapshot());
        let dash = include_str!("../../../contrib/grafana-braid.json");
        let v: serde_json::Value = serde_json::from_str(dash).unwrap();
        let mut exprs = Vec::new();
        for p in v["panels"].as_array().unwrap() {
            for t in p["targets"].as_array().unwrap() {
                exprs.push(t["expr"].as_str().unwrap().to_string());
            }
        }
        assert!(exprs.len() >= 8);
        let mut checked = 0;
        for e in &exprs {
            let mut rest = e.as_str();
            while let Some(i) = rest.find("braid_") {
                let name: String = rest[i..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[i + name.len()..];
                if name.ends_with('_') {
                    continue; // a regular expression's prefix
                }
                assert!(
                    text.contains(&format!("\n# TYPE {name} ")),
                    "the dashboard queries {name}, which is not exported"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "{checked}");
    }

    #[test]
    fn action_names_are_the_json_ones() {
        use braid_policy::Action;
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for a in [
            Action::AddEndpoint {
                id: 1,
                addr: ip,
                flags: 2,
                ifindex: None,
            },
            Action::RemoveEndpoint { id: 1, addr: ip },
            Action::SetEndpointFlags {
                id: 1,
                addr: ip,
                flags: 2,
            },
            Action::SetLimits {
                subflows: 1,
                add_addr_accepted: 1,
            },
            Action::SetSysctl {
                name: "a".into(),
                value: "b".into(),
            },
            Action::ProbePath {
                ifindex: 1,
                local: ip,
                remote: ip,
                timeout_ms: 1,
            },
            Action::SetRouteInitcwnd {
                ifindex: 1,
                table: 254,
                ipv6: false,
                initcwnd: None,
            },
            Action::ProbeLoss {
                ifindex: 1,
                local: ip,
                remote: ip,
                timeout_ms: 1,
            },
        ] {
            assert_eq!(serde_json::to_value(&a).unwrap()["action"], action_name(&a));
        }
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
        assert_eq!(escape_label("eth0"), "eth0");
        assert_eq!(escape_help("1\\2\n3\""), "1\\\\2\\n3\"");
        assert_eq!(metric_part("MPCapableSYNRX"), "mpcapablesynrx");
        assert_eq!(metric_part("Odd-Name.1"), "odd_name_1");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(0.25), "0.25");
    }

    #[test]
    fn unreadable_kernel_counters_are_said_not_hidden() {
        let s = Snapshot {
            kernel: None,
            ..snapshot()
        };
        let text = render(&s);
        check_format(&text);
        assert!(text.contains("\nbraid_kernel_mptcp_counters_available 0\n"));
        assert!(!text.contains("braid_kernel_mptcp_mpcapablesynrx_total"));
    }

    #[test]
    fn path_totals_never_go_backwards() {
        let mut a = Accounts::default();
        let paths = [path(2, "eth0", false, PathState::Active, &["10.0.0.2"])];
        a.observe_paths(&paths, 0);
        let totals = |a: &Accounts| {
            let p = &a.paths()[0];
            assert_eq!(p.received_out_of_order, 2 * p.retransmits);
            (p.transmit_bytes, p.receive_bytes, p.retransmits, p.subflows)
        };
        a.observe_subflows(&[
            sf("10.0.0.2:40000", 1, 100, 1000, 1),
            // Another interface's address, or none known: not counted.
            sf("10.9.9.9:40000", 1, 5, 5, 5),
        ]);
        assert_eq!(totals(&a), (100, 1000, 1, 1));
        a.observe_subflows(&[
            sf("10.0.0.2:40000", 1, 150, 1500, 1),
            sf("10.0.0.2:40001", 2, 10, 10, 0),
        ]);
        assert_eq!(totals(&a), (160, 1510, 1, 2));
        // The first subflow closed; the same 4-tuple reused by another
        // connection (another token) counts from zero; and a counter that
        // went backwards is a new socket.
        a.observe_subflows(&[
            sf("10.0.0.2:40000", 3, 40, 40, 0),
            sf("10.0.0.2:40001", 2, 5, 5, 0),
        ]);
        assert_eq!(totals(&a), (205, 1555, 1, 2));
        // No subflows left: totals stay, the gauge drops.
        a.observe_subflows(&[]);
        assert_eq!(totals(&a), (205, 1555, 1, 0));
        assert_eq!(a.paths()[0].rtt_seconds, None);
        assert!(a.subflows.is_empty());
    }

    #[test]
    fn time_is_credited_to_the_state_a_path_was_in() {
        let mut a = Accounts::default();
        let at = |s| [path(2, "eth0", false, s, &["10.0.0.2"])];
        a.observe_paths(&at(PathState::Active), 1000);
        a.observe_paths(&at(PathState::Standby), 2500);
        a.observe_paths(&at(PathState::Unused), 5000);
        a.observe_paths(&at(PathState::Active), 6000);
        let p = &a.paths()[0];
        assert_eq!((p.active_seconds, p.standby_seconds), (1.5, 2.5));
        assert_eq!(p.state, PathState::Active);
        // Once in use, a path stays exported when unused, until its
        // interface goes.
        a.observe_paths(&at(PathState::Unused), 7000);
        assert_eq!(a.paths().len(), 1);
        a.observe_paths(&[], 8000);
        assert!(a.paths().is_empty());
    }

    #[test]
    fn config_is_checked_with_the_key_and_what_is_allowed() {
        let ok = MetricsConfig {
            listen: Some("127.0.0.1:9853".into()),
            textfile: Some("/var/lib/node_exporter/textfile_collector/braid.prom".into()),
            ..MetricsConfig::default()
        };
        ok.validate().unwrap();
        assert!(ok.enabled());
        assert_eq!(ok.listen_addr(), Some("127.0.0.1:9853".parse().unwrap()));
        assert!(!MetricsConfig::default().enabled());
        MetricsConfig {
            listen: Some("[::1]:9853".into()),
            ..MetricsConfig::default()
        }
        .validate()
        .unwrap();
        for (c, key, says) in [
            (
                MetricsConfig {
                    listen: Some("localhost:9853".into()),
                    ..MetricsConfig::default()
                },
                "metrics.listen",
                "not an IP address and port",
            ),
            (
                MetricsConfig {
                    listen: Some("127.0.0.1".into()),
                    ..MetricsConfig::default()
                },
                "metrics.listen",
                "127.0.0.1:9853",
            ),
            (
                MetricsConfig {
                    listen: Some("0.0.0.0:0".into()),
                    ..MetricsConfig::default()
                },
                "metrics.listen",
                "port 0",
            ),
            (
                MetricsConfig {
                    textfile: Some("braid.prom".into()),
                    ..MetricsConfig::default()
                },
                "metrics.textfile",
                "absolute",
            ),
            (
                MetricsConfig {
                    textfile: Some("/tmp/braid.txt".into()),
                    ..MetricsConfig::default()
                },
                "metrics.textfile",
                ".prom",
            ),
            (
                MetricsConfig {
                    textfile_interval_s: 0,
                    ..MetricsConfig::default()
                },
                "metrics.textfile_interval_s",
                "between 1 and 3600",
            ),
        ] {
            let (k, problem) = c.validate().unwrap_err();
            assert_eq!(k, key);
            assert!(problem.contains(says), "{problem}");
        }
    }
}
