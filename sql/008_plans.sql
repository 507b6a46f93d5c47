-- coingest schema, version 8: what a run's `counted` is made of, and what the API charged.
-- Never edit this file once released: add the next NNN_*.sql instead.

-- `counted` (anomalies a run counted that are not errors: coins the API left out, fields of the
-- wrong type, currencies it does not support, ...) was only in the logs, one number for several
-- different things. job_runs now keeps the sum and, in counted_detail, a JSON object with the
-- count of each kind ({"missing_coins": 3, "wrong_type_fields": 1}); docs/jobs.md, "What
-- counted means", lists the kinds. NULL: nothing was counted (or a row from before this
-- version).
ALTER TABLE job_runs
    ADD COLUMN IF NOT EXISTS counted BIGINT UNSIGNED NULL
        COMMENT 'anomalies counted, not errors: the sum of counted_detail (NULL: not recorded)'
        AFTER rows_written,
    ADD COLUMN IF NOT EXISTS counted_detail TEXT NULL
        COMMENT 'JSON object: the count of each kind of anomaly' AFTER counted;

-- The month's calls as the API itself counts them, beside the daemon's own count: on
-- CoinGecko's pro plan GET /key reports current_total_monthly_calls (a key shared with another
-- client, or calls a kill -9 kept from the ledger, show up as charged > calls). NULL: the API
-- does not say (keyless, demo, other sources).
ALTER TABLE api_usage
    ADD COLUMN IF NOT EXISTS charged INT UNSIGNED NULL
        COMMENT 'calls the API reports for the month (GET /key); NULL: not reported' AFTER calls;
