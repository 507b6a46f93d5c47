/*
 * coinbase: Coinbase Exchange response bodies -> products and candle rows (contract in
 * coinbase.h). The generic work (loading, shape errors, all-or-nothing rows) is jrows'.
 */
#include "sources/coinbase/coinbase.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/jrows.h"

/* Times must fit DATETIME(3): up to the end of year 9999. */
#define MAX_UNIX_S 253402300799LL

/* {"message": "..."}: what the API said when a body is not the shape it should be. */
static const char *message_of(const json_t *root)
{
    const json_t *m = json_object_get(root, "message");
    return json_is_string(m) ? json_string_value(m) : NULL;
}

void coinbase_products_clear(struct coinbase_products *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->n; i++) {
        free(l->items[i].id);
        free(l->items[i].base);
        free(l->items[i].quote);
    }
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

/* --- /products ---------------------------------------------------------------------------- */

struct products_ctx {
    struct coinbase_products got;
    uint64_t skipped;
};

static int product_elem(struct jrows *j, const json_t *e, const json_t *id, void *arg)
{
    (void)j;
    struct products_ctx *c = arg;
    const json_t *base = json_object_get(e, "base_currency");
    const json_t *quote = json_object_get(e, "quote_currency");
    if (!jrows_usable_id(base) || !jrows_usable_id(quote)) {
        c->skipped++;
        return 0;
    }
    struct coinbase_product *v = realloc(c->got.items, (c->got.n + 1) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    c->got.items = v;
    struct coinbase_product *p = &v[c->got.n];
    const char *status = json_string_value(json_object_get(e, "status"));
    *p = (struct coinbase_product){strdup(json_string_value(id)), strdup(json_string_value(base)),
                                   strdup(json_string_value(quote)),
                                   (!status || strcmp(status, "online") == 0) &&
                                       !json_is_true(json_object_get(e, "trading_disabled"))};
    if (!p->id || !p->base || !p->quote) {
        free(p->id);
        free(p->base);
        free(p->quote);
        return -ENOMEM;
    }
    c->got.n++;
    return 0;
}

int coinbase_parse_products(const char *body, size_t len, struct coinbase_products *out,
                            uint64_t *skipped, char *err, size_t errlen)
{
    struct jrows j;
    struct products_ctx c = {{0}, 0};
    jrows_begin(&j, "coinbase /products", NULL, message_of, err, errlen);
    int rc = jrows_array(&j, body, len, "an array of products", "id", product_elem, &c, NULL);
    if (rc == 0) {
        struct coinbase_product *v =
            realloc(out->items, (out->n + c.got.n + 1) * sizeof(*out->items));
        if (!v) {
            rc = -ENOMEM;
        } else {
            out->items = v;
            if (c.got.n)
                memcpy(v + out->n, c.got.items, c.got.n * sizeof(*v));
            out->n += c.got.n;
            free(c.got.items);
            c.got.items = NULL;
            c.got.n = 0;
            if (skipped)
                *skipped += c.skipped + j.st.skipped;
        }
    }
    coinbase_products_clear(&c.got);
    return rc;
}

/* --- /products/{id}/candles --------------------------------------------------------------- */

struct candles_ctx {
    const struct coinbase_candle_req *req;
    struct batch *b;
    struct coinbase_candle_stats st;
};

/* The element order of a candle, and the column each number goes to. */
enum { C_TIME, C_LOW, C_HIGH, C_OPEN, C_CLOSE, C_VOLUME, C_N };
static const uint16_t candle_cols[C_N] = {
    [C_LOW] = BATCH_CANDLES_COL_LOW,       [C_HIGH] = BATCH_CANDLES_COL_HIGH,
    [C_OPEN] = BATCH_CANDLES_COL_OPEN,     [C_CLOSE] = BATCH_CANDLES_COL_CLOSE,
    [C_VOLUME] = BATCH_CANDLES_COL_VOLUME,
};

static int put_str(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

static int candle_elem(struct jrows *j, const json_t *e, const json_t *id, void *arg)
{
    (void)id;
    struct candles_ctx *c = arg;
    const struct coinbase_candle_req *q = c->req;
    c->st.candles++;
    double v[C_N];
    bool ok = json_is_array(e) && json_array_size(e) >= C_N;
    for (size_t i = 0; ok && i < C_N; i++)
        ok = jrows_number(json_array_get(e, i), &v[i]) == 0 && isfinite(v[i]);
    if (!ok || v[C_TIME] != floor(v[C_TIME]) || v[C_TIME] < 0 || v[C_TIME] > (double)MAX_UNIX_S) {
        c->st.bad++;
        return 0;
    }
    int64_t t = (int64_t)v[C_TIME];
    if (q->interval_s && t % q->interval_s != 0) {
        c->st.misaligned++;
        return 0;
    }
    if (t < q->from_s || t >= q->to_s) {
        c->st.outside++;
        return 0;
    }
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_str(c->b, r, BATCH_CANDLES_COL_SOURCE, COINBASE_SOURCE);
    if (!rc)
        rc = put_str(c->b, r, BATCH_CANDLES_COL_ASSET_ID, q->asset_id);
    if (!rc)
        rc = put_str(c->b, r, BATCH_CANDLES_COL_VS_CURRENCY, q->vs_currency);
    if (!rc)
        rc = put_str(c->b, r, BATCH_CANDLES_COL_PRODUCT, q->product);
    batch_set_int(c->b, r, BATCH_CANDLES_COL_INTERVAL_S, q->interval_s);
    batch_set_time(c->b, r, BATCH_CANDLES_COL_OPEN_TIME, t * 1000);
    batch_set_time(c->b, r, BATCH_CANDLES_COL_FETCHED_AT, q->fetched_ms);
    for (size_t i = C_LOW; i < C_N; i++)
        batch_set_dbl(c->b, r, candle_cols[i], v[i]);
    c->st.rows++;
    return rc;
}

int coinbase_parse_candles(const char *body, size_t len, const struct coinbase_candle_req *req,
                           struct batch *candles, struct coinbase_candle_stats *st, char *err,
                           size_t errlen)
{
    struct jrows j;
    jrows_begin(&j, "coinbase /candles", NULL, message_of, err, errlen);
    if (!req || !req->product || !req->asset_id || !req->vs_currency || !candles ||
        candles->spec->id != BATCH_CANDLES)
        return jrows_finish(&j, -EINVAL);
    /* jrows_out only notes the batch for rollback here: candle columns are set by constant. */
    int rc = jrows_out(&j, candles, BATCH_CANDLES, NULL, 0, NULL, 0, NULL);
    if (rc)
        return jrows_finish(&j, rc);
    struct candles_ctx c = {req, candles, {0}};
    rc = jrows_array(&j, body, len, "an array of candles", NULL, candle_elem, &c, NULL);
    if (rc == 0 && st) {
        st->candles += c.st.candles;
        st->rows += c.st.rows;
        st->outside += c.st.outside;
        st->bad += c.st.bad;
        st->misaligned += c.st.misaligned;
    }
    return rc;
}
