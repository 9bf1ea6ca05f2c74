//! Definitions: virtual hosts, users (with their password hashes, in
//! RabbitMQ's own scheme), permissions, topic permissions, and the topology
//! of every virtual host (exchanges, queues with their options, bindings)
//! in the shape of RabbitMQ's definitions file (`rabbitmqctl
//! export_definitions`, the management API's `/api/definitions`), exported
//! from a broker and loaded into one — so a topology and its access rules
//! carry over to a real RabbitMQ and back.
//!
//! The sections interoffice does not model (policies, parameters) are kept
//! as they were read, written back unchanged, and listed in the
//! [`LoadReport`] — never silently dropped.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::access::Permissions;
use crate::access::TopicPermissions;
use crate::broker::Broker;
use crate::exchange::{ExchangeKind, ExchangeOptions};
use crate::field::{FieldTable, FieldValue};
use crate::queue::QueueOptions;
use crate::vhost::{DEFAULT_VHOST, Vhost};

/// A JSON value, as a definitions file holds it (arguments, and the
/// sections kept without being interpreted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum JsonValue {
    /// `null`.
    Null,
    /// `true` / `false`.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// Any other number.
    Float(f64),
    /// A string.
    String(String),
    /// An array.
    Array(Vec<JsonValue>),
    /// An object, keys sorted (as RabbitMQ writes them).
    Object(BTreeMap<String, JsonValue>),
}

impl JsonValue {
    fn to_field(&self) -> FieldValue {
        match self {
            JsonValue::Null => FieldValue::Void,
            JsonValue::Bool(b) => FieldValue::Bool(*b),
            JsonValue::Int(i) => FieldValue::I64(*i),
            JsonValue::Float(f) => FieldValue::F64(*f),
            JsonValue::String(s) => FieldValue::String(s.into()),
            JsonValue::Array(values) => FieldValue::Array(values.iter().map(JsonValue::to_field).collect()),
            JsonValue::Object(map) => FieldValue::Table(to_table(map)),
        }
    }

    fn from_field(value: &FieldValue) -> JsonValue {
        match value {
            FieldValue::Void => JsonValue::Null,
            FieldValue::Bool(b) => JsonValue::Bool(*b),
            FieldValue::F32(f) => JsonValue::Float(f64::from(*f)),
            FieldValue::F64(f) => JsonValue::Float(*f),
            FieldValue::Array(values) => JsonValue::Array(values.iter().map(JsonValue::from_field).collect()),
            FieldValue::Table(table) => JsonValue::Object(from_table(table)),
            FieldValue::Timestamp(t) => JsonValue::Int(i64::try_from(*t).unwrap_or(i64::MAX)),
            other => match (other.as_i64(), other.as_str()) {
                (Some(i), _) => JsonValue::Int(i),
                (None, Some(s)) => JsonValue::String(s.to_owned()),
                // Bytes that are not text, an unsigned beyond i64: as text.
                _ => JsonValue::String(other.to_string()),
            },
        }
    }
}

pub(crate) fn to_table(map: &BTreeMap<String, JsonValue>) -> FieldTable {
    let mut table = FieldTable::new();
    for (key, value) in map {
        table.insert(key.as_str(), value.to_field());
    }
    table
}

fn from_table(table: &FieldTable) -> BTreeMap<String, JsonValue> {
    table.iter().map(|(k, v)| (k.to_owned(), JsonValue::from_field(v))).collect()
}

/// One exchange of a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExchangeDefinition {
    /// Its arguments (`alternate-exchange`, ...).
    #[serde(default)]
    pub arguments: BTreeMap<String, JsonValue>,
    /// Deleted when its last binding goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Survives a broker restart (kept for RabbitMQ; everything here is in memory).
    #[serde(default)]
    pub durable: bool,
    /// Not published to directly. (RabbitMQ 3.10 leaves internal exchanges
    /// out of its export; interoffice writes them, with this flag, which
    /// RabbitMQ's import reads.)
    #[serde(default, skip_serializing_if = "is_false")]
    pub internal: bool,
    /// The name.
    pub name: String,
    /// `direct`, `fanout`, `topic` or `headers`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
}

