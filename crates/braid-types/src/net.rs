//! Links and default routes as rtnetlink reports them and the policy
//! reasons about them.

use serde::{Deserialize, Serialize};

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier present (IFF_LOWER_UP).
    pub carrier: bool,
    pub loopback: bool,
    /// How many times its carrier changed (IFLA_CARRIER_CHANGES), when the
    /// kernel says: orders an announcement against a read of the link.
    #[serde(default)]
    pub carrier_changes: Option<u32>,
}

impl Link {
    /// Up with carrier: the link can carry packets now.
    pub fn can_carry(&self) -> bool {
        self.up && self.carrier
    }
}

/// A default route (any table) and the interface it leaves by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DefaultRoute {
    pub ifindex: u32,
    pub table: u32,
    pub ipv6: bool,
    /// The route's initial congestion window (`initcwnd`), if it sets one.
    pub initcwnd: Option<u32>,
}

impl DefaultRoute {
    /// What tells routes apart (the kernel reports initcwnd changes as a
    /// new version of the same route).
    pub fn key(&self) -> (u32, u32, bool) {
        (self.ifindex, self.table, self.ipv6)
    }
}
