use super::*;
use crate::config::PolicyConfig;
use crate::health::ProblemKind;

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
    let tuning = PolicyConfig {
        mode: PathMode::Aggregate,
        ..PolicyConfig::default()
    };
    let mut p = ConnPolicy::new(rules, tuning);
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
    assert_eq!(
        p.wake_at_ms(),
        None,
        "no wake-up for an address that is gone"
    );
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

fn sample(
    local: &str,
    remote: &str,
    ifindex: u32,
    rtt_ms: u32,
    unacked: u32,
    last_ack_ms: u32,
) -> SubflowSample {
    SubflowSample {
        local: sa(local),
        remote: sa(remote),
        ifindex,
        rtt_us: rtt_ms * 1000,
        rttvar_us: 1000,
        total_retrans: 0,
        data_segs_out: 100,
        unacked,
        last_ack_recv_ms: last_ack_ms,
        bytes_received: 0,
        last_data_recv_ms: 0,
        data_segs_in: 0,
        min_rtt_us: 0,
        local_backup: None,
        joining: false,
        first: false,
        conn: 0,
        rcv_ooopack: 0,
        rcv_rtt_us: 0,
    }
}

/// A round of (token, subflow) pairs.
fn health(samples: Vec<(u32, SubflowSample)>) -> ConnEvent {
    ConnEvent::Health {
        samples: samples
            .into_iter()
            .map(|(conn, s)| SubflowSample { conn, ..s })
            .collect(),
        path_problems: BTreeMap::new(),
    }
}

fn flips(ds: &[ConnDecision]) -> Vec<(u32, IpAddr, bool)> {
    ds.iter()
        .filter_map(|d| match d.action {
            ConnAction::SetBackup {
                token,
                local,
                backup,
                ..
            } => Some((token, local.ip(), backup)),
            _ => None,
        })
        .collect()
}

/// Connection 1 (ssh: handover) and 2 (aggregate), both with subflows on
/// p0 (10.1.0.1, initial) and p1 (10.2.0.1).
fn two_connections() -> ConnPolicy {
    let mut p = policy();
    for (t, owner, port) in [(1, ssh(), 22), (2, Owner::default(), 443)] {
        let remote = format!("192.0.2.1:{port}");
        p.handle(created(t, owner, &remote), 0);
        p.handle(ConnEvent::Established { token: t }, 0);
        p.handle(
            ConnEvent::SubEstablished {
                token: t,
                local: sa(&format!("10.2.0.1:5000{t}")),
                remote: sa(&remote),
            },
            80,
        );
    }
    p
}

#[test]
fn a_stall_on_one_connections_primary_moves_that_connection_only() {
    let mut p = two_connections();
    let round = |stalled_ack: u32| {
        health(vec![
            (
                1,
                sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 5, stalled_ack),
            ),
            (1, sample("10.2.0.1:50001", "192.0.2.1:22", 3, 80, 0, 10)),
            (2, sample("10.1.0.1:40000", "192.0.2.1:443", 2, 20, 0, 5)),
            (2, sample("10.2.0.1:50002", "192.0.2.1:443", 3, 80, 0, 10)),
        ])
    };
    assert!(flips(&p.handle(round(5), 100)).is_empty());
    // Connection 1 waits for an ACK on p0 for 300 ms (stall_ms 100).
    let ds = p.handle(round(300), 400);
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    // The secondary carries it; the dead primary is removed (the server
    // resends at once) and comes back as a backup.
    assert_eq!(flips(&ds), vec![(1, p1, false)], "{ds:?}");
    assert!(ds.iter().all(|d| d.action.token() == 1), "{ds:?}");
    assert!(ds[0].reason.contains("stalled"), "{}", ds[0].reason);
    let ds = reopened(&mut p, 1, "192.0.2.1:22", 450);
    assert_eq!(creates(&ds), vec![(1, p0, true)], "{ds:?}");
    // ACKs again: healthy for hold_ms (3 s) is not enough after a
    // failure on measurements: it is not trusted for 30 s.
    assert!(flips(&p.handle(round(5), 500)).is_empty());
    let ds = p.handle(round(5), 3_600);
    assert!(flips(&ds).is_empty(), "{ds:?}");
    assert!(
        ds.is_empty() || ds[0].reason.contains("not trusted"),
        "{ds:?}"
    );
    let ds = p.handle(round(5), 30_500);
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(1, p0, false), (1, p1, true)], "{ds:?}");
}

#[test]
fn the_host_policys_verdict_on_a_path_counts_for_every_connection() {
    let mut p = two_connections();
    let ds = p.handle(
        ConnEvent::Health {
            samples: Vec::new(),
            path_problems: [(2, unreachable())].into(),
        },
        100,
    );
    // Only the handover connection had anything standing by.
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    assert!(flips(&ds).contains(&(1, p1, false)), "{ds:?}");
    assert!(
        ds.iter().any(|d| d.reason.contains("unreachable")),
        "{ds:?}"
    );
}

