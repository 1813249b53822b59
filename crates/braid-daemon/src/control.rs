//! The daemon's control socket: one JSON request and one JSON reply per
//! connection. Only root, or members of the configured group, may connect.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
}

/// Ask a running daemon (blocking; for the CLI).
pub fn request(socket: &Path, req: &Request) -> Result<Reply, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            format!(
                "the Braid daemon is not running (no control socket at {})",
                socket.display()
            )
        }
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {}: run as root or as a member of the group set in control.group",
            socket.display()
        ),
        _ => format!("cannot reach the daemon at {}: {e}", socket.display()),
    })?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    writeln!(s, "{}", serde_json::to_string(req).unwrap()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("no reply from the daemon: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("malformed reply from the daemon: {e}"))
}

/// The group id of a group name, from /etc/group.
pub fn group_id(name: &str) -> Option<u32> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|l| {
        let mut f = l.split(':');
        (f.next()? == name)
            .then(|| f.nth(1)?.parse().ok())
            .flatten()
    })
}

/// Whether the peer (by SO_PEERCRED) may use the socket.
pub fn peer_allowed(fd: std::os::fd::RawFd, group: Option<u32>) -> bool {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: valid pointers of the right sizes.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            &mut cred as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if rc < 0 {
        return false;
    }
    if cred.uid == 0 {
        return true;
    }
    let Some(g) = group else { return false };
    if cred.gid == g {
        return true;
    }
    // Supplementary groups of the peer process.
    std::fs::read_to_string(format!("/proc/{}/status", cred.pid))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Groups:"))
                .map(|l| l.to_string())
        })
        .is_some_and(|l| l.split_whitespace().skip(1).any(|x| x.parse() == Ok(g)))
}
