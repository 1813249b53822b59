//! The daemon's configuration (TOML), with defaults for a client.

use braid_types::endpoint::EndpointFlags;

use crate::conns::rules::AppRule;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Open subflows from every usable address (`subflow` endpoints).
    #[default]
    Client,
    /// Announce extra addresses to clients (`signal` endpoints).
    Server,
}

impl Mode {
    /// As the configuration spells it.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Client => "client",
            Mode::Server => "server",
        }
    }
}

/// Which of the kernel's path managers Braid drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PmKind {
    /// The in-kernel path manager: one set of endpoints and flags for
    /// every connection of the namespace.
    #[default]
    Kernel,
    /// The userspace path manager: Braid opens each connection's
    /// subflows itself, with the mode of its `[[app]]` rule.
    Userspace,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Hash, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Flag {
    Subflow,
    Signal,
    Backup,
    Fullmesh,
}

impl Flag {
    pub fn bit(self) -> u32 {
        match self {
            Flag::Signal => EndpointFlags::SIGNAL,
            Flag::Subflow => EndpointFlags::SUBFLOW,
            Flag::Backup => EndpointFlags::BACKUP,
            Flag::Fullmesh => EndpointFlags::FULLMESH,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
    /// Who decides each connection's subflows.
    pub pm: PmKind,
    /// Per-connection modes (`pm = "userspace"`), first match wins.
    #[serde(rename = "app")]
    pub apps: Vec<AppRule>,
    pub endpoints: EndpointsConfig,
    pub limits: LimitsConfig,
    pub filter: FilterConfig,
    pub server: ServerConfig,
    pub control: ControlConfig,
    pub policy: PolicyConfig,
    /// Per-interface settings, matched by name (glob: `*`, `?`), first match wins.
    #[serde(rename = "interface")]
    pub interfaces: Vec<InterfaceConfig>,
    /// `[relay]` belongs to `braid relay` (same file, its own checks).
    #[serde(skip_serializing)]
    pub relay: OtherSection,
    /// `[metrics]` belongs to the daemon's shell (braid-daemon checks it).
    #[serde(skip_serializing)]
    pub metrics: OtherSection,
}

/// A section of the configuration file read by another part of Braid:
/// accepted here whatever it holds, checked by its owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct OtherSection;

impl<'de> Deserialize<'de> for OtherSection {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        serde::de::IgnoredAny::deserialize(d).map(|_| OtherSection)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EndpointsConfig {
    /// Bind each endpoint to its interface (`dev`), so subflows leave by it
    /// even without source routing.
    pub bind_to_device: bool,
    /// Remove the endpoints Braid made when the daemon stops. Off by
    /// default: removing an endpoint closes the subflows using its address,
    /// so a restart would disturb live connections.
    pub remove_on_stop: bool,
    /// Manage the whole endpoint table, removing endpoints Braid did not make.
    pub own_all: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Keep `subflows` and `add_addr_accepted` matched to the usable endpoints.
    pub manage: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Interface names (globs) considered at all.
    pub include: Vec<String>,
    /// Interface names (globs) never used; wins over `include`.
    pub exclude: Vec<String>,
    pub ipv4: bool,
    pub ipv6: bool,
    /// Use IPv4 169.254/16 and IPv6 fe80::/10 addresses.
    pub link_local: bool,
    /// Use IPv6 unique local addresses (fc00::/7).
    pub ula: bool,
    /// Use IPv6 temporary (privacy) addresses.
    pub temporary: bool,
    /// Only use interfaces that have a default route.
    pub require_default_route: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Refuse joins to the address and port of the initial subflow (the
    /// C flag, net.mptcp.allow_join_initial_addr_port = 0): for servers
    /// behind anycast or load balancers.
    pub deny_join_initial_address: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    pub socket: String,
    /// Group allowed to use the control socket besides root.
    pub group: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterfaceConfig {
    /// Interface name or glob.
    pub name: String,
    /// Endpoint flags for this interface's addresses.
    #[serde(default)]
    pub flags: Option<Vec<Flag>>,
    /// Never use this interface.
    #[serde(default)]
    pub ignore: bool,
    /// Its role for the handover policy; by default the interface holding a
    /// main-table default route is primary and the others secondary.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PathMode {
    /// Every usable path carries data.
    #[default]
    Aggregate,
    /// Primary paths carry data; the others stand by as established backup
    /// subflows and take over when no primary is healthy.
    Handover,
    /// The healthy path with the lowest RTT carries data; the others stand by.
    Interactive,
}

impl PathMode {
    pub const ALL: [PathMode; 3] = [
        PathMode::Aggregate,
        PathMode::Handover,
        PathMode::Interactive,
    ];

    pub fn name(self) -> &'static str {
        match self {
            PathMode::Aggregate => "aggregate",
            PathMode::Handover => "handover",
            PathMode::Interactive => "interactive",
        }
    }

    /// The mode called `name` (as `name` gives it).
    pub fn parse(name: &str) -> Option<PathMode> {
        PathMode::ALL.into_iter().find(|m| m.name() == name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Secondary => "secondary",
        }
    }
}

/// Path selection from measured health (Apple's three modes).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: PathMode,
    /// How often subflow health is read while MPTCP connections exist.
    pub poll_interval_ms: u64,
    /// A path with data outstanding and no acknowledgement for this long
    /// (or two smoothed RTTs, if longer) is stalled.
    pub stall_ms: u64,
    /// A retransmission rate above this marks a path lossy (0.05 = 5 %),
    /// and handover and interactive leave it. Right under CUBIC, whose
    /// window collapses with loss; under BBR a lossy path can still carry
    /// more than a slower standby (docs/benchmarks.md, "Data moved beside
    /// the stall").
    pub loss_threshold: f64,
    /// Interactive: switch when the active path's RTT exceeds the best
    /// other's by this factor ...
    pub rtt_ratio: f64,
    /// ... and by at least this many milliseconds.
    pub rtt_margin_ms: u64,
    /// A path must be healthy this long before it takes traffic back
    /// (handover: the primary; interactive: any switch back), and answer
    /// a probe if nothing was heard from it in the last 500 ms.
    pub hold_ms: u64,
    /// Handover and interactive: the initial congestion window (segments)
    /// set on the default routes of the paths that stand by, so a path
    /// taking over resends the failed path's in-flight data in about one
    /// round trip instead of slow-starting from 10 segments. 200 covers
    /// the ~240 kB a 40 Mbit/s primary with a 100 ms RTT has in flight; 40
    /// took three round trips of a 200 ms secondary to resend it. It
    /// applies to every TCP connection using those routes, not only
    /// MPTCP; in interactive mode, where every path stands by, at most
    /// `INTERACTIVE_MAX_INITCWND`. 0 leaves routes alone. Restored when
    /// the daemon stops.
    pub standby_initcwnd: u32,
    /// Every mode: when a path that was receiving goes
    /// silent for one RTT (at least 15 ms), send it ICMP echoes (five,
    /// spread over the first half of the wait); no answer in time (twice the path's minimum RTT, see
    /// `PathHealth::silence_probe_timeout_ms`) marks it unreachable, like a
    /// stall.
    /// A receiver has nothing outstanding, so without this a download only
    /// fails over on the server's own timeouts. The same probe confirms a
    /// stall seen on connections to one remote host only (sent before the
    /// stall threshold is reached, so it costs no time). Echoes also
    /// measure the loss of a lossy path that stands by and carries no
    /// traffic (`PathHealth::wants_loss_echo`), and check that a path
    /// standing by unheard still answers before it takes traffic back
    /// (handover's primary, interactive's faster path; host-wide and per
    /// connection: `PathHealth::want_check`). Needs CAP_NET_RAW.
    pub probe_silent_paths: bool,
    /// A link whose carrier comes back (or that is set up again) is used
    /// again only once it has kept carrier this long, doubled for each
    /// further carrier loss in the last minute (at most 30 s): a flapping
    /// link is not re-added, joined and torn down on every bounce. Losing
    /// carrier still acts at once (the failover time does not change).
    /// 0 uses a link the moment its carrier returns.
    pub carrier_debounce_ms: u64,
    /// At most this many switches of traffic made on measurements (a
    /// stall, loss, an unanswered probe, RTT) in any `handover_window_ms`,
    /// each with the resets of the failed path's subflows it brings; in
    /// aggregate mode, which switches nothing, the resets alone. Measurements pool every user's connections, so
    /// this bounds what any one of them can cause. Switches because a path
    /// is gone (carrier, address, route) are never held back.
    pub max_handovers: u32,
    pub handover_window_ms: u64,
    /// How many distinct remote hosts must see a path's loss over
    /// `loss_threshold` before it is taken as the path's loss. 1 (default):
    /// one connection's loss moves traffic (interactive and handover move
    /// it without resetting subflows, and `max_handovers` bounds how often).
    /// 2 on multi-user hosts, where a user's own server could fake loss to
    /// move everybody's traffic. Stalls always need two hosts or an
    /// unanswered probe, as they reset subflows.
    pub loss_hosts: u32,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            mode: PathMode::Aggregate,
            poll_interval_ms: 100,
            stall_ms: 100,
            loss_threshold: 0.05,
            rtt_ratio: 1.5,
            rtt_margin_ms: 10,
            hold_ms: 3000,
            standby_initcwnd: 200,
            probe_silent_paths: true,
            carrier_debounce_ms: 500,
            max_handovers: 5,
            handover_window_ms: 60_000,
            loss_hosts: 1,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Client,
            pm: PmKind::Kernel,
            apps: Vec::new(),
            endpoints: EndpointsConfig::default(),
            limits: LimitsConfig::default(),
            filter: FilterConfig::default(),
            server: ServerConfig::default(),
            control: ControlConfig::default(),
            policy: PolicyConfig::default(),
            interfaces: Vec::new(),
            relay: OtherSection,
            metrics: OtherSection,
        }
    }
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            bind_to_device: true,
            remove_on_stop: false,
            own_all: false,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig { manage: true }
    }
}

