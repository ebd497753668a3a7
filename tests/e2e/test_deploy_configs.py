"""The deployment configurations: envoy/cognito.yaml, envoy/oidc-generic.yaml and istio/.

test_configs.py already runs `envoy --mode validate` on every envoy/*.yaml, these two included,
and validate mode runs the filter's configuration parser too (proved below), so a field the
filter does not know fails there. This file adds what validation cannot show:

* every plugin-configuration key of the three deployment files is documented in README.md;
* each Envoy file, with its provider and API hosts replaced by local TLS stand-ins, works:
  only the addresses (STATIC, with the original name as the endpoint `hostname`) and the CA
  bundle are changed; SNI, certificate-name checks, authorities, paths, routes and the plugin
  configuration are the file's own. A token of the provider's shape is verified and relayed
  with the API's Host, an ID token is refused, an expired token is refreshed through the
  token endpoint with HTTP Basic client authentication, the login starts a code + PKCE flow
  for the configured client, and logout revokes the refresh token and leaves through the
  provider's logout endpoint;
* the Istio manifests against Istio's CRD schemas (istio/schema/, strict about unknown fields,
  plus the CEL rules of the fields used), and their consistency with the plugin
  configuration (`outbound|443||<host>` clusters, SNI, authorities) and with envoy/cognito.yaml;
* istio/Dockerfile has the shape Istio's image fetcher expects.
"""

from __future__ import annotations

import base64
import copy
import datetime
import http.server
import ipaddress
import json
import re
import ssl
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, Callable

import jsonschema
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from refresh_support import SessionKeys, set_cookies
from support import (REPO_ROOT, WASM_PATH, Envoy, KeyPair, Upstream, b64url_decode, jwks_of,
                     new_http_session, relay_config, validate_config, wait_until)
from test_configs import INSTALLED_WASM, SECRET_VARS, example_secrets

ENVOY_DIR = REPO_ROOT / "envoy"
ISTIO_DIR = REPO_ROOT / "istio"
README = REPO_ROOT / "README.md"
DEPLOY_CONFIGS = ("cognito.yaml", "oidc-generic.yaml")
ISTIO_MANIFESTS = ("wasmplugin.yaml", "serviceentry.yaml", "destinationrule.yaml")
CRD_SCHEMAS = ISTIO_DIR / "schema" / "istio-crd-specs.json"


# --------------------------------------------------------------------------------------------
# Reading the files
# --------------------------------------------------------------------------------------------


def load_envoy(name: str) -> dict:
    return yaml.safe_load((ENVOY_DIR / name).read_text())