/// One queue of a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueDefinition {
    /// Its `x-` arguments: every policy interoffice implements is written
    /// as RabbitMQ's argument.
    #[serde(default)]
    pub arguments: BTreeMap<String, JsonValue>,
    /// Deleted when its last consumer goes.
    #[serde(default)]
    pub auto_delete: bool,
    /// Survives a broker restart (kept for RabbitMQ).
    #[serde(default)]
    pub durable: bool,
    /// The name.
    pub name: String,
    /// `classic` or `quorum` (absent in files of RabbitMQ before 3.8).
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
}

/// One binding of a definitions file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BindingDefinition {
    /// Its arguments (a headers binding's rule).
    #[serde(default)]
    pub arguments: BTreeMap<String, JsonValue>,
    /// The queue or exchange bound.
    pub destination: String,
    /// `queue` or `exchange`.
    pub destination_type: String,
    /// The binding key.
    #[serde(default)]
    pub routing_key: String,
    /// The exchange bound to.
    pub source: String,
    /// The virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
}

/// One user of a definitions file. The password is a salted hash in
/// RabbitMQ's scheme (`rabbit_password_hashing_sha256`, or `_sha512` when
/// read), never in clear; an empty hash is a user without a password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserDefinition {
    /// `rabbit_password_hashing_sha256` or `rabbit_password_hashing_sha512`.
    #[serde(default = "default_hashing")]
    pub hashing_algorithm: String,
    /// Per-user limits: kept as read, not applied.
    #[serde(default = "empty_object")]
    pub limits: JsonValue,
    /// The name.
    pub name: String,
    /// Base64 of salt and digest.
    #[serde(default)]
    pub password_hash: String,
    /// The user's tags (a list; older RabbitMQ files write one
    /// comma-separated string, which reads too).
    #[serde(default, deserialize_with = "tags")]
    pub tags: Vec<String>,
}

/// One user's permissions in one virtual host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PermissionDefinition {
    /// The configure pattern.
    pub configure: String,
    /// The read pattern.
    pub read: String,
    /// The user.
    pub user: String,
    /// The virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The write pattern.
    pub write: String,
}

/// One user's topic permissions on one exchange in one virtual host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicPermissionDefinition {
    /// The topic exchange.
    pub exchange: String,
    /// The read (binding key) pattern.
    pub read: String,
    /// The user.
    pub user: String,
    /// The virtual host.
    #[serde(default = "default_vhost")]
    pub vhost: String,
    /// The write (routing key) pattern.
    pub write: String,
}

/// One virtual host of a definitions file; what else RabbitMQ writes of it
/// (limits, metadata) is kept as read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VhostDefinition {
    /// The name.
    pub name: String,
    /// Limits, metadata: kept as read, not applied.
    #[serde(flatten)]
    pub other: BTreeMap<String, JsonValue>,
}

fn default_hashing() -> String {
    crate::access::password_algorithm_sha256().into()
}

fn empty_object() -> JsonValue {
    JsonValue::Object(BTreeMap::new())
}

/// Tags as a list, or as RabbitMQ before 3.9 wrote them: one string,
/// comma-separated.
fn tags<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Tags {
        List(Vec<String>),
        Text(String),
    }
    Ok(match Tags::deserialize(deserializer)? {
        Tags::List(list) => list,
        Tags::Text(text) => {
            text.split(',').map(str::trim).filter(|t| !t.is_empty()).map(str::to_owned).collect()
        }
    })
}

