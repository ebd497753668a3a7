//! The second half of a refresh: turning its outcome into the request's fate and the browser's
//! cookies; and the tokens an upstream rotated itself.

use super::decide::{forward, over_budget, within_budget, RefreshNeed, Step, Via};
use super::flight::RefreshOutcome;
use crate::config::{Config, RefreshConfig};
use crate::http::{cookie, Reply, RequestView};
use crate::idp::Tokens;
use crate::jar;
use crate::jwt::token::TokenError;
use crate::jwt::{Verifier, VerifyError};
use crate::random::Random;
use crate::session::{self, Session};

/// A request's fate after a refresh, and the cookies for the browser's response.
#[derive(Debug)]
pub struct Completed<'a> {
    pub step: Step<'a>,
    /// Set-Cookie values to add to the response (already in the reply when `step` responds).
    pub set_cookies: Vec<String>,
}

/// Turns a refresh outcome into the request's fate and the browser's cookies.
pub fn complete_refresh<'a>(
    config: &'a Config,
    mut verifier: Verifier<'_>,
    req: &RequestView<'_>,
    need: RefreshNeed<'a>,
    outcome: &RefreshOutcome,
    now: u64,
    rand: &Random,
) -> Completed<'a> {
    let cookie_bytes = req.cookie();
    let cookie_header = cookie_bytes
        .as_deref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("");
    let Some(refresh) = &config.refresh else {
        return Completed {
            step: Step::Respond(Reply::missing_token()),
            set_cookies: Vec::new(),
        };
    };
    let tokens = match outcome {
        RefreshOutcome::Tokens(t) => t,
        RefreshOutcome::Invalid => {
            let mut reply =
                Reply::invalid_token("session_revoked", "the session has ended; log in again");
            reply.reason = "session_revoked";
            jar::add_cookies(&mut reply, jar::clear_relay_cookies(config, cookie_header));
            return Completed {
                step: Step::Respond(reply),
                set_cookies: Vec::new(),
            };
        }
        RefreshOutcome::Failed { retry_at } => {
            let step = match need.fallback {
                Some(f) => within_budget(config, req, f),
                None => Step::Respond(Reply::unavailable(
                    "refresh_unavailable",
                    "the identity provider is unavailable; retry shortly",
                    retry_at.saturating_sub(now).max(1),
                )),
            };
            return Completed {
                step,
                set_cookies: Vec::new(),
            };
        }
    };
    let mut set_cookies = session_after(config, refresh, &need, tokens, cookie_header, now, rand);
    let at = tokens.access_token.as_str();
    let verified = verifier
        .verify(&config.rules, at.as_bytes(), now)
        .map_err(|e| match e {
            VerifyError::KeysNotReady => TokenError::UnknownKid,
            VerifyError::Token(e) => e,
        });
    match verified {
        Ok(v) => {
            set_cookies.extend(jar::access_token_cookies(
                config,
                cookie_header,
                at,
                v.exp,
                now,
            ));
            let remainder = jar::scan(config, cookie_header.as_bytes()).remainder();
            let f = forward(config, v.bearer, remainder, v.forwarded, Via::Refreshed);
            match over_budget(config, req, &f) {
                Some(mut reply) => {
                    // Still hand the browser its rotated session: the refresh token is spent.
                    jar::add_cookies(&mut reply, std::mem::take(&mut set_cookies));
                    Completed {
                        step: Step::Respond(reply),
                        set_cookies,
                    }
                }
                None => Completed {
                    step: Step::Forward(f),
                    set_cookies,
                },
            }
        }
        Err(e) => {
            // The IdP handed out a token our own rules refuse: a configuration mismatch (issuer,
            // audience, algorithm) or a signing key not fetched yet. Keep the (rotated) session.
            let mut reply = Reply::unavailable(
                "refreshed_token_rejected",
                &format!("the refreshed access token was refused ({})", e.code()),
                1,
            );
            jar::add_cookies(&mut reply, std::mem::take(&mut set_cookies));
            Completed {
                step: Step::Respond(reply),
                set_cookies,
            }
        }
    }
}

