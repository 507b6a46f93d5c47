/*
 * batch: rows on their way to the database, as typed values, plus the table specs that say
 * which columns a batch fills and how a row that already exists is updated.
 *
 * A batch belongs to one spec (e.g. BATCH_MARKET_SNAPSHOTS). It holds nrows x ncols values;
 * strings are copied into an arena owned by the batch, so a parser can build a batch from a
 * JSON document and then free the document. Batches are built on the loop thread, handed to
 * the sink (which takes ownership), written by a writer thread or serialized into the spool.
 * A batch is only ever touched by one thread at a time.
 *
 * Values: NULL, signed integer, double (NaN and +-Inf are stored as NULL), string (UTF-8,
 * any bytes, length-counted), time (ms since the epoch, UTC, written as DATETIME(3)) and JSON
 * (a string that the writer sends as JSON text).
 *
 * Specs of kind BATCH_KIND_UPSERT become multi-row INSERT ... ON DUPLICATE KEY UPDATE on the
 * table's primary key, so writing the same rows again changes nothing. Specs of kind
 * BATCH_KIND_STATEMENT run a fixed statement once per row with the row's values as
 * parameters; the sink runs such a batch only after every batch submitted before it has
 * committed (it is a barrier), e.g. marking delisted assets after the asset list is stored.
 */
#ifndef COINGEST_BATCH_H
#define COINGEST_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum val_type { VAL_NULL = 0, VAL_INT = 1, VAL_DBL = 2, VAL_STR = 3, VAL_TIME = 4, VAL_JSON = 5 };

struct val {
    uint8_t type; /* enum val_type */
    uint32_t len; /* VAL_STR, VAL_JSON: bytes */
    union {
        int64_t i;     /* VAL_INT; VAL_TIME: ms since the epoch */
        double d;      /* VAL_DBL, always finite */
        const char *s; /* VAL_STR, VAL_JSON: points into the batch's arena, not NUL-terminated */
    } u;
};

/* Spec ids are stored in the spool: append new ones at the end, never renumber. The same holds
 * for a spec's columns: a new column goes at the end of its list and is nullable in SQL, so
 * that a record an older binary spooled (fewer columns) still replays, with the new ones NULL
 * (batch_decode). */
enum batch_spec_id {
    BATCH_ASSETS_LIST = 0,   /* /coins/list: id, symbol, name, platforms, listed_at */
    BATCH_ASSETS_MARKET = 1, /* /coins/markets: id, symbol, name, market_cap_rank, image_url */
    BATCH_PRICES = 2,
    BATCH_MARKET_SNAPSHOTS = 3,
    BATCH_GLOBAL_SNAPSHOTS = 4,
    BATCH_CATEGORIES = 5,
    BATCH_ASSET_CATEGORIES = 6,
    BATCH_JOB_RUNS = 7,
    /* statement (delisted_at, listed_before): assets last listed before listed_before are
     * marked delisted */
    BATCH_ASSETS_DELIST = 8,
    /* more sources (sql/002_sources.sql) */
    BATCH_CANDLES = 9,
    BATCH_ASSET_ALIASES = 10,
    BATCH_PRICES_VWAP = 11,           /* prices with vwap_24h (CoinCap) */
    BATCH_MARKET_SNAPSHOTS_VWAP = 12, /* market_snapshots as CoinCap fills them */
    /* statement (source, product, interval_s, filled_to, updated_at): a candle backfill got
     * this far; a barrier, so it runs after the candles before it have committed */
    BATCH_CANDLE_FILL = 13,
    /* analytics (src/sources/analytics/, docs/analytics.md); statements unless said */
    BATCH_ANALYTICS_MARK = 14,      /* (marked_at, first_run_at): hours with new rows */
    BATCH_ANALYTICS_UNMARK = 15,    /* (from, to, marked_at): recomputed hours */
    BATCH_ANALYTICS_STATE = 16,     /* upsert: analytics_state watermarks */
    BATCH_ROLLUPS_HOURLY = 17,      /* (from, to): price_rollups '1h' from prices */
    BATCH_ROLLUPS_DAILY = 18,       /* (from, to): price_rollups '1d' from prices */
    BATCH_INDICATORS_DAILY = 19,    /* upsert: indicators_daily */
    BATCH_MOVERS_CLEAR = 20,        /* (from_day, to_day) */
    BATCH_MOVERS_FILL = 21,         /* (from_day, to_day, min_cap, n) */
    BATCH_RETENTION_PRICES = 22,    /* (from, to, limit): covered prices rows */
    BATCH_RETENTION_SNAPSHOTS = 23, /* (from, to, limit): covered market_snapshots rows */
    /* the monthly ledger (sql/004_api_usage.sql): calls never go down (GREATEST) */
    BATCH_API_USAGE = 24,
    BATCH_SPEC_COUNT
};

