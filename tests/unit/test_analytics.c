/*
 * test_analytics: the analytics source (src/sources/analytics/, docs/analytics.md).
 *
 * The indicator math first, without a database: RSI against StockCharts' worked example
 * (ChartSchool's 14-day RSI table, cs-rsi.xls: 33 QQQQ closes with 4 decimals, the first RSI
 * 70.5328), flat, only-up and only-down series, and returns and volatility against an
 * independent computation here. Then the jobs end to end against the real private MariaDB:
 * a runner whose store is a real sink, prices inserted with SQL, the jobs run as the daemon
 * runs them: candles checked against the inserted rows; re-running changes nothing; a late
 * row recomputes a closed bucket; an incremental history equals a recomputation from
 * scratch exactly; the plans of one day's queries use the keys; retention deletes only the
 * rows a daily rollup covers and counts them.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include <cmocka.h>

#include "coingest/config.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/sink.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "sources/analytics/analytics.h"
#include "testdb.h"

/* ---- the math ---------------------------------------------------------------------------- */

static const double rsi_closes[] = {44.3389, 44.0902, 44.1497, 43.6124, 44.3278, 44.8264, 45.0955,
                                    45.4245, 45.8433, 46.0826, 45.8931, 46.0328, 45.6140, 46.2820,
                                    46.2820, 46.0028, 46.0328, 46.4116, 46.2222, 45.6439, 46.2122,
                                    46.2521, 45.7137, 46.4515, 45.7835, 45.3548, 44.0288, 44.1783,
                                    44.2181, 44.5672, 43.4205, 42.6628, 43.1314};
/* The RSI column from day 15 on (the first 14 have none). */
static const double rsi_published[] = {
    70.5328, 66.3186, 66.5498, 69.4063, 66.3552, 57.9749, 62.9296, 63.2571, 56.0593, 62.3771,
    54.7076, 50.4228, 39.9898, 41.4605, 41.8689, 45.4632, 37.3040, 33.0795, 37.7730};

static void run_series(const double *c, size_t n, uint32_t return_days, struct an_day *out)
{
    struct an_series s;
    assert_int_equal(an_series_init(&s, return_days), 0);
    for (size_t i = 0; i < n; i++)
        an_series_compute(&s, 20000 + (int64_t)i, c[i], return_days, &out[i]);
    an_series_free(&s);
}

static void test_rsi_stockcharts(void **state)
{
    (void)state;
    size_t n = sizeof(rsi_closes) / sizeof(rsi_closes[0]);
    struct an_day d[64];
    run_series(rsi_closes, n, 5, d);
    for (size_t i = 0; i < 14; i++)
        assert_false(d[i].has_rsi);
    for (size_t i = 14; i < n; i++) {
        assert_true(d[i].has_rsi);
        if (fabs(d[i].rsi - rsi_published[i - 14]) > 5e-4)
            fail_msg("day %zu: RSI %.6f, published %.4f", i + 1, d[i].rsi, rsi_published[i - 14]);
    }
    /* ChartSchool's rounded figure too. */
    assert_true(fabs(d[14].rsi - 70.53) < 0.005);
}

static void test_rsi_flat_up_down(void **state)
{
    (void)state;
    double flat[40], up[40], down[40];
    for (int i = 0; i < 40; i++) {
        flat[i] = 7.25;
        up[i] = 100 + i;
        down[i] = 100 - i;
    }
    struct an_day d[40];
    run_series(flat, 40, 5, d);
    assert_true(d[39].has_rsi);
    assert_true(d[39].rsi == 50.0); /* neither gain nor loss */
    assert_true(d[39].has_vol_short && d[39].vol_short == 0.0);
    assert_true(d[39].has_return_nd && d[39].return_nd == 0.0);
    run_series(up, 40, 5, d);
    assert_true(d[14].rsi == 100.0 && d[39].rsi == 100.0); /* no loss */
    run_series(down, 40, 5, d);
    assert_true(d[14].rsi == 0.0 && d[39].rsi == 0.0); /* no gain */
}

