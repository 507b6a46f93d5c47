-- coingest schema, version 1.
-- Applied by `coingestd --migrate` (and at startup with [database] auto_migrate = true) and
-- recorded in schema_migrations. Never edit this file once released: add 002_*.sql instead.
-- All times are DATETIME(3) in UTC (every coingest session sets time_zone = '+00:00').
-- Numbers are DOUBLE: real data spans 1e-11 prices to 1e77 supplies.

CREATE TABLE IF NOT EXISTS assets (
    id              VARCHAR(255) NOT NULL COMMENT 'CoinGecko id; may contain spaces',
    symbol          VARCHAR(255) NULL,
    name            VARCHAR(512) NULL,
    platforms       JSON NULL COMMENT 'platform -> contract address, from /coins/list',
    market_cap_rank INT UNSIGNED NULL,
    image_url       VARCHAR(2048) NULL,
    first_seen_at   DATETIME(3) NOT NULL,
    updated_at      DATETIME(3) NOT NULL,
    listed_at       DATETIME(3) NULL COMMENT 'last time /coins/list contained the asset',
    delisted_at     DATETIME(3) NULL COMMENT 'set when the asset left /coins/list; cleared when it returns',
    PRIMARY KEY (id),
    KEY assets_symbol (symbol(32)),
    KEY assets_rank (market_cap_rank)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS prices (
    asset_id          VARCHAR(255) NOT NULL,
    vs_currency       VARCHAR(32) NOT NULL,
    source            VARCHAR(32) NOT NULL,
    source_updated_at DATETIME(3) NOT NULL COMMENT 'the API''s own last_updated_at for the quote',
    price             DOUBLE NULL,
    market_cap        DOUBLE NULL,
    volume_24h        DOUBLE NULL,
    change_24h_pct    DOUBLE NULL,
    fetched_at        DATETIME(3) NOT NULL,
    PRIMARY KEY (asset_id, vs_currency, source, source_updated_at),
    KEY prices_time (source_updated_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS market_snapshots (
    asset_id                 VARCHAR(255) NOT NULL,
    vs_currency              VARCHAR(32) NOT NULL,
    source                   VARCHAR(32) NOT NULL,
    snapshot_at              DATETIME(3) NOT NULL COMMENT 'the coin''s own last_updated',
    market_cap_rank          INT UNSIGNED NULL,
    price                    DOUBLE NULL,
    market_cap               DOUBLE NULL,
    fully_diluted_valuation  DOUBLE NULL,
    total_volume             DOUBLE NULL,
    high_24h                 DOUBLE NULL,
    low_24h                  DOUBLE NULL,
    price_change_24h         DOUBLE NULL,
    price_change_pct_24h     DOUBLE NULL,
    market_cap_change_24h    DOUBLE NULL,
    market_cap_change_pct_24h DOUBLE NULL,
    circulating_supply       DOUBLE NULL,
    total_supply             DOUBLE NULL,
    max_supply               DOUBLE NULL,
    ath                      DOUBLE NULL,
    ath_change_pct           DOUBLE NULL,
    ath_date                 DATETIME(3) NULL,
    atl                      DOUBLE NULL,
    atl_change_pct           DOUBLE NULL,
    atl_date                 DATETIME(3) NULL,
    roi                      JSON NULL,
    fetched_at               DATETIME(3) NOT NULL,
    PRIMARY KEY (asset_id, vs_currency, source, snapshot_at),
    KEY market_snapshots_time (snapshot_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS global_snapshots (
    source                        VARCHAR(32) NOT NULL,
    snapshot_at                   DATETIME(3) NOT NULL,
    active_cryptocurrencies       INT UNSIGNED NULL,
    markets                       INT UNSIGNED NULL,
    total_market_cap_usd          DOUBLE NULL,
    total_volume_usd              DOUBLE NULL,
    btc_dominance                 DOUBLE NULL,
    eth_dominance                 DOUBLE NULL,
    market_cap_change_pct_24h_usd DOUBLE NULL,
    total_market_cap              JSON NULL,
    total_volume                  JSON NULL,
    market_cap_percentage         JSON NULL,
    fetched_at                    DATETIME(3) NOT NULL,
    PRIMARY KEY (source, snapshot_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS categories (
    id         VARCHAR(255) NOT NULL,
    name       VARCHAR(512) NULL,
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS asset_categories (
    category_id   VARCHAR(255) NOT NULL,
    asset_id      VARCHAR(255) NOT NULL,
    first_seen_at DATETIME(3) NOT NULL,
    last_seen_at  DATETIME(3) NOT NULL,
    PRIMARY KEY (category_id, asset_id),
    KEY asset_categories_asset (asset_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS job_runs (
    id           BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    job          VARCHAR(64) NOT NULL,
    started_at   DATETIME(3) NOT NULL,
    finished_at  DATETIME(3) NULL,
    status       VARCHAR(16) NOT NULL COMMENT 'ok | partial | failed',
    requests     INT UNSIGNED NOT NULL DEFAULT 0,
    rows_written BIGINT UNSIGNED NOT NULL DEFAULT 0,
    duration_ms  BIGINT UNSIGNED NULL,
    error        TEXT NULL,
    PRIMARY KEY (id),
    UNIQUE KEY job_runs_run (job, started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE TABLE IF NOT EXISTS rejected_rows (
    id          BIGINT UNSIGNED NOT NULL AUTO_INCREMENT,
    table_name  VARCHAR(64) NOT NULL,
    row_json    LONGTEXT NOT NULL COMMENT 'the row as a JSON object',
    error       TEXT NOT NULL,
    rejected_at DATETIME(3) NOT NULL,
    PRIMARY KEY (id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
