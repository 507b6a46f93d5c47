/*
 * Unit tests for the job scheduler, in simulated time.
 *
 * The scheduler runs on a bare wheel (sched_new_on_wheel) with a test-controlled monotonic
 * clock and wall clock. sim_run() plays an ideal event loop: it advances both clocks to the
 * wheel's next due time, fires, and repeats. Wall-clock steps, suspends and a blocked loop
 * are made by moving one clock or both by hand. Runs are recorded with the wall time they
 * started at; a run lasts as long as the test says (a done timer on the same wheel). Log
 * lines go to a temporary file so tests can count what the scheduler said.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/log.h"
#include "coingest/sched.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "coingest/wheel.h"

#define MINUTE 60000ull
#define HOUR   (60 * MINUTE)
#define DAY    (24 * HOUR)

static FILE *g_logf;

static uint64_t iso(const char *s)
{
    int64_t ms;
    assert_int_equal(util_parse_iso8601(s, &ms), 0);
    return (uint64_t)ms;
}

/* How many log lines since the last call contain `needle`; forgets them. */
static int log_count(const char *needle)
{
    char line[LOG_LINE_MAX + 2];
    int n = 0;
    fflush(g_logf);
    rewind(g_logf);
    while (fgets(line, sizeof(line), g_logf))
        if (strstr(line, needle))
            n++;
    assert_int_equal(ftruncate(fileno(g_logf), 0), 0);
    rewind(g_logf);
    return n;
}

/* ---- the simulated loop ---- */

struct sim {
    uint64_t mono, wall;
    struct wheel *w;
    struct sched *s;
};

static uint64_t sim_mono(void *arg)
{
    return ((struct sim *)arg)->mono;
}

static uint64_t sim_wall(void *arg)
{
    return ((struct sim *)arg)->wall;
}

static void sim_init(struct sim *m, uint64_t wall, uint64_t seed)
{
    memset(m, 0, sizeof(*m));
    m->mono = 5000;
    m->wall = wall;
    m->w = wheel_new(m->mono);
    assert_non_null(m->w);
    m->s = sched_new_on_wheel(m->w, sim_mono, m);
    assert_non_null(m->s);
    sched_set_clock(m->s, sim_wall, m);
    sched_set_seed(m->s, seed);
}

static void sim_free(struct sim *m)
{
    sched_free(m->s);
    wheel_free(m->w);
}

/* Lets `dur` ms pass on both clocks, firing every timer at its time. */
static void sim_run(struct sim *m, uint64_t dur)
{
    uint64_t end = m->mono + dur;
    for (;;) {
        uint64_t next = wheel_next_due(m->w);
        if (next > end)
            break;
        if (next > m->mono) {
            m->wall += next - m->mono;
            m->mono = next;
        }
        wheel_advance(m->w, m->mono);
    }
    m->wall += end - m->mono;
    m->mono = end;
    wheel_advance(m->w, end);
}

static void sim_run_until_wall(struct sim *m, uint64_t wall)
{
    assert_true(wall >= m->wall);
    sim_run(m, wall - m->wall);
}

/* ---- a recorded job ---- */

#define REC_MAX 8192

struct rec {
    struct sim *sim;
    struct sched_entry *job;
    uint64_t starts[REC_MAX];
    size_t n;
    uint64_t hold_ms;       /* run length; 0: done inside the run callback */
    uint64_t first_hold_ms; /* run length of the first run, if set */
    struct wheel_timer done_tm;
    int active, max_active;
};

static void rec_done(struct wheel_timer *tm, void *arg)
{
    struct rec *r = arg;
    (void)tm;
    r->active--;
    sched_job_done(r->job);
}

static void rec_run(struct sched_entry *job, void *arg)
{
    struct rec *r = arg;
    struct sched_entry_stats st;
    r->job = job;
    assert_true(r->n < REC_MAX);
    r->starts[r->n++] = r->sim->wall;
    if (++r->active > r->max_active)
        r->max_active = r->active;
    sched_job_stats(job, &st);
    assert_true(st.running);
    uint64_t hold = r->n == 1 && r->first_hold_ms ? r->first_hold_ms : r->hold_ms;
    if (hold == 0) {
        r->active--;
        sched_job_done(job);
    } else {
        wheel_add(r->sim->w, &r->done_tm, r->sim->mono + hold);
    }
}

