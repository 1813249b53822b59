//! Transparent mode's kernel side: what the host looks like (subnets,
//! cgroup), and the nftables table installed, kept current and removed.
//! A table left by a client that died is removed at the next start.

use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;

use braid_kernel::nft;
use ipnet::IpNet;
use tracing::{info, warn};

use crate::config::{ClientConfig, Scope};
use crate::transparent::{self, HostFacts};
use crate::RelayError;

/// This host's subnets, from its addresses.
fn local_nets() -> Vec<IpNet> {
    braid_kernel::rtnl::addresses()
        .map(|v| {
            v.into_iter()
                .filter_map(|a| IpNet::new(a.addr, a.prefix_len).ok())
                .map(|n| n.trunc())
                .collect()
        })
        .unwrap_or_default()
}

/// A cgroup v2 path's level (its depth below the root of the hierarchy,
/// as nftables counts) and id (the inode of its directory).
fn cgroup(path: &str) -> Option<(u32, u64)> {
    // The path is from the hierarchy's root; the mount may show a subtree.
    let meta = std::fs::metadata(braid_kernel::cgroup::mount()?.dir_of(path)).ok()?;
    let level = path.split('/').filter(|p| !p.is_empty()).count() as u32;
    Some((level, meta.ino()))
}

/// The facts the rules depend on, now.
pub fn facts(cfg: &ClientConfig, relay_addrs: &[IpAddr], relay_down: bool) -> HostFacts {
    HostFacts {
        relay_down,
        relay_addrs: relay_addrs.to_vec(),
        local_nets: local_nets(),
        cgroup: match &cfg.scope {
            Scope::Cgroup(p) => cgroup(p),
            _ => None,
        },
    }
}

fn kernel_error(e: braid_kernel::Error) -> RelayError {
    let text = e.to_string();
    if let braid_kernel::Error::Kernel { errno, .. } = &e {
        if *errno == libc::EPERM {
            return RelayError::Io(format!(
                "transparent mode cannot install its nftables rules ({text}): it needs CAP_NET_ADMIN; run it as root, or give the unit AmbientCapabilities=CAP_NET_ADMIN"
            ));
        }
    }
    RelayError::Io(format!("installing the transparent-mode rules: {text}"))
}

/// The installed table; removed by [`Interceptor::remove`] (the shell
/// calls it on every way out it controls; a crash is cleaned up by the
/// next start).
pub struct Interceptor {
    installed: Option<nft::Table>,
}

impl Interceptor {
    /// Remove a table a previous client left, if any.
    pub fn clean_leftovers() -> Result<bool, RelayError> {
        let removed = nft::remove(transparent::TABLE).map_err(kernel_error)?;
        if removed {
            warn!(
                "removed the nftables table inet {} left by a relay client that did not stop cleanly",
                transparent::TABLE
            );
        }
        Ok(removed)
    }

    /// Install the rules for `cfg` on this host (the relay presumed up).
    pub fn install(cfg: &ClientConfig, relay_addrs: &[IpAddr]) -> Result<Interceptor, RelayError> {
        let mut i = Interceptor { installed: None };
        i.refresh(cfg, relay_addrs, false)?;
        Ok(i)
    }

    /// Re-read the host (addresses change) and replace the rules if they
    /// differ; the replacement is atomic.
    pub fn refresh(
        &mut self,
        cfg: &ClientConfig,
        relay_addrs: &[IpAddr],
        relay_down: bool,
    ) -> Result<bool, RelayError> {
        let table = transparent::table(cfg, &facts(cfg, relay_addrs, relay_down))
            .map_err(RelayError::Config)?;
        if self.installed.as_ref() == Some(&table) {
            return Ok(false);
        }
        nft::install(&table).map_err(kernel_error)?;
        info!(
            scope = %cfg.scope.describe(),
            rules = table.rule_count(),
            "transparent mode: nftables table inet {} installed",
            transparent::TABLE
        );
        self.installed = Some(table);
        Ok(true)
    }

    /// How many rules are installed (0 when none are).
    pub fn rules(&self) -> usize {
        self.installed.as_ref().map_or(0, nft::Table::rule_count)
    }

    pub fn remove(&mut self) {
        if self.installed.take().is_some() {
            match nft::remove(transparent::TABLE) {
                Ok(_) => info!("transparent mode: nftables table removed"),
                Err(e) => warn!("removing the transparent-mode rules failed: {e}"),
            }
        }
    }
}

impl Drop for Interceptor {
    fn drop(&mut self) {
        self.remove();
    }
}
