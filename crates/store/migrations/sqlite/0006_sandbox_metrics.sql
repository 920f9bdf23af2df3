-- What the sandbox of a prediction's last run did: build time, model run time (microseconds) and a
-- short exit reason chosen by skygate ("exited 0", "deadline", "killed by signal 9", …; never model
-- output, so plaintext). Keep in step with ../postgres/0006_sandbox_metrics.sql.
ALTER TABLE predictions ADD COLUMN sandbox_start_us INTEGER;
ALTER TABLE predictions ADD COLUMN sandbox_run_us INTEGER;
ALTER TABLE predictions ADD COLUMN sandbox_exit TEXT;
