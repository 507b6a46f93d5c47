/*
 * Unit tests for the fetch engine: a real libuv loop, real libcurl, and the fake API
 * (tests/fakeapi/fakeapi.py, fixture mode) as a child process on loopback.
 *
 * Each test builds a loop, the timers, a fetcher and one API, sends requests, runs the loop
 * until their done callbacks ran, and checks the outcome against the fake API's request log
 * (what the server saw and when, on the same CLOCK_MONOTONIC as ours). Every test tears the
 * engine down and requires uv_loop_close() == 0, so a leaked handle fails the test. Faults
 * (429 + Retry-After, 5xx, delays, truncation, HTML, resets, big bodies) are queued through
 * the fake's control API. Log lines are captured into a temporary file and checked for the
 * API key. Waits are short (Retry-After 2 s at most); the 30/min run lives in
 * test_fetch_ratelimit.c.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <unistd.h>
#include <uv.h>

#include "coingest/fetch.h"
#include "coingest/source.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/tbucket.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "coingest/version.h"
#include "fakeapi_proc.h"

#define TEST_KEY "CG-test-SECRET-key-0123456789"
#define LABEL    "api=\"coingecko\""

/* The key headers and error bodies under test are CoinGecko's (src/sources/coingecko). */
#define PLAN(name) ((uint32_t)source_plan_index(source_find("coingecko"), (name)))

static struct fakeapi *fake;
static FILE *logfile;

/* ---- harness ---------------------------------------------------------------------------- */

struct env {
    uv_loop_t loop;
    struct timers *timers;
    struct fetcher *f;
    struct api *api;
    char name[32];
    char base_url[128];
    char key[64];
    struct cfg_source src;
    bool freed;
    long log_start;
};

struct res {
    int calls;
    enum fetch_outcome outcome;
    long status;
    unsigned attempts;
    char *body;
    size_t len;
    char error[512];
    double seconds;
    int *remaining;
};

static void src_defaults(struct env *e)
{
    memset(&e->src, 0, sizeof(e->src));
    snprintf(e->name, sizeof(e->name), "coingecko");
    snprintf(e->base_url, sizeof(e->base_url), "%s", fakeapi_base_url(fake));
    snprintf(e->key, sizeof(e->key), "%s", TEST_KEY);
    e->src.def = source_find("coingecko");
    e->src.name = e->name;
    e->src.base_url = e->base_url;
    e->src.plan = PLAN("demo");
    e->src.api_key = e->key;
    e->src.rate_limit = (struct rate){.count = 1000, .period_ms = 1000};
    e->src.burst = 100;
    e->src.timeout_ms = 10000;
    e->src.connect_timeout_ms = 5000;
    e->src.max_retries = 3;
    e->src.backoff_base_ms = 10;
    e->src.backoff_cap_ms = 50;
    e->src.max_body_bytes = 64u << 20;
    e->src.max_url_bytes = 8000;
}

static void env_start(struct env *e)
{
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->timers = timers_new(&e->loop);
    assert_non_null(e->timers);
    e->f = fetcher_new(&e->loop, e->timers);
    assert_non_null(e->f);
    e->api = api_new(e->f, &e->src);
    assert_non_null(e->api);
}

static int env_setup(void **state)
{
    struct env *e = calloc(1, sizeof(*e));
    assert_non_null(e);
    assert_int_equal(fakeapi_reset(fake), 0);
    assert_int_equal(fakeapi_control(fake, "POST", "/_control/ratelimit", "{\"per_min\":0}", NULL),
                     200);
    metrics_reset();
    fflush(logfile);
    e->log_start = ftell(logfile);
    src_defaults(e);
    *state = e;
    return 0;
}

static void on_freed(void *arg)
{
    ((struct env *)arg)->freed = true;
}

