//! Each rule fires on the facts that should trigger it, and not otherwise.

use braid_kernel::error::Op;
use braid_kernel::interfaces::Interfaces;
use braid_kernel::pm::{Endpoint, EndpointFlags, Limits};
use braid_kernel::rtnl::{Address, Link};
use braid_kernel::Error;

use super::{hints, Severity};
use crate::facts::{ConnectionSummary, Facts, PmTable};

const SUBFLOW: u32 = EndpointFlags::SUBFLOW;
const SIGNAL: u32 = EndpointFlags::SIGNAL;

fn endpoint(id: u8, addr: &str, flags: u32, ifindex: Option<u32>) -> Endpoint {
    Endpoint {
        id,
        addr: addr.parse().unwrap(),
        port: None,
        flags: EndpointFlags(flags),
        ifindex,
        unknown_attrs: Vec::new(),
    }
}

fn link(index: u32, name: &str, up: bool, carrier: bool) -> Link {
    Link {
        index,
        name: name.into(),
        up,
        carrier,
        loopback: false,
        carrier_changes: None,
    }
}

fn address(ifindex: u32, addr: &str) -> Address {
    Address {
        ifindex,
        addr: addr.parse().unwrap(),
        prefix_len: 24,
        flags: 0,
    }
}

/// A client with one working 'subflow' endpoint on wlan0: nothing to report.
fn healthy() -> Facts {
    Facts {
        mptcp_available: true,
        mptcp_enabled: Some(true),
        path_manager: Some("kernel".into()),
        pm_table: Some(Ok(PmTable {
            limits: Limits {
                subflows: 2,
                add_addr_accepted: 1,
            },
            endpoints: vec![endpoint(1, "192.0.2.2", SUBFLOW, Some(2))],
        })),
        interfaces: Some(Interfaces::new(
            vec![link(1, "eth0", true, true), link(2, "wlan0", true, true)],
            vec![address(1, "192.0.2.1"), address(2, "192.0.2.2")],
        )),
        connections: Some(ConnectionSummary::default()),
        no_dss_in_window: 0,
        mptcp_blackholes: 0,
        mpc_syn_drops: 0,
        blackhole_timeout_s: Some(3600),
        daemon_answers: false,
        small_receive_buffers: Vec::new(),
        deep_send_queues: Vec::new(),
        largest_bdp: 0,
        send_buffer_sizes: Some([4096, 16384, 4_194_304]),
    }
}

fn table(f: &mut Facts) -> &mut PmTable {
    f.pm_table.as_mut().unwrap().as_mut().ok().unwrap()
}

fn problems(f: &Facts) -> Vec<String> {
    hints(f).into_iter().map(|h| h.problem).collect()
}

/// The one hint the facts give, as (severity, problem, fix).
fn only_hint(f: &Facts) -> (Severity, String, String) {
    let mut hs = hints(f);
    assert_eq!(hs.len(), 1, "{:?}", hs);
    let h = hs.remove(0);
    (h.severity, h.problem, h.fix)
}

#[test]
fn healthy_facts_give_no_hints() {
    assert!(hints(&healthy()).is_empty());
}

#[test]
fn no_mptcp_is_the_only_hint() {
    let mut f = healthy();
    f.mptcp_available = false;
    f.mptcp_enabled = Some(false);
    f.no_dss_in_window = 3;
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Error);
    assert_eq!(problem, "this kernel has no MPTCP (no /proc/sys/net/mptcp)");
}

#[test]
fn disabled_mptcp() {
    let mut f = healthy();
    f.mptcp_enabled = Some(false);
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Error);
    assert!(problem.starts_with("MPTCP is disabled"));
    assert!(fix.starts_with("sysctl -w net.mptcp.enabled=1"));
    f.mptcp_enabled = None;
    assert!(hints(&f).is_empty(), "unknown is not disabled");
}

fn unreadable_fix(e: Error) -> String {
    let mut f = healthy();
    f.pm_table = Some(Err(e));
    // Without a table the 'no endpoints' rule fires too, unless a daemon
    // answers.
    f.daemon_answers = true;
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Error);
    assert!(problem.starts_with("cannot read the path manager's endpoints and limits: "));
    fix
}

#[test]
fn unreadable_path_manager_fix_depends_on_the_error() {
    let kernel = |errno| Error::Kernel {
        op: Op::GetLimits,
        errno,
        extack: None,
    };
    assert!(unreadable_fix(kernel(libc::EPERM)).starts_with("run 'braid status' as root"));
    assert!(unreadable_fix(kernel(libc::EACCES)).starts_with("run 'braid status' as root"));
    assert!(unreadable_fix(Error::NoMptcpFamily).starts_with("load MPTCP ('modprobe mptcp')"));
    assert_eq!(unreadable_fix(kernel(libc::EINVAL)), "see the error above");
}

