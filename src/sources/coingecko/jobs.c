/*
 * coingecko jobs: assets, prices and market_caps as small state machines on the loop, run by
 * the generic runner (runner.h), which owns their lifecycle, job_runs rows and metrics.
 *
 * A run is a sequence of requests, one at a time, except the market_caps walk over every coin,
 * which keeps several pages in flight (the pipelined walk below). Each request gets fresh
 * batches; the fetch
 * engine calls parse() on a 2xx body (a parse error makes the engine retry the request), and
 * on success done() hands the batches to the sink and plans the next request. A request that
 * fails for good is recorded (the first error becomes the run's error) and the run goes on
 * where that makes sense (another page set, another currency) or ends.
 *
 *   assets:      /coins/list?include_platform=true -> assets, then the delisting statement
 *                (a sink barrier: it runs after the list is committed), /coins/categories/list
 *                -> categories, then per configured category the paged /coins/markets?category=
 *                -> asset_categories.
 *   prices:      the universe's ids split over /simple/price requests of at most
 *                max_ids_per_request ids whose URL stays under max_url_bytes -> prices. A
 *                request answered 414 (URI Too Long) is asked for again in two halves, down
 *                to single ids, so no id is dropped for it.
 *   market_caps: per vs_currency, /coins/markets pages (order=id_asc for the whole universe,
 *                market_cap_desc for the top N; per_page, precision=full) until a short page
 *                or `top` -> market_snapshots and assets' rank/image; then /global ->
 *                global_snapshots.
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
 *
 * Answers that parse but cannot be right are source errors (run_source_error; docs/jobs.md,
 * "Bad answers"): a walk stops at a page that brings no new coin and after a bounded number
 * of pages; a coin list without ids, or one that would delist more than max_delist_percent
 * of what was listed (the previous list, and the database's count), delists nothing and does
 * not replace the universe; quote requests that all come back empty are no success. One id
 * that no URL can hold is dropped and counted, never the run.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/coingecko/coingecko.h"

/* Coins a walk may expect before any /coins/list was seen (CoinGecko lists ~17,500). */
#define WALK_DEFAULT_COINS 100000u

/* --- state -------------------------------------------------------------------------------- */

enum step {
    /* universe resolution, shared by prices and market_caps */
    ST_RESOLVE_LIST,
    ST_IDS_LIST, /* explicit ids and no coin list yet: fetch one to check them against */
    ST_RESOLVE_CATEGORIES,
    ST_RESOLVE_TOP,
    ST_VS_LIST, /* /simple/supported_vs_currencies, after a coin list (r->after_vs next) */
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

/* Which of the three jobs a run is. */
enum cg_job { CG_ASSETS, CG_PRICES, CG_MARKET_CAPS };

/* State the jobs share across runs (the source's state, runner.h). */
struct cg_state {
    struct strlist listed; /* ids of the last /coins/list, sorted */
    struct strlist names;  /* "symbol\x1fid" and "name\x1fid" of that list, lower-cased, sorted:
                              suggestions for configured ids the list does not hold */
    struct strlist vs_supported; /* the last /simple/supported_vs_currencies, sorted */
    struct idcache categories;
    struct idcache top;
    uint64_t gen; /* bumped when the universe's categories or top change on reload */
};

struct cg_run;

/* One page of a pipelined walk (below): asked for, then parsed into its own batches; its
 * rows reach the run in page order. */
struct page_slot {
    struct cg_run *r;
    uint32_t page;
    bool used;     /* sent, and not yet taken by the walk */
    bool reported; /* its done callback ran */
    bool ok;
    size_t ncoins;
    struct batch *b[2]; /* market_snapshots, assets (first currency only) */
    struct strlist ids;
};

/* One run's state (the job's run state, runner.h). */
struct cg_run {
    struct run *run;
    struct cg_state *j;
    enum cg_job id;
    struct coingecko_times times;
    uint64_t gen; /* the universe generation when the run started */

    /* A snapshot of what the run needs from the config, so a reload mid-run is harmless. */
    struct strlist vs;
    struct strlist categories;
    bool all;
    bool ids_all; /* the universe is still "every coin" (no list loaded) */
    uint32_t top;
    uint32_t per_page;
    size_t url_budget; /* bytes a path may take: max_url_bytes less the base URL */
    uint64_t cache_ttl_top_ms, cache_ttl_categories_ms;
    uint32_t max_delist_percent;

    /* assets: the database's count of listed assets, read before a new list may delist */
    bool count_asked;
    uint64_t db_listed; /* 0: unknown (no database to read, or the read failed) */

    /* prices and market_caps: requests for quotes that succeeded, and the rows they gave */
    uint64_t answered, quotes;

    enum step step;
    enum step after_resolve;
    enum step after_vs;
    struct fetch_req *req;
    bool cancelled;

    /* A pipelined walk (market_caps over every coin, max_in_flight > 1): up to nslots pages
     * in flight, slot = page % nslots; `page` is the next one the walk takes, `next_send` the
     * next one to ask for, `walk_over` set once the walk has ended (later pages are dropped
     * as they report). */
    struct page_slot *slots;
    uint32_t nslots, nflight, next_send;
    bool walk_over;

    /* pagination */
    size_t vs_idx, cat_idx;
    uint32_t page;
    uint64_t collected;       /* coins kept so far in this walk */
    bool walk_failed;         /* a page of this walk failed for good, or the walk was cut short */
    struct strlist walk_seen; /* ids this walk (one currency or category) brought, sorted */

    /* the ids the run tracks (sorted, unique) and a cursor over them */
    struct strlist ids;
    size_t next_id;
    /* simple/price: ranges of ids (below next_id) to ask for again, in halves of a request
     * the API refused as too long (414); served last in, first out, before next_id moves on.
     * Each split halves a range, so the stack never holds more than log2(ids) + 1 of them. */
    struct id_range {
        size_t first, n;
    } split[64];
    size_t nsplit;
    uint32_t max_ids;       /* ids one /simple/price request may carry (max_ids_per_request) */
    struct strlist scratch; /* ids gathered while walking pages */

