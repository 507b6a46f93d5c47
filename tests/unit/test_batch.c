/*
 * test_batch: typed rows, table specs and the spool encoding.
 *
 * Values of every type survive batch_encode/batch_decode bit for bit; every truncation and a
 * set of malformed encodings decode to NULL instead of a half-built batch; split, append and
 * drop keep values and the `bytes` bound consistent; NaN and infinities become NULL; strings
 * stay valid however the arena grows.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/batch.h"

/* Fills every column of a row with a value whose type cycles with (row + col). */
static void fill_row(struct batch *b, uint32_t r)
{
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        char s[64];
        int n;
        switch ((r + c) % 6) {
        case 0:
            batch_set_null(b, r, c);
            break;
        case 1:
            batch_set_int(b, r, c, (int64_t)r * 1000003 - 7);
            break;
        case 2:
            assert_int_equal(batch_set_dbl(b, r, c, r % 2 ? 1e-11 : 1.157920892373162e77), 0);
            break;
        case 3:
            n = snprintf(s, sizeof(s), "x'); DROP TABLE assets; -- %u 🚀 比特币", r);
            assert_int_equal(batch_set_str(b, r, c, s, (size_t)n), 0);
            break;
        case 4:
            batch_set_time(b, r, c, 1739122947123 + r);
            break;
        default:
            n = snprintf(s, sizeof(s), "{\"r\":%u,\"s\":\"\\\\\"}", r);
            assert_int_equal(batch_set_json(b, r, c, s, (size_t)n), 0);
            break;
        }
    }
}

static struct batch *make(enum batch_spec_id id, uint32_t rows)
{
    struct batch *b = batch_new(id, 2);
    assert_non_null(b);
    for (uint32_t i = 0; i < rows; i++) {
        int r = batch_add_row(b);
        assert_int_equal(r, (int)i);
        fill_row(b, (uint32_t)r);
    }
    return b;
}

static void assert_val_equal(const struct val *a, const struct val *b)
{
    assert_int_equal(a->type, b->type);
    switch (a->type) {
    case VAL_INT:
    case VAL_TIME:
        assert_true(a->u.i == b->u.i);
        break;
    case VAL_DBL:
        assert_memory_equal(&a->u.d, &b->u.d, sizeof(double));
        break;
    case VAL_STR:
    case VAL_JSON:
        assert_int_equal(a->len, b->len);
        assert_memory_equal(a->u.s, b->u.s, a->len);
        break;
    default:
        break;
    }
}

static void assert_rows_equal(const struct batch *a, uint32_t ra, const struct batch *b,
                              uint32_t rb)
{
    assert_ptr_equal(a->spec, b->spec);
    for (uint16_t c = 0; c < a->spec->ncols; c++)
        assert_val_equal(batch_val(a, ra, c), batch_val(b, rb, c));
}

static void test_specs(void **state)
{
    (void)state;
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        const struct batch_spec *s = batch_spec((enum batch_spec_id)id);
        assert_non_null(s);
        assert_int_equal(s->id, id);
        assert_true(s->ncols > 0);
        assert_non_null(s->sql);
        for (uint16_t c = 0; c < s->ncols; c++)
            assert_int_equal(batch_spec_col(s, s->cols[c]), c);
        if (s->kind == BATCH_KIND_STATEMENT) {
            int q = 0;
            for (const char *p = s->sql; *p; p++)
                q += *p == '?';
            assert_int_equal(q, s->ncols);
        }
    }
    assert_null(batch_spec(BATCH_SPEC_COUNT));
    assert_null(batch_spec((enum batch_spec_id) - 1));
    assert_int_equal(batch_spec_col(batch_spec(BATCH_PRICES), "nope"), -1);
    assert_null(batch_new(BATCH_SPEC_COUNT, 1));
}

static void test_encode_roundtrip(void **state)
{
    (void)state;
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        struct batch *b = make((enum batch_spec_id)id, 37);
        size_t len = 0;
        unsigned char *enc = batch_encode(b, &len);
        assert_non_null(enc);
        struct batch *d = batch_decode(enc, len);
        assert_non_null(d);
        assert_int_equal(d->nrows, b->nrows);
        assert_int_equal(d->bytes, b->bytes);
        for (uint32_t r = 0; r < b->nrows; r++)
            assert_rows_equal(b, r, d, r);
        free(enc);
        batch_free(d);
        batch_free(b);
    }
    /* An empty batch encodes too. */
    struct batch *e = batch_new(BATCH_JOB_RUNS, 1);
    size_t len;
    unsigned char *enc = batch_encode(e, &len);
    struct batch *d = batch_decode(enc, len);
    assert_non_null(d);
    assert_int_equal(d->nrows, 0);
    free(enc);
    batch_free(d);
    batch_free(e);
}

