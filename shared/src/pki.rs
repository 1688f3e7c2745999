//! The network's internal PKI: its two CAs (rcgen; the network CA issues hub certificates, the
//! spoke CA spoke certificates), spoke keys and CSRs, and the rustls
//! configurations of both ends of the control plane, including the pinned-CA verifier a spoke
//! uses before it has joined. Pure computation, no IO.

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use std::time::Duration;

/// The name every hub certificate carries and every spoke verifies (hubs are reached by IP or
/// by names that change; the CA, not the DNS name, is what identifies the network).
pub const HUB_SERVER_NAME: &str = "hub.switchyard.internal";

/// Errors building certificates or TLS configurations.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("PEM: {0}")]
    Pem(String),
    #[error("the certificate request is not acceptable: {0}")]
    BadCsr(String),
}

/// Hex SHA-256 of a certificate's DER bytes: what a join string pins.
pub fn fingerprint(der: &[u8]) -> String {
    hex::encode(Sha256::digest(der))
}

/// The fingerprint of the first certificate in `pem`.
pub fn fingerprint_pem(pem: &str) -> Result<String, PkiError> {
    Ok(fingerprint(&first_cert(pem)?))
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

/// Every certificate in `pem`, in order.
pub fn certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Result<Vec<_>, _> = CertificateDer::pem_slice_iter(pem.as_bytes()).collect();
    let certs = certs.map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// The private key in `pem`.
pub fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, PkiError> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

/// A certificate authority: its certificate and signing key, both PEM.
pub struct Ca {
    pub cert_pem: String,
    key: KeyPair,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = time::OffsetDateTime::now_utc();
    // A little slack for clocks that disagree.
    params.not_before = now - time::Duration::minutes(10);
    params.not_after = now + lifetime;
}

impl Ca {
    /// A new self-signed CA valid for `lifetime`.
    pub fn generate(name: &str, lifetime: Duration) -> Result<Ca, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, lifetime);
        let cert = params.self_signed(&key)?;
        Ok(Ca {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from stored PEM.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Ca, PkiError> {
        Ok(Ca {
            cert_pem: cert_pem.to_owned(),
            key: KeyPair::from_pem(key_pem)?,
        })
    }

    /// The signing key as PEM (store it encrypted).
    pub fn key_pem(&self) -> String {
        self.key.serialize_pem()
    }

    /// The CA certificate's fingerprint.
    pub fn fingerprint(&self) -> Result<String, PkiError> {
        fingerprint_pem(&self.cert_pem)
    }

    fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// A hub server certificate (new key) for [`HUB_SERVER_NAME`] plus `extra_names`
    /// (DNS names or IP addresses). Returns `(chain_pem: leaf + CA, key_pem)`.
    pub fn issue_hub(
        &self,
        extra_names: &[String],
        lifetime: Duration,
    ) -> Result<(String, String), PkiError> {
        let key = KeyPair::generate()?;
        let mut names = vec![HUB_SERVER_NAME.to_owned()];
        names.extend(extra_names.iter().cloned());
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, HUB_SERVER_NAME);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, lifetime);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok((
            format!("{}{}", cert.pem(), self.cert_pem),
            key.serialize_pem(),
        ))
    }

    /// Signs a spoke's CSR as a client (and data-endpoint server) certificate for `spoke-{id}`.
    /// Whatever names the CSR asks for are ignored: the hub decides the identity. `advertise`
    /// (a host or IP) is added so the spoke can serve HTTPS under it.
    pub fn sign_spoke_csr(
        &self,
        csr_pem: &str,
        spoke_id: i64,
        advertise_host: Option<&str>,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let csr = CertificateSigningRequestParams::from_pem(csr_pem)
            .map_err(|e| PkiError::BadCsr(e.to_string()))?;
        let mut names = vec![spoke_server_name(spoke_id)];
        if let Some(h) = advertise_host {
            names.push(h.to_owned());
        }
        let mut params = CertificateParams::new(names)?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("spoke-{spoke_id}"));
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ClientAuth,
            ExtendedKeyUsagePurpose::ServerAuth,
        ];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, lifetime);
        let cert = params.signed_by(&csr.public_key, &self.issuer()?)?;
        Ok(cert.pem())
    }
}

