//! `cache_policy::protected_response`: the writes that keep a protected response out of shared
//! caches and CDNs, on a header list from the input (Cache-Control, Vary and the CDN headers
//! in any case, repeated, with any values, among other headers), with and without a cookie.
//!
//! Invariants, after applying the writes: one Cache-Control line, with `private` or `no-store`
//! and without `public` or `s-maxage` (exactly `private, no-store` when a cookie is set);
//! `Vary` names `Cookie` (or `*`); every CDN header present is one line that forbids storing
//! and none is added; every other header is untouched; a second call asks for nothing;
//! written names are lower-case, and values carry no control character the input did not.
#![no_main]

use std::borrow::Cow;

use edge_token_relay::http::cache_policy::{cdn_no_store, protected_response, CDN_CACHE_HEADERS, NO_STORE};
use edge_token_relay_fuzz::{arbitrary::Unstructured, flag, pick, text};
use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "cache-control", "Cache-Control", "vary", "VARY", "content-type", "set-cookie", "expires",
    "surrogate-key", "cdn-cache",
];
const VALUES: &[&str] = &[
    "public, max-age=31536000", "s-maxage=600", "private", "no-store", "no-store, max-age=0",
    "max-age=0", "0", "86400", "!no-store, max-age=86400", "*", "Cookie", "accept-encoding",
    "PUBLIC", " public ", "private=\"x, public\"", "", ",,",
];

fn apply(headers: &mut Vec<(String, Vec<u8>)>, edits: &[(&str, Cow<str>)]) {
    for (name, value) in edits {
        headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        headers.push((name.to_string(), value.as_bytes().to_vec()));
    }
}

fn lines<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Vec<&'h [u8]> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_slice())
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let sets_cookie = flag(u);
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    for _ in 0..pick(u, 12) {
        let name = match pick(u, 3) {
            0 => NAMES[pick(u, NAMES.len())].to_owned(),
            1 => {
                let n = CDN_CACHE_HEADERS[pick(u, CDN_CACHE_HEADERS.len())];
                if flag(u) { n.to_ascii_uppercase() } else { n.to_owned() }
            }
            _ => text(u),
        };
        let value = if flag(u) {
            VALUES[pick(u, VALUES.len())].as_bytes().to_vec()
        } else {
            text(u).into_bytes()
        };
        headers.push((name, value));
    }
    let before = headers.clone();
    let input_has_control = before.iter().any(|(_, v)| v.iter().any(u8::is_ascii_control));

    let edits = protected_response(&headers, sets_cookie);
    for (name, value) in &edits {
        assert_eq!(*name, name.to_ascii_lowercase());
        if !input_has_control {
            assert!(!value.bytes().any(|b| b.is_ascii_control()), "{name}: {value:?}");
        }
    }
    apply(&mut headers, &edits);

    let cc = lines(&headers, "cache-control");
    assert_eq!(cc.len(), 1, "{before:?}");
    let cc = String::from_utf8_lossy(cc[0]).into_owned();
    if sets_cookie {
        assert_eq!(cc, NO_STORE);
    }
    let names: Vec<String> = cc
        .split(',')
        .map(|d| d.split('=').next().unwrap_or("").trim().to_ascii_lowercase())
        .collect();
    assert!(names.iter().any(|n| n == "private" || n == "no-store"), "{cc:?}");
    assert!(!names.iter().any(|n| n == "public" || n == "s-maxage"), "{cc:?}");

    let vary: Vec<String> = lines(&headers, "vary")
        .iter()
        .flat_map(|v| String::from_utf8_lossy(v).split(',').map(|t| t.trim().to_ascii_lowercase()).collect::<Vec<_>>())
        .collect();
    assert!(vary.iter().any(|t| t == "cookie" || t == "*"), "{vary:?}");

    for name in CDN_CACHE_HEADERS {
        let present = lines(&before, name).len();
        let after = lines(&headers, name);
        if present == 0 {
            assert!(after.is_empty(), "{name} added");
        } else {
            assert_eq!(after.len(), 1, "{name}");
            assert_eq!(Some(after[0]), cdn_no_store(name).map(str::as_bytes), "{name}");
        }
    }
    for (n, v) in &before {
        let managed = n.eq_ignore_ascii_case("cache-control")
            || n.eq_ignore_ascii_case("vary")
            || cdn_no_store(n).is_some();
        if !managed {
            assert!(headers.iter().any(|(m, w)| m == n && w == v), "{n} changed");
        }
    }
    assert!(protected_response(&headers, sets_cookie).is_empty(), "not idempotent: {headers:?}");
});
