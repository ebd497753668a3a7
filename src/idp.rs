//! The IdP's token endpoint as the relay uses it: building requests (refresh, code exchange,
//! revocation) with the configured client authentication, and reading the answers.
//!
//! Pure: the shell sends the request and passes the answer in.

use std::borrow::Cow;
use std::fmt;

use crate::json::{Map, ObjectWriter, ToJson, Value};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::{ClientAuth, RefreshConfig};
use crate::http::url::form_encode;
use crate::json::members::{self as json_members, optional_str};

/// Largest token-endpoint answer read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// A POST to the token endpoint, ready for `dispatch_http_call`.
pub struct TokenRequest {
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
}

impl fmt::Debug for TokenRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenRequest([redacted])")
    }
}

/// Builds `grant_type=refresh_token` with client authentication as configured.
pub fn refresh_request(cfg: &RefreshConfig, refresh_token: &str) -> TokenRequest {
    token_request(
        cfg,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ],
    )
}

/// Builds a token-endpoint POST with `params` and the client authentication.
pub fn token_request(cfg: &RefreshConfig, params: &[(&str, &str)]) -> TokenRequest {
    let mut body = String::new();
    for (k, v) in params {
        push_param(&mut body, k, v);
    }
    let mut headers = vec![
        (":method", "POST".to_string()),
        (":path", cfg.endpoint.path.clone()),
        (":authority", cfg.endpoint.authority.clone()),
        (
            "content-type",
            "application/x-www-form-urlencoded".to_string(),
        ),
        ("accept", "application/json".to_string()),
    ];
    match &cfg.client_auth {
        ClientAuth::Basic { secret } => {
            // RFC 6749 §2.3.1: id and secret are form-encoded before Basic encoding.
            let pair = format!(
                "{}:{}",
                form_encode(&cfg.client_id),
                form_encode(secret.expose())
            );
            headers.push((
                "authorization",
                format!("Basic {}", STANDARD.encode(pair.as_bytes())),
            ));
        }
        ClientAuth::Post { secret } => {
            push_param(&mut body, "client_id", &cfg.client_id);
            push_param(&mut body, "client_secret", secret.expose());
        }
        ClientAuth::None => push_param(&mut body, "client_id", &cfg.client_id),
    }
    TokenRequest { headers, body }
}

fn push_param(body: &mut String, k: &str, v: &str) {
    if !body.is_empty() {
        body.push('&');
    }
    body.push_str(&form_encode(k));
    body.push('=');
    body.push_str(&form_encode(v));
}

/// What the token endpoint gave back.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    /// Present when the IdP rotated the refresh token.
    pub refresh_token: Option<String>,
    pub id_token: Option<String>,
}

/// `access_token`, then the others when present.
impl ToJson for Tokens {
    fn write_json(&self, out: &mut Vec<u8>) {
        ObjectWriter::new(out)
            .str("access_token", &self.access_token)
            .opt_str("refresh_token", self.refresh_token.as_deref())
            .opt_str("id_token", self.id_token.as_deref())
            .end();
    }
}

impl Tokens {
    /// Tokens as [`Tokens`] serializes them (nested in a sealed refresh outcome): a string
    /// `access_token`; the others strings, `null` or absent.
    pub(crate) fn from_object(object: &Map) -> Option<Tokens> {
        let optional = |name: &str| match object.get(name) {
            None | Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.clone())),
            Some(_) => None,
        };
        let Some(Value::String(access_token)) = object.get("access_token") else {
            return None;
        };
        Some(Tokens {
            access_token: access_token.clone(),
            refresh_token: optional("refresh_token")?,
            id_token: optional("id_token")?,
        })
    }
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens")
            .field("access_token", &"[redacted]")
            .field("rotated", &self.refresh_token.is_some())
            .finish()
    }
}

/// Why a token-endpoint call did not produce tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefreshError {
    /// The IdP refused the grant for good (RFC 6749 `invalid_grant`).
    InvalidGrant,
    /// Anything that may pass: 5xx, no answer, timeout, unparseable body, other OAuth errors.
    Transient(Transient),
}

/// The failures that may pass, each with a stable reason code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transient {
    /// No answer at all (connection failure or timeout reported by the host).
    NoResponse,
    ResponseTooLarge,
    UnparseableResponse,
    UnexpectedTokenType,
    NoAccessToken,
    /// A 4xx other than `invalid_grant` (`invalid_client` and friends: configuration faults).
    Endpoint4xx,
    Endpoint5xx,
    UnexpectedStatus,
    /// The call could not even be dispatched (unknown cluster).
    DispatchFailed,
    /// The host never called back before the deadline.
    Timeout,
}

