//! Cookie header parsing (tolerant, RFC 6265 §5.4 style) and Set-Cookie building.
//!
//! Parsing never fails: pairs without `=` and empty names are skipped, surrounding whitespace is
//! trimmed, a value wrapped in double quotes is unwrapped. The first occurrence of a name wins
//! (browsers send the most specific path first).

use std::cell::Cell;

use crate::bytes;

/// One pass over a Cookie header's bytes: the values of up to `N` wanted cookies, the header
/// with those cookies removed (`None` when nothing else remains), and whether it is all ASCII.
pub struct Scan<'a, const N: usize> {
    pub values: [Option<&'a [u8]>; N],
    /// `true` when any wanted cookie (even with an empty or duplicate value) was present.
    pub any_found: bool,
    /// Every byte of the header is ASCII: it is UTF-8 without another look at it.
    pub ascii: bool,
    remainder: Vec<&'a [u8]>,
}

impl<'a, const N: usize> Scan<'a, N> {
    /// The Cookie header without the wanted cookies, or `None` when nothing is left (bytes that
    /// are not UTF-8 replaced, as [`String::from_utf8_lossy`] does).
    pub fn remainder(&self) -> Option<String> {
        if self.remainder.is_empty() {
            return None;
        }
        let joined = self.remainder.join(&b"; "[..]);
        Some(
            String::from_utf8(joined)
                .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()),
        )
    }
}

/// Splits a Cookie header into `(name, value)` pairs.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    // `parts` cuts only at ASCII bytes, so every piece of a `str` is UTF-8 again.
    parts(header.as_bytes(), || {}).filter_map(|(_, pair)| {
        let (name, value) = pair?;
        if name.is_empty() {
            return None;
        }
        Some((
            std::str::from_utf8(name).ok()?,
            std::str::from_utf8(value).ok()?,
        ))
    })
}

/// Looks up the first cookie called `name`.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    pairs(header).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Finds the `wanted` cookies and collects every other pair (as sent) for the remainder.
/// Cookies for which `also_drop(name)` holds (session chunks, login flow cookies) are left out
/// of the remainder too. The same reading as [`pairs`], over bytes: the header need not be
/// checked as UTF-8 first (see [`Scan::ascii`]).
pub fn scan<'a, const N: usize>(
    header: &'a [u8],
    wanted: [&str; N],
    also_drop: impl Fn(&str) -> bool,
) -> Scan<'a, N> {
    let mut values = [None; N];
    let mut remainder = Vec::new();
    let mut any_found = false;
    let non_ascii = Cell::new(false);
    for (part, pair) in parts(header, || non_ascii.set(true)) {
        let Some((name, value)) = pair else {
            remainder.push(part);
            continue;
        };
        match wanted.iter().position(|w| bytes::same(w.as_bytes(), name)) {
            Some(i) => {
                any_found = true;
                if let Some(slot) = values.get_mut(i) {
                    if slot.is_none() {
                        *slot = Some(value);
                    }
                }
            }
            None if std::str::from_utf8(name).is_ok_and(&also_drop) => any_found = true,
            None => remainder.push(part),
        }
    }
    Scan {
        values,
        any_found,
        ascii: !non_ascii.get(),
        remainder,
    }
}

/// A part of a Cookie header as sent, and its name and value when it has a `=`.
type Part<'t> = (&'t [u8], Option<(&'t [u8], &'t [u8])>);

/// The parts of a Cookie header between `;`s, without their surrounding spaces and tabs (empty
/// ones skipped), each as sent and, when it has a `=`, as its name and value (both trimmed, the
/// value unwrapped from double quotes). Parsing never fails: what [`pairs`] and [`scan`] read.
/// `on_non_ascii` is called when the header holds a byte that is not ASCII.
fn parts(header: &[u8], on_non_ascii: impl Fn()) -> impl Iterator<Item = Part<'_>> {
    split_at_semicolons(header, on_non_ascii)
        .map(trim_ws)
        .filter(|part| !part.is_empty())
        .map(|part| {
            let pair = part.iter().position(|&b| b == b'=').and_then(|at| {
                let (name, value) = (part.get(..at)?, part.get(at + 1..)?);
                Some((trim_ws(name), unquote(trim_ws(value))))
            });
            (part, pair)
        })
}

