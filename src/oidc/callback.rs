//! The callback: checking what the IdP sent back against the flow cookie, the code exchange,
//! and finishing the login with the new session.

use std::fmt;

use subtle::ConstantTimeEq;

use super::error::{error_reply, html_escape, page, LoginError};
use super::flow::{clear_flow_cookie, open_flow, FlowProblem};
use crate::config::{Config, LoginConfig, RefreshConfig};
use crate::http::cookie::{self, SameSite};
use crate::http::url::{parse_query, single};
use crate::http::Reply;
use crate::idp::{self, TokenRequest, Tokens};
use crate::jar;
use crate::jwt::jwks::KeySet;
use crate::jwt::token::{self, ClaimRules, TokenError};
use crate::random::Random;
use crate::session::Session;

/// `error` values of an authorization response (RFC 6749 §4.1.2.1, OpenID Connect Core §3.1.2.6)
/// that are echoed back; anything else is reported as `invalid_request`. The IdP's
/// `error_description` is never shown: anyone can craft a callback URL, and the page must not
/// display an attacker's text under the site's name.
const KNOWN_IDP_ERRORS: &[&str] = &[
    "access_denied",
    "invalid_request",
    "unauthorized_client",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
    "interaction_required",
    "login_required",
    "account_selection_required",
    "consent_required",
    "invalid_request_uri",
    "invalid_request_object",
    "request_not_supported",
    "request_uri_not_supported",
    "registration_not_supported",
];

/// A code exchange in flight: what [`finish_callback`] needs once the token endpoint answers.
pub struct PendingCallback {
    pub(super) flow_cookie: String,
    nonce: String,
    return_to: String,
    pub(super) html: bool,
    cookie_header: String,
}

impl fmt::Debug for PendingCallback {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingCallback")
            .field("flow_cookie", &self.flow_cookie)
            .field("html", &self.html)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl PendingCallback {
    /// The same-origin path the browser will be sent to.
    pub(super) fn return_to(&self) -> &str {
        &self.return_to
    }
}

/// Checks a callback (`query` after `?`, the Cookie header, `html` from [`wants_html`]) and
/// builds the code exchange: `POST grant_type=authorization_code&code&redirect_uri&code_verifier`
/// with the configured client authentication, for the token endpoint's cluster. `Err` is the
/// final answer (400, with the used flow cookie cleared when there was one).
pub fn callback(
    config: &Config,
    login: &LoginConfig,
    refresh: &RefreshConfig,
    query: &str,
    cookie_header: &str,
    html: bool,
    now: u64,
) -> Result<(TokenRequest, PendingCallback), Reply> {
    let attrs = &config.cookies.attrs;
    let params = parse_query(query);
    let fail = |err: LoginError, return_to: &str, clear: Option<&str>| {
        let cookies = clear
            .map(|name| vec![clear_flow_cookie(name, attrs)])
            .unwrap_or_default();
        error_reply(login, err, html, return_to, cookies)
    };
    let (Ok(state), Ok(code), Ok(error), Ok(iss)) = (
        single(&params, "state"),
        single(&params, "code"),
        single(&params, "error"),
        single(&params, "iss"),
    ) else {
        return Err(fail(LoginError::BadCallback, "/", None));
    };
    let state = state.filter(|s| !s.is_empty());

    // The flow this callback belongs to, when its cookie is present.
    let flow_name = state.map(|s| login.flow_cookie_name(s));
    let flow_value = flow_name
        .as_deref()
        .and_then(|name| cookie::find(cookie_header, name));
    let clear = flow_value.and(flow_name.as_deref());
    let flow = flow_value.map(|v| open_flow(refresh, v, now));
    // The flow's return path, only once its state is proven.
    let proven = match (&flow, state) {
        (Some(Ok(f)), Some(s)) => bool::from(f.s.as_bytes().ct_eq(s.as_bytes())),
        _ => false,
    };
    let return_to = match (&flow, proven) {
        (Some(Ok(f)), true) => f.r.as_str(),
        _ => "/",
    };

    if let Some(error) = error {
        let code = KNOWN_IDP_ERRORS
            .iter()
            .find(|k| **k == error)
            .copied()
            .unwrap_or("invalid_request");
        return Err(fail(LoginError::Idp(code), return_to, clear));
    }
    if iss.is_some_and(|i| i != login.id_token_issuer(&config.rules.issuer)) {
        return Err(fail(LoginError::WrongIssuer, return_to, clear));
    }
    let (Some(state), Some(code)) = (state, code.filter(|c| !c.is_empty())) else {
        return Err(fail(LoginError::BadCallback, return_to, clear));
    };
    let flow = match flow {
        None => return Err(fail(LoginError::FlowMissing, "/", None)),
        Some(Err(FlowProblem::Invalid)) => return Err(fail(LoginError::FlowInvalid, "/", clear)),
        Some(Err(FlowProblem::Expired)) => return Err(fail(LoginError::FlowExpired, "/", clear)),
        Some(Ok(flow)) => flow,
    };
    if !proven {
        return Err(fail(LoginError::StateMismatch, "/", clear));
    }
    let request = idp::token_request(
        refresh,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &login.redirect_uri),
            ("code_verifier", &flow.v),
        ],
    );
    let flow_cookie = flow_name.unwrap_or_else(|| login.flow_cookie_name(state));
    Ok((
        request,
        PendingCallback {
            flow_cookie,
            nonce: flow.n,
            return_to: flow.r,
            html,
            cookie_header: cookie_header.to_owned(),
        },
    ))
}

