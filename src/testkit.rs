//! Test-only helpers shared by module tests: an Ed25519 signer (RFC 8032 test key) and
//! a configuration builder.
#![cfg(test)]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jwt_compact::alg::Ed25519;
use jwt_compact::Algorithm;
use serde_json::{json, Value};

use crate::config::Config;
use crate::session::{self, Session, SessionKeys};

pub const NOW: u64 = 1_700_000_000;
pub const ISS: &str = "https://idp.test";
pub const AUD: &str = "my-app-client-id";
pub const KID: &str = "ed-1";

// RFC 8032 7.1 TEST 1.
const ED_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
const ED_X: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

/// Bytes of a hex string (test vectors).
pub fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

pub fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

pub fn jwks() -> Value {
    json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "kid": KID, "x": b64(&hex(ED_X))}]})
}

/// Claims of a valid access token at `NOW`.
pub fn claims() -> Value {
    json!({"iss": ISS, "aud": AUD, "token_use": "access", "sub": "alice", "exp": NOW + 300, "iat": NOW})
}

/// Signs `claims` with the test key under `kid`.
pub fn sign_with_kid(claims: &Value, kid: &str) -> String {
    let key =
        <<Ed25519 as Algorithm>::SigningKey as jwt_compact::alg::SigningKey<Ed25519>>::from_slice(
            &hex(ED_SEED),
        )
        .unwrap();
    let header = json!({"alg": "EdDSA", "kid": kid, "typ": "JWT"});
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let sig = Ed25519.sign(&key, input.as_bytes());
    format!(
        "{input}.{}",
        b64(jwt_compact::AlgorithmSignature::as_bytes(&sig).as_ref())
    )
}

pub fn sign(claims: &Value) -> String {
    sign_with_kid(claims, KID)
}

/// The example configuration with inline test keys; `extra` is merged on top.
pub fn config(extra: Value) -> Config {
    let mut v = json!({
        "protected_prefixes": ["/api/"],
        "public_prefixes": ["/api/public/"],
        "issuer": ISS,
        "audiences": [AUD],
        "required_claims": {"token_use": "access"},
        "clock_skew_s": 30,
        "jwks": {"inline": jwks()},
        "forward_claims": {"x-user-sub": "sub"}
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    Config::parse(v.to_string().as_bytes()).unwrap()
}

/// The inline key set of a configuration built by [`config`].
pub fn inline_keys(c: &Config) -> &crate::jwt::jwks::KeySet {
    match &c.jwks {
        crate::config::JwksSource::Inline(k) => k,
        crate::config::JwksSource::Remote { .. } => panic!("inline keys expected"),
    }
}

/// A request's headers: method, path, optional cookie bytes, and extra headers.
pub fn request(
    method: &str,
    path: &str,
    cookie: Option<&[u8]>,
    extra: &[(&str, &str)],
) -> Vec<(String, Vec<u8>)> {
    let mut h = vec![
        (":method".to_string(), method.as_bytes().to_vec()),
        (":path".to_string(), path.as_bytes().to_vec()),
        (":authority".to_string(), b"app.example.com".to_vec()),
    ];
    if let Some(c) = cookie {
        h.push(("cookie".to_string(), c.to_vec()));
    }
    for (n, v) in extra {
        h.push((n.to_string(), v.as_bytes().to_vec()));
    }
    h
}

/// The current session key of [`refresh_config`] (kid `k1`): fixed random bytes, a test key.
pub const SESSION_KEY: [u8; 32] = [
    224, 120, 184, 62, 204, 236, 173, 10, 12, 201, 117, 181, 159, 98, 255, 116, 99, 107, 222, 142,
    17, 4, 8, 137, 32, 137, 234, 92, 212, 88, 49, 127,
];
/// The retired session key of [`refresh_config`] (kid `k0`).
pub const RETIRED_SESSION_KEY: [u8; 32] = [
    151, 68, 77, 34, 204, 62, 81, 128, 12, 232, 107, 168, 22, 28, 124, 167, 202, 139, 174, 171, 44,
    157, 16, 221, 16, 184, 11, 152, 129, 183, 41, 114,
];

/// [`config`] with sessions and a token endpoint (cluster `idp`); `extra` is merged on top.
pub fn refresh_config(extra: Value) -> Config {
    let mut v = json!({
        "session_keys": [{"kid": "k1", "key": b64(&SESSION_KEY)}, {"kid": "k0", "key": b64(&RETIRED_SESSION_KEY)}],
        "token_endpoint": {"cluster": "idp", "authority": "idp", "path": "/token"},
        "client_id": "relay",
    });
    if let (Some(obj), Some(extra)) = (v.as_object_mut(), extra.as_object()) {
        for (k, val) in extra {
            obj.insert(k.clone(), val.clone());
        }
    }
    config(v)
}

/// A session cookie value holding refresh token `rt`, sealed with the current key
/// (`kid_index` 0) or the retired one (1).
pub fn sealed(c: &Config, rt: &str, exp: Option<u64>, kid_index: usize) -> String {
    let Some(r) = c.refresh.as_ref() else {
        panic!("a configuration with sessions expected");
    };
    let keys = if kid_index == 0 {
        r.session_keys.clone()
    } else {
        SessionKeys::from_config(&[("k0".to_string(), b64(&RETIRED_SESSION_KEY))]).unwrap()
    };
    let s = Session {
        rt: rt.into(),
        exp,
        id_token: None,
    };
    session::seal(&keys, &s, [1u8; 12])
}