static struct rec *rec_new(struct sim *m)
{
    struct rec *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    r->sim = m;
    wheel_timer_init(&r->done_tm, rec_done, r);
    return r;
}

static struct cfg_job job_cfg(uint64_t every, bool align, bool at_start)
{
    return (struct cfg_job){.name = "prices",
                            .enabled = true,
                            .every_ms = every,
                            .align = align,
                            .offset_ms = 0,
                            .jitter_ms = 0,
                            .run_at_start = at_start};
}

static struct sched_entry_stats stats(const struct sched_entry *job)
{
    struct sched_entry_stats st;
    sched_job_stats(job, &st);
    return st;
}

/* ---- tests ---- */

static void test_next_aligned(void **state)
{
    (void)state;
    uint64_t t = iso("2026-11-23T13:02:17.123Z");
    assert_true(sched_next_aligned(t, MINUTE, 0) == iso("2026-11-23T13:03:00Z"));
    assert_true(sched_next_aligned(t, 5 * MINUTE, 0) == iso("2026-11-23T13:05:00Z"));
    assert_true(sched_next_aligned(t, HOUR, 0) == iso("2026-11-23T14:00:00Z"));
    assert_true(sched_next_aligned(t, DAY, 0) == iso("2026-11-24T00:00:00Z"));
    /* Strictly after: a grid point itself gives the next one. */
    uint64_t g = iso("2026-11-23T13:05:00Z");
    assert_true(sched_next_aligned(g, 5 * MINUTE, 0) == iso("2026-11-23T13:10:00Z"));
    assert_true(sched_next_aligned(g - 1, 5 * MINUTE, 0) == g);
    /* Offsets shift the grid; a period or more wraps round. */
    assert_true(sched_next_aligned(t, 5 * MINUTE, 30000) == iso("2026-11-23T13:05:30Z"));
    assert_true(sched_next_aligned(t, 5 * MINUTE, 7 * MINUTE) == iso("2026-11-23T13:07:00Z"));
    assert_true(sched_next_aligned(t, DAY, 90 * MINUTE) == iso("2026-11-24T01:30:00Z"));
    assert_true(sched_next_aligned(t, HOUR, 15 * MINUTE) == iso("2026-11-23T13:15:00Z"));
    /* Near the epoch, and the degenerate period. */
    assert_true(sched_next_aligned(0, 5 * MINUTE, 0) == 5 * MINUTE);
    assert_true(sched_next_aligned(10, 5 * MINUTE, 20) == 20);
    assert_true(sched_next_aligned(t, 0, 0) == UINT64_MAX);

    struct cfg_job c = job_cfg(5 * MINUTE, false, false);
    assert_true(sched_next_tick(&c, t) == t + 5 * MINUTE);
    c.align = true;
    assert_true(sched_next_tick(&c, t) == g);
}

/* A 5 m aligned job starting mid-interval: one start run, then exactly on :05, :10, ...
 * even when every run takes four minutes. */
static void test_aligned_run_at_start_no_drift(void **state)
{
    (void)state;
    struct sim m;
    uint64_t t0 = iso("2026-11-23T13:02:17.123Z");
    sim_init(&m, t0, 1);
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, true);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    assert_non_null(job);
    assert_string_equal(sched_job_name(job), "prices");
    /* Not inline: the start run waits for the loop. */
    assert_int_equal(r->n, 0);
    sim_run(&m, 0);
    assert_int_equal(r->n, 1);
    assert_true(r->starts[0] == t0);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T13:05:00Z"));

    r->hold_ms = 4 * MINUTE;
    sim_run_until_wall(&m, iso("2026-11-23T13:04:59.999Z"));
    assert_int_equal(r->n, 1);
    sim_run(&m, 1);
    assert_int_equal(r->n, 2);
    assert_true(r->starts[1] == iso("2026-11-23T13:05:00Z"));

    sim_run_until_wall(&m, iso("2026-11-23T14:05:00Z"));
    assert_int_equal(r->n, 14);
    for (size_t i = 1; i < r->n; i++)
        assert_true(r->starts[i] == iso("2026-11-23T13:05:00Z") + (i - 1) * 5 * MINUTE);
    struct sched_entry_stats st = stats(job);
    assert_int_equal(st.runs, 14);
    assert_int_equal(st.skipped, 0);
    assert_int_equal(st.missed, 0);
    assert_true(st.running);
    assert_true(st.last_start_wall_ms == iso("2026-11-23T14:05:00Z"));
    assert_true(st.last_end_wall_ms == iso("2026-11-23T14:04:00Z"));
    assert_int_equal(r->max_active, 1);
    free(r);
    sim_free(&m);
}

