//! Drawing one frame of `braid top` with ratatui; the same code draws on
//! the terminal and into a test buffer for `--once`/`--frames`.

use braid_daemon::control::DaemonStatus;
use braid_daemon::journal::{Entry, What};
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Direction, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Paragraph, Widget};

use super::model::{ConnStat, Group, GroupRow, IfaceStat, Model, Row, SubflowStat, ViewOpts};

/// What the frame shows besides the model.
pub struct Ui<'a> {
    pub model: &'a Model,
    pub opts: &'a ViewOpts,
    pub paused: bool,
    /// Typing a filter: the text so far.
    pub editing: Option<&'a str>,
    pub clock: &'a str,
    pub interval_ms: u64,
    /// How often the subflows (per-path figures) are read.
    pub subflow_ms: u64,
    pub events: Vec<String>,
    pub events_note: Option<String>,
    /// Lines for the daemon pane.
    pub daemon: Vec<String>,
    /// Last sock_diag error, if the last refresh failed.
    pub error: Option<&'a str>,
}

pub fn rate(bps: u64) -> String {
    human(bps, "/s")
}

pub fn bytes(n: u64) -> String {
    human(n, "")
}

fn human(n: u64, suffix: &str) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1000.0 && u < UNITS.len() - 1 {
        v /= 1000.0;
        u += 1;
    }
    if u == 0 {
        format!("{n}B{suffix}")
    } else if v < 10.0 {
        format!("{v:.1}{}{suffix}", UNITS[u])
    } else {
        format!("{v:.0}{}{suffix}", UNITS[u])
    }
}

fn ms(us: u32) -> String {
    if us == 0 {
        "-".into()
    } else if us < 1000 {
        format!("{us}us")
    } else if us < 10_000 {
        format!("{:.1}ms", us as f64 / 1000.0)
    } else {
        format!("{}ms", us / 1000)
    }
}

/// Cut to at most `w` characters (the rest of the frame relies on widths).
fn cut(s: &str, w: usize) -> String {
    s.chars().take(w).collect()
}

const SPARK: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// The last `width` values as block characters, scaled to their maximum.
pub fn sparkline(history: &[u64], width: usize) -> String {
    let tail = &history[history.len().saturating_sub(width)..];
    let max = tail.iter().copied().max().unwrap_or(0);
    tail.iter()
        .map(|v| {
            if max == 0 || *v == 0 {
                SPARK[0]
            } else {
                let i = (*v as u128 * 7 / max as u128) as usize + 1;
                SPARK[i.min(8)]
            }
        })
        .collect()
}

fn title(text: String) -> Block<'static> {
    Block::default().borders(Borders::TOP).title(Span::styled(
        text,
        Style::default().add_modifier(Modifier::BOLD),
    ))
}

fn iface_line(i: &IfaceStat, width: usize) -> String {
    let state = match i.state.as_str() {
        "no-carrier" => "nocar",
        s => s,
    };
    let sf = if i.backups > 0 {
        format!("{}/{}b", i.subflows, i.backups)
    } else {
        i.subflows.to_string()
    };
    let rtt = i
        .rtt_ms
        .map(|r| ms((r * 1000.0).clamp(0.0, u32::MAX as f64) as u32))
        .unwrap_or_else(|| "-".into());
    let loss = i
        .loss
        .map(|l| format!("{:.1}%", l * 100.0))
        .unwrap_or_else(|| "-".into());
    let head = format!(
        "{:<10} {:<5} {:<14} {:>5} {:>7} {:>5} {:>7} {:>7} ",
        cut(&i.name, 10),
        cut(state, 5),
        cut(&i.role, 14),
        sf,
        rtt,
        loss,
        rate(i.in_bps),
        rate(i.out_bps)
    );
    let room = width.saturating_sub(head.chars().count());
    format!("{head}{}", sparkline(&i.history, room))
}

const CONN_HEAD: &str =
    "REMOTE                SF    IN/s   OUT/s     RTT PROCESS    LOCAL                 BYTES";
const GROUP_HEAD: &str = "CONNS  SF BKUP    IN/s   OUT/s  MAXRTT    BYTES";

