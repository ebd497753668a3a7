//! JSON Web Key Set parsing (RFC 7517) into ready-to-use signature verifiers.
//!
//! A [`KeySet`] is built once per JWKS document (at configuration time or after a fetch from the
//! IdP) and then only looked up by `kid` on the request path. All key material is decoded and
//! validated here, so verifying a token never parses a key.
//!
//! Supported keys: `RSA` (RS256, modulus 2048..=8192 bits), `EC` on `P-256` (ES256) and `OKP`
//! with `Ed25519` (EdDSA). Keys that are not for signatures, of another type or curve, bound to
//! another algorithm or without `kid` are skipped; a key of a supported type whose material is
//! broken makes the whole set an error, because it means a broken IdP response or config.

use std::fmt;

use crate::json::{Map, Value};
use base64::{
    alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
    Engine as _,
};
use jwt_compact::alg::{Ed25519, Es256};
use jwt_compact::Algorithm;

/// A JWS signature algorithm this crate can verify.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
    /// Ed25519 signatures (RFC 8037).
    EdDsa,
}

impl Alg {
    /// All supported algorithms.
    pub const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    /// Parses a JOSE `alg` name. The comparison is exact and case-sensitive.
    pub fn from_name(s: &str) -> Option<Alg> {
        match s {
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            "EdDSA" => Some(Alg::EdDsa),
            _ => None,
        }
    }

    /// The JOSE `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Alg::Rs256 => 1,
            Alg::Es256 => 2,
            Alg::EdDsa => 4,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A set of [`Alg`]s (the allowlist of a token rule).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct AlgSet(u8);

impl AlgSet {
    /// The empty set.
    pub const fn empty() -> AlgSet {
        AlgSet(0)
    }

    /// All supported algorithms.
    pub const fn all() -> AlgSet {
        AlgSet(7)
    }

    /// Adds `alg` to the set.
    pub fn insert(&mut self, alg: Alg) {
        self.0 |= alg.bit();
    }

    /// Returns the set with `alg` added.
    #[must_use]
    pub fn with(mut self, alg: Alg) -> AlgSet {
        self.insert(alg);
        self
    }

    /// Whether `alg` is in the set.
    pub fn contains(self, alg: Alg) -> bool {
        self.0 & alg.bit() != 0
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The algorithms in the set, in [`Alg::ALL`] order.
    pub fn iter(self) -> impl Iterator<Item = Alg> {
        Alg::ALL.into_iter().filter(move |a| self.contains(*a))
    }
}

impl FromIterator<Alg> for AlgSet {
    fn from_iter<I: IntoIterator<Item = Alg>>(iter: I) -> AlgSet {
        iter.into_iter().fold(AlgSet::empty(), AlgSet::with)
    }
}

impl fmt::Debug for AlgSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Why a JWKS document was rejected. Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum JwksError {
    /// The document is not valid JSON.
    NotJson,
    /// The document is not an object with a `keys` array.
    NoKeysArray,
    /// A key of a supported type has broken material.
    MalformedKey {
        /// The key's `kid`, sanitized (control characters replaced, at most 64 characters).
        kid: String,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// No key in the set is usable for RS256, ES256 or EdDSA signatures.
    NoUsableKeys,
}

impl fmt::Display for JwksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JwksError::NotJson => f.write_str("JWKS is not valid JSON"),
            JwksError::NoKeysArray => f.write_str("JWKS is not an object with a \"keys\" array"),
            JwksError::MalformedKey { kid, problem } => {
                write!(f, "JWKS key with kid {kid:?} is malformed: {problem}")
            }
            JwksError::NoUsableKeys => f.write_str(
                "JWKS has no usable signing key (RSA 2048..8192 bits, EC P-256 or Ed25519 with a kid)",
            ),
        }
    }
}

impl std::error::Error for JwksError {}

/// Verifying key for ES256 (`p256::ecdsa::VerifyingKey`, as used by jwt-compact).
pub(crate) type Es256Key = <Es256 as Algorithm>::VerifyingKey;
/// Verifying key for EdDSA (`ed25519_dalek::VerifyingKey`, as used by jwt-compact).
pub(crate) type Ed25519Key = <Ed25519 as Algorithm>::VerifyingKey;
pub(crate) use super::rs256::Rs256Key;

