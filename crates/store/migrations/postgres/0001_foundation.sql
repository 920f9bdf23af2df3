-- Accounts, projects, API keys, the audit chain and pending crypto-shreds. Timestamps are microseconds
-- since the Unix epoch (UTC). Sensitive values are BYTEA sealed by skygate-crypto; see
-- ../sqlite/0001_foundation.sql for the rules. Keep the two in step (tests/conformance compares them).
CREATE TABLE accounts (
    id           TEXT PRIMARY KEY,
    email_index  BYTEA NOT NULL UNIQUE CHECK (octet_length(email_index) = 32),
    email        BYTEA NOT NULL,
    shred_id     BIGINT NOT NULL,
    tier         TEXT NOT NULL CHECK (tier IN ('free', 'pro', 'business', 'enterprise')),
    created_at   BIGINT NOT NULL
);

CREATE TABLE projects (
    id          TEXT PRIMARY KEY,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX projects_account_id ON projects (account_id);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    mode          TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    name          BYTEA NOT NULL,
    key_hash      BYTEA NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    prefix        TEXT NOT NULL,
    last4         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX api_keys_project_id ON api_keys (project_id);

CREATE TABLE audit_log (
    seq        BIGINT PRIMARY KEY,
    at         BIGINT NOT NULL,
    actor      TEXT NOT NULL,
    action     TEXT NOT NULL,
    target     TEXT NOT NULL,
    detail     TEXT NOT NULL,
    prev_hash  BYTEA NOT NULL CHECK (octet_length(prev_hash) = 32),
    hash       BYTEA NOT NULL CHECK (octet_length(hash) = 32)
);

CREATE TABLE pending_shreds (
    shred_id    BIGINT PRIMARY KEY,
    reason      TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
