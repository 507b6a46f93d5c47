/*
 * test_export: the export source's pure parts (src/sources/export/format.c and the S3 key) and
 * the job's checks of its config, through the real runner with a store that keeps rows in
 * memory and has no work threads (the run fails before it would need one when the config is
 * wrong, and with a clear message when the store cannot run work). The files, the database and
 * S3 are covered by tests/integration/test_export.py and test_export_s3.py.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/config.h"
#include "coingest/runner.h"
#include "coingest/sbuf.h"
#include "sources/export/export.h"

static const char *csv(enum export_kind k, struct export_value v)
{
    static struct sbuf b;
    sbuf_reset(&b);
    assert_int_equal(export_csv_value(&b, k, &v), 0);
    sbuf_putc(&b, '\0');
    return b.p;
}

static const char *json(enum export_kind k, struct export_value v)
{
    static struct sbuf b;
    sbuf_reset(&b);
    assert_int_equal(export_json_value(&b, k, &v), 0);
    sbuf_putc(&b, '\0');
    return b.p;
}

#define TEXT(str) ((struct export_value){.s = (str), .n = strlen(str)})

/* NULL is an empty unquoted field and nothing else is: strings are always quoted. */
static void test_csv_null_rule(void **state)
{
    (void)state;
    struct export_value null = {.null = true};
    for (int k = EXPORT_INT; k <= EXPORT_TEXT; k++) {
        assert_string_equal(csv((enum export_kind)k, null), "");
        assert_string_equal(json((enum export_kind)k, null), "null");
    }
    assert_string_equal(csv(EXPORT_TEXT, TEXT("")), "\"\"");
    assert_string_equal(csv(EXPORT_TEXT, TEXT("a")), "\"a\"");
    assert_string_equal(csv(EXPORT_TEXT, TEXT("q\"uo,te")), "\"q\"\"uo,te\"");
    assert_string_equal(csv(EXPORT_TEXT, TEXT("\"\"")), "\"\"\"\"\"\"");
    assert_string_equal(csv(EXPORT_TEXT, TEXT("line\r\nbreak")), "\"line\r\nbreak\"");
    /* A double that is not finite cannot be written as a number: NULL. */
    assert_string_equal(csv(EXPORT_DOUBLE, ((struct export_value){.d = NAN})), "");
    assert_string_equal(json(EXPORT_DOUBLE, ((struct export_value){.d = INFINITY})), "null");
}

static void test_numbers(void **state)
{
    (void)state;
    assert_string_equal(csv(EXPORT_INT, ((struct export_value){.i = -42})), "-42");
    assert_string_equal(
        csv(EXPORT_INT, ((struct export_value){.i = (long long)UINT64_MAX, .is_unsigned = true})),
        "18446744073709551615");
    assert_string_equal(csv(EXPORT_DOUBLE, ((struct export_value){.d = 0.1})), "0.1");
    assert_string_equal(csv(EXPORT_DOUBLE, ((struct export_value){.d = 1e9})), "1000000000");
    assert_string_equal(json(EXPORT_DOUBLE, ((struct export_value){.d = 1.0 / 3})),
                        "0.3333333333333333");
    assert_string_equal(csv(EXPORT_NUMBER, TEXT("12.3400")), "12.3400");
    /* Every double round-trips through its text. */
    double samples[] = {0.1 + 0.2, 1e-300, -2.5e300, 123456789.123456789, 5e-324, 0.0, -0.0};
    for (size_t i = 0; i < sizeof(samples) / sizeof(samples[0]); i++) {
        const char *s = csv(EXPORT_DOUBLE, ((struct export_value){.d = samples[i]}));
        assert_true(strtod(s, NULL) == samples[i]);
        assert_true(signbit(strtod(s, NULL)) == signbit(samples[i]));
    }
    uint64_t x = 88172645463325252ull;
    for (int i = 0; i < 20000; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        double d;
        memcpy(&d, &x, sizeof(d));
        if (!isfinite(d))
            continue;
        const char *s = csv(EXPORT_DOUBLE, ((struct export_value){.d = d}));
        assert_true(strtod(s, NULL) == d);
        assert_true(strlen(s) <= 24);
    }
}

