//! The relay's first read from an unauthenticated peer: a first message of
//! any content (garbage, truncated, forged) handed to
//! `noise::Responder::read_first`, then, as `server::authenticate` does,
//! its payload to `wire::Request::decode` and the replay guard.
//!
//! The relay's key is fixed, so seeds made by a real `Initiator` for it
//! decrypt and reach the request decoder; mutations must fail cleanly.
//! Asserts: no panic; garbage is `CryptoError::Handshake`; a message that
//! decrypts yields the sender's ephemeral key (its first 32 bytes) and a
//! payload 96 bytes shorter than the message.
#![no_main]

use braid_relay::keys::PrivateKey;
use braid_relay::noise::{CryptoError, Responder, FIRST_MESSAGE_OVERHEAD};
use braid_relay::replay::ReplayGuard;
use braid_relay::wire::Request;
use libfuzzer_sys::fuzz_target;

/// The relay key the seeds were made for (fuzz/seeds/src/main.rs).
pub const RELAY_KEY: [u8; 32] = [7; 32];

fuzz_target!(|data: &[u8]| {
    let key = PrivateKey::from_bytes(RELAY_KEY);
    let mut responder = Responder::new(&key).expect("a responder");
    match responder.read_first(data) {
        Err(e) => assert_eq!(e, CryptoError::Handshake),
        Ok(first) => {
            assert_eq!(&first.ephemeral[..], &data[..32]);
            assert_eq!(first.payload.len() + FIRST_MESSAGE_OVERHEAD, data.len());
            if let Ok(request) = Request::decode(&first.payload) {
                let now = 1_800_000_000_000;
                let mut guard = ReplayGuard::new(60_000, now - 1_000_000, 16);
                let _ = guard.check(&first.ephemeral, request.timestamp_ms, now);
            }
        }
    }
});
