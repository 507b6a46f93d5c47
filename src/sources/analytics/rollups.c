/*
 * analytics rollups: hourly and daily candles of `prices` in price_rollups (docs/analytics.md).
 *
 * A bucket is computed once it is closed: its hour or UTC day has ended and `grace` has
 * passed. The work is SQL run by the sink's writers: each computation is a statement batch,
 * so it runs only after every row submitted before it has committed, and one bucket range per
 * statement keeps each transaction short.
 *
 * Late rows. Every run first emits the mark statement: it records in analytics_dirty the hour
 * of every prices row fetched since the previous mark (less a 10-minute margin), so a row that
 * arrives after its hour was rolled up (a backfill, a spool replay) marks that hour again.
 * Because the mark runs after everything submitted before it, a row the loop handed over
 * before the run is seen by this mark or the next one, however long it sat in the spool.
 * A run then reads the marked hours that are closed and recomputes them (and their days),
 * and forgets the marks it read (a mark made after the read survives). Days are computed when
 * they close (analytics_state 'rollups.days_until') and when one of their hours was marked.
 * The first run ever (no 'rollups.fetched_until') rolls up the whole history.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/batch.h"
#include "coingest/log.h"
#include "coingest/runner.h"
#include "coingest/util.h"
#include "sources/analytics/analytics.h"

#define MAX_DIRTY 2000000

static const struct cfg_key rollups_keys[] = {
    /* How long after a bucket ends it is closed: rows for it may still arrive. */
    {"grace", CFG_KEY_DURATION, "10m", 0, 0},
};

struct rollups_run {
    int64_t now;       /* the run's time (ms) */
    int64_t hours_end; /* hours starting before this are closed */
    int64_t days_end;  /* days starting before this are closed */
    bool first;        /* no mark was ever made: roll up the whole history */
    bool have_days_until, have_first;
    int64_t days_until;  /* days starting before this were computed when they closed */
    int64_t first_price; /* the oldest source_updated_at */
};

static int cell_time(const struct store_rows *rows, uint32_t row, uint32_t col, int64_t *ms)
{
    const char *c = rows->cells[(size_t)row * rows->ncols + col];
    return c ? an_parse_time(c, ms) : -ENOENT;
}

/* A statement (or state row) batch with the given time values, handed to the store. */
static int emit_times(struct run *r, enum batch_spec_id id, const int64_t *ms, size_t n)
{
    struct batch *b = batch_new(id, 1);
    if (!b || batch_add_row(b) < 0) {
        batch_free(b);
        return -ENOMEM;
    }
    for (size_t i = 0; i < n; i++)
        batch_set_time(b, 0, (uint16_t)i, ms[i]);
    return run_emit(r, b);
}

