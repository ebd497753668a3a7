//! Plugin configuration: parsed and validated once (in `on_configure`) into ready-to-use types.
//!
//! Unknown fields are errors, and every error names the field it is about, so a typo stops the
//! plugin at start-up with one readable log line instead of silently weakening a check.

mod cookies;
mod error;
mod json;
mod login;
mod refresh;
mod secret;
mod summary;
mod upstream;

// Only the JSON Schema (host builds) describes the free-key maps as maps.
#[cfg(not(target_arch = "wasm32"))]
use std::collections::BTreeMap;
use std::rc::Rc;

use crate::json::Value;

pub use cookies::CookieNames;
use cookies::{cookie_names, RawCookies};
pub use error::ConfigError;
use json::Object;
pub use login::RawLogin;
pub use login::{LoginConfig, Route, DEFAULT_SESSION_LIFETIME_S};
use refresh::{refresh_config, RawEndpoint, RawRefresh, RawSessionKey, RawUpstreamTokenHeaders};
pub use refresh::{ClientAuth, RefreshConfig, Secret, UpstreamTokenHeaders};
pub use secret::EnvLookup;
use secret::RawSecret;
pub(crate) use summary::startup_line;
use upstream::upstream;
pub use upstream::Upstream;

use crate::csrf::CsrfPolicy;
use crate::http::authority::{self, HostPattern};
use crate::http::path::PathPolicy;
use crate::http::{cookie, NameSet, RequestView};
use crate::jwt::jwks::{Alg, AlgSet, KeySet};
use crate::jwt::token::ClaimRules;

/// Default size of the verified-token cache, per worker VM.
pub const DEFAULT_TOKEN_CACHE_SIZE: usize = 4096;

#[derive(Debug)]
pub enum JwksSource {
    /// Keys given in the configuration.
    Inline(Rc<KeySet>),
    /// Keys fetched from the IdP through a cluster at start and every `refresh_s`.
    Remote { upstream: Upstream, refresh_s: u64 },
}

/// The validated configuration.
#[derive(Debug)]
pub struct Config {
    pub paths: PathPolicy,
    pub rules: ClaimRules,
    pub jwks: JwksSource,
    pub cookies: CookieNames,
    pub token_cache_size: usize,
    /// `None` when no `session_keys`/`token_endpoint` are configured (verification only).
    pub refresh: Option<RefreshConfig>,
    /// `None`: unsafe requests must come from the request's own host.
    pub csrf: Option<CsrfPolicy>,
    /// 0 disables the check.
    pub max_request_headers_bytes: usize,
    /// The relay runs the OIDC login itself (authorization code + PKCE, callback, logout).
    pub login: Option<LoginConfig>,
    /// The hosts the relay serves; `None`: every host. Never empty.
    pub hosts: Option<Vec<HostPattern>>,
    /// The relay's cookies still reach unprotected and public paths (off: removed there too).
    pub forward_relay_cookies_to_unprotected: bool,
    /// `required_claims.token_use` was pinned to `access` because the issuer is Cognito's.
    pub token_use_pinned: bool,
    /// The `forward_claims` headers' names, loosely: a request none of whose names may meet
    /// them carries no client-sent copy, without a search.
    pub claim_header_names: NameSet,
}

// ---- raw shapes (as written; read by `json`, described by the schema) --------------------

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
struct RawConfig {
    protected_prefixes: Vec<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    public_prefixes: Vec<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    case_insensitive_prefixes: bool,
    issuer: String,
    audiences: Vec<String>,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default),
        schemars(with = "BTreeMap<String, serde_json::Value>", extend("default" = {}))
    )]
    required_claims: Vec<(String, Value)>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default = "default_algorithms"))]
    algorithms: Vec<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default = "default_clock_skew"))]
    clock_skew_s: u64,
    jwks: RawJwks,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    cookies: RawCookies,
    #[cfg_attr(
        not(target_arch = "wasm32"),
        serde(default),
        schemars(with = "BTreeMap<String, String>", extend("default" = {}))
    )]
    forward_claims: Vec<(String, String)>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    token_cache_size: Option<usize>,
    session_keys: Option<Vec<RawSessionKey>>,
    token_endpoint: Option<RawEndpoint>,
    client_id: Option<String>,
    client_secret: Option<RawSecret>,
    client_auth: Option<String>,
    refresh_margin_s: Option<u64>,
    refresh_grace_s: Option<u64>,
    refresh_backoff_s: Option<u64>,
    upstream_token_headers: Option<RawUpstreamTokenHeaders>,
    csrf: Option<RawCsrf>,
    max_request_headers_bytes: Option<usize>,
    login: Option<RawLogin>,
    hosts: Option<Vec<String>>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    forward_relay_cookies_to_unprotected: bool,
}

