/*
 * Unit tests for the timer wheel, in simulated time.
 *
 * The main test runs long random sequences of add / move / cancel / advance on 100k timers
 * against a reference binary heap ordered by (due time, order added), and checks that every
 * advance fires exactly the reference's timers in exactly its order (expiry order, ties in
 * the order added), never one early, and that count and next_due agree. The other tests pin
 * down range edges, ties across cascades, callbacks that change the wheel, and next_due.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/util.h"
#include "coingest/wheel.h"

/* ---- reference: a binary min-heap with lazy deletion ---- */

struct ref_entry {
    uint64_t key, seq;
    uint32_t id, gen;
};

struct ref_heap {
    struct ref_entry *v;
    size_t n, cap;
};

static bool ref_less(const struct ref_entry *a, const struct ref_entry *b)
{
    return a->key != b->key ? a->key < b->key : a->seq < b->seq;
}

static void ref_push(struct ref_heap *h, struct ref_entry e)
{
    if (h->n == h->cap) {
        h->cap = h->cap ? h->cap * 2 : 1024;
        h->v = realloc(h->v, h->cap * sizeof(*h->v));
        assert_non_null(h->v);
    }
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ref_less(&e, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = e;
}

static struct ref_entry ref_pop(struct ref_heap *h)
{
    struct ref_entry top = h->v[0];
    struct ref_entry last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n)
            break;
        if (c + 1 < h->n && ref_less(&h->v[c + 1], &h->v[c]))
            c++;
        if (!ref_less(&h->v[c], &last))
            break;
        h->v[i] = h->v[c];
        i = c;
    }
    if (h->n > 0)
        h->v[i] = last;
    return top;
}

/* ---- the timers under test ---- */

struct item {
    struct wheel_timer tm;
    uint32_t id;
    uint32_t gen; /* bumped on every add and cancel; heap entries of older gens are stale */
    bool pending;
    uint64_t key;
};

struct fired_log {
    uint32_t *ids;
    size_t n, cap;
    uint64_t advance_to; /* the `now` of the advance in progress */
    size_t early;        /* timers fired before their expiry */
};

static struct fired_log g_log;

static void record_cb(struct wheel_timer *tm, void *arg)
{
    struct item *it = arg;
    assert_ptr_equal(&it->tm, tm);
    assert_false(wheel_timer_pending(tm));
    if (tm->expires > g_log.advance_to)
        g_log.early++;
    if (g_log.n == g_log.cap) {
        g_log.cap = g_log.cap ? g_log.cap * 2 : 1024;
        g_log.ids = realloc(g_log.ids, g_log.cap * sizeof(*g_log.ids));
        assert_non_null(g_log.ids);
    }
    g_log.ids[g_log.n++] = it->id;
}

struct model {
    struct wheel *w;
    struct ref_heap heap;
    struct item *items;
    size_t nitems, pending;
    uint64_t now, seq;
};

static void model_add(struct model *m, struct item *it, uint64_t expires)
{
    wheel_add(m->w, &it->tm, expires);
    it->gen++;
    if (!it->pending)
        m->pending++;
    it->pending = true;
    /* Already due: fires on the next advance, after timers due earlier, in order added. */
    it->key = expires > m->now ? expires : m->now;
    ref_push(&m->heap, (struct ref_entry){it->key, m->seq++, it->id, it->gen});
}

static void model_cancel(struct model *m, struct item *it)
{
    wheel_cancel(m->w, &it->tm);
    it->gen++;
    if (it->pending)
        m->pending--;
    it->pending = false;
}

