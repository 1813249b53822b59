//! `braid check --relay`: is a Braid relay there and does it accept this
//! client? A `Ping` request (answered at once, nothing relayed) in the
//! first flight, then its authenticated answer read back. The first flight
//! is sent on the connection `braid check` opened, so it is also what
//! completes the MPTCP handshake there.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::keys::{PrivateKey, PublicKey};
use crate::noise::Initiator;
use crate::wire::{self, Destination, Kind, MessageReader, Reply, Request, Status};

/// A ping's first flight (length-prefixed Noise IK message 1) and the
/// handshake state to read the answer with.
pub struct PingFlight {
    initiator: Initiator,
    pub bytes: Vec<u8>,
}

/// What the relay said to a ping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "relay", rename_all = "snake_case")]
pub enum RelayAnswer {
    /// The handshake completed: the relay has this key and accepts this client.
    Answered,
    /// It answered, authenticated, with a refusal.
    Refused { status: String, reason: String },
    /// Nothing came back (a relay stays silent to clients it does not
    /// know, and so does anything that is not a Braid relay).
    Silent { why: String },
    /// Something answered that is not the relay with this public key.
    NotTheRelay { why: String },
}

impl RelayAnswer {
    pub fn summary(&self) -> String {
        match self {
            RelayAnswer::Answered => {
                "relay OK: it completed the handshake with this client's key".to_string()
            }
            RelayAnswer::Refused { status, reason } => {
                format!("relay refused: {status} ({reason})")
            }
            RelayAnswer::Silent { why } | RelayAnswer::NotTheRelay { why } => {
                format!("relay not OK: {why}")
            }
        }
    }
}

/// The first flight of a ping from `own` to the relay with key `relay`.
pub fn ping_flight(own: &PrivateKey, relay: &PublicKey) -> Result<PingFlight, String> {
    let mut initiator = Initiator::new(own, relay).map_err(|e| e.to_string())?;
    let request = Request {
        kind: Kind::Ping,
        timestamp_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        destination: Destination::from(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 9)),
        early_data: Vec::new(),
    };
    let msg = initiator
        .first_message(&request.encode())
        .map_err(|e| e.to_string())?;
    let mut bytes = wire::length_prefix(msg.len()).to_vec();
    bytes.extend_from_slice(&msg);
    Ok(PingFlight { initiator, bytes })
}

/// Read the relay's answer to `flight` (already sent on `stream`), waiting
/// until `sent` + `timeout` at most.
pub fn read_answer(
    flight: PingFlight,
    stream: &mut TcpStream,
    sent: Instant,
    timeout: Duration,
) -> RelayAnswer {
    let silent = |what: &str| {
        RelayAnswer::Silent {
        why: format!(
            "{what}: it is not a Braid relay, or it does not list this client's public key in [[relay.server.client]], or the relay key given is not its key"
        ),
    }
    };
    let mut reader = MessageReader::new();
    let answer = loop {
        if let Some(m) = reader.next_message() {
            break m.to_vec();
        }
        let left = timeout.saturating_sub(sent.elapsed());
        if left.is_zero() {
            return silent(&format!("no answer within {} ms", timeout.as_millis()));
        }
        let _ = stream.set_read_timeout(Some(left));
        match stream.read(reader.spare()) {
            Ok(0) => return silent("it closed the connection without an answer"),
            Ok(n) => reader.filled(n),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return silent(&format!("no answer within {} ms", timeout.as_millis()))
            }
            Err(e) => return silent(&format!("reading its answer failed ({e})")),
        }
    };
    let Ok((payload, _session)) = flight.initiator.read_reply(&answer) else {
        return RelayAnswer::NotTheRelay {
            why:
                "the answer failed authentication: this is not the relay whose public key was given"
                    .into(),
        };
    };
    match Reply::decode(&payload) {
        Ok(r) if r.status == Status::Connected => RelayAnswer::Answered,
        Ok(r) => RelayAnswer::Refused {
            status: r.status.describe().to_string(),
            reason: r.reason,
        },
        Err(e) => RelayAnswer::NotTheRelay {
            why: format!("malformed answer: {e}"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::Responder;
    use std::io::Write;
    use std::net::TcpListener;

    /// A one-shot relay on loopback answering the first message with
    /// `status`, or staying silent with `None`.
    fn relay(key: PrivateKey, status: Option<Status>) -> (SocketAddr, std::thread::JoinHandle<()>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let mut reader = MessageReader::new();
            let first = loop {
                if let Some(m) = reader.next_message() {
                    break m.to_vec();
                }
                let n = s.read(reader.spare()).unwrap();
                reader.filled(n);
            };
            let mut responder = Responder::new(&key).unwrap();
            let msg = responder.read_first(&first).unwrap();
            let request = Request::decode(&msg.payload).unwrap();
            assert_eq!(request.kind, Kind::Ping);
            let Some(status) = status else {
                std::thread::sleep(Duration::from_millis(300));
                return;
            };
            let reply = Reply {
                status,
                reason: "no".into(),
            };
            let (out, _) = responder.reply(&reply.encode()).unwrap();
            s.write_all(&wire::length_prefix(out.len())).unwrap();
            s.write_all(&out).unwrap();
        });
        (addr, t)
    }

    fn ping(status: Option<Status>) -> RelayAnswer {
        let relay_key = PrivateKey::generate().unwrap();
        let client = PrivateKey::generate().unwrap();
        let (addr, t) = relay(PrivateKey::from_bytes(*relay_key.bytes()), status);
        let flight = ping_flight(&client, &relay_key.public()).unwrap();
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(&flight.bytes).unwrap();
        let answer = read_answer(flight, &mut s, Instant::now(), Duration::from_millis(150));
        t.join().unwrap();
        answer
    }

    #[test]
    fn answered_refused_and_silent() {
        assert_eq!(ping(Some(Status::Connected)), RelayAnswer::Answered);
        assert!(matches!(
            ping(Some(Status::GeneralFailure)),
            RelayAnswer::Refused { .. }
        ));
        match ping(None) {
            RelayAnswer::Silent { why } => {
                assert!(why.contains("no answer within 150 ms"), "{why}")
            }
            other => panic!("{other:?}"),
        }
    }
}