/// The parts of `text` between `;`s, as `split(|b| *b == b';')` gives them, found a word at a
/// time ([`bytes::position`]): a Cookie header is mostly one ~700-byte token, and `split`'s
/// search reads a byte at a time. The same pass stands in for a UTF-8 check: a word with a byte
/// that is not ASCII is read byte by byte, which calls `on_non_ascii`; a word without one and
/// without `;` is passed over whole.
fn split_at_semicolons(text: &[u8], on_non_ascii: impl Fn()) -> impl Iterator<Item = &[u8]> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let now = rest?;
        let semicolon = bytes::position(
            now,
            |w| bytes::has_byte(w, b';') || w & bytes::HIGHS != 0,
            |b| {
                if !b.is_ascii() {
                    on_non_ascii();
                }
                b == b';'
            },
        );
        match semicolon {
            Some(at) => {
                rest = now.get(at + 1..);
                now.get(..at)
            }
            None => rest.take(),
        }
    })
}

/// Whether `name` is `<base>.<decimal index>`.
pub fn is_chunk_of(name: &str, base: &str) -> bool {
    !base.is_empty()
        && name
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|idx| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()))
}

/// `bytes` without leading and trailing spaces and tabs.
fn trim_ws(bytes: &[u8]) -> &[u8] {
    let is_ws = |b: &u8| *b == b' ' || *b == b'\t';
    let start = bytes.iter().position(|b| !is_ws(b)).unwrap_or(bytes.len());
    let end = bytes
        .iter()
        .rposition(|b| !is_ws(b))
        .map_or(start, |i| i + 1);
    bytes.get(start..end).unwrap_or_default()
}

/// `v` without one pair of surrounding double quotes.
fn unquote(v: &[u8]) -> &[u8] {
    match v {
        [b'"', inner @ .., b'"'] => inner,
        _ => v,
    }
}

/// Whether `name` is an RFC 6265 cookie-name (an RFC 7230 token).
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.bytes().all(|b| {
            b.is_ascii_alphanumeric()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether `value` may be sent as a cookie-value without quoting (RFC 6265 cookie-octet).
pub fn is_valid_value(value: &str) -> bool {
    value
        .bytes()
        .all(|b| matches!(b, 0x21 | 0x23..=0x2B | 0x2D..=0x3A | 0x3C..=0x5B | 0x5D..=0x7E))
}

/// SameSite attribute of the cookies the filter sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SameSite {
    Strict,
    Lax,
    None,
}

impl SameSite {
    pub fn parse(s: &str) -> Option<SameSite> {
        match s {
            "Strict" => Some(SameSite::Strict),
            "Lax" => Some(SameSite::Lax),
            "None" => Some(SameSite::None),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SameSite::Strict => "Strict",
            SameSite::Lax => "Lax",
            SameSite::None => "None",
        }
    }
}

/// Attributes shared by every cookie the filter sets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieAttrs {
    pub path: String,
    pub same_site: SameSite,
    pub secure: bool,
}

/// Builds a Set-Cookie value. `http_only` is false only for the double-submit CSRF cookie.
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: Option<u64>,
    attrs: &CookieAttrs,
    same_site: SameSite,
    http_only: bool,
) -> String {
    let mut out = String::with_capacity(name.len() + value.len() + 80);
    out.push_str(name);
    out.push('=');
    out.push_str(value);
    out.push_str("; Path=");
    out.push_str(&attrs.path);
    if let Some(max_age) = max_age {
        out.push_str("; Max-Age=");
        out.push_str(&max_age.to_string());
    }
    if http_only {
        out.push_str("; HttpOnly");
    }
    if attrs.secure {
        out.push_str("; Secure");
    }
    out.push_str("; SameSite=");
    out.push_str(same_site.as_str());
    out
}

/// A Set-Cookie value that deletes `name` (empty value, Max-Age=0).
pub fn clear_cookie(name: &str, attrs: &CookieAttrs) -> String {
    set_cookie(name, "", Some(0), attrs, attrs.same_site, true)
}

/// Most bytes of one cookie's value; browsers drop cookies over about 4096 bytes in all.
pub const CHUNK_LIMIT: usize = 4000;
/// Most chunks [`read_chunked`] joins.
pub const MAX_CHUNKS: usize = 16;