/* Returns and volatility against a computation written differently: the variance as
 * (sum of squares - n * mean^2) / (n - 1), returns straight from the array. */
static void test_returns_volatility(void **state)
{
    (void)state;
    double c[80];
    uint64_t x = 12345;
    for (int i = 0; i < 80; i++) {
        x = x * 6364136223846793005ull + 1442695040888963407ull;
        c[i] = 50.0 * exp(0.3 * sin(i / 7.0) + (double)(x >> 40) / (double)(1ull << 24) * 0.1);
    }
    struct an_day d[80];
    run_series(c, 80, 7, d);
    for (int i = 0; i < 80; i++) {
        assert_int_equal(d[i].has_return_1d, i >= 1);
        assert_int_equal(d[i].has_return_nd, i >= 7);
        assert_int_equal(d[i].has_vol_short, i >= 14);
        assert_int_equal(d[i].has_vol_long, i >= 30);
        if (i >= 7)
            assert_true(fabs(d[i].return_nd - (c[i] / c[i - 7] - 1)) < 1e-12);
        if (i >= 1)
            assert_true(fabs(d[i].return_1d - (c[i] - c[i - 1]) / c[i - 1]) < 1e-12);
        const int windows[] = {14, 30};
        for (int k = 0; k < 2; k++) {
            int w = windows[k];
            if (i < w)
                continue;
            double sum = 0, sq = 0;
            for (int j = i - w + 1; j <= i; j++) {
                double r = log(c[j]) - log(c[j - 1]);
                sum += r;
                sq += r * r;
            }
            double mean = sum / w;
            double want = sqrt((sq - w * mean * mean) / (w - 1) * 365.0);
            double got = k ? d[i].vol_long : d[i].vol_short;
            if (fabs(got - want) > 1e-9 * want)
                fail_msg("day %d window %d: %.15g, independent %.15g", i, w, got, want);
        }
    }
    /* A missing day breaks the windows: nothing until they are full again. */
    struct an_series s;
    assert_int_equal(an_series_init(&s, 5), 0);
    struct an_day o;
    for (int i = 0; i < 40; i++)
        an_series_compute(&s, 100 + i + (i >= 20), c[i], 5, &o); /* day 120 is missing */
    assert_true(o.has_rsi);                                      /* 19 days after the gap */
    an_series_compute(&s, 141, c[40], 5, &o);
    assert_false(o.has_vol_long);
    an_series_free(&s);
}

