/*
 * analytics: what the files of the analytics source share (private to src/sources/analytics/
 * and its tests). docs/analytics.md has the definitions and the design.
 *
 * The source has no remote API (no plans): its jobs read the database through run_read and
 * write it through run_emit, as statements the sink runs on a writer connection (barriers:
 * each runs after every batch submitted before it has committed) and as upserts.
 *
 * Thread: loop thread (the jobs); the calc functions are pure and run anywhere.
 */
#ifndef COINGEST_SOURCES_ANALYTICS_H
#define COINGEST_SOURCES_ANALYTICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/runner.h"

extern const struct job_def analytics_rollups_job;
extern const struct job_def analytics_indicators_job;
extern const struct job_def analytics_retention_job;

#define AN_MS_MINUTE 60000ll
#define AN_MS_HOUR   (60 * AN_MS_MINUTE)
#define AN_MS_DAY    (24 * AN_MS_HOUR)

/* The RSI period and the volatility windows (days). */
#define AN_RSI_PERIOD 14
#define AN_VOL_SHORT  14
#define AN_VOL_LONG   30

/* ---- calc.c: the daily indicators of one series, one day at a time ---------------------- */

/* A series: the closes of the last `ring` days (by day number, days since 1970-01-01 UTC) and
 * the Wilder averages of the last day that has them. */
struct an_series {
    uint32_t ring;   /* slots: max(return_days, AN_VOL_LONG) + 1 */
    int64_t *days;   /* day of each slot, INT64_MIN when empty */
    double *closes;  /* close of that day */
    bool have_avg;   /* avg_gain/avg_loss hold the averages of avg_day */
    int64_t avg_day; /* the day they belong to */
    double avg_gain, avg_loss;
};

/* One day's indicators; has_* false means NULL (the window is not full, or a price is 0). */
struct an_day {
    double return_1d, return_nd, rsi, avg_gain, avg_loss, vol_short, vol_long;
    bool has_return_1d, has_return_nd, has_rsi, has_vol_short, has_vol_long;
};

/* Sets up a series for return windows of `return_days`. 0 or -ENOMEM. */
int an_series_init(struct an_series *s, uint32_t return_days);
void an_series_free(struct an_series *s);

/* A day before the ones to compute (context): its close, and the averages stored for it
 * (NULL: none). Days come in increasing order. */
void an_series_context(struct an_series *s, int64_t day, double close, const double *avg_gain,
                       const double *avg_loss);

/* Computes day `day` with close `close` (days in increasing order, after the context). */
void an_series_compute(struct an_series *s, int64_t day, double close, uint32_t return_days,
                       struct an_day *out);

/* RSI from the Wilder averages: 100 - 100 / (1 + gain/loss); 100 when there is no loss, 50
 * when there is neither gain nor loss (flat prices). */
double an_rsi(double avg_gain, double avg_loss);

/* ---- time helpers ------------------------------------------------------------------------ */

/* Day number of a civil date, and back. */
int64_t an_days_from_civil(int y, unsigned m, unsigned d);
void an_civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d);

/* "YYYY-MM-DD[ HH:MM:SS[.fff]]" (the server's text for DATE / DATETIME(3)) to ms since the
 * epoch. 0 or -EINVAL. */
int an_parse_time(const char *s, int64_t *ms);

/* ms to "YYYY-MM-DD HH:MM:SS.mmm" and a day number to "YYYY-MM-DD" (buf: 32 bytes). */
void an_format_time(int64_t ms, char *buf, size_t cap);
void an_format_day(int64_t day, char *buf, size_t cap);

/* Floor division of ms to a multiple of `unit` (negative times round down). */
static inline int64_t an_floor(int64_t ms, int64_t unit)
{
    int64_t q = ms / unit;
    if (ms % unit < 0)
        q--;
    return q * unit;
}

/* The labels of the retention counter, made at 0 when the runner starts. */
#define AN_METRIC_DELETED "coingest_retention_deleted_rows_total"

#endif