static void model_advance(struct model *m, uint64_t to)
{
    g_log.n = 0;
    g_log.advance_to = to;
    size_t fired = wheel_advance(m->w, to);
    m->now = to;

    size_t k = 0;
    while (m->heap.n > 0 && m->heap.v[0].key <= to) {
        struct ref_entry e = ref_pop(&m->heap);
        struct item *it = &m->items[e.id];
        if (e.gen != it->gen || !it->pending)
            continue; /* stale: moved or cancelled since */
        assert_true(k < g_log.n);
        if (g_log.ids[k] != e.id)
            fail_msg("advance to %llu: fired #%zu is timer %u, expected %u (key %llu)",
                     (unsigned long long)to, k, g_log.ids[k], e.id, (unsigned long long)e.key);
        it->pending = false;
        m->pending--;
        k++;
    }
    assert_int_equal(k, g_log.n);
    assert_int_equal(fired, g_log.n);
    assert_int_equal(g_log.early, 0);
    assert_int_equal(wheel_count(m->w), m->pending);

    /* next_due is a lower bound of the earliest pending due time. */
    while (m->heap.n > 0) {
        struct ref_entry e = m->heap.v[0];
        struct item *it = &m->items[e.id];
        if (e.gen == it->gen && it->pending)
            break;
        ref_pop(&m->heap);
    }
    uint64_t next = wheel_next_due(m->w);
    if (m->heap.n == 0) {
        assert_true(next == UINT64_MAX);
    } else {
        assert_true(next <= m->heap.v[0].key);
        assert_true(next > to);
    }
}

static void model_init(struct model *m, size_t n, uint64_t now)
{
    memset(m, 0, sizeof(*m));
    m->w = wheel_new(now);
    assert_non_null(m->w);
    m->now = now;
    m->nitems = n;
    m->items = calloc(n, sizeof(*m->items));
    assert_non_null(m->items);
    for (size_t i = 0; i < n; i++) {
        m->items[i].id = (uint32_t)i;
        wheel_timer_init(&m->items[i].tm, record_cb, &m->items[i]);
    }
}

static void model_free(struct model *m)
{
    wheel_free(m->w);
    free(m->items);
    free(m->heap.v);
}

/* A delay drawn from a mix that exercises every level, the overflow list, the past, and
 * shared due times (ties that meet across levels). */
static uint64_t random_expiry(struct rng *r, uint64_t now)
{
    uint64_t p = rng_below(r, 100);
    if (p < 30)
        return now + rng_below(r, 64);
    if (p < 55)
        return now + rng_below(r, 70000);
    if (p < 70)
        return now + rng_below(r, 40ull * 86400 * 1000);
    if (p < 75)
        return now + rng_below(r, 1ull << 40);
    if (p < 80)
        return now - rng_below(r, now < 5000 ? now + 1 : 5000);
    /* A few shared instants near now, so timers with equal expiry are added at different
     * distances from it and must still fire in the order added. */
    return ((now >> 12) + 1 + rng_below(r, 3)) << 12;
}

static void random_run(uint64_t seed, uint64_t start, size_t ntimers, size_t nops)
{
    struct model m;
    struct rng r;
    rng_seed(&r, seed);
    model_init(&m, ntimers, start);

    for (size_t op = 0; op < nops; op++) {
        uint64_t p = rng_below(&r, 100);
        struct item *it = &m.items[rng_below(&r, ntimers)];
        if (p < 55) {
            model_add(&m, it, random_expiry(&r, m.now));
        } else if (p < 75) {
            model_cancel(&m, it);
        } else {
            uint64_t q = rng_below(&r, 100), step;
            if (q < 60)
                step = rng_below(&r, 100);
            else if (q < 90)
                step = rng_below(&r, 100000);
            else if (q < 99)
                step = rng_below(&r, 10ull * 86400 * 1000);
            else
                step = rng_below(&r, 1ull << 41);
            model_advance(&m, m.now + step);
        }
    }
    /* Drain: everything pending fires, in order. */
    model_advance(&m, m.now + (1ull << 42));
    assert_int_equal(wheel_count(m.w), 0);
    assert_true(wheel_next_due(m.w) == UINT64_MAX);
    model_free(&m);
    free(g_log.ids);
    memset(&g_log, 0, sizeof(g_log));
}

static void test_random_against_reference(void **state)
{
    (void)state;
    random_run(1, 0, 100000, 400000);
    random_run(2, 1700000000000ull, 100000, 400000);
    /* Start just below the top of the wheel's range, so adds cross it at once. */
    random_run(3, (1ull << 36) - 1000, 20000, 100000);
    random_run(4, (7ull << 36) - 3, 5000, 50000);
}

/* Many timers with one expiry, added as time approaches it, fire in the order added even
 * though the early ones sit at high levels and the late ones straight at level 0. */