#[test]
fn subflows_limit_zero_is_an_error() {
    let mut f = healthy();
    table(&mut f).limits.subflows = 0;
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Error);
    assert_eq!(problem, "the 'subflows' limit is 0, so none of the 1 'subflow' endpoint(s) can ever open an extra subflow");
    assert_eq!(fix, "braid limits set subflows 1");
}

#[test]
fn subflows_limit_below_the_endpoints_is_a_warning() {
    let mut f = healthy();
    let t = table(&mut f);
    t.limits.subflows = 1;
    t.endpoints.push(endpoint(2, "192.0.2.1", SUBFLOW, None));
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert_eq!(
        problem,
        "2 'subflow' endpoints but the 'subflows' limit is 1: some endpoints will not be used"
    );
    assert_eq!(fix, "braid limits set subflows 2");
}

#[test]
fn add_addr_accepted_zero_matters_only_with_subflows() {
    let mut f = healthy();
    table(&mut f).limits.add_addr_accepted = 0;
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Info);
    assert!(problem.starts_with("'add_addr_accepted' is 0"));
    let t = table(&mut f);
    t.limits.subflows = 0;
    t.endpoints[0].flags = EndpointFlags(SIGNAL);
    assert!(hints(&f).is_empty());
}

#[test]
fn more_endpoints_than_the_kernel_uses() {
    let mut f = healthy();
    f.interfaces = None;
    let t = table(&mut f);
    t.endpoints = (1..=9)
        .map(|id| endpoint(id, &format!("192.0.2.{id}"), SIGNAL, None))
        .collect();
    assert_eq!(
        problems(&f),
        ["9 endpoints: the kernel uses at most 8 per connection"]
    );
    table(&mut f).endpoints.pop();
    assert!(hints(&f).is_empty());
}

#[test]
fn endpoints_ignored_by_the_userspace_path_manager() {
    let mut f = healthy();
    f.path_manager = Some("userspace".into());
    f.daemon_answers = true;
    let (_, problem, _) = only_hint(&f);
    assert!(problem.starts_with("net.mptcp.path_manager is 'userspace': the in-kernel endpoints"));
    table(&mut f).endpoints.clear();
    assert!(hints(&f).is_empty());
}

#[test]
fn userspace_path_manager_without_a_daemon() {
    let mut f = healthy();
    f.path_manager = Some("userspace".into());
    table(&mut f).endpoints.clear();
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert!(problem.contains("no Braid daemon answers"));
}

#[test]
fn endpoint_on_an_address_no_interface_has() {
    let mut f = healthy();
    table(&mut f).endpoints[0].addr = "192.0.2.99".parse().unwrap();
    let (_, problem, fix) = only_hint(&f);
    assert_eq!(problem, "endpoint 192.0.2.99 (id 1) is on an address no interface has any more: subflows from it fail");
    assert_eq!(fix, "braid endpoint del id 1");
}

#[test]
fn endpoint_on_a_down_or_carrierless_interface() {
    for (up, carrier, state) in [(false, true, "down"), (true, false, "without carrier")] {
        let mut f = healthy();
        let mut ifs = f.interfaces.take().unwrap();
        ifs.links[1] = link(2, "wlan0", up, carrier);
        f.interfaces = Some(ifs);
        let (_, problem, fix) = only_hint(&f);
        assert_eq!(problem, format!("endpoint 192.0.2.2 (id 1) is on wlan0, which is {state}: subflows from it stall until it returns"));
        assert_eq!(fix, "braid endpoint del id 1   (or bring wlan0 up again)");
    }
}

#[test]
fn endpoint_bound_to_a_vanished_interface() {
    let mut f = healthy();
    table(&mut f).endpoints[0].ifindex = Some(7);
    assert_eq!(
        problems(&f),
        ["endpoint 192.0.2.2 (id 1) is bound to interface index 7, which no longer exists"]
    );
    f.interfaces = None;
    assert!(
        hints(&f).is_empty(),
        "no interfaces read: nothing to compare"
    );
}

#[test]
fn server_with_subflow_endpoints() {
    let mut f = healthy();
    f.connections = Some(ConnectionSummary {
        listeners: 1,
        connections: 2,
        all_accepted: true,
    });
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Info);
    assert!(problem.starts_with("this host only accepts MPTCP connections"));

    f.connections.as_mut().unwrap().all_accepted = false;
    assert!(hints(&f).is_empty(), "it opens connections too: a client");

    f.connections.as_mut().unwrap().all_accepted = true;
    table(&mut f).endpoints[0].flags = EndpointFlags(SUBFLOW | SIGNAL);
    assert!(hints(&f).is_empty(), "it announces its address");
}

