//! `braid daemon` against the real kernel, in a lab's client namespace:
//! carrier loss, address removal and return, filtered address kinds, a late
//! interface, reload (good and bad), restart under a live transfer, ENOBUFS
//! resynchronisation, sd_notify and the control socket's permissions.

mod common;
use common::{wait_for, BRAID};
#[path = "common/daemon_kit.rs"]
mod daemon_kit;
use daemon_kit::{Daemon, Lab};

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

impl Lab {
    fn up(tag: &str, extra: &[&str]) -> Lab {
        let name = format!("d{}{tag}", std::process::id() % 100_000);
        let rate = if extra.is_empty() {
            vec!["--rate", "none"]
        } else {
            extra.to_vec()
        };
        Lab::create(name, &rate)
    }

    fn braid(&self, args: &[&str]) -> std::process::Output {
        Command::new(BRAID)
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap()
    }

    fn endpoints(&self) -> Vec<serde_json::Value> {
        let out = Command::new(BRAID)
            .args(["-n", &self.client, "--json", "endpoint", "list"])
            .output()
            .unwrap();
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap_or_default()
    }

    fn endpoint_addrs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| e["addr"].as_str().unwrap().to_string())
            .collect();
        v.sort();
        v
    }
}

fn state_path(lab: &Lab) -> PathBuf {
    lab.dir().join("t-state.json")
}

impl Daemon {
    fn start(lab: &Lab, config_extra: &str, args: &[&str]) -> Daemon {
        let mut d = Daemon::new(lab, config_extra);
        d.spawn(lab, args, &[]);
        d
    }

    /// Write the configuration; start nothing yet.
    fn new(lab: &Lab, config_extra: &str) -> Daemon {
        Daemon::configure(lab, "t", config_extra)
    }

    fn spawn(&mut self, lab: &Lab, args: &[&str], env: &[(&str, &str)]) {
        let mut cmd = Command::new(BRAID);
        cmd.args(["-n", &lab.client]);
        self.launch(cmd, args, env, true);
        assert!(
            self.wait_up(),
            "daemon did not start: {}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
            let _ = c.wait();
        }
    }

