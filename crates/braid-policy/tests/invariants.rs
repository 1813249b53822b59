//! Invariants of the path manager under random event sequences: links
//! coming and going (carrier, up/down), addresses, default routes,
//! snapshots with endpoints Braid does not own, MPTCP events, health
//! samples with stalls and loss, probe results, failures of actions it
//! decided, configuration reloads and ticks, at times that may go
//! backwards or jump to the end of the clock.
//!
//! After every step:
//! - at most `KERNEL_MAX_ENDPOINTS` endpoints are Braid's, both in the
//!   policy's model and in the endpoint table its decisions produce;
//! - no decision touches an endpoint Braid does not own (a snapshot's
//!   endpoints that are not Braid's are never removed, changed or
//!   overwritten, unless `endpoints.own_all`), and no endpoint is added
//!   with an id or an address the table already holds;
//! - with `limits.manage`, the limits cover the endpoints in use;
//! - every decision has a reason;
//! - nothing panics (`view`, `wake_at_ms` included).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use braid_policy::config::{Config, Flag, InterfaceConfig, Mode, PathMode, Role};
use braid_policy::health::SubflowSample;
use braid_policy::model::*;
use braid_policy::policy::KERNEL_MAX_ENDPOINTS;
use braid_policy::Policy;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, FileFailurePersistence};

/// Interfaces by index (1 is the loopback; docker0 is excluded by the
/// default filter).
const NAMES: [&str; 7] = ["lo", "eth0", "wlan0", "wwan0", "enp3s0", "usb0", "docker0"];
const REMOTES: [[u8; 4]; 3] = [[203, 0, 113, 1], [198, 51, 100, 7], [192, 0, 2, 9]];
const MAX_ID: u8 = 20;

/// Address `n` of interface `ifindex`: several each (more than the kernel's
/// endpoint maximum in all), IPv4 and IPv6, global, link-local, ULA and
/// loopback.
fn pool_ip(ifindex: u32, n: u8) -> IpAddr {
    let i = ifindex as u8;
    match n % 8 {
        0..=2 => IpAddr::V4(Ipv4Addr::new(10, i, 0, 1 + n)),
        3 | 4 => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, i as u16, 0, 0, 0, 0, n as u16)),
        5 => IpAddr::V4(Ipv4Addr::new(169, 254, i, 1)),
        6 => IpAddr::V6(Ipv6Addr::new(0xfd00, 0, i as u16, 0, 0, 0, 0, 1)),
        _ if ifindex == 1 => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, i as u16, 1)),
    }
}

/// The interface of a pool address (`pool_ip`).
fn pool_ifindex(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(a) if a.is_loopback() => 1,
        IpAddr::V4(a) => a.octets()[1].into(),
        IpAddr::V6(a) if a.segments()[0] == 0xfe80 => a.segments()[6].into(),
        IpAddr::V6(a) => a.segments()[2].into(),
    }
}

fn ifindex() -> impl Strategy<Value = u32> {
    1..=NAMES.len() as u32
}

fn link() -> impl Strategy<Value = Link> {
    (ifindex(), any::<bool>(), prop::bool::weighted(0.8)).prop_map(|(index, up, carrier)| Link {
        index,
        name: NAMES[index as usize - 1].into(),
        up: up || carrier,
        carrier,
        loopback: index == 1,
        carrier_changes: None,
    })
}

fn address() -> impl Strategy<Value = Address> {
    (ifindex(), 0..8u8, 0..16u8).prop_map(|(ifindex, n, bits)| Address {
        ifindex,
        ip: pool_ip(ifindex, n),
        prefix_len: if n % 8 < 3 { 24 } else { 64 },
        // Mostly plain addresses.
        temporary: bits == 1,
        deprecated: bits == 2,
        tentative: bits == 3,
    })
}

fn route() -> impl Strategy<Value = DefaultRoute> {
    (
        ifindex(),
        prop::sample::select(vec![254u32, 100, 200]),
        any::<bool>(),
        prop::option::of(1..100u32),
    )
        .prop_map(|(ifindex, table, ipv6, initcwnd)| DefaultRoute {
            ifindex,
            table,
            ipv6,
            initcwnd,
        })
}

