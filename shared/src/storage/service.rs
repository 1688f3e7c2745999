//! Typed settings of each storage service, parsed from the `credentials` object a client sends
//! when it connects an account. Unknown keys are refused so that typos surface as clear errors.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Settings for one connected storage account. `Debug` never prints secrets.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "service", content = "credentials", rename_all = "lowercase")]
pub enum ServiceConfig {
    Fs(FsSettings),
    S3(S3Settings),
    Webdav(WebdavSettings),
    Sftp(SftpSettings),
    Azblob(AzblobSettings),
    Gcs(GcsSettings),
    Dropbox(OAuthSettings),
    Gdrive(OAuthSettings),
    Onedrive(OAuthSettings),
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FsSettings {
    /// Absolute directory on the hub or spoke host; the hub confines it to the application's
    /// space under `storage.fs.allowed_roots` (`hub::fsroot`).
    pub root: String,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub bucket: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    pub access_key_id: String,
    pub secret_access_key: String,
    #[serde(default)]
    pub root: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WebdavSettings {
    pub endpoint: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct SftpSettings {
    /// `host:port` or `ssh://host:port`.
    pub endpoint: String,
    pub user: String,
    /// The private key itself (OpenSSH or PEM text).
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub password: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct AzblobSettings {
    pub container: String,
    pub endpoint: String,
    pub account_name: String,
    pub account_key: String,
    #[serde(default)]
    pub root: Option<String>,
}

#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct GcsSettings {
    pub bucket: String,
    /// Service-account JSON, base64 encoded.
    pub credential: String,
    #[serde(default)]
    pub endpoint: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
}

/// OAuth-based consumer services (Dropbox, Google Drive, OneDrive).
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuthSettings {
    #[serde(default)]
    pub access_token: Option<String>,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub client_secret: Option<String>,
    #[serde(default)]
    pub root: Option<String>,
}

/// Why a service/credentials pair was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("unknown service '{0}' (known: {known})", known = SERVICES.join(", "))]
    UnknownService(String),
    #[error("service '{0}' is not compiled into this build")]
    NotCompiled(String),
    #[error("invalid credentials for '{service}': {reason}")]
    Invalid { service: String, reason: String },
}

/// Every service name the API knows, compiled in or not.
pub const SERVICES: &[&str] = &[
    "fs", "s3", "webdav", "sftp", "azblob", "gcs", "dropbox", "gdrive", "onedrive",
];

/// The display name of a service id (`fs` → "Local Filesystem"): the API's `service_name`,
/// the same wherever an account is shown. An unknown id is shown as itself.
pub fn display_name(service: &str) -> &'static str {
    match service {
        "fs" => "Local Filesystem",
        "s3" => "Amazon S3",
        "webdav" => "WebDAV",
        "sftp" => "SFTP",
        "azblob" => "Azure Blob Storage",
        "gcs" => "Google Cloud Storage",
        "dropbox" => "Dropbox",
        "gdrive" => "Google Drive",
        "onedrive" => "OneDrive",
        _ => "Unknown service",
    }
}

impl ServiceConfig {
    /// Builds settings from the API's `service` name and `credentials` object.
    pub fn from_parts(
        service: &str,
        credentials: serde_json::Value,
    ) -> Result<Self, SettingsError> {
        if !SERVICES.contains(&service) {
            return Err(SettingsError::UnknownService(service.to_owned()));
        }
        if !compiled_in(service) {
            return Err(SettingsError::NotCompiled(service.to_owned()));
        }
        let wrapped = serde_json::json!({ "service": service, "credentials": credentials });
        let cfg: Self = serde_json::from_value(wrapped).map_err(|e| SettingsError::Invalid {
            service: service.to_owned(),
            reason: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let bad = |reason: &str| {
            Err(SettingsError::Invalid {
                service: self.name().to_owned(),
                reason: reason.to_owned(),
            })
        };
        match self {
            Self::Fs(s) if !s.root.starts_with('/') => bad("`root` must be an absolute path"),
            Self::S3(s) if s.bucket.is_empty() => bad("`bucket` is required"),
            Self::Sftp(s) if s.key.is_none() && s.password.is_none() => {
                bad("one of `key` or `password` is required")
            }
            Self::Sftp(s) if s.key.is_none() => bad(
                "password login is not supported by the sftp connector; supply the private `key`",
            ),
            Self::Dropbox(s) | Self::Gdrive(s) | Self::Onedrive(s)
                if s.access_token.is_none() && s.refresh_token.is_none() =>
            {
                bad("one of `access_token` or `refresh_token` is required")
            }
            _ => Ok(()),
        }
    }

    /// The API's name for this service.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Fs(_) => "fs",
            Self::S3(_) => "s3",
            Self::Webdav(_) => "webdav",
            Self::Sftp(_) => "sftp",
            Self::Azblob(_) => "azblob",
            Self::Gcs(_) => "gcs",
            Self::Dropbox(_) => "dropbox",
            Self::Gdrive(_) => "gdrive",
            Self::Onedrive(_) => "onedrive",
        }
    }

