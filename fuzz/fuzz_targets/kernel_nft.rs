//! nf_tables answers: a rule dump as `nft::list` receives it
//! (`decode_replies` into `NetfilterMessage`s, then `nft::installed_rule`
//! for each NEWRULE, user data comment included), the comment TLVs alone
//! (`nft::parse_comment`), and the extended-ack text of a batch error
//! answer (`nft::error_text`).
//!
//! Input: selector byte, then a sequence number and a datagram, or raw
//! user data, or flags (2 bytes) and the error payload after its code.
//! Asserts: no panic; rules of another table are never returned; a parsed
//! comment has no NUL; parse_comment(comment_userdata(c)) == c.
#![no_main]

use braid_fuzz::{seq_and_rest, tolerate_upstream_panics};
use braid_kernel::nft::{comment_userdata, error_text, installed_rule, parse_comment};
use braid_kernel::{decode_replies, Op};
use libfuzzer_sys::fuzz_target;
use netlink_packet_netfilter::nftables::{NfTablesMessage, RuleAttribute};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner};

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            let Some((seq, datagram)) = seq_and_rest(rest) else {
                return;
            };
            let mut replies: Vec<NetfilterMessage> = Vec::new();
            tolerate_upstream_panics(|| decode_replies(datagram, seq, Op::NftList, &mut replies));
            for reply in replies {
                let NetfilterMessageInner::NfTables(NfTablesMessage::NewRule(rule)) = reply.inner
                else {
                    continue;
                };
                let table = "braid";
                if let Some(r) = installed_rule(table, &rule.attributes) {
                    assert!(!rule
                        .attributes
                        .iter()
                        .any(|a| matches!(a, RuleAttribute::Table(t) if t != table)));
                    if let Some(c) = &r.comment {
                        assert!(!c.contains('\0'));
                    }
                }
            }
        }
        1 => {
            if let Some(c) = parse_comment(rest) {
                assert!(!c.contains('\0'));
            }
            // The encoder's output reads back (comments are validated to
            // at most 253 bytes without NUL before they are encoded).
            let text = String::from_utf8_lossy(rest).replace('\0', "");
            let mut end = text.len().min(253);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            let c = &text[..end];
            assert_eq!(parse_comment(&comment_userdata(c)).as_deref(), Some(c));
        }
        _ => {
            let Some((flags, payload)) = rest.split_first_chunk::<2>() else {
                return;
            };
            if let Some(t) = error_text(payload, u16::from_ne_bytes(*flags)) {
                assert!(!t.is_empty() && !t.contains('\0'));
            }
        }
    }
});
