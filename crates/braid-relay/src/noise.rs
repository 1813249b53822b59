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
        if payload.len() + FIRST_MESSAGE_OVERHEAD > MAX_MESSAGE {
            return Err(CryptoError::TooLarge);
        }
        let mut out = vec![0u8; payload.len() + FIRST_MESSAGE_OVERHEAD];
        let n = self.hs.write_message(payload, &mut out).map_err(other)?;
        out.truncate(n);
        Ok(out)
    }

    /// Read the relay's answer: its payload and the transport ciphers.
    pub fn read_reply(mut self, msg: &[u8]) -> Result<(Vec<u8>, Session), CryptoError> {
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| CryptoError::Handshake)?;
        payload.truncate(n);
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
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .hs
            .read_message(msg, &mut payload)
            .map_err(|_| CryptoError::Handshake)?;
        payload.truncate(n);
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
        if payload.len() + REPLY_OVERHEAD > MAX_MESSAGE {
            return Err(CryptoError::TooLarge);
        }
        let mut out = vec![0u8; payload.len() + REPLY_OVERHEAD];
        let n = self.hs.write_message(payload, &mut out).map_err(other)?;
        out.truncate(n);
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
