//! Montgomery arithmetic for RS256's public exponent (e = 65537: 16 squarings, one product).
//!
//! A square computes each cross product once, n(n+1)/2 word products for an n-word modulus,
//! then reduces, n² more; the reduction clears two words per pass, so two independent products
//! share each step and their carry chains overlap. (crypto-bigint, with the 32-bit words wasm32
//! wants, squares by a general multiplication, 2n² products; under V8 a cold RS256 check took a
//! fifth longer with it.) A multiplication is the schoolbook product and the same reduction.
//!
//! Everything here is public (key and signature), so the code is variable-time. The tests hold
//! it to crypto-bigint's results.

/// Word sizes: `u32` is what RS256 uses ([`super::rs256`]); `u64` is kept for the tests, which
/// check the algorithm at both widths.
pub(crate) trait Word: Copy {
    /// `a ← a²·R⁻¹ mod m`, fully reduced, for `a < m`, `R = 2^(bits of m's words)` and
    /// `m_neg_inv = −m⁻¹ mod 2^word`. `scratch` holds at least twice as many words as `m`.
    /// False (and `a` unspecified) when the lengths do not fit.
    fn square(a: &mut [Self], scratch: &mut [Self], m: &[Self], m_neg_inv: Self) -> bool;

    /// `a ← a·b·R⁻¹ mod m`, fully reduced, for `a, b < m`; `scratch` holds at least twice as
    /// many words as `m`. False (and `a` unspecified) when the lengths do not fit.
    fn mul(a: &mut [Self], b: &[Self], scratch: &mut [Self], m: &[Self], m_neg_inv: Self) -> bool;

    /// The Montgomery reduction of [`Word::square`] and [`Word::mul`].
    fn reduce(a: &mut [Self], t: &mut [Self], m: &[Self], m_neg_inv: Self) -> bool;

    /// `−m0⁻¹ mod 2^word` for an odd `m0`, the lowest word of a modulus.
    fn neg_inv(m0: Self) -> Self;
}

