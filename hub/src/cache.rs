//! A small time-bounded cache for hot lookups (key → principal, account → connector), so the
//! metadata path does not hit the database on every request. Entries expire after a TTL so that
//! changes made through another hub take effect within it; changes made here invalidate at once.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;
use std::time::{Duration, Instant};

#[derive(Debug)]
pub struct TtlCache<K, V> {
    ttl: Duration,
    capacity: usize,
    map: RwLock<HashMap<K, (V, Instant)>>,
}

impl<K: Hash + Eq + Clone, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity,
            map: RwLock::new(HashMap::new()),
        }
    }

    pub fn get(&self, k: &K, now: Instant) -> Option<V> {
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        match map.get(k) {
            Some((v, at)) if now.duration_since(*at) < self.ttl => Some(v.clone()),
            _ => None,
        }
    }

    pub fn insert(&self, k: K, v: V, now: Instant) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        if map.len() >= self.capacity {
            let ttl = self.ttl;
            map.retain(|_, (_, at)| now.duration_since(*at) < ttl);
            if map.len() >= self.capacity {
                map.clear();
            }
        }
        map.insert(k, (v, now));
    }

    pub fn remove(&self, k: &K) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(k);
    }

    pub fn retain(&self, mut keep: impl FnMut(&K, &V) -> bool) {
        self.map
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, (v, _)| keep(k, v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expires_and_bounds() {
        let c = TtlCache::new(Duration::from_secs(10), 2);
        let t0 = Instant::now();
        c.insert(1, "a", t0);
        assert_eq!(c.get(&1, t0 + Duration::from_secs(9)), Some("a"));
        assert_eq!(c.get(&1, t0 + Duration::from_secs(10)), None);
        c.insert(2, "b", t0);
        c.insert(3, "c", t0);
        assert!(c.get(&3, t0).is_some());
        c.remove(&3);
        assert!(c.get(&3, t0).is_none());
    }
}
