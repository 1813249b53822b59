//! `braid monitor`: MPTCP events as they happen, one line (or JSON line) each.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use braid_daemon::control::{self, Follower};
use braid_daemon::journal::{Entry, What};

use braid_kernel::events::{reset_reason_name, Event, EventStream, StreamItem};
use braid_kernel::Result;
use serde::Serialize;

use crate::Ctx;
use braid_kernel::interfaces::Interfaces;

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

/// UTC wall-clock time now as RFC 3339 with milliseconds.
pub fn timestamp() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_millis() as u64)
}

/// The last millisecond humantime formats (9999-12-31T23:59:59.999Z).
const MAX_RFC3339_MS: u64 = 253_402_300_799_999;

/// A time in milliseconds since the Unix epoch as RFC 3339 (UTC); times
/// past year 9999 (from a hostile or broken peer) are shown as its end.
pub fn rfc3339(unix_ms: u64) -> String {
    let ms = unix_ms.min(MAX_RFC3339_MS);
    humantime::format_rfc3339_millis(UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
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

/// `braid monitor`: options.
#[derive(clap::Args)]
pub struct MonitorArgs {
    /// Start with what the daemon remembers of this long ago (e.g. 10m):
    /// MPTCP events, link and address changes, its decisions and refusals.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    since: Option<std::time::Duration>,
    /// Control socket of the daemon.
    #[arg(long, default_value = "/run/braid/braid.sock")]
    socket: PathBuf,
    /// Read MPTCP events from the kernel only, even when the daemon runs.
    #[arg(long, conflicts_with = "since")]
    kernel: bool,
}

pub fn run(ctx: &Ctx, args: MonitorArgs) -> Result<()> {
    if !args.kernel {
        match daemon_journal(&args) {
            Ok(f) => return follow_daemon(ctx, f, &args.socket),
            Err(why) if args.since.is_some() => {
                return Err(braid_kernel::Error::Invalid(format!(
                    "--since shows the daemon's memory, and {why}; without it, drop --since to see the kernel's events from now on"
                )));
            }
            Err(why) => return follow_kernel(ctx, Some(&why)),
        }
    }
    follow_kernel(ctx, None)
}

/// The daemon's journal, if a daemon runs and manages this network namespace.
fn daemon_journal(args: &MonitorArgs) -> std::result::Result<Follower, String> {
    let since_ms = args.since.map(|d| d.as_millis() as u64);
    let f = control::follow(&args.socket, since_ms)?;
    let here = braid_kernel::netns::current_inode();
    if f.netns.is_some() && here.is_some() && f.netns != here {
        return Err(format!(
            "the daemon at {} manages another network namespace",
            args.socket.display()
        ));
    }
    Ok(f)
}

fn follow_daemon(ctx: &Ctx, mut f: Follower, socket: &std::path::Path) -> Result<()> {
    // On stderr in both modes, so scripts can wait for the subscription.
    eprintln!(
        "braid: listening for MPTCP events and the daemon's decisions at {} (Ctrl-C to stop)",
        socket.display()
    );
    let mut ifs = Interfaces::load().ok();
    for e in std::mem::take(&mut f.history) {
        print_entry(ctx, &e, &mut ifs);
    }
    while let Some(next) = f.next_entry() {
        match next {
            Ok(e) => print_entry(ctx, &e, &mut ifs),
            Err(e) => return Err(braid_kernel::Error::Invalid(e)),
        }
    }
    Err(braid_kernel::Error::Invalid(
        "the daemon closed the journal (it stopped); run braid monitor again, or with --kernel"
            .into(),
    ))
}

/// An interface name for an index, reloading the names once when unknown.
fn dev_name(ifs: &mut Option<Interfaces>, index: Option<u32>) -> Option<String> {
    let i = index.filter(|i| *i != 0)?;
    if ifs.as_ref().and_then(|x| x.name(i)).is_none() {
        *ifs = Interfaces::load().ok();
    }
    ifs.as_ref()?.name(i).map(str::to_string)
}

fn print_event(ctx: &Ctx, time: String, ev: &Event, ifs: &mut Option<Interfaces>) {
    let dev = dev_name(ifs, ev.ifindex);
    if ctx.json {
        let line = EventLine {
            time,
            event: ev.kind.name(),
            ev,
            dev,
            flag_names: ev.flag_names(),
        };
        println!(
            "{}",
            serde_json::to_string(&line).expect("events serialize")
        );
    } else {
        println!("{}", text_line(&time, ev, dev.as_deref()));
    }
}

/// One journal entry: MPTCP events as `follow_kernel` prints them, the
/// rest as `TIME KIND TEXT`; in JSON, the same object with its "event".
fn print_entry(ctx: &Ctx, e: &Entry, ifs: &mut Option<Interfaces>) {
    let time = rfc3339(e.unix_ms);
    let (kind, text) = match &e.what {
        What::Mptcp { event } => return print_event(ctx, time, event, ifs),
        What::Change { text } => ("change", text.clone()),
        What::Decision { id, action, reason } => ("decision", format!("#{id} {action}: {reason}")),
        What::Refused { id, action, error } => ("refused", format!("#{id} {action}: {error}")),
        What::ConnDecision { action, reason } => ("conn_decision", format!("{action}: {reason}")),
        What::ConnRefused { action, error } => ("conn_refused", format!("{action}: {error}")),
        What::Note { text } => ("note", text.clone()),
        What::Missed { count } => (
            "missed",
            format!("{count} entries were missed (this reader was too slow)"),
        ),
    };
    if ctx.json {
        let mut v = serde_json::to_value(e).expect("entries serialize");
        if let Some(o) = v.as_object_mut() {
            o.remove("type");
            o.remove("unix_ms");
            o.insert("time".into(), time.into());
            o.insert("event".into(), kind.into());
        }
        println!("{v}");
    } else {
        println!("{} {kind:<16} {text}", &time[11..23]);
    }
}

/// MPTCP events from the kernel; `no_daemon` says why the daemon's
/// decisions are not shown (None: not asked for).
fn follow_kernel(ctx: &Ctx, no_daemon: Option<&str>) -> Result<()> {
    let mut stream = EventStream::subscribe()?;
    // One line on stderr in both modes, so scripts can wait for the subscription.
    match no_daemon {
        None => eprintln!("braid: listening for MPTCP events (Ctrl-C to stop)"),
        Some(why) => eprintln!(
            "braid: listening for MPTCP events (Ctrl-C to stop); not the daemon's decisions: {why}"
        ),
    }
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
            StreamItem::Event(ev) => print_event(ctx, time, &ev, &mut ifs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(timestamp().len(), 24);
        assert_eq!(rfc3339(1_764_115_200_123), "2025-11-26T00:00:00.123Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59.999Z");
    }
}
