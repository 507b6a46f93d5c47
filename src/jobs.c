/*
 * jobs: the CoinGecko jobs as small state machines on the loop.
 *
 * A run is a sequence of requests, one at a time. Each request gets fresh batches; the fetch
 * engine calls parse() on a 2xx body (a parse error makes the engine retry the request), and
 * on success done() hands the batches to the sink and plans the next request. A request that
 * fails for good is recorded (the first error becomes the run's error) and the run goes on
 * where that makes sense (another page set, another currency) or ends.
 *
 *   assets:      /coins/list?include_platform=true -> assets, then the delisting statement
 *                (a sink barrier: it runs after the list is committed), /coins/categories/list
 *                -> categories, then per configured category the paged /coins/markets?category=
 *                -> asset_categories.
 *   prices:      the universe's ids split over /simple/price requests whose URL stays under
 *                max_url_bytes -> prices.
 *   market_caps: per vs_currency, /coins/markets pages (order=market_cap_desc, per_page,
 *                precision=full) until a short page or `top` -> market_snapshots and assets'
 *                rank/image; then /global -> global_snapshots.
 *
 * The universe (which ids prices and market_caps track) is resolved at the start of a run:
 * an explicit id list; or `ids = all`, the ids of the last /coins/list this process fetched
 * (fetched on demand when there is none yet); narrowed to the members of `categories` and to
 * the `top` N by market cap when those are set. Resolution results are kept between runs and
 * refreshed by the runs that fetch the same pages anyway.
 */
#include "coingest/jobs.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/coingecko.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/util.h"

/* --- id sets ------------------------------------------------------------------------------ */

static void ids_free(struct strlist *l)
{
    coingecko_strlist_free(l);
}

