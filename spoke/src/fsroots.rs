//! Where a spoke acts for `fs` accounts: only at or below the folders its operator declared in
//! `storage.fs_roots`, reached without following symbolic links. A hub's grant or assignment
//! names a storage location; it can never name an arbitrary path on this host (`/etc`, the
//! spoke's own key). Below the account root, the connector refuses links itself
//! (`shared::storage::nofollow`).

use shared::storage::{ServiceConfig, StorageError};
use std::path::{Component, Path, PathBuf};

/// The declared `fs` roots, canonical (checked by `config::LocalConfig::load`).
#[derive(Debug, Clone, Default)]
pub struct FsRoots(Vec<PathBuf>);

/// The one answer for an `fs` location this spoke does not serve, whatever the reason, so a
/// hub cannot probe which host paths exist.
fn refused() -> StorageError {
    StorageError::PermissionDenied(REFUSAL.to_owned())
}

const REFUSAL: &str = "this spoke serves `fs` storage only inside the folders its operator \
                       declared (storage.fs_roots in spoke.yaml), without symbolic links";

/// Whether `e` is this spoke's refusal of an `fs` location (another executor may serve it).
pub fn is_refusal(e: &StorageError) -> bool {
    matches!(e, StorageError::PermissionDenied(m) if m == REFUSAL)
}

impl FsRoots {
    pub fn new(roots: Vec<PathBuf>) -> Self {
        Self(roots)
    }

    /// The declared roots as hubs are told them (in the hello).
    pub fn declared(&self) -> Vec<String> {
        self.0.iter().map(|r| r.display().to_string()).collect()
    }

    /// Checks that this spoke may act on `service`: any provider but `fs`; an `fs` account
    /// only when its root is a real folder at or below a declared root, every component of it
    /// an existing folder and none a symbolic link. Nothing is created.
    pub fn check(&self, service: &ServiceConfig) -> Result<(), StorageError> {
        let ServiceConfig::Fs(fs) = service else {
            return Ok(());
        };
        let requested = Path::new(&fs.root);
        if !requested.is_absolute() || fs.root.contains('\0') {
            return Err(refused());
        }
        // Decided on the text first: no file system call sees a path outside the roots.
        let (declared, rest) = self
            .0
            .iter()
            .find_map(|d| Some((d, requested.strip_prefix(d).ok()?)))
            .ok_or_else(refused)?;
        let mut at = declared.clone();
        for c in rest.components() {
            match c {
                Component::Normal(n) => at.push(n),
                Component::CurDir => continue,
                Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                    return Err(refused())
                }
            }
            match std::fs::symlink_metadata(&at) {
                Ok(m) if m.is_dir() && !m.file_type().is_symlink() => {}
                _ => return Err(refused()),
            }
        }
        // The declared root itself swapped for a link since start-up.
        match declared.canonicalize() {
            Ok(c) if &c == declared => Ok(()),
            _ => Err(refused()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shared::storage::service::FsSettings;

    fn fs(root: &Path) -> ServiceConfig {
        ServiceConfig::Fs(FsSettings {
            root: root.to_string_lossy().into_owned(),
        })
    }

    #[test]
    fn only_real_folders_below_declared_roots() {
        let base = tempfile::tempdir().expect("tmp");
        let declared = base.path().canonicalize().expect("canon").join("data");
        std::fs::create_dir_all(declared.join("app-1/photos")).expect("mkdir");
        let roots = FsRoots::new(vec![declared.clone()]);
        roots.check(&fs(&declared)).expect("the root itself");
        roots
            .check(&fs(&declared.join("app-1/photos")))
            .expect("below");
        std::os::unix::fs::symlink("/etc", declared.join("etc")).expect("ln");
        for bad in [
            PathBuf::from("/"),
            PathBuf::from("/etc"),
            base.path().to_path_buf(),
            declared.join("etc"),
            declared.join("app-1/../../"),
            declared.join("missing"),
            PathBuf::from("relative"),
        ] {
            assert!(
                matches!(
                    roots.check(&fs(&bad)),
                    Err(StorageError::PermissionDenied(_))
                ),
                "{}",
                bad.display()
            );
        }
        assert!(
            FsRoots::default().check(&fs(&declared)).is_err(),
            "no roots, no fs"
        );
        let e = roots.check(&fs(Path::new("/etc"))).expect_err("refused");
        assert!(is_refusal(&e), "{e}");
        assert!(!is_refusal(&StorageError::PermissionDenied(
            "provider said no".into()
        )));
    }
}
