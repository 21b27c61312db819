//! The verified-token cache: SHA-256(token) → verified claims, until `exp`.
//!
//! Keyed by a digest so the token itself is not kept in memory; a collision-resistant hash
//! (not a 64-bit one) because a cache hit is an authentication decision. Shared by all
//! workers: quick_cache shards it behind short read locks; nothing is held across an await.

use std::sync::Arc;

use aws_lc_rs::digest;

use super::identity::Verified;

pub type Key = [u8; 32];

pub struct TokenCache {
    inner: quick_cache::sync::Cache<Key, Arc<Verified>>,
}

impl TokenCache {
    pub fn new(capacity: usize) -> Self {
        TokenCache {
            inner: quick_cache::sync::Cache::new(capacity),
        }
    }

    pub fn key(token: &str) -> Key {
        let d = digest::digest(&digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    pub fn get(&self, key: &Key) -> Option<Arc<Verified>> {
        self.inner.get(key)
    }

    pub fn insert(&self, key: Key, v: Arc<Verified>) {
        self.inner.insert(key, v);
    }

    pub fn remove(&self, key: &Key) {
        self.inner.remove(key);
    }

    /// Drops every entry verified with one of `serials` (keys gone at rotation).
    pub fn invalidate_keys(&self, serials: &[u64]) {
        if !serials.is_empty() {
            self.inner.retain(|_, v| !serials.contains(&v.key_serial));
        }
    }
}
