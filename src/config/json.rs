//! Reading the configuration's JSON into the `Raw*` shapes, with the field's path in every
//! error (`login.scopes[2]`, `session_keys[0].key`).
//!
//! By hand rather than with serde's derive: the derive, monomorphized for serde_json's
//! reader and wrapped to track the path, was about a tenth of the module, and this runs once
//! at start. The JSON Schema still comes from the `Raw*` types, and a test holds this reader
//! to it: the same fields, the same required ones.

use crate::json::{self, Value};

use super::error::ConfigError;

/// Parses the configuration document. Syntax errors name the line and column; a key written
/// twice in one object is refused with its path (a plain reading would keep the last one
/// silently).
pub(super) fn document(json: &[u8]) -> Result<Value, ConfigError> {
    json::from_slice_strict(json).map_err(|e| match e.duplicate() {
        Some((field, name)) => ConfigError::new(field, format!("duplicate field `{name}`")),
        None => ConfigError::new("", e.to_string()),
    })
}

/// `parent.name`, or `name` at the top.
pub(super) fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_owned()
    } else {
        format!("{parent}.{name}")
    }
}

/// Reads one value found at a path. Values are taken, not copied: the document is read once.
pub(super) type Read<T> = fn(Value, &str) -> Result<T, ConfigError>;

/// A JSON object read as one of the `Raw*` shapes: only `fields` may appear.
///
/// Its members are kept as a list and taken from it by name, each name once.
pub(super) struct Object<'a> {
    at: &'a str,
    members: Vec<(String, Value)>,
}

impl<'a> Object<'a> {
    /// `value` at `at` as an object whose keys are all among `fields`.
    pub(super) fn new(
        value: Value,
        at: &'a str,
        fields: &'static [&'static str],
    ) -> Result<Object<'a>, ConfigError> {
        let Value::Object(map) = value else {
            return Err(invalid_type(&value, at, "an object"));
        };
        if let Some(key) = map.keys().find(|k| !fields.contains(&k.as_str())) {
            return Err(ConfigError::new(
                join(at, key),
                format!("unknown field `{key}`, expected {}", one_of(fields)),
            ));
        }
        Ok(Object {
            at,
            members: map.into_iter().collect(),
        })
    }

    /// The member `name`, taken out (keys are unique: the document refused duplicates).
    fn take(&mut self, name: &str) -> Option<Value> {
        let i = self.members.iter().position(|(k, _)| k == name)?;
        Some(self.members.swap_remove(i).1)
    }

    /// A field that must be present.
    pub(super) fn required<T>(&mut self, name: &str, read: Read<T>) -> Result<T, ConfigError> {
        match self.take(name) {
            Some(v) => read(v, &join(self.at, name)),
            None => Err(ConfigError::new(
                join(self.at, name),
                format!("missing field `{name}`"),
            )),
        }
    }

    /// A field that may be left out or set to `null`.
    pub(super) fn optional<T>(
        &mut self,
        name: &str,
        read: Read<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.take(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v, &join(self.at, name)).map(Some),
        }
    }

    /// A field that takes `default` when left out (`null` is a wrong type, as the schema says).
    pub(super) fn or<T>(
        &mut self,
        name: &str,
        read: Read<T>,
        default: impl FnOnce() -> T,
    ) -> Result<T, ConfigError> {
        match self.take(name) {
            None => Ok(default()),
            Some(v) => read(v, &join(self.at, name)),
        }
    }
}

/// serde's wording for a list of names: "`a`", "`a` or `b`", "one of `a`, `b`, `c`".
fn one_of(fields: &[&str]) -> String {
    let quoted: Vec<String> = fields.iter().map(|f| format!("`{f}`")).collect();
    match quoted.as_slice() {
        [] => "no fields".to_owned(),
        [one] => one.clone(),
        [a, b] => format!("{a} or {b}"),
        all => format!("one of {}", all.join(", ")),
    }
}

