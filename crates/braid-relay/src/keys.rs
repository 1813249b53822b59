//! Relay keys: X25519 key pairs written as short base64 text, the way
//! WireGuard does (`braid relay keygen | tee key | braid relay pubkey`).
//! A private key file that its group or other users can read is refused.

use std::fmt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use curve25519_dalek::montgomery::MontgomeryPoint;

use crate::noise;

pub const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    File(String),
}

/// A peer's identity: an X25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; KEY_LEN]);

/// An X25519 private key. Its bytes are overwritten when it is dropped.
#[derive(Clone)]
pub struct PrivateKey([u8; KEY_LEN]);

fn decode_key(text: &str, what: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let t = text.trim();
    let bytes = B64.decode(t).map_err(|e| {
        KeyError::Invalid(format!(
            "{what} '{}' is not base64 ({e}): a key is 44 characters as printed by 'braid relay keygen' or 'braid relay pubkey'",
            abbreviate(t)
        ))
    })?;
    bytes.try_into().map_err(|b: Vec<u8>| {
        KeyError::Invalid(format!(
            "{what} '{}' is {} bytes, a key is {KEY_LEN}: copy the whole 44-character line",
            abbreviate(t),
            b.len()
        ))
    })
}

/// Never print more than the start of something that may be a secret.
fn abbreviate(t: &str) -> String {
    let head: String = t.chars().take(6).collect();
    if t.chars().count() > 6 {
        format!("{head}...")
    } else {
        head
    }
}

impl PublicKey {
    pub fn from_text(text: &str) -> Result<PublicKey, KeyError> {
        decode_key(text, "public key").map(PublicKey)
    }

    pub fn to_text(&self) -> String {
        B64.encode(self.0)
    }

    /// A short, stable form for logs.
    pub fn short(&self) -> String {
        self.to_text()[..8].to_string()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_text())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_text())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public())
    }
}

impl Drop for PrivateKey {
    fn drop(&mut self) {
        for b in self.0.iter_mut() {
            // SAFETY: a valid, aligned pointer to a byte we own; volatile so
            // the write is not optimised away.
            unsafe { std::ptr::write_volatile(b, 0) };
        }
    }
}

impl PrivateKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        noise::generate_private_key()
            .map(PrivateKey)
            .map_err(|e| KeyError::Invalid(format!("cannot generate a key: {e}")))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> PrivateKey {
        PrivateKey(bytes)
    }

    pub fn from_text(text: &str) -> Result<PrivateKey, KeyError> {
        decode_key(text, "private key").map(PrivateKey)
    }

    pub fn to_text(&self) -> String {
        B64.encode(self.0)
    }

    pub fn bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    pub fn public(&self) -> PublicKey {
        PublicKey(MontgomeryPoint::mul_base_clamped(self.0).to_bytes())
    }

    /// Read a private key file, refusing one that group or others can read
    /// or write, or that is a symbolic link.
    pub fn load(path: &Path) -> Result<PrivateKey, KeyError> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                let why = match e.raw_os_error() {
                    Some(libc::ELOOP) => {
                        "it is a symbolic link; point the configuration at the file itself"
                            .to_string()
                    }
                    Some(libc::ENOENT) => format!(
                        "it does not exist; create one with 'braid relay keygen --out {}'",
                        path.display()
                    ),
                    _ => e.to_string(),
                };
                KeyError::File(format!(
                    "cannot read the private key {}: {why}",
                    path.display()
                ))
            })?;
        let meta = file
            .metadata()
            .map_err(|e| KeyError::File(format!("cannot stat {}: {e}", path.display())))?;
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(KeyError::File(format!(
                "the private key {} can be accessed by group or others (mode {mode:04o}): a private key must be private; run 'chmod 600 {}'",
                path.display(),
                path.display()
            )));
        }
        let text = std::io::read_to_string(file)
            .map_err(|e| KeyError::File(format!("cannot read {}: {e}", path.display())))?;
        PrivateKey::from_text(&text).map_err(|e| KeyError::File(format!("{}: {e}", path.display())))
    }

    /// Write the key to a new file readable by its owner only. An existing
    /// file is never overwritten.
    pub fn save_new(&self, path: &Path) -> Result<(), KeyError> {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AlreadyExists {
                    "it already exists (keys are never overwritten; remove it first if you really mean to replace it)".to_string()
                } else {
                    e.to_string()
                };
                KeyError::File(format!("cannot create {}: {why}", path.display()))
            })?;
        writeln!(f, "{}", self.to_text())
            .and_then(|_| f.sync_all())
            .map_err(|e| KeyError::File(format!("cannot write {}: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_round_trip_and_public_derivation() {
        let k = PrivateKey::generate().unwrap();
        let t = k.to_text();
        assert_eq!(t.len(), 44);
        let k2 = PrivateKey::from_text(&format!("  {t}\n")).unwrap();
        assert_eq!(k.public(), k2.public());
        assert_eq!(
            PublicKey::from_text(&k.public().to_text()).unwrap(),
            k.public()
        );
        // RFC 7748 section 6.1 test vector (Alice).
        let alice = PrivateKey::from_bytes(hex(
            "77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a",
        ));
        assert_eq!(
            alice.public().0,
            hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
        );
    }

    fn hex(s: &str) -> [u8; 32] {
        let v: Vec<u8> = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect();
        v.try_into().unwrap()
    }

    #[test]
    fn bad_text_is_a_clear_error_without_the_secret() {
        let e = PrivateKey::from_text("c2VjcmV0LXNlY3JldC1zZWNyZXQ=").unwrap_err();
        assert!(e.to_string().contains("is 20 bytes"), "{e}");
        assert!(!e.to_string().contains("c2VjcmV0LXNl"), "{e}");
        let e = PublicKey::from_text("not a key!").unwrap_err();
        assert!(e.to_string().contains("not base64"), "{e}");
    }

    #[test]
    fn private_key_files_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("braid-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("relay.key");
        let k = PrivateKey::generate().unwrap();
        k.save_new(&path).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(PrivateKey::load(&path).unwrap().public(), k.public());
        let e = k.save_new(&path).unwrap_err();
        assert!(e.to_string().contains("never overwritten"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = PrivateKey::load(&path).unwrap_err().to_string();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        let link = dir.join("link.key");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = PrivateKey::load(&link).unwrap_err().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        let e = PrivateKey::load(&dir.join("missing.key"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("braid relay keygen --out"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
