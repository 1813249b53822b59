//! Serving the metrics: a minimal HTTP/1.1 responder for `GET /metrics`
//! (one request per connection, then close) and the textfile for
//! node_exporter. The text itself comes from the event loop, which owns
//! the data (see `metrics::render`).
//!
//! Like the control socket, each scraper is served in its own task with a
//! bounded request size and read and write deadlines, and at most
//! [`MAX_SCRAPERS`] at once (more are answered 503 and closed): a slow or
//! hostile client never holds the event loop, and a crowd of them holds
//! nothing but a few bounded buffers.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::CONTENT_TYPE;

/// The request head (request line and headers) is at most this long.
pub const MAX_REQUEST_HEAD: usize = 8192;
/// Scrapers served at once.
pub const MAX_SCRAPERS: usize = 4;
/// A client has this long to send its request ...
pub const READ_TIMEOUT: Duration = Duration::from_secs(2);
/// ... and to take the answer.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `GET /metrics` (`head`: HEAD, the same without the body).
    Metrics {
        head: bool,
    },
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

/// The route of a request head (the bytes up to the empty line).
pub fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let line = text.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split(['?', '#']).next().unwrap_or("");
    if path != "/metrics" {
        return Route::NotFound;
    }
    match method {
        "GET" => Route::Metrics { head: false },
        "HEAD" => Route::Metrics { head: true },
        _ => Route::MethodNotAllowed,
    }
}

/// A complete response, closing the connection.
pub fn response(status: &str, content_type: &str, body: &str, head_only: bool) -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        r.push_str("Allow: GET, HEAD\r\n");
    }
    r.push_str("\r\n");
    let mut bytes = r.into_bytes();
    if !head_only {
        bytes.extend_from_slice(body.as_bytes());
    }
    bytes
}

fn plain(status: &str, body: &str) -> Vec<u8> {
    response(status, "text/plain; charset=utf-8", body, false)
}

/// The answer a scraper gets when [`MAX_SCRAPERS`] are already served.
pub fn busy_response() -> Vec<u8> {
    plain(
        "503 Service Unavailable",
        "the daemon is serving other scrapers; try again\n",
    )
}

enum ReadError {
    TooLarge,
    Closed,
}

/// The request head: bytes up to and including the first empty line.
async fn read_head<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> Result<Vec<u8>, ReadError> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        let n = r.read(&mut chunk).await.map_err(|_| ReadError::Closed)?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_REQUEST_HEAD {
            return Err(ReadError::TooLarge);
        }
    }
}

/// Where the head ends (after "\r\n\r\n", or "\n\n" from lax clients).
fn head_end(b: &[u8]) -> Option<usize> {
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A scrape on its way to the event loop, with where the text goes.
pub type Scrape = oneshot::Sender<String>;

/// Serve one HTTP client from its own task: read one request (bounded,
/// with a deadline), ask the event loop for the text if it is a scrape,
/// write one response (with a deadline) and close.
pub async fn serve(mut stream: tokio::net::TcpStream, to_loop: mpsc::Sender<Scrape>) {
    let answer = match tokio::time::timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) | Ok(Err(ReadError::Closed)) => return,
        Ok(Err(ReadError::TooLarge)) => plain(
            "431 Request Header Fields Too Large",
            &format!("request head over {MAX_REQUEST_HEAD} bytes\n"),
        ),
        Ok(Ok(head)) => match route(&head) {
            Route::Metrics { head: head_only } => {
                let (tx, rx) = oneshot::channel();
                if to_loop.send(tx).await.is_err() {
                    return; // the daemon is stopping
                }
                let Ok(text) = rx.await else { return };
                response("200 OK", CONTENT_TYPE, &text, head_only)
            }
            Route::NotFound => plain("404 Not Found", "the metrics are at /metrics\n"),
            Route::MethodNotAllowed => plain("405 Method Not Allowed", "GET or HEAD only\n"),
            Route::BadRequest => plain("400 Bad Request", "not an HTTP/1 request\n"),
        },
    };
    let write = async {
        stream.write_all(&answer).await?;
        stream.shutdown().await
    };
    let _ = tokio::time::timeout(WRITE_TIMEOUT, write).await;
}

/// Write `text` to `path` for node_exporter: a temporary file in the same
/// directory (named so the collector, which reads only `*.prom`, never
/// sees it half written), renamed over the target.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let r = |s: &str| route(s.as_bytes());
        assert_eq!(
            r("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            r("GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Route::Metrics { head: false }
        );
        assert_eq!(
            r("HEAD /metrics HTTP/1.1\r\n\r\n"),
            Route::Metrics { head: true }
        );
        assert_eq!(r("GET / HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("GET /metricsx HTTP/1.1\r\n\r\n"), Route::NotFound);
        assert_eq!(r("POST /metrics HTTP/1.1\r\n\r\n"), Route::MethodNotAllowed);
        assert_eq!(r("GET /metrics\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("GET metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(r("SSH-2.0-OpenSSH\r\n\r\n"), Route::BadRequest);
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\xff\r\n\r\n"),
            Route::BadRequest
        );
    }

    #[test]
    fn heads_end_at_the_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n"), None);
    }

    #[test]
    fn responses_say_their_length_and_close() {
        let r = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", false)).unwrap();
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("\r\nContent-Length: 4\r\n") && r.contains("\r\nConnection: close\r\n"));
        assert!(r.contains("Content-Type: text/plain; version=0.0.4"));
        assert!(r.ends_with("\r\n\r\nabc\n"));
        let h = String::from_utf8(response("200 OK", CONTENT_TYPE, "abc\n", true)).unwrap();
        assert!(h.contains("Content-Length: 4\r\n") && h.ends_with("\r\n\r\n"));
        let m = String::from_utf8(plain("405 Method Not Allowed", "x")).unwrap();
        assert!(m.contains("\r\nAllow: GET, HEAD\r\n"));
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = std::env::temp_dir().join(format!("braid-textfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("braid.prom");
        write_textfile(&f, "a 1\n").unwrap();
        write_textfile(&f, "a 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "a 2\n");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "no temporary file left: {left:?}");
        assert!(write_textfile(&dir.join("missing/braid.prom"), "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
