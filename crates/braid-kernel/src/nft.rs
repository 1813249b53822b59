//! nf_tables over netlink (`netlink-packet-netfilter` on the crates Braid
//! already uses): one table of Braid's own, installed, replaced and
//! removed atomically in one batch, and read back. Only what Braid's rules
//! need: matching on protocol, destination prefix and port, socket mark,
//! owner uid, cgroup, input interface and TCP flags; verdicts return,
//! accept, redirect to a local port, reject; and removing a TCP option
//! (the lab's and tests' option-stripping middlebox).
//!
//! Everything acts on the network namespace of the calling thread.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;

use ipnet::IpNet;
use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_APPEND,
    NLM_F_CREATE, NLM_F_REQUEST,
};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions,
    Hook as NlHook, HookNumber, Immediate, InetHookNumber, ListAttribute, Meta, MetaKey,
    NfTablesMessage, Operator, Payload, Register, RuleAttribute, RuleMessage, TableAttribute,
    TableMessage, Verdict as NlVerdict, VerdictAttribute,
};
use netlink_packet_netfilter::none::ControlMessage;
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use serde::Serialize;

use crate::error::{Error, Op, Result};
use crate::netlink::{messages, Kind, NlSocket};
use crate::socket::setsockopt_int;

/// The hook a chain is attached to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// Locally generated packets (this host's programs).
    Output,
    /// Packets arriving from an interface (forwarded traffic of a LAN).
    Prerouting,
}

/// What a chain may do: `Nat` chains may redirect, `Filter` chains may
/// reject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChainKind {
    Nat,
    Filter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

/// One condition of a rule; a rule matches when all of its conditions do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "match", rename_all = "snake_case")]
pub enum Match {
    /// The layer-4 protocol (6 TCP, 17 UDP).
    Protocol { number: u8 },
    /// IPv4 or IPv6.
    Family { family: Family },
    /// The destination address is in this prefix (implies its family).
    Destination { prefix: IpNet },
    /// The transport destination port (needs a `Protocol` match before it).
    DestinationPort { port: u16 },
    /// The packet's mark, masked, equals `value` (`meta mark & mask == value`).
    Mark { mask: u32, value: u32 },
    /// The sending socket belongs to this user.
    SocketUid { uid: u32 },
    /// The sending socket's cgroup v2 at `level` (depth below the root) is
    /// the cgroup with this id (the inode number of its directory).
    SocketCgroup { level: u32, id: u64 },
    /// The packet came in on this interface (at most 15 bytes). Packets
    /// of an `Output` chain have no input interface: there it never
    /// matches.
    InputInterface { name: String },
    /// The TCP flags byte, masked, equals `value` (`tcp flags & mask ==
    /// value`; needs `Protocol { number: 6 }` before it). SYN is 0x02.
    TcpFlags { mask: u8, value: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Leave this chain (the packet goes on unchanged).
    Return,
    Accept,
    /// Redirect to this port on the host (nat chains only).
    Redirect {
        port: u16,
    },
    /// Refuse with ICMP port unreachable (filter chains only).
    RejectPortUnreachable,
    /// Remove this TCP option from the packet (overwritten with NOPs, as
    /// `nft ... reset tcp option` does; Linux 5.18+) and let it go on:
    /// a middlebox that strips options, for labs and tests. Filter chains
    /// only; needs `Protocol { number: 6 }` in the rule.
    StripTcpOption {
        kind: u8,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub verdict: Verdict,
    /// Why the rule is there, kept in the rule (NFTA_RULE_USERDATA as a
    /// comment, as `nft ... comment "..."` does) and shown in dumps.
    pub comment: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub name: String,
    pub hook: Hook,
    pub kind: ChainKind,
    /// Lower runs first; -100 is the usual priority of nat chains (dstnat).
    pub priority: i32,
    pub rules: Vec<Rule>,
}

/// A table of the `inet` family (IPv4 and IPv6 together) with its chains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Table {
    pub name: String,
    pub chains: Vec<Chain>,
}

impl Table {
    /// How many rules its chains hold together.
    pub fn rule_count(&self) -> usize {
        self.chains.iter().map(|c| c.rules.len()).sum()
    }
}

/// A rule as read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstalledRule {
    pub chain: String,
    pub handle: u64,
    /// The expressions' names in order (e.g. meta, cmp, payload, redir).
    pub expressions: Vec<String>,
    pub comment: Option<String>,
}

/// Install `table`, replacing a table of the same name if there is one, in
/// one atomic batch: afterwards exactly these chains and rules exist, or
/// (on any error) nothing changed.
pub fn install(table: &Table) -> Result<()> {
    validate(table)?;
    let mut batch = vec![
        // Create-if-missing then delete: the delete never fails for want of
        // a table, and the whole replacement stays one transaction.
        new_table(&table.name),
        del_table(&table.name),
        new_table(&table.name),
    ];
    for chain in &table.chains {
        batch.push(new_chain(&table.name, chain));
    }
    for chain in &table.chains {
        for rule in &chain.rules {
            batch.push(new_rule(&table.name, &chain.name, rule));
        }
    }
    run_batch(&batch, Op::NftInstall)
}

