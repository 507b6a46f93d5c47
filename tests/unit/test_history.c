/*
 * test_history: CoinGecko history and OHLC (src/sources/coingecko/history.c, ohlc.c).
 *
 * The pure parts: the window planner (every granularity's windows meet edge to edge, ask what
 * CoinGecko serves at the wanted granularity, and never reach past the end), and the parsers
 * on the recorded answers (tests/fixtures/coingecko/: 5-minute, hourly and daily market
 * charts with their off-grid "now" point, the one-year range, ohlc 7 and 30 days, the 365-day
 * refusal). Then the jobs under the runner with an in-memory store against the fake API's
 * synthetic universe: a daily backfill refused past the plan's reach clamps to it and then
 * stores every point once, and a second pass asks for nothing; hourly and auto windows; OHLC
 * open times; and a pass that leaves alone the credits the live schedule needs.
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

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "fakeapi_proc.h"
#include "memstore.h"
#include "jobenv.h"
#include "sources/coingecko/history.h"
#include "testdb.h"

#define DAY     86400000LL
#define HOUR    3600000LL
#define WAIT_MS 60000

/* ---- windows ------------------------------------------------------------------------------ */

static void walk(enum cg_granularity g, int64_t start, int64_t end, int64_t min_ask,
                 int64_t max_ask, size_t *nwin)
{
    int64_t filled = 0;
    struct cg_window w;
    *nwin = 0;
    while (coingecko_history_window(g, filled, start, end, &w) == 0) {
        /* Edge to edge: each window keeps from where the last one stopped. */
        assert_int_equal(w.keep_from_ms, filled ? filled : start);
        assert_true(w.keep_to_ms > w.keep_from_ms && w.keep_to_ms <= end);
        int64_t ask = w.ask_to_s * 1000 - w.ask_from_s * 1000;
        assert_true(ask >= min_ask);
        assert_true(ask <= max_ask);
        assert_true(w.ask_from_s * 1000 <= w.keep_from_ms && w.ask_to_s * 1000 >= w.keep_to_ms);
        filled = w.keep_to_ms;
        (*nwin)++;
        assert_true(*nwin < 1000);
    }
    assert_int_equal(filled, end);
}

static void test_windows(void **state)
{
    (void)state;
    int64_t now = 1764500000000LL; /* 2025-11-30T10:53:20Z */
    size_t n;

    /* daily: today's 00:00 point counts once it is an hour old; asks stay above 90 days. */
    int64_t end = coingecko_history_end(CG_GRAN_DAILY, now);
    assert_int_equal(end, now - now % DAY + DAY);
    assert_int_equal(coingecko_history_end(CG_GRAN_DAILY, now - now % DAY + 30 * 60000),
                     now - now % DAY);
    walk(CG_GRAN_DAILY, end - 365 * DAY, end, 91 * DAY, 365 * DAY, &n);
    assert_int_equal(n, 1);
    walk(CG_GRAN_DAILY, end - 800 * DAY, end, 91 * DAY, 365 * DAY, &n);
    assert_int_equal(n, 3);
    struct cg_window w;
    assert_int_equal(coingecko_history_window(CG_GRAN_DAILY, end - DAY, end - 365 * DAY, end, &w),
                     0);
    assert_int_equal(w.keep_from_ms, end - DAY); /* one day missing, 91 asked */
    assert_int_equal(w.ask_from_s * 1000, end - 91 * DAY);
    assert_int_equal(w.grid_ms, DAY);
    assert_int_equal(coingecko_history_window(CG_GRAN_DAILY, end, end - 365 * DAY, end, &w), 1);

    /* hourly: 2 to 89 days asked, never the 5-minutely day. */
    end = coingecko_history_end(CG_GRAN_HOURLY, now);
    assert_int_equal(end, now - now % HOUR);
    walk(CG_GRAN_HOURLY, end - 365 * DAY, end, 2 * DAY, 89 * DAY, &n);
    assert_int_equal(n, 5);
    assert_int_equal(coingecko_history_window(CG_GRAN_HOURLY, end - HOUR, 0, end, &w), 0);
    assert_int_equal(w.ask_to_s * 1000 - w.ask_from_s * 1000, 2 * DAY);
    assert_int_equal(w.grid_ms, 0);

    /* auto: exactly what is missing. */
    end = coingecko_history_end(CG_GRAN_AUTO, now);
    assert_int_equal(end % 300000, 0);
    assert_true(end <= now - 600000);
    walk(CG_GRAN_AUTO, end - 3 * HOUR, end, 3 * HOUR, 3 * HOUR, &n);
    assert_int_equal(n, 1);
    walk(CG_GRAN_AUTO, end - 366 * DAY, end, DAY, 365 * DAY, &n);
    assert_int_equal(n, 2);
}