fn addr(a: Option<std::net::SocketAddr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "?".into())
}

fn conn_line(c: &ConnStat) -> String {
    let mut remote = addr(c.remote);
    if c.fell_back {
        remote = format!("{remote} TCP");
    }
    let mut local = addr(c.local);
    if c.state != "established" {
        local = format!("{local} {}", c.state);
    }
    format!(
        "{:<21} {:>2} {:>7} {:>7} {:>7} {:<10} {:<21} {}",
        cut(&remote, 21),
        c.subflows,
        rate(c.in_bps),
        rate(c.out_bps),
        ms(c.rtt_us),
        cut(c.process.as_deref().unwrap_or("-"), 10),
        cut(&local, 21),
        bytes(c.bytes)
    )
}

fn subflow_lines(c: &ConnStat, sfs: &[SubflowStat], out: &mut Vec<Line<'static>>, room: usize) {
    let n = sfs.len();
    for (k, s) in sfs.iter().enumerate() {
        if out.len() >= room {
            return;
        }
        let branch = if k + 1 == n { '└' } else { '├' };
        let mut flags = String::new();
        if s.sf.backup {
            flags.push_str(" backup");
        }
        if s.sf.state != "established" {
            flags.push(' ');
            flags.push_str(s.sf.state);
        }
        if s.sf.remote != c.remote {
            flags.push_str(&format!(" to {}", addr(s.sf.remote)));
        }
        out.push(Line::from(format!(
            " {branch} {:<6} {:>7} {:>7} {:>7} {:<21} in {} out {}{}",
            cut(s.sf.dev.as_deref().unwrap_or("?"), 6),
            rate(s.in_bps),
            rate(s.out_bps),
            ms(s.sf.rtt_us),
            cut(&addr(s.sf.local), 21),
            bytes(s.sf.bytes_received),
            bytes(s.sf.bytes_acked),
            flags
        )));
    }
}

fn group_line(g: &GroupRow) -> String {
    format!(
        "{:>5} {:>3} {:>4} {:>7} {:>7} {:>7} {:>8}  {}",
        g.conns,
        g.subflows,
        g.backups,
        rate(g.in_bps),
        rate(g.out_bps),
        ms(g.rtt_us),
        bytes(g.bytes),
        g.key
    )
}

/// The lines of the connections pane for `room` rows (header included).
pub fn conn_lines(ui: &Ui, room: usize) -> (String, Vec<Line<'static>>) {
    let m = ui.model;
    let mut out: Vec<Line<'static>> = Vec::new();
    if room == 0 {
        return (String::new(), out);
    }
    // Rows, best first; in connection mode each takes 1 + subflows lines.
    let rows = m.rows(ui.opts, room.saturating_sub(1));
    let group_name = match rows.group {
        Group::Remote => "by remote",
        Group::Process => "by process",
        _ => "each",
    };
    let filter = if ui.opts.filter.is_empty() {
        String::new()
    } else {
        format!(", filter '{}'", ui.opts.filter)
    };
    let subflows = m.subflow_count;
    let head = format!(
        " connections: {} ({} subflows), {} shown {}, sort {}{} ",
        m.conns.len(),
        subflows,
        rows.matched,
        group_name,
        ui.opts.sort.name(),
        filter
    );
    let header = if rows.group == Group::Connection {
        CONN_HEAD.to_string()
    } else {
        format!(
            "{GROUP_HEAD}  {}",
            if rows.group == Group::Process {
                "PROCESS"
            } else {
                "REMOTE"
            }
        )
    };
    out.push(Line::styled(
        header,
        Style::default().add_modifier(Modifier::UNDERLINED),
    ));
    if rows.matched == 0 {
        out.push(Line::from(if m.conns.is_empty() {
            "no MPTCP connections".to_string()
        } else {
            "no connection matches the filter".to_string()
        }));
        return (head, out);
    }
    let mut shown = 0;
    for r in &rows.rows {
        // Keep the last line for "and N more" when rows are left out.
        if out.len() + 1 >= room && shown < rows.rows.len() {
            break;
        }
        match r {
            Row::Conn(i) => {
                let c = &m.conns[*i];
                out.push(Line::from(conn_line(c)));
                let keep = room.saturating_sub(1);
                subflow_lines(c, m.subflows_of(c), &mut out, keep);
            }
            Row::Group(g) => out.push(Line::from(group_line(g))),
        }
        shown += 1;
    }
    let more = rows.more + (rows.rows.len() - shown);
    if more > 0 {
        out.truncate(room.saturating_sub(1));
        let what = if rows.group == Group::Connection {
            "connections"
        } else {
            "groups"
        };
        out.push(Line::styled(
            format!("… and {more} more {what}"),
            Style::default().add_modifier(Modifier::DIM),
        ));
    }
    out.truncate(room);
    (head, out)
}

