//! The request-header budget (`max_request_headers_bytes`): after the filter's own changes
//! (bearer injected, relay cookies removed, claim headers set), a request whose headers exceed
//! the budget is answered with 431 instead of being sent to an upstream that would refuse it
//! with a less helpful error (or truncate it).
//!
//! Pure and allocation-free: the shell passes the final header list in.
//!
//! Sizes are counted as an HTTP/1.1 message carries them: `name + ": " + value + "\r\n"` per
//! header. That is what servers' header limits measure (nginx `large_client_header_buffers`,
//! Node's `--max-http-header-size`, Tomcat `maxHttpHeaderSize`, AWS ALB's limits), give or take
//! the request line. Pass Envoy's pseudo-headers (`:path`, `:authority`, …) too: they become
//! the request line and `Host` upstream, so counting them keeps the estimate honest.

use std::fmt;

/// Default for `max_request_headers_bytes` (nginx's and many gateways' default buffer).
pub const DEFAULT_MAX_REQUEST_HEADERS_BYTES: usize = 8192;

/// Per-header overhead in the count: `": "` and `"\r\n"`.
const PER_HEADER: usize = 4;

/// One header's size in the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeaderSize<'a> {
    pub name: &'a str,
    pub bytes: usize,
}

/// A request over budget, and what to blame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Offender<'a> {
    /// Size of all headers, counted as [`total`] does.
    pub total: usize,
    pub budget: usize,
    /// The largest header (the first of equals), as named in the request.
    pub header: &'a str,
    /// When `header` is `cookie`: the name of the largest cookie in it (the first of equals).
    /// `None` for other headers, and for a Cookie header with no `name=value` pair or whose
    /// largest cookie's name is not UTF-8.
    pub cookie: Option<&'a str>,
    /// With `cookie`: that cookie's `name=value` size. Otherwise: the header's size as counted
    /// (`name: value\r\n`).
    pub bytes: usize,
}

impl fmt::Display for Offender<'_> {
    /// For the 431 body's `error_description`, e.g. `request headers are 9120 bytes, over the
    /// limit of 8192; the largest is cookie "big" (4100 bytes)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "request headers are {} bytes, over the limit of {}; the largest is ",
            self.total, self.budget
        )?;
        match self.cookie {
            Some(cookie) => write!(f, "cookie {cookie:?} ({} bytes)", self.bytes),
            None => write!(f, "header {:?} ({} bytes)", self.header, self.bytes),
        }
    }
}

/// One header's size: `name: value\r\n`.
fn size(name: &str, value: &[u8]) -> usize {
    size_of(name.len(), value.len())
}

/// The size of a header whose name and value have these lengths.
pub fn size_of(name_len: usize, value_len: usize) -> usize {
    name_len
        .saturating_add(value_len)
        .saturating_add(PER_HEADER)
}

/// Size of the headers as an HTTP/1 request carries them: `name + ": " + value + "\r\n"` per
/// header (saturating).
pub fn total(headers: &[(&str, &[u8])]) -> usize {
    total_of(headers.iter().copied())
}

/// [`total`] of headers given one at a time (no list needed).
pub fn total_of<'a>(headers: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> usize {
    headers.into_iter().fold(0usize, |acc, (name, value)| {
        acc.saturating_add(size(name, value))
    })
}

/// Every header's size, in order (for logs and diagnostics).
pub fn sizes<'a>(headers: &'a [(&'a str, &'a [u8])]) -> impl Iterator<Item = HeaderSize<'a>> {
    headers.iter().map(|(name, value)| HeaderSize {
        name,
        bytes: size(name, value),
    })
}

/// `None` when the headers fit in `budget` bytes (or `budget` is 0: no limit). Otherwise the
/// [`Offender`]: the largest header, and when that is `cookie`, the largest cookie inside it.
pub fn over_budget<'a>(headers: &[(&'a str, &'a [u8])], budget: usize) -> Option<Offender<'a>> {
    if budget == 0 {
        return None;
    }
    let total = total(headers);
    if total <= budget {
        return None;
    }
    let mut largest: Option<(&'a str, &'a [u8], usize)> = None;
    for &(name, value) in headers {
        let bytes = size(name, value);
        if largest.is_none_or(|(_, _, best)| bytes > best) {
            largest = Some((name, value, bytes));
        }
    }
    let (header, value, bytes) = largest?;
    let (cookie, bytes) = if header.eq_ignore_ascii_case("cookie") {
        match largest_cookie(value) {
            Some((cookie, cookie_bytes)) => (Some(cookie), cookie_bytes),
            None => (None, bytes),
        }
    } else {
        (None, bytes)
    };
    Some(Offender {
        total,
        budget,
        header,
        cookie,
        bytes,
    })
}

