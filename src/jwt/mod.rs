//! Tokens: the key set (JWKS), JWS verification and claim checks, the per-VM cache of verified
//! tokens, and the one way the rest of the relay gets a token checked: [`Verifier`].

pub mod jwks;
mod montgomery;
mod rs256;
pub mod token;
pub mod token_cache;

use std::fmt;
use std::rc::Rc;

use jwks::KeySet;
use token::{ClaimRules, HeaderNames, TokenError};
use token_cache::{Cached, TokenCache};

/// A verified access token: its forwarded claims and its `exp`. Its `Debug` leaves the claim
/// values out.
#[derive(Clone)]
pub struct Valid {
    pub forwarded: Rc<[(String, String)]>,
    pub exp: u64,
    /// Found in the verified-token cache (no signature check ran); reported per request.
    pub(crate) cached: bool,
}

impl fmt::Debug for Valid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Valid")
            .field("forwarded", &HeaderNames(&self.forwarded))
            .field("exp", &self.exp)
            .field("cached", &self.cached)
            .finish()
    }
}

/// Why [`Verifier::verify`] did not verify a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyError {
    /// Not in the cache, and no key set has been loaded yet.
    KeysNotReady,
    /// The token itself failed (including an unknown `kid`).
    Token(TokenError),
}

/// The key set and this VM's cache of verified tokens: the one way the rest of the relay gets
/// a token checked.
pub struct Verifier<'v> {
    pub keys: Option<&'v KeySet>,
    pub cache: &'v mut TokenCache,
}

impl Verifier<'_> {
    /// The token from the cache when it was verified before and is still alive, else verified
    /// against the keys and cached.
    pub fn verify(
        &mut self,
        rules: &ClaimRules,
        token: &str,
        now: u64,
    ) -> Result<Valid, VerifyError> {
        if let Some(hit) = self.cache.get(token, now) {
            return Ok(Valid {
                forwarded: Rc::clone(&hit.forwarded),
                exp: hit.exp,
                cached: true,
            });
        }
        let keys = self.keys.ok_or(VerifyError::KeysNotReady)?;
        let v = token::verify(token, keys, rules, now).map_err(VerifyError::Token)?;
        let forwarded: Rc<[(String, String)]> = v.forwarded.into();
        self.cache.insert(
            token,
            Cached {
                valid_until: v.exp.saturating_add(rules.clock_skew_s),
                exp: v.exp,
                forwarded: Rc::clone(&forwarded),
            },
            now,
        );
        Ok(Valid {
            forwarded,
            exp: v.exp,
            cached: false,
        })
    }
}
