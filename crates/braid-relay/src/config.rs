//! `[relay.server]` and `[relay.client]` in Braid's TOML configuration (the
//! daemon's file; each part of Braid reads its own sections). Errors name
//! the line, the key and what is allowed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::destinations::{DestinationPolicy, PortRange};
use crate::keys::PublicKey;
use crate::wire::Destination;

pub const DEFAULT_PATH: &str = "/etc/braid/braid.toml";
pub const DEFAULT_PORT: u16 = 7000;
/// The bits of the socket mark transparent mode may use.
pub const MARK_MASK: u32 = 0x00ff_0000;
/// Status sockets, in the runtime directories of the systemd units.
pub const DEFAULT_SERVER_SOCKET: &str = "/run/braid-relay/relay.sock";
pub const DEFAULT_CLIENT_SOCKET: &str = "/run/braid-relay-client/client.sock";

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelaySection {
    pub server: Option<ServerConfig>,
    pub client: Option<ClientConfig>,
}

/// The whole file as the relay sees it: only `[relay]` is read here.
#[derive(Debug, Default, Deserialize)]
struct File {
    #[serde(default)]
    relay: RelaySection,
}

fn default_listen() -> Vec<SocketAddr> {
    vec![SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT))]
}
fn default_true() -> bool {
    true
}
fn default_max_connections() -> u32 {
    4096
}
fn default_max_handshakes() -> u32 {
    512
}
fn default_max_handshakes_per_source() -> u32 {
    // A LAN behind one NAT address opening a page's connections at once
    // stays well under it.
    256
}
fn default_handshake_timeout_ms() -> u64 {
    5000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_replay_window_s() -> u64 {
    60
}
fn default_server_control() -> PathBuf {
    PathBuf::from(DEFAULT_SERVER_SOCKET)
}
fn default_client_control() -> PathBuf {
    PathBuf::from(DEFAULT_CLIENT_SOCKET)
}
fn default_socks() -> Listener {
    Listener(Some(SocketAddr::from(([127, 0, 0, 1], 1080))))
}
fn default_http() -> Listener {
    Listener(Some(SocketAddr::from(([127, 0, 0, 1], 3128))))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Addresses to listen on (MPTCP, with TCP for clients without it).
    #[serde(default = "default_listen")]
    pub listen: Vec<SocketAddr>,
    /// The relay's private key (`braid relay keygen --out FILE`).
    pub key_file: PathBuf,
    /// The clients allowed in, each by its public key.
    #[serde(default, rename = "client")]
    pub clients: Vec<AllowedClient>,
    /// Relayed connections open at once, all clients together.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Connections still in their handshake at once: bounds what
    /// unauthenticated peers can hold (over it, the oldest is closed).
    #[serde(default = "default_max_handshakes")]
    pub max_handshakes: u32,
    /// Of which at most this many from one address.
    #[serde(default = "default_max_handshakes_per_source")]
    pub max_handshakes_per_source: u32,
    /// A peer that has not completed its first message by then is closed,
    /// having heard nothing.
    #[serde(default = "default_handshake_timeout_ms")]
    pub handshake_timeout_ms: u64,
    /// Resolving and connecting to a destination, at most.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// First messages stamped further than this from the relay's clock are
    /// refused (replays, or clients with a wrong clock).
    #[serde(default = "default_replay_window_s")]
    pub replay_window_s: u64,
    /// Accept the first message in the SYN (TCP Fast Open; needs
    /// net.ipv4.tcp_fastopen to include 2).
    #[serde(default = "default_true")]
    pub fast_open: bool,
    /// Listen with MPTCP (clients without it still connect over TCP).
    #[serde(default = "default_true")]
    pub mptcp: bool,
    /// Unix socket for `braid relay status`.
    #[serde(default = "default_server_control")]
    pub control_socket: PathBuf,
    /// The resolver that answers clients' DNS queries (transparent mode),
    /// over TCP; by default the first nameserver of /etc/resolv.conf.
    #[serde(default)]
    pub dns: Option<SocketAddr>,
    #[serde(default)]
    pub destinations: DestinationsConfig,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedClient {
    pub name: Spanned<String>,
    pub public_key: Spanned<PublicKey>,
    /// Relayed connections this client may have open at once.
    #[serde(default)]
    pub max_connections: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationsConfig {
    /// Allowed even in special ranges or on the relay's own addresses.
    #[serde(default)]
    pub allow: Vec<IpNet>,
    /// Always refused.
    #[serde(default)]
    pub deny: Vec<IpNet>,
    /// Allowed ports or ranges ("443", "8000-8100"); empty: all.
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// The relay, HOST:PORT.
    pub relay: Spanned<String>,
    /// The relay's public key (`braid relay pubkey` on the relay).
    pub relay_public_key: PublicKey,
    /// This client's private key; its public key must be listed on the relay.
    pub key_file: PathBuf,
    /// SOCKS5 listener, or "off".
    #[serde(default = "default_socks")]
    pub socks: Listener,
    /// HTTP CONNECT listener, or "off".
    #[serde(default = "default_http")]
    pub http: Listener,
    /// Connecting to the relay and hearing its answer, at most.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Send the first message in the SYN (TCP Fast Open).
    #[serde(default = "default_true")]
    pub fast_open: bool,
    /// Answer a program's CONNECT at once and send its first bytes with
    /// the destination in the first message: a round trip less per
    /// connection, but a refused or unreachable destination then shows as
    /// a reset connection instead of a SOCKS or HTTP error.
    #[serde(default)]
    pub early_reply: bool,
    /// Connect to the relay with MPTCP (falls back to TCP where refused).
    #[serde(default = "default_true")]
    pub mptcp: bool,
    /// Unix socket for `braid relay status`.
    #[serde(default = "default_client_control")]
    pub control_socket: PathBuf,
    /// Transparent mode: outgoing TCP of the scope is redirected here and
    /// carried through the relay, with no proxy setting in any program
    /// (needs CAP_NET_ADMIN, for the nftables rules and socket marks).
    #[serde(default)]
    pub transparent: bool,
    /// Whose connections: "host" (every program), "uid:1000", "cgroup:
    /// /system.slice/foo.service", or "lan:eth1,wlan1" (forwarded traffic
    /// of a LAN arriving on those interfaces: router use).
    #[serde(default)]
    pub scope: Scope,
    /// Destinations never redirected, besides loopback, link-local,
    /// multicast, this host's own subnets and the relay.
    #[serde(default)]
    pub exclude: Vec<ipnet::IpNet>,
    /// When the relay cannot be reached: "direct" (connections go out
    /// directly, warned once per outage) or "block" (they fail).
    #[serde(default)]
    pub fallback: Fallback,
    /// QUIC (UDP 443) would bypass a TCP relay on one path: "block" refuses
    /// it (ICMP port unreachable) so programs use TCP through the relay at
    /// once; "relay" carries it through the relay too (each flow its own
    /// tunnel, arriving on transparent_port + 1); "allow" lets it out
    /// directly.
    #[serde(default)]
    pub quic: Quic,
    /// DNS queries of the scope (UDP and TCP port 53) answered through the
    /// relay by its resolver, so names do not leak over one path: "relay"
    /// or "off".
    #[serde(default)]
    pub dns: Dns,
    /// Where redirected connections arrive (and DNS queries, UDP, on the
    /// same port).
    #[serde(default = "default_transparent_port")]
    pub transparent_port: u16,
    /// The mark (SO_MARK) on the client's own sockets, which the redirect
    /// leaves alone; only the bits in 0x00ff0000 are used.
    #[serde(default = "default_mark")]
    pub mark: u32,
}

fn default_transparent_port() -> u16 {
    7001
}
fn default_mark() -> u32 {
    0x00b2_0000
}

/// Whose connections transparent mode carries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub enum Scope {
    #[default]
    Host,
    Uid(u32),
    /// A cgroup v2 path below /sys/fs/cgroup.
    Cgroup(String),
    /// Interfaces of a LAN whose forwarded traffic is carried.
    Lan(Vec<String>),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Scope, String> {
        let bad = || {
            format!(
                "'{s}' is not a scope: use \"host\", \"uid:1000\", \"cgroup:/system.slice/foo.service\" or \"lan:eth1,wlan1\""
            )
        };
        match s.split_once(':') {
            None if s == "host" => Ok(Scope::Host),
            Some(("uid", n)) => n.trim().parse().map(Scope::Uid).map_err(|_| bad()),
            Some(("cgroup", p)) if p.starts_with('/') && !p.contains("..") => {
                Ok(Scope::Cgroup(p.trim_end_matches('/').to_string()))
            }
            Some(("lan", ifs)) => {
                let names: Vec<String> = ifs.split(',').map(|i| i.trim().to_string()).collect();
                if names.iter().any(|n| n.is_empty() || n.len() > 15) {
                    return Err(format!("'{s}': interface names have 1 to 15 characters"));
                }
                Ok(Scope::Lan(names))
            }
            _ => Err(bad()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Scope::Host => "every program of this host".into(),
            Scope::Uid(u) => format!("programs of uid {u}"),
            Scope::Cgroup(p) => format!("programs in cgroup {p}"),
            Scope::Lan(ifs) => format!("traffic forwarded from {}", ifs.join(", ")),
        }
    }
}

impl<'de> Deserialize<'de> for Scope {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Scope::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fallback {
    #[default]
    Direct,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quic {
    #[default]
    Block,
    Relay,
    Allow,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dns {
    #[default]
    Relay,
    Off,
}

/// A listening address, or none ("off").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Listener(pub Option<SocketAddr>);

impl<'de> Deserialize<'de> for Listener {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Listener::parse(&s).map_err(serde::de::Error::custom)
    }
}

impl Listener {
    pub fn parse(s: &str) -> Result<Listener, String> {
        if s == "off" {
            return Ok(Listener(None));
        }
        s.parse().map(|a| Listener(Some(a))).map_err(|_| {
            format!("'{s}' is not an address and port (e.g. 127.0.0.1:1080, [::1]:1080) or \"off\"")
        })
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PublicKey::from_text(&s).map_err(serde::de::Error::custom)
    }
}

impl Serialize for PublicKey {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_text())
    }
}

/// A configuration error, already worded for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

fn at(text: &str, span: std::ops::Range<usize>, key: &str, problem: String) -> ConfigError {
    ConfigError(format!(
        "line {}, key '{key}': {problem}",
        line_at(text, span.start)
    ))
}

fn in_range(
    text: &str,
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<(), ConfigError> {
    if range.contains(&value) {
        return Ok(());
    }
    let line = text
        .lines()
        .position(|l| {
            l.trim_start()
                .starts_with(key.rsplit('.').next().unwrap_or(key))
        })
        .map(|i| format!("line {}, ", i + 1))
        .unwrap_or_default();
    Err(ConfigError(format!(
        "{line}key '{key}': {value} is out of range: must be between {} and {}",
        range.start(),
        range.end()
    )))
}

/// Parse the `[relay]` part of a configuration text.
pub fn parse(text: &str) -> Result<RelaySection, ConfigError> {
    let file: File = toml::from_str(text).map_err(|e| {
        // toml's message already names line, column, key and the problem.
        ConfigError(e.to_string().trim_end().replace("TOML parse error at ", ""))
    })?;
    if let Some(s) = &file.relay.server {
        s.validate(text)?;
    }
    if let Some(c) = &file.relay.client {
        c.validate(text)?;
    }
    Ok(file.relay)
}

/// Load the `[relay]` part of a configuration file.
pub fn load(path: &Path) -> Result<RelaySection, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the configuration {}: {e}",
            path.display()
        ))
    })?;
    parse(&text).map_err(|e| ConfigError(format!("configuration {}: {e}", path.display())))
}

