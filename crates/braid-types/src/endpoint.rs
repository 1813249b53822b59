//! MPTCP endpoints as the kernel's path manager knows them.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// The kernel uses at most this many endpoints and subflows per connection.
pub const KERNEL_MAX_LIMIT: u32 = 8;

/// The in-kernel path manager's per-namespace limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Limits {
    /// Extra subflows a connection may create (`subflows`).
    pub subflows: u32,
    /// ADD_ADDR announcements accepted from the peer (`add_addr_accepted`).
    pub add_addr_accepted: u32,
}

/// Endpoint flags, with the names `ip mptcp` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct EndpointFlags(pub u32);

impl EndpointFlags {
    pub const SIGNAL: u32 = 1 << 0;
    pub const SUBFLOW: u32 = 1 << 1;
    pub const BACKUP: u32 = 1 << 2;
    pub const FULLMESH: u32 = 1 << 3;
    pub const IMPLICIT: u32 = 1 << 4;
    pub const LAMINAR: u32 = 1 << 5;

    /// Known flags in the order `ip mptcp` prints them.
    pub const NAMES: [(u32, &'static str); 6] = [
        (Self::SIGNAL, "signal"),
        (Self::SUBFLOW, "subflow"),
        (Self::LAMINAR, "laminar"),
        (Self::BACKUP, "backup"),
        (Self::FULLMESH, "fullmesh"),
        (Self::IMPLICIT, "implicit"),
    ];

    pub fn contains(self, flag: u32) -> bool {
        self.0 & flag != 0
    }

    /// Flag names, known ones first, unknown bits as `unknown(0x..)`.
    pub fn names(self) -> Vec<String> {
        let mut out: Vec<String> = Self::NAMES
            .iter()
            .filter(|(bit, _)| self.0 & bit != 0)
            .map(|(_, n)| n.to_string())
            .collect();
        let known: u32 = Self::NAMES.iter().map(|(b, _)| b).sum();
        let unknown = self.0 & !known;
        if unknown != 0 {
            out.push(format!("unknown(0x{unknown:x})"));
        }
        out
    }

    /// Parse one flag name as `ip mptcp` spells it.
    pub fn parse_name(name: &str) -> Result<u32, String> {
        Self::NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(b, _)| *b)
            .filter(|b| *b != Self::IMPLICIT)
            .ok_or_else(|| {
                format!(
                    "unknown endpoint flag '{name}': allowed flags are signal, subflow, backup, fullmesh, laminar"
                )
            })
    }
}

impl fmt::Display for EndpointFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.names().join(" "))
    }
}

/// As the list of names (`["subflow", "backup"]`).
impl Serialize for EndpointFlags {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}
