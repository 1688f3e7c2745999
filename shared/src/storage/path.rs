//! Validated paths inside an account's storage root: no `..`, no absolute paths, no NUL or
//! backslash, bounded lengths. Every path the hub hands to a connector is a [`StoragePath`].

use std::fmt;

/// Longest single name, in bytes (the common filesystem limit).
pub const MAX_NAME_BYTES: usize = 255;
/// Longest whole path, in bytes.
pub const MAX_PATH_BYTES: usize = 4096;
/// Names starting with this are Switchyard's own staging files; users cannot create or see them.
pub const RESERVED_PREFIX: &str = ".switchyard-";

/// Why a name or path was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("name is empty")]
    Empty,
    #[error("name '.' or '..' is not allowed")]
    DotSegment,
    #[error("name contains a forbidden character (NUL, '/', '\\' or a control character)")]
    ForbiddenChar,
    #[error("name is longer than {MAX_NAME_BYTES} bytes")]
    NameTooLong,
    #[error("path is longer than {MAX_PATH_BYTES} bytes")]
    PathTooLong,
    #[error("names starting with '{RESERVED_PREFIX}' are reserved")]
    Reserved,
}

/// Checks one path component (a file or folder name given by a user).
pub fn validate_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::Empty);
    }
    if name == "." || name == ".." {
        return Err(PathError::DotSegment);
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(PathError::NameTooLong);
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c == '\0' || c.is_control())
    {
        return Err(PathError::ForbiddenChar);
    }
    if name.starts_with(RESERVED_PREFIX) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// A relative path below an account root: `""` is the root, otherwise names joined by `/`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoragePath(String);

impl fmt::Debug for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoragePath({:?})", self.0)
    }
}

impl fmt::Display for StoragePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

impl StoragePath {
    /// The account root.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses a relative path (`a/b/c`; the empty string is the root). Every component must
    /// pass [`validate_name`]; a leading `/` is refused so that absolute paths never slip in.
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        if s.len() > MAX_PATH_BYTES {
            return Err(PathError::PathTooLong);
        }
        for part in s.split('/') {
            validate_name(part)?;
        }
        Ok(Self(s.to_owned()))
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The relative path text (`""` for the root).
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The child `name` of this folder path.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        validate_name(name)?;
        let joined = if self.0.is_empty() {
            name.to_owned()
        } else {
            format!("{}/{}", self.0, name)
        };
        if joined.len() > MAX_PATH_BYTES {
            return Err(PathError::PathTooLong);
        }
        Ok(Self(joined))
    }

    /// The child `name` without the reserved-prefix check: only for Switchyard's own staging
    /// names, which are generated, never user-supplied.
    pub(crate) fn join_reserved(&self, name: &str) -> Self {
        debug_assert!(name.starts_with(RESERVED_PREFIX) && !name.contains('/'));
        if self.0.is_empty() {
            Self(name.to_owned())
        } else {
            Self(format!("{}/{}", self.0, name))
        }
    }

    /// The last component (`""` for the root).
    pub fn name(&self) -> &str {
        self.0.rsplit('/').next().unwrap_or("")
    }

    /// The enclosing folder; `None` for the root.
    pub fn parent(&self) -> Option<Self> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.rfind('/') {
            Some(i) => Self(self.0[..i].to_owned()),
            None => Self::root(),
        })
    }

    /// Every proper ancestor from the root down (the root first), not including `self`.
    pub fn ancestors(&self) -> Vec<Self> {
        let mut out = vec![Self::root()];
        let mut end = 0;
        while let Some(i) = self.0[end..].find('/') {
            out.push(Self(self.0[..end + i].to_owned()));
            end += i + 1;
        }
        if self.is_root() {
            out.clear();
        }
        out
    }

    /// True when `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &StoragePath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }

    /// Re-roots `self` from below `from` to below `to` (used by folder moves and copies).
    pub fn rebase(&self, from: &StoragePath, to: &StoragePath) -> Option<Self> {
        if !self.starts_with(from) {
            return None;
        }
        let rest = if from.is_root() {
            self.0.as_str()
        } else {
            self.0[from.0.len()..].trim_start_matches('/')
        };
        Some(if rest.is_empty() {
            to.clone()
        } else if to.is_root() {
            Self(rest.to_owned())
        } else {
            Self(format!("{}/{}", to.0, rest))
        })
    }

    /// The path as OpenDAL wants a file.
    pub(crate) fn file_key(&self) -> &str {
        &self.0
    }

    /// The path as OpenDAL wants a folder (trailing slash; `/` for the root).
    pub(crate) fn dir_key(&self) -> String {
        if self.0.is_empty() {
            "/".to_owned()
        } else {
            format!("{}/", self.0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_traversal_and_bad_chars() {
        for bad in [
            "..",
            "a/../b",
            "/etc/passwd",
            "a//b",
            "a/",
            "a\\b",
            "a\0b",
            ".",
            "a/./b",
            ".switchyard-x",
        ] {
            assert!(StoragePath::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert_eq!(
            StoragePath::parse(&"x".repeat(256)),
            Err(PathError::NameTooLong)
        );
        let long = vec!["a".repeat(200); 30].join("/");
        assert_eq!(StoragePath::parse(&long), Err(PathError::PathTooLong));
    }

    #[test]
    fn navigation() {
        let p = StoragePath::parse("a/b/c.txt").expect("valid");
        assert_eq!(p.name(), "c.txt");
        assert_eq!(p.parent().expect("has parent").as_str(), "a/b");
        let anc: Vec<_> = p
            .ancestors()
            .iter()
            .map(|a| a.as_str().to_owned())
            .collect();
        assert_eq!(anc, vec!["", "a", "a/b"]);
        assert!(StoragePath::root().ancestors().is_empty());
        assert_eq!(StoragePath::root().dir_key(), "/");
        assert_eq!(p.dir_key(), "a/b/c.txt/");
        let a = StoragePath::parse("a").expect("valid");
        let ab = StoragePath::parse("ab").expect("valid");
        assert!(p.starts_with(&a));
        assert!(!ab.starts_with(&a));
        let moved = p
            .rebase(&a, &StoragePath::parse("z").expect("valid"))
            .expect("below");
        assert_eq!(moved.as_str(), "z/b/c.txt");
        assert_eq!(
            p.rebase(&a, &StoragePath::root()).expect("below").as_str(),
            "b/c.txt"
        );
    }
}
