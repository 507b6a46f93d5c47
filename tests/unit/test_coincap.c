/*
 * test_coincap: the CoinCap v3 source's parsers on the recorded responses
 * (tests/fixtures/coincap/): the v3 single-asset body (numbers sent as strings, read to the
 * last digit), the v2-shaped 10- and 1000-asset lists (nulls kept as unknown), the history
 * bodies kept to their window, and the v2 shutdown notice refused with its message. And the
 * coincap_history job under the runner with an in-memory store against tests/fakeapi/coincap.py:
 * ids mapped onto canonical ids, every day stored once, a window that fails for good ends only
 * its asset, and the next run resumes from the marks (the backfill walk, backfill.h).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "testdb.h"

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "fakeapi_proc.h"
#include "memstore.h"
#include "sources/coincap/coincap.h"

#define WAIT_MS 30000
#define DAY_MS  86400000LL

/* A recorded CoinCap body from tests/fixtures/coincap/ (testdb_read_fixture). */
static char *load_fixture(const char *name, size_t *len)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "coincap/%s", name);
    char *buf = testdb_read_fixture(rel, len);
    assert_non_null(buf);
    return buf;
}

static void test_v3_asset(void **state)
{
    (void)state;
    size_t len;
    char *body = load_fixture("v3_assets_bitcoin_2026-04-06.json", &len);
    struct coincap_assets l = {0};
    uint64_t skipped = 0, bad = 0;
    char err[256];
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(skipped + bad, 0);
    assert_int_equal(l.timestamp_ms, 1775474489690LL);
    const struct coincap_asset *a = &l.items[0];
    assert_string_equal(a->id, "bitcoin");
    assert_string_equal(a->symbol, "BTC");
    assert_string_equal(a->name, "Bitcoin");
    assert_int_equal(a->naddresses, 0);
    assert_true(a->rank == 1);
    /* Each the double nearest to its text. */
    assert_true(a->price == strtod("69704.779999999998835847", NULL));
    assert_true(a->supply == 20012087.0);
    assert_true(a->max_supply == 21000000.0);
    assert_true(a->market_cap == strtod("1394938121675.859863281250000000", NULL));
    assert_true(a->volume_24h == strtod("30717175906.604835510253906250", NULL));
    assert_true(a->change_24h_pct == 3.934756709445493);
    assert_true(a->vwap_24h == 68412.29711944099);
    coincap_assets_clear(&l);
    free(body);
}

static void test_lists(void **state)
{
    (void)state;
    size_t len;
    char err[256];
    char *body = load_fixture("v2_assets_limit10_2021-10-27.json", &len);
    struct coincap_assets l = {0};
    uint64_t skipped = 0, bad = 0;
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 10);
    assert_string_equal(l.items[1].id, "ethereum");
    assert_true(isnan(l.items[1].max_supply)); /* null: unknown */
    assert_true(l.items[1].rank == 2);
    free(body);

    body = load_fixture("v2_assets_limit1000_2020-02-10_tabs.json", &len);
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1010);
    assert_int_equal(skipped + bad, 0);
    size_t no_max = 0, no_vwap = 0;
    for (size_t i = 10; i < l.n; i++) {
        assert_false(isnan(l.items[i].price)); /* priceUsd is never null */
        assert_true(l.items[i].rank == (double)(i - 9));
        no_max += isnan(l.items[i].max_supply);
        no_vwap += isnan(l.items[i].vwap_24h);
    }
    assert_int_equal(no_max, 798);
    assert_int_equal(no_vwap, 370);
    free(body);

    /* The retired v2's notice: refused with its message; the list as it was. */
    body = load_fixture("v2_assets_deprecation_notice_2025-04-16.json", &len);
    assert_int_equal(coincap_parse_assets(body, len, &l, NULL, NULL, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "We are deprecating this version"));
    assert_int_equal(l.n, 1010);
    char msg[256];
    assert_int_equal(coincap_error_message(body, len, msg, sizeof(msg)), 0);
    assert_non_null(strstr(msg, "V3 API"));
    free(body);

    /* Elements without a usable id are skipped; numbers that are not are counted. */
    const char *odd =
        "{\"data\":[{\"id\":\"\"},7,{\"id\":\"x\",\"priceUsd\":\"abc\",\"rank\":\"1.5\","
        "\"tokens\":{\"1\":[\"0xabc\"],\"56\":[\"0xdef\",3]}}],\"timestamp\":5}";
    struct coincap_assets o = {0};
    skipped = bad = 0;
    assert_int_equal(coincap_parse_assets(odd, strlen(odd), &o, &skipped, &bad, err, sizeof(err)),
                     0);
    assert_int_equal(o.n, 1);
    assert_int_equal(skipped, 2);
    assert_int_equal(bad, 2);
    assert_int_equal(o.items[0].naddresses, 2);
    assert_true(isnan(o.items[0].price) && isnan(o.items[0].rank));
    const char *e = "{\"error\":\"Unauthorized\"}";
    assert_int_equal(coincap_parse_assets(e, strlen(e), &o, NULL, NULL, err, sizeof(err)),
                     -EBADMSG);
    assert_non_null(strstr(err, "Unauthorized"));
    coincap_assets_clear(&o);
    coincap_assets_clear(&l);
}

