// Helpers for a Next.js app behind Envoy + edge-token-relay. Copy this file into your app.
//
// No auth SDK, and no `next/*` import: the same module serves client components (browser
// `fetch` with the relay's cookies) and server code (the bearer the relay injected into the
// request Next.js received). The browser never holds a token; neither does this file.
//
// Client side (client components, event handlers):
//   apiFetch('/api/orders', { method: 'POST', body })   credentials, X-CSRF-Token, 401 → login,
//                                                       503 → retry after Retry-After
//   apiJson<T>(path, init)                              the same, JSON body or a RelayError
//   userinfo()                                          who is logged in (relay's userinfo path)
//   logout()                                            POST the relay's logout, then go where it says
//   loginUrl(returnTo) / goToLogin(returnTo)
// Server side (server components, server actions, route handlers) under a protected prefix:
//   const relay = relayServer(await headers())          or relayServer(request.headers)
//   relay.sub, relay.gatewayJson<T>('/api/me'), relay.gatewayFetch(path, init)

// ---- what the relay is configured with (keep in step with its configuration) --------------

/** `login.login_path` */
export const LOGIN_PATH = '/auth/login';
/** `login.logout_path` */
export const LOGOUT_PATH = '/auth/logout';
/** `login.userinfo_path` */
export const USERINFO_PATH = '/auth/userinfo';
/** `cookies.csrf`: the one relay cookie JavaScript can read (with `csrf.double_submit`). */
export const CSRF_COOKIE = '__Host-relay-csrf';
/** A `forward_claims` header: the relay sets it from the verified token's `sub`. */
export const SUB_HEADER = 'x-user-sub';

// ---- the relay's error answers ------------------------------------------------------------

/**
 * Every answer the relay generates itself is JSON `{"error", "error_description"}` with
 * `Cache-Control: no-store` (README "What happens to a protected request"). The reason code
 * (`expired`, `session_revoked`, `csrf_origin_not_allowed`, ...) is only in Envoy's log.
 */
export type RelayErrorCode =
  | 'missing_token' // 401: no access-token cookie and no usable session (logged out)
  | 'invalid_token' // 401: the token or session failed (expired session, revoked, forged)
  | 'csrf' // 403: Origin / Sec-Fetch-Site / X-CSRF-Token check failed
  | 'temporarily_unavailable' // 503 + Retry-After: no signing keys yet, or the IdP is down
  | 'invalid_request' // 400: unreadable request (Cookie header not UTF-8), login callback errors
  | 'request_header_fields_too_large'; // 431: headers over the budget (`largest` names the culprit)

export interface RelayErrorBody {
  error: RelayErrorCode | (string & {});
  error_description?: string;
  /** 431 only: the largest header or cookie, and its size. */
  largest?: string;
  largest_bytes?: number;
}

export function isRelayErrorBody(value: unknown): value is RelayErrorBody {
  return typeof value === 'object' && value !== null && typeof (value as { error?: unknown }).error === 'string';
}

/** A non-2xx answer, from the relay (body is RelayErrorBody) or from the API behind it. */
export class RelayError extends Error {
  constructor(
    readonly status: number,
    readonly body: RelayErrorBody | null,
    readonly retryAfterS: number | null = null,
  ) {
    super(`${status} ${body?.error ?? 'error'}${body?.error_description ? `: ${body.error_description}` : ''}`);
    this.name = 'RelayError';
  }

  /** The session is over (or never was): log in again. */
  get needsLogin(): boolean {
    return this.status === 401;
  }
}

async function errorOf(res: Response): Promise<RelayError> {
  let body: RelayErrorBody | null = null;
  try {
    const parsed: unknown = await res.json();
    if (isRelayErrorBody(parsed)) body = parsed;
  } catch {
    /* not JSON */
  }
  return new RelayError(res.status, body, retryAfterSeconds(res.headers.get('retry-after')));
}

