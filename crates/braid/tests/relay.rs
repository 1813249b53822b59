//! `braid relay` against the real kernel. Each test builds its own
//! namespaces:
//!
//! ```text
//!  c (client)          r (relay)                        o (origin, no MPTCP)
//!  c0 10.0.1.1 ------- r0 10.0.1.2
//!  c1 10.0.2.1 ------- r1 10.0.2.2
//!                      r2 10.9.0.1, fd00:9::1 --------- o0 10.9.0.2, fd00:9::2
//! ```
//!
//! The relay listens on 10.0.1.2:7000 (MPTCP); the client's second path is
//! an MPTCP `subflow` endpoint on c1 with its own routing table. The origin
//! is a plain TCP server (a thread in `o`, where `net.mptcp.enabled = 0`)
//! speaking a tiny test protocol: the client sends `up` and `down` (u64 BE),
//! then `up` bytes of one pseudo-random pattern, while the origin sends
//! `down` bytes of another; once the origin has read the client's end of
//! stream it sends a trailer (bytes received, bytes that did not match)
//! and closes. Processes, threads, namespaces and files are removed on
//! every path out of a test (Drop guards).

mod common;
use common::{wait_for, Netns, BRAID};
#[path = "common/relay_kit.rs"]
mod relay_kit;
use relay_kit::{
    assert_exchange, exchange, header, pattern, run_bounded, split16, status, Origin, Proc,
    TempDir, IO_TIMEOUT, SEED_DOWN,
};

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use braid_relay::keys::{PrivateKey, PublicKey};
use braid_relay::noise::{Initiator, Opener, Sealer, TAG_LEN};
use braid_relay::wire::{
    self, Destination, FrameKind, Kind, MessageReader, Reply, Request, Status,
};
use serde_json::Value;

const RELAY_PORT: u16 = 7000;
const ORIGIN_PORT: u16 = 8080;
const ORIGIN_V4: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);
const SOCKS: &str = "127.0.0.1:1080";
const HTTP: &str = "127.0.0.1:3128";

fn relay_addr() -> SocketAddr {
    SocketAddr::from(([10, 0, 1, 2], RELAY_PORT))
}

fn origin_v4() -> SocketAddr {
    SocketAddr::from((ORIGIN_V4, ORIGIN_PORT))
}

fn origin_v6() -> SocketAddr {
    SocketAddr::from((ORIGIN_V6, ORIGIN_PORT))
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// A small deterministic generator for "random" probe bytes.
fn random_bytes(seed: u64, len: usize) -> Vec<u8> {
    pattern(seed ^ 0xdead_beef, len)
}

fn count(st: &Value, section: &str, kind: &str) -> u64 {
    st[section][kind].as_u64().unwrap_or(0)
}

/// `braid relay keygen --out FILE` ([`relay_kit::keygen`]): the file
/// (mode 0600) and the public key printed, parsed and checked against
/// the file.
fn keygen(dir: &TempDir, name: &str) -> (PathBuf, PublicKey) {
    use std::os::unix::fs::PermissionsExt;
    let (path, text) = relay_kit::keygen(dir, name);
    let public = PublicKey::from_text(&text).expect("keygen prints the public key");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "a private key file is written 0600");
    assert_eq!(PrivateKey::load(&path).unwrap().public(), public);
    (path, public)
}

// ------------------------------------------------------------ the client

