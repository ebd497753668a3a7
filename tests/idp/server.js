// TEST-ONLY OpenID provider for edge-token-relay's end-to-end tests and demo.
//
// A real `oidc-provider` (pinned in package.json) on 127.0.0.1 with:
//   * JWT access tokens (RFC 9068, header typ "at+jwt") whose `aud` is AUDIENCE, for the
//     first grant AND for every refresh (resource indicators + useGrantedResource);
//   * refresh tokens for the registered clients, rotated on EVERY use (rotateRefreshToken:
//     true); presenting a consumed refresh token revokes the whole grant (oidc-provider's
//     reuse detection);
//   * authorization code + PKCE (S256, required for every client), devInteractions (the
//     built-in login form accepts ANY login and password; the login becomes `sub`),
//     RP-initiated logout, token revocation, token introspection;
//   * refresh tokens are issued to these clients with or without offline_access; NOTE that
//     oidc-provider drops offline_access from an authorization request that lacks
//     prompt=consent, and without offline_access the refresh token (its grant) ends with the
//     IdP browser session (RP-initiated logout revokes it);
//   * an in-process Map adapter (the bundled dev adapter is an LRU capped at 1,000 entries);
//   * with TEST_GRANTS=1 only: the grant type `urn:test:mint` (tokens for a `sub` without a
//     browser), `GET /__test/stats` and `POST /__test/reset`.
//
// Configuration: environment variables, optionally overridden by a JSON file whose path is
// the first argument (same keys as the environment variables, values as JSON types):
//
//   PORT                       0 = any free port (default 0); the real one is printed
//   HOST                       default 127.0.0.1
//   ISSUER                     default http://HOST:PORT
//   ACCESS_TOKEN_TTL           seconds, default 300
//   REFRESH_TOKEN_TTL          seconds, default 1209600 (14 days)
//   AUDIENCE                   `aud` of access tokens, default relay-client
//   RESOURCE                   resource indicator (absolute URI) the access tokens are for,
//                              default urn:edge-token-relay:api
//   RESOURCE_SCOPES            scopes of that resource server, default "api"
//   ACCESS_TOKEN_ALG           RS256 (default) or ES256; both keys are in the JWKS
//   EXTRA_ACCESS_TOKEN_CLAIMS  JSON object added to every access token, e.g.
//                              {"token_use":"access"}; default none
//   REDIRECT_URIS              comma/space separated, default http://127.0.0.1:8080/auth/callback
//   POST_LOGOUT_REDIRECT_URIS  comma/space separated, default http://127.0.0.1:8080/
//   CLIENT_ID / CLIENT_SECRET  the basic-auth client, default relay-client / relay-secret
//   TEST_GRANTS                1 enables the test-only grant and /__test endpoints
//   STRICT_CLIENT_AUTH         1 (default): a client must authenticate with its registered
//                              token_endpoint_auth_method (oidc-provider alone accepts
//                              client_secret_post for a client_secret_basic client and back)
//
// Clients (all: grant types authorization_code + refresh_token, response type code):
//   CLIENT_ID (relay-client) / CLIENT_SECRET (relay-secret)   client_secret_basic
//   relay-client-post / relay-secret-post                      client_secret_post
//   relay-public (no secret)                                   none (public)
//
// stdout: one line `IDP_READY {json}` once listening, then one line per token endpoint
// call (`token grant_type=... client_id=... auth=... status=... result=ok|error ...`; also
// `revocation ...` and `introspection ...` lines; never a token value). Stops on SIGTERM / SIGINT.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider, { errors } from 'oidc-provider';

// ------------------------------------------------------------------------------------------
// Configuration
// ------------------------------------------------------------------------------------------

function loadSettings() {
  const s = { ...process.env };
  const file = process.argv[2];
  if (file) {
    const fromFile = JSON.parse(fs.readFileSync(file, 'utf8'));
    for (const [key, value] of Object.entries(fromFile)) {
      s[key] = typeof value === 'string' ? value : JSON.stringify(value);
    }
  }
  return s;
}

const settings = loadSettings();

function list(value, fallback) {
  if (value === undefined || value === '') return fallback;
  const trimmed = value.trim();
  if (trimmed.startsWith('[')) return JSON.parse(trimmed);
  return trimmed.split(/[\s,]+/).filter(Boolean);
}

