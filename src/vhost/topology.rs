//! Declaring and deleting exchanges and queues, and binding them: the
//! writers of a virtual host's topology, serialised on its registry mutex.

use std::collections::HashMap;
use std::time::Instant;

use crate::MAX_NAME_LEN;
use crate::error::{BindError, ConsumeError, DeclareError, DeleteError};
use crate::exchange::{
    BindingInfo, Dest, Exchange, ExchangeKind, ExchangeOptions, Routes, compile_arguments,
};
use crate::field::FieldTable;
use crate::queue::{DeleteRefused, Queue, QueueContext, QueueOptions, QueueOwner, Side, inequivalent_phrase};
use crate::sync::{Arc, Weak};

use super::Vhost;
use super::registry::{BindingKey, DestId, Registry, RouteEdit, apply_edits};

/// Why a connection may not use a queue; converts into each operation's error.
#[derive(Debug)]
pub(crate) enum QueueRefusal {
    /// No such queue (the message names it as RabbitMQ does).
    NotFound(String),
    /// Exclusive to another connection (the queue's name).
    Locked {
        /// The queue.
        queue: String,
        /// Its virtual host.
        vhost: String,
    },
}

macro_rules! from_queue_refusal {
    ($($error:ident),*) => {$(
        impl From<QueueRefusal> for $error {
            fn from(refusal: QueueRefusal) -> Self {
                match refusal {
                    QueueRefusal::NotFound(message) => $error::NotFound(message),
                    QueueRefusal::Locked { queue, vhost } => $error::ResourceLocked { queue, vhost },
                }
            }
        }
    )*};
}

from_queue_refusal!(BindError, DeleteError, ConsumeError);

pub(crate) fn check_name(name: &str) -> Result<(), DeclareError> {
    if name.len() > MAX_NAME_LEN {
        let mut cut = MAX_NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(DeclareError::InvalidName {
            name: format!("{}…", &name[..cut]),
            reason: "longer than 255 bytes",
        });
    }
    Ok(())
}

