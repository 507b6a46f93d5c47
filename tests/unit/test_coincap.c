/*
 * test_coincap: the CoinCap v3 source's parsers on the recorded responses
 * (tests/fixtures/coincap/): the v3 single-asset body (numbers sent as strings, read to the
 * last digit), the v2-shaped 10- and 1000-asset lists (nulls kept as unknown), the history
 * bodies kept to their window, and the v2 shutdown notice refused with its message.
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "testdb.h"

#include "coingest/batch.h"
#include "sources/coincap/coincap.h"

/* A recorded CoinCap body from tests/fixtures/coincap/ (testdb_read_fixture). */
static char *load_fixture(const char *name, size_t *len)
{
    return testdb_fixture("coincap", name, len);
}

static void test_v3_asset(void **state)
{
    (void)state;
    size_t len;
    char *body = load_fixture("v3_assets_bitcoin_2026-04-06.json", &len);
    struct coincap_assets l = {0};
    uint64_t skipped = 0, bad = 0;
    char err[256];
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1);
    assert_int_equal(skipped + bad, 0);
    assert_int_equal(l.timestamp_ms, 1775474489690LL);
    const struct coincap_asset *a = &l.items[0];
    assert_string_equal(a->id, "bitcoin");
    assert_string_equal(a->symbol, "BTC");
    assert_string_equal(a->name, "Bitcoin");
    assert_int_equal(a->naddresses, 0);
    assert_true(a->rank == 1);
    /* Each the double nearest to its text. */
    assert_true(a->price == strtod("69704.779999999998835847", NULL));
    assert_true(a->supply == 20012087.0);
    assert_true(a->max_supply == 21000000.0);
    assert_true(a->market_cap == strtod("1394938121675.859863281250000000", NULL));
    assert_true(a->volume_24h == strtod("30717175906.604835510253906250", NULL));
    assert_true(a->change_24h_pct == 3.934756709445493);
    assert_true(a->vwap_24h == 68412.29711944099);
    coincap_assets_clear(&l);
    free(body);
}

static void test_lists(void **state)
{
    (void)state;
    size_t len;
    char err[256];
    char *body = load_fixture("v2_assets_limit10_2021-10-27.json", &len);
    struct coincap_assets l = {0};
    uint64_t skipped = 0, bad = 0;
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 10);
    assert_string_equal(l.items[1].id, "ethereum");
    assert_true(isnan(l.items[1].max_supply)); /* null: unknown */
    assert_true(l.items[1].rank == 2);
    free(body);

    body = load_fixture("v2_assets_limit1000_2020-02-10_tabs.json", &len);
    assert_int_equal(coincap_parse_assets(body, len, &l, &skipped, &bad, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1010);
    assert_int_equal(skipped + bad, 0);
    size_t no_max = 0, no_vwap = 0;
    for (size_t i = 10; i < l.n; i++) {
        assert_false(isnan(l.items[i].price)); /* priceUsd is never null */
        assert_true(l.items[i].rank == (double)(i - 9));
        no_max += isnan(l.items[i].max_supply);
        no_vwap += isnan(l.items[i].vwap_24h);
    }
    assert_int_equal(no_max, 798);
    assert_int_equal(no_vwap, 370);
    free(body);

    /* The retired v2's notice: refused with its message, as final (-EPROTO); the list as it
     * was. */
    body = load_fixture("v2_assets_deprecation_notice_2025-04-16.json", &len);
    assert_int_equal(coincap_parse_assets(body, len, &l, NULL, NULL, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "We are deprecating this version"));
    assert_int_equal(l.n, 1010);
    char msg[256];
    assert_int_equal(coincap_error_message(body, len, msg, sizeof(msg)), 0);
    assert_non_null(strstr(msg, "V3 API"));
    free(body);

    /* Elements without a usable id are skipped; numbers that are not are counted. */
    const char *odd =
        "{\"data\":[{\"id\":\"\"},7,{\"id\":\"x\",\"priceUsd\":\"abc\",\"rank\":\"1.5\","
        "\"tokens\":{\"1\":[\"0xabc\"],\"56\":[\"0xdef\",3]}}],\"timestamp\":5}";
    struct coincap_assets o = {0};
    skipped = bad = 0;
    assert_int_equal(coincap_parse_assets(odd, strlen(odd), &o, &skipped, &bad, err, sizeof(err)),
                     0);
    assert_int_equal(o.n, 1);
    assert_int_equal(skipped, 2);
    assert_int_equal(bad, 2);
    assert_int_equal(o.items[0].naddresses, 2);
    assert_true(isnan(o.items[0].price) && isnan(o.items[0].rank));
    const char *e = "{\"error\":\"Unauthorized\"}";
    assert_int_equal(coincap_parse_assets(e, strlen(e), &o, NULL, NULL, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "Unauthorized"));
    /* A body of the wrong shape that carries no message is retried (-EBADMSG). */
    const char *w = "{\"data\":7}";
    assert_int_equal(coincap_parse_assets(w, strlen(w), &o, NULL, NULL, err, sizeof(err)),
                     -EBADMSG);
    coincap_assets_clear(&o);
    /* Truncating keeps the first n and frees the rest. */
    coincap_assets_truncate(&l, 3);
    assert_int_equal(l.n, 3);
    assert_string_equal(l.items[2].id, "binance-coin");
    coincap_assets_truncate(&l, 5);
    assert_int_equal(l.n, 3);
    coincap_assets_clear(&l);
}

static void test_history(void **state)
{
    (void)state;
    size_t len;
    char err[256];
    char *body = load_fixture("v2_assets_ark_history_h1_24rows_2020-02-10_tabs.json", &len);
    struct batch *b = batch_new(BATCH_PRICES, 8);
    assert_non_null(b);
    /* 24 hours from 2020-02-09T14:00Z; the window keeps the first 10. */
    struct coincap_history_req q = {.asset_id = "ark",
                                    .from_ms = 1581256800000LL,
                                    .to_ms = 1581256800000LL + 10 * 3600000LL,
                                    .fetched_ms = 1700000000000LL};
    struct coincap_history_stats st = {0};
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.points, 24);
    assert_int_equal(st.rows, 10);
    assert_int_equal(st.outside, 14);
    assert_int_equal(b->nrows, 10);
    assert_int_equal(batch_val(b, 0, BATCH_PRICES_COL_SOURCE_UPDATED_AT)->u.i, 1581256800000LL);
    assert_true(batch_val(b, 0, BATCH_PRICES_COL_PRICE)->u.d == 0.2085129692407258);
    free(body);

    body =
        load_fixture("v2_assets_bitcoin_history_d1_8rows-trimmed_2021-04-12_pyliteral.json", &len);
    q = (struct coincap_history_req){"bitcoin", 0, 4000000000000LL, 1};
    memset(&st, 0, sizeof(st));
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), 0);
    assert_int_equal(st.rows, 8);
    assert_true(batch_val(b, 10, BATCH_PRICES_COL_PRICE)->u.d == 29232.6707650537687673);
    free(body);

    /* The notice is refused as final; nothing added. */
    body = load_fixture("v2_assets_deprecation_notice_2025-04-16.json", &len);
    uint32_t before = b->nrows;
    assert_int_equal(coincap_parse_history(body, len, &q, b, &st, err, sizeof(err)), -EPROTO);
    assert_non_null(strstr(err, "deprecating"));
    assert_int_equal(b->nrows, before);
    free(body);
    batch_free(b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_v3_asset),
        cmocka_unit_test(test_lists),
        cmocka_unit_test(test_history),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
