#!/usr/bin/env node
// The browser end-to-end test of edge-token-relay: Debian's headless Chromium (/usr/bin/chromium)
// driven by playwright-core, against the demo stack (tests/e2e/demo.py start_stack: the real
// OpenID provider, the demo gateway, Envoy with the filter).
//
//   node tests/browser/run.mjs <base url> <screenshot dir>
//
// <base url> is the app (Envoy), e.g. http://127.0.0.1:8080; the rest (IdP, attacker pages,
// cookie names, token lifetime) is read from <base url>/demo/config.json (served by the demo
// gateway). Screenshots of every step are written to <screenshot dir>. Progress goes to stderr;
// the last line of stdout is `BROWSER_RESULT {json}` with every check made. Exit code 0 when
// every check passed, 1 when one failed, 2 on a usage or set-up error.
//
// Environment: CHROMIUM (default /usr/bin/chromium), BROWSER_TEST_TIMEOUT_S (default 240).

import crypto from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_TIMEOUT_S = Number(process.env.BROWSER_TEST_TIMEOUT_S || 240);
const STEP_TIMEOUT_MS = 20_000;
// A compact JWS/JWT (three base64url parts, JSON header) and a compact JWE (five parts).
const JWT_RE = /eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/;
const JWE_RE = /eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}/;

// ---- command line ------------------------------------------------------------------------

const [baseArg, shotDirArg] = process.argv.slice(2);
if (!baseArg || !shotDirArg) {
  process.stderr.write('usage: node run.mjs <base url> <screenshot dir>\n');
  process.exit(2);
}
const APP = new URL(baseArg).origin;
const SHOTS = path.resolve(shotDirArg);
fs.mkdirSync(SHOTS, { recursive: true });

// ---- result bookkeeping ------------------------------------------------------------------

const started = Date.now();
const result = {
  ok: false,
  app: APP,
  chromium: null,
  steps: [],
  checks: [],
  failures: [],
  observations: {},
  screenshots: [],
  duration_s: null,
};
let currentStep = '(setup)';
let shotNo = 0;

function log(msg) {
  const t = ((Date.now() - started) / 1000).toFixed(1).padStart(6);
  process.stderr.write(`[browser ${t}s] ${msg}\n`);
}

/** Records a check; a failed one is reported at the end (the run goes on where it can). */
function check(ok, what, detail) {
  const entry = { step: currentStep, what, ok: Boolean(ok) };
  if (detail !== undefined) entry.detail = detail;
  result.checks.push(entry);
  if (!ok) {
    result.failures.push(`[${currentStep}] ${what}${detail !== undefined ? `: ${typeof detail === 'string' ? detail : JSON.stringify(detail)}` : ''}`);
    log(`FAIL ${what} ${detail !== undefined ? JSON.stringify(detail) : ''}`);
  }
  return Boolean(ok);
}

/** A check whose failure makes the rest of the step meaningless. */
function require_(ok, what, detail) {
  if (!check(ok, what, detail)) throw new StepAbort(what);
}

class StepAbort extends Error {}

function observe(key, value) {
  result.observations[key] = value;
}

let context = null;
let profile = null;

/** Closes the browser and removes its profile (bounded: never hangs the exit). */
async function cleanup() {
  const ctx = context;
  context = null;
  if (ctx) await Promise.race([ctx.close().catch(() => {}), sleep(10_000)]);
  if (profile) fs.rmSync(profile, { recursive: true, force: true });
  profile = null;
}

function finish(code) {
  result.duration_s = Number(((Date.now() - started) / 1000).toFixed(1));
  result.ok = code === 0 && result.failures.length === 0;
  process.stdout.write(`BROWSER_RESULT ${JSON.stringify(result)}\n`);
  process.exit(result.ok ? 0 : (code || 1));
}

// ---- small helpers -----------------------------------------------------------------------

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const nowS = () => Date.now() / 1000;

function safeName(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '');
}

async function shot(page, label) {
  if (!page || page.isClosed()) return;
  shotNo += 1;
  const file = path.join(SHOTS, `${String(shotNo).padStart(2, '0')}-${safeName(label)}.png`);
  try {
    await page.screenshot({ path: file, fullPage: true, timeout: 10_000 });
    result.screenshots.push(path.basename(file));
  } catch (e) {
    log(`screenshot ${label} failed: ${e.message}`);
  }
}

/** Parses a Set-Cookie line: {name, value, attrs: {lower-case name: value|''}}. */
function parseSetCookie(line) {
  const [pair, ...rest] = line.split(';');
  const i = pair.indexOf('=');
  const attrs = {};
  for (const a of rest) {
    const j = a.indexOf('=');
    const k = (j === -1 ? a : a.slice(0, j)).trim().toLowerCase();
    if (k) attrs[k] = j === -1 ? '' : a.slice(j + 1).trim();
  }
  return { name: pair.slice(0, i).trim(), value: pair.slice(i + 1).trim(), attrs };
}

