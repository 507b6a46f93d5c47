/*
 * test_coinbase: the Coinbase Exchange source.
 *
 * Parsers on the recorded responses (tests/fixtures/coinbase/): the 572-product list, candle
 * pages kept to their window (the recorded consecutive pages share one candle: stored once),
 * numbers to the last digit, candles of the wrong shape skipped, the {"message"} error body
 * refused with its message.
 *
 * The coinbase_candles job under the runner against tests/fakeapi/coinbase.py (trade-less
 * hours, an extra candle before every window) with an in-memory store that answers the job's
 * reads from what it collected: base currencies mapped (an override, a dominant symbol) and an
 * ambiguous one listed and not fetched; windows of at most 300 candles; a run whose product
 * fails halfway is resumed by the next run from where the store says it got, and the two runs
 * together hold exactly the candles one uninterrupted run holds, each once.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "testdb.h"
#include <uv.h>

#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/timers.h"
#include "fakeapi_proc.h"
#include "memstore.h"
#include "jobenv.h"
#include "sources/coinbase/coinbase.h"

#define WAIT_MS 60000

/* A recorded Coinbase body from tests/fixtures/coinbase/ (testdb_read_fixture). */
static char *load_fixture(const char *name, size_t *len)
{
    return testdb_fixture("coinbase", name, len);
}

/* ---- parsers ---------------------------------------------------------------------------- */

static void test_products(void **state)
{
    (void)state;
    size_t len;
    char *body = load_fixture("products_572rows_2022-11-24.json", &len);
    struct coinbase_products l = {0};
    uint64_t skipped = 0;
    char err[256];
    assert_int_equal(coinbase_parse_products(body, len, &l, &skipped, err, sizeof(err)), 0);
    assert_int_equal(l.n, 572);
    assert_int_equal(skipped, 0);
    size_t online = 0, usd = 0;
    for (size_t i = 0; i < l.n; i++) {
        online += l.items[i].online;
        usd += strcmp(l.items[i].quote, "USD") == 0;
    }
    assert_int_equal(online, 545); /* 27 delisted, trading disabled */
    assert_int_equal(usd, 235);
    assert_string_equal(l.items[0].id, "AAVE-GBP");
    assert_string_equal(l.items[0].base, "AAVE");
    free(body);

    /* The error shape is refused, the list as it was. */
    const char *e = "{\"message\":\"Public rate limit exceeded\"}";
    assert_int_equal(coinbase_parse_products(e, strlen(e), &l, NULL, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "Public rate limit exceeded"));
    assert_int_equal(l.n, 572);
    coinbase_products_clear(&l);
}

static struct coinbase_candle_req req(int64_t from, int64_t to)
{
    return (struct coinbase_candle_req){.product = "BTC-USD",
                                        .asset_id = "bitcoin",
                                        .vs_currency = "usd",
                                        .interval_s = 3600,
                                        .from_s = from,
                                        .to_s = to,
                                        .fetched_ms = 1700000000000};
}