/// Remove the `inet` table `name`; `Ok(false)` when there was none.
pub fn remove(name: &str) -> Result<bool> {
    validate_name("table", name)?;
    match run_batch(&[del_table(name)], Op::NftRemove) {
        Ok(()) => Ok(true),
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => Ok(false),
        Err(e) => Err(e),
    }
}

/// The rules of the `inet` table `name` in chain order; `None` when the
/// table does not exist.
pub fn list(name: &str) -> Result<Option<Vec<InstalledRule>>> {
    validate_name("table", name)?;
    let op = Op::NftList;
    let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER, op)?;
    let get = message(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetTable(TableMessage {
            attributes: vec![TableAttribute::Name(name.to_string())],
        }),
    );
    match sock.request::<_, NetfilterMessage>(get, Kind::Do, 0, op) {
        Ok(_) => {}
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    }
    let dump = message(
        NetfilterProtoFamily::Inet,
        NfTablesMessage::GetRule(RuleMessage {
            attributes: vec![RuleAttribute::Table(name.to_string())],
        }),
    );
    let replies = match sock.request::<_, NetfilterMessage>(dump, Kind::Dump, 0, op) {
        Ok(r) => r,
        // The table went away between the two requests.
        Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut rules = Vec::new();
    for reply in replies {
        let NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)) = reply.inner else {
            continue;
        };
        if let Some(r) = installed_rule(name, &rule.attributes) {
            rules.push(r);
        }
    }
    Ok(Some(rules))
}