function int(value, fallback, name) {
  if (value === undefined || value === '') return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new Error(`${name} must be a non-negative integer`);
  return n;
}

const HOST = settings.HOST || '127.0.0.1';
const PORT = int(settings.PORT, 0, 'PORT');
const ACCESS_TOKEN_TTL = int(settings.ACCESS_TOKEN_TTL, 300, 'ACCESS_TOKEN_TTL');
const REFRESH_TOKEN_TTL = int(settings.REFRESH_TOKEN_TTL, 14 * 24 * 3600, 'REFRESH_TOKEN_TTL');
const AUDIENCE = settings.AUDIENCE || 'relay-client';
const RESOURCE = settings.RESOURCE || 'urn:edge-token-relay:api';
const RESOURCE_SCOPES = list(settings.RESOURCE_SCOPES, ['api']);
const ACCESS_TOKEN_ALG = settings.ACCESS_TOKEN_ALG || 'RS256';
const EXTRA_ACCESS_TOKEN_CLAIMS = settings.EXTRA_ACCESS_TOKEN_CLAIMS
  ? JSON.parse(settings.EXTRA_ACCESS_TOKEN_CLAIMS) : undefined;
const REDIRECT_URIS = list(settings.REDIRECT_URIS, ['http://127.0.0.1:8080/auth/callback']);
const POST_LOGOUT_REDIRECT_URIS = list(settings.POST_LOGOUT_REDIRECT_URIS, ['http://127.0.0.1:8080/']);
const CLIENT_ID = settings.CLIENT_ID || 'relay-client';
const CLIENT_SECRET = settings.CLIENT_SECRET || 'relay-secret';
const TEST_GRANTS = settings.TEST_GRANTS === '1' || settings.TEST_GRANTS === 'true';
const STRICT_CLIENT_AUTH = !['0', 'false'].includes(settings.STRICT_CLIENT_AUTH ?? '1');

const TEST_GRANT = 'urn:test:mint';
const OIDC_SCOPES = ['openid', 'offline_access', 'profile', 'email'];
const DEFAULT_MINT_SCOPE = ['openid', 'offline_access', ...RESOURCE_SCOPES].join(' ');

if (!['RS256', 'ES256'].includes(ACCESS_TOKEN_ALG)) {
  throw new Error('ACCESS_TOKEN_ALG must be RS256 or ES256');
}
if (!URL.canParse(RESOURCE)) {
  throw new Error('RESOURCE must be an absolute URI');
}

// ------------------------------------------------------------------------------------------
// Storage: a plain Map (no size cap; expired entries are dropped on read and by a sweep)
// ------------------------------------------------------------------------------------------

const store = new Map(); // key -> { payload, expiresAt (ms) | Infinity }
const grantIndex = new Map(); // grantId -> Set of keys
const uidIndex = new Map(); // Session uid -> id
const userCodeIndex = new Map(); // userCode -> id

const GRANTABLE = new Set([
  'AccessToken', 'AuthorizationCode', 'RefreshToken', 'DeviceCode',
  'BackchannelAuthenticationRequest', 'PreAuthorizedCode',
]);

function liveEntry(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload, expiresAt });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) uidIndex.set(payload.uid, id);
    if (payload.userCode) userCodeIndex.set(payload.userCode, id);
  }

  async find(id) {
    return liveEntry(this.key(id))?.payload;
  }

  async findByUid(uid) {
    const id = uidIndex.get(uid);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = userCodeIndex.get(userCode);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = liveEntry(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    const key = this.key(id);
    const entry = store.get(key);
    store.delete(key);
    if (entry?.payload.grantId) grantIndex.get(entry.payload.grantId)?.delete(key);
  }

  async revokeByGrantId(grantId) {
    for (const key of grantIndex.get(grantId) ?? []) store.delete(key);
    grantIndex.delete(grantId);
  }
}

setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt <= now) store.delete(key);
  }
  for (const [grantId, keys] of grantIndex) {
    for (const key of keys) if (!store.has(key)) keys.delete(key);
    if (keys.size === 0) grantIndex.delete(grantId);
  }
  for (const [index, model] of [[uidIndex, 'Session'], [userCodeIndex, null]]) {
    for (const [k, id] of index) {
      if (model && !store.has(`${model}:${id}`)) index.delete(k);
    }
  }
}, 60_000).unref();

