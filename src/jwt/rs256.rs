//! RS256: RSASSA-PKCS1-v1_5 with SHA-256 (RFC 8017 §8.2.2), on the filter's own Montgomery
//! arithmetic ([`super::montgomery`]) in 32-bit words.
//!
//! The public exponent is applied by square-and-multiply on Montgomery forms: for e = 65537,
//! 16 squarings and one multiplication, plus one multiplication into Montgomery form. A
//! bignum library's constant-time exponentiation protects secret exponents and costs about
//! twice as much; everything here is public (key, signature, message), so the code is
//! variable-time. 32-bit words suit wasm32, which multiplies 64-bit values natively but has
//! no 64 × 64 → 128-bit product; under V8 the check costs less than half of what it does in
//! 64-bit words.
//!
//! The key's Montgomery constants are computed once, when the key set is read.

use sha2_11::Digest as _;

use super::montgomery::{below, Word};

/// The DER prefix of a SHA-256 `DigestInfo` (RFC 8017 §9.2, note 1).
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// The public exponent's bounds, those rsa 0.10 enforces (and every IdP key meets).
const MIN_EXPONENT: u64 = 3;
const MAX_EXPONENT: u64 = (1 << 33) - 1;

/// An RSA public key ready for RS256. Nothing in it is secret.
#[derive(Debug)]
pub(crate) struct Rs256Key {
    /// The modulus, least significant word first.
    n: Vec<u32>,
    /// R² mod n, R = 2^(32 · words): a Montgomery multiplication by it enters Montgomery form.
    r2: Vec<u32>,
    /// −n⁻¹ mod 2^32.
    n_neg_inv: u32,
    e: u64,
    /// The modulus's length in bytes (RFC 8017's k).
    size: usize,
}

/// Why [`Rs256Key::new`] refused a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyError {
    /// The modulus is zero or even.
    Modulus,
    /// The exponent is even, below 3, above 2³³ − 1 or not below the modulus.
    Exponent,
}

/// Big-endian bytes as words, least significant first.
fn words(be: &[u8]) -> Vec<u32> {
    be.rchunks(4)
        .map(|c| c.iter().fold(0, |w, b| (w << 8) | u32::from(*b)))
        .collect()
}

/// `x ← 2x mod n` for `x < n`.
fn double_mod(x: &mut [u32], n: &[u32]) {
    let mut carry = 0;
    for w in x.iter_mut() {
        let next = *w >> 31;
        *w = (*w << 1) | carry;
        carry = next;
    }
    // 2x < 2n: one subtraction at most; with a carry out, the wrapped difference is exact.
    if carry == 1 || !below(x, n) {
        let mut borrow = false;
        for (xi, &ni) in x.iter_mut().zip(n) {
            let (d, b1) = xi.overflowing_sub(ni);
            let (d, b2) = d.overflowing_sub(u32::from(borrow));
            *xi = d;
            borrow = b1 || b2;
        }
    }
}

impl Rs256Key {
    /// The key of modulus `n` and exponent `e`, both big-endian without leading zero bytes.
    pub(crate) fn new(n: &[u8], e: &[u8]) -> Result<Rs256Key, KeyError> {
        let Some(&first) = n.first() else {
            return Err(KeyError::Modulus);
        };
        if first == 0 || n.last().is_none_or(|b| b % 2 == 0) {
            return Err(KeyError::Modulus);
        }
        if e.len() > 8 {
            return Err(KeyError::Exponent);
        }
        let e = e.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
        let below_n = n.len() > 8 || e < n.iter().fold(0u64, |v, b| (v << 8) | u64::from(*b));
        if e % 2 == 0 || !(MIN_EXPONENT..=MAX_EXPONENT).contains(&e) || !below_n {
            return Err(KeyError::Exponent);
        }
        let n_words = words(n);
        let Some(&n0) = n_words.first() else {
            return Err(KeyError::Modulus);
        };
        let len = n_words.len();
        let bits = 8 * n.len() - first.leading_zeros() as usize;
        let r_bits = 32 * len;

        // R mod n: from 2^(bits − 1), which is below n, by doubling up to 2^r_bits.
        let mut x = vec![0u32; len];
        if let Some(w) = x.get_mut((bits - 1) / 32) {
            *w = 1 << ((bits - 1) % 32);
        }
        for _ in bits - 1..r_bits {
            double_mod(&mut x, &n_words);
        }
        // R² mod n: write r_bits = odd · 2^a. Doubling `odd` times gives R · 2^odd; each
        // Montgomery squaring turns R · 2^j into R · 2^(2j).
        let n_neg_inv = u32::neg_inv(n0);
        let a = r_bits.trailing_zeros();
        for _ in 0..r_bits >> a {
            double_mod(&mut x, &n_words);
        }
        let mut scratch = vec![0u32; 2 * len];
        for _ in 0..a {
            if !u32::square(&mut x, &mut scratch, &n_words, n_neg_inv) {
                return Err(KeyError::Modulus);
            }
        }
        Ok(Rs256Key {
            n: n_words,
            r2: x,
            n_neg_inv,
            e,
            size: n.len(),
        })
    }

