//! Subflows looked up one by one (what the daemon's health rounds do
//! between full dumps) are the ones a dump lists, including a subflow
//! bound to its interface by an endpoint's `dev`, with their tcp_info and
//! receive buffer; gone ones are not found.

mod common;
use common::{wait_for, TwoPaths};

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;

use braid_kernel::{diag, socket};

#[test]
fn a_subflow_looked_up_by_its_addresses_is_the_one_the_dump_lists() {
    let lab = TwoPaths::new("dlk");
    lab.client.ip(&[
        "mptcp", "endpoint", "add", "10.0.2.1", "dev", "c1", "subflow",
    ]);
    let any: SocketAddr = "0.0.0.0:5003".parse().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let (stop_tx, stop_rx) = mpsc::channel::<()>();
    // The listener stays open for the whole test: joins arrive there, and
    // a lookup of a closed server-side subflow must not find it instead.
    let server = lab.server.spawn(move || {
        let (l, _) = socket::listen(any).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        drop(s);
        stop_rx.recv().unwrap();
        drop(l);
        sink.len()
    });
    ready_rx.recv().unwrap();

    let (up_tx, up_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let client = lab.client.spawn(move || {
        let (mut s, t) = socket::connect(TwoPaths::server_addr(5003)).unwrap();
        assert_eq!(t, socket::Transport::Mptcp);
        s.write_all(&[7u8; 4096]).unwrap();
        up_tx.send(()).unwrap();
        done_rx.recv().unwrap();
    });
    up_rx.recv().unwrap();

    let result = lab.client.run(|| -> Result<Vec<diag::SocketKey>, String> {
        let established = || -> Vec<diag::Subflow> {
            diag::subflows()
                .unwrap()
                .into_iter()
                .filter(|s| s.state == "established")
                .collect()
        };
        if !wait_for(5, || established().len() == 2) {
            return Err(format!("no second subflow: {:?}", established()));
        }
        let dumped = established();
        let keys: Vec<diag::SocketKey> = dumped.iter().map(|s| s.key()).collect();
        if !keys.iter().any(|k| k.bound_ifindex != 0) {
            return Err(format!("the endpoint's subflow is not bound: {keys:?}"));
        }
        let found = diag::lookup_subflows(&keys).map_err(|e| e.to_string())?;
        for (d, f) in dumped.iter().zip(&found) {
            let f = f.as_ref().ok_or(format!("{:?} not found", d.key()))?;
            let same = (
                f.local,
                f.remote,
                f.bound_ifindex,
                f.token_local,
                f.local_id,
                f.state,
            ) == (
                d.local,
                d.remote,
                d.bound_ifindex,
                d.token_local,
                d.local_id,
                d.state,
            );
            if !same || f.tcp.is_none() {
                return Err(format!("looked up {f:?}, dumped {d:?}"));
            }
            // The receive buffer comes with both (the doctor's hint on
            // subflows left at tcp_rmem's initial size reads it).
            if !(d.rcvbuf.is_some_and(|b| b > 0) && f.rcvbuf.is_some_and(|b| b > 0)) {
                return Err(format!("no receive buffer: looked up {f:?}, dumped {d:?}"));
            }
        }
        Ok(keys)
    });
    let server_keys = lab.server.run(|| {
        diag::subflows()
            .unwrap()
            .into_iter()
            .filter(|s| s.state == "established")
            .map(|s| s.key())
            .collect::<Vec<_>>()
    });
    done_tx.send(()).unwrap();
    client.join().unwrap();
    let keys = result.unwrap();
    assert_eq!(server_keys.len(), 2, "{server_keys:?}");
    let server_gone = lab.server.run(move || all_gone_within(5, &server_keys));
    stop_tx.send(()).unwrap();
    assert_eq!(server.join().unwrap(), 4096);
    assert!(server_gone, "a closed subflow's lookup found the listener");

    // Closed: the same keys find nothing (a socket in TIME_WAIT is no
    // subflow).
    let gone = lab.client.run(move || all_gone_within(5, &keys));
    assert!(gone, "closed subflows are still found");
}

/// Whether, within `secs` seconds, a lookup of every key finds nothing.
fn all_gone_within(secs: u64, keys: &[diag::SocketKey]) -> bool {
    wait_for(secs, || {
        diag::lookup_subflows(keys)
            .unwrap()
            .iter()
            .all(Option::is_none)
    })
}
