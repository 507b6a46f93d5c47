/*
 * coincap jobs: coincap_assets (the current market of the top assets) and coincap_history (a
 * resumable price backfill that then keeps current).
 *
 * Both map CoinCap's ids onto canonical ids (alias.h) against the assets table (one read per
 * run): an id is a key whose symbol, name and token addresses come from CoinCap's asset
 * object, so the rules decide (override, contract, symbol + name, dominant symbol); an id
 * not mapped has its rows dropped and is listed in unmapped_asset_keys. CoinCap's ids mostly
 * equal CoinGecko's, but that is not a rule: "binance-coin" is CoinGecko's "binancecoin".
 *
 * coincap_assets, one request at a time: the universe read, then GET /assets?limit=L&offset=O
 * pages until `top` assets (or a short page), kept in memory (an asset is a few hundred bytes).
 * Then one mapping pass over all of them (one asset_aliases batch, one warn line naming the
 * unmapped ids, as coincap_history and Coinbase do per run) and the rows: each mapped asset
 * becomes a prices row (with vwap_24h) and a market_snapshots row (rank, supply, max supply,
 * market cap, volume, 24h change, vwap_24h) at its page's envelope timestamp, in usd; an asset
 * mapped onto an id an earlier one of the run already took is dropped (counted). A page that
 * fails ends the walk; the pages before it are stored (the run is partial).
 *
 * coincap_history: GET /assets?ids=.. (or ?limit=top without `ids`) for the assets' symbols
 * and names, the mapping, one read of candle_fill (source coincap, product = the CoinCap id,
 * interval_s 86400 for d1 or 3600 for h1; the backfill walk, backfill.h), then per asset windows
 * [from, to) of at most HISTORY_WINDOW intervals from max(filled_to, now - days) up to the last
 * closed interval: GET /assets/{id}/history?interval=I&start=from&end=to (ms), points outside the
 * window dropped. After a window's prices a candle_fill statement records `to`; a statement is a
 * barrier in the sink, so it commits after those prices and a restart resumes at a point
 * before which everything is stored (MAX(source_updated_at) could not say that: coincap_assets
 * writes current prices into the same table, and writers commit out of order).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/alias.h"
#include "coingest/backfill.h"
#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/sbuf.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/coincap/coincap.h"

/* Bodies: a 2000-asset page is about 1 MB; a 720-point history about 80 KB. */
#define ASSETS_MAX_BODY  (16u << 20)
#define HISTORY_MAX_BODY (4u << 20)
/* Intervals one history request asks for. */
#define HISTORY_WINDOW 720
/* candle_fill.product is VARCHAR(64). */
#define MAX_ID_LEN 64

/* CoinCap's ids map onto CoinGecko's ids (assets.id), ranked by CoinGecko's market caps. */
#define CANONICAL_SOURCE "coingecko"

/* Ids go into paths and queries as they are: lower-case letters, digits, '-', '.', '_'. */
static bool plain_id(const char *s)
{
    size_t n = 0;
    for (; s[n]; n++)
        if (!((s[n] >= 'a' && s[n] <= 'z') || (s[n] >= '0' && s[n] <= '9') || s[n] == '-' ||
              s[n] == '.' || s[n] == '_'))
            return false;
    return n > 0 && n <= MAX_ID_LEN;
}

/* Maps the ids of `l` (res[i] for l->items[i]); writes asset_aliases rows. Returns 0 or
 * -ENOMEM. */
static int map_assets(struct run *run, const struct alias_universe *u, bool known,
                      const struct coincap_assets *l, struct alias_result *res)
{
    const struct config *cfg = run_config(run);
    struct alias_key *keys = calloc(l->n + 1, sizeof(*keys));
    struct batch *rows = batch_new(BATCH_ASSET_ALIASES, (uint32_t)l->n + 1);
    if (!keys || !rows) {
        free(keys);
        batch_free(rows);
        return -ENOMEM;
    }
    for (size_t i = 0; i < l->n; i++) {
        const struct coincap_asset *a = &l->items[i];
        keys[i] = (struct alias_key){.key = a->id,
                                     .symbol = a->symbol,
                                     .name = a->name,
                                     .addresses = (const char *const *)a->addresses,
                                     .naddresses = a->naddresses,
                                     .override_id = config_alias(cfg, COINCAP_SOURCE, a->id)};
    }
    size_t unmapped = alias_map_keys(u, known, COINCAP_SOURCE, keys, l->n, res, rows,
                                     (int64_t)run_started_ms(run));
    run_count(run, unmapped);
    run_emit(run, rows);
    free(keys);
    return 0;
}

