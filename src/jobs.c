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
 * the `top` N by market cap when those are set. Resolved sets are cached between runs, for as
 * long as the job that fetches the same pages anyway (assets for categories, market_caps for
 * the top N) would take to refresh them; a walk with a failed page never replaces a cache
 * entry, and a reload that changes categories or top drops the entries.
 *
 * The `top` walk always asks for full pages (CoinGecko's `page` counts in units of
 * per_page) and keeps only the first N coins of the last one.
 */
#include "coingest/jobs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "sources/coingecko/coingecko.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/util.h"

/* --- state -------------------------------------------------------------------------------- */

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

/* A resolved id set kept between runs: category members, or the top N. */
struct idcache {
    struct strlist ids; /* sorted, unique */
    bool valid;
    uint64_t at_ms; /* wall time it was resolved */
    uint32_t top;   /* the N it was resolved for (top cache) */
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
    uint64_t gen; /* the jobs' universe generation when the run started */

    /* A snapshot of what the run needs from the config, so a reload mid-run is harmless. */
    struct strlist vs;
    struct strlist categories;
    bool all;
    bool ids_all; /* the universe is still "every coin" (no list loaded) */
    uint32_t top;
    uint32_t per_page;
    size_t url_budget; /* bytes a path may take: max_url_bytes less the base URL */
    uint64_t cache_ttl_top_ms, cache_ttl_categories_ms;

    enum step step;
    enum step after_resolve;
    struct fetch_req *req;
    bool cancelled;

    /* pagination */
    size_t vs_idx, cat_idx;
    uint32_t page;
    uint64_t collected; /* coins kept so far in this walk */
    bool walk_failed;   /* a page of this walk failed for good */

    /* the ids the run tracks (sorted, unique) and a cursor over them */
    struct strlist ids;
    size_t next_id;
    struct strlist scratch; /* ids gathered while walking pages */

    /* the current request and what it fills */
    char path[16384];
    bool sent;    /* path holds a request that was answered */
    bool last_ok; /* ... and it succeeded */
    struct batch *b[3];
    struct strlist got_ids;
    size_t got_ncoins;          /* coins in the page as served (before a top-N trim) */
    const char *const *req_ids; /* simple/price: the ids of this request */
    size_t req_nids;
};

struct jobs {
    struct api *api;
    struct sink *sink;
    const struct config *cfg;
    struct run *runs[JOB_COUNT];
    struct job_summary last[JOB_COUNT];
    struct strlist listed; /* ids of the last /coins/list, sorted */
    struct idcache categories;
    struct idcache top;
    uint64_t gen; /* bumped when the universe's categories or top change on reload */
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

static void idcache_clear(struct idcache *c)
{
    strlist_clear(&c->ids);
    c->valid = false;
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
    /* Resolved sets depend on these keys only; a run that started before the change must
     * not store its result (the generation tells). */
    if (!strlist_equal(&j->cfg->universe.categories, &cfg->universe.categories) ||
        j->cfg->universe.top != cfg->universe.top) {
        idcache_clear(&j->categories);
        idcache_clear(&j->top);
        j->gen++;
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

static void drop_batches(struct run *r)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++) {
        batch_free(r->b[i]);
        r->b[i] = NULL;
    }
    strlist_clear(&r->got_ids);
}

static void run_free(struct run *r)
{
    drop_batches(r);
    strlist_clear(&r->vs);
    strlist_clear(&r->categories);
    strlist_clear(&r->ids);
    strlist_clear(&r->scratch);
    free(r);
}

void jobs_free(struct jobs *j)
{
    if (!j)
        return;
    for (int i = 0; i < JOB_COUNT; i++)
        if (j->runs[i])
            run_free(j->runs[i]);
    strlist_clear(&j->listed);
    idcache_clear(&j->categories);
    idcache_clear(&j->top);
    free(j);
}

static void set_error(struct run *r, const char *what, const char *why)
{
    if (r->sum.error[0])
        return;
    snprintf(r->sum.error, sizeof(r->sum.error), "%s: %s", what, why ? why : "failed");
}

/* Hands a batch to the sink (which takes it) and counts its rows. Returns false when the
 * sink could not keep the rows. */
static bool submit(struct run *r, struct batch *b)
{
    if (!b)
        return true;
    if (b->nrows == 0) {
        batch_free(b);
        return true;
    }
    uint64_t n = b->nrows;
    if (sink_submit(r->j->sink, b) != 0) {
        set_error(r, "sink", "rows could not be stored or spooled");
        return false;
    }
    r->sum.rows += n;
    return true;
}

static bool submit_all(struct run *r)
{
    bool ok = true;
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++) {
        ok &= submit(r, r->b[i]);
        r->b[i] = NULL;
    }
    return ok;
}

