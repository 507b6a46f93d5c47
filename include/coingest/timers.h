/*
 * timers: the daemon's one timer facility, a hierarchical timing wheel (wheel.h) driven by a
 * single non-repeating uv_timer armed for the wheel's next due time. An idle daemon sleeps
 * until its next timer; there is no fixed tick.
 *
 * Timers are intrusive (struct wheel_timer, owned by the caller, e.g. inside a request or a
 * job), so adding and cancelling never allocate. Callbacks run on the loop thread; a callback
 * may add or cancel any timer, including its own.
 *
 * Time is the loop's monotonic milliseconds (uv_now, refreshed with uv_update_time before
 * computing due times).
 *
 * Thread: loop thread only.
 */
#ifndef COINGEST_TIMERS_H
#define COINGEST_TIMERS_H

#include <stdint.h>
#include <uv.h>

#include "coingest/wheel.h"

struct timers;

/* Creates the timer facility on `loop`. NULL on OOM or when uv_timer_init fails. */
struct timers *timers_new(uv_loop_t *loop);

/* Closes the uv_timer and frees the facility; pending timers are dropped without firing.
 * The memory is released from the close callback, so the loop must run once more. */
void timers_free(struct timers *t);

/* Monotonic now in ms as the wheel sees it. */
uint64_t timers_now(struct timers *t);

/* Arms `tm` to fire `delay_ms` from now (0: on the next loop iteration, never inline).
 * Re-arming a pending timer moves it. */
void timers_start(struct timers *t, struct wheel_timer *tm, uint64_t delay_ms);

/* Arms `tm` to fire at monotonic time `at_ms` (in the past: on the next iteration). */
void timers_start_at(struct timers *t, struct wheel_timer *tm, uint64_t at_ms);

/* Cancels `tm` if pending; a no-op otherwise. */
void timers_stop(struct timers *t, struct wheel_timer *tm);

/* The wheel, for statistics. */
struct wheel *timers_wheel(struct timers *t);

#endif
