//! The per-request decision: `decide(config, keys, cache, request, now) -> Step`.
//!
//! Pure: no host calls, time and randomness are parameters. The shell in `filter/` reads the
//! request, calls this, and carries out the `Step`. A refresh is decided in two halves: `decide`
//! says a session needs one (`Step::Refresh`), the shell obtains the outcome (its own call to
//! the token endpoint, or one another request or worker made), and `complete_refresh` turns
//! that outcome into the request's mutations and the cookies for the browser.

use std::fmt;
use std::rc::Rc;

use super::flight::RefreshId;
use crate::bytes;
use crate::config::Config;
use crate::csrf;
use crate::http::{cookie, header_budget, Reply, RequestView};
use crate::jar;
use crate::jwt::jwks::KeySet;
use crate::jwt::token::{HeaderNames, TokenError};
use crate::jwt::token_cache::TokenCache;
use crate::jwt::{Valid, Verifier, VerifyError};
use crate::session::{self, Session};

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

/// Request mutations for a verified token. Its `Debug` shows sizes and header names only: the
/// `Authorization` value is the access token, and the Cookie header may hold others.
#[derive(PartialEq, Eq)]
pub struct Forward<'a> {
    /// Value for `authorization` (replaces anything the client sent): `Bearer <token>`, shared
    /// with the verified-token cache.
    pub authorization: Rc<str>,
    /// New Cookie header without the relay's cookies; `None` removes the header.
    pub cookie: Option<String>,
    /// The configured forward-claim headers and the claim each takes.
    headers: &'a [(String, String)],
    /// The token's forwarded values, by header name.
    values: Rc<[(String, String)]>,
    /// How the token came to be trusted (the request's reason in filter state).
    pub(crate) via: Via,
}

/// How a forwarded request's token came to be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Via {
    /// Its signature was verified for this request (a token-cache miss).
    Verified,
    /// Found in the verified-token cache.
    Cached,
    /// Issued by a silent refresh for this request.
    Refreshed,
}

impl Via {
    /// The stable reason code an access log prints for a forwarded request.
    pub(crate) fn code(self) -> &'static str {
        match self {
            Via::Verified => "forwarded",
            Via::Cached => "cache_hit",
            Via::Refreshed => "refreshed",
        }
    }

    pub(crate) fn of(v: &Valid) -> Via {
        if v.cached {
            Via::Cached
        } else {
            Via::Verified
        }
    }
}

impl fmt::Debug for Forward<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forward")
            .field("authorization_bytes", &self.authorization.len())
            .field("cookie_bytes", &self.cookie.as_ref().map(String::len))
            .field("claim_headers", &HeaderNames(self.headers))
            .field("via", &self.via)
            .finish()
    }
}

impl Forward<'_> {
    /// Every configured forward-claim header: its value, or `None` to remove a client copy.
    pub fn claim_headers(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.headers.iter().map(|(header, _)| {
            let value = self
                .values
                .iter()
                .find(|(h, _)| bytes::same(h.as_bytes(), header.as_bytes()))
                .map(|(_, v)| v.as_str());
            (header.as_str(), value)
        })
    }
}

/// Request headers a client sent under a forward-claim header's name, or under its underscore
/// spelling (`x_user_sub` for `x-user-sub`: CGI, WSGI, PHP and Rack read both as one header).
/// The shell removes them from every request it sees, protected or not, before setting any:
/// only the relay may speak for a verified claim.
/// (Empty, so without allocation, on every ordinary request.)
pub fn forged_claim_headers<'r>(config: &Config, req: &RequestView<'r>) -> Vec<&'r str> {
    let claims = &config.rules.forward_claims;
    if !req.names().may_meet(config.claim_header_names) {
        return Vec::new();
    }
    req.iter_bytes()
        .map(|(name, _)| name)
        .filter(|name| {
            claims.iter().any(|(header, _)| {
                header.len() == name.len()
                    && header
                        .bytes()
                        .zip(name.iter())
                        .all(|(h, n)| h.eq_ignore_ascii_case(n) || (h == b'-' && *n == b'_'))
            })
        })
        .filter_map(|name| std::str::from_utf8(name).ok())
        .collect()
}

