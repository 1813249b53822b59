//! The relay protocol's messages, sans-IO: what the client asks in its
//! first message, what the relay answers, and the framing of everything
//! after. Every decoder takes untrusted bytes and returns an error, never
//! panics.
//!
//! On the wire every Noise message is preceded by its length (16 bits, big
//! endian), as the Noise specification suggests for stream transports:
//!
//! ```text
//! client -> relay  len | Noise IK message 1 (e, es, s, ss)  payload: Request
//! relay -> client  len | Noise IK message 2 (e, ee, se)     payload: Reply
//! both ways        len | transport message                  payload: Frame
//! ```
//!
//! Request: version (1), kind (1 = TCP stream, 2 = DNS over TCP to the
//! relay's resolver), timestamp (u64, Unix ms),
//! destination (SOCKS5 style: type 1 IPv4, 3 name, 4 IPv6; then port),
//! then any early data (bytes for the destination, sent once connected).
//! Reply: status (u8), reason length (u8) and reason (UTF-8).
//! Frame: type (0 data, 1 end of stream, 2 reset), then data.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::Serialize;

use crate::noise::{MAX_MESSAGE, MAX_PLAINTEXT};

pub const VERSION: u8 = 1;
pub const LENGTH_PREFIX: usize = 2;
/// The largest data payload of one frame.
pub const MAX_FRAME_DATA: usize = MAX_PLAINTEXT - 1;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    #[error("message too short: {0}")]
    Short(&'static str),
    #[error("unsupported protocol version {0} (this Braid speaks version {VERSION})")]
    Version(u8),
    #[error("unknown {what} {value}")]
    Unknown { what: &'static str, value: u8 },
    #[error("invalid destination: {0}")]
    Destination(String),
}

/// Where a relayed connection goes: an address, or a name the relay
/// resolves.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
#[serde(untagged)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Destination {
    pub host: Host,
    pub port: u16,
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]:{}", self.port),
            Host::Ip(a) => write!(f, "{a}:{}", self.port),
            Host::Name(n) => write!(f, "{n}:{}", self.port),
        }
    }
}

impl From<SocketAddr> for Destination {
    fn from(a: SocketAddr) -> Destination {
        Destination {
            host: Host::Ip(a.ip()),
            port: a.port(),
        }
    }
}

/// A host name as DNS allows it: 1 to 253 characters of letters, digits,
/// '-', '_' and '.', no empty label. Anything else never reaches a resolver.
pub fn check_name(name: &str) -> Result<(), WireError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    if trimmed.is_empty() || name.len() > 253 {
        return Err(WireError::Destination(format!(
            "a host name has 1 to 253 characters, this one {}",
            name.len()
        )));
    }
    if !trimmed.chars().all(ok_char) {
        return Err(WireError::Destination(format!(
            "'{}' is not a host name (letters, digits, '-', '_' and '.' only)",
            name.escape_default()
        )));
    }
    if trimmed.split('.').any(|l| l.is_empty() || l.len() > 63) {
        return Err(WireError::Destination(format!(
            "'{name}' has an empty label or one over 63 characters"
        )));
    }
    Ok(())
}

