//! Input guards for what users point the hub at: SSRF checks on storage endpoints (no internal
//! addresses unless the operator allows them). `fs` roots are confined in `crate::fsroot`.

use crate::error::ApiError;
use shared::storage::ServiceConfig;
use std::net::IpAddr;

/// True for addresses a user-supplied endpoint must not reach by default: loopback, private,
/// link-local, CGNAT, unique-local, unspecified, multicast, documentation and broadcast.
pub fn is_internal(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_multicast()
                || v4.is_broadcast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_internal(IpAddr::V4(v4));
            }
            let s = v6.segments();
            v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x64 && s[1] == 0xff9b)
                || (s[0] == 0x2001 && s[1] == 0x0db8)
        }
    }
}

/// Checks a service's endpoint against the SSRF policy. The check resolves the name now; the
/// provider connection resolves again later, so operators who fear DNS rebinding should also
/// filter egress at the network layer.
pub async fn check_endpoint(cfg: &ServiceConfig, allow_private: bool) -> Result<(), ApiError> {
    let Some((host, _port)) = cfg.endpoint_addr().map_err(ApiError::bad_request)? else {
        return Ok(());
    };
    if allow_private {
        return Ok(());
    }
    // The same resolver family (hickory, TTL-honouring) the provider connections use.
    let addrs = shared::resolve::Resolver::system()
        .lookup_host(&host)
        .await
        .map_err(|_| ApiError::bad_request(format!("cannot resolve endpoint host `{host}`")))?;
    if addrs.is_empty() || addrs.iter().any(|a| is_internal(*a)) {
        return Err(ApiError::bad_request(
            "`endpoint` resolves to an internal address, which this hub does not allow \
             (storage.allow_private_endpoints)",
        ));
    }
    Ok(())
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
            "::1",
            "fd00::1",
            "fe80::1",
            "::ffff:127.0.0.1",
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