static int ids_push(struct strlist *l, const char *s)
{
    char **items = realloc(l->items, (l->n + 1) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    l->items = items;
    if (!(items[l->n] = strdup(s)))
        return -ENOMEM;
    l->n++;
    return 0;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Sorts and removes duplicates. */
static void ids_uniq(struct strlist *l)
{
    if (l->n < 2)
        return;
    qsort(l->items, l->n, sizeof(char *), cmp_str);
    size_t w = 1;
    for (size_t r = 1; r < l->n; r++) {
        if (strcmp(l->items[r], l->items[w - 1]) == 0)
            free(l->items[r]);
        else
            l->items[w++] = l->items[r];
    }
    l->n = w;
}

static bool ids_contains_sorted(const struct strlist *l, const char *s)
{
    return l->n && bsearch(&s, l->items, l->n, sizeof(char *), cmp_str) != NULL;
}

static int ids_copy(struct strlist *dst, const struct strlist *src)
{
    for (size_t i = 0; i < src->n; i++)
        if (ids_push(dst, src->items[i]))
            return -ENOMEM;
    return 0;
}

/* --- runs --------------------------------------------------------------------------------- */

enum step {
    /* universe resolution, shared by prices and market_caps */
    ST_RESOLVE_LIST,
    ST_RESOLVE_CATEGORIES,
    ST_RESOLVE_TOP,
    /* assets */
    ST_ASSETS_LIST,
    ST_ASSETS_CATEGORIES,
    ST_ASSETS_CATEGORY_PAGES,
    /* prices */
    ST_PRICES,
    /* market_caps */
    ST_MARKETS,
    ST_GLOBAL,
    ST_DONE
};

struct jobs;

struct run {
    struct jobs *j;
    enum job_id id;
    jobs_done_cb done;
    void *arg;
    struct job_summary sum;
    struct coingecko_times times;
    uint64_t ok_requests, failed_requests;

    /* A snapshot of what the run needs from the config, so a reload mid-run is harmless. */
    struct strlist vs;
    struct strlist categories;
    struct strlist explicit_ids; /* ids = a,b,c */
    bool all;
    bool ids_all; /* the universe is still "every coin" (no list loaded) */
    uint32_t top;
    uint32_t per_page;
    uint32_t max_url_bytes;
    size_t base_len;

    enum step step;
    enum step after_resolve;
    struct fetch_req *req;
    bool cancelled;

    /* pagination */
    size_t vs_idx, cat_idx;
    uint32_t page;
    uint64_t collected;

    /* the ids the run tracks (sorted, unique) and a cursor over them */
    struct strlist ids;
    size_t next_id;
    struct strlist scratch; /* ids gathered while resolving */

    /* what the current request fills */
    char path[16384];
    struct batch *b[4];
    struct strlist got_ids;
    size_t got_ncoins;
    const char *const *req_ids; /* simple/price: the ids of this request */
    size_t req_nids;
};

struct jobs {
    struct api *api;
    struct sink *sink;
    const struct config *cfg;
    struct run *runs[JOB_COUNT];
    struct job_summary last[JOB_COUNT];
    struct strlist listed;       /* ids of the last /coins/list, sorted */
    struct strlist category_ids; /* members of the configured categories, sorted */
    bool have_category_ids;
    struct strlist top_ids; /* the last top-N by market cap, sorted */
    uint32_t top_ids_n;     /* the N they were resolved for */
};

const char *jobs_status_name(enum job_status s)
{
    switch (s) {
    case JOB_STATUS_OK:
        return "ok";
    case JOB_STATUS_PARTIAL:
        return "partial";
    default:
        return "failed";
    }
}

struct jobs *jobs_new(struct api *api, struct sink *sink, const struct config *cfg)
{
    struct jobs *j = calloc(1, sizeof(*j));
    if (!j)
        return NULL;
    j->api = api;
    j->sink = sink;
    j->cfg = cfg;
    for (int i = 0; i < JOB_COUNT; i++)
        j->last[i].job = (enum job_id)i;
    return j;
}

void jobs_set_config(struct jobs *j, const struct config *cfg)
{
    bool cats_changed = j->cfg->universe.categories.n != cfg->universe.categories.n;
    for (size_t i = 0; !cats_changed && i < cfg->universe.categories.n; i++)
        cats_changed =
            strcmp(j->cfg->universe.categories.items[i], cfg->universe.categories.items[i]) != 0;
    if (cats_changed) {
        ids_free(&j->category_ids);
        j->have_category_ids = false;
    }
    j->cfg = cfg;
}

bool jobs_running(const struct jobs *j, enum job_id id)
{
    return (unsigned)id < JOB_COUNT && j->runs[id] != NULL;
}

const struct job_summary *jobs_last(const struct jobs *j, enum job_id id)
{
    return (unsigned)id < JOB_COUNT ? &j->last[id] : NULL;
}

static void run_free(struct run *r)
{
    ids_free(&r->vs);
    ids_free(&r->categories);
    ids_free(&r->explicit_ids);
    ids_free(&r->ids);
    ids_free(&r->scratch);
    ids_free(&r->got_ids);
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++)
        batch_free(r->b[i]);
    free(r);
}

void jobs_free(struct jobs *j)
{
    if (!j)
        return;
    for (int i = 0; i < JOB_COUNT; i++) {
        if (j->runs[i])
            run_free(j->runs[i]);
    }
    ids_free(&j->listed);
    ids_free(&j->category_ids);
    ids_free(&j->top_ids);
    free(j);
}

static void set_error(struct run *r, const char *what, const char *why)
{
    if (r->sum.error[0])
        return;
    snprintf(r->sum.error, sizeof(r->sum.error), "%s: %s", what, why ? why : "failed");
}

/* Hands a batch to the sink (which takes it) and counts its rows. */
static void submit(struct run *r, struct batch *b)
{
    if (!b)
        return;
    if (b->nrows == 0) {
        batch_free(b);
        return;
    }
    uint64_t n = b->nrows;
    if (sink_submit(r->j->sink, b) == 0)
        r->sum.rows += n;
    else
        set_error(r, "sink", "rows could not be stored or spooled");
}

static void submit_all(struct run *r)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++) {
        submit(r, r->b[i]);
        r->b[i] = NULL;
    }
}

static void drop_batches(struct run *r)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++) {
        batch_free(r->b[i]);
        r->b[i] = NULL;
    }
    ids_free(&r->got_ids);
}