enum Target {
    V4(Ipv4Addr),
    V6(Ipv6Addr),
    Name(&'static str),
}

/// A SOCKS5 CONNECT through the client's listener, by hand: the stream
/// when the reply code is 0, the code otherwise. Runs in the caller's
/// namespace.
fn socks_connect(target: &Target, port: u16) -> Result<TcpStream, u8> {
    let proxy: SocketAddr = SOCKS.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&proxy, Duration::from_secs(5)).expect("SOCKS listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).expect("SOCKS method selection");
    assert_eq!(m, [5, 0], "SOCKS method 'no authentication'");
    let mut req = vec![5, 1, 0];
    match target {
        Target::V4(a) => {
            req.push(1);
            req.extend_from_slice(&a.octets());
        }
        Target::V6(a) => {
            req.push(4);
            req.extend_from_slice(&a.octets());
        }
        Target::Name(n) => {
            req.push(3);
            req.push(n.len() as u8);
            req.extend_from_slice(n.as_bytes());
        }
    }
    req.extend_from_slice(&port.to_be_bytes());
    s.write_all(&req).unwrap();
    let mut r = [0u8; 4];
    s.read_exact(&mut r).expect("SOCKS reply");
    assert_eq!((r[0], r[2]), (5, 0), "a SOCKS5 reply: {r:?}");
    let addr_len = match r[3] {
        1 => 4,
        4 => 16,
        other => panic!("reply address type {other}"),
    };
    let mut rest = vec![0u8; addr_len + 2];
    s.read_exact(&mut rest).expect("SOCKS reply address");
    if r[1] == 0 {
        Ok(s)
    } else {
        Err(r[1])
    }
}

/// HTTP CONNECT through the client's listener: the answer's head (read to
/// its blank line, nothing more) and the stream.
fn http_connect(target: &str) -> (String, TcpStream) {
    let mut s = TcpStream::connect(HTTP).expect("HTTP CONNECT listener");
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(s, "CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b) {
            Ok(1) => head.push(b[0]),
            other => panic!(
                "HTTP answer cut short ({other:?}): {}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    (String::from_utf8_lossy(&head).into_owned(), s)
}

// --------------------------------------------- hand-made relay protocol

/// A first message for the relay, length-prefixed as on the wire.
fn first_message(
    client: &PrivateKey,
    relay: &PublicKey,
    timestamp_ms: u64,
    destination: SocketAddr,
    early_data: &[u8],
) -> (Initiator, Vec<u8>) {
    let mut i = Initiator::new(client, relay).unwrap();
    let request = Request {
        kind: Kind::Tcp,
        timestamp_ms,
        destination: Destination::from(destination),
        early_data: early_data.to_vec(),
    };
    let msg = i.first_message(&request.encode()).unwrap();
    let mut out = wire::length_prefix(msg.len()).to_vec();
    out.extend_from_slice(&msg);
    (i, out)
}

fn read_message(s: &mut TcpStream, reader: &mut MessageReader) -> Option<Vec<u8>> {
    loop {
        if let Some(m) = reader.next_message() {
            return Some(m.to_vec());
        }
        match s.read(reader.spare()) {
            Ok(0) => return None,
            Ok(n) => reader.filled(n),
            Err(e) => panic!("reading from the relay: {e}"),
        }
    }
}

/// An established tunnel spoken by hand.
struct RawTunnel {
    s: TcpStream,
    sealer: Sealer,
    opener: Opener,
    reader: MessageReader,
}

impl RawTunnel {
    /// Send the first message, read the relay's answer.
    fn open(mut s: TcpStream, initiator: Initiator, first: &[u8]) -> (Reply, RawTunnel) {
        s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        s.write_all(first).unwrap();
        let mut reader = MessageReader::new();
        let answer = read_message(&mut s, &mut reader).expect("an answer from the relay");
        let (payload, session) = initiator
            .read_reply(&answer)
            .expect("the answer authenticates as the relay's");
        let reply = Reply::decode(&payload).unwrap();
        let (sealer, opener) = session.split();
        (
            reply,
            RawTunnel {
                s,
                sealer,
                opener,
                reader,
            },
        )
    }

    fn send(&mut self, kind: FrameKind, data: &[u8]) {
        let mut plain = vec![kind as u8];
        plain.extend_from_slice(data);
        let mut out = vec![0u8; plain.len() + TAG_LEN];
        let n = self.sealer.seal(&plain, &mut out).unwrap();
        let mut msg = wire::length_prefix(n).to_vec();
        msg.extend_from_slice(&out[..n]);
        self.s.write_all(&msg).unwrap();
    }

    fn recv(&mut self) -> Option<(FrameKind, Vec<u8>)> {
        let msg = read_message(&mut self.s, &mut self.reader)?;
        let mut out = vec![0u8; msg.len()];
        let n = self
            .opener
            .open(&msg, &mut out)
            .expect("a frame from the relay");
        let (kind, data) = wire::parse_frame(&out[..n]).unwrap();
        Some((kind, data.to_vec()))
    }

    /// Data until the relay's end-of-stream frame.
    fn recv_to_end(&mut self) -> Vec<u8> {
        let mut data = Vec::new();
        loop {
            match self.recv() {
                Some((FrameKind::Data, d)) => data.extend_from_slice(&d),
                Some((FrameKind::End, _)) => return data,
                other => panic!("expected data or end of stream, got {other:?}"),
            }
        }
    }
}

/// What a refused peer observed.
#[derive(Debug)]
struct Silence {
    bytes: usize,
    /// When the relay closed, from the connection's establishment.
    closed_after: Option<Duration>,
}

/// Connect to the relay (in the caller's namespace), send `send`, then read
/// until the relay closes or `limit` passes.
fn probe(send: &[u8], limit: Duration) -> Silence {
    let mut s = TcpStream::connect_timeout(&relay_addr(), Duration::from_secs(5))
        .expect("connect to the relay");
    let t0 = Instant::now();
    if !send.is_empty() {
        s.write_all(send).unwrap();
    }
    let mut bytes = 0;
    let mut buf = [0u8; 4096];
    loop {
        let left = match limit.checked_sub(t0.elapsed()) {
            Some(l) if !l.is_zero() => l,
            _ => {
                return Silence {
                    bytes,
                    closed_after: None,
                }
            }
        };
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes += n,
            Err(e) if e.kind() == ErrorKind::ConnectionReset => break,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => panic!("probe read: {e}"),
        }
    }
    Silence {
        bytes,
        closed_after: Some(t0.elapsed()),
    }
}

/// Zero bytes heard, closed no earlier than 0.8 x the handshake timeout and
/// no later than 2 s after it.
fn assert_silent(what: &str, s: &Silence, timeout_ms: u64) {
    assert_eq!(s.bytes, 0, "{what}: the relay sent {} bytes", s.bytes);
    let t = Duration::from_millis(timeout_ms);
    let closed = s
        .closed_after
        .unwrap_or_else(|| panic!("{what}: still open 2 s after the handshake deadline"));
    assert!(
        closed >= t.mul_f64(0.8) && closed <= t + Duration::from_secs(2),
        "{what}: closed after {closed:?}, the handshake timeout being {t:?}"
    );
}

// ------------------------------------------------------------------- lab

/// `ip -n NS ARGS` with the arguments in one string.
fn ip(ns: &Netns, args: &str) {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>());
}

struct Opts {
    allow: &'static [&'static str],
    handshake_timeout_ms: u64,
    max_handshakes: u32,
    max_handshakes_per_source: u32,
    client_max_connections: Option<u32>,
    /// A hosts file for the relay only (a private mount namespace).
    hosts: Option<&'static str>,
    /// Run the relay and its client as `nobody` with no capabilities.
    unprivileged: bool,
}

impl Default for Opts {
    fn default() -> Opts {
        Opts {
            allow: &["10.9.0.0/24", "fd00:9::/64"],
            handshake_timeout_ms: 1000,
            max_handshakes: 64,
            max_handshakes_per_source: 64,
            client_max_connections: None,
            hosts: None,
            unprivileged: false,
        }
    }
}

/// Three namespaces, keys, the origin and a running relay (the client is
/// started on demand). Fields drop in order: processes first, then the
/// origin, the namespaces, the files.
struct Lab {
    relay: Proc,
    client: Option<Proc>,
    origin: Origin,
    c: Netns,
    /// Kept for their Drop: the namespaces live as long as the lab.
    #[allow(dead_code)]
    r: Netns,
    #[allow(dead_code)]
    o: Netns,
    relay_pub: PublicKey,
    client_key: PathBuf,
    relay_sock: PathBuf,
    client_sock: PathBuf,
    dir: TempDir,
    unprivileged: bool,
}

/// The user the unprivileged test runs the relay as.
const NOBODY: u32 = 65534;

/// `braid ARGS... CONFIG` in `ns` as nobody, with every capability dropped
/// (none in the bounding, inheritable or ambient sets) and no way to gain
/// one (no_new_privs).
fn unprivileged(ns: &Netns, args: &[&str], config: &Path) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name, "setpriv"])
        .args([
            &format!("--reuid={NOBODY}"),
            &format!("--regid={NOBODY}"),
            "--clear-groups",
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--bounding-set=-all",
            "--no-new-privs",
            BRAID,
        ])
        .args(args)
        .arg(config);
    cmd
}