static void on_watchdog(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Every wait in this file has a limit: the loop runs under an unreferenced watchdog timer
 * (it keeps no loop alive, but wakes a blocked uv_run) and a test that overruns it fails
 * with a message saying what it was waiting for. */
#define WAIT_MS 120000u

struct watchdog {
    uv_timer_t t;
    bool expired;
    uint64_t limit_ms;
};

static void watchdog_start(uv_loop_t *loop, struct watchdog *w, uint64_t limit_ms)
{
    w->expired = false;
    w->limit_ms = limit_ms;
    assert_int_equal(uv_timer_init(loop, &w->t), 0);
    w->t.data = &w->expired;
    assert_int_equal(uv_timer_start(&w->t, on_watchdog, limit_ms, 0), 0);
    uv_unref((uv_handle_t *)&w->t);
}

static void watchdog_stop(uv_loop_t *loop, struct watchdog *w)
{
    uv_close((uv_handle_t *)&w->t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
}

/* Runs the loop until nothing keeps it alive; fails, naming `what`, after limit_ms. */
static void run_dry(uv_loop_t *loop, uint64_t limit_ms, const char *what)
{
    struct watchdog w;
    watchdog_start(loop, &w, limit_ms);
    while (!w.expired && uv_run(loop, UV_RUN_ONCE) != 0)
        ;
    watchdog_stop(loop, &w);
    if (w.expired)
        fail_msg("%s: the loop still had work after %llu ms", what, (unsigned long long)limit_ms);
}

/* Frees everything and requires the loop to close with no handle left. */
static void env_stop(struct env *e)
{
    if (e->api)
        api_free(e->api);
    e->api = NULL;
    fetcher_free(e->f, on_freed, e);
    timers_free(e->timers);
    run_dry(&e->loop, 10000, "freeing the fetcher");
    assert_true(e->freed);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

static int env_teardown(void **state)
{
    free(*state);
    return 0;
}

static void on_done(const struct fetch_result *r, void *arg)
{
    struct res *x = arg;
    x->calls++;
    x->outcome = r->outcome;
    x->status = r->status;
    x->attempts = r->attempts;
    x->seconds = r->seconds;
    free(x->body);
    x->body = malloc(r->len + 1);
    assert_non_null(x->body);
    memcpy(x->body, r->body, r->len);
    x->body[r->len] = '\0';
    x->len = r->len;
    assert_true(r->body[r->len] == '\0');
    snprintf(x->error, sizeof(x->error), "%s", r->error ? r->error : "");
    if (r->outcome == FETCH_OK)
        assert_null(r->error);
    else
        assert_non_null(r->error);
    if (x->remaining)
        (*x->remaining)--;
}

static void res_free(struct res *x)
{
    free(x->body);
    x->body = NULL;
}

/* Runs the loop until *remaining reaches 0, nothing is left to run, or `limit_ms` passed
 * (a broken engine fails the test instead of hanging it). */
static void run_until_ms(struct env *e, int *remaining, uint64_t limit_ms)
{
    struct watchdog w;
    watchdog_start(&e->loop, &w, limit_ms);
    while (*remaining > 0 && !w.expired && uv_run(&e->loop, UV_RUN_ONCE) != 0)
        ;
    watchdog_stop(&e->loop, &w);
    if (*remaining > 0)
        fail_msg("%d request(s) still without their done callback %s", *remaining,
                 w.expired ? "when the time limit passed" : "and nothing left on the loop");
}

static void run_until(struct env *e, int *remaining)
{
    run_until_ms(e, remaining, WAIT_MS);
}

/* Runs the loop once at a time until done(arg) is true; fails, naming `what`, when the loop
 * runs dry first or after limit_ms. */
static void run_until_true(struct env *e, bool (*done)(void *), void *arg, uint64_t limit_ms,
                           const char *what)
{
    struct watchdog w;
    watchdog_start(&e->loop, &w, limit_ms);
    bool alive = true;
    while (!done(arg) && !w.expired && alive)
        alive = uv_run(&e->loop, UV_RUN_ONCE) != 0;
    watchdog_stop(&e->loop, &w);
    if (!done(arg))
        fail_msg("waiting for %s: %s", what,
                 w.expired ? "the time limit passed" : "nothing left on the loop");
}

/* One request, run to completion. */
static void fetch_one(struct env *e, const char *path, struct res *x)
{
    int remaining = 1;
    memset(x, 0, sizeof(*x));
    x->remaining = &remaining;
    assert_non_null(api_get(e->api, path, TBUCKET_PRIO_LIVE, NULL, on_done, x));
    run_until(e, &remaining);
    assert_int_equal(x->calls, 1);
    x->remaining = NULL;
}

static char *read_file_from(FILE *fp, long start)
{
    fflush(fp);
    long end = ftell(fp);
    size_t n = end > start ? (size_t)(end - start) : 0;
    char *buf = calloc(1, n + 1);
    assert_non_null(buf);
    int fd = fileno(fp);
    ssize_t got = pread(fd, buf, n, start);
    assert_true(got == (ssize_t)n);
    return buf;
}

/* The log lines written since the test began. */
static char *captured_log(struct env *e)
{
    return read_file_from(logfile, e->log_start);
}

static size_t count_substr(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

static double metric(const char *name, const char *labels)
{
    return metrics_get(name, labels);
}

/* Server log helpers. */
static json_t *server_log(void)
{
    json_t *log = fakeapi_log(fake, 0);
    assert_non_null(log);
    return log;
}

static const char *entry_route(json_t *e)
{
    const char *r = json_string_value(json_object_get(e, "route"));
    return r ? r : "";
}

static double entry_num(json_t *e, const char *key)
{
    return json_number_value(json_object_get(e, key));
}

static long entry_status(json_t *e)
{
    return (long)json_integer_value(json_object_get(e, "status"));
}

static const char *entry_header(json_t *e, const char *name)
{
    return json_string_value(json_object_get(json_object_get(e, "headers"), name));
}

static void fault(const char *json)
{
    assert_int_equal(fakeapi_fault(fake, json), 0);
}

/* ---- pure helpers ----------------------------------------------------------------------- */

static void test_parse_retry_after(void **state)
{
    (void)state;
    uint64_t d = 1;
    assert_int_equal(fetch_parse_retry_after("120", 0, &d), 0);
    assert_int_equal(d, 120000);
    assert_int_equal(fetch_parse_retry_after("  0 \r\n", 0, &d), 0);
    assert_int_equal(d, 0);
    /* Wed, 21 Oct 2015 07:28:00 GMT = 1445412480 */
    uint64_t now = 1445412480ull * 1000u - 90500u;
    assert_int_equal(fetch_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now, &d), 0);
    assert_int_equal(d, 90500);
    /* obsolete forms curl_getdate knows */
    assert_int_equal(fetch_parse_retry_after("Wednesday, 21-Oct-15 07:28:00 GMT", now, &d), 0);
    assert_int_equal(d, 90500);
    /* a date in the past means now */
    assert_int_equal(fetch_parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now + 200000u, &d),
                     0);
    assert_int_equal(d, 0);
    assert_int_equal(fetch_parse_retry_after("", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after("soon", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after("-5", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after("1.5", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after("12abc", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after("99999999999999999999999", 0, &d), -EINVAL);
    assert_int_equal(fetch_parse_retry_after(NULL, 0, &d), -EINVAL);
}

static void test_api_error_message(void **state)
{
    (void)state;
    char buf[256];
    char *body;
    size_t len;
    const char *dir = getenv("COINGEST_FIXTURES");
    assert_non_null(dir);
    char path[512];
    struct {
        const char *file;
        const char *want;
    } cases[] = {
        {"error_422_coins_markets_missing_vs_currency.json", "Missing parameter vs_currency"},
        {"error_422_simple_price_missing_ids.json", "Missing parameter ids"},
        {"error_500_ohlc_missing_params.json", "Internal Server Error"},
        {"error_429_rate_limit_2022-09.json",
         "You've exceeded the Rate Limit. Please visit https://www.coingecko.com/en/api/pricing "
         "to subscribe to our API plans for higher rate limits. (error_code 429)"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        snprintf(path, sizeof(path), "%s/coingecko/%s", dir, cases[i].file);
        FILE *fp = fopen(path, "rb");
        assert_non_null(fp);
        char raw[1024];
        len = fread(raw, 1, sizeof(raw), fp);
        fclose(fp);
        body = raw;
        assert_int_equal(source_find("coingecko")->error_message(body, len, buf, sizeof(buf)), 0);
        assert_string_equal(buf, cases[i].want);
    }
    const char *s = "{\"error\":{\"status\":{\"error_code\":10002,\"error_message\":\"API Key "
                    "Missing\"}}}";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)), 0);
    assert_string_equal(buf, "API Key Missing (error_code 10002)");
    s = "{\"message\":\"granularity too small\"}";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)), 0);
    assert_string_equal(buf, "granularity too small");
    s = "{\"error\":\"line\\nbreak\"}";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)), 0);
    assert_string_equal(buf, "line break");
    /* truncation never splits a UTF-8 sequence */
    s = "{\"error\":\"ab\xe2\x82\xac\"}";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, 4), 0);
    assert_string_equal(buf, "ab");
    s = "error code: 1015";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)),
                     -ENOENT);
    s = "[1,2]";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)),
                     -ENOENT);
    s = "{\"ok\":true}";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)),
                     -ENOENT);
    s = "{\"error\":";
    assert_int_equal(source_find("coingecko")->error_message(s, strlen(s), buf, sizeof(buf)),
                     -ENOENT);
}

/* ---- against the fake API --------------------------------------------------------------- */

static void test_get_ok_headers_and_metrics(void **state)
{
    struct env *e = *state;
    env_start(e);
    struct res x;
    fetch_one(e, "/simple/price?ids=bitcoin&vs_currencies=usd", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.attempts, 1);
    assert_string_equal(x.body, "{\"bitcoin\":{\"usd\":49013}}");
    assert_true(x.seconds >= 0 && x.seconds < 10);
    res_free(&x);
    env_stop(e);

    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 1);
    json_t *r = json_array_get(log, 0);
    assert_string_equal(entry_route(r), "/simple/price");
    assert_string_equal(json_string_value(json_object_get(r, "query")),
                        "ids=bitcoin&vs_currencies=usd");
    assert_string_equal(entry_header(r, "user-agent"), "coingest/" COINGEST_VERSION);
    assert_string_equal(entry_header(r, "x-cg-demo-api-key"), TEST_KEY);
    assert_null(entry_header(r, "x-cg-pro-api-key"));
    assert_non_null(strstr(entry_header(r, "accept-encoding"), "gzip"));
    assert_string_equal(entry_header(r, "accept"), "application/json");
    json_decref(log);

    assert_true(metric("coingest_http_requests_total", LABEL ",status=\"200\"") == 1);
    assert_true(metric("coingest_http_bytes_total", LABEL) == 25);
}

static void test_pro_plan_header(void **state)
{
    struct env *e = *state;
    e->src.plan = PLAN("pro");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    res_free(&x);
    env_stop(e);
    json_t *log = server_log();
    json_t *r = json_array_get(log, 0);
    assert_string_equal(entry_header(r, "x-cg-pro-api-key"), TEST_KEY);
    assert_null(entry_header(r, "x-cg-demo-api-key"));
    json_decref(log);
}

