//! The broker's tenancy: virtual hosts, users, permissions and topic
//! permissions — the administrator's side of access control (what a
//! connection may then do is asked of [`crate::access`] on each
//! operation).

use super::{Broker, VhostMap};
use crate::access::{Credentials, Permissions, TopicPermissions, UserError, UserStore};
use crate::sync::Arc;
use crate::vhost::{DEFAULT_VHOST, Vhost, VirtualHost};

impl Broker {
    /// Adds virtual host `name`, with the standard exchanges. Nobody but
    /// users given permissions there ([`set_permissions`](Self::set_permissions))
    /// may connect to it.
    ///
    /// # Errors
    ///
    /// [`UserError::VhostExists`], or an invalid name.
    pub fn add_vhost(&self, name: &str) -> Result<(), UserError> {
        crate::access::check_name(name)?;
        let _writer = self.inner.vhosts_writer.lock();
        let mut map = VhostMap::clone(&self.inner.vhosts.load());
        if map.contains_key(name) {
            return Err(UserError::VhostExists(name.into()));
        }
        if let Some(journal) = &self.inner.core.topology_journal {
            journal.vhost_added(name).map_err(UserError::StoreFailed)?;
        }
        map.insert(name.into(), Vhost::new(name, Arc::clone(&self.inner.core)));
        self.inner.vhosts.store(Arc::new(map));
        Ok(())
    }

    /// Deletes virtual host `name`: every queue in it (its messages, its
    /// consumers cancelled), every exchange, every permission there. Its
    /// connections are closed, as RabbitMQ closes them. The default
    /// virtual host cannot be deleted ([`UserError::DefaultVhost`]):
    /// [`connect`](Self::connect) uses it.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::DefaultVhost`].
    pub fn delete_vhost(&self, name: &str) -> Result<(), UserError> {
        if name == DEFAULT_VHOST {
            return Err(UserError::DefaultVhost);
        }
        let removed = {
            let _writer = self.inner.vhosts_writer.lock();
            let mut map = VhostMap::clone(&self.inner.vhosts.load());
            let removed = map.remove(name).ok_or_else(|| UserError::NoSuchVhost(name.into()))?;
            self.inner.vhosts.store(Arc::new(map));
            removed
        };
        removed.delete();
        if let Some(journal) = &self.inner.core.topology_journal {
            journal.vhost_deleted(name);
        }
        self.inner.users.forget_vhost(name);
        Ok(())
    }

    /// A view of virtual host `name`, for inspection.
    pub fn vhost(&self, name: &str) -> Option<VirtualHost> {
        self.inner.vhosts.load().get(name).map(|inner| VirtualHost { inner: Arc::clone(inner) })
    }

    /// The names of all virtual hosts, sorted.
    pub fn vhost_names(&self) -> Vec<String> {
        self.inner.vhosts.load().keys().map(|k| k.to_string()).collect()
    }

    /// The built-in users and permissions (whether or not a custom
    /// [`AuthBackend`](crate::AuthBackend) decides): add users, set permissions and topic
    /// permissions, list them.
    pub fn users(&self) -> &UserStore {
        &self.inner.users
    }

    /// Adds user `name` with a password (stored as a salted hash, compared
    /// in constant time) and `tags` (see [`IMPERSONATOR_TAG`](crate::IMPERSONATOR_TAG)).
    /// A new user has no permissions anywhere.
    ///
    /// # Errors
    ///
    /// [`UserError::UserExists`], or an invalid name.
    pub fn add_user(&self, name: &str, credentials: &Credentials, tags: &[&str]) -> Result<(), UserError> {
        self.inner.users.add_user(name, Some(credentials), tags)
    }

    /// Deletes user `name` and its permissions. Its open connections keep
    /// their identity but lose every permission at their next operation.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchUser`].
    pub fn delete_user(&self, name: &str) -> Result<(), UserError> {
        self.inner.users.delete_user(name)
    }

    /// Sets `user`'s permissions in virtual host `vhost` (see
    /// [`Permissions`]). Takes effect for the next operation of every
    /// connection, open ones included.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`], or a pattern
    /// that does not compile.
    pub fn set_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: &Permissions,
    ) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.set_permissions(user, vhost, permissions)
    }

    /// Removes `user`'s permissions in `vhost`, and so its access to it.
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`].
    pub fn clear_permissions(&self, user: &str, vhost: &str) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.clear_permissions(user, vhost)
    }

    /// Sets `user`'s topic permissions on one topic exchange in `vhost`
    /// (see [`TopicPermissions`]).
    ///
    /// # Errors
    ///
    /// [`UserError::NoSuchVhost`], [`UserError::NoSuchUser`], or a pattern
    /// that does not compile.
    pub fn set_topic_permissions(
        &self,
        user: &str,
        vhost: &str,
        permissions: &TopicPermissions,
    ) -> Result<(), UserError> {
        self.require_vhost(vhost)?;
        self.inner.users.set_topic_permissions(user, vhost, permissions)
    }

    fn require_vhost(&self, vhost: &str) -> Result<(), UserError> {
        if self.inner.vhosts.load().contains_key(vhost) {
            Ok(())
        } else {
            Err(UserError::NoSuchVhost(vhost.into()))
        }
    }
}