static void test_decode_rejects(void **state)
{
    (void)state;
    struct batch *b = make(BATCH_GLOBAL_SNAPSHOTS, 5);
    size_t len;
    unsigned char *enc = batch_encode(b, &len);
    /* Every proper prefix is invalid. */
    for (size_t n = 0; n < len; n++)
        assert_null(batch_decode(enc, n));
    /* Trailing bytes are invalid. */
    unsigned char *more = malloc(len + 1);
    memcpy(more, enc, len);
    more[len] = 0;
    assert_null(batch_decode(more, len + 1));
    free(more);
    unsigned char *bad = malloc(len);
    /* Wrong magic. */
    memcpy(bad, enc, len);
    bad[0] = 'X';
    assert_null(batch_decode(bad, len));
    /* Unknown spec id. */
    memcpy(bad, enc, len);
    bad[4] = 0xff;
    bad[5] = 0x7f;
    assert_null(batch_decode(bad, len));
    /* Column count that does not match the spec. */
    memcpy(bad, enc, len);
    bad[6] ^= 1;
    assert_null(batch_decode(bad, len));
    /* A row count far beyond the bytes. */
    memcpy(bad, enc, len);
    bad[8] = bad[9] = bad[10] = 0xff;
    assert_null(batch_decode(bad, len));
    /* An unknown value type in the first value. */
    memcpy(bad, enc, len);
    bad[12] = 9;
    assert_null(batch_decode(bad, len));
    free(bad);
    free(enc);
    batch_free(b);

    /* A NaN smuggled into a DOUBLE value. */
    struct batch *p = batch_new(BATCH_PRICES, 1);
    int r = batch_add_row(p);
    batch_set_dbl(p, (uint32_t)r, 4, 2.5);
    enc = batch_encode(p, &len);
    double two_and_half = 2.5, nan = NAN;
    unsigned char *at = memmem(enc, len, &two_and_half, sizeof(double));
    assert_non_null(at);
    memcpy(at, &nan, sizeof(double));
    assert_null(batch_decode(enc, len));
    free(enc);
    batch_free(p);
}

static void test_nonfinite(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_PRICES, 1);
    int r = batch_add_row(b);
    assert_int_equal(batch_set_dbl(b, (uint32_t)r, 4, NAN), 1);
    assert_int_equal(batch_val(b, 0, 4)->type, VAL_NULL);
    assert_int_equal(batch_set_dbl(b, (uint32_t)r, 5, INFINITY), 1);
    assert_int_equal(batch_set_dbl(b, (uint32_t)r, 6, -INFINITY), 1);
    assert_int_equal(batch_val(b, 0, 6)->type, VAL_NULL);
    assert_int_equal(batch_set_dbl(b, (uint32_t)r, 7, -0.0), 0);
    assert_int_equal(batch_val(b, 0, 7)->type, VAL_DBL);
    assert_true(signbit(batch_val(b, 0, 7)->u.d));
    batch_free(b);
}

static void test_bytes_bound(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_ASSETS_LIST, 1);
    size_t empty = b->bytes;
    assert_int_equal(empty, 0);
    int r = batch_add_row(b);
    size_t one_null_row = b->bytes;
    assert_true(one_null_row > 0);
    const char *s = "quote ' and backslash \\";
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, s, strlen(s)), 0);
    /* Escaping may double every byte; the bound allows for it. */
    assert_true(b->bytes >= one_null_row - strlen("NULL,") + 2 * strlen(s) + 2);
    /* Overwriting a value replaces its share. */
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, "x", 1), 0);
    size_t small = b->bytes;
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, s, strlen(s)), 0);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, "x", 1), 0);
    assert_int_equal(b->bytes, small);
    batch_set_null(b, (uint32_t)r, 0);
    assert_int_equal(b->bytes, one_null_row);
    batch_drop_last(b);
    assert_int_equal(b->nrows, 0);
    assert_int_equal(b->bytes, empty);
    batch_drop_last(b); /* no-op on an empty batch */
    assert_int_equal(b->bytes, empty);
    batch_free(b);
}

