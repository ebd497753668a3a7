//! JWS (compact serialization) verification and JWT claim checks.
//!
//! [`verify`] is a pure function of the token, the key set, the rules and the current time.
//! Checks run cheapest first, and nothing from the payload is trusted (or even parsed as JSON)
//! before the signature has been verified:
//!
//! 1. size cap, three base64url segments, header: `alg` allowlist, `typ`, no `crit`, `kid`
//!    lookup, key algorithm equals header `alg`;
//! 2. signature over the ASCII `header.payload`: RS256 with the filter's own Montgomery
//!    arithmetic ([`super::rs256`]: PKCS#1 v1.5, SHA-256 from sha2 0.11); ES256 with p256 on the
//!    same SHA-256 digest; EdDSA with ed25519-dalek's strict check ([`ed25519_ok`]). The ES256
//!    and EdDSA keys are the types jwt-compact defines for these algorithms;
//! 3. claims: `exp` (required), `nbf`, `iss`, audience (`aud`, or `client_id` when `aud` is
//!    absent), required claims, then time with clock skew;
//! 4. claims to forward as request headers.
//!
//! Nothing here logs, and no error carries token content.

use std::borrow::Cow;
use std::fmt;

use crate::json::{Map, Value};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use sha2_11::Digest as _;

use crate::json::members::{self as json_members, optional_str, Member};

use super::jwks::{Alg, AlgSet, Ed25519Key, KeyMaterial, KeySet};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Longest value forwarded in a header, in bytes; longer values are not forwarded.
pub const MAX_FORWARDED_VALUE_LEN: usize = 4096;
/// Largest accepted `exp`/`nbf`: 9999-12-31T23:59:59Z. Anything later is treated as malformed.
pub const MAX_TIMESTAMP: u64 = 253_402_300_799;

/// What a token must satisfy, compiled from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRules {
    /// Exact expected `iss`.
    pub issuer: String,
    /// Accepted audiences (`aud`, or `client_id` when `aud` is absent). Non-empty.
    pub audiences: Vec<String>,
    /// Claims that must be present with exactly these JSON values.
    pub required_claims: Vec<(String, Value)>,
    /// Accepted signature algorithms.
    pub algorithms: AlgSet,
    /// Tolerated clock difference, in seconds, for `exp` and `nbf`.
    pub clock_skew_s: u64,
    /// `(lower-case header name, claim name)` pairs to forward upstream.
    pub forward_claims: Vec<(String, String)>,
}

/// A token that passed all checks.
#[derive(Clone, PartialEq, Eq)]
pub struct VerifiedToken {
    /// Expiry, unix seconds (fractional `exp` floored). Always present.
    pub exp: u64,
    /// The `kid` of the key that verified the signature.
    pub kid: String,
    /// `(header name, value)` pairs ready to set, in `forward_claims` order.
    pub forwarded: Vec<(String, String)>,
}

/// `(header, value)` pairs in debug output by header name only: claim values stay out of logs.
pub(crate) struct HeaderNames<'a>(pub(crate) &'a [(String, String)]);

impl fmt::Debug for HeaderNames<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|(header, _)| header))
            .finish()
    }
}

impl fmt::Debug for VerifiedToken {
    /// Claim values stay out of debug output; only header names are shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifiedToken")
            .field("exp", &self.exp)
            .field("kid", &self.kid)
            .field("forwarded", &HeaderNames(&self.forwarded))
            .finish()
    }
}

/// Why a token was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenError {
    /// Not a well-formed compact JWS / JWT (segments, base64url, JSON, claim types, `crit`).
    Malformed,
    /// Header `alg` is not an allowed RS256/ES256/EdDSA.
    UnsupportedAlg,
    /// Header has no `kid`.
    MissingKid,
    /// No key with the header's `kid`; a JWKS refetch may help.
    UnknownKid,
    /// `kid` names a key the key set published with broken material (skipped, never used).
    RejectedKey,
    /// Signature does not verify, or the key with that `kid` is for another algorithm.
    BadSignature,
    /// Header `typ` is not a JWT / access-token type.
    BadType,
    /// `iss` missing or not the expected issuer.
    BadIssuer,
    /// Neither `aud` nor (when `aud` is absent) `client_id` names an accepted audience.
    BadAudience,
    /// A required claim is missing or has another value.
    ClaimMismatch,
    /// `exp` (plus skew) has passed.
    Expired,
    /// `nbf` (minus skew) is still in the future.
    NotYetValid,
    /// No `exp` claim.
    MissingExp,
    /// Token longer than [`MAX_TOKEN_LEN`].
    TooLarge,
}

impl TokenError {
    /// Every variant, for the tests that check the codes (format, uniqueness, a counter each).
    #[cfg(test)]
    pub(crate) const ALL: [TokenError; 14] = [
        TokenError::Malformed,
        TokenError::UnsupportedAlg,
        TokenError::MissingKid,
        TokenError::UnknownKid,
        TokenError::RejectedKey,
        TokenError::BadSignature,
        TokenError::BadType,
        TokenError::BadIssuer,
        TokenError::BadAudience,
        TokenError::ClaimMismatch,
        TokenError::Expired,
        TokenError::NotYetValid,
        TokenError::MissingExp,
        TokenError::TooLarge,
    ];

    /// Stable snake_case reason code for logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed => "malformed",
            TokenError::UnsupportedAlg => "unsupported_alg",
            TokenError::MissingKid => "missing_kid",
            TokenError::UnknownKid => "unknown_kid",
            TokenError::RejectedKey => "rejected_key",
            TokenError::BadSignature => "bad_signature",
            TokenError::BadType => "bad_type",
            TokenError::BadIssuer => "bad_issuer",
            TokenError::BadAudience => "bad_audience",
            TokenError::ClaimMismatch => "claim_mismatch",
            TokenError::Expired => "expired",
            TokenError::NotYetValid => "not_yet_valid",
            TokenError::MissingExp => "missing_exp",
            TokenError::TooLarge => "too_large",
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TokenError::Malformed => "token is not a well-formed JWT",
            TokenError::UnsupportedAlg => "token signature algorithm is not allowed",
            TokenError::MissingKid => "token header has no key id",
            TokenError::UnknownKid => "token key id is not in the key set",
            TokenError::RejectedKey => "token key id names a malformed key of the key set",
            TokenError::BadSignature => "token signature is invalid",
            TokenError::BadType => "token type is not a JWT access token",
            TokenError::BadIssuer => "token issuer is not accepted",
            TokenError::BadAudience => "token audience is not accepted",
            TokenError::ClaimMismatch => "token lacks a required claim value",
            TokenError::Expired => "token has expired",
            TokenError::NotYetValid => "token is not valid yet",
            TokenError::MissingExp => "token has no expiry",
            TokenError::TooLarge => "token is too large",
        })
    }
}

impl std::error::Error for TokenError {}

/// The JOSE header members we act on. Unknown members are ignored, duplicates of these are
/// refused.
struct JoseHeader<'a> {
    alg: Cow<'a, str>,
    kid: Option<Cow<'a, str>>,
    typ: Option<Cow<'a, str>>,
    /// Present with any value, `null` included: only the member's presence matters.
    crit: bool,
}

/// `typ` values accepted case-insensitively: JWT (RFC 7519) and JWT access tokens (RFC 9068).
/// Per RFC 7515 4.1.9, "JWT" means "application/JWT", so the long form is accepted too.
const ACCEPTED_TYPES: [&str; 4] = ["JWT", "application/jwt", "at+jwt", "application/at+jwt"];