    /* the current request and what it fills */
    char path[16384];
    bool sent;        /* path holds a request that was answered */
    bool last_ok;     /* ... and it succeeded */
    long last_status; /* ... with this HTTP status (0: none) */
    struct batch *b[3];
    struct strlist got_ids;
    struct strlist got_names;   /* a coin list's names index (cg_state.names), as parsed */
    size_t got_ncoins;          /* coins in the page as served (before a top-N trim) */
    const char *const *req_ids; /* simple/price: the ids of this request */
    size_t req_nids;
    size_t req_first; /* ... and the index of the first in ids */
};

static void idcache_clear(struct idcache *c)
{
    strlist_clear(&c->ids);
    c->valid = false;
}

void *coingecko_state_new(void)
{
    /* Shown at 0 from the start, so a scraper sees the first increase. */
    metrics_add("coingest_unknown_ids_total", "api=\"" COINGECKO_SOURCE "\",job=\"prices\"", 0);
    metrics_add("coingest_unknown_ids_total", "api=\"" COINGECKO_SOURCE "\",job=\"market_caps\"",
                0);
    return calloc(1, sizeof(struct cg_state));
}

void coingecko_state_free(void *state)
{
    struct cg_state *j = state;
    strlist_clear(&j->listed);
    strlist_clear(&j->names);
    strlist_clear(&j->vs_supported);
    idcache_clear(&j->categories);
    idcache_clear(&j->top);
    free(j);
}

void coingecko_reconfigure(void *state, const struct config *old, const struct config *cfg)
{
    struct cg_state *j = state;
    /* Resolved sets depend on these keys only; a run that started before the change must
     * not store its result (the generation tells). */
    if (!strlist_equal(&old->universe.categories, &cfg->universe.categories) ||
        old->universe.top != cfg->universe.top) {
        idcache_clear(&j->categories);
        idcache_clear(&j->top);
        j->gen++;
    }
}

static void drop_batches(struct cg_run *r)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++) {
        batch_free(r->b[i]);
        r->b[i] = NULL;
    }
    strlist_clear(&r->got_ids);
    strlist_clear(&r->got_names);
}

static void slot_clear(struct page_slot *s)
{
    for (size_t i = 0; i < ARRAY_SIZE(s->b); i++) {
        batch_free(s->b[i]);
        s->b[i] = NULL;
    }
    strlist_clear(&s->ids);
    s->used = s->reported = s->ok = false;
    s->ncoins = 0;
}

static void cg_cleanup(struct run *run)
{
    struct cg_run *r = run_state(run);
    for (uint32_t i = 0; r->slots && i < r->nslots; i++)
        slot_clear(&r->slots[i]);
    free(r->slots);
    r->slots = NULL;
    drop_batches(r);
    strlist_clear(&r->vs);
    strlist_clear(&r->categories);
    strlist_clear(&r->ids);
    strlist_clear(&r->scratch);
    strlist_clear(&r->walk_seen);
}

static void set_error(struct cg_run *r, const char *what, const char *why)
{
    run_fail(r->run, what, why);
}

/* Hands a batch to the runner (which takes it). Returns false when the rows could not be
 * kept. */
static bool submit(struct cg_run *r, struct batch *b)
{
    return run_emit(r->run, b) == 0;
}

/* Hands every batch the step filled to the runner at once (one spool sync for all). */
static bool submit_all(struct cg_run *r)
{
    int rc = run_emit_many(r->run, r->b, ARRAY_SIZE(r->b));
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++)
        r->b[i] = NULL;
    return rc == 0;
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

/* Drops r->ids.items[i], an id that alone makes a request too long: it cannot be asked for
 * at all. One id must not stop the others, so it is counted and logged (once: it leaves the
 * run's ids, so later requests and currencies never meet it again) and the run goes on. */
static void drop_id(struct cg_run *r, size_t i)
{
    char *id = r->ids.items[i];
    size_t len = strlen(id);
    char head[65];
    util_copy_clean(head, sizeof(head), id, len < 64 ? len : 64);
    log_warn("coin id too long for a request; skipped", LOG_S("job", run_name(r->run)),
             LOG_S("id_start", head), LOG_U("bytes", len));
    run_count_kind(r->run, "ids_too_long", 1);
    free(id);
    memmove(&r->ids.items[i], &r->ids.items[i + 1], (r->ids.n - i - 1) * sizeof(*r->ids.items));
    r->ids.n--;
}

/* Builds prefix + ids + suffix from r->ids starting at r->next_id, with as many ids (at most
 * max_ids) as keep the path within the URL budget; an id that does not fit even alone is
 * dropped (drop_id). Sets req_ids/req_nids and advances next_id. Returns 0, -ENOENT when no
 * id is left to ask for, or -ENOSPC when prefix and suffix alone do not fit. */
static int build_ids_path(struct cg_run *r, const char *prefix, const char *suffix, size_t max_ids)
{
    size_t n = 0;
    r->path[0] = '\0';
    if (append_raw(r->path, sizeof(r->path), &n, prefix))
        return -ENOSPC;
    size_t limit = r->url_budget < sizeof(r->path) - 1 ? r->url_budget : sizeof(r->path) - 1;
    size_t fixed = n + strlen(suffix);
    if (fixed >= limit)
        return -ENOSPC;
    size_t budget = limit - fixed, first = r->next_id, used = 0;
    while (r->next_id < r->ids.n && r->next_id - first < max_ids) {
        const char *id = r->ids.items[r->next_id];
        size_t len = enc_len(id);
        if (len > budget) {
            drop_id(r, r->next_id);
            continue;
        }
        size_t add = len + (r->next_id > first ? 3 : 0); /* "%2C" separator */
        if (used + add > budget)
            break;
        if ((r->next_id > first && append_raw(r->path, sizeof(r->path), &n, "%2C")) ||
            append_enc(r->path, sizeof(r->path), &n, id))
            return -ENOSPC; /* cannot happen: the budget is within the buffer */
        used += add;
        r->next_id++;
    }
    if (r->next_id == first)
        return -ENOENT;
    if (append_raw(r->path, sizeof(r->path), &n, suffix))
        return -ENOSPC;
    r->req_ids = (const char *const *)&r->ids.items[first];
    r->req_nids = r->next_id - first;
    r->req_first = first;
    return 0;
}

static bool top_walk(const struct cg_run *r);

/* /coins/markets?vs_currency=V[&category=C]&order=O&per_page=P&page=N&precision=full: one
 * page of a walk. A walk of the top N pages by market_cap_desc: the order is the point. Every
 * other walk (every coin, a category's members) sweeps a set, and pages by id_asc: ranks move
 * while a walk of many pages goes on (minutes on a slow plan), so coins would cross page
 * boundaries and be skipped or fetched twice; ids do not move (a coin listed or delisted
 * during the walk shifts the pages after it by one). */
