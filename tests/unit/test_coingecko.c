/*
 * test_coingecko: the CoinGecko parsers against real recorded bodies (tests/fixtures/coingecko,
 * provenance in tests/fixtures/SOURCES.md) and against hand-made bad ones.
 *
 * Expected values were NOT produced by the code under test. They were read from the fixture
 * files with a Python one-off (json.load, whose float() is correctly rounded like strtod; times
 * converted with calendar.timegm), e.g.
 *   d = json.load(open(f)); r = d[0]; print(repr(r["current_price"]), r["last_updated"])
 * and pasted here as literals. Doubles are compared with ==: a C literal and strtod both give
 * the nearest double, so any difference is a real parsing error.
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
#include "sources/coingecko/coingecko.h"
#include "rowcheck.h"
#include "testdb.h"

#define RUN_MS     1739123100000LL /* 2025-02-09T17:45:00Z, an arbitrary job run */
#define FETCHED_MS 1739123047000LL /* a little earlier: when the body arrived */

static const struct coingecko_times times = {RUN_MS, FETCHED_MS};

/* Allocation failure injection for the error paths (tests/support/allocfail.h): under
 * ASan/TSan the replacement is left out and the tests that need it skip. */
#include "allocfail.h"

static char *fixture(const char *name, size_t *len)
{
    return testdb_fixture("coingecko", name, len);
}

/* --- value checks by column name -------------------------------------------------------- */

/* --- /coins/markets: the 250-row 2025 page ---------------------------------------------- */

#define MARKETS_2025 "coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json"

static void test_markets_2025_page(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture(MARKETS_2025, &len);
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct batch *am = batch_new(BATCH_ASSETS_MARKET, 0);
    struct strlist ids = {0};
    struct coingecko_markets_out out = {.snapshots = sn, .assets = am, .ids = &ids};
    struct coingecko_stats st = {0};
    char err[256] = "";

    assert_int_equal(
        coingecko_parse_markets(body, len, &times, "USD", NULL, &out, &st, err, sizeof(err)), 0);
    assert_int_equal(out.ncoins, 250);
    assert_int_equal(sn->nrows, 250);
    assert_int_equal(am->nrows, 250);
    assert_int_equal(ids.n, 250);
    assert_int_equal(st.items, 250);
    assert_int_equal(st.rows, 500);
    assert_int_equal(st.skipped, 0);
    assert_int_equal(st.field_type_errors, 0);
    assert_int_equal(st.bad_times, 0);
    assert_int_equal(st.missing_last_updated, 0);
    assert_int_equal(st.overflow_numbers, 0);
    assert_string_equal(ids.items[0], "bitcoin");
    assert_string_equal(ids.items[240], "resolv-wstusr");

    /* Row 0, bitcoin: ints, floats and whole floats (19822040.0) mixed. */
    check_str(sn, 0, "asset_id", "bitcoin");
    check_str(sn, 0, "vs_currency", "usd"); /* lower-cased */
    check_str(sn, 0, "source", "coingecko");
    check_time(sn, 0, "snapshot_at", 1739123044143LL); /* 2025-02-09T17:44:04.143Z */
    check_time(sn, 0, "fetched_at", FETCHED_MS);
    check_int(sn, 0, "market_cap_rank", 1);
    check_dbl(sn, 0, "price", 96114.08481738689);
    check_dbl(sn, 0, "market_cap", 1903746811536.0);
    check_dbl(sn, 0, "fully_diluted_valuation", 1903747771956.0);
    check_dbl(sn, 0, "total_volume", 20388876648.0);
    check_dbl(sn, 0, "high_24h", 97317.0);
    check_dbl(sn, 0, "low_24h", 95867.0);
    check_dbl(sn, 0, "price_change_24h", -144.95468809806334);
    check_dbl(sn, 0, "price_change_pct_24h", -0.15059);
    check_dbl(sn, 0, "market_cap_change_24h", -4257724864.859619);
    check_dbl(sn, 0, "market_cap_change_pct_24h", -0.22315);
    check_dbl(sn, 0, "circulating_supply", 19822040.0);
    check_dbl(sn, 0, "total_supply", 19822050.0);
    check_dbl(sn, 0, "max_supply", 21000000.0);
    check_dbl(sn, 0, "ath", 108786.0);
    check_dbl(sn, 0, "ath_change_pct", -11.71842);
    check_time(sn, 0, "ath_date", 1737364314494LL); /* 2025-01-20T09:11:54.494Z */
    check_dbl(sn, 0, "atl", 67.81);
    check_dbl(sn, 0, "atl_change_pct", 141529.55363);
    check_time(sn, 0, "atl_date", 1373068800000LL); /* 2013-07-06T00:00:00.000Z */
    check_null(sn, 0, "roi");
    check_str(am, 0, "id", "bitcoin");
    check_str(am, 0, "symbol", "btc");
    check_str(am, 0, "name", "Bitcoin");
    check_int(am, 0, "market_cap_rank", 1);
    check_str(am, 0, "image_url",
              "https://coin-images.coingecko.com/coins/images/1/large/bitcoin.png?1696501400");
    check_time(am, 0, "first_seen_at", RUN_MS);
    check_time(am, 0, "updated_at", RUN_MS);

    /* Row 1, ethereum: roi is an object; its JSON text keeps key order and the numbers'
     * shortest forms (Python's repr gives the same digits). */
    check_str(sn, 1, "asset_id", "ethereum");
    check_time(sn, 1, "snapshot_at", 1739123038288LL); /* 2025-02-09T17:43:58.288Z */
    check_dbl(sn, 1, "price", 2642.2421635443243);
    check_dbl(sn, 1, "circulating_supply", 120535801.6608646);
    check_null(sn, 1, "max_supply");
    check_dbl(sn, 1, "atl", 0.432979);
    check_time(sn, 1, "ath_date", 1636554259604LL); /* 2021-11-10T14:24:19.604Z */
    check_json(
        sn, 1, "roi",
        "{\"times\":35.7711288054569,\"currency\":\"btc\",\"percentage\":3577.1128805456897}");

    /* Row 100, bittorrent: exponent notation and ~1e15 supplies. */
    check_str(sn, 100, "asset_id", "bittorrent");
    check_int(sn, 100, "market_cap_rank", 101);
    check_dbl(sn, 100, "price", 8.653239801269765e-07);
    check_dbl(sn, 100, "high_24h", 8.75831e-07);
    check_dbl(sn, 100, "low_24h", 8.56741e-07);
    check_dbl(sn, 100, "price_change_24h", 8.583e-09);
    check_dbl(sn, 100, "circulating_supply", 986061142857000.0);
    check_dbl(sn, 100, "total_supply", 990000000000000.0);
    check_dbl(sn, 100, "max_supply", 990000000000000.0);
    check_dbl(sn, 100, "ath", 3.43e-06);
    check_dbl(sn, 100, "atl", 3.65368e-07);
    check_time(sn, 100, "atl_date", 1697173841241LL); /* 2023-10-13T05:10:41.241Z */
    check_time(sn, 100, "snapshot_at", 1739123042340LL);

    /* Row 18, shiba-inu: 1.573593094914389e-05 as on the wire. */
    check_str(sn, 18, "asset_id", "shiba-inu");
    check_dbl(sn, 18, "price", 1.573593094914389e-05);
    check_dbl(sn, 18, "price_change_24h", -2.5730746414e-07);
    check_dbl(sn, 18, "atl", 5.6366e-11);

    /* Row 240, resolv-wstusr: the 24h fields are null (SOURCES.md). */
    check_str(sn, 240, "asset_id", "resolv-wstusr");
    check_int(sn, 240, "market_cap_rank", 242);
    check_dbl(sn, 240, "price", 1.0526848814770329);
    check_dbl(sn, 240, "total_volume", 1550.26);
    check_null(sn, 240, "high_24h");
    check_null(sn, 240, "low_24h");
    check_null(sn, 240, "price_change_24h");
    check_null(sn, 240, "price_change_pct_24h");
    check_null(sn, 240, "market_cap_change_24h");
    check_null(sn, 240, "market_cap_change_pct_24h");
    check_null(sn, 240, "max_supply");
    check_dbl(sn, 240, "circulating_supply", 249607886.8782911);
    check_time(sn, 240, "snapshot_at", 1738073233341LL); /* 2025-01-28T14:07:13.341Z */
    check_str(am, 240, "symbol", "wstusr");
    check_str(am, 240, "name", "Resolv wstUSR");

    /* NULLs per column over the page (Python: sum(r[k] is None for r in d)). */
    assert_int_equal(count_null(sn, "max_supply"), 117);
    assert_int_equal(count_null(sn, "roi"), 217);
    const char *once[] = {"high_24h",
                          "low_24h",
                          "price_change_24h",
                          "price_change_pct_24h",
                          "market_cap_change_24h",
                          "market_cap_change_pct_24h"};
    for (size_t i = 0; i < sizeof(once) / sizeof(once[0]); i++)
        assert_int_equal(count_null(sn, once[i]), 1);
    const char *never[] = {"asset_id",
                           "vs_currency",
                           "source",
                           "snapshot_at",
                           "market_cap_rank",
                           "price",
                           "market_cap",
                           "fully_diluted_valuation",
                           "total_volume",
                           "circulating_supply",
                           "total_supply",
                           "ath",
                           "ath_change_pct",
                           "ath_date",
                           "atl",
                           "atl_change_pct",
                           "atl_date",
                           "fetched_at"};
    for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
        assert_int_equal(count_null(sn, never[i]), 0);

    coingecko_strlist_free(&ids);
    assert_null(ids.items);
    batch_free(sn);
    batch_free(am);
    free(body);
}