/// The Cookie header for a request the relay passes (an unprotected or public path): `None`
/// leaves it as it is (no relay cookie in it, or `forward_relay_cookies_to_unprotected`, so
/// ordinary requests cost no header write), `Some(None)` removes it, `Some(Some(rest))` keeps
/// the application's cookies only. The relay's cookies are those a protected request loses
/// (access token, session and their chunks, CSRF cookie, login flow cookies): whatever serves
/// the other paths must not receive a credential the relay holds for the user.
/// A Cookie header that is not UTF-8 is read with its bad bytes replaced; it is rewritten only
/// when it holds a relay cookie.
pub fn passed_cookie(config: &Config, req: &RequestView<'_>) -> Option<Option<String>> {
    if config.forward_relay_cookies_to_unprotected {
        return None;
    }
    let header = req.cookie()?;
    let text = String::from_utf8_lossy(&header);
    if !jar::may_hold_relay_cookie(config, &text) {
        return None;
    }
    let scan = jar::scan(config, text.as_bytes());
    scan.any_found.then(|| scan.remainder())
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

/// Decides what happens to one request.
pub fn decide<'a>(
    config: &'a Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    req: &RequestView<'_>,
    now: u64,
    allow_kid_refetch: bool,
) -> Step<'a> {
    let path = req.path();
    if !config.paths.is_protected(&path) {
        return Step::Pass;
    }
    let cookie_bytes = req.cookie();
    let raw_cookies = cookie_bytes.as_deref().unwrap_or_default();
    // The split goes over the bytes and notes whether all are ASCII, so a cache hit reads the
    // header once: the token goes to the cache as bytes and its `Authorization` value comes back
    // as text. The header as text is made only off that path.
    let scan = jar::scan(config, raw_cookies);
    if !scan.ascii && std::str::from_utf8(raw_cookies).is_err() {
        return Step::Respond(Reply::bad_request(
            "cookie_not_utf8",
            "the Cookie header is not valid UTF-8",
        ));
    }
    let cookie_header = || std::str::from_utf8(raw_cookies).unwrap_or_default();
    let [at_cookie, _, csrf_cookie] = scan.values;
    // An access token too big for one cookie arrives in chunks (`<name>.0`, `<name>.1`, ...).
    let chunked_token = match at_cookie {
        Some(_) => None,
        None => cookie::read_chunked(cookie_header(), &config.cookies.access_token),
    };
    let token = at_cookie
        .or(chunked_token.as_deref().map(str::as_bytes))
        .filter(|t| !t.is_empty());
    let csrf_cookie = csrf_cookie.and_then(|c| std::str::from_utf8(c).ok());

    // A forged cross-site request is refused before any token work.
    if let Err(e) = csrf::check_request(config.csrf.as_ref(), req, csrf_cookie) {
        return Step::Respond(Reply::forbidden_csrf(e.code(), &e.to_string()));
    }

    // The access token, if it verifies: its forwarded claims and exp.
    let verified: Result<Valid, Reply> = match token {
        None => Err(Reply::missing_token()),
        Some(token) => match (Verifier { keys, cache }).verify(&config.rules, token, now) {
            Ok(v) => Ok(v),
            Err(VerifyError::KeysNotReady) => return Step::Respond(keys_not_ready()),
            Err(VerifyError::Token(TokenError::UnknownKid)) if allow_kid_refetch => {
                return Step::UnknownKid
            }
            Err(VerifyError::Token(e)) => Err(Reply::invalid_token(e.code(), &e.to_string())),
        },
    };

    // A verified token carries its own `Authorization` value.
    let forward_current = |v: &Valid| {
        forward(
            config,
            Rc::clone(&v.bearer),
            scan.remainder(),
            Rc::clone(&v.forwarded),
            Via::of(v),
        )
    };
    let checked = |f: Forward<'a>| within_budget(config, req, f);
    let Some(refresh) = &config.refresh else {
        return match verified {
            Ok(v) => checked(forward_current(&v)),
            Err(reply) => Step::Respond(reply),
        };
    };
    // Hot path: a token that is not about to expire never touches the session.
    if let Ok(v) = &verified {
        if now.saturating_add(refresh.margin_s) < v.exp {
            return checked(forward_current(v));
        }
    }
    let fallback = verified.as_ref().ok().map(forward_current);
    let Some(sealed) = cookie::read_chunked(cookie_header(), &config.cookies.session) else {
        return match (fallback, verified) {
            (Some(f), _) => checked(f),
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
        Err(_) if fallback.is_some() => fallback.map_or(Step::Pass, checked),
        Err(e) => {
            let mut reply = Reply::invalid_token(
                "session_invalid",
                &format!("the session cookie is not valid ({})", e.code()),
            );
            reply.reason = "session_invalid";
            jar::add_cookies(
                &mut reply,
                jar::clear_relay_cookies(config, cookie_header()),
            );
            Step::Respond(reply)
        }
    }
}

/// The request mutations that carry a token (its `Authorization` value, `bearer`, and its
/// forwarded claims) upstream.
pub(crate) fn forward<'a>(
    config: &'a Config,
    bearer: Rc<str>,
    cookie: Option<String>,
    values: Rc<[(String, String)]>,
    via: Via,
) -> Forward<'a> {
    Forward {
        authorization: bearer,
        cookie,
        headers: &config.rules.forward_claims,
        values,
        via,
    }
}