static void finish(struct run *r)
{
    struct jobs *j = r->j;
    r->sum.finished_wall_ms = util_wall_ms();
    if (r->cancelled)
        set_error(r, "run", "cancelled by shutdown");
    if (r->failed_requests == 0 && !r->sum.error[0])
        r->sum.status = JOB_STATUS_OK;
    else if (r->ok_requests > 0)
        r->sum.status = JOB_STATUS_PARTIAL;
    else
        r->sum.status = JOB_STATUS_FAILED;

    /* The run's own record, through the sink like every other row. */
    const char *name = config_job_name(r->id);
    struct batch *b = batch_new(BATCH_JOB_RUNS, 1);
    if (b && batch_add_row(b) == 0) {
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
        log_warn("job_runs row lost: out of memory", LOG_S("job", name));
    }

    char labels[128];
    snprintf(labels, sizeof(labels), "job=\"%s\",status=\"%s\"", name,
             jobs_status_name(r->sum.status));
    metrics_add("coingest_job_runs_total", labels, 1);
    snprintf(labels, sizeof(labels), "job=\"%s\"", name);
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

static bool unreserved(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' ||
           c == '_' || c == '.' || c == '~';
}

/* The percent-encoded length of s. */
static size_t enc_len(const char *s)
{
    size_t n = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        n += unreserved(*p) ? 1 : 3;
    return n;
}

/* Appends s percent-encoded (all but unreserved characters) to buf at *n. */
static int append_enc(char *buf, size_t cap, size_t *n, const char *s)
{
    static const char hex[] = "0123456789ABCDEF";
    if (*n + enc_len(s) + 1 > cap)
        return -ENOSPC;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p)) {
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

/* Builds prefix + ids + suffix from r->ids starting at r->next_id, with as many ids (at most
 * max_ids, at least one) as keep the path within the URL budget. Sets req_ids/req_nids and
 * advances next_id. */
static int build_ids_path(struct run *r, const char *prefix, const char *suffix, size_t max_ids)
{
    size_t n = 0;
    r->path[0] = '\0';
    if (append_raw(r->path, sizeof(r->path), &n, prefix))
        return -ENOSPC;
    size_t limit = r->url_budget < sizeof(r->path) - 1 ? r->url_budget : sizeof(r->path) - 1;
    size_t fixed = n + strlen(suffix);
    size_t budget = limit > fixed ? limit - fixed : 0;
    size_t first = r->next_id, used = 0;
    while (r->next_id < r->ids.n && r->next_id - first < max_ids) {
        const char *id = r->ids.items[r->next_id];
        size_t add = enc_len(id) + (r->next_id > first ? 3 : 0); /* "%2C" separator */
        if (r->next_id > first && used + add > budget)
            break;
        if (r->next_id > first && append_raw(r->path, sizeof(r->path), &n, "%2C"))
            break;
        if (append_enc(r->path, sizeof(r->path) - strlen(suffix), &n, id))
            return -ENOSPC; /* one id alone does not fit */
        used += add;
        r->next_id++;
    }
    if (append_raw(r->path, sizeof(r->path), &n, suffix))
        return -ENOSPC;
    r->req_ids = (const char *const *)&r->ids.items[first];
    r->req_nids = r->next_id - first;
    return 0;
}

/* /coins/markets?vs_currency=V[&category=C]&order=market_cap_desc&per_page=P&page=N
 * &precision=full: one page of a walk. */
static int markets_page_path(struct run *r, const char *vs, const char *category)
{
    size_t n = 0;
    char tail[128];
    snprintf(tail, sizeof(tail), "&order=market_cap_desc&per_page=%u&page=%u&precision=full",
             r->per_page, r->page);
    r->path[0] = '\0';
    if (append_raw(r->path, sizeof(r->path), &n, "/coins/markets?vs_currency=") ||
        append_enc(r->path, sizeof(r->path), &n, vs) ||
        (category && (append_raw(r->path, sizeof(r->path), &n, "&category=") ||
                      append_enc(r->path, sizeof(r->path), &n, category))) ||
        append_raw(r->path, sizeof(r->path), &n, tail))
        return -ENOSPC;
    return 0;
}

/* --- parse callback (runs on the loop inside the fetch engine, before a body counts) ------ */

/* Keeps only the first `keep` rows of each batch and ids of this page (a top-N walk's last
 * page holds more coins than the N still wanted). */
static void trim_page(struct run *r, uint64_t keep)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++)
        while (r->b[i] && r->b[i]->nrows > keep)
            batch_drop_last(r->b[i]);
    while (r->got_ids.n > keep)
        free(r->got_ids.items[--r->got_ids.n]);
}