static void test_time_helpers(void **state)
{
    (void)state;
    int64_t ms;
    assert_int_equal(an_parse_time("2024-02-29 13:05:07.250", &ms), 0);
    char buf[32];
    an_format_time(ms, buf, sizeof(buf));
    assert_string_equal(buf, "2024-02-29 13:05:07.250");
    assert_int_equal(an_parse_time("1970-01-02", &ms), 0);
    assert_int_equal(ms, AN_MS_DAY);
    an_format_day(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31");
    assert_int_equal(an_parse_time("2024-13-01", &ms), -EINVAL);
}

/* ---- the jobs against the database --------------------------------------------------------- */

#define WAIT_MS 60000

struct h {
    uv_loop_t loop;
    struct timers *timers;
    struct config *cfg;
    struct sink *s;
    struct runner *rn;
    MYSQL *admin;
    char db[128], spool[128];
    bool flag;
    struct run_summary last;
};

static int store_submit(void *ctx, struct batch *b)
{
    return sink_submit(ctx, b);
}

struct read_call {
    store_read_cb cb;
    void *arg;
};

static void read_done(int rc, const struct sink_rows *rows, const char *err, void *arg)
{
    struct read_call c = *(struct read_call *)arg;
    free(arg);
    struct store_rows out = {0};
    if (rows)
        out = (struct store_rows){rows->nrows, rows->ncols, rows->names, rows->cells};
    c.cb(rc, rows ? &out : NULL, err, c.arg);
}

static int store_read(void *ctx, const char *sql, const char *const *params, size_t nparams,
                      size_t max_rows, store_read_cb cb, void *arg)
{
    struct read_call *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (struct read_call){cb, arg};
    int rc = sink_read(ctx, sql, params, nparams, max_rows, read_done, c);
    if (rc)
        free(c);
    return rc;
}

static void set_flag(void *arg)
{
    ((struct h *)arg)->flag = true;
}

static void wait_flag(struct h *h, const char *what)
{
    uint64_t end = util_mono_ms() + WAIT_MS;
    while (!h->flag && util_mono_ms() < end)
        uv_run(&h->loop, UV_RUN_ONCE);
    if (!h->flag)
        fail_msg("%s did not happen within %d ms", what, WAIT_MS);
}

/* A timer that keeps the loop turning while we wait for threads. */
static uv_timer_t tick;
static void on_tick(uv_timer_t *t)
{
    (void)t;
}

static int setup(void **state)
{
    if (!testdb_available()) {
        *state = NULL;
        return 0;
    }
    struct h *h = calloc(1, sizeof(*h));
    h->admin = testdb_create("analytics", h->db, sizeof(h->db));
    if (!h->admin)
        return -1;
    snprintf(h->spool, sizeof(h->spool), "/tmp/test_analytics_%d", (int)getpid());
    h->cfg = config_defaults();
    testdb_fill_config(h->cfg, h->db);
    free(h->cfg->daemon.spool_dir);
    h->cfg->daemon.spool_dir = strdup(h->spool);
    h->cfg->database.flush_interval_ms = 20;
    uv_loop_init(&h->loop);
    uv_timer_init(&h->loop, &tick);
    uv_timer_start(&tick, on_tick, 5, 5);
    h->timers = timers_new(&h->loop);
    h->s = sink_new(&h->loop, h->timers, h->cfg);
    assert_int_equal(sink_start(h->s), 0);
    h->flag = false;
    sink_on_ready(h->s, set_flag, h);
    wait_flag(h, "the sink reaching the database");
    struct store st = {.submit = store_submit, .read = store_read, .ctx = h->s};
    metrics_reset();
    h->rn = runner_new(h->cfg, NULL, st);
    assert_non_null(h->rn);
    *state = h;
    return 0;
}

static int teardown(void **state)
{
    struct h *h = *state;
    if (!h)
        return 0;
    runner_free(h->rn);
    h->flag = false;
    sink_shutdown(h->s, 5000, set_flag, h);
    wait_flag(h, "the sink stopping");
    sink_free(h->s);
    timers_free(h->timers);
    uv_close((uv_handle_t *)&tick, NULL);
    while (uv_loop_alive(&h->loop))
        uv_run(&h->loop, UV_RUN_NOWAIT);
    uv_loop_close(&h->loop);
    char cmd[200];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->spool);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", h->spool);
    testdb_drop(h->admin, h->db);
    config_free(h->cfg);
    free(h);
    return 0;
}

static void on_run(const struct run_summary *s, void *arg)
{
    struct h *h = arg;
    h->last = *s;
    h->flag = true;
}

/* Runs a job to its end and waits until everything it emitted is committed. */
static void do_job(struct h *h, const char *name)
{
    int id = config_job_index(h->cfg, name);
    assert_true(id >= 0);
    h->flag = false;
    assert_int_equal(runner_start(h->rn, (size_t)id, on_run, h), 0);
    wait_flag(h, name);
    if (h->last.status != RUN_OK)
        fail_msg("job %s: %s", name, h->last.error);
    h->flag = false;
    sink_on_idle(h->s, set_flag, h);
    wait_flag(h, "the sink to be idle");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM rejected_rows"), 0);
}

