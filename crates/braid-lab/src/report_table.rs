//! Scenario reports as text tables: one column per run, or per
//! configuration over repeated runs (median and worst).

use crate::scenario::Report;
use crate::summary;

/// A number with `digits` decimals, or "-" when not measured.
pub fn opt(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}"))
        .unwrap_or_else(|| "-".into())
}

/// Rows of (name, one value per column): names left-aligned, values
/// right-aligned, each column at least 8 wide.
fn grid(rows: &[(String, Vec<String>)], columns: usize) -> String {
    let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|i| rows.iter().map(|r| r.1[i].len()).max().unwrap_or(0).max(8))
        .collect();
    let mut out = String::new();
    for (name, vals) in rows {
        out.push_str(&format!("{name:<w0$}"));
        for (v, w) in vals.iter().zip(&widths) {
            out.push_str(&format!("  {v:>w$}"));
        }
        out.push('\n');
    }
    out
}

/// Median and worst per configuration, one column each.
pub fn summary(reports: &[Report]) -> String {
    let groups = summary::summarize(reports);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rows.push((
        "path manager".into(),
        groups.iter().map(|g| g.pm.to_string()).collect(),
    ));
    if groups.iter().any(|g| g.via != "direct") {
        rows.push((
            "via".into(),
            groups.iter().map(|g| g.via.to_string()).collect(),
        ));
    }
    rows.push((
        "runs".into(),
        groups.iter().map(|g| g.runs.to_string()).collect(),
    ));
    rows.push((
        "connection died".into(),
        groups.iter().map(|g| g.died.to_string()).collect(),
    ));
    for (name, _) in summary::MEASUREMENTS {
        if !groups
            .iter()
            .any(|g| g.measurements.iter().any(|(n, _)| n == name))
        {
            continue;
        }
        let digits = if *name == "aggregation_ratio" { 3 } else { 1 };
        rows.push((
            format!("{name} (median / worst)"),
            groups
                .iter()
                .map(|g| {
                    g.measurements
                        .iter()
                        .find(|(n, _)| n == name)
                        .map(|(_, s)| format!("{:.digits$} / {:.digits$}", s.median, s.worst))
                        .unwrap_or_else(|| "-".into())
                })
                .collect(),
        ));
    }
    rows.push((
        "bytes corrupt".into(),
        groups.iter().map(|g| g.bytes_corrupt.to_string()).collect(),
    ));
    let mut out = String::new();
    if let Some(first) = reports.first() {
        out.push_str(&format!(
            "scenario {} ({:.0} s), {} runs in all\n",
            first.scenario,
            first.duration_s,
            reports.len()
        ));
    }
    out.push_str(&grid(&rows, groups.len()));
    out
}

/// One column per report, one row per metric.
pub fn per_run(reports: &[Report]) -> String {
    let mut out = String::new();
    if let Some(first) = reports.first() {
        out.push_str(&format!(
            "scenario {} ({:.0} s)\n",
            first.scenario, first.duration_s
        ));
        for e in &first.events {
            out.push_str(&format!("  at {:>6.0} ms: {}\n", e.t_ms, e.what));
        }
        for s in &first.sysctls {
            out.push_str(&format!("  sysctl {s}\n"));
        }
    }
    if let Some(r) = reports.iter().find(|r| !r.policy.is_empty()) {
        for s in &r.policy {
            out.push_str(&format!("  Braid's policy: {s}\n"));
        }
    }
    out.push_str(&grid(&metric_rows(reports), reports.len()));
    out
}

/// The rows of [`per_run`]: a metric's row only when some run measured it.
fn metric_rows(reports: &[Report]) -> Vec<(String, Vec<String>)> {
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    let mut row = |name: &str, f: &dyn Fn(&Report) -> String| {
        rows.push((name.to_string(), reports.iter().map(f).collect()));
    };
    row("path manager", &|r| r.pm.to_string());
    if reports.iter().any(|r| r.via != "direct") {
        row("via", &|r| r.via.to_string());
    }
    row("survived", &|r| {
        if r.survived {
            "yes".into()
        } else {
            "NO".into()
        }
    });
    row("transport", &|r| r.transport.clone());
    row("congestion control", &|r| r.congestion_control.clone());
    row("seed", &|r| r.seed.to_string());
    let has = |f: &dyn Fn(&Report) -> bool| reports.iter().any(f);
    if has(&|r| r.metrics.goodput_mbps.is_some()) {
        row("goodput (Mbit/s)", &|r| opt(r.metrics.goodput_mbps, 1));
        row("per path (Mbit/s)", &|r| {
            r.metrics
                .per_path_mbps
                .iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" / ")
        });
    }
    if has(&|r| r.metrics.aggregation_ratio.is_some()) {
        row("aggregation ratio", &|r| {
            opt(r.metrics.aggregation_ratio, 2)
        });
    }
    if has(&|r| r.metrics.stall_ms.is_some()) {
        row("data resumes after (ms)", &|r| opt(r.metrics.resume_ms, 0));
        row("stall at failure (ms)", &|r| opt(r.metrics.stall_ms, 0));
        row("recovery (ms)", &|r| opt(r.metrics.recovery_ms, 0));
    }
    if has(&|r| r.metrics.longest_stall_ms.is_some()) {
        row("longest stall (ms)", &|r| {
            opt(r.metrics.longest_stall_ms, 0)
        });
    }
    if has(&|r| r.scenario == "late-interface") {
        row("new path carries data (ms)", &|r| {
            opt(r.metrics.new_path_ms, 0)
        });
    }
    if has(&|r| r.scenario == "flap") {
        row("primary reused after (ms)", &|r| opt(r.metrics.reuse_ms, 0));
    }
    if has(&|r| r.metrics.probe.is_some()) {
        let p = |f: fn(&crate::traffic::ProbeResult) -> String| {
            move |r: &Report| {
                r.metrics
                    .probe
                    .as_ref()
                    .map(f)
                    .unwrap_or_else(|| "-".into())
            }
        };
        row("probe p50 (ms)", &p(|p| format!("{:.1}", p.p50_ms)));
        row("probe p95 (ms)", &p(|p| format!("{:.1}", p.p95_ms)));
        row("probe p99 (ms)", &p(|p| format!("{:.1}", p.p99_ms)));
        row("probe max (ms)", &p(|p| format!("{:.1}", p.max_ms)));
        row("probe late/lost", &p(|p| format!("{}/{}", p.late, p.lost)));
    }
    row("bytes verified", &|r| r.bytes_verified.to_string());
    row("bytes corrupt", &|r| r.bytes_corrupt.to_string());
    row("error", &|r| r.error.clone().unwrap_or_else(|| "-".into()));
    rows
}

#[cfg(test)]
mod tests;
