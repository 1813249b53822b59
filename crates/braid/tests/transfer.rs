//! A real two-path MPTCP transfer between two namespaces: `braid monitor
//! --json` sees the connection's life and `braid conns` both subflows.

mod common;
use common::{wait_for, Monitor, TwoPaths};

use std::io::{Read, Write};
use std::sync::mpsc;
use std::time::Duration;

const BYTES: usize = 8 << 20;

fn pattern(i: usize) -> u8 {
    (i % 251) as u8
}

#[test]
fn monitor_and_conns_during_two_path_transfer() {
    let lab = TwoPaths::new("xfer");
    // The client opens its second subflow from path 2, bound to its device.
    lab.client
        .braid_ok(&["endpoint", "add", "10.0.2.1", "dev", "c1", "subflow"]);

    let monitor = Monitor::start(&lab.client);

    let addr = TwoPaths::server_addr(5000);
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.server.spawn(move || {
        let (listener, t) = braid_kernel::socket::listen(addr).unwrap();
        assert_eq!(t, braid_kernel::socket::Transport::Mptcp);
        ready_tx.send(()).unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let (mut total, mut bad) = (0usize, 0usize);
        loop {
            let n = s.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bad += buf[..n]
                .iter()
                .enumerate()
                .filter(|(i, b)| **b != pattern(total + i))
                .count();
            total += n;
        }
        (total, bad)
    });
    ready_rx.recv().unwrap();

    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (conn_tx, conn_rx) = mpsc::channel();
    let client = lab.client.spawn(move || {
        let (mut s, t) = braid_kernel::socket::connect(addr).unwrap();
        let data: Vec<u8> = (0..BYTES).map(pattern).collect();
        // The client side is fully established (and the path manager opens
        // more subflows) only once the first data is acknowledged.
        s.write_all(&data[..1024]).unwrap();
        conn_tx.send((t, s.local_addr().unwrap())).unwrap();
        go_rx.recv().unwrap();
        s.write_all(&data[1024..]).unwrap();
    });
    let (transport, local) = conn_rx.recv().unwrap();
    assert_eq!(transport, braid_kernel::socket::Transport::Mptcp);

    // Both subflows show up in `braid conns` while the connection is open.
    let mut conns = serde_json::Value::Null;
    let both = wait_for(10, || {
        conns = serde_json::from_str(&lab.client.braid_ok(&["--json", "conns"])).unwrap();
        conns[0]["subflows"]
            .as_array()
            .is_some_and(|s| s.len() == 2)
    });
    assert!(both, "expected two subflows, braid conns said: {conns:#}");
    let sf = conns[0]["subflows"].as_array().unwrap();
    let locals: Vec<&str> = sf.iter().map(|s| s["local"].as_str().unwrap()).collect();
    assert!(
        locals.iter().any(|l| l.starts_with("10.0.1.1:")),
        "{locals:?}"
    );
    assert!(
        locals.iter().any(|l| l.starts_with("10.0.2.1:")),
        "{locals:?}"
    );
    assert!(
        sf.iter().any(|s| s["dev"] == "c1"),
        "second subflow on c1: {conns:#}"
    );
    assert_eq!(conns[0]["fell_back"], false);
    let text = lab.client.braid_ok(&["conns"]);
    assert!(
        text.contains("10.0.2.1") && text.contains("subflows 2"),
        "{text}"
    );

    go_tx.send(()).unwrap();
    client.join().unwrap();
    let (total, bad) = server.join().unwrap();
    assert_eq!((total, bad), (BYTES, 0), "every byte arrives intact");

    // Collect events until this connection's `closed`.
    let mut events = Vec::new();
    let mut token = None;
    while let Ok(ev) = monitor.events.recv_timeout(Duration::from_secs(10)) {
        if ev["event"] == "created" && ev["sport"] == local.port() {
            token = ev["token"].as_u64();
        }
        let closed = ev["event"] == "closed" && token.is_some() && ev["token"].as_u64() == token;
        events.push(ev);
        if closed {
            break;
        }
    }
    let token = token.expect("a created event for our connection");
    let ours: Vec<&serde_json::Value> = events
        .iter()
        .filter(|e| e["token"].as_u64() == Some(token))
        .collect();
    let kinds: Vec<&str> = ours.iter().map(|e| e["event"].as_str().unwrap()).collect();
    for k in ["created", "established", "sub_established", "closed"] {
        assert!(kinds.contains(&k), "missing {k} in {kinds:?}");
    }
    let sub = ours
        .iter()
        .find(|e| e["event"] == "sub_established")
        .unwrap();
    assert_eq!(sub["saddr"], "10.0.2.1", "{sub}");
    assert_eq!(sub["daddr"], "10.0.1.2", "{sub}");
    assert_eq!(sub["dport"], 5000, "{sub}");
    assert_eq!(sub["dev"], "c1", "{sub}");
    assert!(sub["loc_id"].as_u64().unwrap() > 0, "{sub}");
    let created = ours.iter().find(|e| e["event"] == "created").unwrap();
    assert_eq!(created["saddr"], "10.0.1.1");
    assert_eq!(created["dport"], 5000);
}
