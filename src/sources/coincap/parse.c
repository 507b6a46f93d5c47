/*
 * coincap: CoinCap v3 response bodies -> assets and price rows (contract in coincap.h). The
 * generic work (loading, numbers sent as strings, all-or-nothing rows) is jrows'.
 */
#include "sources/coincap/coincap.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/jrows.h"
#include "coingest/util.h"

/* {"error": ".."}, {"message": ".."} or the v2 notice {"data": {"message": ".."}}. */
static const char *message_of(const json_t *root)
{
    const json_t *m = json_object_get(root, "error");
    if (!json_is_string(m))
        m = json_object_get(root, "message");
    if (!json_is_string(m)) {
        const json_t *d = json_object_get(root, "data");
        m = json_is_object(d) && !json_object_get(d, "id") ? json_object_get(d, "message") : NULL;
    }
    return json_is_string(m) ? json_string_value(m) : NULL;
}

int coincap_error_message(const char *body, size_t len, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return -EINVAL;
    buf[0] = '\0';
    if (!body || len == 0)
        return -ENOENT;
    json_t *root = json_loadb(body, len, 0, NULL);
    const char *msg = json_is_object(root) ? message_of(root) : NULL;
    int rc = -ENOENT;
    if (msg && *msg) {
        util_copy_clean(buf, cap, msg, strlen(msg));
        rc = 0;
    }
    json_decref(root);
    return rc;
}

static void asset_free(struct coincap_asset *a)
{
    free(a->id);
    free(a->symbol);
    free(a->name);
    for (size_t i = 0; i < a->naddresses; i++)
        free(a->addresses[i]);
    free(a->addresses);
}

void coincap_assets_clear(struct coincap_assets *l)
{
    if (!l)
        return;
    coincap_assets_truncate(l, 0);
    free(l->items);
    l->items = NULL;
}

void coincap_assets_truncate(struct coincap_assets *l, size_t n)
{
    for (; l && l->n > n; l->n--)
        asset_free(&l->items[l->n - 1]);
}

/* --- /assets ------------------------------------------------------------------------------ */

/* A number (or null/absent: NaN, not counted); a value that is not one counts in *bad. */
static double num(const json_t *o, const char *key, uint64_t *bad)
{
    const json_t *v = json_object_get(o, key);
    double d;
    if (!v || json_is_null(v))
        return NAN;
    if (jrows_number(v, &d) != 0 || !isfinite(d)) {
        (*bad)++;
        return NAN;
    }
    return d;
}

static char *opt_str(const json_t *o, const char *key, bool *oom)
{
    const json_t *v = json_object_get(o, key);
    if (!jrows_usable_id(v))
        return NULL;
    char *s = strdup(json_string_value(v));
    if (!s)
        *oom = true;
    return s;
}

/* `tokens`: {"1": ["0xdac1..."], "10": [...]} -> every address string. */
static int addresses_of(const json_t *tokens, struct coincap_asset *a)
{
    const char *chain;
    const json_t *list;
    if (!json_is_object(tokens))
        return 0;
    json_object_foreach((json_t *)tokens, chain, list)
    {
        size_t i;
        const json_t *addr;
        if (!json_is_array(list))
            continue;
        json_array_foreach(list, i, addr)
        {
            if (!jrows_usable_id(addr))
                continue;
            char **v = realloc(a->addresses, (a->naddresses + 1) * sizeof(*v));
            if (!v)
                return -ENOMEM;
            a->addresses = v;
            if (!(v[a->naddresses] = strdup(json_string_value(addr))))
                return -ENOMEM;
            a->naddresses++;
        }
    }
    return 0;
}

static int asset_of(const json_t *e, struct coincap_asset *a, uint64_t *bad)
{
    bool oom = false;
    *a = (struct coincap_asset){0};
    a->id = strdup(json_string_value(json_object_get(e, "id")));
    a->symbol = opt_str(e, "symbol", &oom);
    a->name = opt_str(e, "name", &oom);
    if (!a->id || oom || addresses_of(json_object_get(e, "tokens"), a) != 0) {
        asset_free(a);
        return -ENOMEM;
    }
    a->rank = num(e, "rank", bad);
    if (!isnan(a->rank) && (a->rank < 1 || a->rank != floor(a->rank) || a->rank > 4294967295.0)) {
        (*bad)++;
        a->rank = NAN;
    }
    a->price = num(e, "priceUsd", bad);
    a->supply = num(e, "supply", bad);
    a->max_supply = num(e, "maxSupply", bad);
    a->market_cap = num(e, "marketCapUsd", bad);
    a->volume_24h = num(e, "volumeUsd24Hr", bad);
    a->change_24h_pct = num(e, "changePercent24Hr", bad);
    a->vwap_24h = num(e, "vwap24Hr", bad);
    return 0;
}

static int push_asset(struct coincap_assets *l, const json_t *e, uint64_t *bad)
{
    struct coincap_asset *v = realloc(l->items, (l->n + 1) * sizeof(*v));
    if (!v)
        return -ENOMEM;
    l->items = v;
    int rc = asset_of(e, &v[l->n], bad);
    if (rc == 0)
        l->n++;
    return rc;
}

/* Why a body without data is refused: -EPROTO when it is CoinCap's own error or notice (no
 * retry brings another answer), else -EBADMSG. */
static int refusal(const json_t *root)
{
    return json_is_object(root) && message_of(root) ? -EPROTO : -EBADMSG;
}