/// Connection 5 (port 22: interactive by rule) with subflows on p0
/// (initial) and p1.
fn interactive_connection() -> ConnPolicy {
    let rules = vec![AppRule {
        dport: Some(22),
        mode: PathMode::Interactive,
        ..AppRule::default()
    }];
    let mut p = ConnPolicy::new(rules, PolicyConfig::default());
    p.handle(two_paths(), 0);
    p.handle(created(5, Owner::default(), "192.0.2.1:22"), 0);
    p.handle(ConnEvent::Established { token: 5 }, 0);
    p.handle(
        ConnEvent::SubEstablished {
            token: 5,
            local: sa("10.2.0.1:50005"),
            remote: sa("192.0.2.1:22"),
        },
        80,
    );
    p
}

#[test]
fn interactive_takes_the_connections_fastest_path_and_switches_with_a_margin() {
    let mut p = interactive_connection();
    let round = |rtt0: u32, rtt1: u32| {
        health(vec![
            (5, sample("10.1.0.1:40000", "192.0.2.1:22", 2, rtt0, 0, 5)),
            (5, sample("10.2.0.1:50005", "192.0.2.1:22", 3, rtt1, 0, 5)),
        ])
    };
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    // Measured: p1 is much faster here, and nothing was chosen on
    // measurements yet... the first choice is the lowest RTT.
    let ds = p.handle(round(100, 20), 100);
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(5, p0, true), (5, p1, false)], "{ds:?}");
    // A small difference the other way does not switch back.
    assert!(flips(&p.handle(round(20, 22), 5_000)).is_empty());
    // A large one does, once hold_ms has passed since the last switch.
    let ds = p.handle(round(20, 200), 6_000);
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(5, p0, false), (5, p1, true)], "{ds:?}");
}

#[test]
fn a_path_left_for_loss_is_not_retaken_on_its_rtt_while_it_is_suspect() {
    let mut p = interactive_connection();
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    let mut on_p0 = Vec::new();
    // 20 % of p0's segments retransmitted for 2 s, then none (it stands by).
    for round in 1..=400u32 {
        let t = u64::from(round) * 100;
        let lossy = round <= 20;
        let (segs, retrans) = if lossy {
            (round * 100, round * 20)
        } else {
            (2000, 400)
        };
        let mut s0 = sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 0, 5);
        s0.data_segs_out = segs;
        s0.total_retrans = retrans;
        let s1 = sample("10.2.0.1:50005", "192.0.2.1:22", 3, 80, 0, 5);
        p.handle(health(vec![(5, s0), (5, s1)]), t);
        let active = p.conns[&5].active.as_ref().map(|(a, _, _)| *a);
        on_p0.push((t, active == Some(p0)));
    }
    let left = on_p0
        .iter()
        .find(|(_, on)| !on)
        .map(|(t, _)| *t)
        .expect("p0 is left for its loss");
    assert!(left <= 2_000, "left at {left} ms");
    // Once left, not retaken before it has been suspect for 30 s.
    let back = on_p0
        .iter()
        .find(|(t, on)| *t > left && *on)
        .map(|(t, _)| *t);
    assert!(
        back.is_none_or(|b| b >= left + SUSPECT_FIRST_MS),
        "retaken at {back:?}"
    );
}

#[test]
fn a_join_that_never_comes_up_waits_before_the_next_and_refused_flags_are_retried() {
    let mut p = policy();
    p.handle(created(8, ssh(), "192.0.2.1:22"), 0);
    let ds = p.handle(ConnEvent::Established { token: 8 }, 0);
    assert_eq!(creates(&ds).len(), 1);
    // The server resets the join: SUB_CLOSED for a subflow never established.
    let local = sa("10.2.0.1:50008");
    let remote = sa("192.0.2.1:22");
    let ds = p.handle(
        ConnEvent::SubClosed {
            token: 8,
            local,
            remote,
        },
        90,
    );
    assert!(creates(&ds).is_empty(), "not hammered: {ds:?}");
    assert_eq!(p.wake_at_ms(), Some(90 + RETRY_FIRST_MS));
    assert_eq!(
        creates(&p.handle(ConnEvent::Tick, 90 + RETRY_FIRST_MS)).len(),
        1
    );
    p.handle(
        ConnEvent::SubEstablished {
            token: 8,
            local,
            remote,
        },
        1_200,
    );
    // The primary goes; the MP_PRIO is refused, and sent again next time.
    let only_p1 = ConnEvent::Paths(vec![path(3, "10.2.0.1", Role::Secondary)]);
    let ds = p.handle(only_p1.clone(), 1_300);
    let set = ds
        .iter()
        .find(|d| matches!(d.action, ConnAction::SetBackup { .. }))
        .expect("the standby is made active")
        .action
        .clone();
    p.handle(
        ConnEvent::Failed {
            action: set.clone(),
            error: "EPERM".into(),
        },
        1_301,
    );
    let ds = p.handle(health(vec![]), 1_400);
    assert!(ds.iter().any(|d| d.action == set), "retried: {ds:?}");
}

