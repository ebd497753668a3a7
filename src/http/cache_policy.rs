//! Keeping responses that touch the session out of shared caches.
//!
//! A CDN that caches a response carrying Set-Cookie hands one user's session to the next, or
//! replays a stale cookie (the classic "400 on the login callback behind a CDN").

use std::borrow::Cow;

/// Cache-Control for a response that sets or clears a relay cookie.
pub const NO_STORE: &str = "private, no-store";

/// Response headers a CDN or reverse proxy obeys instead of `Cache-Control`, lower-case:
/// RFC 9213's `CDN-Cache-Control` and its vendor-targeted forms (Cloudflare, Vercel, Netlify,
/// Akamai), `Surrogate-Control` (Fastly, Akamai, Varnish), Akamai's `Edge-Control`, and
/// nginx's `X-Accel-Expires`. A long lifetime in any of them lets that CDN keep a per-user
/// response even when `Cache-Control` says `private`.
pub const CDN_CACHE_HEADERS: [&str; 8] = [
    "cdn-cache-control",
    "cloudflare-cdn-cache-control",
    "vercel-cdn-cache-control",
    "netlify-cdn-cache-control",
    "akamai-cache-control",
    "surrogate-control",
    "edge-control",
    "x-accel-expires",
];

/// What a CDN header of a protected response is overwritten with: `no-store` for CDNs that
/// read it, `max-age=0` for those that only take a lifetime from it (overwritten rather than
/// removed, so the CDN cannot fall back to its own default lifetime).
pub const CDN_NO_STORE: &str = "no-store, max-age=0";

/// `X-Accel-Expires` takes seconds; nginx caches nothing for `0`.
const ACCEL_NO_STORE: &str = "0";

/// The value that keeps the CDN from storing the response, when `name` (any case) is one of
/// [`CDN_CACHE_HEADERS`]; `None` for every other header.
pub fn cdn_no_store(name: &str) -> Option<&'static str> {
    let name = CDN_CACHE_HEADERS
        .iter()
        .find(|h| h.eq_ignore_ascii_case(name))?;
    Some(if *name == "x-accel-expires" {
        ACCEL_NO_STORE
    } else {
        CDN_NO_STORE
    })
}

/// The header writes that make a protected response safe from shared caches, given all its
/// headers (names as the host gives them, several lines of one name allowed) and whether the
/// relay sets a cookie on it. Each `(name, value)` replaces every line of `name` (lower-case).
///
/// - `cache-control`: [`NO_STORE`] when a cookie is set, else [`private_cache_control`] of
///   the lines joined (the browser's own cache may still keep it);
/// - `vary`: `Cookie` added ([`vary_with`]);
/// - every header of [`CDN_CACHE_HEADERS`] present: [`cdn_no_store`]. Absent ones are not
///   added: a CDN without its own header falls back to `Cache-Control`, which is `private`.
///
/// Empty when nothing needs changing; applying the writes and calling again gives none.
pub fn protected_response<N: AsRef<str>, V: AsRef<[u8]>>(
    headers: &[(N, V)],
    sets_cookie: bool,
) -> Vec<(&'static str, Cow<'static, str>)> {
    let mut out = Vec::new();
    protected_response_each(
        headers
            .iter()
            .map(|(n, v)| (n.as_ref().as_bytes(), v.as_ref())),
        sets_cookie,
        |name, value| out.push((name, Cow::Owned(value.to_string()))),
    );
    out
}

