-- Access tokens for the management API, and the client of each audit entry. Keep in step with
-- ../postgres/0004_access_tokens.sql (tests/conformance compares the two).
--
-- A token is looked up by HMAC-SHA256(pepper, token), like an API key; only its last 4 characters are
-- kept for display. Its name is sealed under the account's shred key. Scopes are the comma-separated
-- names of skygate_core::token::Scope (not secret).
--
-- audit_log.account_id (the account an event concerns, '' for none; no foreign key: the log outlives an
-- erased account), ip and user_agent are part of the hashed entry (skygate_core::audit::chain_hash, v2).
ALTER TABLE audit_log ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_log_account ON audit_log (account_id, seq);

CREATE TABLE access_tokens (
    id            TEXT NOT NULL PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          BLOB NOT NULL,
    scopes        TEXT NOT NULL,
    token_hash    BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    last4         TEXT NOT NULL,
    created_at    INTEGER NOT NULL,
    last_used_at  INTEGER,
    expires_at    INTEGER,
    revoked_at    INTEGER
) STRICT;
CREATE INDEX access_tokens_account_id ON access_tokens (account_id);
