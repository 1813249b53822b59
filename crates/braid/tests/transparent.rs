//! Transparent mode of `braid relay connect` against the real kernel:
//! programs that know nothing of the relay (a plain `connect`, curl, a UDP
//! DNS query) are carried through it by the client's nftables rules. Each
//! test builds its own namespaces:
//!
//! ```text
//!  c (client)          r (relay)                        o (origin, no MPTCP)
//!  c0 10.0.1.1 ------- r0 10.0.1.2
//!  c1 10.0.2.1 ------- r1 10.0.2.2
//!                      r2 10.9.0.1 -------------------- o0 10.9.0.2
//!                      lo 10.8.0.1/32
//! ```
//!
//! c's default route goes through r (10.0.1.2), so without the rules a
//! connection to the origin would leave c0 directly; 10.8.0.1 is reachable
//! both directly (r's own address) and through the relay, and a server
//! there reports each connection's peer: r's own address when it came
//! through the relay, c's (10.0.1.1) when it came directly. The relay
//! listens on 10.0.1.2:7000; c1 is an MPTCP `subflow` endpoint. DNS queries
//! go to 198.18.0.53:53, an address nobody has: only the client's rules
//! can answer them (through the relay's resolver, a DNS-over-TCP responder
//! in o). A raw AF_PACKET socket in c sees every packet on c's interfaces.
//!
//! Processes, threads, namespaces, cgroups and files are removed on every
//! path out of a test (Drop guards).

mod common;
#[path = "common/relay_kit.rs"]
mod relay_kit;
use relay_kit::{
    assert_exchange, exchange, header, keygen, pattern, run_bounded, status, try_status,
    wait_output, Origin, Piped, Proc, Service, TempDir, IO_TIMEOUT,
};

use common::{unique, wait_for, Netns, BRAID};

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;

const RELAY_PORT: u16 = 7000;
const ORIGIN: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 2);
const ORIGIN_PORT: u16 = 8080;
/// The relay's address toward the origin: where relayed connections come from.
const RELAY_SIDE: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
/// c's address on its default route: where direct connections come from.
const C0: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 1);
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 1, 2);
/// r's own address on its loopback, reachable directly and through the relay.
const BOTH: Ipv4Addr = Ipv4Addr::new(10, 8, 0, 1);
const PEER_PORT: u16 = 8081;
/// The resolver programs ask: an address nobody has.
const RESOLVER: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 53);
/// The relay's resolver (DNS over TCP), in o.
const DOT: Ipv4Addr = ORIGIN;
/// What that resolver answers.
const DNS_ANSWER: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 99);

fn relay_addr() -> SocketAddr {
    SocketAddr::from((RELAY_IP, RELAY_PORT))
}

fn origin() -> SocketAddr {
    SocketAddr::from((ORIGIN, ORIGIN_PORT))
}

fn peer_server() -> SocketAddr {
    SocketAddr::from((BOTH, PEER_PORT))
}

fn resolver() -> SocketAddr {
    SocketAddr::from((RESOLVER, 53))
}

/// The system's own python (a pyenv shim under /root would not run as
/// nobody).
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A transparent-mode counter of a client's status.
fn tcount(st: &Value, key: &str) -> u64 {
    st["transparent"][key].as_u64().unwrap_or(0)
}

/// The transparent rules are all in the kernel, as installed.
fn rules_settled(st: &Value) -> bool {
    let t = &st["transparent"];
    t["rules_installed"].as_u64().unwrap_or(0) > 0 && t["rules_in_kernel"] == t["rules_installed"]
}

/// `ip -n NS ARGS` with the arguments in one string.
fn ip(ns: &Netns, args: &str) {
    ns.ip(&args.split_whitespace().collect::<Vec<_>>());
}