/* ---- parsers ------------------------------------------------------------------------------ */

static char *fixture(const char *name, size_t *len)
{
    return testdb_fixture("coingecko", name, len);
}

static int64_t t_of(const struct batch *b, uint32_t i)
{
    return batch_val(b, i, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i;
}

/* Parses the recorded chart `name` of coin/usd (fetched at 5) into b through window w, with
 * st zeroed first. */
static void parse_chart(const char *name, const char *coin, const struct cg_window *w,
                        struct batch *b, struct cg_chart_stats *st)
{
    char err[256];
    size_t len;
    char *body = fixture(name, &len);
    memset(st, 0, sizeof(*st));
    assert_int_equal(
        coingecko_parse_market_chart(body, len, coin, "usd", w, 5, b, st, err, sizeof(err)), 0);
    free(body);
}

static void test_market_chart(void **state)
{
    (void)state;
    char err[256];
    size_t len;
    struct batch *b = batch_new(BATCH_PRICES, 8);
    assert_non_null(b);

    /* days=90&interval=daily: 90 points at 00:00 and a trailing "now" (14:39:54) point. The
     * daily grid keeps the 00:00 points of the window and never "now". */
    struct cg_window w = {
        .keep_from_ms = 1613347200000LL, .keep_to_ms = 1621036800000LL + DAY, .grid_ms = DAY};
    struct cg_chart_stats st;
    parse_chart("market_chart_bitcoin_usd_days90_daily_2021-05.json", "bitcoin", &w, b, &st);
    assert_int_equal(st.points, 91);
    assert_int_equal(st.rows, 90);
    assert_int_equal(st.off_grid, 1);
    assert_int_equal(t_of(b, 0), 1613347200000LL);
    assert_true(batch_val(b, 0, BATCH_PRICES_COL_PRICE)->u.d == 48607.8745224845);
    assert_true(batch_val(b, 0, BATCH_PRICES_COL_VOLUME_24H)->u.d == 57738376570.131905);
    assert_int_equal(t_of(b, 89), 1621036800000LL);
    char s[64];
    assert_string_equal(memstore_str(b, 0, BATCH_PRICES_COL_SOURCE, s, sizeof(s)), "coingecko");
    assert_int_equal(batch_val(b, 0, BATCH_PRICES_COL_FETCHED_AT)->u.i, 5);

    /* days=1, 5-minutely: the "now" point (…594000) precedes its neighbour (…594955); a window
     * ending before it keeps neither of the trailing pair's "now". */
    uint32_t before = b->nrows;
    w = (struct cg_window){.keep_from_ms = 1621003519770LL, .keep_to_ms = 1621089594000LL};
    parse_chart("market_chart_bitcoin_usd_days1_5min_2021-05.json", "bitcoin", &w, b, &st);
    assert_int_equal(st.points, 288);
    assert_int_equal(st.rows, 286);
    assert_int_equal(st.outside, 2);
    for (uint32_t i = before + 1; i < b->nrows; i++)
        assert_true(t_of(b, i) > t_of(b, i - 1));

    /* The one-year range: 365 daily points, no "now" point. */
    w = (struct cg_window){.keep_from_ms = 0, .keep_to_ms = INT64_MAX, .grid_ms = DAY};
    parse_chart("market_chart_range_1y_daily_365rows_2020-02-20_tabs.json", "ark", &w, b, &st);
    assert_int_equal(st.rows, 365);

    /* Hourly, not on the hour: every point of the window is kept. */
    w = (struct cg_window){.keep_from_ms = 1618499053863LL, .keep_to_ms = 1621087334184LL};
    parse_chart("market_chart_bitcoin_usd_days30_hourly_2021-05.json", "bitcoin", &w, b, &st);
    assert_int_equal(st.rows, 720);
    assert_int_equal(st.outside, 2);

    /* The refusal past 365 days: an error body, not a chart; nothing added. */
    const char *refusal =
        "{\"error\":{\"status\":{\"timestamp\":\"2024-04-20T22:00:05.123+00:00\",\"error_code\":"
        "10012,\"error_message\":\"Your request exceeds the allowed time range. Public API users "
        "are limited to querying historical data within the past 365 days.\"}}}";
    before = b->nrows;
    assert_int_equal(coingecko_parse_market_chart(refusal, strlen(refusal), "x", "usd", &w, 5, b,
                                                  &st, err, sizeof(err)),
                     -EBADMSG);
    assert_non_null(strstr(err, "allowed time range"));
    assert_int_equal(b->nrows, before);
    assert_true(coingecko_range_refused(refusal, strlen(refusal)));
    char *body = fixture("error_404_market_chart_incorrect_path_2022-04-26.json", &len);
    assert_false(coingecko_range_refused(body, len));
    free(body);
    const char *nulls = "{\"prices\":[[1000,null],[2000,\"x\"],[3000,2.5]],\"market_caps\":[]}";
    memset(&st, 0, sizeof(st));
    w = (struct cg_window){.keep_from_ms = 0, .keep_to_ms = INT64_MAX};
    assert_int_equal(coingecko_parse_market_chart(nulls, strlen(nulls), "x", "usd", &w, 5, b, &st,
                                                  err, sizeof(err)),
                     0);
    assert_int_equal(st.rows, 2);
    assert_int_equal(st.bad, 1);
    assert_int_equal(batch_val(b, b->nrows - 2, BATCH_PRICES_COL_PRICE)->type, VAL_NULL);
    batch_free(b);
}

static void test_ohlc(void **state)
{
    (void)state;
    assert_int_equal(coingecko_ohlc_interval_s(1), 1800);
    assert_int_equal(coingecko_ohlc_interval_s(2), 1800);
    assert_int_equal(coingecko_ohlc_interval_s(7), 14400);
    assert_int_equal(coingecko_ohlc_interval_s(30), 14400);
    assert_int_equal(coingecko_ohlc_interval_s(90), 345600);
    char err[256];
    size_t len;
    struct batch *b = batch_new(BATCH_CANDLES, 8);
    char *body = fixture("ohlc_bitcoin_usd_days7_2021-05.json", &len);
    uint64_t rows = 0, bad = 0;
    assert_int_equal(coingecko_parse_ohlc(body, len, "bitcoin", "usd", 14400, 7, b, &rows, &bad,
                                          err, sizeof(err)),
                     0);
    assert_int_equal(rows, 42);
    assert_int_equal(bad, 0);
    /* [1620504000000, 57945.79, 59122.18, 57945.79, 59122.18]: closes 2021-05-08T20:00Z. */
    assert_int_equal(batch_val(b, 0, BATCH_CANDLES_COL_OPEN_TIME)->u.i,
                     1620504000000LL - 14400000LL);
    assert_int_equal(batch_val(b, 0, BATCH_CANDLES_COL_INTERVAL_S)->u.i, 14400);
    assert_true(batch_val(b, 0, BATCH_CANDLES_COL_OPEN)->u.d == 57945.79);
    assert_true(batch_val(b, 0, BATCH_CANDLES_COL_HIGH)->u.d == 59122.18);
    assert_true(batch_val(b, 0, BATCH_CANDLES_COL_LOW)->u.d == 57945.79);
    assert_true(batch_val(b, 0, BATCH_CANDLES_COL_CLOSE)->u.d == 59122.18);
    assert_int_equal(batch_val(b, 0, BATCH_CANDLES_COL_VOLUME)->type, VAL_NULL);
    char s[64];
    assert_string_equal(memstore_str(b, 0, BATCH_CANDLES_COL_PRODUCT, s, sizeof(s)), "bitcoin");
    free(body);
    body = fixture("ohlc_bitcoin_myr_days30_2021-05.json", &len);
    assert_int_equal(coingecko_parse_ohlc(body, len, "bitcoin", "myr", 14400, 7, b, &rows, &bad,
                                          err, sizeof(err)),
                     0);
    assert_int_equal(rows, 42 + 180);
    for (uint32_t i = 0; i < b->nrows; i++)
        assert_int_equal(batch_val(b, i, BATCH_CANDLES_COL_OPEN_TIME)->u.i % 14400000LL, 0);
    free(body);
    body = fixture("error_500_ohlc_missing_params.json", &len);
    assert_int_equal(coingecko_parse_ohlc(body, len, "bitcoin", "usd", 14400, 7, b, &rows, &bad,
                                          err, sizeof(err)),
                     -EBADMSG);
    free(body);
    const char *odd = "[[1,2],7,[14400000,1,2,0.5,1.5]]";
    uint32_t before = b->nrows;
    assert_int_equal(coingecko_parse_ohlc(odd, strlen(odd), "x", "usd", 14400, 7, b, &rows, &bad,
                                          err, sizeof(err)),
                     0);
    assert_int_equal(bad, 2);
    assert_int_equal(b->nrows, before + 1);
    assert_int_equal(batch_val(b, before, BATCH_CANDLES_COL_OPEN_TIME)->u.i, 0);
    batch_free(b);
}

/* ---- the jobs ----------------------------------------------------------------------------- */

struct env {
    struct jobenv j;
    struct memstore mem;
};

static void do_run(struct env *e, const char *job)
{
    jobenv_run(&e->j, job, WAIT_MS);
}

/* A runner over the fake API with `extra` appended to the config. */
static void start_runner(struct env *e, const char *extra)
{
    jobenv_stop(&e->j);
    jobenv_load(
        &e->j,
        "[source.coingecko]\nbase_url = %s\nrate_limit = 1000/s\nburst = 100\n"
        "backoff_base = 10ms\nbackoff_cap = 50ms\nmax_retries = 2\n"
        "[source.analytics]\nenabled = false\n"
        "[universe]\nids = coin-00001, coin-00002, coin-00017\nvs_currencies = usd, eur\n%s",
        fakeapi_base_url(e->j.fake), extra);
    jobenv_start(&e->j, memstore_store(&e->mem));
}

static int setup(void **state)
{
    if (!fakeapi_available())
        skip();
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    static const char *const args[] = {"--universe", "30", NULL};
    jobenv_init(&e->j, fakeapi_start(args), "test_history");
    e->mem.loop = &e->j.loop;
    e->mem.can_read = true;
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

/* Requests the fake logged on `route_suffix` since seq `since`; *last gets the last seq. */
static size_t requests(struct env *e, const char *route_suffix, long since, long *last)
{
    json_t *log = fakeapi_log(e->j.fake, since);
    assert_non_null(log);
    size_t n = 0, i;
    json_t *it;
    json_array_foreach(log, i, it)
    {
        const char *route = json_string_value(json_object_get(it, "route"));
        size_t rl = route ? strlen(route) : 0, sl = strlen(route_suffix);
        if (route && rl >= sl && strcmp(route + rl - sl, route_suffix) == 0)
            n++;
        if (last)
            *last = (long)json_integer_value(json_object_get(it, "seq"));
    }
    json_decref(log);
    return n;
}

/* The times of the prices rows held for asset/vs, sorted; checks they are unique. */
static size_t series_times(const struct memstore *m, const char *asset, const char *vs,
                           int64_t *out, size_t cap)
{
    const struct batch *b = m->kept[BATCH_PRICES];
    size_t n = 0;
    for (uint32_t i = 0; b && i < b->nrows; i++) {
        char a[64], v[16];
        if (strcmp(memstore_str(b, i, BATCH_PRICES_COL_ASSET_ID, a, sizeof(a)), asset) != 0 ||
            strcmp(memstore_str(b, i, BATCH_PRICES_COL_VS_CURRENCY, v, sizeof(v)), vs) != 0)
            continue;
        assert_true(n < cap);
        out[n++] = batch_val(b, i, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i;
    }
    for (size_t i = 1; i < n; i++) /* windows come in time order */
        assert_true(out[i] > out[i - 1]);
    return n;
}

static void test_daily_clamps_and_resumes(void **state)
{
    struct env *e = *state;
    start_runner(e, "[job.history]\nenabled = true\ndays = 400\ngranularity = daily\n");
    long seq = 0;
    do_run(e, "history");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    /* One window refused past the reach, asked again from it; then one window per series. */
    assert_int_equal(requests(e, "/market_chart/range", 0, &seq), 1 + 6);
    int64_t now = (int64_t)util_wall_ms();
    int64_t end = coingecko_history_end(CG_GRAN_DAILY, now);
    static int64_t t[2000];
    size_t n = series_times(&e->mem, "coin-00001", "usd", t, 2000);
    assert_true(n > 340 && n <= 365);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(t[i] % DAY, 0);
        assert_true(t[i] >= now - 365 * DAY && t[i] < end);
    }
    assert_int_equal(t[n - 1], end - DAY);
    /* The young coin has 200 days. */
    n = series_times(&e->mem, "coin-00017", "eur", t, 2000);
    assert_true(n > 180 && n <= 201);
    assert_true(t[0] >= now - 201 * DAY);
    /* Six marks at the end. */
    const struct batch *f = e->mem.kept[BATCH_CANDLE_FILL];
    assert_non_null(f);
    assert_int_equal(f->nrows, 6);
    size_t eur1 = 0;
    for (uint32_t i = 0; i < f->nrows; i++) {
        char p[64];
        eur1 += strcmp(memstore_str(f, i, BATCH_CANDLE_FILL_COL_PRODUCT, p, sizeof(p)),
                       "eur:coin-00001") == 0;
        assert_int_equal(batch_val(f, i, BATCH_CANDLE_FILL_COL_INTERVAL_S)->u.i, 86400);
        assert_int_equal(batch_val(f, i, BATCH_CANDLE_FILL_COL_FILLED_TO)->u.i, end);
    }
    assert_int_equal(eur1, 1); /* product "vs:asset_id" */

    /* A second pass resumes from the marks: nothing to ask for. */
    uint64_t rows = e->mem.kept[BATCH_PRICES]->nrows;
    do_run(e, "history");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(requests(e, "/market_chart/range", seq, NULL), 0);
    assert_int_equal(e->mem.kept[BATCH_PRICES]->nrows, rows);
}

static void test_hourly_and_auto(void **state)
{
    struct env *e = *state;
    start_runner(e, "[job.history]\nenabled = true\nids = coin-00002\n"
                    "vs_currencies = usd\ndays = 3\ngranularity = hourly\n");
    do_run(e, "history");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    static int64_t t[2000];
    int64_t now = (int64_t)util_wall_ms();
    size_t n = series_times(&e->mem, "coin-00002", "usd", t, 2000);
    /* About one point an hour, not on the hour, and none of the last, unfinished hour. */
    assert_true(n > 64 && n <= 72);
    size_t on_the_hour = 0;
    for (size_t i = 0; i < n; i++)
        on_the_hour += t[i] % HOUR == 0;
    assert_int_equal(on_the_hour, 0);
    assert_true(t[n - 1] < coingecko_history_end(CG_GRAN_HOURLY, now));
    for (size_t i = 1; i < n; i++)
        assert_true(t[i] - t[i - 1] < 2 * HOUR + HOUR / 2);

    /* auto over the last day: CoinGecko's 5-minute points. */
    memstore_clear(&e->mem);
    start_runner(e, "[job.history]\nenabled = true\nids = coin-00002\n"
                    "vs_currencies = usd\ndays = 1\ngranularity = auto\n");
    do_run(e, "history");
    n = series_times(&e->mem, "coin-00002", "usd", t, 2000);
    assert_true(n > 250 && n <= 288);
    assert_true(t[1] - t[0] < 10 * 60000);
}

static void test_ohlc_job(void **state)
{
    struct env *e = *state;
    start_runner(e, "[job.ohlc]\nenabled = true\ndays = 7\nvs_currencies = usd\n");
    do_run(e, "ohlc");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    const struct batch *b = e->mem.kept[BATCH_CANDLES];
    assert_non_null(b);
    int64_t now = (int64_t)util_wall_ms();
    size_t open = 0;
    for (uint32_t i = 0; i < b->nrows; i++) {
        int64_t o = batch_val(b, i, BATCH_CANDLES_COL_OPEN_TIME)->u.i;
        assert_int_equal(o % 14400000LL, 0);
        assert_int_equal(batch_val(b, i, BATCH_CANDLES_COL_INTERVAL_S)->u.i, 14400);
        open += o + 14400000LL > now; /* closes ahead: still open */
    }
    assert_int_equal(open, 3); /* one per asset */
    assert_true(b->nrows >= 3 * 42 - 3 && b->nrows <= 3 * 43);
}

static void test_leaves_live_credits(void **state)
{
    struct env *e = *state;
    /* prices every second needs 2.6 million requests a month: whatever is left of the month
     * (unless it ends within 10 s), they are more than the 10 credits of this plan. */
    start_runner(e, "[job.history]\nenabled = true\ndays = 30\n[job.prices]\nevery = 1s\n"
                    "[job.assets]\nenabled = false\n[job.market_caps]\nenabled = false\n");
    e->j.cfg->sources[0].monthly_credits = 10;
    e->j.cfg->sources[0].credit_reserve = 0;
    long seq = 0;
    requests(e, "", 0, &seq);
    do_run(e, "history");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(requests(e, "/market_chart/range", seq, &seq), 0);

    /* Without live jobs the same month has room. */
    start_runner(e, "[job.history]\nenabled = true\ndays = 30\n[job.prices]\nenabled = false\n"
                    "[job.assets]\nenabled = false\n[job.market_caps]\nenabled = false\n");
    e->j.cfg->sources[0].monthly_credits = 10;
    e->j.cfg->sources[0].credit_reserve = 0;
    do_run(e, "history");
    assert_int_equal(e->j.run.sum.status, RUN_OK);
    assert_int_equal(requests(e, "/market_chart/range", seq, NULL), 6);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_windows),
        cmocka_unit_test(test_market_chart),
        cmocka_unit_test(test_ohlc),
        cmocka_unit_test_setup_teardown(test_daily_clamps_and_resumes, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hourly_and_auto, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ohlc_job, setup, teardown),
        cmocka_unit_test_setup_teardown(test_leaves_live_credits, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