/*
 * The columns of each spec, in value order: the one place they are listed. Each
 * BATCH_<SPEC>_COLUMNS(X) expands X(constant, "column") per column; batch.c builds the specs'
 * name arrays from them, and the enums below give each column a constant (its index) and each
 * spec its count, BATCH_<SPEC>_NCOLS. Code that fills a spec it knows at compile time uses the
 * constants (batch_set_int(b, row, BATCH_JOB_RUNS_COL_DURATION_MS, ms)); code driven by a table
 * of names uses batch_spec_col. Never a bare number: reordering a list here must not silently
 * move values between columns.
 */
#define BATCH_COL_ENUM(constant, name) constant,
#define BATCH_COL_NAME(constant, name) name,

/* BATCH_ASSETS_LIST: the assets table, as an asset list fills it. */
#define BATCH_ASSETS_LIST_COLUMNS(X)                                                               \
    X(BATCH_ASSETS_LIST_COL_ID, "id")                                                              \
    X(BATCH_ASSETS_LIST_COL_SYMBOL, "symbol")                                                      \
    X(BATCH_ASSETS_LIST_COL_NAME, "name")                                                          \
    X(BATCH_ASSETS_LIST_COL_PLATFORMS, "platforms")                                                \
    X(BATCH_ASSETS_LIST_COL_LISTED_AT, "listed_at")                                                \
    X(BATCH_ASSETS_LIST_COL_FIRST_SEEN_AT, "first_seen_at")                                        \
    X(BATCH_ASSETS_LIST_COL_UPDATED_AT, "updated_at")
enum { BATCH_ASSETS_LIST_COLUMNS(BATCH_COL_ENUM) BATCH_ASSETS_LIST_NCOLS };

/* BATCH_ASSETS_MARKET: the assets table, as a market page fills it. */
#define BATCH_ASSETS_MARKET_COLUMNS(X)                                                             \
    X(BATCH_ASSETS_MARKET_COL_ID, "id")                                                            \
    X(BATCH_ASSETS_MARKET_COL_SYMBOL, "symbol")                                                    \
    X(BATCH_ASSETS_MARKET_COL_NAME, "name")                                                        \
    X(BATCH_ASSETS_MARKET_COL_MARKET_CAP_RANK, "market_cap_rank")                                  \
    X(BATCH_ASSETS_MARKET_COL_IMAGE_URL, "image_url")                                              \
    X(BATCH_ASSETS_MARKET_COL_FIRST_SEEN_AT, "first_seen_at")                                      \
    X(BATCH_ASSETS_MARKET_COL_UPDATED_AT, "updated_at")
enum { BATCH_ASSETS_MARKET_COLUMNS(BATCH_COL_ENUM) BATCH_ASSETS_MARKET_NCOLS };

/* BATCH_PRICES: the prices table. */
#define BATCH_PRICES_COLUMNS(X)                                                                    \
    X(BATCH_PRICES_COL_ASSET_ID, "asset_id")                                                       \
    X(BATCH_PRICES_COL_VS_CURRENCY, "vs_currency")                                                 \
    X(BATCH_PRICES_COL_SOURCE, "source")                                                           \
    X(BATCH_PRICES_COL_SOURCE_UPDATED_AT, "source_updated_at")                                     \
    X(BATCH_PRICES_COL_PRICE, "price")                                                             \
    X(BATCH_PRICES_COL_MARKET_CAP, "market_cap")                                                   \
    X(BATCH_PRICES_COL_VOLUME_24H, "volume_24h")                                                   \
    X(BATCH_PRICES_COL_CHANGE_24H_PCT, "change_24h_pct")                                           \
    X(BATCH_PRICES_COL_FETCHED_AT, "fetched_at")
