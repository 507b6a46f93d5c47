/*
 * test_jobs: the CoinGecko jobs under the generic runner, against the fake API, with an
 * in-memory store instead of the sink: no database. Covers universe resolution (on demand,
 * cached, explicit ids, top N), page walks that stop exactly at the end of the data, a 429 in
 * the middle of a walk (the same page again, none skipped, none twice), the job_runs row (by
 * column name), failures, -EBUSY and cancellation; and the bad answers of issue 12: a cache
 * that ignores `page`, a walk past its bound, empty and gutted coin lists (against the
 * previous list and the database's count, which the in-memory store answers), ids too long
 * for any URL, and quote answers that are all empty. A store that accepts rows later
 * (submit_async, as the sink does once the spool's sync reports): the run counts the rows and
 * finishes only then, and a late refusal fails it.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "fakeapi_proc.h"
#include "jobenv.h"

#define UNIVERSE 600
#define WAIT_MS  30000

/* ---- the in-memory store ------------------------------------------------------------------ */

struct memstore {
    uint64_t rows[BATCH_SPEC_COUNT];
    uint64_t batches[BATCH_SPEC_COUNT];
    struct batch *job_runs; /* every job_runs row, appended */
    struct batch *delist;   /* the delisting statements */
    struct strlist snaps;   /* "asset_id/vs_currency" of every market_snapshots row, in order */
    bool refuse;            /* submit fails: rows cannot be kept */

    /* submit_async (with `accept_later`): every hand-over is accepted on a later loop
     * iteration, with -EIO when `refuse_later`. */
    bool accept_later, refuse_later;
    uv_loop_t *loop;
    unsigned accepts_pending, accepts;

    /* Reads: with `answer_reads`, every SELECT is answered (later, on the loop, as the store
     * contract says) with one cell, `db_listed`; the last SQL is kept. Without, reads are not
     * supported, as for a store without a database. */
    bool answer_reads;
    uint64_t db_listed;
    char read_sql[256];
    unsigned reads;
    uv_timer_t read_timer;
    bool read_timer_init;
    store_read_cb read_cb;
    void *read_arg;

    /* The monthly ledger (api_usage): its reads are always answered, apart from the others,
     * with the largest count written so far (usage_calls). */
    uint64_t usage_calls;
    unsigned usage_reads;
    uv_timer_t usage_timer;
    store_read_cb usage_cb;
    void *usage_arg;
};

static void mem_usage_answer(uv_timer_t *t)
{
    struct memstore *m = t->data;
    char cell[32];
    snprintf(cell, sizeof(cell), "%llu", (unsigned long long)m->usage_calls);
    char *names[] = {"calls"};
    char *cells[] = {cell};
    struct store_rows rows = {
        .nrows = m->usage_calls ? 1 : 0, .ncols = 1, .names = names, .cells = cells};
    store_read_cb cb = m->usage_cb;
    m->usage_cb = NULL;
    cb(0, &rows, NULL, m->usage_arg);
}

static void mem_read_answer(uv_timer_t *t)
{
    struct memstore *m = t->data;
    char cell[32];
    snprintf(cell, sizeof(cell), "%llu", (unsigned long long)m->db_listed);
    char *names[] = {"COUNT(*)"};
    char *cells[] = {cell};
    struct store_rows rows = {.nrows = 1, .ncols = 1, .names = names, .cells = cells};
    store_read_cb cb = m->read_cb;
    m->read_cb = NULL;
    cb(0, &rows, NULL, m->read_arg);
}

static int mem_read(void *ctx, const char *sql, const char *const *params, size_t nparams,
                    size_t max_rows, store_read_cb cb, void *arg)
{
    struct memstore *m = ctx;
    (void)params;
    (void)nparams;
    (void)max_rows;
    if (strstr(sql, "FROM api_usage")) {
        assert_null(m->usage_cb);
        m->usage_reads++;
        m->usage_cb = cb;
        m->usage_arg = arg;
        m->usage_timer.data = m;
        return uv_timer_start(&m->usage_timer, mem_usage_answer, 0, 0);
    }
    if (!m->answer_reads)
        return -ENOTSUP;
    assert_null(m->read_cb); /* one read at a time */
    snprintf(m->read_sql, sizeof(m->read_sql), "%s", sql);
    m->reads++;
    m->read_cb = cb;
    m->read_arg = arg;
    m->read_timer.data = m;
    return uv_timer_start(&m->read_timer, mem_read_answer, 0, 0);
}

static int mem_submit(void *ctx, struct batch *b)
{
    struct memstore *m = ctx;
    if (m->refuse) {
        batch_free(b);
        return -EIO;
    }
    enum batch_spec_id id = b->spec->id;
    for (uint32_t i = 0; id == BATCH_API_USAGE && i < b->nrows; i++) {
        uint64_t calls = (uint64_t)batch_val(b, i, BATCH_API_USAGE_COL_CALLS)->u.i;
        m->usage_calls = calls > m->usage_calls ? calls : m->usage_calls; /* GREATEST */
    }
    m->rows[id] += b->nrows;
    m->batches[id]++;
    for (uint32_t i = 0; id == BATCH_MARKET_SNAPSHOTS && i < b->nrows; i++) {
        const struct val *a = batch_val(b, i, BATCH_MARKET_SNAPSHOTS_COL_ASSET_ID);
        const struct val *vs = batch_val(b, i, BATCH_MARKET_SNAPSHOTS_COL_VS_CURRENCY);
        char key[256];
        int n = snprintf(key, sizeof(key), "%.*s/%.*s", (int)a->len, a->u.s, (int)vs->len, vs->u.s);
        assert_int_equal(strlist_push(&m->snaps, key, (size_t)n), 0);
    }
    struct batch **keep = id == BATCH_JOB_RUNS        ? &m->job_runs
                          : id == BATCH_ASSETS_DELIST ? &m->delist
                                                      : NULL;
    int rc = 0;
    if (keep && !*keep)
        *keep = batch_new(id, 4);
    if (keep)
        rc = *keep ? batch_append(*keep, b) : -ENOMEM;
    batch_free(b);
    return rc;
}

struct mem_accept {
    uv_timer_t t;
    struct memstore *m;
    int rc;
    uint64_t accepted;
    void (*cb)(int rc, uint64_t accepted, void *arg);
    void *arg;
};

static void mem_accept_closed(uv_handle_t *h)
{
    free(h->data);
}

static void mem_accept_fire(uv_timer_t *t)
{
    struct mem_accept *a = t->data;
    a->m->accepts_pending--;
    a->m->accepts++;
    a->cb(a->rc, a->accepted, a->arg);
    uv_close((uv_handle_t *)&a->t, mem_accept_closed);
}

