//! Typed access to every kernel MPTCP interface Braid uses: the `mptcp_pm`
//! generic netlink family (commands and event stream), sock_diag dumps,
//! MPTCP sockets and their socket options, rtnetlink link and address
//! dumps, the `net.mptcp.*` sysctls, an nf_tables table of Braid's own
//! ([`nft`]) and the original destinations of redirected flows
//! ([`conntrack`]). No policy and no printing here.
//!
//! Everything acts on the network namespace of the calling thread; see
//! [`netns`] to reach another one.

pub mod bpf;
pub mod cgroup;
pub mod check;
pub mod conntrack;
pub mod counters;
pub mod diag;
pub mod error;
pub mod events;
pub mod genl;
pub mod info;
pub mod interfaces;
mod netlink;
pub mod netns;
pub mod nft;
pub mod owner;
pub mod pm;
pub mod pm_attrs;
pub mod probe;
pub mod rtnl;
pub mod socket;
pub mod sockopts;
pub mod sysctl;

pub use error::{Error, Op, Result};

/// The netlink decoding helpers, for the fuzz targets (`fuzz/`): not an API.
#[doc(hidden)]
pub use netlink::{attrs, decode_replies, extack_message, push_attr, AttrIter};

/// The running kernel's release string (uname -r).
pub fn kernel_release() -> String {
    // SAFETY: uname fills the struct it is given.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return "unknown".into();
    }
    let bytes: Vec<u8> = u
        .release
        .iter()
        .take_while(|c| **c != 0)
        .map(|c| *c as u8)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}