fn flags() -> impl Strategy<Value = u32> {
    // signal, subflow, backup, fullmesh; never signal with fullmesh.
    (1..16u32).prop_filter("signal+fullmesh", |f| f & 9 != 9)
}

/// Endpoints of a snapshot: ids and addresses unique, as in the kernel.
fn endpoints() -> impl Strategy<Value = Vec<KernelEndpoint>> {
    prop::collection::vec(
        (1..=MAX_ID, ifindex(), 0..8u8, flags(), any::<bool>()),
        0..12,
    )
    .prop_map(|v| {
        let mut ids = BTreeSet::new();
        let mut addrs = BTreeSet::new();
        v.into_iter()
            .filter_map(|(id, i, n, flags, dev)| {
                let addr = pool_ip(i, n);
                (ids.insert(id) && addrs.insert(addr)).then_some(KernelEndpoint {
                    id,
                    addr,
                    flags,
                    ifindex: dev.then_some(i),
                })
            })
            .collect()
    })
}

fn sample() -> impl Strategy<Value = SubflowSample> {
    (
        // Few ports: the same subflows are measured round after round.
        (ifindex(), 0..8u8, 40000..40003u16, 0..REMOTES.len()),
        (1..500_000u32, 0..100_000u32, 0..50u32, 0..2000u32, 0..20u32),
        (
            prop_oneof![0..200u32, 0..20_000u32],
            prop::sample::select(vec![0u64, 1000, 50_000, 3_000_000]),
            prop_oneof![0..200u32, 0..20_000u32],
        ),
    )
        .prop_map(
            |(
                (i, n, port, r),
                (rtt_us, rttvar_us, total_retrans, data_segs_out, unacked),
                (last_ack_recv_ms, bytes_received, last_data_recv_ms),
            )| SubflowSample {
                local: SocketAddr::new(pool_ip(i, n), port),
                remote: SocketAddr::new(IpAddr::from(REMOTES[r]), 443),
                ifindex: 0,
                rtt_us,
                rttvar_us,
                total_retrans,
                data_segs_out,
                unacked,
                last_ack_recv_ms,
                bytes_received,
                last_data_recv_ms,
                // In-order data, plus some out of order now and then.
                data_segs_in: (bytes_received / 1400) as u32 + total_retrans % 7,
                // Unknown, equal to or below the smoothed RTT.
                min_rtt_us: rtt_us / u32::from(port - 40000 + 1) * u32::from(port != 40002),
                local_backup: None,
                joining: false,
                first: false,
                conn: 0,
                rcv_ooopack: 0,
                // Unknown, or below or above the smoothed RTT.
                rcv_rtt_us: rttvar_us / 3 * u32::from(bytes_received > 0),
            },
        )
}