static void test_split_append(void **state)
{
    (void)state;
    struct batch *b = make(BATCH_MARKET_SNAPSHOTS, 101);
    struct batch *orig = make(BATCH_MARKET_SNAPSHOTS, 101);
    size_t bytes = b->bytes;
    struct batch *t = batch_split_tail(b, 60);
    assert_non_null(t);
    assert_int_equal(b->nrows, 60);
    assert_int_equal(t->nrows, 41);
    assert_int_equal(b->bytes + t->bytes, bytes);
    for (uint32_t r = 0; r < 60; r++)
        assert_rows_equal(b, r, orig, r);
    for (uint32_t r = 0; r < 41; r++)
        assert_rows_equal(t, r, orig, 60 + r);
    assert_int_equal(batch_append(b, t), 0);
    assert_int_equal(b->nrows, 101);
    assert_int_equal(b->bytes, bytes);
    for (uint32_t r = 0; r < 101; r++)
        assert_rows_equal(b, r, orig, r);
    /* Splitting at the end gives an empty batch; past the end too. */
    struct batch *e = batch_split_tail(b, 500);
    assert_non_null(e);
    assert_int_equal(e->nrows, 0);
    assert_int_equal(b->nrows, 101);
    batch_free(e);
    /* Appending across specs is refused. */
    struct batch *other = make(BATCH_PRICES, 1);
    assert_int_equal(batch_append(b, other), -22);
    batch_free(other);
    batch_free(t);
    batch_free(b);
    batch_free(orig);
}

/* A spool record written before a column was appended to its spec (job_runs.instance) still
 * decodes, the missing column NULL; a record with more columns than the spec does not. */
static void test_decode_older_record(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_JOB_RUNS, 1);
    assert_int_equal(batch_add_row(b), 0);
    assert_int_equal(batch_set_str(b, 0, BATCH_JOB_RUNS_COL_JOB, "prices", 6), 0);
    batch_set_time(b, 0, BATCH_JOB_RUNS_COL_STARTED_AT, 1739120400000);
    assert_int_equal(batch_set_str(b, 0, BATCH_JOB_RUNS_COL_STATUS, "ok", 2), 0);
    size_t len = 0;
    unsigned char *enc = batch_encode(b, &len);
    assert_non_null(enc);
    /* The last value is the NULL instance: one type byte. Drop it and the column. */
    assert_int_equal(enc[len - 1], VAL_NULL);
    uint16_t ncols;
    memcpy(&ncols, enc + 6, 2);
    assert_int_equal(ncols, BATCH_JOB_RUNS_NCOLS);
    ncols--;
    memcpy(enc + 6, &ncols, 2);
    struct batch *d = batch_decode(enc, len - 1);
    assert_non_null(d);
    assert_int_equal(d->nrows, 1);
    assert_int_equal(batch_val(d, 0, BATCH_JOB_RUNS_COL_JOB)->type, VAL_STR);
    assert_int_equal(batch_val(d, 0, BATCH_JOB_RUNS_COL_INSTANCE)->type, VAL_NULL);
    batch_free(d);
    ncols += 2; /* more columns than the spec has: refused */
    memcpy(enc + 6, &ncols, 2);
    assert_null(batch_decode(enc, len - 1));
    free(enc);
    batch_free(b);
}

static void test_arena(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_CATEGORIES, 1);
    size_t big = 100000;
    char *huge = malloc(big);
    for (size_t i = 0; i < big; i++)
        huge[i] = (char)('a' + i % 26);
    /* Many small strings, then a huge one, then small ones again: all stay valid. */
    for (int i = 0; i < 3000; i++) {
        int r = batch_add_row(b);
        char s[32];
        int n = snprintf(s, sizeof(s), "cat-%d", i);
        if (i == 1500)
            assert_int_equal(batch_set_str(b, (uint32_t)r, 1, huge, big), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 0, s, (size_t)n), 0);
    }
    for (int i = 0; i < 3000; i++) {
        char s[32];
        int n = snprintf(s, sizeof(s), "cat-%d", i);
        const struct val *v = batch_val(b, (uint32_t)i, 0);
        assert_int_equal(v->len, n);
        assert_memory_equal(v->u.s, s, (size_t)n);
    }
    const struct val *h = batch_val(b, 1500, 1);
    assert_int_equal(h->len, big);
    assert_memory_equal(h->u.s, huge, big);
    /* Empty strings are strings, not NULLs. */
    int r = batch_add_row(b);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 1, "", 0), 0);
    assert_int_equal(batch_val(b, (uint32_t)r, 1)->type, VAL_STR);
    assert_int_equal(batch_val(b, (uint32_t)r, 1)->len, 0);
    free(huge);
    batch_free(b);
    batch_free(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_specs),          cmocka_unit_test(test_encode_roundtrip),
        cmocka_unit_test(test_decode_rejects), cmocka_unit_test(test_nonfinite),
        cmocka_unit_test(test_bytes_bound),    cmocka_unit_test(test_split_append),
        cmocka_unit_test(test_arena),          cmocka_unit_test(test_decode_older_record),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