    /// A human name for listings.
    pub fn display_name(&self) -> &'static str {
        display_name(self.name())
    }

    /// The network endpoint a user supplied, if any: the hub checks it against its SSRF policy.
    pub fn endpoint(&self) -> Option<&str> {
        match self {
            Self::S3(s) => s.endpoint.as_deref(),
            Self::Webdav(s) => Some(&s.endpoint),
            Self::Sftp(s) => Some(&s.endpoint),
            Self::Azblob(s) => Some(&s.endpoint),
            Self::Gcs(s) => s.endpoint.as_deref(),
            _ => None,
        }
    }
}

impl ServiceConfig {
    /// The provider budget this account draws from (see [`crate::budget`]): the endpoint and
    /// bucket for object stores and WebDAV (their limits are per server or per bucket), the
    /// user for OAuth services (theirs are per user: a digest of the token, never the token).
    /// `None` for `fs` and SFTP, which are not paced.
    pub fn budget_key(&self) -> Option<String> {
        use sha2::{Digest, Sha256};
        let origin = |endpoint: &str| {
            reqwest::Url::parse(endpoint)
                .ok()
                .and_then(|u| {
                    let host = u.host_str()?.to_ascii_lowercase();
                    Some(format!("{host}:{}", u.port_or_known_default().unwrap_or(0)))
                })
                .unwrap_or_else(|| endpoint.to_ascii_lowercase())
        };
        let key = match self {
            Self::Fs(_) | Self::Sftp(_) => return None,
            Self::S3(s) => {
                let region = s.region.as_deref().unwrap_or("us-east-1");
                let host = match &s.endpoint {
                    Some(e) => origin(e),
                    None => format!("s3.{region}.amazonaws.com:443"),
                };
                format!("{host}/{}", s.bucket)
            }
            Self::Webdav(s) => origin(&s.endpoint),
            Self::Azblob(s) => format!("{}/{}", origin(&s.endpoint), s.container),
            Self::Gcs(s) => {
                let host = s
                    .endpoint
                    .as_deref()
                    .map(origin)
                    .unwrap_or_else(|| "storage.googleapis.com:443".to_owned());
                format!("{host}/{}", s.bucket)
            }
            Self::Dropbox(s) | Self::Gdrive(s) | Self::Onedrive(s) => {
                let mut h = Sha256::new();
                h.update(s.client_id.as_deref().unwrap_or("").as_bytes());
                h.update([0]);
                let who = s.refresh_token.as_deref().or(s.access_token.as_deref());
                h.update(who.unwrap_or("").as_bytes());
                format!("user-{}", hex::encode(&h.finalize()[..12]))
            }
        };
        Some(format!("{}:{key}", self.name()))
    }
}

impl ServiceConfig {
    /// Host and port of the user-supplied endpoint (`None` for services without one). URL
    /// endpoints must be http(s); SFTP endpoints are `host[:port]` or `ssh://host[:port]`.
    pub fn endpoint_addr(&self) -> Result<Option<(String, u16)>, String> {
        let Some(endpoint) = self.endpoint() else {
            return Ok(None);
        };
        let bad = || "`endpoint` is not a valid address".to_owned();
        let (url, default_port) = if self.name() == "sftp" {
            let rest = endpoint.strip_prefix("ssh://").unwrap_or(endpoint);
            (format!("ssh://{rest}"), 22)
        } else {
            let port = if endpoint.starts_with("http://") {
                80
            } else if endpoint.starts_with("https://") {
                443
            } else {
                return Err("`endpoint` must be an http:// or https:// URL".into());
            };
            (endpoint.to_owned(), port)
        };
        let u = reqwest::Url::parse(&url).map_err(|_| bad())?;
        let host = u.host_str().ok_or_else(bad)?;
        Ok(Some((
            host.trim_matches(['[', ']']).to_owned(),
            u.port().unwrap_or(default_port),
        )))
    }
}

