//! The tables as the CLI printed them before they moved here.

use crate::relay_bench::{
    PageLoadReport, QuicFirstReport, ScaleReport, ThroughputReport, TtfbReport,
};

use super::{page_load, quic_first, scale, throughput, ttfb};

const THROUGHPUT: &str = concat!(
    "via             Gbit/s   relay CPU s/GB   client CPU s/GB Gbit/s per relay core Gbit/s per client core\n",
    "direct            9.88                -              0.21                   -                37.50\n",
    "transparent       3.50             1.00              0.90                7.96                 8.88\n",
);

const TTFB: &str = concat!(
    "via          fast open early reply    p50 ms    p90 ms    max ms    path RTT ms no answer\n",
    "direct               -           -      40.3      41.0      45.5           40.0      0/50\n",
    "socks               on         off     120.0     123.0    5000.0           40.0      2/50\n",
);

const PAGE_LOAD: &str = concat!(
    "via           connections response bytes    median ms     worst ms\n",
    "direct (TCP, primary)            6         100000        210.4        260.1\n",
    "http                    6         100000        330.0       1402.8\n",
);

const QUIC: &str = concat!(
    "quic       samples  over QUIC    p50 ms  worst ms\n",
    "block           20          0      41.2      45.0\n",
    "allow           20         20      30.1    1033.3\n",
);

const SCALE: &str = concat!(
    "socks: 1000 connections (3 failed) open in 1.55 s; CONNECT answered p50 1.3 ms, p99 8.0 ms, max 20.0 ms; first response p50 2.5 ms, p99 9.9 ms\n",
    "  relay:  RSS 4000 -> 52000 KiB (48.0 KiB per connection), fds 10 -> 2010 -> 10 after close, CPU 0.123 ms per connection\n",
    "  client: RSS 3000 -> 41000 KiB (38.0 KiB per connection), fds 8 -> 8 after close, CPU 0.050 ms per connection\n",
);

#[test]
fn throughput_table() {
    assert_eq!(
        throughput(&[
            ThroughputReport {
                via: "direct",
                paths: 2,
                seconds: 10.0,
                bytes: 1,
                gbit_per_s: 9.876,
                relay_cpu_s_per_gb: None,
                client_cpu_s_per_gb: Some(0.214),
                gbit_per_s_per_relay_core: None,
                gbit_per_s_per_client_core: Some(37.5)
            },
            ThroughputReport {
                via: "transparent",
                paths: 2,
                seconds: 10.0,
                bytes: 1,
                gbit_per_s: 3.5,
                relay_cpu_s_per_gb: Some(1.005),
                client_cpu_s_per_gb: Some(0.9),
                gbit_per_s_per_relay_core: Some(7.96),
                gbit_per_s_per_client_core: Some(8.88)
            },
        ]),
        THROUGHPUT
    );
}

#[test]
fn ttfb_table() {
    assert_eq!(
        ttfb(&[
            TtfbReport {
                via: "direct",
                fast_open: true,
                early_reply: true,
                samples: 50,
                failures: 0,
                p50_ms: 40.26,
                p90_ms: 41.0,
                max_ms: 45.55,
                path_rtt_ms: 40.0
            },
            TtfbReport {
                via: "socks",
                fast_open: true,
                early_reply: false,
                samples: 48,
                failures: 2,
                p50_ms: 120.04,
                p90_ms: 122.96,
                max_ms: 5000.0,
                path_rtt_ms: 40.0
            },
        ]),
        TTFB
    );
}

#[test]
fn page_load_table() {
    assert_eq!(
        page_load(&[
            PageLoadReport {
                via: "direct",
                connections: 6,
                response_bytes: 100000,
                runs: 5,
                median_ms: 210.44,
                worst_ms: 260.06
            },
            PageLoadReport {
                via: "http",
                connections: 6,
                response_bytes: 100000,
                runs: 5,
                median_ms: 330.0,
                worst_ms: 1402.75
            },
        ]),
        PAGE_LOAD
    );
}

#[test]
fn quic_first_table() {
    assert_eq!(
        quic_first(&[
            QuicFirstReport {
                quic: "block",
                samples: 20,
                over_quic: 0,
                p50_ms: 41.2,
                worst_ms: 45.0
            },
            QuicFirstReport {
                quic: "allow",
                samples: 20,
                over_quic: 20,
                p50_ms: 30.06,
                worst_ms: 1033.3
            },
        ]),
        QUIC
    );
}

#[test]
fn scale_table() {
    assert_eq!(
        scale(&[ScaleReport {
            via: "socks",
            connections: 1000,
            failures: 3,
            setup_p50_ms: 1.26,
            setup_p99_ms: 8.04,
            setup_max_ms: 20.0,
            response_p50_ms: 2.5,
            response_p99_ms: 9.95,
            relay_cpu_ms_per_connection: 0.1234,
            client_cpu_ms_per_connection: 0.05,
            all_open_s: 1.555,
            relay_rss_idle_kib: 4000,
            relay_rss_peak_kib: 52000,
            relay_rss_per_connection_kib: 48.0,
            client_rss_idle_kib: 3000,
            client_rss_peak_kib: 41000,
            client_rss_per_connection_kib: 38.04,
            relay_fds_idle: 10,
            relay_fds_peak: 2010,
            relay_fds_after: 10,
            client_fds_idle: 8,
            client_fds_after: 8
        }]),
        SCALE
    );
}
