/*
 * ctest-labels: tsan
 * test_server_slow: the metrics/health server against slow and hostile clients (issue 12,
 * item 8): a full connection table must not keep a health probe out, and a request head that
 * trickles in must be cut off by the head deadline however steadily it keeps coming.
 *
 * Everything runs on one libuv loop with real TCP clients on 127.0.0.1, as in test_server.c.
 * The load is bounded: a fixed number of clients, a fixed run time, and a guard timer that
 * fails the test instead of hanging. The tests check that answers arrive; the one time bound
 * (a probe answered within PROBE_BOUND_MS) is generous for a loopback round trip and is the
 * promise /healthz makes to an orchestrator, not a benchmark.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/server.h"

#define GUARD_MS       30000
#define PROBE_BOUND_MS 1000

static int health_ok(void *arg, char *json, size_t cap)
{
    (void)arg;
    snprintf(json, cap, "{\"status\":\"ok\"}");
    return 200;
}

/* ---- a client on the loop: connects, writes, reads until the server closes ---- */

struct client {
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    const char *req;
    size_t reqlen;
    char resp[4096];
    size_t len;
    bool connected, done;
    bool hold;        /* on EOF, keep the socket open until client_release() */
    bool eof;         /* the server closed its side */
    uint64_t t_start; /* uv_now() at client_start */
    uint64_t t_done;  /* uv_now() when the server's close was seen */
    int seq;          /* order in which clients saw the server's close (1, 2, ...) */
    int *seq_next;
    void (*on_done)(struct client *c);
    void *owner;
};

static void client_closed(uv_handle_t *h)
{
    struct client *c = h->data;
    c->done = true;
    if (c->on_done)
        c->on_done(c);
}

static void client_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct client *c = h->data;
    /* Keep the first bytes (the status line); later ones overwrite the tail. */
    size_t off = c->len < sizeof(c->resp) - 1 ? c->len : sizeof(c->resp) - 256;
    *buf = uv_buf_init(c->resp + off, (unsigned)(sizeof(c->resp) - 1 - off));
}

static void client_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct client *c = s->data;
    if (nread < 0) {
        c->eof = true;
        c->t_done = uv_now(s->loop);
        if (c->seq_next)
            c->seq = ++*c->seq_next;
        uv_read_stop(s);
        if (!c->hold)
            uv_close((uv_handle_t *)&c->tcp, client_closed);
        return;
    }
    size_t off = (size_t)(buf->base - c->resp);
    c->len = off + (size_t)nread;
    c->resp[c->len] = '\0';
}

static void client_written(uv_write_t *w, int status)
{
    (void)w;
    (void)status; /* the server may have closed first */
}

static void client_connected(uv_connect_t *req, int status)
{
    struct client *c = req->data;
    if (status < 0) {
        c->eof = true;
        uv_close((uv_handle_t *)&c->tcp, client_closed);
        return;
    }
    c->connected = true;
    assert_int_equal(uv_read_start((uv_stream_t *)&c->tcp, client_alloc, client_read), 0);
    if (c->reqlen) {
        uv_buf_t b = uv_buf_init((char *)c->req, (unsigned)c->reqlen);
        assert_int_equal(uv_write(&c->wreq, (uv_stream_t *)&c->tcp, &b, 1, client_written), 0);
    }
}

static void client_start(uv_loop_t *loop, struct client *c, int port, const char *req)
{
    void (*on_done)(struct client *) = c->on_done;
    void *owner = c->owner;
    int *seq_next = c->seq_next;
    bool hold = c->hold;
    memset(c, 0, sizeof(*c));
    c->on_done = on_done;
    c->owner = owner;
    c->seq_next = seq_next;
    c->hold = hold;
    c->req = req;
    c->reqlen = strlen(req);
    c->t_start = uv_now(loop);
    assert_int_equal(uv_tcp_init(loop, &c->tcp), 0);
    c->tcp.data = c;
    c->creq.data = c;
    struct sockaddr_in sa;
    assert_int_equal(uv_ip4_addr("127.0.0.1", port, &sa), 0);
    assert_int_equal(uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&sa, client_connected),
                     0);
}

