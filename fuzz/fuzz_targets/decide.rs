//! `relay::decide` with a fixed configuration (inline keys, silent refresh) on a request
//! built from the input: a path, a Cookie header (assembled from valid and broken access
//! tokens, sealed sessions, chunks and junk, or raw bytes), `now`, and whether keys are loaded.
//! When it asks for a refresh, `relay::complete_refresh` runs with each `RefreshOutcome`
//! (tokens from the input, `Invalid`, `Unavailable`); `upstream_rotation` runs too.
//! All-zero input is a protected path with a valid access token and a valid session.
#![no_main]

use edge_token_relay::config::Config;
use edge_token_relay::csrf::add_cors;
use edge_token_relay::http::{cookie, RequestView};
use edge_token_relay::jar::clear_relay_cookies;
use edge_token_relay::jwt::Verifier;
use edge_token_relay::random::Random;
use edge_token_relay::relay::{self, RefreshOutcome, Step};
use edge_token_relay::idp::Tokens;
use edge_token_relay::session::{self, Session};
use edge_token_relay::jwt::token_cache::TokenCache;
use edge_token_relay_fuzz::{
    arbitrary::Unstructured, b64, bytes, claims, config, config_keys, flag, pick, session_keys,
    sign, text, time, Signer, NOW, RS256_TOKEN,
};
use libfuzzer_sys::fuzz_target;

const AT: &str = "__Host-relay-at";
const SESSION: &str = "__Host-relay-session";
const CSRF: &str = "__Host-relay-csrf";

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;
    let config = config(pick(u, 2));

    let path = match pick(u, 7) {
        0 => "/api/me".to_string(),
        1 => "/api/public/health".to_string(),
        2 => "/".to_string(),
        3 => "/api/public/../admin".to_string(),
        4 => "/api/public/%2e%2e/x?y=1".to_string(),
        5 => format!("/api/{}", text(u)),
        _ => text(u),
    };
    let keys = if pick(u, 8) == 7 {
        None
    } else {
        Some(config_keys())
    };
    let allow_kid_refetch = !flag(u);
    let now = time(u);
    let iv = Random {
        iv: u.arbitrary().unwrap_or([0; 12]),
        csrf: u.arbitrary().unwrap_or([0; 32]),
        verifier: [1; 32],
        state: [2; 32],
        nonce: [3; 32],
    };
    let cookie: Option<Vec<u8>> = match pick(u, 10) {
        8 => Some(bytes(u)),
        9 => None,
        _ => Some(build_cookie(u).into_bytes()),
    };
    let tokens = Tokens {
        access_token: access_token(u),
        refresh_token: if flag(u) { None } else { Some(text(u)) },
        id_token: if flag(u) { Some(text(u)) } else { None },
    };
    let retry_after_s = u.arbitrary::<u64>().unwrap_or(0);

    // The request's headers: pseudo-headers, CSRF-relevant headers, the cookie (sometimes
    // split over two Cookie headers, as HTTP/2 allows), and padding for the header budget.
    let method = ["GET", "POST", "DELETE", "OPTIONS", "PROPFIND"]
        .get(pick(u, 6))
        .map_or_else(|| text(u), |m| m.to_string());
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (":method".into(), method.into_bytes()),
        (":path".into(), path.into_bytes()),
        (
            ":authority".into(),
            match pick(u, 3) {
                0 => b"app.example.com".to_vec(),
                1 => bytes(u),
                _ => b"app.example.com:8443".to_vec(),
            },
        ),
        (":scheme".into(), b"https".to_vec()),
    ];
    let origin = match pick(u, 5) {
        0 => Some(b"https://app.example.com".to_vec()),
        1 => None,
        2 => Some(b"https://evil.test".to_vec()),
        3 => Some(b"null".to_vec()),
        _ => Some(bytes(u)),
    };
    if let Some(o) = origin {
        headers.push(("origin".into(), o));
    }
    for (name, choice) in [("referer", pick(u, 3)), ("sec-fetch-site", pick(u, 4))] {
        match (name, choice) {
            (_, 0) => {}
            ("referer", 1) => headers.push((name.into(), b"https://app.example.com/x".to_vec())),
            ("sec-fetch-site", 1) => headers.push((name.into(), b"cross-site".to_vec())),
            ("sec-fetch-site", 2) => headers.push((name.into(), b"same-origin".to_vec())),
            _ => headers.push((name.into(), bytes(u))),
        }
    }
    if let Some(c) = &cookie {
        let csrf = cookie::find(std::str::from_utf8(c).unwrap_or(""), CSRF).unwrap_or("");
        match pick(u, 3) {
            0 => headers.push(("x-csrf-token".into(), csrf.as_bytes().to_vec())),
            1 => {}
            _ => headers.push(("x-csrf-token".into(), bytes(u))),
        }
        if flag(u) && c.len() > 1 {
            let (a, b) = c.split_at(pick(u, c.len()));
            headers.push(("cookie".into(), a.to_vec()));
            headers.push(("cookie".into(), b.to_vec()));
        } else {
            headers.push(("cookie".into(), c.clone()));
        }
    }
    for _ in 0..pick(u, 4) {
        let name = ["authorization", "x-user-sub", "x-padding", "x-groups"][pick(u, 4)];
        let len = usize::from(u.arbitrary::<u16>().unwrap_or(0) % 10_000);
        headers.push((name.into(), vec![b'p'; len]));
    }

    let req = RequestView::new(&headers);
    let outcomes = [
        RefreshOutcome::Tokens(tokens.clone()),
        RefreshOutcome::Invalid,
        RefreshOutcome::Failed {
            retry_at: now.saturating_add(retry_after_s),
        },
    ];
    for outcome in outcomes {
        // A fresh cache each time, so every outcome sees the same decision.
        let mut cache = TokenCache::new(16);
        match relay::decide(config, keys, &mut cache, &req, now, allow_kid_refetch) {
            Step::Refresh(need) => {
                let _ = format!("{need:?}");
                let verifier = Verifier {
                    keys,
                    cache: &mut cache,
                };
                let done =
                    relay::complete_refresh(config, verifier, &req, need, &outcome, now, &iv);
                assert!(!matches!(done.step, Step::Refresh(_) | Step::UnknownKid));
                check_step(config, &req, done.step);
                done.set_cookies.iter().for_each(|c| check_set_cookie(c));
            }
            other => {
                check_step(config, &req, other);
                break;
            }
        }
    }

    let header = cookie
        .as_deref()
        .and_then(|c| std::str::from_utf8(c).ok())
        .unwrap_or("");
    let mut cache = TokenCache::new(16);
    let verifier = Verifier {
        keys,
        cache: &mut cache,
    };
    let rotated = relay::upstream_rotation(
        config,
        verifier,
        header,
        Some(tokens.access_token.as_str()),
        tokens.refresh_token.as_deref(),
        now,
        &iv,
    );
    rotated.iter().for_each(|c| check_set_cookie(c));
    clear_relay_cookies(config, header)
        .iter()
        .for_each(|c| check_set_cookie(c));
});

