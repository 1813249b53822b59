//! HTTP CONNECT from local programs: the request head as the client's
//! listener reads it (`http_connect::parse_request` on the bytes read so
//! far), and the answers it sends.
//!
//! Asserts: no panic; every prefix before the end of the head asks for
//! more and the answer does not change once the head is complete (so the
//! split of the reads does not matter); the head used ends at the first
//! blank line; nothing is buffered past the head limit; every refusal is a
//! well-formed HTTP/1.1 response whose Content-Length is its body's.
#![no_main]

use braid_relay::http_connect::{answer, parse_request, HttpError, MAX_HEAD};
use braid_relay::wire::Status;
use libfuzzer_sys::fuzz_target;

fn well_formed(e: &HttpError) {
    let text = std::str::from_utf8(&e.answer).expect("an answer is text");
    assert!(text.starts_with("HTTP/1.1 "));
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("a Content-Length")
        .parse()
        .unwrap();
    assert_eq!(len, body.len());
    // The reason cannot split the head: no CR or LF from the request.
    assert_eq!(head.matches("\r\n").count(), 3);
}

fuzz_target!(|data: &[u8]| {
    let full = parse_request(data);
    let end = data
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| p + 4);
    match &full {
        Ok(None) => {
            assert!(end.is_none());
            assert!(data.len() < MAX_HEAD);
        }
        Ok(Some((d, used))) => {
            assert_eq!(Some(*used), end);
            assert_ne!(d.port, 0);
        }
        Err(e) => {
            well_formed(e);
            // `why` goes to the log: the request's bytes must not reach it
            // raw (control characters, terminal escapes, fake lines).
            assert!(
                !e.why.chars().any(|c| c.is_control()),
                "control character in the logged reason: {:?}",
                e.why
            );
        }
    }
    // Prefixes (a sample: every length near the end of the head, and a few).
    if data.len() <= 4096 {
        let stop = end.unwrap_or(data.len());
        for k in (0..stop).step_by(1 + stop / 64) {
            assert_eq!(parse_request(&data[..k]), Ok(None), "prefix of {k} bytes");
        }
        if let Some(e) = end {
            assert_eq!(
                parse_request(&data[..e]),
                full.clone().map(|o| o.map(|(d, _)| (d, e)))
            );
        }
    }
    for s in [
        Status::Connected,
        Status::NotAllowed,
        Status::TimedOut,
        Status::HostUnreachable,
    ] {
        let a = answer(s, &String::from_utf8_lossy(&data[..data.len().min(64)]));
        assert!(a.starts_with(b"HTTP/1.1 "));
    }
});
