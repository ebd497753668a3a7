// Opens the Rust-sealed session cookies in src/testdata/session/rust_sealed.json with the real
// `jose` library (compactDecrypt, as a Next.js server would read the cookie), and checks that
// jose's CompactEncrypt, given the same key, IV and plaintext, produces the identical string.
//
//   cargo test --lib session::tests::write_rust_sealed_fixture -- --ignored   # (re)write it
//   cd tests/jose-compat && npm ci && npm run verify
//
// Exits non-zero on any mismatch.
import { compactDecrypt, CompactEncrypt } from 'jose';
import { readFileSync } from 'node:fs';
import { isDeepStrictEqual } from 'node:util';

const doc = JSON.parse(
  readFileSync(new URL('../../src/testdata/session/rust_sealed.json', import.meta.url), 'utf8'),
);
const joseVersion = JSON.parse(
  readFileSync(new URL('./node_modules/jose/package.json', import.meta.url), 'utf8'),
).version;
const keys = new Map(doc.session_keys.map(({ kid, key }) => [kid, Buffer.from(key, 'base64url')]));

let failures = 0;
for (const t of doc.tokens) {
  const problems = [];
  try {
    // Key selection by the header's kid, the way a reader with several keys does it.
    const { plaintext, protectedHeader } = await compactDecrypt(t.compact, async (header) => {
      const key = keys.get(header.kid);
      if (!key) throw new Error(`unknown kid ${header.kid}`);
      return key;
    }, { keyManagementAlgorithms: ['dir'], contentEncryptionAlgorithms: ['A256GCM'] });
    const text = new TextDecoder('utf-8', { fatal: true }).decode(plaintext);
    if (!isDeepStrictEqual(protectedHeader, { alg: 'dir', enc: 'A256GCM', kid: t.kid })) {
      problems.push(`header ${JSON.stringify(protectedHeader)}`);
    }
    if (text !== t.plaintext) problems.push('plaintext differs');
    const session = JSON.parse(text);
    if (typeof session.rt !== 'string' || session.rt.length === 0) problems.push('no rt');
    // Same inputs through jose's encrypter: must be the same compact string.
    const again = await new CompactEncrypt(new TextEncoder().encode(JSON.stringify(session)))
      .setProtectedHeader({ alg: 'dir', enc: 'A256GCM', kid: t.kid })
      .setInitializationVector(Buffer.from(t.iv, 'base64url'))
      .encrypt(keys.get(t.kid));
    if (again !== t.compact) problems.push('jose re-encryption differs');
  } catch (e) {
    problems.push(`${e.code ?? e.name}: ${e.message}`);
  }
  if (problems.length) failures++;
  console.log(`${problems.length ? 'FAIL' : 'ok  '} ${t.name}${problems.length ? ' — ' + problems.join('; ') : ''}`);
}

// Negative control: a flipped tag byte must be refused.
const first = doc.tokens[0];
const parts = first.compact.split('.');
const tag = Buffer.from(parts[4], 'base64url');
tag[0] ^= 1;
parts[4] = tag.toString('base64url');
try {
  await compactDecrypt(parts.join('.'), keys.get(first.kid));
  console.log('FAIL tampered tag was accepted');
  failures++;
} catch (e) {
  console.log(`ok   tampered tag refused (${e.code})`);
}

console.log(`jose ${joseVersion}, node ${process.version}: ${doc.tokens.length - failures}/${doc.tokens.length} Rust-sealed values opened and reproduced`);
process.exit(failures ? 1 : 0);