impl RawConfig {
    const FIELDS: &'static [&'static str] = &[
        "protected_prefixes",
        "public_prefixes",
        "case_insensitive_prefixes",
        "issuer",
        "audiences",
        "required_claims",
        "algorithms",
        "clock_skew_s",
        "jwks",
        "cookies",
        "forward_claims",
        "token_cache_size",
        "session_keys",
        "token_endpoint",
        "client_id",
        "client_secret",
        "client_auth",
        "refresh_margin_s",
        "refresh_grace_s",
        "refresh_backoff_s",
        "upstream_token_headers",
        "csrf",
        "max_request_headers_bytes",
        "login",
        "hosts",
        "forward_relay_cookies_to_unprotected",
    ];

    fn read(v: Value, at: &str) -> Result<RawConfig, ConfigError> {
        let mut o = Object::new(v, at, Self::FIELDS)?;
        Ok(RawConfig {
            protected_prefixes: o.required("protected_prefixes", json::strings)?,
            public_prefixes: o.or("public_prefixes", json::strings, Vec::new)?,
            case_insensitive_prefixes: o
                .or("case_insensitive_prefixes", json::boolean, || false)?,
            issuer: o.required("issuer", json::string)?,
            audiences: o.required("audiences", json::strings)?,
            required_claims: o.or("required_claims", json::value_map, Vec::new)?,
            algorithms: o.or("algorithms", json::strings, default_algorithms)?,
            clock_skew_s: o.or("clock_skew_s", json::unsigned, default_clock_skew)?,
            jwks: o.required("jwks", RawJwks::read)?,
            cookies: o.or("cookies", RawCookies::read, RawCookies::default)?,
            forward_claims: o.or("forward_claims", json::string_map, Vec::new)?,
            token_cache_size: o.optional("token_cache_size", json::size)?,
            session_keys: o.optional("session_keys", |v, at| {
                json::list(v, at, RawSessionKey::read)
            })?,
            token_endpoint: o.optional("token_endpoint", RawEndpoint::read)?,
            client_id: o.optional("client_id", json::string)?,
            client_secret: o.optional("client_secret", RawSecret::read)?,
            client_auth: o.optional("client_auth", json::string)?,
            refresh_margin_s: o.optional("refresh_margin_s", json::unsigned)?,
            refresh_grace_s: o.optional("refresh_grace_s", json::unsigned)?,
            refresh_backoff_s: o.optional("refresh_backoff_s", json::unsigned)?,
            upstream_token_headers: o
                .optional("upstream_token_headers", RawUpstreamTokenHeaders::read)?,
            csrf: o.optional("csrf", RawCsrf::read)?,
            max_request_headers_bytes: o.optional("max_request_headers_bytes", json::size)?,
            login: o.optional("login", RawLogin::read)?,
            hosts: o.optional("hosts", json::strings)?,
            forward_relay_cookies_to_unprotected: o.or(
                "forward_relay_cookies_to_unprotected",
                json::boolean,
                || false,
            )?,
        })
    }
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
struct RawCsrf {
    allowed_origins: Vec<String>,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    double_submit: bool,
    #[cfg_attr(not(target_arch = "wasm32"), serde(default))]
    same_origin_posts: bool,
}

impl RawCsrf {
    const FIELDS: &'static [&'static str] =
        &["allowed_origins", "double_submit", "same_origin_posts"];

    fn read(v: Value, at: &str) -> Result<RawCsrf, ConfigError> {
        let mut o = Object::new(v, at, Self::FIELDS)?;
        Ok(RawCsrf {
            allowed_origins: o.required("allowed_origins", json::strings)?,
            double_submit: o.or("double_submit", json::boolean, || false)?,
            same_origin_posts: o.or("same_origin_posts", json::boolean, || false)?,
        })
    }
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_clock_skew() -> u64 {
    30
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
struct RawJwks {
    #[cfg_attr(
        not(target_arch = "wasm32"),
        schemars(with = "Option<serde_json::Value>")
    )]
    inline: Option<Value>,
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    refresh_s: Option<u64>,
}

impl RawJwks {
    const FIELDS: &'static [&'static str] =
        &["inline", "cluster", "authority", "path", "refresh_s"];

    fn read(v: Value, at: &str) -> Result<RawJwks, ConfigError> {
        let mut o = Object::new(v, at, Self::FIELDS)?;
        Ok(RawJwks {
            inline: o.optional("inline", json::any)?,
            cluster: o.optional("cluster", json::string)?,
            authority: o.optional("authority", json::string)?,
            path: o.optional("path", json::string)?,
            refresh_s: o.optional("refresh_s", json::unsigned)?,
        })
    }
}

// ---- parsing and validation ---------------------------------------------------------------

impl Config {
    /// The response headers an upstream rotates tokens in, when configured.
    pub fn upstream_token_headers(&self) -> Option<&UpstreamTokenHeaders> {
        self.refresh.as_ref()?.upstream_token_headers.as_ref()
    }

