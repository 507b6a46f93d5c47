/*
 * metrics: the daemon's counters and gauges, rendered in Prometheus text format.
 *
 * A series is a metric name plus a label string in Prometheus syntax without braces
 * (`api="coingecko",status="200"`, or "" for none). Series are created on first use, so
 * modules just count: metrics_add("coingest_http_requests_total", labels, 1). Every metric
 * name a module uses must be described once in the table in metrics.c (type and help text);
 * an undescribed name is still counted, with an untyped TYPE line. A few counters without
 * labels (listed in metrics.c) are rendered at 0 before their first use, so a scraper sees
 * their first increase. docs/operations.md lists every metric for operators, and an integration
 * test (tests/integration/test_metrics_docs.py) holds that list and /metrics to each other.
 *
 * Thread: any. One mutex guards the table; modules count per request, batch or run, never
 * per row, so contention is negligible. The HTTP endpoint (server.c) calls metrics_render().
 */
#ifndef COINGEST_METRICS_H
#define COINGEST_METRICS_H

#include <stddef.h>

/* Adds v (>= 0) to a counter. */
void metrics_add(const char *name, const char *labels, double v);
/* Sets a gauge. */
void metrics_set(const char *name, const char *labels, double v);
/* Records one observation of a summary: name_sum += v, name_count += 1. */
void metrics_observe(const char *name, const char *labels, double v);
/* Current value of a counter or gauge (0 when absent); for tests and status lines. */
double metrics_get(const char *name, const char *labels);

/* Renders every series as Prometheus text (version 0.0.4) into a malloc'd string; NULL on
 * OOM. The caller frees it. */
char *metrics_render(size_t *len);

/* Forgets every series (tests). */
void metrics_reset(void);

#endif
