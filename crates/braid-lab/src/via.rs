//! How the lab's client reaches its server: directly over MPTCP, or as an
//! unmodified program would reach a plain-TCP server on the Internet —
//! through a proxy on the client that carries each connection over MPTCP
//! to a relay on the server, which connects to the origin with plain TCP.
//! Braid's relay, or shadowsocks-libev under mptcpize (the setup
//! OpenMPTCProuter users run) as the reference.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use braid_relay::keys::PrivateKey;
use serde::Serialize;

use crate::lab::Lab;
use crate::pm::spawn_in_netns;
use crate::traffic::ClientWay;
use crate::LabError;

pub const SS_SERVER: &str = "/usr/bin/ss-server";
pub const SS_LOCAL: &str = "/usr/bin/ss-local";
pub const MPTCPIZE: &str = "/usr/bin/mptcpize";
/// The cipher OpenMPTCProuter's shadowsocks setups use.
pub const SS_METHOD: &str = "chacha20-ietf-poly1305";
pub const RELAY_PORT: u16 = 7000;
pub const SS_PORT: u16 = 8388;
/// Where the proxy listens in the client's namespace.
pub const SOCKS_ADDR: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 1080);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// MPTCP from the client to the server.
    Direct,
    /// Braid's relay: SOCKS5 on the client, `braid relay serve` on the server.
    Relay,
    /// shadowsocks-libev (ss-local, ss-server) under mptcpize.
    Shadowsocks,
    /// Braid's relay with its client in transparent mode: the program
    /// connects with plain TCP to the origin's address, no proxy setting.
    Transparent,
}

impl Via {
    pub fn parse(s: &str) -> Result<Via, LabError> {
        match s {
            "direct" => Ok(Via::Direct),
            "relay" => Ok(Via::Relay),
            "shadowsocks" | "ss" => Ok(Via::Shadowsocks),
            "transparent" => Ok(Via::Transparent),
            other => Err(LabError::Invalid(format!(
                "unknown --via '{other}': choose direct, relay, transparent or shadowsocks"
            ))),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Relay => "relay",
            Via::Shadowsocks => "shadowsocks",
            Via::Transparent => "transparent",
        }
    }

    /// Why this cannot run here, if it cannot.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Via::Shadowsocks => [SS_SERVER, SS_LOCAL, MPTCPIZE]
                .iter()
                .find(|p| !Path::new(p).exists())
                .map(|missing| {
                    format!(
                        "{missing} is missing: 'apt-get install shadowsocks-libev mptcpd' to compare with shadowsocks under mptcpize"
                    )
                }),
            _ => None,
        }
    }
}

/// The proxies of a run; stopped on drop.
pub struct RunningVia {
    children: Vec<Child>,
    /// How the client's programs reach the origin through them.
    pub way: ClientWay,
    logs: Vec<std::path::PathBuf>,
}

impl RunningVia {
    /// Process ids: relay (or ss-server) first, then the client side.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// One more proxy, logging to `log`: stopped on drop, its log in
    /// [`RunningVia::log_tail`].
    fn add(&mut self, child: Child, log: &Path) {
        self.children.push(child);
        self.logs.push(log.to_path_buf());
    }

