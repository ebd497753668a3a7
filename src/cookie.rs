//! Cookie header parsing (tolerant, RFC 6265 §5.4 style) and Set-Cookie building.
//!
//! Parsing never fails: pairs without `=` and empty names are skipped, surrounding whitespace is
//! trimmed, a value wrapped in double quotes is unwrapped. The first occurrence of a name wins
//! (browsers send the most specific path first).

/// One pass over a Cookie header: the values of up to `N` wanted cookies, and the header with
/// those cookies removed (`None` when nothing else remains).
pub struct Scan<'a, const N: usize> {
    pub values: [Option<&'a str>; N],
    /// `true` when any wanted cookie (even with an empty or duplicate value) was present.
    pub any_found: bool,
    remainder: Vec<&'a str>,
}

impl<'a, const N: usize> Scan<'a, N> {
    /// The Cookie header without the wanted cookies, or `None` when nothing is left.
    pub fn remainder(&self) -> Option<String> {
        if self.remainder.is_empty() {
            None
        } else {
            Some(self.remainder.join("; "))
        }
    }
}

/// Splits a Cookie header into `(name, value)` pairs.
pub fn pairs(header: &str) -> impl Iterator<Item = (&str, &str)> {
    header.split(';').filter_map(|part| {
        let (name, value) = part.split_once('=')?;
        let name = name.trim_matches(is_ws);
        if name.is_empty() {
            return None;
        }
        Some((name, unquote(value.trim_matches(is_ws))))
    })
}

/// Looks up the first cookie called `name`.
pub fn find<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    pairs(header).find(|(n, _)| *n == name).map(|(_, v)| v)
}

/// Finds the `wanted` cookies and collects every other pair (as sent) for the remainder.
/// Cookies for which `also_drop(name)` holds (session chunks, login flow cookies) are left out
/// of the remainder too.
pub fn scan<'a, const N: usize>(
    header: &'a str,
    wanted: [&str; N],
    also_drop: impl Fn(&str) -> bool,
) -> Scan<'a, N> {
    let mut values = [None; N];
    let mut remainder = Vec::new();
    let mut any_found = false;
    for part in header.split(';') {
        let trimmed = part.trim_matches(is_ws);
        if trimmed.is_empty() {
            continue;
        }
        let Some((name, value)) = trimmed.split_once('=') else {
            remainder.push(trimmed);
            continue;
        };
        let name = name.trim_matches(is_ws);
        match wanted.iter().position(|w| *w == name) {
            Some(i) => {
                any_found = true;
                if let Some(slot) = values.get_mut(i) {
                    if slot.is_none() {
                        *slot = Some(unquote(value.trim_matches(is_ws)));
                    }
                }
            }
            None if also_drop(name) => any_found = true,
            None => remainder.push(trimmed),
        }
    }
    Scan {
        values,
        any_found,
        remainder,
    }
}

/// Whether `name` is `<base>.<decimal index>`.
pub fn is_chunk_of(name: &str, base: &str) -> bool {
    !base.is_empty()
        && name
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|idx| !idx.is_empty() && idx.bytes().all(|b| b.is_ascii_digit()))
}

fn is_ws(c: char) -> bool {
    c == ' ' || c == '\t'
}

fn unquote(v: &str) -> &str {
    v.strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or(v)
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

    #[test]
    fn scan_collects_remainder() {
        let s = scan(
            "a=1; at=T; b=2; s=S; flag; s.0=x; s.1=y; s.x=z",
            ["at", "s", "c"],
            |n| is_chunk_of(n, "s"),
        );
        assert_eq!(s.values, [Some("T"), Some("S"), None]);
        assert!(s.any_found);
        assert_eq!(s.remainder().as_deref(), Some("a=1; b=2; flag; s.x=z"));
    }

    #[test]
    fn scan_remainder_none_when_only_relay_cookies() {
        let s = scan("at=T;s=S", ["at", "s"], |_| false);
        assert_eq!(s.remainder(), None);
        let s = scan("a=1", ["at"], |_| false);
        assert!(!s.any_found);
        assert_eq!(s.values, [None]);
        assert_eq!(s.remainder().as_deref(), Some("a=1"));
    }

    #[test]
    fn duplicate_wanted_cookie_is_removed_first_wins() {
        let s = scan("at=1; at=2; x=y", ["at"], |_| false);
        assert_eq!(s.values, [Some("1")]);
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
                let s = scan(&h, ["x", "y"], |n| is_chunk_of(n, "y"));
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
                    let s = scan(&header, [victim.as_str()], |_| false);
                    let kept: Vec<String> = cookies.iter().filter(|(n, _)| n != victim).map(|(n, v)| format!("{n}={v}")).collect();
                    prop_assert_eq!(s.remainder(), if kept.is_empty() { None } else { Some(kept.join("; ")) });
                }
            }
        }
    }
}
