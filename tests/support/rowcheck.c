/*
 * rowcheck: assertions on batch rows by column name (see rowcheck.h).
 */
#include "rowcheck.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>

#include <cmocka.h>

const struct val *cell(const struct batch *b, uint32_t row, const char *col)
{
    int c = batch_spec_col(b->spec, col);
    if (c < 0)
        fail_msg("no column %s in %s", col, b->spec->name);
    assert_true(row < b->nrows);
    return batch_val(b, row, (uint16_t)c);
}

void check_null(const struct batch *b, uint32_t row, const char *col)
{
    const struct val *v = cell(b, row, col);
    if (v->type != VAL_NULL)
        fail_msg("row %u %s: expected NULL, type %d", row, col, v->type);
}

void check_dbl(const struct batch *b, uint32_t row, const char *col, double want)
{
    const struct val *v = cell(b, row, col);
    if (v->type != VAL_DBL || v->u.d != want)
        fail_msg("row %u %s: expected %.17g, got type %d %.17g", row, col, want, v->type,
                 v->type == VAL_DBL ? v->u.d : 0.0);
}

void check_int(const struct batch *b, uint32_t row, const char *col, int64_t want)
{
    const struct val *v = cell(b, row, col);
    if (v->type != VAL_INT || v->u.i != want)
        fail_msg("row %u %s: expected %lld, got type %d %lld", row, col, (long long)want, v->type,
                 (long long)v->u.i);
}

void check_time(const struct batch *b, uint32_t row, const char *col, int64_t want)
{
    const struct val *v = cell(b, row, col);
    if (v->type != VAL_TIME || v->u.i != want)
        fail_msg("row %u %s: expected time %lld, got type %d %lld", row, col, (long long)want,
                 v->type, (long long)v->u.i);
}

/* Strings and JSON text, byte-exact (len given, so NUL bytes count). */
void check_bytes(const struct batch *b, uint32_t row, const char *col, int type, const char *want,
                 size_t len)
{
    const struct val *v = cell(b, row, col);
    if (v->type != type || v->len != len || memcmp(v->u.s, want, len) != 0)
        fail_msg("row %u %s: expected type %d '%s', got type %d '%.*s'", row, col, type, want,
                 v->type, (int)v->len, v->type >= VAL_STR ? v->u.s : "");
}

void check_str(const struct batch *b, uint32_t row, const char *col, const char *want)
{
    check_bytes(b, row, col, VAL_STR, want, strlen(want));
}

void check_json(const struct batch *b, uint32_t row, const char *col, const char *want)
{
    check_bytes(b, row, col, VAL_JSON, want, strlen(want));
}

unsigned count_null(const struct batch *b, const char *col)
{
    unsigned n = 0;
    for (uint32_t r = 0; r < b->nrows; r++)
        n += cell(b, r, col)->type == VAL_NULL;
    return n;
}
