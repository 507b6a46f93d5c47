/*
 * budget: the schedule a month's API credits allow (see budget.h for the four steps).
 *
 * Work is in doubles (calls and milliseconds) and the intervals are rounded up at the end:
 * rounding up only lowers the need, so the result still fits.
 */
#include "coingest/budget.h"

#include <math.h>

static double job_need(const struct budget_job *j, double every_ms, uint64_t period_ms)
{
    if (j->outside || !j->requests_per_run || every_ms <= 0)
        return 0;
    return (double)j->requests_per_run * (double)period_ms / every_ms;
}

double budget_need(const struct budget_job *jobs, size_t n, uint64_t period_ms)
{
    double need = 0;
    for (size_t i = 0; i < n; i++)
        need += job_need(&jobs[i], (double)jobs[i].every_ms, period_ms);
    return need;
}

static double total_need(const struct budget_job *jobs, const double *every, size_t n,
                         uint64_t period_ms)
{
    double need = 0;
    for (size_t i = 0; i < n; i++)
        need += job_need(&jobs[i], every[i], period_ms);
    return need;
}

/* Whole seconds, or whole minutes past ten minutes, never below `floor_ms`. */
static uint64_t round_up(double ms, uint64_t floor_ms)
{
    uint64_t v = ms >= 1.8e19 ? UINT64_MAX / 2 : (uint64_t)ceil(ms);
    if (v < floor_ms)
        v = floor_ms;
    uint64_t unit = v > 600000 ? 60000 : 1000;
    return (v + unit - 1) / unit * unit;
}

bool budget_fit(struct budget_job *jobs, size_t n, double credits, uint64_t period_ms)
{
    enum { MAX_JOBS = 64 };
    double every[MAX_JOBS] = {0};
    if (n > MAX_JOBS)
        n = MAX_JOBS;
    double T = (double)period_ms, cap = (double)BUDGET_STRETCH_CAP_MS;

    /* 1. as asked (auto jobs as often as they may run) */
    size_t nauto = 0;
    double fixed = 0;
    for (size_t i = 0; i < n; i++) {
        if (jobs[i].auto_every && !jobs[i].outside) {
            every[i] = (double)BUDGET_AUTO_MIN_MS;
            nauto++;
        } else {
            every[i] = (double)(jobs[i].requested_ms ? jobs[i].requested_ms : 1);
            fixed += job_need(&jobs[i], every[i], period_ms);
        }
    }
    bool fitted = true;
    if (credits <= 0) {
        /* Nothing left to spend: every job waits as long as a stretch may go. */
        for (size_t i = 0; i < n; i++)
            if (jobs[i].requests_per_run && !jobs[i].outside && every[i] < cap)
                every[i] = cap;
        fitted = false;
        goto out;
    }
    if (total_need(jobs, every, n, period_ms) <= credits)
        goto out;

    /* 2. auto jobs share what the fixed ones leave */
    if (nauto) {
        double share = (credits - fixed) / (double)nauto;
        for (size_t i = 0; i < n; i++) {
            if (!jobs[i].auto_every || !jobs[i].requests_per_run || jobs[i].outside)
                continue;
            double e = share > 0 ? (double)jobs[i].requests_per_run * T / share : cap;
            every[i] = e < (double)BUDGET_AUTO_MIN_MS ? (double)BUDGET_AUTO_MIN_MS
                       : e > cap                      ? cap
                                                      : e;
        }
        if (total_need(jobs, every, n, period_ms) <= credits)
            goto out;
    }

    /* 3. fixed jobs, lowest keep first, one at a time up to the cap */
    fitted = false;
    bool done[MAX_JOBS] = {0};
    for (;;) {
        size_t k = n;
        for (size_t i = 0; i < n; i++)
            if (!jobs[i].auto_every && !done[i] && jobs[i].requests_per_run && !jobs[i].outside &&
                (k == n || jobs[i].keep < jobs[k].keep))
                k = i;
        if (k == n)
            break;
        done[k] = true;
        double own = job_need(&jobs[k], every[k], period_ms);
        double avail = credits - (total_need(jobs, every, n, period_ms) - own);
        double kcap = every[k] > cap ? every[k] : cap;
        double r = (double)jobs[k].requests_per_run;
        if (avail > 0 && avail >= r * T / kcap) {
            double e = r * T / avail;
            if (e > every[k])
                every[k] = e;
            goto out;
        }
        every[k] = kcap;
    }

    /* 4. one factor for all */
    double need = total_need(jobs, every, n, period_ms);
    if (need > credits) {
        double f = need / credits;
        for (size_t i = 0; i < n; i++)
            if (!jobs[i].outside)
                every[i] *= f;
    }

out:
    for (size_t i = 0; i < n; i++) {
        uint64_t floor_ms =
            jobs[i].auto_every && !jobs[i].outside ? BUDGET_AUTO_MIN_MS : jobs[i].requested_ms;
        jobs[i].every_ms = round_up(every[i], floor_ms);
    }
    return fitted;
}
