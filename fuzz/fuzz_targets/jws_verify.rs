//! `token::verify` on arbitrary token strings against a fixed key set (RSA, P-256, Ed25519)
//! and fixed rules, at four fixed times.
#![no_main]

use edge_token_relay::jwt::token;
use edge_token_relay_fuzz::{keys, rules, NOW};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(token_str) = std::str::from_utf8(data) else {
        return;
    };
    let rules = rules();
    for now in [NOW, NOW + 400, 0, u64::MAX] {
        match token::verify(token_str, keys(), &rules, now) {
            Ok(v) => {
                assert!(v.exp <= token::MAX_TIMESTAMP);
                assert!(now < v.exp.saturating_add(rules.clock_skew_s));
                // Forwarded values become request headers: never a control character.
                for (_, value) in &v.forwarded {
                    assert!(!value.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f));
                }
                let _ = format!("{v:?}");
            }
            Err(e) => {
                let _ = (e.code(), e.to_string());
            }
        }
    }
});
