//! Input guards for what users point the hub at: SSRF checks on storage endpoints (no internal
//! addresses unless the operator allows them). `fs` roots are confined in `crate::fsroot`.
//!
//! The endpoint check here only answers early with a clear 400; the guard that counts sits at
//! the socket ([`shared::egress`]): provider clients resolve through the same policy, check
//! every request URL and follow no redirects, so a name that resolves differently later still
//! cannot reach an internal address.

use crate::error::ApiError;
use shared::egress::EgressPolicy;
use shared::storage::ServiceConfig;
use std::net::IpAddr;

/// True for addresses a user-supplied endpoint must not reach by default: everything the IANA
/// special-purpose registries mark as not globally reachable, and every IPv6 form embedding an
/// IPv4 address (see [`shared::egress::is_global`]).
pub fn is_internal(ip: IpAddr) -> bool {
    !shared::egress::is_global(ip.to_canonical())
}

/// Checks a service's endpoint against the SSRF policy now, for an early, clear answer. The
/// provider connections enforce the same policy in their own resolver and on every request.
pub async fn check_endpoint(cfg: &ServiceConfig, egress: &EgressPolicy) -> Result<(), ApiError> {
    let Some((host, _port)) = cfg.endpoint_addr().map_err(ApiError::bad_request)? else {
        return Ok(());
    };
    egress
        .resolve(&host)
        .await
        .map(|_| ())
        .map_err(|e| match e {
            shared::egress::EgressError::Denied { .. } => ApiError::bad_request(e.to_string()),
            shared::egress::EgressError::Resolve { .. } => {
                shared::storage::StorageError::Unreachable {
                    host: host.clone(),
                    cause: "the name does not resolve".into(),
                }
                .into()
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_addresses() {
        for a in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "198.18.0.1",
            "192.88.99.1",
            "::1",
            "fd00::1",
            "fe80::1",
            "fec0::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "64:ff9b::7f00:1",
            "2002:7f00:1::1",
            "2001:0:4136:e378:8000:63bf:80ff:fffe",
        ] {
            assert!(is_internal(a.parse().expect("ip")), "{a}");
        }
        for a in ["8.8.8.8", "2606:4700::1111", "1.1.1.1"] {
            assert!(!is_internal(a.parse().expect("ip")), "{a}");
        }
    }

    #[test]
    fn endpoint_parsing() {
        let addr = |service: &str, creds: serde_json::Value| {
            ServiceConfig::from_parts(service, creds)
                .expect("settings")
                .endpoint_addr()
        };
        let s3 = |e: &str| {
            addr(
                "s3",
                serde_json::json!({"bucket": "b", "endpoint": e, "access_key_id": "a",
                                   "secret_access_key": "s"}),
            )
        };
        let sftp = |e: &str| {
            addr(
                "sftp",
                serde_json::json!({"endpoint": e, "user": "u", "key": "k"}),
            )
        };
        assert_eq!(s3("http://h:9000/x"), Ok(Some(("h".into(), 9000))));
        assert_eq!(s3("https://h"), Ok(Some(("h".into(), 443))));
        assert!(s3("file:///etc").is_err());
        assert_eq!(sftp("h:2222"), Ok(Some(("h".into(), 2222))));
        assert_eq!(sftp("ssh://[::1]:22"), Ok(Some(("::1".into(), 22))));
    }
}
