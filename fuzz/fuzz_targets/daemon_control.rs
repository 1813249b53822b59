//! The control protocols' requests: one JSON line from a local client, as
//! the daemon reads it (`serde_json::from_str::<braid_daemon::control::Request>`
//! in the shell's accept loop) and as the relay's status socket reads it
//! (`braid_relay::control::Request`); and the replies the CLI reads.
//!
//! Asserts: no panic on any line; a request that parses serializes and
//! parses back to the same command; a reply that parses round-trips.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(req) = serde_json::from_str::<braid_daemon::control::Request>(line) {
        let s = serde_json::to_string(&req).unwrap();
        let back: braid_daemon::control::Request = serde_json::from_str(&s).unwrap();
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
    }
    if let Ok(req) = serde_json::from_str::<braid_relay::control::Request>(line) {
        let s = serde_json::to_string(&req).unwrap();
        let back: braid_relay::control::Request = serde_json::from_str(&s).unwrap();
        assert_eq!(format!("{back:?}"), format!("{req:?}"));
    }
    if let Ok(reply) = serde_json::from_str::<braid_daemon::control::Reply>(line) {
        let s = serde_json::to_string(&reply).unwrap();
        let back: braid_daemon::control::Reply = serde_json::from_str(&s).unwrap();
        assert_eq!(format!("{back:?}"), format!("{reply:?}"));
    }
});
