//! Content negotiation: what a client prefers (HTML or JSON), and whether a request is a
//! browser navigation.

/// The `q` of `text/html` and of `application/json` in an Accept header (`None`: not listed
/// explicitly; wildcards do not count).
fn accept_q(accept: &str) -> (Option<f32>, Option<f32>) {
    let (mut html, mut json) = (None::<f32>, None::<f32>);
    for range in accept.split(',') {
        let mut parts = range.split(';');
        let media = parts.next().unwrap_or("").trim();
        let q = parts
            .filter_map(|p| {
                let (k, v) = p.split_once('=')?;
                k.trim().eq_ignore_ascii_case("q").then(|| v.trim())
            })
            .next()
            .map_or(Some(1.0), |v| {
                v.parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q))
            })
            .unwrap_or(0.0);
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
        (Some(h), Some(j)) => h > 0.0 && h > j,
        (Some(h), None) => h > 0.0,
        _ => false,
    }
}

/// Whether the client explicitly prefers JSON to HTML (a `fetch` with `Accept:
/// application/json`).
pub fn prefers_json(accept: Option<&str>) -> bool {
    let Some(accept) = accept else { return false };
    match accept_q(accept) {
        (Some(h), Some(j)) => j > 0.0 && j > h,
        (None, Some(j)) => j > 0.0,
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