#[test]
fn the_initial_address_is_reopened_with_a_new_id() {
    let mut p = policy();
    p.handle(created(6, Owner::default(), "192.0.2.1:443"), 0);
    p.handle(ConnEvent::Established { token: 6 }, 0);
    let ds = p.handle(
        ConnEvent::SubClosed {
            token: 6,
            local: sa("10.1.0.1:40000"),
            remote: sa("192.0.2.1:443"),
        },
        20_000,
    );
    let ids: Vec<u8> = ds
        .iter()
        .filter_map(|d| match d.action {
            ConnAction::CreateSubflow {
                local_id, local, ..
            } if local == "10.1.0.1".parse::<IpAddr>().unwrap() => Some(local_id),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 1, "{ds:?}");
    assert_ne!(ids[0], 0, "id 0 is the initial subflow's");
}

#[test]
fn a_connection_leaves_its_primary_at_most_max_handovers_times_per_window() {
    let rules = vec![AppRule {
        unit: Some("ssh.service".into()),
        mode: PathMode::Handover,
        ..AppRule::default()
    }];
    let tuning = PolicyConfig {
        max_handovers: 1,
        handover_window_ms: 120_000,
        ..PolicyConfig::default()
    };
    let mut p = ConnPolicy::new(rules, tuning);
    p.handle(two_paths(), 0);
    p.handle(created(1, ssh(), "192.0.2.1:22"), 0);
    p.handle(ConnEvent::Established { token: 1 }, 0);
    p.handle(
        ConnEvent::SubEstablished {
            token: 1,
            local: sa("10.2.0.1:50001"),
            remote: sa("192.0.2.1:22"),
        },
        80,
    );
    let round = |stalled_ack: u32| {
        health(vec![
            (
                1,
                sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 5, stalled_ack),
            ),
            (1, sample("10.2.0.1:50001", "192.0.2.1:22", 3, 80, 0, 10)),
        ])
    };
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    p.handle(round(5), 100);
    // First stall: the secondary takes over (the budget's one switch).
    let ds = p.handle(round(300), 400);
    assert_eq!(removals(&ds), vec![(1, 0, p0)], "{ds:?}");
    reopened(&mut p, 1, "192.0.2.1:22", 450);
    // Healthy past the distrust: traffic goes back (not rate-limited).
    p.handle(round(5), 500);
    let ds = p.handle(round(5), 31_000);
    assert!(flips(&ds).contains(&(1, p0, false)), "{ds:?}");
    // Stalled again within the window: held back, and the reason says so.
    let ds = p.handle(round(300), 40_000);
    assert!(flips(&ds).is_empty(), "{ds:?}");
    assert!(!p.conns[&1].failed_over);
    // After the window, the next stall moves it.
    p.handle(round(5), 120_300);
    let ds = p.handle(round(300), 120_600);
    // (id 2: p1 took 1, the reopened p0 the next.)
    assert_eq!(removals(&ds), vec![(1, 2, p0)], "{ds:?}");
}

/// The primary's subflow of connection `token` closes after its removal
/// and the one re-created from the same address comes up.
fn reopened(p: &mut ConnPolicy, token: u32, remote: &str, at: u64) -> Vec<ConnDecision> {
    let ds = p.handle(
        ConnEvent::SubClosed {
            token,
            local: sa("10.1.0.1:40000"),
            remote: sa(remote),
        },
        at,
    );
    p.handle(
        ConnEvent::SubEstablished {
            token,
            local: sa("10.1.0.1:40100"),
            remote: sa(remote),
        },
        at + 5,
    );
    ds
}

#[test]
fn a_connection_whose_creation_was_missed_is_adopted_with_its_subflows() {
    let mut p = policy();
    let remote = sa("192.0.2.1:22");
    let adopted = |subflows| ConnEvent::Adopted {
        token: 9,
        local: sa("10.1.0.1:40000"),
        remote,
        server_side: false,
        owner: ssh(),
        subflows,
    };
    // It has its initial subflow on p0 and a p1 subflow the kernel flags
    // backup: handover by its rule wants exactly that, so only the view
    // changes.
    let ds = p.handle(
        adopted(vec![
            AdoptedSubflow {
                local: sa("10.1.0.1:40000"),
                remote,
                local_id: 0,
                backup: false,
            },
            AdoptedSubflow {
                local: sa("10.2.0.1:50000"),
                remote,
                local_id: 3,
                backup: true,
            },
        ]),
        10,
    );
    assert!(ds.is_empty(), "{ds:?}");
    assert_eq!(p.view()[0].mode, PathMode::Handover);
    assert_eq!(p.view()[0].subflows, 2);
    // Adopted again (the next resync): nothing changes.
    assert!(p.handle(adopted(Vec::new()), 20).is_empty());
    // One adopted without its p1 subflow gets one, as a backup, with an id
    // that is not taken.
    let mut q = policy();
    let ds = q.handle(
        ConnEvent::Adopted {
            token: 4,
            local: sa("10.1.0.1:40001"),
            remote,
            server_side: false,
            owner: ssh(),
            subflows: vec![AdoptedSubflow {
                local: sa("10.1.0.1:40001"),
                remote,
                local_id: 0,
                backup: false,
            }],
        },
        10,
    );
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    assert_eq!(creates(&ds), vec![(4, p1, true)], "{ds:?}");
    assert!(ds[0].reason.starts_with("adopted"), "{}", ds[0].reason);
}

