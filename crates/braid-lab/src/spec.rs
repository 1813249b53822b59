//! What a lab is made of, and parsing of the units people type:
//! rates (`40mbit`), durations (`10ms`), percentages (`1%`), comma lists.

use serde::{Deserialize, Serialize};

use crate::LabError;

/// Impairment of one path, applied in each direction.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, Default)]
pub struct PathSpec {
    /// Rate limit in bits per second (tbf), `None` = unlimited.
    pub rate_bps: Option<u64>,
    /// One-way delay added in each direction, microseconds (RTT = 2x).
    pub delay_us: u64,
    /// Jitter: each packet's delay varies uniformly by up to this much.
    pub jitter_us: u64,
    /// Random loss probability in each direction, 0.0 to 1.0.
    pub loss: f64,
    /// Let jitter reorder packets (off: later packets never overtake).
    pub reorder: bool,
    /// Apply the rate in the emulator (serialisation delay, 200 ms queue)
    /// instead of a tbf qdisc on the path's devices.
    #[serde(default)]
    pub rate_in_emulator: bool,
    /// The first this many MP_PRIO options (a subflow's backup flag) in
    /// each direction are lost with their packets, as a lossy path may
    /// lose the one MP_PRIO it is told: what makes a peer miss a backup
    /// flag, on purpose.
    #[serde(default)]
    pub lose_mp_prio: u32,
    /// The first this many SYNs with MP_CAPABLE sent towards the server on
    /// this path are lost: three (the SYN and the two retransmissions of
    /// `net.mptcp.syn_retrans_before_tcp_fallback`) make the kernel fall
    /// back to plain TCP, and then turn active MPTCP off as if a middlebox
    /// dropped it (a large number is such a middlebox).
    #[serde(default)]
    pub lose_mp_capable_syn: u32,
}

/// `"1.5ms"` -> (1.5, "ms"), lower-cased; `what` names it in the error.
fn number_and_unit(s: &str, what: &str, example: &str) -> Result<(f64, String), LabError> {
    let t = s.trim().to_ascii_lowercase();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let v = num.parse().map_err(|_| {
        LabError::Invalid(format!(
            "invalid {what} '{s}': expected a number with a unit, e.g. {example}"
        ))
    })?;
    Ok((v, unit.to_string()))
}

/// Parse a rate: `40mbit`, `1.5gbit`, `500kbit`, `100000bit`, `10mbps` (bytes).
pub fn parse_rate(s: &str) -> Result<u64, LabError> {
    let (v, unit) = number_and_unit(s, "rate", "40mbit")?;
    let mult = match unit.as_str() {
        "" | "bit" => 1.0,
        "kbit" => 1e3,
        "mbit" => 1e6,
        "gbit" => 1e9,
        "bps" => 8.0,
        "kbps" => 8e3,
        "mbps" => 8e6,
        "gbps" => 8e9,
        _ => {
            return Err(LabError::Invalid(format!(
                "invalid rate unit in '{s}': use bit, kbit, mbit, gbit (or bps, kbps, mbps, gbps for bytes per second)"
            )))
        }
    };
    let bps = v * mult;
    if !(1000.0..=100e9).contains(&bps) {
        return Err(LabError::Invalid(format!(
            "rate '{s}' is out of range: from 1kbit to 100gbit"
        )));
    }
    Ok(bps as u64)
}

/// Parse a duration into microseconds: `10ms`, `1.5s`, `250us`, `0`.
pub fn parse_duration_us(s: &str) -> Result<u64, LabError> {
    if s.trim() == "0" {
        return Ok(0);
    }
    let (v, unit) = number_and_unit(s, "duration", "10ms, 1s or 250us")?;
    let mult = match unit.as_str() {
        "us" => 1.0,
        "ms" => 1e3,
        "s" => 1e6,
        _ => {
            return Err(LabError::Invalid(format!(
                "invalid duration unit in '{s}': use us, ms or s"
            )))
        }
    };
    let us = v * mult;
    if us > 60e6 {
        return Err(LabError::Invalid(format!(
            "duration '{s}' is too long: at most 60s"
        )));
    }
    Ok(us as u64)
}

/// Parse a loss: `1%`, `0.5%`, `0`, or a fraction `0.01`.
pub fn parse_loss(s: &str) -> Result<f64, LabError> {
    let t = s.trim();
    let v = if let Some(p) = t.strip_suffix('%') {
        p.parse::<f64>().map(|v| v / 100.0)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| {
        LabError::Invalid(format!(
            "invalid loss '{s}': expected a percentage such as 1% or 0.5%"
        ))
    })?;
    if !(0.0..=1.0).contains(&v) {
        return Err(LabError::Invalid(format!(
            "loss '{s}' is out of range: 0% to 100%"
        )));
    }
    Ok(v)
}

/// Parse a count such as `--lose-mp-prio`'s: a whole number, 0 to 1000.
pub fn parse_count(s: &str, what: &str) -> Result<u32, LabError> {
    match s.trim().parse::<u32>() {
        Ok(n) if n <= 1000 => Ok(n),
        _ => Err(LabError::Invalid(format!(
            "invalid --{what} '{s}': expected a whole number from 0 to 1000"
        ))),
    }
}

/// Split `a,b,c` into exactly `n` items; a single item applies to all.
pub fn per_path<'a>(list: &'a str, n: usize, what: &str) -> Result<Vec<&'a str>, LabError> {
    let items: Vec<&str> = list.split(',').map(str::trim).collect();
    match items.len() {
        1 => Ok(vec![items[0]; n]),
        k if k == n => Ok(items),
        k => Err(LabError::Invalid(format!(
            "--{what} has {k} values but there are {n} paths: give one value for all or one per path"
        ))),
    }
}

pub fn format_rate(bps: u64) -> String {
    if bps >= 1_000_000_000 && bps % 1_000_000 == 0 {
        format!("{}gbit", bps as f64 / 1e9)
    } else if bps >= 1_000_000 {
        format!("{}mbit", bps as f64 / 1e6)
    } else {
        format!("{}kbit", bps as f64 / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units() {
        assert_eq!(parse_rate("40mbit").unwrap(), 40_000_000);
        assert_eq!(parse_rate("1.5gbit").unwrap(), 1_500_000_000);
        assert_eq!(parse_rate("10mbps").unwrap(), 80_000_000);
        assert!(parse_rate("40").is_err());
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("40parsec").is_err());
        assert_eq!(parse_duration_us("10ms").unwrap(), 10_000);
        assert_eq!(parse_duration_us("1.5s").unwrap(), 1_500_000);
        assert_eq!(parse_duration_us("0").unwrap(), 0);
        assert!(parse_duration_us("10").is_err());
        assert!(parse_duration_us("2h").is_err());
        assert!((parse_loss("1%").unwrap() - 0.01).abs() < 1e-12);
        assert!(parse_loss("150%").is_err());
        assert_eq!(per_path("1,2", 2, "rate").unwrap(), vec!["1", "2"]);
        assert_eq!(per_path("1", 3, "rate").unwrap(), vec!["1", "1", "1"]);
        assert!(per_path("1,2,3", 2, "rate").is_err());
        assert_eq!(format_rate(40_000_000), "40mbit");
    }
}
