/*
 * analytics indicators: indicators_daily and movers_daily from the daily rollups
 * (docs/analytics.md).
 *
 * A run finds the series (source, asset, vs_currency) whose daily rollups have no indicators
 * row yet, or one made from another close or market cap: only rollups that changed since the
 * previous run (price_rollups.computed_at, the server's clock, less a 10-minute margin) are
 * looked at. For each such series the first such day is where the computation starts; the
 * days before it are context (their closes and the Wilder averages stored for them). Then it
 * reads the daily rollups a page of days at a time, in day order, computes each series in C
 * (calc.c) and upserts the rows. Every missing day is filled, so a backfilled year gets a
 * year of indicators. Last, the movers of every day it touched are ranked again in SQL
 * (statements, so they run after the indicators rows they rank have committed).
 *
 * The watermark is named after return_days: changing return_days starts from scratch.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/batch.h"
#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/util.h"
#include "sources/analytics/analytics.h"

#define PAGE_ROWS     200000 /* daily rollups a page aims at */
#define MAX_PAGE_ROWS 4000000
#define MAX_SERIES    4000000
#define EMIT_ROWS     1000
#define MOVERS_DAYS   31 /* days per movers statement */

static const struct cfg_key indicators_keys[] = {
    {"return_days", CFG_KEY_U64, "5", 1, 365},
    {"movers", CFG_KEY_U64, "5", 1, 1000},
    {"movers_min_market_cap", CFG_KEY_U64, "1000000", 0, 0},
};

struct series {
    char *key;                                   /* source \x1f asset_id \x1f vs_currency */
    const char *source, *asset_id, *vs_currency; /* into key (NUL-separated copy) */
    char *parts;
    int64_t from_day;
    struct an_series s;
};

struct ind_run {
    uint32_t return_days, movers;
    double min_cap;
    char watermark_name[48];
    char now[32];          /* the server's NOW(3) at the start */
    int64_t last_day;      /* the newest daily rollup */
    uint64_t rows_per_day; /* daily rollups of that day, to size pages */
    struct series *series;
    size_t nseries;
    int64_t min_from, page_from, page_days;
    struct batch *out;
    uint64_t rows;
};

static uint32_t job_u32(struct run *r, const char *key)
{
    const struct cfg_value *v = config_job_value(run_job(r), key);
    return v ? (uint32_t)v->u : 0;
}

static const char *cell(const struct store_rows *rows, uint32_t row, uint32_t col)
{
    return rows->cells[(size_t)row * rows->ncols + col];
}

static int series_cmp(const void *a, const void *b)
{
    return strcmp(((const struct series *)a)->key, ((const struct series *)b)->key);
}

static char *make_key(const char *src, const char *asset, const char *vs)
{
    size_t n = strlen(src) + strlen(asset) + strlen(vs) + 3;
    char *k = malloc(n);
    if (k)
        snprintf(k, n, "%s\x1f%s\x1f%s", src, asset, vs);
    return k;
}

static struct series *find_series(struct ind_run *st, const char *src, const char *asset,
                                  const char *vs)
{
    char buf[640];
    int n = snprintf(buf, sizeof(buf), "%s\x1f%s\x1f%s", src, asset, vs);
    if (n < 0 || (size_t)n >= sizeof(buf))
        return NULL;
    struct series key = {.key = buf};
    return bsearch(&key, st->series, st->nseries, sizeof(key), series_cmp);
}

static int day_of(const char *s, int64_t *day)
{
    int64_t ms;
    if (an_parse_time(s, &ms) < 0)
        return -EINVAL;
    *day = an_floor(ms, AN_MS_DAY) / AN_MS_DAY;
    return 0;
}

static int flush_out(struct run *r, struct ind_run *st)
{
    struct batch *b = st->out;
    st->out = NULL;
    return b ? run_emit(r, b) : 0;
}

