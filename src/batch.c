/*
 * batch: typed rows for the sink, the table specs, and the spool encoding.
 *
 * Values live in one growing array (nrows x ncols); strings are copied into an arena of
 * chunks that never move, so pointers handed out stay valid until batch_free(). `bytes` keeps
 * an upper bound of the SQL text the rows need (strings may double when escaped), which the
 * writer uses to keep a statement under max_allowed_packet.
 *
 * Encoding (spool): "CGB1", u16 spec id, u16 ncols, u32 nrows, then per value a type byte and
 * its payload (i64/f64 little-endian as stored in memory on the host, u32 length + bytes for
 * strings). The spool adds its own framing and checksum around it.
 */
#include "coingest/batch.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

/* --- specs -------------------------------------------------------------------------------- */

static const char *const assets_list_cols[] = {BATCH_ASSETS_LIST_COLUMNS(BATCH_COL_NAME)};
static const char *const assets_market_cols[] = {BATCH_ASSETS_MARKET_COLUMNS(BATCH_COL_NAME)};
static const char *const prices_cols[] = {BATCH_PRICES_COLUMNS(BATCH_COL_NAME)};
static const char *const market_snapshots_cols[] = {BATCH_MARKET_SNAPSHOTS_COLUMNS(BATCH_COL_NAME)};
static const char *const global_snapshots_cols[] = {BATCH_GLOBAL_SNAPSHOTS_COLUMNS(BATCH_COL_NAME)};
static const char *const categories_cols[] = {BATCH_CATEGORIES_COLUMNS(BATCH_COL_NAME)};
static const char *const asset_categories_cols[] = {BATCH_ASSET_CATEGORIES_COLUMNS(BATCH_COL_NAME)};
static const char *const job_runs_cols[] = {BATCH_JOB_RUNS_COLUMNS(BATCH_COL_NAME)};
static const char *const assets_delist_cols[] = {BATCH_ASSETS_DELIST_COLUMNS(BATCH_COL_NAME)};
static const char *const candles_cols[] = {BATCH_CANDLES_COLUMNS(BATCH_COL_NAME)};
static const char *const asset_aliases_cols[] = {BATCH_ASSET_ALIASES_COLUMNS(BATCH_COL_NAME)};
static const char *const prices_vwap_cols[] = {BATCH_PRICES_VWAP_COLUMNS(BATCH_COL_NAME)};
static const char *const market_snapshots_vwap_cols[] = {
    BATCH_MARKET_SNAPSHOTS_VWAP_COLUMNS(BATCH_COL_NAME)};
static const char *const candle_fill_cols[] = {BATCH_CANDLE_FILL_COLUMNS(BATCH_COL_NAME)};
static const char *const analytics_mark_cols[] = {BATCH_ANALYTICS_MARK_COLUMNS(BATCH_COL_NAME)};
static const char *const analytics_unmark_cols[] = {BATCH_ANALYTICS_UNMARK_COLUMNS(BATCH_COL_NAME)};
static const char *const analytics_state_cols[] = {BATCH_ANALYTICS_STATE_COLUMNS(BATCH_COL_NAME)};
static const char *const rollups_cols[] = {BATCH_ROLLUPS_COLUMNS(BATCH_COL_NAME)};
static const char *const indicators_daily_cols[] = {BATCH_INDICATORS_DAILY_COLUMNS(BATCH_COL_NAME)};
static const char *const movers_clear_cols[] = {BATCH_MOVERS_CLEAR_COLUMNS(BATCH_COL_NAME)};
static const char *const movers_fill_cols[] = {BATCH_MOVERS_FILL_COLUMNS(BATCH_COL_NAME)};
static const char *const retention_cols[] = {BATCH_RETENTION_COLUMNS(BATCH_COL_NAME)};

/* The analytics statements (docs/analytics.md). A rollup is the prices rows of a bucket that
 * carry a price: open and close are the prices at the bucket's first and last
 * source_updated_at (the primary key makes those rows unique), volume_24h and market_cap come
 * from the last one. computed_at moves only when a value changes, so that re-running changes
 * nothing and the indicators job sees what did change. Target columns are qualified in the
 * UPDATE clause: the SELECT reads prices, which has columns of the same names. */
