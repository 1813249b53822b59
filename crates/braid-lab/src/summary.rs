//! Repeated runs reduced to what a reader should see: per configuration
//! (path manager and way to the server), the median and the worst of each
//! measurement, never the best.

use serde::Serialize;

use crate::scenario::Report;

/// One measurement over repeated runs.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub worst: f64,
    pub runs: usize,
}

/// Which way is worse for a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Worse {
    Higher,
    Lower,
}

/// The measurements summarised, with the direction that is worse.
pub const MEASUREMENTS: &[(&str, Worse)] = &[
    ("goodput_mbps", Worse::Lower),
    ("aggregation_ratio", Worse::Lower),
    ("resume_ms", Worse::Higher),
    ("stall_ms", Worse::Higher),
    ("recovery_ms", Worse::Higher),
    ("longest_stall_ms", Worse::Higher),
    ("new_path_ms", Worse::Higher),
    ("reuse_ms", Worse::Higher),
    ("probe_p99_ms", Worse::Higher),
];

fn value(r: &Report, name: &str) -> Option<f64> {
    let m = &r.metrics;
    match name {
        "goodput_mbps" => m.goodput_mbps,
        "aggregation_ratio" => m.aggregation_ratio,
        "resume_ms" => m.resume_ms,
        "stall_ms" => m.stall_ms,
        "recovery_ms" => m.recovery_ms,
        "longest_stall_ms" => m.longest_stall_ms,
        "new_path_ms" => m.new_path_ms,
        "reuse_ms" => m.reuse_ms,
        "probe_p99_ms" => m.probe.as_ref().map(|p| p.p99_ms),
        _ => None,
    }
}

/// The median (the lower middle of an even count) and the worst.
pub fn spread(mut values: Vec<f64>, worse: Worse) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let median = values[(values.len() - 1) / 2];
    let worst = match worse {
        Worse::Higher => values[values.len() - 1],
        Worse::Lower => values[0],
    };
    Some(Spread {
        median,
        worst,
        runs: values.len(),
    })
}

/// The runs of one configuration.
#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub pm: &'static str,
    pub via: &'static str,
    pub runs: usize,
    /// Runs in which the connection died.
    pub died: usize,
    pub bytes_corrupt: u64,
    pub measurements: Vec<(&'static str, Spread)>,
}

/// Group reports by path manager and way to the server, in first-seen order.
pub fn summarize(reports: &[Report]) -> Vec<Group> {
    let mut keys: Vec<(&'static str, &'static str)> = Vec::new();
    for r in reports {
        if !keys.contains(&(r.pm, r.via)) {
            keys.push((r.pm, r.via));
        }
    }
    keys.into_iter()
        .map(|(pm, via)| {
            let runs: Vec<&Report> = reports
                .iter()
                .filter(|r| r.pm == pm && r.via == via)
                .collect();
            let measurements = MEASUREMENTS
                .iter()
                .filter_map(|(name, worse)| {
                    let vals: Vec<f64> = runs.iter().filter_map(|r| value(r, name)).collect();
                    spread(vals, *worse).map(|s| (*name, s))
                })
                .collect();
            Group {
                pm,
                via,
                runs: runs.len(),
                died: runs.iter().filter(|r| !r.survived).count(),
                bytes_corrupt: runs.iter().map(|r| r.bytes_corrupt).sum(),
                measurements,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_worst_never_the_best() {
        let s = spread(vec![30.0, 10.0, 20.0, 400.0], Worse::Higher).unwrap();
        assert_eq!((s.median, s.worst, s.runs), (20.0, 400.0, 4));
        let s = spread(vec![0.95, 0.90, 0.96], Worse::Lower).unwrap();
        assert_eq!((s.median, s.worst), (0.95, 0.90));
        assert!(spread(Vec::new(), Worse::Lower).is_none());
    }
}
