/*
 * jobs: the CoinGecko jobs (assets, prices, market_caps). A run plans its requests from the
 * universe, sends them through the API (fetch.h, which gates them by the token bucket and
 * retries), turns each body into rows (coingecko.h) and hands the rows to the sink. Each run
 * ends with a job_runs row (ok / partial / failed) and a summary for the caller.
 *
 * A run never sends two requests of its own at once: pages follow each other, so a 429 in the
 * middle of pagination pauses the bucket and the same page is fetched again after the advised
 * wait (the engine retries it): no page is skipped and none is fetched twice.
 *
 * The universe: `ids = all` tracks every active asset from the last assets run (or, before the
 * first one, from /coins/list fetched on demand); an explicit list is used as given; `top = N`
 * and `categories` are resolved from /coins/markets.
 *
 * Thread: loop thread only.
 */
#ifndef COINGEST_JOBS_H
#define COINGEST_JOBS_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <uv.h>

#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/sink.h"

enum job_status { JOB_STATUS_OK = 0, JOB_STATUS_PARTIAL = 1, JOB_STATUS_FAILED = 2 };

struct job_summary {
    enum job_id job;
    enum job_status status;
    uint64_t requests; /* HTTP requests the run made (attempts, including retries) */
    uint64_t rows;     /* rows handed to the sink and accepted */
    uint64_t counted;  /* anomalies counted, not errors: coins left out, bad fields */
    uint64_t started_wall_ms, finished_wall_ms;
    char error[512]; /* first error, "" when none */
};

typedef void (*jobs_done_cb)(const struct job_summary *sum, void *arg);

struct jobs;

/* The jobs on an API and a sink; `cfg` must outlive the jobs or be replaced with
 * jobs_set_config. NULL on OOM. */
struct jobs *jobs_new(struct api *api, struct sink *sink, const struct config *cfg);
void jobs_free(struct jobs *j);

/* A reloaded config: the next runs use its universe and limits. */
void jobs_set_config(struct jobs *j, const struct config *cfg);

/* Starts one run of `id`. Returns 0, or -EBUSY if that job is already running. `done` runs
 * once on the loop thread when the run is over (all its rows handed to the sink) -- possibly
 * before jobs_run returns, when the run cannot send its first request (the API is shutting
 * down, or out of memory). */
int jobs_run(struct jobs *j, enum job_id id, jobs_done_cb done, void *arg);

/* Stops every run (shutdown): in-flight requests are cancelled, rows already parsed are
 * still handed to the sink, and each run's done callback reports it. */
void jobs_cancel(struct jobs *j);

/* Is a run of `id` going on? */
bool jobs_running(const struct jobs *j, enum job_id id);

/* The last summary of a job (zeroed before its first run). */
const struct job_summary *jobs_last(const struct jobs *j, enum job_id id);

/* Prints the request budget the configuration implies (requests per minute and per month per
 * job, from the universe size and intervals) against the plan's limits, and returns true
 * when it fits. `universe_size` is the number of tracked assets (0: estimate). */
bool jobs_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out);

const char *jobs_status_name(enum job_status s);

#endif