/// `nft list ruleset` in a namespace, if nft is installed.
fn nft_ruleset(ns: &Netns) -> Option<String> {
    let out = Command::new("ip")
        .args(["netns", "exec", &ns.name, "nft", "list", "ruleset"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Every nftables table of the namespace (family, name).
fn nft_tables(ns: &Netns) -> Vec<(u8, String)> {
    let mut t = ns.run(|| braid_kernel::nft::tables().expect("listing the nftables tables"));
    t.sort();
    t
}

fn braid_table_present(ns: &Netns) -> bool {
    ns.run(|| {
        braid_kernel::nft::list("braid")
            .expect("listing table inet braid")
            .is_some()
    })
}

// -------------------------------------------------------------- services

/// A UDP echo thread in a namespace: each datagram comes back prefixed with
/// the sender's address as the server saw it ("10.9.0.1:40000 |"), until
/// `stop` is set.
fn udp_echo(ns: &Netns, addr: SocketAddr, stop: Arc<AtomicBool>) -> JoinHandle<()> {
    let (tx, rx) = mpsc::channel();
    let t = ns.spawn(move || {
        let s = UdpSocket::bind(addr).expect("binding the UDP echo");
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        tx.send(()).unwrap();
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::SeqCst) {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                let mut out = format!("{from} |").into_bytes();
                out.extend_from_slice(&buf[..n]);
                let _ = s.send_to(&out, from);
            }
        }
    });
    rx.recv_timeout(Duration::from_secs(5))
        .expect("the UDP echo started");
    t
}

/// The server on 10.8.0.1:8081 in r: tells each connection its peer's
/// address, then closes.
fn start_peer_server(r: &Netns) -> Service {
    Service::start(r, peer_server(), |mut s, peer| {
        let _ = s.set_write_timeout(Some(IO_TIMEOUT));
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(peer.ip().to_string().as_bytes());
        let _ = s.shutdown(Shutdown::Write);
        // Drain whatever the peer sends until it closes (no reset).
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    })
}

/// Connect from `c` to 10.8.0.1:8081: the peer address the server saw.
fn ask_peer(c: &Netns) -> Result<IpAddr, String> {
    c.run(|| {
        let mut s = TcpStream::connect_timeout(&peer_server(), Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        text.trim()
            .parse()
            .map_err(|e| format!("the server said {text:?}: {e}"))
    })
}

/// The same from a python program, as `setpriv` runs it.
const PEER_SCRIPT: &str = "import socket, sys\n\
sys.stdin.readline()\n\
s = socket.create_connection(('10.8.0.1', 8081), timeout=10)\n\
d = b''\n\
while True:\n    b = s.recv(4096)\n    if not b:\n        break\n    d += b\n\
print(d.decode())\n";

// ------------------------------------------------------------------- DNS

fn dns_query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

/// The question's name and the end of the question section.
fn dns_question(msg: &[u8]) -> Option<(String, usize)> {
    let mut i = 12;
    let mut labels = Vec::new();
    loop {
        let l = *msg.get(i)? as usize;
        i += 1;
        if l == 0 {
            break;
        }
        labels.push(String::from_utf8_lossy(msg.get(i..i + l)?).into_owned());
        i += l;
    }
    (msg.len() >= i + 4).then(|| (labels.join("."), i + 4))
}

/// The answer to `query`: same id, QR set, its question, one A record.
fn dns_answer(query: &[u8]) -> Option<Vec<u8>> {
    let (_, end) = dns_question(query)?;
    let mut a = query[..2].to_vec();
    a.extend_from_slice(&[0x81, 0x80, 0, 1, 0, 1, 0, 0, 0, 0]);
    a.extend_from_slice(&query[12..end]);
    a.extend_from_slice(&[0xc0, 0x0c, 0, 1, 0, 1, 0, 0, 0, 60, 0, 4]);
    a.extend_from_slice(&DNS_ANSWER.octets());
    Some(a)
}

/// Check an answer to query `id`: the A record's address.
fn parse_answer(a: &[u8], id: u16) -> Result<Ipv4Addr, String> {
    if a.len() < 12 + 16 {
        return Err(format!("an answer of {} bytes", a.len()));
    }
    if u16::from_be_bytes([a[0], a[1]]) != id {
        return Err(format!("id {:02x}{:02x}, not {id:04x}", a[0], a[1]));
    }
    if a[2] & 0x80 == 0 {
        return Err("QR not set".into());
    }
    if u16::from_be_bytes([a[6], a[7]]) != 1 {
        return Err("not one answer record".into());
    }
    let n = a.len();
    Ok(Ipv4Addr::new(a[n - 4], a[n - 3], a[n - 2], a[n - 1]))
}

/// A minimal DNS-over-TCP responder (RFC 1035 4.2.2, RFC 7766) on
/// 10.9.0.2:53 in o: every A query gets DNS_ANSWER.
struct DnsResponder {
    names: Arc<Mutex<Vec<String>>>,
    _svc: Service,
}

impl DnsResponder {
    fn start(o: &Netns) -> DnsResponder {
        let names = Arc::new(Mutex::new(Vec::new()));
        let seen = names.clone();
        let svc = Service::start(o, SocketAddr::from((DOT, 53)), move |mut s, _| {
            let _ = s.set_read_timeout(Some(IO_TIMEOUT));
            loop {
                let mut len = [0u8; 2];
                if s.read_exact(&mut len).is_err() {
                    return;
                }
                let mut q = vec![0u8; u16::from_be_bytes(len) as usize];
                if s.read_exact(&mut q).is_err() {
                    return;
                }
                let Some(a) = dns_answer(&q) else { return };
                seen.lock()
                    .unwrap()
                    .push(dns_question(&q).map(|q| q.0).unwrap_or_default());
                let mut out = (a.len() as u16).to_be_bytes().to_vec();
                out.extend_from_slice(&a);
                if s.write_all(&out).is_err() {
                    return;
                }
            }
        });
        DnsResponder { names, _svc: svc }
    }

    fn names(&self) -> Vec<String> {
        self.names.lock().unwrap().clone()
    }
}

/// A UDP query to 198.18.0.53:53 from the caller's namespace: the answer
/// and where it came from.
fn udp_dns(id: u16, name: &str, wait: Duration) -> std::io::Result<(SocketAddr, Vec<u8>)> {
    let s = UdpSocket::bind("0.0.0.0:0")?;
    s.set_read_timeout(Some(wait))?;
    s.send_to(&dns_query(id, name), resolver())?;
    let mut buf = [0u8; 1500];
    let (n, from) = s.recv_from(&mut buf)?;
    Ok((from, buf[..n].to_vec()))
}

/// A DNS-over-TCP query to 198.18.0.53:53 from the caller's namespace.
fn tcp_dns(id: u16, name: &str) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect_timeout(&resolver(), Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let q = dns_query(id, name);
    let mut out = (q.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&q);
    s.write_all(&out)?;
    let mut len = [0u8; 2];
    s.read_exact(&mut len)?;
    let mut a = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut a)?;
    Ok(a)
}

// --------------------------------------------------------------- capture

const ETH_P_ALL: u16 = 0x0003;
const ARPHRD_LOOPBACK: u16 = 772;
const PACKET_OUTGOING: u8 = 4;

/// An IP packet seen on one of c's interfaces (not loopback).
#[derive(Debug, Clone)]
#[allow(dead_code)] // every field shows in failure messages
struct Packet {
    ifindex: i32,
    outgoing: bool,
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    sport: u16,
    dport: u16,
}

impl Packet {
    fn involves(&self, a: IpAddr) -> bool {
        self.src == a || self.dst == a
    }

    fn port53(&self) -> bool {
        matches!(self.proto, 6 | 17) && (self.sport == 53 || self.dport == 53)
    }
}

/// Protocol, addresses and ports of an Ethernet frame's IP packet.
fn parse_frame(f: &[u8]) -> Option<(u8, IpAddr, IpAddr, u16, u16)> {
    let ethertype = u16::from_be_bytes([*f.get(12)?, *f.get(13)?]);
    let ip = &f[14..];
    let (proto, src, dst, l4): (u8, IpAddr, IpAddr, &[u8]) = match ethertype {
        0x0800 if ip.len() >= 20 => {
            let ihl = (ip[0] & 0x0f) as usize * 4;
            let a = |o: usize| IpAddr::from([ip[o], ip[o + 1], ip[o + 2], ip[o + 3]]);
            (ip[9], a(12), a(16), ip.get(ihl..).unwrap_or(&[]))
        }
        0x86dd if ip.len() >= 40 => {
            let a = |o: usize| {
                let b: [u8; 16] = ip[o..o + 16].try_into().unwrap();
                IpAddr::from(b)
            };
            (ip[6], a(8), a(24), &ip[40..])
        }
        _ => return None,
    };
    let (sport, dport) = if matches!(proto, 6 | 17) && l4.len() >= 4 {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    } else {
        (0, 0)
    };
    Some((proto, src, dst, sport, dport))
}

/// Every IP packet on every non-loopback interface of a namespace, in
/// both directions, from an AF_PACKET socket (ETH_P_ALL) opened there.
struct Capture {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<Packet>>>,
}

impl Capture {
    fn start(ns: &Netns) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread = ns.spawn(move || {
            // SAFETY: plain socket calls on a descriptor owned here; the
            // buffers passed are valid for the lengths given.
            let fd = unsafe {
                libc::socket(
                    libc::AF_PACKET,
                    libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                    ETH_P_ALL.to_be() as libc::c_int,
                )
            };
            if fd < 0 {
                let _ = ready_tx.send(Err(std::io::Error::last_os_error().to_string()));
                return Vec::new();
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 20_000,
            };
            unsafe {
                libc::setsockopt(
                    fd,
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    &tv as *const _ as *const libc::c_void,
                    std::mem::size_of::<libc::timeval>() as libc::socklen_t,
                );
            }
            let _ = ready_tx.send(Ok(()));
            let mut packets = Vec::new();
            let mut buf = vec![0u8; 1 << 16];
            // Until told to stop, then what is still queued.
            let mut draining = false;
            loop {
                let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
                let mut len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
                let n = unsafe {
                    libc::recvfrom(
                        fd,
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        0,
                        &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                        &mut len,
                    )
                };
                if n < 0 {
                    if draining {
                        break;
                    }
                    draining = st.load(Ordering::SeqCst);
                    continue;
                }
                if sll.sll_hatype == ARPHRD_LOOPBACK {
                    continue;
                }
                if let Some((proto, src, dst, sport, dport)) = parse_frame(&buf[..n as usize]) {
                    packets.push(Packet {
                        ifindex: sll.sll_ifindex,
                        outgoing: sll.sll_pkttype == PACKET_OUTGOING,
                        proto,
                        src,
                        dst,
                        sport,
                        dport,
                    });
                }
            }
            unsafe { libc::close(fd) };
            packets
        });
        let mut cap = Capture {
            stop,
            thread: Some(thread),
        };
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => cap,
            other => {
                cap.stop.store(true, Ordering::SeqCst);
                let _ = cap.thread.take().map(|t| t.join());
                panic!("no packet capture in the namespace: {other:?}")
            }
        }
    }

    /// Stop and return what was seen.
    fn finish(mut self) -> Vec<Packet> {
        // Packets just sent are on the socket's queue by the time they
        // left: a short pause covers the capture thread's scheduling.
        std::thread::sleep(Duration::from_millis(100));
        self.stop.store(true, Ordering::SeqCst);
        self.thread.take().unwrap().join().expect("capture thread")
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ------------------------------------------------------------------- lab

struct ClientOpts {
    scope: String,
    fallback: &'static str,
    quic: &'static str,
    connect_timeout_ms: u64,
}

impl Default for ClientOpts {
    fn default() -> ClientOpts {
        ClientOpts {
            scope: "host".into(),
            fallback: "block",
            quic: "block",
            connect_timeout_ms: 3000,
        }
    }
}

/// Three namespaces, keys, the origin and a running relay (the client is
/// started on demand). Fields drop in order: processes first, then the
/// servers, the namespaces, the files.
struct Lab {
    client: Option<Proc>,
    relay: Option<Proc>,
    /// Other processes (http.server ...).
    procs: Vec<Proc>,
    services: Vec<Service>,
    origin: Origin,
    c: Netns,
    r: Netns,
    o: Netns,
    relay_pub: String,
    client_key: PathBuf,
    relay_cfg: PathBuf,
    relay_sock: PathBuf,
    client_sock: PathBuf,
    clients_started: usize,
    dir: TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
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
        ip(&o, "addr add 10.9.0.2/24 dev o0");
        ip(&r, "link set r2 up");
        ip(&o, "link set o0 up");
        ip(&r, "addr add 10.8.0.1/32 dev lo");
        o.sysctl("net.mptcp.enabled", "0");
        // Everything beyond c's subnets goes through r: without the rules a
        // connection to the origin would leave c0.
        ip(&c, "route add default via 10.0.1.2 dev c0");
        ip(&c, "rule add from 10.0.2.1 table 102");
        ip(&c, "route add 10.0.1.0/24 via 10.0.2.2 dev c1 table 102");
        ip(&c, "mptcp limits set subflows 2 add_addr_accepted 2");
        ip(&c, "mptcp endpoint add 10.0.2.1 dev c1 subflow");
        ip(&r, "mptcp limits set subflows 2 add_addr_accepted 2");

        let (relay_key, relay_pub) = keygen(&dir, "relay.key");
        let (client_key, client_pub) = keygen(&dir, "client.key");
        let origin = Origin::start(&o, &[origin()]);
        let relay_sock = dir.path("relay.sock");
        let client_sock = dir.path("client.sock");
        let relay_cfg = dir.path("relay.toml");
        std::fs::write(
            &relay_cfg,
            format!(
                "[relay.server]\n\
                 listen = [\"0.0.0.0:{RELAY_PORT}\"]\n\
                 key_file = \"{}\"\n\
                 connect_timeout_ms = 3000\n\
                 control_socket = \"{}\"\n\
                 dns = \"{DOT}:53\"\n\
                 \n\
                 [[relay.server.client]]\n\
                 name = \"laptop\"\n\
                 public_key = \"{client_pub}\"\n\
                 \n\
                 [relay.server.destinations]\n\
                 allow = [\"10.9.0.0/24\", \"10.8.0.0/24\"]\n",
                relay_key.display(),
                relay_sock.display(),
            ),
        )
        .unwrap();
        let mut lab = Lab {
            client: None,
            relay: None,
            procs: Vec::new(),
            services: Vec::new(),
            origin,
            c,
            r,
            o,
            relay_pub,
            client_key,
            relay_cfg,
            relay_sock,
            client_sock,
            clients_started: 0,
            dir,
        };
        lab.start_relay();
        lab
    }

    /// `braid relay serve` in r (again: the same key, port and socket).
    fn start_relay(&mut self) {
        assert!(self.relay.is_none());
        let mut p = Proc::spawn(
            "braid relay serve",
            Command::new(BRAID)
                .args(["-n", &self.r.name, "relay", "serve", "-c"])
                .arg(&self.relay_cfg),
            self.dir.path("relay.log"),
        );
        let ready = wait_for(10, || {
            p.assert_alive();
            try_status(&self.relay_sock).is_ok()
        });
        assert!(ready, "the relay never answered:\n{}", p.log());
        self.relay = Some(p);
    }

    /// SIGKILL the relay.
    fn kill_relay(&mut self) {
        let mut p = self.relay.take().expect("a running relay");
        p.assert_alive();
        drop(p);
    }

    fn client_config(&mut self, opts: &ClientOpts) -> PathBuf {
        self.clients_started += 1;
        let path = self
            .dir
            .path(&format!("client-{}.toml", self.clients_started));
        std::fs::write(
            &path,
            format!(
                "[relay.client]\n\
                 relay = \"{}\"\n\
                 relay_public_key = \"{}\"\n\
                 key_file = \"{}\"\n\
                 socks = \"off\"\n\
                 http = \"off\"\n\
                 connect_timeout_ms = {}\n\
                 control_socket = \"{}\"\n\
                 transparent = true\n\
                 scope = \"{}\"\n\
                 fallback = \"{}\"\n\
                 quic = \"{}\"\n\
                 dns = \"relay\"\n",
                relay_addr(),
                self.relay_pub,
                self.client_key.display(),
                opts.connect_timeout_ms,
                self.client_sock.display(),
                opts.scope,
                opts.fallback,
                opts.quic,
            ),
        )
        .unwrap();
        path
    }

    /// Start the transparent client in c and wait until its rules are in
    /// the kernel. With `cgroup2`, the client runs in a private mount
    /// namespace where that cgroup v2 mount is at /sys/fs/cgroup (where
    /// Braid looks for a cgroup scope). Err(log) if it exits.
    fn try_start_client(
        &mut self,
        opts: &ClientOpts,
        cgroup2: Option<&Path>,
    ) -> Result<(), String> {
        assert!(self.client.is_none());
        let cfg = self.client_config(opts);
        let mut cmd = match cgroup2 {
            None => {
                let mut cmd = Command::new(BRAID);
                cmd.args(["-n", &self.c.name, "relay", "connect", "-c"])
                    .arg(&cfg);
                cmd
            }
            Some(mount) => {
                let mut cmd = Command::new("unshare");
                cmd.args([
                    "--mount",
                    "--propagation",
                    "private",
                    "sh",
                    "-c",
                    "mount --bind \"$0\" /sys/fs/cgroup && exec \"$1\" -n \"$2\" relay connect -c \"$3\"",
                ])
                .arg(mount)
                .arg(BRAID)
                .arg(&self.c.name)
                .arg(&cfg);
                cmd
            }
        };
        let log = self
            .dir
            .path(&format!("client-{}.log", self.clients_started));
        let mut p = Proc::spawn("braid relay connect", &mut cmd, log);
        let mut st = Value::Null;
        let ready = wait_for(10, || {
            if p.has_exited().is_some() {
                return true;
            }
            match try_status(&self.client_sock) {
                Ok(s) => {
                    st = s;
                    rules_settled(&st)
                }
                Err(_) => false,
            }
        });
        if let Some(exit) = p.has_exited() {
            return Err(format!("the client exited ({exit}):\n{}", p.log()));
        }
        assert!(
            ready,
            "the client's rules never settled: {st:#}\n{}",
            p.log()
        );
        assert_eq!(st["role"], "client");
        assert!(braid_table_present(&self.c));
        self.client = Some(p);
        Ok(())
    }

    fn start_client(&mut self, opts: &ClientOpts) {
        if let Err(e) = self.try_start_client(opts, None) {
            panic!("{e}");
        }
    }

    /// SIGTERM the client: it exits cleanly and takes its table along.
    fn stop_client(&mut self) {
        let mut p = self.client.take().expect("a running client");
        p.signal(libc::SIGTERM);
        let exit = p.wait_exit(10);
        assert!(
            exit.is_some_and(|e| e.success()),
            "the client did not exit cleanly on SIGTERM ({exit:?}):\n{}",
            p.log()
        );
        assert!(
            !braid_table_present(&self.c),
            "table inet braid left after SIGTERM:\n{}",
            p.log()
        );
    }

    fn client_status(&mut self) -> Value {
        if let Some(p) = &mut self.client {
            p.assert_alive();
        }
        status(&self.client_sock)
    }

    /// Both processes still run and never panicked.
    fn assert_alive(&mut self) {
        for p in [self.relay.as_mut(), self.client.as_mut()]
            .into_iter()
            .flatten()
        {
            p.assert_alive();
            assert!(!p.log().contains("panicked"), "{}:\n{}", p.name, p.log());
        }
    }
}