/** `Retry-After` as seconds (delta-seconds or an HTTP date), or null. */
export function retryAfterSeconds(value: string | null, now = Date.now()): number | null {
  if (value === null || value.trim() === '') return null;
  if (/^\d+$/.test(value.trim())) return Number(value.trim());
  const date = Date.parse(value);
  return Number.isNaN(date) ? null : Math.max(0, Math.ceil((date - now) / 1000));
}

// ---- login / return_to --------------------------------------------------------------------

/**
 * The relay's login URL. `returnTo` must be a same-origin path (the relay falls back to `/`
 * for anything else).
 */
export function loginUrl(returnTo = '/'): string {
  const path = returnTo.startsWith('/') && !returnTo.startsWith('//') ? returnTo : '/';
  return `${LOGIN_PATH}?return_to=${encodeURIComponent(path)}`;
}

/** Browser only: a full navigation to the login, back to `returnTo` (default: here). */
export function goToLogin(returnTo?: string): void {
  const here = `${window.location.pathname}${window.location.search}`;
  window.location.assign(loginUrl(returnTo ?? here));
}

// ---- client side --------------------------------------------------------------------------

// Every other method is CSRF-checked by the relay (TRACE included).
const SAFE_METHODS = new Set(['GET', 'HEAD', 'OPTIONS']);

/** Browser only: the double-submit token from the readable CSRF cookie ('' when absent). */
export function csrfToken(): string {
  const prefix = `${CSRF_COOKIE}=`;
  const entry = document.cookie.split('; ').find((c) => c.startsWith(prefix));
  return entry ? decodeURIComponent(entry.slice(prefix.length)) : '';
}

