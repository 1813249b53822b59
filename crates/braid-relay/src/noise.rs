//! The relay's cryptography: the Noise IK handshake (from the `snow` crate,
//! itself sans-IO) and the transport ciphers it yields. Nothing here is
//! home-made: this module only fixes the protocol name, the prologue and
//! how nonces are counted in each direction.
//!
//! IK: the client knows the relay's static key in advance, so its first
//! message already authenticates it (its static key travels encrypted) and
//! can carry the request. The relay's answer completes the key agreement
//! with fresh ephemeral keys on both sides: everything after it is forward
//! secret. The first message's payload is protected like TLS 1.3 early
//! data: confidential and authenticated, but not forward secret against a
//! later theft of the relay's private key, and replayable, which the relay
//! prevents with its replay guard (see `replay`).

use std::sync::Arc;

use snow::{Builder, HandshakeState, StatelessTransportState};

use crate::keys::{PrivateKey, PublicKey, KEY_LEN};

/// X25519, ChaCha20-Poly1305 and BLAKE2s: WireGuard's choices, fast on CPUs
/// without AES instructions (the routers relays and clients often run on).
pub const PROTOCOL: &str = "Noise_IK_25519_ChaChaPoly_BLAKE2s";
/// Bound into the handshake hash: peers of another protocol or version fail
/// the handshake instead of misreading each other.
pub const PROLOGUE: &[u8] = b"braid-relay/1";
/// The largest Noise message (the length prefix is 16 bits).
pub const MAX_MESSAGE: usize = 65535;
pub const TAG_LEN: usize = 16;
/// The largest plaintext of one transport message.
pub const MAX_PLAINTEXT: usize = MAX_MESSAGE - TAG_LEN;
/// e (32) + encrypted s (32 + 16) + payload tag (16).
pub const FIRST_MESSAGE_OVERHEAD: usize = KEY_LEN + KEY_LEN + TAG_LEN + TAG_LEN;
/// e (32) + payload tag (16).
pub const REPLY_OVERHEAD: usize = KEY_LEN + TAG_LEN;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    #[error("the handshake message could not be decrypted or authenticated")]
    Handshake,
    #[error("a message failed authentication (corrupted, truncated or forged)")]
    Decrypt,
    #[error("message too large for one Noise message")]
    TooLarge,
    #[error("cryptography error: {0}")]
    Other(String),
}

fn params() -> snow::params::NoiseParams {
    PROTOCOL.parse().expect("a valid Noise protocol name")
}

pub(crate) fn generate_private_key() -> Result<[u8; KEY_LEN], snow::Error> {
    let kp = Builder::new(params()).generate_keypair()?;
    kp.private.try_into().map_err(|_| snow::Error::Input)
}

fn other(e: snow::Error) -> CryptoError {
    CryptoError::Other(e.to_string())
}

/// One handshake message carrying `payload`; `overhead` is what its place
/// in the pattern adds (keys and tags).
fn write_handshake(
    hs: &mut HandshakeState,
    payload: &[u8],
    overhead: usize,
) -> Result<Vec<u8>, CryptoError> {
    if payload.len() + overhead > MAX_MESSAGE {
        return Err(CryptoError::TooLarge);
    }
    let mut out = vec![0u8; payload.len() + overhead];
    let n = hs.write_message(payload, &mut out).map_err(other)?;
    out.truncate(n);
    Ok(out)
}

/// The payload of the peer's handshake message. Any failure is reported as
/// [`CryptoError::Handshake`]: from outside, a wrong key and tampering look
/// the same.
fn read_handshake(hs: &mut HandshakeState, msg: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let mut payload = vec![0u8; msg.len()];
    let n = hs
        .read_message(msg, &mut payload)
        .map_err(|_| CryptoError::Handshake)?;
    payload.truncate(n);
    Ok(payload)
}

/// The client's side of the handshake.
pub struct Initiator {
    hs: HandshakeState,
}

impl Initiator {
    pub fn new(own: &PrivateKey, relay: &PublicKey) -> Result<Initiator, CryptoError> {
        let hs = Builder::new(params())
            .local_private_key(own.bytes())
            .and_then(|b| b.remote_public_key(&relay.0))
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_initiator())
            .map_err(other)?;
        Ok(Initiator { hs })
    }

    /// The first message, carrying `payload`.
    pub fn first_message(&mut self, payload: &[u8]) -> Result<Vec<u8>, CryptoError> {
        write_handshake(&mut self.hs, payload, FIRST_MESSAGE_OVERHEAD)
    }

    /// Read the relay's answer: its payload and the transport ciphers.
    pub fn read_reply(mut self, msg: &[u8]) -> Result<(Vec<u8>, Session), CryptoError> {
        let payload = read_handshake(&mut self.hs, msg)?;
        let st = self.hs.into_stateless_transport_mode().map_err(other)?;
        Ok((payload, Session::new(st)))
    }
}