impl Lab {
    fn new(tag: &str, opts: Opts) -> Lab {
        let dir = TempDir::new(tag);
        let c = Netns::new(&format!("{tag}c"));
        let r = Netns::new(&format!("{tag}r"));
        let o = Netns::new(&format!("{tag}o"));
        for (k, net) in [(0, 1), (1, 2)] {
            let rn = &r.name;
            ip(
                &c,
                &format!("link add c{k} type veth peer name r{k} netns {rn}"),
            );
            ip(&c, &format!("addr add 10.0.{net}.1/24 dev c{k}"));
            ip(&r, &format!("addr add 10.0.{net}.2/24 dev r{k}"));
            ip(&c, &format!("link set c{k} up"));
            ip(&r, &format!("link set r{k} up"));
        }
        let on = &o.name;
        ip(
            &r,
            &format!("link add r2 type veth peer name o0 netns {on}"),
        );
        ip(&r, "addr add 10.9.0.1/24 dev r2");
        ip(&r, "addr add fd00:9::1/64 dev r2 nodad");
        ip(&o, "addr add 10.9.0.2/24 dev o0");
        ip(&o, "addr add fd00:9::2/64 dev o0 nodad");
        ip(&r, "link set r2 up");
        ip(&o, "link set o0 up");
        // The origin knows nothing of MPTCP.
        o.sysctl("net.mptcp.enabled", "0");
        // The client's second path: its own table for its own source, and
        // an MPTCP endpoint that opens a subflow from it.
        ip(&c, "rule add from 10.0.2.1 table 102");
        ip(&c, "route add 10.0.1.0/24 via 10.0.2.2 dev c1 table 102");
        ip(&c, "mptcp limits set subflows 2 add_addr_accepted 2");
        ip(&c, "mptcp endpoint add 10.0.2.1 dev c1 subflow");
        ip(&r, "mptcp limits set subflows 2 add_addr_accepted 2");

        let (relay_key, relay_pub) = keygen(&dir, "relay.key");
        let (client_key, client_pub) = keygen(&dir, "client.key");
        let origin = Origin::start(&o, &[origin_v4(), origin_v6()]);

        let relay_sock = dir.path("relay.sock");
        let client_sock = dir.path("client.sock");
        let allow: Vec<String> = opts.allow.iter().map(|a| format!("\"{a}\"")).collect();
        let client_limit = opts
            .client_max_connections
            .map(|m| format!("max_connections = {m}\n"))
            .unwrap_or_default();
        let cfg = format!(
            "[relay.server]\n\
             listen = [\"0.0.0.0:{RELAY_PORT}\"]\n\
             key_file = \"{}\"\n\
             handshake_timeout_ms = {}\n\
             max_handshakes = {}\n\
             max_handshakes_per_source = {}\n\
             connect_timeout_ms = 3000\n\
             control_socket = \"{}\"\n\
             \n\
             [[relay.server.client]]\n\
             name = \"laptop\"\n\
             public_key = \"{client_pub}\"\n\
             {client_limit}\
             \n\
             [relay.server.destinations]\n\
             allow = [{}]\n",
            relay_key.display(),
            opts.handshake_timeout_ms,
            opts.max_handshakes,
            opts.max_handshakes_per_source,
            relay_sock.display(),
            allow.join(", "),
        );
        let cfg_path = dir.path("relay.toml");
        std::fs::write(&cfg_path, cfg).unwrap();
        if opts.unprivileged {
            // nobody owns the keys and the directory its sockets go in.
            for p in [&dir.0, &relay_key, &client_key] {
                std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        let mut cmd = match opts.hosts {
            None if opts.unprivileged => unprivileged(&r, &["relay", "serve", "-c"], &cfg_path),
            None => {
                let mut cmd = Command::new(BRAID);
                cmd.args(["-n", &r.name, "relay", "serve", "-c"])
                    .arg(&cfg_path);
                cmd
            }
            Some(hosts) => {
                // The relay resolves names with getaddrinfo: give it its own
                // /etc/hosts in a private mount namespace; the host's is
                // never touched.
                let hosts_path = dir.path("hosts");
                std::fs::write(&hosts_path, hosts).unwrap();
                let mut cmd = Command::new("ip");
                cmd.args([
                    "netns",
                    "exec",
                    &r.name,
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    &format!(
                        "mount --bind '{}' /etc/hosts && exec '{BRAID}' relay serve -c '{}'",
                        hosts_path.display(),
                        cfg_path.display()
                    ),
                ]);
                cmd
            }
        };
        let mut relay = Proc::spawn("braid relay serve", &mut cmd, dir.path("relay.log"));
        let st = relay.wait_ready(&relay_sock);
        assert_eq!(st["role"], "server");
        assert_eq!(st["public_key"], relay_pub.to_text());
        assert_eq!(st["transports"][0], "mptcp", "the relay listens with MPTCP");
        Lab {
            relay,
            client: None,
            origin,
            c,
            r,
            o,
            relay_pub,
            client_key,
            relay_sock,
            client_sock,
            dir,
            unprivileged: opts.unprivileged,
        }
    }

    /// `braid relay connect -c FILE` in `c`.
    fn start_client(&mut self) {
        let cfg = format!(
            "[relay.client]\n\
             relay = \"{}\"\n\
             relay_public_key = \"{}\"\n\
             key_file = \"{}\"\n\
             socks = \"{SOCKS}\"\n\
             http = \"{HTTP}\"\n\
             connect_timeout_ms = 3000\n\
             control_socket = \"{}\"\n",
            relay_addr(),
            self.relay_pub,
            self.client_key.display(),
            self.client_sock.display(),
        );
        let path = self.dir.path("client.toml");
        std::fs::write(&path, cfg).unwrap();
        let mut cmd = if self.unprivileged {
            unprivileged(&self.c, &["relay", "connect", "-c"], &path)
        } else {
            let mut cmd = Command::new(BRAID);
            cmd.args(["-n", &self.c.name, "relay", "connect", "-c"])
                .arg(&path);
            cmd
        };
        let mut p = Proc::spawn("braid relay connect", &mut cmd, self.dir.path("client.log"));
        let st = p.wait_ready(&self.client_sock);
        assert_eq!(st["role"], "client");
        self.client = Some(p);
    }

    fn relay_status(&self) -> Value {
        status(&self.relay_sock)
    }

    fn client_status(&self) -> Value {
        status(&self.client_sock)
    }

    fn socks(&self, target: Target, port: u16) -> Result<TcpStream, u8> {
        self.c.run(move || socks_connect(&target, port))
    }

    fn client_private_key(&self) -> PrivateKey {
        PrivateKey::load(&self.client_key).unwrap()
    }

    /// Both processes still run (a panic or crash in them fails the test).
    fn assert_alive(&mut self) {
        self.relay.assert_alive();
        if let Some(c) = &mut self.client {
            c.assert_alive();
        }
        for p in [Some(&self.relay), self.client.as_ref()]
            .into_iter()
            .flatten()
        {
            assert!(!p.log().contains("panicked"), "{}:\n{}", p.name, p.log());
        }
    }
}

fn path_has(paths: &Value, side: &str, addr: &str) -> bool {
    paths
        .as_array()
        .is_some_and(|v| v.iter().any(|p| p[side] == addr))
}

fn path_bytes(paths: &Value, side: &str, addr: &str) -> u64 {
    paths
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p[side] == addr)
        .map(|p| p["bytes_sent"].as_u64().unwrap_or(0) + p["bytes_received"].as_u64().unwrap_or(0))
        .sum()
}

// ----------------------------------------------------------------- tests

#[test]
fn relays_verified_bytes_both_ways_over_mptcp_to_a_tcp_only_origin() {
    const BYTES: usize = 8 << 20;
    let mut lab = Lab::new("rl1", Opts::default());
    lab.start_client();

    let s = lab
        .socks(Target::V4(ORIGIN_V4), ORIGIN_PORT)
        .expect("SOCKS reply code 0 for the origin");
    let (gate_tx, gate_rx) = mpsc::channel();
    let ex = std::thread::spawn(move || exchange(s, BYTES, BYTES, Some(gate_rx)));
    // The bulk goes once the tunnel has its second subflow, from c1.
    let mut seen = Value::Null;
    let two_paths = wait_for(10, || {
        seen = lab.client_status();
        seen["paths"].as_array().is_some_and(|v| {
            v.iter()
                .any(|p| p["local"] == "10.0.2.1" && p["subflows"].as_u64() >= Some(1))
        })
    });
    let _ = gate_tx.send(());
    let ex = ex.join().unwrap();
    assert!(
        two_paths,
        "the tunnel never had a subflow from 10.0.2.1: {seen:#}"
    );
    assert_exchange(&ex, BYTES);

    // The origin saw one plain TCP connection from the relay, every byte
    // in order, then the client's end of stream.
    let conns = lab.origin.wait_conns(1);
    assert_eq!(lab.origin.accepted(), 1);
    let oc = &conns[0];
    assert_eq!(oc.peer.ip(), IpAddr::from([10, 9, 0, 1]), "{oc:?}");
    assert_eq!(
        (oc.up, oc.received, oc.bad),
        (BYTES as u64, BYTES as u64, 0)
    );
    assert!(oc.eof && oc.error.is_none(), "{oc:?}");

    // Both sides count the connection as MPTCP, every byte, and both paths.
    let relayed = BYTES as u64 + 16;
    let mut rs = Value::Null;
    let settled = wait_for(5, || {
        rs = lab.relay_status();
        rs["streams"]["active"] == 0
    });
    assert!(settled, "the relay still counts an open connection: {rs:#}");
    assert!(rs["over_mptcp"].as_u64() >= Some(1), "{rs:#}");
    assert_eq!(rs["over_tcp"], 0, "{rs:#}");
    assert_eq!(rs["streams"]["total"], 1, "{rs:#}");
    assert_eq!(rs["streams"]["bytes_up"], relayed, "{rs:#}");
    assert_eq!(rs["streams"]["bytes_down"], relayed, "{rs:#}");
    assert_eq!(rs["clients"][0]["name"], "laptop");
    assert_eq!(rs["clients"][0]["total"], 1, "{rs:#}");
    for remote in ["10.0.1.1", "10.0.2.1"] {
        assert!(
            path_has(&rs["paths"], "remote", remote),
            "relay paths lack {remote}: {rs:#}"
        );
    }
    let cs = lab.client_status();
    assert!(cs["over_mptcp"].as_u64() >= Some(1), "{cs:#}");
    assert_eq!(cs["streams"]["bytes_up"], relayed, "{cs:#}");
    assert_eq!(cs["streams"]["bytes_down"], relayed, "{cs:#}");
    assert!(cs["failures"].as_object().unwrap().is_empty(), "{cs:#}");
    for local in ["10.0.1.1", "10.0.2.1"] {
        assert!(
            path_bytes(&cs["paths"], "local", local) > 0,
            "the client's path from {local} carried nothing: {cs:#}"
        );
    }
    let all = path_bytes(&cs["paths"], "local", "10.0.1.1")
        + path_bytes(&cs["paths"], "local", "10.0.2.1");
    assert!(all >= 2 * BYTES as u64, "paths carried {all} bytes: {cs:#}");
    lab.assert_alive();
}

#[test]
fn socks_domain_names_and_http_connect() {
    let mut lab = Lab::new(
        "rl2",
        Opts {
            hosts: Some(
                "127.0.0.1 localhost\n::1 localhost\n\
                 10.9.0.2 origin.braid-test\n\
                 127.0.0.1 sneaky.braid-test\n",
            ),
            ..Opts::default()
        },
    );
    lab.start_client();
    let mut ok = 0;

    // A name the relay resolves (its own hosts file) to the origin.
    let s = lab
        .socks(Target::Name("origin.braid-test"), ORIGIN_PORT)
        .expect("SOCKS by name");
    assert_exchange(&exchange(s, 100_000, 50_000, None), 100_000);
    ok += 1;
    // An IPv6 literal.
    let s = lab
        .socks(Target::V6(ORIGIN_V6), ORIGIN_PORT)
        .expect("SOCKS to an IPv6 literal");
    assert_exchange(&exchange(s, 70_000, 90_000, None), 70_000);
    ok += 1;
    // Names resolving to loopback are refused: not allowed (2).
    for name in ["localhost", "sneaky.braid-test"] {
        assert_eq!(
            lab.socks(Target::Name(name), ORIGIN_PORT).err(),
            Some(2),
            "{name} resolves to loopback"
        );
    }
    // A name that does not resolve: host unreachable (4).
    assert_eq!(
        lab.socks(Target::Name("nosuch.invalid"), ORIGIN_PORT).err(),
        Some(4)
    );

    // HTTP CONNECT by address, by name, to IPv6.
    for target in [
        format!("{}", origin_v4()),
        format!("origin.braid-test:{ORIGIN_PORT}"),
        format!("[{ORIGIN_V6}]:{ORIGIN_PORT}"),
    ] {
        let t = target.clone();
        let (head, s) = lab.c.run(move || http_connect(&t));
        assert!(head.starts_with("HTTP/1.1 200"), "CONNECT {target}: {head}");
        assert_exchange(&exchange(s, 30_000, 40_000, None), 30_000);
        ok += 1;
    }
    let (head, _) = lab
        .c
        .run(|| http_connect(&format!("localhost:{ORIGIN_PORT}")));
    assert!(
        head.starts_with("HTTP/1.1 403"),
        "CONNECT localhost: {head}"
    );

    let conns = lab.origin.wait_conns(ok);
    assert_eq!(
        lab.origin.accepted(),
        ok,
        "only allowed destinations reached"
    );
    for c in &conns {
        assert!(c.eof && c.bad == 0 && c.error.is_none(), "{c:?}");
        let from_relay = match c.peer.ip() {
            IpAddr::V4(a) => a == Ipv4Addr::new(10, 9, 0, 1),
            IpAddr::V6(a) => a == "fd00:9::1".parse::<Ipv6Addr>().unwrap(),
        };
        assert!(from_relay, "{c:?}");
    }
    assert_eq!(
        conns.iter().filter(|c| c.peer.is_ipv6()).count(),
        2,
        "{conns:?}"
    );
    let rs = lab.relay_status();
    assert_eq!(count(&rs, "refused", "destination_refused"), 3, "{rs:#}");
    assert_eq!(count(&rs, "refused", "connect_failed"), 1, "{rs:#}");
    assert_eq!(rs["streams"]["total"], ok as u64, "{rs:#}");
    let cs = lab.client_status();
    assert_eq!(count(&cs, "failures", "destination_refused"), 3, "{cs:#}");
    let last = cs["last_failure"].as_str().unwrap_or_default();
    assert!(last.contains("localhost"), "{cs:#}");
    lab.assert_alive();
}

#[test]
fn refusals_are_silent_and_bounded() {
    const TIMEOUT_MS: u64 = 700;
    let mut lab = Lab::new(
        "rl3",
        Opts {
            handshake_timeout_ms: TIMEOUT_MS,
            ..Opts::default()
        },
    );
    let client = lab.client_private_key();
    let stranger = PrivateKey::generate().unwrap();
    let wrong_relay = PrivateKey::generate().unwrap().public();
    let ts = now_ms();
    let (_, unknown_key) = first_message(&stranger, &lab.relay_pub, ts, origin_v4(), b"");
    let (_, wrong_key) = first_message(&client, &wrong_relay, ts, origin_v4(), b"");
    let mut framed_random = wire::length_prefix(998).to_vec();
    framed_random.extend_from_slice(&random_bytes(3, 998));
    let mut short = wire::length_prefix(16).to_vec();
    short.extend_from_slice(&random_bytes(4, 16));
    let probes: Vec<(&str, Vec<u8>)> = vec![
        ("silent peer", Vec::new()),
        (
            "HTTP request",
            b"GET / HTTP/1.1\r\nHost: relay\r\n\r\n".to_vec(),
        ),
        ("random bytes framed as a message", framed_random),
        ("a message shorter than any valid one", short),
        ("a valid first message from an unknown key", unknown_key),
        ("a first message for another relay key", wrong_key),
    ];
    let limit = Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(2);
    let handles: Vec<_> = probes
        .into_iter()
        .map(|(what, bytes)| (what, lab.c.spawn(move || probe(&bytes, limit))))
        .collect();
    for (what, h) in handles {
        let s = h.join().unwrap();
        assert_silent(what, &s, TIMEOUT_MS);
    }

    let mut rs = Value::Null;
    let settled = wait_for(5, || {
        rs = lab.relay_status();
        rs["handshakes_in_progress"] == 0
    });
    assert!(settled, "handshakes still counted: {rs:#}");
    assert_eq!(count(&rs, "refused", "handshake_timeout"), 2, "{rs:#}");
    assert_eq!(count(&rs, "refused", "bad_handshake"), 3, "{rs:#}");
    assert_eq!(count(&rs, "refused", "unknown_key"), 1, "{rs:#}");
    assert_eq!(rs["refused"].as_object().unwrap().len(), 3, "{rs:#}");
    assert_eq!(rs["streams"]["total"], 0, "{rs:#}");
    assert_eq!(lab.origin.accepted(), 0);
    lab.assert_alive();
}

#[test]
fn replayed_first_message_is_refused() {
    const TIMEOUT_MS: u64 = 700;
    let mut lab = Lab::new(
        "rl4",
        Opts {
            handshake_timeout_ms: TIMEOUT_MS,
            ..Opts::default()
        },
    );
    let key = lab.client_private_key();
    // The request carries the origin's header as early data: the origin
    // answers 16 bytes, then waits for our end of stream.
    let (initiator, first) =
        first_message(&key, &lab.relay_pub, now_ms(), origin_v4(), &header(0, 16));
    let replay = first.clone();
    let (reply, got, trailer, eof) = lab.c.run(move || {
        let s = TcpStream::connect(relay_addr()).unwrap();
        let (reply, mut t) = RawTunnel::open(s, initiator, &first);
        let mut got = Vec::new();
        while got.len() < 16 {
            match t.recv() {
                Some((FrameKind::Data, d)) => got.extend_from_slice(&d),
                other => panic!("expected the origin's bytes, got {other:?}"),
            }
        }
        t.send(FrameKind::End, &[]);
        let trailer = t.recv_to_end();
        let eof = t.recv().is_none();
        (reply, got, trailer, eof)
    });
    assert_eq!(reply.status, Status::Connected, "{reply:?}");
    assert_eq!(got, pattern(SEED_DOWN, 16));
    assert_eq!(trailer.len(), 16, "{trailer:?}");
    assert_eq!(split16(&trailer[..].try_into().unwrap()), (0, 0));
    assert!(eof, "the relay closes after its end-of-stream frame");
    lab.origin.wait_conns(1);
    assert_eq!(lab.origin.accepted(), 1);

    // The very same bytes again: silence, then close.
    let limit = Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(2);
    let s = lab.c.run(move || probe(&replay, limit));
    assert_silent("a replayed first message", &s, TIMEOUT_MS);
    let rs = lab.relay_status();
    assert_eq!(count(&rs, "refused", "replay"), 1, "{rs:#}");
    assert_eq!(rs["replay_memory"], 1, "{rs:#}");

    // A fresh message stamped ten minutes ago.
    let (_, old) = first_message(
        &key,
        &lab.relay_pub,
        now_ms() - 600_000,
        origin_v4(),
        &header(0, 16),
    );
    let s = lab.c.run(move || probe(&old, limit));
    assert_silent("a first message from ten minutes ago", &s, TIMEOUT_MS);
    let rs = lab.relay_status();
    assert_eq!(count(&rs, "refused", "replay"), 2, "{rs:#}");
    assert_eq!(rs["streams"]["total"], 1, "{rs:#}");
    assert_eq!(
        lab.origin.accepted(),
        1,
        "a replay must not reach the origin"
    );
    lab.assert_alive();
}

fn fd_count(pid: u64) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("the relay's /proc entry")
        .count()
}

