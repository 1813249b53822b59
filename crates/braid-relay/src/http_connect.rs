//! HTTP CONNECT (RFC 9110 section 9.3.6), the proxy method browsers and
//! most tools speak, sans-IO: parse the request head, build the answers.

use crate::wire::{Destination, Status};

/// The longest request head accepted (browsers send well under 2 KiB).
pub const MAX_HEAD: usize = 16 * 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    /// The whole answer to send before closing.
    pub answer: Vec<u8>,
    pub why: String,
}

fn error(code: u16, reason: &str, why: String) -> HttpError {
    HttpError {
        answer: response(code, reason, &why),
        why,
    }
}

/// Parse a request head. `Ok(None)`: more bytes needed. `Ok(Some((dest,
/// used)))`: a CONNECT to `dest`, the head being `used` bytes (bytes after
/// it are the tunnel's first data).
pub fn parse_request(b: &[u8]) -> Result<Option<(Destination, usize)>, HttpError> {
    let Some(end) = find_head_end(b) else {
        if b.len() >= MAX_HEAD {
            return Err(error(
                431,
                "Request Header Fields Too Large",
                format!("request head over {MAX_HEAD} bytes"),
            ));
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&b[..end])
        .map_err(|_| error(400, "Bad Request", "the request head is not UTF-8".into()))?;
    let line = head.lines().next().unwrap_or("");
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next(), parts.next(), parts.next());
    let (Some(method), Some(target), Some(version)) = (method, target, version) else {
        return Err(error(
            400,
            "Bad Request",
            format!("malformed request line '{}'", line.escape_default()),
        ));
    };
    if !version.starts_with("HTTP/1.") || parts.next().is_some() {
        return Err(error(
            400,
            "Bad Request",
            format!("malformed request line '{}'", line.escape_default()),
        ));
    }
    if method != "CONNECT" {
        return Err(error(
            405,
            "Method Not Allowed",
            format!(
                "only CONNECT is proxied here, not {}: configure this listener as an HTTPS proxy, or use the SOCKS5 listener",
                method.escape_default()
            ),
        ));
    }
    let dest = Destination::parse(target).map_err(|e| {
        error(
            400,
            "Bad Request",
            format!("CONNECT target '{}': {e}", target.escape_default()),
        )
    })?;
    Ok(Some((dest, end)))
}

fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

/// The answer to a CONNECT whose relay request ended with `status`.
pub fn answer(status: Status, reason: &str) -> Vec<u8> {
    match status {
        Status::Connected => b"HTTP/1.1 200 Connection established\r\n\r\n".to_vec(),
        Status::NotAllowed => response(403, "Forbidden", reason),
        Status::TimedOut => response(504, "Gateway Timeout", reason),
        _ => response(502, "Bad Gateway", reason),
    }
}

fn response(code: u16, reason: &str, body: &str) -> Vec<u8> {
    let body = format!("{body}\n");
    format!(
        "HTTP/1.1 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_requests() {
        let req = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nTLS";
        for cut in 0..req.len() - 3 {
            assert_eq!(parse_request(&req[..cut]), Ok(None), "{cut}");
        }
        let (d, used) = parse_request(req).unwrap().unwrap();
        assert_eq!(d, Destination::parse("example.com:443").unwrap());
        assert_eq!(&req[used..], b"TLS");
        let (d, _) = parse_request(b"CONNECT [2001:db8::1]:443 HTTP/1.0\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(d.to_string(), "[2001:db8::1]:443");
    }

    #[test]
    fn refusals_answer_with_the_reason() {
        let e = parse_request(b"GET http://a/ HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(e.answer.starts_with(b"HTTP/1.1 405"));
        let e = parse_request(b"CONNECT example.com HTTP/1.1\r\n\r\n").unwrap_err();
        assert!(e.answer.starts_with(b"HTTP/1.1 400") && e.why.contains("no port"));
        let e = parse_request(b"CONNECT a:1 SPDY\r\n\r\n").unwrap_err();
        assert!(e.answer.starts_with(b"HTTP/1.1 400"));
        let big = vec![b'a'; MAX_HEAD];
        assert!(parse_request(&big)
            .unwrap_err()
            .answer
            .starts_with(b"HTTP/1.1 431"));
        assert!(answer(Status::NotAllowed, "x").starts_with(b"HTTP/1.1 403"));
        assert!(answer(Status::ConnectionRefused, "x").starts_with(b"HTTP/1.1 502"));
        assert!(answer(Status::Connected, "").starts_with(b"HTTP/1.1 200"));
    }
}
