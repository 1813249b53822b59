//! What `braid top` reads from the machine: sock_diag at every refresh, and
//! on a background thread the slow things (interfaces, endpoints, the
//! socket-inode -> process map from /proc, the daemon's status) and the
//! MPTCP event stream.

use braid_daemon::control::DaemonStatus;
use braid_daemon::journal::Entry;
use std::collections::VecDeque;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_kernel::diag;
use braid_kernel::events::{EventStream, StreamItem};
use braid_kernel::pm::PathManager;

use super::model::{map_with, ConnIn, FastMap, IfaceIn, Snapshot, SubflowIn};
use braid_kernel::interfaces::Interfaces;

/// How often the slow things are read again.
pub const SLOW_PERIOD: Duration = Duration::from_secs(2);
/// Event lines kept.
pub const EVENT_LINES: usize = 200;

/// The /proc scan may take at most 1/PROC_DUTY of the time (1 %): with
/// many descriptors open it runs less often than every `SLOW_PERIOD`.
pub const PROC_DUTY: u32 = 100;

/// How far back the daemon pane looks in the journal.
const JOURNAL_WINDOW_MS: u64 = 10 * 60 * 1000;

/// Interfaces, endpoint roles and processes: refreshed every `SLOW_PERIOD`
/// (processes: see `PROC_DUTY`).
#[derive(Default)]
pub struct Slow {
    /// Local address -> interface name.
    pub addr_dev: FastMap<IpAddr, Arc<str>>,
    /// Interface index -> name.
    pub index_dev: FastMap<u32, Arc<str>>,
    /// The interfaces to list (not loopback), sorted by name.
    pub ifaces: Vec<IfaceIn>,
    /// Socket inode -> "comm[pid]".
    pub procs: Arc<FastMap<u32, Arc<str>>>,
    /// When /proc was scanned.
    pub proc_at: Option<Instant>,
    /// Time the last /proc scan took, and descriptors it read.
    pub proc_scan: Duration,
    pub proc_fds: usize,
    /// The daemon's status, when it answers.
    pub daemon: Option<DaemonStatus>,
    /// Its journal's last minutes (changes, decisions, refusals).
    pub journal: Vec<Entry>,
    pub daemon_error: Option<String>,
}

/// Read everything slow once; the processes only when due (else kept from
/// `prev`).
pub fn read_slow(socket: &std::path::Path, prev: Option<&Slow>) -> Slow {
    let mut s = Slow::default();
    let daemon = braid_daemon::control::request(socket, &braid_daemon::control::Request::Status);
    match daemon {
        Ok(r) if r.ok => s.daemon = r.status,
        Ok(r) => s.daemon_error = r.error,
        Err(e) => s.daemon_error = Some(e),
    }
    if s.daemon.is_some() {
        s.journal =
            braid_daemon::control::recent_entries(socket, JOURNAL_WINDOW_MS).unwrap_or_default();
    }
    let view = s.daemon.as_ref().map(|d| &d.view);
    if let Ok(ifs) = Interfaces::load() {
        let eps = PathManager::open()
            .and_then(|mut pm| pm.endpoints())
            .unwrap_or_default();
        for l in &ifs.links {
            s.index_dev.insert(l.index, Arc::from(l.name.as_str()));
        }
        for a in &ifs.addrs {
            if let Some(n) = s.index_dev.get(&a.ifindex) {
                s.addr_dev.insert(a.addr, n.clone());
            }
        }
        for l in ifs.links.iter().filter(|l| !l.loopback) {
            let state = match (l.up, l.carrier) {
                (true, true) => "up",
                (true, false) => "no-carrier",
                _ => "down",
            };
            // Kernel view: the flags of the endpoints on its addresses.
            let mut role: Vec<String> = eps
                .iter()
                .filter(|e| {
                    e.ifindex == Some(l.index)
                        || ifs
                            .addrs
                            .iter()
                            .any(|a| a.ifindex == l.index && a.addr == e.addr)
                })
                .flat_map(|e| e.flags.names())
                .collect();
            role.sort();
            role.dedup();
            let mut role = if role.is_empty() {
                "no endpoint".to_string()
            } else {
                role.join(",")
            };
            let (mut rtt, mut loss) = (None, None);
            if let Some(v) = view {
                if let Some(i) = v.interfaces.iter().find(|i| i.name == l.name) {
                    role = i.role.clone();
                }
                if let Some(h) = v.health.get(&l.name) {
                    rtt = h.srtt_ms;
                    loss = Some(h.loss);
                }
            }
            s.ifaces.push(IfaceIn {
                name: Arc::from(l.name.as_str()),
                state: state.into(),
                role,
                daemon_rtt_ms: rtt,
                daemon_loss: loss,
            });
        }
        s.ifaces.sort_by(|a, b| a.name.cmp(&b.name));
    }
    let keep = prev.and_then(|p| Some((p, p.proc_at?))).filter(|(p, at)| {
        at.elapsed() < SLOW_PERIOD.max(p.proc_scan * PROC_DUTY) - Duration::from_millis(50)
    });
    match keep {
        // Not due: keep the last scan.
        Some((p, at)) => {
            s.procs = p.procs.clone();
            s.proc_fds = p.proc_fds;
            s.proc_scan = p.proc_scan;
            s.proc_at = Some(at);
        }
        None => {
            let t = Instant::now();
            let (procs, fds) = socket_owners();
            s.procs = Arc::new(procs);
            s.proc_fds = fds;
            s.proc_scan = t.elapsed();
            s.proc_at = Some(t);
        }
    }
    s
}

