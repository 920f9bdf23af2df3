-- Two-factor authentication: each account's TOTP secret and its recovery codes. See
-- ../sqlite/0005_second_factor.sql for the rules; keep the two in step.
CREATE TABLE account_totp (
    account_id    TEXT PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret        BYTEA NOT NULL,
    created_at    BIGINT NOT NULL,
    enabled_at    BIGINT,
    last_step     BIGINT,
    failures      BIGINT NOT NULL DEFAULT 0,
    locked_until  BIGINT
);

CREATE TABLE recovery_codes (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    code_hash   BYTEA NOT NULL CHECK (octet_length(code_hash) = 32),
    created_at  BIGINT NOT NULL,
    used_at     BIGINT,
    PRIMARY KEY (account_id, code_hash)
);