impl Default for FilterConfig {
    fn default() -> Self {
        FilterConfig {
            include: vec!["*".into()],
            exclude: [
                "lo",
                "docker*",
                "br-*",
                "virbr*",
                "veth*",
                "cni*",
                "flannel*",
                "vxlan*",
                "wg*",
                "tailscale*",
                "zt*",
            ]
            .map(String::from)
            .to_vec(),
            ipv4: true,
            ipv6: true,
            link_local: false,
            ula: false,
            temporary: false,
            require_default_route: true,
        }
    }
}

impl Default for ControlConfig {
    fn default() -> Self {
        ControlConfig {
            socket: "/run/braid/braid.sock".into(),
            group: None,
        }
    }
}

impl Config {
    /// Semantic checks serde cannot express. Returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (i, app) in self.apps.iter().enumerate() {
            if self.pm != PmKind::Userspace {
                return Err((
                    format!("app[{i}]"),
                    "per-connection rules need pm = \"userspace\" (the in-kernel path manager applies one policy to every connection)".into(),
                ));
            }
            app.validate().map_err(|e| (format!("app[{i}]"), e))?;
        }
        for (i, iface) in self.interfaces.iter().enumerate() {
            if iface.name.is_empty() {
                return Err((format!("interface[{i}].name"), "must not be empty".into()));
            }
            if let Some(flags) = &iface.flags {
                if flags.contains(&Flag::Signal) && flags.contains(&Flag::Fullmesh) {
                    return Err((
                        format!("interface[{i}].flags"),
                        "'signal' and 'fullmesh' cannot be combined (the kernel refuses it)".into(),
                    ));
                }
                if !flags.contains(&Flag::Signal) && !flags.contains(&Flag::Subflow) {
                    return Err((
                        format!("interface[{i}].flags"),
                        "needs 'subflow' (open subflows from it) or 'signal' (announce it), or both".into(),
                    ));
                }
            }
        }
        let p = &self.policy;
        in_range("policy.poll_interval_ms", p.poll_interval_ms, 10, 60_000)?;
        in_range("policy.stall_ms", p.stall_ms, 10, 60_000)?;
        in_range("policy.hold_ms", p.hold_ms, 0, MAX_HOLD_MS)?;
        in_range("policy.rtt_margin_ms", p.rtt_margin_ms, 0, 60_000)?;
        finite("policy.loss_threshold", p.loss_threshold)?;
        if !(p.loss_threshold > 0.0 && p.loss_threshold <= 1.0) {
            return Err((
                "policy.loss_threshold".into(),
                "must be above 0.0 and at most 1.0 (0.05 = 5 %)".into(),
            ));
        }
        if p.standby_initcwnd > MAX_INITCWND {
            return Err((
                "policy.standby_initcwnd".into(),
                format!("must be between 0 (leave routes alone) and {MAX_INITCWND} segments"),
            ));
        }
        finite("policy.rtt_ratio", p.rtt_ratio)?;
        if !(1.0..=MAX_RTT_RATIO).contains(&p.rtt_ratio) {
            return Err((
                "policy.rtt_ratio".into(),
                format!("must be between 1.0 and {MAX_RTT_RATIO}"),
            ));
        }
        in_range(
            "policy.carrier_debounce_ms",
            p.carrier_debounce_ms,
            0,
            60_000,
        )?;
        in_range("policy.max_handovers", p.max_handovers.into(), 1, 1000)?;
        in_range("policy.loss_hosts", p.loss_hosts.into(), 1, 16)?;
        in_range(
            "policy.handover_window_ms",
            p.handover_window_ms,
            1000,
            86_400_000,
        )?;
        if !self.filter.ipv4 && !self.filter.ipv6 {
            return Err((
                "filter.ipv4".into(),
                "ipv4 and ipv6 cannot both be false: no address would be used".into(),
            ));
        }
        if self.control.socket.is_empty() || !self.control.socket.starts_with('/') {
            return Err(("control.socket".into(), "must be an absolute path".into()));
        }
        Ok(())
    }

    /// The settings for interface `name`: (ignored, explicit flags).
    pub fn interface(&self, name: &str) -> Option<&InterfaceConfig> {
        self.interfaces.iter().find(|i| glob(&i.name, name))
    }
}