static void exec(struct h *h, const char *fmt, ...)
{
    char sql[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(sql, sizeof(sql), fmt, ap);
    va_end(ap);
    assert_int_equal(testdb_exec(h->admin, sql), 0);
}

/* Four prices a day (00:10, 06:10, 12:10, 18:10) for `assets` coins over days [d0, d1) of
 * 2024, fetched now; the price of coin a on day d, sample k is a deterministic wiggle. */
static double price_of(int a, int d, int k)
{
    return (10.0 + a) * (1.0 + 0.05 * sin(d * 0.7 + a) + 0.01 * k);
}

static void insert_days(struct h *h, int assets, int d0, int d1)
{
    for (int d = d0; d < d1; d++) {
        char sql[8192];
        size_t n = (size_t)snprintf(sql, sizeof(sql),
                                    "INSERT INTO prices (asset_id, vs_currency, source,"
                                    " source_updated_at, price, market_cap, volume_24h,"
                                    " fetched_at) VALUES ");
        for (int a = 0; a < assets; a++)
            for (int k = 0; k < 4; k++)
                n += (size_t)snprintf(sql + n, sizeof(sql) - n,
                                      "%s('coin%d','usd','coingecko',"
                                      " TIMESTAMP('2024-01-01') + INTERVAL %d DAY"
                                      " + INTERVAL %d MINUTE, %.17g, %.17g, 1e6, NOW(3))",
                                      a || k ? "," : "", a, d, k * 360 + 10, price_of(a, d, k),
                                      a == 0 ? 1e3 : 1e9 * (a + 1));
        assert_int_equal(testdb_exec(h->admin, sql), 0);
    }
}

static long long checksum(struct h *h, const char *table)
{
    char sql[128];
    snprintf(sql, sizeof(sql), "CHECKSUM TABLE %s", table);
    assert_int_equal(mysql_query(h->admin, sql), 0);
    MYSQL_RES *res = mysql_store_result(h->admin);
    MYSQL_ROW row = mysql_fetch_row(res);
    long long v = atoll(row[1]);
    mysql_free_result(res);
    return v;
}

/* The key EXPLAIN shows for the first table of a query. */
static void explain_key(struct h *h, const char *query, const char *want)
{
    char sql[4096];
    snprintf(sql, sizeof(sql), "EXPLAIN %s", query);
    assert_int_equal(mysql_query(h->admin, sql), 0);
    MYSQL_RES *res = mysql_store_result(h->admin);
    MYSQL_FIELD *f = mysql_fetch_fields(res);
    unsigned nf = mysql_num_fields(res), key = nf;
    for (unsigned i = 0; i < nf; i++)
        if (strcmp(f[i].name, "key") == 0)
            key = i;
    assert_true(key < nf);
    bool found = false;
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(res)))
        found = found || (row[key] && strcmp(row[key], want) == 0);
    mysql_free_result(res);
    if (!found)
        fail_msg("the plan of [%s] does not use %s", query, want);
}