#[test]
fn dropped_data_segments() {
    let mut f = healthy();
    f.no_dss_in_window = 12;
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert!(problem.starts_with("the kernel dropped 12 MPTCP data segment(s)"));
}

#[test]
fn active_mptcp_turned_off_by_the_kernels_blackhole_detection() {
    let mut f = healthy();
    f.mpc_syn_drops = 2;
    f.mptcp_blackholes = 1;
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert!(problem.starts_with("the kernel turned active MPTCP off 1 time(s)"));
    assert!(problem.contains("3600 s after the last time"), "{problem}");
    assert!(fix.starts_with("turn it back on now: sysctl -w net.mptcp.blackhole_timeout=3600"));
    // Detection off: what is counted no longer applies.
    f.blackhole_timeout_s = Some(0);
    let (severity, problem, _) = only_hint(&f);
    assert_eq!(severity, Severity::Info);
    assert!(problem.starts_with("2 connection(s) opened from here fell back"));
    f.mpc_syn_drops = 0;
    assert!(hints(&f).is_empty());
}

#[test]
fn no_endpoints_with_the_kernel_path_manager() {
    let mut f = healthy();
    table(&mut f).endpoints.clear();
    assert_eq!(
        problems(&f),
        ["no endpoints: every MPTCP connection stays on a single path"]
    );
    f.daemon_answers = true;
    assert!(hints(&f).is_empty(), "the daemon adds them");
}

#[test]
fn errors_come_first() {
    let mut f = healthy();
    f.no_dss_in_window = 1;
    f.mptcp_enabled = Some(false);
    let severities: Vec<_> = hints(&f).into_iter().map(|h| h.severity).collect();
    assert_eq!(severities, [Severity::Error, Severity::Warning]);
}

#[test]
fn a_subflow_left_at_the_initial_receive_buffer_says_how_to_start_larger() {
    let mut f = healthy();
    f.small_receive_buffers = vec![crate::facts::SmallBuffer {
        local: "192.0.2.2:50001".parse().unwrap(),
        remote: "198.51.100.1:443".parse().unwrap(),
        rcvbuf: 131_072,
        grown: 3_145_728,
    }];
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert!(
        problem.starts_with("1 MPTCP subflow(s) receive with a 128 KB buffer")
            && problem.contains("has 3072 KB (e.g. 192.0.2.2:50001 from 198.51.100.1:443)"),
        "{problem}"
    );
    assert!(
        fix.contains("net.ipv4.tcp_rmem='4096 4194304 33554432'"),
        "{fix}"
    );
    // Started at 4 MB already, with a sibling at 16: nothing to advise.
    f.small_receive_buffers[0].rcvbuf = 4_194_304;
    f.small_receive_buffers[0].grown = 16_777_216;
    assert!(hints(&f).is_empty());
}

#[test]
fn a_long_unsent_queue_says_how_to_cap_send_buffers_and_keeps_room_for_the_paths() {
    let mut f = healthy();
    f.deep_send_queues = vec![crate::facts::DeepSendQueue {
        local: "10.1.0.2:5201".parse().unwrap(),
        remote: "10.2.0.1:59787".parse().unwrap(),
        notsent: 2_600_000,
        queued_ms: 1040,
    }];
    f.largest_bdp = 207_500;
    let (severity, problem, fix) = only_hint(&f);
    assert_eq!(severity, Severity::Warning);
    assert!(
        problem.starts_with(
            "1 MPTCP subflow(s) hold 200 ms or more of unsent data at their delivery rate"
        ) && problem.contains("(e.g. 2539 KB from 10.1.0.2:5201 to 10.2.0.1:59787, 1040 ms)"),
        "{problem}"
    );
    assert!(
        fix.contains("net.ipv4.tcp_wmem='4096 16384 1048576'") && fix.contains("seen now, 202 KB"),
        "{fix}"
    );
    // An initial size above the cap comes down to it.
    f.send_buffer_sizes = Some([4096, 2_097_152, 4_194_304]);
    let (_, _, fix) = only_hint(&f);
    assert!(fix.contains("tcp_wmem='4096 1048576 1048576'"), "{fix}");
    // Capped there already: nothing to give.
    f.send_buffer_sizes = Some([4096, 16384, 1_048_576]);
    assert!(hints(&f).is_empty());
    // tcp_wmem unreadable: no sizes to give.
    f.send_buffer_sizes = None;
    assert!(hints(&f).is_empty());
    // Paths with 1 MB of bandwidth × RTT need the 4 MB there is.
    f.send_buffer_sizes = Some([4096, 16384, 4_194_304]);
    f.largest_bdp = 1_000_000;
    assert!(hints(&f).is_empty());
    // Absurd figures from the kernel are no reason to panic.
    f.largest_bdp = u64::MAX;
    assert!(hints(&f).is_empty());
}