fn default_vhost() -> String {
    DEFAULT_VHOST.into()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A whole definitions file, in RabbitMQ's shape and key order. Serialise
/// it with any serde format (JSON is what RabbitMQ reads and writes).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Definitions {
    /// Bindings, as declared.
    #[serde(default)]
    pub bindings: Vec<BindingDefinition>,
    /// Exchanges (not the default exchange nor `amq.*`).
    #[serde(default)]
    pub exchanges: Vec<ExchangeDefinition>,
    /// Not modelled: kept as read.
    #[serde(default)]
    pub global_parameters: Vec<JsonValue>,
    /// Not modelled: kept as read.
    #[serde(default)]
    pub parameters: Vec<JsonValue>,
    /// Users' permissions, per virtual host.
    #[serde(default)]
    pub permissions: Vec<PermissionDefinition>,
    /// Not modelled: kept as read (a policy's settings are queue options
    /// here; declare them on the queues).
    #[serde(default)]
    pub policies: Vec<JsonValue>,
    /// Queues (not exclusive ones, which belong to a connection).
    #[serde(default)]
    pub queues: Vec<QueueDefinition>,
    /// The RabbitMQ version that wrote the file, if RabbitMQ did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbit_version: Option<String>,
    /// The same, as newer versions name it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rabbitmq_version: Option<String>,
    /// Users' topic permissions.
    #[serde(default)]
    pub topic_permissions: Vec<TopicPermissionDefinition>,
    /// Users, with their password hashes.
    #[serde(default)]
    pub users: Vec<UserDefinition>,
    /// Virtual hosts.
    #[serde(default)]
    pub vhosts: Vec<VhostDefinition>,
}

/// What loading definitions did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[non_exhaustive]
pub struct LoadReport {
    /// Exchanges declared.
    pub exchanges: usize,
    /// Queues declared.
    pub queues: usize,
    /// Bindings made.
    pub bindings: usize,
    /// Virtual hosts added (not counting those already there).
    pub vhosts: usize,
    /// Users added or replaced.
    pub users: usize,
    /// Permissions and topic permissions set.
    pub permissions: usize,
    /// Objects refused, with why (an argument interoffice does not
    /// implement, an inequivalent re-declaration, a binding to something
    /// missing, a virtual host that does not exist, an unreadable password
    /// hash, a permission pattern that does not compile).
    pub refused: Vec<String>,
    /// What the file holds that interoffice does not model (policies,
    /// parameters), by section.
    pub not_modelled: Vec<String>,
}