// ------------------------------------------------------------------------------------------
// Keys, accounts, resource server
// ------------------------------------------------------------------------------------------

function privateJwk(type, options, alg) {
  const { privateKey } = crypto.generateKeyPairSync(type, options);
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, alg, use: 'sig', kid: `${alg.toLowerCase()}-${crypto.randomBytes(6).toString('hex')}` };
}

// The first key of the access-token algorithm signs access tokens; both are in the JWKS.
const signingKeys = [
  privateJwk('rsa', { modulusLength: 2048 }, 'RS256'),
  privateJwk('ec', { namedCurve: 'P-256' }, 'ES256'),
];

async function findAccount(_ctx, sub) {
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        name: sub,
        preferred_username: sub,
        email: `${sub}@example.test`,
        email_verified: true,
      };
    },
  };
}

function resourceServerInfo() {
  return {
    scope: RESOURCE_SCOPES.join(' '),
    audience: AUDIENCE,
    accessTokenTTL: ACCESS_TOKEN_TTL,
    accessTokenFormat: 'jwt',
    jwt: { sign: { alg: ACCESS_TOKEN_ALG } },
  };
}

// ------------------------------------------------------------------------------------------
// Provider
// ------------------------------------------------------------------------------------------

const clientCommon = {
  grant_types: ['authorization_code', 'refresh_token', ...(TEST_GRANTS ? [TEST_GRANT] : [])],
  response_types: ['code'],
  redirect_uris: REDIRECT_URIS,
  post_logout_redirect_uris: POST_LOGOUT_REDIRECT_URIS,
};

const clients = [
  {
    ...clientCommon,
    client_id: CLIENT_ID,
    client_secret: CLIENT_SECRET,
    token_endpoint_auth_method: 'client_secret_basic',
  },
  {
    ...clientCommon,
    client_id: 'relay-client-post',
    client_secret: 'relay-secret-post',
    token_endpoint_auth_method: 'client_secret_post',
  },
  {
    ...clientCommon,
    client_id: 'relay-public',
    token_endpoint_auth_method: 'none',
  },
];

function configuration() {
  return {
    adapter: MapAdapter,
    clients,
    jwks: { keys: signingKeys },
    findAccount,
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    scopes: [...OIDC_SCOPES],
    claims: {
      openid: ['sub'],
      profile: ['name', 'preferred_username'],
      email: ['email', 'email_verified'],
    },
    pkce: { required: () => true },
    rotateRefreshToken: true,
    // A refresh token for every client allowed the grant type (not only with offline_access).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    extraTokenClaims: EXTRA_ACCESS_TOKEN_CLAIMS ? async () => EXTRA_ACCESS_TOKEN_CLAIMS : undefined,
    ttl: {
      AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? ACCESS_TOKEN_TTL,
      AuthorizationCode: 60,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 3600,
      Grant: 14 * 24 * 3600,
      RefreshToken: REFRESH_TOKEN_TTL,
    },
    features: {
      devInteractions: { enabled: true },
      revocation: { enabled: true },
      // Lets tests look at a refresh token (active or not) without using it.
      introspection: { enabled: true },
      rpInitiatedLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Authorization requests without `resource` get this resource (so a code flow with
        // scope "openid offline_access api" yields a JWT access token for AUDIENCE) ...
        defaultResource: async (_ctx, _client, oneOf) => {
          if (oneOf) return oneOf.includes(RESOURCE) ? RESOURCE : oneOf[0];
          return RESOURCE;
        },
        // ... and the code/refresh token exchanges use the granted resource even when the
        // scope contains `openid` (default: such exchanges mint an opaque userinfo token,
        // which is what makes refreshed access tokens opaque in a naive setup).
        useGrantedResource: async () => true,
        getResourceServerInfo: async (_ctx, indicator) => {
          if (indicator !== RESOURCE) throw new errors.InvalidTarget();
          return resourceServerInfo();
        },
      },
    },
  };
}