#[test]
fn a_servers_subflows_from_each_client_address_are_counted_apart() {
    let mut p = policy();
    let server = sa("10.1.0.1:443");
    p.handle(
        ConnEvent::Created {
            token: 3,
            local: server,
            remote: sa("198.51.100.1:40000"),
            server_side: true,
            owner: Owner::default(),
        },
        0,
    );
    p.handle(ConnEvent::Established { token: 3 }, 0);
    let joined = |port| ConnEvent::SubEstablished {
        token: 3,
        local: server,
        remote: sa(&format!("198.51.100.{port}:40000")),
    };
    p.handle(joined(2), 10);
    p.handle(joined(3), 10);
    assert_eq!(p.view()[0].subflows, 3);
    p.handle(
        ConnEvent::SubClosed {
            token: 3,
            local: server,
            remote: sa("198.51.100.2:40000"),
        },
        20,
    );
    assert_eq!(p.view()[0].subflows, 2);
}

#[test]
fn a_path_left_for_loss_is_measured_with_echoes_and_retaken_only_once_they_come_back() {
    let mut p = interactive_connection();
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    let (mut echoes, mut lost) = (0u32, true);
    let on_p0_at = |p: &ConnPolicy| p.conns[&5].active.as_ref().map(|(a, _, _)| *a) == Some(p0);
    let mut retaken = None;
    for round in 1..=1000u32 {
        let t = u64::from(round) * 100;
        // 20 % of p0's segments retransmitted for 2 s, then it stands by.
        let (segs, retrans) = if round <= 20 {
            (round * 100, round * 20)
        } else {
            (2000, 400)
        };
        let mut s0 = sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 0, 5);
        s0.data_segs_out = segs;
        s0.total_retrans = retrans;
        let s1 = sample("10.2.0.1:50005", "192.0.2.1:22", 3, 80, 0, 5);
        // Echoes lose 20 % for 70 s, then none.
        if t == 70_000 {
            lost = false;
        }
        let ds = p.handle(health(vec![(5, s0), (5, s1)]), t);
        for d in &ds {
            if let ConnAction::ProbeLoss { ifindex, .. } = d.action {
                assert_eq!(ifindex, 2, "only the lossy path is echoed: {d:?}");
                echoes += 1;
                let answered = !(lost && echoes % 5 == 0);
                p.handle(ConnEvent::LossEcho { ifindex, answered }, t);
            }
        }
        let on = on_p0_at(&p);
        if t > 3_000 && t < 70_000 {
            assert!(!on, "retaken at {t} ms while its echoes are lost");
        }
        if t >= 70_000 && on && retaken.is_none() {
            retaken = Some(t);
        }
    }
    assert!(echoes >= 600, "{echoes} echoes");
    let at = retaken.expect("taken back once the echoes come back");
    assert!(at <= 80_000, "retaken only at {at} ms");
}

fn removals(ds: &[ConnDecision]) -> Vec<(u32, u8, IpAddr)> {
    ds.iter()
        .filter_map(|d| match d.action {
            ConnAction::Remove { token, id, addr } => Some((token, id, addr)),
            _ => None,
        })
        .collect()
}

#[test]
fn the_peer_is_told_when_a_path_goes_or_a_dead_primary_is_left() {
    let mut p = two_connections();
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    // p0 stalls for the handover connection (1): it is left and removed
    // from that connection only (id 0: its initial subflow's).
    let round = |stalled_ack: u32| {
        health(vec![
            (
                1,
                sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 5, stalled_ack),
            ),
            (1, sample("10.2.0.1:50001", "192.0.2.1:22", 3, 80, 0, 10)),
            (2, sample("10.1.0.1:40000", "192.0.2.1:443", 2, 20, 0, 5)),
            (2, sample("10.2.0.1:50002", "192.0.2.1:443", 3, 80, 0, 10)),
        ])
    };
    p.handle(round(5), 100);
    let ds = p.handle(round(300), 400);
    assert_eq!(removals(&ds), vec![(1, 0, p0)], "{ds:?}");
    assert!(
        ds.iter()
            .any(|d| matches!(d.action, ConnAction::Remove { .. }) && d.reason.contains("stalled")),
        "{ds:?}"
    );
    // Once only.
    assert!(removals(&p.handle(round(400), 500)).is_empty());
    // p0 goes for everyone: the aggregate connection (2) hears it too; the
    // handover one was told already.
    let ds = p.handle(
        ConnEvent::Paths(vec![path(3, "10.2.0.1", Role::Secondary)]),
        600,
    );
    assert_eq!(removals(&ds), vec![(2, 0, p0)], "{ds:?}");
    assert!(
        ds.iter().any(|d| d.reason.contains("no longer usable")),
        "{ds:?}"
    );
}

