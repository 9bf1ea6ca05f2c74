//! The writers' side of a virtual host's topology: every binding, indexed
//! by source and by destination, and how edits reach the exchanges'
//! routing tables. Touched only under the virtual host's registry mutex.

use std::collections::{HashMap, HashSet};

use crate::exchange::headers::HeadersMatcher;
use crate::exchange::{BindingInfo, Dest, Exchange, Routes};
use crate::field::FieldTable;
use crate::queue::Queue;
use crate::sync::Arc;

/// Identity of a binding's destination, for the registry's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) enum DestId {
    Queue(u64),
    Exchange(u64),
}

impl Dest {
    pub(super) fn id(&self) -> DestId {
        match self {
            Dest::Queue(q) => DestId::Queue(q.id),
            Dest::Exchange(e) => DestId::Exchange(e.id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct BindingKey {
    pub(super) source: u64,
    pub(super) dest: DestId,
    pub(super) key: String,
}

/// All bindings from one source to one destination under one key; they
/// differ by arguments.
#[derive(Debug)]
pub(super) struct BindingEntry {
    pub(super) source: Arc<Exchange>,
    pub(super) dest: Dest,
    pub(super) key: String,
    pub(super) args: Vec<(FieldTable, Option<HeadersMatcher>)>,
}

impl BindingEntry {
    /// The binding with `arguments` (one of `args`), as it is listed.
    pub(super) fn info(&self, arguments: &FieldTable) -> BindingInfo {
        BindingInfo {
            source: self.source.name.to_string(),
            destination: match &self.dest {
                Dest::Queue(q) => q.name.to_string(),
                Dest::Exchange(e) => e.name.to_string(),
            },
            destination_is_exchange: matches!(self.dest, Dest::Exchange(_)),
            routing_key: self.key.clone(),
            arguments: arguments.clone(),
        }
    }
}

/// The writers' side of the topology: every binding, indexed by source and
/// by destination so that deleting a queue or exchange touches only its own
/// bindings. Only touched under the registry mutex.
#[derive(Debug, Default)]
pub(super) struct Registry {
    pub(super) bindings: HashMap<BindingKey, BindingEntry>,
    pub(super) by_source: HashMap<u64, HashSet<BindingKey>>,
    pub(super) by_dest: HashMap<DestId, HashSet<BindingKey>>,
    /// Bindings per source exchange id, counting argument variants (for
    /// `if_unused` and auto-delete).
    pub(super) binding_count: HashMap<u64, usize>,
    /// Exclusive queues by owning connection, deleted when it closes.
    pub(super) exclusive: HashMap<u64, Vec<Arc<Queue>>>,
}

impl Registry {
    /// The entry for `key`, created (and indexed) if new.
    pub(super) fn entry(
        &mut self,
        key: BindingKey,
        source: &Arc<Exchange>,
        dest: &Dest,
    ) -> &mut BindingEntry {
        if !self.bindings.contains_key(&key) {
            self.by_source.entry(key.source).or_default().insert(key.clone());
            self.by_dest.entry(key.dest).or_default().insert(key.clone());
        }
        self.bindings.entry(key.clone()).or_insert_with(|| BindingEntry {
            source: Arc::clone(source),
            dest: dest.clone(),
            key: key.key,
            args: Vec::new(),
        })
    }

    /// Removes the entry for `key` and its index records.
    pub(super) fn take(&mut self, key: &BindingKey) -> Option<BindingEntry> {
        let entry = self.bindings.remove(key)?;
        unindex(&mut self.by_source, key.source, key);
        unindex(&mut self.by_dest, key.dest, key);
        Some(entry)
    }

    /// Keys of every binding from source exchange `source`.
    pub(super) fn keys_from(&self, source: u64) -> impl Iterator<Item = &BindingKey> {
        self.by_source.get(&source).into_iter().flatten()
    }

    /// Keys of every binding to `dest`.
    pub(super) fn keys_to(&self, dest: DestId) -> impl Iterator<Item = &BindingKey> {
        self.by_dest.get(&dest).into_iter().flatten()
    }
}

/// Drops `key` from the index set under `id`, and the set once empty.
fn unindex<I: std::hash::Hash + Eq>(index: &mut HashMap<I, HashSet<BindingKey>>, id: I, key: &BindingKey) {
    if let Some(keys) = index.get_mut(&id) {
        keys.remove(key);
        if keys.is_empty() {
            index.remove(&id);
        }
    }
}

/// Routing changes to apply to one exchange's table in one swap.
pub(super) struct RouteEdit {
    pub(super) key: String,
    pub(super) matcher: Option<HeadersMatcher>,
    pub(super) dest: Dest,
    pub(super) add: bool,
}
/// Applies edits to an exchange's routing table and publishes the result.
pub(super) fn apply_edits(exchange: &Exchange, edits: impl IntoIterator<Item = RouteEdit>) {
    let mut routes = Routes::clone(&exchange.routes.load());
    for edit in edits {
        if edit.add {
            routes.add(&edit.key, edit.matcher, edit.dest);
        } else {
            routes.remove(&edit.key, edit.matcher.as_ref(), &edit.dest);
        }
    }
    exchange.routes.store(Arc::new(routes));
}