impl Destination {
    /// Parse `host:port`, `[v6]:port` or `v4:port`.
    pub fn parse(s: &str) -> Result<Destination, WireError> {
        if let Ok(a) = s.parse::<SocketAddr>() {
            return Destination::from(a).checked();
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            WireError::Destination(format!(
                "'{}' has no port (expected HOST:PORT)",
                s.escape_default()
            ))
        })?;
        let port: u16 = port.parse().map_err(|_| {
            WireError::Destination(format!("'{}' is not a port number", port.escape_default()))
        })?;
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = match host.parse::<IpAddr>() {
            Ok(ip) => Host::Ip(ip),
            Err(_) => Host::Name(host.to_ascii_lowercase()),
        };
        Destination { host, port }.checked()
    }

    fn checked(self) -> Result<Destination, WireError> {
        if self.port == 0 {
            return Err(WireError::Destination("port 0".into()));
        }
        if let Host::Name(n) = &self.host {
            check_name(n)?;
        }
        Ok(self)
    }

    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.host {
            Host::Ip(IpAddr::V4(a)) => {
                out.push(1);
                out.extend_from_slice(&a.octets());
            }
            Host::Ip(IpAddr::V6(a)) => {
                out.push(4);
                out.extend_from_slice(&a.octets());
            }
            Host::Name(n) => {
                out.push(3);
                out.push(n.len() as u8);
                out.extend_from_slice(n.as_bytes());
            }
        }
        out.extend_from_slice(&self.port.to_be_bytes());
    }

    /// Decode one destination; returns it and the bytes it used.
    pub fn decode(b: &[u8]) -> Result<(Destination, usize), WireError> {
        let kind = *b.first().ok_or(WireError::Short("destination type"))?;
        let (host, used) = match kind {
            1 => {
                let a: [u8; 4] = take(b, 1, 4, "IPv4 address")?.try_into().unwrap();
                (Host::Ip(IpAddr::V4(Ipv4Addr::from(a))), 5)
            }
            4 => {
                let a: [u8; 16] = take(b, 1, 16, "IPv6 address")?.try_into().unwrap();
                (Host::Ip(IpAddr::V6(Ipv6Addr::from(a))), 17)
            }
            3 => {
                let len = *b.get(1).ok_or(WireError::Short("name length"))? as usize;
                let raw = take(b, 2, len, "name")?;
                let name = std::str::from_utf8(raw)
                    .map_err(|_| WireError::Destination("the name is not UTF-8".into()))?;
                check_name(name)?;
                (Host::Name(name.to_ascii_lowercase()), 2 + len)
            }
            other => {
                return Err(WireError::Unknown {
                    what: "destination type",
                    value: other,
                })
            }
        };
        let port = u16::from_be_bytes(take(b, used, 2, "port")?.try_into().unwrap());
        let d = Destination { host, port }.checked()?;
        Ok((d, used + 2))
    }
}

fn take<'a>(b: &'a [u8], at: usize, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
    b.get(at..at + n).ok_or(WireError::Short(what))
}

/// What a relayed connection carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A TCP stream to the destination.
    Tcp = 1,
    /// DNS over TCP (RFC 7766) to the relay's own resolver; the destination
    /// is ignored. Names are then resolved where the traffic leaves.
    Dns = 2,
    /// Is the relay there? Answered at once, nothing relayed.
    Ping = 3,
    /// A UDP flow to the destination: each data frame one datagram; the
    /// early data, if any, is the first datagram.
    Udp = 4,
}

/// The client's request, in its first message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: Kind,
    /// The client's clock, Unix milliseconds: with the ephemeral key, what
    /// lets the relay refuse a replayed first message.
    pub timestamp_ms: u64,
    pub destination: Destination,
    /// Bytes for the destination the client already had (at most what fits
    /// in the first message).
    pub early_data: Vec<u8>,
}

/// Room for early data in a first message beside a destination of this size.
pub fn early_data_room(destination: &Destination) -> usize {
    let mut d = Vec::new();
    destination.encode(&mut d);
    MAX_MESSAGE - crate::noise::FIRST_MESSAGE_OVERHEAD - 10 - d.len()
}

impl Request {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.early_data.len());
        out.push(VERSION);
        out.push(self.kind as u8);
        out.extend_from_slice(&self.timestamp_ms.to_be_bytes());
        self.destination.encode(&mut out);
        out.extend_from_slice(&self.early_data);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Request, WireError> {
        let version = *b.first().ok_or(WireError::Short("version"))?;
        if version != VERSION {
            return Err(WireError::Version(version));
        }
        let kind = match *b.get(1).ok_or(WireError::Short("kind"))? {
            1 => Kind::Tcp,
            2 => Kind::Dns,
            3 => Kind::Ping,
            4 => Kind::Udp,
            other => {
                return Err(WireError::Unknown {
                    what: "request kind",
                    value: other,
                })
            }
        };
        let ts = u64::from_be_bytes(take(b, 2, 8, "timestamp")?.try_into().unwrap());
        let (destination, used) = Destination::decode(&b[10..])?;
        Ok(Request {
            kind,
            timestamp_ms: ts,
            destination,
            early_data: b[10 + used..].to_vec(),
        })
    }
}

/// The relay's answer to a request. The codes follow SOCKS5's replies
/// (RFC 1928), so a SOCKS client hears exactly what happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Connected = 0,
    GeneralFailure = 1,
    NotAllowed = 2,
    NetworkUnreachable = 3,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    TimedOut = 6,
    Unsupported = 7,
}

impl Status {
    pub fn from_u8(v: u8) -> Option<Status> {
        Some(match v {
            0 => Status::Connected,
            1 => Status::GeneralFailure,
            2 => Status::NotAllowed,
            3 => Status::NetworkUnreachable,
            4 => Status::HostUnreachable,
            5 => Status::ConnectionRefused,
            6 => Status::TimedOut,
            7 => Status::Unsupported,
            _ => return None,
        })
    }