/* ================================ coincap_assets ================================ */

enum a_step { A_UNIVERSE, A_PAGES, A_DONE };

struct assets_run {
    struct run *run;
    enum a_step step;
    uint64_t top, limit, offset;
    struct alias_universe *universe; /* NULL: not known (only overrides map) */
    struct coincap_assets listed;    /* every page's assets so far, in rank order */
    int64_t *at;                     /* listed.items[i]'s envelope timestamp (ms; 0: none) */
    size_t last_n;                   /* assets the last page added */
    struct strlist taken;            /* canonical ids given rows this run */
    char path[128];
};

static void assets_advance(struct assets_run *r);

static void assets_cleanup(struct run *run)
{
    struct assets_run *r = run_state(run);
    alias_universe_free(r->universe);
    coincap_assets_clear(&r->listed);
    free(r->at);
    strlist_clear(&r->taken);
}

/* Appends a page to `listed`, each asset with the page's timestamp; all or nothing. */
static int assets_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct assets_run *r = run_state(arg);
    uint64_t skipped = 0, bad = 0;
    size_t before = r->listed.n;
    int rc = coincap_parse_assets(body, len, &r->listed, &skipped, &bad, err, errlen);
    if (rc != 0)
        return rc;
    int64_t *at = realloc(r->at, (r->listed.n + 1) * sizeof(*at));
    if (!at) {
        coincap_assets_truncate(&r->listed, before);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    r->at = at;
    for (size_t i = before; i < r->listed.n; i++)
        at[i] = r->listed.timestamp_ms;
    r->last_n = r->listed.n - before;
    if (skipped + bad)
        run_count(r->run, skipped + bad);
    return 0;
}

static void set_dbl(struct batch *b, uint32_t row, uint16_t col, double v)
{
    if (!isnan(v))
        batch_set_dbl(b, row, col, v);
}

static int set_str(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

/* The rows of the run's mapped assets. */
static int asset_rows(struct assets_run *r, const struct alias_result *res)
{
    const struct coincap_assets *l = &r->listed;
    int64_t now = (int64_t)util_wall_ms();
    struct batch *p = batch_new(BATCH_PRICES_VWAP, (uint32_t)l->n + 1);
    struct batch *m = batch_new(BATCH_MARKET_SNAPSHOTS_VWAP, (uint32_t)l->n + 1);
    int rc = p && m ? 0 : -ENOMEM;
    for (size_t i = 0; rc == 0 && i < l->n; i++) {
        const struct coincap_asset *a = &l->items[i];
        const char *id = res[i].asset_id;
        int64_t at = r->at[i] ? r->at[i] : now;
        if (!id)
            continue;
        if (isnan(a->price) || strlist_has(&r->taken, id, strlen(id))) {
            run_count(r->run, 1); /* no price, or a second CoinCap id for the same asset */
            continue;
        }
        if ((rc = strlist_push(&r->taken, id, strlen(id))) != 0)
            break;
        int pr = batch_add_row(p), mr = batch_add_row(m);
        if (pr < 0 || mr < 0) {
            rc = -ENOMEM;
            break;
        }
        uint32_t x = (uint32_t)pr, y = (uint32_t)mr;
        rc |= set_str(p, x, BATCH_PRICES_VWAP_COL_ASSET_ID, id);
        rc |= set_str(p, x, BATCH_PRICES_VWAP_COL_VS_CURRENCY, "usd");
        rc |= set_str(p, x, BATCH_PRICES_VWAP_COL_SOURCE, COINCAP_SOURCE);
        batch_set_time(p, x, BATCH_PRICES_VWAP_COL_SOURCE_UPDATED_AT, at);
        set_dbl(p, x, BATCH_PRICES_VWAP_COL_PRICE, a->price);
        set_dbl(p, x, BATCH_PRICES_VWAP_COL_MARKET_CAP, a->market_cap);
        set_dbl(p, x, BATCH_PRICES_VWAP_COL_VOLUME_24H, a->volume_24h);
        set_dbl(p, x, BATCH_PRICES_VWAP_COL_CHANGE_24H_PCT, a->change_24h_pct);
        set_dbl(p, x, BATCH_PRICES_VWAP_COL_VWAP_24H, a->vwap_24h);
        batch_set_time(p, x, BATCH_PRICES_VWAP_COL_FETCHED_AT, now);

        rc |= set_str(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_ASSET_ID, id);
        rc |= set_str(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_VS_CURRENCY, "usd");
        rc |= set_str(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_SOURCE, COINCAP_SOURCE);
        batch_set_time(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_SNAPSHOT_AT, at);
        if (!isnan(a->rank))
            batch_set_int(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_MARKET_CAP_RANK, (int64_t)a->rank);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_PRICE, a->price);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_MARKET_CAP, a->market_cap);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_TOTAL_VOLUME, a->volume_24h);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_PRICE_CHANGE_PCT_24H, a->change_24h_pct);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_CIRCULATING_SUPPLY, a->supply);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_MAX_SUPPLY, a->max_supply);
        set_dbl(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_VWAP_24H, a->vwap_24h);
        batch_set_time(m, y, BATCH_MARKET_SNAPSHOTS_VWAP_COL_FETCHED_AT, now);
        if (rc)
            rc = -ENOMEM;
    }
    if (rc == 0) {
        run_emit(r->run, p);
        run_emit(r->run, m);
    } else {
        batch_free(p);
        batch_free(m);
    }
    return rc;
}

