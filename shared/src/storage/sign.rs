//! Request signing for the pass-through API (sans IO): AWS Signature Version 4 for S3 (the
//! payload unsigned, so bodies stream) and Azure Storage Shared Key. Each takes the request's
//! method, URL and headers and returns the headers to add.

use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length.
    let mut m = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    m.update(msg);
    m.finalize().into_bytes().into()
}

/// RFC 3986 unreserved characters stay; everything else is `%XX` (AWS's URI encoding).
const AWS_ENCODE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s` encoded as AWS and Azure canonical forms want it.
pub fn uri_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, AWS_ENCODE).to_string()
}

/// A URL's path re-encoded segment by segment with [`uri_encode`] (the form both the request
/// and its signature must use).
pub fn canonical_path(url: &reqwest::Url) -> String {
    let path = url.path();
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| {
            let decoded = percent_encoding::percent_decode_str(seg).decode_utf8_lossy();
            uri_encode(&decoded)
        })
        .collect::<Vec<_>>()
        .join("/")
}

/// AWS Signature Version 4 credentials for one service and region.
pub struct SigV4<'a> {
    pub access_key_id: &'a str,
    pub secret_access_key: &'a str,
    pub region: &'a str,
    pub service: &'a str,
}

/// The payload hash that lets a body stream unsigned (S3 accepts it).
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

impl SigV4<'_> {
    /// The headers that sign a request: `x-amz-date`, `x-amz-content-sha256` and
    /// `Authorization`. `headers` are the request's other headers (lowercase names) to sign
    /// along with `host`; `url`'s path must already be in [`canonical_path`] form.
    pub fn sign(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &[(String, String)],
        payload_hash: &str,
        now: jiff::Timestamp,
    ) -> Vec<(String, String)> {
        let amz_date = now.strftime("%Y%m%dT%H%M%SZ").to_string();
        let date = &amz_date[..8];
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let mut signed: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), fold(v)))
            .filter(|(k, _)| k != "authorization")
            .collect();
        signed.push(("host".into(), host));
        signed.push(("x-amz-date".into(), amz_date.clone()));
        signed.push(("x-amz-content-sha256".into(), payload_hash.to_owned()));
        signed.sort();
        signed.dedup_by(|a, b| a.0 == b.0);
        let canonical_headers: String = signed.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let signed_names = signed
            .iter()
            .map(|(k, _)| k.as_str())
            .collect::<Vec<_>>()
            .join(";");
        let mut query: Vec<(String, String)> = url
            .query_pairs()
            .map(|(k, v)| (uri_encode(&k), uri_encode(&v)))
            .collect();
        query.sort();
        let canonical_query = query
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&");
        let canonical = format!(
            "{method}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_names}\n{payload_hash}",
            url.path()
        );
        let scope = format!("{date}/{}/{}/aws4_request", self.region, self.service);
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex::encode(Sha256::digest(canonical.as_bytes()))
        );
        let k = hmac(
            format!("AWS4{}", self.secret_access_key).as_bytes(),
            date.as_bytes(),
        );
        let k = hmac(&k, self.region.as_bytes());
        let k = hmac(&k, self.service.as_bytes());
        let k = hmac(&k, b"aws4_request");
        let signature = hex::encode(hmac(&k, to_sign.as_bytes()));
        vec![
            ("x-amz-date".into(), amz_date),
            ("x-amz-content-sha256".into(), payload_hash.to_owned()),
            (
                "authorization".into(),
                format!(
                    "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_names}, Signature={signature}",
                    self.access_key_id
                ),
            ),
        ]
    }
}

/// Trims a header value and folds inner runs of spaces (both schemes' canonical form).
fn fold(v: &str) -> String {
    v.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The API version the Shared Key requests ask for (one Azurite accepts).
pub const AZURE_VERSION: &str = "2020-10-02";

/// Azure Storage Shared Key for one account.
pub struct SharedKey<'a> {
    pub account_name: &'a str,
    /// The base64 account key.
    pub account_key: &'a str,
}

impl SharedKey<'_> {
    /// The headers that sign a request: `x-ms-date`, `x-ms-version` (unless `headers` has
    /// one) and `Authorization`. `headers` are the request's other headers (lowercase names),
    /// `Content-Length` among them when there is a body.
    pub fn sign(
        &self,
        method: &str,
        url: &reqwest::Url,
        headers: &[(String, String)],
        now: jiff::Timestamp,
    ) -> Result<Vec<(String, String)>, base64::DecodeError> {
        let key = base64::engine::general_purpose::STANDARD.decode(self.account_key)?;
        let date = now.strftime("%a, %d %b %Y %H:%M:%S GMT").to_string();
        let mut all: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), fold(v)))
            .filter(|(k, _)| k != "authorization")
            .collect();
        all.push(("x-ms-date".into(), date.clone()));
        let mut added = vec![("x-ms-date".to_owned(), date)];
        if !all.iter().any(|(k, _)| k == "x-ms-version") {
            all.push(("x-ms-version".into(), AZURE_VERSION.into()));
            added.push(("x-ms-version".into(), AZURE_VERSION.into()));
        }
        let get = |name: &str| {
            all.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        let length = get("content-length");
        let length = if length == "0" { String::new() } else { length };
        let mut ms: Vec<&(String, String)> =
            all.iter().filter(|(k, _)| k.starts_with("x-ms-")).collect();
        ms.sort();
        let canonical_headers: String = ms.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        let mut resource = format!("/{}{}", self.account_name, url.path());
        let mut params: Vec<(String, Vec<String>)> = Vec::new();
        for (k, v) in url.query_pairs() {
            let k = k.to_ascii_lowercase();
            match params.iter_mut().find(|(n, _)| *n == k) {
                Some((_, vs)) => vs.push(v.into_owned()),
                None => params.push((k, vec![v.into_owned()])),
            }
        }
        params.sort();
        for (k, mut vs) in params {
            vs.sort();
            resource.push_str(&format!("\n{k}:{}", vs.join(",")));
        }
        let to_sign = format!(
            "{method}\n{}\n{}\n{length}\n{}\n{}\n\n{}\n{}\n{}\n{}\n{}\n{canonical_headers}{resource}",
            get("content-encoding"),
            get("content-language"),
            get("content-md5"),
            get("content-type"),
            get("if-modified-since"),
            get("if-match"),
            get("if-none-match"),
            get("if-unmodified-since"),
            get("range"),
        );
        let signature =
            base64::engine::general_purpose::STANDARD.encode(hmac(&key, to_sign.as_bytes()));
        added.push((
            "authorization".into(),
            format!("SharedKey {}:{signature}", self.account_name),
        ));
        Ok(added)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "GET Object" example of the AWS Signature Version 4 documentation for S3.
    #[test]
    fn sigv4_matches_the_aws_example() {
        let s = SigV4 {
            access_key_id: "AKIAIOSFODNN7EXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            region: "us-east-1",
            service: "s3",
        };
        let url =
            reqwest::Url::parse("https://examplebucket.s3.amazonaws.com/test.txt").expect("url");
        let now: jiff::Timestamp = "2013-05-24T00:00:00Z".parse().expect("time");
        let out = s.sign(
            "GET",
            &url,
            &[("Range".into(), "bytes=0-9".into())],
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            now,
        );
        let auth = &out
            .iter()
            .find(|(k, _)| k == "authorization")
            .expect("auth")
            .1;
        assert_eq!(
            auth,
            "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, \
             SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, \
             Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41"
        );
    }

    #[test]
    fn paths_are_encoded_once_per_segment() {
        let url = reqwest::Url::parse("http://h/b/a%20b/c+d/%C3%A9").expect("url");
        assert_eq!(canonical_path(&url), "/b/a%20b/c%2Bd/%C3%A9");
    }
}
