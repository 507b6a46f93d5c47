/*
 * budget: the schedule a month's API credits allow.
 *
 * A plan with monthly credits (source.h) can run dry long before the month ends: the shipped
 * schedule needs about 388,000 CoinGecko calls a month, a Demo key holds 10,000. budget_fit()
 * takes what each job of one source asks for (its interval, or `every = auto`) and what a run
 * costs, and returns the intervals that spend at most `credits` calls in `period_ms`:
 *
 *   1. Every job at its requested interval (an `auto` job at BUDGET_AUTO_MIN_MS). If that fits,
 *      nothing changes.
 *   2. `auto` jobs take what the fixed jobs leave, in equal shares of credits (never more often
 *      than BUDGET_AUTO_MIN_MS, never less often than BUDGET_STRETCH_CAP_MS).
 *   3. Fixed jobs are stretched one at a time, lowest `keep` first (for CoinGecko: market_caps,
 *      then prices, then assets), each as little as makes the rest fit and at most to
 *      BUDGET_STRETCH_CAP_MS (or its own interval when that is longer).
 *   4. If the schedule still does not fit, every interval is multiplied by one factor.
 *
 * An interval is never shorter than the one asked for. Intervals are rounded up to whole
 * seconds (to whole minutes past ten minutes), so the daemon logs readable schedules. With no
 * credits left at all, every job gets BUDGET_STRETCH_CAP_MS (its requests are refused until
 * the period rolls over; the runner says so once).
 *
 * Pure: no clock, no I/O; the daemon feeds it the ledger (runner.h) and the time left in the
 * month, --check-config a whole month with nothing used. Thread: any.
 */
#ifndef COINGEST_BUDGET_H
#define COINGEST_BUDGET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The shortest interval `every = auto` runs at, and how far one job is stretched before the
 * next one is touched (step 3). */
#define BUDGET_AUTO_MIN_MS    60000ull
#define BUDGET_STRETCH_CAP_MS (24ull * 3600 * 1000)

struct budget_job {
    /* in */
    uint64_t requested_ms;     /* the configured interval; ignored when auto */
    bool auto_every;           /* every = auto: as often as the credits allow */
    uint64_t requests_per_run; /* calls one run costs (0: the job costs nothing) */
    int keep;                  /* stretch order: lower values are stretched first */
    bool outside;              /* not fitted: runs at requested_ms and needs nothing of the
                                  credits (a backfill, which spends only what is spare) */
    /* out */
    uint64_t every_ms; /* the interval the budget allows (>= requested_ms) */
};

/*
 * Fills jobs[i].every_ms so that the n jobs together need at most `credits` calls in
 * `period_ms` (need = sum of requests_per_run * period_ms / every_ms). Returns true when the
 * requested schedule fitted unchanged (auto jobs aside), false when it was stretched.
 */
bool budget_fit(struct budget_job *jobs, size_t n, double credits, uint64_t period_ms);

/* Calls the jobs need in period_ms at their every_ms (as budget_fit set them). */
double budget_need(const struct budget_job *jobs, size_t n, uint64_t period_ms);

#endif
