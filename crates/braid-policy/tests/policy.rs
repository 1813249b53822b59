//! Every decision of the path manager, driven by simulated events and a
//! simulated clock; no kernel involved.

mod common;
use common::{addr, link};

use std::net::IpAddr;

use braid_policy::config::{Config, Flag, InterfaceConfig, Mode};
use braid_policy::model::*;
use braid_policy::Policy;

const SUBFLOW: u32 = 2;
const SIGNAL: u32 = 1;
const BACKUP: u32 = 4;

fn route(ifindex: u32) -> DefaultRoute {
    DefaultRoute {
        ifindex,
        table: 254,
        ipv6: false,
        initcwnd: None,
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// A client with eth0 (10.0.0.2) and wlan0 (192.168.1.5), both with default routes.
struct Sim {
    p: Policy,
    now: u64,
}

impl Sim {
    fn new(cfg: Config) -> Sim {
        Sim {
            p: Policy::new(cfg, Vec::new()),
            now: 0,
        }
    }

    fn send(&mut self, ev: Event) -> Vec<Decision> {
        self.now += 10;
        self.p.handle(ev, self.now)
    }

    /// Let time pass until the policy's next deadline and wake it there,
    /// as the daemon does with `wake_at_ms`.
    fn wake(&mut self) -> Vec<Decision> {
        let at = self.p.wake_at_ms().expect("a deadline");
        assert!(at > self.now);
        self.now = at;
        self.p.handle(Event::Tick, at)
    }

    fn snapshot(&mut self, endpoints: Vec<KernelEndpoint>) -> Vec<Decision> {
        self.send(Event::Snapshot {
            links: vec![
                Link {
                    index: 1,
                    name: "lo".into(),
                    up: true,
                    carrier: true,
                    loopback: true,
                    carrier_changes: None,
                },
                link(2, "eth0"),
                link(3, "wlan0"),
            ],
            addresses: vec![
                addr(1, "127.0.0.1"),
                addr(2, "10.0.0.2"),
                addr(3, "192.168.1.5"),
            ],
            default_routes: vec![route(2), route(3)],
            endpoints,
            limits: Limits {
                subflows: 2,
                add_addr_accepted: 0,
            },
        })
    }
}

fn adds(ds: &[Decision]) -> Vec<(IpAddr, u32)> {
    ds.iter()
        .filter_map(|d| match &d.action {
            Action::AddEndpoint { addr, flags, .. } => Some((*addr, *flags)),
            _ => None,
        })
        .collect()
}

fn removes(ds: &[Decision]) -> Vec<IpAddr> {
    ds.iter()
        .filter_map(|d| match &d.action {
            Action::RemoveEndpoint { addr, .. } => Some(*addr),
            _ => None,
        })
        .collect()
}

#[test]
fn nothing_happens_before_the_first_snapshot() {
    let mut s = Sim::new(Config::default());
    assert!(s.send(Event::AddressAdded(addr(2, "10.0.0.2"))).is_empty());
}

#[test]
fn start_adds_an_endpoint_per_usable_address_and_matches_limits() {
    let mut s = Sim::new(Config::default());
    let ds = s.snapshot(vec![]);
    assert_eq!(
        adds(&ds),
        vec![(ip("10.0.0.2"), SUBFLOW), (ip("192.168.1.5"), SUBFLOW)]
    );
    let binds: Vec<Option<u32>> = ds
        .iter()
        .filter_map(|d| match d.action {
            Action::AddEndpoint { ifindex, .. } => Some(ifindex),
            _ => None,
        })
        .collect();
    assert_eq!(binds, vec![Some(2), Some(3)], "bound to their interfaces");
    assert!(ds.iter().any(|d| d.action
        == Action::SetLimits {
            subflows: 2,
            add_addr_accepted: 2
        }));
    assert!(ds.iter().all(|d| !d.reason.is_empty()));
    // Loopback never gets one, and says why.
    let v = s.p.view();
    let lo = v.interfaces.iter().find(|i| i.name == "lo").unwrap();
    assert!(lo.role.contains("loopback"), "{}", lo.role);
}

#[test]
fn carrier_loss_removes_and_recovery_restores() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let ds = s.send(Event::LinkChanged(Link {
        carrier: false,
        ..link(3, "wlan0")
    }));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert!(
        ds[0].reason.contains("wlan0 has no carrier"),
        "{}",
        ds[0].reason
    );
    assert!(ds
        .iter()
        .any(|d| matches!(d.action, Action::SetLimits { subflows: 1, .. })));
    // The carrier comes back: used again only once it has held for
    // policy.carrier_debounce_ms (500 ms), so a bouncing link is not
    // re-added and torn down on every bounce. (Before, it was re-added at
    // once.)
    let ds = s.send(Event::LinkChanged(link(3, "wlan0")));
    assert!(ds.is_empty(), "{ds:?}");
    assert_eq!(s.p.wake_at_ms(), Some(s.now + 500));
    let v = s.p.view();
    let why = &v
        .interfaces
        .iter()
        .find(|i| i.name == "wlan0")
        .unwrap()
        .role;
    assert!(why.contains("policy.carrier_debounce_ms"), "{why}");
    let ds = s.wake();
    assert_eq!(adds(&ds), vec![(ip("192.168.1.5"), SUBFLOW)]);
    assert!(
        ds.last()
            .unwrap()
            .reason
            .contains("has held for the 500 ms"),
        "{ds:?}"
    );
    // The kernel checks the limit when the endpoint appears: raise it first.
    assert!(
        matches!(ds[0].action, Action::SetLimits { subflows: 2, .. }),
        "{ds:?}"
    );
    // Administratively down counts the same.
    let ds = s.send(Event::LinkChanged(Link {
        up: false,
        ..link(2, "eth0")
    }));
    assert!(ds[0].reason.contains("eth0 is down"), "{}", ds[0].reason);
    // The same state again changes nothing.
    assert!(s
        .send(Event::LinkChanged(Link {
            up: false,
            ..link(2, "eth0")
        }))
        .is_empty());
}

/// The kernel announces a carrier loss through its link watch, up to a
/// second late; the links read in a health round show it at once. Only
/// that is taken from a read: a carrier that came back, a link that went
/// down, anything else waits for the kernel's announcement.
#[test]
fn a_carrier_loss_read_before_the_kernel_announces_it_is_acted_on() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let read = |wlan0_carrier: bool| {
        Event::LinksPolled(vec![
            link(2, "eth0"),
            Link {
                carrier: wlan0_carrier,
                ..link(3, "wlan0")
            },
        ])
    };
    assert!(s.send(read(true)).is_empty(), "nothing changed");
    let ds = s.send(read(false));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert!(
        ds[0].reason.contains("wlan0 has no carrier"),
        "{}",
        ds[0].reason
    );
    assert_eq!(s.p.counters().carrier_losses_polled, 1);
    let announced_before = s.p.counters().link_events;
    // The announcement that follows changes nothing more, and reads while
    // it is lost count nothing more.
    assert!(s.send(read(false)).is_empty());
    assert!(s
        .send(Event::LinkChanged(Link {
            carrier: false,
            ..link(3, "wlan0")
        }))
        .is_empty());
    assert_eq!(s.p.counters().carrier_losses_polled, 1);
    assert_eq!(s.p.counters().link_events, announced_before + 1);
    // A returning carrier is not taken from a read: it waits for the
    // announcement (and then for policy.carrier_debounce_ms).
    assert!(s.send(read(true)).is_empty());
    assert_eq!(
        s.p.wake_at_ms(),
        None,
        "a read carrier return starts no debounce"
    );
    // Nor is a link read as down, or one the policy does not know.
    let ds = s.send(Event::LinksPolled(vec![
        Link {
            up: false,
            ..link(2, "eth0")
        },
        Link {
            carrier: false,
            ..link(9, "usb0")
        },
    ]));
    assert!(ds.is_empty(), "{ds:?}");
    assert_eq!(s.p.counters().carrier_losses_polled, 1);
}