static void test_public_plan_sends_no_key(void **state)
{
    struct env *e = *state;
    e->src.plan = PLAN("public");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    res_free(&x);
    env_stop(e);
    json_t *log = server_log();
    json_t *r = json_array_get(log, 0);
    assert_null(entry_header(r, "x-cg-demo-api-key"));
    assert_null(entry_header(r, "x-cg-pro-api-key"));
    json_decref(log);
}

/* Requests that fail in every way the engine logs, with debug logging on: the key must
 * appear in no log line and in no error message (even when the server echoes it). */
static void test_key_never_logged(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 1;
    log_setup(LOG_DEBUG, LOG_FORMAT_TEXT);
    fault("{\"match\":\"/global\",\"kind\":\"status\",\"status\":401,"
          "\"body\":{\"error\":\"invalid key " TEST_KEY "\"}}");
    fault("{\"match\":\"/coins/list\",\"kind\":\"status\",\"status\":503,\"count\":5}");
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":429,\"retry_after\":1}");
    env_start(e);
    struct res a, b, c, d;
    int remaining = 4;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    memset(&d, 0, sizeof(d));
    a.remaining = b.remaining = c.remaining = d.remaining = &remaining;
    assert_non_null(api_get(e->api, "/global", 0, NULL, on_done, &a));
    assert_non_null(api_get(e->api, "/coins/list", 0, NULL, on_done, &b));
    assert_non_null(api_get(e->api, "/ping", 0, NULL, on_done, &c));
    assert_non_null(api_get(e->api, "/nope", 0, NULL, on_done, &d));
    run_until(e, &remaining);
    env_stop(e);
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);

    assert_int_equal(a.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(a.status, 401);
    assert_null(strstr(a.error, TEST_KEY));
    assert_non_null(strstr(a.error, "invalid key ********"));
    assert_int_equal(b.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(c.outcome, FETCH_OK);
    assert_int_equal(d.outcome, FETCH_HTTP_ERROR);

    char *lines = captured_log(e);
    assert_true(strlen(lines) > 0);
    assert_non_null(strstr(lines, "request failing"));
    assert_non_null(strstr(lines, "retrying request"));
    assert_null(strstr(lines, TEST_KEY));
    assert_null(strstr(lines, "SECRET"));
    free(lines);
    char *text = metrics_render(NULL);
    assert_non_null(text);
    assert_null(strstr(text, "SECRET"));
    free(text);
    res_free(&a);
    res_free(&b);
    res_free(&c);
    res_free(&d);
}

/* Does `text` hold a run of LOG_SECRET_FRAGMENT_MIN characters of `key`? Returns the first
 * such run's offset in the key, or -1. */
static int key_fragment_in(const char *text, const char *key)
{
    size_t klen = strlen(key);
    for (size_t j = 0; j + LOG_SECRET_FRAGMENT_MIN <= klen; j++) {
        char frag[LOG_SECRET_FRAGMENT_MIN + 1];
        memcpy(frag, key + j, LOG_SECRET_FRAGMENT_MIN);
        frag[LOG_SECRET_FRAGMENT_MIN] = '\0';
        if (strstr(text, frag))
            return (int)j;
    }
    return -1;
}

/* Issue 12, finding 6, as it was found: a 401 whose message is 210 'A's and then the key put 28
 * of the key's 31 characters into the error (cut to 256 bytes before the key was masked).
 * No run of 8 of its characters may reach the result's error or any log line. */
static void test_key_fragment_not_in_error(void **state)
{
    struct env *e = *state;
    static const char key[] = "CG-SuperSecretKey1234567890abcd";
    snprintf(e->key, sizeof(e->key), "%s", key);
    e->src.max_retries = 1;
    log_setup(LOG_DEBUG, LOG_FORMAT_TEXT);
    char as[211], body[1024];
    memset(as, 'A', 210);
    as[210] = '\0';
    snprintf(body, sizeof(body),
             "[{\"match\":\"/global\",\"kind\":\"status\",\"status\":401,"
             "\"body\":{\"error\":\"Invalid API key %s %s\"}},"
             "{\"match\":\"/coins/list\",\"kind\":\"status\",\"status\":503,\"count\":2,"
             "\"body\":{\"error\":\"Invalid API key %s %s\"}}]",
             as, key, as, key);
    fault(body);
    env_start(e);
    struct res a, b;
    int remaining = 2;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    a.remaining = b.remaining = &remaining;
    assert_non_null(api_get(e->api, "/global", 0, NULL, on_done, &a));
    assert_non_null(api_get(e->api, "/coins/list", 0, NULL, on_done, &b));
    run_until(e, &remaining);
    env_stop(e);
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);

    assert_int_equal(a.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(a.status, 401);
    assert_int_equal(key_fragment_in(a.error, key), -1);
    assert_int_equal(strncmp(a.error, "Invalid API key AAAA", 20), 0);
    assert_true(strlen(a.error) <= 255);
    assert_int_equal(b.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(b.attempts, 2);
    assert_int_equal(key_fragment_in(b.error, key), -1);

    char *lines = captured_log(e);
    assert_non_null(strstr(lines, "request failing"));
    assert_non_null(strstr(lines, "retrying request"));
    int at = key_fragment_in(lines, key);
    if (at >= 0)
        fail_msg("the log holds the key's characters from %d on:\n%s", at, lines);
    free(lines);
    res_free(&a);
    res_free(&b);
}

/* Issue 12, finding 7: a key with CR/LF (from the environment or a file) became a second
 * header. The engine refuses to build such a header line: nothing is sent. */
static void test_key_with_newline_not_sent(void **state)
{
    struct env *e = *state;
    snprintf(e->key, sizeof(e->key), "CG-abcdefghij\r\nx-injected: yes");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.attempts, 0);
    assert_non_null(strstr(x.error, "control character"));
    assert_null(strstr(x.error, "CG-abcdefghij"));
    res_free(&x);

    /* A tab is a legal header character; other control characters are not. */
    struct cfg_source s2 = e->src;
    s2.api_key = "CG-abc\x01"
                 "def";
    api_update(e->api, &s2);
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.attempts, 0);
    res_free(&x);
    env_stop(e);

    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 0);
    json_decref(log);
}

/* A fault whose answer carries header `name` `n` times with `len`-byte values. */
static void big_header_fault(const char *route, int count, int n, size_t len)
{
    json_t *headers = json_object();
    char *value = malloc(len + 1);
    assert_non_null(value);
    memset(value, 'A', len);
    value[len] = '\0';
    for (int i = 0; i < n; i++) {
        char name[32];
        snprintf(name, sizeof(name), "X-Big-%d", i);
        json_object_set_new(headers, name, json_string(value));
    }
    free(value);
    json_t *f = json_pack("{s:s, s:s, s:i, s:i, s:o}", "match", route, "kind", "status", "status",
                          200, "count", count, "headers", headers);
    char *text = json_dumps(f, 0);
    assert_non_null(text);
    fault(text);
    free(text);
    json_decref(f);
}

/* Issue 12, finding 10: a 200 KB response header came back as curl's "Out of memory" and was
 * not retried. It is "response header too large", retried like a server fault, within
 * max_retries. Two shapes: one header line over curl's own limit, and many headers over
 * FETCH_HEADER_MAX in all. */
