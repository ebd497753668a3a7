//! Responses the filter generates itself (the request never reaches the upstream).
//!
//! Every generated answer carries `Cache-Control: no-store`: a cached 401 or a cached
//! Set-Cookie is exactly the failure this filter exists to prevent.

use crate::json;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u32,
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// Stable reason code for logs and metrics (never a secret).
    pub reason: &'static str,
}

impl Reply {
    fn json(status: u32, reason: &'static str, error: &str, description: &str) -> Reply {
        let body = json::object(|o| {
            o.str("error", error).str("error_description", description);
        });
        Reply::json_body(status, reason, body)
    }

    /// A JSON answer (`body` is JSON), `no-store`.
    fn json_body(status: u32, reason: &'static str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
            reason,
        }
    }

    /// 401 without a token: RFC 6750 §3.1 says no error attribute when none was presented.
    pub fn missing_token() -> Reply {
        let mut r = Reply::json(
            401,
            "missing_token",
            "missing_token",
            "no access token cookie was sent",
        );
        r.headers.push(("www-authenticate", "Bearer".to_string()));
        r
    }

    /// 401 for a presented token that failed verification.
    pub fn invalid_token(reason: &'static str, description: &str) -> Reply {
        let mut r = Reply::json(401, reason, "invalid_token", description);
        r.headers.push((
            "www-authenticate",
            format!(
                "Bearer error=\"invalid_token\", error_description=\"{}\"",
                description.replace(['"', '\\'], "'")
            ),
        ));
        r
    }

    /// 403 for a request that may be a cross-site request forgery.
    pub fn forbidden_csrf(reason: &'static str, description: &str) -> Reply {
        let mut r = Reply::json(403, reason, "csrf", description);
        r.reason = reason;
        r
    }

    /// 431 when the request's headers, as they would go upstream, exceed the budget.
    pub fn headers_too_large(description: &str, largest: &str, bytes: usize) -> Reply {
        let body = json::object(|o| {
            o.str("error", "request_header_fields_too_large")
                .str("error_description", description)
                .str("largest", largest)
                .u64("largest_bytes", u64::try_from(bytes).unwrap_or(u64::MAX));
        });
        Reply::json_body(431, "headers_too_large", body)
    }

    /// 400 for a request the filter cannot read at all (e.g. a Cookie header that is not UTF-8).
    pub fn bad_request(reason: &'static str, description: &str) -> Reply {
        Reply::json(400, reason, "invalid_request", description)
    }

    /// Any JSON error answer `{"error", "error_description"}` with `Cache-Control: no-store`.
    pub fn error(status: u32, reason: &'static str, error: &str, description: &str) -> Reply {
        Reply::json(status, reason, error, description)
    }

    /// A 200 JSON answer the relay makes itself (`body` is JSON), `no-store`.
    pub fn json_ok(reason: &'static str, body: String) -> Reply {
        Reply::json_body(200, reason, body)
    }

    /// The same reply with `Referrer-Policy: no-referrer` (login answers carry codes and state
    /// in their URLs).
    pub fn no_referrer(mut self) -> Reply {
        self.headers
            .push(("referrer-policy", "no-referrer".to_string()));
        self
    }

    /// A `302 Found` to `location` (which the caller has validated), no body, `no-store`.
    pub fn redirect(location: &str, reason: &'static str) -> Reply {
        Reply {
            status: 302,
            headers: vec![
                ("location", location.to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body: String::new(),
            reason,
        }
    }

    /// An HTML page (`body` must already be escaped), `no-store`, with a CSP that allows no
    /// script, style, frame or sub-resource at all, and `nosniff`.
    pub fn html(status: u32, reason: &'static str, body: String) -> Reply {
        Reply {
            status,
            headers: vec![
                ("content-type", "text/html; charset=utf-8".to_string()),
                ("cache-control", "no-store".to_string()),
                (
                    "content-security-policy",
                    "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
                        .to_string(),
                ),
                ("x-content-type-options", "nosniff".to_string()),
            ],
            body,
            reason,
        }
    }

    /// 503 while a dependency (the signing keys, the IdP) is unavailable; the client may retry.
    pub fn unavailable(reason: &'static str, description: &str, retry_after_s: u64) -> Reply {
        let mut r = Reply::json(503, reason, "temporarily_unavailable", description);
        r.headers.push(("retry-after", retry_after_s.to_string()));
        r
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A header of a reply, for tests here and in the modules that build replies.
    pub(crate) fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn missing_token_has_no_error_attribute() {
        let r = Reply::missing_token();
        assert_eq!(r.status, 401);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "missing_token");
    }

    #[test]
    fn invalid_token_quotes_safely() {
        let r = Reply::invalid_token("expired", "token \"expired\"");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer error=\"invalid_token\", error_description=\"token 'expired'\"")
        );
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["error_description"], "token \"expired\"");
    }

    #[test]
    fn redirect_html_and_error() {
        let r = Reply::redirect("/next?a=1", "login");
        assert_eq!(r.status, 302);
        assert_eq!(header(&r, "location"), Some("/next?a=1"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert!(r.body.is_empty());
        let r = Reply::html(400, "x", "<p>hi</p>".into());
        assert_eq!(header(&r, "content-type"), Some("text/html; charset=utf-8"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
        assert!(header(&r, "content-security-policy")
            .unwrap()
            .starts_with("default-src 'none'"));
        let r = Reply::error(405, "m", "invalid_request", "use POST");
        assert_eq!(r.status, 405);
        let body: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["error_description"], "use POST");
    }

    #[test]
    fn unavailable_has_retry_after() {
        let r = Reply::unavailable("jwks_not_ready", "keys", 2);
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("2"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
    }
}
