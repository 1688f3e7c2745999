//! HTTPS for the REST API: the certificate the hub serves (from files, reloaded on SIGHUP, or
//! issued through ACME), the rustls server configuration (HTTP/2 and HTTP/1.1 by ALPN) and the
//! TLS health `/readyz` reports.
//!
//! The served certificate sits behind an `ArcSwap` read by a rustls `ResolvesServerCert` on
//! every handshake: swapping it changes what new connections get, while established ones keep
//! the session they negotiated.

pub mod acme;
pub mod listener;

use crate::config::{Config, TlsConfig};
use anyhow::Context as _;
use arc_swap::ArcSwap;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// Largest certificate or key file read (a chain of a few certificates is a few KiB).
const MAX_PEM_BYTES: u64 = 1 << 20;

/// The certificate served to every handshake, swappable at any time.
#[derive(Debug)]
struct CertStore {
    current: ArcSwap<CertifiedKey>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // One name per hub: the SNI (whatever it is, however long) does not pick anything.
        Some(self.current.load_full())
    }
}

/// A certificate chain with its key, checked to belong together, and what we log about it.
pub struct Certificate {
    key: Arc<CertifiedKey>,
    /// Seconds since the Unix epoch.
    pub not_before: i64,
    pub not_after: i64,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// The leaf's DNS names.
    pub names: Vec<String>,
}

impl std::fmt::Debug for Certificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("serial", &self.serial)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses a PEM chain (leaf first) and a PEM private key.
    pub fn from_pem(chain_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Certificate> {
        let chain = CertificateDer::pem_slice_iter(chain_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow::anyhow!("not a PEM certificate chain: {e}"))?;
        let key = PrivateKeyDer::from_pem_slice(key_pem)
            .map_err(|e| anyhow::anyhow!("not a PEM private key: {e}"))?;
        Self::from_der(chain, key)
    }

    fn from_der(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> anyhow::Result<Certificate> {
        let leaf = chain
            .first()
            .ok_or_else(|| anyhow::anyhow!("no certificate in the chain"))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(leaf.as_ref())
            .map_err(|e| anyhow::anyhow!("the leaf certificate does not parse: {e}"))?;
        let not_before = parsed.validity().not_before.timestamp();
        let not_after = parsed.validity().not_after.timestamp();
        let serial = parsed
            .tbs_certificate
            .raw_serial_as_string()
            .replace(':', "");
        let names = parsed
            .subject_alternative_name()
            .ok()
            .flatten()
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => {
                            Some(d.to_ascii_lowercase())
                        }
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| anyhow::anyhow!("unsupported private key: {e}"))?;
        let key = CertifiedKey::new(chain, signer);
        key.keys_match()
            .map_err(|e| anyhow::anyhow!("the private key does not match the certificate: {e}"))?;
        Ok(Certificate {
            key: Arc::new(key),
            not_before,
            not_after,
            serial,
            names,
        })
    }

    /// Loads `tls.cert_file` and `tls.key_file`; errors name the key at fault.
    pub fn load_files(cert_file: &Path, key_file: &Path) -> anyhow::Result<Certificate> {
        let chain = read_small(cert_file)
            .with_context(|| format!("tls.cert_file: cannot read {}", cert_file.display()))?;
        let key = read_small(key_file)
            .with_context(|| format!("tls.key_file: cannot read {}", key_file.display()))?;
        let chain = CertificateDer::pem_slice_iter(&chain)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| {
                anyhow::anyhow!("tls.cert_file: {} is not PEM: {e}", cert_file.display())
            })?;
        if chain.is_empty() {
            anyhow::bail!("tls.cert_file: no certificate in {}", cert_file.display());
        }
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
            anyhow::anyhow!(
                "tls.key_file: no PEM private key in {}: {e}",
                key_file.display()
            )
        })?;
        Self::from_der(chain, key).map_err(|e| {
            anyhow::anyhow!(
                "tls.cert_file/tls.key_file ({}, {}): {e}",
                cert_file.display(),
                key_file.display()
            )
        })
    }

    /// Whether `now` (seconds since the epoch) is inside the validity period.
    pub fn valid_at(&self, now: i64) -> bool {
        self.not_before <= now && now < self.not_after
    }

    /// The DER of the leaf certificate.
    pub fn leaf_der(&self) -> &[u8] {
        self.key
            .cert
            .first()
            .map(|c| c.as_ref())
            .unwrap_or_default()
    }
}