/// Parsed key material, ready to verify signatures.
pub(crate) enum KeyMaterial {
    Rs256(Box<Rs256Key>),
    Es256(Box<Es256Key>),
    EdDsa(Ed25519Key),
}

impl KeyMaterial {
    pub(crate) fn alg(&self) -> Alg {
        match self {
            KeyMaterial::Rs256(_) => Alg::Rs256,
            KeyMaterial::Es256(_) => Alg::Es256,
            KeyMaterial::EdDsa(_) => Alg::EdDsa,
        }
    }
}

/// A set of verifying keys indexed by `kid`.
pub struct KeySet {
    /// Sorted by kid, kids unique.
    keys: Vec<(String, KeyMaterial)>,
    /// Kids of supported keys with broken material that [`KeySet::parse_lenient`] skipped, and
    /// why: a token naming one is refused, never verified with another key.
    rejected: Vec<(String, &'static str)>,
}

impl fmt::Debug for KeySet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.keys.iter().map(|(kid, key)| (kid, key.alg())))
            .finish()
    }
}

/// Lenient base64url for JWK members: padding is tolerated (some IdPs emit it), but the
/// alphabet is strictly URL-safe and trailing bits must be zero.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;
const COORD_LEN: usize = 32;

impl KeySet {
    /// Parses a JWKS document (`{"keys":[...]}`), refusing it whole when a supported key has
    /// broken material (for key sets written into the configuration: a typo must stop the start).
    pub fn parse(json: &[u8]) -> Result<KeySet, JwksError> {
        KeySet::parse_lenient(json)?.refusing_broken()
    }

    /// [`KeySet::parse`] of a JWKS document already parsed (the configuration's `jwks.inline`).
    pub fn from_document(doc: &Value) -> Result<KeySet, JwksError> {
        KeySet::lenient_from_document(doc)?.refusing_broken()
    }

    /// The set, or the first broken key's error when any key was skipped.
    fn refusing_broken(self) -> Result<KeySet, JwksError> {
        match self.rejected.first() {
            Some((kid, problem)) => Err(malformed(kid, problem)),
            None => Ok(self),
        }
    }

    /// Parses a fetched JWKS document: a supported key with broken material (off-curve point,
    /// weak RSA, small-order Ed25519, ...) is skipped and remembered in [`KeySet::rejected`],
    /// so one bad key in a rotation does not void the good ones. Fails only when no key is
    /// usable (with the first broken key's error, if there was one).
    pub fn parse_lenient(json: &[u8]) -> Result<KeySet, JwksError> {
        let doc: Value = crate::json::from_slice(json).map_err(|_| JwksError::NotJson)?;
        KeySet::lenient_from_document(&doc)
    }

    fn lenient_from_document(doc: &Value) -> Result<KeySet, JwksError> {
        let entries = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or(JwksError::NoKeysArray)?;
        let mut keys = Vec::with_capacity(entries.len());
        let mut rejected = Vec::new();
        for entry in entries {
            let Some(jwk) = entry.as_object() else {
                continue;
            };
            match parse_key(jwk) {
                // Sorted by kid for lookups; of two keys with one kid, the first in the
                // document stays. Inserted in place: a sort would link one more sort routine.
                Ok(Some(parsed)) => {
                    if let Err(at) = keys.binary_search_by(|k: &(String, KeyMaterial)| {
                        k.0.as_str().cmp(parsed.0.as_str())
                    }) {
                        keys.insert(at, parsed);
                    }
                }
                Ok(None) => {}
                Err(JwksError::MalformedKey { problem, .. }) => {
                    let kid = jwk.get("kid").and_then(Value::as_str).unwrap_or_default();
                    rejected.push((kid.to_owned(), problem));
                }
                Err(e) => return Err(e),
            }
        }
        if keys.is_empty() {
            return Err(match rejected.first() {
                Some((kid, problem)) => malformed(kid, problem),
                None => JwksError::NoUsableKeys,
            });
        }
        Ok(KeySet { keys, rejected })
    }

