/*
 * coingecko: CoinGecko response bodies -> typed rows (see coingecko.h for the contract and
 * docs/parsing.md for the field-to-column maps).
 *
 * The generic work (loading with overflow patching, field tables resolved by column name,
 * typed values and their counters, JSON text columns, all-or-nothing rollback, kept ids) is
 * the jrows library (include/coingest/jrows.h). What is here is CoinGecko's: the shape of
 * each endpoint's body, which key is the id, which fields map to which columns, the times
 * that fall back to the fetch time, the vs-currency keys of /simple/price, and how the API's
 * error bodies read.
 *
 * Each parse is a struct parse: the jrows parse plus the counters only CoinGecko has. They
 * are added to the caller's struct coingecko_stats only when the parse succeeds.
 */
#include "sources/coingecko/coingecko.h"

#include <errno.h>
#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/jrows.h"

/* vs currencies fit prices.vs_currency VARCHAR(32). */
#define MAX_VS_LEN 32

/* What the API said, when a body of the wrong shape is one of its error or notice objects:
 * {"error":..}, {"status":{"error_message":..}}, CoinCap's {"data":{"message":..}}. */
static const char *error_body_message(const json_t *root)
{
    const json_t *m = json_object_get(root, "error");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(json_object_get(root, "status"), "error_message");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(json_object_get(root, "data"), "message");
    if (json_is_string(m))
        return json_string_value(m);
    m = json_object_get(root, "message");
    return json_is_string(m) ? json_string_value(m) : NULL;
}

/* --- one parse ---------------------------------------------------------------------------- */

struct parse {
    struct jrows j;            /* the generic parse; its st has the generic counts */
    struct coingecko_stats cg; /* this call's CoinGecko-only counts (missing_*) */
};

/* The parse whose jrows a row callback was given. */
#define PARSE_OF(jp) ((struct parse *)((char *)(jp)-offsetof(struct parse, j)))

static void parse_begin(struct parse *p, const char *what, struct strlist *ids, char *err,
                        size_t errlen)
{
    memset(&p->cg, 0, sizeof(p->cg));
    jrows_begin(&p->j, what, ids, error_body_message, err, errlen);
}

/* After jrows_finish returned rc: on success adds this call's counts to the caller's. */
static int parse_done(struct parse *p, int rc, struct coingecko_stats *st)
{
    if (rc != 0 || !st)
        return rc;
    const struct jrows_stats *g = &p->j.st;
    st->items += g->items;
    st->rows += g->rows;
    st->skipped += g->skipped;
    st->field_type_errors += g->field_type_errors;
    st->bad_times += g->bad_times;
    st->missing_fields += g->missing_fields;
    st->overflow_numbers += g->overflow_numbers;
    st->missing_last_updated += p->cg.missing_last_updated;
    st->missing_coins += p->cg.missing_coins;
    st->missing_currencies += p->cg.missing_currencies;
    return 0;
}

/* Ends a parse (all or nothing, see jrows_finish) and returns its final code. */
static int parse_finish(struct parse *p, int rc, struct coingecko_stats *st)
{
    if (rc == -EINVAL)
        jrows_error(&p->j, "bad arguments (batch spec, vs currency or category)");
    return parse_done(p, jrows_finish(&p->j, rc), st);
}

/* Walks an array body (jrows_array) and ends the parse. */
static int parse_array(struct parse *p, const char *body, size_t len, const char *expected,
                       const char *id_key, jrows_elem_cb row, void *ctx, size_t *nitems,
                       struct coingecko_stats *st)
{
    return parse_done(p, jrows_array(&p->j, body, len, expected, id_key, row, ctx, nitems), st);
}

static int put_string(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return batch_set_str(b, row, col, s, strlen(s));
}