static int mem_submit_async(void *ctx, struct batch *const *bs, size_t n,
                            void (*cb)(int rc, uint64_t accepted, void *arg), void *arg,
                            uint64_t *accepted)
{
    struct memstore *m = ctx;
    int rc = 0;
    uint64_t rows = 0, first = 0;
    for (size_t i = 0; i < n; i++) {
        uint64_t r = bs[i] ? bs[i]->nrows : 0;
        if (!first)
            first = r;
        rows += r;
        int e = bs[i] ? mem_submit(m, bs[i]) : 0;
        if (e && !rc)
            rc = e;
    }
    *accepted = 0;
    if (rc)
        return rc;
    struct mem_accept *a = calloc(1, sizeof(*a));
    assert_non_null(a);
    a->m = m;
    a->rc = m->refuse_later ? -EIO : 0;
    /* A late refusal keeps the first batch: the run must count what was accepted. */
    a->accepted = m->refuse_later ? first : rows;
    a->cb = cb;
    a->arg = arg;
    assert_int_equal(uv_timer_init(m->loop, &a->t), 0);
    a->t.data = a;
    assert_int_equal(uv_timer_start(&a->t, mem_accept_fire, 0, 0), 0);
    m->accepts_pending++;
    return 0;
}

/* ---- fixture ------------------------------------------------------------------------------- */

struct env {
    struct jobenv j; /* j.run: the last run started with runwait_cb */
    struct memstore mem;
};

/* Runs the loop until the run is reported, failing after WAIT_MS. */
static void wait_done(struct env *e)
{
    runwait_wait(&e->j.run, &e->j.loop, WAIT_MS);
}

static size_t job(const struct env *e, const char *name)
{
    int i = config_job_index(e->j.cfg, name);
    assert_true(i >= 0);
    return (size_t)i;
}

static void do_run(struct env *e, const char *name)
{
    jobenv_run(&e->j, name, WAIT_MS);
}

/* Loads a config whose [source.coingecko] points at the fake API, plus `extra` lines. */
static void load_config(struct env *e, const char *extra)
{
    jobenv_load(&e->j,
                "[source.coingecko]\nbase_url = %s\nrate_limit = 1000/s\nburst = 100\n"
                "backoff_base = 10ms\nbackoff_cap = 50ms\nmax_retries = 2\nper_page = 100\n%s",
                fakeapi_base_url(e->j.fake), extra ? extra : "");
}

static void start_runner(struct env *e)
{
    if (!e->mem.read_timer_init) {
        assert_int_equal(uv_timer_init(&e->j.loop, &e->mem.read_timer), 0);
        assert_int_equal(uv_timer_init(&e->j.loop, &e->mem.usage_timer), 0);
        e->mem.read_timer_init = true;
    }
    struct store store = {.submit = mem_submit, .read = mem_read, .ctx = &e->mem};
    e->mem.loop = &e->j.loop;
    if (e->mem.accept_later)
        store.submit_async = mem_submit_async;
    jobenv_start(&e->j, store);
}

/* The fixture with the fake API started with `args` (NULL-terminated). */
static int setup_fake(void **state, const char *const *args, const char *extra)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    jobenv_init(&e->j, fakeapi_start(args), "test_jobs");
    load_config(e, extra);
    start_runner(e);
    *state = e;
    return 0;
}

static int setup_with(void **state, const char *extra)
{
    static const char *const args[] = {"--universe", "600", NULL};
    return setup_fake(state, args, extra);
}

static int setup(void **state)
{
    return setup_with(state, "[universe]\nvs_currencies = usd, eur\n");
}

static int teardown(void **state)
{
    struct env *e = *state;
    jobenv_stop(&e->j);
    if (e->mem.read_timer_init) {
        uv_close((uv_handle_t *)&e->mem.read_timer, NULL);
        uv_close((uv_handle_t *)&e->mem.usage_timer, NULL);
    }
    jobenv_close(&e->j);
    batch_free(e->mem.job_runs);
    batch_free(e->mem.delist);
    strlist_clear(&e->mem.snaps);
    free(e);
    return 0;
}

/* ---- helpers to look at what happened ------------------------------------------------------ */

/* Requests the fake API served for a route, and how many of them carried `param=value`. */
static size_t served(struct env *e, const char *route, const char *param, const char *value)
{
    json_t *log = fakeapi_log(e->j.fake, 0);
    assert_non_null(log);
    size_t n = 0, i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        const char *r = json_string_value(json_object_get(entry, "route"));
        if (!r || strcmp(r, route) != 0)
            continue;
        if (param) {
            const char *v =
                json_string_value(json_object_get(json_object_get(entry, "params"), param));
            if (!v || strcmp(v, value) != 0)
                continue;
        }
        n++;
    }
    json_decref(log);
    return n;
}

static const struct val *job_runs_val(const struct env *e, uint32_t row, const char *col)
{
    const struct batch *b = e->mem.job_runs;
    assert_non_null(b);
    assert_true(row < b->nrows);
    int c = batch_spec_col(b->spec, col);
    assert_true(c >= 0);
    return batch_val(b, row, (uint16_t)c);
}

static void assert_val_str(const struct val *v, const char *want)
{
    assert_int_equal(v->type, VAL_STR);
    assert_int_equal(v->len, strlen(want));
    assert_memory_equal(v->u.s, want, v->len);
}

/* coingest_source_errors_total of a job and reason. */
static double source_errors(const char *job, const char *reason)
{
    char labels[160];
    snprintf(labels, sizeof(labels), "api=\"coingecko\",job=\"%s\",reason=\"%s\"", job, reason);
    return metrics_get("coingest_source_errors_total", labels);
}

/* A fault that answers the next /coins/list with coins coin-00001 .. coin-N (malloc'd JSON,
 * then queued). */
static void fault_short_list(struct env *e, unsigned n)
{
    size_t cap = 128 + (size_t)n * 64, len = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    len += (size_t)snprintf(json + len, cap - len,
                            "{\"match\":\"/coins/list\",\"status\":200,\"body\":[");
    for (unsigned i = 1; i <= n; i++)
        len += (size_t)snprintf(json + len, cap - len,
                                "%s{\"id\":\"coin-%05u\",\"symbol\":\"c%05u\",\"name\":\"C\"}",
                                i > 1 ? "," : "", i, i);
    snprintf(json + len, cap - len, "]}");
    assert_int_equal(fakeapi_fault(e->j.fake, json), 0);
    free(json);
}

/* ---- tests ----------------------------------------------------------------------------------- */

static void test_assets(void **state)
{
    struct env *e = *state;
    do_run(e, "assets");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_string_equal(e->j.run.sum.error, "");
    assert_string_equal(e->j.run.sum.name, "assets");
    assert_int_equal(e->mem.rows[BATCH_ASSETS_LIST], UNIVERSE);
    assert_int_equal(e->mem.rows[BATCH_CATEGORIES], 12);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1); /* after the whole list */
    /* the list, the supported currencies, the category list */
    assert_int_equal(e->j.run.sum.requests, 3);
    assert_int_equal(served(e, "/coins/list", "include_platform", "true"), 1);
    assert_int_equal(served(e, "/simple/supported_vs_currencies", NULL, NULL), 1);

    /* The job_runs row, read by column name. */
    assert_int_equal(e->mem.job_runs->nrows, 1);
    assert_val_str(job_runs_val(e, 0, "job"), "assets");
    assert_val_str(job_runs_val(e, 0, "status"), "ok");
    assert_int_equal(job_runs_val(e, 0, "requests")->u.i, 3);
    assert_int_equal(job_runs_val(e, 0, "rows_written")->u.i, (int64_t)e->j.run.sum.rows);
    assert_int_equal(job_runs_val(e, 0, "error")->type, VAL_NULL);
    assert_int_equal(job_runs_val(e, 0, "started_at")->type, VAL_TIME);

    /* The listed ids are the universe of the next prices run: no second /coins/list. */
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * UNIVERSE);
}

