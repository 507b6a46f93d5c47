/*
 * coingecko ohlc: the `ohlc` job, /coins/{id}/ohlc for the tracked assets into `candles`.
 *
 * A run resolves the tracked assets and currencies (tracked.h), then asks, one request at a
 * time, GET /coins/{id}/ohlc?vs_currency=..&days=N&precision=full per asset and currency.
 * CoinGecko's candle length follows `days` (coingecko_ohlc_interval_s) and each candle's
 * time is its close, so a row's open_time is that time less interval_s. The last candle of
 * an answer is usually still open (its close lies ahead): it is stored as it stands, and the
 * next run's answer rewrites the same row (same key) until it has closed; candles are never
 * duplicated. The endpoint has no volume: `volume` is NULL. Requests are at backfill priority.
 */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/sbuf.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/coingecko/coingecko.h"
#include "sources/coingecko/history.h"
#include "sources/coingecko/tracked.h"

/* 365 days of 4-day candles is small; 2 days of 30-minute ones about 8 KB. */
#define OHLC_MAX_BODY (4u << 20)

uint32_t coingecko_ohlc_interval_s(uint32_t days)
{
    if (days <= 2)
        return 1800;
    if (days <= 30)
        return 4 * 3600;
    return 4 * 86400;
}

static bool num_at(json_t *e, size_t i, double *v)
{
    json_t *x = json_array_get(e, i);
    if (!json_is_number(x))
        return false;
    *v = json_number_value(x);
    return true;
}

int coingecko_parse_ohlc(const char *body, size_t len, const char *asset_id,
                         const char *vs_currency, uint32_t interval_s, int64_t fetched_ms,
                         struct batch *candles, uint64_t *rows, uint64_t *bad, char *err,
                         size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "not JSON: %s (line %d)", jerr.text, jerr.line);
        return -EBADMSG;
    }
    if (!json_is_array(root)) {
        char msg[256];
        if (coingecko_error_message(body, len, msg, sizeof(msg)) == 0)
            snprintf(err, errlen, "not an array: %s", msg);
        else
            snprintf(err, errlen, "not an array");
        json_decref(root);
        return -EBADMSG;
    }
    uint32_t before = candles->nrows;
    uint64_t n_rows = 0, n_bad = 0;
    size_t idlen = strlen(asset_id), vslen = strlen(vs_currency);
    int rc = 0;
    for (size_t i = 0; i < json_array_size(root); i++) {
        json_t *e = json_array_get(root, i);
        double t, o, h, l, c;
        if (!json_is_array(e) || !num_at(e, 0, &t) || !num_at(e, 1, &o) || !num_at(e, 2, &h) ||
            !num_at(e, 3, &l) || !num_at(e, 4, &c) || !(t >= (double)interval_s * 1000) ||
            !(t < 1e15)) {
            n_bad++;
            continue;
        }
        int row = batch_add_row(candles);
        if (row < 0) {
            rc = -ENOMEM;
            break;
        }
        uint32_t x = (uint32_t)row;
        if (batch_set_str(candles, x, BATCH_CANDLES_COL_SOURCE, COINGECKO_SOURCE,
                          strlen(COINGECKO_SOURCE)) ||
            batch_set_str(candles, x, BATCH_CANDLES_COL_ASSET_ID, asset_id, idlen) ||
            batch_set_str(candles, x, BATCH_CANDLES_COL_VS_CURRENCY, vs_currency, vslen) ||
            batch_set_str(candles, x, BATCH_CANDLES_COL_PRODUCT, asset_id, idlen)) {
            rc = -ENOMEM;
            break;
        }
        batch_set_int(candles, x, BATCH_CANDLES_COL_INTERVAL_S, interval_s);
        batch_set_time(candles, x, BATCH_CANDLES_COL_OPEN_TIME,
                       (int64_t)t - (int64_t)interval_s * 1000);
        batch_set_dbl(candles, x, BATCH_CANDLES_COL_OPEN, o);
        batch_set_dbl(candles, x, BATCH_CANDLES_COL_HIGH, h);
        batch_set_dbl(candles, x, BATCH_CANDLES_COL_LOW, l);
        batch_set_dbl(candles, x, BATCH_CANDLES_COL_CLOSE, c);
        batch_set_time(candles, x, BATCH_CANDLES_COL_FETCHED_AT, fetched_ms);
        n_rows++;
    }
    json_decref(root);
    if (rc != 0) {
        while (candles->nrows > before)
            batch_drop_last(candles);
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if (rows)
        *rows += n_rows;
    if (bad)
        *bad += n_bad;
    return 0;
}

/* ---- the job -------------------------------------------------------------------------------- */

enum o_step { O_TRACKED, O_CANDLES, O_DONE };

struct ohlc_run {
    struct run *run;
    enum o_step step;
    uint32_t days, interval_s;
    struct cg_tracked tracked;
    size_t cur; /* asset index * nvs + currency index */
    struct batch *b;
    struct sbuf path;
};

