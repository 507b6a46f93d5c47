/*
 * test_jrows: the JSON -> rows library (include/coingest/jrows.h) on its own, with small
 * hand-written bodies: loading (numbers, overflow patching, bad JSON), field tables resolved by
 * column name, every kind and its counters (wrong types, bad times, missing fields), array
 * walks with and without ids, error messages, all-or-nothing rollback, the JSON text
 * serializer, and allocation failures at every point of a parse.
 *
 * The batches are real specs (market_snapshots has a column of every kind); the library knows
 * nothing of CoinGecko, and neither do these bodies.
 */
#include <errno.h>
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
#include "coingest/jrows.h"
#include "coingest/sbuf.h"
#include "rowcheck.h"

/* Allocation failure injection for the error paths (tests/support/allocfail.h): under
 * ASan/TSan the replacement is left out and the test that needs it skips. */
#include "allocfail.h"

/* --- helpers ------------------------------------------------------------------------------ */

/* A source's error bodies, for messages: {"oops": "..."}. */
static const char *oops_message(const json_t *root)
{
    const json_t *m = json_object_get(root, "oops");
    return json_is_string(m) ? json_string_value(m) : NULL;
}

/* --- one small source: an array of {"key": ...} objects into market_snapshots ------------ */

static const struct jrows_field snap_fields[] = {
    {"price", "price", JROWS_NUM},    {"rank", "market_cap_rank", JROWS_UINT},
    {"vs", "vs_currency", JROWS_STR}, {"ath_at", "ath_date", JROWS_ISO_TIME},
    {"roi", "roi", JROWS_JSON_OBJ},   {"cap.usd", "market_cap", JROWS_NUM},
};
enum { SN_ASSET_ID, SN_FETCHED_AT, SN_FIXED };
static const char *const snap_fixed[SN_FIXED] = {"asset_id", "fetched_at"};

#define NSNAP   (SN_FIXED + JROWS_NFIELDS(snap_fields))
#define FETCHED 1700000000000LL

struct snap_ctx {
    struct batch *b;
    uint16_t cols[NSNAP];
    int fail_at; /* element index whose callback fails with -EIO, or -1 */
    int calls;
};

static int snap_row(struct jrows *j, const json_t *elem, const json_t *id, void *arg)
{
    struct snap_ctx *c = arg;
    if (c->calls++ == c->fail_at)
        return -EIO;
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = jrows_put(j, c->b, r, c->cols[SN_ASSET_ID], JROWS_STR, id);
    batch_set_time(c->b, r, c->cols[SN_FETCHED_AT], FETCHED);
    if (!rc)
        rc = jrows_put_fields(j, c->b, r, elem, snap_fields, c->cols + SN_FIXED,
                              JROWS_NFIELDS(snap_fields));
    if (!rc)
        rc = jrows_keep_id(j, id);
    return rc;
}

/* Parses body as an array of snapshots into b (ids into ids). */
static int parse_snaps(const char *body, struct batch *b, struct strlist *ids,
                       struct jrows_stats *st, char *err, size_t errlen, int fail_at)
{
    struct jrows j;
    struct snap_ctx c = {.b = b, .fail_at = fail_at};
    jrows_begin(&j, "test /snaps", ids, oops_message, err, errlen);
    int rc = jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, snap_fixed, SN_FIXED, snap_fields,
                       JROWS_NFIELDS(snap_fields), c.cols);
    if (rc)
        return jrows_finish(&j, rc);
    rc = jrows_array(&j, body, strlen(body), "an array of snapshots", "key", snap_row, &c, NULL);
    if (st)
        *st = j.st;
    return rc;
}

/* --- tests -------------------------------------------------------------------------------- */