    /// Parses and validates a plugin configuration (a JSON object) with no environment: a
    /// secret given as `{"env": ...}` is refused as not set. See [`Config::parse_with_env`].
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        Config::parse_with_env(json, &|_| None)
    }

    /// Parses and validates the plugin configuration (a JSON object). Secret fields written as
    /// `{"env": "VAR"}` are read through `env`: the filter passes the Wasm VM's environment.
    pub fn parse_with_env(json: &[u8], env: EnvLookup) -> Result<Config, ConfigError> {
        let raw = RawConfig::read(json::document(json)?, "")?;
        Config::validate(raw, env)
    }

    /// The JSON Schema of the configuration, derived from the `Raw*` types `parse` fills (a
    /// test in `json` holds the reader to it). Host builds only: the filter never needs it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn json_schema() -> serde_json::Value {
        let mut schema = schemars::schema_for!(RawConfig).to_value();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "title".into(),
                serde_json::Value::from("edge-token-relay plugin configuration"),
            );
            // The shapes only: ranges and cross-field rules are checked by `check-config`.
            obj.insert(
                "description".into(),
                serde_json::Value::from(
                    "The shape of the plugin configuration (field names, types, required \
                     fields). Ranges and rules between fields are checked by check-config.",
                ),
            );
        }
        schema
    }

    fn validate(raw: RawConfig, env: EnvLookup) -> Result<Config, ConfigError> {
        let paths = path_policy(
            raw.protected_prefixes,
            raw.public_prefixes,
            raw.case_insensitive_prefixes,
        )?;
        if raw.issuer.trim().is_empty() {
            return Err(ConfigError::new("issuer", "must not be empty"));
        }
        if raw.audiences.is_empty() || raw.audiences.iter().any(|a| a.is_empty()) {
            return Err(ConfigError::new(
                "audiences",
                "must list at least one non-empty audience (or Cognito app client id)",
            ));
        }
        let algorithms = algorithms(&raw.algorithms)?;
        if raw.clock_skew_s > 600 {
            return Err(ConfigError::new(
                "clock_skew_s",
                "must be at most 600 seconds",
            ));
        }
        let mut required_claims = raw.required_claims;
        // A Cognito ID token verifies like an access token (same keys, issuer and client id in
        // `aud`): only `token_use` tells them apart, so it is pinned unless set explicitly.
        let token_use_pinned = is_cognito_issuer(&raw.issuer)
            && !required_claims.iter().any(|(name, _)| name == "token_use");
        if token_use_pinned {
            // In key order, like the claims read from the configuration.
            let at = required_claims.partition_point(|(name, _)| name.as_str() < "token_use");
            required_claims.insert(at, ("token_use".into(), Value::from("access")));
        }
        let rules = ClaimRules {
            issuer: raw.issuer,
            audiences: raw.audiences,
            required_claims,
            algorithms,
            clock_skew_s: raw.clock_skew_s,
            forward_claims: forward_claims(raw.forward_claims)?,
        };
        let refresh = refresh_config(
            RawRefresh {
                session_keys: raw.session_keys,
                token_endpoint: raw.token_endpoint,
                client_id: raw.client_id,
                client_secret: raw.client_secret,
                client_auth: raw.client_auth,
                margin_s: raw.refresh_margin_s,
                grace_s: raw.refresh_grace_s,
                backoff_s: raw.refresh_backoff_s,
                upstream_token_headers: raw.upstream_token_headers,
            },
            env,
        )?;
        let csrf = raw.csrf.map(csrf_policy).transpose()?;
        let max_request_headers_bytes = raw.max_request_headers_bytes.unwrap_or(8192);
        if max_request_headers_bytes != 0 && !(1024..=1 << 20).contains(&max_request_headers_bytes)
        {
            return Err(ConfigError::new(
                "max_request_headers_bytes",
                "must be 0 (off) or between 1024 and 1048576",
            ));
        }
        let jwks = jwks_source(raw.jwks)?;
        let cookies = cookie_names(raw.cookies)?;
        let login = match raw.login {
            None => None,
            Some(_) if refresh.is_none() => {
                return Err(ConfigError::new(
                    "login",
                    "needs `session_keys`, `token_endpoint` and `client_id` (the login stores a session)",
                ))
            }
            Some(l) => Some(LoginConfig::new(l, &cookies)?),
        };
        let hosts = raw.hosts.map(host_patterns).transpose()?;
        let token_cache_size = raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        if !(1..=1_000_000).contains(&token_cache_size) {
            return Err(ConfigError::new(
                "token_cache_size",
                "must be between 1 and 1000000",
            ));
        }
        let claim_header_names =
            NameSet::of(rules.forward_claims.iter().map(|(h, _)| h.as_bytes()));

        Ok(Config {
            paths,
            rules,
            jwks,
            cookies,
            token_cache_size,
            refresh,
            csrf,
            max_request_headers_bytes,
            login,
            hosts,
            forward_relay_cookies_to_unprotected: raw.forward_relay_cookies_to_unprotected,
            token_use_pinned,
            claim_header_names,
        })
    }

    /// Whether the relay acts on this request at all: its `:authority` is one of `hosts`
    /// (always, without `hosts`).
    pub fn serves(&self, req: &RequestView<'_>) -> bool {
        self.hosts
            .as_deref()
            .is_none_or(|patterns| authority::serves(patterns, req.get(":authority")))
    }
}

/// `hosts`: a non-empty list of host patterns.
fn host_patterns(list: Vec<String>) -> Result<Vec<HostPattern>, ConfigError> {
    if list.is_empty() {
        return Err(ConfigError::new(
            "hosts",
            "must list at least one host (leave the field out to serve every host)",
        ));
    }
    list.iter()
        .enumerate()
        .map(|(i, h)| HostPattern::parse(h).map_err(|e| ConfigError::new(format!("hosts[{i}]"), e)))
        .collect()
}