/// How a program's connection attempt ended.
#[derive(Debug)]
#[allow(dead_code)] // the byte count shows in failure messages
enum Attempt {
    /// Failed: the error kind (refused at connect, reset after it ...).
    Failed(ErrorKind),
    /// Closed without a reset.
    Closed,
    /// The program heard bytes: something answered.
    Answered(usize),
}

/// Connect to `dst`, send a little, read: how it ended and how long it took.
fn attempt(dst: SocketAddr, wait: Duration) -> (Duration, Attempt) {
    let t0 = Instant::now();
    let mut s = match TcpStream::connect_timeout(&dst, wait) {
        Ok(s) => s,
        Err(e) => return (t0.elapsed(), Attempt::Failed(e.kind())),
    };
    s.set_read_timeout(Some(wait)).unwrap();
    if let Err(e) = s.write_all(&header(10, 10)) {
        return (t0.elapsed(), Attempt::Failed(e.kind()));
    }
    let r = match s.read(&mut [0u8; 64]) {
        Ok(0) => Attempt::Closed,
        Ok(n) => Attempt::Answered(n),
        Err(e) => Attempt::Failed(e.kind()),
    };
    (t0.elapsed(), r)
}

fn is_reset_or_refused(a: &Attempt) -> bool {
    matches!(
        a,
        Attempt::Failed(
            ErrorKind::ConnectionReset
                | ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionAborted
                | ErrorKind::BrokenPipe
        )
    )
}

