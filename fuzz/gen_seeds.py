#!/usr/bin/env python3
"""Writes the hand-made seed inputs under fuzz/corpus/ (deterministic; run from anywhere).

TEST KEYS ONLY: the RSA key is src/testdata/rsa_test_keys.json's "rsa2048", the Ed25519 key is
RFC 8032 7.1 TEST 1, the P-256 key is derived from a fixed scalar (printed below; the same
values are in fuzz/src/lib.rs). Needs the `cryptography` package.

Seeds for the structured targets (jws_structured, decide, csrf_headers) are byte strings the
targets decode field by field; all-zero bytes decode to the "valid" choice of every field.
"""
import base64
import hashlib
import json
import pathlib

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = pathlib.Path(__file__).resolve().parent
REPO = ROOT.parent
CORPUS = ROOT / "corpus"
NOW = 1_700_000_000
ISS = "https://idp.test"
AUD = "my-app-client-id"


def b64u(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def unb64u(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def i2b(n: int, length: int = 0) -> bytes:
    length = length or (n.bit_length() + 7) // 8
    return n.to_bytes(length, "big")


# ---- keys -------------------------------------------------------------------------------
rsa_jwk = json.loads((REPO / "src/testdata/rsa_test_keys.json").read_text())["rsa2048"]
n, e, d, p, q = (int.from_bytes(unb64u(rsa_jwk[k]), "big") for k in ("n", "e", "d", "p", "q"))
rsa_key = rsa.RSAPrivateNumbers(
    p=p, q=q, d=d, dmp1=rsa.rsa_crt_dmp1(d, p), dmq1=rsa.rsa_crt_dmq1(d, q),
    iqmp=rsa.rsa_crt_iqmp(p, q), public_numbers=rsa.RSAPublicNumbers(e, n),
).private_key()

ec_scalar = int.from_bytes(hashlib.sha256(b"edge-token-relay fuzz P-256 test key").digest(), "big")
ec_scalar %= 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
ec_key = ec.derive_private_key(ec_scalar, ec.SECP256R1())
ec_pub = ec_key.public_key().public_numbers()

ed_seed = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
ed_key = ed25519.Ed25519PrivateKey.from_private_bytes(ed_seed)
ed_x = ed_key.public_key().public_bytes_raw()

JWKS = {"keys": [
    {"kty": "RSA", "kid": "rsa-1", "alg": "RS256", "use": "sig", "n": rsa_jwk["n"], "e": rsa_jwk["e"]},
    {"kty": "EC", "kid": "ec-1", "crv": "P-256", "x": b64u(i2b(ec_pub.x, 32)), "y": b64u(i2b(ec_pub.y, 32))},
    {"kty": "OKP", "kid": "ed-1", "crv": "Ed25519", "x": b64u(ed_x)},
]}


def sign(alg: str, kid: str, claims: dict, typ: str = "JWT") -> str:
    header = {"alg": alg, "kid": kid}
    if typ:
        header["typ"] = typ
    si = f"{b64u(json.dumps(header, separators=(',', ':')).encode())}.{b64u(json.dumps(claims, separators=(',', ':')).encode())}"
    m = si.encode()
    if alg == "RS256":
        sig = rsa_key.sign(m, padding.PKCS1v15(), hashes.SHA256())
    elif alg == "ES256":
        r, s = decode_dss_signature(ec_key.sign(m, ec.ECDSA(hashes.SHA256())))
        sig = i2b(r, 32) + i2b(s, 32)
    elif alg == "EdDSA":
        sig = ed_key.sign(m)
    else:
        sig = b""
    return f"{si}.{b64u(sig)}"


def claims(**over):
    c = {"iss": ISS, "aud": AUD, "token_use": "access", "sub": "alice", "exp": NOW + 300, "iat": NOW}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def write(target: str, name: str, data):
    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data if isinstance(data, bytes) else data.encode())


# ---- jws_verify: token strings ----------------------------------------------------------
tokens = {
    "rs256": sign("RS256", "rsa-1", claims()),
    "es256": sign("ES256", "ec-1", claims()),
    "eddsa": sign("EdDSA", "ed-1", claims()),
    "cognito_no_aud": sign("RS256", "rsa-1", claims(aud=None, client_id=AUD, scope="openid profile")),
    "at_jwt_nbf_aud_array": sign("ES256", "ec-1", claims(aud=["other", AUD], nbf=NOW - 10), typ="at+jwt"),
    "expired": sign("EdDSA", "ed-1", claims(exp=NOW - 3600)),
    "wrong_key": sign("EdDSA", "rsa-1", claims()),
    "unknown_kid": sign("EdDSA", "nope", claims()),
    "alg_none": sign("none", "ed-1", claims()),
}
for name, tok in tokens.items():
    write("jws_verify", name, tok)
write("jws_verify", "hs256", b64u(b'{"alg":"HS256","kid":"ed-1"}') + "." + b64u(b"{}") + ".c2ln")
write("jws_verify", "crit", b64u(b'{"alg":"EdDSA","kid":"ed-1","crit":["b64"]}') + ".e30.AAAA")

# ---- cookie_parser: Cookie headers ------------------------------------------------------
write("cookie_parser", "relay", f"a=1; __Host-relay-at={tokens['eddsa']}; __Host-relay-session=s; b=2")
write("cookie_parser", "chunked", "__Host-relay-session.0=abc; __Host-relay-session.1=def; __Host-relay-session.01=x; x=y")
write("cookie_parser", "quoted_dupes", '__Host-relay-at="q"; __Host-relay-at=2; flag; =v; __Host-relay-csrf=t;;')
write("cookie_parser", "browser", "_ga=GA1.2.123.456; theme=dark; __Host-relay-csrf=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")

# ---- jwe_unseal: sealed sessions (src/testdata/session keys) ----------------------------
fixtures = json.loads((REPO / "src/testdata/session/rust_sealed.json").read_text())["tokens"]
for t in fixtures:
    if len(t["compact"]) < 2000:
        write("jwe_unseal", t["name"].replace("/", "_"), t["compact"])

# ---- config_parse: configurations -------------------------------------------------------
base = {
    "protected_prefixes": ["/api/"], "public_prefixes": ["/api/public/"], "issuer": ISS,
    "audiences": [AUD], "required_claims": {"token_use": "access"},
    "algorithms": ["RS256", "ES256", "EdDSA"], "clock_skew_s": 30,
    "jwks": {"cluster": "idp", "authority": "idp.example.com", "path": "/.well-known/jwks.json", "refresh_s": 300},
    "cookies": {"access_token": "__Host-relay-at", "session": "__Host-relay-session", "csrf": "__Host-relay-csrf",
                "path": "/", "same_site": "Strict", "secure": True},
    "forward_claims": {"x-user-sub": "sub"},
}
write("config_parse", "remote_jwks.json", json.dumps(base))
inline = dict(base, jwks={"inline": JWKS})
write("config_parse", "inline_jwks.json", json.dumps(inline))
refresh = dict(inline, session_keys=[{"kid": "2026-11", "key": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8"}],
               token_endpoint={"cluster": "idp", "authority": "idp.example.com", "path": "/oauth2/token"},
               client_id=AUD, client_secret="s3cret", refresh_margin_s=60,
               upstream_token_headers={"access_token": "x-new-at"})
write("config_parse", "refresh.json", json.dumps(refresh, indent=1))
write("config_parse", "minimal.json", '{"protected_prefixes":["/"],"issuer":"i","audiences":["a"],"jwks":{"cluster":"c","authority":"a","path":"/"}}')

# ---- structured targets: all-zero inputs are the "valid" path -----------------------------
for target in ("jws_structured", "decide", "csrf_headers"):
    write(target, "zeros_64", bytes(64))
    write(target, "zeros_512", bytes(512))

# ---- login and path targets ---------------------------------------------------------------
# login_callback: zeros are a valid callback for a fresh flow; the others decode field by field.
for target in ("login_callback", "login_flow", "origin_parse", "path_match", "cache_headers"):
    write(target, "zeros_64", bytes(64))
    write(target, "zeros_512", bytes(512))
# return_to: raw values (the first byte also picks raw or assembled input).
RETURN_TO = {
    "page": "/orders/42?tab=items#top",
    "protocol_relative": "//evil.example/x",
    "backslash": "/\\evil.example",
    "encoded_slashes": "/%2F%2Fevil.example",
    "double_encoded": "/%252F%252Fevil.example",
    "tab": "/\t/evil.example",
    "non_ascii": "/caf\u00e9 menu",
    "scheme": "https://evil.example/",
}
for name, value in RETURN_TO.items():
    write("return_to", name, value)

print(json.dumps(JWKS))
print("P-256 d =", i2b(ec_scalar, 32).hex())