// ------------------------------------------------------------------------------------------
// The test-only grant: urn:test:mint
// ------------------------------------------------------------------------------------------
//
// POST /token  grant_type=urn:test:mint&sub=alice[&scope=...][&access_token_ttl=N]
// with the client's normal authentication. Builds what the authorization_code grant ends
// with (see node_modules/oidc-provider/lib/helpers/grant_common.js issueTokens): a Grant for
// the account and client with the OIDC scopes and the resource scopes, a JWT AccessToken for
// RESOURCE and a RefreshToken (rotations 0, same fields as issueTokens sets), plus an ID
// token when `openid` is in scope. The refresh token is an ordinary RefreshToken in the same
// store, so the refresh_token grant rotates it and detects its reuse exactly as for a code
// flow's one. No session: it does not expire with a browser session.

function registerTestGrant(provider) {
  async function mintHandler(ctx) {
    const { client, params } = ctx.oidc;
    if (!params.sub) throw new errors.InvalidRequest("missing required parameter 'sub'");
    const requested = [...new Set((params.scope || DEFAULT_MINT_SCOPE).split(' ').filter(Boolean))];
    const unknown = requested.filter((s) => !OIDC_SCOPES.includes(s) && !RESOURCE_SCOPES.includes(s));
    if (unknown.length) throw new errors.InvalidScope('requested scope is not allowed', unknown.join(' '));
    const oidcScope = requested.filter((s) => OIDC_SCOPES.includes(s));
    const resourceScope = requested.filter((s) => RESOURCE_SCOPES.includes(s));
    const scope = requested.join(' ');
    const authTime = Math.floor(Date.now() / 1000);

    const grant = new provider.Grant({ accountId: params.sub, clientId: client.clientId });
    if (oidcScope.length) grant.addOIDCScope(oidcScope.join(' '));
    grant.addResourceScope(RESOURCE, resourceScope.join(' '));
    const grantId = await grant.save();
    ctx.oidc.entity('Grant', grant);

    const account = await findAccount(ctx, params.sub);
    ctx.oidc.entity('Account', account);

    const at = new provider.AccessToken({
      accountId: account.accountId,
      client,
      expiresWithSession: false,
      grantId,
      gty: TEST_GRANT,
    });
    const info = resourceServerInfo();
    if (params.access_token_ttl !== undefined) {
      info.accessTokenTTL = int(params.access_token_ttl, ACCESS_TOKEN_TTL, 'access_token_ttl');
    }
    at.resourceServer = new provider.ResourceServer(RESOURCE, info);
    at.scope = grant.getResourceScopeFiltered(RESOURCE, resourceScope);
    ctx.oidc.entity('AccessToken', at);
    const accessToken = await at.save();

    const rt = new provider.RefreshToken({
      accountId: account.accountId,
      authTime,
      client,
      expiresWithSession: false,
      grantId,
      gty: TEST_GRANT,
      resource: RESOURCE,
      rotations: 0,
      scope,
    });
    ctx.oidc.entity('RefreshToken', rt);
    const refreshToken = await rt.save();

    let idToken;
    if (oidcScope.includes('openid')) {
      const claims = await account.claims('id_token', oidcScope.join(' '), {}, []);
      const token = new provider.IdToken({ ...claims, auth_time: authTime }, { ctx });
      token.scope = 'openid';
      idToken = await token.issue({ use: 'idtoken' });
    }

    ctx.body = {
      access_token: accessToken,
      expires_in: at.expiration,
      token_type: at.tokenType,
      refresh_token: refreshToken,
      ...(idToken ? { id_token: idToken } : {}),
      scope: at.scope || undefined,
    };
  }

  provider.registerGrantType(TEST_GRANT, mintHandler, ['sub', 'scope', 'access_token_ttl']);
}

// ------------------------------------------------------------------------------------------
// Token endpoint log + counters (koa middleware in front of the provider)
// ------------------------------------------------------------------------------------------

function freshStats() {
  return {
    token_requests: 0,
    token_errors: 0,
    refresh_requests: 0,
    refresh_ok: 0,
    refresh_errors: 0,
    mint_requests: 0,
    revocation_requests: 0,
    by_grant_type: {},
    errors: {},
  };
}

let stats = freshStats();

function logValue(value) {
  if (value === undefined || value === null || value === '') return '-';
  const text = String(value);
  return /^[\w.:/@+-]+$/.test(text) ? text : JSON.stringify(text);
}

