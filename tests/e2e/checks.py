"""Assertions shared by the e2e tests (rewritten by pytest for readable failures)."""

from __future__ import annotations

import json
import posixpath
import urllib.parse
from typing import Any

from support import AT_COOKIE, RELAY_COOKIES, RelayStack, wasm_failure_evidence


def describe(resp: Any) -> str:
    """A short description of a response for assertion messages."""
    status = getattr(resp, "status_code", None)
    if hasattr(resp, "header_list"):
        headers = dict(resp.header_list)
        body = resp.body[:300]
    else:
        headers = dict(resp.headers)
        body = resp.content[:300]
    return f"status={status} headers={headers} body={body!r}"


def cookie_pairs(header: str | None) -> list[tuple[str, str]]:
    """Parse a Cookie header into (name, value) pairs, in order (whitespace-tolerant)."""
    if not header:
        return []
    out = []
    for part in header.split(";"):
        part = part.strip()
        if not part:
            continue
        name, _, value = part.partition("=")
        out.append((name.strip(), value.strip()))
    return out


def upstream_headers(rec: dict, name: str) -> list[str]:
    return [v for k, v in rec["header_list"] if k == name.lower()]


def assert_nothing_upstream(stack: RelayStack, why: str = ""):
    got = stack.upstream.received
    assert not got, f"the upstream must receive nothing{why}, but got: {got}"


def assert_refused(resp, stack: RelayStack, *, token_presented: bool | None, status: int = 401):
    """A refusal from the relay: 401 + JSON error + WWW-Authenticate: Bearer + no-store, and
    nothing reached the upstream. `token_presented`: True -> `error="invalid_token"` required,
    False -> no error parameter (RFC 6750 3.1), None -> either."""
    assert resp.status_code == status, f"expected {status}; got {describe(resp)}"
    assert_nothing_upstream(stack)
    ctype = resp.headers.get("Content-Type", "")
    assert "application/json" in ctype, f"refusal Content-Type: {describe(resp)}"
    try:
        body = resp.json()
    except ValueError:
        raise AssertionError(f"refusal body is not JSON: {describe(resp)}") from None
    assert isinstance(body, dict), f"refusal body: {body!r}"
    assert isinstance(body.get("error"), str) and body["error"], f"refusal body: {body!r}"
    assert isinstance(body.get("error_description"), str), f"refusal body: {body!r}"
    www = resp.headers.get("WWW-Authenticate")
    assert www is not None and www.startswith("Bearer"), f"WWW-Authenticate: {describe(resp)}"
    if token_presented is None:
        pass
    elif token_presented:
        assert 'error="invalid_token"' in www, f"WWW-Authenticate: {www!r}"
    else:
        assert "error=" not in www, f"no token -> no error param (RFC 6750 3.1); got {www!r}"
    assert "no-store" in resp.headers.get("Cache-Control", ""), \
        f"refusals must be Cache-Control: no-store: {describe(resp)}"
    return body


def assert_no_secret_in_response(resp, token: str):
    text = resp.text
    headers = json.dumps(dict(resp.headers))
    sig = token.rsplit(".", 1)[-1]
    for label, hay in (("body", text), ("headers", headers)):
        assert token not in hay, f"the token is echoed in the response {label}"
        if len(sig) >= 16:
            assert sig not in hay, f"the token's signature is echoed in the response {label}"


def assert_forwarded(resp, stack: RelayStack, token: str, *, sub: str | None = "alice",
                     cookie: Any = ...) -> dict:
    """A relayed request: 200, upstream saw exactly one `authorization: Bearer <token>`,
    no relay cookie, and `x-user-sub` = sub (absent when sub is None). If `cookie` is given
    the upstream's Cookie header must equal it exactly (None: the header must be absent)."""
    assert resp.status_code == 200, f"expected 200; got {describe(resp)}"
    rec = stack.upstream.only()
    assert upstream_headers(rec, "authorization") == [f"Bearer {token}"], \
        f"upstream authorization: {upstream_headers(rec, 'authorization')}"
    cookies = upstream_headers(rec, "cookie")
    for c in cookies:
        names = [n for n, _ in cookie_pairs(c)]
        leaked = [n for n in names if n in RELAY_COOKIES]
        assert not leaked, f"relay cookies leaked upstream: {leaked} in {c!r}"
    assert token not in json.dumps(rec["header_list"]).replace(f"Bearer {token}", ""), \
        "the token reached the upstream somewhere other than Authorization"
    if cookie is None:
        assert cookies == [], f"expected no Cookie header upstream, got {cookies}"
    elif cookie is not ...:
        assert cookies == [cookie], f"upstream Cookie: {cookies}, expected [{cookie!r}]"
    subs = upstream_headers(rec, "x-user-sub")
    if sub is None:
        assert subs == [], f"expected no x-user-sub upstream, got {subs}"
    else:
        assert subs == [sub], f"upstream x-user-sub: {subs}, expected [{sub!r}]"
    return rec


def assert_passed_untouched(resp, stack: RelayStack, sent_headers: dict[str, str]) -> dict:
    """An unprotected/public request: 200 and the upstream got the given headers verbatim."""
    assert resp.status_code == 200, f"expected 200; got {describe(resp)}"
    rec = stack.upstream.only()
    for name, value in sent_headers.items():
        assert upstream_headers(rec, name) == [value], \
            f"{name} changed on the way: sent {value!r}, upstream got {upstream_headers(rec, name)}"
    return rec


def assert_relay_healthy(stack: RelayStack, token: str, sub: str = "alice"):
    """A valid request still works and no Wasm VM failure shows in stats or log."""
    resp = stack.get_with_token("/api/health-check", token)
    assert resp.status_code == 200, f"a valid request after hostile input: {describe(resp)}"
    assert stack.envoy is not None
    evidence = wasm_failure_evidence(stack.envoy)
    assert not evidence, f"Wasm VM failure evidence: {evidence}"


def normalized_effective_path(path: str) -> str:
    """What a lenient upstream app might route on: percent-decoded, dot-segments removed,
    slashes merged (used to judge path-confusion attempts)."""
    p = urllib.parse.unquote(urllib.parse.urlsplit(path).path)
    while "//" in p:
        p = p.replace("//", "/")
    norm = posixpath.normpath(p)
    if p.endswith("/") and not norm.endswith("/"):
        norm += "/"
    return norm


def is_protected(path: str) -> bool:
    return path.startswith("/api/") and not path.startswith("/api/public/")


__all__ = ["AT_COOKIE", "assert_forwarded", "assert_no_secret_in_response",
           "assert_nothing_upstream", "assert_passed_untouched", "assert_refused",
           "assert_relay_healthy", "cookie_pairs", "describe", "is_protected",
           "normalized_effective_path", "upstream_headers"]