    /// The end of each proxy's log, to explain a failure.
    pub fn log_tail(&self) -> String {
        self.logs
            .iter()
            .map(|p| {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                let tail = lines[lines.len().saturating_sub(5)..].join("\n  ");
                format!("{}:\n  {tail}", p.display())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for RunningVia {
    fn drop(&mut self) {
        for c in &mut self.children {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        }
        for c in &mut self.children {
            let deadline = Instant::now() + Duration::from_secs(2);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn write(path: &Path, text: &str) -> Result<(), LabError> {
    std::fs::write(path, text).map_err(|e| LabError::Io(format!("writing {}: {e}", path.display())))
}

fn new_key(path: &Path) -> Result<PrivateKey, LabError> {
    let _ = std::fs::remove_file(path);
    let k = PrivateKey::generate().map_err(|e| LabError::Io(e.to_string()))?;
    k.save_new(path).map_err(|e| LabError::Io(e.to_string()))?;
    Ok(k)
}

/// Wait until `ready` says yes, or fail with the log's content.
fn wait_ready(what: &str, log: &Path, mut ready: impl FnMut() -> bool) -> Result<(), LabError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        if Instant::now() > deadline {
            let text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(LabError::Io(format!(
                "{what} did not start: {}",
                text.trim()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    Ok(())
}

fn listening_in(ns: &str, addr: SocketAddr) -> bool {
    braid_kernel::netns::run_in::<_, LabError>(ns, move || {
        Ok(std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_ok())
    })
    .unwrap_or(false)
}

/// Where the proxies run: a client and a server namespace, the server's
/// address the client reaches, and the origin behind the server.
#[derive(Debug, Clone)]
pub struct Site {
    /// Keys, configurations and logs go here.
    pub dir: std::path::PathBuf,
    pub client_ns: String,
    pub server_ns: String,
    pub server_addr: IpAddr,
    pub origin_addr: IpAddr,
}

impl Site {
    pub fn of(lab: &Lab) -> Result<Site, LabError> {
        let st = &lab.state;
        let origin = st
            .origin
            .as_ref()
            .ok_or_else(|| LabError::Invalid("a relay needs a lab with an origin".into()))?;
        Ok(Site {
            dir: crate::lab::state_dir(&st.name),
            client_ns: st.client_ns.clone(),
            server_ns: st.server_ns.clone(),
            server_addr: st.paths[0].server_addr,
            origin_addr: origin.addr,
        })
    }
}

/// How the proxies are set up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ProxyOptions {
    /// Both ends put data in the SYN (TCP Fast Open).
    pub fast_open: bool,
    /// The client answers CONNECT at once and sends the program's first
    /// bytes with the destination (Braid's relay: `early_reply`;
    /// shadowsocks always does).
    pub early_reply: bool,
    /// Transparent mode's `quic`: "block", "relay" or "allow".
    pub quic: &'static str,
}

impl ProxyOptions {
    /// Each proxy as its users would run it: Braid's relay with its
    /// defaults (Fast Open on); shadowsocks-libev with its own (Fast Open
    /// off: on Linux 6.18 an MPTCP server's answer to data in the SYN is
    /// never sent when it is ready before the handshake's last ACK, which
    /// ss-server does not work around, so its connections hang).
    pub fn recommended(via: Via) -> ProxyOptions {
        ProxyOptions {
            fast_open: via != Via::Shadowsocks,
            early_reply: false,
            quic: "block",
        }
    }
}

/// Start the proxies `via` needs in `lab` (which must have an origin).
pub fn start(via: Via, lab: &Lab, braid_exe: &Path) -> Result<Option<RunningVia>, LabError> {
    if via == Via::Direct {
        return Ok(None);
    }
    start_at(
        via,
        &Site::of(lab)?,
        braid_exe,
        ProxyOptions::recommended(via),
    )
}

/// Start the proxies at `site`.
pub fn start_at(
    via: Via,
    site: &Site,
    braid_exe: &Path,
    opts: ProxyOptions,
) -> Result<Option<RunningVia>, LabError> {
    let fast_open = opts.fast_open;
    if via == Via::Direct {
        return Ok(None);
    }
    if let Some(why) = via.unavailable() {
        return Err(LabError::Invalid(why));
    }
    // Both ends take data in the SYN where they can (the relay uses it for
    // its first message; ss-libev with --fast-open too).
    let tfo = if fast_open { "3" } else { "1" };
    for ns in [&site.client_ns, &site.server_ns] {
        braid_kernel::netns::run_in::<_, LabError>(ns, move || {
            std::fs::write("/proc/sys/net/ipv4/tcp_fastopen", tfo)
                .map_err(|e| LabError::Io(format!("setting net.ipv4.tcp_fastopen: {e}")))
        })?;
    }
    let mut running = RunningVia {
        children: Vec::new(),
        way: if via == Via::Transparent {
            ClientWay::Tcp
        } else {
            ClientWay::Socks5(SOCKS_ADDR)
        },
        logs: Vec::new(),
    };
    match via {
        Via::Direct => unreachable!(),
        Via::Relay | Via::Transparent => start_relay(&mut running, via, site, braid_exe, opts)?,
        Via::Shadowsocks => start_shadowsocks(&mut running, site, opts.fast_open)?,
    }
    Ok(Some(running))
}

/// Braid's relay server, and its client in SOCKS or transparent mode.
fn start_relay(
    running: &mut RunningVia,
    via: Via,
    site: &Site,
    braid_exe: &Path,
    opts: ProxyOptions,
) -> Result<(), LabError> {
    let ProxyOptions {
        fast_open,
        early_reply,
        quic,
    } = opts;
    let dir = &site.dir;
    let relay_addr = SocketAddr::new(site.server_addr, RELAY_PORT);
    let relay_key = new_key(&dir.join("relay.key"))?;
    let client_key = new_key(&dir.join("relay-client.key"))?;
    let server_sock = dir.join("relay.sock");
    let client_sock = dir.join("relay-client.sock");
    let cfg = dir.join("relay.toml");
    let transparent = via == Via::Transparent;
    let socks = if transparent {
        "off".to_string()
    } else {
        SOCKS_ADDR.to_string()
    };
    write(
        &cfg,
        &format!(
            "[relay.server]\nlisten = [\"0.0.0.0:{RELAY_PORT}\"]\nkey_file = \"{}\"\ncontrol_socket = \"{}\"\nfast_open = {fast_open}\nmax_connections = 100000\nmax_handshakes = 10000\nmax_handshakes_per_source = 10000\n\n[relay.server.destinations]\nallow = [\"{}/{}\"]\n\n[[relay.server.client]]\nname = \"lab\"\npublic_key = \"{}\"\n\n[relay.client]\nrelay = \"{relay_addr}\"\nrelay_public_key = \"{}\"\nkey_file = \"{}\"\nsocks = \"{socks}\"\nhttp = \"off\"\nfast_open = {fast_open}\nearly_reply = {early_reply}\ncontrol_socket = \"{}\"\ntransparent = {transparent}\nfallback = \"block\"\nquic = \"{quic}\"\n",
            dir.join("relay.key").display(),
            server_sock.display(),
            site.origin_addr,
            crate::lab::ORIGIN_PREFIX,
            client_key.public(),
            relay_key.public(),
            dir.join("relay-client.key").display(),
            client_sock.display(),
        ),
    )?;
    let ends = [
        (
            "the relay",
            &site.server_ns,
            "serve",
            "relay-server.log",
            server_sock,
        ),
        (
            "the relay client",
            &site.client_ns,
            "connect",
            "relay-client.log",
            client_sock,
        ),
    ];
    for (what, ns, command, log, sock) in ends {
        let log = dir.join(log);
        let child = spawn_in_netns(
            ns,
            Command::new(braid_exe)
                .args(["relay", command, "-c"])
                .arg(&cfg),
            &log,
        )?;
        running.add(child, &log);
        wait_ready(what, &log, || {
            braid_relay::control::request_status(&sock).is_ok()
        })?;
    }
    Ok(())
}

/// ss-server and ss-local, both under mptcpize.
fn start_shadowsocks(
    running: &mut RunningVia,
    site: &Site,
    fast_open: bool,
) -> Result<(), LabError> {
    let password = format!("lab-{:016x}", fastrand::u64(..));
    let ss_addr = SocketAddr::new(site.server_addr, SS_PORT);
    let server = ShadowsocksEnd {
        name: "ss-server",
        program: SS_SERVER,
        ns: &site.server_ns,
        place: &["-s", "0.0.0.0", "-p", &SS_PORT.to_string()],
        listen: ss_addr,
    };
    server.start(running, &site.dir, &password, fast_open)?;
    let client = ShadowsocksEnd {
        name: "ss-local",
        program: SS_LOCAL,
        ns: &site.client_ns,
        place: &[
            "-s",
            &ss_addr.ip().to_string(),
            "-p",
            &SS_PORT.to_string(),
            "-b",
            &SOCKS_ADDR.ip().to_string(),
            "-l",
            &SOCKS_ADDR.port().to_string(),
        ],
        listen: SOCKS_ADDR,
    };
    client.start(running, &site.dir, &password, fast_open)
}

/// One end of shadowsocks: where it listens and what it talks to (`place`);
/// the key, cipher and socket options are the same at both ends.
struct ShadowsocksEnd<'a> {
    name: &'a str,
    program: &'a str,
    ns: &'a str,
    place: &'a [&'a str],
    listen: SocketAddr,
}

impl ShadowsocksEnd<'_> {
    /// Runs it under mptcpize, logging to `<name>.log`, and waits until it
    /// listens.
    fn start(
        &self,
        running: &mut RunningVia,
        dir: &Path,
        password: &str,
        fast_open: bool,
    ) -> Result<(), LabError> {
        let log = dir.join(format!("{}.log", self.name));
        let child = spawn_in_netns(
            self.ns,
            Command::new(MPTCPIZE)
                .args(["run", self.program])
                .args(self.place)
                .args(["-k", password, "-m", SS_METHOD, "--no-delay"])
                .args(fast_open.then_some("--fast-open")),
            &log,
        )?;
        running.add(child, &log);
        wait_ready(self.name, &log, || listening_in(self.ns, self.listen))
    }
}

/// CPU time (user + system) a process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Some(Duration::from_micros(ticks * 1_000_000 / hz))
}

/// Resident memory of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}
