//! `braid top`: a live terminal view of paths, MPTCP connections with their
//! subflows, MPTCP events and the daemon's view. The data model is in
//! `model` (pure, unit-tested), reading the machine in `collect`, drawing
//! in `draw`; this file parses options and runs the loop.

mod collect;
mod draw;
pub mod model;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_kernel::{Error, Result};
use clap::Args;
use crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::backend::CrosstermBackend;
use ratatui::buffer::Buffer;
use ratatui::layout::Rect;
use ratatui::Terminal;

use collect::Shared;
use draw::Ui;
use model::{Model, ViewOpts};

#[derive(Args)]
pub struct TopArgs {
    /// Time between refreshes (e.g. 250ms, 1s).
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Control socket of the daemon.
    #[arg(long, default_value = "/run/braid/braid.sock")]
    socket: PathBuf,
    /// Print one frame as text on stdout and exit (no terminal needed).
    #[arg(long, conflicts_with = "frames")]
    once: bool,
    /// Print N frames as text on stdout, one per interval, then timing
    /// figures on stderr (for tests and benchmarks).
    #[arg(long, value_name = "N")]
    frames: Option<u64>,
    /// Size of the text frames of --once/--frames, WIDTHxHEIGHT.
    #[arg(long, default_value = "80x24", value_parser = parse_size)]
    size: (u16, u16),
}

fn parse_size(s: &str) -> std::result::Result<(u16, u16), String> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("'{s}': expected WIDTHxHEIGHT, e.g. 80x24"))?;
    let p = |v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| format!("'{s}': expected WIDTHxHEIGHT, e.g. 80x24"))
    };
    Ok((p(w)?, p(h)?))
}

/// Everything the loop keeps.
struct App {
    shared: Arc<Shared>,
    model: Model,
    opts: ViewOpts,
    paused: bool,
    /// The event lines shown when the view was paused.
    frozen_events: Option<Vec<String>>,
    editing: Option<String>,
    start: Instant,
    interval: Duration,
    error: Option<String>,
    /// When the subflows were last read, and how often they are.
    subflows_at: Option<Instant>,
    subflow_period: Duration,
}

/// The subflow dump may take at most 1/SUBFLOW_DUTY of the time (2.5 %): with many
/// subflows they are read less often than the connections (per-path
/// figures then refresh more slowly; connection figures never do).
const SUBFLOW_DUTY: u32 = 40;

impl App {
    fn new(args: &TopArgs) -> App {
        // Read the slow things once now so the first frame has names.
        let shared = Shared::new(collect::read_slow(&args.socket, None));
        collect::spawn_events(shared.clone());
        collect::spawn_slow(shared.clone(), args.socket.clone());
        App::starting(shared, args.interval.max(Duration::from_millis(10)))
    }

    /// Nothing read yet, nothing typed, nothing paused.
    fn starting(shared: Arc<Shared>, interval: Duration) -> App {
        App {
            shared,
            model: Model::new(),
            opts: ViewOpts::default(),
            paused: false,
            frozen_events: None,
            editing: None,
            start: Instant::now(),
            interval,
            error: None,
            subflows_at: None,
            subflow_period: Duration::ZERO,
        }
    }

    /// One refresh of the kernel figures.
    fn refresh(&mut self) {
        let slow = self.shared.slow();
        // A little slack so a period equal to the interval is not missed
        // by a refresh that came a millisecond early.
        let due = self.subflows_at.is_none_or(|t| {
            t.elapsed() + Duration::from_millis(20) >= self.subflow_period.max(self.interval)
        });
        match collect::snapshot(self.start.elapsed(), &slow, due) {
            Ok((s, took)) => {
                self.model.update(s);
                self.error = None;
                if due {
                    self.subflows_at = Some(Instant::now());
                    self.subflow_period = took * SUBFLOW_DUTY;
                }
            }
            Err(e) => self.error = Some(e.to_string()),
        }
    }

    fn render(&self, area: Rect, buf: &mut Buffer) {
        let slow = self.shared.slow();
        let events = match &self.frozen_events {
            Some(e) => e.clone(),
            None => self.events(area.height as usize),
        };
        let events_note = self.shared.events_error.lock().ok().and_then(|e| e.clone());
        let clock = crate::monitor::timestamp();
        let ui = Ui {
            model: &self.model,
            opts: &self.opts,
            paused: self.paused,
            editing: self.editing.as_deref(),
            clock: &clock[11..19],
            interval_ms: self.interval.as_millis() as u64,
            subflow_ms: self.subflow_period.max(self.interval).as_millis() as u64,
            events,
            events_note,
            daemon: draw::daemon_lines(
                slow.daemon.as_ref(),
                &slow.journal,
                slow.daemon_error.as_deref(),
            ),
            error: self.error.as_deref(),
        };
        draw::render(area, buf, &ui);
    }

    /// The last `n` event lines (no more could be shown).
    fn events(&self, n: usize) -> Vec<String> {
        self.shared
            .events
            .lock()
            .map(|e| e.iter().skip(e.len().saturating_sub(n)).cloned().collect())
            .unwrap_or_default()
    }