/// "invalid type: <what the value is>, expected <what>", serde's wording.
pub(super) fn invalid_type(value: &Value, at: &str, expected: &str) -> ConfigError {
    let found = match value {
        Value::Null => "null".to_owned(),
        Value::Bool(b) => format!("boolean `{b}`"),
        Value::Number(n) if n.is_f64() => format!("floating point `{n}`"),
        Value::Number(n) => format!("integer `{n}`"),
        Value::String(s) => format!("string {s:?}"),
        Value::Array(_) => "sequence".to_owned(),
        Value::Object(_) => "map".to_owned(),
    };
    ConfigError::new(at, format!("invalid type: {found}, expected {expected}"))
}

pub(super) fn string(v: Value, at: &str) -> Result<String, ConfigError> {
    match v {
        Value::String(s) => Ok(s),
        _ => Err(invalid_type(&v, at, "a string")),
    }
}

pub(super) fn boolean(v: Value, at: &str) -> Result<bool, ConfigError> {
    v.as_bool().ok_or_else(|| invalid_type(&v, at, "a boolean"))
}

pub(super) fn unsigned(v: Value, at: &str) -> Result<u64, ConfigError> {
    match v.as_u64() {
        Some(n) => Ok(n),
        None if v.is_i64() => Err(ConfigError::new(
            at,
            format!("invalid value: integer `{v}`, expected a non-negative integer"),
        )),
        None => Err(invalid_type(&v, at, "a non-negative integer")),
    }
}

/// A count or size: a non-negative integer this platform's `usize` holds.
pub(super) fn size(v: Value, at: &str) -> Result<usize, ConfigError> {
    let n = unsigned(v, at)?;
    usize::try_from(n).map_err(|_| {
        ConfigError::new(
            at,
            format!(
                "invalid value: integer `{n}`, expected at most {}",
                usize::MAX
            ),
        )
    })
}

/// Any JSON value, kept as it is.
pub(super) fn any(v: Value, _at: &str) -> Result<Value, ConfigError> {
    Ok(v)
}

/// A list, each item read by `item` at `at[i]`.
pub(super) fn list<T>(v: Value, at: &str, item: Read<T>) -> Result<Vec<T>, ConfigError> {
    let Value::Array(items) = v else {
        return Err(invalid_type(&v, at, "a sequence"));
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, x) in items.into_iter().enumerate() {
        out.push(item(x, &format!("{at}[{i}]"))?);
    }
    Ok(out)
}

pub(super) fn strings(v: Value, at: &str) -> Result<Vec<String>, ConfigError> {
    list(v, at, string)
}

/// An object with free keys, each value read by `item` at `at.key`: a list in key order, each
/// key once (the document refused duplicates). A list rather than a map: the callers only walk
/// it, and each map type would link its own B-tree code.
pub(super) fn map_of<T>(
    v: Value,
    at: &str,
    item: Read<T>,
) -> Result<Vec<(String, T)>, ConfigError> {
    let Value::Object(map) = v else {
        return Err(invalid_type(&v, at, "a map"));
    };
    let mut out = Vec::with_capacity(map.len());
    for (k, x) in map {
        let value = item(x, &join(at, &k))?;
        out.push((k, value));
    }
    Ok(out)
}

pub(super) fn string_map(v: Value, at: &str) -> Result<Vec<(String, String)>, ConfigError> {
    map_of(v, at, string)
}