#[test]
fn stalled_handshakes_do_not_lock_out_clients() {
    const TIMEOUT_MS: u64 = 1000;
    const STALLED: usize = 200;
    const MAX_HANDSHAKES: usize = 100;
    let mut lab = Lab::new(
        "rl5",
        Opts {
            handshake_timeout_ms: TIMEOUT_MS,
            max_handshakes: MAX_HANDSHAKES as u32,
            // All from one address: only the global bound is tested here
            // (the per-source one is a unit test of limits::Handshakes).
            max_handshakes_per_source: 1000,
            ..Opts::default()
        },
    );
    lab.start_client();
    let pid = lab.relay_status()["pid"].as_u64().unwrap();
    // The relay's descriptors at rest (two equal readings in a row: the
    // status requests' own sockets are closed).
    let mut baseline = fd_count(pid);
    assert!(wait_for(5, || {
        std::thread::sleep(Duration::from_millis(100));
        let now = fd_count(pid);
        let same = now == baseline;
        baseline = now;
        same
    }));

    // Each with the moment it was established: the relay's deadline runs
    // from (no earlier than) then.
    let stalled: Vec<(TcpStream, Instant)> = lab.c.run(|| {
        (0..STALLED)
            .map(|_| {
                let s = TcpStream::connect_timeout(&relay_addr(), Duration::from_secs(5))
                    .expect("connect to the relay");
                (s, Instant::now())
            })
            .collect()
    });
    let t0 = Instant::now();
    for (s, _) in &stalled {
        s.set_nonblocking(true).unwrap();
    }
    // Meanwhile a real program keeps trying through the client.
    let legit = lab.c.spawn(move || {
        let deadline = t0 + Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(3);
        let mut attempts = 0;
        while Instant::now() < deadline {
            attempts += 1;
            match socks_connect(&Target::V4(ORIGIN_V4), ORIGIN_PORT) {
                Ok(s) => return Some((t0.elapsed(), attempts, exchange(s, 5000, 5000, None))),
                Err(code) => assert_eq!(code, 1, "only 'general failure' while stalled"),
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    });
    // Watch every stalled connection until the relay closes it: none may
    // outlive its deadline by more than 2 s.
    let mut closed: Vec<Option<Duration>> = vec![None; STALLED];
    let mut peak = 0;
    let limit = Duration::from_millis(TIMEOUT_MS) + Duration::from_secs(2);
    let mut buf = [0u8; 64];
    while closed.iter().any(Option::is_none) && t0.elapsed() < limit {
        peak = peak.max(fd_count(pid));
        for (i, (s, opened)) in stalled.iter().enumerate() {
            if closed[i].is_some() {
                continue;
            }
            match (&*s).read(&mut buf) {
                Ok(0) => closed[i] = Some(opened.elapsed()),
                Ok(n) => panic!("a stalled connection heard {n} bytes"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    closed[i] = Some(opened.elapsed())
                }
                Err(e) => panic!("stalled read: {e}"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let open = closed.iter().filter(|c| c.is_none()).count();
    assert_eq!(
        open, 0,
        "{open} stalled connections still open after {limit:?}"
    );
    let latest = closed.iter().flatten().max().unwrap();
    assert!(
        *latest <= limit,
        "a stalled connection was closed {latest:?} after it opened"
    );
    let at_once = closed
        .iter()
        .filter(|c| c.unwrap() < Duration::from_millis(TIMEOUT_MS / 2))
        .count();
    let at_deadline = closed
        .iter()
        .filter(|c| c.unwrap() >= Duration::from_millis(TIMEOUT_MS * 8 / 10))
        .count();
    // Each newcomer over max_handshakes closes the oldest: the first 100
    // go at once, the last ones at their deadline (one fewer when the real
    // client's handshake made room too).
    assert!(
        (STALLED - MAX_HANDSHAKES..=STALLED - MAX_HANDSHAKES + 1).contains(&at_once)
            && at_once + at_deadline == STALLED,
        "oldest closed to make room, the rest at the deadline: {at_once} at once, {at_deadline} at the deadline: {closed:?}"
    );
    assert!(
        peak >= baseline + MAX_HANDSHAKES / 2,
        "the relay held the stalled connections (fds {baseline} -> peak {peak})"
    );

    let (when, attempts, ex) = legit
        .join()
        .unwrap()
        .expect("the real client never got through");
    assert_exchange(&ex, 5000);
    // The stalled peers cannot keep it out: it gets through at its first
    // attempt, long before they time out.
    assert!(
        attempts == 1 && when < Duration::from_millis(TIMEOUT_MS),
        "the real client got through only after {when:?} ({attempts} attempts)"
    );
    drop(stalled);

    let mut rs = Value::Null;
    let mut fds = 0;
    let back = wait_for(10, || {
        rs = lab.relay_status();
        fds = fd_count(pid);
        rs["handshakes_in_progress"] == 0 && rs["streams"]["active"] == 0 && fds <= baseline
    });
    assert!(
        back,
        "the relay's descriptors did not return to {baseline} (now {fds}): {rs:#}"
    );
    let timed_out = count(&rs, "refused", "handshake_timeout");
    assert!(
        (MAX_HANDSHAKES as u64 - 1..=MAX_HANDSHAKES as u64).contains(&timed_out),
        "{rs:#}"
    );
    assert!(
        count(&rs, "refused", "too_many_handshakes") >= (STALLED - MAX_HANDSHAKES) as u64,
        "{rs:#}"
    );
    assert_eq!(rs["streams"]["total"], 1, "{rs:#}");
    lab.assert_alive();
}

#[test]
fn private_destinations_and_limits() {
    let mut lab = Lab::new(
        "rl6",
        Opts {
            allow: &["10.9.0.0/24"],
            client_max_connections: Some(1),
            ..Opts::default()
        },
    );
    lab.start_client();
    let refused = [
        (Target::V4(Ipv4Addr::LOCALHOST), ORIGIN_PORT),
        (Target::V4(Ipv4Addr::new(10, 8, 0, 1)), ORIGIN_PORT),
        (Target::V4(Ipv4Addr::new(169, 254, 169, 254)), 80),
        (Target::V6(Ipv6Addr::LOCALHOST), ORIGIN_PORT),
        // Outside the allowed /64: fd00::/7 is refused by default.
        (Target::V6(ORIGIN_V6), ORIGIN_PORT),
    ];
    let n_refused = refused.len() as u64;
    for (target, port) in refused {
        let what = match &target {
            Target::V4(a) => a.to_string(),
            Target::V6(a) => a.to_string(),
            Target::Name(n) => n.to_string(),
        };
        assert_eq!(lab.socks(target, port).err(), Some(2), "{what}");
    }
    let rs = lab.relay_status();
    assert_eq!(
        count(&rs, "refused", "destination_refused"),
        n_refused,
        "{rs:#}"
    );
    let cs = lab.client_status();
    assert_eq!(
        count(&cs, "failures", "destination_refused"),
        n_refused,
        "{cs:#}"
    );
    assert_eq!(
        lab.origin.accepted(),
        0,
        "a refused destination was reached"
    );

    // One relayed connection open: the client's limit.
    let mut first = lab
        .socks(Target::V4(ORIGIN_V4), ORIGIN_PORT)
        .expect("the first connection");
    first.write_all(&header(0, 16)).unwrap();
    let mut got = [0u8; 16];
    first.read_exact(&mut got).unwrap();
    assert_eq!(got.to_vec(), pattern(SEED_DOWN, 16));
    assert_eq!(
        lab.socks(Target::V4(ORIGIN_V4), ORIGIN_PORT).err(),
        Some(1),
        "a second concurrent connection is over the client's limit"
    );
    let rs = lab.relay_status();
    assert_eq!(count(&rs, "refused", "over_limit"), 1, "{rs:#}");
    assert_eq!(rs["clients"][0]["active"], 1, "{rs:#}");
    assert_eq!(rs["clients"][0]["max_connections"], 1, "{rs:#}");
    assert_eq!(lab.origin.accepted(), 1);

    // Once it is closed, a new one goes through.
    first.shutdown(Shutdown::Write).unwrap();
    let mut trailer = [0u8; 16];
    first.read_exact(&mut trailer).unwrap();
    assert_eq!(split16(&trailer), (0, 0));
    assert_eq!(first.read(&mut [0u8; 1]).unwrap(), 0);
    drop(first);
    let mut rs = Value::Null;
    let released = wait_for(5, || {
        rs = lab.relay_status();
        rs["clients"][0]["active"] == 0
    });
    assert!(
        released,
        "the relay still counts the first connection: {rs:#}"
    );
    let next = lab
        .socks(Target::V4(ORIGIN_V4), ORIGIN_PORT)
        .expect("a new connection once the first is closed");
    assert_exchange(&exchange(next, 1000, 1000, None), 1000);
    let rs = lab.relay_status();
    assert_eq!(count(&rs, "refused", "over_limit"), 1, "{rs:#}");
    assert_eq!(rs["clients"][0]["total"], 2, "{rs:#}");
    lab.assert_alive();
}

fn assert_fails(out: &Output, expect: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for e in expect {
        assert!(err.contains(e), "stderr should mention '{e}': {err}");
    }
}

#[test]
fn bad_input_gives_clear_errors() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("rl7");
    let ns = Netns::new("rl7");
    let (relay_key, relay_pub) = keygen(&dir, "relay.key");
    let (client_key, client_pub) = keygen(&dir, "client.key");
    let serve = |cfg: &Path| {
        run_bounded(
            Command::new(BRAID)
                .args(["-n", &ns.name, "relay", "serve", "-c"])
                .arg(cfg),
            None,
            10,
        )
    };
    let server_cfg = |key: &Path, public_key: &str| {
        format!(
            "[relay.server]\n\
             listen = [\"127.0.0.1:{RELAY_PORT}\"]\n\
             key_file = \"{}\"\n\
             control_socket = \"{}\"\n\
             \n\
             [[relay.server.client]]\n\
             name = \"laptop\"\n\
             public_key = \"{public_key}\"\n",
            key.display(),
            dir.path("relay.sock").display()
        )
    };
    let cfg = dir.path("relay.toml");

    // A private key others can read.
    std::fs::set_permissions(&relay_key, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(&cfg, server_cfg(&relay_key, &client_pub.to_text())).unwrap();
    assert_fails(
        &serve(&cfg),
        &["chmod 600", &relay_key.display().to_string(), "0644"],
    );
    std::fs::set_permissions(&relay_key, std::fs::Permissions::from_mode(0o600)).unwrap();

    // A missing key file says how to make one.
    std::fs::write(
        &cfg,
        server_cfg(&dir.path("missing.key"), &client_pub.to_text()),
    )
    .unwrap();
    assert_fails(&serve(&cfg), &["braid relay keygen --out"]);

    // A malformed client key: the error names its line.
    let text = server_cfg(&relay_key, "not-a-key!");
    let line = text
        .lines()
        .position(|l| l.starts_with("public_key"))
        .unwrap()
        + 1;
    std::fs::write(&cfg, text).unwrap();
    assert_fails(
        &serve(&cfg),
        &[&format!("line {line}"), "public key", "not base64"],
    );
    // The right key, a wrong length.
    std::fs::write(&cfg, server_cfg(&relay_key, "c2hvcnQ=")).unwrap();
    assert_fails(&serve(&cfg), &[&format!("line {line}"), "is 5 bytes"]);

    // A client whose relay does not listen: the program hears "general
    // failure", the status says why.
    let client_sock = dir.path("client.sock");
    let mut client = Proc::spawn(
        "braid relay connect",
        Command::new(BRAID)
            .args(["-n", &ns.name, "relay", "connect", "--relay", "127.0.0.1:9"])
            .args(["--relay-key", &relay_pub.to_text(), "--key"])
            .arg(&client_key)
            .args(["--socks", SOCKS, "--http", "off", "--control-socket"])
            .arg(&client_sock),
        dir.path("client.log"),
    );
    client.wait_ready(&client_sock);
    let code = ns.run(|| socks_connect(&Target::V4(ORIGIN_V4), ORIGIN_PORT).err());
    assert_eq!(code, Some(1), "SOCKS general failure");
    let cs = status(&client_sock);
    assert!(count(&cs, "failures", "relay_unreachable") >= 1, "{cs:#}");
    let last = cs["last_failure"].as_str().unwrap_or_default();
    assert!(
        last.contains("relay") && last.contains("127.0.0.1:9"),
        "last_failure should name the relay: {cs:#}"
    );
    client.assert_alive();
    assert!(!client.log().contains("panicked"), "{}", client.log());
    drop(client);

    // Keys on standard input.
    for garbage in [&b"this is not a key\n"[..], b"", b"c2hvcnQ=\n"] {
        let out = run_bounded(
            Command::new(BRAID).args(["relay", "pubkey"]),
            Some(garbage),
            10,
        );
        assert_fails(&out, &["private key"]);
    }
    let good = std::fs::read(&client_key).unwrap();
    let out = run_bounded(
        Command::new(BRAID).args(["relay", "pubkey"]),
        Some(&good),
        10,
    );
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        client_pub.to_text()
    );

    // Keys are never overwritten; a status socket nobody serves is named.
    assert_fails(
        &run_bounded(
            Command::new(BRAID)
                .args(["relay", "keygen", "--out"])
                .arg(&relay_key),
            None,
            10,
        ),
        &["never overwritten"],
    );
    assert_eq!(
        PrivateKey::load(&relay_key).unwrap().public(),
        relay_pub,
        "the key is intact"
    );
    assert_fails(
        &run_bounded(
            Command::new(BRAID)
                .args(["relay", "status", "--socket"])
                .arg(dir.path("nobody.sock")),
            None,
            10,
        ),
        &["nothing answers"],
    );
}

#[test]
fn relay_and_client_need_no_privilege() {
    // As the systemd units run them: another user, no capability at all.
    let mut lab = Lab::new(
        "rl8",
        Opts {
            unprivileged: true,
            ..Opts::default()
        },
    );
    lab.start_client();
    for st in [lab.relay_status(), lab.client_status()] {
        let pid = st["pid"].as_u64().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" "))
                .unwrap()
        };
        assert!(field("Uid:").starts_with("65534"), "{}", field("Uid:"));
        for caps in ["CapEff:", "CapPrm:", "CapBnd:", "CapAmb:"] {
            assert_eq!(field(caps), "0000000000000000", "{caps}");
        }
    }
    let s = lab
        .socks(Target::V4(ORIGIN_V4), ORIGIN_PORT)
        .expect("SOCKS reply code 0 for the origin");
    let ex = exchange(s, 1 << 20, 1 << 20, None);
    assert_exchange(&ex, 1 << 20);
    let st = lab.client_status();
    assert!(st["over_mptcp"].as_u64().unwrap() >= 1, "{st:#}");
    // The per-path view works without privilege too.
    assert!(!lab.relay_status()["paths"].as_array().unwrap().is_empty());
    lab.assert_alive();
}

#[test]
fn socks_udp_associate_through_the_relay() {
    let mut lab = Lab::new("rl9", Opts::default());
    lab.start_client();
    // A UDP echo in the origin: each datagram back, prefixed with the
    // sender's address as the origin saw it.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let (tx, rx) = mpsc::channel();
    let echo = lab.o.spawn(move || {
        let s = std::net::UdpSocket::bind(SocketAddr::from((ORIGIN_V4, 5353))).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !st.load(Ordering::SeqCst) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut out = format!("{from} |").into_bytes();
                out.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&out, from);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let result = lab.c.run(|| -> Result<Vec<String>, String> {
        let e = |e: std::io::Error| e.to_string();
        let mut control = TcpStream::connect(SOCKS).map_err(e)?;
        control.write_all(&[5, 1, 0]).map_err(e)?;
        let mut choice = [0u8; 2];
        control.read_exact(&mut choice).map_err(e)?;
        control
            .write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0])
            .map_err(e)?;
        let mut reply = [0u8; 10];
        control.read_exact(&mut reply).map_err(e)?;
        if reply[1] != 0 || reply[3] != 1 {
            return Err(format!("UDP ASSOCIATE refused: {reply:?}"));
        }
        let bound = SocketAddr::from((
            [reply[4], reply[5], reply[6], reply[7]],
            u16::from_be_bytes([reply[8], reply[9]]),
        ));
        let u = std::net::UdpSocket::bind("127.0.0.1:0").map_err(e)?;
        u.set_read_timeout(Some(Duration::from_secs(5)))
            .map_err(e)?;
        let mut got = Vec::new();
        for i in 0..3 {
            let mut d = vec![0, 0, 0, 1, 10, 9, 0, 2];
            d.extend_from_slice(&5353u16.to_be_bytes());
            d.extend_from_slice(format!("datagram {i}").as_bytes());
            u.send_to(&d, bound).map_err(e)?;
            let mut buf = [0u8; 2048];
            let (n, _) = u.recv_from(&mut buf).map_err(e)?;
            // Header: RSV RSV FRAG, then the source (the origin), then data.
            if buf[..10] != [0, 0, 0, 1, 10, 9, 0, 2, 0x14, 0xe9] {
                return Err(format!("unexpected header {:?}", &buf[..10]));
            }
            got.push(String::from_utf8_lossy(&buf[10..n]).into_owned());
        }
        drop(control);
        Ok(got)
    });
    stop.store(true, Ordering::SeqCst);
    let _ = echo.join();
    let got = result.expect("UDP through the relay");
    for (i, text) in got.iter().enumerate() {
        assert!(
            text.starts_with("10.9.0.1:") && text.ends_with(&format!("|datagram {i}")),
            "answer {i}: {text}"
        );
    }
    let st = lab.relay_status();
    assert!(st["streams"]["total"].as_u64().unwrap() >= 1, "{st:#}");
    lab.assert_alive();
}
