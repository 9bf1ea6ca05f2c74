//! Matching for headers exchanges: RabbitMQ's `x-match` rules, and the
//! routing table that finds the bindings a message can match without
//! testing every one.

use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;

use crate::field::{FieldTable, FieldValue};
use crate::hash::{FastImblMap, FastState};

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
                    // RabbitMQ shows a string as an Erlang binary: <<"some">>.
                    let shown = match value.as_str() {
                        Some(text) => format!("<<{text:?}>>"),
                        None => value.to_string(),
                    };
                    return Err(format!(
                        "Invalid x-match field value {shown}; expected all, any, all-with-x, or any-with-x"
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

impl HeadersMatcher {
    /// The `(key, value)` pairs under which the binding is filed in a
    /// [`HeadersTable`], as hashes: a message can only match it if it has
    /// one of them. `all` needs every argument, so one suffices (the first
    /// that can be hashed); `any` needs one of them, so each is an entry,
    /// and a single argument that cannot be hashed (void tests presence;
    /// floats, arrays, tables) sends the binding to the scan list. `None`:
    /// the binding must be tested against every message.
    fn anchors(&self, state: &FastState) -> Option<Vec<u64>> {
        let hashes = self.args.iter().map(|(key, value)| entry_hash(state, key, value));
        if self.any {
            hashes.collect::<Option<Vec<u64>>>().filter(|h| !h.is_empty())
        } else {
            hashes.flatten().next().map(|h| vec![h])
        }
    }
}

/// The hash of a header `key` holding `value`, if `value` can be hashed
/// consistently with AMQP equality.
fn entry_hash(state: &FastState, key: &str, value: &FieldValue) -> Option<u64> {
    let mut hasher = state.build_hasher();
    hasher.write(key.as_bytes());
    hasher.write_u8(0xFF); // Keeps ("ab", "c") apart from ("a", "bc").
    value.hash_amqp(&mut hasher).then(|| hasher.finish())
}

/// One binding of a headers exchange. A binding filed under several
/// entries is copied into each list (the matcher is small).
#[derive(Debug, Clone)]
struct Binding<D> {
    matcher: HeadersMatcher,
    dest: D,
}

/// The bindings of a headers exchange, indexed so that routing a message
/// tests only the bindings it can match: for each of the message's headers,
/// those filed under that key and value (see [`HeadersMatcher::anchors`]),
/// plus the few that must always be tested. A hash collision only adds a
/// candidate: every candidate is tested in full.
///
/// Persistent like the other routing tables: a binding change copies a
/// path, not the table.
///
/// The lists are plain shared slices of bindings, copied on change (they
/// are short).
///
/// The index sits behind a trait object ([`Shared`]): a `dyn … + Send +
/// Sync` is `Send` and `Sync` by declaration, so the compiler's auto-trait
/// check of a type holding a broker stops there instead of descending
/// through the persistent map into the destinations (queues, exchanges,
/// and their routing tables again), which overflowed its default recursion
/// limit in crates that use the broker.
#[derive(Debug, Clone)]
pub(crate) struct HeadersTable<D> {
    index: Arc<dyn Shared<D>>,
}

/// [`Index`] behind a trait object; see [`HeadersTable`].
trait Shared<D>: Send + Sync + std::fmt::Debug {
    fn index(&self) -> &Index<D>;
}

impl<D: Send + Sync + std::fmt::Debug> Shared<D> for Index<D> {
    fn index(&self) -> &Index<D> {
        self
    }
}

/// The index itself.
#[derive(Debug, Clone)]
struct Index<D> {
    state: FastState,
    by_entry: FastImblMap<u64, Bindings<D>>,
    scan: Bindings<D>,
}

/// A list of bindings, shared by snapshots of the table.
type Bindings<D> = Arc<[Binding<D>]>;

/// `list` with `binding` added.
fn with<D: Clone>(list: &[Binding<D>], binding: &Binding<D>) -> Bindings<D> {
    list.iter().chain([binding]).cloned().collect()
}

/// `list` without the first binding that `is_it`, or `None` if none is.
fn without<D: Clone>(list: &[Binding<D>], is_it: impl Fn(&Binding<D>) -> bool) -> Option<Bindings<D>> {
    let i = list.iter().position(is_it)?;
    Some(list.iter().take(i).chain(list.iter().skip(i + 1)).cloned().collect())
}

impl<D: Clone + PartialEq + Send + Sync + std::fmt::Debug + 'static> HeadersTable<D> {
    pub(crate) fn new() -> Self {
        let index =
            Index { state: FastState::default(), by_entry: FastImblMap::default(), scan: Arc::new([]) };
        HeadersTable { index: Arc::new(index) }
    }

    /// Adds one binding (the same pair may be added twice: each add needs
    /// its own remove).
    pub(crate) fn add(&mut self, matcher: HeadersMatcher, dest: D) {
        let mut index = self.index.index().clone();
        index.add(matcher, dest);
        self.index = Arc::new(index);
    }

    /// Removes one binding added with this matcher and destination.
    pub(crate) fn remove(&mut self, matcher: &HeadersMatcher, dest: &D) {
        let mut index = self.index.index().clone();
        index.remove(matcher, dest);
        self.index = Arc::new(index);
    }

    /// Calls `f` for the destination of every binding the message matches;
    /// an `any` binding matched through several headers is reported once
    /// per header (the caller deduplicates destinations).
    pub(crate) fn for_each_match(&self, headers: Option<&FieldTable>, f: impl FnMut(&D)) {
        self.index.index().for_each_match(headers, f);
    }
}

impl<D: Clone + PartialEq> Index<D> {
    fn add(&mut self, matcher: HeadersMatcher, dest: D) {
        let anchors = matcher.anchors(&self.state);
        let binding = Binding { matcher, dest };
        match anchors {
            None => self.scan = with(&self.scan, &binding),
            Some(anchors) => {
                for hash in anchors {
                    let list = with(self.by_entry.get(&hash).map_or(&[][..], |l| &l[..]), &binding);
                    self.by_entry.insert(hash, list);
                }
            }
        }
    }

    fn remove(&mut self, matcher: &HeadersMatcher, dest: &D) {
        let is_it = |b: &Binding<D>| b.matcher == *matcher && b.dest == *dest;
        match matcher.anchors(&self.state) {
            None => {
                if let Some(list) = without(&self.scan, is_it) {
                    self.scan = list;
                }
            }
            Some(anchors) => {
                for hash in anchors {
                    let Some(list) = self.by_entry.get(&hash).and_then(|l| without(l, is_it)) else {
                        continue;
                    };
                    if list.is_empty() {
                        self.by_entry.remove(&hash);
                    } else {
                        self.by_entry.insert(hash, list);
                    }
                }
            }
        }
    }

    fn for_each_match(&self, headers: Option<&FieldTable>, mut f: impl FnMut(&D)) {
        if let Some(table) = headers
            && !self.by_entry.is_empty()
        {
            for (key, value) in table.iter() {
                let Some(hash) = entry_hash(&self.state, key, value) else { continue };
                for binding in self.by_entry.get(&hash).into_iter().flat_map(|list| list.iter()) {
                    if binding.matcher.matches(headers) {
                        f(&binding.dest);
                    }
                }
            }
        }
        for binding in self.scan.iter() {
            if binding.matcher.matches(headers) {
                f(&binding.dest);
            }
        }
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
        assert!(err.contains(r#"Invalid x-match field value <<"some">>"#), "{err}");
        assert!(HeadersMatcher::parse(&FieldTable::from([("x-match", 1)])).is_err());
    }

    /// Routes through the table and through a plain scan of every binding,
    /// and compares (as sets: the table may report a destination twice).
    fn agree(bindings: &[(FieldTable, u32)], messages: &[Option<FieldTable>]) {
        let mut table = HeadersTable::new();
        for (args, dest) in bindings {
            table.add(matcher(args.clone()), *dest);
        }
        for headers in messages {
            let mut routed = Vec::new();
            table.for_each_match(headers.as_ref(), |d| routed.push(*d));
            routed.sort_unstable();
            routed.dedup();
            let mut scanned: Vec<u32> = bindings
                .iter()
                .filter(|(args, _)| matcher(args.clone()).matches(headers.as_ref()))
                .map(|(_, d)| *d)
                .collect();
            scanned.sort_unstable();
            scanned.dedup();
            assert_eq!(routed, scanned, "{headers:?}");
        }
    }

    #[test]
    fn the_table_routes_as_a_scan_of_every_binding_would() {
        let t = |pairs: &[(&str, FieldValue)]| pairs.iter().cloned().collect::<FieldTable>();
        let bindings = vec![
            (t(&[("a", 1.into())]), 1),
            (t(&[("x-match", "any".into()), ("a", 1.into()), ("b", "x".into())]), 2),
            (t(&[("a", FieldValue::I64(1)), ("b", "x".into())]), 3),
            (t(&[("x-match", "any".into()), ("a", FieldValue::Void), ("c", 2.into())]), 4),
            (t(&[("a", FieldValue::F64(1.5)), ("b", "x".into())]), 5),
            (t(&[("a", FieldValue::F64(1.5))]), 6),
            (t(&[]), 7),
            (t(&[("x-match", "any".into())]), 8),
            (t(&[("x-match", "all-with-x".into()), ("x-k", true.into())]), 9),
            (t(&[("b", FieldValue::Bytes(bytes::Bytes::from_static(b"x")))]), 10),
        ];
        let messages = vec![
            None,
            Some(t(&[])),
            Some(t(&[("a", FieldValue::U8(1))])),
            Some(t(&[("a", 1.into()), ("b", "x".into())])),
            Some(t(&[("a", "1".into()), ("b", "y".into())])),
            Some(t(&[("a", FieldValue::F64(1.5)), ("b", "x".into()), ("c", FieldValue::U64(2))])),
            Some(t(&[("x-k", true.into()), ("c", 3.into())])),
            Some(t(&[("ab", 1.into())])),
        ];
        agree(&bindings, &messages);
    }

    #[test]
    fn a_removed_binding_stops_matching_and_its_twin_stays() {
        let args = FieldTable::from([("x-match", FieldValue::from("any")), ("a", 1.into()), ("b", 2.into())]);
        let mut table = HeadersTable::new();
        table.add(matcher(args.clone()), 7);
        table.add(matcher(args.clone()), 7);
        let message = FieldTable::from([("a", 1), ("b", 2)]);
        let count = |table: &HeadersTable<u32>| {
            let mut n = 0;
            table.for_each_match(Some(&message), |_| n += 1);
            n
        };
        assert_eq!(count(&table), 4, "two bindings, each found through two headers");
        let snapshot = table.clone();
        table.remove(&matcher(args.clone()), &7);
        assert_eq!(count(&table), 2);
        table.remove(&matcher(args), &7);
        assert_eq!(count(&table), 0);
        let index = table.index.index();
        assert!(index.by_entry.is_empty() && index.scan.is_empty());
        assert_eq!(count(&snapshot), 4, "a snapshot is unaffected");
    }
}
