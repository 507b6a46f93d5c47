/*
 * export format: how one database value is spelled in the CSV and the JSON Lines files
 * (docs/export.md, "Values"). Pure functions over a struct sbuf.
 *
 * CSV follows RFC 4180: fields separated by ',', records ended by CRLF, a field quoted with '"'
 * when it is a string, quotes inside doubled. NULL has exactly one spelling, an empty unquoted
 * field; since every string is quoted, an empty string ("") can never be read as NULL. Times
 * are ISO-8601 in UTC with milliseconds and a 'Z'; doubles are the shortest text that reads
 * back as the same double (sbuf_put_double).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sources/export/export.h"

const struct export_table export_tables[] = {
    {"prices", "source_updated_at", NULL},
    {"market_snapshots", "snapshot_at", NULL},
    {"global_snapshots", "snapshot_at", NULL},
    {"candles", "open_time", NULL},
    /* Its time index is (bucket, bucket_start): without the bucket, a day is a full scan. */
    {"price_rollups", "bucket_start", "`bucket` IN ('1h', '1d')"},
    {"indicators_daily", "day", NULL},
    {"movers_daily", "day", NULL},
};
const size_t export_ntables = sizeof(export_tables) / sizeof(export_tables[0]);

const struct export_table *export_table_find(const char *name)
{
    for (size_t i = 0; i < export_ntables; i++)
        if (strcmp(export_tables[i].name, name) == 0)
            return &export_tables[i];
    return NULL;
}

enum export_kind export_kind_of(const char *t)
{
    static const char *const ints[] = {"tinyint", "smallint", "mediumint", "int",
                                       "integer", "bigint",   "year",      "bit"};
    for (size_t i = 0; i < sizeof(ints) / sizeof(ints[0]); i++)
        if (strcmp(t, ints[i]) == 0)
            return EXPORT_INT;
    if (strcmp(t, "double") == 0 || strcmp(t, "float") == 0 || strcmp(t, "real") == 0)
        return EXPORT_DOUBLE;
    if (strcmp(t, "datetime") == 0 || strcmp(t, "timestamp") == 0)
        return EXPORT_TIME;
    if (strcmp(t, "date") == 0)
        return EXPORT_DATE;
    if (strcmp(t, "decimal") == 0 || strcmp(t, "numeric") == 0)
        return EXPORT_NUMBER;
    return EXPORT_TEXT;
}

int64_t export_days_from_civil(int y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    const unsigned doe = (unsigned)(z - era * 146097);
    const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    const unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yoe + era * 400) + (*m <= 2);
}

static int64_t floor_div(int64_t a, int64_t b)
{
    int64_t q = a / b;
    return a % b < 0 ? q - 1 : q;
}

void export_format_day(int64_t day, char *buf, size_t cap)
{
    int y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    snprintf(buf, cap, "%04d-%02u-%02u", y, m, d);
}

void export_format_time(int64_t ms, char *buf, size_t cap)
{
    int64_t day = floor_div(ms, EXPORT_MS_DAY), in = ms - day * EXPORT_MS_DAY;
    int y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    snprintf(buf, cap, "%04d-%02u-%02uT%02u:%02u:%02u.%03uZ", y, m, d, (unsigned)(in / 3600000),
             (unsigned)(in / 60000 % 60), (unsigned)(in / 1000 % 60), (unsigned)(in % 1000));
}

int export_parse_day_dir(const char *name, int64_t *day)
{
    int y;
    unsigned m, d;
    int used = 0;
    if (strncmp(name, "date=", 5) != 0 || strlen(name) != 15 ||
        sscanf(name + 5, "%4d-%2u-%2u%n", &y, &m, &d, &used) != 3 || used != 10 || m < 1 ||
        m > 12 || d < 1 || d > 31)
        return -EINVAL;
    *day = export_days_from_civil(y, m, d);
    char back[32];
    export_format_day(*day, back, sizeof(back));
    return strcmp(back, name + 5) == 0 ? 0 : -EINVAL;
}

