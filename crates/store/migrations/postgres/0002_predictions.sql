-- Predictions (the durable queue), retention windows and usage records. Keep in step with
-- ../sqlite/0002_predictions.sql.
--
-- input, output, error and webhook are sealed under the shred key of the prediction's retention window
-- (`retention_windows`): purging a prediction NULLs them and deletes its output objects, and once every
-- prediction of a window is purged the window's shred key is destroyed, so backups cannot be read either.
-- Usage records are sealed under the account's shred key, like other account data.
CREATE TABLE retention_windows (
    starts_at  BIGINT PRIMARY KEY,
    ends_at    BIGINT NOT NULL,
    shred_id   BIGINT NOT NULL UNIQUE
);

CREATE TABLE predictions (
    id                TEXT PRIMARY KEY,
    account_id        TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    project_id        TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    key_id            TEXT,
    mode              TEXT NOT NULL CHECK (mode IN ('live', 'test')),
    model             TEXT NOT NULL,
    status            TEXT NOT NULL
                      CHECK (status IN ('pending', 'starting', 'processing', 'succeeded', 'failed', 'cancelled')),
    stream            BIGINT NOT NULL CHECK (stream IN (0, 1)),
    shred_id          BIGINT NOT NULL,
    input             BYTEA,
    output            BYTEA,
    error             BYTEA,
    webhook           BYTEA,
    progress          BIGINT NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    attempts          BIGINT NOT NULL DEFAULT 0,
    cancel_requested  BIGINT NOT NULL DEFAULT 0 CHECK (cancel_requested IN (0, 1)),
    lease_token       TEXT,
    lease_until       BIGINT,
    created_at        BIGINT NOT NULL,
    started_at        BIGINT,
    completed_at      BIGINT,
    updated_at        BIGINT NOT NULL,
    predict_time_us   BIGINT,
    purge_at          BIGINT,
    data_removed      BIGINT NOT NULL DEFAULT 0 CHECK (data_removed IN (0, 1))
);
CREATE INDEX predictions_project_created ON predictions (project_id, created_at DESC, id DESC);
CREATE INDEX predictions_queue ON predictions (status, created_at);
CREATE INDEX predictions_purge ON predictions (data_removed, purge_at);
CREATE INDEX predictions_shred ON predictions (shred_id, data_removed);

CREATE TABLE usage_records (
    prediction_id  TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    at             BIGINT NOT NULL,
    record         BYTEA NOT NULL
);
CREATE INDEX usage_records_account_at ON usage_records (account_id, at DESC);
