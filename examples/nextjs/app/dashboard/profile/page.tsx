import { headers } from 'next/headers';
import { relayServer } from '@/lib/relay';
import type { Me } from '@/lib/gateway-types';

// Another protected, server-rendered page: the access token's claims as the API saw them.
export default async function Profile() {
  const relay = relayServer(await headers());
  const me = await relay.gatewayJson<Me>('/api/me');
  return (
    <>
      <h1>Token claims</h1>
      <p>
        What the API verified for <strong id="profile-sub">{me.sub}</strong> (the token itself never
        leaves the server side):
      </p>
      <table id="claims">
        <tbody>
          {Object.entries(me.claims).map(([k, v]) => (
            <tr key={k}>
              <th>{k}</th>
              <td><code>{typeof v === 'string' ? v : JSON.stringify(v)}</code></td>
            </tr>
          ))}
        </tbody>
      </table>
    </>
  );
}
