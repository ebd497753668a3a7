//! The request as Envoy has it: every header, pseudo-headers included, values as bytes (a
//! client may send anything).

use std::borrow::Cow;

/// A borrowed view of the request headers, read in one host call (cheaper than one per header).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub headers: &'a [(String, Vec<u8>)],
}

impl<'a> RequestView<'a> {
    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The first value of `name` when it is UTF-8.
    pub fn get_str(&self, name: &str) -> Option<&'a str> {
        self.get(name).and_then(|v| std::str::from_utf8(v).ok())
    }

    /// The `:method`, or "" when absent or not UTF-8.
    pub fn method(&self) -> &'a str {
        self.get_str(":method").unwrap_or("")
    }

    /// The path (non-UTF-8 bytes replaced, so a mangled path still matches prefixes).
    pub fn path(&self) -> Cow<'a, str> {
        String::from_utf8_lossy(self.get(":path").unwrap_or_default())
    }

    /// The Cookie header; several Cookie headers are joined with "; " (RFC 9113 §8.2.3).
    pub fn cookie(&self) -> Option<Cow<'a, [u8]>> {
        let mut values = self
            .headers
            .iter()
            .filter(|(n, _)| n == "cookie")
            .map(|(_, v)| v.as_slice());
        let first = values.next()?;
        match values.next() {
            None => Some(Cow::Borrowed(first)),
            Some(second) => {
                let mut joined = [first, second].join(&b"; "[..]);
                for v in values {
                    joined.extend_from_slice(b"; ");
                    joined.extend_from_slice(v);
                }
                Some(Cow::Owned(joined))
            }
        }
    }

    /// The Cookie header as text; "" when absent or not UTF-8 (callers that must refuse
    /// non-UTF-8 cookies use [`RequestView::cookie`]).
    pub fn cookie_text(&self) -> Cow<'a, str> {
        match self.cookie() {
            None => Cow::Borrowed(""),
            Some(Cow::Borrowed(b)) => Cow::Borrowed(std::str::from_utf8(b).unwrap_or("")),
            Some(Cow::Owned(v)) => Cow::Owned(String::from_utf8(v).unwrap_or_default()),
        }
    }
}