enum { BATCH_PRICES_COLUMNS(BATCH_COL_ENUM) BATCH_PRICES_NCOLS };

/* BATCH_MARKET_SNAPSHOTS: the market_snapshots table. */
#define BATCH_MARKET_SNAPSHOTS_COLUMNS(X)                                                          \
    X(BATCH_MARKET_SNAPSHOTS_COL_ASSET_ID, "asset_id")                                             \
    X(BATCH_MARKET_SNAPSHOTS_COL_VS_CURRENCY, "vs_currency")                                       \
    X(BATCH_MARKET_SNAPSHOTS_COL_SOURCE, "source")                                                 \
    X(BATCH_MARKET_SNAPSHOTS_COL_SNAPSHOT_AT, "snapshot_at")                                       \
    X(BATCH_MARKET_SNAPSHOTS_COL_MARKET_CAP_RANK, "market_cap_rank")                               \
    X(BATCH_MARKET_SNAPSHOTS_COL_PRICE, "price")                                                   \
    X(BATCH_MARKET_SNAPSHOTS_COL_MARKET_CAP, "market_cap")                                         \
    X(BATCH_MARKET_SNAPSHOTS_COL_FULLY_DILUTED_VALUATION, "fully_diluted_valuation")               \
    X(BATCH_MARKET_SNAPSHOTS_COL_TOTAL_VOLUME, "total_volume")                                     \
    X(BATCH_MARKET_SNAPSHOTS_COL_HIGH_24H, "high_24h")                                             \
    X(BATCH_MARKET_SNAPSHOTS_COL_LOW_24H, "low_24h")                                               \
    X(BATCH_MARKET_SNAPSHOTS_COL_PRICE_CHANGE_24H, "price_change_24h")                             \
    X(BATCH_MARKET_SNAPSHOTS_COL_PRICE_CHANGE_PCT_24H, "price_change_pct_24h")                     \
    X(BATCH_MARKET_SNAPSHOTS_COL_MARKET_CAP_CHANGE_24H, "market_cap_change_24h")                   \
    X(BATCH_MARKET_SNAPSHOTS_COL_MARKET_CAP_CHANGE_PCT_24H, "market_cap_change_pct_24h")           \
    X(BATCH_MARKET_SNAPSHOTS_COL_CIRCULATING_SUPPLY, "circulating_supply")                         \
    X(BATCH_MARKET_SNAPSHOTS_COL_TOTAL_SUPPLY, "total_supply")                                     \
    X(BATCH_MARKET_SNAPSHOTS_COL_MAX_SUPPLY, "max_supply")                                         \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATH, "ath")                                                       \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATH_CHANGE_PCT, "ath_change_pct")                                 \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATH_DATE, "ath_date")                                             \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATL, "atl")                                                       \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATL_CHANGE_PCT, "atl_change_pct")                                 \
    X(BATCH_MARKET_SNAPSHOTS_COL_ATL_DATE, "atl_date")                                             \
    X(BATCH_MARKET_SNAPSHOTS_COL_ROI, "roi")                                                       \
    X(BATCH_MARKET_SNAPSHOTS_COL_FETCHED_AT, "fetched_at")
enum { BATCH_MARKET_SNAPSHOTS_COLUMNS(BATCH_COL_ENUM) BATCH_MARKET_SNAPSHOTS_NCOLS };

