/*
 * Unit tests for the token bucket, in simulated time.
 *
 * The central test drives a bucket with random arrivals in two priority classes and random
 * server pauses, the way the fetch engine does (try_take, else enqueue; one timer armed for
 * the time dispatch() returns), records every grant, and checks: no window of one period
 * ever holds more than burst + count - 1 grants (exactly `count` for the default burst 1),
 * nothing is granted during a pause, the bucket keeps up with the rate when saturated, and
 * waiters are served live before backfill and FIFO within a class.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/tbucket.h"
#include "coingest/util.h"

struct req {
    struct tbucket_waiter w;
    uint64_t id;
    int prio;
    uint64_t arrived, granted;
    bool done;
};

struct grants {
    uint64_t *t;
    struct req **who;
    size_t n, cap;
    uint64_t now;
};

static void record(struct grants *g, struct req *r)
{
    if (g->n == g->cap) {
        g->cap = g->cap ? g->cap * 2 : 1024;
        g->t = realloc(g->t, g->cap * sizeof(*g->t));
        g->who = realloc(g->who, g->cap * sizeof(*g->who));
        assert_non_null(g->t);
        assert_non_null(g->who);
    }
    g->t[g->n] = g->now;
    g->who[g->n] = r;
    g->n++;
    r->granted = g->now;
    r->done = true;
}

static struct grants *g_grants;

static void grant_cb(struct tbucket_waiter *w, void *arg)
{
    struct req *r = arg;
    assert_ptr_equal(&r->w, w);
    assert_false(w->queued);
    record(g_grants, r);
}

/* Largest number of grants in any half-open window [t, t + period). */
static size_t max_in_window(const uint64_t *t, size_t n, uint64_t period)
{
    size_t best = 0, lo = 0;
    for (size_t hi = 0; hi < n; hi++) {
        while (t[hi] - t[lo] >= period)
            lo++;
        if (hi - lo + 1 > best)
            best = hi - lo + 1;
    }
    return best;
}

struct pause {
    uint64_t from, until;
};

