//! Instruction-count harness for the relay's pure paths, run natively under callgrind (counts
//! are repeatable on a busy machine, unlike timings):
//!
//! ```sh
//! cargo build --release --example instr
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/instr hit 1000
//! ```
//!
//! Modes (each runs its step `N` times after a one-time setup; the per-step figure is the
//! difference of two runs with different `N`, divided by the difference of `N`, so setup cancels):
//!
//! - `hit N`: `relay::decide` for the benchmark's request (GET /api/me, the access-token cookie,
//!   a cache hit), the relay's whole in-VM decision on the hot path;
//! - `hit-view N`, `hit-path N`, `hit-cookie N`, `hit-csrf N`, `hit-cache N`, `hit-forged N`:
//!   parts of a cache hit (the view of the header map, made in one walk before `decide`; the
//!   path check; the Cookie header read and the scan for the relay's cookies (which also tells ASCII);
//!   the CSRF check of a GET; the token cache's lookup; the search for forged claim headers,
//!   which the stream makes next to `decide`);
//! - `response N`: the cache policy of a protected response
//!   (`cache_policy::protected_response_each` over the benchmark's response header map, read in
//!   place), the response side of a hit;
//! - `header_map N`: the copy of the request header map into the VM (what the SDK's
//!   `get_map_bytes` does with the host's buffer);
//! - `cold-rs256 N`, `cold-es256 N`, `cold-eddsa N`: `jwt::token::verify` of one token (no
//!   cache), the work of a cache miss;
//! - `rsa-crate N`: the RS256 signature check alone through rsa 0.10's `verify_prehash`;
//! - `session N`: sealing and unsealing a session cookie (AES-256-GCM), the refresh path;
//! - `record N`: writing and reading back a success record of the shared refresh table;
//! - `jwks N`: parsing the benchmark's RS256 key set.
//!
//! A third argument `R` repeats the `N` steps R times and prints the fastest batch's time per
//! step (min of R, so preemption by other work is filtered out); built for wasm32-wasip1, the
//! same harness runs under Node.js (V8, the engine Envoy uses) through its WASI support.
//!
//! The harness also prints how many heap allocations the run made (`allocations: A`, through a
//! counting global allocator); like instructions, the per-step figure is the difference of two
//! runs over the difference of `N`.
//!
//! Native x86-64 counts are not Wasm costs (V8's code differs, and the RSA arithmetic uses the
//! same 64-bit limbs on both), but their ratios show where the time goes and whether a change
//! helped.

// Only serde_json `Value` lookups index here, and those answer Null for a missing member.
#![allow(clippy::indexing_slicing)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use edge_token_relay::config::Config;
use edge_token_relay::http::{cache_policy, encode_wire, RequestView, WireIter};
use edge_token_relay::jwt::jwks::KeySet;
use edge_token_relay::jwt::token::{self, ClaimRules};
use edge_token_relay::jwt::token_cache::TokenCache;
use edge_token_relay::relay::{self, Step};
use edge_token_relay::session::{self, Session, SessionKeys};
use edge_token_relay::{csrf, jar};
use serde_json::{json, Value};

// Pre-signed tokens (RFC 7515 style compact JWS) over the benchmark's claims, made once with
// the test keys of src/testdata (RS256) and the RFC 6979 / RFC 8032 test keys (ES256, EdDSA):
// the harness itself never signs, so signing cost is not in any count.
const NOW: u64 = 1_700_000_000;

/// The system allocator, counting allocations (reallocations included: each may move).
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is forwarded unchanged to `System`, which upholds `GlobalAlloc`'s contract.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's guarantees for `alloc` are passed on as they are.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by `System` with `layout` (every allocation goes there).
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; `new_size` is the caller's, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn b64(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .filter_map(|i| s.get(i..i + 2))
        .filter_map(|h| u8::from_str_radix(h, 16).ok())
        .collect()
}

fn claims() -> Value {
    json!({"iss": "https://idp.test", "aud": "my-app-client-id", "token_use": "access",
           "sub": "bench-user", "iat": NOW, "exp": NOW + 3600, "jti": "hit"})
}

struct Keys {
    jwks: Value,
    rs256: String,
    es256: String,
    eddsa: String,
}

