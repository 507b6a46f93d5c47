/*
 * analytics calc: the daily indicators of one series (docs/analytics.md), one day at a time.
 *
 * A series keeps the closes of its last few days in a ring indexed by day number, so a day's
 * indicators need only that ring and the Wilder averages of the day before. The same function
 * computes a day whether the run started from scratch or from the state stored for the day
 * before (an_series_context): every value is produced by the same operations in the same
 * order, so an incremental run and a recomputation agree to the last bit.
 *
 * Days are calendar days: a change, a return or a log return needs the close of the exact
 * day it refers to, and a missing day breaks a window (the value is NULL until the window is
 * full again; the RSI starts over with a new simple mean).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "sources/analytics/analytics.h"

int an_series_init(struct an_series *s, uint32_t return_days)
{
    uint32_t ring = (return_days > AN_VOL_LONG ? return_days : AN_VOL_LONG) + 1;
    s->ring = ring;
    s->days = malloc(ring * sizeof(*s->days));
    s->closes = malloc(ring * sizeof(*s->closes));
    s->have_avg = false;
    if (!s->days || !s->closes) {
        an_series_free(s);
        return -ENOMEM;
    }
    for (uint32_t i = 0; i < ring; i++)
        s->days[i] = INT64_MIN;
    return 0;
}

void an_series_free(struct an_series *s)
{
    free(s->days);
    free(s->closes);
    s->days = NULL;
    s->closes = NULL;
}

static uint32_t slot(const struct an_series *s, int64_t day)
{
    int64_t m = day % (int64_t)s->ring;
    return (uint32_t)(m < 0 ? m + s->ring : m);
}

static void put(struct an_series *s, int64_t day, double close)
{
    uint32_t i = slot(s, day);
    s->days[i] = day;
    s->closes[i] = close;
}

/* The close of `day`, if the ring holds it. */
static bool close_at(const struct an_series *s, int64_t day, double *close)
{
    uint32_t i = slot(s, day);
    if (s->days[i] != day)
        return false;
    *close = s->closes[i];
    return true;
}

void an_series_context(struct an_series *s, int64_t day, double close, const double *avg_gain,
                       const double *avg_loss)
{
    put(s, day, close);
    s->have_avg = avg_gain && avg_loss;
    if (s->have_avg) {
        s->avg_day = day;
        s->avg_gain = *avg_gain;
        s->avg_loss = *avg_loss;
    }
}

double an_rsi(double avg_gain, double avg_loss)
{
    if (avg_loss == 0)
        return avg_gain == 0 ? 50.0 : 100.0;
    return 100.0 - 100.0 / (1.0 + avg_gain / avg_loss);
}

/* Simple return of `close` against the close of `day`. */
static bool simple_return(const struct an_series *s, int64_t day, double close, double *out)
{
    double then;
    if (!close_at(s, day, &then) || then == 0)
        return false;
    *out = close / then - 1.0;
    return true;
}

/* Annualised sample standard deviation of the `w` daily log returns ending at `day`. */
static bool volatility(const struct an_series *s, int64_t day, uint32_t w, double *out)
{
    double r[AN_VOL_LONG > AN_VOL_SHORT ? AN_VOL_LONG : AN_VOL_SHORT];
    double sum = 0;
    for (uint32_t k = 0; k < w; k++) {
        int64_t d = day - (int64_t)w + 1 + k;
        double a, b;
        if (!close_at(s, d - 1, &a) || !close_at(s, d, &b) || a <= 0 || b <= 0)
            return false;
        r[k] = log(b / a);
        sum += r[k];
    }
    double mean = sum / w, ss = 0;
    for (uint32_t k = 0; k < w; k++)
        ss += (r[k] - mean) * (r[k] - mean);
    *out = sqrt(ss / (w - 1)) * sqrt(365.0);
    return true;
}

/* The Wilder averages of `day`: the recursion from the day before, or the simple mean of the
 * AN_RSI_PERIOD changes ending at `day` when the day before has none. */
