use super::*;

fn path(ifindex: u32, addr: &str, role: Role) -> LocalPath {
    LocalPath {
        ifindex,
        name: format!("eth{ifindex}"),
        addr: addr.parse().unwrap(),
        role,
    }
}

fn two_paths() -> ConnEvent {
    ConnEvent::Paths(vec![
        path(2, "10.1.0.1", Role::Primary),
        path(3, "10.2.0.1", Role::Secondary),
    ])
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn created(token: u32, owner: Owner, remote: &str) -> ConnEvent {
    ConnEvent::Created {
        token,
        local: sa("10.1.0.1:40000"),
        remote: sa(remote),
        server_side: false,
        owner,
    }
}

fn ssh() -> Owner {
    Owner {
        uid: Some(1000),
        cgroup: Some("/user.slice/user-1000.slice/app.slice/ssh.service".into()),
        exe: Some("ssh".into()),
    }
}

fn policy() -> ConnPolicy {
    let rules = vec![AppRule {
        unit: Some("ssh.service".into()),
        mode: PathMode::Handover,
        ..AppRule::default()
    }];
    let mut p = ConnPolicy::new(rules, PathMode::Aggregate);
    p.handle(two_paths(), 0);
    p
}

fn creates(ds: &[ConnDecision]) -> Vec<(u32, IpAddr, bool)> {
    ds.iter()
        .filter_map(|d| match d.action {
            ConnAction::CreateSubflow {
                token,
                local,
                backup,
                ..
            } => Some((token, local, backup)),
            _ => None,
        })
        .collect()
}

#[test]
fn each_connection_gets_its_rules_mode_on_the_same_host() {
    let mut p = policy();
    p.handle(created(1, ssh(), "192.0.2.1:22"), 10);
    p.handle(created(2, Owner::default(), "192.0.2.1:443"), 10);
    // Nothing before the connection is established: joins would fail.
    assert!(p.handle(ConnEvent::Tick, 11).is_empty());
    let a = p.handle(ConnEvent::Established { token: 1 }, 20);
    let b = p.handle(ConnEvent::Established { token: 2 }, 20);
    let secondary: IpAddr = "10.2.0.1".parse().unwrap();
    assert_eq!(creates(&a), vec![(1, secondary, true)], "{a:?}");
    assert_eq!(creates(&b), vec![(2, secondary, false)], "{b:?}");
    assert!(
        a[0].reason
            .contains("handover mode (rule 1 (unit ssh.service))"),
        "{}",
        a[0].reason
    );
    assert!(
        b[0].reason.contains("aggregate mode (default)"),
        "{}",
        b[0].reason
    );
    let v = p.view();
    assert_eq!(v[0].mode, PathMode::Handover);
    assert_eq!(v[1].rule, "default");
}

#[test]
fn a_closed_subflow_is_re_created_at_once_then_with_a_back_off() {
    let mut p = policy();
    p.handle(created(7, Owner::default(), "192.0.2.1:443"), 0);
    p.handle(ConnEvent::Established { token: 7 }, 0);
    let local = sa("10.2.0.1:50000");
    let remote = sa("192.0.2.1:443");
    p.handle(
        ConnEvent::SubEstablished {
            token: 7,
            local,
            remote,
        },
        30,
    );
    // Killed after a long life: re-created at once (within this event).
    let ds = p.handle(
        ConnEvent::SubClosed {
            token: 7,
            local,
            remote,
        },
        20_000,
    );
    assert_eq!(creates(&ds).len(), 1, "{ds:?}");
    assert!(ds[0].reason.contains("re-created"), "{}", ds[0].reason);
    // It comes back and dies at once again: not hammered.
    p.handle(
        ConnEvent::SubEstablished {
            token: 7,
            local,
            remote,
        },
        20_010,
    );
    let ds = p.handle(
        ConnEvent::SubClosed {
            token: 7,
            local,
            remote,
        },
        20_020,
    );
    assert!(creates(&ds).is_empty(), "{ds:?}");
    let at = p.wake_at_ms().expect("a retry is due later");
    assert_eq!(at, 20_020 + RETRY_FIRST_MS);
    assert!(creates(&p.handle(ConnEvent::Tick, at - 1)).is_empty());
    assert_eq!(creates(&p.handle(ConnEvent::Tick, at)).len(), 1);
}

#[test]
fn a_refused_create_is_retried_after_a_back_off_and_gone_paths_are_not() {
    let mut p = policy();
    p.handle(created(3, Owner::default(), "192.0.2.1:443"), 0);
    let ds = p.handle(ConnEvent::Established { token: 3 }, 0);
    let action = ds[0].action.clone();
    p.handle(
        ConnEvent::Failed {
            action,
            error: "Network is unreachable".into(),
        },
        5,
    );
    assert_eq!(p.wake_at_ms(), Some(5 + RETRY_FIRST_MS));
    // The secondary goes: nothing is created on it.
    p.handle(
        ConnEvent::Paths(vec![path(2, "10.1.0.1", Role::Primary)]),
        10,
    );
    assert!(creates(&p.handle(ConnEvent::Tick, 5_000)).is_empty());
    // It comes back: created again (the path change is news).
    assert_eq!(creates(&p.handle(two_paths(), 6_000)).len(), 1);
}

#[test]
fn handover_flips_the_flags_when_the_primary_goes_and_returns() {
    let mut p = policy();
    p.handle(created(1, ssh(), "192.0.2.1:22"), 0);
    p.handle(ConnEvent::Established { token: 1 }, 0);
    let local = sa("10.2.0.1:50000");
    let remote = sa("192.0.2.1:22");
    let ds = p.handle(
        ConnEvent::SubEstablished {
            token: 1,
            local,
            remote,
        },
        30,
    );
    assert!(
        ds.is_empty(),
        "created as a backup: no MP_PRIO to send: {ds:?}"
    );
    // The primary is no longer usable: the secondary carries traffic.
    let ds = p.handle(
        ConnEvent::Paths(vec![path(3, "10.2.0.1", Role::Secondary)]),
        100,
    );
    assert!(
        ds.iter().any(|d| d.action
            == ConnAction::SetBackup {
                token: 1,
                local,
                remote,
                backup: false
            }),
        "{ds:?}"
    );
    // Back: the secondary stands by again.
    let ds = p.handle(two_paths(), 5_000);
    assert!(
        ds.iter().any(|d| d.action
            == ConnAction::SetBackup {
                token: 1,
                local,
                remote,
                backup: true
            }),
        "{ds:?}"
    );
}

#[test]
fn a_server_announces_its_other_addresses_to_each_connection() {
    let mut p = policy();
    p.handle(
        ConnEvent::Created {
            token: 9,
            local: sa("10.1.0.1:443"),
            remote: sa("198.51.100.4:50123"),
            server_side: true,
            owner: Owner::default(),
        },
        0,
    );
    let ds = p.handle(ConnEvent::Established { token: 9 }, 1);
    assert_eq!(
        ds.iter().map(|d| d.action.clone()).collect::<Vec<_>>(),
        vec![ConnAction::Announce {
            token: 9,
            id: 1,
            addr: "10.2.0.1".parse().unwrap()
        }]
    );
    // Announced once, not at every change.
    assert!(p.handle(two_paths(), 2).is_empty());
    assert!(creates(&ds).is_empty());
}

#[test]
fn other_families_and_unknown_tokens_are_left_alone() {
    let mut p = policy();
    p.handle(created(4, Owner::default(), "[2001:db8::1]:443"), 0);
    assert!(p.handle(ConnEvent::Established { token: 4 }, 1).is_empty());
    for ev in [
        ConnEvent::Established { token: 99 },
        ConnEvent::SubClosed {
            token: 99,
            local: sa("10.2.0.1:1"),
            remote: sa("192.0.2.1:1"),
        },
        ConnEvent::Closed { token: 99 },
    ] {
        assert!(p.handle(ev, 2).is_empty());
    }
    p.handle(ConnEvent::Closed { token: 4 }, 3);
    assert!(p.view().is_empty());
}