static void test_columns_by_name(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct jrows j;
    uint16_t cols[NSNAP];
    jrows_begin(&j, "t", NULL, NULL, NULL, 0);
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, snap_fixed, SN_FIXED, snap_fields,
                               JROWS_NFIELDS(snap_fields), cols),
                     0);
    /* Each column is where the spec says its name is, whatever the order of the table. */
    for (size_t i = 0; i < NSNAP; i++) {
        const char *name = i < SN_FIXED ? snap_fixed[i] : snap_fields[i - SN_FIXED].col;
        assert_int_equal(cols[i], batch_spec_col(b->spec, name));
    }
    assert_int_equal(jrows_finish(&j, 0), 0);

    /* A batch of another spec, a column the spec lacks, no batch, too many outputs. */
    char err[128] = "";
    static const struct jrows_field bad[] = {{"x", "no_such_column", JROWS_NUM}};
    jrows_begin(&j, "t", NULL, NULL, err, sizeof(err));
    assert_int_equal(jrows_out(&j, b, BATCH_PRICES, NULL, 0, NULL, 0, cols), -EINVAL);
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, NULL, 0, bad, 1, cols), -EINVAL);
    assert_int_equal(jrows_out(&j, NULL, BATCH_MARKET_SNAPSHOTS, NULL, 0, NULL, 0, cols), -EINVAL);
    for (int i = 0; i < JROWS_MAX_OUT; i++)
        assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, NULL, 0, NULL, 0, cols), 0);
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, NULL, 0, NULL, 0, cols), -EINVAL);
    assert_int_equal(jrows_finish(&j, -EINVAL), -EINVAL);
    assert_non_null(strstr(err, "t: bad arguments"));
    batch_free(b);
}

static void test_kinds_and_counters(void **state)
{
    (void)state;
    const char *body =
        "[{\"key\":\"a\",\"price\":1.5,\"rank\":7,\"vs\":\"usd\",\"ath_at\":\"2021-11-10T14:24:11."
        "849Z\","
        "\"roi\":{\"times\":0.1,\"n\":1,\"s\":\"x\"},\"cap\":{\"usd\":2e3}},"
        /* wrong types everywhere */
        "{\"key\":\"b\",\"price\":\"1.5\",\"rank\":1.5,\"vs\":3,\"ath_at\":17,\"roi\":[1],"
        "\"cap\":5},"
        /* nulls: NULL columns, not counted */
        "{\"key\":\"c\",\"price\":null,\"rank\":null,\"vs\":null,\"ath_at\":null,\"roi\":null,"
        "\"cap\":null},"
        /* absent keys: NULL columns, counted as missing (cap.usd once: cap absent) */
        "{\"key\":\"d\"},"
        /* unusable values: rank out of range, time that does not parse, time after 9999 */
        "{\"key\":\"e\",\"rank\":4294967296,\"ath_at\":\"yesterday\",\"cap\":{\"usd\":null}},"
        "{\"key\":\"f\",\"rank\":4294967295,\"ath_at\":\"10000-01-01T00:00:00Z\",\"cap\":{}},"
        "{\"key\":\"g\",\"rank\":-1,\"price\":-0.0}]";
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct jrows_stats st;
    char err[128] = "";
    assert_int_equal(parse_snaps(body, b, NULL, &st, err, sizeof(err), -1), 0);
    assert_int_equal(b->nrows, 7);

    check_str(b, 0, "asset_id", "a");
    check_dbl(b, 0, "price", 1.5);
    check_int(b, 0, "market_cap_rank", 7);
    check_str(b, 0, "vs_currency", "usd");
    check_time(b, 0, "ath_date", 1636554251849LL);
    check_json(b, 0, "roi", "{\"times\":0.1,\"n\":1,\"s\":\"x\"}");
    check_dbl(b, 0, "market_cap", 2000.0);
    check_time(b, 0, "fetched_at", FETCHED);

    for (uint32_t r = 1; r <= 3; r++) {
        check_null(b, r, "price");
        check_null(b, r, "market_cap_rank");
        check_null(b, r, "vs_currency");
        check_null(b, r, "ath_date");
        check_null(b, r, "roi");
        check_null(b, r, "market_cap");
    }
    check_null(b, 4, "market_cap_rank");
    check_null(b, 4, "ath_date");
    check_null(b, 4, "market_cap");
    check_int(b, 5, "market_cap_rank", 4294967295LL);
    check_null(b, 5, "ath_date");
    check_null(b, 6, "market_cap_rank");
    check_dbl(b, 6, "price", -0.0);

    assert_int_equal(st.items, 7);
    assert_int_equal(st.rows, 7);
    assert_int_equal(st.skipped, 0);
    /* b: price, rank, vs, ath_at, roi, cap (not an object); e: rank; g: rank */
    assert_int_equal(st.field_type_errors, 6 + 1 + 1);
    /* e: "yesterday"; f: year 10000 */
    assert_int_equal(st.bad_times, 2);
    /* d: all six; e: price, vs, roi; f: price, vs, roi, cap.usd; g: vs, ath_at, roi, cap */
    assert_int_equal(st.missing_fields, 6 + 3 + 4 + 4);
    assert_int_equal(st.overflow_numbers, 0);
    batch_free(b);
}

