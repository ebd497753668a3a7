//! Why a login failed, and the pages and JSON bodies that say so.

use std::fmt;

use crate::config::LoginConfig;
use crate::http::url::with_query;
use crate::http::Reply;
use crate::idp::RefreshError;
use crate::jwt::token::TokenError;

/// Seconds a client is told to wait after an IdP or key-set outage during a callback.
const RETRY_AFTER_S: u64 = 5;

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
            RefreshError::Transient(t) if t.is_outage() => LoginError::IdpUnavailable(t.code()),
            RefreshError::Transient(t) => LoginError::ExchangeFailed(t.code()),
        }
    }
}

/// Escapes text for HTML content and quoted attribute values.
pub fn html_escape(s: &str) -> String {
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

pub fn page(title: &str, head_extra: &str, body: &str) -> String {
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
pub fn error_reply(
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
    reply.no_referrer()
}

pub fn method_not_allowed(allow: &'static str) -> Reply {
    let mut r = Reply::error(
        405,
        "login_method_not_allowed",
        "invalid_request",
        &format!("use {allow} on this path"),
    );
    r.headers.push(("allow", allow.to_string()));
    r
}
