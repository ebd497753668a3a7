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

/// A verified access token: its `Authorization` value, its forwarded claims and its `exp`. Its
/// `Debug` leaves the token and the claim values out.
#[derive(Clone)]
pub struct Valid {
    /// `Bearer <token>`, shared with the cache entry (a hit copies nothing).
    pub bearer: Rc<str>,
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
        token: &[u8],
        now: u64,
    ) -> Result<Valid, VerifyError> {
        if let Some((hit, bearer)) = self.cache.get(token, now) {
            return Ok(Valid {
                bearer: Rc::clone(bearer),
                forwarded: Rc::clone(&hit.forwarded),
                exp: hit.exp,
                cached: true,
            });
        }
        let keys = self.keys.ok_or(VerifyError::KeysNotReady)?;
        // A token is base64url and dots: bytes that are not UTF-8 are no token.
        let token =
            std::str::from_utf8(token).map_err(|_| VerifyError::Token(TokenError::Malformed))?;
        let v = token::verify(token, keys, rules, now).map_err(VerifyError::Token)?;
        let forwarded: Rc<[(String, String)]> = v.forwarded.into();
        let bearer = self.cache.insert(
            token,
            Cached {
                valid_until: v.exp.saturating_add(rules.clock_skew_s),
                exp: v.exp,
                forwarded: Rc::clone(&forwarded),
            },
            now,
        );
        Ok(Valid {
            bearer,
            forwarded,
            exp: v.exp,
            cached: false,
        })
    }
}
