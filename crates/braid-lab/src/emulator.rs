//! The link emulator process: for each lab path a TUN device in the client
//! namespace and one in the server namespace, and a thread per direction
//! that moves packets between them through a [`Shaper`] (delay, jitter,
//! loss, blackhole, optional rate). Controlled over a Unix socket with one
//! JSON request and one JSON reply per connection.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::shaper::{Shaper, Verdict};
use crate::spec::PathSpec;
use crate::tun;
use crate::LabError;

pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EmulatorConfig {
    pub client_ns: String,
    pub server_ns: String,
    /// TUN device name of path k on both sides.
    pub devices: Vec<String>,
    pub paths: Vec<PathSpec>,
    pub control: PathBuf,
    pub seed: u64,
}

/// Counters of one direction of one path.
#[derive(Default)]
struct DirStats {
    packets_in: AtomicU64,
    packets_out: AtomicU64,
    dropped: AtomicU64,
    bytes_out: AtomicU64,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
pub struct DirCounters {
    pub packets_in: u64,
    pub packets_out: u64,
    pub dropped: u64,
    pub bytes_out: u64,
}

struct Direction {
    shaper: Mutex<Shaper>,
    stats: DirStats,
    /// The path's carrier, as at the client's end of the wire (a cable
    /// pull or a radio lost there): cut, nothing more leaves the client,
    /// and nothing still on the wire reaches it. Needed besides the
    /// devices' carrier: a TUN device without carrier still takes the
    /// packets written to it, and its kernel goes on sending into it until
    /// its link watch runs (up to a second later when that is busy).
    carrier: AtomicBool,
    /// Server to client (else client to server).
    to_client: bool,
}

struct PathState {
    client_fd: Arc<OwnedFd>,
    /// [client->server, server->client]
    dirs: [Arc<Direction>; 2],
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Ping,
    Set { path: usize, spec: PathSpec },
    Carrier { path: usize, up: bool },
    Blackhole { path: usize, on: bool },
    Stats,
    Stop,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For `stats`: per path, [up, down].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stats: Vec<[DirCounters; 2]>,
}

/// Real-time priority of the emulator's threads: above every normal task,
/// low among real-time ones.
const PUMP_PRIORITY: libc::c_int = 10;

/// Make the calling thread real-time (SCHED_FIFO). The emulator is the
/// wire: its packets must not wait for the CPU that the traffic it carries
/// takes (on 2 cores: a bulk sender, a receiver, two daemons): a delay
/// the path spec does not have. The threads sleep in ppoll between
/// packets, and the kernel's real-time throttling (sched_rt_runtime_us)
/// bounds them anyway.
fn make_realtime() -> Result<(), std::io::Error> {
    let param = libc::sched_param {
        sched_priority: PUMP_PRIORITY,
    };
    // SAFETY: pid 0 is the calling thread; param is valid.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn pump(input: Arc<OwnedFd>, output: Arc<OwnedFd>, dir: Arc<Direction>, stop: Arc<AtomicBool>) {
    // Wake-ups on time matter more than power here.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1000, 0, 0, 0) };
    if let Err(e) = make_realtime() {
        eprintln!(
            "braid lab emulator: cannot run {} at real-time priority ({e}): its packets may wait for the CPU the traffic takes, which adds delay the path spec does not have (needs root, and a real-time budget in the cgroup when the kernel has RT group scheduling)",
            std::thread::current().name().unwrap_or("a thread")
        );
    }
    let in_fd = input.as_raw_fd();
    unsafe {
        let fl = libc::fcntl(in_fd, libc::F_GETFL);
        libc::fcntl(in_fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
    }
    let mut queue: BinaryHeap<Reverse<(u64, u64, Vec<u8>)>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut buf = vec![0u8; 65_536];
    while !stop.load(Ordering::Relaxed) {
        let now = mono_ns();
        while queue.peek().is_some_and(|Reverse((t, _, _))| *t <= now) {
            let Reverse((_, _, pkt)) = queue.pop().unwrap();
            if dir.to_client && !dir.carrier.load(Ordering::Relaxed) {
                dir.stats.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            // SAFETY: writing a buffer we own to an open descriptor.
            let n = unsafe {
                libc::write(
                    output.as_raw_fd(),
                    pkt.as_ptr() as *const libc::c_void,
                    pkt.len(),
                )
            };
            if n > 0 {
                dir.stats.packets_out.fetch_add(1, Ordering::Relaxed);
                dir.stats.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
            } else {
                // The far side is gone: the packet is lost.
                dir.stats.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
        let wait_ns = queue
            .peek()
            .map(|Reverse((t, _, _))| t.saturating_sub(mono_ns()))
            .unwrap_or(100_000_000)
            .min(100_000_000);
        let ts = libc::timespec {
            tv_sec: (wait_ns / 1_000_000_000) as libc::time_t,
            tv_nsec: (wait_ns % 1_000_000_000) as libc::c_long,
        };
        let mut pfd = libc::pollfd {
            fd: in_fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let rc = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        if rc <= 0 || pfd.revents & libc::POLLIN == 0 {
            continue;
        }
        for _ in 0..256 {
            // SAFETY: reading into a buffer we own.
            let n = unsafe { libc::read(in_fd, buf.as_mut_ptr() as *mut libc::c_void, buf.len()) };
            if n <= 0 {
                break;
            }
            let n = n as usize;
            let now = mono_ns();
            dir.stats.packets_in.fetch_add(1, Ordering::Relaxed);
            let verdict = if dir.to_client || dir.carrier.load(Ordering::Relaxed) {
                let mut shaper = dir.shaper.lock().unwrap();
                if shaper.loses_on_purpose(&buf[..n]) {
                    Verdict::Drop
                } else {
                    shaper.on_packet(now, n)
                }
            } else {
                Verdict::Drop
            };
            match verdict {
                Verdict::Drop => {
                    dir.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Verdict::ReleaseAt(t) => {
                    seq += 1;
                    queue.push(Reverse((t, seq, buf[..n].to_vec())));
                }
            }
        }
    }
}

fn counters(d: &Direction) -> DirCounters {
    DirCounters {
        packets_in: d.stats.packets_in.load(Ordering::Relaxed),
        packets_out: d.stats.packets_out.load(Ordering::Relaxed),
        dropped: d.stats.dropped.load(Ordering::Relaxed),
        bytes_out: d.stats.bytes_out.load(Ordering::Relaxed),
    }
}

fn handle(req: Request, paths: &[PathState], stop: &AtomicBool) -> Reply {
    let ok = Reply {
        ok: true,
        error: None,
        stats: Vec::new(),
    };
    let path = |k: usize| {
        paths.get(k).ok_or_else(|| {
            format!(
                "no path {k}: this lab has paths 0 to {}",
                paths.len().saturating_sub(1)
            )
        })
    };
    let result: Result<Reply, String> = match req {
        Request::Ping => Ok(ok),
        Request::Stop => {
            stop.store(true, Ordering::Relaxed);
            Ok(ok)
        }
        Request::Set { path: k, spec } => path(k).map(|p| {
            for d in &p.dirs {
                d.shaper.lock().unwrap().spec = spec;
            }
            ok
        }),
        Request::Blackhole { path: k, on } => path(k).map(|p| {
            for d in &p.dirs {
                d.shaper.lock().unwrap().blackhole = on;
            }
            ok
        }),
        Request::Carrier { path: k, up } => path(k).and_then(|p| {
            // Packets stop (or flow again) first, then the client's kernel
            // hears. The server's device keeps its carrier: a server is far
            // from the client's cable or radio, and its kernel goes on
            // sending into the path (with its queue and rate) until TCP or
            // MPTCP gives up on it.
            let set_wire = |on: bool| {
                for d in &p.dirs {
                    d.carrier.store(on, Ordering::Relaxed);
                }
            };
            set_wire(up);
            if let Err(e) = tun::set_carrier(&p.client_fd, up) {
                // The device did not change: neither does the wire.
                set_wire(!up);
                return Err(e.to_string());
            }
            Ok(ok)
        }),
        Request::Stats => Ok(Reply {
            ok: true,
            error: None,
            stats: paths
                .iter()
                .map(|p| [counters(&p.dirs[0]), counters(&p.dirs[1])])
                .collect(),
        }),
    };
    result.unwrap_or_else(|e| Reply {
        ok: false,
        error: Some(e),
        stats: Vec::new(),
    })
}

/// Run the emulator until a `stop` request (or the process is killed: the
/// TUN devices vanish with it). Creates the control socket once the devices
/// exist, so a successful connect means the lab's links are there.
pub fn run(cfg: EmulatorConfig) -> Result<(), LabError> {
    let stop = Arc::new(AtomicBool::new(false));
    let mut paths = Vec::new();
    let mut threads = Vec::new();
    for (k, spec) in cfg.paths.iter().enumerate() {
        let dev = &cfg.devices[k];
        let client_fd = Arc::new(tun::open_tun_in(&cfg.client_ns, dev)?);
        let server_fd = Arc::new(tun::open_tun_in(&cfg.server_ns, dev)?);
        let dirs = [0u64, 1].map(|d| {
            Arc::new(Direction {
                shaper: Mutex::new(Shaper::new(*spec, cfg.seed.wrapping_add(k as u64 * 2 + d))),
                stats: DirStats::default(),
                carrier: AtomicBool::new(true),
                to_client: d == 1,
            })
        });
        for (d, (input, output)) in [
            (client_fd.clone(), server_fd.clone()),
            (server_fd.clone(), client_fd.clone()),
        ]
        .into_iter()
        .enumerate()
        {
            let (dir, stop) = (dirs[d].clone(), stop.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("emu-p{k}-{}", if d == 0 { "up" } else { "down" }))
                    .spawn(move || pump(input, output, dir, stop))
                    .map_err(|e| LabError::Io(format!("spawning emulator thread: {e}")))?,
            );
        }
        paths.push(PathState { client_fd, dirs });
    }
    let _ = std::fs::remove_file(&cfg.control);
    let listener = UnixListener::bind(&cfg.control).map_err(|e| {
        LabError::Io(format!(
            "binding control socket {}: {e}",
            cfg.control.display()
        ))
    })?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line).is_err() {
            continue;
        }
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(req) => handle(req, &paths, &stop),
            Err(e) => Reply {
                ok: false,
                error: Some(format!("bad request: {e}")),
                stats: Vec::new(),
            },
        };
        let _ = writeln!(conn, "{}", serde_json::to_string(&reply).unwrap());
        if stop.load(Ordering::Relaxed) {
            break;
        }
    }
    for t in threads {
        let _ = t.join();
    }
    let _ = std::fs::remove_file(&cfg.control);
    Ok(())
}

/// Send one request to a running emulator.
pub fn request(control: &std::path::Path, req: &Request) -> Result<Reply, LabError> {
    let mut s = std::os::unix::net::UnixStream::connect(control).map_err(|e| {
        LabError::Io(format!(
            "cannot reach the lab's link emulator at {} ({e}): is the lab up? ('braid lab up')",
            control.display()
        ))
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    writeln!(s, "{}", serde_json::to_string(req).unwrap())
        .map_err(|e| LabError::Io(e.to_string()))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| LabError::Io(e.to_string()))?;
    let reply: Reply = serde_json::from_str(&line)
        .map_err(|e| LabError::Io(format!("malformed reply from the emulator: {e}")))?;
    if !reply.ok {
        return Err(LabError::Invalid(
            reply.error.unwrap_or_else(|| "the emulator refused".into()),
        ));
    }
    Ok(reply)
}
