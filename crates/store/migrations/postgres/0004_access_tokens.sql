-- Access tokens for the management API, and the client of each audit entry. See
-- ../sqlite/0004_access_tokens.sql for the rules; keep the two in step.
ALTER TABLE audit_log ADD COLUMN account_id TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN ip TEXT NOT NULL DEFAULT '';
ALTER TABLE audit_log ADD COLUMN user_agent TEXT NOT NULL DEFAULT '';
CREATE INDEX audit_log_account ON audit_log (account_id, seq);

CREATE TABLE access_tokens (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name          BYTEA NOT NULL,
    scopes        TEXT NOT NULL,
    token_hash    BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    last4         TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT,
    expires_at    BIGINT,
    revoked_at    BIGINT
);
CREATE INDEX access_tokens_account_id ON access_tokens (account_id);
