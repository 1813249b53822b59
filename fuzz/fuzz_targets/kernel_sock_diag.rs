//! sock_diag dump answers (inet_diag for TCP and IPPROTO_MPTCP), as
//! `diag::subflows` and `diag::connections` receive them: one datagram
//! decoded by `decode_replies` into `SockDiagMessage`s, each response
//! turned into a subflow (ULP info: the MPTCP subflow attributes, tcp_info)
//! and the connection's `struct mptcp_info` by `diag::decode_response`.
//!
//! Input: sequence number (4 bytes), datagram.
//! Asserts: no panic; a subflow's backup fields agree with its flags and
//! its tcp_info is there exactly when the kernel sent enough bytes.
#![no_main]

use braid_fuzz::{seq_and_rest, tolerate_upstream_panics};
use braid_kernel::diag::{decode_response, SUBFLOW_FLAG_BKUP_LOC, SUBFLOW_FLAG_BKUP_REM};
use braid_kernel::{decode_replies, Op};
use libfuzzer_sys::fuzz_target;
use netlink_packet_sock_diag::SockDiagMessage;

fuzz_target!(|data: &[u8]| {
    let Some((seq, datagram)) = seq_and_rest(data) else {
        return;
    };
    let mut replies: Vec<SockDiagMessage> = Vec::new();
    tolerate_upstream_panics(|| decode_replies(datagram, seq, Op::SockDiag, &mut replies));
    for reply in &replies {
        let SockDiagMessage::InetResponse(resp) = reply else {
            continue;
        };
        let (subflow, info) = decode_response(resp);
        if let Ok(Some(sf)) = subflow {
            assert_eq!(sf.backup_local, sf.flags & SUBFLOW_FLAG_BKUP_LOC != 0);
            assert_eq!(sf.backup_remote, sf.flags & SUBFLOW_FLAG_BKUP_REM != 0);
            assert_eq!(sf.local.port(), resp.header.socket_id.source_port);
        }
        if let Some(i) = info {
            let _ = i.fell_back();
        }
    }
});
