//! A broker on a data directory: opening it (the durable topology, then
//! the persistent messages back in their queues), recording durable
//! topology changes as RabbitMQ definitions, and the store's figures.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::core::TopologyJournal;
use crate::definitions::{
    BindingDefinition, Definitions, ExchangeDefinition, QueueDefinition, VhostDefinition, binding_definition,
    exchange_definition, queue_definition,
};
use crate::durable::{EntryKind, OpenError, QueueJournal, RecoveryReport, Store, StoreError, StoreStats};
use crate::exchange::{BindingInfo, Exchange};
use crate::queue::{DeduplicationWindow, QueueOptions, QueuePolicy};
use crate::sync::Arc;

use super::{Broker, BrokerOptions};

impl Broker {
    /// A broker whose durable queues keep their persistent messages, and
    /// whose durable exchanges, queues and bindings stay declared, in the
    /// data directory `dir` (created if missing) — across a crash of the
    /// process and a restart, as RabbitMQ's do.
    ///
    /// What persists, as in RabbitMQ: virtual hosts; durable exchanges; durable queues
    /// (never exclusive ones); bindings whose both ends are durable; and the
    /// messages published with [`DeliveryMode::Persistent`] to durable
    /// queues, with their order, redelivered flag, delivery count, TTL
    /// deadline (against the wall clock: time stopped counts), delay, and
    /// headers (their `x-death` history). A queue's deduplication window is
    /// rebuilt from the message ids the store still holds. Transient
    /// messages and non-durable queues are gone after a restart. A publish
    /// to a durable queue returns once the message is durable per
    /// [`StoreOptions::sync`](crate::StoreOptions::sync) (see
    /// [`SyncPolicy`](crate::SyncPolicy) for what each policy survives);
    /// [`Connection::publish_confirmed`](crate::Connection::publish_confirmed)
    /// waits without blocking.
    ///
    /// Opening reads the topology, scans the store's segments (checksums
    /// on every record: a torn or damaged tail is cut off and reported in
    /// [`recovery`](Self::recovery)), and puts every persistent message
    /// that was not settled back in its queue; one that had been delivered
    /// comes back flagged redelivered. A directory another broker has open
    /// (in this process or another) is refused: [`OpenError::Locked`].
    ///
    /// Users and permissions are not stored (declare them at start, or
    /// load definitions). Dropping the broker syncs and releases the
    /// directory; deliveries still held then are not settled in the store
    /// (they come back redelivered at the next open).
    ///
    /// ```
    /// use interoffice::{Broker, BrokerOptions, DeliveryMode, Message, QueueOptions};
    /// let dir = std::env::temp_dir().join(format!("interoffice-doc-{}", std::process::id()));
    /// # let _ = std::fs::remove_dir_all(&dir);
    /// {
    ///     let broker = Broker::open(&dir, BrokerOptions::default())?;
    ///     let conn = broker.connect();
    ///     conn.declare_queue("orders", QueueOptions { durable: true, ..Default::default() })?;
    ///     let order = Message::new("order 1").with_delivery_mode(DeliveryMode::Persistent);
    ///     conn.publish("", "orders", order)?; // returns once synced
    /// } // dropped: the process could as well have crashed here
    /// let broker = Broker::open(&dir, BrokerOptions::default())?;
    /// let order = broker.connect().get("orders", true)?.expect("kept");
    /// assert_eq!(order.message().body().as_ref(), b"order 1");
    /// # drop(broker); std::fs::remove_dir_all(&dir)?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`OpenError`]: the directory is in use by another broker, holds a
    /// later store format, has an unreadable topology file, or cannot be
    /// read or written.
    ///
    /// [`DeliveryMode::Persistent`]: crate::DeliveryMode::Persistent
    pub fn open(dir: impl AsRef<Path>, options: BrokerOptions) -> Result<Broker, OpenError> {
        let store = Store::open(dir.as_ref(), options.store.clone())?;
        let journal: Arc<dyn TopologyJournal> = Arc::new(DurableTopology { store: Arc::clone(&store) });
        let broker = Broker::build(options, Some(Arc::clone(&store)), Some(journal));
        broker.recover(&store);
        Ok(broker)
    }

