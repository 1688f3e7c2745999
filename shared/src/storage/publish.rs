//! The write path: an upload streams into a staging object with a short fixed name, then is
//! published under its final name, either replacing what is there (last writer wins, readers
//! see the old or the new file, never a mix) or never replacing (a taken name moves on to
//! `name (1).ext`, `name (2).ext`, ...), atomically at the provider on every connector:
//!
//! - `fs`: a new file in the staging folder; `rename` replaces, `link` never does (it fails
//!   when the name exists, so two uploads can never both take one name), then the staging
//!   name is removed.
//! - SFTP: the client renames with `posix-rename` (atomic, replacing); not replacing first
//!   takes the name with an exclusive create of an empty placeholder, then renames over it.
//! - WebDAV: `MOVE` with `Overwrite: T` or `F` (412 when taken).
//! - Object stores (S3, Azure, GCS) publish complete objects themselves: the write goes to the
//!   final key, with `If-None-Match: *` when it must not replace. The stream is spent by then,
//!   so such a service cannot move on to the next name; callers reserve names first
//!   ([`Connector::publishes_in_place`]).
//!
//! Staging objects live in one folder at the account root, [`STAGING_DIR`], so renaming or
//! deleting a user's folder never moves or orphans one, and a crashed upload's staging object
//! is found again by its key ([`StagingKey`]), which callers can record before writing.

use super::{Connector, Entry, EntryKind, PathError, Staging, StorageError, StoragePath};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use opendal::ErrorKind;
use std::path::Path;
use std::sync::atomic::Ordering;

/// The folder, at the account root, that holds in-flight uploads of connectors that stage.
pub const STAGING_DIR: &str = ".switchyard-partial";

/// Length of a staging object's own name (hex digits of a random 64-bit number).
const STAGING_NAME_LEN: usize = 16;

/// A staging object: `.switchyard-partial/<16 hex digits>`, the same short length whatever the
/// final name, so a name that passes validation never fails for its staging name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StagingKey(StoragePath);

impl StagingKey {
    fn random() -> Self {
        let dir = StoragePath::root().join_reserved(STAGING_DIR);
        let name = format!("{:016x}", rand::random::<u64>());
        Self(dir.join(&name).unwrap_or(dir))
    }

    /// The key as text (a path relative to the account root), to record it.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// A key recorded earlier. Anything but a staging key is refused, so that a sweep can only
    /// ever delete staging objects, whatever the record says.
    pub fn parse(s: &str) -> Option<Self> {
        let name = s.strip_prefix(STAGING_DIR)?.strip_prefix('/')?;
        if name.len() != STAGING_NAME_LEN || !name.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let dir = StoragePath::root().join_reserved(STAGING_DIR);
        dir.join(name).ok().map(Self)
    }

    fn path(&self) -> &StoragePath {
        &self.0
    }
}

/// How a finished upload takes its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Replace the file of that name, if any: the last writer wins.
    Replace,
    /// Never replace: when the name is taken, take the first free one of `name (1).ext` up to
    /// `name (alternatives).ext`, or fail with [`StorageError::AlreadyExists`].
    NoReplace { alternatives: u32 },
}

/// The `n`-th alternative of a file name: the name itself for 0, else `stem (n).ext`.
pub fn numbered(path: &StoragePath, n: u32) -> Result<StoragePath, PathError> {
    if n == 0 {
        return Ok(path.clone());
    }
    let name = path.name();
    let (stem, ext) = match name.rfind('.') {
        Some(i) if i > 0 => (&name[..i], &name[i..]),
        _ => (name, ""),
    };
    path.parent()
        .unwrap_or_else(StoragePath::root)
        .join(&format!("{stem} ({n}){ext}"))
}

fn io_error(e: std::io::Error) -> StorageError {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::NotFound => StorageError::NotFound,
        K::AlreadyExists => StorageError::AlreadyExists,
        K::PermissionDenied => StorageError::PermissionDenied(e.to_string()),
        K::IsADirectory => StorageError::WrongKind { expected: "file" },
        K::NotADirectory => StorageError::WrongKind { expected: "folder" },
        K::DirectoryNotEmpty => StorageError::NotEmpty,
        K::StorageFull => StorageError::Other("the disk is full".into()),
        _ => StorageError::Other(e.to_string()),
    }
}

