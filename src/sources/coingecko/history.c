/*
 * coingecko history: the `history` job -- every tracked asset's price series from
 * /coins/{id}/market_chart/range into `prices`, resumable, at low priority -- and what it
 * shares with the `ohlc` job (ohlc.c): which assets and currencies are tracked.
 *
 * A run (one pass), one request or read at a time:
 *   1. The tracked assets: the job's `ids`, else the [universe]'s explicit ids, else the
 *      listed assets of the database (`assets`, by market_cap_rank), narrowed to the
 *      universe's categories and to `top` (the job's, else the universe's). Currencies: the
 *      job's `vs_currencies`, else the universe's.
 *   2. and 3. are the backfill walk every backfill shares (backfill.h); this file gives it the
 *      windows, the parser and the hooks below.
 *   2. One read of candle_fill (source coingecko, interval_s = the granularity, 0 for auto,
 *      product "vs:asset_id"): how far each series is stored. The marks are written by
 *      backfill_mark after each window's rows (a sink barrier), so a mark is never ahead of
 *      the rows it vouches for, also after kill -9; MAX(source_updated_at) could not say as
 *      much (the prices job writes the same table, and writers commit out of order).
 *   3. Per series, windows planned by coingecko_history_window (history.h) from
 *      max(mark, now - days) up to coingecko_history_end(now): GET
 *      /coins/{id}/market_chart/range?vs_currency=..&from=..&to=..&precision=full, the kept
 *      points into prices, then the mark. A window that fails for good ends that series for
 *      this pass; the next pass resumes at its mark.
 *
 * Budget. Requests go at TBUCKET_PRIO_BACKFILL under the source's one token bucket, so a live
 * job's request waiting for a token is always served first; and before each window the job
 * asks run_credits_spare(): when the month's credits left are what the live jobs need for the
 * rest of the month, the pass stops (logged once) and resumes at the next pass.
 *
 * The plan's reach. Public and Demo keys are refused ranges older than 365 days (HTTP 401,
 * error_code 10012). A window refused that way moves the pass's start to 365 days ago (an hour
 * inside the reach) and is asked again once; what lay before is logged as out of reach, never
 * retried in the pass. A second refusal, or a 401 for another reason, fails the run.
 *
 * Progress: every minute a log line (series done and left, points stored, an ETA), the gauges
 * coingest_history_series_left / coingest_history_series_done and the counter
 * coingest_history_points_total.
 */
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/backfill.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/sbuf.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/coingecko/coingecko.h"
#include "sources/coingecko/history.h"
#include "sources/coingecko/tracked.h"

#define HOUR_MS   3600000LL
#define MINUTE_MS 60000LL
/* A daily range is asked longer than CoinGecko's 90-day hourly band. */
#define DAILY_MIN_ASK_MS (91 * CG_DAY_MS)
#define DAILY_MAX_MS     (365 * CG_DAY_MS)
/* Hourly ranges stay between the 5-minutely day and the daily band. */
#define HOURLY_MIN_ASK_MS (2 * CG_DAY_MS)
#define HOURLY_MAX_MS     (89 * CG_DAY_MS)
#define AUTO_MAX_MS       (365 * CG_DAY_MS)
/* A 365-day hourly-sized answer is about 300 KB; daily about 40 KB. */
#define CHART_MAX_BODY    (8u << 20)
#define PROGRESS_EVERY_MS 60000u

/* ---- windows (pure) ----------------------------------------------------------------------- */

static int64_t floor_to(int64_t t, int64_t g)
{
    int64_t q = t / g;
    if (t % g < 0)
        q--;
    return q * g;
}

/* The grid a granularity's span starts on. */
static int64_t grid_of(enum cg_granularity g)
{
    return g == CG_GRAN_DAILY ? CG_DAY_MS : g == CG_GRAN_HOURLY ? HOUR_MS : 5 * MINUTE_MS;
}