/* Alignment on 1 m, 5 m, 1 h and 24 h, with and without an offset. */
static void test_alignment_periods(void **state)
{
    (void)state;
    const uint64_t every[] = {MINUTE, 5 * MINUTE, HOUR, DAY};
    const uint64_t offset[] = {0, 20000, 0, 7 * MINUTE, 0, 15 * MINUTE, 0, 90 * MINUTE};
    uint64_t t0 = iso("2026-11-23T13:02:17.123Z");
    for (size_t i = 0; i < ARRAY_SIZE(every); i++) {
        for (int k = 0; k < 2; k++) {
            struct sim m;
            sim_init(&m, t0, 2);
            struct rec *r = rec_new(&m);
            struct cfg_job c = job_cfg(every[i], true, false);
            c.offset_ms = offset[2 * i + (size_t)k];
            struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
            uint64_t first = sched_next_aligned(t0, every[i], c.offset_ms);
            assert_true(stats(job).next_due_wall_ms == first);
            sim_run_until_wall(&m, first + 3 * every[i]);
            assert_int_equal(r->n, 4);
            for (size_t n = 0; n < r->n; n++) {
                assert_true(r->starts[n] == first + n * every[i]);
                assert_true(r->starts[n] % every[i] == c.offset_ms % every[i]);
            }
            if (every[i] == DAY)
                assert_true(first == iso(k ? "2026-11-24T01:30:00Z" : "2026-11-24T00:00:00Z"));
            free(r);
            sim_free(&m);
        }
    }
}

/* Unaligned: every 7 s from the moment the job was added, whatever the runs take. */
static void test_unaligned_no_drift(void **state)
{
    (void)state;
    struct sim m;
    uint64_t t0 = iso("2026-11-23T13:02:17.123Z");
    sim_init(&m, t0, 3);
    struct rec *r = rec_new(&m);
    r->hold_ms = 3000;
    struct cfg_job c = job_cfg(7000, false, false);
    sched_add(m.s, &c, rec_run, r);
    sim_run(&m, 70000);
    assert_int_equal(r->n, 10);
    for (size_t i = 0; i < r->n; i++)
        assert_true(r->starts[i] == t0 + (i + 1) * 7000);
    free(r);
    sim_free(&m);
}

/* A run longer than the period: the ticks during it are skipped and counted, never run
 * alongside it, and the log says so once. */
static void test_skip_on_overlap(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 4);
    log_count("");
    struct rec *r = rec_new(&m);
    r->first_hold_ms = 12 * MINUTE;
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T13:20:00Z"));
    assert_int_equal(r->n, 3);
    assert_true(r->starts[0] == iso("2026-11-23T13:00:00Z"));
    assert_true(r->starts[1] == iso("2026-11-23T13:15:00Z"));
    assert_true(r->starts[2] == iso("2026-11-23T13:20:00Z"));
    assert_int_equal(r->max_active, 1);
    struct sched_entry_stats st = stats(job);
    assert_int_equal(st.runs, 3);
    assert_int_equal(st.skipped, 2);
    assert_int_equal(st.missed, 0);
    assert_true(st.last_end_wall_ms == iso("2026-11-23T13:20:00Z"));
    assert_int_equal(log_count("tick skipped"), 1);
    /* A done with no run going is harmless. */
    sched_job_done(job);
    sched_job_done(job);
    assert_int_equal(stats(job).runs, 3);
    free(r);
    sim_free(&m);
}

/* The wall clock jumps an hour ahead (NTP step, resume): one run, the missed ticks counted
 * and logged, then back on the grid. */