static void finish(struct run *r)
{
    struct jobs *j = r->j;
    r->sum.finished_wall_ms = util_wall_ms();
    if (r->failed_requests == 0 && !r->cancelled && !r->sum.error[0])
        r->sum.status = JOB_STATUS_OK;
    else if (r->ok_requests > 0)
        r->sum.status = JOB_STATUS_PARTIAL;
    else
        r->sum.status = JOB_STATUS_FAILED;
    if (r->cancelled)
        set_error(r, "run", "cancelled by shutdown");

    /* The run's own record, through the sink like every other row. */
    struct batch *b = batch_new(BATCH_JOB_RUNS, 1);
    if (b && batch_add_row(b) == 0) {
        const char *name = config_job_name(r->id);
        const char *status = jobs_status_name(r->sum.status);
        batch_set_str(b, 0, 0, name, strlen(name));
        batch_set_time(b, 0, 1, (int64_t)r->sum.started_wall_ms);
        batch_set_time(b, 0, 2, (int64_t)r->sum.finished_wall_ms);
        batch_set_str(b, 0, 3, status, strlen(status));
        batch_set_int(b, 0, 4, (int64_t)r->sum.requests);
        batch_set_int(b, 0, 5, (int64_t)r->sum.rows);
        batch_set_int(b, 0, 6, (int64_t)(r->sum.finished_wall_ms - r->sum.started_wall_ms));
        if (r->sum.error[0])
            batch_set_str(b, 0, 7, r->sum.error, strlen(r->sum.error));
        if (sink_submit(j->sink, b) != 0)
            log_warn("job_runs row lost", LOG_S("job", name));
    } else {
        batch_free(b);
    }

    char labels[128];
    snprintf(labels, sizeof(labels), "job=\"%s\",status=\"%s\"", config_job_name(r->id),
             jobs_status_name(r->sum.status));
    metrics_add("coingest_job_runs_total", labels, 1);
    snprintf(labels, sizeof(labels), "job=\"%s\"", config_job_name(r->id));
    metrics_observe("coingest_job_duration_seconds", labels,
                    (double)(r->sum.finished_wall_ms - r->sum.started_wall_ms) / 1000.0);
    if (r->sum.status == JOB_STATUS_OK)
        metrics_set("coingest_job_last_success_timestamp_seconds", labels,
                    (double)r->sum.finished_wall_ms / 1000.0);

    j->last[r->id] = r->sum;
    j->runs[r->id] = NULL;
    jobs_done_cb done = r->done;
    void *arg = r->arg;
    struct job_summary sum = r->sum;
    run_free(r);
    done(&sum, arg);
}

/* --- request building --------------------------------------------------------------------- */

/* Appends s, percent-encoded except for unreserved characters, to buf at *n. */
static int append_enc(char *buf, size_t cap, size_t *n, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~';
        size_t need = plain ? 1 : 3;
        if (*n + need + 1 > cap)
            return -ENOSPC;
        if (plain) {
            buf[(*n)++] = (char)*p;
        } else {
            buf[(*n)++] = '%';
            buf[(*n)++] = hex[*p >> 4];
            buf[(*n)++] = hex[*p & 15];
        }
    }
    buf[*n] = '\0';
    return 0;
}

static int append_raw(char *buf, size_t cap, size_t *n, const char *s)
{
    size_t len = strlen(s);
    if (*n + len + 1 > cap)
        return -ENOSPC;
    memcpy(buf + *n, s, len + 1);
    *n += len;
    return 0;
}

/* The encoded length of s (what append_enc would add). */
static size_t enc_len(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        bool plain = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                     (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.' || *p == '~';
        n += plain ? 1 : 3;
    }
    return n;
}

/* Builds "?ids=a,b,...<suffix>" from r->ids starting at r->next_id, as many ids as keep the
 * whole URL (base + prefix + ids + suffix) under max_url_bytes (at least one). Sets
 * r->req_ids/req_nids and advances next_id. */
static int build_ids_path(struct run *r, const char *prefix, const char *suffix)
{
    size_t n = 0;
    r->path[0] = '\0';
    if (append_raw(r->path, sizeof(r->path), &n, prefix))
        return -ENOSPC;
    size_t budget = r->max_url_bytes > r->base_len + n + strlen(suffix)
                        ? r->max_url_bytes - r->base_len - n - strlen(suffix)
                        : 0;
    size_t first = r->next_id, used = 0;
    while (r->next_id < r->ids.n) {
        const char *id = r->ids.items[r->next_id];
        size_t add = enc_len(id) + (r->next_id > first ? 3 : 0); /* "%2C" separator */
        if (r->next_id > first && used + add > budget)
            break;
        if (r->next_id > first && append_raw(r->path, sizeof(r->path), &n, "%2C"))
            break;
        if (append_enc(r->path, sizeof(r->path), &n, id)) {
            if (r->next_id == first)
                return -ENOSPC;
            break;
        }
        used += add;
        r->next_id++;
    }
    if (append_raw(r->path, sizeof(r->path), &n, suffix))
        return -ENOSPC;
    r->req_ids = (const char *const *)&r->ids.items[first];
    r->req_nids = r->next_id - first;
    return 0;
}

/* --- parse callbacks (run on the loop by the fetch engine before a body counts) ----------- */

