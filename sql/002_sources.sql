-- coingest schema, version 2: more sources than CoinGecko.
-- Never edit this file once released: add the next NNN_*.sql instead.
-- Rows of every source carry the source's name in `source` and the canonical asset id (the
-- CoinGecko id, assets.id) in `asset_id`, so WHERE asset_id = 'bitcoin' finds all sources.

-- OHLCV candles (Coinbase Exchange). open_time is the start of the interval; only closed
-- intervals are stored. An interval without trades has no row (the exchange sends none).
CREATE TABLE IF NOT EXISTS candles (
    source      VARCHAR(32) NOT NULL,
    asset_id    VARCHAR(255) NOT NULL COMMENT 'the base currency mapped onto assets.id',
    vs_currency VARCHAR(32) NOT NULL COMMENT 'the quote currency, lower case',
    interval_s  INT UNSIGNED NOT NULL COMMENT 'granularity in seconds',
    open_time   DATETIME(3) NOT NULL,
    product     VARCHAR(64) NOT NULL COMMENT 'the source''s market, e.g. BTC-USD',
    open        DOUBLE NULL,
    high        DOUBLE NULL,
    low         DOUBLE NULL,
    close       DOUBLE NULL,
    volume      DOUBLE NULL COMMENT 'in units of the base currency',
    fetched_at  DATETIME(3) NOT NULL,
    PRIMARY KEY (source, asset_id, vs_currency, interval_s, open_time),
    KEY candles_product (source, product, interval_s, open_time),
    KEY candles_time (open_time)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- How far a candle backfill has come: every interval of `product` that opened before
-- filled_to is stored, or had no trades. Written after the candles it vouches for have
-- committed (a barrier statement), so a restart resumes here without a gap.
CREATE TABLE IF NOT EXISTS candle_fill (
    source     VARCHAR(32) NOT NULL,
    product    VARCHAR(64) NOT NULL,
    interval_s INT UNSIGNED NOT NULL,
    filled_to  DATETIME(3) NOT NULL,
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (source, product, interval_s)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- Which canonical asset a source's key stands for, and why. asset_id NULL: not mapped, and
-- the source's rows for that key are not stored (method says why: ambiguous or unknown).
CREATE TABLE IF NOT EXISTS asset_aliases (
    source     VARCHAR(32) NOT NULL,
    source_key VARCHAR(255) NOT NULL COMMENT 'coinbase: the base currency (BTC); coincap: its id',
    asset_id   VARCHAR(255) NULL,
    method     VARCHAR(32) NOT NULL COMMENT 'override | contract | symbol_name | symbol_market_cap | ambiguous | unknown',
    symbol     VARCHAR(255) NULL COMMENT 'as the source writes it',
    name       VARCHAR(512) NULL,
    candidates TEXT NULL COMMENT 'ambiguous: the assets.id values it could be, comma-separated',
    updated_at DATETIME(3) NOT NULL,
    PRIMARY KEY (source, source_key),
    KEY asset_aliases_asset (asset_id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

CREATE OR REPLACE VIEW unmapped_asset_keys AS
    SELECT source, source_key, symbol, name, method AS reason, candidates, updated_at
    FROM asset_aliases
    WHERE asset_id IS NULL;

-- CoinCap's 24-hour volume-weighted average price. Added only when missing, so this file can
-- run again after failing halfway (MySQL has no ADD COLUMN IF NOT EXISTS).
SET @coingest_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE prices ADD COLUMN vwap_24h DOUBLE NULL', 'DO 0')
    FROM information_schema.COLUMNS
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'prices' AND COLUMN_NAME = 'vwap_24h');
PREPARE coingest_stmt FROM @coingest_ddl;
EXECUTE coingest_stmt;
DEALLOCATE PREPARE coingest_stmt;
SET @coingest_ddl = (SELECT IF(COUNT(*) = 0,
    'ALTER TABLE market_snapshots ADD COLUMN vwap_24h DOUBLE NULL', 'DO 0')
    FROM information_schema.COLUMNS
    WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'market_snapshots'
      AND COLUMN_NAME = 'vwap_24h');
PREPARE coingest_stmt FROM @coingest_ddl;
EXECUTE coingest_stmt;
DEALLOCATE PREPARE coingest_stmt;