fn keys() -> Keys {
    use jwt_compact::alg::{Ed25519, Es256};
    use jwt_compact::{Algorithm, AlgorithmSignature};
    use rsa::signature::hazmat::PrehashSigner;
    use sha2_11::Digest as _;

    let rsa_keys: Value = serde_json::from_str(include_str!("../src/testdata/rsa_test_keys.json"))
        .unwrap_or_default();
    let jwk = &rsa_keys["rsa2048"];
    let int = |name: &str| {
        let bytes = URL_SAFE_NO_PAD
            .decode(jwk[name].as_str().unwrap_or(""))
            .unwrap_or_default();
        rsa::BoxedUint::from_be_slice_vartime(&bytes)
    };
    let rsa_key =
        rsa::PrivateKey::from_components(int("n"), int("e"), int("d"), vec![int("p"), int("q")])
            .ok();
    // RFC 6979 A.2.5 (P-256) and RFC 8032 7.1 TEST 1 (Ed25519) key pairs.
    let p256_d = hex("C9AFA9D845BA75166B5C215767B1D6934E50C3DB36E89B127B8A622B120F6721");
    let p256_x = hex("60FED4BA255A9D31C961EB74C6356D68C049B8923B61FA6CE669622E60F29FB6");
    let p256_y = hex("7903FE1008B8BC99A41AE9E95628BC64F2F1B20C2D7E9F5177A3C294D4462299");
    let ed_seed = hex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60");
    let ed_x = hex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a");

    let payload = b64(claims().to_string().as_bytes());
    let input = |alg: &str, kid: &str| {
        let header = json!({"alg": alg, "kid": kid, "typ": "JWT"}).to_string();
        format!("{}.{payload}", b64(header.as_bytes()))
    };
    let rs_input = input("RS256", "bench-rs256");
    let rs_sig = rsa_key
        .map(rsa::pkcs1v15::SigningKey::<sha2_11::Sha256>::new)
        .and_then(|k| {
            k.sign_prehash(sha2_11::Sha256::digest(rs_input.as_bytes()).as_slice())
                .ok()
        })
        .map(|s| Box::<[u8]>::from(s).into_vec())
        .unwrap_or_default();
    let es_input = input("ES256", "bench-es256");
    let es_sig = <Es256 as Algorithm>::SigningKey::from_slice(&p256_d)
        .map(|k| Es256.sign(&k, es_input.as_bytes()).as_bytes().into_owned())
        .unwrap_or_default();
    let ed_input = input("EdDSA", "bench-eddsa");
    let ed_sig =
        <<Ed25519 as Algorithm>::SigningKey as jwt_compact::alg::SigningKey<Ed25519>>::from_slice(
            &ed_seed,
        )
        .map(|k| {
            Ed25519
                .sign(&k, ed_input.as_bytes())
                .as_bytes()
                .into_owned()
        })
        .unwrap_or_default();
    Keys {
        jwks: json!({"keys": [
            {"kty": "RSA", "kid": "bench-rs256", "n": jwk["n"], "e": jwk["e"], "use": "sig"},
            {"kty": "EC", "crv": "P-256", "kid": "bench-es256", "x": b64(&p256_x), "y": b64(&p256_y)},
            {"kty": "OKP", "crv": "Ed25519", "kid": "bench-eddsa", "x": b64(&ed_x)},
        ]}),
        rs256: format!("{rs_input}.{}", b64(&rs_sig)),
        es256: format!("{es_input}.{}", b64(&es_sig)),
        eddsa: format!("{ed_input}.{}", b64(&ed_sig)),
    }
}

/// The benchmark's plugin configuration (bench/envoy_configs.py, relay_plugin_config).
fn config(jwks: &Value) -> Option<Config> {
    let raw = json!({
        "protected_prefixes": ["/api/"],
        "issuer": "https://idp.test",
        "audiences": ["my-app-client-id"],
        "required_claims": {"token_use": "access"},
        "algorithms": ["RS256", "ES256", "EdDSA"],
        "clock_skew_s": 30,
        "jwks": {"inline": jwks},
        "forward_claims": {"x-user-sub": "sub"},
    });
    Config::parse(raw.to_string().as_bytes()).ok()
}

/// The request headers wrk sends, as Envoy hands them to the filter.
fn request(token: &str) -> Vec<(String, Vec<u8>)> {
    [
        (":authority", "127.0.0.1:10000".to_string()),
        (":path", "/api/me".to_string()),
        (":method", "GET".to_string()),
        (":scheme", "http".to_string()),
        ("cookie", format!("__Host-relay-at={token}")),
        ("x-forwarded-proto", "http".to_string()),
        (
            "x-request-id",
            "6b1f1b7e-1c0e-4b5e-9d3f-2d6c1a0b9e77".to_string(),
        ),
    ]
    .into_iter()
    .map(|(n, v)| (n.to_string(), v.into_bytes()))
    .collect()
}

