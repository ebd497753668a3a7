'use server';

import { headers } from 'next/headers';
import { revalidatePath } from 'next/cache';
import { relayServer } from '@/lib/relay';

/**
 * A Server Action: the browser POSTs to /dashboard (a protected path) with Next's own fetch,
 * which cannot carry X-CSRF-Token; the relay lets it through by its Origin and
 * `Sec-Fetch-Site: same-origin` (csrf.same_origin_posts), verifies or refreshes the session
 * and hands the POST to Next.js with the bearer, which this action uses to call the API.
 */
export async function addNote(formData: FormData): Promise<void> {
  const text = String(formData.get('text') ?? '').trim();
  if (!text) return;
  const relay = relayServer(await headers());
  const res = await relay.gatewayFetch('/api/notes', {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ text, via: 'server-action' }),
  });
  if (!res.ok) throw new Error(`the API refused the note: ${res.status}`);
  revalidatePath('/dashboard');
}
