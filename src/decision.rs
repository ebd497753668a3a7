//! The per-request decision: `decide(config, keys, cache, request, now) -> Step`.
//!
//! Pure: no host calls, time and randomness are parameters. The shell in `filter/` reads the
//! request, calls this, and carries out the `Step`. A refresh is decided in two halves: `decide`
//! says a session needs one (`Step::Refresh`), the shell obtains the outcome (its own call to
//! the token endpoint, or one another request or worker made), and `complete_refresh` turns
//! that outcome into the request's mutations and the cookies for the browser.

use std::rc::Rc;

use crate::config::{Config, RefreshConfig};
use crate::cookie;
use crate::jwks::KeySet;
use crate::refresh::{RefreshId, Tokens};
use crate::reply::Reply;
use crate::session::{self, Session};
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
    /// again with `allow_kid_refetch = false`.
    UnknownKid,
    /// The access token is missing, invalid or about to expire, and the session is valid.
    Refresh(RefreshNeed<'a>),
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

/// A session that needs a refresh.
#[derive(Debug)]
pub struct RefreshNeed<'a> {
    pub id: RefreshId,
    pub session: Session,
    /// Sealed with a key other than the current one: reseal even if the IdP does not rotate.
    pub needs_reseal: bool,
    /// The request with its still-valid access token (refresh inside the margin): used when
    /// the refresh fails, so an IdP fault never refuses a request that would have passed.
    pub fallback: Option<Forward<'a>>,
}

/// What became of a refresh, as the shell learned it.
#[derive(Debug, Clone, Copy)]
pub enum RefreshOutcome<'t> {
    Tokens(&'t Tokens),
    /// `invalid_grant`: the session is over.
    Invalid,
    /// The token endpoint failed; retry after this many seconds.
    Unavailable {
        retry_after_s: u64,
    },
}

/// A request's fate after a refresh, and the cookies for the browser's response.
#[derive(Debug)]
pub struct Completed<'a> {
    pub step: Step<'a>,
    /// Set-Cookie values to add to the response (already in the reply when `step` responds).
    pub set_cookies: Vec<String>,
}

/// A verified access token: its forwarded claims and its `exp`.
type Valid = (Rc<[(String, String)]>, u64);

/// Decides what happens to one request.
pub fn decide<'a>(
    config: &'a Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    req: &RequestView<'_>,
    now: u64,
    allow_kid_refetch: bool,
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
        &names.session,
    );
    let token = scan
        .values
        .first()
        .copied()
        .flatten()
        .filter(|t| !t.is_empty());

    // The access token, if it verifies: its forwarded claims and exp.
    let verified: Result<Valid, Reply> = match token {
        None => Err(Reply::missing_token()),
        Some(token) => match cache.get(token, now) {
            Some(hit) => Ok((Rc::clone(&hit.forwarded), hit.exp)),
            None => match keys {
                None => return Step::Respond(keys_not_ready()),
                Some(keys) => match token::verify(token, keys, &config.rules, now) {
                    Ok(v) => {
                        let forwarded: Rc<[(String, String)]> = v.forwarded.into();
                        cache.insert(
                            token,
                            Cached {
                                valid_until: v.exp.saturating_add(config.rules.clock_skew_s),
                                exp: v.exp,
                                forwarded: Rc::clone(&forwarded),
                            },
                            now,
                        );
                        Ok((forwarded, v.exp))
                    }
                    Err(TokenError::UnknownKid) if allow_kid_refetch => return Step::UnknownKid,
                    Err(e) => Err(Reply::invalid_token(e.code(), &e.to_string())),
                },
            },
        },
    };

    let forward_current = |values: Rc<[(String, String)]>| {
        token.map(|t| forward(config, t, scan.remainder(), values))
    };
    let Some(refresh) = &config.refresh else {
        return match verified {
            Ok((values, _)) => forward_current(values)
                .map_or_else(|| Step::Respond(Reply::missing_token()), Step::Forward),
            Err(reply) => Step::Respond(reply),
        };
    };
    // Hot path: a token that is not about to expire never touches the session.
    if let Ok((values, exp)) = &verified {
        if now.saturating_add(refresh.margin_s) < *exp {
            if let Some(f) = forward_current(Rc::clone(values)) {
                return Step::Forward(f);
            }
        }
    }
    let fallback = verified
        .as_ref()
        .ok()
        .and_then(|(values, _)| forward_current(Rc::clone(values)));
    let Some(sealed) = session::read_chunked(cookie_header, &names.session) else {
        return match (fallback, verified) {
            (Some(f), _) => Step::Forward(f),
            (None, Err(reply)) => Step::Respond(reply),
            (None, Ok(_)) => Step::Respond(Reply::missing_token()),
        };
    };
    match session::unseal(&refresh.session_keys, &sealed, now) {
        Ok(unsealed) => Step::Refresh(RefreshNeed {
            id: RefreshId::of(&unsealed.session.rt),
            session: unsealed.session,
            needs_reseal: unsealed.needs_reseal,
            fallback,
        }),
        // A valid access token still passes; the broken session shows when it expires.
        Err(_) if fallback.is_some() => fallback.map_or(Step::Pass, Step::Forward),
        Err(e) => {
            let mut reply = Reply::invalid_token(
                "session_invalid",
                &format!("the session cookie is not valid ({})", e.code()),
            );
            reply.reason = "session_invalid";
            add_cookies(&mut reply, clear_relay_cookies(config, cookie_header));
            Step::Respond(reply)
        }
    }
}