/// Reads a file of at most [`MAX_PEM_BYTES`].
fn read_small(path: &Path) -> anyhow::Result<Vec<u8>> {
    use std::io::Read as _;
    let f = std::fs::File::open(path)?;
    let mut buf = Vec::new();
    f.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        anyhow::bail!("larger than {MAX_PEM_BYTES} bytes: not a certificate or key file");
    }
    Ok(buf)
}

/// Seconds since the Unix epoch.
pub(crate) fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// What is being served, for `/readyz` and logs.
#[derive(Debug, Clone)]
enum Serving {
    /// A self-signed stand-in until ACME issues the first certificate: handshakes work for
    /// probes that skip verification, and `/readyz` says why the hub is not ready.
    Placeholder,
    Real {
        serial: String,
        not_after: i64,
    },
}

#[derive(Debug)]
struct Health {
    serving: Serving,
    /// The last ACME failure, cleared by the next success.
    last_error: Option<String>,
}

/// ACME HTTP-01 key authorizations being served, by token.
#[derive(Debug, Default)]
pub struct Challenges {
    tokens: Mutex<HashMap<String, String>>,
}

impl Challenges {
    pub(crate) fn insert(&self, token: String, key_authorization: String) {
        self.lock().insert(token, key_authorization);
    }

    pub(crate) fn remove(&self, token: &str) {
        self.lock().remove(token);
    }