#define HOUR_OF(t) "TIMESTAMP(DATE(" t "), MAKETIME(HOUR(" t "), 0, 0))"
#define DAY_OF(t)  "TIMESTAMP(DATE(" t "))"
#define ROLLUP_SQL(bucket, start)                                                                  \
    "INSERT INTO price_rollups (source, asset_id, vs_currency, bucket, bucket_start, open, high,"  \
    " low, close, samples, volume_24h, market_cap, computed_at)"                                   \
    " SELECT b.source, b.asset_id, b.vs_currency, '" bucket "', b.b_start, po.price, b.b_high,"    \
    " b.b_low, pc.price, b.b_samples, pc.volume_24h, pc.market_cap, NOW(3) FROM"                   \
    " (SELECT source, asset_id, vs_currency, " start " AS b_start,"                                \
    " MIN(source_updated_at) AS t_open, MAX(source_updated_at) AS t_close, MAX(price) AS b_high,"  \
    " MIN(price) AS b_low, COUNT(*) AS b_samples FROM prices"                                      \
    " WHERE source_updated_at >= ? AND source_updated_at < ? AND price IS NOT NULL"                \
    " GROUP BY source, asset_id, vs_currency, b_start) b"                                          \
    " JOIN prices po ON po.asset_id = b.asset_id AND po.vs_currency = b.vs_currency"               \
    " AND po.source = b.source AND po.source_updated_at = b.t_open"                                \
    " JOIN prices pc ON pc.asset_id = b.asset_id AND pc.vs_currency = b.vs_currency"               \
    " AND pc.source = b.source AND pc.source_updated_at = b.t_close"                               \
    " ON DUPLICATE KEY UPDATE price_rollups.computed_at ="                                         \
    " IF(price_rollups.open <=> VALUES(open) AND price_rollups.high <=> VALUES(high)"              \
    " AND price_rollups.low <=> VALUES(low) AND price_rollups.close <=> VALUES(close)"             \
    " AND price_rollups.samples <=> VALUES(samples)"                                               \
    " AND price_rollups.volume_24h <=> VALUES(volume_24h)"                                         \
    " AND price_rollups.market_cap <=> VALUES(market_cap),"                                        \
    " price_rollups.computed_at, VALUES(computed_at)),"                                            \
    " price_rollups.open = VALUES(open), price_rollups.high = VALUES(high),"                       \
    " price_rollups.low = VALUES(low), price_rollups.close = VALUES(close),"                       \
    " price_rollups.samples = VALUES(samples), price_rollups.volume_24h = VALUES(volume_24h),"     \
    " price_rollups.market_cap = VALUES(market_cap)"
#define MOVERS_RANKED(dir, order)                                                                  \
    "SELECT day, vs_currency, source, '" dir "' AS direction, asset_id, return_nd,"                \
    " ROW_NUMBER() OVER (PARTITION BY day, vs_currency, source ORDER BY return_nd " order          \
    ", asset_id) AS rn FROM indicators_daily WHERE day >= ? AND day <= ?"                          \
    " AND return_nd IS NOT NULL AND market_cap >= ?"
#define RETENTION_SQL(table, t)                                                                    \
    "DELETE FROM " table " WHERE " t " >= ? AND " t " < ? AND EXISTS (SELECT 1 FROM"               \
    " price_rollups r WHERE r.source = " table ".source AND r.asset_id = " table ".asset_id"       \
    " AND r.vs_currency = " table ".vs_currency AND r.bucket = '1d'"                               \
    " AND r.bucket_start = " DAY_OF(table "." t) ") ORDER BY " t " LIMIT ?"
static const char *const api_usage_cols[] = {BATCH_API_USAGE_COLUMNS(BATCH_COL_NAME)};

#define COLS(a) a, (uint16_t)(sizeof(a) / sizeof((a)[0]))

