//! Bad input gives a clear error and a non-zero exit, never a panic.

mod common;
use common::{Netns, BRAID};

use std::os::unix::process::CommandExt;
use std::process::{Command, Output};

fn check(out: &Output, expect: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should fail: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    for e in expect {
        assert!(err.contains(e), "stderr should mention '{e}': {err}");
    }
}

#[test]
fn bad_arguments() {
    let ns = Netns::new("bad");
    ns.ip(&["link", "add", "b0", "type", "veth", "peer", "name", "b1"]);
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.256", "subflow"]),
        &["invalid address", "10.0.0.256"],
    );
    check(
        &ns.braid(&["endpoint", "add", "not-an-ip"]),
        &["invalid address"],
    );
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "turbo"]),
        &["unknown endpoint flag 'turbo'", "allowed"],
    );
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "dev", "nosuch0", "subflow"]),
        &["no interface named 'nosuch0'"],
    );
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "id", "256"]),
        &["out of range", "1 to 255"],
    );
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "id", "0"]),
        &["out of range"],
    );
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "id"]),
        &["needs a value"],
    );
    check(
        &ns.braid(&["endpoint", "del", "id", "42"]),
        &["no such endpoint"],
    );
    check(&ns.braid(&["endpoint", "set", "id", "3", "signal"]), &[]);
    check(&ns.braid(&["limits", "set", "subflows", "9"]), &["0 to 8"]);
    check(
        &ns.braid(&["limits", "set", "turbo", "1"]),
        &["unknown limit"],
    );
    // The kernel's own refusals are explained.
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "signal", "fullmesh"]),
        &["flag combination", "kernel says"],
    );
    ns.braid_ok(&["endpoint", "add", "10.0.0.1", "id", "1", "subflow"]);
    check(
        &ns.braid(&["endpoint", "add", "10.0.0.1", "id", "1", "subflow"]),
        &["already exists"],
    );
    // Unknown commands and namespaces.
    check(
        &Command::new(BRAID).arg("frobnicate").output().unwrap(),
        &["frobnicate"],
    );
    check(
        &Command::new(BRAID)
            .args(["-n", "bt-no-such-ns", "status"])
            .output()
            .unwrap(),
        &["does not exist"],
    );
}

#[test]
fn without_cap_net_admin() {
    let ns = Netns::new("nocap");
    let mut cmd = Command::new(BRAID);
    cmd.args(["-n", &ns.name, "endpoint", "add", "10.0.0.1", "subflow"]);
    // Drop CAP_NET_ADMIN (12) and CAP_SYS_ADMIN (21, needed by setns) from
    // the bounding set: as root, exec then gives a process without them.
    unsafe {
        cmd.pre_exec(|| {
            for cap in [12, 21] {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let out = cmd.output().unwrap();
    check(&out, &["CAP_SYS_ADMIN"]);

    // Without CAP_NET_ADMIN but in the right namespace already: the kernel refuses.
    let out = ns.run(move || {
        let mut cmd = Command::new(BRAID);
        cmd.args(["endpoint", "add", "10.0.0.1", "subflow"]);
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_CAPBSET_DROP, 12, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.output().unwrap()
    });
    check(&out, &["permission denied", "CAP_NET_ADMIN"]);
}