static void test_times(void **state)
{
    (void)state;
    char buf[40];
    export_format_time(0, buf, sizeof(buf));
    assert_string_equal(buf, "1970-01-01T00:00:00.000Z");
    export_format_time(1764506178123ll, buf, sizeof(buf));
    assert_string_equal(buf, "2025-11-30T12:36:18.123Z");
    export_format_time(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31T23:59:59.999Z");
    export_format_day(export_days_from_civil(2024, 2, 29), buf, sizeof(buf));
    assert_string_equal(buf, "2024-02-29");
    int64_t ms = export_days_from_civil(2026, 11, 24) * EXPORT_MS_DAY + 1;
    assert_string_equal(csv(EXPORT_TIME, ((struct export_value){.ms = ms})),
                        "2026-11-24T00:00:00.001Z");
    assert_string_equal(json(EXPORT_TIME, ((struct export_value){.ms = ms})),
                        "\"2026-11-24T00:00:00.001Z\"");
    assert_string_equal(csv(EXPORT_DATE, ((struct export_value){.ms = ms - 1})), "2026-11-24");

    int64_t day;
    assert_int_equal(export_parse_day_dir("date=2026-11-24", &day), 0);
    assert_int_equal(day, export_days_from_civil(2026, 11, 24));
    assert_int_equal(export_parse_day_dir("date=2026-02-30", &day), -EINVAL);
    assert_int_equal(export_parse_day_dir("date=2026-1-24", &day), -EINVAL);
    assert_int_equal(export_parse_day_dir(".tmp-date=2026-11-24", &day), -EINVAL);
    assert_int_equal(export_parse_day_dir("date=2026-11-24x", &day), -EINVAL);
}

static void test_json_strings(void **state)
{
    (void)state;
    assert_string_equal(json(EXPORT_TEXT, TEXT("a\"b\\c\n\t\x01")), "\"a\\\"b\\\\c\\n\\t\\u0001\"");
    assert_string_equal(json(EXPORT_TEXT, TEXT("ünï ₿ 😀")), "\"ünï ₿ 😀\"");
    /* Bytes that are not UTF-8 (a lone continuation byte, an overlong NUL, a surrogate, a cut
     * sequence) become U+FFFD, one per byte, and the text stays valid JSON. */
    assert_string_equal(json(EXPORT_TEXT, TEXT("a\x80z")), "\"a\xef\xbf\xbdz\"");
    assert_string_equal(json(EXPORT_TEXT, TEXT("\xc0\x80")), "\"\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_string_equal(json(EXPORT_TEXT, TEXT("\xed\xa0\x80")),
                        "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\"");
    assert_string_equal(json(EXPORT_TEXT, TEXT("x\xe2\x82")), "\"x\xef\xbf\xbd\xef\xbf\xbd\"");
    /* A JSON column is a string holding its text. */
    assert_string_equal(json(EXPORT_TEXT, TEXT("{\"usd\": 1}")), "\"{\\\"usd\\\": 1}\"");
}

static void test_kinds_tables_keys(void **state)
{
    (void)state;
    assert_int_equal(export_kind_of("int"), EXPORT_INT);
    assert_int_equal(export_kind_of("bigint"), EXPORT_INT);
    assert_int_equal(export_kind_of("double"), EXPORT_DOUBLE);
    assert_int_equal(export_kind_of("datetime"), EXPORT_TIME);
    assert_int_equal(export_kind_of("date"), EXPORT_DATE);
    assert_int_equal(export_kind_of("decimal"), EXPORT_NUMBER);
    assert_int_equal(export_kind_of("longtext"), EXPORT_TEXT);
    assert_int_equal(export_kind_of("varchar"), EXPORT_TEXT);
    assert_non_null(export_table_find("prices"));
    assert_string_equal(export_table_find("indicators_daily")->day_col, "day");
    assert_null(export_table_find("job_runs"));

    struct export_s3 s3 = {0};
    char key[256];
    assert_int_equal(
        export_s3_key(&s3, "prices", "2026-11-24", "part-00000.csv.gz", key, sizeof(key)), 0);
    assert_string_equal(key, "prices/date=2026-11-24/part-00000.csv.gz");
    s3.prefix = "/lake/v1/";
    assert_int_equal(export_s3_key(&s3, "prices", "2026-11-24", "_manifest.json", key, sizeof(key)),
                     0);
    assert_string_equal(key, "lake/v1/prices/date=2026-11-24/_manifest.json");
    assert_int_equal(export_s3_key(&s3, "prices", "2026-11-24", "_manifest.json", key, 20),
                     -ENAMETOOLONG);
}

/* ---- the job's config checks, through the runner ------------------------------------------ */

static int drop_submit(void *ctx, struct batch *b)
{
    (void)ctx;
    batch_free(b);
    return 0;
}

/* Writes printf(fmt, ...) to a new file made from the mkstemp template `path`. */
static void write_tmp(char *path, const char *fmt, ...)
{
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    FILE *f = fdopen(fd, "w");
    assert_non_null(f);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fclose(f);
}

/* The config in `text` (through a temporary file, removed after); fails the test if it does
 * not load. */
static struct config *config_from(const char *text)
{
    char path[] = "/tmp/test_export.XXXXXX";
    write_tmp(path, "%s", text);
    struct config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof(err)) != 0)
        fail_msg("config: %s", err);
    unlink(path);
    return cfg;
}

