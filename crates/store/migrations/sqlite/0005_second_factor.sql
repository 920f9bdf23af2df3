-- Two-factor authentication: each account's TOTP secret and its recovery codes. Keep in step with
-- ../postgres/0005_second_factor.sql (tests/conformance compares the two).
--
-- account_totp.secret is sealed under the account's shred key. enabled_at stays NULL until the user
-- confirms the enrolment with a first code. last_step is the time step of the last code accepted: a
-- code of that step or an earlier one is refused (replay), checked and moved in one UPDATE, so two
-- nodes cannot both accept one code. failures/locked_until soft-lock the second factor after repeated
-- wrong codes.
--
-- recovery_codes.code_hash is HMAC-SHA256(pepper, code): the codes are random (60 bits), so a keyed
-- hash is enough and the database alone cannot test guesses. Each is used once (used_at).
CREATE TABLE account_totp (
    account_id    TEXT NOT NULL PRIMARY KEY REFERENCES accounts (id) ON DELETE CASCADE,
    secret        BLOB NOT NULL,
    created_at    INTEGER NOT NULL,
    enabled_at    INTEGER,
    last_step     INTEGER,
    failures      INTEGER NOT NULL DEFAULT 0,
    locked_until  INTEGER
) STRICT;

CREATE TABLE recovery_codes (
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    code_hash   BLOB NOT NULL CHECK (length(code_hash) = 32),
    created_at  INTEGER NOT NULL,
    used_at     INTEGER,
    PRIMARY KEY (account_id, code_hash)
) STRICT;