/* 2022 page, re-serialized by Python: bone-shibaswap's atl 0.0 with a 1.97e+37 percentage,
 * baby-doge-coin's 4.2e+17 supplies, fully_diluted_valuation null on 102 rows. */
static void test_markets_2022_page(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture("coins_markets_usd_per_page250_2022-08-29_pydump.json", &len);
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct coingecko_markets_out out = {.snapshots = sn};
    struct coingecko_stats st = {0};
    assert_int_equal(coingecko_parse_markets(body, len, &times, "usd", NULL, &out, &st, NULL, 0),
                     0);
    assert_int_equal(sn->nrows, 250);
    assert_int_equal(st.rows, 250);
    assert_int_equal(st.field_type_errors, 0);

    check_str(sn, 210, "asset_id", "bone-shibaswap");
    check_dbl(sn, 210, "atl", 0.0);
    check_dbl(sn, 210, "atl_change_pct", 1.9737441501355628e+37);
    check_dbl(sn, 210, "total_supply", 229922366.02765);
    check_null(sn, 210, "fully_diluted_valuation");
    check_time(sn, 210, "atl_date", 1628809373007LL);    /* 2021-08-12T23:02:53.007Z */
    check_time(sn, 210, "snapshot_at", 1661817935336LL); /* 2022-08-30T00:05:35.336Z */

    check_str(sn, 171, "asset_id", "baby-doge-coin");
    check_dbl(sn, 171, "price", 1.223e-09);
    check_dbl(sn, 171, "circulating_supply", 1.5927839465879376e+17);
    check_dbl(sn, 171, "total_supply", 4.2e+17);
    check_dbl(sn, 171, "max_supply", 4.2e+17);
    check_dbl(sn, 171, "atl", 9.4771e-11);
    check_int(sn, 171, "market_cap_rank", 173);

    assert_int_equal(count_null(sn, "fully_diluted_valuation"), 102);
    assert_int_equal(count_null(sn, "max_supply"), 102);
    assert_int_equal(count_null(sn, "total_supply"), 12);
    assert_int_equal(count_null(sn, "roi"), 190);
    batch_free(sn);
    free(body);
}