static const struct batch_spec specs[BATCH_SPEC_COUNT] = {
    [BATCH_ASSETS_LIST] = {BATCH_ASSETS_LIST, "assets", "assets", BATCH_KIND_UPSERT,
                           COLS(assets_list_cols),
                           "symbol=VALUES(symbol), name=VALUES(name), platforms=VALUES(platforms),"
                           " listed_at=VALUES(listed_at), updated_at=VALUES(updated_at),"
                           " delisted_at=NULL"},
    [BATCH_ASSETS_MARKET] = {BATCH_ASSETS_MARKET, "assets_market", "assets", BATCH_KIND_UPSERT,
                             COLS(assets_market_cols),
                             "symbol=COALESCE(symbol, VALUES(symbol)),"
                             " name=COALESCE(name, VALUES(name)),"
                             " market_cap_rank=VALUES(market_cap_rank),"
                             " image_url=VALUES(image_url), updated_at=VALUES(updated_at)"},
    [BATCH_PRICES] = {BATCH_PRICES, "prices", "prices", BATCH_KIND_UPSERT, COLS(prices_cols),
                      "price=VALUES(price), market_cap=VALUES(market_cap),"
                      " volume_24h=VALUES(volume_24h), change_24h_pct=VALUES(change_24h_pct)"},
    [BATCH_MARKET_SNAPSHOTS] = {BATCH_MARKET_SNAPSHOTS, "market_snapshots", "market_snapshots",
                                BATCH_KIND_UPSERT, COLS(market_snapshots_cols),
                                "market_cap_rank=VALUES(market_cap_rank), price=VALUES(price),"
                                " market_cap=VALUES(market_cap),"
                                " fully_diluted_valuation=VALUES(fully_diluted_valuation),"
                                " total_volume=VALUES(total_volume), high_24h=VALUES(high_24h),"
                                " low_24h=VALUES(low_24h),"
                                " price_change_24h=VALUES(price_change_24h),"
                                " price_change_pct_24h=VALUES(price_change_pct_24h),"
                                " market_cap_change_24h=VALUES(market_cap_change_24h),"
                                " market_cap_change_pct_24h=VALUES(market_cap_change_pct_24h),"
                                " circulating_supply=VALUES(circulating_supply),"
                                " total_supply=VALUES(total_supply),"
                                " max_supply=VALUES(max_supply), ath=VALUES(ath),"
                                " ath_change_pct=VALUES(ath_change_pct), ath_date=VALUES(ath_date),"
                                " atl=VALUES(atl), atl_change_pct=VALUES(atl_change_pct),"
                                " atl_date=VALUES(atl_date), roi=VALUES(roi)"},
    [BATCH_GLOBAL_SNAPSHOTS] = {BATCH_GLOBAL_SNAPSHOTS, "global_snapshots", "global_snapshots",
                                BATCH_KIND_UPSERT, COLS(global_snapshots_cols),
                                "active_cryptocurrencies=VALUES(active_cryptocurrencies),"
                                " markets=VALUES(markets),"
                                " total_market_cap_usd=VALUES(total_market_cap_usd),"
                                " total_volume_usd=VALUES(total_volume_usd),"
                                " btc_dominance=VALUES(btc_dominance),"
                                " eth_dominance=VALUES(eth_dominance),"
                                " market_cap_change_pct_24h_usd="
                                "VALUES(market_cap_change_pct_24h_usd),"
                                " total_market_cap=VALUES(total_market_cap),"
                                " total_volume=VALUES(total_volume),"
                                " market_cap_percentage=VALUES(market_cap_percentage)"},
    [BATCH_CATEGORIES] = {BATCH_CATEGORIES, "categories", "categories", BATCH_KIND_UPSERT,
                          COLS(categories_cols),
                          "name=VALUES(name), updated_at=VALUES(updated_at)"},
    [BATCH_ASSET_CATEGORIES] = {BATCH_ASSET_CATEGORIES, "asset_categories", "asset_categories",
                                BATCH_KIND_UPSERT, COLS(asset_categories_cols),
                                "last_seen_at=GREATEST(last_seen_at, VALUES(last_seen_at))"},
    [BATCH_JOB_RUNS] = {BATCH_JOB_RUNS, "job_runs", "job_runs", BATCH_KIND_UPSERT,
                        COLS(job_runs_cols),
                        "finished_at=VALUES(finished_at), status=VALUES(status),"
                        " requests=VALUES(requests), rows_written=VALUES(rows_written),"
                        " duration_ms=VALUES(duration_ms), error=VALUES(error),"
                        " counted=VALUES(counted), counted_detail=VALUES(counted_detail),"
                        " instance=VALUES(instance)"},
    [BATCH_ASSETS_DELIST] = {BATCH_ASSETS_DELIST, "assets_delist", "assets", BATCH_KIND_STATEMENT,
                             COLS(assets_delist_cols),
                             "UPDATE assets SET delisted_at = ? WHERE delisted_at IS NULL"
                             " AND listed_at IS NOT NULL AND listed_at < ?"},
    [BATCH_CANDLES] = {BATCH_CANDLES, "candles", "candles", BATCH_KIND_UPSERT, COLS(candles_cols),
                       "product=VALUES(product), open=VALUES(open), high=VALUES(high),"
                       " low=VALUES(low), close=VALUES(close), volume=VALUES(volume)"},
    [BATCH_ASSET_ALIASES] = {BATCH_ASSET_ALIASES, "asset_aliases", "asset_aliases",
                             BATCH_KIND_UPSERT, COLS(asset_aliases_cols),
                             "asset_id=VALUES(asset_id), method=VALUES(method),"
                             " symbol=VALUES(symbol), name=VALUES(name),"
                             " candidates=VALUES(candidates), updated_at=VALUES(updated_at)"},
    [BATCH_PRICES_VWAP] = {BATCH_PRICES_VWAP, "prices_vwap", "prices", BATCH_KIND_UPSERT,
                           COLS(prices_vwap_cols),
                           "price=VALUES(price), market_cap=VALUES(market_cap),"
                           " volume_24h=VALUES(volume_24h), change_24h_pct=VALUES(change_24h_pct),"
                           " vwap_24h=VALUES(vwap_24h)"},
    [BATCH_MARKET_SNAPSHOTS_VWAP] = {BATCH_MARKET_SNAPSHOTS_VWAP, "market_snapshots_vwap",
                                     "market_snapshots", BATCH_KIND_UPSERT,
                                     COLS(market_snapshots_vwap_cols),
                                     "market_cap_rank=VALUES(market_cap_rank), price=VALUES(price),"
                                     " market_cap=VALUES(market_cap),"
                                     " total_volume=VALUES(total_volume),"
                                     " price_change_pct_24h=VALUES(price_change_pct_24h),"
                                     " circulating_supply=VALUES(circulating_supply),"
                                     " max_supply=VALUES(max_supply), vwap_24h=VALUES(vwap_24h)"},
    [BATCH_CANDLE_FILL] = {BATCH_CANDLE_FILL, "candle_fill", "candle_fill", BATCH_KIND_STATEMENT,
                           COLS(candle_fill_cols),
                           "INSERT INTO candle_fill (source, product, interval_s, filled_to,"
                           " updated_at) VALUES (?, ?, ?, ?, ?) ON DUPLICATE KEY UPDATE"
                           " filled_to = GREATEST(filled_to, VALUES(filled_to)),"
                           " updated_at = VALUES(updated_at)"},
    [BATCH_ANALYTICS_MARK] =
        {BATCH_ANALYTICS_MARK, "analytics_mark", "analytics_dirty", BATCH_KIND_STATEMENT,
         COLS(analytics_mark_cols),
         "INSERT INTO analytics_dirty (bucket_start, marked_at)"
         " SELECT DISTINCT " HOUR_OF(
             "p.source_updated_at") ", ?"
                                    " FROM prices p WHERE p.fetched_at > COALESCE((SELECT s.value "
                                    "FROM"
                                    " analytics_state s WHERE s.name = 'rollups.fetched_until'), ?)"
                                    " - INTERVAL 10 MINUTE"
                                    " ON DUPLICATE KEY UPDATE marked_at = VALUES(marked_at)"},
    [BATCH_ANALYTICS_UNMARK] = {BATCH_ANALYTICS_UNMARK, "analytics_unmark", "analytics_dirty",
                                BATCH_KIND_STATEMENT, COLS(analytics_unmark_cols),
                                "DELETE FROM analytics_dirty WHERE bucket_start >= ?"
                                " AND bucket_start < ? AND marked_at <= ?"},
    [BATCH_ANALYTICS_STATE] = {BATCH_ANALYTICS_STATE, "analytics_state", "analytics_state",
                               BATCH_KIND_UPSERT, COLS(analytics_state_cols),
                               "value=VALUES(value)"},
    [BATCH_ROLLUPS_HOURLY] = {BATCH_ROLLUPS_HOURLY, "rollups_hourly", "price_rollups",
                              BATCH_KIND_STATEMENT, COLS(rollups_cols),
                              ROLLUP_SQL("1h", HOUR_OF("source_updated_at"))},
    [BATCH_ROLLUPS_DAILY] = {BATCH_ROLLUPS_DAILY, "rollups_daily", "price_rollups",
                             BATCH_KIND_STATEMENT, COLS(rollups_cols),
                             ROLLUP_SQL("1d", DAY_OF("source_updated_at"))},
    [BATCH_INDICATORS_DAILY] = {BATCH_INDICATORS_DAILY, "indicators_daily", "indicators_daily",
                                BATCH_KIND_UPSERT, COLS(indicators_daily_cols),
                                "close=VALUES(close), market_cap=VALUES(market_cap),"
                                " return_1d=VALUES(return_1d), return_nd=VALUES(return_nd),"
                                " return_days=VALUES(return_days), rsi_14=VALUES(rsi_14),"
                                " avg_gain=VALUES(avg_gain), avg_loss=VALUES(avg_loss),"
                                " volatility_14d=VALUES(volatility_14d),"
                                " volatility_30d=VALUES(volatility_30d)"},
    [BATCH_MOVERS_CLEAR] = {BATCH_MOVERS_CLEAR, "movers_clear", "movers_daily",
                            BATCH_KIND_STATEMENT, COLS(movers_clear_cols),
                            "DELETE FROM movers_daily WHERE day >= ? AND day <= ?"},
    [BATCH_MOVERS_FILL] =
        {BATCH_MOVERS_FILL, "movers_fill", "movers_daily", BATCH_KIND_STATEMENT,
         COLS(movers_fill_cols),
         "INSERT INTO movers_daily (day, vs_currency, source, direction, `rank`,"
         " asset_id, return_nd) SELECT day, vs_currency, source, direction, rn,"
         " asset_id, return_nd FROM (" MOVERS_RANKED("top", "DESC") " UNION ALL " MOVERS_RANKED(
             "bottom", "ASC") ") ranked WHERE rn <= ?"
                              " ON DUPLICATE KEY UPDATE asset_id = VALUES(asset_id),"
                              " return_nd = VALUES(return_nd)"},
    [BATCH_RETENTION_PRICES] = {BATCH_RETENTION_PRICES, "retention_prices", "prices",
                                BATCH_KIND_STATEMENT, COLS(retention_cols),
                                RETENTION_SQL("prices", "source_updated_at")},
    [BATCH_RETENTION_SNAPSHOTS] = {BATCH_RETENTION_SNAPSHOTS, "retention_market_snapshots",
                                   "market_snapshots", BATCH_KIND_STATEMENT, COLS(retention_cols),
                                   RETENTION_SQL("market_snapshots", "snapshot_at")},
    /* An absolute count: writing it again changes nothing, and an older (smaller) count
     * replayed from the spool, or written by a process that could not read the row, never
     * lowers it. */
    [BATCH_API_USAGE] = {BATCH_API_USAGE, "api_usage", "api_usage", BATCH_KIND_UPSERT,
                         COLS(api_usage_cols),
                         "calls=GREATEST(calls, VALUES(calls)), updated_at=VALUES(updated_at),"
                         " charged=COALESCE(VALUES(charged), charged)"},
};