/// The writes of [`protected_response`] over headers as the filter reads them (the host's header
/// map walked in place: names as bytes, nothing copied), each handed to `write` as it is found:
/// one pass over the headers, and on a response with one line or none of each managed header no
/// allocation at all (what the filter does on every protected response).
pub fn protected_response_each<'h>(
    headers: impl Iterator<Item = (&'h [u8], &'h [u8])>,
    sets_cookie: bool,
    mut write: impl FnMut(&'static str, &str),
) {
    let mut cc = Lines::default();
    let mut vary = Lines::default();
    // Per CDN header: how many lines, and whether all of them already forbid storing.
    let mut cdn = [(0usize, true); CDN_CACHE_HEADERS.len()];
    for (n, v) in headers {
        if !may_be_managed(n) {
            continue;
        }
        if n.eq_ignore_ascii_case(b"cache-control") {
            cc.add(v);
        } else if n.eq_ignore_ascii_case(b"vary") {
            vary.add(v);
        } else if let Some(i) = CDN_CACHE_HEADERS
            .iter()
            .position(|h| h.as_bytes().eq_ignore_ascii_case(n))
        {
            if let (Some((count, safe)), Some(name)) = (cdn.get_mut(i), CDN_CACHE_HEADERS.get(i)) {
                *count += 1;
                *safe &= cdn_no_store(name).is_some_and(|s| s.as_bytes() == v);
            }
        }
    }
    let cc_text = cc.text();
    if sets_cookie {
        if cc_text.as_deref() != Some(NO_STORE) || cc.count > 1 {
            write("cache-control", NO_STORE);
        }
    } else if let Some(v) = private_cache_control(cc_text.as_deref()) {
        write("cache-control", &v);
    } else if cc.count > 1 {
        // One line, so that a cache reading only the first sees `private` too.
        write("cache-control", cc_text.as_deref().unwrap_or_default());
    }
    if let Some(v) = vary_with(vary.text().as_deref(), "Cookie") {
        write("vary", &v);
    }
    // Slices zipped, not the arrays by value: built for size, that zip called a length function
    // for every element.
    for (name, &(count, safe)) in CDN_CACHE_HEADERS.iter().zip(cdn.iter()) {
        if count > 1 || (count == 1 && !safe) {
            write(name, cdn_no_store(name).unwrap_or(CDN_NO_STORE));
        }
    }
}

/// Bit `n` is set when `cache-control`, `vary` or one of [`CDN_CACHE_HEADERS`] has `n` bytes
/// (a test holds it to the lists).
const MANAGED_LENGTHS: u64 =
    1 << 4 | 1 << 12 | 1 << 13 | 1 << 15 | 1 << 17 | 1 << 20 | 1 << 24 | 1 << 25 | 1 << 28;

/// Whether a header called `name` may be one the policy manages: most response headers are told
/// apart by their length alone, without ten case-insensitive comparisons.
fn may_be_managed(name: &[u8]) -> bool {
    name.len() < 64 && MANAGED_LENGTHS & (1 << name.len()) != 0
}

/// The lines of one header name, read as the host gives them: a single line stays a borrowed
/// slice; only a second line makes a joined copy.
#[derive(Default)]
struct Lines<'h> {
    count: usize,
    first: &'h [u8],
    joined: Option<String>,
}

impl<'h> Lines<'h> {
    fn add(&mut self, value: &'h [u8]) {
        self.count += 1;
        if self.count == 1 {
            self.first = value;
            return;
        }
        let first = self.first;
        let joined = self
            .joined
            .get_or_insert_with(|| String::from_utf8_lossy(first).into_owned());
        joined.push_str(", ");
        joined.push_str(&String::from_utf8_lossy(value));
    }

    /// The lines joined with ", " (bad UTF-8 replaced); `None` when there are none.
    fn text(&self) -> Option<Cow<'_, str>> {
        match (self.count, &self.joined) {
            (0, _) => None,
            (_, Some(j)) => Some(Cow::Borrowed(j.as_str())),
            (_, None) => Some(String::from_utf8_lossy(self.first)),
        }
    }
}

