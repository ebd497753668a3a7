//! The per-request decision: `decide(config, keys, cache, request, now) -> Step`.
//!
//! Pure: no host calls, time is a parameter. The shell in `filter/` reads the request, calls
//! this, and carries out the `Step`.

use std::rc::Rc;

use crate::config::Config;
use crate::cookie;
use crate::jwks::KeySet;
use crate::reply::Reply;
use crate::token::{self, TokenError};
use crate::token_cache::{Cached, TokenCache};

/// What the filter needs from a request.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub path: &'a str,
    /// The raw Cookie header, if any (bytes: a client may send anything).
    pub cookie: Option<&'a [u8]>,
}

/// What to do with a request.
#[derive(Debug)]
pub enum Step<'a> {
    /// Not protected: leave the request untouched.
    Pass,
    /// Verified: rewrite the request and send it on.
    Forward(Forward<'a>),
    /// Answer here; nothing reaches the upstream.
    Respond(Reply),
    /// The token names a key id the key set lacks: refetch the JWKS (rate-limited) and decide
    /// again, or answer with [`unknown_kid_reply`] when a refetch is not allowed.
    UnknownKid,
}

/// Request mutations for a verified token.
#[derive(Debug, PartialEq, Eq)]
pub struct Forward<'a> {
    /// Value for `authorization` (replaces anything the client sent).
    pub authorization: String,
    /// New Cookie header without the relay's cookies; `None` removes the header.
    pub cookie: Option<String>,
    /// The configured forward-claim headers and the claim each takes.
    headers: &'a [(String, String)],
    /// The token's forwarded values, by header name.
    values: Rc<[(String, String)]>,
}

impl Forward<'_> {
    /// Every configured forward-claim header: its value, or `None` to remove a client copy.
    pub fn claim_headers(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        self.headers.iter().map(|(header, _)| {
            let value = self
                .values
                .iter()
                .find(|(h, _)| h == header)
                .map(|(_, v)| v.as_str());
            (header.as_str(), value)
        })
    }
}

/// Decides what happens to one request.
pub fn decide<'a>(
    config: &'a Config,
    keys: Option<&KeySet>,
    cache: &mut TokenCache,
    req: &RequestView<'_>,
    now: u64,
) -> Step<'a> {
    if !config.paths.is_protected(req.path) {
        return Step::Pass;
    }
    let cookie_header = match req.cookie.map(std::str::from_utf8) {
        None => "",
        Some(Ok(h)) => h,
        Some(Err(_)) => {
            return Step::Respond(Reply::bad_request(
                "cookie_not_utf8",
                "the Cookie header is not valid UTF-8",
            ))
        }
    };
    let names = &config.cookies;
    let scan = cookie::scan(
        cookie_header,
        [
            names.access_token.as_str(),
            names.session.as_str(),
            names.csrf.as_str(),
        ],
    );
    let token = match scan.values.first().copied().flatten() {
        Some(t) if !t.is_empty() => t,
        _ => return Step::Respond(Reply::missing_token()),
    };

    let values = match cache.get(token, now) {
        Some(hit) => Rc::clone(&hit.forwarded),
        None => {
            let Some(keys) = keys else {
                return Step::Respond(Reply::unavailable(
                    "jwks_not_ready",
                    "signing keys are not loaded yet",
                    1,
                ));
            };
            match token::verify(token, keys, &config.rules, now) {
                Ok(v) => {
                    let forwarded: Rc<[(String, String)]> = v.forwarded.into();
                    let entry = Cached {
                        valid_until: v.exp.saturating_add(config.rules.clock_skew_s),
                        forwarded: Rc::clone(&forwarded),
                    };
                    cache.insert(token, entry, now);
                    forwarded
                }
                Err(TokenError::UnknownKid) => return Step::UnknownKid,
                Err(e) => return Step::Respond(Reply::invalid_token(e.code(), &e.to_string())),
            }
        }
    };
    let mut authorization = String::with_capacity(7 + token.len());
    authorization.push_str("Bearer ");
    authorization.push_str(token);
    Step::Forward(Forward {
        authorization,
        cookie: scan.remainder(),
        headers: &config.rules.forward_claims,
        values,
    })
}

