//! Braid's relay: each TCP connection of a program is carried over its own
//! MPTCP connection to a relay the user controls, which opens plain TCP to
//! the destination. So a client aggregates its paths (and keeps the path
//! manager's handover and interactive modes) with servers that have never
//! heard of MPTCP.
//!
//! Sans-IO cores (no sockets, no clocks read; each decoder takes untrusted
//! bytes and returns an error, never panics):
//! - [`noise`]: the Noise IK handshake and transport ciphers (`snow`);
//! - [`wire`]: requests, replies and frames;
//! - [`replay`]: refusing replayed first messages;
//! - [`destinations`]: which destinations the relay opens;
//! - [`limits`]: connection limits and log rate limits;
//! - [`socks`] and [`http_connect`]: the proxy protocols programs speak;
//! - [`config`], [`keys`], [`stats`].
//!
//! Thin tokio shells: [`server`], [`client`], [`pipe`] (forwarding), [`net`]
//! (sockets), [`paths`] (per-path counters), [`control`] (status socket).

pub mod check;
pub mod client;
pub mod config;
pub mod control;
pub mod datagrams;
pub mod destinations;
pub mod http_connect;
pub mod interceptor;
pub mod keys;
pub mod limits;
pub mod net;
pub mod noise;
pub mod paths;
pub mod pipe;
pub mod replay;
pub mod server;
pub mod service;
pub mod socks;
pub mod stats;
pub mod transparent;
pub mod wire;

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Key(#[from] keys::KeyError),
}

impl From<config::ConfigError> for RelayError {
    fn from(e: config::ConfigError) -> RelayError {
        RelayError::Config(e.0)
    }
}
