//! Unmodified programs over MPTCP with `braid run`: curl, python3 and
//! iperf3 in a two-path lab are MPTCP as seen from the server, with a second
//! subflow on the second path; the same programs fall back to TCP against a
//! plain TCP server; environment, exit codes and signals pass through;
//! `enable`/`disable` drop-ins; the BPF path is detected. The preload's
//! replacement of sockets at connect()/listen() (`--connect-only`,
//! `--listen-only`) is checked with a small C program compiled here: it
//! keeps every option, file flag and bound address, leaves sockets in use,
//! registered with epoll or shared alone, and reads its environment once.

mod common;
use common::{wait_for, Netns, BRAID};

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

struct Lab {
    name: String,
    client: String,
    server: String,
}

impl Lab {
    fn up(tag: &str) -> Lab {
        let name = format!("u{}{tag}", std::process::id() % 100_000);
        let out = Command::new(BRAID)
            .args([
                "lab", "up", "--name", &name, "--rate", "none", "--delay", "1ms",
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lab = Lab {
            client: format!("{name}-c"),
            server: format!("{name}-s"),
            name,
        };
        // The client opens its second subflow from path 1.
        for args in [
            vec!["endpoint", "add", "10.2.0.1", "subflow"],
            vec!["limits", "set", "subflows", "2", "add_addr_accepted", "2"],
        ] {
            let out = Command::new(BRAID)
                .args(["-n", &lab.client])
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        lab
    }

    /// Start `braid -n NS run -- ARGS...` in the background, output discarded.
    fn spawn_run(ns: &str, args: &[&str]) -> std::process::Child {
        Command::new(BRAID)
            .args(["-n", ns, "run", "--"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// `braid -n NS --json conns [--all]`, parsed.
    fn conns(ns: &str, all: bool) -> serde_json::Value {
        let mut args = vec!["-n", ns, "--json", "conns"];
        if all {
            args.push("--all");
        }
        let out = Command::new(BRAID).args(&args).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }

    fn run_in_client(&self, args: &[&str]) -> std::process::Output {
        Command::new(BRAID)
            .args(["-n", &self.client, "run", "--"])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(BRAID)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// What the server saw of one connection.
#[derive(Debug)]
struct Seen {
    mptcp: bool,
    extra_subflows: u8,
}

/// An MPTCP server in the server namespace answering one HTTP-ish request
/// with `size` bytes; it holds the rest of the body back until a second
/// subflow has joined (or 5 s passed), then reports what it saw.
fn mptcp_server(ns: &str, port: u16, size: usize) -> mpsc::Receiver<Seen> {
    let (ready_tx, ready_rx) = mpsc::channel();
    let (tx, rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        braid_kernel::netns::enter(&ns).unwrap();
        let (l, _) = braid_kernel::socket::listen(SocketAddr::from(([0, 0, 0, 0], port))).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut req = Vec::new();
        let mut b = [0u8; 1024];
        while !req.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).unwrap();
            if n == 0 {
                break;
            }
            req.extend_from_slice(&b[..n]);
        }
        let head =
            format!("HTTP/1.0 200 OK\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        let body = vec![b'x'; size];
        s.write_all(&body[..size / 4]).unwrap();
        let mut extra = 0;
        wait_for(5, || {
            extra = braid_kernel::socket::mptcp_info(&s)
                .ok()
                .flatten()
                .map(|i| i.subflows)
                .unwrap_or(0);
            extra >= 1
        });
        let mptcp = braid_kernel::socket::is_mptcp_active(&s).unwrap_or(false);
        s.write_all(&body[size / 4..]).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let _ = s.read(&mut b);
        tx.send(Seen {
            mptcp,
            extra_subflows: extra,
        })
        .unwrap();
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    rx
}

/// A plain TCP server (no MPTCP) answering one request.
fn tcp_server(ns: &str, port: u16) {
    let (ready_tx, ready_rx) = mpsc::channel();
    let ns = ns.to_string();
    std::thread::spawn(move || {
        braid_kernel::netns::enter(&ns).unwrap();
        let l = TcpListener::bind(("0.0.0.0", port)).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut b = [0u8; 4096];
        let _ = s.read(&mut b);
        let _ =
            s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello");
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
}

const PY_CLIENT: &str = "import socket,sys
s=socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b'GET / HTTP/1.0\\r\\n\\r\\n')
n=0
while True:
    d=s.recv(65536)
    if not d: break
    n+=len(d)
print(n)";

#[test]
fn curl_and_python_use_mptcp_with_a_second_subflow() {
    let lab = Lab::up("cp");
    let seen = mptcp_server(&lab.server, 8080, 2 << 20);
    let out = lab.run_in_client(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        "http://10.1.0.2:8080/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "200",
        "curl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(
        s.mptcp,
        "curl's connection must be MPTCP from the server's side"
    );
    assert!(s.extra_subflows >= 1, "a second subflow over path 1: {s:?}");

    let seen = mptcp_server(&lab.server, 8081, 2 << 20);
    let out = lab.run_in_client(&["python3", "-c", PY_CLIENT, "10.1.0.2", "8081"]);
    assert!(
        out.status.success(),
        "python3: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let s = seen.recv_timeout(Duration::from_secs(10)).unwrap();
    assert!(s.mptcp && s.extra_subflows >= 1, "python3: {s:?}");
}

#[test]
fn iperf3_client_and_server_use_mptcp() {
    if Command::new("iperf3").arg("--version").output().is_err() {
        eprintln!("skip: iperf3 is not installed (apt-get install iperf3)");
        return;
    }
    let lab = Lab::up("ip");
    let mut server = Lab::spawn_run(&lab.server, &["iperf3", "-s", "-1", "-p", "5299"]);
    // The server is listening once its (MPTCP) listener shows up.
    let listening = wait_for(5, || {
        Lab::conns(&lab.server, true).to_string().contains(":5299")
    });
    assert!(listening, "iperf3 -s must listen on an MPTCP socket");
    let mut client = Lab::spawn_run(
        &lab.client,
        &["iperf3", "-c", "10.1.0.2", "-p", "5299", "-t", "3"],
    );
    let mut best = 0;
    let two = wait_for(6, || {
        let v = Lab::conns(&lab.server, false);
        for c in v.as_array().into_iter().flatten() {
            if c["fell_back"] == false && c["local"].as_str().is_some_and(|l| l.ends_with(":5299"))
            {
                best = best.max(c["subflows"].as_array().map(|s| s.len()).unwrap_or(0));
            }
        }
        best >= 2
    });
    assert!(client.wait().unwrap().success(), "iperf3 client failed");
    let _ = server.wait();
    assert!(
        two,
        "iperf3's data connection should have 2 subflows, saw {best}"
    );
}

#[test]
fn programs_fall_back_to_tcp_cleanly() {
    let lab = Lab::up("fb");
    tcp_server(&lab.server, 8090);
    let out = lab.run_in_client(&["curl", "-s", "http://10.1.0.2:8090/"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "hello",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tcp_server(&lab.server, 8091);
    let out = lab.run_in_client(&["python3", "-c", PY_CLIENT, "10.1.0.2", "8091"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse::<u32>()
            .unwrap()
            > 0
    );
    // With MPTCP disabled in the namespace, the preload falls back to TCP sockets.
    braid_kernel::netns::run_in(&lab.client, || braid_kernel::sysctl::write("enabled", "0"))
        .unwrap();
    let out = lab.run_in_client(&["python3", "-c", "import socket; s=socket.socket(); print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "6",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn environment_exit_codes_and_signals_pass_through() {
    let out = Command::new(BRAID)
        .args([
            "run",
            "--",
            "sh",
            "-c",
            "echo \"$LD_PRELOAD|$GODEBUG|$BRAID_MPTCP_SCOPE\"",
        ])
        .env("LD_PRELOAD", "/usr/lib/x86_64-linux-gnu/libm.so.6")
        .env("GODEBUG", "http2debug=1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let parts: Vec<&str> = text.trim().split('|').collect();
    assert!(
        parts[0].starts_with("/usr/lib/x86_64-linux-gnu/libm.so.6 ")
            && parts[0].ends_with("libbraid_preload.so"),
        "{text}"
    );
    assert_eq!(parts[1], "http2debug=1,multipathtcp=1");
    assert_eq!(parts[2], "all");
    assert_eq!(
        Command::new(BRAID)
            .args(["run", "--", "sh", "-c", "exit 7"])
            .status()
            .unwrap()
            .code(),
        Some(7)
    );
    let st = Command::new(BRAID)
        .args(["run", "--", "sh", "-c", "kill -TERM $$"])
        .status()
        .unwrap();
    assert_eq!(st.signal(), Some(libc::SIGTERM), "{st:?}");
    let out = Command::new(BRAID)
        .args(["run", "--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot run"));
    let out = Command::new(BRAID)
        .args(["run", "--", "true"])
        .env("BRAID_PRELOAD_LIB", "/nonexistent.so")
        .output()
        .unwrap();
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("does not exist")
    );
}

#[test]
fn listen_only_and_connect_only() {
    let py = "import socket
l=socket.socket(); l.bind(('127.0.0.1',0)); l.listen()
c=socket.socket(); c.connect(l.getsockname())
print(l.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), c.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))";
    let run = |flag: &str| {
        let out = Command::new(BRAID)
            .args(["run", flag, "--", "python3", "-c", py])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(run("--listen-only"), "262 6");
    assert_eq!(run("--connect-only"), "6 262");
    assert_eq!(run("--debug"), "262 262");
}

#[test]
fn enable_and_disable_write_and_remove_a_merged_dropin() {
    let root = std::env::temp_dir().join(format!("braid-root-{}", std::process::id()));
    let unitdir = root.join("lib/systemd/system");
    std::fs::create_dir_all(&unitdir).unwrap();
    std::fs::write(
        unitdir.join("web.service"),
        "[Service]\nExecStart=/usr/bin/web\nEnvironment=\"LD_PRELOAD=/opt/jemalloc.so\" GODEBUG=madvdontneed=1\n",
    )
    .unwrap();
    let root_s = root.to_str().unwrap();
    let dry = Command::new(BRAID)
        .args(["enable", "--dry-run", "--root", root_s, "web"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.status.success() && text.contains("50-braid-mptcp.conf"),
        "{text}"
    );
    let dropin = root.join("etc/systemd/system/web.service.d/50-braid-mptcp.conf");
    assert!(!dropin.exists(), "--dry-run writes nothing");
    let out = Command::new(BRAID)
        .args(["enable", "--root", root_s, "web", "--connect-only"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let conf = std::fs::read_to_string(&dropin).unwrap();
    assert!(
        conf.contains("LD_PRELOAD=/opt/jemalloc.so ") && conf.contains("libbraid_preload.so\""),
        "{conf}"
    );
    assert!(
        conf.contains("GODEBUG=madvdontneed=1,multipathtcp=1"),
        "{conf}"
    );
    assert!(conf.contains("BRAID_MPTCP_SCOPE=connect"), "{conf}");
    // The unit file itself is untouched.
    assert!(std::fs::read_to_string(unitdir.join("web.service"))
        .unwrap()
        .starts_with("[Service]\nExecStart=/usr/bin/web"));
    let out = Command::new(BRAID)
        .args(["disable", "--root", root_s, "web"])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(!dropin.exists() && !dropin.parent().unwrap().exists());
    let again = Command::new(BRAID)
        .args(["disable", "--root", root_s, "web"])
        .output()
        .unwrap();
    assert!(
        !again.status.success() && String::from_utf8_lossy(&again.stderr).contains("not enabled")
    );
    let bad = Command::new(BRAID)
        .args(["enable", "--root", root_s, "../etc"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn enable_mode_writes_a_rule_braidd_reads_first_and_disable_removes_it() {
    let root = std::env::temp_dir().join(format!("braid-mode-root-{}", std::process::id()));
    let unitdir = root.join("lib/systemd/system");
    std::fs::create_dir_all(&unitdir).unwrap();
    std::fs::write(
        unitdir.join("web.service"),
        "[Service]\nExecStart=/usr/bin/web\n",
    )
    .unwrap();
    let etc = root.join("etc/braid");
    std::fs::create_dir_all(&etc).unwrap();
    let config = etc.join("braid.toml");
    std::fs::write(
        &config,
        "pm = \"userspace\"\n[[app]]\ndport = 443\nmode = \"aggregate\"\n",
    )
    .unwrap();
    let root_s = root.to_str().unwrap();
    let out = Command::new(BRAID)
        .args(["enable", "--root", root_s, "--mode", "interactive", "web"])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rule = etc.join("apps.d/web.service.toml");
    assert!(said.contains(rule.to_str().unwrap()), "{said}");
    // braidd reads it, before the configuration's own rules.
    let check = Command::new(BRAID)
        .args(["--json", "daemon", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let cfg: serde_json::Value = serde_json::from_slice(&check.stdout).unwrap();
    assert_eq!(cfg["app"][0]["unit"], "web.service", "{cfg}");
    assert_eq!(cfg["app"][0]["mode"], "interactive", "{cfg}");
    assert_eq!(cfg["app"][1]["dport"], 443, "{cfg}");
    // A bad mode is refused before anything is written.
    let bad = Command::new(BRAID)
        .args(["enable", "--root", root_s, "--mode", "fast", "web"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let out = Command::new(BRAID)
        .args(["disable", "--root", root_s, "web"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!rule.exists());
    assert!(!root.join("etc/systemd/system/web.service.d").exists());
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn bpf_forcing_is_detected_or_works() {
    let out = Command::new(BRAID)
        .args(["--json", "bpf", "probe"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    if v["supported"] == false {
        let why = v["reason"].as_str().unwrap();
        assert!(!why.is_empty() && !out.status.success());
        eprintln!("skip: this kernel cannot force MPTCP with BPF: {why}");
        // `run --bpf` says the same and runs nothing.
        let out = Command::new(BRAID)
            .args(["run", "--bpf", "--", "true"])
            .output()
            .unwrap();
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("BPF"));
        return;
    }
    // A program that bypasses LD_PRELOAD (static or direct syscall) still gets MPTCP.
    let py = "import socket; s=socket.socket(); print(s.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))";
    let out = Command::new(BRAID)
        .args(["run", "--bpf", "--", "python3", "-c", py])
        .env("BRAID_PRELOAD_LIB", "/dev/null")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "262");
}

#[test]
fn sockopt_survey_runs_on_this_kernel() {
    let out = Command::new(BRAID)
        .args(["--json", "sockopts"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = v["mptcp"].as_array().unwrap();
    assert!(m.len() >= 20);
    let works = |name: &str| {
        m.iter()
            .find(|r| r["option"] == name)
            .map(|r| r["works"] == true)
            .unwrap()
    };
    assert!(works("TCP_NODELAY") && works("SO_KEEPALIVE") && works("SO_REUSEPORT"));
}

/// The program the preload tests run under `braid run`: each mode does what
/// real programs do to their sockets and prints `key=value` facts about the
/// sockets it ended up with (checked from inside, with getsockopt).
const PROBE_C: &str = r#"/* Probe for braid-preload tests: each mode does what a real program does
 * and prints key=value facts about the sockets it ended up with. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif
#define SOL_MPTCP 284
#define MPTCP_INFO 1

static void die(const char *what) {
    fprintf(stderr, "probe: %s: %s\n", what, strerror(errno));
    exit(2);
}

static int geti(int fd, int level, int name) {
    int v = -1;
    socklen_t l = sizeof v;
    if (getsockopt(fd, level, name, &v, &l))
        return -errno;
    return v;
}

static unsigned long long cookie(int fd) {
    unsigned long long c = 0;
    socklen_t l = sizeof c;
    getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &l);
    return c;
}

/* 1 when the connection is MPTCP end to end: MPTCP_INFO answers only on an
 * MPTCP socket that did not fall back to TCP. */
static int mptcp_active(int fd) {
    socklen_t l = 0;
    return getsockopt(fd, SOL_MPTCP, MPTCP_INFO, NULL, &l) == 0;
}

static int listener(int proto, struct sockaddr_in *a) {
    int l = socket(AF_INET, SOCK_STREAM, proto);
    if (l < 0)
        die("listener socket");
    memset(a, 0, sizeof *a);
    a->sin_family = AF_INET;
    a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(l, (void *)a, sizeof *a) || listen(l, 16))
        die("listener");
    socklen_t n = sizeof *a;
    getsockname(l, (void *)a, &n);
    return l;
}

static int wait_for(int fd, short events) {
    struct pollfd p = {.fd = fd, .events = events};
    return poll(&p, 1, 3000) == 1 && (p.revents & events);
}

/* 1 when 4 bytes written on `from` arrive on `to` and back. */
static int echo(int from, int to) {
    char b[4];
    if (write(from, "ping", 4) != 4 || !wait_for(to, POLLIN) || read(to, b, 4) != 4 ||
        memcmp(b, "ping", 4) || write(to, b, 4) != 4 || !wait_for(from, POLLIN) ||
        read(from, b, 4) != 4)
        return 0;
    return memcmp(b, "ping", 4) == 0;
}

static int accept_one(int l) {
    if (!wait_for(l, POLLIN))
        return -1;
    return accept(l, NULL, NULL);
}

static void set(int fd, int level, int name, const void *v, socklen_t len, const char *what) {
    if (setsockopt(fd, level, name, v, len))
        die(what);
}

/* Options set before a non-blocking connect() are on the socket it ends
 * with. With `refuse`, also one MPTCP refuses: the socket must stay TCP
 * with every option. */
static int opts(const char *dev, int refuse) {
    struct sockaddr_in a;
    int l = listener(IPPROTO_MPTCP, &a);
    int c = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (c < 0)
        die("socket");
    int one = 1, mark = 42, tos = 0x20, rcvbuf = 50000, uto = 5000;
    struct timeval rt = {7, 0}, st = {9, 0};
    set(c, SOL_SOCKET, SO_BINDTODEVICE, dev, strlen(dev) + 1, "SO_BINDTODEVICE");
    set(c, SOL_SOCKET, SO_MARK, &mark, sizeof mark, "SO_MARK");
    set(c, IPPROTO_IP, IP_TOS, &tos, sizeof tos, "IP_TOS");
    set(c, SOL_SOCKET, SO_RCVTIMEO, &rt, sizeof rt, "SO_RCVTIMEO");
    set(c, SOL_SOCKET, SO_SNDTIMEO, &st, sizeof st, "SO_SNDTIMEO");
    set(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one, "TCP_NODELAY");
    set(c, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one, "SO_KEEPALIVE");
    set(c, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf, "SO_RCVBUF");
    if (refuse)
        set(c, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto, "TCP_USER_TIMEOUT");
    if (fcntl(c, F_SETFL, fcntl(c, F_GETFL) | O_NONBLOCK))
        die("O_NONBLOCK");
    if (connect(c, (void *)&a, sizeof a) && errno != EINPROGRESS)
        die("connect");
    int p = accept_one(l);
    if (p < 0 || !wait_for(c, POLLOUT) || geti(c, SOL_SOCKET, SO_ERROR) != 0)
        die("connection");
    char name[32] = "";
    socklen_t nl = sizeof name;
    getsockopt(c, SOL_SOCKET, SO_BINDTODEVICE, name, &nl);
    struct timeval r2 = {0}, s2 = {0};
    socklen_t tl = sizeof r2;
    getsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &r2, &tl);
    tl = sizeof s2;
    getsockopt(c, SOL_SOCKET, SO_SNDTIMEO, &s2, &tl);
    printf("proto=%d mptcp=%d dev=%s mark=%d tos=%d rcvtimeo=%ld sndtimeo=%ld nodelay=%d "
           "keepalive=%d rcvbuf=%d user_timeout=%d nonblock=%d cloexec=%d echo=%d\n",
           geti(c, SOL_SOCKET, SO_PROTOCOL), mptcp_active(p), name,
           geti(c, SOL_SOCKET, SO_MARK), geti(c, IPPROTO_IP, IP_TOS), (long)r2.tv_sec,
           (long)s2.tv_sec, geti(c, IPPROTO_TCP, TCP_NODELAY), geti(c, SOL_SOCKET, SO_KEEPALIVE),
           geti(c, SOL_SOCKET, SO_RCVBUF), refuse ? geti(c, IPPROTO_TCP, TCP_USER_TIMEOUT) : 0,
           !!(fcntl(c, F_GETFL) & O_NONBLOCK), !!(fcntl(c, F_GETFD) & FD_CLOEXEC), echo(c, p));
    return 0;
}

/* A socket bound to an address with port 0 (an ephemeral port, or none
 * until connect() with IP_BIND_ADDRESS_NO_PORT) connects from it. */
static int bindip(const char *src, int noport) {
    struct sockaddr_in a, b = {.sin_family = AF_INET}, got;
    int l = listener(IPPROTO_MPTCP, &a);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0)
        die("socket");
    int one = 1;
    if (noport)
        set(c, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one, "IP_BIND_ADDRESS_NO_PORT");
    if (inet_pton(AF_INET, src, &b.sin_addr) != 1)
        die("address");
    if (bind(c, (void *)&b, sizeof b))
        die("bind");
    socklen_t n = sizeof got;
    getsockname(c, (void *)&got, &n);
    int port_before = ntohs(got.sin_port);
    if (connect(c, (void *)&a, sizeof a))
        die("connect");
    int p = accept_one(l);
    n = sizeof got;
    getsockname(c, (void *)&got, &n);
    char ip[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &got.sin_addr, ip, sizeof ip);
    printf("proto=%d mptcp=%d ip=%s port_before=%d same_port=%d echo=%d\n",
           geti(c, SOL_SOCKET, SO_PROTOCOL), mptcp_active(p), ip, port_before,
           port_before == ntohs(got.sin_port), echo(c, p));
    return 0;
}

/* A socket added to an epoll set before connect() still reports its events;
 * one added after connect() may be MPTCP. */
static int epoll_mode(void) {
    struct sockaddr_in a;
    int l = listener(IPPROTO_MPTCP, &a);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLOUT}, got[4];
    int early = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    ev.data.u64 = 1;
    if (early < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, early, &ev))
        die("epoll early");
    if (connect(early, (void *)&a, sizeof a) && errno != EINPROGRESS)
        die("connect early");
    int n = epoll_wait(ep, got, 4, 3000);
    int early_events = n == 1 && got[0].data.u64 == 1 && (got[0].events & EPOLLOUT);
    int p = accept_one(l);
    int early_echo = p >= 0 && echo(early, p);
    epoll_ctl(ep, EPOLL_CTL_DEL, early, NULL);

    int late = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (connect(late, (void *)&a, sizeof a) && errno != EINPROGRESS)
        die("connect late");
    ev.data.u64 = 2;
    if (epoll_ctl(ep, EPOLL_CTL_ADD, late, &ev))
        die("epoll late");
    n = epoll_wait(ep, got, 4, 3000);
    int late_events = n == 1 && got[0].data.u64 == 2 && (got[0].events & EPOLLOUT);
    int q = accept_one(l);
    printf("early_proto=%d early_events=%d early_echo=%d late_proto=%d late_events=%d "
           "late_mptcp=%d late_echo=%d\n",
           geti(early, SOL_SOCKET, SO_PROTOCOL), early_events, early_echo,
           geti(late, SOL_SOCKET, SO_PROTOCOL), late_events, q >= 0 && mptcp_active(q),
           q >= 0 && echo(late, q));
    return 0;
}

/* connect() and listen() on sockets in use (connected, accepted,
 * connecting) fail as the kernel says, on the same socket. */
static int connected(void) {
    struct sockaddr_in a;
    int l = listener(0, &a);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (void *)&a, sizeof a))
        die("connect");
    int p = accept_one(l);
    if (p < 0)
        die("accept");
    unsigned long long pc = cookie(p), cc = cookie(c);
    int rc = connect(p, (void *)&a, sizeof a);
    int accepted_connect = rc == 0 ? 0 : errno;
    rc = listen(c, 4);
    int connected_listen = rc == 0 ? 0 : errno;
    printf("accepted_connect=%d accepted_same=%d connected_listen=%d connected_same=%d echo=%d",
           accepted_connect, pc == cookie(p), connected_listen, cc == cookie(c), echo(c, p));
    /* A socket that stays TCP (MPTCP refuses TCP_USER_TIMEOUT), connect()
     * called again while connecting and once connected. */
    int uto = 5000;
    int t = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    set(t, IPPROTO_TCP, TCP_USER_TIMEOUT, &uto, sizeof uto, "TCP_USER_TIMEOUT");
    unsigned long long tc = cookie(t);
    if (connect(t, (void *)&a, sizeof a) && errno != EINPROGRESS)
        die("connect t");
    rc = connect(t, (void *)&a, sizeof a);
    int again = rc == 0 ? 0 : errno;
    int q = accept_one(l);
    if (q < 0 || !wait_for(t, POLLOUT))
        die("connect t");
    rc = connect(t, (void *)&a, sizeof a);
    int third = rc == 0 ? 0 : errno;
    printf(" kept_proto=%d kept_again=%d kept_third=%d kept_same=%d kept_echo=%d\n",
           geti(t, SOL_SOCKET, SO_PROTOCOL), again, third, tc == cookie(t), echo(t, q));
    return 0;
}

/* Threads create sockets while others change the environment: the library
 * must not read it then. Its setting read at start keeps applying. */
static void *sockets(void *x) {
    (void)x;
    for (int i = 0; i < 20000; i++) {
        int s = socket(AF_INET, SOCK_STREAM, 0);
        if (s < 0)
            die("socket");
        int one = 1;
        setsockopt(s, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        close(s);
    }
    return NULL;
}

static void *environment(void *x) {
    char k[48];
    for (int i = 0; i < 4000; i++) {
        snprintf(k, sizeof k, "BRAID_RACE_%ld_%d", (long)x, i);
        setenv(k, "x", 1);
        if (i % 3 == 0)
            unsetenv(k);
        setenv("BRAID_MPTCP_SCOPE", i % 2 ? "listen" : "none", 1);
    }
    return NULL;
}

static int race(void) {
    pthread_t t[5];
    for (long i = 0; i < 5; i++)
        if (pthread_create(&t[i], NULL, i < 3 ? sockets : environment, (void *)i))
            die("pthread_create");
    for (int i = 0; i < 5; i++)
        pthread_join(t[i], NULL);
    setenv("BRAID_MPTCP_SCOPE", "listen", 1);
    struct sockaddr_in a;
    int l = listener(IPPROTO_MPTCP, &a);
    int c = socket(AF_INET, SOCK_STREAM, 0);
    if (c < 0 || connect(c, (void *)&a, sizeof a))
        die("connect");
    printf("done=1 proto_after_setenv=%d\n", geti(c, SOL_SOCKET, SO_PROTOCOL));
    (void)l;
    return 0;
}

/* A socket with two descriptors (dup, F_DUPFD) or shared with a child
 * process is one socket: it is never replaced under one of its numbers. */
static int shared(void) {
    struct sockaddr_in a;
    int l = listener(IPPROTO_MPTCP, &a);
    int s = socket(AF_INET, SOCK_STREAM, 0), d = dup(s);
    if (s < 0 || d < 0 || connect(s, (void *)&a, sizeof a))
        die("dup");
    int f = socket(AF_INET, SOCK_STREAM, 0), f2 = fcntl(f, F_DUPFD_CLOEXEC, 100);
    if (f < 0 || f2 < 0 || connect(f, (void *)&a, sizeof a))
        die("F_DUPFD");
    int k = socket(AF_INET, SOCK_STREAM, 0), go[2];
    if (k < 0 || pipe(go))
        die("fork setup");
    pid_t child = fork();
    if (child < 0)
        die("fork");
    if (child == 0) {
        char b;
        (void)!read(go[0], &b, 1); /* holds k until the parent connected it */
        _exit(0);
    }
    if (connect(k, (void *)&a, sizeof a))
        die("connect after fork");
    (void)!write(go[1], "x", 1);
    waitpid(child, NULL, 0);
    int n = socket(AF_INET, SOCK_STREAM, 0);
    if (n < 0 || connect(n, (void *)&a, sizeof a))
        die("connect new");
    printf("dup_proto=%d dup_same=%d fdup_proto=%d fdup_same=%d fork_proto=%d new_proto=%d\n",
           geti(s, SOL_SOCKET, SO_PROTOCOL), cookie(s) == cookie(d),
           geti(f, SOL_SOCKET, SO_PROTOCOL), cookie(f) == cookie(f2),
           geti(k, SOL_SOCKET, SO_PROTOCOL), geti(n, SOL_SOCKET, SO_PROTOCOL));
    (void)l;
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc >= 3 && !strcmp(argv[1], "opts"))
        return opts(argv[2], argc > 3 && !strcmp(argv[3], "refuse"));
    if (argc == 4 && !strcmp(argv[1], "bindip"))
        return bindip(argv[2], atoi(argv[3]));
    if (argc == 2 && !strcmp(argv[1], "epoll"))
        return epoll_mode();
    if (argc == 2 && !strcmp(argv[1], "connected"))
        return connected();
    if (argc == 2 && !strcmp(argv[1], "shared"))
        return shared();
    if (argc == 2 && !strcmp(argv[1], "race"))
        return race();
    fprintf(stderr, "usage: probe opts DEV [refuse] | bindip IP NOPORT | epoll | connected | shared | race\n");
    return 2;
}
"#;

/// The probe, compiled once per content into Cargo's test scratch dir;
/// None (the test is skipped, and says so) without a C compiler.
fn probe() -> Option<PathBuf> {
    static PROBE: OnceLock<Option<PathBuf>> = OnceLock::new();
    PROBE
        .get_or_init(|| {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            PROBE_C.hash(&mut h);
            let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
            let bin = dir.join(format!("braid-preload-probe-{:016x}", h.finish()));
            if bin.exists() {
                return Some(bin);
            }
            let tmp = dir.join(format!("braid-preload-probe-{}", std::process::id()));
            let c = tmp.with_extension("c");
            std::fs::write(&c, PROBE_C).unwrap();
            let out = Command::new("cc")
                .args(["-O2", "-Wall", "-pthread", "-o"])
                .arg(&tmp)
                .arg(&c)
                .output();
            let _ = std::fs::remove_file(&c);
            let out = match out {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("skip: no C compiler to build the preload probe (cc: {e})");
                    return None;
                }
            };
            assert!(
                out.status.success(),
                "the probe does not compile: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            // Atomic: parallel test processes may compile it too.
            std::fs::rename(&tmp, &bin).unwrap();
            Some(bin)
        })
        .clone()
}

/// `cargo test -p braid` does not rebuild the preload library, which
/// `braid run` takes from next to the binary: fail clearly when that copy
/// is older than its sources rather than test stale code.
fn assert_preload_is_fresh() {
    let lib = Path::new(BRAID).with_file_name("libbraid_preload.so");
    let built = std::fs::metadata(&lib)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("{}: {e}; run cargo build --workspace", lib.display()));
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../braid-preload/src");
    for f in std::fs::read_dir(&src).unwrap() {
        let f = f.unwrap().path();
        let changed = std::fs::metadata(&f).unwrap().modified().unwrap();
        assert!(
            changed <= built,
            "{} is newer than {}: run cargo build --workspace",
            f.display(),
            lib.display()
        );
    }
}

/// `braid -n NS run FLAGS -- probe ARGS` in a fresh namespace; the facts
/// it printed. None when the probe cannot be built.
fn run_probe(tag: &str, flags: &[&str], args: &[&str]) -> Option<HashMap<String, String>> {
    let probe = probe()?;
    assert_preload_is_fresh();
    let ns = Netns::new(tag);
    let out = Command::new(BRAID)
        .args(["-n", &ns.name, "run"])
        .args(flags)
        .arg("--")
        .arg(&probe)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "probe {args:?} under braid run {flags:?}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Some(
        stdout
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

/// Assert `facts` has each `key=value` of `want`.
fn assert_facts(facts: &HashMap<String, String>, want: &str, context: &str) {
    for kv in want.split_whitespace() {
        let (k, v) = kv.split_once('=').unwrap();
        assert_eq!(
            facts.get(k).map(String::as_str),
            Some(v),
            "{context}: {k} (all: {facts:?})"
        );
    }
}

#[test]
fn preload_reads_its_environment_once_and_survives_setenv_races() {
    // Threads open sockets while others setenv/unsetenv (which reallocates
    // the environment under a reader); the scope read at start still holds
    // after the program changes BRAID_MPTCP_SCOPE.
    for flags in [&["--connect-only"][..], &[][..]] {
        let Some(f) = run_probe("pre", flags, &["race"]) else {
            return;
        };
        assert_facts(&f, "done=1 proto_after_setenv=262", &format!("{flags:?}"));
    }
}

#[test]
fn preload_replays_every_option_set_before_connect() {
    let Some(f) = run_probe("pro", &["--connect-only"], &["opts", "lo"]) else {
        return;
    };
    // SO_RCVBUF reads back doubled; O_NONBLOCK and FD_CLOEXEC kept too.
    let options = "dev=lo mark=42 tos=32 rcvtimeo=7 sndtimeo=9 nodelay=1 keepalive=1 \
                   rcvbuf=100000 nonblock=1 cloexec=1 echo=1";
    assert_facts(&f, &format!("proto=262 mptcp=1 {options}"), "MPTCP");
    // An option MPTCP refuses (TCP_USER_TIMEOUT): the socket stays TCP,
    // whole, rather than MPTCP without it.
    let f = run_probe("pro", &["--connect-only"], &["opts", "lo", "refuse"]).unwrap();
    assert_facts(
        &f,
        &format!("proto=6 mptcp=0 user_timeout=5000 {options}"),
        "kept TCP",
    );
}

#[test]
fn preload_keeps_an_address_bound_with_port_zero() {
    // Port 0 picked at bind() (kept, the program may have told a peer), or
    // only at connect() with IP_BIND_ADDRESS_NO_PORT: the address stays.
    let Some(f) = run_probe("pba", &["--connect-only"], &["bindip", "127.0.0.2", "0"]) else {
        return;
    };
    assert_facts(
        &f,
        "proto=262 mptcp=1 ip=127.0.0.2 same_port=1 echo=1",
        "bind",
    );
    let f = run_probe("pba", &["--connect-only"], &["bindip", "127.0.0.2", "1"]).unwrap();
    assert_facts(
        &f,
        "proto=262 mptcp=1 ip=127.0.0.2 port_before=0 echo=1",
        "IP_BIND_ADDRESS_NO_PORT",
    );
}

#[test]
fn preload_keeps_epoll_registered_sockets_working() {
    let Some(f) = run_probe("pep", &["--connect-only"], &["epoll"]) else {
        return;
    };
    // Added to epoll before connect(): stays TCP, its events still come.
    assert_facts(&f, "early_proto=6 early_events=1 early_echo=1", "before");
    // Added after connect(): MPTCP, and epoll works on it.
    assert_facts(
        &f,
        "late_proto=262 late_events=1 late_mptcp=1 late_echo=1",
        "after",
    );
}

#[test]
fn preload_never_replaces_a_socket_in_use() {
    let (eisconn, einval) = (libc::EISCONN.to_string(), libc::EINVAL.to_string());
    for flags in ["--listen-only", "--connect-only"] {
        let Some(f) = run_probe("piu", &[flags], &["connected"]) else {
            return;
        };
        // connect() on an accepted socket, listen() on a connected one:
        // the kernel's error, on the same socket, still connected.
        assert_facts(
            &f,
            &format!(
                "accepted_connect={eisconn} accepted_same=1 connected_listen={einval} \
                 connected_same=1 echo=1"
            ),
            flags,
        );
        // connect() again on a socket that stayed TCP, once connected.
        assert_facts(
            &f,
            &format!("kept_proto=6 kept_third={eisconn} kept_same=1 kept_echo=1"),
            flags,
        );
    }
}

#[test]
fn preload_leaves_shared_sockets_alone() {
    let Some(f) = run_probe("psh", &["--connect-only"], &["shared"]) else {
        return;
    };
    // dup(), F_DUPFD and fork() make one socket with two descriptors:
    // replacing it under one number would split it.
    assert_facts(
        &f,
        "dup_proto=6 dup_same=1 fdup_proto=6 fdup_same=1 fork_proto=6 new_proto=262",
        "shared",
    );
}