static void test_numbers_and_overflow(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct jrows_stats st;
    char err[256] = "";
    /* Integers wider than 64 bits, exponents, and numbers beyond a double (patched to null). */
    const char *body =
        "[{\"key\":\"a\",\"price\":"
        "115792089237316195423570985008687907853269984665640564039457584007913129639935"
        ",\"cap\":{\"usd\":1e400}},"
        "{\"key\":\"b\",\"price\":-6.0e-05,\"roi\":{\"x\":-1E+400,\"y\":2}}]";
    assert_int_equal(parse_snaps(body, b, NULL, &st, err, sizeof(err), -1), 0);
    check_dbl(b, 0, "price", 1.157920892373162e+77);
    check_null(b, 0, "market_cap");
    check_dbl(b, 1, "price", -6.0e-05);
    check_json(b, 1, "roi", "{\"x\":null,\"y\":2}");
    assert_int_equal(st.overflow_numbers, 2);
    assert_int_equal(st.field_type_errors, 0);

    /* More than JROWS_MAX_OVERFLOWS: refused. */
    char many[512] = "[{\"key\":\"a\",\"roi\":{";
    for (int i = 0; i <= JROWS_MAX_OVERFLOWS; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "%s\"k%d\":1e999", i ? "," : "",
                 i);
    strcat(many, "}}]");
    assert_int_equal(parse_snaps(many, b, NULL, NULL, err, sizeof(err), -1), -EBADMSG);
    assert_non_null(strstr(err, "test /snaps: body is not valid JSON"));
    assert_int_equal(b->nrows, 2);

    /* Patching never turns a bad document into a good one. */
    assert_int_equal(parse_snaps("[1e400x]", b, NULL, NULL, err, sizeof(err), -1), -EBADMSG);
    assert_int_equal(parse_snaps("[\"a\"1e400]", b, NULL, NULL, err, sizeof(err), -1), -EBADMSG);
    assert_int_equal(b->nrows, 2);
    batch_free(b);
}

static void test_strings_exact(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    char err[128] = "";
    const char *body = "[{\"key\":\"id with spaces\",\"vs\":\"a\\u0000b\\ud83e\\udd21\"},"
                       "{\"key\":\"e\",\"vs\":\"\"}]";
    assert_int_equal(parse_snaps(body, b, NULL, NULL, err, sizeof(err), -1), 0);
    check_str(b, 0, "asset_id", "id with spaces");
    check_bytes(b, 0, "vs_currency", VAL_STR, "a\0b\xf0\x9f\xa4\xa1", 7);
    check_str(b, 1, "vs_currency", "");
    batch_free(b);
}

static void test_array_walk_and_ids(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct strlist ids = {0};
    struct jrows_stats st;
    char err[128] = "";
    /* Skipped: not an object, no id, id not a string, empty, with a NUL byte. */
    const char *body = "[1,{\"price\":1},{\"key\":5},{\"key\":\"\"},{\"key\":\"a\\u0000\"},"
                       "{\"key\":\"x\"},[],{\"key\":\"y\"}]";
    assert_int_equal(parse_snaps(body, b, &ids, &st, err, sizeof(err), -1), 0);
    assert_int_equal(st.items, 8);
    assert_int_equal(st.skipped, 6);
    assert_int_equal(st.rows, 2);
    assert_int_equal(ids.n, 2);
    assert_string_equal(ids.items[0], "x");
    assert_string_equal(ids.items[1], "y");
    /* A second page appends. */
    assert_int_equal(parse_snaps("[{\"key\":\"z\"}]", b, &ids, NULL, err, sizeof(err), -1), 0);
    assert_int_equal(b->nrows, 3);
    assert_int_equal(ids.n, 3);
    assert_string_equal(ids.items[2], "z");
    strlist_clear(&ids);
    batch_free(b);
}

/* A body the stream cannot finish (a number beyond double range in the second element) goes
 * to the whole-document walk, which goes on after the elements already walked: each element
 * reaches the callback once, whatever state the callback keeps. */
struct seen_ctx {
    struct batch *b;
    uint16_t cols[1];
    char seen[8][8];
    int n;
};

