//! Keeps an `fs` connector beneath its root: every path an operation names is walked from the
//! root with `lstat`, and one that passes through a symbolic link is refused. OpenDAL's fs
//! service follows links, so without this a link placed inside an account's folder (by anyone
//! with access to the host; the API cannot make links) would lead into another tenant's files.
//!
//! The walk happens just before the operation, so a link swapped in between the two is not
//! caught; the hub also refuses an account whose root itself became a link (`hub::fsroot`).

use opendal::raw::{
    oio, Layer, OpCopy, OpCreateDir, OpDelete, OpList, OpPresign, OpRead, OpRename, OpStat,
    OpWrite, RpCreateDir, RpPresign, RpRename, RpStat, Service, ServiceInfo, Servicer,
};
use opendal::{Capability, Error, ErrorKind, OperationContext, Result};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The layer for an `fs` operator rooted at `root`.
#[derive(Debug, Clone)]
pub struct NoFollowLayer {
    root: Arc<PathBuf>,
}

impl NoFollowLayer {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: Arc::new(root.into()),
        }
    }
}

impl Layer for NoFollowLayer {
    fn apply_service(&self, inner: Servicer) -> Servicer {
        Arc::new(NoFollowService {
            inner,
            root: self.root.clone(),
        })
    }
}

fn refused() -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        "the path passes through a symbolic link, which this account does not follow",
    )
}

/// Refuses `path` (relative to `root`) when the root or any existing component below it is a
/// symbolic link. Components past the first missing one do not exist yet: nothing to follow.
pub fn check(root: &Path, path: &str) -> Result<()> {
    let is_link = |p: &Path| {
        std::fs::symlink_metadata(p)
            .map(|m| m.file_type().is_symlink())
            .map_err(|e| e.kind())
    };
    if is_link(root) == Ok(true) {
        return Err(refused());
    }
    let mut cur = root.to_path_buf();
    for part in path.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(refused());
        }
        cur.push(part);
        match is_link(&cur) {
            Ok(true) => return Err(refused()),
            Ok(false) => {}
            Err(_) => break,
        }
    }
    Ok(())
}

#[derive(Debug)]
struct NoFollowService {
    inner: Servicer,
    root: Arc<PathBuf>,
}

impl Service for NoFollowService {
    type Reader = oio::Reader;
    type Writer = oio::Writer;
    type Lister = oio::Lister;
    type Deleter = NoFollowDeleter;
    type Copier = oio::Copier;
    type Composer = oio::Composer;

    fn info(&self) -> ServiceInfo {
        self.inner.info()
    }

    fn capability(&self) -> Capability {
        self.inner.capability()
    }

    async fn create_dir(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpCreateDir,
    ) -> Result<RpCreateDir> {
        check(&self.root, path)?;
        self.inner.create_dir(ctx, path, args).await
    }

    async fn stat(&self, ctx: &OperationContext, path: &str, args: OpStat) -> Result<RpStat> {
        check(&self.root, path)?;
        self.inner.stat(ctx, path, args).await
    }

    fn read(&self, ctx: &OperationContext, path: &str, args: OpRead) -> Result<Self::Reader> {
        check(&self.root, path)?;
        self.inner.read(ctx, path, args)
    }

    fn write(&self, ctx: &OperationContext, path: &str, args: OpWrite) -> Result<Self::Writer> {
        check(&self.root, path)?;
        self.inner.write(ctx, path, args)
    }

    fn delete(&self, ctx: &OperationContext) -> Result<Self::Deleter> {
        Ok(NoFollowDeleter {
            inner: self.inner.delete(ctx)?,
            root: self.root.clone(),
        })
    }

    fn list(&self, ctx: &OperationContext, path: &str, args: OpList) -> Result<Self::Lister> {
        check(&self.root, path)?;
        self.inner.list(ctx, path, args)
    }

    fn copy(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpCopy,
    ) -> Result<Self::Copier> {
        check(&self.root, from)?;
        check(&self.root, to)?;
        self.inner.copy(ctx, from, to, args)
    }

    async fn rename(
        &self,
        ctx: &OperationContext,
        from: &str,
        to: &str,
        args: OpRename,
    ) -> Result<RpRename> {
        check(&self.root, from)?;
        check(&self.root, to)?;
        self.inner.rename(ctx, from, to, args).await
    }

    async fn presign(
        &self,
        ctx: &OperationContext,
        path: &str,
        args: OpPresign,
    ) -> Result<RpPresign> {
        check(&self.root, path)?;
        self.inner.presign(ctx, path, args).await
    }
}

/// Checks each path handed to the inner deleter.
struct NoFollowDeleter {
    inner: oio::Deleter,
    root: Arc<PathBuf>,
}

impl oio::Delete for NoFollowDeleter {
    async fn delete(&mut self, path: &str, args: OpDelete) -> Result<()> {
        check(&self.root, path)?;
        self.inner.delete(path, args).await
    }

    async fn close(&mut self) -> Result<()> {
        self.inner.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::check;

    #[test]
    fn links_below_the_root_are_refused() {
        let dir = tempfile::tempdir().expect("tmp");
        let root = dir.path().join("root");
        let other = dir.path().join("other");
        std::fs::create_dir_all(root.join("a/b")).expect("mkdir");
        std::fs::create_dir_all(&other).expect("mkdir");
        std::os::unix::fs::symlink(&other, root.join("a/link")).expect("ln");
        assert!(check(&root, "a/b/file").is_ok());
        assert!(
            check(&root, "a/b/missing/deeper").is_ok(),
            "nothing to follow yet"
        );
        assert!(check(&root, "a/link").is_err());
        assert!(check(&root, "a/link/secret").is_err());
        assert!(check(&root, "a/../a/b").is_err());
        let linked_root = dir.path().join("linked");
        std::os::unix::fs::symlink(&root, &linked_root).expect("ln");
        assert!(check(&linked_root, "a/b").is_err());
    }
}
