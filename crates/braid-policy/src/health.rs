//! Path health from subflow measurements: smoothed RTT, retransmission
//! rate, and progress (is anything acknowledged while data is outstanding).
//! Fed with samples and the time; no clock of its own.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

use crate::time::backoff_ms;

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
    /// Segments with data sent (tcpi_data_segs_out): what a
    /// retransmission is counted against. Not tcpi_segs_out, whose pure
    /// ACKs are never retransmitted: on a request/response connection
    /// they are a third of what is sent, and hid a third of the loss.
    pub data_segs_out: u32,
    /// Segments sent and not yet acknowledged.
    pub unacked: u32,
    /// Milliseconds since the last ACK arrived on this subflow.
    pub last_ack_recv_ms: u32,
    /// Bytes received so far, and milliseconds since data last arrived.
    pub bytes_received: u64,
    pub last_data_recv_ms: u32,
    /// Segments with data received so far, in order or not
    /// (tcpi_data_segs_in): `last_data_recv_ms` counts in-order data only.
    pub data_segs_in: u32,
    /// The lowest RTT the subflow has seen (tcpi_min_rtt; 0 if unknown).
    pub min_rtt_us: u32,
    /// How soon data answers this end's ACKs, as the receiver measures
    /// it (tcpi_rcv_rtt; 0 if unknown). A subflow that only receives
    /// takes `rtt_us` and `min_rtt_us` from its handshake alone.
    pub rcv_rtt_us: u32,
    /// Whether this end has the subflow as a backup, for a subflow this
    /// end opened (the connection's first, or a join once complete; None
    /// otherwise): what a flag change should have made it, and what the
    /// peer was told (see `Policy::note_missed_priorities` and
    /// `crate::backup_watch`). The host-wide policy gets None when the
    /// per-connection path manager runs the connections.
    pub local_backup: Option<bool>,
    /// A subflow this end joined whose join is not complete yet, on a
    /// connection the kernel's own path manager runs: an endpoint flag
    /// change made now passes it over (see `Policy::note_missed_priorities`).
    pub joining: bool,
    /// The connection's first subflow, opened by this end (it sent
    /// MP_CAPABLE): an endpoint's flag change always reaches it.
    pub first: bool,
    /// The connection's token at this end: subflows with the same one are
    /// one connection (0 when not known).
    pub conn: u32,
    /// Data segments that arrived behind a hole (tcpi_rcv_ooopack; 0 on
    /// kernels before 5.4): the peer's losses, as far as this end sees
    /// them (see `lost_on_the_way_in`).
    pub rcv_ooopack: u32,
}

/// The probes of a receiving path's current silence.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct SilenceProbes {
    /// How many went out.
    sent: u32,
    /// How long the silence had lasted when the last went out.
    last_at_silence_ms: u64,
    /// How long the last waits for its answer.
    last_waits_ms: u64,
    /// How long the silence had lasted when the last answered one went out.
    answered_at_silence_ms: Option<u64>,
}

/// What the policy knows about one interface's paths.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PathHealth {
    pub srtt_ms: Option<f64>,
    pub rttvar_ms: Option<f64>,
    /// The smoothed RTT of the path's slowest subflow (the farthest
    /// peer): how long a message to every peer may take.
    #[serde(skip)]
    pub slowest_srtt_ms: Option<f64>,
    /// The lowest RTT the subflows to the remote of `probe_pair` have
    /// seen: the path with no queue of ours in it. Or, if lower, how soon
    /// data answered this end there (`rcv_rtt_ms`).
    #[serde(default)]
    pub min_rtt_ms: Option<f64>,
    /// How soon data answers this end's ACKs, as the receiver measures it
    /// (tcpi_rcv_rtt, with TCP timestamps): the lowest over the subflows
    /// to the remote of `probe_pair` that only receive now (`only_receives`;
    /// a sending one's can be stale, and a too-low value would shorten the
    /// probe's wait). A subflow that only receives sends no data to time, so its srtt
    /// and minimum RTT are its handshake's: traced in the lab (1/10 ms,
    /// 10 % loss), a lost SYN-ACK left a 2 ms path at srtt 1003 ms, its
    /// silence was first probed a second after a blackhole, and the
    /// download stalled 431 ms; tcpi_rcv_rtt said 5.3 ms.
    #[serde(default)]
    pub rcv_rtt_ms: Option<f64>,
    /// srtt and rttvar of the best subflow to that remote.
    #[serde(skip)]
    probed_rtt_ms: Option<(f64, f64)>,
    /// The slowest answer to a path probe lately (it decays): a silence
    /// probe waits at least twice that.
    #[serde(skip)]
    slow_echo: Option<SlowEcho>,
    /// Smoothed retransmission rate (retransmitted / sent segments).
    pub loss: f64,
    /// Over the threshold; cleared only below half of it (hysteresis).
    pub lossy: bool,
    /// Data outstanding and nothing acknowledged for this long (0 if not).
    pub stalled_ms: u64,
    /// Some subflow has data outstanding (an ACK was due, even if it came
    /// under a millisecond ago and `stalled_ms` is 0).
    #[serde(skip)]
    pub outstanding: bool,
    pub subflows: usize,
    /// Since when (policy clock, ms) the path has been healthy, if it is.
    pub healthy_since_ms: Option<u64>,
    /// Data was arriving and has stopped for this long (0 if not).
    pub rx_silent_ms: u64,
    /// Why the path is thought unreachable (a probe went unanswered while
    /// data had stopped, or while a connection waited for an ACK); cleared
    /// when data, an ACK or a new subflow comes.
    pub unreachable: Option<String>,
    /// Distinct remote hosts whose connections show the current stall
    /// (their subflows have waited past the stall threshold). Measurements
    /// pool every user's connections, and one host's connections can stall
    /// because of that host (or whoever runs it): a stall is the path's only
    /// when seen towards `MIN_WITNESSES` hosts, or confirmed by a probe.
    pub stall_witnesses: usize,
    /// Distinct remote hosts whose own retransmission rate is over the
    /// threshold: the path is lossy for everyone only if
    /// `MIN_WITNESSES` of them are (a probe cannot measure loss).
    pub loss_witnesses: usize,
    /// The probe sent about the current stall, if any.
    #[serde(skip)]
    pub stall_probe: Option<StallProbe>,
    /// Local and remote address of the subflow that has waited longest for
    /// an ACK: what a stall probe tests.
    #[serde(skip)]
    pub stall_pair: Option<(IpAddr, IpAddr)>,
    /// Distinct remote hosts with subflows that have waited for an ACK at
    /// least as long as a stall probe would wait (`stall_probe_at_ms`).
    #[serde(skip)]
    waiting_witnesses: usize,
    #[serde(skip)]
    remote_loss: BTreeMap<IpAddr, RemoteLoss>,
    /// The health round before the path was marked unreachable (an ACK
    /// heard after it proves the path is there).
    #[serde(skip)]
    unreachable_since_ms: Option<u64>,
    /// When the path was last measured.
    #[serde(skip)]
    updated_ms: u64,
    /// Local and remote address of the subflow that last received data:
    /// what a probe of this path tests.
    #[serde(skip)]
    pub probe_pair: Option<(std::net::IpAddr, std::net::IpAddr)>,
    /// A probe of the current silence is under way (or went unanswered).
    #[serde(skip)]
    pub probed: bool,
    /// Data segments came since the last round (in order or not).
    #[serde(skip)]
    rx_arrived: bool,
    #[serde(skip)]
    silence_probes: SilenceProbes,
    /// The probe of the current silence went unanswered after waiting
    /// this long (ms); the verdict waits for the next round
    /// (`judge_unanswered_silence`).
    #[serde(skip)]
    silence_unanswered: Option<u64>,
    /// Data came on the path (a segment, in order or not) in a round
    /// after the current silence probe went out.
    #[serde(skip)]
    data_since_probe: bool,
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
    meter: LossMeter,
    /// The loss figure comes from echoes, not from traffic: the path was
    /// lossy and then carried none (it stands by after it was left).
    #[serde(default)]
    pub loss_probed: bool,
    /// Echoes sent to measure that loss since the last sample: answers
    /// heard and echoes lost.
    #[serde(skip)]
    echoes: (u32, u32),
    #[serde(skip)]
    last_echo_ms: Option<u64>,
    /// When the last echo's outcome came back: while they come, the loss
    /// does not fade (an echo never sent, or refused, stops that).
    #[serde(skip)]
    last_echo_result_ms: Option<u64>,
    /// Some echo to this path's peer was answered: only then do lost ones
    /// count (many hosts drop ICMP echo; their silence says nothing).
    #[serde(skip)]
    echo_heard: bool,
    /// A full sample went unanswered before any answer: the peer drops
    /// echoes, so none are sent until the path is no longer lossy.
    #[serde(skip)]
    echo_deaf: bool,
    /// When (policy clock, ms) the path last showed that it carries
    /// packets: an ACK on one of its subflows, or an answer to a probe or
    /// an echo.
    #[serde(skip)]
    heard_ms: Option<u64>,
    /// The check that a standby path still works before it takes traffic
    /// back (`want_check`).
    #[serde(skip)]
    check: Check,
}

/// A check that a path standing by still works, before it takes traffic
/// back: a standby carries nothing, so a path that failed meanwhile looks
/// as healthy as one that did not.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
enum Check {
    #[default]
    None,
    Wanted,
    /// To `remote`; taken as lost if no outcome is reported by `lost_ms`
    /// (`CHECK_REPORT_GRACE_MS` after the answer was due).
    Sent {
        remote: IpAddr,
        lost_ms: u64,
    },
    /// Unanswered by a peer never heard answering an echo on this path:
    /// that says nothing, and the path is taken back as before.
    Waived,
}

/// A check to send (`PathHealth::check_due`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckDue {
    pub local: IpAddr,
    pub remote: IpAddr,
    /// How long the prober waits for the answer.
    pub timeout_ms: u64,
    /// Sent again: the last check's outcome never came.
    pub again: bool,
}

impl CheckDue {
    /// What the reason of a check sent again adds.
    pub fn again_note(&self) -> &'static str {
        if self.again {
            " (sent again: the last check's outcome never came)"
        } else {
            ""
        }
    }
}

/// What a check's answer (or its absence) says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    Answered,
    /// Unanswered by a peer that answers echoes: the path does not take
    /// traffic back, and its time to be healthy starts again.
    Unanswered,
    /// Unanswered by a peer never heard answering: nothing learned.
    Waived,
}

/// What makes a smoothed loss rate, one per direction: segments are
/// accumulated until there are enough to trust a rate, which is then
/// averaged in; with no traffic for a while, the old rates fade. The
/// figure is the worse direction's: averaging both would halve a loss
/// that only one direction has (a request lost one time in ten, over
/// clean answers, is 5 %).
#[derive(Debug, Clone, Default, PartialEq)]
struct LossMeter {
    /// Segments sent and retransmitted by this end.
    sent: DirectionLoss,
    /// Segments received, and those estimated lost on the way in.
    received: DirectionLoss,
    /// When the last sample from traffic was taken.
    last_traffic_ms: u64,
    /// When a rate last changed (a sample of traffic or echoes, or a
    /// halving): what the fading counts from.
    last_sample_ms: u64,
    /// When the last round was.
    last_round_ms: Option<u64>,
}

/// One direction's smoothed loss rate, and what is accumulated for the
/// next sample.
#[derive(Debug, Clone, Default, PartialEq)]
struct DirectionLoss {
    lost: f64,
    segs: u64,
    rate: f64,
    /// A sample was taken before: the first is the rate as it is (averaged
    /// with a rate of 0 it was half the loss, and a path losing 10 % took
    /// two samples, 3.1 s at 50 segments a second, to be found).
    sampled: bool,
    /// The first round that counted segments for the sample under way.
    opened_ms: Option<u64>,
}

impl DirectionLoss {
    fn add(&mut self, lost: f64, segs: u64) {
        self.lost += lost;
        self.segs = self.segs.saturating_add(segs);
    }