/// The answer when a token's key id is unknown even after a refetch (or none was allowed).
pub fn unknown_kid_reply() -> Reply {
    let e = TokenError::UnknownKid;
    Reply::invalid_token(e.code(), &e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::JwksSource;
    use crate::testkit::{self, claims, sign, NOW};
    use serde_json::json;

    fn keys(c: &Config) -> &KeySet {
        match &c.jwks {
            JwksSource::Inline(k) => k,
            JwksSource::Remote { .. } => panic!("inline keys expected"),
        }
    }

    type Forwarded = (String, Option<String>, Vec<(String, Option<String>)>);

    fn run(path: &str, cookie: Option<&str>, now: u64) -> (Option<Reply>, Option<Forwarded>) {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(16);
        let req = RequestView {
            path,
            cookie: cookie.map(str::as_bytes),
        };
        match decide(&c, Some(keys(&c)), &mut cache, &req, now) {
            Step::Pass => (None, None),
            Step::Respond(r) => (Some(r), None),
            Step::Forward(f) => {
                let claims = f
                    .claim_headers()
                    .map(|(h, v)| (h.to_string(), v.map(str::to_string)))
                    .collect();
                (None, Some((f.authorization, f.cookie, claims)))
            }
            Step::UnknownKid => panic!("unexpected unknown kid"),
        }
    }

    fn status(path: &str, cookie: Option<&str>) -> Option<u32> {
        run(path, cookie, NOW).0.map(|r| r.status)
    }

    #[test]
    fn valid_token_is_forwarded_with_relay_cookies_stripped() {
        let t = sign(&claims());
        let cookie = format!("a=1; __Host-relay-at={t}; __Host-relay-session=s; b=2");
        let (reply, fwd) = run("/api/me", Some(&cookie), NOW);
        assert!(reply.is_none());
        let (auth, cookie, claims) = fwd.unwrap();
        assert_eq!(auth, format!("Bearer {t}"));
        assert_eq!(cookie.as_deref(), Some("a=1; b=2"));
        assert_eq!(
            claims,
            vec![("x-user-sub".to_string(), Some("alice".to_string()))]
        );
    }

    #[test]
    fn only_relay_cookies_removes_header_and_missing_claim_removes_client_copy() {
        let mut c = claims();
        c.as_object_mut().unwrap().remove("sub");
        let t = sign(&c);
        let (_, fwd) = run("/api/me", Some(&format!("__Host-relay-at={t}")), NOW);
        let (_, cookie, claims) = fwd.unwrap();
        assert_eq!(cookie, None);
        assert_eq!(claims, vec![("x-user-sub".to_string(), None)]);
    }

    #[test]
    fn unprotected_and_public_paths_pass() {
        for p in ["/", "/static/x.js", "/api", "/api/public/health"] {
            assert!(matches!(run(p, None, NOW), (None, None)), "{p}");
        }
    }

    #[test]
    fn refusals_with_frozen_time() {
        let t = sign(&claims());
        let at = |t: &str| format!("__Host-relay-at={t}");
        assert_eq!(status("/api/me", None), Some(401));
        assert_eq!(status("/api/me", Some("a=1")), Some(401));
        assert_eq!(status("/api/me", Some("__Host-relay-at=")), Some(401));
        assert_eq!(
            status("/api/me", Some("__Host-relay-at=garbage")),
            Some(401)
        );
        // exp = NOW + 300, skew 30: valid until NOW + 330 (exclusive).
        assert!(run("/api/me", Some(&at(&t)), NOW + 329).0.is_none());
        assert_eq!(
            run("/api/me", Some(&at(&t)), NOW + 330).0.map(|r| r.status),
            Some(401)
        );
        let wrong_use = sign(
            &json!({"iss": testkit::ISS, "aud": testkit::AUD, "token_use": "id", "exp": NOW + 300}),
        );
        assert_eq!(status("/api/me", Some(&at(&wrong_use))), Some(401));
    }

    #[test]
    fn reply_shapes() {
        let (r, _) = run("/api/me", None, NOW);
        let r = r.unwrap();
        assert_eq!(r.reason, "missing_token");
        assert!(r
            .headers
            .contains(&("www-authenticate", "Bearer".to_string())));
        let (r, _) = run("/api/me", Some("__Host-relay-at=x.y.z"), NOW);
        let r = r.unwrap();
        assert!(r
            .headers
            .iter()
            .any(|(n, v)| *n == "www-authenticate" && v.contains("invalid_token")));
        assert!(r
            .headers
            .contains(&("cache-control", "no-store".to_string())));
    }

    #[test]
    fn non_utf8_cookie_is_400() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let req = RequestView {
            path: "/api/x",
            cookie: Some(b"a=\xff\xfe"),
        };
        match decide(&c, Some(keys(&c)), &mut cache, &req, NOW) {
            Step::Respond(r) => assert_eq!(r.status, 400),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn no_keys_yet_is_503_and_unknown_kid_is_signalled() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let cookie = format!("__Host-relay-at={t}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        match decide(&c, None, &mut cache, &req, NOW) {
            Step::Respond(r) => {
                assert_eq!(r.status, 503);
                assert!(r.headers.iter().any(|(n, _)| *n == "retry-after"));
            }
            other => panic!("{other:?}"),
        }
        let other_kid = testkit::sign_with_kid(&claims(), "rotated");
        let cookie = format!("__Host-relay-at={other_kid}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW),
            Step::UnknownKid
        ));
    }

    #[test]
    fn cache_hit_needs_no_keys_and_expires_with_token() {
        let c = testkit::config(json!({}));
        let mut cache = TokenCache::new(4);
        let t = sign(&claims());
        let cookie = format!("__Host-relay-at={t}");
        let req = RequestView {
            path: "/api/x",
            cookie: Some(cookie.as_bytes()),
        };
        assert!(matches!(
            decide(&c, Some(keys(&c)), &mut cache, &req, NOW),
            Step::Forward(_)
        ));
        assert_eq!(cache.len(), 1);
        // Second time: served from the cache even without keys.
        assert!(matches!(
            decide(&c, None, &mut cache, &req, NOW + 10),
            Step::Forward(_)
        ));
        // Past exp + skew the entry is dead; verification (no keys → 503) is needed again.
        assert!(
            matches!(decide(&c, None, &mut cache, &req, NOW + 330), Step::Respond(r) if r.status == 503)
        );
    }
}
