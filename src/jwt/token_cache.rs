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

/// Byte equality sixteen bytes at a time. On wasm32, `==` on slices calls the C library's
/// `memcmp`, which compares byte by byte: for a ~700-byte token that was about a quarter of a
/// cache hit's time under V8.
/// A plain loop: built for size, `chunks_exact` zipped with `chunks_exact` called an
/// out-of-line function for every 8 bytes.
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let word = |c: &[u8], at: usize| {
        c.get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_ne_bytes)
    };
    let mut at = 0;
    while let (Some(x), Some(y)) = (a.get(at..at + 16), b.get(at..at + 16)) {
        if (word(x, 0) ^ word(y, 0)) | (word(x, 8) ^ word(y, 8)) != 0 {
            return false;
        }
        at += 16;
    }
    a.get(at..) == b.get(at..)
}

/// A verified token and what it yields.
struct Entry {
    token: Box<str>,
    cached: Cached,
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
    fn hash(&self, token: &str) -> u64 {
        let bytes = token.as_bytes();
        let tail = bytes
            .get(bytes.len().saturating_sub(HASHED_TAIL)..)
            .unwrap_or(bytes);
        let mut h = self.key.build_hasher();
        h.write_usize(bytes.len());
        h.write(tail);
        h.finish()
    }

    /// The live entry for `token`, if any.
    pub fn get(&self, token: &str, now: u64) -> Option<&Cached> {
        let found = self
            .map
            .get(&self.hash(token))
            .filter(|e| same_bytes(e.token.as_bytes(), token.as_bytes()))
            .map(|e| &e.cached)
            .filter(|c| now < c.valid_until);
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

    /// Stores a verified token (in place of any other token with the same hash).
    pub fn insert(&mut self, token: &str, entry: Cached, now: u64) {
        let hash = self.hash(token);
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
        self.map.insert(
            hash,
            Entry {
                token: token.into(),
                cached: entry,
            },
        );
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
        // Same length and tail, so the same hash: the two take turns in one entry.
        c.insert(&format!("header.claims-b.{tail}"), entry(100), 0);
        assert!(c.get(&format!("header.claims-b.{tail}"), 1).is_some());
        assert!(c.get(&format!("header.claims-a.{tail}"), 1).is_none());
    }

    proptest::proptest! {
        #[test]
        fn same_bytes_is_equality(
            a in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            flip in proptest::prelude::any::<(usize, u8)>(),
            cut in 0usize..40,
        ) {
            let mut b = a.clone();
            if let Some(x) = b.get_mut(flip.0 % a.len().max(1)) {
                *x ^= flip.1;
            }
            proptest::prop_assert_eq!(same_bytes(&a, &b), a == b);
            proptest::prop_assert!(same_bytes(&a, &a.clone()));
            let short = a.get(..cut.min(a.len())).unwrap_or_default();
            proptest::prop_assert_eq!(same_bytes(&a, short), a.as_slice() == short);
        }
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
