//! SOCKS5 from local programs (or a LAN): the method selection
//! (`socks::parse_greeting`), the request (`socks::parse_request`) and UDP
//! datagrams of an association (`socks::parse_udp`), as the client's
//! listener reads them: the parsers see the bytes read so far, in
//! whatever pieces they arrived.
//!
//! Input: selector byte, then the bytes.
//! Asserts: no panic; the outcome does not depend on how the bytes were
//! split: every prefix shorter than a complete message asks for more
//! (`Ok(None)`), and once complete the answer no longer changes; a request
//! never waits for more than 262 bytes (bounded buffering); a parsed
//! request or datagram re-encodes to the bytes it used (up to the case of
//! a name); refusals that have an answer carry a well-formed SOCKS reply.
#![no_main]

use braid_relay::socks::{
    parse_greeting, parse_request, parse_udp, udp_header, Command, SocksError,
};
use libfuzzer_sys::fuzz_target;

/// Check the streaming contract of `parse` over every prefix of `b`.
fn streaming<T: PartialEq + std::fmt::Debug>(
    b: &[u8],
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, SocksError>,
) -> Result<Option<(T, usize)>, SocksError> {
    let full = parse(b);
    // (length, refused) of the first answer.
    let mut first_answer: Option<(usize, bool)> = None;
    for k in 0..=b.len() {
        match parse(&b[..k]) {
            Ok(None) => assert!(
                first_answer.is_none(),
                "more bytes asked for after an answer at {first_answer:?}"
            ),
            Ok(Some((v, used))) => {
                assert!(used <= k);
                match first_answer {
                    None => {
                        assert_eq!(used, k, "complete before the last byte read");
                        first_answer = Some((k, false));
                    }
                    Some((_, refused)) => assert!(!refused, "accepted after a refusal"),
                }
                // Once complete, more bytes change nothing.
                assert_eq!(full, Ok(Some((v, used))));
            }
            Err(e) => {
                if let Some(a) = &e.answer {
                    assert_eq!(a[0], 5);
                    assert!(a.len() == 10 || a[..] == [5, 0xff]);
                }
                // `why` goes to the log: no raw bytes of the request.
                assert!(!e.why.chars().any(char::is_control), "{:?}", e.why);
                match first_answer {
                    None => first_answer = Some((k, true)),
                    Some((_, refused)) => assert!(refused, "refused after an answer"),
                }
            }
        }
    }
    full
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, b)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(Some((answer, used))) = streaming(b, parse_greeting) {
                assert_eq!(answer, vec![5, 0]);
                assert_eq!(used, 2 + b[1] as usize);
            }
        }
        1 => {
            let b = &b[..b.len().min(600)];
            match streaming(b, parse_request) {
                Ok(None) => assert!(b.len() < 262, "waiting for more than 262 bytes"),
                Ok(Some((Command::Connect(d), used))) => {
                    let mut enc = vec![5, 1, b[2]];
                    d.encode(&mut enc);
                    assert!(enc.eq_ignore_ascii_case(&b[..used]));
                }
                Ok(Some((Command::UdpAssociate, used))) => assert!(used <= 262),
                Err(_) => {}
            }
        }
        _ => {
            if let Ok((dest, payload)) = parse_udp(b) {
                let mut again = udp_header(&dest);
                again.extend_from_slice(payload);
                assert_eq!(again.len(), b.len());
                assert!(again[3..].eq_ignore_ascii_case(&b[3..]));
                assert_eq!(b[2], 0);
            }
        }
    }
});
