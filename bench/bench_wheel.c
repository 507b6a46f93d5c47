/*
 * bench_wheel: per-operation cost of the timer wheel against libuv's own timers (a binary
 * min-heap, one uv_timer_t per timer), for 1e4, 1e5 and 1e6 timers, in the same run.
 *
 *   add:    n timers with delays uniform in [1 ms, 1 h]
 *   cancel: all n, in random order
 *   fire:   all n re-added, then fired. The wheel advances 1 h of simulated time in one
 *           call (every cascade included); libuv's timers get delays in [0, 50) ms, the
 *           bench sleeps past them, and one uv_run pops and fires them all. A heap pop
 *           costs O(log n) whatever the delays, so the two figures compare.
 *   timers_add: the libuv glue's timers_start (wheel add plus a uv_update_time per call).
 *
 * Prints one line per n:
 *   bench=wheel n=... add_ns=... cancel_ns=... fire_ns=... uv_add_ns=... uv_cancel_ns=...
 *   uv_fire_ns=... timers_add_ns=...
 * Nothing here passes or fails on time.
 */
#include <stdio.h>
#include <stdlib.h>
#include <uv.h>

#include "coingest/timers.h"
#include "coingest/util.h"
#include "coingest/wheel.h"

#define SPAN_MS 3600000u

static size_t g_fired;

static void wheel_fire_cb(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    (void)arg;
    g_fired++;
}

static void uv_fire_cb(uv_timer_t *h)
{
    (void)h;
    g_fired++;
}

static double per_op(uint64_t t0, uint64_t t1, size_t n)
{
    return (double)(t1 - t0) / (double)n;
}

static void shuffle(size_t *v, size_t n, struct rng *r)
{
    for (size_t i = 0; i < n; i++)
        v[i] = i;
    for (size_t i = n - 1; i > 0; i--) {
        size_t j = (size_t)rng_below(r, i + 1);
        size_t x = v[i];
        v[i] = v[j];
        v[j] = x;
    }
}

struct result {
    double add, cancel, fire;
};

static int bench_wheel(size_t n, const uint64_t *delay, const size_t *order, struct result *res)
{
    struct wheel_timer *tm = malloc(n * sizeof(*tm));
    struct wheel *w = wheel_new(0);
    if (!tm || !w) {
        free(tm);
        wheel_free(w);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        wheel_timer_init(&tm[i], wheel_fire_cb, NULL);

    uint64_t t0 = uv_hrtime();
    for (size_t i = 0; i < n; i++)
        wheel_add(w, &tm[i], delay[i]);
    uint64_t t1 = uv_hrtime();
    res->add = per_op(t0, t1, n);

    t0 = uv_hrtime();
    for (size_t i = 0; i < n; i++)
        wheel_cancel(w, &tm[order[i]]);
    t1 = uv_hrtime();
    res->cancel = per_op(t0, t1, n);

    for (size_t i = 0; i < n; i++)
        wheel_add(w, &tm[i], delay[i]);
    g_fired = 0;
    t0 = uv_hrtime();
    wheel_advance(w, SPAN_MS + 1);
    t1 = uv_hrtime();
    res->fire = per_op(t0, t1, n);
    int rc = g_fired == n && wheel_count(w) == 0 ? 0 : -1;

    wheel_free(w);
    free(tm);
    return rc;
}

static int bench_uv(size_t n, const uint64_t *delay, const size_t *order, struct result *res)
{
    uv_loop_t loop;
    uv_timer_t *h = malloc(n * sizeof(*h));
    if (!h || uv_loop_init(&loop) != 0) {
        free(h);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        uv_timer_init(&loop, &h[i]);

    uint64_t t0 = uv_hrtime();
    for (size_t i = 0; i < n; i++)
        uv_timer_start(&h[i], uv_fire_cb, delay[i], 0);
    uint64_t t1 = uv_hrtime();
    res->add = per_op(t0, t1, n);

    t0 = uv_hrtime();
    for (size_t i = 0; i < n; i++)
        uv_timer_stop(&h[order[i]]);
    t1 = uv_hrtime();
    res->cancel = per_op(t0, t1, n);

    uv_update_time(&loop);
    for (size_t i = 0; i < n; i++)
        uv_timer_start(&h[i], uv_fire_cb, delay[i] % 50, 0);
    uv_sleep(60);
    g_fired = 0;
    t0 = uv_hrtime();
    uv_run(&loop, UV_RUN_DEFAULT);
    t1 = uv_hrtime();
    res->fire = per_op(t0, t1, n);
    int rc = g_fired == n ? 0 : -1;

    for (size_t i = 0; i < n; i++)
        uv_close((uv_handle_t *)&h[i], NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    if (uv_loop_close(&loop) != 0)
        rc = -1;
    free(h);
    return rc;
}

/* The glue's add: what a module pays per timers_start. */
static int bench_glue(size_t n, const uint64_t *delay, double *add_ns)
{
    uv_loop_t loop;
    struct wheel_timer *tm = malloc(n * sizeof(*tm));
    if (!tm || uv_loop_init(&loop) != 0) {
        free(tm);
        return -1;
    }
    struct timers *t = timers_new(&loop);
    if (!t) {
        free(tm);
        uv_loop_close(&loop);
        return -1;
    }
    for (size_t i = 0; i < n; i++)
        wheel_timer_init(&tm[i], wheel_fire_cb, NULL);
    uint64_t t0 = uv_hrtime();
    for (size_t i = 0; i < n; i++)
        timers_start(t, &tm[i], delay[i]);
    uint64_t t1 = uv_hrtime();
    *add_ns = per_op(t0, t1, n);
    timers_free(t);
    uv_run(&loop, UV_RUN_DEFAULT);
    int rc = uv_loop_close(&loop) == 0 ? 0 : -1;
    free(tm);
    return rc;
}

int main(void)
{
    const size_t sizes[] = {10000, 100000, 1000000};
    struct rng r;
    rng_seed(&r, 20261123);

    for (size_t s = 0; s < ARRAY_SIZE(sizes); s++) {
        size_t n = sizes[s];
        uint64_t *delay = malloc(n * sizeof(*delay));
        size_t *order = malloc(n * sizeof(*order));
        if (!delay || !order) {
            fprintf(stderr, "bench_wheel: out of memory\n");
            return 1;
        }
        for (size_t i = 0; i < n; i++)
            delay[i] = 1 + rng_below(&r, SPAN_MS);
        shuffle(order, n, &r);

        struct result wr, ur;
        double glue_add;
        if (bench_wheel(n, delay, order, &wr) || bench_uv(n, delay, order, &ur) ||
            bench_glue(n, delay, &glue_add)) {
            fprintf(stderr, "bench_wheel: a run failed at n=%zu\n", n);
            return 1;
        }
        printf("bench=wheel n=%zu add_ns=%.1f cancel_ns=%.1f fire_ns=%.1f uv_add_ns=%.1f "
               "uv_cancel_ns=%.1f uv_fire_ns=%.1f timers_add_ns=%.1f\n",
               n, wr.add, wr.cancel, wr.fire, ur.add, ur.cancel, ur.fire, glue_add);
        fflush(stdout);
        free(delay);
        free(order);
    }
    return 0;
}
