//! The daemon's configuration (TOML), with defaults for a client.

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
            Flag::Signal => 1,
            Flag::Subflow => 2,
            Flag::Backup => 4,
            Flag::Fullmesh => 8,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: Mode,
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
    pub fn name(self) -> &'static str {
        match self {
            PathMode::Aggregate => "aggregate",
            PathMode::Handover => "handover",
            PathMode::Interactive => "interactive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Secondary,
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
    /// A retransmission rate above this marks a path lossy (0.05 = 5 %).
    pub loss_threshold: f64,
    /// Interactive: switch when the active path's RTT exceeds the best
    /// other's by this factor ...
    pub rtt_ratio: f64,
    /// ... and by at least this many milliseconds.
    pub rtt_margin_ms: u64,
    /// A path must be healthy this long before it takes traffic back
    /// (handover: the primary; interactive: any switch back).
    pub hold_ms: u64,
    /// Handover and interactive: the initial congestion window (segments)
    /// set on the default routes of the paths that stand by, so a path
    /// taking over resends the failed path's in-flight data in one or two
    /// round trips instead of slow-starting from 10 segments. It applies to
    /// every TCP connection using those routes, not only MPTCP. 0 leaves
    /// routes alone. Restored when the daemon stops.
    pub standby_initcwnd: u32,
    /// Handover and interactive: when a path that was receiving goes
    /// silent for two RTTs, send it an ICMP echo (two, 10 ms apart); no
    /// answer within srtt + 4 x rttvar marks it unreachable, like a stall.
    /// A receiver has nothing outstanding, so without this a download only
    /// fails over on the server's own timeouts. Needs CAP_NET_RAW.
    pub probe_silent_paths: bool,
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
            standby_initcwnd: 40,
            probe_silent_paths: true,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: Mode::Client,
            endpoints: EndpointsConfig::default(),
            limits: LimitsConfig::default(),
            filter: FilterConfig::default(),
            server: ServerConfig::default(),
            control: ControlConfig::default(),
            policy: PolicyConfig::default(),
            interfaces: Vec::new(),
            relay: OtherSection,
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
        if !(10..=60_000).contains(&p.poll_interval_ms) {
            return Err((
                "policy.poll_interval_ms".into(),
                "must be between 10 and 60000".into(),
            ));
        }
        if !(0.0..=1.0).contains(&p.loss_threshold) {
            return Err((
                "policy.loss_threshold".into(),
                "must be between 0.0 and 1.0 (0.05 = 5 %)".into(),
            ));
        }
        if p.standby_initcwnd > MAX_INITCWND {
            return Err((
                "policy.standby_initcwnd".into(),
                format!("must be between 0 (leave routes alone) and {MAX_INITCWND} segments"),
            ));
        }
        if p.rtt_ratio < 1.0 {
            return Err(("policy.rtt_ratio".into(), "must be at least 1.0".into()));
        }
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

    #[test]
    fn globs() {
        assert!(glob("wlan*", "wlan0"));
        assert!(!glob("wlan*", "eth0"));
        assert!(glob("p?", "p1"));
    }
}