/* The envelope's `data`, or NULL after setting the shape error. */
static const json_t *data_of(struct jrows *j, const json_t *root, const char *expected)
{
    const json_t *d = json_is_object(root) ? json_object_get(root, "data") : NULL;
    if (json_is_array(d) || (json_is_object(d) && jrows_usable_id(json_object_get(d, "id"))))
        return d;
    jrows_shape_error(j, expected, root);
    return NULL;
}

int coincap_parse_assets(const char *body, size_t len, struct coincap_assets *out,
                         uint64_t *skipped, uint64_t *bad, char *err, size_t errlen)
{
    struct jrows j;
    json_t *root = NULL;
    struct coincap_assets got = {0};
    uint64_t nbad = 0, nskipped = 0;
    jrows_begin(&j, "coincap /assets", NULL, message_of, err, errlen);
    int rc = jrows_load(&j, body, len, &root);
    const json_t *d = rc == 0 ? data_of(&j, root, "{\"data\": [assets]}") : NULL;
    if (rc == 0 && !d)
        rc = refusal(root);
    if (rc == 0 && json_is_object(d)) {
        rc = push_asset(&got, d, &nbad);
    } else if (rc == 0) {
        size_t i;
        const json_t *e;
        json_array_foreach(d, i, e)
        {
            j.st.items++;
            if (!json_is_object(e) || !jrows_usable_id(json_object_get(e, "id"))) {
                nskipped++;
                continue;
            }
            if ((rc = push_asset(&got, e, &nbad)) != 0)
                break;
        }
    }
    int64_t ts = 0;
    if (rc == 0) {
        const json_t *t = json_object_get(root, "timestamp");
        double v;
        if (t && jrows_number(t, &v) == 0 && v > 0 && v < 253402300799000.0)
            ts = (int64_t)v;
        struct coincap_asset *v2 = realloc(out->items, (out->n + got.n + 1) * sizeof(*v2));
        if (!v2) {
            rc = -ENOMEM;
        } else {
            out->items = v2;
            if (got.n)
                memcpy(v2 + out->n, got.items, got.n * sizeof(*v2));
            out->n += got.n;
            out->timestamp_ms = ts;
            free(got.items);
            got = (struct coincap_assets){0};
            if (skipped)
                *skipped += nskipped;
            if (bad)
                *bad += nbad;
        }
    }
    coincap_assets_clear(&got);
    json_decref(root);
    return jrows_finish(&j, rc);
}

/* --- /assets/{id}/history ----------------------------------------------------------------- */

static int put_str(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

int coincap_parse_history(const char *body, size_t len, const struct coincap_history_req *req,
                          struct batch *prices, struct coincap_history_stats *st, char *err,
                          size_t errlen)
{
    struct jrows j;
    json_t *root = NULL;
    jrows_begin(&j, "coincap /history", NULL, message_of, err, errlen);
    if (!req || !req->asset_id || !prices || prices->spec->id != BATCH_PRICES)
        return jrows_finish(&j, -EINVAL);
    /* Registered only for rollback: the columns are set by constant. */
    int rc = jrows_out(&j, prices, BATCH_PRICES, NULL, 0, NULL, 0, NULL);
    if (rc == 0)
        rc = jrows_load(&j, body, len, &root);
    const json_t *d = NULL;
    if (rc == 0) {
        d = json_is_object(root) ? json_object_get(root, "data") : NULL;
        if (!json_is_array(d)) {
            jrows_shape_error(&j, "{\"data\": [points]}", root);
            rc = refusal(root);
        }
    }
    struct coincap_history_stats s = {0};
    size_t i;
    const json_t *e;
    if (rc == 0)
        json_array_foreach(d, i, e)
        {
            s.points++;
            double price, t;
            if (!json_is_object(e) || jrows_number(json_object_get(e, "priceUsd"), &price) != 0 ||
                !isfinite(price) || jrows_number(json_object_get(e, "time"), &t) != 0 ||
                t != floor(t) || t < 0 || t > 253402300799000.0) {
                s.bad++;
                continue;
            }
            int64_t ms = (int64_t)t;
            if (ms < req->from_ms || ms >= req->to_ms) {
                s.outside++;
                continue;
            }
            int row = jrows_add_row(&j, prices);
            if (row < 0) {
                rc = row;
                break;
            }
            uint32_t r = (uint32_t)row;
            rc = put_str(prices, r, BATCH_PRICES_COL_ASSET_ID, req->asset_id);
            if (!rc)
                rc = put_str(prices, r, BATCH_PRICES_COL_VS_CURRENCY, "usd");
            if (!rc)
                rc = put_str(prices, r, BATCH_PRICES_COL_SOURCE, COINCAP_SOURCE);
            if (!rc)
                rc = batch_set_dbl(prices, r, BATCH_PRICES_COL_PRICE, price);
            batch_set_time(prices, r, BATCH_PRICES_COL_SOURCE_UPDATED_AT, ms);
            batch_set_time(prices, r, BATCH_PRICES_COL_FETCHED_AT, req->fetched_ms);
            if (rc)
                break;
            s.rows++;
        }
    json_decref(root);
    rc = jrows_finish(&j, rc);
    if (rc == 0 && st) {
        st->points += s.points;
        st->rows += s.rows;
        st->outside += s.outside;
        st->bad += s.bad;
    }
    return rc;
}