/* Is this a walk limited to the top N (so the last page is trimmed)? */
static bool top_walk(const struct run *r)
{
    return r->top && (r->step == ST_RESOLVE_TOP || (r->step == ST_MARKETS && r->ids_all));
}

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
        const char *vs = r->step == ST_MARKETS ? r->vs.items[r->vs_idx] : r->vs.items[0];
        rc = coingecko_parse_markets(body, len, &r->times, vs, cat, &out, &st, err, errlen);
        if (rc == 0) {
            r->got_ncoins = out.ncoins;
            if (top_walk(r) && r->collected + out.ncoins > r->top)
                trim_page(r, r->top - r->collected);
        }
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

/* --- the state machine -------------------------------------------------------------------- */

static void advance(struct run *r);

static void on_done(const struct fetch_result *res, void *arg)
{
    struct run *r = arg;
    r->req = NULL;
    r->sent = true;
    r->sum.requests += res->attempts;
    r->last_ok = res->outcome == FETCH_OK;
    if (res->outcome == FETCH_CANCELLED) {
        r->cancelled = true;
        drop_batches(r);
    } else if (!r->last_ok) {
        r->failed_requests++;
        char what[128];
        snprintf(what, sizeof(what), "GET %.100s", r->path);
        set_error(r, what, res->error);
        drop_batches(r);
    } else {
        r->ok_requests++;
    }
    advance(r);
}

/* Sends r->path with fresh batches of the given specs (-1: none). */
static int send_request(struct run *r, int b0, int b1, int b2)
{
    int specs[3] = {b0, b1, b2};
    drop_batches(r);
    for (size_t i = 0; i < 3; i++) {
        if (specs[i] >= 0 && !(r->b[i] = batch_new((enum batch_spec_id)specs[i], 256)))
            return -ENOMEM;
    }
    r->got_ncoins = 0;
    r->sent = false;
    r->last_ok = false;
    r->req = api_get(r->j->api, r->path, TBUCKET_PRIO_LIVE, parse_body, on_done, r);
    return r->req ? 0 : -ENOMEM;
}

/* Enters a step with fresh pagination state. */
static void next_step(struct run *r, enum step st)
{
    r->step = st;
    r->path[0] = '\0';
    r->sent = false;
    r->page = 1;
    r->cat_idx = 0;
    r->collected = 0;
    r->next_id = 0;
    r->walk_failed = false;
    strlist_clear(&r->scratch);
}

/* After a page of a walk: records it and says whether the walk goes on to page+1. A page
 * that failed for good ends the walk (the engine already retried it). */
static bool page_done(struct run *r)
{
    if (!r->last_ok) {
        r->walk_failed = true;
        return false;
    }
    for (size_t i = 0; i < r->got_ids.n; i++)
        strlist_push(&r->scratch, r->got_ids.items[i], strlen(r->got_ids.items[i]));
    r->collected += r->got_ncoins;
    if (r->got_ncoins < r->per_page)
        return false; /* a short page is the last one */
    return !top_walk(r) || r->collected < r->top;
}

/* Narrows the run's ids to those in `set` (sorted); when the run tracks "all", the set
 * becomes its universe. */
static void narrow(struct run *r, const struct strlist *set)
{
    struct strlist keep = {0};
    if (r->ids_all) {
        strlist_append(&keep, set);
    } else {
        for (size_t i = 0; i < r->ids.n; i++)
            if (strlist_contains_sorted(set, r->ids.items[i]))
                strlist_push(&keep, r->ids.items[i], strlen(r->ids.items[i]));
    }
    strlist_clear(&r->ids);
    r->ids = keep;
    r->ids_all = false;
}

/* Stores a walk's ids as a cache entry, unless the universe changed since the run began. */
static void cache_store(struct run *r, struct idcache *c)
{
    if (r->gen != r->j->gen)
        return;
    strlist_clear(&c->ids);
    c->ids = r->scratch;
    memset(&r->scratch, 0, sizeof(r->scratch));
    strlist_sort_uniq(&c->ids);
    c->valid = true;
    c->at_ms = util_wall_ms();
    c->top = r->top;
}

