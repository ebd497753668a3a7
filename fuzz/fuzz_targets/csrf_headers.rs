//! `csrf::CsrfPolicy::new`, `csrf::check`, `csrf::cors_origin` and
//! `header_budget::{total, over_budget}` on headers decoded from the input.
//! All-zero input is an allowed same-origin POST with a matching double-submit token.
#![no_main]

use edge_token_relay::csrf::{self, CsrfError, CsrfInput, CsrfPolicy};
use edge_token_relay::http::header_budget;
use edge_token_relay_fuzz::{arbitrary::Unstructured, bytes, flag, pick, text};
use libfuzzer_sys::fuzz_target;

const ALLOWED: &str = "https://app.example.com";
/// What the CSRF check trims from header values (HTTP optional whitespace).
const WS: [char; 2] = [' ', '\t'];

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;

    // Configuration: the fixed origin plus one from the input (refused or normalized).
    let double_submit = !flag(u);
    let extra = text(u);
    let policy = match CsrfPolicy::new(&[ALLOWED.to_string(), extra.clone()], double_submit) {
        Ok(p) => {
            // Normalizing is idempotent.
            let again = CsrfPolicy::new(&p.allowed_origins, double_submit).expect("normalized");
            assert_eq!(again, p);
            p
        }
        Err(e) => {
            assert_eq!(e.field(), "csrf.allowed_origins[1]", "{extra:?}");
            assert!(!e.problem.is_empty());
            CsrfPolicy::new(&[ALLOWED.to_string()], double_submit).expect("fixed origin")
        }
    };

    let method = [
        "POST", "PUT", "PATCH", "DELETE", "GET", "HEAD", "OPTIONS", "PROPFIND", "post",
    ]
    .get(pick(u, 10))
    .map_or_else(|| text(u), |m| m.to_string());
    let header = |u: &mut Unstructured<'_>, good: &str, bad: &[&str]| -> Option<String> {
        match pick(u, bad.len() + 3) {
            0 => Some(good.to_string()),
            1 => None,
            2 => Some(text(u)),
            i => bad.get(i - 3).map(|s| s.to_string()),
        }
    };
    let origin = header(
        u,
        ALLOWED,
        &[
            "null",
            "https://evil.test",
            "HTTPS://APP.example.com:443",
            "https://app.example.com/",
            "",
        ],
    );
    let referer = header(
        u,
        "https://app.example.com/page",
        &[
            "https://evil.test/",
            "/relative",
            "https://app.example.com.evil.test",
        ],
    );
    let site = header(u, "same-origin", &["cross-site", "same-site", "none"]);
    let token = csrf::new_token(u.arbitrary().unwrap_or([0; 32]));
    let cookie = header(u, &token, &[""]);
    let x_csrf = header(u, &token, &["", "x"]);

    let input = CsrfInput {
        method: &method,
        origin: origin.as_deref(),
        referer: referer.as_deref(),
        sec_fetch_site: site.as_deref(),
        csrf_cookie: cookie.as_deref(),
        csrf_header: x_csrf.as_deref(),
    };
    let result = csrf::check(&policy, &input);
    let trimmed = origin.as_deref().map(|o| o.trim_matches(WS));
    if let Err(e) = result {
        let _ = (e.code(), e.to_string());
    }
    let exempt = matches!(method.as_str(), "GET" | "HEAD" | "OPTIONS");
    if exempt {
        assert_eq!(result, Ok(()));
    } else {
        if site
            .as_deref()
            .is_some_and(|s| s.trim_matches(WS).eq_ignore_ascii_case("cross-site"))
        {
            assert_eq!(result, Err(CsrfError::CrossSite));
        }
        if result.is_ok() && origin.is_some() {
            // An accepted Origin is one cors_origin echoes.
            assert_eq!(csrf::cors_origin(&policy, origin.as_deref()), trimmed);
        }
        if result.is_ok() && policy.double_submit {
            let cookie = cookie
                .as_deref()
                .expect("double submit passed without a cookie");
            assert!(!cookie.is_empty());
            assert_eq!(Some(cookie), x_csrf.as_deref().map(|h| h.trim_matches(WS)));
        }
    }
    // cors_origin echoes exactly the Origins an unsafe request may come from.
    let echoed = csrf::cors_origin(&policy, origin.as_deref());
    if echoed.is_some() {
        assert_eq!(echoed, trimmed);
    }
    let plain_post = CsrfInput {
        method: "POST",
        origin: origin.as_deref(),
        ..CsrfInput::default()
    };
    let post_ok = csrf::check(
        &CsrfPolicy {
            double_submit: false,
            ..policy.clone()
        },
        &plain_post,
    )
    .is_ok();
    assert_eq!(echoed.is_some(), post_ok, "{origin:?}");

    // Header budget over headers from the input.
    let mut names: Vec<String> = Vec::new();
    let mut values: Vec<Vec<u8>> = Vec::new();
    for _ in 0..pick(u, 12) {
        names.push(match pick(u, 4) {
            0 => "cookie".into(),
            1 => "Cookie".into(),
            2 => "authorization".into(),
            _ => text(u),
        });
        values.push(bytes(u));
    }
    let headers: Vec<(&str, &[u8])> = names
        .iter()
        .map(String::as_str)
        .zip(values.iter().map(Vec::as_slice))
        .collect();
    let budget = usize::from(u.arbitrary::<u16>().unwrap_or(0));
    let total = header_budget::total(&headers);
    match header_budget::over_budget(&headers, budget) {
        None => assert!(budget == 0 || total <= budget),
        Some(o) => {
            assert!(budget != 0 && total > budget);
            assert_eq!((o.total, o.budget), (total, budget));
            assert!(o.bytes <= total);
            assert!(headers.iter().any(|(n, _)| *n == o.header));
            if o.cookie.is_some() {
                assert!(o.header.eq_ignore_ascii_case("cookie"));
            }
            let _ = o.to_string();
        }
    }
});
