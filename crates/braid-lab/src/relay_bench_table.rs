//! Relay benchmark reports as text tables, one row per report.

use crate::relay_bench::{
    PageLoadReport, QuicFirstReport, ScaleReport, ThroughputReport, TtfbReport,
};
use crate::report_table::opt;

/// A header and one row per report, each column of its fixed width with
/// one space between: the first column (a name) left-aligned, the others
/// right-aligned. `columns` holds each title and width.
fn fixed_columns(columns: &[(&str, usize)], rows: Vec<Vec<String>>) -> String {
    let titles = columns.iter().map(|(title, _)| title.to_string()).collect();
    let mut out = String::new();
    for cells in std::iter::once(titles).chain(rows) {
        for (i, (cell, (_, width))) in cells.iter().zip(columns).enumerate() {
            if i == 0 {
                out.push_str(&format!("{cell:<width$}"));
            } else {
                out.push_str(&format!(" {cell:>width$}"));
            }
        }
        out.push('\n');
    }
    out
}

pub fn on_off(b: bool) -> &'static str {
    if b {
        "on"
    } else {
        "off"
    }
}

pub fn throughput(reports: &[ThroughputReport]) -> String {
    let columns = [
        ("via", 12),
        ("Gbit/s", 9),
        ("relay CPU s/GB", 16),
        ("client CPU s/GB", 17),
        ("Gbit/s per relay core", 19),
        ("Gbit/s per client core", 20),
    ];
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                r.via.to_string(),
                format!("{:.2}", r.gbit_per_s),
                opt(r.relay_cpu_s_per_gb, 2),
                opt(r.client_cpu_s_per_gb, 2),
                opt(r.gbit_per_s_per_relay_core, 2),
                opt(r.gbit_per_s_per_client_core, 2),
            ]
        })
        .collect();
    fixed_columns(&columns, rows)
}

pub fn ttfb(reports: &[TtfbReport]) -> String {
    let columns = [
        ("via", 12),
        ("fast open", 9),
        ("early reply", 11),
        ("p50 ms", 9),
        ("p90 ms", 9),
        ("max ms", 9),
        ("path RTT ms", 14),
        ("no answer", 9),
    ];
    let rows = reports
        .iter()
        .map(|r| {
            // Without a relay there is nothing to open fast or reply early.
            let direct = r.via == "direct";
            vec![
                r.via.to_string(),
                if direct { "-" } else { on_off(r.fast_open) }.to_string(),
                if direct { "-" } else { on_off(r.early_reply) }.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.p90_ms),
                format!("{:.1}", r.max_ms),
                format!("{:.1}", r.path_rtt_ms),
                format!("{}/{}", r.failures, r.samples + r.failures),
            ]
        })
        .collect();
    fixed_columns(&columns, rows)
}

pub fn page_load(reports: &[PageLoadReport]) -> String {
    let columns = [
        ("via", 12),
        ("connections", 12),
        ("response bytes", 14),
        ("median ms", 12),
        ("worst ms", 12),
    ];
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                if r.via == "direct" {
                    "direct (TCP, primary)"
                } else {
                    r.via
                }
                .to_string(),
                r.connections.to_string(),
                r.response_bytes.to_string(),
                format!("{:.1}", r.median_ms),
                format!("{:.1}", r.worst_ms),
            ]
        })
        .collect();
    fixed_columns(&columns, rows)
}

pub fn quic_first(reports: &[QuicFirstReport]) -> String {
    let columns = [
        ("quic", 8),
        ("samples", 9),
        ("over QUIC", 10),
        ("p50 ms", 9),
        ("worst ms", 9),
    ];
    let rows = reports
        .iter()
        .map(|r| {
            vec![
                r.quic.to_string(),
                r.samples.to_string(),
                r.over_quic.to_string(),
                format!("{:.1}", r.p50_ms),
                format!("{:.1}", r.worst_ms),
            ]
        })
        .collect();
    fixed_columns(&columns, rows)
}

/// Three lines per report: the connections, then the relay's and the
/// client's resources.
pub fn scale(reports: &[ScaleReport]) -> String {
    let mut out = String::new();
    for r in reports {
        out.push_str(&format!(
            "{}: {} connections ({} failed) open in {:.2} s; CONNECT answered p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; first response p50 {:.1} ms, p99 {:.1} ms",
            r.via, r.connections, r.failures, r.all_open_s, r.setup_p50_ms, r.setup_p99_ms, r.setup_max_ms, r.response_p50_ms, r.response_p99_ms
        ));
        out.push('\n');
        out.push_str(&format!(
            "  relay:  RSS {} -> {} KiB ({:.1} KiB per connection), fds {} -> {} -> {} after close, CPU {:.3} ms per connection",
            r.relay_rss_idle_kib, r.relay_rss_peak_kib, r.relay_rss_per_connection_kib, r.relay_fds_idle, r.relay_fds_peak, r.relay_fds_after, r.relay_cpu_ms_per_connection
        ));
        out.push('\n');
        out.push_str(&format!(
            "  client: RSS {} -> {} KiB ({:.1} KiB per connection), fds {} -> {} after close, CPU {:.3} ms per connection",
            r.client_rss_idle_kib, r.client_rss_peak_kib, r.client_rss_per_connection_kib, r.client_fds_idle, r.client_fds_after, r.client_cpu_ms_per_connection
        ));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests;