fn split(area: Rect, dir: Direction, c: Vec<Constraint>) -> Vec<Rect> {
    Layout::default()
        .direction(dir)
        .constraints(c)
        .split(area)
        .to_vec()
}

pub fn render(area: Rect, buf: &mut Buffer, ui: &Ui) {
    if area.width == 0 || area.height == 0 {
        return;
    }
    let h = area.height as usize;
    let wide = area.width >= 140;
    let n_if = ui.model.ifaces.len().max(1);
    let rest = h.saturating_sub(2);
    let paths_h = 1 + n_if.min(if rest >= 20 { 8 } else { 4 }).min(rest / 5 + 1);
    let (events_h, daemon_h) = if wide {
        let x = if rest >= 30 { 9 } else { 5 };
        (x, 0)
    } else if rest >= 30 {
        (9, 5)
    } else if rest >= 16 {
        (4, 3)
    } else {
        (2, 2)
    };
    let parts = split(
        area,
        Direction::Vertical,
        vec![
            Constraint::Length(1),
            Constraint::Length(paths_h as u16),
            Constraint::Min(2),
            Constraint::Length(events_h as u16),
            Constraint::Length(daemon_h as u16),
            Constraint::Length(1),
        ],
    );
    render_header(parts[0], buf, ui);
    render_paths(parts[1], buf, ui);

    // Connections.
    let room = parts[2].height.saturating_sub(1) as usize;
    let (head, lines) = conn_lines(ui, room);
    Paragraph::new(lines)
        .block(title(head))
        .render(parts[2], buf);

    // Events, and the daemon pane beside (wide) or below them.
    let (ev_area, daemon_area) = if wide {
        let s = split(
            parts[3],
            Direction::Horizontal,
            vec![Constraint::Percentage(60), Constraint::Percentage(40)],
        );
        (s[0], s[1])
    } else {
        (parts[3], parts[4])
    };
    render_events(ev_area, buf, ui);

    // The daemon's path state, then its latest changes and decisions.
    Paragraph::new(
        ui.daemon
            .iter()
            .map(|l| Line::from(l.clone()))
            .collect::<Vec<_>>(),
    )
    .block(title(" daemon decisions ".into()))
    .render(daemon_area, buf);

    render_footer(parts[5], buf, ui);
}

fn render_header(area: Rect, buf: &mut Buffer, ui: &Ui) {
    let subtitle = if ui.paused { "  PAUSED" } else { "" };
    let paths = if ui.subflow_ms > ui.interval_ms {
        format!(", subflows {} ms", ui.subflow_ms)
    } else {
        String::new()
    };
    Paragraph::new(Line::styled(
        format!(
            "braid top  {}  refresh {} ms{paths}{}{}",
            ui.clock,
            ui.interval_ms,
            subtitle,
            ui.error
                .map(|e| format!("  error: {e}"))
                .unwrap_or_default()
        ),
        Style::default().add_modifier(Modifier::REVERSED),
    ))
    .render(area, buf);
}