static void test_ties_across_levels(void **state)
{
    (void)state;
    struct model m;
    model_init(&m, 2000, 0);
    for (size_t i = 0; i < 2000; i++) {
        model_advance(&m, i * 130);
        model_add(&m, &m.items[i], 260000);
    }
    model_advance(&m, 259999);
    assert_int_equal(g_log.n, 0);
    model_advance(&m, 260000);
    assert_int_equal(g_log.n, 2000);
    for (uint32_t i = 0; i < 2000; i++)
        assert_int_equal(g_log.ids[i], i);
    model_free(&m);
    free(g_log.ids);
    memset(&g_log, 0, sizeof(g_log));
}

/* Expiries on and around every level boundary, the top of the range and beyond it: each
 * fires exactly at its time, not a millisecond before. */
static void test_range_edges(void **state)
{
    (void)state;
    const uint64_t day = 86400000ull;
    uint64_t starts[] = {0, 1, 63, 4095, (1ull << 36) - 1, 1735689600000ull};
    uint64_t deltas[] = {1,          2,
                         63,         64,
                         65,         4095,
                         4096,       4097,
                         262143,     262144,
                         16777215,   16777216,
                         1073741823, 1073741824,
                         30 * day,   31 * day,
                         400 * day,  (1ull << 36) - 1,
                         1ull << 36, (1ull << 36) + 1,
                         1ull << 40, (1ull << 50) + 7};
    for (size_t s = 0; s < ARRAY_SIZE(starts); s++) {
        struct model m;
        model_init(&m, ARRAY_SIZE(deltas), starts[s]);
        for (size_t i = 0; i < ARRAY_SIZE(deltas); i++)
            model_add(&m, &m.items[i], starts[s] + deltas[i]);
        for (size_t i = 0; i < ARRAY_SIZE(deltas); i++) {
            uint64_t t = starts[s] + deltas[i];
            model_advance(&m, t - 1);
            if (g_log.n != 0)
                fail_msg("start %zu delta %zu: %zu fired early (first %u)", s, i, g_log.n,
                         g_log.ids[0]);
            model_advance(&m, t);
            assert_int_equal(g_log.n, 1);
            assert_int_equal(g_log.ids[0], i);
        }
        assert_int_equal(wheel_count(m.w), 0);
        model_free(&m);
    }
    free(g_log.ids);
    memset(&g_log, 0, sizeof(g_log));

    /* The very end of the 64-bit range. */
    struct model m;
    model_init(&m, 2, UINT64_MAX - (1ull << 37));
    model_add(&m, &m.items[0], UINT64_MAX - 1);
    model_add(&m, &m.items[1], UINT64_MAX - (1ull << 36) - 5);
    model_advance(&m, UINT64_MAX - 2);
    assert_int_equal(g_log.n, 1);
    assert_int_equal(g_log.ids[0], 1);
    model_advance(&m, UINT64_MAX - 1);
    assert_int_equal(g_log.n, 1);
    assert_int_equal(g_log.ids[0], 0);
    model_free(&m);
    free(g_log.ids);
    memset(&g_log, 0, sizeof(g_log));
}

/* ---- callbacks that change the wheel ---- */

struct cb_ctx {
    struct wheel *w;
    struct wheel_timer a, b, c, d;
    uint64_t now;
    int a_fired, b_fired, c_fired, d_fired;
    uint64_t a_period;
    int a_limit;
};

static void periodic_cb(struct wheel_timer *tm, void *arg)
{
    struct cb_ctx *x = arg;
    x->a_fired++;
    if (x->a_fired < x->a_limit)
        wheel_add(x->w, tm, tm->expires + x->a_period);
}

static void canceller_cb(struct wheel_timer *tm, void *arg)
{
    struct cb_ctx *x = arg;
    (void)tm;
    x->b_fired++;
    wheel_cancel(x->w, &x->c); /* same expiry, added after b: must not fire */
    /* Due "now": not in this advance, on the next one. */
    wheel_add(x->w, &x->d, 0);
}

static void count_c(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    ((struct cb_ctx *)arg)->c_fired++;
}

static void count_d(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    ((struct cb_ctx *)arg)->d_fired++;
}