static int parse_body(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct run *r = arg;
    struct coingecko_stats st = {0};
    r->times.fetched_ms = (int64_t)util_wall_ms();
    int rc = -EINVAL;
    switch (r->step) {
    case ST_RESOLVE_LIST:
    case ST_ASSETS_LIST:
        rc = coingecko_parse_coins_list(body, len, &r->times, r->b[0], &r->got_ids, &st, err,
                                        errlen);
        break;
    case ST_ASSETS_CATEGORIES:
        rc = coingecko_parse_categories_list(body, len, &r->times, r->b[0], &st, err, errlen);
        break;
    case ST_RESOLVE_CATEGORIES:
    case ST_RESOLVE_TOP:
    case ST_ASSETS_CATEGORY_PAGES:
    case ST_MARKETS: {
        const char *cat = NULL;
        if (r->step == ST_ASSETS_CATEGORY_PAGES || r->step == ST_RESOLVE_CATEGORIES)
            cat = r->categories.items[r->cat_idx];
        struct coingecko_markets_out out = {.snapshots = r->b[0],
                                            .assets = r->b[1],
                                            .asset_categories = cat ? r->b[2] : NULL,
                                            .ids = &r->got_ids};
        const char *vs = r->vs.n ? r->vs.items[r->step == ST_MARKETS ? r->vs_idx : 0] : "usd";
        rc = coingecko_parse_markets(body, len, &r->times, vs, cat, &out, &st, err, errlen);
        if (rc == 0)
            r->got_ncoins = out.ncoins;
        break;
    }
    case ST_PRICES: {
        struct coingecko_price_req req = {.ids = r->req_ids,
                                          .nids = r->req_nids,
                                          .vs_currencies = (const char *const *)r->vs.items,
                                          .nvs = r->vs.n};
        rc = coingecko_parse_simple_price(body, len, &r->times, &req, r->b[0], &st, err, errlen);
        break;
    }
    case ST_GLOBAL:
        rc = coingecko_parse_global(body, len, &r->times, r->b[0], &st, err, errlen);
        break;
    default:
        break;
    }
    if (rc == 0) {
        r->sum.counted += st.field_type_errors + st.missing_coins + st.missing_currencies +
                          st.missing_last_updated + st.skipped + st.overflow_numbers;
        if (st.field_type_errors)
            metrics_add("coingest_field_errors_total", "", (double)st.field_type_errors);
    } else {
        char labels[96];
        snprintf(labels, sizeof(labels), "job=\"%s\"", config_job_name(r->id));
        metrics_add("coingest_parse_errors_total", labels, 1);
        log_warn("response did not parse; retrying", LOG_S("job", config_job_name(r->id)),
                 LOG_S("error", err));
    }
    return rc;
}

static void advance(struct run *r);

static void on_done(const struct fetch_result *res, void *arg)
{
    struct run *r = arg;
    r->req = NULL;
    r->sum.requests += res->attempts;
    if (res->outcome == FETCH_CANCELLED) {
        r->cancelled = true;
        drop_batches(r);
        r->step = ST_DONE;
        advance(r);
        return;
    }
    if (res->outcome != FETCH_OK) {
        r->failed_requests++;
        char what[96];
        snprintf(what, sizeof(what), "GET %.80s", r->path);
        set_error(r, what, res->error);
        log_warn("request failed", LOG_S("job", config_job_name(r->id)), LOG_S("path", r->path),
                 LOG_I("status", res->status), LOG_U("attempts", res->attempts),
                 LOG_S("error", res->error));
        drop_batches(r);
        advance(r);
        return;
    }
    r->ok_requests++;
    advance(r);
}

static int send_request(struct run *r, enum batch_spec_id b0, int b1, int b2)
{
    drop_batches(r);
    r->b[0] = batch_new(b0, 256);
    if (b1 >= 0)
        r->b[1] = batch_new((enum batch_spec_id)b1, 256);
    if (b2 >= 0)
        r->b[2] = batch_new((enum batch_spec_id)b2, 256);
    if (!r->b[0] || (b1 >= 0 && !r->b[1]) || (b2 >= 0 && !r->b[2]))
        return -ENOMEM;
    r->got_ncoins = 0;
    r->req = api_get(r->j->api, r->path, TBUCKET_PRIO_LIVE, parse_body, on_done, r);
    return r->req ? 0 : -ENOMEM;
}

/* --- the state machine -------------------------------------------------------------------- */

static uint32_t page_size(struct run *r)
{
    uint32_t pp = r->per_page ? r->per_page : 250;
    if (r->top && r->step != ST_RESOLVE_CATEGORIES && r->step != ST_ASSETS_CATEGORY_PAGES &&
        r->top - r->collected < pp)
        pp = (uint32_t)(r->top - r->collected);
    return pp;
}