int64_t coingecko_history_end(enum cg_granularity g, int64_t now_ms)
{
    switch (g) {
    case CG_GRAN_DAILY:
        return floor_to(now_ms - HOUR_MS, CG_DAY_MS) + CG_DAY_MS;
    case CG_GRAN_HOURLY:
        return floor_to(now_ms - 10 * MINUTE_MS, HOUR_MS);
    case CG_GRAN_AUTO:
    default:
        return floor_to(now_ms - 10 * MINUTE_MS, 5 * MINUTE_MS);
    }
}

int coingecko_history_window(enum cg_granularity g, int64_t filled_ms, int64_t start_ms,
                             int64_t end_ms, struct cg_window *w)
{
    int64_t from = filled_ms > start_ms ? filled_ms : start_ms;
    if (from >= end_ms)
        return 1;
    int64_t max_ms = g == CG_GRAN_DAILY    ? DAILY_MAX_MS
                     : g == CG_GRAN_HOURLY ? HOURLY_MAX_MS
                                           : AUTO_MAX_MS;
    int64_t min_ask = g == CG_GRAN_DAILY    ? DAILY_MIN_ASK_MS
                      : g == CG_GRAN_HOURLY ? HOURLY_MIN_ASK_MS
                                            : 0;
    int64_t to = from + max_ms < end_ms ? from + max_ms : end_ms;
    int64_t ask_from = to - from < min_ask ? to - min_ask : from;
    /* from/to are whole seconds: from rounds down, to up, the window stays inside them. */
    w->ask_from_s = floor_to(ask_from, 1000) / 1000;
    w->ask_to_s = (to + 999) / 1000;
    w->keep_from_ms = from;
    w->keep_to_ms = to;
    w->grid_ms = g == CG_GRAN_DAILY ? CG_DAY_MS : 0;
    return 0;
}

/* ---- the market_chart parser (pure) -------------------------------------------------------- */

/* Element i of a [[ms, v]...] array: true with *t and *v (NAN for null) when it has that shape. */
static bool pair_at(json_t *arr, size_t i, int64_t *t, double *v)
{
    json_t *e = json_array_get(arr, i);
    if (!json_is_array(e) || json_array_size(e) < 2)
        return false;
    json_t *jt = json_array_get(e, 0), *jv = json_array_get(e, 1);
    if (!json_is_number(jt) || !(json_is_number(jv) || json_is_null(jv)))
        return false;
    double td = json_number_value(jt);
    if (!(td >= 0 && td < 1e15))
        return false;
    *t = (int64_t)td;
    *v = json_is_null(jv) ? NAN : json_number_value(jv);
    return true;
}

/* The value at time t of a series aligned with prices (the same index), else searched. */
static double value_at(json_t *arr, size_t hint, int64_t t)
{
    int64_t u;
    double v;
    if (pair_at(arr, hint, &u, &v) && u == t)
        return v;
    size_t n = json_array_size(arr);
    for (size_t i = 0; i < n; i++)
        if (pair_at(arr, i, &u, &v) && u == t)
            return v;
    return NAN;
}

static bool seen_before(json_t *prices, size_t i, int64_t t)
{
    /* The trailing "now" point may repeat or precede its neighbour: look back a little. */
    for (size_t k = i >= 4 ? i - 4 : 0; k < i; k++) {
        int64_t u;
        double v;
        if (pair_at(prices, k, &u, &v) && u == t)
            return true;
    }
    return false;
}