static void simulate(struct rate rate, uint32_t burst, bool pauses, uint64_t seed)
{
    struct rng r;
    rng_seed(&r, seed);
    const size_t nreq = 20000;
    struct req *reqs = calloc(nreq, sizeof(*reqs));
    struct pause *ps = calloc(nreq, sizeof(*ps));
    size_t nps = 0;
    struct grants g = {0};
    g_grants = &g;
    assert_non_null(reqs);

    uint64_t now = 1000000;
    struct tbucket *b = tbucket_new(rate, burst, now);
    assert_non_null(b);
    uint64_t wake = UINT64_MAX; /* the one timer the caller keeps armed */
    /* Mean inter-arrival a little below the token interval: the bucket saturates at times
     * and idles (and refills to its burst) at others. */
    uint64_t mean = rate.period_ms / rate.count;
    uint64_t next_arrival = now;
    size_t arrived = 0;

    while (arrived < nreq || tbucket_queued(b) > 0) {
        uint64_t t = next_arrival < wake ? next_arrival : wake;
        assert_true(t != UINT64_MAX);
        assert_true(t >= now);
        now = t;
        g.now = now;
        if (arrived < nreq && next_arrival == now) {
            if (pauses && rng_below(&r, 200) == 0) {
                uint64_t until = now + rng_below(&r, 2 * rate.period_ms);
                uint64_t before = tbucket_paused_until(b);
                tbucket_pause_until(b, until);
                assert_true(tbucket_paused_until(b) == (until > before ? until : before));
                ps[nps++] = (struct pause){now, until};
            }
            struct req *q = &reqs[arrived];
            q->id = arrived++;
            q->prio = rng_below(&r, 4) == 0 ? TBUCKET_PRIO_BACKFILL : TBUCKET_PRIO_LIVE;
            q->arrived = now;
            /* The fetch engine's way: take if possible, else queue. */
            if (tbucket_try_take(b, now))
                record(&g, q);
            else
                tbucket_enqueue(b, &q->w, q->prio, grant_cb, q, now);
            uint64_t gap = rng_below(&r, 2 * mean * 9 / 10 + 1);
            if (rng_below(&r, 50) == 0)
                gap += rng_below(&r, 3 * rate.period_ms); /* quiet spells */
            next_arrival = arrived < nreq ? now + gap : UINT64_MAX;
        }
        wake = tbucket_dispatch(b, now);
        assert_true(wake > now || wake == UINT64_MAX);
    }

    assert_int_equal(g.n, nreq);
    /* Grant times never go back. */
    for (size_t i = 1; i < g.n; i++)
        assert_true(g.t[i] >= g.t[i - 1]);
    size_t most = max_in_window(g.t, g.n, rate.period_ms);
    assert_true(most <= burst + rate.count - 1);
    /* Saturated stretches do reach the bound (the check above is not vacuous). */
    assert_true(most >= rate.count);
    /* Nothing inside a pause. */
    for (size_t p = 0; p < nps; p++)
        for (size_t i = 0; i < g.n; i++)
            assert_false(g.t[i] >= ps[p].from && g.t[i] < ps[p].until);
    /* Within a class, FIFO: grant order follows arrival order. */
    uint64_t last_id[TBUCKET_PRIO_COUNT] = {0};
    bool seen[TBUCKET_PRIO_COUNT] = {0};
    for (size_t i = 0; i < g.n; i++) {
        struct req *q = g.who[i];
        if (seen[q->prio])
            assert_true(q->id > last_id[q->prio]);
        seen[q->prio] = true;
        last_id[q->prio] = q->id;
    }
    /* Across classes: no backfill request was granted while a live one that arrived before
     * it was still waiting. Live requests are served FIFO, so the last live arrival before
     * a grant is the one that would be waiting longest. */
    size_t live = SIZE_MAX; /* index of the last live request that arrived before g.t[i] */
    size_t scan = 0;
    for (size_t i = 0; i < g.n; i++) {
        while (scan < nreq && reqs[scan].arrived < g.t[i]) {
            if (reqs[scan].prio == TBUCKET_PRIO_LIVE)
                live = scan;
            scan++;
        }
        if (g.who[i]->prio == TBUCKET_PRIO_BACKFILL && live != SIZE_MAX &&
            reqs[live].granted > g.t[i])
            fail_msg("backfill %llu granted at %llu before live %llu (arrived %llu)",
                     (unsigned long long)g.who[i]->id, (unsigned long long)g.t[i],
                     (unsigned long long)reqs[live].id, (unsigned long long)reqs[live].arrived);
    }
    tbucket_free(b);
    free(reqs);
    free(ps);
    free(g.t);
    free(g.who);
}

static void test_window_bound_no_burst(void **state)
{
    (void)state;
    simulate((struct rate){30, 60000}, 1, false, 11);
    simulate((struct rate){7, 1000}, 1, false, 12);
}

static void test_window_bound_burst(void **state)
{
    (void)state;
    simulate((struct rate){30, 60000}, 10, false, 21);
    simulate((struct rate){3, 1000}, 5, false, 22);
}

static void test_window_bound_pauses(void **state)
{
    (void)state;
    simulate((struct rate){30, 60000}, 1, true, 31);
    simulate((struct rate){10, 1000}, 4, true, 32);
}

static void test_full_at_start_then_rate(void **state)
{
    (void)state;
    struct tbucket *b = tbucket_new((struct rate){10, 1000}, 3, 0);
    assert_non_null(b);
    assert_true(tbucket_tokens(b, 0) == 3.0);
    for (int i = 0; i < 3; i++)
        assert_true(tbucket_try_take(b, 0));
    assert_false(tbucket_try_take(b, 0));
    assert_true(tbucket_tokens(b, 50) == 0.5); /* fractions are kept */
    assert_false(tbucket_try_take(b, 99));
    assert_true(tbucket_try_take(b, 100));
    assert_false(tbucket_try_take(b, 100));
    /* Never more than the burst, however long it idles. */
    assert_true(tbucket_tokens(b, 10000000) == 3.0);
    tbucket_free(b);
    tbucket_free(NULL);
    assert_null(tbucket_new((struct rate){0, 1000}, 1, 0));
}

