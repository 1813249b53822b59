//! `braid monitor`: MPTCP events as they happen, one line (or JSON line) each.

use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use braid_kernel::events::{reset_reason_name, Event, EventStream, StreamItem};
use braid_kernel::Result;
use serde::Serialize;

use crate::names::Interfaces;
use crate::Ctx;

#[derive(Serialize)]
struct EventLine<'a> {
    time: String,
    event: String,
    #[serde(flatten)]
    ev: &'a Event,
    #[serde(skip_serializing_if = "Option::is_none")]
    dev: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    flag_names: Vec<String>,
}

/// UTC wall-clock time as RFC 3339 with milliseconds.
pub fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = now.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        now.subsec_millis()
    )
}

/// Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn endpoint(addr: Option<IpAddr>, port: Option<u16>) -> Option<String> {
    match (addr, port) {
        (Some(IpAddr::V6(a)), Some(p)) => Some(format!("[{a}]:{p}")),
        (Some(a), Some(p)) => Some(format!("{a}:{p}")),
        (Some(a), None) => Some(a.to_string()),
        (None, Some(p)) => Some(format!("*:{p}")),
        (None, None) => None,
    }
}

pub fn text_line(time: &str, ev: &Event, dev: Option<&str>) -> String {
    let mut s = format!("{} {:<16}", &time[11..23], ev.kind.name());
    if let Some(t) = ev.token {
        s.push_str(&format!(" token {t:08x}"));
    }
    match (endpoint(ev.saddr, ev.sport), endpoint(ev.daddr, ev.dport)) {
        (Some(l), Some(r)) => s.push_str(&format!(" {l} -> {r}")),
        (Some(l), None) => s.push_str(&format!(" {l}")),
        (None, Some(r)) => s.push_str(&format!(" remote {r}")),
        (None, None) => {}
    }
    if let Some(id) = ev.loc_id {
        s.push_str(&format!(" loc_id {id}"));
    }
    if let Some(id) = ev.rem_id {
        s.push_str(&format!(" rem_id {id}"));
    }
    if ev.backup == Some(true) {
        s.push_str(" backup");
    }
    if let Some(d) = dev {
        s.push_str(&format!(" dev {d}"));
    } else if let Some(i) = ev.ifindex.filter(|i| *i != 0) {
        s.push_str(&format!(" ifindex {i}"));
    }
    if ev.is_server_side() {
        s.push_str(" server-side");
    }
    for f in ev.flag_names().into_iter().filter(|f| f != "server_side") {
        s.push_str(&format!(" {f}"));
    }
    if let Some(e) = ev.error.filter(|e| *e != 0) {
        s.push_str(&format!(
            " error {e} ({})",
            std::io::Error::from_raw_os_error(e as i32)
        ));
    }
    if let Some(r) = ev.reset_reason {
        s.push_str(&format!(" reset {r} ({})", reset_reason_name(r)));
    }
    if let Some(f) = ev.reset_flags.filter(|f| *f != 0) {
        s.push_str(&format!(" reset_flags 0x{f:x}"));
    }
    if let Some(t) = ev.timeout {
        s.push_str(&format!(" timeout {t}"));
    }
    if !ev.unknown_attrs.is_empty() {
        s.push_str(&format!(" unknown_attrs {:?}", ev.unknown_attrs));
    }
    s
}

pub fn run(ctx: &Ctx) -> Result<()> {
    let mut stream = EventStream::subscribe()?;
    // On stderr in both modes, so scripts can wait for the subscription.
    eprintln!("braid: listening for MPTCP events (Ctrl-C to stop)");
    // Interface names, reloaded only when an event names an unknown index.
    let mut ifs = Interfaces::load().ok();
    loop {
        let item = stream.next_blocking()?;
        let time = timestamp();
        match item {
            StreamItem::Overflow => {
                if ctx.json {
                    println!("{}", serde_json::json!({"time": time, "event": "overflow"}));
                } else {
                    println!("{} overflow: the kernel dropped events (receive buffer full); some are missing", &time[11..23]);
                }
            }
            StreamItem::Event(ev) => {
                let dev = ev.ifindex.filter(|i| *i != 0).and_then(|i| {
                    if ifs.as_ref().and_then(|x| x.name(i)).is_none() {
                        ifs = Interfaces::load().ok();
                    }
                    ifs.as_ref()?.name(i).map(str::to_string)
                });
                if ctx.json {
                    let line = EventLine {
                        time,
                        event: ev.kind.name(),
                        ev: &ev,
                        dev,
                        flag_names: ev.flag_names(),
                    };
                    println!(
                        "{}",
                        serde_json::to_string(&line).expect("events serialize")
                    );
                } else {
                    println!("{}", text_line(&time, &ev, dev.as_deref()));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(20_417), (2025, 11, 25));
        assert_eq!(timestamp().len(), 24);
    }
}