// ----------------------------------------------------------------- tests

#[test]
fn unmodified_program_goes_through_the_relay() {
    const BYTES: usize = 4 << 20;
    let mut lab = Lab::new("tp1");
    lab.start_client(&ClientOpts::default());

    // A plain connect, no proxy anywhere: the program believes it talks to
    // the origin.
    let (peer, ex) = lab.c.run(|| {
        let s = TcpStream::connect_timeout(&origin(), Duration::from_secs(5))
            .expect("connect to the origin");
        (s.peer_addr().unwrap(), exchange(s, BYTES, BYTES, None))
    });
    assert_eq!(peer, origin());
    assert_exchange(&ex, BYTES);
    let conns = lab.origin.wait_conns(1);
    assert_eq!(lab.origin.accepted(), 1);
    let oc = &conns[0];
    assert_eq!(
        oc.peer.ip(),
        IpAddr::from(RELAY_SIDE),
        "the origin saw the connection come from the relay: {oc:?}"
    );
    assert_eq!(
        (oc.up, oc.received, oc.bad),
        (BYTES as u64, BYTES as u64, 0)
    );
    assert!(oc.eof && oc.error.is_none(), "{oc:?}");
    let st = lab.client_status();
    assert!(tcount(&st, "relayed") >= 1, "{st:#}");
    assert!(st["over_mptcp"].as_u64() >= Some(1), "{st:#}");
    assert_eq!(
        (tcount(&st, "direct"), tcount(&st, "blocked")),
        (0, 0),
        "{st:#}"
    );

    // curl, no proxy setting, from a python http.server in o.
    let www = lab.dir.path("www");
    std::fs::create_dir_all(&www).unwrap();
    let blob = pattern(0xb10b, 3 << 20);
    std::fs::write(www.join("blob.bin"), &blob).unwrap();
    let http = Proc::spawn(
        "python3 -m http.server",
        Command::new("ip")
            .args(["netns", "exec", &lab.o.name, python()])
            .args([
                "-m",
                "http.server",
                "8000",
                "--bind",
                "10.9.0.2",
                "--directory",
            ])
            .arg(&www),
        lab.dir.path("http.log"),
    );
    lab.procs.push(http);
    let listening = wait_for(10, || {
        lab.o
            .run(|| TcpStream::connect(SocketAddr::from((ORIGIN, 8000))).is_ok())
    });
    assert!(listening, "http.server never listened");
    let fetched = lab.dir.path("fetched.bin");
    let mut curl = Command::new("ip");
    curl.args(["netns", "exec", &lab.c.name, "curl", "-sS", "--fail", "-o"])
        .arg(&fetched)
        .arg("http://10.9.0.2:8000/blob.bin");
    for v in [
        "http_proxy",
        "HTTP_PROXY",
        "https_proxy",
        "HTTPS_PROXY",
        "all_proxy",
        "ALL_PROXY",
        "no_proxy",
        "NO_PROXY",
    ] {
        curl.env_remove(v);
    }
    let out = run_bounded(&mut curl, None, 30);
    assert!(
        out.status.success(),
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = std::fs::read(&fetched).unwrap();
    assert!(
        got == blob,
        "curl fetched {} bytes, not the {} of the file (or different ones)",
        got.len(),
        blob.len()
    );
    let st = lab.client_status();
    assert!(tcount(&st, "relayed") >= 2, "{st:#}");
    assert_eq!(lab.origin.accepted(), 1, "curl went to the http.server");
    lab.assert_alive();
}

#[test]
fn no_leak_when_the_relay_is_down_and_fallback_blocks() {
    const ATTEMPTS: usize = 5;
    let mut lab = Lab::new("tp2");
    lab.start_client(&ClientOpts::default());
    // Through the relay while it is up.
    let ex = lab.c.run(|| {
        let s = TcpStream::connect_timeout(&origin(), Duration::from_secs(5)).unwrap();
        exchange(s, 1000, 1000, None)
    });
    assert_exchange(&ex, 1000);
    lab.origin.wait_conns(1);

    lab.kill_relay();
    let cap = Capture::start(&lab.c);
    let attempts = lab.c.run(|| {
        (0..ATTEMPTS)
            .map(|_| attempt(origin(), Duration::from_secs(3)))
            .collect::<Vec<_>>()
    });
    // DNS over UDP: no answer.
    let udp = lab
        .c
        .run(|| udp_dns(0x0b0b, "leak.braid-test", Duration::from_millis(1500)));
    // DNS over TCP: reset like the rest.
    let tcp = lab.c.run(|| attempt(resolver(), Duration::from_secs(3)));
    let packets = cap.finish();

    for (i, (took, how)) in attempts.iter().enumerate() {
        assert!(
            is_reset_or_refused(how) && *took < Duration::from_millis(500),
            "attempt {i}: {how:?} after {took:?} (all: {attempts:?})"
        );
    }
    assert!(
        is_reset_or_refused(&tcp.1) && tcp.0 < Duration::from_millis(500),
        "DNS over TCP: {tcp:?}"
    );
    println!("relay down: attempts {attempts:?}, DNS over TCP {tcp:?}");
    match &udp {
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
        other => {
            panic!("a DNS query was answered (or failed oddly) with the relay down: {other:?}")
        }
    }
    let leaks: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.involves(ORIGIN.into()) || p.port53())
        .collect();
    assert!(
        leaks.is_empty(),
        "packets to the origin or port 53 on c's interfaces: {leaks:#?}"
    );
    // The capture works: it saw the client try the dead relay.
    assert!(
        packets
            .iter()
            .any(|p| p.outgoing && p.dst == IpAddr::from(RELAY_IP) && p.dport == RELAY_PORT),
        "the capture saw no attempt to reach the relay: {packets:#?}"
    );
    assert_eq!(lab.origin.accepted(), 1, "the origin was reached");

    let st = lab.client_status();
    assert_eq!(st["relay_reachable"], false, "{st:#}");
    assert!(
        tcount(&st, "blocked") > ATTEMPTS as u64,
        "every attempt counted as blocked: {st:#}"
    );
    assert!(tcount(&st, "dns_failed") >= 1, "{st:#}");
    assert_eq!(
        (tcount(&st, "direct"), tcount(&st, "dns_answered")),
        (0, 0),
        "{st:#}"
    );
    assert!(rules_settled(&st), "{st:#}");
    lab.client.as_mut().unwrap().assert_alive();
}

