-- The console: passwords, setup links and sessions. See ../sqlite/0006_console.sql for the rules; keep
-- the two in step.
ALTER TABLE accounts ADD COLUMN password_hash TEXT;
ALTER TABLE accounts ADD COLUMN password_set_at BIGINT;

CREATE TABLE password_setup_links (
    token_hash  BYTEA PRIMARY KEY CHECK (octet_length(token_hash) = 32),
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('setup', 'reset')),
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used_at     BIGINT
);
CREATE INDEX password_setup_links_account ON password_setup_links (account_id);

CREATE TABLE console_sessions (
    id            TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token_hash    BYTEA NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    stage         TEXT NOT NULL CHECK (stage IN ('2fa', 'full')),
    created_at    BIGINT NOT NULL,
    last_seen_at  BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL
);
CREATE INDEX console_sessions_account ON console_sessions (account_id);
