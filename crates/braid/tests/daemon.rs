//! `braid daemon` against the real kernel, in a lab's client namespace:
//! carrier loss, address removal and return, filtered address kinds, a late
//! interface, reload (good and bad), restart under a live transfer, ENOBUFS
//! resynchronisation, sd_notify and the control socket's permissions.

mod common;
use common::{wait_for, BRAID};

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Lab {
    name: String,
    client: String,
}

impl Lab {
    fn up(tag: &str, extra: &[&str]) -> Lab {
        let name = format!("d{}{tag}", std::process::id() % 100_000);
        let rate = if extra.is_empty() {
            vec!["--rate", "none"]
        } else {
            extra.to_vec()
        };
        let out = Command::new(BRAID)
            .args(["lab", "up", "--name", &name])
            .args(rate)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lab up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Lab {
            client: format!("{name}-c"),
            name,
        }
    }

    fn braid(&self, args: &[&str]) -> std::process::Output {
        Command::new(BRAID)
            .args(args)
            .args(["--name", &self.name])
            .output()
            .unwrap()
    }

    fn ip(&self, args: &[&str]) {
        let out = Command::new("ip")
            .args(["-n", &self.client])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
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

    fn dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/braid/lab/{}", self.name))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = Command::new(BRAID)
            .args(["lab", "down", "--name", &self.name])
            .output();
    }
}

/// A daemon in the lab's client namespace; killed on drop.
struct Daemon {
    child: Option<Child>,
    socket: PathBuf,
    config: PathBuf,
    log: PathBuf,
}

impl Daemon {
    fn start(lab: &Lab, config_extra: &str, args: &[&str]) -> Daemon {
        let dir = lab.dir();
        let socket = dir.join("t.sock");
        let config = dir.join("t.toml");
        std::fs::write(
            &config,
            format!(
                "[control]\nsocket = \"{}\"\n{config_extra}",
                socket.display()
            ),
        )
        .unwrap();
        let log = dir.join("t.log");
        let mut d = Daemon {
            child: None,
            socket,
            config,
            log,
        };
        d.spawn(lab, args, &[]);
        d
    }

    fn spawn(&mut self, lab: &Lab, args: &[&str], env: &[(&str, &str)]) {
        let child = Command::new(BRAID)
            .args(["-n", &lab.client, "daemon", "--config"])
            .arg(&self.config)
            .arg("--state-file")
            .arg(lab.dir().join("t-state.json"))
            .args(args)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&self.log).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let socket = self.socket.clone();
        assert!(
            wait_for(10, || std::os::unix::net::UnixStream::connect(&socket)
                .is_ok()),
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

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
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
    let out = Command::new(BRAID)
        .args(["daemon", "reload", "--socket", &socket])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
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
    let out = Command::new(BRAID)
        .args(["daemon", "reload", "--socket", &socket])
        .output()
        .unwrap();
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
        wait_for(5, || route(&lab, "101").contains("initcwnd 40")),
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
    assert_eq!(p1["standby_initcwnd"], 40, "{ifs:#}");
    // Someone replaces the route without it: the daemon sets it again.
    lab.ip(&["route", "replace", "table", "101", "default", "dev", "p1"]);
    assert!(
        wait_for(5, || route(&lab, "101").contains("initcwnd 40")),
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

#[test]
fn restart_under_a_live_transfer() {
    let lab = Lab::up("rs", &["--rate", "20mbit"]);
    let mut d = Daemon::start(&lab, "", &[]);
    assert_endpoints(&lab, &["10.1.0.1", "10.2.0.1"], "at start");
    let ep = braid_lab::traffic::Endpoints {
        client_ns: lab.client.clone(),
        server_ns: format!("{}-s", lab.name),
        server_addr: "10.1.0.2".parse().unwrap(),
        mptcp_server_ns: format!("{}-s", lab.name),
        path_client_addrs: vec!["10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap()],
        way: braid_lab::traffic::ClientWay::Mptcp,
    };
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
