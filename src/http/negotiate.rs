//! Content negotiation: what a client prefers (HTML or JSON), and whether a request is a
//! browser navigation.

/// A q-value in thousandths (RFC 9110 §12.4.2: `0` to `1` with at most three decimals; more
/// decimals are cut, not refused). `None` for anything else, which counts as `q=0`. Integers,
/// not floats: a float parser was 4 KB of the module for this.
fn qvalue(v: &str) -> Option<u16> {
    let (whole, fraction) = v.split_once('.').unwrap_or((v, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() || whole.len() > 4 || !digits(whole) || !digits(fraction) {
        return None;
    }
    let mut q: u16 = whole.parse().ok()?;
    let mut fraction = fraction.bytes();
    for _ in 0..3 {
        let digit = fraction.next().map_or(0, |b| u16::from(b - b'0'));
        q = q.checked_mul(10)?.checked_add(digit)?;
    }
    let exactly_one = q == 1000 && fraction.all(|b| b == b'0');
    (q < 1000 || exactly_one).then_some(q)
}

/// The `q` of `text/html` and of `application/json` in an Accept header, in thousandths
/// (`None`: not listed explicitly; wildcards do not count).
fn accept_q(accept: &str) -> (Option<u16>, Option<u16>) {
    let (mut html, mut json) = (None::<u16>, None::<u16>);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(Some(1000), qvalue)
            .unwrap_or(0);
        let slot = if media.eq_ignore_ascii_case("text/html") {
            &mut html
        } else if media.eq_ignore_ascii_case("application/json") {
            &mut json
        } else {
            continue;
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    (html, json)
}

/// Whether an error should be an HTML page: the Accept header lists `text/html` with a higher
/// preference than `application/json` (browsers' navigations do; `fetch`'s `*/*` does not).
pub fn wants_html(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    match accept_q(accept) {
        (Some(h), Some(j)) => h > 0 && h > j,
        (Some(h), None) => h > 0,
        _ => false,
    }
}

/// Whether the client explicitly prefers JSON to HTML (a `fetch` with `Accept:
/// application/json`).
pub fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    match accept_q(accept) {
        (Some(h), Some(j)) => j > 0 && j > h,
        (None, Some(j)) => j > 0,
        _ => false,
    }
}

/// Whether a request is a browser navigation (to be sent to the login page rather than given a
/// 401): `Sec-Fetch-Mode: navigate`, or, from browsers that send no Fetch Metadata, a `GET`
/// accepting `text/html`.
pub fn is_navigation(method: &str, sec_fetch_mode: Option<&str>, accept: Option<&str>) -> bool {
    match sec_fetch_mode {
        Some(mode) => mode.trim().eq_ignore_ascii_case("navigate"),
        None => {
            method == "GET" && accept.is_some_and(|a| a.to_ascii_lowercase().contains("text/html"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qvalues_follow_rfc_9110() {
        for (v, q) in [
            ("1", Some(1000)),
            ("1.", Some(1000)),
            ("1.000", Some(1000)),
            ("1.0000", Some(1000)),
            ("0", Some(0)),
            ("0.5", Some(500)),
            ("0.05", Some(50)),
            ("0.001", Some(1)),
            ("0.9999", Some(999)),
            ("00.8", Some(800)),
            ("1.001", None),
            ("2", None),
            ("10", None),
            (".5", None),
            ("", None),
            ("-0.5", None),
            ("+0.5", None),
            ("0.5e0", None),
            ("inf", None),
            ("NaN", None),
            ("0.5.5", None),
            ("65535", None),
            ("99999999999", None),
        ] {
            assert_eq!(qvalue(v), q, "{v:?}");
        }
    }

    /// The integer reading orders every well-formed q-value as the float one did.
    #[test]
    fn qvalues_agree_with_their_float_reading() {
        for whole in ["0", "1"] {
            for n in 0..=1000u32 {
                for v in [format!("{whole}.{n:03}"), format!("{whole}.{}", n / 10)] {
                    let float = v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q));
                    let int = qvalue(&v);
                    assert_eq!(int.is_some(), float.is_some(), "{v}");
                    if let (Some(i), Some(f)) = (int, float) {
                        assert!((f32::from(i) / 1000.0 - f).abs() < 1e-6, "{v}");
                    }
                }
            }
        }
    }
}