static int plan_markets_page(struct run *r, const char *vs, const char *category)
{
    size_t n = 0;
    int rc = 0;
    rc |= append_raw(r->path, sizeof(r->path), &n, "/coins/markets?vs_currency=");
    rc |= append_enc(r->path, sizeof(r->path), &n, vs);
    if (category) {
        rc |= append_raw(r->path, sizeof(r->path), &n, "&category=");
        rc |= append_enc(r->path, sizeof(r->path), &n, category);
    }
    char tail[128];
    snprintf(tail, sizeof(tail), "&order=market_cap_desc&per_page=%u&page=%u&precision=full",
             page_size(r), r->page);
    rc |= append_raw(r->path, sizeof(r->path), &n, tail);
    return rc ? -ENOSPC : 0;
}

/* Narrows the run's ids to those in `set` (sorted); when the run tracks "all", the set
 * becomes its universe. */
static void narrow(struct run *r, const struct strlist *set)
{
    struct strlist keep = {0};
    if (r->ids_all) {
        ids_copy(&keep, set);
    } else {
        for (size_t i = 0; i < r->ids.n; i++)
            if (ids_contains_sorted(set, r->ids.items[i]))
                ids_push(&keep, r->ids.items[i]);
    }
    ids_free(&r->ids);
    r->ids = keep;
    ids_uniq(&r->ids);
    r->ids_all = false;
}

/* Enters a step with fresh pagination state. */
static void next_step(struct run *r, enum step st)
{
    r->step = st;
    r->path[0] = '\0';
    r->page = 1;
    r->cat_idx = 0;
    r->collected = 0;
    r->next_id = 0;
    ids_free(&r->scratch);
}

