//! Verified-token cache: the hot path does no RSA/ECDSA work for a token it has seen.
//!
//! One cache per Wasm VM (worker); sharing it across workers would cost a serialization per
//! request, more than the lookup saves. Entries are filed under a keyed hash of the token
//! (SipHash-1-3 with a per-VM random key) and hold the token itself, so a lookup is one keyed
//! hash plus an exact comparison: no collision can make an unverified token look verified (two
//! tokens with one hash only take turns in the entry). The hash covers the token's length and
//! its last [`HASHED_TAIL`] bytes (the end of the signature) rather than the whole token: the
//! leading part (JOSE header, and claims that differ little between tokens) adds no spread, and
//! hashing a ~600-byte RS256 token in full was a third of a cache hit's work. Only verified
//! tokens are ever inserted, so no one without the signing key chooses those bytes, and the key
//! keeps them unpredictable. Each entry dies at the token's `exp` (plus the configured clock
//! skew, the same rule `token::verify` applies), and the table is bounded: when full, expired
//! entries go first, then arbitrary ones.

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::fmt;
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::rc::Rc;

use super::token::HeaderNames;
use crate::bytes;

/// How many trailing bytes of a token the table hashes (with the token's length).
pub const HASHED_TAIL: usize = 32;

/// The table's own hasher over keys that are already keyed hashes: passes them through.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the keys are u64); anything else still hashes.
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A verified token and what it yields.
struct Entry {
    /// `Bearer <token>`: the `Authorization` value a hit forwards, made once per token.
    bearer: Rc<str>,
    cached: Cached,
}

/// What `Authorization: Bearer` puts before the token.
const BEARER: &str = "Bearer ";

impl Entry {
    fn token(&self) -> &[u8] {
        self.bearer
            .as_bytes()
            .get(BEARER.len()..)
            .unwrap_or_default()
    }
}

/// The `Authorization` value that carries `token`.
fn bearer(token: &str) -> Rc<str> {
    let mut value = String::with_capacity(BEARER.len() + token.len());
    value.push_str(BEARER);
    value.push_str(token);
    value.into()
}

/// What a verified token yields on every later request. Its `Debug` leaves the claim values out.
#[derive(Clone, PartialEq, Eq)]
pub struct Cached {
    /// Unix seconds after which the entry is dead (`exp` + clock skew).
    pub valid_until: u64,
    /// The token's `exp` (cookie lifetimes and the refresh margin count from it).
    pub exp: u64,
    /// Forwarded claim headers, ready to set (shared, so a hit copies nothing).
    pub forwarded: Rc<[(String, String)]>,
}

impl fmt::Debug for Cached {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cached")
            .field("valid_until", &self.valid_until)
            .field("exp", &self.exp)
            .field("forwarded", &HeaderNames(&self.forwarded))
            .finish()
    }
}

/// The cache. Its `Debug` shows counts only: the entries are access tokens.
pub struct TokenCache {
    /// Entries by [`TokenCache::hash`] of their token.
    map: HashMap<u64, Entry, BuildHasherDefault<Prehashed>>,
    /// The per-VM random key of the token hash.
    key: RandomState,
    capacity: usize,
    /// Lookups that found a live entry, and those that did not, since the last `take_counts`.
    hits: Cell<u64>,
    misses: Cell<u64>,
}

impl fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenCache")
            .field("len", &self.map.len())
            .field("capacity", &self.capacity)
            .field("hits", &self.hits.get())
            .field("misses", &self.misses.get())
            .finish()
    }
}

impl TokenCache {
    /// A cache of at most `capacity` tokens (at least one).
    pub fn new(capacity: usize) -> TokenCache {
        TokenCache {
            map: HashMap::default(),
            key: RandomState::new(),
            capacity: capacity.max(1),
            hits: Cell::new(0),
            misses: Cell::new(0),
        }
    }