fn render_paths(area: Rect, buf: &mut Buffer, ui: &Ui) {
    let w = area.width as usize;
    let mut lines = vec![];
    for i in &ui.model.ifaces {
        lines.push(Line::from(iface_line(i, w)));
    }
    if ui.model.ifaces.is_empty() {
        lines.push(Line::from("no interfaces"));
    }
    Paragraph::new(lines)
        .block(title(
            " paths: IFACE STATE ROLE SUBFLOWS(b=backup) RTT LOSS IN/s OUT/s HISTORY ".into(),
        ))
        .render(area, buf);
}

fn render_events(area: Rect, buf: &mut Buffer, ui: &Ui) {
    let ev_room = area.height.saturating_sub(1) as usize;
    let mut ev: Vec<Line> = match &ui.events_note {
        Some(n) => vec![Line::from(n.clone())],
        None => vec![],
    };
    let skip = ui
        .events
        .len()
        .saturating_sub(ev_room.saturating_sub(ev.len()));
    ev.extend(ui.events[skip..].iter().map(|l| Line::from(l.clone())));
    if ev.is_empty() {
        ev.push(Line::from("no MPTCP events yet"));
    }
    Paragraph::new(ev)
        .block(title(" MPTCP events (newest last) ".into()))
        .render(area, buf);
}

/// Keys, or the filter being typed.
fn render_footer(area: Rect, buf: &mut Buffer, ui: &Ui) {
    let footer = match ui.editing {
        Some(t) => format!("filter: {t}_   Enter apply, Esc cancel"),
        None => format!(
            "q quit  p pause  s sort:{}  g group:{}  / filter  c clear",
            ui.opts.sort.name(),
            ui.opts.group.name()
        ),
    };
    Paragraph::new(Line::styled(
        footer,
        Style::default().add_modifier(Modifier::REVERSED),
    ))
    .render(area, buf);
}

/// A buffer as plain text, trailing blanks trimmed.
pub fn buffer_text(buf: &Buffer) -> String {
    let area = buf.area;
    let mut s = String::with_capacity((area.width as usize + 1) * area.height as usize);
    for y in 0..area.height {
        let mut line = String::new();
        for x in 0..area.width {
            line.push_str(buf[(area.x + x, area.y + y)].symbol());
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}

/// The daemon pane's lines: its path state, then the newest entries of
/// its journal (changes, decisions with reasons, refusals), newest first.
pub fn daemon_lines(
    status: Option<&DaemonStatus>,
    journal: &[Entry],
    error: Option<&str>,
) -> Vec<String> {
    let Some(d) = status else {
        let mut v = vec!["daemon not running: kernel view only".to_string()];
        if let Some(e) = error.filter(|e| !e.contains("not running")) {
            v.push(e.to_string());
        }
        return v;
    };
    let v = &d.view;
    let mut out = vec![if v.path_state.is_empty() {
        format!("paths: {}: no measurements yet", v.path_mode.name())
    } else {
        format!("paths: {}", v.path_state)
    }];
    for e in journal.iter().rev() {
        let text = match &e.what {
            What::Decision { id, action, reason } => format!("#{id} {action}: {reason}"),
            What::Refused { id, action, error } => format!("#{id} REFUSED {action}: {error}"),
            What::ConnDecision { action, reason } => format!("{action}: {reason}"),
            What::ConnRefused { action, error } => format!("REFUSED {action}: {error}"),
            What::Change { text } | What::Note { text } => text.clone(),
            What::Mptcp { .. } | What::Missed { .. } => continue,
        };
        let time = crate::monitor::rfc3339(e.unix_ms);
        out.push(format!("{} {text}", &time[11..19]));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn humans_and_sparklines() {
        assert_eq!(rate(999), "999B/s");
        assert_eq!(rate(1_500_000), "1.5M/s");
        assert_eq!(bytes(25_000_000_000), "25G");
        assert_eq!(ms(0), "-");
        assert_eq!(ms(1500), "1.5ms");
        assert_eq!(ms(35), "35us");
        assert_eq!(sparkline(&[0, 1, 2, 4, 8], 4), "▁▂▄█");
        assert_eq!(sparkline(&[], 4), "");
        assert_eq!(sparkline(&[5, 5], 0), "");
        assert_eq!(sparkline(&[0, 0], 5), "  ");
    }
}