static int markets_page_path(struct cg_run *r, const char *vs, const char *category)
{
    size_t n = 0;
    char tail[128];
    snprintf(tail, sizeof(tail), "&order=%s&per_page=%u&page=%u&precision=full",
             top_walk(r) ? "market_cap_desc" : "id_asc", r->per_page, r->page);
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
static void trim_page(struct cg_run *r, uint64_t keep)
{
    for (size_t i = 0; i < ARRAY_SIZE(r->b); i++)
        while (r->b[i] && r->b[i]->nrows > keep)
            batch_drop_last(r->b[i]);
    while (r->got_ids.n > keep)
        free(r->got_ids.items[--r->got_ids.n]);
}

/* Is this a walk limited to the top N (so the last page is trimmed)? */
static bool top_walk(const struct cg_run *r)
{
    return r->top && (r->step == ST_RESOLVE_TOP || (r->step == ST_MARKETS && r->ids_all));
}

/* Appends "key\x1fid" to l, key lower-cased (ASCII). */
static void push_name(struct strlist *l, const struct val *key, const struct val *id)
{
    if (key->type != VAL_STR || id->type != VAL_STR || key->len == 0 || key->len > 200 ||
        id->len > 200)
        return;
    char buf[402];
    size_t n = 0;
    for (uint32_t i = 0; i < key->len; i++) {
        unsigned char c = (unsigned char)key->u.s[i];
        buf[n++] = (char)(c >= 'A' && c <= 'Z' ? c + 32 : c);
    }
    buf[n++] = '\x1f';
    memcpy(buf + n, id->u.s, id->len);
    strlist_push(l, buf, n + id->len); /* out of memory: one suggestion fewer */
}

/* The names index of a coin list just parsed into r->b[0]: each coin's symbol and name. */
static void index_names(struct cg_run *r)
{
    strlist_clear(&r->got_names);
    const struct batch *b = r->b[0];
    for (uint32_t row = 0; b && row < b->nrows; row++) {
        const struct val *id = batch_val(b, row, BATCH_ASSETS_LIST_COL_ID);
        push_name(&r->got_names, batch_val(b, row, BATCH_ASSETS_LIST_COL_SYMBOL), id);
        push_name(&r->got_names, batch_val(b, row, BATCH_ASSETS_LIST_COL_NAME), id);
    }
}

static int parse_body(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct cg_run *r = run_state(arg);
    struct coingecko_stats st = {0};
    r->times.fetched_ms = (int64_t)util_wall_ms();
    int rc = -EINVAL;
    switch (r->step) {
    case ST_RESOLVE_LIST:
    case ST_IDS_LIST:
    case ST_ASSETS_LIST:
        rc = coingecko_parse_coins_list(body, len, &r->times, r->b[0], &r->got_ids, &st, err,
                                        errlen);
        if (rc == 0)
            index_names(r);
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
    case ST_VS_LIST:
        rc = coingecko_parse_supported_vs(body, len, &r->got_ids, err, errlen);
        break;
    default:
        break;
    }
    if (rc == 0) {
        /* Each kind on its own (docs/jobs.md, "What counted means"). */
        run_count_kind(r->run, "wrong_type_fields", st.field_type_errors);
        run_count_kind(r->run, "missing_coins", st.missing_coins);
        run_count_kind(r->run, "missing_currencies", st.missing_currencies);
        run_count_kind(r->run, "missing_times", st.missing_last_updated);
        run_count_kind(r->run, "skipped_elements", st.skipped);
        run_count_kind(r->run, "overflow_numbers", st.overflow_numbers);
        if (st.field_type_errors)
            metrics_add("coingest_field_errors_total", "", (double)st.field_type_errors);
    }
    return rc; /* the runner counts and logs a rejected body */
}

/* --- the state machine -------------------------------------------------------------------- */

static void advance(struct cg_run *r);

static void on_done(const struct fetch_result *res, void *arg)
{
    struct cg_run *r = run_state(arg);
    r->sent = true;
    r->last_ok = res->outcome == FETCH_OK;
    r->last_status = res->status;
    /* The runner has counted the request and recorded a failure as the run's error. */
    if (!r->last_ok)
        drop_batches(r);
    advance(r);
}

/* How large each endpoint's answer can be. The real coin list with platforms is 2.3 MB
 * (2024), a 250-row markets page 250 KB, a /simple/price answer for ~600 ids in a dozen
 * currencies under 1 MB, /global 4 KB, the category list 6 KB; each limit leaves room to grow.
 * A larger body is refused unparsed, and jrows bounds what a body may take to parse. */
#define MIB (1024u * 1024u)
static size_t body_limit(const struct cg_run *r)
{
    switch (r->step) {
    case ST_RESOLVE_LIST:
    case ST_IDS_LIST:
    case ST_ASSETS_LIST:
        return 8 * MIB;
    case ST_PRICES:
        return 8 * MIB;
    case ST_GLOBAL:
    case ST_ASSETS_CATEGORIES:
    case ST_VS_LIST:
        return 1 * MIB;
    default: /* /coins/markets pages */
        return 4 * MIB;
    }
}

/* Sends r->path with fresh batches of the given specs (-1: none). */
static int send_request(struct cg_run *r, int b0, int b1, int b2)
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
    return run_get_limited(r->run, r->path, body_limit(r), parse_body, on_done);
}

/* Enters a step with fresh pagination state. */
static void next_step(struct cg_run *r, enum step st)
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
    strlist_clear(&r->walk_seen);
}

/* Starts the next walk of a step (another currency or category) at page 1. */
static void next_walk(struct cg_run *r)
{
    r->page = 1;
    r->collected = 0;
    strlist_clear(&r->walk_seen);
}

/* The most pages a walk may take: every coin the last /coins/list named (or a generous
 * guess before there is one), per_page at a time, plus a margin for coins listed since and
 * for pages that shift while the walk goes on. */
static uint32_t walk_max_pages(const struct cg_run *r)
{
    uint64_t coins = r->j->listed.n ? r->j->listed.n : WALK_DEFAULT_COINS;
    uint64_t pages = (coins + r->per_page - 1) / r->per_page;
    pages += pages / 10 + 2;
    return pages > UINT32_MAX ? UINT32_MAX : (uint32_t)pages;
}

/* What the current walk is, for an error message: the path of its page 1. */
static void walk_name(const struct cg_run *r, char *buf, size_t cap)
{
    const char *q = strstr(r->path, "&order=");
    int n = q ? (int)(q - r->path) : (int)strlen(r->path);
    snprintf(buf, cap, "walk %.*s", n > 200 ? 200 : n, r->path);
}

/* After a page of a walk: records it and says whether the walk goes on to page+1. A page
 * that failed for good ends the walk (the engine already retried it). So does a page that
 * brings no coin this walk has not seen (an API, or a cache in front of it, that ignores
 * `page` would answer page 1 forever) and a walk past walk_max_pages(): both are source
 * errors, the walk counts as failed (no cache entry comes of it), and a repeated page's rows
 * are dropped. */
