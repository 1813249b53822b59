//! A lab without emulation, for measuring what software costs at full
//! speed: a client and a server namespace joined by veth pairs (one per
//! path, no delay, no rate limit) and a plain-TCP origin behind the
//! server. The client has static `subflow` endpoints on its extra paths.
//! Removed when dropped (on panics too).
//!
//! Addresses as in the emulated lab: path k client 10.{k+1}.0.1, server
//! 10.{k+1}.0.2; origin 10.250.0.2 behind the server's 10.250.0.1.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsFd;

use braid_kernel::pm::{EndpointFlags, NewEndpoint, PathManager};
use braid_kernel::{netns, rtnl};

use crate::lab::{
    build_origin, ifindex, write_proc_sys, OriginInfo, ORIGIN_ADDR, ORIGIN_SERVER_ADDR,
};
use crate::via::Site;
use crate::LabError;

pub struct VethLab {
    pub name: String,
    pub client_ns: String,
    pub server_ns: String,
    pub origin_ns: String,
    pub paths: usize,
    pub dir: std::path::PathBuf,
}

fn ns_file(ns: &str) -> Result<std::fs::File, LabError> {
    std::fs::File::open(netns::path(ns)?)
        .map_err(|e| LabError::Io(format!("opening namespace {ns}: {e}")))
}

impl VethLab {
    pub fn up(name: &str, paths: usize) -> Result<VethLab, LabError> {
        crate::lab::validate_name(name)?;
        if !(1..=8).contains(&paths) {
            return Err(LabError::Invalid("a veth lab has 1 to 8 paths".into()));
        }
        let lab = VethLab {
            name: name.to_string(),
            client_ns: format!("{name}-c"),
            server_ns: format!("{name}-s"),
            origin_ns: format!("{name}-o"),
            paths,
            dir: std::env::temp_dir().join(format!("braid-vethlab-{name}")),
        };
        for ns in [&lab.client_ns, &lab.server_ns, &lab.origin_ns] {
            if netns::exists(ns) {
                return Err(LabError::Invalid(format!(
                    "namespace {ns} exists already: remove it with 'ip netns del {ns}'"
                )));
            }
        }
        // From here on, Drop (or a signal) removes whatever was made.
        crate::guard::remember(name);
        lab.build()?;
        Ok(lab)
    }

    fn build(&self) -> Result<(), LabError> {
        let _ = std::fs::remove_dir_all(&self.dir);
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| LabError::Io(format!("creating {}: {e}", self.dir.display())))?;
        for ns in [&self.client_ns, &self.server_ns] {
            netns::create(ns)?;
        }
        let server = ns_file(&self.server_ns)?;
        let paths = self.paths;
        netns::run_in::<_, LabError>(&self.client_ns, move || {
            write_proc_sys("net/ipv4/conf/all/rp_filter", "0")?;
            rtnl::set_link_up(ifindex("lo")?, true)?;
            for k in 0..paths {
                let dev = format!("p{k}");
                rtnl::add_veth(&dev, &dev, server.as_fd())?;
                let idx = ifindex(&dev)?;
                let addr = IpAddr::V4(Ipv4Addr::new(10, k as u8 + 1, 0, 1));
                rtnl::add_address(idx, addr, 24)?;
                rtnl::set_link_up(idx, true)?;
                rtnl::replace_route(
                    100 + k as u32,
                    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                    0,
                    idx,
                    None,
                )?;
                rtnl::add_source_rule(addr, 100 + k as u32, 1000 + k as u32)?;
                if k == 0 {
                    rtnl::replace_route(254, IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0, idx, None)?;
                }
            }
            let mut pm = PathManager::open()?;
            pm.flush_endpoints()?;
            let extra = (paths as u32 - 1).clamp(1, 8);
            pm.set_limits(Some(extra), Some(extra))?;
            for k in 1..paths {
                pm.add_endpoint(&NewEndpoint {
                    addr: IpAddr::V4(Ipv4Addr::new(10, k as u8 + 1, 0, 1)),
                    id: None,
                    port: None,
                    flags: EndpointFlags(EndpointFlags::SUBFLOW),
                    ifindex: None,
                })?;
            }
            Ok(())
        })?;
        netns::run_in::<_, LabError>(&self.server_ns, move || {
            write_proc_sys("net/ipv4/conf/all/rp_filter", "0")?;
            rtnl::set_link_up(ifindex("lo")?, true)?;
            for k in 0..paths {
                let idx = ifindex(&format!("p{k}"))?;
                rtnl::add_address(idx, IpAddr::V4(Ipv4Addr::new(10, k as u8 + 1, 0, 2)), 24)?;
                rtnl::set_link_up(idx, true)?;
            }
            PathManager::open()?.set_limits(Some(8), Some(8))?;
            Ok(())
        })?;
        build_origin(
            &self.server_ns,
            &OriginInfo {
                ns: self.origin_ns.clone(),
                server_addr: IpAddr::V4(ORIGIN_SERVER_ADDR),
                addr: IpAddr::V4(ORIGIN_ADDR),
            },
        )
    }

    pub fn site(&self) -> Site {
        Site {
            dir: self.dir.clone(),
            client_ns: self.client_ns.clone(),
            server_ns: self.server_ns.clone(),
            server_addr: IpAddr::V4(Ipv4Addr::new(10, 1, 0, 2)),
            origin_addr: IpAddr::V4(ORIGIN_ADDR),
        }
    }
}

impl Drop for VethLab {
    fn drop(&mut self) {
        for ns in [&self.client_ns, &self.server_ns, &self.origin_ns] {
            if netns::exists(ns) {
                netns::kill_all(ns, std::time::Duration::from_secs(2));
                let _ = netns::delete(ns);
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        crate::guard::forget(&self.name);
    }
}