    /// Takes a sample if at least `min_segs` segments were seen over at
    /// least `LOSS_SAMPLE_MIN_MS`; `last_round_ms`: when the segments
    /// first counted started to come, at the latest.
    fn sample(&mut self, min_segs: u64, last_round_ms: u64, now_ms: u64) -> bool {
        if self.segs == 0 {
            return false;
        }
        let opened = *self.opened_ms.get_or_insert(last_round_ms);
        if self.segs < min_segs || now_ms.saturating_sub(opened) < LOSS_SAMPLE_MIN_MS {
            return false;
        }
        let sample = (self.lost / self.segs as f64).min(1.0);
        self.rate = if self.sampled {
            0.5 * self.rate + 0.5 * sample
        } else {
            sample
        };
        self.sampled = true;
        self.lost = 0.0;
        self.segs = 0;
        self.opened_ms = None;
        true
    }
}

impl LossMeter {
    /// What changed on a subflow since the last round: segments sent and
    /// retransmitted, and segments received and estimated lost on the way
    /// in (when that is measured).
    fn add(&mut self, d: &SubflowDelta) {
        self.sent.add(d.retrans as f64, d.segs);
        if let Some(lost) = d.lost_on_the_way_in {
            self.received.add(lost, d.data_segs);
        }
    }

    /// The worse direction's rate.
    fn rate(&self) -> f64 {
        self.sent.rate.max(self.received.rate)
    }

    /// End of a round: a direction with enough segments gets a new
    /// sample; an idle path's (or host's) old loss is halved every
    /// `decay_ms`, so it can be tried again. `loss` is set to the figure.
    fn round(&mut self, loss: &mut f64, now_ms: u64, decay_ms: u64) {
        let last_round = self.last_round_ms.replace(now_ms).unwrap_or(now_ms);
        let sent = self.sent.sample(LOSS_MIN_SEGS, last_round, now_ms);
        let received = self.received.sample(LOSS_MIN_SEGS, last_round, now_ms);
        if sent || received {
            self.last_traffic_ms = now_ms;
            self.last_sample_ms = now_ms;
        } else if now_ms.saturating_sub(self.last_sample_ms) >= decay_ms && self.rate() > 0.0 {
            self.sent.rate /= 2.0;
            self.received.rate /= 2.0;
            self.last_sample_ms = now_ms;
        }
        *loss = self.rate();
    }

    /// A one-way loss measured with echoes (taken as the same both ways).
    fn echoed(&mut self, sample: f64, loss: &mut f64, now_ms: u64) {
        for d in [&mut self.sent, &mut self.received] {
            d.rate = 0.5 * d.rate + 0.5 * sample;
            d.sampled = true;
        }
        self.last_sample_ms = now_ms;
        *loss = self.rate();
    }

    /// Whether a sample from traffic was taken in the last round.
    fn sampled_traffic_at(&self, now_ms: u64) -> bool {
        self.last_traffic_ms == now_ms
    }
}

/// What is wrong with a path, and why in words (for decisions' reasons).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathProblem {
    pub kind: ProblemKind,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A probe went unanswered.
    Unreachable,
    /// Nothing acknowledged with data outstanding.
    Stalled,
    /// Too many segments (or echoes) lost: it still delivers.
    Lossy,
}

impl PathProblem {
    pub fn new(kind: ProblemKind, why: String) -> PathProblem {
        PathProblem { kind, why }
    }

    /// Whether the path still delivers data: a lossy path does, so its
    /// subflows are kept (as standbys) rather than removed.
    pub fn still_delivers(&self) -> bool {
        self.kind == ProblemKind::Lossy
    }
}

impl ProblemKind {
    /// As counted in the switch counters and metrics.
    pub fn name(self) -> &'static str {
        match self {
            ProblemKind::Unreachable => "unreachable",
            ProblemKind::Stalled => "stalled",
            ProblemKind::Lossy => "lossy",
        }
    }
}

impl std::fmt::Display for PathProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.why)
    }
}

impl PathHealth {
    /// Stalled: nothing acknowledged for `stall_ms`, or two smoothed RTTs
    /// if that is longer (a slow path is given its due).
    pub fn is_stalled(&self, stall_ms: u64) -> bool {
        self.stalled_ms > 0 && self.stalled_ms >= self.stall_threshold_ms(stall_ms)
    }

    /// Silence after which a receiving path is probed: one smoothed RTT
    /// (mid-transfer, data arrives many times per RTT), at least
    /// `PROBE_AFTER_MIN_MS`. An answer costs nothing; no answer within
    /// `probe_timeout_ms` (another RTT or more) makes two RTTs of silence
    /// and an unanswered echo. Two RTTs before the probe put detection at
    /// 5 RTTs on a 100 ms path (blackhole download stall ~800 ms).
    pub fn probe_after_ms(&self) -> u64 {
        let rtt_based = self.receiving_rtt_ms().map(|r| r as u64).unwrap_or(0);
        rtt_based.max(PROBE_AFTER_MIN_MS)
    }

    /// The RTT a receiving path's silence is measured against: the
    /// smoothed RTT, or how soon data answered this end if that is lower
    /// (`rcv_rtt_ms`: a subflow that only receives has the srtt of its
    /// handshake).
    pub fn receiving_rtt_ms(&self) -> Option<f64> {
        match (self.srtt_ms, self.rcv_rtt_ms) {
            (Some(s), Some(r)) => Some(s.min(r)),
            (s, r) => s.or(r),
        }
    }

    /// Why `probe_after_ms` is what it is (for a probe's reason).
    pub fn probe_after_basis(&self) -> String {
        match (self.srtt_ms, self.rcv_rtt_ms) {
            (Some(s), Some(r)) if r < s => format!(
                "one RTT as the receiver measures it ({r:.1} ms, below the smoothed RTT of {s:.1} ms, which a subflow that only receives takes from its handshake), at least {PROBE_AFTER_MIN_MS}"
            ),
            _ => format!("one smoothed RTT, at least {PROBE_AFTER_MIN_MS}"),
        }
    }

    /// How long to wait for the probe's answer: what TCP would wait for an
    /// ACK before its (minimum-free) timeout, srtt + 4 x rttvar, at least
    /// srtt + 10 ms.
    pub fn probe_timeout_ms(&self) -> u64 {
        match (self.srtt_ms, self.rttvar_ms) {
            (Some(srtt), Some(var)) => ack_wait_ms(srtt, var),
            _ => 200,
        }
    }

    /// How long to wait for the answer to a probe of a silent receiving
    /// path: no data of ours is queued on it (none arrives), so the echo
    /// takes about the path's minimum RTT. Twice that, at least
    /// `min_rtt + SILENT_PROBE_SLACK_MS`, never more than `probe_timeout_ms`
    /// and never less than twice the slowest recent answer. A client
    /// that only receives has its srtt and rttvar from the handshake alone
    /// (rttvar = srtt / 2 by RFC 6298), so srtt + 4 rttvar is 3 RTTs:
    /// 300 ms of a 450 ms detection on a 100 ms path.
    pub fn silence_probe_timeout_ms(&self, now_ms: u64) -> u64 {
        let tcp = self.silence_probe_tcp_ms();
        let Some(min_rtt) = self.min_rtt_ms.filter(|m| *m > 0.0) else {
            return tcp;
        };
        let quiet = (2.0 * min_rtt).max(min_rtt + SILENT_PROBE_SLACK_MS as f64) as u64;
        let seen = self
            .slow_echo
            .as_ref()
            .map_or(0, |e| (2.0 * e.rtt_at(now_ms)) as u64);
        quiet.min(tcp).max(seen)
    }

    /// srtt + 4 rttvar (at least srtt + 10) of the probed remote's best
    /// subflow, else of the path's.
    fn silence_probe_tcp_ms(&self) -> u64 {
        match self.probed_rtt_ms {
            Some((srtt, var)) => ack_wait_ms(srtt, var),
            None => self.probe_timeout_ms(),
        }
    }

    /// Why a silence probe waits what it waits (for its reason).
    pub fn silence_probe_basis(&self, now_ms: u64) -> String {
        let timeout = self.silence_probe_timeout_ms(now_ms);
        match self.min_rtt_ms.filter(|m| *m > 0.0) {
            None => format!("{timeout} ms: srtt + 4 rttvar, the path's minimum RTT is unknown"),
            Some(_) if timeout == self.silence_probe_tcp_ms() => {
                format!("{timeout} ms: srtt + 4 rttvar")
            }
            Some(m) => format!(
                "{timeout} ms: twice the minimum RTT ({m:.1} ms, at least {SILENT_PROBE_SLACK_MS} ms over it) or of the slowest recent answer, since nothing of ours is queued on a silent path"
            ),
        }
    }

    /// A silence probe of this path was answered after `rtt_ms`.
    fn probe_answered(&mut self, rtt_ms: f64, now_ms: u64) {
        self.heard(now_ms);
        let keep = self
            .slow_echo
            .as_ref()
            .is_some_and(|e| e.rtt_at(now_ms) >= rtt_ms);
        if !keep {
            self.slow_echo = Some(SlowEcho {
                rtt_ms,
                at_ms: now_ms,
            });
        }
    }

    /// How long the current silence must last before the next probe: the
    /// first after `probe_after_ms`; an answered one is followed by
    /// another if the silence goes on, `probe_after_ms` later, then twice
    /// that... A path can fail in a silence that a probe had found
    /// harmless (a sender pausing, TCP recovering from loss): with one
    /// probe per silence the daemon then never saw the failure, and the
    /// kernel's own timers took 526 ms in the lab (1/10 ms, 1 % loss).
    pub fn next_silence_probe_ms(&self) -> u64 {
        let after = self.probe_after_ms();
        match self.silence_probes.sent {
            0 => after,
            n => self
                .silence_probes
                .last_at_silence_ms
                .saturating_add(after.saturating_mul(1 << (n - 1).min(6))),
        }
    }

    /// A probe of the current silence went out, waiting `timeout_ms`.
    pub fn silence_probe_sent(&mut self, timeout_ms: u64) {
        self.probed = true;
        self.data_since_probe = false;
        self.silence_probes = SilenceProbes {
            sent: self.silence_probes.sent.saturating_add(1),
            last_at_silence_ms: self.rx_silent_ms,
            last_waits_ms: timeout_ms,
            ..self.silence_probes
        };
    }

    /// Whether a probe of this path's silence to `remote` is under way.
    pub fn silence_probe_under_way(&self, remote: IpAddr) -> bool {
        self.probed && self.probe_pair.is_some_and(|(_, r)| r == remote)
    }

    /// Whether a probe of a wait for an ACK to `remote` is under way.
    pub fn stall_probe_under_way(&self, remote: IpAddr) -> bool {
        self.stall_probe
            .as_ref()
            .is_some_and(|p| p.remote == remote && p.pending())
    }

    /// The probe of the current silence was answered after `rtt_ms`: the
    /// next may go (`next_silence_probe_ms`), and later silences wait at
    /// least twice that. Only silence probes teach it: a stall probe's
    /// answer waits behind our own queued data.
    pub fn silence_probe_answered(&mut self, rtt_ms: f64, now_ms: u64) {
        self.probed = false;
        self.silence_probes.answered_at_silence_ms = Some(self.silence_probes.last_at_silence_ms);
        self.probe_answered(rtt_ms, now_ms);
    }

    /// Whether the path held nothing of the peer's in flight when the
    /// answered probe went out, and how long its silence had lasted then:
    /// nothing of ours waits for an ACK, and the path answered a probe
    /// after it had been silent long enough for the peer's TCP to resend
    /// anything lost on it. A Linux peer resends after its srtt plus at
    /// least 200 ms (not backed off), and the lost segment may have left
    /// up to a flight after the last one that arrived: 200 ms and two
    /// round trips. The round trip is the receiver's (`probe_after_ms`):
    /// a subflow that only receives keeps the srtt of its handshake,
    /// which a queue or a lost SYN-ACK can make far too high (tried: all
    /// three runs of sweep63's 50/100 ms lossy cell then reopened the
    /// path, two of three had left it alone in sweep62). A path
    /// that works carries what is resent on it, so a peer with data there
    /// would have broken the silence. It says nothing of data the peer
    /// sent after the probe: only a path standing by, on which the peer
    /// schedules nothing new, is left alone on it (`Policy::note_stalls`).
    /// Reopening such a path resends nothing, and closing a subflow makes
    /// the kernel resend everything in flight on the connection's other
    /// subflows. Traced in the lab (interactive, 10/40 ms, 10 % loss, a
    /// download): a path left for loss 1.4 s before its blackhole was
    /// found unreachable 200-370 ms after it, reopened, and the download
    /// stalled 1.06-1.17 s while the server sent its data again.
    pub fn carried_nothing_when_lost(&self) -> Option<u64> {
        let answered = self.silence_probes.answered_at_silence_ms?;
        let resent_by = TCP_MIN_RTO_MS + 2 * self.probe_after_ms();
        (!self.outstanding && answered >= resent_by).then_some(answered)
    }

