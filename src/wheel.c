/*
 * wheel: a hierarchical timing wheel with millisecond resolution.
 *
 * Layout. Six levels of 64 slots each. Level L covers bits [6L, 6L+6) of a time, so level 0
 * slots are single milliseconds and level 5 slots span 2^30 ms (12.4 days); together the
 * levels cover one aligned block of 2^36 ms (795 days). Each level keeps a 64-bit bitmap of
 * its non-empty slots, so finding the next event is a count-trailing-zeros, never a walk.
 *
 * Placement. A pending timer with expiry e sits at the level of the highest 6-bit group in
 * which e differs from the wheel's time `now` (e XOR now), in the slot given by e's bits of
 * that group. Timers whose expiry differs from now above bit 36 go to an overflow list; timers
 * already due (e <= now) go to a due list that the next advance fires first. Because a
 * timer's list depends only on (e, now), two timers with the same expiry are always in the
 * same list: that is what keeps ties in the order they were added, across cascades.
 *
 * Advancing. The next event is the first set slot of the lowest non-empty level: at level 0
 * it is a firing time, at level L > 0 it is the moment `now` enters that slot's block, when
 * the slot is cascaded (its timers re-placed, in order, at lower levels). Every event lies in
 * the current block of the levels above it, so events come in time order and advance() only
 * visits non-empty slots: an idle jump of a day costs a few cascades, not 86 million steps.
 * Each timer is cascaded at most once per level, so fire costs O(levels) amortised.
 *
 * The overflow list is re-placed as a whole when `now` reaches the 2^36 block of its earliest
 * member (a lower bound is kept; cancels do not update it), which in practice never happens
 * for a daemon: it is there so any 64-bit expiry is correct.
 */
#include "coingest/wheel.h"

#include <stdlib.h>

#include "coingest/list.h"

#define LEVEL_BITS    6
#define LEVEL_SLOTS   (1 << LEVEL_BITS)
#define LEVELS        6
#define SPAN_BITS     (LEVEL_BITS * LEVELS)
#define SLOT_DUE      (LEVELS * LEVEL_SLOTS)
#define SLOT_OVERFLOW (SLOT_DUE + 1)
#define NLISTS        (SLOT_OVERFLOW + 1)
/* next_due() scans a cascading slot for its true minimum only when it is this short. */
#define NEXT_DUE_SCAN 32

struct wheel {
    uint64_t now;
    size_t count;
    bool advancing;
    uint64_t occupied[LEVELS];
    uint64_t overflow_min; /* lower bound of the overflow expiries; UINT64_MAX when empty */
    struct list_link lists[NLISTS]; /* of struct wheel_timer, by `link` */
};

#define WHEEL_TIMER_OF(l) LIST_CONTAINER_OF(l, struct wheel_timer, link)

static unsigned highest_bit(uint64_t x)
{
    return 63u - (unsigned)__builtin_clzll(x);
}

static unsigned lowest_bit(uint64_t x)
{
    return (unsigned)__builtin_ctzll(x);
}

/* Puts tm (not linked) into the list its expiry and the wheel's time select. `cascading`:
 * called while advancing, where e == now is a level-0 slot fired in this pass; from wheel_add
 * an expiry <= now goes to the due list for the next advance instead. */
static void place(struct wheel *w, struct wheel_timer *tm, bool cascading)
{
    uint64_t e = tm->expires;
    int idx;

    if (e < w->now || (e == w->now && !cascading)) {
        idx = SLOT_DUE;
    } else {
        uint64_t x = e ^ w->now;
        unsigned level = x ? highest_bit(x) / LEVEL_BITS : 0;
        if (level >= LEVELS) {
            idx = SLOT_OVERFLOW;
            if (e < w->overflow_min)
                w->overflow_min = e;
        } else {
            unsigned slot = (unsigned)(e >> (level * LEVEL_BITS)) & (LEVEL_SLOTS - 1);
            w->occupied[level] |= UINT64_C(1) << slot;
            idx = (int)(level * LEVEL_SLOTS + slot);
        }
    }
    list_append(&w->lists[idx], &tm->link);
    tm->slot = idx;
}

struct wheel *wheel_new(uint64_t now)
{
    struct wheel *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->now = now;
    w->overflow_min = UINT64_MAX;
    for (int i = 0; i < NLISTS; i++)
        list_init(&w->lists[i]);
    return w;
}

void wheel_free(struct wheel *w)
{
    free(w);
}

void wheel_timer_init(struct wheel_timer *tm, wheel_cb cb, void *arg)
{
    list_init(&tm->link);
    tm->expires = 0;
    tm->cb = cb;
    tm->arg = arg;
    tm->slot = -1;
}

bool wheel_timer_pending(const struct wheel_timer *tm)
{
    return tm->slot >= 0;
}

void wheel_cancel(struct wheel *w, struct wheel_timer *tm)
{
    if (tm->slot < 0)
        return;
    int idx = tm->slot;
    list_remove(&tm->link);
    tm->slot = -1;
    w->count--;
    /* The bit mirrors "list not empty"; re-deriving it here is right in every state, also
     * for a timer sitting in a list that advance() has spliced out to fire. */
    if (idx < SLOT_DUE && list_empty(&w->lists[idx]))
        w->occupied[idx / LEVEL_SLOTS] &= ~(UINT64_C(1) << (idx % LEVEL_SLOTS));
}