static void test_huge_header_retried(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 2;
    big_header_fault("/global", 1, 1, 200 * 1000);
    big_header_fault("/global", 1, 150, 1000);
    env_start(e);
    struct res x;
    fetch_one(e, "/global", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 3);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"header_too_large\"") == 2);
    res_free(&x);

    big_header_fault("/ping", 10, 1, 200 * 1000);
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_NETWORK_ERROR);
    assert_int_equal(x.attempts, 3);
    assert_string_equal(x.error, "response header too large (over 100 KiB)");
    res_free(&x);
}

/* Issues request C the first time the bucket is seen paused (after a 429 arrived). */
struct pause_probe {
    uv_check_t check;
    struct env *e;
    struct res *c;
    bool sent;
    uint64_t seen_pause_until;
};

static void on_check(uv_check_t *h)
{
    struct pause_probe *p = h->data;
    if (p->sent)
        return;
    uint64_t until = tbucket_paused_until(api_bucket(p->e->api));
    if (until > uv_now(&p->e->loop)) {
        p->sent = true;
        p->seen_pause_until = until;
        assert_non_null(api_get(p->e->api, "/ping", 0, NULL, on_done, p->c));
    }
}

/* Time the first 429 on `route` was answered (server's monotonic clock). */
static double first_429_done(json_t *log, const char *route)
{
    size_t i;
    json_t *r;
    json_array_foreach(log, i, r) if (strcmp(entry_route(r), route) == 0 &&
                                      entry_status(r) == 429) return entry_num(r, "t_done_mono");
    fail_msg("no 429 for %s in the server log", route);
    return 0;
}

/* A 429 with Retry-After: 2 pauses the whole bucket: the retries and a request made while
 * paused reach the server no earlier than 2 s after the 429 went out, and the pause is
 * logged once although two requests got a 429. */
static void test_retry_after_seconds_pauses_bucket(void **state)
{
    struct env *e = *state;
    e->src.burst = 3;
    fault("{\"match\":\"/coins/list\",\"kind\":\"status\",\"status\":429,\"retry_after\":\"2\","
          "\"count\":2}");
    env_start(e);
    struct res a, b, c;
    int remaining = 3;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    memset(&c, 0, sizeof(c));
    a.remaining = b.remaining = c.remaining = &remaining;
    struct pause_probe probe = {.e = e, .c = &c};
    uv_check_init(&e->loop, &probe.check);
    probe.check.data = &probe;
    uv_check_start(&probe.check, on_check);
    assert_non_null(api_get(e->api, "/coins/list", 0, NULL, on_done, &a));
    assert_non_null(api_get(e->api, "/coins/list", 0, NULL, on_done, &b));
    run_until_ms(e, &remaining, 15000);
    uv_close((uv_handle_t *)&probe.check, NULL);
    env_stop(e);

    assert_true(probe.sent);
    assert_int_equal(a.outcome, FETCH_OK);
    assert_int_equal(b.outcome, FETCH_OK);
    assert_int_equal(c.outcome, FETCH_OK);
    assert_int_equal(a.attempts, 2);
    assert_int_equal(b.attempts, 2);
    assert_int_equal(c.attempts, 1);
    assert_true(a.seconds >= 1.99);

    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 5);
    double t429 = first_429_done(log, "/coins/list");
    size_t i, n429 = 0, after = 0;
    json_t *r;
    json_array_foreach(log, i, r)
    {
        if (entry_status(r) == 429) {
            n429++;
            continue;
        }
        /* every request after the first 429 waited for the advised 2 s */
        assert_true(entry_num(r, "t_mono") >= t429 + 2.0 - FAKEAPI_CLOCK_SLACK_S);
        after++;
    }
    assert_int_equal(n429, 2);
    assert_int_equal(after, 3);
    json_decref(log);

    char *lines = captured_log(e);
    assert_int_equal(count_substr(lines, "rate limited"), 1);
    assert_non_null(strstr(lines, "wait_s=2"));
    free(lines);
    assert_true(metric("coingest_http_429_total", LABEL) == 2);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"429\"") == 2);
    res_free(&a);
    res_free(&b);
    res_free(&c);
}

/* Retry-After as an HTTP date 3 s ahead (whole seconds: 2 to 3 s from now). */
static void test_retry_after_http_date(void **state)
{
    struct env *e = *state;
    fault("{\"match\":\"/global\",\"kind\":\"status\",\"status\":429,\"retry_after_in\":3}");
    env_start(e);
    struct res x;
    fetch_one(e, "/global", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 2);
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 2);
    json_t *first = json_array_get(log, 0), *second = json_array_get(log, 1);
    assert_int_equal(entry_status(first), 429);
    assert_non_null(strstr(json_string_value(json_object_get(first, "fault")), "status"));
    assert_true(entry_num(second, "t_mono") >= entry_num(first, "t_done_mono") + 1.95);
    json_decref(log);
    res_free(&x);
}

/* Without Retry-After a 429 backs off (and still pauses the bucket for that while). */
static void test_429_without_header_backs_off(void **state)
{
    struct env *e = *state;
    e->src.backoff_base_ms = 200;
    e->src.backoff_cap_ms = 400;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":429,\"count\":2}");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 3);
    char *lines = captured_log(e);
    assert_int_equal(count_substr(lines, "rate limited, backing off"), 1);
    free(lines);
    res_free(&x);
}

/* A 429 does not use up max_retries: with max_retries = 1, three 429s (Retry-After: 1) and
 * then a 200 still end in success, after four attempts. A long rate-limit episode must not
 * end a request for good (a job would skip the rest of its page walk). */
static void test_429_does_not_use_retries(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 1;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":429,\"retry_after\":1,"
          "\"count\":3}");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.attempts, 4);
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 4);
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(entry_status(json_array_get(log, i)), 429);
    assert_int_equal(entry_status(json_array_get(log, 3)), 200);
    json_decref(log);
    assert_true(metric("coingest_http_429_total", LABEL) == 3);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"429\"") == 3);
    res_free(&x);
}

/* Failures still count when 429s come between them: max_retries = 1 allows two failed
 * attempts, whatever number of 429s (which do not count) surround them. */
static void test_failures_count_around_429(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 1;
    e->src.backoff_base_ms = 1;
    e->src.backoff_cap_ms = 5;
    fault("[{\"match\":\"/global\",\"kind\":\"status\",\"status\":503},"
          "{\"match\":\"/global\",\"kind\":\"status\",\"status\":429,\"count\":2},"
          "{\"match\":\"/global\",\"kind\":\"status\",\"status\":502,"
          "\"body\":{\"error\":\"bad gateway\"}}]");
    env_start(e);
    struct res x;
    fetch_one(e, "/global", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.status, 502);
    assert_int_equal(x.attempts, 4);
    assert_string_equal(x.error, "bad gateway");
    res_free(&x);
}

/* A server that answers nothing but 429 cannot hold a request forever: it ends with its 50th
 * 429 (FETCH_RATE_LIMITED_MAX), although max_retries is small. */
static void test_429_cap(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 2;
    e->src.backoff_base_ms = 1;
    e->src.backoff_cap_ms = 5;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":429,\"count\":1000,"
          "\"body\":{\"status\":{\"error_code\":429,\"error_message\":\"slow down\"}}}");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.status, 429);
    assert_int_equal(x.attempts, 50);
    assert_non_null(strstr(x.error, "slow down"));
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 50);
    json_decref(log);
    assert_true(metric("coingest_http_429_total", LABEL) == 50);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"429\"") == 49);
    assert_true(metric("coingest_http_errors_total", LABEL ",reason=\"http\"") == 1);
    res_free(&x);
}