    /// The skipped broken keys: raw kid and problem (see [`KeySet::parse_lenient`]).
    pub fn rejected(&self) -> &[(String, &'static str)] {
        &self.rejected
    }

    /// Whether `kid` names a key that was skipped as broken.
    pub fn is_rejected(&self, kid: &str) -> bool {
        self.rejected.iter().any(|(k, _)| k == kid)
    }

    /// Whether a key with this `kid` is in the set.
    pub fn contains_kid(&self, kid: &str) -> bool {
        self.get(kid).is_some()
    }

    /// The algorithm the key with this `kid` serves.
    pub fn alg_of(&self, kid: &str) -> Option<Alg> {
        self.get(kid).map(KeyMaterial::alg)
    }

    /// The kids in the set, sorted.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(kid, _)| kid.as_str())
    }

    /// Number of usable keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Always false for a parsed set (parsing fails without usable keys).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub(crate) fn get(&self, kid: &str) -> Option<&KeyMaterial> {
        self.keys
            .binary_search_by(|(k, _)| k.as_str().cmp(kid))
            .ok()
            .and_then(|i| self.keys.get(i))
            .map(|(_, key)| key)
    }
}

/// The kid as it may appear in an error message: no control characters, bounded length.
fn printable_kid(kid: &str) -> String {
    kid.chars()
        .take(64)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn malformed(kid: &str, problem: &'static str) -> JwksError {
    JwksError::MalformedKey {
        kid: printable_kid(kid),
        problem,
    }
}

/// Returns `Ok(None)` for keys to skip, `Err` for supported keys with broken material.
fn parse_key(jwk: &Map) -> Result<Option<(String, KeyMaterial)>, JwksError> {
    if let Some(usage) = jwk.get("use") {
        if usage.as_str() != Some("sig") {
            return Ok(None);
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let verifies = ops
            .as_array()
            .is_some_and(|ops| ops.iter().any(|op| op.as_str() == Some("verify")));
        if !verifies {
            return Ok(None);
        }
    }
    let Some(kid) = jwk.get("kid").and_then(Value::as_str) else {
        return Ok(None);
    };
    let kty = jwk.get("kty").and_then(Value::as_str);
    let crv = jwk.get("crv").and_then(Value::as_str);
    let alg = match (kty, crv) {
        (Some("RSA"), _) => Alg::Rs256,
        (Some("EC"), Some("P-256")) => Alg::Es256,
        (Some("OKP"), Some("Ed25519")) => Alg::EdDsa,
        _ => return Ok(None),
    };
    if let Some(bound) = jwk.get("alg") {
        if bound.as_str().and_then(Alg::from_name) != Some(alg) {
            return Ok(None);
        }
    }
    let material = match alg {
        Alg::Rs256 => match rsa_key(jwk, kid)? {
            Some(key) => KeyMaterial::Rs256(Box::new(key)),
            None => return Ok(None),
        },
        Alg::Es256 => KeyMaterial::Es256(Box::new(p256_key(jwk, kid)?)),
        Alg::EdDsa => KeyMaterial::EdDsa(ed25519_key(jwk, kid)?),
    };
    Ok(Some((kid.to_owned(), material)))
}

fn b64_member(
    jwk: &Map,
    kid: &str,
    name: &'static str,
    missing: &'static str,
    bad: &'static str,
) -> Result<Vec<u8>, JwksError> {
    let text = jwk
        .get(name)
        .and_then(Value::as_str)
        .ok_or_else(|| malformed(kid, missing))?;
    JWK_B64.decode(text).map_err(|_| malformed(kid, bad))
}

fn strip_leading_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|b| *b != 0).unwrap_or(bytes.len());
    bytes.get(start..).unwrap_or_default()
}

/// `Ok(None)`: modulus size outside 2048..=8192 bits, skip the key.
fn rsa_key(jwk: &Map, kid: &str) -> Result<Option<Rs256Key>, JwksError> {
    let n = b64_member(jwk, kid, "n", "missing \"n\"", "\"n\" is not base64url")?;
    let e = b64_member(jwk, kid, "e", "missing \"e\"", "\"e\" is not base64url")?;
    let n = strip_leading_zeros(&n);
    let e = strip_leading_zeros(&e);
    let Some(first) = n.first() else {
        return Err(malformed(kid, "\"n\" is zero"));
    };
    if e.is_empty() {
        return Err(malformed(kid, "\"e\" is zero"));
    }
    // Exponents above 2^33-1 are refused anyway; this names the problem.
    if e.len() > 8 {
        return Err(malformed(kid, "\"e\" is too large"));
    }
    let bits = (n.len() - 1) * 8 + (8 - first.leading_zeros() as usize);
    if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
        return Ok(None);
    }
    let key = Rs256Key::new(n, e)
        .map_err(|_| malformed(kid, "\"n\"/\"e\" do not form a valid RSA public key"))?;
    Ok(Some(key))
}