struct outcome {
    bool done;
    struct run_summary sum;
};

static void on_done(const struct run_summary *s, void *arg)
{
    struct outcome *o = arg;
    o->done = true;
    o->sum = *s;
}

/* Runs the export job once with `job_section` as [job.export]; returns the summary. */
static struct run_summary run_with(const char *job_section, const char *env_key, bool enabled)
{
    char text[2048];
    snprintf(text, sizeof(text), "[job.export]\nenabled = %s\n%s", enabled ? "true" : "false",
             job_section);
    struct config *cfg = config_from(text);
    if (env_key) {
        setenv("AWS_ACCESS_KEY_ID", env_key, 1);
        setenv("AWS_SECRET_ACCESS_KEY", "secret-for-the-test", 1);
    } else {
        unsetenv("AWS_ACCESS_KEY_ID");
        unsetenv("AWS_SECRET_ACCESS_KEY");
    }
    struct store st = {.submit = drop_submit, .ctx = NULL}; /* no read, no work */
    struct runner *rn = runner_new(cfg, NULL, st);
    assert_non_null(rn);
    int id = config_job_index(cfg, "export");
    assert_true(id >= 0);
    struct outcome o = {0};
    assert_int_equal(runner_start(rn, (size_t)id, on_done, &o), 0);
    assert_true(o.done); /* every path here ends inside start */
    runner_free(rn);
    config_free(cfg);
    return o.sum;
}

static void expect_failure(const char *section, const char *env_key, const char *msg)
{
    struct run_summary s = run_with(section, env_key, true);
    assert_int_equal(s.status, RUN_FAILED);
    if (!strstr(s.error, msg))
        fail_msg("error \"%s\" does not say \"%s\"", s.error, msg);
}

