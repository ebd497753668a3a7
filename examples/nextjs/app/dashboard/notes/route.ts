import { relayServer } from '@/lib/relay';
import type { Notes } from '@/lib/gateway-types';

// Route handlers under the protected prefix: the relay verified the session and put the
// bearer on the request; the handler calls the API with it, server to server.

/** GET /dashboard/notes: the user's notes as JSON (a small backend-for-frontend call). */
export async function GET(request: Request) {
  const relay = relayServer(request.headers);
  const notes = await relay.gatewayJson<Notes>('/api/notes');
  return Response.json({ sub: notes.sub, count: notes.notes.length, notes: notes.notes, via: 'route-handler' },
    { headers: { 'cache-control': 'private, no-store' } });
}

/**
 * POST /dashboard/notes from a plain <form method="post"> (works without JavaScript): add the
 * note through the API, then 303 back to the dashboard (post/redirect/get).
 */
export async function POST(request: Request) {
  const relay = relayServer(request.headers);
  const form = await request.formData();
  const text = String(form.get('text') ?? '').trim();
  if (text) {
    const res = await relay.gatewayFetch('/api/notes', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ text, via: 'form-post' }),
    });
    if (!res.ok) return new Response(`the API refused the note: ${res.status}`, { status: 502 });
  }
  // A relative Location: the browser resolves it against the URL it used (Envoy's), whatever
  // host and scheme Next.js itself listens on.
  return new Response(null, { status: 303, headers: { location: '/dashboard?added=form' } });
}
