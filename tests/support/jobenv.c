/*
 * jobenv: a runner over the fake API for the job tests (jobenv.h).
 */
#include "jobenv.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <unistd.h>

#include <cmocka.h>

void jobenv_init(struct jobenv *e, struct fakeapi *fake, const char *name)
{
    assert_non_null(fake);
    e->fake = fake;
    assert_int_equal(uv_loop_init(&e->loop), 0);
    e->timers = timers_new(&e->loop);
    assert_non_null(e->timers);
    e->f = fetcher_new(&e->loop, e->timers);
    assert_non_null(e->f);
    snprintf(e->conf, sizeof(e->conf), "/tmp/%s.%d.conf", name, (int)getpid());
}

void jobenv_load(struct jobenv *e, const char *fmt, ...)
{
    FILE *fp = fopen(e->conf, "w");
    assert_non_null(fp);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(fp, fmt, ap);
    va_end(ap);
    fclose(fp);
    char err[1024];
    if (config_load(e->conf, &e->cfg, err, sizeof(err)) != 0)
        fail_msg("config: %s", err);
}

void jobenv_start(struct jobenv *e, struct store store)
{
    assert_true(e->cfg->nsources <= JOBENV_MAX_SOURCES);
    for (size_t i = 0; i < e->cfg->nsources; i++)
        if (e->cfg->sources[i].enabled && e->cfg->sources[i].def->nplans)
            assert_non_null(e->apis[i] = api_new(e->f, &e->cfg->sources[i]));
    e->rn = runner_new(e->cfg, e->apis, store);
    assert_non_null(e->rn);
}

void jobenv_stop(struct jobenv *e)
{
    runner_free(e->rn);
    e->rn = NULL;
    for (size_t i = 0; i < JOBENV_MAX_SOURCES; i++) {
        api_free(e->apis[i]);
        e->apis[i] = NULL;
    }
    config_free(e->cfg);
    e->cfg = NULL;
}

static void fetcher_gone(void *arg)
{
    (void)arg;
}

void jobenv_close(struct jobenv *e)
{
    fetcher_free(e->f, fetcher_gone, NULL);
    e->f = NULL;
    uv_run(&e->loop, UV_RUN_DEFAULT);
    timers_free(e->timers);
    e->timers = NULL;
    uv_run(&e->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&e->loop), 0);
    fakeapi_stop(e->fake);
    e->fake = NULL;
    unlink(e->conf);
}

void jobenv_run(struct jobenv *e, const char *job, int wait_ms)
{
    runwait_job(&e->run, e->rn, e->cfg, &e->loop, job, wait_ms);
}
