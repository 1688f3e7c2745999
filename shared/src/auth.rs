//! Auth primitives: random tokens, hashing for storage at rest, constant-time comparison,
//! authenticated encryption of provider credentials, and HMAC tags for opaque ids.
//!
//! API keys, bearer tokens and meta tokens are 256-bit random values, so a single SHA-256 is a
//! sound at-rest hash for them (a slow KDF only matters for low-entropy secrets like passwords).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretBox, SecretString};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Length in bytes of the master key and every key derived from it.
pub const KEY_LEN: usize = 32;

/// Generates a new random token such as `sk_3q0...`: `prefix` plus 43 URL-safe characters
/// (256 bits of entropy).
pub fn generate_token(prefix: &str) -> SecretString {
    let mut raw = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut raw);
    SecretString::from(format!("{prefix}{}", URL_SAFE_NO_PAD.encode(raw)))
}

/// The at-rest form of a token: SHA-256 of its text.
pub fn hash_token(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two byte strings in constant time (for equal lengths).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// A 256-bit master key from which purpose-specific keys are derived.
pub struct MasterKey(SecretBox<[u8; KEY_LEN]>);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

/// Why a master key could not be read.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("the master key must be {KEY_LEN} bytes encoded as base64 (44 characters)")]
    Malformed,
}

impl MasterKey {
    /// Generates a fresh random master key.
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(SecretBox::new(Box::new(k)))
    }

    /// Parses a base64 (standard alphabet) encoded 32-byte key; surrounding whitespace is ignored.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let bytes = STANDARD
            .decode(text.trim())
            .map_err(|_| KeyError::Malformed)?;
        let k: [u8; KEY_LEN] = bytes.try_into().map_err(|_| KeyError::Malformed)?;
        Ok(Self(SecretBox::new(Box::new(k))))
    }

    /// The base64 text form, for writing a freshly generated key to a file.
    pub fn to_base64(&self) -> SecretString {
        SecretString::from(STANDARD.encode(self.0.expose_secret()))
    }

    /// Derives an independent key for `purpose` (HMAC-SHA256 as a PRF).
    pub fn derive(&self, purpose: &str) -> [u8; KEY_LEN] {
        let mut mac = <HmacSha256 as Mac>::new_from_slice(self.0.expose_secret())
            .expect("HMAC takes any key length");
        mac.update(b"switchyard/v1/");
        mac.update(purpose.as_bytes());
        mac.finalize().into_bytes().into()
    }
}

/// Why a sealed value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed value is malformed or was encrypted under another key")]
    Open,
}

/// Authenticated encryption (XChaCha20-Poly1305) for secrets stored in the database.
///
/// Each value is bound to an associated-data string (for example `account:42`) so that a
/// ciphertext copied onto another row does not open.
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(<redacted>)")
    }
}

const NONCE_LEN: usize = 24;
const SEAL_VERSION: u8 = 1;

impl Sealer {
    pub fn new(key: &[u8; KEY_LEN]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// Encrypts `plaintext`; the output is `version || nonce || ciphertext+tag`.
    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                XNonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ct.len());
        out.push(SEAL_VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Decrypts a value produced by [`Sealer::seal`] with the same `aad`.
    pub fn open(&self, sealed: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        if sealed.len() < 1 + NONCE_LEN + 16 || sealed[0] != SEAL_VERSION {
            return Err(SealError::Open);
        }
        let (nonce, ct) = sealed[1..].split_at(NONCE_LEN);
        self.cipher
            .decrypt(XNonce::from_slice(nonce), Payload { msg: ct, aad })
            .map_err(|_| SealError::Open)
    }
}

/// Keyed MAC used to make identifiers unforgeable (HMAC-SHA256, truncated by the caller).
#[derive(Clone)]
pub struct Tagger {
    key: [u8; KEY_LEN],
}

impl std::fmt::Debug for Tagger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tagger(<redacted>)")
    }
}

impl Tagger {
    pub fn new(key: [u8; KEY_LEN]) -> Self {
        Self { key }
    }

    /// HMAC-SHA256 over the concatenation of `parts`, each length-prefixed so that part
    /// boundaries cannot be shifted.
    pub fn tag(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac =
            <HmacSha256 as Mac>::new_from_slice(&self.key).expect("HMAC takes any key length");
        for p in parts {
            mac.update(&(p.len() as u64).to_be_bytes());
            mac.update(p);
        }
        mac.finalize().into_bytes().into()
    }
}