/// An announcement that waited in the socket while a read brought a newer
/// carrier change (a wireless event sent just before the loss, say) does
/// not undo it: IFLA_CARRIER_CHANGES orders them.
#[test]
fn an_announcement_older_than_a_read_does_not_undo_it() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let wlan0 = |carrier: bool, changes: u32| Link {
        carrier,
        carrier_changes: Some(changes),
        ..link(3, "wlan0")
    };
    assert!(s.send(Event::LinkChanged(wlan0(true, 4))).is_empty());
    let ds = s.send(Event::LinksPolled(vec![wlan0(false, 5)]));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert!(s.send(Event::LinkChanged(wlan0(true, 4))).is_empty());
    assert_eq!(
        s.p.wake_at_ms(),
        None,
        "no debounce: the carrier never came back"
    );
    // The loss's own announcement changes nothing; a real return is taken
    // (and waits for the debounce).
    assert!(s.send(Event::LinkChanged(wlan0(false, 5))).is_empty());
    assert!(s.send(Event::LinkChanged(wlan0(true, 6))).is_empty());
    assert!(s.p.wake_at_ms().is_some(), "the return's debounce");
}

/// The debounce keeps a flapping link out while another path carries
/// traffic; when the returning link is the only one, waiting would only
/// leave the host without any path, so it is used at once.
#[test]
fn the_only_returning_link_is_used_without_waiting_for_the_debounce() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    for (i, name) in [(2, "eth0"), (3, "wlan0")] {
        s.send(Event::LinkChanged(Link {
            carrier: false,
            ..link(i, name)
        }));
    }
    let ds = s.send(Event::LinkChanged(link(3, "wlan0")));
    assert_eq!(adds(&ds), vec![(ip("192.168.1.5"), SUBFLOW)], "{ds:?}");
    let reason = &ds.last().unwrap().reason;
    assert!(reason.contains("no other path is usable"), "{reason}");
    // eth0 returning now waits: wlan0 carries traffic meanwhile.
    let ds = s.send(Event::LinkChanged(link(2, "eth0")));
    assert!(adds(&ds).is_empty(), "{ds:?}");
    // ... until its own debounce is over (wlan0's comes first).
    let returned = s.now;
    let mut ds = Vec::new();
    while adds(&ds).is_empty() {
        ds = s.wake();
    }
    assert_eq!(adds(&ds), vec![(ip("10.0.0.2"), SUBFLOW)]);
    assert!(s.now >= returned + 500, "{}", s.now);
}