/* A page fetched with category=...: asset_categories rows, and pages append. */
static void test_markets_category_and_append(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture("coins_markets_eur_per_page30_2025-03-04_indent4.json", &len);
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct batch *ac = batch_new(BATCH_ASSET_CATEGORIES, 0);
    struct strlist ids = {0};
    struct coingecko_markets_out out = {.snapshots = sn, .asset_categories = ac, .ids = &ids};
    struct coingecko_stats st = {0};
    assert_int_equal(
        coingecko_parse_markets(body, len, &times, "eur", "layer-1", &out, &st, NULL, 0), 0);
    assert_int_equal(out.ncoins, 30);
    assert_int_equal(ac->nrows, 30);
    check_str(ac, 0, "category_id", "layer-1");
    check_str(ac, 0, "asset_id", "bitcoin");
    check_time(ac, 0, "first_seen_at", RUN_MS);
    check_time(ac, 0, "last_seen_at", RUN_MS);
    check_str(sn, 0, "vs_currency", "eur");

    /* A second page appends after the first. */
    char *small = fixture("coins_markets_ids-bitcoin-ethereum_eth_2021-05.json", &len);
    assert_int_equal(
        coingecko_parse_markets(small, len, &times, "eth", "layer-1", &out, &st, NULL, 0), 0);
    assert_int_equal(out.ncoins, 2);
    assert_int_equal(sn->nrows, 32);
    assert_int_equal(ac->nrows, 32);
    assert_int_equal(ids.n, 32);
    assert_string_equal(ids.items[30], "bitcoin");
    assert_string_equal(ids.items[31], "ethereum");
    check_str(sn, 31, "vs_currency", "eth");
    check_dbl(sn, 30, "price", 12.666344); /* bitcoin priced in eth, 2021-05 */
    check_dbl(sn, 31, "price", 1.0);
    check_time(sn, 31, "snapshot_at", 1621094399730LL); /* 2021-05-15T15:59:59.730Z */
    check_json(
        sn, 31, "roi",
        "{\"times\":104.8161668423025,\"currency\":\"btc\",\"percentage\":10481.61668423025}");
    assert_int_equal(st.items, 32);
    assert_int_equal(st.rows, 64);
    coingecko_strlist_free(&ids);
    batch_free(sn);
    batch_free(ac);
    free(body);
    free(small);
}

static void test_markets_small_2021(void **state)
{
    (void)state;
    const char *files[] = {"coins_markets_ids-bitcoin_usd_2021-05.json",
                           "coins_markets_ids-bitcoin_myr_2021-05.json"};
    for (size_t i = 0; i < 2; i++) {
        size_t len;
        char *body = fixture(files[i], &len);
        struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
        struct coingecko_markets_out out = {.snapshots = sn};
        struct coingecko_stats st = {0};
        assert_int_equal(
            coingecko_parse_markets(body, len, &times, "usd", NULL, &out, &st, NULL, 0), 0);
        assert_int_equal(sn->nrows, 1);
        check_str(sn, 0, "asset_id", "bitcoin");
        assert_int_equal(st.missing_last_updated, 0);
        batch_free(sn);
        free(body);
    }
}

/* --- /coins/list ------------------------------------------------------------------------ */

static void test_coins_list_2025_unicode(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture("coins_list_2025-07_pyindent.json", &len);
    struct batch *as = batch_new(BATCH_ASSETS_LIST, 0);
    struct strlist ids = {0};
    struct coingecko_stats st = {0};
    assert_int_equal(coingecko_parse_coins_list(body, len, &times, as, &ids, &st, NULL, 0), 0);
    assert_int_equal(as->nrows, 17589);
    assert_int_equal(ids.n, 17589);
    assert_int_equal(st.items, 17589);
    assert_int_equal(st.skipped, 0);
    assert_int_equal(st.field_type_errors, 0);

    /* Python: d[i]["symbol"].encode().hex() etc.; \u escapes incl. surrogate pairs decoded. */
    check_str(as, 0, "id", "_");
    check_str(as, 0, "symbol", "gib");
    check_str(as, 0, "name",
              "\xe0\xbc\xbc \xe3\x81\xa4 \xe2\x97\x95_\xe2\x97\x95 \xe0\xbc\xbd\xe3\x81\xa4");
    check_str(as, 46, "id", "1move token");
    check_str(as, 71, "id", "-4");
    check_str(as, 71, "symbol", "\xf0\x9f\xa4\xa1"); /* U+1F921 clown, from \ud83e\udd21 */
    check_str(as, 71, "name", "\xf0\x9f\xa4\xa1");
    check_str(as, 89, "symbol", "\xf0\x9f\x9f\xa5\xf0\x9f\x9f\xa9");
    check_str(as, 89, "name",
              "\xf0\x9f\x9f\xa5\xf0\x9f\x9f\xaa\xf0\x9f\x9f\xa6\xf0\x9f\x9f\xa9\xf0\x9f\x9f\xa8"
              "\xf0\x9f\x9f\xa7");
    check_str(as, 97, "symbol", "\"\xe3\x80\x80\""); /* quote, U+3000, quote */
    check_str(as, 1552, "symbol", "\xf0\x9f\x8f\xa6");
    check_str(as, 8010, "name",
              "Kangaroo the Jumping Co\xe2\x80\x8bin"); /* zero-width space kept */
    check_str(as, 17588, "id", "z-z-z-z-z-fehu-z-z-z-z-z");
    check_str(as, 17588, "symbol", "\xe1\x9a\xa0");
    check_null(as, 0, "platforms"); /* no include_platform */
    check_time(as, 0, "listed_at", RUN_MS);
    check_time(as, 0, "first_seen_at", RUN_MS);
    check_time(as, 0, "updated_at", RUN_MS);
    assert_string_equal(ids.items[46], "1move token");
    assert_string_equal(ids.items[71], "-4");

    /* Six empty symbols (arcium, pico, ...) stay empty strings, not NULL. */
    unsigned empty = 0;
    for (uint32_t r = 0; r < as->nrows; r++) {
        const struct val *v = cell(as, r, "symbol");
        assert_int_equal(v->type, VAL_STR);
        empty += v->len == 0;
    }
    assert_int_equal(empty, 6);
    coingecko_strlist_free(&ids);
    batch_free(as);
    free(body);
}