#[test]
fn addresses_braid_never_managed_and_last_subflows_are_not_removed() {
    let mut p = policy();
    // A connection from loopback (not a usable path) with a p1 subflow,
    // and one whose only subflow is on p0.
    for (t, local) in [(7, "127.0.0.1:5000"), (8, "10.1.0.1:40008")] {
        p.handle(
            ConnEvent::Created {
                token: t,
                local: sa(local),
                remote: sa("192.0.2.1:443"),
                server_side: false,
                owner: Owner::default(),
            },
            0,
        );
        p.handle(ConnEvent::Established { token: t }, 0);
    }
    p.handle(
        ConnEvent::SubEstablished {
            token: 7,
            local: sa("10.2.0.1:50007"),
            remote: sa("192.0.2.1:443"),
        },
        10,
    );
    p.handle(
        ConnEvent::Failed {
            action: ConnAction::CreateSubflow {
                token: 8,
                local_id: 1,
                local: "10.2.0.1".parse().unwrap(),
                remote: sa("192.0.2.1:443"),
                backup: false,
            },
            error: "refused".into(),
        },
        10,
    );
    let mut ds = p.handle(ConnEvent::Tick, 20);
    // p0 goes: loopback was never a path; connection 8 has nothing else.
    ds.extend(p.handle(
        ConnEvent::Paths(vec![path(3, "10.2.0.1", Role::Secondary)]),
        30,
    ));
    assert!(removals(&ds).is_empty(), "{ds:?}");
}

#[test]
fn a_host_verdict_between_rounds_is_acted_on_at_once() {
    let mut p = two_connections();
    let problems: BTreeMap<u32, PathProblem> = [(2, unreachable())].into();
    let ds = p.handle(ConnEvent::PathProblems(problems.clone()), 100);
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    assert!(flips(&ds).contains(&(1, p1, false)), "{ds:?}");
    // The same verdict again changes nothing.
    assert!(p.handle(ConnEvent::PathProblems(problems), 110).is_empty());
}

fn unreachable() -> PathProblem {
    PathProblem::new(
        ProblemKind::Unreachable,
        "unreachable: a probe went unanswered".into(),
    )
}

/// `s` receiving: `bytes` in all so far, nothing of ours outstanding.
fn receiving(mut s: SubflowSample, bytes: u64) -> SubflowSample {
    s.unacked = 0;
    s.bytes_received = bytes;
    s
}

#[test]
fn a_standby_subflow_whose_path_goes_while_idle_is_kept_until_it_carries() {
    let mut p = two_connections();
    let p1: IpAddr = "10.2.0.1".parse().unwrap();
    // Connection 1 (handover): p0 carries a download, p1 stands by idle.
    // Connection 2 (aggregate): both carry. The shell does not know the
    // interfaces (ifindex 0): the policy finds them, also for an address
    // that has left the usable paths.
    let round = |n: u64, p1_on_1: u64| {
        health(vec![
            (
                1,
                receiving(
                    sample("10.1.0.1:40000", "192.0.2.1:22", 0, 20, 0, 5),
                    n * 100_000,
                ),
            ),
            (
                1,
                receiving(
                    sample("10.2.0.1:50001", "192.0.2.1:22", 0, 80, 0, 10),
                    p1_on_1,
                ),
            ),
            (
                2,
                receiving(
                    sample("10.1.0.1:40000", "192.0.2.1:443", 0, 20, 0, 5),
                    n * 100_000,
                ),
            ),
            (
                2,
                receiving(
                    sample("10.2.0.1:50002", "192.0.2.1:443", 0, 80, 0, 10),
                    n * 50_000,
                ),
            ),
        ])
    };
    p.handle(round(1, 0), 100);
    p.handle(round(2, 0), 200);
    // p1 goes: only the aggregate connection, whose p1 carried data, is
    // told; closing connection 1's idle standby would make both ends
    // resend everything in flight on p0.
    let ds = p.handle(
        ConnEvent::Paths(vec![path(2, "10.1.0.1", Role::Primary)]),
        250,
    );
    assert_eq!(removals(&ds), vec![(2, 1, p1)], "{ds:?}");
    for n in 3..10 {
        let ds = p.handle(round(n, 0), n * 100);
        assert!(removals(&ds).is_empty(), "round {n}: {ds:?}");
    }
    // The peer sends on it after all (data that must be resent): it goes.
    let ds = p.handle(round(10, 400_000), 1_000);
    assert_eq!(removals(&ds), vec![(1, 1, p1)], "{ds:?}");
    assert!(
        ds.iter().any(|d| d.reason.contains("no longer usable")),
        "{ds:?}"
    );
}