/* Closes a client that is still open (a held one after EOF, or one still talking). */
static void client_release(struct client *c)
{
    if (!uv_is_closing((uv_handle_t *)&c->tcp))
        uv_close((uv_handle_t *)&c->tcp, client_closed);
}

static int client_status(const struct client *c)
{
    int status;
    if (c->len < 12 || sscanf(c->resp, "HTTP/1.1 %d ", &status) != 1)
        return -1;
    return status;
}

/* ---- fixture ---- */

struct fx {
    uv_loop_t loop;
    struct server *srv;
    int port;
    uv_timer_t guard;
    bool closed;
};

static void guard_fired(uv_timer_t *t)
{
    (void)t;
    fail_msg("the test did not finish within %d ms", GUARD_MS);
}

static void fx_open(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    assert_int_equal(uv_loop_init(&f->loop), 0);
    char err[256] = "";
    f->srv = server_new(&f->loop, "127.0.0.1:0", health_ok, NULL, err, sizeof(err));
    if (!f->srv)
        fail_msg("server_new: %s", err);
    f->port = server_port(f->srv);
    assert_true(f->port > 0);
    assert_int_equal(uv_timer_init(&f->loop, &f->guard), 0);
    assert_int_equal(uv_timer_start(&f->guard, guard_fired, GUARD_MS, 0), 0);
    uv_unref((uv_handle_t *)&f->guard);
}

static void on_server_closed(void *arg)
{
    ((struct fx *)arg)->closed = true;
}

static void fx_close(struct fx *f)
{
    uv_close((uv_handle_t *)&f->guard, NULL);
    server_close(f->srv, on_server_closed, f);
    assert_int_equal(uv_run(&f->loop, UV_RUN_DEFAULT), 0);
    assert_true(f->closed);
    assert_int_equal(uv_loop_close(&f->loop), 0);
}

/* Runs the loop until *done (set by a callback) or the guard fires. */
static void fx_run_until(struct fx *f, const bool *done)
{
    uv_ref((uv_handle_t *)&f->guard);
    while (!*done)
        uv_run(&f->loop, UV_RUN_ONCE);
    uv_unref((uv_handle_t *)&f->guard);
}

/* ---- 70 clients trickling a byte every 100 ms while probes hit /healthz ---- */

enum {
    SLOW_CLIENTS = 70,    /* more than SERVER_DEFAULT_MAX_CLIENTS */
    TRICKLE_MS = 100,     /* one byte per slow client per tick */
    ATTACK_MS = 4500,     /* longer than the head deadline, shorter than the old 10s */
    PROBE_EVERY_MS = 250, /* a probe every so often while the attack runs */
    PROBE_START_MS = 500, /* the slow clients have filled the table by then */
    PROBES = (ATTACK_MS - PROBE_START_MS) / PROBE_EVERY_MS,
};

struct siege {
    struct fx *f;
    struct client slow[SLOW_CLIENTS];
    struct client probe[PROBES];
    uv_timer_t tick;
    uint64_t t0;
    int probes_started, probes_done;
    int reconnects;
    bool attacking, slow_all_done, finished;
};

static const char slow_head[] = "GET /healthz HTTP/1.1\r\nX-Slow: ";

static void slow_done(struct client *c)
{
    struct siege *s = c->owner;
    /* An attacker comes back at once. (It is started again at the next tick, so a refused
     * client does not spin the loop.) */
    if (!s->attacking) {
        bool all = true;
        for (int i = 0; i < SLOW_CLIENTS; i++)
            all = all && s->slow[i].done;
        s->slow_all_done = all;
        s->finished = s->slow_all_done && s->probes_done == s->probes_started;
    }
}

static void probe_done(struct client *c)
{
    struct siege *s = c->owner;
    s->probes_done++;
    s->finished = !s->attacking && s->slow_all_done && s->probes_done == s->probes_started;
}