    /// The SOCKS5 reply code for this status.
    pub fn socks_code(self) -> u8 {
        match self {
            // SOCKS has no "timed out" for a connect: host unreachable is
            // what clients (curl, browsers) understand.
            Status::TimedOut => 4,
            other => other as u8,
        }
    }

    /// How the status reads in a log line or an HTTP reply.
    pub fn describe(self) -> &'static str {
        match self {
            Status::Connected => "connected",
            Status::GeneralFailure => "relay failure",
            Status::NotAllowed => "destination not allowed by the relay",
            Status::NetworkUnreachable => "network unreachable from the relay",
            Status::HostUnreachable => "host unreachable from the relay",
            Status::ConnectionRefused => "connection refused by the destination",
            Status::TimedOut => "the destination did not answer in time",
            Status::Unsupported => "request not supported by the relay",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: Status,
    /// Why, for the client's log (the client is authenticated by now).
    pub reason: String,
}

impl Reply {
    pub fn connected() -> Reply {
        Reply {
            status: Status::Connected,
            reason: String::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut reason = self.reason.as_bytes();
        if reason.len() > 255 {
            let mut cut = 255;
            while !self.reason.is_char_boundary(cut) {
                cut -= 1;
            }
            reason = &reason[..cut];
        }
        let mut out = vec![self.status as u8, reason.len() as u8];
        out.extend_from_slice(reason);
        out
    }

    pub fn decode(b: &[u8]) -> Result<Reply, WireError> {
        let code = *b.first().ok_or(WireError::Short("status"))?;
        let status = Status::from_u8(code).ok_or(WireError::Unknown {
            what: "status",
            value: code,
        })?;
        let len = *b.get(1).ok_or(WireError::Short("reason length"))? as usize;
        let reason = String::from_utf8_lossy(take(b, 2, len, "reason")?).into_owned();
        Ok(Reply { status, reason })
    }
}

/// What a transport frame says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Stream bytes.
    Data = 0,
    /// The sender will send no more (a half-close, authenticated: a TCP FIN
    /// without it is a truncation, handled as a reset).
    End = 1,
    /// The sender's side was reset: reset yours.
    Reset = 2,
}

impl FrameKind {
    pub fn from_u8(v: u8) -> Result<FrameKind, WireError> {
        match v {
            0 => Ok(FrameKind::Data),
            1 => Ok(FrameKind::End),
            2 => Ok(FrameKind::Reset),
            other => Err(WireError::Unknown {
                what: "frame type",
                value: other,
            }),
        }
    }
}

/// Split a decrypted frame into its kind and data.
pub fn parse_frame(plain: &[u8]) -> Result<(FrameKind, &[u8]), WireError> {
    let kind = FrameKind::from_u8(*plain.first().ok_or(WireError::Short("frame type"))?)?;
    let data = &plain[1..];
    if kind != FrameKind::Data && !data.is_empty() {
        return Err(WireError::Short("control frames carry no data"));
    }
    Ok((kind, data))
}

/// The length prefix of a message of `n` bytes.
pub fn length_prefix(n: usize) -> [u8; LENGTH_PREFIX] {
    debug_assert!(n <= MAX_MESSAGE);
    (n as u16).to_be_bytes()
}

/// Reassembles length-prefixed messages from a byte stream, in a fixed
/// buffer (two whole messages), so reading costs no allocation.
pub struct MessageReader {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Default for MessageReader {
    fn default() -> Self {
        MessageReader::new()
    }
}

impl MessageReader {
    pub const CAPACITY: usize = 2 * (MAX_MESSAGE + LENGTH_PREFIX);

    pub fn new() -> MessageReader {
        MessageReader {
            buf: vec![0u8; Self::CAPACITY].into_boxed_slice(),
            start: 0,
            end: 0,
        }
    }

    /// Space to read more stream bytes into (never empty while every
    /// complete message is taken out); then call [`MessageReader::filled`].
    pub fn spare(&mut self) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < MAX_MESSAGE + LENGTH_PREFIX {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        &mut self.buf[self.end..]
    }

    /// After reading `n` bytes into the last [`MessageReader::spare`] slice.
    pub fn filled(&mut self, n: usize) {
        self.end = (self.end + n).min(self.buf.len());
    }

    /// Add bytes (for callers that already hold them); returns how many fit.
    pub fn push(&mut self, data: &[u8]) -> usize {
        let s = self.spare();
        let n = data.len().min(s.len());
        s[..n].copy_from_slice(&data[..n]);
        self.filled(n);
        n
    }