static void test_candles(void **state)
{
    (void)state;
    char err[256];
    size_t len1, len2;
    char *p1 = load_fixture("candles_BTC-USD_g3600_300rows_2020-03-09..21.json", &len1);
    char *p2 = load_fixture("candles_BTC-USD_g3600_36rows_2020-03-21..22.json", &len2);
    struct batch *b = batch_new(BATCH_CANDLES, 16);
    assert_non_null(b);

    /* Two recorded pages of one backfill, windows edge to edge: the shared candle
     * (1584792000) belongs to the second window only. */
    struct coinbase_candle_stats st = {0};
    struct coinbase_candle_req q = req(1583712000, 1584792000);
    assert_int_equal(coinbase_parse_candles(p1, len1, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.candles, 300);
    assert_int_equal(st.rows, 300 - 1);
    assert_int_equal(st.outside, 1);
    q = req(1584792000, 1584792000 + 300 * 3600);
    memset(&st, 0, sizeof(st));
    assert_int_equal(coinbase_parse_candles(p2, len2, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.rows, 36);
    assert_int_equal(b->nrows, 335);
    for (uint32_t i = 1; i < b->nrows; i++) {
        int64_t t = batch_val(b, i, BATCH_CANDLES_COL_OPEN_TIME)->u.i;
        for (uint32_t k = 0; k < i; k++)
            assert_true(batch_val(b, k, BATCH_CANDLES_COL_OPEN_TIME)->u.i != t);
    }
    /* The newest row of the second page, [1584918000, 5821.33, 5881.11, 5881.09, 5836.23,
     * 5953.66542637]: every number to the last digit, in its column. */
    uint32_t r = 299;
    assert_int_equal(batch_val(b, r, BATCH_CANDLES_COL_OPEN_TIME)->u.i, 1584918000000LL);
    assert_true(batch_val(b, r, BATCH_CANDLES_COL_LOW)->u.d == 5821.33);
    assert_true(batch_val(b, r, BATCH_CANDLES_COL_HIGH)->u.d == 5881.11);
    assert_true(batch_val(b, r, BATCH_CANDLES_COL_OPEN)->u.d == 5881.09);
    assert_true(batch_val(b, r, BATCH_CANDLES_COL_CLOSE)->u.d == 5836.23);
    assert_true(batch_val(b, r, BATCH_CANDLES_COL_VOLUME)->u.d == 5953.66542637);
    assert_int_equal(batch_val(b, r, BATCH_CANDLES_COL_INTERVAL_S)->u.i, 3600);
    char s[64];
    assert_string_equal(memstore_str(b, r, BATCH_CANDLES_COL_ASSET_ID, s, sizeof(s)), "bitcoin");
    assert_string_equal(memstore_str(b, r, BATCH_CANDLES_COL_SOURCE, s, sizeof(s)), "coinbase");
    assert_string_equal(memstore_str(b, r, BATCH_CANDLES_COL_PRODUCT, s, sizeof(s)), "BTC-USD");
    free(p1);
    free(p2);

    /* Wrong shapes are skipped and counted; a misaligned time too. */
    const char *odd = "[[1584792000,1,2,3,4,5],[1,2,3],\"x\",[1584792000.5,1,2,3,4,5],"
                      "[1584793800,1,2,3,4,5],[1584795600,\"1\",2,3,4,5,\"extra\"]]";
    memset(&st, 0, sizeof(st));
    uint32_t before = b->nrows;
    q = req(0, 4000000000);
    assert_int_equal(coinbase_parse_candles(odd, strlen(odd), &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.bad, 3);
    assert_int_equal(st.misaligned, 1);
    assert_int_equal(b->nrows - before, 2);

    /* The 400 body: refused with its message; nothing added. */
    size_t elen;
    char *e = load_fixture("error_400_candles_too_many_aggregations_as_quoted.json", &elen);
    before = b->nrows;
    assert_int_equal(coinbase_parse_candles(e, elen, &q, b, &st, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "exceeds 300"));
    assert_int_equal(b->nrows, before);
    free(e);
    batch_free(b);
}

/* ---- the job ------------------------------------------------------------------------------ */

struct env {
    struct jobenv j;
    struct memstore mem;
};

/* The canonical assets the store's universe read answers. */
static const char *const assets[] = {
    "bitcoin",  "btc", "Bitcoin",  NULL, "1300000000000",
    "batcat",   "btc", "BatCat",   NULL, "20000",
    "dup-one",  "dup", "Dup One",  NULL, "5000000",
    "dup-two",  "dup", "Dup Two",  NULL, "4000000",
    "ethereum", "eth", "Ethereum", NULL, "400000000000",
};

static void do_run(struct env *e)
{
    jobenv_run(&e->j, "coinbase_candles", WAIT_MS);
}

static void start_runner(struct env *e)
{
    jobenv_load(
        &e->j,
        "[source.coingecko]\nenabled = false\n"
        "[source.coinbase]\nenabled = true\nbase_url = %s\nrate_limit = 1000/s\nburst = 100\n"
        "backoff_base = 10ms\nbackoff_cap = 50ms\nmax_retries = 2\n"
        "products = BTC-USD, ETH-EUR, NOPE-USD\nquote_currencies = usd\n"
        "[job.coinbase_candles]\ngranularity = 3600\ndays = 30\n"
        "[aliases]\ncoinbase.ETH = ethereum\n",
        fakeapi_base_url(e->j.fake));
    jobenv_start(&e->j, memstore_store(&e->mem));
}

static int setup(void **state)
{
    if (!fakeapi_available())
        skip();
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    static const char *const args[] = {"--products",     "BTC-USD,ETH-USD,ETH-EUR,DUP-USD,BTC-EUR",
                                       "--gaps",         "9",
                                       "--extra-candle", NULL};
    jobenv_init(&e->j, fakeapi_start_script("coinbase.py", "", args), "test_coinbase");
    e->mem.loop = &e->j.loop;
    e->mem.can_read = true;
    e->mem.assets = assets;
    e->mem.nassets = sizeof(assets) / sizeof(assets[0]) / 5;
    start_runner(e);
    *state = e;
    return 0;
}

static int teardown(void **state)
{
    struct env *e = *state;
    jobenv_stop(&e->j);
    jobenv_close(&e->j);
    memstore_clear(&e->mem);
    free(e);
    return 0;
}

/* Candles held for `product` opening before `before_ms`, after checking there is no
 * duplicate among them. */
static size_t candles_of(const struct memstore *m, const char *product, int64_t before_ms)
{
    const struct batch *b = m->kept[BATCH_CANDLES];
    size_t n = 0;
    for (uint32_t i = 0; b && i < b->nrows; i++) {
        char p[64];
        int64_t t = batch_val(b, i, BATCH_CANDLES_COL_OPEN_TIME)->u.i;
        if (strcmp(memstore_str(b, i, BATCH_CANDLES_COL_PRODUCT, p, sizeof(p)), product) != 0 ||
            t >= before_ms)
            continue;
        assert_int_equal(t % 3600000, 0);
        for (uint32_t k = i + 1; k < b->nrows; k++) {
            char q[64];
            if (batch_val(b, k, BATCH_CANDLES_COL_OPEN_TIME)->u.i == t &&
                strcmp(memstore_str(b, k, BATCH_CANDLES_COL_PRODUCT, q, sizeof(q)), product) == 0)
                fail_msg("candle %s %lld stored twice", product, (long long)t);
        }
        n++;
    }
    return n;
}

/* The fake's log: candle requests for `product`, each checked for a window of <= 300. */
static size_t candle_requests(struct env *e, const char *product, long since)
{
    json_t *log = fakeapi_log(e->j.fake, since);
    assert_non_null(log);
    char path[128];
    snprintf(path, sizeof(path), "/products/%s/candles", product);
    size_t n = 0, i;
    json_t *entry;
    json_array_foreach(log, i, entry)
    {
        const char *p = json_string_value(json_object_get(entry, "path"));
        const char *ua =
            json_string_value(json_object_get(json_object_get(entry, "headers"), "user-agent"));
        assert_non_null(ua); /* Coinbase requires a User-Agent */
        if (!p || strcmp(p, path) != 0)
            continue;
        json_t *params = json_object_get(entry, "params");
        assert_string_equal(json_string_value(json_object_get(params, "granularity")), "3600");
        int64_t a, b;
        assert_int_equal(
            util_parse_iso8601(json_string_value(json_object_get(params, "start")), &a), 0);
        assert_int_equal(util_parse_iso8601(json_string_value(json_object_get(params, "end")), &b),
                         0);
        assert_true((b - a) / 3600000 + 1 <= COINBASE_MAX_CANDLES);
        n++;
    }
    json_decref(log);
    return n;
}

static long last_seq(struct env *e)
{
    char *resp = NULL;
    assert_int_equal(fakeapi_control(e->j.fake, "GET", "/_control/state", NULL, &resp), 200);
    json_t *st = json_loads(resp, 0, NULL);
    free(resp);
    long seq = (long)json_integer_value(json_object_get(st, "last_seq"));
    json_decref(st);
    return seq;
}

static void test_job_maps_and_resumes(void **state)
{
    struct env *e = *state;
    /* Run 1: ETH-USD fails for good on its second window (the first answer, then 500s). */
    assert_int_equal(fakeapi_fault(e->j.fake,
                                   "{\"kind\":\"status\",\"status\":500,\"count\":3,"
                                   "\"match\":\"/products/ETH-USD/candles\",\"skip\":1}"),
                     0);
    do_run(e);
    int64_t end_ms = (int64_t)(e->j.run.sum.started_wall_ms / 1000 - 120) / 3600 * 3600 * 1000;
    assert_int_equal(e->j.run.sum.status, RUN_PARTIAL);
    assert_non_null(strstr(e->j.run.sum.error, "ETH-USD"));

    /* Aliases: BTC by its dominant market cap, ETH by the override, DUP listed, not fetched. */
    const struct batch *al = e->mem.kept[BATCH_ASSET_ALIASES];
    assert_non_null(al);
    assert_int_equal(al->nrows, 3);
    for (uint32_t i = 0; i < al->nrows; i++) {
        char k[32], m[32], id[32];
        memstore_str(al, i, BATCH_ASSET_ALIASES_COL_SOURCE_KEY, k, sizeof(k));
        memstore_str(al, i, BATCH_ASSET_ALIASES_COL_METHOD, m, sizeof(m));
        const char *a = memstore_str(al, i, BATCH_ASSET_ALIASES_COL_ASSET_ID, id, sizeof(id));
        if (strcmp(k, "BTC") == 0) {
            assert_string_equal(m, "symbol_market_cap");
            assert_string_equal(a, "bitcoin");
        } else if (strcmp(k, "ETH") == 0) {
            assert_string_equal(m, "override");
            assert_string_equal(a, "ethereum");
        } else {
            assert_string_equal(k, "DUP");
            assert_string_equal(m, "ambiguous");
            assert_null(a);
            char c[64];
            assert_string_equal(
                memstore_str(al, i, BATCH_ASSET_ALIASES_COL_CANDIDATES, c, sizeof(c)),
                "dup-one,dup-two");
        }
    }
    assert_int_equal(candle_requests(e, "DUP-USD", 0), 0);
    assert_int_equal(candle_requests(e, "BTC-EUR", 0), 0); /* EUR is not followed, not named */
    /* 30 days of hours: 720 intervals, 3 windows; BTC-USD and ETH-EUR complete. */
    assert_int_equal(candle_requests(e, "BTC-USD", 0), 3);
    assert_int_equal(candle_requests(e, "ETH-EUR", 0), 3);
    size_t btc = candles_of(&e->mem, "BTC-USD", end_ms);
    assert_true(btc > 600 && btc < 720); /* about 1 in 9 hours had no trades */
    size_t eth_usd_1 = candles_of(&e->mem, "ETH-USD", end_ms);
    assert_true(eth_usd_1 > 0 && eth_usd_1 < 300);

    /* Run 2 resumes ETH-USD where the store says it got; the others are current. */
    long since = last_seq(e);
    do_run(e);
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(candle_requests(e, "ETH-USD", since), 2);
    assert_true(candle_requests(e, "BTC-USD", since) <= 1); /* 1 only if an hour just closed */
    size_t eth_usd = candles_of(&e->mem, "ETH-USD", end_ms);

    /* The same as one uninterrupted run into an empty store. */
    struct memstore fresh = e->mem;
    memset(fresh.kept, 0, sizeof(fresh.kept));
    struct memstore keep = e->mem;
    runner_free(e->j.rn);
    e->mem = fresh;
    e->j.rn = runner_new(e->j.cfg, e->j.apis, memstore_store(&e->mem));
    do_run(e);
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(candles_of(&e->mem, "ETH-USD", end_ms), eth_usd);
    assert_int_equal(candles_of(&e->mem, "BTC-USD", end_ms), btc);
    memstore_clear(&e->mem);
    e->mem = keep;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_products),
        cmocka_unit_test(test_candles),
        cmocka_unit_test_setup_teardown(test_job_maps_and_resumes, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
