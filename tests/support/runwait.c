/*
 * runwait: waits for one job run in a unit test (runwait.h).
 */
#include "runwait.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

void runwait_cb(const struct run_summary *s, void *arg)
{
    struct runwait *w = arg;
    w->sum = *s;
    w->done = true;
    if (w->waiting)
        uv_stop(w->loop);
}

static void deadline_cb(uv_timer_t *t)
{
    *(bool *)t->data = true;
    uv_stop(t->loop);
}

void runwait_wait(struct runwait *w, uv_loop_t *loop, int wait_ms)
{
    bool expired = false;
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &expired;
    uv_timer_start(&t, deadline_cb, (uint64_t)wait_ms, 0);
    w->loop = loop;
    w->waiting = true;
    while (!w->done && !expired)
        uv_run(loop, UV_RUN_DEFAULT);
    w->waiting = false;
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    if (!w->done)
        fail_msg("the run did not finish within %d ms", wait_ms);
}

void runwait_job(struct runwait *w, struct runner *rn, const struct config *cfg, uv_loop_t *loop,
                 const char *job, int wait_ms)
{
    int i = config_job_index(cfg, job);
    assert_true(i >= 0);
    w->done = false;
    memset(&w->sum, 0, sizeof(w->sum));
    assert_int_equal(runner_start(rn, (size_t)i, runwait_cb, w), 0);
    runwait_wait(w, loop, wait_ms);
}
