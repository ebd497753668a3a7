// What the demo API gateway (demo/gateway.py) answers. It verifies the bearer itself and echoes
// the claims it saw (never the token: `fingerprint` is a short SHA-256 of it).

export interface TokenView {
  alg: string;
  typ?: string;
  kid: string;
  fingerprint: string;
  iat: number;
  exp: number;
  seconds_left: number;
}

export interface Me {
  sub: string;
  claims: Record<string, unknown>;
  token: TokenView;
  relay_cookies_seen: string[];
  server_time: number;
}

export interface Note {
  id: number;
  text: string;
  via: string;
  at: number;
}

export interface Notes {
  sub: string;
  notes: Note[];
}