    /// The next complete message, if one has arrived.
    pub fn next_message(&mut self) -> Option<&[u8]> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < LENGTH_PREFIX {
            return None;
        }
        let n = u16::from_be_bytes([avail[0], avail[1]]) as usize;
        if avail.len() < LENGTH_PREFIX + n {
            return None;
        }
        let at = self.start + LENGTH_PREFIX;
        self.start = at + n;
        Some(&self.buf[at..at + n])
    }

    /// The length announced by the next message's prefix, once it is there.
    pub fn peek_length(&self) -> Option<usize> {
        let avail = &self.buf[self.start..self.end];
        (avail.len() >= LENGTH_PREFIX).then(|| u16::from_be_bytes([avail[0], avail[1]]) as usize)
    }

    /// Bytes received but not yet part of a complete message.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_round_trip_and_refuse_junk() {
        for s in ["10.1.2.3:80", "[2001:db8::1]:443", "example.com:8443"] {
            let d = Destination::parse(s).unwrap();
            let mut b = Vec::new();
            d.encode(&mut b);
            let (back, used) = Destination::decode(&b).unwrap();
            assert_eq!(back, d);
            assert_eq!(used, b.len());
            assert_eq!(back.to_string(), s);
        }
        assert_eq!(
            Destination::parse("Example.COM:80").unwrap().host,
            Host::Name("example.com".into())
        );
        for bad in [
            "example.com",
            "example.com:0",
            "example.com:99999",
            "exa mple.com:80",
            "a..b:80",
            ":80",
            "evil\n.com:80",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
        assert!(Destination::decode(&[9, 0, 0]).is_err());
        assert!(Destination::decode(&[3, 200, b'a']).is_err());
        assert!(Destination::decode(&[1, 1, 2, 3]).is_err());
        assert!(Destination::decode(&[]).is_err());
        let long = format!("{}.com:80", "a".repeat(64));
        assert!(Destination::parse(&long).is_err());
    }

    #[test]
    fn requests_and_replies_round_trip() {
        let r = Request {
            kind: Kind::Tcp,
            timestamp_ms: 1_790_000_000_000,
            destination: Destination::parse("example.com:443").unwrap(),
            early_data: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
        };
        assert_eq!(Request::decode(&r.encode()).unwrap(), r);
        let mut v2 = r.encode();
        v2[0] = 2;
        assert_eq!(Request::decode(&v2).unwrap_err(), WireError::Version(2));
        for cut in 0..12 {
            assert!(Request::decode(&r.encode()[..cut]).is_err(), "{cut}");
        }
        let reply = Reply {
            status: Status::NotAllowed,
            reason: "é".repeat(200),
        };
        let back = Reply::decode(&reply.encode()).unwrap();
        assert_eq!(back.status, Status::NotAllowed);
        assert!(back.reason.len() <= 255 && back.reason.starts_with('é'));
        assert!(Reply::decode(&[99, 0]).is_err());
        assert!(Reply::decode(&[0, 5, b'a']).is_err());
        assert_eq!(Status::TimedOut.socks_code(), 4);
        assert!(early_data_room(&r.destination) > 60_000);
    }

    #[test]
    fn frames_parse() {
        assert_eq!(
            parse_frame(&[0, 1, 2]).unwrap(),
            (FrameKind::Data, &[1u8, 2][..])
        );
        assert_eq!(parse_frame(&[1]).unwrap().0, FrameKind::End);
        assert!(parse_frame(&[1, 0]).is_err());
        assert!(parse_frame(&[7]).is_err());
        assert!(parse_frame(&[]).is_err());
    }

    #[test]
    fn message_reader_reassembles_any_split() {
        let msgs: Vec<Vec<u8>> = vec![vec![1; 3], vec![], vec![2; 70_000 % 65_535], vec![3; 10]];
        let mut stream = Vec::new();
        for m in &msgs {
            stream.extend_from_slice(&length_prefix(m.len()));
            stream.extend_from_slice(m);
        }
        for chunk in [1, 2, 7, 1000, stream.len()] {
            let mut r = MessageReader::new();
            let mut got = Vec::new();
            for c in stream.chunks(chunk) {
                let mut c = c;
                while !c.is_empty() {
                    let n = r.push(c);
                    c = &c[n..];
                    while let Some(m) = r.next_message() {
                        got.push(m.to_vec());
                    }
                }
            }
            assert_eq!(got, msgs, "chunk {chunk}");
            assert_eq!(r.pending(), 0);
        }
    }
}