/// A peer that goes on sending on a subflow this connection has as a
/// backup most likely lost the one MP_PRIO that told it (sent once, on
/// that subflow): the same flag is set again (the userspace path manager
/// sends the MP_PRIO even when nothing changes), after a grace and a
/// window of 200 ms, at most three times, then left with a note. Not
/// while nothing else carries data: then the backup is what carries it.
#[test]
fn a_peer_that_ignores_a_connections_backup_flag_is_told_again() {
    let (p1, remote) = (sa("10.2.0.1:50001"), sa("192.0.2.1:22"));
    let handover = || {
        let mut p = policy();
        p.handle(created(1, ssh(), "192.0.2.1:22"), 0);
        p.handle(ConnEvent::Established { token: 1 }, 0);
        let up = ConnEvent::SubEstablished {
            token: 1,
            local: p1,
            remote,
        };
        assert!(p.handle(up, 30).is_empty(), "created as a backup");
        p
    };
    // Data segments received so far on p0 (active) and p1 (a backup here).
    let round = |p: &mut ConnPolicy, t: u64, on_p0: u32, on_p1: u32| {
        let mut s0 = sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 0, 5);
        s0.data_segs_in = on_p0;
        s0.local_backup = Some(false);
        s0.first = true;
        let mut s1 = sample("10.2.0.1:50001", "192.0.2.1:22", 3, 80, 0, 5);
        s1.data_segs_in = on_p1;
        s1.local_backup = Some(true);
        p.handle(health(vec![(1, s0), (1, s1)]), t)
    };
    let told = |ds: &[ConnDecision]| -> Vec<String> {
        ds.iter()
            .filter(|d| {
                d.action
                    == ConnAction::SetBackup {
                        token: 1,
                        local: p1,
                        remote,
                        backup: true,
                    }
            })
            .map(|d| d.reason.clone())
            .collect()
    };
    let mut p = handover();
    // The grace (two RTTs + 50 ms), then a window: half of the data on p1.
    for t in [100, 200, 300, 400, 500] {
        let ds = round(&mut p, t, t as u32 / 10, t as u32 / 10);
        assert!(told(&ds).is_empty(), "{ds:?}");
    }
    let ds = round(&mut p, 600, 60, 60);
    let reasons = told(&ds);
    assert_eq!(reasons.len(), 1, "{ds:?}");
    assert!(
        reasons[0].contains("most likely lost")
            && reasons[0].contains("20 data segments on it in the last 200 ms (50%")
            && reasons[0].contains("try 1 of 3"),
        "{}",
        reasons[0]
    );
    // The peer heard it: a few segments more, then nothing on p1.
    for t in (700..=1500).step_by(100) {
        let ds = round(&mut p, t, t as u32 / 10, 63);
        assert!(told(&ds).is_empty(), "{ds:?}");
    }
    // It goes on: told twice more, then left with a note.
    let mut tries = 0;
    for t in (1600..=4000).step_by(100) {
        tries += told(&round(&mut p, t, t as u32 / 10, t as u32 / 10)).len();
    }
    assert_eq!(tries, 2, "two more tries after the first");
    let notes = p.take_notes();
    assert!(
        notes.len() == 1 && notes[0].contains("3 times"),
        "{notes:?}"
    );

    // Data on the backup while p0 receives nothing is what a backup is for.
    let mut p = handover();
    for t in (100..=2000).step_by(100) {
        let ds = round(&mut p, t, 7, t as u32);
        assert!(told(&ds).is_empty(), "{ds:?}");
    }
}

fn check_of(ds: &[ConnDecision]) -> Option<(u32, IpAddr)> {
    ds.iter().find_map(|d| match d.action {
        ConnAction::CheckPath {
            ifindex, remote, ..
        } => Some((ifindex, remote)),
        _ => None,
    })
}