    /// A key; false to quit.
    fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> bool {
        if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
            return false;
        }
        if let Some(text) = &mut self.editing {
            match code {
                KeyCode::Enter => {
                    self.opts.filter = std::mem::take(text);
                    self.editing = None;
                }
                KeyCode::Esc => self.editing = None,
                KeyCode::Backspace => {
                    text.pop();
                }
                KeyCode::Char(c) if text.chars().count() < 64 => text.push(c),
                _ => {}
            }
            return true;
        }
        match code {
            KeyCode::Char('q') | KeyCode::Esc => return false,
            KeyCode::Char('p') | KeyCode::Char(' ') => {
                self.paused = !self.paused;
                // Events freeze too; they keep being collected meanwhile.
                self.frozen_events = self.paused.then(|| self.events(200));
            }
            KeyCode::Char('s') => self.opts.sort = self.opts.sort.next(),
            KeyCode::Char('g') => self.opts.group = self.opts.group.next(),
            KeyCode::Char('/') => self.editing = Some(self.opts.filter.clone()),
            KeyCode::Char('c') => self.opts.filter.clear(),
            _ => {}
        }
        true
    }
}

impl Drop for App {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
    }
}

pub fn run(args: TopArgs) -> Result<()> {
    let frames = match (args.once, args.frames) {
        (true, _) => Some(1),
        (false, n) => n,
    };
    if let Some(n) = frames {
        return run_frames(&args, n);
    }
    if !std::io::stdout().is_terminal() {
        return Err(Error::Invalid(
            "'braid top' draws on a terminal and stdout is not one: use 'braid top --once' for one frame as text (or '--frames N', with '--size 80x24')".into(),
        ));
    }
    run_terminal(&args)
}

/// Frames as text on stdout; timing on stderr.
fn run_frames(args: &TopArgs, n: u64) -> Result<()> {
    let (w, h) = args.size;
    let mut app = App::new(args);
    let area = Rect::new(0, 0, w, h);
    let mut buf = Buffer::empty(area);
    let mut out = std::io::stdout().lock();
    // The first refresh only sets the counters: rates need an interval.
    app.refresh();
    let t0 = Instant::now();
    let (mut worst, mut total) = (Duration::ZERO, Duration::ZERO);
    for k in 1..=n {
        let due = t0 + app.interval * k as u32;
        if let Some(left) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        let t = Instant::now();
        app.refresh();
        buf.reset();
        app.render(area, &mut buf);
        let text = draw::buffer_text(&buf);
        let took = t.elapsed();
        worst = worst.max(took);
        total += took;
        if k > 1 {
            let _ = writeln!(out);
        }
        if out.write_all(text.as_bytes()).is_err() {
            break;
        }
    }
    let _ = out.flush();
    let wall = t0.elapsed();
    let n = n.max(1);
    let slow = app.shared.slow();
    eprintln!(
        "braid top: {n} frames in {:.2} s ({:.2} frames/s), frame build mean {:.2} ms, worst {:.2} ms; {} connections, {} subflows; last /proc scan {:.1} ms over {} descriptors (every {:.1} s)",
        wall.as_secs_f64(),
        n as f64 / wall.as_secs_f64().max(1e-9),
        total.as_secs_f64() * 1000.0 / n as f64,
        worst.as_secs_f64() * 1000.0,
        app.model.conns.len(),
        app.model.subflow_count,
        slow.proc_scan.as_secs_f64() * 1000.0,
        slow.proc_fds,
        collect::SLOW_PERIOD
            .max(slow.proc_scan * collect::PROC_DUTY)
            .as_secs_f64(),
    );
    Ok(())
}

