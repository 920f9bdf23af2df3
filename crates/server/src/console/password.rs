//! The bounded blocking pool for argon2id: a semaphore of `accounts.password_hash_concurrency` permits in
//! front of `spawn_blocking`, so at most that many hashes (each ~19 MiB and tens of ms of one core) run
//! at once and a login flood queues here instead of taking every core and blocking thread from the
//! other routes. The hasher (and its dummy hash for unknown accounts) is built on first use.

use std::sync::{Arc, OnceLock};

use skygate_core::password::{HashError, PasswordHasher};
use skygate_core::SecretString;
use tokio::sync::Semaphore;

use super::ConsoleError;

#[derive(Clone)]
pub struct PasswordPool {
    hasher: Arc<OnceLock<Result<PasswordHasher, HashError>>>,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for PasswordPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PasswordPool({} free)", self.permits.available_permits())
    }
}

impl PasswordPool {
    pub fn new(size: u32) -> Self {
        PasswordPool {
            hasher: Arc::new(OnceLock::new()),
            permits: Arc::new(Semaphore::new(usize::try_from(size.max(1)).unwrap_or(1))),
        }
    }

    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&PasswordHasher) -> Result<T, HashError> + Send + 'static,
    ) -> Result<T, ConsoleError> {
        let _permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ConsoleError::internal(&e))?;
        let cell = self.hasher.clone();
        let done = tokio::task::spawn_blocking(move || match cell.get_or_init(PasswordHasher::new) {
            Ok(h) => f(h),
            Err(e) => Err(e.clone()),
        })
        .await
        .map_err(|e| ConsoleError::internal(&e))?;
        done.map_err(|e| ConsoleError::internal(&e))
    }

    /// Whether `password` matches `stored`; with `None`, the same work against the dummy hash, false.
    pub async fn verify(&self, password: SecretString, stored: Option<String>) -> Result<bool, ConsoleError> {
        self.run(move |h| Ok(h.verify_or_dummy(&password, stored.as_deref())))
            .await
    }

    /// The PHC string of a new password (already checked against the policy).
    pub async fn hash(&self, password: SecretString) -> Result<String, ConsoleError> {
        self.run(move |h| h.hash(&password)).await
    }
}
