/*
 * tbucket: a token bucket per remote API, with a queue of waiting requests served by priority
 * class (lower class first), FIFO within a class, and a server-advised pause (429 Retry-After).
 *
 * Pure and deterministic: every call takes `now` (monotonic ms). The bucket holds at most
 * `burst` tokens and earns rate.count tokens per rate.period_ms, continuously (fractional
 * tokens are kept). A request takes one token. While paused, nothing is granted whatever the
 * tokens; a pause never shortens an existing one.
 *
 * Waiters are intrusive (struct tbucket_waiter owned by the caller, e.g. inside a request).
 * tbucket_dispatch() grants tokens to queued waiters in order and calls their callbacks; it
 * returns when the next grant becomes possible, so the caller arms one timer for then.
 *
 * Thread: one thread (the loop) only.
 */
#ifndef COINGEST_TBUCKET_H
#define COINGEST_TBUCKET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/list.h"

#include "coingest/util.h"

/* Priority classes: live jobs before backfill. */
enum tbucket_prio { TBUCKET_PRIO_LIVE = 0, TBUCKET_PRIO_BACKFILL = 1, TBUCKET_PRIO_COUNT = 2 };

struct tbucket_waiter;
typedef void (*tbucket_grant_cb)(struct tbucket_waiter *w, void *arg);

struct tbucket_waiter {
    struct list_link link; /* in its priority's queue while queued */
    tbucket_grant_cb cb;
    void *arg;
    uint64_t enqueued_at; /* for wait-time metrics */
    int prio;
    bool queued;
};

struct tbucket;

/* A full bucket (burst tokens) at `now`. NULL on OOM or rate.count == 0. */
struct tbucket *tbucket_new(struct rate rate, uint32_t burst, uint64_t now);
void tbucket_free(struct tbucket *b);

/* Takes a token if one is there and nothing is queued and the bucket is not paused:
 * returns true. Otherwise false (the caller enqueues). */
bool tbucket_try_take(struct tbucket *b, uint64_t now);

/* Queues a waiter in its class. It is granted by a later tbucket_dispatch(). */
void tbucket_enqueue(struct tbucket *b, struct tbucket_waiter *w, int prio, tbucket_grant_cb cb,
                     void *arg, uint64_t now);
/* Removes a queued waiter; a no-op if it is not queued. */
void tbucket_cancel(struct tbucket *b, struct tbucket_waiter *w);

/* Grants tokens to queued waiters in priority/FIFO order, calling their callbacks (which may
 * enqueue or cancel others). Returns the time at which the next waiter can be granted, or
 * UINT64_MAX when none is queued. */
uint64_t tbucket_dispatch(struct tbucket *b, uint64_t now);

/* Stops all grants until `until` (never shortens a longer pause). */
void tbucket_pause_until(struct tbucket *b, uint64_t until);
uint64_t tbucket_paused_until(const struct tbucket *b);

/* Changes rate and burst keeping the tokens earned so far (capped by the new burst): a
 * reload never grants a fresh burst. */
void tbucket_resize(struct tbucket *b, struct rate rate, uint32_t burst, uint64_t now);

/* Tokens available now (fractional), and waiters queued. */
double tbucket_tokens(struct tbucket *b, uint64_t now);
size_t tbucket_queued(const struct tbucket *b);

#endif
