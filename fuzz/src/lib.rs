//! Shared fixtures for the fuzz targets: fixed test keys, rules and configuration, signers, and
//! small decoders over `arbitrary::Unstructured`.
//!
//! TEST KEYS ONLY (see gen_seeds.py): the RSA key is src/testdata's "rsa2048", the Ed25519 key
//! is RFC 8032 7.1 TEST 1, the P-256 key comes from a fixed scalar.
//!
//! The decoders are written so that all-zero input picks the "valid" option of every choice
//! (a valid token, a valid session, …): a seed of zeros starts the fuzzer on the deep path.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use edge_token_relay::config::{Config, JwksSource};
use edge_token_relay::jwt::jwks::{AlgSet, KeySet};
use edge_token_relay::session::SessionKeys;
use edge_token_relay::jwt::token::ClaimRules;
use libfuzzer_sys::arbitrary::Unstructured;
use serde_json::json;

pub use libfuzzer_sys::arbitrary;

pub const NOW: u64 = 1_700_000_000;
pub const ISS: &str = "https://idp.test";
pub const AUD: &str = "my-app-client-id";

/// One RSA-2048 (`rsa-1`, RS256), one P-256 (`ec-1`), one Ed25519 (`ed-1`) public key.
pub const JWKS: &str = r#"{"keys": [{"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": "l_DPIn62KCxykTfMtfEFkeoMaZ8MVg045jDfFPo59OR7wBM02DxI47NSNx-qu_9NED8hL5G4Baou2KgOpxFM-sQgUtKDPXd0oaKeEkTrLdFw2fV8f66tOxCGer7U4a8p-0XzkVpAggTe1WHeqeB95801sEcrW-npkVm7PIVY9tk_NxfTEuaBgLtKWnXF_MJQY33KOec1NuO5v6-PqgQiaX-Y0bDqAEPttmNNzIEsF6Azow7JHF-pEO9OPoNONmcvSAlaVqKHm5zTuvabSePo-WfkpATVd9Wq43ZNu8HWpaNzBcN9wayC5OW1mjUzHjQfR0Cvnexw2qEqwh4Sm09XZQ", "e": "AQAB"}, {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": "-D5Z1VOge3RbySLuOHUEqPSMAlScujG0QjmpFob1CQE", "y": "VYFB00erbh13k2oPhYH8x2YgNgBZBanxI9kgAeumts0"}, {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;

const ED_SEED: [u8; 32] = hex32("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
const EC_D: [u8; 32] = hex32("b0144226e6ec1475b3bf1dcf4aa31edf1037a0e7c18a1cb32b38b980c5f1aea2");

/// A valid RS256 token for [`rules`] at [`NOW`] (exp NOW+300), signed by gen_seeds.py: RSA
/// cannot be signed cheaply inside a target, so this one is fixed.
pub const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsImtpZCI6InJzYS0xIiwidHlwIjoiSldUIn0.eyJpc3MiOiJodHRwczovL2lkcC50ZXN0IiwiYXVkIjoibXktYXBwLWNsaWVudC1pZCIsInRva2VuX3VzZSI6ImFjY2VzcyIsInN1YiI6ImFsaWNlIiwiZXhwIjoxNzAwMDAwMzAwLCJpYXQiOjE3MDAwMDAwMDB9.NW2FwTdAqbPgwTDGI9f4tjfgSkZrGRovvobRMZsWzNzZDZ7Dah7iJI8JrK1tcOUv66_uacCzDvGiP9hjV1N0ESSGvoZ25d0lTe83jYgG5hPtDtAeFigXcDbRAH75bzpxRbXacopXJHeeMS7m03Bl2X95ujMzIfSFsHqBWllL5Sf8T0ZI6H3TTyyGM_F1jc6rmsi6AfTkdSimSGmTkHDAs5znNMU5cluRq1udJUYcACmt2_YtPqcp272FlM_HLAhO81KSH1m08Cz7TF3c7Ope3otZGRx6LfGitjAO2dkrfOFw4rXVmGy6muw82Upgmx-EJ6yQciu7gR5QsUPQAOoTBA";

/// Session keys of src/testdata/session (current `2026-11`, older `2026-05`).
pub const SESSION_KEYS: [(&str, &str); 2] = [
    ("2026-11", "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"),
    ("2026-05", "oKGio6SlpqeoqaqrrK2ur7CxsrO0tba3uLm6u7y9vr8"),
];

const fn hex32(s: &str) -> [u8; 32] {
    const fn nibble(c: u8) -> u8 {
        match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => panic!("bad hex"),
        }
    }
    let b = s.as_bytes();
    let mut out = [0u8; 32];
    let mut i = 0;
    while i < 32 {
        out[i] = nibble(b[2 * i]) << 4 | nibble(b[2 * i + 1]);
        i += 1;
    }
    out
}

