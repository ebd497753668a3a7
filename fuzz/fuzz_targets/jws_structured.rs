//! `token::verify` on tokens assembled from the input: a JOSE header built member by member,
//! claims built claim by claim, and a signature that is usually real (Ed25519 and ES256 are
//! signed here with the fixture keys), so the parser, the signature check and the claim checks
//! are all reached. All-zero input is a valid EdDSA token.
#![no_main]

use edge_token_relay::jwt::token::{self, TokenError};
use edge_token_relay_fuzz::{
    arbitrary::Unstructured, b64, bytes, claims, flag, json_value, keys, pick, rules, signature,
    text, time, Signer, RS256_TOKEN,
};
use libfuzzer_sys::fuzz_target;
use serde_json::json;

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let u = &mut u;

    // Header.
    let (alg, signer, kid) = match pick(u, 8) {
        0 => (Some("EdDSA".to_string()), Some(Signer::Ed25519), "ed-1"),
        1 => (Some("ES256".to_string()), Some(Signer::Es256), "ec-1"),
        2 => (Some("RS256".to_string()), None, "rsa-1"),
        3 => (Some("none".to_string()), None, "ed-1"),
        4 => (Some("HS256".to_string()), None, "ed-1"),
        5 => (None, Some(Signer::Ed25519), "ed-1"),
        6 => (Some("eddsa".to_string()), Some(Signer::Ed25519), "ed-1"),
        _ => (Some(text(u)), Some(Signer::Ed25519), "ed-1"),
    };
    let header_json = if pick(u, 16) == 15 {
        String::from_utf8_lossy(&bytes(u)).into_owned()
    } else {
        let mut m: Vec<String> = Vec::new();
        if let Some(alg) = &alg {
            m.push(format!("\"alg\":{}", json!(alg)));
        }
        match pick(u, 7) {
            0 => m.push(format!("\"kid\":{}", json!(kid))),
            1 => m.push("\"kid\":\"ed-1\"".into()),
            2 => m.push("\"kid\":\"ec-1\"".into()),
            3 => m.push("\"kid\":\"rsa-1\"".into()),
            4 => {}
            5 => m.push(format!("\"kid\":{}", json!(text(u)))),
            _ => m.push(format!("\"kid\":{}", json_value(u))),
        }
        match pick(u, 6) {
            0 => m.push("\"typ\":\"JWT\"".into()),
            1 => {}
            2 => m.push("\"typ\":\"at+jwt\"".into()),
            3 => m.push("\"typ\":\"application/JWT\"".into()),
            4 => m.push(format!("\"typ\":{}", json!(text(u)))),
            _ => m.push(format!("\"typ\":{}", json_value(u))),
        }
        if flag(u) {
            let name = ["crit", "alg", "kid", "typ", "jku", "x5u"][pick(u, 6)];
            m.push(format!("{}:{}", json!(name), json_value(u)));
        }
        format!("{{{}}}", m.join(","))
    };
    let payload_json = claims(u);

    // Encoding quirks: padding, the standard alphabet, whitespace.
    let mangle = |s: String, how: usize| match how {
        1 => format!("{s}="),
        2 => s.replace('-', "+").replace('_', "/"),
        3 => format!(" {s}"),
        _ => s,
    };
    let header_b64 = mangle(b64(header_json.as_bytes()), pick(u, 24));
    let payload_b64 = mangle(b64(payload_json.as_bytes()), pick(u, 24));
    let signing_input = format!("{header_b64}.{payload_b64}");

    let sig = match (pick(u, 6), signer) {
        (0 | 1, Some(s)) => signature(s, signing_input.as_bytes()),
        (2, Some(s)) => {
            // A real signature with one bit flipped.
            let mut sig = signature(s, signing_input.as_bytes());
            let i = pick(u, sig.len());
            if let Some(b) = sig.get_mut(i) {
                *b ^= 1 << pick(u, 8);
            }
            sig
        }
        (3, _) => Vec::new(),
        (4, _) => RS256_TOKEN
            .rsplit('.')
            .next()
            .map(|s| s.as_bytes().to_vec())
            .unwrap_or_default(),
        _ => bytes(u),
    };
    let mut token_str = format!("{signing_input}.{}", mangle(b64(&sig), pick(u, 24)));
    if pick(u, 32) == 31 {
        token_str.push('.');
        token_str.push_str(&text(u));
    }

    let rules = rules();
    let now = time(u);
    let result = token::verify(&token_str, keys(), &rules, now);
    match &result {
        Ok(v) => {
            assert!(now < v.exp.saturating_add(rules.clock_skew_s));
            assert!(v.exp <= token::MAX_TIMESTAMP);
            for (_, value) in &v.forwarded {
                assert!(!value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f));
            }
        }
        Err(e) => {
            let _ = (e.code(), e.to_string());
        }
    }
    // Only a token signed with the fixture keys can pass: anything else verifying would be
    // a forgery. (The RS256 signature is copied from a valid token over another input.)
    if result.is_ok() {
        assert!(
            signer.is_some() || token_str == RS256_TOKEN,
            "verified without a signer: {token_str}"
        );
    }
    // alg none and HMAC are never accepted, whatever the key (and with a well-formed header
    // they are refused for what they are).
    if matches!(alg.as_deref(), Some("none" | "HS256")) {
        assert!(result.is_err());
        if header_json.starts_with("{\"alg\":") && !header_b64.contains(['=', '+', '/', ' ']) {
            assert!(
                matches!(
                    result,
                    Err(TokenError::UnsupportedAlg | TokenError::Malformed)
                ),
                "{result:?}"
            );
        }
    }
});
