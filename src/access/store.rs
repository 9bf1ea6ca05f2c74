//! The built-in users and permissions: RabbitMQ's internal auth backend.
//!
//! Readers (every decision, on any thread) load one immutable snapshot
//! through `ArcSwap` and take no lock; writers (adding a user, setting a
//! permission) serialise on a mutex, copy, swap, and bump the revision, so
//! connections drop the decisions they cached.

use std::collections::BTreeMap;
use std::fmt;

use arc_swap::ArcSwap;

use super::password::{Algorithm, Credentials, PasswordHash};
use super::pattern::{InvalidPattern, Pattern};
use super::{AuthBackend, AuthBackendError, AuthenticatedUser, Permission, Resource};
use crate::hash::FastHashMap;
use crate::sync::{Arc, AtomicU64, Mutex, Ordering};

/// A user's three permission patterns in one virtual host, as RabbitMQ
/// sets them (`rabbitmqctl set_permissions`): regular expressions matched,
/// unanchored, against the names of exchanges and queues. `""` denies.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Permissions {
    /// Declare and delete.
    pub configure: String,
    /// Publish; be a binding's destination.
    pub write: String,
    /// Consume, get, purge; be a binding's source.
    pub read: String,
}

impl Permissions {
    /// `.*` for all three: everything.
    pub fn full() -> Permissions {
        Permissions::new(".*", ".*", ".*")
    }

    /// The three patterns.
    pub fn new(configure: &str, write: &str, read: &str) -> Permissions {
        Permissions { configure: configure.into(), write: write.into(), read: read.into() }
    }
}

/// A user's topic permissions on one topic exchange in one virtual host,
/// as RabbitMQ sets them (`rabbitmqctl set_topic_permissions`): regular
/// expressions over routing keys when publishing (`write`) and over binding
/// keys when binding (`read`). `{username}` and `{vhost}` in a pattern are
/// replaced by the user's and the virtual host's names, regex-escaped.
/// Without topic permissions on an exchange, every key is allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TopicPermissions {
    /// The topic exchange.
    pub exchange: String,
    /// Routing keys the user may publish with.
    pub write: String,
    /// Binding keys the user may bind with.
    pub read: String,
}

/// A user as listed: name and tags (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// The user's name.
    pub name: String,
    /// The user's tags.
    pub tags: Vec<String>,
}

/// Why a change to users, permissions or virtual hosts was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UserError {
    /// `add_user` for a name already taken.
    #[error("user '{0}' already exists")]
    UserExists(String),
    /// No user of that name.
    #[error("no such user '{0}'")]
    NoSuchUser(String),
    /// No virtual host of that name.
    #[error("no such vhost '{0}'")]
    NoSuchVhost(String),
    /// `add_vhost` for a name already taken.
    #[error("vhost '{0}' already exists")]
    VhostExists(String),
    /// The default virtual host cannot be deleted: `Broker::connect` uses it.
    #[error("the default vhost '/' cannot be deleted: Broker::connect uses it")]
    DefaultVhost,
    /// A name that cannot be used.
    #[error("invalid name '{name}': {reason}")]
    InvalidName {
        /// The name (cut to 255 bytes).
        name: String,
        /// Why.
        reason: &'static str,
    },
    /// A permission pattern that does not compile (or is too large).
    #[error(transparent)]
    InvalidPattern(#[from] InvalidPattern),
    /// A password hash from a definitions file that cannot be read.
    #[error("user '{user}': unreadable password hash: {reason}")]
    InvalidPasswordHash {
        /// The user.
        user: String,
        /// Why.
        reason: String,
    },
    /// The broker's data directory could not record the new virtual host
    /// (a full disk, an I/O error): nothing was changed.
    #[error("the store could not record it: {0}")]
    StoreFailed(crate::StoreError),
}

