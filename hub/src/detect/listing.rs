//! The listing diff, sans IO: a provider listing and the stored snapshot, both sorted by sort
//! key, merged one entry at a time into additions, changes and removals; renames paired
//! from a bounded window of removals and additions; and the sort keys that make a walk of
//! folders and a flat object-store listing come out in one well-defined order.

use futures::{Stream, StreamExt};
use std::collections::HashMap;

/// One object as a listing or the snapshot shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    /// Where it sorts (see [`walk_key`] and [`object_key`]).
    pub key: String,
    /// Its path from the account root (no leading or trailing slash).
    pub path: String,
    pub folder: bool,
    /// The provider's strong version (an S3/Azure ETag), else `None`.
    pub version: Option<String>,
    pub size: Option<i64>,
    pub mtime_ms: Option<i64>,
    /// What stays the same across a rename (an inode on local disks), for pairing.
    pub ident: Option<String>,
}

impl Seen {
    /// Whether `self` and `new` are the same version of the object: the strong version when
    /// both have one, else size and modification time; folders only by being folders.
    pub fn same_as(&self, new: &Seen) -> bool {
        if self.folder || new.folder {
            return self.folder == new.folder;
        }
        match (&self.version, &new.version) {
            (Some(a), Some(b)) => a == b && self.size == new.size,
            _ => self.size == new.size && self.mtime_ms == new.mtime_ms,
        }
    }
}

/// The sort key of a path in a walk of folders (`fs`, WebDAV, SFTP): `/` becomes U+0001,
/// which sorts before every character a name may hold (names never contain controls), so a
/// folder's subtree comes right after it and before its next sibling, which is exactly the
/// order of a depth-first walk visiting names in byte order.
pub fn walk_key(path: &str) -> String {
    path.replace('/', "\u{1}")
}

/// The sort key of an object-store key (S3, Azure Blob): the key itself, folders with their
/// trailing slash, since a flat listing returns keys in byte order.
pub fn object_key(raw: &str) -> String {
    raw.trim_start_matches('/').to_owned()
}

/// One difference between the snapshot and the listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Diff {
    Added(Seen),
    Changed { old: Seen, new: Seen },
    Removed(Seen),
}

impl Diff {
    pub fn path(&self) -> &str {
        match self {
            Diff::Added(s) | Diff::Removed(s) => &s.path,
            Diff::Changed { new, .. } => &new.path,
        }
    }
}

/// Why a poll stopped.
#[derive(Debug, thiserror::Error)]
pub enum DiffError<E> {
    /// The listing or the snapshot failed.
    #[error("{0}")]
    Source(E),
    /// A side did not come in strictly increasing key order; continuing would record
    /// wrong events, so the poll stops.
    #[error("the {side} is not sorted: {prev:?} came before {next:?}")]
    Unsorted {
        side: &'static str,
        prev: String,
        next: String,
    },
}

/// Pulls the next item of a sorted side, checking the order.
async fn next_sorted<S, E>(
    s: &mut S,
    last: &mut Option<String>,
    side: &'static str,
) -> Result<Option<Seen>, DiffError<E>>
where
    S: Stream<Item = Result<Seen, E>> + Unpin,
{
    match s.next().await {
        None => Ok(None),
        Some(Err(e)) => Err(DiffError::Source(e)),
        Some(Ok(item)) => {
            if let Some(prev) = last.as_deref() {
                if item.key.as_str() <= prev {
                    return Err(DiffError::Unsorted {
                        side,
                        prev: prev.to_owned(),
                        next: item.key,
                    });
                }
            }
            *last = Some(item.key.clone());
            Ok(Some(item))
        }
    }
}

/// Where [`merge`] hands the differences it finds.
pub trait DiffSink<E> {
    fn take(&mut self, d: Diff) -> impl std::future::Future<Output = Result<(), E>> + Send;
}