static void test_prices_resolves_on_demand(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* No assets run yet: the list is fetched on demand, then the prices in URL-sized parts. */
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1);
    size_t parts = served(e, "/simple/price", NULL, NULL);
    assert_true(parts >= 1);
    /* with the list, the supported currencies it is checked against */
    assert_int_equal(served(e, "/simple/supported_vs_currencies", NULL, NULL), 1);
    assert_int_equal(e->j.run.sum.requests, 2 + parts);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * UNIVERSE);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_LIST], 0); /* the resolution stores nothing */
}

static void test_market_caps_walk(void **state)
{
    struct env *e = *state;
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* 600 coins at 100 a page: six full pages and a seventh, empty, that ends the walk, for
     * each currency; then /global. */
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "usd"), 7);
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "eur"), 7);
    assert_int_equal(served(e, "/coins/markets", "page", "7"), 2);
    assert_int_equal(served(e, "/coins/markets", "page", "8"), 0);
    assert_int_equal(served(e, "/global", NULL, NULL), 1);
    assert_int_equal(e->j.run.sum.requests, 15);
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * UNIVERSE);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_MARKET], UNIVERSE); /* rank, image: once */
    assert_int_equal(e->mem.rows[BATCH_GLOBAL_SNAPSHOTS], 1);
}

/* The fake API's log entry of /coins/markets page `page` for usd (the first one). */
static json_t *page_entry(json_t *log, const char *page)
{
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        json_t *params = json_object_get(entry, "params");
        const char *r = json_string_value(json_object_get(entry, "route"));
        const char *p = json_string_value(json_object_get(params, "page"));
        const char *vs = json_string_value(json_object_get(params, "vs_currency"));
        if (r && p && vs && strcmp(r, "/coins/markets") == 0 && strcmp(p, page) == 0 &&
            strcmp(vs, "usd") == 0)
            return entry;
    }
    fail_msg("no /coins/markets page %s for usd in the log", page);
    return NULL;
}

/* Did the request for usd page 2 arrive before page 1 was answered? */
static bool page2_overlapped_page1(struct env *e)
{
    json_t *log = fakeapi_log(e->j.fake, 0);
    assert_non_null(log);
    double done1 = json_number_value(json_object_get(page_entry(log, "1"), "t_done_mono"));
    double start2 = json_number_value(json_object_get(page_entry(log, "2"), "t_mono"));
    json_decref(log);
    return start2 < done1;
}

/* max_in_flight: with the coin list known (600 coins, 6 pages of 100 a currency) a
 * market_caps walk keeps pages in flight together. Page 1, answered last (a delay), still
 * reaches the store first: the rows arrive in the same order as in a walk of one page at a
 * time, the walk ends at the same empty 7th page, and no page past it is asked for. */
static void test_walk_in_flight_keeps_order(void **state)
{
    struct env *e = *state;
    struct cfg_source *cg = (struct cfg_source *)config_source(e->j.cfg, "coingecko");
    assert_non_null(cg);
    do_run(e, "prices"); /* the coin list: the walk now knows how many pages to expect */
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(config_source_in_flight(cg), 4); /* 1000/s */

    const char *delay = "{\"match\":\"/coins/markets\",\"params\":{\"page\":\"1\","
                        "\"vs_currency\":\"usd\"},\"kind\":\"delay\",\"delay\":0.3}";
    cg->max_in_flight = 1;
    assert_int_equal(fakeapi_reset(e->j.fake), 0);
    assert_int_equal(fakeapi_fault(e->j.fake, delay), 0);
    strlist_clear(&e->mem.snaps);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_false(page2_overlapped_page1(e));
    struct strlist one_at_a_time = e->mem.snaps;
    memset(&e->mem.snaps, 0, sizeof(e->mem.snaps));
    assert_int_equal(one_at_a_time.n, 2 * UNIVERSE);

    cg->max_in_flight = 0; /* the default: 4 at this rate limit */
    assert_int_equal(fakeapi_reset(e->j.fake), 0);
    assert_int_equal(fakeapi_fault(e->j.fake, delay), 0);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_true(page2_overlapped_page1(e));
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "usd"), 7);
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "eur"), 7);
    assert_int_equal(served(e, "/coins/markets", "page", "8"), 0);
    assert_int_equal(e->j.run.sum.requests, 15);
    assert_int_equal(e->mem.snaps.n, one_at_a_time.n);
    for (size_t i = 0; i < one_at_a_time.n; i++)
        if (strcmp(e->mem.snaps.items[i], one_at_a_time.items[i]) != 0)
            fail_msg("row %zu: %s, one at a time %s", i, e->mem.snaps.items[i],
                     one_at_a_time.items[i]);
    strlist_clear(&one_at_a_time);
}

/* A walk with pages in flight that ends early (the data is shorter than the coin list says: a
 * short page 3) stores nothing past its end, and its run ends only after every page asked
 * for has reported. */
static void test_walk_in_flight_stops_at_short_page(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(fakeapi_reset(e->j.fake), 0);
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"params\":{"
                                              "\"page\":\"3\"},\"status\":200,\"count\":2,"
                                              "\"body\":[]}"),
                     0);
    strlist_clear(&e->mem.snaps);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* Pages 1 and 2 of each currency; page 3 (empty) ended each walk. */
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * 200);
    assert_int_equal(e->mem.snaps.n, 2 * 200);
    assert_int_equal(served(e, "/coins/markets", "page", "3"), 2);
    assert_int_equal(served(e, "/global", NULL, NULL), 1);
    /* Pages past the end were asked for ahead (at most 3 more a currency), never stored. */
    assert_true(served(e, "/coins/markets", "vs_currency", "usd") <= 6);
}

/* A 429 on page 3: the bucket pauses, the same page is asked again, no page is skipped or
 * fetched twice, and every row arrives. */
static void test_429_resumes_the_walk(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"params\":{\"page\":"
                                              "\"3\",\"vs_currency\":\"usd\"},\"status\":429,"
                                              "\"retry_after\":\"1\"}"),
                     0);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/markets", "page", "3"), 3); /* usd twice, eur once */
    for (int p = 1; p <= 7; p++) {
        char page[8];
        snprintf(page, sizeof(page), "%d", p);
        assert_int_equal(served(e, "/coins/markets", "page", page), p == 3 ? 3 : 2);
    }
    assert_int_equal(e->j.run.sum.requests, 16); /* the 429 counts as an attempt */
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * UNIVERSE);
}

