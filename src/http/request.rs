//! The request as Envoy has it: every header, pseudo-headers included, values as bytes (a
//! client may send anything).
//!
//! The filter reads the whole header map in one host call and looks at it where it lies: the
//! proxy-wasm wire format (below) is walked in place, so reading a request allocates nothing
//! beyond the buffer the host fills. Tests and tools build views from name/value pairs.

use std::borrow::Cow;

use super::header_budget;

/// A borrowed view of the request headers, read in one host call (cheaper than one per header).
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    headers: Headers<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Headers<'a> {
    Pairs(&'a [(String, Vec<u8>)]),
    /// A header map in the proxy-wasm wire format: a little-endian u32 count, then a u32 name
    /// length and a u32 value length per header, then each name and value followed by a NUL.
    Wire(&'a [u8]),
}

impl<'a> RequestView<'a> {
    /// A view of name/value pairs (names lower-case).
    pub fn new(headers: &'a [(String, Vec<u8>)]) -> RequestView<'a> {
        RequestView {
            headers: Headers::Pairs(headers),
        }
    }

    /// A view of a header map in the proxy-wasm wire format, as the host hands it over. A
    /// malformed map reads as the headers before the fault.
    pub fn wire(map: &'a [u8]) -> RequestView<'a> {
        RequestView {
            headers: Headers::Wire(map),
        }
    }

    /// Every header in order, as (name, value), names as bytes: what the hot path walks (no
    /// UTF-8 check per name and pass).
    pub fn iter_bytes(&self) -> HeaderIter<'a> {
        match self.headers {
            Headers::Pairs(p) => HeaderIter::Pairs(p.iter()),
            Headers::Wire(map) => HeaderIter::Wire(WireIter::new(map)),
        }
    }

    /// Every header in order, as (name, value). A name that is not UTF-8 (Envoy's codecs do not
    /// let one through) reads as "".
    pub fn iter(&self) -> impl Iterator<Item = (&'a str, &'a [u8])> + Clone {
        self.iter_bytes()
            .map(|(n, v)| (std::str::from_utf8(n).unwrap_or(""), v))
    }

    /// At least the size of every header as an HTTP/1 request carries it (see
    /// [`header_budget::size_of`]), without walking the headers: a map's names and values lie
    /// inside it, so their lengths add up to less than its length, and it holds at most as many
    /// headers as its table declares. The hot path learns from it that a request fits its header
    /// budget; only a request near the budget is measured exactly.
    pub fn size_bound(&self) -> usize {
        match self.headers {
            Headers::Pairs(p) => p.iter().fold(0usize, |acc, (n, v)| {
                acc.saturating_add(header_budget::size_of(n.len(), v.len()))
            }),
            Headers::Wire(map) => map
                .len()
                .saturating_add(header_budget::size_of(0, 0).saturating_mul(declared_count(map))),
        }
    }

    /// The first value of `name` (lower-case).
    pub fn get(&self, name: &str) -> Option<&'a [u8]> {
        let name = name.as_bytes();
        self.iter_bytes().find(|(n, _)| *n == name).map(|(_, v)| v)
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
            .iter_bytes()
            .filter(|(n, _)| *n == b"cookie")
            .map(|(_, v)| v);
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

/// The headers of a [`RequestView`], in order.
#[derive(Debug, Clone)]
pub enum HeaderIter<'a> {
    Pairs(std::slice::Iter<'a, (String, Vec<u8>)>),
    Wire(WireIter<'a>),
}

impl<'a> Iterator for HeaderIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            HeaderIter::Pairs(it) => it.next().map(|(n, v)| (n.as_bytes(), v.as_slice())),
            HeaderIter::Wire(it) => it.next(),
        }
    }
}

/// Walks a wire-format header map without copying it.
#[derive(Debug, Clone)]
pub struct WireIter<'a> {
    /// The length pairs of the headers not read yet (8 bytes each).
    lengths: &'a [u8],
    /// The names and values not read yet.
    data: &'a [u8],
}