macro_rules! word {
    ($word:ty, $wide:ty) => {
        impl Word for $word {
            // Not inlined: inside the large signature-check function V8 ran these loops about
            // a third slower (measured with the instruction harness under Node.js).
            #[inline(never)]
            fn square(a: &mut [Self], t: &mut [Self], m: &[Self], m_neg_inv: Self) -> bool {
                const BITS: u32 = <$word>::BITS;
                let n = m.len();
                if n == 0 || a.len() != n {
                    return false;
                }
                let Some(t) = t.get_mut(..2 * n) else {
                    return false;
                };
                let wide = <$wide>::from;

                // t = a²: each cross product a[i]·a[j] (i < j) once, then doubled, plus the
                // squares a[i]² on the diagonal. No sum overflows its wide word:
                // (B−1)² + 2(B−1) = B² − 1.
                t.fill(0);
                for (i, &ai) in a.iter().enumerate() {
                    let (Some(rest), Some(row)) = (a.get(i + 1..), t.get_mut(2 * i + 1..n + i))
                    else {
                        return false;
                    };
                    let mut carry: $wide = 0;
                    for (&aj, tj) in rest.iter().zip(row.iter_mut()) {
                        let v = wide(ai) * wide(aj) + wide(*tj) + carry;
                        *tj = v as $word;
                        carry = v >> BITS;
                    }
                    // t[n + i], not written by an earlier row.
                    if let Some(tj) = t.get_mut(n + i) {
                        *tj = carry as $word;
                    }
                }
                let mut shifted: $word = 0;
                let mut carry: $wide = 0;
                for (pair, &ai) in t.chunks_exact_mut(2).zip(a.iter()) {
                    let [lo, hi] = pair else {
                        return false;
                    };
                    let square = wide(ai) * wide(ai);
                    let doubled_lo = (*lo << 1) | shifted;
                    let doubled_hi = (*hi << 1) | (*lo >> (BITS - 1));
                    shifted = *hi >> (BITS - 1);
                    let v = wide(doubled_lo) + (square as $word as $wide) + carry;
                    *lo = v as $word;
                    carry = v >> BITS;
                    let v = wide(doubled_hi) + (square >> BITS) + carry;
                    *hi = v as $word;
                    carry = v >> BITS;
                }

                Self::reduce(a, t, m, m_neg_inv)
            }

            // The schoolbook product, then the squaring's reduction (two words per pass). Used
            // twice per RS256 check (into Montgomery form, and the exponent's last bit).
            #[inline(never)]
            fn mul(
                a: &mut [Self],
                b: &[Self],
                t: &mut [Self],
                m: &[Self],
                m_neg_inv: Self,
            ) -> bool {
                const BITS: u32 = <$word>::BITS;
                let n = m.len();
                if n == 0 || a.len() != n || b.len() != n {
                    return false;
                }
                let Some(t) = t.get_mut(..2 * n) else {
                    return false;
                };
                let wide = <$wide>::from;
                t.fill(0);
                for (i, &ai) in a.iter().enumerate() {
                    let Some((row, [next])) = t
                        .get_mut(i..i + n + 1)
                        .and_then(|w| w.split_last_chunk_mut::<1>())
                    else {
                        return false;
                    };
                    let mut carry: $wide = 0;
                    for (tj, &bj) in row.iter_mut().zip(b) {
                        let v = wide(ai) * wide(bj) + wide(*tj) + carry;
                        *tj = v as $word;
                        carry = v >> BITS;
                    }
                    *next = carry as $word;
                }
                Self::reduce(a, t, m, m_neg_inv)
            }

            /// `a ← t·R⁻¹ mod m` for `t < m·R` in `2n` words (`t` is overwritten).
            #[inline(always)]
            fn reduce(a: &mut [Self], t: &mut [Self], m: &[Self], m_neg_inv: Self) -> bool {
                const BITS: u32 = <$word>::BITS;
                let n = m.len();
                let wide = <$wide>::from;
                // Montgomery reduction: add u·m so that t's lowest word becomes zero, then drop
                // it, two words per pass (two independent products per step, so the carry
                // chains overlap). `top` is the carry out of the top word so far (0 or 1).
                let mut top: $word = 0;
                let mut i = 0;
                while i + 1 < n {
                    // Positions i ..= i + n + 1: `w` up to i + n − 1, then the pass's last two.
                    let Some((w, [wn, wn1])) = t
                        .get_mut(i..i + n + 2)
                        .and_then(|w| w.split_last_chunk_mut::<2>())
                    else {
                        return false;
                    };
                    let (Some(&w0), Some(&w1), Some(&m0), Some(&m1)) =
                        (w.first(), w.get(1), m.first(), m.get(1))
                    else {
                        return false;
                    };
                    let u0 = w0.wrapping_mul(m_neg_inv);
                    let c0 = (wide(u0) * wide(m0) + wide(w0)) >> BITS;
                    let v = wide(u0) * wide(m1) + wide(w1) + c0;
                    let x1 = v as $word;
                    let mut c0 = v >> BITS;
                    let u1 = x1.wrapping_mul(m_neg_inv);
                    let mut c1 = (wide(u1) * wide(m0) + wide(x1)) >> BITS;
                    let (Some(row), Some(m_hi), Some(m_lo)) =
                        (w.get_mut(2..), m.get(2..), m.get(1..n - 1))
                    else {
                        return false;
                    };
                    for ((wj, &mj), &mj1) in row.iter_mut().zip(m_hi).zip(m_lo) {
                        let v0 = wide(u0) * wide(mj) + wide(*wj) + c0;
                        c0 = v0 >> BITS;
                        let v1 = wide(u1) * wide(mj1) + (v0 as $word as $wide) + c1;
                        *wj = v1 as $word;
                        c1 = v1 >> BITS;
                    }
                    let Some(&m_last) = m.last() else {
                        return false;
                    };
                    let x = wide(*wn) + c0 + wide(top);
                    let v1 = wide(u1) * wide(m_last) + (x as $word as $wide) + c1;
                    let x2 = wide(*wn1) + (v1 >> BITS) + (x >> BITS);
                    *wn = v1 as $word;
                    *wn1 = x2 as $word;
                    top = (x2 >> BITS) as $word;
                    i += 2;
                }
                if i < n {
                    // The last row of an odd count.
                    let Some(window) = t.get_mut(i..n + i) else {
                        return false;
                    };
                    let u = window.first().map_or(0, |ti| ti.wrapping_mul(m_neg_inv));
                    let mut carry: $wide = 0;
                    for (&mj, tj) in m.iter().zip(window.iter_mut()) {
                        let v = wide(u) * wide(mj) + wide(*tj) + carry;
                        *tj = v as $word;
                        carry = v >> BITS;
                    }
                    let Some(next) = t.get_mut(n + i) else {
                        return false;
                    };
                    let v = wide(*next) + carry + wide(top);
                    *next = v as $word;
                    top = (v >> BITS) as $word;
                }

                // The result, below 2m since a < m, is brought below m by at most one
                // subtraction.
                let Some(r) = t.get(n..) else {
                    return false;
                };
                if top == 0 && below(r, m) {
                    for (ai, &ri) in a.iter_mut().zip(r) {
                        *ai = ri;
                    }
                } else {
                    let mut borrow = false;
                    for ((ai, &ri), &mi) in a.iter_mut().zip(r).zip(m) {
                        let (d, b1) = ri.overflowing_sub(mi);
                        let (d, b2) = d.overflowing_sub(<$word>::from(borrow));
                        *ai = d;
                        borrow = b1 || b2;
                    }
                }
                true
            }

            fn neg_inv(m0: Self) -> Self {
                // Newton's iteration doubles the correct low bits each step (m0 is its own
                // inverse to 3 bits): 3 → 6 → ... → 96 ≥ 64.
                let mut inv = m0;
                for _ in 0..5 {
                    inv = inv.wrapping_mul((2 as $word).wrapping_sub(m0.wrapping_mul(inv)));
                }
                inv.wrapping_neg()
            }
        }
    };
}

