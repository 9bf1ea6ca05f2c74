//! Permission patterns: regular expressions over names, unanchored as in
//! RabbitMQ, compiled once with size limits so that a hostile pattern
//! costs a refusal, not memory or time (Rust's `regex` matches in linear
//! time: no pattern can stall a publish). The empty pattern matches only
//! the empty name — RabbitMQ's rule — which no resource has: it denies.
//! RabbitMQ's PCRE accepts a few constructs (look-around, back-references)
//! that `regex` does not: such a pattern is refused when set.

use regex::{Regex, RegexBuilder};

/// The longest permission pattern accepted, in bytes.
const MAX_PATTERN_LEN: usize = 4096;

/// A permission pattern that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid permission pattern '{pattern}': {reason}")]
pub struct InvalidPattern {
    /// The pattern (cut to 100 characters).
    pub pattern: String,
    /// Why.
    pub reason: String,
}

/// A compiled pattern, and its source for listing and export.
#[derive(Debug, Clone)]
pub(crate) struct Pattern {
    source: String,
    regex: Regex,
}

impl Pattern {
    /// Compiles `source` within the size limits.
    pub(crate) fn new(source: &str) -> Result<Pattern, InvalidPattern> {
        let invalid = |reason: String| InvalidPattern { pattern: source.chars().take(100).collect(), reason };
        if source.len() > MAX_PATTERN_LEN {
            return Err(invalid(format!("longer than {MAX_PATTERN_LEN} bytes")));
        }
        // RabbitMQ: an empty pattern is `^$`.
        let effective = if source.is_empty() { "^$" } else { source };
        let regex = RegexBuilder::new(effective)
            .size_limit(1 << 20)
            .dfa_size_limit(1 << 20)
            .nest_limit(64)
            .build()
            .map_err(|e| invalid(e.to_string()))?;
        Ok(Pattern { source: source.into(), regex })
    }

    /// `template` with `{username}` and `{vhost}` replaced by the values,
    /// regex-escaped (so a user named `a.*` matches only itself), compiled.
    pub(crate) fn expanded(template: &str, user: &str, vhost: &str) -> Result<Pattern, InvalidPattern> {
        let source =
            template.replace("{username}", &regex::escape(user)).replace("{vhost}", &regex::escape(vhost));
        let mut pattern = Pattern::new(&source)?;
        pattern.source = template.into();
        Ok(pattern)
    }

    /// Whether the pattern matches anywhere in `name`.
    pub(crate) fn matches(&self, name: &str) -> bool {
        self.regex.is_match(name)
    }

    /// The pattern as it was given (before expansion).
    pub(crate) fn source(&self) -> &str {
        &self.source
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_unanchored_and_empty_denies() {
        let p = Pattern::new("^orders").unwrap();
        assert!(p.matches("orders.eu"));
        assert!(!p.matches("my.orders"));
        assert!(Pattern::new("orders").unwrap().matches("my.orders.eu"), "unanchored");
        let empty = Pattern::new("").unwrap();
        assert!(!empty.matches("anything"));
    }

    #[test]
    fn bad_and_huge_patterns_are_refused_not_panics() {
        assert!(Pattern::new("(unclosed").is_err());
        assert!(Pattern::new("(?=lookahead)").is_err());
        assert!(Pattern::new(&"a".repeat(MAX_PATTERN_LEN + 1)).is_err());
        // Compiles to far more than the size limit.
        assert!(Pattern::new(r"\w{1000}\w{1000}\w{1000}").is_err());
        assert!(Pattern::new(&"(".repeat(200)).is_err());
    }

    #[test]
    fn expansion_escapes_the_values() {
        let p = Pattern::expanded("^{username}\\.", "a.*", "/").unwrap();
        assert!(p.matches("a.*.x"));
        assert!(!p.matches("ab.x"), "the user's name is literal");
        assert_eq!(p.source(), "^{username}\\.");
        let v = Pattern::expanded("^{vhost}-", "u", "t(1)").unwrap();
        assert!(v.matches("t(1)-x"));
    }
}
