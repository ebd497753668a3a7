//! Plugin configuration: parsed and validated once (in `on_configure`) into ready-to-use types.
//!
//! Unknown fields are errors, and every error names the field it is about, so a typo stops the
//! plugin at start-up with one readable log line instead of silently weakening a check.

mod cookies;
mod error;
mod login;
mod refresh;
mod summary;
mod upstream;

use std::collections::BTreeMap;
use std::rc::Rc;

use serde::Deserialize;
use serde_json::Value;

pub use cookies::CookieNames;
use cookies::{cookie_names, RawCookies};
pub use error::ConfigError;
pub use login::RawLogin;
pub use login::{LoginConfig, Route, DEFAULT_SESSION_LIFETIME_S};
use refresh::{refresh_config, RawEndpoint, RawRefresh, RawSessionKey, RawUpstreamTokenHeaders};
pub use refresh::{ClientAuth, RefreshConfig, Secret, UpstreamTokenHeaders};
pub(crate) use summary::startup_line;
use upstream::upstream;
pub use upstream::Upstream;

use crate::csrf::CsrfPolicy;
use crate::http::cookie;
use crate::http::path::PathPolicy;
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
}

// ---- raw serde shapes -------------------------------------------------------------------

#[derive(Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawConfig {
    protected_prefixes: Vec<String>,
    #[serde(default)]
    public_prefixes: Vec<String>,
    #[serde(default)]
    case_insensitive_prefixes: bool,
    issuer: String,
    audiences: Vec<String>,
    #[serde(default)]
    required_claims: BTreeMap<String, Value>,
    #[serde(default = "default_algorithms")]
    algorithms: Vec<String>,
    #[serde(default = "default_clock_skew")]
    clock_skew_s: u64,
    jwks: RawJwks,
    #[serde(default)]
    cookies: RawCookies,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default)]
    token_cache_size: Option<usize>,
    session_keys: Option<Vec<RawSessionKey>>,
    token_endpoint: Option<RawEndpoint>,
    client_id: Option<String>,
    client_secret: Option<String>,
    client_auth: Option<String>,
    refresh_margin_s: Option<u64>,
    refresh_grace_s: Option<u64>,
    refresh_backoff_s: Option<u64>,
    upstream_token_headers: Option<RawUpstreamTokenHeaders>,
    csrf: Option<RawCsrf>,
    max_request_headers_bytes: Option<usize>,
    login: Option<RawLogin>,
}

#[derive(Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawCsrf {
    allowed_origins: Vec<String>,
    #[serde(default)]
    double_submit: bool,
    #[serde(default)]
    same_origin_posts: bool,
}

fn default_algorithms() -> Vec<String> {
    vec!["RS256".into(), "ES256".into(), "EdDSA".into()]
}

fn default_clock_skew() -> u64 {
    30
}

#[derive(Deserialize)]
#[cfg_attr(not(target_arch = "wasm32"), derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
struct RawJwks {
    inline: Option<Value>,
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
    refresh_s: Option<u64>,
}

// ---- parsing and validation ---------------------------------------------------------------

impl Config {
    /// The response headers an upstream rotates tokens in, when configured.
    pub fn upstream_token_headers(&self) -> Option<&UpstreamTokenHeaders> {
        self.refresh.as_ref()?.upstream_token_headers.as_ref()
    }

    /// Parses and validates the plugin configuration (a JSON object).
    pub fn parse(json: &[u8]) -> Result<Config, ConfigError> {
        let de = &mut serde_json::Deserializer::from_slice(json);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let mut problem = inner.to_string();
            if inner.classify() == serde_json::error::Category::Data {
                // The field path says where; the line/column of a one-line JSON says nothing.
                if let Some(i) = problem.find(" at line ") {
                    problem.truncate(i);
                }
            }
            let mut field = if path == "." { String::new() } else { path };
            // serde reports a missing field at its parent: name the field itself.
            if let Some(name) = problem
                .strip_prefix("missing field `")
                .and_then(|rest| rest.split('`').next())
            {
                field = if field.is_empty() {
                    name.to_string()
                } else {
                    format!("{field}.{name}")
                };
            }
            ConfigError::new(field, problem)
        })?;
        Config::validate(raw)
    }

    /// The JSON Schema of the configuration, derived from the same serde shapes `parse` reads
    /// (so it cannot drift from them). Host builds only: the filter itself never needs it.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn json_schema() -> Value {
        let mut schema = schemars::schema_for!(RawConfig).to_value();
        if let Some(obj) = schema.as_object_mut() {
            obj.insert(
                "title".into(),
                Value::from("edge-token-relay plugin configuration"),
            );
            // The shapes only: ranges and cross-field rules are checked by `check-config`.
            obj.insert(
                "description".into(),
                Value::from(
                    "The shape of the plugin configuration (field names, types, required \
                     fields). Ranges and rules between fields are checked by check-config.",
                ),
            );
        }
        schema
    }

    fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
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
        let rules = ClaimRules {
            issuer: raw.issuer,
            audiences: raw.audiences,
            required_claims: raw.required_claims.into_iter().collect(),
            algorithms,
            clock_skew_s: raw.clock_skew_s,
            forward_claims: forward_claims(raw.forward_claims)?,
        };
        let refresh = refresh_config(RawRefresh {
            session_keys: raw.session_keys,
            token_endpoint: raw.token_endpoint,
            client_id: raw.client_id,
            client_secret: raw.client_secret,
            client_auth: raw.client_auth,
            margin_s: raw.refresh_margin_s,
            grace_s: raw.refresh_grace_s,
            backoff_s: raw.refresh_backoff_s,
            upstream_token_headers: raw.upstream_token_headers,
        })?;
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
        let token_cache_size = raw.token_cache_size.unwrap_or(DEFAULT_TOKEN_CACHE_SIZE);
        if !(1..=1_000_000).contains(&token_cache_size) {
            return Err(ConfigError::new(
                "token_cache_size",
                "must be between 1 and 1000000",
            ));
        }

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
        })
    }
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
fn forward_claims(raw: BTreeMap<String, String>) -> Result<Vec<(String, String)>, ConfigError> {
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
        let bytes = serde_json::to_vec(&inline)
            .map_err(|e| ConfigError::new("jwks.inline", e.to_string()))?;
        let keys =
            KeySet::parse(&bytes).map_err(|e| ConfigError::new("jwks.inline", e.to_string()))?;
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
    use serde_json::json;

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

    const KEY: &str = "BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc";

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
