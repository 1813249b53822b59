//! `braid top --once` during a real two-path MPTCP transfer: the frame
//! shows the connection with both subflows, and fits 80 columns.

mod common;
use common::{wait_for, TwoPaths};
#[path = "common/daemon_kit.rs"]
mod daemon_kit;
use daemon_kit::{Daemon, Lab};

use std::io::{Read, Write};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

#[test]
fn once_shows_the_subflows_of_a_live_transfer_in_80x24() {
    let lab = TwoPaths::new("top");
    lab.client
        .braid_ok(&["endpoint", "add", "10.0.2.1", "dev", "c1", "subflow"]);
    let addr = TwoPaths::server_addr(5001);
    let stop = Arc::new(AtomicBool::new(false));

    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.server.spawn(move || {
        let (listener, _) = braid_kernel::socket::listen(addr).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        while s.read(&mut buf).map(|n| n > 0).unwrap_or(false) {}
    });
    ready_rx.recv().unwrap();
    let stop_c = stop.clone();
    let client = lab.client.spawn(move || {
        let (mut s, t) = braid_kernel::socket::connect(addr).unwrap();
        assert_eq!(t, braid_kernel::socket::Transport::Mptcp);
        let chunk = vec![7u8; 1 << 16];
        // Keep data flowing, gently, until the test is done.
        while !stop_c.load(Ordering::Relaxed) {
            if s.write_all(&chunk).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    });

    // Both subflows exist (the second joins once data was acknowledged).
    let both = wait_for(10, || {
        let c: serde_json::Value =
            serde_json::from_str(&lab.client.braid_ok(&["--json", "conns"])).unwrap();
        c[0]["subflows"].as_array().is_some_and(|s| s.len() == 2)
    });
    let frame = lab.client.braid_ok(&["top", "--once", "--size", "80x24"]);
    stop.store(true, Ordering::Relaxed);
    client.join().unwrap();
    server.join().unwrap();
    assert!(both, "the second subflow never joined");

    eprintln!("{frame}");
    assert_eq!(frame.lines().count(), 24, "{frame}");
    for l in frame.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns: {l:?}");
    }
    // The connection (to the server) and a line per subflow: one from
    // each client address, each on its interface.
    assert!(frame.contains("10.0.1.2:5001"), "{frame}");
    let sub = |local: &str, dev: &str| {
        frame
            .lines()
            .any(|l| l.contains(local) && l.contains(dev) && (l.contains('├') || l.contains('└')))
    };
    assert!(sub("10.0.1.1:", "c0"), "no subflow line on c0:\n{frame}");
    assert!(sub("10.0.2.1:", "c1"), "no subflow line on c1:\n{frame}");
    // The paths pane lists both interfaces, the endpoint's role on c1.
    assert!(
        frame
            .lines()
            .any(|l| l.starts_with("c1") && l.contains("subflow")),
        "{frame}"
    );
    assert!(
        frame.contains("daemon not running: kernel view only"),
        "{frame}"
    );
    // Data moved during the interval: some goodput is shown on the paths.
    assert!(
        frame.lines().any(
            |l| (l.starts_with("c0") || l.starts_with("c1")) && l.contains("K/s")
                || l.contains("M/s")
        ),
        "no goodput shown:\n{frame}"
    );
}

#[test]
fn with_the_daemon_its_roles_and_decisions_show() {
    let lab = Lab::create(
        format!("tp{}", std::process::id() % 100_000),
        &["--rate", "none"],
    );
    let mut d = Daemon::configure(&lab, "top", "");
    let cmd = d.in_client();
    d.launch(cmd, &[], &[], true);
    assert!(d.wait_up(), "daemon did not start: {}", d.log());
    // The daemon adds an endpoint per path once it has looked around.
    let mut frame = String::new();
    let shown = wait_for(10, || {
        let out = Command::new(common::BRAID)
            .args([
                "-n",
                &lab.client,
                "top",
                "--once",
                "--size",
                "80x24",
                "--socket",
            ])
            .arg(&d.socket)
            .output()
            .unwrap();
        frame = String::from_utf8_lossy(&out.stdout).into_owned();
        frame.contains("add endpoint")
    });
    eprintln!("{frame}");
    assert!(shown, "no decision in the daemon pane:\n{frame}");
    assert!(!frame.contains("daemon not running"), "{frame}");
    assert!(frame.contains("paths: "), "{frame}");
    // Roles from the daemon's view on the interfaces' rows.
    assert!(
        frame
            .lines()
            .any(|l| l.starts_with("p0") && l.contains("subflow")),
        "{frame}"
    );
    for l in frame.lines() {
        assert!(l.chars().count() <= 80, "line over 80 columns: {l:?}");
    }
}

#[test]
fn without_a_terminal_top_says_what_to_do() {
    let out = std::process::Command::new(common::BRAID)
        .arg("top")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--once"), "{err}");
}
