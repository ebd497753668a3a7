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
    known: Known<'a>,
}

/// What every request's decision looks up, found in the one walk that makes the view: later
/// lookups of these cost no walk of the map.
#[derive(Debug, Clone, Copy, Default)]
struct Known<'a> {
    authority: Option<&'a [u8]>,
    path: Option<&'a [u8]>,
    method: Option<&'a [u8]>,
    /// The first Cookie header.
    cookie: Option<&'a [u8]>,
    /// Another Cookie header follows the first (to be joined).
    more_cookies: bool,
    /// Every header name, loosely.
    names: NameSet,
}

impl<'a> Known<'a> {
    fn of(headers: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Known<'a> {
        let mut known = Known::default();
        for (name, value) in headers {
            known.names.insert(name);
            let slot = match name {
                b":authority" => &mut known.authority,
                b":path" => &mut known.path,
                b":method" => &mut known.method,
                b"cookie" => {
                    known.more_cookies |= known.cookie.is_some();
                    &mut known.cookie
                }
                _ => continue,
            };
            // The first of several wins, as in `RequestView::get`'s walk.
            slot.get_or_insert(value);
        }
        known
    }
}

/// A set of header names, loosely: one bit per class of name (its length and its first and last
/// byte), so that one AND tells that none of a few names is in a request, without a walk. Names
/// are compared as the forged-claim search compares them: ASCII case and `_` against `-` do not
/// matter. Two different names may share a bit; a name never misses its own.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NameSet(u64);

impl NameSet {
    /// The set of `names`.
    pub fn of<'n>(names: impl IntoIterator<Item = &'n [u8]>) -> NameSet {
        let mut set = NameSet::default();
        for name in names {
            set.insert(name);
        }
        set
    }

    // Once per header of every request: a call would cost more than the few instructions.
    #[inline(always)]
    fn insert(&mut self, name: &[u8]) {
        let fold = |b: Option<&u8>| match b {
            Some(b'_') => usize::from(b'-'),
            Some(b) => usize::from(b.to_ascii_lowercase()),
            None => 0,
        };
        let class = name
            .len()
            .wrapping_add(fold(name.first()).wrapping_mul(3))
            .wrapping_add(fold(name.last()).wrapping_mul(5));
        self.0 |= 1u64 << (class & 63);
    }

    /// Whether some name may be in both sets (`false`: certainly none).
    pub fn may_meet(self, other: NameSet) -> bool {
        self.0 & other.0 != 0
    }
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
        RequestView::of(Headers::Pairs(headers))
    }

    /// A view of a header map in the proxy-wasm wire format, as the host hands it over. A
    /// malformed map reads as the headers before the fault.
    pub fn wire(map: &'a [u8]) -> RequestView<'a> {
        RequestView::of(Headers::Wire(map))
    }

    fn of(headers: Headers<'a>) -> RequestView<'a> {
        // One walk per kind of view, so the wire format's is a loop with nothing to dispatch.
        let known = match headers {
            Headers::Pairs(p) => Known::of(HeaderIter::Pairs(p.iter())),
            Headers::Wire(map) => Known::of(WireIter::new(map)),
        };
        RequestView { headers, known }
    }

    /// The headers in the wire format (what a parked request keeps).
    pub fn to_wire(&self) -> Vec<u8> {
        match self.headers {
            Headers::Wire(map) => map.to_vec(),
            Headers::Pairs(p) => encode_wire(p.iter().map(|(n, v)| (n.as_str(), v.as_slice()))),
        }
    }

    /// Every header name, loosely (see [`NameSet`]).
    pub fn names(&self) -> NameSet {
        self.known.names
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
        match name {
            ":authority" => self.known.authority,
            ":path" => self.known.path,
            ":method" => self.known.method,
            "cookie" => self.known.cookie,
            _ => {
                let name = name.as_bytes();
                self.iter_bytes().find(|(n, _)| *n == name).map(|(_, v)| v)
            }
        }
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
        let raw = self.get(":path").unwrap_or_default();
        // Checked first: on a short path `from_utf8_lossy`'s chunk iterator costs more than
        // the check.
        match std::str::from_utf8(raw) {
            Ok(path) => Cow::Borrowed(path),
            Err(_) => String::from_utf8_lossy(raw),
        }
    }

    /// The Cookie header; several Cookie headers are joined with "; " (RFC 9113 §8.2.3).
    pub fn cookie(&self) -> Option<Cow<'a, [u8]>> {
        let first = self.known.cookie?;
        if !self.known.more_cookies {
            return Some(Cow::Borrowed(first));
        }
        let mut joined = Vec::new();
        let values = self.iter_bytes().filter(|(n, _)| *n == b"cookie");
        for (i, (_, v)) in values.enumerate() {
            if i > 0 {
                joined.extend_from_slice(b"; ");
            }
            joined.extend_from_slice(v);
        }
        Some(Cow::Owned(joined))
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

    #[inline]
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
    fn a_name_set_holds_every_spelling_of_its_names() {
        let set = NameSet::of([&b"x-user-sub"[..], b"x-tenant"]);
        for name in [
            "x-user-sub",
            "X-User-Sub",
            "x_user_sub",
            "X_USER-SUB",
            "X-Tenant",
        ] {
            assert!(NameSet::of([name.as_bytes()]).may_meet(set), "{name}");
        }
        assert!(!NameSet::default().may_meet(set));
        assert!(!set.may_meet(NameSet::default()));
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
        fn what_the_view_found_up_front_is_what_a_walk_finds(
            headers in proptest::collection::vec(
                (
                    prop_oneof![
                        Just(":path".to_string()),
                        Just(":method".to_string()),
                        Just(":authority".to_string()),
                        Just("cookie".to_string()),
                        "[a-zA-Z_:-]{0,12}",
                    ],
                    proptest::collection::vec(any::<u8>(), 0..20),
                ),
                0..12,
            ),
        ) {
            let wire = encode_wire(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            for view in [RequestView::new(&headers), RequestView::wire(&wire)] {
                for name in [":path", ":method", ":authority", "cookie"] {
                    let walked = headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_slice());
                    prop_assert_eq!(view.get(name), walked);
                }
                let cookies: Vec<&[u8]> = headers
                    .iter()
                    .filter(|(n, _)| n == "cookie")
                    .map(|(_, v)| v.as_slice())
                    .collect();
                let joined = (!cookies.is_empty()).then(|| cookies.join(&b"; "[..]));
                prop_assert_eq!(view.cookie().map(Cow::into_owned), joined);
                // Every name present meets the view's names.
                for (n, _) in &headers {
                    prop_assert!(NameSet::of([n.as_bytes()]).may_meet(view.names()));
                }
                prop_assert_eq!(RequestView::wire(&view.to_wire()).iter().count(), headers.len());
            }
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
