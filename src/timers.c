/*
 * timers: the wheel (wheel.c) on a libuv loop, through one non-repeating uv_timer.
 *
 * The uv_timer is armed for wheel_next_due() and nothing else: an idle daemon sleeps until
 * its next timer, and an empty wheel stops the uv_timer so that it keeps no loop alive.
 * After every change that may move the next due time earlier (an add) the uv_timer is
 * re-armed if needed; after a cancel it is stopped when the wheel is empty, or re-armed
 * later when the cancelled timer was the one it waited for. While the wheel is firing
 * (inside the uv_timer callback) these re-arms are suppressed and done once at the end.
 *
 * The wheel's time is uv_now(), refreshed with uv_update_time() when a timer is started so
 * that a delay counts from the moment of the call, not from the start of the loop iteration
 * (a long parse would otherwise make the timer fire early).
 *
 * timers_free() must not be called from a wheel callback: the wheel is freed at once and the
 * advance in progress would go on with it.
 *
 * Next iteration, not inline: a timer due now is fired by the next advance. libuv 1.44 runs
 * a timer re-armed with timeout 0 from its own callback again in the same pass (before any
 * I/O), so when wheel callbacks keep scheduling zero-delay timers the facility falls back to
 * a 1 ms timeout after a run of such passes, which lets I/O in.
 */
#include "coingest/timers.h"

#include <stdbool.h>
#include <stdlib.h>

/* Zero-timeout re-arms in a row (at one loop time) before yielding a millisecond to I/O. */
#define TIMERS_SPIN_MAX 64

struct timers {
    uv_loop_t *loop;
    uv_timer_t handle;
    struct wheel *wheel;
    uint64_t armed_for; /* wheel time the uv_timer waits for; UINT64_MAX: stopped */
    bool firing;
    uint64_t spin_time; /* loop time of the last zero-timeout re-arm */
    unsigned spin_count;
};

static void on_uv_timer(uv_timer_t *handle);

/* Points the uv_timer at the wheel's next due time (or stops it when the wheel is empty). */
static void rearm(struct timers *t, uint64_t now, bool from_cb)
{
    uint64_t due = wheel_next_due(t->wheel);
    if (due == UINT64_MAX) {
        if (t->armed_for != UINT64_MAX)
            uv_timer_stop(&t->handle);
        t->armed_for = UINT64_MAX;
        return;
    }
    uint64_t timeout = due > now ? due - now : 0;
    if (timeout == 0 && from_cb) {
        if (t->spin_time != now) {
            t->spin_time = now;
            t->spin_count = 0;
        }
        if (++t->spin_count > TIMERS_SPIN_MAX)
            timeout = 1;
    }
    t->armed_for = due;
    uv_timer_start(&t->handle, on_uv_timer, timeout, 0);
}

static void on_uv_timer(uv_timer_t *handle)
{
    struct timers *t = handle->data;
    uint64_t now = uv_now(t->loop);

    t->armed_for = UINT64_MAX; /* a non-repeating uv_timer is stopped once it fired */
    t->firing = true;
    wheel_advance(t->wheel, now);
    t->firing = false;
    rearm(t, now, true);
}

struct timers *timers_new(uv_loop_t *loop)
{
    struct timers *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->loop = loop;
    t->armed_for = UINT64_MAX;
    t->wheel = wheel_new(uv_now(loop));
    if (!t->wheel)
        goto fail_wheel;
    if (uv_timer_init(loop, &t->handle) != 0)
        goto fail_timer;
    t->handle.data = t;
    return t;

fail_timer:
    wheel_free(t->wheel);
fail_wheel:
    free(t);
    return NULL;
}

static void on_close(uv_handle_t *handle)
{
    free(handle->data);
}

void timers_free(struct timers *t)
{
    if (!t)
        return;
    wheel_free(t->wheel);
    t->wheel = NULL;
    uv_close((uv_handle_t *)&t->handle, on_close);
}

uint64_t timers_now(struct timers *t)
{
    uv_update_time(t->loop);
    return uv_now(t->loop);
}

void timers_start_at(struct timers *t, struct wheel_timer *tm, uint64_t at_ms)
{
    wheel_add(t->wheel, tm, at_ms);
    if (t->firing)
        return;
    /* Only an earlier due time needs a re-arm; a later one is found when the uv_timer fires. */
    if (at_ms < t->armed_for)
        rearm(t, timers_now(t), false);
}

void timers_start(struct timers *t, struct wheel_timer *tm, uint64_t delay_ms)
{
    uint64_t now = timers_now(t);
    uint64_t at = now + delay_ms < now ? UINT64_MAX : now + delay_ms;
    timers_start_at(t, tm, at);
}

void timers_stop(struct timers *t, struct wheel_timer *tm)
{
    if (!wheel_timer_pending(tm))
        return;
    uint64_t expires = tm->expires;
    wheel_cancel(t->wheel, tm);
    if (t->firing)
        return;
    /* Stop the uv_timer when nothing is left; when the timer it waited for is gone, point
     * it at the new earliest one so a cancelled deadline causes no wakeup. */
    if (wheel_count(t->wheel) == 0 || expires <= t->armed_for)
        rearm(t, timers_now(t), false);
}

struct wheel *timers_wheel(struct timers *t)
{
    return t->wheel;
}
