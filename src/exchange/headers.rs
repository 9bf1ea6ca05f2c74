//! Matching for headers exchanges: RabbitMQ's `x-match` rules.

use crate::field::{FieldTable, FieldValue};

/// One headers binding, compiled at bind time so that routing does not
/// re-read `x-match` or filter `x-` keys per message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HeadersMatcher {
    any: bool,
    /// The binding arguments that take part in matching, in key order.
    args: Vec<(String, FieldValue)>,
}

impl HeadersMatcher {
    /// Compiles binding arguments; an `x-match` other than `all`, `any`,
    /// `all-with-x` or `any-with-x` is refused, as RabbitMQ refuses it.
    pub(crate) fn parse(args: &FieldTable) -> Result<Self, String> {
        let mode = match args.get("x-match") {
            None => "all",
            Some(value) => match value.as_bytes().and_then(|b| std::str::from_utf8(b).ok()) {
                Some(mode @ ("all" | "any" | "all-with-x" | "any-with-x")) => mode,
                _ => {
                    return Err(format!(
                        "Invalid x-match field value {value}; expected all, any, all-with-x, or any-with-x"
                    ));
                }
            },
        };
        let with_x = mode.ends_with("-with-x");
        let args = args
            .iter()
            .filter(|(k, _)| *k != "x-match" && (with_x || !k.starts_with("x-")))
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect();
        Ok(HeadersMatcher { any: mode.starts_with("any"), args })
    }

    /// Whether a message with `headers` matches. `all` with no arguments left
    /// matches everything (even a message without headers); `any` with none
    /// matches nothing.
    pub(crate) fn matches(&self, headers: Option<&FieldTable>) -> bool {
        let one = |(key, want): &(String, FieldValue)| {
            headers
                .and_then(|h| h.get(key))
                .is_some_and(|have| matches!(want, FieldValue::Void) || have.amqp_eq(want))
        };
        if self.any { self.args.iter().any(one) } else { self.args.iter().all(one) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matcher(args: FieldTable) -> HeadersMatcher {
        HeadersMatcher::parse(&args).unwrap()
    }

    #[test]
    fn all_is_the_default_and_ignores_x_keys() {
        let m = matcher(FieldTable::from([("a", FieldValue::from(1)), ("x-b", 2.into())]));
        assert!(m.matches(Some(&FieldTable::from([("a", 1_i64)]))));
        assert!(!m.matches(Some(&FieldTable::from([("b", 1)]))));
    }

    #[test]
    fn empty_all_matches_everything_and_empty_any_nothing() {
        assert!(matcher(FieldTable::new()).matches(None));
        assert!(!matcher(FieldTable::from([("x-match", "any")])).matches(None));
    }

    #[test]
    fn with_x_forms_match_x_keys() {
        let m = matcher(FieldTable::from([("x-match", "any-with-x"), ("x-k", "v")]));
        assert!(m.matches(Some(&FieldTable::from([("x-k", "v")]))));
        let plain = matcher(FieldTable::from([("x-match", "any"), ("x-k", "v")]));
        assert!(!plain.matches(Some(&FieldTable::from([("x-k", "v")]))));
    }

    #[test]
    fn void_tests_presence() {
        let m = matcher(FieldTable::from([("k", FieldValue::Void)]));
        assert!(m.matches(Some(&FieldTable::from([("k", "anything")]))));
        assert!(!m.matches(Some(&FieldTable::from([("j", "anything")]))));
    }

    #[test]
    fn bad_x_match_is_refused() {
        let err = HeadersMatcher::parse(&FieldTable::from([("x-match", "some")])).unwrap_err();
        assert!(err.contains("Invalid x-match field value some"), "{err}");
        assert!(HeadersMatcher::parse(&FieldTable::from([("x-match", 1)])).is_err());
    }
}
