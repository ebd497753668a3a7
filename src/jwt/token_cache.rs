//! Verified-token cache: the hot path does no RSA/ECDSA work for a token it has seen.
//!
//! One cache per Wasm VM (worker); sharing it across workers would cost a serialization per
//! request, more than the lookup saves. Entries are keyed by the token itself through a
//! SipHash-1-3 table with a per-VM random key, so a lookup is one keyed hash plus an exact
//! comparison: no collision can make an unverified token look verified. The hash covers the
//! token's length and its last [`HASHED_TAIL`] bytes (the end of the signature) rather than the
//! whole token: the leading part (JOSE header, and claims that differ little between tokens)
//! adds no spread, and hashing a ~600-byte RS256 token in full was a third of a cache hit's
//! work. Only verified tokens are ever inserted, so no one without the signing key chooses
//! those bytes, and the key keeps them unpredictable. Each entry dies at the
//! token's `exp` (plus the configured clock skew, the same rule `token::verify` applies), and
//! the table is bounded: when full, expired entries go first, then arbitrary ones.

use std::cell::Cell;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::rc::Rc;

/// How many trailing bytes of a token the table hashes (with the token's length).
pub const HASHED_TAIL: usize = 32;

/// The table's hasher: keyed SipHash-1-3 (std's `RandomState`) over the length and the last
/// [`HASHED_TAIL`] bytes of what it is given. Lookups and inserts hash alike, and equality is
/// still the full token's.
#[derive(Debug, Clone, Default)]
struct TailHash(RandomState);

struct TailHasher(DefaultHasher);

impl BuildHasher for TailHash {
    type Hasher = TailHasher;

    fn build_hasher(&self) -> TailHasher {
        TailHasher(self.0.build_hasher())
    }
}

impl Hasher for TailHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.write_usize(bytes.len());
        let tail = bytes
            .get(bytes.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or(bytes);
        self.0.write(tail);
    }

    fn finish(&self) -> u64 {
        self.0.finish()
    }
}

/// What a verified token yields on every later request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cached {
    /// Unix seconds after which the entry is dead (`exp` + clock skew).
    pub valid_until: u64,
    /// The token's `exp` (cookie lifetimes and the refresh margin count from it).
    pub exp: u64,
    /// Forwarded claim headers, ready to set (shared, so a hit copies nothing).
    pub forwarded: Rc<[(String, String)]>,
}

#[derive(Debug)]
pub struct TokenCache {
    map: HashMap<Box<str>, Cached, TailHash>,
    capacity: usize,
    /// Lookups that found a live entry, and those that did not, since the last `take_counts`.
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: HashMap::default(),
            capacity: capacity.max(1),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    /// The live entry for `token`, if any.
    pub fn get(&self, token: &str, now: u64) -> Option<&Cached> {
        let found = self.map.get(token).filter(|c| now < c.valid_until);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.set(counter.get().saturating_add(1));
        found
    }

    /// Hits and misses since the last call (for metrics).
    pub fn take_counts(&self) -> (u64, u64) {
        (self.hits.replace(0), self.misses.replace(0))
    }

    /// Stores a verified token and returns the stored entry.
    pub fn insert(&mut self, token: &str, entry: Cached, now: u64) {
        if self.map.len() >= self.capacity && !self.map.contains_key(token) {
            self.map.retain(|_, c| now < c.valid_until);
            if self.map.len() >= self.capacity {
                // Still full of live tokens: drop an eighth (arbitrary ones) so the sweep above
                // does not run on every insert under a flood of distinct valid tokens.
                let drop: Vec<Box<str>> = self
                    .map
                    .keys()
                    .take((self.capacity / 8).max(1))
                    .cloned()
                    .collect();
                for k in drop {
                    self.map.remove(&k);
                }
            }
        }
        self.map.insert(token.into(), entry);
    }

    /// Forgets every entry (the signing keys changed).
    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(valid_until: u64) -> Cached {
        Cached {
            valid_until,
            exp: valid_until,
            forwarded: vec![("x-user-sub".into(), "alice".into())].into(),
        }
    }

    #[test]
    fn hit_until_expiry() {
        let mut c = TokenCache::new(4);
        c.insert("t1", entry(100), 0);
        assert!(c.get("t1", 99).is_some());
        assert!(c.get("t1", 100).is_none());
        assert!(c.get("t2", 50).is_none());
    }

    #[test]
    fn same_tail_other_token_is_a_miss() {
        let tail = "s".repeat(HASHED_TAIL);
        let mut c = TokenCache::new(8);
        c.insert(&format!("header.claims-a.{tail}"), entry(100), 0);
        assert!(c.get(&format!("header.claims-a.{tail}"), 1).is_some());
        assert!(c.get(&format!("header.claims-b.{tail}"), 1).is_none());
        assert!(c.get(&format!("header.claims.{tail}"), 1).is_none());
        assert!(c.get("short", 1).is_none());
        c.insert("short", entry(100), 0);
        assert!(c.get("short", 1).is_some());
    }

    #[test]
    fn counts_hits_and_misses() {
        let mut c = TokenCache::new(4);
        c.insert("t1", entry(100), 0);
        c.get("t1", 1);
        c.get("t1", 2);
        c.get("t2", 2);
        c.get("t1", 100);
        assert_eq!(c.take_counts(), (2, 2));
        assert_eq!(c.take_counts(), (0, 0));
    }

    #[test]
    fn bounded_expired_first() {
        let mut c = TokenCache::new(2);
        c.insert("old", entry(10), 0);
        c.insert("live", entry(1000), 0);
        c.insert("new", entry(1000), 20);
        assert_eq!(c.len(), 2);
        assert!(c.get("old", 5).is_none());
        assert!(c.get("live", 20).is_some());
        assert!(c.get("new", 20).is_some());
    }

    #[test]
    fn bounded_when_all_live() {
        let mut c = TokenCache::new(8);
        for i in 0..100 {
            c.insert(&format!("t{i}"), entry(1000), 0);
            assert!(c.len() <= 8);
        }
        assert!(c.get("t99", 0).is_some());
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut c = TokenCache::new(0);
        c.insert("t", entry(100), 0);
        assert_eq!(c.get("t", 0).map(|e| e.valid_until), Some(100));
        assert_eq!(c.len(), 1);
    }
}
