//! A connection's standing with the auth backend: who it is, where, and
//! the decisions it may reuse. Every operation of a connection asks here,
//! and only here, before it calls into its virtual host.

use std::cell::Cell;
use std::fmt;

use super::{AccessRefused, AuthBackend, AuthenticatedUser, IMPERSONATOR_TAG, Permission, Refusal, Resource};
use super::{GateRefusal, PublishGate};
use crate::exchange::{Exchange, ExchangeKind};
use crate::message::Message;
use crate::sync::{Arc, AtomicU64, Ordering};

/// What a connection decided about publishing to one exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct WriteDecision {
    /// Write permission on the exchange.
    allowed: bool,
    /// The user may have topic permissions there: ask per routing key
    /// (topic exchanges only).
    topic_checked: bool,
}

/// One remembered publish decision: connection (its grant's id), exchange
/// (its id: never reused, so a re-declared exchange is decided afresh),
/// and the backend revision it was decided under.
#[derive(Debug, Clone, Copy)]
struct CachedDecision {
    grant: u64,
    exchange: u64,
    revision: u64,
    decision: WriteDecision,
}

/// Slots of each thread's decision cache (direct-mapped by exchange and
/// connection). A thread publishing to a handful of exchanges hits every
/// time; a miss costs one question to the backend.
const CACHE_SLOTS: usize = 8;

thread_local! {
    /// Publish decisions remembered by this thread. Per thread, so the
    /// publish path shares nothing writable between threads: no lock, no
    /// atomic write, just a lookup and three comparisons.
    static DECISIONS: [Cell<Option<CachedDecision>>; CACHE_SLOTS] = const { [const { Cell::new(None) }; CACHE_SLOTS] };
}

/// Ids of grants, for the decision cache's keys.
static NEXT_GRANT: AtomicU64 = AtomicU64::new(1);

/// A connection's user, virtual host, backend and cached decisions.
pub(crate) struct Grant {
    /// Unique among grants: the decision cache's key for this connection.
    id: u64,
    user: AuthenticatedUser,
    vhost: Arc<str>,
    backend: Arc<dyn AuthBackend>,
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
        let id = NEXT_GRANT.fetch_add(1, Ordering::Relaxed);
        Grant { id, user, vhost: vhost.into(), backend }
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

    /// Write on exchange `name` (`exchange`, if it exists), and whether
    /// topic permissions may apply. Remembered per thread while the
    /// backend's revision holds: on the publish path, a revision load, a
    /// thread-local lookup and three comparisons.
    fn write_decision(&self, name: &str, exchange: Option<&Exchange>) -> WriteDecision {
        let revision = self.backend.revision();
        let key = match (revision, exchange) {
            (Some(revision), Some(exchange)) => Some((revision, exchange.id)),
            _ => None,
        };
        if let Some((revision, exchange)) = key {
            let slot = (exchange ^ self.id.rotate_left(3)) as usize % CACHE_SLOTS;
            let hit = DECISIONS.with(|slots| {
                slots[slot]
                    .get()
                    .filter(|c| c.grant == self.id && c.exchange == exchange && c.revision == revision)
            });
            if let Some(cached) = hit {
                return cached.decision;
            }
            let decision = self.decide_write(name);
            let cached = CachedDecision { grant: self.id, exchange, revision, decision };
            DECISIONS.with(|slots| slots[slot].set(Some(cached)));
            return decision;
        }
        self.decide_write(name)
    }

    /// Asks the backend about publishing to `name`.
    #[cold]
    #[inline(never)]
    fn decide_write(&self, name: &str) -> WriteDecision {
        let allowed = self.allows(Permission::Write, &Resource::exchange(name));
        let topic_checked = self.backend.has_topic_permissions(&self.user, &self.vhost, name).unwrap_or(true);
        WriteDecision { allowed, topic_checked }
    }

    /// `user_id`, if set, must name the connection's user (unless it has
    /// the impersonator tag).
    fn check_user_id(&self, message: &Message) -> Result<(), (String, String)> {
        match message.properties().user_id() {
            Some(claimed) if claimed != self.user.name && !self.user.has_tag(IMPERSONATOR_TAG) => {
                Err((claimed.to_owned(), self.user.name.clone()))
            }
            _ => Ok(()),
        }
    }
}

impl PublishGate for Grant {
    #[inline]
    fn admit(
        &self,
        name: &str,
        exchange: Option<&Exchange>,
        routing_key: &str,
        message: &Message,
    ) -> Result<(), GateRefusal> {
        // RabbitMQ's order: write on the exchange (before a missing one is
        // reported, so a refused user learns nothing of what exists), then
        // the topic permission, then `user_id`.
        let decision = self.write_decision(name, exchange);
        if !decision.allowed {
            return Err(GateRefusal::NotPermitted(self.refused(Refusal::Resource {
                permission: Permission::Write,
                resource: Resource::exchange(name),
            })));
        }
        if decision.topic_checked
            && let Some(exchange) = exchange
        {
            self.check_topic(Permission::Write, name, exchange.kind, routing_key)
                .map_err(GateRefusal::NotPermitted)?;
        }
        if message.properties().user_id().is_some() {
            self.check_user_id(message)
                .map_err(|(claimed, user)| GateRefusal::UserIdMismatch { claimed, user })?;
        }
        Ok(())
    }
}
