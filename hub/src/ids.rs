//! Opaque object ids: `F`/`D` (file/folder) followed by base64url of a 12-byte HMAC tag and the
//! path. Ids are stable (the same path always has the same id), URL-safe, bound to one account
//! (a tag made for account A does not verify for account B), and cannot be forged into paths
//! outside the account root: the path inside is re-validated after the tag checks out.

use crate::error::ApiError;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use shared::auth::{ct_eq, Tagger};
use shared::storage::{EntryKind, StoragePath};

const TAG_LEN: usize = 12;
/// Longest id accepted (a 4 KiB path in base64 plus the tag fits well under this).
const MAX_ID_LEN: usize = 6000;

/// The id of the root folder of every account.
pub const ROOT_ID: &str = "root";

/// Makes and checks object ids.
#[derive(Clone, Debug)]
pub struct IdCodec {
    tagger: Tagger,
}

fn kind_char(kind: EntryKind) -> char {
    match kind {
        EntryKind::File => 'F',
        EntryKind::Folder => 'D',
    }
}

impl IdCodec {
    pub fn new(tagger: Tagger) -> Self {
        Self { tagger }
    }

    /// The id of `path` of kind `kind` in `account`.
    pub fn encode(&self, account: i64, kind: EntryKind, path: &StoragePath) -> String {
        if kind == EntryKind::Folder && path.is_root() {
            return ROOT_ID.to_owned();
        }
        let tag = self.tag(account, kind, path.as_str());
        let mut raw = Vec::with_capacity(TAG_LEN + path.as_str().len());
        raw.extend_from_slice(&tag[..TAG_LEN]);
        raw.extend_from_slice(path.as_str().as_bytes());
        let mut out = String::with_capacity(1 + raw.len() * 4 / 3 + 4);
        out.push(kind_char(kind));
        URL_SAFE_NO_PAD.encode_string(raw, &mut out);
        out
    }

    fn tag(&self, account: i64, kind: EntryKind, path: &str) -> [u8; 32] {
        let k = [kind_char(kind) as u8];
        self.tagger
            .tag(&[b"object-id", &account.to_be_bytes(), &k, path.as_bytes()])
    }

    /// Decodes an id that must be of `kind`. Malformed ids are a 400; ids that do not verify
    /// for this account (forged, foreign, or of the other kind) are a 404.
    pub fn decode(&self, account: i64, kind: EntryKind, id: &str) -> Result<StoragePath, ApiError> {
        if id == ROOT_ID {
            return match kind {
                EntryKind::Folder => Ok(StoragePath::root()),
                EntryKind::File => Err(ApiError::not_found("file")),
            };
        }
        if id.len() > MAX_ID_LEN || id.len() < 2 {
            return Err(ApiError::bad_request("malformed id"));
        }
        let (first, rest) = id.split_at(1);
        let id_kind = match first {
            "F" => EntryKind::File,
            "D" => EntryKind::Folder,
            _ => return Err(ApiError::bad_request("malformed id")),
        };
        let raw = URL_SAFE_NO_PAD
            .decode(rest)
            .map_err(|_| ApiError::bad_request("malformed id"))?;
        if raw.len() <= TAG_LEN {
            return Err(ApiError::bad_request("malformed id"));
        }
        let (tag, path) = raw.split_at(TAG_LEN);
        let path = std::str::from_utf8(path).map_err(|_| ApiError::bad_request("malformed id"))?;
        let what = match kind {
            EntryKind::File => "file",
            EntryKind::Folder => "folder",
        };
        let expected = self.tag(account, id_kind, path);
        if !ct_eq(tag, &expected[..TAG_LEN]) || id_kind != kind {
            return Err(ApiError::not_found(what));
        }
        Ok(StoragePath::parse(path)?)
    }

    /// Decodes an id of either kind.
    pub fn decode_any(&self, account: i64, id: &str) -> Result<(EntryKind, StoragePath), ApiError> {
        let kind = if id.starts_with('F') {
            EntryKind::File
        } else {
            EntryKind::Folder
        };
        Ok((kind, self.decode(account, kind, id)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::StatusCode;

    fn codec() -> IdCodec {
        IdCodec::new(Tagger::new([3; 32]))
    }

    #[test]
    fn roundtrip_and_stability() {
        let c = codec();
        let p = StoragePath::parse("a/b c/ü.txt").expect("valid");
        let id = c.encode(7, EntryKind::File, &p);
        assert_eq!(id, c.encode(7, EntryKind::File, &p));
        assert!(id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'));
        assert_eq!(c.decode(7, EntryKind::File, &id).expect("decodes"), p);
        assert_eq!(c.encode(7, EntryKind::Folder, &StoragePath::root()), "root");
    }

    #[test]
    fn foreign_forged_and_malformed() {
        let c = codec();
        let p = StoragePath::parse("x.txt").expect("valid");
        let id = c.encode(7, EntryKind::File, &p);
        let foreign = c.decode(8, EntryKind::File, &id).expect_err("foreign");
        assert_eq!(foreign.status(), StatusCode::NOT_FOUND);
        let wrong_kind = c.decode(7, EntryKind::Folder, &id).expect_err("kind");
        assert_eq!(wrong_kind.status(), StatusCode::NOT_FOUND);
        // A forged id: a valid-looking encoding of a traversal path with a made-up tag.
        let mut raw = vec![0u8; TAG_LEN];
        raw.extend_from_slice(b"../../etc/passwd");
        let forged = format!("F{}", URL_SAFE_NO_PAD.encode(raw));
        assert_eq!(
            c.decode(7, EntryKind::File, &forged)
                .expect_err("forged")
                .status(),
            StatusCode::NOT_FOUND
        );
        for bad in ["../etc", "F", "Fa.b", "X123", "F!!!", "/etc/passwd"] {
            assert_eq!(
                c.decode(7, EntryKind::File, bad).expect_err(bad).status(),
                StatusCode::BAD_REQUEST,
                "{bad}"
            );
        }
    }
}