/// The session cookies the browser should hold from now on: resealed when the IdP rotated the
/// refresh token (or when the session was sealed with a retired key), else none.
fn session_after(
    config: &Config,
    refresh: &RefreshConfig,
    need: &RefreshNeed<'_>,
    tokens: &Tokens,
    cookie_header: &str,
    now: u64,
    rand: &Random,
) -> Vec<String> {
    if tokens.refresh_token.is_none() && !need.needs_reseal {
        return Vec::new();
    }
    let session = Session {
        rt: tokens
            .refresh_token
            .clone()
            .unwrap_or_else(|| need.session.rt.clone()),
        exp: need.session.exp,
        id_token: tokens.id_token.clone().or(need.session.id_token.clone()),
    };
    jar::session_cookies(config, refresh, cookie_header, &session, now, rand)
}

/// Cookies for tokens an upstream rotated itself (`upstream_token_headers`): the access token
/// is verified like any other (an unverifiable one is ignored), the session is resealed with
/// the new refresh token, keeping the request's session end and ID token.
pub fn upstream_rotation(
    config: &Config,
    mut verifier: Verifier<'_>,
    cookie_header: &str,
    access_token: Option<&str>,
    refresh_token: Option<&str>,
    now: u64,
    rand: &Random,
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(refresh) = &config.refresh else {
        return out;
    };
    if let Some(at) = access_token.filter(|t| !t.is_empty()) {
        if let Ok(v) = verifier.verify(&config.rules, at.as_bytes(), now) {
            out.extend(jar::access_token_cookies(
                config,
                cookie_header,
                at,
                v.exp,
                now,
            ));
        }
    }
    if let Some(rt) = refresh_token.filter(|t| !t.is_empty()) {
        let previous = cookie::read_chunked(cookie_header, &config.cookies.session)
            .and_then(|s| session::unseal(&refresh.session_keys, &s, now).ok());
        let session = Session {
            rt: rt.to_string(),
            exp: previous.as_ref().and_then(|p| p.session.exp),
            id_token: previous.and_then(|p| p.session.id_token),
        };
        out.extend(jar::session_cookies(
            config,
            refresh,
            cookie_header,
            &session,
            now,
            rand,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::token_cache::TokenCache;
    use crate::testkit::{claims, inline_keys, refresh_config, sign, NOW};
    use serde_json::json;

    #[test]
    fn upstream_rotation_caches_the_token_it_verified() {
        let c = refresh_config(json!({
            "upstream_token_headers": {"access_token": "x-new-at", "refresh_token": "x-new-rt"}
        }));
        let mut cache = TokenCache::new(8);
        let at = sign(&claims());
        let verifier = Verifier {
            keys: Some(inline_keys(&c)),
            cache: &mut cache,
        };
        let cookies = upstream_rotation(
            &c,
            verifier,
            "",
            Some(&at),
            Some("rt-2"),
            NOW,
            &Random::fixed(1),
        );
        assert!(cookies.iter().any(|c| c.starts_with("__Host-relay-at=")));
        assert!(cookies
            .iter()
            .any(|c| c.starts_with("__Host-relay-session=")));
        // The next request with this token is a cache hit, like after any other verification.
        assert!(cache.get(at.as_bytes(), NOW).is_some());
        // An unverifiable token gives no cookie and is not cached.
        let verifier = Verifier {
            keys: Some(inline_keys(&c)),
            cache: &mut cache,
        };
        let cookies = upstream_rotation(
            &c,
            verifier,
            "",
            Some("not.a.jwt"),
            None,
            NOW,
            &Random::fixed(1),
        );
        assert!(cookies.is_empty());
        assert!(cache.get(b"not.a.jwt", NOW).is_none());
    }
}