#[test]
fn address_removal_and_return() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let ds = s.send(Event::AddressRemoved(addr(3, "192.168.1.5")));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert!(ds[0].reason.contains("gone"));
    let ds = s.send(Event::AddressAdded(addr(3, "192.168.1.6")));
    assert_eq!(adds(&ds), vec![(ip("192.168.1.6"), SUBFLOW)]);
    // A deprecated address goes, even though it is still configured.
    let ds = s.send(Event::AddressAdded(Address {
        deprecated: true,
        ..addr(3, "192.168.1.6")
    }));
    assert_eq!(removes(&ds), vec![ip("192.168.1.6")]);
    assert!(ds[0].reason.contains("deprecated"));
}

#[test]
fn filtered_address_kinds_are_skipped_with_reasons() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let v6 = |ip: &str| Address {
        prefix_len: 64,
        ..addr(2, ip)
    };
    s.send(Event::DefaultRouteAdded(DefaultRoute {
        ifindex: 2,
        table: 254,
        ipv6: true,
        initcwnd: None,
    }));
    for (a, why) in [
        (v6("fe80::1"), "link-local"),
        (addr(2, "169.254.3.4"), "link-local"),
        (v6("fd00::1"), "unique local"),
        (
            Address {
                temporary: true,
                ..v6("2001:db8::99")
            },
            "temporary",
        ),
        (
            Address {
                tentative: true,
                ..v6("2001:db8::98")
            },
            "tentative",
        ),
        (
            Address {
                deprecated: true,
                ..v6("2001:db8::97")
            },
            "deprecated",
        ),
    ] {
        let ds = s.send(Event::AddressAdded(a.clone()));
        assert!(adds(&ds).is_empty(), "{} should be skipped", a.ip);
        let view = s.p.view();
        let av = view
            .interfaces
            .iter()
            .flat_map(|i| &i.addresses)
            .find(|x| x.ip == a.ip)
            .unwrap();
        assert!(av.why.contains(why), "{}: {}", a.ip, av.why);
    }
    // A global IPv6 address is used.
    assert_eq!(
        adds(&s.send(Event::AddressAdded(v6("2001:db8::1")))),
        vec![(ip("2001:db8::1"), SUBFLOW)]
    );
    // Excluded interfaces and interfaces without a default route are not.
    s.send(Event::LinkChanged(link(4, "docker0")));
    s.send(Event::DefaultRouteAdded(route(4)));
    assert!(adds(&s.send(Event::AddressAdded(addr(4, "172.17.0.1")))).is_empty());
    s.send(Event::LinkChanged(link(5, "eth1")));
    assert!(adds(&s.send(Event::AddressAdded(addr(5, "10.9.9.9")))).is_empty());
    let v = s.p.view();
    let eth1 = v.interfaces.iter().find(|i| i.name == "eth1").unwrap();
    assert!(eth1.role.contains("no IPv4 default route"), "{}", eth1.role);
    // ...until it gets one.
    assert_eq!(
        adds(&s.send(Event::DefaultRouteAdded(route(5)))),
        vec![(ip("10.9.9.9"), SUBFLOW)]
    );
    let ds = s.send(Event::DefaultRouteRemoved(route(5)));
    assert_eq!(removes(&ds), vec![ip("10.9.9.9")]);
}