static int set_str(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

static void set_opt(struct batch *b, uint32_t row, uint16_t col, bool has, double v)
{
    if (has)
        batch_set_dbl(b, row, col, v);
}

static int emit_day(struct run *r, struct ind_run *st, const struct series *se, int64_t day,
                    double close, const char *mcap, const struct an_day *d)
{
    if (!st->out && !(st->out = batch_new(BATCH_INDICATORS_DAILY, EMIT_ROWS)))
        return -ENOMEM;
    struct batch *b = st->out;
    int row = batch_add_row(b);
    if (row < 0)
        return -ENOMEM;
    uint32_t i = (uint32_t)row;
    char dbuf[16];
    an_format_day(day, dbuf, sizeof(dbuf));
    if (set_str(b, i, BATCH_INDICATORS_DAILY_COL_SOURCE, se->source) ||
        set_str(b, i, BATCH_INDICATORS_DAILY_COL_ASSET_ID, se->asset_id) ||
        set_str(b, i, BATCH_INDICATORS_DAILY_COL_VS_CURRENCY, se->vs_currency) ||
        set_str(b, i, BATCH_INDICATORS_DAILY_COL_DAY, dbuf))
        return -ENOMEM;
    batch_set_dbl(b, i, BATCH_INDICATORS_DAILY_COL_CLOSE, close);
    if (mcap)
        batch_set_dbl(b, i, BATCH_INDICATORS_DAILY_COL_MARKET_CAP, strtod(mcap, NULL));
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_RETURN_1D, d->has_return_1d, d->return_1d);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_RETURN_ND, d->has_return_nd, d->return_nd);
    batch_set_int(b, i, BATCH_INDICATORS_DAILY_COL_RETURN_DAYS, st->return_days);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_RSI_14, d->has_rsi, d->rsi);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_AVG_GAIN, d->has_rsi, d->avg_gain);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_AVG_LOSS, d->has_rsi, d->avg_loss);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_VOLATILITY_14D, d->has_vol_short, d->vol_short);
    set_opt(b, i, BATCH_INDICATORS_DAILY_COL_VOLATILITY_30D, d->has_vol_long, d->vol_long);
    st->rows++;
    return b->nrows >= EMIT_ROWS ? flush_out(r, st) : 0;
}

/* The movers of [from, to] (day numbers), ranked again; then the watermark. */
static int emit_movers_and_state(struct run *r, struct ind_run *st)
{
    for (int64_t d = st->min_from; st->nseries && d <= st->last_day; d += MOVERS_DAYS) {
        int64_t e = d + MOVERS_DAYS - 1 < st->last_day ? d + MOVERS_DAYS - 1 : st->last_day;
        char from[16], to[16];
        an_format_day(d, from, sizeof(from));
        an_format_day(e, to, sizeof(to));
        struct batch *c = batch_new(BATCH_MOVERS_CLEAR, 1);
        struct batch *f = batch_new(BATCH_MOVERS_FILL, 1);
        if (!c || !f || batch_add_row(c) < 0 || batch_add_row(f) < 0 ||
            set_str(c, 0, BATCH_MOVERS_CLEAR_COL_FROM_DAY, from) ||
            set_str(c, 0, BATCH_MOVERS_CLEAR_COL_TO_DAY, to) ||
            set_str(f, 0, BATCH_MOVERS_FILL_COL_TOP_FROM_DAY, from) ||
            set_str(f, 0, BATCH_MOVERS_FILL_COL_TOP_TO_DAY, to) ||
            set_str(f, 0, BATCH_MOVERS_FILL_COL_BOTTOM_FROM_DAY, from) ||
            set_str(f, 0, BATCH_MOVERS_FILL_COL_BOTTOM_TO_DAY, to)) {
            batch_free(c);
            batch_free(f);
            return -ENOMEM;
        }
        batch_set_dbl(f, 0, BATCH_MOVERS_FILL_COL_TOP_MIN_CAP, st->min_cap);
        batch_set_dbl(f, 0, BATCH_MOVERS_FILL_COL_BOTTOM_MIN_CAP, st->min_cap);
        batch_set_int(f, 0, BATCH_MOVERS_FILL_COL_N, st->movers);
        int rc = run_emit(r, c);
        if (rc == 0)
            rc = run_emit(r, f);
        else
            batch_free(f);
        if (rc < 0)
            return rc;
    }
    int64_t now;
    if (an_parse_time(st->now, &now) < 0)
        return -EINVAL;
    struct batch *b = batch_new(BATCH_ANALYTICS_STATE, 1);
    if (!b || batch_add_row(b) < 0 ||
        set_str(b, 0, BATCH_ANALYTICS_STATE_COL_NAME, st->watermark_name)) {
        batch_free(b);
        return -ENOMEM;
    }
    batch_set_time(b, 0, BATCH_ANALYTICS_STATE_COL_VALUE, now);
    return run_emit(r, b);
}

