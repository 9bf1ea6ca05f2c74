//! Credentials, and passwords stored as salted hashes in RabbitMQ's own
//! scheme (`rabbit_password_hashing_sha256`: four random bytes of salt,
//! then SHA-256 of salt and password, base64), so users round-trip through
//! RabbitMQ definitions files both ways. Comparison is constant-time.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// What a user proves who they are with. `Debug` never shows the secret.
///
/// ```
/// use interoffice::Credentials;
/// let credentials = Credentials::password("s3cret");
/// assert_eq!(format!("{credentials:?}"), "Credentials::Password(<redacted>)");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    password: String,
}

impl Credentials {
    /// A password.
    pub fn password(password: impl Into<String>) -> Self {
        Credentials { password: password.into() }
    }

    pub(crate) fn secret(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credentials::Password(<redacted>)")
    }
}

/// The hashing algorithms RabbitMQ writes in definitions files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha256,
    Sha512,
}

impl Algorithm {
    pub(crate) const SHA256: &'static str = "rabbit_password_hashing_sha256";
    pub(crate) const SHA512: &'static str = "rabbit_password_hashing_sha512";

    pub(crate) fn from_name(name: &str) -> Option<Algorithm> {
        match name {
            Algorithm::SHA256 => Some(Algorithm::Sha256),
            Algorithm::SHA512 => Some(Algorithm::Sha512),
            _ => None,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => Algorithm::SHA256,
            Algorithm::Sha512 => Algorithm::SHA512,
        }
    }

    fn digest(self, salt: &[u8], password: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::new().chain_update(salt).chain_update(password).finalize().to_vec(),
            Algorithm::Sha512 => Sha512::new().chain_update(salt).chain_update(password).finalize().to_vec(),
        }
    }
}

const SALT_LEN: usize = 4;

/// A salted password hash: salt, then digest. `None` in a store is a user
/// without a password, who cannot log in with one (RabbitMQ's
/// passwordless users).
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct PasswordHash {
    algorithm: Algorithm,
    salted: Vec<u8>,
}

impl fmt::Debug for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PasswordHash").field("algorithm", &self.algorithm).finish_non_exhaustive()
    }
}

impl PasswordHash {
    /// Hashes `password` with a fresh random salt.
    pub(crate) fn new(password: &str) -> PasswordHash {
        let mut salt = [0_u8; SALT_LEN];
        if getrandom::fill(&mut salt).is_err() {
            // No OS randomness: a salt from the process's random hasher
            // keys still differs per process and per call.
            use std::hash::BuildHasher;
            let bits = std::collections::hash_map::RandomState::new().hash_one(password.len());
            salt.copy_from_slice(&bits.to_le_bytes()[..SALT_LEN]);
        }
        let mut salted = salt.to_vec();
        salted.extend(Algorithm::Sha256.digest(&salt, password.as_bytes()));
        PasswordHash { algorithm: Algorithm::Sha256, salted }
    }

    /// A hash as a definitions file holds it (base64 of salt and digest).
    pub(crate) fn from_encoded(algorithm: Algorithm, encoded: &str) -> Option<PasswordHash> {
        let salted = STANDARD.decode(encoded).ok()?;
        let digest_len = match algorithm {
            Algorithm::Sha256 => 32,
            Algorithm::Sha512 => 64,
        };
        (salted.len() == SALT_LEN + digest_len).then_some(PasswordHash { algorithm, salted })
    }

    pub(crate) fn encoded(&self) -> String {
        STANDARD.encode(&self.salted)
    }

    pub(crate) fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// Whether `password` is the one hashed, compared in constant time.
    pub(crate) fn verify(&self, password: &str) -> bool {
        let (salt, digest) = self.salted.split_at(SALT_LEN);
        let computed = self.algorithm.digest(salt, password.as_bytes());
        bool::from(computed.ct_eq(digest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_verifies_its_password_only_and_salts_differ() {
        let a = PasswordHash::new("hunter2");
        let b = PasswordHash::new("hunter2");
        assert!(a.verify("hunter2"));
        assert!(!a.verify("hunter3"));
        assert!(!a.verify(""));
        assert_ne!(a.encoded(), b.encoded(), "fresh salt each time");
    }

    #[test]
    fn rabbitmqs_own_hash_of_guest_verifies() {
        // From `rabbitmqctl export_definitions` on RabbitMQ 3.10.8.
        let hash =
            PasswordHash::from_encoded(Algorithm::Sha256, "2LicDU3NPWh26j4rz5AsOMrNsvgAt+RrgJrvv8ZFuDql7V35")
                .expect("well-formed");
        assert!(hash.verify("guest"));
        assert!(!hash.verify("Guest"));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        assert!(PasswordHash::from_encoded(Algorithm::Sha256, "not base64!").is_none());
        assert!(PasswordHash::from_encoded(Algorithm::Sha256, "AAAA").is_none());
    }

    #[test]
    fn debug_shows_no_secret() {
        let hash = PasswordHash::new("hunter2");
        assert!(!format!("{hash:?}").contains(&hash.encoded()));
        assert!(!format!("{:?}", Credentials::password("hunter2")).contains("hunter2"));
    }
}
