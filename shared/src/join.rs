//! Join strings: everything a new spoke needs to enroll, in one line an operator can paste.
//!
//! Format: `SYJ1-` + base64url(JSON `{"t": token id, "s": secret, "h": hub API URL,
//! "q": hub QUIC endpoint host:port, "ca": SHA-256 fingerprint of the hub CA}`).

use crate::proto::Redacted;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

const PREFIX: &str = "SYJ1-";

/// A parsed join string.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinString {
    #[serde(rename = "t")]
    pub token_id: String,
    #[serde(rename = "s")]
    pub secret: Redacted,
    #[serde(rename = "h")]
    pub hub_url: String,
    #[serde(rename = "q")]
    pub quic: String,
    #[serde(rename = "ca")]
    pub ca_fingerprint: String,
}

/// Why a join string is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("not a Switchyard join string (it should start with {PREFIX})")]
    Prefix,
    #[error("the join string is damaged ({0}); copy it again from `hub spokes token create`")]
    Corrupt(String),
    #[error("the join string's CA fingerprint is not a SHA-256 hex digest")]
    Fingerprint,
}

impl JoinString {
    /// The one-line form.
    pub fn encode(&self) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json))
    }

    /// Parses and checks a join string (surrounding whitespace is ignored).
    pub fn parse(s: &str) -> Result<JoinString, JoinError> {
        let body = s.trim().strip_prefix(PREFIX).ok_or(JoinError::Prefix)?;
        let json = URL_SAFE_NO_PAD
            .decode(body)
            .map_err(|e| JoinError::Corrupt(e.to_string()))?;
        let j: JoinString =
            serde_json::from_slice(&json).map_err(|e| JoinError::Corrupt(e.to_string()))?;
        if j.ca_fingerprint.len() != 64 || !j.ca_fingerprint.chars().all(|c| c.is_ascii_hexdigit())
        {
            return Err(JoinError::Fingerprint);
        }
        if j.token_id.is_empty() || j.secret.0.is_empty() || j.quic.is_empty() {
            return Err(JoinError::Corrupt("a field is empty".into()));
        }
        Ok(j)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> JoinString {
        JoinString {
            token_id: "jt_1".into(),
            secret: Redacted("s3cret".into()),
            hub_url: "http://127.0.0.1:8080".into(),
            quic: "127.0.0.1:7443".into(),
            ca_fingerprint: "ab".repeat(32),
        }
    }

    #[test]
    fn roundtrip_and_errors() {
        let j = sample();
        let s = j.encode();
        assert!(s.starts_with(PREFIX));
        assert_eq!(JoinString::parse(&format!("  {s}\n")), Ok(j.clone()));
        assert_eq!(JoinString::parse("hello"), Err(JoinError::Prefix));
        assert!(matches!(
            JoinString::parse(&format!("{}!!", &s[..s.len() - 3])),
            Err(JoinError::Corrupt(_))
        ));
        let mut bad = j;
        bad.ca_fingerprint = "zz".into();
        assert_eq!(
            JoinString::parse(&bad.encode()),
            Err(JoinError::Fingerprint)
        );
        assert!(!format!("{:?}", sample()).contains("s3cret"));
    }
}