impl Transient {
    pub fn code(self) -> &'static str {
        match self {
            Transient::NoResponse => "no_response",
            Transient::ResponseTooLarge => "response_too_large",
            Transient::UnparseableResponse => "unparseable_response",
            Transient::UnexpectedTokenType => "unexpected_token_type",
            Transient::NoAccessToken => "no_access_token",
            Transient::Endpoint4xx => "token_endpoint_4xx",
            Transient::Endpoint5xx => "token_endpoint_5xx",
            Transient::UnexpectedStatus => "unexpected_status",
            Transient::DispatchFailed => "dispatch_failed",
            Transient::Timeout => "timeout",
        }
    }

    /// The endpoint is down (no answer, 5xx), as opposed to answering something unusable.
    pub fn is_outage(self) -> bool {
        matches!(self, Transient::NoResponse | Transient::Endpoint5xx)
    }
}

impl RefreshError {
    pub fn code(&self) -> &'static str {
        match self {
            RefreshError::InvalidGrant => "invalid_grant",
            RefreshError::Transient(reason) => reason.code(),
        }
    }
}

impl fmt::Display for RefreshError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RefreshError::InvalidGrant => f.write_str("the IdP rejected the refresh token"),
            RefreshError::Transient(reason) => {
                write!(f, "token endpoint unavailable ({})", reason.code())
            }
        }
    }
}

/// A 200 answer's members (RFC 6749 §5.1): each a string, `null` or absent; others ignored.
struct RawTokenResponse {
    access_token: Option<String>,
    refresh_token: Option<String>,
    id_token: Option<String>,
    token_type: Option<String>,
}

impl RawTokenResponse {
    fn read(body: &[u8]) -> Option<RawTokenResponse> {
        let members = ["access_token", "refresh_token", "id_token", "token_type"];
        let [access_token, refresh_token, id_token, token_type] =
            json_members::read(body, members)?;
        let string = |m| optional_str(m).ok().map(|s| s.map(Cow::into_owned));
        Some(RawTokenResponse {
            access_token: string(access_token)?,
            refresh_token: string(refresh_token)?,
            id_token: string(id_token)?,
            token_type: string(token_type)?,
        })
    }
}

/// Reads a token-endpoint answer (`status` None: no answer at all).
pub fn parse_token_response(status: Option<u32>, body: &[u8]) -> Result<Tokens, RefreshError> {
    let status = status.ok_or(RefreshError::Transient(Transient::NoResponse))?;
    if body.len() > MAX_RESPONSE_BYTES {
        return Err(RefreshError::Transient(Transient::ResponseTooLarge));
    }
    if status == 200 {
        let raw = RawTokenResponse::read(body)
            .ok_or(RefreshError::Transient(Transient::UnparseableResponse))?;
        if let Some(tt) = &raw.token_type {
            if !tt.eq_ignore_ascii_case("bearer") && !tt.eq_ignore_ascii_case("dpop") {
                return Err(RefreshError::Transient(Transient::UnexpectedTokenType));
            }
        }
        let access_token = raw
            .access_token
            .filter(|t| !t.is_empty())
            .ok_or(RefreshError::Transient(Transient::NoAccessToken))?;
        return Ok(Tokens {
            access_token,
            refresh_token: raw.refresh_token.filter(|t| !t.is_empty()),
            id_token: raw.id_token.filter(|t| !t.is_empty()),
        });
    }
    if (400..500).contains(&status) {
        // RFC 6749 §5.2: `error`, a string; anything unreadable is not `invalid_grant`.
        let error = json_members::read(body, ["error"])
            .and_then(|[error]| optional_str(error).ok().flatten());
        if error.as_deref() == Some("invalid_grant") {
            return Err(RefreshError::InvalidGrant);
        }
        // invalid_client and friends are configuration faults: never log users out for them.
        return Err(RefreshError::Transient(Transient::Endpoint4xx));
    }
    if status >= 500 {
        return Err(RefreshError::Transient(Transient::Endpoint5xx));
    }
    Err(RefreshError::Transient(Transient::UnexpectedStatus))
}

