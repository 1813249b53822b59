//! The lab against the real kernel: nothing is left behind by up/down, a
//! failed up, or an interrupted run; the emulator meets its accuracy goals at
//! a modest rate; every scenario runs in a short form with sane metrics.

mod common;
use common::{wait_for, BRAID};

use std::process::Command;

fn braid(args: &[&str]) -> std::process::Output {
    Command::new(BRAID).args(args).output().expect("run braid")
}

fn ok_json(args: &[&str]) -> serde_json::Value {
    let out = braid(args);
    assert!(
        out.status.success(),
        "braid {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON output")
}

/// A lab run whose connection is MPTCP. With 10 % loss on the primary,
/// three failed handshakes in a row (about 1 run in 150) make the kernel
/// give up on MPTCP and connect with plain TCP
/// (`net.mptcp.syn_retrans_before_tcp_fallback`; seen in CI, 2026-11-28):
/// such a run, which the report names "tcp (fell back)", cannot show what a
/// path manager does, so it is made again, up to three times. `before`
/// runs ahead of each try (a fresh logs directory).
fn mptcp_run(args: &[&str], before: &dyn Fn()) -> serde_json::Value {
    for attempt in 1..=3 {
        before();
        let v = ok_json(args);
        let transport = v[0]["transport"].as_str().unwrap_or("").to_string();
        if transport != "tcp (fell back)" {
            return v;
        }
        eprintln!("braid {args:?}: try {attempt} fell back to TCP in the handshake; again");
    }
    panic!("braid {args:?}: the connection fell back to TCP three times in a row")
}

/// Timing-sensitive tests take turns so they do not disturb each other on
/// a 2-core machine.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY.lock().unwrap_or_else(|e| e.into_inner())
}

fn lab_name(tag: &str) -> String {
    format!("t{}{tag}", std::process::id() % 100_000)
}

fn namespaces() -> Vec<String> {
    braid_kernel::netns::list()
}

fn emulators_of(name: &str) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains("lab emulate") && c.contains(&format!("/{name}/")) {
                n += 1;
            }
        }
    }
    n
}

fn assert_gone(name: &str) {
    assert!(
        !namespaces()
            .iter()
            .any(|n| n.starts_with(&format!("{name}-"))),
        "namespaces left: {:?}",
        namespaces()
    );
    assert_eq!(emulators_of(name), 0, "emulator process left for {name}");
    assert!(
        !std::path::Path::new(&format!("/run/braid/lab/{name}")).exists(),
        "state left for {name}"
    );
}

/// Whether a UDP datagram sent from `from` (in namespace `from_ns`) reaches
/// `to` (in `to_ns`) within 500 ms: a few are sent, one is enough.
fn udp_crosses(from_ns: &str, from: std::net::IpAddr, to_ns: &str, to: std::net::IpAddr) -> bool {
    use std::net::{SocketAddr, UdpSocket};
    let bind = |ns: &str, ip: std::net::IpAddr| {
        braid_kernel::netns::run_in(ns, move || {
            UdpSocket::bind(SocketAddr::new(ip, 0))
                .map_err(|e| braid_kernel::Error::io(braid_kernel::error::Op::Socket, e))
        })
        .unwrap()
    };
    let rx = bind(to_ns, to);
    let tx = bind(from_ns, from);
    rx.set_read_timeout(Some(std::time::Duration::from_millis(100)))
        .unwrap();
    let dest = rx.local_addr().unwrap();
    let mut buf = [0u8; 16];
    for _ in 0..5 {
        let _ = tx.send_to(b"crossing", dest);
        if rx.recv(&mut buf).is_ok() {
            return true;
        }
    }
    false
}

/// Removes the lab even if the test fails half way.
struct Down(String);
impl Drop for Down {
    fn drop(&mut self) {
        let _ = braid(&["lab", "down", "--name", &self.0]);
    }
}

