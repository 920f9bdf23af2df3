-- Webhooks: each prediction's subscription, the outbox of deliveries with their attempts, and project
-- signing secrets. Keep in step with ../postgres/0003_webhooks.sql (tests/conformance compares the two).
--
-- predictions.webhook_events is the subscribed event mask (skygate_core::webhooks::EventMask; not
-- secret). predictions.webhook_target is the webhook URL sealed under the ACCOUNT's shred key, not the
-- retention window's: retries outlive the purge of the prediction's data (which leaves both columns
-- alone), while erasing the account still shreds it.
--
-- Outbox rows are written in the same transaction as the status change they announce, at most one per
-- (prediction, event). They are not tied to the prediction row: a delivery of a deleted prediction stays
-- (its target is then gone, and the dispatcher fails it). Everything here belongs to an account and goes
-- with it (ON DELETE CASCADE); sealed values are under the account's shred key, so backups die too.
--
-- Sealed values need one text row key (rewrap pages by it, and it is the AAD's row id): webhook_secrets
-- and webhook_attempts have a composite primary key, so each also has a derived unique `id`
-- ("<project_id>/<version>", "<delivery_id>/<number>").
ALTER TABLE predictions ADD COLUMN webhook_events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE predictions ADD COLUMN webhook_target BLOB;

-- A secret signs until retires_at (NULL: until replaced); a rotation sets it on the old ones.
CREATE TABLE webhook_secrets (
    project_id  TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    version     INTEGER NOT NULL CHECK (version > 0),
    id          TEXT NOT NULL UNIQUE,
    account_id  TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    secret      BLOB NOT NULL,
    created_at  INTEGER NOT NULL,
    retires_at  INTEGER,
    PRIMARY KEY (project_id, version)
) STRICT;

-- last_error holds only the store's and dispatcher's own short reasons (never a payload, a response or a
-- secret), so it is not sealed.
CREATE TABLE webhook_deliveries (
    id               TEXT NOT NULL PRIMARY KEY,
    prediction_id    TEXT NOT NULL,
    account_id       TEXT NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    project_id       TEXT NOT NULL REFERENCES projects (id) ON DELETE CASCADE,
    event            TEXT NOT NULL CHECK (event IN
                     ('prediction.started', 'prediction.succeeded', 'prediction.failed', 'prediction.cancelled')),
    state            TEXT NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts         INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt_at  INTEGER,
    lease_token      TEXT,
    lease_expires    INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    last_status      INTEGER,
    last_error       TEXT
) STRICT;
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
CREATE UNIQUE INDEX webhook_deliveries_prediction ON webhook_deliveries (prediction_id, event);
CREATE INDEX webhook_deliveries_account ON webhook_deliveries (account_id);
CREATE INDEX webhook_deliveries_project ON webhook_deliveries (project_id);
CREATE INDEX webhook_deliveries_created ON webhook_deliveries (created_at DESC, id DESC);

-- response: the first bytes of the answer's body (at most 1 KiB), sealed under the account's shred key.
CREATE TABLE webhook_attempts (
    delivery_id      TEXT NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    number           INTEGER NOT NULL CHECK (number > 0),
    id               TEXT NOT NULL UNIQUE,
    at               INTEGER NOT NULL,
    duration_us      INTEGER NOT NULL,
    status           INTEGER,
    error            TEXT,
    next_attempt_at  INTEGER,
    response         BLOB,
    PRIMARY KEY (delivery_id, number)
) STRICT;
