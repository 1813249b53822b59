//! What the policy knows about the machine, and what goes in and out.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::config::{Config, Flag};

pub use braid_types::endpoint::Limits;
pub use braid_types::net::{DefaultRoute, Link};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Address {
    pub ifindex: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    pub temporary: bool,
    pub deprecated: bool,
    pub tentative: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelEndpoint {
    pub id: u8,
    pub addr: IpAddr,
    pub flags: u32,
    pub ifindex: Option<u32>,
}

impl KernelEndpoint {
    /// The endpoint's subflows are backups: the peer sends on them only
    /// when no other subflow can carry.
    pub fn is_backup(&self) -> bool {
        self.flags & Flag::Backup.bit() != 0
    }
}

pub use braid_types::event::EventKind as MptcpEventKind;

/// Everything that can happen to the policy.
#[derive(Debug, Clone)]
pub enum Event {
    /// The full state, at start and after a resynchronisation (ENOBUFS).
    Snapshot {
        links: Vec<Link>,
        addresses: Vec<Address>,
        default_routes: Vec<DefaultRoute>,
        endpoints: Vec<KernelEndpoint>,
        limits: Limits,
    },
    LinkChanged(Link),
    /// The links as read during a health round. The kernel announces a
    /// carrier loss through its link watch, which holds a change that is
    /// not urgent (a NIC's or a TUN's carrier loss is not) up to a second
    /// after its previous run, for all namespaces together; a read shows
    /// the carrier as it is. Only a carrier loss not yet announced is
    /// taken from it: the rest comes with the announcements.
    LinksPolled(Vec<Link>),
    LinkRemoved {
        index: u32,
    },
    AddressAdded(Address),
    AddressRemoved(Address),
    DefaultRouteAdded(DefaultRoute),
    DefaultRouteRemoved(DefaultRoute),
    ConfigReloaded(Box<Config>),
    /// The answer to `Action::ProbePath`: the round-trip time of the first
    /// echo answered (from its own request), or None if none was answered
    /// in time.
    ProbeResult {
        ifindex: u32,
        remote: IpAddr,
        rtt_ms: Option<f64>,
    },
    /// The answer to `Action::ProbeLoss`: whether the echo came back.
    LossEcho {
        ifindex: u32,
        answered: bool,
    },
    /// An action the shell could not carry out: decision `id` (0 if it
    /// came from no numbered decision).
    ActionFailed {
        id: u64,
        action: Action,
        error: String,
    },
    Mptcp(MptcpEventKind),
    /// One round of subflow measurements (polled while connections exist).
    Health(Vec<crate::health::SubflowSample>),
    /// Time passed and nothing else happened: sent when
    /// `Policy::wake_at_ms` comes (a returning carrier has held long
    /// enough, a refused write's back-off is over, a held-back handover is
    /// allowed again).
    Tick,
    /// The daemon is stopping.
    Stopping,
}

impl Event {
    /// One line saying what happened, for the daemon's journal; `None` for
    /// what is recorded elsewhere (MPTCP events, failed actions) or too
    /// frequent to keep (health rounds, ticks).
    pub fn summary(&self) -> Option<String> {
        let flag = |on: bool, what: &str| format!("{what} {}", if on { "on" } else { "off" });
        Some(match self {
            Event::Snapshot {
                links,
                addresses,
                endpoints,
                ..
            } => format!(
                "state read: {} links, {} addresses, {} endpoints",
                links.len(),
                addresses.len(),
                endpoints.len()
            ),
            Event::LinkChanged(l) => format!(
                "link {} (#{}) {}, {}",
                l.name,
                l.index,
                if l.up { "up" } else { "down" },
                flag(l.carrier, "carrier")
            ),
            Event::LinkRemoved { index } => format!("link #{index} removed"),
            Event::AddressAdded(a) => {
                format!("address {}/{} added dev #{}", a.ip, a.prefix_len, a.ifindex)
            }
            Event::AddressRemoved(a) => {
                format!(
                    "address {}/{} removed dev #{}",
                    a.ip, a.prefix_len, a.ifindex
                )
            }
            Event::DefaultRouteAdded(r) => {
                format!("default route added dev #{} table {}", r.ifindex, r.table)
            }
            Event::DefaultRouteRemoved(r) => {
                format!("default route removed dev #{} table {}", r.ifindex, r.table)
            }
            Event::ConfigReloaded(_) => "configuration reloaded".to_string(),
            Event::ProbeResult {
                ifindex,
                remote,
                rtt_ms,
            } => match rtt_ms {
                Some(ms) => format!("probe of {remote} dev #{ifindex} answered in {ms:.1} ms"),
                None => format!("probe of {remote} dev #{ifindex} not answered"),
            },
            Event::Stopping => "daemon stopping".to_string(),
            Event::ActionFailed { .. }
            | Event::Mptcp(_)
            | Event::Health(_)
            | Event::LinksPolled(_)
            | Event::LossEcho { .. }
            | Event::Tick => return None,
        })
    }
}

/// Echoes in a path probe (`Action::ProbePath`); an answer to any of them
/// means the path carries packets. An unanswered probe closes the path's
/// subflows, so a false verdict costs a reconnection: with two echoes, a
/// path losing 10 % each way (19 % of echoes lost) got one in 28 probes
/// wrong, and a lossy download, probed when silent 14–24 times in a
/// 4-second lab run, was often declared dead. With five, one in 4000.
pub const PATH_PROBE_ECHOES: u16 = 5;

impl Action {
    /// How many ICMP echoes a probe action sends: a path probe several
    /// (`PATH_PROBE_ECHOES`), a loss echo one (each is one sample of the
    /// loss). None for other actions.
    pub fn echoes(&self) -> Option<u16> {
        match self {
            Action::ProbePath { .. } => Some(PATH_PROBE_ECHOES),
            Action::ProbeLoss { .. } => Some(1),
            _ => None,
        }
    }
}

/// What the policy wants done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    AddEndpoint {
        id: u8,
        addr: IpAddr,
        flags: u32,
        ifindex: Option<u32>,
    },
    RemoveEndpoint {
        id: u8,
        addr: IpAddr,
    },
    SetEndpointFlags {
        id: u8,
        addr: IpAddr,
        flags: u32,
    },
    SetLimits {
        subflows: u32,
        add_addr_accepted: u32,
    },
    SetSysctl {
        name: String,
        value: String,
    },
    /// Send a probe (`PATH_PROBE_ECHOES` ICMP echoes, spread over the
    /// first half of the wait) from `local` to `remote` out of `ifindex`
    /// and report with `Event::ProbeResult` whether any was answered
    /// within `timeout_ms`.
    ProbePath {
        ifindex: u32,
        local: IpAddr,
        remote: IpAddr,
        timeout_ms: u64,
    },
    /// Send one echo from `local` to `remote` out of `ifindex` to measure
    /// the loss of a lossy path that carries no traffic, and report with
    /// `Event::LossEcho` whether it came back within `timeout_ms`. Ten a
    /// second on such a path: logged at debug level only.
    ProbeLoss {
        ifindex: u32,
        local: IpAddr,
        remote: IpAddr,
        timeout_ms: u64,
    },
    /// Set (None: clear) `initcwnd` on the default routes of `table`
    /// leaving by `ifindex`.
    SetRouteInitcwnd {
        ifindex: u32,
        table: u32,
        ipv6: bool,
        initcwnd: Option<u32>,
    },
}