/// The largest `name=value` pair of a Cookie header (trimmed of spaces and tabs, as
/// [`super::cookie::pairs`] does) and its size. `None` when there is no pair, or when the
/// largest one's name is not UTF-8.
fn largest_cookie(value: &[u8]) -> Option<(&str, usize)> {
    let mut best: Option<(&[u8], usize)> = None;
    for part in value.split(|b| *b == b';') {
        let part = trim(part);
        let Some(eq) = part.iter().position(|b| *b == b'=') else {
            continue;
        };
        let name = trim(part.get(..eq).unwrap_or_default());
        if name.is_empty() {
            continue;
        }
        if best.is_none_or(|(_, b)| part.len() > b) {
            best = Some((name, part.len()));
        }
    }
    let (name, bytes) = best?;
    std::str::from_utf8(name).ok().map(|n| (n, bytes))
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h<'a>(list: &'a [(&'a str, &'a str)]) -> Vec<(&'a str, &'a [u8])> {
        list.iter().map(|(n, v)| (*n, v.as_bytes())).collect()
    }

    #[test]
    fn counts_like_http1() {
        assert_eq!(total(&[]), 0);
        // "host: a\r\n" is 9 bytes.
        assert_eq!(total(&h(&[("host", "a")])), 9);
        assert_eq!(total(&h(&[("host", "a"), ("x", "")])), 9 + 5);
        let headers = h(&[("a", "1"), ("bb", "22")]);
        let sizes: Vec<_> = sizes(&headers).collect();
        assert_eq!(
            sizes,
            vec![
                HeaderSize {
                    name: "a",
                    bytes: 6
                },
                HeaderSize {
                    name: "bb",
                    bytes: 8
                }
            ]
        );
    }

    #[test]
    fn budget_table() {
        let headers = h(&[("host", "a"), ("x-long", "0123456789"), ("y", "1")]);
        let t = total(&headers); // 9 + 20 + 6
        assert_eq!(t, 35);
        let cases: &[(usize, Option<(&str, usize)>)] = &[
            (0, None),
            (1_000_000, None),
            (35, None),
            (34, Some(("x-long", 20))),
            (1, Some(("x-long", 20))),
        ];
        for (budget, want) in cases {
            let got = over_budget(&headers, *budget);
            assert_eq!(got.map(|o| (o.header, o.bytes)), *want, "budget {budget}");
            if let Some(o) = got {
                assert_eq!((o.total, o.budget, o.cookie), (35, *budget, None));
            }
        }
        assert_eq!(over_budget(&[], 1), None);
    }

    #[test]
    fn ties_blame_the_first() {
        let headers = h(&[("a", "xx"), ("b", "yy")]);
        assert_eq!(over_budget(&headers, 1).map(|o| o.header), Some("a"));
    }

    #[test]
    fn cookie_header_blames_the_largest_cookie() {
        let big = "v".repeat(100);
        let cookie = format!("a=1; big={big} ; flag; =nameless{big}; mid=xyz");
        let headers = vec![("host", &b"app"[..]), ("Cookie", cookie.as_bytes())];
        let o = over_budget(&headers, 50).unwrap();
        assert_eq!(o.header, "Cookie");
        assert_eq!(o.cookie, Some("big"));
        assert_eq!(o.bytes, 4 + 100);
        assert_eq!(o.total, total(&headers));
        let text = o.to_string();
        assert!(text.contains("cookie \"big\" (104 bytes)"), "{text}");

        // No pairs at all: the header itself is blamed.
        let flags = "flag; other; =x".repeat(10);
        let headers = vec![("cookie", flags.as_bytes())];
        let o = over_budget(&headers, 10).unwrap();
        assert_eq!((o.header, o.cookie), ("cookie", None));
        assert_eq!(o.bytes, 6 + 4 + flags.len());
        assert!(o.to_string().contains("header \"cookie\""));

        // A non-UTF-8 cookie name: the header is blamed.
        let raw = &b"\xff\xfe=aaaaaaaaaaaaaaaaaaaa; b=1"[..];
        let headers = vec![("cookie", raw)];
        let o = over_budget(&headers, 10).unwrap();
        assert_eq!((o.cookie, o.bytes), (None, 6 + 4 + raw.len()));
        // Non-UTF-8 value of the largest cookie is fine: only the name is returned.
        let headers = vec![("cookie", &b"n=\xff\xff\xff\xff; b=1"[..])];
        assert_eq!(over_budget(&headers, 10).unwrap().cookie, Some("n"));
    }

    /// Cognito-size tokens: an access token of ~1.1 KB after the relay; a sealed session with
    /// an ID token (~1.5 KB) and a refresh token (~1.8 KB, Cognito's are opaque JWE) stays in
    /// the browser but is stripped before the upstream.
    #[test]
    fn realistic_cognito_request() {
        let access_token = format!("eyJraWQiOiJ{}", "A".repeat(1090));
        assert!((1090..1200).contains(&access_token.len()));
        let bearer = format!("Bearer {access_token}");
        let other_cookies = "_ga=GA1.2.1234567890.1700000000; theme=dark; locale=en-US";
        let ua = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36";
        let headers: Vec<(&str, &[u8])> = vec![
            (":method", b"POST"),
            (":path", b"/api/orders?page=2"),
            (":authority", b"app.example.com"),
            (":scheme", b"https"),
            ("user-agent", ua.as_bytes()),
            ("accept", b"application/json"),
            ("accept-language", b"en-US,en;q=0.9"),
            ("content-type", b"application/json"),
            ("origin", b"https://app.example.com"),
            ("referer", b"https://app.example.com/orders"),
            ("x-request-id", b"0f8fad5b-d9cb-469f-a165-70867728950e"),
            ("x-forwarded-for", b"203.0.113.7"),
            ("x-user-sub", b"4f1c9a2e-7b3d-4e8f-9a61-2c5d7e8f9a0b"),
            ("cookie", other_cookies.as_bytes()),
            ("authorization", bearer.as_bytes()),
        ];
        let t = total(&headers);
        assert!((1500..2200).contains(&t), "{t}");
        assert_eq!(
            over_budget(&headers, DEFAULT_MAX_REQUEST_HEADERS_BYTES),
            None
        );
        assert_eq!(over_budget(&headers, 0), None);
        // A tight budget blames the bearer token, the largest header.
        let o = over_budget(&headers, 1024).unwrap();
        assert_eq!(o.header, "authorization");
        assert_eq!(o.bytes, "authorization".len() + 4 + bearer.len());

        // A browser that piled up cookies from other apps on the same site: blame the cookie.
        let id_token = "e".repeat(1500);
        let junk = format!(
            "{other_cookies}; legacy_id_token={id_token}; cart={}",
            "c".repeat(6000)
        );
        let mut bloated = headers.clone();
        if let Some(c) = bloated.iter_mut().find(|(n, _)| *n == "cookie") {
            c.1 = junk.as_bytes();
        }
        let o = over_budget(&bloated, DEFAULT_MAX_REQUEST_HEADERS_BYTES).unwrap();
        assert_eq!(
            (o.header, o.cookie, o.bytes),
            ("cookie", Some("cart"), 5 + 6000)
        );
        assert!(o.total > DEFAULT_MAX_REQUEST_HEADERS_BYTES);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics_and_blames_a_real_header(
                headers in proptest::collection::vec(("[a-z:-]{0,12}", proptest::collection::vec(any::<u8>(), 0..200)), 0..12),
                budget in 0usize..3000,
            ) {
                let list: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())).collect();
                let t = total(&list);
                match over_budget(&list, budget) {
                    None => prop_assert!(budget == 0 || t <= budget),
                    Some(o) => {
                        prop_assert!(budget != 0 && t > budget);
                        prop_assert_eq!(o.total, t);
                        prop_assert!(list.iter().any(|(n, _)| *n == o.header));
                        prop_assert!(o.bytes <= t);
                        if o.cookie.is_some() {
                            prop_assert!(o.header.eq_ignore_ascii_case("cookie"));
                        }
                    }
                }
            }
        }
    }
}