/// As the host-wide handover: a primary that stood by carried nothing, so
/// a failure meanwhile would not show in its measurements. It answers a
/// probe before a connection gives it traffic back; unanswered by a peer
/// that answers echoes, the secondary keeps the connection for another
/// hold time.
#[test]
fn a_connections_primary_that_stood_by_answers_a_check_before_it_takes_traffic_back() {
    let mut p = two_connections();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let (p0, p1): (IpAddr, IpAddr) = ("10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap());
    let round = |p0_ack: u64, p0_unacked: u32| {
        health(vec![
            (
                1,
                sample(
                    "10.1.0.1:40100",
                    "192.0.2.1:22",
                    2,
                    20,
                    p0_unacked,
                    p0_ack as u32,
                ),
            ),
            (1, sample("10.2.0.1:50001", "192.0.2.1:22", 3, 80, 0, 10)),
        ])
    };
    // Stalled at `t`: the secondary carries connection 1.
    let stall = |p: &mut ConnPolicy, t: u64| {
        p.handle(round(5, 2), t - 100);
        let ds = p.handle(round(300, 5), t);
        assert_eq!(flips(&ds), vec![(1, p1, false)], "{ds:?}");
        reopened(p, 1, "192.0.2.1:22", t + 50);
    };
    // Rounds each second with p0 standing by, heard last at `heard`,
    // until a check goes out: when.
    let until_check = |p: &mut ConnPolicy, from: u64, heard: u64| {
        let mut t = from;
        loop {
            let ds = p.handle(round(t - heard, 0), t);
            if let Some(c) = check_of(&ds) {
                assert_eq!(c, (2, peer));
                assert!(flips(&ds).is_empty(), "handed back unchecked: {ds:?}");
                return t;
            }
            assert!(
                flips(&ds).is_empty(),
                "handed back unchecked at {t}: {ds:?}"
            );
            t += 1_000;
            assert!(t < from + 120_000, "never checked");
        }
    };
    stall(&mut p, 400);
    // Not trusted for 30 s after a failure on measurements, then checked.
    let t = until_check(&mut p, 1_000, 500);
    assert!(t >= 30_400, "checked at {t}");
    // One check at a time.
    assert_eq!(check_of(&p.handle(round(t + 500 - 500, 0), t + 500)), None);
    assert_eq!(
        check_of(&p.handle(round(t + 1_000 - 500, 0), t + 1_000)),
        None
    );
    // A check whose outcome never comes (the prober died) is sent again
    // once its answer is well overdue, rather than waited on for ever.
    let ds = p.handle(round(t + 5_000 - 500, 0), t + 5_000);
    assert_eq!(check_of(&ds), Some((2, peer)), "{ds:?}");
    assert!(flips(&ds).is_empty(), "{ds:?}");
    assert!(ds.iter().any(|d| d.reason.contains("sent again")), "{ds:?}");
    let answered_at = t + 5_020;
    let ds = p.handle(
        ConnEvent::CheckAnswer {
            ifindex: 2,
            remote: peer,
            answered: Some(true),
        },
        answered_at,
    );
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(1, p0, false), (1, p1, true)], "{ds:?}");

    // Left again; this time the check goes unanswered, and the peer has
    // answered one: the secondary keeps the connection.
    let again = answered_at + 1_500;
    stall(&mut p, again);
    let t = until_check(&mut p, again + 1_000, again + 100);
    let ds = p.handle(
        ConnEvent::CheckAnswer {
            ifindex: 2,
            remote: peer,
            answered: Some(false),
        },
        t + 20,
    );
    assert!(flips(&ds).is_empty(), "{ds:?}");
    assert!(p
        .take_notes()
        .iter()
        .any(|n| n.contains("did not answer a check although")));
    // Healthy for another hold time (3 s), then checked again.
    let third = until_check(&mut p, t + 1_000, again + 100);
    assert!(third >= t + 20 + 3_000, "checked again at {third}");
    // A check that could not be sent (probing is off) waits for nothing.
    let ds = p.handle(
        ConnEvent::CheckAnswer {
            ifindex: 2,
            remote: peer,
            answered: None,
        },
        third + 1,
    );
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(1, p0, false), (1, p1, true)], "{ds:?}");
}

/// Interactive per connection, as host-wide: the faster path stood by,
/// so its RTT is from when it last carried something; it answers a probe
/// before the connection switches to it.
#[test]
fn an_interactive_connection_checks_a_faster_path_that_stood_by() {
    let mut p = interactive_connection();
    let peer: IpAddr = "192.0.2.1".parse().unwrap();
    let (p0, p1): (IpAddr, IpAddr) = ("10.1.0.1".parse().unwrap(), "10.2.0.1".parse().unwrap());
    let round = |rtt1: u32, p0_ack: u64| {
        health(vec![
            (
                5,
                sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 0, p0_ack as u32),
            ),
            (5, sample("10.2.0.1:50005", "192.0.2.1:22", 3, rtt1, 0, 5)),
        ])
    };
    // p1 first: p0 reads 100 ms then.
    let ds = p.handle(
        health(vec![
            (5, sample("10.1.0.1:40000", "192.0.2.1:22", 2, 100, 0, 5)),
            (5, sample("10.2.0.1:50005", "192.0.2.1:22", 3, 20, 0, 5)),
        ]),
        100,
    );
    assert_eq!(flips(&ds).len(), 2, "{ds:?}");
    // p1 slows to 200 ms; p0 (20 ms when it last carried) has been
    // silent since 100.
    let ds = p.handle(round(200, 6_000 - 100), 6_000);
    assert!(flips(&ds).is_empty(), "switched unchecked: {ds:?}");
    assert_eq!(check_of(&ds), Some((2, peer)), "{ds:?}");
    assert!(
        ds.iter().any(|d| d
            .reason
            .contains("carried nothing that shows it still works")),
        "{ds:?}"
    );
    let ds = p.handle(
        ConnEvent::CheckAnswer {
            ifindex: 2,
            remote: peer,
            answered: Some(true),
        },
        6_030,
    );
    let mut f = flips(&ds);
    f.sort();
    assert_eq!(f, vec![(5, p0, false), (5, p1, true)], "{ds:?}");

    // Each path's RTT and when it was last heard.
    let both = |rtt0: u32, heard0: u64, rtt1: u32, heard1: u64, t: u64| {
        health(vec![
            (
                5,
                sample(
                    "10.1.0.1:40000",
                    "192.0.2.1:22",
                    2,
                    rtt0,
                    0,
                    (t - heard0) as u32,
                ),
            ),
            (
                5,
                sample(
                    "10.2.0.1:50005",
                    "192.0.2.1:22",
                    3,
                    rtt1,
                    0,
                    (t - heard1) as u32,
                ),
            ),
        ])
    };
    let answer = |p: &mut ConnPolicy, ifindex: u32, answered: bool, t: u64| {
        p.handle(
            ConnEvent::CheckAnswer {
                ifindex,
                remote: peer,
                answered: Some(answered),
            },
            t,
        )
    };
    // p0 slows; p1, silent since 100, is checked and answers.
    let ds = p.handle(both(200, 9_100, 20, 100, 9_100), 9_100);
    assert_eq!(check_of(&ds), Some((3, peer)), "{ds:?}");
    assert_eq!(flips(&answer(&mut p, 3, true, 9_130)).len(), 2);
    // p1 slows; p0, which answered a check before, now leaves one
    // unanswered: the connection stays on p1, and p0 is not asked again
    // until it has been healthy for another hold time.
    let ds = p.handle(both(20, 6_030, 200, 12_200, 12_200), 12_200);
    assert_eq!(check_of(&ds), Some((2, peer)), "{ds:?}");
    let ds = answer(&mut p, 2, false, 12_230);
    assert!(flips(&ds).is_empty(), "{ds:?}");
    assert_eq!(check_of(&ds), None, "asked again at once: {ds:?}");
    assert!(p
        .take_notes()
        .iter()
        .any(|n| n.contains("did not answer a check although")));
    let ds = p.handle(both(20, 6_030, 200, 13_000, 13_000), 13_000);
    assert_eq!(check_of(&ds), None, "{ds:?}");
    let ds = p.handle(both(20, 6_030, 200, 15_300, 15_300), 15_300);
    assert_eq!(check_of(&ds), Some((2, peer)), "{ds:?}");
}