/// The proxy-wasm serialization of a header map (what the host writes into the VM's memory).
fn serialize(headers: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    let len = |n: usize| u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes();
    out.extend_from_slice(&len(headers.len()));
    for (n, v) in headers {
        out.extend_from_slice(&len(n.len()));
        out.extend_from_slice(&len(v.len()));
    }
    for (n, v) in headers {
        out.extend_from_slice(n.as_bytes());
        out.push(0);
        out.extend_from_slice(v);
        out.push(0);
    }
    out
}

/// The SDK's deserialization of that buffer (proxy-wasm 0.2.5 `utils::deserialize_map_bytes`).
fn deserialize(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let word = |at: usize| -> usize {
        bytes
            .get(at..at + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, |b| u32::from_le_bytes(b) as usize)
    };
    let count = word(0);
    let mut map = Vec::with_capacity(count);
    let mut p = 4 + count * 8;
    for i in 0..count {
        let (nl, vl) = (word(4 + i * 8), word(8 + i * 8));
        let name = bytes.get(p..p + nl).unwrap_or_default();
        p += nl + 1;
        let value = bytes.get(p..p + vl).unwrap_or_default();
        p += vl + 1;
        map.push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
    }
    map
}

/// A fixture that does not load: the harness would otherwise count a step that did nothing.
fn fail(why: &str) -> ! {
    eprintln!("{why}");
    std::process::exit(2)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = args.get(1).map_or("hit", String::as_str);
    let n: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1000);
    let reps: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(1);
    let k = keys();
    let Some(cfg) = config(&k.jwks) else {
        fail("the benchmark configuration does not parse");
    };
    let Ok(set) = KeySet::parse(json!(k.jwks).to_string().as_bytes()) else {
        fail("the key set does not parse");
    };
    let mut best = u128::MAX;
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..reps {
        let t0 = std::time::Instant::now();
        run(mode, n, &k, &cfg, &set);
        best = best.min(t0.elapsed().as_nanos());
    }
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    eprintln!("allocations: {allocations}");
    if reps > 1 {
        let per = best / u128::try_from(n.max(1)).unwrap_or(1);
        println!("{mode}: {per} ns per step (fastest of {reps} batches of {n})");
    }
}