/// A larger initial window than this is a burst no path is likely to take.
pub const MAX_INITCWND: u32 = 256;
/// The most `policy.standby_initcwnd` gives in interactive mode. Every
/// path stands by there, the one that carries the host's unbound
/// connections too, so the window is every new TCP connection's first
/// flight: the default of 200 is sized for a handover secondary's resend,
/// not for that. 40 is the window interactive mode was measured with
/// (docs/benchmarks.md, sweep53).
pub const INTERACTIVE_MAX_INITCWND: u32 = 40;
/// An hour: longer holds are typos, not policies.
pub const MAX_HOLD_MS: u64 = 3_600_000;
/// A path 100 times slower than another is not "comparable" any more.
pub const MAX_RTT_RATIO: f64 = 100.0;

/// A number the policy compares and multiplies: NaN compares false with
/// everything (so any range check passes it) and infinity swallows every
/// sum, so both are refused by name.
fn finite(key: &str, v: f64) -> Result<(), (String, String)> {
    let problem = if v.is_nan() {
        "must be a number, not nan"
    } else if v.is_infinite() {
        "must be a finite number, not inf"
    } else {
        return Ok(());
    };
    Err((key.into(), problem.into()))
}

fn in_range(key: &str, v: u64, min: u64, max: u64) -> Result<(), (String, String)> {
    if (min..=max).contains(&v) {
        Ok(())
    } else {
        Err((
            key.into(),
            format!("must be between {min} and {max} (is {v})"),
        ))
    }
}

