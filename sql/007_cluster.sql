-- coingest schema, version 7: several instances against one database (docs/cluster.md).
-- Never edit this file once released: add the next NNN_*.sql instead.

-- One row per lease: `job:NAME` for a job, `budget:SOURCE` for a source's request budget.
-- The instance named in `holder` may act until `expires_at` (the database's clock); it renews
-- with a conditional UPDATE that names its fencing `token`, and another instance takes the
-- lease over only once it has expired, adding one to the token. A holder whose renewal finds
-- another token has lost the lease, whatever it believed. No GET_LOCK: on Galera it is local to
-- one node. Rows are created by the daemon (INSERT IGNORE) the first time it wants a lease.
CREATE TABLE IF NOT EXISTS cluster_leases (
    name        VARCHAR(100) NOT NULL COMMENT 'job:NAME or budget:SOURCE',
    holder      VARCHAR(128) NULL COMMENT '[cluster] instance of the holder; NULL: never held',
    token       BIGINT UNSIGNED NOT NULL DEFAULT 0 COMMENT 'fencing token, +1 per takeover',
    expires_at  DATETIME(3) NOT NULL DEFAULT '1970-01-02 00:00:00.000',
    acquired_at DATETIME(3) NULL,
    renewed_at  DATETIME(3) NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Which instance ran a job. Added only when missing, so this file can run again after failing
-- halfway (MySQL has no ADD COLUMN IF NOT EXISTS).
SET @coingest_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE job_runs ADD COLUMN instance VARCHAR(128) NULL', 'DO 0')
    FROM information_schema.COLUMNS
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'job_runs' AND COLUMN_NAME = 'instance');
PREPARE coingest_stmt FROM @coingest_ddl;
EXECUTE coingest_stmt;
DEALLOCATE PREPARE coingest_stmt;
