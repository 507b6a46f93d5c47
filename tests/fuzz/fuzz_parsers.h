/*
 * fuzz_parsers: runs one CoinGecko parser on arbitrary bytes and checks what it promises,
 * shared by the libFuzzer targets (fuzz_coingecko.c) and the regression test that replays
 * their findings in the normal suite (tests/unit/test_fuzz_regressions.c).
 *
 * Beyond "no crash, no leak, no undefined behaviour" (the sanitizers' part), it checks:
 * - the return value is 0, -EBADMSG or -ENOMEM, and an error comes with a message;
 * - all or nothing: every output batch starts with one row and an id list with one id; after
 *   an error they hold exactly that, after success the stats agree with the rows added;
 * - every value is well-formed: ids are non-empty without NUL bytes, doubles are finite, times
 *   fit DATETIME(3), JSON columns are valid JSON that jansson reads back;
 * - batches survive the spool encoding: encode -> decode -> encode gives the same bytes.
 * A failed check prints what failed and aborts, which libFuzzer reports as a crash.
 *
 * Header-only (static functions) so both programs compile it with their own flags.
 */
#ifndef COINGEST_FUZZ_PARSERS_H
#define COINGEST_FUZZ_PARSERS_H

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/batch.h"
#include "sources/coingecko/coingecko.h"

enum fuzz_endpoint {
    FUZZ_MARKETS = 0,
    FUZZ_COINS_LIST,
    FUZZ_CATEGORIES,
    FUZZ_SIMPLE_PRICE,
    FUZZ_GLOBAL,
    FUZZ_ENDPOINTS
};

/* Names as used in target names (fuzz_<name>) and regression file prefixes. */
static const char *const fuzz_endpoint_names[FUZZ_ENDPOINTS] = {
    "markets", "coins_list", "categories", "simple_price", "global"};

#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "fuzz check failed: %s (%s:%d): ", #cond, __FILE__, __LINE__);         \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

#define FUZZ_MAX_WALL_MS 253402300800000LL

