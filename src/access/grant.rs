//! A connection's standing with the auth backend: who it is, where, and
//! the decisions it may reuse. Every operation of a connection asks here,
//! and only here, before it calls into its virtual host.

use std::collections::HashMap;
use std::fmt;

use arc_swap::ArcSwap;

use super::{AccessRefused, AuthBackend, AuthenticatedUser, IMPERSONATOR_TAG, Permission, Refusal, Resource};
use crate::error::PublishError;
use crate::exchange::{Exchange, ExchangeKind};
use crate::message::Message;
use crate::sync::Arc;
use crate::vhost::publish::PublishGate;

/// Past this many exchanges a connection stops caching publish decisions
/// (it asks the backend each time) rather than grow without bound.
const MAX_CACHED_EXCHANGES: usize = 1024;

/// Publish decisions per exchange name, valid while the backend's revision
/// is `revision`.
#[derive(Default)]
struct WriteCache {
    revision: Option<u64>,
    allowed: HashMap<Box<str>, bool, foldhash::fast::RandomState>,
}

/// A connection's user, virtual host, backend and cached decisions.
pub(crate) struct Grant {
    user: AuthenticatedUser,
    vhost: Arc<str>,
    backend: Arc<dyn AuthBackend>,
    writes: ArcSwap<WriteCache>,
}

impl fmt::Debug for Grant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Grant")
            .field("user", &self.user.name)
            .field("vhost", &self.vhost)
            .finish_non_exhaustive()
    }
}

impl Grant {
    pub(crate) fn new(user: AuthenticatedUser, vhost: &str, backend: Arc<dyn AuthBackend>) -> Grant {
        Grant { user, vhost: vhost.into(), backend, writes: ArcSwap::from_pointee(WriteCache::default()) }
    }

    pub(crate) fn user(&self) -> &str {
        &self.user.name
    }

    fn refused(&self, refusal: Refusal) -> AccessRefused {
        AccessRefused { user: self.user.name.clone(), vhost: self.vhost.to_string(), refusal }
    }

    /// A backend's answer; an error is a denial (and is reported).
    fn decided(&self, answer: Result<bool, super::AuthBackendError>) -> bool {
        answer.unwrap_or_else(|_error| {
            #[cfg(feature = "tracing")]
            tracing::warn!(target: "interoffice::access", user = %self.user.name, vhost = %self.vhost, error = %_error, "denied: the auth backend failed");
            false
        })
    }

    /// May the user enter the virtual host?
    pub(crate) fn check_vhost(&self) -> Result<(), AccessRefused> {
        if self.decided(self.backend.check_vhost_access(&self.user, &self.vhost)) {
            Ok(())
        } else {
            Err(self.refused(Refusal::Vhost))
        }
    }

    fn allows(&self, permission: Permission, resource: &Resource) -> bool {
        self.decided(self.backend.check_resource_access(&self.user, &self.vhost, resource, permission))
    }

    /// Does the user have `permission` on `resource`? Asked afresh: only
    /// publishing caches.
    pub(crate) fn check(&self, permission: Permission, resource: Resource) -> Result<(), AccessRefused> {
        if self.allows(permission, &resource) {
            Ok(())
        } else {
            Err(self.refused(Refusal::Resource { permission, resource }))
        }
    }

    /// Has the user any permission at all on `resource` (a passive declare)?
    pub(crate) fn check_any(&self, resource: Resource) -> Result<(), AccessRefused> {
        if [Permission::Configure, Permission::Write, Permission::Read]
            .into_iter()
            .any(|p| self.allows(p, &resource))
        {
            Ok(())
        } else {
            Err(self.refused(Refusal::AnyPermission { resource }))
        }
    }

    /// The topic permission for `routing_key` on `exchange`, if it is a
    /// topic exchange.
    pub(crate) fn check_topic(
        &self,
        permission: Permission,
        exchange: &str,
        kind: ExchangeKind,
        routing_key: &str,
    ) -> Result<(), AccessRefused> {
        if kind != ExchangeKind::Topic
            || self.decided(self.backend.check_topic_access(
                &self.user,
                &self.vhost,
                exchange,
                routing_key,
                permission,
            ))
        {
            Ok(())
        } else {
            Err(self.refused(Refusal::Topic {
                permission,
                exchange: exchange.into(),
                routing_key: routing_key.into(),
            }))
        }
    }

    /// Write on exchange `name`, from the cache while the backend's
    /// revision holds: one atomic load and a hash lookup on the publish path.
    fn may_write(&self, name: &str) -> bool {
        let revision = self.backend.revision();
        if revision.is_some() {
            let cache = self.writes.load();
            if cache.revision == revision
                && let Some(&allowed) = cache.allowed.get(name)
            {
                return allowed;
            }
        }
        let allowed = self.allows(Permission::Write, &Resource::exchange(name));
        if revision.is_some() {
            self.writes.rcu(|cache| {
                let mut next = if cache.revision == revision && cache.allowed.len() < MAX_CACHED_EXCHANGES {
                    WriteCache { revision, allowed: cache.allowed.clone() }
                } else {
                    WriteCache { revision, allowed: HashMap::default() }
                };
                next.allowed.insert(name.into(), allowed);
                next
            });
        }
        allowed
    }

    /// `user_id`, if set, must name the connection's user (unless it has
    /// the impersonator tag).
    fn check_user_id(&self, message: &Message) -> Result<(), (String, String)> {
        match message.properties().user_id.as_deref() {
            Some(claimed) if claimed != self.user.name && !self.user.has_tag(IMPERSONATOR_TAG) => {
                Err((claimed.to_owned(), self.user.name.clone()))
            }
            _ => Ok(()),
        }
    }
}

impl PublishGate for Grant {
    fn admit(
        &self,
        name: &str,
        exchange: Option<&Exchange>,
        routing_key: &str,
        message: Message,
    ) -> Result<Message, PublishError> {
        // RabbitMQ's order: write on the exchange (before it is looked up,
        // so a refused user learns nothing of what exists), then the topic
        // permission, then `user_id`.
        if !self.may_write(name) {
            let refused = self.refused(Refusal::Resource {
                permission: Permission::Write,
                resource: Resource::exchange(name),
            });
            return Err(PublishError::NotPermitted { refused, message: Box::new(message) });
        }
        if let Some(exchange) = exchange
            && let Err(refused) = self.check_topic(Permission::Write, name, exchange.kind, routing_key)
        {
            return Err(PublishError::NotPermitted { refused, message: Box::new(message) });
        }
        if let Err((claimed, user)) = self.check_user_id(&message) {
            return Err(PublishError::UserIdMismatch { claimed, user, message: Box::new(message) });
        }
        Ok(message)
    }
}