/// Turns a refresh outcome into the request's fate and the browser's cookies.
#[allow(clippy::too_many_arguments)]
pub fn complete_refresh<'a>(
    config: &'a Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    req: &RequestView<'_>,
    need: RefreshNeed<'a>,
    outcome: RefreshOutcome<'_>,
    now: u64,
    iv: [u8; 12],
) -> Completed<'a> {
    let cookie_header = req
        .cookie
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
            add_cookies(&mut reply, clear_relay_cookies(config, cookie_header));
            return Completed {
                step: Step::Respond(reply),
                set_cookies: Vec::new(),
            };
        }
        RefreshOutcome::Unavailable { retry_after_s } => {
            let step = match need.fallback {
                Some(f) => Step::Forward(f),
                None => Step::Respond(Reply::unavailable(
                    "refresh_unavailable",
                    "the identity provider is unavailable; retry shortly",
                    retry_after_s.max(1),
                )),
            };
            return Completed {
                step,
                set_cookies: Vec::new(),
            };
        }
    };

    // The session as the browser should hold it from now on.
    let mut set_cookies = Vec::new();
    if tokens.refresh_token.is_some() || need.needs_reseal {
        let session = Session {
            rt: tokens
                .refresh_token
                .clone()
                .unwrap_or_else(|| need.session.rt.clone()),
            exp: need.session.exp,
            id_token: tokens.id_token.clone().or(need.session.id_token.clone()),
        };
        set_cookies.extend(session_cookies(
            config,
            refresh,
            cookie_header,
            &session,
            now,
            iv,
        ));
    }

    let at = tokens.access_token.as_str();
    let verified = match cache.get(at, now) {
        Some(hit) => Ok((Rc::clone(&hit.forwarded), hit.exp)),
        None => match keys {
            None => Err(TokenError::UnknownKid),
            Some(keys) => token::verify(at, keys, &config.rules, now).map(|v| {
                let forwarded: Rc<[(String, String)]> = v.forwarded.into();
                cache.insert(
                    at,
                    Cached {
                        valid_until: v.exp.saturating_add(config.rules.clock_skew_s),
                        exp: v.exp,
                        forwarded: Rc::clone(&forwarded),
                    },
                    now,
                );
                (forwarded, v.exp)
            }),
        },
    };
    match verified {
        Ok((values, exp)) => {
            set_cookies.push(access_token_cookie(config, at, exp, now));
            let remainder = cookie::scan(
                cookie_header,
                [
                    config.cookies.access_token.as_str(),
                    config.cookies.session.as_str(),
                    config.cookies.csrf.as_str(),
                ],
                &config.cookies.session,
            )
            .remainder();
            Completed {
                step: Step::Forward(forward(config, at, remainder, values)),
                set_cookies,
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
            add_cookies(&mut reply, std::mem::take(&mut set_cookies));
            Completed {
                step: Step::Respond(reply),
                set_cookies,
            }
        }
    }
}

fn forward<'a>(
    config: &'a Config,
    token: &str,
    cookie: Option<String>,
    values: Rc<[(String, String)]>,
) -> Forward<'a> {
    let mut authorization = String::with_capacity(7 + token.len());
    authorization.push_str("Bearer ");
    authorization.push_str(token);
    Forward {
        authorization,
        cookie,
        headers: &config.rules.forward_claims,
        values,
    }
}

fn keys_not_ready() -> Reply {
    Reply::unavailable("jwks_not_ready", "signing keys are not loaded yet", 1)
}

fn add_cookies(reply: &mut Reply, cookies: Vec<String>) {
    if cookies.is_empty() {
        return;
    }
    for c in cookies {
        reply.headers.push(("set-cookie", c));
    }
    reply.headers.push(("vary", "Cookie".to_string()));
}