def relay_filter(envoy_cfg: dict) -> dict:
    """The relay's PluginConfig (`typed_config.config`) in an Envoy bootstrap."""
    found = []
    for listener in envoy_cfg["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f.get("typed_config", {}).get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        found.append(hf["typed_config"]["config"])
    assert len(found) == 1, f"expected one wasm filter, found {len(found)}"
    return found[0]


def plugin_config_of(envoy_cfg: dict) -> dict:
    conf = relay_filter(envoy_cfg)["configuration"]
    assert conf["@type"] == "type.googleapis.com/google.protobuf.StringValue"
    return json.loads(conf["value"])


def clusters_of(envoy_cfg: dict) -> dict[str, dict]:
    return {c["name"]: c for c in envoy_cfg["static_resources"]["clusters"]}


def cluster_host(cluster: dict) -> str:
    (locality,) = cluster["load_assignment"]["endpoints"]
    (lb_endpoint,) = locality["lb_endpoints"]
    return lb_endpoint["endpoint"]["address"]["socket_address"]["address"]


def load_istio() -> list[dict]:
    docs = []
    for name in ISTIO_MANIFESTS:
        for doc in yaml.safe_load_all((ISTIO_DIR / name).read_text()):
            if doc is not None:
                docs.append({"_file": name, **doc})
    return docs


def istio_plugin_config() -> dict:
    (wp,) = [d for d in load_istio() if d["kind"] == "WasmPlugin"]
    return wp["spec"]["pluginConfig"]


def all_plugin_configs() -> dict[str, dict]:
    out = {name: plugin_config_of(load_envoy(name)) for name in DEPLOY_CONFIGS}
    out["istio/wasmplugin.yaml"] = istio_plugin_config()
    return out


# --------------------------------------------------------------------------------------------
# The README's configuration reference
# --------------------------------------------------------------------------------------------

# Values that are maps of the operator's own names (claims, headers) or a foreign document.
FREE_FORM = {("required_claims",), ("forward_claims",), ("jwks", "inline")}
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"


def _sections(text: str) -> list[tuple[int, str, str]]:
    """(level, heading, body) for every heading of a Markdown text (code blocks respected)."""
    out: list[tuple[int, str, list[str]]] = [(0, "", [])]
    fence = False
    for line in text.splitlines():
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^(#{1,6})\s+(.*)$", line)
        if m:
            out.append((len(m.group(1)), m.group(2).strip(), []))
        else:
            out[-1][2].append(line)
    return [(lvl, h, "\n".join(body)) for lvl, h, body in out]


def _table_rows(body: str) -> list[list[str]]:
    rows = []
    for line in body.splitlines():
        if line.startswith("|") and not re.match(r"^\|[\s:|-]+\|?\s*$", line):
            rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


class Reference:
    """What README.md documents about the plugin configuration.

    * top-level fields: the first column of the tables under "Configuration reference", or a
      section of their own (a heading naming the field, with an example `"field": {...}`, as
      "Login and logout at the edge" documents `login`);
    * a sub-field K of P is documented when P's table row names K (`K` or "K"), when the
      README names `P.K`, when a table under a heading that mentions P lists K in its first
      column, or when the configuration example has K inside P.
    """

    def __init__(self, text: str):
        self.text = text
        sections = _sections(text)
        self.top: set[str] = set()
        self.rows: dict[str, list[str]] = {}
        self.by_heading: list[tuple[str, set[str]]] = []
        self.bodies: list[tuple[str, str]] = []
        self.example: dict = {}
        in_ref = False
        for level, heading, body in sections:
            if level == 2:
                in_ref = heading.lower().startswith("configuration reference")
            firsts: set[str] = set()
            for row in _table_rows(body):
                names = re.findall(r"`(" + _NAME + r")`", row[0])
                firsts.update(names)
                for n in names:
                    self.rows.setdefault(n, []).append(" | ".join(row))
            self.by_heading.append((heading, firsts))
            self.bodies.append((heading, body))
            if in_ref:
                self.top.update(firsts)
                m = re.search(r"```json\n(.*?)```", body, re.S)
                if m and not self.example:
                    self.example = json.loads(m.group(1))

    def documents(self, path: tuple[str, ...]) -> bool:
        *parents, key = path
        if not parents:
            return key in self.top or any(
                re.search(r"\b" + re.escape(key) + r"\b", heading, re.I)
                and re.search(r"```json\n[^`]*\"" + re.escape(key) + r"\"\s*:", body)
                for heading, body in self.bodies)
        parent = parents[-1]
        for row in self.rows.get(parent, []):
            if re.search(r"[`\"]" + re.escape(key) + r"[`\"]", row):
                return True
        if f"`{parent}.{key}`" in self.text:
            return True
        for heading, firsts in self.by_heading:
            if re.search(r"\b" + re.escape(parent) + r"\b", heading, re.I) and key in firsts:
                return True
        node: Any = self.example
        for p in path:
            if isinstance(node, list):
                node = node[0] if node else {}
            if not isinstance(node, dict) or p not in node:
                return False
            node = node[p]
        return True


def is_env_ref(v: Any) -> bool:
    """`{"env": "VAR"}`: a secret read from the environment (README.md documents the form for
    every secret field)."""
    return isinstance(v, dict) and set(v) == {"env"} and isinstance(v["env"], str)


def config_paths(cfg: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every key path of a plugin configuration (list items share their list's path)."""
    out = []
    if is_env_ref(cfg):
        return out
    if isinstance(cfg, list):
        for item in cfg:
            out += config_paths(item, prefix)
    elif isinstance(cfg, dict):
        for k, v in cfg.items():
            path = prefix + (k,)
            out.append(path)
            if path not in FREE_FORM:
                out += config_paths(v, path)
    return out


@pytest.fixture(scope="module")
def reference() -> Reference:
    return Reference(README.read_text())


def test_the_reference_parser_reads_the_readme(reference):
    """Guards the parser itself: fields the README certainly documents are found."""
    assert {"protected_prefixes", "issuer", "audiences", "jwks", "session_keys",
            "token_endpoint", "client_auth", "csrf"} <= reference.top, sorted(reference.top)
    for path in [("jwks", "cluster"), ("jwks", "refresh_s"), ("cookies", "same_site"),
                 ("cookies", "access_token"), ("session_keys", "kid"),
                 ("token_endpoint", "timeout_ms"), ("csrf", "double_submit")]:
        assert reference.documents(path), path
    assert reference.documents(("login",)) and reference.documents(("login", "revocation_path"))
    assert not reference.documents(("not_a_field",))
    assert not reference.documents(("jwks", "not_a_field"))


def test_the_readme_documents_secrets_from_the_environment(reference):
    """The deployment files write their secrets as {"env": ...}; the reference explains it."""
    for name, pc in all_plugin_configs().items():
        refs = [k["key"] for k in pc["session_keys"]] + [pc["client_secret"]]
        assert all(is_env_ref(r) and r["env"] in SECRET_VARS for r in refs), (name, refs)
    for field in ("session_keys", "client_secret"):
        assert any('{"env"' in row for row in reference.rows[field]), field


@pytest.mark.parametrize("name", list(all_plugin_configs()), ids=str)
def test_plugin_config_fields_are_documented(reference, name):
    cfg = all_plugin_configs()[name]
    undocumented = ["/".join(p) for p in config_paths(cfg) if not reference.documents(p)]
    assert not undocumented, (
        f"{name}: plugin configuration fields not in README.md's configuration reference: "
        f"{undocumented}")


# --------------------------------------------------------------------------------------------
# Envoy: validation reaches the plugin
# --------------------------------------------------------------------------------------------


def test_validate_mode_runs_the_plugin_configuration(wasm_file, envoy_bin, tmp_path):
    """`envoy --mode validate` (test_configs.py) also runs the filter's configuration parser:
    a deployment file with a field the filter does not know does not validate."""
    text = (ENVOY_DIR / "cognito.yaml").read_text().replace(INSTALLED_WASM, str(WASM_PATH))
    anchor = '"protected_prefixes": ["/api/"],'
    assert anchor in text
    broken = tmp_path / "cognito-broken.yaml"
    broken.write_text(text.replace(anchor, anchor + ' "zz_not_a_field": 1,', 1))
    result = validate_config(broken, envoy_bin, cwd=tmp_path, env=example_secrets())
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "invalid configuration: field `zz_not_a_field`" in out, out


def test_istio_plugin_config_is_accepted_by_the_filter(wasm_file, envoy_bin, tmp_path):
    """The WasmPlugin's pluginConfig, turned into JSON as Istio does, passes the filter's
    configuration parser (in an Envoy that has clusters with Istio's names)."""
    pc = istio_plugin_config()
    cfg = relay_config(1, 1, plugin_config=json.dumps(pc))
    # vmConfig.env with valueFrom: HOST is Envoy's host_env_keys.
    (wp,) = [d for d in load_istio() if d["kind"] == "WasmPlugin"]
    host_keys = [e["name"] for e in wp["spec"]["vmConfig"]["env"] if e["valueFrom"] == "HOST"]
    assert sorted(host_keys) == sorted(SECRET_VARS)
    relay_filter(cfg)["vm_config"]["environment_variables"] = {"host_env_keys": host_keys}
    for name in {pc["jwks"]["cluster"], pc["token_endpoint"]["cluster"]}:
        cfg["static_resources"]["clusters"].append({
            "name": name, "type": "STATIC", "connect_timeout": "1s",
            "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [
                {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1",
                                                             "port_value": 1}}}}]}]}})
    path = tmp_path / "istio-plugin-config.yaml"
    path.write_text(json.dumps(cfg))
    result = validate_config(path, envoy_bin, cwd=tmp_path, env=example_secrets())
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