static void test_jobs_end_to_end(void **state)
{
    struct h *h = *state;
    if (!h)
        skip();
    /* 40 days of history for 6 coins, then one day at a time. */
    insert_days(h, 6, 0, 40);
    do_job(h, "rollups");
    do_job(h, "indicators");
    assert_int_equal(
        testdb_scalar(h->admin, "SELECT COUNT(*) FROM price_rollups WHERE bucket='1d'"), 6 * 40);
    assert_int_equal(
        testdb_scalar(h->admin, "SELECT COUNT(*) FROM price_rollups WHERE bucket='1h'"),
        6 * 40 * 4);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM indicators_daily"), 6 * 40);
    /* A candle against the rows: coin2 on day 7. */
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT COUNT(*) FROM price_rollups WHERE asset_id='coin2' AND bucket='1d'"
             " AND bucket_start='2024-01-08' AND open=%.17g AND close=%.17g AND samples=4"
             " AND high=%.17g AND low=%.17g AND market_cap=3e9",
             price_of(2, 7, 0), price_of(2, 7, 3), price_of(2, 7, 3), price_of(2, 7, 0));
    assert_int_equal(testdb_scalar(h->admin, sql), 1);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM indicators_daily WHERE"
                                             " rsi_14 IS NOT NULL AND asset_id='coin1'"),
                     40 - 14);
    /* Movers: coin0 has a market cap under the minimum and is never ranked. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM movers_daily WHERE"
                                             " asset_id='coin0'"),
                     0);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM movers_daily WHERE"
                                             " day='2024-02-09' AND direction='top'"),
                     5);
    assert_int_equal(testdb_scalar(h->admin,
                                   "SELECT COUNT(*) FROM movers_daily m JOIN indicators_daily i"
                                   " ON i.day=m.day AND i.asset_id=m.asset_id WHERE m.`rank`=1"
                                   " AND m.direction='top' AND i.return_nd = (SELECT"
                                   " MAX(return_nd) FROM indicators_daily j WHERE j.day=m.day"
                                   " AND j.market_cap >= 1000000)"),
                     testdb_scalar(h->admin, "SELECT COUNT(DISTINCT day) FROM movers_daily"));

    /* Re-running changes nothing. */
    long long sums[3] = {checksum(h, "price_rollups"), checksum(h, "indicators_daily"),
                         checksum(h, "movers_daily")};
    do_job(h, "rollups");
    do_job(h, "rollups");
    do_job(h, "indicators");
    assert_true(sums[0] == checksum(h, "price_rollups"));
    assert_true(sums[1] == checksum(h, "indicators_daily"));
    assert_true(sums[2] == checksum(h, "movers_daily"));

    /* One new day at a time (each arrives after its day closed: marked, then computed). */
    for (int d = 40; d < 46; d++) {
        insert_days(h, 6, d, d + 1);
        do_job(h, "rollups");
        do_job(h, "rollups");
        do_job(h, "indicators");
    }
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM indicators_daily"), 6 * 46);

    /* A late row: coin3 on day 20 at 23:59, higher than anything that day. */
    exec(h, "INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price,"
            " market_cap, volume_24h, fetched_at) VALUES ('coin3','usd','coingecko',"
            " '2024-01-21 23:59:00', 99, 4e9, 1e6, NOW(3))");
    do_job(h, "rollups");
    do_job(h, "rollups");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM price_rollups WHERE"
                                             " asset_id='coin3' AND bucket_start='2024-01-21'"
                                             " AND bucket='1d' AND close=99 AND high=99"
                                             " AND samples=5"),
                     1);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM price_rollups WHERE"
                                             " asset_id='coin3' AND bucket_start="
                                             "'2024-01-21 23:00' AND bucket='1h' AND close=99"),
                     1);
    do_job(h, "indicators");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM indicators_daily WHERE"
                                             " asset_id='coin3' AND day='2024-01-21'"
                                             " AND close=99"),
                     1);

    /* Incremental == from scratch, exactly. */
    exec(h, "CREATE TABLE incr AS SELECT * FROM indicators_daily");
    exec(h, "CREATE TABLE incr_movers AS SELECT * FROM movers_daily");
    exec(h, "DELETE FROM indicators_daily");
    exec(h, "DELETE FROM movers_daily");
    exec(h, "DELETE FROM analytics_state WHERE name LIKE 'indicators.%%'");
    do_job(h, "indicators");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM indicators_daily"), 6 * 46);
    assert_int_equal(
        testdb_scalar(h->admin,
                      "SELECT COUNT(*) FROM incr a JOIN indicators_daily b USING (source,"
                      " asset_id, vs_currency, day) WHERE a.close <=> b.close AND"
                      " a.return_1d <=> b.return_1d AND a.return_nd <=> b.return_nd AND"
                      " a.rsi_14 <=> b.rsi_14 AND a.avg_gain <=> b.avg_gain AND"
                      " a.avg_loss <=> b.avg_loss AND a.volatility_14d <=> b.volatility_14d"
                      " AND a.volatility_30d <=> b.volatility_30d AND"
                      " a.market_cap <=> b.market_cap"),
        6 * 46);
    assert_int_equal(testdb_scalar(h->admin,
                                   "SELECT COUNT(*) FROM incr_movers a JOIN movers_daily b"
                                   " USING (day, vs_currency, source, direction, `rank`)"
                                   " WHERE a.asset_id = b.asset_id AND a.return_nd <=>"
                                   " b.return_nd"),
                     testdb_scalar(h->admin, "SELECT COUNT(*) FROM movers_daily"));

    /* One day's queries use the keys. */
    explain_key(h,
                "SELECT source, asset_id, MIN(source_updated_at) FROM prices WHERE"
                " source_updated_at >= '2024-02-10' AND source_updated_at < '2024-02-11'"
                " GROUP BY source, asset_id, vs_currency",
                "prices_time");
    explain_key(h,
                "SELECT asset_id, close FROM price_rollups r WHERE r.bucket = '1d' AND"
                " r.bucket_start >= '2024-02-10' AND r.bucket_start < '2024-02-11'"
                " ORDER BY r.bucket_start",
                "price_rollups_time");
    explain_key(h,
                "SELECT r.asset_id FROM price_rollups r WHERE r.bucket = '1d' AND"
                " r.computed_at >= NOW() - INTERVAL 10 MINUTE",
                "price_rollups_computed");
    /* Every row here was fetched seconds ago, so "the last 10 minutes" is the whole table:
     * ask for a later window, which is what a mark sees between two runs. */
    exec(h, "UPDATE prices SET fetched_at = fetched_at - INTERVAL 1 DAY WHERE"
            " source_updated_at < '2024-02-15'");
    assert_int_equal(mysql_query(h->admin, "ANALYZE TABLE prices"), 0);
    mysql_free_result(mysql_store_result(h->admin));
    explain_key(h,
                "SELECT DISTINCT TIMESTAMP(DATE(source_updated_at),"
                " MAKETIME(HOUR(source_updated_at), 0, 0)) FROM prices p WHERE p.fetched_at >"
                " COALESCE((SELECT s.value FROM analytics_state s WHERE s.name ="
                " 'rollups.fetched_until'), NOW()) - INTERVAL 10 MINUTE",
                "prices_fetched");
}

