//! The daemon's control socket: one JSON request and one JSON reply per
//! connection. Only root, or members of the configured group, may connect.
//!
//! Each client is served by its own task ([`serve`]) with a bounded
//! request size and read and write deadlines, and at most [`MAX_CLIENTS`]
//! at once: the event loop never waits for a client. The task hands the
//! request to the loop, which answers it (the status is computed there)
//! through a oneshot channel.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::journal::{Entry, What};

/// A request is one short JSON line; anything longer is refused.
pub const MAX_REQUEST: usize = 4096;
/// Clients served at once; more are answered "busy" and closed.
pub const MAX_CLIENTS: usize = 16;
/// A client has this long to send its request ...
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and to take the reply.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Reload,
    /// The journal's entries of the last `since_ms` milliseconds (none if
    /// absent) and, with `follow`, every entry after them as it comes, one
    /// JSON line each, until the client closes.
    Journal {
        #[serde(default)]
        since_ms: Option<u64>,
        #[serde(default)]
        follow: bool,
        /// Leave the per-connection entries (MPTCP events, per-connection
        /// decisions) out of the window: `braid top` shows the events from
        /// the kernel and wants the host's decisions.
        #[serde(default)]
        without_mptcp: bool,
    },
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DaemonStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<JournalReply>,
}

/// The answer to `Request::Status`: what `braid status` shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// The daemon's network namespace (inode): its view is of that network.
    #[serde(default)]
    pub netns: Option<u64>,
    pub config: std::path::PathBuf,
    pub uptime_s: u64,
    /// What works where the daemon runs, and why not.
    #[serde(default)]
    pub features: Vec<crate::features::Feature>,
    /// Problems the daemon found itself (a corrupt state file kept aside...).
    #[serde(default)]
    pub warnings: Vec<String>,
    #[serde(default)]
    pub health_polls: HealthPolls,
    pub view: braid_policy::policy::PolicyView,
    /// Each connection's rule and mode (`pm = "userspace"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub connections: Vec<braid_policy::conns::ConnView>,
}

/// Health polling: how it goes.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HealthPolls {
    pub rounds: u64,
    pub failed: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct JournalReply {
    /// The inode of the daemon's network namespace: a client in another
    /// namespace is not looking at what this daemon manages.
    pub netns: Option<u64>,
    pub entries: Vec<Entry>,
}

/// What the event loop gives back for a request.
pub enum Answer {
    Once(Reply),
    /// The reply, then every entry from this receiver.
    Follow(Reply, broadcast::Receiver<Entry>),
}

/// Ask a running daemon (blocking; for the CLI).
pub fn request(socket: &Path, req: &Request) -> Result<Reply, String> {
    exchange(socket, req).map(|(reply, _)| reply)
}

/// Send `req` and read the reply line (5 s at most); the reader is
/// returned for what the daemon streams after it.
fn exchange(
    socket: &Path,
    req: &Request,
) -> Result<(Reply, std::io::BufReader<std::os::unix::net::UnixStream>), String> {
    use std::io::BufRead;
    let s = send(socket, req)?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok();
    let mut lines = std::io::BufReader::new(s);
    let mut line = String::new();
    lines
        .read_line(&mut line)
        .map_err(|e| format!("no reply from the daemon: {e}"))?;
    let reply =
        serde_json::from_str(&line).map_err(|e| format!("malformed reply from the daemon: {e}"))?;
    Ok((reply, lines))
}

/// A live view of the daemon's journal (blocking; for the CLI).
pub struct Follower {
    /// The daemon's network namespace (its inode).
    pub netns: Option<u64>,
    /// The entries of the window asked for, oldest first.
    pub history: Vec<Entry>,
    lines: std::io::BufReader<std::os::unix::net::UnixStream>,
}

impl Follower {
    /// The next entry; `None` when the daemon stops or closes the stream.
    pub fn next_entry(&mut self) -> Option<Result<Entry, String>> {
        use std::io::BufRead;
        let mut line = String::new();
        match self.lines.read_line(&mut line) {
            Ok(0) => None,
            Ok(_) => Some(
                serde_json::from_str(&line)
                    .map_err(|e| format!("malformed journal entry from the daemon: {e}")),
            ),
            Err(e) => Some(Err(format!("reading the daemon's journal failed: {e}"))),
        }
    }
}

/// The journal's entries of the last `since_ms` milliseconds, without the
/// MPTCP events (blocking; for the CLI).
pub fn recent_entries(socket: &Path, since_ms: u64) -> Result<Vec<Entry>, String> {
    let reply = request(
        socket,
        &Request::Journal {
            since_ms: Some(since_ms),
            follow: false,
            without_mptcp: true,
        },
    )?;
    if !reply.ok {
        return Err(reply.error.unwrap_or_else(|| "refused".into()));
    }
    Ok(reply.journal.map(|j| j.entries).unwrap_or_default())
}