/// The Set-Cookie `(name, value)` pairs for `value`: `name` itself when the value fits in
/// [`CHUNK_LIMIT`] bytes, else `<name>.0`, `<name>.1`, … of at most [`CHUNK_LIMIT`] bytes each
/// (split on character boundaries; sealed values are ASCII). The caller clears the
/// [`stale_chunks`] alongside.
///
/// A value needing more than [`MAX_CHUNKS`] chunks is still split, but [`read_chunked`] will
/// not read it back.
pub fn chunk(name: &str, value: &str) -> Vec<(String, String)> {
    if value.len() <= CHUNK_LIMIT {
        return vec![(name.to_owned(), value.to_owned())];
    }
    let mut out = Vec::with_capacity(value.len().div_ceil(CHUNK_LIMIT));
    let mut rest = value;
    while !rest.is_empty() {
        let mut end = CHUNK_LIMIT.min(rest.len());
        while end > 0 && !rest.is_char_boundary(end) {
            end -= 1;
        }
        let Some((piece, tail)) = rest.split_at_checked(end) else {
            break;
        };
        if piece.is_empty() {
            break;
        }
        out.push((format!("{name}.{}", out.len()), piece.to_owned()));
        rest = tail;
    }
    out
}

/// Reads a possibly chunked cookie from a Cookie header: `name` itself when present, else
/// `<name>.0`, `<name>.1`, … joined up to the first missing index. `None` when neither `name`
/// nor `<name>.0` is present, or when more than [`MAX_CHUNKS`] consecutive chunks are.
/// As with [`find`], the first occurrence of a name wins.
pub fn read_chunked(cookie_header: &str, name: &str) -> Option<String> {
    let mut plain: Option<&str> = None;
    let mut chunks: [Option<&str>; MAX_CHUNKS + 1] = [None; MAX_CHUNKS + 1];
    for (n, v) in pairs(cookie_header) {
        if n == name {
            if plain.is_none() {
                plain = Some(v);
            }
        } else if let Some(slot) = chunk_index(n, name).and_then(|i| chunks.get_mut(i)) {
            if slot.is_none() {
                *slot = Some(v);
            }
        }
    }
    if let Some(v) = plain {
        return Some(v.to_owned());
    }
    let present: Vec<&str> = chunks.iter().map_while(|c| *c).collect();
    if present.is_empty() || present.len() > MAX_CHUNKS {
        return None;
    }
    Some(present.concat())
}

/// Names of cookies in the request that writing `written` (from [`chunk`]) leaves stale, to be
/// cleared with `Max-Age=0`: `name` and every `<name>.<index>` present but not being written,
/// in order of appearance, each once. With `written` empty, every piece of the cookie present
/// (for a logout).
pub fn stale_chunks(cookie_header: &str, name: &str, written: &[(String, String)]) -> Vec<String> {
    let mut stale: Vec<String> = Vec::new();
    for (n, _) in pairs(cookie_header) {
        let ours = n == name || chunk_index(n, name).is_some();
        if ours && !written.iter().any(|(w, _)| w == n) && !stale.iter().any(|s| s == n) {
            stale.push(n.to_owned());
        }
    }
    stale
}

