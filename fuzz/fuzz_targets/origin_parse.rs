//! The URL and origin parsers of `http::url`: `Origin::parse`, its normalized `Display` and
//! `matches`, `referer_origin`, `parse_config_url`, `check_path`. Input: two strings (raw, or
//! assembled from scheme, host, port and tail pieces in odd cases and spellings).
//!
//! Invariants: normalization is idempotent (the normalized form parses to itself) and lower
//! case; `a.matches(n)` is true exactly when `n` is the normalized form of an origin equal to
//! `a`; `referer_origin` is a prefix of its input ending before any `/`, `?` or `#` of the
//! authority; an accepted configuration URL is `https` (or `http` on loopback), has no
//! userinfo or fragment and reassembles to its input.
#![no_main]

use edge_token_relay::http::url::{check_path, is_loopback, parse_config_url, referer_origin, Origin};
use edge_token_relay_fuzz::{arbitrary::Unstructured, flag, pick, text};
use libfuzzer_sys::fuzz_target;

const SCHEMES: &[&str] = &["https://", "http://", "HTTPS://", "HtTp://", "ftp://", "https:/", ""];
const HOSTS: &[&str] = &[
    "app.example.com", "APP.Example.COM", "localhost", "127.0.0.1", "[::1]", "[2001:db8::1]",
    "[::1", "", "a_b", "xn--bcher-kva.example", "ex ample", "user@host", "null",
];
const PORTS: &[&str] = &["", ":443", ":80", ":8443", ":0", ":65535", ":65536", ":", ":1x", ":00443"];
const TAILS: &[&str] = &["", "/", "/path?q=1", "?x", "#f", "/a#b", "@evil", "\\x"];

fn one(u: &mut Unstructured<'_>) -> String {
    if pick(u, 4) == 0 {
        return text(u);
    }
    let mut s = String::new();
    s.push_str(SCHEMES[pick(u, SCHEMES.len())]);
    if flag(u) {
        s.push_str(HOSTS[pick(u, HOSTS.len())]);
    } else {
        s.push_str(&text(u));
    }
    s.push_str(PORTS[pick(u, PORTS.len())]);
    s.push_str(TAILS[pick(u, TAILS.len())]);
    s
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let a = one(u);
    let b = one(u);

    let pa = Origin::parse(&a);
    let pb = Origin::parse(&b);
    for (s, p) in [(&a, &pa), (&b, &pb)] {
        let Ok(o) = p else { continue };
        let norm = o.to_string();
        assert_eq!(norm, norm.to_ascii_lowercase());
        let again = Origin::parse(&norm).unwrap_or_else(|e| panic!("{s:?} -> {norm:?}: {e}"));
        assert_eq!(again.to_string(), norm, "normalization is not idempotent for {s:?}");
        assert!(o.matches(&norm), "{s:?} does not match its own form {norm:?}");
        assert!(again.matches(&norm));
    }
    if let (Ok(oa), Ok(ob)) = (&pa, &pb) {
        let (na, nb) = (oa.to_string(), ob.to_string());
        assert_eq!(oa.matches(&nb), na == nb, "{a:?} vs {b:?}");
        assert_eq!(ob.matches(&na), na == nb, "{b:?} vs {a:?}");
    }
    // `matches` against any string at all (not only normalized ones) must not panic, and
    // agrees with the normalized form when that string is one.
    if let Ok(oa) = &pa {
        let m = oa.matches(&b);
        if let Ok(ob) = &pb {
            if ob.to_string() == b {
                assert_eq!(m, oa.to_string() == b);
            }
        }
    }

    for s in [&a, &b] {
        if let Some(o) = referer_origin(s) {
            assert!(s.starts_with(o));
            let i = o.find("://").expect("has ://");
            let authority = &o[i + 3..];
            assert!(!authority.contains(['/', '?', '#']), "{s:?} -> {o:?}");
            let rest = &s[o.len()..];
            assert!(rest.is_empty() || rest.starts_with(['/', '?', '#']), "{s:?} -> {o:?}");
        } else {
            assert!(!s.contains("://"));
        }

        if let Ok(url) = parse_config_url(s) {
            assert!(url.scheme == "https" || url.scheme == "http");
            assert!(!url.authority.is_empty() && !url.authority.contains('@'));
            assert!(!url.path.contains(['#', '?']));
            assert!(url.query.is_none_or(|q| !q.contains('#')));
            let mut whole = format!("{}://{}{}", url.scheme, url.authority, url.path);
            if let Some(q) = url.query {
                whole.push('?');
                whole.push_str(q);
            }
            assert_eq!(&whole, s);
            if url.scheme == "http" {
                let host = url.authority.rsplit_once(':').map_or(url.authority, |(h, _)| h);
                let host = host.trim_start_matches('[').trim_end_matches(']');
                assert!(
                    is_loopback(host) || url.authority.starts_with("[::1]"),
                    "http for a non-loopback host: {s:?}"
                );
            }
        }

        if check_path(s).is_ok() {
            assert!(s.starts_with('/') && !s.starts_with("//"));
            assert!(s.bytes().all(|c| (0x21..=0x7e).contains(&c) && !matches!(c, b'?' | b'#' | b'\\')));
        }
    }
});
