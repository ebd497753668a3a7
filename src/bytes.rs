//! Byte searches and comparisons a word at a time (SWAR): the long values the filter reads
//! (tokens, sealed cookies, JSON strings) are mostly plain base64, and on wasm32 core's `memchr`
//! reads four bytes at a time and `==` on byte slices calls the C library's `memcmp`, a byte loop
//! behind a call even for a short header name. Imports nothing from the crate.

const ONES: u64 = 0x0101_0101_0101_0101;
/// The high bit of every byte of a word: `w & HIGHS` is zero when all eight bytes are ASCII.
pub(crate) const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Some byte of `w` is below `n` (`n` at most 128): the borrow of the subtraction reaches the
/// high bit only there (the classic has-less test; exact as a yes/no).
pub(crate) const fn has_less(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS != 0
}

/// Some byte of `w` equals `b`.
pub(crate) const fn has_byte(w: u64, b: u8) -> bool {
    has_less(w ^ (ONES * b as u64), 1)
}

/// The index of the first byte of `bytes` that `hit` accepts. Sixteen bytes at a time, each
/// eight-byte word (little-endian) is first shown to `may_hit`, which must be true for every
/// word holding a byte `hit` accepts: words it rules out are passed over whole.
pub(crate) fn position(
    bytes: &[u8],
    may_hit: impl Fn(u64) -> bool,
    hit: impl Fn(u8) -> bool,
) -> Option<usize> {
    let mut at = 0;
    // Taken as a sixteen-byte slice, the words need no further bounds checks.
    while let Some(step) = bytes.get(at..at + 16) {
        if may_hit(word(step, 0)) || may_hit(word(step, 8)) {
            break;
        }
        at += 16;
    }
    let rest = bytes.get(at..)?;
    rest.iter().position(|&b| hit(b)).map(|i| at + i)
}

/// The little-endian word at `at` (zero past the end; callers stay within bounds). Always
/// inlined: built for size, a call per word made the loops above several times slower.
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    bytes
        .get(at..at + 8)
        .and_then(|w| <[u8; 8]>::try_from(w).ok())
        .map_or(0, u64::from_le_bytes)
}

/// `a == b`, sixteen bytes a step, and the last few as one word that may overlap the step
/// before (no call, no byte loop, for anything of eight bytes or more).
/// A plain loop: built for size, `chunks_exact` zipped with `chunks_exact` called an
/// out-of-line function for every eight bytes.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    let len = a.len();
    if len != b.len() {
        return false;
    }
    if len < 8 {
        return a.iter().zip(b).all(|(x, y)| x == y);
    }
    let mut at = 0;
    while let (Some(x), Some(y)) = (a.get(at..at + 16), b.get(at..at + 16)) {
        if (word(x, 0) ^ word(y, 0)) | (word(x, 8) ^ word(y, 8)) != 0 {
            return false;
        }
        at += 16;
    }
    let last = len - 8;
    (word(a, at.min(last)) ^ word(b, at.min(last))) | (word(a, last) ^ word(b, last)) == 0
}

/// Whether `bytes` starts with `prefix` ([`same`] on the head).
pub(crate) fn starts_with(bytes: &[u8], prefix: &[u8]) -> bool {
    bytes
        .get(..prefix.len())
        .is_some_and(|head| same(head, prefix))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn position_is_the_first_hit(
            bytes in proptest::collection::vec(any::<u8>(), 0..100),
            b in any::<u8>(),
            n in 0u8..=128,
        ) {
            let is_b = |x: u8| x == b;
            let want = bytes.iter().position(|&x| is_b(x));
            prop_assert_eq!(position(&bytes, |w| has_byte(w, b), is_b), want);
            let below = |x: u8| x < n;
            let want = bytes.iter().position(|&x| below(x));
            prop_assert_eq!(position(&bytes, |w| has_less(w, n), below), want);
        }

        #[test]
        fn same_is_equality(
            a in proptest::collection::vec(0u8..4, 0..70),
            flip in any::<proptest::sample::Index>(),
            extra in 0u8..4,
        ) {
            // Few distinct bytes, so equal and nearly equal pairs are common.
            prop_assert!(same(&a, &a));
            let mut b = a.clone();
            if !b.is_empty() {
                let i = flip.index(b.len());
                if let Some(x) = b.get_mut(i) {
                    *x ^= 0x80;
                }
                prop_assert!(!same(&a, &b));
                prop_assert!(!same(&b, &a));
            }
            let mut longer = a.clone();
            longer.push(extra);
            prop_assert!(!same(&a, &longer));
            prop_assert!(starts_with(&longer, &a));
            prop_assert_eq!(starts_with(&a, &longer), false);
            for cut in 0..=a.len() {
                prop_assert_eq!(same(a.get(..cut).unwrap_or_default(), &a), cut == a.len());
            }
        }
    }
}
