//! `struct tcp_info` and `struct mptcp_info` decoded from the bytes the
//! kernel hands out (getsockopt or sock_diag). The kernel grows both structs
//! over time and copies only what fits, so every field is read by its offset
//! and is absent when the buffer is too short.

use serde::Serialize;

fn u8_at(b: &[u8], off: usize) -> Option<u8> {
    b.get(off).copied()
}
fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(off..off + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(off..off + 8)?.try_into().ok()?))
}

/// The parts of `struct tcp_info` Braid reports for a subflow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct TcpInfo {
    pub state: u8,
    pub ca_state: u8,
    /// Retransmissions of the segment at the head of the queue (backoff).
    pub retransmits: u8,
    pub backoff: u8,
    pub rto_us: u32,
    pub snd_mss: u32,
    pub unacked: u32,
    pub lost: u32,
    pub retrans: u32,
    pub last_data_sent_ms: u32,
    pub last_data_recv_ms: u32,
    pub last_ack_recv_ms: u32,
    pub pmtu: u32,
    /// Smoothed RTT in microseconds.
    pub rtt_us: u32,
    pub rttvar_us: u32,
    pub snd_cwnd: u32,
    /// The receiver's RTT estimate in microseconds (0 if none yet): how
    /// soon data answers this end's ACKs. A subflow that only receives
    /// has `rtt_us` from its handshake alone.
    pub rcv_rtt_us: u32,
    pub total_retrans: u32,
    pub pacing_rate: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub bytes_received: Option<u64>,
    pub segs_out: Option<u32>,
    pub segs_in: Option<u32>,
    /// Bytes written to the socket and not yet sent (tcpi_notsent_bytes):
    /// on a subflow, data the MPTCP connection handed to this path.
    pub notsent_bytes: Option<u32>,
    pub min_rtt_us: Option<u32>,
    /// Segments with data received, in order or not.
    pub data_segs_in: Option<u32>,
    /// Segments with data sent, retransmissions included (pure ACKs are
    /// not: they are never retransmitted).
    pub data_segs_out: Option<u32>,
    pub delivery_rate: Option<u64>,
    /// The delivery-rate sample was taken while the sender had too little
    /// to send (tcpi_delivery_rate_app_limited): it says less than the
    /// path could carry.
    pub delivery_rate_app_limited: bool,
    pub bytes_sent: Option<u64>,
    pub bytes_retrans: Option<u64>,
    /// Data segments that arrived behind a hole (tcpi_rcv_ooopack, 5.4+):
    /// what the peer's losses on this subflow look like from here.
    pub rcv_ooopack: Option<u32>,
}

/// `tcpi_delivery_rate_app_limited` is the first one-bit field of byte 7,
/// which C compilers place at the low bit on little-endian targets and at
/// the high bit on big-endian ones.
#[cfg(target_endian = "little")]
const APP_LIMITED_BIT: u8 = 0x01;
#[cfg(target_endian = "big")]
const APP_LIMITED_BIT: u8 = 0x80;

/// Size of the oldest `struct tcp_info` that has every mandatory field above.
const TCP_INFO_MIN: usize = 104;

impl TcpInfo {
    pub fn parse(b: &[u8]) -> Option<TcpInfo> {
        if b.len() < TCP_INFO_MIN {
            return None;
        }
        Some(TcpInfo {
            state: u8_at(b, 0)?,
            ca_state: u8_at(b, 1)?,
            retransmits: u8_at(b, 2)?,
            backoff: u8_at(b, 4)?,
            rto_us: u32_at(b, 8)?,
            snd_mss: u32_at(b, 16)?,
            unacked: u32_at(b, 24)?,
            lost: u32_at(b, 32)?,
            retrans: u32_at(b, 36)?,
            last_data_sent_ms: u32_at(b, 44)?,
            last_data_recv_ms: u32_at(b, 52)?,
            last_ack_recv_ms: u32_at(b, 56)?,
            pmtu: u32_at(b, 60)?,
            rtt_us: u32_at(b, 68)?,
            rttvar_us: u32_at(b, 72)?,
            snd_cwnd: u32_at(b, 80)?,
            rcv_rtt_us: u32_at(b, 92)?,
            total_retrans: u32_at(b, 100)?,
            pacing_rate: u64_at(b, 104),
            bytes_acked: u64_at(b, 120),
            bytes_received: u64_at(b, 128),
            segs_out: u32_at(b, 136),
            segs_in: u32_at(b, 140),
            notsent_bytes: u32_at(b, 144),
            min_rtt_us: u32_at(b, 148),
            data_segs_in: u32_at(b, 152),
            data_segs_out: u32_at(b, 156),
            delivery_rate: u64_at(b, 160),
            delivery_rate_app_limited: u8_at(b, 7)? & APP_LIMITED_BIT != 0,
            bytes_sent: u64_at(b, 200),
            bytes_retrans: u64_at(b, 208),
            rcv_ooopack: u32_at(b, 224),
        })
    }

    pub fn state_name(&self) -> &'static str {
        tcp_state_name(self.state)
    }
}

pub fn tcp_state_name(state: u8) -> &'static str {
    match state {
        1 => "established",
        2 => "syn-sent",
        3 => "syn-recv",
        4 => "fin-wait-1",
        5 => "fin-wait-2",
        6 => "time-wait",
        7 => "close",
        8 => "close-wait",
        9 => "last-ack",
        10 => "listen",
        11 => "closing",
        _ => "unknown",
    }
}

