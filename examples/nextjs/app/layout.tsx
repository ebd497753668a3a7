import type { Metadata } from 'next';
import Link from 'next/link';
import './globals.css';

export const metadata: Metadata = {
  title: 'edge-token-relay + Next.js',
  description: 'A Next.js app behind Envoy and edge-token-relay: no auth SDK, no token in the browser',
};

export default function RootLayout({ children }: { children: React.ReactNode }) {
  return (
    <html lang="en">
      <body>
        <header>
          <nav>
            <Link href="/" id="nav-home">Home</Link>
            <Link href="/dashboard" id="nav-dashboard">Dashboard</Link>
            <Link href="/dashboard/profile" id="nav-profile">Token claims</Link>
          </nav>
        </header>
        <main>{children}</main>
      </body>
    </html>
  );
}