pub(super) fn value_map(v: Value, at: &str) -> Result<Vec<(String, Value)>, ConfigError> {
    map_of(v, at, any)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::{json, Value};

    use super::super::{Config, RawConfig};
    use super::*;

    /// Every field of every object set (shapes only: the values need not pass validation).
    fn every_field() -> Value {
        json!({
            "protected_prefixes": ["/api/"], "public_prefixes": ["/api/public/"],
            "case_insensitive_prefixes": true, "issuer": "https://idp.test",
            "audiences": ["app"], "required_claims": {"token_use": "access"},
            "algorithms": ["RS256"], "clock_skew_s": 30,
            "jwks": {"inline": {"keys": []}, "cluster": "idp", "authority": "idp.test",
                     "path": "/jwks", "refresh_s": 300},
            "cookies": {"access_token": "at", "session": "s", "csrf": "c", "path": "/",
                        "same_site": "Lax", "secure": true},
            "forward_claims": {"x-sub": "sub"}, "token_cache_size": 10,
            "session_keys": [{"kid": "k", "key": {"env": "K"}}],
            "token_endpoint": {"cluster": "idp", "authority": "idp.test", "path": "/token",
                               "timeout_ms": 2000},
            "client_id": "app", "client_secret": "s", "client_auth": "basic",
            "refresh_margin_s": 10, "refresh_grace_s": 60, "refresh_backoff_s": 5,
            "upstream_token_headers": {"access_token": "x-at", "refresh_token": "x-rt"},
            "csrf": {"allowed_origins": ["https://app.test"], "double_submit": true,
                     "same_origin_posts": true},
            "max_request_headers_bytes": 8192,
            "login": {"authorization_endpoint": "https://idp.test/auth",
                      "redirect_uri": "https://app.test/cb", "login_path": "/l",
                      "logout_path": "/o", "userinfo_path": "/u", "scopes": ["openid"],
                      "revocation_path": "/r", "end_session_endpoint": "https://idp.test/end",
                      "post_logout_redirect": "/", "session_lifetime_s": 3600,
                      "prompt": "login", "extra_authorize_params": {"audience": "api"},
                      "id_token_issuer": "https://idp.test"},
            "hosts": ["app.test"], "forward_relay_cookies_to_unprotected": true
        })
    }

    /// An object the schema describes with `properties`, found at `pointer` in
    /// [`every_field`] (`at` is the same place as the reader names it).
    struct Described {
        pointer: String,
        at: String,
        properties: BTreeSet<String>,
        required: BTreeSet<String>,
    }

    /// The schema node `node` stands for: `$ref`s followed, the non-null branch of an
    /// `Option`, the items of a list.
    fn resolve<'a>(schema: &'a Value, node: &'a Value) -> &'a Value {
        if let Some(r) = node.get("$ref").and_then(Value::as_str) {
            let name = r.trim_start_matches("#/$defs/");
            return resolve(schema, &schema["$defs"][name]);
        }
        if let Some(first) = node["anyOf"].as_array().and_then(|a| a.first()) {
            return resolve(schema, first);
        }
        if node.get("items").is_some() {
            return resolve(schema, &node["items"]);
        }
        node
    }

    fn described(
        schema: &Value,
        node: &Value,
        value: &Value,
        pointer: &str,
        at: &str,
        out: &mut Vec<Described>,
    ) {
        let node = resolve(schema, node);
        let value = match value {
            Value::Array(items) => {
                let first = items
                    .first()
                    .expect("every list in every_field has an item");
                return described(
                    schema,
                    node,
                    first,
                    &format!("{pointer}/0"),
                    &format!("{at}[0]"),
                    out,
                );
            }
            v => v,
        };
        let Some(props) = node["properties"].as_object() else {
            return;
        };
        let names = |v: &Value| -> BTreeSet<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        };
        out.push(Described {
            pointer: pointer.to_owned(),
            at: at.to_owned(),
            properties: props.keys().cloned().collect(),
            required: names(&node["required"]),
        });
        for (name, sub) in props {
            if let Some(v) = value.get(name) {
                described(
                    schema,
                    sub,
                    v,
                    &format!("{pointer}/{name}"),
                    &join(at, name),
                    out,
                );
            }
        }
    }

    fn read(v: &Value) -> Result<(), ConfigError> {
        RawConfig::read(v.clone().into(), "").map(|_| ())
    }

    /// The reader and the published JSON Schema agree on every object: the same fields, the
    /// same required ones, and unknown fields refused with their path.
    #[test]
    fn the_reader_follows_the_schema() {
        let schema = Config::json_schema();
        let full = every_field();
        read(&full).unwrap();
        let mut objects = Vec::new();
        described(&schema, &schema, &full, "", "", &mut objects);
        let pointers: Vec<&str> = objects.iter().map(|d| d.pointer.as_str()).collect();
        assert_eq!(
            pointers,
            [
                "",
                "/cookies",
                "/csrf",
                "/jwks",
                "/login",
                "/session_keys/0",
                "/token_endpoint",
                "/upstream_token_headers"
            ]
        );
        for d in &objects {
            let here = full.pointer(&d.pointer).unwrap();
            let present: BTreeSet<String> = here.as_object().unwrap().keys().cloned().collect();
            assert_eq!(
                present, d.properties,
                "every_field sets every field of {}",
                d.pointer
            );

            let mut unknown = full.clone();
            unknown
                .pointer_mut(&d.pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("zz".into(), json!(1));
            let e = read(&unknown).unwrap_err();
            assert_eq!(e.field, join(&d.at, "zz"), "{e}");
            let listed: BTreeSet<String> = e
                .problem
                .split('`')
                .skip(3)
                .step_by(2)
                .map(str::to_owned)
                .collect();
            assert_eq!(listed, d.properties, "{e}");

            for name in &d.properties {
                let mut without = full.clone();
                without
                    .pointer_mut(&d.pointer)
                    .unwrap()
                    .as_object_mut()
                    .unwrap()
                    .remove(name);
                match read(&without) {
                    Ok(()) => assert!(!d.required.contains(name), "{}.{name} is required", d.at),
                    Err(e) => {
                        assert!(d.required.contains(name), "{}.{name}: {e}", d.at);
                        assert_eq!(e.field, join(&d.at, name));
                        assert_eq!(e.problem, format!("missing field `{name}`"));
                    }
                }
            }
        }
    }

    #[test]
    fn wrong_types_are_named_with_their_path() {
        let cases = [
            (
                "/clock_skew_s",
                json!("30"),
                "clock_skew_s",
                "invalid type: string \"30\", expected a non-negative integer",
            ),
            (
                "/clock_skew_s",
                json!(-1),
                "clock_skew_s",
                "invalid value: integer `-1`, expected a non-negative integer",
            ),
            (
                "/token_cache_size",
                json!(1.5),
                "token_cache_size",
                "invalid type: floating point `1.5`, expected a non-negative integer",
            ),
            (
                "/login/scopes",
                json!(["openid", 5]),
                "login.scopes[1]",
                "invalid type: integer `5`, expected a string",
            ),
            (
                "/forward_claims",
                json!({"x-a": true}),
                "forward_claims.x-a",
                "invalid type: boolean `true`, expected a string",
            ),
            (
                "/cookies",
                json!([]),
                "cookies",
                "invalid type: sequence, expected an object",
            ),
            (
                "/csrf/double_submit",
                json!(null),
                "csrf.double_submit",
                "invalid type: null, expected a boolean",
            ),
            (
                "/session_keys/0",
                json!({"kid": "k"}),
                "session_keys[0].key",
                "missing field `key`",
            ),
        ];
        for (pointer, value, field, problem) in cases {
            let mut v = every_field();
            *v.pointer_mut(pointer).unwrap() = value;
            let e = read(&v).unwrap_err();
            assert_eq!(
                (e.field.as_str(), e.problem.as_str()),
                (field, problem),
                "{pointer}"
            );
        }
        // `null` is "not set" for an optional field.
        let mut v = every_field();
        *v.pointer_mut("/login").unwrap() = Value::Null;
        read(&v).unwrap();
    }

    #[test]
    fn documents_are_parsed_strictly() {
        let e = document(br#"{"a": 1, "b": {"c": [{"d": 1, "d": 2}]}}"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("b.c[0].d", "duplicate field `d`")
        );
        let e = document(br#"{"issuer": "a", "issuer": "a"}"#).unwrap_err();
        assert_eq!(e.field, "issuer");
        let e = document(b"{} x").unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.problem.as_str()),
            ("", "trailing characters at line 1 column 4")
        );
        let e = document(b"{\"a\": tru}").unwrap_err();
        assert!(e.problem.contains("line 1"), "{e}");
        let deep = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(document(deep.as_bytes()).is_err(), "nesting is bounded");
        let v = document(br#"{"n": [1, -2, 1.5, true, null, "s", {}]}"#).unwrap();
        assert_eq!(v, json!({"n": [1, -2, 1.5, true, null, "s", {}]}).into());
    }
}
