//! Host names: the host of a request's `:authority`, and the `hosts` patterns a relay serves.
//!
//! A request's host is compared case-insensitively, without its port and without one trailing
//! dot (`app.example.com.` is the same DNS name as `app.example.com`: treating it as another
//! host would let a client pick the spelling the relay does not protect). An authority that is
//! not a plain host (empty, userinfo, control characters, over 512 bytes, empty labels) has no
//! host, so it matches no pattern.

/// Longest `:authority` read, in bytes (DNS names are at most 253, a port adds at most 6).
const MAX_AUTHORITY_LEN: usize = 512;

/// The host of an `:authority` (`host`, `host:port`, `[v6]`, `[v6]:port`), without its port and
/// without one trailing dot, as sent (compare case-insensitively). `None` when it is not a host.
pub fn host_of(authority: &[u8]) -> Option<&str> {
    if authority.is_empty() || authority.len() > MAX_AUTHORITY_LEN {
        return None;
    }
    let authority = std::str::from_utf8(authority).ok()?;
    let (host, port) = split_host_port(authority).ok()?;
    let v6 = host.starts_with('[');
    let host = if v6 {
        host
    } else {
        host.strip_suffix('.').unwrap_or(host)
    };
    // An empty port is allowed by RFC 3986 (`host:`); anything but digits is not a port.
    let port = port.unwrap_or("");
    if port.len() > 5 || !port.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    (v6 || is_dns_name(host)).then_some(host)
}

/// Why an authority does not split into a host and a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitError {
    /// `[` without `]`.
    UnterminatedV6,
    /// Brackets around something that is not an IPv6 address.
    BadV6,
    /// Something other than `:port` after the `]`.
    BadPort,
}

impl SplitError {
    /// The problem, for a configuration message.
    pub(crate) fn message(self) -> &'static str {
        match self {
            SplitError::UnterminatedV6 => "unterminated IPv6 literal",
            SplitError::BadV6 => "bad IPv6 literal",
            SplitError::BadPort => "bad port",
        }
    }
}

/// `host[:port]` or `[v6][:port]` split into the host (an IPv6 literal keeps its brackets) and
/// the text after the port's colon, `None` without a colon. An IPv6 literal carries colons inside
/// its brackets, so the port follows the `]`; inside them only hex digits, `:` and `.` count.
/// The caller checks the host's name and the port's digits, by its own rules.
pub(crate) fn split_host_port(authority: &str) -> Result<(&str, Option<&str>), SplitError> {
    if !authority.starts_with('[') {
        return Ok(match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        });
    }
    let close = authority.find(']').ok_or(SplitError::UnterminatedV6)?;
    let (host, after) = authority
        .split_at_checked(close.saturating_add(1))
        .ok_or(SplitError::BadV6)?;
    let inner = host.get(1..close).ok_or(SplitError::BadV6)?;
    if inner.is_empty()
        || !inner
            .bytes()
            .all(|b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
    {
        return Err(SplitError::BadV6);
    }
    match after {
        "" => Ok((host, None)),
        _ => Ok((
            host,
            Some(after.strip_prefix(':').ok_or(SplitError::BadPort)?),
        )),
    }
}

/// Non-empty labels of letters, digits, `-` and `_`, joined by single dots.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// One entry of `hosts`, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `app.example.com` or `[::1]`: that host only.
    Exact(String),
    /// `*.example.com`, kept as `.example.com`: one or more labels before it, not
    /// `example.com` itself.
    Subdomains(String),
}

impl HostPattern {
    /// Parses a configured entry: a host name or bracketed IPv6 literal, or `*.` and a host
    /// name. No scheme, path, port, trailing dot or other wildcard. The error is the problem.
    pub fn parse(raw: &str) -> Result<HostPattern, String> {
        let bad = |why: &str| Err(format!("{raw:?}: {why}"));
        if raw.contains("://") {
            return bad("must be a host name without a scheme, e.g. \"app.example.com\"");
        }
        if raw.contains(['/', '?', '#']) {
            return bad("must be a host name without a path");
        }
        if raw.contains('@') {
            return bad("must not contain userinfo");
        }
        let lower = raw.to_ascii_lowercase();
        if let Some(suffix) = lower.strip_prefix("*.") {
            if suffix.contains('*') {
                return bad("only one leading \"*.\" wildcard is allowed");
            }
            if suffix.contains(':') {
                return bad("must not carry a port (any port matches)");
            }
            if !is_dns_name(suffix) {
                return bad("\"*.\" must be followed by a host name such as \"example.com\"");
            }
            return Ok(HostPattern::Subdomains(format!(".{suffix}")));
        }
        if lower.contains('*') {
            return bad("a wildcard is allowed only as a leading \"*.\" (\"*.example.com\")");
        }
        if lower.ends_with('.') {
            return bad("must not end with a dot (requests with a trailing dot match anyway)");
        }
        // Parsed as a request would be: a port left over means one was given.
        match host_of(lower.as_bytes()) {
            Some(host) if host.len() == lower.len() => Ok(HostPattern::Exact(lower)),
            Some(_) => bad("must not carry a port (any port matches)"),
            None => bad("is not a host name (letters, digits, '-', '_' and '.'; use punycode)"),
        }
    }

    /// Whether `host` (from [`host_of`]) matches, ignoring case.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            HostPattern::Exact(h) => h.eq_ignore_ascii_case(host),
            HostPattern::Subdomains(suffix) => {
                // At least one label before the suffix (the suffix starts with its dot).
                host.len() > suffix.len()
                    && host
                        .get(host.len().saturating_sub(suffix.len())..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(suffix))
            }
        }
    }
}

