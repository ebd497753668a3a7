//! Finding the next byte of a JSON string that is not plain text (`"`, `\` or a C0 control),
//! eight bytes at a time: strings here are mostly long base64 (tokens, sealed values).

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// Some byte of `w` is below `n` (`n` at most 128): the borrow of the subtraction reaches the
/// high bit only there (the classic has-less test; exact as a yes/no).
const fn has_less(w: u64, n: u8) -> bool {
    w.wrapping_sub(ONES * n as u64) & !w & HIGHS != 0
}

/// Some byte of `w` equals `b`.
const fn has_byte(w: u64, b: u8) -> bool {
    has_less(w ^ (ONES * b as u64), 1)
}

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The length of the plain text that starts `bytes`: the index of its first `"`, `\` or C0
/// control, or its length when it has none.
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    let mut words = bytes.chunks_exact(8);
    let mut skipped = 0;
    for word in &mut words {
        let Ok(word8) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let w = u64::from_le_bytes(word8);
        if has_byte(w, b'"') || has_byte(w, b'\\') || has_less(w, 0x20) {
            break;
        }
        skipped += 8;
    }
    let rest = bytes.get(skipped..).unwrap_or_default();
    skipped
        + rest
            .iter()
            .position(|&b| is_special(b))
            .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_special_byte_anywhere() {
        for len in 0..40 {
            for at in 0..=len {
                for special in [b'"', b'\\', 0x00, 0x1f, b'\n'] {
                    let mut bytes = vec![b'a'; len];
                    if let Some(b) = bytes.get_mut(at) {
                        *b = special;
                    }
                    assert_eq!(plain_len(&bytes), at.min(len), "{len} {at} {special}");
                }
            }
        }
        // Bytes next to the special ones, and non-ASCII, are plain.
        let plain: Vec<u8> = (0x20u8..=0xff).filter(|b| !is_special(*b)).collect();
        assert_eq!(plain_len(&plain), plain.len());
        assert_eq!(plain_len(b"\x21\x23\x5b\x5d\x20\x7f\x80\xff\"x"), 8);
    }
}
