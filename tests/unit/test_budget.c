/*
 * Unit tests for budget_fit (the schedule a month's credits allow), and a simulated month.
 *
 * The simulation plays a month minute by minute on a fake clock: jobs run when due on their
 * aligned grid, each run costs its requests, the ledger counts them, and the schedule is
 * refitted after every run the way the daemon does (runner_plan_schedule: what is left of the
 * credits over what is left of the month; a job moves only when its interval changes by more
 * than a tenth). A request is refused once the month's count reaches credits - reserve, as
 * the runner's credits check does. The assertions: the month never spends more than its
 * credits, no request is refused (the schedule fitted), and every job still runs in the last
 * days of the month.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/budget.h"

#define MINUTE 60000ull
#define HOUR   (60 * MINUTE)
#define DAY    (24 * HOUR)
#define MONTH  (30 * DAY)

/* The shipped schedule on the whole CoinGecko universe (17,500 coins): assets daily, 2
 * requests; prices every 5 minutes, 35 requests of 500 ids; market_caps hourly, 70 pages and
 * /global. keep: market_caps is stretched first, then prices, then assets. */
static void default_jobs(struct budget_job *j)
{
    j[0] = (struct budget_job){.requested_ms = DAY, .requests_per_run = 2, .keep = 3};
    j[1] = (struct budget_job){.requested_ms = 5 * MINUTE, .requests_per_run = 35, .keep = 2};
    j[2] = (struct budget_job){.requested_ms = HOUR, .requests_per_run = 71, .keep = 1};
}

static void test_fits_unchanged(void **state)
{
    (void)state;
    struct budget_job j[3];
    default_jobs(j);
    assert_true(budget_fit(j, 3, 1e9, MONTH));
    assert_int_equal(j[0].every_ms, DAY);
    assert_int_equal(j[1].every_ms, 5 * MINUTE);
    assert_int_equal(j[2].every_ms, HOUR);
}

static void test_stretch_order(void **state)
{
    (void)state;
    struct budget_job j[3];
    default_jobs(j);
    /* A Demo key: 10,000 less the 200 reserve. */
    assert_false(budget_fit(j, 3, 9800, MONTH));
    assert_true(budget_need(j, 3, MONTH) <= 9800);
    /* market_caps went first, as far as a stretch goes; then prices took the rest; assets is
     * untouched. */
    assert_int_equal(j[2].every_ms, BUDGET_STRETCH_CAP_MS);
    assert_true(j[1].every_ms > 5 * MINUTE && j[1].every_ms < BUDGET_STRETCH_CAP_MS);
    assert_int_equal(j[0].every_ms, DAY);
    /* Only as much as needed: a tenth less stretch would not fit. */
    struct budget_job k[3];
    memcpy(k, j, sizeof(k));
    k[1].every_ms = k[1].every_ms * 9 / 10;
    assert_true(budget_need(k, 3, MONTH) > 9800);

    /* Credits that only need market_caps stretched leave prices alone. */
    default_jobs(j);
    double need_prices = 35.0 * MONTH / (5 * MINUTE) + 2.0 * 30;
    assert_false(budget_fit(j, 3, need_prices + 10000, MONTH));
    assert_int_equal(j[1].every_ms, 5 * MINUTE);
    assert_true(j[2].every_ms > HOUR);
    assert_true(budget_need(j, 3, MONTH) <= need_prices + 10000);
}

static void test_auto_takes_the_rest(void **state)
{
    (void)state;
    struct budget_job j[2] = {
        {.requested_ms = HOUR, .requests_per_run = 2, .keep = 1},
        {.auto_every = true, .requests_per_run = 1, .keep = 2},
    };
    assert_true(budget_fit(j, 2, 9800, MONTH));
    assert_int_equal(j[0].every_ms, HOUR); /* the fixed job is kept, though it ranks lower */
    double need = budget_need(j, 2, MONTH);
    assert_true(need <= 9800);
    assert_true(need > 9800 * 0.9); /* and the auto job uses what is left */
    /* Plenty of credits: auto runs at its floor. */
    j[1].every_ms = 0;
    budget_fit(j, 2, 1e9, MONTH);
    assert_int_equal(j[1].every_ms, BUDGET_AUTO_MIN_MS);
}

static void test_nothing_left(void **state)
{
    (void)state;
    struct budget_job j[3];
    default_jobs(j);
    assert_false(budget_fit(j, 3, 0, MONTH));
    for (int i = 0; i < 3; i++)
        assert_true(j[i].every_ms >= BUDGET_STRETCH_CAP_MS);
    /* Too little even for daily runs: one factor for all, and it still fits. */
    default_jobs(j);
    assert_false(budget_fit(j, 3, 100, MONTH));
    assert_true(budget_need(j, 3, MONTH) <= 100);
}

/* A backfill job is not fitted: it keeps its interval and takes nothing from the live jobs. */
static void test_backfill_outside(void **state)
{
    (void)state;
    struct budget_job j[4];
    default_jobs(j);
    j[3] = (struct budget_job){
        .requested_ms = HOUR, .requests_per_run = 1000, .keep = 0, .outside = true};
    struct budget_job k[3];
    default_jobs(k);
    budget_fit(j, 4, 9800, MONTH);
    budget_fit(k, 3, 9800, MONTH);
    assert_int_equal(j[3].every_ms, HOUR);
    for (int i = 0; i < 3; i++)
        assert_int_equal(j[i].every_ms, k[i].every_ms);
    assert_true(budget_need(j, 4, MONTH) <= 9800);
}

