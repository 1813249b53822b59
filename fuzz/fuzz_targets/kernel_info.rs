//! `struct tcp_info` and `struct mptcp_info` as the kernel hands them out
//! (getsockopt or sock_diag; any length, since the structs grow), the
//! MPTCP_FULL_INFO answer (`socket::decode_full_info`: header, mptcp_info,
//! and the subflow and tcp_info arrays with kernel-chosen sizes and count),
//! and socket addresses (`socket::parse_sockaddr`).
//!
//! Asserts: no panic; parse is None exactly below the minimum size; every
//! field equals the bytes at its offset, and optional fields are present
//! exactly when the buffer reaches them; the subflow count is capped.
#![no_main]

use braid_kernel::info::{MptcpInfo, TcpInfo, MPTCP_INFO_SIZE, TCP_INFO_SIZE};
use braid_kernel::socket::{
    decode_full_info, parse_sockaddr, FULL_INFO_HEADER, MAX_SUBFLOWS_READ, SUBFLOW_INFO_SIZE,
};
use libfuzzer_sys::fuzz_target;

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().unwrap()))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().unwrap()))
}

fn check_tcp(b: &[u8]) {
    let t = TcpInfo::parse(b);
    assert_eq!(t.is_some(), b.len() >= 104);
    let Some(t) = t else { return };
    assert_eq!(t.state, b[0]);
    assert_eq!(t.backoff, b[4]);
    assert_eq!(Some(t.rto_us), u32_at(b, 8));
    assert_eq!(Some(t.rtt_us), u32_at(b, 68));
    assert_eq!(Some(t.total_retrans), u32_at(b, 100));
    assert_eq!(t.pacing_rate, u64_at(b, 104));
    assert_eq!(t.min_rtt_us, u32_at(b, 148));
    assert_eq!(t.bytes_sent, u64_at(b, 200));
    assert_eq!(t.bytes_retrans, u64_at(b, 208));
    let _ = t.state_name();
}

fn check_mptcp(b: &[u8]) {
    let m = MptcpInfo::parse(b);
    assert_eq!(m.is_some(), b.len() >= 40);
    let Some(m) = m else { return };
    assert_eq!(Some(m.flags), u32_at(b, 8));
    assert_eq!(Some(m.token), u32_at(b, 12));
    assert_eq!(Some(m.rcv_nxt), u64_at(b, 32));
    assert_eq!(m.local_addr_used, b.get(40).copied());
    assert_eq!(m.retransmits, u32_at(b, 44));
    assert_eq!(m.subflows_total, b.get(80).copied());
    assert_eq!(m.last_ack_recv_ms, u32_at(b, 92));
    let _ = m.fell_back();
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => check_tcp(rest),
        1 => check_mptcp(rest),
        2 => {
            if let Some(a) = parse_sockaddr(rest) {
                let family = u16::from_ne_bytes([rest[0], rest[1]]) as i32;
                assert_eq!(a.is_ipv4(), family == libc::AF_INET);
                assert_eq!(a.port(), u16::from_be_bytes([rest[2], rest[3]]));
            }
        }
        _ => {
            // The buffers as subflow_info() lays them out: fixed sizes,
            // filled by the kernel; the input gives what the kernel wrote.
            let mut full = vec![0u8; FULL_INFO_HEADER + MPTCP_INFO_SIZE];
            let mut sf = vec![0u8; SUBFLOW_INFO_SIZE * MAX_SUBFLOWS_READ];
            let mut tcp = vec![0u8; TCP_INFO_SIZE * MAX_SUBFLOWS_READ];
            let Some((n, rest)) = rest.split_first_chunk::<2>() else {
                return;
            };
            let n = u16::from_ne_bytes(*n) as usize;
            let k = rest.len().min(full.len());
            full[..k].copy_from_slice(&rest[..k]);
            let rest = &rest[k..];
            // Subflow entries and tcp_info entries are sparse: repeat the
            // remaining input over the first entries of each.
            for (i, chunk) in rest.chunks(SUBFLOW_INFO_SIZE).take(4).enumerate() {
                sf[i * SUBFLOW_INFO_SIZE..][..chunk.len()].copy_from_slice(chunk);
                tcp[i * TCP_INFO_SIZE..][..chunk.len().min(TCP_INFO_SIZE)]
                    .copy_from_slice(&chunk[..chunk.len().min(TCP_INFO_SIZE)]);
            }
            if let Ok((info, subflows)) = decode_full_info(&full, n, &sf, &tcp) {
                assert!(n >= FULL_INFO_HEADER + 40);
                assert!(subflows.len() <= MAX_SUBFLOWS_READ);
                let count = u32::from_ne_bytes(full[16..20].try_into().unwrap()) as usize;
                assert_eq!(subflows.len(), count.min(MAX_SUBFLOWS_READ));
                assert_eq!(
                    info.token,
                    u32::from_ne_bytes(full[52..56].try_into().unwrap())
                );
            }
        }
    }
});