/// The fixed key set (parsed once per process; libFuzzer runs on one thread).
pub fn keys() -> &'static KeySet {
    thread_local! {
        static KEYS: &'static KeySet =
            Box::leak(Box::new(KeySet::parse(JWKS.as_bytes()).expect("fixture JWKS parses")));
    }
    KEYS.with(|k| *k)
}

/// Rules the fixed tokens satisfy: issuer, audience (or Cognito `client_id`), `token_use`,
/// every algorithm, 30 s skew, two forwarded claims.
pub fn rules() -> ClaimRules {
    ClaimRules {
        issuer: ISS.into(),
        audiences: vec![AUD.into(), "second-client".into()],
        required_claims: vec![("token_use".into(), edge_token_relay::json::Value::from("access"))],
        algorithms: AlgSet::all(),
        clock_skew_s: 30,
        forward_claims: vec![
            ("x-user-sub".into(), "sub".into()),
            ("x-groups".into(), "cognito:groups".into()),
        ],
    }
}

/// The configuration `decide` runs with: inline [`JWKS`], silent refresh with
/// [`SESSION_KEYS`], a 60 s refresh margin, two forwarded claims, CSRF with double submit for
/// `https://app.example.com`, the default header budget.
pub fn config_json() -> serde_json::Value {
    let jwks: serde_json::Value = serde_json::from_str(JWKS).expect("fixture JWKS is JSON");
    json!({
        "protected_prefixes": ["/api/"],
        "public_prefixes": ["/api/public/"],
        "issuer": ISS,
        "audiences": [AUD, "second-client"],
        "required_claims": {"token_use": "access"},
        "clock_skew_s": 30,
        "jwks": {"inline": jwks},
        "forward_claims": {"x-user-sub": "sub", "x-groups": "cognito:groups"},
        "token_cache_size": 16,
        "session_keys": [
            {"kid": SESSION_KEYS[0].0, "key": SESSION_KEYS[0].1},
            {"kid": SESSION_KEYS[1].0, "key": SESSION_KEYS[1].1}
        ],
        "token_endpoint": {"cluster": "idp", "authority": "idp.test", "path": "/oauth2/token"},
        "client_id": AUD,
        "client_secret": "s3cret",
        "refresh_margin_s": 60,
        "upstream_token_headers": {"access_token": "x-new-access-token", "refresh_token": "x-new-refresh-token"},
        "csrf": {"allowed_origins": ["https://app.example.com"], "double_submit": true},
        "max_request_headers_bytes": 8192
    })
}

/// Variant 1 of [`config`]: no `csrf` section (same-host rule), a 1024-byte header budget.
fn config_json_variant(variant: usize) -> serde_json::Value {
    let mut v = config_json();
    if variant == 1 {
        if let Some(obj) = v.as_object_mut() {
            obj.remove("csrf");
            obj.insert("max_request_headers_bytes".into(), json!(1024));
        }
    }
    v
}

/// [`config_json`] (variant 0) or its variant 1, parsed once per process.
pub fn config(variant: usize) -> &'static Config {
    fn parse(variant: usize) -> &'static Config {
        let json = config_json_variant(variant).to_string();
        Box::leak(Box::new(
            Config::parse(json.as_bytes()).expect("fixture config parses"),
        ))
    }
    thread_local! {
        static CONFIGS: [&'static Config; 2] = [parse(0), parse(1)];
    }
    CONFIGS.with(|c| c[variant.min(1)])
}

/// The login block of [`login_config`]: callback `/auth/callback` on `https://app.example.com`.
pub fn login_json() -> serde_json::Value {
    json!({
        "authorization_endpoint": "https://idp.test/oauth2/authorize",
        "redirect_uri": "https://app.example.com/auth/callback",
        "login_path": "/auth/login",
        "logout_path": "/auth/logout",
        "scopes": ["openid", "offline_access"],
        "end_session_endpoint": "https://idp.test/logout",
        "post_logout_redirect": "/"
    })
}