/// Merges the snapshot `old` and the listing `new` (both sorted by key) and hands each
/// difference to `sink` as soon as it is known. Holds one entry of each side at a time.
/// Returns how many listing entries were scanned.
pub async fn merge<O, N, E, K>(mut old: O, mut new: N, sink: &mut K) -> Result<u64, DiffError<E>>
where
    O: Stream<Item = Result<Seen, E>> + Unpin,
    N: Stream<Item = Result<Seen, E>> + Unpin,
    K: DiffSink<E>,
{
    let (mut lo, mut ln) = (None, None);
    let mut a = next_sorted(&mut old, &mut lo, "snapshot").await?;
    let mut b = next_sorted(&mut new, &mut ln, "listing").await?;
    let mut scanned = u64::from(b.is_some());
    loop {
        let step = match (&a, &b) {
            (None, None) => return Ok(scanned),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (Some(x), Some(y)) => x.key.cmp(&y.key),
        };
        match step {
            std::cmp::Ordering::Less => {
                let gone = a.take().expect("old side present");
                sink.take(Diff::Removed(gone))
                    .await
                    .map_err(DiffError::Source)?;
                a = next_sorted(&mut old, &mut lo, "snapshot").await?;
            }
            std::cmp::Ordering::Greater => {
                let added = b.take().expect("new side present");
                sink.take(Diff::Added(added))
                    .await
                    .map_err(DiffError::Source)?;
                b = next_sorted(&mut new, &mut ln, "listing").await?;
                scanned += u64::from(b.is_some());
            }
            std::cmp::Ordering::Equal => {
                let (o, n) = (a.take().expect("old"), b.take().expect("new"));
                if !o.same_as(&n) {
                    sink.take(Diff::Changed { old: o, new: n })
                        .await
                        .map_err(DiffError::Source)?;
                }
                a = next_sorted(&mut old, &mut lo, "snapshot").await?;
                b = next_sorted(&mut new, &mut ln, "listing").await?;
                scanned += u64::from(b.is_some());
            }
        }
    }
}

/// A change to record, after renames were paired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Added(Seen),
    /// Contents changed (files only; a folder that became a file is a removal + addition).
    Updated {
        old: Seen,
        new: Seen,
    },
    Removed(Seen),
    /// The same object under a new path (a rename, or a move when the folder changed).
    Renamed {
        from: Seen,
        to: Seen,
    },
}

/// Most removals and additions a poll holds back for pairing renames; past it they are
/// recorded as they come (a removal and an addition), so a poll's memory stays bounded.
pub const RENAME_WINDOW: usize = 10_000;

/// The identity that pairs a removal with an addition: the local inode, else (on services
/// with strong versions) the version with the size. Folders pair only by inode.
fn pairing_ident(s: &Seen) -> Option<String> {
    if let Some(i) = &s.ident {
        return Some(format!("i:{i}:{}", s.folder));
    }
    if s.folder {
        return None;
    }
    s.version
        .as_ref()
        .map(|v| format!("v:{v}:{}", s.size.unwrap_or(-1)))
}

/// Collects a poll's differences and turns them into [`Change`]s: a removal and an addition
/// with the same identity (unique among the poll's removals and additions) become one
/// rename; the children of a renamed folder that moved along with it are folded into it.
#[derive(Debug, Default)]
pub struct Pairing {
    removed: Vec<Seen>,
    added: Vec<Seen>,
}

impl Pairing {
    /// Takes one difference; returns what can be recorded right away (updates, and whatever
    /// does not fit the window).
    pub fn push(&mut self, d: Diff) -> Vec<Change> {
        match d {
            Diff::Changed { old, new } if old.folder == new.folder => {
                if new.folder {
                    Vec::new()
                } else {
                    vec![Change::Updated { old, new }]
                }
            }
            Diff::Changed { old, new } => {
                self.push(Diff::Removed(old));
                self.push(Diff::Added(new))
            }
            Diff::Removed(s) if pairing_ident(&s).is_some() => {
                if self.removed.len() >= RENAME_WINDOW {
                    return vec![Change::Removed(s)];
                }
                self.removed.push(s);
                Vec::new()
            }
            Diff::Added(s) if pairing_ident(&s).is_some() => {
                if self.added.len() >= RENAME_WINDOW {
                    return vec![Change::Added(s)];
                }
                self.added.push(s);
                Vec::new()
            }
            Diff::Removed(s) => vec![Change::Removed(s)],
            Diff::Added(s) => vec![Change::Added(s)],
        }
    }