static bool cache_fresh(const struct idcache *c, uint64_t ttl_ms)
{
    return c->valid && util_wall_ms() < c->at_ms + ttl_ms;
}

/* Universe resolution through a cached walk (categories or top N). Returns 1 when the step
 * is done (the run's ids are narrowed and it moved on), 0 when a request was sent, or a
 * negative code. */
static int resolve_step(struct run *r)
{
    struct jobs *j = r->j;
    bool cats = r->step == ST_RESOLVE_CATEGORIES;
    enum step next = cats ? ST_RESOLVE_TOP : r->after_resolve;
    if (cats ? !r->categories.n : !r->top) {
        next_step(r, next);
        return 1;
    }
    struct idcache *cache = cats ? &j->categories : &j->top;
    uint64_t ttl = cats ? r->cache_ttl_categories_ms : r->cache_ttl_top_ms;
    const struct strlist *set = NULL;
    if (cache_fresh(cache, ttl) && (cats || cache->top == r->top)) {
        set = &cache->ids;
    } else if (r->sent) {
        bool more = page_done(r);
        drop_batches(r);
        if (more) {
            r->page++;
        } else if (!r->walk_failed && cats && ++r->cat_idx < r->categories.n) {
            r->page = 1;
        } else if (!r->walk_failed) {
            strlist_sort_uniq(&r->scratch);
            cache_store(r, cache);
            /* cache_store leaves the walk's ids in scratch when a reload changed the
             * universe meanwhile: this run still uses them. */
            set = r->scratch.n ? &r->scratch : &cache->ids;
        } else if (cache->valid && (cats || cache->top == r->top)) {
            log_warn("universe resolution failed; using the previous result",
                     LOG_S("job", config_job_name(r->id)), LOG_S("error", r->sum.error));
            set = &cache->ids;
        } else {
            set_error(r, "universe", "could not be resolved");
            next_step(r, ST_DONE);
            return 1;
        }
    }
    if (set) {
        narrow(r, set);
        strlist_sort_uniq(&r->ids);
        next_step(r, next);
        return 1;
    }
    int rc = markets_page_path(r, r->vs.items[0], cats ? r->categories.items[r->cat_idx] : NULL);
    if (rc)
        return rc;
    return send_request(r, BATCH_MARKET_SNAPSHOTS, BATCH_ASSETS_MARKET,
                        cats ? BATCH_ASSET_CATEGORIES : -1);
}

static int assets_list_step(struct run *r)
{
    struct jobs *j = r->j;
    if (!r->sent) {
        snprintf(r->path, sizeof(r->path), "/coins/list?include_platform=true");
        return send_request(r, BATCH_ASSETS_LIST, -1, -1);
    }
    if (r->last_ok) {
        bool stored = submit(r, r->b[0]);
        r->b[0] = NULL;
        strlist_clear(&j->listed);
        j->listed = r->got_ids;
        memset(&r->got_ids, 0, sizeof(r->got_ids));
        strlist_sort_uniq(&j->listed);
        /* Assets not in this list are delisted; the sink runs the statement only after the
         * list is committed (a statement batch is a barrier). Without the whole list stored,
         * nothing may be marked. */
        struct batch *d = stored ? batch_new(BATCH_ASSETS_DELIST, 1) : NULL;
        if (d && batch_add_row(d) == 0) {
            batch_set_time(d, 0, 0, r->times.run_ms);
            batch_set_time(d, 0, 1, r->times.run_ms);
            submit(r, d);
        } else {
            batch_free(d);
        }
    }
    next_step(r, ST_ASSETS_CATEGORIES);
    return 1;
}

static int category_pages_step(struct run *r)
{
    if (r->cat_idx >= r->categories.n) {
        next_step(r, ST_DONE);
        return 1;
    }
    if (r->sent) {
        if (r->last_ok) {
            submit(r, r->b[2]);
            r->b[2] = NULL;
        }
        bool more = page_done(r);
        drop_batches(r);
        if (more) {
            r->page++;
        } else if (++r->cat_idx < r->categories.n) {
            r->page = 1;
        } else {
            /* The members just walked refresh the cache prices and market_caps use. */
            if (!r->walk_failed)
                cache_store(r, &r->j->categories);
            next_step(r, ST_DONE);
            return 1;
        }
    }
    int rc = markets_page_path(r, r->vs.items[0], r->categories.items[r->cat_idx]);
    if (rc)
        return rc;
    return send_request(r, BATCH_MARKET_SNAPSHOTS, BATCH_ASSETS_MARKET, BATCH_ASSET_CATEGORIES);
}