static void test_clock_step_forward(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 5);
    log_count("");
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T13:02:30Z"));
    assert_int_equal(r->n, 1);

    m.wall += HOUR; /* 14:02:30 */
    /* Noticed within the recheck interval. */
    sim_run(&m, SCHED_RECHECK_MS);
    assert_int_equal(r->n, 2);
    assert_true(r->starts[1] == iso("2026-11-23T14:03:00Z"));
    struct sched_entry_stats st = stats(job);
    assert_int_equal(st.missed, 11); /* 13:10 ... 14:00; 13:05 is the one that ran */
    assert_int_equal(st.runs, 2);
    assert_int_equal(log_count("missed ticks"), 1);
    assert_true(st.next_due_wall_ms == iso("2026-11-23T14:05:00Z"));

    sim_run_until_wall(&m, iso("2026-11-23T14:10:00Z"));
    assert_int_equal(r->n, 4);
    assert_true(r->starts[2] == iso("2026-11-23T14:05:00Z"));
    assert_true(r->starts[3] == iso("2026-11-23T14:10:00Z"));
    assert_int_equal(stats(job).missed, 11);
    free(r);
    sim_free(&m);
}

/* The loop is blocked (or the machine suspended) for an hour: both clocks move, the timer
 * fires late once, and there is no storm of catch-up runs. */
static void test_long_pause(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 6);
    log_count("");
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T13:00:00Z"));
    assert_int_equal(r->n, 1);

    m.mono += HOUR + 7000;
    m.wall += HOUR + 7000;
    wheel_advance(m.w, m.mono);
    assert_int_equal(r->n, 2);
    assert_true(r->starts[1] == iso("2026-11-23T14:00:07Z"));
    assert_int_equal(stats(job).missed, 11);
    assert_int_equal(log_count("missed ticks"), 1);
    sim_run_until_wall(&m, iso("2026-11-23T14:05:00Z"));
    assert_int_equal(r->n, 3);
    assert_true(r->starts[2] == iso("2026-11-23T14:05:00Z"));
    free(r);
    sim_free(&m);
}

/* The wall clock goes back a little (less than a period), right after a run and just before
 * the next one: no slot runs twice, none runs early. */
static void test_clock_step_back_small(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 7);
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T13:05:00.500Z"));
    assert_int_equal(r->n, 2);

    m.wall -= 2000; /* 13:04:58.500: the 13:05 slot is "ahead" again */
    sim_run_until_wall(&m, iso("2026-11-23T13:09:59.990Z"));
    assert_int_equal(r->n, 2);
    m.wall -= 5; /* the monotonic wait ends 5 ms before the wall time */
    sim_run_until_wall(&m, iso("2026-11-23T13:09:59.999Z"));
    assert_int_equal(r->n, 2);
    sim_run(&m, 1);
    assert_int_equal(r->n, 3);
    assert_true(r->starts[2] == iso("2026-11-23T13:10:00Z"));
    sim_run_until_wall(&m, iso("2026-11-23T13:30:00Z"));
    for (size_t i = 1; i < r->n; i++) {
        assert_true(r->starts[i] > r->starts[i - 1]);
        assert_true(r->starts[i] % (5 * MINUTE) == 0);
    }
    assert_int_equal(r->n, 7);
    assert_int_equal(stats(job).missed, 0);
    free(r);
    sim_free(&m);
}

/* The wall clock goes back two hours: the schedule follows the new clock at once (one run
 * per grid point, no idling for two hours, no storm). */
static void test_clock_step_back_large(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 8);
    log_count("");
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T13:07:00Z"));
    assert_int_equal(r->n, 2);

    m.wall -= 2 * HOUR; /* 11:07 */
    sim_run(&m, SCHED_RECHECK_MS);
    assert_int_equal(log_count("wall clock went back"), 1);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T11:10:00Z"));
    assert_int_equal(r->n, 2);
    sim_run_until_wall(&m, iso("2026-11-23T11:16:00Z"));
    assert_int_equal(r->n, 4);
    assert_true(r->starts[2] == iso("2026-11-23T11:10:00Z"));
    assert_true(r->starts[3] == iso("2026-11-23T11:15:00Z"));
    assert_int_equal(stats(job).missed, 0);
    free(r);
    sim_free(&m);
}

static void run_jittered(uint64_t seed, uint64_t jitter, uint64_t *starts, size_t *n)
{
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), seed);
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    c.jitter_ms = jitter;
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    sim_run_until_wall(&m, iso("2026-11-23T14:59:00Z"));
    memcpy(starts, r->starts, r->n * sizeof(*starts));
    *n = r->n;
    assert_int_equal(stats(job).missed, 0);
    assert_int_equal(stats(job).skipped, 0);
    free(r);
    sim_free(&m);
}