static void test_coins_list_2024_platforms(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture("coins_list_include_platform_2024-01_indent2.json", &len);
    struct batch *as = batch_new(BATCH_ASSETS_LIST, 0);
    struct coingecko_stats st = {0};
    assert_int_equal(coingecko_parse_coins_list(body, len, &times, as, NULL, &st, NULL, 0), 0);
    assert_int_equal(as->nrows, 12470);
    assert_int_equal(st.field_type_errors, 0);
    check_str(as, 1, "id", "0chain");
    check_json(as, 1, "platforms",
               "{\"ethereum\":\"0xb9ef770b6a5e12e45983c5d80545258aa38f3b78\","
               "\"polygon-pos\":\"0x8bb30e0e67b11b978a5040144c410e1ccddcba30\"}");
    check_str(as, 237, "id", "acala");
    check_json(as, 237, "platforms", "{\"polkadot\":\"\"}"); /* "" values kept */
    check_str(as, 86, "id", "777");
    check_json(as, 86, "platforms",
               "{\"Bitcichain\":\"0x4a2e63fdff734f11a7c09bfcc040eb55dadaa988\"}");
    check_str(as, 51, "name", "\xe2\x82\xbf"); /* raw UTF-8 in this file */
    unsigned empty_maps = 0;
    for (uint32_t r = 0; r < as->nrows; r++) {
        const struct val *v = cell(as, r, "platforms");
        assert_int_equal(v->type, VAL_JSON);
        empty_maps += v->len == 2 && memcmp(v->u.s, "{}", 2) == 0;
    }
    assert_int_equal(empty_maps, 1367);
    batch_free(as);
    free(body);
}

static void test_coins_list_2021_2022(void **state)
{
    (void)state;
    const struct {
        const char *file;
        uint32_t n;
    } lists[] = {{"coins_list_2021-05-15.json", 7248}, {"coins_list_2022-05.json", 13419}};
    for (size_t i = 0; i < 2; i++) {
        size_t len;
        char *body = fixture(lists[i].file, &len);
        struct batch *as = batch_new(BATCH_ASSETS_LIST, 0);
        struct coingecko_stats st = {0};
        assert_int_equal(coingecko_parse_coins_list(body, len, &times, as, NULL, &st, NULL, 0), 0);
        assert_int_equal(as->nrows, lists[i].n);
        assert_int_equal(st.skipped, 0);
        batch_free(as);
        free(body);
    }
}

/* --- /coins/categories/list ------------------------------------------------------------- */

static void test_categories_list(void **state)
{
    (void)state;
    size_t len;
    char *body = fixture("coins_categories_list_2021.json", &len);
    struct batch *cat = batch_new(BATCH_CATEGORIES, 0);
    struct coingecko_stats st = {0};
    assert_int_equal(coingecko_parse_categories_list(body, len, &times, cat, &st, NULL, 0), 0);
    assert_int_equal(cat->nrows, 107);
    check_str(cat, 0, "id", "recently_added");
    check_str(cat, 0, "name", "Recently Added");
    check_time(cat, 0, "updated_at", RUN_MS);
    check_str(cat, 106, "id", "yield-farming");
    check_str(cat, 106, "name", "Yield Farming");

    const char *odd = "[{\"category_id\":\"a\",\"name\":null},{\"name\":\"no id\"},"
                      "{\"category_id\":7,\"name\":\"x\"},{\"category_id\":\"b\",\"name\":3}]";
    assert_int_equal(coingecko_parse_categories_list(odd, strlen(odd), &times, cat, &st, NULL, 0),
                     0);
    assert_int_equal(cat->nrows, 109);
    check_null(cat, 107, "name");
    check_str(cat, 108, "id", "b");
    check_null(cat, 108, "name");
    assert_int_equal(st.skipped, 2);
    assert_int_equal(st.field_type_errors, 1);
    batch_free(cat);
    free(body);
}

/* --- /simple/price ---------------------------------------------------------------------- */

static void test_simple_price_fixtures(void **state)
{
    (void)state;
    struct batch *pr = batch_new(BATCH_PRICES, 0);
    struct coingecko_stats st = {0};
    size_t len;

    const char *ids1[] = {"bitcoin"}, *vs1[] = {"usd"};
    struct coingecko_price_req req1 = {ids1, 1, vs1, 1};
    char *body = fixture("simple_price_bitcoin_usd_2021-05.json", &len);
    assert_int_equal(coingecko_parse_simple_price(body, len, &times, &req1, pr, &st, NULL, 0), 0);
    free(body);
    assert_int_equal(pr->nrows, 1);
    check_str(pr, 0, "asset_id", "bitcoin");
    check_str(pr, 0, "vs_currency", "usd");
    check_str(pr, 0, "source", "coingecko");
    check_dbl(pr, 0, "price", 49013.0);
    check_null(pr, 0, "market_cap");
    check_null(pr, 0, "volume_24h");
    check_null(pr, 0, "change_24h_pct");
    check_time(pr, 0, "source_updated_at", FETCHED_MS); /* no last_updated_at: fetch time */
    check_time(pr, 0, "fetched_at", FETCHED_MS);
    assert_int_equal(st.missing_last_updated, 1);

    /* ids=bitcoin,%20ethereum,%20litecoin&vs_currencies=usd,%20myr,%20eth: only bitcoin/usd
     * came back. */
    memset(&st, 0, sizeof(st));
    const char *ids2[] = {"bitcoin", " ethereum", " litecoin"}, *vs2[] = {"usd", " myr", " eth"};
    struct coingecko_price_req req2 = {ids2, 3, vs2, 3};
    body = fixture("simple_price_ids_with_spaces_partial.json", &len);
    assert_int_equal(coingecko_parse_simple_price(body, len, &times, &req2, pr, &st, NULL, 0), 0);
    free(body);
    assert_int_equal(pr->nrows, 2);
    check_dbl(pr, 1, "price", 49357.0);
    assert_int_equal(st.missing_coins, 2);
    assert_int_equal(st.missing_currencies, 2);
    assert_int_equal(st.rows, 1);

    /* vs_currencies=ethereum (not a currency): {"bitcoin":{}}. Counted, not an error. */
    memset(&st, 0, sizeof(st));
    const char *vs3[] = {"ethereum"};
    struct coingecko_price_req req3 = {ids1, 1, vs3, 1};
    body = fixture("simple_price_unknown_vs_currency_empty_object.json", &len);
    assert_int_equal(coingecko_parse_simple_price(body, len, &times, &req3, pr, &st, NULL, 0), 0);
    free(body);
    assert_int_equal(pr->nrows, 2);
    assert_int_equal(st.missing_coins, 1);
    assert_int_equal(st.rows, 0);
    batch_free(pr);
}

