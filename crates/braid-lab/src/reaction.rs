//! How long Braid's daemon took to react to a failover scenario's fault,
//! read from a run's logs (`--logs`): the scenario's fault line and the
//! daemon's decision lines carry UTC times, so a stall can be split into
//! detection (fault → the daemon's first failover action) and what the
//! kernel took after it (resending on the other path).

use serde::{Deserialize, Serialize};
use std::time::SystemTime;

/// The daemon's reaction to the fault, in ms after it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Reaction {
    /// First probe of the failed path (the daemon suspected it), if any.
    pub suspected_ms: Option<f64>,
    /// First action that was not a probe: the failover itself.
    pub acted_ms: f64,
}

/// The scenario's lines that say the primary failed.
const FAULT_MARKS: [&str; 3] = ["loses carrier", "blackholed", "loses the client's address"];

/// Pure: `scenario` is the run's `*-scenario.txt`, `daemon_log` the path
/// manager's `*-braid-daemon.log`. None when there is no fault line or the
/// daemon did nothing after it.
pub fn from_logs(scenario: &str, daemon_log: &str) -> Option<Reaction> {
    let fault = scenario
        .lines()
        .find(|l| FAULT_MARKS.iter().any(|m| l.contains(m)))
        .and_then(line_time)?;
    let mut suspected_ms = None;
    for line in daemon_log.lines() {
        let Some(action) = decision_action(line) else {
            continue;
        };
        let Some(t) = line_time(line) else { continue };
        let Ok(after) = t.duration_since(fault) else {
            continue;
        };
        let ms = after.as_secs_f64() * 1e3;
        if action.starts_with("probe ") {
            suspected_ms.get_or_insert(ms);
            continue;
        }
        return Some(Reaction {
            suspected_ms,
            acted_ms: ms,
        });
    }
    None
}

/// `2026-11-26T23:47:10.691508Z  INFO decision action=remove ... reason=...`
/// → `remove ...`.
fn decision_action(line: &str) -> Option<&str> {
    let rest = line.split_once(" decision action=")?.1;
    Some(rest.split_once(" reason=").map_or(rest, |(a, _)| a))
}

fn line_time(line: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(line.split_whitespace().next()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCENARIO: &str = "2026-11-26T23:47:10.422Z t=1600.7ms path 0 blackholed\n";
    const LOG: &str = "\
2026-11-26T23:47:08.532245Z  INFO decision action=set initcwnd 40 on default routes dev #3 table 101 reason=p1 stands by
2026-11-26T23:47:08.532282Z  INFO ready
2026-11-26T23:47:10.577309Z  INFO decision action=probe 10.1.0.2 from 10.1.0.1 dev #2 (answer within 112 ms) reason=p0: a connection waited 104 ms
2026-11-26T23:47:10.689855Z  WARN path probe unanswered remote=10.1.0.2
2026-11-26T23:47:10.691508Z  INFO decision action=remove endpoint 10.1.0.1 id 1 reason=p0 is unreachable
2026-11-26T23:47:10.699354Z  INFO decision action=add endpoint 10.1.0.1 id 1 subflow backup dev #2 reason=p0 is unreachable
";

    #[test]
    fn the_first_action_after_the_fault_that_is_not_a_probe_is_the_reaction() {
        let r = from_logs(SCENARIO, LOG).unwrap();
        assert!((r.suspected_ms.unwrap() - 155.309).abs() < 0.01, "{r:?}");
        assert!((r.acted_ms - 269.508).abs() < 0.01, "{r:?}");
    }

    #[test]
    fn decisions_before_the_fault_do_not_count_and_no_fault_means_no_reaction() {
        let before_only = LOG.lines().take(2).collect::<Vec<_>>().join("\n");
        assert_eq!(from_logs(SCENARIO, &before_only), None);
        assert_eq!(
            from_logs(
                "2026-11-26T23:47:10.422Z t=1.0ms path 1 gets its address\n",
                LOG
            ),
            None
        );
    }

    #[test]
    fn a_carrier_loss_acted_on_without_a_probe_has_no_suspicion() {
        let scenario = "2026-11-26T23:47:10.422Z t=1600.7ms path 0 loses carrier\n";
        let log = "2026-11-26T23:47:10.425Z  INFO decision action=remove endpoint 10.1.0.1 id 1 reason=p0 lost carrier\n";
        let r = from_logs(scenario, log).unwrap();
        assert_eq!(r.suspected_ms, None);
        assert!((r.acted_ms - 3.0).abs() < 0.01);
    }
}