static void test_failed_request_fails_the_run(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/list\",\"status\":404,"
                                              "\"body\":{\"error\":\"gone\"}}"),
                     0);
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_FAILED);
    assert_string_equal(e->j.run.sum.error, "GET /coins/list: gone");
    assert_int_equal(e->mem.rows[BATCH_PRICES], 0);
    assert_val_str(job_runs_val(e, 0, "status"), "failed");
    assert_val_str(job_runs_val(e, 0, "error"), "GET /coins/list: gone");
}

/* A page that fails for good ends that currency's walk; the run goes on and is partial. */
static void test_partial_run(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"params\":"
                                              "{\"vs_currency\":\"eur\"},\"status\":400}"),
                     0);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(strstr(e->j.run.sum.error, "GET /coins/markets?vs_currency=eur"));
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], UNIVERSE); /* usd only */
    assert_int_equal(e->mem.rows[BATCH_GLOBAL_SNAPSHOTS], 1);
}

static void test_busy_and_cancel(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"kind\":\"delay\","
                                              "\"seconds\":5}"),
                     0);
    e->j.run.done = false;
    size_t id = job(e, "market_caps");
    assert_int_equal(runner_start(e->j.rn, id, runwait_cb, &e->j.run), 0);
    assert_true(runner_running(e->j.rn, id));
    assert_true(runner_any_running(e->j.rn));
    assert_int_equal(runner_start(e->j.rn, id, runwait_cb, &e->j.run), -EBUSY);
    assert_int_equal(runner_start(e->j.rn, 999, runwait_cb, &e->j.run), -EINVAL);
    uv_run(&e->j.loop, UV_RUN_NOWAIT);
    runner_cancel(e->j.rn);
    wait_done(e);
    assert_false(runner_running(e->j.rn, id));
    assert_int_equal(e->j.run.sum.status, RUN_FAILED);
    assert_string_equal(e->j.run.sum.error, "run: cancelled by shutdown");
    assert_int_equal(runner_last(e->j.rn, id)->status, RUN_FAILED);
    assert_val_str(job_runs_val(e, 0, "job"), "market_caps");
}

/* A lost lease (cluster.h) cancels one job's run, with its own reason; job_runs names the
 * instance runner_set_instance gave. */
static void test_cancel_one_job(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"kind\":\"delay\","
                                              "\"seconds\":5}"),
                     0);
    runner_set_instance(e->j.rn, "ingest-a");
    e->j.run.done = false;
    size_t id = job(e, "market_caps");
    assert_int_equal(runner_start(e->j.rn, id, runwait_cb, &e->j.run), 0);
    uv_run(&e->j.loop, UV_RUN_NOWAIT);
    runner_cancel_job(e->j.rn, job(e, "prices"), "not this one"); /* not running: nothing */
    assert_true(runner_running(e->j.rn, id));
    runner_cancel_job(e->j.rn, id, "lease lost: test");
    wait_done(e);
    assert_false(runner_running(e->j.rn, id));
    assert_int_equal(e->j.run.sum.status, RUN_FAILED);
    assert_string_equal(e->j.run.sum.error, "run: lease lost: test");
    assert_val_str(job_runs_val(e, 0, "instance"), "ingest-a");
}

/* A reload while a run is in flight frees the old configuration as the daemon does, at
 * once; the run's own hold keeps it until the run ends (under ASan: no use after free, as
 * test_daemon_ops's SIGHUPs found in the daemon). */
static void test_reload_mid_run(void **state)
{
    struct env *e = *state;
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"kind\":\"delay\","
                                              "\"seconds\":1}"),
                     0);
    e->j.run.done = false;
    size_t id = job(e, "market_caps");
    assert_int_equal(runner_start(e->j.rn, id, runwait_cb, &e->j.run), 0);
    uv_run(&e->j.loop, UV_RUN_NOWAIT);
    assert_true(runner_running(e->j.rn, id));
    struct config *old = e->j.cfg;
    e->j.cfg = NULL;
    load_config(e, "[universe]\nvs_currencies = eur\n");
    runner_set_config(e->j.rn, e->j.cfg);
    config_free(old); /* the run still holds it */
    wait_done(e);
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_string_equal(e->j.run.sum.name, "market_caps");
    assert_true(e->mem.rows[BATCH_MARKET_SNAPSHOTS] > 0);
}

/* Rows the store refuses make the run record the loss. */
static void test_store_refuses(void **state)
{
    struct env *e = *state;
    e->mem.refuse = true;
    do_run(e, "assets");
    assert_string_equal(e->j.run.sum.error, "sink: rows could not be stored or spooled");
    assert_int_equal(e->j.run.sum.rows, 0);
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
}

/* Rows accepted later: the market walk hands every page over with run_emit_many, and the run
 * is reported only once the store accepted them all, with every row counted. */
static void test_rows_accepted_later(void **state)
{
    struct env *e = *state;
    jobenv_stop(&e->j);
    e->mem.accept_later = true;
    load_config(e, "[universe]\nvs_currencies = usd, eur\n");
    start_runner(e);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* A hand-over per page with rows (6 per currency; the empty 7th has none) and /global. */
    assert_int_equal(e->mem.accepts, 13);
    assert_int_equal(e->mem.accepts_pending, 0);
    /* 2 x 600 snapshots + 600 asset rows + the global snapshot, all counted on acceptance. */
    assert_int_equal(e->j.run.sum.rows, 3 * UNIVERSE + 1);
}

/* A refusal that comes late fails the run as a refusal at once does; the rows the store did
 * accept (here the first batch of each hand-over: a page's snapshots) still count. */
static void test_rows_refused_later(void **state)
{
    struct env *e = *state;
    jobenv_stop(&e->j);
    e->mem.accept_later = true;
    e->mem.refuse_later = true;
    load_config(e, "[universe]\nvs_currencies = usd, eur\n");
    start_runner(e);
    do_run(e, "market_caps");
    assert_string_equal(e->j.run.sum.error, "sink: rows could not be stored or spooled");
    assert_int_equal(e->mem.accepts_pending, 0);
    assert_int_equal(e->mem.accepts, 13);
    /* 12 pages of 100 snapshots (their asset rows refused) and the global snapshot. */
    assert_int_equal(e->j.run.sum.rows, 2 * UNIVERSE + 1);
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
}

static int setup_top(void **state)
{
    return setup_with(state, "[universe]\ntop = 150\n");
}

/* top = 150: market_caps walks two full pages and keeps 150; prices resolves the same top N
 * (one walk) and prices exactly those. */
static void test_top_n(void **state)
{
    struct env *e = *state;
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/markets", NULL, NULL), 2);
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 150);

    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* The walk market_caps just made is the cache: no new markets page. */
    assert_int_equal(served(e, "/coins/markets", NULL, NULL), 2);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 150);
}

