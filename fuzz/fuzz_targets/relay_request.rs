//! The client's request, the payload of its first message (untrusted until
//! the key check, and from any allowed client after it): `wire::Request::decode`.
//!
//! Asserts: no panic; a decoded request re-encodes to the same length and
//! decodes to itself (names are returned in lower case: the only change);
//! its destination is valid (port not 0, name checked).
#![no_main]

use braid_relay::wire::{check_name, Host, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Request::decode(data) else {
        return;
    };
    let again = r.encode();
    assert_eq!(again.len(), data.len());
    assert!(again.eq_ignore_ascii_case(data));
    assert_eq!(Request::decode(&again).as_ref(), Ok(&r));
    assert_ne!(r.destination.port, 0);
    if let Host::Name(n) = &r.destination.host {
        assert!(check_name(n).is_ok());
        assert_eq!(*n, n.to_ascii_lowercase());
    }
    let _ = r.destination.to_string();
});
