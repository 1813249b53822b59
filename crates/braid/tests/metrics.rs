//! The daemon's Prometheus metrics against the real kernel: `braid daemon`
//! in a lab's client namespace with `[metrics] listen` on the namespace's
//! address and a textfile, scraped over HTTP during and after an MPTCP
//! download; the body checked by Prometheus's own `promtool check metrics`
//! when it is installed (`scripts/deps promtool`), skipped with the reason
//! otherwise; misbehaving HTTP clients; a port that cannot be had; scrape
//! time and the daemon's resident memory with and without metrics, printed
//! (not asserted: timing goals are measured, not unit-tested).

mod common;
use common::{wait_for, BRAID};
#[path = "common/daemon_kit.rs"]
mod daemon_kit;
use daemon_kit::{Daemon, Lab};

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

const LISTEN: &str = "10.1.0.1:9853";

fn lab(tag: &str) -> Lab {
    Lab::create(
        format!("m{}{tag}", std::process::id() % 100_000),
        &["--rate", "20mbit"],
    )
}

/// One HTTP exchange from inside `ns`: the whole answer (head and body)
/// and how long it took from connect to the server's close.
fn http(ns: &str, addr: SocketAddr, request: &[u8]) -> (String, Duration) {
    let request = request.to_vec();
    common::in_ns(ns, move || {
        let t = Instant::now();
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        // The server may answer (and close) before taking all of it.
        let _ = s.write_all(&request);
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        (String::from_utf8_lossy(&answer).into_owned(), t.elapsed())
    })
}

/// `GET /metrics`: the body, which must come with 200, and the time taken.
fn scrape(ns: &str) -> (String, Duration) {
    let (answer, took) = http(
        ns,
        LISTEN.parse().unwrap(),
        b"GET /metrics HTTP/1.1\r\nHost: braid\r\nAccept: text/plain\r\n\r\n",
    );
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"));
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("a Content-Length");
    assert_eq!(len, body.len(), "Content-Length matches the body");
    (body.to_string(), took)
}

/// The values of `name`'s samples whose labels include every one of `labels`.
fn values(text: &str, name: &str, labels: &[&str]) -> Vec<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .collect()
}

fn sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    values(text, name, labels).iter().sum()
}

/// `promtool check metrics` on `text`, if promtool is installed: None
/// when it is not (the reason is printed), else its complaints (empty
/// when clean).
fn promtool(text: &str) -> Option<String> {
    use std::process::Stdio;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            eprintln!("SKIP promtool check: promtool is not installed ({e}); `sudo scripts/deps promtool` installs Debian's prometheus package");
            return None;
        }
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() && said.trim().is_empty() {
        return Some(format!("promtool failed: {}", out.status));
    }
    Some(said.trim().to_string())
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let l = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    l.split_whitespace().nth(1).unwrap().parse().unwrap()
}

fn start(lab: &Lab, prefix: &str, extra: &str) -> Daemon {
    let mut d = Daemon::configure(lab, prefix, extra);
    let cmd = d.in_client();
    d.launch(cmd, &[], &[], true);
    assert!(d.wait_up(), "daemon did not start: {}", d.log());
    d
}

fn status(d: &Daemon) -> serde_json::Value {
    let out = Command::new(BRAID)
        .args(["--json", "status", "--socket"])
        .arg(&d.socket)
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["daemon"].clone()
}

