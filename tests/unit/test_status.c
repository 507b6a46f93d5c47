/* test_status: the status page's pure parts (status_html, status_month_start). The page built
 * from a live daemon is tested in tests/integration/test_status_page.py (headless Chromium). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "coingest/status.h"

static json_t *sample_json(void)
{
    json_error_t err;
    json_t *j = json_loads(
        "{\"version\":\"1.0\",\"generated_at\":\"2025-02-09T17:44:07.123Z\",\"uptime_s\":3700,"
        "\"refresh_s\":10,\"stopping\":false,"
        "\"health\":{\"status\":\"degraded\",\"reason\":\"source x: "
        "<b>bad</b>\",\"http_status\":200},"
        "\"sources\":[{\"name\":\"coingecko\",\"plan\":\"demo\",\"rate_limit_per_min\":30.0,"
        "\"monthly_credits\":10000,\"bucket\":{\"tokens\":2.5,\"burst\":5,\"queued\":1,"
        "\"paused_s\":0},\"calls_last_minute\":12,\"calls_since_start\":40,"
        "\"calls_this_month\":null,\"credits_left\":null,\"requests_in_flight\":1,"
        "\"requests_waiting\":0,\"failing\":true,\"failures\":3,\"failing_s\":20}],"
        "\"jobs\":[{\"name\":\"prices\",\"source\":\"coingecko\",\"enabled\":true,\"every_s\":300,"
        "\"running\":false,\"failed_streak\":2,\"next_run\":null,\"next_run_in_s\":42,"
        "\"last_run\":{\"status\":\"failed\",\"started_at\":\"a\",\"finished_at\":\"b\","
        "\"ago_s\":5,\"duration_s\":1.25,\"requests\":4,\"rows\":0,\"counted\":0,"
        "\"error\":\"GET /x: <script>alert('x')</script> & more\"}},"
        "{\"name\":\"assets\",\"source\":\"coingecko\",\"enabled\":true,\"every_s\":86400,"
        "\"running\":true,\"failed_streak\":0,\"next_run\":null,\"next_run_in_s\":null,"
        "\"last_run\":null}],"
        "\"sink\":{\"db\":\"up\",\"rows_committed\":7,\"rows_pending\":0,\"spool_rows\":0,"
        "\"spool_bytes\":0,\"rows_rejected\":0,\"rows_lost\":0},"
        "\"recent_errors\":[{\"at\":\"t\",\"level\":\"warn\",\"line\":\"msg=\\\"x\\\" <y>\"}],"
        "\"rows_per_minute\":[{\"minute\":\"m0\",\"rows\":3},{\"minute\":\"m1\",\"rows\":9}]}",
        0, &err);
    if (!j)
        fail_msg("sample JSON: %s", err.text);
    return j;
}

/* Everything from the outside is escaped; numbers carry their JSON path; no script, no
 * external reference; the refresh is there. */
static void test_html(void **state)
{
    (void)state;
    json_t *j = sample_json();
    size_t len = 0;
    char *page = status_html(j, &len);
    assert_non_null(page);
    assert_int_equal(strlen(page), len);
    assert_null(strstr(page, "<script"));
    assert_null(strstr(page, "<b>"));
    assert_null(strstr(page, "<y>"));
    assert_non_null(strstr(page, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; more"));
    assert_null(strstr(page, "http://"));
    assert_null(strstr(page, "https://"));
    assert_non_null(strstr(page, "<meta http-equiv=\"refresh\" content=\"10\">"));
    assert_non_null(strstr(page, "data-k=\"sources.0.bucket.tokens\">2.50<"));
    assert_non_null(strstr(page, "data-k=\"sources.0.calls_last_minute\">12<"));
    assert_non_null(strstr(page, "data-k=\"sources.0.calls_this_month\">n/a<"));
    assert_non_null(strstr(page, "data-k=\"jobs.0.every_s\" data-v=\"300\">5m<"));
    assert_non_null(strstr(page, "data-k=\"jobs.0.next_run_in_s\" data-v=\"42\">in 42 s<"));
    assert_non_null(strstr(page, "data-k=\"jobs.0.last_run.duration_s\">1.25<"));
    assert_non_null(strstr(page, "data-k=\"jobs.1.every_s\" data-v=\"86400\">24h<"));
    assert_non_null(strstr(page, "first run going on"));
    assert_non_null(strstr(page, "data-k=\"rows_per_minute.1.rows\" data-v=\"9\""));
    assert_non_null(strstr(page, "data-k=\"rows_per_minute_total\" data-v=\"12\""));
    assert_non_null(strstr(page, "class=\"pill degraded\" data-k=\"health.status\">degraded<"));
    free(page);
    json_decref(j);
}

/* Cluster mode: the lease table, escaped, with its paths; absent without "cluster". */
static void test_html_cluster(void **state)
{
    (void)state;
    json_t *j = sample_json();
    size_t len = 0;
    char *page = status_html(j, &len);
    assert_null(strstr(page, "Cluster"));
    free(page);
    json_error_t err;
    json_t *c = json_loads("{\"instance\":\"ingest-<a>\",\"lease_ms\":15000,\"renew_ms\":5000,"
                           "\"db_error\":null,\"leases\":[{\"name\":\"job:prices\","
                           "\"holder\":\"ingest-b\",\"last_holder\":\"ingest-b\",\"token\":7,"
                           "\"expires_in_ms\":4200,\"mine\":false},{\"name\":\"job:assets\","
                           "\"holder\":null,\"last_holder\":\"ingest-a\",\"token\":3,"
                           "\"expires_in_ms\":-100,\"mine\":false}]}",
                           0, &err);
    assert_non_null(c);
    json_object_set_new(j, "cluster", c);
    page = status_html(j, &len);
    assert_non_null(page);
    assert_non_null(strstr(page, "data-k=\"cluster.instance\">ingest-&lt;a&gt;<"));
    assert_non_null(strstr(page, "data-k=\"cluster.leases.0.holder\">ingest-b<"));
    assert_non_null(strstr(page, "data-k=\"cluster.leases.0.token\">7<"));
    assert_non_null(strstr(page, "data-k=\"cluster.leases.0.mine\">no<"));
    assert_non_null(strstr(page, "data-k=\"cluster.leases.1.holder\" data-v=\"n/a\">(expired)<"));
    free(page);
    json_decref(j);
}

static void test_month_start(void **state)
{
    (void)state;
    char buf[32];
    status_month_start(1739123047123ull, buf, sizeof(buf)); /* 2025-02-09T17:44:07Z */
    assert_string_equal(buf, "2025-02-01 00:00:00");
    status_month_start(1735689599999ull, buf, sizeof(buf)); /* 2024-12-31T23:59:59.999Z */
    assert_string_equal(buf, "2024-12-01 00:00:00");
    status_month_start(1735689600000ull, buf, sizeof(buf)); /* 2025-01-01T00:00:00Z */
    assert_string_equal(buf, "2025-01-01 00:00:00");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_html),
        cmocka_unit_test(test_html_cluster),
        cmocka_unit_test(test_month_start),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
