//! Silent refresh: the sealed-session keys, the token endpoint and the client's credentials.

use std::fmt;

use crate::json::Value;
use zeroize::Zeroizing;

use super::error::ConfigError;
use super::json::{self, Object};
use super::secret::{EnvLookup, RawSecret};
use super::upstream::{upstream, Upstream};
use crate::http::cookie;
use crate::session::SessionKeys;

/// A secret string: `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// How the filter authenticates to the token endpoint (RFC 6749 §2.3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientAuth {
    /// HTTP Basic with the form-encoded id and secret.
    Basic { secret: Secret },
    /// `client_id` and `client_secret` in the form body.
    Post { secret: Secret },
    /// A public client: `client_id` in the body, no secret.
    None,
}

/// Headers an upstream may use to hand rotated tokens to the filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamTokenHeaders {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

impl RawUpstreamTokenHeaders {
    pub(super) fn read(v: Value, at: &str) -> Result<RawUpstreamTokenHeaders, ConfigError> {
        let mut o = Object::new(v, at, &["access_token", "refresh_token"])?;
        Ok(RawUpstreamTokenHeaders {
            access_token: o.optional("access_token", json::string)?,
            refresh_token: o.optional("refresh_token", json::string)?,
        })
    }
}

/// Silent refresh: sealed sessions and the token endpoint.
#[derive(Debug)]
pub struct RefreshConfig {
    pub session_keys: SessionKeys,
    pub endpoint: Upstream,
    pub timeout_ms: u64,
    pub client_id: String,
    pub client_auth: ClientAuth,
    /// Refresh when the access token expires within this many seconds.
    pub margin_s: u64,
    /// How long a refresh outcome is reused by requests still carrying the old refresh token.
    pub grace_s: u64,
    /// How long a session waits after a transient token-endpoint failure before trying again.
    pub backoff_s: u64,
    pub upstream_token_headers: Option<UpstreamTokenHeaders>,
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
pub struct RawSessionKey {
    pub kid: String,
    pub key: RawSecret,
}

impl RawSessionKey {
    pub(super) fn read(v: Value, at: &str) -> Result<RawSessionKey, ConfigError> {
        let mut o = Object::new(v, at, &["kid", "key"])?;
        Ok(RawSessionKey {
            kid: o.required("kid", json::string)?,
            key: o.required("key", RawSecret::read)?,
        })
    }
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
pub struct RawEndpoint {
    pub cluster: Option<String>,
    pub authority: Option<String>,
    pub path: Option<String>,
    pub timeout_ms: Option<u64>,
}

impl RawEndpoint {
    pub(super) fn read(v: Value, at: &str) -> Result<RawEndpoint, ConfigError> {
        let mut o = Object::new(v, at, &["cluster", "authority", "path", "timeout_ms"])?;
        Ok(RawEndpoint {
            cluster: o.optional("cluster", json::string)?,
            authority: o.optional("authority", json::string)?,
            path: o.optional("path", json::string)?,
            timeout_ms: o.optional("timeout_ms", json::unsigned)?,
        })
    }
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
pub struct RawUpstreamTokenHeaders {
    pub access_token: Option<String>,
    pub refresh_token: Option<String>,
}

pub struct RawRefresh {
    pub session_keys: Option<Vec<RawSessionKey>>,
    pub token_endpoint: Option<RawEndpoint>,
    pub client_id: Option<String>,
    pub client_secret: Option<RawSecret>,
    pub client_auth: Option<String>,
    pub margin_s: Option<u64>,
    pub grace_s: Option<u64>,
    pub backoff_s: Option<u64>,
    pub upstream_token_headers: Option<RawUpstreamTokenHeaders>,
}

/// Validates the silent-refresh fields; `None` when neither `session_keys` nor
/// `token_endpoint` is set (verification only). Secrets given as `{"env": ...}` are read
/// through `env`.
pub fn refresh_config(
    raw: RawRefresh,
    env: EnvLookup,
) -> Result<Option<RefreshConfig>, ConfigError> {
    let (keys, endpoint) = match (raw.session_keys, raw.token_endpoint) {
        (None, None) => {
            for (field, set) in [
                ("client_id", raw.client_id.is_some()),
                ("client_secret", raw.client_secret.is_some()),
                ("client_auth", raw.client_auth.is_some()),
                ("refresh_margin_s", raw.margin_s.is_some()),
                ("refresh_grace_s", raw.grace_s.is_some()),
                ("refresh_backoff_s", raw.backoff_s.is_some()),
                (
                    "upstream_token_headers",
                    raw.upstream_token_headers.is_some(),
                ),
            ] {
                if set {
                    return Err(ConfigError::new(
                        field,
                        "needs `session_keys` and `token_endpoint` (silent refresh)",
                    ));
                }
            }
            return Ok(None);
        }
        (Some(_), None) => {
            return Err(ConfigError::new(
                "token_endpoint",
                "is required when `session_keys` is set",
            ))
        }
        (None, Some(_)) => {
            return Err(ConfigError::new(
                "session_keys",
                "is required when `token_endpoint` is set",
            ))
        }
        (Some(k), Some(e)) => (k, e),
    };
    let session_keys = session_keys(keys, env)?;
    let timeout_ms = endpoint.timeout_ms.unwrap_or(3000);
    if !(100..=60_000).contains(&timeout_ms) {
        return Err(ConfigError::new(
            "token_endpoint.timeout_ms",
            "must be between 100 and 60000",
        ));
    }
    let endpoint = upstream(
        "token_endpoint",
        endpoint.cluster,
        endpoint.authority,
        endpoint.path,
    )?;
    let client_id = raw
        .client_id
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ConfigError::new("client_id", "is required with `token_endpoint`"))?;
    let secret = match raw.client_secret {
        Some(s) => Some(Secret(s.resolve("client_secret", env)?.to_string())),
        None => None,
    };
    let client_auth = client_auth(raw.client_auth, secret)?;
    let margin_s = raw.margin_s.unwrap_or(10);
    let grace_s = raw.grace_s.unwrap_or(60);
    let backoff_s = raw.backoff_s.unwrap_or(5);
    for (field, value, max) in [
        ("refresh_margin_s", margin_s, 3600),
        ("refresh_grace_s", grace_s, 3600),
        ("refresh_backoff_s", backoff_s, 300),
    ] {
        if value > max {
            return Err(ConfigError::new(field, format!("must be at most {max}")));
        }
    }
    if backoff_s == 0 {
        return Err(ConfigError::new("refresh_backoff_s", "must be at least 1"));
    }
    let upstream_token_headers = raw.upstream_token_headers.map(token_headers).transpose()?;
    Ok(Some(RefreshConfig {
        session_keys,
        endpoint,
        timeout_ms,
        client_id,
        client_auth,
        margin_s,
        grace_s,
        backoff_s,
        upstream_token_headers,
    }))
}

/// `session_keys`, each key read from the configuration or the environment. A refused key
/// that came from the environment is named with its variable, never its value.
fn session_keys(keys: Vec<RawSessionKey>, env: EnvLookup) -> Result<SessionKeys, ConfigError> {
    let mut entries: Vec<(String, Zeroizing<String>)> = Vec::with_capacity(keys.len());
    for (i, k) in keys.iter().enumerate() {
        entries.push((
            k.kid.clone(),
            k.key.resolve(&format!("session_keys[{i}].key"), env)?,
        ));
    }
    SessionKeys::from_config(&entries).map_err(|e| {
        let from_env = e
            .index
            .and_then(|i| keys.get(i))
            .filter(|_| e.member == "key")
            .and_then(|k| k.key.env_name());
        match from_env {
            Some(name) => ConfigError::new(
                e.field(),
                format!("{} (environment variable {name:?})", e.problem),
            ),
            None => ConfigError::new(e.field(), e.problem),
        }
    })
}

/// `client_auth` and `client_secret`: basic when a secret is given, else none.
fn client_auth(method: Option<String>, secret: Option<Secret>) -> Result<ClientAuth, ConfigError> {
    let method =
        method.unwrap_or_else(|| if secret.is_some() { "basic" } else { "none" }.to_string());
    match (method.as_str(), secret) {
        ("basic", Some(secret)) => Ok(ClientAuth::Basic { secret }),
        ("post", Some(secret)) => Ok(ClientAuth::Post { secret }),
        ("none", None) => Ok(ClientAuth::None),
        ("basic" | "post", None) => Err(ConfigError::new(
            "client_secret",
            format!("is required with \"client_auth\": {method:?}"),
        )),
        ("none", Some(_)) => Err(ConfigError::new(
            "client_secret",
            "is set but \"client_auth\" is \"none\"",
        )),
        _ => Err(ConfigError::new(
            "client_auth",
            format!("{method:?} is not one of basic, post, none"),
        )),
    }
}

/// `upstream_token_headers`: lower-case header names.
fn token_headers(h: RawUpstreamTokenHeaders) -> Result<UpstreamTokenHeaders, ConfigError> {
    for (field, name) in [
        ("upstream_token_headers.access_token", &h.access_token),
        ("upstream_token_headers.refresh_token", &h.refresh_token),
    ] {
        if let Some(name) = name {
            if !cookie::is_valid_name(name) || name.to_ascii_lowercase() != *name {
                return Err(ConfigError::new(field, "must be a lower-case header name"));
            }
        }
    }
    Ok(UpstreamTokenHeaders {
        access_token: h.access_token,
        refresh_token: h.refresh_token,
    })
}