static void test_retention(void **state)
{
    struct h *h = *state;
    if (!h)
        skip();
    insert_days(h, 3, 0, 10);
    /* Day 5 of coin1 has no price at all: no rollup covers it. */
    exec(h, "UPDATE prices SET price = NULL WHERE asset_id='coin1' AND"
            " DATE(source_updated_at)='2024-01-06'");
    exec(h, "INSERT INTO market_snapshots (asset_id, vs_currency, source, snapshot_at, price,"
            " fetched_at) SELECT asset_id, vs_currency, source, source_updated_at, price,"
            " fetched_at FROM prices");
    /* A rollup that does not exist yet protects nothing: retention first, then rollups. */
    int id = config_job_index(h->cfg, "retention");
    ((struct cfg_value *)config_job_value(&h->cfg->jobs[id], "max_days"))->u = 1000;
    do_job(h, "retention");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM prices"), 3 * 10 * 4);
    exec(h, "DELETE FROM analytics_state WHERE name = 'retention.done_until'");
    do_job(h, "rollups");
    do_job(h, "retention");
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM prices"), 4);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 4);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM prices WHERE"
                                             " asset_id='coin1' AND price IS NULL"),
                     4);
    assert_true(metrics_get(AN_METRIC_DELETED, "table=\"prices\"") == 3 * 10 * 4 - 4);
    assert_true(metrics_get(AN_METRIC_DELETED, "table=\"market_snapshots\"") == 3 * 10 * 4 - 4);
    /* The rollups stay. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM price_rollups WHERE"
                                             " bucket='1d'"),
                     3 * 10 - 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rsi_stockcharts),
        cmocka_unit_test(test_rsi_flat_up_down),
        cmocka_unit_test(test_returns_volatility),
        cmocka_unit_test(test_time_helpers),
        cmocka_unit_test_setup_teardown(test_jobs_end_to_end, setup, teardown),
        cmocka_unit_test_setup_teardown(test_retention, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