#[test]
fn late_interface_gets_an_endpoint_when_ready() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    assert!(s
        .send(Event::LinkChanged(Link {
            carrier: false,
            ..link(7, "wwan0")
        }))
        .is_empty());
    assert!(s
        .send(Event::AddressAdded(addr(7, "100.64.0.7")))
        .is_empty());
    assert!(s.send(Event::DefaultRouteAdded(route(7))).is_empty());
    // Its carrier arriving counts as a carrier return: used once it has
    // held for policy.carrier_debounce_ms.
    assert!(s.send(Event::LinkChanged(link(7, "wwan0"))).is_empty());
    let ds = s.wake();
    assert_eq!(adds(&ds), vec![(ip("100.64.0.7"), SUBFLOW)]);
    let ds = s.send(Event::LinkRemoved { index: 7 });
    assert_eq!(removes(&ds), vec![ip("100.64.0.7")]);
}

#[test]
fn per_interface_flags_and_reload() {
    let mut cfg = Config::default();
    cfg.interfaces.push(InterfaceConfig {
        name: "wlan*".into(),
        flags: Some(vec![Flag::Subflow, Flag::Backup]),
        ignore: false,
        role: None,
    });
    let mut s = Sim::new(cfg.clone());
    let ds = s.snapshot(vec![]);
    assert!(adds(&ds).contains(&(ip("192.168.1.5"), SUBFLOW | BACKUP)));
    // Dropping backup is a flag change on the live endpoint.
    cfg.interfaces[0].flags = Some(vec![Flag::Subflow]);
    let ds = s.send(Event::ConfigReloaded(Box::new(cfg.clone())));
    assert!(
        matches!(
            ds[0].action,
            Action::SetEndpointFlags { flags: SUBFLOW, .. }
        ),
        "{ds:?}"
    );
    // Switching to signal needs remove + add.
    cfg.interfaces[0].flags = Some(vec![Flag::Signal]);
    let ds = s.send(Event::ConfigReloaded(Box::new(cfg.clone())));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert_eq!(adds(&ds), vec![(ip("192.168.1.5"), SIGNAL)]);
    // Ignoring the interface removes it; a reload that changes nothing does nothing.
    cfg.interfaces[0].ignore = true;
    let ds = s.send(Event::ConfigReloaded(Box::new(cfg.clone())));
    assert_eq!(removes(&ds), vec![ip("192.168.1.5")]);
    assert!(ds[0].reason.contains("ignored by the configuration"));
    assert!(s.send(Event::ConfigReloaded(Box::new(cfg))).is_empty());
}

