//! ACME (RFC 8555) certificates for `public_url`'s host with `instant-acme`: the account and
//! the certificate cached in `tls.acme.cache_dir` (files 0600), issuance at start when nothing
//! valid is cached, renewal `renew_before` expiry, retries with exponential backoff, and the
//! HTTP-01 challenge answered by the redirect listener.
//!
//! Failures name the challenge type, the domain and the ACME server's problem document; they
//! go to the log and to `/readyz` (which fails while no real certificate is served).

use super::{now_secs, read_small, Certificate, Tls};
use crate::config::{AcmeConfig, Config};
use anyhow::Context as _;
use instant_acme::{
    Account, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    Problem, RetryPolicy,
};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const ACCOUNT_FILE: &str = "account.json";
/// The chain and its key in one file, so that they are replaced together.
const CERT_FILE: &str = "certificate.pem";
/// Longest one issuance may take (account, order, validation, finalization).
const ISSUE_TIMEOUT: Duration = Duration::from_secs(300);
/// First retry delay after a failure; doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(3600);
/// Longest single sleep before re-checking the renewal time (clock jumps, suspend).
const MAX_SLEEP: Duration = Duration::from_secs(3600);

/// The cache directory: `tls.acme.cache_dir`, else `DATA_DIR/acme`.
fn cache_dir(config: &Config, acme: &AcmeConfig) -> PathBuf {
    acme.cache_dir
        .clone()
        .unwrap_or_else(|| config.data_dir.join("acme"))
}

/// The cached certificate, if it is for `domain` and still valid.
pub(crate) fn cached_certificate(config: &Config, domain: &str) -> Option<Certificate> {
    let acme = config.tls.acme.as_ref()?;
    let path = cache_dir(config, acme).join(CERT_FILE);
    let pem = read_small(&path).ok()?;
    match Certificate::from_pem(&pem, &pem) {
        Ok(c) if c.names.iter().any(|n| n == domain) && c.valid_at(now_secs()) => Some(c),
        Ok(c) => {
            tracing::info!(serial = %c.serial, names = ?c.names, domain,
                "the cached ACME certificate is expired or for another name; issuing anew");
            None
        }
        Err(e) => {
            tracing::warn!(path = %path.display(), error = format!("{e:#}"),
                "the cached ACME certificate is unusable; issuing anew");
            None
        }
    }
}

/// When to renew `cert`: `renew_before` its expiry, or at two thirds of its lifetime when
/// `renew_before` is longer than the lifetime (so a short-lived certificate is not renewed in
/// a loop).
fn renew_at(cert: &Certificate, renew_before: Duration) -> i64 {
    let lifetime = cert.not_after - cert.not_before;
    let before = renew_before.as_secs() as i64;
    if before >= lifetime {
        cert.not_before + lifetime * 2 / 3
    } else {
        cert.not_after - before
    }
}