/// `https://cognito-idp.<region>.amazonaws.com[.cn]/<user pool id>`.
fn is_cognito_issuer(issuer: &str) -> bool {
    let Some(rest) = issuer.strip_prefix("https://cognito-idp.") else {
        return false;
    };
    let Some((host, pool)) = rest.split_once('/') else {
        return false;
    };
    let region = host
        .strip_suffix(".amazonaws.com")
        .or_else(|| host.strip_suffix(".amazonaws.com.cn"));
    region.is_some_and(|r| !r.is_empty() && !r.contains('.'))
        && !pool.is_empty()
        && !pool.contains('/')
}

fn path_policy(
    protected: Vec<String>,
    public: Vec<String>,
    case_insensitive: bool,
) -> Result<PathPolicy, ConfigError> {
    let paths = PathPolicy {
        protected: prefixes("protected_prefixes", protected)?,
        public: prefixes("public_prefixes", public)?,
        case_insensitive,
    };
    if paths.protected.is_empty() {
        return Err(ConfigError::new(
            "protected_prefixes",
            "must list at least one path prefix",
        ));
    }
    Ok(paths)
}

fn algorithms(names: &[String]) -> Result<AlgSet, ConfigError> {
    let mut algorithms = AlgSet::empty();
    for (i, name) in names.iter().enumerate() {
        match Alg::from_name(name) {
            Some(alg) => algorithms.insert(alg),
            None => {
                return Err(ConfigError::new(
                    format!("algorithms[{i}]"),
                    format!("unsupported algorithm {name:?} (supported: RS256, ES256, EdDSA)"),
                ))
            }
        }
    }
    if algorithms.is_empty() {
        return Err(ConfigError::new(
            "algorithms",
            "must list at least one algorithm",
        ));
    }
    Ok(algorithms)
}

/// `forward_claims`: lower-cased header names the relay may own, each with a claim.
fn forward_claims(raw: Vec<(String, String)>) -> Result<Vec<(String, String)>, ConfigError> {
    let mut forward_claims = Vec::with_capacity(raw.len());
    for (header, claim) in raw {
        let field = format!("forward_claims.{header}");
        let lower = header.to_ascii_lowercase();
        if !cookie::is_valid_name(&lower) {
            return Err(ConfigError::new(field, "is not a valid header name"));
        }
        if RESERVED_HEADERS.contains(&lower.as_str()) {
            return Err(ConfigError::new(
                field,
                "names a header the filter or Envoy owns",
            ));
        }
        if claim.is_empty() {
            return Err(ConfigError::new(field, "claim name must not be empty"));
        }
        forward_claims.push((lower, claim));
    }
    Ok(forward_claims)
}

fn csrf_policy(raw: RawCsrf) -> Result<CsrfPolicy, ConfigError> {
    let mut policy = CsrfPolicy::new(&raw.allowed_origins, raw.double_submit)
        .map_err(|e| ConfigError::new(e.field(), e.problem))?;
    if raw.same_origin_posts && !raw.double_submit {
        return Err(ConfigError::new(
            "csrf.same_origin_posts",
            "only applies with double_submit: true (without it, same-origin posts already pass)",
        ));
    }
    policy.same_origin_posts = raw.same_origin_posts;
    Ok(policy)
}

/// Headers a forwarded claim must never overwrite.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-envoy-original-path",
];

fn prefixes(field: &str, list: Vec<String>) -> Result<Vec<String>, ConfigError> {
    for (i, p) in list.iter().enumerate() {
        if !p.starts_with('/') {
            return Err(ConfigError::new(
                format!("{field}[{i}]"),
                format!("path prefix {p:?} must start with '/'"),
            ));
        }
    }
    Ok(list)
}