    /// The probe of the current silence went unanswered. The verdict
    /// waits for a fresh round: the last one was made before the probe
    /// went out, and data may have come while it waited. A sender's burst
    /// fills the queue the answer crosses and can drop the answer there
    /// (traced in the lab: the only path carrying a download reopened on
    /// a 0 ms path, four times in 1.2 s).
    pub fn silence_probe_unanswered(&mut self) {
        self.silence_unanswered = Some(self.silence_probes.last_waits_ms);
    }

    /// An unanswered silence probe waits for a round to be judged.
    pub fn awaits_silence_verdict(&self) -> bool {
        self.silence_unanswered.is_some()
    }

    /// At the round after an unanswered silence probe: the path is
    /// unreachable only if no data came on it, not even one segment, in
    /// a round since the probe went out (`data_since_probe`). None if no
    /// verdict was waiting.
    pub fn judge_unanswered_silence(&mut self) -> Option<SilenceVerdict> {
        let waited = self.silence_unanswered.take()?;
        if self.unreachable.is_some() {
            return None;
        }
        let remote = self.probe_pair.map(|(_, r)| r)?;
        if self.data_since_probe {
            self.probed = false;
            return Some(SilenceVerdict::DataCame(format!(
                "{remote} did not answer a probe within {waited} ms, but data came on the path while it waited: the path works (the answer was queued or dropped behind that data)"
            )));
        }
        let stopped = match self.rx_silent_ms {
            0 => String::new(),
            ms => format!("data stopped {ms} ms ago and "),
        };
        self.mark_unreachable(format!(
            "unreachable: {stopped}{remote} did not answer a probe within {waited} ms, and no data came meanwhile"
        ));
        Some(SilenceVerdict::Unreachable)
    }

    /// Whether the path should be probed now: it was receiving, data has
    /// stopped for `next_silence_probe_ms`, and no probe is under way.
    /// Not while data segments came since the last round: the silence is
    /// then only an upper bound (out-of-order data, `silent_ms`), and a
    /// round made at once (`until_next_stall_ms`) confirms it.
    pub fn wants_probe(&self) -> bool {
        self.rx_silent_ms > 0
            && !self.rx_arrived
            && self.rx_silent_ms >= self.next_silence_probe_ms()
            && !self.probed
            && !self.stall_probe.as_ref().is_some_and(StallProbe::pending)
            && self.unreachable.is_none()
            && self.probe_pair.is_some()
    }

    /// Whether an echo should go now to measure this path's loss: it is
    /// lossy, idle, has sent too little data to measure for
    /// `LOSS_IDLE_MS`, and the last echo went `LOSS_ECHO_INTERVAL_MS` ago.
    /// Without this an idle path's loss fades and the path is taken back,
    /// as lossy as it was (a standby carries nothing). Not while it
    /// receives: a download sends no data to measure, and echoes queued
    /// behind it would read as loss.
    pub fn wants_loss_echo(&self, now_ms: u64) -> bool {
        self.lossy
            && self.idle()
            && !self.echo_deaf
            && self.unreachable.is_none()
            && self.measured()
            && now_ms.saturating_sub(self.meter.last_traffic_ms) >= LOSS_IDLE_MS
            && self
                .last_echo_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= LOSS_ECHO_INTERVAL_MS)
    }

    /// Local and remote address of a subflow of this path: what a loss
    /// echo goes between.
    pub fn echo_pair(&self) -> Option<(IpAddr, IpAddr)> {
        self.subflow_keys.first().map(|(l, r)| (l.ip(), r.ip()))
    }

    /// The echo to send now for this path's loss, if one is due and
    /// `can_echo` its peer: (local, remote, timeout_ms); marked as sent.
    pub fn loss_echo_due(
        &mut self,
        now_ms: u64,
        can_echo: impl Fn(&IpAddr) -> bool,
    ) -> Option<(IpAddr, IpAddr, u64)> {
        if !self.wants_loss_echo(now_ms) {
            return None;
        }
        let (local, remote) = self.echo_pair().filter(|(_, r)| can_echo(r))?;
        self.last_echo_ms = Some(now_ms);
        Some((local, remote, self.probe_timeout_ms()))
    }

    #[cfg(test)]
    fn loss_echo_sent(&mut self, now_ms: u64) {
        self.last_echo_ms = Some(now_ms);
    }

    /// A loss echo came back, or did not, at `now_ms`.
    pub fn loss_echo_result(&mut self, answered: bool, now_ms: u64) {
        self.last_echo_result_ms = Some(now_ms);
        self.echo_heard |= answered;
        if answered {
            self.heard(now_ms);
            self.echoes.0 += 1;
        } else {
            self.echoes.1 += 1;
        }
    }

    /// The path showed at `at_ms` that it carries packets.
    fn heard(&mut self, at_ms: u64) {
        self.heard_ms = Some(self.heard_ms.map_or(at_ms, |t| t.max(at_ms)));
    }

    /// Whether a path standing by may take traffic without a check: it
    /// showed within `CHECK_FRESH_MS` that it carries packets, a check of
    /// it was waived, or it has no subflow to measure or probe from.
    pub fn proven(&self, now_ms: u64) -> bool {
        !self.measured()
            || self.check == Check::Waived
            || self
                .heard_ms
                .is_some_and(|t| now_ms.saturating_sub(t) <= CHECK_FRESH_MS)
    }

    /// Ask for a check that the path still works (one at a time).
    pub fn want_check(&mut self) {
        if self.check == Check::None {
            self.check = Check::Wanted;
        }
    }

    /// The path carries traffic again (or never stood by): no check.
    pub fn forget_check(&mut self) {
        self.check = Check::None;
    }

    /// The check to send now, if one is wanted, no other probe of the path
    /// is under way and `can_probe` its peer, marked as sent. Nothing of
    /// ours is queued on a standby: the answer takes about the minimum RTT,
    /// as for a silent path. A check sent whose outcome never came (the
    /// prober died) is sent again rather than waited on for ever: the path
    /// would stand by for good.
    pub fn check_due(
        &mut self,
        now_ms: u64,
        can_probe: impl Fn(&IpAddr) -> bool,
    ) -> Option<CheckDue> {
        let again = match self.check {
            Check::Wanted => false,
            Check::Sent { lost_ms, .. } if now_ms >= lost_ms => true,
            _ => return None,
        };
        if self.probed || self.stall_probe.as_ref().is_some_and(StallProbe::pending) {
            return None;
        }
        let (local, remote) = self.echo_pair().filter(|(_, r)| can_probe(r))?;
        let timeout_ms = self.silence_probe_timeout_ms(now_ms);
        self.check = Check::Sent {
            remote,
            lost_ms: now_ms
                .saturating_add(timeout_ms)
                .saturating_add(CHECK_REPORT_GRACE_MS),
        };
        Some(CheckDue {
            local,
            remote,
            timeout_ms,
            again,
        })
    }

    /// The check could not be sent (probing is off, its socket was
    /// refused): nothing says the path failed, and it is taken as before
    /// checks were made.
    pub fn waive_check(&mut self) {
        if self.check != Check::None {
            self.check = Check::Waived;
        }
    }

    /// Whether a check of this path to `remote` is under way.
    pub fn check_under_way(&self, remote: IpAddr) -> bool {
        matches!(self.check, Check::Sent { remote: r, .. } if r == remote)
    }

    /// The check's answer, or its absence, at `now_ms`.
    pub fn check_result(&mut self, answered: bool, now_ms: u64) -> CheckVerdict {
        if answered {
            self.check = Check::None;
            self.echo_heard = true;
            self.heard(now_ms);
            return CheckVerdict::Answered;
        }
        // Silence probes' answers (`slow_echo`) and loss echoes' show the
        // peer answers echoes on this path.
        if self.echo_heard || self.slow_echo.is_some() {
            self.check = Check::None;
            self.healthy_since_ms = Some(now_ms);
            CheckVerdict::Unanswered
        } else {
            self.check = Check::Waived;
            CheckVerdict::Waived
        }
    }

    fn clear_unreachable(&mut self) {
        self.unreachable = None;
        self.unreachable_since_ms = None;
    }

    /// Whether the last health round saw subflows on this path (a path
    /// without any has no measurement, good or bad).
    pub fn measured(&self) -> bool {
        !self.subflow_keys.is_empty()
    }

    /// Whether the path carries no data now: nothing of ours waits for an
    /// ACK, and nothing has arrived for four smoothed RTTs (at least
    /// `IDLE_AFTER_MS`); mid-transfer, data comes many times per RTT.
    pub fn idle(&self) -> bool {
        let quiet_ms = self
            .srtt_ms
            .map_or(IDLE_AFTER_MS, |r| ((4.0 * r) as u64).max(IDLE_AFTER_MS));
        !self.outstanding && (!self.rx_recent || self.rx_silent_ms >= quiet_ms)
    }

    /// Record a probe that went unanswered. Probes are sent in a health
    /// round, so an ACK heard after that round contradicts it.
    pub fn mark_unreachable(&mut self, why: String) {
        self.unreachable = Some(why);
        self.unreachable_since_ms = Some(self.updated_ms);
        self.subflows_when_unreachable = self.subflow_keys.clone();
        self.healthy_since_ms = None;
    }

    fn stall_threshold_ms(&self, stall_ms: u64) -> u64 {
        let rtt_based = self.srtt_ms.map(|r| (2.0 * r) as u64).unwrap_or(0);
        stall_ms.max(rtt_based)
    }

    /// How long a subflow waits for an ACK before a stall seen towards one
    /// host is probed: once TCP itself would have expected the ACK
    /// (srtt + 4 rttvar, at least `PROBE_AFTER_MIN_MS`), and no later than
    /// the answer (or its absence) is in when the stall threshold is
    /// reached (never before half of it). On short paths the threshold
    /// (100 ms) is many RTTs: probing at half of it made the daemon act
    /// 82-87 ms after a blackhole at 0/0 and 1/10 ms; at TCP's own wait it
    /// acts after 30-42 ms (upload 1/10 ms, 1 %: stall 95 -> 47 ms median).
    pub fn stall_probe_at_ms(&self, stall_ms: u64) -> u64 {
        let threshold = self.stall_threshold_ms(stall_ms);
        let wait = self.probe_timeout_ms();
        let answer_by_threshold = threshold
            .saturating_sub(wait)
            .saturating_sub(STALL_PROBE_MARGIN_MS)
            .max(threshold / 2);
        answer_by_threshold.min(wait.max(PROBE_AFTER_MIN_MS))
    }

    /// Data on the path has waited for an ACK past the point TCP itself
    /// expected one (`stall_probe_at_ms`): how long, and that point (ms).
    /// On a path left for loss this is a lost segment waiting for the
    /// path's retransmission timeout (`left_for_loss_wait`).
    pub fn overdue_ack(&self, stall_ms: u64) -> Option<(u64, u64)> {
        let expected = self.stall_probe_at_ms(stall_ms);
        (self.stalled_ms > 0 && self.stalled_ms >= expected).then_some((self.stalled_ms, expected))
    }

    /// Whether the path's wait for an ACK should be probed now: it has
    /// waited long enough, fewer than `MIN_WITNESSES` hosts show it (more
    /// would confirm it without a probe), and this wait was not probed yet
    /// (or the path answered and the wait goes on: again after a back-off).
    pub fn wants_stall_probe(&self, stall_ms: u64, now_ms: u64) -> bool {
        // One probe of a path at a time: a silence probe's result would
        // be taken for this one's.
        if self.unreachable.is_some()
            || self.probed
            || self.stall_pair.is_none()
            || self.stalled_ms == 0
            || self.stalled_ms < self.stall_probe_at_ms(stall_ms)
            || self.waiting_witnesses >= MIN_WITNESSES
        {
            return false;
        }
        match &self.stall_probe {
            None => true,
            Some(p) => {
                (p.answered == Some(true) || p.failed)
                    && now_ms.saturating_sub(p.sent_ms)
                        >= backoff_ms(STALL_REPROBE_FIRST_MS, STALL_REPROBE_MAX_MS, p.count)
            }
        }
    }

    /// Record a stall probe sent to `remote`.
    pub fn stall_probe_sent(&mut self, remote: IpAddr, now_ms: u64) {
        let count = self.stall_probe.as_ref().map_or(0, |p| p.count);
        self.stall_probe = Some(StallProbe {
            remote,
            sent_ms: now_ms,
            count: count.saturating_add(1),
            answered: None,
            unanswered_why: None,
            failed: false,
        });
    }

    /// A probe of this path to `remote` could not be sent (or its answer
    /// not be read): it is no longer under way. A stall probe is sent
    /// again after the same back-off as one that was answered, a silence
    /// probe at the next round.
    pub fn probe_failed(&mut self, remote: IpAddr) {
        if self.check_under_way(remote) {
            self.check = Check::Wanted;
        }
        if let Some(p) = self
            .stall_probe
            .as_mut()
            .filter(|p| p.remote == remote && p.answered.is_none())
        {
            p.failed = true;
        }
        if self.silence_probe_under_way(remote) {
            // Not sent: it does not count, the next round sends it again.
            self.probed = false;
            self.silence_probes.sent = self.silence_probes.sent.saturating_sub(1);
        }
    }

    /// The answer to the stall probe (if this was it). Unanswered while the
    /// path is stalled: the path is unreachable, and true is returned.
    /// Unanswered before the threshold: remembered, and the path is
    /// unreachable if the stall then comes.
    pub fn stall_probe_result(&mut self, remote: IpAddr, answered: bool, stall_ms: u64) -> bool {
        let timeout = self.probe_timeout_ms();
        let waited = self.stalled_ms;
        let Some(p) = self.stall_probe.as_mut() else {
            return false;
        };
        if p.remote != remote || p.answered.is_some() || p.failed {
            return false;
        }
        p.answered = Some(answered);
        if answered {
            return false;
        }
        let why = format!(
            "unreachable: a connection waited {waited} ms for an ACK and {remote} did not answer a probe within {timeout} ms"
        );
        p.unanswered_why = Some(why.clone());
        // No ACK for half the threshold or more, then no echo within
        // srtt + 4 rttvar: two signals that agree, so act now rather than
        // at the threshold. Waiting for it put the switch past the kernel's
        // own MPTCP retransmission (~110 ms in the lab), the slow side of
        // that race (blackhole upload median 159 -> 225 ms).
        if (self.outstanding || self.is_stalled(stall_ms)) && self.unreachable.is_none() {
            self.mark_unreachable(why);
            return true;
        }
        false
    }

    /// A problem with the path itself, on enough evidence to act on for
    /// every connection of the host: a probe went unanswered, or the stall
    /// or the loss is seen towards `MIN_WITNESSES` remote hosts. None if
    /// the path is healthy, or only one host's connections suffer.
    /// `loss_hosts`: how many hosts must see the loss (`policy.loss_hosts`,
    /// 0 taken as 1).
    pub fn host_problem(
        &self,
        stall_ms: u64,
        loss_threshold: f64,
        loss_hosts: usize,
    ) -> Option<PathProblem> {
        if let Some(why) = &self.unreachable {
            return Some(PathProblem::new(ProblemKind::Unreachable, why.clone()));
        }
        if self.is_stalled(stall_ms) && self.stall_witnesses >= MIN_WITNESSES {
            return Some(PathProblem::new(
                ProblemKind::Stalled,
                format!(
                    "stalled: nothing acknowledged for {} ms with data outstanding (on connections to {} hosts)",
                    self.stalled_ms, self.stall_witnesses
                ),
            ));
        }
        // Echoes keep the verdict the connections gave before the path
        // went idle: its witnesses' own figures fade meanwhile.
        if self.lossy && (self.loss_probed || self.loss_witnesses >= loss_hosts.max(1)) {
            return Some(PathProblem::new(
                ProblemKind::Lossy,
                format!(
                    "lossy: {:.1} % of {} (threshold {:.1} %; on connections to {} hosts)",
                    self.loss * 100.0,
                    self.loss_measure(),
                    loss_threshold * 100.0,
                    self.loss_witnesses
                ),
            ));
        }
        None
    }

    /// A problem seen on too few hosts' connections to act on for the
    /// whole host (see `host_problem`), and what is done about it.
    pub fn unconfirmed_problem(
        &self,
        stall_ms: u64,
        loss_threshold: f64,
        loss_hosts: usize,
    ) -> Option<String> {
        if self
            .host_problem(stall_ms, loss_threshold, loss_hosts)
            .is_some()
        {
            return None;
        }
        if self.is_stalled(stall_ms) {
            let probe = match &self.stall_probe {
                Some(p) if p.answered == Some(true) => "the path answers probes",
                Some(p) if p.failed => "a probe of the path could not be sent, it is tried again",
                Some(_) => "a probe of the path is under way",
                None => "the path is not probed (policy.probe_silent_paths = false, or the daemon cannot probe this family)",
            };
            return Some(format!(
                "nothing acknowledged for {} ms, but only on connections to {} host(s): {probe}, so this is not taken as the path's failure",
                self.stalled_ms, self.stall_witnesses
            ));
        }
        if self.lossy {
            return Some(format!(
                "{:.1} % of segments retransmitted, but only {} host(s) see loss over {:.1} % (policy.loss_hosts = {}): not taken as the path's loss",
                self.loss * 100.0,
                self.loss_witnesses,
                loss_threshold * 100.0,
                loss_hosts.max(1)
            ));
        }
        None
    }

    /// Why the path's measurements look bad, whoever's connections they
    /// come from (see `host_problem` for what the policy acts on), or None.
    pub fn problem(&self, stall_ms: u64, loss_threshold: f64) -> Option<PathProblem> {
        if let Some(why) = &self.unreachable {
            return Some(PathProblem::new(ProblemKind::Unreachable, why.clone()));
        }
        if self.is_stalled(stall_ms) {
            return Some(PathProblem::new(
                ProblemKind::Stalled,
                format!(
                    "stalled: nothing acknowledged for {} ms with data outstanding",
                    self.stalled_ms
                ),
            ));
        }
        if self.lossy {
            return Some(PathProblem::new(
                ProblemKind::Lossy,
                format!(
                    "lossy: {:.1} % of {} (threshold {:.1} %)",
                    self.loss * 100.0,
                    self.loss_measure(),
                    loss_threshold * 100.0
                ),
            ));
        }
        None
    }

    /// What the loss figure counts.
    fn loss_measure(&self) -> &'static str {
        if self.loss_probed {
            "packets lost one way, from echoes while it carries no traffic"
        } else if self.meter.received.rate > self.meter.sent.rate {
            "segments lost on the way in (from those that arrived behind a hole)"
        } else {
            "segments retransmitted"
        }
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

