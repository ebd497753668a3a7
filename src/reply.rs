//! Responses the filter generates itself (the request never reaches the upstream).
//!
//! Every generated answer carries `Cache-Control: no-store`: a cached 401 or a cached
//! Set-Cookie is exactly the failure this filter exists to prevent.

use serde_json::json;

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
        let body = json!({ "error": error, "error_description": description }).to_string();
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
        let body = json!({
            "error": "request_header_fields_too_large",
            "error_description": description,
            "largest": largest,
            "largest_bytes": bytes,
        })
        .to_string();
        Reply {
            status: 431,
            headers: vec![
                ("content-type", "application/json".to_string()),
                ("cache-control", "no-store".to_string()),
            ],
            body,
            reason: "headers_too_large",
        }
    }

    /// 400 for a request the filter cannot read at all (e.g. a Cookie header that is not UTF-8).
    pub fn bad_request(reason: &'static str, description: &str) -> Reply {
        Reply::json(400, reason, "invalid_request", description)
    }

    /// 503 while a dependency (the signing keys, the IdP) is unavailable; the client may retry.
    pub fn unavailable(reason: &'static str, description: &str, retry_after_s: u64) -> Reply {
        let mut r = Reply::json(503, reason, "temporarily_unavailable", description);
        r.headers.push(("retry-after", retry_after_s.to_string()));
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header<'a>(r: &'a Reply, name: &str) -> Option<&'a str> {
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
    fn unavailable_has_retry_after() {
        let r = Reply::unavailable("jwks_not_ready", "keys", 2);
        assert_eq!(r.status, 503);
        assert_eq!(header(&r, "retry-after"), Some("2"));
        assert_eq!(header(&r, "cache-control"), Some("no-store"));
    }
}
