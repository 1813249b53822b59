//! Interface names and addresses, looked up once per command.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::error::Result;
use crate::rtnl::{self, Address, Link};

pub struct Interfaces {
    pub links: Vec<Link>,
    pub addrs: Vec<Address>,
    by_index: BTreeMap<u32, usize>,
}

impl Interfaces {
    pub fn load() -> Result<Self> {
        Ok(Self::new(rtnl::links()?, rtnl::addresses()?))
    }

    pub fn new(links: Vec<Link>, addrs: Vec<Address>) -> Self {
        let by_index = links
            .iter()
            .enumerate()
            .map(|(i, l)| (l.index, i))
            .collect();
        Interfaces {
            links,
            addrs,
            by_index,
        }
    }

    pub fn link(&self, index: u32) -> Option<&Link> {
        self.by_index.get(&index).map(|i| &self.links[*i])
    }

    pub fn name(&self, index: u32) -> Option<&str> {
        self.link(index).map(|l| l.name.as_str())
    }

    /// The interface that holds `addr`, if any does.
    pub fn owner_of(&self, addr: IpAddr) -> Option<&Link> {
        let a = self.addrs.iter().find(|a| a.addr == addr)?;
        self.link(a.ifindex)
    }
}