/// Socket inode -> "comm[pid]" for every process whose /proc/PID/fd can be
/// read: one readlink per open descriptor of every process, so its cost
/// grows with the descriptors open on the machine (10,000 sockets: about
/// 10,000 readlinks, some 35-50 ms), which is why it runs on the slow
/// thread, and less often than every `SLOW_PERIOD` when it is long.
pub fn socket_owners() -> (FastMap<u32, Arc<str>>, usize) {
    let mut map = map_with(1024);
    let mut fds = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (map, 0);
    };
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fd_dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        let mut label: Option<Arc<str>> = None;
        for fd in fd_dir.flatten() {
            fds += 1;
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u32>().ok())
            else {
                continue;
            };
            let l = label.get_or_insert_with(|| {
                let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
                Arc::from(format!("{}[{pid}]", comm.trim_end()).as_str())
            });
            // The first process found keeps a socket shared after fork.
            map.entry(inode).or_insert_with(|| l.clone());
        }
    }
    (map, fds)
}

/// State shared with the background threads.
pub struct Shared {
    pub slow: Mutex<Arc<Slow>>,
    pub events: Mutex<VecDeque<String>>,
    /// Why the event stream is not there, if it is not.
    pub events_error: Mutex<Option<String>>,
    pub stop: AtomicBool,
}

impl Shared {
    pub fn new(slow: Slow) -> Arc<Shared> {
        Arc::new(Shared {
            slow: Mutex::new(Arc::new(slow)),
            events: Mutex::new(VecDeque::new()),
            events_error: Mutex::new(None),
            stop: AtomicBool::new(false),
        })
    }