/* Moves the run to its next request, or finishes it. Called after each request. */
static void advance(struct run *r)
{
    struct jobs *j = r->j;
    int rc = 0;
    for (;;) {
        if (r->cancelled && r->step != ST_DONE)
            r->step = ST_DONE;
        switch (r->step) {
        case ST_RESOLVE_LIST:
            if (!r->path[0]) {
                snprintf(r->path, sizeof(r->path), "/coins/list");
                rc = send_request(r, BATCH_ASSETS_LIST, -1, -1);
                goto sent;
            }
            if (r->b[0]) {
                ids_free(&j->listed);
                j->listed = r->got_ids;
                memset(&r->got_ids, 0, sizeof(r->got_ids));
                ids_uniq(&j->listed);
            }
            drop_batches(r);
            ids_copy(&r->ids, &j->listed);
            r->ids_all = false;
            next_step(r, ST_RESOLVE_CATEGORIES);
            continue;

        case ST_RESOLVE_CATEGORIES:
        case ST_RESOLVE_TOP: {
            bool cats = r->step == ST_RESOLVE_CATEGORIES;
            enum step next = cats ? ST_RESOLVE_TOP : r->after_resolve;
            if (cats ? !r->categories.n : !r->top) {
                next_step(r, next);
                continue;
            }
            struct strlist *cache = cats ? &j->category_ids : &j->top_ids;
            bool cached = cats ? j->have_category_ids : (j->top_ids_n == r->top && j->top_ids.n);
            if (!cached && r->path[0]) {
                /* A page came back (or failed for good): collect its ids. */
                bool ok = r->b[0] != NULL;
                for (size_t i = 0; ok && i < r->got_ids.n; i++)
                    ids_push(&r->scratch, r->got_ids.items[i]);
                r->collected += ok ? r->got_ncoins : 0;
                bool more = ok && r->got_ncoins >= page_size(r) && (cats || r->collected < r->top);
                drop_batches(r);
                if (more) {
                    r->page++;
                } else if (cats && ++r->cat_idx < r->categories.n) {
                    r->page = 1;
                } else {
                    ids_free(cache);
                    *cache = r->scratch;
                    memset(&r->scratch, 0, sizeof(r->scratch));
                    ids_uniq(cache);
                    if (cats)
                        j->have_category_ids = true;
                    else
                        j->top_ids_n = r->top;
                    cached = true;
                }
            }
            if (cached) {
                narrow(r, cache);
                next_step(r, next);
                continue;
            }
            r->path[0] = '\0';
            rc = plan_markets_page(r, "usd", cats ? r->categories.items[r->cat_idx] : NULL);
            if (rc)
                goto sent;
            rc = send_request(r, BATCH_MARKET_SNAPSHOTS, BATCH_ASSETS_MARKET,
                              cats ? BATCH_ASSET_CATEGORIES : -1);
            goto sent;
        }

        case ST_ASSETS_LIST:
            if (!r->path[0]) {
                snprintf(r->path, sizeof(r->path), "/coins/list?include_platform=true");
                rc = send_request(r, BATCH_ASSETS_LIST, -1, -1);
                goto sent;
            }
            if (r->b[0]) {
                submit(r, r->b[0]);
                r->b[0] = NULL;
                ids_free(&j->listed);
                j->listed = r->got_ids;
                memset(&r->got_ids, 0, sizeof(r->got_ids));
                ids_uniq(&j->listed);
                /* Assets not in this list are delisted; the sink runs this after the list is
                 * committed (a statement batch is a barrier). */
                struct batch *d = batch_new(BATCH_ASSETS_DELIST, 1);
                if (d && batch_add_row(d) == 0) {
                    batch_set_time(d, 0, 0, r->times.run_ms);
                    batch_set_time(d, 0, 1, r->times.run_ms);
                    if (sink_submit(j->sink, d) != 0)
                        set_error(r, "sink", "delisting statement could not be stored");
                } else {
                    batch_free(d);
                }
            }
            r->step = ST_ASSETS_CATEGORIES;
            r->path[0] = '\0';
            continue;

        case ST_ASSETS_CATEGORIES:
            if (!r->path[0]) {
                snprintf(r->path, sizeof(r->path), "/coins/categories/list");
                rc = send_request(r, BATCH_CATEGORIES, -1, -1);
                goto sent;
            }
            submit_all(r);
            r->step = ST_ASSETS_CATEGORY_PAGES;
            r->path[0] = '\0';
            r->cat_idx = 0;
            r->page = 1;
            ids_free(&r->scratch);
            continue;

        case ST_ASSETS_CATEGORY_PAGES:
            if (r->cat_idx >= r->categories.n) {
                r->step = ST_DONE;
                continue;
            }
            if (r->path[0]) {
                bool ok = r->b[0] != NULL;
                if (ok) {
                    for (size_t i = 0; i < r->got_ids.n; i++)
                        ids_push(&r->scratch, r->got_ids.items[i]);
                    submit(r, r->b[2]);
                    r->b[2] = NULL;
                }
                bool more = ok && r->got_ncoins >= (r->per_page ? r->per_page : 250);
                drop_batches(r);
                if (more) {
                    r->page++;
                } else {
                    r->cat_idx++;
                    r->page = 1;
                    if (r->cat_idx >= r->categories.n) {
                        if (!r->failed_requests) {
                            ids_free(&j->category_ids);
                            j->category_ids = r->scratch;
                            memset(&r->scratch, 0, sizeof(r->scratch));
                            ids_uniq(&j->category_ids);
                            j->have_category_ids = true;
                        }
                        r->step = ST_DONE;
                        continue;
                    }
                }
            }
            r->path[0] = '\0';
            {
                size_t n = 0;
                char tail[96];
                const char *vs = r->vs.n ? r->vs.items[0] : "usd";
                append_raw(r->path, sizeof(r->path), &n, "/coins/markets?vs_currency=");
                append_enc(r->path, sizeof(r->path), &n, vs);
                append_raw(r->path, sizeof(r->path), &n, "&category=");
                append_enc(r->path, sizeof(r->path), &n, r->categories.items[r->cat_idx]);
                snprintf(tail, sizeof(tail), "&per_page=%u&page=%u", r->per_page, r->page);
                append_raw(r->path, sizeof(r->path), &n, tail);
            }
            rc = send_request(r, BATCH_MARKET_SNAPSHOTS, BATCH_ASSETS_MARKET,
                              BATCH_ASSET_CATEGORIES);
            goto sent;

        case ST_PRICES:
            if (r->path[0])
                submit_all(r);
            if (r->next_id >= r->ids.n) {
                if (r->ids.n == 0)
                    set_error(r, "universe", "no ids to track");
                r->step = ST_DONE;
                continue;
            }
            {
                char prefix[1024];
                size_t n = 0;
                prefix[0] = '\0';
                append_raw(prefix, sizeof(prefix), &n, "/simple/price?vs_currencies=");
                for (size_t i = 0; i < r->vs.n; i++) {
                    if (i)
                        append_raw(prefix, sizeof(prefix), &n, "%2C");
                    append_enc(prefix, sizeof(prefix), &n, r->vs.items[i]);
                }
                append_raw(prefix, sizeof(prefix), &n, "&ids=");
                rc = build_ids_path(r, prefix,
                                    "&include_market_cap=true&include_24hr_vol=true"
                                    "&include_24hr_change=true&include_last_updated_at=true"
                                    "&precision=full");
            }
            if (rc)
                goto sent;
            rc = send_request(r, BATCH_PRICES, -1, -1);
            goto sent;

        case ST_MARKETS: {
            /* An explicit universe (ids, categories, top from the resolver) is fetched by id;
             * `ids = all` without filters walks the pages. */
            bool by_ids = !(r->all && !r->categories.n);
            if (r->path[0]) {
                if (r->b[0]) {
                    /* Rank and image once, from the first currency. */
                    if (r->vs_idx != 0) {
                        batch_free(r->b[1]);
                        r->b[1] = NULL;
                    }
                    r->collected += r->got_ncoins;
                }
                bool ok = r->b[0] != NULL;
                submit_all(r);
                bool more;
                if (by_ids)
                    more = r->next_id < r->ids.n;
                else
                    more =
                        ok && r->got_ncoins >= page_size(r) && (!r->top || r->collected < r->top);
                if (more) {
                    r->page++;
                } else {
                    r->vs_idx++;
                    r->page = 1;
                    r->next_id = 0;
                    r->collected = 0;
                }
            }
            if (r->vs_idx >= r->vs.n) {
                r->step = ST_GLOBAL;
                r->path[0] = '\0';
                continue;
            }
            if (by_ids) {
                if (r->ids.n == 0) {
                    set_error(r, "universe", "no ids to track");
                    r->step = ST_GLOBAL;
                    r->path[0] = '\0';
                    continue;
                }
                char prefix[256];
                size_t n = 0;
                append_raw(prefix, sizeof(prefix), &n, "/coins/markets?vs_currency=");
                append_enc(prefix, sizeof(prefix), &n, r->vs.items[r->vs_idx]);
                append_raw(prefix, sizeof(prefix), &n, "&ids=");
                char suffix[96];
                snprintf(suffix, sizeof(suffix),
                         "&order=market_cap_desc&per_page=250&page=1"
                         "&precision=full");
                /* per_page caps the answer: never ask for more ids than a page holds. */
                size_t end = r->next_id + 250 < r->ids.n ? r->next_id + 250 : r->ids.n;
                size_t saved = r->ids.n;
                r->ids.n = end;
                rc = build_ids_path(r, prefix, suffix);
                r->ids.n = saved;
            } else {
                r->path[0] = '\0';
                rc = plan_markets_page(r, r->vs.items[r->vs_idx], NULL);
            }
            if (rc)
                goto sent;
            rc = send_request(r, BATCH_MARKET_SNAPSHOTS, BATCH_ASSETS_MARKET, -1);
            goto sent;
        }

        case ST_GLOBAL:
            if (!r->path[0]) {
                snprintf(r->path, sizeof(r->path), "/global");
                rc = send_request(r, BATCH_GLOBAL_SNAPSHOTS, -1, -1);
                goto sent;
            }
            submit_all(r);
            r->step = ST_DONE;
            continue;

        case ST_DONE:
        default:
            finish(r);
            return;
        }
    sent:
        if (rc) {
            set_error(r, "request", rc == -ENOSPC ? "URL too long" : "out of memory");
            r->failed_requests++;
            r->step = ST_DONE;
            drop_batches(r);
            continue;
        }
        return;
    }
}

