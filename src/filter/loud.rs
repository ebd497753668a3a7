//! Callouts that cannot even be dispatched (an unknown cluster, a bad authority) are a broken
//! deployment, not a bad moment: they are logged at error level, but at most once per
//! [`LOG_EVERY_S`] per callout kind per VM (each worker's, and the main thread's), with the
//! number of failures left unlogged in between, so a misspelled cluster is loud without a line
//! per request.

/// At most one line per this many seconds per kind.
pub(crate) const LOG_EVERY_S: u64 = 60;

/// A log line allowance: time is a parameter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct LogLimit {
    /// No line before this time (0: the first line is due).
    next_at: u64,
    /// Occurrences not logged since the last line.
    suppressed: u64,
}

impl LogLimit {
    /// Notes one occurrence at `now`: `Some(n)` when a line may be written (`n` occurrences
    /// went unlogged since the previous one), `None` when this one is suppressed.
    pub(crate) fn allow(&mut self, now: u64, every_s: u64) -> Option<u64> {
        if now < self.next_at {
            self.suppressed = self.suppressed.saturating_add(1);
            return None;
        }
        self.next_at = now.saturating_add(every_s);
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// The relay's own HTTP callouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Callout {
    Jwks,
    Refresh,
    CodeExchange,
    Revocation,
}

impl Callout {
    fn what(self) -> &'static str {
        match self {
            Callout::Jwks => "JWKS fetch",
            Callout::Refresh => "token refresh",
            Callout::CodeExchange => "login code exchange",
            Callout::Revocation => "logout token revocation",
        }
    }

    /// The configuration fields that name the callout's cluster and authority.
    fn fields(self) -> (&'static str, &'static str) {
        match self {
            Callout::Jwks => ("jwks.cluster", "jwks.authority"),
            _ => ("token_endpoint.cluster", "token_endpoint.authority"),
        }
    }
}

/// The line for a callout that could not be dispatched (`why`: the host's status name).
/// Names only configuration, never a token or secret.
pub(crate) fn dispatch_failed_line(
    kind: Callout,
    cluster: &str,
    why: &str,
    suppressed: u64,
) -> String {
    let (cluster_field, authority_field) = kind.fields();
    let mut line = format!(
        "edge-token-relay: {} cannot be dispatched to cluster {cluster:?} ({why}): check that \
         {cluster_field} names a cluster defined in Envoy's clusters and that {authority_field} \
         is a valid host name",
        kind.what()
    );
    if suppressed > 0 {
        line.push_str(&format!(
            "; {suppressed} more such failures since the last line (logged at most once per \
             {LOG_EVERY_S} s)"
        ));
    }
    line
}

/// One allowance per callout kind (per worker VM).
#[derive(Debug, Default)]
pub(crate) struct DispatchAlarms {
    jwks: LogLimit,
    refresh: LogLimit,
    code_exchange: LogLimit,
    revocation: LogLimit,
}

impl DispatchAlarms {
    fn limit(&mut self, kind: Callout) -> &mut LogLimit {
        match kind {
            Callout::Jwks => &mut self.jwks,
            Callout::Refresh => &mut self.refresh,
            Callout::CodeExchange => &mut self.code_exchange,
            Callout::Revocation => &mut self.revocation,
        }
    }

    /// A callout of `kind` to `cluster` could not be dispatched at `now`: logs at error level
    /// unless a line for this kind was written within [`LOG_EVERY_S`].
    pub(crate) fn failed(&mut self, kind: Callout, cluster: &str, why: &str, now: u64) {
        let limit = self.limit(kind);
        if let Some(suppressed) = limit.allow(now, LOG_EVERY_S) {
            log::error!("{}", dispatch_failed_line(kind, cluster, why, suppressed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_with_the_count_of_the_rest() {
        let mut l = LogLimit::default();
        assert_eq!(l.allow(1000, 60), Some(0));
        for t in 1000..1060 {
            assert_eq!(l.allow(t, 60), None, "{t}");
        }
        assert_eq!(l.allow(1060, 60), Some(60));
        assert_eq!(l.allow(1061, 60), None);
        // A quiet spell: the next failure is logged at once, with what was left over.
        assert_eq!(l.allow(5000, 60), Some(1));
        assert_eq!(l.allow(5000, 60), None);
        // Never a panic at the end of time.
        assert_eq!(l.allow(u64::MAX, 60), Some(1));
    }

    #[test]
    fn kinds_are_limited_separately_and_lines_name_the_fields() {
        let mut a = DispatchAlarms::default();
        a.failed(Callout::Jwks, "idp-jwks", "BadArgument", 10);
        a.failed(Callout::Jwks, "idp-jwks", "BadArgument", 11);
        a.failed(Callout::Refresh, "idp", "BadArgument", 11);
        let jwks = a.limit(Callout::Jwks).clone();
        let refresh = a.limit(Callout::Refresh).clone();
        assert_eq!((jwks.next_at, jwks.suppressed), (70, 1));
        assert_eq!((refresh.next_at, refresh.suppressed), (71, 0));

        let line = dispatch_failed_line(Callout::Jwks, "idp-jwk", "BadArgument", 0);
        assert!(
            line.contains("\"idp-jwk\"") && line.contains("jwks.cluster"),
            "{line}"
        );
        assert!(!line.contains("more such"));
        let line = dispatch_failed_line(Callout::CodeExchange, "idp", "BadArgument", 41);
        assert!(
            line.contains("token_endpoint.cluster") && line.contains("41 more"),
            "{line}"
        );
    }
}
