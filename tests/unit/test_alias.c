/*
 * test_alias: mapping other sources' keys onto canonical asset ids, rule by rule, on a
 * universe with duplicate symbols: overrides win, contract addresses decide (0x case folded),
 * symbol + name decides when exactly one asset has both, symbol alone only with a market cap
 * ten times the next one's; anything else is ambiguous (with its candidates) or unknown, never
 * guessed. The asset_aliases row says which.
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/alias.h"
#include "coingest/runner.h"

static struct alias_universe *universe(void)
{
    struct alias_universe *u = alias_universe_new();
    assert_non_null(u);
    /* id, symbol, name, platforms, market cap */
    assert_int_equal(alias_universe_add(u, "bitcoin", "btc", "Bitcoin", "{}", 1.3e12), 0);
    assert_int_equal(alias_universe_add(u, "batcat", "btc", "BatCat", NULL, 2e5), 0);
    assert_int_equal(alias_universe_add(u, "bitcoin-avalanche-bridged-btc-b", "btc.b",
                                        "Bitcoin Avalanche Bridged (BTC.b)", NULL, 5e8),
                     0);
    assert_int_equal(
        alias_universe_add(u, "tether", "usdt", "Tether",
                           "{\"ethereum\":\"0xdAC17F958D2ee523a2206206994597C13D831ec7\","
                           "\"tron\":\"TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t\"}",
                           1.4e11),
        0);
    assert_int_equal(
        alias_universe_add(u, "bridged-tether", "usdt", "Bridged Tether",
                           "{\"ethereum\":\"0x1111111111111111111111111111111111111111\"}", 3e10),
        0);
    /* Two coins share one symbol and similar caps: never guessed. */
    assert_int_equal(alias_universe_add(u, "dup-one", "dup", "Dup One", NULL, 5e6), 0);
    assert_int_equal(alias_universe_add(u, "dup-two", "dup", "Dup Two", NULL, 4e6), 0);
    /* Same symbol and the same name twice. */
    assert_int_equal(alias_universe_add(u, "same-a", "same", "Same", NULL, NAN), 0);
    assert_int_equal(alias_universe_add(u, "same-b", "same", "Same", NULL, 0), 0);
    /* Two assets claiming one contract. */
    assert_int_equal(
        alias_universe_add(u, "wrap-a", "wra", "Wrap A",
                           "{\"ethereum\":\"0xabc0000000000000000000000000000000000001\"}", 1e6),
        0);
    assert_int_equal(alias_universe_add(u, "wrap-b", "wrb", "Wrap B",
                                        "{\"base\":\"0xABC0000000000000000000000000000000000001\"}",
                                        1e6),
                     0);
    assert_int_equal(alias_universe_seal(u), 0);
    return u;
}

static struct alias_result map(const struct alias_universe *u, const char *symbol, const char *name,
                               const char *addr, const char *override)
{
    const char *addrs[] = {addr};
    struct alias_key k = {.key = symbol,
                          .symbol = symbol,
                          .name = name,
                          .addresses = addr ? addrs : NULL,
                          .naddresses = addr ? 1 : 0,
                          .override_id = override};
    struct alias_result r;
    alias_map(u, &k, &r);
    return r;
}

static void expect(struct alias_result r, enum alias_method m, const char *id)
{
    assert_string_equal(alias_method_name(r.method), alias_method_name(m));
    if (id)
        assert_string_equal(r.asset_id, id);
    else
        assert_null(r.asset_id);
}

