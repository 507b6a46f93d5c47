/*
 * test_config: the configuration parser. Value parsers (valid, invalid, edge cases, overflow),
 * defaults, plan defaults and key-order independence, every error message with its line
 * (exact strings), environment and *_file overrides, config_dump masking and round trip,
 * config_diff, and the shipped etc/coingest.conf.
 *
 * Config text is written to a file in a private temporary directory, so messages carry a known
 * path; expect_error() compares the whole message.
 */
#include <errno.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "coingest/budget.h"
#include "coingest/config.h"
#include "coingest/source.h"
#include "coingest/version.h"

/* The CoinGecko section, a plan's index and a job by name (sources and jobs come from the
 * registry, source.h). */
#define CG(c)        ((struct cfg_source *)config_source((c), "coingecko"))
#define PLAN(name)   ((uint32_t)source_plan_index(source_find("coingecko"), (name)))
#define JOB(c, name) (&(c)->jobs[config_job_index((c), (name))])

static char tmpdir[256];
static char conf_path[PATH_MAX];

static const char *const env_names[] = {
    "COINGEST_DB_PASSWORD",
    "COINGEST_DB_PASSWORD_FILE",
    "COINGEST_COINGECKO_API_KEY",
    "COINGEST_COINGECKO_API_KEY_FILE",
    "COINGEST_DB_HOST",
    "COINGEST_DB_PORT",
    "COINGEST_DB_SOCKET",
    "COINGEST_DB_USER",
    "COINGEST_DB_NAME",
    "COINGEST_COINGECKO_PLAN",
    "COINGEST_COINGECKO_BASE_URL",
    "COINGEST_COINGECKO_RATE_LIMIT",
    "COINGEST_COINGECKO_MONTHLY_CREDITS",
};

static void clear_env(void)
{
    for (size_t i = 0; i < sizeof(env_names) / sizeof(env_names[0]); i++)
        unsetenv(env_names[i]);
}

static int group_setup(void **state)
{
    (void)state;
    const char *base = getenv("TMPDIR");
    snprintf(tmpdir, sizeof(tmpdir), "%.200s/test_config.XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpdir))
        return -1;
    snprintf(conf_path, sizeof(conf_path), "%s/x.conf", tmpdir);
    clear_env();
    return 0;
}

static void tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
}

static const char *const tmp_files[] = {"x.conf", "pw", "key", "pw_crlf", "empty", "dump.conf"};

static int group_teardown(void **state)
{
    (void)state;
    char p[PATH_MAX + 32];
    for (size_t i = 0; i < sizeof(tmp_files) / sizeof(tmp_files[0]); i++) {
        tmp_path(p, sizeof(p), tmp_files[i]);
        unlink(p);
    }
    rmdir(tmpdir);
    return 0;
}

static int test_teardown(void **state)
{
    (void)state;
    clear_env();
    return 0;
}

static void write_bytes(const char *path, const char *data, size_t len)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}

static void write_file(const char *path, const char *text)
{
    write_bytes(path, text, strlen(text));
}

static int load_text(const char *text, struct config **cfg, char *err, size_t cap)
{
    write_file(conf_path, text);
    return config_load(conf_path, cfg, err, cap);
}

static struct config *load_ok(const char *text)
{
    struct config *cfg = NULL;
    char err[1024];
    int r = load_text(text, &cfg, err, sizeof(err));
    if (r != 0)
        fail_msg("unexpected error %d: %s", r, err);
    assert_non_null(cfg);
    return cfg;
}

/* Loads `text` and checks the whole message: "<conf_path>:" followed by `suffix`. */
static void expect_error(const char *text, const char *suffix)
{
    struct config *cfg = (struct config *)1;
    char err[1024] = "";
    char want[1024 + PATH_MAX];
    int r = load_text(text, &cfg, err, sizeof(err));
    snprintf(want, sizeof(want), "%s:%s", conf_path, suffix);
    assert_string_equal(err, want);
    assert_int_equal(r, -EINVAL);
    assert_null(cfg);
}

/* ---- value parsers ----------------------------------------------------------------------- */

static void test_parse_duration(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t ms;
    } ok[] = {
        {"0", 0},
        {"0s", 0},
        {"500ms", 500},
        {"30s", 30000},
        {"5m", 300000},
        {"1h", 3600000},
        {"24h", 86400000},
        {"7d", 604800000},
        {"007s", 7000},
        {"18446744073709551615ms", UINT64_MAX},
        {"213503982334d", 213503982334ull * 86400000ull},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t ms = 12345;
        if (config_parse_duration(ok[i].s, &ms) != 0)
            fail_msg("\"%s\" rejected", ok[i].s);
        assert_int_equal(ms, ok[i].ms);
    }
    static const char *const bad[] = {
        "",
        "5",
        "5 m",
        " 5m",
        "5m ",
        "-5s",
        "+5s",
        "5M",
        "5min",
        "1.5s",
        "s",
        "5ms5",
        "0x10s",
        "5s5m",
        "1h30m",
        "00",
        "5\n",
        "5ss",
        "1w",
        "213503982335d",
        "18446744073709551616ms",
        "99999999999999999999999s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t ms = 12345;
        if (config_parse_duration(bad[i], &ms) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(ms, 12345); /* untouched on error */
    }
    uint64_t ms;
    assert_int_equal(config_parse_duration(NULL, &ms), -EINVAL);
}

static void test_parse_rate(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint32_t count;
        uint64_t period;
    } ok[] = {
        {"30/min", 30, 60000},   {"5/s", 5, 1000},
        {"100/h", 100, 3600000}, {"1/sec", 1, 1000},
        {"2/second", 2, 1000},   {"3/minute", 3, 60000},
        {"4/hour", 4, 3600000},  {"10/m", 10, 60000},
        {"7/day", 7, 86400000},  {"4294967295/s", UINT32_MAX, 1000},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        struct rate r = {0, 0};
        if (config_parse_rate(ok[i].s, &r) != 0)
            fail_msg("\"%s\" rejected", ok[i].s);
        assert_int_equal(r.count, ok[i].count);
        assert_int_equal(r.period_ms, ok[i].period);
    }
    static const char *const bad[] = {
        "",        "30",       "30/",     "/min",
        "30/min ", "30 /min",  "30/ min", "-1/s",
        "30/week", "0/min",    "30/MIN",  "4294967296/s",
        "1.5/s",   "30/min/s", "30//s",   "99999999999999999999999/s",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct rate r = {77, 77};
        if (config_parse_rate(bad[i], &r) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(r.count, 77);
    }
}

static void test_parse_size(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        uint64_t bytes;
    } ok[] = {
        {"0", 0},
        {"512", 512},
        {"10B", 10},
        {"64KiB", 65536},
        {"4MiB", 4194304},
        {"1GiB", 1073741824},
        {"1TiB", 1099511627776ull},
        {"18446744073709551615", UINT64_MAX},
        {"16777215TiB", 16777215ull << 40},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        uint64_t b = 1;
        if (config_parse_size(ok[i].s, &b) != 0)
            fail_msg("\"%s\" rejected", ok[i].s);
        assert_int_equal(b, ok[i].bytes);
    }
    static const char *const bad[] = {
        "",
        "4MB",
        "4 MiB",
        "4mib",
        "-1",
        "1.5MiB",
        "MiB",
        "4K",
        "4KiB ",
        " 4KiB",
        "4Ki",
        "16777216TiB",
        "18446744073709551616",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t b = 1;
        if (config_parse_size(bad[i], &b) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(b, 1);
    }
}

static void test_parse_bool(void **state)
{
    (void)state;
    static const char *const yes[] = {"true", "yes", "on", "1", "TRUE", "Yes"};
    static const char *const no[] = {"false", "no", "off", "0", "False", "OFF"};
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        bool b = false;
        assert_int_equal(config_parse_bool(yes[i], &b), 0);
        assert_true(b);
        b = true;
        assert_int_equal(config_parse_bool(no[i], &b), 0);
        assert_false(b);
    }
    static const char *const bad[] = {"", "2", "yess", "tru", "y", "n", " true", "true ", "01"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        bool b = true;
        if (config_parse_bool(bad[i], &b) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_true(b);
    }
}

