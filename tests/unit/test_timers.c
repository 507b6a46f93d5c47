/*
 * Unit tests for the libuv glue of the timer wheel, on a real loop with short delays (a few
 * tens of milliseconds in all). Each test closes its loop with uv_loop_close() == 0, so a
 * leaked handle fails it. Nothing here depends on how fast the machine is: timers are
 * checked for order and for never firing early, not for firing on time.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/timers.h"
#include "coingest/util.h"

struct item {
    struct wheel_timer tm;
    struct timers *t;
    int id;
    uint64_t delay, started_loop, started_hr;
};

struct fired {
    int ids[64];
    int n;
    int early;
};

static struct fired g_fired;

static void record_cb(struct wheel_timer *tm, void *arg)
{
    struct item *it = arg;
    (void)tm;
    uint64_t loop_now = timers_now(it->t);
    uint64_t hr_ms = uv_hrtime() / 1000000u;
    /* The contract is on loop time, exactly. Against the precise clock, allow for loop time
     * being whole milliseconds of a clock that may be the coarse one (libuv picks
     * CLOCK_MONOTONIC_COARSE when its resolution is 1 ms or better). */
    if (loop_now < it->started_loop + it->delay || hr_ms + 2 < it->started_hr + it->delay)
        g_fired.early++;
    g_fired.ids[g_fired.n++] = it->id;
}

static void start_item(struct timers *t, struct item *it, int id, uint64_t delay)
{
    it->t = t;
    it->id = id;
    it->delay = delay;
    it->started_loop = timers_now(t);
    it->started_hr = uv_hrtime() / 1000000u;
    wheel_timer_init(&it->tm, record_cb, it);
    timers_start(t, &it->tm, delay);
}

