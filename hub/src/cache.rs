//! A small time-bounded cache for hot lookups (key → principal, account → connector), so the
//! metadata path does not hit the database on every request. Each lookup says how old an entry
//! may be: the full TTL while the revocation feed (`crate::revocation`) is known to be live,
//! a short one otherwise, so a revocation made anywhere applies here within its bound.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    map: RwLock<HashMap<K, (V, Instant)>>,
    /// Bumped by every invalidation. A value read from the database before an invalidation
    /// must not be cached after it (it may be the very credential being revoked), so inserts
    /// carry the generation seen before the read and are dropped when it moved.
    generation: AtomicU64,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            map: RwLock::new(HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }

    /// The value of `k` if it was stored less than `max_age` (and the TTL) before `now`.
    pub fn get(&self, k: &K, now: Instant, max_age: Duration) -> Option<V> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(k) {
            Some((v, at)) if now.saturating_duration_since(*at) < self.ttl.min(max_age) => {
                Some(v.clone())
            }
            _ => None,
        }
    }

    /// The generation to pass to [`TtlCache::insert`]: read it before the database lookup.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Stores `v`, read from the database at `at` (taken before the read), unless the cache
    /// was invalidated since `generation` was read.
    pub fn insert(&self, k: K, v: V, at: Instant, generation: u64) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        // Under the write lock, so an invalidation cannot slip between the check and the insert.
        if self.generation.load(Ordering::SeqCst) != generation {
            return;
        }
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (_, t)| at.saturating_duration_since(*t) < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(k, (v, at));
    }

    pub fn remove(&self, k: &K) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.remove(k);
    }

    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.retain(|k, (v, _)| keep(k, v));
    }

    pub fn clear(&self) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, Ordering::SeqCst);
        map.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONG: Duration = Duration::from_secs(3600);

    #[test]
    fn expires_and_bounds() {
        let c = TtlCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        c.insert(1, "a", t0, c.generation());
        assert_eq!(c.get(&1, t0 + Duration::from_secs(9), LONG), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(10), LONG), None);
        assert_eq!(
            c.get(&1, t0 + Duration::from_secs(1), Duration::from_millis(500)),
            None,
            "a shorter max age wins"
        );
        c.insert(2, "b", t0, c.generation());
        c.insert(3, "c", t0, c.generation());
        assert!(c.get(&3, t0, LONG).is_some());
        c.remove(&3);
        assert!(c.get(&3, t0, LONG).is_none());
    }

    #[test]
    fn a_read_older_than_an_invalidation_is_not_cached() {
        let c = TtlCache::new(Duration::from_secs(10), 8);
        let t0 = Instant::now();
        let seen = c.generation();
        // The credential is revoked (and forgotten) while the lookup is in flight.
        c.remove(&1);
        c.insert(1, "stale", t0, seen);
        assert_eq!(c.get(&1, t0, LONG), None);
        c.insert(1, "fresh", t0, c.generation());
        assert_eq!(c.get(&1, t0, LONG), Some("fresh"));
        c.clear();
        assert_eq!(c.get(&1, t0, LONG), None);
    }
}
