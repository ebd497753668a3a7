//! The `login` section: the OIDC login the relay runs at the edge (authorization code + PKCE,
//! callback, logout), validated once.

// Only the JSON Schema (host builds) describes the free-key maps as maps.
#[cfg(not(target_arch = "wasm32"))]
use std::collections::BTreeMap;

use crate::json::Value;
use sha2_11::Digest as _;

use super::cookies::CookieNames;
use super::error::ConfigError;
use super::json::{self, Object};
use crate::http::url::{check_path, check_return_to, parse_config_url};

/// Default `login.session_lifetime_s`: one day.
pub const DEFAULT_SESSION_LIFETIME_S: u64 = 86_400;

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

/// The `login` section as written; compiled by [`LoginConfig::new`].
///
/// | field | default | meaning |
/// | --- | --- | --- |
/// | `authorization_endpoint` | required | The IdP's authorization endpoint: absolute `https` URL (`http` only for `localhost`, `127.0.0.1`, `[::1]`), may carry a query, no fragment. |
/// | `redirect_uri` | required | Registered redirect URI, same URL rules, no query. Its path is the callback path the relay serves. |
/// | `login_path` | `/auth/login` | `GET ?return_to=/page` starts a login. |
/// | `logout_path` | `/auth/logout` | `POST` logs out (`GET` is refused: a GET logout is a CSRF vector). |
/// | `userinfo_path` | `/auth/userinfo` | `GET` answers the claims of the session's ID token as JSON (never a token); 401 without a session. |
/// | `scopes` | `["openid"]` | Must include `openid`; add `offline_access` where the IdP needs it for a refresh token (Auth0, oidc-provider). |
/// | `revocation_path` | none | RFC 7009 revocation endpoint path on the token endpoint's cluster; the refresh token is revoked at logout. |
/// | `end_session_endpoint` | none | OpenID RP-initiated logout; the browser is sent there with `client_id`, `id_token_hint` and `post_logout_redirect_uri`. |
/// | `post_logout_redirect` | `/` | Where logout ends: a same-origin path (resolved against the origin of `redirect_uri` for the IdP) or an absolute URL. |
/// | `session_lifetime_s` | 86400 | Absolute session length (the session's `exp`), 60 to 31536000. |
/// | `prompt` | none | OpenID `prompt`: space-separated `none`, `login`, `consent`, `select_account` (oidc-provider issues `offline_access` refresh tokens only with `consent`). |
/// | `extra_authorize_params` | `{}` | Further authorization request parameters (e.g. `audience`, `acr_values`, `ui_locales`); may not override the ones the relay sets. |
/// | `id_token_issuer` | `issuer` | The `iss` of ID tokens (and of RFC 9207 `iss` callback parameters), for IdPs whose access tokens name another issuer (Entra ID v1 access tokens with v2 ID tokens). |
#[derive(Debug, Clone)]
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
pub struct RawLogin {
    pub authorization_endpoint: String,
    pub redirect_uri: String,
    pub login_path: Option<String>,
    pub logout_path: Option<String>,
    pub userinfo_path: Option<String>,
    pub scopes: Option<Vec<String>>,
    pub revocation_path: Option<String>,
    pub end_session_endpoint: Option<String>,
    pub post_logout_redirect: Option<String>,
    pub session_lifetime_s: Option<u64>,
    pub prompt: Option<String>,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default),
        schemars(with = "BTreeMap<String, String>", extend("default" = {}))
    )]
    pub extra_authorize_params: Vec<(String, String)>,
    pub id_token_issuer: Option<String>,
}