/* Lower-cases an ASCII vs currency into buf (MAX_VS_LEN + 1 bytes); -EINVAL if empty or long. */
static int lower_vs(const char *s, char *buf)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > MAX_VS_LEN)
        return -EINVAL;
    for (size_t i = 0; i <= n; i++)
        buf[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    return 0;
}

/* Column lists: each endpoint names the columns it sets itself (an enum and a names array,
 * the "fixed" columns) and has a field table for those that come straight from a JSON key;
 * jrows_out resolves both by name into one cols array, fixed columns first. */

/* --- /coins/list -------------------------------------------------------------------------- */

/* What the simple array endpoints' row callbacks need. */
struct simple_ctx {
    const struct coingecko_times *t;
    struct batch *b;
    const uint16_t *cols;
};

static const struct jrows_field coins_list_fields[] = {
    {"symbol", "symbol", JROWS_STR},
    {"name", "name", JROWS_STR},
    {"platforms", "platforms", JROWS_JSON_OBJ},
};
enum { CL_ID, CL_LISTED_AT, CL_FIRST_SEEN_AT, CL_UPDATED_AT, CL_FIXED };
static const char *const coins_list_fixed[CL_FIXED] = {"id", "listed_at", "first_seen_at",
                                                       "updated_at"};

static int coins_list_row(struct jrows *j, const json_t *coin, const json_t *id, void *arg)
{
    struct simple_ctx *c = arg;
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = jrows_put(j, c->b, r, c->cols[CL_ID], JROWS_STR, id);
    batch_set_time(c->b, r, c->cols[CL_LISTED_AT], c->t->run_ms);
    batch_set_time(c->b, r, c->cols[CL_FIRST_SEEN_AT], c->t->run_ms);
    batch_set_time(c->b, r, c->cols[CL_UPDATED_AT], c->t->run_ms);
    if (!rc)
        rc = jrows_put_fields(j, c->b, r, coin, coins_list_fields, c->cols + CL_FIXED,
                              JROWS_NFIELDS(coins_list_fields));
    if (!rc)
        rc = jrows_keep_id(j, id);
    return rc;
}

int coingecko_parse_coins_list(const char *body, size_t len, const struct coingecko_times *t,
                               struct batch *assets, struct strlist *ids,
                               struct coingecko_stats *st, char *err, size_t errlen)
{
    struct parse p;
    parse_begin(&p, "coingecko /coins/list", ids, err, errlen);
    uint16_t cols[CL_FIXED + JROWS_NFIELDS(coins_list_fields)];
    int rc = jrows_out(&p.j, assets, BATCH_ASSETS_LIST, coins_list_fixed, CL_FIXED,
                       coins_list_fields, JROWS_NFIELDS(coins_list_fields), cols);
    if (rc)
        return parse_finish(&p, rc, st);
    struct simple_ctx c = {t, assets, cols};
    return parse_array(&p, body, len, "an array of coins", "id", coins_list_row, &c, NULL, st);
}

/* --- /coins/categories/list --------------------------------------------------------------- */

static const struct jrows_field categories_fields[] = {
    {"name", "name", JROWS_STR},
};
enum { CA_ID, CA_UPDATED_AT, CA_FIXED };
static const char *const categories_fixed[CA_FIXED] = {"id", "updated_at"};

