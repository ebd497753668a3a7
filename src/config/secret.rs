//! Secret-valued fields (`session_keys[].key`, `client_secret`): the value itself, or
//! `{"env": "VAR"}` naming a variable of the Wasm VM's environment (Envoy's
//! `vm_config.environment_variables`, Istio's `vmConfig.env`), so the configuration itself
//! holds no secret.

use crate::json::Value;
use zeroize::Zeroizing;

use super::error::ConfigError;

/// Looks up an environment variable. The filter passes the VM's environment, `check-config`
/// its own process environment, tests a map: parsing stays a pure function of its inputs.
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

/// What a secret field may hold, in the shape it was written.
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(untagged)
)]
pub enum RawSecret {
    /// The secret itself.
    Literal(String),
    /// `{"env": "VAR"}`: the value of environment variable `VAR` of the Wasm VM.
    Env(EnvRef),
}

/// `{"env": "VAR"}`.
#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields)
)]
pub struct EnvRef {
    pub env: String,
}

const SHAPE: &str = r#"must be a string or {"env": "VARIABLE_NAME"}"#;

impl RawSecret {
    /// Checked by hand: a value of the wrong type is never quoted in the error (the line must
    /// never carry a secret).
    pub(super) fn read(v: Value, at: &str) -> Result<RawSecret, ConfigError> {
        match v {
            Value::String(s) => Ok(RawSecret::Literal(s)),
            Value::Object(map) => match (map.len(), map.get("env")) {
                (1, Some(Value::String(name))) => {
                    check_name(name).map_err(|p| ConfigError::new(at, p))?;
                    Ok(RawSecret::Env(EnvRef { env: name.clone() }))
                }
                (1, Some(_)) => Err(ConfigError::new(
                    at,
                    r#"`env` must be a string naming an environment variable"#,
                )),
                _ => Err(ConfigError::new(at, SHAPE)),
            },
            _ => Err(ConfigError::new(at, SHAPE)),
        }
    }
}

/// Environment variable names as Kubernetes accepts them (`[-._a-zA-Z][-._a-zA-Z0-9]*`), which
/// also covers POSIX names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 256
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(r#"`env` must name an environment variable (letters, digits, '_', '.', '-'; not starting with a digit)"#.to_owned())
    }
}

impl RawSecret {
    /// The variable's name when the value comes from the environment.
    pub fn env_name(&self) -> Option<&str> {
        match self {
            RawSecret::Literal(_) => None,
            RawSecret::Env(r) => Some(&r.env),
        }
    }

    /// The secret's value. A variable that is not set, or set to nothing, is an error naming
    /// `field` and the variable (never a value).
    pub fn resolve(&self, field: &str, env: EnvLookup) -> Result<Zeroizing<String>, ConfigError> {
        match self {
            RawSecret::Literal(s) => Ok(Zeroizing::new(s.clone())),
            RawSecret::Env(EnvRef { env: name }) => match env(name).map(Zeroizing::new) {
                None => Err(ConfigError::new(
                    field,
                    format!("environment variable {name:?} is not set in the Wasm VM (vm_config.environment_variables)"),
                )),
                Some(v) if v.is_empty() => Err(ConfigError::new(
                    field,
                    format!("environment variable {name:?} is empty"),
                )),
                Some(v) => Ok(v),
            },
        }
    }
}