    /// The held removals and additions at the end of a poll, renames paired; removals come
    /// first (children before their folder), then additions (folders before their children)
    /// and renames. Also the snapshot rows every held difference writes and removes
    /// (including the children that moved along with a renamed folder, which get no event).
    pub fn finish(self) -> (Vec<Change>, Vec<Seen>, Vec<String>) {
        let put: Vec<Seen> = self.added.clone();
        let delete: Vec<String> = self.removed.iter().map(|s| s.key.clone()).collect();
        let mut count: HashMap<String, (usize, usize)> = HashMap::new();
        for s in &self.removed {
            if let Some(i) = pairing_ident(s) {
                count.entry(i).or_default().0 += 1;
            }
        }
        for s in &self.added {
            if let Some(i) = pairing_ident(s) {
                count.entry(i).or_default().1 += 1;
            }
        }
        let unique = |s: &Seen| pairing_ident(s).is_some_and(|i| count.get(&i) == Some(&(1, 1)));
        let mut from_by_ident: HashMap<String, Seen> = HashMap::new();
        let mut removed = Vec::new();
        for s in self.removed {
            if unique(&s) {
                from_by_ident.insert(pairing_ident(&s).expect("ident"), s);
            } else {
                removed.push(Change::Removed(s));
            }
        }
        let mut added = Vec::new();
        let mut renames: Vec<(Seen, Seen)> = Vec::new();
        for s in self.added {
            match pairing_ident(&s).and_then(|i| from_by_ident.remove(&i)) {
                Some(from) if unique(&s) => renames.push((from, s)),
                Some(from) => {
                    removed.push(Change::Removed(from));
                    added.push(Change::Added(s));
                }
                None => added.push(Change::Added(s)),
            }
        }
        // Unique removals whose addition was not held (past the window) stay removals.
        removed.extend(from_by_ident.into_values().map(Change::Removed));
        // A rename whose folder was renamed the same way (a/x -> b/x under a -> b) is part of
        // the folder's rename.
        renames.sort_by(|x, y| x.0.path.cmp(&y.0.path));
        let folder_moves: Vec<(String, String)> = renames
            .iter()
            .filter(|(f, _)| f.folder)
            .map(|(f, t)| (f.path.clone(), t.path.clone()))
            .collect();
        let follows = |from: &str, to: &str| {
            folder_moves.iter().any(|(ff, ft)| {
                from.strip_prefix(ff.as_str())
                    .and_then(|r| r.strip_prefix('/'))
                    .is_some_and(|rest| to == format!("{ft}/{rest}"))
            })
        };
        let renames = renames
            .into_iter()
            .filter(|(f, t)| !follows(&f.path, &t.path))
            .map(|(from, to)| Change::Renamed { from, to });
        // Children before their folder for removals, folders first for additions.
        removed.sort_by(|a, b| change_path(b).cmp(change_path(a)));
        added.sort_by(|a, b| change_path(a).cmp(change_path(b)));
        let changes = removed.into_iter().chain(added).chain(renames).collect();
        (changes, put, delete)
    }
}

