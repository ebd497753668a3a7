//! The start-up line: which build runs with which configuration, without a secret in it.

use crate::json::Value;

use super::{Config, JwksSource};

/// Field names whose values never reach the log, not even hashed: a short hash of a low-entropy
/// secret could be brute-forced, and rotating a key is not a configuration change to report.
fn is_secret(name: &str) -> bool {
    name == "session_keys" || name.contains("secret")
}

fn strip_secrets(v: &mut Value) {
    match v {
        Value::Object(map) => {
            // Rebuilt rather than filtered in place: `retain` would link the B-tree's
            // rebalancing code for this one use.
            for (k, mut val) in std::mem::take(map) {
                if !is_secret(&k) {
                    strip_secrets(&mut val);
                    map.insert(k, val);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_secrets),
        _ => {}
    }
}

/// The names of the environment variables secrets are read from (`{"env": "VAR"}` under a
/// secret field): naming them helps an operator, and a name is not a secret.
fn env_names(v: &Value, in_secret: bool, out: &mut Vec<String>) {
    match v {
        Value::Object(map) => {
            if let (true, 1, Some(Value::String(name))) = (in_secret, map.len(), map.get("env")) {
                // Kept sorted and unique as it grows (a sort would link one more sort routine).
                if let Err(at) = out.binary_search(name) {
                    out.insert(at, name.clone());
                }
                return;
            }
            for (k, val) in map {
                env_names(val, in_secret || is_secret(k), out);
            }
        }
        Value::Array(items) => items.iter().for_each(|i| env_names(i, in_secret, out)),
        _ => {}
    }
}

/// FNV-1a: stable across builds and platforms (std's hasher is not).
fn fnv1a(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A short digest of the configuration JSON with its secrets removed. Keys are re-serialized
/// in sorted order, so the same settings give the same hash however the JSON was written.
pub(crate) fn config_hash(raw: &[u8]) -> String {
    let canonical = match crate::json::from_slice(raw) {
        Ok(mut v) => {
            strip_secrets(&mut v);
            v.to_string()
        }
        // Parse accepted it, so this is unreachable; hash nothing rather than the raw bytes.
        Err(_) => String::new(),
    };
    let h = fnv1a(canonical.as_bytes());
    format!("{:08x}", (h >> 32) ^ (h & 0xffff_ffff))
}

/// `edge-token-relay 0.4.0 configured: config=1a2b3c4d protected_prefixes=2 features=refresh,csrf`,
/// then ` token_use=access(default)` when a Cognito issuer had `token_use` pinned, then
/// ` secrets_from_env=VAR,...` when secrets are read from the environment (names only).
pub(crate) fn startup_line(config: &Config, raw: &[u8]) -> String {
    let refresh = config.refresh.as_ref();
    let features: Vec<&str> = [
        ("refresh", refresh.is_some()),
        ("login", config.login.is_some()),
        ("csrf", config.csrf.is_some()),
        (
            "double_submit",
            config.csrf.as_ref().is_some_and(|c| c.double_submit),
        ),
        (
            "remote_jwks",
            matches!(config.jwks, JwksSource::Remote { .. }),
        ),
        (
            "upstream_token_headers",
            refresh.is_some_and(|r| r.upstream_token_headers.is_some()),
        ),
        ("hosts", config.hosts.is_some()),
        (
            "forward_relay_cookies_to_unprotected",
            config.forward_relay_cookies_to_unprotected,
        ),
    ]
    .into_iter()
    .filter(|(_, on)| *on)
    .map(|(name, _)| name)
    .collect();
    let mut names = Vec::new();
    if let Ok(v) = crate::json::from_slice(raw) {
        env_names(&v, false, &mut names);
    }
    let from_env = if names.is_empty() {
        String::new()
    } else {
        format!(" secrets_from_env={}", names.join(","))
    };
    format!(
        "edge-token-relay {} configured: config={} protected_prefixes={} features={}{}{from_env}",
        env!("CARGO_PKG_VERSION"),
        config_hash(raw),
        config.paths.protected.len(),
        if features.is_empty() {
            "none".to_string()
        } else {
            features.join(",")
        },
        if config.token_use_pinned {
            " token_use=access(default)"
        } else {
            ""
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{self, ISS};
    use serde_json::{json, Value};

    fn raw(v: &Value) -> Vec<u8> {
        v.to_string().into_bytes()
    }

    #[test]
    fn the_line_names_version_hash_prefixes_and_features() {
        let c = testkit::config(json!({"protected_prefixes": ["/api/", "/admin/"]}));
        let line = startup_line(&c, b"{\"a\":1}");
        assert_eq!(
            line,
            format!(
                "edge-token-relay {} configured: config={} protected_prefixes=2 features=none",
                env!("CARGO_PKG_VERSION"),
                config_hash(b"{\"a\":1}")
            )
        );
        let c = testkit::refresh_config(json!({
            "csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true},
            "upstream_token_headers": {"access_token": "x-new-at"},
        }));
        let line = startup_line(&c, b"{}");
        assert!(
            line.ends_with(
                "protected_prefixes=1 features=refresh,csrf,double_submit,upstream_token_headers"
            ),
            "{line}"
        );
    }

    #[test]
    fn the_line_shows_hosts_and_a_pinned_token_use() {
        let cognito = "https://cognito-idp.eu-west-1.amazonaws.com/eu-west-1_Pool";
        let c = testkit::config(json!({
            "issuer": cognito, "required_claims": {}, "hosts": ["app.example.com"],
            "forward_relay_cookies_to_unprotected": true,
        }));
        let line = startup_line(&c, b"{}");
        assert!(
            line.ends_with(
                "features=hosts,forward_relay_cookies_to_unprotected token_use=access(default)"
            ),
            "{line}"
        );
        let c = testkit::config(json!({"issuer": cognito, "required_claims": {"token_use": "id"}}));
        let line = startup_line(&c, b"{}");
        assert!(line.ends_with("features=none"), "{line}");
    }

    #[test]
    fn the_hash_ignores_secrets_and_key_order_but_not_settings() {
        let a = json!({"issuer": ISS, "client_secret": "one", "session_keys": [{"kid": "a", "key": "k1"}],
                       "login": {"client_secret": "x"}});
        let b = json!({"login": {"client_secret": "y"}, "session_keys": [{"kid": "b", "key": "k2"}],
                       "client_secret": "two", "issuer": ISS});
        assert_eq!(config_hash(&raw(&a)), config_hash(&raw(&b)));
        assert_eq!(
            config_hash(&raw(&a)),
            config_hash(&raw(&json!({"issuer": ISS, "login": {}})))
        );
        let c = json!({"issuer": "https://other.example"});
        assert_ne!(config_hash(&raw(&a)), config_hash(&raw(&c)));
        let h = config_hash(&raw(&a));
        assert_eq!(h.len(), 8);
        assert!(h.chars().all(|ch| ch.is_ascii_hexdigit()));
    }

    #[test]
    fn no_secret_reaches_the_line() {
        let c = testkit::refresh_config(json!({"client_secret": "hunter2-secret"}));
        let body = json!({"client_secret": "hunter2-secret", "session_keys": "4Hi4PszsrQoMyXW1"});
        let line = startup_line(&c, &raw(&body));
        assert!(
            !line.contains("hunter2") && !line.contains("4Hi4PszsrQoMyXW1"),
            "{line}"
        );
    }

    #[test]
    fn env_names_are_sorted_and_unique() {
        let v = json!({
            "session_keys": [{"kid": "a", "key": {"env": "B"}}, {"kid": "b", "key": {"env": "A"}},
                             {"kid": "c", "key": {"env": "B"}}],
            "client_secret": {"env": "C"},
            "forward_claims": {"env": "sub"},
        });
        let mut names = Vec::new();
        env_names(&v.into(), false, &mut names);
        assert_eq!(names, ["A", "B", "C"]);
    }

    #[test]
    fn secrets_from_env_are_named_never_shown() {
        let session_key = "4Hi4PszsrQoMyXW1n2L_dGNr3o4RBAiJIInqXNRYMX8";
        let body = json!({
            "issuer": ISS,
            "session_keys": [{"kid": "b", "key": {"env": "RELAY_SESSION_KEY"}},
                             {"kid": "a", "key": {"env": "RELAY_SESSION_KEY_OLD"}}],
            "client_secret": {"env": "RELAY_CLIENT_SECRET"},
            "forward_claims": {"env": "sub"},
        });
        let lookup = |name: &str| match name {
            "RELAY_CLIENT_SECRET" => Some("hunter2-secret".to_owned()),
            _ => Some(session_key.to_owned()),
        };
        let pc = json!({
            "protected_prefixes": ["/api/"], "issuer": ISS, "audiences": ["a"],
            "jwks": {"cluster": "idp", "authority": "idp", "path": "/jwks"},
            "session_keys": body["session_keys"], "client_secret": body["client_secret"],
            "token_endpoint": {"cluster": "idp", "authority": "idp", "path": "/token"},
            "client_id": "relay",
        });
        let c = Config::parse_with_env(&raw(&pc), &lookup).unwrap();
        let line = startup_line(&c, &raw(&body));
        assert!(
            line.ends_with(
                " secrets_from_env=RELAY_CLIENT_SECRET,RELAY_SESSION_KEY,RELAY_SESSION_KEY_OLD"
            ),
            "{line}"
        );
        assert!(
            !line.contains("hunter2") && !line.contains(session_key),
            "{line}"
        );
        assert!(
            !line.contains("sub"),
            "a non-secret `env` member is not a variable: {line}"
        );
    }
}