void wheel_add(struct wheel *w, struct wheel_timer *tm, uint64_t expires)
{
    wheel_cancel(w, tm);
    tm->expires = expires;
    place(w, tm, false);
    w->count++;
}

/* The lowest non-empty level (LEVELS for the overflow list), or -1 when the wheel proper and
 * the overflow list are empty. */
static int lowest_level(const struct wheel *w)
{
    for (int l = 0; l < LEVELS; l++)
        if (w->occupied[l])
            return l;
    return list_empty(&w->lists[SLOT_OVERFLOW]) ? -1 : LEVELS;
}

/* When the next event of level `l` (as lowest_level returned it) happens. */
static uint64_t level_event(const struct wheel *w, int l)
{
    if (l < LEVELS) {
        unsigned shift = (unsigned)l * LEVEL_BITS;
        unsigned slot = lowest_bit(w->occupied[l]);
        uint64_t block = (w->now >> (shift + LEVEL_BITS)) << (shift + LEVEL_BITS);
        return block | ((uint64_t)slot << shift);
    }
    uint64_t next_block = ((w->now >> SPAN_BITS) + 1) << SPAN_BITS;
    if (next_block <= w->now) /* the last block of the 64-bit range */
        next_block = UINT64_MAX;
    uint64_t min_block = (w->overflow_min >> SPAN_BITS) << SPAN_BITS;
    return min_block > next_block ? min_block : next_block;
}

/* Fires, in order, every timer of the list `from` (spliced out first, so callbacks that add
 * timers never extend the batch being fired). */
static size_t fire_list(struct wheel *w, struct list_link *from)
{
    struct list_link batch, *l;
    size_t n = 0;

    list_init(&batch);
    list_splice(from, &batch);
    while ((l = list_first(&batch)) != NULL) {
        struct wheel_timer *tm = WHEEL_TIMER_OF(l);
        list_remove(l);
        tm->slot = -1;
        w->count--;
        n++;
        tm->cb(tm, tm->arg);
    }
    return n;
}

/* Re-places every timer of the list `from` against the wheel's (new) time, keeping order. */
static void cascade_list(struct wheel *w, struct list_link *from)
{
    struct list_link batch, *l;

    list_init(&batch);
    list_splice(from, &batch);
    while ((l = list_first(&batch)) != NULL) {
        list_remove(l);
        place(w, WHEEL_TIMER_OF(l), true);
    }
}

size_t wheel_advance(struct wheel *w, uint64_t now)
{
    size_t fired = 0;

    /* Re-entrant advances would break the event order; time never goes back. */
    if (w->advancing)
        return 0;
    w->advancing = true;
    if (now < w->now)
        now = w->now;

    fired += fire_list(w, &w->lists[SLOT_DUE]);

    for (;;) {
        int l = lowest_level(w);
        if (l < 0)
            break;
        uint64_t t = level_event(w, l);
        if (t > now)
            break;
        w->now = t;
        if (l == 0) {
            unsigned slot = lowest_bit(w->occupied[0]);
            w->occupied[0] &= ~(UINT64_C(1) << slot);
            fired += fire_list(w, &w->lists[slot]);
        } else if (l < LEVELS) {
            unsigned slot = lowest_bit(w->occupied[l]);
            w->occupied[l] &= ~(UINT64_C(1) << slot);
            cascade_list(w, &w->lists[(unsigned)l * LEVEL_SLOTS + slot]);
        } else {
            w->overflow_min = UINT64_MAX;
            cascade_list(w, &w->lists[SLOT_OVERFLOW]);
        }
    }
    /* Nothing is due in (w->now, now]; every pending expiry stays in the same block of the
     * levels above its own, so the placement invariant holds at the new time. */
    w->now = now;
    w->advancing = false;
    return fired;
}

/* The earliest expiry in a list when it is short enough to scan, else `fallback`. */
static uint64_t scan_min(const struct list_link *head, uint64_t fallback)
{
    uint64_t min = UINT64_MAX;
    int n = 0;
    const struct list_link *l;
    LIST_FOR_EACH (l, head) {
        if (++n > NEXT_DUE_SCAN)
            return fallback;
        const struct wheel_timer *tm = WHEEL_TIMER_OF(l);
        if (tm->expires < min)
            min = tm->expires;
    }
    return min;
}

uint64_t wheel_next_due(const struct wheel *w)
{
    if (!list_empty(&w->lists[SLOT_DUE]))
        return w->now;
    int l = lowest_level(w);
    if (l < 0)
        return UINT64_MAX;
    uint64_t t = level_event(w, l);
    if (l == 0)
        return t;
    /* A cascade is not a firing: when the slot is short, report its true earliest expiry so
     * the loop sleeps straight through the cascades to the first real firing. The first
     * slot of the lowest level holds the earliest expiry of the whole wheel. */
    if (l < LEVELS)
        return scan_min(&w->lists[(unsigned)l * LEVEL_SLOTS + lowest_bit(w->occupied[l])], t);
    return scan_min(&w->lists[SLOT_OVERFLOW], t);
}

size_t wheel_count(const struct wheel *w)
{
    return w->count;
}
