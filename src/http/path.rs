//! Which requests the filter protects.
//!
//! A request is protected when its path starts with a protected prefix and with no public
//! prefix. Upstreams disagree about `..`, `//`, `\` and percent-encoding, so matching is
//! conservative: a request is protected when either the path as sent or its normalized form
//! (decoded, slashes merged, dot segments resolved) is under a protected prefix, and public only
//! when both forms are under a public prefix. Envoy's `normalize_path` and `merge_slashes`
//! should still be on (the example configs set them); this guards deployments that forget.

use std::borrow::Cow;

use super::url::percent_decode_bytes;
use crate::bytes;

/// Compiled prefix lists.
#[derive(Debug, Clone, Default)]
pub struct PathPolicy {
    pub protected: Vec<String>,
    pub public: Vec<String>,
    /// `case_insensitive_prefixes`: protected prefixes match in any ASCII case (for upstreams
    /// that route `/API/x` like `/api/x`, such as ASP.NET on IIS). Public prefixes stay
    /// case-sensitive: matching them in any case would only make more paths public.
    pub case_insensitive: bool,
}

impl PathPolicy {
    pub fn is_protected(&self, raw_path: &str) -> bool {
        let raw = strip_query(raw_path);
        let norm = normalize(raw);
        let fold = self.case_insensitive;
        let protected = starts_with_any(raw, &self.protected, fold)
            || starts_with_any(&norm, &self.protected, fold);
        if !protected {
            return false;
        }
        !(starts_with_any(raw, &self.public, false) && starts_with_any(&norm, &self.public, false))
    }
}

/// Whether `path` starts with one of `prefixes`, in any ASCII case when `fold`. No allocation.
fn starts_with_any(path: &str, prefixes: &[String], fold: bool) -> bool {
    prefixes.iter().any(|p| {
        if fold {
            path.as_bytes()
                .get(..p.len())
                .is_some_and(|head| head.eq_ignore_ascii_case(p.as_bytes()))
        } else {
            bytes::starts_with(path.as_bytes(), p.as_bytes())
        }
    })
}

/// The path without its query string or fragment.
pub fn strip_query(path: &str) -> &str {
    match path.bytes().position(|b| b == b'?' || b == b'#') {
        Some(i) => path.get(..i).unwrap_or(path),
        None => path,
    }
}

/// Normalized form for matching only (never forwarded). Borrowed on the hot path: a path with
/// no `%`, no `\` and no `//` or `/.` sequences is already normal.
pub fn normalize(path: &str) -> Cow<'_, str> {
    if is_normal(path) {
        return Cow::Borrowed(path);
    }
    let decoded =
        String::from_utf8_lossy(&percent_decode_bytes(path.as_bytes())).replace('\\', "/");
    let mut segments: Vec<&str> = Vec::new();
    for seg in decoded.split('/') {
        // A segment's `;parameters` are not part of its name for a servlet container.
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    let mut out = String::with_capacity(decoded.len() + 1);
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    // Keep a trailing slash so "/api/" still matches the prefix "/api/".
    if decoded.ends_with('/')
        || decoded.ends_with("/.")
        || decoded.ends_with("/..")
        || out.is_empty()
    {
        out.push('/');
    }
    Cow::Owned(out)
}