impl RawLogin {
    const FIELDS: &'static [&'static str] = &[
        "authorization_endpoint",
        "redirect_uri",
        "login_path",
        "logout_path",
        "userinfo_path",
        "scopes",
        "revocation_path",
        "end_session_endpoint",
        "post_logout_redirect",
        "session_lifetime_s",
        "prompt",
        "extra_authorize_params",
        "id_token_issuer",
    ];

    /// The `login` object found at `at`.
    pub(crate) fn read(v: Value, at: &str) -> Result<RawLogin, ConfigError> {
        let mut o = Object::new(v, at, Self::FIELDS)?;
        Ok(RawLogin {
            authorization_endpoint: o.required("authorization_endpoint", json::string)?,
            redirect_uri: o.required("redirect_uri", json::string)?,
            login_path: o.optional("login_path", json::string)?,
            logout_path: o.optional("logout_path", json::string)?,
            userinfo_path: o.optional("userinfo_path", json::string)?,
            scopes: o.optional("scopes", json::strings)?,
            revocation_path: o.optional("revocation_path", json::string)?,
            end_session_endpoint: o.optional("end_session_endpoint", json::string)?,
            post_logout_redirect: o.optional("post_logout_redirect", json::string)?,
            session_lifetime_s: o.optional("session_lifetime_s", json::unsigned)?,
            prompt: o.optional("prompt", json::string)?,
            extra_authorize_params: o.or("extra_authorize_params", json::string_map, Vec::new)?,
            id_token_issuer: o.optional("id_token_issuer", json::string)?,
        })
    }
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
    /// `GET` answers the signed-in user's ID token claims.
    pub userinfo_path: String,
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
    UserInfo,
}