/// A fresh key pair for a spoke and a CSR for it: `(key_pem, csr_pem)`. The key never leaves
/// the machine that calls this.
pub fn new_key_and_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn roots(ca_pem: &str) -> Result<Arc<rustls::RootCertStore>, PkiError> {
    let mut store = rustls::RootCertStore::empty();
    for c in certs(ca_pem)? {
        store.add(c)?;
    }
    Ok(Arc::new(store))
}

/// The hub's TLS config: its chain and key; client certificates from the CA are verified when
/// offered and optional (enrollment connections have none; the hub refuses anything but
/// `Enroll` on them).
pub fn hub_server_config(
    ca_pem: &str,
    chain_pem: &str,
    key_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ServerConfig, PkiError> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs(chain_pem)?, private_key(key_pem)?)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// A spoke's data endpoint TLS config: its enrolled certificate (which carries ServerAuth and
/// its advertised host) plus the CA, so clients that trust the network CA can verify it.
pub fn spoke_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<rustls::ServerConfig, PkiError> {
    let mut chain = certs(cert_pem)?;
    chain.extend(certs(ca_pem)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(chain, private_key(key_pem)?)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// The name every spoke certificate carries: other spokes dial its relay under it.
pub fn spoke_server_name(spoke_id: i64) -> String {
    format!("spoke-{spoke_id}.{HUB_SERVER_NAME}")
}

/// The spoke a certificate names: the id in its [`spoke_server_name`] (the hub puts exactly one
/// in each spoke certificate it signs, whatever the CSR asked). `None` for a certificate that
/// does not parse or names no spoke. Only meaningful for a certificate already verified under
/// the spoke CA.
pub fn spoke_id_of(cert_der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let suffix = format!(".{HUB_SERVER_NAME}");
    let mut ids = san.value.general_names.iter().filter_map(|n| match n {
        x509_parser::extensions::GeneralName::DNSName(d) => d
            .strip_suffix(suffix.as_str())?
            .strip_prefix("spoke-")?
            .parse::<i64>()
            .ok(),
        _ => None,
    });
    let id = ids.next()?;
    // Two spoke names in one certificate are not what a hub signs.
    ids.next().is_none().then_some(id)
}

/// Fingerprints of revoked spoke certificates, as hubs push them to every spoke: shared by a
/// spoke's relay verifiers (both directions) and checked at every handshake and request.
/// Revocation is permanent, so the set only grows (bounded by the number of spokes ever
/// enrolled).
#[derive(Debug, Clone, Default)]
pub struct Revoked(Arc<std::sync::RwLock<std::collections::HashSet<String>>>);

impl Revoked {
    /// Adds `fingerprints`; returns how many were new.
    pub fn extend(&self, fingerprints: impl IntoIterator<Item = String>) -> usize {
        let mut set = self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        fingerprints
            .into_iter()
            .map(|f| f.to_ascii_lowercase())
            .filter(|f| set.insert(f.clone()))
            .count()
    }

    /// True when the certificate with this DER is revoked.
    pub fn is_revoked(&self, cert_der: &[u8]) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&fingerprint(cert_der))
    }

    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The message a revoked peer's handshake fails with.
pub const REVOKED_PEER: &str = "the peer's certificate has been revoked";

/// A client-certificate verifier that refuses revoked certificates before the inner one runs.
#[derive(Debug)]
struct RevocationCheckingClient {
    inner: Arc<dyn rustls::server::danger::ClientCertVerifier>,
    revoked: Revoked,
}

impl rustls::server::danger::ClientCertVerifier for RevocationCheckingClient {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }

    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        if self.revoked.is_revoked(end_entity) {
            return Err(rustls::Error::General(REVOKED_PEER.into()));
        }
        self.inner
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A server-certificate verifier that refuses revoked certificates before the inner one runs.
#[derive(Debug)]
struct RevocationCheckingServer {
    inner: Arc<dyn ServerCertVerifier>,
    revoked: Revoked,
}

impl ServerCertVerifier for RevocationCheckingServer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if self.revoked.is_revoked(end_entity) {
            return Err(rustls::Error::General(REVOKED_PEER.into()));
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A spoke's relay endpoint TLS config: its enrolled certificate, and only peers with a
/// certificate from the spoke CA (other spokes) that is not in `revoked` get in.
pub fn relay_server_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    revoked: &Revoked,
) -> Result<rustls::ServerConfig, PkiError> {
    let inner =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let verifier = Arc::new(RevocationCheckingClient {
        inner,
        revoked: revoked.clone(),
    });
    let mut chain = certs(cert_pem)?;
    chain.extend(certs(ca_pem)?);
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, private_key(key_pem)?)?;
    cfg.alpn_protocols = vec![crate::proto::ALPN_RELAY.to_vec()];
    Ok(cfg)
}

