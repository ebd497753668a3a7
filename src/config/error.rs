//! The one error type of configuration: which field, and what is wrong with it.

use std::fmt;

/// A configuration problem: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub problem: String,
}

impl ConfigError {
    pub fn new(field: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            field: field.into(),
            problem: problem.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // One log line whatever the configuration holds: control characters are escaped.
        let field = one_line(&self.field);
        let problem = one_line(&self.problem);
        if field.is_empty() {
            write!(f, "invalid configuration: {problem}")
        } else {
            write!(f, "invalid configuration: field `{field}`: {problem}")
        }
    }
}

fn one_line(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect()
}

impl std::error::Error for ConfigError {}
