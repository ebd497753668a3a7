//! Login and logout at the edge: the OAuth 2.0 authorization code flow with PKCE (RFC 7636)
//! and OpenID Connect, as pure functions. The shell routes the three paths here, makes the two
//! calls to the token endpoint (code exchange, revocation) and sends the replies.
//!
//! ```text
//! GET  <login_path>?return_to=/page  -> 302 authorization_endpoint?response_type=code&...  + flow cookie
//! GET  <callback>?code=..&state=..   -> Exchange: POST grant_type=authorization_code to the token endpoint
//!      finish_callback(answer)       -> 302 /page (or a same-site hop page) + access token, session, CSRF cookies
//! POST <logout_path>                 -> 302 end_session_endpoint?...  + every relay cookie cleared
//!                                       (after an RFC 7009 revocation of the refresh token: best
//!                                       effort, bounded by the token endpoint's timeout)
//! ```
//!
//! **One flow cookie per login.** The PKCE verifier, `state`, `nonce`, the page to return to and
//! the creation time travel in a short-lived cookie sealed with the session keys
//! ([`session::seal_json`]), named `<flow prefix>-<first 8 hex of SHA-256(state)>` so that two
//! tabs logging in at once do not overwrite each other's. It is `SameSite=Lax` (it must come
//! back on the identity provider's cross-site redirect), `HttpOnly`, `Path=/`, and lives
//! [`FLOW_MAX_AGE_S`]. The callback finds it by the `state` it receives, compares the state in
//! constant time, and clears it whatever the outcome: a callback can be completed once.
//!
//! **Errors** are a clear 400 (the browser's side: an IdP `error=`, missing or mismatched state,
//! a missing, expired or replayed flow, a refused code), 401 (an ID token or access token that
//! fails verification, a wrong nonce or audience), 502 (the token endpoint answered something
//! unusable, e.g. `invalid_client`: a configuration fault), or 503 with `Retry-After` (the
//! token endpoint or the signing keys are unavailable); never a 500. The answer is a minimal
//! HTML page with a "try again" link when the browser prefers `text/html`, else JSON
//! `{"error", "error_description"}`. No error sets a session cookie.
//!
//! Nothing here logs, and no error carries a token, code or cookie value. Time and randomness
//! are parameters.

use std::collections::BTreeMap;
use std::fmt;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::{Deserialize, Serialize};
use sha2_11::Digest as _;
use subtle::ConstantTimeEq;

use crate::config::{Config, CookieNames, RefreshConfig};
use crate::cookie::{self, CookieAttrs, SameSite};
use crate::decision::{self, Random, RequestView};
use crate::jwks::KeySet;
use crate::refresh::{self, RefreshError, TokenRequest};
use crate::reply::Reply;
use crate::session::{self, Session};
use crate::token::{self, ClaimRules, TokenError};

/// Lifetime of a flow cookie (and of a login flow), seconds.
pub const FLOW_MAX_AGE_S: u64 = 600;
/// Longest `return_to` honoured, in bytes (after encoding); a longer one becomes `/`.
pub const MAX_RETURN_TO_LEN: usize = 2048;
/// Default `login.session_lifetime_s`: one day.
pub const DEFAULT_SESSION_LIFETIME_S: u64 = 86_400;
/// At login start, more flow cookies than this present are cleaned up ...
const FLOW_COOKIES_TOLERATED: usize = 3;
/// ... down to the newest this many (the new flow makes it one more).
const FLOW_COOKIES_KEPT: usize = 2;
/// Most flow cookies unsealed at one login start; further ones are cleared unread.
const MAX_FLOW_COOKIES_READ: usize = 16;
/// Most flow cookies cleared by one answer.
const MAX_FLOW_COOKIES_CLEARED: usize = 64;
/// Most query parameters read from a login or callback URL.
const MAX_QUERY_PARAMS: usize = 64;
/// Longest configured path or URL.
const MAX_CONFIG_URL_LEN: usize = 2048;
/// Seconds a client is told to wait after an IdP or key-set outage during a callback.
const RETRY_AFTER_S: u64 = 5;

/// Parameters the relay sets itself in the authorization request; `extra_authorize_params`
/// may not override them (nor ask for another response mode or a request object).
const RESERVED_AUTHORIZE_PARAMS: &[&str] = &[
    "response_type",
    "client_id",
    "redirect_uri",
    "scope",
    "state",
    "nonce",
    "code_challenge",
    "code_challenge_method",
    "prompt",
    "response_mode",
    "request",
    "request_uri",
];

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

// ---- configuration ------------------------------------------------------------------------

/// The `login` section as written. Embed it as `login: Option<login::RawLogin>` and compile it
/// with [`LoginConfig::new`].
///
/// | field | default | meaning |
/// | --- | --- | --- |
/// | `authorization_endpoint` | required | The IdP's authorization endpoint: absolute `https` URL (`http` only for `localhost`, `127.0.0.1`, `[::1]`), may carry a query, no fragment. |
/// | `redirect_uri` | required | Registered redirect URI, same URL rules, no query. Its path is the callback path the relay serves. |
/// | `login_path` | `/auth/login` | `GET ?return_to=/page` starts a login. |
/// | `logout_path` | `/auth/logout` | `POST` logs out (`GET` is refused: a GET logout is a CSRF vector). |
/// | `scopes` | `["openid"]` | Must include `openid`; add `offline_access` where the IdP needs it for a refresh token (Auth0, oidc-provider). |
/// | `revocation_path` | none | RFC 7009 revocation endpoint path on the token endpoint's cluster; the refresh token is revoked at logout. |
/// | `end_session_endpoint` | none | OpenID RP-initiated logout; the browser is sent there with `client_id`, `id_token_hint` and `post_logout_redirect_uri`. |
/// | `post_logout_redirect` | `/` | Where logout ends: a same-origin path (resolved against the origin of `redirect_uri` for the IdP) or an absolute URL. |
/// | `session_lifetime_s` | 86400 | Absolute session length (the session's `exp`), 60 to 31536000. |
/// | `prompt` | none | OpenID `prompt`: space-separated `none`, `login`, `consent`, `select_account` (oidc-provider issues `offline_access` refresh tokens only with `consent`). |
/// | `extra_authorize_params` | `{}` | Further authorization request parameters (e.g. `audience`, `acr_values`, `ui_locales`); may not override the ones the relay sets. |
/// | `id_token_issuer` | `issuer` | The `iss` of ID tokens (and of RFC 9207 `iss` callback parameters), for IdPs whose access tokens name another issuer (Entra ID v1 access tokens with v2 ID tokens). |
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLogin {
    pub authorization_endpoint: String,
    pub redirect_uri: String,
    pub login_path: Option<String>,
    pub logout_path: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub revocation_path: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub post_logout_redirect: Option<String>,
    pub session_lifetime_s: Option<u64>,
    pub prompt: Option<String>,
    #[serde(default)]
    pub extra_authorize_params: BTreeMap<String, String>,
    pub id_token_issuer: Option<String>,
}

/// The compiled `login` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginConfig {
    pub authorization_endpoint: String,
    pub redirect_uri: String,
    /// The path of `redirect_uri`.
    pub callback_path: String,
    pub login_path: String,
    pub logout_path: String,
    /// The scopes, space-joined.
    pub scope: String,
    pub revocation_path: Option<String>,
    pub end_session_endpoint: Option<String>,
    /// As configured: where the browser goes when there is no `end_session_endpoint`.
    pub post_logout_redirect: String,
    /// Its absolute form, for the IdP's `post_logout_redirect_uri`.
    pub post_logout_redirect_uri: String,
    pub session_lifetime_s: u64,
    pub prompt: Option<String>,
    pub extra_authorize_params: Vec<(String, String)>,
    /// The expected `iss` of ID tokens when it differs from the top-level `issuer`.
    pub id_token_issuer: Option<String>,
    /// Flow cookies are `<flow_cookie_prefix>-<8 hex>`.
    pub flow_cookie_prefix: String,
}

/// Which of the login paths a request is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Login,
    Callback,
    Logout,
}

impl LoginConfig {
    /// Validates `raw`. `cookies` gives the session cookie name the flow cookie prefix derives
    /// from (`__Host-relay-session` → `__Host-relay-flow`; a name not ending in `session` gets
    /// `-flow` appended) and the other names it must not collide with.
    ///
    /// The error is `(field, problem)`, the field spelled `login.<member>`.
    pub fn new(raw: RawLogin, cookies: &CookieNames) -> Result<LoginConfig, (String, String)> {
        let err = |member: &str, problem: String| (format!("login.{member}"), problem);

        parse_url(&raw.authorization_endpoint).map_err(|p| err("authorization_endpoint", p))?;
        let redirect = parse_url(&raw.redirect_uri).map_err(|p| err("redirect_uri", p))?;
        if redirect.query.is_some() {
            return Err(err(
                "redirect_uri",
                "must not have a query (the callback is matched by path)".to_owned(),
            ));
        }
        let callback_path = redirect.path.to_owned();
        check_path(&callback_path).map_err(|p| err("redirect_uri", format!("path {p}")))?;
        let origin = format!("{}://{}", redirect.scheme, redirect.authority);

        let login_path = raw.login_path.unwrap_or_else(|| "/auth/login".to_owned());
        check_path(&login_path).map_err(|p| err("login_path", p))?;
        let logout_path = raw.logout_path.unwrap_or_else(|| "/auth/logout".to_owned());
        check_path(&logout_path).map_err(|p| err("logout_path", p))?;
        if login_path == callback_path {
            return Err(err(
                "login_path",
                "must differ from the path of redirect_uri".to_owned(),
            ));
        }
        if logout_path == callback_path || logout_path == login_path {
            return Err(err(
                "logout_path",
                "must differ from login_path and from the path of redirect_uri".to_owned(),
            ));
        }

        let scopes = raw.scopes.unwrap_or_else(|| vec!["openid".to_owned()]);
        for (i, s) in scopes.iter().enumerate() {
            let valid = !s.is_empty()
                && s.bytes()
                    .all(|b| b == 0x21 || (0x23..=0x5b).contains(&b) || (0x5d..=0x7e).contains(&b));
            if !valid {
                return Err(err(
                    &format!("scopes[{i}]"),
                    format!("{s:?} is not a scope token (RFC 6749 §3.3)"),
                ));
            }
            if scopes.iter().take(i).any(|t| t == s) {
                return Err(err(
                    &format!("scopes[{i}]"),
                    format!("duplicate scope {s:?}"),
                ));
            }
        }
        if !scopes.iter().any(|s| s == "openid") {
            return Err(err(
                "scopes",
                "must include \"openid\" (the relay verifies an ID token)".to_owned(),
            ));
        }

        if let Some(p) = &raw.revocation_path {
            check_path(p).map_err(|p| err("revocation_path", p))?;
        }
        if let Some(u) = &raw.end_session_endpoint {
            parse_url(u).map_err(|p| err("end_session_endpoint", p))?;
        }

        let post_logout_redirect = raw.post_logout_redirect.unwrap_or_else(|| "/".to_owned());
        let post_logout_redirect_uri = if post_logout_redirect.starts_with('/') {
            match check_return_to(&post_logout_redirect) {
                Some(p) if p == post_logout_redirect => format!("{origin}{p}"),
                _ => {
                    return Err(err(
                        "post_logout_redirect",
                        "must be a same-origin path such as \"/\" or an absolute https URL"
                            .to_owned(),
                    ))
                }
            }
        } else {
            parse_url(&post_logout_redirect).map_err(|p| err("post_logout_redirect", p))?;
            post_logout_redirect.clone()
        };

        let session_lifetime_s = raw.session_lifetime_s.unwrap_or(DEFAULT_SESSION_LIFETIME_S);
        if !(60..=31_536_000).contains(&session_lifetime_s) {
            return Err(err(
                "session_lifetime_s",
                "must be between 60 and 31536000 seconds".to_owned(),
            ));
        }

        if let Some(prompt) = &raw.prompt {
            let values: Vec<&str> = prompt.split(' ').collect();
            let known = values
                .iter()
                .all(|v| matches!(*v, "none" | "login" | "consent" | "select_account"));
            if !known || values.len() > 4 {
                return Err(err(
                    "prompt",
                    "must be space-separated values of none, login, consent, select_account"
                        .to_owned(),
                ));
            }
            if values.contains(&"none") && values.len() > 1 {
                return Err(err(
                    "prompt",
                    "\"none\" cannot be combined with other values".to_owned(),
                ));
            }
        }

        let mut extra_authorize_params = Vec::with_capacity(raw.extra_authorize_params.len());
        for (k, v) in raw.extra_authorize_params {
            let field = format!("extra_authorize_params.{k}");
            let valid_name = !k.is_empty()
                && k.len() <= 64
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
            if !valid_name {
                return Err(err(
                    &field,
                    "parameter names are 1 to 64 characters of A-Z a-z 0-9 _ . -".to_owned(),
                ));
            }
            if RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()) {
                return Err(err(&field, "is set by the relay itself".to_owned()));
            }
            if v.len() > 1024 || v.chars().any(char::is_control) {
                return Err(err(
                    &field,
                    "value must be at most 1024 bytes without control characters".to_owned(),
                ));
            }
            extra_authorize_params.push((k, v));
        }