impl Broker {
    /// The broker as a RabbitMQ definitions file: every virtual host; every
    /// user of the built-in store, with its salted password hash and tags;
    /// every permission and topic permission; and in every virtual host
    /// every exchange (but the default and `amq.*` ones), every queue but
    /// exclusive ones, with its options written as RabbitMQ's `x-`
    /// arguments, and every binding. Sorted by virtual host and name
    /// (bindings by source, destination, key), so two exports of the same
    /// broker are identical. The deduplication window, which has no
    /// RabbitMQ form, is not written.
    ///
    /// ```
    /// use interoffice::{Broker, ExchangeKind, QueueOptions};
    /// let broker = Broker::new();
    /// let conn = broker.connect();
    /// conn.declare_exchange("orders", ExchangeKind::Topic, Default::default())?;
    /// conn.declare_queue("billing", QueueOptions { max_length: Some(1000), ..Default::default() })?;
    /// conn.bind_queue("billing", "orders", "order.#", None)?;
    ///
    /// let definitions = broker.export_definitions();
    /// let copy = Broker::new();
    /// let report = copy.load_definitions(&definitions);
    /// assert!(report.refused.is_empty(), "{report:?}");
    /// assert_eq!(copy.export_definitions(), definitions);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn export_definitions(&self) -> Definitions {
        let mut definitions = Definitions::default();
        for vhost in self.vhosts() {
            definitions.vhosts.push(VhostDefinition { name: vhost.name().into(), other: BTreeMap::new() });
            let (exchanges, queues, bindings) = export_vhost(&vhost);
            definitions.exchanges.extend(exchanges);
            definitions.queues.extend(queues);
            definitions.bindings.extend(bindings);
        }
        let store = &self.inner.users;
        definitions.users = store
            .users()
            .into_iter()
            .map(|user| {
                let (algorithm, hash) = store.password_hash(&user.name).unwrap_or_default();
                UserDefinition {
                    hashing_algorithm: algorithm.into(),
                    limits: empty_object(),
                    name: user.name,
                    password_hash: hash,
                    tags: user.tags,
                }
            })
            .collect();
        definitions.permissions = store
            .list_permissions()
            .into_iter()
            .map(|(user, vhost, p)| PermissionDefinition {
                configure: p.configure,
                read: p.read,
                user,
                vhost,
                write: p.write,
            })
            .collect();
        definitions.topic_permissions = store
            .list_topic_permissions()
            .into_iter()
            .map(|(user, vhost, t)| TopicPermissionDefinition {
                exchange: t.exchange,
                read: t.read,
                user,
                vhost,
                write: t.write,
            })
            .collect();
        definitions
    }

    /// Loads `definitions` as RabbitMQ imports them: virtual hosts (added
    /// if missing), users (added, or replaced with the file's password hash
    /// and tags), permissions and topic permissions, then in each virtual
    /// host exchanges, queues and bindings. Objects that cannot be loaded —
    /// an argument interoffice does not implement, a declaration
    /// inequivalent to an existing one, a virtual host that does not
    /// exist, an unreadable password hash, a pattern that does not compile
    /// — are refused one by one and listed in the report; the rest is
    /// loaded. Sections interoffice does not model are listed too.
    ///
    /// Loading is an administrator's act: the topology is declared without
    /// the permission checks a connection's user would get.
    pub fn load_definitions(&self, definitions: &Definitions) -> LoadReport {
        self.load_definitions_with(definitions, &|_, _| {})
    }

    /// [`load_definitions`](Self::load_definitions), letting `adjust` add
    /// to each queue's options what a definitions file cannot say (a
    /// restart's deduplication windows).
    pub(crate) fn load_definitions_with(
        &self,
        definitions: &Definitions,
        adjust: &dyn Fn(&QueueDefinition, &mut QueueOptions),
    ) -> LoadReport {
        let mut report = LoadReport::default();
        for vhost in &definitions.vhosts {
            match self.add_vhost(&vhost.name) {
                Ok(()) => report.vhosts += 1,
                Err(crate::access::UserError::VhostExists(_)) => {}
                Err(e) => report.refused.push(format!("vhost '{}': {e}", vhost.name)),
            }
        }
        let store = &self.inner.users;
        for user in &definitions.users {
            match store.put_user_with_hash(
                &user.name,
                &user.hashing_algorithm,
                &user.password_hash,
                user.tags.clone(),
            ) {
                Ok(()) => report.users += 1,
                Err(e) => report.refused.push(format!("user '{}': {e}", user.name)),
            }
        }
        for p in &definitions.permissions {
            let permissions = Permissions::new(&p.configure, &p.write, &p.read);
            match self.set_permissions(&p.user, &p.vhost, &permissions) {
                Ok(()) => report.permissions += 1,
                Err(e) => {
                    report.refused.push(format!("permissions of '{}' in vhost '{}': {e}", p.user, p.vhost))
                }
            }
        }
        for t in &definitions.topic_permissions {
            let topic = TopicPermissions {
                exchange: t.exchange.clone(),
                write: t.write.clone(),
                read: t.read.clone(),
            };
            match self.set_topic_permissions(&t.user, &t.vhost, &topic) {
                Ok(()) => report.permissions += 1,
                Err(e) => report.refused.push(format!(
                    "topic permissions of '{}' on '{}' in vhost '{}': {e}",
                    t.user, t.exchange, t.vhost
                )),
            }
        }
        let connections: BTreeMap<String, crate::Connection> = self
            .vhosts()
            .into_iter()
            .map(|vhost| {
                (vhost.name().to_owned(), self.connect_as_administrator(vhost, "interoffice-definitions"))
            })
            .collect();
        for exchange in &definitions.exchanges {
            let Some(conn) = connections.get(&exchange.vhost) else {
                report
                    .refused
                    .push(format!("exchange '{}': no virtual host '{}'", exchange.name, exchange.vhost));
                continue;
            };
            let (kind, delayed) = match exchange.kind.as_str() {
                "x-delayed-message" => {
                    match exchange.arguments.get("x-delayed-type").and_then(|t| match t {
                        JsonValue::String(s) => parse_kind(s),
                        _ => None,
                    }) {
                        Some(kind) => (kind, true),
                        None => {
                            report.refused.push(format!(
                                "exchange '{}': x-delayed-message without a valid x-delayed-type",
                                exchange.name
                            ));
                            continue;
                        }
                    }
                }
                other => match parse_kind(other) {
                    Some(kind) => (kind, false),
                    None => {
                        report
                            .refused
                            .push(format!("exchange '{}': unknown exchange type '{other}'", exchange.name));
                        continue;
                    }
                },
            };
            let mut arguments = exchange.arguments.clone();
            arguments.remove("x-delayed-type");
            let options = ExchangeOptions {
                durable: exchange.durable,
                auto_delete: exchange.auto_delete,
                internal: exchange.internal,
                delayed,
                arguments: to_table(&arguments),
                ..Default::default()
            };
            match conn.declare_exchange(&exchange.name, kind, options) {
                Ok(()) => report.exchanges += 1,
                Err(e) => report.refused.push(format!("exchange '{}': {e}", exchange.name)),
            }
        }
        for queue in &definitions.queues {
            let Some(conn) = connections.get(&queue.vhost) else {
                report.refused.push(format!("queue '{}': no virtual host '{}'", queue.name, queue.vhost));
                continue;
            };
            let mut arguments = queue.arguments.clone();
            if let Some(kind) = &queue.kind
                && kind != "classic"
            {
                arguments.entry("x-queue-type".into()).or_insert_with(|| JsonValue::String(kind.clone()));
            }
            let mut options = QueueOptions {
                durable: queue.durable,
                auto_delete: queue.auto_delete,
                arguments: to_table(&arguments),
                ..Default::default()
            };
            adjust(queue, &mut options);
            match conn.declare_queue(&queue.name, options) {
                Ok(_) => report.queues += 1,
                Err(e) => report.refused.push(format!("queue '{}': {e}", queue.name)),
            }
        }
        for binding in &definitions.bindings {
            let what =
                format!("binding '{}' → '{}' [{}]", binding.source, binding.destination, binding.routing_key);
            let Some(conn) = connections.get(&binding.vhost) else {
                report.refused.push(format!("{what}: no virtual host '{}'", binding.vhost));
                continue;
            };
            let arguments = to_table(&binding.arguments);
            let bound = match binding.destination_type.as_str() {
                "queue" => {
                    conn.bind_queue(&binding.destination, &binding.source, &binding.routing_key, arguments)
                }
                "exchange" => {
                    conn.bind_exchange(&binding.destination, &binding.source, &binding.routing_key, arguments)
                }
                other => {
                    report.refused.push(format!("{what}: unknown destination type '{other}'"));
                    continue;
                }
            };
            match bound {
                Ok(()) => report.bindings += 1,
                Err(e) => report.refused.push(format!("{what}: {e}")),
            }
        }
        let sections = [
            ("policies", &definitions.policies),
            ("parameters", &definitions.parameters),
            ("global_parameters", &definitions.global_parameters),
        ];
        for (name, entries) in sections {
            if !entries.is_empty() {
                report.not_modelled.push(format!(
                    "{name}: {} entr{} (not modelled; kept in the file, not applied)",
                    entries.len(),
                    if entries.len() == 1 { "y" } else { "ies" }
                ));
            }
        }
        for conn in connections.values() {
            conn.close();
        }
        report
    }
}