/* Scalars that are not strings: the same text in CSV and JSON. */
static int put_scalar(struct sbuf *b, enum export_kind kind, const struct export_value *v)
{
    char tmp[48];
    switch (kind) {
    case EXPORT_INT:
        if (v->is_unsigned)
            snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v->i);
        else
            snprintf(tmp, sizeof(tmp), "%lld", v->i);
        return sbuf_puts(b, tmp);
    case EXPORT_DOUBLE:
        return sbuf_put_double(b, v->d);
    case EXPORT_NUMBER:
        return sbuf_append(b, v->s, v->n);
    case EXPORT_TIME:
        export_format_time(v->ms, tmp, sizeof(tmp));
        return sbuf_puts(b, tmp);
    case EXPORT_DATE:
        export_format_day(floor_div(v->ms, EXPORT_MS_DAY), tmp, sizeof(tmp));
        return sbuf_puts(b, tmp);
    case EXPORT_TEXT:
        break;
    }
    return -EINVAL;
}

int export_csv_value(struct sbuf *b, enum export_kind kind, const struct export_value *v)
{
    if (v->null || (kind == EXPORT_DOUBLE && !isfinite(v->d)))
        return 0;
    if (kind != EXPORT_TEXT)
        return put_scalar(b, kind, v);
    int rc = sbuf_putc(b, '"');
    size_t run = 0;
    for (size_t i = 0; i < v->n && !rc; i++) {
        if (v->s[i] != '"')
            continue;
        rc = sbuf_append(b, v->s + run, i + 1 - run); /* the quote, then its double */
        if (!rc)
            rc = sbuf_putc(b, '"');
        run = i + 1;
    }
    if (!rc)
        rc = sbuf_append(b, v->s + run, v->n - run);
    if (!rc)
        rc = sbuf_putc(b, '"');
    return rc;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when it is not one (RFC 3629: no
 * overlongs, no surrogates, nothing above U+10FFFF). */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80)
        return 1;
    if (c >= 0xc2 && c <= 0xdf)
        len = 2, min = 0x80;
    else if (c >= 0xe0 && c <= 0xef)
        len = 3, min = 0x800;
    else if (c >= 0xf0 && c <= 0xf4)
        len = 4, min = 0x10000;
    else
        return 0;
    if (n < len)
        return 0;
    unsigned cp = c & (0x3f >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

int export_json_string(struct sbuf *b, const char *str, size_t n)
{
    const unsigned char *s = (const unsigned char *)str;
    int rc = sbuf_putc(b, '"');
    size_t i = 0, run = 0;
    while (i < n && !rc) {
        unsigned c = s[i];
        const char *esc = NULL;
        char tmp[8];
        size_t skip = 1;
        if (c == '"')
            esc = "\\\"";
        else if (c == '\\')
            esc = "\\\\";
        else if (c == '\n')
            esc = "\\n";
        else if (c == '\r')
            esc = "\\r";
        else if (c == '\t')
            esc = "\\t";
        else if (c < 0x20) {
            snprintf(tmp, sizeof(tmp), "\\u%04x", c);
            esc = tmp;
        } else if (c >= 0x80) {
            skip = utf8_len(s + i, n - i);
            if (skip == 0) {
                esc = "\xef\xbf\xbd"; /* U+FFFD for a byte that is not UTF-8 */
                skip = 1;
            }
        }
        if (esc) {
            rc = sbuf_append(b, str + run, i - run);
            if (!rc)
                rc = sbuf_puts(b, esc);
            run = i + skip;
        }
        i += skip;
    }
    if (!rc)
        rc = sbuf_append(b, str + run, n - run);
    if (!rc)
        rc = sbuf_putc(b, '"');
    return rc;
}

int export_json_value(struct sbuf *b, enum export_kind kind, const struct export_value *v)
{
    if (v->null || (kind == EXPORT_DOUBLE && !isfinite(v->d)))
        return sbuf_append(b, "null", 4);
    if (kind == EXPORT_TEXT)
        return export_json_string(b, v->s, v->n);
    if (kind == EXPORT_TIME || kind == EXPORT_DATE) {
        int rc = sbuf_putc(b, '"');
        if (!rc)
            rc = put_scalar(b, kind, v);
        return rc ? rc : sbuf_putc(b, '"');
    }
    return put_scalar(b, kind, v);
}
