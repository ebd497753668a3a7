//! The per-request decision: `decide(config, keys, cache, request, now) -> Step`.
//!
//! Pure: no host calls, time and randomness are parameters. The shell in `filter/` reads the
//! request, calls this, and carries out the `Step`. A refresh is decided in two halves: `decide`
//! says a session needs one (`Step::Refresh`), the shell obtains the outcome (its own call to
//! the token endpoint, or one another request or worker made), and `complete_refresh` turns
//! that outcome into the request's mutations and the cookies for the browser.

use std::borrow::Cow;
use std::rc::Rc;

use crate::config::{Config, RefreshConfig};
use crate::cookie;
use crate::csrf::{self, CsrfInput, CsrfPolicy};
use crate::header_budget;
use crate::jwks::KeySet;
use crate::login;
use crate::refresh::{RefreshId, Tokens};
use crate::reply::Reply;
use crate::session::{self, Session};
use crate::token::{self, TokenError};
use crate::token_cache::{Cached, TokenCache};

/// The request as Envoy has it: every header, pseudo-headers included, values as bytes (a
/// client may send anything). One host call fetches them all, cheaper than one per header.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> RequestView<'a> {
    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The path (non-UTF-8 bytes replaced, so a mangled path still matches prefixes).
    pub fn path(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.get(":path").unwrap_or_default())
    }

    /// The Cookie header; several Cookie headers are joined with "; " (RFC 9113 §8.2.3).
    pub fn cookie(&self) -> Option<Cow<'a, [u8]>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .map(|(_, v)| v.as_slice());
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = [first, second].join(&b"; "[..]);
                for v in values {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(v);
                }
                Some(Cow::Owned(joined))
            }
        }
    }
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

/// Fresh randomness for one request (the shell draws it from the host).
#[derive(Clone, PartialEq, Eq)]
pub struct Random {
    /// AES-GCM IV for sealing a session.
    pub iv: [u8; 12],
    /// A new double-submit CSRF token.
    pub csrf: [u8; 32],
}

impl Random {
    /// Deterministic values, for tests.
    pub fn fixed(b: u8) -> Random {
        Random {
            iv: [b; 12],
            csrf: [b; 32],
        }
    }
}

impl std::fmt::Debug for Random {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Random([redacted])")
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
    let path = req.path();
    if !config.paths.is_protected(&path) {
        return Step::Pass;
    }
    let cookie_bytes = req.cookie();
    let cookie_header = match cookie_bytes.as_deref().map(std::str::from_utf8) {
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
        |n| relay_owned(config, n),
    );
    // An access token too big for one cookie arrives in chunks (`<name>.0`, `<name>.1`, ...).
    let chunked_token = match scan.values.first().copied().flatten() {
        Some(_) => None,
        None => session::read_chunked(cookie_header, &names.access_token),
    };
    let token = scan
        .values
        .first()
        .copied()
        .flatten()
        .or(chunked_token.as_deref())
        .filter(|t| !t.is_empty());