/// RFC 7009 revocation of `refresh_token` at `path` on the token endpoint's cluster, with the
/// configured client authentication.
pub fn revocation_request(
    refresh: &RefreshConfig,
    path: &str,
    refresh_token: &str,
) -> TokenRequest {
    let mut request = token_request(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit;
    use serde_json::json;

    fn cfg(auth: serde_json::Value) -> RefreshConfig {
        let mut extra = json!({
            "session_keys": [{"kid": "k1", "key": testkit::b64(&testkit::SESSION_KEY)}],
            "token_endpoint": {"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"},
            "client_id": "my app",
        });
        for (k, v) in auth.as_object().unwrap() {
            extra[k] = v.clone();
        }
        testkit::config(extra).refresh.unwrap()
    }

    fn header<'a>(r: &'a TokenRequest, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn basic_auth_form_encodes_then_base64() {
        let c = cfg(json!({"client_secret": "s3cr3t/+&", "client_auth": "basic"}));
        let r = refresh_request(&c, "rt+/=");
        assert_eq!(r.body, "grant_type=refresh_token&refresh_token=rt%2B%2F%3D");
        let expected = STANDARD.encode("my+app:s3cr3t%2F%2B%26");
        assert_eq!(
            header(&r, "authorization"),
            Some(format!("Basic {expected}").as_str())
        );
        assert_eq!(header(&r, ":method"), Some("POST"));
        assert_eq!(header(&r, ":path"), Some("/oauth2/token"));
        assert_eq!(header(&r, ":authority"), Some("idp.example.com"));
        assert_eq!(
            header(&r, "content-type"),
            Some("application/x-www-form-urlencoded")
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
    }

    #[test]
    fn post_and_none_auth_put_the_client_in_the_body() {
        let c = cfg(json!({"client_secret": "sec", "client_auth": "post"}));
        let r = refresh_request(&c, "rt");
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&client_id=my+app&client_secret=sec"
        );
        assert_eq!(header(&r, "authorization"), None);
        let c = cfg(json!({"client_auth": "none"}));
        let r = refresh_request(&c, "rt");
        assert_eq!(
            r.body,
            "grant_type=refresh_token&refresh_token=rt&client_id=my+app"
        );
    }

    #[test]
    fn token_responses() {
        let ok = br#"{"access_token":"a.b.c","token_type":"Bearer","expires_in":300,"refresh_token":"new"}"#;
        let t = parse_token_response(Some(200), ok).unwrap();
        assert_eq!(t.access_token, "a.b.c");
        assert_eq!(t.refresh_token.as_deref(), Some("new"));
        // Escaped strings, `null` members and unknown members of any type.
        let escaped = br#"{"access_token":"a\u002eb","id_token":null,"x":[{"y":1}],"scope":"s"}"#;
        let t = parse_token_response(Some(200), escaped).unwrap();
        assert_eq!((t.access_token.as_str(), t.id_token), ("a.b", None));
        let no_rotation = br#"{"access_token":"a.b.c","token_type":"bearer"}"#;
        assert_eq!(
            parse_token_response(Some(200), no_rotation)
                .unwrap()
                .refresh_token,
            None
        );

        let cases: &[(Option<u32>, &[u8], RefreshError)] = &[
            (None, b"", RefreshError::Transient(Transient::NoResponse)),
            (
                Some(500),
                b"oops",
                RefreshError::Transient(Transient::Endpoint5xx),
            ),
            (
                Some(503),
                b"",
                RefreshError::Transient(Transient::Endpoint5xx),
            ),
            (
                Some(200),
                b"<html>",
                RefreshError::Transient(Transient::UnparseableResponse),
            ),
            (
                Some(200),
                b"{}",
                RefreshError::Transient(Transient::NoAccessToken),
            ),
            (
                Some(200),
                br#"{"access_token":""}"#,
                RefreshError::Transient(Transient::NoAccessToken),
            ),
            (
                Some(200),
                br#"{"access_token":"x","token_type":"mac"}"#,
                RefreshError::Transient(Transient::UnexpectedTokenType),
            ),
            (
                Some(200),
                br#"{"access_token":5}"#,
                RefreshError::Transient(Transient::UnparseableResponse),
            ),
            // One object, each member once (an array of the members in order was read as
            // one before the filter had its own reader).
            (
                Some(200),
                br#"["x", null, null, "Bearer"]"#,
                RefreshError::Transient(Transient::UnparseableResponse),
            ),
            (
                Some(200),
                br#"{"access_token":"x","access_token":"y"}"#,
                RefreshError::Transient(Transient::UnparseableResponse),
            ),
            (
                Some(200),
                br#"{"access_token":"x","id_token":{}}"#,
                RefreshError::Transient(Transient::UnparseableResponse),
            ),
            (
                Some(400),
                br#"{"error":"invalid_grant"}"#,
                RefreshError::InvalidGrant,
            ),
            (
                Some(400),
                br#"{"error":"invalid_grant","error":"invalid_grant"}"#,
                RefreshError::Transient(Transient::Endpoint4xx),
            ),
            (
                Some(400),
                br#"["invalid_grant"]"#,
                RefreshError::Transient(Transient::Endpoint4xx),
            ),
            (
                Some(400),
                br#"{"error":"invalid_client"}"#,
                RefreshError::Transient(Transient::Endpoint4xx),
            ),
            (
                Some(401),
                b"",
                RefreshError::Transient(Transient::Endpoint4xx),
            ),
            (
                Some(302),
                b"",
                RefreshError::Transient(Transient::UnexpectedStatus),
            ),
        ];
        for (status, body, want) in cases {
            assert_eq!(
                parse_token_response(*status, body).unwrap_err(),
                *want,
                "{status:?} {body:?}"
            );
        }
        let huge = vec![b' '; MAX_RESPONSE_BYTES + 1];
        assert_eq!(
            parse_token_response(Some(200), &huge).unwrap_err(),
            RefreshError::Transient(Transient::ResponseTooLarge)
        );
    }
}