/// What a signed data URL allows: one method on one target of one account, until `expires`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DataClaims<'a> {
    /// `GET` (download) or `PUT` (upload).
    pub method: &'a str,
    /// The grant the hub registered on the spoke.
    pub grant: &'a str,
    pub account: i64,
    /// The storage path the grant covers.
    pub target: &'a str,
    /// Unix seconds.
    pub expires: i64,
}

/// Why a data URL is refused (both are a 403 to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DataTokenError {
    #[error("the signed URL has expired")]
    Expired,
    #[error("the signed URL's signature does not match")]
    BadSignature,
}

/// Signs data URL claims: base64url HMAC-SHA256 over the length-prefixed fields.
pub fn sign_data(tagger: &Tagger, c: &DataClaims<'_>) -> String {
    URL_SAFE_NO_PAD.encode(data_tag(tagger, c))
}

fn data_tag(tagger: &Tagger, c: &DataClaims<'_>) -> [u8; 32] {
    tagger.tag(&[
        b"switchyard-data-v1",
        c.method.as_bytes(),
        c.grant.as_bytes(),
        &c.account.to_be_bytes(),
        c.target.as_bytes(),
        &c.expires.to_be_bytes(),
    ])
}

/// Checks a data URL signature (constant time) and its expiry against `now` (Unix seconds).
pub fn verify_data(
    tagger: &Tagger,
    c: &DataClaims<'_>,
    signature: &str,
    now: i64,
) -> Result<(), DataTokenError> {
    let offered = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| DataTokenError::BadSignature)?;
    if !ct_eq(&offered, &data_tag(tagger, c)) {
        return Err(DataTokenError::BadSignature);
    }
    if now >= c.expires {
        return Err(DataTokenError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_urls_are_bound_to_every_claim() {
        let t = Tagger::new([7u8; KEY_LEN]);
        let c = DataClaims {
            method: "PUT",
            grant: "g1",
            account: 42,
            target: "photos/a.jpg",
            expires: 1_000,
        };
        let sig = sign_data(&t, &c);
        assert_eq!(verify_data(&t, &c, &sig, 999), Ok(()));
        assert_eq!(
            verify_data(&t, &c, &sig, 1_000),
            Err(DataTokenError::Expired)
        );
        let tampered = [
            DataClaims { method: "GET", ..c },
            DataClaims { grant: "g2", ..c },
            DataClaims { account: 43, ..c },
            DataClaims {
                target: "photos/b.jpg",
                ..c
            },
            DataClaims {
                expires: 2_000,
                ..c
            },
        ];
        for bad in tampered {
            assert_eq!(
                verify_data(&t, &bad, &sig, 0),
                Err(DataTokenError::BadSignature),
                "{bad:?}"
            );
        }
        assert_eq!(
            verify_data(&Tagger::new([8u8; KEY_LEN]), &c, &sig, 0),
            Err(DataTokenError::BadSignature)
        );
        assert_eq!(
            verify_data(&t, &c, "not base64!", 0),
            Err(DataTokenError::BadSignature)
        );
    }

    #[test]
    fn tokens_are_distinct_and_prefixed() {
        let a = generate_token("sk_");
        let b = generate_token("sk_");
        assert!(a.expose_secret().starts_with("sk_"));
        assert_eq!(a.expose_secret().len(), 3 + 43);
        assert_ne!(a.expose_secret(), b.expose_secret());
    }

    #[test]
    fn seal_roundtrip_and_aad_binding() {
        let mk = MasterKey::generate();
        let s = Sealer::new(&mk.derive("credentials"));
        let sealed = s.seal(b"secret", b"account:1");
        assert_eq!(s.open(&sealed, b"account:1").expect("opens"), b"secret");
        assert!(s.open(&sealed, b"account:2").is_err());
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert!(s.open(&tampered, b"account:1").is_err());
        assert!(s.open(&sealed[..10], b"account:1").is_err());
    }

    #[test]
    fn master_key_text_roundtrip() {
        let mk = MasterKey::generate();
        let text = mk.to_base64();
        let again = MasterKey::from_base64(text.expose_secret()).expect("parses");
        assert_eq!(mk.derive("x"), again.derive("x"));
        assert_ne!(mk.derive("x"), mk.derive("y"));
        assert!(MasterKey::from_base64("c2hvcnQ=").is_err());
    }

    #[test]
    fn tag_parts_are_length_prefixed() {
        let t = Tagger::new([7; KEY_LEN]);
        assert_ne!(t.tag(&[b"ab", b"c"]), t.tag(&[b"a", b"bc"]));
        assert!(ct_eq(&t.tag(&[b"x"]), &t.tag(&[b"x"])));
    }
}