static void test_callbacks_change_wheel(void **state)
{
    (void)state;
    struct cb_ctx x = {0};
    x.w = wheel_new(1000);
    x.a_period = 10;
    x.a_limit = 50;
    wheel_timer_init(&x.a, periodic_cb, &x);
    wheel_timer_init(&x.b, canceller_cb, &x);
    wheel_timer_init(&x.c, count_c, &x);
    wheel_timer_init(&x.d, count_d, &x);

    wheel_add(x.w, &x.a, 1010);
    /* One advance over a long span runs the re-adds made by callbacks in it. */
    assert_int_equal(wheel_advance(x.w, 1255), 25);
    assert_int_equal(x.a_fired, 25);
    assert_true(wheel_timer_pending(&x.a));
    assert_int_equal(wheel_advance(x.w, 100000), 25);
    assert_int_equal(x.a_fired, 50);
    assert_false(wheel_timer_pending(&x.a));

    wheel_add(x.w, &x.b, 100500);
    wheel_add(x.w, &x.c, 100500);
    assert_int_equal(wheel_count(x.w), 2);
    assert_int_equal(wheel_advance(x.w, 200000), 1);
    assert_int_equal(x.b_fired, 1);
    assert_int_equal(x.c_fired, 0);
    assert_int_equal(x.d_fired, 0);
    assert_false(wheel_timer_pending(&x.c));
    assert_true(wheel_timer_pending(&x.d));
    assert_true(wheel_next_due(x.w) == 200000);
    assert_int_equal(wheel_advance(x.w, 200000), 1);
    assert_int_equal(x.d_fired, 1);
    assert_int_equal(wheel_count(x.w), 0);
    wheel_free(x.w);
}

static void test_next_due_and_basics(void **state)
{
    (void)state;
    struct wheel *w = wheel_new(5000);
    struct wheel_timer t[100];
    struct cb_ctx x = {0};

    assert_true(wheel_next_due(w) == UINT64_MAX);
    assert_int_equal(wheel_count(w), 0);
    for (int i = 0; i < 100; i++)
        wheel_timer_init(&t[i], count_c, &x);

    /* A lone far timer: next_due is exact, so an idle loop sleeps straight to it. */
    wheel_add(w, &t[0], 5000 + 3600000);
    assert_true(wheel_next_due(w) == 5000 + 3600000);
    /* Moving it. */
    wheel_add(w, &t[0], 5000 + 86400000);
    assert_int_equal(wheel_count(w), 1);
    assert_true(wheel_next_due(w) == 5000 + 86400000);
    /* Cancel twice is harmless. */
    wheel_cancel(w, &t[0]);
    wheel_cancel(w, &t[0]);
    assert_false(wheel_timer_pending(&t[0]));
    assert_int_equal(wheel_count(w), 0);
    assert_true(wheel_next_due(w) == UINT64_MAX);

    /* Many timers in one far slot: next_due may be the slot's start, never after the
     * earliest expiry. */
    for (int i = 0; i < 100; i++)
        wheel_add(w, &t[i], 5000 + 3600000 + (uint64_t)(99 - i) * 7);
    uint64_t nd = wheel_next_due(w);
    assert_true(nd <= 5000 + 3600000);
    assert_true(nd > 5000);
    /* Time never goes back. */
    assert_int_equal(wheel_advance(w, 10), 0);
    assert_int_equal(wheel_advance(w, 5000 + 3600000 - 1), 0);
    assert_int_equal(wheel_advance(w, 5000 + 3600000), 1);
    assert_int_equal(wheel_advance(w, 5000 + 3600000 + 99 * 7), 99);
    assert_int_equal(x.c_fired, 100);

    /* An expiry in the past is due on the next advance. */
    wheel_add(w, &t[0], 1);
    assert_true(wheel_next_due(w) == 5000 + 3600000 + 99 * 7);
    assert_int_equal(wheel_advance(w, 5000 + 3600000 + 99 * 7), 1);
    wheel_free(w);
    wheel_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_random_against_reference),
        cmocka_unit_test(test_ties_across_levels),
        cmocka_unit_test(test_range_edges),
        cmocka_unit_test(test_callbacks_change_wheel),
        cmocka_unit_test(test_next_due_and_basics),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