/// No `%`, `\` or `;`, and no `//` or `/.`: one pass over the bytes (the hot path's check).
fn is_normal(path: &str) -> bool {
    let mut after_slash = false;
    path.bytes().all(|b| {
        let normal =
            !(matches!(b, b'%' | b'\\' | b';') || (after_slash && matches!(b, b'/' | b'.')));
        after_slash = b == b'/';
        normal
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> PathPolicy {
        PathPolicy {
            protected: vec!["/api/".into()],
            public: vec!["/api/public/".into()],
            case_insensitive: false,
        }
    }

    #[test]
    fn case_insensitive_prefixes_table() {
        let p = PathPolicy {
            case_insensitive: true,
            ..policy()
        };
        let cases: &[(&str, bool, bool)] = &[
            // (path, protected with the option, protected without it)
            ("/api/me", true, true),
            ("/API/me", true, false),
            ("/Api/admin", true, false),
            ("/%41PI/admin", true, false),
            ("/x/../API/admin", true, false),
            ("/API;x/admin", true, false),
            ("/api", false, false),
            ("/APIX/me", false, false),
            ("/static/API/me", false, false),
            // Public prefixes stay case-sensitive: these are protected with the option.
            ("/api/public/health", false, false),
            ("/API/public/health", true, false),
            ("/api/PUBLIC/health", true, true),
            ("/API/PUBLIC/health", true, false),
            // Non-ASCII never folds onto ASCII, and a prefix cut inside a character is no match.
            ("/\u{212a}pi/me", false, false),
            ("/\u{e9}", false, false),
            ("", false, false),
        ];
        for (path, with, without) in cases {
            assert_eq!(p.is_protected(path), *with, "with the option: {path:?}");
            assert_eq!(policy().is_protected(path), *without, "without: {path:?}");
        }
    }

    #[test]
    fn classification_table() {
        let p = policy();
        let cases: &[(&str, bool)] = &[
            ("/api/me", true),
            ("/api/", true),
            ("/api", false),
            ("/", false),
            ("/static/app.js", false),
            ("/api/public/health", false),
            ("/api/public/", false),
            ("/api/me?x=/api/public/", true),
            ("/api/public/../me", true),
            ("/api/public/%2e%2e/me", true),
            ("/api/public/..%2fme", true),
            ("/api/public/..\\me", true),
            ("//api/me", true),
            ("/./api/me", true),
            ("/%61pi/me", true),
            ("/x/../api/me", true),
            ("/api%2fme", true),
            ("/API/me", false),
            ("/api/public/./x", false),
            ("/api/public//x", false),
            ("/api/%zz", true),
            // Path parameters: what a servlet container routes to /api/... is protected.
            ("/api;/admin", true),
            ("/api;jsessionid=x/admin", true),
            ("/api%3b/admin", true),
            ("/api%3Bjsessionid=x/admin", true),
            ("/;x/api/admin", true),
            ("/static/..;/api/admin", true),
            ("/api/public;x/../me", true),
            ("/api/public/x;y", false),
            ("/static;x/app.js", false),
            ("%", false),
            ("", false),
        ];
        for (path, want) in cases {
            assert_eq!(p.is_protected(path), *want, "path {path:?}");
        }
    }

    #[test]
    fn normalize_table() {
        let cases: &[(&str, &str)] = &[
            ("/a/b", "/a/b"),
            ("/a//b", "/a/b"),
            ("/a/./b", "/a/b"),
            ("/a/../b", "/b"),
            ("/../../b", "/b"),
            ("/a/b/..", "/a/"),
            ("/a%2Fb", "/a/b"),
            ("/a\\b", "/a/b"),
            ("/a/", "/a/"),
            ("/%", "/%"),
            ("/%ff", "/\u{fffd}"),
            ("/api;x/admin", "/api/admin"),
            ("/a/..;/b", "/b"),
            ("/a;/", "/a/"),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(input), *want, "input {input:?}");
        }
    }

    proptest::proptest! {
        /// The one-pass check says what the substring searches it replaced said.
        #[test]
        fn is_normal_matches_substring_search(path in "[/.%;\\\\a?#é]{0,12}") {
            let searched = !path.contains(['%', '\\', ';'])
                && !path.contains("//")
                && !path.contains("/.");
            proptest::prop_assert_eq!(is_normal(&path), searched);
            let stripped = path.find(['?', '#']).map_or(path.as_str(), |i| &path[..i]);
            proptest::prop_assert_eq!(strip_query(&path), stripped);
        }
    }
}