static void test_simple_price_full(void **state)
{
    (void)state;
    const char *body =
        "{\"bitcoin\":{\"usd\":96114.08,\"usd_market_cap\":1.9e12,\"usd_24h_vol\":20388876648,"
        "\"usd_24h_change\":-0.15,\"eur\":92000,\"eur_market_cap\":\"oops\","
        "\"last_updated_at\":1739123044},"
        "\"weird coin\":{\"usd\":null,\"last_updated_at\":1739123000.5},"
        "\"nope\":[],"
        "\"late\":{\"usd\":1e-11,\"last_updated_at\":\"yesterday\"}}";
    const char *ids[] = {"bitcoin", "weird coin", "late", "gone"}, *vs[] = {"USD", "eur"};
    struct coingecko_price_req req = {ids, 4, vs, 2};
    struct batch *pr = batch_new(BATCH_PRICES, 0);
    struct coingecko_stats st = {0};
    assert_int_equal(
        coingecko_parse_simple_price(body, strlen(body), &times, &req, pr, &st, NULL, 0), 0);
    assert_int_equal(pr->nrows, 4);
    check_str(pr, 0, "vs_currency", "usd");
    check_dbl(pr, 0, "price", 96114.08);
    check_dbl(pr, 0, "market_cap", 1.9e12);
    check_dbl(pr, 0, "volume_24h", 20388876648.0);
    check_dbl(pr, 0, "change_24h_pct", -0.15);
    check_time(pr, 0, "source_updated_at", 1739123044000LL);
    check_str(pr, 1, "vs_currency", "eur");
    check_dbl(pr, 1, "price", 92000.0);
    check_null(pr, 1, "market_cap"); /* "oops": wrong type */
    check_str(pr, 2, "asset_id", "weird coin");
    check_null(pr, 2, "price"); /* null kept as a NULL price */
    check_time(pr, 2, "source_updated_at", 1739123000500LL);
    check_str(pr, 3, "asset_id", "late");
    check_dbl(pr, 3, "price", 1e-11);
    check_time(pr, 3, "source_updated_at", FETCHED_MS);
    assert_int_equal(st.items, 4);
    assert_int_equal(st.skipped, 1);            /* "nope" */
    assert_int_equal(st.missing_coins, 1);      /* "gone" */
    assert_int_equal(st.missing_currencies, 2); /* weird coin and late lack eur */
    assert_int_equal(st.field_type_errors, 2);  /* "oops", "yesterday" */
    assert_int_equal(st.missing_last_updated, 1);
    batch_free(pr);
}

/* --- /global ---------------------------------------------------------------------------- */

static void test_global_2021_2025(void **state)
{
    (void)state;
    struct batch *g = batch_new(BATCH_GLOBAL_SNAPSHOTS, 0);
    struct coingecko_stats st = {0};
    size_t len;
    char *body = fixture("global_2021-05.json", &len);
    assert_int_equal(coingecko_parse_global(body, len, &times, g, &st, NULL, 0), 0);
    free(body);
    body = fixture("global_2025-04-07.json", &len);
    assert_int_equal(coingecko_parse_global(body, len, &times, g, &st, NULL, 0), 0);
    free(body);
    assert_int_equal(g->nrows, 2);
    assert_int_equal(st.field_type_errors, 0);
    assert_int_equal(st.missing_last_updated, 0);

    check_str(g, 0, "source", "coingecko");
    check_time(g, 0, "snapshot_at", 1621346159000LL);
    check_int(g, 0, "active_cryptocurrencies", 7362);
    check_int(g, 0, "markets", 616);
    check_dbl(g, 0, "total_market_cap_usd", 2142953338976.9612);
    check_dbl(g, 0, "total_volume_usd", 290548797852.028);
    check_dbl(g, 0, "btc_dominance", 38.259132842486686);
    check_dbl(g, 0, "eth_dominance", 18.555868478228195);
    check_dbl(g, 0, "market_cap_change_pct_24h_usd", -0.9554088490358789);
    check_time(g, 0, "fetched_at", FETCHED_MS);
    check_json(g, 0, "market_cap_percentage",
               "{\"btc\":38.259132842486686,\"eth\":18.555868478228195,\"bnb\":3.7183165449671693,"
               "\"xrp\":3.4653227295636126,\"ada\":3.060792573051515,\"doge\":2.9510624870337234,"
               "\"usdt\":2.652530102969678,\"dot\":1.8165220265611126,\"bch\":0.9732382844468698,"
               "\"ltc\":0.9582886668174445}");
    /* "clp":1.52899720736006e+15 on the wire is the whole number 1528997207360060. */
    const struct val *v = cell(g, 0, "total_market_cap");
    assert_int_equal(v->type, VAL_JSON);
    assert_non_null(memmem(v->u.s, v->len, "\"clp\":1528997207360060,", 23));
    assert_non_null(memmem(v->u.s, v->len, "\"usd\":2142953338976.9612,", 25));

    check_time(g, 1, "snapshot_at", 1744025333000LL); /* 2025-04-07T11:28:53Z */
    check_int(g, 1, "active_cryptocurrencies", 17111);
    check_int(g, 1, "markets", 1297);
    check_dbl(g, 1, "total_market_cap_usd", 2515268352188.766);
    check_dbl(g, 1, "total_volume_usd", 198293501804.3288);
    check_dbl(g, 1, "btc_dominance", 60.70858347681936);
    check_dbl(g, 1, "eth_dominance", 7.155942749893206);
    check_dbl(g, 1, "market_cap_change_pct_24h_usd", -9.999293796813587);
    v = cell(g, 1, "total_volume");
    assert_int_equal(v->type, VAL_JSON);
    assert_non_null(memmem(v->u.s, v->len, "\"idr\":3368255724394242.5", 24));
    batch_free(g);
}

static void test_global_odd(void **state)
{
    (void)state;
    struct batch *g = batch_new(BATCH_GLOBAL_SNAPSHOTS, 0);
    struct coingecko_stats st = {0};
    const char *body = "{\"data\":{\"active_cryptocurrencies\":12.5,\"markets\":-1,"
                       "\"total_market_cap\":\"big\",\"market_cap_percentage\":{\"btc\":null}}}";
    assert_int_equal(coingecko_parse_global(body, strlen(body), &times, g, &st, NULL, 0), 0);
    assert_int_equal(g->nrows, 1);
    check_time(g, 0, "snapshot_at", FETCHED_MS);
    check_null(g, 0, "active_cryptocurrencies");
    check_null(g, 0, "markets");
    check_null(g, 0, "total_market_cap_usd");
    check_null(g, 0, "total_market_cap");
    check_null(g, 0, "btc_dominance");
    check_json(g, 0, "market_cap_percentage", "{\"btc\":null}");
    assert_int_equal(st.missing_last_updated, 1);
    /* 12.5, -1, "big" read as total_market_cap.usd and as total_market_cap */
    assert_int_equal(st.field_type_errors, 4);
    batch_free(g);
}