/// What any decision must satisfy.
fn check_step(config: &Config, req: &RequestView<'_>, step: Step<'_>) {
    match step {
        Step::Forward(f) => {
            assert!(f.authorization.starts_with("Bearer "));
            // The relay's cookies never reach the upstream.
            if let Some(rest) = &f.cookie {
                let again = cookie::scan(rest.as_bytes(), [AT, SESSION, CSRF], |n| {
                    cookie::is_chunk_of(n, SESSION)
                        || cookie::is_chunk_of(n, AT)
                        || n.starts_with("__Host-relay-flow-")
                });
                assert_eq!(again.values, [None, None, None]);
                assert!(!again.any_found, "relay cookie forwarded: {rest}");
            }
            for (header, value) in f.claim_headers() {
                assert!(!header.is_empty());
                if let Some(v) = value {
                    assert!(!v.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f));
                }
            }
        }
        Step::Respond(mut r) => {
            add_cors(config.csrf.as_ref(), req, &mut r);
            assert!((400..600).contains(&r.status), "{}", r.status);
            assert!(serde_json::from_str::<serde_json::Value>(&r.body).is_ok());
            for (name, value) in r.headers {
                assert!(
                    !value.bytes().any(|b| b < 0x20 || b == 0x7f),
                    "{name}: {value:?}"
                );
                if name == "set-cookie" {
                    check_set_cookie(&value);
                }
            }
        }
        Step::Pass | Step::UnknownKid | Step::Refresh(_) => {}
    }
}

/// A Set-Cookie value the filter emits: no control characters, a valid name and value.
fn check_set_cookie(c: &str) {
    assert!(!c.bytes().any(|b| b < 0x20 || b == 0x7f), "{c:?}");
    let pair = c.split(';').next().unwrap_or("");
    let (name, value) = pair.split_once('=').expect("name=value");
    assert!(cookie::is_valid_name(name), "{c:?}");
    assert!(cookie::is_valid_value(value), "{c:?}");
}