/* Checks every value of rows [from, nrows) and the spool round trip of the whole batch. */
static void fuzz_check_batch(const struct batch *b, uint32_t from)
{
    const struct batch_spec *spec = b->spec;
    int idcol =
        batch_spec_col(spec, spec->id == BATCH_ASSETS_LIST || spec->id == BATCH_ASSETS_MARKET ||
                                     spec->id == BATCH_CATEGORIES
                                 ? "id"
                                 : "asset_id");
    for (uint32_t r = from; r < b->nrows; r++) {
        for (uint16_t c = 0; c < spec->ncols; c++) {
            const struct val *v = batch_val(b, r, c);
            switch (v->type) {
            case VAL_NULL:
            case VAL_INT:
                break;
            case VAL_DBL:
                FUZZ_CHECK(isfinite(v->u.d), "%s.%s", spec->name, spec->cols[c]);
                break;
            case VAL_TIME:
                FUZZ_CHECK(v->u.i >= 0 && v->u.i < FUZZ_MAX_WALL_MS, "%s.%s = %lld", spec->name,
                           spec->cols[c], (long long)v->u.i);
                break;
            case VAL_STR:
                FUZZ_CHECK(v->len == 0 || v->u.s, "%s.%s", spec->name, spec->cols[c]);
                break;
            case VAL_JSON: {
                json_error_t je;
                json_t *j = json_loadb(v->u.s, v->len, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
                FUZZ_CHECK(j && json_is_object(j), "%s.%s is not a JSON object: %s: %.*s",
                           spec->name, spec->cols[c], je.text, (int)v->len, v->u.s);
                json_decref(j);
                break;
            }
            default:
                FUZZ_CHECK(0, "%s.%s has type %d", spec->name, spec->cols[c], v->type);
            }
        }
        if (idcol >= 0) {
            const struct val *id = batch_val(b, r, (uint16_t)idcol);
            FUZZ_CHECK(id->type == VAL_STR && id->len > 0 && !memchr(id->u.s, 0, id->len),
                       "%s row %u: bad id", spec->name, r);
        }
    }
    size_t n1, n2;
    unsigned char *e1 = batch_encode(b, &n1);
    if (!e1)
        return; /* out of memory: nothing to compare */
    struct batch *d = batch_decode(e1, n1);
    FUZZ_CHECK(d, "%s: batch_decode refused batch_encode's output", spec->name);
    unsigned char *e2 = batch_encode(d, &n2);
    FUZZ_CHECK(!e2 || (n1 == n2 && memcmp(e1, e2, n1) == 0), "%s: encoding round trip differs",
               spec->name);
    free(e1);
    free(e2);
    batch_free(d);
}

static struct batch *fuzz_batch(enum batch_spec_id id)
{
    struct batch *b = batch_new(id, 4);
    FUZZ_CHECK(b && batch_add_row(b) == 0, "out of memory");
    FUZZ_CHECK(batch_set_str(b, 0, 0, "pre", 3) == 0, "out of memory");
    return b;
}

/* Runs endpoint e's parser on data and checks it. Returns the parser's return value. */
static int fuzz_run_parser(enum fuzz_endpoint e, const uint8_t *data, size_t size)
{
    static const struct coingecko_times t = {1739123100000LL, 1739123047000LL};
    const char *body = (const char *)data;
    struct batch *out[3] = {NULL, NULL, NULL};
    char *pre = strdup("pre");
    char **items = malloc(sizeof(*items));
    FUZZ_CHECK(pre && items, "out of memory");
    items[0] = pre;
    struct strlist ids = {items, 1};
    struct coingecko_stats st = {0}, zero = {0};
    char err[512] = "";
    int rc = -EINVAL;
    size_t ncoins = 0;

    switch (e) {
    case FUZZ_MARKETS: {
        out[0] = fuzz_batch(BATCH_MARKET_SNAPSHOTS);
        out[1] = fuzz_batch(BATCH_ASSETS_MARKET);
        out[2] = fuzz_batch(BATCH_ASSET_CATEGORIES);
        struct coingecko_markets_out mo = {out[0], out[1], out[2], &ids, 12345};
        /* Alternate between plain pages and pages fetched with category=... */
        const char *category = size % 2 ? "layer-1" : NULL;
        rc = coingecko_parse_markets(body, size, &t, "USD", category, &mo, &st, err, sizeof(err));
        ncoins = mo.ncoins;
        if (rc)
            FUZZ_CHECK(ncoins == 12345, "ncoins changed on error");
        else
            FUZZ_CHECK(st.items == ncoins && ncoins == st.rows / (category ? 3 : 2) + st.skipped,
                       "items %llu ncoins %zu rows %llu skipped %llu", (unsigned long long)st.items,
                       ncoins, (unsigned long long)st.rows, (unsigned long long)st.skipped);
        break;
    }
    case FUZZ_COINS_LIST:
        out[0] = fuzz_batch(BATCH_ASSETS_LIST);
        rc = coingecko_parse_coins_list(body, size, &t, out[0], &ids, &st, err, sizeof(err));
        break;
    case FUZZ_CATEGORIES:
        out[0] = fuzz_batch(BATCH_CATEGORIES);
        rc = coingecko_parse_categories_list(body, size, &t, out[0], &st, err, sizeof(err));
        break;
    case FUZZ_SIMPLE_PRICE: {
        static const char *const pids[] = {"bitcoin", "ethereum", "tether", " litecoin"};
        static const char *const pvs[] = {"usd", "EUR", "btc"};
        struct coingecko_price_req req = {pids, 4, pvs, 3};
        out[0] = fuzz_batch(BATCH_PRICES);
        rc = coingecko_parse_simple_price(body, size, &t, &req, out[0], &st, err, sizeof(err));
        break;
    }
    case FUZZ_GLOBAL:
        out[0] = fuzz_batch(BATCH_GLOBAL_SNAPSHOTS);
        rc = coingecko_parse_global(body, size, &t, out[0], &st, err, sizeof(err));
        if (rc == 0)
            FUZZ_CHECK(st.rows == 1, "global made %llu rows", (unsigned long long)st.rows);
        break;
    default:
        FUZZ_CHECK(0, "endpoint %d", (int)e);
    }

    FUZZ_CHECK(rc == 0 || rc == -EBADMSG || rc == -ENOMEM, "%s returned %d", fuzz_endpoint_names[e],
               rc);
    uint64_t added = 0;
    for (int i = 0; i < 3; i++)
        if (out[i])
            added += out[i]->nrows - 1;
    if (rc) {
        FUZZ_CHECK(err[0], "%s: error %d without a message", fuzz_endpoint_names[e], rc);
        FUZZ_CHECK(added == 0, "%s: %llu rows left after an error", fuzz_endpoint_names[e],
                   (unsigned long long)added);
        FUZZ_CHECK(ids.n == 1 && ids.items[0] == pre, "id list changed after an error");
        FUZZ_CHECK(memcmp(&st, &zero, sizeof(st)) == 0, "stats changed after an error");
    } else {
        FUZZ_CHECK(added == st.rows, "%llu rows added, stats say %llu", (unsigned long long)added,
                   (unsigned long long)st.rows);
        if (e == FUZZ_MARKETS || e == FUZZ_COINS_LIST)
            FUZZ_CHECK(ids.n == 1 + out[0]->nrows - 1, "ids %zu rows %u", ids.n, out[0]->nrows - 1);
        for (size_t i = 1; i < ids.n; i++)
            FUZZ_CHECK(ids.items[i][0] != '\0', "empty id in list");
    }
    for (int i = 0; i < 3; i++) {
        if (!out[i])
            continue;
        fuzz_check_batch(out[i], 1);
        batch_free(out[i]);
    }
    coingecko_strlist_free(&ids);
    return rc;
}

#endif