impl LoginConfig {
    /// Validates `raw`. `cookies` gives the session cookie name the flow cookie prefix derives
    /// from (`__Host-relay-session` → `__Host-relay-flow`; a name not ending in `session` gets
    /// `-flow` appended) and the other names it must not collide with.
    ///
    /// Errors name the field as `login.<member>`.
    pub fn new(raw: RawLogin, cookies: &CookieNames) -> Result<LoginConfig, ConfigError> {
        let redirect = parse_config_url(&raw.redirect_uri).map_err(|p| err("redirect_uri", p))?;
        if redirect.query.is_some() {
            return Err(err(
                "redirect_uri",
                "must not have a query (the callback is matched by path)",
            ));
        }
        let origin = format!("{}://{}", redirect.scheme, redirect.authority);
        let paths = Paths::new(&raw, redirect.path)?;
        parse_config_url(&raw.authorization_endpoint)
            .map_err(|p| err("authorization_endpoint", p))?;
        let scopes = scopes(raw.scopes.unwrap_or_else(|| vec!["openid".to_owned()]))?;
        if let Some(p) = &raw.revocation_path {
            check_path(p).map_err(|p| err("revocation_path", p))?;
        }
        if let Some(u) = &raw.end_session_endpoint {
            parse_config_url(u).map_err(|p| err("end_session_endpoint", p))?;
        }
        let post_logout_redirect = raw.post_logout_redirect.unwrap_or_else(|| "/".to_owned());
        let post_logout_redirect_uri = post_logout_uri(&post_logout_redirect, &origin)?;
        let session_lifetime_s = raw.session_lifetime_s.unwrap_or(DEFAULT_SESSION_LIFETIME_S);
        if !(60..=31_536_000).contains(&session_lifetime_s) {
            return Err(err(
                "session_lifetime_s",
                "must be between 60 and 31536000 seconds",
            ));
        }
        if let Some(prompt) = &raw.prompt {
            check_prompt(prompt)?;
        }
        let extra_authorize_params = extra_authorize_params(raw.extra_authorize_params)?;
        if raw
            .id_token_issuer
            .as_ref()
            .is_some_and(|i| i.trim().is_empty())
        {
            return Err(err("id_token_issuer", "must not be empty"));
        }

        let flow_cookie_prefix = match cookies.session.strip_suffix("session") {
            Some(base) if !base.is_empty() => format!("{base}flow"),
            _ => format!("{}-flow", cookies.session),
        };
        let config = LoginConfig {
            authorization_endpoint: raw.authorization_endpoint,
            redirect_uri: raw.redirect_uri,
            callback_path: paths.callback,
            login_path: paths.login,
            logout_path: paths.logout,
            userinfo_path: paths.userinfo,
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
                return Err(ConfigError::new(
                    "cookies",
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
        } else if path == self.userinfo_path {
            Some(Route::UserInfo)
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

    /// The issuer of ID tokens: `id_token_issuer`, else `issuer` (the configured top-level one).
    pub fn id_token_issuer<'a>(&'a self, issuer: &'a str) -> &'a str {
        self.id_token_issuer.as_deref().unwrap_or(issuer)
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

/// An error about `login.<member>`.
fn err(member: &str, problem: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("login.{member}"), problem)
}

/// The paths the relay answers itself, each distinct.
struct Paths {
    callback: String,
    login: String,
    logout: String,
    userinfo: String,
}

impl Paths {
    fn new(raw: &RawLogin, callback: &str) -> Result<Paths, ConfigError> {
        check_path(callback).map_err(|p| err("redirect_uri", format!("path {p}")))?;
        let or =
            |v: &Option<String>, default: &str| v.clone().unwrap_or_else(|| default.to_owned());
        let paths = Paths {
            callback: callback.to_owned(),
            login: or(&raw.login_path, "/auth/login"),
            logout: or(&raw.logout_path, "/auth/logout"),
            userinfo: or(&raw.userinfo_path, "/auth/userinfo"),
        };
        check_path(&paths.login).map_err(|p| err("login_path", p))?;
        check_path(&paths.logout).map_err(|p| err("logout_path", p))?;
        check_path(&paths.userinfo).map_err(|p| err("userinfo_path", p))?;
        if paths.login == paths.callback {
            return Err(err(
                "login_path",
                "must differ from the path of redirect_uri",
            ));
        }
        if paths.logout == paths.callback || paths.logout == paths.login {
            return Err(err(
                "logout_path",
                "must differ from login_path and from the path of redirect_uri",
            ));
        }
        if [&paths.callback, &paths.login, &paths.logout].contains(&&paths.userinfo) {
            return Err(err(
                "userinfo_path",
                "must differ from login_path, logout_path and the path of redirect_uri",
            ));
        }
        Ok(paths)
    }
}

/// RFC 6749 §3.3 scope tokens, no duplicates, `openid` among them.
fn scopes(scopes: Vec<String>) -> Result<Vec<String>, ConfigError> {
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
            "must include \"openid\" (the relay verifies an ID token)",
        ));
    }
    Ok(scopes)
}

/// The absolute `post_logout_redirect_uri` for a configured same-origin path or absolute URL.
fn post_logout_uri(configured: &str, origin: &str) -> Result<String, ConfigError> {
    if !configured.starts_with('/') {
        parse_config_url(configured).map_err(|p| err("post_logout_redirect", p))?;
        return Ok(configured.to_owned());
    }
    match check_return_to(configured) {
        Some(p) if p == configured => Ok(format!("{origin}{p}")),
        _ => Err(err(
            "post_logout_redirect",
            "must be a same-origin path such as \"/\" or an absolute https URL",
        )),
    }
}

/// OpenID `prompt`: known values, `none` alone.
fn check_prompt(prompt: &str) -> Result<(), ConfigError> {
    let values: Vec<&str> = prompt.split(' ').collect();
    let known = values
        .iter()
        .all(|v| matches!(*v, "none" | "login" | "consent" | "select_account"));
    if !known || values.len() > 4 {
        return Err(err(
            "prompt",
            "must be space-separated values of none, login, consent, select_account",
        ));
    }
    if values.contains(&"none") && values.len() > 1 {
        return Err(err(
            "prompt",
            "\"none\" cannot be combined with other values",
        ));
    }
    Ok(())
}

/// Further authorization parameters: plain names, not the relay's own, bounded values.
fn extra_authorize_params(
    raw: Vec<(String, String)>,
) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::with_capacity(raw.len());
    for (k, v) in raw {
        let field = format!("extra_authorize_params.{k}");
        let valid_name = !k.is_empty()
            && k.len() <= 64
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !valid_name {
            return Err(err(
                &field,
                "parameter names are 1 to 64 characters of A-Z a-z 0-9 _ . -",
            ));
        }
        if RESERVED_AUTHORIZE_PARAMS.contains(&k.as_str()) {
            return Err(err(&field, "is set by the relay itself"));
        }
        if v.len() > 1024 || v.chars().any(char::is_control) {
            return Err(err(
                &field,
                "value must be at most 1024 bytes without control characters",
            ));
        }
        out.push((k, v));
    }
    Ok(out)
}
