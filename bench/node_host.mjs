// A proxy-wasm host in Node.js (V8, the engine of Envoy's Wasm filter) that runs the built
// filter through whole requests: the bench's cache-hit request, each one through the
// callbacks Envoy makes (context created, request headers, response headers, log, done,
// deleted), with the host calls answered from JavaScript. Next to it, in interleaved batches,
// the host-call probe of configuration (p) (and, if given, the do-nothing filter of (n)) runs
// the same requests, so (b) − (p) here is the relay's own Wasm code and its extra calls into the
// host, without Envoy's noise. What a host call costs differs from Envoy's (here a JavaScript
// function), so only the difference between two modules carries over, not their totals.
//
//   node bench/node_host.mjs --relay R.wasm --probe P.wasm [--nop N.wasm] [--relay2 R2.wasm]
//                            [--requests 2000] [--batches 25] [--calls 1]
//
// Each module is first checked: the relay must forward the request with `authorization:
// Bearer <token>`, the cookie removed, `x-user-sub` set and the reason `cache_hit`, and set
// `cache-control` and `vary` on the response; the probe must make the same writes. The two must
// make the same host calls (proxy-wasm and WASI) for it, or the run stops; `--calls 1` prints them.
import { readFile } from "node:fs/promises";
import { WASI } from "node:wasi";
import { argv, exit, hrtime } from "node:process";
import { generateKeyPairSync, createSign } from "node:crypto";

const opts = { requests: 2000, batches: 25 };
for (let i = 2; i < argv.length; i += 2) {
  const key = argv[i].replace(/^--/, "");
  opts[key] = argv[i + 1];
}
if (!opts.relay || !opts.probe) {
  console.error("usage: node bench/node_host.mjs --relay R.wasm --probe P.wasm [--nop N.wasm] " +
    "[--relay2 R2.wasm] [--requests N] [--batches B]");
  exit(2);
}
const REQUESTS = Number(opts.requests);
const BATCHES = Number(opts.batches);

// -- the token and the relay's configuration (as bench/envoy_configs.py defines them) --------