    fn status(&self) -> serde_json::Value {
        let out = Command::new(BRAID)
            .args(["--json", "status", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["daemon"].clone()
    }

    /// `braid daemon reload --socket SOCKET`.
    fn reload(&self) -> std::process::Output {
        Command::new(BRAID)
            .args(["daemon", "reload", "--socket"])
            .arg(&self.socket)
            .output()
            .unwrap()
    }

    /// [`Daemon::reload`], which must succeed.
    fn reload_ok(&self) {
        let out = self.reload();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn assert_endpoints(lab: &Lab, want: &[&str], what: &str) {
    let mut want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    want.sort();
    assert!(
        wait_for(5, || lab.endpoint_addrs() == want),
        "{what}: endpoints {:?}, expected {want:?}",
        lab.endpoint_addrs()
    );
}

#[test]
fn follows_carrier_and_addresses() {
    let lab = Lab::up("ca", &[]);
    let d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let eps = lab.endpoints();
    assert!(
        eps.iter()
            .all(|e| e["flags"] == serde_json::json!(["subflow"]) && e["dev"].is_string()),
        "{eps:?}"
    );

    assert!(lab
        .braid(&["lab", "cut", "1", "--carrier"])
        .status
        .success());
    assert_endpoints(&lab, &["10.1.0.1"], "after carrier loss");
    assert!(lab.braid(&["lab", "restore", "1"]).status.success());
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "after carrier return");
    assert!(lab
        .braid(&["lab", "addr", "1", "--remove"])
        .status
        .success());
    assert_endpoints(&lab, &["10.1.0.1"], "after address removal");
    assert!(lab.braid(&["lab", "addr", "1", "--add"]).status.success());
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "after address return");
    // Administratively down is the same as no carrier.
    lab.ip(&["link", "set", "p1", "down"]);
    assert_endpoints(&lab, &["10.1.0.1"], "after link down");

    let st = d.status();
    let decisions = st["view"]["recent_decisions"].as_array().unwrap();
    let reasons: Vec<&str> = decisions
        .iter()
        .map(|x| x["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("p1 has no carrier")),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(|r| r.contains("p1 is down")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("10.2.0.1 is gone") || r.contains("address 10.2.0.1 is gone")),
        "{reasons:?}"
    );
    let limits = &st["view"]["limits"];
    assert_eq!(
        limits["subflows"], 1,
        "limits follow the usable endpoints: {limits}"
    );
    let kernel = Command::new("ip")
        .args(["-n", &lab.client, "mptcp", "limits"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&kernel.stdout).contains("subflows 1"));
}

#[test]
fn filtered_kinds_and_late_interface() {
    let lab = Lab::up("fk", &[]);
    assert!(lab
        .braid(&["lab", "addr", "1", "--remove"])
        .status
        .success());
    let d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1"], "path 1 has no address yet");
    // A late interface: the address appears, the endpoint follows.
    assert!(lab.braid(&["lab", "addr", "1", "--add"]).status.success());
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "late interface");

    // A veth with an IPv6 default route and addresses of every filtered kind.
    lab.ip(&["link", "add", "f0", "type", "veth", "peer", "name", "f1"]);
    lab.ip(&["link", "set", "f1", "up"]);
    lab.ip(&["link", "set", "f0", "up"]);
    lab.ip(&["-6", "route", "add", "default", "dev", "f0", "table", "300"]);
    lab.ip(&["addr", "add", "fd00::1/64", "dev", "f0", "nodad"]);
    lab.ip(&[
        "addr",
        "add",
        "2001:db8:5::1/64",
        "dev",
        "f0",
        "nodad",
        "preferred_lft",
        "0",
    ]);
    lab.ip(&["addr", "add", "169.254.7.7/16", "dev", "f0"]);
    // With duplicate address detection: tentative for a moment, then usable.
    lab.ip(&["addr", "add", "2001:db8:6::1/64", "dev", "f0"]);
    // An excluded interface name, even with a default route.
    lab.ip(&[
        "link", "add", "docker0", "type", "veth", "peer", "name", "dk1",
    ]);
    lab.ip(&["link", "set", "docker0", "up"]);
    lab.ip(&["link", "set", "dk1", "up"]);
    lab.ip(&["route", "add", "default", "dev", "docker0", "table", "301"]);
    lab.ip(&["addr", "add", "172.17.0.1/16", "dev", "docker0"]);
    assert_endpoints(
        &lab,
        &["10.1.0.1", "10.2.0.1", "2001:db8:6::1"],
        "only the global, settled IPv6 address",
    );
    let v = d.status()["view"].clone();
    let why = |ip: &str| -> String {
        v["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|i| i["addresses"].as_array().unwrap().iter())
            .find(|a| a["ip"] == ip)
            .map(|a| a["why"].as_str().unwrap().to_string())
            .unwrap_or_default()
    };
    assert!(
        why("fd00::1").contains("unique local"),
        "{}",
        why("fd00::1")
    );
    assert!(
        why("2001:db8:5::1").contains("deprecated"),
        "{}",
        why("2001:db8:5::1")
    );
    assert!(
        why("169.254.7.7").contains("link-local"),
        "{}",
        why("169.254.7.7")
    );
    assert!(
        why("172.17.0.1").contains("excluded"),
        "{}",
        why("172.17.0.1")
    );
    // The tentative phase was seen and waited out.
    assert!(d.log().contains("2001:db8:6::1"));
}

#[test]
fn reload_good_and_bad_config() {
    let lab = Lab::up("rl", &[]);
    let d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let socket = d.socket.to_str().unwrap().to_string();
    let cfg = |extra: &str| format!("[control]\nsocket = \"{socket}\"\n{extra}");
    std::fs::write(
        &d.config,
        cfg("[[interface]]\nname = \"p1\"\nflags = [\"subflow\", \"backup\"]\n"),
    )
    .unwrap();
    d.reload_ok();
    let backup_set = || {
        lab.endpoints().iter().any(|e| {
            e["addr"] == "10.2.0.1" && e["flags"] == serde_json::json!(["subflow", "backup"])
        })
    };
    assert!(wait_for(5, backup_set), "{:?}", lab.endpoints());

    // A bad file: refused with its line, and the running configuration stays.
    std::fs::write(
        &d.config,
        cfg("[[interface]]\nname = \"p1\"\nflags = [\"turbo\"]\n"),
    )
    .unwrap();
    let out = d.reload();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("line 5")
            && err.contains("turbo")
            && err.contains("stays in force"),
        "{err}"
    );
    assert!(backup_set(), "the running configuration is unchanged");
    // SIGHUP reloads too.
    std::fs::write(&d.config, cfg("")).unwrap();
    unsafe { libc::kill(d.child.as_ref().unwrap().id() as i32, libc::SIGHUP) };
    assert!(
        wait_for(5, || !backup_set()),
        "SIGHUP reload: {:?}",
        lab.endpoints()
    );
    assert!(d.status()["view"]["counters"]["reloads"].as_u64().unwrap() >= 2);
}

fn route(lab: &Lab, table: &str) -> String {
    let out = Command::new("ip")
        .args([
            "-n",
            &lab.client,
            "route",
            "show",
            "table",
            table,
            "default",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn handover_gives_the_standby_route_a_larger_initial_window() {
    let lab = Lab::up("iw", &[]);
    // The operator's own metric on the standby route must survive.
    lab.ip(&[
        "route", "replace", "table", "101", "default", "dev", "p1", "mtu", "1400",
    ]);
    let mut d = Daemon::start(&lab, "[policy]\nmode = \"handover\"\n", &[]);
    assert!(
        wait_for(5, || route(&lab, "101").contains("initcwnd 200")),
        "standby route: {}\n{}",
        route(&lab, "101"),
        d.log()
    );
    assert!(
        route(&lab, "101").contains("mtu 1400"),
        "{}",
        route(&lab, "101")
    );
    assert!(
        !route(&lab, "main").contains("initcwnd"),
        "primary untouched"
    );
    let ifs = d.status()["view"]["interfaces"].clone();
    let p1 = ifs
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "p1")
        .unwrap();
    assert_eq!(p1["standby_initcwnd"], 200, "{ifs:#}");
    // Someone replaces the route without it: the daemon sets it again.
    lab.ip(&["route", "replace", "table", "101", "default", "dev", "p1"]);
    assert!(
        wait_for(5, || route(&lab, "101").contains("initcwnd 200")),
        "{}",
        route(&lab, "101")
    );
    // Stopping puts the route back as it was.
    d.stop();
    let after = route(&lab, "101");
    assert!(
        !after.contains("initcwnd") && after.contains("dev p1"),
        "{after}"
    );
}

#[test]
fn bad_config_files_are_clear_errors() {
    let dir = std::env::temp_dir().join(format!("braid-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, expect) in [
        ("mode = \"router\"\n", vec!["line 1", "client", "server"]),
        ("[filter]\nipv5 = true\n", vec!["line 2", "ipv5"]),
        (
            "[filter]\nipv4 = false\nipv6 = false\n",
            vec!["line 2", "filter.ipv4"],
        ),
        (
            "[[interface]]\nflags = [\"subflow\"]\n",
            vec!["line 1", "name"],
        ),
        (
            "[[interface]]\nname = \"x\"\nflags = [\"signal\", \"fullmesh\"]\n",
            vec!["line 3", "cannot be combined"],
        ),
        (
            "[control]\nsocket = \"relative.sock\"\n",
            vec!["line 2", "absolute"],
        ),
        (
            "[policy]\nmode = \"handover\"\nstandby_initcwnd = 1000\n",
            vec!["policy.standby_initcwnd", "256"],
        ),
        ("this is not toml", vec!["line 1"]),
    ] {
        let f = dir.join("bad.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(BRAID)
            .args(["daemon", "--check-config", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text:?} should be refused");
        assert!(!err.contains("panicked"));
        for e in expect {
            assert!(err.contains(e), "{text:?}: expected '{e}' in: {err}");
        }
        // Starting with it fails the same way.
        let out = Command::new(BRAID)
            .args(["daemon", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        assert!(!out.status.success());
    }
    let missing = Command::new(BRAID)
        .args([
            "daemon",
            "--check-config",
            "--config",
            "/nonexistent/braid.toml",
        ])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
    let good = Command::new(BRAID)
        .args([
            "daemon",
            "--check-config",
            "--config",
            concat!(env!("CARGO_MANIFEST_DIR"), "/../../contrib/braid.toml"),
        ])
        .output()
        .unwrap();
    assert!(
        good.status.success(),
        "{}",
        String::from_utf8_lossy(&good.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An MPTCP transfer from the lab's server to its client over both paths.
fn transfer_endpoints(lab: &Lab) -> braid_lab::traffic::Endpoints {
    braid_lab::traffic::Endpoints {
        client_ns: lab.client.clone(),
        server_ns: format!("{}-s", lab.name),
        server_addr: "10.1.0.2".parse().unwrap(),
        mptcp_server_ns: format!("{}-s", lab.name),
        path_client_addrs: vec!["10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap()],
        way: braid_lab::traffic::ClientWay::Mptcp,
    }
}

#[test]
fn restart_under_a_live_transfer() {
    let lab = Lab::up("rs", &["--rate", "20mbit"]);
    let mut d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let ep = transfer_endpoints(&lab);
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5301, Duration::from_secs(5)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let ids_before: Vec<u64> = lab
        .endpoints()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    d.stop();
    // The endpoints stay while the daemon is away (remove_on_stop = false).
    assert_eq!(lab.endpoint_addrs(), vec!["10.1.0.1", "10.2.0.1"]);
    d.spawn(&lab, &[], &[]);
    let r = bulk.finish().unwrap();
    assert!(
        r.survived,
        "the transfer must survive the restart: {:?}",
        r.error
    );
    assert_eq!(r.bytes_corrupt, 0);
    assert!(r.bytes_verified > 1_000_000);
    // The restarted daemon adopted its endpoints instead of re-adding them.
    let ids_after: Vec<u64> = lab
        .endpoints()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids_before, ids_after);
    assert_eq!(
        d.status()["view"]["owned_endpoints"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert!(
        !d.log().contains("add endpoint"),
        "no re-add after the restart: {}",
        d.log()
    );
}

/// The kernel turns active MPTCP off for the namespace after a
/// connection's MP_CAPABLE SYNs go unanswered (the lab's emulator loses the
/// first three) and its plain SYN is answered: the daemon tells it, with
/// the command that undoes it, in its log and its status; `braid status`'s
/// own hints say it too.
#[test]
fn the_kernels_mptcp_shutdown_after_lost_mp_capable_syns_is_told() {
    let lab = Lab::up("bh", &["--rate", "none", "--lose-mp-capable-syn", "3,0"]);
    let d = Daemon::start(&lab, "", &["--resync-interval-ms", "300"]);
    let ep = transfer_endpoints(&lab);
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5302, Duration::from_secs(1)).unwrap();
    let r = bulk.finish().unwrap();
    assert_eq!(r.transport, "tcp (fell back)", "{:?}", r.error);
    assert_eq!(r.bytes_corrupt, 0);
    let told = |v: &serde_json::Value| {
        v["warnings"].as_array().is_some_and(|w| {
            w.iter().any(|w| {
                w.as_str().is_some_and(|w| {
                    w.contains("the kernel turned active MPTCP off 1 time(s)")
                        && w.contains("sysctl -w net.mptcp.blackhole_timeout=3600")
                })
            })
        })
    };
    assert!(
        wait_for(5, || told(&d.status())),
        "status: {:#}\nlog: {}",
        d.status(),
        d.log()
    );
    assert!(
        d.log().contains("the kernel turned active MPTCP off"),
        "{}",
        d.log()
    );
    let out = Command::new(BRAID)
        .args(["-n", &lab.client, "status"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("turned active MPTCP off"),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Subflows of the client's MPTCP connections whose local address is `addr`.
fn subflows_from(lab: &Lab, addr: &str) -> usize {
    subflows_on(lab, addr, 5302)
}

/// Established subflows from `addr` to port `port` in the client namespace.
fn subflows_on(lab: &Lab, addr: &str, port: u16) -> usize {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "ss",
            "-tnH",
            "state",
            "established",
            "src",
            addr,
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&format!(":{port}")))
        .count()
}

/// `ss -K` on the subflows from `addr` to port `port`; false if this
/// kernel cannot abort sockets (CONFIG_INET_DIAG_DESTROY).
fn kill_subflows(lab: &Lab, addr: &str, port: u16) -> bool {
    let _ = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "ss",
            "-K",
            "-tnH",
            "src",
            addr,
            "dport",
            "=",
            &format!(":{port}"),
        ])
        .output()
        .unwrap();
    subflows_on(lab, addr, port) == 0
}

#[test]
fn a_connection_that_lost_its_standby_subflow_gets_it_back_and_survives_the_primary() {
    // The kernel's path manager never opens a subflow again by itself (in
    // sweeps, 7 of 216 handover runs never got their second subflow and
    // died with the primary). Here the standby subflow is killed on purpose.
    let lab = Lab::up("sj", &["--rate", "20mbit"]);
    let mut d = Daemon::start(&lab, "[policy]\nmode = \"handover\"\n", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let ep = transfer_endpoints(&lab);
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5302, Duration::from_secs(8)).unwrap();
    assert!(
        wait_for(3, || subflows_from(&lab, "10.2.0.1") == 1),
        "the standby subflow was never opened"
    );
    // sock_destroy (ss -K) aborts the standby subflow: the connection goes
    // on over the primary alone.
    if !kill_subflows(&lab, "10.2.0.1", 5302) {
        eprintln!(
            "skipped: this kernel cannot abort a socket (ss -K needs CONFIG_INET_DIAG_DESTROY)"
        );
        let _ = bulk.finish();
        return;
    }
    assert!(
        wait_for(5, || d.log().contains("no connection has a subflow on p1")),
        "the daemon did not re-add p1: {}\nstatus: {}\nconns: {}",
        d.log_tail(20),
        d.status()["view"]["health"],
        String::from_utf8_lossy(
            &Command::new(BRAID)
                .args(["-n", &lab.client, "conns"])
                .output()
                .unwrap()
                .stdout
        )
    );
    assert!(
        wait_for(3, || subflows_from(&lab, "10.2.0.1") == 1),
        "no subflow on p1 after the re-add: {}",
        d.log_tail(20)
    );
    // Now the primary can go: the standby takes over.
    survives_primary_carrier_loss(&lab, bulk, &d);
    d.stop();
}

#[test]
fn enobufs_triggers_a_full_resync() {
    let lab = Lab::up("nb", &[]);
    let d = Daemon::start(&lab, "", &["--netlink-rcvbuf", "1024"]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    // A flood of address changes on path 1, far more than 1 KiB of buffer holds.
    let mut batch = String::new();
    for i in 1..=250 {
        batch.push_str(&format!("addr add 10.2.1.{i}/32 dev p1\n"));
    }
    for i in 1..=250 {
        batch.push_str(&format!("addr del 10.2.1.{i}/32 dev p1\n"));
    }
    batch.push_str("addr add 10.2.9.9/32 dev p1\n");
    let f = lab.dir().join("flood.batch");
    std::fs::write(&f, batch).unwrap();
    lab.ip(&["-batch", f.to_str().unwrap()]);
    assert_endpoints(
        &lab,
        &["10.1.0.1", "10.2.0.1", "10.2.9.9"],
        "after the flood (8 at most, none stale)",
    );
    let resyncs = d.status()["view"]["counters"]["resyncs"].as_u64().unwrap();
    assert!(
        resyncs >= 1,
        "the overflow must trigger a resync: {}",
        d.log()
    );
    assert!(d.log().contains("ENOBUFS"));
}

#[test]
fn sd_notify_and_control_socket_permissions() {
    let lab = Lab::up("sn", &[]);
    let notify = lab.dir().join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut d = Daemon::start(&lab, "", &[]);
    d.stop();
    d.spawn(&lab, &[], &[("NOTIFY_SOCKET", notify.to_str().unwrap())]);
    let mut buf = [0u8; 256];
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    // Not root and not in control.group: refused.
    let out = unsafe {
        use std::os::unix::process::CommandExt;
        Command::new(BRAID)
            .args(["--json", "status", "--socket"])
            .arg(&d.socket)
            .pre_exec(|| {
                if libc::setgid(65534) != 0 || libc::setuid(65534) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
            .output()
            .unwrap()
    };
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        v["daemon"].is_null(),
        "an unprivileged user must not see the daemon's status"
    );
    d.stop();
    let n = sock.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
}

// ---------------------------------------------------------------------
// Running with exactly what contrib/braid.service grants.

/// What the shipped unit gives the daemon: capabilities (lower case, no
/// `cap_` prefix), ambient capabilities and the socket address families.
struct Grants {
    caps: Vec<String>,
    ambient: Vec<String>,
    families: Vec<i32>,
}

fn unit_grants() -> Grants {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../contrib/braid.service"
    ))
    .unwrap();
    let value = |key: &str| -> Vec<String> {
        text.lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter_map(|l| l.split_once('='))
            .filter(|(k, _)| k.trim() == key)
            .flat_map(|(_, v)| v.split_whitespace().map(str::to_string))
            .collect()
    };
    let caps = |key: &str| -> Vec<String> {
        value(key)
            .iter()
            .map(|c| {
                c.to_ascii_lowercase()
                    .trim_start_matches("cap_")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(value("NoNewPrivileges"), vec!["yes"]);
    assert!(value("User").is_empty(), "the unit runs as root (uid 0)");
    Grants {
        caps: caps("CapabilityBoundingSet"),
        ambient: caps("AmbientCapabilities"),
        families: value("RestrictAddressFamilies")
            .iter()
            .map(|f| match f.as_str() {
                "AF_UNIX" => libc::AF_UNIX,
                "AF_INET" => libc::AF_INET,
                "AF_INET6" => libc::AF_INET6,
                "AF_NETLINK" => libc::AF_NETLINK,
                other => panic!("the test does not know {other}"),
            })
            .collect(),
    }
}

/// A seccomp filter like systemd's RestrictAddressFamilies (socket() of
/// any other family fails with EAFNOSUPPORT); with `deny_sock_diag`,
/// NETLINK_SOCK_DIAG sockets also fail (EPERM), to break health polling.
fn socket_filter(families: &[i32], deny_sock_diag: bool) -> Vec<libc::sock_filter> {
    #[cfg(target_arch = "x86_64")]
    const ARCH: u32 = 0xc000_003e;
    #[cfg(target_arch = "aarch64")]
    const ARCH: u32 = 0xc000_00b7;
    const LD: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let (nr, arch, arg0, arg2) = (0, 4, 16, 32);
    let allow = libc::SECCOMP_RET_ALLOW;
    let errno = |e: i32| libc::SECCOMP_RET_ERRNO | (e as u32 & 0xffff);
    // SAFETY: these only build structs.
    let (stmt, jump) = unsafe {
        (
            |c, k| libc::BPF_STMT(c, k),
            |c, k, t, f| libc::BPF_JUMP(c, k, t, f),
        )
    };
    let mut p = vec![
        stmt(LD, arch),
        jump(JEQ, ARCH, 1, 0),
        stmt(RET, allow),
        stmt(LD, nr),
        jump(JEQ, libc::SYS_socket as u32, 1, 0),
        stmt(RET, allow),
    ];
    if deny_sock_diag {
        p.extend([
            stmt(LD, arg0),
            jump(JEQ, libc::AF_NETLINK as u32, 0, 3),
            stmt(LD, arg2),
            jump(JEQ, libc::NETLINK_SOCK_DIAG as u32, 0, 1),
            stmt(RET, errno(libc::EPERM)),
        ]);
    }
    p.push(stmt(LD, arg0));
    for f in families {
        p.push(jump(JEQ, *f as u32, 0, 1));
        p.push(stmt(RET, allow));
    }
    p.push(stmt(RET, errno(libc::EAFNOSUPPORT)));
    p
}

/// How to confine a daemon.
struct Confined {
    caps: Vec<String>,
    ambient: Vec<String>,
    families: Vec<i32>,
    deny_sock_diag: bool,
    /// Supplementary groups (as SupplementaryGroups=).
    groups: Option<String>,
}

impl Confined {
    fn as_the_unit() -> Confined {
        let g = unit_grants();
        Confined {
            caps: g.caps,
            ambient: g.ambient,
            families: g.families,
            deny_sock_diag: false,
            groups: None,
        }
    }

    fn without(mut self, cap: &str) -> Confined {
        self.caps.retain(|c| c != cap);
        self.ambient.retain(|c| c != cap);
        self
    }
}

impl Daemon {
    /// Start as the unit would: uid 0 with only `c`'s capabilities, no new
    /// privileges, only `c`'s socket families; in the lab's client
    /// namespace (entered before the capabilities are dropped).
    fn spawn_confined(&mut self, lab: &Lab, c: &Confined, args: &[&str]) -> bool {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let list = |v: &[String]| {
            let mut s = String::from("-all");
            for c in v {
                s.push_str(&format!(",+{c}"));
            }
            s
        };
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--bounding-set={}", list(&c.caps)))
            .arg(format!("--inh-caps={}", list(&c.ambient)))
            .arg(format!("--ambient-caps={}", list(&c.ambient)))
            .arg("--no-new-privs");
        if let Some(g) = &c.groups {
            cmd.arg(format!("--groups={g}"));
        }
        cmd.arg(BRAID);
        // Everything the child needs is made before fork: nothing allocates there.
        let ns = std::fs::File::open(format!("/run/netns/{}", lab.client)).unwrap();
        let filter = socket_filter(&c.families, c.deny_sock_diag);
        let prog = libc::sock_fprog {
            len: filter.len() as u16,
            filter: filter.as_ptr() as *mut libc::sock_filter,
        };
        let prog_addr = &prog as *const libc::sock_fprog as usize;
        let ns_fd = ns.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0
                    || libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0
                    || libc::prctl(
                        libc::PR_SET_SECCOMP,
                        libc::SECCOMP_MODE_FILTER,
                        prog_addr as *const libc::sock_fprog,
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        self.launch(cmd, args, &[], true);
        drop((ns, filter));
        self.wait_up()
    }

    fn feature(&self, name: &str) -> serde_json::Value {
        let st = self.status();
        st["features"]
            .as_array()
            .unwrap_or_else(|| panic!("no features in the status: {st}"))
            .iter()
            .find(|f| f["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no feature {name}: {st}"))
    }
}

/// The capability sets of a process, from /proc.
fn cap_sets(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("Cap"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn cap_eff(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("CapEff:")).unwrap();
    u64::from_str_radix(l.split_whitespace().nth(1).unwrap(), 16).unwrap()
}

const CAP_NET_ADMIN: u32 = 12;
const CAP_NET_RAW: u32 = 13;
const CAP_CHOWN: u32 = 0;

#[test]
fn under_the_units_privileges_it_probes_and_manages_endpoints() {
    let lab = Lab::up("uc", &[]);
    let mut d = Daemon::new(&lab, "[policy]\nmode = \"handover\"\n");
    let unit = Confined::as_the_unit();
    assert!(
        unit.caps.contains(&"net_raw".to_string()),
        "{:?}",
        unit.caps
    );
    assert!(
        unit.families.contains(&libc::AF_INET) && unit.families.contains(&libc::AF_INET6),
        "the probes' ICMP sockets need AF_INET and AF_INET6"
    );
    assert!(d.spawn_confined(&lab, &unit, &[]), "{}", d.log());
    // Confined as the unit says: nothing beyond its capabilities.
    let eff = cap_eff(d.pid());
    assert_eq!(
        eff,
        (1 << CAP_NET_ADMIN) | (1 << CAP_NET_RAW),
        "{}",
        cap_sets(d.pid())
    );
    assert_endpoints(
        &lab,
        &["10.1.0.1", "10.2.0.1"],
        "under the unit's privileges",
    );
    assert!(
        wait_for(5, || route(&lab, "101").contains("initcwnd 200")),
        "routes are changed too"
    );
    let probe = d.feature("path_probe");
    assert_eq!(probe["on"], true, "{probe}");
    assert!(
        probe["how"].as_str().unwrap().contains("raw ICMP"),
        "{probe}"
    );
    assert!(probe["why"].is_null(), "both IPv4 and IPv6: {probe}");
    // `braid status` shows it.
    let out = Command::new(BRAID)
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("on   path_probe: raw ICMP socket"), "{text}");
    d.stop();

    // control.group under the unit: no CAP_CHOWN, so the group must be one
    // the daemon is a member of; the status says so.
    assert_eq!(eff & (1 << CAP_CHOWN), 0);
    let socket = d.socket.display().to_string();
    std::fs::write(
        &d.config,
        format!("[control]\nsocket = \"{socket}\"\ngroup = \"nogroup\"\n"),
    )
    .unwrap();
    assert!(d.spawn_confined(&lab, &unit, &[]), "{}", d.log());
    let g = d.feature("control_group");
    assert_eq!(g["on"], false, "{g}");
    assert!(
        g["why"]
            .as_str()
            .unwrap()
            .contains("SupplementaryGroups=nogroup"),
        "{g}"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!(
        meta.mode() & 0o777,
        0o600,
        "root only when the group could not be given"
    );
    d.stop();
    // With SupplementaryGroups=nogroup it works, still without CAP_CHOWN.
    let member = Confined {
        groups: Some("65534".into()),
        ..Confined::as_the_unit()
    };
    assert!(d.spawn_confined(&lab, &member, &[]), "{}", d.log());
    let g = d.feature("control_group");
    assert_eq!(g["on"], true, "{g}");
    let meta = std::fs::metadata(&d.socket).unwrap();
    assert_eq!((meta.gid(), meta.mode() & 0o777), (65534, 0o660));
}

#[test]
fn without_cap_net_raw_probing_falls_back_or_says_why_not() {
    let lab = Lab::up("nr", &[]);
    let mut d = Daemon::new(&lab, "[policy]\nmode = \"handover\"\n");
    let c = Confined::as_the_unit().without("net_raw");
    assert!(d.spawn_confined(&lab, &c, &[]), "{}", d.log());
    assert_eq!(
        cap_eff(d.pid()),
        1 << CAP_NET_ADMIN,
        "{}",
        cap_sets(d.pid())
    );
    // A new namespace's ping_group_range admits no group: probing is off.
    let probe = d.feature("path_probe");
    assert_eq!(probe["on"], false, "{probe}");
    let why = probe["why"].as_str().unwrap();
    assert!(
        why.contains("CAP_NET_RAW") && why.contains("ping_group_range (1 0)"),
        "{why}"
    );
    assert_endpoints(
        &lab,
        &["10.1.0.1", "10.2.0.1"],
        "endpoints are still managed",
    );
    let out = Command::new(BRAID)
        .args(["status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("OFF  path_probe: no CAP_NET_RAW"), "{text}");
    // Logged once, at start.
    assert_eq!(d.log().matches("feature off").count(), 1, "{}", d.log());

    // Let gid 0 open ICMP datagram sockets: a reload finds the fallback.
    let ns = lab.client.clone();
    braid_kernel::netns::run_in::<_, braid_kernel::Error>(&ns, || {
        std::fs::write("/proc/sys/net/ipv4/ping_group_range", "0 0")
            .map_err(|e| braid_kernel::Error::Invalid(e.to_string()))
    })
    .unwrap();
    d.reload_ok();
    let probe = d.feature("path_probe");
    assert_eq!(probe["on"], true, "{probe}");
    assert!(
        probe["how"]
            .as_str()
            .unwrap()
            .contains("ICMP datagram socket"),
        "{probe}"
    );
}

#[test]
fn sock_diag_errors_are_reported_not_taken_for_no_subflows() {
    let lab = Lab::up("sd", &[]);
    let mut d = Daemon::new(&lab, "");
    let c = Confined {
        deny_sock_diag: true,
        ..Confined::as_the_unit()
    };
    assert!(d.spawn_confined(&lab, &c, &[]), "{}", d.log());
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "endpoints are managed");
    let h = d.feature("health_monitoring");
    assert_eq!(h["on"], false, "{h}");
    assert!(h["why"].as_str().unwrap().contains("sock_diag"), "{h}");
    // It keeps trying (no MPTCP connection exists, which would otherwise
    // stop polling), and logs the error once.
    assert!(
        wait_for(10, || d.status()["health_polls"]["failed"]
            .as_u64()
            .unwrap_or(0)
            >= 3),
        "{}",
        d.status()["health_polls"]
    );
    assert_eq!(
        d.log().matches("cannot read the subflows").count(),
        1,
        "{}",
        d.log()
    );
    d.stop();
    // The same daemon with sock_diag working: on, and polling stops while
    // no subflow exists.
    let c = Confined::as_the_unit();
    assert!(d.spawn_confined(&lab, &c, &[]), "{}", d.log());
    let h = d.feature("health_monitoring");
    assert_eq!(h["on"], true, "{h}");
    assert_eq!(d.status()["health_polls"]["failed"], 0);
}

// ---------------------------------------------------------------------
// The state file.

/// What the crash tests compare: the kernel's endpoints, the standby
/// route, the state file.
#[derive(Debug, PartialEq)]
struct Observed {
    endpoints: Vec<serde_json::Value>,
    route: String,
    state: Option<serde_json::Value>,
}

fn observe(lab: &Lab) -> Observed {
    let mut endpoints = lab.endpoints();
    endpoints.sort_by_key(|e| e["id"].as_u64());
    Observed {
        endpoints,
        route: route(lab, "101").trim().to_string(),
        state: std::fs::read(state_path(lab))
            .ok()
            .map(|b| serde_json::from_slice(&b).unwrap_or(serde_json::Value::Null)),
    }
}

/// Put the lab back to where every scenario starts: both paths up, no
/// endpoints, the operator's own initcwnd on the standby route.
fn reset(lab: &Lab) {
    assert!(lab.braid(&["lab", "restore", "1"]).status.success());
    lab.ip(&["mptcp", "endpoint", "flush"]);
    lab.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "0",
        "add_addr_accepted",
        "0",
    ]);
    lab.ip(&[
        "route", "replace", "table", "101", "default", "dev", "p1", "initcwnd", "15",
    ]);
    let _ = std::fs::remove_file(state_path(lab));
    for e in std::fs::read_dir(lab.dir()).unwrap().flatten() {
        if e.file_name().to_string_lossy().contains("t-state.json") {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// One run of the scenario (start, path 1 loses carrier, it returns,
/// stop), crashing at `crash` if given; a crashed daemon is restarted
/// (without the crash) as systemd's Restart=on-failure would. Returns what
/// was observed at the end of each step and how many crashes happened.
fn scenario(
    lab: &Lab,
    crash: Option<&str>,
    reference: Option<&[Observed]>,
) -> (Vec<Observed>, u32) {
    reset(lab);
    let mut d = Daemon::new(lab, "[policy]\nmode = \"handover\"\n");
    let env: Vec<(&str, &str)> = crash
        .map(|c| vec![("BRAID_DAEMON_CRASH_AT", c)])
        .unwrap_or_default();
    let mut cmd = Command::new(BRAID);
    cmd.args(["-n", &lab.client]);
    d.launch(cmd, &[], &env, true);
    let mut crashes = 0;
    let mut seen = Vec::new();
    // Wait for the step to settle: the reference's observation when there
    // is one, else `settled`.
    let mut settle = |d: &mut Daemon, step: usize, settled: &dyn Fn(&Observed) -> bool| {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = d.child.as_mut().unwrap().try_wait().unwrap() {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(st.signal(), Some(libc::SIGKILL), "{st:?}: {}", d.log());
                crashes += 1;
                let mut cmd = Command::new(BRAID);
                cmd.args(["-n", &lab.client]);
                d.launch(cmd, &[], &[], false);
                continue;
            }
            let now = observe(lab);
            let done = match reference {
                Some(r) => now == r[step],
                None => settled(&now),
            };
            if done {
                // Settled for a moment (nothing left in flight).
                std::thread::sleep(Duration::from_millis(150));
                if observe(lab) == now {
                    seen.push(now);
                    return;
                }
            }
            assert!(
                std::time::Instant::now() < deadline,
                "crash {crash:?}, step {step}: {now:#?}\nexpected {:#?}\n{}",
                reference.map(|r| &r[step]),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
    };
    let both = |o: &Observed| {
        o.endpoints.len() == 2
            && o.route.contains("initcwnd 200")
            && o.state
                .as_ref()
                .is_some_and(|s| s["owned"].as_array().unwrap().len() == 2)
    };
    settle(&mut d, 0, &both);
    assert!(lab
        .braid(&["lab", "cut", "1", "--carrier"])
        .status
        .success());
    settle(&mut d, 1, &|o| {
        o.endpoints.len() == 1
            && o.route.contains("initcwnd 15")
            && o.state
                .as_ref()
                .is_some_and(|s| s["changed_routes"].as_array().unwrap().is_empty())
    });
    assert!(lab.braid(&["lab", "restore", "1"]).status.success());
    settle(&mut d, 2, &both);
    // Stop; a crash while stopping is followed by a restart and a stop.
    loop {
        if d.child.as_mut().unwrap().try_wait().unwrap().is_none() {
            // It may still be starting after a restart.
            let _ = d.wait_up();
        }
        let mut c = d.child.take().unwrap();
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let st = c.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        if st.signal() == Some(libc::SIGKILL) {
            crashes += 1;
            let mut cmd = Command::new(BRAID);
            cmd.args(["-n", &lab.client]);
            d.launch(cmd, &[], &[], false);
            continue;
        }
        assert!(st.success(), "{st:?}: {}", d.log());
        break;
    }
    seen.push(observe(lab));
    if let Some(r) = reference {
        assert_eq!(
            seen[3],
            r[3],
            "crash {crash:?}: after the stop\n{}",
            d.log()
        );
    }
    (seen, crashes)
}

/// SIGKILL right before and right after each kernel action of a kind, at
/// each of its occurrences in the scenario: after a restart the kernel's
/// endpoints, the standby route's initcwnd and the state file end exactly
/// as in a run without a crash.
fn crash_everywhere(tag: &str, points: &[(&str, u32)]) {
    let lab = Lab::up(tag, &[]);
    let (reference, crashes) = scenario(&lab, None, None);
    assert_eq!(crashes, 0);
    // The reference itself is right: the operator's initcwnd 15 is what
    // the route gets back, and the state file says so while it matters.
    assert_eq!(
        reference[0].state.as_ref().unwrap()["changed_routes"][0]["initcwnd_before"],
        15,
        "{:#?}",
        reference[0]
    );
    assert!(
        reference[3].route.contains("initcwnd 15"),
        "{:#?}",
        reference[3]
    );
    let mut missed = Vec::new();
    for (point, max) in points {
        for n in 1..=*max {
            let crash = format!("{point}:{n}");
            let (_, crashes) = scenario(&lab, Some(&crash), Some(&reference));
            if crashes == 0 {
                missed.push(crash);
            }
        }
    }
    assert!(
        missed.is_empty(),
        "these crash points were never reached: {missed:?}"
    );
}

#[test]
fn a_crash_at_any_endpoint_change_leaves_nothing_behind() {
    crash_everywhere(
        "ce",
        &[
            ("before:add_endpoint", 3),
            ("after:add_endpoint", 3),
            ("before:remove_endpoint", 1),
            ("after:remove_endpoint", 1),
        ],
    );
}

#[test]
fn a_crash_at_any_initcwnd_change_keeps_the_original_window() {
    crash_everywhere(
        "cw",
        &[
            ("before:set_route_initcwnd", 4),
            ("after:set_route_initcwnd", 4),
        ],
    );
}

#[test]
fn a_crash_while_writing_the_state_file_loses_nothing() {
    crash_everywhere("cs", &[("before:state_rename", 4)]);
}

#[test]
fn corrupt_state_is_kept_aside_and_reused_ids_are_not_adopted() {
    let lab = Lab::up("st", &[]);
    // A previous run's endpoint, and a state file a crash left unreadable.
    lab.ip(&[
        "mptcp", "endpoint", "add", "10.1.0.1", "id", "5", "dev", "p0", "subflow",
    ]);
    std::fs::write(state_path(&lab), "{\"owned\": [{\"id\": 5, \"ad").unwrap();
    let mut d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "it still works");
    let aside: Vec<String> = std::fs::read_dir(lab.dir())
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("t-state.json.corrupt-"))
        .collect();
    assert_eq!(aside.len(), 1, "the bad file is kept for a look");
    let st = d.status();
    let warnings = st["warnings"].to_string();
    assert!(warnings.contains("kept as"), "{warnings}");
    assert!(d.log().contains("kept as"), "{}", d.log());
    // Without the file, id 5 cannot be known as Braid's: left alone.
    let foreign = st["view"]["foreign_endpoints"].to_string();
    assert!(foreign.contains("\"id\":5"), "{foreign}");
    d.stop();

    // The file names id 1 as Braid's 10.2.0.1, but someone else has since
    // taken id 1 for another address: not adopted, not removed.
    lab.ip(&["mptcp", "endpoint", "flush"]);
    lab.ip(&[
        "mptcp", "endpoint", "add", "10.1.0.1", "id", "1", "dev", "p0", "subflow",
    ]);
    std::fs::write(
        state_path(&lab),
        r#"{"owned":[{"id":1,"addr":"10.2.0.1"}],"changed_routes":[]}"#,
    )
    .unwrap();
    d.spawn(&lab, &[], &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "someone else's id 1 stays");
    let eps = lab.endpoints();
    assert!(
        eps.iter().any(|e| e["id"] == 1 && e["addr"] == "10.1.0.1"),
        "{eps:?}"
    );
    let v = d.status()["view"].clone();
    assert!(
        v["foreign_endpoints"].to_string().contains("\"id\":1"),
        "{v:#}"
    );
    assert!(d.log().contains("someone else's"), "{}", d.log());
    // The state file now names only what is Braid's.
    let s: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state_path(&lab)).unwrap()).unwrap();
    let owned = s["owned"].as_array().unwrap();
    assert!(
        owned.len() == 1 && owned[0]["addr"] == "10.2.0.1" && owned[0]["id"] != 1,
        "{s}"
    );
}

// ---------------------------------------------------------------------
// Control clients.

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn control_clients_cannot_stall_the_daemon() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let lab = Lab::up("cc", &[]);
    let d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let rss_before = rss_kib(d.pid());
    // One client sends 100 MB without a newline.
    let socket = d.socket.clone();
    let huge = std::thread::spawn(move || {
        let mut s = UnixStream::connect(&socket).unwrap();
        let chunk = vec![b'x'; 64 << 10];
        let mut sent = 0usize;
        while sent < 100 << 20 {
            match s.write(&chunk) {
                Ok(n) => sent += n,
                Err(_) => break,
            }
        }
        let mut reply = String::new();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = s.read_to_string(&mut reply);
        (sent, reply)
    });
    // Many that connect and say nothing, and some that ask and never read.
    let silent: Vec<UnixStream> = (0..200)
        .filter_map(|_| UnixStream::connect(&d.socket).ok())
        .collect();
    let mut deaf = Vec::new();
    for _ in 0..20 {
        if let Ok(mut s) = UnixStream::connect(&d.socket) {
            let _ = s.write_all(b"{\"cmd\":\"status\"}\n");
            deaf.push(s);
        }
    }
    // Meanwhile a link changes: the daemon follows.
    assert!(lab
        .braid(&["lab", "cut", "1", "--carrier"])
        .status
        .success());
    assert_endpoints(&lab, &["10.1.0.1"], "a link change while clients misbehave");
    let rss_during = rss_kib(d.pid());
    let (sent, reply) = huge.join().unwrap();
    assert!(sent < 100 << 20, "the huge request was read to the end");
    eprintln!(
        "daemon RSS: {rss_before} KiB before, {rss_during} KiB with {} silent and {} deaf clients and {} bytes of a huge request sent before the daemon closed it ({})",
        silent.len(),
        deaf.len(),
        sent,
        reply.trim()
    );
    assert!(
        rss_during < rss_before + 32 * 1024,
        "RSS grew from {rss_before} to {rss_during} KiB"
    );
    drop(silent);
    drop(deaf);
    assert!(lab.braid(&["lab", "restore", "1"]).status.success());
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "after the restore");
    // And answers again.
    assert!(
        wait_for(10, || d.status()["pid"].as_u64() == Some(d.pid() as u64)),
        "status again"
    );
}

// ---------------------------------------------------------------------
// Resynchronisation.

#[test]
fn outside_changes_are_put_right_periodically_and_on_reload() {
    let lab = Lab::up("rp", &[]);
    let mut d = Daemon::start(&lab, "", &["--resync-interval-ms", "300"]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let ids: Vec<u64> = lab
        .endpoints()
        .iter()
        .map(|e| e["id"].as_u64().unwrap())
        .collect();
    lab.ip(&["mptcp", "endpoint", "flush"]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "after an outside flush");
    let limits = || {
        let out = Command::new("ip")
            .args(["-n", &lab.client, "mptcp", "limits"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    lab.ip(&[
        "mptcp",
        "limits",
        "set",
        "subflows",
        "0",
        "add_addr_accepted",
        "0",
    ]);
    assert!(
        wait_for(5, || limits().contains("subflows 2")),
        "limits put back: {}",
        limits()
    );
    assert!(
        d.log().contains("periodic resynchronisation found"),
        "{}",
        d.log()
    );
    // The re-added endpoints are Braid's (the state file knows them).
    let owned = d.status()["view"]["owned_endpoints"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(owned, 2);
    assert_eq!(ids.len(), 2);
    d.stop();

    // Without the periodic check, a reload puts things right.
    d.spawn(&lab, &["--resync-interval-ms", "0"], &[]);
    let f = d.feature("periodic_resync");
    assert_eq!(f["on"], false, "{f}");
    lab.ip(&["mptcp", "endpoint", "flush"]);
    d.reload_ok();
    assert_endpoints(
        &lab,
        &["10.1.0.1", "10.2.0.1"],
        "after a flush and a reload",
    );
}

/// An MPTCP listening socket (kept open until dropped) in namespace `ns`:
/// it makes the kernel send a listener_created event there.
fn mptcp_listener_in(ns: &str) -> std::os::fd::OwnedFd {
    common::in_ns(ns, || {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor owned right away.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, libc::IPPROTO_MPTCP);
            assert!(fd >= 0, "MPTCP socket: {}", std::io::Error::last_os_error());
            let owned = std::os::fd::OwnedFd::from_raw_fd(fd);
            let addr = libc::sockaddr_in {
                sin_family: libc::AF_INET as u16,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
                },
                sin_zero: [0; 8],
            };
            let len = std::mem::size_of::<libc::sockaddr_in>() as u32;
            assert_eq!(
                libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
                0
            );
            assert_eq!(libc::listen(fd, 4), 0);
            owned
        }
    })
}

#[test]
fn monitor_shows_the_daemons_decisions_with_reasons_live_and_since() {
    let lab = Lab::up("mo", &[]);
    let d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let socket = d.socket.to_str().unwrap().to_string();
    let monitor_args = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["-n", lab.client.as_str(), "--json", "monitor", "--socket"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        v.push(socket.clone());
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let args = monitor_args(&[]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (live, banner) = common::Monitor::with_args(&args);
    assert!(banner.contains("the daemon's decisions"), "{banner}");

    // A kernel event comes through the daemon, names and all.
    let _listener = mptcp_listener_in(&lab.client);
    assert!(
        live.wait_for(5, |e| e["event"] == "listener_created")
            .is_some(),
        "no listener_created through the daemon's journal"
    );
    // A carrier loss: what happened, then what the daemon did and why.
    assert!(lab
        .braid(&["lab", "cut", "1", "--carrier"])
        .status
        .success());
    let change = live.wait_for(5, |e| {
        e["event"] == "change" && e["text"].as_str().unwrap_or("").contains("carrier off")
    });
    assert!(change.is_some(), "no link change in the journal");
    let decision = live
        .wait_for(5, |e| e["event"] == "decision")
        .expect("no decision in the journal");
    assert_eq!(
        decision["action"]["action"], "remove_endpoint",
        "{decision}"
    );
    assert!(
        decision["reason"]
            .as_str()
            .unwrap_or("")
            .contains("p1 has no carrier"),
        "{decision}"
    );
    assert!(decision["time"].as_str().unwrap().ends_with('Z'));
    drop(live);

    // The same from the daemon's memory, in order.
    let args = monitor_args(&["--since", "1m"]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (past, _) = common::Monitor::with_args(&args);
    let mut seen = Vec::new();
    while let Some(e) = past.wait_for(3, |_| true) {
        seen.push(e["event"].as_str().unwrap_or("").to_string());
        if e["event"] == "decision" && e["action"]["action"] == "remove_endpoint" {
            break;
        }
    }
    let at = |what: &str| seen.iter().rposition(|e| e == what);
    assert_eq!(
        seen[0], "note",
        "the daemon's start is remembered: {seen:?}"
    );
    assert!(
        at("listener_created") < at("change") && at("change") < at("decision"),
        "--since replays in order: {seen:?}"
    );
    drop(past);

    // In text: one line per entry with the reason.
    let out = Command::new("timeout")
        .args([
            "2",
            BRAID,
            "-n",
            &lab.client,
            "monitor",
            "--since",
            "1m",
            "--socket",
            &socket,
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().any(|l| l.contains("decision")
            && l.contains("remove endpoint 10.2.0.1")
            && l.contains("p1 has no carrier")),
        "{text}"
    );

    // From another namespace the daemon's journal is not this network's.
    let (_host, banner) = common::Monitor::with_args(&["--json", "monitor", "--socket", &socket]);
    assert!(banner.contains("another network namespace"), "{banner}");
    // --since needs a daemon, and says so.
    let out = Command::new(BRAID)
        .args([
            "monitor",
            "--since",
            "1m",
            "--socket",
            "/nonexistent/braid.sock",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("--since shows the daemon's memory") && err.contains("not running"),
        "{err}"
    );
}

/// Path 0 loses its carrier; `bulk` must end whole over the other path.
fn survives_primary_carrier_loss(lab: &Lab, bulk: braid_lab::traffic::Bulk, d: &Daemon) {
    let cut = lab.braid(&["lab", "cut", "0", "--carrier"]);
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    let r = bulk.finish().unwrap();
    assert!(
        r.survived,
        "the transfer must survive the primary: {:?}\n{}",
        r.error,
        d.log_tail(30)
    );
    assert_eq!(r.bytes_corrupt, 0);
}

fn path_manager(lab: &Lab) -> String {
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &lab.client,
            "sysctl",
            "-n",
            "net.mptcp.path_manager",
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// An unmodified program (curl, through the preload library) started
/// with `braid run --mode interactive` to a port whose rule says handover:
/// its connection gets interactive, from the cgroup `braid run` made.
fn braid_run_mode_overrides_the_rules(lab: &Lab, ep: &braid_lab::traffic::Endpoints, d: &Daemon) {
    let listen: std::net::SocketAddr = "0.0.0.0:5304".parse().unwrap();
    let listener = common::in_ns(&lab.server, move || {
        braid_kernel::socket::listen(listen).map(|(l, _)| l)
    })
    .expect("listening on 5304 for curl");
    // Accept and hold the connection while curl waits for an answer; the
    // listener stays open for the joins.
    let holder = std::thread::spawn(move || {
        let conn = listener.accept();
        std::thread::sleep(Duration::from_secs(4));
        drop((conn, listener));
    });
    let url = format!("http://{}:5304/", ep.server_addr);
    let mut curl = Command::new(BRAID)
        .args(["-n", &lab.client, "run", "--mode", "interactive", "--"])
        .args(["curl", "-s", "--max-time", "3", &url])
        .spawn()
        .expect("running braid run");
    let decided = wait_for(3, || {
        d.log().lines().any(|l| {
            l.contains("connection decision")
                && l.contains("interactive mode (braid run --mode interactive (cgroup braid-run-")
        })
    });
    let _ = curl.wait();
    holder.join().unwrap();
    assert!(
        decided,
        "curl under braid run --mode interactive should get interactive: {}",
        d.log_tail(20)
    );
}

#[test]
fn userspace_pm_gives_each_connection_its_rules_mode_and_re_creates_killed_subflows() {
    let lab = Lab::up("us", &["--rate", "20mbit"]);
    let before = path_manager(&lab);
    let mut d = Daemon::start(
        &lab,
        "pm = \"userspace\"\n[policy]\nmode = \"aggregate\"\n[[app]]\ndport = 5303\nmode = \"handover\"\n[[app]]\ndport = 5304\nmode = \"handover\"\n",
        &[],
    );
    assert_eq!(path_manager(&lab), "userspace");
    let ep = transfer_endpoints(&lab);
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5303, Duration::from_secs(8)).unwrap();
    assert!(
        wait_for(3, || subflows_on(&lab, "10.2.0.1", 5303) == 1),
        "the daemon opened no subflow on p1: {}",
        d.log_tail(20)
    );
    // The rule matched: handover, the p1 subflow stands by.
    let st = d.status();
    let conns = st["connections"].as_array().cloned().unwrap_or_default();
    assert!(
        conns
            .iter()
            .any(|c| c["mode"] == "handover"
                && c["rule"].as_str().unwrap_or("").contains("dport 5303")),
        "{conns:?}"
    );
    assert!(
        d.log().contains("as a backup"),
        "the p1 subflow should be created as a backup: {}",
        d.log_tail(20)
    );
    let p1_backup = || {
        let out = Command::new(BRAID)
            .args(["-n", &lab.client, "--json", "conns"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        v.as_array().into_iter().flatten().any(|c| {
            c["subflows"].as_array().into_iter().flatten().any(|s| {
                s["local"]
                    .as_str()
                    .is_some_and(|l| l.starts_with("10.2.0.1:"))
                    && s["backup_local"] == true
            })
        })
    };
    assert!(
        wait_for(2, p1_backup),
        "the kernel does not have the p1 subflow as a backup"
    );
    let text = Command::new(BRAID)
        .args(["-n", &lab.client, "status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(
        text.contains("per connection") && text.contains("handover") && text.contains("dport 5303"),
        "{text}"
    );
    let conns = Command::new(BRAID)
        .args(["-n", &lab.client, "conns", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let conns = String::from_utf8_lossy(&conns.stdout);
    assert!(conns.contains("handover (rule 1 (dport 5303))"), "{conns}");
    braid_run_mode_overrides_the_rules(&lab, &ep, &d);
    // Killed: re-created by the daemon (the in-kernel PM never does).
    if !kill_subflows(&lab, "10.2.0.1", 5303) {
        eprintln!("skipped the kill: this kernel cannot abort a socket (ss -K)");
    } else {
        assert!(
            wait_for(3, || subflows_on(&lab, "10.2.0.1", 5303) == 1),
            "the killed subflow was not re-created: {}",
            d.log_tail(20)
        );
        assert!(d.log().contains("re-created"), "{}", d.log_tail(20));
    }
    // The primary goes: the standby carries the connection to its end.
    survives_primary_carrier_loss(&lab, bulk, &d);
    for l in d
        .log()
        .lines()
        .filter(|l| l.contains("connection decision"))
    {
        eprintln!("{l}");
    }
    d.stop();
    assert_eq!(
        path_manager(&lab),
        before,
        "the path manager is put back on stop"
    );
}

#[test]
fn userspace_pm_adopts_a_connection_older_than_the_daemon() {
    // The transfer starts before braidd, with the in-kernel path manager
    // and no endpoints: one subflow. The daemon finds it in the kernel's
    // dump, gives it its rule's mode and opens the p1 subflow.
    let lab = Lab::up("ua", &["--rate", "20mbit"]);
    let ep = transfer_endpoints(&lab);
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5308, Duration::from_secs(6)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(subflows_on(&lab, "10.2.0.1", 5308), 0);
    let d = Daemon::start(
        &lab,
        "pm = \"userspace\"\n[[app]]\ndport = 5308\nmode = \"handover\"\n",
        &[],
    );
    assert!(
        wait_for(3, || subflows_on(&lab, "10.2.0.1", 5308) == 1),
        "the daemon did not open the p1 subflow of the older connection: {}",
        d.log_tail(20)
    );
    let log = d.log();
    assert!(
        log.lines().any(|l| l.contains("connection decision")
            && l.contains("adopted")
            && l.contains("handover mode (rule 1 (dport 5308))")),
        "{}",
        d.log_tail(20)
    );
    let r = bulk.finish().unwrap();
    assert_eq!(r.bytes_corrupt, 0);
}

#[test]
fn userspace_pm_moves_one_connection_off_a_stalled_primary_and_leaves_the_others() {
    // Two uploads at once: port 5305 under a handover rule, port 5306 in
    // the default aggregate mode. p0 turns into a blackhole: the handover
    // connection sees its own stall (the sender waits for ACKs) and its
    // standby takes over; the aggregate one keeps both subflows as they are.
    let lab = Lab::up("uh", &["--rate", "20mbit"]);
    let mut d = Daemon::start(
        &lab,
        "pm = \"userspace\"\n[policy]\nmode = \"aggregate\"\n[[app]]\ndport = 5305\nmode = \"handover\"\n",
        &[],
    );
    let ep = transfer_endpoints(&lab);
    let up = braid_lab::traffic::Direction::Upload;
    let a = braid_lab::traffic::Bulk::start_dir(&ep, 5305, Duration::from_secs(6), up).unwrap();
    let b = braid_lab::traffic::Bulk::start_dir(&ep, 5306, Duration::from_secs(6), up).unwrap();
    assert!(
        wait_for(3, || subflows_on(&lab, "10.2.0.1", 5305) == 1
            && subflows_on(&lab, "10.2.0.1", 5306) == 1),
        "both connections get a p1 subflow: {}",
        d.log_tail(20)
    );
    std::thread::sleep(Duration::from_millis(1000));
    let cut = lab.braid(&["lab", "cut", "0", "--blackhole"]);
    assert!(
        cut.status.success(),
        "{}",
        String::from_utf8_lossy(&cut.stderr)
    );
    assert!(
        wait_for(3, || d.log().contains("the secondary takes over")),
        "the handover connection did not move: {}",
        d.log_tail(30)
    );
    let moved: Vec<String> = d
        .log()
        .lines()
        .filter(|l| l.contains("connection decision") && l.contains("nobackup"))
        .map(str::to_string)
        .collect();
    assert!(
        moved.iter().all(|l| l.contains("5305")),
        "only the handover connection's flags change: {moved:?}"
    );
    // Its own stall, or the host's probe of the path after a shorter
    // wait (the host-wide policy probes for the per-connection modes).
    assert!(
        moved
            .iter()
            .any(|l| l.contains("stalled") || l.contains("did not answer a probe")),
        "{moved:?}"
    );
    // The dead primary is removed from that connection (RM_ADDR), so the
    // server resends on the secondary at once.
    let removed = d
        .log()
        .lines()
        .filter(|l| l.contains("connection decision") && l.contains(": remove 10.1.0.1 id 0"))
        .count();
    assert_eq!(
        removed,
        1,
        "only the handover connection: {}",
        d.log_tail(30)
    );
    let (ra, rb) = (a.finish().unwrap(), b.finish().unwrap());
    assert!(ra.survived, "the handover upload survives: {:?}", ra.error);
    assert_eq!((ra.bytes_corrupt, rb.bytes_corrupt), (0, 0));
    d.stop();
}

#[test]
fn userspace_pm_checks_a_primary_that_stood_by_before_giving_it_the_connection_back() {
    // A handover connection leaves a blackholed primary, which then heals.
    // A primary left on measurements is not trusted for 30 s; by then its
    // subflow has stood by, carrying nothing, so nothing shows it still
    // works: the daemon probes it (a real ICMP echo from the client's p0
    // address) before the connection goes back to it.
    let lab = Lab::up("uk", &["--rate", "20mbit"]);
    let mut d = Daemon::start(
        &lab,
        "pm = \"userspace\"\n[[app]]\ndport = 5309\nmode = \"handover\"\n",
        &[],
    );
    let ep = transfer_endpoints(&lab);
    let up = braid_lab::traffic::Direction::Upload;
    let bulk = braid_lab::traffic::Bulk::start_dir(&ep, 5309, Duration::from_secs(45), up).unwrap();
    assert!(
        wait_for(3, || subflows_on(&lab, "10.2.0.1", 5309) == 1),
        "no p1 subflow: {}",
        d.log_tail(20)
    );
    std::thread::sleep(Duration::from_millis(1000));
    assert!(lab
        .braid(&["lab", "cut", "0", "--blackhole"])
        .status
        .success());
    assert!(
        wait_for(3, || d.log().contains("the secondary takes over")),
        "the connection did not move: {}",
        d.log_tail(30)
    );
    std::thread::sleep(Duration::from_millis(500));
    assert!(lab.braid(&["lab", "restore", "0"]).status.success());
    let answered = |d: &Daemon| {
        let log = d.log();
        log.contains("stood by for a connection to 10.1.0.2, but carried nothing")
            && log.contains("connection check answered")
    };
    assert!(
        wait_for(40, || answered(&d)
            && d.log().contains("it takes traffic back")),
        "no check before the hand-back: {}",
        d.log_tail(40)
    );
    // The check came before the hand-back.
    let log = d.log();
    let checked = log.find("connection check answered").unwrap();
    let back = log.rfind("it takes traffic back").unwrap();
    assert!(checked < back, "{}", d.log_tail(40));
    let r = bulk.finish().unwrap();
    assert!(r.survived, "the upload survives: {:?}", r.error);
    assert_eq!(r.bytes_corrupt, 0);
    d.stop();
}
