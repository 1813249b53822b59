//! Path health from subflow measurements: smoothed RTT, retransmission
//! rate, and progress (is anything acknowledged while data is outstanding).
//! Fed with samples and the time; no clock of its own.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;

use serde::Serialize;

/// One subflow as read from `tcp_info` (sock_diag).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubflowSample {
    pub local: SocketAddr,
    pub remote: SocketAddr,
    /// The interface the local address belongs to (filled in by the policy).
    pub ifindex: u32,
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub total_retrans: u32,
    pub segs_out: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Milliseconds since the last ACK arrived on this subflow.
    pub last_ack_recv_ms: u32,
    /// Bytes received so far, and milliseconds since data last arrived.
    pub bytes_received: u64,
    pub last_data_recv_ms: u32,
}

/// What the policy knows about one interface's paths.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct PathHealth {
    pub srtt_ms: Option<f64>,
    pub rttvar_ms: Option<f64>,
    /// Smoothed retransmission rate (retransmitted / sent segments).
    pub loss: f64,
    /// Over the threshold; cleared only below half of it (hysteresis).
    pub lossy: bool,
    /// Data outstanding and nothing acknowledged for this long (0 if not).
    pub stalled_ms: u64,
    pub subflows: usize,
    /// Since when (policy clock, ms) the path has been healthy, if it is.
    pub healthy_since_ms: Option<u64>,
    /// Data was arriving and has stopped for this long (0 if not).
    pub rx_silent_ms: u64,
    /// Why the path is thought unreachable (a probe went unanswered while
    /// data had stopped); cleared when data or a new subflow comes.
    pub unreachable: Option<String>,
    /// Local and remote address of the subflow that last received data:
    /// what a probe of this path tests.
    #[serde(skip)]
    pub probe_pair: Option<(std::net::IpAddr, std::net::IpAddr)>,
    /// A probe was sent for the current silence.
    #[serde(skip)]
    pub probed: bool,
    #[serde(skip)]
    rx_active_ms: Option<u64>,
    /// Received in bulk within `RX_MEMORY_MS`.
    #[serde(skip)]
    rx_recent: bool,
    #[serde(skip)]
    subflow_keys: Vec<SubflowKey>,
    #[serde(skip)]
    subflows_when_unreachable: Vec<SubflowKey>,
    #[serde(skip)]
    acc_retrans: u64,
    #[serde(skip)]
    acc_segs: u64,
    #[serde(skip)]
    last_traffic_ms: u64,
}

impl PathHealth {
    /// Stalled: nothing acknowledged for `stall_ms`, or two smoothed RTTs
    /// if that is longer (a slow path is given its due).
    pub fn is_stalled(&self, stall_ms: u64) -> bool {
        self.stalled_ms > 0 && self.stalled_ms >= self.stall_threshold_ms(stall_ms)
    }

    /// Silence after which a receiving path is probed: two smoothed RTTs
    /// (mid-transfer, data arrives many times per RTT), at least
    /// `PROBE_AFTER_MIN_MS`.
    pub fn probe_after_ms(&self) -> u64 {
        let rtt_based = self.srtt_ms.map(|r| (2.0 * r) as u64).unwrap_or(0);
        rtt_based.max(PROBE_AFTER_MIN_MS)
    }

    /// How long to wait for the probe's answer: what TCP would wait for an
    /// ACK before its (minimum-free) timeout, srtt + 4 x rttvar, at least
    /// srtt + 10 ms.
    pub fn probe_timeout_ms(&self) -> u64 {
        match (self.srtt_ms, self.rttvar_ms) {
            (Some(srtt), Some(var)) => (srtt + (4.0 * var).max(10.0)) as u64,
            _ => 200,
        }
    }

    /// Whether the path should be probed now: it was receiving, data has
    /// stopped for `probe_after_ms`, and it was not probed for this silence.
    pub fn wants_probe(&self) -> bool {
        self.rx_silent_ms > 0
            && self.rx_silent_ms >= self.probe_after_ms()
            && !self.probed
            && self.unreachable.is_none()
            && self.probe_pair.is_some()
    }

    /// Record a probe that went unanswered.
    pub fn mark_unreachable(&mut self, why: String) {
        self.unreachable = Some(why);
        self.subflows_when_unreachable = self.subflow_keys.clone();
        self.healthy_since_ms = None;
    }

