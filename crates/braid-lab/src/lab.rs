//! A lab: a client and a server network namespace joined by N paths. Each
//! path is a pair of TUN devices (one per namespace) bridged by the link
//! emulator process, with tbf rate limiting on both ends and source
//! routing in the client so each subflow leaves by its own path.
//!
//! Path k (0-based) uses device `p{k}`, client address 10.{k+1}.0.1/24 and
//! server address 10.{k+1}.0.2/24. State lives in /run/braid/lab/NAME.
//!
//! With an origin, a third namespace sits behind the server on a veth
//! (server 10.250.0.1/24, origin 10.250.0.2/24), with MPTCP disabled: a
//! plain-TCP server reached only through a relay running on the server
//! (the server does not forward packets, so nothing reaches the origin
//! directly).

use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use braid_kernel::{netns, rtnl};
use serde::{Deserialize, Serialize};

use crate::emulator::{self, EmulatorConfig, Request};
use crate::spec::PathSpec;
use crate::LabError;

pub const STATE_ROOT: &str = "/run/braid/lab";
const MAX_PATHS: usize = 8;
const CLIENT_TABLE_BASE: u32 = 100;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathInfo {
    pub dev: String,
    pub client_addr: IpAddr,
    pub server_addr: IpAddr,
    pub prefix_len: u8,
    /// The setting the lab was built with (restore goes back to it).
    pub initial: PathSpec,
    /// The setting in force now.
    pub spec: PathSpec,
}

/// The plain-TCP origin behind the server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OriginInfo {
    pub ns: String,
    /// The server's address on the origin's link (where a relay connects from).
    pub server_addr: IpAddr,
    pub addr: IpAddr,
}

pub const ORIGIN_SERVER_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const ORIGIN_ADDR: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
pub const ORIGIN_PREFIX: u8 = 24;
const ORIGIN_DEV: &str = "o0";

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LabState {
    pub name: String,
    pub client_ns: String,
    pub server_ns: String,
    #[serde(default)]
    pub origin: Option<OriginInfo>,
    pub paths: Vec<PathInfo>,
    pub emulator_pid: u32,
    pub control: PathBuf,
}

/// How to build a lab.
pub struct LabConfig {
    pub name: String,
    pub paths: Vec<PathSpec>,
    /// The `braid` executable, started as `braid lab emulate --config FILE`.
    pub emulator_exe: PathBuf,
    /// Paths whose client address is left out at first (added later).
    pub client_addr_absent: Vec<usize>,
    pub seed: u64,
    /// Add a plain-TCP origin namespace behind the server.
    pub origin: bool,
}

pub struct Lab {
    pub state: LabState,
    /// When this process last changed a lab link's carrier (None: not
    /// known, the lab was opened from its state file).
    carrier_changed_at: Option<Instant>,
}

/// How long after a carrier change the kernel announces the next one at
/// once. Its link watch, which sends the RTM_NEWLINK of a carrier loss,
/// runs at most once a second for changes that are not urgent (a TUN's
/// or a NIC's carrier loss is not), for all namespaces together. A change
/// at t is announced by t + 1 s at the latest, and the run after it may
/// wait until t + 2 s. Measured: a carrier cut 0.9 s after the lab's set-up
/// reached the daemon 100 ms late, the kernel's wait and not the policy's.
pub const LINK_WATCH_QUIET: Duration = Duration::from_millis(2050);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// Carrier loss at the client's end of the path (a cable pulled or a
    /// radio lost there): nothing passes from that moment, the client's
    /// device has NO-CARRIER, the server's keeps its carrier.
    Carrier,
    /// Everything silently dropped; links stay up.
    Blackhole,
}

pub fn state_dir(name: &str) -> PathBuf {
    Path::new(STATE_ROOT).join(name)
}

pub fn validate_name(name: &str) -> Result<(), LabError> {
    let ok = !name.is_empty()
        && name.len() <= 12
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(LabError::Invalid(format!(
            "invalid lab name '{name}': use 1 to 12 characters from a-z, 0-9 and '-'"
        )))
    }
}

fn client_addr(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, k as u8 + 1, 0, 1))
}
fn server_addr(k: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(10, k as u8 + 1, 0, 2))
}

/// A sysctl to set in one of the lab's namespaces, e.g.
/// `net.ipv4.tcp_rmem=4096 16777216 33554432`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Sysctl {
    pub name: String,
    pub value: String,
}