word!(u32, u64);
word!(u64, u128);

/// `x < y` for two numbers of the same length, least significant word first.
pub(crate) fn below<W: Copy + Ord>(x: &[W], y: &[W]) -> bool {
    for (a, b) in x.iter().rev().zip(y.iter().rev()) {
        if a != b {
            return a < b;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use crypto_bigint::modular::{BoxedMontyForm, BoxedMontyParams, MontyParams};
    use crypto_bigint::{BoxedUint, MontyForm, MontyMultiplier, Odd};
    use proptest::prelude::*;

    /// −m⁻¹ mod 2^64 (Newton's iteration doubles the correct low bits each step).
    fn neg_inv(m0: u64) -> u64 {
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m0.wrapping_mul(inv)));
        }
        inv.wrapping_neg()
    }

    fn halves(words: &[u64]) -> Vec<u32> {
        words
            .iter()
            .flat_map(|w| [*w as u32, (*w >> 32) as u32])
            .collect()
    }

    fn joined(halves: &[u32]) -> Vec<u64> {
        halves
            .chunks(2)
            .map(|p| u64::from(p[0]) | (u64::from(p[1]) << 32))
            .collect()
    }

    /// crypto-bigint's own squaring, the reference: the same R for both word sizes, since
    /// 32-bit words come in pairs here.
    fn reference(a: &BoxedUint, params: &BoxedMontyParams) -> BoxedUint {
        let mut x = BoxedMontyForm::from_montgomery(a.clone(), params);
        let mut mm = <BoxedMontyForm as MontyForm>::Multiplier::from(params);
        mm.square_assign(&mut x);
        x.as_montgomery().clone()
    }

    fn check(modulus: &[u64], a: &[u64]) {
        check_mul(
            modulus,
            a,
            &a.iter().rev().map(|w| w ^ 0x5555).collect::<Vec<_>>(),
        );
        let m = BoxedUint::from_words(modulus.iter().copied());
        let Some(m) = Option::<Odd<BoxedUint>>::from(m.to_odd()) else {
            return;
        };
        let params = BoxedMontyParams::new_vartime(m.clone());
        let a = BoxedUint::from_words(a.iter().copied()).rem_vartime(m.as_nz_ref());
        let expected = reference(&a, &params);
        let k = AsRef::<MontyParams<BoxedUint>>::as_ref(&params)
            .mod_neg_inv()
            .0;
        assert_eq!(k, neg_inv(modulus[0]));
        assert_eq!(k, u64::neg_inv(modulus[0]));
        assert_eq!(k as u32, u32::neg_inv(modulus[0] as u32));

        let mut x64 = a.as_words().to_vec();
        let mut t64 = vec![0; 2 * modulus.len()];
        assert!(u64::square(&mut x64, &mut t64, modulus, k));
        assert_eq!(x64, expected.as_words(), "64-bit words");

        let m32 = halves(modulus);
        let mut x32 = halves(a.as_words());
        let mut t32 = vec![0; 2 * m32.len()];
        assert!(u32::square(
            &mut x32,
            &mut t32,
            &m32,
            neg_inv(modulus[0]) as u32
        ));
        assert_eq!(joined(&x32), expected.as_words(), "32-bit words");
    }

    /// crypto-bigint's Montgomery multiplication against `Word::mul`, both word sizes.
    fn check_mul(modulus: &[u64], a: &[u64], b: &[u64]) {
        let m = BoxedUint::from_words(modulus.iter().copied());
        let Some(m) = Option::<Odd<BoxedUint>>::from(m.to_odd()) else {
            return;
        };
        let params = BoxedMontyParams::new_vartime(m.clone());
        let a = BoxedUint::from_words(a.iter().copied()).rem_vartime(m.as_nz_ref());
        let b = BoxedUint::from_words(b.iter().copied()).rem_vartime(m.as_nz_ref());
        let mut x = BoxedMontyForm::from_montgomery(a.clone(), &params);
        let y = BoxedMontyForm::from_montgomery(b.clone(), &params);
        let mut mm = <BoxedMontyForm as MontyForm>::Multiplier::from(&params);
        mm.mul_assign(&mut x, &y);
        let expected = x.as_montgomery();
        let k = neg_inv(modulus[0]);

        let mut x64 = a.as_words().to_vec();
        let mut t64 = vec![0; 2 * modulus.len()];
        assert!(u64::mul(&mut x64, b.as_words(), &mut t64, modulus, k));
        assert_eq!(x64, expected.as_words(), "64-bit words");

        let m32 = halves(modulus);
        let mut x32 = halves(a.as_words());
        let mut t32 = vec![0; 2 * m32.len()];
        assert!(u32::mul(
            &mut x32,
            &halves(b.as_words()),
            &mut t32,
            &m32,
            k as u32
        ));
        assert_eq!(joined(&x32), expected.as_words(), "32-bit words");
    }

    #[test]
    fn edge_values_square_like_crypto_bigint() {
        let ones = vec![u64::MAX; 32];
        let mut top_only = vec![0; 32];
        top_only[31] = 1 << 63;
        top_only[0] = 1;
        for m in [&ones, &top_only] {
            let mut below_m = m.clone();
            below_m[0] -= 1;
            for a in [vec![0; 32], vec![1; 32], below_m, vec![u64::MAX >> 1; 32]] {
                check(m, &a);
            }
        }
        check(&[3], &[2]);
        check(&[u64::MAX], &[u64::MAX - 1]);
    }

    #[test]
    fn wrong_lengths_are_refused() {
        let m = [0xffff_fff1_u32, 7];
        assert!(!u32::square(&mut [1, 2], &mut [0; 3], &m, 1));
        assert!(!u32::square(&mut [1], &mut [0; 4], &m, 1));
        assert!(!u32::square(&mut [], &mut [], &[], 1));
        assert!(!u32::mul(&mut [1, 2], &[1, 2], &mut [0; 3], &m, 1));
        assert!(!u32::mul(&mut [1, 2], &[1], &mut [0; 4], &m, 1));
        assert!(!u32::mul(&mut [1], &[1, 2], &mut [0; 4], &m, 1));
        assert!(!u32::mul(&mut [], &[], &mut [0; 4], &[], 1));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn squares_like_crypto_bigint(
            (modulus, a) in (1usize..40).prop_flat_map(|n| (
                proptest::collection::vec(any::<u64>(), n),
                proptest::collection::vec(any::<u64>(), n),
            )),
        ) {
            let mut modulus = modulus;
            modulus[0] |= 1;
            check(&modulus, &a);
        }
    }
}
