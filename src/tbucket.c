/*
 * tbucket: a token bucket with a priority queue of waiters and a server-advised pause.
 *
 * Exact arithmetic. Tokens are kept as integer credits: one token is rate.period_ms credits
 * and every millisecond earns rate.count credits, so "count tokens per period, continuously,
 * fractions kept" holds exactly with no floating-point drift, and the time at which the next
 * token is complete is an exact ceiling division. The bucket holds at most burst tokens
 * (burst * period_ms credits).
 *
 * What it guarantees. Starting full, in any window of rate.period_ms milliseconds the bucket
 * grants at most burst + count - 1 tokens (burst at the start plus less than one period's
 * earnings before the window's last millisecond); with the default burst of 1 that is
 * exactly `count` per period, the API's own limit.
 *
 * Waiters. One FIFO list per priority class; tbucket_dispatch() always serves the first
 * waiter of the lowest non-empty class. tbucket_try_take() never overtakes a queued waiter,
 * so a request that arrives later can never jump the queue. Callbacks run from dispatch and
 * may enqueue, cancel, pause or resize; the loop re-reads the state after each grant.
 *
 * Pause. While now < paused_until nothing is granted; tokens keep accruing up to the burst,
 * so when the pause ends the waiting requests go out at the bucket's normal pace (at most a
 * burst at once), as the server asked for a wait and not for a lower rate.
 */
#include "coingest/tbucket.h"

#include <stdlib.h>

struct tbucket {
    struct rate rate;
    uint32_t burst;
    uint64_t credits;  /* tokens * period_ms */
    uint64_t capacity; /* burst * period_ms (saturated) */
    uint64_t last;     /* time credits were last brought up to date */
    uint64_t paused_until;
    size_t queued;
    struct list_link heads[TBUCKET_PRIO_COUNT]; /* one queue per priority class */
};

static uint64_t mul_sat(uint64_t a, uint64_t b)
{
    if (a != 0 && b > UINT64_MAX / a)
        return UINT64_MAX;
    return a * b;
}

static void set_rate(struct tbucket *b, struct rate rate, uint32_t burst)
{
    b->rate = rate;
    b->burst = burst ? burst : 1; /* a bucket that can hold nothing could never grant */
    b->capacity = mul_sat(b->burst, rate.period_ms);
}

/* Brings the credits up to `now` (time never goes back for the bucket). */
static void refill(struct tbucket *b, uint64_t now)
{
    if (now <= b->last)
        return;
    uint64_t elapsed = now - b->last;
    b->last = now;
    if (b->credits >= b->capacity)
        return;
    uint64_t need = b->capacity - b->credits;
    if (elapsed > need / b->rate.count)
        b->credits = b->capacity;
    else
        b->credits += elapsed * b->rate.count;
}

/* When the bucket will hold one whole token (>= now). */
static uint64_t token_time(const struct tbucket *b, uint64_t now)
{
    uint64_t token = b->rate.period_ms;
    if (b->credits >= token)
        return now;
    uint64_t deficit = token - b->credits;
    return now + (deficit + b->rate.count - 1) / b->rate.count;
}

struct tbucket *tbucket_new(struct rate rate, uint32_t burst, uint64_t now)
{
    if (rate.count == 0 || rate.period_ms == 0)
        return NULL;
    struct tbucket *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    set_rate(b, rate, burst);
    b->credits = b->capacity;
    b->last = now;
    for (int i = 0; i < TBUCKET_PRIO_COUNT; i++)
        list_init(&b->heads[i]);
    return b;
}

void tbucket_free(struct tbucket *b)
{
    free(b);
}

static bool paused(const struct tbucket *b, uint64_t now)
{
    return now < b->paused_until;
}

bool tbucket_try_take(struct tbucket *b, uint64_t now)
{
    refill(b, now);
    if (paused(b, now) || b->queued > 0 || b->credits < b->rate.period_ms)
        return false;
    b->credits -= b->rate.period_ms;
    return true;
}

void tbucket_enqueue(struct tbucket *b, struct tbucket_waiter *w, int prio, tbucket_grant_cb cb,
                     void *arg, uint64_t now)
{
    if (w->queued)
        tbucket_cancel(b, w);
    if (prio < 0)
        prio = 0;
    if (prio >= TBUCKET_PRIO_COUNT)
        prio = TBUCKET_PRIO_COUNT - 1;
    w->cb = cb;
    w->arg = arg;
    w->enqueued_at = now;
    w->prio = prio;
    list_append(&b->heads[prio], &w->link);
    w->queued = true;
    b->queued++;
}

void tbucket_cancel(struct tbucket *b, struct tbucket_waiter *w)
{
    if (!w->queued)
        return;
    list_remove(&w->link);
    w->queued = false;
    b->queued--;
}

static struct tbucket_waiter *first_waiter(struct tbucket *b)
{
    for (int i = 0; i < TBUCKET_PRIO_COUNT; i++)
        if (!list_empty(&b->heads[i]))
            return LIST_CONTAINER_OF(b->heads[i].next, struct tbucket_waiter, link);
    return NULL;
}

uint64_t tbucket_dispatch(struct tbucket *b, uint64_t now)
{
    for (;;) {
        refill(b, now);
        struct tbucket_waiter *w = first_waiter(b);
        if (!w)
            return UINT64_MAX;
        if (paused(b, now)) {
            uint64_t t = token_time(b, now);
            return t > b->paused_until ? t : b->paused_until;
        }
        if (b->credits < b->rate.period_ms)
            return token_time(b, now);
        b->credits -= b->rate.period_ms;
        tbucket_cancel(b, w);
        w->cb(w, w->arg);
    }
}

void tbucket_pause_until(struct tbucket *b, uint64_t until)
{
    if (until > b->paused_until)
        b->paused_until = until;
}

uint64_t tbucket_paused_until(const struct tbucket *b)
{
    return b->paused_until;
}

void tbucket_resize(struct tbucket *b, struct rate rate, uint32_t burst, uint64_t now)
{
    /* A rate that grants nothing is not a rate; config validation rejects it, and keeping
     * the old one is the only safe thing to do here. */
    if (rate.count == 0 || rate.period_ms == 0)
        return;
    refill(b, now);
    /* The same number of tokens in the new unit, rounded down (never a gift). */
    unsigned __int128 scaled = (unsigned __int128)b->credits * rate.period_ms / b->rate.period_ms;
    set_rate(b, rate, burst);
    b->credits = scaled > b->capacity ? b->capacity : (uint64_t)scaled;
}

double tbucket_tokens(struct tbucket *b, uint64_t now)
{
    refill(b, now);
    return (double)b->credits / (double)b->rate.period_ms;
}

size_t tbucket_queued(const struct tbucket *b)
{
    return b->queued;
}
