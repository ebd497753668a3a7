//! `PathPolicy::is_protected` with and without `case_insensitive_prefixes`, on a path and
//! prefixes from the input (fixed `/api/` + `/api/public/`, or arbitrary ones).
//!
//! Invariants: the option only ever protects more (never fewer) paths; with it, the answer is
//! the same for any ASCII case of the path when no public prefix is set; it agrees with a
//! reference that lower-cases the path as sent and its normalized form (`path::normalize`)
//! and the protected prefixes; public prefixes stay case-sensitive (a path is public under
//! the option exactly when it is without it).
#![no_main]

use edge_token_relay::http::path::{normalize, strip_query, PathPolicy};
use edge_token_relay_fuzz::{arbitrary::Unstructured, flag, pick, text};
use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "/api/", "/API/", "/Api/", "/api/public/", "/API/PUBLIC/", "/%41PI/", "/%2e%2e/", "/../", "//",
    "/;x/", ";", "\\", "%", "?", "#", "admin", "/x", "\u{212a}", "\u{e9}",
];

fn policy(u: &mut Unstructured<'_>, fold: bool) -> PathPolicy {
    if flag(u) {
        let n = 1 + pick(u, 3);
        let protected = (0..n).map(|_| format!("/{}", text(u))).collect();
        let public = (0..pick(u, 3)).map(|_| format!("/{}", text(u))).collect();
        PathPolicy { protected, public, case_insensitive: fold }
    } else {
        PathPolicy {
            protected: vec!["/api/".into(), "/Admin".into()],
            public: vec!["/api/public/".into()],
            case_insensitive: fold,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let on = policy(u, true);
    let off = PathPolicy { case_insensitive: false, ..on.clone() };
    let path = if flag(u) {
        text(u)
    } else {
        (0..pick(u, 8)).map(|_| PATHS[pick(u, PATHS.len())]).collect::<String>() + &text(u)
    };

    let with = on.is_protected(&path);
    let without = off.is_protected(&path);
    assert!(with || !without, "the option unprotected {path:?}");

    // Reference: lower-case both forms of the path and the protected prefixes.
    let raw = strip_query(&path);
    let norm = normalize(raw);
    let lower = |s: &str| s.to_ascii_lowercase();
    let under = |p: &str, list: &[String], fold: bool| {
        list.iter().any(|x| if fold { lower(p).starts_with(&lower(x)) } else { p.starts_with(x.as_str()) })
    };
    let protected_ref = under(raw, &on.protected, true) || under(&norm, &on.protected, true);
    let public_ref = under(raw, &on.public, false) && under(&norm, &on.public, false);
    assert_eq!(with, protected_ref && !public_ref, "{path:?}");

    // Public prefixes are case-sensitive either way: a path is public under the option
    // exactly when it is without it (public = under a protected prefix and not protected).
    if under(raw, &on.protected, false) || under(&norm, &on.protected, false) {
        assert_eq!(with, without, "{path:?}");
    }

    if on.public.is_empty() {
        let upper = PathPolicy { public: Vec::new(), ..on.clone() };
        assert_eq!(upper.is_protected(&path.to_ascii_uppercase()), with, "{path:?}");
        assert_eq!(upper.is_protected(&path.to_ascii_lowercase()), with, "{path:?}");
    }
});