static void test_rules(void **state)
{
    (void)state;
    struct alias_universe *u = universe();
    assert_int_equal(alias_universe_size(u), 11);

    /* 1. an override wins over everything, even without a universe */
    expect(map(u, "BTC", "Bitcoin", NULL, "batcat"), ALIAS_OVERRIDE, "batcat");
    expect(map(NULL, "BTC", NULL, NULL, "bitcoin"), ALIAS_OVERRIDE, "bitcoin");
    expect(map(NULL, "BTC", NULL, NULL, NULL), ALIAS_UNKNOWN, NULL);

    /* 2. contract addresses, hex case folded */
    expect(map(u, "USDT", "Tether USDt", "0xdac17f958d2ee523a2206206994597c13d831ec7", NULL),
           ALIAS_CONTRACT, "tether");
    expect(map(u, "USDT", NULL, "TR7NHqjeKQxGTCi8q8ZY4pL8otSzgjLj6t", NULL), ALIAS_CONTRACT,
           "tether");
    /* base58 is case-sensitive: no match, and then the symbol decides */
    expect(map(u, "USDT", NULL, "tr7nhqjekqxgtci8q8zy4pl8otszgjlj6t", NULL), ALIAS_AMBIGUOUS, NULL);
    struct alias_result r = map(u, "WRX", NULL, "0xabc0000000000000000000000000000000000001", NULL);
    expect(r, ALIAS_AMBIGUOUS, NULL);
    assert_string_equal(r.candidates, "wrap-a,wrap-b");

    /* 3. symbol and name, ASCII case folded */
    expect(map(u, "BTC", "bitcoin", NULL, NULL), ALIAS_SYMBOL_NAME, "bitcoin");
    expect(map(u, "USDT", "Bridged Tether", NULL, NULL), ALIAS_SYMBOL_NAME, "bridged-tether");

    /* 4. symbol alone: bitcoin's cap is 6.5 million times BatCat's */
    expect(map(u, "BTC", NULL, NULL, NULL), ALIAS_SYMBOL_MARKET_CAP, "bitcoin");
    expect(map(u, "btc", "Not A Name", NULL, NULL), ALIAS_SYMBOL_MARKET_CAP, "bitcoin");
    /* tether is only 4.7 times bridged-tether: ambiguous, both listed */
    r = map(u, "USDT", NULL, NULL, NULL);
    expect(r, ALIAS_AMBIGUOUS, NULL);
    assert_string_equal(r.candidates, "bridged-tether,tether");
    r = map(u, "DUP", NULL, NULL, NULL);
    expect(r, ALIAS_AMBIGUOUS, NULL);
    assert_string_equal(r.candidates, "dup-one,dup-two");
    /* same symbol and name twice, no caps */
    expect(map(u, "SAME", "Same", NULL, NULL), ALIAS_AMBIGUOUS, NULL);
    /* no such symbol */
    expect(map(u, "ZZZ", "Zed", NULL, NULL), ALIAS_UNKNOWN, NULL);
    expect(map(u, "BTC.B", NULL, NULL, NULL), ALIAS_SYMBOL_MARKET_CAP,
           "bitcoin-avalanche-bridged-btc-b");
    alias_universe_free(u);
}

static void test_rows(void **state)
{
    (void)state;
    struct alias_universe *u = universe();
    struct batch *b = batch_new(BATCH_ASSET_ALIASES, 4);
    assert_non_null(b);
    struct alias_key k = {.key = "DUP", .symbol = "DUP"};
    struct alias_result r;
    alias_map(u, &k, &r);
    assert_int_equal(alias_add_row(b, "coinbase", &k, &r, 1000), 0);
    k = (struct alias_key){.key = "BTC", .symbol = "BTC", .name = "Bitcoin"};
    alias_map(u, &k, &r);
    assert_int_equal(alias_add_row(b, "coinbase", &k, &r, 1000), 0);
    assert_int_equal(b->nrows, 2);
    const struct val *v = batch_val(b, 0, BATCH_ASSET_ALIASES_COL_ASSET_ID);
    assert_int_equal(v->type, VAL_NULL);
    v = batch_val(b, 0, BATCH_ASSET_ALIASES_COL_METHOD);
    assert_memory_equal(v->u.s, "ambiguous", v->len);
    v = batch_val(b, 0, BATCH_ASSET_ALIASES_COL_CANDIDATES);
    assert_memory_equal(v->u.s, "dup-one,dup-two", v->len);
    v = batch_val(b, 1, BATCH_ASSET_ALIASES_COL_ASSET_ID);
    assert_memory_equal(v->u.s, "bitcoin", v->len);
    struct batch *wrong = batch_new(BATCH_CANDLES, 1);
    assert_int_equal(alias_add_row(wrong, "coinbase", &k, &r, 1000), -EINVAL);
    batch_free(wrong);
    batch_free(b);
    alias_universe_free(u);
}

/* The rows of ALIAS_UNIVERSE_SQL as the store hands them over, NULL cells included. */
static void test_from_rows(void **state)
{
    (void)state;
    char *cells[] = {
        "bitcoin", "btc", "Bitcoin", NULL, "1300000000000",
        "batcat",  "btc", "BatCat",  NULL, NULL,
        "x",       NULL,  NULL,      "{",  NULL,
    };
    char *names[] = {"id", "symbol", "name", "platforms", "market_cap"};
    struct store_rows rows = {.nrows = 3, .ncols = 5, .names = names, .cells = cells};
    struct alias_universe *u = alias_universe_from_rows(&rows);
    assert_non_null(u);
    assert_int_equal(alias_universe_size(u), 3);
    expect(map(u, "BTC", NULL, NULL, NULL), ALIAS_SYMBOL_MARKET_CAP, "bitcoin");
    alias_universe_free(u);
    rows.ncols = 4;
    assert_null(alias_universe_from_rows(&rows));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rules),
        cmocka_unit_test(test_rows),
        cmocka_unit_test(test_from_rows),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
