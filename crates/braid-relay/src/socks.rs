//! SOCKS5 (RFC 1928), the server side the relay client offers to programs,
//! sans-IO: parsers that take the bytes read so far and say whether a whole
//! message is there, and encoders for the replies. No authentication: the
//! listener is meant for the local host (a LAN listener is the operator's
//! choice, warned about at start).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::wire::{self, Destination, Host};

pub const VERSION: u8 = 5;
pub const NO_AUTH: u8 = 0x00;
pub const NO_ACCEPTABLE_METHOD: u8 = 0xff;
pub const CMD_CONNECT: u8 = 1;
pub const CMD_BIND: u8 = 2;
pub const CMD_UDP_ASSOCIATE: u8 = 3;
pub const REPLY_GENERAL_FAILURE: u8 = 1;
pub const REPLY_COMMAND_NOT_SUPPORTED: u8 = 7;
pub const REPLY_ADDRESS_TYPE_NOT_SUPPORTED: u8 = 8;

/// A request the client cannot be served, with the bytes to answer it
/// (if the protocol has an answer) and why, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SocksError {
    pub answer: Option<Vec<u8>>,
    pub why: String,
}

fn fail(answer: Option<Vec<u8>>, why: impl Into<String>) -> SocksError {
    SocksError {
        answer,
        why: why.into(),
    }
}

/// The method-selection message. `Ok(None)` means more bytes are needed;
/// `Ok(Some((answer, used)))` gives the answer to send and the bytes used.
pub fn parse_greeting(b: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SocksError> {
    let Some(&ver) = b.first() else {
        return Ok(None);
    };
    if ver != VERSION {
        let why = if ver == 4 {
            "a SOCKS4 request: only SOCKS5 is supported (e.g. curl --socks5-hostname, or socks5h:// URLs)".to_string()
        } else if ver.is_ascii_uppercase() {
            "an HTTP request on the SOCKS port: use the HTTP CONNECT listener for HTTP proxies"
                .to_string()
        } else {
            format!("not a SOCKS5 request (first byte {ver:#04x})")
        };
        return Err(fail(None, why));
    }
    let Some(&n) = b.get(1) else {
        return Ok(None);
    };
    let Some(methods) = b.get(2..2 + n as usize) else {
        return Ok(None);
    };
    if !methods.contains(&NO_AUTH) {
        return Err(fail(
            Some(vec![VERSION, NO_ACCEPTABLE_METHOD]),
            "the client offers no method without authentication, the only one this listener has",
        ));
    }
    Ok(Some((vec![VERSION, NO_AUTH], 2 + n as usize)))
}

/// What the client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Connect(Destination),
    /// A UDP association: datagrams to any destination through the relay
    /// while the request's TCP connection stays open.
    UdpAssociate,
}

/// The request after method selection; same conventions as
/// [`parse_greeting`].
pub fn parse_request(b: &[u8]) -> Result<Option<(Command, usize)>, SocksError> {
    if b.len() < 4 {
        return Ok(None);
    }
    if b[0] != VERSION {
        return Err(fail(None, format!("request version {} instead of 5", b[0])));
    }
    // Commands other than CONNECT are answered at once: their address
    // (often 0.0.0.0:0) does not matter.
    match b[1] {
        CMD_CONNECT => {}
        CMD_BIND => {
            return Err(fail(
                Some(reply(REPLY_COMMAND_NOT_SUPPORTED, None)),
                "BIND is not supported (no program in common use needs it)",
            ))
        }
        CMD_UDP_ASSOCIATE => {
            // The address is where the client will send from, often
            // 0.0.0.0:0: only its length matters.
            let len = match b[3] {
                1 => 4,
                4 => 16,
                3 => match b.get(4) {
                    Some(n) => 1 + *n as usize,
                    None => return Ok(None),
                },
                other => {
                    return Err(fail(
                        Some(reply(REPLY_ADDRESS_TYPE_NOT_SUPPORTED, None)),
                        format!("address type {other} is not one of IPv4 (1), name (3), IPv6 (4)"),
                    ))
                }
            };
            let used = 4 + len + 2;
            return Ok((b.len() >= used).then_some((Command::UdpAssociate, used)));
        }
        other => {
            return Err(fail(
                Some(reply(REPLY_COMMAND_NOT_SUPPORTED, None)),
                format!("unknown command {other}"),
            ))
        }
    }
    // The address's length tells where the request ends.
    match wire::Destination::decode(&b[3..]) {
        Ok((dest, used)) => Ok(Some((Command::Connect(dest), 3 + used))),
        Err(wire::WireError::Short(_)) => {
            // Only more bytes can tell; a name of up to 255 bytes makes at
            // most 262 bytes in all.
            if b.len() >= 262 {
                return Err(fail(
                    Some(reply(REPLY_GENERAL_FAILURE, None)),
                    "malformed request",
                ));
            }
            Ok(None)
        }
        Err(wire::WireError::Unknown { value, .. }) => Err(fail(
            Some(reply(REPLY_ADDRESS_TYPE_NOT_SUPPORTED, None)),
            format!("address type {value} is not one of IPv4 (1), name (3), IPv6 (4)"),
        )),
        Err(e) => Err(fail(
            Some(reply(REPLY_GENERAL_FAILURE, None)),
            format!("bad destination: {e}"),
        )),
    }
}