static int setup_ids(void **state)
{
    return setup_with(state, "[universe]\nids = coin-00001, coin-00002, coin-00004\n");
}

static void test_explicit_ids(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* One coin list, to check the ids against; market_caps uses the same. */
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1);
    assert_int_equal(served(e, "/simple/price", "ids", "coin-00001,coin-00002,coin-00004"), 1);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 3);

    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/markets", "ids", "coin-00001,coin-00002,coin-00004"), 1);
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 3);
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1);
}

/* ---- configured ids CoinGecko does not know ------------------------------------------------ */

static int setup_unknown_ids(void **state)
{
    /* Coin i is id coin-0000i, symbol c0000i, name "Coin 0000i" in the fake universe. */
    return setup_with(state, "[universe]\nids = Coin-00001, C00002, coin 00004, nope, coin-00005\n"
                             "vs_currencies = usd\n");
}

static double unknown_ids(const char *job)
{
    char labels[128];
    snprintf(labels, sizeof(labels), "api=\"coingecko\",job=\"%s\"", job);
    return metrics_get("coingest_unknown_ids_total", labels);
}

/* Runs a job with the log going to a file; returns the lines (malloc'd). */
static char *run_logged(struct env *e, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "/tmp/test_jobs.%d.log", (int)getpid());
    FILE *f = fopen(path, "w+");
    assert_non_null(f);
    log_set_fd(fileno(f));
    do_run(e, name);
    log_set_fd(2);
    fflush(f);
    long len = ftell(f);
    assert_true(len >= 0);
    char *text = calloc(1, (size_t)len + 1);
    assert_non_null(text);
    rewind(f);
    assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
    fclose(f);
    unlink(path);
    return text;
}

static size_t count_in(const char *text, const char *needle)
{
    size_t n = 0;
    for (const char *p = text; (p = strstr(p, needle)); p += strlen(needle))
        n++;
    return n;
}

/* `ids = Coin-00001, C00002, coin 00004, nope, coin-00005`: four ids the coin list does not
 * hold, each reported once per run with what it may have meant (the id lower-cased, a symbol,
 * a name; nothing for `nope`), counted per job; the known one gets its row. */
static void test_unknown_ids_reported(void **state)
{
    struct env *e = *state;
    double before = unknown_ids("prices");
    char *log = run_logged(e, "prices");
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1); /* none yet: fetched */
    assert_int_equal(e->mem.rows[BATCH_PRICES], 1);
    assert_true(unknown_ids("prices") - before == 4);
    assert_int_equal(count_in(log, "configured id is not a CoinGecko coin id"), 4);
    assert_non_null(strstr(log, "id=Coin-00001 did_you_mean=coin-00001"));
    assert_non_null(strstr(log, "id=C00002 did_you_mean=coin-00002"));
    assert_non_null(strstr(log, "did_you_mean=coin-00004"));
    assert_non_null(strstr(log, "id=nope\n"));
    assert_null(strstr(log, "id=coin-00005"));
    free(log);

    /* Once per run: the next run reports them again, from the list it already holds. */
    log = run_logged(e, "market_caps");
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 1);
    assert_int_equal(count_in(log, "configured id is not a CoinGecko coin id"), 4);
    assert_true(unknown_ids("market_caps") >= 4);
    free(log);

    /* Shown at 0 for every job that takes ids, before any run. */
    size_t mlen = 0;
    char *m = metrics_render(&mlen);
    assert_non_null(m);
    assert_non_null(strstr(m, "coingest_unknown_ids_total{api=\"coingecko\",job=\"prices\"}"));
    free(m);
}

/* A cache in front of the API that ignores `page` answers page 1 for every page: each walk
 * stops at the first page that brings no new coin, as a source error, and the run goes on
 * to the next currency and /global (issue 12, item 3). */
static void test_walk_ignoring_page_stops(void **state)
{
    struct env *e = *state;
    double before = source_errors("market_caps", "walk_stalled");
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"kind\":\"rewrite\","
                                              "\"set_params\":{\"page\":\"1\"},\"count\":100000}"),
                     0);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(strstr(e->j.run.sum.error, "walk /coins/markets?vs_currency=usd"));
    assert_non_null(strstr(e->j.run.sum.error, "page 2 brought no coin the walk had not seen"));
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "usd"), 2);
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "eur"), 2);
    assert_int_equal(served(e, "/coins/markets", "page", "3"), 0);
    assert_int_equal(served(e, "/global", NULL, NULL), 1);
    /* The repeated page's rows are not handed on a second time. */
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * 100);
    assert_int_equal(e->mem.rows[BATCH_GLOBAL_SNAPSHOTS], 1);
    assert_true(source_errors("market_caps", "walk_stalled") == before + 2);
    assert_val_str(job_runs_val(e, 0, "status"), "partial");
}

/* A walk takes at most the listed coins / per_page pages plus a margin: with a list of 100
 * coins and 100 a page, three pages, although the markets go on for 600 coins. */
static void test_walk_is_bounded(void **state)
{
    struct env *e = *state;
    fault_short_list(e, 100);
    do_run(e, "prices"); /* resolves the universe: the 100-coin list */
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* coin-00003, -00012 and -00014 are not the universe's ids ("coin 00003", "_", "-2"). */
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * 97);

    double before = source_errors("market_caps", "walk_too_long");
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(strstr(e->j.run.sum.error, "still full pages after 3 pages (100 coins listed"));
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "usd"), 3);
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "eur"), 3);
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * 300);
    assert_int_equal(served(e, "/global", NULL, NULL), 1);
    assert_true(source_errors("market_caps", "walk_too_long") == before + 2);
}

/* An empty /coins/list, or one without a usable id, after a good one: nothing is delisted,
 * the run is partial, and the universe keeps the good list (issue 12, item 4). */
static void test_empty_list_delists_nothing(void **state)
{
    struct env *e = *state;
    do_run(e, "assets");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1);

    static const char *const bodies[] = {"[]", "[{},{\"symbol\":\"x\"},{\"id\":\"\"},7]"};
    for (size_t i = 0; i < 2; i++) {
        char fault[256];
        snprintf(fault, sizeof(fault), "{\"match\":\"/coins/list\",\"status\":200,\"body\":%s}",
                 bodies[i]);
        assert_int_equal(fakeapi_fault(e->j.fake, fault), 0);
        double before = source_errors("assets", "list_gutted");
        do_run(e, "assets");
        assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
        assert_non_null(strstr(e->j.run.sum.error, "the list has no usable coin id"));
        assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1); /* no second statement */
        assert_true(source_errors("assets", "list_gutted") == before + 1);
    }

    /* prices still tracks the 600 coins of the good list. */
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/list", NULL, NULL), 3);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * UNIVERSE);
}

/* A list that lost more than max_delist_percent (10) of the previous one is refused; one that
 * lost a few coins is not. */
