//! Braid's path-manager daemon: the I/O shell around `braid-policy`.
//! It watches links, addresses and routes (rtnetlink) and MPTCP events,
//! keeps the kernel's endpoints and limits in step, answers `braid
//! status` and `braid daemon reload` on a Unix socket and, when asked to,
//! serves Prometheus metrics.

pub mod census;
pub mod config_file;
pub mod conns;
pub mod control;
pub mod crash;
pub mod features;
pub mod journal;
pub mod logging;
pub mod metrics;
pub mod metrics_server;
pub mod shell;
pub mod state;