    fn stall_threshold_ms(&self, stall_ms: u64) -> u64 {
        let rtt_based = self.srtt_ms.map(|r| (2.0 * r) as u64).unwrap_or(0);
        stall_ms.max(rtt_based)
    }

    /// Why the path is unhealthy, or None if it is healthy.
    pub fn problem(&self, stall_ms: u64, loss_threshold: f64) -> Option<String> {
        if let Some(why) = &self.unreachable {
            return Some(why.clone());
        }
        if self.is_stalled(stall_ms) {
            return Some(format!(
                "stalled: nothing acknowledged for {} ms with data outstanding",
                self.stalled_ms
            ));
        }
        if self.lossy {
            return Some(format!(
                "lossy: {:.1} % of segments retransmitted (threshold {:.1} %)",
                self.loss * 100.0,
                loss_threshold * 100.0
            ));
        }
        None
    }

    pub fn describe(&self) -> String {
        let rtt = self
            .srtt_ms
            .map(|r| format!("rtt {r:.1} ms"))
            .unwrap_or_else(|| "rtt unknown".into());
        format!(
            "{rtt}, loss {:.1} %{}",
            self.loss * 100.0,
            if self.stalled_ms > 0 {
                format!(", no ACK for {} ms", self.stalled_ms)
            } else {
                String::new()
            }
        )
    }
}

/// Minimum sent segments before a retransmission rate is trusted.
const MIN_SEGS: u64 = 20;
/// A path received at least this much between two rounds: it is in the
/// middle of a transfer, and a sudden silence means something.
const RX_ACTIVE_BYTES: u64 = 16 * 1024;
/// A silence counts only this long after the path last received actively.
const RX_MEMORY_MS: u64 = 2000;
pub const PROBE_AFTER_MIN_MS: u64 = 40;

pub type SubflowKey = (SocketAddr, SocketAddr);

/// What the tracker keeps of a subflow from one round to the next.
#[derive(Clone, Copy)]
struct SubflowMemory {
    total_retrans: u32,
    segs_out: u32,
    bytes_received: u64,
    /// Since when (policy clock) the subflow has had data outstanding.
    /// `last_ack_recv_ms` alone cannot tell a stall: an idle backup subflow
    /// given data after seconds of silence has not heard an ACK for
    /// seconds, yet it has waited for one only since the data went out.
    outstanding_since: Option<u64>,
}

/// How a subflow changed since the last round.
struct SubflowDelta {
    retrans: u64,
    segs: u64,
    received: u64,
    outstanding_since: Option<u64>,
}

#[derive(Default)]
pub struct HealthTracker {
    subflows: HashMap<SubflowKey, SubflowMemory>,
    pub paths: BTreeMap<u32, PathHealth>,
}

