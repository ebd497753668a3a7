'use client';

import { useState } from 'react';
import { logout } from '@/lib/relay';

/** POSTs the relay's logout (JSON answer), then follows `redirect_to` (the IdP's logout). */
export default function LogoutButton() {
  const [error, setError] = useState<string | null>(null);
  return (
    <>
      <button type="button" id="logout" onClick={() => logout().catch((e: Error) => setError(e.message))}>
        Log out
      </button>
      {error ? <span id="logout-error">{error}</span> : null}
    </>
  );
}