/// Leaves raw mode and the alternate screen: on drop, and from the panic hook.
fn restore_terminal() {
    let _ = crossterm::terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

struct TerminalGuard;

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn io_err(e: std::io::Error) -> Error {
    Error::Invalid(format!("terminal: {e}"))
}

fn run_terminal(args: &TopArgs) -> Result<()> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        hook(info);
    }));
    // SIGTERM and SIGHUP end the loop like 'q' so the terminal is restored.
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGHUP] {
        let _ = signal_hook::flag::register(sig, quit.clone());
    }
    let mut app = App::new(args);
    crossterm::terminal::enable_raw_mode().map_err(io_err)?;
    let _guard = TerminalGuard;
    crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)
        .map_err(io_err)?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(io_err)?;
    term.clear().map_err(io_err)?;
    app.refresh();
    let mut next = Instant::now() + app.interval;
    loop {
        term.draw(|f| {
            let area = f.area();
            app.render(area, f.buffer_mut());
        })
        .map_err(io_err)?;
        // Wait for a key or the next refresh.
        loop {
            if quit.load(Ordering::Relaxed) {
                return Ok(());
            }
            let left = next.saturating_duration_since(Instant::now());
            if left.is_zero() {
                if !app.paused {
                    app.refresh();
                }
                next += app.interval;
                // Fell far behind (suspended): start the schedule again.
                if next < Instant::now() {
                    next = Instant::now() + app.interval;
                }
                break;
            }
            if event::poll(left.min(Duration::from_millis(100))).map_err(io_err)? {
                match event::read().map_err(io_err)? {
                    Event::Key(k) if k.kind != KeyEventKind::Release => {
                        if !app.key(k.code, k.modifiers) {
                            return Ok(());
                        }
                        break;
                    }
                    Event::Resize(..) => break,
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bare_app() -> App {
        App::starting(
            Shared::new(collect::Slow::default()),
            Duration::from_millis(250),
        )
    }

    #[test]
    fn keys_sort_filter_pause_quit() {
        let mut a = bare_app();
        let none = KeyModifiers::NONE;
        assert!(a.key(KeyCode::Char('s'), none));
        assert_eq!(a.opts.sort, model::SortKey::Bytes);
        // Typing a filter: letters are text, not commands; Esc cancels it
        // without quitting, Enter applies it.
        for c in ['/', 'q', 'p', 'x'] {
            assert!(a.key(KeyCode::Char(c), none));
        }
        assert!(a.key(KeyCode::Backspace, none));
        assert!(a.key(KeyCode::Enter, none));
        assert_eq!((a.opts.filter.as_str(), a.paused), ("qp", false));
        assert!(a.key(KeyCode::Char('/'), none));
        assert!(a.key(KeyCode::Esc, none));
        assert_eq!(a.opts.filter, "qp");
        a.shared.events.lock().unwrap().push_back("one".into());
        assert!(a.key(KeyCode::Char(' '), none));
        a.shared.events.lock().unwrap().push_back("two".into());
        assert_eq!(
            (a.paused, a.frozen_events.clone()),
            (true, Some(vec!["one".into()]))
        );
        assert!(a.key(KeyCode::Char('p'), none));
        assert_eq!((a.paused, a.frozen_events.is_none()), (false, true));
        assert!(a.key(KeyCode::Char('c'), none));
        assert!(a.opts.filter.is_empty());
        assert!(!a.key(KeyCode::Char('c'), KeyModifiers::CONTROL));
        assert!(!a.key(KeyCode::Esc, none));
        assert!(!a.key(KeyCode::Char('q'), none));
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("80x24"), Ok((80, 24)));
        assert_eq!(parse_size("0X0"), Ok((0, 0)));
        assert!(parse_size("80").is_err());
        assert!(parse_size("-1x5").is_err());
    }

    #[test]
    fn frames_fit_their_size_even_tiny_or_empty() {
        use model::{ConnIn, IfaceIn, Snapshot, SubflowIn};
        let mut m = Model::new();
        let long: std::sync::Arc<str> = std::sync::Arc::from("a-very-long-interface-name");
        let conns: Vec<ConnIn> = (0..300u16)
            .map(|i| ConnIn {
                local: Some(([10, 0, 0, 1], 1000 + i).into()),
                remote: Some(
                    (
                        std::net::Ipv6Addr::new(0x2001, 0xdb8, 1, 2, 3, 4, 5, i),
                        443,
                    )
                        .into(),
                ),
                state: "established",
                token: Some(i as u32),
                process: Some(std::sync::Arc::from("some-long-process-name[12345]")),
                bytes_acked: Some(u64::MAX),
                ..ConnIn::default()
            })
            .collect();
        let subflows: Vec<SubflowIn> = (0..600u32)
            .map(|i| SubflowIn {
                token: i / 2,
                dev: Some(long.clone()),
                bytes_acked: u64::MAX,
                ..SubflowIn::default()
            })
            .collect();
        m.update(Snapshot {
            at: Duration::ZERO,
            ifaces: vec![IfaceIn {
                name: long.clone(),
                state: "no-carrier".into(),
                role: "unused: an address with a long reason".into(),
                ..IfaceIn::default()
            }],
            conns,
            subflows: Some(subflows),
        });
        for group in [model::Group::Connection, model::Group::Remote] {
            let opts = ViewOpts {
                group,
                ..ViewOpts::default()
            };
            for (w, h) in [(80, 24), (0, 0), (1, 1), (10, 3), (200, 60), (80, 2)] {
                let ui = Ui {
                    model: &m,
                    opts: &opts,
                    paused: true,
                    editing: Some("x"),
                    clock: "12:00:00",
                    interval_ms: 250,
                    subflow_ms: 1000,
                    events: vec!["e".repeat(300); 50],
                    events_note: None,
                    daemon: draw::daemon_lines(None, &[], None),
                    error: None,
                };
                let area = Rect::new(0, 0, w, h);
                let mut buf = Buffer::empty(area);
                draw::render(area, &mut buf, &ui);
                let text = draw::buffer_text(&buf);
                assert_eq!(text.lines().count(), h as usize);
                for l in text.lines() {
                    assert!(l.chars().count() <= w as usize, "{w}x{h}: {l}");
                }
                if (w, h) == (80, 24) {
                    assert!(text.contains("more"), "{text}");
                    assert!(text.contains("daemon not running: kernel view only"));
                }
            }
        }
    }
}