/// `rel` below an `fs` account's root, refused when any existing component is a symbolic link
/// (the same rule the operator's `nofollow` layer applies to everything else).
fn under(root: &Path, rel: &str) -> Result<std::path::PathBuf, StorageError> {
    super::nofollow::check(root, rel)?;
    Ok(root.join(rel))
}

/// Streams `body` into a new file at `path` and syncs it, holding one chunk at a time.
async fn fs_stage<S, E>(path: &Path, mut body: S) -> Result<(), StorageError>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin,
    E: std::fmt::Display,
{
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .await
        .map_err(io_error)?;
    while let Some(next) = body.next().await {
        let bytes = next.map_err(|e| StorageError::Interrupted(e.to_string()))?;
        f.write_all(&bytes).await.map_err(io_error)?;
    }
    f.sync_all().await.map_err(io_error)?;
    Ok(())
}

impl Connector {
    /// True when this service writes straight to the final object (object stores): an
    /// upload that must not replace can only be tried under one name, so callers racing for
    /// a name reserve it first. False when uploads are staged and published atomically, so
    /// [`Publish::NoReplace`] moves on to the next free name by itself.
    pub fn publishes_in_place(&self) -> bool {
        matches!(self.staging, Staging::Atomic)
    }

    /// The staging key the next upload will use, or `None` for services that publish in
    /// place. A caller that must clean up after a crash records it before the write (the hub's
    /// ledger) and passes it to [`Connector::write_with`].
    pub fn new_staging(&self) -> Option<StagingKey> {
        (!self.publishes_in_place()).then(StagingKey::random)
    }