/// Whether a request with this `:authority` is for one of `patterns`. A missing or malformed
/// authority is for none.
pub fn serves(patterns: &[HostPattern], authority: Option<&[u8]>) -> bool {
    authority
        .and_then(host_of)
        .is_some_and(|host| patterns.iter().any(|p| p.matches(host)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_host_port_table() {
        type Split<'a> = Result<(&'a str, Option<&'a str>), SplitError>;
        let cases: &[(&str, Split)] = &[
            ("app.example.com", Ok(("app.example.com", None))),
            ("app:8443", Ok(("app", Some("8443")))),
            ("app:", Ok(("app", Some("")))),
            // Past the first colon, everything is the port's (its caller refuses it).
            ("a:b:c", Ok(("a", Some("b:c")))),
            ("[::1]", Ok(("[::1]", None))),
            ("[::1]:8080", Ok(("[::1]", Some("8080")))),
            ("[::ffff:10.0.0.1]:1", Ok(("[::ffff:10.0.0.1]", Some("1")))),
            ("[::1", Err(SplitError::UnterminatedV6)),
            ("[]", Err(SplitError::BadV6)),
            ("[fe80::1%eth0]", Err(SplitError::BadV6)),
            ("[::1]8080", Err(SplitError::BadPort)),
            ("[::1]]", Err(SplitError::BadPort)),
        ];
        for (input, want) in cases {
            assert_eq!(&split_host_port(input), want, "{input:?}");
        }
    }

    #[test]
    fn host_of_strips_port_and_one_trailing_dot() {
        let cases: &[(&str, Option<&str>)] = &[
            ("app.example.com", Some("app.example.com")),
            ("App.Example.COM:8443", Some("App.Example.COM")),
            ("app.example.com:", Some("app.example.com")),
            ("app.example.com.", Some("app.example.com")),
            ("app.example.com.:443", Some("app.example.com")),
            ("localhost", Some("localhost")),
            ("127.0.0.1:10000", Some("127.0.0.1")),
            ("[::1]", Some("[::1]")),
            ("[::1]:8080", Some("[::1]")),
            ("[2001:DB8::1]:443", Some("[2001:DB8::1]")),
            ("my_host.internal", Some("my_host.internal")),
            // Not a host.
            ("", None),
            (".", None),
            ("app.example.com..", None),
            ("app..example.com", None),
            (".example.com", None),
            ("a@app.example.com", None),
            ("user:pw@app.example.com", None),
            ("app.example.com:80:80", None),
            ("app.example.com:http", None),
            ("app.example.com:123456", None),
            ("app example.com", None),
            ("app.example.com\r\nx: y", None),
            ("app.example.com\0", None),
            ("app.example.com/path", None),
            ("*.example.com", None),
            ("bücher.example", None),
            ("[::1", None),
            ("[]", None),
            ("[zz]:80", None),
            ("[::1]x", None),
            ("[::1]:8080:1", None),
            ("::1", None),
        ];
        for (raw, want) in cases {
            assert_eq!(host_of(raw.as_bytes()), *want, "{raw:?}");
        }
        assert_eq!(host_of(&[0xff, b'a']), None);
        let long = format!("{}.example.com", "a".repeat(600));
        assert_eq!(host_of(long.as_bytes()), None);
    }

    #[test]
    fn patterns_parse_lower_cased() {
        let cases: &[(&str, HostPattern)] = &[
            (
                "App.Example.com",
                HostPattern::Exact("app.example.com".into()),
            ),
            ("localhost", HostPattern::Exact("localhost".into())),
            ("[::1]", HostPattern::Exact("[::1]".into())),
            (
                "*.Example.com",
                HostPattern::Subdomains(".example.com".into()),
            ),
            ("*.internal", HostPattern::Subdomains(".internal".into())),
        ];
        for (raw, want) in cases {
            assert_eq!(HostPattern::parse(raw).as_ref(), Ok(want), "{raw}");
        }
    }

    #[test]
    fn bad_patterns_say_why() {
        for raw in [
            "",
            "*",
            "*.",
            "https://app.example.com",
            "app.example.com/",
            "app.example.com/app",
            "app.example.com:443",
            "[::1]:8080",
            "*.example.com:443",
            "app.*.com",
            "*app.example.com",
            "*.*.example.com",
            "app.example.*",
            "a@app.example.com",
            "app.example.com.",
            "app..example.com",
            "app example.com",
            "bücher.example",
        ] {
            let e = HostPattern::parse(raw).unwrap_err();
            assert!(!e.is_empty() && !e.contains('\n'), "{raw:?}: {e}");
        }
    }

    fn served(patterns: &[&str], authority: &[u8]) -> bool {
        let patterns: Vec<HostPattern> = patterns
            .iter()
            .map(|p| HostPattern::parse(p).unwrap())
            .collect();
        serves(&patterns, Some(authority))
    }

    #[test]
    fn exact_and_wildcard_matching() {
        let p = ["app.example.com", "*.apps.example.com", "[::1]"];
        for yes in [
            "app.example.com",
            "APP.example.COM:8080",
            "app.example.com.",
            "a.apps.example.com",
            "a.b.apps.example.com:443",
            "A.APPS.EXAMPLE.COM",
            "[::1]:8080",
        ] {
            assert!(served(&p, yes.as_bytes()), "{yes}");
        }
        for no in [
            "example.com",
            "other.example.com",
            "xapp.example.com",
            "app.example.com.evil.test",
            "apps.example.com",
            ".apps.example.com",
            "xapps.example.com",
            "a.apps.example.com.evil",
            "[::2]:8080",
            "a@app.example.com",
            "",
        ] {
            assert!(!served(&p, no.as_bytes()), "{no}");
        }
        let patterns = vec![HostPattern::parse("app.example.com").unwrap()];
        assert!(!serves(&patterns, None));
    }
}
