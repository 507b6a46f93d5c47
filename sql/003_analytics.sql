-- coingest schema, version 3: analytics (docs/analytics.md).
-- Rollups of prices into hourly and daily candles, daily indicators, daily movers, and the
-- state the analytics jobs keep between runs. Filled by the jobs of [source.analytics].
-- Never edit this file once released.

-- Arrival order of prices: the rollups job finds late rows (a backfill, a spool replay) by
-- the time they were fetched. Adding an index is online in MariaDB 10.6 and MySQL 8.0.
ALTER TABLE prices ADD KEY prices_fetched (fetched_at);

CREATE TABLE IF NOT EXISTS price_rollups (
    source       VARCHAR(32) NOT NULL,
    asset_id     VARCHAR(255) NOT NULL,
    vs_currency  VARCHAR(32) NOT NULL,
    bucket       VARCHAR(2) NOT NULL COMMENT '1h | 1d',
    bucket_start DATETIME(3) NOT NULL COMMENT 'UTC',
    open         DOUBLE NOT NULL COMMENT 'first price in the bucket by source_updated_at',
    high         DOUBLE NOT NULL,
    low          DOUBLE NOT NULL,
    close        DOUBLE NOT NULL COMMENT 'last price in the bucket by source_updated_at',
    samples      INT UNSIGNED NOT NULL COMMENT 'prices rows with a price in the bucket',
    volume_24h   DOUBLE NULL COMMENT 'of the last row in the bucket',
    market_cap   DOUBLE NULL COMMENT 'of the last row in the bucket',
    computed_at  DATETIME(3) NOT NULL COMMENT 'when a value of the row last changed (server clock)',
    PRIMARY KEY (source, asset_id, vs_currency, bucket, bucket_start),
    KEY price_rollups_time (bucket, bucket_start),
    KEY price_rollups_computed (bucket, computed_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS indicators_daily (
    source         VARCHAR(32) NOT NULL,
    asset_id       VARCHAR(255) NOT NULL,
    vs_currency    VARCHAR(32) NOT NULL,
    day            DATE NOT NULL COMMENT 'UTC',
    close          DOUBLE NOT NULL COMMENT 'the daily rollup''s close',
    market_cap     DOUBLE NULL COMMENT 'the daily rollup''s market_cap',
    return_1d      DOUBLE NULL,
    return_nd      DOUBLE NULL COMMENT 'n = [job.indicators] return_days',
    return_days    INT UNSIGNED NOT NULL,
    rsi_14         DOUBLE NULL,
    avg_gain       DOUBLE NULL COMMENT 'Wilder average gain behind rsi_14',
    avg_loss       DOUBLE NULL COMMENT 'Wilder average loss behind rsi_14',
    volatility_14d DOUBLE NULL COMMENT 'sample stddev of daily log returns x sqrt(365)',
    volatility_30d DOUBLE NULL,
    PRIMARY KEY (source, asset_id, vs_currency, day),
    KEY indicators_daily_day (day, vs_currency)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS movers_daily (
    day         DATE NOT NULL,
    vs_currency VARCHAR(32) NOT NULL,
    source      VARCHAR(32) NOT NULL,
    direction   VARCHAR(6) NOT NULL COMMENT 'top | bottom',
    `rank`      INT UNSIGNED NOT NULL COMMENT '1..[job.indicators] movers',
    asset_id    VARCHAR(255) NOT NULL,
    return_nd   DOUBLE NOT NULL,
    PRIMARY KEY (day, vs_currency, source, direction, `rank`)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Hours that received rows after they were rolled up; the next rollups run recomputes them.
CREATE TABLE IF NOT EXISTS analytics_dirty (
    bucket_start DATETIME(3) NOT NULL COMMENT 'the hour',
    marked_at    DATETIME(3) NOT NULL COMMENT 'the marking run''s time',
    PRIMARY KEY (bucket_start)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Watermarks of the analytics jobs, by name (docs/analytics.md).
CREATE TABLE IF NOT EXISTS analytics_state (
    name  VARCHAR(64) NOT NULL,
    value DATETIME(3) NULL,
    PRIMARY KEY (name)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