/// The index `i` when `cookie_name` is `<name>.<i>` with `i` in canonical decimal (no sign, no
/// leading zeros).
fn chunk_index(cookie_name: &str, name: &str) -> Option<usize> {
    let digits = cookie_name.strip_prefix(name)?.strip_prefix('.')?;
    let canonical = !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && (digits == "0" || !digits.starts_with('0'));
    if !canonical {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cookie_among_others() {
        let h = "a=1; __Host-relay-at=tok.en.sig; b=2";
        assert_eq!(find(h, "__Host-relay-at"), Some("tok.en.sig"));
        assert_eq!(find(h, "a"), Some("1"));
        assert_eq!(find(h, "c"), None);
    }

    #[test]
    fn tolerant_parsing() {
        let cases: &[(&str, &str, Option<&str>)] = &[
            ("x=1", "x", Some("1")),
            ("  x = 1 ;", "x", Some("1")),
            ("x=\"quoted\"", "x", Some("quoted")),
            ("x=", "x", Some("")),
            ("=v; x=2", "x", Some("2")),
            ("novalue; x=3", "x", Some("3")),
            ("x=1; x=2", "x", Some("1")),
            ("x=a=b", "x", Some("a=b")),
            (";;;", "x", None),
            ("", "x", None),
            ("\tx=9\t", "x", Some("9")),
            ("x=\"", "x", Some("\"")),
        ];
        for (h, n, want) in cases {
            assert_eq!(find(h, n), *want, "header {h:?}");
        }
    }

    /// A scan's values as text.
    fn texts<'a, const N: usize>(s: &Scan<'a, N>) -> [Option<&'a str>; N] {
        s.values.map(|v| v.map(|v| std::str::from_utf8(v).unwrap()))
    }

    #[test]
    fn scan_collects_remainder() {
        let s = scan(
            b"a=1; at=T; b=2; s=S; flag; s.0=x; s.1=y; s.x=z",
            ["at", "s", "c"],
            |n| is_chunk_of(n, "s"),
        );
        assert_eq!(texts(&s), [Some("T"), Some("S"), None]);
        assert!(s.ascii);
        assert!(s.any_found);
        assert_eq!(s.remainder().as_deref(), Some("a=1; b=2; flag; s.x=z"));
    }

    #[test]
    fn scan_remainder_none_when_only_relay_cookies() {
        let s = scan(b"at=T;s=S", ["at", "s"], |_| false);
        assert_eq!(s.remainder(), None);
        let s = scan(b"a=1", ["at"], |_| false);
        assert!(!s.any_found);
        assert_eq!(texts(&s), [None]);
        assert_eq!(s.remainder().as_deref(), Some("a=1"));
    }

    #[test]
    fn duplicate_wanted_cookie_is_removed_first_wins() {
        let s = scan(b"at=1; at=2; x=y", ["at"], |_| false);
        assert_eq!(texts(&s), [Some("1")]);
        assert_eq!(s.remainder().as_deref(), Some("x=y"));
    }

    #[test]
    fn names_and_values() {
        assert!(is_valid_name("__Host-relay-at"));
        assert!(!is_valid_name("a b"));
        assert!(!is_valid_name("a=b"));
        assert!(!is_valid_name(""));
        assert!(is_valid_value("eyJ.abc-_"));
        assert!(!is_valid_value("a;b"));
        assert!(!is_valid_value("a b"));
    }

    #[test]
    fn builds_set_cookie() {
        let attrs = CookieAttrs {
            path: "/".into(),
            same_site: SameSite::Strict,
            secure: true,
        };
        assert_eq!(
            set_cookie("n", "v", Some(60), &attrs, attrs.same_site, true),
            "n=v; Path=/; Max-Age=60; HttpOnly; Secure; SameSite=Strict"
        );
        assert_eq!(
            clear_cookie("n", &attrs),
            "n=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Strict"
        );
    }

    mod props {
        use super::super::*;
        use super::texts;
        use proptest::prelude::*;

        fn name() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_\\-]{1,12}"
        }
        fn value() -> impl Strategy<Value = String> {
            "[A-Za-z0-9._\\-]{0,40}"
        }

        proptest! {
            #[test]
            fn never_panics(h in "\\PC*") {
                let _ = find(&h, "x");
                let s = scan(h.as_bytes(), ["x", "y"], |n| is_chunk_of(n, "y"));
                let _ = s.remainder();
            }

            #[test]
            fn scan_reads_as_find_does(h in "[xy=; \"\t\u{e9}a]{0,40}") {
                let s = scan(h.as_bytes(), ["x", "y"], |_| false);
                prop_assert_eq!(texts(&s), [find(&h, "x"), find(&h, "y")]);
                prop_assert_eq!(s.ascii, h.is_ascii());
            }

            #[test]
            fn scan_of_any_bytes(h in proptest::collection::vec(any::<u8>(), 0..60)) {
                let s = scan(&h, ["x", "y"], |_| false);
                prop_assert_eq!(s.ascii, h.is_ascii());
                let _ = s.remainder();
            }

            #[test]
            fn round_trip(cookies in proptest::collection::vec((name(), value()), 0..20)) {
                let header = cookies.iter().map(|(n, v)| format!("{n}={v}")).collect::<Vec<_>>().join("; ");
                for (n, _) in &cookies {
                    let first = cookies.iter().find(|(m, _)| m == n).map(|(_, v)| v.as_str());
                    prop_assert_eq!(find(&header, n), first);
                }
                // Removing a name keeps every other pair, in order.
                if let Some((victim, _)) = cookies.first() {
                    let s = scan(header.as_bytes(), [victim.as_str()], |_| false);
                    let kept: Vec<String> = cookies.iter().filter(|(n, _)| n != victim).map(|(n, v)| format!("{n}={v}")).collect();
                    prop_assert_eq!(s.remainder(), if kept.is_empty() { None } else { Some(kept.join("; ")) });
                }
            }
        }
    }

    // ---- chunking ----

    fn header_of(pairs: &[(String, String)]) -> String {
        pairs
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    fn names(pairs: &[(String, String)]) -> Vec<&str> {
        pairs.iter().map(|(n, _)| n.as_str()).collect()
    }

    #[test]
    fn chunks_a_large_value() {
        let value: String = (0..10_000)
            .map(|i| char::from(b'a' + (i % 26) as u8))
            .collect();
        let pairs = chunk("s", &value);
        assert_eq!(names(&pairs), ["s.0", "s.1", "s.2"]);
        assert!(pairs.iter().all(|(_, v)| v.len() <= CHUNK_LIMIT));
        let header = format!("other=1; {}; x=2", header_of(&pairs));
        assert_eq!(read_chunked(&header, "s").as_deref(), Some(value.as_str()));
        // Order in the header does not matter.
        let reversed: Vec<_> = pairs.iter().rev().cloned().collect();
        assert_eq!(
            read_chunked(&header_of(&reversed), "s").as_deref(),
            Some(value.as_str())
        );
    }

    #[test]
    fn chunk_boundaries() {
        let exact = "a".repeat(CHUNK_LIMIT);
        assert_eq!(chunk("s", &exact), vec![("s".to_owned(), exact.clone())]);
        let over = "a".repeat(CHUNK_LIMIT + 1);
        let pairs = chunk("s", &over);
        assert_eq!(names(&pairs), ["s.0", "s.1"]);
        assert_eq!(pairs[1].1, "a");
        assert_eq!(chunk("s", ""), vec![("s".to_owned(), String::new())]);
        // Multi-byte characters are never split.
        let wide = "é".repeat(CHUNK_LIMIT); // 2 bytes each
        let pairs = chunk("s", &wide);
        assert!(pairs.iter().all(|(_, v)| v.len() <= CHUNK_LIMIT));
        assert_eq!(
            pairs.iter().map(|(_, v)| v.as_str()).collect::<String>(),
            wide
        );
        let odd = format!("a{}", "😀".repeat(2000));
        let pairs = chunk("s", &odd);
        assert!(pairs
            .iter()
            .all(|(_, v)| v.len() <= CHUNK_LIMIT && !v.is_empty()));
        assert_eq!(
            pairs.iter().map(|(_, v)| v.as_str()).collect::<String>(),
            odd
        );
    }

    #[test]
    fn read_chunked_rules() {
        let cases: &[(&str, Option<&str>)] = &[
            ("", None),
            ("a=1", None),
            ("s=plain", Some("plain")),
            ("s=plain; s.0=x; s.1=y", Some("plain")),
            ("s.0=x; s=plain", Some("plain")),
            ("s=", Some("")),
            ("s=first; s=second", Some("first")),
            ("s.0=x; s.1=y", Some("xy")),
            ("s.0=x; s.2=z", Some("x")),
            ("s.1=y; s.2=z", None),
            ("s.0=x; s.0=dup; s.1=y", Some("xy")),
            ("s.0=x; s.01=no; s.1=y", Some("xy")),
            ("s.00=no", None),
            ("s.+0=no", None),
            ("s.=no", None),
            ("sx.0=no", None),
            ("s.0.0=no", None),
            ("s.0=\"q\"; s.1=r", Some("qr")),
            ("s.0=a; s.99999999999999999999999=b", Some("a")),
        ];
        for (h, want) in cases {
            assert_eq!(read_chunked(h, "s").as_deref(), *want, "{h:?}");
        }
    }

    #[test]
    fn read_chunked_caps_at_sixteen() {
        let sixteen: Vec<String> = (0..16).map(|i| format!("s.{i}=v{i}")).collect();
        let header = sixteen.join("; ");
        let joined: String = (0..16).map(|i| format!("v{i}")).collect();
        assert_eq!(read_chunked(&header, "s"), Some(joined.clone()));
        assert_eq!(read_chunked(&format!("{header}; s.16=x"), "s"), None);
        // A stray high index after a gap is not part of the value.
        assert_eq!(
            read_chunked(&format!("{header}; s.17=x"), "s"),
            Some(joined)
        );
        let many: Vec<String> = (0..40).map(|i| format!("s.{i}=v")).collect();
        assert_eq!(read_chunked(&many.join("; "), "s"), None);
    }

    type Pairs = Vec<(String, String)>;

    #[test]
    fn stale_chunk_detection() {
        let w = |n: usize| -> Pairs {
            if n == 0 {
                return vec![("s".into(), "v".into())];
            }
            (0..n).map(|i| (format!("s.{i}"), "v".to_owned())).collect()
        };
        let cases: &[(&str, Pairs, &[&str])] = &[
            // Shrinking from 4 chunks to 2.
            ("s.0=a; s.1=b; s.2=c; s.3=d; x=1", w(2), &["s.2", "s.3"]),
            // Growing from 2 to 3: nothing stale.
            ("s.0=a; s.1=b", w(3), &[]),
            // Plain → chunked.
            ("a=1; s=v; b=2", w(2), &["s"]),
            // Chunked → plain.
            ("s.0=a; s.1=b; sx=1; s.x=2", w(0), &["s.0", "s.1"]),
            // Plain → plain.
            ("s=v", w(0), &[]),
            // Duplicates reported once; stray indexes beyond the cap are ours too.
            ("s.5=a; s.5=b; s.40=c; s.05=d", w(2), &["s.5", "s.40"]),
            // Nothing present.
            ("", w(2), &[]),
            // Logout: nothing written, everything present is stale.
            ("s=v; s.0=a; other=1", vec![], &["s", "s.0"]),
        ];
        for (h, written, want) in cases {
            assert_eq!(stale_chunks(h, "s", written), *want, "{h:?}");
        }
    }

    mod chunk_props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn semicolon_split_is_str_split(
                h in "[a;; \u{e9}\u{1f600}]{0,40}",
                long in 0usize..80,
                at in any::<usize>(),
            ) {
                // A long run without `;` (the word-at-a-time search) with one at any place.
                let mut text = "x".repeat(long);
                text.insert_str(at % (long + 1), &h);
                let want: Vec<&str> = text.split(';').collect();
                let want: Vec<&[u8]> = want.into_iter().map(str::as_bytes).collect();
                let non_ascii = Cell::new(false);
                let got: Vec<&[u8]> =
                    split_at_semicolons(text.as_bytes(), || non_ascii.set(true)).collect();
                prop_assert_eq!(got, want);
                prop_assert_eq!(non_ascii.get(), !text.is_ascii());
            }

            #[test]
            fn chunked_reading_never_panics(h in "\\PC{0,300}", name in "[a-z.]{0,4}") {
                let _ = read_chunked(&h, &name);
                let _ = stale_chunks(&h, &name, &[]);
                let _ = chunk(&name, &h);
            }

            #[test]
            fn chunk_round_trip(len in 0usize..20_000, seed in any::<u64>()) {
                // Chunking depends on the length only; a seeded pattern is much cheaper to
                // generate than a 20,000-character regex string.
                let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
                let pick = |i: u64| (i.wrapping_mul(seed | 1) >> 3) as usize % alphabet.len();
                let value: String = (0..len as u64).map(|i| char::from(alphabet[pick(i)])).collect();
                let pairs = chunk("s", &value);
                prop_assert!(pairs.iter().all(|(_, v)| v.len() <= CHUNK_LIMIT));
                let header = header_of(&pairs);
                prop_assert_eq!(read_chunked(&header, "s"), Some(value));
                prop_assert!(stale_chunks(&header, "s", &pairs).is_empty());
            }
        }
    }
}