/// Why data waiting on path `name`, left for loss, is worth resending
/// elsewhere (`PathHealth::overdue_ack`): host-wide and per connection.
pub fn left_for_loss_wait(name: &str, waited_ms: u64, expected_ms: u64) -> String {
    format!(
        "{name} was left for loss, and data on it has waited {waited_ms} ms for an ACK (TCP expected one within {expected_ms} ms): a lost segment, which would wait for {name}'s retransmission timeout with everything sent after it"
    )
}

/// How many distinct remote hosts must show a stall or loss before it is
/// taken as the path's (host-wide) problem without a probe.
pub const MIN_WITNESSES: usize = 2;

/// A path standing by (handover's primary, interactive's faster path)
/// that was heard (an ACK, an answer) within this long takes traffic
/// without a check (`PathHealth::proven`).
const CHECK_FRESH_MS: u64 = 500;
/// A check whose outcome has not come this long after its answer was due
/// is taken as lost and sent again: the prober reports every probe at its
/// timeout, so only a prober that died is this late.
const CHECK_REPORT_GRACE_MS: u64 = 1_000;

/// A stall probe goes out this much before "threshold minus the probe's
/// timeout" (never before half the threshold): the health round that sends
/// it comes a few ms late, and the answer should be in before the
/// threshold.
const STALL_PROBE_MARGIN_MS: u64 = 20;
/// A stall towards one host whose probe was answered is probed again after
/// this long if the wait goes on, doubled each time up to the maximum.
const STALL_REPROBE_FIRST_MS: u64 = 1000;
const STALL_REPROBE_MAX_MS: u64 = 60_000;
/// Data segments counted (each way) before a sample of the loss rate is
/// taken (`braid top`'s figure waits for as many): one loss in a sample
/// must read as half the 5 % threshold, not as all of it. With 20, a
/// path losing 1 % was left in the lab (50/100 ms, BBR, 60 s): one loss
/// in each of two samples makes 3.75 %, a third with two makes 6.9 %,
/// and estimated losses on the way in vary more (a hole a timer fills
/// holds back more than one a SACK fills; two holes in 150 segments read
/// as 5.2 %). The first sample is taken as the rate: at 50 segments a
/// second, a path losing 10 % is found after 0.8 s.
pub const LOSS_MIN_SEGS: u64 = 40;
/// A sample of the loss rate also spans at least this long: the default
/// poll interval, which the rates above were measured with. Health rounds
/// brought forward for probes (every 15 ms on a 0 ms path) cut samples of
/// 40 segments at 40 Mbit/s, and one timeout's burst of retransmissions
/// then read as the rate: a path losing 1 % was left as losing 5.5-8.9 %
/// in 4 of 4 lab runs (0/0 ms, upload), and given back 3 s later while
/// it was blackholed.
const LOSS_SAMPLE_MIN_MS: u64 = 100;
/// A lossy path is measured with echoes once it has carried too little
/// traffic to measure for this long, one echo every
/// `LOSS_ECHO_INTERVAL_MS`, a sample of `LOSS_ECHO_SAMPLE` at a time: 10
/// echoes a second on that path only, and a sample every 2 s. The rate
/// is averaged like traffic samples, so a path that lost 19 % of its
/// echoes is trusted again (under half the threshold) after three clean
/// samples, 6 s.
const LOSS_IDLE_MS: u64 = 500;
pub const LOSS_ECHO_INTERVAL_MS: u64 = 100;
const LOSS_ECHO_SAMPLE: u32 = 20;
/// A path received at least this much between two rounds: it is in the
/// middle of a transfer, and a sudden silence means something.
const RX_ACTIVE_BYTES: u64 = 16 * 1024;
/// A silence counts only this long after the path last received actively.
const RX_MEMORY_MS: u64 = 2000;
/// The shortest silence after which a receiving path counts as idle.
const IDLE_AFTER_MS: u64 = 200;
/// The shortest silence (or wait for an ACK) before a path is probed. It
/// was 40 ms, over the whole detection budget of a blackhole on a 0 ms
/// path (30 ms: three RTTs, one resend, 30 ms). At 15 ms the daemon acts
/// 25-35 ms after a blackhole there (download stall 53 -> 30 ms median,
/// lab A/B, 3 runs a cell); a probe costs five echoes, and a silence that
/// short in mid-transfer is rare: an answered probe changes nothing.
pub const PROBE_AFTER_MIN_MS: u64 = 15;
/// TCP's minimum retransmission timeout (Linux's TCP_RTO_MIN): the
/// soonest a peer resends a segment lost on a path.
const TCP_MIN_RTO_MS: u64 = 200;
/// A silence probe waits at least this much over the path's minimum RTT
/// (answers to probes of a 0.1 ms lab path took 0.1-8.4 ms, once 20 ms,
/// with two cores busy with a transfer and the link emulator).
pub const SILENT_PROBE_SLACK_MS: u64 = 20;
/// How long a slow answer to a probe keeps silence probes patient: its
/// weight halves every this many ms.
const SLOW_ECHO_HALF_LIFE_MS: u64 = 60_000;

/// What the round after an unanswered silence probe says.
#[derive(Debug, Clone, PartialEq)]
pub enum SilenceVerdict {
    /// The silence went on: the path is marked unreachable.
    Unreachable,
    /// Data came while the probe waited: the path works (why, for a note).
    DataCame(String),
}

/// The slowest answer to a path probe, fading with time.
#[derive(Debug, Clone, Copy, PartialEq)]
struct SlowEcho {
    rtt_ms: f64,
    at_ms: u64,
}

impl SlowEcho {
    fn rtt_at(&self, now_ms: u64) -> f64 {
        let halvings = now_ms.saturating_sub(self.at_ms) as f64 / SLOW_ECHO_HALF_LIFE_MS as f64;
        self.rtt_ms * 0.5f64.powf(halvings)
    }
}

