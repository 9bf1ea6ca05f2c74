//! Links declared in a definitions file, as RabbitMQ declares its dynamic
//! shovels: `parameters` entries of component `shovel`. One side is this
//! bus — written `amqp://` with no host, which is how RabbitMQ names the
//! broker a shovel runs on — and the other a RabbitMQ URL. Only what a
//! link implements is accepted: a queue as the source, an exchange (or a
//! queue, through the default exchange) as the destination, `ack-mode`
//! `on-confirm`; anything else is refused by name.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{AmqpUrl, LinkOptions};
use crate::definitions::JsonValue;

/// Which way a link forwards.
#[derive(Clone, PartialEq, Eq)]
pub enum LinkDirection {
    /// A local queue to a RabbitMQ exchange.
    Outbound {
        /// The local queue.
        local_queue: String,
        /// RabbitMQ (password hidden in `Debug`).
        remote: AmqpUrl,
        /// The RabbitMQ exchange (`""`: the default one).
        remote_exchange: String,
        /// The routing key, or the message's own.
        routing_key: Option<String>,
    },
    /// A RabbitMQ queue to a local exchange.
    Inbound {
        /// RabbitMQ (password hidden in `Debug`).
        remote: AmqpUrl,
        /// The RabbitMQ queue.
        remote_queue: String,
        /// The local exchange (`""`: the default one).
        local_exchange: String,
        /// The routing key, or the message's own.
        routing_key: Option<String>,
    },
}

impl std::fmt::Debug for LinkDirection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkDirection::Outbound { local_queue, remote, remote_exchange, routing_key } => f
                .debug_struct("Outbound")
                .field("local_queue", local_queue)
                .field("remote", remote)
                .field("remote_exchange", remote_exchange)
                .field("routing_key", routing_key)
                .finish(),
            LinkDirection::Inbound { remote, remote_queue, local_exchange, routing_key } => f
                .debug_struct("Inbound")
                .field("remote", remote)
                .field("remote_queue", remote_queue)
                .field("local_exchange", local_exchange)
                .field("routing_key", routing_key)
                .finish(),
        }
    }
}

/// A link as a definitions file holds it (a shovel parameter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkDefinition {
    /// The shovel's name.
    pub name: String,
    /// The local virtual host it belongs to.
    pub vhost: String,
    /// Which way, between what.
    pub direction: LinkDirection,
    /// Its options (`prefetch-count`, `reconnect-delay`).
    pub options: LinkOptions,
}

/// The shovel URI that names this bus.
const LOCAL: &str = "amqp://";

fn string(value: &BTreeMap<String, JsonValue>, key: &str) -> Option<String> {
    match value.get(key) {
        Some(JsonValue::String(s)) => Some(s.clone()),
        _ => None,
    }
}

/// A URI field: a string, or RabbitMQ's list of them (the first is used).
fn uri(value: &BTreeMap<String, JsonValue>, key: &str) -> Option<String> {
    match value.get(key) {
        Some(JsonValue::String(s)) => Some(s.clone()),
        Some(JsonValue::Array(list)) => list.iter().find_map(|v| match v {
            JsonValue::String(s) => Some(s.clone()),
            _ => None,
        }),
        _ => None,
    }
}