#[test]
fn dns_is_answered_through_the_relay() {
    let mut lab = Lab::new("tp3");
    let dns = DnsResponder::start(&lab.o);
    lab.start_client(&ClientOpts::default());
    let cap = Capture::start(&lab.c);
    let udp = lab
        .c
        .run(|| udp_dns(0x1234, "udp.braid-test", Duration::from_secs(5)));
    let tcp = lab.c.run(|| tcp_dns(0x4321, "tcp.braid-test"));
    let packets = cap.finish();

    let (from, answer) = udp.expect("an answer to the UDP query");
    assert_eq!(from, resolver(), "the answer comes from the resolver asked");
    assert_eq!(parse_answer(&answer, 0x1234), Ok(DNS_ANSWER));
    let answer = tcp.expect("an answer to the TCP query");
    assert_eq!(parse_answer(&answer, 0x4321), Ok(DNS_ANSWER));
    let names = dns.names();
    for n in ["udp.braid-test", "tcp.braid-test"] {
        assert!(
            names.iter().any(|x| x == n),
            "the relay's resolver never got {n}: {names:?}"
        );
    }

    let leaks: Vec<&Packet> = packets.iter().filter(|p| p.port53()).collect();
    assert!(
        leaks.is_empty(),
        "port-53 packets on c's interfaces: {leaks:#?}"
    );
    assert!(
        packets
            .iter()
            .any(|p| p.outgoing && p.dst == IpAddr::from(RELAY_IP) && p.dport == RELAY_PORT),
        "the capture saw no tunnel to the relay: {packets:#?}"
    );
    let st = lab.client_status();
    assert!(tcount(&st, "dns_answered") >= 1, "{st:#}");
    assert_eq!(tcount(&st, "dns_failed"), 0, "{st:#}");
    lab.assert_alive();
}

/// Send one datagram to origin:443 on a connected socket: the error (from
/// the send, or the next receive within 100 ms) and when it came.
fn quic_attempt() -> (Duration, std::io::Result<()>) {
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect(SocketAddr::from((ORIGIN, 443))).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let t0 = Instant::now();
    if let Err(e) = s.send(b"\xc0 a QUIC initial, more or less") {
        return (t0.elapsed(), Err(e));
    }
    let r = s.recv(&mut [0u8; 64]).map(|_| ());
    (t0.elapsed(), r)
}

#[test]
fn quic_is_refused_at_once_unless_allowed() {
    let mut lab = Lab::new("tp4");
    lab.start_client(&ClientOpts::default());
    let cap = Capture::start(&lab.c);
    let (took, r) = lab.c.run(quic_attempt);
    let packets = cap.finish();
    let errno = r.as_ref().err().and_then(|e| e.raw_os_error());
    assert!(
        matches!(errno, Some(libc::EPERM) | Some(libc::ECONNREFUSED))
            && took < Duration::from_millis(100),
        "QUIC: {r:?} after {took:?}, expected EPERM or ECONNREFUSED within 100 ms"
    );
    println!("QUIC refused after {took:?}: {r:?}");
    let out: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.proto == 17 && p.dport == 443)
        .collect();
    assert!(out.is_empty(), "QUIC left c: {out:#?}");

    // quic = "allow": the datagram goes out.
    lab.stop_client();
    lab.start_client(&ClientOpts {
        quic: "allow",
        ..ClientOpts::default()
    });
    let st = lab.client_status();
    assert_eq!(st["transparent"]["quic"], "allow", "{st:#}");
    let cap = Capture::start(&lab.c);
    let sent = lab.c.run(|| {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddr::from((ORIGIN, 443)))?;
        s.send(b"\xc0 a QUIC initial, more or less")
    });
    let packets = cap.finish();
    assert!(sent.is_ok(), "sending with quic = allow: {sent:?}");
    assert!(
        packets.iter().any(|p| p.outgoing
            && p.proto == 17
            && p.dst == IpAddr::from(ORIGIN)
            && p.dport == 443),
        "the datagram never left c: {packets:#?}"
    );

    // quic = "relay": QUIC goes through the relay, and its answers come
    // back as if from the origin.
    let stop = Arc::new(AtomicBool::new(false));
    let echo = udp_echo(&lab.o, SocketAddr::from((ORIGIN, 443)), stop.clone());
    lab.stop_client();
    lab.start_client(&ClientOpts {
        quic: "relay",
        ..ClientOpts::default()
    });
    let cap = Capture::start(&lab.c);
    let answers = lab
        .c
        .run(|| -> std::io::Result<Vec<(SocketAddr, Vec<u8>)>> {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect(SocketAddr::from((ORIGIN, 443)))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut got = Vec::new();
            for i in 0..3 {
                s.send(format!("datagram {i}").as_bytes())?;
                let mut buf = [0u8; 2048];
                let (n, from) = s.recv_from(&mut buf)?;
                got.push((from, buf[..n].to_vec()));
            }
            Ok(got)
        });
    let packets = cap.finish();
    stop.store(true, Ordering::SeqCst);
    let _ = echo.join();
    let answers = answers.expect("QUIC answers through the relay");
    for (i, (from, data)) in answers.iter().enumerate() {
        let text = String::from_utf8_lossy(data);
        assert_eq!(
            *from,
            SocketAddr::from((ORIGIN, 443)),
            "answer {i} from {from}"
        );
        // The origin saw the relay, not the client.
        assert!(
            text.starts_with("10.9.0.1:") && text.ends_with(&format!("|datagram {i}")),
            "answer {i}: {text}"
        );
    }
    let out: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.outgoing && p.proto == 17 && p.dport == 443)
        .collect();
    assert!(out.is_empty(), "QUIC left c directly: {out:#?}");
    let st = lab.client_status();
    assert!(tcount(&st, "udp_datagrams") >= 3, "{st:#}");
    lab.assert_alive();
}

