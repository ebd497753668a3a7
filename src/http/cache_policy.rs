//! Keeping responses that touch the session out of shared caches.
//!
//! A CDN that caches a response carrying Set-Cookie hands one user's session to the next, or
//! replays a stale cookie (the classic "400 on the login callback behind a CDN").

/// Cache-Control for a response that sets or clears a relay cookie.
pub const NO_STORE: &str = "private, no-store";

/// `Vary` with `token` added (case-insensitive), or `None` when it is already there (or `*`).
pub fn vary_with(existing: Option<&str>, token: &str) -> Option<String> {
    match existing.map(str::trim).filter(|v| !v.is_empty()) {
        None => Some(token.to_string()),
        Some(v) => {
            let present = v
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case(token));
            if present {
                None
            } else {
                Some(format!("{v}, {token}"))
            }
        }
    }
}

/// Cache-Control for a protected response that sets no cookie: shared caches may not keep it
/// (`public` and `s-maxage` removed, `private` added), the browser's own cache may
/// (`max-age` and the other directives are kept). `None` when nothing changes.
pub fn private_cache_control(existing: Option<&str>) -> Option<String> {
    let Some(v) = existing.map(str::trim).filter(|v| !v.is_empty()) else {
        return Some("private".to_string());
    };
    let mut out: Vec<&str> = Vec::new();
    let mut has_private = false;
    let mut changed = false;
    for d in v.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        let name = d.split('=').next().unwrap_or("").trim();
        if name.eq_ignore_ascii_case("public") || name.eq_ignore_ascii_case("s-maxage") {
            changed = true;
            continue;
        }
        if name.eq_ignore_ascii_case("private") || name.eq_ignore_ascii_case("no-store") {
            has_private = true;
        }
        out.push(d);
    }
    if !has_private {
        out.insert(0, "private");
        changed = true;
    }
    changed.then(|| out.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vary_table() {
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (None, Some("Cookie")),
            (Some(""), Some("Cookie")),
            (Some("Accept-Encoding"), Some("Accept-Encoding, Cookie")),
            (Some("accept-encoding, cookie"), None),
            (Some("*"), None),
            (Some("Origin,Cookie"), None),
        ];
        for (input, want) in cases {
            assert_eq!(vary_with(*input, "Cookie").as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn private_table() {
        let cases: &[(Option<&str>, Option<&str>)] = &[
            (None, Some("private")),
            (Some("public, max-age=60"), Some("private, max-age=60")),
            (
                Some("max-age=60, s-maxage=600"),
                Some("private, max-age=60"),
            ),
            (Some("PUBLIC"), Some("private")),
            (Some("private, max-age=5"), None),
            (Some("no-store"), None),
            (Some("no-cache"), Some("private, no-cache")),
            (Some("s-maxage=60, public, private"), Some("private")),
        ];
        for (input, want) in cases {
            assert_eq!(private_cache_control(*input).as_deref(), *want, "{input:?}");
        }
    }
}
