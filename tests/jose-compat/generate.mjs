// Generates src/testdata/session/jose_sealed.json: session cookies sealed by the real `jose`
// library exactly the way a Next.js server would mint them, plus a few values the relay must
// refuse. The Rust tests in src/session.rs unseal every one of them and re-seal the valid ones
// with the same key and IV, expecting the identical compact string.
//
//   cd tests/jose-compat && npm ci && npm run generate
//
// The IVs are random (jose picks them), so every run produces different compact strings; the
// Rust test reads the IV back out of each value, so any run's output is a valid fixture.
import { CompactEncrypt } from 'jose';
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const out = fileURLToPath(new URL('../../src/testdata/session/jose_sealed.json', import.meta.url));
const joseVersion = JSON.parse(
  readFileSync(new URL('./node_modules/jose/package.json', import.meta.url), 'utf8'),
).version;

const b64u = (bytes) => Buffer.from(bytes).toString('base64url');
// Test keys only: 00 01 .. 1f and a0 a1 .. bf.
const current = { kid: '2026-11', key: Uint8Array.from({ length: 32 }, (_, i) => i) };
const previous = { kid: '2026-05', key: Uint8Array.from({ length: 32 }, (_, i) => 0xa0 + i) };
const aes128 = Uint8Array.from({ length: 16 }, (_, i) => 0x40 + i);

// The relay's clock in the Rust test.
const now = 1_800_000_000;
const later = 1_900_000_000;

// Exactly the README's snippet ("The session cookie format").
async function mint(plaintextObject, header, key) {
  const plaintext = JSON.stringify(plaintextObject);
  const compact = await new CompactEncrypt(new TextEncoder().encode(plaintext))
    .setProtectedHeader(header)
    .encrypt(key);
  return { plaintext, compact };
}

const rtAscii = 'v1.MRrp9-_xk8vLLHAiYb4pXqMkPi3m7Ny0TgM3Z1iZVYgMy0FpK';
const rtUnicode = 'quote" backslash\\ slash/ nl\n tab\t cr\r ctl\u0001\u001f del\u007f é ü 漢字 😀 \u2028\u2029 <>&\'';
const rtLong = Array.from({ length: 3000 }, (_, i) => 'abcdefghijklmnopqrstuvwxyz0123456789-_.'[(i * 7) % 39]).join('');

const cases = [
  // Valid: [name, plaintext object, header, key, expectation]
  ['rt_and_exp', { rt: rtAscii, exp: later }, 'current', 'ok'],
  ['rt_only', { rt: rtAscii }, 'current', 'ok'],
  ['exp_undefined', { rt: rtAscii, exp: undefined }, 'current', 'ok'],
  ['unicode_rt', { rt: rtUnicode, exp: later }, 'current', 'ok'],
  ['with_idt', { rt: rtAscii, exp: later, idt: 'eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxIn0.c2ln' }, 'current', 'ok'],
  ['long_rt', { rt: rtLong, exp: later }, 'current', 'ok'],
  ['previous_key', { rt: rtAscii, exp: later }, 'previous', 'ok'],
  ['unknown_members', { sid: 'abc', rt: rtAscii, v: 2, nested: { a: [1, 2] }, exp: later }, 'current', 'ok'],
  ['extra_header_member', { rt: rtAscii, exp: later }, 'current+cty', 'ok'],
  // Refused.
  ['expired', { rt: rtAscii, exp: now - 1 }, 'current', 'Expired'],
  ['expires_now', { rt: rtAscii, exp: now }, 'current', 'Expired'],
  ['unknown_kid', { rt: rtAscii, exp: later }, 'unknown-kid', 'UnknownKey'],
  ['no_kid', { rt: rtAscii, exp: later }, 'no-kid', 'Malformed'],
  ['a128gcm', { rt: rtAscii, exp: later }, 'a128gcm', 'Malformed'],
  ['missing_rt', { exp: later }, 'current', 'BadPayload'],
  ['empty_rt', { rt: '', exp: later }, 'current', 'BadPayload'],
  ['rt_number', { rt: 42, exp: later }, 'current', 'BadPayload'],
  ['exp_string', { rt: rtAscii, exp: String(later) }, 'current', 'BadPayload'],
  ['exp_fraction', { rt: rtAscii, exp: later + 0.5 }, 'current', 'BadPayload'],
  ['exp_negative', { rt: rtAscii, exp: -1 }, 'current', 'BadPayload'],
  ['array_payload', [rtAscii], 'current', 'BadPayload'],
];

const headers = {
  current: [{ alg: 'dir', enc: 'A256GCM', kid: current.kid }, current.key],
  'current+cty': [{ alg: 'dir', enc: 'A256GCM', kid: current.kid, cty: 'json' }, current.key],
  previous: [{ alg: 'dir', enc: 'A256GCM', kid: previous.kid }, previous.key],
  'unknown-kid': [{ alg: 'dir', enc: 'A256GCM', kid: '1999-01' }, current.key],
  'no-kid': [{ alg: 'dir', enc: 'A256GCM' }, current.key],
  a128gcm: [{ alg: 'dir', enc: 'A128GCM', kid: current.kid }, aes128],
};

const fixtures = [];
for (const [name, object, headerName, expect] of cases) {
  const [header, key] = headers[headerName];
  const { plaintext, compact } = await mint(object, header, key);
  fixtures.push({ name, expect, key: b64u(key), plaintext, compact });
}

const doc = {
  generator: 'tests/jose-compat/generate.mjs',
  jose: joseVersion,
  node: process.version,
  now,
  session_keys: [
    { kid: current.kid, key: b64u(current.key) },
    { kid: previous.kid, key: b64u(previous.key) },
  ],
  fixtures,
};
writeFileSync(out, JSON.stringify(doc, null, 2) + '\n');
console.log(`wrote ${fixtures.length} fixtures (jose ${joseVersion}, node ${process.version}) to ${out}`);