static void test_5xx_and_408_retried(void **state)
{
    struct env *e = *state;
    fault("[{\"match\":\"/global\",\"kind\":\"status\",\"status\":503},"
          "{\"match\":\"/global\",\"kind\":\"status\",\"status\":500,"
          "\"body\":{\"status\":500,\"error\":\"Internal Server Error\"}},"
          "{\"match\":\"/global\",\"kind\":\"status\",\"status\":408}]");
    env_start(e);
    struct res x;
    fetch_one(e, "/global", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.attempts, 4);
    assert_non_null(strstr(x.body, "active_cryptocurrencies"));
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"5xx\"") == 2);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"408\"") == 1);
    assert_true(metric("coingest_http_requests_total", LABEL ",status=\"503\"") == 1);
    res_free(&x);
}

static void test_retries_exhausted(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 2;
    fault("{\"match\":\"/global\",\"kind\":\"status\",\"status\":502,\"count\":10,"
          "\"body\":{\"error\":\"bad gateway\"}}");
    env_start(e);
    struct res x;
    fetch_one(e, "/global", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.status, 502);
    assert_int_equal(x.attempts, 3);
    assert_string_equal(x.error, "bad gateway");
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 3);
    json_decref(log);
    assert_true(metric("coingest_http_errors_total", LABEL ",reason=\"http\"") == 1);
    res_free(&x);
}

static void test_timeout_retried(void **state)
{
    struct env *e = *state;
    e->src.timeout_ms = 1000;
    fault("{\"match\":\"/ping\",\"kind\":\"delay\",\"seconds\":3}");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 2);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"timeout\"") == 1);
    res_free(&x);
}

static void test_truncated_retried(void **state)
{
    struct env *e = *state;
    fault("{\"match\":\"/coins/markets\",\"kind\":\"truncate\",\"count\":2}");
    env_start(e);
    struct res x;
    fetch_one(e, "/coins/markets?vs_currency=usd&per_page=250&page=1", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 3);
    assert_int_equal(x.len, 245863); /* the whole recorded page, never half of it */
    json_error_t jerr;
    json_t *page = json_loadb(x.body, x.len, 0, &jerr);
    assert_non_null(page);
    assert_int_equal(json_array_size(page), 250);
    json_decref(page);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"truncated\"") == 2);
    res_free(&x);
}

static void test_html_body_retried(void **state)
{
    struct env *e = *state;
    fault("[{\"match\":\"/ping\",\"kind\":\"html\"},"
          "{\"match\":\"/ping\",\"kind\":\"html\",\"page\":\"access_denied\"}]");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.attempts, 3);
    res_free(&x);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"bad_body\"") == 2);

    /* ... and when it never stops, the outcome says so */
    api_free(e->api);
    e->src.max_retries = 1;
    e->api = api_new(e->f, &e->src);
    fault("{\"match\":\"/ping\",\"kind\":\"html\",\"count\":5}");
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_BAD_BODY);
    assert_int_equal(x.status, 200);
    assert_int_equal(x.attempts, 2);
    assert_non_null(strstr(x.error, "error code: 1015"));
    res_free(&x);
}

static void test_reset_retried(void **state)
{
    struct env *e = *state;
    fault("{\"match\":\"/ping\",\"kind\":\"reset\",\"count\":2}");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    env_stop(e);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_true(x.attempts >= 2);
    json_t *log = server_log();
    size_t i, resets = 0;
    json_t *r;
    json_array_foreach(log, i, r) if (entry_status(r) == 0) resets++;
    assert_int_equal(resets, 2);
    assert_int_equal(entry_status(json_array_get(log, json_array_size(log) - 1)), 200);
    json_decref(log);
    res_free(&x);
}

static void test_4xx_not_retried(void **state)
{
    struct env *e = *state;
    env_start(e);
    struct res x;
    fetch_one(e, "/coins/markets", &x);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.status, 422);
    assert_int_equal(x.attempts, 1);
    assert_string_equal(x.error, "Missing parameter vs_currency");
    assert_string_equal(x.body, "{\"error\":\"Missing parameter vs_currency\"}");
    res_free(&x);

    fetch_one(e, "/coins/no-such-thing", &x);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.status, 404);
    assert_int_equal(x.attempts, 1);
    assert_non_null(strstr(x.error, "Incorrect path"));
    res_free(&x);

    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":401,"
          "\"body\":{\"status\":{\"error_code\":10002,\"error_message\":\"API Key Missing\"}}}");
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.status, 401);
    assert_int_equal(x.attempts, 1);
    assert_string_equal(x.error, "API Key Missing (error_code 10002)");
    res_free(&x);

    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":403,\"body\":\"<html>no</html>\","
          "\"content_type\":\"text/html\"}");
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.status, 403);
    assert_string_equal(x.error, "HTTP 403");
    res_free(&x);
    env_stop(e);

    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 4);
    json_decref(log);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"5xx\"") == 0);
}

static void test_oversized_body_refused(void **state)
{
    struct env *e = *state;
    e->src.max_body_bytes = 64 * 1024;
    fault("[{\"match\":\"/ping\",\"kind\":\"big\",\"bytes\":1048576},"
          "{\"match\":\"/ping\",\"kind\":\"big\",\"bytes\":1048576,\"chunked\":true},"
          "{\"match\":\"/ping\",\"kind\":\"big\",\"bytes\":65536}]");
    env_start(e);
    struct res x;
    /* Content-Length over the limit: refused before the body */
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_TOO_LARGE);
    assert_int_equal(x.attempts, 1);
    assert_true(x.len <= 64 * 1024);
    res_free(&x);
    /* chunked: aborted once the body grows past the limit */
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_TOO_LARGE);
    assert_int_equal(x.attempts, 1);
    assert_true(x.len <= 64 * 1024);
    res_free(&x);
    /* exactly the limit is fine */
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_int_equal(x.len, 65536);
    res_free(&x);
    env_stop(e);
    char *lines = captured_log(e);
    assert_int_equal(count_substr(lines, "response too large"), 2);
    free(lines);
    assert_true(metric("coingest_http_errors_total", LABEL ",reason=\"too_large\"") == 2);
}

struct parse_ctx {
    struct res res;
    int calls;
    int reject;
    int reject_rc; /* what a rejection returns; 0: -EINVAL */
    size_t kept_rows;
};

static int parse_rows(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct parse_ctx *p = arg;
    p->calls++;
    json_error_t jerr;
    json_t *rows = json_loadb(body, len, 0, &jerr);
    if (!rows) {
        snprintf(err, errlen, "%s", jerr.text);
        return -EINVAL;
    }
    size_t n = json_array_size(rows);
    json_decref(rows);
    if (p->calls <= p->reject) {
        snprintf(err, errlen, "rows look wrong (%zu)", n);
        return p->reject_rc ? p->reject_rc : -EINVAL;
    }
    p->kept_rows = n;
    return 0;
}

static void on_parse_done(const struct fetch_result *r, void *arg)
{
    struct parse_ctx *p = arg;
    on_done(r, &p->res);
}

