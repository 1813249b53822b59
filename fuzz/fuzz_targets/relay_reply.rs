//! The relay's answer as the client decodes it: `wire::Reply::decode`.
//!
//! Asserts: no panic; a decoded reply re-encodes and decodes to the same
//! status and a prefix of its reason (reasons are cut at 255 bytes on a
//! character boundary; invalid UTF-8 is replaced, which can lengthen it),
//! and to itself exactly when the reason is the bytes sent.
#![no_main]

use braid_relay::wire::Reply;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Reply::decode(data) else {
        return;
    };
    let enc = r.encode();
    assert!(enc.len() <= 2 + 255);
    let back = Reply::decode(&enc).expect("an encoded reply decodes");
    assert_eq!(back.status, r.status);
    assert!(r.reason.starts_with(&back.reason));
    if std::str::from_utf8(&data[2..2 + data[1] as usize]).is_ok() {
        assert_eq!(back, r);
        assert_eq!(&enc[..], &data[..enc.len()]);
    }
    let _ = (r.status.describe(), r.status.socks_code());
});
