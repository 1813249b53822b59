//! Links and addresses for the policy tests.

use braid_policy::model::{Address, Link};

pub fn link(index: u32, name: &str) -> Link {
    Link {
        index,
        name: name.into(),
        up: true,
        carrier: true,
        loopback: false,
        carrier_changes: None,
    }
}

pub fn addr(ifindex: u32, ip: &str) -> Address {
    Address {
        ifindex,
        ip: ip.parse().unwrap(),
        prefix_len: 24,
        temporary: false,
        deprecated: false,
        tentative: false,
    }
}