fn p256_key(jwk: &Map, kid: &str) -> Result<Es256Key, JwksError> {
    let x = b64_member(jwk, kid, "x", "missing \"x\"", "\"x\" is not base64url")?;
    let y = b64_member(jwk, kid, "y", "missing \"y\"", "\"y\" is not base64url")?;
    if x.len() != COORD_LEN || y.len() != COORD_LEN {
        return Err(malformed(kid, "P-256 coordinates must be 32 bytes each"));
    }
    let mut sec1 = Vec::with_capacity(1 + 2 * COORD_LEN);
    sec1.push(4); // uncompressed point
    sec1.extend_from_slice(&x);
    sec1.extend_from_slice(&y);
    <Es256Key as jwt_compact::alg::VerifyingKey<Es256>>::from_slice(&sec1)
        .map_err(|_| malformed(kid, "not a point on P-256"))
}

fn ed25519_key(jwk: &Map, kid: &str) -> Result<Ed25519Key, JwksError> {
    let x = b64_member(jwk, kid, "x", "missing \"x\"", "\"x\" is not base64url")?;
    let key = <Ed25519Key as jwt_compact::alg::VerifyingKey<Ed25519>>::from_slice(&x)
        .map_err(|_| malformed(kid, "Ed25519 \"x\" must be 32 bytes"))?;
    // A small-order key would accept forged signatures under a lax check.
    if key.is_weak() {
        return Err(malformed(kid, "not a valid Ed25519 public key"));
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use serde_json::{json, Value};

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    // RFC 6979 A.2.5 P-256 public key.
    const P256_X: &str = "60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6";
    const P256_Y: &str = "7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299";
    // RFC 8032 7.1 TEST 1 public key.
    const ED_X: &str = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";

    use crate::testkit::hex;

    fn rsa_n(bytes: usize, first: u8, last: u8) -> String {
        let mut n = vec![0xC5; bytes];
        n[0] = first;
        n[bytes - 1] = last;
        b64(&n)
    }

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "n": rsa_n(256, 0xC5, 0x01), "e": "AQAB"})
    }

    fn ec(kid: &str) -> Value {
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": b64(&hex(P256_X)), "y": b64(&hex(P256_Y))})
    }

    fn ed(kid: &str) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "kid": kid, "x": b64(&hex(ED_X))})
    }

    fn with(mut key: Value, field: &str, value: Value) -> Value {
        key.as_object_mut().unwrap().insert(field.into(), value);
        key
    }

    fn without(mut key: Value, field: &str) -> Value {
        key.as_object_mut().unwrap().remove(field);
        key
    }

    fn parse(keys: Vec<Value>) -> Result<KeySet, JwksError> {
        KeySet::parse(json!({ "keys": keys }).to_string().as_bytes())
    }

    #[test]
    fn alg_names_are_exact() {
        for alg in Alg::ALL {
            assert_eq!(Alg::from_name(alg.name()), Some(alg));
        }
        for name in [
            "rs256", "RS384", "HS256", "none", "es256", "EDDSA", "Ed25519", "", " RS256",
        ] {
            assert_eq!(Alg::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn alg_set_ops() {
        let mut set = AlgSet::empty();
        assert!(set.is_empty());
        set.insert(Alg::Es256);
        assert!(set.contains(Alg::Es256));
        assert!(!set.contains(Alg::Rs256));
        assert!(!set.is_empty());
        let all: AlgSet = Alg::ALL.into_iter().collect();
        assert_eq!(all, AlgSet::all());
        assert_eq!(all.iter().collect::<Vec<_>>(), Alg::ALL.to_vec());
        assert_eq!(format!("{set:?}"), "{Es256}");
    }

    #[test]
    fn document_errors() {
        let cases: &[(&str, JwksError)] = &[
            ("", JwksError::NotJson),
            ("{", JwksError::NotJson),
            ("not json", JwksError::NotJson),
            ("[]", JwksError::NoKeysArray),
            ("{}", JwksError::NoKeysArray),
            (r#"{"keys":{}}"#, JwksError::NoKeysArray),
            (r#"{"keys":null}"#, JwksError::NoKeysArray),
            (r#"{"Keys":[]}"#, JwksError::NoKeysArray),
            (r#"{"keys":[]}"#, JwksError::NoUsableKeys),
            (r#"{"keys":[1,"a",null,[]]}"#, JwksError::NoUsableKeys),
        ];
        for (doc, want) in cases {
            assert_eq!(KeySet::parse(doc.as_bytes()).unwrap_err(), *want, "{doc}");
        }
    }

    #[test]
    fn supported_keys_parse() {
        let set = parse(vec![rsa("r"), ec("e"), ed("o")]).unwrap();
        assert_eq!(set.len(), 3);
        assert!(!set.is_empty());
        assert_eq!(set.alg_of("r"), Some(Alg::Rs256));
        assert_eq!(set.alg_of("e"), Some(Alg::Es256));
        assert_eq!(set.alg_of("o"), Some(Alg::EdDsa));
        assert!(set.contains_kid("r"));
        assert!(!set.contains_kid("R"));
        assert!(!set.contains_kid(""));
        assert_eq!(set.kids().collect::<Vec<_>>(), ["e", "o", "r"]);
    }

    /// Each key is put alone in a set next to a good key; a skipped key leaves only "good".
    #[test]
    fn skipped_keys() {
        let cases: Vec<(&str, Value)> = vec![
            ("use enc", with(rsa("k"), "use", json!("enc"))),
            ("use non-string", with(rsa("k"), "use", json!(1))),
            ("use SIG (case)", with(rsa("k"), "use", json!("SIG"))),
            (
                "key_ops without verify",
                with(rsa("k"), "key_ops", json!(["encrypt"])),
            ),
            (
                "key_ops not array",
                with(rsa("k"), "key_ops", json!("verify")),
            ),
            (
                "kty oct",
                json!({"kty": "oct", "kid": "k", "k": "c2VjcmV0"}),
            ),
            ("kty missing", without(rsa("k"), "kty")),
            ("kty lower", with(rsa("k"), "kty", json!("rsa"))),
            ("EC P-384", with(ec("k"), "crv", json!("P-384"))),
            ("EC secp256k1", with(ec("k"), "crv", json!("secp256k1"))),
            ("EC without crv", without(ec("k"), "crv")),
            ("OKP X448", with(ed("k"), "crv", json!("X448"))),
            ("OKP X25519", with(ed("k"), "crv", json!("X25519"))),
            ("OKP Ed448", with(ed("k"), "crv", json!("Ed448"))),
            ("no kid", without(rsa("k"), "kid")),
            ("kid number", with(rsa("k"), "kid", json!(7))),
            ("RSA alg RS384", with(rsa("k"), "alg", json!("RS384"))),
            ("RSA alg PS256", with(rsa("k"), "alg", json!("PS256"))),
            ("RSA alg ES256", with(rsa("k"), "alg", json!("ES256"))),
            ("RSA alg rs256", with(rsa("k"), "alg", json!("rs256"))),
            ("RSA alg null", with(rsa("k"), "alg", Value::Null)),
            ("EC alg ES384", with(ec("k"), "alg", json!("ES384"))),
            ("OKP alg Ed25519", with(ed("k"), "alg", json!("Ed25519"))),
            (
                "RSA 1024",
                with(rsa("k"), "n", json!(rsa_n(128, 0xC5, 0x01))),
            ),
            (
                "RSA 2047 bits",
                with(rsa("k"), "n", json!(rsa_n(256, 0x7F, 0x01))),
            ),
            (
                "RSA 8193 bits",
                with(rsa("k"), "n", json!(rsa_n(1025, 0x01, 0xFF))),
            ),
        ];
        for (name, key) in cases {
            let set =
                parse(vec![key.clone(), ec("good")]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(set.kids().collect::<Vec<_>>(), ["good"], "{name}");
            // Alone, the key leaves nothing usable.
            assert_eq!(
                parse(vec![key]).unwrap_err(),
                JwksError::NoUsableKeys,
                "{name}"
            );
        }
    }

    #[test]
    fn accepted_variants() {
        let cases: Vec<(&str, Value, Alg)> = vec![
            ("use sig", with(rsa("k"), "use", json!("sig")), Alg::Rs256),
            (
                "key_ops verify",
                with(ec("k"), "key_ops", json!(["verify"])),
                Alg::Es256,
            ),
            (
                "alg RS256",
                with(rsa("k"), "alg", json!("RS256")),
                Alg::Rs256,
            ),
            (
                "alg ES256",
                with(ec("k"), "alg", json!("ES256")),
                Alg::Es256,
            ),
            (
                "alg EdDSA",
                with(ed("k"), "alg", json!("EdDSA")),
                Alg::EdDsa,
            ),
            (
                "RSA 2048 exactly",
                with(rsa("k"), "n", json!(rsa_n(256, 0x80, 0x01))),
                Alg::Rs256,
            ),
            (
                "RSA 8192 bits",
                with(rsa("k"), "n", json!(rsa_n(1024, 0xFF, 0xFF))),
                Alg::Rs256,
            ),
            (
                "RSA n with leading zero byte",
                with(
                    rsa("k"),
                    "n",
                    json!(b64(&[&[0u8][..], &[0xC5; 256]].concat())),
                ),
                Alg::Rs256,
            ),
            (
                "RSA padded n",
                with(
                    rsa("k"),
                    "n",
                    json!(format!("{}==", rsa_n(256, 0xC5, 0x01))),
                ),
                Alg::Rs256,
            ),
            ("RSA e=3", with(rsa("k"), "e", json!("Aw")), Alg::Rs256),
            (
                "padded base64 x",
                with(ed("k"), "x", json!(format!("{}=", b64(&hex(ED_X))))),
                Alg::EdDsa,
            ),
            (
                "extra members",
                with(ec("k"), "x5c", json!(["MIIB"])),
                Alg::Es256,
            ),
            ("empty kid", with(ed("k"), "kid", json!("")), Alg::EdDsa),
        ];
        for (name, key, alg) in cases {
            let kid = key["kid"].as_str().unwrap().to_owned();
            let set = parse(vec![key]).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(set.alg_of(&kid), Some(alg), "{name}");
        }
    }

    #[test]
    fn malformed_keys_fail_the_set() {
        let mut even = vec![0xC5; 256];
        even[255] = 0xC4;
        let mut off_curve = hex(P256_Y);
        off_curve[31] ^= 1;
        let cases: Vec<(&str, Value, &str)> = vec![
            (
                "RSA n bad base64",
                with(rsa("k"), "n", json!("AQ+B")),
                "\"n\" is not base64url",
            ),
            (
                "RSA n not string",
                with(rsa("k"), "n", json!(5)),
                "missing \"n\"",
            ),
            ("RSA e missing", without(rsa("k"), "e"), "missing \"e\""),
            ("RSA n missing", without(rsa("k"), "n"), "missing \"n\""),
            (
                "RSA n zero",
                with(rsa("k"), "n", json!("AAAA")),
                "\"n\" is zero",
            ),
            (
                "RSA e empty",
                with(rsa("k"), "e", json!("")),
                "\"e\" is zero",
            ),
            (
                "RSA even n",
                with(rsa("k"), "n", json!(b64(&even))),
                "valid RSA public key",
            ),
            (
                "RSA e=1",
                with(rsa("k"), "e", json!("AQ")),
                "valid RSA public key",
            ),
            (
                "RSA e even",
                with(rsa("k"), "e", json!("AQAA")),
                "valid RSA public key",
            ),
            (
                "RSA e huge",
                with(rsa("k"), "e", json!(b64(&[1; 9]))),
                "\"e\" is too large",
            ),
            (
                "EC x short",
                with(ec("k"), "x", json!(b64(&[1; 31]))),
                "32 bytes",
            ),
            (
                "EC y long",
                with(ec("k"), "y", json!(b64(&[1; 33]))),
                "32 bytes",
            ),
            ("EC y missing", without(ec("k"), "y"), "missing \"y\""),
            (
                "EC off curve",
                with(ec("k"), "y", json!(b64(&off_curve))),
                "not a point",
            ),
            (
                "EC x std base64",
                with(ec("k"), "x", json!("YP7Uuk+a")),
                "not base64url",
            ),
            (
                "OKP x short",
                with(ed("k"), "x", json!(b64(&[1; 31]))),
                "32 bytes",
            ),
            (
                "OKP small order",
                with(ed("k"), "x", json!(b64(&[0; 32]))),
                "not a valid",
            ),
            ("OKP x missing", without(ed("k"), "x"), "missing \"x\""),
        ];
        for (name, key, problem) in cases {
            let err = parse(vec![ec("good"), key]).unwrap_err();
            let JwksError::MalformedKey { kid, problem: got } = &err else {
                panic!("{name}: {err:?}");
            };
            assert_eq!(kid, "k", "{name}");
            assert!(got.contains(problem), "{name}: {got}");
            let text = err.to_string();
            assert!(text.contains("\"k\""), "{name}: {text}");
        }
    }

    #[test]
    fn error_kid_is_sanitized() {
        let key = with(
            with(rsa("k"), "n", json!("!")),
            "kid",
            json!(format!("a\r\nb{}", "x".repeat(100))),
        );
        let err = parse(vec![key]).unwrap_err();
        let JwksError::MalformedKey { kid, .. } = err else {
            panic!()
        };
        assert_eq!(kid.chars().count(), 64);
        assert!(kid.starts_with("a??b"));
    }

    #[test]
    fn a_fetched_set_skips_a_broken_key_and_refuses_tokens_naming_it() {
        let bad = with(ed(crate::testkit::KID), "x", json!(b64(&[0; 32])));
        let doc = json!({"keys": [ec("good"), bad]}).to_string();
        // From the configuration: refused whole.
        assert!(matches!(
            KeySet::parse(doc.as_bytes()),
            Err(JwksError::MalformedKey { .. })
        ));
        // Fetched: the good key stays usable, the broken one is remembered.
        let set = KeySet::parse_lenient(doc.as_bytes()).unwrap();
        assert_eq!(set.len(), 1);
        assert!(set.contains_kid("good"));
        assert!(set.is_rejected(crate::testkit::KID));
        assert_eq!(set.rejected().len(), 1);
        // A token signed for the broken kid is refused, not looked up elsewhere.
        let token = crate::testkit::sign(&crate::testkit::claims());
        let rules = crate::jwt::token::ClaimRules {
            issuer: crate::testkit::ISS.to_owned(),
            audiences: vec![crate::testkit::AUD.to_owned()],
            required_claims: Vec::new(),
            algorithms: crate::jwt::jwks::AlgSet::all(),
            clock_skew_s: 30,
            forward_claims: Vec::new(),
        };
        let got = crate::jwt::token::verify(&token, &set, &rules, crate::testkit::NOW);
        assert_eq!(got.err(), Some(crate::jwt::token::TokenError::RejectedKey));
        // Only broken keys: the first one's error.
        let only_bad = json!({"keys": [with(ed("b"), "x", json!(b64(&[0; 32])))]}).to_string();
        assert!(matches!(
            KeySet::parse_lenient(only_bad.as_bytes()),
            Err(JwksError::MalformedKey { .. })
        ));
    }

    #[test]
    fn duplicate_kid_keeps_first() {
        let set = parse(vec![ec("dup"), rsa("dup"), ed("dup"), rsa("other")]).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.alg_of("dup"), Some(Alg::Es256));
        // A skipped key does not shadow a later usable one.
        let set = parse(vec![with(rsa("dup"), "use", json!("enc")), ed("dup")]).unwrap();
        assert_eq!(set.alg_of("dup"), Some(Alg::EdDsa));
    }

    #[test]
    fn only_skipped_keys_is_no_usable_keys() {
        let err = parse(vec![
            with(rsa("k"), "use", json!("enc")),
            without(ec("e"), "kid"),
        ])
        .unwrap_err();
        assert_eq!(err, JwksError::NoUsableKeys);
    }

    #[test]
    fn debug_shows_kids_and_types_only() {
        let set = parse(vec![rsa("r1"), ed("o1")]).unwrap();
        let dbg = format!("{set:?}");
        assert_eq!(dbg, r#"{"o1": EdDsa, "r1": Rs256}"#);
        assert!(!dbg.contains("AQAB"));
    }

    #[test]
    fn error_display_has_no_key_material() {
        let n = rsa_n(256, 0xC5, 0x01);
        let key = with(rsa("k"), "n", json!(format!("{n}!")));
        let err = parse(vec![key]).unwrap_err();
        assert!(!err.to_string().contains(&n[..20]));
        for e in [
            JwksError::NotJson,
            JwksError::NoKeysArray,
            JwksError::NoUsableKeys,
        ] {
            assert!(!e.to_string().is_empty());
        }
    }
}
