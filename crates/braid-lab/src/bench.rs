//! Measuring the link emulator itself: added one-way delay and loss over a
//! stream of UDP packets sent at a fixed rate through a one-path lab, and
//! the emulator's CPU use.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use crate::emulator::mono_ns;
use crate::guard::LabGuard;
use crate::lab::LabConfig;
use crate::spec::PathSpec;
use crate::LabError;

#[derive(Debug, Clone, Serialize)]
pub struct AccuracyResult {
    pub rate_bps: u64,
    pub packet_bytes: usize,
    pub packets_sent: u64,
    pub packets_received: u64,
    pub set_delay_ms: f64,
    pub set_loss: f64,
    /// Mean one-way delay with the emulator set to 0 (the path's own cost).
    pub base_delay_ms: f64,
    pub mean_delay_ms: f64,
    /// mean_delay_ms - base_delay_ms
    pub added_delay_ms: f64,
    pub delay_error_ms: f64,
    pub p99_delay_ms: f64,
    pub measured_loss: f64,
    /// (measured - set) / set
    pub loss_error_relative: f64,
    /// Achieved receive rate.
    pub received_bps: f64,
    /// Emulator CPU time / wall time (1.0 = one core busy).
    pub emulator_cpu: f64,
}

struct Run {
    sent: u64,
    delays_ms: Vec<f64>,
    /// From the first to the last packet received.
    span_s: f64,
    wall_s: f64,
    cpu_s: f64,
}

fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses.
    let rest = stat.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let utime: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let stime: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    (utime + stime) / ticks
}

fn stream(guard: &LabGuard, rate_bps: u64, packets: u64, size: usize) -> Result<Run, LabError> {
    let st = guard.lab().state.clone();
    let dst = SocketAddr::new(st.paths[0].server_addr, 9000);
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let server_ns = st.server_ns.clone();
    let receiver = std::thread::spawn(move || -> Result<(Vec<f64>, f64), LabError> {
        braid_kernel::netns::enter(&server_ns)?;
        let sock = UdpSocket::bind("0.0.0.0:9000").map_err(|e| LabError::Io(e.to_string()))?;
        let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(16 << 20);
        sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
        ready_tx.send(()).ok();
        let mut delays = Vec::with_capacity(packets as usize);
        let mut buf = vec![0u8; 65536];
        let (mut first, mut last) = (0u64, 0u64);
        while let Ok(n) = sock.recv(&mut buf) {
            let now = mono_ns();
            if first == 0 {
                first = now;
            }
            last = now;
            if n >= 16 {
                let ts = u64::from_be_bytes(buf[8..16].try_into().unwrap());
                delays.push((now - ts) as f64 / 1e6);
            }
            if delays.len() as u64 >= packets {
                break;
            }
        }
        Ok((delays, (last - first) as f64 / 1e9))
    });
    ready_rx
        .recv_timeout(Duration::from_secs(5))
        .map_err(|_| LabError::Io("receiver did not start".into()))?;
    let client_ns = st.client_ns.clone();
    let pid = st.emulator_pid;
    let cpu0 = cpu_seconds(pid);
    let t_start = mono_ns();
    let sent = std::thread::spawn(move || -> Result<u64, LabError> {
        braid_kernel::netns::enter(&client_ns)?;
        let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| LabError::Io(e.to_string()))?;
        let interval = size as u64 * 8 * 1_000_000_000 / rate_bps;
        let mut buf = vec![0u8; size];
        let t0 = mono_ns();
        for seq in 0..packets {
            let due = t0 + seq * interval;
            while mono_ns() < due {
                std::hint::spin_loop();
            }
            buf[..8].copy_from_slice(&seq.to_be_bytes());
            buf[8..16].copy_from_slice(&mono_ns().to_be_bytes());
            // ENOBUFS when the device queue is full counts as a loss.
            let _ = sock.send_to(&buf, dst);
        }
        Ok(packets)
    })
    .join()
    .map_err(|_| LabError::Io("sender panicked".into()))??;
    let (delays, span_s) = receiver
        .join()
        .map_err(|_| LabError::Io("receiver panicked".into()))??;
    let wall_s = (mono_ns() - t_start) as f64 / 1e9;
    Ok(Run {
        sent,
        delays_ms: delays,
        span_s,
        wall_s,
        cpu_s: cpu_seconds(pid) - cpu0,
    })
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Measure delay and loss accuracy at `rate_bps` with `packets` packets.
pub fn accuracy(
    exe: PathBuf,
    name: &str,
    rate_bps: u64,
    packets: u64,
    delay_us: u64,
    loss: f64,
) -> Result<AccuracyResult, LabError> {
    const SIZE: usize = 1250;
    let base_spec = PathSpec::default();
    let mut guard = LabGuard::up(LabConfig {
        name: name.to_string(),
        paths: vec![base_spec],
        emulator_exe: exe,
        client_addr_absent: Vec::new(),
        origin: false,
        seed: 1234,
    })?;
    let base = stream(&guard, rate_bps, packets.min(5000), SIZE)?;
    guard.lab_mut().set(
        0,
        PathSpec {
            delay_us,
            loss,
            ..base_spec
        },
    )?;
    let run = stream(&guard, rate_bps, packets, SIZE)?;
    drop(guard);
    let base_delay = mean(&base.delays_ms);
    let mean_delay = mean(&run.delays_ms);
    let mut sorted = run.delays_ms.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let received = run.delays_ms.len() as u64;
    let measured_loss = 1.0 - received as f64 / run.sent as f64;
    let set_delay_ms = delay_us as f64 / 1000.0;
    Ok(AccuracyResult {
        rate_bps,
        packet_bytes: SIZE,
        packets_sent: run.sent,
        packets_received: received,
        set_delay_ms,
        set_loss: loss,
        base_delay_ms: base_delay,
        mean_delay_ms: mean_delay,
        added_delay_ms: mean_delay - base_delay,
        delay_error_ms: mean_delay - base_delay - set_delay_ms,
        p99_delay_ms: crate::traffic::percentile(&sorted, 99.0),
        measured_loss,
        loss_error_relative: if loss > 0.0 {
            (measured_loss - loss) / loss
        } else {
            measured_loss
        },
        received_bps: received as f64 * SIZE as f64 * 8.0 / run.span_s.max(1e-9),
        // The emulator is busy while packets flow; the tail wait is idle.
        emulator_cpu: run.cpu_s / run.span_s.max(1e-9).min(run.wall_s),
    })
}
