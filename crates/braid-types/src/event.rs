//! Kinds of MPTCP events (the `mptcp_pm_events` multicast group).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    Created,
    Established,
    Closed,
    Announced,
    Removed,
    SubEstablished,
    SubClosed,
    SubPriority,
    ListenerCreated,
    ListenerClosed,
    /// An event type this version of Braid does not know.
    Unknown(u8),
}

impl EventKind {
    pub fn from_cmd(cmd: u8) -> Self {
        match cmd {
            1 => EventKind::Created,
            2 => EventKind::Established,
            3 => EventKind::Closed,
            6 => EventKind::Announced,
            7 => EventKind::Removed,
            10 => EventKind::SubEstablished,
            11 => EventKind::SubClosed,
            13 => EventKind::SubPriority,
            15 => EventKind::ListenerCreated,
            16 => EventKind::ListenerClosed,
            other => EventKind::Unknown(other),
        }
    }

    pub fn name(self) -> String {
        match self {
            EventKind::Created => "created".into(),
            EventKind::Established => "established".into(),
            EventKind::Closed => "closed".into(),
            EventKind::Announced => "announced".into(),
            EventKind::Removed => "removed".into(),
            EventKind::SubEstablished => "sub_established".into(),
            EventKind::SubClosed => "sub_closed".into(),
            EventKind::SubPriority => "sub_priority".into(),
            EventKind::ListenerCreated => "listener_created".into(),
            EventKind::ListenerClosed => "listener_closed".into(),
            EventKind::Unknown(n) => format!("unknown({n})"),
        }
    }
}