static int category_row(struct jrows *j, const json_t *cat, const json_t *id, void *arg)
{
    struct simple_ctx *c = arg;
    int row = jrows_add_row(j, c->b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = jrows_put(j, c->b, r, c->cols[CA_ID], JROWS_STR, id);
    batch_set_time(c->b, r, c->cols[CA_UPDATED_AT], c->t->run_ms);
    if (!rc)
        rc = jrows_put_fields(j, c->b, r, cat, categories_fields, c->cols + CA_FIXED,
                              JROWS_NFIELDS(categories_fields));
    return rc;
}

int coingecko_parse_categories_list(const char *body, size_t len, const struct coingecko_times *t,
                                    struct batch *categories, struct coingecko_stats *st, char *err,
                                    size_t errlen)
{
    struct parse p;
    parse_begin(&p, "coingecko /coins/categories/list", NULL, err, errlen);
    uint16_t cols[CA_FIXED + JROWS_NFIELDS(categories_fields)];
    int rc = jrows_out(&p.j, categories, BATCH_CATEGORIES, categories_fixed, CA_FIXED,
                       categories_fields, JROWS_NFIELDS(categories_fields), cols);
    if (rc)
        return parse_finish(&p, rc, st);
    struct simple_ctx c = {t, categories, cols};
    return parse_array(&p, body, len, "an array of categories", "category_id", category_row, &c,
                       NULL, st);
}

/* --- /coins/markets ----------------------------------------------------------------------- */

static const struct jrows_field snapshot_fields[] = {
    {"market_cap_rank", "market_cap_rank", JROWS_UINT},
    {"current_price", "price", JROWS_NUM},
    {"market_cap", "market_cap", JROWS_NUM},
    {"fully_diluted_valuation", "fully_diluted_valuation", JROWS_NUM},
    {"total_volume", "total_volume", JROWS_NUM},
    {"high_24h", "high_24h", JROWS_NUM},
    {"low_24h", "low_24h", JROWS_NUM},
    {"price_change_24h", "price_change_24h", JROWS_NUM},
    {"price_change_percentage_24h", "price_change_pct_24h", JROWS_NUM},
    {"market_cap_change_24h", "market_cap_change_24h", JROWS_NUM},
    {"market_cap_change_percentage_24h", "market_cap_change_pct_24h", JROWS_NUM},
    {"circulating_supply", "circulating_supply", JROWS_NUM},
    {"total_supply", "total_supply", JROWS_NUM},
    {"max_supply", "max_supply", JROWS_NUM},
    {"ath", "ath", JROWS_NUM},
    {"ath_change_percentage", "ath_change_pct", JROWS_NUM},
    {"ath_date", "ath_date", JROWS_ISO_TIME},
    {"atl", "atl", JROWS_NUM},
    {"atl_change_percentage", "atl_change_pct", JROWS_NUM},
    {"atl_date", "atl_date", JROWS_ISO_TIME},
    {"roi", "roi", JROWS_JSON_OBJ},
};
enum { SN_ASSET_ID, SN_VS, SN_SOURCE, SN_SNAPSHOT_AT, SN_FETCHED_AT, SN_FIXED };
static const char *const snapshot_fixed[SN_FIXED] = {"asset_id", "vs_currency", "source",
                                                     "snapshot_at", "fetched_at"};

/* market_cap_rank is not here: the asset row copies the snapshot row's value, so a bad rank
 * is counted once. */
static const struct jrows_field asset_market_fields[] = {
    {"symbol", "symbol", JROWS_STR},
    {"name", "name", JROWS_STR},
    {"image", "image_url", JROWS_STR},
};
enum { AM_ID, AM_RANK, AM_FIRST_SEEN_AT, AM_UPDATED_AT, AM_FIXED };
static const char *const asset_market_fixed[AM_FIXED] = {"id", "market_cap_rank", "first_seen_at",
                                                         "updated_at"};

enum { AC_CATEGORY_ID, AC_ASSET_ID, AC_FIRST_SEEN_AT, AC_LAST_SEEN_AT, AC_FIXED };
static const char *const asset_cat_fixed[AC_FIXED] = {"category_id", "asset_id", "first_seen_at",
                                                      "last_seen_at"};

struct markets_cols {
    uint16_t sn[SN_FIXED + JROWS_NFIELDS(snapshot_fields)];
    uint16_t am[AM_FIXED + JROWS_NFIELDS(asset_market_fields)];
    uint16_t ac[AC_FIXED];
};

static int markets_row(struct parse *p, const struct coingecko_times *t, const char *vs,
                       const char *category, struct coingecko_markets_out *out,
                       const struct markets_cols *c, const json_t *coin, const json_t *id)
{
    struct batch *sn = out->snapshots;
    int row = jrows_add_row(&p->j, sn);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = jrows_put(&p->j, sn, r, c->sn[SN_ASSET_ID], JROWS_STR, id);
    if (!rc)
        rc = put_string(sn, r, c->sn[SN_VS], vs);
    if (!rc)
        rc = put_string(sn, r, c->sn[SN_SOURCE], COINGECKO_SOURCE);
    if (rc)
        return rc;

    /* snapshot_at is part of the primary key, so it always gets a time. */
    const json_t *lu = json_object_get(coin, "last_updated");
    int64_t ms = t->fetched_ms;
    if (!lu || json_is_null(lu)) {
        p->cg.missing_last_updated++;
    } else if (!json_is_string(lu)) {
        p->j.st.field_type_errors++;
        p->cg.missing_last_updated++;
    } else if (jrows_iso_time(lu, &ms)) {
        ms = t->fetched_ms;
        p->j.st.bad_times++;
        p->cg.missing_last_updated++;
    }
    batch_set_time(sn, r, c->sn[SN_SNAPSHOT_AT], ms);
    batch_set_time(sn, r, c->sn[SN_FETCHED_AT], t->fetched_ms);
    rc = jrows_put_fields(&p->j, sn, r, coin, snapshot_fields, c->sn + SN_FIXED,
                          JROWS_NFIELDS(snapshot_fields));
    if (rc)
        return rc;

    if (out->assets) {
        struct batch *am = out->assets;
        /* The rank is the first snapshot field. */
        const struct val *rank = batch_val(sn, r, c->sn[SN_FIXED]);
        if ((row = jrows_add_row(&p->j, am)) < 0)
            return row;
        uint32_t a = (uint32_t)row;
        rc = jrows_put(&p->j, am, a, c->am[AM_ID], JROWS_STR, id);
        if (rank->type == VAL_INT)
            batch_set_int(am, a, c->am[AM_RANK], rank->u.i);
        batch_set_time(am, a, c->am[AM_FIRST_SEEN_AT], t->run_ms);
        batch_set_time(am, a, c->am[AM_UPDATED_AT], t->run_ms);
        if (!rc)
            rc = jrows_put_fields(&p->j, am, a, coin, asset_market_fields, c->am + AM_FIXED,
                                  JROWS_NFIELDS(asset_market_fields));
        if (rc)
            return rc;
    }

    if (category) {
        struct batch *ac = out->asset_categories;
        if ((row = jrows_add_row(&p->j, ac)) < 0)
            return row;
        uint32_t a = (uint32_t)row;
        rc = put_string(ac, a, c->ac[AC_CATEGORY_ID], category);
        if (!rc)
            rc = jrows_put(&p->j, ac, a, c->ac[AC_ASSET_ID], JROWS_STR, id);
        batch_set_time(ac, a, c->ac[AC_FIRST_SEEN_AT], t->run_ms);
        batch_set_time(ac, a, c->ac[AC_LAST_SEEN_AT], t->run_ms);
        if (rc)
            return rc;
    }
    return jrows_keep_id(&p->j, id);
}

static int markets_outputs(struct parse *p, const char *category, struct coingecko_markets_out *out,
                           struct markets_cols *c)
{
    int rc = jrows_out(&p->j, out->snapshots, BATCH_MARKET_SNAPSHOTS, snapshot_fixed, SN_FIXED,
                       snapshot_fields, JROWS_NFIELDS(snapshot_fields), c->sn);
    if (rc)
        return rc;
    if (out->assets) {
        rc = jrows_out(&p->j, out->assets, BATCH_ASSETS_MARKET, asset_market_fixed, AM_FIXED,
                       asset_market_fields, JROWS_NFIELDS(asset_market_fields), c->am);
        if (rc)
            return rc;
    }
    if (category) {
        if (!*category)
            return -EINVAL;
        rc = jrows_out(&p->j, out->asset_categories, BATCH_ASSET_CATEGORIES, asset_cat_fixed,
                       AC_FIXED, NULL, 0, c->ac);
    }
    return rc;
}

struct markets_ctx {
    const struct coingecko_times *t;
    const char *vs;
    const char *category;
    struct coingecko_markets_out *out;
    struct markets_cols *c;
};

static int markets_elem(struct jrows *j, const json_t *coin, const json_t *id, void *arg)
{
    struct markets_ctx *m = arg;
    return markets_row(PARSE_OF(j), m->t, m->vs, m->category, m->out, m->c, coin, id);
}

int coingecko_parse_markets(const char *body, size_t len, const struct coingecko_times *t,
                            const char *vs_currency, const char *category,
                            struct coingecko_markets_out *out, struct coingecko_stats *st,
                            char *err, size_t errlen)
{
    struct parse p;
    struct markets_cols c;
    char vs[MAX_VS_LEN + 1];
    parse_begin(&p, "coingecko /coins/markets", out->ids, err, errlen);
    int rc = lower_vs(vs_currency, vs);
    if (!rc)
        rc = markets_outputs(&p, category, out, &c);
    if (rc)
        return parse_finish(&p, rc, st);

    struct markets_ctx mc = {t, vs, category, out, &c};
    size_t ncoins = 0;
    rc = parse_array(&p, body, len, "an array of coins", "id", markets_elem, &mc, &ncoins, st);
    if (rc == 0)
        out->ncoins = ncoins;
    return rc;
}

/* --- /simple/price ------------------------------------------------------------------------ */

enum {
    PR_ASSET_ID,
    PR_VS,
    PR_SOURCE,
    PR_UPDATED_AT,
    PR_PRICE,
    PR_MARKET_CAP,
    PR_VOLUME,
    PR_CHANGE,
    PR_FETCHED_AT,
    PR_NCOLS
};
static const char *const prices_names[PR_NCOLS] = {
    "asset_id",   "vs_currency", "source",         "source_updated_at", "price",
    "market_cap", "volume_24h",  "change_24h_pct", "fetched_at"};

/* The keys of one currency in a coin's object: c, c_market_cap, c_24h_vol, c_24h_change. */
struct vs_keys {
    char vs[MAX_VS_LEN + 1];
    char market_cap[MAX_VS_LEN + 12];
    char vol[MAX_VS_LEN + 12];
    char change[MAX_VS_LEN + 12];
};

static int price_row(struct parse *p, struct batch *b, const uint16_t *cols, const char *id,
                     const struct vs_keys *k, const json_t *obj, const json_t *price,
                     int64_t updated_ms, int64_t fetched_ms)
{
    int row = jrows_add_row(&p->j, b);
    if (row < 0)
        return row;
    uint32_t r = (uint32_t)row;
    int rc = put_string(b, r, cols[PR_ASSET_ID], id);
    if (!rc)
        rc = put_string(b, r, cols[PR_VS], k->vs);
    if (!rc)
        rc = put_string(b, r, cols[PR_SOURCE], COINGECKO_SOURCE);
    batch_set_time(b, r, cols[PR_UPDATED_AT], updated_ms);
    batch_set_time(b, r, cols[PR_FETCHED_AT], fetched_ms);
    /* Numbers cannot fail: only strings allocate. */
    jrows_put(&p->j, b, r, cols[PR_PRICE], JROWS_NUM, price);
    jrows_put(&p->j, b, r, cols[PR_MARKET_CAP], JROWS_NUM, json_object_get(obj, k->market_cap));
    jrows_put(&p->j, b, r, cols[PR_VOLUME], JROWS_NUM, json_object_get(obj, k->vol));
    jrows_put(&p->j, b, r, cols[PR_CHANGE], JROWS_NUM, json_object_get(obj, k->change));
    return rc;
}

int coingecko_parse_simple_price(const char *body, size_t len, const struct coingecko_times *t,
                                 const struct coingecko_price_req *req, struct batch *prices,
                                 struct coingecko_stats *st, char *err, size_t errlen)
{
    struct parse p;
    uint16_t cols[PR_NCOLS];
    struct vs_keys *keys = NULL;
    parse_begin(&p, "coingecko /simple/price", NULL, err, errlen);
    int rc = jrows_out(&p.j, prices, BATCH_PRICES, prices_names, PR_NCOLS, NULL, 0, cols);
    if (!rc && req->nvs) {
        keys = calloc(req->nvs, sizeof(*keys));
        if (!keys)
            rc = -ENOMEM;
    }
    for (size_t v = 0; v < req->nvs && !rc; v++) {
        struct vs_keys *k = &keys[v];
        rc = lower_vs(req->vs_currencies[v], k->vs);
        snprintf(k->market_cap, sizeof(k->market_cap), "%s_market_cap", k->vs);
        snprintf(k->vol, sizeof(k->vol), "%s_24h_vol", k->vs);
        snprintf(k->change, sizeof(k->change), "%s_24h_change", k->vs);
    }
    if (rc) {
        free(keys);
        return parse_finish(&p, rc, st);
    }

    json_t *root;
    rc = jrows_load(&p.j, body, len, &root);
    if (rc) {
        free(keys);
        return parse_finish(&p, rc, st);
    }
    if (!json_is_object(root) || error_body_message(root)) {
        jrows_shape_error(&p.j, "an object of coins", root);
        json_decref(root);
        free(keys);
        return parse_finish(&p, -EBADMSG, st);
    }

    for (void *it = json_object_iter(root); it; it = json_object_iter_next(root, it)) {
        const char *id = json_object_iter_key(it);
        const json_t *coin = json_object_iter_value(it);
        p.j.st.items++;
        if (!*id || !json_is_object(coin)) {
            p.j.st.skipped++;
            continue;
        }
        if (json_object_size(coin) == 0) {
            /* An unknown vs currency gives {"bitcoin":{}}. */
            p.cg.missing_coins++;
            continue;
        }
        int64_t updated_ms = t->fetched_ms;
        if (jrows_unix_time(&p.j, json_object_get(coin, "last_updated_at"), &updated_ms)) {
            updated_ms = t->fetched_ms;
            p.cg.missing_last_updated++;
        }
        for (size_t v = 0; v < req->nvs && !rc; v++) {
            const json_t *price = json_object_get(coin, keys[v].vs);
            if (!price)
                p.cg.missing_currencies++;
            else
                rc = price_row(&p, prices, cols, id, &keys[v], coin, price, updated_ms,
                               t->fetched_ms);
        }
        if (rc)
            break;
    }
    for (size_t i = 0; i < req->nids; i++)
        if (!json_object_get(root, req->ids[i]))
            p.cg.missing_coins++;

    rc = parse_finish(&p, rc, st);
    json_decref(root);
    free(keys);
    return rc;
}

/* --- /global ------------------------------------------------------------------------------ */

static const struct jrows_field global_fields[] = {
    {"active_cryptocurrencies", "active_cryptocurrencies", JROWS_UINT},
    {"markets", "markets", JROWS_UINT},
    {"total_market_cap.usd", "total_market_cap_usd", JROWS_NUM},
    {"total_volume.usd", "total_volume_usd", JROWS_NUM},
    {"market_cap_percentage.btc", "btc_dominance", JROWS_NUM},
    {"market_cap_percentage.eth", "eth_dominance", JROWS_NUM},
    {"market_cap_change_percentage_24h_usd", "market_cap_change_pct_24h_usd", JROWS_NUM},
    {"total_market_cap", "total_market_cap", JROWS_JSON_OBJ},
    {"total_volume", "total_volume", JROWS_JSON_OBJ},
    {"market_cap_percentage", "market_cap_percentage", JROWS_JSON_OBJ},
};
enum { GL_SOURCE, GL_SNAPSHOT_AT, GL_FETCHED_AT, GL_FIXED };
static const char *const global_fixed[GL_FIXED] = {"source", "snapshot_at", "fetched_at"};

int coingecko_parse_global(const char *body, size_t len, const struct coingecko_times *t,
                           struct batch *global, struct coingecko_stats *st, char *err,
                           size_t errlen)
{
    struct parse p;
    parse_begin(&p, "coingecko /global", NULL, err, errlen);
    const size_t nf = JROWS_NFIELDS(global_fields);
    uint16_t cols[GL_FIXED + JROWS_NFIELDS(global_fields)];
    int rc = jrows_out(&p.j, global, BATCH_GLOBAL_SNAPSHOTS, global_fixed, GL_FIXED, global_fields,
                       nf, cols);
    if (rc)
        return parse_finish(&p, rc, st);

    json_t *root;
    rc = jrows_load(&p.j, body, len, &root);
    if (rc)
        return parse_finish(&p, rc, st);
    const json_t *data = json_object_get(root, "data");
    if (!json_is_object(data) || error_body_message(root)) {
        if (json_is_object(root) && !error_body_message(root))
            jrows_error(&p.j, "expected an object with a \"data\" object, \"data\" is %s",
                        data ? jrows_type_name(data) : "missing");
        else
            jrows_shape_error(&p.j, "an object with a \"data\" object", root);
        json_decref(root);
        return parse_finish(&p, -EBADMSG, st);
    }
    p.j.st.items++;
    int64_t ms;
    if (jrows_unix_time(&p.j, json_object_get(data, "updated_at"), &ms)) {
        ms = t->fetched_ms;
        p.cg.missing_last_updated++;
    }
    int row = jrows_add_row(&p.j, global);
    if (row < 0) {
        rc = row;
    } else {
        uint32_t r = (uint32_t)row;
        rc = put_string(global, r, cols[GL_SOURCE], COINGECKO_SOURCE);
        batch_set_time(global, r, cols[GL_SNAPSHOT_AT], ms);
        batch_set_time(global, r, cols[GL_FETCHED_AT], t->fetched_ms);
        if (!rc)
            rc = jrows_put_fields(&p.j, global, r, data, global_fields, cols + GL_FIXED, nf);
    }
    rc = parse_finish(&p, rc, st);
    json_decref(root);
    return rc;
}

void coingecko_strlist_free(struct strlist *l)
{
    if (l)
        strlist_clear(l);
}

/* ---- /simple/supported_vs_currencies ------------------------------------------------------ */

int coingecko_parse_supported_vs(const char *body, size_t len, struct strlist *codes, char *err,
                                 size_t errlen)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!json_is_array(root)) {
        snprintf(err, errlen, "supported_vs_currencies: %s", root ? "not a JSON array" : jerr.text);
        json_decref(root);
        return -EBADMSG;
    }
    struct strlist got = {0};
    int rc = 0;
    size_t i;
    json_t *v;
    json_array_foreach(root, i, v)
    {
        const char *s = json_string_value(v);
        size_t n = s ? json_string_length(v) : 0;
        /* Currency codes: short, lower-case letters and digits ("usd", "bits"). */
        bool ok = n > 0 && n <= 16;
        for (size_t k = 0; ok && k < n; k++)
            ok = (s[k] >= 'a' && s[k] <= 'z') || (s[k] >= '0' && s[k] <= '9');
        if (ok && strlist_push(&got, s, n) != 0) {
            rc = -ENOMEM;
            break;
        }
    }
    json_decref(root);
    if (rc) {
        strlist_clear(&got);
        return rc;
    }
    strlist_sort_uniq(&got);
    strlist_clear(codes);
    *codes = got;
    return 0;
}