static bool page_done(struct cg_run *r)
{
    if (!r->last_ok) {
        r->walk_failed = true;
        return false;
    }
    char what[256], why[256];
    /* A merge, not a sort of everything seen so far: a walk of 70 pages sorted 17,500 ids 70
     * times. Out of memory, the page counts as new (the walk stays bounded by its length). */
    size_t added = 0;
    if (strlist_merge_sorted(&r->walk_seen, &r->got_ids, &added) != 0)
        added = 1;
    if (r->got_ncoins > 0 && added == 0) {
        walk_name(r, what, sizeof(what));
        snprintf(why, sizeof(why),
                 "page %u brought no coin the walk had not seen (the API or a cache in front "
                 "of it ignores `page`); stopped",
                 r->page);
        run_source_error(r->run, "walk_stalled", what, why);
        r->walk_failed = true;
        drop_batches(r);
        return false;
    }
    for (size_t i = 0; i < r->got_ids.n; i++)
        strlist_push(&r->scratch, r->got_ids.items[i], strlen(r->got_ids.items[i]));
    r->collected += r->got_ncoins;
    if (r->got_ncoins < r->per_page)
        return false; /* a short page is the last one */
    if (top_walk(r) && r->collected >= r->top)
        return false;
    uint32_t max = walk_max_pages(r);
    if (r->page >= max) {
        walk_name(r, what, sizeof(what));
        snprintf(why, sizeof(why),
                 "still full pages after %u pages (%zu coins listed, %u a page, plus a "
                 "margin); stopped",
                 max, r->j->listed.n, r->per_page);
        run_source_error(r->run, "walk_too_long", what, why);
        r->walk_failed = true;
        return false;
    }
    return true;
}

/* Narrows the run's ids to those in `set` (sorted); when the run tracks "all", the set
 * becomes its universe. */
