//! `braid check` against lab servers over emulated paths (10 ms each way,
//! so 20 ms RTT, or BRAID_CHECK_DELAY): an MPTCP server, a plain TCP one,
//! an MPTCP one with the C flag (net.mptcp.allow_join_initial_addr_port =
//! 0), MPTCP behind a middlebox that strips the MPTCP option (nf_tables,
//! built by braid-kernel: no `nft` binary needed) on later packets
//! (fallback after MP_CAPABLE) and on every packet (no MP_CAPABLE), and
//! the C flag with a second address announced. Each check's duration is
//! printed (`--nocapture`) for docs/benchmarks.md; no timed asserts.

mod common;
use common::BRAID;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_kernel::nft::{Chain, ChainKind, Hook, Match, Rule, Table, Verdict};

fn braid(args: &[&str]) -> std::process::Output {
    Command::new(BRAID).args(args).output().expect("run braid")
}

/// Removes the lab even if the test fails half way.
struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = braid(&["lab", "down", "--name", &self.0]);
    }
}

/// A listener in a namespace that accepts and holds connections until dropped.
struct Server {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Server {
    fn start(ns: &str, port: u16, mptcp: bool) -> Server {
        let stop = Arc::new(AtomicBool::new(false));
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns, flag) = (ns.to_string(), stop.clone());
        let thread = std::thread::spawn(move || {
            braid_kernel::netns::enter(&ns).unwrap();
            let addr = SocketAddr::from(([0, 0, 0, 0], port));
            let l: TcpListener = if mptcp {
                let (l, t) = braid_kernel::socket::listen(addr).unwrap();
                assert_eq!(t, braid_kernel::socket::Transport::Mptcp);
                l
            } else {
                TcpListener::bind(addr).unwrap()
            };
            l.set_nonblocking(true).unwrap();
            tx.send(()).unwrap();
            let mut held = Vec::new();
            while !flag.load(Ordering::SeqCst) {
                match l.accept() {
                    Ok((s, _)) => held.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(5))
            .expect("listener started");
        Server {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `braid -n CLIENT --json check ADDR`: (exit code, JSON, wall time).
fn check(client: &str, target: &str) -> (i32, serde_json::Value, Duration) {
    let t0 = Instant::now();
    let out = braid(&["-n", client, "--json", "check", target]);
    let took = t0.elapsed();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "check {target}: not JSON ({e}): {} / {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v, took)
}

/// The same as [`check`], as user nobody (no CAP_NET_ADMIN: no events).
fn check_unprivileged(client: &str, target: &str) -> (i32, serde_json::Value) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let ns = std::fs::File::open(format!("/run/netns/{client}")).expect("namespace file");
    let fd = ns.as_raw_fd();
    let mut cmd = Command::new(BRAID);
    cmd.args(["--json", "check", target]);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0
                || libc::setgroups(0, std::ptr::null()) != 0
                || libc::setgid(65534) != 0
                || libc::setuid(65534) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let out = cmd.output().expect("run braid as nobody");
    let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "unprivileged check: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

fn strip_table(ports: &[(u16, bool)]) -> Table {
    // (port, only after the SYN): a middlebox on the server's side that
    // removes TCP option 30 (MPTCP) from the client's packets.
    let rules = ports
        .iter()
        .map(|(port, after_syn)| {
            let mut matches = vec![
                Match::Protocol { number: 6 },
                Match::DestinationPort { port: *port },
            ];
            if *after_syn {
                matches.push(Match::TcpFlags {
                    mask: 0x02,
                    value: 0,
                });
            }
            Rule {
                matches,
                verdict: Verdict::StripTcpOption { kind: 30 },
                comment: format!("strip MPTCP to port {port}"),
            }
        })
        .collect();
    Table {
        name: "braidcheck".into(),
        chains: vec![Chain {
            name: "strip".into(),
            hook: Hook::Prerouting,
            kind: ChainKind::Filter,
            priority: -300,
            rules,
        }],
    }
}

#[test]
fn verdicts_of_four_kinds_of_server() {
    let name = format!("tc{}", std::process::id() % 100_000);
    let _down = Down(name.clone());
    // One-way delay per path (RTT = 2 x delay); BRAID_CHECK_DELAY=50ms for
    // benchmark figures at a longer RTT.
    let delay = std::env::var("BRAID_CHECK_DELAY").unwrap_or_else(|_| "10ms".into());
    let delays = format!("{delay},{delay}");
    let up = braid(&[
        "--json", "lab", "up", "--name", &name, "--paths", "2", "--delay", &delays,
    ]);
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let (client, server) = (format!("{name}-c"), format!("{name}-s"));
    let server_addr = st["paths"][0]["server_addr"].as_str().unwrap().to_string();
    let second = st["paths"][1]["client_addr"].as_str().unwrap().to_string();
    // The client's second path as a subflow endpoint, as braidd would make it.
    let ok = |args: &[&str]| {
        let out = braid(args);
        assert!(
            out.status.success(),
            "braid {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ok(&[
        "-n", &client, "endpoint", "add", &second, "dev", "p1", "subflow",
    ]);
    ok(&["-n", &client, "limits", "set", "subflows", "2"]);

    let (p_mptcp, p_tcp, p_strip_late, p_strip_all) = (8001u16, 8002u16, 8003u16, 8004u16);
    let _servers = [
        Server::start(&server, p_mptcp, true),
        Server::start(&server, p_tcp, false),
        Server::start(&server, p_strip_late, true),
        Server::start(&server, p_strip_all, true),
    ];
    let target = |p: u16| format!("{server_addr}:{p}");
    let mut timings = Vec::new();

    // 1. MPTCP: yes, and the second path joins.
    let (code, v, took) = check(&client, &target(p_mptcp));
    timings.push(("mptcp", took, v.clone()));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["verdict"]["mptcp"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["join"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["c_flag"], "no", "{v:#}");
    assert_eq!(v["verdict"]["announced"], 0, "{v:#}");

    // Without CAP_NET_ADMIN there are no events: the join still shows in
    // MPTCP_FULL_INFO, the C flag and announcements are unknown.
    let (code, v) = check_unprivileged(&client, &target(p_mptcp));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["verdict"]["mptcp"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["join"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["c_flag"], "unknown", "{v:#}");
    assert!(v["observations"]["events_unavailable"].is_string(), "{v:#}");

    // 2. Plain TCP: no MP_CAPABLE.
    let (code, v, took) = check(&client, &target(p_tcp));
    timings.push(("plain-tcp", took, v.clone()));
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["verdict"]["mptcp"], "no_plain_tcp", "{v:#}");

    // 3. The C flag: MPTCP, but no join to the first address.
    let set_cflag = |value: &str| {
        let (s, value) = (server.clone(), value.to_string());
        braid_kernel::netns::run_in(&s, move || {
            braid_kernel::sysctl::write("allow_join_initial_addr_port", &value)
        })
        .unwrap();
    };
    set_cflag("0");
    let (code, v, took) = check(&client, &target(p_mptcp));
    set_cflag("1");
    timings.push(("c-flag", took, v.clone()));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["verdict"]["mptcp"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["c_flag"], "yes", "{v:#}");
    assert_ne!(v["verdict"]["join"], "yes", "{v:#}");
    assert!(
        v["verdict"]["summary"]
            .as_str()
            .unwrap()
            .contains("C flag on"),
        "{v:#}"
    );

    // 4. A middlebox that strips the MPTCP option.
    let table = strip_table(&[(p_strip_late, true), (p_strip_all, false)]);
    let installed = {
        let (s, t) = (server.clone(), table.clone());
        braid_kernel::netns::run_in(&s, move || braid_kernel::nft::install(&t))
    };
    match installed {
        Err(e) => eprintln!(
            "SKIP the option-stripping middlebox: this kernel refused the nf_tables rule: {e}"
        ),
        Ok(()) => {
            let (code, v, took) = check(&client, &target(p_strip_late));
            timings.push(("strip-after-syn", took, v.clone()));
            assert_eq!(code, 1, "{v:#}");
            assert_eq!(v["verdict"]["mptcp"], "no_fell_back", "{v:#}");
            assert_eq!(v["observations"]["mp_capable"], true, "{v:#}");

            let (code, v, took) = check(&client, &target(p_strip_all));
            timings.push(("strip-all", took, v.clone()));
            assert_eq!(code, 1, "{v:#}");
            assert_eq!(v["verdict"]["mptcp"], "no_plain_tcp", "{v:#}");
        }
    }

    // 5. The C flag with another address announced: the join goes there.
    let server_second = st["paths"][1]["server_addr"].as_str().unwrap().to_string();
    ok(&[
        "-n",
        &server,
        "endpoint",
        "add",
        &server_second,
        "dev",
        "p1",
        "signal",
    ]);
    ok(&["-n", &server, "limits", "set", "subflows", "2"]);
    set_cflag("0");
    let (code, v, took) = check(&client, &target(p_mptcp));
    set_cflag("1");
    timings.push(("c-flag+announce", took, v.clone()));
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["verdict"]["c_flag"], "yes", "{v:#}");
    assert_eq!(v["verdict"]["announced"], 1, "{v:#}");
    assert_eq!(v["verdict"]["join"], "yes", "{v:#}");
    assert_eq!(
        v["observations"]["joins"][0]["remote"],
        format!("{server_second}:{p_mptcp}"),
        "{v:#}"
    );

    for (kind, took, v) in &timings {
        eprintln!(
            "check {kind:<16} wall {:>7.1} ms, reported {:>7.1} ms (connect {} ms, RTT {} ms): {}",
            took.as_secs_f64() * 1e3,
            v["observations"]["total_ms"].as_f64().unwrap_or(f64::NAN),
            v["observations"]["connect_ms"],
            v["observations"]["rtt_ms"],
            v["verdict"]["summary"].as_str().unwrap_or("?")
        );
    }
}

#[test]
fn bad_input_and_unreachable_servers_exit_2_with_a_reason() {
    let ns = common::Netns::new("chk");
    ns.ip(&["addr", "add", "10.9.0.1/24", "dev", "lo"]);
    for (target, words) in [
        ("host:0", "not a port"),
        ("host:http", "not a port"),
        ("[::1", "closing ']'"),
        ("", "no host"),
        ("10.9.0.1:9", "refused"),
        ("nonexistent.invalid", "cannot resolve"),
    ] {
        let out = ns.braid(&["check", "--timeout", "500ms", target]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{target}: {err}");
        assert!(err.contains(words), "{target}: {err}");
    }
    // Unroutable: no answer within the timeout.
    let out = ns.braid(&["check", "--timeout", "300ms", "192.0.2.1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("unreachable") || err.contains("no answer"),
        "{err}"
    );
}

/// Kills a child process on drop.
struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn relay_answers_a_known_client_only() {
    let name = format!("tr{}", std::process::id() % 100_000);
    let _down = Down(name.clone());
    let up = braid(&[
        "--json",
        "lab",
        "up",
        "--name",
        &name,
        "--paths",
        "2",
        "--delay",
        "10ms,10ms",
    ]);
    assert!(
        up.status.success(),
        "lab up: {}",
        String::from_utf8_lossy(&up.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&up.stdout).unwrap();
    let (client, server) = (format!("{name}-c"), format!("{name}-s"));
    let server_addr = st["paths"][0]["server_addr"].as_str().unwrap().to_string();
    let dir = std::env::temp_dir().join(common::unique("chkrelay"));
    std::fs::create_dir_all(&dir).unwrap();
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let keygen = |file: &str| {
        let path = dir.join(file);
        let out = braid(&["relay", "keygen", "--out", path.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        (
            path,
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let (relay_key, relay_pub) = keygen("relay.key");
    let (client_key, client_pub) = keygen("client.key");
    let (stranger_key, _) = keygen("stranger.key");
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[relay.server]\nlisten = [\"0.0.0.0:7000\"]\nkey_file = \"{}\"\ncontrol_socket = \"{}\"\n\n[[relay.server.client]]\nname = \"laptop\"\npublic_key = \"{client_pub}\"\n",
            relay_key.display(),
            dir.join("relay.sock").display()
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("relay.log")).unwrap();
    let _relay = Child(
        Command::new(BRAID)
            .args(["-n", &server, "relay", "serve", "-c", cfg.to_str().unwrap()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let target = format!("{server_addr}:7000");
    let listening = common::wait_for(10, || {
        let t = target.clone();
        common::in_ns(&client, move || {
            std::net::TcpStream::connect_timeout(&t.parse().unwrap(), Duration::from_millis(200))
                .is_ok()
        })
    });
    assert!(
        listening,
        "relay did not start: {}",
        std::fs::read_to_string(dir.join("relay.log")).unwrap_or_default()
    );
    let run = |key: &std::path::Path| {
        let t0 = Instant::now();
        let out = braid(&[
            "-n",
            &client,
            "--json",
            "check",
            "--relay",
            "--relay-key",
            &relay_pub,
            "--key",
            key.to_str().unwrap(),
            &target,
        ]);
        let v: serde_json::Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
        (out.status.code().unwrap_or(-1), v, t0.elapsed())
    };
    let (code, v, took) = run(&client_key);
    eprintln!(
        "check --relay (known client) wall {:.1} ms: {}",
        took.as_secs_f64() * 1e3,
        v["relay"]
    );
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["relay"]["relay"], "answered", "{v:#}");
    assert_eq!(v["verdict"]["mptcp"], "yes", "{v:#}");
    let (code, v, _) = run(&stranger_key);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(v["relay"]["relay"], "silent", "{v:#}");
    // Bad keys are refused before anything is sent.
    let out = braid(&[
        "-n",
        &client,
        "check",
        "--relay",
        "--relay-key",
        "nonsense",
        "--key",
        client_key.to_str().unwrap(),
        &target,
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--relay-key"));
}