static int emit_state(struct run *r, const char *name, int64_t ms)
{
    struct batch *b = batch_new(BATCH_ANALYTICS_STATE, 1);
    if (!b || batch_add_row(b) < 0 ||
        batch_set_str(b, 0, BATCH_ANALYTICS_STATE_COL_NAME, name, strlen(name)) < 0) {
        batch_free(b);
        return -ENOMEM;
    }
    batch_set_time(b, 0, BATCH_ANALYTICS_STATE_COL_VALUE, ms);
    return run_emit(r, b);
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Sorted, unique. Returns the new count. */
static size_t uniq(int64_t *v, size_t n)
{
    qsort(v, n, sizeof(*v), cmp_i64);
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (k == 0 || v[k - 1] != v[i])
            v[k++] = v[i];
    return k;
}

/* Emits `spec` over runs of consecutive units in v (sorted, unique), at most `chunk` units a
 * statement. */
static int emit_ranges(struct run *r, enum batch_spec_id spec, const int64_t *v, size_t n,
                       int64_t unit, size_t chunk)
{
    for (size_t i = 0; i < n;) {
        size_t j = i + 1;
        while (j < n && j - i < chunk && v[j] == v[j - 1] + unit)
            j++;
        int64_t range[2] = {v[i], v[j - 1] + unit};
        int rc = emit_times(r, spec, range, 2);
        if (rc < 0)
            return rc;
        i = j;
    }
    return 0;
}

static void on_dirty(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct rollups_run *st = run_state(r);
    int64_t *hours = NULL, *days = NULL;
    if (rc < 0) {
        run_fail(r, "reading analytics_dirty", err ? err : strerror(-rc));
        goto done;
    }
    size_t ndirty = rows->nrows, nfirst = 0, nclose = 0;
    int64_t first_hour = 0, close_from = st->days_end;
    if (st->first && st->have_first) {
        first_hour = an_floor(st->first_price, AN_MS_HOUR);
        if (first_hour < st->hours_end)
            nfirst = (size_t)((st->hours_end - first_hour) / AN_MS_HOUR);
    }
    if (st->have_days_until)
        close_from = st->days_until;
    else if (st->have_first)
        close_from = an_floor(st->first_price, AN_MS_DAY);
    if (close_from < st->days_end)
        nclose = (size_t)((st->days_end - close_from) / AN_MS_DAY);
    hours = malloc((ndirty + nfirst + 1) * sizeof(*hours));
    days = malloc((ndirty + nclose + 1) * sizeof(*days));
    if (!hours || !days) {
        run_fail(r, "rollups", "out of memory");
        goto done;
    }
    size_t nh = 0, nd = 0;
    int64_t max_marked = INT64_MIN;
    for (uint32_t i = 0; i < ndirty; i++) {
        int64_t h, m;
        if (cell_time(rows, i, 0, &h) < 0 || cell_time(rows, i, 1, &m) < 0) {
            run_count(r, 1);
            continue;
        }
        hours[nh++] = h;
        if (m > max_marked)
            max_marked = m;
        if (an_floor(h, AN_MS_DAY) < st->days_end)
            days[nd++] = an_floor(h, AN_MS_DAY);
    }
    size_t nmarked = nh;
    int64_t *marked = NULL;
    if (nmarked && !(marked = malloc(nmarked * sizeof(*marked)))) {
        run_fail(r, "rollups", "out of memory");
        goto done;
    }
    if (nmarked)
        memcpy(marked, hours, nmarked * sizeof(*marked));
    for (size_t i = 0; i < nfirst; i++)
        hours[nh++] = first_hour + (int64_t)i * AN_MS_HOUR;
    for (size_t i = 0; i < nclose; i++)
        days[nd++] = close_from + (int64_t)i * AN_MS_DAY;
    nh = uniq(hours, nh);
    nd = uniq(days, nd);
    nmarked = nmarked ? uniq(marked, nmarked) : 0;

    /* Order matters: the mark sees every row handed over before it, the computations see
     * every row handed over before them, and the watermarks move only after both. */
    int64_t mark[2] = {st->now, st->now};
    int e = emit_times(r, BATCH_ANALYTICS_MARK, mark, 2);
    if (!e)
        e = emit_state(r, "rollups.fetched_until", st->now);
    if (!e)
        e = emit_ranges(r, BATCH_ROLLUPS_HOURLY, hours, nh, AN_MS_HOUR, 24);
    if (!e)
        e = emit_ranges(r, BATCH_ROLLUPS_DAILY, days, nd, AN_MS_DAY, 1);
    for (size_t i = 0; !e && i < nmarked;) {
        size_t j = i + 1;
        while (j < nmarked && marked[j] == marked[j - 1] + AN_MS_HOUR)
            j++;
        int64_t unmark[3] = {marked[i], marked[j - 1] + AN_MS_HOUR, max_marked};
        e = emit_times(r, BATCH_ANALYTICS_UNMARK, unmark, 3);
        i = j;
    }
    if (!e && (!st->have_days_until || st->days_end > st->days_until))
        e = emit_state(r, "rollups.days_until", st->days_end);
    free(marked);
    if (e == -ENOMEM)
        run_fail(r, "rollups", "out of memory");
    if (!e)
        log_info("rollups planned", LOG_U("hours", nh), LOG_U("days", nd),
                 LOG_U("marked_hours", nmarked));
done:
    free(hours);
    free(days);
    run_finish(r);
}

static void on_state(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct run *r = arg;
    struct rollups_run *st = run_state(r);
    if (rc < 0 || rows->nrows != 1) {
        run_fail(r, "reading analytics_state", err ? err : strerror(rc < 0 ? -rc : EIO));
        run_finish(r);
        return;
    }
    int64_t ms;
    st->first = cell_time(rows, 0, 0, &ms) < 0;
    st->have_days_until = cell_time(rows, 0, 1, &st->days_until) == 0;
    st->have_first = cell_time(rows, 0, 2, &st->first_price) == 0;
    char until[32];
    an_format_time(st->hours_end, until, sizeof(until));
    const char *params[] = {until};
    rc = run_read(r,
                  "SELECT bucket_start, marked_at FROM analytics_dirty WHERE bucket_start < ?"
                  " ORDER BY bucket_start",
                  params, 1, MAX_DIRTY, on_dirty, r);
    if (rc < 0) {
        run_fail(r, "reading analytics_dirty", strerror(-rc));
        run_finish(r);
    }
}

static int rollups_start(struct run *r)
{
    struct rollups_run *st = run_state(r);
    const struct cfg_value *grace = config_job_value(run_job(r), "grace");
    st->now = (int64_t)run_started_ms(r);
    int64_t closed = st->now - (int64_t)(grace ? grace->u : 0);
    st->hours_end = an_floor(closed, AN_MS_HOUR);
    st->days_end = an_floor(closed, AN_MS_DAY);
    return run_read(r,
                    "SELECT (SELECT value FROM analytics_state"
                    " WHERE name = 'rollups.fetched_until') AS fetched_until,"
                    " (SELECT value FROM analytics_state WHERE name = 'rollups.days_until')"
                    " AS days_until, (SELECT MIN(source_updated_at) FROM prices) AS first_price",
                    NULL, 0, 1, on_state, r);
}

const struct job_def analytics_rollups_job = {
    .name = "rollups",
    .every_ms = 5 * AN_MS_MINUTE,
    .enabled = true,
    .keys = rollups_keys,
    .nkeys = ARRAY_SIZE(rollups_keys),
    .run_size = sizeof(struct rollups_run),
    .start = rollups_start,
};