int coingecko_parse_market_chart(const char *body, size_t len, const char *asset_id,
                                 const char *vs_currency, const struct cg_window *w,
                                 int64_t fetched_ms, struct batch *prices,
                                 struct cg_chart_stats *st, char *err, size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root) {
        snprintf(err, errlen, "not JSON: %s (line %d)", jerr.text, jerr.line);
        return -EBADMSG;
    }
    json_t *p = json_object_get(root, "prices");
    json_t *mc = json_object_get(root, "market_caps");
    json_t *tv = json_object_get(root, "total_volumes");
    if (!json_is_array(p)) {
        char msg[256];
        if (coingecko_error_message(body, len, msg, sizeof(msg)) == 0)
            snprintf(err, errlen, "no prices array: %s", msg);
        else
            snprintf(err, errlen, "no prices array");
        json_decref(root);
        return -EBADMSG;
    }
    uint32_t before = prices->nrows;
    struct cg_chart_stats s = {0};
    size_t n = json_array_size(p);
    size_t idlen = strlen(asset_id), vslen = strlen(vs_currency);
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        int64_t t;
        double price;
        s.points++;
        if (!pair_at(p, i, &t, &price)) {
            s.bad++;
            continue;
        }
        if (t < w->keep_from_ms || t >= w->keep_to_ms) {
            s.outside++;
            continue;
        }
        if (w->grid_ms && t % w->grid_ms != 0) {
            s.off_grid++;
            continue;
        }
        if (seen_before(p, i, t))
            continue;
        int row = batch_add_row(prices);
        if (row < 0) {
            rc = -ENOMEM;
            break;
        }
        uint32_t x = (uint32_t)row;
        if (batch_set_str(prices, x, BATCH_PRICES_COL_ASSET_ID, asset_id, idlen) ||
            batch_set_str(prices, x, BATCH_PRICES_COL_VS_CURRENCY, vs_currency, vslen) ||
            batch_set_str(prices, x, BATCH_PRICES_COL_SOURCE, COINGECKO_SOURCE,
                          strlen(COINGECKO_SOURCE))) {
            rc = -ENOMEM;
            break;
        }
        batch_set_time(prices, x, BATCH_PRICES_COL_SOURCE_UPDATED_AT, t);
        batch_set_dbl(prices, x, BATCH_PRICES_COL_PRICE, price);
        if (json_is_array(mc))
            batch_set_dbl(prices, x, BATCH_PRICES_COL_MARKET_CAP, value_at(mc, i, t));
        if (json_is_array(tv))
            batch_set_dbl(prices, x, BATCH_PRICES_COL_VOLUME_24H, value_at(tv, i, t));
        batch_set_time(prices, x, BATCH_PRICES_COL_FETCHED_AT, fetched_ms);
        s.rows++;
    }
    json_decref(root);
    if (rc != 0) {
        while (prices->nrows > before)
            batch_drop_last(prices);
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    st->points += s.points;
    st->rows += s.rows;
    st->outside += s.outside;
    st->off_grid += s.off_grid;
    st->bad += s.bad;
    return 0;
}

bool coingecko_range_refused(const char *body, size_t len)
{
    char msg[512];
    if (!body || coingecko_error_message(body, len, msg, sizeof(msg)) != 0)
        return false;
    return strstr(msg, "error_code 10012") || strstr(msg, "exceeds the allowed time range");
}

/* ---- the history job ----------------------------------------------------------------------- */

struct series {
    const char *asset_id; /* into tracked.ids */
    const char *vs;       /* into tracked.vs */
};

struct hist_run {
    struct backfill_walk walk; /* first: the walk finds itself in the run state */
    struct run *run;
    enum cg_granularity gran;
    int64_t start_ms, end_ms;
    bool clamped, budget_logged;
    struct cg_tracked tracked;
    struct series *series;
    char **products; /* "vs:asset_id", the candle_fill keys, one per series */
    size_t nseries;
    /* progress */
    uint64_t t0_mono, last_log_mono;
    uint64_t windows_done, windows_est, points;
    size_t series_done;
};

static void hist_cleanup(struct run *run)
{
    struct hist_run *r = run_state(run);
    backfill_walk_clear(&r->walk);
    for (size_t i = 0; i < r->nseries; i++)
        free(r->products[i]);
    free(r->products);
    free(r->series);
    coingecko_tracked_clear(&r->tracked);
}