        if raw
            .id_token_issuer
            .as_ref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(err("id_token_issuer", "must not be empty".to_owned()));
        }

        let flow_cookie_prefix = match cookies.session.strip_suffix("session") {
            Some(base) if !base.is_empty() => format!("{base}flow"),
            _ => format!("{}-flow", cookies.session),
        };
        let config = LoginConfig {
            authorization_endpoint: raw.authorization_endpoint,
            redirect_uri: raw.redirect_uri,
            callback_path,
            login_path,
            logout_path,
            scope: scopes.join(" "),
            revocation_path: raw.revocation_path,
            end_session_endpoint: raw.end_session_endpoint,
            post_logout_redirect,
            post_logout_redirect_uri,
            session_lifetime_s,
            prompt: raw.prompt,
            extra_authorize_params,
            id_token_issuer: raw.id_token_issuer,
            flow_cookie_prefix,
        };
        for name in [&cookies.access_token, &cookies.csrf, &cookies.session] {
            if config.is_flow_cookie(name) {
                return Err((
                    "cookies".to_owned(),
                    format!("{name:?} collides with the login flow cookies"),
                ));
            }
        }
        Ok(config)
    }

    /// Which login path `path` (the `:path`, query included) is, if any. Exact match on the
    /// part before `?`.
    pub fn route(&self, path: &str) -> Option<Route> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        if path == self.login_path {
            Some(Route::Login)
        } else if path == self.callback_path {
            Some(Route::Callback)
        } else if path == self.logout_path {
            Some(Route::Logout)
        } else {
            None
        }
    }

    /// Whether a cookie name is one of the flow cookies (`<prefix>-<8 lower-case hex>`). The
    /// shell should strip these from requests it forwards, like the other relay cookies.
    pub fn is_flow_cookie(&self, name: &str) -> bool {
        name.strip_prefix(self.flow_cookie_prefix.as_str())
            .and_then(|rest| rest.strip_prefix('-'))
            .is_some_and(|hex| {
                hex.len() == 8 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            })
    }

    /// The issuer of ID tokens: `id_token_issuer`, else the configured `issuer`.
    pub fn id_token_issuer<'a>(&'a self, config: &'a Config) -> &'a str {
        self.id_token_issuer
            .as_deref()
            .unwrap_or(&config.rules.issuer)
    }

    /// The flow cookie name for a `state`.
    pub fn flow_cookie_name(&self, state: &str) -> String {
        let digest = sha2_11::Sha256::digest(state.as_bytes());
        let mut name = String::with_capacity(self.flow_cookie_prefix.len() + 9);
        name.push_str(&self.flow_cookie_prefix);
        name.push('-');
        for b in digest.iter().take(4) {
            name.push_str(&format!("{b:02x}"));
        }
        name
    }
}

/// An absolute URL split into the parts configuration checks need.
struct Url<'a> {
    scheme: &'a str,
    authority: &'a str,
    path: &'a str,
    query: Option<&'a str>,
}

/// Parses an absolute `https` URL (`http` for loopback hosts only): printable ASCII, a host,
/// no userinfo, no fragment.
fn parse_url(s: &str) -> Result<Url<'_>, String> {
    if s.len() > MAX_CONFIG_URL_LEN {
        return Err(format!("is longer than {MAX_CONFIG_URL_LEN} bytes"));
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be ASCII without spaces or control characters".to_owned());
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        format!("{s:?} is not an absolute URL such as \"https://idp.example.com/authorize\"")
    })?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("{s:?}: the scheme must be https"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest
        .split_at_checked(end)
        .ok_or_else(|| format!("{s:?} is not a URL"))?;
    if tail.contains('#') {
        return Err(format!("{s:?}: must not have a fragment"));
    }
    if authority.contains('@') {
        return Err(format!("{s:?}: must not carry user information"));
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unterminated IPv6 address"))?;
        check_port(after, s)?;
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => {
                check_port(&format!(":{port}"), s)?;
                host
            }
            None => authority,
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if !host_ok {
        return Err(format!("{s:?}: not a valid host"));
    }
    let loopback = host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "::1";
    if scheme == "http" && !loopback {
        return Err(format!(
            "{s:?}: must be https (http only for localhost, 127.0.0.1 and [::1])"
        ));
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    Ok(Url {
        scheme,
        authority,
        path,
        query,
    })
}

/// `after` is empty or `:<1-65535>`.
fn check_port(after: &str, url: &str) -> Result<(), String> {
    if after.is_empty() {
        return Ok(());
    }
    let valid = after
        .strip_prefix(':')
        .filter(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|p| p.parse::<u16>().ok())
        .is_some_and(|p| p != 0);
    if valid {
        Ok(())
    } else {
        Err(format!("{url:?}: not a valid port"))
    }
}

/// A path the relay serves: `/…`, not `//…`, printable ASCII without `?`, `#` or `\`.
fn check_path(p: &str) -> Result<(), String> {
    let valid = p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= 1024
        && p.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'?' | b'#' | b'\\'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{p:?} must be a path starting with a single '/' (printable ASCII, no '?', '#' or '\\')"
        ))
    }
}

// ---- randomness ----------------------------------------------------------------------------

/// Fresh randomness for one login start.
#[derive(Clone, PartialEq, Eq)]
pub struct LoginRandom {
    /// The PKCE code verifier (its base64url, 43 characters).
    pub verifier: [u8; 32],
    pub state: [u8; 32],
    pub nonce: [u8; 32],
    /// AES-GCM IV for sealing the flow cookie.
    pub iv: [u8; 12],
}

impl LoginRandom {
    /// Fills every field with `fill` (e.g. `|b| getrandom::fill(b).is_ok()`); `None` when it
    /// fails for any of them.
    pub fn draw(mut fill: impl FnMut(&mut [u8]) -> bool) -> Option<LoginRandom> {
        let mut r = LoginRandom {
            verifier: [0; 32],
            state: [0; 32],
            nonce: [0; 32],
            iv: [0; 12],
        };
        let ok =
            fill(&mut r.verifier) && fill(&mut r.state) && fill(&mut r.nonce) && fill(&mut r.iv);
        ok.then_some(r)
    }
}

impl fmt::Debug for LoginRandom {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LoginRandom([redacted])")
    }
}

// ---- the flow cookie -----------------------------------------------------------------------

/// The sealed content of a flow cookie. Member names differ from the session's (`rt`), so a
/// flow never opens as a session nor a session as a flow.
#[derive(Serialize, Deserialize)]
struct Flow {
    /// PKCE code verifier.
    v: String,
    /// `state`.
    s: String,
    /// `nonce`.
    n: String,
    /// The same-origin path to return to (already sanitized).
    r: String,
    /// Creation time, unix seconds.
    t: u64,
}

/// Why a flow cookie could not be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowProblem {
    Invalid,
    Expired,
}

fn open_flow(refresh: &RefreshConfig, value: &str, now: u64) -> Result<Flow, FlowProblem> {
    let (flow, _) = session::unseal_json::<Flow>(&refresh.session_keys, value)
        .map_err(|_| FlowProblem::Invalid)?;
    if now >= flow.t.saturating_add(FLOW_MAX_AGE_S) {
        return Err(FlowProblem::Expired);
    }
    Ok(flow)
}

/// Attributes of flow cookies: `Path=/`, `SameSite=Lax`, `Secure` as configured.
fn flow_attrs(attrs: &CookieAttrs) -> CookieAttrs {
    CookieAttrs {
        path: "/".to_owned(),
        same_site: SameSite::Lax,
        secure: attrs.secure,
    }
}

fn clear_flow_cookie(name: &str, attrs: &CookieAttrs) -> String {
    let attrs = flow_attrs(attrs);
    cookie::set_cookie(name, "", Some(0), &attrs, SameSite::Lax, true)
}

/// The flow cookies present, first occurrence of each name, in order.
fn flow_cookies<'h>(login: &LoginConfig, cookie_header: &'h str) -> Vec<(&'h str, &'h str)> {
    let mut out: Vec<(&str, &str)> = Vec::new();
    for (name, value) in cookie::pairs(cookie_header) {
        if login.is_flow_cookie(name) && !out.iter().any(|(n, _)| *n == name) {
            out.push((name, value));
        }
    }
    out
}

/// Names of flow cookies to clear at a login start: unreadable and expired ones always; when
/// more than [`FLOW_COOKIES_TOLERATED`] are present, all but the newest [`FLOW_COOKIES_KEPT`].
fn stale_flow_cookies(
    login: &LoginConfig,
    refresh: &RefreshConfig,
    cookie_header: &str,
    now: u64,
) -> Vec<String> {
    let present = flow_cookies(login, cookie_header);
    // (name, creation second, position in the header): browsers list older cookies first, so
    // the position breaks ties between flows started in the same second.
    let mut readable: Vec<(&str, u64, usize)> = Vec::new();
    let mut stale: Vec<&str> = Vec::new();
    for (i, (name, value)) in present.iter().enumerate() {
        let flow = if i < MAX_FLOW_COOKIES_READ {
            open_flow(refresh, value, now).ok()
        } else {
            None
        };
        match flow {
            Some(f) => readable.push((name, f.t, i)),
            None => stale.push(name),
        }
    }
    if present.len() > FLOW_COOKIES_TOLERATED {
        // Newest first; the first FLOW_COOKIES_KEPT stay.
        readable.sort_by_key(|&(_, t, i)| std::cmp::Reverse((t, i)));
        stale.extend(readable.iter().skip(FLOW_COOKIES_KEPT).map(|(n, _, _)| *n));
    }
    stale
        .into_iter()
        .take(MAX_FLOW_COOKIES_CLEARED)
        .map(str::to_owned)
        .collect()
}

// ---- URLs, queries, return_to --------------------------------------------------------------

/// Percent-encodes everything but RFC 3986 unreserved characters (so a space is `%20`, which
/// both form decoders and plain percent-decoders read as a space).
pub fn query_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `base` with `params` appended as a query (`?` or `&` as `base` needs).
fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(base.len() + 64 * params.len());
    out.push_str(base);
    let mut sep = match base.split_once('?') {
        None => "?",
        Some((_, q)) if q.is_empty() || q.ends_with('&') => "",
        Some(_) => "&",
    };
    for (k, v) in params {
        out.push_str(sep);
        out.push_str(&query_encode(k));
        out.push('=');
        out.push_str(&query_encode(v));
        sep = "&";
    }
    out
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Percent-decoding (`+` as a space when `plus`); malformed escapes stay as they are.
fn percent_decode(s: &[u8], plus: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'%', [h, l, more @ ..]) => match (hex_value(*h), hex_value(*l)) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    rest = more;
                }
                _ => {
                    out.push(b);
                    rest = tail;
                }
            },
            (b'+', _) if plus => {
                out.push(b' ');
                rest = tail;
            }
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    out
}

/// Parses a query string (`application/x-www-form-urlencoded`: percent-decoding, `+` as a
/// space; invalid UTF-8 replaced). At most 64 parameters are read.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PARAMS)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let decode =
                |s: &str| String::from_utf8_lossy(&percent_decode(s.as_bytes(), true)).into_owned();
            (decode(k), decode(v))
        })
        .collect()
}

/// The only value of `name`: `Ok(None)` when absent, `Err(())` when repeated (RFC 6749 §3.1:
/// parameters must not be included more than once).
fn single<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first)
}

/// `raw` when it is a safe same-origin path to return to, percent-encoding spaces, non-ASCII
/// and characters not allowed in a URL; else `/`. See [`check_return_to`].
pub fn safe_return_to(raw: &str) -> String {
    check_return_to(raw).unwrap_or_else(|| "/".to_owned())
}

/// A return path is honoured only when it is unmistakably a path on this origin: it starts with
/// a single `/` (so no scheme and no `//host`), contains no `\` (browsers read it as `/`) and no
/// control character (browsers drop tabs and newlines, so `/\t/evil` would become `//evil`),
/// its percent-decoded forms (up to three rounds) neither start with `//` or `/\` nor hold a
/// control character, and its encoded form is at most [`MAX_RETURN_TO_LEN`] bytes.
fn check_return_to(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_TO_LEN {
        return None;
    }
    if !raw.starts_with('/') || raw.starts_with("//") || raw.contains('\\') {
        return None;
    }
    if raw.chars().any(char::is_control) {
        return None;
    }
    let mut current: Vec<u8> = raw.as_bytes().to_vec();
    for _ in 0..3 {
        let decoded = percent_decode(&current, false);
        if decoded == current {
            break;
        }
        if decoded.starts_with(b"//")
            || decoded.starts_with(b"/\\")
            || decoded.iter().any(|b| b.is_ascii_control())
        {
            return None;
        }
        current = decoded;
    }
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        let keep = (0x21..=0x7e).contains(&b)
            && !matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}');
        if keep {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    (out.len() <= MAX_RETURN_TO_LEN).then_some(out)
}

