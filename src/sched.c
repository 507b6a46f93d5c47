/*
 * sched: jobs on a wall-clock grid, waited for on the monotonic timer wheel.
 *
 * The grid. A job's ticks are the wall times base + k * every. An aligned job's base is its
 * offset (modulo every), so a 5 m job ticks at :00, :05, :10 of the UTC clock; an unaligned
 * job's base is the wall time it was added (or rescheduled) at, so it ticks every `every`
 * from then. Each tick gets its own jitter in [0, min(jitter, every / 2)): jitter spreads
 * load but never moves a tick past the middle of its period, so it cannot be mistaken for a
 * missed tick.
 *
 * The wait. For the pending tick (slot S, jittered due time D) the job arms a monotonic
 * timer for min(D - wall_now, SCHED_RECHECK_MS). On firing it reads the wall clock W again:
 *  - W < D: not yet (the clocks disagree, the wait was capped, or the wall clock went back).
 *    If S is more than a period ahead of W the wall clock went back by more than a period:
 *    the schedule re-anchors on the first grid point after W instead of idling until the old
 *    slot comes round. Otherwise the job simply waits for S, so no slot runs twice.
 *  - W >= D: the tick is due. Grid points after S that are also <= W were missed (the wall
 *    clock stepped forward, the machine slept, or the loop was blocked): they are counted
 *    and logged, and only one run starts. The next slot is the first grid point after W,
 *    computed from the grid and not from when any run ended, so runs do not drift.
 * A tick that finds the previous run still going is skipped and counted (in the job's stats
 * and in coingest_job_skipped_total{job}, which sched_add registers at 0); the first skip of
 * a run is logged, and the count when that run ends.
 */
#include "coingest/sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/util.h"

struct sched_entry {
    struct sched *sched;
    struct sched_entry *next;
    char *name;
    struct cfg_job cfg; /* cfg.name points at name */
    sched_fire_cb run;
    void *arg;
    struct wheel_timer tm;
    uint64_t base;      /* grid phase, in [0, every) */
    uint64_t slot;      /* wall time of the pending tick (its grid point, or the start) */
    uint64_t due;       /* slot + this tick's jitter */
    bool pending;       /* a tick is pending (tm armed) */
    bool start_pending; /* the pending tick is the run_at_start one */
    bool running;
    uint64_t run_skips; /* ticks skipped during the current run */
    char *skip_labels;  /* job="NAME", the labels of coingest_job_skipped_total */
    struct sched_entry_stats st;
};

struct sched {
    struct timers *timers; /* or, for simulations, a bare wheel: */
    struct wheel *wheel;
    uint64_t (*mono_ms)(void *);
    void *mono_arg;
    uint64_t (*wall_ms)(void *);
    void *wall_arg;
    struct rng rng;
    bool stopped;
    struct sched_entry *jobs;
};

static uint64_t default_wall(void *arg)
{
    (void)arg;
    return util_wall_ms();
}

static uint64_t wall_now(const struct sched *s)
{
    return s->wall_ms(s->wall_arg);
}

static void timer_arm(struct sched *s, struct wheel_timer *tm, uint64_t delay_ms)
{
    if (s->timers)
        timers_start(s->timers, tm, delay_ms);
    else
        wheel_add(s->wheel, tm, s->mono_ms(s->mono_arg) + delay_ms);
}

static void timer_cancel(struct sched *s, struct wheel_timer *tm)
{
    if (s->timers)
        timers_stop(s->timers, tm);
    else
        wheel_cancel(s->wheel, tm);
}

uint64_t sched_next_aligned(uint64_t after_wall_ms, uint64_t every_ms, uint64_t offset_ms)
{
    if (every_ms == 0)
        return UINT64_MAX;
    uint64_t base = offset_ms % every_ms;
    if (after_wall_ms < base)
        return base;
    return base + ((after_wall_ms - base) / every_ms + 1) * every_ms;
}

uint64_t sched_next_tick(const struct cfg_job *cfg, uint64_t after_wall_ms)
{
    if (cfg->every_ms == 0)
        return UINT64_MAX;
    if (cfg->align)
        return sched_next_aligned(after_wall_ms, cfg->every_ms, cfg->offset_ms);
    return after_wall_ms + cfg->every_ms;
}

/* The first grid point strictly after x. */
static uint64_t grid_after(const struct sched_entry *job, uint64_t x)
{
    return sched_next_aligned(x, job->cfg.every_ms, job->base);
}

