//! Every URL codec the relay needs, and nothing else: percent- and form-encoding, query strings,
//! the absolute URLs configuration names, tuple origins (`Origin`, `Referer`), and the
//! `return_to` rule for redirects after login.
//!
//! The percent and form codecs are written here once (about forty lines): the
//! `percent-encoding` and `form_urlencoded` crates did the same job for 2.2 KB more `.wasm`,
//! and the `url` crate's IDNA tables would be far larger.

use std::fmt;

use super::authority::{split_host_port, SplitError};

/// Longest `return_to` honoured, in bytes (after encoding); a longer one becomes `/`.
pub const MAX_RETURN_TO_LEN: usize = 2048;
/// Longest configured path or URL.
const MAX_CONFIG_URL_LEN: usize = 2048;
/// Longest origin (scheme, host and port) accepted, in bytes. DNS names are at most 253.
const MAX_ORIGIN_LEN: usize = 512;
/// Most query parameters read from a login or callback URL.
pub const MAX_QUERY_PARAMS: usize = 64;

/// RFC 3986 unreserved characters: never encoded in a query value.
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// What a `return_to` may carry as it is: printable ASCII but the characters URLs may not hold
/// literally (controls, space and non-ASCII are always encoded).
fn return_to_literal(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// Percent-encodes every byte `keep` refuses (uppercase hex); `space` replaces a space.
fn encode(s: &str, keep: fn(u8) -> bool, space: Option<char>) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match (b, space) {
            (b' ', Some(c)) => out.push(c),
            _ if keep(b) => out.push(char::from(b)),
            _ => {
                out.push('%');
                let digit = |n: u8| char::from(HEX.get(usize::from(n)).copied().unwrap_or(b'0'));
                out.push(digit(b >> 4));
                out.push(digit(b & 15));
            }
        }
    }
    out
}

/// Percent-decoding (`+` as a space when `plus`); malformed escapes stay as they are.
fn decode(s: &[u8], plus: bool) -> Vec<u8> {
    let hex = |b: &u8| char::from(*b).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s;
    while let Some((&b, tail)) = rest.split_first() {
        match (b, tail) {
            (b'%', [h, l, more @ ..]) if hex(h).is_some() && hex(l).is_some() => {
                let v = hex(h).unwrap_or(0) << 4 | hex(l).unwrap_or(0);
                // Two hex digits: always below 256.
                out.push(u8::try_from(v).unwrap_or(b'%'));
                rest = more;
            }
            (b'+', _) if plus => {
                out.push(b' ');
                rest = tail;
            }
            _ => {
                out.push(b);
                rest = tail;
            }
        }
    }
    out
}

// ---- percent, form and query codecs ----------------------------------------------------------

/// Percent-encodes everything but RFC 3986 unreserved characters (so a space is `%20`, which
/// both form decoders and plain percent-decoders read as a space).
pub fn query_encode(s: &str) -> String {
    encode(s, unreserved, None)
}

/// `application/x-www-form-urlencoded` encoding of one name or value (space as `+`).
pub fn form_encode(s: &str) -> String {
    encode(
        s,
        |b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'*'),
        Some('+'),
    )
}

/// Percent-decoding; malformed escapes stay as they are.
pub fn percent_decode_bytes(s: &[u8]) -> Vec<u8> {
    decode(s, false)
}

/// `base` with `params` appended as a query (`?` or `&` as `base` needs).
pub fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(base.len() + 64 * params.len());
    out.push_str(base);
    let mut sep = match base.split_once('?') {
        None => "?",
        Some((_, q)) if q.is_empty() || q.ends_with('&') => "",
        Some(_) => "&",
    };
    for (k, v) in params {
        out.push_str(sep);
        out.push_str(&query_encode(k));
        out.push('=');
        out.push_str(&query_encode(v));
        sep = "&";
    }
    out
}