static void test_gutted_list_delists_nothing(void **state)
{
    struct env *e = *state;
    do_run(e, "assets");
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1);

    fault_short_list(e, 100);
    do_run(e, "assets");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(
        strstr(e->j.run.sum.error, "of the 600 coins of the previous list are missing"));
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1);

    /* 590 coins (13 of the 600 gone: 2%) is believable: they are delisted. */
    fault_short_list(e, 590);
    do_run(e, "assets");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 2);

    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/simple/price", NULL, NULL) > 0, 1);
}

/* On the first run there is no previous list in memory: the database's count of listed
 * assets is the reference. */
static void test_gutted_list_first_run_checks_database(void **state)
{
    struct env *e = *state;
    e->mem.answer_reads = true;
    e->mem.db_listed = 600;
    fault_short_list(e, 100);
    do_run(e, "assets");
    assert_int_equal(e->mem.reads, 1);
    assert_non_null(strstr(e->mem.read_sql, "FROM assets WHERE delisted_at IS NULL"));
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(
        strstr(e->j.run.sum.error, "100 coins listed against 600 listed in the database"));
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 0);

    /* The whole list agrees with the database: delisting goes ahead. */
    do_run(e, "assets");
    assert_int_equal(e->mem.reads, 2);
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(e->mem.rows[BATCH_ASSETS_DELIST], 1);
}

/* A fault that answers the next request for `match` (with `params`, a JSON object) normally,
 * plus one element {"id": ID, "symbol": "x", "name": "x"} where ID is `rep` repeated n times
 * (rep is JSON string text, e.g. "\\u00e9"). */
static void fault_extra_coin(struct env *e, const char *match, const char *params, const char *rep,
                             unsigned n)
{
    size_t cap = 256 + strlen(params) + (size_t)n * strlen(rep), len = 0;
    char *json = malloc(cap);
    assert_non_null(json);
    len += (size_t)snprintf(json + len, cap - len,
                            "{\"match\":\"%s\",\"params\":%s,\"kind\":\"extend\","
                            "\"append\":[{\"id\":\"",
                            match, params);
    for (unsigned i = 0; i < n; i++)
        len += (size_t)snprintf(json + len, cap - len, "%s", rep);
    snprintf(json + len, cap - len, "\",\"symbol\":\"x\",\"name\":\"x\"}]}");
    assert_int_equal(fakeapi_fault(e->j.fake, json), 0);
    free(json);
}

/* Two ids in /coins/list that no request URL can hold (3,000 'é': 18,000 bytes encoded, more
 * than the path buffer; 9,000 'x': more than max_url_bytes): each is skipped and counted, and
 * every other coin is priced (issue 12, item 5). */
static void test_long_id_skipped_prices(void **state)
{
    struct env *e = *state;
    fault_extra_coin(e, "/coins/list", "{}", "\\u00e9", 3000);
    fault_extra_coin(e, "/coins/list", "{}", "x", 9000);
    do_run(e, "prices"); /* the first /coins/list: é */
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_string_equal(e->j.run.sum.error, "");
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * UNIVERSE);
    assert_true(e->j.run.sum.counted >= 1);

    do_run(e, "assets"); /* the second: x */
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    uint64_t before = e->mem.rows[BATCH_PRICES];
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(e->mem.rows[BATCH_PRICES] - before, 2 * UNIVERSE);
    assert_true(e->j.run.sum.counted >= 1);
}

static int setup_category(void **state)
{
    return setup_with(state, "[universe]\nvs_currencies = usd, eur\ncategories = layer-1\n");
}

/* The same for market_caps by ids: a category member whose id no URL can hold is skipped for
 * both currencies, the 300 other members are fetched. */
static void test_long_id_skipped_markets(void **state)
{
    struct env *e = *state;
    fault_extra_coin(e, "/coins/markets", "{\"category\":\"layer-1\",\"page\":\"1\"}", "x", 9000);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_string_equal(e->j.run.sum.error, "");
    /* 300 members at 250 ids a request: two requests per currency. */
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "eur"), 2);
    assert_int_equal(e->mem.rows[BATCH_MARKET_SNAPSHOTS], 2 * 300);
    assert_true(e->j.run.sum.counted >= 1);
}

/* /simple/price answering {} for every id is no success: the run is partial with a clear
 * error, and the last-success time stays where it was (issue 12, item 10). The same for
 * markets pages that are all empty. */
static void test_no_rows_is_not_ok(void **state)
{
    struct env *e = *state;
    const char *last = "job=\"prices\"";
    double before_ok = metrics_get("coingest_job_last_success_timestamp_seconds", last);
    double before = source_errors("prices", "no_rows");
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/simple/price\",\"status\":200,"
                                              "\"body\":{},\"count\":1000}"),
                     0);
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 0);
    assert_non_null(strstr(e->j.run.sum.error, "/simple/price: "));
    assert_non_null(strstr(e->j.run.sum.error, "successful answers, not one row, for 600 ids"));
    assert_val_str(job_runs_val(e, 0, "status"), "partial");
    assert_true(source_errors("prices", "no_rows") == before + 1);
    assert_true(metrics_get("coingest_job_last_success_timestamp_seconds", last) == before_ok);

    before = source_errors("market_caps", "no_rows");
    assert_int_equal(fakeapi_fault(e->j.fake, "{\"match\":\"/coins/markets\",\"status\":200,"
                                              "\"body\":[],\"count\":1000}"),
                     0);
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(
        strstr(e->j.run.sum.error, "/coins/markets: 2 successful answers, not one row"));
    assert_int_equal(e->mem.rows[BATCH_GLOBAL_SNAPSHOTS], 1); /* /global still comes */
    assert_true(source_errors("market_caps", "no_rows") == before + 1);
}

/* The registry: every job has a definition, a unique name and a source; the budget adds up. */
/* ---- /simple/price: the ids cap and 414 answers -------------------------------------------- */

/* What the fake API saw of /simple/price: the most ids one request carried, how many requests
 * were answered 414, and how many ids were answered 200 (all of them, and distinct ones). */
struct price_log {
    size_t max_ids, refused, answered_ids, distinct_ids;
};

static struct price_log price_log(struct env *e)
{
    struct price_log pl = {0};
    struct strlist answered = {0};
    json_t *log = fakeapi_log(e->j.fake, 0);
    assert_non_null(log);
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        const char *r = json_string_value(json_object_get(entry, "route"));
        if (!r || strcmp(r, "/simple/price") != 0)
            continue;
        const char *ids =
            json_string_value(json_object_get(json_object_get(entry, "params"), "ids"));
        assert_non_null(ids);
        json_int_t status = json_integer_value(json_object_get(entry, "status"));
        size_t n = 0;
        for (const char *p = ids; p;) {
            const char *comma = strchr(p, ',');
            size_t len = comma ? (size_t)(comma - p) : strlen(p);
            if (status == 200) {
                assert_int_equal(strlist_push(&answered, p, len), 0);
                pl.answered_ids++;
            }
            n++;
            p = comma ? comma + 1 : NULL;
        }
        if (n > pl.max_ids)
            pl.max_ids = n;
        if (status == 414)
            pl.refused++;
    }
    json_decref(log);
    strlist_sort_uniq(&answered);
    pl.distinct_ids = answered.n;
    strlist_clear(&answered);
    return pl;
}