/* BATCH_GLOBAL_SNAPSHOTS: the global_snapshots table. */
#define BATCH_GLOBAL_SNAPSHOTS_COLUMNS(X)                                                          \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_SOURCE, "source")                                                 \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_SNAPSHOT_AT, "snapshot_at")                                       \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_ACTIVE_CRYPTOCURRENCIES, "active_cryptocurrencies")               \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_MARKETS, "markets")                                               \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_TOTAL_MARKET_CAP_USD, "total_market_cap_usd")                     \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_TOTAL_VOLUME_USD, "total_volume_usd")                             \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_BTC_DOMINANCE, "btc_dominance")                                   \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_ETH_DOMINANCE, "eth_dominance")                                   \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_MARKET_CAP_CHANGE_PCT_24H_USD, "market_cap_change_pct_24h_usd")   \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_TOTAL_MARKET_CAP, "total_market_cap")                             \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_TOTAL_VOLUME, "total_volume")                                     \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_MARKET_CAP_PERCENTAGE, "market_cap_percentage")                   \
    X(BATCH_GLOBAL_SNAPSHOTS_COL_FETCHED_AT, "fetched_at")
enum { BATCH_GLOBAL_SNAPSHOTS_COLUMNS(BATCH_COL_ENUM) BATCH_GLOBAL_SNAPSHOTS_NCOLS };

/* BATCH_CATEGORIES: the categories table. */
#define BATCH_CATEGORIES_COLUMNS(X)                                                                \
    X(BATCH_CATEGORIES_COL_ID, "id")                                                               \
    X(BATCH_CATEGORIES_COL_NAME, "name")                                                           \
    X(BATCH_CATEGORIES_COL_UPDATED_AT, "updated_at")
enum { BATCH_CATEGORIES_COLUMNS(BATCH_COL_ENUM) BATCH_CATEGORIES_NCOLS };

/* BATCH_ASSET_CATEGORIES: the asset_categories table. */
#define BATCH_ASSET_CATEGORIES_COLUMNS(X)                                                          \
    X(BATCH_ASSET_CATEGORIES_COL_CATEGORY_ID, "category_id")                                       \
    X(BATCH_ASSET_CATEGORIES_COL_ASSET_ID, "asset_id")                                             \
    X(BATCH_ASSET_CATEGORIES_COL_FIRST_SEEN_AT, "first_seen_at")                                   \
    X(BATCH_ASSET_CATEGORIES_COL_LAST_SEEN_AT, "last_seen_at")
enum { BATCH_ASSET_CATEGORIES_COLUMNS(BATCH_COL_ENUM) BATCH_ASSET_CATEGORIES_NCOLS };

/* BATCH_JOB_RUNS: the job_runs table. */
#define BATCH_JOB_RUNS_COLUMNS(X)                                                                  \
    X(BATCH_JOB_RUNS_COL_JOB, "job")                                                               \
    X(BATCH_JOB_RUNS_COL_STARTED_AT, "started_at")                                                 \
    X(BATCH_JOB_RUNS_COL_FINISHED_AT, "finished_at")                                               \
    X(BATCH_JOB_RUNS_COL_STATUS, "status")                                                         \
    X(BATCH_JOB_RUNS_COL_REQUESTS, "requests")                                                     \
    X(BATCH_JOB_RUNS_COL_ROWS_WRITTEN, "rows_written")                                             \
    X(BATCH_JOB_RUNS_COL_DURATION_MS, "duration_ms")                                               \
    X(BATCH_JOB_RUNS_COL_ERROR, "error")                                                           \
    X(BATCH_JOB_RUNS_COL_COUNTED, "counted")                                                       \
    X(BATCH_JOB_RUNS_COL_COUNTED_DETAIL, "counted_detail")                                         \
    X(BATCH_JOB_RUNS_COL_INSTANCE, "instance")
enum { BATCH_JOB_RUNS_COLUMNS(BATCH_COL_ENUM) BATCH_JOB_RUNS_NCOLS };

/* BATCH_ASSETS_DELIST: the delist statement's parameters, in order. */
#define BATCH_ASSETS_DELIST_COLUMNS(X)                                                             \
    X(BATCH_ASSETS_DELIST_COL_DELISTED_AT, "delisted_at")                                          \
    X(BATCH_ASSETS_DELIST_COL_LISTED_BEFORE, "listed_before")
enum { BATCH_ASSETS_DELIST_COLUMNS(BATCH_COL_ENUM) BATCH_ASSETS_DELIST_NCOLS };