#[test]
fn fallback_direct_and_back() {
    let mut lab = Lab::new("tp5");
    let server = start_peer_server(&lab.r);
    lab.services.push(server);
    lab.start_client(&ClientOpts {
        fallback: "direct",
        connect_timeout_ms: 1000,
        ..ClientOpts::default()
    });
    let via_relay = IpAddr::from(BOTH);
    let direct = IpAddr::from(C0);
    assert_eq!(ask_peer(&lab.c), Ok(via_relay), "through the relay");
    let up = lab.client_status();
    let up_rules = up["transparent"]["rules_installed"].as_u64().unwrap();
    assert!(tcount(&up, "relayed") >= 1, "{up:#}");

    lab.kill_relay();
    let t0 = Instant::now();
    let first = ask_peer(&lab.c);
    let took = t0.elapsed();
    assert_eq!(
        first,
        Ok(direct),
        "the first connection with the relay down"
    );
    assert!(
        took < Duration::from_millis(1000 + 1000),
        "the first connection took {took:?}"
    );
    let t0 = Instant::now();
    assert_eq!(ask_peer(&lab.c), Ok(direct), "the next one");
    assert!(
        t0.elapsed() < Duration::from_millis(500),
        "{:?}",
        t0.elapsed()
    );
    // While the relay is down DNS is no longer redirected (two rules fewer).
    let mut st = Value::Null;
    let dns_off = wait_for(5, || {
        st = lab.client_status();
        rules_settled(&st) && st["transparent"]["rules_installed"].as_u64() == Some(up_rules - 2)
    });
    assert!(
        dns_off,
        "the DNS rules stayed while the relay is down: {st:#}"
    );
    assert_eq!(st["relay_reachable"], false, "{st:#}");
    assert!(tcount(&st, "direct") >= 2, "{st:#}");

    lab.start_relay();
    let t0 = Instant::now();
    let mut seen = Vec::new();
    let back = wait_for(10, || {
        let p = ask_peer(&lab.c);
        let ok = p == Ok(via_relay);
        seen.push(p);
        if !ok {
            std::thread::sleep(Duration::from_millis(250));
        }
        ok
    });
    assert!(
        back,
        "no connection through the relay within 10 s of its restart: {seen:?}"
    );
    println!(
        "through the relay again {:?} after its restart",
        t0.elapsed()
    );
    assert!(
        seen.iter()
            .all(|p| matches!(p, Ok(a) if *a == via_relay || *a == direct)),
        "{seen:?}"
    );
    let mut st = Value::Null;
    let restored = wait_for(5, || {
        st = lab.client_status();
        rules_settled(&st) && st["transparent"]["rules_installed"].as_u64() == Some(up_rules)
    });
    assert!(restored, "the DNS rules did not come back: {st:#}");
    assert_eq!(st["relay_reachable"], true, "{st:#}");
    lab.assert_alive();
}