#define BIG_UNIVERSE 1300

static int setup_big(void **state)
{
    static const char *const args[] = {"--universe", "1300", NULL};
    return setup_fake(state, args, "[universe]\nvs_currencies = usd\n");
}

/* 1,300 ids whose URL would hold ~600 a request: no request carries more than 500 (the
 * default max_ids_per_request), and every id is asked for once. */
static void test_prices_ids_cap(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    struct price_log pl = price_log(e);
    assert_int_equal(pl.max_ids, 500);
    assert_int_equal(pl.refused, 0);
    assert_int_equal(pl.answered_ids, BIG_UNIVERSE);
    assert_int_equal(pl.distinct_ids, BIG_UNIVERSE);
    assert_int_equal(e->mem.rows[BATCH_PRICES], BIG_UNIVERSE);

    /* The key lowers it. A reload hands the runner the new config while the old one still
     * exists (the sources compare the two), as the daemon does. */
    struct config *old = e->j.cfg;
    e->j.cfg = NULL;
    load_config(e, "max_ids_per_request = 200\n[universe]\nvs_currencies = usd\n");
    runner_set_config(e->j.rn, e->j.cfg);
    config_free(old);
    assert_int_equal(fakeapi_reset(e->j.fake), 0);
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    pl = price_log(e);
    assert_int_equal(pl.max_ids, 200);
    assert_int_equal(pl.distinct_ids, BIG_UNIVERSE);
}

/* An edge that refuses URLs over 3,000 bytes: each refused request is asked for again in
 * halves until the halves pass; no id is lost or asked for twice, and the run is ok. */
static int setup_414_url(void **state)
{
    static const char *const args[] = {"--universe", "1300", "--max-url-bytes", "3000", NULL};
    return setup_fake(state, args, "[universe]\nvs_currencies = usd, eur\n");
}

static void test_prices_414_splits(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_string_equal(e->j.run.sum.error, "");
    struct price_log pl = price_log(e);
    assert_true(pl.refused > 0);
    assert_true(pl.max_ids == 500); /* the first requests were refused, then halved */
    assert_int_equal(pl.answered_ids, BIG_UNIVERSE);
    assert_int_equal(pl.distinct_ids, BIG_UNIVERSE);
    assert_int_equal(e->mem.rows[BATCH_PRICES], e->j.cfg->universe.vs_currencies.n * BIG_UNIVERSE);
}

/* The same against an API whose own ids cap (70) is below the daemon's. */
static int setup_414_ids(void **state)
{
    static const char *const args[] = {"--universe", "1300", "--max-ids", "70", NULL};
    return setup_fake(state, args, "[universe]\nvs_currencies = usd\n");
}

/* An id that is refused even alone is a failed request, once; the run ends (no endless
 * halving). */
static int setup_414_always(void **state)
{
    static const char *const args[] = {"--universe", "600", "--max-url-bytes", "60", NULL};
    return setup_fake(
        state, args, "[universe]\nids = coin-00001, coin-00002, coin-00004\nvs_currencies = usd\n");
}

static void test_prices_414_single_id_fails(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    /* Partial: the coin list the ids are checked against came; not one price did. */
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(strstr(e->j.run.sum.error, "414"));
    struct price_log pl = price_log(e);
    assert_int_equal(pl.refused, 5); /* 3 ids, then 1 + 2, then the 2 as 1 + 1 */
    assert_int_equal(pl.answered_ids, 0);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 0);
}

static void test_registry_and_budget(void **state)
{
    struct env *e = *state;
    assert_true(source_count >= 1);
    assert_non_null(source_find("coingecko"));
    assert_null(source_find("nope"));
    size_t n = 0;
    for (size_t i = 0; i < source_count; i++)
        n += source_defs[i]->njobs;
    assert_int_equal(e->j.cfg->njobs, n);
    for (size_t i = 0; i < e->j.cfg->njobs; i++) {
        assert_non_null(e->j.cfg->jobs[i].def);
        assert_non_null(e->j.cfg->jobs[i].def->start);
        assert_int_equal(config_job_index(e->j.cfg, e->j.cfg->jobs[i].name), (int)i);
    }
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    assert_non_null(mem);
    assert_true(runner_print_budget(e->j.cfg, 600, mem));
    fclose(mem);
    /* assets 3, prices 1 part of 600 ids, market_caps 2 x 6 pages + /global. */
    assert_non_null(strstr(text, "job=assets requests_per_run=3 "));
    assert_non_null(strstr(text, "job=market_caps requests_per_run=13 "));
    assert_non_null(strstr(text, "source=coingecko"));
    free(text);

    /* Each job's source error reasons are on /metrics at 0 from the start. */
    size_t mlen = 0;
    char *m = metrics_render(&mlen);
    assert_non_null(m);
    assert_non_null(strstr(m, "coingest_source_errors_total{api=\"coingecko\",job=\"prices\","
                              "reason=\"no_rows\"}"));
    assert_non_null(strstr(m, "coingest_source_errors_total{api=\"coingecko\",job=\"assets\","
                              "reason=\"list_gutted\"}"));
    free(m);
}

/* ---- vs_currencies checked against /simple/supported_vs_currencies ------------------------- */

static int setup_bad_vs(void **state)
{
    return setup_with(state, "[universe]\nvs_currencies = usd, dollars, eur\n");
}

/* A currency CoinGecko does not list is reported, counted and left out of the requests; the
 * others are fetched as usual. */
static void test_unsupported_vs_currency(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_true(e->j.run.sum.counted >= 1);
    assert_int_equal(served(e, "/simple/supported_vs_currencies", NULL, NULL), 1);
    assert_int_equal(e->mem.rows[BATCH_PRICES], 2 * UNIVERSE); /* usd and eur */
    /* job_runs keeps the kind apart from the other counts. */
    const struct val *detail = job_runs_val(e, 0, "counted_detail");
    assert_int_equal(detail->type, VAL_STR);
    char *text = strndup(detail->u.s, detail->len);
    assert_non_null(text);
    assert_non_null(strstr(text, "\"unsupported_vs_currencies\":1"));
    free(text);
    assert_int_equal(job_runs_val(e, 0, "counted")->u.i, (int64_t)e->j.run.sum.counted);
    json_t *log = fakeapi_log(e->j.fake, 0);
    size_t i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        const char *vs =
            json_string_value(json_object_get(json_object_get(entry, "params"), "vs_currencies"));
        if (vs)
            assert_string_equal(vs, "usd,eur");
    }
    json_decref(log);
    /* market_caps knows the codes now: no currency walk for "dollars". */
    do_run(e, "market_caps");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(served(e, "/coins/markets", "vs_currency", "dollars"), 0);
}

/* ---- the monthly ledger -------------------------------------------------------------------- */