/// Keeps a valid certificate served until `stop` fires.
pub(crate) async fn run(config: Config, tls: Arc<Tls>, mut stop: watch::Receiver<()>) {
    let (Some(acme), Some(domain)) = (config.tls.acme.clone(), config.acme_domain()) else {
        return;
    };
    let cache = cache_dir(&config, &acme);
    let mut current = cached_certificate(&config, &domain);
    let mut account: Option<Account> = None;
    let mut backoff = FIRST_BACKOFF;
    loop {
        if let Some(c) = &current {
            let wait = renew_at(c, acme.renew_before.0) - now_secs();
            if wait > 0 {
                let nap = Duration::from_secs(wait as u64).min(MAX_SLEEP);
                tokio::select! {
                    () = tokio::time::sleep(nap) => continue,
                    _ = stop.changed() => return,
                }
            }
            tracing::info!(domain, serial = %c.serial, not_after = c.not_after,
                "renewing the ACME certificate");
        }
        let attempt = tokio::time::timeout(
            ISSUE_TIMEOUT,
            issue(&acme, &cache, &domain, &tls, &mut account),
        );
        let result = tokio::select! {
            r = attempt => r.unwrap_or_else(|_| Err(anyhow::anyhow!(
                "{} issuance for {domain} timed out after {ISSUE_TIMEOUT:?}",
                acme.challenge.as_str()
            ))),
            _ = stop.changed() => return,
        };
        match result {
            Ok(cert) => {
                tracing::info!(domain, serial = %cert.serial, not_after = cert.not_after,
                    "ACME certificate issued");
                tls.install(&cert);
                current = Some(cert);
                backoff = FIRST_BACKOFF;
            }
            Err(e) => {
                let message = format!("{e:#}");
                tracing::error!(domain, directory = %acme.directory_url, error = %message,
                    retry_in = ?backoff, "ACME certificate issuance failed");
                tls.set_error(message);
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A problem document as one line: `detail (type)`.
fn problem_text(p: &Problem) -> String {
    let detail = p.detail.as_deref().unwrap_or("no detail");
    match &p.r#type {
        Some(t) => format!("{detail} ({t})"),
        None => detail.to_owned(),
    }
}

/// An instant-acme error as one line, with the problem document when there is one.
fn acme_error(e: instant_acme::Error) -> anyhow::Error {
    match e {
        instant_acme::Error::Api(p) => {
            anyhow::anyhow!("the ACME server said: {}", problem_text(&p))
        }
        other => anyhow::anyhow!(other),
    }
}

/// Tokens answered on the redirect listener for as long as this lives.
struct Published<'a> {
    tls: &'a Tls,
    tokens: Vec<String>,
}

impl Drop for Published<'_> {
    fn drop(&mut self) {
        for t in &self.tokens {
            self.tls.challenges.remove(t);
        }
    }
}

/// One issuance: account (cached), order, HTTP-01 for every pending authorization, CSR for a
/// fresh key, the chain; written to the cache, then returned.
async fn issue(
    acme: &AcmeConfig,
    cache: &Path,
    domain: &str,
    tls: &Tls,
    account: &mut Option<Account>,
) -> anyhow::Result<Certificate> {
    let challenge = acme.challenge.as_str();
    let acct = match account {
        Some(a) => a.clone(),
        None => {
            let a = load_or_create_account(acme, cache)
                .await
                .with_context(|| format!("ACME account at {}", acme.directory_url))?;
            *account = Some(a.clone());
            a
        }
    };
    let ids = [Identifier::Dns(domain.to_owned())];
    let mut order = match acct.new_order(&NewOrder::new(&ids)).await {
        Ok(o) => o,
        Err(e) => {
            if let instant_acme::Error::Api(p) = &e {
                if p.r#type
                    .as_deref()
                    .is_some_and(|t| t.ends_with(":accountDoesNotExist"))
                {
                    // The server forgot us (a test CA restarted): a new account next time.
                    *account = None;
                    let _ = std::fs::remove_file(cache.join(ACCOUNT_FILE));
                }
            }
            return Err(acme_error(e).context(format!("new order for {domain}")));
        }
    };
    let mut published = Published {
        tls,
        tokens: Vec::new(),
    };
    {
        let mut authorizations = order.authorizations();
        while let Some(a) = authorizations.next().await {
            let mut a = a.map_err(acme_error)?;
            match a.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                s => anyhow::bail!("the authorization for {domain} is {s:?}"),
            }
            let mut ch = a.challenge(ChallengeType::Http01).ok_or_else(|| {
                anyhow::anyhow!("the ACME server offers no {challenge} challenge for {domain}")
            })?;
            let key_authorization = ch.key_authorization().as_str().to_owned();
            tls.challenges.insert(ch.token.clone(), key_authorization);
            published.tokens.push(ch.token.clone());
            ch.set_ready()
                .await
                .map_err(acme_error)
                .with_context(|| format!("{challenge} challenge for {domain}"))?;
        }
    }
    let polling = RetryPolicy::new()
        .initial_delay(Duration::from_millis(250))
        .backoff(1.5)
        .timeout(Duration::from_secs(120));
    let ready = order.poll_ready(&polling).await;
    if !matches!(ready, Ok(OrderStatus::Ready)) {
        // Why: the failed challenge's own problem document says it best.
        let mut reasons = Vec::new();
        let mut authorizations = order.authorizations();
        while let Some(Ok(mut a)) = authorizations.next().await {
            if let Ok(state) = a.refresh().await {
                for c in &state.challenges {
                    if let Some(p) = &c.error {
                        reasons.push(problem_text(p));
                    }
                }
            }
        }
        let reason = match (reasons.is_empty(), ready) {
            (false, _) => reasons.join("; "),
            (true, Err(e)) => format!("{:#}", acme_error(e)),
            (true, Ok(s)) => format!("the order is {s:?}"),
        };
        anyhow::bail!(
            "{challenge} challenge for {domain} failed at {}: {reason}",
            acme.directory_url
        );
    }
    drop(published);

    let key = rcgen::KeyPair::generate().context("generating the certificate key")?;
    let mut params =
        rcgen::CertificateParams::new(vec![domain.to_owned()]).context("certificate name")?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params
        .serialize_request(&key)
        .context("certificate signing request")?;
    order
        .finalize_csr(csr.der())
        .await
        .map_err(acme_error)
        .with_context(|| format!("finalizing the order for {domain}"))?;
    let chain = order
        .poll_certificate(&polling)
        .await
        .map_err(acme_error)
        .with_context(|| format!("downloading the certificate for {domain}"))?;
    let pem = format!("{}\n{}", chain.trim_end(), key.serialize_pem());
    let cert = Certificate::from_pem(pem.as_bytes(), pem.as_bytes())
        .context("the ACME server's certificate")?;
    ensure_private_dir(cache)?;
    crate::dev::write_private(&cache.join(CERT_FILE), pem.as_bytes())
        .with_context(|| format!("tls.acme.cache_dir: writing {}", cache.display()))?;
    Ok(cert)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct CachedAccount {
    directory_url: String,
    credentials: instant_acme::AccountCredentials,
}

/// The account from the cache when it is for this directory, else a new one (then cached).
async fn load_or_create_account(acme: &AcmeConfig, cache: &Path) -> anyhow::Result<Account> {
    let builder = || match &acme.ca_file {
        Some(f) => Account::builder_with_root(f)
            .map_err(|e| anyhow::anyhow!("tls.acme.ca_file: {} unusable: {e}", f.display())),
        None => Account::builder().map_err(|e| anyhow::anyhow!("HTTP client: {e}")),
    };
    let path = cache.join(ACCOUNT_FILE);
    if let Ok(bytes) = read_small(&path) {
        match serde_json::from_slice::<CachedAccount>(&bytes) {
            Ok(c) if c.directory_url == acme.directory_url => {
                return builder()?
                    .from_credentials(c.credentials)
                    .await
                    .map_err(acme_error);
            }
            Ok(_) => tracing::info!("the cached ACME account is for another directory"),
            Err(e) => tracing::warn!(path = %path.display(), error = %e,
                "the cached ACME account is unreadable; creating a new one"),
        }
    }
    let contact: Vec<String> = acme
        .contact
        .iter()
        .map(|c| match c.strip_prefix("mailto:") {
            Some(_) => c.clone(),
            None => format!("mailto:{c}"),
        })
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            acme.directory_url.clone(),
            None,
        )
        .await
        .map_err(acme_error)?;
    ensure_private_dir(cache)?;
    let json = serde_json::to_vec(&CachedAccount {
        directory_url: acme.directory_url.clone(),
        credentials,
    })?;
    crate::dev::write_private(&path, &json)
        .with_context(|| format!("tls.acme.cache_dir: writing {}", path.display()))?;
    tracing::info!(directory = %acme.directory_url, "ACME account created");
    Ok(account)
}

/// Creates `dir` (0700) if needed.
fn ensure_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("tls.acme.cache_dir: creating {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(not_before: i64, not_after: i64) -> Certificate {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(vec!["a.example".to_owned()]).expect("params");
        let c = params.self_signed(&key).expect("cert");
        let mut c = Certificate::from_pem(c.pem().as_bytes(), key.serialize_pem().as_bytes())
            .expect("parses");
        c.not_before = not_before;
        c.not_after = not_after;
        c
    }

    #[test]
    fn renewal_time() {
        let day = 86_400;
        // 90 days, renew 30 days before.
        let c = cert(0, 90 * day);
        assert_eq!(renew_at(&c, Duration::from_secs(30 * day as u64)), 60 * day);
        // A 60 s certificate with the default 30 days: at two thirds, not in a loop.
        let c = cert(1000, 1060);
        assert_eq!(renew_at(&c, Duration::from_secs(30 * day as u64)), 1040);
    }
}
