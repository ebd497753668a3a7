//! Login and logout at the edge: the OAuth 2.0 authorization code flow with PKCE (RFC 7636)
//! and OpenID Connect, as pure functions. The shell routes the three paths here, makes the two
//! calls to the token endpoint (code exchange, revocation) and sends the replies.
//!
//! ```text
//! GET  <login_path>?return_to=/page  -> 302 authorization_endpoint?response_type=code&...  + flow cookie
//! GET  <callback>?code=..&state=..   -> Exchange: POST grant_type=authorization_code to the token endpoint
//!      finish_callback(answer)       -> 302 /page (or a same-site hop page) + access token, session, CSRF cookies
//! POST <logout_path>                 -> 302 end_session_endpoint?...  + every relay cookie cleared
//!                                       (after an RFC 7009 revocation of the refresh token: best
//!                                       effort, bounded by the token endpoint's timeout)
//! ```
//!
//! **One flow cookie per login.** The PKCE verifier, `state`, `nonce`, the page to return to and
//! the creation time travel in a short-lived cookie sealed with the session keys
//! (`session::seal_json`), named `<flow prefix>-<first 8 hex of SHA-256(state)>` so that two
//! tabs logging in at once do not overwrite each other's. It is `SameSite=Lax` (it must come
//! back on the identity provider's cross-site redirect), `HttpOnly`, `Path=/`, and lives
//! [`flow::FLOW_MAX_AGE_S`]. The callback finds it by the `state` it receives, compares the state in
//! constant time, and clears it whatever the outcome: a callback can be completed once.
//!
//! **Errors** are a clear 400 (the browser's side: an IdP `error=`, missing or mismatched state,
//! a missing, expired or replayed flow, a refused code), 401 (an ID token or access token that
//! fails verification, a wrong nonce or audience), 502 (the token endpoint answered something
//! unusable, e.g. `invalid_client`: a configuration fault), or 503 with `Retry-After` (the
//! token endpoint or the signing keys are unavailable); never a 500. The answer is a minimal
//! HTML page with a "try again" link when the browser prefers `text/html`, else JSON
//! `{"error", "error_description"}`. No error sets a session cookie.
//!
//! Nothing here logs, and no error carries a token, code or cookie value. Time and randomness
//! are parameters.

mod callback;
mod error;
mod flow;
mod logout;
mod start;
#[cfg(test)]
mod tests;
mod userinfo;

pub use callback::{callback, finish_callback, CallbackOutcome, LoginContext, PendingCallback};
pub use flow::{open_flow, Flow, FlowProblem, FLOW_MAX_AGE_S};
pub use logout::{logout, Logout};
pub use start::start;
pub use userinfo::userinfo;

use crate::config::{Config, LoginConfig, Route};
use crate::http::negotiate::{prefers_json, wants_html};
use crate::http::{Reply, RequestView};
use crate::idp::TokenRequest;
use crate::random::Random;
use error::method_not_allowed;

/// What the shell does with a request on one of the login paths.
#[derive(Debug)]
pub enum LoginStep {
    /// Send this answer.
    Respond(Reply),
    /// Pause the request, POST `request` to the token endpoint's cluster (timeout
    /// `token_endpoint.timeout_ms`), then call [`finish_callback`] with the answer.
    Exchange {
        request: TokenRequest,
        pending: PendingCallback,
    },
    /// Send `logout.reply` now; dispatch `logout.revocation`, if any, without waiting for it.
    Logout(Logout),
}

/// Handles a request to one of the login paths, or `None` when it is not for one (carry on
/// with `relay::decide`). Methods: login, callback and userinfo `GET` only, logout `POST` only
/// (anything else: 405 with `Allow`). The logout's CSRF check is the caller's, before this.
pub fn handle(
    config: &Config,
    login: &LoginConfig,
    req: &RequestView<'_>,
    now: u64,
    random: &Random,
) -> Option<LoginStep> {
    let path = req.path();
    let route = login.route(&path)?;
    let Some(refresh) = &config.refresh else {
        // Configuration refuses `login` without sessions; never reached.
        return Some(LoginStep::Respond(Reply::unavailable(
            "login_not_configured",
            "login needs session_keys and token_endpoint",
            60,
        )));
    };
    let query = path.split_once('?').map_or("", |(_, q)| q);
    let cookie_header = req.cookie_text();
    let cookie_header = cookie_header.as_ref();
    let method = req.method();
    let accept = req.get_str("accept");
    Some(match (route, method) {
        (Route::Login, "GET") => LoginStep::Respond(start(
            config,
            login,
            refresh,
            query,
            cookie_header,
            now,
            random,
        )),
        (Route::Callback, "GET") => {
            match callback(
                config,
                login,
                refresh,
                query,
                cookie_header,
                wants_html(accept),
                now,
            ) {
                Ok((request, pending)) => LoginStep::Exchange { request, pending },
                Err(reply) => LoginStep::Respond(reply),
            }
        }
        (Route::Logout, "POST") => LoginStep::Logout(logout(
            config,
            login,
            cookie_header,
            prefers_json(accept),
            now,
        )),
        (Route::UserInfo, "GET" | "HEAD") => {
            LoginStep::Respond(userinfo(config, refresh, cookie_header, now))
        }
        (Route::Logout, _) => LoginStep::Respond(method_not_allowed("POST")),
        (Route::Login | Route::Callback | Route::UserInfo, _) => {
            LoginStep::Respond(method_not_allowed("GET"))
        }
    })
}