    /// The keyed hash of the token's length and last [`HASHED_TAIL`] bytes.
    fn hash(&self, token: &[u8]) -> u64 {
        let tail = token
            .get(token.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or(token);
        let mut h = self.key.build_hasher();
        h.write_usize(token.len());
        h.write(tail);
        h.finish()
    }

    /// The live entry for `token` (the token's bytes, as the Cookie header carries them), if
    /// any: what it yields, and its `Authorization` value.
    pub fn get(&self, token: &[u8], now: u64) -> Option<(&Cached, &Rc<str>)> {
        let found = self
            .map
            .get(&self.hash(token))
            .filter(|e| bytes::same(e.token(), token))
            .filter(|e| now < e.cached.valid_until)
            .map(|e| (&e.cached, &e.bearer));
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

    /// Stores a verified token (in place of any other token with the same hash); its
    /// `Authorization` value, for the caller to forward too.
    pub fn insert(&mut self, token: &str, entry: Cached, now: u64) -> Rc<str> {
        let hash = self.hash(token.as_bytes());
        if self.map.len() >= self.capacity && !self.map.contains_key(&hash) {
            self.map.retain(|_, e| now < e.cached.valid_until);
            if self.map.len() >= self.capacity {
                // Still full of live tokens: drop an eighth (arbitrary ones) so the sweep above
                // does not run on every insert under a flood of distinct valid tokens.
                let drop: Vec<u64> = self
                    .map
                    .keys()
                    .take((self.capacity / 8).max(1))
                    .copied()
                    .collect();
                for k in drop {
                    self.map.remove(&k);
                }
            }
        }
        let bearer = bearer(token);
        self.map.insert(
            hash,
            Entry {
                bearer: Rc::clone(&bearer),
                cached: entry,
            },
        );
        bearer
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
        assert!(c.get(b"t1", 99).is_some());
        assert!(c.get(b"t1", 100).is_none());
        assert!(c.get(b"t2", 50).is_none());
    }

    #[test]
    fn same_tail_other_token_is_a_miss() {
        let tail = "s".repeat(HASHED_TAIL);
        let token = |claims: &str| format!("header.{claims}.{tail}");
        let hit = |c: &TokenCache, t: &str| c.get(t.as_bytes(), 1).is_some();
        let mut c = TokenCache::new(8);
        c.insert(&token("claims-a"), entry(100), 0);
        assert!(hit(&c, &token("claims-a")));
        assert!(!hit(&c, &token("claims-b")));
        assert!(!hit(&c, &token("claims")));
        assert!(!hit(&c, "short"));
        c.insert("short", entry(100), 0);
        assert!(hit(&c, "short"));
        // Same length and tail, so the same hash: the two take turns in one entry.
        c.insert(&token("claims-b"), entry(100), 0);
        assert!(hit(&c, &token("claims-b")));
        assert!(!hit(&c, &token("claims-a")));
    }

    #[test]
    fn a_hit_carries_the_bearer_value() {
        let mut c = TokenCache::new(4);
        let made = c.insert("t1.x.y", entry(100), 0);
        assert_eq!(&*made, "Bearer t1.x.y");
        let (cached, bearer) = c.get(b"t1.x.y", 1).unwrap();
        assert_eq!(&**bearer, "Bearer t1.x.y");
        assert_eq!(cached.valid_until, 100);
        assert!(
            Rc::ptr_eq(bearer, &made),
            "a hit shares the value, it makes no copy"
        );
    }

    #[test]
    fn counts_hits_and_misses() {
        let mut c = TokenCache::new(4);
        c.insert("t1", entry(100), 0);
        c.get(b"t1", 1);
        c.get(b"t1", 2);
        c.get(b"t2", 2);
        c.get(b"t1", 100);
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
        assert!(c.get(b"old", 5).is_none());
        assert!(c.get(b"live", 20).is_some());
        assert!(c.get(b"new", 20).is_some());
    }

    #[test]
    fn bounded_when_all_live() {
        let mut c = TokenCache::new(8);
        for i in 0..100 {
            c.insert(&format!("t{i}"), entry(1000), 0);
            assert!(c.len() <= 8);
        }
        assert!(c.get(b"t99", 0).is_some());
    }

    #[test]
    fn capacity_is_at_least_one() {
        let mut c = TokenCache::new(0);
        c.insert("t", entry(100), 0);
        assert_eq!(c.get(b"t", 0).map(|(e, _)| e.valid_until), Some(100));
        assert_eq!(c.len(), 1);
    }
}