static void ohlc_advance(struct ohlc_run *r);

static void ohlc_cleanup(struct run *run)
{
    struct ohlc_run *r = run_state(run);
    coingecko_tracked_clear(&r->tracked);
    batch_free(r->b);
    sbuf_free(&r->path);
}

static void ohlc_tracked_done(struct run *run, int rc)
{
    struct ohlc_run *r = run_state(run);
    r->step = rc == 0 ? O_CANDLES : O_DONE;
    ohlc_advance(r);
}

static const char *cur_asset(const struct ohlc_run *r)
{
    return r->tracked.ids.items[r->cur / r->tracked.vs.n];
}

static const char *cur_vs(const struct ohlc_run *r)
{
    return r->tracked.vs.items[r->cur % r->tracked.vs.n];
}

static int ohlc_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct ohlc_run *r = run_state(arg);
    uint64_t bad = 0;
    int rc = coingecko_parse_ohlc(body, len, cur_asset(r), cur_vs(r), r->interval_s,
                                  (int64_t)util_wall_ms(), r->b, NULL, &bad, err, errlen);
    if (rc == 0 && bad)
        run_count(r->run, bad);
    return rc;
}

static void ohlc_done(const struct fetch_result *res, void *arg)
{
    struct ohlc_run *r = run_state(arg);
    struct batch *b = r->b;
    r->b = NULL;
    if (res->outcome == FETCH_OK)
        run_emit(r->run, b);
    else
        batch_free(b); /* the runner recorded why; the other assets go on */
    r->cur++;
    ohlc_advance(r);
}

static int ohlc_request(struct ohlc_run *r)
{
    if (r->tracked.vs.n == 0 || r->cur >= r->tracked.ids.n * r->tracked.vs.n)
        return 1;
    if (!run_may_spend(r->run))
        return 1; /* the live jobs' credits: the next run asks again */
    sbuf_reset(&r->path);
    sbuf_puts(&r->path, "/coins/");
    coingecko_path_id(&r->path, cur_asset(r));
    sbuf_printf(&r->path, "/ohlc?vs_currency=%s&days=%u&precision=full", cur_vs(r), r->days);
    if (sbuf_failed(&r->path) || !(r->b = batch_new(BATCH_CANDLES, 64)))
        return -ENOMEM;
    return run_get_limited(r->run, r->path.p, OHLC_MAX_BODY, ohlc_parse, ohlc_done);
}

static void ohlc_advance(struct ohlc_run *r)
{
    if (run_cancelled(r->run))
        r->step = O_DONE;
    int rc = 0;
    switch (r->step) {
    case O_TRACKED:
        rc = coingecko_tracked_resolve(r->run, &r->tracked, ohlc_tracked_done);
        break;
    case O_CANDLES:
        rc = ohlc_request(r);
        if (rc == 1) {
            r->step = O_DONE;
            ohlc_advance(r);
            return;
        }
        break;
    case O_DONE:
    default:
        run_finish(r->run);
        return;
    }
    if (rc < 0) {
        run_fail_errno(r->run, "request", rc);
        r->step = O_DONE;
        ohlc_advance(r);
    }
}

/* The `days` values /ohlc accepts. */
static const uint32_t ohlc_days[] = {1, 7, 14, 30, 90, 180, 365};

static int ohlc_start(struct run *run)
{
    struct ohlc_run *r = run_state(run);
    r->run = run;
    const struct cfg_value *dv = config_job_value(run_job(run), "days");
    r->days = dv ? (uint32_t)dv->u : 1;
    bool ok = false;
    for (size_t i = 0; i < ARRAY_SIZE(ohlc_days); i++)
        ok |= ohlc_days[i] == r->days;
    if (!ok) {
        run_fail(run, "days", "must be one of 1, 7, 14, 30, 90, 180, 365");
        return -EINVAL;
    }
    r->interval_s = coingecko_ohlc_interval_s(r->days);
    r->step = O_TRACKED;
    ohlc_advance(r);
    return 0;
}

static uint64_t ohlc_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    return coingecko_tracked_count(cfg, job, n);
}

static const struct cfg_key ohlc_keys[] = {
    {"ids", CFG_KEY_NAMES, NULL, 0, 0},
    {"top", CFG_KEY_U64, "0", 0, 100000},
    {"vs_currencies", CFG_KEY_CURRENCIES, NULL, 0, 0},
    {"days", CFG_KEY_U64, "1", 1, 365},
};

const struct job_def coingecko_ohlc_job = {
    .name = "ohlc",
    .every_ms = 60ull * 60 * 1000,
    .enabled = false,
    .priority = TBUCKET_PRIO_BACKFILL,
    .keys = ohlc_keys,
    .nkeys = ARRAY_SIZE(ohlc_keys),
    .run_size = sizeof(struct ohlc_run),
    .start = ohlc_start,
    .cleanup = ohlc_cleanup,
    .requests_per_run = ohlc_requests,
};