/// The TLS config a spoke dials another spoke's relay with: trusts only the spoke CA (`ca_pem`)
/// and refuses a relaying spoke whose certificate is in `revoked`.
pub fn relay_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    revoked: &Revoked,
) -> Result<rustls::ClientConfig, PkiError> {
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(roots(ca_pem)?, provider())
            .build()
            .map_err(|e| PkiError::Tls(rustls::Error::General(e.to_string())))?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(RevocationCheckingServer {
            inner,
            revoked: revoked.clone(),
        }))
        .with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    cfg.alpn_protocols = vec![crate::proto::ALPN_RELAY.to_vec()];
    Ok(cfg)
}

/// An enrolled spoke's TLS config towards hubs: trusts only the CA given (the network CA),
/// presents its certificate.
pub fn spoke_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
    alpn: &[u8],
) -> Result<rustls::ClientConfig, PkiError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots(ca_pem)?)
        .with_client_auth_cert(certs(cert_pem)?, private_key(key_pem)?)?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The TLS config of a spoke that is joining: it trusts a hub only if the hub's chain contains
/// a CA certificate with the pinned fingerprint and the leaf verifies under that CA.
pub fn pinned_client_config(pin: &str, alpn: &[u8]) -> Result<rustls::ClientConfig, PkiError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedCa {
            pin: pin.to_ascii_lowercase(),
            provider: provider(),
        }))
        .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Ok(cfg)
}

/// The message a pin mismatch carries (callers match on it to explain the failure).
pub const PIN_MISMATCH: &str =
    "the hub's certificate authority does not match the pinned fingerprint";

