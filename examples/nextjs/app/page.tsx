import Link from 'next/link';
import { loginUrl } from '@/lib/relay';
import SessionBadge from './components/SessionBadge';

// Public: not under the relay's protected_prefixes, so it is served to anyone, and the relay
// passes it through untouched. Static: no per-user data is rendered on the server here.
export default function Home() {
  return (
    <>
      <h1>edge-token-relay + Next.js</h1>
      <p>
        The relay (an Envoy filter) runs the login, keeps the tokens in HttpOnly cookies and hands
        them to the API as <code>Authorization: Bearer</code>. This app has no auth SDK and its
        JavaScript never sees a token.
      </p>
      <section>
        <h2>Session</h2>
        <SessionBadge />
        <p className="row">
          {/* A plain link: the login is a full navigation answered by the relay, not a page. */}
          <a className="button" id="login" href={loginUrl('/dashboard')}>Log in</a>
          <Link href="/dashboard" id="to-dashboard">Go to the dashboard</Link>
          <span className="muted">(protected: the relay sends you to the login first)</span>
        </p>
      </section>
    </>
  );
}