pub type SubflowKey = (SocketAddr, SocketAddr);

/// A probe sent about a path's stall.
#[derive(Debug, Clone, PartialEq)]
pub struct StallProbe {
    pub remote: IpAddr,
    pub sent_ms: u64,
    /// Probes sent during this wait.
    pub count: u32,
    /// None until the answer comes; then whether the path answered.
    pub answered: Option<bool>,
    /// Unanswered: why the path is unreachable (if the stall comes).
    pub unanswered_why: Option<String>,
    /// It could not be sent: no answer will come.
    pub failed: bool,
}

impl StallProbe {
    /// Sent, and neither answered nor known to have failed.
    fn pending(&self) -> bool {
        self.answered.is_none() && !self.failed
    }
}

/// What TCP would wait for an ACK before its (minimum-free) timeout:
/// srtt + 4 rttvar, at least srtt + 10 ms.
fn ack_wait_ms(srtt_ms: f64, rttvar_ms: f64) -> u64 {
    (srtt_ms + (4.0 * rttvar_ms).max(10.0)) as u64
}

/// One remote host's retransmission rate on a path, kept like the path's.
#[derive(Debug, Clone, Default, PartialEq)]
struct RemoteLoss {
    meter: LossMeter,
    loss: f64,
    seen_ms: u64,
}

/// What the tracker keeps of a subflow from one round to the next.
#[derive(Clone, Copy)]
struct SubflowMemory {
    total_retrans: u32,
    data_segs_out: u32,
    bytes_received: u64,
    data_segs_in: u32,
    rcv_ooopack: u32,
    /// When (policy clock) the subflow was sampled.
    seen_ms: u64,
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
    /// The peer's segments estimated lost on the way here (None when not
    /// measured: `HealthTracker::loss_on_the_way_in`).
    lost_on_the_way_in: Option<f64>,
    received: u64,
    /// Segments with data that arrived since the last round, and how long
    /// ago that round was (0 for a subflow new in this one).
    data_segs: u64,
    since_ms: u64,
    outstanding_since: Option<u64>,
}

/// How many of the peer's segments were lost on the way here, from
/// the segments that arrived behind a hole. A receiver cannot count
/// retransmissions, but it sees what a hole holds back: the segment
/// after the lost one, and all that arrive until the resend fills
/// the hole. The peer resends once that next segment's SACK reached
/// it and its reordering window passed (RACK: a quarter of the
/// minimum RTT), so the resend arrives 1.25 RTT after the next
/// segment: a hole holds back `m = 1 + 1.25 n` segments, `n` arriving
/// per RTT. A segment arrives behind a hole if one of the `m` before
/// it was lost, so with a loss rate `p` the share behind a hole is
/// `f = 1 - (1 - p)^m`, and `p = 1 - (1 - f)^(1/m)`. Sparse traffic
/// gives `p ≈ f`; dense traffic `p ≈ f / m` while holes are apart,
/// and when they overlap (a bulk transfer at 10 %: every segment
/// behind some hole) `f` near 1 still gives a rate, where counting
/// holes as `out of order / m` found one per RTT. A hole the peer's
/// timer fills lasts longer and reads as more than one loss; a short
/// reordering in dense traffic holds back a few segments, a fraction
/// of a loss; a lone segment lost with nothing behind it leaves no
/// hole and is not seen. Without it, a client that mostly receives
/// over a lossy path measured only its own requests: 5.9 % of them
/// lost where 10 % went each way, and interactive left the path after
/// 3.3 s (lab, 50/100 ms, CUBIC).
fn lost_on_the_way_in(out_of_order: u64, data_segs: u64, since_ms: u64, rtt_ms: f64) -> f64 {
    if out_of_order == 0 || since_ms == 0 || data_segs == 0 {
        return 0.0;
    }
    let segs = data_segs as f64;
    let per_rtt = segs * rtt_ms / since_ms as f64;
    let held_back = 1.0 + 1.25 * per_rtt;
    // All behind a hole would be a rate of 1: half a segment in order is
    // as close as the counters tell.
    let behind = (out_of_order as f64).min(segs - 0.5) / segs;
    let rate = 1.0 - (1.0 - behind).powf(1.0 / held_back);
    rate * segs
}

/// The path's loss rate both ways, and the remote hosts that see it.
fn observe_loss(
    h: &mut PathHealth,
    subs: &[&SubflowSample],
    delta: &HashMap<SubflowKey, SubflowDelta>,
    now_ms: u64,
    loss_threshold: f64,
    decay_ms: u64,
) {
    for s in subs {
        h.meter.add(&delta[&(s.local, s.remote)]);
    }
    // Echoes measure it: it does not fade meanwhile.
    let echoed = h
        .last_echo_result_ms
        .is_some_and(|t| now_ms.saturating_sub(t) < 10 * LOSS_ECHO_INTERVAL_MS);
    let decay_ms = if echoed { u64::MAX } else { decay_ms };
    h.meter.round(&mut h.loss, now_ms, decay_ms);
    if h.meter.sampled_traffic_at(now_ms) {
        h.loss_probed = false;
        h.echoes = (0, 0);
    } else if h.echoes.0 + h.echoes.1 >= LOSS_ECHO_SAMPLE && !h.echo_heard {
        // Not one answer: the peer drops echoes; the loss fades as before.
        h.echoes = (0, 0);
        h.echo_deaf = true;
        h.last_echo_result_ms = None;
    } else if h.echoes.0 + h.echoes.1 >= LOSS_ECHO_SAMPLE {
        let (heard, lost) = std::mem::take(&mut h.echoes);
        // An echo crosses the path twice; segments are retransmitted for
        // one crossing. Taken as equal both ways, a one-way loss p loses
        // 1 - (1 - p)^2 of the echoes.
        let echoes_lost = f64::from(lost) / f64::from(heard + lost);
        let sample = 1.0 - (1.0 - echoes_lost).sqrt();
        h.meter.echoed(sample, &mut h.loss, now_ms);
        h.loss_probed = true;
    }
    if h.loss > loss_threshold {
        h.lossy = true;
    } else if h.loss < loss_threshold / 2.0 {
        h.lossy = false;
        h.echo_deaf = false;
    }
    // The same, per remote host: who sees the loss.
    for s in subs {
        let d = &delta[&(s.local, s.remote)];
        let r = h.remote_loss.entry(s.remote.ip()).or_default();
        r.seen_ms = now_ms;
        r.meter.add(d);
    }
    for r in h.remote_loss.values_mut() {
        r.meter.round(&mut r.loss, now_ms, decay_ms);
    }
    // Hosts no longer talked to are forgotten after the same time.
    h.remote_loss
        .retain(|_, r| now_ms.saturating_sub(r.seen_ms) < decay_ms.max(1));
    h.loss_witnesses = h
        .remote_loss
        .values()
        .filter(|r| r.loss > loss_threshold)
        .count();
}

/// Stalled: some subflow has waited for an ACK since its data went out,
/// and no subflow of the path has heard anything since. Returns the time
/// since the path's freshest ACK, in ms.
fn observe_stall(
    h: &mut PathHealth,
    subs: &[&SubflowSample],
    delta: &HashMap<SubflowKey, SubflowDelta>,
    now_ms: u64,
    stall_ms: u64,
) -> u32 {
    let waits: Vec<(u64, &SubflowSample)> = subs
        .iter()
        .filter_map(|s| {
            let since = delta[&(s.local, s.remote)].outstanding_since?;
            let waited = (s.last_ack_recv_ms as u64).min(now_ms.saturating_sub(since));
            Some((waited, *s))
        })
        .collect();
    let waiting = waits.iter().map(|(w, _)| *w).max();
    let freshest = subs.iter().map(|s| s.last_ack_recv_ms).min().unwrap_or(0);
    h.stalled_ms = waiting.map_or(0, |w| w.min(freshest as u64));
    h.outstanding = waiting.is_some();
    // Who sees it: distinct remote hosts past the threshold (and
    // past the point where a stall would be probed).
    let hosts_past = |t: u64| {
        waits
            .iter()
            .filter(|(w, _)| *w >= t)
            .map(|(_, s)| s.remote.ip())
            .collect::<BTreeSet<IpAddr>>()
            .len()
    };
    h.stall_witnesses = if h.is_stalled(stall_ms) {
        hosts_past(h.stall_threshold_ms(stall_ms))
    } else {
        0
    };
    let probe_at = h.stall_probe_at_ms(stall_ms);
    h.waiting_witnesses = hosts_past(probe_at);
    h.stall_pair = waits
        .iter()
        .max_by_key(|(w, _)| *w)
        .map(|(_, s)| (s.local.ip(), s.remote.ip()));
    if h.stalled_ms < probe_at {
        // Nothing waits (long) any more: the next wait is a new one.
        h.stall_probe = None;
    } else if h.is_stalled(stall_ms) && h.unreachable.is_none() {
        // The probe sent before the threshold went unanswered.
        if let Some(why) = h
            .stall_probe
            .as_ref()
            .and_then(|p| p.unanswered_why.clone())
        {
            h.mark_unreachable(why);
        }
    }
    freshest
}

/// Receiving: data arrived in bulk since the last round.
fn observe_receiving(
    h: &mut PathHealth,
    subs: &[&SubflowSample],
    delta: &HashMap<SubflowKey, SubflowDelta>,
    now_ms: u64,
) {
    let deltas = || subs.iter().map(|s| &delta[&(s.local, s.remote)]);
    // Kernels without tcpi_data_segs_in still show in-order bytes.
    h.rx_arrived = deltas().any(|d| d.data_segs > 0);
    if h.probed && (h.rx_arrived || deltas().any(|d| d.received > 0)) {
        h.data_since_probe = true;
    }
    let busiest = subs
        .iter()
        .map(|s| (delta[&(s.local, s.remote)].received, *s))
        .max_by_key(|(grew, _)| *grew);
    if let Some((grew, s)) = busiest {
        if grew >= RX_ACTIVE_BYTES {
            h.rx_active_ms = Some(now_ms);
            h.probed = false;
            h.silence_probes = SilenceProbes::default();
            h.clear_unreachable();
            h.probe_pair = Some((s.local.ip(), s.remote.ip()));
        }
    }
    h.rx_recent = h
        .rx_active_ms
        .is_some_and(|t| now_ms.saturating_sub(t) <= RX_MEMORY_MS);
    let quiet = subs
        .iter()
        .map(|s| silent_ms(s, &delta[&(s.local, s.remote)]))
        .min()
        .unwrap_or(0);
    h.rx_silent_ms = if h.rx_recent { quiet } else { 0 };
    // Data came since the last probe went out: a new silence.
    if h.rx_silent_ms < h.silence_probes.last_at_silence_ms {
        h.silence_probes = SilenceProbes::default();
    }
    // A segment came (in order or not): the peer sent on the path after
    // the answered probe, which no longer shows it held nothing.
    if h.rx_arrived {
        h.silence_probes.answered_at_silence_ms = None;
    }
}

/// Whether a subflow only receives now: nothing of ours outstanding and
/// no data sent since the last round. Its srtt then ages (a download's is
/// its handshake's), and how soon data answers its ACKs is the RTT.
fn only_receives(s: &SubflowSample, d: &SubflowDelta) -> bool {
    s.unacked == 0 && d.segs == 0
}

/// How long no data has come on a subflow. `tcpi_last_data_recv` moves
/// only with in-order data: behind a lost segment, data keeps arriving out
/// of order until the retransmission fills the hole, and the path is
/// working all along. Traced in the lab (0 ms paths, 10 % loss): a path
/// receiving at its full rate read as silent for 44-52 ms, its probe's
/// answers waited in the queue behind that data, and it was reopened.
/// Segments that arrived since the last round bound the silence by the
/// time since that round (and `rx_arrived` makes a probe wait for a round
/// that sees none).
fn silent_ms(s: &SubflowSample, d: &SubflowDelta) -> u64 {
    let in_order_ms = u64::from(s.last_data_recv_ms);
    if d.data_segs > 0 {
        return in_order_ms.min(d.since_ms);
    }
    in_order_ms
}

