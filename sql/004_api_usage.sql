-- coingest schema, version 4: the monthly ledger of calls made to each source's API.
-- Never edit this file once released: add the next NNN_*.sql instead.

-- Calls (request attempts, retries included) this installation sent to a source's API in a
-- calendar month (UTC); period_start is 00:00 UTC on the first day of that month. The daemon
-- reads the month's row when a source is first used, so a restart or another `--once` run
-- continues the count, and writes the absolute count back (never lowering it) at the end of
-- every run and at most once a minute during one (docs/operations.md, "Monthly credits").
CREATE TABLE IF NOT EXISTS api_usage (
    source       VARCHAR(32) NOT NULL,
    period_start DATETIME(3) NOT NULL COMMENT 'first day of the calendar month, 00:00 UTC',
    calls        INT UNSIGNED NOT NULL COMMENT 'request attempts sent in the month',
    updated_at   DATETIME(3) NOT NULL,
    PRIMARY KEY (source, period_start)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