static int setup_credits(void **state)
{
    return setup_with(state, "monthly_credits = 50\ncredit_reserve = 0\n"
                             "[universe]\nvs_currencies = usd\n");
}

/* 50 credits, no reserve: the runs send exactly 50 requests in all, then refuse with one
 * clear error; a new runner (a restart) reads the month's count back and sends nothing. */
static void test_monthly_credits_cap(void **state)
{
    struct env *e = *state;
    unsigned runs = 0;
    uint64_t sent = 0;
    for (; runs < 100; runs++) {
        do_run(e, "prices");
        sent += e->j.run.sum.requests;
        if (strstr(e->j.run.sum.error, "monthly credits"))
            break;
    }
    assert_true(runs < 100);
    assert_int_equal(sent, 50);
    assert_int_equal(served(e, "/simple/price", NULL, NULL) + served(e, "/coins/list", NULL, NULL) +
                         served(e, "/simple/supported_vs_currencies", NULL, NULL),
                     50);
    assert_non_null(strstr(e->j.run.sum.error, "monthly credits exhausted: 50 of 50 used; requests "
                                               "resume on "));
    assert_int_equal(e->mem.usage_calls, 50); /* written at the run's end */
    assert_int_equal(e->mem.usage_reads, 1);  /* read once, at first use */

    /* Another run refuses again, without sending. */
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_FAILED);
    assert_int_equal(e->j.run.sum.requests, 0);

    /* A restart: the count comes back from the store, nothing is sent. */
    runner_free(e->j.rn);
    e->j.rn = NULL;
    struct store store = {.submit = mem_submit, .read = mem_read, .ctx = &e->mem};
    assert_non_null(e->j.rn = runner_new(e->j.cfg, e->j.apis, store));
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.status, RUN_FAILED);
    assert_int_equal(e->j.run.sum.requests, 0);
    assert_int_equal(e->mem.usage_reads, 2);
    assert_non_null(strstr(e->j.run.sum.error, "50 of 50 used"));
    assert_int_equal(served(e, "/simple/price", NULL, NULL) + served(e, "/coins/list", NULL, NULL) +
                         served(e, "/simple/supported_vs_currencies", NULL, NULL),
                     50);
}

/* A restart continues a month the store already counts: 45 used, 5 more are sent. */
static void test_monthly_credits_restored(void **state)
{
    struct env *e = *state;
    e->mem.usage_calls = 45;
    uint64_t sent = 0;
    for (unsigned runs = 0; runs < 10; runs++) {
        do_run(e, "prices");
        sent += e->j.run.sum.requests;
        if (strstr(e->j.run.sum.error, "monthly credits"))
            break;
    }
    assert_int_equal(sent, 5);
    assert_int_equal(e->mem.usage_calls, 50);
    assert_non_null(strstr(e->j.run.sum.error, "50 of 50 used"));
}

/* A takeover's re-read of the month (runner_ledger_reread) that answers before this process's
 * own last write has committed does not lower its count: the next write carries on from
 * what it knew. */
static void test_ledger_reread_keeps_own_count(void **state)
{
    struct env *e = *state;
    do_run(e, "prices");
    uint64_t first = e->j.run.sum.requests;
    assert_true(first > 0);
    assert_int_equal(e->mem.usage_calls, first);
    e->mem.usage_calls = 0; /* the write is not visible to the read yet */
    runner_ledger_reread(e->j.rn, e->j.cfg->jobs[job(e, "prices")].source);
    do_run(e, "prices");
    assert_true(e->j.run.sum.requests > 0);
    assert_int_equal(e->mem.usage_calls, first + e->j.run.sum.requests);
}

/* Within the month, the month's turn changes nothing (the month stays spent) and says how
 * long until the next one begins (the daemon's timer). */
static void test_month_tick_within_the_month(void **state)
{
    struct env *e = *state;
    e->mem.usage_calls = 50;
    do_run(e, "prices");
    assert_non_null(strstr(e->j.run.sum.error, "50 of 50 used"));
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    time_t now = ts.tv_sec;
    struct tm tm;
    gmtime_r(&now, &tm);
    tm.tm_mday = 1;
    tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
    tm.tm_mon += 1; /* timegm normalises December + 1 */
    int64_t to_next_s = (int64_t)timegm(&tm) - (int64_t)now;
    uint64_t ms = runner_month_tick(e->j.rn);
    assert_true(ms > 0 && ms <= 31ull * 86400 * 1000);
    /* the same turn, up to the seconds between the two clock readings */
    assert_true(llabs((int64_t)(ms / 1000) - to_next_s) <= 2);
    do_run(e, "prices");
    assert_int_equal(e->j.run.sum.requests, 0);
    assert_non_null(strstr(e->j.run.sum.error, "monthly credits"));
}

int main(void)
{
    if (!fakeapi_available()) {
        printf("test_jobs: skipped: the fake API (python3 and FAKEAPI) is not available\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_assets, setup, teardown),
        cmocka_unit_test_setup_teardown(test_prices_resolves_on_demand, setup, teardown),
        cmocka_unit_test_setup_teardown(test_market_caps_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_429_resumes_the_walk, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_in_flight_keeps_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_in_flight_stops_at_short_page, setup, teardown),
        cmocka_unit_test_setup_teardown(test_failed_request_fails_the_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_partial_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_and_cancel, setup, teardown),
        cmocka_unit_test_setup_teardown(test_cancel_one_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_store_refuses, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_accepted_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_refused_later, setup, teardown),
        cmocka_unit_test_setup_teardown(test_top_n, setup_top, teardown),
        cmocka_unit_test_setup_teardown(test_explicit_ids, setup_ids, teardown),
        cmocka_unit_test_setup_teardown(test_walk_ignoring_page_stops, setup, teardown),
        cmocka_unit_test_setup_teardown(test_walk_is_bounded, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_list_delists_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gutted_list_delists_nothing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_gutted_list_first_run_checks_database, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_long_id_skipped_prices, setup, teardown),
        cmocka_unit_test_setup_teardown(test_long_id_skipped_markets, setup_category, teardown),
        cmocka_unit_test_setup_teardown(test_no_rows_is_not_ok, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unknown_ids_reported, setup_unknown_ids, teardown),
        cmocka_unit_test_setup_teardown(test_prices_ids_cap, setup_big, teardown),
        cmocka_unit_test_setup_teardown(test_prices_414_splits, setup_414_url, teardown),
        cmocka_unit_test_setup_teardown(test_prices_414_splits, setup_414_ids, teardown),
        cmocka_unit_test_setup_teardown(test_prices_414_single_id_fails, setup_414_always,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_registry_and_budget, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsupported_vs_currency, setup_bad_vs, teardown),
        cmocka_unit_test_setup_teardown(test_monthly_credits_cap, setup_credits, teardown),
        cmocka_unit_test_setup_teardown(test_monthly_credits_restored, setup_credits, teardown),
        cmocka_unit_test_setup_teardown(test_reload_mid_run, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ledger_reread_keeps_own_count, setup_credits,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_month_tick_within_the_month, setup_credits, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