/// [`config_json`] with [`login_json`] (login at the edge), parsed once per process.
pub fn login_config() -> &'static Config {
    thread_local! {
        static CONFIG: &'static Config = {
            let mut v = config_json();
            if let Some(obj) = v.as_object_mut() {
                obj.insert("login".into(), login_json());
            }
            Box::leak(Box::new(
                Config::parse(v.to_string().as_bytes()).expect("fixture login config parses"),
            ))
        };
    }
    CONFIG.with(|c| *c)
}

/// The inline keys of [`config`] (the same in both variants).
pub fn config_keys() -> &'static KeySet {
    match &config(0).jwks {
        JwksSource::Inline(k) => k,
        JwksSource::Remote { .. } => unreachable!("fixture config has inline keys"),
    }
}

/// Both session keys, or only the older one as the current (to seal "old key" sessions).
pub fn session_keys(older_only: bool) -> &'static SessionKeys {
    thread_local! {
        static BOTH: &'static SessionKeys = Box::leak(Box::new(build(&SESSION_KEYS)));
        static OLDER: &'static SessionKeys = Box::leak(Box::new(build(&SESSION_KEYS[1..])));
    }
    fn build(entries: &[(&str, &str)]) -> SessionKeys {
        let e: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        SessionKeys::from_config(&e).expect("fixture session keys")
    }
    if older_only {
        OLDER.with(|k| *k)
    } else {
        BOTH.with(|k| *k)
    }
}

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Signs `header_b64.payload_b64` and returns the compact JWS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signer {
    Ed25519,
    Es256,
}

pub fn sign(signer: Signer, header_b64: &str, payload_b64: &str) -> String {
    let input = format!("{header_b64}.{payload_b64}");
    let sig = signature(signer, input.as_bytes());
    format!("{input}.{}", b64(&sig))
}

pub fn signature(signer: Signer, message: &[u8]) -> Vec<u8> {
    match signer {
        Signer::Ed25519 => {
            let kp = ed25519_compact::KeyPair::from_seed(ed25519_compact::Seed::new(ED_SEED));
            kp.sk.sign(message, None).to_vec()
        }
        Signer::Es256 => {
            use p256::ecdsa::signature::Signer as _;
            let key = p256::ecdsa::SigningKey::from_bytes(&EC_D.into()).expect("fixture P-256 key");
            let sig: p256::ecdsa::Signature = key.sign(message);
            sig.to_bytes().to_vec()
        }
    }
}

// ---- decoders ---------------------------------------------------------------------------

/// An index in `0..n` (0 when the input is exhausted).
pub fn pick(u: &mut Unstructured<'_>, n: usize) -> usize {
    if n <= 1 {
        return 0;
    }
    u.int_in_range(0..=n - 1).unwrap_or(0)
}

/// The characters of a sealed value (base64url and the JWE separator).
const SEALED_CHARS: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";

/// `sealed` with one character replaced by another sealed-value character; `None` when the
/// input picks the character already there (or `sealed` is empty).
pub fn one_char_changed(u: &mut Unstructured<'_>, sealed: &str) -> Option<String> {
    if sealed.is_empty() {
        return None;
    }
    let mut changed = sealed.as_bytes().to_vec();
    let i = pick(u, changed.len());
    let replacement = *SEALED_CHARS.get(pick(u, SEALED_CHARS.len()))?;
    let c = changed.get_mut(i)?;
    if *c == replacement {
        return None;
    }
    *c = replacement;
    String::from_utf8(changed).ok()
}

pub fn flag(u: &mut Unstructured<'_>) -> bool {
    u.arbitrary::<bool>().unwrap_or(false)
}

pub fn text(u: &mut Unstructured<'_>) -> String {
    u.arbitrary::<String>().unwrap_or_default()
}

pub fn bytes(u: &mut Unstructured<'_>) -> Vec<u8> {
    u.arbitrary::<Vec<u8>>().unwrap_or_default()
}

