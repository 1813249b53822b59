//! Braid's path manager as a sans-IO state machine. The daemon feeds it
//! events (links, addresses, routes, kernel endpoints, MPTCP events,
//! configuration reloads) with the time, and carries out the actions it
//! returns; each action comes with the reason it was decided. No I/O, no
//! clock, no threads: every decision is testable without a kernel.

pub mod backup_watch;
pub mod budget;
pub mod config;
pub mod conns;
pub mod health;
pub mod model;
pub mod policy;
pub mod time;

pub use config::Config;
pub use model::{Action, Decision, Event};
pub use policy::{Policy, PolicyView};
