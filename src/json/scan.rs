//! Finding the next byte of a JSON string that is not plain text (`"`, `\` or a C0 control),
//! a word at a time: strings here are mostly long base64 (tokens, sealed values).

use crate::bytes::{has_byte, has_less, position};

fn is_special(b: u8) -> bool {
    b == b'"' || b == b'\\' || b < 0x20
}

/// The length of the plain text that starts `bytes`: the index of its first `"`, `\` or C0
/// control, or its length when it has none.
pub(crate) fn plain_len(bytes: &[u8]) -> usize {
    let special = |w| has_byte(w, b'"') || has_byte(w, b'\\') || has_less(w, 0x20);
    position(bytes, special, is_special).unwrap_or(bytes.len())
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