fn access_token(u: &mut Unstructured<'_>) -> String {
    let header = |alg: &str, kid: &str| {
        b64(format!(r#"{{"alg":"{alg}","kid":"{kid}","typ":"JWT"}}"#).as_bytes())
    };
    match pick(u, 8) {
        0 => sign(
            Signer::Ed25519,
            &header("EdDSA", "ed-1"),
            &b64(claims(u).as_bytes()),
        ),
        1 => sign(
            Signer::Es256,
            &header("ES256", "ec-1"),
            &b64(claims(u).as_bytes()),
        ),
        2 => RS256_TOKEN.to_string(),
        3 => text(u),
        4 => String::new(),
        5 => sign(
            Signer::Ed25519,
            &header("EdDSA", "rotated"),
            &b64(claims(u).as_bytes()),
        ),
        6 => format!(
            "\"{}\"",
            sign(
                Signer::Ed25519,
                &header("EdDSA", "ed-1"),
                &b64(claims(u).as_bytes())
            )
        ),
        _ => {
            let mut t = sign(
                Signer::Ed25519,
                &header("EdDSA", "ed-1"),
                &b64(claims(u).as_bytes()),
            );
            t.push_str(&text(u));
            t
        }
    }
}

fn sealed_session(u: &mut Unstructured<'_>) -> String {
    let session = Session {
        rt: format!("rt-{}", text(u)),
        exp: match pick(u, 3) {
            0 => None,
            1 => Some(NOW + 3600),
            _ => Some(time(u)),
        },
        id_token: if flag(u) { Some(text(u)) } else { None },
    };
    let iv = Random {
        iv: u.arbitrary().unwrap_or([0; 12]),
        csrf: u.arbitrary().unwrap_or([0; 32]),
        verifier: [1; 32],
        state: [2; 32],
        nonce: [3; 32],
    };
    match pick(u, 5) {
        0 => session::seal(session_keys(false), &session, iv.iv),
        1 => session::seal(session_keys(true), &session, iv.iv),
        2 => text(u),
        3 => {
            let mut s = session::seal(session_keys(false), &session, iv.iv).into_bytes();
            let i = pick(u, s.len());
            if let Some(c) = s.get_mut(i) {
                *c = if *c == b'A' { b'B' } else { b'A' };
            }
            String::from_utf8_lossy(&s).into_owned()
        }
        _ => {
            let rt = Session {
                rt: String::new(),
                ..session
            };
            session::seal(session_keys(false), &rt, iv.iv)
        }
    }
}

fn build_cookie(u: &mut Unstructured<'_>) -> String {
    const KINDS: usize = 9;
    let n = 2 + pick(u, 6);
    let mut parts: Vec<String> = Vec::with_capacity(n);
    for i in 0..n {
        let part = match (i + pick(u, KINDS)) % KINDS {
            0 => format!("{AT}={}", access_token(u)),
            1 => format!("{SESSION}={}", sealed_session(u)),
            2 => {
                // The session or the access token split into chunks, possibly missing,
                // reordered or duplicated.
                let (name, sealed) = if flag(u) {
                    (AT, access_token(u))
                } else {
                    (SESSION, sealed_session(u))
                };
                let k = 1 + pick(u, 4);
                let size = sealed.len().div_ceil(k).max(1);
                let mut chunks: Vec<String> = sealed
                    .as_bytes()
                    .chunks(size)
                    .enumerate()
                    .map(|(j, c)| format!("{name}.{j}={}", String::from_utf8_lossy(c)))
                    .collect();
                match pick(u, 4) {
                    1 if !chunks.is_empty() => {
                        let j = pick(u, chunks.len());
                        chunks.remove(j);
                    }
                    2 => chunks.reverse(),
                    3 => {
                        let j = pick(u, chunks.len());
                        if let Some(c) = chunks.get(j).cloned() {
                            chunks.push(c);
                        }
                    }
                    _ => {}
                }
                chunks.join("; ")
            }
            3 => format!("{CSRF}={}", text(u)),
            4 => format!("theme={}", text(u)),
            5 => text(u),
            6 => format!("{SESSION}.0{}={}", pick(u, 10), text(u)),
            7 => format!(" {AT} = {} ", text(u)),
            _ => "flag".to_string(),
        };
        parts.push(part);
    }
    let sep = ["; ", ";", " ;  ", ";;"][pick(u, 4)];
    parts.join(sep)
}
