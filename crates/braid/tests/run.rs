//! Unmodified programs over MPTCP with `braid run`: curl, python3 and
//! iperf3 in a two-path lab are MPTCP as seen from the server, with a second
//! subflow on the second path; the same programs fall back to TCP against a
//! plain TCP server; environment, exit codes and signals pass through;
//! `enable`/`disable` drop-ins; the BPF path is detected.

mod common;
use common::{wait_for, BRAID};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
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