static int make_series(struct hist_run *r)
{
    const struct cg_tracked *t = &r->tracked;
    size_t n = t->ids.n * t->vs.n;
    r->series = calloc(n + 1, sizeof(*r->series));
    r->products = calloc(n + 1, sizeof(*r->products));
    if (!r->series || !r->products)
        return -ENOMEM;
    for (size_t i = 0; i < t->ids.n; i++)
        for (size_t k = 0; k < t->vs.n; k++) {
            struct series *s = &r->series[r->nseries];
            s->asset_id = t->ids.items[i];
            s->vs = t->vs.items[k];
            size_t len = strlen(s->vs) + 1 + strlen(s->asset_id) + 1;
            if (!(r->products[r->nseries] = malloc(len)))
                return -ENOMEM;
            snprintf(r->products[r->nseries], len, "%s:%s", s->vs, s->asset_id);
            r->nseries++;
        }
    return 0;
}

static int64_t window_len(enum cg_granularity g)
{
    return g == CG_GRAN_DAILY ? DAILY_MAX_MS : g == CG_GRAN_HOURLY ? HOURLY_MAX_MS : AUTO_MAX_MS;
}

static void publish_progress(struct hist_run *r)
{
    metrics_set("coingest_history_series_left", "", (double)(r->nseries - r->series_done));
    metrics_set("coingest_history_series_done", "", (double)r->series_done);
}

static void log_progress(struct hist_run *r, bool force)
{
    uint64_t now = util_mono_ms();
    if (!force && now - r->last_log_mono < PROGRESS_EVERY_MS)
        return;
    r->last_log_mono = now;
    uint64_t left = r->windows_est > r->windows_done ? r->windows_est - r->windows_done : 0;
    double per = r->windows_done ? (double)(now - r->t0_mono) / (double)r->windows_done : 0;
    log_info("history progress", LOG_S("job", run_name(r->run)),
             LOG_U("series_done", r->series_done),
             LOG_U("series_left", r->nseries - r->series_done), LOG_U("points", r->points),
             LOG_U("requests_left", left), LOG_U("eta_s", (uint64_t)(per * (double)left / 1000.0)));
}

/* The walk's ops (backfill.h). */

static int hist_plan(void *job, size_t i, int64_t filled_ms, struct backfill_window *bw,
                     struct sbuf *path)
{
    struct hist_run *r = job;
    struct cg_window w;
    if (coingecko_history_window(r->gran, filled_ms, r->start_ms, r->end_ms, &w) != 0)
        return 1;
    bw->from_ms = w.keep_from_ms;
    bw->to_ms = w.keep_to_ms;
    bw->max_body = CHART_MAX_BODY;
    sbuf_puts(path, "/coins/");
    coingecko_path_id(path, r->series[i].asset_id);
    sbuf_printf(path, "/market_chart/range?vs_currency=%s&from=%lld&to=%lld&precision=full",
                r->series[i].vs, (long long)w.ask_from_s, (long long)w.ask_to_s);
    return 0;
}

static int hist_parse(void *job, size_t i, const struct backfill_window *bw, const char *body,
                      size_t len, struct batch *b, char *err, size_t errlen)
{
    struct hist_run *r = job;
    struct cg_window w = {.keep_from_ms = bw->from_ms,
                          .keep_to_ms = bw->to_ms,
                          .grid_ms = r->gran == CG_GRAN_DAILY ? CG_DAY_MS : 0};
    struct cg_chart_stats st = {0};
    int rc = coingecko_parse_market_chart(body, len, r->series[i].asset_id, r->series[i].vs, &w,
                                          (int64_t)util_wall_ms(), b, &st, err, errlen);
    if (rc == 0 && st.bad)
        run_count(r->run, st.bad);
    return rc;
}

/* The plan refuses the range (HTTP 401, code 10012): start at its reach, an hour inside it,
 * and ask the same series again, once a run. Another 401 (a bad key) ends the walk. */