@pytest.mark.parametrize("name", DEPLOY_CONFIGS)
def test_tls_clusters_check_the_server_name(name):
    """Every remote cluster sends SNI and checks the certificate's name against it. Without
    `match_typed_subject_alt_names` Envoy accepts a certificate for ANY name the CA bundle
    vouches for (tried: a certificate for another name is then accepted)."""
    for c in load_envoy(name)["static_resources"]["clusters"]:
        host = cluster_host(c)
        if c["type"] == "STATIC":
            ipaddress.ip_address(host)  # local plain-HTTP clusters only
            continue
        assert c["type"] == "LOGICAL_DNS" and c["dns_lookup_family"] == "V4_ONLY", c["name"]
        lb = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
        assert lb["address"]["socket_address"]["port_value"] == 443, c["name"]
        ts = c["transport_socket"]
        assert ts["name"] == "envoy.transport_sockets.tls", c["name"]
        tls = ts["typed_config"]
        assert tls["sni"] == host, c["name"]
        vc = tls["common_tls_context"]["validation_context"]
        assert vc["trusted_ca"] == {"filename": "/etc/ssl/certs/ca-certificates.crt"}, c["name"]
        assert vc["match_typed_subject_alt_names"] == \
            [{"san_type": "DNS", "matcher": {"exact": host}}], c["name"]


# --------------------------------------------------------------------------------------------
# Envoy: the deployment files against local TLS stand-ins
# --------------------------------------------------------------------------------------------


class Pki:
    """A throwaway CA and server certificates (ECDSA P-256)."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edge-token-relay test CA")])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.ca_cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.ca_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .sign(self.ca_key, hashes.SHA256()))
        self.ca_path = directory / "ca.pem"
        self.ca_path.write_bytes(self.ca_cert.public_bytes(serialization.Encoding.PEM))

    def server_context(self, dns_names: list[str], on_sni: Callable[[str | None], None]) -> ssl.SSLContext:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
            .issuer_name(self.ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in dns_names]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(self.ca_key, hashes.SHA256()))
        stem = self.dir / f"server-{uuid.uuid4().hex[:8]}"
        Path(f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        Path(f"{stem}.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(f"{stem}.crt", f"{stem}.key")
        ctx.sni_callback = lambda _sock, name, _ctx: on_sni(name)
        return ctx


class TlsStandin:
    """An HTTPS server on 127.0.0.1 standing in for one upstream host. `app(record)` answers
    (status, body dict); every request is recorded with its headers and form, and every TLS
    handshake's SNI is kept in `snis`."""

    def __init__(self, pki: Pki, cert_names: list[str], app: Callable[[dict], tuple[int, dict]]):
        self.app = app
        self.requests: list[dict] = []
        self.snis: list[str | None] = []
        self.lock = threading.Lock()
        ctx = pki.server_context(cert_names, self._on_sni)
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                record = {"method": self.command, "path": self.path,
                          "headers": {k.lower(): v for k, v in self.headers.items()},
                          "form": dict(urllib.parse.parse_qsl(body.decode(errors="replace")))}
                with outer.lock:
                    outer.requests.append(record)
                status, payload = outer.app(record)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _any

        class Server(http.server.ThreadingHTTPServer):
            daemon_threads = True

            def get_request(self):
                sock, addr = super().get_request()
                return ctx.wrap_socket(sock, server_side=True,
                                       do_handshake_on_connect=False), addr

            def handle_error(self, request, client_address):
                pass  # failed handshakes and resets show up as missing requests instead

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True,
                                       kwargs={"poll_interval": 0.05})
        self.thread.start()

    def _on_sni(self, name: str | None) -> None:
        with self.lock:
            self.snis.append(name)

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    def matching(self, method: str, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests
                    if r["method"] == method and urllib.parse.urlsplit(r["path"]).path == path]

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def wildcard_name(host: str) -> str:
    """The name a public CA's wildcard certificate for `host`'s parent domain would carry (the
    managed-login and execute-api domains are served that way): proves that the exact-name
    checks in the deployment files accept wildcard certificates."""
    return "*." + host.split(".", 1)[1]


