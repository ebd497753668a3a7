//! The per-request decision: `decide(config, keys, cache, request, now) -> Step`.
//!
//! Pure: no host calls, time is a parameter. The shell in `filter/` reads the request, calls
//! this, and carries out the `Step`.

use std::rc::Rc;

use crate::config::Config;
use crate::cookie;
use crate::jwks::KeySet;
use crate::reply::Reply;
use crate::token::{self, TokenError};
use crate::token_cache::{Cached, TokenCache};

/// What the filter needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub path: &'a str,
    /// The raw Cookie header, if any (bytes: a client may send anything).
    pub cookie: Option<&'a [u8]>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Step<'a> {
    /// Not protected: leave the request untouched.
    Pass,
    /// Verified: rewrite the request and send it on.
    Forward(Forward<'a>),
    /// Answer here; nothing reaches the upstream.
    Respond(Reply),
    /// The token names a key id the key set lacks: refetch the JWKS (rate-limited) and decide
    /// again, or answer with [`unknown_kid_reply`] when a refetch is not allowed.
    UnknownKid,
}

/// Request mutations for a verified token.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward<'a> {
    /// Value for `authorization` (replaces anything the client sent).
    pub authorization: String,
    /// New Cookie header without the relay's cookies; `None` removes the header.
    pub cookie: Option<String>,
    /// The configured forward-claim headers and the claim each takes.
    headers: &'a [(String, String)],
    /// The token's forwarded values, by header name.
    values: Rc<[(String, String)]>,
}

impl Forward<'_> {
    /// Every configured forward-claim header: its value, or `None` to remove a client copy.
    pub fn claim_headers(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.headers.iter().map(|(header, _)| {
            let value = self
                .values
                .iter()
                .find(|(h, _)| h == header)
                .map(|(_, v)| v.as_str());
            (header.as_str(), value)
        })
    }
}

/// Decides what happens to one request.
pub fn decide<'a>(
    config: &'a Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    req: &RequestView<'_>,
    now: u64,
) -> Step<'a> {
    if !config.paths.is_protected(req.path) {
        return Step::Pass;
    }
    let cookie_header = match req.cookie.map(std::str::from_utf8) {
        None => "",
        Some(Ok(h)) => h,
        Some(Err(_)) => {
            return Step::Respond(Reply::bad_request(
                "cookie_not_utf8",
                "the Cookie header is not valid UTF-8",
            ))
        }
    };
    let names = &config.cookies;
    let scan = cookie::scan(
        cookie_header,
        [
            names.access_token.as_str(),
            names.session.as_str(),
            names.csrf.as_str(),
        ],
    );
    let token = match scan.values.first().copied().flatten() {
        Some(t) if !t.is_empty() => t,
        _ => return Step::Respond(Reply::missing_token()),
    };

    let values = match cache.get(token, now) {
        Some(hit) => Rc::clone(&hit.forwarded),
        None => {
            let Some(keys) = keys else {
                return Step::Respond(Reply::unavailable(
                    "jwks_not_ready",
                    "signing keys are not loaded yet",
                    1,
                ));
            };
            match token::verify(token, keys, &config.rules, now) {
                Ok(v) => {
                    let forwarded: Rc<[(String, String)]> = v.forwarded.into();
                    let entry = Cached {
                        valid_until: v.exp.saturating_add(config.rules.clock_skew_s),
                        forwarded: Rc::clone(&forwarded),
                    };
                    cache.insert(token, entry, now);
                    forwarded
                }
                Err(TokenError::UnknownKid) => return Step::UnknownKid,
                Err(e) => return Step::Respond(Reply::invalid_token(e.code(), &e.to_string())),
            }
        }
    };
    let mut authorization = String::with_capacity(7 + token.len());
    authorization.push_str("Bearer ");
    authorization.push_str(token);
    Step::Forward(Forward {
        authorization,
        cookie: scan.remainder(),
        headers: &config.rules.forward_claims,
        values,
    })
}

/// The answer when a token's key id is unknown even after a refetch (or none was allowed).
pub fn unknown_kid_reply() -> Reply {
    let e = TokenError::UnknownKid;
    Reply::invalid_token(e.code(), &e.to_string())
}