#[derive(Default)]
pub struct HealthTracker {
    subflows: HashMap<SubflowKey, SubflowMemory>,
    pub paths: BTreeMap<u32, PathHealth>,
    /// Whether the peer's losses on the way in count in a path's loss
    /// (`lost_on_the_way_in`): interactive mode only. In
    /// handover mode a download primary left for its loss went on
    /// carrying the server's data as a backup, and when it then failed
    /// nothing treated that as the active path's failure: 1.17 s
    /// against 161 ms (lab, blackhole, 10/40 ms, 10 % loss; sweep31).
    pub loss_on_the_way_in: bool,
}

impl HealthTracker {
    /// Take one round of samples (all subflows of all connections).
    /// `loss_hosts`: see `PathHealth::host_problem`.
    pub fn update(
        &mut self,
        now_ms: u64,
        samples: &[SubflowSample],
        stall_ms: u64,
        loss_threshold: f64,
        decay_ms: u64,
        loss_hosts: usize,
    ) {
        let (memory, delta) = self.compare(now_ms, samples);
        let mut per_if: BTreeMap<u32, Vec<&SubflowSample>> = BTreeMap::new();
        for s in samples {
            per_if.entry(s.ifindex).or_default().push(s);
        }
        // A round lists every subflow: a path missing from it has none now
        // (its other measurements are kept until it has subflows again).
        for (ifindex, h) in self.paths.iter_mut() {
            if !per_if.contains_key(ifindex) {
                h.subflows = 0;
                h.subflow_keys.clear();
            }
        }
        for (ifindex, subs) in &per_if {
            let h = self.paths.entry(*ifindex).or_default();
            h.updated_ms = now_ms;
            h.subflows = subs.len();
            let rtts: Vec<&&SubflowSample> = subs.iter().filter(|s| s.rtt_us > 0).collect();
            if let Some(best) = rtts.iter().min_by_key(|s| s.rtt_us) {
                h.srtt_ms = Some(best.rtt_us as f64 / 1000.0);
                h.rttvar_ms = Some(best.rttvar_us as f64 / 1000.0);
            }
            h.slowest_srtt_ms = rtts
                .iter()
                .map(|s| s.rtt_us)
                .max()
                .map(|r| r as f64 / 1000.0);
            observe_loss(h, subs, &delta, now_ms, loss_threshold, decay_ms);
            let freshest = observe_stall(h, subs, &delta, now_ms, stall_ms);
            h.heard(now_ms.saturating_sub(freshest as u64));
            observe_receiving(h, subs, &delta, now_ms);
            // A silence probe goes to `probe_pair`'s remote: the minimum
            // RTT is that remote's (another server on the same interface
            // may be much nearer).
            let probed_remote = h.probe_pair.map(|(_, r)| r);
            let to_probed = || {
                subs.iter()
                    .filter(move |s| Some(s.remote.ip()) == probed_remote)
            };
            // Only a subflow that receives and sends nothing now: one that
            // sends has an srtt of its own, and its tcpi_rcv_rtt can be
            // stale (it rises slowly, an eighth per sample).
            let rcv_rtt = to_probed()
                .filter(|s| only_receives(s, &delta[&(s.local, s.remote)]))
                .map(|s| s.rcv_rtt_us)
                .filter(|r| *r > 0)
                .min();
            h.rcv_rtt_ms = rcv_rtt.map(|r| r as f64 / 1000.0);
            let min_rtt = to_probed().map(|s| s.min_rtt_us).filter(|m| *m > 0).min();
            if let Some(m) = min_rtt.into_iter().chain(rcv_rtt).min() {
                h.min_rtt_ms = Some(m as f64 / 1000.0);
            }
            if let Some(best) = to_probed()
                .filter(|s| s.rtt_us > 0)
                .min_by_key(|s| s.rtt_us)
            {
                h.probed_rtt_ms =
                    Some((best.rtt_us as f64 / 1000.0, best.rttvar_us as f64 / 1000.0));
            }
            h.subflow_keys = subs.iter().map(|s| (s.local, s.remote)).collect();
            // A subflow the path did not have when the probe failed: the
            // path answers handshakes again.
            if h.unreachable.is_some()
                && subs
                    .iter()
                    .any(|s| !h.subflows_when_unreachable.contains(&(s.local, s.remote)))
            {
                h.clear_unreachable();
            }
            // An ACK heard since it was marked: packets come back by it.
            if let Some(marked) = h.unreachable_since_ms {
                if (freshest as u64) < now_ms.saturating_sub(marked) {
                    h.clear_unreachable();
                }
            }
            // Healthy as far as the whole host is concerned: one host's
            // stalled connections do not keep a path from taking traffic back.
            let ok = h
                .host_problem(stall_ms, loss_threshold, loss_hosts)
                .is_none();
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

    /// One pass over the subflows: what changed since the last round, and
    /// what to remember for the next.
    fn compare(
        &self,
        now_ms: u64,
        samples: &[SubflowSample],
    ) -> (
        HashMap<SubflowKey, SubflowMemory>,
        HashMap<SubflowKey, SubflowDelta>,
    ) {
        let mut memory: HashMap<SubflowKey, SubflowMemory> = HashMap::new();
        let mut delta: HashMap<SubflowKey, SubflowDelta> = HashMap::new();
        for s in samples {
            let key = (s.local, s.remote);
            let now = SubflowMemory {
                total_retrans: s.total_retrans,
                data_segs_out: s.data_segs_out,
                bytes_received: s.bytes_received,
                data_segs_in: s.data_segs_in,
                rcv_ooopack: s.rcv_ooopack,
                seen_ms: now_ms,
                outstanding_since: None,
            };
            let before = self.subflows.get(&key).copied().unwrap_or(now);
            let outstanding_since =
                (s.unacked > 0).then(|| before.outstanding_since.unwrap_or(now_ms));
            let data_segs = s.data_segs_in.wrapping_sub(before.data_segs_in) as u64 % (1 << 31);
            let since_ms = now_ms.saturating_sub(before.seen_ms);
            let lost_in = self.loss_on_the_way_in.then(|| {
                lost_on_the_way_in(
                    s.rcv_ooopack.saturating_sub(before.rcv_ooopack).into(),
                    data_segs,
                    since_ms,
                    f64::from(s.rtt_us.max(s.min_rtt_us)) / 1000.0,
                )
            });
            delta.insert(
                key,
                SubflowDelta {
                    retrans: s.total_retrans.saturating_sub(before.total_retrans) as u64,
                    segs: s.data_segs_out.wrapping_sub(before.data_segs_out) as u64 % (1 << 31),
                    lost_on_the_way_in: lost_in,
                    received: s.bytes_received.saturating_sub(before.bytes_received),
                    data_segs,
                    since_ms,
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
        (memory, delta)
    }

    /// An unanswered silence probe waits for a round to be judged.
    pub fn silence_verdict_waiting(&self) -> bool {
        self.paths.values().any(PathHealth::awaits_silence_verdict)
    }

    /// How long until some path would be declared stalled if no ACK
    /// arrives: the next health check should come no later than that.
    pub fn until_next_stall_ms(&self, stall_ms: u64, probing: bool) -> Option<u64> {
        // An unanswered silence probe is judged by a round made at once.
        if self.silence_verdict_waiting() {
            return Some(0);
        }
        let stalls = self
            .paths
            .values()
            .filter(|h| h.outstanding && !h.is_stalled(stall_ms))
            .map(|h| h.stall_threshold_ms(stall_ms).saturating_sub(h.stalled_ms));
        // A wait towards one host is probed before it becomes a stall. In a
        // busy upload the last ACK is under a millisecond old at every
        // round (`stalled_ms` 0), so this is scheduled whenever data is
        // outstanding: the round after a blackhole must not wait for the
        // poll interval, or the probe's answer comes after the threshold
        // (measured: probe sent after 72-92 ms of waiting instead of 50).
        let stall_probes = self
            .paths
            .values()
            .filter(|h| probing && h.outstanding && h.stall_probe.is_none())
            .map(|h| h.stall_probe_at_ms(stall_ms).saturating_sub(h.stalled_ms))
            .filter(|in_ms| *in_ms > 0);
        // A receiving path is checked when a silence would be probed.
        let silences = self
            .paths
            .values()
            .filter(|h| probing && h.rx_recent && !h.probed && h.unreachable.is_none())
            .map(|h| h.next_silence_probe_ms().saturating_sub(h.rx_silent_ms));
        stalls.chain(silences).chain(stall_probes).min()
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
            data_segs_out: segs,
            unacked,
            last_ack_recv_ms: last_ack,
            bytes_received: 0,
            last_data_recv_ms: 0,
            data_segs_in: 0,
            min_rtt_us: 0,
            local_backup: None,
            joining: false,
            first: false,
            conn: 0,
            rcv_ooopack: 0,
            rcv_rtt_us: 0,
        }
    }

    #[test]
    fn loss_rate_needs_enough_segments_and_is_smoothed() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 20_000)], 300, 0.05, 3000, 1);
        t.update(100, &[s(1, 1, 10, 0, 0, 20_000)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].loss, 0.0, "10 segments are not enough");
        // The first sample is the rate; the next are averaged in.
        t.update(200, &[s(1, 4, 40, 0, 0, 20_000)], 300, 0.05, 3000, 1);
        assert!(
            (t.paths[&1].loss - 0.1).abs() < 1e-9,
            "{}",
            t.paths[&1].loss
        );
        t.update(300, &[s(1, 4, 80, 0, 0, 20_000)], 300, 0.05, 3000, 1);
        assert!(
            (t.paths[&1].loss - 0.05).abs() < 1e-9,
            "{}",
            t.paths[&1].loss
        );
        assert_eq!(t.paths[&1].srtt_ms, Some(20.0));
    }