/// The names of every table of every family, for checks that nothing else
/// was touched (family, name).
pub fn tables() -> Result<Vec<(u8, String)>> {
    let op = Op::NftList;
    let mut sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER, op)?;
    let dump = message(
        NetfilterProtoFamily::Unspec,
        NfTablesMessage::GetTable(TableMessage { attributes: vec![] }),
    );
    let replies = sock.request::<_, NetfilterMessage>(dump, Kind::Dump, 0, op)?;
    let mut out = Vec::new();
    for reply in replies {
        let family = u8::from(reply.header.family);
        if let NetfilterMessageInner::NfTables(NfTablesMessage::NewTable(t)) = reply.inner {
            for a in t.attributes {
                if let TableAttribute::Name(n) = a {
                    out.push((family, n));
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Validation: everything the kernel would refuse with a bare errno (or
// accept and never match) is refused here with words.

/// NFT_NAME_MAXLEN is 256 with the terminating NUL.
const NAME_MAX: usize = 255;
/// IFNAMSIZ is 16 with the terminating NUL.
const IFNAME_MAX: usize = 15;
/// NFT_USERDATA_MAXLEN is 256 bytes; the comment TLV takes 2 of them and
/// its NUL one more.
const COMMENT_MAX: usize = 253;

/// Protocols whose transport header starts with source then destination
/// port (16 bits each): TCP, UDP, DCCP, SCTP, UDP-Lite.
const PORT_PROTOCOLS: [u8; 5] = [6, 17, 33, 132, 136];

fn validate_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::Invalid(format!(
            "an nf_tables {what} name cannot be empty; give the {what} a name"
        )));
    }
    if name.len() > NAME_MAX {
        return Err(Error::Invalid(format!(
            "the nf_tables {what} name '{}...' is {} bytes long: the kernel allows at most {NAME_MAX}; choose a shorter name",
            name.chars().take(32).collect::<String>(),
            name.len()
        )));
    }
    if name.contains('\0') {
        return Err(Error::Invalid(format!(
            "the nf_tables {what} name {name:?} contains a NUL byte, which netlink strings cannot carry; remove it"
        )));
    }
    Ok(())
}

fn valid_ifname(name: &str) -> bool {
    !name.is_empty() && name.len() <= IFNAME_MAX && !name.contains(['\0', '/'])
}

#[doc(hidden)]
pub fn validate(table: &Table) -> Result<()> {
    validate_name("table", &table.name)?;
    for (i, chain) in table.chains.iter().enumerate() {
        validate_name("chain", &chain.name)?;
        if table.chains[..i].iter().any(|c| c.name == chain.name) {
            return Err(Error::Invalid(format!(
                "table '{}' has two chains named '{}': chain names must be unique in a table; rename one",
                table.name, chain.name
            )));
        }
        for (n, rule) in chain.rules.iter().enumerate() {
            validate_rule(chain, n + 1, rule)?;
        }
    }
    Ok(())
}

fn validate_rule(chain: &Chain, n: usize, rule: &Rule) -> Result<()> {
    let at = format!("chain '{}' rule {n}", chain.name);
    match (rule.verdict, chain.kind) {
        (Verdict::Redirect { .. }, ChainKind::Filter) => {
            return Err(Error::Invalid(format!(
                "{at}: a redirect needs a nat chain and '{}' is a filter chain (the kernel refuses redirect outside nat chains); put the rule in a chain of kind nat on the output or prerouting hook",
                chain.name
            )))
        }
        (Verdict::StripTcpOption { .. }, ChainKind::Nat) => {
            return Err(Error::Invalid(format!(
                "{at}: stripping a TCP option works only in filter chains and '{}' is a nat chain (nat chains see only the first packet of a connection); put the rule in a chain of kind filter",
                chain.name
            )))
        }
        (Verdict::RejectPortUnreachable, ChainKind::Nat) => {
            return Err(Error::Invalid(format!(
                "{at}: reject works only in filter chains and '{}' is a nat chain (nat chains see only the first packet of a connection); put the rule in a chain of kind filter",
                chain.name
            )))
        }
        (Verdict::Redirect { port: 0 }, _) => {
            return Err(Error::Invalid(format!(
                "{at}: cannot redirect to port 0; give the local port the redirected connections should reach"
            )))
        }
        _ => {}
    }
    let mut protocol: Option<u8> = None;
    for m in &rule.matches {
        match m {
            Match::Protocol { number } => protocol = Some(*number),
            Match::DestinationPort { .. } => match protocol {
                None => {
                    return Err(Error::Invalid(format!(
                        "{at}: a destination port match needs a protocol match (TCP 6, UDP 17, ...) before it in the same rule, since a port means nothing without its protocol; add Match::Protocol before the port"
                    )))
                }
                Some(p) if !PORT_PROTOCOLS.contains(&p) => {
                    return Err(Error::Invalid(format!(
                        "{at}: protocol {p} has no ports (only TCP 6, UDP 17, DCCP 33, SCTP 132 and UDP-Lite 136 do); match one of those before the port or drop the port match"
                    )))
                }
                Some(_) => {}
            },
            Match::TcpFlags { mask, value } if value & !mask != 0 => {
                return Err(Error::Invalid(format!(
                    "{at}: TCP flags value {value:#04x} has bits outside mask {mask:#04x}, so 'tcp flags & mask == value' could never match; clear those bits or widen the mask"
                )))
            }
            Match::TcpFlags { .. } if protocol != Some(6) => {
                return Err(Error::Invalid(format!(
                    "{at}: a TCP flags match needs Match::Protocol {{ number: 6 }} before it in the same rule"
                )))
            }
            Match::Mark { mask, value } if value & !mask != 0 => {
                return Err(Error::Invalid(format!(
                    "{at}: mark value {value:#010x} has bits outside mask {mask:#010x}, so 'meta mark & mask == value' could never match; clear those bits or widen the mask"
                )))
            }
            Match::SocketCgroup { level, .. } if *level > 255 => {
                return Err(Error::Invalid(format!(
                    "{at}: cgroup level {level} is deeper than the kernel's limit of 255; use the level of the cgroup below the root (1 for /a, 2 for /a/b)"
                )))
            }
            Match::InputInterface { name } if !valid_ifname(name) => {
                return Err(Error::Invalid(format!(
                    "{at}: {name:?} is not a valid interface name: Linux interface names are 1 to {IFNAME_MAX} bytes without '/' or NUL (IFNAMSIZ); use the name 'ip link' shows"
                )));
            }
            _ => {}
        }
    }
    if matches!(rule.verdict, Verdict::StripTcpOption { .. })
        && !rule.matches.contains(&Match::Protocol { number: 6 })
    {
        return Err(Error::Invalid(format!(
            "{at}: stripping a TCP option needs Match::Protocol {{ number: 6 }} in the rule (only TCP packets have TCP options)"
        )));
    }
    if rule.comment.len() > COMMENT_MAX {
        return Err(Error::Invalid(format!(
            "{at}: the comment is {} bytes long and the kernel keeps at most {COMMENT_MAX}; shorten it",
            rule.comment.len()
        )));
    }
    if rule.comment.contains('\0') {
        return Err(Error::Invalid(format!(
            "{at}: the comment contains a NUL byte, which ends a comment early in nft and Braid; remove it"
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Encoding, as `nft` does it (compare with `nft --debug=netlink`).

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NF_ACCEPT: u32 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFTA_SOCKET_KEY: u16 = 1;
const NFTA_SOCKET_DREG: u16 = 2;
const NFTA_SOCKET_LEVEL: u16 = 3;
const NFT_SOCKET_CGROUPV2: u32 = 3;
const NFTA_REDIR_REG_PROTO_MIN: u16 = 1;
const NFTA_REDIR_REG_PROTO_MAX: u16 = 2;
const NFTA_REDIR_FLAGS: u16 = 3;
const NF_NAT_RANGE_PROTO_SPECIFIED: u32 = 2;
const NFTA_REJECT_TYPE: u16 = 1;
const NFTA_REJECT_ICMP_CODE: u16 = 2;
const NFT_REJECT_ICMPX_UNREACH: u32 = 2;
const NFT_REJECT_ICMPX_PORT_UNREACH: u8 = 1;
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;
const NFTA_EXTHDR_TYPE: u16 = 2;
const NFTA_EXTHDR_OP: u16 = 6;
const NFT_EXTHDR_OP_TCPOPT: u32 = 1;
const IFNAMSIZ: usize = 16;
const NFT_REG_1: u32 = 1;

fn message(family: NetfilterProtoFamily, m: NfTablesMessage) -> NetfilterMessage {
    NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), m)
}

fn new_table(name: &str) -> NfTablesMessage {
    NfTablesMessage::NewTable(TableMessage {
        attributes: vec![TableAttribute::Name(name.to_string())],
    })
}

fn del_table(name: &str) -> NfTablesMessage {
    NfTablesMessage::DeleteTable(TableMessage {
        attributes: vec![TableAttribute::Name(name.to_string())],
    })
}

fn new_chain(table: &str, chain: &Chain) -> NfTablesMessage {
    let hook = match chain.hook {
        Hook::Output => InetHookNumber::LocalOut,
        Hook::Prerouting => InetHookNumber::PreRouting,
    };
    NfTablesMessage::NewChain(ChainMessage {
        attributes: vec![
            ChainAttribute::Table(table.to_string()),
            ChainAttribute::Name(chain.name.clone()),
            ChainAttribute::Hook(vec![
                NlHook::Number(HookNumber::Inet(hook)),
                NlHook::Priority(chain.priority as u32),
            ]),
            ChainAttribute::Policy(NF_ACCEPT),
            ChainAttribute::Type(
                match chain.kind {
                    ChainKind::Nat => "nat",
                    ChainKind::Filter => "filter",
                }
                .to_string(),
            ),
        ],
    })
}

#[doc(hidden)]
pub fn new_rule(table: &str, chain: &str, rule: &Rule) -> NfTablesMessage {
    let mut attributes = vec![
        RuleAttribute::Table(table.to_string()),
        RuleAttribute::Chain(chain.to_string()),
        RuleAttribute::Expressions(
            rule_expressions(rule)
                .into_iter()
                .map(ListAttribute::from)
                .collect(),
        ),
    ];
    if !rule.comment.is_empty() {
        attributes.push(RuleAttribute::UserData(comment_userdata(&rule.comment)));
    }
    NfTablesMessage::NewRule(RuleMessage { attributes })
}

/// The comment as `nft` stores it: one TLV (type, length with the NUL,
/// string, NUL).
#[doc(hidden)]
pub fn comment_userdata(comment: &str) -> Vec<u8> {
    let mut v = Vec::with_capacity(comment.len() + 3);
    v.push(NFTNL_UDATA_RULE_COMMENT);
    v.push((comment.len() + 1) as u8);
    v.extend_from_slice(comment.as_bytes());
    v.push(0);
    v
}

/// The comment TLV from a rule's user data, if any.
#[doc(hidden)]
pub fn parse_comment(userdata: &[u8]) -> Option<String> {
    let mut i = 0;
    while i + 2 <= userdata.len() {
        let kind = userdata[i];
        let len = userdata[i + 1] as usize;
        let value = userdata.get(i + 2..i + 2 + len)?;
        if kind == NFTNL_UDATA_RULE_COMMENT {
            let end = value.iter().position(|b| *b == 0).unwrap_or(value.len());
            return Some(String::from_utf8_lossy(&value[..end]).into_owned());
        }
        i += 2 + len;
    }
    None
}

fn load_meta(key: MetaKey) -> Expressions {
    Expressions::Meta(vec![
        Meta::Key(key),
        Meta::DestinationRegister(Register::Reg1),
    ])
}

fn cmp_eq(data: Vec<u8>) -> Expressions {
    Expressions::Cmp(vec![
        Cmp::SourceRegister(Register::Reg1),
        Cmp::Op(Operator::Equal),
        Cmp::Data(DataAttribute::Value(data)),
    ])
}

fn load_payload(base: u32, offset: u32, len: u32) -> Expressions {
    Expressions::Payload(vec![
        Payload::DestinationRegister(Register::Reg1),
        Payload::Base(base),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
}

fn and_mask(mask: Vec<u8>) -> Expressions {
    let len = mask.len();
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(Register::Reg1),
        Bitwise::DestinationRegister(Register::Reg1),
        Bitwise::Length(len as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(vec![0; len])),
    ])
}

fn other(name: &str, attrs: Vec<(u16, Vec<u8>)>) -> Expressions {
    Expressions::Other {
        expression_type: name.to_string(),
        attributes: attrs
            .into_iter()
            .map(|(k, v)| DefaultNla::new(k, v))
            .collect(),
    }
}

fn be32(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}

fn family_guard(out: &mut Vec<Expressions>, nfproto: u8) {
    out.push(load_meta(MetaKey::Nfproto));
    out.push(cmp_eq(vec![nfproto]));
}

/// The first `bits` bits set, over `len` bytes.
fn prefix_mask(bits: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            let start = i * 8;
            let b = bits as usize;
            if b >= start + 8 {
                0xff
            } else if b <= start {
                0
            } else {
                0xffu8 << (8 - (b - start))
            }
        })
        .collect()
}

fn destination(out: &mut Vec<Expressions>, prefix: &IpNet) {
    let (nfproto, offset, addr): (u8, u32, Vec<u8>) = match prefix.trunc().addr() {
        IpAddr::V4(a) => (NFPROTO_IPV4, 16, a.octets().to_vec()),
        IpAddr::V6(a) => (NFPROTO_IPV6, 24, a.octets().to_vec()),
    };
    family_guard(out, nfproto);
    let bits = prefix.prefix_len();
    if bits == 0 {
        return;
    }
    if bits % 8 == 0 {
        let n = bits as usize / 8;
        out.push(load_payload(NFT_PAYLOAD_NETWORK_HEADER, offset, n as u32));
        out.push(cmp_eq(addr[..n].to_vec()));
    } else {
        out.push(load_payload(
            NFT_PAYLOAD_NETWORK_HEADER,
            offset,
            addr.len() as u32,
        ));
        out.push(and_mask(prefix_mask(bits, addr.len())));
        out.push(cmp_eq(addr));
    }
}

/// The expressions of one rule (validated), in order.
fn rule_expressions(rule: &Rule) -> Vec<Expressions> {
    let mut out = Vec::new();
    for m in &rule.matches {
        match m {
            Match::Protocol { number } => {
                out.push(load_meta(MetaKey::L4Proto));
                out.push(cmp_eq(vec![*number]));
            }
            Match::Family { family } => family_guard(
                &mut out,
                match family {
                    Family::Ipv4 => NFPROTO_IPV4,
                    Family::Ipv6 => NFPROTO_IPV6,
                },
            ),
            Match::Destination { prefix } => destination(&mut out, prefix),
            Match::DestinationPort { port } => {
                out.push(load_payload(NFT_PAYLOAD_TRANSPORT_HEADER, 2, 2));
                out.push(cmp_eq(port.to_be_bytes().to_vec()));
            }
            Match::Mark { mask, value } => {
                out.push(load_meta(MetaKey::Mark));
                if *mask != u32::MAX {
                    out.push(and_mask(mask.to_ne_bytes().to_vec()));
                }
                out.push(cmp_eq(value.to_ne_bytes().to_vec()));
            }
            Match::SocketUid { uid } => {
                out.push(load_meta(MetaKey::SocketUserId));
                out.push(cmp_eq(uid.to_ne_bytes().to_vec()));
            }
            Match::SocketCgroup { level, id } => {
                out.push(other(
                    "socket",
                    vec![
                        (NFTA_SOCKET_KEY, be32(NFT_SOCKET_CGROUPV2)),
                        (NFTA_SOCKET_DREG, be32(NFT_REG_1)),
                        (NFTA_SOCKET_LEVEL, be32(*level)),
                    ],
                ));
                out.push(cmp_eq(id.to_ne_bytes().to_vec()));
            }
            Match::TcpFlags { mask, value } => {
                out.push(load_payload(NFT_PAYLOAD_TRANSPORT_HEADER, 13, 1));
                if *mask != u8::MAX {
                    out.push(and_mask(vec![*mask]));
                }
                out.push(cmp_eq(vec![*value]));
            }
            Match::InputInterface { name } => {
                let mut bytes = name.as_bytes().to_vec();
                bytes.resize(IFNAMSIZ, 0);
                out.push(load_meta(MetaKey::Iifname));
                out.push(cmp_eq(bytes));
            }
        }
    }
    let verdict = |code: NlVerdict| {
        Expressions::Immediate(vec![
            Immediate::DestinationRegister(Register::Verdict),
            Immediate::Data(DataAttribute::Verdict(vec![VerdictAttribute::Code(code)])),
        ])
    };
    match rule.verdict {
        Verdict::Return => out.push(verdict(NlVerdict::Return)),
        Verdict::Accept => out.push(verdict(NlVerdict::Other(NF_ACCEPT))),
        Verdict::Redirect { port } => {
            out.push(Expressions::Immediate(vec![
                Immediate::DestinationRegister(Register::Reg1),
                Immediate::Data(DataAttribute::Value(port.to_be_bytes().to_vec())),
            ]));
            out.push(other(
                "redir",
                vec![
                    (NFTA_REDIR_REG_PROTO_MIN, be32(NFT_REG_1)),
                    (NFTA_REDIR_REG_PROTO_MAX, be32(NFT_REG_1)),
                    (NFTA_REDIR_FLAGS, be32(NF_NAT_RANGE_PROTO_SPECIFIED)),
                ],
            ));
        }
        Verdict::StripTcpOption { kind } => out.push(other(
            "exthdr",
            vec![
                (NFTA_EXTHDR_TYPE, vec![kind]),
                (NFTA_EXTHDR_OP, be32(NFT_EXTHDR_OP_TCPOPT)),
            ],
        )),
        Verdict::RejectPortUnreachable => out.push(other(
            "reject",
            vec![
                (NFTA_REJECT_TYPE, be32(NFT_REJECT_ICMPX_UNREACH)),
                (NFTA_REJECT_ICMP_CODE, vec![NFT_REJECT_ICMPX_PORT_UNREACH]),
            ],
        )),
    }
    out
}

#[doc(hidden)]
pub fn installed_rule(table: &str, attributes: &[RuleAttribute]) -> Option<InstalledRule> {
    let mut rule = InstalledRule {
        chain: String::new(),
        handle: 0,
        expressions: Vec::new(),
        comment: None,
    };
    for a in attributes {
        match a {
            RuleAttribute::Table(t) if t != table => return None,
            RuleAttribute::Chain(c) => rule.chain = c.clone(),
            RuleAttribute::Handle(h) => rule.handle = *h,
            RuleAttribute::Expressions(list) => {
                for item in list {
                    if let ListAttribute::Element(parts) = item {
                        let name = parts.iter().find_map(|p| match p {
                            ExpressionAttribute::Name(n) => Some(n.clone()),
                            _ => None,
                        });
                        rule.expressions
                            .push(name.unwrap_or_else(|| "?".to_string()));
                    }
                }
            }
            RuleAttribute::UserData(u) => rule.comment = parse_comment(u),
            _ => {}
        }
    }
    Some(rule)
}

// ---------------------------------------------------------------------------
// The batch transport: BATCH_BEGIN, the objects (each with NLM_F_ACK),
// BATCH_END, in one send; then one ack or error per object.

const NLMSG_ERROR: u16 = 2;
const NLMSG_HDR_LEN: usize = 16;
const NLM_F_ACK_TLVS: u16 = 0x200;
/// How long to wait for the kernel's answers before giving up.
const REPLY_TIMEOUT_SECS: u64 = 10;

fn frame(out: &mut Vec<u8>, msg: NetfilterMessage, flags: u16, seq: u32) {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let start = out.len();
    out.resize(start + m.buffer_len(), 0);
    m.serialize(&mut out[start..]);
}

fn first_seq() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    nanos ^ NEXT.fetch_add(1 << 20, Ordering::Relaxed)
}

/// Room for `bytes` in a socket buffer: the forcing option (root, above
/// the sysctl maximum) and the plain one otherwise. Best effort.
fn grow_buffer(fd: &impl AsFd, force: libc::c_int, plain: libc::c_int, bytes: usize) {
    let v = bytes.min(i32::MAX as usize / 2) as libc::c_int;
    if setsockopt_int(fd, libc::SOL_SOCKET, force, v).is_err() {
        let _ = setsockopt_int(fd, libc::SOL_SOCKET, plain, v);
    }
}

/// Send `objects` as one nf_tables transaction and wait for every answer.
/// The first object the kernel refused gives the error (the kernel then
/// aborts the whole batch).
fn run_batch(objects: &[NfTablesMessage], op: Op) -> Result<()> {
    let sock = NlSocket::open(netlink_sys::protocols::NETLINK_NETFILTER, op)?.into_socket();
    let n = objects.len() as u32;
    let base = first_seq();
    let tx = batch(objects, base);

    // The kernel takes a batch only whole, and queues one answer per object
    // (each costs about a kilobyte of receive buffer).
    grow_buffer(
        &sock,
        libc::SO_SNDBUFFORCE,
        libc::SO_SNDBUF,
        tx.len() * 2 + 4096,
    );
    grow_buffer(
        &sock,
        libc::SO_RCVBUFFORCE,
        libc::SO_RCVBUF,
        (n as usize + 2) * 2048,
    );
    socket2::SockRef::from(&sock)
        .set_read_timeout(Some(std::time::Duration::from_secs(REPLY_TIMEOUT_SECS)))
        .map_err(|e| Error::io(op, e))?;
    let sent = sock.send(&tx, 0).map_err(|e| Error::io(op, e))?;
    if sent != tx.len() {
        return Err(Error::io(
            op,
            io::Error::new(
                io::ErrorKind::WriteZero,
                "nf_tables batch sent only in part",
            ),
        ));
    }

    collect_answers(&sock, op, base, n)
}

/// The transaction's bytes: BATCH_BEGIN, one message per object (each
/// asking for an acknowledgement), BATCH_END; sequence numbers from `base`.
fn batch(objects: &[NfTablesMessage], base: u32) -> Vec<u8> {
    let n = objects.len() as u32;
    let mut tx = Vec::new();
    let control = |c: ControlMessage| {
        NetfilterMessage::new(
            NetfilterHeader::new(NetfilterProtoFamily::Unspec, 0, NFNL_SUBSYS_NFTABLES),
            c,
        )
    };
    frame(
        &mut tx,
        control(ControlMessage::BatchBegin),
        NLM_F_REQUEST,
        base,
    );
    for (i, o) in objects.iter().enumerate() {
        let mut flags = NLM_F_REQUEST | NLM_F_ACK;
        match o {
            NfTablesMessage::NewTable(_) | NfTablesMessage::NewChain(_) => flags |= NLM_F_CREATE,
            NfTablesMessage::NewRule(_) => flags |= NLM_F_CREATE | NLM_F_APPEND,
            _ => {}
        }
        let seq = base.wrapping_add(1 + i as u32);
        frame(
            &mut tx,
            message(NetfilterProtoFamily::Inet, o.clone()),
            flags,
            seq,
        );
    }
    let end_seq = base.wrapping_add(n + 1);
    frame(
        &mut tx,
        control(ControlMessage::BatchEnd),
        NLM_F_REQUEST,
        end_seq,
    );
    tx
}

/// Reads the kernel's answers to a batch of `n` objects sent from sequence
/// number `base`, until each object has one or the batch failed.
fn collect_answers(sock: &netlink_sys::Socket, op: Op, base: u32, n: u32) -> Result<()> {
    let mut answered = vec![false; n as usize];
    let mut remaining = n as usize;
    // (object index or None for the batch framing, errno, extack)
    let mut failure: Option<(Option<u32>, i32, Option<String>)> = None;
    let mut rx: Vec<u8> = Vec::with_capacity(1 << 16);
    while remaining > 0 {
        rx.clear();
        // Every answer is queued before send() returns; once one error is
        // in, read what is left without waiting.
        let flags = if failure.is_some() {
            libc::MSG_DONTWAIT
        } else {
            0
        };
        match sock.recv(&mut rx, flags) {
            Ok(_) => {}
            Err(e) if failure.is_some() && e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(Error::io(
                    op,
                    io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "the kernel answered {} of {n} nf_tables messages within {REPLY_TIMEOUT_SECS}s",
                            n as usize - remaining
                        ),
                    ),
                ))
            }
            Err(e) => return Err(Error::io(op, e)),
        }
        for bytes in messages(&rx) {
            let bytes = bytes.map_err(|e| Error::decode(op, e))?;
            let len = bytes.len();
            let kind = u16::from_ne_bytes([bytes[4], bytes[5]]);
            let reply_flags = u16::from_ne_bytes([bytes[6], bytes[7]]);
            let seq = u32::from_ne_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
            let rel = seq.wrapping_sub(base);
            if rel > n + 1 || kind != NLMSG_ERROR {
                continue; // not ours, or not an answer
            }
            let payload = &bytes[NLMSG_HDR_LEN..len];
            let Some(code) = payload.get(..4) else {
                return Err(Error::decode(op, "short netlink error message"));
            };
            let code = i32::from_ne_bytes([code[0], code[1], code[2], code[3]]);
            let index = (1..=n).contains(&rel).then(|| rel - 1);
            if code != 0 {
                let extack = error_text(&payload[4..], reply_flags);
                let earlier = match (&failure, index) {
                    (None, _) => true,
                    (Some((Some(prev), ..)), Some(i)) => i < *prev,
                    _ => false,
                };
                if earlier {
                    failure = Some((index, code.saturating_neg(), extack));
                }
            }
            match index {
                Some(i) if !answered[i as usize] => {
                    answered[i as usize] = true;
                    remaining -= 1;
                }
                Some(_) => {} // a duplicate answer
                // An error on BATCH_BEGIN/END: the kernel took nothing and
                // answers nothing more. (An ack of them, which newer
                // kernels send only when asked, changes nothing.)
                None if code != 0 => remaining = 0,
                None => {}
            }
        }
    }
    match failure {
        None => Ok(()),
        Some((_, errno, extack)) => Err(Error::Kernel { op, errno, extack }),
    }
}

