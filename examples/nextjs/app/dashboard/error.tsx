'use client';

import { useEffect, useState } from 'react';
import { goToLogin, userinfo } from '@/lib/relay';

// A render or Server Action failure under /dashboard. When the session is over (the relay
// answered 401, which Next.js reports as an unexpected response), go to the login instead of
// showing a broken page.
export default function DashboardError({ reset }: { error: Error; reset: () => void }) {
  const [checked, setChecked] = useState(false);
  useEffect(() => {
    userinfo().then((user) => {
      if (user === null) goToLogin();
      else setChecked(true);
    }, () => setChecked(true));
  }, []);
  return (
    <section id="dashboard-error">
      <h2>Something went wrong</h2>
      {checked ? (
        <button type="button" onClick={reset}>Try again</button>
      ) : (
        <p className="muted">Checking the session…</p>
      )}
    </section>
  );
}