# Per deployment file: the claims of an access token and of an ID token from that provider,
# given the plugin configuration.
def cognito_tokens(pc: dict, now: int) -> tuple[dict, dict]:
    common = {"iss": pc["issuer"], "sub": "1b5e2f4a-0000-4000-8000-00000000a11c",
              "auth_time": now, "iat": now, "exp": now + 3600, "jti": uuid.uuid4().hex,
              "origin_jti": uuid.uuid4().hex, "event_id": uuid.uuid4().hex}
    access = {**common, "client_id": pc["audiences"][0], "token_use": "access",
              "scope": "openid email profile", "username": "alice", "version": 2}
    id_token = {**common, "aud": pc["audiences"][0], "token_use": "id", "email": "a@example.com",
                "cognito:username": "alice"}
    return access, id_token


def keycloak_tokens(pc: dict, now: int) -> tuple[dict, dict]:
    common = {"iss": pc["issuer"], "sub": "f81d4fae-7dec-11d0-a765-00a0c91e6bf6", "iat": now,
              "exp": now + 300, "jti": uuid.uuid4().hex, "azp": pc["client_id"],
              "sid": uuid.uuid4().hex}
    access = {**common, "aud": [pc["audiences"][0], "account"], "typ": "Bearer",
              "scope": "openid profile email", "preferred_username": "alice"}
    # Same audience as an access token, but an ID token: only `typ` tells them apart.
    id_token = {**common, "aud": pc["audiences"][0], "typ": "ID", "preferred_username": "alice"}
    return access, id_token


TOKEN_SHAPES = {"cognito.yaml": cognito_tokens, "oidc-generic.yaml": keycloak_tokens}