fn feature(d: &Daemon, name: &str) -> serde_json::Value {
    status(d)["features"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no feature {name}: {}", status(d)))
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn metrics_are_served_checked_by_promtool_and_cheap() {
    let lab = lab("m");
    // The same daemon without metrics, for its resident memory.
    let mut plain = start(&lab, "plain", "");
    std::thread::sleep(Duration::from_millis(1000));
    let rss_without = rss_kib(plain.pid());
    assert_eq!(feature(&plain, "metrics")["on"], false);
    plain.stop_within(10).unwrap();
    // Its endpoints stay (remove_on_stop = false): the next daemon, with
    // a state file of its own, would take them for someone else's.
    lab.ip(&["mptcp", "endpoint", "flush"]);

    let textfile = lab.dir().join("braid.prom");
    let d = start(
        &lab,
        "m",
        &format!(
            "[policy]\nmode = \"handover\"\n\n[metrics]\nlisten = \"{LISTEN}\"\ntextfile = \"{}\"\ntextfile_interval_s = 1\n",
            textfile.display()
        ),
    );
    let f = feature(&d, "metrics");
    assert_eq!(f["on"], true, "{f}");
    assert!(
        f["how"]
            .as_str()
            .unwrap()
            .contains(&format!("http://{LISTEN}/metrics")),
        "{f}"
    );
    assert!(
        wait_for(10, || sum(
            &scrape(&lab.client).0,
            "braid_endpoints",
            &["owner=\"braid\""]
        ) == 2.0),
        "two endpoints of Braid's: {}",
        scrape(&lab.client).0
    );

    // Scrape time and memory, idle (no MPTCP connection).
    let times: Vec<Duration> = (0..100).map(|_| scrape(&lab.client).1).collect();
    let rss_with = rss_kib(d.pid());
    eprintln!(
        "scrape (connect to close, from the namespace, 100 scrapes): median {:?}, max {:?}; daemon RSS {} KiB with metrics (after the scrapes) vs {} KiB without: {:+} KiB",
        median(times.clone()),
        times.iter().max().unwrap(),
        rss_with,
        rss_without,
        rss_with as i64 - rss_without as i64
    );

    // A download over MPTCP, scraped while it runs.
    let ep = braid_lab::traffic::Endpoints {
        client_ns: lab.client.clone(),
        server_ns: lab.server.clone(),
        server_addr: "10.1.0.2".parse().unwrap(),
        mptcp_server_ns: lab.server.clone(),
        path_client_addrs: vec!["10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap()],
        way: braid_lab::traffic::ClientWay::Mptcp,
    };
    let bulk = braid_lab::traffic::Bulk::start(&ep, 5311, Duration::from_secs(3)).unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let (during, took) = scrape(&lab.client);
    eprintln!("scrape during the download: {took:?}");
    let r = bulk.finish().unwrap();
    assert!(r.survived, "{:?}", r.error);
    assert!(
        sum(&during, "braid_path_subflows", &[]) >= 1.0,
        "subflows during the download:\n{during}"
    );
    assert!(
        !values(&during, "braid_path_rtt_seconds", &["interface=\"p0\""]).is_empty(),
        "p0's RTT while it has subflows:\n{during}"
    );
    assert!(
        !values(&during, "braid_path_unsent_bytes", &["interface=\"p0\""]).is_empty(),
        "p0's unsent bytes while it has subflows:\n{during}"
    );
    let (text, took) = scrape(&lab.client);
    eprintln!(
        "scrape after the download: {took:?}, {} bytes, {} samples",
        text.len(),
        text.lines().filter(|l| !l.starts_with('#')).count()
    );

    // What the download did, per path.
    let received = sum(&text, "braid_path_receive_bytes_total", &[]);
    assert!(
        (r.bytes_received as f64 * 0.5..=r.bytes_received as f64 * 1.5).contains(&received),
        "per-path received bytes {received} vs {} read by the client:\n{text}",
        r.bytes_received
    );
    assert!(
        sum(
            &text,
            "braid_path_receive_bytes_total",
            &["interface=\"p0\"", "role=\"primary\"", "family=\"ipv4\""]
        ) > 0.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "braid_path_state",
            &["interface=\"p0\"", "state=\"active\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(
        sum(
            &text,
            "braid_path_state",
            &["interface=\"p1\"", "state=\"standby\""]
        ),
        1.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "braid_path_state_seconds_total",
            &["interface=\"p0\"", "state=\"active\""]
        ) > 1.0,
        "{text}"
    );
    assert!(
        sum(&text, "braid_mptcp_events_total", &["type=\"created\""]) >= 1.0,
        "{text}"
    );
    assert!(
        sum(
            &text,
            "braid_mptcp_events_total",
            &["type=\"sub_established\""]
        ) >= 1.0,
        "{text}"
    );
    assert!(
        sum(&text, "braid_decisions_total", &["action=\"add_endpoint\""]) >= 2.0,
        "{text}"
    );
    assert_eq!(
        sum(&text, "braid_kernel_mptcp_counters_available", &[]),
        1.0
    );
    assert!(
        text.lines()
            .any(|l| l.starts_with("braid_kernel_mptcp_") && l.contains("_total ")),
        "the kernel's MPTcpExt counters:\n{text}"
    );
    // No per-connection label, only the path's.
    for l in text.lines().filter(|l| l.starts_with("braid_path_")) {
        assert!(
            !l.contains("10.1.0") && !l.contains("port") && !l.contains("token"),
            "{l}"
        );
    }

    // Prometheus's own check.
    if let Some(problems) = promtool(&text) {
        assert!(
            problems.is_empty(),
            "promtool check metrics:\n{problems}\n{text}"
        );
    }

    // The textfile, rewritten every second.
    assert!(
        wait_for(5, || std::fs::read_to_string(&textfile).is_ok_and(
            |t| t.contains("braid_path_receive_bytes_total{interface=\"p0\"")
        )),
        "textfile {}",
        textfile.display()
    );
    let file = std::fs::read_to_string(&textfile).unwrap();
    assert!(file.starts_with("# HELP braid_info "), "{file}");
    if let Some(problems) = promtool(&file) {
        assert!(problems.is_empty(), "promtool on the textfile:\n{problems}");
    }

    // Other requests.
    let addr: SocketAddr = LISTEN.parse().unwrap();
    let (a, _) = http(&lab.client, addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(a.starts_with("HTTP/1.1 404 "), "{a}");
    let (a, _) = http(
        &lab.client,
        addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(
        a.starts_with("HTTP/1.1 405 ") && a.contains("Allow: GET, HEAD"),
        "{a}"
    );
    let (a, _) = http(&lab.client, addr, b"HEAD /metrics HTTP/1.1\r\n\r\n");
    assert!(
        a.starts_with("HTTP/1.1 200 ") && a.ends_with("\r\n\r\n"),
        "{a}"
    );
    // Over the 8 KiB limit, but not by much: the daemon reads all of it
    // before answering, so its close is a FIN, not a reset that could
    // destroy the answer.
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 8300));
    let (a, _) = http(&lab.client, addr, &huge);
    assert!(a.starts_with("HTTP/1.1 431 "), "{a}");

    // Slow clients hold a slot for the read deadline at most; when all
    // are taken the next is told so at once, and the daemon carries on.
    let silent: Vec<TcpStream> = common::in_ns(&lab.client, move || {
        (0..4)
            .map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).unwrap())
            .collect()
    });
    std::thread::sleep(Duration::from_millis(200));
    // (Sending nothing: a request the daemon does not read would make its
    // close a reset.)
    let (a, took) = http(&lab.client, addr, b"");
    assert!(a.starts_with("HTTP/1.1 503 "), "{a}");
    assert!(took < Duration::from_secs(1), "busy answer took {took:?}");
    assert!(
        wait_for(5, || {
            let (a, _) = http(&lab.client, addr, b"GET /metrics HTTP/1.1\r\n\r\n");
            a.starts_with("HTTP/1.1 200 ")
        }),
        "scrapes work again once the silent clients' deadline passed"
    );
    drop(silent);
    assert_eq!(status(&d)["pid"].as_u64(), Some(d.pid() as u64));
}

#[test]
fn a_port_that_cannot_be_had_turns_metrics_off_not_the_daemon() {
    let lab = lab("p");
    // Someone else holds the port in the namespace.
    let addr: SocketAddr = "10.1.0.1:9854".parse().unwrap();
    let held = common::in_ns(&lab.client, move || {
        std::net::TcpListener::bind(addr).unwrap()
    });
    let d = start(&lab, "p", "[metrics]\nlisten = \"10.1.0.1:9854\"\n");
    let f = feature(&d, "metrics");
    assert_eq!(f["on"], false, "{f}");
    assert!(
        f["why"]
            .as_str()
            .unwrap()
            .contains("cannot listen on 10.1.0.1:9854"),
        "{f}"
    );
    drop(held);
    assert!(d.log().contains("metrics are not served"), "{}", d.log());
}

#[test]
fn bad_metrics_settings_are_refused_with_line_and_key() {
    let dir = std::env::temp_dir().join(format!("braid-metrics-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (text, says) in [
        (
            "[metrics]\nlisten = \"127.0.0.1:0\"\n",
            "line 2, key 'metrics.listen': port 0",
        ),
        (
            "[metrics]\nlisten = \"localhost:9853\"\n",
            "not an IP address and port",
        ),
        ("[metrics]\ntextfile = \"/tmp/braid.txt\"\n", ".prom"),
        ("[metrics]\nlisten_on = \"127.0.0.1:9853\"\n", "listen_on"),
    ] {
        let f = dir.join("braid.toml");
        std::fs::write(&f, text).unwrap();
        let out = Command::new(BRAID)
            .args(["daemon", "--check-config", "--config"])
            .arg(&f)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(err.contains(says), "{text}: {err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