export interface ApiOptions extends RequestInit {
  /** On 401, navigate to the login (default true). False: just throw/return the 401. */
  loginOn401?: boolean;
  /** How many times a 503 is retried (default 3); each wait honours Retry-After. */
  retries?: number;
  /** Longest wait per retry, seconds (default 10). */
  maxRetryWaitS?: number;
  /** Told before each retry (e.g. to show "retrying in 2 s"). */
  onRetry?: (attempt: number, waitS: number, error: RelayError) => void;
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Browser `fetch` to a path behind the relay: sends the relay's cookies (`credentials:
 * 'include'`), `X-CSRF-Token` on unsafe methods, asks for JSON; retries 503 after
 * `Retry-After`; on 401 sends the browser to the login (unless `loginOn401: false`).
 * Returns the final Response (any status) so callers can look at it. A body to be retried
 * must be resendable (a string, FormData, Blob; not a stream).
 */
export async function apiFetch(path: string, options: ApiOptions = {}): Promise<Response> {
  const { loginOn401 = true, retries = 3, maxRetryWaitS = 10, onRetry, ...init } = options;
  const method = (init.method ?? 'GET').toUpperCase();
  const headers = new Headers(init.headers);
  if (!headers.has('accept')) headers.set('accept', 'application/json');
  if (!SAFE_METHODS.has(method)) headers.set('x-csrf-token', csrfToken());
  for (let attempt = 0; ; attempt += 1) {
    const res = await fetch(path, { ...init, method, headers, credentials: 'include', cache: 'no-store' });
    if (res.status === 503 && attempt < retries) {
      const error = await errorOf(res.clone());
      // The relay's own 503 (`temporarily_unavailable`: no keys yet, IdP down during a refresh)
      // means nothing reached the API, so even a POST is safe to send again; another 503 is
      // retried only for safe methods.
      if (error.body?.error !== 'temporarily_unavailable' && !SAFE_METHODS.has(method)) return res;
      const waitS = Math.min(maxRetryWaitS, error.retryAfterS ?? 1);
      onRetry?.(attempt + 1, waitS, error);
      await sleep(waitS * 1000);
      continue;
    }
    if (res.status === 401 && loginOn401) goToLogin();
    return res;
  }
}

/** `apiFetch` and its JSON body; a non-2xx answer is thrown as a RelayError. */
export async function apiJson<T>(path: string, options: ApiOptions = {}): Promise<T> {
  const res = await apiFetch(path, options);
  if (!res.ok) throw await errorOf(res);
  return (await res.json()) as T;
}

/** The claims of the session's ID token, as the relay's userinfo path answers them. */
export interface UserInfo {
  sub: string;
  name?: string;
  email?: string;
  [claim: string]: unknown;
}

/**
 * Who is logged in: the relay answers its userinfo path from the session's verified ID token
 * (never a token). null when logged out (401); any other answer is thrown as a RelayError.
 */
export async function userinfo(): Promise<UserInfo | null> {
  const res = await fetch(USERINFO_PATH, {
    credentials: 'include',
    cache: 'no-store',
    headers: { accept: 'application/json' },
  });
  if (res.status === 401) return null;
  if (res.status !== 200 || !(res.headers.get('content-type') ?? '').includes('json')) {
    throw await errorOf(res);
  }
  return (await res.json()) as UserInfo;
}

/**
 * Log out: POST the relay's logout path asking for JSON (the relay answers
 * `{"redirect_to": url}`: the IdP's logout page or `post_logout_redirect`), then go there.
 * The relay clears every relay cookie and revokes the refresh token.
 */
export async function logout(): Promise<void> {
  const res = await fetch(LOGOUT_PATH, {
    method: 'POST',
    credentials: 'include',
    cache: 'no-store',
    headers: { accept: 'application/json', 'x-csrf-token': csrfToken() },
  });
  if (!res.ok) throw await errorOf(res);
  const { redirect_to: redirectTo } = (await res.json()) as { redirect_to: string };
  window.location.assign(redirectTo);
}

// ---- server side --------------------------------------------------------------------------

/** What `headers()` (next/headers) and `Request.headers` both are. */
export interface HeaderSource {
  get(name: string): string | null;
}

/** Where server code reaches the API directly (not through Envoy): e.g. http://127.0.0.1:3001. */
export function gatewayUrl(): string {
  const url = process.env.GATEWAY_URL;
  if (!url) throw new Error('GATEWAY_URL is not set (the API the relay protects, reached directly)');
  return url.replace(/\/$/, '');
}

export interface RelayServer {
  /** The verified token's `sub` (the relay's `forward_claims` header). */
  sub: string | null;
  /** fetch to the API with the bearer, `cache: 'no-store'` (the answer belongs to one user). */
  gatewayFetch(path: string, init?: RequestInit): Promise<Response>;
  /** The same, JSON body, non-2xx thrown as RelayError (401: the token was refused). */
  gatewayJson<T>(path: string, init?: RequestInit): Promise<T>;
}

/**
 * Server code of a request that came through the relay on a PROTECTED path: the relay
 * verified (and if needed refreshed) the session, put `Authorization: Bearer <token>` on the
 * request and removed its cookies. Server code calls the API with that bearer directly.
 *
 * Only under `protected_prefixes`: on other paths the relay passes client headers through
 * untouched, so an `Authorization` or `x-user-sub` there is whatever the client sent (the
 * example's Envoy route removes both on unprotected paths). Throws when there is no bearer.
 */
export function relayServer(requestHeaders: HeaderSource): RelayServer {
  const authorization = requestHeaders.get('authorization');
  if (!authorization || !/^Bearer \S+$/.test(authorization)) {
    throw new Error('no bearer from the relay: is this path under protected_prefixes?');
  }
  const gatewayFetch = (path: string, init: RequestInit = {}) => {
    const headers = new Headers(init.headers);
    headers.set('authorization', authorization);
    if (!headers.has('accept')) headers.set('accept', 'application/json');
    return fetch(`${gatewayUrl()}${path}`, { ...init, headers, cache: 'no-store' });
  };
  // The bearer stays in this closure: never hand it to a client component (props end up in
  // the HTML and the RSC payload the browser reads).
  return {
    sub: requestHeaders.get(SUB_HEADER),
    gatewayFetch,
    async gatewayJson<T>(path: string, init: RequestInit = {}): Promise<T> {
      const res = await gatewayFetch(path, init);
      if (!res.ok) throw await errorOf(res);
      return (await res.json()) as T;
    },
  };
}
