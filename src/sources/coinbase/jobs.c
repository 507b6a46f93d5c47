/*
 * coinbase jobs: coinbase_candles, a resumable candle backfill that then keeps current.
 *
 * A run, one request (or read) at a time:
 *   1. GET /products; the followed products are the online ones named in `products` or quoted
 *      in one of `quote_currencies`.
 *   2. Their base currencies are mapped onto canonical ids (alias.h) against the assets table
 *      (one read); asset_aliases gets a row per key. A product whose base is not mapped is not
 *      fetched: its candles would have no asset to belong to.
 *   3. and 4. run as the backfill walk every backfill shares (backfill.h).
 *   3. One read of candle_fill: how far each product's backfill has come.
 *   4. Per product, windows of at most 300 intervals from max(filled_to, now - days) up to the
 *      last closed interval (less CANDLE_SETTLE_S, so a candle the exchange has not finished
 *      yet is not skipped). A window [from, to) asks start=from, end=to - G (both inclusive,
 *      so exactly the window's candles); candles outside it (an API that answers one more)
 *      are dropped, so windows meet without overlap or gap. After a window's candles, a
 *      candle_fill statement records `to`: a statement is a barrier in the sink, so it commits
 *      only after those candles have, and a restart (even after SIGKILL, with rows lost from
 *      memory) resumes at a point before which everything is stored. A window that fails for
 *      good ends that product's run there: the next run starts again at its filled_to.
 *
 * MAX(open_time) would not do as the resume point: writers commit batches out of order, and
 * rows still in memory at a crash are gone, so a later window can be stored while an earlier
 * one is not; the barrier-written candle_fill cannot be ahead of the candles.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coingest/alias.h"
#include "coingest/backfill.h"
#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/coinbase/coinbase.h"

/* A closed interval is asked for only this long after it closed. */
#define CANDLE_SETTLE_S 120
/* Bodies: the 2022 product list is 223 KB; a 300-candle page about 20 KB. */
#define PRODUCTS_MAX_BODY (16u << 20)
#define CANDLES_MAX_BODY  (1u << 20)

static const uint32_t granularities[] = {60, 300, 900, 3600, 21600, 86400};

enum step { ST_PRODUCTS, ST_UNIVERSE, ST_CANDLES, ST_DONE };

struct product {
    char *id;
    char *base;
    char vs[33];    /* the quote currency, lower case */
    char *asset_id; /* the mapped canonical id, NULL when not mapped */
};

struct cb_run {
    struct backfill_walk walk; /* first: the walk finds itself in the run state */
    struct run *run;
    enum step step;
    uint32_t g;
    int64_t start_s, end_s;
    struct coinbase_products listed;
    struct product *prods;
    const char **ids; /* prods[i].id, the candle_fill keys */
    size_t nprods;
    struct alias_universe *universe; /* NULL: not known (only overrides map) */
};

static void advance(struct cb_run *r);

static void cb_cleanup(struct run *run)
{
    struct cb_run *r = run_state(run);
    backfill_walk_clear(&r->walk);
    coinbase_products_clear(&r->listed);
    for (size_t i = 0; i < r->nprods; i++) {
        free(r->prods[i].id);
        free(r->prods[i].base);
        free(r->prods[i].asset_id);
    }
    free(r->prods);
    free(r->ids);
    alias_universe_free(r->universe);
}