fn destroys(ds: &[ConnDecision]) -> Vec<(u32, SocketAddr)> {
    ds.iter()
        .filter_map(|d| match d.action {
            ConnAction::DestroySubflow { token, local, .. } => Some((token, local)),
            _ => None,
        })
        .collect()
}

/// As host-wide (`Policy::note_lossy_waits`): the connection's subflow on
/// the path it left for loss holds data that has waited for an ACK past
/// what TCP expected, a lost segment the switch does not move. It is
/// closed, so its data goes on the chosen path at once, and re-created as
/// a backup; once per wait.
#[test]
fn an_interactive_connection_closes_its_subflow_on_a_path_left_for_loss_when_data_waits() {
    let mut p = interactive_connection();
    let p0: IpAddr = "10.1.0.1".parse().unwrap();
    let round = |p: &mut ConnPolicy, t: u64, unacked: u32, last_ack_ms: u32| {
        let mut s0 = sample(
            "10.1.0.1:40000",
            "192.0.2.1:22",
            2,
            20,
            unacked,
            last_ack_ms,
        );
        s0.data_segs_out = 2000;
        s0.total_retrans = 400;
        let s1 = sample("10.2.0.1:50005", "192.0.2.1:22", 3, 80, 0, 5);
        p.handle(health(vec![(5, s0), (5, s1)]), t)
    };
    // 20 % of p0's segments retransmitted: the connection leaves it.
    for r in 1..=20u32 {
        let mut s0 = sample("10.1.0.1:40000", "192.0.2.1:22", 2, 20, 0, 5);
        s0.data_segs_out = r * 100;
        s0.total_retrans = r * 20;
        let s1 = sample("10.2.0.1:50005", "192.0.2.1:22", 3, 80, 0, 5);
        p.handle(health(vec![(5, s0), (5, s1)]), u64::from(r) * 100);
    }
    assert_ne!(
        p.conns[&5].active.as_ref().map(|(a, _, _)| *a),
        Some(p0),
        "p0 is left for its loss"
    );
    // Data on p0 waits within what TCP expects: nothing.
    assert!(destroys(&round(&mut p, 2_100, 2, 5)).is_empty());
    assert!(destroys(&round(&mut p, 2_110, 2, 15)).is_empty());
    // Past it: p0's subflow is closed.
    let ds = round(&mut p, 2_180, 2, 85);
    assert_eq!(destroys(&ds), vec![(5, sa("10.1.0.1:40000"))], "{ds:?}");
    assert!(
        ds.iter().any(|d| d.reason.contains("left for loss")),
        "{ds:?}"
    );
    // The same wait, once (past the stall threshold too).
    assert!(destroys(&round(&mut p, 2_200, 2, 105)).is_empty());
    // Closed: re-created at once, as a backup.
    let ds = p.handle(
        ConnEvent::SubClosed {
            token: 5,
            local: sa("10.1.0.1:40000"),
            remote: sa("192.0.2.1:22"),
        },
        2_220,
    );
    assert_eq!(creates(&ds), vec![(5, p0, true)], "{ds:?}");
}
