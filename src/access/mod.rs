//! Access control, as RabbitMQ models it: users who authenticate, virtual
//! hosts they may enter, and per user and virtual host three permissions —
//! configure, write, read — each a regular expression over resource names,
//! plus topic permissions over routing keys.
//!
//! Decisions come from an [`AuthBackend`]: the broker's built-in
//! [`UserStore`] by default, or the application's own policy. A connection
//! asks through its [`Grant`](grant::Grant) — the one narrow interface the
//! operations call — which caches the publish decision per exchange while
//! the backend's [`revision`](AuthBackend::revision) stays the same.
//!
//! Which operation needs what: see [`Permission`].

mod gate;
pub(crate) mod grant;
mod password;
mod pattern;
mod store;

use std::fmt;

use serde::{Deserialize, Serialize};

pub(crate) use gate::{GateRefusal, PublishGate};
pub use password::Credentials;
pub use pattern::InvalidPattern;
pub(crate) use store::check_name;
pub use store::{Permissions, TopicPermissions, UserError, UserInfo, UserStore};

/// The user `Broker::connect` connects as, as RabbitMQ's `guest`: it has
/// every permission on the default virtual host, password `guest`.
pub const DEFAULT_USER: &str = "guest";

/// The tag that lets a user publish messages whose `user_id` names another
/// user, as RabbitMQ's `impersonator` tag does.
pub const IMPERSONATOR_TAG: &str = "impersonator";

/// One of RabbitMQ's three permissions, each a pattern over the names of
/// exchanges and queues, per user and virtual host ([`Permissions`]).
///
/// Which operation needs what (RabbitMQ's table):
///
/// | operation | needs |
/// |---|---|
/// | declare or delete an exchange | configure on it |
/// | declare an exchange with an alternate exchange | also read on it, write on the alternate |
/// | declare or delete a queue (server-named: on the `amq.gen-…` name) | configure on it |
/// | declare a queue with a dead-letter exchange | also read on the queue, write on the exchange |
/// | passive declare, [`queue_stats`](crate::Connection::queue_stats) | any one permission on it |
/// | bind or unbind a queue | write on the queue, read on the exchange |
/// | bind or unbind an exchange | write on the destination, read on the source |
/// | bind to a topic exchange | also topic read on the binding key |
/// | publish | write on the exchange (`""` is `amq.default`) |
/// | publish to a topic exchange | also topic write on the routing key |
/// | an RPC server's reply, a last will | what publishing it needs (a reply: write on `amq.default`) |
/// | [`Connection::publisher`](crate::Connection::publisher) | write on the exchange (and each publish is checked again) |
/// | consume, get, purge | read on the queue |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    /// Declare and delete.
    Configure,
    /// Publish to an exchange; bind a queue or exchange as a destination.
    Write,
    /// Consume, get and purge a queue; bind from an exchange.
    Read,
}

impl Permission {
    /// `configure`, `write` or `read`, as RabbitMQ writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Configure => "configure",
            Permission::Write => "write",
            Permission::Read => "read",
        }
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a permission is asked for: an exchange or a queue, by name. The
/// default exchange is named `amq.default`, as RabbitMQ names it here.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Resource {
    /// An exchange.
    Exchange(String),
    /// A queue.
    Queue(String),
}

impl Resource {
    /// The exchange named `name`, the default exchange as `amq.default`.
    pub fn exchange(name: &str) -> Resource {
        Resource::Exchange(if name.is_empty() { "amq.default".into() } else { name.into() })
    }

    /// The queue named `name`.
    pub fn queue(name: &str) -> Resource {
        Resource::Queue(name.into())
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Exchange(name) | Resource::Queue(name) => name,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Resource::Exchange(name) => write!(f, "exchange '{name}'"),
            Resource::Queue(name) => write!(f, "queue '{name}'"),
        }
    }
}

/// A user the backend has authenticated: the name every decision is asked
/// for, and the user's tags (such as [`IMPERSONATOR_TAG`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthenticatedUser {
    /// The user's name.
    pub name: String,
    /// The user's tags.
    pub tags: Vec<String>,
}

impl AuthenticatedUser {
    /// Whether the user has tag `tag`.
    pub fn has_tag(&self, tag: &str) -> bool {
        self.tags.iter().any(|t| t == tag)
    }
}

/// A backend could not decide (its store is unreachable, say). The broker
/// then refuses: a decision it cannot get is a denial.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorisation backend failed: {0}")]
pub struct AuthBackendError(pub String);

