//! Validated paths inside an account's storage root: no `..`, no absolute paths, no NUL or
//! backslash, no control or bidirectional-formatting characters, bounded lengths, and names
//! given by users normalised to NFC. Every path the hub hands to a connector is a
//! [`StoragePath`].

use std::fmt;
use unicode_normalization::UnicodeNormalization;

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
    #[error(
        "name contains U+{0:04X}, an invisible or bidirectional control character that would make \
         it display differently from what it is"
    )]
    InvisibleChar(u32),
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
    if let Some(c) = name.chars().find(|c| is_invisible(*c)) {
        return Err(PathError::InvisibleChar(u32::from(c)));
    }
    if is_reserved(name) {
        return Err(PathError::Reserved);
    }
    Ok(())
}

/// True for names in Switchyard's reserved staging namespace. The prefix is compared without
/// regard to ASCII case: on a case-insensitive provider (SMB-backed WebDAV, macOS, Windows)
/// `.SWITCHYARD-partial` *is* our staging folder.
pub fn is_reserved(name: &str) -> bool {
    name.as_bytes()
        .get(..RESERVED_PREFIX.len())
        .is_some_and(|p| p.eq_ignore_ascii_case(RESERVED_PREFIX.as_bytes()))
}

/// Characters that change how a name is displayed without being visible themselves: the
/// bidirectional formatting characters (which can make `exe.txt` show as `txt.exe`), line and
/// paragraph separators, and zero-width characters that make two names look identical. (C0/C1
/// controls are refused as [`PathError::ForbiddenChar`].) Zero-width (non-)joiners stay
/// allowed: emoji sequences and several scripts need them.
fn is_invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'                      // Arabic letter mark
            | '\u{200B}'                // zero-width space
            | '\u{200E}'..='\u{200F}'    // left-to-right / right-to-left marks
            | '\u{2028}'..='\u{2029}'    // line / paragraph separators
            | '\u{202A}'..='\u{202E}'    // embeddings and overrides
            | '\u{2060}'                // word joiner
            | '\u{2066}'..='\u{2069}'    // isolates
            | '\u{FEFF}'                // zero-width no-break space (BOM)
            | '\u{FFF9}'..='\u{FFFB}'    // interlinear annotation
    )
}

/// A user-supplied name in Unicode Normalization Form C, so that the composed and decomposed
/// spellings of one name (`é` as U+00E9 or as `e` + U+0301) name one file, not two that look
/// identical.
pub fn normalize_name(name: &str) -> std::borrow::Cow<'_, str> {
    if unicode_normalization::is_nfc(name) {
        std::borrow::Cow::Borrowed(name)
    } else {
        std::borrow::Cow::Owned(name.nfc().collect())
    }
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

    /// The child `name` of this folder path. `name` comes from a user: it is normalised to NFC
    /// before it is checked. ([`StoragePath::parse`] does not normalise: it also reads names
    /// that exist on the provider, which must keep their exact spelling to be found again.)
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        let name = normalize_name(name);
        let name = name.as_ref();
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
            ".SWITCHYARD-partial",
            "a/.Switchyard-x/b",
            "invoice\u{202E}fdp.exe",
            "a\u{2066}b",
            "a\u{200F}b",
            "a\u{061C}b",
            "a\u{85}b",
            "tab\there",
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

    #[test]
    fn join_normalises_to_nfc() {
        let composed = StoragePath::root().join("caf\u{e9}.txt").expect("nfc");
        let decomposed = StoragePath::root().join("cafe\u{301}.txt").expect("nfd");
        assert_eq!(composed, decomposed);
        assert_eq!(decomposed.as_str(), "caf\u{e9}.txt");
        // Emoji sequences keep their zero-width joiners.
        assert!(validate_name("\u{1F468}\u{200D}\u{1F469}\u{200D}\u{1F467}.png").is_ok());
        assert_eq!(
            validate_name("x\u{202E}y"),
            Err(PathError::InvisibleChar(0x202E))
        );
    }

    /// Characters a name must never contain, for the property tests.
    fn forbidden() -> impl proptest::strategy::Strategy<Value = char> {
        use proptest::prelude::*;
        prop_oneof![
            (0u32..0x20).prop_map(|c| char::from_u32(c).expect("C0")),
            (0x7Fu32..0xA0).prop_map(|c| char::from_u32(c).expect("C1")),
            prop::sample::select(vec![
                '/', '\\', '\u{061C}', '\u{200B}', '\u{200E}', '\u{200F}', '\u{2028}', '\u{2029}',
                '\u{202A}', '\u{202B}', '\u{202C}', '\u{202D}', '\u{202E}', '\u{2060}', '\u{2066}',
                '\u{2067}', '\u{2068}', '\u{2069}', '\u{FEFF}',
            ]),
        ]
    }

    proptest::proptest! {
        /// Whatever the input, an accepted name is NFC, has no forbidden character, is not
        /// reserved in any case, and joining is insensitive to the input's normalisation form.
        #[test]
        fn accepted_names_are_clean(name in "\\PC{0,40}") {
            use unicode_normalization::UnicodeNormalization;
            if let Ok(p) = StoragePath::root().join(&name) {
                let n = p.name();
                proptest::prop_assert!(unicode_normalization::is_nfc(n));
                proptest::prop_assert!(!n.chars().any(|c| c.is_control() || is_invisible(c)));
                proptest::prop_assert!(!n.to_ascii_lowercase().starts_with(RESERVED_PREFIX));
                proptest::prop_assert!(n.len() <= MAX_NAME_BYTES && !n.is_empty());
                let nfd: String = name.nfd().collect();
                proptest::prop_assert_eq!(StoragePath::root().join(&nfd), Ok(p.clone()));
                proptest::prop_assert_eq!(StoragePath::parse(p.as_str()), Ok(p.clone()));
            }
        }

        /// A forbidden character anywhere in a name refuses it.
        #[test]
        fn forbidden_chars_are_refused(
            pre in "[a-zA-Z0-9 ._-]{0,20}",
            c in forbidden(),
            post in "[a-zA-Z0-9 ._-]{0,20}",
        ) {
            let name = format!("{pre}{c}{post}");
            proptest::prop_assert!(StoragePath::root().join(&name).is_err(), "{:?}", name);
            proptest::prop_assert!(validate_name(&name).is_err());
        }

        /// The reserved prefix is refused in every mix of case.
        #[test]
        fn reserved_prefix_in_any_case(mask in proptest::collection::vec(proptest::bool::ANY, 12), rest in "[a-z0-9]{0,10}") {
            let prefix: String = RESERVED_PREFIX
                .chars()
                .zip(mask)
                .map(|(c, up)| if up { c.to_ascii_uppercase() } else { c })
                .collect();
            let name = format!("{prefix}{rest}");
            proptest::prop_assert_eq!(validate_name(&name), Err(PathError::Reserved));
            proptest::prop_assert!(is_reserved(&name));
        }
    }
}
