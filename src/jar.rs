//! The relay's own cookies: writing the access token, the sealed session and the CSRF cookie,
//! clearing them, and telling them apart from the application's cookies.

use crate::config::{Config, RefreshConfig};
use crate::csrf;
use crate::http::cookie;
use crate::http::Reply;
use crate::random::Random;
use crate::session::{self, Session};

/// Cookies the relay owns besides its three (access token, session, CSRF): session chunks and login flow cookies. They are
/// never forwarded.
pub fn relay_owned(config: &Config, name: &str) -> bool {
    cookie::is_chunk_of(name, &config.cookies.session)
        || cookie::is_chunk_of(name, &config.cookies.access_token)
        || config
            .login
            .as_ref()
            .is_some_and(|l| l.is_flow_cookie(name))
}

/// Set-Cookie values for a new access token; they live as long as the token. A token too big
/// for one cookie (browsers drop Set-Cookie over 4,096 bytes) is split into chunks like the
/// session, and pieces of an earlier token that the new one does not overwrite are deleted.
pub fn access_token_cookies(
    config: &Config,
    cookie_header: &str,
    token: &str,
    exp: u64,
    now: u64,
) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let name = &config.cookies.access_token;
    let written = cookie::chunk(name, token);
    let mut out: Vec<String> = written
        .iter()
        .map(|(n, v)| {
            cookie::set_cookie(
                n,
                v,
                Some(exp.saturating_sub(now)),
                attrs,
                attrs.same_site,
                true,
            )
        })
        .collect();
    for stale in cookie::stale_chunks(cookie_header, name, &written) {
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    out
}

/// Set-Cookie values that store `session` (chunked when large) and delete stale chunks.
pub fn session_cookies(
    config: &Config,
    refresh: &RefreshConfig,
    cookie_header: &str,
    session: &Session,
    now: u64,
    rand: &Random,
) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let name = &config.cookies.session;
    let sealed = session::seal(&refresh.session_keys, session, rand.iv);
    let max_age = session.exp.map(|exp| exp.saturating_sub(now));
    let written = cookie::chunk(name, &sealed);
    let mut out: Vec<String> = written
        .iter()
        .map(|(n, v)| cookie::set_cookie(n, v, max_age, attrs, attrs.same_site, true))
        .collect();
    for stale in cookie::stale_chunks(cookie_header, name, &written) {
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    if config.csrf.as_ref().is_some_and(|c| c.double_submit) {
        out.push(csrf_cookie(config, cookie_header, rand));
    }
    out
}

/// The double-submit CSRF cookie, issued with every session: the request's value is kept (the
/// page's copy stays valid), else a new token. Readable by JavaScript, `SameSite=Strict`.
pub fn csrf_cookie(config: &Config, cookie_header: &str, rand: &Random) -> String {
    let name = &config.cookies.csrf;
    let value = cookie::find(cookie_header, name)
        .filter(|v| !v.is_empty() && cookie::is_valid_value(v))
        .map(str::to_string)
        .unwrap_or_else(|| csrf::new_token(rand.csrf));
    let attrs = &config.cookies.attrs;
    cookie::set_cookie(name, &value, None, attrs, cookie::SameSite::Strict, false)
}

/// Set-Cookie values that delete the access token and every piece of the session present.
pub fn clear_relay_cookies(config: &Config, cookie_header: &str) -> Vec<String> {
    let attrs = &config.cookies.attrs;
    let at = &config.cookies.access_token;
    let mut out = vec![cookie::clear_cookie(at, attrs)];
    for stale in cookie::stale_chunks(cookie_header, at, &[]) {
        if stale != *at {
            out.push(cookie::clear_cookie(&stale, attrs));
        }
    }
    let session = &config.cookies.session;
    let mut any_session = false;
    for stale in cookie::stale_chunks(cookie_header, session, &[]) {
        any_session |= stale == *session;
        out.push(cookie::clear_cookie(&stale, attrs));
    }
    if !any_session {
        out.push(cookie::clear_cookie(session, attrs));
    }
    out
}

/// Adds `cookies` to a reply as Set-Cookie headers (and `Vary: Cookie` when there are any).
pub fn add_cookies(reply: &mut Reply, cookies: Vec<String>) {
    if cookies.is_empty() {
        return;
    }
    for c in cookies {
        reply.headers.push(("set-cookie", c));
    }
    reply.headers.push(("vary", "Cookie".to_string()));
}

/// Whether `cookie_header` may hold a relay cookie: the name of one (or the start of a chunk's or
/// flow cookie's name) occurs in it. A substring search, measured about four times cheaper than
/// [`scan`] (no allocation), so requests that never carry relay cookies (static files) skip the
/// scan.
pub fn may_hold_relay_cookie(config: &Config, cookie_header: &str) -> bool {
    let names = &config.cookies;
    [&names.access_token, &names.session, &names.csrf]
        .into_iter()
        .any(|n| cookie_header.contains(n.as_str()))
        || config
            .login
            .as_ref()
            .is_some_and(|l| cookie_header.contains(l.flow_cookie_prefix.as_str()))
}

/// The relay's three cookies as a request carries them (`None` when absent), and the Cookie
/// header without them and without any other relay-owned cookie (`None` when nothing is left).
pub fn scan<'h>(config: &Config, cookie_header: &'h [u8]) -> cookie::Scan<'h, 3> {
    let names = &config.cookies;
    cookie::scan(
        cookie_header,
        [
            names.access_token.as_str(),
            names.session.as_str(),
            names.csrf.as_str(),
        ],
        |n| relay_owned(config, n),
    )
}