    // A forged cross-site request is refused before any token work.
    if let Err(e) = check_csrf(config, req, scan.values.get(2).copied().flatten()) {
        return Step::Respond(Reply::forbidden_csrf(e.code(), &e.to_string()));
    }

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
    let checked = |f: Forward<'a>| match over_budget(config, req, &f) {
        Some(reply) => Step::Respond(reply),
        None => Step::Forward(f),
    };
    let Some(refresh) = &config.refresh else {
        return match verified {
            Ok((values, _)) => forward_current(values)
                .map_or_else(|| Step::Respond(Reply::missing_token()), checked),
            Err(reply) => Step::Respond(reply),
        };
    };
    // Hot path: a token that is not about to expire never touches the session.
    if let Ok((values, exp)) = &verified {
        if now.saturating_add(refresh.margin_s) < *exp {
            if let Some(f) = forward_current(Rc::clone(values)) {
                return checked(f);
            }
        }
    }
    let fallback = verified
        .as_ref()
        .ok()
        .and_then(|(values, _)| forward_current(Rc::clone(values)));
    let Some(sealed) = session::read_chunked(cookie_header, &names.session) else {
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
            add_cookies(&mut reply, clear_relay_cookies(config, cookie_header));
            return Completed {
                step: Step::Respond(reply),
                set_cookies: Vec::new(),
            };
        }
        RefreshOutcome::Unavailable { retry_after_s } => {
            let step = match need.fallback {
                Some(f) => match over_budget(config, req, &f) {
                    Some(reply) => Step::Respond(reply),
                    None => Step::Forward(f),
                },
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
            rand,
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
            set_cookies.extend(access_token_cookies(config, cookie_header, at, exp, now));
            let remainder = cookie::scan(
                cookie_header,
                [
                    config.cookies.access_token.as_str(),
                    config.cookies.session.as_str(),
                    config.cookies.csrf.as_str(),
                ],
                |n| relay_owned(config, n),
            )
            .remainder();
            let f = forward(config, at, remainder, values);
            match over_budget(config, req, &f) {
                Some(mut reply) => {
                    // Still hand the browser its rotated session: the refresh token is spent.
                    add_cookies(&mut reply, std::mem::take(&mut set_cookies));
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

/// Cookies the relay owns besides its three: session chunks and login flow cookies. They are
/// never forwarded.
fn relay_owned(config: &Config, name: &str) -> bool {
    cookie::is_chunk_of(name, &config.cookies.session)
        || cookie::is_chunk_of(name, &config.cookies.access_token)
        || config
            .login
            .as_ref()
            .is_some_and(|l| l.is_flow_cookie(name))
}

/// A refusal of a top-level navigation becomes a redirect to the login when the relay runs it
/// (fetch and XHR keep their 401: redirecting an API call breaks clients). Cookies the refusal
/// clears are cleared by the redirect too.
pub fn navigation_redirect(config: &Config, req: &RequestView<'_>, reply: Reply) -> Reply {
    let Some(login) = &config.login else {
        return reply;
    };
    if reply.status != 401 {
        return reply;
    }
    let navigation = login::is_navigation(
        req.get_str(":method").unwrap_or(""),
        req.get_str("sec-fetch-mode"),
        req.get_str("accept"),
    );
    if !navigation {
        return reply;
    }
    let mut redirect = login::login_redirect(login, &req.path());
    for (name, value) in reply.headers {
        if name == "set-cookie" {
            redirect.headers.push((name, value));
        }
    }
    redirect
}

/// The CSRF policy for unsafe methods: the configured one, or, without a `csrf` section, the
/// request's own host (same-origin requests only, by either scheme).
pub fn check_csrf(
    config: &Config,
    req: &RequestView<'_>,
    csrf_cookie: Option<&str>,
) -> Result<(), csrf::CsrfError> {
    let method = req.get_str(":method").unwrap_or("");
    if csrf::is_exempt(method) {
        return Ok(());
    }
    let input = CsrfInput {
        method,
        origin: req.get_str("origin"),
        referer: req.get_str("referer"),
        sec_fetch_site: req.get_str("sec-fetch-site"),
        csrf_cookie,
        csrf_header: req.get_str("x-csrf-token"),
    };
    match &config.csrf {
        Some(policy) => csrf::check(policy, &input),
        None => {
            let authority = req.get_str(":authority").unwrap_or("");
            match CsrfPolicy::new(
                &[
                    format!("https://{authority}"),
                    format!("http://{authority}"),
                ],
                false,
            ) {
                Ok(policy) => csrf::check(&policy, &input),
                // A Host that is not a host cannot be anyone's origin.
                Err(_) => Err(csrf::CsrfError::OriginNotAllowed),
            }
        }
    }
}

/// 431 when the request, as it would go upstream, is over `max_request_headers_bytes`.
fn over_budget(config: &Config, req: &RequestView<'_>, f: &Forward<'_>) -> Option<Reply> {
    let budget = config.max_request_headers_bytes;
    if budget == 0 {
        return None;
    }
    let replaced = |name: &str| {
        name == "authorization"
            || name == "cookie"
            || config.rules.forward_claims.iter().any(|(h, _)| h == name)
    };
    // The headers as they would go upstream: the client's, minus those the filter replaces,
    // plus the filter's own.
    let upstream = || {
        req.headers
            .iter()
            .filter(|(n, _)| !replaced(n))
            .map(|(n, v)| (n.as_str(), v.as_slice()))
            .chain(std::iter::once((
                "authorization",
                f.authorization.as_bytes(),
            )))
            .chain(f.cookie.as_deref().map(|c| ("cookie", c.as_bytes())))
            .chain(
                f.claim_headers()
                    .filter_map(|(name, value)| value.map(|v| (name, v.as_bytes()))),
            )
    };
    // Hot path: the request fits, which the total alone shows (no list built).
    if header_budget::total_of(upstream()) <= budget {
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

/// CORS headers on the filter's own answers, so a browser page on an allowed origin can read
/// why it was refused.
pub fn add_cors(config: &Config, req: &RequestView<'_>, reply: &mut Reply) {
    let Some(policy) = &config.csrf else { return };
    let Some(origin) = csrf::cors_origin(policy, req.get_str("origin")) else {
        return;
    };
    reply
        .headers
        .push(("access-control-allow-origin", origin.to_string()));
    reply
        .headers
        .push(("access-control-allow-credentials", "true".to_string()));
    reply.headers.push(("vary", "Origin".to_string()));
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
/// Set-Cookie values for a new access token; they live as long as the token. A token too big
/// for one cookie (browsers drop Set-Cookie over 4,096 bytes) is split into chunks like the
/// session, and pieces of an earlier token that the new one does not overwrite are deleted.
pub fn access_token_cookies(
    config: &Config,
    cookie_header: &str,
    token: &str,
    exp: u64,
    now: u64,
) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let name = &config.cookies.access_token;
    let written = session::chunk(name, token);
    let mut out: Vec<String> = written
        .iter()
        .map(|(n, v)| {
            cookie::set_cookie(
                n,
                v,
                Some(exp.saturating_sub(now)),
                attrs,
                attrs.same_site,
                true,
            )
        })
        .collect();
    for stale in session::stale_chunks(cookie_header, name, &written) {
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    out
}

/// Set-Cookie values that store `session` (chunked when large) and delete stale chunks.
pub fn session_cookies(
    config: &Config,
    refresh: &RefreshConfig,
    cookie_header: &str,
    session: &Session,
    now: u64,
    rand: &Random,
) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let name = &config.cookies.session;
    let sealed = session::seal(&refresh.session_keys, session, rand.iv);
    let max_age = session.exp.map(|exp| exp.saturating_sub(now));
    let written = session::chunk(name, &sealed);
    let mut out: Vec<String> = written
        .iter()
        .map(|(n, v)| cookie::set_cookie(n, v, max_age, attrs, attrs.same_site, true))
        .collect();
    for stale in session::stale_chunks(cookie_header, name, &written) {
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    if config.csrf.as_ref().is_some_and(|c| c.double_submit) {
        out.push(csrf_cookie(config, cookie_header, rand));
    }
    out
}

/// The double-submit CSRF cookie, issued with every session: the request's value is kept (the
/// page's copy stays valid), else a new token. Readable by JavaScript, `SameSite=Strict`.
pub fn csrf_cookie(config: &Config, cookie_header: &str, rand: &Random) -> String {
    let name = &config.cookies.csrf;
    let value = cookie::find(cookie_header, name)
        .filter(|v| !v.is_empty() && cookie::is_valid_value(v))
        .map(str::to_string)
        .unwrap_or_else(|| csrf::new_token(rand.csrf));
    let attrs = &config.cookies.attrs;
    cookie::set_cookie(name, &value, None, attrs, cookie::SameSite::Strict, false)
}

/// Set-Cookie values that delete the access token and every piece of the session present.
pub fn clear_relay_cookies(config: &Config, cookie_header: &str) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let at = &config.cookies.access_token;
    let mut out = vec![cookie::clear_cookie(at, attrs)];
    for stale in session::stale_chunks(cookie_header, at, &[]) {
        if stale != *at {
            out.push(cookie::clear_cookie(&stale, attrs));
        }
    }
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
    rand: &Random,
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
            out.extend(access_token_cookies(config, cookie_header, at, exp, now));
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
            rand,
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

    /// A request's headers: method, path, optional cookie bytes, and extra headers.
    fn request(
        method: &str,
        path: &str,
        cookie: Option<&[u8]>,
        extra: &[(&str, &str)],
    ) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
            (":authority".to_string(), b"app.example.com".to_vec()),
        ];
        if let Some(c) = cookie {
            h.push(("cookie".to_string(), c.to_vec()));
        }
        for (n, v) in extra {
            h.push((n.to_string(), v.as_bytes().to_vec()));
        }
        h
    }

    type Forwarded = (String, Option<String>, Vec<(String, Option<String>)>);

    fn run_with(
        c: &Config,
        headers: &[(String, Vec<u8>)],
        now: u64,
    ) -> (Option<Reply>, Option<Forwarded>) {
        let mut cache = TokenCache::new(16);
        let req = RequestView { headers };
        match decide(c, Some(keys(c)), &mut cache, &req, now, true) {
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
        let req = RequestView { headers: &h };
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
        let req = RequestView { headers: &h };
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
        let req = RequestView { headers: &h };
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
    fn csrf_default_is_same_host() {
        let c = testkit::config(json!({}));
        let t = sign(&claims());
        let ck = format!("__Host-relay-at={t}");
        assert_eq!(
            csrf_status(&c, "POST", &[("origin", "https://app.example.com")], &ck),
            None
        );
        assert_eq!(
            csrf_status(&c, "POST", &[("origin", "http://app.example.com")], &ck),
            None
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
        add_cors(&c, &RequestView { headers: &h }, &mut r);
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
        add_cors(&c, &RequestView { headers: &h }, &mut r);
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

    const SESSION_KEY: [u8; 32] = [7u8; 32];

    fn refresh_config(extra: serde_json::Value) -> Config {
        let mut v = json!({
            "session_keys": [{"kid": "k1", "key": testkit::b64(&SESSION_KEY)}, {"kid": "k0", "key": testkit::b64(&[9u8; 32])}],
            "token_endpoint": {"cluster": "idp", "authority": "idp", "path": "/token"},
            "client_id": "relay",
        });
        for (k, val) in extra.as_object().unwrap() {
            v[k] = val.clone();
        }
        testkit::config(v)
    }

    fn sealed(c: &Config, rt: &str, exp: Option<u64>, kid_index: usize) -> String {
        let r = c.refresh.as_ref().unwrap();
        let entries = [
            ("k1".to_string(), testkit::b64(&SESSION_KEY)),
            ("k0".to_string(), testkit::b64(&[9u8; 32])),
        ];
        let keys = if kid_index == 0 {
            r.session_keys.clone()
        } else {
            session::SessionKeys::from_config(&entries[1..]).unwrap()
        };
        session::seal(
            &keys,
            &Session {
                rt: rt.into(),
                exp,
                id_token: None,
            },
            [1u8; 12],
        )
    }

    fn decide_owned<'a>(
        c: &'a Config,
        cache: &mut TokenCache,
        h: &[(String, Vec<u8>)],
        now: u64,
    ) -> Step<'a> {
        decide(
            c,
            Some(keys(c)),
            cache,
            &RequestView { headers: h },
            now,
            true,
        )
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
            Some(keys(&c)),
            &mut cache,
            &RequestView { headers: &h },
            need,
            RefreshOutcome::Tokens(&tokens),
            NOW,
            &Random::fixed(2),
        );
        let Step::Forward(f) = done.step else {
            panic!("{:?}", done.step)
        };
        assert_eq!(f.authorization, format!("Bearer {new_at}"));
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
        let view = RequestView { headers: &h };
        let Step::Refresh(need) = decide_owned(&c, &mut cache, &h, NOW) else {
            panic!()
        };
        let done = complete_refresh(
            &c,
            Some(keys(&c)),
            &mut cache,
            &view,
            need,
            RefreshOutcome::Invalid,
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
            Some(keys(&c)),
            &mut cache,
            &view,
            need,
            RefreshOutcome::Unavailable { retry_after_s: 4 },
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
            Some(keys(&c)),
            &mut cache,
            &view,
            need,
            RefreshOutcome::Tokens(&tokens),
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
            Some(keys(&c)),
            &mut cache,
            &RequestView { headers: &h },
            need,
            RefreshOutcome::Tokens(&tokens),
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
            Some(keys(&c)),
            &mut cache,
            &RequestView { headers: &h },
            need,
            RefreshOutcome::Tokens(&tokens),
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
                assert_eq!(f.authorization, format!("Bearer {t}"));
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