static void test_parse_callback(void **state)
{
    struct env *e = *state;
    env_start(e);
    struct parse_ctx p = {.reject = 1};
    int remaining = 1;
    p.res.remaining = &remaining;
    assert_non_null(
        api_get(e->api, "/coins/markets?vs_currency=usd", 0, parse_rows, on_parse_done, &p));
    run_until(e, &remaining);
    assert_int_equal(p.res.outcome, FETCH_OK);
    assert_int_equal(p.calls, 2);
    assert_int_equal(p.res.attempts, 2);
    assert_int_equal(p.kept_rows, 250);
    res_free(&p.res);

    /* The API's own error in a 200 (-EPROTO): final at once, its message as the error. */
    struct parse_ctx n = {.reject = 100, .reject_rc = -EPROTO};
    remaining = 1;
    n.res.remaining = &remaining;
    assert_non_null(api_get(e->api, "/ping", 0, parse_rows, on_parse_done, &n));
    run_until(e, &remaining);
    assert_int_equal(n.res.outcome, FETCH_BAD_BODY);
    assert_int_equal(n.calls, 1);
    assert_int_equal(n.res.attempts, 1);
    assert_string_equal(n.res.error, "rows look wrong (0)");
    res_free(&n.res);

    struct parse_ctx q = {.reject = 100};
    remaining = 1;
    q.res.remaining = &remaining;
    assert_non_null(api_get(e->api, "/ping", 0, parse_rows, on_parse_done, &q));
    run_until(e, &remaining);
    env_stop(e);
    assert_int_equal(q.res.outcome, FETCH_BAD_BODY);
    assert_int_equal(q.calls, 4); /* max_retries 3 */
    assert_int_equal(q.res.attempts, 4);
    assert_string_equal(q.res.error, "parse: rows look wrong (0)");
    res_free(&q.res);
    assert_true(metric("coingest_http_retries_total", LABEL ",reason=\"parse\"") == 4);
}

/* Cancelling in each state runs the done callback before fetch_cancel returns. */
static void test_cancel(void **state)
{
    struct env *e = *state;
    e->src.rate_limit = (struct rate){.count = 1, .period_ms = 60000};
    e->src.burst = 1;
    e->src.backoff_base_ms = 10000;
    e->src.backoff_cap_ms = 10000;
    fault("{\"match\":\"/ping\",\"kind\":\"delay\",\"seconds\":5}");
    env_start(e);
    struct res inflight = {0}, queued = {0}, other = {0};
    struct fetch_req *r1 = api_get(e->api, "/ping", 0, NULL, on_done, &inflight);
    struct fetch_req *r2 = api_get(e->api, "/global", 0, NULL, on_done, &queued);
    assert_non_null(r1);
    assert_non_null(r2);
    assert_int_equal(api_pending(e->api), 2);
    assert_int_equal(tbucket_queued(api_bucket(e->api)), 1);

    fetch_cancel(r2); /* waiting in the bucket */
    assert_int_equal(queued.calls, 1);
    assert_int_equal(queued.outcome, FETCH_CANCELLED);
    assert_int_equal(queued.attempts, 0);
    assert_int_equal(tbucket_queued(api_bucket(e->api)), 0);

    /* let r1 reach the server (its 5 s delay holds it there), then cancel it in flight */
    uint64_t deadline = uv_hrtime() + 4000000000ull;
    for (;;) {
        uv_run(&e->loop, UV_RUN_NOWAIT);
        json_t *log = server_log();
        size_t n = json_array_size(log);
        json_decref(log);
        if (n == 1)
            break;
        if (uv_hrtime() > deadline)
            fail_msg("the first request did not reach the fake API within 4 s");
    }
    fetch_cancel(r1);
    assert_int_equal(inflight.calls, 1);
    assert_int_equal(inflight.outcome, FETCH_CANCELLED);
    assert_int_equal(inflight.attempts, 1);
    assert_int_equal(api_pending(e->api), 0);

    /* api_free cancels what is left, here a request waiting in the bucket */
    assert_non_null(api_get(e->api, "/global", 0, NULL, on_done, &other));
    api_free(e->api);
    e->api = NULL;
    assert_int_equal(other.calls, 1);
    assert_int_equal(other.outcome, FETCH_CANCELLED);
    env_stop(e);
    res_free(&inflight);
    res_free(&queued);
    res_free(&other);
}

static bool got_500(void *arg)
{
    (void)arg;
    return metric("coingest_http_requests_total", LABEL ",status=\"500\"") >= 1;
}

static void test_cancel_in_backoff(void **state)
{
    struct env *e = *state;
    e->src.backoff_base_ms = 60000;
    e->src.backoff_cap_ms = 60000;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":500,\"count\":10}");
    env_start(e);
    struct res x = {0};
    int remaining = 1;
    x.remaining = &remaining;
    struct fetch_req *r = api_get(e->api, "/ping", 0, NULL, on_done, &x);
    /* run until the 500 came back and the request sleeps in its backoff */
    run_until_true(e, got_500, NULL, 20000, "the first answer, a 500");
    assert_int_equal(x.calls, 0);
    assert_int_equal(api_pending(e->api), 1);
    fetch_cancel(r);
    assert_int_equal(x.calls, 1);
    assert_int_equal(x.outcome, FETCH_CANCELLED);
    assert_int_equal(x.status, 500);
    assert_int_equal(x.attempts, 1);
    env_stop(e); /* a pending backoff timer would keep the loop alive: it must be gone */
    res_free(&x);
}

/* A storm of failures is one warn line with the count of the failures after it; the first
 * success after them is an info line, and the next failure is logged again at once. */
static void test_failures_logged_once(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 3;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":503,\"count\":20}");
    env_start(e);
    struct res x[5];
    int remaining = 5;
    memset(x, 0, sizeof(x));
    for (int i = 0; i < 5; i++) {
        x[i].remaining = &remaining;
        assert_non_null(api_get(e->api, "/ping", 0, NULL, on_done, &x[i]));
    }
    run_until(e, &remaining);
    for (int i = 0; i < 5; i++)
        assert_int_equal(x[i].outcome, FETCH_HTTP_ERROR);
    struct api_stats st;
    api_get_stats(e->api, &st);
    assert_int_equal(st.failures, 20);
    assert_int_equal(st.calls_total, 20);
    assert_int_equal(st.calls_last_minute, 20);
    struct res ok;
    fetch_one(e, "/ping", &ok);
    assert_int_equal(ok.outcome, FETCH_OK);
    api_get_stats(e->api, &st);
    assert_int_equal(st.failures, 0);
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":404}");
    struct res again;
    fetch_one(e, "/ping", &again);
    env_stop(e);

    char *lines = captured_log(e);
    /* 20 failed attempts, one line; then the recovery; then the next failure at once. */
    assert_int_equal(count_substr(lines, "msg=\"request failing\""), 2);
    assert_non_null(strstr(lines, "level=warn msg=\"request failing\""));
    assert_non_null(strstr(lines, "level=info msg=\"requests succeed again\""));
    assert_non_null(strstr(lines, "failures=20"));
    const char *rec = strstr(lines, "requests succeed again");
    assert_non_null(strstr(rec, "msg=\"request failing\" api=coingecko path=/ping status=404"));
    free(lines);
    for (int i = 0; i < 5; i++)
        res_free(&x[i]);
    res_free(&ok);
    res_free(&again);
}

/* api_stop: a request in its backoff and one waiting for a token end at once, cancelled; one
 * made afterwards ends cancelled without being sent; the API counts no failure for them. */
