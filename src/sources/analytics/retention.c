/*
 * analytics retention: deletes raw `prices` and `market_snapshots` rows older than max_age
 * once the daily rollup of their (source, asset, vs_currency, day) exists (docs/analytics.md).
 * Off by default ([job.retention] enabled = false).
 *
 * A run works through whole UTC days, oldest first, from where the previous run stopped
 * (analytics_state 'retention.done_until') up to the day max_age ago, at most max_days a run.
 * For each day it counts the covered rows of both tables (one read), then emits DELETE
 * statements of at most batch_rows rows each: every statement is its own short transaction,
 * and the sink runs it only after everything submitted before it (rollups included) has
 * committed. coingest_retention_deleted_rows_total{table} adds the rows counted. Rows that no
 * daily rollup covers (no price that day) are kept.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/batch.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/util.h"
#include "sources/analytics/analytics.h"

static const struct cfg_key retention_keys[] = {
    {"max_age", CFG_KEY_DURATION, "90d", 2 * AN_MS_DAY, 0},
    {"batch_rows", CFG_KEY_U64, "5000", 10, 1000000},
    {"max_days", CFG_KEY_U64, "31", 1, 3660},
};

#define COVERED(table, t)                                                                          \
    "(SELECT COUNT(*) FROM " table " x WHERE x." t " >= ? AND x." t " < ? AND EXISTS (SELECT 1"    \
    " FROM price_rollups r WHERE r.source = x.source AND r.asset_id = x.asset_id"                  \
    " AND r.vs_currency = x.vs_currency AND r.bucket = '1d'"                                       \
    " AND r.bucket_start = TIMESTAMP(DATE(x." t "))))"

struct retention_run {
    int64_t day, end; /* the day being done and the first day not to do */
    uint64_t batch_rows;
    uint64_t deleted[2];
};

static void read_day(struct run *r);

static int emit_deletes(struct run *r, enum batch_spec_id spec, int64_t day, uint64_t n,
                        uint64_t per)
{
    for (uint64_t left = n; left > 0; left -= left < per ? left : per) {
        struct batch *b = batch_new(spec, 1);
        if (!b || batch_add_row(b) < 0) {
            batch_free(b);
            return -ENOMEM;
        }
        batch_set_time(b, 0, BATCH_RETENTION_COL_FROM, day * AN_MS_DAY);
        batch_set_time(b, 0, BATCH_RETENTION_COL_TO, (day + 1) * AN_MS_DAY);
        batch_set_int(b, 0, BATCH_RETENTION_COL_LIMIT, (int64_t)per);
        int rc = run_emit(r, b);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static void on_counts(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct retention_run *st = run_state(r);
    if (rc < 0 || rows->nrows != 1) {
        run_fail(r, "counting covered rows", err ? err : strerror(rc < 0 ? -rc : EIO));
        run_finish(r);
        return;
    }
    static const char *const tables[] = {"prices", "market_snapshots"};
    static const enum batch_spec_id specs[] = {BATCH_RETENTION_PRICES, BATCH_RETENTION_SNAPSHOTS};
    for (int t = 0; t < 2; t++) {
        const char *c = rows->cells[t];
        uint64_t n = c ? strtoull(c, NULL, 10) : 0;
        if (n && emit_deletes(r, specs[t], st->day, n, st->batch_rows) < 0) {
            run_finish(r);
            return;
        }
        char labels[64];
        snprintf(labels, sizeof(labels), "table=\"%s\"", tables[t]);
        metrics_add(AN_METRIC_DELETED, labels, (double)n);
        st->deleted[t] += n;
    }
    struct batch *b = batch_new(BATCH_ANALYTICS_STATE, 1);
    const char *name = "retention.done_until";
    if (!b || batch_add_row(b) < 0 ||
        batch_set_str(b, 0, BATCH_ANALYTICS_STATE_COL_NAME, name, strlen(name)) < 0) {
        batch_free(b);
        run_fail(r, "retention", "out of memory");
        run_finish(r);
        return;
    }
    batch_set_time(b, 0, BATCH_ANALYTICS_STATE_COL_VALUE, (st->day + 1) * AN_MS_DAY);
    if (run_emit(r, b) < 0 || ++st->day >= st->end || run_cancelled(r)) {
        log_info("retention done", LOG_U("prices_deleted", st->deleted[0]),
                 LOG_U("market_snapshots_deleted", st->deleted[1]));
        run_finish(r);
        return;
    }
    read_day(r);
}

static void read_day(struct run *r)
{
    struct retention_run *st = run_state(r);
    char from[32], to[32];
    an_format_time(st->day * AN_MS_DAY, from, sizeof(from));
    an_format_time((st->day + 1) * AN_MS_DAY, to, sizeof(to));
    const char *params[] = {from, to, from, to};
    int rc = run_read(r,
                      "SELECT " COVERED("prices", "source_updated_at") " AS prices, " COVERED(
                          "market_snapshots", "snapshot_at") " AS market_snapshots",
                      params, 4, 1, on_counts, r);
    if (rc < 0) {
        run_fail(r, "counting covered rows", strerror(-rc));
        run_finish(r);
    }
}

static void on_bounds(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct retention_run *st = run_state(r);
    if (rc < 0 || rows->nrows != 1) {
        run_fail(r, "reading analytics_state", err ? err : strerror(rc < 0 ? -rc : EIO));
        run_finish(r);
        return;
    }
    int64_t ms, from = INT64_MAX;
    for (int c = 0; c < 2; c++)
        if (rows->cells[c] && an_parse_time(rows->cells[c], &ms) == 0 && ms < from)
            from = an_floor(ms, AN_MS_DAY) / AN_MS_DAY;
    if (rows->cells[2] && an_parse_time(rows->cells[2], &ms) == 0 &&
        an_floor(ms, AN_MS_DAY) / AN_MS_DAY > from)
        from = an_floor(ms, AN_MS_DAY) / AN_MS_DAY;
    const struct cfg_value *max_days = config_job_value(run_job(r), "max_days");
    if (from == INT64_MAX || from >= st->end) {
        run_finish(r); /* nothing old enough */
        return;
    }
    st->day = from;
    if (max_days && st->end - from > (int64_t)max_days->u)
        st->end = from + (int64_t)max_days->u;
    read_day(r);
}

static int retention_start(struct run *r)
{
    struct retention_run *st = run_state(r);
    const struct cfg_value *age = config_job_value(run_job(r), "max_age");
    const struct cfg_value *rows = config_job_value(run_job(r), "batch_rows");
    st->batch_rows = rows ? rows->u : 5000;
    /* Whole days only: the last day to delete ends at least max_age ago. */
    int64_t cutoff = (int64_t)run_started_ms(r) - (int64_t)(age ? age->u : 0);
    st->end = an_floor(cutoff, AN_MS_DAY) / AN_MS_DAY;
    return run_read(r,
                    "SELECT (SELECT MIN(source_updated_at) FROM prices) AS prices,"
                    " (SELECT MIN(snapshot_at) FROM market_snapshots) AS snapshots,"
                    " (SELECT value FROM analytics_state WHERE name = 'retention.done_until')"
                    " AS done_until",
                    NULL, 0, 1, on_bounds, r);
}

const struct job_def analytics_retention_job = {
    .name = "retention",
    .every_ms = 60 * AN_MS_MINUTE,
    .enabled = false,
    .keys = retention_keys,
    .nkeys = ARRAY_SIZE(retention_keys),
    .run_size = sizeof(struct retention_run),
    .start = retention_start,
};
