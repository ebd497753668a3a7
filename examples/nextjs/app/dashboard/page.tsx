import Link from 'next/link';
import { headers } from 'next/headers';
import { relayServer } from '@/lib/relay';
import type { Me, Notes } from '@/lib/gateway-types';
import { addNote } from './actions';
import ApiPanel from '../components/ApiPanel';
import LogoutButton from '../components/LogoutButton';

// Under the relay's protected prefix `/dashboard`: a logged-out navigation never gets here (the
// relay redirects it to the login), and every request that does carries the relay's bearer.
// Server-rendered per request: headers() makes the page dynamic.

function time(unixS: number): string {
  return new Date(unixS * 1000).toISOString().slice(11, 19) + 'Z';
}

export default async function Dashboard() {
  const relay = relayServer(await headers());
  // Server to server: the API behind the relay, called directly with the injected bearer.
  const [me, notes] = await Promise.all([
    relay.gatewayJson<Me>('/api/me'),
    relay.gatewayJson<Notes>('/api/notes'),
  ]);

  return (
    <>
      <h1>Dashboard</h1>
      <section>
        <h2>Server-rendered (server component)</h2>
        <p>
          Logged in as <strong id="server-sub">{relay.sub}</strong>{' '}
          <span className="muted">(the relay&apos;s <code>x-user-sub</code> header)</span>.
        </p>
        <p id="server-gateway">
          The API saw <code>sub</code> <strong>{me.sub}</strong>, a token issued at {time(me.token.iat)} expiring at{' '}
          {time(me.token.exp)} (fingerprint <code>{me.token.fingerprint}</code>), and no relay cookie.
        </p>
      </section>

      <ApiPanel />

      <section>
        <h2>Change something through the API</h2>
        <ul id="notes">
          {notes.notes.map((n) => (
            <li key={n.id} data-via={n.via}>
              {n.text} <span className="muted">({n.via})</span>
            </li>
          ))}
        </ul>
        {/* A Server Action: Next.js posts it to this page; no CSRF header needed (see actions.ts). */}
        <form action={addNote} id="action-form">
          <input type="text" name="text" placeholder="a note" required maxLength={200} />
          <button type="submit" id="add-note-action">Add (Server Action)</button>
        </form>
        {/* A plain HTML form post to a route handler: works without JavaScript. */}
        <form method="post" action="/dashboard/notes" id="plain-form">
          <input type="text" name="text" placeholder="a note" required maxLength={200} />
          <button type="submit" id="add-note-form">Add (plain form post)</button>
        </form>
      </section>

      <section className="row">
        <Link href="/dashboard/profile" id="to-profile">Token claims (another protected page)</Link>
        <LogoutButton />
      </section>
    </>
  );
}