static int copy_list(struct strlist *dst, const struct strlist *src)
{
    return ids_copy(dst, src);
}

int jobs_run(struct jobs *j, enum job_id id, jobs_done_cb done, void *arg)
{
    if ((unsigned)id >= JOB_COUNT)
        return -EINVAL;
    if (j->runs[id])
        return -EBUSY;
    struct run *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    const struct config *cfg = j->cfg;
    r->j = j;
    r->id = id;
    r->done = done;
    r->arg = arg;
    r->sum.job = id;
    r->sum.started_wall_ms = util_wall_ms();
    r->times.run_ms = (int64_t)r->sum.started_wall_ms;
    r->times.fetched_ms = r->times.run_ms;
    r->all = cfg->universe.all;
    r->top = cfg->universe.top;
    r->per_page = cfg->coingecko.per_page ? cfg->coingecko.per_page : 250;
    r->max_url_bytes = cfg->coingecko.max_url_bytes ? cfg->coingecko.max_url_bytes : 8000;
    r->base_len = cfg->coingecko.base_url ? strlen(cfg->coingecko.base_url) : 0;
    if (copy_list(&r->vs, &cfg->universe.vs_currencies) ||
        copy_list(&r->categories, &cfg->universe.categories) ||
        copy_list(&r->explicit_ids, &cfg->universe.ids)) {
        run_free(r);
        return -ENOMEM;
    }
    if (r->vs.n == 0 && ids_push(&r->vs, "usd")) {
        run_free(r);
        return -ENOMEM;
    }
    j->runs[id] = r;

    switch (id) {
    case JOB_ASSETS:
        r->step = ST_ASSETS_LIST;
        r->page = 1;
        break;
    case JOB_PRICES:
    case JOB_MARKET_CAPS:
        r->after_resolve = id == JOB_PRICES ? ST_PRICES : ST_MARKETS;
        if (!r->all) {
            ids_copy(&r->ids, &r->explicit_ids);
            ids_uniq(&r->ids);
            r->step = ST_RESOLVE_CATEGORIES;
        } else if (r->categories.n || (r->top && id == JOB_PRICES)) {
            r->ids_all = true;
            r->step = ST_RESOLVE_CATEGORIES;
        } else if (id == JOB_MARKET_CAPS) {
            /* Every coin (or the top N) by walking the pages: nothing to resolve. */
            r->step = ST_MARKETS;
        } else if (j->listed.n) {
            ids_copy(&r->ids, &j->listed);
            r->step = ST_PRICES;
        } else {
            r->step = ST_RESOLVE_LIST;
        }
        r->page = 1;
        break;
    default:
        break;
    }
    log_info("job started", LOG_S("job", config_job_name(id)));
    advance(r);
    return 0;
}