/* The walk is over: one mapping pass over every listed asset, then their rows. */
static void assets_store(struct assets_run *r)
{
    r->step = A_DONE;
    if (r->listed.n == 0)
        return;
    struct alias_result *ar = calloc(r->listed.n + 1, sizeof(*ar));
    if (!ar || map_assets(r->run, r->universe, r->universe != NULL, &r->listed, ar) != 0 ||
        asset_rows(r, ar) != 0)
        run_fail(r->run, "assets", "out of memory");
    free(ar);
}

static void page_done(const struct fetch_result *res, void *arg)
{
    struct assets_run *r = run_state(arg);
    if (res->outcome != FETCH_OK) {
        assets_store(r); /* the pages before this one; the runner recorded why */
        assets_advance(r);
        return;
    }
    r->offset += r->limit;
    if (r->listed.n == 0 && r->offset == r->limit)
        run_source_error(r->run, "no_rows", "assets", "the first page of /assets is empty");
    if (r->last_n < r->limit || r->offset >= r->top)
        assets_store(r);
    assets_advance(r);
}

static void assets_universe_done(struct run *run, struct alias_universe *u)
{
    struct assets_run *r = run_state(run);
    r->universe = u;
    r->step = A_PAGES;
    assets_advance(r);
}

static void assets_advance(struct assets_run *r)
{
    if (run_cancelled(r->run))
        r->step = A_DONE;
    int rc = 0;
    switch (r->step) {
    case A_UNIVERSE:
        rc = alias_read_universe(r->run, CANONICAL_SOURCE, assets_universe_done);
        break;
    case A_PAGES: {
        uint64_t n = r->top - r->offset < r->limit ? r->top - r->offset : r->limit;
        snprintf(r->path, sizeof(r->path), "/assets?limit=%llu&offset=%llu", (unsigned long long)n,
                 (unsigned long long)r->offset);
        rc = run_get_limited(r->run, r->path, ASSETS_MAX_BODY, assets_parse, page_done);
        break;
    }
    case A_DONE:
    default:
        run_finish(r->run);
        return;
    }
    if (rc < 0) {
        run_fail_errno(r->run, "request", rc);
        r->step = A_DONE;
        assets_advance(r);
    }
}

