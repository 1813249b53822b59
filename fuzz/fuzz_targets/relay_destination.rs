//! Destinations: the binary form in requests and SOCKS messages
//! (`wire::Destination::decode`) and the text form in CONNECT lines and
//! the configuration (`wire::Destination::parse`).
//!
//! Asserts: no panic; a decoded destination re-encodes to the bytes it
//! used (up to the case of a name) and decodes to itself; a parsed one
//! encodes and decodes to itself; both have a port and a valid name.
#![no_main]

use braid_relay::wire::{check_name, Destination, Host};
use libfuzzer_sys::fuzz_target;

fn valid(d: &Destination) {
    assert_ne!(d.port, 0);
    if let Host::Name(n) = &d.host {
        assert!(check_name(n).is_ok(), "{n:?}");
        assert_eq!(*n, n.to_ascii_lowercase());
    }
    let mut enc = Vec::new();
    d.encode(&mut enc);
    assert_eq!(Destination::decode(&enc), Ok((d.clone(), enc.len())));
}

fuzz_target!(|data: &[u8]| {
    if let Ok((d, used)) = Destination::decode(data) {
        assert!(used <= data.len());
        let mut enc = Vec::new();
        d.encode(&mut enc);
        assert!(enc.eq_ignore_ascii_case(&data[..used]));
        valid(&d);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(d) = Destination::parse(s) {
            valid(&d);
            // What it prints parses back, unless a name reads as an address.
            if let Ok(again) = Destination::parse(&d.to_string()) {
                if !matches!(&d.host, Host::Name(n) if n.trim_end_matches('.').parse::<std::net::IpAddr>().is_ok())
                {
                    assert_eq!(again, d);
                }
            }
        }
    }
});