/// A UDP datagram of an association (RFC 1928 section 7): its destination
/// and data. Fragments are not supported (nobody sends them) and refused.
pub fn parse_udp(d: &[u8]) -> Result<(Destination, &[u8]), String> {
    if d.len() < 4 {
        return Err("a SOCKS5 UDP datagram shorter than its header".into());
    }
    if d[2] != 0 {
        return Err("a fragmented SOCKS5 UDP datagram (not supported)".into());
    }
    let (dest, used) = wire::Destination::decode(&d[3..]).map_err(|e| e.to_string())?;
    Ok((dest, &d[3 + used..]))
}

/// The header of a datagram coming back from `from`.
pub fn udp_header(from: &Destination) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    from.encode(&mut h);
    h
}

/// A reply with `code` (0 = success) and the bound address (zeros when
/// there is none to tell).
pub fn reply(code: u8, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0));
    let mut out = vec![VERSION, code, 0];
    Destination {
        host: Host::Ip(bound.ip()),
        port: bound.port(),
    }
    .encode(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greeting() {
        assert_eq!(parse_greeting(&[]), Ok(None));
        assert_eq!(parse_greeting(&[5]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 2, 0, 9]), Ok(Some((vec![5, 0], 4))));
        let e = parse_greeting(&[5, 1, 2]).unwrap_err();
        assert_eq!(e.answer, Some(vec![5, 0xff]));
        assert!(parse_greeting(&[4, 1]).unwrap_err().why.contains("SOCKS4"));
        assert!(parse_greeting(b"GET / HTTP/1.1")
            .unwrap_err()
            .why
            .contains("HTTP"));
    }

    #[test]
    fn requests() {
        let mut r = vec![5, 1, 0, 3, 11];
        r.extend_from_slice(b"example.com");
        r.extend_from_slice(&443u16.to_be_bytes());
        for cut in 0..r.len() {
            assert_eq!(parse_request(&r[..cut]), Ok(None), "{cut}");
        }
        let mut with_data = r.clone();
        with_data.extend_from_slice(b"hello");
        let (cmd, used) = parse_request(&with_data).unwrap().unwrap();
        assert_eq!(used, r.len());
        assert_eq!(
            cmd,
            Command::Connect(Destination::parse("example.com:443").unwrap())
        );
        let v6 = [
            5, 1, 0, 4, 0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0xbb,
        ];
        assert_eq!(
            parse_request(&v6).unwrap().unwrap().0,
            Command::Connect(Destination::parse("[2001:db8::1]:443").unwrap())
        );
        let bind = [5, 2, 0, 1, 1, 2, 3, 4, 0, 80];
        assert_eq!(parse_request(&bind).unwrap_err().answer.unwrap()[1], 7);
        let udp = [5, 3, 0, 1, 0, 0, 0, 0, 0, 0];
        assert_eq!(parse_request(&udp), Ok(Some((Command::UdpAssociate, 10))));
        assert_eq!(parse_request(&udp[..9]), Ok(None));
        let atyp = [5, 1, 0, 9, 1, 2, 3, 4, 0, 80];
        assert_eq!(parse_request(&atyp).unwrap_err().answer.unwrap()[1], 8);
        let port0 = [5, 1, 0, 1, 1, 2, 3, 4, 0, 0];
        assert_eq!(parse_request(&port0).unwrap_err().answer.unwrap()[1], 1);
        let bad_name = [5, 1, 0, 3, 3, b'a', b' ', b'b', 0, 80];
        assert!(parse_request(&bad_name).is_err());
    }

    #[test]
    fn udp_datagrams() {
        let dest = Destination::parse("10.1.2.3:443").unwrap();
        let mut d = udp_header(&dest);
        d.extend_from_slice(b"quic");
        let (back, data) = parse_udp(&d).unwrap();
        assert_eq!((back, data), (dest, &b"quic"[..]));
        let mut frag = d.clone();
        frag[2] = 1;
        assert!(parse_udp(&frag).unwrap_err().contains("fragmented"));
        assert!(parse_udp(&d[..3]).is_err());
        assert!(parse_udp(&[0, 0, 0, 9, 1]).is_err());
    }

    #[test]
    fn replies() {
        assert_eq!(reply(0, None), vec![5, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        let r = reply(5, Some("[::1]:8080".parse().unwrap()));
        assert_eq!(r.len(), 22);
        assert_eq!(&r[..4], &[5, 5, 0, 4]);
    }
}