const struct batch_spec *batch_spec(enum batch_spec_id id)
{
    if ((unsigned)id >= BATCH_SPEC_COUNT)
        return NULL;
    return &specs[id];
}

int batch_spec_col(const struct batch_spec *spec, const char *col)
{
    for (uint16_t i = 0; i < spec->ncols; i++)
        if (strcmp(spec->cols[i], col) == 0)
            return i;
    return -1;
}

/* --- arena -------------------------------------------------------------------------------- */

struct batch_arena_chunk {
    struct batch_arena_chunk *next;
    size_t used, cap;
    char data[];
};

#define ARENA_CHUNK 16384

static char *arena_copy(struct batch *b, const char *s, size_t len)
{
    struct batch_arena_chunk *c = b->arena;
    if (!c || c->cap - c->used < len) {
        size_t cap = len > ARENA_CHUNK ? len : ARENA_CHUNK;
        c = malloc(sizeof(*c) + cap);
        if (!c)
            return NULL;
        c->used = 0;
        c->cap = cap;
        /* A chunk made for one large string goes behind the current one, so the current
         * chunk keeps filling. */
        if (b->arena && len > ARENA_CHUNK) {
            c->next = b->arena->next;
            b->arena->next = c;
        } else {
            c->next = b->arena;
            b->arena = c;
        }
    }
    char *p = c->data + c->used;
    if (len)
        memcpy(p, s, len);
    c->used += len;
    return p;
}