static void test_stop_ends_waits(void **state)
{
    struct env *e = *state;
    e->src.backoff_base_ms = 60000;
    e->src.backoff_cap_ms = 60000;
    e->src.rate_limit = (struct rate){.count = 1, .period_ms = 60000};
    e->src.burst = 1;
    fault("{\"match\":\"/ping\",\"kind\":\"status\",\"status\":500,\"count\":10}");
    env_start(e);
    struct res a = {0}, b = {0}, c = {0};
    int remaining = 3;
    a.remaining = b.remaining = c.remaining = &remaining;
    assert_non_null(api_get(e->api, "/ping", 0, NULL, on_done, &a));
    run_until_true(e, got_500, NULL, 20000, "the first answer, a 500");
    /* a sleeps in its backoff; b waits for the bucket's next token, a minute away */
    assert_non_null(api_get(e->api, "/global", 0, NULL, on_done, &b));
    assert_int_equal(api_pending(e->api), 2);
    uint64_t t0 = uv_now(&e->loop);
    api_stop(e->api);
    assert_int_equal(a.calls, 1);
    assert_int_equal(a.outcome, FETCH_CANCELLED);
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.outcome, FETCH_CANCELLED);
    assert_int_equal(b.attempts, 0);
    assert_non_null(api_get(e->api, "/global", 0, NULL, on_done, &c));
    assert_int_equal(c.calls, 0); /* never inline */
    run_until(e, &remaining);
    assert_int_equal(c.outcome, FETCH_CANCELLED);
    assert_int_equal(c.attempts, 0);
    assert_true(uv_now(&e->loop) - t0 < 5000);
    env_stop(e);
    res_free(&a);
    res_free(&b);
    res_free(&c);
}

/* Requests in a row reuse one connection. */
static void test_connection_reuse(void **state)
{
    struct env *e = *state;
    env_start(e);
    for (int i = 0; i < 20; i++) {
        struct res x;
        fetch_one(e, i % 2 ? "/ping" : "/global", &x);
        assert_int_equal(x.outcome, FETCH_OK);
        res_free(&x);
    }
    env_stop(e);
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 20);
    json_int_t conn = json_integer_value(json_object_get(json_array_get(log, 0), "conn"));
    size_t i;
    json_t *r;
    json_array_foreach(log, i, r)
        assert_int_equal(json_integer_value(json_object_get(r, "conn")), conn);
    json_decref(log);
}

/* The bucket paces requests: 10 requests at 20/s with burst 1 take at least 450 ms, and the
 * k-th reaches the server no earlier than k x 50 ms after the bucket was made (the bucket
 * never grants early; the server's clock is our CLOCK_MONOTONIC). Arrival gaps themselves are
 * not compared: a late send of one request shortens the next gap without any early grant. */
static void test_bucket_paces_requests(void **state)
{
    struct env *e = *state;
    e->src.rate_limit = (struct rate){.count = 20, .period_ms = 1000};
    e->src.burst = 1;
    double t_made = (double)uv_hrtime() / 1e9;
    env_start(e);
    struct res x[10];
    int remaining = 10;
    memset(x, 0, sizeof(x));
    uint64_t t0 = uv_hrtime();
    for (int i = 0; i < 10; i++) {
        x[i].remaining = &remaining;
        assert_non_null(api_get(e->api, "/ping", 0, NULL, on_done, &x[i]));
    }
    assert_int_equal(api_pending(e->api), 10);
    run_until(e, &remaining);
    double elapsed = (double)(uv_hrtime() - t0) / 1e9;
    env_stop(e);
    assert_true(elapsed >= 0.45 - FAKEAPI_CLOCK_SLACK_S);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(x[i].outcome, FETCH_OK);
        res_free(&x[i]);
    }
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 10);
    for (size_t i = 0; i < 10; i++) {
        double earliest = t_made + 0.050 * (double)i - FAKEAPI_CLOCK_SLACK_S;
        assert_true(entry_num(json_array_get(log, i), "t_mono") >= earliest);
    }
    json_decref(log);
    assert_true(metric("coingest_bucket_wait_seconds_total", LABEL) >= 0.4);
}

static void test_connection_refused(void **state)
{
    struct env *e = *state;
    e->src.max_retries = 1;
    /* a port nobody listens on: bind one, note it, close it */
    uv_loop_t l;
    uv_loop_init(&l);
    uv_tcp_t s;
    uv_tcp_init(&l, &s);
    struct sockaddr_in addr;
    uv_ip4_addr("127.0.0.1", 0, &addr);
    assert_int_equal(uv_tcp_bind(&s, (const struct sockaddr *)&addr, 0), 0);
    struct sockaddr_in bound;
    int blen = sizeof(bound);
    uv_tcp_getsockname(&s, (struct sockaddr *)&bound, &blen);
    uv_close((uv_handle_t *)&s, NULL);
    run_dry(&l, 10000, "closing the probe socket");
    assert_int_equal(uv_loop_close(&l), 0);
    snprintf(e->base_url, sizeof(e->base_url), "http://127.0.0.1:%d/api/v3", ntohs(bound.sin_port));
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_NETWORK_ERROR);
    assert_int_equal(x.status, 0);
    assert_int_equal(x.attempts, 2);
    assert_true(strlen(x.error) > 0);
    res_free(&x);
    assert_true(metric("coingest_http_requests_total", LABEL ",status=\"none\"") == 2);

    /* api_update applies to the next request: point it at the fake API */
    snprintf(e->base_url, sizeof(e->base_url), "%s/", fakeapi_base_url(fake));
    api_update(e->api, &e->src);
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    res_free(&x);
    env_stop(e);
}

static void test_bad_requests(void **state)
{
    struct env *e = *state;
    e->src.max_url_bytes = 100;
    env_start(e);
    struct res x;
    char path[200];
    memset(path, 'a', sizeof(path) - 1);
    path[0] = '/';
    path[sizeof(path) - 1] = '\0';
    fetch_one(e, path, &x);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.attempts, 0);
    assert_non_null(strstr(x.error, "max_url_bytes"));
    res_free(&x);
    fetch_one(e, "ping", &x);
    assert_int_equal(x.outcome, FETCH_HTTP_ERROR);
    assert_int_equal(x.attempts, 0);
    res_free(&x);
    assert_null(api_get(e->api, "/ping", 0, NULL, NULL, NULL));
    env_stop(e);
    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 0);
    json_decref(log);
}

/* A done callback may free the API and the fetcher while other requests are in flight. */
struct free_ctx {
    struct env *e;
    int done, cancelled;
};

static void on_done_free_all(const struct fetch_result *r, void *arg)
{
    struct free_ctx *c = arg;
    if (r->outcome == FETCH_CANCELLED) {
        c->cancelled++;
        return;
    }
    c->done++;
    if (c->done == 1) {
        api_free(c->e->api);
        c->e->api = NULL;
        fetcher_free(c->e->f, on_freed, c->e);
        c->e->f = NULL;
    }
}

static bool is_freed(void *arg)
{
    return ((struct env *)arg)->freed;
}

static void test_free_from_done_callback(void **state)
{
    struct env *e = *state;
    fault("{\"match\":\"/global\",\"kind\":\"delay\",\"seconds\":3,\"count\":4}");
    env_start(e);
    struct free_ctx c = {.e = e};
    assert_non_null(api_get(e->api, "/ping", 0, NULL, on_done_free_all, &c));
    for (int i = 0; i < 4; i++)
        assert_non_null(api_get(e->api, "/global", 0, NULL, on_done_free_all, &c));
    run_until_true(e, is_freed, e, 20000, "the fetcher freed from a done callback");
    assert_int_equal(c.done, 1);
    assert_int_equal(c.cancelled, 4);
    timers_free(e->timers);
    run_dry(&e->loop, 10000, "freeing the timers");
    assert_true(e->freed);
    assert_int_equal(uv_loop_close(&e->loop), 0);
}

/* plan = pro without base_url goes to the pro host. Seen offline through https_proxy pointing
 * at the fake API, which logs the CONNECT and refuses it: the tunnel request names the host
 * and, as the proxy is not the API, carries no key. */