/// Checks a user or virtual host name: 1 to 255 bytes.
pub(crate) fn check_name(name: &str) -> Result<(), UserError> {
    if name.is_empty() {
        return Err(UserError::InvalidName { name: String::new(), reason: "empty" });
    }
    if name.len() > crate::MAX_NAME_LEN {
        let mut cut = crate::MAX_NAME_LEN;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        return Err(UserError::InvalidName { name: name[..cut].into(), reason: "longer than 255 bytes" });
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct User {
    hash: Option<PasswordHash>,
    tags: Vec<String>,
}

#[derive(Debug, Clone)]
struct CompiledPermissions {
    configure: Pattern,
    write: Pattern,
    read: Pattern,
}

impl CompiledPermissions {
    fn pattern(&self, permission: Permission) -> &Pattern {
        match permission {
            Permission::Configure => &self.configure,
            Permission::Write => &self.write,
            Permission::Read => &self.read,
        }
    }
}

#[derive(Debug, Clone)]
struct CompiledTopic {
    write: Pattern,
    read: Pattern,
}

#[derive(Debug, Clone, Default)]
struct State {
    users: BTreeMap<String, User>,
    /// user → vhost → permissions.
    permissions: FastHashMap<String, BTreeMap<String, Arc<CompiledPermissions>>>,
    /// user → vhost → exchange → topic permissions.
    topics: FastHashMap<String, BTreeMap<String, BTreeMap<String, Arc<CompiledTopic>>>>,
}

/// The built-in users, permissions and topic permissions: an
/// [`AuthBackend`]. Cheap to clone (a handle); a custom backend can wrap
/// one (from [`Broker::users`](crate::Broker::users)) and add its own rules.
#[derive(Clone, Default)]
pub struct UserStore {
    inner: Arc<StoreInner>,
}

#[derive(Default)]
struct StoreInner {
    state: ArcSwap<State>,
    writer: Mutex<()>,
    revision: AtomicU64,
}

impl fmt::Debug for UserStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.inner.state.load();
        f.debug_struct("UserStore")
            .field("users", &state.users.keys().collect::<Vec<_>>())
            .field("revision", &self.inner.revision.load(Ordering::Relaxed))
            .finish()
    }
}

impl UserStore {
    /// An empty store.
    pub fn new() -> Self {
        UserStore::default()
    }

    /// Changes the state under the writer lock; bumps the revision if `edit` succeeded.
    fn edit<T>(&self, edit: impl FnOnce(&mut State) -> Result<T, UserError>) -> Result<T, UserError> {
        let _writer = self.inner.writer.lock();
        let mut state = State::clone(&self.inner.state.load());
        let out = edit(&mut state)?;
        self.inner.state.store(Arc::new(state));
        self.inner.revision.fetch_add(1, Ordering::AcqRel);
        Ok(out)
    }

    /// Adds user `name` with a password (stored as a salted hash; `None`:
    /// a user who cannot log in with a password) and `tags`.
    ///
    /// # Errors
    ///
    /// [`UserError::UserExists`], or an invalid name.
    pub fn add_user(
        &self,
        name: &str,
        credentials: Option<&Credentials>,
        tags: &[&str],
    ) -> Result<(), UserError> {
        check_name(name)?;
        let hash = credentials.map(|c| PasswordHash::new(c.secret()));
        self.insert_user(name, hash, tags.iter().map(|t| (*t).to_owned()).collect())
    }

    pub(crate) fn insert_user(
        &self,
        name: &str,
        hash: Option<PasswordHash>,
        tags: Vec<String>,
    ) -> Result<(), UserError> {
        self.edit(|state| {
            if state.users.contains_key(name) {
                return Err(UserError::UserExists(name.into()));
            }
            state.users.insert(name.into(), User { hash, tags });
            Ok(())
        })
    }

    /// Adds or replaces user `name` from a definitions file's hash.
    pub(crate) fn put_user_with_hash(
        &self,
        name: &str,
        algorithm: &str,
        encoded: &str,
        tags: Vec<String>,
    ) -> Result<(), UserError> {
        check_name(name)?;
        let hash = if encoded.is_empty() {
            None
        } else {
            let invalid = |reason: String| UserError::InvalidPasswordHash { user: name.into(), reason };
            let algorithm = Algorithm::from_name(algorithm)
                .ok_or_else(|| invalid(format!("hashing algorithm '{algorithm}' not implemented")))?;
            Some(PasswordHash::from_encoded(algorithm, encoded).ok_or_else(|| invalid("malformed".into()))?)
        };
        self.edit(|state| {
            state.users.insert(name.into(), User { hash, tags });
            Ok(())
        })
    }