/* --- rows --------------------------------------------------------------------------------- */

struct batch *batch_new(enum batch_spec_id id, uint32_t cap_hint)
{
    const struct batch_spec *spec = batch_spec(id);
    if (!spec)
        return NULL;
    struct batch *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->spec = spec;
    b->cap = cap_hint ? cap_hint : 16;
    b->vals = calloc((size_t)b->cap * spec->ncols, sizeof(struct val));
    if (!b->vals) {
        free(b);
        return NULL;
    }
    return b;
}

void batch_free(struct batch *b)
{
    if (!b)
        return;
    struct batch_arena_chunk *c = b->arena;
    while (c) {
        struct batch_arena_chunk *next = c->next;
        free(c);
        c = next;
    }
    free(b->vals);
    free(b);
}

/* Room for a value's SQL text: separators plus the widest literal of its kind. */
#define ROW_OVERHEAD 4
#define NUM_BYTES    32

int batch_add_row(struct batch *b)
{
    size_t ncols = b->spec->ncols;
    if (b->nrows == b->cap) {
        uint32_t cap = b->cap * 2;
        struct val *v = realloc(b->vals, (size_t)cap * ncols * sizeof(struct val));
        if (!v)
            return -ENOMEM;
        b->vals = v;
        b->cap = cap;
    }
    memset(&b->vals[(size_t)b->nrows * ncols], 0, ncols * sizeof(struct val));
    b->bytes += ROW_OVERHEAD + ncols * 5; /* "NULL," per column until set */
    return (int)b->nrows++;
}