/// What the relay learns from a client's first message.
#[derive(Debug)]
pub struct FirstMessage {
    /// The client's static key: its identity (not yet checked against the
    /// allowed keys).
    pub client: PublicKey,
    /// The client's ephemeral key for this connection, unique per first
    /// message: what the replay guard remembers.
    pub ephemeral: [u8; KEY_LEN],
    pub payload: Vec<u8>,
}

/// The relay's side of the handshake.
pub struct Responder {
    hs: HandshakeState,
}

impl Responder {
    pub fn new(own: &PrivateKey) -> Result<Responder, CryptoError> {
        let hs = Builder::new(params())
            .local_private_key(own.bytes())
            .and_then(|b| b.prologue(PROLOGUE))
            .and_then(|b| b.build_responder())
            .map_err(other)?;
        Ok(Responder { hs })
    }

    pub fn read_first(&mut self, msg: &[u8]) -> Result<FirstMessage, CryptoError> {
        if msg.len() < FIRST_MESSAGE_OVERHEAD {
            return Err(CryptoError::Handshake);
        }
        let payload = read_handshake(&mut self.hs, msg)?;
        let client = self
            .hs
            .get_remote_static()
            .and_then(|k| <[u8; KEY_LEN]>::try_from(k).ok())
            .ok_or(CryptoError::Handshake)?;
        let ephemeral: [u8; KEY_LEN] = msg[..KEY_LEN].try_into().expect("length checked above");
        Ok(FirstMessage {
            client: PublicKey(client),
            ephemeral,
            payload,
        })
    }

    /// The answer, carrying `payload`, and the transport ciphers.
    pub fn reply(mut self, payload: &[u8]) -> Result<(Vec<u8>, Session), CryptoError> {
        let out = write_handshake(&mut self.hs, payload, REPLY_OVERHEAD)?;
        let st = self.hs.into_stateless_transport_mode().map_err(other)?;
        Ok((out, Session::new(st)))
    }
}

/// The transport ciphers of an established connection, to be split into
/// one sealer and one opener so each direction runs on its own.
pub struct Session {
    state: Arc<StatelessTransportState>,
}

impl Session {
    fn new(st: StatelessTransportState) -> Session {
        Session {
            state: Arc::new(st),
        }
    }

    pub fn split(self) -> (Sealer, Opener) {
        (
            Sealer {
                state: self.state.clone(),
                nonce: 0,
            },
            Opener {
                state: self.state,
                nonce: 0,
            },
        )
    }
}

/// Encrypts the messages one side sends, in order.
pub struct Sealer {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Sealer {
    /// Encrypt `plaintext` (at most [`MAX_PLAINTEXT`] bytes) into `out`,
    /// which must hold `plaintext.len() + TAG_LEN` bytes; returns that length.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(CryptoError::TooLarge);
        }
        let n = self
            .state
            .write_message(self.nonce, plaintext, out)
            .map_err(other)?;
        self.nonce += 1;
        Ok(n)
    }
}

/// Decrypts the messages the other side sent, in order.
pub struct Opener {
    state: Arc<StatelessTransportState>,
    nonce: u64,
}

