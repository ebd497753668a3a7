'use client';

import { useCallback, useEffect, useRef, useState, type FormEvent } from 'react';
import { useRouter } from 'next/navigation';
import { apiFetch, apiJson, RelayError, userinfo, type UserInfo } from '@/lib/relay';
import type { Me, Notes } from '@/lib/gateway-types';

interface Seen {
  fingerprint: string;
  iat: number;
  exp: number;
}

function time(unixS: number): string {
  return new Date(unixS * 1000).toISOString().slice(11, 19) + 'Z';
}

/**
 * The browser side: fetch() to /api/* through the relay with the relay's cookies. Shows the
 * access token's iat/exp as the API saw them, so silent refreshes can be watched: the token
 * changes, the page never navigates. 401 → the login (with return_to); 503 → retried after
 * Retry-After.
 */
export default function ApiPanel() {
  const [status, setStatus] = useState('not called yet');
  const [me, setMe] = useState<Me | null>(null);
  const [seen, setSeen] = useState<Seen[]>([]);
  const [user, setUser] = useState<UserInfo | null | undefined>(undefined);
  const [retry, setRetry] = useState('');
  const [notes, setNotes] = useState<string>('');
  const [auto, setAuto] = useState(false);
  const busy = useRef(0);
  const router = useRouter();

  const remember = useCallback((m: Me) => {
    setMe(m);
    setSeen((list) => (list.some((s) => s.fingerprint === m.token.fingerprint)
      ? list
      : [...list, { fingerprint: m.token.fingerprint, iat: m.token.iat, exp: m.token.exp }]));
  }, []);

  const onRetry = useCallback((attempt: number, waitS: number, e: RelayError) => {
    setRetry(`${e.status} ${e.body?.error ?? ''}: retry ${attempt} in ${waitS} s`);
  }, []);

  const callOnce = useCallback(async () => {
    busy.current += 1;
    setStatus('calling…');
    try {
      const res = await apiFetch('/api/me', { onRetry });
      if (res.ok) {
        remember((await res.json()) as Me);
        setRetry((r) => (r ? `${r} → recovered` : r));
        setStatus('200');
      } else {
        // 401 is on its way to the login already (apiFetch); show what the relay said.
        const body = (await res.json().catch(() => null)) as { error?: string } | null;
        setStatus(`${res.status} ${body?.error ?? ''}`.trim());
      }
    } catch (e) {
      setStatus(`failed: ${(e as Error).message}`);
    } finally {
      busy.current -= 1;
    }
  }, [onRetry, remember]);

  // What a page load does: several calls at once. The relay refreshes an expired token once
  // for all of them (single flight), and the IdP sees one refresh.
  const callParallel = useCallback(async () => {
    setStatus('calling in parallel…');
    const calls = [
      ...Array.from({ length: 5 }, () => apiFetch('/api/me', { onRetry })),
      apiFetch('/dashboard/notes', { onRetry }),
      fetch('/auth/userinfo', { credentials: 'include', cache: 'no-store', headers: { accept: 'application/json' } }),
    ];
    const results = await Promise.allSettled(calls);
    const statuses = results.map((r) => (r.status === 'fulfilled' ? r.value.status : 0));
    const first = results[0];
    if (first.status === 'fulfilled' && first.value.ok) remember((await first.value.json()) as Me);
    setStatus(`parallel: ${statuses.join(' ')}`);
  }, [onRetry, remember]);

  const loadNotes = useCallback(async () => {
    try {
      const n = await apiJson<Notes & { count: number; via: string }>('/dashboard/notes', { onRetry });
      setNotes(`${n.count} note(s) for ${n.sub}, via the route handler`);
    } catch (e) {
      setNotes(`failed: ${(e as Error).message}`);
    }
  }, [onRetry]);

  // An unsafe call from the browser: apiFetch adds X-CSRF-Token (double submit).
  const addNote = useCallback(async (e: FormEvent<HTMLFormElement>) => {
    e.preventDefault();
    const form = e.currentTarget;
    const text = String(new FormData(form).get('text') ?? '').trim();
    if (!text) return;
    try {
      await apiJson('/api/notes', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ text, via: 'client-fetch' }),
        onRetry,
      });
      form.reset();
      setNotes('note added from the browser');
      router.refresh(); // re-render the server component's list
    } catch (err) {
      setNotes(`failed: ${(err as Error).message}`);
    }
  }, [onRetry, router]);

  useEffect(() => {
    userinfo().then(setUser, () => setUser(null));
  }, []);

  useEffect(() => {
    if (!auto) return undefined;
    const t = setInterval(() => { if (busy.current === 0) void callOnce(); }, 5000);
    return () => clearInterval(t);
  }, [auto, callOnce]);

  return (
    <section id="api-panel">
      <h2>From the browser (client component)</h2>
      <p id="userinfo">
        {user === undefined ? 'Asking the relay who is logged in…'
          : user === null ? 'The relay\'s userinfo path did not answer with a user.'
            : <>The relay says: <strong id="userinfo-name">{user.name ?? user.sub}</strong>
              {user.email ? <> &lt;<span id="userinfo-email">{user.email}</span>&gt;</> : null}{' '}
              <span className="muted">(ID-token claims from <code>/auth/userinfo</code>)</span></>}
      </p>
      <div className="row">
        <button type="button" id="call-api" onClick={() => void callOnce()}>Call the API</button>
        <button type="button" id="call-parallel" onClick={() => void callParallel()}>7 calls at once</button>
        <button type="button" id="load-notes" onClick={() => void loadNotes()}>Notes via route handler</button>
        <label><input type="checkbox" id="auto" checked={auto} onChange={(e) => setAuto(e.target.checked)} /> every 5 s</label>
      </div>
      <p>Status: <code id="api-status">{status}</code> <span id="retry-status" className="muted">{retry}</span></p>
      {me ? (
        <p id="api-token">
          Token seen by the API: issued <code id="token-iat">{me.token.iat}</code> ({time(me.token.iat)}), expires{' '}
          <code id="token-exp">{me.token.exp}</code> ({time(me.token.exp)}), fingerprint{' '}
          <code id="token-fp">{me.token.fingerprint}</code>
        </p>
      ) : null}
      <ol id="token-history">
        {seen.map((s) => (
          <li key={s.fingerprint} data-fp={s.fingerprint} data-iat={s.iat} data-exp={s.exp}>
            <code>{s.fingerprint}</code> issued {time(s.iat)}, expires {time(s.exp)}
          </li>
        ))}
      </ol>
      <form onSubmit={(e) => void addNote(e)} id="client-form">
        <input type="text" name="text" placeholder="a note" required maxLength={200} />
        <button type="submit" id="add-note-client">Add (fetch from the browser)</button>
      </form>
      <p id="notes-count">{notes}</p>
    </section>
  );
}