const b64url = (buf) => Buffer.from(buf).toString("base64url");
const { privateKey, publicKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
const jwk = { ...publicKey.export({ format: "jwk" }), kid: "bench-rs256", alg: "RS256", use: "sig" };
const now = Math.floor(Date.now() / 1000);
const header = b64url(JSON.stringify({ alg: "RS256", kid: jwk.kid, typ: "JWT" }));
const payload = b64url(JSON.stringify({
  iss: "https://idp.test", aud: "my-app-client-id", token_use: "access", sub: "bench-user",
  iat: now, exp: now + 3600, jti: "hit",
}));
const signer = createSign("RSA-SHA256");
signer.update(`${header}.${payload}`);
const TOKEN = `${header}.${payload}.${b64url(signer.sign(privateKey))}`;
const RELAY_CONFIG = JSON.stringify({
  protected_prefixes: ["/api/"],
  issuer: "https://idp.test",
  audiences: ["my-app-client-id"],
  required_claims: { token_use: "access" },
  algorithms: ["RS256", "ES256", "EdDSA"],
  clock_skew_s: 30,
  jwks: { inline: { keys: [jwk] } },
  forward_claims: { "x-user-sub": "sub" },
});
const PROBE_CONFIG = `Bearer ${TOKEN}\nbench-user\n`;

// What wrk's request looks like when Envoy hands it to the filter, and the direct response.
const REQUEST = [
  [":authority", "127.0.0.1:10000"],
  [":path", "/api/me"],
  [":method", "GET"],
  [":scheme", "http"],
  ["cookie", `__Host-relay-at=${TOKEN}`],
  ["x-forwarded-proto", "http"],
  ["x-request-id", "6b1f1b7e-1c0e-4b5e-9d3f-2d6c1a0b9e77"],
];
const RESPONSE = [
  [":status", "200"],
  ["content-length", "3"],
  ["content-type", "text/plain"],
];

// -- the host -------------------------------------------------------------------------------

const enc = new TextEncoder();
const dec = new TextDecoder();
const OK = 0, NOT_FOUND = 1, BAD_ARGUMENT = 2;

function serialize(map) {
  const parts = map.map(([n, v]) => [enc.encode(n), enc.encode(v)]);
  let size = 4 + parts.length * 8;
  for (const [n, v] of parts) size += n.length + v.length + 2;
  const out = new Uint8Array(size);
  const dv = new DataView(out.buffer);
  dv.setUint32(0, parts.length, true);
  let at = 4;
  for (const [n, v] of parts) {
    dv.setUint32(at, n.length, true);
    dv.setUint32(at + 4, v.length, true);
    at += 8;
  }
  for (const [n, v] of parts) {
    out.set(n, at); at += n.length + 1;
    out.set(v, at); at += v.length + 1;
  }
  return out;
}

const REQUEST_WIRE = serialize(REQUEST);
const RESPONSE_WIRE = serialize(RESPONSE);

async function load(file, config) {
  const wasi = new WASI({ version: "preview1", args: [], env: {}, returnOnExit: true });
  const module = await WebAssembly.compile(await readFile(file));
  const h = {
    requestMap: [], responseMap: [], property: new Map(), metrics: [],
    config: enc.encode(config), exports: null, log: [],
  };
  const mem = () => new Uint8Array(h.exports.memory.buffer);
  const view = () => new DataView(h.exports.memory.buffer);
  const str = (ptr, len) => dec.decode(mem().subarray(ptr, ptr + len));
  // Hands bytes to the module the way Envoy does: memory from proxy_on_memory_allocate.
  const give = (bytes, retPtr, retSize) => {
    const ptr = bytes.length ? h.exports.proxy_on_memory_allocate(bytes.length) : 0;
    if (bytes.length) mem().set(bytes, ptr);
    const dv = view();
    dv.setUint32(retPtr, ptr, true);
    dv.setUint32(retSize, bytes.length, true);
    return OK;
  };
  const mapOf = (t) => (t === 0 ? h.requestMap : t === 2 ? h.responseMap : null);
  const edited = (t) => { if (t === 0) h.requestEdited = true; else h.responseEdited = true; };
  const env = {
    proxy_log: (level, ptr, len) => {
      // Kept only until the module is configured: what the refusal below reports.
      if (!h.configured) h.log.push(str(ptr, len));
      return OK;
    },
    proxy_get_log_level: (ret) => { view().setUint32(ret, 2, true); return OK; }, // info
    proxy_get_current_time_nanoseconds: (ret) => {
      view().setBigUint64(ret, BigInt(Date.now()) * 1000000n, true);
      return OK;
    },
    proxy_set_tick_period_milliseconds: () => OK,
    proxy_get_buffer_bytes: (type, start, max, retPtr, retSize) =>
      (type === 7 ? give(h.config.subarray(start >>> 0, (start >>> 0) + (max >>> 0)), retPtr, retSize)
        : NOT_FOUND),
    proxy_get_header_map_pairs: (t, retPtr, retSize) => {
      const m = mapOf(t);
      if (!m) return NOT_FOUND;
      // The untouched maps are serialized once: the host's own cost stays small next to the
      // module's.
      const bytes = m === h.requestMap && !h.requestEdited ? REQUEST_WIRE
        : m === h.responseMap && !h.responseEdited ? RESPONSE_WIRE : serialize(m);
      return give(bytes, retPtr, retSize);
    },
    proxy_get_header_map_value: (t, kp, ks, retPtr, retSize) => {
      const m = mapOf(t);
      const name = str(kp, ks);
      const hit = m && m.find(([n]) => n === name);
      return hit ? give(enc.encode(hit[1]), retPtr, retSize) : NOT_FOUND;
    },
    proxy_replace_header_map_value: (t, kp, ks, vp, vs) => {
      const m = mapOf(t);
      if (!m) return BAD_ARGUMENT;
      edited(t);
      const name = str(kp, ks), value = str(vp, vs);
      const i = m.findIndex(([n]) => n === name);
      if (i >= 0) m[i] = [name, value]; else m.push([name, value]);
      return OK;
    },
    proxy_add_header_map_value: (t, kp, ks, vp, vs) => {
      const m = mapOf(t);
      if (!m) return BAD_ARGUMENT;
      edited(t);
      m.push([str(kp, ks), str(vp, vs)]);
      return OK;
    },
    proxy_remove_header_map_value: (t, kp, ks) => {
      const m = mapOf(t);
      if (!m) return BAD_ARGUMENT;
      edited(t);
      const name = str(kp, ks);
      for (let i = m.length - 1; i >= 0; i--) if (m[i][0] === name) m.splice(i, 1);
      return OK;
    },
    proxy_set_property: (pp, ps, vp, vs) => {
      h.property.set(str(pp, ps), str(vp, vs));
      return OK;
    },
    proxy_get_property: () => NOT_FOUND,
    proxy_define_metric: (_type, np, ns, ret) => {
      h.metrics.push([str(np, ns), 0n]);
      view().setUint32(ret, h.metrics.length - 1, true);
      return OK;
    },
    proxy_increment_metric: (id, by) => {
      if (h.metrics[id]) h.metrics[id][1] += BigInt(by);
      return OK;
    },
    proxy_record_metric: () => OK,
    proxy_get_metric: () => NOT_FOUND,
    proxy_get_shared_data: () => NOT_FOUND,
    proxy_set_shared_data: () => OK,
    proxy_set_effective_context: () => OK,
  };
  const imports = wasi.getImportObject();
  imports.env = {};
  h.calls = new Map();
  for (const imp of WebAssembly.Module.imports(module)) {
    if (imp.module === "env" && imp.kind === "function") {
      const call = env[imp.name] ?? (() => {
        throw new Error(`${file}: host call ${imp.name} is not part of a cache hit`);
      });
      // Counted only while `h.counting` (the checked request), so the timed runs pay nothing.
      imports.env[imp.name] = (...args) => {
        if (h.counting) h.calls.set(imp.name, (h.calls.get(imp.name) ?? 0) + 1);
        return call(...args);
      };
    }
  }
  for (const [name, fn] of Object.entries(wasi.getImportObject().wasi_snapshot_preview1 ?? {})) {
    imports.wasi_snapshot_preview1[name] = (...args) => {
      if (h.counting) h.calls.set(name, (h.calls.get(name) ?? 0) + 1);
      return fn(...args);
    };
  }
  const instance = await WebAssembly.instantiate(module, imports);
  h.exports = instance.exports;
  wasi.initialize({ exports: { _initialize: h.exports._initialize, memory: h.exports.memory } });
  const x = h.exports;
  const ROOT = 1;
  x.proxy_on_context_create(ROOT, 0);
  if (!x.proxy_on_vm_start(ROOT, 0)) throw new Error(`${file}: on_vm_start refused`);
  if (!x.proxy_on_configure(ROOT, h.config.length)) {
    throw new Error(`${file}: on_configure refused: ${h.log.join(" | ")}`);
  }
  h.configured = true;
  let ctx = ROOT;
  // One request through the callbacks Envoy makes.
  h.request = () => {
    ctx += 1;
    h.requestMap = REQUEST.slice();
    h.responseMap = RESPONSE.slice();
    h.requestEdited = false;
    h.responseEdited = false;
    x.proxy_on_context_create(ctx, ROOT);
    const a = x.proxy_on_request_headers(ctx, REQUEST.length, 1);
    const b = x.proxy_on_response_headers(ctx, RESPONSE.length, 0);
    x.proxy_on_log(ctx);
    x.proxy_on_done(ctx);
    x.proxy_on_delete(ctx);
    return a | b;
  };
  return h;
}

function check(name, h) {
  h.request(); // the relay's first request verifies the token; the next ones are cache hits
  h.counting = true;
  const action = h.request();
  h.counting = false;
  const get = (m, n) => m.filter(([k]) => k === n).map(([, v]) => v);
  const problems = [];
  if (action !== 0) problems.push(`action ${action}, not Continue`);
  if (get(h.requestMap, "authorization")[0] !== `Bearer ${TOKEN}`) problems.push("authorization");
  if (get(h.requestMap, "cookie").length) problems.push("cookie not removed");
  if (get(h.requestMap, "x-user-sub")[0] !== "bench-user") problems.push("x-user-sub");
  if (h.property.get("edge_token_relay.reason") !== "cache_hit") problems.push("reason");
  if (get(h.responseMap, "cache-control")[0] !== "private") problems.push("cache-control");
  if (get(h.responseMap, "vary")[0] !== "Cookie") problems.push("vary");
  if (problems.length) throw new Error(`${name} did not do the cache hit's work: ${problems.join(", ")}`);
  const calls = [...h.calls].map(([call, count]) => `${call} ×${count}`).sort().join(", ");
  if (opts.calls) console.log(`${name} host calls per request: ${calls}`);
  return calls;
}

const modules = [["b", opts.relay, RELAY_CONFIG], ["p", opts.probe, PROBE_CONFIG]];
if (opts.relay2) modules.push(["b2", opts.relay2, RELAY_CONFIG]);
if (opts.nop) modules.push(["n", opts.nop, ""]);
const hosts = [];
const callsOf = {};
for (const [name, file, config] of modules) {
  const h = await load(file, config);
  if (name !== "n") callsOf[name] = check(name, h);
  hosts.push([name, h, Infinity]);
}
// (p) is the floor of this job only while it makes exactly the relay's calls.
if (callsOf.b !== callsOf.p) {
  throw new Error(`the probe's host calls differ from the relay's:\n b: ${callsOf.b}\n p: ${callsOf.p}`);
}
for (let batch = 0; batch < BATCHES; batch++) {
  for (const entry of hosts) {
    const h = entry[1];
    const t0 = hrtime.bigint();
    for (let i = 0; i < REQUESTS; i++) h.request();
    const ns = Number(hrtime.bigint() - t0) / REQUESTS;
    if (ns < entry[2]) entry[2] = ns;
  }
}
const best = Object.fromEntries(hosts.map(([name, , ns]) => [name, ns]));
for (const [name, , ns] of hosts) console.log(`${name.padEnd(3)} ${ns.toFixed(0).padStart(6)} ns/request`);
console.log(`b - p ${(best.b - best.p).toFixed(0).padStart(6)} ns/request`);
if (best.b2 !== undefined) console.log(`b2 - p ${(best.b2 - best.p).toFixed(0).padStart(5)} ns/request`);
if (best.n !== undefined) console.log(`p - n ${(best.p - best.n).toFixed(0).padStart(6)} ns/request`);