static int assets_start(struct run *run)
{
    struct assets_run *r = run_state(run);
    r->run = run;
    const struct cfg_value *tv = config_job_value(run_job(run), "top");
    const struct cfg_value *lv = config_job_value(run_job(run), "limit");
    r->top = tv ? tv->u : 100;
    r->limit = lv ? lv->u : 100;
    r->step = A_UNIVERSE;
    assets_advance(r);
    return 0;
}

static uint64_t assets_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    (void)cfg;
    (void)n;
    const struct cfg_value *tv = config_job_value(job, "top");
    const struct cfg_value *lv = config_job_value(job, "limit");
    uint64_t top = tv ? tv->u : 100, limit = lv && lv->u ? lv->u : 100;
    return (top + limit - 1) / limit;
}

static const struct cfg_key assets_keys[] = {
    {"top", CFG_KEY_U64, "100", 1, 100000},
    {"limit", CFG_KEY_U64, "100", 1, COINCAP_MAX_LIMIT},
};

static const char *const assets_source_errors[] = {"no_rows", NULL};

const struct job_def coincap_assets_job = {
    .name = "coincap_assets",
    .every_ms = 5ull * 60 * 1000,
    .enabled = true,
    .priority = TBUCKET_PRIO_LIVE,
    .keys = assets_keys,
    .nkeys = ARRAY_SIZE(assets_keys),
    .run_size = sizeof(struct assets_run),
    .start = assets_start,
    .cleanup = assets_cleanup,
    .requests_per_run = assets_requests,
    .source_errors = assets_source_errors,
};

/* ================================ coincap_history ================================ */

enum h_step { H_LIST, H_UNIVERSE, H_POINTS, H_DONE };

struct hist_asset {
    char *id;       /* CoinCap's */
    char *asset_id; /* the canonical id, NULL when not mapped */
};

struct hist_run {
    struct backfill_walk walk; /* first: the walk finds itself in the run state */
    struct run *run;
    enum h_step step;
    const char *interval; /* "d1" or "h1" */
    int64_t g_ms;
    int64_t start_ms, end_ms;
    struct coincap_assets listed;
    struct hist_asset *assets;
    const char **ids; /* assets[i].id, the candle_fill keys */
    size_t nassets;
    struct alias_universe *universe; /* NULL: not known (only overrides map) */
    struct sbuf path;                /* the list request's path and query */
};

static void hist_advance(struct hist_run *r);

static void hist_cleanup(struct run *run)
{
    struct hist_run *r = run_state(run);
    backfill_walk_clear(&r->walk);
    coincap_assets_clear(&r->listed);
    for (size_t i = 0; i < r->nassets; i++) {
        free(r->assets[i].id);
        free(r->assets[i].asset_id);
    }
    free(r->assets);
    free(r->ids);
    alias_universe_free(r->universe);
    sbuf_free(&r->path);
}

static int list_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct hist_run *r = run_state(arg);
    coincap_assets_clear(&r->listed);
    return coincap_parse_assets(body, len, &r->listed, NULL, NULL, err, errlen);
}

static void list_done(const struct fetch_result *res, void *arg)
{
    struct hist_run *r = run_state(arg);
    const struct cfg_value *iv = config_job_value(run_job(r->run), "ids");
    const struct strlist *ids = iv && iv->set ? &iv->list : NULL;
    if (res->outcome != FETCH_OK) {
        r->step = H_DONE;
    } else if (r->listed.n == 0) {
        run_source_error(r->run, "no_rows", "assets", "CoinCap listed none of the assets");
        r->step = H_DONE;
    } else {
        r->step = H_UNIVERSE;
    }
    for (size_t i = 0; ids && res->outcome == FETCH_OK && i < ids->n; i++) {
        bool found = false;
        for (size_t k = 0; k < r->listed.n && !found; k++)
            found = strcmp(r->listed.items[k].id, ids->items[i]) == 0;
        if (!found) {
            log_warn("asset not listed by CoinCap", LOG_S("job", run_name(r->run)),
                     LOG_S("id", ids->items[i]));
            run_count(r->run, 1);
        }
    }
    hist_advance(r);
}

