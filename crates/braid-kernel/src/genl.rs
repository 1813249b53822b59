//! Generic netlink plumbing shared by the mptcp_pm commands and the event
//! stream: a raw-attribute payload type and family resolution.

use std::collections::BTreeMap;

use netlink_packet_core::{DecodeError, Emitable, ParseableParametrized};
use netlink_packet_generic::{
    ctrl::{
        nlas::{GenlCtrlAttrs, McastGrpAttrs},
        GenlCtrl, GenlCtrlCmd,
    },
    GenlFamily, GenlHeader, GenlMessage,
};
use netlink_sys::protocols::NETLINK_GENERIC;

use crate::error::{Error, Op, Result};
use crate::netlink::{Kind, NlSocket};

pub const MPTCP_PM_NAME: &str = "mptcp_pm";
pub const MPTCP_PM_VER: u8 = 1;
pub const MPTCP_PM_EVENTS_GROUP: &str = "mptcp_pm_events";

/// A generic netlink message of the mptcp_pm family: a command and its raw
/// attributes. Typed encoding and decoding live in `pm` and `events`.
#[derive(Debug, Clone)]
pub struct PmPayload {
    pub family_id: u16,
    pub cmd: u8,
    pub attrs: Vec<u8>,
}

impl GenlFamily for PmPayload {
    fn family_name() -> &'static str {
        MPTCP_PM_NAME
    }
    fn family_id(&self) -> u16 {
        self.family_id
    }
    fn command(&self) -> u8 {
        self.cmd
    }
    fn version(&self) -> u8 {
        MPTCP_PM_VER
    }
}

impl Emitable for PmPayload {
    fn buffer_len(&self) -> usize {
        self.attrs.len()
    }
    fn emit(&self, buffer: &mut [u8]) {
        buffer.copy_from_slice(&self.attrs);
    }
}

impl ParseableParametrized<[u8], GenlHeader> for PmPayload {
    fn parse_with_param(buf: &[u8], header: GenlHeader) -> std::result::Result<Self, DecodeError> {
        Ok(PmPayload {
            family_id: 0,
            cmd: header.cmd,
            attrs: buf.to_vec(),
        })
    }
}

/// The mptcp_pm family id and its multicast groups, as the kernel registered them.
#[derive(Debug, Clone)]
pub struct Family {
    pub id: u16,
    pub version: u32,
    pub groups: BTreeMap<String, u32>,
}

pub(crate) fn resolve_family(sock: &mut NlSocket, name: &str) -> Result<Family> {
    let mut msg = GenlMessage::from_payload(GenlCtrl {
        cmd: GenlCtrlCmd::GetFamily,
        nlas: vec![GenlCtrlAttrs::FamilyName(name.to_string())],
    });
    msg.finalize();
    let replies: Vec<GenlMessage<GenlCtrl>> =
        match sock.request(msg, Kind::Do, 0, Op::ResolveFamily) {
            Ok(r) => r,
            Err(Error::Kernel { errno, .. }) if errno == libc::ENOENT => {
                return Err(Error::NoMptcpFamily)
            }
            Err(e) => return Err(e),
        };
    let reply = replies
        .into_iter()
        .next()
        .ok_or_else(|| Error::decode(Op::ResolveFamily, "no reply to CTRL_CMD_GETFAMILY"))?;
    family_from_reply(reply)
}

/// The family id, version and multicast groups of a CTRL_CMD_GETFAMILY reply.
#[doc(hidden)]
pub fn family_from_reply(reply: GenlMessage<GenlCtrl>) -> Result<Family> {
    let mut family = Family {
        id: 0,
        version: 0,
        groups: BTreeMap::new(),
    };
    for nla in reply.payload.nlas {
        match nla {
            GenlCtrlAttrs::FamilyId(id) => family.id = id,
            GenlCtrlAttrs::Version(v) => family.version = v,
            GenlCtrlAttrs::McastGroups(groups) => {
                for group in groups {
                    let mut gname = None;
                    let mut gid = None;
                    for attr in group {
                        match attr {
                            McastGrpAttrs::Name(n) => gname = Some(n),
                            McastGrpAttrs::Id(i) => gid = Some(i),
                        }
                    }
                    if let (Some(n), Some(i)) = (gname, gid) {
                        family.groups.insert(n, i);
                    }
                }
            }
            _ => {}
        }
    }
    if family.id == 0 {
        return Err(Error::decode(
            Op::ResolveFamily,
            "family reply without an id",
        ));
    }
    Ok(family)
}

pub(crate) fn open_genl(op: Op) -> Result<NlSocket> {
    NlSocket::open(NETLINK_GENERIC, op)
}