    /// The key authorization for `token`, if a challenge is pending.
    pub fn get(&self, token: &str) -> Option<String> {
        self.lock().get(token).cloned()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The API's TLS: configuration, served certificate, ACME challenges and health.
#[derive(Debug)]
pub struct Tls {
    config: TlsConfig,
    store: Arc<CertStore>,
    server_config: Arc<rustls::ServerConfig>,
    pub challenges: Challenges,
    health: Mutex<Health>,
    not_after: prometheus_client::metrics::gauge::Gauge,
    failures: prometheus_client::metrics::counter::Counter,
}

impl Tls {
    /// The TLS of `config`: `None` when the API serves plain HTTP. Loads the certificate files
    /// (or the ACME cache, else a placeholder); errors name the config key at fault.
    pub fn from_config(
        config: &Config,
        metrics: &crate::metrics::Metrics,
    ) -> anyhow::Result<Option<Arc<Tls>>> {
        let tls = &config.tls;
        if !tls.enabled() {
            return Ok(None);
        }
        let (initial, serving) = match (&tls.cert_file, &tls.key_file, &tls.acme) {
            (Some(c), Some(k), _) => {
                let cert = Certificate::load_files(c, k)?;
                if !cert.valid_at(now_secs()) {
                    tracing::warn!(cert_file = %c.display(), serial = %cert.serial,
                        "the configured TLS certificate is outside its validity period");
                }
                let serving = Serving::Real {
                    serial: cert.serial.clone(),
                    not_after: cert.not_after,
                };
                (cert.key, serving)
            }
            (_, _, Some(_)) => {
                let domain = config
                    .acme_domain()
                    .context("public_url: no host for the ACME certificate")?;
                match acme::cached_certificate(config, &domain) {
                    Some(cert) => {
                        let serving = Serving::Real {
                            serial: cert.serial.clone(),
                            not_after: cert.not_after,
                        };
                        (cert.key, serving)
                    }
                    None => (placeholder(&domain)?, Serving::Placeholder),
                }
            }
            _ => anyhow::bail!("tls: set tls.cert_file and tls.key_file, or tls.acme"),
        };
        let store = Arc::new(CertStore {
            current: ArcSwap::new(initial),
        });
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("TLS protocol versions")?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        server_config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        if let Serving::Real { not_after, .. } = &serving {
            metrics.tls_not_after.set(*not_after);
        }
        Ok(Some(Arc::new(Tls {
            not_after: metrics.tls_not_after.clone(),
            failures: metrics.acme_failures.clone(),
            config: tls.clone(),
            store,
            server_config: Arc::new(server_config),
            challenges: Challenges::default(),
            health: Mutex::new(Health {
                serving,
                last_error: None,
            }),
        })))
    }

    /// The rustls configuration of the HTTPS listener.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server_config.clone()
    }

    /// The TLS part of the config.
    pub fn config(&self) -> &TlsConfig {
        &self.config
    }

    /// Serves `cert` to new handshakes from now on.
    pub fn install(&self, cert: &Certificate) {
        self.store.current.store(cert.key.clone());
        self.not_after.set(cert.not_after);
        let mut h = self.health();
        h.serving = Serving::Real {
            serial: cert.serial.clone(),
            not_after: cert.not_after,
        };
        h.last_error = None;
    }

    /// Re-reads `tls.cert_file` and `tls.key_file` (SIGHUP). On any error the certificate
    /// served so far stays, and the error says why.
    pub fn reload(&self) -> anyhow::Result<()> {
        let (Some(c), Some(k)) = (&self.config.cert_file, &self.config.key_file) else {
            tracing::info!("SIGHUP: nothing to reload, ACME certificates renew on their own");
            return Ok(());
        };
        let cert = Certificate::load_files(c, k)?;
        if !cert.valid_at(now_secs()) {
            anyhow::bail!(
                "tls.cert_file: {} (serial {}) is outside its validity period; keeping the \
                 certificate served so far",
                c.display(),
                cert.serial
            );
        }
        self.install(&cert);
        tracing::info!(serial = %cert.serial, not_after = cert.not_after,
            "reloaded the TLS certificate");
        Ok(())
    }

    /// Records an ACME failure (shown by `/readyz` while no real certificate is served).
    pub(crate) fn set_error(&self, message: String) {
        self.failures.inc();
        self.health().last_error = Some(message);
    }

    /// `Ok` while a real certificate is served; otherwise why not.
    pub fn readiness(&self) -> Result<(), String> {
        let h = self.health();
        match (&h.serving, &h.last_error) {
            (Serving::Real { not_after, .. }, _) if *not_after > now_secs() => Ok(()),
            (Serving::Real { serial, .. }, e) => Err(format!(
                "the TLS certificate (serial {serial}) has expired{}",
                e.as_deref()
                    .map(|e| format!("; last renewal attempt: {e}"))
                    .unwrap_or_default()
            )),
            (Serving::Placeholder, Some(e)) => Err(format!("no TLS certificate yet: {e}")),
            (Serving::Placeholder, None) => {
                Err("no TLS certificate yet: ACME issuance in progress".into())
            }
        }
    }

    /// The last ACME failure, if the last attempt failed.
    pub fn last_error(&self) -> Option<String> {
        self.health().last_error.clone()
    }

    /// The serial number (hex) of the certificate served now, unless a placeholder.
    pub fn serving_serial(&self) -> Option<String> {
        match &self.health().serving {
            Serving::Real { serial, .. } => Some(serial.clone()),
            Serving::Placeholder => None,
        }
    }

    fn health(&self) -> std::sync::MutexGuard<'_, Health> {
        self.health.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A self-signed certificate for `domain`, served until ACME delivers.
fn placeholder(domain: &str) -> anyhow::Result<Arc<CertifiedKey>> {
    let key = rcgen::KeyPair::generate().context("generating the placeholder key")?;
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])
        .context("placeholder certificate name")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "switchyard placeholder");
    let cert = params
        .self_signed(&key)
        .context("self-signing the placeholder")?;
    let key_der = rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into();
    Ok(Certificate::from_der(vec![cert.der().clone()], key_der)?.key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec![name.to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn file_errors_name_the_key() {
        let dir = tempfile::tempdir().expect("tmp");
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let err =
            |c: &Path, k: &Path| format!("{:#}", Certificate::load_files(c, k).expect_err("bad"));
        assert!(err(&c, &k).contains("tls.cert_file"), "missing cert file");
        let (cert, key) = pair("a.example");
        std::fs::write(&c, &cert).expect("write");
        assert!(err(&c, &k).contains("tls.key_file"), "missing key file");
        std::fs::write(&k, &cert).expect("write");
        assert!(
            err(&c, &k).contains("tls.key_file"),
            "a certificate as the key"
        );
        std::fs::write(&c, "garbage").expect("write");
        std::fs::write(&k, &key).expect("write");
        assert!(err(&c, &k).contains("tls.cert_file"), "no certificate");
        let (_, other_key) = pair("a.example");
        std::fs::write(&c, &cert).expect("write");
        std::fs::write(&k, &other_key).expect("write");
        let e = err(&c, &k);
        assert!(e.contains("does not match"), "{e}");
        std::fs::write(&k, &key).expect("write");
        let ok = Certificate::load_files(&c, &k).expect("a good pair");
        assert_eq!(ok.names, vec!["a.example".to_owned()]);
        assert!(ok.valid_at(now_secs()));
        // A huge file is refused without being read whole.
        let f = std::fs::File::create(&c).expect("create");
        f.set_len(MAX_PEM_BYTES + 10).expect("sparse");
        assert!(err(&c, &k).contains("larger than"), "{}", err(&c, &k));
    }
}