/// A valid configuration (the daemon reloads only those).
fn config() -> impl Strategy<Value = Config> {
    let interface = (
        prop::sample::select(vec!["eth0", "wlan*", "wwan0", "e*", "usb0", "docker0"]),
        prop::option::of(prop::sample::subsequence(
            vec![Flag::Subflow, Flag::Signal, Flag::Backup, Flag::Fullmesh],
            1..=3,
        )),
        prop::bool::weighted(0.2),
        prop::option::of(prop::sample::select(vec![Role::Primary, Role::Secondary])),
    )
        .prop_map(|(name, flags, ignore, role)| InterfaceConfig {
            name: name.into(),
            flags: flags.map(|mut f| {
                if f.contains(&Flag::Signal) {
                    f.retain(|x| *x != Flag::Fullmesh);
                }
                if !f.contains(&Flag::Signal) && !f.contains(&Flag::Subflow) {
                    f.push(Flag::Subflow);
                }
                f
            }),
            ignore,
            role,
        });
    (
        (
            prop::sample::select(vec![Mode::Client, Mode::Server]),
            prop::sample::select(vec![
                PathMode::Aggregate,
                PathMode::Handover,
                PathMode::Interactive,
            ]),
            prop::collection::vec(interface, 0..3),
            // own_all, manage limits, bind to device, remove on stop
            (
                prop::bool::weighted(0.1),
                prop::bool::weighted(0.8),
                any::<bool>(),
                any::<bool>(),
            ),
        ),
        // ipv4/ipv6 (never both off), link-local, ula, temporary, default route
        (
            0..3u8,
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
            any::<bool>(),
        ),
        (
            prop::sample::select(vec![0u64, 100, 3000]),
            prop::sample::select(vec![10u64, 100, 1000]),
            prop::sample::select(vec![0u64, 500, 5000]),
            1..4u32,
            prop::sample::select(vec![0u32, 40]),
            (1..3u32, any::<bool>(), any::<bool>()),
        ),
    )
        .prop_map(
            |(
                (mode, path_mode, interfaces, (own_all, manage, bind, remove_on_stop)),
                (families, link_local, ula, temporary, require_default_route),
                (hold, stall, debounce, max_handovers, initcwnd, (loss_hosts, probe, deny)),
            )| {
                let mut c = Config {
                    mode,
                    interfaces,
                    ..Config::default()
                };
                c.policy.mode = path_mode;
                c.endpoints.own_all = own_all;
                c.endpoints.bind_to_device = bind;
                c.endpoints.remove_on_stop = remove_on_stop;
                c.limits.manage = manage;
                c.filter.ipv4 = families != 1;
                c.filter.ipv6 = families != 0;
                c.filter.link_local = link_local;
                c.filter.ula = ula;
                c.filter.temporary = temporary;
                c.filter.require_default_route = require_default_route;
                c.policy.hold_ms = hold;
                c.policy.stall_ms = stall;
                c.policy.carrier_debounce_ms = debounce;
                c.policy.max_handovers = max_handovers;
                c.policy.handover_window_ms = 10_000;
                c.policy.standby_initcwnd = initcwnd;
                c.policy.loss_hosts = loss_hosts;
                c.policy.probe_silent_paths = probe;
                c.server.deny_join_initial_address = deny;
                c
            },
        )
}

/// What a round of health samples shows.
#[derive(Debug, Clone, Copy)]
enum Shape {
    /// The numbers as drawn: stalls and loss at random.
    Random,
    /// Data outstanding and no ACK for a while, towards one host.
    Stall,
    /// Data arriving.
    Receiving,
    /// Data was arriving and has stopped.
    Silent,
}

/// One step: what happens, and how the clock moves before it.
#[derive(Debug, Clone)]
enum Step {
    Snapshot {
        links: Vec<Link>,
        addresses: Vec<Address>,
        routes: Vec<DefaultRoute>,
        /// Keep the endpoint table as it is (Braid's and others'), dropping
        /// those whose bit is set in `drop`, and add `foreign`; or (fresh)
        /// replace it with `foreign`.
        fresh: bool,
        drop: u32,
        foreign: Vec<KernelEndpoint>,
        limits: Limits,
    },
    Link(Link),
    LinkRemoved(u32),
    AddressAdded(Address),
    AddressRemoved(Address),
    RouteAdded(DefaultRoute),
    RouteRemoved(DefaultRoute),
    Mptcp(MptcpEventKind),
    /// Samples, most from an address of one of Braid's endpoints (picked
    /// by the number), so that paths are measured round after round; as
    /// they come, or shaped (`Shape`).
    Health(Shape, Vec<(Option<usize>, SubflowSample)>),
    /// A probe's answer, about the interface of one of Braid's endpoints.
    Probe {
        pick: usize,
        remote: usize,
        rtt_ms: Option<f64>,
    },
    /// An action decided earlier failed: one of the last batch (as the
    /// daemon reports them, right after the batch), or any earlier one.
    Failed {
        pick: usize,
        stale: bool,
    },
    Reload(Box<Config>),
    /// The same step this many times, 100 ms apart (health rounds: a
    /// stall or a silence shows over several).
    Rounds(usize, Box<Step>),
    Tick,
    Stopping,
}