/* Jitter: each tick in [slot, slot + jitter), reproducible with a seed, and never more than
 * half a period however large the setting. */
static void test_jitter(void **state)
{
    (void)state;
    uint64_t a[64], b[64];
    size_t na, nb;
    run_jittered(42, 30000, a, &na);
    run_jittered(42, 30000, b, &nb);
    assert_int_equal(na, 24); /* 13:00 ... 14:55 */
    assert_int_equal(nb, na);
    size_t distinct = 0;
    for (size_t i = 0; i < na; i++) {
        uint64_t slot = iso("2026-11-23T13:00:00Z") + i * 5 * MINUTE;
        assert_true(a[i] >= slot && a[i] < slot + 30000);
        assert_true(a[i] == b[i]);
        distinct += i > 0 && (a[i] - slot) != (a[i - 1] - (slot - 5 * MINUTE));
    }
    assert_true(distinct > 10);
    run_jittered(43, 30000, b, &nb);
    assert_false(memcmp(a, b, na * sizeof(*a)) == 0);

    run_jittered(44, 10 * MINUTE, a, &na);
    assert_int_equal(na, 24);
    for (size_t i = 0; i < na; i++) {
        uint64_t slot = iso("2026-11-23T13:00:00Z") + i * 5 * MINUTE;
        assert_true(a[i] >= slot && a[i] < slot + 150000);
    }
}

/* Reload: an unchanged schedule keeps its pending tick, a changed one moves to the new
 * grid, disable and enable stop and resume ticking. */
static void test_update(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 9);
    log_count("");
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(5 * MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T13:00:00Z"));

    struct cfg_job same = c;
    same.name = "renamed-is-ignored";
    same.run_at_start = false;
    sched_job_update(job, &same);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T13:00:00Z"));
    assert_string_equal(sched_job_name(job), "prices");
    assert_int_equal(log_count("rescheduled"), 0);

    sim_run_until_wall(&m, iso("2026-11-23T13:00:30Z"));
    assert_int_equal(r->n, 1);
    struct cfg_job fast = c;
    fast.every_ms = MINUTE;
    sched_job_update(job, &fast);
    assert_int_equal(log_count("rescheduled"), 1);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T13:01:00Z"));
    sim_run_until_wall(&m, iso("2026-11-23T13:03:30Z"));
    assert_int_equal(r->n, 4);
    assert_true(r->starts[3] == iso("2026-11-23T13:03:00Z"));

    struct cfg_job off = fast;
    off.enabled = false;
    sched_job_update(job, &off);
    assert_true(stats(job).next_due_wall_ms == 0);
    sim_run(&m, HOUR);
    assert_int_equal(r->n, 4);

    sched_job_update(job, &fast); /* 14:03:30 */
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T14:04:00Z"));
    sim_run_until_wall(&m, iso("2026-11-23T14:05:00Z"));
    assert_int_equal(r->n, 6);
    assert_true(r->starts[4] == iso("2026-11-23T14:04:00Z"));

    /* An update with a zero period keeps the old one. */
    struct cfg_job zero = fast;
    zero.every_ms = 0;
    sched_job_update(job, &zero);
    assert_true(stats(job).next_due_wall_ms == iso("2026-11-23T14:06:00Z"));
    free(r);
    sim_free(&m);
}

/* A disabled job is known but never ticks; a zero period is refused. */
static void test_disabled_and_invalid(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 10);
    struct rec *r = rec_new(&m);
    struct cfg_job c = job_cfg(MINUTE, true, true);
    c.enabled = false;
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    assert_non_null(job);
    sim_run(&m, HOUR);
    assert_int_equal(r->n, 0);
    assert_true(stats(job).next_due_wall_ms == 0);
    c.enabled = true;
    c.every_ms = 0;
    assert_null(sched_add(m.s, &c, rec_run, r));
    free(r);
    sim_free(&m);
    sched_free(NULL);
}