let tokenLock = Promise.resolve();

function acquireTokenLock() {
  let release;
  const held = new Promise((resolve) => { release = resolve; });
  const previous = tokenLock;
  tokenLock = previous.then(() => held);
  return previous.then(() => release);
}

const BODY_LIMIT = 56 * 1024; // oidc-provider's own limit

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > BODY_LIMIT) throw new Error('request entity too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function decodeBasicPart(text) {
  return decodeURIComponent(text.replace(/\+/g, '%20'));
}

// Which client authentication the request used: { method, clientId }.
function usedClientAuth(ctx, form) {
  const authorization = ctx.get('authorization');
  if (authorization) {
    const [scheme, value = ''] = authorization.split(' ');
    if (scheme.toLowerCase() === 'basic') {
      try {
        const decoded = Buffer.from(value, 'base64').toString('utf8');
        const i = decoded.indexOf(':');
        return {
          method: 'client_secret_basic',
          clientId: i === -1 ? undefined : decodeBasicPart(decoded.slice(0, i)),
        };
      } catch {
        return { method: 'client_secret_basic', clientId: undefined };
      }
    }
    return { method: 'other', clientId: form.get('client_id') ?? undefined };
  }
  if (form.has('client_assertion')) return { method: 'jwt', clientId: form.get('client_id') ?? undefined };
  if (form.has('client_secret')) return { method: 'client_secret_post', clientId: form.get('client_id') ?? undefined };
  return { method: 'none', clientId: form.get('client_id') ?? undefined };
}

function installMiddleware(provider, tokenPath, revocationPath, introspectionPath) {
  provider.on('grant.error', (ctx, err) => {
    ctx.state.grantError = err;
  });

  provider.use(async (ctx, next) => {
    if (TEST_GRANTS && ctx.path === '/__test/stats' && ctx.method === 'GET') {
      ctx.body = stats;
      return;
    }
    if (TEST_GRANTS && ctx.path === '/__test/reset' && ctx.method === 'POST') {
      stats = freshStats();
      ctx.body = stats;
      return;
    }

    const isToken = ctx.path === tokenPath && ctx.method === 'POST';
    const isRevocation = ctx.path === revocationPath && ctx.method === 'POST';
    const isIntrospection = ctx.path === introspectionPath && ctx.method === 'POST';
    if (!isToken && !isRevocation && !isIntrospection) {
      await next();
      return;
    }

    const started = Date.now();
    // Read the form here (oidc-provider then uses ctx.req.body, see its selective_body.js)
    // so the log, the counters and the client authentication check see it too.
    let form = new URLSearchParams();
    if (ctx.is('application/x-www-form-urlencoded')) {
      let raw;
      try {
        raw = await readBody(ctx.req);
      } catch (err) {
        ctx.status = 400;
        ctx.body = { error: 'invalid_request', error_description: 'failed to read the request body' };
        console.log(`${isToken ? 'token' : 'other'} status=400 result=error error=invalid_request detail=${logValue(err.message)}`);
        return;
      }
      form = new URLSearchParams(raw);
      ctx.req.body = raw === '' ? {} : raw;
    }
    const auth = usedClientAuth(ctx, form);
    const registered = clients.find((c) => c.client_id === auth.clientId)?.token_endpoint_auth_method;

    // One token/revocation request at a time: oidc-provider checks `consumed` and then
    // consumes a refresh token with awaits in between, so two parallel uses of one refresh
    // token could in principle both pass. Serialized, the second one is always seen as a
    // reuse (and revokes the grant), as a strict production IdP would do.
    const release = await acquireTokenLock();
    let strictRejected = false;
    try {
      // oidc-provider treats client_secret_basic and client_secret_post as interchangeable;
      // this IdP holds each client to its registered method (STRICT_CLIENT_AUTH=0: off).
      if (STRICT_CLIENT_AUTH && registered && auth.method !== registered
          && ['client_secret_basic', 'client_secret_post', 'none'].includes(auth.method)) {
        strictRejected = true;
        ctx.status = 401;
        if (auth.method === 'client_secret_basic') ctx.set('WWW-Authenticate', 'Basic realm="test-idp"');
        ctx.body = {
          error: 'invalid_client',
          error_description: `client ${auth.clientId} must authenticate with ${registered}, not ${auth.method}`,
        };
      } else {
        await next();
      }
    } finally {
      release();
      const status = ctx.status;
      const body = typeof ctx.body === 'object' && ctx.body !== null && !Buffer.isBuffer(ctx.body)
        ? ctx.body : {};
      const ok = status >= 200 && status < 300;
      const err = ctx.state.grantError;
      const errorCode = ok ? undefined : (body.error || err?.error || 'unknown');
      const detail = ok ? undefined
        : (strictRejected ? 'client authentication method mismatch' : (err?.error_detail || body.error_description));
      const clientId = ctx.oidc?.client?.clientId ?? auth.clientId;
      const ms = Date.now() - started;
      const common = `client_id=${logValue(clientId)} auth=${auth.method} status=${status} `
        + `result=${ok ? 'ok' : 'error'}`;

      if (isRevocation || isIntrospection) {
        if (isRevocation) stats.revocation_requests += 1;
        console.log(`${isRevocation ? 'revocation' : 'introspection'} ${common} `
          + `hint=${logValue(form.get('token_type_hint'))}`
          + `${ok ? '' : ` error=${logValue(errorCode)}`} ms=${ms}`);
      } else {
        const gty = form.get('grant_type') || 'unknown';
        stats.token_requests += 1;
        const perType = (stats.by_grant_type[gty] ??= { requests: 0, ok: 0, errors: 0 });
        perType.requests += 1;
        if (ok) perType.ok += 1; else perType.errors += 1;
        if (!ok) {
          stats.token_errors += 1;
          const key = detail ? `${errorCode}: ${detail}` : errorCode;
          stats.errors[key] = (stats.errors[key] ?? 0) + 1;
        }
        if (gty === 'refresh_token') {
          stats.refresh_requests += 1;
          if (ok) stats.refresh_ok += 1; else stats.refresh_errors += 1;
        }
        if (gty === TEST_GRANT) stats.mint_requests += 1;
        let extra = '';
        if (!ok) {
          extra = ` error=${logValue(errorCode)} detail=${logValue(detail)}`;
        } else if (gty === 'refresh_token') {
          const rotated = Boolean(body.refresh_token) && body.refresh_token !== form.get('refresh_token');
          extra = ` rotated=${rotated}`;
        } else {
          extra = ` refresh_token_issued=${Boolean(body.refresh_token)}`;
        }
        console.log(`token grant_type=${logValue(gty)} ${common}${extra} ms=${ms}`);
      }
    }
  });
}