pub const MPTCP_INFO_FLAG_FALLBACK: u32 = 1 << 0;
pub const MPTCP_INFO_FLAG_REMOTE_KEY_RECEIVED: u32 = 1 << 1;

/// `struct mptcp_info` (include/uapi/linux/mptcp.h).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct MptcpInfo {
    pub subflows: u8,
    pub add_addr_signal: u8,
    pub add_addr_accepted: u8,
    pub subflows_max: u8,
    pub add_addr_signal_max: u8,
    pub add_addr_accepted_max: u8,
    pub flags: u32,
    pub token: u32,
    pub write_seq: u64,
    pub snd_una: u64,
    pub rcv_nxt: u64,
    pub local_addr_used: Option<u8>,
    pub local_addr_max: Option<u8>,
    pub csum_enabled: Option<bool>,
    pub retransmits: Option<u32>,
    pub bytes_retrans: Option<u64>,
    pub bytes_sent: Option<u64>,
    pub bytes_received: Option<u64>,
    pub bytes_acked: Option<u64>,
    pub subflows_total: Option<u8>,
    pub last_data_sent_ms: Option<u32>,
    pub last_data_recv_ms: Option<u32>,
    pub last_ack_recv_ms: Option<u32>,
}

const MPTCP_INFO_MIN: usize = 40;

impl MptcpInfo {
    pub fn parse(b: &[u8]) -> Option<MptcpInfo> {
        if b.len() < MPTCP_INFO_MIN {
            return None;
        }
        Some(MptcpInfo {
            subflows: u8_at(b, 0)?,
            add_addr_signal: u8_at(b, 1)?,
            add_addr_accepted: u8_at(b, 2)?,
            subflows_max: u8_at(b, 3)?,
            add_addr_signal_max: u8_at(b, 4)?,
            add_addr_accepted_max: u8_at(b, 5)?,
            flags: u32_at(b, 8)?,
            token: u32_at(b, 12)?,
            write_seq: u64_at(b, 16)?,
            snd_una: u64_at(b, 24)?,
            rcv_nxt: u64_at(b, 32)?,
            local_addr_used: u8_at(b, 40),
            local_addr_max: u8_at(b, 41),
            csum_enabled: u8_at(b, 42).map(|v| v != 0),
            retransmits: u32_at(b, 44),
            bytes_retrans: u64_at(b, 48),
            bytes_sent: u64_at(b, 56),
            bytes_received: u64_at(b, 64),
            bytes_acked: u64_at(b, 72),
            subflows_total: u8_at(b, 80),
            last_data_sent_ms: u32_at(b, 84),
            last_data_recv_ms: u32_at(b, 88),
            last_ack_recv_ms: u32_at(b, 92),
        })
    }

    /// The connection fell back to plain TCP (the peer did not speak MPTCP,
    /// or a middlebox stripped the options).
    pub fn fell_back(&self) -> bool {
        self.flags & MPTCP_INFO_FLAG_FALLBACK != 0
    }
}

/// Size of `struct mptcp_info` on this kernel generation (with last_* fields).
pub const MPTCP_INFO_SIZE: usize = 96;
/// Size Braid asks for when reading `struct tcp_info`.
pub const TCP_INFO_SIZE: usize = 248;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_buffers_are_none_or_partial() {
        assert!(TcpInfo::parse(&[0u8; 50]).is_none());
        let t = TcpInfo::parse(&[0u8; 104]).unwrap();
        assert_eq!(t.bytes_sent, None);
        assert!(MptcpInfo::parse(&[0u8; 39]).is_none());
        let mut b = [0u8; 48];
        b[8] = 1;
        let m = MptcpInfo::parse(&b).unwrap();
        assert!(m.fell_back());
        assert_eq!(m.bytes_sent, None);
    }

    #[test]
    fn fields_at_their_offsets() {
        let mut b = vec![0u8; TCP_INFO_SIZE];
        b[0] = 1;
        b[68..72].copy_from_slice(&1234u32.to_ne_bytes());
        b[92..96].copy_from_slice(&5333u32.to_ne_bytes());
        b[152..156].copy_from_slice(&77u32.to_ne_bytes());
        b[156..160].copy_from_slice(&88u32.to_ne_bytes());
        b[200..208].copy_from_slice(&99u64.to_ne_bytes());
        b[224..228].copy_from_slice(&5u32.to_ne_bytes());
        b[144..148].copy_from_slice(&2_600_000u32.to_ne_bytes());
        b[7] = !APP_LIMITED_BIT; // TCP Fast Open's failure bits, not app-limited
        let t = TcpInfo::parse(&b).unwrap();
        assert_eq!(t.notsent_bytes, Some(2_600_000));
        assert!(!t.delivery_rate_app_limited);
        b[7] = APP_LIMITED_BIT;
        assert!(TcpInfo::parse(&b).unwrap().delivery_rate_app_limited);
        assert_eq!(
            (
                t.state_name(),
                t.rtt_us,
                t.rcv_rtt_us,
                t.data_segs_in,
                t.data_segs_out,
                t.bytes_sent,
                t.rcv_ooopack
            ),
            (
                "established",
                1234,
                5333,
                Some(77),
                Some(88),
                Some(99),
                Some(5)
            )
        );
        assert_eq!(TcpInfo::parse(&b[..224]).unwrap().rcv_ooopack, None);
    }
}
