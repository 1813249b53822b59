//! The tables as the CLI printed them before they moved here.

use crate::scenario::{Metrics, Report, TimedEvent};
use crate::traffic::ProbeResult;

use super::{per_run, summary};

/// A flap run: every metric row present on the first report.
fn flap(pm: &'static str, via: &'static str, stall_ms: f64) -> Report {
    Report {
        scenario: "flap",
        pm,
        via,
        direction: "download",
        duration_s: 20.0,
        paths: Vec::new(),
        survived: true,
        bytes_sent: 200_000_000,
        bytes_verified: 123_456_789,
        bytes_corrupt: 0,
        transport: "mptcp".into(),
        congestion_control: "cubic".into(),
        seed: 42,
        metrics: Metrics {
            goodput_mbps: Some(41.27),
            aggregation_ratio: Some(0.9134),
            per_path_mbps: vec![20.5, 20.77],
            longest_stall_ms: Some(stall_ms + 60.0),
            resume_ms: Some(120.4),
            stall_ms: Some(stall_ms),
            recovery_ms: Some(900.6),
            new_path_ms: None,
            reuse_ms: Some(1500.2),
            probe: Some(ProbeResult {
                late: 2,
                lost: 1,
                p50_ms: 21.04,
                p95_ms: 48.96,
                p99_ms: 250.5,
                max_ms: 310.0,
                ..ProbeResult::default()
            }),
        },
        events: vec![
            TimedEvent {
                t_ms: 5000.0,
                what: "path 0 down".into(),
            },
            TimedEvent {
                t_ms: 10000.4,
                what: "path 0 up".into(),
            },
        ],
        sysctls: vec!["client: net.ipv4.tcp_rmem=4096 131072 6291456".into()],
        policy: Vec::new(),
        error: None,
        client_fallbacks: Default::default(),
        series_total_mbps: Vec::new(),
        series_path_mbps: Vec::new(),
    }
}

/// A run that died, with few metrics.
fn died(pm: &'static str, via: &'static str) -> Report {
    Report {
        survived: false,
        bytes_verified: 0,
        bytes_corrupt: 3,
        transport: "tcp".into(),
        metrics: Metrics {
            goodput_mbps: None,
            aggregation_ratio: None,
            per_path_mbps: Vec::new(),
            probe: None,
            ..flap(pm, via, 0.0).metrics
        },
        error: Some("connection reset".into()),
        policy: vec!["stall_ms = 150".into()],
        ..flap(pm, via, 0.0)
    }
}

const TWO_RUNS: &str = concat!(
    "scenario flap (20 s)\n",
    "  at   5000 ms: path 0 down\n",
    "  at  10000 ms: path 0 up\n",
    "  sysctl client: net.ipv4.tcp_rmem=4096 131072 6291456\n",
    "  Braid's policy: stall_ms = 150\n",
    "path manager                    kernel             braid\n",
    "via                             direct             relay\n",
    "survived                           yes                NO\n",
    "transport                        mptcp               tcp\n",
    "congestion control               cubic             cubic\n",
    "seed                                42                42\n",
    "goodput (Mbit/s)                  41.3                 -\n",
    "per path (Mbit/s)          20.5 / 20.8                  \n",
    "aggregation ratio                 0.91                 -\n",
    "data resumes after (ms)            120               120\n",
    "stall at failure (ms)              250                 0\n",
    "recovery (ms)                      901               901\n",
    "longest stall (ms)                 310                60\n",
    "primary reused after (ms)         1500              1500\n",
    "probe p50 (ms)                    21.0                 -\n",
    "probe p95 (ms)                    49.0                 -\n",
    "probe p99 (ms)                   250.5                 -\n",
    "probe max (ms)                   310.0                 -\n",
    "probe late/lost                    2/1                 -\n",
    "bytes verified               123456789                 0\n",
    "bytes corrupt                        0                 3\n",
    "error                                -  connection reset\n",
);

const ONE_RUN: &str = concat!(
    "scenario flap (20 s)\n",
    "  at   5000 ms: path 0 down\n",
    "  at  10000 ms: path 0 up\n",
    "  sysctl client: net.ipv4.tcp_rmem=4096 131072 6291456\n",
    "path manager                    kernel\n",
    "survived                           yes\n",
    "transport                        mptcp\n",
    "congestion control               cubic\n",
    "seed                                42\n",
    "goodput (Mbit/s)                  41.3\n",
    "per path (Mbit/s)          20.5 / 20.8\n",
    "aggregation ratio                 0.91\n",
    "data resumes after (ms)            120\n",
    "stall at failure (ms)              250\n",
    "recovery (ms)                      901\n",
    "longest stall (ms)                 310\n",
    "primary reused after (ms)         1500\n",
    "probe p50 (ms)                    21.0\n",
    "probe p95 (ms)                    49.0\n",
    "probe p99 (ms)                   250.5\n",
    "probe max (ms)                   310.0\n",
    "probe late/lost                    2/1\n",
    "bytes verified               123456789\n",
    "bytes corrupt                        0\n",
    "error                                -\n",
);

const SUMMARY: &str = concat!(
    "scenario flap (20 s), 4 runs in all\n",
    "path manager                                 kernel            braid\n",
    "via                                          direct            relay\n",
    "runs                                              2                2\n",
    "connection died                                   0                1\n",
    "goodput_mbps (median / worst)           41.3 / 41.3      41.3 / 41.3\n",
    "aggregation_ratio (median / worst)    0.913 / 0.913    0.913 / 0.913\n",
    "resume_ms (median / worst)            120.4 / 120.4    120.4 / 120.4\n",
    "stall_ms (median / worst)             250.0 / 410.0       0.0 / 90.0\n",
    "recovery_ms (median / worst)          900.6 / 900.6    900.6 / 900.6\n",
    "longest_stall_ms (median / worst)     310.0 / 470.0     60.0 / 150.0\n",
    "reuse_ms (median / worst)           1500.2 / 1500.2  1500.2 / 1500.2\n",
    "probe_p99_ms (median / worst)         250.5 / 250.5    250.5 / 250.5\n",
    "bytes corrupt                                     0                3\n",
);

#[test]
fn one_column_per_run() {
    let reports = [flap("kernel", "direct", 250.0), died("braid", "relay")];
    assert_eq!(per_run(&reports), TWO_RUNS);
}

#[test]
fn no_via_row_when_every_run_is_direct() {
    assert_eq!(per_run(&[flap("kernel", "direct", 250.0)]), ONE_RUN);
}

#[test]
fn median_and_worst_per_configuration() {
    let reports = [
        flap("kernel", "direct", 250.0),
        flap("kernel", "direct", 410.0),
        flap("braid", "relay", 90.0),
        died("braid", "relay"),
    ];
    assert_eq!(summary(&reports), SUMMARY);
}