impl<'a> WireIter<'a> {
    /// The headers of any map the host hands over in the wire format (request or response).
    pub fn new(map: &'a [u8]) -> WireIter<'a> {
        let count = declared_count(map);
        // A count the map cannot hold reads as no header at all.
        let table_end = count.checked_mul(8).and_then(|t| t.checked_add(4));
        match table_end.and_then(|end| Some((map.get(4..end)?, map.get(end..)?))) {
            Some((lengths, data)) => WireIter { lengths, data },
            None => WireIter {
                lengths: &[],
                data: &[],
            },
        }
    }
}

fn len_at(chunk: &[u8; 4]) -> Option<usize> {
    usize::try_from(u32::from_le_bytes(*chunk)).ok()
}

/// The number of headers a wire-format map's table declares (0 when it has no count).
fn declared_count(map: &[u8]) -> usize {
    map.first_chunk::<4>().and_then(len_at).unwrap_or(0)
}

impl<'a> Iterator for WireIter<'a> {
    type Item = (&'a [u8], &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        let read = |lengths: &'a [u8], data: &'a [u8]| {
            let (name_len, lengths) = lengths.split_first_chunk::<4>()?;
            let (value_len, lengths) = lengths.split_first_chunk::<4>()?;
            let (name, data) = data.split_at_checked(len_at(name_len)?)?;
            let (value, data) = data.get(1..)?.split_at_checked(len_at(value_len)?)?;
            // Past the value's NUL (the last one may be cut off: nothing follows it).
            Some((name, value, lengths, data.get(1..).unwrap_or_default()))
        };
        match read(self.lengths, self.data) {
            Some((name, value, lengths, data)) => {
                self.lengths = lengths;
                self.data = data;
                Some((name, value))
            }
            None => {
                // A malformed map ends where the fault is.
                self.lengths = &[];
                None
            }
        }
    }
}

/// `headers` in the proxy-wasm wire format (what the host hands the filter, and what a parked
/// request keeps).
pub fn encode_wire<'h>(headers: impl IntoIterator<Item = (&'h str, &'h [u8])> + Clone) -> Vec<u8> {
    let mut count = 0u32;
    let mut out = vec![0; 4];
    for (name, value) in headers.clone() {
        count = count.saturating_add(1);
        out.extend_from_slice(&u32::try_from(name.len()).unwrap_or(u32::MAX).to_le_bytes());
        out.extend_from_slice(&u32::try_from(value.len()).unwrap_or(u32::MAX).to_le_bytes());
    }
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.push(0);
        out.extend_from_slice(value);
        out.push(0);
    }
    if let Some(head) = out.get_mut(..4) {
        head.copy_from_slice(&count.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pairs(list: &[(&str, &[u8])]) -> Vec<(String, Vec<u8>)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect()
    }

    #[test]
    fn wire_and_pairs_read_alike() {
        let h = pairs(&[
            (":method", b"POST"),
            (":path", b"/api/\xffme"),
            ("cookie", b"a=1"),
            ("x", b""),
            ("cookie", b"b=2"),
        ]);
        let wire = encode_wire(h.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        for view in [RequestView::new(&h), RequestView::wire(&wire)] {
            assert_eq!(view.method(), "POST");
            assert_eq!(view.path(), "/api/\u{fffd}me");
            assert_eq!(view.get("x"), Some(&b""[..]));
            assert_eq!(view.get("y"), None);
            assert_eq!(view.cookie().as_deref(), Some(&b"a=1; b=2"[..]));
            assert_eq!(view.iter().count(), 5);
        }
    }

    #[test]
    fn empty_and_truncated_maps_read_as_far_as_they_go() {
        assert_eq!(RequestView::wire(&[]).iter().count(), 0);
        let h = pairs(&[("a", b"1"), ("b", b"2")]);
        let wire = encode_wire(h.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
        // Cut inside the second value: only the first header is there.
        let cut = wire.get(..wire.len() - 2).unwrap();
        let got: Vec<_> = RequestView::wire(cut).iter().collect();
        assert_eq!(got, vec![("a", &b"1"[..])]);
        // A count far larger than the map, and lengths pointing past the end.
        let mut lying = wire.clone();
        lying.splice(..4, u32::MAX.to_le_bytes());
        assert_eq!(RequestView::wire(&lying).iter().count(), 0);
    }

    proptest! {
        #[test]
        fn wire_round_trips_and_never_panics(
            headers in proptest::collection::vec(("[a-z:-]{0,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let wire = encode_wire(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            let got: Vec<(String, Vec<u8>)> = RequestView::wire(&wire)
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect();
            prop_assert_eq!(got, headers);
            // Anything at all: no panic, and never more headers than bytes allow.
            prop_assert!(RequestView::wire(&junk).iter().count() <= junk.len() / 10);
        }

        #[test]
        fn the_size_bound_is_never_below_the_size(
            headers in proptest::collection::vec(("[a-z:-]{0,12}", proptest::collection::vec(any::<u8>(), 0..40)), 0..12),
            cut in any::<usize>(),
            junk in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let size = |view: RequestView<'_>| {
                view.iter_bytes().map(|(n, v)| header_budget::size_of(n.len(), v.len())).sum::<usize>()
            };
            let wire = encode_wire(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            let cut = wire.get(..cut % (wire.len() + 1)).unwrap_or_default();
            for map in [&wire[..], cut, &junk[..]] {
                prop_assert!(RequestView::wire(map).size_bound() >= size(RequestView::wire(map)));
            }
            let pairs: Vec<(String, Vec<u8>)> = headers.clone();
            prop_assert_eq!(RequestView::new(&pairs).size_bound(), size(RequestView::new(&pairs)));
        }
    }
}