static size_t val_bytes(const struct val *v)
{
    switch (v->type) {
    case VAL_STR:
    case VAL_JSON:
        return 2 * (size_t)v->len + 3;
    case VAL_INT:
    case VAL_DBL:
    case VAL_TIME:
        return NUM_BYTES;
    default:
        return 5;
    }
}

void batch_drop_last(struct batch *b)
{
    if (b->nrows == 0)
        return;
    b->nrows--;
    size_t ncols = b->spec->ncols;
    for (size_t c = 0; c < ncols; c++)
        b->bytes -= val_bytes(&b->vals[(size_t)b->nrows * ncols + c]) - 5;
    b->bytes -= ROW_OVERHEAD + ncols * 5;
}

static struct val *slot(struct batch *b, uint32_t row, uint16_t col)
{
    struct val *v = &b->vals[(size_t)row * b->spec->ncols + col];
    b->bytes -= val_bytes(v);
    return v;
}

void batch_set_null(struct batch *b, uint32_t row, uint16_t col)
{
    struct val *v = slot(b, row, col);
    v->type = VAL_NULL;
    b->bytes += val_bytes(v);
}

void batch_set_int(struct batch *b, uint32_t row, uint16_t col, int64_t x)
{
    struct val *v = slot(b, row, col);
    v->type = VAL_INT;
    v->u.i = x;
    b->bytes += val_bytes(v);
}

