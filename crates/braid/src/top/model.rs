//! The data model of `braid top`: per-refresh samples in, rates, per-path
//! figures and the rows to show out. Pure: no kernel, no clock (the time of
//! a sample is passed in), so every rule here has a unit test.
//!
//! Cost per refresh is O(connections + subflows): one hash map of the
//! previous counters, rebuilt each time (vanished subflows drop out), one
//! pass to aggregate, and for the rows a partial selection of the top N
//! (`select_nth_unstable_by`) before sorting only those N.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// A fast non-cryptographic hash (FxHash's mixing) for the per-refresh
/// maps of socket addresses and tokens: SipHash, the default, was a
/// visible part of a refresh with 10,000 connections.
#[derive(Default, Clone, Copy)]
pub struct Fx(u64);

impl Fx {
    fn add(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for Fx {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for c in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            self.add(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, v: u8) {
        self.add(v as u64)
    }
    fn write_u16(&mut self, v: u16) {
        self.add(v as u64)
    }
    fn write_u32(&mut self, v: u32) {
        self.add(v as u64)
    }
    fn write_u64(&mut self, v: u64) {
        self.add(v)
    }
    fn write_usize(&mut self, v: usize) {
        self.add(v as u64)
    }
}

pub type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<Fx>>;

pub fn map_with<K, V>(n: usize) -> FastMap<K, V> {
    HashMap::with_capacity_and_hasher(n, Default::default())
}

/// Samples of goodput kept per interface for the sparkline.
pub const HISTORY: usize = 120;

/// One subflow as collected (counters are totals since the socket began).
#[derive(Debug, Clone, Default)]
pub struct SubflowIn {
    /// Local token of its connection.
    pub token: u32,
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    /// Interface carrying it (bound device or owner of the local address).
    pub dev: Option<Arc<str>>,
    pub backup: bool,
    pub state: &'static str,
    pub rtt_us: u32,
    /// Bytes sent and acknowledged by the peer (tcp_info bytes_acked).
    pub bytes_acked: u64,
    /// Bytes received (tcp_info bytes_received).
    pub bytes_received: u64,
    pub total_retrans: u32,
    pub data_segs_out: u32,
}

/// One MPTCP connection as collected.
#[derive(Debug, Clone, Default)]
pub struct ConnIn {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub state: &'static str,
    pub token: Option<u32>,
    /// Owning process ("name[pid]"), when the socket inode was found in /proc.
    pub process: Option<Arc<str>>,
    pub fell_back: bool,
    /// Connection-level counters (mptcp_info; kernels before 6.? lack
    /// them, and then the sums of the subflows' are used).
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
    /// Subflows the kernel counts for it (used until its subflows are read).
    pub subflows_hint: usize,
}

/// One interface as collected, with the daemon's figures when it runs.
#[derive(Debug, Clone, Default)]
pub struct IfaceIn {
    pub name: Arc<str>,
    /// "up", "down", "no-carrier".
    pub state: String,
    /// Daemon role, or endpoint flags in the kernel-only view.
    pub role: String,
    pub daemon_rtt_ms: Option<f64>,
    /// Fraction 0..1.
    pub daemon_loss: Option<f64>,
}

/// Everything collected at one refresh; `at` is a monotonic time.
/// `subflows` is `None` when they were not read this time (they cost most:
/// with many, they are read less often): per-path figures then stay as
/// they were.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub at: Duration,
    pub ifaces: Vec<IfaceIn>,
    pub conns: Vec<ConnIn>,
    pub subflows: Option<Vec<SubflowIn>>,
}

/// Rates of one subflow over the interval between its last two reads.
#[derive(Debug, Clone, Default)]
pub struct SubflowStat {
    pub sf: SubflowIn,
    /// Bytes/s acknowledged by the peer (out) and received (in).
    pub out_bps: u64,
    pub in_bps: u64,
    retrans_delta: u32,
    segs_delta: u32,
}

#[derive(Debug, Clone, Default)]
pub struct ConnStat {
    pub local: Option<SocketAddr>,
    pub remote: Option<SocketAddr>,
    pub state: &'static str,
    pub token: Option<u32>,
    pub process: Option<Arc<str>>,
    pub fell_back: bool,
    pub subflows: usize,
    pub backups: usize,
    pub out_bps: u64,
    pub in_bps: u64,
    pub bytes: u64,
    /// Largest subflow RTT in microseconds (the slowest path it uses).
    pub rtt_us: u32,
}

#[derive(Debug, Clone, Default)]
pub struct IfaceStat {
    pub name: Arc<str>,
    pub state: String,
    pub role: String,
    pub subflows: usize,
    pub backups: usize,
    /// Daemon's smoothed RTT when it runs, else the mean subflow RTT.
    pub rtt_ms: Option<f64>,
    /// Daemon's loss when it runs, else retransmitted / sent segments.
    pub loss: Option<f64>,
    pub in_bps: u64,
    pub out_bps: u64,
    /// Goodput (in + out, bytes/s) at each read of the subflows, oldest first.
    pub history: Vec<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Counters {
    acked: u64,
    received: u64,
    retrans: u32,
    data_segs_out: u32,
}

type AddrKey = (Option<SocketAddr>, Option<SocketAddr>);

#[derive(Debug, Default, Clone)]
struct Acc {
    subflows: usize,
    backups: usize,
    rtt_sum: u64,
    rtt_n: u64,
    in_bps: u64,
    out_bps: u64,
    retrans: u64,
    segs: u64,
}

/// Model state kept across refreshes.
#[derive(Debug, Default)]
pub struct Model {
    prev_conn: FastMap<AddrKey, (u64, u64)>,
    prev_conn_at: Option<Duration>,
    prev_sf: FastMap<AddrKey, Counters>,
    prev_sf_at: Option<Duration>,
    /// Per-interface sums at the last read of the subflows.
    acc: HashMap<Arc<str>, Acc>,
    history: HashMap<Arc<str>, VecDeque<u64>>,
    /// Subflows by connection token, from the last read of them.
    by_token: FastMap<u32, Vec<SubflowStat>>,
    pub ifaces: Vec<IfaceStat>,
    pub conns: Vec<ConnStat>,
    /// Refreshes taken in, and reads of the subflows among them.
    pub samples: u64,
    pub subflow_samples: u64,
    /// Subflows at the last read of them.
    pub subflow_count: usize,
}

/// Growth of a counter between two reads. A counter that went backwards
/// belongs to a new socket on the same addresses (a reused 4-tuple): all it
/// counts happened since the last read. Seen for the first time after the
/// first refresh: also new since then. On the first refresh: unknown, 0.
fn grew(prev: Option<u64>, now: u64, first: bool) -> u64 {
    match prev {
        Some(p) if now >= p => now - p,
        Some(_) => now,
        None if first => 0,
        None => now,
    }
}

fn per_second(delta: u64, dt: Duration) -> u64 {
    let ms = dt.as_millis() as u64;
    if ms == 0 {
        return 0;
    }
    (delta as u128 * 1000 / ms as u128).min(u64::MAX as u128) as u64
}

/// Interval since `prev` (none when time went backwards, which it should not).
fn since(prev: Option<Duration>, at: Duration) -> Duration {
    prev.and_then(|p| at.checked_sub(p)).unwrap_or_default()
}

impl Model {
    pub fn new() -> Model {
        Model::default()
    }

