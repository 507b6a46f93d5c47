/*
 * ctest-labels: tsan
 * test_server: the /metrics and /healthz endpoint on a real libuv loop with real TCP clients.
 *
 * Most tests drive raw uv_tcp clients on the same loop as the server: each client connects,
 * writes a request (possibly incomplete or oversized on purpose), reads until the server closes
 * and records the bytes. A round runs the loop until every client of the round is done; a
 * guard timer fails the test instead of hanging if one never finishes. One test uses libcurl
 * from a second thread, to check the answers against a real HTTP client. Every test ends by
 * closing the server and checking uv_loop_close() == 0, so a leaked handle fails it.
 *
 * The registry's rendering is checked on a sample of series of each kind (types, summaries'
 * _sum/_count, counters shown at 0), and `promtool check metrics` runs on what /metrics serves
 * (skipped, saying so, without promtool). Which metrics the daemon exports is checked against
 * docs/operations.md by tests/integration/test_metrics_docs.py, on a real daemon's /metrics.
 * Tests that need something the machine may lack (promtool, an IPv6 loopback) call skip().
 */
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <curl/curl.h>
#include <uv.h>

#include "coingest/metrics.h"
#include "coingest/server.h"

#define GUARD_MS       20000
#define CURL_TIMEOUT_S 20

/* ---- a raw HTTP client on the loop ---- */

struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    const char *req;
    size_t reqlen;
    char *resp;
    size_t len, cap;
    int read_err; /* the error that ended reading: UV_EOF normally */
    bool done;
    struct round *round;
};

struct round {
    uv_loop_t *loop;
    int remaining;
};

static void client_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    c->done = true;
    if (--c->round->remaining == 0)
        uv_stop(c->round->loop);
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct client *c = h->data;
    if (c->cap - c->len < suggested) {
        c->cap = c->len + suggested;
        c->resp = realloc(c->resp, c->cap + 1);
        assert_non_null(c->resp);
    }
    *buf = uv_buf_init(c->resp + c->len, (unsigned)(c->cap - c->len));
}

static void client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct client *c = s->data;
    if (nread < 0) {
        c->read_err = (int)nread;
        uv_close((uv_handle_t *)&c->tcp, client_closed);
        return;
    }
    c->len += (size_t)nread;
    c->resp[c->len] = '\0';
}

static void client_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status; /* the server may close before taking everything (oversized request) */
}

static void client_connected(uv_connect_t *req, int status)
{
    struct client *c = req->data;
    assert_int_equal(status, 0);
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read), 0);
    if (c->reqlen) {
        uv_buf_t b = uv_buf_init((char *)c->req, (unsigned)c->reqlen);
        assert_int_equal(uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, client_written), 0);
    }
}

static void client_start(struct round *r, struct client *c, int port, const char *req)
{
    memset(c, 0, sizeof(*c));
    c->round = r;
    c->req = req;
    c->reqlen = strlen(req);
    c->resp = malloc(1);
    assert_non_null(c->resp);
    c->resp[0] = '\0';
    assert_int_equal(uv_tcp_init(r->loop, &c->tcp), 0);
    c->tcp.data = c;
    c->creq.data = c;
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sa), 0);
    assert_int_equal(uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa, client_connected),
                     0);
    r->remaining++;
}

static void client_free(struct client *c)
{
    free(c->resp);
    c->resp = NULL;
}