class Deployment:
    """One deployment file running in a real Envoy against local stand-ins."""

    def __init__(self, name: str, tmp: Path):
        self.name = name
        self.original = load_envoy(name)
        self.pc = plugin_config_of(self.original)
        self.signer = KeyPair.generate("RS256", kid=f"{name}-key")
        self.pki = Pki(tmp)
        self.now = int(time.time())
        self.access_claims, self.id_claims = TOKEN_SHAPES[name](self.pc, self.now)
        self.refresh_tokens_issued: list[str] = []
        # The secrets the file reads from Envoy's environment (host_env_keys).
        self.secrets = example_secrets()
        self.standins: dict[str, TlsStandin] = {}
        self.web = Upstream(name="web").start()
        self.envoy: Envoy | None = None

    # What the provider and the API answer.
    def app_for(self, cluster_name: str) -> Callable[[dict], tuple[int, dict]]:
        pc = self.pc

        def app(rec: dict) -> tuple[int, dict]:
            path = urllib.parse.urlsplit(rec["path"]).path
            if pc["jwks"]["cluster"] == cluster_name and path == pc["jwks"]["path"]:
                return 200, jwks_of([self.signer])
            te = pc.get("token_endpoint") or {}
            if te.get("cluster") == cluster_name and path == te["path"] and rec["method"] == "POST":
                rt = f"rotated-{uuid.uuid4().hex}"
                self.refresh_tokens_issued.append(rt)
                now = int(time.time())
                return 200, {"access_token": self.signer.sign({**self.access_claims, "iat": now,
                                                               "exp": now + 3600}),
                             "id_token": self.signer.sign({**self.id_claims, "iat": now,
                                                           "exp": now + 3600}),
                             "refresh_token": rt, "expires_in": 3600, "token_type": "Bearer"}
            return 200, {"api": cluster_name, "path": rec["path"]}
        return app

    def start(self) -> "Deployment":
        cfg = copy.deepcopy(self.original)
        cfg["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
        for listener in cfg["static_resources"]["listeners"]:
            listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
        for c in cfg["static_resources"]["clusters"]:
            host = cluster_host(c)
            lb = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
            if "transport_socket" in c:
                assert c["type"] in ("LOGICAL_DNS", "STRICT_DNS"), c["name"]
                standin = TlsStandin(self.pki, [wildcard_name(host)], self.app_for(c["name"]))
                self.standins[c["name"]] = standin
                c["type"] = "STATIC"
                c.pop("dns_lookup_family", None)
                lb["hostname"] = host  # what auto_host_rewrite sends, as with DNS
                lb["address"]["socket_address"] = {"address": "127.0.0.1",
                                                   "port_value": standin.port}
                vc = c["transport_socket"]["typed_config"]["common_tls_context"]["validation_context"]
                vc["trusted_ca"] = {"filename": str(self.pki.ca_path)}
            else:
                ipaddress.ip_address(host)  # a plain local cluster (the web app)
                lb["address"]["socket_address"]["port_value"] = self.web.port
        self.relay_config(cfg)["vm_config"]["code"]["local"]["filename"] = str(WASM_PATH)
        self.envoy = Envoy(cfg, name=f"deploy-{self.name.split('.')[0]}", env=self.secrets).start()
        return self

    @staticmethod
    def relay_config(cfg: dict) -> dict:
        return relay_filter(cfg)

    def secret(self, ref: Any) -> str:
        """The value Envoy hands the plugin for a secret field written as {"env": VAR}."""
        assert is_env_ref(ref), ref
        return self.secrets[ref["env"]]

    def session_key(self) -> tuple[str, bytes]:
        first = self.pc["session_keys"][0]
        return first["kid"], b64url_decode(self.secret(first["key"]))

    def stop(self) -> None:
        if self.envoy is not None:
            self.envoy.stop()
        for s in self.standins.values():
            s.stop()
        self.web.stop()

    def get(self, path: str, cookie: str | None = None, headers: dict | None = None):
        return self.request("GET", path, cookie, headers)

    def request(self, method: str, path: str, cookie: str | None = None,
                headers: dict | None = None):
        h = dict(headers or {})
        if cookie:
            h["Cookie"] = cookie
        return new_http_session().request(method, self.envoy.url(path), headers=h, timeout=15,
                                          allow_redirects=False)

    def wait_ready(self) -> str:
        """Wait until the key set is in (protected requests get 503 before); return a valid
        access token."""
        token = self.signer.sign(self.access_claims)
        at = self.pc["cookies"]["access_token"]
        wait_until(lambda: self.get("/api/ready", cookie(at, token)).status_code == 200,
                   timeout=20, interval=0.2,
                   what=f"{self.name}: JWKS fetched through cluster {self.pc['jwks']['cluster']}")
        return token

    def api_cluster(self) -> str:
        (route,) = [r for r in self.vhost_routes() if r["match"].get("prefix") == "/api/"]
        return route["route"]["cluster"]

    def vhost_routes(self) -> list[dict]:
        hcm = self.original["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]
        (vhost,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
        return vhost["routes"]


@pytest.fixture(scope="module", params=DEPLOY_CONFIGS)
def deployment(request, wasm_file, tmp_path_factory):
    dep = Deployment(request.param, tmp_path_factory.mktemp("pki"))
    try:
        dep.start()
        yield dep
    finally:
        dep.stop()


def cookie(name: str, value: str) -> str:
    return f"{name}={value}"


def test_deployment_fetches_jwks_over_tls_and_relays_the_token(deployment):
    dep, pc = deployment, deployment.pc
    token = dep.wait_ready()
    assert dep.get("/api/orders?x=1", cookie(pc["cookies"]["access_token"], token)).status_code == 200

    jwks_standin = dep.standins[pc["jwks"]["cluster"]]
    jwks_gets = jwks_standin.matching("GET", pc["jwks"]["path"])
    assert jwks_gets, "the JWKS was fetched with another path"
    assert {r["headers"]["host"] for r in jwks_gets} == {pc["jwks"]["authority"]}
    assert set(jwks_standin.snis) == {cluster_host(clusters_of(dep.original)[pc["jwks"]["cluster"]])}

    api_name = dep.api_cluster()
    api = dep.standins[api_name]
    api_host = cluster_host(clusters_of(dep.original)[api_name])
    rec = api.matching("GET", "/api/orders")[-1]
    assert rec["headers"]["authorization"] == f"Bearer {token}"
    assert rec["headers"]["host"] == api_host, "the API must receive its own Host"
    assert set(api.snis) == {api_host}
    assert "cookie" not in rec["headers"], "relay cookies must not reach the API"
    assert rec["headers"]["x-user-sub"] == dep.access_claims["sub"]


def test_deployment_refuses_an_id_token(deployment):
    dep, pc = deployment, deployment.pc
    dep.wait_ready()
    id_token = dep.signer.sign(dep.id_claims)
    api = dep.standins[dep.api_cluster()]
    before = len(api.requests)
    resp = dep.get("/api/orders", cookie(pc["cookies"]["access_token"], id_token))
    assert resp.status_code == 401, resp.text
    assert resp.json()["error"] == "invalid_token"
    assert len(api.requests) == before, "an ID token reached the API"


def test_deployment_refreshes_through_the_token_endpoint(deployment):
    dep, pc = deployment, deployment.pc
    kid, key = dep.session_key()
    sealed = SessionKeys([(kid, key)]).seal("initial-refresh-token",
                                            exp=int(time.time()) + 3600)
    expired = dep.signer.sign({**dep.access_claims, "iat": dep.now - 7200,
                               "exp": int(time.time()) - 120})
    cookies = "; ".join([cookie(pc["cookies"]["access_token"], expired),
                         cookie(pc["cookies"]["session"], sealed)])
    dep.wait_ready()
    resp = dep.get("/api/profile", cookies)
    assert resp.status_code == 200, resp.text

    te = pc["token_endpoint"]
    idp = dep.standins[te["cluster"]]
    (call,) = idp.matching("POST", te["path"])
    assert call["headers"]["host"] == te["authority"]
    assert set(idp.snis) == {cluster_host(clusters_of(dep.original)[te["cluster"]])}
    assert call["form"]["grant_type"] == "refresh_token"
    assert call["form"]["refresh_token"] == "initial-refresh-token"
    assert pc["client_auth"] == "basic"
    scheme, _, creds = call["headers"]["authorization"].partition(" ")
    assert scheme == "Basic"
    ident, _, secret = base64.b64decode(creds).decode().partition(":")
    assert (urllib.parse.unquote_plus(ident), urllib.parse.unquote_plus(secret)) == \
        (pc["client_id"], dep.secret(pc["client_secret"]))
    assert "client_secret" not in call["form"]

    api = dep.standins[dep.api_cluster()]
    rec = api.matching("GET", "/api/profile")[-1]
    assert rec["headers"]["authorization"].startswith("Bearer ")
    assert rec["headers"]["authorization"] != f"Bearer {expired}"
    set_by_relay = set_cookies(resp)
    assert pc["cookies"]["access_token"] in set_by_relay, set_by_relay
    assert pc["cookies"]["session"] in set_by_relay, "the rotated refresh token was not resealed"


def test_deployment_login_redirects_to_the_provider(deployment):
    """The login block's authorization request: code flow with PKCE for this client."""
    dep, login = deployment, deployment.pc["login"]
    resp = dep.get(login["login_path"] + "?return_to=/dashboard")
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(login["authorization_endpoint"] + "?"), location
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert q["response_type"] == ["code"]
    assert q["client_id"] == [dep.pc["client_id"]]
    assert q["redirect_uri"] == [login["redirect_uri"]]
    assert q["scope"][0].split(" ") == login["scopes"]
    assert q["code_challenge_method"] == ["S256"]
    assert q["state"][0] and q["code_challenge"][0]


def test_deployment_logout_revokes_and_leaves_through_the_provider(deployment):
    """POST logout (CSRF-checked like any state change): the refresh token is revoked at
    `revocation_path` on the token endpoint's cluster, and the browser goes to the provider's
    logout endpoint."""
    dep, pc = deployment, deployment.pc
    login = pc["login"]
    kid, key = dep.session_key()
    sealed = SessionKeys([(kid, key)]).seal("logout-refresh-token", exp=int(time.time()) + 3600)
    csrf = "c" * 43
    cookies = "; ".join([cookie(pc["cookies"]["session"], sealed),
                         cookie(pc["cookies"]["csrf"], csrf)])
    origin = pc["csrf"]["allowed_origins"][0]
    refused = dep.request("POST", login["logout_path"], cookies, {"Origin": origin})
    assert refused.status_code == 403, "double submit: a logout without X-CSRF-Token must fail"
    resp = dep.request("POST", login["logout_path"], cookies,
                       {"Origin": origin, "X-CSRF-Token": csrf})
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(login["end_session_endpoint"]), location
    q = urllib.parse.parse_qs(urllib.parse.urlsplit(location).query)
    assert q["client_id"] == [pc["client_id"]]
    # The endpoint's own query (Cognito: logout_uri) survives, the relay's parameters follow.
    for k, v in urllib.parse.parse_qs(urllib.parse.urlsplit(login["end_session_endpoint"]).query).items():
        assert q[k] == v, (k, location)
    cleared = set_cookies(resp)
    assert cleared[pc["cookies"]["session"]].clears

    te = pc["token_endpoint"]
    idp = dep.standins[te["cluster"]]
    (rev,) = idp.matching("POST", login["revocation_path"])
    assert rev["headers"]["host"] == te["authority"]
    assert rev["form"]["token"] == "logout-refresh-token"
    assert rev["headers"]["authorization"].startswith("Basic ")


def test_app_origin_is_consistent():
    """redirect_uri, post_logout_redirect and the CSRF origins name the same app origin, and
    Cognito's logout_uri (it ignores post_logout_redirect_uri) is post_logout_redirect."""
    for name, pc in all_plugin_configs().items():
        login = pc["login"]
        origin = "{0.scheme}://{0.netloc}".format(urllib.parse.urlsplit(login["redirect_uri"]))
        assert pc["csrf"]["allowed_origins"] == [origin], name
        assert login["post_logout_redirect"].startswith(origin + "/"), name
        end = urllib.parse.urlsplit(login["end_session_endpoint"])
        if end.hostname.endswith(".amazoncognito.com"):
            assert urllib.parse.parse_qs(end.query)["logout_uri"] == \
                [login["post_logout_redirect"]], name


def test_deployment_routes_other_paths_to_the_web_app(deployment):
    dep = deployment
    before = dep.web.count
    resp = dep.get("/dashboard", "theme=dark")
    assert resp.status_code == 200
    assert dep.web.count == before + 1
    assert dep.web.last()["headers"]["cookie"] == "theme=dark"


def test_deployment_rejects_underscore_spellings_of_headers(deployment):
    resp = deployment.get("/api/public/ping", headers={"x_user_sub": "mallory"})
    assert resp.status_code == 400


# --------------------------------------------------------------------------------------------
# Istio
# --------------------------------------------------------------------------------------------


def crd_schemas() -> dict[str, dict]:
    return json.loads(CRD_SCHEMAS.read_text())["crds"]


def strict(schema: Any) -> Any:
    """The schema with unknown fields refused wherever Kubernetes would prune them (and
    `kubectl apply`'s strict field validation would report them)."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def _url_scheme_ok(url: str) -> bool:
    scheme = urllib.parse.urlsplit(url if "://" in url else "http://" + url).scheme
    return scheme in ("", "http", "https", "oci", "file")


# The CEL rules (x-kubernetes-validations) of the Istio CRDs, by rule text, as Python. A rule
# that applies to a field the manifests use and is missing here fails the test.
CEL_RULES: dict[str, Callable[[Any], bool]] = {
    "(has(self.selector) ? 1 : 0) + (has(self.targetRef) ? 1 : 0) + (has(self.targetRefs) ? 1 : 0) <= 1":
        lambda s: sum(k in s for k in ("selector", "targetRef", "targetRefs")) <= 1,
    'self.all(key, !key.contains("*"))': lambda m: all("*" not in k for k in m),
    "self.all(key, key.size() != 0)": lambda m: all(len(k) != 0 for k in m),
    '!self.contains("*")': lambda v: "*" not in v,
    'isURL(self) ? (url(self).getScheme() in ["", "http", "https", "oci", "file"]) : '
    '(isURL("http://" + self) &&\nurl("http://" + self).getScheme() in ["", "http", "https", "oci", "file"])':
        _url_scheme_ok,
    "(has(self.workloadSelector) ? 1 : 0) + (has(self.endpoints) ? 1 : 0) <= 1":
        lambda s: sum(k in s for k in ("workloadSelector", "endpoints")) <= 1,
    '!((has(self.addresses) ? self.addresses : []).exists(k, k.contains("/")) && '
    '!((has(self.resolution) ? self.resolution : "NONE") in ["STATIC", "NONE"]))':
        lambda s: not (any("/" in a for a in s.get("addresses", []))
                       and s.get("resolution", "NONE") not in ("STATIC", "NONE")),
    '((has(self.resolution) ? self.resolution : "NONE") == "NONE") ? !has(self.endpoints) : true':
        lambda s: s.get("resolution", "NONE") != "NONE" or "endpoints" not in s,
    '((has(self.resolution) ? self.resolution : "") == "DNS_ROUND_ROBIN") ? '
    '((has(self.endpoints) ? self.endpoints : []).size() <= 1) : true':
        lambda s: s.get("resolution") != "DNS_ROUND_ROBIN" or len(s.get("endpoints", [])) <= 1,
    'self != "*"': lambda h: h != "*",
    "self.all(l1, self.exists_one(l2, l1.number == l2.number))":
        lambda ports: all(sum(p["number"] == q["number"] for q in ports) == 1 for p in ports),
    "0 < self && self <= 65535": lambda n: 0 < n <= 65535,
    '(has(self.valueFrom) ? self.valueFrom : "") != "HOST" || !has(self.value)':
        lambda e: e.get("valueFrom", "") != "HOST" or "value" not in e,
}


def cel_checks(schema: Any, node: Any, path: str, out: list[tuple[str, str, Any]]) -> None:
    """Collect (path, rule, value) for every CEL rule whose field is present in `node`."""
    if not isinstance(schema, dict):
        return
    for rule in schema.get("x-kubernetes-validations", []):
        out.append((path, rule["rule"], node))
    if isinstance(node, dict):
        for k, v in node.items():
            if k in schema.get("properties", {}):
                cel_checks(schema["properties"][k], v, f"{path}.{k}", out)
            elif isinstance(schema.get("additionalProperties"), dict):
                cel_checks(schema["additionalProperties"], v, f"{path}{{{k}}}", out)
    elif isinstance(node, list) and "items" in schema:
        for i, v in enumerate(node):
            cel_checks(schema["items"], v, f"{path}[{i}]", out)


DNS_1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def test_istio_manifests_match_the_crd_schemas():
    schemas = crd_schemas()
    docs = load_istio()
    assert sorted(d["kind"] for d in docs) == \
        ["DestinationRule", "DestinationRule", "ServiceEntry", "WasmPlugin"], docs
    problems = []
    for doc in docs:
        where = f"{doc['_file']} {doc['kind']}/{doc.get('metadata', {}).get('name')}"
        crd = schemas[doc["kind"]]
        if doc["apiVersion"] != crd["apiVersion"]:
            problems.append(f"{where}: apiVersion {doc['apiVersion']} (schema: {crd['apiVersion']})")
        extra = set(doc) - {"_file", "apiVersion", "kind", "metadata", "spec"}
        if extra:
            problems.append(f"{where}: unexpected top-level fields {sorted(extra)}")
        meta = doc.get("metadata", {})
        if not (DNS_1123_SUBDOMAIN.match(meta.get("name", "")) and len(meta["name"]) <= 253):
            problems.append(f"{where}: metadata.name is not a DNS-1123 subdomain")
        if not meta.get("namespace"):
            problems.append(f"{where}: no metadata.namespace")
        validator = jsonschema.Draft7Validator(strict(crd["spec"]))
        for err in validator.iter_errors(doc["spec"]):
            problems.append(f"{where}: spec.{'.'.join(map(str, err.absolute_path))}: {err.message}")
        checks: list[tuple[str, str, Any]] = []
        cel_checks(crd["spec"], doc["spec"], "spec", checks)
        for path, rule, value in checks:
            fn = CEL_RULES.get(rule)
            if fn is None:
                problems.append(f"{where}: {path}: CEL rule not checked by this test: {rule}")
            elif not fn(value):
                problems.append(f"{where}: {path}: violates {rule}")
    assert not problems, "\n".join(problems)


def test_the_strict_schema_catches_a_misspelled_field():
    """Guards the schema check itself (a typo must not pass as a pruned unknown field)."""
    spec = copy.deepcopy(next(d for d in load_istio() if d["kind"] == "DestinationRule")["spec"])
    spec["trafficPolicy"]["tls"]["snii"] = spec["trafficPolicy"]["tls"].pop("sni")
    validator = jsonschema.Draft7Validator(strict(crd_schemas()["DestinationRule"]["spec"]))
    assert any("snii" in e.message for e in validator.iter_errors(spec))
    wp = copy.deepcopy(next(d for d in load_istio() if d["kind"] == "WasmPlugin")["spec"])
    wp["failStrategy"] = "FAIL_CLOSED"  # Envoy's spelling, not Istio's
    validator = jsonschema.Draft7Validator(strict(crd_schemas()["WasmPlugin"]["spec"]))
    assert list(validator.iter_errors(wp))


ISTIO_CLUSTER = re.compile(r"^outbound\|(\d+)\|([^|]*)\|(.+)$")


def test_istio_plugin_clusters_are_the_serviceentry_hosts():
    """Each cluster the pluginConfig names is Istio's outbound cluster of a ServiceEntry host,
    with TLS origination (SIMPLE, SNI = the host) from a DestinationRule, the callout's
    authority is that host, and all of it is visible in the WasmPlugin's namespace."""
    docs = load_istio()
    (wp,) = [d for d in docs if d["kind"] == "WasmPlugin"]
    ns = wp["metadata"]["namespace"]
    pc = wp["spec"]["pluginConfig"]
    callouts = [pc["jwks"], pc["token_endpoint"]]
    entries = [d for d in docs if d["kind"] == "ServiceEntry"]
    rules = {d["spec"]["host"]: d for d in docs if d["kind"] == "DestinationRule"}
    for callout in callouts:
        m = ISTIO_CLUSTER.match(callout["cluster"])
        assert m, f"{callout['cluster']!r} is not an Istio outbound cluster name"
        port, subset, host = int(m.group(1)), m.group(2), m.group(3)
        assert subset == ""
        assert callout["authority"] == host
        se = [e for e in entries if host in e["spec"]["hosts"]]
        assert len(se) == 1, f"{host}: in {len(se)} ServiceEntries"
        spec = se[0]["spec"]
        assert se[0]["metadata"]["namespace"] == ns or "*" in spec.get("exportTo", ["*"])
        assert spec["location"] == "MESH_EXTERNAL"
        assert spec["resolution"] in ("DNS", "DNS_ROUND_ROBIN")
        assert {"number": port, "protocol": "HTTPS"}.items() <= \
            next(p for p in spec["ports"] if p["number"] == port).items()
        dr = rules.get(host)
        assert dr is not None, f"no DestinationRule for {host}"
        assert dr["metadata"]["namespace"] == ns or "*" in dr["spec"].get("exportTo", ["*"])
        tls = dr["spec"]["trafficPolicy"]["tls"]
        assert tls["mode"] == "SIMPLE" and tls["sni"] == host
        assert tls.get("subjectAltNames", [host]) == [host]
    assert wp["spec"]["phase"] == "AUTHN"
    assert wp["spec"]["failStrategy"] == "FAIL_CLOSE"
    assert wp["spec"]["url"].startswith("oci://")
    assert wp["spec"]["pluginName"] == relay_filter(load_envoy("cognito.yaml"))["root_id"]


def test_istio_plugin_config_is_the_cognito_config():
    """wasmplugin.yaml carries envoy/cognito.yaml's plugin configuration, with the Envoy
    cluster names replaced by Istio's outbound cluster names of the same hosts."""
    envoy_cfg = load_envoy("cognito.yaml")
    expected = plugin_config_of(envoy_cfg)
    clusters = clusters_of(envoy_cfg)
    for callout in (expected["jwks"], expected["token_endpoint"]):
        c = clusters[callout["cluster"]]
        port = c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"]["port_value"]
        callout["cluster"] = f"outbound|{port}||{cluster_host(c)}"
    assert istio_plugin_config() == expected


def test_istio_plugin_config_survives_protobuf_struct():
    """Istio stores pluginConfig as a protobuf Struct (numbers are doubles) and hands the
    plugin its JSON: integers must stay exact and print without a fraction."""
    def numbers(v):
        if isinstance(v, dict):
            for x in v.values():
                yield from numbers(x)
        elif isinstance(v, list):
            for x in v:
                yield from numbers(x)
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            yield v
    for n in numbers(istio_plugin_config()):
        assert isinstance(n, int) and abs(n) < 2 ** 53, n


def test_istio_dockerfile_builds_a_compat_wasm_image():
    """Istio's "compat" image variant: exactly one layer, holding plugin.wasm."""
    lines = [ln.strip() for ln in (ISTIO_DIR / "Dockerfile").read_text().splitlines()
             if ln.strip() and not ln.strip().startswith("#")]
    assert lines[0] == "FROM scratch"
    copies = [ln for ln in lines if ln.split()[0] in ("COPY", "ADD", "RUN")]
    assert len(copies) == 1 and copies[0].startswith("COPY "), lines
    src, dest = copies[0].split()[1:]
    assert src == WASM_PATH.name
    assert dest in ("./plugin.wasm", "/plugin.wasm", "plugin.wasm")
