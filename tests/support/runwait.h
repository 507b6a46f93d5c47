/*
 * runwait: one run of a job under the runner (runner.h), waited for in a unit test. The loop
 * runs as the daemon runs it (UV_RUN_DEFAULT) until the run reports, which stops it, or until
 * the deadline passes, which fails the test (cmocka).
 *
 * Thread: the test's thread (the loop's).
 */
#ifndef COINGEST_TEST_RUNWAIT_H
#define COINGEST_TEST_RUNWAIT_H

#include <stdbool.h>
#include <uv.h>

#include "coingest/config.h"
#include "coingest/runner.h"

struct runwait {
    bool done;              /* the run reported */
    bool waiting;           /* inside runwait_wait: the run's end stops the loop */
    uv_loop_t *loop;        /* set by runwait_wait */
    struct run_summary sum; /* what it reported */
};

/* runner_start's callback; arg is the struct runwait. */
void runwait_cb(const struct run_summary *s, void *arg);

/* Runs loop until w's run reports; fails the test after wait_ms. */
void runwait_wait(struct runwait *w, uv_loop_t *loop, int wait_ms);

/* Starts job `job` of cfg on rn with w cleared, then waits for it as runwait_wait does. */
void runwait_job(struct runwait *w, struct runner *rn, const struct config *cfg, uv_loop_t *loop,
                 const char *job, int wait_ms);

#endif