impl ServerConfig {
    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        if self.listen.is_empty() {
            return Err(ConfigError(
                "key 'relay.server.listen': at least one address is needed".into(),
            ));
        }
        if self.clients.is_empty() {
            return Err(ConfigError(
                "[relay.server] lists no [[relay.server.client]]: no client could connect. Add one per client with its public key (run 'braid relay pubkey' on the client)".into(),
            ));
        }
        for (i, c) in self.clients.iter().enumerate() {
            let name = c.name.get_ref();
            if name.is_empty() || name.len() > 64 || name.chars().any(|ch| ch.is_control()) {
                return Err(at(
                    text,
                    c.name.span(),
                    &format!("relay.server.client[{i}].name"),
                    "must be 1 to 64 printable characters".into(),
                ));
            }
            if let Some(other) = self.clients[..i].iter().find(|o| o.name.get_ref() == name) {
                return Err(at(
                    text,
                    c.name.span(),
                    &format!("relay.server.client[{i}].name"),
                    format!(
                        "'{name}' is already the name of the client on line {}",
                        line_at(text, other.name.span().start)
                    ),
                ));
            }
            if let Some(other) = self.clients[..i]
                .iter()
                .find(|o| o.public_key.get_ref() == c.public_key.get_ref())
            {
                return Err(at(
                    text,
                    c.public_key.span(),
                    &format!("relay.server.client[{i}].public_key"),
                    format!(
                        "this key is already the key of client '{}': give each client its own key pair",
                        other.name.get_ref()
                    ),
                ));
            }
            if c.max_connections == Some(0) {
                return Err(ConfigError(format!(
                    "key 'relay.server.client[{i}].max_connections': 0 would lock the client out; remove the client instead"
                )));
            }
        }
        in_range(
            text,
            "relay.server.max_connections",
            self.max_connections.into(),
            1..=1_000_000,
        )?;
        in_range(
            text,
            "relay.server.max_handshakes",
            self.max_handshakes.into(),
            1..=100_000,
        )?;
        in_range(
            text,
            "relay.server.handshake_timeout_ms",
            self.handshake_timeout_ms,
            100..=120_000,
        )?;
        in_range(
            text,
            "relay.server.connect_timeout_ms",
            self.connect_timeout_ms,
            100..=300_000,
        )?;
        in_range(
            text,
            "relay.server.replay_window_s",
            self.replay_window_s,
            5..=3600,
        )?;
        for p in &self.destinations.ports {
            PortRange::parse(p.get_ref())
                .map_err(|e| at(text, p.span(), "relay.server.destinations.ports", e))?;
        }
        absolute(&self.control_socket, "relay.server.control_socket")?;
        Ok(())
    }

    pub fn destination_policy(&self) -> DestinationPolicy {
        DestinationPolicy {
            deny: self.destinations.deny.clone(),
            allow: self.destinations.allow.clone(),
            ports: self
                .destinations
                .ports
                .iter()
                .filter_map(|p| PortRange::parse(p.get_ref()).ok())
                .collect(),
        }
    }
}