static void test_dispatch_time_exact(void **state)
{
    (void)state;
    struct grants g = {0};
    g_grants = &g;
    struct req q[3] = {0};
    /* 3 per second: a token every 333.33 ms. */
    struct tbucket *b = tbucket_new((struct rate){3, 1000}, 1, 0);
    assert_true(tbucket_try_take(b, 0));
    for (int i = 0; i < 3; i++)
        tbucket_enqueue(b, &q[i].w, TBUCKET_PRIO_LIVE, grant_cb, &q[i], 0);
    assert_int_equal(tbucket_queued(b), 3);
    /* try_take never overtakes a queued waiter, even with a token there. */
    assert_false(tbucket_try_take(b, 5000));
    tbucket_free(b);
    /* Waiters still queued in a freed bucket are the caller's to reset. */
    memset(q, 0, sizeof(q));

    b = tbucket_new((struct rate){3, 1000}, 1, 0);
    assert_true(tbucket_try_take(b, 0));
    for (int i = 0; i < 3; i++)
        tbucket_enqueue(b, &q[i].w, TBUCKET_PRIO_LIVE, grant_cb, &q[i], 0);
    g.now = 0;
    assert_true(tbucket_dispatch(b, 0) == 334);
    g.now = 333;
    assert_true(tbucket_dispatch(b, 333) == 334);
    assert_int_equal(g.n, 0);
    /* A bucket of one token is full at 333.33 ms: what accrues past that is not kept. */
    g.now = 334;
    assert_true(tbucket_dispatch(b, 334) == 668);
    assert_int_equal(g.n, 1);
    g.now = 668;
    assert_true(tbucket_dispatch(b, 668) == 1002);
    g.now = 1002;
    assert_true(tbucket_dispatch(b, 1002) == UINT64_MAX);
    assert_int_equal(g.n, 3);
    assert_int_equal(tbucket_queued(b), 0);
    tbucket_free(b);
    free(g.t);
    free(g.who);
}

static void test_priorities(void **state)
{
    (void)state;
    struct grants g = {0};
    g_grants = &g;
    struct req q[6] = {0};
    struct tbucket *b = tbucket_new((struct rate){1, 100}, 1, 0);
    assert_true(tbucket_try_take(b, 0));
    /* Backfill first, then live, interleaved: live are served first, FIFO in each class. */
    int prio[6] = {1, 1, 0, 1, 0, 0};
    for (int i = 0; i < 6; i++) {
        q[i].id = (uint64_t)i;
        tbucket_enqueue(b, &q[i].w, prio[i], grant_cb, &q[i], 0);
    }
    /* Out-of-range classes are clamped, not rejected. */
    struct req odd = {.id = 99};
    tbucket_enqueue(b, &odd.w, 7, grant_cb, &odd, 0);
    assert_int_equal(odd.w.prio, TBUCKET_PRIO_COUNT - 1);
    tbucket_cancel(b, &odd.w);
    tbucket_cancel(b, &odd.w);
    assert_int_equal(tbucket_queued(b), 6);

    uint64_t t = 0;
    while (tbucket_queued(b) > 0) {
        g.now = t;
        t = tbucket_dispatch(b, t);
    }
    uint64_t want[6] = {2, 4, 5, 0, 1, 3};
    assert_int_equal(g.n, 6);
    for (int i = 0; i < 6; i++) {
        assert_int_equal(g.who[i]->id, want[i]);
        assert_true(g.t[i] == (uint64_t)(i + 1) * 100);
    }
    tbucket_free(b);
    free(g.t);
    free(g.who);
}