impl HealthTracker {
    /// Take one round of samples (all subflows of all connections).
    pub fn update(
        &mut self,
        now_ms: u64,
        samples: &[SubflowSample],
        stall_ms: u64,
        loss_threshold: f64,
        decay_ms: u64,
    ) {
        // One pass over the subflows: what changed, and what to remember.
        let mut memory: HashMap<SubflowKey, SubflowMemory> = HashMap::new();
        let mut delta: HashMap<SubflowKey, SubflowDelta> = HashMap::new();
        for s in samples {
            let key = (s.local, s.remote);
            let now = SubflowMemory {
                total_retrans: s.total_retrans,
                segs_out: s.segs_out,
                bytes_received: s.bytes_received,
                outstanding_since: None,
            };
            let before = self.subflows.get(&key).copied().unwrap_or(now);
            let outstanding_since =
                (s.unacked > 0).then(|| before.outstanding_since.unwrap_or(now_ms));
            delta.insert(
                key,
                SubflowDelta {
                    retrans: s.total_retrans.saturating_sub(before.total_retrans) as u64,
                    segs: s.segs_out.wrapping_sub(before.segs_out) as u64 % (1 << 31),
                    received: s.bytes_received.saturating_sub(before.bytes_received),
                    outstanding_since,
                },
            );
            memory.insert(
                key,
                SubflowMemory {
                    outstanding_since,
                    ..now
                },
            );
        }
        let mut per_if: BTreeMap<u32, Vec<&SubflowSample>> = BTreeMap::new();
        for s in samples {
            per_if.entry(s.ifindex).or_default().push(s);
        }
        for (ifindex, subs) in &per_if {
            let h = self.paths.entry(*ifindex).or_default();
            h.subflows = subs.len();
            let rtts: Vec<&&SubflowSample> = subs.iter().filter(|s| s.rtt_us > 0).collect();
            if let Some(best) = rtts.iter().min_by_key(|s| s.rtt_us) {
                h.srtt_ms = Some(best.rtt_us as f64 / 1000.0);
                h.rttvar_ms = Some(best.rttvar_us as f64 / 1000.0);
            }
            for s in subs {
                let d = &delta[&(s.local, s.remote)];
                h.acc_retrans += d.retrans;
                h.acc_segs += d.segs;
            }
            if h.acc_segs >= MIN_SEGS {
                let sample = (h.acc_retrans as f64 / h.acc_segs as f64).min(1.0);
                h.loss = 0.5 * h.loss + 0.5 * sample;
                h.acc_retrans = 0;
                h.acc_segs = 0;
                h.last_traffic_ms = now_ms;
            } else if now_ms.saturating_sub(h.last_traffic_ms) >= decay_ms && h.loss > 0.0 {
                // An idle path's old loss fades, so it can be tried again.
                h.loss /= 2.0;
                h.last_traffic_ms = now_ms;
            }
            if h.loss > loss_threshold {
                h.lossy = true;
            } else if h.loss < loss_threshold / 2.0 {
                h.lossy = false;
            }
            // Stalled: some subflow has waited for an ACK since its data
            // went out, and no subflow of the path has heard anything since.
            let waiting = subs
                .iter()
                .filter_map(|s| {
                    let since = delta[&(s.local, s.remote)].outstanding_since?;
                    Some((s.last_ack_recv_ms as u64).min(now_ms - since))
                })
                .max();
            let freshest = subs.iter().map(|s| s.last_ack_recv_ms).min().unwrap_or(0);
            h.stalled_ms = waiting.map_or(0, |w| w.min(freshest as u64));
            // Receiving: data arrived in bulk since the last round.
            let busiest = subs
                .iter()
                .map(|s| (delta[&(s.local, s.remote)].received, *s))
                .max_by_key(|(grew, _)| *grew);
            if let Some((grew, s)) = busiest {
                if grew >= RX_ACTIVE_BYTES {
                    h.rx_active_ms = Some(now_ms);
                    h.probed = false;
                    h.unreachable = None;
                    h.probe_pair = Some((s.local.ip(), s.remote.ip()));
                }
            }
            h.rx_recent = h
                .rx_active_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= RX_MEMORY_MS);
            let quiet = subs.iter().map(|s| s.last_data_recv_ms).min().unwrap_or(0) as u64;
            h.rx_silent_ms = if h.rx_recent { quiet } else { 0 };
            h.subflow_keys = subs.iter().map(|s| (s.local, s.remote)).collect();
            // A subflow the path did not have when the probe failed: the
            // path answers handshakes again.
            if h.unreachable.is_some()
                && subs
                    .iter()
                    .any(|s| !h.subflows_when_unreachable.contains(&(s.local, s.remote)))
            {
                h.unreachable = None;
            }
            let ok = h.problem(stall_ms, loss_threshold).is_none();
            h.healthy_since_ms = match (ok, h.healthy_since_ms) {
                (true, Some(t)) => Some(t),
                (true, None) => Some(now_ms),
                (false, _) => None,
            };
        }
        // Paths without subflows now keep their last estimate (a backup
        // path has no fresh data); interfaces gone are forgotten by the policy.
        self.subflows = memory;
    }

    /// How long until some path would be declared stalled if no ACK
    /// arrives: the next health check should come no later than that.
    pub fn until_next_stall_ms(&self, stall_ms: u64, probing: bool) -> Option<u64> {
        let stalls = self
            .paths
            .values()
            .filter(|h| h.stalled_ms > 0 && !h.is_stalled(stall_ms))
            .map(|h| h.stall_threshold_ms(stall_ms) - h.stalled_ms);
        // A receiving path is checked when a silence would be probed.
        let silences = self
            .paths
            .values()
            .filter(|h| probing && h.rx_recent && !h.probed && h.unreachable.is_none())
            .map(|h| h.probe_after_ms().saturating_sub(h.rx_silent_ms));
        stalls.chain(silences).min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(
        ifindex: u32,
        retrans: u32,
        segs: u32,
        unacked: u32,
        last_ack: u32,
        rtt_us: u32,
    ) -> SubflowSample {
        SubflowSample {
            local: SocketAddr::from(([10, 0, ifindex as u8, 1], 1000)),
            remote: "10.9.9.9:80".parse().unwrap(),
            ifindex,
            rtt_us,
            rttvar_us: rtt_us / 4,
            total_retrans: retrans,
            segs_out: segs,
            unacked,
            last_ack_recv_ms: last_ack,
            bytes_received: 0,
            last_data_recv_ms: 0,
        }
    }

    #[test]
    fn loss_rate_needs_enough_segments_and_is_smoothed() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 20_000)], 300, 0.05, 3000);
        t.update(100, &[s(1, 1, 10, 0, 0, 20_000)], 300, 0.05, 3000);
        assert_eq!(t.paths[&1].loss, 0.0, "10 segments are not enough");
        t.update(200, &[s(1, 4, 40, 0, 0, 20_000)], 300, 0.05, 3000);
        assert!(
            (t.paths[&1].loss - 0.05).abs() < 1e-9,
            "{}",
            t.paths[&1].loss
        );
        assert_eq!(t.paths[&1].srtt_ms, Some(20.0));
    }

    #[test]
    fn stall_is_outstanding_data_without_acks() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 100, 5, 50, 20_000)], 300, 0.05, 3000);
        assert!(t.paths[&1].problem(300, 0.05).is_none());
        assert_eq!(t.paths[&1].healthy_since_ms, Some(0));
        t.update(400, &[s(1, 0, 100, 5, 400, 20_000)], 300, 0.05, 3000);
        assert!(t.paths[&1].problem(300, 0.05).unwrap().contains("stalled"));
        assert_eq!(t.paths[&1].healthy_since_ms, None);
        // Nothing outstanding: an idle path is not stalled.
        t.update(500, &[s(1, 0, 100, 0, 5000, 20_000)], 300, 0.05, 3000);
        assert!(t.paths[&1].problem(300, 0.05).is_none());
        assert_eq!(t.paths[&1].healthy_since_ms, Some(500));
    }

    #[test]
    fn an_idle_subflow_given_data_waits_only_since_then() {
        let mut t = HealthTracker::default();
        // A backup subflow idle for 4 s: nothing outstanding, not stalled.
        t.update(0, &[s(1, 0, 10, 0, 4000, 80_000)], 150, 0.05, 3000);
        assert_eq!(t.paths[&1].stalled_ms, 0);
        // Data moved onto it: its last ACK is 4 s old, but it has waited 0 ms.
        t.update(100, &[s(1, 0, 40, 30, 4100, 80_000)], 150, 0.05, 3000);
        assert_eq!(t.paths[&1].stalled_ms, 0);
        assert!(t.paths[&1].problem(150, 0.05).is_none());
        // 100 ms later still nothing: waiting 100 ms, threshold 2 x 80 ms.
        t.update(200, &[s(1, 0, 40, 30, 4200, 80_000)], 150, 0.05, 3000);
        assert_eq!(t.paths[&1].stalled_ms, 100);
        assert_eq!(t.until_next_stall_ms(150, true), Some(60));
        t.update(260, &[s(1, 0, 40, 30, 4260, 80_000)], 150, 0.05, 3000);
        assert!(t.paths[&1].problem(150, 0.05).unwrap().contains("stalled"));
        assert_eq!(t.until_next_stall_ms(150, true), None);
    }

    #[test]
    fn idle_loss_decays() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 1)], 300, 0.05, 1000);
        t.update(100, &[s(1, 20, 40, 0, 0, 1)], 300, 0.05, 1000);
        let l = t.paths[&1].loss;
        assert!(l > 0.2);
        t.update(1200, &[s(1, 20, 40, 0, 0, 1)], 300, 0.05, 1000);
        assert!(t.paths[&1].loss < l);
    }
}