static void lower(char *dst, size_t cap, const char *s)
{
    size_t i = 0;
    for (; s[i] && i + 1 < cap; i++)
        dst[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    dst[i] = '\0';
}

/* Product ids go into the path as they are: letters, digits and '-' only. */
static bool plain_id(const char *s)
{
    if (!*s)
        return false;
    for (; *s; s++)
        if (!((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') ||
              *s == '-'))
            return false;
    return true;
}

/* --- 1. products ------------------------------------------------------------------------- */

static int products_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct cb_run *r = run_state(arg);
    uint64_t skipped = 0;
    coinbase_products_clear(&r->listed);
    int rc = coinbase_parse_products(body, len, &r->listed, &skipped, err, errlen);
    if (rc == 0 && skipped)
        run_count(r->run, skipped);
    return rc;
}

static bool list_has_ci(const struct strlist *l, const char *s)
{
    for (size_t i = 0; l && i < l->n; i++)
        if (strcasecmp(l->items[i], s) == 0)
            return true;
    return false;
}

/* Picks the followed products out of the listed ones. */
static int select_products(struct cb_run *r)
{
    const struct cfg_source *src = run_source(r->run);
    const struct cfg_value *pv = config_source_value(src, "products");
    const struct cfg_value *qv = config_source_value(src, "quote_currencies");
    const struct strlist *want = pv && pv->set ? &pv->list : NULL;
    const struct strlist *quotes = qv && qv->set ? &qv->list : NULL;
    r->prods = calloc(r->listed.n + 1, sizeof(*r->prods));
    if (!r->prods)
        return -ENOMEM;
    for (size_t i = 0; i < r->listed.n; i++) {
        const struct coinbase_product *p = &r->listed.items[i];
        char vs[33];
        lower(vs, sizeof(vs), p->quote);
        bool named = list_has_ci(want, p->id);
        if (!named && !(quotes && strlist_has(quotes, vs, strlen(vs))))
            continue;
        if (!p->online || !plain_id(p->id)) {
            if (named)
                log_warn("product not followed: it is not online", LOG_S("job", run_name(r->run)),
                         LOG_S("product", p->id));
            run_count(r->run, 1);
            continue;
        }
        struct product *q = &r->prods[r->nprods];
        q->id = strdup(p->id);
        q->base = strdup(p->base);
        snprintf(q->vs, sizeof(q->vs), "%s", vs);
        if (!q->id || !q->base) {
            free(q->id);
            free(q->base);
            return -ENOMEM;
        }
        r->nprods++;
    }
    for (size_t i = 0; want && i < want->n; i++) {
        bool found = false;
        for (size_t k = 0; k < r->listed.n && !found; k++)
            found = strcasecmp(r->listed.items[k].id, want->items[i]) == 0;
        if (!found) {
            log_warn("product not listed by the exchange", LOG_S("job", run_name(r->run)),
                     LOG_S("product", want->items[i]));
            run_count(r->run, 1);
        }
    }
    coinbase_products_clear(&r->listed);
    return 0;
}

static void products_done(const struct fetch_result *res, void *arg)
{
    struct cb_run *r = run_state(arg);
    if (res->outcome != FETCH_OK) {
        r->step = ST_DONE; /* the runner recorded why */
    } else if (select_products(r) != 0) {
        run_fail(r->run, "products", "out of memory");
        r->step = ST_DONE;
    } else if (r->nprods == 0) {
        run_fail(r->run, "products",
                 "no product to follow (set products or quote_currencies in [source.coinbase])");
        r->step = ST_DONE;
    } else {
        r->step = ST_UNIVERSE;
    }
    advance(r);
}

/* --- 2. mapping base currencies ---------------------------------------------------------- */

static void map_bases(struct cb_run *r)
{
    const struct config *cfg = run_config(r->run);
    struct alias_key *keys = calloc(r->nprods, sizeof(*keys));
    struct alias_result *res = calloc(r->nprods, sizeof(*res));
    struct batch *rows = batch_new(BATCH_ASSET_ALIASES, (uint32_t)r->nprods);
    size_t n = 0;
    if (!keys || !res || !rows) {
        run_fail(r->run, "aliases", "out of memory");
        r->nprods = 0;
        goto done;
    }
    /* One key per distinct base currency. */
    for (size_t i = 0; i < r->nprods; i++) {
        bool seen = false;
        for (size_t k = 0; k < n && !seen; k++)
            seen = strcmp(keys[k].key, r->prods[i].base) == 0;
        if (!seen)
            keys[n++] = (struct alias_key){
                .key = r->prods[i].base,
                .symbol = r->prods[i].base,
                .override_id = config_alias(cfg, COINBASE_SOURCE, r->prods[i].base)};
    }
    size_t unmapped = alias_map_keys(r->universe, r->universe != NULL, COINBASE_SOURCE, keys, n,
                                     res, rows, (int64_t)run_started_ms(r->run));
    for (size_t i = 0; i < r->nprods; i++)
        for (size_t k = 0; k < n; k++)
            if (strcmp(keys[k].key, r->prods[i].base) == 0 && res[k].asset_id)
                r->prods[i].asset_id = strdup(res[k].asset_id);
    run_count(r->run, unmapped);
    run_emit(r->run, rows);
    rows = NULL;
done:
    batch_free(rows);
    free(keys);
    free(res);
    alias_universe_free(r->universe);
    r->universe = NULL;
}

static void universe_done(struct run *run, struct alias_universe *u)
{
    struct cb_run *r = run_state(run);
    r->universe = u;
    map_bases(r);
    r->step = ST_CANDLES;
    advance(r);
}

/* --- 3. candles: the backfill walk (backfill.h) ---------------------------------------------- */

static int candles_plan(void *job, size_t i, int64_t filled_ms, struct backfill_window *w,
                        struct sbuf *path)
{
    struct cb_run *r = job;
    const struct product *p = &r->prods[i];
    if (!p->asset_id)
        return 1; /* its candles would have no asset to belong to */
    int64_t filled_s = filled_ms / 1000;
    int64_t from = filled_s > r->start_s ? filled_s : r->start_s;
    from -= from % r->g;
    if (from >= r->end_s)
        return 1;
    int64_t to = from + (int64_t)COINBASE_MAX_CANDLES * r->g;
    if (to > r->end_s)
        to = r->end_s;
    char a[32], b[32];
    util_format_iso8601((uint64_t)from * 1000, a, sizeof(a));
    util_format_iso8601((uint64_t)(to - r->g) * 1000, b, sizeof(b));
    sbuf_printf(path, "/products/%s/candles?granularity=%u&start=%s&end=%s", p->id, r->g, a, b);
    w->from_ms = from * 1000;
    w->to_ms = to * 1000;
    w->max_body = CANDLES_MAX_BODY;
    return 0;
}

static int candles_parse(void *job, size_t i, const struct backfill_window *w, const char *body,
                         size_t len, struct batch *b, char *err, size_t errlen)
{
    struct cb_run *r = job;
    const struct product *p = &r->prods[i];
    struct coinbase_candle_req q = {.product = p->id,
                                    .asset_id = p->asset_id,
                                    .vs_currency = p->vs,
                                    .interval_s = r->g,
                                    .from_s = w->from_ms / 1000,
                                    .to_s = w->to_ms / 1000,
                                    .fetched_ms = (int64_t)util_wall_ms()};
    struct coinbase_candle_stats st = {0};
    int rc = coinbase_parse_candles(body, len, &q, b, &st, err, errlen);
    if (rc == 0 && (st.bad || st.misaligned))
        run_count(r->run, st.bad + st.misaligned);
    return rc;
}

static void candles_finished(void *job)
{
    struct cb_run *r = job;
    r->step = ST_DONE;
    advance(r);
}

static const struct backfill_ops candles_ops = {
    .source = COINBASE_SOURCE,
    .spec = BATCH_CANDLES,
    .plan = candles_plan,
    .parse = candles_parse,
    .finished = candles_finished,
};

/* Coinbase's keys map onto CoinGecko's ids (assets.id), ranked by CoinGecko's market caps. */
#define CANONICAL_SOURCE "coingecko"

static void advance(struct cb_run *r)
{
    if (run_cancelled(r->run))
        r->step = ST_DONE;
    int rc = 1;
    switch (r->step) {
    case ST_PRODUCTS:
        rc = run_get_limited(r->run, "/products", PRODUCTS_MAX_BODY, products_parse, products_done);
        break;
    case ST_UNIVERSE:
        rc = alias_read_universe(r->run, CANONICAL_SOURCE, universe_done);
        break;
    case ST_CANDLES:
        r->ids = calloc(r->nprods + 1, sizeof(*r->ids));
        if (!r->ids) {
            rc = -ENOMEM;
            break;
        }
        for (size_t i = 0; i < r->nprods; i++)
            r->ids[i] = r->prods[i].id;
        backfill_walk_start(&r->walk, r->run, &candles_ops, r, r->g, r->ids, r->nprods);
        return;
    case ST_DONE:
    default:
        run_finish(r->run);
        return;
    }
    if (rc < 0) {
        run_fail_errno(r->run, "request", rc);
        r->step = ST_DONE;
        advance(r);
    }
}

static int candles_start(struct run *run)
{
    struct cb_run *r = run_state(run);
    r->run = run;
    const struct cfg_value *gv = config_job_value(run_job(run), "granularity");
    const struct cfg_value *dv = config_job_value(run_job(run), "days");
    r->g = gv ? (uint32_t)gv->u : 3600;
    bool ok = false;
    for (size_t i = 0; i < ARRAY_SIZE(granularities); i++)
        ok |= granularities[i] == r->g;
    if (!ok) {
        run_fail(run, "granularity", "must be one of 60, 300, 900, 3600, 21600, 86400 seconds");
        return -EINVAL;
    }
    int64_t now_s = (int64_t)(run_started_ms(run) / 1000);
    int64_t days = dv ? (int64_t)dv->u : 30;
    r->start_s = now_s - days * 86400;
    r->start_s -= r->start_s % r->g;
    r->end_s = now_s - CANDLE_SETTLE_S;
    r->end_s -= r->end_s % r->g;
    r->step = ST_PRODUCTS;
    advance(r);
    return 0;
}

/* Steady state: /products, then one window per product (more while backfilling). */
static uint64_t candles_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    (void)n;
    const struct cfg_source *src = config_job_source(cfg, job);
    const struct cfg_value *pv = config_source_value(src, "products");
    const struct cfg_value *qv = config_source_value(src, "quote_currencies");
    const struct cfg_value *gv = config_job_value(job, "granularity");
    uint64_t products = pv && pv->set ? pv->list.n : 0;
    if (qv && qv->set)
        products += 100 * qv->list.n; /* an estimate: 235 USD products in 2022 */
    uint64_t span = gv && gv->u ? (uint64_t)COINBASE_MAX_CANDLES * gv->u * 1000 : 1;
    return 1 + products * ((job->every_ms + span - 1) / span);
}

static const struct cfg_key candles_keys[] = {
    {"granularity", CFG_KEY_U64, "3600", 60, 86400},
    {"days", CFG_KEY_U64, "30", 1, 36500},
};

const struct job_def coinbase_candles_job = {
    .name = "coinbase_candles",
    .every_ms = 60ull * 60 * 1000,
    .enabled = true,
    .priority = TBUCKET_PRIO_BACKFILL,
    .keys = candles_keys,
    .nkeys = ARRAY_SIZE(candles_keys),
    .run_size = sizeof(struct cb_run),
    .start = candles_start,
    .cleanup = cb_cleanup,
    .requests_per_run = candles_requests,
};
