'use client';

import { useEffect, useState } from 'react';
import { userinfo, type UserInfo } from '@/lib/relay';

/** Who is logged in, from the relay's userinfo path (the session's ID-token claims). */
export default function SessionBadge() {
  const [state, setState] = useState<{ user: UserInfo | null; error?: string } | null>(null);
  useEffect(() => {
    userinfo().then((user) => setState({ user }), (e: Error) => setState({ user: null, error: e.message }));
  }, []);
  if (state === null) return <p id="session-state" className="muted">Checking the session…</p>;
  if (state.error) return <p id="session-state">Session unknown ({state.error}).</p>;
  if (state.user === null) return <p id="session-state">Not logged in.</p>;
  const { name, email, sub } = state.user;
  return (
    <p id="session-state">
      Logged in as <strong id="session-name">{name ?? sub}</strong>
      {email ? <> (<span id="session-email">{email}</span>)</> : null}.
    </p>
  );
}
