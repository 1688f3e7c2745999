//! A part's body held to what its sender declared: exactly `len` bytes and, when given, the
//! `Content-MD5`, checked as it streams (the last bytes are held back until the digest is
//! known), so a bad part fails before the provider completes it. Upload-session parts use it
//! on hubs and on spokes.

use bytes::Bytes;
use futures::{Stream, StreamExt};
use md5::{Digest, Md5};

/// A part's body as it streams: fails when it runs past `len` bytes, ends short of them, or
/// (with `md5`) ends with another digest, so a bad part never completes at the provider.
pub fn checked_part<S, E>(
    body: S,
    len: u64,
    md5: Option<[u8; 16]>,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + 'static
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    let mut seen = 0u64;
    let mut hasher = md5.map(|_| Md5::new());
    let mut body = body;
    let mut ended = false;
    Box::pin(futures::stream::poll_fn(move |cx| {
        if ended {
            return std::task::Poll::Ready(None);
        }
        match body.poll_next_unpin(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Some(Err(e))) => {
                ended = true;
                std::task::Poll::Ready(Some(Err(e.to_string())))
            }
            std::task::Poll::Ready(Some(Ok(chunk))) => {
                seen += chunk.len() as u64;
                if seen > len {
                    ended = true;
                    return std::task::Poll::Ready(Some(Err(format!(
                        "{PART_LENGTH}: more than the {len} bytes declared"
                    ))));
                }
                if let Some(h) = hasher.as_mut() {
                    h.update(&chunk);
                }
                // The last bytes are held back until the digest is known to match.
                if seen == len {
                    if let (Some(h), Some(want)) = (hasher.take(), md5) {
                        if h.finalize().as_slice() != want {
                            ended = true;
                            return std::task::Poll::Ready(Some(Err(PART_DIGEST.to_owned())));
                        }
                    }
                }
                std::task::Poll::Ready(Some(Ok(chunk)))
            }
            std::task::Poll::Ready(None) => {
                ended = true;
                if seen < len {
                    return std::task::Poll::Ready(Some(Err(format!(
                        "{PART_LENGTH}: {seen} of the {len} bytes declared arrived"
                    ))));
                }
                std::task::Poll::Ready(None)
            }
        }
    }))
}

/// A `Content-MD5` header's digest (base64 of 16 bytes, surrounding spaces allowed); `None`
/// when it is not one.
pub fn content_md5(value: &[u8]) -> Option<[u8; 16]> {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD
        .decode(value.trim_ascii())
        .ok()
        .and_then(|d| <[u8; 16]>::try_from(d.as_slice()).ok())
}

/// In the error of a part whose length is not the declared one.
pub const PART_LENGTH: &str = "part length mismatch";
/// In the error of a part whose bytes do not match its `Content-MD5`.
pub const PART_DIGEST: &str = "Content-MD5 mismatch";