/// Parses a query string (`application/x-www-form-urlencoded`: percent-decoding, `+` as a
/// space; invalid UTF-8 replaced). At most 64 parameters are read.
pub fn parse_query(query: &str) -> Vec<(String, String)> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_QUERY_PARAMS)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let text = |s: &str| String::from_utf8_lossy(&decode(s.as_bytes(), true)).into_owned();
            (text(k), text(v))
        })
        .collect()
}

/// The only value of `name`: `Ok(None)` when absent, `Err(())` when repeated (RFC 6749 §3.1:
/// parameters must not be included more than once).
#[allow(clippy::result_unit_err)]
pub fn single<'a>(params: &'a [(String, String)], name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = params
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(());
    }
    Ok(first)
}

// ---- return_to ---------------------------------------------------------------------------------

/// `raw` when it is a safe same-origin path to return to, percent-encoding spaces, non-ASCII
/// and characters not allowed in a URL; else `/`. See [`check_return_to`].
pub fn safe_return_to(raw: &str) -> String {
    check_return_to(raw).unwrap_or_else(|| "/".to_owned())
}

/// A return path is honoured only when it is unmistakably a path on this origin: it starts with
/// a single `/` (so no scheme and no `//host`), contains no `\` (browsers read it as `/`) and no
/// control character (browsers drop tabs and newlines, so `/\t/evil` would become `//evil`),
/// its percent-decoded forms (up to three rounds) neither start with `//` or `/\` nor hold a
/// control character, and its encoded form is at most [`MAX_RETURN_TO_LEN`] bytes.
pub fn check_return_to(raw: &str) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_RETURN_TO_LEN {
        return None;
    }
    if !raw.starts_with('/') || raw.starts_with("//") || raw.contains('\\') {
        return None;
    }
    if raw.chars().any(char::is_control) {
        return None;
    }
    let mut current: Vec<u8> = raw.as_bytes().to_vec();
    for _ in 0..3 {
        let decoded = percent_decode_bytes(&current);
        if decoded == current {
            break;
        }
        if decoded.starts_with(b"//")
            || decoded.starts_with(b"/\\")
            || decoded.iter().any(|b| b.is_ascii_control())
        {
            return None;
        }
        current = decoded;
    }
    let out = encode(raw, return_to_literal, None);
    (out.len() <= MAX_RETURN_TO_LEN).then_some(out)
}

// ---- configured URLs and paths -----------------------------------------------------------------

/// An absolute URL split into the parts configuration checks need.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigUrl<'a> {
    pub scheme: &'a str,
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
}

/// Parses an absolute `https` URL (`http` for loopback hosts only): printable ASCII, a host,
/// no userinfo, no fragment. The error is the problem, for a configuration message.
pub fn parse_config_url(s: &str) -> Result<ConfigUrl<'_>, String> {
    if s.len() > MAX_CONFIG_URL_LEN {
        return Err(format!("is longer than {MAX_CONFIG_URL_LEN} bytes"));
    }
    if !s.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err("must be ASCII without spaces or control characters".to_owned());
    }
    let (scheme, rest) = s.split_once("://").ok_or_else(|| {
        format!("{s:?} is not an absolute URL such as \"https://idp.example.com/authorize\"")
    })?;
    if scheme != "https" && scheme != "http" {
        return Err(format!("{s:?}: the scheme must be https"));
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest
        .split_at_checked(end)
        .ok_or_else(|| format!("{s:?} is not a URL"))?;
    if tail.contains('#') {
        return Err(format!("{s:?}: must not have a fragment"));
    }
    if authority.contains('@') {
        return Err(format!("{s:?}: must not carry user information"));
    }
    let bad_port = || format!("{s:?}: not a valid port");
    let host = if let Some(v6) = authority.strip_prefix('[') {
        let (inside, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("{s:?}: unterminated IPv6 address"))?;
        if !after.is_empty() {
            after
                .strip_prefix(':')
                .and_then(parse_port)
                .ok_or_else(bad_port)?;
        }
        inside
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => {
                parse_port(port).ok_or_else(bad_port)?;
                host
            }
            None => authority,
        }
    };
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b':'));
    if !host_ok {
        return Err(format!("{s:?}: not a valid host"));
    }
    if !scheme_allowed(scheme, host) {
        return Err(format!(
            "{s:?}: must be https (http only for localhost, 127.0.0.1 and [::1])"
        ));
    }
    let (path, query) = match tail.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (tail, None),
    };
    Ok(ConfigUrl {
        scheme,
        authority,
        path,
        query,
    })
}

