/*
 * jobenv: what a unit test runs a source's jobs with, as the daemon would: the fake API, a
 * loop, timers and one fetcher, a config file the test writes and the config loaded from it,
 * an api for each enabled source that has plans, and the runner over a store the test gives
 * (an in-memory one: memstore.h, or the test's own).
 *
 * Thread: the test's thread (the loop's).
 */
#ifndef COINGEST_TEST_JOBENV_H
#define COINGEST_TEST_JOBENV_H

#include <limits.h>
#include <uv.h>

#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/timers.h"
#include "fakeapi_proc.h"
#include "runwait.h"

#define JOBENV_MAX_SOURCES 8

struct jobenv {
    struct fakeapi *fake;
    uv_loop_t loop;
    struct timers *timers;
    struct fetcher *f;
    struct api *apis[JOBENV_MAX_SOURCES];
    struct config *cfg;
    struct runner *rn;
    char conf[PATH_MAX];
    struct runwait run; /* the last run jobenv_run waited for */
};

/* Takes over the started fake API `fake` (non-NULL) and starts the loop, timers and fetcher;
 * the config file is /tmp/<name>.<pid>.conf. Fails the test when something does not start. */
void jobenv_init(struct jobenv *e, struct fakeapi *fake, const char *name);

/* Writes printf(fmt, ...) to the config file and loads it into e->cfg (freeing none: the
 * caller frees the old one). Fails the test when it does not load. */
void jobenv_load(struct jobenv *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* An api for each enabled source that has plans (as the daemon makes them), then the runner
 * over `store`. */
void jobenv_start(struct jobenv *e, struct store store);

/* Frees the runner, the apis and the config (all NULL after); nothing when not started. */
void jobenv_stop(struct jobenv *e);

/* After jobenv_stop: frees the fetcher and timers, closes the loop (failing the test if a
 * handle is left), stops the fake API and removes the config file. */
void jobenv_close(struct jobenv *e);

/* Runs job `job` to its end (runwait_job) with its summary in e->run.sum. */
void jobenv_run(struct jobenv *e, const char *job, int wait_ms);

#endif
