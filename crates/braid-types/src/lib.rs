//! Concepts Braid's crates share, defined once: the kernel layer decodes
//! into them, the policy decides with them, the daemon and the CLI show
//! them. No I/O here.

pub mod endpoint;
pub mod event;
pub mod net;