impl fmt::Debug for ServiceConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ServiceConfig({}, <credentials redacted>)", self.name())
    }
}

// Each arm depends on a Cargo feature, so with every feature on clippy sees only `true`s.
#[allow(clippy::match_like_matches_macro)]
fn compiled_in(service: &str) -> bool {
    match service {
        "fs" => cfg!(feature = "fs"),
        "s3" => cfg!(feature = "s3"),
        "webdav" => cfg!(feature = "webdav"),
        "sftp" => cfg!(feature = "sftp"),
        "azblob" => cfg!(feature = "azblob"),
        "gcs" => cfg!(feature = "gcs"),
        "dropbox" => cfg!(feature = "dropbox"),
        "gdrive" => cfg!(feature = "gdrive"),
        "onedrive" => cfg!(feature = "onedrive"),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn budget_keys_name_the_endpoint_or_a_digest_of_the_user() {
        let s3 = ServiceConfig::from_parts(
            "s3",
            json!({"bucket": "b", "endpoint": "http://Minio.local:9000/", "access_key_id": "k",
                   "secret_access_key": "s"}),
        )
        .expect("s3");
        assert_eq!(s3.budget_key().as_deref(), Some("s3:minio.local:9000/b"));
        let aws = ServiceConfig::from_parts(
            "s3",
            json!({"bucket": "b", "region": "eu-west-1", "access_key_id": "k",
                   "secret_access_key": "s"}),
        )
        .expect("s3");
        assert_eq!(
            aws.budget_key().as_deref(),
            Some("s3:s3.eu-west-1.amazonaws.com:443/b")
        );
        let dav = ServiceConfig::from_parts("webdav", json!({"endpoint": "https://dav.example/x"}))
            .expect("webdav");
        assert_eq!(dav.budget_key().as_deref(), Some("webdav:dav.example:443"));
        let user = |token: &str| {
            ServiceConfig::from_parts("dropbox", json!({"refresh_token": token, "client_id": "c"}))
                .expect("dropbox")
                .budget_key()
                .expect("a key")
        };
        assert_eq!(user("secret-one"), user("secret-one"));
        assert_ne!(user("secret-one"), user("secret-two"));
        assert!(
            !user("secret-one").contains("secret"),
            "never the token itself"
        );
        let fs = ServiceConfig::from_parts("fs", json!({"root": "/srv"})).expect("fs");
        assert_eq!(fs.budget_key(), None);
    }

    #[test]
    fn parses_and_refuses() {
        let s3 = ServiceConfig::from_parts(
            "s3",
            json!({"bucket":"b","access_key_id":"k","secret_access_key":"s","endpoint":"http://127.0.0.1:9000"}),
        )
        .expect("valid s3");
        assert_eq!(s3.name(), "s3");
        assert_eq!(s3.endpoint(), Some("http://127.0.0.1:9000"));
        assert!(!format!("{s3:?}").contains('s'.to_string().repeat(2).as_str()));
        assert!(matches!(
            ServiceConfig::from_parts("nope", json!({})),
            Err(SettingsError::UnknownService(_))
        ));
        let typo = ServiceConfig::from_parts("fs", json!({"rooot": "/x"}));
        assert!(matches!(typo, Err(SettingsError::Invalid { .. })));
        assert!(ServiceConfig::from_parts("fs", json!({"root": "rel"})).is_err());
        assert!(ServiceConfig::from_parts("sftp", json!({"endpoint":"h:22","user":"u"})).is_err());
    }

    #[test]
    fn serde_roundtrip() {
        let c =
            ServiceConfig::from_parts("webdav", json!({"endpoint":"http://h/dav","password":"p"}))
                .expect("valid");
        let text = serde_json::to_string(&c).expect("serialises");
        let back: ServiceConfig = serde_json::from_str(&text).expect("parses");
        assert!(back == c);
    }
}