/// A small xorshift generator (the delays are printed: a failing run can
/// be told apart).
fn next_rand(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

#[test]
fn rules_are_removed_on_every_way_out() {
    let dir = TempDir::new("tp6");
    let c = Netns::new("tp6c");
    ip(&c, "link add d0 type veth peer name d1");
    ip(&c, "addr add 10.0.1.1/24 dev d0");
    ip(&c, "link set d0 up");
    ip(&c, "link set d1 up");
    let (client_key, _) = keygen(&dir, "client.key");
    let (_, relay_pub) = keygen(&dir, "relay.key");
    let sock = dir.path("client.sock");
    let cfg = dir.path("client.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relay.client]\n\
             relay = \"10.0.1.2:{RELAY_PORT}\"\n\
             relay_public_key = \"{relay_pub}\"\n\
             key_file = \"{}\"\n\
             socks = \"off\"\n\
             http = \"off\"\n\
             control_socket = \"{}\"\n\
             transparent = true\n\
             fallback = \"block\"\n",
            client_key.display(),
            sock.display()
        ),
    )
    .unwrap();
    let tables_before = nft_tables(&c);
    let ruleset_before = nft_ruleset(&c);
    assert!(
        !tables_before.iter().any(|t| t.1 == "braid"),
        "{tables_before:?}"
    );
    let mut starts = 0;
    let spawn = |starts: &mut usize| {
        *starts += 1;
        Proc::spawn(
            "braid relay connect",
            Command::new(BRAID)
                .args(["-n", &c.name, "relay", "connect", "-c"])
                .arg(&cfg),
            dir.path(&format!("client-{starts}.log")),
        )
    };
    let ready = |p: &mut Proc| {
        let mut st = Value::Null;
        let ok = wait_for(10, || {
            p.assert_alive();
            match try_status(&sock) {
                Ok(s) => {
                    st = s;
                    rules_settled(&st)
                }
                Err(_) => false,
            }
        });
        assert!(ok, "the client's rules never settled: {st:#}\n{}", p.log());
    };
    let cleanup = || {
        let out = c.braid(&["--json", "relay", "cleanup"]);
        assert!(
            out.status.success(),
            "braid relay cleanup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("cleanup prints JSON");
        v["removed"].as_bool().expect("removed: bool")
    };

    // SIGTERM: the table goes, nothing else changes.
    let mut p = spawn(&mut starts);
    ready(&mut p);
    assert!(braid_table_present(&c));
    p.signal(libc::SIGTERM);
    let exit = p.wait_exit(10);
    assert!(
        exit.is_some_and(|e| e.success()),
        "exit on SIGTERM: {exit:?}\n{}",
        p.log()
    );
    assert!(!braid_table_present(&c), "table left after SIGTERM");
    assert_eq!(nft_tables(&c), tables_before);
    assert_eq!(nft_ruleset(&c), ruleset_before);
    drop(p);

    // SIGKILL: the table stays; cleanup removes it (once).
    let mut p = spawn(&mut starts);
    ready(&mut p);
    p.signal(libc::SIGKILL);
    assert!(p.wait_exit(10).is_some());
    drop(p);
    assert!(braid_table_present(&c), "a killed client cannot clean up");
    assert!(cleanup(), "cleanup found nothing to remove");
    assert!(!braid_table_present(&c));
    assert!(!cleanup(), "a second cleanup removed something");
    assert_eq!(nft_tables(&c), tables_before);

    // A start after a crash replaces the leftover, and stops clean.
    let mut p = spawn(&mut starts);
    ready(&mut p);
    p.signal(libc::SIGKILL);
    assert!(p.wait_exit(10).is_some());
    drop(p);
    assert!(braid_table_present(&c));
    let mut p = spawn(&mut starts);
    ready(&mut p);
    assert!(
        p.log().contains("did not stop cleanly"),
        "the leftover table was not reported:\n{}",
        p.log()
    );
    p.signal(libc::SIGTERM);
    let exit = p.wait_exit(10);
    assert!(exit.is_some_and(|e| e.success()), "{exit:?}\n{}", p.log());
    drop(p);
    assert!(!braid_table_present(&c));
    assert_eq!(nft_tables(&c), tables_before);

    // Crashes at any moment, including during rule installation.
    let mut seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    let mut delays = Vec::new();
    let mut left = 0;
    for _ in 0..10 {
        let ms = next_rand(&mut seed) % 301;
        delays.push(ms);
        let mut p = spawn(&mut starts);
        std::thread::sleep(Duration::from_millis(ms));
        if let Some(exit) = p.has_exited() {
            panic!("the client exited by itself ({exit}):\n{}", p.log());
        }
        p.signal(libc::SIGKILL);
        assert!(p.wait_exit(10).is_some());
        left += usize::from(braid_table_present(&c));
    }
    println!("SIGKILL after {delays:?} ms: {left} of 10 left a table");
    cleanup();
    assert_eq!(
        nft_tables(&c),
        tables_before,
        "after kills at {delays:?} ms"
    );
    assert_eq!(
        nft_ruleset(&c),
        ruleset_before,
        "after kills at {delays:?} ms"
    );
}

/// Where the cgroup v2 hierarchy is mounted, if it is.
fn cgroup2_mount() -> Option<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        (post.split_whitespace().next()? == "cgroup2")
            .then(|| pre.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// A cgroup of the test's own, removed on drop (its processes moved back
/// to the root first).
struct Cgroup {
    root: PathBuf,
    path: PathBuf,
}

impl Cgroup {
    fn create(root: &Path, name: &str) -> std::io::Result<Cgroup> {
        let path = root.join(name);
        std::fs::create_dir(&path)?;
        Ok(Cgroup {
            root: root.to_path_buf(),
            path,
        })
    }

    fn add(&self, pid: u32) -> std::io::Result<()> {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string())
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = wait_for(3, || {
            if let Ok(procs) = std::fs::read_to_string(self.path.join("cgroup.procs")) {
                for pid in procs.split_whitespace() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            std::fs::remove_dir(&self.path).is_ok() || !self.path.exists()
        });
    }
}

#[test]
fn scope_uid_and_cgroup() {
    let mut lab = Lab::new("tp7");
    let server = start_peer_server(&lab.r);
    lab.services.push(server);
    let via_relay = IpAddr::from(BOTH);
    let direct = IpAddr::from(C0);

    // uid 65534: nobody's connection through the relay, root's direct.
    lab.start_client(&ClientOpts {
        scope: "uid:65534".into(),
        ..ClientOpts::default()
    });
    let out = run_bounded(
        Command::new("ip")
            .args(["netns", "exec", &lab.c.name, "setpriv"])
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .args([python(), "-c", PEER_SCRIPT]),
        None,
        20,
    );
    assert!(
        out.status.success(),
        "nobody's program: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let nobody: IpAddr = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("nobody's program prints the peer");
    assert_eq!(nobody, via_relay, "nobody's connection");
    assert_eq!(ask_peer(&lab.c), Ok(direct), "root's connection");
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 1, "{st:#}");
    lab.stop_client();

    // A cgroup: its program's connection through the relay, the test's
    // own direct.
    let Some(mount) = cgroup2_mount() else {
        println!("skipped: cgroup v2 is not mounted");
        return;
    };
    let name = format!("braid-test-{}", unique("cg").trim_start_matches("bt-cg-"));
    let cg = match Cgroup::create(&mount, &name) {
        Ok(cg) => cg,
        Err(e) => {
            println!(
                "skipped: cannot create a cgroup under {}: {e}",
                mount.display()
            );
            return;
        }
    };
    // Braid looks for the scope's cgroup under /sys/fs/cgroup: where the
    // hierarchy is mounted elsewhere (hybrid hosts), the client gets it
    // there in a mount namespace of its own.
    // The client finds the hierarchy wherever it is mounted (here, on a
    // hybrid system, /sys/fs/cgroup/unified): no help from the test.
    let _ = &mount;
    let elsewhere: Option<&Path> = None;
    let opts = ClientOpts {
        scope: format!("cgroup:/{name}"),
        ..ClientOpts::default()
    };
    if let Err(log) = lab.try_start_client(&opts, elsewhere) {
        if log.contains("installing the transparent-mode rules") {
            println!("skipped: the socket cgroupv2 match is unavailable: {log}");
            return;
        }
        panic!("{log}");
    }
    let mut child = Piped(
        Command::new("ip")
            .args(["netns", "exec", &lab.c.name, python(), "-c", PEER_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the cgroup's program"),
    );
    let pid = child.0.id();
    cg.add(pid).expect("moving the program into the cgroup");
    let membership = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    assert!(
        membership.lines().any(|l| l == format!("0::/{name}")),
        "{membership}"
    );
    child.0.stdin.take().unwrap().write_all(b"go\n").unwrap();
    let out = wait_output(&mut child, 20, "the cgroup's program");
    assert!(
        out.status.success(),
        "the cgroup's program: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let inside: IpAddr = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("the cgroup's program prints the peer");
    assert_eq!(inside, via_relay, "the cgroup's connection");
    assert_eq!(ask_peer(&lab.c), Ok(direct), "the test's own connection");
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 1, "{st:#}");
    lab.stop_client();
    drop(child);
    drop(cg);
    assert!(!mount.join(&name).exists(), "the cgroup was not removed");
}

// ------------------------------------------------- a router's LAN, IPv6

/// c's address on its LAN (lan0), the LAN host's default gateway.
const LAN_GW: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 1);
/// The LAN host h.
const LAN_HOST: Ipv4Addr = Ipv4Addr::new(192, 168, 77, 2);
/// c's and r's IPv6 addresses on path 0.
const C0_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 1);
const R0_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 1, 0, 0, 0, 0, 0, 2);
/// The relay's IPv6 address toward the origin, and the origin's.
const RELAY_SIDE_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 1);
const ORIGIN_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 9, 0, 0, 0, 0, 0, 2);

fn origin_v6() -> SocketAddr {
    SocketAddr::from((ORIGIN_V6, ORIGIN_PORT))
}

/// Write `/proc/sys/KEY` (dots for slashes) inside a namespace.
fn proc_sysctl(ns: &Netns, key: &str, value: &str) {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let v = value.to_string();
    let p = path.clone();
    ns.run(move || std::fs::write(&p, v))
        .unwrap_or_else(|e| panic!("writing {path} in {}: {e}", ns.name));
}

impl Lab {
    /// A fourth namespace h, a host on a LAN behind c: c's lan0
    /// 192.168.77.1/24, h's h0 192.168.77.2/24, h's default route via c;
    /// c forwards (as a router does). h goes when the returned value drops.
    fn add_lan_host(&self, tag: &str) -> Netns {
        let h = Netns::new(&format!("{tag}h"));
        let hn = &h.name;
        ip(
            &self.c,
            &format!("link add lan0 type veth peer name h0 netns {hn}"),
        );
        ip(&self.c, &format!("addr add {LAN_GW}/24 dev lan0"));
        ip(&h, &format!("addr add {LAN_HOST}/24 dev h0"));
        ip(&self.c, "link set lan0 up");
        ip(&h, "link set h0 up");
        ip(&h, &format!("route add default via {LAN_GW} dev h0"));
        proc_sysctl(&self.c, "net.ipv4.ip_forward", "1");
        h
    }