/// The extended-ack message after the echoed request in an error answer
/// (capped: the socket asks for capped acks, see `NlSocket::open`).
#[doc(hidden)]
pub fn error_text(after_code: &[u8], reply_flags: u16) -> Option<String> {
    if reply_flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    crate::netlink::extack_message(after_code).filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(e: &[Expressions]) -> Vec<String> {
        e.iter()
            .map(|x| match ListAttribute::from(x.clone()) {
                ListAttribute::Element(parts) => match &parts[0] {
                    ExpressionAttribute::Name(n) => n.clone(),
                    _ => "?".into(),
                },
                _ => "?".into(),
            })
            .collect()
    }

    fn rule(matches: Vec<Match>, verdict: Verdict) -> Rule {
        Rule {
            matches,
            verdict,
            comment: String::new(),
        }
    }

    fn cmp_data(e: &Expressions) -> Vec<u8> {
        match e {
            Expressions::Cmp(a) => a
                .iter()
                .find_map(|c| match c {
                    Cmp::Data(DataAttribute::Value(v)) => Some(v.clone()),
                    _ => None,
                })
                .unwrap(),
            other => panic!("not a cmp: {other:?}"),
        }
    }

    #[test]
    fn prefixes_are_encoded_as_nft_does() {
        // nft: payload load 3b @ network header + 16; cmp eq 0x00004d0a
        let e = rule_expressions(&rule(
            vec![Match::Destination {
                prefix: "10.77.0.0/24".parse().unwrap(),
            }],
            Verdict::Return,
        ));
        assert_eq!(names(&e), ["meta", "cmp", "payload", "cmp", "immediate"]);
        assert_eq!(cmp_data(&e[1]), [2]);
        assert_eq!(cmp_data(&e[3]), [10, 77, 0]);
        // nft: payload load 4b; bitwise & 0x00feffff; cmp eq 0x0002010a
        let e = rule_expressions(&rule(
            vec![Match::Destination {
                prefix: "10.1.3.7/23".parse().unwrap(),
            }],
            Verdict::Return,
        ));
        assert_eq!(
            names(&e),
            ["meta", "cmp", "payload", "bitwise", "cmp", "immediate"]
        );
        match &e[3] {
            Expressions::Bitwise(b) => {
                assert!(b.contains(&Bitwise::Mask(DataAttribute::Value(vec![
                    0xff, 0xff, 0xfe, 0
                ]))))
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(cmp_data(&e[4]), [10, 1, 2, 0]);
        // IPv6 /64: 8 bytes at offset 24, family 10.
        let e = rule_expressions(&rule(
            vec![Match::Destination {
                prefix: "fd77::/64".parse().unwrap(),
            }],
            Verdict::Accept,
        ));
        assert_eq!(cmp_data(&e[1]), [10]);
        assert_eq!(cmp_data(&e[3]), [0xfd, 0x77, 0, 0, 0, 0, 0, 0]);
        // /0 is the family guard alone.
        let e = rule_expressions(&rule(
            vec![Match::Destination {
                prefix: "::/0".parse().unwrap(),
            }],
            Verdict::Accept,
        ));
        assert_eq!(names(&e), ["meta", "cmp", "immediate"]);
    }

    #[test]
    fn masks() {
        assert_eq!(prefix_mask(23, 4), [0xff, 0xff, 0xfe, 0]);
        assert_eq!(prefix_mask(1, 4), [0x80, 0, 0, 0]);
        assert_eq!(prefix_mask(127, 16)[15], 0xfe);
        assert_eq!(prefix_mask(0, 4), [0, 0, 0, 0]);
    }

    #[test]
    fn strip_rule_is_encoded_as_nft_does() {
        // nft --debug=netlink: tcp flags & syn == 0 reset tcp option mptcp
        let r = rule(
            vec![
                Match::Protocol { number: 6 },
                Match::TcpFlags { mask: 2, value: 0 },
            ],
            Verdict::StripTcpOption { kind: 30 },
        );
        let e = rule_expressions(&r);
        assert_eq!(e.len(), 6, "{e:?}");
        match &e[5] {
            Expressions::Other {
                expression_type,
                attributes,
            } => {
                assert_eq!(expression_type, "exthdr");
                assert_eq!(attributes.len(), 2);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn comment_round_trip_and_garbage() {
        let u = comment_userdata("hello");
        assert_eq!(u, b"\x00\x06hello\x00");
        assert_eq!(parse_comment(&u).as_deref(), Some("hello"));
        // Another TLV first, then the comment.
        let mut v = vec![1, 2, 9, 9];
        v.extend_from_slice(&u);
        assert_eq!(parse_comment(&v).as_deref(), Some("hello"));
        assert_eq!(parse_comment(&[0, 200, b'x']), None);
        assert_eq!(parse_comment(&[0]), None);
        assert_eq!(parse_comment(&[]), None);
    }

    #[test]
    fn validation_refuses_with_reasons() {
        let chain = |kind, rules| Chain {
            name: "c".into(),
            hook: Hook::Output,
            kind,
            priority: 0,
            rules,
        };
        let table = |chains| Table {
            name: "t".into(),
            chains,
        };
        let bad = [
            table(vec![chain(
                ChainKind::Filter,
                vec![rule(vec![], Verdict::Redirect { port: 1 })],
            )]),
            table(vec![chain(
                ChainKind::Nat,
                vec![rule(vec![], Verdict::RejectPortUnreachable)],
            )]),
            table(vec![chain(
                ChainKind::Nat,
                vec![rule(
                    vec![Match::DestinationPort { port: 1 }],
                    Verdict::Return,
                )],
            )]),
            table(vec![chain(
                ChainKind::Nat,
                vec![rule(
                    vec![
                        Match::Protocol { number: 1 },
                        Match::DestinationPort { port: 1 },
                    ],
                    Verdict::Return,
                )],
            )]),
            table(vec![chain(
                ChainKind::Nat,
                vec![rule(
                    vec![Match::InputInterface {
                        name: "a-very-long-name".into(),
                    }],
                    Verdict::Return,
                )],
            )]),
            table(vec![chain(
                ChainKind::Nat,
                vec![rule(
                    vec![Match::Protocol { number: 6 }],
                    Verdict::StripTcpOption { kind: 30 },
                )],
            )]),
            table(vec![chain(
                ChainKind::Filter,
                vec![rule(vec![], Verdict::StripTcpOption { kind: 30 })],
            )]),
            table(vec![chain(
                ChainKind::Filter,
                vec![rule(
                    vec![Match::TcpFlags { mask: 2, value: 0 }],
                    Verdict::Return,
                )],
            )]),
            Table {
                name: String::new(),
                chains: vec![],
            },
            Table {
                name: "x".repeat(256),
                chains: vec![],
            },
        ];
        for t in bad {
            match validate(&t) {
                Err(Error::Invalid(msg)) => assert!(msg.len() > 40, "{msg}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
        assert!(validate(&Table {
            name: "x".repeat(255),
            chains: vec![chain(
                ChainKind::Nat,
                vec![rule(
                    vec![
                        Match::Protocol { number: 6 },
                        Match::DestinationPort { port: 1 },
                        Match::InputInterface {
                            name: "fifteen-bytes-x".into()
                        },
                    ],
                    Verdict::Redirect { port: 9 }
                )]
            )],
        })
        .is_ok());
    }

    #[test]
    fn error_text_is_found_and_garbage_is_ignored() {
        use netlink_packet_core::NLM_F_CAPPED;
        const NLMSGERR_ATTR_MSG: u16 = 1;
        let mut payload = vec![0u8; NLMSG_HDR_LEN];
        crate::netlink::push_attr(&mut payload, NLMSGERR_ATTR_MSG, b"bad hook\0");
        assert_eq!(
            error_text(&payload, NLM_F_CAPPED | NLM_F_ACK_TLVS).as_deref(),
            Some("bad hook")
        );
        assert_eq!(error_text(&payload, NLM_F_CAPPED), None);
        assert_eq!(error_text(&payload[..3], NLM_F_ACK_TLVS), None);
        assert_eq!(error_text(&[0xff; 40], NLM_F_ACK_TLVS), None);
    }
}
