-- Accounts, projects and API keys. Timestamps are microseconds since the Unix epoch (UTC).
-- API keys are stored only as HMAC-SHA256(pepper, key); the pepper is not in the database.
-- Keep in step with ../sqlite/0001_foundation.sql (tests/conformance.rs compares the two).
CREATE TABLE accounts (
    id          TEXT PRIMARY KEY,
    email       TEXT NOT NULL UNIQUE,
    tier        TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    created_at  BIGINT NOT NULL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX projects_account_id ON projects (account_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    mode          TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    name          TEXT NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix        TEXT NOT NULL,
    last4         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_project_id ON api_keys (project_id);