fn step() -> impl Strategy<Value = Step> {
    let snapshot = (
        prop::collection::vec(link(), 0..8),
        prop::collection::vec(address(), 0..16),
        prop::collection::vec(route(), 0..6),
        prop::bool::weighted(0.3),
        any::<u32>(),
        endpoints(),
        (0..10u32, 0..10u32),
    )
        .prop_map(
            |(links, addresses, routes, fresh, drop, foreign, (s, a))| Step::Snapshot {
                links,
                addresses,
                routes,
                fresh,
                drop,
                foreign: foreign
                    .into_iter()
                    .take(if fresh { 12 } else { 2 })
                    .collect(),
                limits: Limits {
                    subflows: s,
                    add_addr_accepted: a,
                },
            },
        );
    prop_oneof![
        1 => snapshot,
        6 => link().prop_map(Step::Link),
        1 => ifindex().prop_map(Step::LinkRemoved),
        6 => address().prop_map(Step::AddressAdded),
        3 => address().prop_map(Step::AddressRemoved),
        3 => route().prop_map(Step::RouteAdded),
        2 => route().prop_map(Step::RouteRemoved),
        1 => prop::sample::select(vec![
            MptcpEventKind::Created,
            MptcpEventKind::Established,
            MptcpEventKind::Closed,
            MptcpEventKind::SubEstablished,
            MptcpEventKind::SubClosed,
            MptcpEventKind::Unknown(99),
        ])
        .prop_map(Step::Mptcp),
        8 => (
            prop::sample::select(vec![Shape::Random, Shape::Stall, Shape::Receiving, Shape::Silent]),
            prop::collection::vec((prop::option::weighted(0.8, 0..8usize), sample()), 0..8),
            1..6usize,
        )
            .prop_map(|(shape, samples, rounds)| Step::Rounds(rounds, Box::new(Step::Health(shape, samples)))),
        3 => (any::<usize>(), 0..REMOTES.len(), prop::option::of(0.1..500.0f64))
            .prop_map(|(pick, remote, rtt_ms)| Step::Probe { pick, remote, rtt_ms }),
        3 => (any::<usize>(), prop::bool::weighted(0.2))
            .prop_map(|(pick, stale)| Step::Failed { pick, stale }),
        1 => config().prop_map(|c| Step::Reload(Box::new(c))),
        3 => Just(Step::Tick),
        // Rare: everything after it only puts routes back.
        1 => prop::bool::weighted(0.1).prop_map(|stop| if stop { Step::Stopping } else { Step::Tick }),
    ]
}

/// How the clock moves: mostly forwards by up to a minute, sometimes
/// backwards, sometimes to the end of time.
fn clock_move() -> impl Strategy<Value = i64> {
    prop_oneof![
        8 => 0..2_000i64,
        3 => 0..60_000i64,
        1 => -60_000..0i64,
        1 => Just(i64::MAX),
    ]
}

/// What the endpoint table holds after the decisions taken so far (each
/// carried out unless reported failed), and whose each endpoint is.
#[derive(Default)]
struct Table {
    endpoints: BTreeMap<u8, (KernelEndpoint, bool)>,
    limits: Option<Limits>,
    /// Limits the kernel refused (since the last snapshot or reload, which
    /// make the policy try everything again): wanted again, they are
    /// written only after a back-off, and may not cover the endpoints
    /// meanwhile.
    limits_refused: Option<Limits>,
    /// A failure reported for an action of an older batch: the table may
    /// differ from the policy's model (checked again after a snapshot).
    diverged: bool,
}

impl Table {
    fn ours(&self) -> BTreeMap<u8, IpAddr> {
        self.endpoints
            .iter()
            .filter(|(_, (_, ours))| *ours)
            .map(|(id, (e, _))| (*id, e.addr))
            .collect()
    }
}