/// Verifies `token` against `keys` and `rules` at unix time `now` (seconds).
pub fn verify(
    token: &str,
    keys: &KeySet,
    rules: &ClaimRules,
    now: u64,
) -> Result<VerifiedToken, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::TooLarge);
    }
    let mut segments = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) = (
        segments.next(),
        segments.next(),
        segments.next(),
        segments.next(),
    ) else {
        return Err(TokenError::Malformed);
    };
    let signing_input = token
        .get(..header_b64.len() + 1 + payload_b64.len())
        .ok_or(TokenError::Malformed)?;

    // 1. Header.
    let header_json = decode_b64(header_b64)?;
    let header = parse_header(&header_json)?;
    let alg = Alg::from_name(&header.alg)
        .filter(|alg| rules.algorithms.contains(*alg))
        .ok_or(TokenError::UnsupportedAlg)?;
    if let Some(typ) = &header.typ {
        if !ACCEPTED_TYPES.iter().any(|t| t.eq_ignore_ascii_case(typ)) {
            return Err(TokenError::BadType);
        }
    }
    if header.crit {
        return Err(TokenError::Malformed);
    }
    let kid = header.kid.ok_or(TokenError::MissingKid)?;
    let key = keys.get(&kid).ok_or(if keys.is_rejected(&kid) {
        TokenError::RejectedKey
    } else {
        TokenError::UnknownKid
    })?;
    if key.alg() != alg {
        return Err(TokenError::BadSignature);
    }
    let signature = decode_b64(signature_b64)?;
    let payload = decode_b64(payload_b64)?;

    // 2. Signature.
    if !signature_ok(key, signing_input.as_bytes(), &signature) {
        return Err(TokenError::BadSignature);
    }

    // 3. Claims, now authenticated.
    let Ok(Value::Object(claims)) = crate::json::from_slice(&payload) else {
        return Err(TokenError::Malformed);
    };
    let exp = check_claims(&claims, rules, now)?;

    // 4. Forwarded claims.
    let forwarded = rules
        .forward_claims
        .iter()
        .filter_map(|(header, claim)| {
            claims
                .get(claim)
                .and_then(header_value)
                .map(|value| (header.clone(), value))
        })
        .collect();

    Ok(VerifiedToken {
        exp,
        kid: kid.into_owned(),
        forwarded,
    })
}

fn decode_b64(segment: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD
        .decode(segment)
        .map_err(|_| TokenError::Malformed)
}

fn parse_header(json: &[u8]) -> Result<JoseHeader<'_>, TokenError> {
    let [alg, kid, typ, crit] =
        json_members::read(json, ["alg", "kid", "typ", "crit"]).ok_or(TokenError::Malformed)?;
    let Some(Member::Str(alg)) = alg else {
        return Err(TokenError::Malformed);
    };
    Ok(JoseHeader {
        alg,
        kid: optional_str(kid).map_err(|()| TokenError::Malformed)?,
        typ: optional_str(typ).map_err(|()| TokenError::Malformed)?,
        crit: crit.is_some(),
    })
}

fn signature_ok(key: &KeyMaterial, message: &[u8], signature: &[u8]) -> bool {
    match key {
        KeyMaterial::Rs256(key) => key.verify(message, signature),
        KeyMaterial::Es256(key) => {
            // Prehash with the same SHA-256 as RS256: one SHA-256 implementation in the module.
            let Ok(signature) = p256::ecdsa::Signature::from_slice(signature) else {
                return false;
            };
            let digest = sha2_11::Sha256::digest(message);
            p256::ecdsa::signature::hazmat::PrehashVerifier::verify_prehash(
                key.as_ref(),
                digest.as_slice(),
                &signature,
            )
            .is_ok()
        }
        KeyMaterial::EdDsa(key) => ed25519_ok(key, message, signature),
    }
}

/// EdDSA (RFC 8032) with ed25519-dalek's strict check: besides a canonical `S`, it refuses a
/// small-order `R` and a weak key, as RFC 8032 leaves open and the JWKS loader already does.
fn ed25519_ok(key: &Ed25519Key, message: &[u8], signature: &[u8]) -> bool {
    match ed25519_dalek::Signature::from_slice(signature) {
        Ok(signature) => key.verify_strict(message, &signature).is_ok(),
        Err(_) => false,
    }
}

/// Checks the authenticated claims; returns `exp`.
fn check_claims(claims: &Map, rules: &ClaimRules, now: u64) -> Result<u64, TokenError> {
    let exp = timestamp(claims.get("exp").ok_or(TokenError::MissingExp)?)?;
    let nbf = claims.get("nbf").map(timestamp).transpose()?;
    // `iat` is not checked against the clock, but a token that mistypes it is malformed.
    claims.get("iat").map(timestamp).transpose()?;

    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == rules.issuer => {}
        _ => return Err(TokenError::BadIssuer),
    }

    let accepted = |aud: &str| rules.audiences.iter().any(|a| a == aud);
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => accepted(aud),
        Some(Value::Array(auds)) => {
            auds.iter().all(Value::is_string) && auds.iter().filter_map(Value::as_str).any(accepted)
        }
        Some(_) => false,
        None => matches!(claims.get("client_id"), Some(Value::String(id)) if accepted(id)),
    };
    if !audience_ok {
        return Err(TokenError::BadAudience);
    }

    for (name, expected) in &rules.required_claims {
        if claims.get(name) != Some(expected) {
            return Err(TokenError::ClaimMismatch);
        }
    }

    if now >= exp.saturating_add(rules.clock_skew_s) {
        return Err(TokenError::Expired);
    }
    if let Some(nbf) = nbf {
        if now.saturating_add(rules.clock_skew_s) < nbf {
            return Err(TokenError::NotYetValid);
        }
    }
    Ok(exp)
}

/// A NumericDate: a non-negative JSON number, floored, at most [`MAX_TIMESTAMP`].
fn timestamp(value: &Value) -> Result<u64, TokenError> {
    /// [`MAX_TIMESTAMP`] as a float (exact: it is below 2^53).
    const MAX_TIMESTAMP_F64: f64 = 253_402_300_799.0;
    let Value::Number(number) = value else {
        return Err(TokenError::Malformed);
    };
    let seconds = match number.as_u64() {
        Some(seconds) => seconds,
        None => {
            let f = number.as_f64().floor();
            if !(0.0..=MAX_TIMESTAMP_F64).contains(&f) {
                return Err(TokenError::Malformed);
            }
            // In range and non-negative, so the cast is exact after floor().
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            let seconds = f as u64;
            seconds
        }
    };
    if seconds > MAX_TIMESTAMP {
        return Err(TokenError::Malformed);
    }
    Ok(seconds)
}

/// The header value for a claim, or `None` when it must not be forwarded.
fn header_value(value: &Value) -> Option<String> {
    let text = match value {
        Value::Array(items) => {
            if items.is_empty() {
                return None;
            }
            let mut joined = String::new();
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    joined.push(',');
                }
                let text = scalar_text(item)?;
                // `["dev,admin"]` must not read as `["dev","admin"]`: an element holding the
                // separator makes the whole claim unforwardable.
                if text.contains(',') {
                    return None;
                }
                joined.push_str(&text);
                if joined.len() > MAX_FORWARDED_VALUE_LEN {
                    return None;
                }
            }
            joined
        }
        scalar => scalar_text(scalar)?,
    };
    (text.len() <= MAX_FORWARDED_VALUE_LEN).then_some(text)
}

fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if s.len() <= MAX_FORWARDED_VALUE_LEN && !has_control(s) => {
            Some(s.clone())
        }
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// CR, LF, NUL and every other C0 control except HTAB, and DEL.
fn has_control(s: &str) -> bool {
    s.bytes().any(|b| (b < 0x20 && b != b'\t') || b == 0x7f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jwt::rs256::Rs256Key;
    use jwt_compact::alg::{Ed25519, Es256, Hs256, Hs256Key};
    use jwt_compact::{Algorithm, AlgorithmSignature};
    use proptest::prelude::*;
    use rsa::signature::hazmat::PrehashSigner;
    use serde_json::{json, Value};
    use std::sync::OnceLock;

    type RsaSigner = rsa::pkcs1v15::SigningKey<sha2_11::Sha256>;
    type EsSigner = <Es256 as Algorithm>::SigningKey;
    type EdSigner = <Ed25519 as Algorithm>::SigningKey;

    const NOW: u64 = 1_700_000_000;
    const ISS: &str = "https://idp.example.com/realms/main";

    // RFC 6979 A.2.5 P-256 key pair.
    const P256_D: &str = "C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721";
    const P256_X: &str = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6";
    const P256_Y: &str = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299";
    // RFC 8032 7.1 TEST 1 key pair.
    const ED_SEED: &str = "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60";
    const ED_X: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    use crate::testkit::hex;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn unb64(s: &str) -> Vec<u8> {
        URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    struct Fixture {
        rsa: RsaSigner,
        rsa_other: RsaSigner,
        rsa3072: RsaSigner,
        es: EsSigner,
        ed: EdSigner,
        /// The 2048-bit key as rsa 0.10 holds it, the reference for RS256.
        rsa_public: rsa::PublicKey,
        /// Public JWK members of the 2048-bit key, for the HS256 confusion test.
        rsa_public_jwk: String,
        keys: KeySet,
    }

    fn rsa_signer(jwk: &Value) -> RsaSigner {
        let int =
            |name: &str| rsa::BoxedUint::from_be_slice_vartime(&unb64(jwk[name].as_str().unwrap()));
        let key = rsa::PrivateKey::from_components(
            int("n"),
            int("e"),
            int("d"),
            vec![int("p"), int("q")],
        )
        .unwrap();
        RsaSigner::new(key)
    }

    fn public_rsa_jwk(kid: &str, jwk: &Value) -> Value {
        json!({"kty": "RSA", "kid": kid, "n": jwk["n"], "e": jwk["e"], "use": "sig"})
    }

    fn fixture() -> &'static Fixture {
        static FIXTURE: OnceLock<Fixture> = OnceLock::new();
        FIXTURE.get_or_init(|| {
            let rsa_keys: Value =
                serde_json::from_str(include_str!("../testdata/rsa_test_keys.json")).unwrap();
            let jwks = json!({"keys": [
                public_rsa_jwk("rsa", &rsa_keys["rsa2048"]),
                public_rsa_jwk("rsa3072", &rsa_keys["rsa3072"]),
                {"kty": "EC", "crv": "P-256", "kid": "ec", "alg": "ES256",
                 "x": b64(&hex(P256_X)), "y": b64(&hex(P256_Y))},
                {"kty": "OKP", "crv": "Ed25519", "kid": "ed", "x": b64(&hex(ED_X))},
            ]});
            Fixture {
                rsa: rsa_signer(&rsa_keys["rsa2048"]),
                rsa_other: rsa_signer(&rsa_keys["rsa2048_other"]),
                rsa3072: rsa_signer(&rsa_keys["rsa3072"]),
                es: EsSigner::from_slice(&hex(P256_D)).unwrap(),
                ed: <EdSigner as jwt_compact::alg::SigningKey<Ed25519>>::from_slice(&hex(ED_SEED))
                    .unwrap(),
                rsa_public: rsa::PublicKey::new(
                    rsa::BoxedUint::from_be_slice_vartime(&unb64(
                        rsa_keys["rsa2048"]["n"].as_str().unwrap(),
                    )),
                    rsa::BoxedUint::from_be_slice_vartime(&unb64(
                        rsa_keys["rsa2048"]["e"].as_str().unwrap(),
                    )),
                )
                .unwrap(),
                rsa_public_jwk: public_rsa_jwk("rsa", &rsa_keys["rsa2048"]).to_string(),
                keys: KeySet::parse(jwks.to_string().as_bytes()).unwrap(),
            }
        })
    }

    #[derive(Clone, Copy)]
    enum Signer {
        Rsa,
        RsaOther,
        Rsa3072,
        Es,
        Ed,
        /// HMAC-SHA256 with the RSA key's public JWK text as the secret.
        HsWithRsaJwk,
        /// No signature at all.
        Empty,
    }

    fn sign(signer: Signer, message: &[u8]) -> Vec<u8> {
        let fx = fixture();
        let rsa = |key: &RsaSigner| {
            let digest = sha2_11::Sha256::digest(message);
            let sig: Box<[u8]> = key.sign_prehash(digest.as_slice()).unwrap().into();
            sig.into_vec()
        };
        match signer {
            Signer::Rsa => rsa(&fx.rsa),
            Signer::RsaOther => rsa(&fx.rsa_other),
            Signer::Rsa3072 => rsa(&fx.rsa3072),
            Signer::Es => Es256.sign(&fx.es, message).as_bytes().into_owned(),
            Signer::Ed => Ed25519.sign(&fx.ed, message).as_bytes().into_owned(),
            Signer::HsWithRsaJwk => {
                let key = Hs256Key::new(fx.rsa_public_jwk.as_bytes());
                Hs256.sign(&key, message).as_bytes().into_owned()
            }
            Signer::Empty => Vec::new(),
        }
    }

    /// A compact JWS of the raw header and payload texts.
    fn jws_raw(header: &str, payload: &[u8], signer: Signer) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload));
        let sig = sign(signer, input.as_bytes());
        format!("{input}.{}", b64(&sig))
    }

    fn jws(header: &Value, claims: &Value, signer: Signer) -> String {
        jws_raw(&header.to_string(), claims.to_string().as_bytes(), signer)
    }

    fn hdr(alg: &str, kid: &str) -> Value {
        json!({"alg": alg, "kid": kid, "typ": "JWT"})
    }

    fn claims() -> Value {
        json!({"iss": ISS, "aud": "api", "exp": NOW + 300, "iat": NOW - 10, "sub": "alice"})
    }

    fn with(mut v: Value, field: &str, value: Value) -> Value {
        v.as_object_mut().unwrap().insert(field.into(), value);
        v
    }

    fn without(mut v: Value, field: &str) -> Value {
        v.as_object_mut().unwrap().remove(field);
        v
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: ISS.into(),
            audiences: vec!["api".into(), "api2".into()],
            required_claims: vec![],
            algorithms: AlgSet::all(),
            clock_skew_s: 60,
            forward_claims: vec![("x-sub".into(), "sub".into())],
        }
    }

    fn check(token: &str) -> Result<VerifiedToken, TokenError> {
        verify(token, &fixture().keys, &rules(), NOW)
    }

    fn ok_token(alg: &str, kid: &str, signer: Signer) -> String {
        jws(&hdr(alg, kid), &claims(), signer)
    }

    #[test]
    fn valid_tokens_for_every_algorithm() {
        for (alg, kid, signer) in [
            ("RS256", "rsa", Signer::Rsa),
            ("RS256", "rsa3072", Signer::Rsa3072),
            ("ES256", "ec", Signer::Es),
            ("EdDSA", "ed", Signer::Ed),
        ] {
            let verified =
                check(&ok_token(alg, kid, signer)).unwrap_or_else(|e| panic!("{kid}: {e}"));
            assert_eq!(verified.exp, NOW + 300);
            assert_eq!(verified.kid, kid);
            assert_eq!(
                verified.forwarded,
                vec![("x-sub".to_owned(), "alice".to_owned())]
            );
        }
    }

    #[test]
    fn header_variants_accepted() {
        let cases: Vec<Value> = vec![
            json!({"alg": "RS256", "kid": "rsa"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": "jwt"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": "at+jwt"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": "AT+JWT"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": "application/at+jwt"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": "application/JWT"}),
            json!({"alg": "RS256", "kid": "rsa", "typ": null}),
            json!({"alg": "RS256", "kid": "rsa", "x5t": "abc", "jku": "https://evil.example/jwks"}),
        ];
        for header in cases {
            assert!(
                check(&jws(&header, &claims(), Signer::Rsa)).is_ok(),
                "{header}"
            );
        }
        // Escaped strings in the header.
        let header = r#"{"alg":"RS\u0032\u0035\u0036","kid":"\u0072sa"}"#;
        assert!(check(&jws_raw(
            header,
            claims().to_string().as_bytes(),
            Signer::Rsa
        ))
        .is_ok());
    }

    #[test]
    fn header_errors() {
        use TokenError::*;
        let only_rsa = ClaimRules {
            algorithms: AlgSet::empty().with(Alg::Rs256),
            ..rules()
        };
        let cases: Vec<(&str, Value, Signer, TokenError)> = vec![
            (
                "alg none",
                hdr("none", "rsa"),
                Signer::Empty,
                UnsupportedAlg,
            ),
            (
                "alg none with sig",
                hdr("none", "rsa"),
                Signer::Rsa,
                UnsupportedAlg,
            ),
            (
                "alg HS256 keyed with RSA JWK",
                hdr("HS256", "rsa"),
                Signer::HsWithRsaJwk,
                UnsupportedAlg,
            ),
            (
                "alg rs256",
                hdr("rs256", "rsa"),
                Signer::Rsa,
                UnsupportedAlg,
            ),
            (
                "alg RS384",
                hdr("RS384", "rsa"),
                Signer::Rsa,
                UnsupportedAlg,
            ),
            (
                "alg PS256",
                hdr("PS256", "rsa"),
                Signer::Rsa,
                UnsupportedAlg,
            ),
            (
                "alg Ed25519",
                hdr("Ed25519", "ed"),
                Signer::Ed,
                UnsupportedAlg,
            ),
            (
                "alg number",
                json!({"alg": 256, "kid": "rsa"}),
                Signer::Rsa,
                Malformed,
            ),
            ("alg missing", json!({"kid": "rsa"}), Signer::Rsa, Malformed),
            (
                "typ JOSE",
                with(hdr("RS256", "rsa"), "typ", json!("JOSE")),
                Signer::Rsa,
                BadType,
            ),
            (
                "typ dpop+jwt",
                with(hdr("RS256", "rsa"), "typ", json!("dpop+jwt")),
                Signer::Rsa,
                BadType,
            ),
            (
                "typ empty",
                with(hdr("RS256", "rsa"), "typ", json!("")),
                Signer::Rsa,
                BadType,
            ),
            (
                "crit",
                with(hdr("RS256", "rsa"), "crit", json!(["exp"])),
                Signer::Rsa,
                Malformed,
            ),
            (
                "crit null",
                with(hdr("RS256", "rsa"), "crit", Value::Null),
                Signer::Rsa,
                Malformed,
            ),
            (
                "b64 false",
                json!({"alg": "RS256", "kid": "rsa", "b64": false, "crit": ["b64"]}),
                Signer::Rsa,
                Malformed,
            ),
            (
                "kid missing",
                without(hdr("RS256", "rsa"), "kid"),
                Signer::Rsa,
                MissingKid,
            ),
            (
                "kid null",
                with(hdr("RS256", "rsa"), "kid", Value::Null),
                Signer::Rsa,
                MissingKid,
            ),
            (
                "kid number",
                with(hdr("RS256", "rsa"), "kid", json!(1)),
                Signer::Rsa,
                Malformed,
            ),
            ("kid unknown", hdr("RS256", "nope"), Signer::Rsa, UnknownKid),
            ("kid case", hdr("RS256", "RSA"), Signer::Rsa, UnknownKid),
            // Alg confusion: the key under that kid serves another algorithm.
            (
                "RS256 against EC kid",
                hdr("RS256", "ec"),
                Signer::Rsa,
                BadSignature,
            ),
            (
                "RS256 against Ed kid",
                hdr("RS256", "ed"),
                Signer::Rsa,
                BadSignature,
            ),
            (
                "ES256 against RSA kid",
                hdr("ES256", "rsa"),
                Signer::Es,
                BadSignature,
            ),
            (
                "EdDSA against EC kid",
                hdr("EdDSA", "ec"),
                Signer::Ed,
                BadSignature,
            ),
            // Cheap checks first: unsupported alg wins over unknown kid.
            (
                "none + unknown kid",
                hdr("none", "nope"),
                Signer::Empty,
                UnsupportedAlg,
            ),
            (
                "bad typ + unknown kid",
                with(hdr("RS256", "nope"), "typ", json!("x")),
                Signer::Rsa,
                BadType,
            ),
        ];
        for (name, header, signer, want) in cases {
            assert_eq!(
                check(&jws(&header, &claims(), signer)).unwrap_err(),
                want,
                "{name}"
            );
        }
        // Allowed by type but not by the rules.
        let token = ok_token("ES256", "ec", Signer::Es);
        assert_eq!(
            verify(&token, &fixture().keys, &only_rsa, NOW).unwrap_err(),
            UnsupportedAlg
        );
        let none = ClaimRules {
            algorithms: AlgSet::empty(),
            ..rules()
        };
        let token = ok_token("RS256", "rsa", Signer::Rsa);
        assert_eq!(
            verify(&token, &fixture().keys, &none, NOW).unwrap_err(),
            UnsupportedAlg
        );
    }

    #[test]
    fn structural_errors() {
        use TokenError::*;
        let good = ok_token("RS256", "rsa", Signer::Rsa);
        let parts: Vec<&str> = good.split('.').collect();
        let (h, p, s) = (parts[0], parts[1], parts[2]);
        let raw = |header: &str| format!("{}.{p}.{s}", b64(header.as_bytes()));
        let cases: Vec<(&str, String, TokenError)> = vec![
            ("empty", String::new(), Malformed),
            ("one segment", h.to_owned(), Malformed),
            ("two segments", format!("{h}.{p}"), Malformed),
            ("four segments", format!("{good}.{s}"), Malformed),
            ("trailing dot", format!("{good}."), Malformed),
            (
                "JWE-like five segments",
                format!("{h}.{p}.{s}.{s}.{s}"),
                Malformed,
            ),
            ("padding", format!("{h}=.{p}.{s}"), Malformed),
            ("padding on sig", format!("{h}.{p}.{s}=="), Malformed),
            (
                "std alphabet",
                format!("{h}.{p}.{}", s.replace('-', "+").replace('_', "/") + "+"),
                Malformed,
            ),
            ("whitespace", format!(" {good}"), Malformed),
            ("newline inside", format!("{h}.{p}\n.{s}"), Malformed),
            ("non-ascii", format!("{h}.{p}é.{s}"), Malformed),
            ("header not base64", format!("!!.{p}.{s}"), Malformed),
            ("header empty", format!(".{p}.{s}"), Malformed),
            ("header not json", raw("hello"), Malformed),
            ("header array", raw(r#"["RS256","rsa"]"#), Malformed),
            ("header string", raw(r#""RS256""#), Malformed),
            (
                "header duplicate alg",
                raw(r#"{"alg":"RS256","alg":"RS256","kid":"rsa"}"#),
                Malformed,
            ),
            (
                "header trailing junk",
                raw(r#"{"alg":"RS256","kid":"rsa"}x"#),
                Malformed,
            ),
            ("signature not base64", format!("{h}.{p}.*"), Malformed),
            ("payload not base64", format!("{h}.*.{s}"), Malformed),
        ];
        for (name, token, want) in cases {
            assert_eq!(check(&token).unwrap_err(), want, "{name}");
        }
        // Non-canonical trailing bits in the last base64 character.
        let mut sig = s.to_owned();
        let last = sig.pop().unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let pos = alphabet.find(last).unwrap();
        sig.push(alphabet.as_bytes()[pos ^ 1] as char);
        assert_eq!(
            check(&format!("{h}.{p}.{sig}")).unwrap_err(),
            Malformed,
            "trailing bits"
        );
    }

    #[test]
    fn tampering_is_detected() {
        use TokenError::*;
        for (alg, kid, signer) in [
            ("RS256", "rsa", Signer::Rsa),
            ("ES256", "ec", Signer::Es),
            ("EdDSA", "ed", Signer::Ed),
        ] {
            let good = ok_token(alg, kid, signer);
            let parts: Vec<&str> = good.split('.').collect();
            let (h, p, s) = (parts[0], parts[1], parts[2]);
            // Payload swapped for another (valid) one.
            let evil = b64(with(claims(), "sub", json!("admin")).to_string().as_bytes());
            assert_eq!(
                check(&format!("{h}.{evil}.{s}")).unwrap_err(),
                BadSignature,
                "{alg} payload"
            );
            // Header swapped (kid unchanged, extra member).
            let evil_h = b64(with(hdr(alg, kid), "x", json!(1)).to_string().as_bytes());
            assert_eq!(
                check(&format!("{evil_h}.{p}.{s}")).unwrap_err(),
                BadSignature,
                "{alg} header"
            );
            // First signature character changed.
            let flipped = if s.starts_with('A') { "B" } else { "A" };
            let evil_s = format!("{flipped}{}", &s[1..]);
            assert_eq!(
                check(&format!("{h}.{p}.{evil_s}")).unwrap_err(),
                BadSignature,
                "{alg} sig"
            );
            // Signature truncated / extended / empty.
            let sig = unb64(s);
            for bad in [
                &sig[..sig.len() - 1],
                &[sig.clone(), vec![0]].concat()[..],
                &[][..],
            ] {
                assert_eq!(
                    check(&format!("{h}.{p}.{}", b64(bad))).unwrap_err(),
                    BadSignature,
                    "{alg} len"
                );
            }
            // Signature of another token.
            let other = jws(&hdr(alg, kid), &with(claims(), "sub", json!("bob")), signer);
            let other_s = other.rsplit('.').next().unwrap();
            assert_eq!(
                check(&format!("{h}.{p}.{other_s}")).unwrap_err(),
                BadSignature,
                "{alg} swap"
            );
        }
        // Same kid, different RSA key.
        assert_eq!(
            check(&ok_token("RS256", "rsa", Signer::RsaOther)).unwrap_err(),
            BadSignature
        );
        // 3072-bit signature against the 2048-bit key.
        assert_eq!(
            check(&ok_token("RS256", "rsa", Signer::Rsa3072)).unwrap_err(),
            BadSignature
        );
        // ECDSA signature of zeros (r = s = 0) and all-ones.
        let h = b64(hdr("ES256", "ec").to_string().as_bytes());
        let p = b64(claims().to_string().as_bytes());
        for sig in [[0u8; 64], [0xff; 64]] {
            assert_eq!(
                check(&format!("{h}.{p}.{}", b64(&sig))).unwrap_err(),
                BadSignature
            );
        }
    }

    #[test]
    fn payload_errors_after_valid_signature() {
        use TokenError::*;
        let deep = format!(
            "{{\"iss\":\"{ISS}\",\"x\":{}{}}}",
            "[".repeat(200),
            "]".repeat(200)
        );
        let cases: Vec<(&str, Vec<u8>, TokenError)> = vec![
            ("not json", b"hello".to_vec(), Malformed),
            ("empty", b"".to_vec(), Malformed),
            ("array", b"[1,2]".to_vec(), Malformed),
            ("string", b"\"x\"".to_vec(), Malformed),
            ("null", b"null".to_vec(), Malformed),
            (
                "trailing junk",
                format!("{}x", claims()).into_bytes(),
                Malformed,
            ),
            ("not utf8", b"{\"exp\":\"\xff\"}".to_vec(), Malformed),
            ("deep nesting", deep.into_bytes(), Malformed),
        ];
        for (name, payload, want) in cases {
            let token = jws_raw(&hdr("EdDSA", "ed").to_string(), &payload, Signer::Ed);
            assert_eq!(check(&token).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn claim_errors() {
        use TokenError::*;
        let c = claims;
        let cases: Vec<(&str, Value, TokenError)> = vec![
            ("exp missing", without(c(), "exp"), MissingExp),
            (
                "exp string",
                with(c(), "exp", json!("1700000300")),
                Malformed,
            ),
            ("exp null", with(c(), "exp", Value::Null), Malformed),
            ("exp negative", with(c(), "exp", json!(-1)), Malformed),
            (
                "exp negative float",
                with(c(), "exp", json!(-0.5)),
                Malformed,
            ),
            (
                "exp huge",
                with(c(), "exp", json!(MAX_TIMESTAMP + 1)),
                Malformed,
            ),
            ("exp u64 max", with(c(), "exp", json!(u64::MAX)), Malformed),
            ("exp huge float", with(c(), "exp", json!(1e300)), Malformed),
            ("exp bool", with(c(), "exp", json!(true)), Malformed),
            (
                "iat string",
                with(c(), "iat", json!("yesterday")),
                Malformed,
            ),
            ("exp array", with(c(), "exp", json!([NOW + 300])), Malformed),
            ("nbf string", with(c(), "nbf", json!("0")), Malformed),
            ("nbf negative", with(c(), "nbf", json!(-5)), Malformed),
            ("iss missing", without(c(), "iss"), BadIssuer),
            (
                "iss other",
                with(c(), "iss", json!("https://evil.example.com")),
                BadIssuer,
            ),
            (
                "iss trailing slash",
                with(c(), "iss", json!(format!("{ISS}/"))),
                BadIssuer,
            ),
            (
                "iss case",
                with(c(), "iss", json!(ISS.to_uppercase())),
                BadIssuer,
            ),
            ("iss array", with(c(), "iss", json!([ISS])), BadIssuer),
            ("aud other", with(c(), "aud", json!("web")), BadAudience),
            (
                "aud array none match",
                with(c(), "aud", json!(["web", "x"])),
                BadAudience,
            ),
            ("aud empty array", with(c(), "aud", json!([])), BadAudience),
            (
                "aud array non-string",
                with(c(), "aud", json!(["api", 1])),
                BadAudience,
            ),
            ("aud number", with(c(), "aud", json!(1)), BadAudience),
            ("aud null", with(c(), "aud", Value::Null), BadAudience),
            (
                "aud object",
                with(c(), "aud", json!({"api": true})),
                BadAudience,
            ),
            (
                "aud mismatch, client_id match",
                with(with(c(), "aud", json!("web")), "client_id", json!("api")),
                BadAudience,
            ),
            (
                "no aud, client_id other",
                with(without(c(), "aud"), "client_id", json!("web")),
                BadAudience,
            ),
            (
                "no aud, client_id number",
                with(without(c(), "aud"), "client_id", json!(1)),
                BadAudience,
            ),
            ("no aud, no client_id", without(c(), "aud"), BadAudience),
            ("expired", with(c(), "exp", json!(NOW - 61)), Expired),
            (
                "not yet valid",
                with(c(), "nbf", json!(NOW + 61)),
                NotYetValid,
            ),
            // Order: exp presence/type, nbf type, iss, aud, required claims, then time.
            (
                "missing exp + bad iss",
                without(with(c(), "iss", json!("x")), "exp"),
                MissingExp,
            ),
            (
                "bad nbf + bad iss",
                with(with(c(), "iss", json!("x")), "nbf", json!("x")),
                Malformed,
            ),
            (
                "bad iss + bad aud",
                with(with(c(), "iss", json!("x")), "aud", json!("x")),
                BadIssuer,
            ),
            (
                "bad aud + expired",
                with(with(c(), "aud", json!("x")), "exp", json!(1)),
                BadAudience,
            ),
        ];
        for (name, claims, want) in cases {
            let token = jws(&hdr("EdDSA", "ed"), &claims, Signer::Ed);
            assert_eq!(check(&token).unwrap_err(), want, "{name}");
        }
    }

    #[test]
    fn audience_successes() {
        let c = claims;
        let cases: Vec<(&str, Value)> = vec![
            ("aud string", c()),
            ("aud second accepted", with(c(), "aud", json!("api2"))),
            ("aud array", with(c(), "aud", json!(["web", "api2"]))),
            ("aud array single", with(c(), "aud", json!(["api"]))),
            (
                "no aud, client_id",
                with(without(c(), "aud"), "client_id", json!("api")),
            ),
            (
                "aud match, client_id other",
                with(c(), "client_id", json!("web")),
            ),
        ];
        for (name, claims) in cases {
            let token = jws(&hdr("ES256", "ec"), &claims, Signer::Es);
            assert!(check(&token).is_ok(), "{name}");
        }
    }

    #[test]
    fn required_claims() {
        use TokenError::ClaimMismatch;
        let rules = ClaimRules {
            required_claims: vec![
                ("token_use".into(), json!("access").into()),
                ("email_verified".into(), json!(true).into()),
                ("tier".into(), json!({"level": 2}).into()),
            ],
            ..rules()
        };
        let good = with(
            with(
                with(claims(), "token_use", json!("access")),
                "email_verified",
                json!(true),
            ),
            "tier",
            json!({"level": 2}),
        );
        let run = |claims: &Value| {
            verify(
                &jws(&hdr("EdDSA", "ed"), claims, Signer::Ed),
                &fixture().keys,
                &rules,
                NOW,
            )
        };
        assert!(run(&good).is_ok());
        let cases: Vec<(&str, Value)> = vec![
            ("missing", without(good.clone(), "token_use")),
            ("other value", with(good.clone(), "token_use", json!("id"))),
            (
                "string vs bool",
                with(good.clone(), "email_verified", json!("true")),
            ),
            ("null", with(good.clone(), "email_verified", Value::Null)),
            (
                "object differs",
                with(good.clone(), "tier", json!({"level": 3})),
            ),
        ];
        for (name, claims) in cases {
            assert_eq!(run(&claims).unwrap_err(), ClaimMismatch, "{name}");
        }
    }

    #[test]
    fn time_boundaries() {
        use TokenError::*;
        let skew = rules().clock_skew_s;
        let at = |claims: &Value, now: u64| {
            verify(
                &jws(&hdr("EdDSA", "ed"), claims, Signer::Ed),
                &fixture().keys,
                &rules(),
                now,
            )
        };
        let exp = 1_000_000u64;
        let c = with(claims(), "exp", json!(exp));
        assert_eq!(at(&c, exp + skew - 1).unwrap().exp, exp);
        assert_eq!(
            at(&c, exp + skew).unwrap_err(),
            Expired,
            "exactly exp + skew is expired"
        );
        assert_eq!(at(&c, u64::MAX).unwrap_err(), Expired);
        assert!(at(&c, 0).is_ok());

        // Fractional exp is floored.
        let c = with(claims(), "exp", json!(1_000_000.9));
        assert_eq!(at(&c, exp + skew - 1).unwrap().exp, exp);
        assert_eq!(at(&c, exp + skew).unwrap_err(), Expired);
        let c = with(claims(), "exp", json!(1e6));
        assert_eq!(at(&c, 0).unwrap().exp, exp);
        let c = with(claims(), "exp", json!(0.0));
        assert_eq!(at(&c, 0).unwrap().exp, 0);
        let c = with(claims(), "exp", json!(MAX_TIMESTAMP));
        assert_eq!(at(&c, NOW).unwrap().exp, MAX_TIMESTAMP);
        let c = with(claims(), "exp", json!(MAX_TIMESTAMP as f64 + 0.5));
        assert_eq!(at(&c, NOW).unwrap().exp, MAX_TIMESTAMP);
        let c = with(claims(), "exp", json!(MAX_TIMESTAMP as f64 + 1.0));
        assert_eq!(at(&c, NOW).unwrap_err(), Malformed);

        let nbf = 2_000_000u64;
        let c = with(with(claims(), "exp", json!(nbf + 100)), "nbf", json!(nbf));
        assert!(at(&c, nbf - skew).is_ok(), "now + skew == nbf is valid");
        assert_eq!(at(&c, nbf - skew - 1).unwrap_err(), NotYetValid);
        let c = with(
            with(claims(), "exp", json!(nbf + 100)),
            "nbf",
            json!(nbf as f64 + 0.5),
        );
        assert!(at(&c, nbf - skew).is_ok(), "fractional nbf floored");

        // Zero skew.
        let strict = ClaimRules {
            clock_skew_s: 0,
            ..rules()
        };
        let c = with(with(claims(), "exp", json!(exp)), "nbf", json!(exp - 10));
        let token = jws(&hdr("EdDSA", "ed"), &c, Signer::Ed);
        assert!(verify(&token, &fixture().keys, &strict, exp - 1).is_ok());
        assert_eq!(
            verify(&token, &fixture().keys, &strict, exp).unwrap_err(),
            Expired
        );
        assert_eq!(
            verify(&token, &fixture().keys, &strict, exp - 11).unwrap_err(),
            NotYetValid
        );

        // Huge skew saturates instead of overflowing.
        let lax = ClaimRules {
            clock_skew_s: u64::MAX,
            ..rules()
        };
        let c = with(
            with(claims(), "exp", json!(MAX_TIMESTAMP)),
            "nbf",
            json!(MAX_TIMESTAMP),
        );
        let token = jws(&hdr("EdDSA", "ed"), &c, Signer::Ed);
        assert!(verify(&token, &fixture().keys, &lax, 0).is_ok());
        assert_eq!(
            verify(&token, &fixture().keys, &lax, u64::MAX).unwrap_err(),
            Expired
        );
    }

    #[test]
    fn forwarded_claims() {
        let long = "x".repeat(MAX_FORWARDED_VALUE_LEN);
        let claims = json!({
            "iss": ISS, "aud": "api", "exp": NOW + 300,
            "sub": "alice", "tab": "a\tb", "crlf": "a\r\nx-admin: 1", "lf": "a\nb", "nul": "a\u{0}b",
            "esc": "a\u{1b}b", "del": "a\u{7f}b", "utf8": "Zoë 😀",
            "int": 42, "neg": -7, "float": 1.5, "yes": true, "no": false,
            "groups": ["admin", "dev"], "mixed": ["a", 1, true], "empty_arr": [],
            "nested_arr": ["a", ["b"]], "obj_arr": ["a", {"b": 1}], "null_arr": ["a", null],
            "ctl_arr": ["a", "b\nc"], "obj": {"a": 1}, "null": null, "max": long,
            "comma_arr": ["dev,admin"], "comma_str": "dev,admin",
        });
        let names = [
            "sub",
            "tab",
            "crlf",
            "lf",
            "nul",
            "esc",
            "del",
            "utf8",
            "int",
            "neg",
            "float",
            "yes",
            "no",
            "groups",
            "mixed",
            "empty_arr",
            "nested_arr",
            "obj_arr",
            "null_arr",
            "ctl_arr",
            "comma_arr",
            "comma_str",
            "obj",
            "null",
            "missing",
            "max",
        ];
        let reversed = ClaimRules {
            // Reverse order, to check that output follows the rules' order.
            forward_claims: names
                .iter()
                .rev()
                .map(|n| (format!("x-{n}"), (*n).to_owned()))
                .collect(),
            ..rules()
        };
        let token = jws(&hdr("EdDSA", "ed"), &claims, Signer::Ed);
        let got = verify(&token, &fixture().keys, &reversed, NOW)
            .unwrap()
            .forwarded;
        let want: Vec<(String, String)> = [
            ("max", long.clone()),
            ("comma_str", "dev,admin".into()),
            ("mixed", "a,1,true".into()),
            ("groups", "admin,dev".into()),
            ("no", "false".into()),
            ("yes", "true".into()),
            ("float", "1.5".into()),
            ("neg", "-7".into()),
            ("int", "42".into()),
            ("utf8", "Zoë 😀".into()),
            ("tab", "a\tb".into()),
            ("sub", "alice".into()),
        ]
        .into_iter()
        .map(|(n, v)| (format!("x-{n}"), v))
        .collect();
        assert_eq!(got, want);
        // The same claim may feed two headers.
        let twice = ClaimRules {
            forward_claims: vec![("x-a".into(), "sub".into()), ("x-b".into(), "sub".into())],
            ..rules()
        };
        let got = verify(&token, &fixture().keys, &twice, NOW)
            .unwrap()
            .forwarded;
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn forwarded_value_length_cap() {
        let max = "x".repeat(MAX_FORWARDED_VALUE_LEN);
        let over = format!("{max}x");
        let cases: Vec<(Value, Option<String>)> = vec![
            (json!(max), Some(max.clone())),
            (json!(over), None),
            (
                json!([&max[..MAX_FORWARDED_VALUE_LEN - 2], "y"]),
                Some(format!("{},y", &max[..MAX_FORWARDED_VALUE_LEN - 2])),
            ),
            (json!([&max[..MAX_FORWARDED_VALUE_LEN - 1], "y"]), None),
            (json!([max.clone(), "y"]), None),
            (json!(vec!["ab"; 2000]), None),
            (json!(vec![1; 10]), Some(["1"; 10].join(","))),
        ];
        for (value, want) in cases {
            assert_eq!(header_value(&value.into()), want);
        }
    }

    #[test]
    fn size_cap() {
        // Find a valid token of exactly MAX_TOKEN_LEN bytes by padding a claim and the header.
        let mut exact = None;
        'search: for header_pad in 0..3 {
            let header = with(hdr("EdDSA", "ed"), "p", json!("h".repeat(header_pad)));
            for pad in 12_000..12_300 {
                let token = jws(
                    &header,
                    &with(claims(), "pad", json!("x".repeat(pad))),
                    Signer::Ed,
                );
                if token.len() == MAX_TOKEN_LEN {
                    exact = Some((header, pad));
                    break 'search;
                }
            }
        }
        let (header, pad) = exact.expect("no padding gives an exact-size token");
        let token = jws(
            &header,
            &with(claims(), "pad", json!("x".repeat(pad))),
            Signer::Ed,
        );
        assert!(check(&token).is_ok());
        let bigger = jws(
            &header,
            &with(claims(), "pad", json!("x".repeat(pad + 3))),
            Signer::Ed,
        );
        assert!(bigger.len() > MAX_TOKEN_LEN);
        assert_eq!(check(&bigger).unwrap_err(), TokenError::TooLarge);
        assert_eq!(
            check(&"a".repeat(MAX_TOKEN_LEN + 1)).unwrap_err(),
            TokenError::TooLarge
        );
        assert_eq!(
            check(&".".repeat(MAX_TOKEN_LEN)).unwrap_err(),
            TokenError::Malformed
        );
    }

    #[test]
    fn error_codes_and_messages() {
        let all = TokenError::ALL;
        let mut codes: Vec<&str> = all.iter().map(TokenError::code).collect();
        for code in &codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        assert_eq!(TokenError::Expired.code(), "expired");
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), all.len());
        for e in all {
            assert!(!e.to_string().is_empty());
        }
    }

    #[test]
    fn debug_hides_claim_values() {
        let verified = check(&ok_token("EdDSA", "ed", Signer::Ed)).unwrap();
        let dbg = format!("{verified:?}");
        assert!(dbg.contains("x-sub"));
        assert!(!dbg.contains("alice"));
    }

    /// Rough host timing of one RS256 verification (cargo test --release -- --ignored --nocapture).
    #[test]
    #[ignore]
    fn rs256_timing() {
        let keys = &fixture().keys;
        for (alg, kid, signer) in [
            ("RS256", "rsa", Signer::Rsa),
            ("RS256", "rsa3072", Signer::Rsa3072),
            ("ES256", "ec", Signer::Es),
            ("EdDSA", "ed", Signer::Ed),
        ] {
            let token = ok_token(alg, kid, signer);
            let rules = rules();
            let n = 2000u32;
            let start = std::time::Instant::now();
            for _ in 0..n {
                std::hint::black_box(
                    verify(std::hint::black_box(&token), keys, &rules, NOW).unwrap(),
                );
            }
            let full = start.elapsed() / n;
            let (input, sig) = token.rsplit_once('.').unwrap();
            let (sig, key) = (unb64(sig), keys.get(kid).unwrap());
            let start = std::time::Instant::now();
            for _ in 0..n {
                assert!(signature_ok(
                    key,
                    std::hint::black_box(input.as_bytes()),
                    &sig
                ));
            }
            let crypto = start.elapsed() / n;
            println!("{alg} ({kid}): {full:?} per verify, of which {crypto:?} signature");
        }
    }

    fn seg(max: usize) -> impl Strategy<Value = String> {
        prop::collection::vec(any::<u8>(), 0..max).prop_map(|b| b64(&b))
    }

    fn header_seg() -> impl Strategy<Value = String> {
        let structured = (
            prop::sample::select(vec!["RS256", "ES256", "EdDSA", "none", "HS256", "rs256"]),
            prop::option::of(prop::sample::select(vec![
                "rsa", "rsa3072", "ec", "ed", "nope", "",
            ])),
            prop::option::of(prop::sample::select(vec!["JWT", "at+jwt", "x"])),
            any::<bool>(),
        )
            .prop_map(|(alg, kid, typ, crit)| {
                let mut h = json!({ "alg": alg });
                if let Some(kid) = kid {
                    h = with(h, "kid", json!(kid));
                }
                if let Some(typ) = typ {
                    h = with(h, "typ", json!(typ));
                }
                if crit {
                    h = with(h, "crit", json!(["x"]));
                }
                b64(h.to_string().as_bytes())
            });
        prop_oneof![
            seg(64),
            "[ -~]{0,40}".prop_map(|s| b64(s.as_bytes())),
            structured
        ]
    }

    fn sig_seg() -> impl Strategy<Value = String> {
        prop_oneof![
            seg(300),
            prop::collection::vec(any::<u8>(), 64).prop_map(|b| b64(&b)),
            prop::collection::vec(any::<u8>(), 256).prop_map(|b| b64(&b)),
        ]
    }

    /// JSON-ish payloads that often are objects with the claims we look at.
    fn payload_text() -> impl Strategy<Value = String> {
        let key = prop::sample::select(vec!["exp", "nbf", "iss", "aud", "client_id", "sub", "x"]);
        let value = prop_oneof![
            "-?[0-9]{1,25}(\\.[0-9]{0,5})?(e[+-]?[0-9]{1,3})?",
            Just(format!("\"{ISS}\"")),
            "\"[ -~]{0,8}\"",
            "\\[(\"api\"|1|null|\\[\\]|\\{\\})?(,\"[a-z]{0,3}\"){0,3}\\]",
            Just("true".to_owned()),
            Just("null".to_owned()),
            Just("{}".to_owned()),
        ];
        let object = prop::collection::vec((key, value), 0..7).prop_map(|members| {
            let body: Vec<String> = members
                .iter()
                .map(|(k, v)| format!("\"{k}\":{v}"))
                .collect();
            format!("{{{}}}", body.join(","))
        });
        prop_oneof![object, any::<String>(), "[\\[\\]{}\",:0-9a-z]{0,64}"]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn never_panics_on_arbitrary_strings(s in any::<String>()) {
            let _ = check(&s);
        }

        #[test]
        fn never_panics_on_token_alphabet(s in "[A-Za-z0-9_=+/. -]{0,400}") {
            let _ = check(&s);
        }

        #[test]
        fn never_panics_on_three_segments(h in header_seg(), p in seg(200), s in sig_seg()) {
            let token = format!("{h}.{p}.{s}");
            let _ = check(&token);
        }

        #[test]
        fn never_panics_on_signed_payloads(payload in payload_text(), now in any::<u64>(), skew in any::<u64>()) {
            let token = jws_raw(&hdr("EdDSA", "ed").to_string(), payload.as_bytes(), Signer::Ed);
            let fuzz_rules = ClaimRules {
                clock_skew_s: skew,
                forward_claims: vec![("x-exp".into(), "exp".into()), ("x-aud".into(), "aud".into())],
                ..rules()
            };
            let _ = verify(&token, &fixture().keys, &fuzz_rules, now);
        }
    }

    // Properties of the claim checks (no signatures involved: `check_claims` is what runs after
    // the signature verified).
    mod claim_props {
        use super::super::*;
        use proptest::prelude::*;
        use serde_json::json;

        fn rules(skew: u64) -> ClaimRules {
            ClaimRules {
                issuer: "https://idp".into(),
                audiences: vec!["a1".into(), "a2".into()],
                required_claims: vec![("token_use".into(), json!("access").into())],
                algorithms: AlgSet::all(),
                clock_skew_s: skew,
                forward_claims: vec![],
            }
        }

        fn claims(v: serde_json::Value) -> Map {
            Value::from(v).as_object().cloned().unwrap_or_default()
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(512))]

            /// A token is inside its validity window exactly when now < exp + skew and
            /// now + skew >= nbf.
            #[test]
            fn time_window(exp in 0u64..4_000_000_000, nbf in proptest::option::of(0u64..4_000_000_000),
                           now in 0u64..4_000_000_000, skew in 0u64..600) {
                let mut c = json!({"iss": "https://idp", "aud": "a1", "token_use": "access", "exp": exp});
                if let Some(nbf) = nbf { c["nbf"] = json!(nbf); }
                let got = check_claims(&claims(c), &rules(skew), now);
                let expired = now >= exp.saturating_add(skew);
                let early = nbf.is_some_and(|nbf| now.saturating_add(skew) < nbf);
                match got {
                    Ok(e) => { prop_assert!(!expired && !early); prop_assert_eq!(e, exp); }
                    Err(TokenError::Expired) => prop_assert!(expired),
                    Err(TokenError::NotYetValid) => prop_assert!(!expired && early),
                    Err(other) => prop_assert!(false, "unexpected {other:?}"),
                }
            }

            /// Audience: accepted exactly when `aud` (string or array) holds a configured
            /// audience, or, without `aud`, `client_id` is one.
            #[test]
            fn audience(aud in proptest::option::of(proptest::collection::vec("a[0-9]", 0..4)),
                        as_string in any::<bool>(), client_id in proptest::option::of("a[0-9]")) {
                let mut c = json!({"iss": "https://idp", "token_use": "access", "exp": 2_000_000_000u64});
                match &aud {
                    Some(list) if as_string && list.len() == 1 => c["aud"] = json!(list[0]),
                    Some(list) => c["aud"] = json!(list),
                    None => {}
                }
                if let Some(id) = &client_id { c["client_id"] = json!(id); }
                let allowed = |s: &str| s == "a1" || s == "a2";
                let want = match &aud {
                    Some(list) => list.iter().any(|a| allowed(a)),
                    None => client_id.as_deref().is_some_and(allowed),
                };
                let got = check_claims(&claims(c), &rules(0), 1_000_000_000);
                prop_assert_eq!(got.is_ok(), want, "{:?}", got);
            }

            /// Required claims compare as JSON values: only the exact value passes.
            #[test]
            fn required_claims(v in prop_oneof![
                Just(json!("access")), Just(json!("id")), Just(json!(["access"])),
                Just(json!(1)), Just(json!(null)), Just(json!({"token_use": "access"})),
                "[a-z]{0,8}".prop_map(|s| json!(s)),
            ]) {
                let c = json!({"iss": "https://idp", "aud": "a1", "token_use": v.clone(), "exp": 2_000_000_000u64});
                let got = check_claims(&claims(c), &rules(0), 1_000_000_000);
                prop_assert_eq!(got.is_ok(), v == json!("access"));
            }
        }
    }

    // RFC 7515 Appendix A.2: the RS256 example (key from RFC 7517 Appendix A.1... as printed
    // in RFC 7515 A.2.1).
    const RFC7515_A2_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    const RFC7515_A2_JWS: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

    fn public_key(n_b64: &str) -> (Rs256Key, rsa::PublicKey) {
        let n = unb64(n_b64);
        let ours = Rs256Key::new(&n, &[1, 0, 1]).unwrap();
        let theirs = rsa::PublicKey::new(
            rsa::BoxedUint::from_be_slice_vartime(&n),
            rsa::BoxedUint::from_be_slice_vartime(&[1, 0, 1]),
        )
        .unwrap();
        (ours, theirs)
    }

    #[test]
    fn rs256_verifies_the_rfc7515_a2_example_and_nothing_near_it() {
        let keys = public_key(RFC7515_A2_N);
        let (input, sig) = RFC7515_A2_JWS.rsplit_once('.').unwrap();
        let sig = unb64(sig);
        assert!(rs256_both(&keys, input.as_bytes(), &sig));
        // Another message, a flipped signature bit, a short or long signature, s >= n.
        assert!(!rs256_both(&keys, b"eyJhbGciOiJSUzI1NiJ9.e30", &sig));
        for i in [0, 1, 127, 255] {
            let mut bad = sig.clone();
            bad[i] ^= 1;
            assert!(
                !rs256_both(&keys, input.as_bytes(), &bad),
                "bit flipped in byte {i}"
            );
        }
        assert!(!rs256_both(&keys, input.as_bytes(), &sig[1..]));
        assert!(!rs256_both(
            &keys,
            input.as_bytes(),
            &[&[0][..], &sig].concat()
        ));
        let n = unb64(RFC7515_A2_N);
        assert!(!rs256_both(&keys, input.as_bytes(), &n));
        assert!(!rs256_both(&keys, input.as_bytes(), &[0xff; 256]));
    }

    /// The filter's RS256 check and rsa 0.10's; they must agree.
    fn rs256_both(keys: &(Rs256Key, rsa::PublicKey), message: &[u8], signature: &[u8]) -> bool {
        let own = keys.0.verify(message, signature);
        assert_eq!(own, rsa_crate_verifies(&keys.1, message, signature));
        own
    }

    /// rsa 0.10's own PKCS#1 v1.5 verification, the reference the filter's must agree with.
    fn rsa_crate_verifies(key: &rsa::PublicKey, message: &[u8], sig: &[u8]) -> bool {
        use rsa::signature::hazmat::PrehashVerifier;
        let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig) else {
            return false;
        };
        let vk = rsa::pkcs1v15::VerifyingKey::<sha2_11::Sha256>::new(key.clone());
        vk.verify_prehash(sha2_11::Sha256::digest(message).as_slice(), &sig)
            .is_ok()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn rs256_agrees_with_the_rsa_crate(
            message in proptest::collection::vec(any::<u8>(), 0..300),
            flip in proptest::option::of((0usize..256, 0u8..8)),
            other_key in any::<bool>(),
            raw in proptest::collection::vec(any::<u8>(), 256),
        ) {
            let fx = fixture();
            let KeyMaterial::Rs256(ours) = fx.keys.get("rsa").unwrap() else { panic!("rsa key") };
            let theirs = &fx.rsa_public;
            let mut sig = sign(if other_key { Signer::RsaOther } else { Signer::Rsa }, &message);
            if let Some((at, bit)) = flip {
                sig[at] ^= 1 << bit;
            }
            let expected = !other_key && flip.is_none();
            prop_assert_eq!(ours.verify(&message, &sig), expected);
            prop_assert_eq!(rsa_crate_verifies(theirs, &message, &sig), expected);
            // Arbitrary bytes: both say no (a forgery by chance is out of reach).
            prop_assert!(!ours.verify(&message, &raw));
            prop_assert!(!rsa_crate_verifies(theirs, &message, &raw));
        }
    }

    /// EdDSA keeps the checks the module made before it moved to ed25519-dalek: RFC 8032's
    /// answer, no non-canonical `S`, and no small-order `R` even when the equation holds.
    #[test]
    fn ed25519_strict_check() {
        use curve25519_dalek::Scalar;
        use ed25519_dalek::Verifier;
        let fx = fixture();
        let KeyMaterial::EdDsa(key) = fx.keys.get("ed").unwrap() else {
            panic!("ed key")
        };
        // RFC 8032 7.1 TEST 1: the empty message.
        let rfc = hex(concat!(
            "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555",
            "fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
        ));
        assert!(ed25519_ok(key, b"", &rfc));
        assert!(!ed25519_ok(key, b"x", &rfc));
        assert!(!ed25519_ok(key, b"", &rfc[..63]));
        // S + L: the same point equation, a non-canonical scalar.
        let l = hex("edd3f55c1a631258d69cf7a2def9de1400000000000000000000000000000010");
        let mut high = rfc.clone();
        let mut carry = 0u16;
        for (s, l) in high[32..].iter_mut().zip(&l) {
            let sum = u16::from(*s) + u16::from(*l) + carry;
            *s = sum.to_le_bytes()[0];
            carry = sum >> 8;
        }
        assert_eq!(carry, 0);
        assert!(!ed25519_ok(key, b"", &high));
        // R = the identity (small order) with S = k·a satisfies [S]B = R + [k]A: a lax check
        // accepts it, the strict one must not.
        let message = b"small-order R";
        let mut identity = [0u8; 32];
        identity[0] = 1;
        let hash = sha2_11::Sha512::new()
            .chain_update(identity)
            .chain_update(key.as_bytes())
            .chain_update(message)
            .finalize();
        let k = Scalar::from_bytes_mod_order_wide(&hash.into());
        let a = fx.ed.to_scalar();
        let forged = [identity, (k * a).to_bytes()].concat();
        let sig = ed25519_dalek::Signature::from_slice(&forged).unwrap();
        assert!(
            key.verify(message, &sig).is_ok(),
            "the lax check accepts it"
        );
        assert!(!ed25519_ok(key, message, &forged));
    }
}