/* --- bad bodies ------------------------------------------------------------------------- */

/* CoinCap v2's answer after its shutdown (fixtures/coincap in the shared fixture set, from
 * x-cmd/x-cmd issue #217), byte for byte. */
static const char coincap_notice[] =
    "{\"data\":{\"message\":\"We are deprecating this version of the CoinCap API on March 31, "
    "2025. Sign up for our new V3 API at https://pro.coincap.io/dashboard\"},"
    "\"timestamp\":1744796832910}";

/* Every parser, given `body`, must fail with -EBADMSG and leave its outputs untouched. */
static void expect_bad(const char *body, size_t len, const char *what)
{
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct batch *am = batch_new(BATCH_ASSETS_MARKET, 0);
    struct batch *ac = batch_new(BATCH_ASSET_CATEGORIES, 0);
    struct batch *as = batch_new(BATCH_ASSETS_LIST, 0);
    struct batch *cat = batch_new(BATCH_CATEGORIES, 0);
    struct batch *pr = batch_new(BATCH_PRICES, 0);
    struct batch *gl = batch_new(BATCH_GLOBAL_SNAPSHOTS, 0);
    struct batch *all[] = {sn, am, ac, as, cat, pr, gl};
    /* One row already in each batch, and one id in the list. */
    for (size_t i = 0; i < 7; i++)
        assert_int_equal(batch_add_row(all[i]), 0);
    char *first = strdup("first");
    struct strlist ids = {&first, 1};
    struct coingecko_stats st = {0}, zero = {0};
    struct coingecko_markets_out out = {sn, am, ac, &ids, 77};
    const char *pids[] = {"bitcoin"}, *pvs[] = {"usd"};
    struct coingecko_price_req req = {pids, 1, pvs, 1};
    char err[512];

    err[0] = 0;
    assert_int_equal(
        coingecko_parse_markets(body, len, &times, "usd", "cat", &out, &st, err, sizeof(err)),
        -EBADMSG);
    if (!err[0])
        fail_msg("%s: no message", what);
    assert_int_equal(out.ncoins, 77);
    assert_int_equal(coingecko_parse_coins_list(body, len, &times, as, &ids, &st, err, sizeof(err)),
                     -EBADMSG);
    assert_int_equal(coingecko_parse_categories_list(body, len, &times, cat, &st, err, sizeof(err)),
                     -EBADMSG);
    assert_int_equal(
        coingecko_parse_simple_price(body, len, &times, &req, pr, &st, err, sizeof(err)), -EBADMSG);
    assert_int_equal(coingecko_parse_global(body, len, &times, gl, &st, err, sizeof(err)),
                     -EBADMSG);
    for (size_t i = 0; i < 7; i++) {
        assert_int_equal(all[i]->nrows, 1);
        batch_free(all[i]);
    }
    assert_int_equal(ids.n, 1);
    assert_ptr_equal(ids.items, &first);
    assert_memory_equal(&st, &zero, sizeof(st));
    free(first);
}

static void test_bad_bodies(void **state)
{
    (void)state;
    const char *html = "<!DOCTYPE html><html><head><title>502 Bad Gateway</title></head></html>";
    expect_bad(html, strlen(html), "html");
    expect_bad("", 0, "empty");
    expect_bad(coincap_notice, strlen(coincap_notice), "coincap");
    expect_bad("\"just a string\"", 15, "string");
    expect_bad("null", 4, "null");

    size_t len;
    char *e = fixture("error_422_coins_markets_missing_vs_currency.json", &len);
    expect_bad(e, len, "422");
    char err[256];
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct coingecko_markets_out out = {.snapshots = sn};
    assert_int_equal(
        coingecko_parse_markets(e, len, &times, "usd", NULL, &out, NULL, err, sizeof(err)),
        -EBADMSG);
    assert_non_null(strstr(err, "Missing parameter vs_currency"));
    free(e);
    e = fixture("error_429_rate_limit_2022-09.json", &len);
    expect_bad(e, len, "429");
    free(e);
    e = fixture("error_500_ohlc_missing_params.json", &len);
    expect_bad(e, len, "500");
    free(e);

    /* The 2025 page cut short anywhere is not JSON. */
    char *page = fixture(MARKETS_2025, &len);
    size_t cuts[] = {1, 100, len / 2, len - 1};
    for (size_t i = 0; i < 4; i++)
        expect_bad(page, cuts[i], "truncated");
    free(page);
    batch_free(sn);
}

/* Shapes that are JSON but wrong for one endpoint. */
static void test_wrong_shapes(void **state)
{
    (void)state;
    struct batch *g = batch_new(BATCH_GLOBAL_SNAPSHOTS, 0);
    struct batch *pr = batch_new(BATCH_PRICES, 0);
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct coingecko_markets_out out = {.snapshots = sn};
    const char *pids[] = {"bitcoin"}, *pvs[] = {"usd"};
    struct coingecko_price_req req = {pids, 1, pvs, 1};
    char err[256];
    const char *arr = "[{\"id\":\"bitcoin\"}]";
    assert_int_equal(coingecko_parse_global(arr, strlen(arr), &times, g, NULL, err, sizeof(err)),
                     -EBADMSG);
    assert_int_equal(
        coingecko_parse_simple_price(arr, strlen(arr), &times, &req, pr, NULL, err, sizeof(err)),
        -EBADMSG);
    const char *obj = "{\"bitcoin\":{\"usd\":1}}";
    assert_int_equal(coingecko_parse_markets(obj, strlen(obj), &times, "usd", NULL, &out, NULL, err,
                                             sizeof(err)),
                     -EBADMSG);
    assert_non_null(strstr(err, "expected an array"));
    const char *nodata = "{\"data\":[]}";
    assert_int_equal(
        coingecko_parse_global(nodata, strlen(nodata), &times, g, NULL, err, sizeof(err)),
        -EBADMSG);
    assert_int_equal(g->nrows + pr->nrows + sn->nrows, 0);

    /* Arguments: wrong batch spec, missing batches, silly currencies. */
    assert_int_equal(coingecko_parse_global("{\"data\":{}}", 11, &times, pr, NULL, NULL, 0),
                     -EINVAL);
    assert_int_equal(
        coingecko_parse_markets(arr, strlen(arr), &times, "usd", "cat", &out, NULL, NULL, 0),
        -EINVAL); /* category without an asset_categories batch */
    assert_int_equal(
        coingecko_parse_markets(arr, strlen(arr), &times, "", NULL, &out, NULL, NULL, 0), -EINVAL);
    assert_int_equal(sn->nrows, 0);
    batch_free(g);
    batch_free(pr);
    batch_free(sn);
}