// ---- content negotiation and navigation ----------------------------------------------------

/// The `q` of `text/html` and of `application/json` in an Accept header (`None`: not listed
/// explicitly; wildcards do not count).
fn accept_q(accept: &str) -> (Option<f32>, Option<f32>) {
    let (mut html, mut json) = (None::<f32>, None::<f32>);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(Some(1.0), |v| {
                v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
            })
            .unwrap_or(0.0);
        let slot = if media.eq_ignore_ascii_case("text/html") {
            &mut html
        } else if media.eq_ignore_ascii_case("application/json") {
            &mut json
        } else {
            continue;
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    (html, json)
}

/// Whether an error should be an HTML page: the Accept header lists `text/html` with a higher
/// preference than `application/json` (browsers' navigations do; `fetch`'s `*/*` does not).
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    match accept_q(accept) {
        (Some(h), Some(j)) => h > 0.0 && h > j,
        (Some(h), None) => h > 0.0,
        _ => false,
    }
}

/// Whether the client explicitly prefers JSON to HTML (a `fetch` with `Accept:
/// application/json`).
pub fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    match accept_q(accept) {
        (Some(h), Some(j)) => j > 0.0 && j > h,
        (None, Some(j)) => j > 0.0,
        _ => false,
    }
}

/// Whether a request is a browser navigation (to be sent to the login page rather than given a
/// 401): `Sec-Fetch-Mode: navigate`, or, from browsers that send no Fetch Metadata, a `GET`
/// accepting `text/html`.
pub fn is_navigation(method: &str, sec_fetch_mode: Option<&str>, accept: Option<&str>) -> bool {
    match sec_fetch_mode {
        Some(mode) => mode.trim().eq_ignore_ascii_case("navigate"),
        None => {
            method == "GET" && accept.is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
        }
    }
}

/// 302 to the login path with `return_to` = the original path and query (when safe; else `/`).
pub fn login_redirect(login: &LoginConfig, path_and_query: &str) -> Reply {
    let return_to = safe_return_to(path_and_query);
    no_referrer(Reply::redirect(
        &with_query(&login.login_path, &[("return_to", &return_to)]),
        "login_redirect",
    ))
}

fn no_referrer(mut reply: Reply) -> Reply {
    reply
        .headers
        .push(("referrer-policy", "no-referrer".to_string()));
    reply
}

// ---- errors ---------------------------------------------------------------------------------

/// Why a login callback failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum LoginError {
    /// The IdP answered `error=` (one of the known codes, else `invalid_request`).
    Idp(&'static str),
    /// No `code` or no `state`, or one of them repeated.
    BadCallback,
    /// An RFC 9207 `iss` parameter naming another issuer (mix-up attack).
    WrongIssuer,
    /// No flow cookie for this `state`: not started in this browser, or already completed.
    FlowMissing,
    /// The flow cookie does not unseal.
    FlowInvalid,
    /// The flow is older than [`FLOW_MAX_AGE_S`].
    FlowExpired,
    /// The flow's state differs from the callback's.
    StateMismatch,
    /// The token endpoint said `invalid_grant`: the code expired or was used already.
    CodeRejected,
    /// The token endpoint is unavailable (no answer, timeout, 5xx).
    IdpUnavailable(&'static str),
    /// The token endpoint answered something unusable (another 4xx such as `invalid_client`,
    /// an unparseable body): a configuration fault on one side or the other.
    ExchangeFailed(&'static str),
    /// The token response has no ID token.
    IdTokenMissing,
    IdTokenInvalid(TokenError),
    /// The ID token's `nonce` is not this flow's.
    NonceMismatch,
    AccessTokenInvalid(TokenError),
    /// No key set has been loaded yet.
    KeysNotReady,
}

impl LoginError {
    /// HTTP status of the answer.
    pub fn status(&self) -> u32 {
        match self {
            LoginError::Idp(_)
            | LoginError::BadCallback
            | LoginError::WrongIssuer
            | LoginError::FlowMissing
            | LoginError::FlowInvalid
            | LoginError::FlowExpired
            | LoginError::StateMismatch
            | LoginError::CodeRejected => 400,
            LoginError::IdTokenMissing
            | LoginError::IdTokenInvalid(_)
            | LoginError::NonceMismatch
            | LoginError::AccessTokenInvalid(_) => 401,
            LoginError::ExchangeFailed(_) => 502,
            LoginError::IdpUnavailable(_) | LoginError::KeysNotReady => 503,
        }
    }

    /// Stable snake_case reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            LoginError::Idp(_) => "login_idp_error",
            LoginError::BadCallback => "login_bad_callback",
            LoginError::WrongIssuer => "login_wrong_issuer",
            LoginError::FlowMissing => "login_flow_missing",
            LoginError::FlowInvalid => "login_flow_invalid",
            LoginError::FlowExpired => "login_flow_expired",
            LoginError::StateMismatch => "login_state_mismatch",
            LoginError::CodeRejected => "login_code_rejected",
            LoginError::IdpUnavailable(_) => "login_idp_unavailable",
            LoginError::ExchangeFailed(_) => "login_exchange_failed",
            LoginError::IdTokenMissing => "login_id_token_missing",
            LoginError::IdTokenInvalid(_) => "login_id_token_invalid",
            LoginError::NonceMismatch => "login_nonce_mismatch",
            LoginError::AccessTokenInvalid(_) => "login_access_token_invalid",
            LoginError::KeysNotReady => "login_keys_not_ready",
        }
    }

    /// The `error` member of the JSON answer.
    fn error(&self) -> &'static str {
        match self {
            LoginError::Idp(code) => code,
            LoginError::CodeRejected => "invalid_grant",
            LoginError::IdTokenMissing
            | LoginError::IdTokenInvalid(_)
            | LoginError::NonceMismatch
            | LoginError::AccessTokenInvalid(_) => "invalid_token",
            LoginError::ExchangeFailed(_) => "bad_gateway",
            LoginError::IdpUnavailable(_) | LoginError::KeysNotReady => "temporarily_unavailable",
            LoginError::BadCallback
            | LoginError::WrongIssuer
            | LoginError::FlowMissing
            | LoginError::FlowInvalid
            | LoginError::FlowExpired
            | LoginError::StateMismatch => "invalid_request",
        }
    }
}

impl fmt::Display for LoginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LoginError::Idp(code) => {
                write!(f, "the identity provider did not sign you in ({code})")
            }
            LoginError::BadCallback => f.write_str("the sign-in response lacks its code or state"),
            LoginError::WrongIssuer => f.write_str("the sign-in response names another issuer"),
            LoginError::FlowMissing => f.write_str(
                "this sign-in was not started in this browser, or has already been completed",
            ),
            LoginError::FlowInvalid => f.write_str("the sign-in state cookie is not valid"),
            LoginError::FlowExpired => f.write_str("the sign-in took too long"),
            LoginError::StateMismatch => {
                f.write_str("the sign-in response does not match the sign-in started here")
            }
            LoginError::CodeRejected => f.write_str(
                "the identity provider refused the authorization code (expired or already used)",
            ),
            LoginError::IdpUnavailable(reason) => {
                write!(
                    f,
                    "the identity provider is unavailable ({reason}); try again shortly"
                )
            }
            LoginError::ExchangeFailed(reason) => write!(
                f,
                "the identity provider's token endpoint gave an unusable answer ({reason})"
            ),
            LoginError::IdTokenMissing => f.write_str("the identity provider returned no ID token"),
            LoginError::IdTokenInvalid(e) => write!(f, "the ID token was refused ({})", e.code()),
            LoginError::NonceMismatch => {
                f.write_str("the ID token does not belong to this sign-in (nonce)")
            }
            LoginError::AccessTokenInvalid(e) => {
                write!(f, "the access token was refused ({})", e.code())
            }
            LoginError::KeysNotReady => {
                f.write_str("signing keys are not loaded yet; try again shortly")
            }
        }
    }
}

impl std::error::Error for LoginError {}

impl From<RefreshError> for LoginError {
    fn from(e: RefreshError) -> LoginError {
        match e {
            RefreshError::InvalidGrant => LoginError::CodeRejected,
            RefreshError::Transient(reason @ ("no_response" | "token_endpoint_5xx")) => {
                LoginError::IdpUnavailable(reason)
            }
            RefreshError::Transient(reason) => LoginError::ExchangeFailed(reason),
        }
    }
}

/// Escapes text for HTML content and quoted attribute values.
fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(title: &str, head_extra: &str, body: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">{head_extra}\
         <title>{}</title></head>\n<body>{body}</body></html>\n",
        html_escape(title)
    )
}

/// The answer for a failed callback: HTML (with a link that starts a new login returning to
/// `return_to`) or JSON, no-store, `Retry-After` on 503, and `set_cookies` (the used flow
/// cookie cleared). Never a session cookie.
fn error_reply(
    login: &LoginConfig,
    err: LoginError,
    html: bool,
    return_to: &str,
    set_cookies: Vec<String>,
) -> Reply {
    let description = err.to_string();
    let mut reply = if html {
        let retry = with_query(&login.login_path, &[("return_to", return_to)]);
        let body = format!(
            "<h1>Sign-in failed</h1><p>{}.</p><p><a href=\"{}\">Try again</a></p>",
            html_escape(&description),
            html_escape(&retry)
        );
        Reply::html(err.status(), err.code(), page("Sign-in failed", "", &body))
    } else {
        Reply::error(err.status(), err.code(), err.error(), &description)
    };
    if err.status() == 503 {
        reply
            .headers
            .push(("retry-after", RETRY_AFTER_S.to_string()));
    }
    for c in set_cookies {
        reply.headers.push(("set-cookie", c));
    }
    no_referrer(reply)
}

fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = Reply::error(
        405,
        "login_method_not_allowed",
        "invalid_request",
        &format!("use {allow} on this path"),
    );
    r.headers.push(("allow", allow.to_string()));
    r
}

// ---- 1. login start --------------------------------------------------------------------------

/// Answers `GET <login_path>?return_to=…`: a 302 to the authorization endpoint and the sealed
/// flow cookie (plus `Max-Age=0` for stale flow cookies). `query` is the request's query
/// string (after `?`), `cookie_header` its Cookie header.
pub fn start(
    config: &Config,
    login: &LoginConfig,
    refresh: &RefreshConfig,
    query: &str,
    cookie_header: &str,
    now: u64,
    random: &LoginRandom,
) -> Reply {
    let params = parse_query(query);
    let return_to = params
        .iter()
        .find(|(k, _)| k == "return_to")
        .map_or_else(|| "/".to_owned(), |(_, v)| safe_return_to(v));
    let flow = Flow {
        v: URL_SAFE_NO_PAD.encode(random.verifier),
        s: URL_SAFE_NO_PAD.encode(random.state),
        n: URL_SAFE_NO_PAD.encode(random.nonce),
        r: return_to,
        t: now,
    };
    let challenge = URL_SAFE_NO_PAD.encode(sha2_11::Sha256::digest(flow.v.as_bytes()));
    let mut authorize: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &refresh.client_id),
        ("redirect_uri", &login.redirect_uri),
        ("scope", &login.scope),
        ("state", &flow.s),
        ("nonce", &flow.n),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    if let Some(prompt) = &login.prompt {
        authorize.push(("prompt", prompt));
    }
    for (k, v) in &login.extra_authorize_params {
        authorize.push((k, v));
    }
    let location = with_query(&login.authorization_endpoint, &authorize);

    let attrs = &config.cookies.attrs;
    let name = login.flow_cookie_name(&flow.s);
    let sealed = session::seal_json(&refresh.session_keys, &flow, random.iv);
    let mut reply = no_referrer(Reply::redirect(&location, "login_start"));
    reply.headers.push((
        "set-cookie",
        cookie::set_cookie(
            &name,
            &sealed,
            Some(FLOW_MAX_AGE_S),
            &flow_attrs(attrs),
            SameSite::Lax,
            true,
        ),
    ));
    for stale in stale_flow_cookies(login, refresh, cookie_header, now) {
        if stale != name {
            reply
                .headers
                .push(("set-cookie", clear_flow_cookie(&stale, attrs)));
        }
    }
    reply
}

// ---- 2. callback -----------------------------------------------------------------------------