impl Opener {
    /// Decrypt one message into `out` (at least `ciphertext.len()` bytes).
    pub fn open(&mut self, ciphertext: &[u8], out: &mut [u8]) -> Result<usize, CryptoError> {
        let n = self
            .state
            .read_message(self.nonce, ciphertext, out)
            .map_err(|_| CryptoError::Decrypt)?;
        self.nonce += 1;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair() -> (PrivateKey, PrivateKey) {
        (
            PrivateKey::generate().unwrap(),
            PrivateKey::generate().unwrap(),
        )
    }

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// A builder with a fixed ephemeral key, so that the messages are the
    /// same at every run.
    fn fixed<'a>(own: &'a PrivateKey, ephemeral: &'a [u8; KEY_LEN]) -> Builder<'a> {
        Builder::new(params())
            .local_private_key(own.bytes())
            .unwrap()
            .fixed_ephemeral_key_for_testing_only(ephemeral)
            .prologue(PROLOGUE)
            .unwrap()
    }

    /// The bytes on the wire from fixed keys: the protocol name, the
    /// prologue and the layout of the messages must not drift, or deployed
    /// clients and relays stop understanding each other.
    #[test]
    fn wire_bytes_are_pinned() {
        let client = PrivateKey::from_bytes([1; KEY_LEN]);
        let relay = PrivateKey::from_bytes([2; KEY_LEN]);
        let mut i = Initiator {
            hs: fixed(&client, &[3; KEY_LEN])
                .remote_public_key(&relay.public().0)
                .unwrap()
                .build_initiator()
                .unwrap(),
        };
        let mut r = Responder {
            hs: fixed(&relay, &[4; KEY_LEN]).build_responder().unwrap(),
        };
        let m1 = i.first_message(b"request").unwrap();
        assert_eq!(r.read_first(&m1).unwrap().payload, b"request");
        let (m2, rs) = r.reply(b"ok").unwrap();
        let (p, cs) = i.read_reply(&m2).unwrap();
        assert_eq!(p, b"ok");
        let mut sealed = vec![0u8; 64];
        let n = cs.split().0.seal(b"data", &mut sealed).unwrap();
        let mut opened = vec![0u8; 64];
        let m = rs.split().1.open(&sealed[..n], &mut opened).unwrap();
        assert_eq!(&opened[..m], b"data");
        assert_eq!(hex(&m1), "5dfedd3b6bd47f6fa28ee15d969d5bb0ea53774d488bdaf9df1c6e0124b3ef224391bcfef3f1b0f051873c2103356110f8056ef928c4354783347c74dc7b71b794323afa1dd3f98e17e017b3f31eeb759d678b14f348073e46bd4282b68764be1d9e1dd2185a19");
        assert_eq!(hex(&m2), "ac01b2209e86354fb853237b5de0f4fab13c7fcbf433a61c019369617fecf10bc686c922cc64cf4cfdfa9b3bf780cb94d92d");
        assert_eq!(
            hex(&sealed[..n]),
            "729e1f1d29d0a4fb985d30979c6ddd318274de2a"
        );
    }

    #[test]
    fn handshake_authenticates_both_and_transports_both_ways() {
        let (client, relay) = pair();
        let mut i = Initiator::new(&client, &relay.public()).unwrap();
        let m1 = i.first_message(b"request").unwrap();
        let mut r = Responder::new(&relay).unwrap();
        let first = r.read_first(&m1).unwrap();
        assert_eq!(first.client, client.public());
        assert_eq!(first.payload, b"request");
        assert_eq!(&first.ephemeral[..], &m1[..32]);
        let (m2, rs) = r.reply(b"ok").unwrap();
        let (p, cs) = i.read_reply(&m2).unwrap();
        assert_eq!(p, b"ok");
        let (mut cseal, mut copen) = cs.split();
        let (mut rseal, mut ropen) = rs.split();
        let mut buf = vec![0u8; 100];
        let mut out = vec![0u8; 100];
        for msg in [&b"one"[..], b"two", b""] {
            let n = cseal.seal(msg, &mut buf).unwrap();
            let m = ropen.open(&buf[..n], &mut out).unwrap();
            assert_eq!(&out[..m], msg);
            let n = rseal.seal(msg, &mut buf).unwrap();
            let m = copen.open(&buf[..n], &mut out).unwrap();
            assert_eq!(&out[..m], msg);
        }
    }

    #[test]
    fn wrong_relay_key_and_tampering_fail() {
        let (client, relay) = pair();
        let other = PrivateKey::generate().unwrap();
        // The client believes in another relay key: the relay cannot read it.
        let mut i = Initiator::new(&client, &other.public()).unwrap();
        let m1 = i.first_message(b"x").unwrap();
        assert_eq!(
            Responder::new(&relay).unwrap().read_first(&m1).unwrap_err(),
            CryptoError::Handshake
        );
        // One flipped bit anywhere fails.
        let mut i = Initiator::new(&client, &relay.public()).unwrap();
        let m1 = i.first_message(b"x").unwrap();
        for pos in [0, 40, m1.len() - 1] {
            let mut bad = m1.clone();
            bad[pos] ^= 1;
            assert!(Responder::new(&relay).unwrap().read_first(&bad).is_err());
        }
        assert!(Responder::new(&relay)
            .unwrap()
            .read_first(&m1[..10])
            .is_err());
        // Transport: reordering or replaying a message fails.
        let mut r = Responder::new(&relay).unwrap();
        r.read_first(&m1).unwrap();
        let (m2, rs) = r.reply(b"").unwrap();
        let (_, cs) = i.read_reply(&m2).unwrap();
        let (mut cseal, _) = cs.split();
        let (_, mut ropen) = rs.split();
        let mut a = vec![0u8; 64];
        let mut b = vec![0u8; 64];
        let na = cseal.seal(b"a", &mut a).unwrap();
        let nb = cseal.seal(b"b", &mut b).unwrap();
        let mut out = vec![0u8; 64];
        assert_eq!(
            ropen.open(&b[..nb], &mut out).unwrap_err(),
            CryptoError::Decrypt
        );
        let _ = na;
    }
}