fn parse_kind(name: &str) -> Option<ExchangeKind> {
    [ExchangeKind::Direct, ExchangeKind::Fanout, ExchangeKind::Topic, ExchangeKind::Headers]
        .into_iter()
        .find(|kind| kind.as_str() == name)
}

/// One virtual host's exchanges, queues and bindings, sorted.
fn export_vhost(vhost: &Vhost) -> (Vec<ExchangeDefinition>, Vec<QueueDefinition>, Vec<BindingDefinition>) {
    let mut exchanges: Vec<ExchangeDefinition> = vhost
        .exchanges_snapshot()
        .into_iter()
        .filter(|e| !e.name.is_empty() && !e.name.starts_with("amq."))
        .map(|e| exchange_definition(vhost.name(), &e))
        .collect();
    exchanges.sort_by(|a, b| a.name.cmp(&b.name));
    let mut queues: Vec<QueueDefinition> = vhost
        .queues_snapshot()
        .into_iter()
        .filter(|q| !q.options.exclusive)
        .map(|q| queue_definition(vhost.name(), &q.name, &q.options, &q.policy))
        .collect();
    queues.sort_by(|a, b| a.name.cmp(&b.name));
    let exported: std::collections::HashSet<&str> = queues.iter().map(|q| q.name.as_str()).collect();
    let bindings = vhost
        .bindings()
        .into_iter()
        .filter(|b| b.destination_is_exchange || exported.contains(b.destination.as_str()))
        .map(|b| binding_definition(vhost.name(), &b))
        .collect();
    (exchanges, queues, bindings)
}