/// Forwards `f`, or answers 431 when the request as it would go upstream is too large.
pub(crate) fn within_budget<'a>(
    config: &Config,
    req: &RequestView<'_>,
    f: Forward<'a>,
) -> Step<'a> {
    match over_budget(config, req, &f) {
        Some(reply) => Step::Respond(reply),
        None => Step::Forward(f),
    }
}

/// 431 when the request, as it would go upstream, is over `max_request_headers_bytes`.
pub(crate) fn over_budget(
    config: &Config,
    req: &RequestView<'_>,
    f: &Forward<'_>,
) -> Option<Reply> {
    let budget = config.max_request_headers_bytes;
    if budget == 0 {
        return None;
    }
    let replaced = |name: &[u8]| {
        bytes::same(name, b"authorization")
            || bytes::same(name, b"cookie")
            || config
                .rules
                .forward_claims
                .iter()
                .any(|(h, _)| bytes::same(h.as_bytes(), name))
    };
    // The filter's own headers, and the headers as they would go upstream: the client's,
    // minus those the filter replaces, plus the filter's own.
    let own = || {
        std::iter::once(("authorization", f.authorization.as_bytes()))
            .chain(f.cookie.as_deref().map(|c| ("cookie", c.as_bytes())))
            .chain(
                f.claim_headers()
                    .filter_map(|(name, value)| value.map(|v| (name, v.as_bytes()))),
            )
    };
    let upstream = || {
        req.iter()
            .filter(|(n, _)| !replaced(n.as_bytes()))
            .chain(own())
    };
    let own_total = header_budget::total_of(own());
    // Hot path: the request fits, which a bound of its size shows without reading a header.
    if req.size_bound().saturating_add(own_total) <= budget {
        return None;
    }
    // Near the budget: the total alone (no list built, no name decoded).
    let client = req
        .iter_bytes()
        .filter(|(n, _)| !replaced(n))
        .fold(0usize, |acc, (n, v)| {
            acc.saturating_add(header_budget::size_of(n.len(), v.len()))
        });
    if client.saturating_add(own_total) <= budget {
        return None;
    }
    let headers: Vec<(&str, &[u8])> = upstream().collect();
    let offender = header_budget::over_budget(&headers, budget)?;
    Some(Reply::headers_too_large(
        &offender.to_string(),
        offender.cookie.unwrap_or(offender.header),
        offender.bytes,
    ))
}

pub(crate) fn keys_not_ready() -> Reply {
    Reply::unavailable("jwks_not_ready", "signing keys are not loaded yet", 1)
}

