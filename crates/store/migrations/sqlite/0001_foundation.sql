-- Accounts, projects and API keys. Timestamps are microseconds since the Unix epoch (UTC).
-- API keys are stored only as HMAC-SHA256(pepper, key); the pepper is not in the database.
-- STRICT tables refuse a value of the wrong type, as PostgreSQL does; primary keys are NOT NULL
-- explicitly because SQLite would otherwise allow a NULL text key.
-- Keep in step with ../postgres/0001_foundation.sql (tests/conformance.rs compares the two).
CREATE TABLE accounts (
    id          TEXT NOT NULL PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    tier        TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    created_at  INTEGER NOT NULL
) STRICT;

CREATE TABLE projects (
    id          TEXT NOT NULL PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
) STRICT;
CREATE INDEX projects_account_id ON projects (account_id);

CREATE TABLE api_keys (
    id            TEXT NOT NULL PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    mode          TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    name          TEXT NOT NULL,
    key_hash      BLOB NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    prefix        TEXT NOT NULL,
    last4         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX api_keys_project_id ON api_keys (project_id);
