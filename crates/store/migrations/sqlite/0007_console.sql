-- The console: passwords, setup links and sessions. Keep in step with ../postgres/0006_console.sql
-- (tests/conformance compares the two).
--
-- accounts.password_hash is an argon2id PHC string (salted; never the password), NULL until the
-- account's setup link is used; password_set_at tracks the password's age.
--
-- password_setup_links.token_hash and console_sessions.token_hash are HMAC-SHA256(pepper, secret): the
-- secrets (256 random bits each) are only in the link and the cookie. A link is used once (used_at,
-- set by one conditional UPDATE) before expires_at. A session row is deleted at logout or revocation;
-- stage is '2fa' (password checked, second factor due) or 'full'.
ALTER TABLE accounts ADD COLUMN password_hash TEXT;
ALTER TABLE accounts ADD COLUMN password_set_at INTEGER;

CREATE TABLE password_setup_links (
    token_hash  BLOB NOT NULL PRIMARY KEY CHECK (length(token_hash) = 32),
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    purpose     TEXT NOT NULL CHECK (purpose IN ('setup', 'reset')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    used_at     INTEGER
) STRICT;
CREATE INDEX password_setup_links_account ON password_setup_links (account_id);

CREATE TABLE console_sessions (
    id            TEXT NOT NULL PRIMARY KEY,
    account_id    TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token_hash    BLOB NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    stage         TEXT NOT NULL CHECK (stage IN ('2fa', 'full')),
    created_at    INTEGER NOT NULL,
    last_seen_at  INTEGER NOT NULL,
    expires_at    INTEGER NOT NULL,
    ip            TEXT NOT NULL,
    user_agent    TEXT NOT NULL
) STRICT;
CREATE INDEX console_sessions_account ON console_sessions (account_id);