static void test_history(void **state)
{
    (void)state;
    size_t len;
    char err[256];
    char *body = load_fixture("v2_assets_ark_history_h1_24rows_2020-02-10_tabs.json", &len);
    struct batch *b = batch_new(BATCH_PRICES, 8);
    assert_non_null(b);
    /* 24 hours from 2020-02-09T14:00Z; the window keeps the first 10. */
    struct coincap_history_req q = {.asset_id = "ark",
                                    .from_ms = 1581256800000LL,
                                    .to_ms = 1581256800000LL + 10 * 3600000LL,
                                    .fetched_ms = 1700000000000LL};
    struct coincap_history_stats st = {0};
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.points, 24);
    assert_int_equal(st.rows, 10);
    assert_int_equal(st.outside, 14);
    assert_int_equal(b->nrows, 10);
    assert_int_equal(batch_val(b, 0, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i, 1581256800000LL);
    assert_true(batch_val(b, 0, BATCH_PRICES_COL_PRICE)->u.d == 0.2085129692407258);
    free(body);

    body =
        load_fixture("v2_assets_bitcoin_history_d1_8rows-trimmed_2021-04-12_pyliteral.json", &len);
    q = (struct coincap_history_req){"bitcoin", 0, 4000000000000LL, 1};
    memset(&st, 0, sizeof(st));
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.rows, 8);
    assert_true(batch_val(b, 10, BATCH_PRICES_COL_PRICE)->u.d == 29232.6707650537687673);
    free(body);

    /* The notice is refused; nothing added. */
    body = load_fixture("v2_assets_deprecation_notice_2025-04-16.json", &len);
    uint32_t before = b->nrows;
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "deprecating"));
    assert_int_equal(b->nrows, before);
    free(body);
    batch_free(b);
}

/* ---- the coincap_history job -------------------------------------------------------------- */

struct env {
    struct fakeapi *fake;
    uv_loop_t loop;
    struct timers *timers;
    struct fetcher *f;
    struct api *apis[8];
    struct config *cfg;
    struct runner *rn;
    struct memstore mem;
    char conf[PATH_MAX];
    bool done;
    struct run_summary sum;
};

/* The canonical assets the store's universe read answers. */
static const char *const universe[] = {
    "bitcoin",     "btc", "Bitcoin",  NULL, "1300000000000",
    "ethereum",    "eth", "Ethereum", NULL, "400000000000",
    "binancecoin", "bnb", "BNB",      NULL, "90000000000",
};

static void on_run_done(const struct run_summary *s, void *arg)
{
    struct env *e = arg;
    e->sum = *s;
    e->done = true;
}

static void deadline_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