int batch_set_dbl(struct batch *b, uint32_t row, uint16_t col, double x)
{
    struct val *v = slot(b, row, col);
    int nonfinite = !isfinite(x);
    if (nonfinite) {
        v->type = VAL_NULL;
    } else {
        v->type = VAL_DBL;
        v->u.d = x;
    }
    b->bytes += val_bytes(v);
    return nonfinite;
}

void batch_set_time(struct batch *b, uint32_t row, uint16_t col, int64_t wall_ms)
{
    struct val *v = slot(b, row, col);
    v->type = VAL_TIME;
    v->u.i = wall_ms;
    b->bytes += val_bytes(v);
}

static int set_text(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len,
                    uint8_t type)
{
    if (len > UINT32_MAX)
        return -EINVAL;
    char *p = arena_copy(b, s, len);
    if (!p && len)
        return -ENOMEM;
    struct val *v = slot(b, row, col);
    v->type = type;
    v->len = (uint32_t)len;
    v->u.s = p;
    b->bytes += val_bytes(v);
    return 0;
}

int batch_set_str(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len)
{
    return set_text(b, row, col, s, len, VAL_STR);
}

int batch_set_json(struct batch *b, uint32_t row, uint16_t col, const char *s, size_t len)
{
    return set_text(b, row, col, s, len, VAL_JSON);
}

static int copy_row(struct batch *dst, const struct batch *src, uint32_t r)
{
    int row = batch_add_row(dst);
    if (row < 0)
        return row;
    for (uint16_t c = 0; c < src->spec->ncols; c++) {
        const struct val *v = batch_val(src, r, c);
        int rc = 0;
        switch (v->type) {
        case VAL_INT:
            batch_set_int(dst, (uint32_t)row, c, v->u.i);
            break;
        case VAL_DBL:
            batch_set_dbl(dst, (uint32_t)row, c, v->u.d);
            break;
        case VAL_TIME:
            batch_set_time(dst, (uint32_t)row, c, v->u.i);
            break;
        case VAL_STR:
        case VAL_JSON:
            rc = set_text(dst, (uint32_t)row, c, v->u.s, v->len, v->type);
            break;
        default:
            break;
        }
        if (rc) {
            batch_drop_last(dst);
            return rc;
        }
    }
    return 0;
}

int batch_append(struct batch *dst, const struct batch *src)
{
    if (dst->spec != src->spec)
        return -EINVAL;
    for (uint32_t r = 0; r < src->nrows; r++) {
        int rc = copy_row(dst, src, r);
        if (rc)
            return rc;
    }
    return 0;
}

struct batch *batch_split_tail(struct batch *b, uint32_t from)
{
    if (from > b->nrows)
        from = b->nrows;
    struct batch *t = batch_new(b->spec->id, b->nrows - from ? b->nrows - from : 1);
    if (!t)
        return NULL;
    for (uint32_t r = from; r < b->nrows; r++) {
        if (copy_row(t, b, r)) {
            batch_free(t);
            return NULL;
        }
    }
    while (b->nrows > from)
        batch_drop_last(b);
    return t;
}

/* --- encoding ----------------------------------------------------------------------------- */

struct wbuf {
    unsigned char *p;
    size_t len, cap;
    int oom;
};