fn absolute(p: &Path, key: &str) -> Result<(), ConfigError> {
    if p.is_absolute() {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "key '{key}': must be an absolute path"
        )))
    }
}

impl ClientConfig {
    fn validate(&self, text: &str) -> Result<(), ConfigError> {
        Destination::parse(self.relay.get_ref()).map_err(|e| {
            at(
                text,
                self.relay.span(),
                "relay.client.relay",
                format!("{e} (expected HOST:PORT, e.g. relay.example.net:{DEFAULT_PORT})"),
            )
        })?;
        if self.socks.0.is_none() && self.http.0.is_none() && !self.transparent {
            return Err(ConfigError(
                "keys 'relay.client.socks' and 'relay.client.http' are both \"off\" and transparent is false: no program could use the relay".into(),
            ));
        }
        if self.transparent_port == 0 || self.transparent_port == u16::MAX {
            return Err(ConfigError(
                "key 'relay.client.transparent_port': must be 1 to 65534 (UDP uses the next port too)".into(),
            ));
        }
        if self.mark & !MARK_MASK != 0 || self.mark == 0 {
            return Err(ConfigError(format!(
                "key 'relay.client.mark': {:#x} must be non-zero and within {MARK_MASK:#010x}, the bits Braid may use",
                self.mark
            )));
        }
        if self.transparent && matches!(self.scope, Scope::Lan(_)) && self.quic == Quic::Relay {
            return Err(ConfigError(
                "keys 'relay.client.scope' and 'relay.client.quic': quic = \"relay\" does not work with a LAN scope (a LAN's QUIC arrives on any of the host's addresses, and the client could not tell the kernel's connection tracking where each flow was going, so every datagram would be dropped); use quic = \"block\" (programs fall back to TCP through the relay) or \"allow\" with a LAN scope".into(),
            ));
        }
        in_range(
            text,
            "relay.client.connect_timeout_ms",
            self.connect_timeout_ms,
            100..=300_000,
        )?;
        absolute(&self.control_socket, "relay.client.control_socket")?;
        Ok(())
    }

