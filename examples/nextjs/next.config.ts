import type { NextConfig } from 'next';

const config: NextConfig = {
  poweredByHeader: false,
  reactStrictMode: true,
  // `next dev` behind Envoy: the browser loads the dev server's assets from Envoy's origin.
  allowedDevOrigins: ['127.0.0.1', 'localhost'],
};

export default config;