/* Shutdown: nothing new starts; the run going on finishes normally. */
static void test_stop(void **state)
{
    (void)state;
    struct sim m;
    sim_init(&m, iso("2026-11-23T12:59:00Z"), 11);
    struct rec *r = rec_new(&m);
    r->hold_ms = 10 * MINUTE;
    struct cfg_job c = job_cfg(MINUTE, true, false);
    struct sched_entry *job = sched_add(m.s, &c, rec_run, r);
    struct rec *r2 = rec_new(&m);
    struct cfg_job c2 = job_cfg(HOUR, false, true);
    c2.name = "assets";
    struct sched_entry *job2 = sched_add(m.s, &c2, rec_run, r2);
    sim_run_until_wall(&m, iso("2026-11-23T13:01:30Z"));
    assert_int_equal(r->n, 1);
    assert_int_equal(r2->n, 1);
    assert_int_equal(stats(job).skipped, 1);

    sched_stop(m.s);
    assert_true(stats(job).next_due_wall_ms == 0);
    assert_true(stats(job).running);
    sim_run(&m, 2 * HOUR);
    assert_int_equal(r->n, 1);
    assert_int_equal(r2->n, 1);
    struct sched_entry_stats st = stats(job);
    assert_false(st.running);
    assert_true(st.last_end_wall_ms == iso("2026-11-23T13:10:00Z"));
    assert_string_equal(sched_job_name(job2), "assets");
    /* Adding after a stop keeps the job idle. */
    assert_non_null(sched_add(m.s, &c, rec_run, r));
    sim_run(&m, HOUR);
    assert_int_equal(r->n, 1);
    assert_int_equal(wheel_count(m.w), 0);
    free(r);
    free(r2);
    sim_free(&m);
}

static void count_run(struct sched_entry *job, void *arg)
{
    (*(int *)arg)++;
    sched_job_done(job);
}

/* The production wiring: a scheduler on the libuv timers with the real wall clock. The start
 * run comes on the next loop iteration; nothing here waits for real time. */
static void test_on_real_timers(void **state)
{
    (void)state;
    uv_loop_t loop;
    int runs = 0;
    assert_int_equal(uv_loop_init(&loop), 0);
    struct timers *t = timers_new(&loop);
    assert_non_null(t);
    struct sched *s = sched_new(t);
    assert_non_null(s);
    struct cfg_job c = job_cfg(HOUR, true, true);
    struct sched_entry *job = sched_add(s, &c, count_run, &runs);
    assert_non_null(job);
    assert_int_equal(runs, 0);
    for (int i = 0; i < 100 && runs == 0; i++)
        uv_run(&loop, UV_RUN_NOWAIT);
    assert_int_equal(runs, 1);
    struct sched_entry_stats st = stats(job);
    assert_false(st.running);
    uint64_t wall = util_wall_ms();
    assert_true(st.next_due_wall_ms % HOUR == 0);
    assert_true(st.next_due_wall_ms > st.last_start_wall_ms);
    assert_true(st.next_due_wall_ms <= wall + HOUR);
    /* The job waits on the wheel; stopping empties it and the loop has nothing left. */
    assert_int_equal(wheel_count(timers_wheel(t)), 1);
    sched_stop(s);
    assert_int_equal(wheel_count(timers_wheel(t)), 0);
    assert_int_equal(uv_loop_alive(&loop), 0);
    sched_free(s);
    timers_free(t);
    assert_int_equal(uv_run(&loop, UV_RUN_DEFAULT), 0);
    assert_int_equal(uv_loop_close(&loop), 0);
}

static int group_setup(void **state)
{
    (void)state;
    g_logf = tmpfile();
    if (!g_logf)
        return -1;
    log_setup(LOG_INFO, LOG_FORMAT_TEXT);
    log_set_fd(fileno(g_logf));
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    log_set_fd(2);
    fclose(g_logf);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_next_aligned),
        cmocka_unit_test(test_aligned_run_at_start_no_drift),
        cmocka_unit_test(test_alignment_periods),
        cmocka_unit_test(test_unaligned_no_drift),
        cmocka_unit_test(test_skip_on_overlap),
        cmocka_unit_test(test_clock_step_forward),
        cmocka_unit_test(test_long_pause),
        cmocka_unit_test(test_clock_step_back_small),
        cmocka_unit_test(test_clock_step_back_large),
        cmocka_unit_test(test_jitter),
        cmocka_unit_test(test_update),
        cmocka_unit_test(test_disabled_and_invalid),
        cmocka_unit_test(test_stop),
        cmocka_unit_test(test_on_real_timers),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