// ------------------------------------------------------------------------------------------
// Start
// ------------------------------------------------------------------------------------------

let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = http.createServer((req, res) => handler(req, res));
// Longer than any idle gap in the tests: a client that reuses a connection the server has just
// closed gets a reset (Node's default is 5 s; tests wait past 5 s for tokens to expire).
server.keepAliveTimeout = 65000;
server.headersTimeout = 66000;

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const issuer = settings.ISSUER || `http://${HOST}:${port}`;
  const provider = new Provider(issuer, configuration());
  if (TEST_GRANTS) registerTestGrant(provider);
  const tokenPath = new URL(provider.urlFor('token')).pathname;
  const revocationPath = new URL(provider.urlFor('revocation')).pathname;
  const introspectionPath = new URL(provider.urlFor('introspection')).pathname;
  installMiddleware(provider, tokenPath, revocationPath, introspectionPath);
  provider.on('server_error', (_ctx, err) => {
    console.log(`server_error ${logValue(err?.message)}`);
  });
  handler = provider.callback();
  console.log(`IDP_READY ${JSON.stringify({
    issuer,
    port,
    audience: AUDIENCE,
    resource: RESOURCE,
    access_token_ttl: ACCESS_TOKEN_TTL,
    access_token_alg: ACCESS_TOKEN_ALG,
    test_grants: TEST_GRANTS,
    strict_client_auth: STRICT_CLIENT_AUTH,
    clients: clients.map((c) => ({ client_id: c.client_id, auth: c.token_endpoint_auth_method })),
    redirect_uris: REDIRECT_URIS,
  })}`);
});

function shutdown() {
  server.close();
  server.closeAllConnections?.();
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);