#[test]
fn server_mode_signals_and_sets_the_c_flag() {
    let mut cfg = Config {
        mode: Mode::Server,
        ..Config::default()
    };
    cfg.server.deny_join_initial_address = true;
    let mut s = Sim::new(cfg.clone());
    let ds = s.snapshot(vec![]);
    assert!(adds(&ds).iter().all(|(_, f)| *f == SIGNAL));
    assert!(ds.iter().any(|d| d.action
        == Action::SetLimits {
            subflows: 8,
            add_addr_accepted: 0
        }));
    assert!(ds.iter().any(|d| d.action
        == Action::SetSysctl {
            name: "net.mptcp.allow_join_initial_addr_port".into(),
            value: "0".into()
        }));
    cfg.server.deny_join_initial_address = false;
    let ds = s.send(Event::ConfigReloaded(Box::new(cfg)));
    assert!(ds
        .iter()
        .any(|d| matches!(&d.action, Action::SetSysctl { value, .. } if value == "1")));
}

#[test]
fn foreign_endpoints_are_left_alone_unless_owning_all() {
    let foreign = KernelEndpoint {
        id: 9,
        addr: ip("10.0.0.2"),
        flags: SIGNAL,
        ifindex: None,
    };
    let stale = KernelEndpoint {
        id: 10,
        addr: ip("203.0.113.1"),
        flags: SUBFLOW,
        ifindex: None,
    };
    let mut s = Sim::new(Config::default());
    let ds = s.snapshot(vec![foreign.clone(), stale.clone()]);
    assert_eq!(
        adds(&ds),
        vec![(ip("192.168.1.5"), SUBFLOW)],
        "10.0.0.2 is covered by the foreign endpoint"
    );
    assert!(removes(&ds).is_empty());
    let ids: Vec<u8> = ds
        .iter()
        .filter_map(|d| match d.action {
            Action::AddEndpoint { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    assert_eq!(ids, vec![1], "ids are the lowest free ones");

    let mut cfg = Config::default();
    cfg.endpoints.own_all = true;
    let mut s = Sim::new(cfg);
    let ds = s.snapshot(vec![foreign, stale]);
    assert_eq!(
        removes(&ds).len(),
        2,
        "the stale one goes, the foreign one is re-added as wanted: {ds:?}"
    );
    assert!(adds(&ds).contains(&(ip("10.0.0.2"), SUBFLOW)));
}

#[test]
fn restart_adopts_its_own_endpoints_without_touching_them() {
    let mine = vec![
        KernelEndpoint {
            id: 1,
            addr: ip("10.0.0.2"),
            flags: SUBFLOW,
            ifindex: Some(2),
        },
        KernelEndpoint {
            id: 2,
            addr: ip("192.168.1.5"),
            flags: SUBFLOW,
            ifindex: Some(3),
        },
    ];
    let mut s = Sim {
        p: Policy::new(Config::default(), vec![1, 2]),
        now: 0,
    };
    let ds = s.snapshot(mine);
    assert!(adds(&ds).is_empty() && removes(&ds).is_empty(), "{ds:?}");
    assert_eq!(s.p.view().owned_endpoints.len(), 2);
}

#[test]
fn more_addresses_than_the_kernel_uses() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    for k in 0..10u32 {
        s.send(Event::LinkChanged(link(10 + k, &format!("eth{}", k + 10))));
        s.send(Event::DefaultRouteAdded(route(10 + k)));
        s.send(Event::AddressAdded(addr(10 + k, &format!("10.{k}.0.1"))));
    }
    let v = s.p.view();
    assert_eq!(v.owned_endpoints.len(), 8);
    assert!(
        v.warnings.iter().any(|w| w.contains("at most 8")),
        "{:?}",
        v.warnings
    );
    assert_eq!(
        v.limits,
        Some(Limits {
            subflows: 8,
            add_addr_accepted: 8
        })
    );
}

#[test]
fn a_refused_endpoint_is_not_retried_until_something_changes() {
    let mut s = Sim::new(Config::default());
    let ds = s.snapshot(vec![]);
    let decision = ds
        .iter()
        .find(|d| matches!(d.action, Action::AddEndpoint { .. }))
        .unwrap();
    let (failed, failed_id) = (decision.action.clone(), decision.id);
    assert_ne!(failed_id, 0, "decisions are numbered");
    assert!(s
        .send(Event::ActionFailed {
            id: failed_id,
            action: failed.clone(),
            error: "EINVAL".into()
        })
        .is_empty());
    // Unrelated events do not retry it.
    let ds = s.send(Event::LinkChanged(link(3, "wlan0")));
    assert!(adds(&ds).is_empty(), "{ds:?}");
    let v = s.p.view();
    assert!(v
        .recent_decisions
        .iter()
        .any(|d| d.error.as_deref() == Some("EINVAL")));
    // Its own interface changing does.
    s.send(Event::LinkChanged(Link {
        carrier: false,
        ..link(2, "eth0")
    }));
    s.send(Event::LinkChanged(link(2, "eth0")));
    // (once its returning carrier has held for policy.carrier_debounce_ms)
    let ds = s.wake();
    assert_eq!(adds(&ds), vec![(ip("10.0.0.2"), SUBFLOW)]);
}

/// A failure reported late, after the id was given to another address,
/// must not make Braid forget that endpoint (found by the invariants test).
#[test]
fn a_late_failure_report_does_not_disown_a_reused_id() {
    let mut s = Sim::new(Config::default());
    let ds = s.snapshot(vec![]);
    let (id, old) = ds
        .iter()
        .find_map(|d| match d.action {
            Action::AddEndpoint { id, addr, .. } => Some((id, addr)),
            _ => None,
        })
        .unwrap();
    assert!(s.p.owned_ids().contains(&id));
    let stale = Action::AddEndpoint {
        id,
        addr: "10.9.9.9".parse().unwrap(),
        flags: SUBFLOW,
        ifindex: Some(2),
    };
    s.send(Event::ActionFailed {
        id: 0,
        action: stale,
        error: "EEXIST".into(),
    });
    assert!(s.p.owned_ids().contains(&id), "{id} ({old}) was disowned");
}

#[test]
fn stopping_removes_owned_endpoints_only_when_configured() {
    let mut cfg = Config::default();
    cfg.endpoints.remove_on_stop = true;
    let mut s = Sim::new(cfg);
    s.snapshot(vec![KernelEndpoint {
        id: 50,
        addr: ip("198.51.100.1"),
        flags: SIGNAL,
        ifindex: None,
    }]);
    let ds = s.send(Event::Stopping);
    assert_eq!(
        removes(&ds).len(),
        2,
        "only Braid's two, not the foreign one: {ds:?}"
    );
    let mut cfg = Config::default();
    cfg.endpoints.remove_on_stop = false;
    let mut s = Sim::new(cfg);
    s.snapshot(vec![]);
    assert!(s.send(Event::Stopping).is_empty());
}

#[test]
fn resync_replaces_the_model() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    // After an overflow the kernel table turns out to be empty (someone flushed it).
    let ds = s.snapshot(vec![]);
    assert_eq!(adds(&ds).len(), 2);
    assert_eq!(s.p.view().counters.resyncs, 1);
}

#[test]
fn mptcp_events_are_counted_not_acted_on() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    for k in [
        MptcpEventKind::Created,
        MptcpEventKind::SubEstablished,
        MptcpEventKind::Unknown(99),
    ] {
        assert!(s.send(Event::Mptcp(k)).is_empty());
    }
    let c = s.p.view().counters.mptcp_events;
    assert_eq!(c.get("sub_established"), Some(&1));
    assert_eq!(c.get("unknown"), Some(&1));
}

#[test]
fn recent_decisions_carry_time_and_reason() {
    let mut s = Sim::new(Config::default());
    s.snapshot(vec![]);
    let v = s.p.view();
    assert!(v
        .recent_decisions
        .iter()
        .all(|d| d.at_ms == 10 && !d.reason.is_empty()));
}
