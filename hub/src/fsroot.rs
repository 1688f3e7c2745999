//! `fs` account roots confined to their application. Each application owns the folder
//! `app-<id>` under every `storage.fs.allowed_roots` entry (created on demand) and may root `fs`
//! accounts only inside it: a relative root lies under the space in the first allowed root, an
//! absolute one must name a folder inside one of its spaces.
//!
//! Roots are walked component by component with `lstat` and never through a symbolic link, at
//! connect time and again whenever a hub loads the account, so a link placed inside one
//! application's space cannot lead into another's. Anything outside the application's space
//! gets one answer, decided on the text of the path before any file system call, so a key
//! cannot probe which host paths exist.

use crate::error::ApiError;
use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

/// The folder application `app` owns under the allowed root `allowed`.
pub fn app_space(allowed: &Path, app: i64) -> PathBuf {
    allowed.join(format!("app-{app}"))
}

/// The one answer for any root outside the application's space, existing or not.
fn outside() -> ApiError {
    ApiError::bad_request(
        "fs `root` must be a folder inside this application's own fs space: a relative path \
         (e.g. `photos`), or an absolute path inside the space; `..` and symbolic links are not \
         allowed",
    )
}

/// Checks `p` is a real directory (not a symbolic link), making it first when `create`.
fn real_dir(p: &Path, create: bool) -> Result<(), ApiError> {
    match std::fs::symlink_metadata(p) {
        Ok(m) if m.file_type().is_symlink() => Err(ApiError::bad_request(
            "fs `root` passes through a symbolic link, which is not allowed",
        )),
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(ApiError::bad_request("fs `root` is not a folder")),
        Err(e) if e.kind() == ErrorKind::NotFound && create => {
            match std::fs::create_dir(p) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(ApiError::internal(format_args!("creating fs root: {e}"))),
            }
            real_dir(p, false)
        }
        Err(e) if e.kind() == ErrorKind::NotFound => {
            Err(ApiError::bad_request("fs `root` does not exist"))
        }
        Err(e) => Err(ApiError::internal(format_args!("checking fs root: {e}"))),
    }
}

/// Resolves the `fs` root `requested` of application `app` to an absolute folder inside its
/// space, given the canonical allowed roots. With `create`, missing folders along the way are
/// made (connect time); without, every one must already exist (when an account is loaded).
pub fn confine(
    requested: &str,
    app: i64,
    allowed: &[PathBuf],
    create: bool,
) -> Result<PathBuf, ApiError> {
    let Some(first) = allowed.first() else {
        return Err(ApiError::bad_request(
            "this hub offers no `fs` storage (storage.fs.allowed_roots is empty)",
        ));
    };
    if requested.is_empty() || requested.contains('\0') {
        return Err(outside());
    }
    let requested = Path::new(requested);
    // Decided on the text alone: no file system call sees a path outside the space.
    let (space, rest) = if requested.is_absolute() {
        allowed
            .iter()
            .find_map(|a| {
                let space = app_space(a, app);
                let rest = requested.strip_prefix(&space).ok()?.to_path_buf();
                Some((space, rest))
            })
            .ok_or_else(outside)?
    } else {
        (app_space(first, app), requested.to_path_buf())
    };
    let mut parts = Vec::new();
    for c in rest.components() {
        match c {
            Component::Normal(n) => parts.push(n.to_owned()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(outside())
            }
        }
    }
    real_dir(&space, create)?;
    let mut root = space;
    for part in parts {
        root.push(part);
        real_dir(&root, create)?;
    }
    // The allowed roots are canonical and no component below them is a link, so the canonical
    // form is the path itself, unless an allowed root itself was swapped for a link since.
    match root.canonicalize() {
        Ok(c) if c == root => Ok(root),
        _ => Err(outside()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(r: Result<PathBuf, ApiError>) -> String {
        r.expect_err("refused").message().to_owned()
    }

    #[test]
    fn roots_stay_in_their_application_space() {
        let base = tempfile::tempdir().expect("tmp");
        let allowed = vec![base.path().canonicalize().expect("canon")];
        let a = &allowed[0];
        // Relative roots land in the space, which is created on demand.
        let photos = confine("photos/2024", 1, &allowed, true).expect("relative");
        assert_eq!(photos, a.join("app-1/photos/2024"));
        assert!(photos.is_dir());
        assert_eq!(
            confine(".", 1, &allowed, true).expect("space"),
            a.join("app-1")
        );
        let abs = a.join("app-1/photos");
        assert_eq!(
            confine(&abs.to_string_lossy(), 1, &allowed, false).expect("absolute"),
            abs
        );
        // Another application's space, its parent, `..` and outside paths: one answer,
        // whether the path exists or not.
        let refused = message(confine(&abs.to_string_lossy(), 2, &allowed, true));
        for p in [
            a.to_string_lossy().into_owned(),
            a.join("app-1").to_string_lossy().into_owned(),
            a.join("app-2/../app-1").to_string_lossy().into_owned(),
            "../app-1".into(),
            "/etc".into(),
            "/definitely/missing".into(),
            a.join("app-10").to_string_lossy().into_owned(),
        ] {
            assert_eq!(message(confine(&p, 2, &allowed, true)), refused, "{p}");
        }
        assert!(!a.join("app-10").exists(), "nothing made outside the space");
        // A symbolic link inside the space into another one is refused, at connect and at load.
        confine(".", 2, &allowed, true).expect("space 2");
        std::os::unix::fs::symlink(a.join("app-1/photos"), a.join("app-2/link")).expect("ln");
        assert!(confine("link", 2, &allowed, true).is_err());
        assert!(confine("link/2024", 2, &allowed, false).is_err());
        let own = confine("own", 2, &allowed, true).expect("own");
        std::fs::remove_dir(&own).expect("rm");
        std::os::unix::fs::symlink(a.join("app-1"), &own).expect("swap for a link");
        assert!(confine(&own.to_string_lossy(), 2, &allowed, false).is_err());
        // Without `create`, a missing root is an error, not made.
        assert!(confine("later", 2, &allowed, false).is_err());
        assert!(!a.join("app-2/later").exists());
        assert!(confine("x", 1, &[], true).is_err());
    }
}
