//! The response side of a stream, generic over the host: the cookies a refresh issued for it,
//! tokens an upstream rotated itself, and the cache policy of a protected response.

use super::host::Host;
use super::vm::{Outcome, Vm};
use crate::http::{cache_policy, WireIter};
use crate::jwt::Verifier;
use crate::relay;

/// What the request side of a stream left for its response.
#[derive(Debug, Default)]
pub(crate) struct ResponseDue {
    /// The request was protected and forwarded: its response must stay out of shared caches.
    pub(crate) protected: bool,
    /// The request's Cookie header, kept only when an upstream may rotate tokens itself.
    pub(crate) cookie: Option<Vec<u8>>,
}

impl ResponseDue {
    /// What a request's outcome leaves for its response. Forwarded, or parked and resumed
    /// later: protected either way. `cookie` (the request's Cookie header, read only when
    /// `upstream_token_headers` is configured) is kept only for a protected request, the only
    /// kind whose session the relay owns.
    pub(crate) fn after(outcome: &Outcome, cookie: Option<Vec<u8>>) -> ResponseDue {
        let protected = matches!(outcome, Outcome::Continue | Outcome::Wait(_));
        ResponseDue {
            protected,
            cookie: cookie.filter(|_| protected),
        }
    }
}

impl<H: Host> Vm<H> {
    /// Carries out on the current response what `due` asks for (the host's current stream is
    /// `ctx`'s).
    pub(crate) fn on_response(&mut self, ctx: u32, due: ResponseDue) {
        let mut cookies = if self.response_cookies.is_empty() {
            Vec::new()
        } else {
            self.response_cookies.remove(&ctx).unwrap_or_default()
        };
        match due.cookie {
            Some(cookie) => cookies.extend(self.upstream_rotation(&cookie)),
            // Not a session the relay owns (a public path, an unprotected one, a refusal):
            // tokens an upstream sends there must not reach the browser's JavaScript.
            None => self.drop_rotated_headers(),
        }
        if !due.protected {
            return;
        }
        for c in &cookies {
            self.host.add_response_header("set-cookie", c);
        }
        // A protected response: shared caches and CDNs must not keep it; the browser's cache
        // may, unless it sets a cookie. One read of the header map (the cost of one header).
        let map = self.host.response_headers();
        cache_policy::protected_response_each(WireIter::new(&map), !cookies.is_empty(), |n, v| {
            self.host.set_response_header(n, Some(v));
        });
    }

    /// Removes the `upstream_token_headers` (when configured) from a response the relay does not
    /// turn into cookies.
    fn drop_rotated_headers(&self) {
        let Some(names) = self.config.upstream_token_headers() else {
            return;
        };
        for name in [&names.access_token, &names.refresh_token]
            .into_iter()
            .flatten()
        {
            self.host.set_response_header(name, None);
        }
    }

    /// Turns `upstream_token_headers` into cookies and removes those headers.
    fn upstream_rotation(&mut self, cookie: &[u8]) -> Vec<String> {
        let Some(names) = self.config.upstream_token_headers().cloned() else {
            return Vec::new();
        };
        let read = |name: &Option<String>| -> Option<String> {
            let name = name.as_deref()?;
            let value = self.host.response_header(name)?;
            self.host.set_response_header(name, None);
            String::from_utf8(value).ok()
        };
        let at = read(&names.access_token);
        let rt = read(&names.refresh_token);
        if at.is_none() && rt.is_none() {
            return Vec::new();
        }
        let Some(rand) = self.host.random() else {
            return Vec::new();
        };
        let cookie_header = std::str::from_utf8(cookie).unwrap_or("");
        let verifier = Verifier {
            keys: self.keys.as_deref(),
            cache: &mut self.cache,
        };
        relay::upstream_rotation(
            &self.config,
            verifier,
            cookie_header,
            at.as_deref(),
            rt.as_deref(),
            self.host.now_s(),
            &rand,
        )
    }
}