static void test_pause(void **state)
{
    (void)state;
    struct grants g = {0};
    g_grants = &g;
    struct req q = {0};
    struct tbucket *b = tbucket_new((struct rate){10, 1000}, 5, 0);
    tbucket_pause_until(b, 30000);
    tbucket_pause_until(b, 20000); /* never shortens */
    assert_true(tbucket_paused_until(b) == 30000);
    assert_false(tbucket_try_take(b, 100)); /* tokens there, but paused */
    tbucket_enqueue(b, &q.w, TBUCKET_PRIO_LIVE, grant_cb, &q, 100);
    g.now = 100;
    assert_true(tbucket_dispatch(b, 100) == 30000);
    g.now = 29999;
    assert_true(tbucket_dispatch(b, 29999) == 30000);
    assert_int_equal(g.n, 0);
    g.now = 30000;
    assert_true(tbucket_dispatch(b, 30000) == UINT64_MAX);
    assert_int_equal(g.n, 1);
    assert_true(tbucket_try_take(b, 30000));
    tbucket_free(b);
    free(g.t);
    free(g.who);
}

static void test_resize_keeps_tokens(void **state)
{
    (void)state;
    struct tbucket *b = tbucket_new((struct rate){10, 1000}, 10, 0);
    for (int i = 0; i < 10; i++)
        assert_true(tbucket_try_take(b, 0));
    /* A reload must not hand out a fresh burst. */
    tbucket_resize(b, (struct rate){20, 1000}, 20, 0);
    assert_true(tbucket_tokens(b, 0) == 0.0);
    assert_false(tbucket_try_take(b, 0));
    assert_true(tbucket_tokens(b, 50) == 1.0); /* the new rate applies from now */
    tbucket_free(b);

    /* Tokens earned are kept across a change of unit... */
    b = tbucket_new((struct rate){60, 60000}, 30, 0);
    for (int i = 0; i < 25; i++)
        assert_true(tbucket_try_take(b, 0));
    tbucket_resize(b, (struct rate){1, 1000}, 10, 0);
    assert_true(tbucket_tokens(b, 0) == 5.0);
    /* ...and capped by a smaller burst. */
    tbucket_resize(b, (struct rate){1, 1000}, 2, 0);
    assert_true(tbucket_tokens(b, 0) == 2.0);
    /* A rate of zero is refused (the old one stays). */
    tbucket_resize(b, (struct rate){0, 1000}, 2, 0);
    assert_true(tbucket_tokens(b, 500) == 2.0);
    assert_true(tbucket_try_take(b, 500));
    assert_true(tbucket_tokens(b, 1000) == 1.5);
    tbucket_free(b);
}

/* Grant callbacks may enqueue and cancel other waiters. */
struct reenter {
    struct tbucket *b;
    struct req a, c, d;
    int order[8];
    int n;
};

static void reenter_cb(struct tbucket_waiter *w, void *arg)
{
    struct reenter *x = arg;
    if (w == &x->a.w) {
        x->order[x->n++] = 1;
        tbucket_cancel(x->b, &x->c.w);
        tbucket_enqueue(x->b, &x->d.w, TBUCKET_PRIO_LIVE, reenter_cb, x, 0);
    } else if (w == &x->c.w) {
        x->order[x->n++] = 3;
    } else {
        x->order[x->n++] = 4;
    }
}

static void test_callbacks_reenter(void **state)
{
    (void)state;
    struct reenter x = {0};
    x.b = tbucket_new((struct rate){100, 1000}, 10, 0);
    tbucket_enqueue(x.b, &x.a.w, TBUCKET_PRIO_LIVE, reenter_cb, &x, 0);
    tbucket_enqueue(x.b, &x.c.w, TBUCKET_PRIO_BACKFILL, reenter_cb, &x, 0);
    assert_true(tbucket_dispatch(x.b, 0) == UINT64_MAX);
    assert_int_equal(x.n, 2);
    assert_int_equal(x.order[0], 1);
    assert_int_equal(x.order[1], 4);
    assert_false(x.c.w.queued);
    assert_int_equal(tbucket_queued(x.b), 0);
    tbucket_free(x.b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_full_at_start_then_rate),
        cmocka_unit_test(test_dispatch_time_exact),
        cmocka_unit_test(test_priorities),
        cmocka_unit_test(test_pause),
        cmocka_unit_test(test_resize_keeps_tokens),
        cmocka_unit_test(test_callbacks_reenter),
        cmocka_unit_test(test_window_bound_no_burst),
        cmocka_unit_test(test_window_bound_burst),
        cmocka_unit_test(test_window_bound_pauses),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