    /// The modulus's size in bits.
    #[cfg(test)]
    pub(crate) fn bits(&self) -> usize {
        self.n
            .last()
            .map_or(0, |top| 32 * self.n.len() - top.leading_zeros() as usize)
    }

    /// RSAVP1: `s^e mod n` for a representative `s < n` (least significant word first);
    /// `None` when `s` is not below `n`.
    fn public_op(&self, s: &[u32]) -> Option<Vec<u32>> {
        let (n, k) = (self.n.as_slice(), self.n_neg_inv);
        if s.len() != n.len() || !below(s, n) {
            return None;
        }
        let mut scratch = vec![0u32; 2 * n.len()];
        // s·R mod n, the Montgomery form of s.
        let mut base = self.r2.clone();
        if !u32::mul(&mut base, s, &mut scratch, n, k) {
            return None;
        }
        // Left to right over e's bits below the top one. A Montgomery multiplication by the
        // plain s (a·s·R⁻¹) turns the Montgomery form of s^(e−1) into s^e itself; e is odd, so
        // the last step is that one and the result needs no conversion back.
        let mut acc = base.clone();
        let bits = u64::BITS - self.e.leading_zeros();
        for i in (0..bits.saturating_sub(1)).rev() {
            if !u32::square(&mut acc, &mut scratch, n, k) {
                return None;
            }
            if self.e >> i & 1 == 1 {
                let factor = if i == 0 { s } else { base.as_slice() };
                if !u32::mul(&mut acc, factor, &mut scratch, n, k) {
                    return None;
                }
            }
        }
        Some(acc)
    }