static int map_listed(struct hist_run *r)
{
    struct alias_result *res = calloc(r->listed.n + 1, sizeof(*res));
    r->assets = calloc(r->listed.n + 1, sizeof(*r->assets));
    if (!res || !r->assets ||
        map_assets(r->run, r->universe, r->universe != NULL, &r->listed, res) != 0) {
        free(res);
        return -ENOMEM;
    }
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < r->listed.n; i++) {
        const struct coincap_asset *a = &r->listed.items[i];
        if (!res[i].asset_id)
            continue;
        if (!plain_id(a->id)) {
            run_count(r->run, 1);
            continue;
        }
        struct hist_asset *h = &r->assets[r->nassets];
        h->id = strdup(a->id);
        h->asset_id = strdup(res[i].asset_id);
        if (!h->id || !h->asset_id) {
            free(h->id);
            free(h->asset_id);
            rc = -ENOMEM;
        } else {
            r->nassets++;
        }
    }
    free(res);
    coincap_assets_clear(&r->listed);
    alias_universe_free(r->universe);
    r->universe = NULL;
    return rc;
}

static void hist_universe_done(struct run *run, struct alias_universe *u)
{
    struct hist_run *r = run_state(run);
    r->universe = u;
    if (map_listed(r) != 0) {
        run_fail(r->run, "aliases", "out of memory");
        r->step = H_DONE;
    } else {
        r->step = H_POINTS;
    }
    hist_advance(r);
}

/* The points: the backfill walk (backfill.h). */

static int points_plan(void *job, size_t i, int64_t filled_ms, struct backfill_window *w,
                       struct sbuf *path)
{
    struct hist_run *r = job;
    int64_t from = filled_ms > r->start_ms ? filled_ms : r->start_ms;
    from -= from % r->g_ms;
    if (from >= r->end_ms)
        return 1;
    int64_t to = from + HISTORY_WINDOW * r->g_ms;
    if (to > r->end_ms)
        to = r->end_ms;
    sbuf_printf(path, "/assets/%s/history?interval=%s&start=%lld&end=%lld", r->assets[i].id,
                r->interval, (long long)from, (long long)to);
    w->from_ms = from;
    w->to_ms = to;
    w->max_body = HISTORY_MAX_BODY;
    return 0;
}

static int points_parse(void *job, size_t i, const struct backfill_window *w, const char *body,
                        size_t len, struct batch *b, char *err, size_t errlen)
{
    struct hist_run *r = job;
    struct coincap_history_req q = {.asset_id = r->assets[i].asset_id,
                                    .from_ms = w->from_ms,
                                    .to_ms = w->to_ms,
                                    .fetched_ms = (int64_t)util_wall_ms()};
    struct coincap_history_stats st = {0};
    int rc = coincap_parse_history(body, len, &q, b, &st, err, errlen);
    if (rc == 0 && st.bad)
        run_count(r->run, st.bad);
    return rc;
}

static void points_finished(void *job)
{
    struct hist_run *r = job;
    r->step = H_DONE;
    hist_advance(r);
}

static const struct backfill_ops points_ops = {
    .source = COINCAP_SOURCE,
    .spec = BATCH_PRICES,
    .plan = points_plan,
    .parse = points_parse,
    .finished = points_finished,
};

/* The list request: ?ids=a,b,c when `ids` is set, else the top `top`. 0 or -ENOMEM. */
static int list_path(struct hist_run *r)
{
    const struct cfg_value *iv = config_job_value(run_job(r->run), "ids");
    const struct cfg_value *tv = config_job_value(run_job(r->run), "top");
    struct sbuf *sb = &r->path;
    sbuf_reset(sb);
    if (!(iv && iv->set && iv->list.n)) {
        sbuf_printf(sb, "/assets?limit=%llu", (unsigned long long)(tv ? tv->u : 10));
        return sbuf_failed(sb) ? -ENOMEM : 0;
    }
    size_t n = 0;
    sbuf_puts(sb, "/assets?ids=");
    for (size_t i = 0; i < iv->list.n; i++) {
        if (!plain_id(iv->list.items[i])) {
            log_warn("id not asked for: not a CoinCap id", LOG_S("job", run_name(r->run)),
                     LOG_S("id", iv->list.items[i]));
            run_count(r->run, 1);
            continue;
        }
        if (n++)
            sbuf_putc(sb, ',');
        sbuf_puts(sb, iv->list.items[i]);
    }
    sbuf_printf(sb, "&limit=%zu", n < COINCAP_MAX_LIMIT ? (n ? n : 1) : (size_t)COINCAP_MAX_LIMIT);
    return sbuf_failed(sb) ? -ENOMEM : 0;
}