impl Vhost {
    pub(crate) fn declare_exchange(
        &self,
        name: &str,
        kind: ExchangeKind,
        options: ExchangeOptions,
    ) -> Result<(), DeclareError> {
        check_name(name)?;
        let _registry = self.registry.lock();
        if name.is_empty() {
            return Err(DeclareError::AccessRefused(
                "operation not permitted on the default exchange".into(),
            ));
        }
        let options = if options.passive {
            options
        } else {
            options.resolved().map_err(|(arg, why)| {
                DeclareError::PreconditionFailed(format!(
                    "invalid arg '{arg}' for exchange '{name}' in vhost '{}': {why}",
                    self.name
                ))
            })?
        };
        let existing = self.exchanges.load().get(name).cloned();
        if options.passive {
            return existing.map(|_| ()).ok_or_else(|| DeclareError::NotFound(self.no_exchange(name)));
        }
        // As RabbitMQ does, the reserved prefix only stops creating an
        // exchange: re-declaring `amq.direct` equivalently succeeds.
        if existing.is_none() && name.starts_with("amq.") {
            return Err(DeclareError::AccessRefused(format!(
                "exchange name '{name}' contains reserved prefix 'amq.*'"
            )));
        }
        if let Some(current) = existing {
            let inequivalent = |arg: &str, received: &Side, now: &Side| {
                DeclareError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for exchange '{name}' in vhost '{}': {}",
                    self.name,
                    inequivalent_phrase(received, now)
                ))
            };
            if current.kind != kind {
                let kind_side = |k: ExchangeKind| Some((k.as_str().to_owned(), "longstr"));
                return Err(inequivalent("type", &kind_side(kind), &kind_side(current.kind)));
            }
            if let Some((arg, received, now)) = options.difference(&current.options) {
                return Err(inequivalent(&arg, &received, &now));
            }
            return Ok(());
        }
        let exchange = Arc::new(Exchange::new(name.into(), self.core.id(), kind, options));
        if let Some(journal) = &self.core.topology_journal
            && exchange.options.durable
        {
            journal.exchange_declared(&self.name, &exchange).map_err(DeclareError::StoreFailed)?;
        }
        let mut map = (**self.exchanges.load()).clone();
        map.insert(Arc::clone(&exchange.name), exchange);
        self.exchanges.store(Arc::new(map));
        self.topology_changed();
        Ok(())
    }

    pub(crate) fn delete_exchange(&self, name: &str, if_unused: bool) -> Result<(), DeleteError> {
        if name.is_empty() {
            return Err(DeleteError::AccessRefused("operation not permitted on the default exchange".into()));
        }
        if name.starts_with("amq.") {
            return Err(DeleteError::AccessRefused(format!(
                "deletion of system exchange '{name}' in vhost '{}' not allowed",
                self.name
            )));
        }
        let mut registry = self.registry.lock();
        // As in RabbitMQ since 3.2, deleting what does not exist succeeds.
        let Some(exchange) = self.exchanges.load().get(name).cloned() else { return Ok(()) };
        if if_unused && registry.binding_count.get(&exchange.id).copied().unwrap_or(0) > 0 {
            return Err(DeleteError::PreconditionFailed(format!(
                "exchange '{name}' in vhost '{}' in use",
                self.name
            )));
        }
        self.remove_exchange(&mut registry, &exchange);
        Ok(())
    }

    /// Removes an exchange and every binding from or to it, then auto-deletes
    /// the sources that lost their last binding.
    pub(super) fn remove_exchange(&self, registry: &mut Registry, exchange: &Arc<Exchange>) {
        let mut map = (**self.exchanges.load()).clone();
        if !map.get(&exchange.name).is_some_and(|e| Arc::ptr_eq(e, exchange)) {
            return;
        }
        map.remove(&exchange.name);
        self.exchanges.store(Arc::new(map));
        self.topology_changed();
        exchange.mark_deleted();
        if let Some(journal) = &self.core.topology_journal {
            journal.exchange_deleted(&self.name, &exchange.name);
        }
        let id = exchange.id;
        let keys: Vec<BindingKey> =
            registry.keys_from(id).chain(registry.keys_to(DestId::Exchange(id))).cloned().collect();
        self.remove_bindings(registry, keys);
        registry.binding_count.remove(&id);
        exchange.routes.store(Arc::new(Routes::empty(exchange.kind)));
        self.topology_changed();
    }

    // ----- queues --------------------------------------------------------

    /// A fresh server-generated queue name (`amq.gen-…`), not in use now.
    pub(crate) fn generate_queue_name(&self) -> String {
        let queues = self.queues.load();
        loop {
            let candidate = self.core.generate_name("amq.gen-");
            if !queues.contains_key(candidate.as_str()) {
                break candidate;
            }
        }
    }

    /// Declares queue `name` for connection `conn`; `server_named`: the
    /// name came from [`generate_queue_name`](Self::generate_queue_name),
    /// so its reserved `amq.` prefix is allowed.
    pub(crate) fn declare_queue(
        &self,
        conn: u64,
        name: &str,
        options: QueueOptions,
        server_named: bool,
    ) -> Result<String, DeclareError> {
        check_name(name)?;
        let mut registry = self.registry.lock();
        let queues = self.queues.load();
        if options.passive {
            let queue = queues.get(name).ok_or_else(|| DeclareError::NotFound(self.no_queue(name)))?;
            if !queue.accessible_by(conn) {
                return Err(DeclareError::ResourceLocked {
                    queue: name.into(),
                    vhost: self.name.to_string(),
                });
            }
            return Ok(name.into());
        }
        let name = if name.is_empty() {
            self.generate_queue_name()
        } else if name.starts_with("amq.") && !server_named {
            return Err(DeclareError::AccessRefused(format!(
                "queue name '{name}' contains reserved prefix 'amq.*'"
            )));
        } else {
            name.to_owned()
        };
        let policy = options.policy().map_err(|(arg, why)| {
            DeclareError::PreconditionFailed(format!(
                "invalid arg '{arg}' for queue '{name}' in vhost '{}': {why}",
                self.name
            ))
        })?;
        if let Some(current) = queues.get(name.as_str()) {
            // RabbitMQ checks exclusivity before the other options: a
            // mismatch either way is RESOURCE_LOCKED, not an inequivalent arg.
            if !current.accessible_by(conn) || options.exclusive != current.options.exclusive {
                return Err(DeclareError::ResourceLocked { queue: name, vhost: self.name.to_string() });
            }
            if let Some((arg, received, now)) = options.difference(&policy, &current.options, &current.policy)
            {
                return Err(DeclareError::PreconditionFailed(format!(
                    "inequivalent arg '{arg}' for queue '{name}' in vhost '{}': {}",
                    self.name,
                    inequivalent_phrase(&received, &now)
                )));
            }
            current.touch();
            return Ok(name);
        }
        let owner = options.exclusive.then_some(conn);
        let options = QueueOptions { passive: false, ..options };
        let journal = match &self.core.topology_journal {
            Some(journal) => journal
                .queue_declared(&self.name, &name, &options, &policy)
                .map_err(DeclareError::StoreFailed)?,
            None => None,
        };
        let context = QueueContext {
            statistics: self.core.settings.statistics,
            clock: self.core.settings.clock.clone(),
            timers: Arc::clone(&self.core.timers),
            broker: Weak::clone(&self.me) as Weak<dyn QueueOwner>,
            flow: self.core.flow.clone(),
            activity: Arc::clone(&self.core.activity),
            observers: Arc::clone(&self.core.observers),
            faults: Arc::clone(&self.core.faults),
            journal,
        };
        let queue = Queue::new(name.as_str().into(), self.core.id(), options, policy, owner, context);
        if owner.is_some() {
            registry.exclusive.entry(conn).or_default().push(Arc::clone(&queue));
        }
        let mut map = (**queues).clone();
        map.insert(Arc::clone(&queue.name), queue);
        self.queues.store(Arc::new(map));
        self.topology_changed();
        Ok(name)
    }

    /// Looks a queue up for connection `conn`, refusing a missing queue or
    /// one exclusive to another connection.
    pub(crate) fn queue_for(&self, conn: u64, name: &str) -> Result<Arc<Queue>, QueueRefusal> {
        let queue = self.queue(name).ok_or_else(|| QueueRefusal::NotFound(self.no_queue(name)))?;
        if queue.accessible_by(conn) {
            Ok(queue)
        } else {
            Err(QueueRefusal::Locked { queue: name.into(), vhost: self.name.to_string() })
        }
    }

    pub(crate) fn delete_queue(
        &self,
        conn: u64,
        name: &str,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, DeleteError> {
        let mut registry = self.registry.lock();
        let queue = match self.queue_for(conn, name) {
            Ok(queue) => queue,
            // As in RabbitMQ since 3.2, deleting what does not exist succeeds.
            Err(QueueRefusal::NotFound(_)) => return Ok(0),
            Err(locked) => return Err(locked.into()),
        };
        self.remove_queue(&mut registry, &queue, if_unused, if_empty).map_err(|refused| {
            let why = match refused {
                DeleteRefused::InUse | DeleteRefused::NotIdle => "in use",
                DeleteRefused::NotEmpty => "not empty",
            };
            DeleteError::PreconditionFailed(format!("queue '{name}' in vhost '{}' {why}", self.name))
        })
    }

    /// Deletes a queue (see [`Queue::delete_if`]) and takes it out of the
    /// topology; returns how many messages were ready.
    pub(super) fn remove_queue(
        &self,
        registry: &mut Registry,
        queue: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
    ) -> Result<usize, DeleteRefused> {
        self.remove_queue_if(registry, queue, if_unused, if_empty, None)
    }

    /// [`remove_queue`](Self::remove_queue), also refusing a queue with
    /// `expires` used since `expiring_at` minus its expiry.
    pub(super) fn remove_queue_if(
        &self,
        registry: &mut Registry,
        queue: &Arc<Queue>,
        if_unused: bool,
        if_empty: bool,
        expiring_at: Option<Instant>,
    ) -> Result<usize, DeleteRefused> {
        let mut map = (**self.queues.load()).clone();
        if !map.get(&queue.name).is_some_and(|q| Arc::ptr_eq(q, queue)) {
            return Ok(0);
        }
        // Marked first: a publisher still holding the old snapshot finds the
        // queue deleted and does not count it as routed.
        let dropped = queue.delete_if(if_unused, if_empty, expiring_at)?;
        map.remove(&queue.name);
        self.queues.store(Arc::new(map));
        self.topology_changed();
        if let Some(journal) = &self.core.topology_journal
            && queue.context.journal.is_some()
        {
            journal.queue_deleted(&self.name, &queue.name);
        }
        let keys: Vec<BindingKey> = registry.keys_to(DestId::Queue(queue.id)).cloned().collect();
        self.remove_bindings(registry, keys);
        if let Some(owner) = queue.owner
            && let Some(owned) = registry.exclusive.get_mut(&owner)
        {
            owned.retain(|q| !Arc::ptr_eq(q, queue));
        }
        Ok(dropped)
    }

    /// Deletes a queue whose `expires` time has passed unused, unless it was
    /// used meanwhile.
    pub(super) fn expire(&self, queue: &Arc<Queue>, now: Instant) {
        let mut registry = self.registry.lock();
        let _used_meanwhile = self.remove_queue_if(&mut registry, queue, true, false, Some(now));
    }

    /// Deletes an auto-delete queue whose last consumer just went, unless a
    /// new consumer came meanwhile (then `if_unused` refuses, and it stays).
    pub(super) fn auto_delete(&self, queue: &Arc<Queue>) {
        let mut registry = self.registry.lock();
        let _still_used = self.remove_queue(&mut registry, queue, true, false);
    }

    /// Deletes the exclusive queues of connection `conn`, which is closing.
    pub(crate) fn delete_exclusive_queues(&self, conn: u64) {
        let mut registry = self.registry.lock();
        for queue in registry.exclusive.remove(&conn).unwrap_or_default() {
            let unconditional = self.remove_queue(&mut registry, &queue, false, false);
            debug_assert!(unconditional.is_ok());
        }
    }

    pub(crate) fn purge_queue(&self, conn: u64, name: &str) -> Result<usize, DeleteError> {
        let queue = self.queue_for(conn, name)?;
        Ok(queue.purge())
    }

    // ----- bindings ------------------------------------------------------

    /// Resolves both ends of a binding.
    fn binding_ends(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
    ) -> Result<(Arc<Exchange>, Dest), BindError> {
        if key.len() > MAX_NAME_LEN {
            return Err(BindError::InvalidName("binding key longer than 255 bytes"));
        }
        if source.is_empty() || (to_exchange && destination.is_empty()) {
            return Err(BindError::AccessRefused("operation not permitted on the default exchange".into()));
        }
        let exchanges = self.exchanges.load();
        let dest = if to_exchange {
            Dest::Exchange(
                exchanges
                    .get(destination)
                    .cloned()
                    .ok_or_else(|| BindError::NotFound(self.no_exchange(destination)))?,
            )
        } else {
            Dest::Queue(self.queue_for(conn, destination)?)
        };
        let source =
            exchanges.get(source).cloned().ok_or_else(|| BindError::NotFound(self.no_exchange(source)))?;
        Ok((source, dest))
    }

    pub(crate) fn bind(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
        arguments: FieldTable,
    ) -> Result<(), BindError> {
        let mut registry = self.registry.lock();
        let (source, dest) = self.binding_ends(conn, destination, to_exchange, source, key)?;
        let matcher = compile_arguments(source.kind, &arguments).map_err(BindError::PreconditionFailed)?;
        let binding_key = BindingKey { source: source.id, dest: dest.id(), key: key.to_owned() };
        if registry.bindings.get(&binding_key).is_some_and(|e| e.args.iter().any(|(a, _)| *a == arguments)) {
            return Ok(());
        }
        if let Some(journal) = &self.core.topology_journal {
            let info = binding_info(&source, destination, to_exchange, key, arguments.clone());
            journal.bound(&self.name, &info).map_err(BindError::StoreFailed)?;
        }
        let entry = registry.entry(binding_key, &source, &dest);
        entry.args.push((arguments, matcher.clone()));
        *registry.binding_count.entry(source.id).or_default() += 1;
        apply_edits(&source, [RouteEdit { key: key.to_owned(), matcher, dest, add: true }]);
        self.topology_changed();
        Ok(())
    }

    pub(crate) fn unbind(
        &self,
        conn: u64,
        destination: &str,
        to_exchange: bool,
        source: &str,
        key: &str,
        arguments: &FieldTable,
    ) -> Result<(), BindError> {
        let mut registry = self.registry.lock();
        let (source, dest) = match self.binding_ends(conn, destination, to_exchange, source, key) {
            Ok(ends) => ends,
            // As in RabbitMQ since 3.2, removing what does not exist succeeds.
            Err(BindError::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let binding_key = BindingKey { source: source.id, dest: dest.id(), key: key.to_owned() };
        let Some(entry) = registry.bindings.get_mut(&binding_key) else { return Ok(()) };
        let Some(index) = entry.args.iter().position(|(a, _)| a == arguments) else { return Ok(()) };
        let (removed_args, matcher) = entry.args.remove(index);
        if entry.args.is_empty() {
            registry.take(&binding_key);
        }
        if let Some(journal) = &self.core.topology_journal {
            journal.unbound(&self.name, &binding_info(&source, destination, to_exchange, key, removed_args));
        }
        apply_edits(&source, [RouteEdit { key: key.to_owned(), matcher, dest, add: false }]);
        self.topology_changed();
        self.forget_bindings(&mut registry, &[(source, 1)]);
        Ok(())
    }

    /// Removes the bindings `keys`, updates the routing tables of their
    /// sources, and auto-deletes sources left with none.
    fn remove_bindings(&self, registry: &mut Registry, keys: Vec<BindingKey>) {
        let mut edits: HashMap<u64, (Arc<Exchange>, Vec<RouteEdit>)> = HashMap::new();
        for key in keys {
            // A key may be listed twice (an exchange bound to itself).
            let Some(entry) = registry.take(&key) else { continue };
            let (_, list) =
                edits.entry(entry.source.id).or_insert_with(|| (Arc::clone(&entry.source), Vec::new()));
            for (_, matcher) in entry.args {
                list.push(RouteEdit {
                    key: entry.key.clone(),
                    matcher,
                    dest: entry.dest.clone(),
                    add: false,
                });
            }
        }
        let mut removed = Vec::new();
        for (_, (source, list)) in edits {
            let n = list.len();
            apply_edits(&source, list);
            self.topology_changed();
            removed.push((source, n));
        }
        self.forget_bindings(registry, &removed);
    }

    /// Lowers binding counts; an auto-delete exchange that loses its last
    /// binding is deleted (which may cascade).
    fn forget_bindings(&self, registry: &mut Registry, removed: &[(Arc<Exchange>, usize)]) {
        for (source, n) in removed {
            let count = registry.binding_count.entry(source.id).or_default();
            *count = count.saturating_sub(*n);
            if *count == 0 && source.options.auto_delete {
                self.remove_exchange(registry, source);
            }
        }
    }
}

/// A binding as the topology journal is told of it.
fn binding_info(
    source: &Exchange,
    destination: &str,
    to_exchange: bool,
    key: &str,
    arguments: FieldTable,
) -> BindingInfo {
    BindingInfo {
        source: source.name.to_string(),
        destination: destination.into(),
        destination_is_exchange: to_exchange,
        routing_key: key.into(),
        arguments,
    }
}