/// An action and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// Numbered by the policy from 1 in the order decided (0 until
    /// `Policy::handle` returns it); a failure report names it.
    pub id: u64,
    #[serde(flatten)]
    pub action: Action,
    pub reason: String,
}

/// Flag names as `ip mptcp` prints them.
pub fn flag_names(flags: u32) -> String {
    braid_types::endpoint::EndpointFlags(flags).to_string()
}

/// A loss echo in words (host-wide and per-connection actions alike).
pub fn loss_echo_text(ifindex: u32, local: IpAddr, remote: IpAddr, timeout_ms: u64) -> String {
    format!("loss echo to {remote} from {local} dev #{ifindex} (answer within {timeout_ms} ms)")
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::AddEndpoint {
                id,
                addr,
                flags,
                ifindex,
            } => {
                write!(f, "add endpoint {addr} id {id} {}", flag_names(*flags))?;
                if let Some(i) = ifindex {
                    write!(f, " dev #{i}")?;
                }
                Ok(())
            }
            Action::RemoveEndpoint { id, addr } => write!(f, "remove endpoint {addr} id {id}"),
            Action::SetEndpointFlags { id, addr, flags } => {
                write!(
                    f,
                    "set endpoint {addr} id {id} flags '{}'",
                    flag_names(*flags)
                )
            }
            Action::SetLimits {
                subflows,
                add_addr_accepted,
            } => {
                write!(
                    f,
                    "set limits subflows {subflows} add_addr_accepted {add_addr_accepted}"
                )
            }
            Action::SetSysctl { name, value } => write!(f, "set {name} = {value}"),
            Action::ProbePath {
                ifindex,
                local,
                remote,
                timeout_ms,
            } => write!(
                f,
                "probe {remote} from {local} dev #{ifindex} ({PATH_PROBE_ECHOES} echoes, an answer within {timeout_ms} ms)"
            ),
            Action::ProbeLoss {
                ifindex,
                local,
                remote,
                timeout_ms,
            } => f.write_str(&loss_echo_text(*ifindex, *local, *remote, *timeout_ms)),
            Action::SetRouteInitcwnd {
                ifindex,
                table,
                ipv6,
                initcwnd,
            } => {
                let family = if *ipv6 { "-6 " } else { "" };
                match initcwnd {
                    Some(w) => write!(
                        f,
                        "set initcwnd {w} on {family}default routes dev #{ifindex} table {table}"
                    ),
                    None => write!(
                        f,
                        "clear initcwnd on {family}default routes dev #{ifindex} table {table}"
                    ),
                }
            }
        }
    }
}