static void narrow(struct cg_run *r, const struct strlist *set)
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
static void cache_store(struct cg_run *r, struct idcache *c)
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
static int resolve_step(struct cg_run *r)
{
    struct cg_state *j = r->j;
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
            next_walk(r);
        } else if (!r->walk_failed) {
            strlist_sort_uniq(&r->scratch);
            cache_store(r, cache);
            /* cache_store leaves the walk's ids in scratch when a reload changed the
             * universe meanwhile: this run still uses them. */
            set = r->scratch.n ? &r->scratch : &cache->ids;
        } else if (cache->valid && (cats || cache->top == r->top)) {
            log_warn("universe resolution failed; using the previous result",
                     LOG_S("job", run_name(r->run)));
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

/* Is a coin list just fetched (`got`, sorted and unique) a believable successor of what was
 * listed before: the last list this process accepted and, when known, the database's count of
 * listed assets? A list with no usable id, or one that would delist more than
 * max_delist_percent of either, is a bad answer (an empty or gutted body from the API or a
 * cache): recorded as a source error, and the caller neither delists nor keeps it. */
static bool list_believable(struct cg_run *r, const struct strlist *got)
{
    const struct strlist *prev = &r->j->listed;
    uint64_t gone = 0;
    for (size_t i = 0; i < prev->n; i++)
        gone += !strlist_contains_sorted(got, prev->items[i]);
    uint64_t db_gone = r->db_listed > got->n ? r->db_listed - got->n : 0;
    uint64_t pct = r->max_delist_percent;
    char why[256];
    if (got->n == 0) {
        snprintf(why, sizeof(why), "the list has no usable coin id");
    } else if (gone * 100 > prev->n * pct) {
        snprintf(why, sizeof(why),
                 "%llu of the %zu coins of the previous list are missing (more than "
                 "max_delist_percent = %llu%%)",
                 (unsigned long long)gone, prev->n, (unsigned long long)pct);
    } else if (db_gone * 100 > r->db_listed * pct) {
        snprintf(why, sizeof(why),
                 "%zu coins listed against %llu listed in the database (more than "
                 "max_delist_percent = %llu%% would be delisted)",
                 got->n, (unsigned long long)r->db_listed, (unsigned long long)pct);
    } else {
        return true;
    }
    char what[96];
    snprintf(what, sizeof(what), "GET %.80s", r->path);
    char msg[400];
    snprintf(msg, sizeof(msg), "%s; refused: nothing delisted, the previous list kept", why);
    run_source_error(r->run, "list_gutted", what, msg);
    return false;
}

/* Replaces the universe's coin list with the run's (got_ids, sorted) and empties got_ids;
 * the names index goes with it. */
static void keep_list(struct cg_run *r)
{
    strlist_clear(&r->j->listed);
    r->j->listed = r->got_ids;
    memset(&r->got_ids, 0, sizeof(r->got_ids));
    strlist_clear(&r->j->names);
    r->j->names = r->got_names;
    memset(&r->got_names, 0, sizeof(r->got_names));
    strlist_sort_uniq(&r->j->names);
}

/* Is `s` one of the items of the comma-separated list `csv`? */
static bool listed_in(const char *csv, const char *s)
{
    size_t len = strlen(s);
    for (const char *p = csv; *p;) {
        size_t n = strcspn(p, ",");
        if (n == len && strncmp(p, s, n) == 0)
            return true;
        p += n + (p[n] == ',');
    }
    return false;
}

/* Up to three listed ids that `id` may have meant, comma-separated into buf: the id itself
 * lower-cased, then coins whose symbol or name is `id` (any case): "ETH" -> ethereum. */
static void suggest(const struct cg_state *j, const char *id, char *buf, size_t cap)
{
    char key[202];
    size_t n = 0, len = strlen(id);
    buf[0] = '\0';
    if (len > 200)
        return;
    for (; n < len; n++)
        key[n] = (char)(id[n] >= 'A' && id[n] <= 'Z' ? id[n] + 32 : id[n]);
    key[n] = '\0';
    size_t out = 0, found = 0;
    if (strcmp(key, id) != 0 && strlist_contains_sorted(&j->listed, key)) {
        out += (size_t)snprintf(buf, cap, "%s", key);
        found++;
    }
    key[n++] = '\x1f';
    key[n] = '\0';
    /* The first entry not below "key\x1f": the matches follow it. */
    size_t lo = 0, hi = j->names.n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (strcmp(j->names.items[mid], key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    for (size_t i = lo; i < j->names.n && found < 3 && out < cap; i++) {
        const char *e = j->names.items[i];
        if (strncmp(e, key, n) != 0)
            break;
        const char *match = e + n;
        if (listed_in(buf, match))
            continue;
        out += (size_t)snprintf(buf + out, cap - out, "%s%s", found ? "," : "", match);
        found++;
    }
}

/* Configured ids the last coin list does not hold get no rows: each is reported once per run
 * (a warning, with suggestions) and counted in coingest_unknown_ids_total. They are still
 * asked for: the list may be older than a coin just listed. */
static void report_unknown_ids(struct cg_run *r)
{
    const struct cg_state *j = r->j;
    if (!j->listed.n)
        return;
    uint64_t unknown = 0;
    for (size_t i = 0; i < r->ids.n; i++) {
        const char *id = r->ids.items[i];
        if (strlist_contains_sorted(&j->listed, id))
            continue;
        unknown++;
        char head[65], hint[256];
        size_t len = strlen(id);
        util_copy_clean(head, sizeof(head), id, len < 64 ? len : 64);
        suggest(j, id, hint, sizeof(hint));
        if (hint[0])
            log_warn("configured id is not a CoinGecko coin id; it gets no rows",
                     LOG_S("job", run_name(r->run)), LOG_S("id", head),
                     LOG_S("did_you_mean", hint));
        else
            log_warn("configured id is not a CoinGecko coin id; it gets no rows",
                     LOG_S("job", run_name(r->run)), LOG_S("id", head));
    }
    if (unknown) {
        char labels[128];
        snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\"", COINGECKO_SOURCE,
                 run_name(r->run));
        metrics_add("coingest_unknown_ids_total", labels, (double)unknown);
    }
}

/* Configured vs_currencies that CoinGecko does not support (the last
 * /simple/supported_vs_currencies) would get no rows, and a /coins/markets walk in one is
 * refused: each is reported at warn level, counted, and left out of the run's requests. */
static void check_vs(struct cg_run *r)
{
    const struct strlist *ok = &r->j->vs_supported;
    if (!ok->n)
        return;
    for (size_t i = 0; i < r->vs.n;) {
        if (strlist_contains_sorted(ok, r->vs.items[i])) {
            i++;
            continue;
        }
        char head[33];
        size_t len = strlen(r->vs.items[i]);
        util_copy_clean(head, sizeof(head), r->vs.items[i], len < 32 ? len : 32);
        log_warn("configured vs_currency is not one CoinGecko supports; left out",
                 LOG_S("job", run_name(r->run)), LOG_S("vs_currency", head),
                 LOG_S("see", "/simple/supported_vs_currencies"));
        run_count_kind(r->run, "unsupported_vs_currencies", 1);
        free(r->vs.items[i]);
        memmove(&r->vs.items[i], &r->vs.items[i + 1], (r->vs.n - i - 1) * sizeof(*r->vs.items));
        r->vs.n--;
    }
    if (!r->vs.n)
        set_error(r, "vs_currencies", "none of the configured currencies is supported");
}

/* /simple/supported_vs_currencies, fetched with each coin list: a good answer replaces the
 * known codes; the configured currencies are checked against what is known. */
static int vs_list_step(struct cg_run *r)
{
    if (!r->sent) {
        snprintf(r->path, sizeof(r->path), "/simple/supported_vs_currencies");
        return send_request(r, -1, -1, -1);
    }
    if (r->last_ok && r->got_ids.n) {
        strlist_clear(&r->j->vs_supported);
        r->j->vs_supported = r->got_ids;
        memset(&r->got_ids, 0, sizeof(r->got_ids));
    }
    drop_batches(r);
    check_vs(r);
    /* The assets job needs a currency only to walk categories: usd, after the error. */
    if (!r->vs.n && r->id == CG_ASSETS && strlist_push(&r->vs, "usd", 3))
        return -ENOMEM;
    next_step(r, r->vs.n ? r->after_vs : ST_DONE);
    return 1;
}

static void on_listed_count(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct cg_run *r = run_state(arg);
    if (rc == 0 && rows->nrows == 1 && rows->ncols == 1 && rows->cells[0])
        r->db_listed = strtoull(rows->cells[0], NULL, 10);
    else
        log_warn("listed assets could not be counted; the coin list is checked against the "
                 "previous list only",
                 LOG_S("job", run_name(r->run)),
                 LOG_S("error", rc ? (err ? err : strerror(-rc)) : "unexpected result"));
    advance(r);
}

static int assets_list_step(struct cg_run *r)
{
    if (!r->sent) {
        snprintf(r->path, sizeof(r->path), "/coins/list?include_platform=true");
        return send_request(r, BATCH_ASSETS_LIST, -1, -1);
    }
    if (r->last_ok && !r->count_asked) {
        /* What delisting would touch: the listed assets in the database. A restart forgets
         * the previous list; the database does not. */
        r->count_asked = true;
        int rc = run_read(r->run,
                          "SELECT COUNT(*) FROM assets WHERE delisted_at IS NULL AND "
                          "listed_at IS NOT NULL",
                          NULL, 0, 1, on_listed_count, r->run);
        if (rc == 0)
            return 0; /* on_listed_count goes on */
        if (rc != -ENOTSUP)
            log_warn("listed assets could not be counted; the coin list is checked against "
                     "the previous list only",
                     LOG_S("job", run_name(r->run)), LOG_S("error", strerror(-rc)));
    }
    if (r->last_ok) {
        bool stored = submit(r, r->b[0]);
        r->b[0] = NULL;
        strlist_sort_uniq(&r->got_ids);
        if (list_believable(r, &r->got_ids)) {
            keep_list(r);
            /* Assets not in this list are delisted; the sink runs the statement only after
             * the list is committed (a statement batch is a barrier). Without the whole list
             * stored, nothing may be marked. */
            struct batch *d = stored ? batch_new(BATCH_ASSETS_DELIST, 1) : NULL;
            if (d && batch_add_row(d) == 0) {
                batch_set_time(d, 0, BATCH_ASSETS_DELIST_COL_DELISTED_AT, r->times.run_ms);
                batch_set_time(d, 0, BATCH_ASSETS_DELIST_COL_LISTED_BEFORE, r->times.run_ms);
                submit(r, d);
            } else {
                batch_free(d);
            }
        }
    }
    r->after_vs = ST_ASSETS_CATEGORIES;
    next_step(r, ST_VS_LIST);
    return 1;
}

static int category_pages_step(struct cg_run *r)
{
    if (r->cat_idx >= r->categories.n) {
        next_step(r, ST_DONE);
        return 1;
    }
    if (r->sent) {
        bool more = page_done(r);
        if (r->last_ok) {
            submit(r, r->b[2]);
            r->b[2] = NULL;
        }
        drop_batches(r);
        if (more) {
            r->page++;
        } else if (++r->cat_idx < r->categories.n) {
            next_walk(r);
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

/* Records the quotes a prices or markets request gave, before its batches go. */
static void count_quotes(struct cg_run *r)
{
    if (r->sent && r->last_ok) {
        r->answered++;
        r->quotes += r->b[0] ? r->b[0]->nrows : 0;
    }
}

/* Every answer came back empty although ids were asked for: the API (or a cache) answered
 * nothing, which must not pass for a successful run. */
static void check_quotes(struct cg_run *r, const char *what)
{
    if (r->answered == 0 || r->quotes > 0)
        return;
    char why[160];
    int n = snprintf(why, sizeof(why), "%llu successful answers, not one row",
                     (unsigned long long)r->answered);
    if (r->ids.n && n > 0 && (size_t)n < sizeof(why))
        snprintf(why + n, sizeof(why) - (size_t)n, ", for %zu ids", r->ids.n);
    run_source_error(r->run, "no_rows", what, why);
}

/* simple/price: the answer to the last request was 414 (URI Too Long: a CDN in front of the
 * API, or the API's own cap on ids). Its ids are asked for again in two halves; an id that
 * alone is refused is a failed request, counted and recorded, and the run goes on. */
static void prices_split(struct cg_run *r)
{
    if (r->req_nids > 1 && r->nsplit + 2 <= ARRAY_SIZE(r->split)) {
        size_t half = r->req_nids / 2;
        /* The second half goes below the first: the first is asked for next. */
        r->split[r->nsplit++] = (struct id_range){r->req_first + half, r->req_nids - half};
        r->split[r->nsplit++] = (struct id_range){r->req_first, half};
        log_info("request refused as too long (414); asking for its ids in two halves",
                 LOG_S("job", run_name(r->run)), LOG_U("ids", r->req_nids));
        return;
    }
    char why[160];
    snprintf(why, sizeof(why), "414 URI Too Long even for %zu id(s) from \"%.60s\"", r->req_nids,
             r->req_nids ? r->req_ids[0] : "");
    run_fail_request(r->run, "GET /simple/price", why);
}

static int prices_step(struct cg_run *r)
{
    count_quotes(r);
    if (r->sent && !r->last_ok && r->last_status == 414)
        prices_split(r);
    else if (r->sent)
        submit_all(r);
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
    static const char suffix[] = "&include_market_cap=true&include_24hr_vol=true"
                                 "&include_24hr_change=true&include_last_updated_at=true"
                                 "&precision=full";
    if (!rc && r->nsplit) {
        /* A half of a refused request: those ids fitted before, so they fit now. */
        struct id_range h = r->split[--r->nsplit];
        size_t resume = r->next_id;
        r->next_id = h.first;
        rc = build_ids_path(r, prefix, suffix, h.n);
        r->next_id = resume;
        if (!rc && r->req_nids < h.n) /* cannot happen; never lose the rest */
            r->split[r->nsplit++] = (struct id_range){h.first + r->req_nids, h.n - r->req_nids};
    } else if (!rc) {
        rc = build_ids_path(r, prefix, suffix, r->max_ids);
    }
    if (rc == -ENOENT) { /* every id was asked for (or dropped) */
        if (r->ids.n == 0)
            set_error(r, "universe", "no ids to track");
        check_quotes(r, "/simple/price");
        next_step(r, ST_DONE);
        return 1;
    }
    if (rc)
        return rc;
    run_handle_status(r->run, 414); /* prices_split() answers it */
    return send_request(r, BATCH_PRICES, -1, -1);
}

/* market_caps: `ids = all` without categories walks the pages (with `top`: the first N
 * coins); any other universe is fetched by id, 250 ids a request (a page's maximum). */
/* market_caps: one currency is done; the next one starts at its first page or id. */
static void markets_next_currency(struct cg_run *r)
{
    /* The first currency's walk of the top N refreshes the cache prices uses. */
    if (r->ids_all && r->top && r->vs_idx == 0 && !r->walk_failed)
        cache_store(r, &r->j->top);
    strlist_clear(&r->scratch);
    r->vs_idx++;
    next_walk(r);
    r->next_id = 0;
    r->walk_failed = false;
}

/* --- the pipelined walk ---------------------------------------------------------------------
 *
 * market_caps over every coin (or the top N) with max_in_flight > 1 keeps several pages in
 * flight: while the API builds page n+1 and the next ones, the loop parses page n. Pages are
 * parsed into their own slot as they arrive, in any order, and taken by the walk strictly in
 * page order, through the same page_done() as the one-at-a-time walk: the rows reach the sink
 * in page order, and the walk ends at the first short (or failed, or repeated) page exactly as
 * before; pages already asked for past that end are dropped when they report, and the next
 * currency starts only when every one has. Pages are asked for ahead only up to the page count
 * the last coin list predicts (or the top N needs); past it, one at a time, so a walk that
 * ends where expected asks for no page beyond its end. */

static int slot_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct page_slot *s = arg;
    struct cg_run *r = s->r;
    struct coingecko_stats st = {0};
    r->times.fetched_ms = (int64_t)util_wall_ms();
    /* A retried body starts over. */
    for (size_t i = 0; i < ARRAY_SIZE(s->b); i++)
        if (s->b[i])
            s->b[i]->nrows = 0;
    strlist_clear(&s->ids);
    struct coingecko_markets_out out = {.snapshots = s->b[0], .assets = s->b[1], .ids = &s->ids};
    int rc = coingecko_parse_markets(body, len, &r->times, r->vs.items[r->vs_idx], NULL, &out, &st,
                                     err, errlen);
    if (rc == 0) {
        s->ncoins = out.ncoins;
        run_count(r->run, st.field_type_errors + st.missing_coins + st.missing_currencies +
                              st.missing_last_updated + st.skipped + st.overflow_numbers);
        if (st.field_type_errors)
            metrics_add("coingest_field_errors_total", "", (double)st.field_type_errors);
    }
    return rc;
}

static void slot_done(const struct fetch_result *res, void *arg)
{
    struct page_slot *s = arg;
    struct cg_run *r = s->r;
    s->reported = true;
    s->ok = res->outcome == FETCH_OK;
    r->nflight--;
    if (r->walk_over || s->page < r->page) {
        slot_clear(s); /* past the end of the walk: dropped */
    } else if (!s->ok) {
        /* The walk meets it in order and ends there; it has no rows. */
        for (size_t i = 0; i < ARRAY_SIZE(s->b); i++) {
            batch_free(s->b[i]);
            s->b[i] = NULL;
        }
        strlist_clear(&s->ids);
    }
    advance(r);
}

/* The last page the walk may ask for ahead of taking the pages before it. */
static uint32_t walk_ahead_limit(const struct cg_run *r)
{
    uint64_t coins = r->j->listed.n ? r->j->listed.n : r->per_page;
    if (r->top && r->top < coins)
        coins = r->top;
    uint64_t pages = (coins + r->per_page - 1) / r->per_page;
    uint64_t max = walk_max_pages(r);
    if (pages > max)
        pages = max;
    if (pages < r->page)
        pages = r->page; /* past the prediction: the next page alone */
    return pages > UINT32_MAX ? UINT32_MAX : (uint32_t)pages;
}

/* Asks for the pages the window allows. 0, or a negative code when nothing could be sent and
 * nothing is in flight. */
static int walk_send(struct cg_run *r)
{
    uint32_t limit = walk_ahead_limit(r);
    int assets_spec = r->vs_idx == 0 ? BATCH_ASSETS_MARKET : -1;
    while (!r->walk_over && r->nflight < r->nslots && r->next_send <= limit &&
           r->next_send < r->page + r->nslots) {
        struct page_slot *s = &r->slots[r->next_send % r->nslots];
        if (s->used)
            break; /* taken by an earlier page still waiting to be consumed */
        uint32_t keep = r->page;
        r->page = r->next_send;
        int rc = markets_page_path(r, r->vs.items[r->vs_idx], NULL);
        r->page = keep;
        if (rc == 0 && (!(s->b[0] = batch_new(BATCH_MARKET_SNAPSHOTS, 256)) ||
                        (assets_spec >= 0 && !(s->b[1] = batch_new(BATCH_ASSETS_MARKET, 256)))))
            rc = -ENOMEM;
        if (rc == 0) {
            s->r = r;
            s->page = r->next_send;
            s->used = true;
            rc = run_get_tagged(r->run, r->path, 4 * MIB, slot_parse, slot_done, s);
        }
        if (rc != 0) {
            slot_clear(s);
            if (r->nflight == 0)
                return rc;
            /* The pages in flight end the walk (it counts as failed); their rows are kept up
             * to the gap. */
            run_fail_errno(r->run, "request", rc);
            r->walk_failed = true;
            r->walk_over = true;
            return 0;
        }
        r->nflight++;
        r->next_send++;
    }
    return 0;
}

/* One step of the pipelined walk: takes the pages that are in, in order, then asks for more.
 * Returns as markets_step. */
static int walk_step(struct cg_run *r)
{
    while (!r->walk_over) {
        struct page_slot *s = &r->slots[r->page % r->nslots];
        if (!s->used || !s->reported || s->page != r->page)
            break;
        /* The page becomes the run's current answer, as in the one-at-a-time walk. */
        drop_batches(r);
        r->b[0] = s->b[0];
        r->b[1] = s->b[1];
        s->b[0] = s->b[1] = NULL;
        r->got_ids = s->ids;
        memset(&s->ids, 0, sizeof(s->ids));
        r->got_ncoins = s->ncoins;
        r->last_ok = s->ok;
        r->sent = true;
        slot_clear(s);
        if (r->last_ok && top_walk(r) && r->collected + r->got_ncoins > r->top)
            trim_page(r, r->top - r->collected);
        count_quotes(r);
        bool more = page_done(r);
        submit_all(r);
        strlist_clear(&r->got_ids);
        r->sent = false;
        if (more)
            r->page++;
        else
            r->walk_over = true;
    }
    if (r->walk_over) {
        if (r->nflight)
            return 0; /* pages past the end still report */
        for (uint32_t i = 0; i < r->nslots; i++)
            slot_clear(&r->slots[i]);
        markets_next_currency(r);
        r->walk_over = false;
        r->next_send = 1;
        if (r->vs_idx >= r->vs.n) {
            check_quotes(r, "/coins/markets");
            next_step(r, ST_GLOBAL);
            return 1;
        }
    }
    if (run_cancelled(r->run)) {
        r->walk_over = true;
        return 0;
    }
    return walk_send(r);
}

static int markets_step(struct cg_run *r)
{
    if (r->slots)
        return walk_step(r);
    count_quotes(r);
    if (r->sent) {
        bool more;
        if (r->ids_all) {
            more = page_done(r);
        } else {
            more = r->next_id < r->ids.n;
            if (!r->last_ok)
                r->walk_failed = true;
        }
        submit_all(r);
        r->sent = false;
        if (more)
            r->page++;
        else
            markets_next_currency(r);
    }
    for (;;) {
        if (r->vs_idx >= r->vs.n) {
            check_quotes(r, "/coins/markets");
            next_step(r, ST_GLOBAL);
            return 1;
        }
        /* Rank and image come once, with the first currency. */
        int assets_spec = r->vs_idx == 0 ? BATCH_ASSETS_MARKET : -1;
        int rc;
        if (r->ids_all) {
            rc = markets_page_path(r, r->vs.items[r->vs_idx], NULL);
        } else {
            char prefix[256];
            size_t n = 0;
            prefix[0] = '\0';
            rc = append_raw(prefix, sizeof(prefix), &n, "/coins/markets?vs_currency=");
            if (!rc)
                rc = append_enc(prefix, sizeof(prefix), &n, r->vs.items[r->vs_idx]);
            if (!rc)
                rc = append_raw(prefix, sizeof(prefix), &n, "&ids=");
            if (!rc)
                rc = build_ids_path(
                    r, prefix, "&order=market_cap_desc&per_page=250&page=1&precision=full", 250);
            if (rc == -ENOENT && r->ids.n == 0) {
                set_error(r, "universe", "no ids to track");
                next_step(r, ST_GLOBAL);
                return 1;
            }
            if (rc == -ENOENT) { /* the ids left were dropped: this currency is done */
                markets_next_currency(r);
                continue;
            }
        }
        if (rc)
            return rc;
        return send_request(r, BATCH_MARKET_SNAPSHOTS, assets_spec, -1);
    }
}

/* Moves the run to its next request, or finishes it. Called at the start and after each
 * request; each step function returns 0 (a request is under way), 1 (go on to the next
 * step now) or a negative code (the run cannot go on). */
/* The coin list as a step of a run: asks for it (0, or the send's error) and, once answered,
 * keeps it when it is believable and returns 1 (the step goes on, with or without it). */
static int coin_list_step(struct cg_run *r)
{
    if (!r->sent) {
        snprintf(r->path, sizeof(r->path), "/coins/list");
        return send_request(r, BATCH_ASSETS_LIST, -1, -1);
    }
    if (r->last_ok) {
        strlist_sort_uniq(&r->got_ids);
        if (list_believable(r, &r->got_ids))
            keep_list(r);
    }
    drop_batches(r);
    return 1;
}

static void advance(struct cg_run *r)
{
    struct cg_state *j = r->j;
    for (;;) {
        if (run_cancelled(r->run)) {
            if (r->nflight)
                return; /* a pipelined walk's pages still report: each calls advance() */
            r->step = ST_DONE;
        }
        int rc = 1;
        switch (r->step) {
        case ST_RESOLVE_LIST:
            if ((rc = coin_list_step(r)) != 1)
                break;
            if (!j->listed.n) {
                set_error(r, "universe", "the coin list could not be fetched");
                next_step(r, ST_DONE);
                break;
            }
            strlist_append(&r->ids, &j->listed);
            r->ids_all = false;
            r->after_vs = ST_RESOLVE_CATEGORIES;
            next_step(r, ST_VS_LIST);
            break;
        case ST_IDS_LIST:
            if ((rc = coin_list_step(r)) != 1)
                break;
            report_unknown_ids(r);
            r->after_vs = ST_RESOLVE_CATEGORIES;
            next_step(r, ST_VS_LIST);
            break;
        case ST_RESOLVE_CATEGORIES:
        case ST_RESOLVE_TOP:
            rc = resolve_step(r);
            break;
        case ST_VS_LIST:
            rc = vs_list_step(r);
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
            run_finish(r->run);
            return;
        }
        if (rc == 0)
            return;
        if (rc < 0) {
            run_fail_request(r->run, "request", rc == -ENOSPC ? "URL too long" : "out of memory");
            drop_batches(r);
            next_step(r, ST_DONE);
        }
    }
}

/* The interval of one of the three jobs (0 when absent). */
static uint64_t job_every(const struct config *cfg, const char *name)
{
    int i = config_job_index(cfg, name);
    return i >= 0 ? cfg->jobs[i].every_ms : 0;
}

static int cg_start(struct run *run, enum cg_job id)
{
    struct cg_run *r = run_state(run);
    struct cg_state *j = run_source_state(run);
    const struct config *cfg = run_config(run);
    const struct cfg_source *src = run_source(run);
    const struct cfg_value *per_page = config_source_value(src, "per_page");
    r->run = run;
    r->j = j;
    r->id = id;
    r->gen = j->gen;
    r->times.run_ms = (int64_t)run_started_ms(run);
    r->times.fetched_ms = r->times.run_ms;
    r->all = cfg->universe.all;
    r->top = cfg->universe.top;
    r->per_page = per_page && per_page->u ? (uint32_t)per_page->u : 250;
    const struct cfg_value *delist = config_source_value(src, "max_delist_percent");
    r->max_delist_percent = delist && delist->set ? (uint32_t)delist->u : 10;
    const struct cfg_value *max_ids = config_source_value(src, "max_ids_per_request");
    r->max_ids = max_ids && max_ids->u ? (uint32_t)max_ids->u : 500;
    size_t base = src->base_url ? strlen(src->base_url) : 0;
    size_t max_url = src->max_url_bytes ? src->max_url_bytes : 8000;
    r->url_budget = max_url > base ? max_url - base : 0;
    /* A resolved set is reused until the job that refreshes it anyway would have run. */
    r->cache_ttl_top_ms = job_every(cfg, "market_caps");
    r->cache_ttl_categories_ms = job_every(cfg, "assets");
    if (strlist_append(&r->vs, &cfg->universe.vs_currencies) ||
        strlist_append(&r->categories, &cfg->universe.categories) ||
        (r->vs.n == 0 && strlist_push(&r->vs, "usd", 3)))
        return -ENOMEM;
    next_step(r, ST_DONE);

    switch (id) {
    case CG_ASSETS:
        next_step(r, ST_ASSETS_LIST);
        break;
    case CG_PRICES:
    case CG_MARKET_CAPS:
        r->after_resolve = id == CG_PRICES ? ST_PRICES : ST_MARKETS;
        check_vs(r); /* against the codes the last coin list came with, when there are any */
        if (!r->vs.n) {
            next_step(r, ST_DONE);
            break;
        }
        if (!r->all) {
            if (strlist_append(&r->ids, &cfg->universe.ids))
                return -ENOMEM;
            strlist_sort_uniq(&r->ids);
            /* The ids are checked against the coin list: the last one, or one fetched now. */
            if (j->listed.n) {
                report_unknown_ids(r);
                next_step(r, ST_RESOLVE_CATEGORIES);
            } else {
                next_step(r, ST_IDS_LIST);
            }
        } else if (r->categories.n || (r->top && id == CG_PRICES)) {
            r->ids_all = true;
            next_step(r, ST_RESOLVE_CATEGORIES);
        } else if (id == CG_MARKET_CAPS) {
            /* Every coin (or the top N) by walking the pages: nothing to resolve. Several
             * pages in flight when the source allows (the pipelined walk). */
            r->ids_all = true;
            next_step(r, ST_MARKETS);
            uint32_t n = config_source_in_flight(src);
            if (n > 1) {
                if (!(r->slots = calloc(n, sizeof(*r->slots))))
                    return -ENOMEM;
                r->nslots = n;
                r->next_send = 1;
            }
        } else if (j->listed.n) {
            if (strlist_append(&r->ids, &j->listed))
                return -ENOMEM;
            next_step(r, ST_PRICES);
        } else {
            next_step(r, ST_RESOLVE_LIST);
        }
        break;
    default:
        break;
    }
    advance(r);
    return 0;
}

static int assets_start(struct run *run)
{
    return cg_start(run, CG_ASSETS);
}

static int prices_start(struct run *run)
{
    return cg_start(run, CG_PRICES);
}

static int market_caps_start(struct run *run)
{
    return cg_start(run, CG_MARKET_CAPS);
}

/* --- budget and definitions ------------------------------------------------------------- */

static uint32_t cfg_per_page(const struct cfg_source *src)
{
    const struct cfg_value *v = config_source_value(src, "per_page");
    return v && v->u ? (uint32_t)v->u : 250;
}

static uint64_t assets_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    (void)job;
    (void)n;
    /* the coin list, the supported currencies, the category list, and the categories' pages */
    return 3 + cfg->universe.categories.n * 2;
}

static uint64_t prices_requests(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    const struct cfg_source *src = config_job_source(cfg, job);
    /* An id costs about its length plus a separator; CoinGecko ids average ~14 bytes. */
    uint64_t per_req = src->max_url_bytes > 400 ? (src->max_url_bytes - 300) / 17 : 1;
    const struct cfg_value *max_ids = config_source_value(src, "max_ids_per_request");
    if (max_ids && max_ids->u && per_req > max_ids->u)
        per_req = max_ids->u;
    return (n + per_req - 1) / per_req;
}

static uint64_t market_caps_requests(const struct config *cfg, const struct cfg_job *job,
                                     uint64_t n)
{
    uint64_t nvs = cfg->universe.vs_currencies.n ? cfg->universe.vs_currencies.n : 1;
    uint32_t per_page = cfg_per_page(config_job_source(cfg, job));
    return nvs * ((n + per_page - 1) / per_page) + 1;
}

#define MS_MINUTE (60u * 1000u)

/* budget_keep: when the month's credits run short, market_caps is stretched first, then
 * prices, then assets (the coin list is cheap and everything else depends on it). */

/* The reasons each job's run_source_error() calls use (coingest_source_errors_total). */
static const char *const assets_errors[] = {"walk_stalled", "walk_too_long", "list_gutted", NULL};
static const char *const prices_errors[] = {"walk_stalled", "walk_too_long", "list_gutted",
                                            "no_rows", NULL};
static const char *const market_caps_errors[] = {"walk_stalled", "walk_too_long", "no_rows", NULL};

const struct job_def coingecko_assets_job = {
    .name = "assets",
    .every_ms = 24ull * 60 * MS_MINUTE,
    .enabled = true,
    .priority = TBUCKET_PRIO_LIVE,
    .run_size = sizeof(struct cg_run),
    .start = assets_start,
    .cleanup = cg_cleanup,
    .requests_per_run = assets_requests,
    .budget_keep = 3,
    .source_errors = assets_errors,
};

const struct job_def coingecko_prices_job = {
    .name = "prices",
    .every_ms = 5 * MS_MINUTE,
    .enabled = true,
    .priority = TBUCKET_PRIO_LIVE,
    .run_size = sizeof(struct cg_run),
    .start = prices_start,
    .cleanup = cg_cleanup,
    .requests_per_run = prices_requests,
    .budget_keep = 2,
    .source_errors = prices_errors,
};

const struct job_def coingecko_market_caps_job = {
    .name = "market_caps",
    .every_ms = 60 * MS_MINUTE,
    .enabled = true,
    .priority = TBUCKET_PRIO_LIVE,
    .run_size = sizeof(struct cg_run),
    .start = market_caps_start,
    .cleanup = cg_cleanup,
    .requests_per_run = market_caps_requests,
    .budget_keep = 1,
    .source_errors = market_caps_errors,
};