/* --- wrong types inside rows ------------------------------------------------------------ */

static void test_markets_wrong_types(void **state)
{
    (void)state;
    const char *body =
        "[{\"id\":\"ok\",\"symbol\":\"\",\"name\":null,\"current_price\":\"1.5\","
        "\"market_cap_rank\":1.5,\"market_cap\":true,\"total_volume\":[1],"
        "\"ath_date\":\"yesterday\",\"atl_date\":12,\"roi\":[1,2],"
        "\"last_updated\":\"2025-02-09 17:44:04Z\",\"high_24h\":-0.0,\"image\":7},"
        "{\"id\":\"rank\",\"market_cap_rank\":-1,\"roi\":\"none\",\"last_updated\":null},"
        "{\"id\":\"big\",\"market_cap_rank\":4294967296,\"last_updated\":42},"
        "{\"id\":\"max\",\"market_cap_rank\":4294967295,"
        "\"last_updated\":\"2025-02-09T17:44:04.1239Z\"},"
        "{\"symbol\":\"noid\"},{\"id\":\"\"},{\"id\":5},\"bitcoin\",null,[],"
        "{\"id\":\"dup\"},{\"id\":\"dup\"}]";
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct batch *am = batch_new(BATCH_ASSETS_MARKET, 0);
    struct coingecko_markets_out out = {.snapshots = sn, .assets = am};
    struct coingecko_stats st = {0};
    assert_int_equal(
        coingecko_parse_markets(body, strlen(body), &times, "usd", NULL, &out, &st, NULL, 0), 0);
    assert_int_equal(out.ncoins, 12);
    assert_int_equal(sn->nrows, 6);
    assert_int_equal(st.items, 12);
    assert_int_equal(st.skipped, 6);

    check_str(sn, 0, "asset_id", "ok");
    check_null(sn, 0, "price");
    check_null(sn, 0, "market_cap_rank");
    check_null(sn, 0, "market_cap");
    check_null(sn, 0, "total_volume");
    check_null(sn, 0, "ath_date");
    check_null(sn, 0, "atl_date");
    check_null(sn, 0, "roi");
    check_dbl(sn, 0, "high_24h", -0.0);
    /* A space instead of T is accepted by util_parse_iso8601. */
    check_time(sn, 0, "snapshot_at", 1739123044000LL);
    check_str(am, 0, "symbol", ""); /* empty symbol kept */
    check_null(am, 0, "name");
    check_null(am, 0, "image_url");
    check_null(am, 0, "market_cap_rank");

    check_null(sn, 1, "market_cap_rank");
    check_null(sn, 1, "roi");
    check_time(sn, 1, "snapshot_at", FETCHED_MS);
    check_null(sn, 2, "market_cap_rank");
    check_time(sn, 2, "snapshot_at", FETCHED_MS);
    check_int(sn, 3, "market_cap_rank", 4294967295LL);
    check_int(am, 3, "market_cap_rank", 4294967295LL);
    check_time(sn, 3, "snapshot_at", 1739123044123LL);
    check_str(sn, 4, "asset_id", "dup");
    check_str(sn, 5, "asset_id", "dup");
    check_time(sn, 4, "snapshot_at", FETCHED_MS);

    /* ok: price, rank, market_cap, total_volume, atl_date, roi, image = 7; rank: rank -1,
     * roi "none" = 2; big: rank, last_updated 42 = 2. "yesterday" is a bad time. */
    assert_int_equal(st.field_type_errors, 11);
    assert_int_equal(st.bad_times, 1);
    assert_int_equal(st.missing_last_updated, 4); /* rank, big, dup, dup */
    batch_free(sn);
    batch_free(am);
}

/* Numbers at and beyond the edges of a double. */
static void test_big_numbers(void **state)
{
    (void)state;
    const char *body =
        "[{\"id\":\"u256\",\"total_supply\":"
        "115792089237316195423570985008687907853269984665640564039457584007913129639935,"
        "\"max_supply\":1e400,\"circulating_supply\":-1E+999,\"atl\":4.9e-324,\"ath\":1e-400,"
        "\"roi\":{\"times\":1e999,\"n\":1},\"last_updated\":\"2025-02-09T17:44:04Z\"}]";
    struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 0);
    struct coingecko_markets_out out = {.snapshots = sn};
    struct coingecko_stats st = {0};
    char err[256] = "";
    assert_int_equal(coingecko_parse_markets(body, strlen(body), &times, "usd", NULL, &out, &st,
                                             err, sizeof(err)),
                     0);
    assert_int_equal(sn->nrows, 1);
    /* Python: float(115792089...935) == 1.157920892373162e+77 */
    check_dbl(sn, 0, "total_supply", 1.157920892373162e+77);
    check_null(sn, 0, "max_supply");
    check_null(sn, 0, "circulating_supply");
    check_dbl(sn, 0, "atl", 4.9e-324);
    check_dbl(sn, 0, "ath", 0.0);
    check_json(sn, 0, "roi", "{\"times\":null,\"n\":1}");
    assert_int_equal(st.overflow_numbers, 3);
    assert_int_equal(st.field_type_errors, 0);

    /* An overflowing number inside invalid JSON does not make it valid. */
    const char *bad[] = {"[0-1e400]", "[{\"id\":\"x\",\"a\":1e400 1}]", "[1e400"};
    for (size_t i = 0; i < 3; i++)
        assert_int_equal(coingecko_parse_markets(bad[i], strlen(bad[i]), &times, "usd", NULL, &out,
                                                 &st, NULL, 0),
                         -EBADMSG);
    /* More than a few overflows: the page is refused rather than re-parsed many times. */
    char many[512] = "[";
    for (int i = 0; i < 20; i++)
        strcat(many, i ? ",1e999" : "1e999");
    strcat(many, "]");
    assert_int_equal(
        coingecko_parse_markets(many, strlen(many), &times, "usd", NULL, &out, &st, NULL, 0),
        -EBADMSG);
    assert_int_equal(sn->nrows, 1);
    batch_free(sn);
}