fn run(mode: &str, n: usize, k: &Keys, cfg: &Config, set: &KeySet) {
    let rules: &ClaimRules = &cfg.rules;
    let cold = |token: &str| {
        for _ in 0..n {
            let v = token::verify(black_box(token), set, rules, NOW);
            assert!(v.is_ok(), "{v:?}");
            black_box(v.ok());
        }
    };
    match mode {
        // `hit` and its parts, for the per-step table (bench/README.md): each part the same
        // work `relay::decide` (or the stream, for `hit-forged`) does on the benchmark's request.
        "hit" | "hit-view" | "hit-path" | "hit-cookie" | "hit-csrf" | "hit-cache"
        | "hit-forged" => {
            let headers = request(&k.rs256);
            let wire = encode_wire(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
            let req = RequestView::wire(&wire);
            let mut cache = TokenCache::new(cfg.token_cache_size);
            let decide = |cache: &mut TokenCache, req: &RequestView<'_>| {
                let step = relay::decide(cfg, Some(set), cache, req, NOW, true);
                assert!(matches!(step, Step::Forward(_)), "{step:?}");
                black_box(step);
            };
            // The first decision verifies the token; every later one is a cache hit.
            decide(&mut cache, &req);
            for _ in 0..n {
                let req = black_box(&req);
                match mode {
                    "hit" => decide(&mut cache, req),
                    "hit-view" => {
                        black_box(RequestView::wire(black_box(&wire)));
                    }
                    "hit-path" => assert!(cfg.paths.is_protected(&req.path())),
                    "hit-cookie" => {
                        let cookie = req.cookie();
                        let Some(header) = cookie.as_deref() else {
                            fail("the request has no Cookie header");
                        };
                        let scan = jar::scan(cfg, header);
                        if !scan.ascii {
                            fail("the request's Cookie header is not ASCII");
                        }
                        black_box(scan.values);
                    }
                    "hit-csrf" => {
                        assert!(csrf::check_request(cfg.csrf.as_ref(), req, None).is_ok())
                    }
                    "hit-cache" => assert!(cache.get(black_box(k.rs256.as_bytes()), NOW).is_some()),
                    _ => assert!(relay::forged_claim_headers(cfg, req).is_empty()),
                }
            }
        }
        "response" => {
            // What the bench's direct response carries when the filter sees it.
            let headers: [(&str, &[u8]); 3] = [
                (":status", b"200"),
                ("content-length", b"3"),
                ("content-type", b"text/plain"),
            ];
            let wire = encode_wire(headers);
            for _ in 0..n {
                let mut writes = 0;
                cache_policy::protected_response_each(
                    WireIter::new(black_box(&wire)),
                    false,
                    |name, value| {
                        black_box((name, value));
                        writes += 1;
                    },
                );
                assert_eq!(writes, 2);
            }
        }
        "header_map" => {
            let bytes = serialize(&request(&k.rs256));
            for _ in 0..n {
                black_box(deserialize(black_box(&bytes)));
            }
        }
        "cold-rs256" => cold(&k.rs256),
        "rsa-crate" => {
            // The RS256 signature check alone, through rsa 0.10's own verify_prehash (constant-
            // time fixed-window exponentiation), for comparison with `cold-rs256`.
            use rsa::signature::hazmat::PrehashVerifier;
            use sha2_11::Digest as _;
            let Some((input, sig)) = k.rs256.rsplit_once('.') else {
                fail("the RS256 token has no signature");
            };
            let sig = URL_SAFE_NO_PAD.decode(sig).unwrap_or_default();
            let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig.as_slice()) else {
                fail("the RS256 signature does not parse");
            };
            let rsa_keys: Value =
                serde_json::from_str(include_str!("../src/testdata/rsa_test_keys.json"))
                    .unwrap_or_default();
            let int = |name: &str| {
                let b64 = rsa_keys["rsa2048"][name].as_str().unwrap_or("");
                rsa::BoxedUint::from_be_slice_vartime(
                    &URL_SAFE_NO_PAD.decode(b64).unwrap_or_default(),
                )
            };
            let Ok(key) = rsa::PublicKey::new(int("n"), int("e")) else {
                fail("the RSA test key does not parse");
            };
            let vk = rsa::pkcs1v15::VerifyingKey::<sha2_11::Sha256>::new(key);
            for _ in 0..n {
                let digest = sha2_11::Sha256::digest(black_box(input).as_bytes());
                let ok = vk.verify_prehash(digest.as_slice(), &sig).is_ok();
                assert!(ok);
            }
        }
        "cold-es256" => cold(&k.es256),
        "cold-eddsa" => cold(&k.eddsa),
        "session" => {
            // The refresh path's AES-GCM work: seal a session (refresh token and ID token) and
            // unseal it again.
            // Bytes 0..32: as distinct as a random key, so the weak-key check lets it through.
            let key: Vec<u8> = (0u8..32).collect();
            let keys = SessionKeys::from_config(&[("k1".to_string(), URL_SAFE_NO_PAD.encode(key))])
                .unwrap_or_else(|e| fail(&format!("the session key is refused: {e:?}")));
            let session = Session {
                rt: "r".repeat(900),
                exp: Some(NOW + 86_400),
                id_token: Some(k.rs256.clone()),
            };
            for i in 0..n {
                let mut iv = [0u8; 12];
                iv[..8].copy_from_slice(&(i as u64).to_le_bytes());
                let sealed = session::seal(&keys, black_box(&session), iv);
                assert!(session::unseal(&keys, black_box(&sealed), NOW).is_ok());
            }
        }
        "record" => {
            // The refresh table's traffic: a success record (its sealed outcome about as long
            // as a real one) written and read back, as each worker does once per refresh.
            use edge_token_relay::relay::flight::{Record, RecordState};
            let record = Record {
                id: "ab".repeat(16),
                state: RecordState::Done {
                    at: NOW,
                    sealed: "x".repeat(1400),
                },
            };
            for _ in 0..n {
                let bytes = black_box(&record).encode();
                assert!(Record::decode(black_box(&bytes)).is_some());
            }
        }
        "jwks" => {
            let text = k.jwks.to_string();
            for _ in 0..n {
                black_box(KeySet::parse(black_box(text.as_bytes())).ok());
            }
        }
        other => fail(&format!(
            "unknown mode {other}: hit, response, header_map, cold-rs256, cold-es256, cold-eddsa, \
             rsa-crate, session, record, jwks"
        )),
    }
}