static void test_job_config_errors(void **state)
{
    (void)state;
    /* Off and without a dir (the default config, as `--once all` runs it): nothing to do. */
    struct run_summary s = run_with("", NULL, false);
    assert_int_equal(s.status, RUN_OK);
    assert_string_equal(s.error, "");
    expect_failure("", NULL, "[job.export] dir is not set");
    expect_failure("dir = /tmp/x\ntables = prices, jobs\n", NULL,
                   "[job.export] tables: unknown table \"jobs\"");
    expect_failure("dir = /tmp/x\nformats = parquet\n", NULL,
                   "[job.export] formats: \"parquet\" is neither csv.gz nor jsonl.gz");
    expect_failure("dir = /tmp/x\ns3_bucket = b\n", NULL,
                   "s3_bucket is set but there are no credentials");
    expect_failure("dir = /tmp/x\ns3_bucket = b\ns3_credentials_file = /nonexistent/creds\n", NULL,
                   "s3_credentials_file /nonexistent/creds: cannot be read");
    expect_failure("dir = /tmp/x\ns3_bucket = b\ns3_endpoint = minio:9000\n", "AKIDTEST",
                   "s3_endpoint \"minio:9000\" is not a URL");
    /* A good config gets as far as the store, which has no threads here. */
    expect_failure("dir = /tmp/x\ns3_bucket = b\n", "AKIDTEST",
                   "this store cannot run work off the loop");
}

static void test_credentials_file(void **state)
{
    (void)state;
    char path[] = "/tmp/test_export_creds.XXXXXX";
    write_tmp(path, "[default]\naws_access_key_id = A1\n[lake]\naws_access_key_id = A2\n"
                    "aws_secret_access_key = S2\n");
    char section[512];
    snprintf(section, sizeof(section), "dir = /tmp/x\ns3_bucket = b\ns3_credentials_file = %s\n",
             path);
    /* [default] lacks the secret. */
    expect_failure(section, NULL, "profile [default] has no aws_access_key_id");
    /* [lake] has both: the run gets as far as the store. */
    strncat(section, "s3_profile = lake\n", sizeof(section) - strlen(section) - 1);
    expect_failure(section, NULL, "this store cannot run work off the loop");
    unlink(path);
}

/* ---- the work seam: a store whose work runs on libuv's thread pool, as the daemon's ---- */

struct pool_call {
    uv_work_t req;
    void (*fn)(void *);
    void (*done)(void *);
    void *arg;
};

static void pool_run(uv_work_t *req)
{
    struct pool_call *c = req->data;
    c->fn(c->arg);
}

static void pool_done(uv_work_t *req, int status)
{
    (void)status;
    struct pool_call *c = req->data;
    c->done(c->arg);
    free(c);
}

static int pool_work(void *ctx, void (*fn)(void *), void (*done)(void *), void *arg)
{
    struct pool_call *c = calloc(1, sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (struct pool_call){.fn = fn, .done = done, .arg = arg};
    c->req.data = c;
    int rc = uv_queue_work(ctx, &c->req, pool_run, pool_done);
    if (rc)
        free(c);
    return rc;
}

/* The run hands its plan to the work thread, which finds no database, and the run ends on
 * the loop with that error: the whole path through run_work without a server. */
static void test_work_without_database(void **state)
{
    (void)state;
    struct config *cfg =
        config_from("[database]\nsocket = /nonexistent/coingest-test.sock\nconnect_timeout = 1s\n"
                    "[job.export]\nenabled = true\ndir = /tmp/coingest-test-export-none\n");
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct store st = {.submit = drop_submit, .work = pool_work, .work_ctx = &loop};
    struct runner *rn = runner_new(cfg, NULL, st);
    assert_non_null(rn);
    struct outcome o = {0};
    assert_int_equal(runner_start(rn, (size_t)config_job_index(cfg, "export"), on_done, &o), 0);
    assert_false(o.done); /* the work runs off the loop; the run ends on it */
    assert_true(runner_running(rn, (size_t)config_job_index(cfg, "export")));
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(o.done);
    assert_int_equal(o.sum.status, RUN_FAILED);
    if (!strstr(o.sum.error, "connecting to the database"))
        fail_msg("error: %s", o.sum.error);
    runner_free(rn);
    config_free(cfg);
    assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_csv_null_rule),
        cmocka_unit_test(test_numbers),
        cmocka_unit_test(test_times),
        cmocka_unit_test(test_json_strings),
        cmocka_unit_test(test_kinds_tables_keys),
        cmocka_unit_test(test_job_config_errors),
        cmocka_unit_test(test_credentials_file),
        cmocka_unit_test(test_work_without_database),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