/// Whether `host` (without port; an IPv6 literal with or without brackets) is the local
/// machine by name or address.
pub fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host == "127.0.0.1"
        || host == "::1"
        || host == "[::1]"
}

/// The relay's one rule for origins it trusts: `https`, and `http` only for a loopback host
/// (configured URLs, and a request's own origin when no `csrf` section is configured).
pub fn scheme_allowed(scheme: &str, host: &str) -> bool {
    scheme == "https" || (scheme == "http" && is_loopback(host))
}

/// A port: 1 to 5 digits, 1 to 65535.
fn parse_port(p: &str) -> Option<u16> {
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    p.parse::<u16>().ok().filter(|n| *n != 0)
}

/// A path the relay serves: `/…`, not `//…`, printable ASCII without `?`, `#` or `\`.
pub fn check_path(p: &str) -> Result<(), String> {
    let valid = p.starts_with('/')
        && !p.starts_with("//")
        && p.len() <= 1024
        && p.bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && !matches!(b, b'?' | b'#' | b'\\'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{p:?} must be a path starting with a single '/' (printable ASCII, no '?', '#' or '\\')"
        ))
    }
}

// ---- origins -----------------------------------------------------------------------------------

/// `scheme://authority` of an absolute URL (the authority ends at `/`, `?` or `#`), or `None`
/// when `url` has no `://`.
pub fn referer_origin(url: &str) -> Option<&str> {
    let scheme_end = url.find("://")?;
    let authority_start = scheme_end.checked_add(3)?;
    let rest = url.get(authority_start..)?;
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    url.get(..authority_start.checked_add(authority_len)?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// A parsed tuple origin, borrowing the host from the input (compare it case-insensitively).
#[derive(Debug, Clone, Copy)]
pub struct Origin<'a> {
    scheme: Scheme,
    host: &'a str,
    /// `None` for the scheme's default port.
    port: Option<u16>,
}

impl<'a> Origin<'a> {
    /// Parses `scheme://host[:port]`; the problem is for configuration errors.
    pub fn parse(s: &'a str) -> Result<Origin<'a>, &'static str> {
        if s == "null" || s == "*" {
            return Err("is not an origin (\"null\" and \"*\" are refused)");
        }
        if s.len() > MAX_ORIGIN_LEN {
            return Err("is too long");
        }
        let (scheme, authority) = s
            .split_once("://")
            .ok_or("must be an absolute origin such as \"https://app.example.com\"")?;
        let scheme = if scheme.eq_ignore_ascii_case("https") {
            Scheme::Https
        } else if scheme.eq_ignore_ascii_case("http") {
            Scheme::Http
        } else {
            return Err("scheme must be http or https");
        };
        if authority.contains(['/', '?', '#']) {
            return Err("must not have a path (not even \"/\"), query or fragment");
        }
        if authority.contains('@') {
            return Err("must not contain userinfo");
        }
        let (host, port) = split_host_port(authority).map_err(SplitError::message)?;
        if host.is_empty() {
            return Err("has no host");
        }
        if !host.starts_with('[')
            && !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
        {
            return Err("host may contain only letters, digits, '-', '.' and '_' (use punycode)");
        }
        let port = match port {
            None => None,
            Some(p) => {
                let n = parse_port(p).ok_or("port must be a number from 1 to 65535")?;
                (n != scheme.default_port()).then_some(n)
            }
        };
        Ok(Origin { scheme, host, port })
    }

    /// Whether this origin equals `normalized` (from [`fmt::Display`] of a parsed origin).
    /// Allocation-free.
    pub fn matches(&self, normalized: &str) -> bool {
        let Some(rest) = normalized
            .strip_prefix(self.scheme.as_str())
            .and_then(|r| r.strip_prefix("://"))
        else {
            return false;
        };
        let (host, port) = match rest.split_at_checked(self.host.len()) {
            Some(split) => split,
            None => return false,
        };
        if !host.eq_ignore_ascii_case(self.host) {
            return false;
        }
        match self.port {
            None => port.is_empty(),
            Some(n) => port
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .is_some_and(|p| p == n),
        }
    }
}

impl fmt::Display for Origin<'_> {
    /// The normalized serialization: lower-case scheme and host, port only when not default.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme.as_str())?;
        f.write_str("://")?;
        for c in self.host.chars() {
            fmt::Write::write_char(f, c.to_ascii_lowercase())?;
        }
        if let Some(port) = self.port {
            write!(f, ":{port}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codecs() {
        assert_eq!(query_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
        assert_eq!(form_encode("a b*&+~"), "a+b*%26%2B%7E");
        assert_eq!(percent_decode_bytes(b"%41%zz%4"), b"A%zz%4".to_vec());
        assert_eq!(
            parse_query("a=1&b=x+y%21&&c&a=%ZZ"),
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b".to_owned(), "x y!".to_owned()),
                ("c".to_owned(), String::new()),
                ("a".to_owned(), "%ZZ".to_owned()),
            ]
        );
        assert_eq!(parse_query(&"x=1&".repeat(100)).len(), 64);
        let params = parse_query("a=1&b=2&a=3");
        assert_eq!(single(&params, "b"), Ok(Some("2")));
        assert_eq!(single(&params, "a"), Err(()));
        assert_eq!(single(&params, "z"), Ok(None));
        assert_eq!(with_query("/l", &[("r", "/a b")]), "/l?r=%2Fa%20b");
        assert_eq!(with_query("/l?x=1", &[("r", "1")]), "/l?x=1&r=1");
        assert_eq!(with_query("/l?", &[("r", "1")]), "/l?r=1");
    }

    #[test]
    fn config_urls() {
        let u = parse_config_url("https://idp.example.com:8443/a?b=1").unwrap();
        assert_eq!(
            (u.scheme, u.authority, u.path, u.query),
            ("https", "idp.example.com:8443", "/a", Some("b=1"))
        );
        assert!(parse_config_url("http://localhost:3000/cb").is_ok());
        assert!(parse_config_url("http://[::1]:3000/cb").is_ok());
        for bad in [
            "http://example.com/",
            "https://example.com/#f",
            "https://u@example.com/",
            "https://example.com:0/",
            "https://example.com:99999/",
            "ftp://example.com/",
            "example.com",
            "https:///x",
            "https://[::1/x",
        ] {
            assert!(parse_config_url(bad).is_err(), "{bad}");
        }
        assert!(check_path("/auth/x").is_ok());
        for bad in ["auth", "//x", "/a?b", "/a#b", "/a\\b", "/a b"] {
            assert!(check_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn origins() {
        let o = Origin::parse("HTTPS://App.Example.com:443").unwrap();
        assert_eq!(o.to_string(), "https://app.example.com");
        assert!(o.matches("https://app.example.com"));
        assert!(!o.matches("http://app.example.com"));
        assert_eq!(
            Origin::parse("http://[::1]:8080").unwrap().to_string(),
            "http://[::1]:8080"
        );
        assert_eq!(referer_origin("https://a.b/c?d"), Some("https://a.b"));
        assert_eq!(referer_origin("/relative"), None);
    }
}
