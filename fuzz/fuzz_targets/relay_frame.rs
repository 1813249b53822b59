//! A decrypted transport frame: `wire::parse_frame` (type, then data).
//!
//! Asserts: no panic; data is everything after the type byte; control
//! frames (end, reset) carry nothing; unknown types and empty frames are
//! errors.
#![no_main]

use braid_relay::wire::{parse_frame, FrameKind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_frame(data) {
        Ok((kind, d)) => {
            assert_eq!(kind as u8, data[0]);
            assert_eq!(d, &data[1..]);
            if kind != FrameKind::Data {
                assert!(d.is_empty());
            }
        }
        Err(_) => assert!(data.is_empty() || data[0] > 2 || data.len() > 1),
    }
});