    #[test]
    fn a_sample_of_loss_spans_a_poll_interval_however_often_rounds_come() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 1_000)], 300, 0.05, 3000, 1);
        // Rounds 15 ms apart on a fast path; one timeout resends 5 of 45.
        t.update(15, &[s(1, 5, 45, 0, 0, 1_000)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].loss, 0.0, "15 ms is no sample yet");
        let mut segs = 45;
        for now in [30, 45, 60, 75, 90, 105] {
            segs += 45;
            t.update(now, &[s(1, 5, segs, 0, 0, 1_000)], 300, 0.05, 3000, 1);
        }
        let loss = t.paths[&1].loss;
        assert!((loss - 5.0 / 315.0).abs() < 1e-9, "{loss}");
        assert!(!t.paths[&1].lossy);
    }

    /// A subflow that has received `segs` data segments, `ooo` of them
    /// behind a hole, over a 100 ms RTT.
    fn receiving(segs: u32, ooo: u32) -> SubflowSample {
        SubflowSample {
            data_segs_in: segs,
            rcv_ooopack: ooo,
            ..s(1, 0, 0, 0, 0, 100_000)
        }
    }

    #[test]
    fn losses_on_the_way_in_count_from_segments_behind_a_hole() {
        let rate = |segs: u32, ooo: u32, since_ms: u64| {
            let mut t = HealthTracker {
                loss_on_the_way_in: true,
                ..HealthTracker::default()
            };
            t.update(0, &[receiving(0, 0)], 300, 0.05, 3000, 1);
            t.update(since_ms, &[receiving(segs, ooo)], 300, 0.05, 3000, 1);
            // The first sample is the rate.
            t.paths[&1].loss
        };
        // 10 % lost of 5 segments per 100 ms RTT: a hole holds back
        // 1 + 1.25 x 5 = 7.25 segments, and 1 - 0.9^7.25 = 53 % of them
        // arrive behind one.
        let p = rate(500, 267, 10_000);
        assert!((p - 0.1).abs() < 0.002, "{p}");
        // Sparse, one segment per second: nearly each segment behind a
        // hole is a loss.
        let p = rate(40, 4, 40_000);
        assert!((p - 0.089).abs() < 0.001, "{p}");
        // A bulk download with one loss in 5000 segments: the hole holds
        // back the 1250 that come in 1.25 RTT, and that is one loss, not
        // 25 %.
        let p = rate(5000, 1250, 500);
        assert!((p - 0.0002).abs() < 0.00005, "{p}");
        // Every segment behind a hole: at least a share that would leave
        // half a segment of the round in order.
        let p = rate(5000, 5000, 500);
        assert!(p > 0.007 && p < 0.008, "{p}");
        // Too few segments for a sample: a hole's length varies.
        assert_eq!(rate(39, 20, 500), 0.0);
        // Not counted unless asked for (interactive mode only).
        let mut t = HealthTracker::default();
        t.update(0, &[receiving(0, 0)], 300, 0.05, 3000, 1);
        t.update(10_000, &[receiving(500, 267)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].loss, 0.0);
        // The reason says which way.
        let mut t = HealthTracker {
            loss_on_the_way_in: true,
            ..HealthTracker::default()
        };
        t.update(0, &[receiving(0, 0)], 300, 0.05, 3000, 1);
        t.update(10_000, &[receiving(500, 267)], 300, 0.05, 3000, 1);
        t.update(20_000, &[receiving(1000, 534)], 300, 0.05, 3000, 1);
        let why = t.paths[&1].problem(300, 0.05).expect("lossy").why;
        assert!(why.contains("on the way in"), "{why}");
    }

    #[test]
    fn a_loss_one_way_is_not_halved_by_clean_traffic_the_other_way() {
        let both = |retrans, segs| SubflowSample {
            data_segs_in: segs,
            ..s(1, retrans, segs, 0, 0, 100_000)
        };
        let mut t = HealthTracker {
            loss_on_the_way_in: true,
            ..HealthTracker::default()
        };
        t.update(0, &[both(0, 0)], 300, 0.05, 3000, 1);
        t.update(500, &[both(4, 40)], 300, 0.05, 3000, 1);
        assert!(
            (t.paths[&1].loss - 0.1).abs() < 1e-9,
            "{}",
            t.paths[&1].loss
        );
        let why = t.paths[&1].problem(300, 0.05).expect("lossy").why;
        assert!(why.contains("retransmitted"), "{why}");
    }

    /// The same subflow towards another host (another connection).
    fn to(remote: &str, mut x: SubflowSample) -> SubflowSample {
        x.remote = remote.parse().unwrap();
        x
    }

    #[test]
    fn stall_is_outstanding_data_without_acks() {
        // Two connections (to two hosts) on the path: a stall seen on both
        // is the path's. (With one host, see the next test.)
        let two = |unacked, last_ack| {
            let a = s(1, 0, 100, unacked, last_ack, 20_000);
            [a.clone(), to("10.8.8.8:443", a)]
        };
        let mut t = HealthTracker::default();
        t.update(0, &two(5, 50), 300, 0.05, 3000, 1);
        assert!(t.paths[&1].problem(300, 0.05).is_none());
        assert_eq!(t.paths[&1].healthy_since_ms, Some(0));
        t.update(400, &two(5, 400), 300, 0.05, 3000, 1);
        assert!(t.paths[&1]
            .problem(300, 0.05)
            .unwrap()
            .why
            .contains("stalled"));
        assert_eq!(t.paths[&1].stall_witnesses, 2);
        assert!(t.paths[&1]
            .host_problem(300, 0.05, 1)
            .unwrap()
            .why
            .contains("on connections to 2 hosts"));
        assert_eq!(t.paths[&1].healthy_since_ms, None);
        // Nothing outstanding: an idle path is not stalled.
        t.update(500, &two(0, 5000), 300, 0.05, 3000, 1);
        assert!(t.paths[&1].problem(300, 0.05).is_none());
        assert_eq!(t.paths[&1].healthy_since_ms, Some(500));
    }

    /// Before, one connection that stopped being acknowledged made the
    /// whole path unhealthy for every user of the host (and so a local user
    /// could trigger host-wide handovers with a server of their own).
    #[test]
    fn a_stall_towards_one_host_is_not_the_paths_until_probed() {
        let mut t = HealthTracker::default();
        let a = s(1, 0, 100, 5, 50, 20_000);
        // Two subflows of connections to the same host count once.
        let one_host = |last_ack| {
            let x = SubflowSample {
                last_ack_recv_ms: last_ack,
                ..a.clone()
            };
            let mut y = x.clone();
            y.local.set_port(2000);
            [x, y]
        };
        t.update(0, &one_host(50), 300, 0.05, 3000, 1);
        t.update(400, &one_host(400), 300, 0.05, 3000, 1);
        let h = &t.paths[&1];
        assert!(h.problem(300, 0.05).unwrap().why.contains("stalled"));
        assert_eq!(h.stall_witnesses, 1);
        assert_eq!(h.host_problem(300, 0.05, 1), None);
        assert_eq!(h.healthy_since_ms, Some(0), "healthy for the host");
        assert!(h.wants_stall_probe(300, 400));
        let why = h.unconfirmed_problem(300, 0.05, 1).unwrap();
        assert!(why.contains("only on connections to 1 host"), "{why}");
        // The probe goes unanswered: now it is the path's.
        let h = t.paths.get_mut(&1).unwrap();
        h.stall_probe_sent(a.remote.ip(), 400);
        assert!(!h.wants_stall_probe(300, 410), "one probe at a time");
        assert!(h.stall_probe_result(a.remote.ip(), false, 300));
        assert!(h
            .host_problem(300, 0.05, 1)
            .unwrap()
            .why
            .contains("unreachable"));
        // An ACK heard after that: the path is there after all.
        t.update(500, &one_host(10), 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].unreachable, None);
    }

    /// A busy upload: data always outstanding, the last ACK under a
    /// millisecond old at every round. The next round still comes at the
    /// stall-probe point, not one poll interval later.
    #[test]
    fn a_busy_path_is_checked_at_the_stall_probe_point() {
        let mut t = HealthTracker::default();
        let w = |unacked, last_ack| s(1, 0, 100, unacked, last_ack, 20_000);
        t.update(0, &[w(0, 0)], 100, 0.05, 3000, 1);
        t.update(10, &[w(5, 0)], 100, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stalled_ms, 0);
        assert_eq!(t.until_next_stall_ms(100, true), Some(40));
        assert_eq!(t.until_next_stall_ms(100, false), Some(100));
    }

    #[test]
    fn a_wait_towards_one_host_is_probed_before_the_stall_threshold() {
        let mut t = HealthTracker::default();
        // rtt 20 ms, rttvar 5 ms: a probe's answer is due within
        // 20 + max(4 x 5, 10) = 40 ms; threshold 100 ms: the answer is in
        // by then if the probe goes at 100 - 40 - 20 (margin) = 40 ms
        // (never before half: 50), but TCP itself would have expected an
        // ACK after 40: probe at 40 ms.
        let w = |unacked, last_ack| s(1, 0, 100, unacked, last_ack, 20_000);
        t.update(0, &[w(0, 5)], 100, 0.05, 3000, 1);
        t.update(10, &[w(5, 5)], 100, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stall_probe_at_ms(100), 40);
        t.update(30, &[w(5, 25)], 100, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stalled_ms, 20);
        assert_eq!(
            t.until_next_stall_ms(100, true),
            Some(20),
            "the next round comes when the probe is due"
        );
        assert_eq!(t.until_next_stall_ms(100, false), Some(80));
        t.update(70, &[w(5, 65)], 100, 0.05, 3000, 1);
        assert!(t.paths[&1].wants_stall_probe(100, 70));
        let h = t.paths.get_mut(&1).unwrap();
        h.stall_probe_sent(h.stall_pair.unwrap().1, 70);
        // Unanswered while data is still outstanding: the path is
        // unreachable at once, before the threshold (waiting for it lost the
        // race with the kernel's own retransmission in the lab).
        let remote = h.stall_pair.unwrap().1;
        assert!(h.stall_probe_result(remote, false, 100));
        assert!(h
            .unreachable
            .as_deref()
            .unwrap()
            .contains("did not answer a probe"));
        t.update(110, &[w(5, 105)], 100, 0.05, 3000, 1);
        assert!(t.paths[&1].unreachable.is_some());
        // An answered probe instead: the wait is one host's; re-probed
        // after a back-off if it goes on.
        let mut t = HealthTracker::default();
        t.update(0, &[w(0, 5)], 100, 0.05, 3000, 1);
        t.update(10, &[w(5, 5)], 100, 0.05, 3000, 1);
        t.update(70, &[w(5, 65)], 100, 0.05, 3000, 1);
        let h = t.paths.get_mut(&1).unwrap();
        let remote = h.stall_pair.unwrap().1;
        h.stall_probe_sent(remote, 70);
        assert!(!h.stall_probe_result(remote, true, 100));
        t.update(500, &[w(5, 495)], 100, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].host_problem(100, 0.05, 1), None);
        assert!(!t.paths[&1].wants_stall_probe(100, 500));
        assert!(t.paths[&1].wants_stall_probe(100, 1070));
    }

    #[test]
    fn loss_is_the_paths_only_when_two_hosts_see_it() {
        let mut t = HealthTracker::default();
        let a = |retrans, segs| s(1, retrans, segs, 0, 0, 20_000);
        t.update(
            0,
            &[a(0, 0), to("10.8.8.8:443", a(0, 0))],
            300,
            0.05,
            3000,
            2,
        );
        // One host's connection loses 30 %, the other's nothing.
        t.update(
            100,
            &[a(30, 100), to("10.8.8.8:443", a(0, 100))],
            300,
            0.05,
            3000,
            2,
        );
        let h = &t.paths[&1];
        assert!(h.lossy, "{h:?}");
        assert_eq!(h.loss_witnesses, 1);
        assert_eq!(h.host_problem(300, 0.05, 2), None);
        assert!(h
            .unconfirmed_problem(300, 0.05, 2)
            .unwrap()
            .contains("only 1 host(s)"));
        // Both do.
        t.update(
            200,
            &[a(50, 200), to("10.8.8.8:443", a(30, 200))],
            300,
            0.05,
            3000,
            2,
        );
        let h = &t.paths[&1];
        assert_eq!(h.loss_witnesses, 2);
        assert_eq!(
            h.host_problem(300, 0.05, 2).unwrap().kind,
            ProblemKind::Lossy
        );
    }

    /// The tracker takes whatever time it is given: a clock that jumps
    /// back (or to the end of time) neither panics nor wraps.
    #[test]
    fn time_going_backwards_or_to_the_end_does_not_panic() {
        let mut t = HealthTracker::default();
        t.update(
            u64::MAX - 1,
            &[s(1, 0, 100, 5, 50, 20_000)],
            300,
            0.05,
            u64::MAX,
            1,
        );
        t.update(
            5,
            &[s(1, 0, 100, 5, u32::MAX, u32::MAX)],
            300,
            0.05,
            u64::MAX,
            1,
        );
        t.update(u64::MAX, &[s(1, 9, 1, 5, 0, 20_000)], u64::MAX, 0.05, 0, 1);
        let _ = t.until_next_stall_ms(u64::MAX, true);
        let _ = t.paths[&1].probe_timeout_ms();
    }

    #[test]
    fn an_idle_subflow_given_data_waits_only_since_then() {
        let mut t = HealthTracker::default();
        // A backup subflow idle for 4 s: nothing outstanding, not stalled.
        t.update(0, &[s(1, 0, 10, 0, 4000, 80_000)], 150, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stalled_ms, 0);
        // Data moved onto it: its last ACK is 4 s old, but it has waited 0 ms.
        t.update(100, &[s(1, 0, 40, 30, 4100, 80_000)], 150, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stalled_ms, 0);
        assert!(t.paths[&1].problem(150, 0.05).is_none());
        // 100 ms later still nothing: waiting 100 ms, threshold 2 x 80 ms.
        t.update(200, &[s(1, 0, 40, 30, 4200, 80_000)], 150, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].stalled_ms, 100);
        assert_eq!(t.until_next_stall_ms(150, true), Some(60));
        t.update(260, &[s(1, 0, 40, 30, 4260, 80_000)], 150, 0.05, 3000, 1);
        assert!(t.paths[&1]
            .problem(150, 0.05)
            .unwrap()
            .why
            .contains("stalled"));
        assert_eq!(t.until_next_stall_ms(150, true), None);
    }

    #[test]
    fn a_stall_probe_that_could_not_be_sent_is_retried_after_a_back_off() {
        let mut t = HealthTracker::default();
        let w = |unacked, last_ack| s(1, 0, 100, unacked, last_ack, 20_000);
        t.update(0, &[w(0, 5)], 100, 0.05, 3000, 1);
        t.update(10, &[w(5, 5)], 100, 0.05, 3000, 1);
        t.update(70, &[w(5, 65)], 100, 0.05, 3000, 1);
        let h = t.paths.get_mut(&1).unwrap();
        let remote = h.stall_pair.unwrap().1;
        h.stall_probe_sent(remote, 70);
        // Another host's probe failing changes nothing.
        h.probe_failed("192.0.2.1".parse().unwrap());
        assert!(!h.stall_probe.as_ref().unwrap().failed);
        h.probe_failed(remote);
        assert!(h.stall_probe.as_ref().unwrap().failed);
        // No answer will come: a late one is not taken as this probe's.
        assert!(!h.stall_probe_result(remote, false, 100));
        assert!(h.unreachable.is_none());
        assert!(!h.wants_stall_probe(100, 500));
        assert!(h.wants_stall_probe(100, 1070));
    }

    #[test]
    fn idle_loss_decays() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 1)], 300, 0.05, 1000, 1);
        t.update(100, &[s(1, 20, 40, 0, 0, 1)], 300, 0.05, 1000, 1);
        let l = t.paths[&1].loss;
        assert!(l > 0.2);
        t.update(1200, &[s(1, 20, 40, 0, 0, 1)], 300, 0.05, 1000, 1);
        assert!(t.paths[&1].loss < l);
    }

    /// A lossy path that goes idle (it stands by): echoes keep its loss
    /// measured instead of letting it fade, and clear it when they come
    /// back again.
    #[test]
    fn an_idle_lossy_paths_loss_is_measured_by_echoes_not_forgotten() {
        let mut t = HealthTracker::default();
        let decay = 1000;
        t.update(0, &[s(1, 0, 0, 0, 0, 1)], 300, 0.05, decay, 1);
        t.update(100, &[s(1, 20, 100, 0, 0, 1)], 300, 0.05, decay, 1);
        assert!(t.paths[&1].lossy);
        // Idle from now on (no more segments): not yet for LOSS_IDLE_MS.
        assert!(!t.paths[&1].wants_loss_echo(200));
        let mut now = 100;
        let mut sent = 0;
        // 20 % of the echoes lost, for ten times the decay time.
        while now < 10 * decay {
            now += 100;
            t.update(now, &[s(1, 20, 100, 0, 0, 1)], 300, 0.05, decay, 1);
            let h = t.paths.get_mut(&1).unwrap();
            if h.wants_loss_echo(now) {
                assert_eq!(
                    h.echo_pair().map(|p| p.1.to_string()).as_deref(),
                    Some("10.9.9.9")
                );
                h.loss_echo_sent(now);
                h.loss_echo_result(sent % 5 != 0, now);
                sent += 1;
            }
        }
        let h = &t.paths[&1];
        assert!(sent >= 90, "{sent} echoes");
        assert!(h.lossy && h.loss_probed, "{h:?}");
        // 20 % of echoes: 10.6 % each way.
        assert!((h.loss - 0.106).abs() < 0.03, "{}", h.loss);
        assert!(
            h.problem(300, 0.05).unwrap().why.contains("from echoes"),
            "{:?}",
            h.problem(300, 0.05)
        );
        // Every echo answered: trusted again within a few samples.
        let healed_by = now + 8 * 20 * LOSS_ECHO_INTERVAL_MS;
        while now < healed_by && t.paths[&1].lossy {
            now += 100;
            t.update(now, &[s(1, 20, 100, 0, 0, 1)], 300, 0.05, decay, 1);
            let h = t.paths.get_mut(&1).unwrap();
            if h.wants_loss_echo(now) {
                h.loss_echo_sent(now);
                h.loss_echo_result(true, now);
            }
        }
        assert!(!t.paths[&1].lossy, "{:?}", t.paths[&1]);
        // A peer that drops every echo: after one sample with no answer
        // the echoes stop, and the loss fades as it did without them.
        let mut d = HealthTracker::default();
        d.update(0, &[s(1, 0, 0, 0, 0, 1)], 300, 0.05, decay, 1);
        d.update(100, &[s(1, 20, 100, 0, 0, 1)], 300, 0.05, decay, 1);
        let mut at = 100;
        while at < 20 * decay {
            at += 100;
            d.update(at, &[s(1, 20, 100, 0, 0, 1)], 300, 0.05, decay, 1);
            let h = d.paths.get_mut(&1).unwrap();
            if h.wants_loss_echo(at) {
                h.loss_echo_sent(at);
                h.loss_echo_result(false, at);
            }
        }
        assert!(
            !d.paths[&1].lossy && !d.paths[&1].loss_probed,
            "{:?}",
            d.paths[&1]
        );
        // Traffic again: its own figure, not the echoes'.
        t.update(now + 100, &[s(1, 20, 200, 0, 0, 1)], 300, 0.05, decay, 1);
        assert!(!t.paths[&1].loss_probed);
    }

    /// A lossy path that receives (a download sends no data to measure)
    /// gets no loss echo: it would wait behind the data and read as loss.
    /// Once the data stops, it is echoed.
    #[test]
    fn a_lossy_path_gets_no_loss_echo_while_it_receives() {
        let mut t = HealthTracker::default();
        t.update(0, &[s(1, 0, 0, 0, 0, 1_000)], 300, 0.05, 3000, 1);
        t.update(100, &[s(1, 20, 100, 0, 0, 1_000)], 300, 0.05, 3000, 1);
        assert!(t.paths[&1].lossy);
        let rx = |bytes: u64, since_ms: u32| SubflowSample {
            bytes_received: bytes,
            data_segs_in: (bytes / 1000) as u32,
            last_data_recv_ms: since_ms,
            ..s(1, 20, 100, 0, 0, 1_000)
        };
        for at in (200..=1500).step_by(100) {
            t.update(at, &[rx(at * 5000, 1)], 300, 0.05, 3000, 1);
            assert!(!t.paths[&1].wants_loss_echo(at), "at {at}");
        }
        let echoed_at = (1600..=2500).step_by(100).find(|&at| {
            t.update(
                at,
                &[rx(1500 * 5000, (at - 1500) as u32)],
                300,
                0.05,
                3000,
                1,
            );
            t.paths[&1].wants_loss_echo(at)
        });
        assert!(echoed_at.is_some(), "{:?}", t.paths[&1]);
    }

    /// Behind a lost segment, data keeps arriving out of order while
    /// tcpi_last_data_recv (in-order data) grows: the path is not silent.
    #[test]
    fn data_arriving_out_of_order_is_no_silence() {
        let mut t = HealthTracker::default();
        let rx = |bytes, segs, in_order_ms| SubflowSample {
            bytes_received: bytes,
            data_segs_in: segs,
            last_data_recv_ms: in_order_ms,
            unacked: 0,
            ..s(1, 0, 100, 0, 0, 1_000)
        };
        t.update(0, &[rx(0, 0, 0)], 300, 0.05, 3000, 1);
        t.update(40, &[rx(500_000, 400, 1)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].rx_silent_ms, 1);
        // A hole at 42 ms: 300 segments came since, the last in order
        // 48 ms ago. The silence is at most 48 ms, and not probed: a round
        // is wanted at once to see whether segments still come.
        t.update(90, &[rx(502_800, 700, 48)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].rx_silent_ms, 48);
        assert!(!t.paths[&1].wants_probe());
        assert_eq!(t.until_next_stall_ms(300, true), Some(0));
        // They do, out of order: the path works.
        t.update(95, &[rx(502_800, 720, 53)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].rx_silent_ms, 5);
        assert!(!t.paths[&1].wants_probe());
        // The hole filled: in-order data, its age is the silence.
        t.update(130, &[rx(900_000, 1000, 3)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].rx_silent_ms, 3);
        // Nothing at all comes any more: silent since the last in-order
        // data, and probed.
        t.update(175, &[rx(900_000, 1000, 48)], 300, 0.05, 3000, 1);
        assert_eq!(t.paths[&1].rx_silent_ms, 48);
        assert!(t.paths[&1].wants_probe());
    }

    /// A client that only receives: srtt from the handshake, rttvar half of
    /// it (RFC 6298's first sample), so srtt + 4 rttvar is 3 RTTs. Measured
    /// in the sweep at 50/100 ms: the daemon acted 450 ms after a blackhole,
    /// 300 of them waiting for the probe's answer.
    #[test]
    fn a_silent_paths_probe_waits_twice_its_minimum_rtt_or_its_slowest_answer() {
        let mut t = HealthTracker::default();
        let receiving = |bytes| SubflowSample {
            rttvar_us: 50_000,
            min_rtt_us: 100_000,
            local_backup: None,
            joining: false,
            first: false,
            conn: 0,
            bytes_received: bytes,
            ..s(1, 0, 100, 0, 0, 100_000)
        };
        // A nearer server on the same interface, which the probe does not
        // go to: its 5 ms are not the probed remote's.
        let near = SubflowSample {
            local: "10.0.1.1:1001".parse().unwrap(),
            remote: "10.8.8.8:80".parse().unwrap(),
            min_rtt_us: 5_000,
            local_backup: None,
            joining: false,
            first: false,
            conn: 0,
            ..s(1, 0, 100, 0, 0, 5_000)
        };
        t.update(0, &[receiving(0), near.clone()], 300, 0.05, 3000, 1);
        t.update(50, &[receiving(500_000), near], 300, 0.05, 3000, 1);
        let h = t.paths.get_mut(&1).unwrap();
        assert_eq!(
            h.probe_pair.map(|(_, r)| r.to_string()),
            Some("10.9.9.9".into())
        );
        // The path's srtt is its best subflow's (the near server's); the
        // probe's cap is the probed remote's srtt + 4 rttvar.
        assert_eq!(h.srtt_ms, Some(5.0));
        assert_eq!(h.silence_probe_tcp_ms(), 300);
        assert_eq!(h.silence_probe_timeout_ms(0), 200);
        assert!(h
            .silence_probe_basis(0)
            .contains("twice the minimum RTT (100.0 ms"));
        // A short path: at least 20 ms over its minimum RTT, never more
        // than srtt + 4 rttvar.
        h.min_rtt_ms = Some(2.0);
        assert_eq!(h.silence_probe_timeout_ms(0), 22);
        h.probed_rtt_ms = Some((2.0, 1.0));
        assert_eq!(h.silence_probe_timeout_ms(0), 12);
        assert!(h.silence_probe_basis(0).contains("srtt + 4 rttvar"));
        // A slow answer makes the next silence probes wait twice it, less
        // and less over minutes.
        h.min_rtt_ms = Some(100.0);
        h.probed_rtt_ms = Some((100.0, 50.0));
        h.probe_answered(140.0, 1000);
        h.probe_answered(110.0, 2000);
        assert_eq!(h.silence_probe_timeout_ms(2000), 276);
        assert_eq!(
            h.silence_probe_timeout_ms(1000 + SLOW_ECHO_HALF_LIFE_MS),
            200
        );
        // Without a minimum RTT, TCP's figure; without the probed
        // remote's, the path's.
        h.min_rtt_ms = None;
        assert_eq!(h.silence_probe_timeout_ms(2000), 300);
        h.probed_rtt_ms = None;
        assert_eq!(
            h.silence_probe_timeout_ms(2000),
            15,
            "the near server's 5 + 10"
        );
        assert!(h.silence_probe_basis(2000).contains("unknown"));
    }

    /// Results name only the path and the remote: with two probes of one
    /// path under way, one's answer was taken for the other's.
    #[test]
    fn one_probe_of_a_path_is_under_way_at_a_time() {
        let local: IpAddr = "10.0.1.1".parse().unwrap();
        let remote: IpAddr = "10.9.9.9".parse().unwrap();
        let mut h = PathHealth {
            rx_silent_ms: 50,
            probe_pair: Some((local, remote)),
            stall_pair: Some((local, remote)),
            stalled_ms: 1000,
            outstanding: true,
            ..Default::default()
        };
        assert!(h.wants_probe());
        assert!(h.wants_stall_probe(300, 0));
        h.stall_probe_sent(remote, 0);
        assert!(!h.wants_probe(), "a stall probe is under way");
        assert!(h.stall_probe_under_way(remote) && !h.silence_probe_under_way(remote));
        h.stall_probe_result(remote, true, 300);
        assert!(h.wants_probe());
        h.silence_probe_sent(40);
        assert!(h.silence_probe_under_way(remote) && !h.stall_probe_under_way(remote));
        assert!(
            !h.wants_stall_probe(300, 5000),
            "a silence probe is under way"
        );
        h.silence_probe_answered(3.0, 5000);
        assert!(h.wants_stall_probe(300, 5000));
    }
}