fn run(initial: Config, adopted: Vec<u8>, steps: Vec<(i64, Step)>) -> Result<(), TestCaseError> {
    prop_assert!(initial.validate().is_ok());
    let mut p = Policy::new(initial, adopted);
    let mut now: u64 = 0;
    let mut table = Table::default();
    let mut batches: Vec<Vec<Action>> = Vec::new();
    let mut synced = false;
    let mut stopping = false;
    // Bytes received so far on every subflow (`Shape`).
    let mut received = 0u64;
    let steps = steps.into_iter().flat_map(|(dt, step)| match step {
        Step::Rounds(k, step) => {
            let first = std::iter::once((dt, (*step).clone()));
            first
                .chain(std::iter::repeat_n((100, *step), k - 1))
                .collect()
        }
        step => vec![(dt, step)],
    });
    for (n, (dt, step)) in steps.enumerate() {
        now = if dt == i64::MAX {
            u64::MAX - 1000
        } else {
            now.saturating_add_signed(dt)
        };
        let owned_before: BTreeSet<u8> = p.owned_ids().into_iter().collect();
        let view = p.view();
        let model_before: BTreeMap<u8, IpAddr> = view
            .owned_endpoints
            .iter()
            .chain(&view.foreign_endpoints)
            .map(|e| (e.id, e.addr))
            .collect();
        let mut failed = None;
        let event = match step {
            Step::Snapshot {
                links,
                addresses,
                routes,
                fresh,
                drop,
                foreign,
                limits,
            } => {
                let mut eps: Vec<KernelEndpoint> = if fresh {
                    Vec::new()
                } else {
                    table
                        .endpoints
                        .iter()
                        .filter(|(id, _)| drop & (1 << (**id as u32 % 32)) == 0)
                        .map(|(_, (e, _))| e.clone())
                        .collect()
                };
                for f in foreign {
                    if !eps.iter().any(|e| e.id == f.id || e.addr == f.addr) {
                        eps.push(f);
                    }
                }
                // Whose each endpoint is: Braid's if it made it (or adopted
                // its id) and the id still holds the same address.
                table.endpoints = eps
                    .iter()
                    .map(|e| {
                        let ours = owned_before.contains(&e.id)
                            && model_before.get(&e.id).is_none_or(|a| *a == e.addr);
                        (e.id, (e.clone(), ours))
                    })
                    .collect();
                table.limits = Some(limits);
                table.limits_refused = None;
                table.diverged = false;
                synced = true;
                Event::Snapshot {
                    links,
                    addresses,
                    default_routes: routes,
                    endpoints: eps,
                    limits,
                }
            }
            Step::Link(l) => Event::LinkChanged(l),
            Step::LinkRemoved(index) => Event::LinkRemoved { index },
            Step::AddressAdded(a) => Event::AddressAdded(a),
            Step::AddressRemoved(a) => Event::AddressRemoved(a),
            Step::RouteAdded(r) => Event::DefaultRouteAdded(r),
            Step::RouteRemoved(r) => Event::DefaultRouteRemoved(r),
            Step::Mptcp(k) => Event::Mptcp(k),
            Step::Health(shape, samples) => {
                let ours: Vec<IpAddr> = table.ours().into_values().collect();
                if matches!(shape, Shape::Receiving) {
                    received += 200_000;
                }
                Event::Health(
                    samples
                        .into_iter()
                        .map(|(pick, mut s)| {
                            if let Some(k) = pick {
                                if let Some(ip) = ours.get(k % ours.len().max(1)) {
                                    // Two subflows per address at most.
                                    s.local = SocketAddr::new(*ip, 40000 + (k % 2) as u16);
                                }
                            }
                            match shape {
                                Shape::Random => {}
                                Shape::Stall => {
                                    s.remote.set_ip(IpAddr::from(REMOTES[0]));
                                    s.unacked = s.unacked.max(1);
                                    s.last_ack_recv_ms = 50 + s.last_ack_recv_ms % 5000;
                                }
                                Shape::Receiving | Shape::Silent => {
                                    s.unacked = 0;
                                    s.bytes_received = received;
                                    s.last_data_recv_ms = match shape {
                                        Shape::Receiving => s.last_data_recv_ms % 20,
                                        _ => 50 + s.last_data_recv_ms % 5000,
                                    };
                                }
                            }
                            s
                        })
                        .collect(),
                )
            }
            Step::Probe {
                pick,
                remote,
                rtt_ms,
            } => {
                let ours: Vec<IpAddr> = table.ours().into_values().collect();
                let ifindex = ours
                    .get(pick % ours.len().max(1))
                    .map_or(2, |ip| pool_ifindex(*ip));
                Event::ProbeResult {
                    ifindex,
                    remote: IpAddr::from(REMOTES[remote]),
                    rtt_ms,
                }
            }
            Step::Failed { pick, stale } => {
                let batch = if stale {
                    batches.len().checked_sub(1).map(|last| pick % (last + 1))
                } else {
                    batches.len().checked_sub(1)
                };
                let Some(b) = batch else { continue };
                let action = batches[b][pick % batches[b].len()].clone();
                // `Policy::undo` of an AddEndpoint forgets whatever holds
                // the id now, even another endpoint (someone else's, too).
                // The daemon reports a failure right after the batch that
                // decided it, when the id cannot have changed hands, so only
                // such failures are sent.
                if let Action::AddEndpoint { id, addr, .. } = &action {
                    if model_before.get(id).is_some_and(|a| a != addr) {
                        continue;
                    }
                }
                failed = Some((action.clone(), b + 1 == batches.len()));
                Event::ActionFailed {
                    id: 0,
                    action,
                    error: "Invalid argument (os error 22)".into(),
                }
            }
            Step::Reload(c) => {
                prop_assert!(c.validate().is_ok(), "{:?}", c.validate());
                table.limits_refused = None;
                Event::ConfigReloaded(c)
            }
            Step::Rounds(..) => unreachable!("expanded above"),
            Step::Tick => Event::Tick,
            Step::Stopping => {
                stopping = true;
                Event::Stopping
            }
        };
        let shown = format!("{event:?}");
        let ds = p.handle(event, now);
        let ctx = || format!("step {n} at {now} ms: {shown}\ndecisions: {ds:#?}");

        // What a failure leaves in the table: the policy's own reading.
        if let Some((action, latest)) = failed {
            prop_assert!(ds.is_empty(), "decisions on a failure\n{}", ctx());
            match action {
                // Not added after all.
                Action::AddEndpoint { id, addr, .. }
                    if latest
                        && table
                            .endpoints
                            .get(&id)
                            .is_some_and(|(e, ours)| e.addr == addr && *ours) =>
                {
                    table.endpoints.remove(&id);
                }
                Action::AddEndpoint { .. }
                | Action::RemoveEndpoint { .. }
                | Action::SetEndpointFlags { .. }
                    if !latest =>
                {
                    table.diverged = true
                }
                Action::SetLimits {
                    subflows,
                    add_addr_accepted,
                } => {
                    table.limits = None;
                    table.limits_refused = Some(Limits {
                        subflows,
                        add_addr_accepted,
                    });
                }
                _ => {}
            }
        }

        let cfg = p.config().clone();
        let own_all = cfg.endpoints.own_all;
        let mut added: BTreeSet<u8> = BTreeSet::new();
        for d in &ds {
            prop_assert!(!d.reason.trim().is_empty(), "no reason\n{}", ctx());
            match &d.action {
                Action::AddEndpoint {
                    id,
                    addr,
                    flags,
                    ifindex,
                } => {
                    let held = table.endpoints.get(id);
                    prop_assert!(
                        held.is_none_or(|(_, ours)| *ours && table.diverged),
                        "id {id} is taken ({held:?})\n{}",
                        ctx()
                    );
                    prop_assert!(
                        table.diverged || !table.endpoints.values().any(|(e, _)| e.addr == *addr),
                        "{addr} already has an endpoint\n{}",
                        ctx()
                    );
                    let e = KernelEndpoint {
                        id: *id,
                        addr: *addr,
                        flags: *flags,
                        ifindex: *ifindex,
                    };
                    table.endpoints.insert(*id, (e, true));
                    added.insert(*id);
                }
                Action::RemoveEndpoint { id, addr } | Action::SetEndpointFlags { id, addr, .. } => {
                    prop_assert!(
                        own_all || owned_before.contains(id) || added.contains(id),
                        "endpoint {id} is not Braid's\n{}",
                        ctx()
                    );
                    let held = table.endpoints.get(id).map(|(e, ours)| (e.addr, *ours));
                    if !table.diverged {
                        prop_assert!(
                            held.is_some_and(|(a, ours)| a == *addr && (ours || own_all)),
                            "endpoint {id} {addr}: the table holds {held:?}\n{}",
                            ctx()
                        );
                    } else {
                        prop_assert!(
                            held.is_none_or(|(_, ours)| ours || own_all),
                            "endpoint {id} is someone else's\n{}",
                            ctx()
                        );
                    }
                    match (&d.action, table.endpoints.get_mut(id)) {
                        (Action::RemoveEndpoint { .. }, _) => {
                            table.endpoints.remove(id);
                        }
                        (Action::SetEndpointFlags { flags, .. }, Some((e, _))) => e.flags = *flags,
                        _ => {}
                    }
                }
                Action::SetLimits {
                    subflows,
                    add_addr_accepted,
                } => {
                    prop_assert!(
                        *subflows as usize <= KERNEL_MAX_ENDPOINTS
                            && *add_addr_accepted as usize <= KERNEL_MAX_ENDPOINTS,
                        "limits over the kernel's maximum\n{}",
                        ctx()
                    );
                    table.limits = Some(Limits {
                        subflows: *subflows,
                        add_addr_accepted: *add_addr_accepted,
                    });
                }
                _ => {}
            }
        }
        if !ds.is_empty() {
            batches.push(ds.iter().map(|d| d.action.clone()).collect());
        }

        // The state after the step.
        let view = p.view();
        let _ = (
            p.wake_at_ms(),
            p.health_check_due_in_ms(),
            p.changed_routes(),
        );
        if !synced {
            prop_assert!(
                ds.is_empty(),
                "decisions before the first snapshot\n{}",
                ctx()
            );
            continue;
        }
        prop_assert!(
            view.owned_endpoints.len() <= KERNEL_MAX_ENDPOINTS,
            "the policy owns {} endpoints\n{}",
            view.owned_endpoints.len(),
            ctx()
        );
        if table.diverged {
            continue;
        }
        let ours = table.ours();
        let model: BTreeMap<u8, IpAddr> = view
            .owned_endpoints
            .iter()
            .map(|e| (e.id, e.addr))
            .collect();
        prop_assert_eq!(
            &ours,
            &model,
            "the policy's model is not the table\n{}",
            ctx()
        );
        prop_assert!(
            ours.len() <= KERNEL_MAX_ENDPOINTS,
            "{} endpoints are Braid's\n{}",
            ours.len(),
            ctx()
        );
        if cfg.limits.manage && !stopping {
            if let Some(l) = table.limits {
                let needed = ours.len() as u32;
                let covers = |l: Limits| {
                    l.subflows >= needed
                        && (cfg.mode == Mode::Server || l.add_addr_accepted >= needed)
                };
                // Unless the limits that would cover them were refused:
                // then they are tried again once the back-off is over.
                prop_assert!(
                    covers(l)
                        || table.limits_refused.is_some_and(covers) && p.wake_at_ms().is_some(),
                    "limits {l:?} for {needed} endpoints (refused: {:?})\n{}",
                    table.limits_refused,
                    ctx()
                );
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        // About 2 s in debug; PROPTEST_CASES=20000 for a longer hunt.
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(200),
        // No file next to the tests: a failure prints its (shrunk) case.
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..ProptestConfig::default()
    })]

    #[test]
    fn invariants_hold_under_random_events(
        initial in config(),
        adopted in prop::collection::vec(1..=MAX_ID, 0..4),
        first in step(),
        steps in prop::collection::vec((clock_move(), step()), 1..60),
    ) {
        // Start from a snapshot most of the time (nothing happens before one).
        let first = match first {
            s @ Step::Snapshot { .. } => s,
            _ => Step::Snapshot {
                links: (2..=5).map(|i| Link {
                    index: i,
                    name: NAMES[i as usize - 1].into(),
                    up: true,
                    carrier: true,
                    carrier_changes: None,
                    loopback: false,
                }).collect(),
                addresses: (2..=5).flat_map(|i| (0..4).map(move |n| Address {
                    ifindex: i,
                    ip: pool_ip(i, n),
                    prefix_len: 24,
                    temporary: false,
                    deprecated: false,
                    tentative: false,
                })).collect(),
                routes: (2..=5).flat_map(|i| [false, true].map(|ipv6| DefaultRoute {
                    ifindex: i,
                    table: 254,
                    ipv6,
                    initcwnd: None,
                })).collect(),
                fresh: true,
                drop: 0,
                foreign: vec![
                    KernelEndpoint { id: 1, addr: pool_ip(2, 0), flags: 2, ifindex: None },
                    KernelEndpoint { id: 3, addr: "192.0.2.77".parse().unwrap(), flags: 1, ifindex: None },
                ],
                limits: Limits { subflows: 2, add_addr_accepted: 0 },
            },
        };
        let mut all = vec![(0, first)];
        all.extend(steps);
        run(initial, adopted, all)?;
    }
}