/* NUL bytes (JSON_ALLOW_NUL), escapes in JSON text, strings kept byte-exact. */
static void test_strings_and_json_text(void **state)
{
    (void)state;
    const char *body =
        "[{\"id\":\"a\\u0000b\",\"symbol\":\"x\"},"
        "{\"id\":\"nul\",\"symbol\":\"s\\u0000t\",\"name\":\"\\ud83e\\udd21 \\\"q\\\"\","
        "\"platforms\":{\"k\\\"\\\\\":\"\\n\\t\\u0001\\u0000/\",\"e\":\"\","
        "\"n\":[1,2.5,-0.0,true,false,null,{}],\"u\":\"\xc3\xa9\"}}]";
    struct batch *as = batch_new(BATCH_ASSETS_LIST, 0);
    struct strlist ids = {0};
    struct coingecko_stats st = {0};
    assert_int_equal(coingecko_parse_coins_list(body, strlen(body), &times, as, &ids, &st, NULL, 0),
                     0);
    assert_int_equal(as->nrows, 1); /* an id with a NUL byte is not usable */
    assert_int_equal(st.skipped, 1);
    check_str(as, 0, "id", "nul");
    check_bytes(as, 0, "symbol", VAL_STR, "s\0t", 3);
    check_str(as, 0, "name", "\xf0\x9f\xa4\xa1 \"q\"");
    check_json(as, 0, "platforms",
               "{\"k\\\"\\\\\":\"\\n\\t\\u0001\\u0000/\",\"e\":\"\","
               "\"n\":[1,2.5,-0,true,false,null,{}],\"u\":\"\xc3\xa9\"}");
    assert_int_equal(ids.n, 1);
    assert_string_equal(ids.items[0], "nul");
    coingecko_strlist_free(&ids);
    batch_free(as);
}

/* Out of memory at every allocation in turn: each failure returns an error (-ENOMEM, or
 * -EBADMSG when jansson itself reports the failure as a syntax error) and leaves the batches,
 * the id list and the stats exactly as they were (the all-or-nothing rule). */
static void test_out_of_memory_rolls_back(void **state)
{
    (void)state;
#if ALLOCFAIL
    size_t len;
    char *body = fixture("coins_markets_ids-bitcoin-ethereum_eth_2021-05.json", &len);
    /* Twice: as the daemon parses (elements in jrows' arena, which one malloc provides), then
     * with every jansson allocation a malloc of its own, so that each can fail. */
    for (int arena = 1; arena >= 0; arena--) {
        jrows_element_arena(arena);
        long failures = 0, enomem = 0;
        for (long n = 0;; n++) {
            long live = allocfail_live;
            struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
            struct batch *am = batch_new(BATCH_ASSETS_MARKET, 1);
            struct batch *ac = batch_new(BATCH_ASSET_CATEGORIES, 1);
            assert_int_equal(batch_add_row(sn), 0);
            assert_int_equal(batch_add_row(am), 0);
            assert_int_equal(batch_add_row(ac), 0);
            size_t sn_bytes = sn->bytes;
            char *first = strdup("first");
            char **items = malloc(sizeof(*items));
            items[0] = first;
            struct strlist ids = {items, 1};
            struct coingecko_stats st = {0}, zero = {0};
            struct coingecko_markets_out out = {sn, am, ac, &ids, 0};

            allocfail_countdown = n;
            int rc =
                coingecko_parse_markets(body, len, &times, "eth", "layer-1", &out, &st, NULL, 0);
            int injected = allocfail_countdown < 0;
            allocfail_countdown = -1;

            if (rc == 0) {
                /* Success despite a failed allocation: jansson drops a byte of a long token when
                 * growing its lexer buffer fails (it ignores that error), so no values are checked
                 * then. */
                assert_int_equal(sn->nrows, 3);
                assert_int_equal(ids.n, 3);
            } else {
                assert_true(injected);
                /* jansson reports some of its own allocation failures as syntax errors. */
                assert_true(rc == -ENOMEM || rc == -EBADMSG);
                enomem += rc == -ENOMEM;
                assert_int_equal(sn->nrows, 1);
                assert_int_equal(am->nrows, 1);
                assert_int_equal(ac->nrows, 1);
                assert_int_equal(sn->bytes, sn_bytes);
                assert_int_equal(ids.n, 1);
                assert_ptr_equal(ids.items[0], first);
                assert_memory_equal(&st, &zero, sizeof(st));
                failures++;
            }
            coingecko_strlist_free(&ids);
            batch_free(sn);
            batch_free(am);
            batch_free(ac);
            if (allocfail_live != live)
                fail_msg("allocation %ld failed: %ld blocks leaked", n, allocfail_live - live);
            if (rc == 0 && !injected)
                break;
        }
        if (arena) {
            /* The arena itself, the roi text and the id copies. */
            assert_true(failures > 3);
        } else {
            /* jansson's parse, the batches' arenas, the roi text and the id copies. */
            assert_true(failures > 20);
            assert_true(enomem > 10);
        }
    }
    jrows_element_arena(true);
    free(body);
#else
    skip();
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_markets_2025_page),
        cmocka_unit_test(test_markets_2022_page),
        cmocka_unit_test(test_markets_category_and_append),
        cmocka_unit_test(test_markets_small_2021),
        cmocka_unit_test(test_coins_list_2025_unicode),
        cmocka_unit_test(test_coins_list_2024_platforms),
        cmocka_unit_test(test_coins_list_2021_2022),
        cmocka_unit_test(test_categories_list),
        cmocka_unit_test(test_simple_price_fixtures),
        cmocka_unit_test(test_simple_price_full),
        cmocka_unit_test(test_global_2021_2025),
        cmocka_unit_test(test_global_odd),
        cmocka_unit_test(test_bad_bodies),
        cmocka_unit_test(test_wrong_shapes),
        cmocka_unit_test(test_markets_wrong_types),
        cmocka_unit_test(test_big_numbers),
        cmocka_unit_test(test_strings_and_json_text),
        cmocka_unit_test(test_out_of_memory_rolls_back),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