/// A code exchange in flight: what [`finish_callback`] needs once the token endpoint answers.
pub struct PendingCallback {
    flow_cookie: String,
    nonce: String,
    return_to: String,
    html: bool,
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

impl PendingCallback {
    /// The same-origin path the browser will be sent to.
    pub fn return_to(&self) -> &str {
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
    if iss.is_some_and(|i| i != login.id_token_issuer(config)) {
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
    let request = refresh::token_request(
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
pub enum Finish {
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
        issuer: login.id_token_issuer(config).to_owned(),
        audiences: vec![client_id.to_owned()],
        required_claims: Vec::new(),
        algorithms: config.rules.algorithms,
        clock_skew_s: config.rules.clock_skew_s,
        forward_claims: vec![("nonce".to_owned(), "nonce".to_owned())],
    }
}

/// Completes a callback with the token endpoint's answer (`status` None: no answer; `body` at
/// most [`refresh::MAX_RESPONSE_BYTES`]): verifies the ID token (signature, issuer, audience =
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
#[allow(clippy::too_many_arguments)]
pub fn finish_callback(
    config: &Config,
    login: &LoginConfig,
    keys: Option<&KeySet>,
    pending: &PendingCallback,
    status: Option<u32>,
    body: &[u8],
    now: u64,
    rand: &Random,
    allow_kid_refetch: bool,
) -> Finish {
    let attrs = &config.cookies.attrs;
    let fail = |err: LoginError| {
        Finish::Respond(error_reply(
            login,
            err,
            pending.html,
            &pending.return_to,
            vec![clear_flow_cookie(&pending.flow_cookie, attrs)],
        ))
    };
    let Some(refresh) = &config.refresh else {
        return fail(LoginError::ExchangeFailed("not_configured"));
    };
    let tokens = match refresh::parse_token_response(status, body) {
        Ok(t) => t,
        Err(e) => return fail(e.into()),
    };
    let Some(id_token) = tokens.id_token.as_deref() else {
        return fail(LoginError::IdTokenMissing);
    };
    let Some(keys) = keys else {
        return fail(LoginError::KeysNotReady);
    };
    let id = match token::verify(
        id_token,
        keys,
        &id_token_rules(config, login, &refresh.client_id),
        now,
    ) {
        Ok(v) => v,
        Err(TokenError::UnknownKid) if allow_kid_refetch => return Finish::UnknownKid,
        Err(e) => return fail(LoginError::IdTokenInvalid(e)),
    };
    let nonce_ok = id
        .forwarded
        .iter()
        .find(|(h, _)| h == "nonce")
        .is_some_and(|(_, n)| {
            n.len() == pending.nonce.len()
                && bool::from(n.as_bytes().ct_eq(pending.nonce.as_bytes()))
        });
    if !nonce_ok {
        return fail(LoginError::NonceMismatch);
    }
    let at = tokens.access_token.as_str();
    let access = match token::verify(at, keys, &config.rules, now) {
        Ok(v) => v,
        Err(TokenError::UnknownKid) if allow_kid_refetch => return Finish::UnknownKid,
        Err(e) => return fail(LoginError::AccessTokenInvalid(e)),
    };

    // The request's cookies without the CSRF cookie: a login always issues a fresh CSRF token
    // (one planted before the login must not survive it).
    let header: String = cookie::pairs(&pending.cookie_header)
        .filter(|(n, _)| *n != config.cookies.csrf)
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("; ");
    let double_submit = config.csrf.as_ref().is_some_and(|c| c.double_submit);
    let mut cookies = decision::access_token_cookies(config, &header, at, access.exp, now);
    let reason = match &tokens.refresh_token {
        Some(rt) => {
            let session = Session {
                rt: rt.clone(),
                exp: Some(now.saturating_add(login.session_lifetime_s)),
                id_token: Some(id_token.to_owned()),
            };
            cookies.extend(decision::session_cookies(
                config, refresh, &header, &session, now, rand,
            ));
            "login"
        }
        None => {
            for stale in session::stale_chunks(&header, &config.cookies.session, &[]) {
                cookies.push(cookie::clear_cookie(&stale, attrs));
            }
            if double_submit {
                cookies.push(decision::csrf_cookie(config, &header, rand));
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
    Finish::Respond(no_referrer(reply))
}

// ---- 4. logout -------------------------------------------------------------------------------

/// A logout: the answer, and the refresh-token revocation to send (fire and forget) when the
/// request carried a valid session and `revocation_path` is configured.
#[derive(Debug)]
pub struct Logout {
    pub revocation: Option<TokenRequest>,
    pub reply: Reply,
}

/// RFC 7009 revocation of `refresh_token` at `path` on the token endpoint's cluster, with the
/// configured client authentication.
pub fn revocation_request(
    refresh: &RefreshConfig,
    path: &str,
    refresh_token: &str,
) -> TokenRequest {
    let mut request = refresh::token_request(
        refresh,
        &[
            ("token", refresh_token),
            ("token_type_hint", "refresh_token"),
        ],
    );
    for (name, value) in request.headers.iter_mut() {
        if *name == ":path" {
            *value = path.to_owned();
        }
    }
    request
}

/// Answers `POST <logout_path>` (the caller has checked CSRF): every relay cookie cleared (the
/// access token and session via `decision::clear_relay_cookies`, the CSRF cookie, any flow
/// cookies), then the browser goes to the IdP's `end_session_endpoint` (`client_id`,
/// `id_token_hint` when the session kept one, `post_logout_redirect_uri`), or to
/// `post_logout_redirect` without one. With `json` (the client prefers JSON: a `fetch`, which
/// cannot follow a cross-origin redirect into a page) the answer is `200 {"redirect_to": url}`
/// instead of the 302, for the page to navigate itself; that URL carries no `id_token_hint`,
/// because a JSON body is readable by JavaScript and no token may be.
pub fn logout(
    config: &Config,
    login: &LoginConfig,
    cookie_header: &str,
    json: bool,
    now: u64,
) -> Logout {
    let session = config.refresh.as_ref().and_then(|refresh| {
        let sealed = session::read_chunked(cookie_header, &config.cookies.session)?;
        session::unseal(&refresh.session_keys, &sealed, now)
            .ok()
            .map(|u| (refresh, u.session))
    });
    let revocation = session.as_ref().and_then(|(refresh, s)| {
        let path = login.revocation_path.as_deref()?;
        Some(revocation_request(refresh, path, &s.rt))
    });
    let location = match &login.end_session_endpoint {
        Some(end) => {
            let client_id = config.refresh.as_ref().map_or("", |r| r.client_id.as_str());
            let mut params: Vec<(&str, &str)> = vec![("client_id", client_id)];
            if let Some(hint) = session.as_ref().and_then(|(_, s)| s.id_token.as_deref()) {
                if !json {
                    params.push(("id_token_hint", hint));
                }
            }
            params.push(("post_logout_redirect_uri", &login.post_logout_redirect_uri));
            with_query(end, &params)
        }
        None => login.post_logout_redirect.clone(),
    };

    let attrs = &config.cookies.attrs;
    let mut cookies = decision::clear_relay_cookies(config, cookie_header);
    cookies.push(cookie::clear_cookie(&config.cookies.csrf, attrs));
    for (name, _) in flow_cookies(login, cookie_header)
        .into_iter()
        .take(MAX_FLOW_COOKIES_CLEARED)
    {
        cookies.push(clear_flow_cookie(name, attrs));
    }
    let mut reply = if json {
        let mut r = Reply::error(200, "logout", "", "");
        r.body = serde_json::json!({ "redirect_to": location }).to_string();
        r
    } else {
        Reply::redirect(&location, "logout")
    };
    for c in cookies {
        reply.headers.push(("set-cookie", c));
    }
    Logout {
        revocation,
        reply: no_referrer(reply),
    }
}

// ---- dispatch --------------------------------------------------------------------------------

/// What the shell does with a request on one of the login paths.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this answer.
    Respond(Reply),
    /// Pause the request, POST `request` to the token endpoint's cluster (timeout
    /// `token_endpoint.timeout_ms`), then call [`finish_callback`] with the answer.
    Exchange {
        request: TokenRequest,
        pending: PendingCallback,
    },
    /// Send `logout.reply` now; dispatch `logout.revocation`, if any, without waiting for it.
    Logout(Logout),
}

/// Handles a request to one of the login paths, or `None` when it is not for one (carry on
/// with `decision::decide`). Methods: login and callback `GET` only, logout `POST` only
/// (anything else: 405 with `Allow`). The logout's CSRF check is the caller's, before this.
pub fn handle(
    config: &Config,
    login: &LoginConfig,
    req: &RequestView<'_>,
    now: u64,
    random: &LoginRandom,
) -> Option<LoginStep> {
    let path = req.path();
    let route = login.route(&path)?;
    let Some(refresh) = &config.refresh else {
        // Configuration refuses `login` without sessions; never reached.
        return Some(LoginStep::Respond(Reply::unavailable(
            "login_not_configured",
            "login needs session_keys and token_endpoint",
            60,
        )));
    };
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let cookie_bytes = req.cookie();
    let cookie_header = cookie_bytes
        .as_deref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("");
    let method = req.get_str(":method").unwrap_or("");
    let accept = req.get_str("accept");
    Some(match (route, method) {
        (Route::Login, "GET") => LoginStep::Respond(start(
            config,
            login,
            refresh,
            query,
            cookie_header,
            now,
            random,
        )),
        (Route::Callback, "GET") => {
            match callback(
                config,
                login,
                refresh,
                query,
                cookie_header,
                wants_html(accept),
                now,
            ) {
                Ok((request, pending)) => LoginStep::Exchange { request, pending },
                Err(reply) => LoginStep::Respond(reply),
            }
        }
        (Route::Logout, "POST") => LoginStep::Logout(logout(
            config,
            login,
            cookie_header,
            prefers_json(accept),
            now,
        )),
        (Route::Logout, _) => LoginStep::Respond(method_not_allowed("POST")),
        (Route::Login | Route::Callback, _) => LoginStep::Respond(method_not_allowed("GET")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, AUD, ISS, NOW};
    use serde_json::{json, Value};

    const SESSION: &str = "__Host-relay-session";
    const AT: &str = "__Host-relay-at";
    const CSRF: &str = "__Host-relay-csrf";

    fn merge(base: &mut Value, extra: Value) {
        let obj = base.as_object_mut().unwrap();
        for (k, v) in extra.as_object().unwrap() {
            if v.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), v.clone());
            }
        }
    }

    /// A configuration with sessions, a confidential client and double-submit CSRF.
    fn config(extra: Value) -> Config {
        let mut v = json!({
            "session_keys": [{"kid": "k1", "key": testkit::b64(&[7u8; 32])}],
            "token_endpoint": {"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"},
            "client_id": AUD,
            "client_secret": "s3cret",
            "csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true},
        });
        merge(&mut v, extra);
        testkit::config(v)
    }

    fn raw_login(extra: Value) -> Value {
        let mut v = json!({
            "authorization_endpoint": "https://auth.example.com/oauth2/authorize",
            "redirect_uri": "https://app.example.com/auth/callback",
            "login_path": "/auth/login",
            "logout_path": "/auth/logout",
            "scopes": ["openid", "offline_access"],
            "revocation_path": "/oauth2/revoke",
            "end_session_endpoint": "https://auth.example.com/logout",
            "post_logout_redirect": "/"
        });
        merge(&mut v, extra);
        v
    }

    fn try_login(c: &Config, extra: Value) -> Result<LoginConfig, (String, String)> {
        let raw: RawLogin = serde_json::from_value(raw_login(extra)).unwrap();
        LoginConfig::new(raw, &c.cookies)
    }

    fn login(c: &Config) -> LoginConfig {
        try_login(c, json!({})).unwrap()
    }

    fn refresh(c: &Config) -> &RefreshConfig {
        c.refresh.as_ref().unwrap()
    }

    fn random(b: u8) -> LoginRandom {
        LoginRandom {
            verifier: [b; 32],
            state: [b.wrapping_add(1); 32],
            nonce: [b.wrapping_add(2); 32],
            iv: [b.wrapping_add(3); 12],
        }
    }

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    fn set_cookies(r: &Reply) -> Vec<&str> {
        r.headers
            .iter()
            .filter(|(n, _)| *n == "set-cookie")
            .map(|(_, v)| v.as_str())
            .collect()
    }

    /// `(name, value, max-age)` of each Set-Cookie.
    fn parsed_cookies(r: &Reply) -> Vec<(String, String, Option<u64>)> {
        set_cookies(r)
            .iter()
            .map(|c| {
                let mut parts = c.split("; ");
                let (n, v) = parts.next().unwrap().split_once('=').unwrap();
                let max_age = parts
                    .find_map(|p| p.strip_prefix("Max-Age="))
                    .map(|m| m.parse().unwrap());
                (n.to_string(), v.to_string(), max_age)
            })
            .collect()
    }

    /// Names set with a value (not cleared).
    fn set_names(r: &Reply) -> Vec<String> {
        parsed_cookies(r)
            .into_iter()
            .filter(|(_, v, m)| !v.is_empty() && *m != Some(0))
            .map(|(n, _, _)| n)
            .collect()
    }

    fn cleared_names(r: &Reply) -> Vec<String> {
        parsed_cookies(r)
            .into_iter()
            .filter(|(_, _, m)| *m == Some(0))
            .map(|(n, _, _)| n)
            .collect()
    }

    /// The Cookie header a browser would send after receiving `r`.
    fn jar(r: &Reply) -> String {
        parsed_cookies(r)
            .into_iter()
            .filter(|(_, v, m)| !v.is_empty() && *m != Some(0))
            .map(|(n, v, _)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn location_params(location: &str) -> Vec<(String, String)> {
        parse_query(location.split_once('?').unwrap().1)
    }

    fn param<'a>(params: &'a [(String, String)], name: &str) -> &'a str {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no {name}"))
    }

    /// Starts a login; returns the reply, the state and the flow cookie as `name=value`.
    fn started(
        c: &Config,
        l: &LoginConfig,
        return_to: &str,
        b: u8,
        now: u64,
    ) -> (Reply, String, String) {
        let q = format!("return_to={}", query_encode(return_to));
        let r = start(c, l, refresh(c), &q, "", now, &random(b));
        let state = param(&location_params(header(&r, "location").unwrap()), "state").to_string();
        let cookie = jar(&r);
        (r, state, cookie)
    }

    fn id_claims(nonce: &str) -> Value {
        json!({"iss": ISS, "aud": AUD, "sub": "alice", "nonce": nonce, "exp": NOW + 300, "iat": NOW})
    }

    fn token_body(id_token: Option<&str>, rt: Option<&str>) -> Vec<u8> {
        let mut v = json!({"access_token": testkit::sign(&testkit::claims()), "token_type": "Bearer", "expires_in": 300});
        if let Some(i) = id_token {
            v["id_token"] = json!(i);
        }
        if let Some(r) = rt {
            v["refresh_token"] = json!(r);
        }
        v.to_string().into_bytes()
    }

    fn nonce_of(r: &LoginRandom) -> String {
        URL_SAFE_NO_PAD.encode(r.nonce)
    }

    /// A started login and its callback, up to the exchange.
    fn exchange(
        c: &Config,
        l: &LoginConfig,
        extra_cookies: &str,
    ) -> (TokenRequest, PendingCallback) {
        let (_, state, flow) = started(c, l, "/app/page?x=1", 1, NOW);
        let cookies = format!("{flow}{extra_cookies}");
        callback(
            c,
            l,
            refresh(c),
            &format!("code=the-code&state={state}"),
            &cookies,
            false,
            NOW,
        )
        .unwrap()
    }

    fn finish(
        c: &Config,
        l: &LoginConfig,
        p: &PendingCallback,
        status: Option<u32>,
        body: &[u8],
    ) -> Reply {
        match finish_callback(
            c,
            l,
            Some(testkit::inline_keys(c)),
            p,
            status,
            body,
            NOW,
            &Random::fixed(9),
            true,
        ) {
            Finish::Respond(r) => r,
            Finish::UnknownKid => panic!("unexpected UnknownKid"),
        }
    }

    fn json_body(r: &Reply) -> Value {
        serde_json::from_str(&r.body).unwrap()
    }

    // ---- configuration ----

    #[test]
    fn example_configuration_compiles() {
        let c = config(json!({}));
        let l = login(&c);
        assert_eq!(l.callback_path, "/auth/callback");
        assert_eq!(l.scope, "openid offline_access");
        assert_eq!(l.flow_cookie_prefix, "__Host-relay-flow");
        assert_eq!(l.post_logout_redirect_uri, "https://app.example.com/");
        assert_eq!(l.session_lifetime_s, DEFAULT_SESSION_LIFETIME_S);
        assert_eq!(l.route("/auth/login?return_to=/x"), Some(Route::Login));
        assert_eq!(l.route("/auth/callback?code=1"), Some(Route::Callback));
        assert_eq!(l.route("/auth/logout"), Some(Route::Logout));
        assert_eq!(l.route("/auth/login/"), None);
        assert_eq!(l.route("/api/x"), None);

        // Only the two URLs are required.
        let raw: RawLogin = serde_json::from_value(json!({
            "authorization_endpoint": "http://127.0.0.1:9000/auth?tenant=a",
            "redirect_uri": "http://localhost:8080/cb",
            "post_logout_redirect": "/bye?x=1",
            "prompt": "login consent",
            "extra_authorize_params": {"audience": "https://api", "ui_locales": "de en"},
        }))
        .unwrap();
        let l = LoginConfig::new(raw, &c.cookies).unwrap();
        assert_eq!(
            (l.login_path.as_str(), l.logout_path.as_str()),
            ("/auth/login", "/auth/logout")
        );
        assert_eq!(l.scope, "openid");
        assert_eq!(l.revocation_path, None);
        assert_eq!(l.end_session_endpoint, None);
        assert_eq!(l.post_logout_redirect_uri, "http://localhost:8080/bye?x=1");
        assert_eq!(l.extra_authorize_params.len(), 2);
    }

    #[test]
    fn flow_cookie_prefix_derives_from_the_session_name() {
        for (session, prefix) in [
            ("__Host-relay-session", "__Host-relay-flow"),
            ("my_session", "my_flow"),
            ("session", "session-flow"),
            ("sess", "sess-flow"),
        ] {
            let c = config(
                json!({"cookies": {"access_token": "at", "session": session, "csrf": "x",
                                              "path": "/", "same_site": "Lax", "secure": true}}),
            );
            let l = login(&c);
            assert_eq!(l.flow_cookie_prefix, prefix);
            let name = l.flow_cookie_name("some-state");
            assert!(
                l.is_flow_cookie(&name) && name.len() == prefix.len() + 9,
                "{name}"
            );
            assert!(cookie::is_valid_name(&name));
            assert!(!l.is_flow_cookie(session));
        }
        let l = login(&config(json!({})));
        for n in [
            "__Host-relay-flow",
            "__Host-relay-flow-",
            "__Host-relay-flow-0123456",
            "__Host-relay-flow-0123456G",
            "__Host-relay-flow-ABCDEF01",
            "__Host-relay-flow-012345678",
            "x__Host-relay-flow-01234567",
        ] {
            assert!(!l.is_flow_cookie(n), "{n}");
        }
        // A cookie name that would collide with the flow cookies is refused.
        let c = config(
            json!({"cookies": {"access_token": "__Host-relay-flow-0badcafe", "session": SESSION, "csrf": CSRF,
                                          "path": "/", "same_site": "Strict", "secure": true}}),
        );
        assert_eq!(try_login(&c, json!({})).unwrap_err().0, "cookies");
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let c = config(json!({}));
        let cases: Vec<(Value, &str)> = vec![
            (
                json!({"authorization_endpoint": "http://auth.example.com/authorize"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "auth.example.com/authorize"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "https://auth.example.com/a#f"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "https://u:p@auth.example.com/a"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "https://auth example.com/a"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "https://auth.example.com:0/a"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"authorization_endpoint": "ftp://auth.example.com/a"}),
                "login.authorization_endpoint",
            ),
            (
                json!({"redirect_uri": "https://app.example.com/cb?x=1"}),
                "login.redirect_uri",
            ),
            (
                json!({"redirect_uri": "https://app.example.com"}),
                "login.redirect_uri",
            ),
            (
                json!({"redirect_uri": "http://app.example.com/cb"}),
                "login.redirect_uri",
            ),
            (json!({"login_path": "auth/login"}), "login.login_path"),
            (json!({"login_path": "//auth"}), "login.login_path"),
            (json!({"login_path": "/auth/login?x"}), "login.login_path"),
            (json!({"login_path": "/auth/callback"}), "login.login_path"),
            (json!({"logout_path": "/auth/login"}), "login.logout_path"),
            (
                json!({"logout_path": "/auth/callback"}),
                "login.logout_path",
            ),
            (json!({"scopes": ["profile"]}), "login.scopes"),
            (json!({"scopes": []}), "login.scopes"),
            (json!({"scopes": ["openid", "a b"]}), "login.scopes[1]"),
            (json!({"scopes": ["openid", "openid"]}), "login.scopes[1]"),
            (json!({"scopes": ["openid", ""]}), "login.scopes[1]"),
            (
                json!({"revocation_path": "https://auth.example.com/revoke"}),
                "login.revocation_path",
            ),
            (
                json!({"end_session_endpoint": "/logout"}),
                "login.end_session_endpoint",
            ),
            (
                json!({"post_logout_redirect": "//evil.test/"}),
                "login.post_logout_redirect",
            ),
            (
                json!({"post_logout_redirect": "/\\evil"}),
                "login.post_logout_redirect",
            ),
            (
                json!({"post_logout_redirect": "javascript:alert(1)"}),
                "login.post_logout_redirect",
            ),
            (
                json!({"session_lifetime_s": 10}),
                "login.session_lifetime_s",
            ),
            (
                json!({"session_lifetime_s": 40_000_000}),
                "login.session_lifetime_s",
            ),
            (json!({"prompt": "bogus"}), "login.prompt"),
            (json!({"prompt": "none login"}), "login.prompt"),
            (json!({"prompt": ""}), "login.prompt"),
            (
                json!({"extra_authorize_params": {"state": "x"}}),
                "login.extra_authorize_params.state",
            ),
            (
                json!({"extra_authorize_params": {"response_mode": "form_post"}}),
                "login.extra_authorize_params.response_mode",
            ),
            (
                json!({"extra_authorize_params": {"a b": "x"}}),
                "login.extra_authorize_params.a b",
            ),
            (
                json!({"extra_authorize_params": {"acr": "a\nb"}}),
                "login.extra_authorize_params.acr",
            ),
            (json!({"id_token_issuer": " "}), "login.id_token_issuer"),
        ];
        for (extra, field) in cases {
            let what = extra.to_string();
            let (f, problem) = try_login(&c, extra).unwrap_err();
            assert_eq!(f, field, "{what}: {problem}");
            assert!(!problem.is_empty() && !problem.contains('\n'), "{what}");
        }
        // Unknown members and missing required ones are serde errors.
        assert!(serde_json::from_value::<RawLogin>(raw_login(json!({"scope": "openid"}))).is_err());
        assert!(
            serde_json::from_value::<RawLogin>(raw_login(json!({"redirect_uri": null}))).is_err()
        );
    }

    // ---- login start ----

    #[test]
    fn authorization_request_carries_pkce_state_and_nonce() {
        let c = config(json!({}));
        let l = try_login(&c, json!({"prompt": "consent", "extra_authorize_params": {"audience": "https://api.example.com"}})).unwrap();
        let (r, state, flow_cookie) = started(&c, &l, "/a?b=c", 1, NOW);
        assert_eq!(r.status, 302);
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let location = header(&r, "location").unwrap();
        assert!(
            location.starts_with(
                "https://auth.example.com/oauth2/authorize?response_type=code&client_id="
            ),
            "{location}"
        );
        // Spaces as %20, everything but unreserved characters encoded.
        assert!(
            location.contains("&scope=openid%20offline_access&"),
            "{location}"
        );
        assert!(
            location.contains("&redirect_uri=https%3A%2F%2Fapp.example.com%2Fauth%2Fcallback&"),
            "{location}"
        );
        let p = location_params(location);
        assert_eq!(param(&p, "response_type"), "code");
        assert_eq!(param(&p, "client_id"), AUD);
        assert_eq!(
            param(&p, "redirect_uri"),
            "https://app.example.com/auth/callback"
        );
        assert_eq!(param(&p, "scope"), "openid offline_access");
        assert_eq!(param(&p, "code_challenge_method"), "S256");
        assert_eq!(param(&p, "prompt"), "consent");
        assert_eq!(param(&p, "audience"), "https://api.example.com");
        assert_eq!(state, URL_SAFE_NO_PAD.encode([2u8; 32]));
        assert_eq!(param(&p, "nonce"), URL_SAFE_NO_PAD.encode([3u8; 32]));
        for v in [
            param(&p, "state"),
            param(&p, "nonce"),
            param(&p, "code_challenge"),
        ] {
            assert_eq!(v.len(), 43);
        }

        // The flow cookie: named after the state, sealed, Lax, HttpOnly, Secure, 10 minutes.
        let set = set_cookies(&r);
        assert_eq!(set.len(), 1);
        let name = l.flow_cookie_name(&state);
        let digest = sha2_11::Sha256::digest(state.as_bytes());
        assert_eq!(
            name,
            format!(
                "__Host-relay-flow-{:02x}{:02x}{:02x}{:02x}",
                digest[0], digest[1], digest[2], digest[3]
            )
        );
        assert!(set[0].starts_with(&format!("{name}=")));
        assert!(
            set[0].ends_with("; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax"),
            "{}",
            set[0]
        );
        let sealed = flow_cookie.split_once('=').unwrap().1;
        let (flow, _) = session::unseal_json::<Flow>(&refresh(&c).session_keys, sealed).unwrap();
        assert_eq!(flow.s, state);
        assert_eq!(flow.n, param(&p, "nonce"));
        assert_eq!(flow.r, "/a?b=c");
        assert_eq!(flow.t, NOW);
        assert_eq!(flow.v.len(), 43);
        assert_eq!(flow.v, URL_SAFE_NO_PAD.encode([1u8; 32]));
        // S256: the challenge is base64url(SHA-256(verifier)).
        assert_eq!(
            param(&p, "code_challenge"),
            URL_SAFE_NO_PAD.encode(sha2_11::Sha256::digest(flow.v.as_bytes()))
        );
        // The verifier, nonce and return path never show in the URL.
        assert!(!location.contains(&flow.v));
    }

    #[test]
    fn endpoint_with_a_query_gets_an_ampersand() {
        let c = config(json!({}));
        for (endpoint, prefix) in [
            (
                "https://auth.example.com/authorize?tenant=a",
                "https://auth.example.com/authorize?tenant=a&response_type=code&",
            ),
            (
                "https://auth.example.com/authorize?",
                "https://auth.example.com/authorize?response_type=code&",
            ),
            (
                "https://auth.example.com/authorize?a=1&",
                "https://auth.example.com/authorize?a=1&response_type=code&",
            ),
            (
                "https://auth.example.com",
                "https://auth.example.com?response_type=code&",
            ),
        ] {
            let l = try_login(&c, json!({"authorization_endpoint": endpoint})).unwrap();
            let (r, _, _) = started(&c, &l, "/", 1, NOW);
            assert!(
                header(&r, "location").unwrap().starts_with(prefix),
                "{endpoint}"
            );
        }
    }

    #[test]
    fn two_flows_get_two_cookies() {
        let c = config(json!({}));
        let l = login(&c);
        let (_, state_a, flow_a) = started(&c, &l, "/a", 1, NOW);
        let (_, state_b, flow_b) = started(&c, &l, "/b", 50, NOW + 1);
        assert_ne!(state_a, state_b);
        let (name_a, name_b) = (
            flow_a.split_once('=').unwrap().0,
            flow_b.split_once('=').unwrap().0,
        );
        assert_ne!(name_a, name_b);
        // Both tabs finish, each with its own flow, in either order.
        let both = format!("{flow_a}; {flow_b}");
        for (state, to) in [(&state_b, "/b"), (&state_a, "/a")] {
            let (_, p) = callback(
                &c,
                &l,
                refresh(&c),
                &format!("code=c&state={state}"),
                &both,
                false,
                NOW + 2,
            )
            .unwrap();
            assert_eq!(p.return_to(), to);
        }
    }

    #[test]
    fn stale_flow_cookies_are_cleaned_up() {
        let c = config(json!({}));
        let l = login(&c);
        let flows: Vec<String> = (0..4u8)
            .map(|i| started(&c, &l, "/", 10 * i + 1, NOW + u64::from(i) * 10).2)
            .collect();
        let names: Vec<&str> = flows.iter().map(|f| f.split_once('=').unwrap().0).collect();
        let garbage = "__Host-relay-flow-00000000=garbage";
        let now = NOW + 100;

        // Four readable flows and a garbage one: the garbage and the two oldest go.
        let header_all = format!("{}; {garbage}; other=1", flows.join("; "));
        let r = start(&c, &l, refresh(&c), "", &header_all, now, &random(200));
        let mut cleared = cleared_names(&r);
        cleared.sort();
        let mut want = vec![
            "__Host-relay-flow-00000000".to_string(),
            names[0].to_string(),
            names[1].to_string(),
        ];
        want.sort();
        assert_eq!(cleared, want);
        assert_eq!(set_names(&r).len(), 1, "the new flow");
        for clear in set_cookies(&r).iter().filter(|c| c.contains("Max-Age=0")) {
            assert!(
                clear.contains("; Path=/;") && clear.contains("SameSite=Lax"),
                "{clear}"
            );
        }

        // Three present: tolerated, except the unreadable one.
        let header_three = format!("{}; {}; {garbage}", flows[0], flows[1]);
        let r = start(&c, &l, refresh(&c), "", &header_three, now, &random(200));
        assert_eq!(cleared_names(&r), vec!["__Host-relay-flow-00000000"]);
        let r = start(
            &c,
            &l,
            refresh(&c),
            "",
            &flows[..3].join("; "),
            now,
            &random(200),
        );
        assert!(cleared_names(&r).is_empty());

        // Expired flows go whatever the count.
        let r = start(
            &c,
            &l,
            refresh(&c),
            "",
            &flows[0],
            NOW + FLOW_MAX_AGE_S + 1,
            &random(200),
        );
        assert_eq!(cleared_names(&r), vec![names[0].to_string()]);
    }

    #[test]
    fn return_to_table() {
        let ok: &[(&str, &str)] = &[
            ("/a?b=c", "/a?b=c"),
            ("/", "/"),
            ("/app/page#frag", "/app/page#frag"),
            ("/a%20b", "/a%20b"),
            ("/a b", "/a%20b"),
            ("/über", "/%C3%BCber"),
            ("/q?x=\"<y>\"", "/q?x=%22%3Cy%3E%22"),
            ("/%2e%2e/x", "/%2e%2e/x"),
            ("/a/%2F%2Fb", "/a/%2F%2Fb"),
        ];
        for (raw, want) in ok {
            assert_eq!(safe_return_to(raw), *want, "{raw:?}");
        }
        let refused = [
            "https://evil.test/",
            "//evil.test",
            "///evil.test",
            "/\\evil.test",
            "\\\\evil.test",
            "/a\\b",
            "/%2F%2Fevil.test",
            "/%2f/evil.test",
            "/%5Cevil.test",
            "/%5cevil.test",
            "/%252F%252Fevil.test",
            "/%09/evil.test",
            "/\t/evil.test",
            "/a\nb",
            "/a\rb",
            "/a\u{7f}",
            "/a\u{85}",
            "/%00",
            "javascript:alert(1)",
            "JAVASCRIPT:alert(1)",
            "data:text/html,x",
            "evil.test",
            "",
            " /a",
        ];
        for raw in refused {
            assert_eq!(safe_return_to(raw), "/", "{raw:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_RETURN_TO_LEN));
        assert_eq!(safe_return_to(&long), "/");
        let just = format!("/{}", "a".repeat(MAX_RETURN_TO_LEN - 1));
        assert_eq!(safe_return_to(&just), just);
        // Growing past the cap by encoding counts too.
        let wide = format!("/{}", "é".repeat(MAX_RETURN_TO_LEN / 4));
        assert_eq!(safe_return_to(&wide), "/");

        // Through the login start: the query value is decoded once, then checked.
        let c = config(json!({}));
        let l = login(&c);
        let sealed_return = |q: &str| {
            let r = start(&c, &l, refresh(&c), q, "", NOW, &random(1));
            let (_, v) = jar(&r)
                .split_once('=')
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .unwrap();
            session::unseal_json::<Flow>(&refresh(&c).session_keys, &v)
                .unwrap()
                .0
                .r
        };
        assert_eq!(sealed_return("return_to=%2Fa%3Fb%3Dc"), "/a?b=c");
        assert_eq!(sealed_return("return_to=/a?b=c"), "/a?b=c");
        assert_eq!(sealed_return("return_to=/a&b=c"), "/a");
        assert_eq!(sealed_return("return_to=%2F%2Fevil.test"), "/");
        assert_eq!(sealed_return("return_to=/%252F%252Fevil"), "/");
        assert_eq!(sealed_return("return_to=https://evil.test"), "/");
        assert_eq!(sealed_return(""), "/");
        assert_eq!(sealed_return("return_to="), "/");
        assert_eq!(
            sealed_return("return_to=/first&return_to=/second"),
            "/first"
        );
    }

    // ---- navigation ----

    #[test]
    fn navigation_detection() {
        let html = Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8");
        let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
            ("GET", Some("navigate"), html, true),
            ("GET", Some("navigate"), None, true),
            ("POST", Some("navigate"), html, true),
            ("GET", Some("cors"), html, false),
            ("GET", Some("no-cors"), html, false),
            ("GET", Some("same-origin"), Some("*/*"), false),
            ("GET", None, html, true),
            ("GET", None, Some("TEXT/HTML"), true),
            ("GET", None, Some("*/*"), false),
            ("GET", None, Some("application/json"), false),
            ("GET", None, None, false),
            ("POST", None, html, false),
            ("HEAD", None, html, false),
        ];
        for (method, mode, accept, want) in cases {
            assert_eq!(
                is_navigation(method, *mode, *accept),
                *want,
                "{method} {mode:?} {accept:?}"
            );
        }
    }

    #[test]
    fn login_redirect_keeps_the_page() {
        let c = config(json!({}));
        let l = login(&c);
        let r = login_redirect(&l, "/app/orders?id=7&tab=a b");
        assert_eq!(r.status, 302);
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let location = header(&r, "location").unwrap();
        assert_eq!(
            location,
            "/auth/login?return_to=%2Fapp%2Forders%3Fid%3D7%26tab%3Da%2520b"
        );
        let p = location_params(location);
        assert_eq!(param(&p, "return_to"), "/app/orders?id=7&tab=a%20b");
        // An unsafe path is not carried along.
        let r = login_redirect(&l, "//evil.test/x");
        assert_eq!(header(&r, "location"), Some("/auth/login?return_to=%2F"));
    }

    // ---- callback ----

    #[test]
    fn callback_happy_path() {
        let c = config(json!({}));
        let l = login(&c);
        let old_csrf = format!("; {CSRF}=planted-before-login; {SESSION}.0=old; {SESSION}.1=old");
        let (req, pending) = exchange(&c, &l, &old_csrf);

        // The code exchange: authorization_code with the verifier, client authentication.
        let h = |n: &str| {
            req.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h(":method"), Some("POST"));
        assert_eq!(h(":path"), Some("/oauth2/token"));
        assert_eq!(h(":authority"), Some("idp.example.com"));
        assert!(h("authorization").unwrap().starts_with("Basic "));
        let verifier = URL_SAFE_NO_PAD.encode([1u8; 32]);
        assert_eq!(
            req.body,
            format!("grant_type=authorization_code&code=the-code&redirect_uri=https%3A%2F%2Fapp.example.com%2Fauth%2Fcallback&code_verifier={verifier}")
        );
        assert_eq!(pending.return_to(), "/app/page?x=1");
        assert!(!format!("{pending:?}").contains(&verifier));

        let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
        let r = finish(
            &c,
            &l,
            &pending,
            Some(200),
            &token_body(Some(&id_token), Some("rt-1")),
        );
        // Strict relay cookies: a same-site hop page rather than a 302.
        assert_eq!(r.status, 200);
        assert_eq!(r.reason, "login");
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert_eq!(header(&r, "referrer-policy"), Some("no-referrer"));
        assert!(
            r.body
                .contains("<meta http-equiv=\"refresh\" content=\"0;url=/app/page?x=1\">"),
            "{}",
            r.body
        );

        let cookies = parsed_cookies(&r);
        let get = |n: &str| cookies.iter().find(|(k, _, _)| k == n).unwrap();
        let at = get(AT);
        // (Signatures are randomized: compare the signed part.)
        let signed = |t: &str| t.rsplit_once('.').unwrap().0.to_string();
        assert_eq!(signed(&at.1), signed(&testkit::sign(&testkit::claims())));
        assert_eq!(at.2, Some(300));
        let session_value = &get(SESSION).1;
        let s = session::unseal(&refresh(&c).session_keys, session_value, NOW)
            .unwrap()
            .session;
        assert_eq!(s.rt, "rt-1");
        assert_eq!(s.exp, Some(NOW + DEFAULT_SESSION_LIFETIME_S));
        assert_eq!(s.id_token.as_deref(), Some(id_token.as_str()));
        assert_eq!(get(SESSION).2, Some(DEFAULT_SESSION_LIFETIME_S));
        // Stale chunks of an older session are deleted.
        let mut cleared = cleared_names(&r);
        cleared.sort();
        assert_eq!(
            cleared,
            vec![
                pending.flow_cookie.clone(),
                format!("{SESSION}.0"),
                format!("{SESSION}.1")
            ]
        );
        // A fresh CSRF token, readable by the page.
        let csrf_line = set_cookies(&r)
            .into_iter()
            .find(|l| l.starts_with(CSRF))
            .unwrap();
        assert!(
            !csrf_line.contains("HttpOnly") && csrf_line.contains("SameSite=Strict"),
            "{csrf_line}"
        );
        assert_eq!(get(CSRF).1, csrf::new_token([9; 32]));
        for line in set_cookies(&r).iter().filter(|l| !l.starts_with(CSRF)) {
            assert!(
                line.contains("HttpOnly") && line.contains("Secure"),
                "{line}"
            );
        }

        // Lax relay cookies: a plain 302.
        let c = config(
            json!({"cookies": {"access_token": AT, "session": SESSION, "csrf": CSRF,
                                          "path": "/", "same_site": "Lax", "secure": true}}),
        );
        let l = login(&c);
        let (_, pending) = exchange(&c, &l, "");
        let r = finish(
            &c,
            &l,
            &pending,
            Some(200),
            &token_body(Some(&id_token), Some("rt-1")),
        );
        assert_eq!(r.status, 302);
        assert_eq!(header(&r, "location"), Some("/app/page?x=1"));
        assert!(set_names(&r).contains(&SESSION.to_string()));
    }

    use crate::csrf;

    #[test]
    fn login_without_refresh_token_or_double_submit() {
        let c = config(json!({"csrf": null}));
        let l = login(&c);
        let (_, pending) = exchange(&c, &l, &format!("; {SESSION}=previous-user"));
        let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
        let r = finish(
            &c,
            &l,
            &pending,
            Some(200),
            &token_body(Some(&id_token), None),
        );
        assert_eq!(r.reason, "login_no_refresh_token");
        assert_eq!(set_names(&r), vec![AT.to_string()]);
        assert!(cleared_names(&r).contains(&SESSION.to_string()));
    }

    /// Asserts an error answer: status, reason, no token or session cookie set.
    fn assert_refused(r: &Reply, status: u32, reason: &str) {
        assert_eq!(r.status, status, "{reason}: {}", r.body);
        assert_eq!(r.reason, reason);
        assert_eq!(header(r, "cache-control"), Some("no-store"));
        assert!(set_names(r).is_empty(), "{reason}: {:?}", set_cookies(r));
        assert!(!set_cookies(r)
            .iter()
            .any(|c| c.starts_with(AT) || c.starts_with(SESSION) || c.starts_with(CSRF)));
    }

    #[test]
    fn callback_errors_before_the_exchange() {
        let c = config(json!({}));
        let l = login(&c);
        let (_, state, flow) = started(&c, &l, "/back", 1, NOW);
        let flow_name = flow.split_once('=').unwrap().0.to_string();
        let run = |q: &str, cookies: &str, now: u64| {
            callback(&c, &l, refresh(&c), q, cookies, false, now).unwrap_err()
        };

        // The IdP's error: 400, its (known) code echoed, the flow cleared; its description never.
        let r = run(
            &format!("error=access_denied&error_description=Call+0800-SCAM&state={state}"),
            &flow,
            NOW,
        );
        assert_refused(&r, 400, "login_idp_error");
        assert_eq!(json_body(&r)["error"], "access_denied");
        assert!(!r.body.contains("SCAM"));
        assert_eq!(cleared_names(&r), vec![flow_name.clone()]);
        let r = run("error=%3Cscript%3E", "", NOW);
        assert_refused(&r, 400, "login_idp_error");
        assert_eq!(json_body(&r)["error"], "invalid_request");
        assert!(cleared_names(&r).is_empty());

        // Missing or repeated parameters.
        for q in [
            "code=x",
            &format!("state={state}"),
            &format!("code=&state={state}"),
            "",
            &format!("code=a&code=b&state={state}"),
            &format!("code=a&state={state}&state={state}"),
        ] {
            assert_refused(&run(q, &flow, NOW), 400, "login_bad_callback");
        }
        // RFC 9207: another issuer is a mix-up.
        let r = run(
            &format!("code=x&state={state}&iss=https%3A%2F%2Fother.test"),
            &flow,
            NOW,
        );
        assert_refused(&r, 400, "login_wrong_issuer");
        let ok = callback(
            &c,
            &l,
            refresh(&c),
            &format!("code=x&state={state}&iss={}", query_encode(ISS)),
            &flow,
            false,
            NOW,
        );
        assert!(ok.is_ok());

        // No flow cookie (never started here, or replayed after completion).
        let r = run(&format!("code=x&state={state}"), "other=1", NOW);
        assert_refused(&r, 400, "login_flow_missing");
        assert!(cleared_names(&r).is_empty());
        // Another flow's cookie under this state's name: the state check catches it.
        let (_, other_state, _) = started(&c, &l, "/", 7, NOW);
        let forged = format!(
            "{}={}",
            l.flow_cookie_name(&other_state),
            flow.split_once('=').unwrap().1
        );
        let r = run(
            &format!("code=x&state={}", query_encode(&other_state)),
            &forged,
            NOW,
        );
        assert_refused(&r, 400, "login_state_mismatch");
        assert_eq!(cleared_names(&r), vec![l.flow_cookie_name(&other_state)]);
        // Expired, and unreadable.
        let r = run(
            &format!("code=x&state={state}"),
            &flow,
            NOW + FLOW_MAX_AGE_S,
        );
        assert_refused(&r, 400, "login_flow_expired");
        assert_eq!(cleared_names(&r), vec![flow_name.clone()]);
        let r = run(
            &format!("code=x&state={state}"),
            &format!("{flow_name}=garbage"),
            NOW,
        );
        assert_refused(&r, 400, "login_flow_invalid");
        // A session cookie is never a flow.
        let s = session::seal(
            &refresh(&c).session_keys,
            &Session {
                rt: "rt".into(),
                exp: None,
                id_token: None,
            },
            [1; 12],
        );
        let r = run(
            &format!("code=x&state={state}"),
            &format!("{flow_name}={s}"),
            NOW,
        );
        assert_refused(&r, 400, "login_flow_invalid");
    }

    #[test]
    fn replayed_callback_finds_no_flow() {
        let c = config(json!({}));
        let l = login(&c);
        let (_, state, flow) = started(&c, &l, "/back", 1, NOW);
        let q = format!("code=x&state={state}");
        let (_, pending) = callback(&c, &l, refresh(&c), &q, &flow, false, NOW).unwrap();
        let id_token = testkit::sign(&id_claims(&nonce_of(&random(1))));
        let r = finish(
            &c,
            &l,
            &pending,
            Some(200),
            &token_body(Some(&id_token), Some("rt")),
        );
        assert!(cleared_names(&r).contains(&pending.flow_cookie));
        // The browser now holds the session but no flow: the same callback again is refused.
        let after = jar(&r);
        assert!(!after.contains("relay-flow"));
        let r = callback(&c, &l, refresh(&c), &q, &after, false, NOW + 1).unwrap_err();
        assert_refused(&r, 400, "login_flow_missing");
    }

    #[test]
    fn callback_errors_after_the_exchange() {
        let c = config(json!({}));
        let l = login(&c);
        let (_, pending) = exchange(&c, &l, "");
        let nonce = nonce_of(&random(1));
        let good_id = testkit::sign(&id_claims(&nonce));
        let mut wrong_aud = id_claims(&nonce);
        wrong_aud["aud"] = json!("another-client");
        let mut expired_id = id_claims(&nonce);
        expired_id["exp"] = json!(NOW - 100);
        let mut no_nonce = id_claims(&nonce);
        no_nonce.as_object_mut().unwrap().remove("nonce");
        let mut bad_at = testkit::claims();
        bad_at["token_use"] = json!("id");
        let at_body = |at: &str, id: &str| {
            json!({"access_token": at, "id_token": id, "refresh_token": "rt", "token_type": "Bearer"})
                .to_string()
                .into_bytes()
        };
        let cases: Vec<(Option<u32>, Vec<u8>, u32, &str)> = vec![
            (Some(500), b"oops".to_vec(), 503, "login_idp_unavailable"),
            (Some(503), b"".to_vec(), 503, "login_idp_unavailable"),
            (None, b"".to_vec(), 503, "login_idp_unavailable"),
            (
                Some(400),
                br#"{"error":"invalid_grant"}"#.to_vec(),
                400,
                "login_code_rejected",
            ),
            (
                Some(401),
                br#"{"error":"invalid_client"}"#.to_vec(),
                502,
                "login_exchange_failed",
            ),
            (Some(200), b"<html>".to_vec(), 502, "login_exchange_failed"),
            (
                Some(200),
                token_body(None, Some("rt")),
                401,
                "login_id_token_missing",
            ),
            (
                Some(200),
                token_body(
                    Some(&testkit::sign(&id_claims("another-nonce"))),
                    Some("rt"),
                ),
                401,
                "login_nonce_mismatch",
            ),
            (
                Some(200),
                token_body(Some(&testkit::sign(&no_nonce)), Some("rt")),
                401,
                "login_nonce_mismatch",
            ),
            (
                Some(200),
                token_body(Some(&testkit::sign(&wrong_aud)), Some("rt")),
                401,
                "login_id_token_invalid",
            ),
            (
                Some(200),
                token_body(Some(&testkit::sign(&expired_id)), Some("rt")),
                401,
                "login_id_token_invalid",
            ),
            (
                Some(200),
                token_body(Some("not.a.jwt"), Some("rt")),
                401,
                "login_id_token_invalid",
            ),
            (
                Some(200),
                at_body(&testkit::sign(&bad_at), &good_id),
                401,
                "login_access_token_invalid",
            ),
            (
                Some(200),
                at_body("opaque-token", &good_id),
                401,
                "login_access_token_invalid",
            ),
        ];
        for (status, body, want_status, reason) in cases {
            let r = finish(&c, &l, &pending, status, &body);
            assert_refused(&r, want_status, reason);
            assert_eq!(
                cleared_names(&r),
                vec![pending.flow_cookie.clone()],
                "{reason}"
            );
            if want_status == 503 {
                assert_eq!(header(&r, "retry-after"), Some("5"));
                assert_eq!(json_body(&r)["error"], "temporarily_unavailable");
            }
        }
        let r = finish(
            &c,
            &l,
            &pending,
            Some(200),
            &token_body(Some(&good_id), Some("rt")),
        );
        assert_eq!(r.status, 200);

        // Keys: none loaded yet, or a kid the set lacks.
        let body = token_body(Some(&good_id), Some("rt"));
        match finish_callback(
            &c,
            &l,
            None,
            &pending,
            Some(200),
            &body,
            NOW,
            &Random::fixed(1),
            true,
        ) {
            Finish::Respond(r) => assert_refused(&r, 503, "login_keys_not_ready"),
            Finish::UnknownKid => panic!("no keys is not an unknown kid"),
        }
        let rotated = testkit::sign_with_kid(&id_claims(&nonce), "new-kid");
        let body = token_body(Some(&rotated), Some("rt"));
        let keys = testkit::inline_keys(&c);
        assert!(matches!(
            finish_callback(
                &c,
                &l,
                Some(keys),
                &pending,
                Some(200),
                &body,
                NOW,
                &Random::fixed(1),
                true
            ),
            Finish::UnknownKid
        ));
        match finish_callback(
            &c,
            &l,
            Some(keys),
            &pending,
            Some(200),
            &body,
            NOW,
            &Random::fixed(1),
            false,
        ) {
            Finish::Respond(r) => assert_refused(&r, 401, "login_id_token_invalid"),
            Finish::UnknownKid => panic!("refetch not allowed"),
        }
    }

    #[test]
    fn separate_id_token_issuer() {
        const V2: &str = "https://login.example.com/v2.0";
        let c = config(json!({}));
        let l = try_login(&c, json!({ "id_token_issuer": V2 })).unwrap();
        let (_, state, flow) = started(&c, &l, "/", 1, NOW);
        let with_iss = |iss: &str| format!("code=x&state={state}&iss={}", query_encode(iss));
        let r = callback(&c, &l, refresh(&c), &with_iss(ISS), &flow, false, NOW).unwrap_err();
        assert_refused(&r, 400, "login_wrong_issuer");
        let (_, pending) = callback(&c, &l, refresh(&c), &with_iss(V2), &flow, false, NOW).unwrap();
        let mut claims = id_claims(&nonce_of(&random(1)));
        claims["iss"] = json!(V2);
        let body = token_body(Some(&testkit::sign(&claims)), Some("rt"));
        assert_eq!(finish(&c, &l, &pending, Some(200), &body).status, 200);
        // The access-token issuer is no longer accepted on ID tokens.
        let body = token_body(
            Some(&testkit::sign(&id_claims(&nonce_of(&random(1))))),
            Some("rt"),
        );
        let r = finish(&c, &l, &pending, Some(200), &body);
        assert_refused(&r, 401, "login_id_token_invalid");
    }

    #[test]
    fn errors_are_html_or_json_by_accept() {
        let accept_cases: &[(Option<&str>, bool)] = &[
            (
                Some("text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8"),
                true,
            ),
            (Some("text/html"), true),
            (Some("TEXT/HTML; q=0.5, application/json; q=0.4"), true),
            (Some("application/json, text/html;q=0.9"), false),
            (Some("text/html, application/json"), false),
            (Some("text/html;q=0"), false),
            (Some("text/html;q=abc"), false),
            (Some("*/*"), false),
            (Some("application/json"), false),
            (Some(""), false),
            (None, false),
        ];
        for (accept, html) in accept_cases {
            assert_eq!(wants_html(*accept), *html, "{accept:?}");
        }
        assert!(prefers_json(Some("application/json")));
        assert!(prefers_json(Some("application/json, text/plain, */*")));
        assert!(!prefers_json(Some("*/*")));
        assert!(!prefers_json(Some("text/html,*/*;q=0.8")));
        assert!(!prefers_json(None));

        let c = config(json!({}));
        let l = login(&c);
        let (_, state, flow) = started(&c, &l, "/back?a=1&b=<2>", 1, NOW);
        let q = format!("error=access_denied&state={state}");
        let html = callback(&c, &l, refresh(&c), &q, &flow, true, NOW).unwrap_err();
        assert_refused(&html, 400, "login_idp_error");
        assert_eq!(
            header(&html, "content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(header(&html, "content-security-policy").is_some());
        assert!(html.body.starts_with("<!DOCTYPE html>"));
        assert!(
            html.body.contains("did not sign you in (access_denied)"),
            "{}",
            html.body
        );
        // "Try again" starts a new login back to the (proven) return path, escaped.
        assert!(
            html.body.contains(
                "<a href=\"/auth/login?return_to=%2Fback%3Fa%3D1%26b%3D%253C2%253E\">Try again</a>"
            ),
            "{}",
            html.body
        );
        assert!(!html.body.contains("<2>"));
        let json = callback(&c, &l, refresh(&c), &q, &flow, false, NOW).unwrap_err();
        assert_eq!(header(&json, "content-type"), Some("application/json"));
        let body = json_body(&json);
        assert_eq!(body["error"], "access_denied");
        assert!(body["error_description"]
            .as_str()
            .unwrap()
            .contains("did not sign you in"));
        // 401s and 503s too.
        let (_, pending) = callback(
            &c,
            &l,
            refresh(&c),
            &format!("code=x&state={state}"),
            &flow,
            true,
            NOW,
        )
        .unwrap();
        let r = finish(&c, &l, &pending, Some(502), b"");
        assert_eq!(
            (r.status, header(&r, "content-type")),
            (503, Some("text/html; charset=utf-8"))
        );
        assert!(r.body.contains("Try again"));
    }

    #[test]
    fn html_is_escaped() {
        assert_eq!(
            html_escape("<a href=\"x\">'&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&#39;&amp;&#39;&lt;/a&gt;"
        );
    }

    // ---- logout ----

    fn session_cookie(c: &Config, id_token: Option<&str>, exp: Option<u64>) -> String {
        let s = Session {
            rt: "rt-to-revoke".into(),
            exp,
            id_token: id_token.map(str::to_string),
        };
        format!(
            "{SESSION}={}",
            session::seal(&refresh(c).session_keys, &s, [4; 12])
        )
    }

    #[test]
    fn logout_with_end_session_and_session() {
        let c = config(json!({}));
        let l = login(&c);
        let (_, _, flow) = started(&c, &l, "/", 1, NOW);
        let cookies = format!(
            "{AT}=x; {}; {CSRF}=t; {flow}; app=1",
            session_cookie(&c, Some("the.id.token"), Some(NOW + 60))
        );
        let out = logout(&c, &l, &cookies, false, NOW);

        let rev = out.revocation.expect("revocation");
        let h = |n: &str| {
            rev.headers
                .iter()
                .find(|(k, _)| *k == n)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(h(":path"), Some("/oauth2/revoke"));
        assert_eq!(h(":method"), Some("POST"));
        assert_eq!(h(":authority"), Some("idp.example.com"));
        assert!(h("authorization").unwrap().starts_with("Basic "));
        assert_eq!(rev.body, "token=rt-to-revoke&token_type_hint=refresh_token");

        let r = out.reply;
        assert_eq!(r.status, 302);
        assert_eq!(r.reason, "logout");
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let location = header(&r, "location").unwrap();
        assert!(
            location.starts_with("https://auth.example.com/logout?client_id="),
            "{location}"
        );
        let p = location_params(location);
        assert_eq!(param(&p, "client_id"), AUD);
        assert_eq!(param(&p, "id_token_hint"), "the.id.token");
        assert_eq!(
            param(&p, "post_logout_redirect_uri"),
            "https://app.example.com/"
        );
        let mut cleared = cleared_names(&r);
        cleared.sort();
        let mut want = vec![
            AT.to_string(),
            SESSION.to_string(),
            CSRF.to_string(),
            flow.split_once('=').unwrap().0.to_string(),
        ];
        want.sort();
        assert_eq!(cleared, want);
        assert!(set_names(&r).is_empty());

        // A fetch that asks for JSON gets the URL to go to, without the ID token: a JSON body is
        // readable by JavaScript.
        let r = logout(&c, &l, &cookies, true, NOW).reply;
        assert_eq!(r.status, 200);
        let to = json_body(&r)["redirect_to"].as_str().unwrap().to_string();
        assert!(!to.contains("id_token_hint"), "{to}");
        assert!(to.contains("client_id=") && to.contains("post_logout_redirect_uri="));
        assert_eq!(cleared_names(&r).len(), 4);
    }

    #[test]
    fn logout_without_session_or_end_session_endpoint() {
        let c = config(json!({}));
        let l = login(&c);
        // No session, an expired one, or garbage: no revocation, no hint, cookies still cleared.
        for cookies in [
            String::new(),
            format!("{AT}=x"),
            session_cookie(&c, Some("idt"), Some(NOW)),
            format!("{SESSION}=garbage"),
        ] {
            let out = logout(&c, &l, &cookies, false, NOW);
            assert!(out.revocation.is_none(), "{cookies}");
            let location = header(&out.reply, "location").unwrap();
            assert!(!location.contains("id_token_hint"), "{location}");
            assert!(location.contains("post_logout_redirect_uri=https%3A%2F%2Fapp.example.com%2F"));
            let cleared = cleared_names(&out.reply);
            assert!(
                cleared.contains(&AT.to_string())
                    && cleared.contains(&SESSION.to_string())
                    && cleared.contains(&CSRF.to_string())
            );
        }
        // A session without an ID token: revoked, no hint.
        let out = logout(&c, &l, &session_cookie(&c, None, None), false, NOW);
        assert!(out.revocation.is_some());
        assert!(!header(&out.reply, "location")
            .unwrap()
            .contains("id_token_hint"));

        // Without end_session_endpoint (nor revocation): straight to post_logout_redirect.
        let l = try_login(&c, json!({"end_session_endpoint": null, "revocation_path": null, "post_logout_redirect": "/goodbye"})).unwrap();
        let out = logout(&c, &l, &session_cookie(&c, Some("idt"), None), false, NOW);
        assert!(out.revocation.is_none());
        assert_eq!(header(&out.reply, "location"), Some("/goodbye"));
        let l = try_login(&c, json!({"end_session_endpoint": null, "post_logout_redirect": "https://www.example.com/"})).unwrap();
        let out = logout(&c, &l, "", false, NOW);
        assert_eq!(
            header(&out.reply, "location"),
            Some("https://www.example.com/")
        );
    }

    // ---- dispatch ----

    fn request(method: &str, path: &str, extra: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
        let mut h = vec![
            (":method".to_string(), method.as_bytes().to_vec()),
            (":path".to_string(), path.as_bytes().to_vec()),
        ];
        for (n, v) in extra {
            h.push((n.to_string(), v.as_bytes().to_vec()));
        }
        h
    }

    fn step(c: &Config, l: &LoginConfig, headers: &[(String, Vec<u8>)]) -> Option<LoginStep> {
        handle(c, l, &RequestView { headers }, NOW, &random(1))
    }

    #[test]
    fn handle_routes_and_methods() {
        let c = config(json!({}));
        let l = login(&c);
        assert!(step(&c, &l, &request("GET", "/api/x", &[])).is_none());
        assert!(step(&c, &l, &request("GET", "/auth/login-not", &[])).is_none());

        let Some(LoginStep::Respond(r)) =
            step(&c, &l, &request("GET", "/auth/login?return_to=%2Fa", &[]))
        else {
            panic!("login start")
        };
        assert_eq!(r.status, 302);
        let state = param(&location_params(header(&r, "location").unwrap()), "state").to_string();
        let flow = jar(&r);

        let Some(LoginStep::Exchange {
            request: req,
            pending,
        }) = step(
            &c,
            &l,
            &request(
                "GET",
                &format!("/auth/callback?code=c&state={state}"),
                &[("cookie", &flow), ("accept", "text/html")],
            ),
        )
        else {
            panic!("exchange")
        };
        assert!(req
            .body
            .starts_with("grant_type=authorization_code&code=c&"));
        assert!(pending.html);
        assert_eq!(pending.return_to(), "/a");

        let Some(LoginStep::Respond(r)) = step(
            &c,
            &l,
            &request("GET", "/auth/callback?error=access_denied", &[]),
        ) else {
            panic!("callback error")
        };
        assert_eq!(r.status, 400);

        let Some(LoginStep::Logout(out)) = step(
            &c,
            &l,
            &request(
                "POST",
                "/auth/logout",
                &[
                    ("cookie", &session_cookie(&c, None, None)),
                    ("accept", "application/json"),
                ],
            ),
        ) else {
            panic!("logout")
        };
        assert!(out.revocation.is_some());
        assert_eq!(out.reply.status, 200);

        for (method, path, allow) in [
            ("GET", "/auth/logout", "POST"),
            ("HEAD", "/auth/logout", "POST"),
            ("POST", "/auth/login", "GET"),
            ("POST", "/auth/callback", "GET"),
            ("DELETE", "/auth/callback?code=1", "GET"),
        ] {
            let Some(LoginStep::Respond(r)) = step(&c, &l, &request(method, path, &[])) else {
                panic!("{method} {path}")
            };
            assert_eq!(r.status, 405, "{method} {path}");
            assert_eq!(header(&r, "allow"), Some(allow));
            assert!(set_cookies(&r).is_empty());
        }
    }

    #[test]
    fn login_random_draw() {
        let mut n = 0u8;
        let r = LoginRandom::draw(|b| {
            n += 1;
            b.fill(n);
            true
        })
        .unwrap();
        assert_eq!(
            (r.verifier[0], r.state[0], r.nonce[0], r.iv[0]),
            (1, 2, 3, 4)
        );
        assert!(LoginRandom::draw(|_| false).is_none());
        assert_eq!(format!("{r:?}"), "LoginRandom([redacted])");
    }

    #[test]
    fn query_helpers() {
        assert_eq!(
            parse_query("a=1&b=x+y%20z&c&=v&&d=%zz%4&e=%C3%BC"),
            vec![
                ("a".into(), "1".into()),
                ("b".into(), "x y z".into()),
                ("c".into(), "".into()),
                ("".into(), "v".into()),
                ("d".into(), "%zz%4".into()),
                ("e".into(), "ü".into()),
            ]
        );
        assert_eq!(parse_query(&"a=1&".repeat(100)).len(), MAX_QUERY_PARAMS);
        assert_eq!(query_encode("a b+c/~é"), "a%20b%2Bc%2F~%C3%A9");
        assert_eq!(
            with_query("/x", &[("a", "1"), ("b", "2 3")]),
            "/x?a=1&b=2%203"
        );
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn return_to_is_always_a_local_path(raw in "\\PC{0,40}|/[%/\\\\a-z0-9.:]{0,20}") {
                let out = safe_return_to(&raw);
                prop_assert!(out.starts_with('/'));
                prop_assert!(!out.starts_with("//"));
                prop_assert!(!out.contains('\\'));
                prop_assert!(out.bytes().all(|b| (0x21..=0x7e).contains(&b)));
                prop_assert!(out.len() <= MAX_RETURN_TO_LEN);
                let decoded = percent_decode(out.as_bytes(), false);
                prop_assert!(!decoded.starts_with(b"//") && !decoded.starts_with(b"/\\"));
                // Idempotent.
                prop_assert_eq!(safe_return_to(&out), out.clone());
            }

            #[test]
            fn query_parsing_never_panics(q in "\\PC{0,80}", accept in "\\PC{0,40}") {
                let _ = parse_query(&q);
                let _ = wants_html(Some(&accept));
                let _ = prefers_json(Some(&accept));
                let _ = is_navigation("GET", None, Some(&accept));
            }
        }
    }
}
