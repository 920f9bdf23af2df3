-- What the sandbox of a prediction's last run did. See ../sqlite/0006_sandbox_metrics.sql for the
-- rules; keep the two in step.
ALTER TABLE predictions ADD COLUMN sandbox_start_us BIGINT;
ALTER TABLE predictions ADD COLUMN sandbox_run_us BIGINT;
ALTER TABLE predictions ADD COLUMN sandbox_exit TEXT;