static int hist_refused(void *job, size_t i, const struct fetch_result *res)
{
    struct hist_run *r = job;
    if (r->clamped || !coingecko_range_refused(res->body, res->len)) {
        run_fail(r->run, "market_chart/range", res->error ? res->error : "HTTP 401");
        return -1;
    }
    int64_t g = grid_of(r->gran);
    int64_t reach = (int64_t)util_wall_ms() - CG_PLAN_REACH_DAYS * CG_DAY_MS + HOUR_MS;
    reach = floor_to(reach - 1, g) + g;
    log_warn("history: the plan reaches back 365 days; older history is out of reach",
             LOG_S("job", run_name(r->run)), LOG_S("asset", r->series[i].asset_id));
    r->clamped = true;
    if (r->start_ms < reach)
        r->start_ms = reach;
    return 1;
}

static bool hist_may_send(void *job)
{
    struct hist_run *r = job;
    if (run_credits_spare(r->run) > 0)
        return true;
    if (!r->budget_logged) {
        r->budget_logged = true;
        log_warn("history paused: the month's credits left are for the live jobs",
                 LOG_S("job", run_name(r->run)), LOG_U("series_left", r->nseries - r->series_done));
    }
    return false;
}

/* Windows a series still needs (for the ETA). */
static uint64_t windows_left(const struct hist_run *r, int64_t filled_ms)
{
    int64_t from = filled_ms > r->start_ms ? filled_ms : r->start_ms;
    if (from >= r->end_ms)
        return 0;
    int64_t len = window_len(r->gran);
    return (uint64_t)((r->end_ms - from + len - 1) / len);
}

static void hist_marks_read(void *job)
{
    struct hist_run *r = job;
    size_t up_to_date = 0;
    for (size_t i = 0; i < r->nseries; i++) {
        uint64_t n = windows_left(r, backfill_walk_filled(&r->walk, i));
        r->windows_est += n;
        up_to_date += n == 0;
    }
    log_info("history pass", LOG_S("job", run_name(r->run)), LOG_U("series", r->nseries),
             LOG_U("up_to_date", up_to_date), LOG_U("windows", r->windows_est));
}

static void hist_window_done(void *job, size_t i, uint64_t rows)
{
    struct hist_run *r = job;
    (void)i;
    r->windows_done++;
    r->points += rows;
    metrics_add("coingest_history_points_total", "", (double)rows);
    log_progress(r, false);
}

static void hist_complete(void *job, size_t i)
{
    struct hist_run *r = job;
    (void)i;
    r->series_done++;
    publish_progress(r);
}

static void hist_finished(void *job)
{
    struct hist_run *r = job;
    publish_progress(r);
    if (r->windows_done)
        log_progress(r, true);
    run_finish(r->run);
}

static const struct backfill_ops hist_ops = {
    .source = COINGECKO_SOURCE,
    .spec = BATCH_PRICES,
    .plan = hist_plan,
    .parse = hist_parse,
    .handle_status = 401,
    .refused = hist_refused,
    .may_send = hist_may_send,
    .marks_read = hist_marks_read,
    .window_done = hist_window_done,
    .complete = hist_complete,
    .finished = hist_finished,
};

static void tracked_done(struct run *run, int rc)
{
    struct hist_run *r = run_state(run);
    if (rc == 0 && (rc = make_series(r)) != 0)
        run_fail_errno(run, "series", rc);
    if (rc != 0 || r->nseries == 0 || run_cancelled(run)) {
        if (rc == 0 && r->nseries == 0)
            log_info("history: no asset to backfill", LOG_S("job", run_name(run)));
        run_finish(run);
        return;
    }
    /* The marks' interval_s is the granularity (0 for auto): each keeps its own. */
    backfill_walk_start(&r->walk, run, &hist_ops, r, r->gran, (const char *const *)r->products,
                        r->nseries);
}