void jobs_cancel(struct jobs *j)
{
    for (int i = 0; i < JOB_COUNT; i++) {
        struct run *r = j->runs[i];
        if (!r)
            continue;
        r->cancelled = true;
        if (r->req)
            fetch_cancel(r->req); /* on_done runs and finishes the run */
    }
}

/* --- budget ------------------------------------------------------------------------------- */

bool jobs_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out)
{
    const struct cfg_source *src = &cfg->coingecko;
    uint64_t n = universe_size;
    if (!n)
        n = cfg->universe.all ? 17500 : cfg->universe.ids.n;
    if (cfg->universe.top && cfg->universe.top < n)
        n = cfg->universe.top;
    uint64_t nvs = cfg->universe.vs_currencies.n ? cfg->universe.vs_currencies.n : 1;
    uint32_t per_page = src->per_page ? src->per_page : 250;
    uint64_t cats = cfg->universe.categories.n;
    /* An id costs about its length plus a separator; CoinGecko ids average ~14 bytes. */
    uint64_t per_price_req = src->max_url_bytes > 400 ? (src->max_url_bytes - 300) / 17 : 1;
    uint64_t reqs[JOB_COUNT];
    reqs[JOB_ASSETS] = 2 + cats * 2;
    reqs[JOB_PRICES] = (n + per_price_req - 1) / per_price_req;
    reqs[JOB_MARKET_CAPS] = nvs * ((n + per_page - 1) / per_page) + 1;
    double per_min = 0, per_month = 0;
    char line[4096];
    size_t len = 0;
    for (int i = 0; i < JOB_COUNT; i++) {
        const struct cfg_job *jb = &cfg->jobs[i];
        if (!jb->enabled || !jb->every_ms)
            continue;
        double runs_per_min = 60000.0 / (double)jb->every_ms;
        double rpm = (double)reqs[i] * runs_per_min;
        per_min += rpm;
        per_month += rpm * 60 * 24 * 30;
        len += (size_t)snprintf(line + len, sizeof(line) - len,
                                "budget: job=%s requests_per_run=%llu every=%llus "
                                "requests_per_min=%.2f requests_per_month=%.0f\n",
                                jb->name, (unsigned long long)reqs[i],
                                (unsigned long long)(jb->every_ms / 1000), rpm, rpm * 60 * 24 * 30);
    }
    double limit = src->rate_limit.period_ms
                       ? (double)src->rate_limit.count * 60000.0 / (double)src->rate_limit.period_ms
                       : 0;
    double plan = src->plan_limit.period_ms
                      ? (double)src->plan_limit.count * 60000.0 / (double)src->plan_limit.period_ms
                      : limit;
    bool fits = per_min <= limit && per_min <= plan &&
                (!src->monthly_credits || per_month <= (double)src->monthly_credits);
    len +=
        (size_t)snprintf(line + len, sizeof(line) - len,
                         "budget: total requests_per_min=%.2f rate_limit_per_min=%.2f "
                         "plan_limit_per_min=%.2f requests_per_month=%.0f monthly_credits=%llu "
                         "universe=%llu fits=%s\n",
                         per_min, limit, plan, per_month, (unsigned long long)src->monthly_credits,
                         (unsigned long long)n, fits ? "yes" : "no");
    if (out) {
        fputs(line, out);
        if (!fits)
            fprintf(out, "warning: the configured jobs need more requests than the limits allow; "
                         "runs will take longer than their interval or exhaust the plan\n");
    } else {
        log_info("request budget", LOG_F("requests_per_min", per_min),
                 LOG_F("rate_limit_per_min", limit), LOG_F("plan_limit_per_min", plan),
                 LOG_F("requests_per_month", per_month),
                 LOG_U("monthly_credits", src->monthly_credits), LOG_U("universe", n),
                 LOG_B("fits", fits));
        if (!fits)
            log_warn("the configured jobs need more requests than the limits allow");
    }
    return fits;
}