    /// Declares the stored topology again, then puts the recovered
    /// messages back.
    fn recover(&self, store: &Arc<Store>) {
        let Some(mut recovered) = store.take_recovered() else { return };
        let mut report = std::mem::take(&mut recovered.report);
        let mut messages = std::mem::take(&mut recovered.messages);
        let started = std::time::Instant::now();
        let mut definitions = Definitions::default();
        let mut windows: HashMap<(String, String), DeduplicationWindow> = HashMap::new();
        let mut queue_ids: Vec<(String, String, u64)> = Vec::new();
        let mut vhosts = BTreeSet::new();
        {
            let topology = store.topology();
            for entry in topology.entries.values() {
                match entry.kind {
                    EntryKind::Exchange => {
                        if let Ok(def) =
                            serde_json::from_value::<ExchangeDefinition>(entry.definition.clone())
                        {
                            vhosts.insert(def.vhost.clone());
                            definitions.exchanges.push(def);
                        }
                    }
                    EntryKind::Queue => {
                        if let Ok(stored) = serde_json::from_value::<StoredQueue>(entry.definition.clone()) {
                            let key = (stored.definition.vhost.clone(), stored.definition.name.clone());
                            if let Some(window) = stored.deduplication_window {
                                windows.insert(key.clone(), window.into());
                            }
                            if let Some(id) = entry.queue_id {
                                queue_ids.push((key.0.clone(), key.1.clone(), id));
                            }
                            vhosts.insert(key.0);
                            definitions.queues.push(stored.definition);
                        }
                    }
                    EntryKind::Binding => {
                        if let Ok(def) = serde_json::from_value::<BindingDefinition>(entry.definition.clone())
                        {
                            definitions.bindings.push(def);
                        }
                    }
                    EntryKind::Vhost => {
                        if let Some(name) = entry.key.first() {
                            vhosts.insert(name.clone());
                        }
                    }
                }
            }
        }
        definitions.vhosts = vhosts
            .into_iter()
            .map(|name| VhostDefinition { name, other: std::collections::BTreeMap::new() })
            .collect();
        let loaded = self.load_definitions_with(&definitions, &|queue, options| {
            if let Some(window) = windows.get(&(queue.vhost.clone(), queue.name.clone())) {
                options.deduplication_window = Some(*window);
            }
        });
        report.refused = loaded.refused;
        for (vhost, name, id) in queue_ids {
            let queue = self.vhost_arc(&vhost).and_then(|v| v.queue(&name));
            let kept = messages.remove(&id).unwrap_or_default();
            match queue {
                Some(queue) => {
                    let ids = if queue.policy.deduplication_window.is_some() {
                        recovered.message_ids(id)
                    } else {
                        Vec::new()
                    };
                    queue.recover(kept, &ids);
                }
                None => report.orphaned += kept.len() as u64,
            }
        }
        report.orphaned += messages.values().map(|m| m.len() as u64).sum::<u64>();
        report.elapsed += started.elapsed();
        *self.inner.recovery.lock() = Some(report);
    }

    /// What opening the data directory found and did; `None` for a broker
    /// without one.
    pub fn recovery(&self) -> Option<RecoveryReport> {
        self.inner.recovery.lock().clone()
    }

    /// The store's figures (messages held, disk bytes, compaction, syncs);
    /// `None` for a broker without a data directory.
    pub fn store_stats(&self) -> Option<StoreStats> {
        self.inner.core.store.as_ref().map(|store| store.stats())
    }

    /// The data directory, if the broker was opened on one.
    pub fn data_dir(&self) -> Option<&Path> {
        self.inner.core.store.as_ref().map(|store| store.dir())
    }
}

/// A queue entry: its definition and what a definitions file cannot say.
#[derive(Debug, Serialize, Deserialize)]
struct StoredQueue {
    #[serde(flatten)]
    definition: QueueDefinition,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deduplication_window: Option<StoredWindow>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct StoredWindow {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_ids: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    duration_ms: Option<u64>,
}

impl From<StoredWindow> for DeduplicationWindow {
    fn from(w: StoredWindow) -> Self {
        DeduplicationWindow { max_ids: w.max_ids, duration: w.duration_ms.map(Duration::from_millis) }
    }
}

/// The topology journal of a broker on a data directory: RabbitMQ
/// definitions, one entry per durable object, saved on every change.
#[derive(Debug)]
struct DurableTopology {
    store: Arc<Store>,
}

fn key(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|p| (*p).to_owned()).collect()
}

fn binding_key(vhost: &str, b: &BindingInfo) -> Vec<String> {
    let kind = if b.destination_is_exchange { "exchange" } else { "queue" };
    let arguments = serde_json::to_string(&binding_definition(vhost, b).arguments).unwrap_or_default();
    key(&[vhost, &b.source, kind, &b.destination, &b.routing_key, &arguments])
}

impl DurableTopology {
    /// Applies `change` and saves; on a failed save, undoes it.
    fn change(&self, change: impl FnOnce(&mut crate::durable::TopologyFile)) -> Result<(), StoreError> {
        let mut topology = self.store.topology();
        let before = topology.entries.clone();
        let next = topology.next_queue_id;
        change(&mut topology);
        if topology.entries == before && topology.next_queue_id == next {
            return Ok(());
        }
        topology.save().map_err(|e| {
            topology.entries = before;
            topology.next_queue_id = next;
            StoreError::from_io(&e)
        })
    }