static bool wilder(struct an_series *s, int64_t day)
{
    double prev = 0, close = 0;
    if (!close_at(s, day - 1, &prev) || !close_at(s, day, &close))
        return false;
    if (s->have_avg && s->avg_day == day - 1) {
        double change = close - prev;
        double gain = change > 0 ? change : 0, loss = change < 0 ? -change : 0;
        s->avg_gain = (s->avg_gain * (AN_RSI_PERIOD - 1) + gain) / AN_RSI_PERIOD;
        s->avg_loss = (s->avg_loss * (AN_RSI_PERIOD - 1) + loss) / AN_RSI_PERIOD;
        s->avg_day = day;
        return true;
    }
    double gains = 0, losses = 0;
    for (int64_t d = day - AN_RSI_PERIOD + 1; d <= day; d++) {
        double a, b;
        if (!close_at(s, d - 1, &a) || !close_at(s, d, &b))
            return false;
        if (b > a)
            gains += b - a;
        else
            losses += a - b;
    }
    s->have_avg = true;
    s->avg_day = day;
    s->avg_gain = gains / AN_RSI_PERIOD;
    s->avg_loss = losses / AN_RSI_PERIOD;
    return true;
}

void an_series_compute(struct an_series *s, int64_t day, double close, uint32_t return_days,
                       struct an_day *out)
{
    *out = (struct an_day){0};
    put(s, day, close);
    out->has_return_1d = simple_return(s, day - 1, close, &out->return_1d);
    out->has_return_nd = simple_return(s, day - (int64_t)return_days, close, &out->return_nd);
    if (wilder(s, day)) {
        out->has_rsi = true;
        out->avg_gain = s->avg_gain;
        out->avg_loss = s->avg_loss;
        out->rsi = an_rsi(s->avg_gain, s->avg_loss);
    } else {
        s->have_avg = false;
    }
    out->has_vol_short = volatility(s, day, AN_VOL_SHORT, &out->vol_short);
    out->has_vol_long = volatility(s, day, AN_VOL_LONG, &out->vol_long);
}

/* ---- time ------------------------------------------------------------------------------- */

/* Howard Hinnant's civil-date algorithms (public domain description). */
int64_t an_days_from_civil(int y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

void an_civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yoe + era * 400) + (*m <= 2);
}

int an_parse_time(const char *s, int64_t *ms)
{
    int y, mo, d, h = 0, mi = 0, sec = 0, n = 0;
    if (!s || sscanf(s, "%4d-%2d-%2d%n", &y, &mo, &d, &n) != 3)
        return -EINVAL;
    const char *p = s + n;
    int frac = 0;
    if (*p == ' ' || *p == 'T') {
        if (sscanf(p + 1, "%2d:%2d:%2d%n", &h, &mi, &sec, &n) != 3)
            return -EINVAL;
        p += 1 + n;
        if (*p == '.') {
            int scale = 100;
            for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
                frac += (*p - '0') * scale;
        }
    }
    if (*p || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -EINVAL;
    int64_t day = an_days_from_civil(y, (unsigned)mo, (unsigned)d);
    *ms = day * AN_MS_DAY + h * AN_MS_HOUR + mi * AN_MS_MINUTE + sec * 1000ll + frac;
    return 0;
}

void an_format_day(int64_t day, char *buf, size_t cap)
{
    int y;
    unsigned m, d;
    an_civil_from_days(day, &y, &m, &d);
    snprintf(buf, cap, "%04d-%02u-%02u", y, m, d);
}

void an_format_time(int64_t ms, char *buf, size_t cap)
{
    int64_t day = an_floor(ms, AN_MS_DAY) / AN_MS_DAY;
    int64_t rest = ms - day * AN_MS_DAY;
    char dbuf[16];
    an_format_day(day, dbuf, sizeof(dbuf));
    snprintf(buf, cap, "%s %02d:%02d:%02d.%03d", dbuf, (int)(rest / AN_MS_HOUR),
             (int)(rest / AN_MS_MINUTE % 60), (int)(rest / 1000 % 60), (int)(rest % 1000));
}
