//! Logout: every relay cookie cleared, the refresh token revoked (RFC 7009, best effort), and
//! the browser sent to the IdP's end-session endpoint or the configured page.

use super::flow::{clear_flow_cookie, flow_cookies, MAX_FLOW_COOKIES_CLEARED};
use crate::config::{Config, LoginConfig};
use crate::http::cookie;
use crate::http::url::with_query;
use crate::http::Reply;
use crate::idp::{self, TokenRequest};
use crate::jar;
use crate::json;
use crate::session;

/// A logout: the answer, and the refresh-token revocation to send (fire and forget) when the
/// request carried a valid session and `revocation_path` is configured.
#[derive(Debug)]
pub struct Logout {
    pub revocation: Option<TokenRequest>,
    pub reply: Reply,
}

/// Answers `POST <logout_path>` (the caller has checked CSRF): every relay cookie cleared (the
/// access token and session via `jar::clear_relay_cookies`, the CSRF cookie, any flow
/// cookies), then the browser goes to the IdP's `end_session_endpoint` (`client_id`,
/// `id_token_hint` when the session kept one, `post_logout_redirect_uri`), or to
/// `post_logout_redirect` without one. With `json` (the client prefers JSON: a `fetch`, which
/// cannot follow a cross-origin redirect into a page) the answer is `200 {"redirect_to": url}`
/// instead of the 302, for the page to navigate itself; that URL carries no `id_token_hint`,
/// because a JSON body is readable by JavaScript and no token may be.
pub fn logout(
    config: &Config,
    login: &LoginConfig,
    cookie_header: &str,
    json: bool,
    now: u64,
) -> Logout {
    let session = config.refresh.as_ref().and_then(|refresh| {
        let sealed = cookie::read_chunked(cookie_header, &config.cookies.session)?;
        session::unseal(&refresh.session_keys, &sealed, now)
            .ok()
            .map(|u| (refresh, u.session))
    });
    let revocation = session.as_ref().and_then(|(refresh, s)| {
        let path = login.revocation_path.as_deref()?;
        Some(idp::revocation_request(refresh, path, &s.rt))
    });
    let location = match &login.end_session_endpoint {
        Some(end) => {
            let client_id = config.refresh.as_ref().map_or("", |r| r.client_id.as_str());
            let mut params: Vec<(&str, &str)> = vec![("client_id", client_id)];
            if let Some(hint) = session.as_ref().and_then(|(_, s)| s.id_token.as_deref()) {
                if !json {
                    params.push(("id_token_hint", hint));
                }
            }
            params.push(("post_logout_redirect_uri", &login.post_logout_redirect_uri));
            with_query(end, &params)
        }
        None => login.post_logout_redirect.clone(),
    };

    let attrs = &config.cookies.attrs;
    let mut cookies = jar::clear_relay_cookies(config, cookie_header);
    cookies.push(cookie::clear_cookie(&config.cookies.csrf, attrs));
    for (name, _) in flow_cookies(login, cookie_header)
        .into_iter()
        .take(MAX_FLOW_COOKIES_CLEARED)
    {
        cookies.push(clear_flow_cookie(name, attrs));
    }
    let mut reply = if json {
        Reply::json_ok(
            "logout",
            json::object(|o| {
                o.str("redirect_to", &location);
            }),
        )
    } else {
        Reply::redirect(&location, "logout")
    };
    for c in cookies {
        reply.headers.push(("set-cookie", c));
    }
    Logout {
        revocation,
        reply: reply.no_referrer(),
    }
}