fn jwks_source(raw: RawJwks) -> Result<JwksSource, ConfigError> {
    if let Some(inline) = raw.inline {
        if raw.cluster.is_some()
            || raw.authority.is_some()
            || raw.path.is_some()
            || raw.refresh_s.is_some()
        {
            return Err(ConfigError::new(
                "jwks",
                "give either `inline` or `cluster`/`authority`/`path`, not both",
            ));
        }
        let keys = KeySet::from_document(&inline)
            .map_err(|e| ConfigError::new("jwks.inline", e.to_string()))?;
        return Ok(JwksSource::Inline(Rc::new(keys)));
    }
    let upstream = upstream("jwks", raw.cluster, raw.authority, raw.path)?;
    let refresh_s = raw.refresh_s.unwrap_or(300);
    if !(10..=86_400).contains(&refresh_s) {
        return Err(ConfigError::new(
            "jwks.refresh_s",
            "must be between 10 and 86400 seconds",
        ));
    }
    Ok(JwksSource::Remote {
        upstream,
        refresh_s,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::cookie::SameSite;
    use serde_json::{json, Value};

    fn base() -> Value {
        json!({
            "protected_prefixes": ["/api/"],
            "public_prefixes": ["/api/public/"],
            "issuer": "https://idp.test",
            "audiences": ["my-app-client-id"],
            "required_claims": {"token_use": "access"},
            "algorithms": ["RS256", "ES256", "EdDSA"],
            "clock_skew_s": 30,
            "jwks": {"cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json", "refresh_s": 300},
            "cookies": {"access_token": "__Host-relay-at", "session": "__Host-relay-session", "csrf": "__Host-relay-csrf",
                        "path": "/", "same_site": "Strict", "secure": true},
            "forward_claims": {"x-user-sub": "sub"}
        })
    }

    fn with(mut v: Value, pointer: &str, new: Option<Value>) -> Value {
        let (parent, key) = pointer.rsplit_once('/').unwrap();
        let obj = v.pointer_mut(parent).unwrap().as_object_mut().unwrap();
        match new {
            Some(n) => obj.insert(key.to_string(), n),
            None => obj.remove(key),
        };
        v
    }

    // testkit::SESSION_KEY, a fixed random test key.
    const KEY: &str = "4Hi4PszsrQoMyXW1n2L_dGNr3o4RBAiJIInqXNRYMX8";

    /// The base config with refresh configured, then `extra` merged (null removes a field).
    fn refresh(extra: Value) -> Value {
        let mut v = base();
        let obj = v.as_object_mut().unwrap();
        obj.insert(
            "session_keys".into(),
            json!([{"kid": "2026-11", "key": KEY}]),
        );
        obj.insert(
            "token_endpoint".into(),
            json!({"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"}),
        );
        obj.insert("client_id".into(), json!("my-app-client-id"));
        obj.insert("client_secret".into(), json!("s3cret"));
        for (k, val) in extra.as_object().unwrap() {
            if val.is_null() {
                obj.remove(k);
            } else {
                obj.insert(k.clone(), val.clone());
            }
        }
        v
    }

    #[test]
    fn refresh_configuration_parses_with_defaults() {
        let c = parse(&refresh(json!({}))).unwrap();
        let r = c.refresh.unwrap();
        assert_eq!(r.client_id, "my-app-client-id");
        assert!(matches!(r.client_auth, ClientAuth::Basic { .. }));
        assert_eq!(r.timeout_ms, 3000);
        assert_eq!((r.margin_s, r.grace_s, r.backoff_s), (10, 60, 5));
        assert_eq!(r.session_keys.current_kid(), "2026-11");
        // Secrets never show in Debug.
        let dbg = format!("{r:?}");
        assert!(!dbg.contains("s3cret") && !dbg.contains(KEY), "{dbg}");
        let c = parse(&refresh(json!({"client_secret": null}))).unwrap();
        assert_eq!(c.refresh.unwrap().client_auth, ClientAuth::None);
        let c = parse(&refresh(json!({"client_auth": "post"}))).unwrap();
        assert!(matches!(
            c.refresh.unwrap().client_auth,
            ClientAuth::Post { .. }
        ));
        assert!(parse(&base()).unwrap().refresh.is_none());
    }

    fn parse(v: &Value) -> Result<Config, ConfigError> {
        Config::parse(v.to_string().as_bytes())
    }

    fn parse_env(v: &Value, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let lookup = |name: &str| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        };
        Config::parse_with_env(v.to_string().as_bytes(), &lookup)
    }

    const SECRET: &str = "client-secret-from-env-8d0f";

    #[test]
    fn secrets_come_from_the_environment() {
        let v = refresh(json!({
            "session_keys": [{"kid": "new", "key": {"env": "RELAY_SESSION_KEY"}},
                             {"kid": "old", "key": KEY}],
            "client_secret": {"env": "RELAY_CLIENT_SECRET"},
        }));
        let other = "l0RNIsw-UYAM6GuoFhx8p8qLrqssnRDdELgLmIG3KXI";
        let vars = [
            ("RELAY_SESSION_KEY", other),
            ("RELAY_CLIENT_SECRET", SECRET),
        ];
        let c = parse_env(&v, &vars).unwrap();
        let r = c.refresh.unwrap();
        assert!(
            matches!(&r.client_auth, ClientAuth::Basic { secret } if secret.expose() == SECRET)
        );
        // The key from the environment seals; the literal one still unseals.
        assert_eq!(r.session_keys.current_kid(), "new");
        let dbg = format!("{r:?}");
        assert!(!dbg.contains(SECRET) && !dbg.contains(other), "{dbg}");
        // Post takes its secret from the environment as well.
        let v = with(v, "/client_auth", Some(json!("post")));
        let r = parse_env(&v, &vars).unwrap().refresh.unwrap();
        assert!(matches!(r.client_auth, ClientAuth::Post { secret } if secret.expose() == SECRET));
    }

    #[test]
    fn a_missing_or_empty_variable_names_the_field_and_the_variable() {
        let v = refresh(json!({
            "session_keys": [{"kid": "a", "key": KEY}, {"kid": "b", "key": {"env": "K_B"}}],
            "client_secret": {"env": "RELAY_CLIENT_SECRET"},
        }));
        type Vars<'a> = &'a [(&'a str, &'a str)];
        let cases: &[(Vars, &str, &str)] = &[
            (
                &[("RELAY_CLIENT_SECRET", SECRET)],
                "session_keys[1].key",
                "\"K_B\" is not set",
            ),
            (
                &[("K_B", ""), ("RELAY_CLIENT_SECRET", SECRET)],
                "session_keys[1].key",
                "\"K_B\" is empty",
            ),
            (
                &[("K_B", KEY)],
                "client_secret",
                "\"RELAY_CLIENT_SECRET\" is not set",
            ),
            (
                &[("K_B", KEY), ("RELAY_CLIENT_SECRET", "")],
                "client_secret",
                "\"RELAY_CLIENT_SECRET\" is empty",
            ),
            // A weak key from the environment: named with its variable, never its value.
            (
                &[
                    ("K_B", "REPLACE-WITH-32-RANDOM-BYTES-BASE64URL-0000"),
                    ("RELAY_CLIENT_SECRET", SECRET),
                ],
                "session_keys[1].key",
                "is not a random key",
            ),
        ];
        for (vars, field, problem) in cases {
            let e = parse_env(&v, vars).unwrap_err();
            let line = e.to_string();
            assert_eq!(e.field, *field, "{line}");
            assert!(line.contains(problem), "{line}");
            assert!(!line.contains('\n'), "{line}");
            for (_, value) in vars.iter() {
                assert!(value.is_empty() || !line.contains(value), "{line}");
            }
        }
        let e = parse_env(
            &v,
            &[
                ("K_B", "REPLACE-WITH-32-RANDOM-BYTES-BASE64URL-0000"),
                ("RELAY_CLIENT_SECRET", SECRET),
            ],
        )
        .unwrap_err();
        assert!(e.problem.ends_with("(environment variable \"K_B\")"), "{e}");
        // Without an environment (`Config::parse`), an env reference is not set.
        let e = parse(&v).unwrap_err();
        assert_eq!(e.field, "session_keys[1].key", "{e}");
    }

    #[test]
    fn secret_fields_of_the_wrong_shape_are_refused() {
        let shapes = [
            json!({"env": 5}),
            json!({"file": "/run/secrets/key"}),
            json!({"env": "A", "default": "x"}),
            json!({}),
            json!({"env": ""}),
            json!({"env": "1ABC"}),
            json!({"env": "A B"}),
            json!(5),
            json!(["x"]),
        ];
        for shape in shapes {
            for (v, field) in [
                (
                    refresh(json!({"client_secret": shape.clone()})),
                    "client_secret",
                ),
                (
                    refresh(json!({"session_keys": [{"kid": "a", "key": shape.clone()}]})),
                    "session_keys[0].key",
                ),
            ] {
                let e = parse_env(&v, &[("A", SECRET), ("1ABC", SECRET)]).unwrap_err();
                let line = e.to_string();
                assert_eq!(e.field, field, "{shape}: {line}");
                assert!(
                    line.contains("must be a string or {\"env\"") || line.contains("`env` must"),
                    "{shape}: {line}"
                );
                assert!(!line.contains(SECRET), "{line}");
            }
        }
        // A number is not quoted back (it could be a secret typed without quotes).
        let e = parse(&refresh(json!({"client_secret": 123456789}))).unwrap_err();
        assert!(!e.to_string().contains("123456789"), "{e}");
    }

    #[test]
    fn weak_session_keys_are_refused_at_start() {
        for key in [
            "REPLACE-WITH-32-RANDOM-BYTES-BASE64URL-0000",
            "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ] {
            let v = refresh(json!({"session_keys": [{"kid": "a", "key": key}]}));
            let e = parse(&v).unwrap_err();
            assert_eq!(e.field, "session_keys[0].key");
            assert!(e.problem.starts_with("is not a random key"), "{e}");
            assert!(!e.to_string().contains(key), "{e}");
        }
    }

    #[test]
    fn issue_example_parses() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.paths.protected, vec!["/api/"]);
        assert_eq!(c.rules.issuer, "https://idp.test");
        assert_eq!(
            c.rules.forward_claims,
            vec![("x-user-sub".to_string(), "sub".to_string())]
        );
        assert_eq!(c.rules.clock_skew_s, 30);
        assert_eq!(c.cookies.attrs.same_site, SameSite::Strict);
        match c.jwks {
            JwksSource::Remote {
                upstream,
                refresh_s,
            } => {
                assert_eq!(upstream.cluster, "idp");
                assert_eq!(refresh_s, 300);
            }
            JwksSource::Inline(_) => panic!("expected remote"),
        }
    }

    #[test]
    fn case_insensitive_prefixes_option() {
        let off = parse(&base()).unwrap();
        assert!(!off.paths.case_insensitive);
        assert!(!off.paths.is_protected("/API/admin"));
        let on = parse(&with(
            base(),
            "/case_insensitive_prefixes",
            Some(json!(true)),
        ))
        .unwrap();
        assert!(on.paths.case_insensitive);
        assert!(on.paths.is_protected("/API/admin"));
        assert!(on.paths.is_protected("/API/PUBLIC/x"));
        assert!(!on.paths.is_protected("/api/public/x"));
        let e = parse(&with(
            base(),
            "/case_insensitive_prefixes",
            Some(json!("yes")),
        ))
        .unwrap_err();
        assert_eq!(e.field, "case_insensitive_prefixes");
    }

    #[test]
    fn defaults_apply() {
        let v = with(base(), "/cookies", None);
        let v = with(v, "/algorithms", None);
        let v = with(v, "/clock_skew_s", None);
        let c = parse(&v).unwrap();
        assert_eq!(c.cookies.access_token, "__Host-relay-at");
        assert!(c.cookies.attrs.secure);
        assert_eq!(c.rules.clock_skew_s, 30);
        assert_eq!(c.token_cache_size, DEFAULT_TOKEN_CACHE_SIZE);
    }

    #[test]
    fn bad_configurations_name_their_field() {
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "unknown top-level field",
                with(base(), "/isser", Some(json!("x"))),
                "isser",
            ),
            ("missing issuer", with(base(), "/issuer", None), "issuer"),
            (
                "empty issuer",
                with(base(), "/issuer", Some(json!(""))),
                "issuer",
            ),
            (
                "empty audiences",
                with(base(), "/audiences", Some(json!([]))),
                "audiences",
            ),
            (
                "unsupported alg",
                with(base(), "/algorithms", Some(json!(["RS256", "HS256"]))),
                "algorithms[1]",
            ),
            (
                "alg none",
                with(base(), "/algorithms", Some(json!(["none"]))),
                "algorithms[0]",
            ),
            (
                "same_origin_posts without double_submit",
                with(
                    base(),
                    "/csrf",
                    Some(json!({"allowed_origins": ["https://a.test"], "same_origin_posts": true})),
                ),
                "csrf.same_origin_posts",
            ),
            (
                "no algs",
                with(base(), "/algorithms", Some(json!([]))),
                "algorithms",
            ),
            (
                "wrong type",
                with(base(), "/clock_skew_s", Some(json!("30"))),
                "clock_skew_s",
            ),
            (
                "skew too big",
                with(base(), "/clock_skew_s", Some(json!(3600))),
                "clock_skew_s",
            ),
            (
                "prefix without slash",
                with(base(), "/protected_prefixes", Some(json!(["api/"]))),
                "protected_prefixes[0]",
            ),
            (
                "no protected prefix",
                with(base(), "/protected_prefixes", Some(json!([]))),
                "protected_prefixes",
            ),
            (
                "unknown jwks field",
                with(base(), "/jwks/url", Some(json!("x"))),
                "jwks.url",
            ),
            (
                "jwks without cluster",
                with(base(), "/jwks/cluster", None),
                "jwks.cluster",
            ),
            (
                "jwks path",
                with(base(), "/jwks/path", Some(json!("jwks.json"))),
                "jwks.path",
            ),
            (
                "refresh too small",
                with(base(), "/jwks/refresh_s", Some(json!(1))),
                "jwks.refresh_s",
            ),
            (
                "inline and cluster",
                with(base(), "/jwks/inline", Some(json!({"keys": []}))),
                "jwks",
            ),
            (
                "malformed inline",
                json!({"protected_prefixes": ["/api/"], "issuer": "i", "audiences": ["a"], "jwks": {"inline": {"keys": "nope"}}}),
                "jwks.inline",
            ),
            (
                "inline with no usable key",
                json!({"protected_prefixes": ["/api/"], "issuer": "i", "audiences": ["a"], "jwks": {"inline": {"keys": []}}}),
                "jwks.inline",
            ),
            (
                "unknown cookie field",
                with(base(), "/cookies/domain", Some(json!("x"))),
                "cookies.domain",
            ),
            (
                "same_site value",
                with(base(), "/cookies/same_site", Some(json!("strict"))),
                "cookies.same_site",
            ),
            (
                "host prefix insecure",
                with(base(), "/cookies/secure", Some(json!(false))),
                "cookies.access_token",
            ),
            (
                "host prefix path",
                with(base(), "/cookies/path", Some(json!("/app"))),
                "cookies.access_token",
            ),
            (
                "bad cookie name",
                with(base(), "/cookies/session", Some(json!("a b"))),
                "cookies.session",
            ),
            (
                "same cookie names",
                with(base(), "/cookies/session", Some(json!("__Host-relay-at"))),
                "cookies",
            ),
            (
                "forward to authorization",
                with(
                    base(),
                    "/forward_claims",
                    Some(json!({"Authorization": "sub"})),
                ),
                "forward_claims.Authorization",
            ),
            (
                "bad header name",
                with(base(), "/forward_claims", Some(json!({"x user": "sub"}))),
                "forward_claims.x user",
            ),
            (
                "cache too big",
                with(base(), "/token_cache_size", Some(json!(10_000_000))),
                "token_cache_size",
            ),
            (
                "empty hosts",
                with(base(), "/hosts", Some(json!([]))),
                "hosts",
            ),
            (
                "host with a scheme",
                with(
                    base(),
                    "/hosts",
                    Some(json!(["app.example.com", "https://b.example.com"])),
                ),
                "hosts[1]",
            ),
            (
                "host with a port",
                with(base(), "/hosts", Some(json!(["app.example.com:443"]))),
                "hosts[0]",
            ),
            (
                "host with a path",
                with(base(), "/hosts", Some(json!(["app.example.com/x"]))),
                "hosts[0]",
            ),
            (
                "inner wildcard",
                with(base(), "/hosts", Some(json!(["a.*.example.com"]))),
                "hosts[0]",
            ),
            (
                "hosts not a list",
                with(base(), "/hosts", Some(json!("app.example.com"))),
                "hosts",
            ),
            (
                "cookie opt-out not a boolean",
                with(
                    base(),
                    "/forward_relay_cookies_to_unprotected",
                    Some(json!("yes")),
                ),
                "forward_relay_cookies_to_unprotected",
            ),
        ];
        for (what, v, field) in cases {
            match parse(&v) {
                Ok(_) => panic!("{what}: accepted"),
                Err(e) => {
                    assert_eq!(e.field, field, "{what}: {e}");
                    let line = e.to_string();
                    assert!(!line.contains('\n'), "{what}: one line");
                    assert!(line.contains(field), "{what}: {line}");
                }
            }
        }
    }

    #[test]
    fn hosts_and_cookie_forwarding_parse() {
        let serves = |c: &Config, authority: Option<&[u8]>| {
            let headers: Vec<(String, Vec<u8>)> = authority
                .map(|a| (":authority".to_string(), a.to_vec()))
                .into_iter()
                .collect();
            c.serves(&RequestView::new(&headers))
        };
        let c = parse(&base()).unwrap();
        assert!(c.hosts.is_none() && !c.forward_relay_cookies_to_unprotected);
        assert!(serves(&c, None) && serves(&c, Some(b"anything")));
        let v = with(
            base(),
            "/hosts",
            Some(json!(["App.Example.com", "*.apps.example.com"])),
        );
        let v = with(
            v,
            "/forward_relay_cookies_to_unprotected",
            Some(json!(true)),
        );
        let c = parse(&v).unwrap();
        assert_eq!(
            c.hosts,
            Some(vec![
                HostPattern::Exact("app.example.com".into()),
                HostPattern::Subdomains(".apps.example.com".into()),
            ])
        );
        assert!(c.forward_relay_cookies_to_unprotected);
        assert!(serves(&c, Some(b"APP.example.com:8443")));
        assert!(serves(&c, Some(b"x.apps.example.com")));
        assert!(!serves(&c, Some(b"apps.example.com")));
        assert!(!serves(&c, Some(b"other.example.com")));
        assert!(!serves(&c, None));
    }

    #[test]
    fn cognito_issuers_pin_token_use_unless_set() {
        let token_use = |c: &Config| {
            c.rules
                .required_claims
                .iter()
                .find(|(k, _)| k == "token_use")
                .map(|(_, v)| v.clone())
        };
        for iss in [
            "https://cognito-idp.us-east-1.amazonaws.com/us-east-1_Example",
            "https://cognito-idp.cn-north-1.amazonaws.com.cn/cn-north-1_Pool",
        ] {
            let v = with(base(), "/issuer", Some(json!(iss)));
            let v = with(v, "/required_claims", None);
            let c = parse(&v).unwrap();
            assert!(c.token_use_pinned, "{iss}");
            assert_eq!(token_use(&c), Some(json!("access").into()), "{iss}");
            // Other required claims keep the pin.
            let v = with(v, "/required_claims", Some(json!({"scope": "x"})));
            let c = parse(&v).unwrap();
            assert_eq!(token_use(&c), Some(json!("access").into()), "{iss}");
            // An explicit token_use wins, whatever it says.
            let v = with(v, "/required_claims", Some(json!({"token_use": "id"})));
            let c = parse(&v).unwrap();
            assert!(!c.token_use_pinned);
            assert_eq!(token_use(&c), Some(json!("id").into()));
        }
        for iss in [
            "https://idp.test",
            "https://cognito-idp.us-east-1.amazonaws.com/",
            "https://cognito-idp.us-east-1.amazonaws.com",
            "https://cognito-idp..amazonaws.com/pool",
            "https://cognito-idp.us-east-1.amazonaws.com.evil.test/pool",
            "https://cognito-idp.us-east-1.amazonaws.com/pool/extra",
            "http://cognito-idp.us-east-1.amazonaws.com/pool",
        ] {
            let v = with(base(), "/issuer", Some(json!(iss)));
            let v = with(v, "/required_claims", None);
            let c = parse(&v).unwrap();
            assert!(!c.token_use_pinned, "{iss}");
            assert_eq!(token_use(&c), None, "{iss}");
        }
    }

    #[test]
    fn control_characters_never_break_the_log_line() {
        let e = Config::parse(br#"{"a\nb": 1, "protected_prefixes": ["/api/"]}"#).unwrap_err();
        let line = e.to_string();
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("a\\nb"), "{line}");
    }

    #[test]
    fn not_json_is_one_line_error() {
        let e = Config::parse(b"{not json").unwrap_err();
        assert!(!e.to_string().contains('\n'));
        let e = Config::parse(b"").unwrap_err();
        assert!(e.to_string().starts_with("invalid configuration"));
    }
}