fn change_path(c: &Change) -> &str {
    match c {
        Change::Added(s) | Change::Removed(s) => &s.path,
        Change::Updated { new, .. } => &new.path,
        Change::Renamed { to, .. } => &to.path,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;

    fn file(path: &str, size: i64, mtime: i64) -> Seen {
        Seen {
            key: walk_key(path),
            path: path.into(),
            folder: false,
            version: None,
            size: Some(size),
            mtime_ms: Some(mtime),
            ident: None,
        }
    }

    fn folder(path: &str) -> Seen {
        Seen {
            folder: true,
            size: None,
            mtime_ms: None,
            ..file(path, 0, 0)
        }
    }

    struct Collect(Vec<Diff>);

    impl DiffSink<String> for Collect {
        async fn take(&mut self, d: Diff) -> Result<(), String> {
            self.0.push(d);
            Ok(())
        }
    }

    async fn diff(old: Vec<Seen>, new: Vec<Seen>) -> Result<Vec<Diff>, DiffError<String>> {
        let mut out = Collect(Vec::new());
        let o = stream::iter(old.into_iter().map(Ok::<_, String>));
        let n = stream::iter(new.into_iter().map(Ok::<_, String>));
        merge(o, n, &mut out).await?;
        Ok(out.0)
    }

    #[tokio::test]
    async fn merge_finds_additions_changes_and_removals() {
        let old = vec![
            folder("a"),
            file("a/x", 1, 10),
            file("a/y", 2, 20),
            file("b", 3, 30),
        ];
        let new = vec![
            folder("a"),
            file("a/x", 1, 10),
            file("a/y", 5, 21),
            file("a-z", 1, 1),
            file("c", 7, 70),
        ];
        let d = diff(old, new).await.expect("diff");
        assert_eq!(
            d,
            vec![
                Diff::Changed {
                    old: file("a/y", 2, 20),
                    new: file("a/y", 5, 21)
                },
                Diff::Added(file("a-z", 1, 1)),
                Diff::Removed(file("b", 3, 30)),
                Diff::Added(file("c", 7, 70)),
            ]
        );
        // Nothing changed: nothing found.
        let same = vec![folder("a"), file("a/x", 1, 10)];
        assert!(diff(same.clone(), same).await.expect("same").is_empty());
    }

    #[tokio::test]
    async fn walk_keys_sort_subtrees_before_siblings() {
        // Byte order of plain paths puts "a-z" between "a" and "a/x"; a walk does not.
        let mut paths = vec!["a/x", "a-z", "a", "a/x/deep", "b"];
        paths.sort_by_key(|p| walk_key(p));
        assert_eq!(paths, vec!["a", "a/x", "a/x/deep", "a-z", "b"]);
    }

    #[tokio::test]
    async fn an_unsorted_side_stops_the_poll() {
        let old = vec![file("b", 1, 1), file("a", 1, 1)];
        match diff(old, vec![]).await {
            Err(DiffError::Unsorted { side, .. }) => assert_eq!(side, "snapshot"),
            other => panic!("expected an unsorted snapshot, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn strong_versions_decide_over_times() {
        let mut a = file("k", 4, 1000);
        a.version = Some("e1".into());
        let mut b = a.clone();
        b.mtime_ms = Some(2000);
        assert!(a.same_as(&b), "same ETag, another listing time");
        b.version = Some("e2".into());
        assert!(!a.same_as(&b));
    }

    #[test]
    fn renames_pair_by_identity_and_fold_into_their_folder() {
        let with = |mut s: Seen, ident: &str| {
            s.ident = Some(ident.into());
            s
        };
        let mut p = Pairing::default();
        let mut now = Vec::new();
        now.extend(p.push(Diff::Removed(with(folder("a"), "1"))));
        now.extend(p.push(Diff::Removed(with(file("a/x", 1, 1), "2"))));
        now.extend(p.push(Diff::Removed(with(file("f", 1, 1), "3"))));
        now.extend(p.push(Diff::Removed(with(file("gone", 1, 1), "4"))));
        now.extend(p.push(Diff::Added(with(folder("b"), "1"))));
        now.extend(p.push(Diff::Added(with(file("b/x", 1, 1), "2"))));
        now.extend(p.push(Diff::Added(with(file("d/f2", 1, 1), "3"))));
        now.extend(p.push(Diff::Added(with(file("new", 1, 1), "5"))));
        now.extend(p.push(Diff::Changed {
            old: file("u", 1, 1),
            new: file("u", 2, 2),
        }));
        assert_eq!(
            now,
            vec![Change::Updated {
                old: file("u", 1, 1),
                new: file("u", 2, 2)
            }]
        );
        let (done, put, delete) = p.finish();
        assert_eq!(put.len(), 4);
        assert_eq!(delete.len(), 4);
        assert_eq!(
            done,
            vec![
                Change::Removed(with(file("gone", 1, 1), "4")),
                Change::Added(with(file("new", 1, 1), "5")),
                Change::Renamed {
                    from: with(folder("a"), "1"),
                    to: with(folder("b"), "1")
                },
                Change::Renamed {
                    from: with(file("f", 1, 1), "3"),
                    to: with(file("d/f2", 1, 1), "3")
                },
            ]
        );
    }

    #[test]
    fn ambiguous_identities_stay_removals_and_additions() {
        let v = |path: &str| Seen {
            version: Some("same".into()),
            ..file(path, 3, 1)
        };
        let mut p = Pairing::default();
        for d in [
            Diff::Removed(v("a")),
            Diff::Removed(v("b")),
            Diff::Added(v("c")),
        ] {
            assert!(p.push(d).is_empty());
        }
        let (done, _, _) = p.finish();
        assert_eq!(
            done,
            vec![
                Change::Removed(v("b")),
                Change::Removed(v("a")),
                Change::Added(v("c"))
            ]
        );
    }
}