/* BATCH_CANDLES: the candles table. */
#define BATCH_CANDLES_COLUMNS(X)                                                                   \
    X(BATCH_CANDLES_COL_SOURCE, "source")                                                          \
    X(BATCH_CANDLES_COL_ASSET_ID, "asset_id")                                                      \
    X(BATCH_CANDLES_COL_VS_CURRENCY, "vs_currency")                                                \
    X(BATCH_CANDLES_COL_INTERVAL_S, "interval_s")                                                  \
    X(BATCH_CANDLES_COL_OPEN_TIME, "open_time")                                                    \
    X(BATCH_CANDLES_COL_PRODUCT, "product")                                                        \
    X(BATCH_CANDLES_COL_OPEN, "open")                                                              \
    X(BATCH_CANDLES_COL_HIGH, "high")                                                              \
    X(BATCH_CANDLES_COL_LOW, "low")                                                                \
    X(BATCH_CANDLES_COL_CLOSE, "close")                                                            \
    X(BATCH_CANDLES_COL_VOLUME, "volume")                                                          \
    X(BATCH_CANDLES_COL_FETCHED_AT, "fetched_at")
enum { BATCH_CANDLES_COLUMNS(BATCH_COL_ENUM) BATCH_CANDLES_NCOLS };

/* BATCH_ASSET_ALIASES: the asset_aliases table. */
#define BATCH_ASSET_ALIASES_COLUMNS(X)                                                             \
    X(BATCH_ASSET_ALIASES_COL_SOURCE, "source")                                                    \
    X(BATCH_ASSET_ALIASES_COL_SOURCE_KEY, "source_key")                                            \
    X(BATCH_ASSET_ALIASES_COL_ASSET_ID, "asset_id")                                                \
    X(BATCH_ASSET_ALIASES_COL_METHOD, "method")                                                    \
    X(BATCH_ASSET_ALIASES_COL_SYMBOL, "symbol")                                                    \
    X(BATCH_ASSET_ALIASES_COL_NAME, "name")                                                        \
    X(BATCH_ASSET_ALIASES_COL_CANDIDATES, "candidates")                                            \
    X(BATCH_ASSET_ALIASES_COL_UPDATED_AT, "updated_at")
enum { BATCH_ASSET_ALIASES_COLUMNS(BATCH_COL_ENUM) BATCH_ASSET_ALIASES_NCOLS };

/* BATCH_PRICES_VWAP: the prices table with the 24-hour VWAP. */
#define BATCH_PRICES_VWAP_COLUMNS(X)                                                               \
    X(BATCH_PRICES_VWAP_COL_ASSET_ID, "asset_id")                                                  \
    X(BATCH_PRICES_VWAP_COL_VS_CURRENCY, "vs_currency")                                            \
    X(BATCH_PRICES_VWAP_COL_SOURCE, "source")                                                      \
    X(BATCH_PRICES_VWAP_COL_SOURCE_UPDATED_AT, "source_updated_at")                                \
    X(BATCH_PRICES_VWAP_COL_PRICE, "price")                                                        \
    X(BATCH_PRICES_VWAP_COL_MARKET_CAP, "market_cap")                                              \
    X(BATCH_PRICES_VWAP_COL_VOLUME_24H, "volume_24h")                                              \
    X(BATCH_PRICES_VWAP_COL_CHANGE_24H_PCT, "change_24h_pct")                                      \
    X(BATCH_PRICES_VWAP_COL_VWAP_24H, "vwap_24h")                                                  \
    X(BATCH_PRICES_VWAP_COL_FETCHED_AT, "fetched_at")
enum { BATCH_PRICES_VWAP_COLUMNS(BATCH_COL_ENUM) BATCH_PRICES_VWAP_NCOLS };

/* BATCH_MARKET_SNAPSHOTS_VWAP: the market_snapshots columns CoinCap's /assets fills. */
#define BATCH_MARKET_SNAPSHOTS_VWAP_COLUMNS(X)                                                     \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_ASSET_ID, "asset_id")                                        \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_VS_CURRENCY, "vs_currency")                                  \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_SOURCE, "source")                                            \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_SNAPSHOT_AT, "snapshot_at")                                  \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_MARKET_CAP_RANK, "market_cap_rank")                          \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_PRICE, "price")                                              \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_MARKET_CAP, "market_cap")                                    \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_TOTAL_VOLUME, "total_volume")                                \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_PRICE_CHANGE_PCT_24H, "price_change_pct_24h")                \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_CIRCULATING_SUPPLY, "circulating_supply")                    \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_MAX_SUPPLY, "max_supply")                                    \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_VWAP_24H, "vwap_24h")                                        \
    X(BATCH_MARKET_SNAPSHOTS_VWAP_COL_FETCHED_AT, "fetched_at")
