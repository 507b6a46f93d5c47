/*
 * wheel: a hierarchical timing wheel (Varghese & Lauck), pure and deterministic.
 *
 * The caller passes `now` (ms) to every call that needs it, so tests drive time by hand.
 * add and cancel are O(1); advancing fires every timer whose expiry is <= now, never one
 * whose expiry is later (timers never fire early). Delays beyond the wheel's top level
 * go to an overflow list that is re-inserted as time approaches them.
 *
 * Thread: a wheel is used from one thread (the loop) only.
 */
#ifndef COINGEST_WHEEL_H
#define COINGEST_WHEEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/list.h"

struct wheel_timer;
typedef void (*wheel_cb)(struct wheel_timer *tm, void *arg);

/* Intrusive timer: embed it, initialise it with wheel_timer_init, and keep it alive while
 * pending. Fields are private to the wheel. */
struct wheel_timer {
    struct list_link link;
    uint64_t expires;
    wheel_cb cb;
    void *arg;
    int32_t slot; /* -1: not pending */
};

struct wheel;

/* A new wheel whose time starts at `now`. NULL on OOM. */
struct wheel *wheel_new(uint64_t now);
/* Frees the wheel; pending timers are forgotten (not fired). NULL is a no-op. */
void wheel_free(struct wheel *w);

void wheel_timer_init(struct wheel_timer *tm, wheel_cb cb, void *arg);
bool wheel_timer_pending(const struct wheel_timer *tm);

/* Schedules tm at absolute time `expires` (a time <= the wheel's now fires on the next
 * advance). Re-adding a pending timer moves it. */
void wheel_add(struct wheel *w, struct wheel_timer *tm, uint64_t expires);
/* Cancels tm if pending. */
void wheel_cancel(struct wheel *w, struct wheel_timer *tm);

/* Moves the wheel's time to `now` and fires every due timer in expiry order (ties in the
 * order added). Returns the number fired. Callbacks may add and cancel timers. */
size_t wheel_advance(struct wheel *w, uint64_t now);

/* The earliest time at which some timer may be due (never later than the true earliest
 * expiry; may be earlier when the wheel only knows a slot), or UINT64_MAX when empty. */
uint64_t wheel_next_due(const struct wheel *w);

/* Pending timers. */
size_t wheel_count(const struct wheel *w);

#endif