static int seen_row(struct jrows *j, const json_t *elem, const json_t *id, void *arg)
{
    struct seen_ctx *c = arg;
    (void)elem;
    assert_true(c->n < 8);
    snprintf(c->seen[c->n++], sizeof(c->seen[0]), "%s", json_string_value(id));
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    return jrows_put(j, c->b, (uint32_t)row, c->cols[0], JROWS_STR, id);
}

static void test_stream_fallback_walks_once(void **state)
{
    (void)state;
    static const char *const fixed[] = {"asset_id"};
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct seen_ctx c = {.b = b};
    struct jrows j;
    size_t n = 0;
    const char *body = "[{\"key\":\"a\"},{\"key\":\"b\",\"v\":1e999},{\"key\":\"c\"}]";
    jrows_begin(&j, "products", NULL, NULL, NULL, 0);
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, fixed, 1, NULL, 0, c.cols), 0);
    assert_int_equal(jrows_array(&j, body, strlen(body), "an array", "key", seen_row, &c, &n), 0);
    assert_int_equal(n, 3);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.seen[0], "a");
    assert_string_equal(c.seen[1], "b");
    assert_string_equal(c.seen[2], "c");
    assert_int_equal(b->nrows, 3);
    assert_int_equal(j.st.items, 3);
    assert_int_equal(j.st.rows, 3);
    batch_free(b);
}

/* Arrays of arrays (candles): no id key, every element is passed. */
struct candle_ctx {
    struct batch *b;
    uint16_t cols[2];
};

static int candle_row(struct jrows *j, const json_t *elem, const json_t *id, void *arg)
{
    struct candle_ctx *c = arg;
    assert_null(id);
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    int64_t ms;
    if (jrows_unix_time(j, json_array_get(elem, 0), &ms) == 0)
        batch_set_time(c->b, (uint32_t)row, c->cols[0], ms);
    return jrows_put(j, c->b, (uint32_t)row, c->cols[1], JROWS_NUM, json_array_get(elem, 1));
}

static void test_array_without_ids(void **state)
{
    (void)state;
    static const char *const fixed[] = {"snapshot_at", "price"};
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct candle_ctx c = {.b = b};
    struct jrows j;
    size_t n = 0;
    const char *body = "[[1700000000.25,1.5],[null,2],[\"t\",3],[-5,4],[253402300800],7]";
    jrows_begin(&j, "candles", NULL, NULL, NULL, 0);
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, fixed, 2, NULL, 0, c.cols), 0);
    assert_int_equal(
        jrows_array(&j, body, strlen(body), "an array of candles", NULL, candle_row, &c, &n), 0);
    assert_int_equal(n, 6);
    assert_int_equal(b->nrows, 6);
    assert_int_equal(j.st.items, 6);
    assert_int_equal(j.st.skipped, 0);
    check_time(b, 0, "snapshot_at", 1700000000250LL);
    check_dbl(b, 0, "price", 1.5);
    check_null(b, 1, "snapshot_at"); /* null: 1, not counted */
    check_null(b, 2, "snapshot_at"); /* a string: a type error */
    check_null(b, 3, "snapshot_at"); /* before 1970: a bad time */
    check_null(b, 4, "snapshot_at"); /* after 9999: a bad time */
    check_null(b, 4, "price");       /* absent: missing */
    check_null(b, 5, "price");       /* not an array: missing */
    assert_int_equal(j.st.field_type_errors, 1);
    assert_int_equal(j.st.bad_times, 2);
    assert_int_equal(j.st.missing_fields, 2);
    batch_free(b);
}