enum { BATCH_MARKET_SNAPSHOTS_VWAP_COLUMNS(BATCH_COL_ENUM) BATCH_MARKET_SNAPSHOTS_VWAP_NCOLS };

/* BATCH_CANDLE_FILL: the backfill-progress statement's parameters, in order. */
#define BATCH_CANDLE_FILL_COLUMNS(X)                                                               \
    X(BATCH_CANDLE_FILL_COL_SOURCE, "source")                                                      \
    X(BATCH_CANDLE_FILL_COL_PRODUCT, "product")                                                    \
    X(BATCH_CANDLE_FILL_COL_INTERVAL_S, "interval_s")                                              \
    X(BATCH_CANDLE_FILL_COL_FILLED_TO, "filled_to")                                                \
    X(BATCH_CANDLE_FILL_COL_UPDATED_AT, "updated_at")
enum { BATCH_CANDLE_FILL_COLUMNS(BATCH_COL_ENUM) BATCH_CANDLE_FILL_NCOLS };
/* ---- analytics (src/sources/analytics/) ---- */

/* BATCH_ANALYTICS_MARK: marks the hours of prices rows fetched since the last mark. */
#define BATCH_ANALYTICS_MARK_COLUMNS(X)                                                            \
    X(BATCH_ANALYTICS_MARK_COL_MARKED_AT, "marked_at")                                             \
    X(BATCH_ANALYTICS_MARK_COL_FIRST_RUN_AT, "first_run_at")
enum { BATCH_ANALYTICS_MARK_COLUMNS(BATCH_COL_ENUM) BATCH_ANALYTICS_MARK_NCOLS };

/* BATCH_ANALYTICS_UNMARK: forgets marks of [from, to) made no later than marked_at. */
#define BATCH_ANALYTICS_UNMARK_COLUMNS(X)                                                          \
    X(BATCH_ANALYTICS_UNMARK_COL_FROM, "from")                                                     \
    X(BATCH_ANALYTICS_UNMARK_COL_TO, "to")                                                         \
    X(BATCH_ANALYTICS_UNMARK_COL_MARKED_AT, "marked_at")
enum { BATCH_ANALYTICS_UNMARK_COLUMNS(BATCH_COL_ENUM) BATCH_ANALYTICS_UNMARK_NCOLS };

/* BATCH_ANALYTICS_STATE: the analytics_state table. */
#define BATCH_ANALYTICS_STATE_COLUMNS(X)                                                           \
    X(BATCH_ANALYTICS_STATE_COL_NAME, "name")                                                      \
    X(BATCH_ANALYTICS_STATE_COL_VALUE, "value")
enum { BATCH_ANALYTICS_STATE_COLUMNS(BATCH_COL_ENUM) BATCH_ANALYTICS_STATE_NCOLS };

/* BATCH_ROLLUPS_HOURLY, BATCH_ROLLUPS_DAILY: the buckets that start in [from, to). */
#define BATCH_ROLLUPS_COLUMNS(X)                                                                   \
    X(BATCH_ROLLUPS_COL_FROM, "from")                                                              \
    X(BATCH_ROLLUPS_COL_TO, "to")
enum { BATCH_ROLLUPS_COLUMNS(BATCH_COL_ENUM) BATCH_ROLLUPS_NCOLS };