static void finish(struct run *r, int rc, const char *what)
{
    struct ind_run *st = run_state(r);
    if (rc == 0)
        rc = flush_out(r, st);
    if (rc == 0)
        rc = emit_movers_and_state(r, st);
    if (rc < 0 && what)
        run_fail(r, what, rc == -ENOMEM ? "out of memory" : strerror(-rc));
    else if (rc < 0)
        run_fail(r, "indicators", rc == -ENOMEM ? "out of memory" : strerror(-rc));
    log_info("indicators computed", LOG_U("series", st->nseries), LOG_U("rows", st->rows));
    run_finish(r);
}

static void read_page(struct run *r);

static void on_page(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct ind_run *st = run_state(r);
    if (rc < 0) {
        run_fail(r, "reading price_rollups", err ? err : strerror(-rc));
        run_finish(r);
        return;
    }
    /* source, asset_id, vs_currency, day, close, market_cap, avg_gain, avg_loss */
    for (uint32_t i = 0; i < rows->nrows; i++) {
        struct series *se = find_series(st, cell(rows, i, 0), cell(rows, i, 1), cell(rows, i, 2));
        int64_t day;
        if (!se || !cell(rows, i, 4) || day_of(cell(rows, i, 3), &day) < 0)
            continue;
        double close = strtod(cell(rows, i, 4), NULL);
        if (day < se->from_day) {
            const char *g = cell(rows, i, 6), *l = cell(rows, i, 7);
            double ag = g ? strtod(g, NULL) : 0, al = l ? strtod(l, NULL) : 0;
            an_series_context(&se->s, day, close, g && l ? &ag : NULL, g && l ? &al : NULL);
            continue;
        }
        struct an_day d;
        an_series_compute(&se->s, day, close, st->return_days, &d);
        rc = emit_day(r, st, se, day, close, cell(rows, i, 5), &d);
        if (rc < 0) {
            finish(r, rc, "indicators");
            return;
        }
    }
    st->page_from += st->page_days;
    if (st->page_from > st->last_day || run_cancelled(r)) {
        finish(r, 0, NULL);
        return;
    }
    read_page(r);
}

static void read_page(struct run *r)
{
    struct ind_run *st = run_state(r);
    char from[16], to[16];
    an_format_day(st->page_from, from, sizeof(from));
    an_format_day(st->page_from + st->page_days, to, sizeof(to));
    const char *params[] = {from, to};
    int rc = run_read(r,
                      "SELECT r.source, r.asset_id, r.vs_currency, r.bucket_start, r.close,"
                      " r.market_cap, i.avg_gain, i.avg_loss FROM price_rollups r"
                      " LEFT JOIN indicators_daily i ON i.source = r.source"
                      " AND i.asset_id = r.asset_id AND i.vs_currency = r.vs_currency"
                      " AND i.day = DATE(r.bucket_start)"
                      " WHERE r.bucket = '1d' AND r.bucket_start >= ? AND r.bucket_start < ?"
                      " ORDER BY r.bucket_start",
                      params, 2, MAX_PAGE_ROWS, on_page, r);
    if (rc < 0) {
        run_fail(r, "reading price_rollups", strerror(-rc));
        run_finish(r);
    }
}

static void on_dirty(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct ind_run *st = run_state(r);
    if (rc < 0) {
        run_fail(r, "finding the days to compute", err ? err : strerror(-rc));
        run_finish(r);
        return;
    }
    st->series = calloc(rows->nrows + 1, sizeof(*st->series));
    if (!st->series) {
        finish(r, -ENOMEM, "indicators");
        return;
    }
    st->min_from = INT64_MAX;
    for (uint32_t i = 0; i < rows->nrows; i++) {
        struct series *se = &st->series[st->nseries];
        if (!cell(rows, i, 0) || !cell(rows, i, 1) || !cell(rows, i, 2) || !cell(rows, i, 3) ||
            day_of(cell(rows, i, 3), &se->from_day) < 0)
            continue;
        se->key = make_key(cell(rows, i, 0), cell(rows, i, 1), cell(rows, i, 2));
        if (!se->key || an_series_init(&se->s, st->return_days) < 0) {
            free(se->key);
            se->key = NULL;
            finish(r, -ENOMEM, "indicators");
            return;
        }
        st->nseries++;
        if (se->from_day < st->min_from)
            st->min_from = se->from_day;
    }
    qsort(st->series, st->nseries, sizeof(*st->series), series_cmp);
    for (size_t i = 0; i < st->nseries; i++) {
        /* The key's parts, NUL-separated, for the rows. */
        struct series *se = &st->series[i];
        se->parts = strdup(se->key);
        if (!se->parts) {
            finish(r, -ENOMEM, "indicators");
            return;
        }
        char *a = strchr(se->parts, '\x1f');
        char *v = a ? strchr(a + 1, '\x1f') : NULL;
        *a = *v = '\0';
        se->source = se->parts;
        se->asset_id = a + 1;
        se->vs_currency = v + 1;
    }
    if (st->nseries == 0) {
        finish(r, 0, NULL);
        return;
    }
    uint32_t ctx = (st->return_days > AN_VOL_LONG ? st->return_days : AN_VOL_LONG) + 1;
    st->page_from = st->min_from - ctx;
    uint64_t per_day = st->rows_per_day ? st->rows_per_day : 1;
    st->page_days = (int64_t)(PAGE_ROWS / per_day);
    if (st->page_days < 1)
        st->page_days = 1;
    if (st->page_days > 366)
        st->page_days = 366;
    read_page(r);
}

