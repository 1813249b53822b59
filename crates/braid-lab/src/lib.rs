//! Braid's multipath lab: namespaces joined by emulated paths, traffic and
//! probes over MPTCP, scenarios, reports and plots.

pub mod bench;
pub mod emulator;
pub mod guard;
pub mod lab;
pub mod mptcp_option;
pub mod plot;
pub mod pm;
pub mod reaction;
pub mod relay_bench;
pub mod relay_bench_table;
pub mod report_table;
pub mod runlogs;
pub mod scenario;
pub mod shaper;
pub mod spec;
pub mod summary;
pub mod sweep;
pub mod traffic;
pub mod tun;
pub mod vethlab;
pub mod via;

#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Io(String),
    #[error(transparent)]
    Kernel(#[from] braid_kernel::Error),
}