static void close_loop(uv_loop_t *loop, struct timers *t)
{
    timers_free(t);
    assert_int_equal(uv_run(loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(loop), 0);
}

static void test_order_and_never_early(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct timers *t = timers_new(&loop);
    assert_non_null(t);
    memset(&g_fired, 0, sizeof(g_fired));

    struct item it[6];
    const uint64_t delays[6] = {30, 10, 20, 0, 10, 25};
    for (int i = 0; i < 6; i++)
        start_item(t, &it[i], i, delays[i]);
    /* Starting never fires inline. */
    assert_int_equal(g_fired.n, 0);
    assert_int_equal(wheel_count(timers_wheel(t)), 6);

    /* The loop ends by itself: an empty wheel leaves no active handle. */
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(g_fired.n, 6);
    const int want[6] = {3, 1, 4, 2, 5, 0};
    for (int i = 0; i < 6; i++)
        assert_int_equal(g_fired.ids[i], want[i]);
    assert_int_equal(g_fired.early, 0);
    close_loop(&loop, t);
}

struct chain {
    struct timers *t;
    struct wheel_timer a, b, c, self;
    int order[16];
    int n;
    int self_left;
};

static void chain_b(struct wheel_timer *tm, void *arg)
{
    struct chain *x = arg;
    (void)tm;
    x->order[x->n++] = 2;
}

static void chain_c(struct wheel_timer *tm, void *arg)
{
    struct chain *x = arg;
    (void)tm;
    x->order[x->n++] = 3;
}

static void chain_a(struct wheel_timer *tm, void *arg)
{
    struct chain *x = arg;
    (void)tm;
    x->order[x->n++] = 1;
    timers_start(x->t, &x->c, 5);
    timers_start(x->t, &x->b, 0);
    /* Not inline, even at delay 0. */
    assert_int_equal(x->n, 1);
}

static void chain_self(struct wheel_timer *tm, void *arg)
{
    struct chain *x = arg;
    if (--x->self_left > 0)
        timers_start(x->t, tm, 1);
}

static void test_callbacks_start_timers(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct chain x = {0};
    x.t = timers_new(&loop);
    x.self_left = 5;
    wheel_timer_init(&x.a, chain_a, &x);
    wheel_timer_init(&x.b, chain_b, &x);
    wheel_timer_init(&x.c, chain_c, &x);
    wheel_timer_init(&x.self, chain_self, &x);
    timers_start(x.t, &x.a, 0);
    timers_start(x.t, &x.self, 1);
    assert_int_equal(x.n, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(x.n, 3);
    assert_int_equal(x.order[0], 1);
    assert_int_equal(x.order[1], 2);
    assert_int_equal(x.order[2], 3);
    assert_int_equal(x.self_left, 0);
    close_loop(&loop, x.t);
}

static void never_cb(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    (*(int *)arg)++;
}

/* An idle loop sleeps until its one far timer (no tick), a cancelled deadline causes no
 * wake-up, and an empty wheel keeps nothing alive. */
static void test_idle_sleep_and_cancel(void **state)
{
    (void)state;
    uv_loop_t loop;
    int fired = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct timers *t = timers_new(&loop);
    struct wheel_timer far, near;
    wheel_timer_init(&far, never_cb, &fired);
    wheel_timer_init(&near, never_cb, &fired);

    assert_int_equal(uv_loop_alive(&loop), 0);
    timers_start(t, &far, 3600000);
    assert_int_not_equal(uv_loop_alive(&loop), 0);
    /* A fresh loop reports a zero timeout until it has run once. */
    uv_run(&loop, UV_RUN_NOWAIT);
    int timeout = uv_backend_timeout(&loop);
    assert_in_range(timeout, 3590001, 3600000);

    timers_start(t, &near, 10);
    assert_true(uv_backend_timeout(&loop) <= 10);
    timers_stop(t, &near);
    timers_stop(t, &near); /* twice is harmless */
    assert_true(uv_backend_timeout(&loop) > 3590000);

    timers_stop(t, &far);
    assert_int_equal(uv_loop_alive(&loop), 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(fired, 0);
    assert_int_equal(wheel_count(timers_wheel(t)), 0);

    /* timers_start_at in the past: due on the next iteration. */
    timers_start_at(t, &near, 0);
    assert_int_equal(fired, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(fired, 1);
    close_loop(&loop, t);
}

/* A wheel callback that keeps re-arming itself at delay 0 must not starve the rest of the
 * loop (libuv 1.44 would otherwise re-run the zero timeout in the same timer pass). */
struct spinner {
    struct timers *t;
    struct wheel_timer tm;
    int left;
    int checks;
};

static void spin_cb(struct wheel_timer *tm, void *arg)
{
    struct spinner *s = arg;
    if (--s->left > 0)
        timers_start(s->t, tm, 0);
}

static void on_check(uv_check_t *h)
{
    ((struct spinner *)h->data)->checks++;
}

static void test_zero_delay_does_not_starve(void **state)
{
    (void)state;
    uv_loop_t loop;
    uv_check_t check;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct spinner s = {.left = 1000};
    s.t = timers_new(&loop);
    wheel_timer_init(&s.tm, spin_cb, &s);
    uv_check_init(&loop, &check);
    check.data = &s;
    uv_check_start(&check, on_check);
    uv_unref((uv_handle_t *)&check);
    timers_start(s.t, &s.tm, 0);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(s.left, 0);
    assert_true(s.checks > 0);
    uv_close((uv_handle_t *)&check, NULL);
    close_loop(&loop, s.t);
}

/* Freeing with timers pending drops them without firing and leaks nothing. */
static void test_free_with_pending(void **state)
{
    (void)state;
    uv_loop_t loop;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct timers *t = timers_new(&loop);
    memset(&g_fired, 0, sizeof(g_fired));
    struct item it[3];
    for (int i = 0; i < 3; i++)
        start_item(t, &it[i], i, (uint64_t)i * 1000);
    uint64_t a = timers_now(t);
    uint64_t b = timers_now(t);
    assert_true(b >= a);
    close_loop(&loop, t);
    assert_int_equal(g_fired.n, 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_order_and_never_early),
        cmocka_unit_test(test_callbacks_start_timers),
        cmocka_unit_test(test_idle_sleep_and_cancel),
        cmocka_unit_test(test_zero_delay_does_not_starve),
        cmocka_unit_test(test_free_with_pending),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