/// `Vary` with `token` added (case-insensitive), or `None` when it is already there (or `*`).
pub fn vary_with(existing: Option<&str>, token: &'static str) -> Option<Cow<'static, str>> {
    match existing.map(str::trim).filter(|v| !v.is_empty()) {
        None => Some(Cow::Borrowed(token)),
        Some(v) => {
            let present = v
                .split(',')
                .map(str::trim)
                .any(|t| t == "*" || t.eq_ignore_ascii_case(token));
            if present {
                None
            } else {
                Some(Cow::Owned(format!("{v}, {token}")))
            }
        }
    }
}

/// Cache-Control for a protected response that sets no cookie: shared caches may not keep it
/// (`public` and `s-maxage` removed, `private` added), the browser's own cache may
/// (`max-age` and the other directives are kept). `None` when nothing changes.
pub fn private_cache_control(existing: Option<&str>) -> Option<Cow<'static, str>> {
    let Some(v) = existing.map(str::trim).filter(|v| !v.is_empty()) else {
        return Some(Cow::Borrowed("private"));
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
    changed.then(|| Cow::Owned(out.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn managed_lengths_match_the_managed_names() {
        let names = CDN_CACHE_HEADERS.iter().chain(&["cache-control", "vary"]);
        let want = names.fold(0u64, |m, n| m | 1 << n.len());
        assert_eq!(MANAGED_LENGTHS, want);
    }

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

    fn apply(headers: &mut Vec<(String, String)>, edits: &[(&str, Cow<str>)]) {
        for (name, value) in edits {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.to_string(), value.to_string()));
        }
    }

    fn get<'h>(headers: &'h [(String, String)], name: &str) -> Vec<&'h str> {
        headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    #[test]
    fn cdn_header_names() {
        for name in CDN_CACHE_HEADERS {
            assert_eq!(name, name.to_ascii_lowercase());
            assert!(cdn_no_store(name).is_some(), "{name}");
        }
        assert_eq!(cdn_no_store("CDN-Cache-Control"), Some(CDN_NO_STORE));
        assert_eq!(cdn_no_store("Surrogate-Control"), Some(CDN_NO_STORE));
        assert_eq!(cdn_no_store("Edge-Control"), Some(CDN_NO_STORE));
        assert_eq!(cdn_no_store("X-Accel-Expires"), Some("0"));
        for other in ["cache-control", "surrogate-key", "cdn-cache", "", "vary"] {
            assert_eq!(cdn_no_store(other), None, "{other}");
        }
    }

    #[test]
    fn protected_response_overwrites_every_cdn_header() {
        let long = "public, max-age=31536000";
        let mut headers: Vec<(String, String)> = vec![
            ("content-type".into(), "application/json".into()),
            (
                "cache-control".into(),
                "public, max-age=600, s-maxage=86400".into(),
            ),
            ("CDN-Cache-Control".into(), long.into()),
            ("cloudflare-cdn-cache-control".into(), long.into()),
            ("vercel-cdn-cache-control".into(), long.into()),
            ("netlify-cdn-cache-control".into(), long.into()),
            ("akamai-cache-control".into(), long.into()),
            ("surrogate-control".into(), "max-age=86400".into()),
            (
                "surrogate-control".into(),
                "stale-while-revalidate=60".into(),
            ),
            ("edge-control".into(), "!no-store, max-age=86400".into()),
            ("x-accel-expires".into(), "86400".into()),
        ];
        let edits = protected_response(&headers, false);
        apply(&mut headers, &edits);
        assert_eq!(get(&headers, "cache-control"), ["private, max-age=600"]);
        assert_eq!(get(&headers, "vary"), ["Cookie"]);
        for name in CDN_CACHE_HEADERS {
            let want = if name == "x-accel-expires" {
                "0"
            } else {
                CDN_NO_STORE
            };
            assert_eq!(get(&headers, name), [want], "{name}");
        }
        assert_eq!(get(&headers, "content-type"), ["application/json"]);
        // Applied once, nothing is left to change.
        assert!(protected_response(&headers, false).is_empty());
    }

    #[test]
    fn protected_response_with_a_cookie_is_no_store() {
        let mut headers: Vec<(String, String)> = vec![
            ("cache-control".into(), "max-age=60".into()),
            ("vary".into(), "Accept-Encoding".into()),
            ("cdn-cache-control".into(), "max-age=3600".into()),
        ];
        let edits = protected_response(&headers, true);
        apply(&mut headers, &edits);
        assert_eq!(get(&headers, "cache-control"), [NO_STORE]);
        assert_eq!(get(&headers, "vary"), ["Accept-Encoding, Cookie"]);
        assert_eq!(get(&headers, "cdn-cache-control"), [CDN_NO_STORE]);
        assert!(protected_response(&headers, true).is_empty());
    }

    #[test]
    fn protected_response_adds_no_cdn_header_that_is_absent() {
        let headers: Vec<(String, String)> = vec![
            ("cache-control".into(), "private, max-age=5".into()),
            ("vary".into(), "Cookie".into()),
        ];
        assert!(protected_response(&headers, false).is_empty());
        let none: Vec<(String, String)> = Vec::new();
        assert_eq!(
            protected_response(&none, false),
            [
                ("cache-control", Cow::from("private")),
                ("vary", Cow::from("Cookie"))
            ]
        );
        // Several Cache-Control lines become one, so a cache reading the first sees `private`.
        let split: Vec<(String, String)> = vec![
            ("cache-control".into(), "max-age=5".into()),
            ("cache-control".into(), "private".into()),
            ("vary".into(), "cookie".into()),
        ];
        assert_eq!(
            protected_response(&split, false),
            [("cache-control", Cow::from("max-age=5, private"))]
        );
    }
}
