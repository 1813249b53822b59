//! The daemon's configuration file (/etc/braid/braid.toml):
//! `config_file::parse` (TOML into `braid_policy::Config`, `validate`, and
//! the line of a failing key).
//!
//! Asserts: no panic (any text); an accepted configuration validates; it
//! serializes to TOML that parses back to an equal configuration; errors
//! are one line of text.
#![no_main]

use braid_daemon::config_file::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse(text) {
        Ok(cfg) => {
            assert!(cfg.validate().is_ok());
            let ser = toml::to_string(&cfg).expect("a configuration serializes");
            let back = parse(&ser).unwrap_or_else(|e| panic!("{e}\n{ser}"));
            assert_eq!(back, cfg);
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