/// The answer when a token's key id is unknown even after a refetch (or none was allowed).
pub fn unknown_kid_reply() -> Reply {
    let e = TokenError::UnknownKid;
    Reply::invalid_token(e.code(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::csrf::add_cors;
    use crate::idp::Tokens;
    use crate::jar::{access_token_cookies, clear_relay_cookies};
    use crate::jwt::Verifier;
    use crate::random::Random;
    use crate::relay::complete::complete_refresh;
    use crate::relay::flight::RefreshOutcome;
    use crate::testkit::{
        self, claims, inline_keys as keys, refresh_config, request, sealed, sign, NOW,
    };
    use serde_json::json;

    type Forwarded = (String, Option<String>, Vec<(String, Option<String>)>);

    fn run_with(
        c: &Config,
        headers: &[(String, Vec<u8>)],
        now: u64,
    ) -> (Option<Reply>, Option<Forwarded>) {
        let mut cache = TokenCache::new(16);
        let req = RequestView::new(headers);
        match decide(c, Some(keys(c)), &mut cache, &req, now, true) {
            Step::Pass => (None, None),
            Step::Respond(r) => (Some(r), None),
            Step::Forward(f) => {
                let claims = f
                    .claim_headers()
                    .map(|(h, v)| (h.to_string(), v.map(str::to_string)))
                    .collect();
                (None, Some((f.authorization.to_string(), f.cookie, claims)))
            }
            Step::UnknownKid | Step::Refresh(_) => panic!("unexpected step"),
        }
    }

    fn run(path: &str, cookie: Option<&str>, now: u64) -> (Option<Reply>, Option<Forwarded>) {
        let c = testkit::config(json!({}));
        run_with(
            &c,
            &request("GET", path, cookie.map(str::as_bytes), &[]),
            now,
        )
    }

    fn status(path: &str, cookie: Option<&str>) -> Option<u32> {
        run(path, cookie, NOW).0.map(|r| r.status)
    }

    #[test]
    fn valid_token_is_forwarded_with_relay_cookies_stripped() {
        let t = sign(&claims());
        let cookie = format!(
            "a=1; __Host-relay-at={t}; __Host-relay-session=s; __Host-relay-session.0=x; b=2"
        );
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
    fn debug_output_never_shows_the_token_or_claim_values() {
        let c = testkit::config(json!({}));
        let t = sign(&claims());
        let cookie = format!("a=1; __Host-relay-at={t}");
        let h = request("GET", "/api/me", Some(cookie.as_bytes()), &[]);
        let mut cache = TokenCache::new(4);
        let req = RequestView::new(&h);
        for _ in 0..2 {
            // A miss, then a hit: the cache holds the token the second time.
            let step = decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true);
            assert!(matches!(step, Step::Forward(_)), "{step:?}");
            for shown in [format!("{step:?}"), format!("{cache:?}")] {
                let signature = t.rsplit('.').next().unwrap();
                assert!(!shown.contains(signature), "{shown}");
                assert!(!shown.contains("alice"), "{shown}");
            }
        }
    }

    #[test]
    fn several_cookie_headers_are_joined() {
        let t = sign(&claims());
        let c = testkit::config(json!({}));
        let mut h = request("GET", "/api/me", Some(b"a=1"), &[]);
        h.push((
            "cookie".to_string(),
            format!("__Host-relay-at={t}").into_bytes(),
        ));
        h.push(("cookie".to_string(), b"b=2".to_vec()));
        let (reply, fwd) = run_with(&c, &h, NOW);
        assert!(reply.is_none(), "{reply:?}");
        assert_eq!(fwd.unwrap().1.as_deref(), Some("a=1; b=2"));
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
        let (r, _) = run_with(&c, &request("GET", "/api/x", Some(b"a=\xff\xfe"), &[]), NOW);
        assert_eq!(r.unwrap().status, 400);
        // Before the CSRF check: a cross-site POST with such a header is a 400, not a 403.
        let t = sign(&claims());
        let mut cookie = format!("__Host-relay-at={t}; b=").into_bytes();
        cookie.push(0xff);
        let h = request(
            "POST",
            "/api/x",
            Some(&cookie),
            &[("origin", "https://evil.example")],
        );
        let (r, _) = run_with(&c, &h, NOW);
        assert_eq!(
            r.map(|r| (r.status, r.reason)),
            Some((400, "cookie_not_utf8"))
        );
        cookie.pop();
        let h = request(
            "POST",
            "/api/x",
            Some(&cookie),
            &[("origin", "https://evil.example")],
        );
        assert_eq!(run_with(&c, &h, NOW).0.map(|r| r.status), Some(403));
    }

    #[test]
    fn utf8_cookie_beyond_ascii_forwards() {
        // Not all ASCII, so the split's shortcut does not apply: the header is checked as UTF-8
        // and the request goes on with the application's cookies as they were.
        let t = sign(&claims());
        let cookie = format!("name=Zoë; __Host-relay-at={t}; city=\"Zürich\"");
        let (reply, fwd) = run("/api/me", Some(&cookie), NOW);
        assert!(reply.is_none(), "{reply:?}");
        let (authorization, rest, _) = fwd.unwrap();
        assert_eq!(authorization, format!("Bearer {t}"));
        assert_eq!(rest.as_deref(), Some("name=Zoë; city=\"Zürich\""));
    }

    #[test]
    fn no_keys_yet_is_503_and_unknown_kid_is_signalled() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-at={t}").as_bytes()),
            &[],
        );
        let req = RequestView::new(&h);
        match decide(&c, None, &mut cache, &req, NOW, true) {
            Step::Respond(r) => {
                assert_eq!(r.status, 503);
                assert!(r.headers.iter().any(|(n, _)| *n == "retry-after"));
            }
            other => panic!("{other:?}"),
        }
        let other_kid = testkit::sign_with_kid(&claims(), "rotated");
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-at={other_kid}").as_bytes()),
            &[],
        );
        let req = RequestView::new(&h);
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true),
            Step::UnknownKid
        ));
        // After a refetch (no further one allowed) it is a plain 401.
        assert!(
            matches!(decide(&c, Some(keys(&c)), &mut cache, &req, NOW, false), Step::Respond(r) if r.status == 401)
        );
    }

    #[test]
    fn cache_hit_needs_no_keys_and_expires_with_token() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-at={t}").as_bytes()),
            &[],
        );
        let req = RequestView::new(&h);
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW, true),
            Step::Forward(_)
        ));
        assert_eq!(cache.len(), 1);
        assert!(matches!(
            decide(&c, None, &mut cache, &req, NOW + 10, true),
            Step::Forward(_)
        ));
        assert!(
            matches!(decide(&c, None, &mut cache, &req, NOW + 330, true), Step::Respond(r) if r.status == 503)
        );
    }

    // ---- CSRF -----------------------------------------------------------------------------

    fn csrf_status(
        cfg: &Config,
        method: &str,
        extra: &[(&str, &str)],
        cookie: &str,
    ) -> Option<u32> {
        run_with(
            cfg,
            &request(method, "/api/x", Some(cookie.as_bytes()), extra),
            NOW,
        )
        .0
        .map(|r| r.status)
    }

    #[test]
    fn csrf_with_configured_origins() {
        let c = testkit::config(json!({"csrf": {"allowed_origins": ["https://app.example.com"]}}));
        let t = sign(&claims());
        let ck = format!("__Host-relay-at={t}");
        type Case<'c> = (&'c str, &'c [(&'c str, &'c str)], Option<u32>);
        let cases: &[Case] = &[
            ("GET", &[], None),
            ("GET", &[("origin", "https://evil.example")], None),
            ("POST", &[("origin", "https://app.example.com")], None),
            ("POST", &[("origin", "https://evil.example")], Some(403)),
            ("DELETE", &[("origin", "null")], Some(403)),
            ("PUT", &[], Some(403)),
            (
                "PATCH",
                &[("referer", "https://app.example.com/page?x=1")],
                None,
            ),
            (
                "PATCH",
                &[("referer", "https://evil.example/app.example.com")],
                Some(403),
            ),
            (
                "POST",
                &[
                    ("origin", "https://app.example.com"),
                    ("sec-fetch-site", "cross-site"),
                ],
                Some(403),
            ),
            (
                "POST",
                &[
                    ("origin", "https://app.example.com"),
                    ("sec-fetch-site", "same-origin"),
                ],
                None,
            ),
        ];
        for (method, extra, want) in cases {
            assert_eq!(
                csrf_status(&c, method, extra, &ck),
                *want,
                "{method} {extra:?}"
            );
        }
        // The refusal is a 403 JSON with error "csrf", no-store, and CORS only for allowed origins.
        let (r, _) = run_with(
            &c,
            &request(
                "POST",
                "/api/x",
                Some(ck.as_bytes()),
                &[("origin", "https://evil.example")],
            ),
            NOW,
        );
        let r = r.unwrap();
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "csrf");
        assert!(r
            .headers
            .contains(&("cache-control", "no-store".to_string())));
    }

    #[test]
    fn passed_requests_lose_relay_cookies_only() {
        let c = testkit::refresh_config(json!({
            "csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true},
        }));
        let passed = |c: &Config, path: &str, cookie: Option<&[u8]>| {
            let h = request("GET", path, cookie, &[]);
            let req = RequestView::new(&h);
            let mut cache = TokenCache::new(4);
            assert!(matches!(
                decide(c, Some(keys(c)), &mut cache, &req, NOW, true),
                Step::Pass
            ));
            passed_cookie(c, &req)
        };
        let all = "theme=dark; __Host-relay-at=t; __Host-relay-at.1=u; __Host-relay-session.0=s; \
                   __Host-relay-session=s; __Host-relay-csrf=c; sid=app";
        for path in ["/", "/static/app.js", "/api/public/info"] {
            assert_eq!(
                passed(&c, path, Some(all.as_bytes())),
                Some(Some("theme=dark; sid=app".into())),
                "{path}"
            );
            // Nothing to remove: the header is left alone (no write), also when a name only
            // looks like a relay cookie's.
            assert_eq!(passed(&c, path, Some(b"theme=dark; sid=app")), None);
            assert_eq!(
                passed(
                    &c,
                    path,
                    Some(b"x__Host-relay-at=1; __Host-relay-session.x=2")
                ),
                None
            );
            assert_eq!(passed(&c, path, None), None);
            // Only relay cookies: the header goes.
            assert_eq!(
                passed(&c, path, Some(b"__Host-relay-session=s")),
                Some(None)
            );
        }
        // Not UTF-8: rewritten only when a relay cookie is in it.
        assert_eq!(passed(&c, "/", Some(b"a=\xff")), None);
        assert_eq!(
            passed(&c, "/", Some(b"a=1; __Host-relay-at=\xff")),
            Some(Some("a=1".into()))
        );
        // Login flow cookies are relay cookies too.
        let c = testkit::refresh_config(json!({"login": {
            "authorization_endpoint": "https://auth.example.com/oauth2/authorize",
            "redirect_uri": "https://app.example.com/auth/callback",
        }}));
        let flow = c.login.as_ref().unwrap().flow_cookie_name("st");
        let cookie = format!("{flow}=x; a=1");
        assert_eq!(
            passed(&c, "/", Some(cookie.as_bytes())),
            Some(Some("a=1".into()))
        );
        // The opt-out forwards everything as sent.
        let c = testkit::config(json!({"forward_relay_cookies_to_unprotected": true}));
        assert_eq!(passed(&c, "/", Some(all.as_bytes())), None);
    }

    #[test]
    fn csrf_default_is_same_host() {
        let c = testkit::config(json!({}));
        let t = sign(&claims());
        let ck = format!("__Host-relay-at={t}");
        assert_eq!(
            csrf_status(&c, "POST", &[("origin", "https://app.example.com")], &ck),
            None
        );
        // Plain http is the request's own origin only on the local machine.
        assert_eq!(
            csrf_status(&c, "POST", &[("origin", "http://app.example.com")], &ck),
            Some(403)
        );
        assert_eq!(
            csrf_status(&c, "POST", &[("origin", "https://other.example.com")], &ck),
            Some(403)
        );
        assert_eq!(csrf_status(&c, "POST", &[], &ck), Some(403));
    }

    #[test]
    fn csrf_double_submit() {
        let c = testkit::config(
            json!({"csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true}}),
        );
        let t = sign(&claims());
        let o = ("origin", "https://app.example.com");
        let with_cookie = format!("__Host-relay-at={t}; __Host-relay-csrf=tok123");
        assert_eq!(
            csrf_status(&c, "POST", &[o, ("x-csrf-token", "tok123")], &with_cookie),
            None
        );
        assert_eq!(
            csrf_status(&c, "POST", &[o, ("x-csrf-token", "tok124")], &with_cookie),
            Some(403)
        );
        assert_eq!(csrf_status(&c, "POST", &[o], &with_cookie), Some(403));
        assert_eq!(
            csrf_status(
                &c,
                "POST",
                &[o, ("x-csrf-token", "tok123")],
                &format!("__Host-relay-at={t}")
            ),
            Some(403)
        );
    }

    #[test]
    fn cors_on_own_answers_only_for_allowed_origins() {
        let c = testkit::config(json!({"csrf": {"allowed_origins": ["https://app.example.com"]}}));
        let h = request(
            "GET",
            "/api/x",
            None,
            &[("origin", "https://app.example.com")],
        );
        let mut r = run_with(&c, &h, NOW).0.unwrap();
        add_cors(c.csrf.as_ref(), &RequestView::new(&h), &mut r);
        assert!(r.headers.contains(&(
            "access-control-allow-origin",
            "https://app.example.com".to_string()
        )));
        assert!(r
            .headers
            .contains(&("access-control-allow-credentials", "true".to_string())));
        assert!(r.headers.contains(&("vary", "Origin".to_string())));
        let h = request("GET", "/api/x", None, &[("origin", "https://evil.example")]);
        let mut r = run_with(&c, &h, NOW).0.unwrap();
        add_cors(c.csrf.as_ref(), &RequestView::new(&h), &mut r);
        assert!(!r
            .headers
            .iter()
            .any(|(n, _)| n.starts_with("access-control")));
    }

    // ---- header budget ----------------------------------------------------------------------

    #[test]
    fn header_budget_counts_the_forwarded_request() {
        let c = testkit::config(json!({"max_request_headers_bytes": 2048}));
        let t = sign(&claims());
        // A big relay cookie is stripped before forwarding: not counted.
        let big_relay = format!(
            "__Host-relay-at={t}; __Host-relay-session={}",
            "s".repeat(3000)
        );
        assert_eq!(
            run_with(
                &c,
                &request("GET", "/api/x", Some(big_relay.as_bytes()), &[]),
                NOW
            )
            .0,
            None
        );
        // A big foreign cookie is forwarded: 431 naming it.
        let big_other = format!("__Host-relay-at={t}; tracking={}", "x".repeat(3000));
        let r = run_with(
            &c,
            &request("GET", "/api/x", Some(big_other.as_bytes()), &[]),
            NOW,
        )
        .0
        .unwrap();
        assert_eq!(r.status, 431);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["largest"], "tracking");
        assert!(r
            .headers
            .contains(&("cache-control", "no-store".to_string())));
        // 0 disables the check.
        let off = testkit::config(json!({"max_request_headers_bytes": 0}));
        assert_eq!(
            run_with(
                &off,
                &request("GET", "/api/x", Some(big_other.as_bytes()), &[]),
                NOW
            )
            .0,
            None
        );
    }

    // ---- refresh ----------------------------------------------------------------------------

    fn decide_owned<'a>(
        c: &'a Config,
        cache: &mut TokenCache,
        h: &[(String, Vec<u8>)],
        now: u64,
    ) -> Step<'a> {
        decide(c, Some(keys(c)), cache, &RequestView::new(h), now, true)
    }

    #[test]
    fn missing_or_expired_token_with_session_needs_refresh() {
        let c = refresh_config(json!({}));
        let mut cache = TokenCache::new(8);
        let s = sealed(&c, "rt-1", None, 0);
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-session={s}").as_bytes()),
            &[],
        );
        match decide_owned(&c, &mut cache, &h, NOW) {
            Step::Refresh(need) => {
                assert_eq!(need.id, RefreshId::of("rt-1"));
                assert!(!need.needs_reseal);
                assert!(need.fallback.is_none());
            }
            other => panic!("{other:?}"),
        }
        // Within the margin (10 s): refresh, with the current token as fallback.
        let t = sign(&claims());
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-at={t}; __Host-relay-session={s}").as_bytes()),
            &[],
        );
        match decide_owned(&c, &mut cache, &h, NOW + 295) {
            Step::Refresh(need) => assert!(need.fallback.is_some()),
            other => panic!("{other:?}"),
        }
        // Outside the margin: the hot path, the session is not even read.
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-at={t}; __Host-relay-session=garbage").as_bytes()),
            &[],
        );
        assert!(matches!(
            decide_owned(&c, &mut cache, &h, NOW),
            Step::Forward(_)
        ));
    }

    #[test]
    fn unusable_session_is_refused_and_cleared() {
        let c = refresh_config(json!({}));
        let mut cache = TokenCache::new(8);
        let expired = sealed(&c, "rt", Some(NOW - 1), 0);
        for s in ["garbage", "a.b.c.d.e", expired.as_str()] {
            let h = request(
                "GET",
                "/api/x",
                Some(format!("__Host-relay-session={s}").as_bytes()),
                &[],
            );
            match decide_owned(&c, &mut cache, &h, NOW) {
                Step::Respond(r) => {
                    assert_eq!(r.status, 401);
                    assert_eq!(r.reason, "session_invalid");
                    let cleared: Vec<&String> = r
                        .headers
                        .iter()
                        .filter(|(n, _)| *n == "set-cookie")
                        .map(|(_, v)| v)
                        .collect();
                    assert!(
                        cleared
                            .iter()
                            .any(|v| v.starts_with("__Host-relay-session=;")
                                && v.contains("Max-Age=0")),
                        "{cleared:?}"
                    );
                    assert!(cleared
                        .iter()
                        .any(|v| v.starts_with("__Host-relay-at=;") && v.contains("Max-Age=0")));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn completed_refresh_forwards_and_sets_cookies() {
        let c = refresh_config(json!({}));
        let mut cache = TokenCache::new(8);
        let s = sealed(&c, "rt-1", Some(NOW + 3600), 1);
        let h = request(
            "GET",
            "/api/x",
            Some(format!("a=1; __Host-relay-session={s}").as_bytes()),
            &[],
        );
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        assert!(need.needs_reseal, "sealed with the second key");
        let new_at = sign(&claims());
        let tokens = Tokens {
            access_token: new_at.clone(),
            refresh_token: None,
            id_token: None,
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &RequestView::new(&h),
            need,
            &RefreshOutcome::Tokens(tokens.clone()),
            NOW,
            &Random::fixed(2),
        );
        let Step::Forward(f) = done.step else {
            panic!("{:?}", done.step)
        };
        assert_eq!(&*f.authorization, format!("Bearer {new_at}"));
        assert_eq!(f.cookie.as_deref(), Some("a=1"));
        assert!(
            done.set_cookies.iter().any(|v| v.starts_with(&format!(
                "__Host-relay-at={new_at}; Path=/; Max-Age=300; HttpOnly; Secure; SameSite=Strict"
            ))),
            "{:?}",
            done.set_cookies
        );
        // Resealed with the first key (no rotation, but an old key), Max-Age from the session's exp.
        let resealed = done
            .set_cookies
            .iter()
            .find(|v| v.starts_with("__Host-relay-session="))
            .unwrap();
        assert!(resealed.contains("Max-Age=3600"));
        let value = resealed
            .split(';')
            .next()
            .unwrap()
            .trim_start_matches("__Host-relay-session=");
        let u = session::unseal(&c.refresh.as_ref().unwrap().session_keys, value, NOW).unwrap();
        assert_eq!(u.session.rt, "rt-1");
        assert!(!u.needs_reseal);
    }

    #[test]
    fn refresh_failures() {
        let c = refresh_config(json!({}));
        let mut cache = TokenCache::new(8);
        let s = sealed(&c, "rt", None, 0);
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-session={s}").as_bytes()),
            &[],
        );
        let view = RequestView::new(&h);
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &view,
            need,
            &RefreshOutcome::Invalid,
            NOW,
            &Random::fixed(0),
        );
        let Step::Respond(r) = done.step else {
            panic!()
        };
        assert_eq!((r.status, r.reason), (401, "session_revoked"));
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "set-cookie" && v.starts_with("__Host-relay-session=;")));

        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &view,
            need,
            &RefreshOutcome::Failed { retry_at: NOW + 4 },
            NOW,
            &Random::fixed(0),
        );
        let Step::Respond(r) = done.step else {
            panic!()
        };
        assert_eq!(r.status, 503);
        assert!(r.headers.contains(&("retry-after", "4".to_string())));
        assert!(
            !r.headers.iter().any(|(n, _)| *n == "set-cookie"),
            "an IdP fault keeps the session"
        );

        // A rotated refresh token whose access token our rules refuse: 503, but the rotated
        // session still reaches the browser.
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let tokens = Tokens {
            access_token: "not.a.jwt".into(),
            refresh_token: Some("rt-2".into()),
            id_token: None,
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &view,
            need,
            &RefreshOutcome::Tokens(tokens.clone()),
            NOW,
            &Random::fixed(0),
        );
        let Step::Respond(r) = done.step else {
            panic!()
        };
        assert_eq!(r.status, 503);
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "set-cookie" && v.starts_with("__Host-relay-session=")));
    }

    #[test]
    fn double_submit_cookie_is_issued_with_a_resealed_session() {
        let c = refresh_config(
            json!({"csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true}}),
        );
        let mut cache = TokenCache::new(8);
        let s = sealed(&c, "rt-1", None, 0);
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-session={s}").as_bytes()),
            &[],
        );
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let tokens = Tokens {
            access_token: sign(&claims()),
            refresh_token: Some("rt-2".into()),
            id_token: None,
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &RequestView::new(&h),
            need,
            &RefreshOutcome::Tokens(tokens.clone()),
            NOW,
            &Random::fixed(5),
        );
        let csrf = done
            .set_cookies
            .iter()
            .find(|v| v.starts_with("__Host-relay-csrf="))
            .expect("csrf cookie");
        assert!(
            !csrf.contains("HttpOnly"),
            "JavaScript must read it: {csrf}"
        );
        assert!(csrf.contains("SameSite=Strict") && csrf.contains("Secure"));
        assert_eq!(
            csrf.split(';').next().unwrap(),
            format!("__Host-relay-csrf={}", csrf::new_token([5; 32]))
        );
        // An existing token is kept.
        let h = request(
            "GET",
            "/api/x",
            Some(format!("__Host-relay-session={s}; __Host-relay-csrf=keep-me").as_bytes()),
            &[],
        );
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let done = complete_refresh(
            &c,
            Verifier {
                keys: Some(keys(&c)),
                cache: &mut cache,
            },
            &RequestView::new(&h),
            need,
            &RefreshOutcome::Tokens(tokens.clone()),
            NOW,
            &Random::fixed(5),
        );
        assert!(done
            .set_cookies
            .iter()
            .any(|v| v.starts_with("__Host-relay-csrf=keep-me;")));
    }

    #[test]
    fn oversized_access_token_is_chunked_and_read_back() {
        let c = refresh_config(json!({}));
        let mut cache = TokenCache::new(8);
        // A token with a large claim: over one cookie's 4,000 bytes.
        let mut big = claims();
        big["groups"] = json!(vec!["g".repeat(40); 120]);
        let t = sign(&big);
        assert!(t.len() > 4000);
        let cookies = access_token_cookies(&c, "", &t, NOW + 300, NOW);
        assert!(cookies.len() >= 2, "{}", cookies.len());
        assert!(
            cookies.iter().all(|v| v.len() <= 4096),
            "every Set-Cookie fits a browser"
        );
        // The browser sends the chunks back; the filter joins, verifies and strips them.
        let header: Vec<String> = cookies
            .iter()
            .map(|v| v.split(';').next().unwrap().to_string())
            .collect();
        let header = format!("a=1; {}", header.join("; "));
        let h = request("GET", "/api/x", Some(header.as_bytes()), &[]);
        match decide_owned(&c, &mut cache, &h, NOW) {
            Step::Forward(f) => {
                assert_eq!(&*f.authorization, format!("Bearer {t}"));
                assert_eq!(f.cookie.as_deref(), Some("a=1"));
            }
            other => panic!("{other:?}"),
        }
        // A later small token deletes the stale chunks.
        let small = sign(&claims());
        let again = access_token_cookies(&c, &header, &small, NOW + 300, NOW);
        assert!(
            again
                .iter()
                .any(|v| v.starts_with("__Host-relay-at.0=;") && v.contains("Max-Age=0")),
            "{again:?}"
        );
        // Logging out clears every piece.
        let cleared = clear_relay_cookies(&c, &header);
        assert!(cleared.iter().any(|v| v.starts_with("__Host-relay-at.1=;")));
    }
}