    /// RSASSA-PKCS1-v1_5 verification with SHA-256 (RFC 8017 §8.2.2), by "encode and compare".
    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        let k = self.size;
        // Step 1: the signature is exactly k octets.
        if signature.len() != k {
            return false;
        }
        // Step 2: OS2IP, RSAVP1 (which refuses s >= n), I2OSP. The words hold 4·words ≥ k
        // octets; the extra leading ones are zero because m < n.
        let Some(m) = self.public_op(&words(signature)) else {
            return false;
        };
        let octets: Vec<u8> = m.iter().rev().flat_map(|w| w.to_be_bytes()).collect();
        let Some((high, em)) = octets
            .len()
            .checked_sub(k)
            .and_then(|extra| octets.split_at_checked(extra))
        else {
            return false;
        };
        if high.iter().any(|b| *b != 0) {
            return false;
        }
        // Steps 3-4: 00 01 FF..FF 00 DigestInfo H, at least 8 octets of FF (§9.2 step 5).
        let digest = sha2_11::Sha256::digest(message);
        let t_len = SHA256_DIGEST_INFO.len() + digest.len();
        let Some(ps_len) = k.checked_sub(t_len + 3).filter(|len| *len >= 8) else {
            return false;
        };
        let Some((head, rest)) = em.split_at_checked(2) else {
            return false;
        };
        let Some((ps, rest)) = rest.split_at_checked(ps_len) else {
            return false;
        };
        let Some((sep, rest)) = rest.split_first() else {
            return false;
        };
        let Some((info, hash)) = rest.split_at_checked(SHA256_DIGEST_INFO.len()) else {
            return false;
        };
        head == [0x00, 0x01]
            && ps.iter().all(|b| *b == 0xff)
            && *sep == 0x00
            && info == SHA256_DIGEST_INFO
            && hash == digest.as_slice()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams};
    use crypto_bigint::{BoxedUint, NonZero, Odd};
    use proptest::prelude::*;

    fn be(words: &[u32]) -> Vec<u8> {
        let bytes: Vec<u8> = words.iter().rev().flat_map(|w| w.to_be_bytes()).collect();
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        bytes[start..].to_vec()
    }

    /// crypto-bigint's `s^e mod n`, the reference.
    fn reference(n: &[u8], e: u64, s: &[u8]) -> Vec<u8> {
        let n = Odd::new(BoxedUint::from_be_slice_vartime(n)).unwrap();
        let params = BoxedMontyParams::new_vartime(n.clone());
        let s = BoxedUint::from_be_slice(s, n.bits_precision()).unwrap();
        let e = BoxedUint::from(e);
        let m = BoxedMontyForm::new(s, &params).pow(&e).retrieve();
        let bytes = m.to_be_bytes();
        let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
        bytes[start..].to_vec()
    }

    #[test]
    fn keys_that_are_not_rsa_keys_are_refused() {
        let n = [0xc5; 256];
        assert!(Rs256Key::new(&n, &[1, 0, 1]).is_ok());
        assert_eq!(Rs256Key::new(&[], &[3]).unwrap_err(), KeyError::Modulus);
        assert_eq!(
            Rs256Key::new(&[&n[..255], &[0xc4][..]].concat(), &[3]).unwrap_err(),
            KeyError::Modulus
        );
        assert_eq!(
            Rs256Key::new(&[&[0][..], &n[..]].concat(), &[3]).unwrap_err(),
            KeyError::Modulus
        );
        for e in [&[1][..], &[2], &[1, 0, 0], &[2, 0, 0, 0, 1], &[0; 9], &[]] {
            assert_eq!(
                Rs256Key::new(&n, e).unwrap_err(),
                KeyError::Exponent,
                "{e:?}"
            );
        }
        assert!(Rs256Key::new(&n, &[1, 0xff, 0xff, 0xff, 0xff]).is_ok());
        // e must be below n.
        assert_eq!(Rs256Key::new(&[7], &[7]).unwrap_err(), KeyError::Exponent);
        assert!(Rs256Key::new(&[7], &[5]).is_ok());
        assert_eq!(Rs256Key::new(&n, &[1, 0, 1]).unwrap().bits(), 2048);
    }

    #[test]
    fn r_squared_matches_crypto_bigint() {
        for n in [
            vec![0xc5; 256],
            vec![0xff; 256],
            [&[0x80][..], &[0; 254], &[1]].concat(),
            [&[0x01][..], &[0; 256], &[1]].concat(),
            vec![0x9b; 384],
            vec![0x3b; 1024],
            vec![0x0d],
        ] {
            let key = Rs256Key::new(&n, &[3]).unwrap();
            // R² = 2^(64 · words), reduced by crypto-bigint.
            let r_bits = 32 * key.n.len() as u32;
            let r2 = BoxedUint::one_with_precision(2 * r_bits + 64)
                .shl_vartime(2 * r_bits)
                .unwrap()
                .rem_vartime(&NonZero::new(BoxedUint::from_be_slice_vartime(&n)).unwrap());
            assert_eq!(
                be(&key.r2),
                be(&words(&r2.to_be_bytes())),
                "{} bytes",
                n.len()
            );
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        #[test]
        fn public_op_agrees_with_crypto_bigint(
            (n, s) in (1usize..80).prop_flat_map(|len| (
                proptest::collection::vec(any::<u8>(), len),
                proptest::collection::vec(any::<u8>(), len),
            )),
            e in (1u64..1 << 32).prop_map(|e| 2 * e + 1),
            e65537 in any::<bool>(),
        ) {
            let mut n = n;
            n[0] |= 1;
            let last = n.len() - 1;
            n[last] |= 1;
            let e = if e65537 { 65537 } else { e };
            let Ok(key) = Rs256Key::new(&n, &e.to_be_bytes()[e.leading_zeros() as usize / 8..])
            else {
                // Only an exponent not below a small modulus is refused.
                prop_assert!(n.len() <= 8);
                return Ok(());
            };
            let mut sw = words(&s);
            sw.resize(key.n.len(), 0);
            match key.public_op(&sw) {
                Some(m) => prop_assert_eq!(be(&m), reference(&n, e, &s)),
                None => prop_assert!(!below(&sw, &key.n)),
            }
        }
    }
}