    /// Deletes user `name`, with its permissions and topic permissions.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn delete_user(&self, name: &str) -> Result<(), UserError> {
        self.edit(|state| {
            state.users.remove(name).ok_or_else(|| UserError::NoSuchUser(name.into()))?;
            state.permissions.remove(name);
            state.topics.remove(name);
            Ok(())
        })
    }

    /// Sets user `name`'s password.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn change_password(&self, name: &str, credentials: &Credentials) -> Result<(), UserError> {
        let hash = PasswordHash::new(credentials.secret());
        self.edit(|state| {
            let user = state.users.get_mut(name).ok_or_else(|| UserError::NoSuchUser(name.into()))?;
            user.hash = Some(hash);
            Ok(())
        })
    }

    /// Replaces user `name`'s tags.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn set_user_tags(&self, name: &str, tags: &[&str]) -> Result<(), UserError> {
        self.edit(|state| {
            let user = state.users.get_mut(name).ok_or_else(|| UserError::NoSuchUser(name.into()))?;
            user.tags = tags.iter().map(|t| (*t).to_owned()).collect();
            Ok(())
        })
    }

    /// Every user, by name.
    pub fn users(&self) -> Vec<UserInfo> {
        let state = self.inner.state.load();
        state.users.iter().map(|(name, u)| UserInfo { name: name.clone(), tags: u.tags.clone() }).collect()
    }

    /// User `name`'s password hash as a definitions file holds it:
    /// (algorithm, base64), or empty strings for a passwordless user.
    pub(crate) fn password_hash(&self, name: &str) -> Option<(&'static str, String)> {
        let state = self.inner.state.load();
        let user = state.users.get(name)?;
        Some(match &user.hash {
            Some(hash) => (hash.algorithm().name(), hash.encoded()),
            None => (Algorithm::SHA256, String::new()),
        })
    }

    /// Sets user `user`'s permissions in `vhost` (the store does not know
    /// virtual hosts: [`Broker::set_permissions`](crate::Broker::set_permissions)
    /// checks that it exists).
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`], or a pattern that does not compile.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: &Permissions,
    ) -> Result<(), UserError> {
        let compiled = Arc::new(CompiledPermissions {
            configure: Pattern::new(&permissions.configure)?,
            write: Pattern::new(&permissions.write)?,
            read: Pattern::new(&permissions.read)?,
        });
        self.edit(|state| {
            if !state.users.contains_key(user) {
                return Err(UserError::NoSuchUser(user.into()));
            }
            state.permissions.entry(user.into()).or_default().insert(vhost.into(), compiled);
            Ok(())
        })
    }

    /// Removes user `user`'s permissions in `vhost` (and so its access to it).
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), UserError> {
        self.edit(|state| {
            if !state.users.contains_key(user) {
                return Err(UserError::NoSuchUser(user.into()));
            }
            if let Some(by_vhost) = state.permissions.get_mut(user) {
                by_vhost.remove(vhost);
            }
            Ok(())
        })
    }

    /// User `user`'s permissions in `vhost`, if any.
    pub fn permissions(&self, user: &str, vhost: &str) -> Option<Permissions> {
        let state = self.inner.state.load();
        state.permissions.get(user)?.get(vhost).map(|p| Permissions {
            configure: p.configure.source().into(),
            write: p.write.source().into(),
            read: p.read.source().into(),
        })
    }

    /// Every (user, vhost, permissions), sorted by user and vhost.
    pub fn list_permissions(&self) -> Vec<(String, String, Permissions)> {
        let state = self.inner.state.load();
        let mut out: Vec<(String, String, Permissions)> = state
            .permissions
            .iter()
            .flat_map(|(user, by_vhost)| {
                by_vhost.iter().map(move |(vhost, p)| {
                    let permissions = Permissions {
                        configure: p.configure.source().into(),
                        write: p.write.source().into(),
                        read: p.read.source().into(),
                    };
                    (user.clone(), vhost.clone(), permissions)
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    /// Sets user `user`'s topic permissions on one exchange in `vhost`.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`], or a pattern that does not compile once
    /// `{username}` and `{vhost}` are replaced.
    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        topic: &TopicPermissions,
    ) -> Result<(), UserError> {
        check_name(&topic.exchange)?;
        let compiled = Arc::new(CompiledTopic {
            write: Pattern::expanded(&topic.write, user, vhost)?,
            read: Pattern::expanded(&topic.read, user, vhost)?,
        });
        self.edit(|state| {
            if !state.users.contains_key(user) {
                return Err(UserError::NoSuchUser(user.into()));
            }
            let by_exchange = state.topics.entry(user.into()).or_default().entry(vhost.into()).or_default();
            by_exchange.insert(topic.exchange.clone(), compiled);
            Ok(())
        })
    }

    /// Removes user `user`'s topic permissions in `vhost`: on `exchange`,
    /// or on every exchange with `None`.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn clear_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        exchange: Option<&str>,
    ) -> Result<(), UserError> {
        self.edit(|state| {
            if !state.users.contains_key(user) {
                return Err(UserError::NoSuchUser(user.into()));
            }
            if let Some(by_vhost) = state.topics.get_mut(user) {
                match exchange {
                    None => {
                        by_vhost.remove(vhost);
                    }
                    Some(exchange) => {
                        if let Some(by_exchange) = by_vhost.get_mut(vhost) {
                            by_exchange.remove(exchange);
                        }
                    }
                }
            }
            Ok(())
        })
    }

    /// Every (user, vhost, topic permissions), sorted by user, vhost, exchange.
    pub fn list_topic_permissions(&self) -> Vec<(String, String, TopicPermissions)> {
        let state = self.inner.state.load();
        let mut out = Vec::new();
        for (user, by_vhost) in &state.topics {
            for (vhost, by_exchange) in by_vhost {
                for (exchange, topic) in by_exchange {
                    let permissions = TopicPermissions {
                        exchange: exchange.clone(),
                        write: topic.write.source().into(),
                        read: topic.read.source().into(),
                    };
                    out.push((user.clone(), vhost.clone(), permissions));
                }
            }
        }
        out.sort_by(|a, b| (&a.0, &a.1, &a.2.exchange).cmp(&(&b.0, &b.1, &b.2.exchange)));
        out
    }

    /// Forgets every permission in a deleted virtual host.
    pub(crate) fn forget_vhost(&self, vhost: &str) {
        let _unfailing = self.edit(|state| {
            for by_vhost in state.permissions.values_mut() {
                by_vhost.remove(vhost);
            }
            for by_vhost in state.topics.values_mut() {
                by_vhost.remove(vhost);
            }
            Ok(())
        });
    }
}