static int prices_step(struct run *r)
{
    if (r->sent)
        submit_all(r);
    if (r->next_id >= r->ids.n) {
        if (r->ids.n == 0)
            set_error(r, "universe", "no ids to track");
        next_step(r, ST_DONE);
        return 1;
    }
    char prefix[1024];
    size_t n = 0;
    prefix[0] = '\0';
    int rc = append_raw(prefix, sizeof(prefix), &n, "/simple/price?vs_currencies=");
    for (size_t i = 0; !rc && i < r->vs.n; i++) {
        if (i)
            rc = append_raw(prefix, sizeof(prefix), &n, "%2C");
        if (!rc)
            rc = append_enc(prefix, sizeof(prefix), &n, r->vs.items[i]);
    }
    if (!rc)
        rc = append_raw(prefix, sizeof(prefix), &n, "&ids=");
    if (!rc)
        rc = build_ids_path(r, prefix,
                            "&include_market_cap=true&include_24hr_vol=true"
                            "&include_24hr_change=true&include_last_updated_at=true"
                            "&precision=full",
                            SIZE_MAX);
    if (rc)
        return rc;
    return send_request(r, BATCH_PRICES, -1, -1);
}

/* market_caps: `ids = all` without categories walks the pages (with `top`: the first N
 * coins); any other universe is fetched by id, 250 ids a request (a page's maximum). */
static int markets_step(struct run *r)
{
    if (r->sent) {
        bool ok = r->last_ok;
        bool more;
        if (r->ids_all) {
            more = page_done(r);
        } else {
            more = r->next_id < r->ids.n;
            if (!ok)
                r->walk_failed = true;
        }
        submit_all(r);
        if (more) {
            r->page++;
        } else {
            /* The first currency's walk of the top N refreshes the cache prices uses. */
            if (r->ids_all && r->top && r->vs_idx == 0 && !r->walk_failed)
                cache_store(r, &r->j->top);
            strlist_clear(&r->scratch);
            r->vs_idx++;
            r->page = 1;
            r->next_id = 0;
            r->collected = 0;
            r->walk_failed = false;
        }
    }
    if (r->vs_idx >= r->vs.n) {
        next_step(r, ST_GLOBAL);
        return 1;
    }
    /* Rank and image come once, with the first currency. */
    int assets_spec = r->vs_idx == 0 ? BATCH_ASSETS_MARKET : -1;
    int rc;
    if (r->ids_all) {
        rc = markets_page_path(r, r->vs.items[r->vs_idx], NULL);
    } else {
        if (r->ids.n == 0) {
            set_error(r, "universe", "no ids to track");
            next_step(r, ST_GLOBAL);
            return 1;
        }
        char prefix[256];
        size_t n = 0;
        prefix[0] = '\0';
        rc = append_raw(prefix, sizeof(prefix), &n, "/coins/markets?vs_currency=");
        if (!rc)
            rc = append_enc(prefix, sizeof(prefix), &n, r->vs.items[r->vs_idx]);
        if (!rc)
            rc = append_raw(prefix, sizeof(prefix), &n, "&ids=");
        if (!rc)
            rc = build_ids_path(r, prefix,
                                "&order=market_cap_desc&per_page=250&page=1&precision=full", 250);
    }
    if (rc)
        return rc;
    return send_request(r, BATCH_MARKET_SNAPSHOTS, assets_spec, -1);
}

/* Moves the run to its next request, or finishes it. Called at the start and after each
 * request; each step function returns 0 (a request is under way), 1 (go on to the next
 * step now) or a negative code (the run cannot go on). */