/// Who may connect, and what they may do: RabbitMQ's authentication and
/// authorisation questions, answered by the application's own policy the
/// way RabbitMQ delegates them to an HTTP service. The broker's built-in
/// [`UserStore`] is one implementation; set another with
/// [`BrokerOptions::auth_backend`](crate::BrokerOptions::auth_backend).
///
/// Every method is called outside the broker's locks, and may be called
/// from any thread. An `Err` is a denial.
///
/// ```
/// use std::sync::Arc;
/// use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
/// use interoffice::{AuthBackend, AuthBackendError, AuthenticatedUser, Broker, BrokerOptions,
///                   Credentials, Message, Permission, PublishError, QueueOptions, Resource};
///
/// /// Everyone may do everything, until the kill switch is thrown.
/// #[derive(Default)]
/// struct KillSwitch { thrown: AtomicBool, revision: AtomicU64 }
///
/// impl AuthBackend for KillSwitch {
///     fn authenticate(&self, user: &str, _: &Credentials) -> Result<AuthenticatedUser, AuthBackendError> {
///         Ok(AuthenticatedUser { name: user.into(), tags: Vec::new() })
///     }
///     fn check_vhost_access(&self, _: &AuthenticatedUser, _: &str) -> Result<bool, AuthBackendError> {
///         Ok(true)
///     }
///     fn check_resource_access(&self, _: &AuthenticatedUser, _: &str, _: &Resource, _: Permission)
///         -> Result<bool, AuthBackendError> {
///         Ok(!self.thrown.load(Ordering::SeqCst))
///     }
///     fn check_topic_access(&self, _: &AuthenticatedUser, _: &str, _: &str, _: &str, _: Permission)
///         -> Result<bool, AuthBackendError> {
///         Ok(true)
///     }
///     fn revision(&self) -> Option<u64> {
///         Some(self.revision.load(Ordering::SeqCst))
///     }
/// }
///
/// let switch = Arc::new(KillSwitch::default());
/// let broker = Broker::with_options(BrokerOptions { auth_backend: Some(switch.clone()), ..Default::default() });
/// let conn = broker.connect();
/// conn.declare_queue("q", QueueOptions::default())?;
/// conn.publish("", "q", Message::new("before"))?;
/// switch.thrown.store(true, Ordering::SeqCst);
/// switch.revision.fetch_add(1, Ordering::SeqCst); // cached decisions are stale now
/// assert!(matches!(conn.publish("", "q", Message::new("after")), Err(PublishError::NotPermitted { .. })));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait AuthBackend: Send + Sync + 'static {
    /// Checks `credentials` for user `user`.
    ///
    /// # Errors
    ///
    /// The user is unknown, the credentials are wrong, or the backend
    /// failed; the connection is refused either way, without saying which.
    fn authenticate(
        &self,
        user: &str,
        credentials: &Credentials,
    ) -> Result<AuthenticatedUser, AuthBackendError>;

    /// The user a trusted, in-process [`Broker::connect`](crate::Broker::connect)
    /// connects as (named [`DEFAULT_USER`]), without credentials. By default
    /// the user with that name and no tags.
    fn trusted_user(&self, name: &str) -> AuthenticatedUser {
        AuthenticatedUser { name: name.into(), tags: Vec::new() }
    }

    /// Whether `user` may connect to virtual host `vhost`.
    ///
    /// # Errors
    ///
    /// The backend could not decide: a denial.
    fn check_vhost_access(&self, user: &AuthenticatedUser, vhost: &str) -> Result<bool, AuthBackendError>;

    /// Whether `user` has `permission` on `resource` in `vhost`.
    ///
    /// # Errors
    ///
    /// The backend could not decide: a denial.
    fn check_resource_access(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<bool, AuthBackendError>;

    /// Whether `user` may publish with (`Write`) or bind with (`Read`)
    /// `routing_key` on topic exchange `exchange` in `vhost`. Asked only
    /// for topic exchanges, after the resource permission was granted.
    ///
    /// # Errors
    ///
    /// The backend could not decide: a denial.
    fn check_topic_access(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        permission: Permission,
    ) -> Result<bool, AuthBackendError>;

    /// Whether `user` may have topic permissions on `exchange` in `vhost`
    /// at all: `Ok(false)` lets a connection skip
    /// [`check_topic_access`](Self::check_topic_access) for that exchange
    /// (cached with the write decision, while the revision holds). By
    /// default `Ok(true)`: ask on every publish to a topic exchange.
    ///
    /// # Errors
    ///
    /// The backend could not tell: topic access is then asked each time.
    fn has_topic_permissions(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        exchange: &str,
    ) -> Result<bool, AuthBackendError> {
        let _ = (user, vhost, exchange);
        Ok(true)
    }

    /// A number that changes whenever any decision may have changed, so
    /// connections may cache decisions while it stays the same. `None` (the
    /// default) forbids caching: the publish path asks on every publish.
    fn revision(&self) -> Option<u64> {
        None
    }
}

