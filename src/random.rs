//! Fresh randomness for one request, drawn by the shell from the host (WASI `random_get`) and
//! passed to the pure core, which never draws its own.

use std::fmt;

/// Every random value a request may need.
#[derive(Clone, PartialEq, Eq)]
pub struct Random {
    /// AES-GCM IV for sealing a session or a login flow cookie.
    pub iv: [u8; 12],
    /// A new double-submit CSRF token.
    pub csrf: [u8; 32],
    /// The PKCE code verifier of a login (its base64url, 43 characters).
    pub verifier: [u8; 32],
    /// The `state` of a login.
    pub state: [u8; 32],
    /// The `nonce` of a login.
    pub nonce: [u8; 32],
}

impl Random {
    /// Every byte `b`, for tests.
    pub fn fixed(b: u8) -> Random {
        Random {
            iv: [b; 12],
            csrf: [b; 32],
            verifier: [b; 32],
            state: [b; 32],
            nonce: [b; 32],
        }
    }

    /// Fills every field with `fill` (e.g. `|b| getrandom::fill(b).is_ok()`); `None` when it
    /// fails for any of them.
    pub fn draw(mut fill: impl FnMut(&mut [u8]) -> bool) -> Option<Random> {
        let mut r = Random::fixed(0);
        let ok = fill(&mut r.iv)
            && fill(&mut r.csrf)
            && fill(&mut r.verifier)
            && fill(&mut r.state)
            && fill(&mut r.nonce);
        ok.then_some(r)
    }
}

impl fmt::Debug for Random {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Random([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draw_fills_every_field_or_fails() {
        let mut n = 0u8;
        let r = Random::draw(|b| {
            n += 1;
            b.fill(n);
            true
        })
        .unwrap();
        assert_eq!(
            (r.iv[0], r.csrf[0], r.verifier[0], r.state[0], r.nonce[0]),
            (1, 2, 3, 4, 5)
        );
        let mut calls = 0;
        assert!(Random::draw(|_| {
            calls += 1;
            calls < 3
        })
        .is_none());
        assert_eq!(format!("{r:?}"), "Random([redacted])");
    }
}