/* How many grid points are <= x. */
static uint64_t grid_count_upto(const struct sched_entry *job, uint64_t x)
{
    return x < job->base ? 0 : (x - job->base) / job->cfg.every_ms + 1;
}

static void set_base(struct sched_entry *job, uint64_t wall)
{
    uint64_t every = job->cfg.every_ms;
    job->base = job->cfg.align ? job->cfg.offset_ms % every : wall % every;
}

/* Makes `slot` the pending tick, with a fresh jitter. */
static void set_slot(struct sched_entry *job, uint64_t slot)
{
    uint64_t jitter = job->cfg.jitter_ms;
    if (jitter > job->cfg.every_ms / 2)
        jitter = job->cfg.every_ms / 2;
    job->slot = slot;
    job->due = slot + rng_below(&job->sched->rng, jitter);
    job->pending = true;
    job->start_pending = false;
}

/* Arms the monotonic wait for the pending tick, seen from wall time `wall`. */
static void arm(struct sched_entry *job, uint64_t wall)
{
    uint64_t delay = job->due > wall ? job->due - wall : 0;
    if (delay > SCHED_RECHECK_MS)
        delay = SCHED_RECHECK_MS;
    timer_arm(job->sched, &job->tm, delay);
}

static void unschedule(struct sched_entry *job)
{
    timer_cancel(job->sched, &job->tm);
    job->pending = false;
    job->start_pending = false;
}

static void start_run(struct sched_entry *job, uint64_t wall)
{
    job->running = true;
    job->run_skips = 0;
    job->st.runs++;
    job->st.last_start_wall_ms = wall;
    job->run(job, job->arg);
}

static void tick(struct sched_entry *job, uint64_t wall)
{
    uint64_t missed = 0;
    uint64_t late_ms = wall - job->due;

    /* The start run stands for every grid point up to now: none of them is missed. */
    if (!job->start_pending)
        missed = grid_count_upto(job, wall) - grid_count_upto(job, job->slot);

    /* Schedule first, so a run may update or stop the job from its callback. */
    set_slot(job, grid_after(job, wall));
    arm(job, wall);

    if (missed > 0) {
        job->st.missed += missed;
        log_warn("job missed ticks (wall clock stepped forward or loop paused); running once",
                 LOG_S("job", job->name), LOG_U("missed", missed), LOG_U("late_ms", late_ms));
    }
    if (job->running) {
        job->st.skipped++;
        metrics_add("coingest_job_skipped_total", job->skip_labels, 1);
        if (++job->run_skips == 1)
            log_warn("job still running, tick skipped", LOG_S("job", job->name),
                     LOG_U("running_ms", wall - job->st.last_start_wall_ms));
        return;
    }
    start_run(job, wall);
}

static void on_timer(struct wheel_timer *tm, void *arg)
{
    struct sched_entry *job = arg;
    struct sched *s = job->sched;
    (void)tm;

    if (s->stopped || !job->cfg.enabled || !job->pending)
        return;
    uint64_t wall = wall_now(s);
    if (!job->start_pending && wall < job->due) {
        if (job->slot > wall && job->slot - wall > job->cfg.every_ms) {
            log_warn("wall clock went back by more than a period; job rescheduled on it",
                     LOG_S("job", job->name), LOG_U("slot_ahead_ms", job->slot - wall));
            set_slot(job, grid_after(job, wall));
        }
        arm(job, wall);
        return;
    }
    tick(job, wall);
}

static struct sched *sched_alloc(void)
{
    struct sched *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->wall_ms = default_wall;
    rng_seed(&s->rng, util_mono_ms() ^ (util_wall_ms() << 16) ^ (uint64_t)(uintptr_t)s);
    return s;
}

struct sched *sched_new(struct timers *timers)
{
    struct sched *s = sched_alloc();
    if (s)
        s->timers = timers;
    return s;
}

struct sched *sched_new_on_wheel(struct wheel *wheel, uint64_t (*mono_ms)(void *), void *arg)
{
    struct sched *s = sched_alloc();
    if (!s)
        return NULL;
    s->wheel = wheel;
    s->mono_ms = mono_ms;
    s->mono_arg = arg;
    return s;
}

void sched_set_clock(struct sched *s, uint64_t (*wall_ms)(void *), void *arg)
{
    s->wall_ms = wall_ms ? wall_ms : default_wall;
    s->wall_arg = arg;
}