static void siege_tick(uv_timer_t *t)
{
    struct siege *s = t->data;
    uint64_t now = uv_now(t->loop);
    if (now - s->t0 >= ATTACK_MS) {
        /* Stop: close every slow client; the probes finish on their own. */
        s->attacking = false;
        uv_timer_stop(t);
        for (int i = 0; i < SLOW_CLIENTS; i++)
            if (!s->slow[i].done)
                client_release(&s->slow[i]);
        slow_done(&s->slow[0]);
        return;
    }
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        struct client *c = &s->slow[i];
        if (c->done) {
            s->reconnects++;
            client_start(t->loop, c, s->f->port, slow_head);
        } else if (c->connected && !c->eof) {
            uv_buf_t b = uv_buf_init("a", 1);
            (void)uv_try_write((uv_stream_t *)&c->tcp, &b, 1); /* EAGAIN: skip a byte */
        }
    }
    /* Probes start after the slow clients have filled the table. */
    if (s->probes_started < PROBES &&
        now - s->t0 >= PROBE_START_MS + (uint64_t)s->probes_started * PROBE_EVERY_MS) {
        struct client *p = &s->probe[s->probes_started++];
        client_start(t->loop, p, s->f->port, "GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n");
    }
}

static void test_probes_answered_under_slow_clients(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    struct siege *s = calloc(1, sizeof(*s));
    assert_non_null(s);
    s->f = &f;
    s->attacking = true;
    s->t0 = uv_now(&f.loop);
    for (int i = 0; i < SLOW_CLIENTS; i++) {
        s->slow[i].owner = s;
        s->slow[i].on_done = slow_done;
        client_start(&f.loop, &s->slow[i], f.port, slow_head);
    }
    for (int i = 0; i < PROBES; i++) {
        s->probe[i].owner = s;
        s->probe[i].on_done = probe_done;
    }
    assert_int_equal(uv_timer_init(&f.loop, &s->tick), 0);
    s->tick.data = s;
    assert_int_equal(uv_timer_start(&s->tick, siege_tick, TRICKLE_MS, TRICKLE_MS), 0);
    fx_run_until(&f, &s->finished);
    uv_close((uv_handle_t *)&s->tick, NULL);

    print_message("%d probes, %d slow-client reconnects\n", s->probes_started, s->reconnects);
    assert_int_equal(s->probes_started, PROBES);
    int answered = 0;
    for (int i = 0; i < PROBES; i++) {
        const struct client *p = &s->probe[i];
        int st = client_status(p);
        uint64_t took = p->t_done - p->t_start;
        if (st == 200 && took <= PROBE_BOUND_MS)
            answered++;
        else
            print_message("probe %d: status %d after %llu ms (%zu bytes)\n", i, st,
                          (unsigned long long)took, p->len);
    }
    assert_int_equal(answered, PROBES);
    /* No slow client ever got an answer: they were cut off or evicted, not served. */
    for (int i = 0; i < SLOW_CLIENTS; i++)
        assert_int_equal(s->slow[i].len, 0);
    /* The attack went on long enough for the head deadline or eviction to close some. */
    assert_true(s->reconnects > 0);
    fx_close(&f);
    free(s);
}

/* ---- the head deadline holds against a client that never stops sending ---- */

struct trickle {
    struct client c;
    uv_timer_t tick;
    const char *req;
    size_t sent, total;
    bool finished;
};

static void trickle_done(struct client *c)
{
    struct trickle *t = c->owner;
    uv_timer_stop(&t->tick);
    t->finished = true;
}

static void trickle_tick(uv_timer_t *timer)
{
    struct trickle *t = timer->data;
    if (!t->c.connected || t->c.eof || t->sent == t->total)
        return;
    uv_buf_t b = uv_buf_init((char *)t->req + t->sent, 1);
    if (uv_try_write((uv_stream_t *)&t->c.tcp, &b, 1) == 1)
        t->sent++;
}

