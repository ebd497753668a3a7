//! `oidc::callback` (the login callback: `state`, `code`, `error`, `iss` against the sealed
//! flow cookie) with the login configuration of `login_config`, and `url::parse_query`,
//! `single` and `with_query` on the same parameters. The query is either the raw input or
//! assembled from it (each parameter present, absent, empty, repeated or odd, in any order,
//! with encoding quirks); the Cookie header carries a flow cookie that is valid for the state,
//! for another state, expired, sealed with the older key, tampered, or junk.
//! All-zero input is a valid callback for a fresh flow.
#![no_main]

use edge_token_relay::http::url::{parse_query, query_encode, single, with_query, MAX_QUERY_PARAMS};
use edge_token_relay::oidc::{self, Flow, FLOW_MAX_AGE_S};
use edge_token_relay::session;
use edge_token_relay_fuzz::{
    arbitrary::Unstructured, flag, login_config, pick, session_keys, text, time, ISS, NOW,
};
use libfuzzer_sys::fuzz_target;

const STATE: &str = "c3RhdGUtZnJvbS10aGUtZmxvdw";
const VERIFIER: &str = "dmVyaWZpZXItdmVyaWZpZXItdmVyaWZpZXItdmVyaWZpZXI";

fuzz_target!(|data: &[u8]| {
    let config = login_config();
    let (Some(login), Some(refresh)) = (config.login.as_ref(), config.refresh.as_ref()) else {
        panic!("fixture has login and refresh");
    };
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let raw = flag(u) && flag(u);

    // The query.
    let mut params: Vec<(String, String)> = Vec::new();
    let state = match pick(u, 5) {
        0 => STATE.to_owned(),
        1 => String::new(),
        2 => format!("{STATE}x"),
        _ => text(u),
    };
    let state_present = pick(u, 6) != 5;
    if state_present {
        params.push(("state".into(), state.clone()));
    }
    let code = match pick(u, 4) {
        0 => Some("the-code".to_owned()),
        1 => None,
        2 => Some(String::new()),
        _ => Some(text(u)),
    };
    if let Some(c) = &code {
        params.push(("code".into(), c.clone()));
    }
    let error = match pick(u, 5) {
        0 | 1 => None,
        2 => Some("access_denied".to_owned()),
        3 => Some("login_required".to_owned()),
        _ => Some(text(u)),
    };
    if let Some(e) = &error {
        params.push(("error".into(), e.clone()));
    }
    let iss = match pick(u, 4) {
        0 | 1 => None,
        2 => Some(ISS.to_owned()),
        _ => Some(text(u)),
    };
    if let Some(i) = &iss {
        params.push(("iss".into(), i.clone()));
    }
    for _ in 0..pick(u, 3) {
        let name = ["state", "code", "error", "iss", "x", "error_description"][pick(u, 6)];
        params.push((name.into(), text(u)));
    }
    if flag(u) && params.len() > 1 {
        let i = pick(u, params.len());
        let last = params.len() - 1;
        params.swap(i, last);
    }
    let query = if raw {
        text(u)
    } else {
        let refs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let q = with_query("", &refs);
        let q = q.strip_prefix('?').unwrap_or(&q).to_owned();
        match pick(u, 4) {
            // `+` for spaces and lower-case escapes decode the same.
            1 => q.replace("%20", "+").to_ascii_lowercase(),
            2 => format!("&&{q}&"),
            _ => q,
        }
    };

    // Query codec: what `with_query` wrote, `parse_query` reads back (up to 64 parameters).
    let parsed = parse_query(&query);
    assert!(parsed.len() <= MAX_QUERY_PARAMS);
    if !raw && params.len() <= MAX_QUERY_PARAMS && !query.contains('+') && query == query_of(&params) {
        assert_eq!(parsed, params, "query round trip: {query:?}");
    }

    // The flow cookie.
    let now = time(u);
    let created = match pick(u, 4) {
        0 => NOW,
        1 => NOW - FLOW_MAX_AGE_S,
        2 => NOW - FLOW_MAX_AGE_S + 1,
        _ => time(u),
    };
    let sealed_state = match pick(u, 3) {
        0 => STATE.to_owned(),
        1 => format!("{STATE}x"),
        _ => text(u),
    };
    let flow = Flow {
        v: VERIFIER.into(),
        s: sealed_state.clone(),
        n: "nonce".into(),
        r: if flag(u) { text(u) } else { "/page".into() },
        t: created,
    };
    let older = flag(u);
    let iv: [u8; 12] = u.arbitrary().unwrap_or([0; 12]);
    let mut value = session::seal_json(session_keys(older), &flow, iv);
    let tampered = match pick(u, 5) {
        0 | 1 => false,
        2 => {
            value = text(u);
            true
        }
        _ => {
            let i = pick(u, value.len());
            let mut b = value.clone().into_bytes();
            if let Some(c) = b.get_mut(i) {
                *c = if *c == b'A' { b'B' } else { b'A' };
            }
            value = String::from_utf8(b).unwrap_or_default();
            true
        }
    };
    let cookie_state = if flag(u) { state.clone() } else { sealed_state.clone() };
    let flow_name = login.flow_cookie_name(&cookie_state);
    let cookie_header = match pick(u, 4) {
        0 | 1 => format!("{flow_name}={value}"),
        2 => format!("a=b; {flow_name}={value}; c=d"),
        _ => text(u),
    };
    let html = flag(u);

    let outcome = oidc::callback(config, login, refresh, &query, &cookie_header, html, now);
    match outcome {
        Ok((request, pending)) => {
            // Accepted only with one non-empty state and code, no error, the issuer or none,
            // and a fresh flow cookie for that state whose sealed state matches.
            let state_q = single(&parsed, "state").ok().flatten();
            let code_q = single(&parsed, "code").ok().flatten();
            assert!(state_q.is_some_and(|s| !s.is_empty()));
            assert!(code_q.is_some_and(|c| !c.is_empty()));
            assert_eq!(single(&parsed, "error"), Ok(None));
            assert!(single(&parsed, "iss").ok().flatten().is_none_or(|i| i == ISS));
            if !raw && !tampered && cookie_header.starts_with(&flow_name) {
                assert_eq!(state_q, Some(sealed_state.as_str()), "state not proven");
                assert!(now < created.saturating_add(FLOW_MAX_AGE_S), "expired flow accepted");
            }
            assert!(request.body.contains("grant_type=authorization_code"));
            if !tampered && !raw {
                assert!(request.body.contains(&format!("code_verifier={VERIFIER}")));
            }
            let _ = format!("{pending:?}");
        }
        Err(reply) => {
            assert!(
                matches!(reply.status, 400 | 401 | 502 | 503),
                "status {}",
                reply.status
            );
            for (name, value) in &reply.headers {
                assert!(!value.chars().any(char::is_control), "{name}: {value:?}");
                if *name == "set-cookie" {
                    // An error only clears the used flow cookie; it never sets a session.
                    assert!(value.contains("Max-Age=0"), "{value}");
                    assert!(login.is_flow_cookie(value.split('=').next().unwrap_or("")), "{value}");
                }
                if *name == "location" {
                    assert!(value.starts_with('/') && !value.starts_with("//"), "{value}");
                }
            }
            assert!(!reply.body.contains(VERIFIER));
        }
    }
});

/// The query `with_query` writes for `params`, without the `?`.
fn query_of(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", query_encode(k), query_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}
