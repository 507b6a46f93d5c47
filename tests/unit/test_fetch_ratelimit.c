/*
 * ctest-labels: slow
 * The token bucket against a real server-side limit: 60 requests under rate_limit = 30/min,
 * burst = 1, to a fake API that enforces 30 requests per sliding minute. None may trip the
 * server's limit, and the run takes at least the 59 x 2 s the limit implies (the bucket
 * never grants early). About two minutes of real time, so it is its own executable and
 * CTest runs it alongside the others.
 *
 * To show that the server's limit was live and full, unpaced requests right after the run must
 * meet the server's 429 (within a few probes, whatever the machine's load).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>
#include <uv.h>

#include "coingest/fetch.h"
#include "coingest/metrics.h"
#include "coingest/timers.h"
#include "fakeapi_proc.h"

#define NREQ 60

struct run {
    int remaining;
    int ok;
    int single_attempt;
    long last_status;
};

static void on_done(const struct fetch_result *r, void *arg)
{
    struct run *x = arg;
    if (r->outcome == FETCH_OK)
        x->ok++;
    if (r->attempts == 1)
        x->single_attempt++;
    x->last_status = r->status;
    x->remaining--;
}

static void on_freed(void *arg)
{
    *(bool *)arg = true;
}

static struct cfg_source source(const char *base_url, char *name, struct rate rate, uint32_t burst,
                                uint32_t max_retries)
{
    struct cfg_source s;
    memset(&s, 0, sizeof(s));
    s.name = name;
    s.base_url = (char *)base_url;
    s.plan = 0; /* no source definition: keyless */
    s.rate_limit = rate;
    s.burst = burst;
    s.timeout_ms = 10000;
    s.connect_timeout_ms = 5000;
    s.max_retries = max_retries;
    s.backoff_base_ms = 100;
    s.backoff_cap_ms = 1000;
    s.max_body_bytes = 1u << 20;
    s.max_url_bytes = 8000;
    return s;
}

static void test_sixty_requests_at_thirty_per_minute(void **state)
{
    (void)state;
    const char *args[] = {"--rate-limit", "30/min", NULL};
    struct fakeapi *fake = fakeapi_start(args);
    assert_non_null(fake);

    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct timers *timers = timers_new(&loop);
    struct fetcher *f = fetcher_new(&loop, timers);
    assert_non_null(f);
    char name[] = "coingecko";
    struct cfg_source src =
        source(fakeapi_base_url(fake), name, (struct rate){.count = 30, .period_ms = 60000}, 1, 3);
    uint64_t t_made = uv_hrtime(); /* the bucket starts after this */
    struct api *api = api_new(f, &src);
    assert_non_null(api);

    struct run run = {.remaining = NREQ};
    for (int i = 0; i < NREQ; i++)
        assert_non_null(
            api_get(api, "/simple/price?ids=bitcoin&vs_currencies=usd", 0, NULL, on_done, &run));
    while (run.remaining > 0 && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    double elapsed = (double)(uv_hrtime() - t_made) / 1e9;
    assert_int_equal(run.remaining, 0);
    assert_int_equal(run.ok, NREQ);
    assert_int_equal(run.single_attempt, NREQ);
    assert_true(metrics_get("coingest_http_429_total", "api=\"coingecko\"") == 0);

    /* The server's window is full now: unpaced requests are refused. The first probe may still
     * get through when the machine is slow (the window's oldest request left it while the
     * probe was on its way), but then the probe itself fills the window again, so one of a few
     * probes in a row must meet the server's 429. */
    char name2[] = "unpaced";
    struct cfg_source src2 =
        source(fakeapi_base_url(fake), name2, (struct rate){.count = 0, .period_ms = 0}, 1, 0);
    struct api *unpaced = api_new(f, &src2);
    int probes = 0;
    long status = 0;
    while (status != 429 && probes < 5) {
        struct run probe = {.remaining = 1};
        struct fetch_req *req = api_get(unpaced, "/ping", 0, NULL, on_done, &probe);
        assert_non_null(req);
        probes++;
        double seen = metrics_get("coingest_http_429_total", "api=\"unpaced\"");
        /* A 429 does not end a request (it waits for Retry-After and tries again), so the
         * probe is cancelled once its first answer, the 429, has come back. */
        while (probe.remaining > 0 &&
               metrics_get("coingest_http_429_total", "api=\"unpaced\"") <= seen &&
               uv_run(&loop, UV_RUN_ONCE) != 0)
            ;
        if (probe.remaining > 0)
            fetch_cancel(req);
        assert_int_equal(probe.remaining, 0);
        status = probe.last_status;
    }
    assert_int_equal(status, 429);

    api_free(unpaced);
    api_free(api);
    bool freed = false;
    fetcher_free(f, on_freed, &freed);
    timers_free(timers);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_true(freed);
    assert_int_equal(uv_loop_close(&loop), 0);

    json_t *log = fakeapi_log(fake, 0);
    assert_non_null(log);
    /* The NREQ paced requests first, then the probes: at least one each, more when a 429's
     * Retry-After was so short that the retry left before the probe was cancelled. */
    assert_true(json_array_size(log) >= NREQ + (size_t)probes);
    for (size_t i = 0; i < json_array_size(log); i++) {
        const char *path = json_string_value(json_object_get(json_array_get(log, i), "route"));
        assert_non_null(path);
        assert_int_equal(strncmp(path, i < NREQ ? "/simple/price" : "/ping", i < NREQ ? 13 : 5), 0);
    }
    for (size_t i = 0; i < NREQ; i++) {
        json_t *e = json_array_get(log, i);
        assert_int_equal(json_integer_value(json_object_get(e, "status")), 200);
        /* the k-th request reaches the server no earlier than k x 2 s after the bucket was
         * made (up to the clocks' slack) */
        double t = json_number_value(json_object_get(e, "t_mono"));
        assert_true(t >= (double)t_made / 1e9 + 2.0 * (double)i - FAKEAPI_CLOCK_SLACK_S);
    }
    json_decref(log);
    fakeapi_stop(fake);

    printf("test=fetch_ratelimit requests=%d rate=30/min burst=1 elapsed_s=%.3f "
           "implied_s=%.1f server_429=0\n",
           NREQ, elapsed, (NREQ - 1) * 2.0);
    /* the bucket never grants early: 59 intervals of 2 s */
    assert_true(elapsed >= (NREQ - 1) * 2.0 - FAKEAPI_CLOCK_SLACK_S);
}

int main(void)
{
    if (!fakeapi_available()) {
        fprintf(stderr, "test_fetch_ratelimit: FAKEAPI or python3 missing, skipping\n");
        return 77;
    }
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sixty_requests_at_thirty_per_minute),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