pub fn glob(pattern: &str, name: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../contrib/braid.toml");
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn errors_name_line_key_and_allowed_values() {
        let e = toml::from_str::<Config>("mode = \"router\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 1") && e.contains("client") && e.contains("server"),
            "{e}"
        );
        let e = toml::from_str::<Config>("[filter]\nipv5 = true\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 2") && e.contains("ipv5") && e.contains("ipv4"),
            "{e}"
        );
        let e = toml::from_str::<Config>("[[interface]]\nname = \"wlan0\"\nflags = [\"turbo\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("line 3") && e.contains("turbo") && e.contains("subflow"),
            "{e}"
        );
        let c: Config =
            toml::from_str("[[interface]]\nname = \"x\"\nflags = [\"signal\", \"fullmesh\"]\n")
                .unwrap();
        assert_eq!(c.validate().unwrap_err().0, "interface[0].flags");
    }

    /// `rtt_ratio = nan` passed `rtt_ratio < 1.0` (NaN compares false):
    /// every non-finite number and every duration past its bound is now
    /// refused with the key and what is wrong with it.
    #[test]
    fn non_finite_and_out_of_range_numbers_are_refused_by_key() {
        for (text, key, says) in [
            ("rtt_ratio = nan", "policy.rtt_ratio", "not nan"),
            ("rtt_ratio = inf", "policy.rtt_ratio", "not inf"),
            ("rtt_ratio = -inf", "policy.rtt_ratio", "not inf"),
            (
                "rtt_ratio = -2.0",
                "policy.rtt_ratio",
                "between 1.0 and 100",
            ),
            (
                "rtt_ratio = 1e300",
                "policy.rtt_ratio",
                "between 1.0 and 100",
            ),
            ("loss_threshold = nan", "policy.loss_threshold", "not nan"),
            ("loss_threshold = inf", "policy.loss_threshold", "not inf"),
            (
                "loss_threshold = -0.1",
                "policy.loss_threshold",
                "above 0.0",
            ),
            ("loss_threshold = 0.0", "policy.loss_threshold", "above 0.0"),
            (
                "hold_ms = 9223372036854775807",
                "policy.hold_ms",
                "between 0 and 3600000",
            ),
            ("stall_ms = 0", "policy.stall_ms", "between 10 and 60000"),
            (
                "rtt_margin_ms = 100000000",
                "policy.rtt_margin_ms",
                "between",
            ),
            ("poll_interval_ms = 1", "policy.poll_interval_ms", "between"),
            (
                "carrier_debounce_ms = 86400000",
                "policy.carrier_debounce_ms",
                "between",
            ),
            (
                "max_handovers = 0",
                "policy.max_handovers",
                "between 1 and 1000",
            ),
            (
                "handover_window_ms = 10",
                "policy.handover_window_ms",
                "between",
            ),
        ] {
            let c: Config = toml::from_str(&format!("[policy]\n{text}\n")).unwrap();
            let (k, problem) = c.validate().unwrap_err();
            assert_eq!(k, key, "{text}");
            assert!(problem.contains(says), "{text}: {problem}");
        }
        // The boundaries themselves are fine.
        let c: Config = toml::from_str(
            "[policy]\nrtt_ratio = 1.0\nloss_threshold = 1.0\nhold_ms = 3600000\ncarrier_debounce_ms = 0\n",
        )
        .unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn globs() {
        assert!(glob("wlan*", "wlan0"));
        assert!(!glob("wlan*", "eth0"));
        assert!(glob("p?", "p1"));
    }
}