/// What became of a code exchange.
#[derive(Debug)]
pub enum CallbackOutcome {
    /// The final answer: the redirect with the session, or an error.
    Respond(Reply),
    /// A token names a key id the key set lacks: refetch the JWKS (rate-limited, as for
    /// `Step::UnknownKid`) and call [`finish_callback`] again with the same answer and
    /// `allow_kid_refetch = false`.
    UnknownKid,
}

/// The ID token rules: the ID token issuer, the configured algorithms and skew, audience = the
/// client, no required claims, and `nonce` extracted.
fn id_token_rules(config: &Config, login: &LoginConfig, client_id: &str) -> ClaimRules {
    ClaimRules {
        issuer: login.id_token_issuer(&config.rules.issuer).to_owned(),
        audiences: vec![client_id.to_owned()],
        required_claims: Vec::new(),
        algorithms: config.rules.algorithms,
        clock_skew_s: config.rules.clock_skew_s,
        forward_claims: vec![("nonce".to_owned(), "nonce".to_owned())],
    }
}

/// Completes a callback with the token endpoint's answer (`status` None: no answer; `body` at
/// most [`idp::MAX_RESPONSE_BYTES`]): verifies the ID token (signature, issuer, audience =
/// client id, expiry, nonce in constant time) and the access token (the normal rules), then
/// answers with the access-token cookie, the session (refresh token, `exp` = now +
/// `session_lifetime_s`, the ID token kept for logout), a fresh CSRF cookie with double submit,
/// and the flow cookie cleared, sending the browser to its return path.
///
/// With `SameSite=Strict` relay cookies the answer is a 200 page that moves on by
/// `<meta http-equiv="refresh">` instead of a 302: the browser arrives here from the IdP, so a
/// redirect chain would still count as cross-site and the first request to the return path
/// would go without the new Strict cookies (and a protected page would loop back to login).
/// The refresh is initiated by this same-origin page, so its request carries them.
///
/// An IdP that issues no refresh token still logs the user in, for the access token's
/// lifetime only (reason `login_no_refresh_token`; any previous session cookie is cleared).
pub fn finish_callback(
    ctx: &LoginContext<'_>,
    pending: &PendingCallback,
    status: Option<u32>,
    body: &[u8],
    now: u64,
    rand: &Random,
    allow_kid_refetch: bool,
) -> CallbackOutcome {
    let fail = |err: LoginError| {
        CallbackOutcome::Respond(error_reply(
            ctx.login,
            err,
            pending.html,
            &pending.return_to,
            vec![clear_flow_cookie(
                &pending.flow_cookie,
                &ctx.config.cookies.attrs,
            )],
        ))
    };
    let Some(refresh) = &ctx.config.refresh else {
        return fail(LoginError::ExchangeFailed("not_configured"));
    };
    let tokens = match idp::parse_token_response(status, body) {
        Ok(t) => t,
        Err(e) => return fail(e.into()),
    };
    match verify_tokens(ctx, refresh, pending, &tokens, now, allow_kid_refetch) {
        Ok(access_exp) => CallbackOutcome::Respond(signed_in(
            ctx, refresh, pending, &tokens, access_exp, now, rand,
        )),
        Err(Stop::UnknownKid) => CallbackOutcome::UnknownKid,
        Err(Stop::Fail(e)) => fail(e),
    }
}