    /// A change that cannot be refused (a deletion): a failed save is
    /// kept for the figures, and the next save writes it.
    fn change_anyway(&self, change: impl FnOnce(&mut crate::durable::TopologyFile)) {
        let mut topology = self.store.topology();
        change(&mut topology);
        if let Err(e) = topology.save() {
            self.store.note_error(format!("topology not saved: {e}"));
        }
    }
}

fn entry(
    kind: EntryKind,
    key: Vec<String>,
    queue_id: Option<u64>,
    definition: serde_json::Value,
) -> crate::durable::snapshot::Entry {
    crate::durable::snapshot::Entry { kind, key, queue_id, definition }
}

impl TopologyJournal for DurableTopology {
    fn exchange_declared(&self, vhost: &str, exchange: &Exchange) -> Result<(), StoreError> {
        let definition = serde_json::to_value(exchange_definition(vhost, exchange)).unwrap_or_default();
        let k = key(&[vhost, &exchange.name]);
        self.change(|t| {
            t.entries
                .insert((EntryKind::Exchange, k.clone()), entry(EntryKind::Exchange, k, None, definition));
        })
    }

    fn exchange_deleted(&self, vhost: &str, name: &str) {
        self.change_anyway(|t| {
            t.entries.remove(&(EntryKind::Exchange, key(&[vhost, name])));
            t.entries.retain(|(kind, k), _| {
                !(*kind == EntryKind::Binding
                    && k[0] == vhost
                    && (k[1] == name || (k[2] == "exchange" && k[3] == name)))
            });
        });
    }

    fn queue_declared(
        &self,
        vhost: &str,
        name: &str,
        options: &QueueOptions,
        policy: &QueuePolicy,
    ) -> Result<Option<Arc<QueueJournal>>, StoreError> {
        if !options.durable || options.exclusive {
            return Ok(None);
        }
        let stored = StoredQueue {
            definition: queue_definition(vhost, name, options, policy),
            deduplication_window: policy.deduplication_window.map(|w| StoredWindow {
                max_ids: w.max_ids,
                duration_ms: w.duration.map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            }),
        };
        let definition = serde_json::to_value(stored).unwrap_or_default();
        let k = key(&[vhost, name]);
        let mut id = 0;
        self.change(|t| {
            id = match t.queue_id(&k) {
                Some(id) => id,
                None => {
                    let id = t.next_queue_id;
                    t.next_queue_id += 1;
                    id
                }
            };
            t.entries.insert((EntryKind::Queue, k.clone()), entry(EntryKind::Queue, k, Some(id), definition));
        })?;
        Ok(Some(QueueJournal::new(Arc::clone(&self.store), id)))
    }

    fn queue_deleted(&self, vhost: &str, name: &str) {
        self.change_anyway(|t| {
            t.entries.remove(&(EntryKind::Queue, key(&[vhost, name])));
            t.entries.retain(|(kind, k), _| {
                !(*kind == EntryKind::Binding && k[0] == vhost && k[2] == "queue" && k[3] == name)
            });
        });
    }

    fn bound(&self, vhost: &str, binding: &BindingInfo) -> Result<(), StoreError> {
        let definition = serde_json::to_value(binding_definition(vhost, binding)).unwrap_or_default();
        let k = binding_key(vhost, binding);
        self.change(|t| {
            let source = binding.source.starts_with("amq.")
                || t.entries.contains_key(&(EntryKind::Exchange, key(&[vhost, &binding.source])));
            let kind = if binding.destination_is_exchange { EntryKind::Exchange } else { EntryKind::Queue };
            let destination = t.entries.contains_key(&(kind, key(&[vhost, &binding.destination])))
                || (binding.destination_is_exchange && binding.destination.starts_with("amq."));
            if source && destination {
                t.entries
                    .insert((EntryKind::Binding, k.clone()), entry(EntryKind::Binding, k, None, definition));
            }
        })
    }

    fn vhost_added(&self, vhost: &str) -> Result<(), StoreError> {
        let k = key(&[vhost]);
        self.change(|t| {
            t.entries.insert(
                (EntryKind::Vhost, k.clone()),
                entry(EntryKind::Vhost, k, None, serde_json::json!({ "name": vhost })),
            );
        })
    }

    fn vhost_deleted(&self, vhost: &str) {
        // Its queues, exchanges and bindings went before it, each recorded.
        self.change_anyway(|t| {
            t.entries.retain(|(_, k), _| k.first().is_none_or(|v| v != vhost));
        });
    }

    fn unbound(&self, vhost: &str, binding: &BindingInfo) {
        let k = binding_key(vhost, binding);
        let present = self.store.topology().entries.contains_key(&(EntryKind::Binding, k.clone()));
        if present {
            self.change_anyway(|t| {
                t.entries.remove(&(EntryKind::Binding, k));
            });
        }
    }
}