    /// Writes `body` under `target` as `publish` says, never leaving a partial file visible
    /// under any name: a failed stream or publish deletes the staging object. Returns the file
    /// under the name it took.
    pub async fn write_with<S, E>(
        &self,
        target: &StoragePath,
        body: S,
        publish: Publish,
        staging: Option<StagingKey>,
    ) -> Result<Entry, StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        if self.publishes_in_place() {
            let exclusive = matches!(publish, Publish::NoReplace { .. });
            if exclusive && !self.op.info().capability().write_with_if_not_exists {
                // No conditional write at this provider: the best left is a check.
                if self.exists(target).await? {
                    return Err(StorageError::AlreadyExists);
                }
                self.write_direct(target.file_key(), body, false).await?;
            } else {
                self.write_direct(target.file_key(), body, exclusive)
                    .await?;
            }
            return self.stat_file(target).await;
        }
        let key = staging.unwrap_or_else(StagingKey::random);
        let staged = self.stage(&key, body).await;
        let published = match staged {
            Ok(()) => self.publish(&key, target, publish).await,
            Err(e) => Err(e),
        };
        match published {
            Ok(path) => self.stat_published(&path).await,
            Err(e) => {
                if let Err(d) = self.discard_staging(&key).await {
                    tracing::warn!(error = %d, "could not delete a failed upload's staging object");
                }
                Err(e)
            }
        }
    }

    /// Metadata of a file just published. Servers that replace by delete-then-move (WebDAV)
    /// can hide it for a moment while a concurrent writer replaces it: look again, bounded.
    async fn stat_published(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        let mut pause = std::time::Duration::from_millis(2);
        for _ in 0..8 {
            match self.stat_file(path).await {
                Err(StorageError::NotFound) => {
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        self.stat_file(path).await
    }

    /// A new staging key on any service, even one that publishes in place: the parts of an
    /// upload session are kept as staging objects of their own until it completes.
    pub fn new_part_key(&self) -> StagingKey {
        StagingKey::random()
    }

    /// Writes `body` as the staging object `key` (one part of an upload session), streamed;
    /// nothing appears under a user's name. A failed write leaves the caller to discard it.
    pub async fn stage_part<S, E>(&self, key: &StagingKey, body: S) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        self.stage(key, body).await
    }

    /// Streams the staging object `key` whole.
    pub async fn read_staging(
        &self,
        key: &StagingKey,
    ) -> Result<impl Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static, StorageError>
    {
        self.read(key.path(), None).await
    }

    /// Deletes a staging object (of a finished, failed or abandoned upload); a missing one is
    /// fine.
    pub async fn discard_staging(&self, key: &StagingKey) -> Result<(), StorageError> {
        let res = match &self.staging {
            Staging::Fs(root) => tokio::fs::remove_file(under(root, key.as_str())?)
                .await
                .map_err(io_error),
            _ => self
                .op
                .delete(key.path().file_key())
                .await
                .map_err(Into::into),
        };
        match res {
            Ok(()) | Err(StorageError::NotFound) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn ensure_staging_dir(&self) -> Result<(), StorageError> {
        if self.staging_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        match &self.staging {
            Staging::Fs(root) => tokio::fs::create_dir_all(under(root, STAGING_DIR)?)
                .await
                .map_err(io_error)?,
            _ => self.op.create_dir(&format!("{STAGING_DIR}/")).await?,
        }
        self.staging_ready.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Streams `body` into the staging object `key`.
    async fn stage<S, E>(&self, key: &StagingKey, body: S) -> Result<(), StorageError>
    where
        S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
        E: std::fmt::Display + Send + Sync + 'static,
    {
        self.ensure_staging_dir().await?;
        let res = match &self.staging {
            Staging::Fs(root) => fs_stage(&under(root, key.as_str())?, body).await,
            Staging::Webdav(client) => client.put_stream(key.path().file_key(), body).await,
            _ => self.write_direct(key.path().file_key(), body, false).await,
        };
        if matches!(res, Err(StorageError::NotFound)) {
            // Someone removed the staging folder: make it again for the next upload.
            self.staging_ready.store(false, Ordering::Relaxed);
        }
        res
    }

    /// Moves the complete staging object `key` to `target` (or, without replace, to its first
    /// free alternative) and returns the name it took.
    async fn publish(
        &self,
        key: &StagingKey,
        target: &StoragePath,
        publish: Publish,
    ) -> Result<StoragePath, StorageError> {
        let alternatives = match publish {
            Publish::Replace => {
                return self
                    .publish_replace(key, target)
                    .await
                    .map(|()| target.clone())
            }
            Publish::NoReplace { alternatives } => alternatives,
        };
        let parent = target.parent().unwrap_or_else(StoragePath::root);
        if matches!(self.staging, Staging::Rename) {
            // OpenDAL's SFTP rename creates missing parents: a folder deleted during the
            // upload must stay deleted (and the upload fail) rather than come back.
            self.stat_folder(&parent).await?;
        }
        for n in 0..=alternatives {
            let candidate = match numbered(target, n) {
                Ok(c) => c,
                // The numbered names grew past the name limit: nothing further can fit.
                Err(_) => break,
            };
            match self.publish_new(key, &candidate).await {
                Ok(()) => return Ok(candidate),
                Err(StorageError::AlreadyExists) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(StorageError::AlreadyExists)
    }

    /// Publishes under `target` only if nothing has that name; [`StorageError::AlreadyExists`]
    /// otherwise, decided atomically by the provider.
    async fn publish_new(
        &self,
        key: &StagingKey,
        target: &StoragePath,
    ) -> Result<(), StorageError> {
        let Staging::Fs(root) = &self.staging else {
            return self.move_new(key.path(), target).await;
        };
        let src = under(root, key.as_str())?;
        tokio::fs::hard_link(&src, under(root, target.as_str())?)
            .await
            .map_err(io_error)?;
        // The upload is published; a staging name left by a failure here is only a second
        // link to the same bytes, and the sweep removes it.
        if let Err(e) = tokio::fs::remove_file(&src).await {
            tracing::warn!(error = %e, "could not remove a published upload's staging name");
        }
        Ok(())
    }

    /// WebDAV and SFTP: moves `from` to `to` only if `to` is free (how a staged upload
    /// publishes and how a file renames without replace).
    async fn move_new(&self, from: &StoragePath, to: &StoragePath) -> Result<(), StorageError> {
        match &self.staging {
            Staging::Webdav(client) => client.move_to(from.file_key(), to.file_key(), false).await,
            _ => self.sftp_move_new(from, to).await,
        }
    }

    /// SFTP: moves `from` to `to` only if `to` is free. The SFTP client renames with OpenSSH's
    /// `posix-rename`, which replaces, so the name is first taken by creating an empty file
    /// exclusively (`O_EXCL` at the server: of concurrent takers exactly one succeeds), then
    /// the rename replaces that placeholder. For one round trip the name shows an empty file.
    async fn sftp_move_new(
        &self,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError> {
        match self
            .publish_op
            .write_with(to.file_key(), Vec::<u8>::new())
            .if_not_exists(true)
            .await
        {
            Ok(_) => {}
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::ConditionNotMatch | ErrorKind::AlreadyExists
                ) =>
            {
                return Err(StorageError::AlreadyExists)
            }
            // SFTP reports a taken name (a folder, say) only as a generic failure: look.
            Err(e) => {
                return Err(if self.exists(to).await? {
                    StorageError::AlreadyExists
                } else {
                    e.into()
                })
            }
        }
        match self.publish_op.rename(from.file_key(), to.file_key()).await {
            Ok(()) => Ok(()),
            Err(e) => {
                let _ = self.op.delete(to.file_key()).await;
                Err(e.into())
            }
        }
    }

    /// Publishes under `target`, replacing a file of that name.
    async fn publish_replace(
        &self,
        key: &StagingKey,
        target: &StoragePath,
    ) -> Result<(), StorageError> {
        match &self.staging {
            Staging::Fs(root) => {
                tokio::fs::rename(under(root, key.as_str())?, under(root, target.as_str())?)
                    .await
                    .map_err(io_error)
            }
            Staging::Webdav(client) => {
                // rclone answers a replacing MOVE that races another one for the same name
                // with 404/409 now and then, though source and parent are there: try again.
                let parent = target.parent().unwrap_or_else(StoragePath::root);
                let mut pause = std::time::Duration::from_millis(5);
                for _ in 0..8 {
                    match client
                        .move_to(key.path().file_key(), target.file_key(), true)
                        .await
                    {
                        Err(StorageError::NotFound)
                            if self.exists(key.path()).await?
                                && (parent.is_root() || self.exists(&parent).await?) =>
                        {
                            tokio::time::sleep(pause).await;
                            pause *= 2;
                        }
                        other => return other,
                    }
                }
                Err(StorageError::Unavailable("WebDAV MOVE kept failing".into()))
            }
            _ => {
                // A server whose rename will not replace (no `posix-rename`): remove the old
                // file, then move into place.
                // Concurrent replacers can take the name between the two; a few rounds settle it
                // (the last writer wins, as with every other connector).
                let mut last = None;
                for _ in 0..8 {
                    match self
                        .publish_op
                        .rename(key.path().file_key(), target.file_key())
                        .await
                    {
                        Ok(()) => return Ok(()),
                        Err(e) => {
                            match self.stat(target).await {
                                Ok(entry) if entry.kind == EntryKind::Folder => {
                                    return Err(StorageError::WrongKind { expected: "file" })
                                }
                                Ok(_) => match self.op.delete(target.file_key()).await {
                                    Ok(()) => {}
                                    Err(d) if d.kind() == ErrorKind::NotFound => {}
                                    Err(d) => return Err(d.into()),
                                },
                                Err(StorageError::NotFound) => {
                                    // Nothing in the way: the failure was the rename's own.
                                    if !self.exists(key.path()).await? {
                                        return Err(StorageError::NotFound);
                                    }
                                }
                                Err(s) => return Err(s),
                            }
                            last = Some(e);
                        }
                    }
                }
                Err(last.map_or(StorageError::AlreadyExists, Into::into))
            }
        }
    }

    /// Renames a file to a name that must be free, atomically at the provider: `fs` links the
    /// new name (which fails when taken), then unlinks the old; WebDAV moves with
    /// `Overwrite: F`; SFTP takes the name with an exclusive placeholder first
    /// ([`Connector::sftp_move_new`]); object stores copy with
    /// `If-None-Match: *`, then delete the source.
    pub(crate) async fn rename_file_new(
        &self,
        from: &StoragePath,
        to: &StoragePath,
    ) -> Result<(), StorageError> {
        match &self.staging {
            Staging::Fs(root) => {
                let src = under(root, from.as_str())?;
                if tokio::fs::symlink_metadata(&src)
                    .await
                    .map_err(io_error)?
                    .is_dir()
                {
                    return Err(StorageError::WrongKind { expected: "file" });
                }
                tokio::fs::hard_link(&src, under(root, to.as_str())?)
                    .await
                    .map_err(io_error)?;
                tokio::fs::remove_file(&src).await.map_err(io_error)
            }
            Staging::Webdav(_) | Staging::Rename => self.move_new(from, to).await,
            Staging::Atomic => {
                let cap = self.op.info().capability();
                if cap.rename && !cap.copy_with_if_not_exists {
                    self.op.rename(from.file_key(), to.file_key()).await?;
                } else {
                    self.copy_file_with(from, to, Publish::NoReplace { alternatives: 0 })
                        .await?;
                    self.op.delete(from.file_key()).await?;
                }
                Ok(())
            }
        }
    }

    /// Creates a folder that must not exist yet: of concurrent creators of one name exactly one
    /// succeeds, the others get [`StorageError::AlreadyExists`] (decided by `mkdir` on `fs`).
    /// The parent must exist. Services without an exclusive folder creation
    /// ([`Connector::exclusive_folders`] false: rclone's WebDAV answers a second MKCOL with
    /// success, SFTP and object stores have none through OpenDAL) check, then create; callers
    /// serialise creations of one name themselves.
    pub async fn create_folder_new(&self, path: &StoragePath) -> Result<Entry, StorageError> {
        match &self.staging {
            Staging::Fs(root) => tokio::fs::create_dir(under(root, path.as_str())?)
                .await
                .map_err(io_error)?,
            Staging::Webdav(client) => {
                // rclone answers a MKCOL of an existing folder with success: look first.
                if self.exists(path).await? {
                    return Err(StorageError::AlreadyExists);
                }
                client.mkcol(&path.dir_key()).await?
            }
            _ => {
                if self.exists(path).await? {
                    return Err(StorageError::AlreadyExists);
                }
                self.op.create_dir(&path.dir_key()).await?;
            }
        }
        self.stat(path).await
    }

    /// True when [`Connector::create_folder_new`] is decided atomically by the provider;
    /// otherwise callers serialise creations of one name themselves (the hub's claims).
    pub fn exclusive_folders(&self) -> bool {
        matches!(self.staging, Staging::Fs(_))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::RESERVED_PREFIX;

    #[test]
    fn staging_keys_are_short_and_parse_back() {
        let k = StagingKey::random();
        assert_eq!(k.as_str().len(), STAGING_DIR.len() + 1 + STAGING_NAME_LEN);
        assert!(k.as_str().starts_with(RESERVED_PREFIX));
        assert_eq!(StagingKey::parse(k.as_str()), Some(k));
        for bad in [
            "",
            ".switchyard-partial",
            ".switchyard-partial/",
            ".switchyard-partial/../etc/passwd0",
            ".switchyard-partial/0123456789abcdeg",
            "docs/0123456789abcdef",
            ".switchyard-partial/0123456789abcdef/x",
        ] {
            assert_eq!(StagingKey::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn numbered_names() {
        let p = |s: &str| StoragePath::parse(s).expect("path");
        assert_eq!(numbered(&p("a/b.txt"), 0).expect("0"), p("a/b.txt"));
        assert_eq!(numbered(&p("a/b.txt"), 2).expect("2"), p("a/b (2).txt"));
        assert_eq!(numbered(&p(".env"), 1).expect("1"), p(".env (1)"));
        assert_eq!(numbered(&p("x"), 10).expect("10"), p("x (10)"));
        assert!(numbered(&p(&"n".repeat(253)), 1).is_err());
    }
}