static void put(struct wbuf *w, const void *src, size_t n)
{
    if (w->oom)
        return;
    if (w->cap - w->len < n) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap - w->len < n)
            cap *= 2;
        unsigned char *p = realloc(w->p, cap);
        if (!p) {
            w->oom = 1;
            return;
        }
        w->p = p;
        w->cap = cap;
    }
    memcpy(w->p + w->len, src, n);
    w->len += n;
}

unsigned char *batch_encode(const struct batch *b, size_t *len)
{
    struct wbuf w = {0};
    uint16_t id = (uint16_t)b->spec->id, ncols = b->spec->ncols;
    uint32_t nrows = b->nrows;
    put(&w, "CGB1", 4);
    put(&w, &id, sizeof(id));
    put(&w, &ncols, sizeof(ncols));
    put(&w, &nrows, sizeof(nrows));
    for (size_t i = 0; i < (size_t)nrows * ncols; i++) {
        const struct val *v = &b->vals[i];
        put(&w, &v->type, 1);
        switch (v->type) {
        case VAL_INT:
        case VAL_TIME:
            put(&w, &v->u.i, sizeof(v->u.i));
            break;
        case VAL_DBL:
            put(&w, &v->u.d, sizeof(v->u.d));
            break;
        case VAL_STR:
        case VAL_JSON:
            put(&w, &v->len, sizeof(v->len));
            put(&w, v->u.s, v->len);
            break;
        default:
            break;
        }
    }
    if (w.oom) {
        free(w.p);
        return NULL;
    }
    *len = w.len;
    return w.p;
}

static int take(const unsigned char **p, const unsigned char *end, void *dst, size_t n)
{
    if ((size_t)(end - *p) < n)
        return -1;
    memcpy(dst, *p, n);
    *p += n;
    return 0;
}

struct batch *batch_decode(const unsigned char *buf, size_t len)
{
    const unsigned char *p = buf, *end = buf + len;
    char magic[4];
    uint16_t id, ncols;
    uint32_t nrows;
    if (take(&p, end, magic, 4) || memcmp(magic, "CGB1", 4) || take(&p, end, &id, 2) ||
        take(&p, end, &ncols, 2) || take(&p, end, &nrows, 4))
        return NULL;
    const struct batch_spec *spec = batch_spec((enum batch_spec_id)id);
    /* Columns are only ever appended to a spec (and are nullable), so a record an older
     * binary spooled with fewer columns is the same rows with the new columns NULL: it replays
     * after an upgrade instead of being refused. More columns than the spec is a newer
     * binary's record (or damage) and is refused. Each value takes at least one byte, which
     * bounds nrows before allocating. */
    if (!spec || ncols == 0 || ncols > spec->ncols || (size_t)nrows * ncols > (size_t)(end - p))
        return NULL;
    struct batch *b = batch_new((enum batch_spec_id)id, nrows ? nrows : 1);
    if (!b)
        return NULL;
    for (uint32_t r = 0; r < nrows; r++) {
        if (batch_add_row(b) < 0)
            goto fail;
        for (uint16_t c = 0; c < ncols; c++) {
            uint8_t type;
            int64_t i;
            double d;
            uint32_t n;
            if (take(&p, end, &type, 1))
                goto fail;
            switch (type) {
            case VAL_NULL:
                break;
            case VAL_INT:
            case VAL_TIME:
                if (take(&p, end, &i, sizeof(i)))
                    goto fail;
                if (type == VAL_INT)
                    batch_set_int(b, r, c, i);
                else
                    batch_set_time(b, r, c, i);
                break;
            case VAL_DBL:
                if (take(&p, end, &d, sizeof(d)) || !isfinite(d))
                    goto fail;
                batch_set_dbl(b, r, c, d);
                break;
            case VAL_STR:
            case VAL_JSON:
                if (take(&p, end, &n, sizeof(n)) || (size_t)(end - p) < n)
                    goto fail;
                if (set_text(b, r, c, (const char *)p, n, type))
                    goto fail;
                p += n;
                break;
            default:
                goto fail;
            }
        }
    }
    if (p != end)
        goto fail;
    return b;
fail:
    batch_free(b);
    return NULL;
}
