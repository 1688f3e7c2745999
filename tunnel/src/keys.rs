//! WireGuard keys: Curve25519 private, public and preshared keys in the base64 form `wg` uses.
//!
//! Secret keys are their own types whose `Debug` is redacted and which have no `Display`, so a
//! stray `{:?}` or `tracing` field cannot print them; the bytes are zeroed on drop.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use boringtun::x25519;
use rand::RngCore as _;
use std::fmt;

/// A key that is not 32 bytes of standard base64.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("not valid base64")]
    Base64,
    #[error("a key is 32 bytes (44 base64 characters), got {0} bytes")]
    Length(usize),
}

fn decode32(text: &str) -> Result<[u8; 32], KeyError> {
    let bytes = STANDARD
        .decode(text.trim().as_bytes())
        .map_err(|_| KeyError::Base64)?;
    <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

/// 32 secret bytes, zeroed on drop, never printed.
struct SecretBytes([u8; 32]);

impl Drop for SecretBytes {
    fn drop(&mut self) {
        // `black_box` makes the stores observable, so the wipe of a dead value is not
        // optimised away (a best effort without `unsafe` volatile writes).
        self.0 = [0u8; 32];
        std::hint::black_box(&self.0);
    }
}

/// A Curve25519 private key (clamped on generation, as `wg genkey` does).
pub struct PrivateKey(SecretBytes);

impl PrivateKey {
    /// A fresh random key from the OS generator.
    pub fn generate() -> PrivateKey {
        let mut bytes = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        // Clamping as in RFC 7748 (and `wg genkey`); x25519 clamps on use anyway, this makes the
        // printed key identical to what other tools would print for the same scalar.
        bytes[0] &= 248;
        bytes[31] &= 127;
        bytes[31] |= 64;
        PrivateKey(SecretBytes(bytes))
    }

    pub fn from_base64(text: &str) -> Result<PrivateKey, KeyError> {
        decode32(text).map(|b| PrivateKey(SecretBytes(b)))
    }

    /// The base64 text of the key. Only for `tunnel keygen`; never log it.
    pub fn expose_base64(&self) -> String {
        STANDARD.encode(self.0 .0)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey(x25519::PublicKey::from(&self.to_static_secret()).to_bytes())
    }

    pub(crate) fn to_static_secret(&self) -> x25519::StaticSecret {
        x25519::StaticSecret::from(self.0 .0)
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        PrivateKey(SecretBytes(self.0 .0))
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PrivateKey([redacted])")
    }
}

/// A Curve25519 public key: a peer's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PublicKey(pub [u8; 32]);

impl PublicKey {
    pub fn from_base64(text: &str) -> Result<PublicKey, KeyError> {
        decode32(text).map(PublicKey)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&STANDARD.encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

/// An optional symmetric key mixed into the handshake (post-quantum hedge).
pub struct PresharedKey(SecretBytes);

impl PresharedKey {
    pub fn from_base64(text: &str) -> Result<PresharedKey, KeyError> {
        decode32(text).map(|b| PresharedKey(SecretBytes(b)))
    }

    pub(crate) fn bytes(&self) -> [u8; 32] {
        self.0 .0
    }
}

impl Clone for PresharedKey {
    fn clone(&self) -> Self {
        PresharedKey(SecretBytes(self.0 .0))
    }
}

impl PartialEq for PresharedKey {
    /// Constant time: reload compares keys to decide whether a peer changed.
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u8;
        for (a, b) in self.0 .0.iter().zip(other.0 .0.iter()) {
            diff |= a ^ b;
        }
        std::hint::black_box(diff) == 0
    }
}

impl fmt::Debug for PresharedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PresharedKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_clamped_and_round_trip() {
        let k = PrivateKey::generate();
        let text = k.expose_base64();
        assert_eq!(text.len(), 44);
        let again = PrivateKey::from_base64(&text).expect("parse");
        assert_eq!(again.public_key(), k.public_key());
        let raw = decode32(&text).expect("decode");
        assert_eq!(raw[0] & 7, 0);
        assert_eq!(raw[31] & 0xc0, 0x40);
    }

    #[test]
    fn rfc7748_public_key() {
        // RFC 7748 section 6.1: Alice's private and public keys.
        let private =
            hex_to_b64("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a");
        let public = hex_to_b64("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let k = PrivateKey::from_base64(&private).expect("key");
        assert_eq!(k.public_key().to_string(), public);
    }

    #[test]
    fn bad_keys_are_errors() {
        assert_eq!(PublicKey::from_base64("not base64!"), Err(KeyError::Base64));
        assert_eq!(PublicKey::from_base64("AAAA"), Err(KeyError::Length(3)));
    }

    #[test]
    fn debug_is_redacted() {
        let k = PrivateKey::generate();
        let shown = format!("{k:?}");
        assert!(!shown.contains(&k.expose_base64()));
        let p = PresharedKey::from_base64(&k.expose_base64()).expect("psk");
        assert_eq!(format!("{p:?}"), "PresharedKey([redacted])");
    }

    fn hex_to_b64(h: &str) -> String {
        let bytes: Vec<u8> = (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect();
        STANDARD.encode(bytes)
    }
}
