/*
 * analytics: a source without a remote API (no plans). Its jobs turn what the other sources
 * stored into tables: `rollups` (hourly and daily candles in price_rollups), `indicators`
 * (indicators_daily and movers_daily) and `retention` (deletes raw rows that a daily rollup
 * covers; off by default). docs/analytics.md has the definitions and the design.
 *
 * It is enabled by default: when nothing new arrived a rollups run is one small read and a
 * few statements that find nothing, and an indicators run is two reads.
 */
#include "coingest/metrics.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/analytics/analytics.h"

static const struct job_def *const jobs[] = {
    &analytics_rollups_job,
    &analytics_indicators_job,
    &analytics_retention_job,
};

/* No shared state; the hook makes the retention counters exist at 0 from the start, so a
 * scraper sees their first increase. */
static void *state_new(void)
{
    metrics_add(AN_METRIC_DELETED, "table=\"prices\"", 0);
    metrics_add(AN_METRIC_DELETED, "table=\"market_snapshots\"", 0);
    static char none;
    return &none;
}

static void state_free(void *state)
{
    (void)state;
}

const struct source_def analytics_source = {
    .name = "analytics",
    .title = "Analytics (rollups, indicators, retention)",
    .enabled_by_default = true,
    .plans = NULL,
    .nplans = 0,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
    .state_new = state_new,
    .state_free = state_free,
};