/// Set-Cookie for a new access token; it lives as long as the token.
pub fn access_token_cookie(config: &Config, token: &str, exp: u64, now: u64) -> String {
    let attrs = &config.cookies.attrs;
    cookie::set_cookie(
        &config.cookies.access_token,
        token,
        Some(exp.saturating_sub(now)),
        attrs,
        attrs.same_site,
        true,
    )
}

/// Set-Cookie values that store `session` (chunked when large) and delete stale chunks.
pub fn session_cookies(
    config: &Config,
    refresh: &RefreshConfig,
    cookie_header: &str,
    session: &Session,
    now: u64,
    iv: [u8; 12],
) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let name = &config.cookies.session;
    let sealed = session::seal(&refresh.session_keys, session, iv);
    let max_age = session.exp.map(|exp| exp.saturating_sub(now));
    let written = session::chunk(name, &sealed);
    let mut out: Vec<String> = written
        .iter()
        .map(|(n, v)| cookie::set_cookie(n, v, max_age, attrs, attrs.same_site, true))
        .collect();
    for stale in session::stale_chunks(cookie_header, name, &written) {
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    out
}

/// Set-Cookie values that delete the access token and every piece of the session present.
pub fn clear_relay_cookies(config: &Config, cookie_header: &str) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let mut out = vec![cookie::clear_cookie(&config.cookies.access_token, attrs)];
    let session = &config.cookies.session;
    let mut any_session = false;
    for stale in session::stale_chunks(cookie_header, session, &[]) {
        any_session |= stale == *session;
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    if !any_session {
        out.push(cookie::clear_cookie(session, attrs));
    }
    out
}

/// Cookies for tokens an upstream rotated itself (`upstream_token_headers`): the access token
/// is verified like any other (an unverifiable one is ignored), the session is resealed with
/// the new refresh token, keeping the request's session end and ID token.
#[allow(clippy::too_many_arguments)]
pub fn upstream_rotation(
    config: &Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    cookie_header: &str,
    access_token: Option<&str>,
    refresh_token: Option<&str>,
    now: u64,
    iv: [u8; 12],
) -> Vec<String> {
    let mut out = Vec::new();
    let Some(refresh) = &config.refresh else {
        return out;
    };
    if let (Some(at), Some(keys)) = (access_token.filter(|t| !t.is_empty()), keys) {
        let exp = match cache.get(at, now) {
            Some(hit) => Some(hit.exp),
            None => token::verify(at, keys, &config.rules, now)
                .ok()
                .map(|v| v.exp),
        };
        if let Some(exp) = exp {
            out.push(access_token_cookie(config, at, exp, now));
        }
    }
    if let Some(rt) = refresh_token.filter(|t| !t.is_empty()) {
        let previous = session::read_chunked(cookie_header, &config.cookies.session)
            .and_then(|s| session::unseal(&refresh.session_keys, &s, now).ok());
        let session = Session {
            rt: rt.to_string(),
            exp: previous.as_ref().and_then(|p| p.session.exp),
            id_token: previous.and_then(|p| p.session.id_token),
        };
        out.extend(session_cookies(
            config,
            refresh,
            cookie_header,
            &session,
            now,
            iv,
        ));
    }
    out
}