/// A time around [`NOW`]: mostly small offsets, sometimes any u64.
pub fn time(u: &mut Unstructured<'_>) -> u64 {
    match pick(u, 4) {
        0 => NOW,
        1 | 2 => NOW.wrapping_add_signed(i64::from(u.arbitrary::<i16>().unwrap_or(0))),
        _ => u.arbitrary::<u64>().unwrap_or(0),
    }
}

/// A JSON scalar or small structure as text, for a claim value.
pub fn json_value(u: &mut Unstructured<'_>) -> String {
    match pick(u, 10) {
        0 => serde_json::to_string(&text(u)).unwrap_or_default(),
        1 => u.arbitrary::<u64>().unwrap_or(0).to_string(),
        2 => u.arbitrary::<i64>().unwrap_or(0).to_string(),
        3 => format!("{:?}", u.arbitrary::<f64>().unwrap_or(0.0)),
        4 => "null".into(),
        5 => "true".into(),
        6 => format!("[{},{}]", json_scalar(u), json_scalar(u)),
        7 => format!("{{\"k\":{}}}", json_scalar(u)),
        8 => "1e400".into(),
        _ => String::from_utf8_lossy(&bytes(u)).into_owned(),
    }
}

fn json_scalar(u: &mut Unstructured<'_>) -> String {
    match pick(u, 4) {
        0 => serde_json::to_string(&text(u)).unwrap_or_default(),
        1 => u.arbitrary::<i32>().unwrap_or(0).to_string(),
        2 => "false".into(),
        _ => "[]".into(),
    }
}

/// Claims JSON (as text, so duplicates and odd numbers are possible). Zeros give the claims of
/// a valid access token at [`NOW`] (exp NOW+300).
pub fn claims(u: &mut Unstructured<'_>) -> String {
    if pick(u, 16) == 15 {
        return String::from_utf8_lossy(&bytes(u)).into_owned();
    }
    let mut members: Vec<String> = Vec::new();
    let mut add = |k: &str, v: String| members.push(format!("{}:{v}", json!(k)));
    match pick(u, 5) {
        0 => add("iss", json!(ISS).to_string()),
        1 => {}
        2 => add("iss", json!(format!("{ISS}/")).to_string()),
        _ => add("iss", json_value(u)),
    }
    match pick(u, 8) {
        0 => add("aud", json!(AUD).to_string()),
        1 => add("aud", json!(["other", AUD]).to_string()),
        2 => add("client_id", json!(AUD).to_string()),
        3 => {}
        4 => add("aud", json!("other").to_string()),
        5 => {
            add("aud", json!([]).to_string());
            add("client_id", json!(AUD).to_string());
        }
        _ => add("aud", json_value(u)),
    }
    match pick(u, 4) {
        0 => add("token_use", json!("access").to_string()),
        1 => add("token_use", json!("id").to_string()),
        2 => {}
        _ => add("token_use", json_value(u)),
    }
    match pick(u, 8) {
        0 => add("exp", (NOW + 300).to_string()),
        1 | 2 => add(
            "exp",
            NOW.wrapping_add_signed(i64::from(u.arbitrary::<i16>().unwrap_or(0)))
                .to_string(),
        ),
        3 => {}
        4 => add("exp", format!("{}.75", NOW + 300)),
        5 => add("exp", u.arbitrary::<u64>().unwrap_or(0).to_string()),
        6 => add("exp", "253402300800".into()),
        _ => add("exp", json_value(u)),
    }
    match pick(u, 4) {
        0 => {}
        1 => add("nbf", (NOW - 10).to_string()),
        2 => add(
            "nbf",
            NOW.wrapping_add_signed(i64::from(u.arbitrary::<i16>().unwrap_or(0)))
                .to_string(),
        ),
        _ => add("nbf", json_value(u)),
    }
    match pick(u, 4) {
        0 => add("sub", json!("alice").to_string()),
        1 => add("sub", json!(text(u)).to_string()),
        2 => {}
        _ => add("sub", json_value(u)),
    }
    match pick(u, 3) {
        0 => {}
        1 => add("cognito:groups", json!(["admin", "dev"]).to_string()),
        _ => add("cognito:groups", json_value(u)),
    }
    if flag(u) {
        // A duplicate or extra member.
        let key = ["exp", "iss", "aud", "sub", "x"][pick(u, 5)];
        add(key, json_value(u));
    }
    format!("{{{}}}", members.join(","))
}
