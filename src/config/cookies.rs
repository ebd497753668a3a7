//! The `cookies` section: the relay's cookie names and the attributes of those it sets.

use crate::json::Value;

use super::error::ConfigError;
use super::json::{self, Object};
use crate::http::cookie::{self, CookieAttrs, SameSite};

/// Names of the relay's cookies and the attributes of those it sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieNames {
    pub access_token: String,
    pub session: String,
    pub csrf: String,
    pub attrs: CookieAttrs,
}

#[cfg_attr(
    not(target_arch = "wasm32"),
    derive(schemars::JsonSchema),
    serde(deny_unknown_fields, default)
)]
pub struct RawCookies {
    pub access_token: String,
    pub session: String,
    pub csrf: String,
    pub path: String,
    pub same_site: String,
    pub secure: bool,
}

impl Default for RawCookies {
    fn default() -> Self {
        RawCookies {
            access_token: "__Host-relay-at".into(),
            session: "__Host-relay-session".into(),
            csrf: "__Host-relay-csrf".into(),
            path: "/".into(),
            same_site: "Strict".into(),
            secure: true,
        }
    }
}

impl RawCookies {
    /// Every member is optional: one left out keeps its default.
    pub(super) fn read(v: Value, at: &str) -> Result<RawCookies, ConfigError> {
        let mut o = Object::new(
            v,
            at,
            &[
                "access_token",
                "session",
                "csrf",
                "path",
                "same_site",
                "secure",
            ],
        )?;
        let d = RawCookies::default();
        Ok(RawCookies {
            access_token: o.or("access_token", json::string, || d.access_token)?,
            session: o.or("session", json::string, || d.session)?,
            csrf: o.or("csrf", json::string, || d.csrf)?,
            path: o.or("path", json::string, || d.path)?,
            same_site: o.or("same_site", json::string, || d.same_site)?,
            secure: o.or("secure", json::boolean, || d.secure)?,
        })
    }
}

pub fn cookie_names(raw: RawCookies) -> Result<CookieNames, ConfigError> {
    for (field, name) in [
        ("cookies.access_token", &raw.access_token),
        ("cookies.session", &raw.session),
        ("cookies.csrf", &raw.csrf),
    ] {
        if !cookie::is_valid_name(name) {
            return Err(ConfigError::new(
                field,
                format!("{name:?} is not a valid cookie name"),
            ));
        }
        if name.starts_with("__Host-") && (!raw.secure || raw.path != "/") {
            return Err(ConfigError::new(
                field,
                "a __Host- cookie needs \"secure\": true and \"path\": \"/\" (browsers drop it otherwise)",
            ));
        }
        if name.starts_with("__Secure-") && !raw.secure {
            return Err(ConfigError::new(
                field,
                "a __Secure- cookie needs \"secure\": true",
            ));
        }
    }
    if raw.access_token == raw.session || raw.access_token == raw.csrf || raw.session == raw.csrf {
        return Err(ConfigError::new(
            "cookies",
            "access_token, session and csrf must be three different names",
        ));
    }
    if !raw.path.starts_with('/') || raw.path.contains([';', ',', ' ']) {
        return Err(ConfigError::new(
            "cookies.path",
            "must start with '/' and contain no ';', ',' or spaces",
        ));
    }
    let same_site = SameSite::parse(&raw.same_site).ok_or_else(|| {
        ConfigError::new(
            "cookies.same_site",
            format!("{:?} is not one of Strict, Lax, None", raw.same_site),
        )
    })?;
    if same_site == SameSite::None && !raw.secure {
        return Err(ConfigError::new(
            "cookies.same_site",
            "SameSite=None needs \"secure\": true (browsers reject it otherwise)",
        ));
    }
    Ok(CookieNames {
        access_token: raw.access_token,
        session: raw.session,
        csrf: raw.csrf,
        attrs: CookieAttrs {
            path: raw.path,
            same_site,
            secure: raw.secure,
        },
    })
}