static void test_default_hosts_by_plan(void **state)
{
    struct env *e = *state;
    char proxy[64];
    snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", fakeapi_port(fake));
    setenv("https_proxy", proxy, 1);
    unsetenv("no_proxy");
    unsetenv("NO_PROXY");
    e->src.base_url = NULL;
    e->src.max_retries = 0;
    e->src.plan = PLAN("pro");
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_NETWORK_ERROR);
    assert_int_equal(x.attempts, 1);
    res_free(&x);
    api_free(e->api);
    e->src.plan = PLAN("demo");
    e->api = api_new(e->f, &e->src);
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_NETWORK_ERROR);
    res_free(&x);
    env_stop(e);
    unsetenv("https_proxy");

    json_t *log = server_log();
    assert_int_equal(json_array_size(log), 2);
    json_t *r0 = json_array_get(log, 0), *r1 = json_array_get(log, 1);
    assert_string_equal(json_string_value(json_object_get(r0, "method")), "CONNECT");
    assert_string_equal(json_string_value(json_object_get(r0, "path")),
                        "pro-api.coingecko.com:443");
    assert_string_equal(json_string_value(json_object_get(r1, "path")), "api.coingecko.com:443");
    assert_null(entry_header(r0, "x-cg-pro-api-key"));
    assert_null(entry_header(r1, "x-cg-demo-api-key"));
    json_decref(log);
}

/* TLS verification is always on: a self-signed server fails (not retried) unless ca_file
 * names its certificate. Needs the openssl command to make the certificate. */
static void test_tls_verification(void **state)
{
    struct env *e = *state;
    if (system("openssl version >/dev/null 2>&1") != 0) {
        print_message("SKIP test_tls_verification: the openssl command is not installed; it "
                      "makes the test's self-signed certificate\n");
        skip();
    }
    char dir[] = "/tmp/test_fetch_tls.XXXXXX";
    assert_non_null(mkdtemp(dir));
    char cert[128], key[128], cmd[512];
    snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
    snprintf(key, sizeof(key), "%s/key.pem", dir);
    snprintf(cmd, sizeof(cmd),
             "openssl req -x509 -newkey rsa:2048 -nodes -keyout %s -out %s -days 1 "
             "-subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1",
             key, cert);
    assert_int_equal(system(cmd), 0);
    const char *args[] = {"--tls-cert", cert, "--tls-key", key, NULL};
    struct fakeapi *tls = fakeapi_start(args);
    assert_non_null(tls);
    snprintf(e->base_url, sizeof(e->base_url), "https://127.0.0.1:%d/api/v3", fakeapi_port(tls));
    e->src.max_retries = 2;
    env_start(e);
    struct res x;
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_NETWORK_ERROR);
    assert_int_equal(x.attempts, 1);
    assert_true(strlen(x.error) > 0);
    res_free(&x);

    api_free(e->api);
    e->src.ca_file = cert;
    e->api = api_new(e->f, &e->src);
    fetch_one(e, "/ping", &x);
    assert_int_equal(x.outcome, FETCH_OK);
    assert_string_equal(x.body, "{\"gecko_says\":\"(V3) To the Moon!\"}");
    res_free(&x);
    env_stop(e);
    fakeapi_stop(tls);
    unlink(cert);
    unlink(key);
    rmdir(dir);
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    if (!d)
        return -1;
    int n = 0;
    while (readdir(d))
        n++;
    closedir(d);
    return n;
}

struct many {
    struct env *e;
    int to_start, remaining, ok;
};

static void on_many_done(const struct fetch_result *r, void *arg)
{
    struct many *m = arg;
    if (r->outcome == FETCH_OK && r->status == 200 && r->len > 0)
        m->ok++;
    m->remaining--;
    if (m->to_start > 0) {
        m->to_start--;
        assert_non_null(api_get(m->e->api, "/ping", 0, NULL, on_many_done, m));
    }
}

/* 10,000 requests (64 at a time) leave no handle, socket or memory behind. */
static void test_many_requests_leave_nothing(void **state)
{
    struct env *e = *state;
    e->src.rate_limit = (struct rate){.count = 0, .period_ms = 0}; /* no limit */
    e->src.burst = 64;
    assert_int_equal(fakeapi_control(fake, "GET", "/_control/state", NULL, NULL), 200);
    int fds_before = count_fds();
    env_start(e);
    struct many m = {.e = e, .to_start = 10000, .remaining = 10000};
    for (int i = 0; i < 64; i++) {
        m.to_start--;
        assert_non_null(api_get(e->api, "/ping", 0, NULL, on_many_done, &m));
    }
    run_until(e, &m.remaining);
    assert_int_equal(m.ok, 10000);
    assert_int_equal(api_pending(e->api), 0);
    env_stop(e);
    assert_int_equal(count_fds(), fds_before);
    char *resp = NULL;
    assert_int_equal(fakeapi_control(fake, "GET", "/_control/state", NULL, &resp), 200);
    json_t *st = json_loads(resp, 0, NULL);
    assert_int_equal(json_integer_value(json_object_get(st, "requests")), 10000);
    /* connections were reused: a handful, not thousands */
    json_decref(st);
    free(resp);
    json_t *log = server_log();
    json_t *conns = json_object();
    size_t i;
    json_t *r;
    json_array_foreach(log, i, r)
    {
        char k[32];
        snprintf(k, sizeof(k), "%lld", (long long)json_integer_value(json_object_get(r, "conn")));
        json_object_set_new(conns, k, json_true());
    }
    assert_true(json_object_size(conns) <= 8);
    json_decref(conns);
    json_decref(log);
}

static int group_setup(void **state)
{
    (void)state;
    fake = fakeapi_start(NULL);
    if (!fake)
        return -1;
    logfile = tmpfile();
    if (!logfile)
        return -1;
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    log_set_fd(fileno(logfile));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    log_set_fd(2);
    if (logfile)
        fclose(logfile);
    fakeapi_stop(fake);
    return 0;
}

int main(void)
{
    if (!fakeapi_available()) {
        fprintf(stderr, "test_fetch: FAKEAPI or python3 missing, skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_retry_after),
        cmocka_unit_test(test_api_error_message),
#define T(fn) cmocka_unit_test_setup_teardown(fn, env_setup, env_teardown)
        T(test_get_ok_headers_and_metrics),
        T(test_pro_plan_header),
        T(test_public_plan_sends_no_key),
        T(test_key_never_logged),
        T(test_key_fragment_not_in_error),
        T(test_key_with_newline_not_sent),
        T(test_huge_header_retried),
        T(test_retry_after_seconds_pauses_bucket),
        T(test_retry_after_http_date),
        T(test_429_without_header_backs_off),
        T(test_429_does_not_use_retries),
        T(test_failures_count_around_429),
        T(test_429_cap),
        T(test_5xx_and_408_retried),
        T(test_retries_exhausted),
        T(test_timeout_retried),
        T(test_truncated_retried),
        T(test_html_body_retried),
        T(test_reset_retried),
        T(test_4xx_not_retried),
        T(test_oversized_body_refused),
        T(test_parse_callback),
        T(test_cancel),
        T(test_cancel_in_backoff),
        T(test_failures_logged_once),
        T(test_stop_ends_waits),
        T(test_connection_reuse),
        T(test_bucket_paces_requests),
        T(test_connection_refused),
        T(test_bad_requests),
        T(test_free_from_done_callback),
        T(test_default_hosts_by_plan),
        T(test_tls_verification),
        T(test_many_requests_leave_nothing),
#undef T
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