impl Sysctl {
    pub fn parse(s: &str) -> Result<Sysctl, LabError> {
        let bad = |why: &str| {
            LabError::Invalid(format!(
                "sysctl '{s}': {why} (expected NAME=VALUE, e.g. net.ipv4.tcp_rmem=\"4096 16777216 33554432\")"
            ))
        };
        let (name, value) = s.split_once('=').ok_or_else(|| bad("no '='"))?;
        let name = name.trim();
        let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.');
        if name.is_empty()
            || !name.chars().all(ok_char)
            || name.split('.').any(|part| part.is_empty())
        {
            return Err(bad("the name is not a sysctl name"));
        }
        Ok(Sysctl {
            name: name.to_string(),
            value: value.trim().to_string(),
        })
    }

    /// Set it in the calling thread's network namespace.
    pub fn apply(&self) -> Result<(), LabError> {
        let path = self.name.replace('.', "/");
        if !std::path::Path::new("/proc/sys").join(&path).exists() {
            return Err(LabError::Invalid(format!(
                "there is no sysctl {} on this kernel",
                self.name
            )));
        }
        write_proc_sys(&path, &self.value).map_err(|e| {
            LabError::Invalid(format!("setting {} = '{}': {e}", self.name, self.value))
        })
    }
}

/// The sysctl that picks a namespace's TCP congestion control. A new
/// namespace starts with the host's (init_net's) default: results on a
/// host running BBR differ from those on one running CUBIC, so a run says
/// which one it had.
const CONGESTION_SYSCTL: &str = "net/ipv4/tcp_congestion_control";

/// The TCP congestion control of the calling thread's namespace.
pub fn congestion_control() -> Result<String, LabError> {
    std::fs::read_to_string(format!("/proc/sys/{CONGESTION_SYSCTL}"))
        .map(|s| s.trim().to_string())
        .map_err(|e| LabError::Io(format!("reading /proc/sys/{CONGESTION_SYSCTL}: {e}")))
}

/// Refuse what cannot be a congestion control's name, before any lab is
/// made for it.
pub fn check_congestion_name(name: &str) -> Result<(), LabError> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(LabError::Invalid(format!(
            "--cc '{name}' is not a congestion control's name (e.g. cubic, bbr, reno)"
        )));
    }
    Ok(())
}

/// Make `name` the calling thread's namespace's TCP congestion control.
pub fn set_congestion_control(name: &str) -> Result<(), LabError> {
    check_congestion_name(name)?;
    std::fs::write(format!("/proc/sys/{CONGESTION_SYSCTL}"), name).map_err(|e| {
        let read = |list: &str| {
            std::fs::read_to_string(format!("/proc/sys/net/ipv4/{list}"))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "unknown".into())
        };
        // The kernel lets a namespace other than the host's pick only an
        // algorithm the host allows (EPERM otherwise).
        if e.raw_os_error() == Some(libc::EPERM) {
            let allowed = read("tcp_allowed_congestion_control");
            return LabError::Invalid(format!(
                "cannot use congestion control '{name}' in the lab's namespaces: the host allows only {allowed} there (net.ipv4.tcp_allowed_congestion_control); allow it with: sysctl -w net.ipv4.tcp_allowed_congestion_control=\"{allowed} {name}\""
            ));
        }
        let available = read("tcp_available_congestion_control");
        if e.raw_os_error() == Some(libc::ENOENT) {
            return LabError::Invalid(format!(
                "cannot use congestion control '{name}': this kernel has no such algorithm (available: {available}) and no module tcp_{name} could be loaded"
            ));
        }
        LabError::Invalid(format!(
            "cannot use congestion control '{name}' ({e}; available: {available})"
        ))
    })
}

pub(crate) fn write_proc_sys(path: &str, value: &str) -> Result<(), LabError> {
    std::fs::write(format!("/proc/sys/{path}"), value)
        .map_err(|e| LabError::Io(format!("writing /proc/sys/{path}: {e}")))
}

pub(crate) fn ifindex(name: &str) -> Result<u32, LabError> {
    rtnl::link_index(name)?.ok_or_else(|| LabError::Io(format!("device {name} is missing")))
}

/// The rate tbf applies (none when the emulator applies it).
fn tbf_rate(spec: &PathSpec) -> Option<u64> {
    spec.rate_bps.filter(|_| !spec.rate_in_emulator)
}

