//! `url::check_return_to` and `safe_return_to`: the page a login returns to. The input is the
//! raw `return_to` value (lossy UTF-8), or one built from pieces that try to leave the origin
//! (`//`, `\`, schemes, encoded slashes and controls, up to four rounds of percent-encoding).
//!
//! Invariants: an accepted value is a same-origin relative path (one leading `/`, then neither
//! `/` nor `\`), printable ASCII only, at most 2048 bytes; none of its first three
//! percent-decodings starts with `//` or `/\` or holds a control character; checking it again
//! gives itself (idempotent); `safe_return_to` is the accepted value or `/`.
#![no_main]

use edge_token_relay::http::url::{
    check_return_to, percent_decode_bytes, query_encode, safe_return_to, MAX_RETURN_TO_LEN,
};
use edge_token_relay_fuzz::{arbitrary::Unstructured, pick, text};
use libfuzzer_sys::fuzz_target;

const PIECES: &[&str] = &[
    "/", "//", "\\", "/\\", "evil.example", "https:", "javascript:", "%2f", "%2F", "%5c", "%09",
    "%0a", "%00", "%25", ".", "..", "?", "#", "@", " ", "\t", "é", "%", "%e2%80%ae", "a",
];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let raw = if pick(u, 2) == 0 {
        String::from_utf8_lossy(data).into_owned()
    } else {
        let mut s = String::new();
        for _ in 0..pick(u, 12) {
            match pick(u, 4) {
                3 => s.push_str(&text(u)),
                _ => s.push_str(PIECES[pick(u, PIECES.len())]),
            }
        }
        for _ in 0..pick(u, 5) {
            s = query_encode(&s);
        }
        s
    };

    let checked = check_return_to(&raw);
    assert_eq!(
        safe_return_to(&raw),
        checked.clone().unwrap_or_else(|| "/".to_owned())
    );
    let Some(out) = checked else {
        return;
    };
    // A same-origin relative path: resolved against any origin, it stays on that origin.
    let b = out.as_bytes();
    assert_eq!(b.first(), Some(&b'/'), "{out:?}");
    assert!(!matches!(b.get(1), Some(b'/' | b'\\')), "{out:?}");
    assert!(b.iter().all(|c| (0x21..=0x7e).contains(c)), "not printable ASCII: {out:?}");
    assert!(!out.contains('\\'), "{out:?}");
    assert!(out.len() <= MAX_RETURN_TO_LEN);
    // Decoded up to three times (servers and frameworks that decode again), still a path here.
    let mut current = b.to_vec();
    for _ in 0..3 {
        current = percent_decode_bytes(&current);
        assert!(
            !current.starts_with(b"//") && !current.starts_with(b"/\\"),
            "{out:?} decodes to {:?}",
            String::from_utf8_lossy(&current)
        );
        assert!(!current.iter().any(u8::is_ascii_control), "{out:?}");
    }
    // Idempotent: what was accepted is accepted as it is.
    assert_eq!(check_return_to(&out).as_deref(), Some(out.as_str()));
});