    /// IPv6 beside IPv4: fd00:{1,2}::1/64 on c's paths (r: ::2),
    /// fd00:9::1/64 on r toward the origin (o: fd00:9::2/64), c's default
    /// IPv6 route via r on path 0; no duplicate address detection, so the
    /// addresses are usable at once.
    fn add_ipv6(&self) {
        for (k, net) in [(0, 1), (1, 2)] {
            ip(
                &self.c,
                &format!("-6 addr add fd00:{net}::1/64 dev c{k} nodad"),
            );
            ip(
                &self.r,
                &format!("-6 addr add fd00:{net}::2/64 dev r{k} nodad"),
            );
        }
        ip(
            &self.r,
            &format!("-6 addr add {RELAY_SIDE_V6}/64 dev r2 nodad"),
        );
        ip(&self.o, &format!("-6 addr add {ORIGIN_V6}/64 dev o0 nodad"));
        ip(&self.c, &format!("-6 route add default via {R0_V6} dev c0"));
    }

    /// Replace the relay's `allow` list of destinations and restart it.
    fn relay_allows(&mut self, allow: &[&str]) {
        let text = std::fs::read_to_string(&self.relay_cfg).unwrap();
        let old = text
            .lines()
            .find(|l| l.starts_with("allow = "))
            .expect("the relay's allow line")
            .to_string();
        let list: Vec<String> = allow.iter().map(|a| format!("\"{a}\"")).collect();
        let new = format!("allow = [{}]", list.join(", "));
        std::fs::write(&self.relay_cfg, text.replace(&old, &new)).unwrap();
        self.kill_relay();
        self.start_relay();
    }
}

#[test]
fn lan_scope_carries_a_routers_lan() {
    const BYTES: usize = 1 << 20;
    let mut lab = Lab::new("tp8");
    let h = lab.add_lan_host("tp8");
    let server = start_peer_server(&lab.r);
    lab.services.push(server);
    lab.start_client(&ClientOpts {
        scope: "lan:lan0".into(),
        ..ClientOpts::default()
    });
    if let Some(rules) = nft_ruleset(&lab.c) {
        assert!(
            rules.contains("hook prerouting") && rules.contains("iifname \"lan0\""),
            "{rules}"
        );
    }
    let cap = Capture::start(&lab.c);

    // A plain connect from the LAN host, which knows of no relay.
    let (peer, ex) = h.run(|| {
        let s = TcpStream::connect_timeout(&origin(), Duration::from_secs(5))
            .expect("connect from the LAN host to the origin");
        (s.peer_addr().unwrap(), exchange(s, BYTES, BYTES, None))
    });
    assert_eq!(peer, origin());
    assert_exchange(&ex, BYTES);
    let conns = lab.origin.wait_conns(1);
    let oc = &conns[0];
    assert_eq!(
        oc.peer.ip(),
        IpAddr::from(RELAY_SIDE),
        "the origin saw the LAN host's connection come from the relay: {oc:?}"
    );
    assert_eq!(
        (oc.up, oc.received, oc.bad),
        (BYTES as u64, BYTES as u64, 0)
    );
    assert!(oc.eof && oc.error.is_none(), "{oc:?}");
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 1, "{st:#}");

    // The LAN host's connection to r's own address: through the relay too.
    let via_lan = h.run(|| {
        let mut s = TcpStream::connect_timeout(&peer_server(), Duration::from_secs(5))
            .map_err(|e| format!("connect: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text)
            .map_err(|e| format!("read: {e}"))?;
        text.trim()
            .parse::<IpAddr>()
            .map_err(|e| format!("the server said {text:?}: {e}"))
    });
    assert_eq!(via_lan, Ok(IpAddr::from(BOTH)), "the LAN host's connection");
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 2, "{st:#}");

    // c's own programs are not the LAN: not redirected. To r's address
    // they arrive directly ...
    assert_eq!(
        ask_peer(&lab.c),
        Ok(IpAddr::from(C0)),
        "c's own connection to r"
    );
    // ... and to the origin they go out directly, where r does not forward
    // them.
    let (took, own) = lab.c.run(|| attempt(origin(), Duration::from_secs(1)));
    let packets = cap.finish();
    assert!(
        !matches!(own, Attempt::Answered(_)),
        "c's own connection to the origin was answered ({own:?} after {took:?})"
    );
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        lab.origin.accepted(),
        1,
        "the origin saw c's own connection"
    );
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 2, "c's own connections: {st:#}");
    assert_eq!(
        (tcount(&st, "direct"), tcount(&st, "blocked")),
        (0, 0),
        "{st:#}"
    );

    // On c's wires: the LAN host's packets came in but were never
    // forwarded; c's own SYN to the origin left directly.
    let lan_in = packets
        .iter()
        .any(|p| !p.outgoing && p.src == IpAddr::from(LAN_HOST) && p.dst == IpAddr::from(ORIGIN));
    assert!(lan_in, "the capture never saw the LAN host's packets");
    let forwarded: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.outgoing && p.src == IpAddr::from(LAN_HOST))
        .collect();
    assert!(
        forwarded.is_empty(),
        "the LAN host's packets were forwarded: {forwarded:#?}"
    );
    let own_out = packets.iter().any(|p| {
        p.outgoing
            && p.src == IpAddr::from(C0)
            && p.dst == IpAddr::from(ORIGIN)
            && p.dport == ORIGIN_PORT
    });
    assert!(own_out, "c's own connection never left c0 directly");
    lab.assert_alive();
}

#[test]
fn ipv6_programs_are_carried_too() {
    const BYTES: usize = 1 << 20;
    let mut lab = Lab::new("tp9");
    lab.add_ipv6();
    lab.relay_allows(&["10.9.0.0/24", "10.8.0.0/24", "fd00:9::/64"]);
    let origin6 = Origin::start(&lab.o, &[origin_v6()]);
    lab.start_client(&ClientOpts::default());
    let cap = Capture::start(&lab.c);
    let got = lab.c.run(|| {
        let s = TcpStream::connect_timeout(&origin_v6(), Duration::from_secs(5))?;
        Ok::<_, std::io::Error>((
            s.peer_addr()?,
            s.local_addr()?,
            exchange(s, BYTES, BYTES, None),
        ))
    });
    let packets = cap.finish();
    let (peer, local, ex) = got.expect("connect to the origin over IPv6");
    assert_eq!(peer, origin_v6());
    assert_eq!(local.ip(), IpAddr::from(C0_V6), "the program's own address");
    assert_exchange(&ex, BYTES);
    let conns = origin6.wait_conns(1);
    assert_eq!(origin6.accepted(), 1);
    let oc = &conns[0];
    assert_eq!(
        oc.peer.ip(),
        IpAddr::from(RELAY_SIDE_V6),
        "the origin saw the connection come from the relay: {oc:?}"
    );
    assert_eq!(
        (oc.up, oc.received, oc.bad),
        (BYTES as u64, BYTES as u64, 0)
    );
    assert!(oc.eof && oc.error.is_none(), "{oc:?}");
    assert_eq!(lab.origin.accepted(), 0, "the IPv4 origin was reached");
    let st = lab.client_status();
    assert_eq!(tcount(&st, "relayed"), 1, "{st:#}");
    let leaks: Vec<&Packet> = packets
        .iter()
        .filter(|p| p.involves(ORIGIN_V6.into()))
        .collect();
    assert!(
        leaks.is_empty(),
        "packets to the origin on c's interfaces: {leaks:#?}"
    );
    lab.assert_alive();
}
