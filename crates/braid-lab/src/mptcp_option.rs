//! Which MPTCP options a packet carries, read off the IP and TCP headers
//! the emulator forwards: enough to lose an MP_PRIO on purpose. Written
//! here because the packet crates stop at TCP options they do not know,
//! and MPTCP's (kind 30) is one of them.

/// TCP option kind of MPTCP (RFC 8684, section 3).
const MPTCP_KIND: u8 = 30;
/// MPTCP option subtype of MP_CAPABLE, which opens a connection (RFC
/// 8684, section 3.1).
pub const MP_CAPABLE: u8 = 0x0;
/// MPTCP option subtype of MP_PRIO, a subflow's backup flag (RFC 8684,
/// section 3.3.8).
pub const MP_PRIO: u8 = 0x5;

/// Whether `packet` (an IPv4 or IPv6 packet, as a TUN device without
/// packet information gives it) is TCP with an MPTCP option of `subtype`.
/// Anything that is not a well-formed TCP header is `false`.
pub fn carries_mptcp(packet: &[u8], subtype: u8) -> bool {
    tcp_options(packet).is_some_and(|opts| {
        options(opts).any(|(kind, body)| {
            kind == MPTCP_KIND && body.first().is_some_and(|b| b >> 4 == subtype)
        })
    })
}

/// Whether `packet` is a TCP SYN that opens an MPTCP connection: SYN
/// without ACK, with MP_CAPABLE. What a middlebox that drops MPTCP drops.
pub fn is_mp_capable_syn(packet: &[u8]) -> bool {
    const SYN: u8 = 0x02;
    const ACK: u8 = 0x10;
    tcp_header(packet).is_some_and(|tcp| tcp.get(13).is_some_and(|f| f & (SYN | ACK) == SYN))
        && carries_mptcp(packet, MP_CAPABLE)
}

/// The TCP options of an IPv4 or IPv6 packet (IPv6 without extension
/// headers, as the lab's traffic is), if it is TCP.
fn tcp_options(packet: &[u8]) -> Option<&[u8]> {
    let tcp = tcp_header(packet)?;
    let data_offset = usize::from(tcp.get(12)? >> 4) * 4;
    if data_offset < 20 {
        return None;
    }
    tcp.get(20..data_offset)
}

/// The TCP header and what follows it, if the packet is TCP.
fn tcp_header(packet: &[u8]) -> Option<&[u8]> {
    const TCP: u8 = 6;
    let tcp = match packet.first()? >> 4 {
        4 => {
            let header_len = usize::from(packet[0] & 0x0f) * 4;
            if header_len < 20 || *packet.get(9)? != TCP {
                return None;
            }
            packet.get(header_len..)?
        }
        6 => {
            if *packet.get(6)? != TCP {
                return None;
            }
            packet.get(40..)?
        }
        _ => return None,
    };
    (tcp.len() >= 20).then_some(tcp)
}

/// TCP options as (kind, what follows the length byte), up to the end of
/// the list or the first malformed one.
fn options(mut rest: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    std::iter::from_fn(move || loop {
        let (&kind, tail) = rest.split_first()?;
        match kind {
            0 => return None,
            1 => rest = tail,
            _ => {
                let len = usize::from(*tail.first()?);
                if len < 2 || len > rest.len() {
                    return None;
                }
                let body = &rest[2..len];
                rest = &rest[len..];
                return Some((kind, body));
            }
        }
    })
}

/// An IPv4 TCP pure ACK with `opts` (padded to 4 bytes), for tests.
#[cfg(test)]
pub(crate) fn ipv4_tcp(opts: &[u8]) -> Vec<u8> {
    let mut opts = opts.to_vec();
    while opts.len() % 4 != 0 {
        opts.push(1);
    }
    let mut p = vec![
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 1, 0, 1, 10, 1, 0, 2,
    ];
    let mut tcp = vec![0u8; 20];
    tcp[12] = (((20 + opts.len()) / 4) << 4) as u8;
    tcp[13] = 0x10;
    tcp.extend_from_slice(&opts);
    p.extend_from_slice(&tcp);
    p
}

/// MP_PRIO with the backup bit, as Linux sends it (3 bytes, no id), for
/// tests.
#[cfg(test)]
pub(crate) const PRIO_OPTION: [u8; 3] = [30, 3, 0x51];

#[cfg(test)]
mod tests {
    use super::*;

    const TIMESTAMPS: [u8; 12] = [1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2];
    const PRIO: [u8; 3] = PRIO_OPTION;
    /// A DSS with a 4-byte DATA_ACK.
    const DSS: [u8; 8] = [30, 8, 0x20, 0x01, 0, 0, 0, 9];

    #[test]
    fn finds_mp_prio_after_other_options() {
        let mut opts = TIMESTAMPS.to_vec();
        opts.extend_from_slice(&PRIO);
        assert!(carries_mptcp(&ipv4_tcp(&opts), MP_PRIO));
        let mut opts = TIMESTAMPS.to_vec();
        opts.extend_from_slice(&DSS);
        assert!(!carries_mptcp(&ipv4_tcp(&opts), MP_PRIO));
        assert!(carries_mptcp(&ipv4_tcp(&opts), 0x2));
    }

    #[test]
    fn an_mp_capable_syn_is_told_from_its_syn_ack_and_a_plain_syn() {
        // MP_CAPABLE v1 in a SYN: 4 bytes, no key.
        let mpc = [30, 4, 0x01, 0x81];
        let mut syn = ipv4_tcp(&mpc);
        syn[20 + 13] = 0x02;
        assert!(is_mp_capable_syn(&syn));
        let mut syn_ack = syn.clone();
        syn_ack[20 + 13] = 0x12;
        assert!(!is_mp_capable_syn(&syn_ack));
        let mut plain_syn = ipv4_tcp(&TIMESTAMPS);
        plain_syn[20 + 13] = 0x02;
        assert!(!is_mp_capable_syn(&plain_syn));
        assert!(!is_mp_capable_syn(&ipv4_tcp(&mpc)), "an ACK");
        for n in 0..syn.len() {
            assert!(!is_mp_capable_syn(&syn[..n]), "cut at {n}");
        }
    }

    #[test]
    fn ipv6_too() {
        let v4 = ipv4_tcp(&PRIO);
        let mut p = vec![0x60, 0, 0, 0, 0, 0, 6, 64];
        p.extend_from_slice(&[0u8; 32]);
        p.extend_from_slice(&v4[20..]);
        assert!(carries_mptcp(&p, MP_PRIO));
        p[6] = 17;
        assert!(!carries_mptcp(&p, MP_PRIO), "UDP is not TCP");
    }

    #[test]
    fn malformed_headers_are_not_read_past() {
        let good = ipv4_tcp(&PRIO);
        for n in 0..good.len() {
            assert!(!carries_mptcp(&good[..n], MP_PRIO), "cut at {n}");
        }
        // An option whose length runs past the header, or is too short.
        assert!(!carries_mptcp(&ipv4_tcp(&[30, 40, 0x51]), MP_PRIO));
        assert!(!carries_mptcp(&ipv4_tcp(&[30, 1, 0x51]), MP_PRIO));
        // Options after the end-of-list option are not options.
        assert!(!carries_mptcp(&ipv4_tcp(&[0, 30, 3, 0x51]), MP_PRIO));
        // A data offset under the header's own size.
        let mut p = good.clone();
        p[20 + 12] = 4 << 4;
        assert!(!carries_mptcp(&p, MP_PRIO));
        assert!(!carries_mptcp(&[0xff; 64], MP_PRIO));
    }
}
