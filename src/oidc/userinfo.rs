//! `GET <userinfo_path>`: who is signed in, for browser code that never sees a token. The
//! answer is the claims of the ID token kept in the sealed session (`sub`, `name`, `email`, ...),
//! the same idea as a backend-for-frontend's user endpoint.
//!
//! The session cookie is sealed with the relay's keys (AES-GCM), and the ID token inside it
//! came from the token endpoint over the relay's own connection (verified at login), so its
//! claims are read without a second signature check; that also keeps the answer independent of
//! the ID token's own short `exp` (the session's lifetime is what counts). Protocol-only claims
//! (`nonce`, `at_hash`, `c_hash`) are left out, and no token is ever part of the answer.

use crate::json::Value;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};

use crate::config::{Config, RefreshConfig};
use crate::http::{cookie, Reply};
use crate::session;

/// Claims that only mean something to the login protocol.
const PROTOCOL_CLAIMS: &[&str] = &["nonce", "at_hash", "c_hash"];

/// 200 JSON claims; 401 `userinfo_no_session` without a valid session; 404
/// `userinfo_no_id_token` for a session that holds no ID token (one not made by the login).
pub fn userinfo(config: &Config, refresh: &RefreshConfig, cookie_header: &str, now: u64) -> Reply {
    let unsealed = cookie::read_chunked(cookie_header, &config.cookies.session)
        .and_then(|sealed| session::unseal(&refresh.session_keys, &sealed, now).ok());
    let Some(unsealed) = unsealed else {
        return Reply::error(
            401,
            "userinfo_no_session",
            "login_required",
            "no valid session; log in",
        );
    };
    match unsealed.session.id_token.as_deref().and_then(claims) {
        Some(claims) => Reply::json_ok("userinfo", claims),
        None => Reply::error(
            404,
            "userinfo_no_id_token",
            "no_id_token",
            "the session holds no ID token",
        ),
    }
}

/// The payload of a compact JWS as a JSON object, protocol claims removed. Written out member
/// by member rather than removed from the map: `BTreeMap::remove` alone added 7 KB of `.wasm`.
fn claims(id_token: &str) -> Option<String> {
    let payload = id_token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let claims: Value = crate::json::from_slice(&bytes).ok()?;
    let mut out = String::from("{");
    for (name, value) in claims.as_object()? {
        if PROTOCOL_CLAIMS.contains(&name.as_str()) {
            continue;
        }
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(&Value::from(name.as_str()).to_string());
        out.push(':');
        out.push_str(&value.to_string());
    }
    out.push('}');
    Some(out)
}
