//! What a browser sees when the relay refuses a page: a top-level navigation is sent to the
//! login (when the relay runs it) instead of a 401 it cannot do anything with.

use crate::config::{Config, LoginConfig};
use crate::http::negotiate::is_navigation;
use crate::http::url::{safe_return_to, with_query};
use crate::http::{Reply, RequestView};

/// A refusal of a top-level navigation becomes a redirect to the login when the relay runs it
/// (fetch and XHR keep their 401: redirecting an API call breaks clients). Cookies the refusal
/// clears are cleared by the redirect too.
pub fn navigation_redirect(config: &Config, req: &RequestView<'_>, reply: Reply) -> Reply {
    let Some(login) = &config.login else {
        return reply;
    };
    if reply.status != 401 {
        return reply;
    }
    let navigation = is_navigation(
        req.method(),
        req.get_str("sec-fetch-mode"),
        req.get_str("accept"),
    );
    if !navigation {
        return reply;
    }
    let mut redirect = login_redirect(login, &req.path());
    for (name, value) in reply.headers {
        if name == "set-cookie" {
            redirect.headers.push((name, value));
        }
    }
    redirect
}

/// 302 to the login path with `return_to` = the original path and query (when safe; else `/`).
pub fn login_redirect(login: &LoginConfig, path_and_query: &str) -> Reply {
    let return_to = safe_return_to(path_and_query);
    Reply::redirect(
        &with_query(&login.login_path, &[("return_to", &return_to)]),
        "login_redirect",
    )
    .no_referrer()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::reply::tests::header;
    use crate::testkit::refresh_config;
    use serde_json::json;

    #[test]
    fn login_redirect_keeps_the_page() {
        let c = refresh_config(json!({"login": {
            "authorization_endpoint": "https://auth.example.com/oauth2/authorize",
            "redirect_uri": "https://app.example.com/auth/callback",
            "scopes": ["openid"],
        }}));
        let Some(l) = &c.login else {
            panic!("login configured")
        };
        let r = login_redirect(l, "/app/orders?id=7&tab=a b");
        assert_eq!(r.status, 302);
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert_eq!(
            header(&r, "location"),
            Some("/auth/login?return_to=%2Fapp%2Forders%3Fid%3D7%26tab%3Da%2520b")
        );
        // An unsafe path is not carried along.
        let r = login_redirect(l, "//evil.test/x");
        assert_eq!(header(&r, "location"), Some("/auth/login?return_to=%2F"));
    }
}