async function setCookieLines(response) {
  try {
    return (await response.headersArray())
      .filter((h) => h.name.toLowerCase() === 'set-cookie')
      .flatMap((h) => h.value.split('\n'))
      .filter(Boolean);
  } catch {
    return [];
  }
}

function redactCookie(c) {
  return { name: c.name, domain: c.domain, path: c.path, httpOnly: c.httpOnly, secure: c.secure,
    sameSite: c.sameSite, expires: c.expires, value_len: c.value.length };
}

function sha8(text) {
  return crypto.createHash('sha256').update(text).digest('hex').slice(0, 8);
}

// ---- main --------------------------------------------------------------------------------

async function main() {
  const watchdog = setTimeout(() => {
    check(false, `the whole run took longer than ${TOTAL_TIMEOUT_S}s`);
    cleanup().finally(() => finish(1));
  }, TOTAL_TIMEOUT_S * 1000);
  watchdog.unref();

  // The stack's facts (from the demo gateway, through the relay: an unprotected path).
  const cfgResp = await fetch(`${APP}/demo/config.json`);
  if (cfgResp.status !== 200) {
    check(false, 'GET /demo/config.json', `${cfgResp.status} ${await cfgResp.text()}`);
    throw new StepAbort('no demo config');
  }
  const cfg = await cfgResp.json();
  const AT = cfg.cookies.access_token;
  const SESSION = cfg.cookies.session;
  const CSRF = cfg.cookies.csrf;
  const APP_HOST = new URL(APP).hostname;
  const IDP = cfg.idp_origin;
  const LOGIN = cfg.demo_login || 'alice';
  const PASSWORD = cfg.demo_password || 'any-password';
  const TTL = Number(cfg.access_token_ttl);
  observe('config', { idp: IDP, ttl: TTL, refresh_margin_s: cfg.refresh_margin_s,
    evil_cross_site: cfg.evil_cross_site, evil_same_site: cfg.evil_same_site });

  const isRelayCookie = (c) => c.name === AT || c.name === SESSION || c.name === CSRF
    || c.name.startsWith(`${SESSION}.`) || c.name.startsWith('__Host-relay');
  const isFlowCookie = (c) => isRelayCookie(c) && c.name !== AT && c.name !== CSRF
    && c.name !== SESSION && !c.name.startsWith(`${SESSION}.`);

  // A fresh profile in a temp dir (persistent context = exactly this user-data-dir).
  profile = fs.mkdtempSync(path.join(os.tmpdir(), 'etr-browser-profile-'));
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true, // playwright adds --headless
    args: ['--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
    viewport: { width: 1100, height: 900 },
    timeout: 60_000,
  });
  result.chromium = context.browser()?.version() ?? null;
  context.setDefaultTimeout(STEP_TIMEOUT_MS);
  context.setDefaultNavigationTimeout(STEP_TIMEOUT_MS);
  log(`chromium ${result.chromium ?? '?'} (profile ${profile})`);

  // Every response any page of the context receives, with its body (read at once: a body is
  // gone after the next navigation), to prove later that no token ever reached a body.
  const responses = [];
  context.on('response', (resp) => {
    const req = resp.request();
    const status = resp.status();
    const entry = { url: resp.url(), status, method: req.method(), type: req.resourceType(),
      body: null, bodyPromise: null };
    entry.bodyPromise = (status >= 300 && status < 400) ? Promise.resolve('')
      : resp.text().then((t) => { entry.body = t; return t; }, () => null);
    responses.push(entry);
  });

  // Every relay cookie value the browser ever held (for the exact-match body scan).
  const relayValues = new Set();
  async function relayCookies() {
    const all = await context.cookies();
    const mine = all.filter((c) => c.domain === APP_HOST && isRelayCookie(c));
    for (const c of mine) if (c.value.length >= 16) relayValues.add(c.value);
    return mine;
  }
  function cookieByName(list, name) {
    return list.find((c) => c.name === name);
  }
  function checkTokenCookieAttrs(c, label) {
    check(c.httpOnly === true, `${label} ${c.name} is HttpOnly`, redactCookie(c));
    check(c.secure === true, `${label} ${c.name} is Secure`, redactCookie(c));
    check(c.sameSite === 'Strict', `${label} ${c.name} is SameSite=Strict`, redactCookie(c));
    check(c.path === '/', `${label} ${c.name} has Path=/`, redactCookie(c));
    check(c.domain === APP_HOST, `${label} ${c.name} is host-only on ${APP_HOST}`, redactCookie(c));
  }
  function checkRelayCookieAttrs(list, label) {
    for (const c of list) {
      if (c.name === CSRF) {
        // The double-submit cookie is readable by design; it must not be a token.
        check(c.secure && c.sameSite === 'Strict', `${label} ${c.name} (CSRF) is Secure, SameSite=Strict`, redactCookie(c));
        check(!JWT_RE.test(c.value) && !JWE_RE.test(c.value), `${label} ${c.name} (CSRF) is not a token`);
      } else if (isFlowCookie(c)) {
        check(c.httpOnly && c.secure && c.sameSite === 'Lax' && c.path === '/',
          `${label} flow cookie ${c.name} is HttpOnly, Secure, SameSite=Lax, Path=/`, redactCookie(c));
      } else {
        checkTokenCookieAttrs(c, label);
      }
    }
  }

  // What JavaScript on the app's page can see: document.cookie.
  async function checkDocumentCookie(page, label) {
    const dc = await page.evaluate(() => document.cookie);
    const held = await relayCookies();
    const names = dc.split(';').map((p) => p.trim().split('=')[0]).filter(Boolean);
    check(!names.includes(AT) && !names.some((n) => n === SESSION || n.startsWith(`${SESSION}.`)),
      `${label}: document.cookie has no ${AT} / ${SESSION}`, { names });
    check(!JWT_RE.test(dc) && !JWE_RE.test(dc), `${label}: document.cookie holds nothing JWT/JWE-shaped`, { names });
    const leaked = held.filter((c) => c.name !== CSRF && c.value.length >= 8 && dc.includes(c.value));
    check(leaked.length === 0, `${label}: no relay cookie value readable in document.cookie`, leaked.map((c) => c.name));
    return dc;
  }

  // fetch() from the page's own context, as the app's JavaScript does.
  async function apiFetch(page, url = '/api/me', init = {}) {
    return page.evaluate(async ([u, i]) => {
      const r = await fetch(u, { credentials: 'same-origin', headers: { accept: 'application/json' }, ...i });
      const text = await r.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* not JSON */ }
      return { status: r.status, redirected: r.redirected, url: r.url, type: r.type, json, text,
        contentType: r.headers.get('content-type') };
    }, [url, init]);
  }

  async function gatewayLog() {
    const r = await fetch(`${APP}/demo/gateway-log`);
    return (await r.json()).calls;
  }

  const page = context.pages()[0] ?? await context.newPage();

  // The callback's answer is a page that navigates on at once (a meta-refresh hop page): its
  // body is gone before Playwright can read it. Pause it at the response stage (CDP Fetch, in
  // the browser's own network stack), read the body, and let the response go on unmodified.
  const pausedBodies = [];
  const cdp = await context.newCDPSession(page);
  cdp.on('Fetch.requestPaused', async (ev) => {
    const entry = { url: ev.request.url, status: ev.responseStatusCode, body: null };
    try {
      const b = await cdp.send('Fetch.getResponseBody', { requestId: ev.requestId });
      entry.body = b.base64Encoded ? Buffer.from(b.body, 'base64').toString('utf8') : b.body;
    } catch { /* a redirect has no body */ }
    pausedBodies.push(entry);
    await cdp.send('Fetch.continueRequest', { requestId: ev.requestId }).catch(() => {});
  });
  await cdp.send('Fetch.enable', { patterns: [{ urlPattern: `${APP}${cfg.paths.callback}*`, requestStage: 'Response' }] });

  let mainNavigations = 0;
  page.on('framenavigated', (f) => { if (f === page.mainFrame()) mainNavigations += 1; });

  async function step(name, fn) {
    currentStep = name;
    const t0 = Date.now();
    log(`step: ${name}`);
    let completed = true;
    const failuresBefore = result.failures.length;
    try {
      await fn();
    } catch (e) {
      completed = false;
      if (!(e instanceof StepAbort)) check(false, `step threw: ${e.message.split('\n')[0]}`, e.stack?.split('\n').slice(0, 6).join(' | '));
    }
    const ok = completed && result.failures.length === failuresBefore;
    result.steps.push({ name, ok, completed, seconds: Number(((Date.now() - t0) / 1000).toFixed(1)) });
    await shot(page, `${name}${ok ? '' : '-FAILED'}`);
    // Later steps build on this one only when it ran to its end (failed checks are recorded
    // and the run goes on, so one report lists every misbehaviour).
    return completed;
  }

  // ---- 1. the page, logged out ------------------------------------------------------------
  const pageOk = await step('demo page before login', async () => {
    const resp = await page.goto(`${APP}/`);
    require_(resp && resp.status() === 200, 'GET / answers 200', resp?.status());
    require_(await page.locator('#login').isVisible(), 'the page has a "Log in" button');
    const dc = await checkDocumentCookie(page, 'logged out');
    check(dc === '', 'document.cookie is empty before login', dc);
    const callsBefore = (await gatewayLog()).length;
    const r = await apiFetch(page);
    check(r.status === 401, 'fetch /api/me without a session answers 401', { status: r.status, body: r.text.slice(0, 300) });
    check(r.json && typeof r.json.error === 'string', '... with a JSON error body', r.text.slice(0, 300));
    check(!r.redirected, '... and is not redirected (fetch gets 401, not the login page)', r.url);
    const calls = await gatewayLog();
    check(calls.length === callsBefore, 'the refused call did not reach the gateway', calls.slice(0, calls.length - callsBefore));
  });
  if (!pageOk) throw new StepAbort('the demo page does not work: later steps skipped');

  // ---- 2. navigation to a protected path goes to the login --------------------------------
  await step('navigation to protected path redirects to login', async () => {
    const hops = [];
    const onResp = (r) => { if (r.request().isNavigationRequest() && r.frame() === page.mainFrame()) hops.push({ url: r.url(), status: r.status() }); };
    page.on('response', onResp);
    try {
      await page.goto(`${APP}/api/me?from=navigation`);
      await page.waitForURL((u) => u.origin === IDP);
    } finally {
      page.off('response', onResp);
    }
    observe('protected_navigation_hops', hops.map((h) => `${h.status} ${h.url.split('?')[0]}`));
    const first = hops[0];
    check(first && first.url.startsWith(`${APP}/api/me`) && [302, 303, 307].includes(first.status),
      'GET /api/me as a navigation answers a redirect', first);
    check(hops.some((h) => h.url.startsWith(`${APP}${cfg.paths.login}`)) || hops.some((h) => h.url.startsWith(cfg.authorization_endpoint)),
      'the redirect leads to the relay login / the IdP authorization endpoint', hops.map((h) => h.url.split('?')[0]));
    check(hops.some((h) => h.url.startsWith(cfg.authorization_endpoint)), 'the browser reached the IdP authorization endpoint', hops.map((h) => h.url.split('?')[0]));
    const flows = (await relayCookies()).filter(isFlowCookie);
    check(flows.length >= 1, 'a login flow cookie is set', (await relayCookies()).map(redactCookie));
    checkRelayCookieAttrs(flows, 'flow (navigation)');
    const cookies = await relayCookies();
    check(!cookieByName(cookies, AT) && !cookieByName(cookies, SESSION), 'no token cookie before login', cookies.map((c) => c.name));
  });

  // ---- 3. log in through the IdP's real pages ---------------------------------------------
  let authorize = null;
  const loginOk = await step('login through the IdP', async () => {
    await page.goto(`${APP}/`);
    const before = new Set((await relayCookies()).map((c) => c.name));
    const loginRespP = page.waitForResponse((r) => r.url().startsWith(`${APP}${cfg.paths.login}`));
    const authReqP = page.waitForRequest((r) => r.url().startsWith(cfg.authorization_endpoint) && r.isNavigationRequest());
    await page.click('#login');
    const loginResp = await loginRespP;
    const authReq = await authReqP;
    check([302, 303].includes(loginResp.status()), 'GET /auth/login answers 302', loginResp.status());
    const loc = (await loginResp.headerValue('location')) ?? '';
    check(loc.startsWith(cfg.authorization_endpoint), 'the login redirect goes to the IdP authorization endpoint', loc.split('?')[0]);
    check(((await loginResp.headerValue('cache-control')) ?? '').includes('no-store'), 'the login redirect is Cache-Control: no-store', await loginResp.headerValue('cache-control'));
    check((await loginResp.headerValue('referrer-policy')) === 'no-referrer', 'the login redirect is Referrer-Policy: no-referrer', await loginResp.headerValue('referrer-policy'));

    const q = new URL(authReq.url()).searchParams;
    authorize = Object.fromEntries(q.entries());
    observe('authorize_params', Object.fromEntries([...q.keys()].map((k) => [k, ['state', 'nonce', 'code_challenge'].includes(k) ? `<${q.get(k).length} chars>` : q.get(k)])));
    check(q.get('response_type') === 'code', 'response_type=code', q.get('response_type'));
    check(q.get('client_id') === 'relay-client', 'client_id=relay-client', q.get('client_id'));
    check(q.get('redirect_uri') === `${APP}${cfg.paths.callback}`, 'redirect_uri is the relay callback', q.get('redirect_uri'));
    const scopes = (q.get('scope') ?? '').split(' ');
    check(cfg.scopes.every((s) => scopes.includes(s)), `scope has ${cfg.scopes.join(' ')}`, q.get('scope'));
    check(q.get('code_challenge_method') === 'S256', 'PKCE code_challenge_method=S256', q.get('code_challenge_method'));
    check(/^[A-Za-z0-9_-]{43}$/.test(q.get('code_challenge') ?? ''), 'PKCE code_challenge is a base64url SHA-256', q.get('code_challenge')?.length);
    check((q.get('state') ?? '').length >= 16, 'state is present (>= 16 chars)', q.get('state')?.length);
    check((q.get('nonce') ?? '').length >= 16, 'nonce is present (>= 16 chars)', q.get('nonce')?.length);
    if (cfg.prompt) check(q.get('prompt') === cfg.prompt, `prompt=${cfg.prompt}`, q.get('prompt'));

    // The flow cookie of THIS login: SameSite=Lax (it must come back on the IdP's redirect).
    const flowLines = (await setCookieLines(loginResp)).map(parseSetCookie).filter((c) => !before.has(c.name) && c.name.startsWith('__Host-relay'));
    const after = await relayCookies();
    const newFlows = after.filter((c) => isFlowCookie(c) && !before.has(c.name));
    require_(newFlows.length === 1, 'the login sets one new flow cookie', after.map(redactCookie));
    checkRelayCookieAttrs(newFlows, 'flow');
    observe('flow_cookie', { ...redactCookie(newFlows[0]), name_ends_with_sha256_state: newFlows[0].name.endsWith(sha8(q.get('state') ?? '')) });
    if (flowLines.length) {
      const fl = flowLines[0];
      check('httponly' in fl.attrs && 'secure' in fl.attrs && (fl.attrs.samesite ?? '').toLowerCase() === 'lax',
        'the flow Set-Cookie line says HttpOnly; Secure; SameSite=Lax', { name: fl.name, attrs: fl.attrs });
      check(!('domain' in fl.attrs), 'the flow cookie has no Domain', fl.attrs);
    }
    const flowName = newFlows[0].name;

    // The IdP's dev login form (any login and password), then its consent page.
    await page.waitForURL((u) => u.origin === IDP);
    await page.locator('input[name="login"]').waitFor();
    await shot(page, 'idp login form');
    await page.fill('input[name="login"]', LOGIN);
    await page.fill('input[name="password"]', PASSWORD);
    const callbackP = page.waitForResponse((r) => r.url().startsWith(`${APP}${cfg.paths.callback}`), { timeout: 30_000 });
    await Promise.all([page.waitForNavigation(), page.click('button[type="submit"]')]);
    // Consent (oidc-provider asks for it with prompt=consent / offline_access).
    if (new URL(page.url()).origin === IDP) {
      await shot(page, 'idp consent');
      await page.click('button[type="submit"]');
    }
    const cb = await callbackP;
    observe('callback', { status: cb.status(), content_type: await cb.headerValue('content-type') });
    check([200, 302, 303].includes(cb.status()), 'the callback answers 302 (or a 200 same-site hop page)', cb.status());
    check(((await cb.headerValue('cache-control')) ?? '').includes('no-store'), 'the callback answer is Cache-Control: no-store', await cb.headerValue('cache-control'));
    check((await cb.headerValue('referrer-policy')) === 'no-referrer', 'the callback answer is Referrer-Policy: no-referrer (its URL carries the code)', await cb.headerValue('referrer-policy'));
    const cbLines = (await setCookieLines(cb)).map(parseSetCookie);
    observe('callback_set_cookie', cbLines.map((c) => ({ name: c.name, attrs: c.attrs, value_len: c.value.length })));
    for (const name of [AT, SESSION]) {
      const line = cbLines.find((c) => c.name === name);
      if (cbLines.length === 0) break; // headers not exposed: context.cookies() below decides
      if (check(line, `the callback sets ${name}`, cbLines.map((c) => c.name))) {
        check('httponly' in line.attrs && 'secure' in line.attrs && (line.attrs.samesite ?? '').toLowerCase() === 'strict' && line.attrs.path === '/' && !('domain' in line.attrs),
          `${name} Set-Cookie: HttpOnly; Secure; SameSite=Strict; Path=/; no Domain`, line.attrs);
      }
    }

    await page.waitForURL(`${APP}/`, { timeout: 30_000 });
    require_(page.url() === `${APP}/`, 'the browser is back on the app at return_to=/', page.url());
    await page.locator('#call-api').waitFor();
    const cookies = await relayCookies();
    observe('cookies_after_login', cookies.map(redactCookie));
    require_(cookieByName(cookies, AT), `the browser holds ${AT} after login`, cookies.map((c) => c.name));
    require_(cookieByName(cookies, SESSION) || cookies.some((c) => c.name.startsWith(`${SESSION}.`)), `the browser holds ${SESSION} after login`, cookies.map((c) => c.name));
    checkRelayCookieAttrs(cookies, 'after login');
    check(!cookieByName(cookies, flowName), 'the flow cookie of this login is cleared by the callback', cookies.map((c) => c.name));
    const at = cookieByName(cookies, AT);
    check(JWT_RE.test(at.value), `${AT} holds a JWT (the browser has it, JS does not)`);
    check(at.expires > nowS() && at.expires <= nowS() + TTL + 5, `${AT} expires with the token (Max-Age <= ${TTL} s)`, { expires_in: Math.round(at.expires - nowS()) });
    await checkDocumentCookie(page, 'after login');
  });
  if (!loginOk) throw new StepAbort('login did not complete: later steps skipped');

  // ---- 4. the API from the page --------------------------------------------------------------
  let first = null;
  await step('call the API from the page', async () => {
    const r = await apiFetch(page);
    require_(r.status === 200, 'fetch /api/me answers 200', { status: r.status, body: r.text.slice(0, 400) });
    first = r.json;
    check(first.sub === LOGIN, `the gateway saw sub=${LOGIN}`, first.sub);
    check(first.claims?.iss === cfg.issuer, 'the gateway saw the IdP issuer', first.claims?.iss);
    const aud = [].concat(first.claims?.aud ?? []);
    check(aud.includes(cfg.audience), `the gateway saw aud ${cfg.audience}`, first.claims?.aud);
    check(Array.isArray(first.relay_cookies_seen) && first.relay_cookies_seen.length === 0,
      'no relay cookie reached the gateway (stripped by the relay)', first.cookies_seen);
    observe('first_token', { iat: first.token.iat, exp: first.token.exp, fp: first.token.fingerprint, typ: first.token.typ });
    // The page's own button shows what the gateway saw.
    await page.click('#call-api');
    await page.waitForFunction(() => /^\d{3}/.test(document.getElementById('api-status').textContent));
    const shown = await page.textContent('#api-result');
    check((await page.textContent('#api-status')).startsWith('200'), 'the "Call the API" button shows 200', await page.textContent('#api-status'));
    check(shown.includes(`"sub": "${LOGIN}"`), 'the page shows the sub the gateway saw', shown.slice(0, 200));
    await checkDocumentCookie(page, 'after API call');
  });

  // ---- 5. silent refresh, no navigation -------------------------------------------------------
  await step('silent refresh after the access token expired', async () => {
    require_(first, 'a first API answer to compare with');
    const before = await relayCookies();
    const oldAt = cookieByName(before, AT)?.value;
    const oldSession = cookieByName(before, SESSION)?.value;
    const url = page.url();
    const navs = mainNavigations;
    const waitUntil = first.token.exp + 1.5;
    log(`waiting ${Math.max(0, waitUntil - nowS()).toFixed(1)} s for the access token to expire`);
    while (nowS() < waitUntil) await sleep(250);
    const expired = await relayCookies();
    observe('at_cookie_after_expiry', cookieByName(expired, AT) ? redactCookie(cookieByName(expired, AT)) : 'gone (Max-Age reached)');

    const r = await apiFetch(page);
    require_(r.status === 200, 'fetch /api/me after expiry answers 200 (refreshed silently)', { status: r.status, body: r.text.slice(0, 400) });
    const second = r.json;
    observe('refreshed_token', { iat: second.token.iat, exp: second.token.exp, fp: second.token.fingerprint });
    check(second.sub === LOGIN, 'the refreshed token is still for the same user', second.sub);
    check(second.token.iat > first.token.iat, 'the gateway saw a new token iat', { before: first.token.iat, after: second.token.iat });
    check(second.token.fingerprint !== first.token.fingerprint, 'the gateway saw a different token', { before: first.token.fingerprint, after: second.token.fingerprint });
    check(second.token.exp > nowS(), 'the new token is valid now', second.token.exp);
    check(page.url() === url, 'the page URL did not change', { before: url, after: page.url() });
    check(mainNavigations === navs, 'no navigation happened during the refresh', { navigations: mainNavigations - navs });
    const after = await relayCookies();
    const newAt = cookieByName(after, AT);
    check(newAt && newAt.value !== oldAt, `${AT} was replaced by the refresh`, after.map((c) => c.name));
    const newSession = cookieByName(after, SESSION);
    check(newSession && newSession.value !== oldSession, `${SESSION} was resealed (the IdP rotated the refresh token)`, after.map((c) => c.name));
    checkRelayCookieAttrs(after, 'after refresh');
    await checkDocumentCookie(page, 'after refresh');
    await page.click('#call-api');
    await page.waitForFunction((fp) => document.getElementById('api-result').textContent.includes(fp), second.token.fingerprint);
  });

  // ---- 6. forged cross-origin POSTs ------------------------------------------------------------
  async function forged(label, evilUrl, targetPath = '/api/me') {
    const evil = await context.newPage();
    try {
      const respP = evil.waitForResponse((r) => r.url().startsWith(`${APP}${targetPath}`) && r.request().method() === 'POST');
      await evil.goto(evilUrl);
      const resp = await respP;
      const req = resp.request();
      const headers = await req.allHeaders();
      const sentCookies = (headers.cookie ?? '').split(';').map((p) => p.trim().split('=')[0]).filter(Boolean);
      let body = null;
      try { body = await resp.text(); } catch { /* gone */ }
      let json = null;
      try { json = JSON.parse(body); } catch { /* not JSON */ }
      const info = { status: resp.status(), error: json?.error, origin: headers.origin ?? null,
        sec_fetch_site: headers['sec-fetch-site'] ?? null, relay_cookies_sent: sentCookies.filter((n) => n.startsWith('__Host-relay')) };
      observe(`forged_${label}`, info);
      await evil.waitForTimeout(300);
      await shot(evil, `attacker page ${label}`);
      return { resp, info, json };
    } finally {
      await evil.close();
    }
  }

  await step('cross-site forged POST is refused', async () => {
    const postsBefore = (await gatewayLog()).filter((c) => c.method === 'POST').length;
    const { info, json } = await forged('cross_site', cfg.evil_cross_site);
    check(info.status !== 200, 'a cross-site form POST does not succeed', info);
    check([401, 403].includes(info.status), 'it is refused with 403 (CSRF) or 401 (no SameSite=Strict cookie sent)', info);
    check(json && ['csrf', 'missing_token', 'invalid_token'].includes(json.error), 'the refusal is the relay\'s JSON error', json);
    check(info.relay_cookies_sent.length === 0, 'the browser sent no SameSite=Strict relay cookie cross-site', info.relay_cookies_sent);
    const postsAfter = (await gatewayLog()).filter((c) => c.method === 'POST').length;
    check(postsAfter === postsBefore, 'nothing reached the gateway', { posts_before: postsBefore, posts_after: postsAfter });
  });

  await step('same-site other-origin forged POST is refused by CSRF', async () => {
    const postsBefore = (await gatewayLog()).filter((c) => c.method === 'POST').length;
    const { info, json } = await forged('same_site', cfg.evil_same_site);
    check(info.status !== 200, 'a same-site, cross-origin form POST does not succeed', info);
    check(info.status === 403 && json?.error === 'csrf', 'it is refused with 403 csrf (the Origin is not allowed)', info);
    observe('same_site_post_carried_cookies', info.relay_cookies_sent.length > 0);
    const postsAfter = (await gatewayLog()).filter((c) => c.method === 'POST').length;
    check(postsAfter === postsBefore, 'nothing reached the gateway', { posts_before: postsBefore, posts_after: postsAfter });
    // The victim's session is unharmed.
    const r = await apiFetch(page);
    check(r.status === 200, 'the user\'s own API call still works afterwards', { status: r.status, body: r.text.slice(0, 300) });
  });

  await step('same-site other-origin forged logout is refused by CSRF', async () => {
    const before = await relayCookies();
    const { info, json } = await forged('logout', `${cfg.evil_same_site}?target=logout`, cfg.paths.logout);
    check(info.status === 403 && json?.error === 'csrf', 'a forged POST /auth/logout is refused with 403 csrf', info);
    const after = await relayCookies();
    check(cookieByName(after, SESSION)?.value === cookieByName(before, SESSION)?.value,
      'the forged logout did not clear or change the session cookie', after.map(redactCookie));
    const r = await apiFetch(page);
    check(r.status === 200, 'the user is still logged in afterwards', { status: r.status, body: r.text.slice(0, 300) });
  });

  // ---- 7. logout ------------------------------------------------------------------------------
  await step('logout', async () => {
    const held = await relayCookies();
    const lastSession = cookieByName(held, SESSION)?.value;
    const logoutRespP = page.waitForResponse((r) => r.url().startsWith(`${APP}${cfg.paths.logout}`));
    await page.click('#logout');
    const lr = await logoutRespP;
    check(lr.request().method() === 'POST', 'the logout is a POST', lr.request().method());
    check([302, 303].includes(lr.status()), 'POST /auth/logout answers a redirect', { status: lr.status(), body: (await lr.text().catch(() => '')).slice(0, 300) });
    check(((await lr.headerValue('cache-control')) ?? '').includes('no-store'), 'the logout answer is Cache-Control: no-store', await lr.headerValue('cache-control'));
    check((await lr.headerValue('referrer-policy')) === 'no-referrer', 'the logout answer is Referrer-Policy: no-referrer', await lr.headerValue('referrer-policy'));
    const loc = (await lr.headerValue('location')) ?? '';
    check(loc.startsWith(cfg.end_session_endpoint), 'it redirects to the IdP end_session_endpoint', loc.split('?')[0]);
    const lq = new URL(loc || 'http://x/').searchParams;
    check(lq.get('post_logout_redirect_uri') === `${APP}/`, 'with post_logout_redirect_uri = the app', lq.get('post_logout_redirect_uri'));
    observe('end_session_params', [...lq.keys()]);
    const lines = (await setCookieLines(lr)).map(parseSetCookie);
    if (lines.length) {
      for (const name of [AT, SESSION]) {
        const line = lines.find((c) => c.name === name);
        check(line && (line.attrs['max-age'] === '0' || /1970/.test(line.attrs.expires ?? '')), `the logout clears ${name}`, lines.map((c) => `${c.name} ${JSON.stringify(c.attrs)}`));
      }
    }
    // The IdP's logout confirmation (oidc-provider), then back to the app.
    await page.waitForURL((u) => u.origin === IDP);
    await shot(page, 'idp logout confirmation');
    const yes = page.locator('button[name="logout"][value="yes"], button[value="yes"]').first();
    if (await yes.count()) {
      await yes.click();
    } else {
      await page.click('button[type="submit"]');
    }
    await page.waitForURL(`${APP}/`, { timeout: 30_000 });
    check(page.url() === `${APP}/`, 'the IdP sends the browser back to the app', page.url());
    const left = await relayCookies();
    check(left.length === 0, 'no relay cookie is left (tokens, session, flow cookies)', left.map(redactCookie));
    const r = await apiFetch(page);
    check(r.status === 401, 'the API answers 401 after logout', { status: r.status, body: r.text.slice(0, 300) });
    await checkDocumentCookie(page, 'after logout');

    // The refresh token was revoked at the IdP: the last session, replayed, no longer works.
    if (lastSession) {
      // (domain + path: Chromium's CDP refuses a Secure cookie given with an http:// url.)
      await context.addCookies([{ name: SESSION, value: lastSession, domain: APP_HOST, path: '/', httpOnly: true, secure: true, sameSite: 'Strict' }]);
      const replay = await apiFetch(page);
      observe('replayed_session', { status: replay.status, error: replay.json?.error, error_description: replay.json?.error_description });
      check(replay.status === 401, 'the pre-logout session cookie, replayed, is refused (refresh token revoked at logout)', { status: replay.status, body: replay.text.slice(0, 300) });
      const after = await relayCookies();
      check(!cookieByName(after, SESSION) && !cookieByName(after, AT), 'the refused session is cleared from the browser', after.map(redactCookie));
      await context.clearCookies({ name: SESSION }).catch(() => {});
    }
  });

  // ---- 8. no token in any body JavaScript could read ---------------------------------------
  currentStep = 'no token in any response body';
  await Promise.all(responses.map((r) => r.bodyPromise));
  const appBodies = responses.filter((r) => r.url.startsWith(`${APP}/`) || r.url === APP);
  for (const p of pausedBodies) {
    const seenEntry = appBodies.find((r) => r.url === p.url && r.body === null);
    if (seenEntry && p.body !== null) seenEntry.body = p.body;
  }
  observe('callback_bodies_captured', pausedBodies.map((p) => ({ status: p.status, bytes: p.body?.length ?? null })));
  const unreadable = appBodies.filter((r) => r.body === null && !(r.status >= 300 && r.status < 400));
  check(unreadable.length === 0, 'every app response body could be read for the scan',
    unreadable.map((r) => `${r.method} ${r.url.replace(APP, '').split('?')[0]} ${r.status}`));
  observe('responses', { total: responses.length, app_origin: appBodies.length, relay_values_tracked: relayValues.size,
    app_bodies_unreadable: unreadable.map((r) => `${r.method} ${r.url.replace(APP, '').split('?')[0]} ${r.status} (${r.type})`) });
  for (const r of appBodies) {
    if (r.body === null) continue;
    check(!JWT_RE.test(r.body) && !JWE_RE.test(r.body), `no JWT/JWE in the body of ${r.method} ${r.url.replace(APP, '')} (${r.status})`);
  }
  for (const r of responses) {
    if (!r.body) continue;
    const leaked = [...relayValues].some((v) => r.body.includes(v));
    if (leaked) check(false, `a relay cookie value appears in the body of ${r.method} ${r.url} (${r.status})`);
  }
  check(true, `scanned ${responses.filter((r) => r.body).length} response bodies`);
  result.steps.push({ name: currentStep, ok: !result.failures.some((f) => f.startsWith(`[${currentStep}]`)), seconds: 0 });

}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    check(false, `stopped by ${sig}`);
    cleanup().finally(() => finish(1));
  });
}

main().then(async () => {
  await cleanup();
  finish(0);
}, async (e) => {
  if (!(e instanceof StepAbort)) check(false, `unexpected error: ${e.message}`, e.stack?.split('\n').slice(0, 8).join(' | '));
  await cleanup();
  finish(1);
});