/// What a callback needs besides the request: the configuration and the signing keys.
pub struct LoginContext<'a> {
    pub config: &'a Config,
    pub login: &'a LoginConfig,
    pub keys: Option<&'a KeySet>,
}

/// Why the tokens of a code exchange were not accepted.
enum Stop {
    Fail(LoginError),
    /// A token names a key id the key set lacks (and a refetch is still allowed).
    UnknownKid,
}

/// Verifies the ID token (signature, issuer, audience = client id, expiry, nonce in constant
/// time) and the access token (the normal rules); the access token's `exp`.
fn verify_tokens(
    ctx: &LoginContext<'_>,
    refresh: &RefreshConfig,
    pending: &PendingCallback,
    tokens: &Tokens,
    now: u64,
    allow_kid_refetch: bool,
) -> Result<u64, Stop> {
    let Some(id_token) = tokens.id_token.as_deref() else {
        return Err(Stop::Fail(LoginError::IdTokenMissing));
    };
    let Some(keys) = ctx.keys else {
        return Err(Stop::Fail(LoginError::KeysNotReady));
    };
    let refused = |e: TokenError, as_login_error: fn(TokenError) -> LoginError| match e {
        TokenError::UnknownKid if allow_kid_refetch => Stop::UnknownKid,
        e => Stop::Fail(as_login_error(e)),
    };
    let rules = id_token_rules(ctx.config, ctx.login, &refresh.client_id);
    let id = token::verify(id_token, keys, &rules, now)
        .map_err(|e| refused(e, LoginError::IdTokenInvalid))?;
    let nonce_ok = id
        .forwarded
        .iter()
        .find(|(h, _)| h == "nonce")
        .is_some_and(|(_, n)| {
            n.len() == pending.nonce.len()
                && bool::from(n.as_bytes().ct_eq(pending.nonce.as_bytes()))
        });
    if !nonce_ok {
        return Err(Stop::Fail(LoginError::NonceMismatch));
    }
    token::verify(&tokens.access_token, keys, &ctx.config.rules, now)
        .map(|access| access.exp)
        .map_err(|e| refused(e, LoginError::AccessTokenInvalid))
}

/// The answer to a successful login: the cookies, and the way back to the return path.
fn signed_in(
    ctx: &LoginContext<'_>,
    refresh: &RefreshConfig,
    pending: &PendingCallback,
    tokens: &Tokens,
    access_exp: u64,
    now: u64,
    rand: &Random,
) -> Reply {
    let config = ctx.config;
    let attrs = &config.cookies.attrs;
    // The request's cookies without the CSRF cookie: a login always issues a fresh CSRF token
    // (one planted before the login must not survive it).
    let header: String = cookie::pairs(&pending.cookie_header)
        .filter(|(n, _)| *n != config.cookies.csrf)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let double_submit = config.csrf.as_ref().is_some_and(|c| c.double_submit);
    let at = tokens.access_token.as_str();
    let mut cookies = jar::access_token_cookies(config, &header, at, access_exp, now);
    let reason = match &tokens.refresh_token {
        Some(rt) => {
            let session = Session {
                rt: rt.clone(),
                exp: Some(now.saturating_add(ctx.login.session_lifetime_s)),
                id_token: tokens.id_token.clone(),
            };
            cookies.extend(jar::session_cookies(
                config, refresh, &header, &session, now, rand,
            ));
            "login"
        }
        None => {
            for stale in cookie::stale_chunks(&header, &config.cookies.session, &[]) {
                cookies.push(cookie::clear_cookie(&stale, attrs));
            }
            if double_submit {
                cookies.push(jar::csrf_cookie(config, &header, rand));
            }
            "login_no_refresh_token"
        }
    };
    cookies.push(clear_flow_cookie(&pending.flow_cookie, attrs));

    let mut reply = if attrs.same_site == SameSite::Strict {
        let to = html_escape(&pending.return_to);
        Reply::html(
            200,
            reason,
            page(
                "Signed in",
                &format!("<meta http-equiv=\"refresh\" content=\"0;url={to}\">"),
                &format!("<p>Signed in. <a href=\"{to}\">Continue</a></p>"),
            ),
        )
    } else {
        Reply::redirect(&pending.return_to, reason)
    };
    for c in cookies {
        reply.headers.push(("set-cookie", c));
    }
    reply.no_referrer()
}
