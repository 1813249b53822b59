//! `[relay.server]` and `[relay.client]` of the configuration file:
//! `config::parse` (TOML, then every check with its line and key).
//!
//! Asserts: no panic (any text, any TOML); an accepted server section has
//! listeners, clients with distinct names and keys, and values in range;
//! an accepted client section names a valid relay; a server section
//! serialized back to TOML parses to the same section.
#![no_main]

use braid_relay::config::parse;
use braid_relay::wire::Destination;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(section) = parse(text) else {
        return;
    };
    if let Some(s) = &section.server {
        assert!(!s.listen.is_empty());
        assert!(!s.clients.is_empty());
        for (i, c) in s.clients.iter().enumerate() {
            for o in &s.clients[..i] {
                assert_ne!(o.name.get_ref(), c.name.get_ref());
                assert_ne!(o.public_key.get_ref(), c.public_key.get_ref());
            }
            assert_ne!(c.max_connections, Some(0));
        }
        assert!((1..=1_000_000).contains(&s.max_connections));
        assert!((5..=3600).contains(&s.replay_window_s));
        assert!(s.control_socket.is_absolute());
        let _ = s.destination_policy();
        // Round trip: what serializes parses back to the same values.
        if let Ok(server) = toml::to_string(s) {
            let mut wrapped = String::from("[relay.server]\n");
            // Nested tables of the server section come after its keys.
            wrapped.push_str(
                &server
                    .replace("[client]", "[relay.server.client]")
                    .replace("[[client]]", "[[relay.server.client]]")
                    .replace("[destinations]", "[relay.server.destinations]"),
            );
            match parse(&wrapped) {
                Ok(back) => {
                    let back = back.server.expect("the server section");
                    assert_eq!(toml::to_string(&back).ok(), Some(server), "{wrapped}");
                }
                Err(e) => panic!("a serialized server section does not parse: {e}\n{wrapped}"),
            }
        }
    }
    if let Some(c) = &section.client {
        assert!(Destination::parse(c.relay.get_ref()).is_ok());
        assert!(c.socks.0.is_some() || c.http.0.is_some() || c.transparent);
    }
});
