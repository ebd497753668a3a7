//! Login start: `GET <login_path>?return_to=…` answers a 302 to the authorization endpoint
//! (code flow with PKCE, `state` and `nonce`) and the sealed flow cookie.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2_11::Digest as _;

use super::flow::{clear_flow_cookie, flow_attrs, stale_flow_cookies, Flow, FLOW_MAX_AGE_S};
use crate::config::{Config, LoginConfig, RefreshConfig};
use crate::http::cookie::{self, SameSite};
use crate::http::url::{parse_query, safe_return_to, with_query};
use crate::http::Reply;
use crate::random::Random;
use crate::session;

/// Answers `GET <login_path>?return_to=…`: a 302 to the authorization endpoint and the sealed
/// flow cookie (plus `Max-Age=0` for stale flow cookies). `query` is the request's query
/// string (after `?`), `cookie_header` its Cookie header.
pub fn start(
    config: &Config,
    login: &LoginConfig,
    refresh: &RefreshConfig,
    query: &str,
    cookie_header: &str,
    now: u64,
    random: &Random,
) -> Reply {
    let params = parse_query(query);
    let return_to = params
        .iter()
        .find(|(k, _)| k == "return_to")
        .map_or_else(|| "/".to_owned(), |(_, v)| safe_return_to(v));
    let flow = Flow {
        v: URL_SAFE_NO_PAD.encode(random.verifier),
        s: URL_SAFE_NO_PAD.encode(random.state),
        n: URL_SAFE_NO_PAD.encode(random.nonce),
        r: return_to,
        t: now,
    };
    let challenge = URL_SAFE_NO_PAD.encode(sha2_11::Sha256::digest(flow.v.as_bytes()));
    let mut authorize: Vec<(&str, &str)> = vec![
        ("response_type", "code"),
        ("client_id", &refresh.client_id),
        ("redirect_uri", &login.redirect_uri),
        ("scope", &login.scope),
        ("state", &flow.s),
        ("nonce", &flow.n),
        ("code_challenge", &challenge),
        ("code_challenge_method", "S256"),
    ];
    if let Some(prompt) = &login.prompt {
        authorize.push(("prompt", prompt));
    }
    for (k, v) in &login.extra_authorize_params {
        authorize.push((k, v));
    }
    let location = with_query(&login.authorization_endpoint, &authorize);

    let attrs = &config.cookies.attrs;
    let name = login.flow_cookie_name(&flow.s);
    let sealed = session::seal_json(&refresh.session_keys, &flow, random.iv);
    let mut reply = Reply::redirect(&location, "login_start").no_referrer();
    reply.headers.push((
        "set-cookie",
        cookie::set_cookie(
            &name,
            &sealed,
            Some(FLOW_MAX_AGE_S),
            &flow_attrs(attrs),
            SameSite::Lax,
            true,
        ),
    ));
    for stale in stale_flow_cookies(login, refresh, cookie_header, now) {
        if stale != name {
            reply
                .headers
                .push(("set-cookie", clear_flow_cookie(&stale, attrs)));
        }
    }
    reply
}
