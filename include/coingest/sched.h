/*
 * sched: the job scheduler. Each job ticks on a wall-clock grid (every, align, offset), with
 * an optional random jitter per tick; a tick starts a run unless the previous run is still
 * going, in which case the tick is skipped and counted (job_stats.skipped, and the metric
 * coingest_job_skipped_total{job="NAME"}).
 *
 * Due times are computed on the wall clock and waited for on the monotonic timer facility
 * (timers.h): at each tick the next grid point is computed from the schedule (never from
 * when a run ended, so runs do not drift) and a monotonic timer is armed for the distance to
 * it. A wait is never longer than SCHED_RECHECK_MS: on wake-up the wall clock is read again,
 * so a wall-clock step or a suspend/resume is noticed within that time. A step forward, or a
 * long pause of the loop, causes one run and counts (and logs) the ticks that were missed; a
 * step back of less than a period never runs a slot twice, a step back of more than a period
 * re-anchors the schedule on the new clock. See docs/scheduler.md.
 *
 * Thread: loop thread only (a scheduler on a bare wheel: the wheel's thread).
 */
#ifndef COINGEST_SCHED_H
#define COINGEST_SCHED_H

#include <stdbool.h>
#include <stdint.h>

#include "coingest/config.h"
#include "coingest/timers.h"
#include "coingest/wheel.h"

/* The longest a job waits on the monotonic clock before it reads the wall clock again. */
#define SCHED_RECHECK_MS 60000u

struct sched;
/* A job's place on the schedule (its grid, jitter, whether a run is going), as opposed to the
 * job's definition (runner.h, struct job_def) and one run of it (struct run). */
struct sched_entry;

/* Starts a run, on the loop thread. The run calls sched_job_done(job) once when it is over,
 * from this callback or later. */
typedef void (*sched_fire_cb)(struct sched_entry *job, void *arg);

/* A scheduler whose jobs wait on `timers` (not owned; it must outlive the scheduler) and
 * read the wall clock with util_wall_ms(). The jitter source is seeded from the clocks.
 * NULL on OOM. */
struct sched *sched_new(struct timers *timers);

/* The same on a bare wheel, for tests and simulations: `mono_ms(arg)` says the wheel's
 * current time; the caller drives the wheel with wheel_advance(). NULL on OOM. */
struct sched *sched_new_on_wheel(struct wheel *wheel, uint64_t (*mono_ms)(void *), void *arg);

/* Replaces the wall clock (tests). Call before sched_add. */
void sched_set_clock(struct sched *s, uint64_t (*wall_ms)(void *), void *arg);

/* Seeds the jitter source (tests, for reproducible jitter). */
void sched_set_seed(struct sched *s, uint64_t seed);

/* Cancels every job's timer and frees the jobs and the scheduler. A run still going must not
 * call sched_job_done afterwards. The timers facility must still be alive. NULL: no-op. */
void sched_free(struct sched *s);

/* Adds a job scheduled per `cfg` (copied; cfg->name is copied too). With run_at_start the
 * first run starts on the next loop iteration (no jitter); otherwise at the first grid
 * point. A disabled job is kept but never ticks until an update enables it. Registers the
 * job's coingest_job_skipped_total series at 0. Returns the job (owned by the scheduler), or
 * NULL on OOM or when cfg->every_ms is 0. */
struct sched_entry *sched_add(struct sched *s, const struct cfg_job *cfg, sched_fire_cb run,
                              void *arg);

/* The run started by the last tick is over. Calling it when no run is going is a no-op. */
void sched_job_done(struct sched_entry *job);

/* Applies a reloaded job config. The pending tick moves only when every, align, offset or
 * jitter changed (to the first grid point of the new schedule after now); enabling a job
 * schedules its next grid point, disabling it cancels its pending tick (a run going on
 * finishes). A run going on is never interrupted. */
void sched_job_update(struct sched_entry *job, const struct cfg_job *cfg);

/* Shutdown: no new run starts from now on; runs going on finish and call sched_job_done. */
void sched_stop(struct sched *s);

struct sched_entry_stats {
    uint64_t runs;    /* runs started */
    uint64_t skipped; /* ticks that came while a run was still going */
    uint64_t missed;  /* ticks that passed unseen (clock stepped forward, loop paused) */
    uint64_t last_start_wall_ms, last_end_wall_ms; /* 0: never */
    uint64_t next_due_wall_ms;                     /* 0: nothing pending */
    bool running;
};

void sched_job_stats(const struct sched_entry *job, struct sched_entry_stats *out);
const char *sched_job_name(const struct sched_entry *job);

/* The first time strictly after `after_wall_ms` of the grid offset + k * every (k >= 0,
 * counted from the Unix epoch; an offset of a period or more wraps round). UINT64_MAX when
 * every_ms is 0. Pure. */
uint64_t sched_next_aligned(uint64_t after_wall_ms, uint64_t every_ms, uint64_t offset_ms);

/* The first tick strictly after `after_wall_ms` for a job config without jitter: aligned
 * jobs use sched_next_aligned(); unaligned ones tick at after + every. Pure. */
uint64_t sched_next_tick(const struct cfg_job *cfg, uint64_t after_wall_ms);

#endif