static void test_bad_bodies_and_messages(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    char err[256];
    static const struct {
        const char *body, *want;
    } cases[] = {
        {"<html>502</html>", "test /snaps: body is not valid JSON: "},
        {"[{\"key\":\"a\"}", "test /snaps: body is not valid JSON: "},
        {"", "test /snaps: body is not valid JSON: "},
        {"{\"a\":1}", "test /snaps: expected an array of snapshots, got an object"},
        {"{\"oops\":\"rate limited\"}",
         "test /snaps: expected an array of snapshots, got an object: rate limited"},
        /* Only arrays and objects are documents (jansson without JSON_DECODE_ANY). */
        {"\"text\"", "test /snaps: body is not valid JSON: "},
        {"null", "test /snaps: body is not valid JSON: "},
        {"[] 1", "test /snaps: body is not valid JSON: "},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        strcpy(err, "stale");
        int rc = parse_snaps(cases[i].body, b, NULL, NULL, err, sizeof(err), -1);
        if (rc != -EBADMSG || strncmp(err, cases[i].want, strlen(cases[i].want)) != 0)
            fail_msg("body %s: rc %d, err \"%s\"", cases[i].body, rc, err);
    }
    /* Without an error buffer nothing is written anywhere. */
    assert_int_equal(parse_snaps("x", b, NULL, NULL, NULL, 0, -1), -EBADMSG);
    /* A short buffer gets a truncated, terminated message. */
    char tiny[8];
    assert_int_equal(parse_snaps("x", b, NULL, NULL, tiny, sizeof(tiny), -1), -EBADMSG);
    assert_string_equal(tiny, "test /s");
    /* The first message of a parse wins over jrows_finish's generic ones. */
    struct jrows j;
    jrows_begin(&j, "w", NULL, NULL, err, sizeof(err));
    jrows_error(&j, "vs currency %s too long", "x");
    assert_int_equal(jrows_finish(&j, -EINVAL), -EINVAL);
    assert_string_equal(err, "w: vs currency x too long");
    jrows_begin(&j, "w", NULL, NULL, err, sizeof(err));
    assert_int_equal(jrows_finish(&j, -ENOMEM), -ENOMEM);
    assert_string_equal(err, "w: out of memory");
    assert_int_equal(b->nrows, 0);
    batch_free(b);
}

static void test_all_or_nothing(void **state)
{
    (void)state;
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    struct batch *c = batch_new(BATCH_CATEGORIES, 1);
    struct strlist ids = {0};
    char err[128] = "";
    assert_int_equal(parse_snaps("[{\"key\":\"keep\"}]", b, &ids, NULL, err, sizeof(err), -1), 0);
    size_t bytes = b->bytes;

    /* The third element's callback fails: the two rows before it go, the ids stay. */
    const char *body = "[{\"key\":\"a\",\"roi\":{}},{\"key\":\"b\"},{\"key\":\"c\"}]";
    assert_int_equal(parse_snaps(body, b, &ids, NULL, err, sizeof(err), 2), -EIO);
    assert_int_equal(b->nrows, 1);
    assert_int_equal(b->bytes, bytes);
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.items[0], "keep");
    check_str(b, 0, "asset_id", "keep");

    /* Two outputs: rows added to either are dropped, rows from before kept. */
    static const char *const cat_fixed[] = {"id"};
    static const char *const snap_id[] = {"asset_id"};
    uint16_t ccol, scol;
    assert_int_equal(batch_add_row(c), 0);
    struct jrows j;
    jrows_begin(&j, "two", &ids, NULL, err, sizeof(err));
    assert_int_equal(jrows_out(&j, b, BATCH_MARKET_SNAPSHOTS, snap_id, 1, NULL, 0, &scol), 0);
    assert_int_equal(jrows_out(&j, c, BATCH_CATEGORIES, cat_fixed, 1, NULL, 0, &ccol), 0);
    json_t *id = json_string("gone");
    assert_int_equal(jrows_add_row(&j, b), 1);
    assert_int_equal(jrows_add_row(&j, c), 1);
    assert_int_equal(jrows_add_row(&j, c), 2);
    assert_int_equal(jrows_keep_id(&j, id), 0);
    assert_int_equal(j.st.rows, 3);
    assert_int_equal(jrows_finish(&j, -EBADMSG), -EBADMSG);
    assert_int_equal(b->nrows, 1);
    assert_int_equal(c->nrows, 1);
    assert_int_equal(ids.n, 1);
    json_decref(id);

    strlist_clear(&ids);
    batch_free(b);
    batch_free(c);
}

/* jrows_dump on a parsed document, compared with the text it must give. */
static void check_dump(const char *in, const char *want)
{
    json_error_t je;
    json_t *v = json_loads(in, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL | JSON_DECODE_ANY, &je);
    if (!v)
        fail_msg("%s: %s", in, je.text);
    struct sbuf sb = {0};
    assert_int_equal(jrows_dump(&sb, v), 0);
    if (strlen(want) != sb.len || memcmp(sb.p, want, sb.len) != 0)
        fail_msg("dump of %s: want %s, got %.*s", in, want, (int)sb.len, sb.p);
    sbuf_free(&sb);
    json_decref(v);
}