/// Follow the daemon's journal, starting `since_ms` ago.
pub fn follow(socket: &Path, since_ms: Option<u64>) -> Result<Follower, String> {
    let (reply, lines) = exchange(
        socket,
        &Request::Journal {
            since_ms,
            follow: true,
            without_mptcp: false,
        },
    )?;
    if !reply.ok {
        return Err(reply.error.unwrap_or_else(|| "refused".into()));
    }
    let journal = reply
        .journal
        .ok_or("the daemon's reply has no journal (is it an older braidd?)")?;
    // From here entries come when things happen, however far apart.
    lines.get_ref().set_read_timeout(None).ok();
    Ok(Follower {
        netns: journal.netns,
        history: journal.entries,
        lines,
    })
}

fn send(socket: &Path, req: &Request) -> Result<std::os::unix::net::UnixStream, String> {
    use std::io::Write;
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
    writeln!(s, "{}", serde_json::to_string(req).unwrap()).map_err(|e| e.to_string())?;
    Ok(s)
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

/// A request on its way to the event loop, with where the reply goes.
pub struct Pending {
    pub request: Request,
    pub reply: oneshot::Sender<Answer>,
}

pub fn error_reply(msg: String) -> Reply {
    Reply {
        ok: false,
        error: Some(msg),
        ..Reply::default()
    }
}

/// The line a client gets when [`MAX_CLIENTS`] are already being served.
pub fn busy_line() -> Vec<u8> {
    let r = error_reply(format!(
        "the daemon is serving {MAX_CLIENTS} control clients already; try again"
    ));
    format!("{}\n", serde_json::to_string(&r).unwrap()).into_bytes()
}

enum ReadError {
    TooLarge,
    /// Closed, or a read error: nobody to answer.
    Closed,
}

/// One line of at most `MAX_REQUEST` bytes (the newline excluded; a
/// request ended by closing the write side counts too).
async fn read_request<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut line = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return if line.is_empty() {
                Err(ReadError::Closed)
            } else {
                Ok(line)
            };
        }
        let end = chunk[..n].iter().position(|b| *b == b'\n');
        line.extend_from_slice(&chunk[..end.unwrap_or(n)]);
        if line.len() > MAX_REQUEST {
            return Err(ReadError::TooLarge);
        }
        if end.is_some() {
            return Ok(line);
        }
    }
}

/// Serve one client, from its own task: check its credentials, read one
/// request (bounded, with a deadline), pass it to the event loop, write
/// the reply (with a deadline). Whatever the client does, this ends within
/// READ_TIMEOUT + WRITE_TIMEOUT plus the loop's answer time, except for a
/// follower, served until it closes, stops reading for WRITE_TIMEOUT, or
/// the daemon stops.
pub async fn serve(
    mut stream: tokio::net::UnixStream,
    group: Option<u32>,
    to_loop: mpsc::Sender<Pending>,
) {
    use std::os::fd::AsRawFd;
    if !peer_allowed(stream.as_raw_fd(), group) {
        tracing::warn!("control connection refused: not root and not in control.group");
        return;
    }
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_request(&mut stream)).await {
        Err(_) | Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::TooLarge)) => Answer::Once(error_reply(format!(
            "request too large (more than {MAX_REQUEST} bytes)"
        ))),
        Ok(Ok(line)) => match serde_json::from_slice::<Request>(&line) {
            Err(e) => Answer::Once(error_reply(format!("bad request: {e}"))),
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                if to_loop.send(Pending { request, reply: tx }).await.is_err() {
                    return; // the daemon is stopping
                }
                match rx.await {
                    Ok(a) => a,
                    Err(_) => return,
                }
            }
        },
    };
    let (reply, live) = match answer {
        Answer::Once(r) => (r, None),
        Answer::Follow(r, rx) => (r, Some(rx)),
    };
    if !write_line(&mut stream, &reply).await {
        return;
    }
    if let Some(rx) = live {
        forward(stream, rx).await;
    }
}

/// One JSON line, within WRITE_TIMEOUT; false if it could not be written.
async fn write_line<W: tokio::io::AsyncWrite + Unpin, T: Serialize>(w: &mut W, v: &T) -> bool {
    let text = format!("{}\n", serde_json::to_string(v).unwrap());
    matches!(
        tokio::time::timeout(WRITE_TIMEOUT, w.write_all(text.as_bytes())).await,
        Ok(Ok(()))
    )
}

/// Journal entries to a follower as they come.
async fn forward(stream: tokio::net::UnixStream, mut rx: broadcast::Receiver<Entry>) {
    let (mut rd, mut wr) = stream.into_split();
    let mut sink = [0u8; 256];
    loop {
        let entry = tokio::select! {
            got = rx.recv() => match got {
                Ok(e) => e,
                Err(broadcast::error::RecvError::Lagged(n)) => Entry {
                    seq: 0,
                    unix_ms: crate::journal::unix_ms_now(),
                    what: What::Missed { count: n },
                },
                Err(broadcast::error::RecvError::Closed) => return,
            },
            // The client sends nothing more: data or end both end it.
            _ = rd.read(&mut sink) => return,
        };
        if !write_line(&mut wr, &entry).await {
            return;
        }
    }
}