void sched_set_seed(struct sched *s, uint64_t seed)
{
    rng_seed(&s->rng, seed);
}

void sched_free(struct sched *s)
{
    if (!s)
        return;
    struct sched_entry *job = s->jobs;
    while (job) {
        struct sched_entry *next = job->next;
        timer_cancel(s, &job->tm);
        free(job->name);
        free(job->skip_labels);
        free(job);
        job = next;
    }
    free(s);
}

/* `job="NAME"` with NAME escaped as Prometheus label values require; NULL on OOM. */
static char *job_label(const char *name)
{
    size_t n = strlen(name);
    char *out = malloc(sizeof("job=\"\"") + 2 * n);
    if (!out)
        return NULL;
    char *p = out + sprintf(out, "job=\"");
    for (const char *c = name; *c; c++) {
        if (*c == '\\' || *c == '"' || *c == '\n')
            *p++ = '\\';
        *p++ = *c == '\n' ? 'n' : *c;
    }
    strcpy(p, "\"");
    return out;
}

struct sched_entry *sched_add(struct sched *s, const struct cfg_job *cfg, sched_fire_cb run,
                              void *arg)
{
    if (cfg->every_ms == 0)
        return NULL;
    struct sched_entry *job = calloc(1, sizeof(*job));
    if (!job)
        return NULL;
    job->name = strdup(cfg->name ? cfg->name : "");
    job->skip_labels = job->name ? job_label(job->name) : NULL;
    if (!job->skip_labels) {
        free(job->name);
        free(job);
        return NULL;
    }
    /* At 0 from the start, so the first skip shows as an increase. */
    metrics_add("coingest_job_skipped_total", job->skip_labels, 0);
    job->sched = s;
    job->cfg = *cfg;
    job->cfg.name = job->name;
    job->run = run;
    job->arg = arg;
    wheel_timer_init(&job->tm, on_timer, job);
    job->next = s->jobs;
    s->jobs = job;

    uint64_t wall = wall_now(s);
    set_base(job, wall);
    if (!cfg->enabled || s->stopped)
        return job;
    if (cfg->run_at_start) {
        job->slot = job->due = wall;
        job->pending = true;
        job->start_pending = true;
        timer_arm(s, &job->tm, 0);
    } else {
        set_slot(job, grid_after(job, wall));
        arm(job, wall);
    }
    return job;
}

void sched_job_done(struct sched_entry *job)
{
    if (!job->running)
        return;
    job->running = false;
    job->st.last_end_wall_ms = wall_now(job->sched);
    if (job->run_skips > 0)
        log_info("overrunning job finished", LOG_S("job", job->name),
                 LOG_U("skipped", job->run_skips),
                 LOG_U("took_ms", job->st.last_end_wall_ms - job->st.last_start_wall_ms));
}

void sched_job_update(struct sched_entry *job, const struct cfg_job *cfg)
{
    struct sched *s = job->sched;
    uint64_t every = cfg->every_ms ? cfg->every_ms : job->cfg.every_ms;
    bool moved = every != job->cfg.every_ms || cfg->align != job->cfg.align ||
                 cfg->offset_ms != job->cfg.offset_ms || cfg->jitter_ms != job->cfg.jitter_ms;
    bool was_enabled = job->cfg.enabled;

    job->cfg = *cfg;
    job->cfg.name = job->name;
    job->cfg.every_ms = every;

    if (s->stopped)
        return;
    if (!cfg->enabled) {
        unschedule(job);
        return;
    }
    /* A pending start run stays: it is due now whatever the new schedule. */
    if (job->start_pending || (was_enabled && !moved && job->pending))
        return;
    uint64_t wall = wall_now(s);
    set_base(job, wall);
    set_slot(job, grid_after(job, wall));
    arm(job, wall);
    log_info("job rescheduled", LOG_S("job", job->name), LOG_U("every_ms", every),
             LOG_U("next_in_ms", job->due - wall));
}

void sched_stop(struct sched *s)
{
    s->stopped = true;
    for (struct sched_entry *job = s->jobs; job; job = job->next)
        unschedule(job);
}

void sched_job_stats(const struct sched_entry *job, struct sched_entry_stats *out)
{
    *out = job->st;
    out->running = job->running;
    out->next_due_wall_ms = job->pending ? job->due : 0;
}

const char *sched_job_name(const struct sched_entry *job)
{
    return job->name;
}
