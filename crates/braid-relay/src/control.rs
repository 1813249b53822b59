//! The status socket of a relay server or client (`braid relay status`):
//! one JSON request and one JSON reply per connection, bounded in size,
//! time and number so a stuck client cannot hold the service.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::sync::Semaphore;

use crate::stats::Status;
use crate::RelayError;

const MAX_REQUEST: u64 = 4096;
const IO_TIMEOUT: Duration = Duration::from_secs(2);
const MAX_AT_ONCE: usize = 16;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// A bound status socket, removed when dropped.
pub struct ControlListener {
    listener: Option<std::os::unix::net::UnixListener>,
    path: PathBuf,
}

impl ControlListener {
    pub fn bind(path: &Path) -> Result<ControlListener, RelayError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                RelayError::Io(format!(
                    "cannot create {} for the status socket: {e}",
                    dir.display()
                ))
            })?;
        }
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(RelayError::Io(format!(
                    "{} answers already: another relay (or relay client) with the same control_socket is running",
                    path.display()
                )));
            }
            // Left by a process that died: nobody listens on it.
            let _ = std::fs::remove_file(path);
        }
        let listener = std::os::unix::net::UnixListener::bind(path).map_err(|e| {
            RelayError::Io(format!(
                "cannot create the status socket {}: {e}",
                path.display()
            ))
        })?;
        let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        listener
            .set_nonblocking(true)
            .map_err(|e| RelayError::Io(e.to_string()))?;
        Ok(ControlListener {
            listener: Some(listener),
            path: path.to_path_buf(),
        })
    }

    /// Answer status requests with what `status` makes of (a clone of)
    /// `state`, until dropped.
    pub async fn serve<S, F, Fut>(mut self, state: S, status: F)
    where
        S: Clone + Send + Sync + 'static,
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Status> + Send,
    {
        let Some(std) = self.listener.take() else {
            return;
        };
        let Ok(listener) = tokio::net::UnixListener::from_std(std) else {
            return;
        };
        let status = Arc::new(move || status(state.clone()));
        let slots = Arc::new(Semaphore::new(MAX_AT_ONCE));
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            // Over the limit: the newcomer waits for a slot, not the others.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let status = status.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, &*status)).await;
            });
        }
    }
}

async fn answer<F, Fut>(stream: tokio::net::UnixStream, status: &F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Status>,
{
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut limited = tokio::io::BufReader::new(r.take(MAX_REQUEST));
    if limited.read_line(&mut line).await.is_err() {
        return;
    }
    let reply = match serde_json::from_str::<Request>(line.trim()) {
        Ok(Request::Status) => Reply {
            ok: true,
            error: None,
            status: Some(status().await),
        },
        Err(e) => Reply {
            ok: false,
            error: Some(format!("bad request: {e}")),
            status: None,
        },
    };
    let mut out = serde_json::to_vec(&reply).expect("status always serializes");
    out.push(b'\n');
    let _ = w.write_all(&out).await;
}

impl Drop for ControlListener {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Ask a running relay or relay client for its status (blocking; for the CLI).
pub fn request_status(socket: &Path) -> Result<Status, String> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => format!(
            "nothing answers on {}: is 'braid relay serve' or 'braid relay connect' running (and is this its control_socket)?",
            socket.display()
        ),
        std::io::ErrorKind::PermissionDenied => format!(
            "permission denied on {}: run as the relay's user or as root",
            socket.display()
        ),
        _ => format!("cannot reach {}: {e}", socket.display()),
    })?;
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    writeln!(
        s,
        "{}",
        serde_json::to_string(&Request::Status).expect("serializes")
    )
    .map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| format!("no answer from {}: {e}", socket.display()))?;
    let reply: Reply = serde_json::from_str(&line).map_err(|e| format!("malformed answer: {e}"))?;
    match (reply.ok, reply.status) {
        (true, Some(s)) => Ok(s),
        _ => Err(reply
            .error
            .unwrap_or_else(|| "no status in the answer".into())),
    }
}