#[test]
fn up_and_down_leave_nothing_behind() {
    let name = lab_name("ud");
    let _down = Down(name.clone());
    let st = ok_json(&[
        "--json",
        "lab",
        "up",
        "--name",
        &name,
        "--paths",
        "3",
        "--rate",
        "10mbit",
        "--delay",
        "1ms,2ms,3ms",
    ]);
    assert_eq!(st["paths"].as_array().unwrap().len(), 3);
    let client = format!("{name}-c");
    assert!(namespaces().contains(&client));
    assert_eq!(emulators_of(&name), 1);
    let links = braid_kernel::netns::run_in(&client, braid_kernel::rtnl::links).unwrap();
    for dev in ["p0", "p1", "p2"] {
        let l = links
            .iter()
            .find(|l| l.name == dev)
            .unwrap_or_else(|| panic!("{dev} missing"));
        assert!(l.up && l.carrier, "{dev} should be up with carrier");
    }
    // A second lab with the same name is refused and breaks nothing.
    let again = braid(&["lab", "up", "--name", &name]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already up"));
    assert_eq!(emulators_of(&name), 1);
    // Live changes work on the running lab. A carrier cut is a cable
    // pulled at the client's end: its device loses carrier, the server's
    // keeps it (a far server does not see the client's cable go), and the
    // path carries nothing either way, although a TUN device without
    // carrier would still take what is written to it.
    let server = format!("{name}-s");
    let addr = |k: usize, side: &str| -> std::net::IpAddr {
        st["paths"][k][side].as_str().unwrap().parse().unwrap()
    };
    let (c1, s1) = (addr(1, "client_addr"), addr(1, "server_addr"));
    assert!(
        udp_crosses(&server, s1, &client, c1),
        "path 1 carries before the cut"
    );
    assert!(braid(&["lab", "cut", "1", "--name", &name, "--carrier"])
        .status
        .success());
    let links = braid_kernel::netns::run_in(&client, braid_kernel::rtnl::links).unwrap();
    assert!(!links.iter().find(|l| l.name == "p1").unwrap().carrier);
    let links = braid_kernel::netns::run_in(&server, braid_kernel::rtnl::links).unwrap();
    assert!(links.iter().find(|l| l.name == "p1").unwrap().carrier);
    assert!(
        !udp_crosses(&server, s1, &client, c1),
        "server to client after the cut"
    );
    assert!(
        !udp_crosses(&client, c1, &server, s1),
        "client to server after the cut"
    );
    assert!(braid(&["lab", "restore", "1", "--name", &name])
        .status
        .success());
    assert!(
        udp_crosses(&server, s1, &client, c1),
        "path 1 carries once restored"
    );
    assert!(braid(&["lab", "addr", "2", "--name", &name, "--remove"])
        .status
        .success());
    assert!(
        braid(&["lab", "set", "0", "--name", &name, "--delay", "5ms", "--loss", "1%"])
            .status
            .success()
    );
    let bad = braid(&["lab", "set", "7", "--name", &name, "--delay", "5ms"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no path 7"));
    assert!(braid(&["lab", "down", "--name", &name]).status.success());
    assert_gone(&name);
    let twice = braid(&["lab", "down", "--name", &name]);
    assert!(
        !twice.status.success() && String::from_utf8_lossy(&twice.stderr).contains("no lab named")
    );
}

#[test]
fn bad_lab_arguments_are_clear_errors() {
    for (command, expect) in [
        ("lab up --name Bad_Name", "invalid lab name"),
        ("lab up --name x1 --rate fast", "invalid rate"),
        (
            "lab up --name x1 --delay 1ms,2ms,3ms",
            "3 values but there are 2 paths",
        ),
        ("lab up --name x1 --loss 120%", "out of range"),
        (
            "lab up --name x1 --lose-mp-prio many,0",
            "invalid --lose-mp-prio 'many'",
        ),
        ("lab run nosuch", "unknown scenario"),
        ("lab run aggregate --pm magic", "unknown path manager"),
        ("lab cut 0 --name nolab --carrier", "no lab named"),
        ("lab cut 0 --name nolab", "--carrier or --blackhole"),
        (
            "lab run aggregate --client-sysctl tcp_rmem",
            "expected NAME=VALUE",
        ),
        (
            "lab run aggregate --server-sysctl ../../etc=1",
            "not a sysctl name",
        ),
        (
            "lab run aggregate --duration 2s --client-sysctl net.ipv4.no_such=1",
            "no sysctl net.ipv4.no_such",
        ),
        (
            "lab run aggregate --cc ../x",
            "not a congestion control's name",
        ),
        (
            "lab run aggregate --duration 2s --cc nosuchcc",
            "cannot use congestion control 'nosuchcc'",
        ),
        (
            "lab run aggregate --pm braid --policy stall_ms",
            "--policy 'stall_ms': no '='",
        ),
        (
            "lab run aggregate --pm braid --policy no_such=1",
            "--policy no_such=1: unknown field `no_such`",
        ),
        (
            "lab run aggregate --pm braid --policy standby_initcwnd=1000",
            "policy.standby_initcwnd': must be between 0",
        ),
        (
            "lab run aggregate --pm braid --policy mode=\"handover\"",
            "the mode is the path manager's",
        ),
        (
            "lab run aggregate --policy stall_ms=150",
            "no path manager given runs it (--pm kernel)",
        ),
    ] {
        // No argument here holds a space.
        let args: Vec<&str> = command.split_whitespace().collect();
        let out = braid(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(expect),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"));
    }
    assert!(!namespaces().iter().any(|n| n.starts_with("x1-")));
}

#[test]
fn interrupted_run_removes_its_lab() {
    let _turn = heavy();
    let mut child = Command::new(BRAID)
        .args([
            "lab",
            "run",
            "aggregate",
            "--pm",
            "kernel",
            "--duration",
            "30s",
        ])
        .stderr(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let prefix = format!("r{}x0", child.id() % 1_000_000);
    assert!(
        wait_for(15, || namespaces().iter().any(|n| n.starts_with(&prefix))),
        "the run's lab never appeared"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    assert_gone(&prefix);
}

#[test]
fn emulator_delay_and_loss_within_tolerance() {
    let _turn = heavy();
    let r = ok_json(&[
        "--json",
        "lab",
        "bench-emulator",
        "--rate",
        "20mbit",
        "--packets",
        "5000",
        "--delay",
        "10ms",
        "--loss",
        "10%",
    ]);
    let err = r["delay_error_ms"].as_f64().unwrap();
    assert!(err.abs() < 1.0, "mean added delay off by {err} ms: {r:#}");
    let rel = r["loss_error_relative"].as_f64().unwrap();
    assert!(
        rel.abs() < 0.2,
        "loss off by {:.0}% relative: {r:#}",
        rel * 100.0
    );
}

fn scenario(name: &str) -> serde_json::Value {
    let v = ok_json(&[
        "--json",
        "lab",
        "run",
        name,
        "--pm",
        "kernel",
        "--duration",
        "3s",
    ]);
    let r = v[0].clone();
    assert_eq!(r["bytes_corrupt"], 0, "{name}: corrupt bytes: {r:#}");
    assert!(
        r["bytes_verified"].as_u64().unwrap() > 0,
        "{name}: nothing verified"
    );
    r
}

#[test]
fn scenarios_short_form_with_kernel_pm() {
    let _turn = heavy();
    let agg = scenario("aggregate");
    let ratio = agg["metrics"]["aggregation_ratio"].as_f64().unwrap();
    assert!(
        ratio > 0.5,
        "two paths up must beat one path's share: {ratio}"
    );
    assert_eq!(agg["survived"], true);
    let per_path = agg["metrics"]["per_path_mbps"].as_array().unwrap();
    assert!(
        per_path.iter().all(|v| v.as_f64().unwrap() > 1.0),
        "both paths carry data: {per_path:?}"
    );

    let fc = scenario("failover-carrier");
    assert_eq!(
        fc["survived"], true,
        "a second subflow exists, so it survives: {fc:#}"
    );
    assert!(fc["metrics"]["stall_ms"].as_f64().is_some());

    let fb = scenario("failover-blackhole");
    assert_eq!(fb["survived"], true, "{fb:#}");

    let late = scenario("late-interface");
    // The kernel alone never opens the late path, so losing the first kills it.
    assert_eq!(late["survived"], false, "{late:#}");
    assert!(late["metrics"]["new_path_ms"].is_null());

    let flap = scenario("flap");
    assert_eq!(flap["survived"], true, "{flap:#}");

    let lossy = scenario("lossy-primary");
    let probe = &lossy["metrics"]["probe"];
    assert!(probe["replies"].as_u64().unwrap() > 50, "{probe:#}");
    assert!(probe["p99_ms"].as_f64().unwrap() >= probe["p50_ms"].as_f64().unwrap());
    // Without --loss the primary is the lossy one; an explicit 0 is a clean
    // control, and --cc sets the congestion control the report names.
    assert_eq!(lossy["paths"][0]["loss"], 0.1, "{lossy:#}");
    let clean = scenario_with(
        "lossy-primary",
        "kernel",
        &["--loss", "0,0", "--cc", "reno", "--seed", "5"],
    );
    assert_eq!(clean["paths"][0]["loss"], 0.0, "{clean:#}");
    assert_eq!(clean["congestion_control"], "reno", "{clean:#}");
    assert_eq!(clean["seed"], 5, "{clean:#}");
}

fn scenario_with(name: &str, pm: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["--json", "lab", "run", name, "--pm", pm, "--duration", "4s"];
    args.extend_from_slice(extra);
    let v = mptcp_run(&args, &|| {});
    let r = v[0].clone();
    assert_eq!(r["bytes_corrupt"], 0, "{name} {pm}: corrupt bytes: {r:#}");
    r
}

#[test]
fn braid_modes_short_form() {
    let _turn = heavy();
    // Aggregate daemon: the late path is picked up and the connection survives.
    let late = scenario_with("late-interface", "braid", &[]);
    assert_eq!(late["survived"], true, "{late:#}");
    assert!(
        late["metrics"]["new_path_ms"].as_f64().is_some(),
        "{late:#}"
    );
    // Handover: the standby path takes over when the primary loses carrier.
    // With a policy setting of the run's own (--policy), which reaches the
    // daemon and the report.
    let logs = std::env::temp_dir().join(format!("braid-policy-logs-{}", std::process::id()));
    let ho = scenario_with(
        "failover-carrier",
        "braid:handover",
        &[
            "--policy",
            "standby_initcwnd=12",
            "--logs",
            logs.to_str().unwrap(),
        ],
    );
    let daemon_log =
        std::fs::read_to_string(logs.join("braid-handover-braid-daemon.log")).unwrap_or_default();
    let _ = std::fs::remove_dir_all(&logs);
    assert!(
        daemon_log.contains("set initcwnd 12 on default routes"),
        "{daemon_log}"
    );
    assert_eq!(
        ho["policy"],
        serde_json::json!(["standby_initcwnd = 12"]),
        "{ho:#}"
    );
    assert_eq!(ho["survived"], true, "{ho:#}");
    assert!(
        ho["metrics"]["per_path_mbps"][1].as_f64().unwrap() > 1.0,
        "{ho:#}"
    );
    // Handover on a silent blackhole, detected from the client's own sending.
    let bh = scenario_with("failover-blackhole", "braid:handover", &["--upload"]);
    assert_eq!(bh["survived"], true, "{bh:#}");
    // Interactive leaves the lossy primary: the median latency becomes the
    // clean path's RTT (2 x 40 ms), not the lossy one's.
    let lp = scenario_with("lossy-primary", "braid:interactive", &[]);
    let p50 = lp["metrics"]["probe"]["p50_ms"].as_f64().unwrap();
    assert!(
        p50 > 70.0,
        "interactive should move to path 1: p50 {p50} ms"
    );
}

/// A backup flag the peer never heard, its MP_PRIO lost on purpose by the
/// emulator (`--lose-mp-prio`), is told again: by the host-wide policy
/// (its endpoint flipped and back) and by the per-connection one (the
/// same flag set again). The server's kernel hears it: its last
/// sub_priority event for the lossy subflow says backup. Or, when data
/// on the lossy path waited for an ACK after the switch, interactive
/// closed that path's subflows (`note_lossy_waits`): their re-created
/// subflow joins as a backup, and the server's last word on it, its
/// sub_established, says so.
#[test]
fn a_backup_flag_whose_mp_prio_is_lost_is_told_again() {
    let _turn = heavy();
    for pm in ["braid:interactive", "braid-conn:interactive"] {
        let dir = std::env::temp_dir().join(format!(
            "braid-lost-prio-{}-{}",
            std::process::id(),
            pm.replace(':', "-")
        ));
        let logs = dir.to_str().unwrap();
        let v = mptcp_run(
            &[
                "--json",
                "lab",
                "run",
                "lossy-primary",
                "--pm",
                pm,
                "--duration",
                "8s",
                "--lose-mp-prio",
                "1,0",
                "--logs",
                logs,
            ],
            &|| {
                let _ = std::fs::remove_dir_all(&dir);
            },
        );
        assert_eq!(v[0]["bytes_corrupt"], 0, "{pm}: {:#}", v[0]);
        let stem = pm.replace(':', "-");
        let log = std::fs::read_to_string(dir.join(format!("{stem}-braid-daemon.log")))
            .expect("the daemon's log");
        let events = std::fs::read_to_string(dir.join(format!("{stem}-server-events.jsonl")))
            .expect("the server's MPTCP events");
        let _ = std::fs::remove_dir_all(&dir);
        // The emulator loses p0's first MP_PRIO. If the daemon cleared
        // p0's flag before it first set it (a false verdict early in the
        // run, then a switch back), the one lost said "not a backup", and
        // the backup flag after it reached the server: nothing to tell
        // again (seen in CI, 2026-11-28). The server's last word is still
        // checked below.
        let cleared = log.find("set endpoint 10.1.0.1 id 1 flags 'subflow' ");
        let set = log.find("set endpoint 10.1.0.1 id 1 flags 'subflow backup'");
        let lost_was_backup = match (cleared, set) {
            (Some(c), Some(b)) => b < c,
            _ => true,
        };
        if lost_was_backup {
            assert!(
                log.contains("is a backup at this end, yet its peer sent")
                    || log.contains("was left for loss, and data on it has waited"),
                "{pm}: the lost flag was not told again, nor its subflow reopened:\n{log}"
            );
        } else {
            eprintln!(
                "{pm}: the lost MP_PRIO cleared p0's flag; the backup flag after it was not lost"
            );
        }
        let last = events
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .rfind(|e| {
                (e["kind"] == "sub_priority" || e["kind"] == "sub_established")
                    && e["daddr"] == "10.1.0.1"
            });
        assert_eq!(
            last.as_ref().map(|e| e["backup"].clone()),
            Some(serde_json::Value::Bool(true)),
            "{pm}: the server never heard p0's backup flag:\n{events}\n{log}"
        );
    }
}

/// A middlebox that drops MP_CAPABLE SYNs, made by the emulator: the
/// connection falls back to TCP after three, and the report says so and
/// that the kernel then turned active MPTCP off for the namespace (the
/// daemon's telling of it: `daemon.rs`).
#[test]
fn a_connection_the_kernel_made_plain_tcp_is_named_and_the_daemon_tells_why() {
    let _turn = heavy();
    let dir = std::env::temp_dir().join(format!("braid-mpc-syn-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let v = ok_json(&[
        "--json",
        "lab",
        "run",
        "lossy-primary",
        "--loss",
        "0,0",
        "--lose-mp-capable-syn",
        "3,0",
        "--pm",
        "braid:interactive",
        "--duration",
        "3s",
        "--logs",
        dir.to_str().unwrap(),
    ]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(v[0]["transport"], "tcp (fell back)", "{:#}", v[0]);
    assert_eq!(v[0]["bytes_corrupt"], 0, "{:#}", v[0]);
    assert_eq!(v[0]["client_fallbacks"]["Blackhole"], 1, "{:#}", v[0]);
    assert!(
        v[0]["client_fallbacks"]["MPCapableSYNTXDrop"]
            .as_u64()
            .is_some_and(|n| n >= 1),
        "{:#}",
        v[0]
    );
}

#[test]
fn a_small_sweep_runs_resumes_and_reports() {
    let _turn = heavy();
    let out = std::env::temp_dir().join(format!("braid-sweep-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let out_s = out.to_str().unwrap().to_string();
    let sweep = |extra: &[&str]| {
        let mut args = vec![
            "lab",
            "sweep",
            "--out",
            &out_s,
            "--delays",
            "1/10",
            "--loss",
            "0",
            "--faults",
            "blackhole,address",
            "--directions",
            "upload",
            "--pm",
            "kernel:backup,braid:handover",
            "--duration",
            "2s",
        ];
        args.extend_from_slice(extra);
        braid(&args)
    };
    let o = sweep(&["--repeat", "1"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let runs = || {
        std::fs::read_to_string(out.join("runs.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let first = runs();
    assert_eq!(first.len(), 4, "2 cells x 2 path managers");
    for r in &first {
        assert_eq!(r["bytes_corrupt"], 0, "{r}");
        assert!(r["stall_ms"].as_f64().is_some(), "{r}");
    }
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        table.contains("| blackhole upload 1/10 ms, 0% loss |"),
        "{table}"
    );
    assert!(table.contains("goal 1:"), "{table}");
    // Resumed: nothing is run again; a larger --repeat adds one round.
    let o = sweep(&["--repeat", "1"]);
    assert!(o.status.success());
    assert_eq!(runs().len(), 4);
    let o = sweep(&["--repeat", "2"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(runs().len(), 8);
    assert!(std::fs::read_to_string(out.join("heatmap.svg"))
        .unwrap()
        .contains("braid:handover"));
    assert!(out.join("summary.json").exists());
    // Bad grids are refused before anything runs.
    let bad = braid(&["lab", "sweep", "--out", &out_s, "--delays", "10"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("primary/secondary"));
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn down_without_a_state_file_still_stops_the_emulator() {
    // A script once wrote over a lab's state.json: the lab must still go
    // away whole, its emulator found by its command line.
    let name = lab_name("ns");
    let _down = Down(name.clone());
    assert!(braid(&["lab", "up", "--name", &name, "--rate", "none"])
        .status
        .success());
    assert_eq!(emulators_of(&name), 1);
    std::fs::write(
        format!("/run/braid/lab/{name}/state.json"),
        "{\"not\": \"a lab\"}",
    )
    .unwrap();
    assert!(braid(&["lab", "down", "--name", &name]).status.success());
    assert_gone(&name);
}