    /// The subflows of a connection, as of the last read of them.
    pub fn subflows_of(&self, c: &ConnStat) -> &[SubflowStat] {
        c.token
            .and_then(|t| self.by_token.get(&t))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// Take in one refresh.
    pub fn update(&mut self, snap: Snapshot) {
        let fresh = snap.subflows.is_some();
        if let Some(sfs) = snap.subflows {
            self.take_subflows(snap.at, sfs);
        }
        let first = self.prev_conn_at.is_none();
        let dt = since(self.prev_conn_at, snap.at);
        let mut prev = std::mem::take(&mut self.prev_conn);
        let mut next = map_with(snap.conns.len());
        let mut conns = Vec::with_capacity(snap.conns.len());
        for c in snap.conns {
            let sfs = c
                .token
                .and_then(|t| self.by_token.get(&t))
                .map(Vec::as_slice)
                .unwrap_or(&[]);
            let acked = c
                .bytes_acked
                .unwrap_or_else(|| sfs.iter().map(|s| s.sf.bytes_acked).sum());
            let received = c
                .bytes_received
                .unwrap_or_else(|| sfs.iter().map(|s| s.sf.bytes_received).sum());
            let key = (c.local, c.remote);
            let p = prev.remove(&key);
            next.insert(key, (acked, received));
            let out = grew(p.map(|p| p.0), acked, first);
            let inn = grew(p.map(|p| p.1), received, first);
            conns.push(ConnStat {
                local: c.local,
                remote: c.remote,
                state: c.state,
                token: c.token,
                process: c.process,
                fell_back: c.fell_back,
                subflows: if sfs.is_empty() {
                    c.subflows_hint
                } else {
                    sfs.len()
                },
                backups: sfs.iter().filter(|s| s.sf.backup).count(),
                out_bps: per_second(out, dt),
                in_bps: per_second(inn, dt),
                bytes: acked.saturating_add(received),
                rtt_us: sfs.iter().map(|s| s.sf.rtt_us).max().unwrap_or(0),
            });
        }
        self.prev_conn = next;
        self.prev_conn_at = Some(snap.at);
        self.conns = conns;
        self.samples += 1;
        self.ifaces = self.aggregate_ifaces(&snap.ifaces, fresh);
    }

    fn take_subflows(&mut self, at: Duration, sfs: Vec<SubflowIn>) {
        let first = self.prev_sf_at.is_none();
        let dt = since(self.prev_sf_at, at);
        let mut prev = std::mem::take(&mut self.prev_sf);
        let mut next = map_with(sfs.len());
        let mut by_token: FastMap<u32, Vec<SubflowStat>> = map_with(sfs.len());
        let mut acc: HashMap<Arc<str>, Acc> = HashMap::new();
        self.subflow_count = sfs.len();
        for sf in sfs {
            let key = (sf.local, sf.remote);
            let now = Counters {
                acked: sf.bytes_acked,
                received: sf.bytes_received,
                retrans: sf.total_retrans,
                data_segs_out: sf.data_segs_out,
            };
            let p = prev.remove(&key);
            next.insert(key, now);
            let out = grew(p.map(|p| p.acked), now.acked, first);
            let inn = grew(p.map(|p| p.received), now.received, first);
            let retrans = grew(p.map(|p| p.retrans as u64), now.retrans as u64, first) as u32;
            let segs = grew(
                p.map(|p| p.data_segs_out as u64),
                now.data_segs_out as u64,
                first,
            ) as u32;
            let st = SubflowStat {
                out_bps: per_second(out, dt),
                in_bps: per_second(inn, dt),
                retrans_delta: retrans,
                segs_delta: segs,
                sf,
            };
            let name = st.sf.dev.clone().unwrap_or_else(|| Arc::from("?"));
            let a = acc.entry(name).or_default();
            a.subflows += 1;
            a.backups += usize::from(st.sf.backup);
            if st.sf.rtt_us > 0 {
                a.rtt_sum += st.sf.rtt_us as u64;
                a.rtt_n += 1;
            }
            a.in_bps = a.in_bps.saturating_add(st.in_bps);
            a.out_bps = a.out_bps.saturating_add(st.out_bps);
            a.retrans += st.retrans_delta as u64;
            a.segs += st.segs_delta as u64;
            by_token.entry(st.sf.token).or_default().push(st);
        }
        for v in by_token.values_mut() {
            if v.len() > 1 {
                v.sort_by_key(|s| (s.sf.local, s.sf.remote));
            }
        }
        self.prev_sf = next;
        self.prev_sf_at = Some(at);
        self.by_token = by_token;
        self.acc = acc;
        self.subflow_samples += 1;
    }

    /// Per-interface rows; the history grows only with fresh subflows.
    fn aggregate_ifaces(&mut self, given: &[IfaceIn], fresh: bool) -> Vec<IfaceStat> {
        let mut out: Vec<IfaceStat> = given
            .iter()
            .map(|i| IfaceStat {
                name: i.name.clone(),
                state: i.state.clone(),
                role: i.role.clone(),
                rtt_ms: i.daemon_rtt_ms,
                loss: i.daemon_loss,
                ..IfaceStat::default()
            })
            .collect();
        // Subflows on interfaces not listed (or unknown: "?") get a row too.
        let mut extra: Vec<Arc<str>> = self
            .acc
            .keys()
            .filter(|k| !given.iter().any(|i| i.name == **k))
            .cloned()
            .collect();
        extra.sort();
        for name in extra {
            out.push(IfaceStat {
                name,
                state: "-".into(),
                role: "-".into(),
                ..IfaceStat::default()
            });
        }
        for row in &mut out {
            if let Some(a) = self.acc.get(&row.name) {
                row.subflows = a.subflows;
                row.backups = a.backups;
                row.in_bps = a.in_bps;
                row.out_bps = a.out_bps;
                if row.rtt_ms.is_none() && a.rtt_n > 0 {
                    row.rtt_ms = Some(a.rtt_sum as f64 / a.rtt_n as f64 / 1000.0);
                }
                // As the daemon's meter: a new subflow's SYN retransmission
                // over a request or two is not 50 % loss.
                if row.loss.is_none() && a.segs >= braid_policy::health::LOSS_MIN_SEGS {
                    row.loss = Some((a.retrans as f64 / a.segs as f64).min(1.0));
                }
            }
            let h = self.history.entry(row.name.clone()).or_default();
            if fresh {
                if h.len() == HISTORY {
                    h.pop_front();
                }
                h.push_back(row.in_bps.saturating_add(row.out_bps));
            }
            row.history = h.iter().copied().collect();
        }
        // Busy interfaces first, then those up, then by name.
        out.sort_by(|a, b| {
            (b.subflows > 0)
                .cmp(&(a.subflows > 0))
                .then((b.state == "up").cmp(&(a.state == "up")))
                .then(a.name.cmp(&b.name))
        });
        // Forget the history of interfaces gone.
        self.history.retain(|k, _| out.iter().any(|r| &r.name == k));
        out
    }
}

/// What the connection rows are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// One row per connection up to `AUTO_LIMIT` connections, else by remote.
    Auto,
    Connection,
    Remote,
    Process,
}

/// Above this many connections (after the filter), `Auto` groups by remote.
pub const AUTO_LIMIT: usize = 50;

impl Group {
    pub fn next(self) -> Group {
        match self {
            Group::Auto => Group::Connection,
            Group::Connection => Group::Remote,
            Group::Remote => Group::Process,
            Group::Process => Group::Auto,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Group::Auto => "auto",
            Group::Connection => "connection",
            Group::Remote => "remote",
            Group::Process => "process",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// In + out goodput, highest first.
    Rate,
    /// Bytes moved in total, most first.
    Bytes,
    /// RTT, highest first.
    Rtt,
    /// Subflows (or connections, for groups), most first.
    Count,
    /// Remote address, then local, ascending.
    Address,
}

impl SortKey {
    pub fn next(self) -> SortKey {
        match self {
            SortKey::Rate => SortKey::Bytes,
            SortKey::Bytes => SortKey::Rtt,
            SortKey::Rtt => SortKey::Count,
            SortKey::Count => SortKey::Address,
            SortKey::Address => SortKey::Rate,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            SortKey::Rate => "rate",
            SortKey::Bytes => "bytes",
            SortKey::Rtt => "rtt",
            SortKey::Count => "subflows",
            SortKey::Address => "address",
        }
    }
}

/// How the rows are chosen.
#[derive(Debug, Clone)]
pub struct ViewOpts {
    pub group: Group,
    pub sort: SortKey,
    /// Case-insensitive substring of local, remote or process; empty: all.
    pub filter: String,
}

impl Default for ViewOpts {
    fn default() -> Self {
        ViewOpts {
            group: Group::Auto,
            sort: SortKey::Rate,
            filter: String::new(),
        }
    }
}

/// A row of the connections pane: one connection or a group of them.
#[derive(Debug, Clone, PartialEq)]
pub enum Row {
    Conn(usize),
    Group(GroupRow),
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupRow {
    pub key: String,
    pub conns: usize,
    pub subflows: usize,
    pub backups: usize,
    pub in_bps: u64,
    pub out_bps: u64,
    pub bytes: u64,
    pub rtt_us: u32,
}

/// The rows to draw.
#[derive(Debug, Clone)]
pub struct Rows {
    /// At most the `max` asked for, best first.
    pub rows: Vec<Row>,
    /// Connections that passed the filter.
    pub matched: usize,
    /// Rows (connections or groups) left out beyond `max`.
    pub more: usize,
    /// The grouping actually used (`Auto` resolved).
    pub group: Group,
}

fn sock(a: Option<SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

/// Does a connection match the filter (`needle` already lower-case)?
pub fn matches(c: &ConnStat, needle: &str) -> bool {
    if needle.is_empty() {
        return true;
    }
    let hay = format!(
        "{} {} {}",
        sock(c.local),
        sock(c.remote),
        c.process.as_deref().unwrap_or("")
    )
    .to_lowercase();
    hay.contains(needle)
}

/// Order two items by key: bigger first for figures, ascending for names.
fn order(
    key: SortKey,
    a: (u64, u64, u32, usize, &str),
    b: (u64, u64, u32, usize, &str),
) -> std::cmp::Ordering {
    let by = match key {
        SortKey::Rate => b.0.cmp(&a.0),
        SortKey::Bytes => b.1.cmp(&a.1),
        SortKey::Rtt => b.2.cmp(&a.2),
        SortKey::Count => b.3.cmp(&a.3),
        SortKey::Address => std::cmp::Ordering::Equal,
    };
    by.then_with(|| a.4.cmp(b.4))
}

/// Keep the best `max` of `v` by `cmp`, sorted: O(n) + O(max log max).
fn top_n<T>(v: &mut Vec<T>, max: usize, cmp: impl Fn(&T, &T) -> std::cmp::Ordering) -> usize {
    let more = v.len().saturating_sub(max);
    if max == 0 {
        v.clear();
        return more;
    }
    if v.len() > max {
        v.select_nth_unstable_by(max - 1, &cmp);
        v.truncate(max);
    }
    v.sort_by(cmp);
    more
}

impl Model {
    /// The rows to draw, at most `max`.
    pub fn rows(&self, opts: &ViewOpts, max: usize) -> Rows {
        let needle = opts.filter.to_lowercase();
        let picked: Vec<usize> = (0..self.conns.len())
            .filter(|i| matches(&self.conns[*i], &needle))
            .collect();
        let matched = picked.len();
        let group = match opts.group {
            Group::Auto if matched <= AUTO_LIMIT => Group::Connection,
            Group::Auto => Group::Remote,
            g => g,
        };
        if group == Group::Connection {
            // Address order needs the text; other keys only numbers.
            let keyed: Vec<(usize, String)> = picked
                .into_iter()
                .map(|i| {
                    let c = &self.conns[i];
                    let name = if opts.sort == SortKey::Address {
                        format!("{} {}", sock(c.remote), sock(c.local))
                    } else {
                        String::new()
                    };
                    (i, name)
                })
                .collect();
            let mut keyed = keyed;
            let conns = &self.conns;
            let more = top_n(&mut keyed, max, |a, b| {
                let (x, y) = (&conns[a.0], &conns[b.0]);
                order(
                    opts.sort,
                    (x.in_bps + x.out_bps, x.bytes, x.rtt_us, x.subflows, &a.1),
                    (y.in_bps + y.out_bps, y.bytes, y.rtt_us, y.subflows, &b.1),
                )
                .then(a.0.cmp(&b.0))
            });
            return Rows {
                rows: keyed.into_iter().map(|(i, _)| Row::Conn(i)).collect(),
                matched,
                more,
                group,
            };
        }
        // Keys as found (no text per connection); named once per group.
        #[derive(PartialEq, Eq, Hash)]
        enum Key<'a> {
            Addr(Option<SocketAddr>),
            Proc(Option<&'a str>),
        }
        let mut groups: FastMap<Key, GroupRow> = map_with(64);
        for i in picked {
            let c = &self.conns[i];
            let key = match group {
                Group::Process => Key::Proc(
                    c.process
                        .as_deref()
                        .map(|p| p.split('[').next().unwrap_or(p)),
                ),
                _ => Key::Addr(c.remote),
            };
            let g = groups.entry(key).or_default();
            g.conns += 1;
            g.subflows += c.subflows;
            g.backups += c.backups;
            g.in_bps = g.in_bps.saturating_add(c.in_bps);
            g.out_bps = g.out_bps.saturating_add(c.out_bps);
            g.bytes = g.bytes.saturating_add(c.bytes);
            g.rtt_us = g.rtt_us.max(c.rtt_us);
        }
        let mut v: Vec<GroupRow> = groups
            .into_iter()
            .map(|(key, mut g)| {
                g.key = match key {
                    Key::Addr(a) => sock(a),
                    Key::Proc(Some(p)) => p.to_string(),
                    Key::Proc(None) => "(unknown process)".into(),
                };
                g
            })
            .collect();
        let more = top_n(&mut v, max, |a, b| {
            order(
                opts.sort,
                (a.in_bps + a.out_bps, a.bytes, a.rtt_us, a.conns, &a.key),
                (b.in_bps + b.out_bps, b.bytes, b.rtt_us, b.conns, &b.key),
            )
        });
        Rows {
            rows: v.into_iter().map(Row::Group).collect(),
            matched,
            more,
            group,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn sf(token: u32, local: &str, remote: &str, dev: &str, acked: u64, recv: u64) -> SubflowIn {
        SubflowIn {
            token,
            local: addr(local),
            remote: addr(remote),
            dev: Some(Arc::from(dev)),
            state: "established",
            rtt_us: 10_000,
            bytes_acked: acked,
            bytes_received: recv,
            ..SubflowIn::default()
        }
    }

    /// A connection whose counters are the sums of its subflows'.
    fn conn(token: u32, local: &str, remote: &str, proc_: Option<&str>) -> ConnIn {
        ConnIn {
            local: addr(local),
            remote: addr(remote),
            state: "established",
            token: Some(token),
            process: proc_.map(Arc::from),
            subflows_hint: 1,
            ..ConnIn::default()
        }
    }

    fn iface(name: &str) -> IfaceIn {
        IfaceIn {
            name: Arc::from(name),
            state: "up".into(),
            role: "subflow".into(),
            ..IfaceIn::default()
        }
    }

    fn snap(ms: u64, conns: Vec<ConnIn>, sfs: Option<Vec<SubflowIn>>) -> Snapshot {
        Snapshot {
            at: Duration::from_millis(ms),
            ifaces: vec![iface("eth0"), iface("wlan0")],
            conns,
            subflows: sfs,
        }
    }

    fn one(ms: u64, acked: u64, recv: u64) -> Snapshot {
        snap(
            ms,
            vec![conn(1, "10.0.0.1:1000", "10.9.9.9:443", None)],
            Some(vec![sf(
                1,
                "10.0.0.1:1000",
                "10.9.9.9:443",
                "eth0",
                acked,
                recv,
            )]),
        )
    }

    #[test]
    fn rates_are_deltas_over_the_interval() {
        let mut m = Model::new();
        m.update(one(0, 1000, 5000));
        // First refresh: no interval yet, no rate.
        assert_eq!((m.conns[0].out_bps, m.conns[0].in_bps), (0, 0));
        m.update(one(250, 1000 + 250_000, 5000 + 500));
        assert_eq!(m.conns[0].out_bps, 1_000_000);
        assert_eq!(m.conns[0].in_bps, 2_000);
        assert_eq!((m.conns[0].subflows, m.conns[0].bytes), (1, 256_500));
        let eth0 = &m.ifaces[0];
        assert_eq!(
            (&*eth0.name, eth0.out_bps, eth0.subflows),
            ("eth0", 1_000_000, 1)
        );
        assert_eq!(m.ifaces[1].subflows, 0);
        assert_eq!(eth0.history, vec![0, 1_002_000]);
        assert_eq!(eth0.rtt_ms, Some(10.0));
        assert_eq!(m.subflows_of(&m.conns[0]).len(), 1);
    }

    #[test]
    fn connection_counters_win_and_subflows_may_be_skipped() {
        let mut m = Model::new();
        let c = |acked| ConnIn {
            bytes_acked: Some(acked),
            bytes_received: Some(0),
            ..conn(1, "10.0.0.1:1000", "10.9.9.9:443", None)
        };
        let sfs = || {
            Some(vec![
                sf(1, "10.0.0.1:1000", "10.9.9.9:443", "eth0", 0, 0),
                sf(1, "10.0.0.2:1000", "10.9.9.9:443", "wlan0", 0, 0),
            ])
        };
        m.update(snap(0, vec![c(0)], sfs()));
        m.update(snap(500, vec![c(1000)], None));
        // Connection rate from its own counters, every refresh; subflows
        // kept from their last read, the history not grown without one.
        assert_eq!((m.conns[0].out_bps, m.conns[0].subflows), (2000, 2));
        assert_eq!(m.ifaces[0].history.len(), 1);
        m.update(snap(1000, vec![c(1000)], sfs()));
        assert_eq!(m.conns[0].out_bps, 0);
        assert_eq!((m.ifaces[0].history.len(), m.subflow_samples), (2, 2));
        // Not read yet: the kernel's count stands in.
        let mut m = Model::new();
        m.update(snap(0, vec![c(0)], None));
        assert_eq!(m.conns[0].subflows, 1);
    }

    #[test]
    fn counter_going_backwards_is_a_new_socket() {
        assert_eq!(grew(Some(100), 150, false), 50);
        assert_eq!(grew(Some(100), 40, false), 40);
        assert_eq!(grew(None, 40, true), 0);
        assert_eq!(grew(None, 40, false), 40);
        let mut m = Model::new();
        m.update(one(0, 1_000_000, 0));
        m.update(one(1000, 300, 0));
        // Not a huge wrapped-around figure: the 300 bytes of the new socket.
        assert_eq!(m.conns[0].out_bps, 300);
        assert_eq!(m.ifaces[0].out_bps, 300);
    }

    #[test]
    fn vanished_connections_are_forgotten_and_zero_interval_is_safe() {
        let mut m = Model::new();
        m.update(one(0, 10, 10));
        m.update(one(0, 10, 10));
        assert_eq!(m.conns[0].out_bps, 0);
        m.update(snap(100, vec![], Some(vec![])));
        assert!(m.conns.is_empty() && m.prev_sf.is_empty() && m.prev_conn.is_empty());
        // Back again after vanishing: counted as new since the last refresh.
        m.update(one(200, 10, 10));
        assert_eq!(m.conns[0].out_bps, 100);
        // Time going backwards gives no rate, not a panic.
        m.update(snap(50, vec![], None));
        assert_eq!(m.samples, 5);
    }

    #[test]
    fn subflows_on_unknown_interfaces_get_a_row_and_loss_is_computed() {
        let mut m = Model::new();
        let mk = |ms, retrans, segs| {
            let mut s = sf(1, "10.0.0.1:1", "10.9.9.9:443", "tun7", 0, 0);
            s.total_retrans = retrans;
            s.data_segs_out = segs;
            let mut nodev = sf(1, "10.0.0.1:2", "10.9.9.9:443", "x", 0, 0);
            nodev.dev = None;
            nodev.backup = true;
            snap(
                ms,
                vec![conn(1, "10.0.0.1:1", "10.9.9.9:443", None)],
                Some(vec![s, nodev]),
            )
        };
        m.update(mk(0, 0, 100));
        m.update(mk(1000, 5, 200));
        let names: Vec<&str> = m.ifaces.iter().map(|i| &*i.name).collect();
        assert_eq!(names, ["?", "tun7", "eth0", "wlan0"]);
        assert_eq!(m.ifaces[1].loss, Some(0.05));
        assert_eq!((m.ifaces[0].subflows, m.ifaces[0].backups), (1, 1));
        assert_eq!((m.conns[0].subflows, m.conns[0].backups), (2, 1));
    }

    #[test]
    fn daemon_figures_win_over_kernel_ones() {
        let mut m = Model::new();
        let mut s = one(0, 0, 0);
        s.ifaces[0].daemon_rtt_ms = Some(42.0);
        s.ifaces[0].daemon_loss = Some(0.5);
        m.update(s);
        assert_eq!(m.ifaces[0].rtt_ms, Some(42.0));
        assert_eq!(m.ifaces[0].loss, Some(0.5));
    }

    #[test]
    fn history_is_bounded() {
        let mut m = Model::new();
        for t in 0..(HISTORY as u64 + 30) {
            m.update(snap(t * 250, vec![], Some(vec![])));
        }
        assert_eq!(m.ifaces[0].history.len(), HISTORY);
    }

    /// `n` connections to `remotes` servers, connection i moving i bytes/s out.
    fn many(n: usize, remotes: usize) -> Model {
        let build = |ms: u64, scale: u64| {
            let mut conns = Vec::new();
            let mut sfs = Vec::new();
            for i in 0..n {
                let local = format!("10.0.{}.{}:{}", i / 60000, 1 + i % 200, 1024 + i % 60000);
                let remote = format!("10.9.9.{}:443", i % remotes);
                let p = format!("proc{}[{}]", i % 3, 100 + i % 3);
                conns.push(conn(i as u32, &local, &remote, Some(&p)));
                sfs.push(sf(i as u32, &local, &remote, "eth0", i as u64 * scale, 0));
            }
            snap(ms, conns, Some(sfs))
        };
        let mut m = Model::new();
        m.update(build(0, 0));
        m.update(build(1000, 1));
        m
    }

    /// The connections the rows show, in order: none may be a group.
    fn conn_rows(r: &Rows) -> Vec<usize> {
        r.rows
            .iter()
            .map(|row| match row {
                Row::Conn(i) => *i,
                Row::Group(_) => panic!("not grouped"),
            })
            .collect()
    }

    /// The group rows, in order: none may be a connection.
    fn group_rows(r: &Rows) -> Vec<&GroupRow> {
        r.rows
            .iter()
            .map(|row| match row {
                Row::Group(g) => g,
                Row::Conn(_) => panic!("grouped"),
            })
            .collect()
    }

    #[test]
    fn top_n_by_rate_with_and_more() {
        let m = many(20, 20);
        let opts = ViewOpts {
            group: Group::Connection,
            ..ViewOpts::default()
        };
        let r = m.rows(&opts, 5);
        assert_eq!((r.matched, r.more, r.rows.len()), (20, 15, 5));
        let rates: Vec<u64> = conn_rows(&r).iter().map(|i| m.conns[*i].out_bps).collect();
        assert_eq!(rates, [19, 18, 17, 16, 15]);
        let none = m.rows(&opts, 0);
        assert_eq!((none.rows.len(), none.more), (0, 20));
    }

    #[test]
    fn auto_groups_by_remote_when_many() {
        let m = many(1000, 4);
        let r = m.rows(&ViewOpts::default(), 10);
        assert_eq!(r.group, Group::Remote);
        assert_eq!((r.rows.len(), r.more, r.matched), (4, 0, 1000));
        let g = group_rows(&r)[0];
        // 10.9.9.3 has connections 3, 7, ..., 999: the most goodput.
        assert_eq!(g.key, "10.9.9.3:443");
        assert_eq!((g.conns, g.subflows), (250, 250));
        assert_eq!(g.out_bps, (0..250).map(|k| 3 + 4 * k).sum::<u64>());
        let few = many(10, 4);
        assert_eq!(few.rows(&ViewOpts::default(), 10).group, Group::Connection);
    }

    #[test]
    fn group_by_process_and_filter() {
        let m = many(30, 30);
        let opts = ViewOpts {
            group: Group::Process,
            sort: SortKey::Address,
            filter: String::new(),
        };
        let r = m.rows(&opts, 10);
        let keys: Vec<String> = group_rows(&r)
            .iter()
            .map(|g| format!("{}:{}", g.key, g.conns))
            .collect();
        assert_eq!(keys, ["proc0:10", "proc1:10", "proc2:10"]);
        let f = ViewOpts {
            group: Group::Connection,
            sort: SortKey::Address,
            filter: "PROC1".into(),
        };
        let r = m.rows(&f, 100);
        assert_eq!(r.matched, 10);
        let f = ViewOpts {
            filter: "10.9.9.7:".into(),
            ..f
        };
        let r = m.rows(&f, 100);
        assert_eq!(r.matched, 1);
        let f = ViewOpts {
            filter: "no such thing".into(),
            ..f
        };
        assert_eq!(m.rows(&f, 100).rows.len(), 0);
    }

    #[test]
    fn sort_keys_cycle_and_order() {
        let mut k = SortKey::Rate;
        for _ in 0..5 {
            k = k.next();
        }
        assert_eq!(k, SortKey::Rate);
        let mut g = Group::Auto;
        for _ in 0..4 {
            g = g.next();
        }
        assert_eq!(g, Group::Auto);
        let m = many(10, 10);
        let opts = ViewOpts {
            group: Group::Connection,
            sort: SortKey::Address,
            filter: String::new(),
        };
        let r = m.rows(&opts, 3);
        let remotes: Vec<String> = conn_rows(&r)
            .iter()
            .map(|i| sock(m.conns[*i].remote))
            .collect();
        assert_eq!(remotes, ["10.9.9.0:443", "10.9.9.1:443", "10.9.9.2:443"]);
    }

    #[test]
    fn odd_input_does_not_panic() {
        let mut m = Model::new();
        let weird = ConnIn::default();
        m.update(Snapshot {
            at: Duration::ZERO,
            ifaces: vec![],
            conns: vec![weird.clone(), weird],
            subflows: Some(vec![SubflowIn::default(), SubflowIn::default()]),
        });
        m.update(Snapshot {
            at: Duration::from_secs(u64::MAX / 2),
            ifaces: vec![],
            conns: vec![],
            subflows: None,
        });
        for g in [
            Group::Auto,
            Group::Connection,
            Group::Remote,
            Group::Process,
        ] {
            let _ = m.rows(
                &ViewOpts {
                    group: g,
                    ..ViewOpts::default()
                },
                usize::MAX,
            );
        }
    }
}
