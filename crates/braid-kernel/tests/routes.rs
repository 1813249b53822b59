//! Changing a default route's initcwnd keeps the rest of the route, for
//! IPv4 and IPv6, in a namespace of its own (needs root).

mod common;

use braid_kernel::{netns, rtnl, Error};

fn ip(ns: &str, args: &str) -> String {
    common::ip(&format!("-n {ns} {args}"))
}

fn set(ns: &str, ifindex: u32, ipv6: bool, w: Option<u32>) -> usize {
    netns::run_in::<_, Error>(ns, move || {
        rtnl::set_default_route_initcwnd(ifindex, 101, ipv6, w)
    })
    .unwrap()
}

#[test]
fn initcwnd_is_set_and_cleared_keeping_the_rest_of_the_route() {
    if !common::is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let ns = format!("bk-rt{}", std::process::id() % 100_000);
    let _guard = common::Namespaces::create(&[&ns]);
    ip(&ns, "link add v0 type veth peer name v1");
    ip(&ns, "link set v0 up");
    ip(&ns, "link set v1 up");
    ip(&ns, "addr add 10.77.0.1/24 dev v0");
    ip(&ns, "-6 addr add fd77::1/64 dev v0 nodad");
    ip(&ns, "route add default dev v0 table 101 mtu 1400");
    ip(&ns, "-6 route add default dev v0 table 101 metric 5");
    let ifindex = netns::run_in::<_, Error>(&ns, || Ok(rtnl::link_index("v0")?.unwrap())).unwrap();
    for ipv6 in [false, true] {
        assert_eq!(set(&ns, ifindex, ipv6, Some(40)), 1, "ipv6 {ipv6}");
    }
    let v4 = ip(&ns, "route show table 101");
    let v6 = ip(&ns, "-6 route show table 101");
    assert!(
        v4.contains("initcwnd 40") && v4.contains("mtu 1400"),
        "{v4}"
    );
    assert!(
        v6.contains("initcwnd 40") && v6.contains("metric 5"),
        "{v6}"
    );
    let seen = netns::run_in::<_, Error>(&ns, rtnl::default_routes).unwrap();
    let with = seen
        .iter()
        .filter(|r| r.ifindex == ifindex && r.initcwnd == Some(40))
        .count();
    assert_eq!(with, 2, "{seen:?}");
    // Asking again changes nothing; clearing puts the routes back.
    for ipv6 in [false, true] {
        assert_eq!(set(&ns, ifindex, ipv6, Some(40)), 0);
        assert_eq!(set(&ns, ifindex, ipv6, None), 1);
    }
    let v4 = ip(&ns, "route show table 101");
    let v6 = ip(&ns, "-6 route show table 101");
    assert!(!v4.contains("initcwnd") && v4.contains("mtu 1400"), "{v4}");
    assert!(!v6.contains("initcwnd") && v6.contains("metric 5"), "{v6}");
}
