//! Structured: an arbitrary nf_tables rule, validated by `nft::validate` and
//! encoded by `nft::new_rule` as `nft::install` sends it, framed as a
//! NEWRULE message of a dump and decoded back as `nft::list` decodes the
//! kernel's answer (`decode_replies`, `nft::installed_rule`).
//!
//! Asserts: every rule `validate` accepts encodes; the decoded rule has the
//! chain, the comment and exactly the expressions (by name, in order) that
//! the rule's matches and verdict stand for.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use braid_fuzz::{ip, nl_message, SEQ};
use braid_kernel::nft::{
    installed_rule, new_rule, validate, Chain, ChainKind, Family, Hook, Match, Rule, Table, Verdict,
};
use braid_kernel::{decode_replies, Op};
use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::{NetfilterHeader, NetfilterMessage, NetfilterProtoFamily};

fn a_match(u: &mut Unstructured<'_>) -> arbitrary::Result<Match> {
    Ok(match u.int_in_range(0..=8)? {
        0 => Match::Protocol {
            number: *u.choose(&[6, 17, 1, 33, 132, 136, 58])?,
        },
        1 => Match::Family {
            family: if bool::arbitrary(u)? {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
        },
        2 => {
            let addr = ip(u)?;
            let max = if addr.is_ipv4() { 32 } else { 128 };
            let len = u.int_in_range(0..=max)?;
            Match::Destination {
                prefix: IpNet::new(addr, len).unwrap(),
            }
        }
        3 => Match::DestinationPort {
            port: u16::arbitrary(u)?,
        },
        4 => {
            let mask = u32::arbitrary(u)?;
            Match::Mark {
                mask,
                value: u32::arbitrary(u)? & mask,
            }
        }
        5 => Match::SocketUid {
            uid: u32::arbitrary(u)?,
        },
        6 => Match::SocketCgroup {
            level: u.int_in_range(0..=300)?,
            id: u64::arbitrary(u)?,
        },
        7 => Match::TcpFlags {
            mask: u8::arbitrary(u)?,
            value: u8::arbitrary(u)?,
        },
        _ => Match::InputInterface {
            name: String::arbitrary(u)?,
        },
    })
}

/// The expression names a rule stands for, as nft would list them.
fn expected(rule: &Rule) -> Vec<&'static str> {
    let mut out = Vec::new();
    for m in &rule.matches {
        match m {
            Match::Protocol { .. } | Match::Family { .. } => out.extend(["meta", "cmp"]),
            Match::Destination { prefix } => {
                out.extend(["meta", "cmp"]);
                match prefix.prefix_len() {
                    0 => {}
                    n if n % 8 == 0 => out.extend(["payload", "cmp"]),
                    _ => out.extend(["payload", "bitwise", "cmp"]),
                }
            }
            Match::DestinationPort { .. } => out.extend(["payload", "cmp"]),
            Match::Mark { mask, .. } => {
                out.push("meta");
                if *mask != u32::MAX {
                    out.push("bitwise");
                }
                out.push("cmp");
            }
            Match::SocketUid { .. } | Match::InputInterface { .. } => out.extend(["meta", "cmp"]),
            Match::SocketCgroup { .. } => out.extend(["socket", "cmp"]),
            Match::TcpFlags { mask, .. } => {
                out.push("payload");
                if *mask != u8::MAX {
                    out.push("bitwise");
                }
                out.push("cmp");
            }
        }
    }
    match rule.verdict {
        Verdict::Return | Verdict::Accept => out.push("immediate"),
        Verdict::Redirect { .. } => out.extend(["immediate", "redir"]),
        Verdict::RejectPortUnreachable => out.push("reject"),
        Verdict::StripTcpOption { .. } => out.push("exthdr"),
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(n) = u.int_in_range(0..=6) else { return };
    let mut matches = Vec::new();
    for _ in 0..n {
        let Ok(m) = a_match(&mut u) else { return };
        matches.push(m);
    }
    let verdict = match u.int_in_range(0..=4).unwrap_or(0) {
        0 => Verdict::Return,
        1 => Verdict::Accept,
        2 => Verdict::Redirect {
            port: u16::arbitrary(&mut u).unwrap_or(7001),
        },
        3 => Verdict::RejectPortUnreachable,
        _ => Verdict::StripTcpOption {
            kind: u8::arbitrary(&mut u).unwrap_or(30),
        },
    };
    let comment = String::arbitrary(&mut u).unwrap_or_default();
    let chain_name = String::arbitrary(&mut u).unwrap_or_else(|_| "out".into());
    let kind = if bool::arbitrary(&mut u).unwrap_or(true) {
        ChainKind::Nat
    } else {
        ChainKind::Filter
    };
    let rule = Rule {
        matches,
        verdict,
        comment,
    };
    let table = Table {
        name: "braid".into(),
        chains: vec![Chain {
            name: chain_name.clone(),
            hook: Hook::Output,
            kind,
            priority: -100,
            rules: vec![rule.clone()],
        }],
    };
    if validate(&table).is_err() {
        return;
    }
    let msg = NetfilterMessage::new(
        NetfilterHeader::new(NetfilterProtoFamily::Inet, 0, 0),
        new_rule(&table.name, &chain_name, &rule),
    );
    let mut header = NetlinkHeader::default();
    header.sequence_number = SEQ;
    header.flags = 2; // NLM_F_MULTI
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut datagram = vec![0u8; m.buffer_len()];
    m.serialize(&mut datagram);
    datagram.resize((datagram.len() + 3) & !3, 0);
    datagram.extend(nl_message(3, 2, SEQ, &0i32.to_ne_bytes()));
    let mut replies: Vec<NetfilterMessage> = Vec::new();
    let done =
        decode_replies(&datagram, SEQ, Op::NftList, &mut replies).expect("an encoded rule decodes");
    assert!(done);
    assert_eq!(replies.len(), 1);
    let attributes = match &replies[0].inner {
        netlink_packet_netfilter::NetfilterMessageInner::NfTables(
            netlink_packet_netfilter::nftables::NfTablesMessage::NewRule(r),
        ) => r.attributes.clone(),
        other => panic!("not a rule: {other:?}"),
    };
    let back = installed_rule(&table.name, &attributes).expect("the rule of our table");
    assert_eq!(back.chain, chain_name);
    assert_eq!(back.expressions, expected(&rule));
    if rule.comment.is_empty() {
        assert_eq!(back.comment, None);
    } else {
        assert_eq!(back.comment.as_deref(), Some(rule.comment.as_str()));
    }
});