impl AuthBackend for UserStore {
    fn authenticate(
        &self,
        user: &str,
        credentials: &Credentials,
    ) -> Result<AuthenticatedUser, AuthBackendError> {
        let state = self.inner.state.load();
        // Hash even for an unknown user, so timing does not tell users apart.
        let dummy;
        let (hash, tags) = match state.users.get(user) {
            Some(User { hash: Some(hash), tags }) => (hash, Some(tags)),
            _ => {
                dummy = PasswordHash::new("");
                (&dummy, None)
            }
        };
        let verified = hash.verify(credentials.secret());
        match tags {
            Some(tags) if verified => Ok(AuthenticatedUser { name: user.into(), tags: tags.clone() }),
            _ => Err(AuthBackendError("unknown user or wrong credentials".into())),
        }
    }

    fn trusted_user(&self, name: &str) -> AuthenticatedUser {
        let tags = self.inner.state.load().users.get(name).map(|u| u.tags.clone()).unwrap_or_default();
        AuthenticatedUser { name: name.into(), tags }
    }

    fn check_vhost_access(&self, user: &AuthenticatedUser, vhost: &str) -> Result<bool, AuthBackendError> {
        let state = self.inner.state.load();
        Ok(state.permissions.get(&user.name).is_some_and(|by_vhost| by_vhost.contains_key(vhost)))
    }

    fn check_resource_access(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        resource: &Resource,
        permission: Permission,
    ) -> Result<bool, AuthBackendError> {
        let state = self.inner.state.load();
        let Some(permissions) = state.permissions.get(&user.name).and_then(|by_vhost| by_vhost.get(vhost))
        else {
            return Ok(false);
        };
        Ok(permissions.pattern(permission).matches(resource.name()))
    }

    fn check_topic_access(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        exchange: &str,
        routing_key: &str,
        permission: Permission,
    ) -> Result<bool, AuthBackendError> {
        let state = self.inner.state.load();
        let topic = state
            .topics
            .get(&user.name)
            .and_then(|by_vhost| by_vhost.get(vhost))
            .and_then(|by_exchange| by_exchange.get(exchange));
        Ok(match (topic, permission) {
            (None, _) => true,
            (Some(topic), Permission::Write) => topic.write.matches(routing_key),
            (Some(topic), Permission::Read) => topic.read.matches(routing_key),
            // Topic permissions have no configure pattern.
            (Some(_), Permission::Configure) => false,
        })
    }

    fn has_topic_permissions(
        &self,
        user: &AuthenticatedUser,
        vhost: &str,
        exchange: &str,
    ) -> Result<bool, AuthBackendError> {
        let state = self.inner.state.load();
        Ok(state
            .topics
            .get(&user.name)
            .and_then(|by_vhost| by_vhost.get(vhost))
            .is_some_and(|by_exchange| by_exchange.contains_key(exchange)))
    }

    fn revision(&self) -> Option<u64> {
        Some(self.inner.revision.load(Ordering::Acquire))
    }
}