/// An exchange as a definitions file writes it.
pub(crate) fn exchange_definition(vhost: &str, e: &crate::exchange::Exchange) -> ExchangeDefinition {
    let mut arguments = from_table(&e.options.arguments);
    if let Some(alternate) = &e.options.alternate_exchange {
        arguments.insert("alternate-exchange".into(), JsonValue::String(alternate.clone()));
    }
    if e.options.delayed {
        arguments.insert("x-delayed-type".into(), JsonValue::String(e.kind.as_str().into()));
    }
    ExchangeDefinition {
        arguments,
        auto_delete: e.options.auto_delete,
        durable: e.options.durable,
        internal: e.options.internal,
        name: e.name.to_string(),
        kind: if e.options.delayed { "x-delayed-message".into() } else { e.kind.as_str().into() },
        vhost: vhost.into(),
    }
}

/// A queue as a definitions file writes it: its policy as `x-` arguments.
pub(crate) fn queue_definition(
    vhost: &str,
    name: &str,
    options: &QueueOptions,
    policy: &crate::queue::QueuePolicy,
) -> QueueDefinition {
    let mut arguments = from_table(&policy.other_arguments);
    let mut put = |key: &str, value: Option<JsonValue>| {
        if let Some(value) = value {
            arguments.insert(key.into(), value);
        }
    };
    let millis = |d: std::time::Duration| JsonValue::Int(i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let int = |n: usize| JsonValue::Int(i64::try_from(n).unwrap_or(i64::MAX));
    put("x-message-ttl", policy.message_ttl.map(millis));
    put("x-expires", policy.expires.map(millis));
    put("x-max-length", policy.max_length.map(int));
    put("x-max-length-bytes", policy.max_length_bytes.map(int));
    if policy.max_length.is_some() || policy.max_length_bytes.is_some() {
        put("x-overflow", Some(JsonValue::String(policy.overflow.as_str().into())));
    }
    put("x-dead-letter-exchange", policy.dead_letter_exchange.clone().map(JsonValue::String));
    put("x-dead-letter-routing-key", policy.dead_letter_routing_key.clone().map(JsonValue::String));
    put("x-max-priority", policy.max_priority.map(|p| JsonValue::Int(i64::from(p))));
    put("x-delivery-limit", policy.delivery_limit.map(|n| JsonValue::Int(i64::from(n))));
    put("x-single-active-consumer", policy.single_active_consumer.then_some(JsonValue::Bool(true)));
    let kind = match policy.queue_type {
        crate::queue::QueueType::Quorum => {
            put("x-queue-type", Some(JsonValue::String("quorum".into())));
            "quorum"
        }
        _ => "classic",
    };
    QueueDefinition {
        arguments,
        auto_delete: options.auto_delete,
        durable: options.durable,
        name: name.to_owned(),
        kind: Some(kind.into()),
        vhost: vhost.into(),
    }
}

/// A binding as a definitions file writes it.
pub(crate) fn binding_definition(vhost: &str, b: &crate::BindingInfo) -> BindingDefinition {
    BindingDefinition {
        arguments: from_table(&b.arguments),
        destination: b.destination.clone(),
        destination_type: if b.destination_is_exchange { "exchange" } else { "queue" }.into(),
        routing_key: b.routing_key.clone(),
        source: b.source.clone(),
        vhost: vhost.into(),
    }
}