    pub fn slow(&self) -> Arc<Slow> {
        self.slow.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

/// Re-read the slow things every `SLOW_PERIOD` until stopped.
pub fn spawn_slow(shared: Arc<Shared>, socket: PathBuf) {
    std::thread::spawn(move || loop {
        let mut waited = Duration::ZERO;
        while waited < SLOW_PERIOD {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
            waited += Duration::from_millis(100);
        }
        let prev = shared.slow();
        let s = Arc::new(read_slow(&socket, Some(&prev)));
        if let Ok(mut g) = shared.slow.lock() {
            *g = s;
        }
    });
}

/// Subscribe to MPTCP events now (so none after this call is missed) and
/// keep the last `EVENT_LINES` as text on a background thread.
pub fn spawn_events(shared: Arc<Shared>) {
    let mut stream = match EventStream::subscribe() {
        Ok(s) => s,
        Err(e) => {
            if let Ok(mut g) = shared.events_error.lock() {
                *g = Some(format!("no MPTCP events: {e}"));
            }
            return;
        }
    };
    std::thread::spawn(move || {
        let mut ifs = Interfaces::load().ok();
        while !shared.stop.load(Ordering::Relaxed) {
            let item = match stream.next_timeout(Duration::from_millis(200)) {
                Ok(Some(i)) => i,
                Ok(None) => continue,
                Err(e) => {
                    if let Ok(mut g) = shared.events_error.lock() {
                        *g = Some(format!("MPTCP events stopped: {e}"));
                    }
                    return;
                }
            };
            let time = crate::monitor::timestamp();
            let line = match item {
                StreamItem::Overflow => format!(
                    "{} overflow: the kernel dropped events; some are missing",
                    &time[11..23]
                ),
                StreamItem::Event(ev) => {
                    let dev = ev.ifindex.filter(|i| *i != 0).and_then(|i| {
                        if ifs.as_ref().and_then(|x| x.name(i)).is_none() {
                            ifs = Interfaces::load().ok();
                        }
                        ifs.as_ref()?.name(i).map(str::to_string)
                    });
                    crate::monitor::text_line(&time, &ev, dev.as_deref())
                }
            };
            if let Ok(mut g) = shared.events.lock() {
                if g.len() >= EVENT_LINES {
                    g.pop_front();
                }
                g.push_back(line);
            }
        }
    });
}

/// One refresh: MPTCP connections from sock_diag, and their subflows when
/// `with_subflows` (a second dump, of every TCP socket: the costly part),
/// mapped to interfaces and processes with the slow maps. Also returns the
/// time the subflows took.
pub fn snapshot(
    at: Duration,
    slow: &Slow,
    with_subflows: bool,
) -> braid_kernel::Result<(Snapshot, Duration)> {
    let (conns, v6) = diag::mptcp_sockets(false)?;
    let conns = conns
        .into_iter()
        .map(|c| {
            let info = c.info.as_ref();
            ConnIn {
                local: Some(c.local),
                remote: Some(c.remote),
                state: c.state,
                token: c.token,
                process: slow.procs.get(&c.inode).cloned(),
                fell_back: c.fell_back,
                bytes_acked: info.and_then(|i| i.bytes_acked),
                bytes_received: info.and_then(|i| i.bytes_received),
                // mptcp_info counts the subflows added to the first one.
                subflows_hint: info.map(|i| i.subflows as usize + 1).unwrap_or(0),
            }
        })
        .collect();
    let t = Instant::now();
    let subflows = if with_subflows {
        let sfs = diag::subflows_of(v6, false)?;
        Some(
            sfs.into_iter()
                .map(|sf| {
                    let dev = if sf.bound_ifindex != 0 {
                        slow.index_dev.get(&sf.bound_ifindex).cloned()
                    } else {
                        slow.addr_dev.get(&sf.local.ip()).cloned()
                    };
                    let tcp = sf.tcp.as_ref();
                    SubflowIn {
                        token: sf.token_local,
                        local: Some(sf.local),
                        remote: Some(sf.remote),
                        dev,
                        backup: sf.backup_local || sf.backup_remote,
                        state: sf.state,
                        rtt_us: tcp.map(|t| t.rtt_us).unwrap_or(0),
                        bytes_acked: tcp.and_then(|t| t.bytes_acked).unwrap_or(0),
                        bytes_received: tcp.and_then(|t| t.bytes_received).unwrap_or(0),
                        total_retrans: tcp.map(|t| t.total_retrans).unwrap_or(0),
                        data_segs_out: tcp.and_then(|t| t.data_segs_out).unwrap_or(0),
                    }
                })
                .collect(),
        )
    } else {
        None
    };
    Ok((
        Snapshot {
            at,
            ifaces: slow.ifaces.clone(),
            conns,
            subflows,
        },
        t.elapsed(),
    ))
}
