//! The userspace path-manager commands on a live connection: create a
//! subflow, flag it backup (twice: each sends an MP_PRIO), destroy it,
//! announce and withdraw an address.

mod common;
use common::{wait_for, Monitor, TwoPaths};

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::mpsc;

use braid_kernel::{diag, pm::PathManager, socket};

#[test]
fn userspace_pm_creates_and_destroys_a_subflow() {
    let lab = TwoPaths::new("upm");
    lab.client.sysctl("path_manager", "userspace");
    let server_monitor = Monitor::start(&lab.server);

    let any: SocketAddr = "0.0.0.0:5001".parse().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let server = lab.server.spawn(move || {
        let (l, _) = socket::listen(any).unwrap();
        ready_tx.send(()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        let mut sink = Vec::new();
        s.read_to_end(&mut sink).unwrap();
        sink.len()
    });
    ready_rx.recv().unwrap();

    let (tok_tx, tok_rx) = mpsc::channel();
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let client = lab.client.spawn(move || {
        let (mut s, t) = socket::connect("10.0.1.2:5001".parse().unwrap()).unwrap();
        assert_eq!(t, socket::Transport::Mptcp);
        s.write_all(&[7u8; 4096]).unwrap();
        let mut token = 0;
        assert!(wait_for(5, || {
            token = socket::mptcp_info(&s)
                .unwrap()
                .map(|i| i.token)
                .unwrap_or(0);
            token != 0
        }));
        tok_tx.send(token).unwrap();
        done_rx.recv().unwrap();
        s.write_all(&[7u8; 4096]).unwrap();
    });
    let token = tok_rx.recv().unwrap();

    // The PM commands run in the client namespace, like a userspace PM
    // daemon's would.
    let remote: SocketAddr = "10.0.2.2:5001".parse().unwrap();
    let subflows_of = move || {
        diag::subflows()
            .unwrap()
            .into_iter()
            .filter(|s| s.token_local == token)
            .collect::<Vec<_>>()
    };
    let local = lab
        .client
        .run(move || -> Result<SocketAddr, String> {
            let mut pm = PathManager::open().map_err(|e| e.to_string())?;
            pm.subflow_create(token, 2, "10.0.2.1".parse().unwrap(), remote, false)
                .map_err(|e| format!("subflow_create: {e}"))?;
            if !wait_for(5, || {
                subflows_of()
                    .iter()
                    .any(|s| s.remote == remote && s.state == "established")
            }) {
                return Err(format!("no second subflow: {:?}", subflows_of()));
            }
            let new = subflows_of()
                .into_iter()
                .find(|s| s.remote == remote)
                .unwrap();
            // A join's MP_PRIO waits for the join to be complete.
            if !wait_for(5, || {
                pm.set_subflow_backup(token, new.local, remote, true)
                    .is_ok()
            }) {
                return Err("set backup refused".into());
            }
            if !wait_for(5, || {
                subflows_of()
                    .iter()
                    .any(|s| s.remote == remote && s.backup_local)
            }) {
                return Err("backup flag not set".into());
            }
            Ok(new.local)
        })
        .unwrap();
    let prio = |e: &serde_json::Value| e["event"] == "sub_priority" && e["backup"] == true;
    assert!(
        server_monitor.wait_for(5, prio).is_some(),
        "the server hears the MP_PRIO"
    );
    // The same flag set again is sent again (the per-connection policy
    // relies on it to tell a peer that lost the first one).
    lab.client
        .run(move || {
            PathManager::open()
                .unwrap()
                .set_subflow_backup(token, local, remote, true)
        })
        .unwrap();
    assert!(
        server_monitor.wait_for(5, prio).is_some(),
        "the server hears the MP_PRIO again"
    );
    lab.client
        .run(move || -> Result<(), String> {
            let mut pm = PathManager::open().map_err(|e| e.to_string())?;
            pm.subflow_destroy(token, local, remote)
                .map_err(|e| format!("subflow_destroy: {e}"))?;
            if !wait_for(5, || !subflows_of().iter().any(|s| s.remote == remote)) {
                return Err(format!("subflow still there: {:?}", subflows_of()));
            }
            if subflows_of().len() != 1 {
                return Err("the initial subflow should remain".into());
            }
            pm.announce(token, 5, "10.0.2.1".parse().unwrap(), None)
                .map_err(|e| format!("announce: {e}"))?;
            Ok(())
        })
        .unwrap();
    let announced = server_monitor.wait_for(5, |e| e["event"] == "announced" && e["rem_id"] == 5);
    let announced = announced.expect("the server sees the ADD_ADDR");
    assert_eq!(announced["daddr"], "10.0.2.1");

    lab.client
        .run(move || PathManager::open().unwrap().remove(token, 5))
        .unwrap();
    assert!(server_monitor
        .wait_for(5, |e| e["event"] == "removed" && e["rem_id"] == 5)
        .is_some());

    // A request for a connection that does not exist is a clear error.
    let err = lab
        .client
        .run(|| PathManager::open().unwrap().remove(0xdead_beef, 5))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("userspace path manager") || err.contains("token"),
        "{err}"
    );

    done_tx.send(()).unwrap();
    client.join().unwrap();
    assert_eq!(server.join().unwrap(), 8192);
}