static void test_head_deadline(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    server_set_head_timeout(f.srv, 400);
    struct trickle *t = calloc(1, sizeof(*t));
    assert_non_null(t);
    /* A complete, valid request, one byte every 20 ms: it would take about 1.6 s. */
    t->req = "GET /healthz HTTP/1.1\r\nHost: trickle\r\nX-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    t->total = strlen(t->req);
    t->c.owner = t;
    t->c.on_done = trickle_done;
    client_start(&f.loop, &t->c, f.port, "");
    assert_int_equal(uv_timer_init(&f.loop, &t->tick), 0);
    t->tick.data = t;
    assert_int_equal(uv_timer_start(&t->tick, trickle_tick, 20, 20), 0);
    fx_run_until(&f, &t->finished);
    uv_close((uv_handle_t *)&t->tick, NULL);
    /* Closed unanswered, long before the request could have been completed. */
    assert_int_equal(t->c.len, 0);
    assert_true(t->sent < t->total);
    print_message("cut off after %zu of %zu bytes, %llu ms\n", t->sent, t->total,
                  (unsigned long long)(t->c.t_done - t->c.t_start));

    /* A head that arrives in time is served, even in two pieces. */
    struct client ok = {.owner = t, .on_done = trickle_done};
    t->finished = false;
    client_start(&f.loop, &ok, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    fx_run_until(&f, &t->finished);
    assert_int_equal(client_status(&ok), 200);
    fx_close(&f);
    free(t);
}

/* ---- which connection is evicted when the table is full ---- */

struct evict {
    int seq_next;
    int done;
    int want;
    bool finished;
};

static void evict_done(struct client *c)
{
    struct evict *e = c->owner;
    e->finished = ++e->done == e->want;
}

static void settle_fired(uv_timer_t *t)
{
    *(bool *)t->data = true;
}

/* Runs the loop for about ms, so that what was sent has been accepted and read. */
static void settle(uv_loop_t *loop, unsigned ms)
{
    uv_timer_t t;
    bool fired = false;
    assert_int_equal(uv_timer_init(loop, &t), 0);
    t.data = &fired;
    assert_int_equal(uv_timer_start(&t, settle_fired, ms, 0), 0);
    while (!fired)
        uv_run(loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT); /* t lives on this stack: let its close finish */
}

static void test_evicts_oldest_reader(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    server_set_limits(f.srv, 0, 2);
    struct evict e = {.want = 3};
    struct client a = {.owner = &e, .on_done = evict_done, .seq_next = &e.seq_next};
    struct client b = a, c = a;
    /* Two incomplete requests fill the table, a older than b... */
    client_start(&f.loop, &a, f.port, "GET /healthz HTTP/1.1\r\n");
    settle(&f.loop, 50);
    client_start(&f.loop, &b, f.port, "GET /healthz HTTP/1.1\r\n");
    settle(&f.loop, 50);
    /* ...so a probe pushes out a, is answered, and b lasts until its head deadline. */
    client_start(&f.loop, &c, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    fx_run_until(&f, &e.finished);
    assert_int_equal(client_status(&c), 200);
    assert_int_equal(a.len, 0);
    assert_int_equal(b.len, 0);
    assert_true(a.seq < b.seq);
    assert_true(c.seq < b.seq);
    fx_close(&f);
}

static void test_evicts_lingering(void **state)
{
    (void)state;
    struct fx f;
    fx_open(&f);
    server_set_limits(f.srv, 0, 1);
    struct evict e = {.want = 1};
    /* x is answered but does not close its side: the server lingers on it. */
    struct client x = {.owner = &e, .on_done = evict_done, .hold = true};
    client_start(&f.loop, &x, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    while (!x.eof)
        uv_run(&f.loop, UV_RUN_ONCE);
    assert_int_equal(client_status(&x), 200);
    /* The only slot is lingering: a new probe takes it and is answered. */
    struct client y = {.owner = &e, .on_done = evict_done};
    client_start(&f.loop, &y, f.port, "GET /healthz HTTP/1.1\r\n\r\n");
    fx_run_until(&f, &e.finished);
    assert_int_equal(client_status(&y), 200);
    e.finished = false;
    e.want = 2;
    client_release(&x);
    fx_run_until(&f, &e.finished);
    fx_close(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_probes_answered_under_slow_clients),
        cmocka_unit_test(test_head_deadline),
        cmocka_unit_test(test_evicts_oldest_reader),
        cmocka_unit_test(test_evicts_lingering),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