/* `granularity =`: daily, hourly or auto. -EINVAL for anything else. */
static int parse_granularity(const char *s, enum cg_granularity *g)
{
    if (!s || strcmp(s, "daily") == 0)
        *g = CG_GRAN_DAILY;
    else if (strcmp(s, "hourly") == 0)
        *g = CG_GRAN_HOURLY;
    else if (strcmp(s, "auto") == 0)
        *g = CG_GRAN_AUTO;
    else
        return -EINVAL;
    return 0;
}

/* `days =`: a number of days, or max. */
static int parse_days(const char *s, uint64_t *days)
{
    if (!s || strcmp(s, "max") == 0) {
        *days = 0;
        return 0;
    }
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (*s < '0' || *s > '9' || *end || v < 1 || v > 36500)
        return -EINVAL;
    *days = v;
    return 0;
}

static int hist_start(struct run *run)
{
    struct hist_run *r = run_state(run);
    r->run = run;
    const struct cfg_value *gv = config_job_value(run_job(run), "granularity");
    const struct cfg_value *dv = config_job_value(run_job(run), "days");
    uint64_t days;
    if (parse_granularity(gv ? gv->s : NULL, &r->gran) != 0) {
        run_fail(run, "granularity", "must be daily, hourly or auto");
        return -EINVAL;
    }
    if (parse_days(dv && dv->s ? dv->s : "365", &days) != 0) {
        run_fail(run, "days", "must be a number of days (1 to 36500) or max");
        return -EINVAL;
    }
    int64_t now = (int64_t)run_started_ms(run);
    r->end_ms = coingecko_history_end(r->gran, now);
    r->start_ms = days ? now - (int64_t)days * CG_DAY_MS : CG_HISTORY_EPOCH_MS;
    /* The first grid point inside the span: `days = 365` never asks before the plan's reach. */
    r->start_ms = floor_to(r->start_ms - 1, grid_of(r->gran)) + grid_of(r->gran);
    r->t0_mono = r->last_log_mono = util_mono_ms();
    coingecko_tracked_resolve(run, &r->tracked, tracked_done);
    return 0;
}

/* Steady state, for the budget: a series needs a window once its span's end has moved on,
 * which happens once a day (daily), an hour (hourly) or five minutes (auto); a first backfill
 * takes more, paced by run_credits_spare. */
static uint64_t hist_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    const struct cfg_value *gv = config_job_value(job, "granularity");
    enum cg_granularity g = CG_GRAN_DAILY;
    if (gv && gv->s && parse_granularity(gv->s, &g) != 0)
        g = CG_GRAN_DAILY;
    uint64_t series = coingecko_tracked_count(cfg, job, n);
    uint64_t period = (uint64_t)(g == CG_GRAN_DAILY    ? CG_DAY_MS
                                 : g == CG_GRAN_HOURLY ? HOUR_MS
                                                       : 5 * MINUTE_MS);
    if (job->every_ms >= period)
        return series;
    return (series * job->every_ms + period - 1) / period;
}

static const struct cfg_key hist_keys[] = {
    {"ids", CFG_KEY_NAMES, NULL, 0, 0},
    {"top", CFG_KEY_U64, "0", 0, 100000},
    {"vs_currencies", CFG_KEY_CURRENCIES, NULL, 0, 0},
    {"days", CFG_KEY_STR, "365", 0, 0},
    {"granularity", CFG_KEY_STR, "daily", 0, 0},
};

const struct job_def coingecko_history_job = {
    .name = "history",
    .every_ms = 60ull * 60 * 1000,
    .enabled = false,
    .priority = TBUCKET_PRIO_BACKFILL,
    .keys = hist_keys,
    .nkeys = ARRAY_SIZE(hist_keys),
    .run_size = sizeof(struct hist_run),
    .start = hist_start,
    .cleanup = hist_cleanup,
    .requests_per_run = hist_requests,
};