static void on_expired(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs the loop until nothing keeps it alive; fails, naming `what`, after limit_ms. The
 * guard timer is unreferenced: it keeps nothing alive but wakes a blocked uv_run. */
static void run_dry(uv_loop_t *loop, uint64_t limit_ms, const char *what)
{
    uv_timer_t guard;
    bool expired = false;
    assert_int_equal(uv_timer_init(loop, &guard), 0);
    guard.data = &expired;
    assert_int_equal(uv_timer_start(&guard, on_expired, limit_ms, 0), 0);
    uv_unref((uv_handle_t *)&guard);
    while (!expired && uv_run(loop, UV_RUN_ONCE) != 0)
        ;
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (expired)
        fail_msg("%s: the loop still had work after %llu ms", what, (unsigned long long)limit_ms);
}

static void guard_fired(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

/* Runs the loop until every client started on r is done; fails after GUARD_MS. */
static void round_run(struct round *r)
{
    uv_timer_t guard;
    bool expired = false;
    assert_int_equal(uv_timer_init(r->loop, &guard), 0);
    guard.data = &expired;
    assert_int_equal(uv_timer_start(&guard, guard_fired, GUARD_MS, 0), 0);
    while (r->remaining > 0 && !expired)
        uv_run(r->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&guard, NULL);
    uv_run(r->loop, UV_RUN_NOWAIT);
    if (r->remaining > 0)
        fail_msg("a round did not finish within %d ms: %d client(s) still open", GUARD_MS,
                 r->remaining);
}

/* The status code of a response, or -1 when it has none. */
static int resp_status(const struct client *c)
{
    int status;
    if (c->len < 12 || sscanf(c->resp, "HTTP/1.1 %d ", &status) != 1)
        return -1;
    return status;
}

/* A header's value (copied into out), or NULL. */
static const char *resp_header(const struct client *c, const char *name, char *out, size_t cap)
{
    const char *end = strstr(c->resp, "\r\n\r\n");
    size_t nlen = strlen(name);
    if (!end)
        return NULL;
    for (const char *p = strstr(c->resp, "\r\n"); p && p < end; p = strstr(p + 2, "\r\n")) {
        const char *h = p + 2;
        if (strncasecmp(h, name, nlen) == 0 && h[nlen] == ':') {
            const char *v = h + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = (size_t)(strstr(v, "\r\n") - v);
            if (vlen >= cap)
                vlen = cap - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return out;
        }
    }
    return NULL;
}

static const char *resp_body(const struct client *c)
{
    const char *end = strstr(c->resp, "\r\n\r\n");
    assert_non_null(end);
    return end + 4;
}

/* Checks Content-Length against the body actually received. */
static void assert_length_matches(const struct client *c)
{
    char v[32];
    assert_non_null(resp_header(c, "Content-Length", v, sizeof(v)));
    assert_int_equal(strtoul(v, NULL, 10), strlen(resp_body(c)));
    assert_non_null(resp_header(c, "Connection", v, sizeof(v)));
    assert_string_equal(v, "close");
}

/* ---- fixture: a loop and a server on 127.0.0.1:<free port> ---- */

struct health {
    int status;
    const char *json;
    int calls;
};

static int health_cb(void *arg, char *json, size_t cap)
{
    struct health *h = arg;
    h->calls++;
    snprintf(json, cap, "%s", h->json);
    return h->status;
}

struct fx {
    uv_loop_t loop;
    struct server *srv;
    int port;
    struct health health;
    struct round round;
    bool closed;
};

static void on_server_closed(void *arg)
{
    ((struct fx *)arg)->closed = true;
}

static void fx_open(struct fx *f, server_health_cb cb)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    char err[256] = "";
    f->health.status = 200;
    f->health.json = "{\"status\":\"ok\"}";
    f->srv = server_new(&f->loop, "127.0.0.1:0", cb, &f->health, err, sizeof(err));
    if (!f->srv)
        fail_msg("server_new: %s", err);
    f->port = server_port(f->srv);
    assert_true(f->port > 0);
    f->round.loop = &f->loop;
}

/* Closes the server, runs the loop dry and checks nothing leaked. */
static void fx_close(struct fx *f)
{
    server_close(f->srv, on_server_closed, f);
    run_dry(&f->loop, GUARD_MS, "closing the server");
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* One request in its own round. */
static void fx_get(struct fx *f, struct client *c, const char *req)
{
    client_start(&f->round, c, f->port, req);
    round_run(&f->round);
    assert_true(c->done);
}

/* ---- tests ---- */

static void test_metrics(void **state)
{
    (void)state;
    metrics_reset();
    metrics_add("coingest_http_requests_total", "api=\"coingecko\",status=\"200\"", 3);
    metrics_set("coingest_db_up", "", 1);
    struct fx f;
    fx_open(&f, health_cb);
    struct client c;
    fx_get(&f, &c, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_int_equal(c.read_err, UV_EOF);
    assert_int_equal(resp_status(&c), 200);
    char v[128];
    assert_non_null(resp_header(&c, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "text/plain; version=0.0.4; charset=utf-8");
    assert_length_matches(&c);
    size_t len;
    char *expect = metrics_render(&len);
    assert_non_null(expect);
    assert_string_equal(resp_body(&c), expect);
    assert_non_null(
        strstr(expect, "coingest_http_requests_total{api=\"coingecko\",status=\"200\"} 3"));
    free(expect);
    client_free(&c);

    /* A query string is ignored; HTTP/1.0 and bare-LF clients are served. */
    fx_get(&f, &c, "GET /metrics?name[]=x HTTP/1.0\n\n");
    assert_int_equal(resp_status(&c), 200);
    client_free(&c);

    /* HEAD: the same headers, no body. */
    fx_get(&f, &c, "HEAD /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    assert_non_null(resp_header(&c, "Content-Length", v, sizeof(v)));
    assert_true(strtoul(v, NULL, 10) > 0);
    assert_string_equal(resp_body(&c), "");
    client_free(&c);

    assert_int_equal(f.health.calls, 0);
    fx_close(&f);
    metrics_reset();
}

static void test_healthz(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    struct client c;
    char v[128];

    fx_get(&f, &c, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    assert_non_null(resp_header(&c, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "application/json");
    assert_string_equal(resp_body(&c), "{\"status\":\"ok\"}\n");
    assert_length_matches(&c);
    client_free(&c);

    f.health.status = 503;
    f.health.json = "{\"status\":\"unhealthy\",\"reason\":\"database unreachable for 95s\"}";
    fx_get(&f, &c, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 503);
    assert_string_equal(resp_body(&c),
                        "{\"status\":\"unhealthy\",\"reason\":\"database unreachable for 95s\"}\n");
    assert_length_matches(&c);
    client_free(&c);

    /* No body from the callback: a default one; a nonsense status: 500. */
    f.health.json = "";
    fx_get(&f, &c, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 503);
    assert_string_equal(resp_body(&c), "{\"status\":\"unhealthy\"}\n");
    client_free(&c);
    f.health.status = 42;
    fx_get(&f, &c, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 500);
    client_free(&c);

    assert_int_equal(f.health.calls, 4);
    fx_close(&f);

    /* Without a callback /healthz is always 200. */
    fx_open(&f, NULL);
    fx_get(&f, &c, "GET /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    assert_string_equal(resp_body(&c), "{\"status\":\"ok\"}\n");
    client_free(&c);
    fx_close(&f);
}

static int route_cb(void *arg, const char **ctype, char **body, size_t *len)
{
    int *calls = arg;
    (*calls)++;
    *ctype = "text/html; charset=utf-8";
    *body = strdup("<p>hello</p>");
    *len = strlen(*body);
    return 200;
}

static int route_nobody_cb(void *arg, const char **ctype, char **body, size_t *len)
{
    (void)arg;
    (void)ctype;
    (void)body;
    (void)len;
    return 200;
}

/* Routes added with server_route answer GET and HEAD of their exact path (a query string
 * ignored); the built-in paths cannot be taken; a handler without a body is a 500. */
static void test_routes(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    int calls = 0;
    assert_int_equal(server_route(f.srv, "/", route_cb, &calls), 0);
    assert_int_equal(server_route(f.srv, "/", route_cb, &calls), -EEXIST);
    assert_int_equal(server_route(f.srv, "/metrics", route_cb, &calls), -EEXIST);
    assert_int_equal(server_route(f.srv, "/healthz", route_cb, &calls), -EEXIST);
    assert_int_equal(server_route(f.srv, "nope", route_cb, &calls), -EINVAL);
    assert_int_equal(server_route(f.srv, "/empty", route_nobody_cb, NULL), 0);
    char many[32];
    int rc = 0;
    for (int i = 0; rc == 0 && i < SERVER_MAX_ROUTES; i++) {
        snprintf(many, sizeof(many), "/r%d", i);
        rc = server_route(f.srv, many, route_cb, &calls);
    }
    assert_int_equal(rc, -ENOSPC);

    struct client c;
    char v[128];
    fx_get(&f, &c, "GET /?x=1 HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    assert_non_null(resp_header(&c, "Content-Type", v, sizeof(v)));
    assert_string_equal(v, "text/html; charset=utf-8");
    assert_string_equal(resp_body(&c), "<p>hello</p>");
    assert_length_matches(&c);
    client_free(&c);
    fx_get(&f, &c, "HEAD / HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    assert_string_equal(resp_body(&c), "");
    client_free(&c);
    fx_get(&f, &c, "GET /empty HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 500);
    client_free(&c);
    fx_get(&f, &c, "GET /index.html HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 404);
    client_free(&c);
    assert_int_equal(calls, 2);
    fx_close(&f);
}

static void test_errors(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    struct client c;
    char v[64];

    fx_get(&f, &c, "GET /nope HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 404);
    assert_length_matches(&c);
    client_free(&c);
    fx_get(&f, &c, "GET /metricsx HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 404);
    client_free(&c);

    fx_get(&f, &c, "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc");
    assert_int_equal(resp_status(&c), 405);
    assert_non_null(resp_header(&c, "Allow", v, sizeof(v)));
    assert_string_equal(v, "GET, HEAD");
    client_free(&c);
    fx_get(&f, &c, "DELETE /healthz HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 405);
    client_free(&c);

    static const char *const bad[] = {
        "garbage\r\n\r\n",
        "GET /metrics\r\n\r\n",
        "GET  /metrics HTTP/1.1\r\n\r\n",
        "GET /metrics SPDY/3\r\n\r\n",
        "GET /metrics HTTP/1.1 extra\r\n\r\n",
        "\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        fx_get(&f, &c, bad[i]);
        if (resp_status(&c) != 400)
            fail_msg("request %zu: expected 400, got: %s", i, c.resp);
        client_free(&c);
    }
    assert_int_equal(f.health.calls, 0);
    fx_close(&f);
}

static void test_request_size(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    struct client c;

    /* Just under the cap: served. */
    size_t n = SERVER_MAX_REQUEST;
    char *req = malloc(4 * n);
    assert_non_null(req);
    static const char head[] = "GET /healthz HTTP/1.1\r\nX-Pad: ";
    memcpy(req, head, sizeof(head) - 1);
    size_t pad = n - (sizeof(head) - 1) - 4;
    memset(req + sizeof(head) - 1, 'a', pad);
    memcpy(req + sizeof(head) - 1 + pad, "\r\n\r\n", 5);
    assert_int_equal(strlen(req), SERVER_MAX_REQUEST);
    fx_get(&f, &c, req);
    assert_int_equal(resp_status(&c), 200);
    client_free(&c);

    /* One byte more: 431, and the response survives the unread rest of the request. */
    memset(req + sizeof(head) - 1, 'a', 4 * n - 5 - (sizeof(head) - 1));
    memcpy(req + 4 * n - 5, "\r\n\r\n", 5);
    assert_int_equal(strlen(req), 4 * n - 1);
    fx_get(&f, &c, req);
    assert_int_equal(resp_status(&c), 431);
    assert_length_matches(&c);
    client_free(&c);
    free(req);
    assert_int_equal(f.health.calls, 1);
    fx_close(&f);
}

static void test_slow_client_cut_off(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    server_set_limits(f.srv, 50, 0);
    struct client slow, fast;
    /* Never finishes its request: the deadline closes it without an answer... */
    client_start(&f.round, &slow, f.port, "GET /healthz HTTP/1.1\r\nX-Slow: ");
    /* ...while a client in the same round is served. */
    client_start(&f.round, &fast, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    round_run(&f.round);
    assert_int_equal(slow.len, 0);
    assert_int_equal(slow.read_err, UV_EOF);
    assert_int_equal(resp_status(&fast), 200);
    client_free(&slow);
    client_free(&fast);

    /* A client that connects and sends nothing at all. */
    fx_get(&f, &slow, "");
    assert_int_equal(slow.len, 0);
    client_free(&slow);
    fx_close(&f);
}

static void test_many_clients(void **state)
{
    (void)state;
    enum { N = 48 };
    struct fx f;
    fx_open(&f, health_cb);
    struct client *c = calloc(N, sizeof(*c));
    assert_non_null(c);
    for (int i = 0; i < N; i++)
        client_start(&f.round, &c[i], f.port,
                     i % 2 ? "GET /healthz HTTP/1.1\r\n\r\n" : "GET /metrics HTTP/1.1\r\n\r\n");
    round_run(&f.round);
    for (int i = 0; i < N; i++) {
        assert_int_equal(resp_status(&c[i]), 200);
        assert_length_matches(&c[i]);
        client_free(&c[i]);
    }
    assert_int_equal(f.health.calls, N / 2);
    free(c);
    fx_close(&f);
}

static void test_client_limit(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    server_set_limits(f.srv, 200, 2);
    struct client hold[2], extra;
    /* Two clients hold both slots with requests they never finish... */
    client_start(&f.round, &hold[0], f.port, "GET /healthz");
    client_start(&f.round, &hold[1], f.port, "GET /healthz");
    /* ...and a third, complete request takes a slot from one of them and is answered
     * (test_server_slow.c checks which one is evicted). */
    client_start(&f.round, &extra, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    round_run(&f.round);
    assert_int_equal(resp_status(&extra), 200);
    assert_int_equal(hold[0].len, 0);
    assert_int_equal(hold[1].len, 0);
    assert_int_equal(f.health.calls, 1);
    client_free(&hold[0]);
    client_free(&hold[1]);
    client_free(&extra);
    fx_close(&f);
}

/* server_close() while clients are connected: everything is closed, nothing leaks. */
static struct server *closing_srv;

static void close_server_now(uv_timer_t *t)
{
    server_close(closing_srv, on_server_closed, t->data);
    uv_close((uv_handle_t *)t, NULL);
}

static void test_close_with_clients(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f, health_cb);
    struct client idle[3];
    for (int i = 0; i < 3; i++)
        client_start(&f.round, &idle[i], f.port, "GET /metr");
    /* Close the server once the clients are connected and waiting. */
    uv_timer_t t;
    assert_int_equal(uv_timer_init(&f.loop, &t), 0);
    t.data = &f;
    closing_srv = f.srv;
    assert_int_equal(uv_timer_start(&t, close_server_now, 20, 0), 0);
    round_run(&f.round);
    run_dry(&f.loop, GUARD_MS, "closing the server with clients connected");
    assert_true(f.closed);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(idle[i].len, 0);
        client_free(&idle[i]);
    }
    assert_int_equal(uv_loop_close(&f.loop), 0);

    /* server_close(NULL) calls back at once. */
    f.closed = false;
    server_close(NULL, on_server_closed, &f);
    assert_true(f.closed);
}

static void test_listen_addresses(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char err[256];
    static const char *const bad[] = {
        "",         "nonsense",        "127.0.0.1",     "::1:9464",      "[::1]9464",
        "[::1]:",   "127.0.0.1:99999", "127.0.0.1:abc", "999.1.1.1:80",  "127.0.0.1:-1",
        ":9464",    "[nothost]:80",    "a b:80",        "127.0.0.1:+80", "1.2.3:80",
        "host!:80",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        if (server_new(&loop, bad[i], NULL, NULL, err, sizeof(err)))
            fail_msg("accepted listen address '%s'", bad[i]);
        assert_non_null(strstr(err, "not a listen address"));
    }
    assert_null(server_new(&loop, NULL, NULL, NULL, err, sizeof(err)));

    /* The port is taken: a clear error, and the failed listener is released by the loop. */
    struct server *a = server_new(&loop, "localhost:0", NULL, NULL, err, sizeof(err));
    assert_non_null(a);
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", server_port(a));
    err[0] = '\0';
    assert_null(server_new(&loop, addr, NULL, NULL, err, sizeof(err)));
    assert_non_null(strstr(err, addr));
    assert_non_null(strstr(err, "address already in use"));
    server_close(a, NULL, NULL);
    run_dry(&loop, GUARD_MS, "closing the listeners");
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* Whether this machine can listen on the IPv6 loopback at all, asked of the kernel directly
 * so that a server_new bug cannot pass for a missing ::1. */
static bool have_ipv6_loopback(void)
{
    int fd = socket(AF_INET6, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in6 sa = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
    bool ok = bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static void test_listen_ipv6(void **state)
{
    (void)state;
    if (!have_ipv6_loopback()) {
        print_message("SKIP test_listen_ipv6: this machine has no IPv6 loopback (::1)\n");
        skip();
    }
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    char err[256] = "";
    struct server *b = server_new(&loop, "[::1]:0", NULL, NULL, err, sizeof(err));
    if (!b)
        fail_msg("server_new([::1]:0): %s", err);
    assert_true(server_port(b) > 0);
    server_close(b, NULL, NULL);
    run_dry(&loop, GUARD_MS, "closing the IPv6 listener");
    assert_int_equal(uv_loop_close(&loop), 0);
}

/* ---- libcurl from another thread ---- */

struct curl_job {
    int port;
    const char *path;
    uv_async_t *done;
    long code;
    char ctype[128];
    char *body;
    size_t len;
    CURLcode rc;
};

static atomic_int curl_finished;

static size_t curl_sink(char *p, size_t size, size_t n, void *arg)
{
    struct curl_job *j = arg;
    char *nb = realloc(j->body, j->len + size * n + 1);
    if (!nb)
        return 0;
    j->body = nb;
    memcpy(j->body + j->len, p, size * n);
    j->len += size * n;
    j->body[j->len] = '\0';
    return size * n;
}

static void *curl_thread(void *arg)
{
    struct curl_job *j = arg;
    char url[128];
    snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", j->port, j->path);
    CURL *h = curl_easy_init();
    if (h) {
        curl_easy_setopt(h, CURLOPT_URL, url);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, curl_sink);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, j);
        curl_easy_setopt(h, CURLOPT_TIMEOUT, (long)CURL_TIMEOUT_S);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        j->rc = curl_easy_perform(h);
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &j->code);
        char *ct = NULL;
        curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
        snprintf(j->ctype, sizeof(j->ctype), "%s", ct ? ct : "");
        curl_easy_cleanup(h);
    } else {
        j->rc = CURLE_FAILED_INIT;
    }
    atomic_fetch_add(&curl_finished, 1);
    uv_async_send(j->done);
    return NULL;
}

static struct server *curl_srv;

static void curl_done(uv_async_t *a)
{
    /* uv_async_send may coalesce wake-ups: count finished jobs instead. */
    if (atomic_load(&curl_finished) < 2)
        return;
    server_close(curl_srv, NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static void test_libcurl_client(void **state)
{
    (void)state;
    metrics_reset();
    metrics_set("coingest_spool_rows", "", 12);
    struct fx f;
    fx_open(&f, health_cb);
    f.health.status = 503;
    f.health.json = "{\"status\":\"unhealthy\",\"reason\":\"loop stalled\"}";
    uv_async_t done;
    struct curl_job jobs[2] = {
        {.port = f.port, .path = "/metrics", .done = &done},
        {.port = f.port, .path = "/healthz", .done = &done},
    };
    assert_int_equal(uv_async_init(&f.loop, &done, curl_done), 0);
    atomic_store(&curl_finished, 0);
    curl_srv = f.srv;
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, curl_thread, &jobs[i]), 0);
    /* Runs until curl_done has closed the server and the async handle; the clients give up
     * after CURL_TIMEOUT_S, so a server that never answers fails here, not in a hang. */
    run_dry(&f.loop, (CURL_TIMEOUT_S + 10) * 1000u, "the libcurl clients");
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_join(th[i], NULL), 0);
    assert_int_equal(uv_loop_close(&f.loop), 0);

    assert_int_equal(jobs[0].rc, CURLE_OK);
    assert_int_equal(jobs[0].code, 200);
    assert_string_equal(jobs[0].ctype, "text/plain; version=0.0.4; charset=utf-8");
    assert_non_null(jobs[0].body);
    assert_non_null(strstr(jobs[0].body, "\ncoingest_spool_rows 12\n"));
    assert_int_equal(jobs[1].rc, CURLE_OK);
    assert_int_equal(jobs[1].code, 503);
    assert_string_equal(jobs[1].body, "{\"status\":\"unhealthy\",\"reason\":\"loop stalled\"}\n");
    free(jobs[0].body);
    free(jobs[1].body);
    metrics_reset();
}

/* ---- what /metrics serves, checked by promtool ---- */

/* One series of each kind the registry renders: counters and summaries with and without
 * labels, gauges, several series of one family, and an undescribed name. Which metrics the
 * daemon exports, and that each is described, is tests/integration/test_metrics_docs.py's
 * business: it scrapes a real daemon. */
static void register_sample_series(void)
{
    metrics_add("coingest_http_requests_total", "api=\"coingecko\",status=\"200\"", 7);
    metrics_add("coingest_http_requests_total", "api=\"coingecko\",status=\"429\"", 1);
    metrics_add("coingest_reloads_total", "", 2);
    metrics_set("coingest_db_up", "", 1);
    metrics_set("coingest_job_last_success_timestamp_seconds", "job=\"assets\"", 1761000000);
    metrics_observe("coingest_write_seconds", "", 0.25);
    metrics_observe("coingest_job_duration_seconds", "job=\"prices\"", 0.125);
    metrics_add("coingest_not_described_total", "", 1);
}

/* The TYPE a body declares for a family, or NULL. */
static const char *declared_type(const char *body, const char *name, char *out, size_t cap)
{
    char want[256];
    snprintf(want, sizeof(want), "# TYPE %s ", name);
    const char *t = strstr(body, want);
    if (!t)
        return NULL;
    t += strlen(want);
    size_t n = strcspn(t, "\n");
    snprintf(out, cap, "%.*s", (int)(n < cap ? n : cap - 1), t);
    return out;
}

static void test_metrics_types(void **state)
{
    (void)state;
    metrics_reset();
    register_sample_series();
    char *body = metrics_render(NULL);
    assert_non_null(body);
    static const struct {
        const char *name, *type;
    } want[] = {
        {"coingest_http_requests_total", "counter"},
        {"coingest_reloads_total", "counter"},
        {"coingest_db_up", "gauge"},
        {"coingest_job_last_success_timestamp_seconds", "gauge"},
        {"coingest_write_seconds", "summary"},
        {"coingest_job_duration_seconds", "summary"},
        {"coingest_not_described_total", "untyped"},
    };
    char type[32];
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        if (!declared_type(body, want[i].name, type, sizeof(type)))
            fail_msg("no TYPE line for %s in:\n%s", want[i].name, body);
        if (strcmp(type, want[i].type) != 0)
            fail_msg("%s is typed %s, want %s", want[i].name, type, want[i].type);
    }
    assert_non_null(strstr(body, "\ncoingest_write_seconds_sum 0.25\n"));
    assert_non_null(strstr(body, "\ncoingest_write_seconds_count 1\n"));
    assert_non_null(strstr(body, "\ncoingest_job_duration_seconds_count{job=\"prices\"} 1\n"));
    /* Counters without labels are shown at 0 before their first event. */
    assert_non_null(strstr(body, "\ncoingest_reload_failures_total 0\n"));
    free(body);
    metrics_reset();
}

static void test_promtool_accepts_metrics(void **state)
{
    (void)state;
    if (system("command -v promtool >/dev/null 2>&1") != 0) {
        print_message("SKIP test_promtool_accepts_metrics: promtool (Debian package "
                      "prometheus) is not installed\n");
        skip();
    }
    metrics_reset();
    register_sample_series();
    struct fx f;
    fx_open(&f, health_cb);
    struct client c;
    fx_get(&f, &c, "GET /metrics HTTP/1.1\r\n\r\n");
    assert_int_equal(resp_status(&c), 200);
    const char *body = resp_body(&c);

    char tmp[] = "/tmp/test_server_metrics.XXXXXX";
    int fd = mkstemp(tmp);
    assert_true(fd >= 0);
    size_t blen = strlen(body);
    assert_int_equal(write(fd, body, blen), (ssize_t)blen);
    close(fd);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "timeout 60 promtool check metrics < %s 2>&1", tmp);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    char out[4096];
    size_t olen = fread(out, 1, sizeof(out) - 1, p);
    out[olen] = '\0';
    int rc = pclose(p);
    unlink(tmp);
    if (rc != 0)
        fail_msg("promtool check metrics failed (%d):\n%s\n--- served:\n%s", rc, out, body);
    client_free(&c);
    fx_close(&f);
    metrics_reset();
}

int main(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_metrics),
        cmocka_unit_test(test_healthz),
        cmocka_unit_test(test_routes),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_request_size),
        cmocka_unit_test(test_slow_client_cut_off),
        cmocka_unit_test(test_many_clients),
        cmocka_unit_test(test_client_limit),
        cmocka_unit_test(test_close_with_clients),
        cmocka_unit_test(test_listen_addresses),
        cmocka_unit_test(test_listen_ipv6),
        cmocka_unit_test(test_libcurl_client),
        cmocka_unit_test(test_metrics_types),
        cmocka_unit_test(test_promtool_accepts_metrics),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    curl_global_cleanup();
    return rc;
}