/* BATCH_INDICATORS_DAILY: the indicators_daily table. */
#define BATCH_INDICATORS_DAILY_COLUMNS(X)                                                          \
    X(BATCH_INDICATORS_DAILY_COL_SOURCE, "source")                                                 \
    X(BATCH_INDICATORS_DAILY_COL_ASSET_ID, "asset_id")                                             \
    X(BATCH_INDICATORS_DAILY_COL_VS_CURRENCY, "vs_currency")                                       \
    X(BATCH_INDICATORS_DAILY_COL_DAY, "day")                                                       \
    X(BATCH_INDICATORS_DAILY_COL_CLOSE, "close")                                                   \
    X(BATCH_INDICATORS_DAILY_COL_MARKET_CAP, "market_cap")                                         \
    X(BATCH_INDICATORS_DAILY_COL_RETURN_1D, "return_1d")                                           \
    X(BATCH_INDICATORS_DAILY_COL_RETURN_ND, "return_nd")                                           \
    X(BATCH_INDICATORS_DAILY_COL_RETURN_DAYS, "return_days")                                       \
    X(BATCH_INDICATORS_DAILY_COL_RSI_14, "rsi_14")                                                 \
    X(BATCH_INDICATORS_DAILY_COL_AVG_GAIN, "avg_gain")                                             \
    X(BATCH_INDICATORS_DAILY_COL_AVG_LOSS, "avg_loss")                                             \
    X(BATCH_INDICATORS_DAILY_COL_VOLATILITY_14D, "volatility_14d")                                 \
    X(BATCH_INDICATORS_DAILY_COL_VOLATILITY_30D, "volatility_30d")
enum { BATCH_INDICATORS_DAILY_COLUMNS(BATCH_COL_ENUM) BATCH_INDICATORS_DAILY_NCOLS };

/* BATCH_MOVERS_CLEAR: the movers of the days in [from_day, to_day]. */
#define BATCH_MOVERS_CLEAR_COLUMNS(X)                                                              \
    X(BATCH_MOVERS_CLEAR_COL_FROM_DAY, "from_day")                                                 \
    X(BATCH_MOVERS_CLEAR_COL_TO_DAY, "to_day")
enum { BATCH_MOVERS_CLEAR_COLUMNS(BATCH_COL_ENUM) BATCH_MOVERS_CLEAR_NCOLS };

/* BATCH_MOVERS_FILL: ranks the days in [from_day, to_day] (the range twice: top, bottom). */
#define BATCH_MOVERS_FILL_COLUMNS(X)                                                               \
    X(BATCH_MOVERS_FILL_COL_TOP_FROM_DAY, "top_from_day")                                          \
    X(BATCH_MOVERS_FILL_COL_TOP_TO_DAY, "top_to_day")                                              \
    X(BATCH_MOVERS_FILL_COL_TOP_MIN_CAP, "top_min_market_cap")                                     \
    X(BATCH_MOVERS_FILL_COL_BOTTOM_FROM_DAY, "bottom_from_day")                                    \
    X(BATCH_MOVERS_FILL_COL_BOTTOM_TO_DAY, "bottom_to_day")                                        \
    X(BATCH_MOVERS_FILL_COL_BOTTOM_MIN_CAP, "bottom_min_market_cap")                               \
    X(BATCH_MOVERS_FILL_COL_N, "n")
enum { BATCH_MOVERS_FILL_COLUMNS(BATCH_COL_ENUM) BATCH_MOVERS_FILL_NCOLS };

/* BATCH_RETENTION_PRICES, BATCH_RETENTION_SNAPSHOTS: deletes at most `limit` rows of
 * [from, to) that a daily rollup covers. */
#define BATCH_RETENTION_COLUMNS(X)                                                                 \
    X(BATCH_RETENTION_COL_FROM, "from")                                                            \
    X(BATCH_RETENTION_COL_TO, "to")                                                                \
    X(BATCH_RETENTION_COL_LIMIT, "limit")
enum { BATCH_RETENTION_COLUMNS(BATCH_COL_ENUM) BATCH_RETENTION_NCOLS };

/* BATCH_API_USAGE: the api_usage table (the runner's monthly ledger). */
#define BATCH_API_USAGE_COLUMNS(X)                                                                 \
    X(BATCH_API_USAGE_COL_SOURCE, "source")                                                        \
    X(BATCH_API_USAGE_COL_PERIOD_START, "period_start")                                            \
    X(BATCH_API_USAGE_COL_CALLS, "calls")                                                          \
    X(BATCH_API_USAGE_COL_UPDATED_AT, "updated_at")                                                \
    X(BATCH_API_USAGE_COL_CHARGED, "charged")