/// tbf on `dev` in namespace `ns`. The lab sets up qdiscs with iproute2's
/// `tc`: no maintained Rust netlink crate builds tbf qdiscs.
fn apply_rate(ns: &str, dev: &str, rate_bps: Option<u64>) -> Result<(), LabError> {
    let out = match rate_bps {
        Some(bps) => {
            // A burst of ~5 ms of data (at least 2 full packets) and 50 ms of queue.
            let burst = (bps / 8 / 200).max(3200);
            Command::new("tc")
                .args(["-n", ns, "qdisc", "replace", "dev", dev, "root", "tbf"])
                .args([
                    "rate",
                    &format!("{bps}bit"),
                    "burst",
                    &burst.to_string(),
                    "latency",
                    "50ms",
                ])
                .output()
        }
        None => Command::new("tc")
            .args(["-n", ns, "qdisc", "del", "dev", dev, "root"])
            .output(),
    }
    .map_err(|e| LabError::Io(format!("running tc (install iproute2): {e}")))?;
    if rate_bps.is_some() && !out.status.success() {
        return Err(LabError::Io(format!(
            "tc could not set the rate on {dev}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

impl Lab {
    /// Build the lab; on any failure everything made so far is removed.
    pub fn up(cfg: LabConfig) -> Result<Lab, LabError> {
        validate_name(&cfg.name)?;
        if cfg.paths.is_empty() || cfg.paths.len() > MAX_PATHS {
            return Err(LabError::Invalid(format!(
                "a lab has 1 to {MAX_PATHS} paths"
            )));
        }
        let dir = state_dir(&cfg.name);
        let client_ns = format!("{}-c", cfg.name);
        let server_ns = format!("{}-s", cfg.name);
        let origin_ns = format!("{}-o", cfg.name);
        if dir.exists()
            || netns::exists(&client_ns)
            || netns::exists(&server_ns)
            || netns::exists(&origin_ns)
        {
            return Err(LabError::Invalid(format!(
                "a lab named '{}' is already up: remove it with 'braid lab down --name {}'",
                cfg.name, cfg.name
            )));
        }
        std::fs::create_dir_all(&dir)
            .map_err(|e| LabError::Io(format!("creating {}: {e}", dir.display())))?;
        let paths: Vec<PathInfo> = cfg
            .paths
            .iter()
            .enumerate()
            .map(|(k, spec)| PathInfo {
                dev: format!("p{k}"),
                client_addr: client_addr(k),
                server_addr: server_addr(k),
                prefix_len: 24,
                initial: *spec,
                spec: *spec,
            })
            .collect();
        let mut lab = Lab {
            state: LabState {
                name: cfg.name.clone(),
                client_ns,
                server_ns,
                origin: cfg.origin.then_some(OriginInfo {
                    ns: origin_ns,
                    server_addr: IpAddr::V4(ORIGIN_SERVER_ADDR),
                    addr: IpAddr::V4(ORIGIN_ADDR),
                }),
                paths,
                emulator_pid: 0,
                control: dir.join("control.sock"),
            },
            carrier_changed_at: None,
        };
        match lab.build(&cfg) {
            Ok(()) => {
                // The emulator's TUN devices came up with carrier.
                lab.carrier_changed_at = Some(Instant::now());
                Ok(lab)
            }
            Err(e) => {
                let _ = teardown(&lab.state.name, Some(&lab.state));
                Err(e)
            }
        }
    }

    fn build(&mut self, cfg: &LabConfig) -> Result<(), LabError> {
        let st = &mut self.state;
        netns::create(&st.client_ns)?;
        netns::create(&st.server_ns)?;
        self.save()?;
        let st = &mut self.state;
        let dir = state_dir(&st.name);
        let emu = EmulatorConfig {
            client_ns: st.client_ns.clone(),
            server_ns: st.server_ns.clone(),
            devices: st.paths.iter().map(|p| p.dev.clone()).collect(),
            paths: st.paths.iter().map(|p| p.spec).collect(),
            control: st.control.clone(),
            seed: cfg.seed,
        };
        let emu_file = dir.join("emulator.json");
        std::fs::write(&emu_file, serde_json::to_vec_pretty(&emu).unwrap())
            .map_err(|e| LabError::Io(format!("writing {}: {e}", emu_file.display())))?;
        let log = std::fs::File::create(dir.join("emulator.log"))
            .map_err(|e| LabError::Io(format!("creating the emulator log: {e}")))?;
        let mut cmd = Command::new(&cfg.emulator_exe);
        cmd.args(["lab", "emulate", "--config"])
            .arg(&emu_file)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Its own session: Ctrl-C in the terminal that made the lab does
        // not reach it; `braid lab down` ends it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            LabError::Io(format!(
                "starting the link emulator {}: {e}",
                cfg.emulator_exe.display()
            ))
        })?;
        st.emulator_pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if emulator::request(&st.control, &Request::Ping).is_ok() {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(dir.join("emulator.log")).unwrap_or_default();
                return Err(LabError::Io(format!(
                    "the link emulator exited ({status}): {}",
                    log.trim()
                )));
            }
            if Instant::now() > deadline {
                return Err(LabError::Io(
                    "the link emulator did not start within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The child is reaped by `down` (kill + waitpid) or by init.
        std::mem::forget(child);
        self.save()?;

        let st = self.state.clone();
        let absent = cfg.client_addr_absent.clone();
        let paths = st.paths.clone();
        netns::run_in::<_, LabError>(&st.client_ns, move || {
            write_proc_sys("net/ipv4/conf/all/rp_filter", "0")?;
            write_proc_sys("net/ipv4/conf/default/rp_filter", "0")?;
            rtnl::set_link_up(ifindex("lo")?, true)?;
            for (k, p) in paths.iter().enumerate() {
                let idx = ifindex(&p.dev)?;
                write_proc_sys(&format!("net/ipv4/conf/{}/rp_filter", p.dev), "0")?;
                rtnl::set_link_up(idx, true)?;
                if !absent.contains(&k) {
                    rtnl::add_address(idx, p.client_addr, p.prefix_len)?;
                }
                let table = CLIENT_TABLE_BASE + k as u32;
                rtnl::replace_route(table, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, idx, None)?;
                rtnl::add_source_rule(p.client_addr, table, 1000 + k as u32)?;
            }
            // The first path is the default route: the primary.
            rtnl::replace_route(
                254,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                0,
                ifindex(&paths[0].dev)?,
                None,
            )?;
            Ok(())
        })?;
        let paths = st.paths.clone();
        netns::run_in::<_, LabError>(&st.server_ns, move || {
            write_proc_sys("net/ipv4/conf/all/rp_filter", "0")?;
            write_proc_sys("net/ipv4/conf/default/rp_filter", "0")?;
            rtnl::set_link_up(ifindex("lo")?, true)?;
            for p in &paths {
                let idx = ifindex(&p.dev)?;
                write_proc_sys(&format!("net/ipv4/conf/{}/rp_filter", p.dev), "0")?;
                rtnl::set_link_up(idx, true)?;
                rtnl::add_address(idx, p.server_addr, p.prefix_len)?;
            }
            // The server accepts joins and announcements on every path.
            braid_kernel::pm::PathManager::open()?.set_limits(Some(8), Some(8))?;
            Ok(())
        })?;
        for p in &st.paths {
            apply_rate(&st.client_ns, &p.dev, tbf_rate(&p.spec))?;
            apply_rate(&st.server_ns, &p.dev, tbf_rate(&p.spec))?;
        }
        if let Some(o) = &st.origin {
            build_origin(&st.server_ns, o)?;
        }
        self.save()
    }

    fn save(&self) -> Result<(), LabError> {
        let f = state_dir(&self.state.name).join("state.json");
        std::fs::write(&f, serde_json::to_vec_pretty(&self.state).unwrap())
            .map_err(|e| LabError::Io(format!("writing {}: {e}", f.display())))
    }

    /// Open a lab that is up.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        validate_name(name)?;
        let f = state_dir(name).join("state.json");
        let bytes = std::fs::read(&f).map_err(|_| {
            LabError::Invalid(format!(
                "no lab named '{name}' is up (start one with 'braid lab up --name {name}')"
            ))
        })?;
        let state: LabState = serde_json::from_slice(&bytes).map_err(|e| {
            LabError::Io(format!(
                "{} is damaged ({e}): run 'braid lab down --name {name}'",
                f.display()
            ))
        })?;
        Ok(Lab {
            state,
            carrier_changed_at: None,
        })
    }

    pub fn path(&self, k: usize) -> Result<&PathInfo, LabError> {
        self.state.paths.get(k).ok_or_else(|| {
            LabError::Invalid(format!(
                "no path {k}: this lab has paths 0 to {}",
                self.state.paths.len() - 1
            ))
        })
    }

    /// Change a path's impairment live.
    pub fn set(&mut self, k: usize, spec: PathSpec) -> Result<(), LabError> {
        let p = self.path(k)?.clone();
        emulator::request(&self.state.control, &Request::Set { path: k, spec })?;
        if tbf_rate(&p.spec) != tbf_rate(&spec) {
            apply_rate(&self.state.client_ns, &p.dev, tbf_rate(&spec))?;
            apply_rate(&self.state.server_ns, &p.dev, tbf_rate(&spec))?;
        }
        self.state.paths[k].spec = spec;
        self.save()
    }

    pub fn cut(&mut self, k: usize, how: Cut) -> Result<(), LabError> {
        self.path(k)?;
        let req = match how {
            Cut::Carrier => Request::Carrier { path: k, up: false },
            Cut::Blackhole => Request::Blackhole { path: k, on: true },
        };
        emulator::request(&self.state.control, &req)?;
        if how == Cut::Carrier {
            self.carrier_changed_at = Some(Instant::now());
        }
        Ok(())
    }

    /// Wait until a carrier cut now would be announced by the kernel at
    /// once, not held back by its link watch (see [`LINK_WATCH_QUIET`]), so
    /// that a scenario measures the path manager, not the kernel's wait.
    pub fn wait_for_quiet_link_watch(&self) {
        if let Some(at) = self.carrier_changed_at {
            let quiet = at + LINK_WATCH_QUIET;
            let now = Instant::now();
            if quiet > now {
                std::thread::sleep(quiet - now);
            }
        }
    }

    /// Undo cuts and go back to the path's initial setting and address.
    pub fn restore(&mut self, k: usize) -> Result<(), LabError> {
        self.path(k)?;
        emulator::request(
            &self.state.control,
            &Request::Blackhole { path: k, on: false },
        )?;
        emulator::request(&self.state.control, &Request::Carrier { path: k, up: true })?;
        self.carrier_changed_at = Some(Instant::now());
        let initial = self.state.paths[k].initial;
        self.set(k, initial)?;
        if !self.client_addr_present(k)? {
            self.add_client_addr(k)?;
        }
        Ok(())
    }

    pub fn client_addr_present(&self, k: usize) -> Result<bool, LabError> {
        let addr = self.path(k)?.client_addr;
        netns::run_in::<_, LabError>(&self.state.client_ns, move || {
            Ok(rtnl::addresses()?.iter().any(|a| a.addr == addr))
        })
    }

    /// Give the client its address on path k (and the path's routes back).
    pub fn add_client_addr(&self, k: usize) -> Result<(), LabError> {
        let p = self.path(k)?.clone();
        let first = self.state.paths[0].dev.clone();
        netns::run_in::<_, LabError>(&self.state.client_ns, move || {
            let idx = ifindex(&p.dev)?;
            match rtnl::add_address(idx, p.client_addr, p.prefix_len) {
                Err(braid_kernel::Error::Kernel { errno, .. }) if errno == libc::EEXIST => {}
                r => r?,
            }
            rtnl::replace_route(
                CLIENT_TABLE_BASE + k as u32,
                IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                0,
                idx,
                None,
            )?;
            if k == 0 {
                rtnl::replace_route(
                    254,
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0,
                    ifindex(&first)?,
                    None,
                )?;
            }
            Ok(())
        })
    }

    pub fn remove_client_addr(&self, k: usize) -> Result<(), LabError> {
        let p = self.path(k)?.clone();
        netns::run_in::<_, LabError>(&self.state.client_ns, move || {
            let idx = ifindex(&p.dev)?;
            match rtnl::del_address(idx, p.client_addr, p.prefix_len) {
                Err(braid_kernel::Error::Kernel { errno, .. }) if errno == libc::EADDRNOTAVAIL => {
                    Ok(())
                }
                r => Ok(r?),
            }
        })
    }

    pub fn stats(&self) -> Result<Vec<[emulator::DirCounters; 2]>, LabError> {
        Ok(emulator::request(&self.state.control, &Request::Stats)?.stats)
    }

    /// Remove this lab.
    pub fn down(self) -> Result<(), LabError> {
        teardown(&self.state.name, Some(&self.state))
    }
}

/// The origin: its namespace, the veth to the server, addresses, and no
/// MPTCP (it stands for the servers on the Internet that have none).
pub(crate) fn build_origin(server_ns: &str, o: &OriginInfo) -> Result<(), LabError> {
    netns::create(&o.ns)?;
    let origin_file = std::fs::File::open(netns::path(&o.ns)?)
        .map_err(|e| LabError::Io(format!("opening namespace {}: {e}", o.ns)))?;
    let (server_addr, origin_addr) = (o.server_addr, o.addr);
    netns::run_in::<_, LabError>(server_ns, move || {
        use std::os::fd::AsFd;
        rtnl::add_veth(ORIGIN_DEV, ORIGIN_DEV, origin_file.as_fd())?;
        let idx = ifindex(ORIGIN_DEV)?;
        rtnl::add_address(idx, server_addr, ORIGIN_PREFIX)?;
        rtnl::set_link_up(idx, true)?;
        Ok(())
    })?;
    netns::run_in::<_, LabError>(&o.ns, move || {
        write_proc_sys("net/mptcp/enabled", "0")?;
        rtnl::set_link_up(ifindex("lo")?, true)?;
        let idx = ifindex(ORIGIN_DEV)?;
        rtnl::add_address(idx, origin_addr, ORIGIN_PREFIX)?;
        rtnl::set_link_up(idx, true)?;
        Ok(())
    })
}

/// Stop the emulator `pid` (SIGTERM, SIGKILL after 3 s) and, when this
/// process started it, reap it. It exits as soon as it has answered
/// `Stop`, and a zombie's command line is empty: checking
/// `pid_is_our_emulator` first let the sweep keep one zombie per run (150
/// after 130 runs) until it ended.
fn stop_emulator(pid: u32, name: &str) {
    let pid = pid as i32;
    let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
    if reaped == pid {
        return;
    }
    // Not our child (another `braid lab down`): only a process that is
    // still our emulator is signalled (its pid may have been reused).
    if reaped < 0 && !pid_is_our_emulator(pid as u32, name) {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(3);
    unsafe { libc::kill(pid, libc::SIGTERM) };
    loop {
        let reaped = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if reaped == pid || (reaped < 0 && !pid_is_our_emulator(pid as u32, name)) {
            return;
        }
        if Instant::now() > deadline {
            unsafe { libc::kill(pid, libc::SIGKILL) };
            if reaped == 0 {
                unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
            }
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn pid_is_our_emulator(pid: u32, name: &str) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
    text.contains("lab emulate") && text.contains(&format!("/{name}/"))
}

/// Remove everything a lab made: emulator process, namespaces, state.
/// Works from the state file, and from the names alone when it is gone.
pub fn teardown(name: &str, state: Option<&LabState>) -> Result<(), LabError> {
    validate_name(name)?;
    let loaded;
    let state = match state {
        Some(s) => Some(s),
        None => {
            loaded = Lab::open(name).ok();
            loaded.as_ref().map(|l| &l.state)
        }
    };
    let client_ns = format!("{name}-c");
    let server_ns = format!("{name}-s");
    let dir = state_dir(name);
    if state.is_none()
        && !dir.exists()
        && !netns::exists(&client_ns)
        && !netns::exists(&server_ns)
        && !netns::exists(&format!("{name}-o"))
    {
        return Err(LabError::Invalid(format!("no lab named '{name}' is up")));
    }
    // Without a state file, the emulator is found by its command line.
    let pids: Vec<u32> = match state {
        Some(s) => {
            let _ = emulator::request(&s.control, &Request::Stop);
            vec![s.emulator_pid]
        }
        None => std::fs::read_dir("/proc")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|pid| pid_is_our_emulator(*pid, name))
                    .collect()
            })
            .unwrap_or_default(),
    };
    for pid in pids.into_iter().filter(|p| *p != 0) {
        stop_emulator(pid, name);
    }
    let origin_ns = format!("{name}-o");
    let mut first_err = None;
    for ns in [&client_ns, &server_ns, &origin_ns] {
        if ns == &origin_ns && !netns::exists(ns) {
            continue;
        }
        // Whatever still runs inside (a path manager, proxies, servers)
        // would keep the namespace alive: end it.
        netns::kill_all(ns, Duration::from_secs(2));
        if let Err(e) = netns::delete(ns) {
            first_err.get_or_insert(LabError::from(e));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Names of labs that are up (from their state directories).
pub fn list() -> Vec<String> {
    std::fs::read_dir(STATE_ROOT)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}
