//! The store's one error type. Database errors keep their chain for the log, but their `Display` never
//! includes connection strings or row values (which may be secret).

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A uniqueness rule was broken (e.g. an email already registered). The string names the rule.
    #[error("already exists: {0}")]
    Conflict(String),
    /// A referenced row (account, project) does not exist. The string names what was missing.
    #[error("not found: {0}")]
    NotFound(String),
    /// A value handed to the store breaks a rule the caller should have checked first (e.g. an unknown
    /// webhook event name). The string says which rule, never a secret.
    #[error("invalid: {0}")]
    Invalid(String),
    /// A stored value could not be decoded (corrupt row).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// Bad storage configuration (unsupported URL scheme, unopenable path).
    #[error("{0}")]
    Config(String),
    #[error("database error")]
    Database(#[source] sqlx::Error),
    /// A sealed value could not be opened (tampered, moved, or its key retired or shredded).
    #[error("cannot open sealed {place}: {source}")]
    Sealed {
        place: String,
        #[source]
        source: skygate_crypto::CryptoError,
    },
    /// The object store failed (unreachable, refused, missing bucket).
    #[error("object storage: {0}")]
    Objects(String),
    /// The key provider failed while sealing or managing keys.
    #[error("encryption: {0}")]
    Crypto(#[source] skygate_crypto::CryptoError),
    #[error("migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::Database(e)
    }
}

impl From<sqlx::migrate::MigrateError> for StoreError {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        StoreError::Migrate(e)
    }
}