static void on_watermark(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct ind_run *st = run_state(r);
    if (rc < 0 || rows->nrows != 1 || !cell(rows, 0, 0)) {
        run_fail(r, "reading analytics_state", err ? err : strerror(rc < 0 ? -rc : EIO));
        run_finish(r);
        return;
    }
    snprintf(st->now, sizeof(st->now), "%s", cell(rows, 0, 0));
    const char *seen = cell(rows, 0, 1) ? cell(rows, 0, 1) : "1000-01-01 00:00:00";
    if (!cell(rows, 0, 2) || day_of(cell(rows, 0, 2), &st->last_day) < 0) {
        run_finish(r); /* no daily rollup yet */
        return;
    }
    st->rows_per_day = cell(rows, 0, 3) ? strtoull(cell(rows, 0, 3), NULL, 10) : 1;
    char nbuf[16];
    snprintf(nbuf, sizeof(nbuf), "%u", st->return_days);
    const char *params[] = {seen, nbuf};
    rc = run_read(r,
                  "SELECT r.source, r.asset_id, r.vs_currency, MIN(r.bucket_start)"
                  " FROM price_rollups r LEFT JOIN indicators_daily i ON i.source = r.source"
                  " AND i.asset_id = r.asset_id AND i.vs_currency = r.vs_currency"
                  " AND i.day = DATE(r.bucket_start)"
                  " WHERE r.bucket = '1d' AND r.computed_at >= ? - INTERVAL 10 MINUTE"
                  " AND (i.day IS NULL OR NOT (i.close <=> r.close)"
                  " OR NOT (i.market_cap <=> r.market_cap) OR i.return_days <> ?)"
                  " GROUP BY r.source, r.asset_id, r.vs_currency",
                  params, 2, MAX_SERIES, on_dirty, r);
    if (rc < 0) {
        run_fail(r, "finding the days to compute", strerror(-rc));
        run_finish(r);
    }
}

static int indicators_start(struct run *r)
{
    struct ind_run *st = run_state(r);
    st->return_days = job_u32(r, "return_days");
    st->movers = job_u32(r, "movers");
    const struct cfg_value *cap = config_job_value(run_job(r), "movers_min_market_cap");
    st->min_cap = cap ? (double)cap->u : 0;
    snprintf(st->watermark_name, sizeof(st->watermark_name), "indicators.rollups_seen.n%u",
             st->return_days);
    const char *params[] = {st->watermark_name};
    return run_read(r,
                    "SELECT NOW(3) AS now, (SELECT value FROM analytics_state WHERE name = ?)"
                    " AS seen, (SELECT MAX(bucket_start) FROM price_rollups WHERE bucket = '1d')"
                    " AS last_day, (SELECT COUNT(*) FROM price_rollups WHERE bucket = '1d'"
                    " AND bucket_start = (SELECT MAX(bucket_start) FROM price_rollups"
                    " WHERE bucket = '1d')) AS rows_per_day",
                    params, 1, 1, on_watermark, r);
}

static void indicators_cleanup(struct run *r)
{
    struct ind_run *st = run_state(r);
    for (size_t i = 0; st->series && i < st->nseries; i++) {
        free(st->series[i].key);
        free(st->series[i].parts);
        an_series_free(&st->series[i].s);
    }
    free(st->series);
    batch_free(st->out);
}

const struct job_def analytics_indicators_job = {
    .name = "indicators",
    .every_ms = 60 * AN_MS_MINUTE,
    .enabled = true,
    .keys = indicators_keys,
    .nkeys = ARRAY_SIZE(indicators_keys),
    .run_size = sizeof(struct ind_run),
    .start = indicators_start,
    .cleanup = indicators_cleanup,
};
