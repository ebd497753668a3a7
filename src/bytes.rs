//! Byte searches a word at a time (SWAR): the long values the filter reads (tokens, sealed
//! cookies, JSON strings) are mostly plain base64, and on wasm32 core's `memchr` reads four
//! bytes at a time. Imports nothing from the crate.

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

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
    let word = |w: &[u8]| <[u8; 8]>::try_from(w).map_or(0, u64::from_le_bytes);
    let mut at = 0;
    while let Some((a, b)) = bytes.get(at..at + 16).map(|c| c.split_at(8)) {
        if may_hit(word(a)) || may_hit(word(b)) {
            break;
        }
        at += 16;
    }
    let rest = bytes.get(at..)?;
    rest.iter().position(|&b| hit(b)).map(|i| at + i)
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
    }
}