impl LinkDefinition {
    /// Reads one `parameters` entry; `Ok(None)` if it is not a shovel.
    ///
    /// # Errors
    ///
    /// Why the shovel cannot be a link (a field missing, or something a
    /// link does not implement), naming it.
    pub fn from_parameter(parameter: &JsonValue) -> Result<Option<LinkDefinition>, String> {
        let JsonValue::Object(entry) = parameter else { return Ok(None) };
        if string(entry, "component").as_deref() != Some("shovel") {
            return Ok(None);
        }
        let name = string(entry, "name").ok_or("a shovel without a name")?;
        let vhost = string(entry, "vhost").unwrap_or_else(|| "/".into());
        let Some(JsonValue::Object(value)) = entry.get("value") else {
            return Err(format!("shovel '{name}': no value"));
        };
        let refuse = |why: String| format!("shovel '{name}': {why}");
        for key in value.keys() {
            let known = [
                "src-protocol",
                "src-uri",
                "src-queue",
                "dest-protocol",
                "dest-uri",
                "dest-exchange",
                "dest-exchange-key",
                "dest-queue",
                "ack-mode",
                "prefetch-count",
                "reconnect-delay",
                "src-delete-after",
                "dest-add-forward-headers",
            ];
            if !known.contains(&key.as_str()) {
                return Err(refuse(format!("'{key}' is not implemented by interoffice links")));
            }
        }
        for protocol in ["src-protocol", "dest-protocol"] {
            if let Some(p) = string(value, protocol)
                && p != "amqp091"
            {
                return Err(refuse(format!("{protocol} '{p}': only amqp091")));
            }
        }
        match string(value, "ack-mode").as_deref() {
            None | Some("on-confirm") => {}
            Some(other) => {
                return Err(refuse(format!("ack-mode '{other}': links acknowledge on-confirm only")));
            }
        }
        match value.get("src-delete-after") {
            None => {}
            Some(JsonValue::String(s)) if s == "never" => {}
            Some(_) => return Err(refuse("src-delete-after: links never stop by themselves".into())),
        }
        if matches!(value.get("dest-add-forward-headers"), Some(JsonValue::Bool(true))) {
            return Err(refuse("dest-add-forward-headers is not implemented".into()));
        }
        let src = uri(value, "src-uri").ok_or_else(|| refuse("no src-uri".into()))?;
        let dest = uri(value, "dest-uri").ok_or_else(|| refuse("no dest-uri".into()))?;
        let src_queue = string(value, "src-queue")
            .ok_or_else(|| refuse("no src-queue (only a queue can be a source)".into()))?;
        let (exchange, key) = match (string(value, "dest-exchange"), string(value, "dest-queue")) {
            (Some(exchange), None) => (exchange, string(value, "dest-exchange-key")),
            (None, Some(queue)) => (String::new(), Some(queue)),
            _ => return Err(refuse("exactly one of dest-exchange and dest-queue".into())),
        };
        let direction = match (src == LOCAL, dest == LOCAL) {
            (true, false) => LinkDirection::Outbound {
                local_queue: src_queue,
                remote: AmqpUrl::new(dest),
                remote_exchange: exchange,
                routing_key: key,
            },
            (false, true) => LinkDirection::Inbound {
                remote: AmqpUrl::new(src),
                remote_queue: src_queue,
                local_exchange: exchange,
                routing_key: key,
            },
            _ => return Err(refuse(format!("one side must be this bus ('{LOCAL}') and the other RabbitMQ"))),
        };
        let mut options = LinkOptions::default();
        if let Some(value) = value.get("prefetch-count") {
            let JsonValue::Int(n) = value else {
                return Err(refuse("prefetch-count: not an integer".into()));
            };
            options.prefetch = u16::try_from(*n)
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| refuse(format!("prefetch-count {n}: 1 to 65535")))?;
        }
        if let Some(value) = value.get("reconnect-delay") {
            let seconds = match value {
                JsonValue::Int(n) if *n >= 0 => *n as f64,
                JsonValue::Float(x) if *x >= 0.0 && x.is_finite() => *x,
                _ => return Err(refuse("reconnect-delay: a non-negative number of seconds".into())),
            };
            let delay = Duration::try_from_secs_f64(seconds)
                .unwrap_or(crate::clock::MAX_DURATION)
                .min(crate::clock::MAX_DURATION);
            options.reconnect_initial = delay;
            options.reconnect_max = options.reconnect_max.max(delay);
        }
        Ok(Some(LinkDefinition { name, vhost, direction, options }))
    }

    /// The shovel parameter, as a definitions file holds it (the password
    /// of its RabbitMQ URL included: a definitions file is a secret, as
    /// RabbitMQ's own are).
    pub fn to_parameter(&self) -> JsonValue {
        let mut value = BTreeMap::new();
        let mut put = |key: &str, v: &str| {
            value.insert(key.to_owned(), JsonValue::String(v.to_owned()));
        };
        put("ack-mode", "on-confirm");
        put("src-protocol", "amqp091");
        put("dest-protocol", "amqp091");
        match &self.direction {
            LinkDirection::Outbound { local_queue, remote, remote_exchange, routing_key } => {
                put("src-uri", LOCAL);
                put("src-queue", local_queue);
                put("dest-uri", remote.secret());
                put("dest-exchange", remote_exchange);
                if let Some(key) = routing_key {
                    put("dest-exchange-key", key);
                }
            }
            LinkDirection::Inbound { remote, remote_queue, local_exchange, routing_key } => {
                put("src-uri", remote.secret());
                put("src-queue", remote_queue);
                put("dest-uri", LOCAL);
                put("dest-exchange", local_exchange);
                if let Some(key) = routing_key {
                    put("dest-exchange-key", key);
                }
            }
        }
        value.insert("prefetch-count".into(), JsonValue::Int(i64::from(self.options.prefetch)));
        value
            .insert("reconnect-delay".into(), JsonValue::Float(self.options.reconnect_initial.as_secs_f64()));
        JsonValue::Object(BTreeMap::from([
            ("component".to_owned(), JsonValue::String("shovel".into())),
            ("name".to_owned(), JsonValue::String(self.name.clone())),
            ("value".to_owned(), JsonValue::Object(value)),
            ("vhost".to_owned(), JsonValue::String(self.vhost.clone())),
        ]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shovel(value: &str) -> JsonValue {
        let text = format!(r#"{{"component": "shovel", "name": "s", "vhost": "/", "value": {value}}}"#);
        serde_json::from_str(&text).unwrap()
    }

    #[test]
    fn a_shovel_reads_as_a_link_and_writes_back() {
        let parameter = shovel(
            r#"{"src-uri": "amqp://", "src-queue": "billing", "dest-uri": "amqp://u:p@rabbit/%2f",
                "dest-exchange": "orders", "dest-exchange-key": "order.placed", "ack-mode": "on-confirm",
                "prefetch-count": 64, "reconnect-delay": 2}"#,
        );
        let link = LinkDefinition::from_parameter(&parameter).unwrap().unwrap();
        assert!(
            matches!(&link.direction, LinkDirection::Outbound { local_queue, .. } if local_queue == "billing")
        );
        assert_eq!(link.options.prefetch, 64);
        assert_eq!(link.options.reconnect_initial, Duration::from_secs(2));
        assert!(!format!("{link:?}").contains(":p@"), "no password in Debug");
        let again = LinkDefinition::from_parameter(&link.to_parameter()).unwrap().unwrap();
        assert_eq!(again, link);
    }

    #[test]
    fn what_a_link_does_not_implement_is_refused_by_name() {
        for (value, why) in [
            (
                r#"{"src-uri": "amqp://", "src-queue": "q", "dest-uri": "amqp://r", "dest-exchange": "x", "ack-mode": "no-ack"}"#,
                "ack-mode",
            ),
            (
                r#"{"src-uri": "amqp://a", "src-queue": "q", "dest-uri": "amqp://b", "dest-exchange": "x"}"#,
                "one side",
            ),
            (
                r#"{"src-uri": "amqp://", "src-exchange": "x", "dest-uri": "amqp://r", "dest-queue": "q"}"#,
                "src-exchange",
            ),
            (
                r#"{"src-uri": "amqp://", "src-queue": "q", "dest-uri": "amqp://r", "dest-exchange": "x", "prefetch-count": -1}"#,
                "prefetch-count",
            ),
            (
                r#"{"src-uri": "amqp://", "src-queue": "q", "dest-uri": "amqp://r", "dest-protocol": "amqp10", "dest-address": "a"}"#,
                "amqp10",
            ),
        ] {
            let error = LinkDefinition::from_parameter(&shovel(value)).unwrap_err();
            assert!(error.contains(why) || error.contains("not implemented"), "{value}: {error}");
        }
        let policy: JsonValue =
            serde_json::from_str(r#"{"component": "federation-upstream", "name": "u"}"#).unwrap();
        assert_eq!(LinkDefinition::from_parameter(&policy), Ok(None));
    }
}