static void advance(struct run *r)
{
    struct jobs *j = r->j;
    for (;;) {
        if (r->cancelled)
            r->step = ST_DONE;
        int rc = 1;
        switch (r->step) {
        case ST_RESOLVE_LIST:
            if (!r->sent) {
                snprintf(r->path, sizeof(r->path), "/coins/list");
                rc = send_request(r, BATCH_ASSETS_LIST, -1, -1);
                break;
            }
            if (r->last_ok) {
                strlist_clear(&j->listed);
                j->listed = r->got_ids;
                memset(&r->got_ids, 0, sizeof(r->got_ids));
                strlist_sort_uniq(&j->listed);
            }
            drop_batches(r);
            if (!j->listed.n) {
                set_error(r, "universe", "the coin list could not be fetched");
                next_step(r, ST_DONE);
                break;
            }
            strlist_append(&r->ids, &j->listed);
            r->ids_all = false;
            next_step(r, ST_RESOLVE_CATEGORIES);
            break;
        case ST_RESOLVE_CATEGORIES:
        case ST_RESOLVE_TOP:
            rc = resolve_step(r);
            break;
        case ST_ASSETS_LIST:
            rc = assets_list_step(r);
            break;
        case ST_ASSETS_CATEGORIES:
            if (!r->sent) {
                snprintf(r->path, sizeof(r->path), "/coins/categories/list");
                rc = send_request(r, BATCH_CATEGORIES, -1, -1);
                break;
            }
            submit_all(r);
            next_step(r, ST_ASSETS_CATEGORY_PAGES);
            break;
        case ST_ASSETS_CATEGORY_PAGES:
            rc = category_pages_step(r);
            break;
        case ST_PRICES:
            rc = prices_step(r);
            break;
        case ST_MARKETS:
            rc = markets_step(r);
            break;
        case ST_GLOBAL:
            if (!r->sent) {
                snprintf(r->path, sizeof(r->path), "/global");
                rc = send_request(r, BATCH_GLOBAL_SNAPSHOTS, -1, -1);
                break;
            }
            submit_all(r);
            next_step(r, ST_DONE);
            break;
        case ST_DONE:
        default:
            finish(r);
            return;
        }
        if (rc == 0)
            return;
        if (rc < 0) {
            set_error(r, "request", rc == -ENOSPC ? "URL too long" : "out of memory");
            r->failed_requests++;
            drop_batches(r);
            next_step(r, ST_DONE);
        }
    }
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
    r->gen = j->gen;
    r->sum.job = id;
    r->sum.started_wall_ms = util_wall_ms();
    r->times.run_ms = (int64_t)r->sum.started_wall_ms;
    r->times.fetched_ms = r->times.run_ms;
    r->all = cfg->universe.all;
    r->top = cfg->universe.top;
    r->per_page = cfg->coingecko.per_page ? cfg->coingecko.per_page : 250;
    size_t base = cfg->coingecko.base_url ? strlen(cfg->coingecko.base_url) : 0;
    size_t max_url = cfg->coingecko.max_url_bytes ? cfg->coingecko.max_url_bytes : 8000;
    r->url_budget = max_url > base ? max_url - base : 0;
    /* A resolved set is reused until the job that refreshes it anyway would have run. */
    r->cache_ttl_top_ms = cfg->jobs[JOB_MARKET_CAPS].every_ms;
    r->cache_ttl_categories_ms = cfg->jobs[JOB_ASSETS].every_ms;
    if (strlist_append(&r->vs, &cfg->universe.vs_currencies) ||
        strlist_append(&r->categories, &cfg->universe.categories) ||
        (r->vs.n == 0 && strlist_push(&r->vs, "usd", 3))) {
        run_free(r);
        return -ENOMEM;
    }
    next_step(r, ST_DONE);

    switch (id) {
    case JOB_ASSETS:
        next_step(r, ST_ASSETS_LIST);
        break;
    case JOB_PRICES:
    case JOB_MARKET_CAPS:
        r->after_resolve = id == JOB_PRICES ? ST_PRICES : ST_MARKETS;
        if (!r->all) {
            if (strlist_append(&r->ids, &cfg->universe.ids)) {
                run_free(r);
                return -ENOMEM;
            }
            strlist_sort_uniq(&r->ids);
            next_step(r, ST_RESOLVE_CATEGORIES);
        } else if (r->categories.n || (r->top && id == JOB_PRICES)) {
            r->ids_all = true;
            next_step(r, ST_RESOLVE_CATEGORIES);
        } else if (id == JOB_MARKET_CAPS) {
            /* Every coin (or the top N) by walking the pages: nothing to resolve. */
            r->ids_all = true;
            next_step(r, ST_MARKETS);
        } else if (j->listed.n) {
            if (strlist_append(&r->ids, &j->listed)) {
                run_free(r);
                return -ENOMEM;
            }
            next_step(r, ST_PRICES);
        } else {
            next_step(r, ST_RESOLVE_LIST);
        }
        break;
    default:
        break;
    }
    j->runs[id] = r;
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