/// The answer when a token's key id is unknown even after a refetch (or none was allowed).
pub fn unknown_kid_reply() -> Reply {
    let e = TokenError::UnknownKid;
    Reply::invalid_token(e.code(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwksSource;
    use crate::testkit::{self, claims, sign, NOW};
    use serde_json::json;

    fn keys(c: &Config) -> &KeySet {
        match &c.jwks {
            JwksSource::Inline(k) => k,
            JwksSource::Remote { .. } => panic!("inline keys expected"),
        }
    }

    type Forwarded = (String, Option<String>, Vec<(String, Option<String>)>);

    fn run(path: &str, cookie: Option<&str>, now: u64) -> (Option<Reply>, Option<Forwarded>) {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(16);
        let req = RequestView {
            path,
            cookie: cookie.map(str::as_bytes),
        };
        match decide(&c, Some(keys(&c)), &mut cache, &req, now, true) {
            Step::Pass => (None, None),
            Step::Respond(r) => (Some(r), None),
            Step::Forward(f) => {
                let claims = f
                    .claim_headers()
                    .map(|(h, v)| (h.to_string(), v.map(str::to_string)))
                    .collect();
                (None, Some((f.authorization, f.cookie, claims)))
            }
            Step::UnknownKid | Step::Refresh(_) => panic!("unexpected step"),
        }
    }

    fn status(path: &str, cookie: Option<&str>) -> Option<u32> {
        run(path, cookie, NOW).0.map(|r| r.status)
    }

    #[test]
    fn valid_token_is_forwarded_with_relay_cookies_stripped() {
        let t = sign(&claims());
        let cookie = format!("a=1; __Host-relay-at={t}; __Host-relay-session=s; b=2");
        let (reply, fwd) = run("/api/me", Some(&cookie), NOW);
        assert!(reply.is_none());
        let (auth, cookie, claims) = fwd.unwrap();
        assert_eq!(auth, format!("Bearer {t}"));
        assert_eq!(cookie.as_deref(), Some("a=1; b=2"));
        assert_eq!(
            claims,
            vec![("x-user-sub".to_string(), Some("alice".to_string()))]
        );
    }

    #[test]
    fn only_relay_cookies_removes_header_and_missing_claim_removes_client_copy() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        let t = sign(&c);
        let (_, fwd) = run("/api/me", Some(&format!("__Host-relay-at={t}")), NOW);
        let (_, cookie, claims) = fwd.unwrap();
        assert_eq!(cookie, None);
        assert_eq!(claims, vec![("x-user-sub".to_string(), None)]);
    }

    #[test]
    fn unprotected_and_public_paths_pass() {
        for p in ["/", "/static/x.js", "/api", "/api/public/health"] {
            assert!(matches!(run(p, None, NOW), (None, None)), "{p}");
        }
    }

    #[test]
    fn refusals_with_frozen_time() {
        let t = sign(&claims());
        let at = |t: &str| format!("__Host-relay-at={t}");
        assert_eq!(status("/api/me", None), Some(401));
        assert_eq!(status("/api/me", Some("a=1")), Some(401));
        assert_eq!(status("/api/me", Some("__Host-relay-at=")), Some(401));
        assert_eq!(
            status("/api/me", Some("__Host-relay-at=garbage")),
            Some(401)
        );
        // exp = NOW + 300, skew 30: valid until NOW + 330 (exclusive).
        assert!(run("/api/me", Some(&at(&t)), NOW + 329).0.is_none());
        assert_eq!(
            run("/api/me", Some(&at(&t)), NOW + 330).0.map(|r| r.status),
            Some(401)
        );
        let wrong_use = sign(
            &json!({"iss": testkit::ISS, "aud": testkit::AUD, "token_use": "id", "exp": NOW + 300}),
        );
        assert_eq!(status("/api/me", Some(&at(&wrong_use))), Some(401));
    }

    #[test]
    fn reply_shapes() {
        let (r, _) = run("/api/me", None, NOW);
        let r = r.unwrap();
        assert_eq!(r.reason, "missing_token");
        assert!(r
            .headers
            .contains(&("www-authenticate", "Bearer".to_string())));
        let (r, _) = run("/api/me", Some("__Host-relay-at=x.y.z"), NOW);
        let r = r.unwrap();
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "www-authenticate" && v.contains("invalid_token")));
        assert!(r
            .headers
            .contains(&("cache-control", "no-store".to_string())));
    }

    #[test]
    fn non_utf8_cookie_is_400() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let req = RequestView {
            path: "/api/x",
            cookie: Some(b"a=\xff\xfe"),
        };
        match decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true) {
            Step::Respond(r) => assert_eq!(r.status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_keys_yet_is_503_and_unknown_kid_is_signalled() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let cookie = format!("__Host-relay-at={t}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        match decide(&c, None, &mut cache, &req, NOW, true) {
            Step::Respond(r) => {
                assert_eq!(r.status, 503);
                assert!(r.headers.iter().any(|(n, _)| *n == "retry-after"));
            }
            other => panic!("{other:?}"),
        }
        let other_kid = testkit::sign_with_kid(&claims(), "rotated");
        let cookie = format!("__Host-relay-at={other_kid}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true),
            Step::UnknownKid
        ));
    }

    #[test]
    fn cache_hit_needs_no_keys_and_expires_with_token() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let cookie = format!("__Host-relay-at={t}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true),
            Step::Forward(_)
        ));
        assert_eq!(cache.len(), 1);
        // Second time: served from the cache even without keys.
        assert!(matches!(
            decide(&c, None, &mut cache, &req, NOW + 10, true),
            Step::Forward(_)
        ));
        // Past exp + skew the entry is dead; verification (no keys → 503) is needed again.
        assert!(
            matches!(decide(&c, None, &mut cache, &req, NOW + 330, true), Step::Respond(r) if r.status == 503)
        );
    }
}