/// What was refused, in [`AccessRefused`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// Authentication failed: an unknown user or wrong credentials (not
    /// told apart, as RabbitMQ does not).
    Login,
    /// The user may not enter the virtual host.
    Vhost,
    /// The user lacks `permission` on `resource`.
    Resource {
        /// The missing permission.
        permission: Permission,
        /// What it was asked for.
        resource: Resource,
    },
    /// The user lacks the topic permission for `routing_key` on `exchange`.
    Topic {
        /// The missing permission.
        permission: Permission,
        /// The topic exchange.
        exchange: String,
        /// The routing key (publishing) or binding key (binding).
        routing_key: String,
    },
    /// A passive declaration of a resource on which the user has no
    /// permission at all.
    AnyPermission {
        /// What it was asked for.
        resource: Resource,
    },
}

/// `ACCESS_REFUSED`: naming the user, the virtual host, and what was
/// refused, worded as RabbitMQ words it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct AccessRefused {
    /// The user.
    pub user: String,
    /// The virtual host.
    pub vhost: String,
    /// What was refused.
    pub refusal: Refusal,
}

impl AccessRefused {
    /// The missing permission, if a permission was refused.
    pub fn permission(&self) -> Option<Permission> {
        match &self.refusal {
            Refusal::Resource { permission, .. } | Refusal::Topic { permission, .. } => Some(*permission),
            _ => None,
        }
    }
}

impl fmt::Display for AccessRefused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let AccessRefused { user, vhost, refusal } = self;
        match refusal {
            Refusal::Login => write!(
                f,
                "ACCESS_REFUSED - login refused for user '{user}': unknown user or wrong credentials"
            ),
            Refusal::Vhost => {
                write!(f, "ACCESS_REFUSED - access to vhost '{vhost}' refused for user '{user}'")
            }
            Refusal::Resource { permission, resource } => {
                write!(
                    f,
                    "ACCESS_REFUSED - {permission} access to {resource} in vhost '{vhost}' refused for user '{user}'"
                )
            }
            Refusal::Topic { permission, exchange, routing_key } => write!(
                f,
                "ACCESS_REFUSED - {permission} access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{user}'"
            ),
            Refusal::AnyPermission { resource } => write!(
                f,
                "ACCESS_REFUSED - no access to {resource} in vhost '{vhost}' for user '{user}' (a passive declare needs configure, write or read)"
            ),
        }
    }
}

/// The name of RabbitMQ's SHA-256 password hashing, the one interoffice writes.
pub(crate) fn password_algorithm_sha256() -> &'static str {
    password::Algorithm::SHA256
}

/// Says yes to everything: for the broker's own administrative acts
/// (loading definitions), never for a user's connection.
pub(crate) struct Unrestricted;

impl AuthBackend for Unrestricted {
    fn authenticate(&self, user: &str, _: &Credentials) -> Result<AuthenticatedUser, AuthBackendError> {
        Ok(AuthenticatedUser { name: user.into(), tags: vec![IMPERSONATOR_TAG.into()] })
    }

    fn check_vhost_access(&self, _: &AuthenticatedUser, _: &str) -> Result<bool, AuthBackendError> {
        Ok(true)
    }

    fn check_resource_access(
        &self,
        _: &AuthenticatedUser,
        _: &str,
        _: &Resource,
        _: Permission,
    ) -> Result<bool, AuthBackendError> {
        Ok(true)
    }

    fn check_topic_access(
        &self,
        _: &AuthenticatedUser,
        _: &str,
        _: &str,
        _: &str,
        _: Permission,
    ) -> Result<bool, AuthBackendError> {
        Ok(true)
    }

    fn revision(&self) -> Option<u64> {
        Some(0)
    }
}