    /// The relay's address as configured.
    pub fn relay_destination(&self) -> Destination {
        Destination::parse(self.relay.get_ref()).expect("validated")
    }

    /// A client configuration from its parts (for the command line).
    pub fn new(
        relay: &str,
        relay_public_key: PublicKey,
        key_file: PathBuf,
    ) -> Result<ClientConfig, ConfigError> {
        Destination::parse(relay).map_err(|e| {
            ConfigError(format!(
                "relay '{relay}': {e} (expected HOST:PORT, e.g. relay.example.net:{DEFAULT_PORT})"
            ))
        })?;
        Ok(ClientConfig {
            relay: Spanned::new(0..0, relay.to_string()),
            relay_public_key,
            key_file,
            socks: default_socks(),
            http: default_http(),
            connect_timeout_ms: default_connect_timeout_ms(),
            fast_open: true,
            early_reply: false,
            mptcp: true,
            control_socket: default_client_control(),
            transparent: false,
            scope: Scope::Host,
            exclude: Vec::new(),
            fallback: Fallback::Direct,
            quic: Quic::Block,
            dns: Dns::Relay,
            transparent_port: default_transparent_port(),
            mark: default_mark(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY1: &str = "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=";
    const KEY2: &str = "3p7bfXt9wbTTW2HC7OQ1Nz+DQ8hbeGdNrfx+FG+IK08=";

    fn server(extra: &str) -> String {
        format!(
            "mode = \"server\"\n[policy]\nmode = \"handover\"\n\n[relay.server]\nkey_file = \"/etc/braid/relay.key\"\n{extra}\n[[relay.server.client]]\nname = \"laptop\"\npublic_key = \"{KEY1}\"\n"
        )
    }

    #[test]
    fn a_server_section_with_defaults() {
        let r = parse(&server("")).unwrap();
        let s = r.server.unwrap();
        assert!(r.client.is_none());
        assert_eq!(s.listen, vec!["0.0.0.0:7000".parse().unwrap()]);
        assert_eq!(s.clients[0].name.get_ref(), "laptop");
        assert_eq!(s.max_connections, 4096);
        assert!(s.fast_open && s.mptcp);
        // No [relay] at all is fine: the daemon's file.
        assert!(parse("mode = \"client\"\n").unwrap().server.is_none());
    }

    #[test]
    fn errors_name_the_line_and_key() {
        let e = parse(&server("unknown_key = 1\n")).unwrap_err().0;
        assert!(e.contains("unknown_key") && e.contains("line 7"), "{e}");
        let bad = server("").replace(KEY1, "abc");
        let e = parse(&bad).unwrap_err().0;
        assert!(e.contains("line 10") && e.contains("not base64"), "{e}");
        let dup = format!(
            "{}[[relay.server.client]]\nname = \"laptop\"\npublic_key = \"{KEY2}\"\n",
            server("")
        );
        let e = parse(&dup).unwrap_err().0;
        assert!(
            e.contains("line 12") && e.contains("already the name"),
            "{e}"
        );
        let dupkey = format!(
            "{}[[relay.server.client]]\nname = \"phone\"\npublic_key = \"{KEY1}\"\n",
            server("")
        );
        let e = parse(&dupkey).unwrap_err().0;
        assert!(e.contains("line 13") && e.contains("own key pair"), "{e}");
        let e = parse(&server("handshake_timeout_ms = 5\n")).unwrap_err().0;
        assert!(e.contains("line 7") && e.contains("between 100"), "{e}");
        let e = parse(&server("[relay.server.destinations]\nports = [\"http\"]\n"))
            .unwrap_err()
            .0;
        assert!(e.contains("line 8") && e.contains("not a port"), "{e}");
        let e = parse("[relay.server]\nkey_file = \"/k\"\n").unwrap_err().0;
        assert!(e.contains("no client could connect"), "{e}");
        let e = parse("[relay.server]\n").unwrap_err().0;
        assert!(e.contains("key_file"), "{e}");
    }

    #[test]
    fn transparent_settings() {
        let text = format!(
            "[relay.client]\nrelay = \"192.0.2.1:7000\"\nrelay_public_key = \"{KEY2}\"\nkey_file = \"/k\"\ntransparent = true\nscope = \"cgroup:/system.slice/x.service/\"\nfallback = \"block\"\nexclude = [\"198.51.100.0/24\"]\n"
        );
        let c = parse(&text).unwrap().client.unwrap();
        assert!(c.transparent);
        assert_eq!(c.scope, Scope::Cgroup("/system.slice/x.service".into()));
        assert_eq!(c.fallback, Fallback::Block);
        assert_eq!(
            (c.quic, c.dns, c.transparent_port, c.mark),
            (Quic::Block, Dns::Relay, 7001, 0x00b2_0000)
        );
        let e = parse(&text.replace("cgroup:/system.slice/x.service/", "users"))
            .unwrap_err()
            .0;
        assert!(e.contains("line 6") && e.contains("uid:1000"), "{e}");
        let e = parse(&format!("{text}mark = 1\n")).unwrap_err().0;
        assert!(e.contains("0x00ff0000"), "{e}");
        assert_eq!(
            Scope::parse("lan:eth1, wlan1"),
            Ok(Scope::Lan(vec!["eth1".into(), "wlan1".into()]))
        );
        assert_eq!(Scope::parse("uid:1000"), Ok(Scope::Uid(1000)));
        assert!(Scope::parse("cgroup:../etc").is_err());
        assert!(Scope::parse("lan:averyveryverylongname0").is_err());
    }

    #[test]
    fn quic_relay_is_refused_with_a_lan_scope() {
        let text = format!(
            "[relay.client]\nrelay = \"192.0.2.1:7000\"\nrelay_public_key = \"{KEY2}\"\nkey_file = \"/k\"\ntransparent = true\nscope = \"lan:lan0\"\n"
        );
        let e = parse(&format!("{text}quic = \"relay\"\n")).unwrap_err().0;
        assert!(
            e.contains("LAN scope") && e.contains("\"block\"") && e.contains("\"allow\""),
            "{e}"
        );
        for ok in ["block", "allow"] {
            let c = parse(&format!("{text}quic = \"{ok}\"\n"))
                .unwrap()
                .client
                .unwrap();
            assert_eq!(c.scope, Scope::Lan(vec!["lan0".into()]));
        }
        // QUIC through the relay stays fine for this host's own programs.
        let host = text.replace("lan:lan0", "host");
        assert!(parse(&format!("{host}quic = \"relay\"\n")).is_ok());
    }

    #[test]
    fn a_client_section() {
        let text = format!(
            "[relay.client]\nrelay = \"relay.example.net:7000\"\nrelay_public_key = \"{KEY2}\"\nkey_file = \"/etc/braid/client.key\"\nhttp = \"off\"\n"
        );
        let c = parse(&text).unwrap().client.unwrap();
        assert_eq!(c.socks.0, Some("127.0.0.1:1080".parse().unwrap()));
        assert_eq!(c.http.0, None);
        assert_eq!(c.relay_destination().to_string(), "relay.example.net:7000");
        let e = parse(&text.replace("relay.example.net:7000", "relay.example.net"))
            .unwrap_err()
            .0;
        assert!(e.contains("line 2") && e.contains("HOST:PORT"), "{e}");
        let e = parse(&text.replace("http = \"off\"", "http = \"localhost\""))
            .unwrap_err()
            .0;
        assert!(e.contains("line 5") && e.contains("\"off\""), "{e}");
        let both_off = format!("{text}socks = \"off\"\n");
        assert!(parse(&both_off).unwrap_err().0.contains("both"));
    }
}