static void hist_advance(struct hist_run *r)
{
    if (run_cancelled(r->run))
        r->step = H_DONE;
    int rc = 0;
    switch (r->step) {
    case H_LIST:
        rc = list_path(r);
        if (rc == 0)
            rc = run_get_limited(r->run, r->path.p, ASSETS_MAX_BODY, list_parse, list_done);
        break;
    case H_UNIVERSE:
        rc = alias_read_universe(r->run, CANONICAL_SOURCE, hist_universe_done);
        break;
    case H_POINTS:
        r->ids = calloc(r->nassets + 1, sizeof(*r->ids));
        if (!r->ids) {
            rc = -ENOMEM;
            break;
        }
        for (size_t i = 0; i < r->nassets; i++)
            r->ids[i] = r->assets[i].id;
        backfill_walk_start(&r->walk, r->run, &points_ops, r, r->g_ms / 1000, r->ids, r->nassets);
        return;
    case H_DONE:
    default:
        run_finish(r->run);
        return;
    }
    if (rc < 0) {
        run_fail_errno(r->run, "request", rc);
        r->step = H_DONE;
        hist_advance(r);
    }
}

static int hist_start(struct run *run)
{
    struct hist_run *r = run_state(run);
    r->run = run;
    const struct cfg_value *iv = config_job_value(run_job(run), "interval");
    const struct cfg_value *dv = config_job_value(run_job(run), "days");
    r->interval = iv && iv->s ? iv->s : "d1";
    if (strcmp(r->interval, "d1") == 0) {
        r->g_ms = 86400000;
    } else if (strcmp(r->interval, "h1") == 0) {
        r->g_ms = 3600000;
    } else {
        run_fail(run, "interval", "must be d1 or h1");
        return -EINVAL;
    }
    int64_t now = (int64_t)run_started_ms(run);
    int64_t days = dv ? (int64_t)dv->u : 365;
    r->start_ms = now - days * 86400000;
    r->start_ms -= r->start_ms % r->g_ms;
    r->end_ms = now - now % r->g_ms; /* the interval under way is not history yet */
    r->step = H_LIST;
    hist_advance(r);
    return 0;
}

/* Steady state: the list, then about one window per asset while intervals close. */
static uint64_t hist_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    (void)cfg;
    (void)n;
    const struct cfg_value *iv = config_job_value(job, "ids");
    const struct cfg_value *tv = config_job_value(job, "top");
    const struct cfg_value *gv = config_job_value(job, "interval");
    uint64_t assets = iv && iv->set && iv->list.n ? iv->list.n : (tv ? tv->u : 10);
    uint64_t g = gv && gv->s && strcmp(gv->s, "h1") == 0 ? 3600000 : 86400000;
    uint64_t per = (job->every_ms + g - 1) / g;
    return 1 + assets * (per ? per : 1);
}

static const struct cfg_key hist_keys[] = {
    {"ids", CFG_KEY_NAMES, NULL, 0, 0},
    {"top", CFG_KEY_U64, "10", 1, COINCAP_MAX_LIMIT},
    {"interval", CFG_KEY_STR, "d1", 0, 0},
    {"days", CFG_KEY_U64, "365", 1, 36500},
};

static const char *const hist_source_errors[] = {"no_rows", NULL};

const struct job_def coincap_history_job = {
    .name = "coincap_history",
    .every_ms = 60ull * 60 * 1000,
    .enabled = true,
    .priority = TBUCKET_PRIO_BACKFILL,
    .keys = hist_keys,
    .nkeys = ARRAY_SIZE(hist_keys),
    .run_size = sizeof(struct hist_run),
    .start = hist_start,
    .cleanup = hist_cleanup,
    .requests_per_run = hist_requests,
    .source_errors = hist_source_errors,
};