static void test_dump(void **state)
{
    (void)state;
    check_dump("0.1", "0.1");
    check_dump("1.0", "1");
    check_dump("-0.5", "-0.5");
    check_dump("35.7711288054569", "35.7711288054569"); /* jansson: 35.771128805456903 */
    check_dump("1903746811536", "1903746811536");
    check_dump("1.52899720736006e+15", "1528997207360060");
    check_dump("9007199254740992", "9007199254740992"); /* 2^53: by %.16g, not %.0f */
    check_dump("9007199254740993.5", "9007199254740994");
    check_dump("1e300", "1e+300");
    check_dump("5e-324", "4.94065645841247e-324");
    check_dump("0.30000000000000004", "0.30000000000000004");
    check_dump("[true,false,null,[],{}]", "[true,false,null,[],{}]");
    check_dump("{ \"b\" : 1 , \"a\" : [ 2 , \"x\" ] }", "{\"b\":1,\"a\":[2,\"x\"]}");
    check_dump("\"q\\\"b\\\\s\\/n\\n\\r\\t\\b\\f\\u0001\\u001f\\u0000\"",
               "\"q\\\"b\\\\s/n\\n\\r\\t\\b\\f\\u0001\\u001f\\u0000\"");
    check_dump("\"\\u00e9\\ud83e\\udd21\"", "\"\xc3\xa9\xf0\x9f\xa4\xa1\"");
    check_dump("{\"k\\n\":\"v\"}", "{\"k\\n\":\"v\"}");
}

static void test_out_of_memory_rolls_back(void **state)
{
    (void)state;
#if ALLOCFAIL
    const char *body = "[{\"key\":\"a\",\"vs\":\"usd\",\"roi\":{\"x\":[1,2,{\"y\":\"z\"}]},"
                       "\"price\":1e400},"
                       "{\"key\":\"bb\",\"vs\":\"eur\",\"roi\":{\"w\":0.25}},"
                       "{\"key\":\"ccc\",\"ath_at\":\"2020-01-01T00:00:00Z\"}]";
    int failures = 0, enomem = 0;
    for (long n = 0;; n++) {
        long live = allocfail_live;
        struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
        assert_int_equal(batch_add_row(b), 0);
        assert_int_equal(
            batch_set_str(b, 0, (uint16_t)batch_spec_col(b->spec, "asset_id"), "pre", 3), 0);
        size_t bytes = b->bytes;
        char *first = strdup("first");
        char **items = malloc(sizeof(*items));
        items[0] = first;
        struct strlist ids = {items, 1};
        char err[128] = "";

        allocfail_countdown = n;
        int rc = parse_snaps(body, b, &ids, NULL, err, sizeof(err), -1);
        int injected = allocfail_countdown < 0;
        allocfail_countdown = -1;

        if (rc == 0) {
            assert_int_equal(b->nrows, 4);
            assert_int_equal(ids.n, 4);
        } else {
            assert_true(injected);
            /* jansson reports some of its own allocation failures as syntax errors. */
            assert_true(rc == -ENOMEM || rc == -EBADMSG);
            assert_true(err[0] != '\0');
            enomem += rc == -ENOMEM;
            assert_int_equal(b->nrows, 1);
            assert_int_equal(b->bytes, bytes);
            check_str(b, 0, "asset_id", "pre");
            assert_int_equal(ids.n, 1);
            assert_ptr_equal(ids.items[0], first);
            failures++;
        }
        strlist_clear(&ids);
        batch_free(b);
        if (allocfail_live != live)
            fail_msg("allocation %ld failed: %ld blocks leaked", n, allocfail_live - live);
        if (rc == 0 && !injected)
            break;
    }
    /* jansson's parse, the overflow copy, the arena, the roi text and the ids all allocate. */
    assert_true(failures > 10);
    assert_true(enomem > 5);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_columns_by_name),
        cmocka_unit_test(test_kinds_and_counters),
        cmocka_unit_test(test_numbers_and_overflow),
        cmocka_unit_test(test_strings_exact),
        cmocka_unit_test(test_array_walk_and_ids),
        cmocka_unit_test(test_array_without_ids),
        cmocka_unit_test(test_stream_fallback_walks_once),
        cmocka_unit_test(test_bad_bodies_and_messages),
        cmocka_unit_test(test_all_or_nothing),
        cmocka_unit_test(test_dump),
        cmocka_unit_test(test_out_of_memory_rolls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
