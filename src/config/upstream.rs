//! Where the filter reaches a service (the IdP's JWKS, its token endpoint) through an Envoy
//! cluster.

use super::error::ConfigError;

/// Where the filter reaches a service through an Envoy cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    pub cluster: String,
    pub authority: String,
    pub path: String,
}

/// Validates a `{cluster, authority, path}` section named `field`.
pub fn upstream(
    field: &str,
    cluster: Option<String>,
    authority: Option<String>,
    path: Option<String>,
) -> Result<Upstream, ConfigError> {
    let cluster = cluster
        .filter(|c| !c.is_empty())
        .ok_or_else(|| ConfigError::new(format!("{field}.cluster"), "is required"))?;
    let authority = authority
        .filter(|a| !a.is_empty())
        .ok_or_else(|| ConfigError::new(format!("{field}.authority"), "is required"))?;
    let path = path.ok_or_else(|| ConfigError::new(format!("{field}.path"), "is required"))?;
    if !path.starts_with('/') {
        return Err(ConfigError::new(
            format!("{field}.path"),
            "must start with '/'",
        ));
    }
    Ok(Upstream {
        cluster,
        authority,
        path,
    })
}