static void do_run(struct env *e)
{
    int i = config_job_index(e->cfg, "coincap_history");
    assert_true(i >= 0);
    e->done = false;
    assert_int_equal(runner_start(e->rn, (size_t)i, on_run_done, e), 0);
    bool expired = false;
    uv_timer_t t;
    uv_timer_init(&e->loop, &t);
    t.data = &expired;
    uv_timer_start(&t, deadline_cb, WAIT_MS, 0);
    while (!e->done && !expired)
        uv_run(&e->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(&e->loop, UV_RUN_NOWAIT);
    if (!e->done)
        fail_msg("the run did not finish within %d ms", WAIT_MS);
}

static int setup(void **state)
{
    if (!fakeapi_available())
        skip();
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    static const char *const args[] = {"--gaps", "7", NULL};
    e->fake = fakeapi_start_script("coincap.py", "/v3", args);
    assert_non_null(e->fake);
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->timers = timers_new(&e->loop);
    e->f = fetcher_new(&e->loop, e->timers);
    assert_non_null(e->f);
    e->mem.loop = &e->loop;
    e->mem.can_read = true;
    e->mem.assets = universe;
    e->mem.nassets = sizeof(universe) / sizeof(universe[0]) / 5;
    snprintf(e->conf, sizeof(e->conf), "/tmp/test_coincap.%d.conf", (int)getpid());
    FILE *fp = fopen(e->conf, "w");
    assert_non_null(fp);
    fprintf(fp,
            "[source.coingecko]\nenabled = false\n[source.analytics]\nenabled = false\n"
            "[source.coincap]\nenabled = true\nbase_url = %s\napi_key = test-key-123456\n"
            "rate_limit = 1000/s\nburst = 100\nbackoff_base = 10ms\nbackoff_cap = 50ms\n"
            "max_retries = 1\n"
            "[job.coincap_history]\nids = bitcoin, ethereum, binance-coin\ninterval = d1\n"
            "days = 30\n[aliases]\ncoincap.binance-coin = binancecoin\n",
            fakeapi_base_url(e->fake));
    fclose(fp);
    char err[1024];
    if (config_load(e->conf, &e->cfg, err, sizeof(err)) != 0)
        fail_msg("config: %s", err);
    for (size_t i = 0; i < e->cfg->nsources && i < 8; i++)
        if (e->cfg->sources[i].enabled && e->cfg->sources[i].def->nplans)
            assert_non_null(e->apis[i] = api_new(e->f, &e->cfg->sources[i]));
    e->rn = runner_new(e->cfg, e->apis, memstore_store(&e->mem));
    assert_non_null(e->rn);
    *state = e;
    return 0;
}

static void fetcher_gone(void *arg)
{
    (void)arg;
}

static int teardown(void **state)
{
    struct env *e = *state;
    runner_free(e->rn);
    for (size_t i = 0; i < 8; i++)
        api_free(e->apis[i]);
    fetcher_free(e->f, fetcher_gone, NULL);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    timers_free(e->timers);
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    config_free(e->cfg);
    memstore_clear(&e->mem);
    fakeapi_stop(e->fake);
    unlink(e->conf);
    free(e);
    return 0;
}

/* History requests of the fake's log after seq `since`; *last gets the last seq. */
static size_t history_requests(struct env *e, const char *asset, long since, long *last)
{
    json_t *log = fakeapi_log(e->fake, since);
    assert_non_null(log);
    size_t n = 0, i;
    json_t *it;
    char want[64];
    snprintf(want, sizeof(want), "/assets/%s/history", asset);
    json_array_foreach(log, i, it)
    {
        const char *route = json_string_value(json_object_get(it, "route"));
        n += route && strcmp(route, want) == 0;
        if (last)
            *last = (long)json_integer_value(json_object_get(it, "seq"));
    }
    json_decref(log);
    return n;
}

/* Days held for a canonical asset, after checking each is unique and on 00:00 UTC. */
static size_t days_of(const struct memstore *m, const char *asset_id)
{
    const struct batch *b = m->kept[BATCH_PRICES];
    size_t n = 0;
    for (uint32_t i = 0; b && i < b->nrows; i++) {
        char a[64];
        if (strcmp(memstore_str(b, i, BATCH_PRICES_COL_ASSET_ID, a, sizeof(a)), asset_id) != 0)
            continue;
        int64_t t = batch_val(b, i, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i;
        assert_int_equal(t % DAY_MS, 0);
        for (uint32_t k = 0; k < i; k++) {
            char c[64];
            if (strcmp(memstore_str(b, k, BATCH_PRICES_COL_ASSET_ID, c, sizeof(c)), asset_id) == 0)
                assert_true(batch_val(b, k, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i != t);
        }
        n++;
    }
    return n;
}

static void test_history_job_resumes(void **state)
{
    struct env *e = *state;
    /* ethereum's window fails for good (1 retry): that asset ends there, the others go on. */
    assert_int_equal(fakeapi_fault(e->fake, "{\"match\": \"/assets/ethereum/history\", "
                                            "\"status\": 500, \"count\": 2}"),
                     0);
    long seq = 0;
    do_run(e);
    assert_int_equal(e->sum.status, RUN_PARTIAL);
    size_t btc = days_of(&e->mem, "bitcoin"), bnb = days_of(&e->mem, "binancecoin");
    assert_true(btc >= 20 && btc <= 30); /* 30 days less the fake's gaps (1 in 7) */
    assert_true(bnb >= 20 && bnb <= 30);
    assert_int_equal(days_of(&e->mem, "ethereum"), 0);
    assert_int_equal(e->mem.kept[BATCH_CANDLE_FILL]->nrows, 2);
    assert_int_equal(history_requests(e, "ethereum", 0, &seq), 2);

    /* The next run asks only for ethereum's window. */
    do_run(e);
    assert_int_equal(e->sum.status, RUN_OK);
    long seq2 = seq;
    assert_int_equal(history_requests(e, "ethereum", seq, &seq2), 1);
    assert_int_equal(history_requests(e, "bitcoin", seq, NULL), 0);
    assert_int_equal(history_requests(e, "binance-coin", seq, NULL), 0);
    size_t eth = days_of(&e->mem, "ethereum");
    assert_true(eth >= 20 && eth <= 30);
    assert_int_equal(days_of(&e->mem, "bitcoin"), btc);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v3_asset),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_history),
        cmocka_unit_test_setup_teardown(test_history_job_resumes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
