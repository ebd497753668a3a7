//! Cookie header parsing: `cookie::pairs`, `find`, `scan` (with the session's chunked name; over
//! the raw bytes too, where it tells ASCII),
//! `cookie::read_chunked` / `stale_chunks`, and a chunk → read round trip.
#![no_main]

use edge_token_relay::http::cookie;
use libfuzzer_sys::fuzz_target;

const AT: &str = "__Host-relay-at";
const SESSION: &str = "__Host-relay-session";
const CSRF: &str = "__Host-relay-csrf";

fuzz_target!(|data: &[u8]| {
    let header = String::from_utf8_lossy(data);
    let header = header.as_ref();

    let pairs: Vec<(&str, &str)> = cookie::pairs(header).collect();
    for (name, _) in &pairs {
        assert!(!name.is_empty());
        // find returns the first occurrence, as pairs lists it.
        let first = pairs.iter().find(|(n, _)| n == name).map(|(_, v)| *v);
        assert_eq!(cookie::find(header, name), first);
    }

    let scan = cookie::scan(header.as_bytes(), [AT, SESSION, CSRF], |n| {
        cookie::is_chunk_of(n, SESSION) || cookie::is_chunk_of(n, AT)
    });
    for (i, want) in [AT, SESSION, CSRF].iter().enumerate() {
        assert_eq!(scan.values[i], cookie::find(header, want).map(str::as_bytes), "{want}");
    }
    // Over the raw bytes: the scan tells whether the header is ASCII.
    let raw = cookie::scan(data, [AT, SESSION, CSRF], |_| false);
    assert_eq!(raw.ascii, data.is_ascii());
    let _ = raw.remainder();
    // The relay's cookies (and chunks of the session and access token) never survive into the
    // remainder.
    if let Some(rest) = scan.remainder() {
        let again = cookie::scan(rest.as_bytes(), [AT, SESSION, CSRF], |n| {
            cookie::is_chunk_of(n, SESSION) || cookie::is_chunk_of(n, AT)
        });
        assert_eq!(again.values, [None, None, None]);
        assert!(!again.any_found);
    }

    let sealed = cookie::read_chunked(header, SESSION);
    let stale = cookie::stale_chunks(header, SESSION, &[]);
    if sealed.is_some() {
        assert!(!stale.is_empty());
    }
    let _ = cookie::is_valid_name(header);
    let _ = cookie::is_valid_value(header);

    // Round trip: a cookie-safe value, chunked and sent back, reads as itself. Repeat the input
    // so values long enough to need several chunks are common.
    let value: String = header
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'))
        .collect();
    let repeat = data.first().map_or(1, |b| usize::from(b % 16) + 1);
    let value = value.repeat(repeat);
    if !value.is_empty() && value.len() <= cookie::MAX_CHUNKS * cookie::CHUNK_LIMIT {
        let written = cookie::chunk(SESSION, &value);
        let sent = written
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect::<Vec<_>>()
            .join("; ");
        assert_eq!(
            cookie::read_chunked(&sent, SESSION).as_deref(),
            Some(value.as_str())
        );
        assert!(cookie::stale_chunks(&sent, SESSION, &written).is_empty());
    }
});