/* ---- a simulated month ------------------------------------------------------------------- */

struct sim {
    struct budget_job jobs[3];
    uint64_t every[3]; /* the interval each job is scheduled at */
    uint64_t due[3];   /* its next run */
    uint64_t runs[3];  /* runs in the month */
    uint64_t last[3];  /* the last run's time */
    uint64_t used;     /* the ledger */
    uint64_t refused;  /* requests the credits check refused */
    uint64_t credits, reserve;
    uint64_t used_after_others; /* the count just after the other client's calls */
};

static uint64_t next_aligned(uint64_t after, uint64_t every)
{
    return (after / every + 1) * every;
}

/* runner_plan_schedule + the daemon's fit_schedule, at time t of a month of month_ms. */
static void refit(struct sim *s, uint64_t t, uint64_t month_ms)
{
    struct budget_job j[3];
    memcpy(j, s->jobs, sizeof(j));
    uint64_t usable = s->credits - s->reserve;
    double left = s->used < usable ? (double)(usable - s->used) : 0;
    budget_fit(j, 3, left, month_ms - t);
    for (int i = 0; i < 3; i++) {
        uint64_t cur = s->every[i];
        uint64_t diff = j[i].every_ms > cur ? j[i].every_ms - cur : cur - j[i].every_ms;
        if (cur && diff * 10 <= cur)
            continue;
        s->every[i] = j[i].every_ms;
        s->due[i] = next_aligned(t, s->every[i]);
    }
}

/* Plays a month; `others` calls of another client on the same key are counted at day 10. */
static void simulate(struct sim *s, uint64_t month_ms, uint64_t others)
{
    memset(s->every, 0, sizeof(s->every));
    refit(s, 0, month_ms);
    for (int i = 0; i < 3; i++)
        s->due[i] = 0; /* run_at_start */
    for (uint64_t t = 0; t < month_ms; t += MINUTE) {
        if (others && t == 10 * DAY) {
            s->used += others;
            s->used_after_others = s->used;
            refit(s, t, month_ms);
        }
        for (int i = 0; i < 3; i++) {
            if (t < s->due[i])
                continue;
            for (uint64_t r = 0; r < s->jobs[i].requests_per_run; r++) {
                if (s->used >= s->credits - s->reserve)
                    s->refused++;
                else
                    s->used++;
            }
            s->runs[i]++;
            s->last[i] = t;
            s->due[i] = next_aligned(t, s->every[i]);
            refit(s, t, month_ms);
        }
    }
}

static void test_simulated_month_demo(void **state)
{
    (void)state;
    struct sim s = {.credits = 10000, .reserve = 200};
    default_jobs(s.jobs);
    simulate(&s, MONTH, 0);
    printf("# demo month: used=%llu refused=%llu runs assets=%llu prices=%llu "
           "market_caps=%llu every prices=%llus market_caps=%llus\n",
           (unsigned long long)s.used, (unsigned long long)s.refused, (unsigned long long)s.runs[0],
           (unsigned long long)s.runs[1], (unsigned long long)s.runs[2],
           (unsigned long long)(s.every[1] / 1000), (unsigned long long)(s.every[2] / 1000));
    assert_true(s.used <= s.credits);
    assert_int_equal(s.refused, 0);
    /* Every job still runs at the end of the month. */
    for (int i = 0; i < 3; i++)
        assert_true(s.last[i] >= MONTH - 2 * DAY);
    /* And the month was used, not hoarded: at least half of it. */
    assert_true(s.used >= (s.credits - s.reserve) / 2);
}

static void test_simulated_month_shared_key(void **state)
{
    (void)state;
    /* Another client spends 4,000 of the key's calls on day 10: the schedule stretches
     * further and the month still does not run dry. */
    struct sim s = {.credits = 10000, .reserve = 200};
    default_jobs(s.jobs);
    simulate(&s, MONTH, 4000);
    assert_true(s.used <= s.credits);
    assert_int_equal(s.refused, 0);
    for (int i = 0; i < 3; i++)
        assert_true(s.last[i] >= MONTH - 2 * DAY);
}

static void test_simulated_month_exhausted(void **state)
{
    (void)state;
    /* Another client spends the rest of the month on day 10: from then on no request is
     * sent (each one is refused by the credits check) until the month rolls over. */
    struct sim s = {.credits = 10000, .reserve = 200};
    default_jobs(s.jobs);
    simulate(&s, MONTH, 9000);
    assert_true(s.used_after_others >= s.credits - s.reserve);
    assert_int_equal(s.used, s.used_after_others); /* not one request more */
    assert_true(s.refused > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fits_unchanged),
        cmocka_unit_test(test_stretch_order),
        cmocka_unit_test(test_auto_takes_the_rest),
        cmocka_unit_test(test_nothing_left),
        cmocka_unit_test(test_backfill_outside),
        cmocka_unit_test(test_simulated_month_demo),
        cmocka_unit_test(test_simulated_month_shared_key),
        cmocka_unit_test(test_simulated_month_exhausted),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
