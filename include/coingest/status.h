/*
 * status: the status page ("/" on metrics_listen) and its JSON twin ("/status.json").
 *
 * One snapshot, two renderings: status_json() gathers what an operator looks at first -- per
 * source its plan, token bucket, calls this minute and this month and the credits left; per
 * job its last run and next run; the sink and its spool; the recent warn and error lines; the
 * rows committed per minute for the last hour -- into one JSON object, and status_html()
 * renders that same object as a plain HTML page (inline CSS and an inline SVG bar chart, no
 * script and no external asset, so it works offline; a meta refresh reloads it every
 * STATUS_REFRESH_S seconds). Every number on the page carries a data-k attribute naming its
 * place in the JSON, which is how tests/integration/test_status_page.py holds the two to each
 * other.
 *
 * History. The status object samples the sink's committed-row count every STATUS_SAMPLE_MS
 * into per-minute buckets (the last STATUS_MINUTES minutes), and once a minute asks the
 * database for the requests the month's finished runs made (SUM(job_runs.requests) since the
 * first of the month, UTC, by job; a read on a writer connection, off the loop thread): that is
 * a source's "calls this month" (finished runs only; a restart does not reset it), and with the
 * plan's monthly credits, the credits left. Before the first answer, or without a database,
 * both are null and the page says "n/a".
 *
 * Thread: loop thread only.
 */
#ifndef COINGEST_STATUS_H
#define COINGEST_STATUS_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/sink.h"
#include "coingest/timers.h"

#define STATUS_REFRESH_S 10
#define STATUS_SAMPLE_MS 5000u
#define STATUS_MINUTES   60

struct status;

/* What the daemon shows; gathered by the daemon on the loop thread for each request. */
struct status_view {
    const struct config *cfg;
    struct api *const *apis;          /* per source; NULL for a source that is off */
    const struct runner *runner;      /* NULL: no job information */
    const uint64_t *next_run_wall_ms; /* per job: the next tick, 0 when none is pending */
    const unsigned *failed_streak;    /* per job: runs in a row that failed */
    const char *health_json;          /* the /healthz body, or NULL */
    int health_status;                /* its HTTP status */
    bool stopping;
    uint64_t started_wall_ms; /* when the daemon started */
};

/* Starts sampling `sink` (neither is owned; both must outlive the status object, and the sink
 * must have called every read callback, i.e. finished its shutdown, before status_free).
 * `cfg` says which jobs count for the month's calls; replace it with status_set_config.
 * NULL on OOM. */
struct status *status_new(struct timers *timers, struct sink *sink, const struct config *cfg);

/* A reloaded config (the next read of the month's calls uses it). */
void status_set_config(struct status *st, const struct config *cfg);

/* A run has finished: the month's calls are read again at the next sample (within
 * STATUS_SAMPLE_MS) rather than up to a minute later. NULL is a no-op. */
void status_run_finished(struct status *st);

/* Stops the timer and frees. NULL is a no-op. */
void status_free(struct status *st);

/* The snapshot (a new reference), or NULL on OOM. Takes a sample of the sink first. */
json_t *status_json(struct status *st, const struct status_view *v);

/* The page for a snapshot: a malloc'd, NUL-terminated HTML document (its length in *len), or
 * NULL on OOM. Pure: it reads only `j`. */
char *status_html(const json_t *j, size_t *len);

/* The month's first instant (UTC) of wall time `wall_ms`, as "YYYY-MM-01 00:00:00" (for the
 * query), into buf. Pure; exported for tests. */
void status_month_start(uint64_t wall_ms, char *buf, size_t cap);

#endif
