-- Accounts, projects, API keys, the audit chain and pending crypto-shreds. Timestamps are microseconds
-- since the Unix epoch (UTC).
--
-- Sensitive values are BLOBs sealed by skygate-crypto (AES-256-GCM envelope, AAD = table, row id, column,
-- owning account); account-owned values are sealed under the account's shred key, so erasing the account
-- makes them unreadable in backups too. Lookups go through keyed hashes: API keys by HMAC-SHA256(pepper,
-- key), accounts by an HMAC blind index of the normalised email. Neither key is in the database.
--
-- STRICT tables refuse a value of the wrong type, as PostgreSQL does; primary keys are NOT NULL
-- explicitly because SQLite would otherwise allow a NULL text key.
-- Keep in step with ../postgres/0001_foundation.sql (tests/conformance compares the two).
CREATE TABLE accounts (
    id           TEXT NOT NULL PRIMARY KEY,
    email_index  BLOB NOT NULL UNIQUE CHECK (length(email_index) = 32),
    email        BLOB NOT NULL,
    shred_id     INTEGER NOT NULL,
    tier         TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    created_at   INTEGER NOT NULL
) STRICT;

CREATE TABLE projects (
    id          TEXT NOT NULL PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        BLOB NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX projects_account_id ON projects (account_id);

CREATE TABLE api_keys (
    id            TEXT NOT NULL PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    mode          TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    name          BLOB NOT NULL,
    key_hash      BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix        TEXT NOT NULL,
    last4         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX api_keys_project_id ON api_keys (project_id);

-- Hash-chained: hash = SHA-256(prev_hash ‖ seq ‖ fields), see skygate_core::audit. Ids and actions only.
CREATE TABLE audit_log (
    seq        INTEGER NOT NULL PRIMARY KEY,
    at         INTEGER NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  BLOB NOT NULL CHECK (length(prev_hash) = 32),
    hash       BLOB NOT NULL CHECK (length(hash) = 32)
) STRICT;

-- Shred keys whose data rows are gone but whose key destruction has not been confirmed yet; finished on
-- the next start if the process died in between.
CREATE TABLE pending_shreds (
    shred_id    INTEGER NOT NULL PRIMARY KEY,
    reason      TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