#[derive(Debug)]
struct PinnedCa {
    pin: String,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| crate::auth::ct_eq(fingerprint(c).as_bytes(), self.pin.as_bytes()))
            .ok_or_else(|| rustls::Error::General(PIN_MISMATCH.into()))?;
        let mut store = rustls::RootCertStore::empty();
        store.add(ca.clone().into_owned())?;
        let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(store),
            self.provider.clone(),
        )
        .build()
        .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn ca_signs_hub_and_spoke_certificates() {
        let ca = Ca::generate("switchyard test CA", DAY).expect("ca");
        let fp = ca.fingerprint().expect("fp");
        assert_eq!(fp.len(), 64);
        let again = Ca::from_pem(&ca.cert_pem, &ca.key_pem()).expect("reload");
        assert_eq!(again.fingerprint().expect("fp"), fp);
        let (chain, key) = ca.issue_hub(&["127.0.0.1".into()], DAY).expect("hub cert");
        assert_eq!(certs(&chain).expect("chain").len(), 2);
        hub_server_config(&ca.cert_pem, &chain, &key, b"x").expect("server config");
        let (spoke_key, csr) = new_key_and_csr("whatever-the-spoke-asks").expect("csr");
        let cert = ca
            .sign_spoke_csr(&csr, 42, Some("10.0.0.5"), DAY)
            .expect("signed");
        spoke_client_config(&ca.cert_pem, &cert, &spoke_key, b"x").expect("client config");
        pinned_client_config(&fp, b"x").expect("pinned config");
        // The identity a relay checks grants against: the spoke id the hub put in, whatever
        // the CSR asked; a hub certificate names no spoke.
        let der = |pem: &str| certs(pem).expect("pem")[0].to_vec();
        assert_eq!(spoke_id_of(&der(&cert)), Some(42));
        assert_eq!(spoke_id_of(&der(&chain)), None);
        assert_eq!(spoke_id_of(b"not a certificate"), None);
    }

    /// Runs a TLS handshake in memory; the error of whichever side failed.
    fn handshake(
        client: rustls::ClientConfig,
        server: rustls::ServerConfig,
        name: &str,
    ) -> Result<(), rustls::Error> {
        let name = ServerName::try_from(name.to_owned()).expect("name");
        let mut c = rustls::ClientConnection::new(Arc::new(client), name)?;
        let mut s = rustls::ServerConnection::new(Arc::new(server))?;
        for _ in 0..10 {
            let mut buf = Vec::new();
            c.write_tls(&mut buf).expect("write");
            s.read_tls(&mut buf.as_slice()).expect("read");
            s.process_new_packets()?;
            let mut buf = Vec::new();
            s.write_tls(&mut buf).expect("write");
            c.read_tls(&mut buf.as_slice()).expect("read");
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(());
            }
        }
        Err(rustls::Error::General("handshake did not finish".into()))
    }

    #[test]
    fn relays_refuse_revoked_peers_both_ways_and_hub_certificates() {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let hub_ca = Ca::generate("network", DAY).expect("ca");
        let spoke_ca = Ca::generate("spokes", DAY).expect("ca");
        let spoke = |id: i64| {
            let (key, csr) = new_key_and_csr("s").expect("csr");
            (
                spoke_ca.sign_spoke_csr(&csr, id, None, DAY).expect("cert"),
                key,
            )
        };
        let ((a_cert, a_key), (b_cert, b_key)) = (spoke(1), spoke(2));
        let ca = &spoke_ca.cert_pem;
        let revoked = Revoked::default();
        let server = || relay_server_config(ca, &a_cert, &a_key, &revoked).expect("server");
        let client = || relay_client_config(ca, &b_cert, &b_key, &revoked).expect("client");
        handshake(client(), server(), &spoke_server_name(1)).expect("peers connect");

        // B revoked: A's relay refuses it as a client.
        let b_der = certs(&b_cert).expect("der")[0].to_vec();
        assert_eq!(
            revoked.extend([fingerprint(&b_der).to_ascii_uppercase()]),
            1
        );
        assert!(revoked.is_revoked(&b_der));
        let e = handshake(client(), server(), &spoke_server_name(1)).expect_err("refused");
        assert!(e.to_string().contains(REVOKED_PEER), "{e}");

        // A revoked (as seen by a third spoke C): C refuses A's relay as a server.
        let (c_cert, c_key) = spoke(3);
        let seen_by_c = Revoked::default();
        seen_by_c.extend([fingerprint(&certs(&a_cert).expect("der")[0])]);
        let client_c = relay_client_config(ca, &c_cert, &c_key, &seen_by_c).expect("client");
        let e = handshake(client_c, server(), &spoke_server_name(1)).expect_err("refused");
        assert!(e.to_string().contains(REVOKED_PEER), "{e}");

        // A hub certificate (network CA) is no relay peer.
        let (hub_chain, hub_key) = hub_ca.issue_hub(&[], DAY).expect("hub");
        let hub_as_client =
            relay_client_config(ca, &hub_chain, &hub_key, &Revoked::default()).expect("client");
        assert!(handshake(hub_as_client, server(), &spoke_server_name(1)).is_err());
    }

    #[test]
    fn garbage_csr_is_refused() {
        let ca = Ca::generate("ca", DAY).expect("ca");
        assert!(matches!(
            ca.sign_spoke_csr(
                "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
                1,
                None,
                DAY
            ),
            Err(PkiError::BadCsr(_))
        ));
    }
}