static void test_parse_uint(void **state)
{
    (void)state;
    uint64_t v = 0;
    assert_int_equal(config_parse_uint("0", 10, &v), 0);
    assert_int_equal(v, 0);
    assert_int_equal(config_parse_uint("42", 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(config_parse_uint("0042", 100, &v), 0);
    assert_int_equal(v, 42);
    assert_int_equal(config_parse_uint("65535", 65535, &v), 0);
    assert_int_equal(v, 65535);
    assert_int_equal(config_parse_uint("18446744073709551615", UINT64_MAX, &v), 0);
    assert_int_equal(v, UINT64_MAX);
    v = 7;
    static const char *const bad[] = {
        "65536", "-1", "+1", " 1", "1 ", "0x10", "", "1e3", "18446744073709551616", "1.0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint64_t max = i == 8 ? UINT64_MAX : 65535;
        if (config_parse_uint(bad[i], max, &v) != -EINVAL)
            fail_msg("\"%s\" accepted", bad[i]);
        assert_int_equal(v, 7);
    }
}

/* ---- defaults ---------------------------------------------------------------------------- */

static void check_defaults(const struct config *c)
{
    assert_int_equal(c->daemon.log_level, LOG_INFO);
    assert_int_equal(c->daemon.log_format, LOG_FORMAT_TEXT);
    assert_string_equal(c->daemon.metrics_listen, "127.0.0.1:9464");
    assert_string_equal(c->daemon.spool_dir, "/var/lib/coingest/spool");
    assert_int_equal(c->daemon.shutdown_timeout_ms, 30000);

    assert_string_equal(c->database.host, "127.0.0.1");
    assert_int_equal(c->database.port, 3306);
    assert_null(c->database.socket);
    assert_string_equal(c->database.user, "coingest");
    assert_null(c->database.password);
    assert_string_equal(c->database.database, "coingest");
    assert_int_equal(c->database.workers, 2);
    assert_int_equal(c->database.batch_rows, 1000);
    assert_int_equal(c->database.batch_bytes, 4 << 20);
    assert_int_equal(c->database.flush_interval_ms, 1000);
    assert_int_equal(c->database.max_pending_rows, 200000);
    assert_int_equal(c->database.connect_timeout_ms, 5000);
    assert_true(c->database.auto_migrate);
    assert_null(c->database.migrations_dir); /* the built-in migrations */

    const struct cfg_source *s = CG(c);
    assert_string_equal(s->name, "coingecko");
    assert_string_equal(s->base_url, "https://api.coingecko.com/api/v3");
    assert_int_equal(s->plan, PLAN("public"));
    assert_null(s->api_key);
    assert_int_equal(s->rate_limit.count, 10);
    assert_int_equal(s->rate_limit.period_ms, 60000);
    assert_int_equal(s->burst, 1);
    assert_int_equal(s->timeout_ms, 30000);
    assert_int_equal(s->connect_timeout_ms, 10000);
    assert_int_equal(s->max_retries, 5);
    assert_int_equal(s->backoff_base_ms, 1000);
    assert_int_equal(s->backoff_cap_ms, 300000);
    assert_int_equal(s->max_body_bytes, 64 << 20);
    assert_int_equal(s->max_url_bytes, 8000);
    assert_int_equal(config_source_value(s, "per_page")->u, 250);
    assert_null(s->ca_file);
    assert_int_equal(s->monthly_credits, 0);
    assert_int_equal(s->plan_limit.count, 10);
    assert_int_equal(s->plan_limit.period_ms, 60000);

    assert_true(c->universe.all);
    assert_int_equal(c->universe.ids.n, 0);
    assert_int_equal(c->universe.top, 0);
    assert_int_equal(c->universe.categories.n, 0);
    assert_int_equal(c->universe.vs_currencies.n, 1);
    assert_string_equal(c->universe.vs_currencies.items[0], "usd");

    static const char *const names[] = {"assets", "prices", "market_caps"};
    static const uint64_t every[] = {86400000, 300000, 3600000};
    /* CoinGecko's jobs come first (history and ohlc off until configured); the other sources'
     * follow. Of those sources only analytics and export (no remote API) are on; retention and
     * export are jobs that are off. */
    assert_int_equal(c->njobs, 12);
    static const char *const others[] = {
        "history",   "ohlc",           "coinbase_candles", "rollups", "indicators",
        "retention", "coincap_assets", "coincap_history",  "export"};
    static const bool others_on[] = {false, false, true, true, true, false, true, true, false};
    for (size_t i = 0; i < 9; i++) {
        assert_string_equal(c->jobs[3 + i].name, others[i]);
        assert_int_equal(c->jobs[3 + i].enabled, others_on[i]);
    }
    for (size_t i = 0; i < c->nsources; i++)
        assert_int_equal(c->sources[i].enabled, strcmp(c->sources[i].name, "coingecko") == 0 ||
                                                    strcmp(c->sources[i].name, "analytics") == 0 ||
                                                    strcmp(c->sources[i].name, "export") == 0);
    assert_int_equal(c->naliases, 0);
    for (size_t i = 0; i < 3; i++) {
        const struct cfg_job *j = &c->jobs[i];
        assert_string_equal(j->name, names[i]);
        assert_true(j->enabled);
        assert_int_equal(j->every_ms, every[i]);
        assert_true(j->align);
        assert_int_equal(j->offset_ms, 0);
        assert_int_equal(j->jitter_ms, 0);
        assert_true(j->run_at_start);
    }
}

static bool diff_empty(const struct config_diff *d)
{
    bool any = d->daemon_log || d->restart_needed || d->database || d->source_rate ||
               d->source_other || d->universe || d->job || d->job_other;
    return !any;
}

static void test_defaults(void **state)
{
    (void)state;
    struct config *c = config_defaults();
    assert_non_null(c);
    check_defaults(c);
    config_free(c);
    config_free(NULL);
}

static void test_minimal_and_empty_files(void **state)
{
    (void)state;
    struct config *c = load_ok("");
    check_defaults(c);
    assert_string_equal(c->path, conf_path);
    config_free(c);

    c = load_ok("; only comments\n# and more\n\n[daemon]\n");
    check_defaults(c);
    config_free(c);

    char path[PATH_MAX];
    const char *fx = getenv("COINGEST_FIXTURES");
    assert_non_null(fx);
    snprintf(path, sizeof(path), "%s/config/minimal.conf", fx);
    char err[512];
    assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
    check_defaults(c);
    config_free(c);
}

static void test_job_index(void **state)
{
    (void)state;
    struct config *c = config_defaults();
    assert_non_null(c);
    assert_int_equal(config_job_index(c, "assets"), 0);
    assert_int_equal(config_job_index(c, "prices"), 1);
    assert_int_equal(config_job_index(c, "market_caps"), 2);
    assert_int_equal(config_job_index(c, "price"), -1);
    assert_int_equal(config_job_index(c, ""), -1);
    assert_int_equal(config_job_index(c, NULL), -1);
    config_free(c);

    /* [retention] configures the retention job. */
    c = load_ok("[retention]\nenabled = true\nmax_age = 30d\n");
    const struct cfg_job *r = JOB(c, "retention");
    assert_true(r->enabled);
    assert_int_equal(config_job_value(r, "max_age")->u, 30 * 86400000ull);
    config_free(c);
}

/* The shipped example must parse, and it describes exactly the built-in defaults. */
static void test_example_file(void **state)
{
    (void)state;
    const char *src = getenv("COINGEST_SOURCE_DIR");
    assert_non_null(src);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/etc/coingest.conf", src);
    struct config *c = NULL;
    char err[1024] = "";
    int r = config_load(path, &c, err, sizeof(err));
    if (r)
        fail_msg("etc/coingest.conf: %s", err);
    check_defaults(c);
    struct config *d = config_defaults();
    struct config_diff diff;
    config_diff(c, d, &diff);
    assert_true(diff_empty(&diff));
    config_free(d);
    config_free(c);
}

static void test_full_file(void **state)
{
    (void)state;
    const char *fx = getenv("COINGEST_FIXTURES");
    assert_non_null(fx);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/config/full.conf", fx);
    struct config *c = NULL;
    char err[1024] = "";
    if (config_load(path, &c, err, sizeof(err)))
        fail_msg("%s", err);

    assert_int_equal(c->daemon.log_level, LOG_DEBUG);
    assert_int_equal(c->daemon.log_format, LOG_FORMAT_JSON);
    assert_string_equal(c->daemon.metrics_listen, "[::1]:9100");
    assert_string_equal(c->daemon.spool_dir, "/tmp/coingest-spool");
    assert_int_equal(c->daemon.shutdown_timeout_ms, 45000);

    assert_string_equal(c->database.host, "db.example.internal");
    assert_int_equal(c->database.port, 3307);
    assert_string_equal(c->database.socket, "/run/mysqld/mysqld.sock");
    assert_string_equal(c->database.user, "ingest");
    assert_string_equal(c->database.password, "s3cret-pw");
    assert_string_equal(c->database.database, "market");
    assert_int_equal(c->database.workers, 4);
    assert_int_equal(c->database.batch_rows, 500);
    assert_int_equal(c->database.batch_bytes, 8 << 20);
    assert_int_equal(c->database.flush_interval_ms, 250);
    assert_int_equal(c->database.max_pending_rows, 50000);
    assert_int_equal(c->database.connect_timeout_ms, 7000);
    assert_false(c->database.auto_migrate);
    assert_string_equal(c->database.migrations_dir, "/opt/coingest/sql");

    const struct cfg_source *s = CG(c);
    assert_int_equal(s->plan, PLAN("pro"));
    assert_string_equal(s->base_url, "https://proxy.example.com/cg/v3");
    assert_string_equal(s->api_key, "CG-prokey123");
    /* rate_limit comes before plan in the file and still wins over the pro default. */
    assert_int_equal(s->rate_limit.count, 250);
    assert_int_equal(s->rate_limit.period_ms, 60000);
    assert_int_equal(s->burst, 5);
    assert_int_equal(s->timeout_ms, 20000);
    assert_int_equal(s->connect_timeout_ms, 3000);
    assert_int_equal(s->max_retries, 7);
    assert_int_equal(s->backoff_base_ms, 500);
    assert_int_equal(s->backoff_cap_ms, 120000);
    assert_int_equal(s->max_body_bytes, 32 << 20);
    assert_int_equal(s->max_url_bytes, 4000);
    assert_int_equal(config_source_value(s, "per_page")->u, 100);
    assert_string_equal(s->ca_file, "/etc/ssl/certs/ca-certificates.crt");
    assert_int_equal(s->monthly_credits, 1000000);
    assert_int_equal(s->plan_limit.count, 1000);

    assert_false(c->universe.all);
    assert_int_equal(c->universe.ids.n, 3);
    assert_string_equal(c->universe.ids.items[0], "bitcoin");
    assert_string_equal(c->universe.ids.items[1], "ethereum");
    assert_string_equal(c->universe.ids.items[2], "solana");
    assert_int_equal(c->universe.top, 100);
    assert_int_equal(c->universe.categories.n, 2);
    assert_string_equal(c->universe.categories.items[0], "smart-contract-platform");
    assert_string_equal(c->universe.categories.items[1], "meme-token");
    assert_int_equal(c->universe.vs_currencies.n, 3);
    assert_string_equal(c->universe.vs_currencies.items[0], "usd");
    assert_string_equal(c->universe.vs_currencies.items[1], "eur");
    assert_string_equal(c->universe.vs_currencies.items[2], "btc");

    const struct cfg_job *a = JOB(c, "assets");
    assert_false(a->enabled);
    assert_int_equal(a->every_ms, 12 * 3600000);
    assert_false(a->align);
    assert_int_equal(a->offset_ms, 30 * 60000);
    assert_int_equal(a->jitter_ms, 5 * 60000);
    assert_false(a->run_at_start);
    const struct cfg_job *p = JOB(c, "prices");
    assert_true(p->enabled);
    assert_int_equal(p->every_ms, 60000);
    assert_int_equal(p->offset_ms, 10000);
    assert_int_equal(p->jitter_ms, 5000);
    const struct cfg_job *m = JOB(c, "market_caps");
    assert_int_equal(m->every_ms, 7200000);
    assert_false(m->run_at_start);
    assert_true(m->align);
    config_free(c);
}

/* ---- plan defaults ------------------------------------------------------------------------ */

static void test_plan_defaults(void **state)
{
    (void)state;
    struct config *c = load_ok("[source.coingecko]\nplan = demo\napi_key = CG-demo\n");
    assert_int_equal(CG(c)->plan, PLAN("demo"));
    assert_string_equal(CG(c)->base_url, "https://api.coingecko.com/api/v3");
    assert_int_equal(CG(c)->rate_limit.count, 100);
    assert_int_equal(CG(c)->rate_limit.period_ms, 60000);
    assert_int_equal(CG(c)->plan_limit.count, 100);
    assert_int_equal(CG(c)->monthly_credits, 10000);
    config_free(c);

    c = load_ok("[source.coingecko]\napi_key = CG-pro\nplan = pro\n");
    assert_string_equal(CG(c)->base_url, "https://pro-api.coingecko.com/api/v3");
    assert_int_equal(CG(c)->rate_limit.count, 250);
    assert_int_equal(CG(c)->plan_limit.count, 250);
    assert_int_equal(CG(c)->monthly_credits, 100000);
    config_free(c);

    /* An explicit value wins whatever the order of keys. */
    static const char *const orders[] = {
        "[source.coingecko]\nplan = pro\napi_key = k\nrate_limit = 5/s\n"
        "base_url = https://cg-proxy.example/api/v3\nmonthly_credits = 7\nplan_limit = 9/s\n",
        "[source.coingecko]\nrate_limit = 5/s\nbase_url = https://cg-proxy.example/api/v3\n"
        "monthly_credits = 7\nplan_limit = 9/s\napi_key = k\nplan = pro\n",
    };
    for (size_t i = 0; i < 2; i++) {
        c = load_ok(orders[i]);
        assert_int_equal(CG(c)->plan, PLAN("pro"));
        assert_string_equal(CG(c)->base_url, "https://cg-proxy.example/api/v3");
        assert_int_equal(CG(c)->rate_limit.count, 5);
        assert_int_equal(CG(c)->rate_limit.period_ms, 1000);
        assert_int_equal(CG(c)->monthly_credits, 7);
        assert_int_equal(CG(c)->plan_limit.count, 9);
        config_free(c);
    }

    /* An empty base_url is "not set": the plan's default applies. */
    c = load_ok("[source.coingecko]\nbase_url =\nplan = pro\napi_key = k\n");
    assert_string_equal(CG(c)->base_url, "https://pro-api.coingecko.com/api/v3");
    config_free(c);
}

/* A key sent to the other plan's host is refused, naming the host that goes with it; a host of
 * no plan (a proxy, the fake API) is accepted, and so is the right one spelled differently. */
static void test_plan_hosts(void **state)
{
    (void)state;
    expect_error("[source.coingecko]\nplan = pro\napi_key = k\n"
                 "base_url = https://api.coingecko.com/api/v3\n",
                 "4: [source.coingecko] base_url: api.coingecko.com is the host of plan public, "
                 "demo; plan pro goes with pro-api.coingecko.com (leave base_url unset to get "
                 "the plan's own)");
    expect_error("[source.coingecko]\nbase_url = https://user@PRO-API.coingecko.com:443/api/v3\n"
                 "plan = demo\napi_key = k\n",
                 "2: [source.coingecko] base_url: pro-api.coingecko.com is the host of plan pro; "
                 "plan demo goes with api.coingecko.com (leave base_url unset to get the plan's "
                 "own)");
    expect_error("[source.coingecko]\nbase_url = https://pro-api.coingecko.com/api/v3\n",
                 "2: [source.coingecko] base_url: pro-api.coingecko.com is the host of plan pro; "
                 "plan public goes with api.coingecko.com (leave base_url unset to get the "
                 "plan's own)");
    static const char *const fine[] = {
        "[source.coingecko]\nplan = pro\napi_key = k\nbase_url = http://127.0.0.1:8080/v3\n",
        "[source.coingecko]\nplan = demo\napi_key = k\nbase_url = https://API.CoinGecko.com/x\n",
        "[source.coingecko]\nplan = pro\napi_key = k\n"
        "base_url = https://pro-api.coingecko.com:443/api/v3\n",
    };
    for (size_t i = 0; i < ARRAY_SIZE(fine); i++)
        config_free(load_ok(fine[i]));

    /* From the environment, the error names the variable. */
    setenv("COINGEST_COINGECKO_BASE_URL", "https://api.coingecko.com/api/v3", 1);
    expect_error("[source.coingecko]\nplan = pro\napi_key = k\n",
                 "0: [source.coingecko] base_url (COINGEST_COINGECKO_BASE_URL): api.coingecko.com "
                 "is the host of plan public, demo; plan pro goes with pro-api.coingecko.com "
                 "(leave base_url unset to get the plan's own)");
}

/* ---- error messages ------------------------------------------------------------------------ */

static void test_errors_structure(void **state)
{
    (void)state;
    expect_error(
        "[daemon]\nlog_level = info\n[foo]\nx = 1\n",
        "3: [foo]: unknown section (known: [daemon], [database], [cluster], [source.coingecko], "
        "[source.coinbase], [source.analytics], [source.coincap], [source.export], [universe], "
        "[job.assets], [job.prices], [job.market_caps], [job.history], [job.ohlc], "
        "[job.coinbase_candles], "
        "[job.rollups], [job.indicators], [job.retention], [job.coincap_assets], "
        "[job.coincap_history], [job.export], [aliases])");
    expect_error("[source.coinmarketcap]\n",
                 "1: [source.coinmarketcap]: unknown source \"coinmarketcap\" (known: coingecko, "
                 "coinbase, analytics, coincap, export)");
    expect_error(
        "\n[job.price]\nevery = 5m\n",
        "2: [job.price]: unknown job \"price\" (known: assets, prices, market_caps, history, "
        "ohlc, coinbase_candles, rollups, indicators, retention, coincap_assets, "
        "coincap_history, export)");
    /* [retention] is [job.retention] under the name issue 16 gave it; not both. */
    expect_error("[job.retention]\nenabled = true\n[retention]\nmax_age = 30d\n",
                 "3: [retention]: section appears twice (first at line 1)");
    /* A source without a remote API takes only `enabled` of the generic source keys. */
    expect_error("[source.analytics]\nenabled = true\nrate_limit = 5/s\n",
                 "3: [source.analytics] rate_limit: unknown key (known: enabled)");
    expect_error("[aliases]\ncoinbase.BTC = bitcoin\ncoinbase.BTC = batcat\n",
                 "3: [aliases] coinbase.BTC: duplicate alias");
    expect_error("[aliases]\nkraken.XBT = bitcoin\n",
                 "2: [aliases] kraken.XBT: unknown source \"kraken\" (known: coingecko, coinbase, "
                 "analytics, coincap, export)");
    expect_error("[aliases]\nBTC = bitcoin\n",
                 "2: [aliases] BTC: expected SOURCE.KEY = ASSET_ID (e.g. <source>.BTC = bitcoin)");
    struct config *ac = load_ok("[aliases]\ncoinbase.BTC = bitcoin\ncoinbase.btc = batcat\n");
    assert_int_equal(ac->naliases, 2);
    assert_string_equal(config_alias(ac, "coinbase", "BTC"), "bitcoin");
    assert_string_equal(config_alias(ac, "coinbase", "btc"), "batcat");
    assert_null(config_alias(ac, "coingecko", "BTC"));
    config_free(ac);
    expect_error("[daemon]\nlog_levl = info\n",
                 "2: [daemon] log_levl: unknown key (known: log_level, log_format, "
                 "metrics_listen, spool_dir, shutdown_timeout, health_db_grace)");
    expect_error("[job.prices]\nevry = 5m\n",
                 "2: [job.prices] evry: unknown key (known: enabled, every, align, offset, "
                 "jitter, run_at_start)");
    expect_error("[daemon]\nlog_level = info\n; comment\nlog_level = debug\n",
                 "4: [daemon] log_level: duplicate key (first set at line 2)");
    /* An empty value still counts as the key being given. */
    expect_error("[database]\nsocket =\nsocket = /x\n",
                 "3: [database] socket: duplicate key (first set at line 2)");
    expect_error("[daemon]\n[database]\n[daemon]\n",
                 "3: [daemon]: section appears twice (first at line 1)");
    expect_error("log_level = info\n[daemon]\n", "1: log_level: key outside any [section]");
    expect_error("[daemon]\nlog_level\n",
                 "2: syntax error (expected \"key = value\", \"[section]\" or a comment)");
    expect_error("[daemon\n", "1: section header without a closing \"]\"");
    expect_error("[daemon] extra\n", "1: [daemon]: unexpected text after \"]\"");
    expect_error("[daemon]\n= info\n", "2: [daemon] missing key name before \"=\"");
    expect_error("[daemon]\nspool_dir = /a\n    /b\n",
                 "3: [daemon] spool_dir: indented continuation line (only ids, categories and "
                 "vs_currencies may span lines)");
    expect_error("[universe]\nids = bitcoin,\n\n[daemon]\n",
                 "2: [universe] ids: list ends with a comma but no indented continuation line "
                 "follows");
    expect_error("[universe]\nids = bitcoin,\n",
                 "2: [universe] ids: list ends with a comma but no indented continuation line "
                 "follows");

    char longline[400];
    snprintf(longline, sizeof(longline), "[universe]\nids = %0300d\n", 0);
    expect_error(longline, "2: line is longer than 198 characters");

    /* The error on the earliest line wins, even when noticed later. */
    expect_error("[universe]\nids = a,\n[bogus]\n",
                 "2: [universe] ids: list ends with a comma but no indented continuation line "
                 "follows");
    expect_error("[daemon]\nlog_level = loud\nlog_format = xml\n",
                 "2: [daemon] log_level: \"loud\" is not a log level (error, warn, info, debug)");
    expect_error("[daemon]\nlog_level = info\nbogus\nlog_format = xml\n",
                 "3: syntax error (expected \"key = value\", \"[section]\" or a comment)");

    /* A NUL byte. */
    static const char nul[] = "[daemon]\nlog_level = in\0fo\n";
    write_bytes(conf_path, nul, sizeof(nul) - 1);
    struct config *c = NULL;
    char err[512], want[PATH_MAX + 64];
    assert_int_equal(config_load(conf_path, &c, err, sizeof(err)), -EINVAL);
    snprintf(want, sizeof(want), "%s:2: NUL byte in the file", conf_path);
    assert_string_equal(err, want);
}

static void test_errors_values(void **state)
{
    (void)state;
    expect_error(
        "[job.assets]\nevery = 24h\n[job.prices]\nevery = 5 minutes\n",
        "4: [job.prices] every: \"5 minutes\" is not a duration (e.g. 30s, 5m, 1h, or auto)");
    expect_error("[job.prices]\nevery = 0\n",
                 "2: [job.prices] every: \"0\" is too short (at least 1ms)");
    expect_error("[daemon]\nshutdown_timeout = 213503982335d\n",
                 "2: [daemon] shutdown_timeout: \"213503982335d\" is too large");
    expect_error("[database]\nconnect_timeout = 500ms\n",
                 "2: [database] connect_timeout: \"500ms\" is too short (at least 1s)");
    expect_error("[source.coingecko]\nrate_limit = 30/week\n",
                 "2: [source.coingecko] rate_limit: \"30/week\" is not a rate (e.g. 30/min, "
                 "5/s, 100/h)");
    expect_error("[source.coingecko]\nrate_limit = 0/min\n",
                 "2: [source.coingecko] rate_limit: \"0/min\" is not a rate (e.g. 30/min, 5/s, "
                 "100/h)");
    expect_error("[source.coingecko]\nplan_limit = 4294967296/s\n",
                 "2: [source.coingecko] plan_limit: \"4294967296/s\" is too large a rate (at "
                 "most 4294967295 per period)");
    expect_error("[database]\nbatch_bytes = 4MB\n",
                 "2: [database] batch_bytes: \"4MB\" is not a size (e.g. 65536, 64KiB, 4MiB, "
                 "1GiB)");
    expect_error("[database]\nbatch_bytes = 2GiB\n",
                 "2: [database] batch_bytes: \"2GiB\" is out of range (1KiB to 1GiB)");
    expect_error("[source.coingecko]\nmax_body_size = 512\n",
                 "2: [source.coingecko] max_body_size: \"512\" is out of range (at least 1KiB)");
    expect_error("[source.coingecko]\nmax_body_size = 99999999999TiB\n",
                 "2: [source.coingecko] max_body_size: \"99999999999TiB\" is out of range (at "
                 "least 1KiB)");
    expect_error("[database]\nauto_migrate = maybe\n",
                 "2: [database] auto_migrate: \"maybe\" is not a boolean (true/false, yes/no, "
                 "on/off, 1/0)");
    expect_error("[database]\nport = 70000\n",
                 "2: [database] port: \"70000\" is not an integer in 1..65535");
    expect_error("[database]\nport = 0\n",
                 "2: [database] port: \"0\" is not an integer in 1..65535");
    expect_error("[database]\nworkers = -1\n",
                 "2: [database] workers: \"-1\" is not an integer in 1..64");
    expect_error("[universe]\ntop = 99999999999999999999999\n",
                 "2: [universe] top: \"99999999999999999999999\" is not an integer in "
                 "0..4294967295");
    expect_error("[source.coingecko]\nper_page = 251\n",
                 "2: [source.coingecko] per_page: \"251\" is not an integer in 1..250");
    expect_error("[daemon]\nlog_format = xml\n",
                 "2: [daemon] log_format: \"xml\" is not a log format (text, json)");
    expect_error("[source.coingecko]\nplan = enterprise\n",
                 "2: [source.coingecko] plan: \"enterprise\" is not a plan (public, demo, pro)");
    expect_error("[daemon]\nmetrics_listen = 9464\n",
                 "2: [daemon] metrics_listen: \"9464\" is not HOST:PORT (e.g. 127.0.0.1:9464 or "
                 "[::1]:9464; empty disables)");
    expect_error("[daemon]\nmetrics_listen = localhost:0\n",
                 "2: [daemon] metrics_listen: \"localhost:0\" is not HOST:PORT (e.g. "
                 "127.0.0.1:9464 or [::1]:9464; empty disables)");
    expect_error("[source.coingecko]\nbase_url = ftp://x\n",
                 "2: [source.coingecko] base_url: \"ftp://x\" is not an http:// or https:// URL "
                 "without query or fragment");
    expect_error("[universe]\nvs_currencies = usd, us-dollar\n",
                 "2: [universe] vs_currencies: \"us-dollar\" is not a currency code (letters and "
                 "digits, e.g. usd, eur, btc)");
    expect_error("[universe]\nids = bitcoin,,ethereum\n",
                 "2: [universe] ids: empty item in list \"bitcoin,,ethereum\" (items are "
                 "separated by single commas)");
    expect_error("[universe]\ncategories = , gaming\n",
                 "2: [universe] categories: empty item in list \", gaming\" (items are "
                 "separated by single commas)");
    expect_error("[universe]\nids = bitcoin,\n   ethereum, bitcoin\n",
                 "3: [universe] ids: \"bitcoin\" is listed twice");
    expect_error("[universe]\nvs_currencies = usd, USD\n",
                 "2: [universe] vs_currencies: \"usd\" is listed twice");
    expect_error("[universe]\nids = all, bitcoin\n",
                 "2: [universe] ids: \"all\" cannot be combined with other ids");
}

static void test_errors_cross_field(void **state)
{
    (void)state;
    expect_error("[source.coingecko]\nplan = demo\n",
                 "2: [source.coingecko] plan: plan \"demo\" needs an API key (set api_key or "
                 "api_key_file, or COINGEST_COINGECKO_API_KEY or "
                 "COINGEST_COINGECKO_API_KEY_FILE)");
    expect_error("[source.coingecko]\nplan = pro\napi_key =\n",
                 "2: [source.coingecko] plan: plan \"pro\" needs an API key (set api_key or "
                 "api_key_file, or COINGEST_COINGECKO_API_KEY or "
                 "COINGEST_COINGECKO_API_KEY_FILE)");
    expect_error("[source.coingecko]\n\napi_key = CG-x\n",
                 "3: [source.coingecko] api_key: an API key is set but plan is public (set plan "
                 "= demo or plan = pro, or COINGEST_COINGECKO_PLAN)");
    expect_error("[source.coingecko]\nbackoff_cap = 500ms\n",
                 "2: [source.coingecko] backoff_cap: backoff_cap (500ms) is less than "
                 "backoff_base (1s)");
    expect_error("[source.coingecko]\nbackoff_base = 10m\n",
                 "2: [source.coingecko] backoff_base: backoff_cap (5m) is less than "
                 "backoff_base (10m)");
    expect_error("[job.prices]\nevery = 5m\noffset = 5m\n",
                 "3: [job.prices] offset: offset (5m) must be less than every (5m)");
    expect_error("[job.market_caps]\njitter = 2h\n",
                 "2: [job.market_caps] jitter: jitter (2h) must be less than every (1h)");
    expect_error("[job.assets]\noffset = 1h\n\nevery = 30m\n",
                 "2: [job.assets] offset: offset (1h) must be less than every (30m)");
    expect_error("[database]\npassword = a\npassword_file = /nonexistent/pw\n",
                 "3: [database] password_file: set password or password_file, not both");
    expect_error("[database]\npassword_file = /nonexistent/pw\npassword = a\n",
                 "3: [database] password: set password or password_file, not both");
    expect_error("[database]\npassword_file = /nonexistent/pw\n",
                 "2: [database] password_file: cannot read \"/nonexistent/pw\": No such file or "
                 "directory");

    char empty[PATH_MAX + 16], text[2 * PATH_MAX], want[3 * PATH_MAX];
    tmp_path(empty, sizeof(empty), "empty");
    write_file(empty, "\nsecond line\n");
    snprintf(text, sizeof(text), "[source.coingecko]\nplan = demo\napi_key_file = %s\n", empty);
    snprintf(want, sizeof(want),
             "3: [source.coingecko] api_key_file: \"%s\" is empty (expected the secret on its "
             "first line)",
             empty);
    expect_error(text, want);
    snprintf(text, sizeof(text), "[database]\npassword_file = %s\n", tmpdir);
    snprintf(want, sizeof(want), "2: [database] password_file: cannot read \"%s\": Is a directory",
             tmpdir);
    expect_error(text, want);
}

/* [cluster] keys and [database] hosts: defaults, what is refused, and the host list reader. */
static void test_cluster_keys(void **state)
{
    (void)state;
    expect_error("[cluster]\nlease = 10s\nrenew = 4s\n",
                 "3: [cluster] renew: renew (4000ms) must be at most a third of lease (10000ms): "
                 "a holder counts a lease as its own for lease - renew after each renewal, which "
                 "must outlast the next one");
    expect_error("[cluster]\nlease = 1s\n",
                 "2: [cluster] lease: \"1s\" is too short (at least 2s)");
    expect_error("[cluster]\ninstance = \"a b\"\n",
                 "2: [cluster] instance: an instance name is 1 to 100 printable ASCII characters "
                 "without spaces, quotes or backslashes");
    expect_error("[database]\nhosts = a:3306, , c\n",
                 "2: [database] hosts: expected a comma-separated list of HOST or HOST:PORT (entry "
                 "2 is not)");
    expect_error("[database]\nhosts = a:99999\n",
                 "2: [database] hosts: expected a comma-separated list of HOST or HOST:PORT (entry "
                 "1 is not)");

    struct config *cfg = NULL;
    char err[1024] = "";
    assert_int_equal(load_text("[database]\nport = 3307\nhosts = db1:3306, db2 ,db3:4000\n"
                               "[cluster]\nenabled = yes\ninstance = node-a\nlease = 6s\n"
                               "renew = 2s\n",
                               &cfg, err, sizeof(err)),
                     0);
    assert_true(cfg->cluster.enabled);
    assert_string_equal(cfg->cluster.instance, "node-a");
    assert_int_equal(cfg->cluster.lease_ms, 6000);
    assert_int_equal(cfg->cluster.renew_ms, 2000);
    char host[64];
    uint32_t port = 0;
    assert_int_equal(config_host_at(cfg->database.hosts, 0, 3307, host, sizeof(host), &port), 0);
    assert_string_equal(host, "db1");
    assert_int_equal(port, 3306);
    assert_int_equal(config_host_at(cfg->database.hosts, 1, 3307, host, sizeof(host), &port), 0);
    assert_string_equal(host, "db2");
    assert_int_equal(port, 3307);
    assert_int_equal(config_host_at(cfg->database.hosts, 2, 3307, host, sizeof(host), &port), 0);
    assert_string_equal(host, "db3");
    assert_int_equal(port, 4000);
    assert_int_equal(config_host_at(cfg->database.hosts, 3, 3307, host, sizeof(host), &port),
                     -ENOENT);
    config_free(cfg);

    cfg = config_defaults();
    assert_non_null(cfg);
    assert_false(cfg->cluster.enabled);
    assert_null(cfg->cluster.instance);
    assert_null(cfg->database.hosts);
    assert_int_equal(cfg->cluster.lease_ms, 15000);
    assert_int_equal(cfg->cluster.renew_ms, 5000);
    config_free(cfg);
}

static void test_missing_file(void **state)
{
    (void)state;
    struct config *c = (struct config *)1;
    char err[512], want[PATH_MAX + 64], path[PATH_MAX + 16];
    tmp_path(path, sizeof(path), "does-not-exist.conf");
    assert_int_equal(config_load(path, &c, err, sizeof(err)), -ENOENT);
    assert_null(c);
    snprintf(want, sizeof(want), "%s: cannot read: No such file or directory", path);
    assert_string_equal(err, want);
    /* A NULL or zero-sized err buffer is allowed. */
    assert_int_equal(config_load(path, &c, NULL, 0), -ENOENT);
    write_file(conf_path, "[daemon]\nbogus = 1\n");
    assert_int_equal(config_load(conf_path, &c, NULL, 0), -EINVAL);
    assert_null(c);
}

/* ---- syntax details ---------------------------------------------------------------------- */

static void test_syntax_details(void **state)
{
    (void)state;
    struct config *c = load_ok("\xEF\xBB\xBF[daemon]\r\n"
                               "  log_level = debug ; inline comment\r\n"
                               "spool_dir = /var/spool;x   \n"
                               "# hash comment\n"
                               "\t; indented comment\n"
                               "metrics_listen =\n"
                               "[database]\n"
                               "host =\n"
                               "socket =   \n"
                               "password = p#w;rd\n"
                               "[universe]\n"
                               "ids =\n"
                               "    bitcoin, usd-coin,\n"
                               "; a comment between continuation lines\n"
                               "    1move token ,  boringdao-[old]\n"
                               "    hive_dollar\n"
                               "vs_currencies = USD\n"
                               "categories = gaming\n");
    assert_int_equal(c->daemon.log_level, LOG_DEBUG);
    assert_string_equal(c->daemon.spool_dir, "/var/spool;x");
    assert_string_equal(c->daemon.metrics_listen, "");  /* empty disables */
    assert_string_equal(c->database.host, "127.0.0.1"); /* empty: the default */
    assert_null(c->database.socket);
    assert_string_equal(c->database.password, "p#w;rd");
    assert_false(c->universe.all);
    assert_int_equal(c->universe.ids.n, 5);
    assert_string_equal(c->universe.ids.items[0], "bitcoin");
    assert_string_equal(c->universe.ids.items[1], "usd-coin");
    assert_string_equal(c->universe.ids.items[2], "1move token");
    assert_string_equal(c->universe.ids.items[3], "boringdao-[old]");
    assert_string_equal(c->universe.ids.items[4], "hive_dollar");
    assert_int_equal(c->universe.vs_currencies.n, 1);
    assert_string_equal(c->universe.vs_currencies.items[0], "usd");
    assert_int_equal(c->universe.categories.n, 1);
    config_free(c);

    c = load_ok("[universe]\nids = all\n");
    assert_true(c->universe.all);
    assert_int_equal(c->universe.ids.n, 0);
    config_free(c);

    /* Sections and keys may be indented; "key: value" is inih's alternative syntax. */
    c = load_ok("  [daemon]\n    log_level: warn\n\t[ database ]\n\tport = 3310\n");
    assert_int_equal(c->daemon.log_level, LOG_WARN);
    assert_int_equal(c->database.port, 3310);
    config_free(c);

    /* A long list on one line is read whole (inih's 200-byte buffer gets it in pieces cut
     * after commas), and an error in a later piece still names the line. */
    char list[4096];
    int m = snprintf(list, sizeof(list), "[universe]\nids = ");
    for (int i = 0; i < 120; i++)
        m += snprintf(list + m, sizeof(list) - (size_t)m, "%scoin-%05d", i ? ", " : "", i);
    snprintf(list + m, sizeof(list) - (size_t)m, "\nvs_currencies = usd\n");
    c = load_ok(list);
    assert_int_equal(c->universe.ids.n, 120);
    assert_string_equal(c->universe.ids.items[0], "coin-00000");
    assert_string_equal(c->universe.ids.items[119], "coin-00119");
    config_free(c);
    m = snprintf(list, sizeof(list), "[universe]\nvs_currencies = ");
    for (int i = 0; i < 60; i++)
        m += snprintf(list + m, sizeof(list) - (size_t)m, "%susd", i ? ", " : "");
    snprintf(list + m, sizeof(list) - (size_t)m, ", not-a-currency\n");
    c = NULL;
    char err[512];
    char path[] = "/tmp/coingest-longlist-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, list, strlen(list)), (ssize_t)strlen(list));
    close(fd);
    assert_int_equal(config_load(path, &c, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, ":2: [universe] vs_currencies"));
    unlink(path);

    /* A 198-character line is fine. */
    char text[512];
    int n = snprintf(text, sizeof(text), "[daemon]\nspool_dir = /");
    memset(text + n, 'a', 198 - 13);
    snprintf(text + n + 198 - 13, sizeof(text) - (size_t)n - 198 + 13, "\n");
    c = load_ok(text);
    assert_int_equal(strlen(c->daemon.spool_dir), 198 - 12);
    config_free(c);
}

/* ---- environment and secret files ---------------------------------------------------------- */

static void test_env_overrides(void **state)
{
    (void)state;
    setenv("COINGEST_DB_HOST", "db.internal", 1);
    setenv("COINGEST_DB_PORT", "3310", 1);
    setenv("COINGEST_DB_SOCKET", "/run/db.sock", 1);
    setenv("COINGEST_DB_USER", "envuser", 1);
    setenv("COINGEST_DB_NAME", "envdb", 1);
    setenv("COINGEST_DB_PASSWORD", "envpw", 1);
    setenv("COINGEST_COINGECKO_API_KEY", "CG-env", 1);
    struct config *c = load_ok("[database]\nhost = filehost\nport = 1\nuser = fileuser\n"
                               "password = filepw\ndatabase = filedb\n"
                               "[source.coingecko]\nplan = demo\napi_key = CG-file\n");
    assert_string_equal(c->database.host, "db.internal");
    assert_int_equal(c->database.port, 3310);
    assert_string_equal(c->database.socket, "/run/db.sock");
    assert_string_equal(c->database.user, "envuser");
    assert_string_equal(c->database.database, "envdb");
    assert_string_equal(c->database.password, "envpw");
    assert_string_equal(CG(c)->api_key, "CG-env");
    config_free(c);

    /* The environment's key satisfies plan = demo; empty variables count as unset. */
    clear_env();
    setenv("COINGEST_COINGECKO_API_KEY", "CG-env", 1);
    setenv("COINGEST_DB_HOST", "", 1);
    c = load_ok("[source.coingecko]\nplan = demo\n");
    assert_string_equal(CG(c)->api_key, "CG-env");
    assert_string_equal(c->database.host, "127.0.0.1");
    config_free(c);

    /* An env key with plan public is reported against the variable. */
    expect_error("[source.coingecko]\nplan = public\n",
                 "0: [source.coingecko] api_key (COINGEST_COINGECKO_API_KEY): an API key is set "
                 "but plan is public (set plan = demo or plan = pro, or COINGEST_COINGECKO_PLAN)");

    clear_env();
    setenv("COINGEST_DB_PORT", "http", 1);
    expect_error("[database]\n",
                 "0: [database] port (COINGEST_DB_PORT): \"http\" is not an integer in 1..65535");

    clear_env();
    setenv("COINGEST_DB_PASSWORD", "a", 1);
    setenv("COINGEST_DB_PASSWORD_FILE", "/nonexistent", 1);
    expect_error("[database]\n", "0: [database] password: COINGEST_DB_PASSWORD and "
                                 "COINGEST_DB_PASSWORD_FILE are both set (set one)");

    clear_env();
    setenv("COINGEST_DB_PASSWORD_FILE", "/nonexistent", 1);
    expect_error("[database]\npassword = filepw\n",
                 "0: [database] password_file (COINGEST_DB_PASSWORD_FILE): cannot read "
                 "\"/nonexistent\": No such file or directory");
}

/* A container without a file: the key and the plan from the environment are enough, and the
 * plan's defaults follow the variable; the other keys a plan needs can come from there too. */
static void test_env_source_overrides(void **state)
{
    (void)state;
    setenv("COINGEST_COINGECKO_API_KEY", "CG-env", 1);
    setenv("COINGEST_COINGECKO_PLAN", "demo", 1);
    struct config *c = load_ok("");
    assert_int_equal(CG(c)->plan, PLAN("demo"));
    assert_string_equal(CG(c)->api_key, "CG-env");
    assert_string_equal(CG(c)->base_url, "https://api.coingecko.com/api/v3");
    assert_int_equal(CG(c)->rate_limit.count, 100);
    assert_int_equal(CG(c)->monthly_credits, 10000);
    config_free(c);

    /* The variable wins over the file, and the plan's defaults follow the variable. */
    setenv("COINGEST_COINGECKO_PLAN", "pro", 1);
    c = load_ok("[source.coingecko]\nplan = public\n");
    assert_int_equal(CG(c)->plan, PLAN("pro"));
    assert_string_equal(CG(c)->base_url, "https://pro-api.coingecko.com/api/v3");
    assert_int_equal(CG(c)->rate_limit.count, 250);
    config_free(c);

    setenv("COINGEST_COINGECKO_BASE_URL", "http://127.0.0.1:9/api/v3", 1);
    setenv("COINGEST_COINGECKO_RATE_LIMIT", "20/min", 1);
    setenv("COINGEST_COINGECKO_MONTHLY_CREDITS", "1234", 1);
    c = load_ok("[source.coingecko]\nrate_limit = 1/s\nmonthly_credits = 5\n");
    assert_string_equal(CG(c)->base_url, "http://127.0.0.1:9/api/v3");
    assert_int_equal(CG(c)->rate_limit.count, 20);
    assert_int_equal(CG(c)->rate_limit.period_ms, 60000);
    assert_int_equal(CG(c)->monthly_credits, 1234);
    assert_int_equal(CG(c)->plan_limit.count, 250); /* still the plan's */
    config_free(c);

    /* Bad values are reported against the variable, on line 0. */
    clear_env();
    setenv("COINGEST_COINGECKO_PLAN", "free", 1);
    expect_error("", "0: [source.coingecko] plan (COINGEST_COINGECKO_PLAN): \"free\" is not a "
                     "plan (public, demo, pro)");
    clear_env();
    setenv("COINGEST_COINGECKO_PLAN", "demo", 1);
    expect_error("", "0: [source.coingecko] plan (COINGEST_COINGECKO_PLAN): plan \"demo\" needs "
                     "an API key (set api_key or api_key_file, or COINGEST_COINGECKO_API_KEY or "
                     "COINGEST_COINGECKO_API_KEY_FILE)");
    clear_env();
    setenv("COINGEST_COINGECKO_RATE_LIMIT", "lots", 1);
    struct config *bad = NULL;
    char err[1024] = "";
    assert_int_equal(load_text("", &bad, err, sizeof(err)), -EINVAL);
    assert_non_null(
        strstr(err, ":0: [source.coingecko] rate_limit (COINGEST_COINGECKO_RATE_LIMIT): "));
    clear_env();
    setenv("COINGEST_COINGECKO_BASE_URL", "ftp://x", 1);
    assert_int_equal(load_text("", &bad, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, ":0: [source.coingecko] base_url (COINGEST_COINGECKO_BASE_URL): "));
    /* An empty variable counts as unset. */
    clear_env();
    setenv("COINGEST_COINGECKO_PLAN", "", 1);
    c = load_ok("");
    assert_int_equal(CG(c)->plan, PLAN("public"));
    config_free(c);
}

static void test_secret_files(void **state)
{
    (void)state;
    char pw[PATH_MAX + 16], key[PATH_MAX + 16], crlf[PATH_MAX + 16], text[4 * PATH_MAX];
    tmp_path(pw, sizeof(pw), "pw");
    tmp_path(key, sizeof(key), "key");
    tmp_path(crlf, sizeof(crlf), "pw_crlf");
    write_file(pw, "file-pw\nsecond line is ignored\n");
    write_file(key, "CG-keyfromfile");
    write_file(crlf, "crlf-pw\r\n");

    snprintf(text, sizeof(text),
             "[database]\npassword_file = %s\n[source.coingecko]\nplan = pro\napi_key_file = %s\n",
             pw, key);
    struct config *c = load_ok(text);
    assert_string_equal(c->database.password, "file-pw");
    assert_string_equal(CG(c)->api_key, "CG-keyfromfile");
    config_free(c);

    /* The env file wins over the file's key; the env value wins over both. */
    setenv("COINGEST_DB_PASSWORD_FILE", crlf, 1);
    c = load_ok(text);
    assert_string_equal(c->database.password, "crlf-pw");
    config_free(c);
    setenv("COINGEST_COINGECKO_API_KEY_FILE", pw, 1);
    c = load_ok(text);
    assert_string_equal(CG(c)->api_key, "file-pw");
    config_free(c);
    unsetenv("COINGEST_COINGECKO_API_KEY_FILE");
    setenv("COINGEST_COINGECKO_API_KEY", "CG-direct", 1);
    c = load_ok(text);
    assert_string_equal(CG(c)->api_key, "CG-direct");
    config_free(c);

    /* An env file makes the file's "both set" conflict moot: the environment wins. */
    clear_env();
    setenv("COINGEST_DB_PASSWORD", "envpw", 1);
    c = load_ok("[database]\npassword = a\npassword_file = /nonexistent\n");
    assert_string_equal(c->database.password, "envpw");
    config_free(c);
}

/* Issue 12, finding 7: a key with CR/LF from the environment or a secret file reached the API
 * as a second header line. Every path refuses a secret with a control character, names where
 * it came from, and never prints the secret. */
static void test_secret_control_characters(void **state)
{
    (void)state;
    char key[PATH_MAX + 16], text[2 * PATH_MAX], want[3 * PATH_MAX];
    static const char base[] = "[source.coingecko]\nplan = demo\n";

    setenv("COINGEST_COINGECKO_API_KEY", "CG-abc\r\nx-injected: yes", 1);
    expect_error(base, "0: [source.coingecko] api_key (COINGEST_COINGECKO_API_KEY): "
                       "COINGEST_COINGECKO_API_KEY holds a control character (CR, LF, tab or "
                       "other); its value is not used");
    setenv("COINGEST_COINGECKO_API_KEY", "CG-abc\tdef", 1);
    expect_error(base, "0: [source.coingecko] api_key (COINGEST_COINGECKO_API_KEY): "
                       "COINGEST_COINGECKO_API_KEY holds a control character (CR, LF, tab or "
                       "other); its value is not used");
    clear_env();
    setenv("COINGEST_DB_PASSWORD", "pw\nx", 1);
    expect_error("[database]\n", "0: [database] password (COINGEST_DB_PASSWORD): "
                                 "COINGEST_DB_PASSWORD holds a control character (CR, LF, tab "
                                 "or other); its value is not used");
    clear_env();

    /* Files: only the first line is the secret, so an injection there is a lone CR (or
     * another control character) inside that line. A CRLF line end is fine. */
    tmp_path(key, sizeof(key), "key");
    static const char *const bad[] = {"CG-abc\rx-injected: yes\n", "CG-abc\x1b[0m\n", "CG-\x7f\n",
                                      "CG-abc\r\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_file(key, bad[i]);
        snprintf(text, sizeof(text), "%sapi_key_file = %s\n", base, key);
        snprintf(want, sizeof(want),
                 "3: [source.coingecko] api_key_file: \"%s\" holds a control character (CR, LF, "
                 "tab or other) in its first line",
                 key);
        expect_error(text, want);

        setenv("COINGEST_COINGECKO_API_KEY_FILE", key, 1);
        snprintf(want, sizeof(want),
                 "0: [source.coingecko] api_key_file (COINGEST_COINGECKO_API_KEY_FILE): \"%s\" "
                 "holds a control character (CR, LF, tab or other) in its first line",
                 key);
        expect_error(base, want);
        clear_env();

        snprintf(text, sizeof(text), "[database]\npassword_file = %s\n", key);
        snprintf(want, sizeof(want),
                 "2: [database] password_file: \"%s\" holds a control character (CR, LF, tab or "
                 "other) in its first line",
                 key);
        expect_error(text, want);
    }
    write_file(key, "CG-abc\r\n");
    snprintf(text, sizeof(text), "%sapi_key_file = %s\n", base, key);
    struct config *c = load_ok(text);
    assert_string_equal(CG(c)->api_key, "CG-abc");
    config_free(c);
}

/* ---- dump and diff ---------------------------------------------------------------------- */

static char *dump_string(const struct config *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    assert_non_null(f);
    config_dump(c, f);
    assert_int_equal(fclose(f), 0);
    return buf;
}

static void test_dump_masks_secrets(void **state)
{
    (void)state;
    const char *fx = getenv("COINGEST_FIXTURES");
    assert_non_null(fx);
    char path[PATH_MAX];
    snprintf(path, sizeof(path), "%s/config/full.conf", fx);
    struct config *c = NULL;
    char err[512];
    assert_int_equal(config_load(path, &c, err, sizeof(err)), 0);
    char *text = dump_string(c);
    assert_null(strstr(text, "s3cret-pw"));
    assert_null(strstr(text, "CG-prokey123"));
    assert_non_null(strstr(text, "\npassword = ********\n"));
    assert_non_null(strstr(text, "\napi_key = ********\n"));
    assert_non_null(strstr(text, "\n[database]\n"));
    assert_non_null(strstr(text, "\nrate_limit = 250/min\n"));
    assert_non_null(strstr(text, "\nbatch_bytes = 8MiB\n"));
    assert_non_null(strstr(text, "\nflush_interval = 250ms\n"));
    assert_non_null(strstr(text, "\nids = bitcoin, ethereum, solana\n"));
    assert_non_null(strstr(text, "\nvs_currencies = usd, eur, btc\n"));
    assert_non_null(strstr(text, "\nsocket = /run/mysqld/mysqld.sock\n"));
    assert_null(strstr(text, "password_file"));

    /* The dump is a valid config: reading it back changes nothing but the masked secrets. */
    write_file(conf_path, text);
    struct config *back = NULL;
    if (config_load(conf_path, &back, err, sizeof(err)))
        fail_msg("%s", err);
    struct config_diff d;
    config_diff(c, back, &d);
    assert_true(d.database);     /* password is now "********" */
    assert_true(d.source_other); /* and so is api_key */
    d.database = false;
    d.source_other = 0;
    assert_true(diff_empty(&d));
    assert_string_equal(back->database.password, "********");
    config_free(back);
    free(text);
    config_free(c);

    /* Unset secrets print empty; defaults dump and read back unchanged. */
    c = config_defaults();
    text = dump_string(c);
    assert_non_null(strstr(text, "\npassword =\n"));
    assert_non_null(strstr(text, "\napi_key =\n"));
    assert_non_null(strstr(text, "\nids = all\n"));
    assert_non_null(strstr(text, "\ncategories =\n"));
    assert_non_null(strstr(text, "built-in defaults"));
    back = load_ok(text);
    config_diff(c, back, &d);
    assert_true(diff_empty(&d));
    config_free(back);
    free(text);
    config_free(c);
}

static void test_dump_long_list_round_trip(void **state)
{
    (void)state;
    char text[8192];
    size_t n = (size_t)snprintf(text, sizeof(text), "[universe]\nids = coin-number-0");
    for (int i = 1; i < 60; i++) {
        n += (size_t)snprintf(text + n, sizeof(text) - n, ",\n  coin-number-%d", i);
    }
    snprintf(text + n, sizeof(text) - n, "\n");
    struct config *c = load_ok(text);
    assert_int_equal(c->universe.ids.n, 60);
    char *dump = dump_string(c);
    struct config *back = load_ok(dump);
    assert_int_equal(back->universe.ids.n, 60);
    assert_string_equal(back->universe.ids.items[59], "coin-number-59");
    struct config_diff d;
    config_diff(c, back, &d);
    assert_true(diff_empty(&d));
    free(dump);
    config_free(back);
    config_free(c);
}

/* '#' after whitespace starts a comment like ';' does; a value in double quotes loses them, and
 * inside them ';' and '#' are literal. */
static void test_inline_hash_and_quotes(void **state)
{
    (void)state;
    struct config *c = load_ok("[database]\n"
                               "user = \"coingest\"\n"
                               "password = \"p ;w #rd \"   ; the quotes keep blanks and comments\n"
                               "host = \"db.example\"# no blank before the comment\n"
                               "socket = \"\"\n"
                               "[job.prices]\n"
                               "every = 5m # five minutes\n"
                               "[job.assets]\n"
                               "every = 2h\t# two hours\n");
    assert_string_equal(c->database.user, "coingest");
    assert_string_equal(c->database.password, "p ;w #rd ");
    assert_null(c->database.socket); /* "" is empty: not set */
    assert_int_equal(c->jobs[config_job_index(c, "prices")].every_ms, 5 * 60 * 1000);
    assert_int_equal(c->jobs[config_job_index(c, "assets")].every_ms, 2 * 60 * 60 * 1000);
    config_free(c);

    /* A quote inside a value that does not start with one is part of it. */
    c = load_ok("[database]\npassword = pa\"ss\"\n");
    assert_string_equal(c->database.password, "pa\"ss\"");
    config_free(c);

    expect_error("[database]\npassword = \"secret\n",
                 "2: a value that starts with '\"' needs a closing '\"'");
    expect_error("[database]\n\npassword = \"secret\" extra\n",
                 "3: only a comment may follow the closing '\"' of a quoted value");

    /* The dump quotes what would otherwise read back differently. */
    c = load_ok("[database]\nuser = \"a #b\"\nsocket = \" /tmp/s\"\n");
    char *dump = dump_string(c);
    assert_non_null(strstr(dump, "user = \"a #b\"\n"));
    struct config *back = load_ok(dump);
    assert_string_equal(back->database.user, "a #b");
    assert_string_equal(back->database.socket, " /tmp/s");
    free(dump);
    config_free(back);
    config_free(c);
}

static void set(char **slot, const char *v)
{
    free(*slot);
    *slot = v ? strdup(v) : NULL;
}

/* every = auto: as often as the month's credits allow; dumped as auto, a change to or from
 * it is a schedule change; rate_limit/monthly_credits remember whether they were set. */
static void test_every_auto(void **state)
{
    (void)state;
    struct config *c = load_ok("[job.prices]\nevery = auto\n");
    const struct cfg_job *j = JOB(c, "prices");
    assert_true(j->every_auto);
    assert_int_equal(j->every_ms, BUDGET_AUTO_MIN_MS);
    assert_false(JOB(c, "market_caps")->every_auto);
    assert_false(CG(c)->rate_limit_set);
    assert_false(CG(c)->monthly_credits_set);
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    config_dump(c, f);
    fclose(f);
    assert_non_null(strstr(buf, "[job.prices]\nenabled = true\nevery = auto\n"));
    free(buf);
    struct config *d =
        load_ok("[job.prices]\nevery = 1m\n[source.coingecko]\nmonthly_credits = 5\n");
    assert_false(JOB(d, "prices")->every_auto);
    assert_true(CG(d)->monthly_credits_set);
    struct config_diff diff;
    config_diff(c, d, &diff);
    assert_true(diff.job >> config_job_index(c, "prices") & 1);
    config_free(d);
    config_free(c);
}

static void test_diff(void **state)
{
    (void)state;
    struct config *a = config_defaults(), *b;
    struct config_diff d;

    b = config_defaults();
    config_diff(a, b, &d);
    assert_true(diff_empty(&d));

    b->daemon.log_level = LOG_DEBUG;
    config_diff(a, b, &d);
    assert_true(d.daemon_log);
    d.daemon_log = false;
    assert_true(diff_empty(&d));
    config_free(b);

    b = config_defaults();
    b->daemon.log_format = LOG_FORMAT_JSON;
    b->daemon.shutdown_timeout_ms = 1; /* read at shutdown: nothing to do */
    config_diff(a, b, &d);
    assert_true(d.daemon_log);
    d.daemon_log = false;
    assert_true(diff_empty(&d));
    config_free(b);

    b = config_defaults();
    set(&b->daemon.metrics_listen, "");
    config_diff(a, b, &d);
    assert_true(d.restart_needed);
    d.restart_needed = false;
    assert_true(diff_empty(&d));
    config_free(b);

    b = config_defaults();
    set(&b->daemon.spool_dir, "/elsewhere");
    config_diff(a, b, &d);
    assert_true(d.restart_needed);
    config_free(b);

    b = config_defaults();
    set(&b->database.password, "x");
    config_diff(a, b, &d);
    assert_true(d.database);
    d.database = false;
    assert_true(diff_empty(&d));
    b->database.port = 1;
    set(&b->database.password, NULL);
    config_diff(a, b, &d);
    assert_true(d.database);
    config_free(b);

    b = config_defaults();
    CG(b)->rate_limit.count = 11;
    config_diff(a, b, &d);
    assert_true(d.source_rate);
    d.source_rate = 0;
    assert_true(diff_empty(&d));
    CG(b)->rate_limit.count = 10;
    CG(b)->burst = 3;
    config_diff(a, b, &d);
    assert_true(d.source_rate);
    assert_false(d.source_other);
    config_free(b);

    b = config_defaults();
    CG(b)->timeout_ms = 1;
    set(&CG(b)->api_key, "k");
    config_diff(a, b, &d);
    assert_true(d.source_other);
    d.source_other = 0;
    assert_true(diff_empty(&d));
    config_free(b);

    b = load_ok("[universe]\ntop = 10\n");
    config_diff(a, b, &d);
    assert_true(d.universe);
    d.universe = false;
    assert_true(diff_empty(&d));
    config_free(b);

    b = load_ok("[universe]\nids = bitcoin\n");
    config_diff(a, b, &d);
    assert_true(d.universe);
    config_free(b);

    b = load_ok("[universe]\nvs_currencies = usd, eur\n");
    config_diff(a, b, &d);
    assert_true(d.universe);
    config_free(b);

    b = load_ok("[job.prices]\nevery = 1m\n");
    config_diff(a, b, &d);
    assert_true(d.job >> config_job_index(b, "prices") & 1);
    assert_false(d.job >> config_job_index(b, "assets") & 1);
    assert_false(d.job >> config_job_index(b, "market_caps") & 1);
    d.job &= ~(1ull << config_job_index(b, "prices"));
    assert_true(diff_empty(&d));
    config_free(b);

    b = load_ok("[job.market_caps]\nrun_at_start = false\n[job.assets]\njitter = 1s\n");
    config_diff(a, b, &d);
    assert_true(d.job >> config_job_index(b, "assets") & 1);
    assert_false(d.job >> config_job_index(b, "prices") & 1);
    assert_true(d.job >> config_job_index(b, "market_caps") & 1);
    config_free(b);

    config_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_duration),
        cmocka_unit_test(test_parse_rate),
        cmocka_unit_test(test_parse_size),
        cmocka_unit_test(test_parse_bool),
        cmocka_unit_test(test_parse_uint),
        cmocka_unit_test(test_defaults),
        cmocka_unit_test_teardown(test_minimal_and_empty_files, test_teardown),
        cmocka_unit_test(test_job_index),
        cmocka_unit_test_teardown(test_example_file, test_teardown),
        cmocka_unit_test_teardown(test_full_file, test_teardown),
        cmocka_unit_test_teardown(test_plan_defaults, test_teardown),
        cmocka_unit_test_teardown(test_plan_hosts, test_teardown),
        cmocka_unit_test_teardown(test_errors_structure, test_teardown),
        cmocka_unit_test_teardown(test_cluster_keys, test_teardown),
        cmocka_unit_test_teardown(test_errors_values, test_teardown),
        cmocka_unit_test_teardown(test_errors_cross_field, test_teardown),
        cmocka_unit_test_teardown(test_missing_file, test_teardown),
        cmocka_unit_test_teardown(test_syntax_details, test_teardown),
        cmocka_unit_test_teardown(test_env_overrides, test_teardown),
        cmocka_unit_test_teardown(test_env_source_overrides, test_teardown),
        cmocka_unit_test_teardown(test_secret_files, test_teardown),
        cmocka_unit_test_teardown(test_secret_control_characters, test_teardown),
        cmocka_unit_test_teardown(test_dump_masks_secrets, test_teardown),
        cmocka_unit_test_teardown(test_dump_long_list_round_trip, test_teardown),
        cmocka_unit_test_teardown(test_inline_hash_and_quotes, test_teardown),
        cmocka_unit_test_teardown(test_every_auto, test_teardown),
        cmocka_unit_test_teardown(test_diff, test_teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