enum { BATCH_API_USAGE_COLUMNS(BATCH_COL_ENUM) BATCH_API_USAGE_NCOLS };

enum batch_kind { BATCH_KIND_UPSERT = 0, BATCH_KIND_STATEMENT = 1 };

struct batch_spec {
    enum batch_spec_id id;
    const char *name;  /* for logs and metrics, e.g. "market_snapshots" */
    const char *table; /* SQL table */
    enum batch_kind kind;
    const char *const *cols; /* column names, in value order */
    uint16_t ncols;
    /* UPSERT: the text after ON DUPLICATE KEY UPDATE. STATEMENT: the statement with one `?`
     * per column, in order. */
    const char *sql;
};

/* The spec for an id; NULL when out of range. Thread: any (the table is static). */
const struct batch_spec *batch_spec(enum batch_spec_id id);

/* Index of a column of a spec by name, or -1. */
int batch_spec_col(const struct batch_spec *spec, const char *col);

struct batch_arena_chunk;

struct batch {
    const struct batch_spec *spec;
    uint32_t nrows;
    uint32_t cap;     /* rows allocated */
    struct val *vals; /* nrows * spec->ncols */
    size_t bytes;     /* an upper bound on the SQL text these rows need */
    struct batch_arena_chunk *arena;
    struct batch *next; /* free for the owner's queues */
};

/* A new empty batch for a spec, with room for `cap_hint` rows (it grows). NULL on OOM. */
struct batch *batch_new(enum batch_spec_id id, uint32_t cap_hint);

/* Frees a batch and its strings; NULL is a no-op. */
void batch_free(struct batch *b);

/* Appends a row of NULLs and returns its index, or -ENOMEM. */
int batch_add_row(struct batch *b);

/* Removes the last row (a parser that gives up on a row halfway). */
void batch_drop_last(struct batch *b);

/* Setters for row `row` (< nrows), column `col` (< spec->ncols; look it up by name with
 * batch_spec_col, never by a bare number). A row starts out all NULL. */

/* Stores NULL. Cannot fail. */
void batch_set_null(struct batch *b, uint32_t row, uint16_t col);
/* Stores a VAL_INT. Cannot fail. */
void batch_set_int(struct batch *b, uint32_t row, uint16_t col, int64_t v);
/* Stores a VAL_DBL and returns 0; NaN and +-Inf are stored as NULL and return 1 (so parsers
 * can count them). Cannot fail otherwise. */
int batch_set_dbl(struct batch *b, uint32_t row, uint16_t col, double v);
/* Stores a VAL_TIME (ms since the epoch). Cannot fail. */
void batch_set_time(struct batch *b, uint32_t row, uint16_t col, int64_t wall_ms);
/* Copies s[0..len) into the batch's arena as a VAL_STR / VAL_JSON value. 0, -ENOMEM or
 * -EINVAL (len above UINT32_MAX); on error the cell keeps its previous value. */
int batch_set_str(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len);
int batch_set_json(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len);

/* The value at (row, col). */
static inline const struct val *batch_val(const struct batch *b, uint32_t row, uint16_t col)
{
    return &b->vals[(size_t)row * b->spec->ncols + col];
}

/* Appends every row of `src` to `dst` (same spec), copying strings. 0 or -ENOMEM/-EINVAL. */
int batch_append(struct batch *dst, const struct batch *src);

/* Moves rows [from, nrows) of `b` into a new batch (for splitting oversized batches).
 * NULL on OOM, in which case b is unchanged. */
struct batch *batch_split_tail(struct batch *b, uint32_t from);

/* Serialization for the spool: a self-contained byte string (spec id, rows, values).
 * batch_encode returns a malloc'd buffer and its length in *len, or NULL on OOM.
 * batch_decode returns a new batch or NULL if the bytes are not a valid encoding. */
unsigned char *batch_encode(const struct batch *b, size_t *len);
struct batch *batch_decode(const unsigned char *buf, size_t len);

#endif
