/*
 * alias: which canonical asset (a CoinGecko id, assets.id) another source's key stands for.
 *
 * Every source but CoinGecko names assets its own way: Coinbase by a ticker ("BTC"), CoinCap by
 * a slug of its own ("bitcoin", "binance-coin"). Their rows are stored under the canonical id,
 * so a key must be mapped first, and the mapping must never guess: symbols are not unique
 * (CoinGecko lists many coins whose symbol is "btc"). The rules, in order; the first that
 * decides wins:
 *
 *   1. override:          [aliases] SOURCE.KEY = ID in the config.
 *   2. contract:          the key's token contract addresses (CoinCap's `tokens`) against
 *                         CoinGecko's `platforms`: exactly one asset holds one of them. Several
 *                         assets sharing the key's addresses make it ambiguous (no guess).
 *   3. symbol_name:       exactly one asset has the key's symbol and name (both compared
 *                         without regard to ASCII case).
 *   4. symbol_market_cap: of the assets with the key's symbol, one clearly dominates: its
 *                         market cap is known and at least ALIAS_DOMINANCE times the next
 *                         one's (an unknown market cap counts as 0).
 *   Otherwise the key is not mapped: `ambiguous` when assets share its symbol (they are listed
 *   as candidates), `unknown` when none has it. Its rows are not stored; the key is written to
 *   asset_aliases with a NULL asset_id, which the view unmapped_asset_keys lists.
 *
 * The universe (the canonical assets) is read from the database by each job that maps keys,
 * with ALIAS_UNIVERSE_SQL through run_read, and built with alias_universe_from_rows. Market
 * caps are CoinGecko's in usd from the last two days of market_snapshots.
 *
 * Thread: any; a universe is read-only once built and touched by one thread at a time.
 */
#ifndef COINGEST_ALIAS_H
#define COINGEST_ALIAS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

struct store_rows;

/* How much larger the largest market cap among same-symbol assets must be than the next. */
#define ALIAS_DOMINANCE 10.0

/* The read that gives alias_universe_from_rows its rows: id, symbol, name, platforms,
 * market_cap. One parameter: the source whose usd market caps rank same-symbol candidates (the
 * source of the canonical ids; the caller names it). */
#define ALIAS_UNIVERSE_SQL                                                                         \
    "SELECT a.id, a.symbol, a.name, a.platforms, m.market_cap FROM assets a LEFT JOIN"             \
    " (SELECT asset_id, MAX(market_cap) AS market_cap FROM market_snapshots"                       \
    " WHERE source = ? AND vs_currency = 'usd'"                                                    \
    " AND snapshot_at >= UTC_TIMESTAMP() - INTERVAL 2 DAY GROUP BY asset_id) m"                    \
    " ON m.asset_id = a.id WHERE a.delisted_at IS NULL"

/* At most this many rows are read (the CoinGecko list holds about 17,000). */
#define ALIAS_UNIVERSE_MAX_ROWS 1000000

enum alias_method {
    ALIAS_OVERRIDE,
    ALIAS_CONTRACT,
    ALIAS_SYMBOL_NAME,
    ALIAS_SYMBOL_MARKET_CAP,
    ALIAS_AMBIGUOUS, /* not mapped: several candidates */
    ALIAS_UNKNOWN,   /* not mapped: no candidate */
};

/* "override", "contract", "symbol_name", "symbol_market_cap", "ambiguous", "unknown". */
const char *alias_method_name(enum alias_method m);

struct alias_universe;

/* An empty universe; NULL on OOM. Free with alias_universe_free (NULL is a no-op). */
struct alias_universe *alias_universe_new(void);
void alias_universe_free(struct alias_universe *u);

/* Adds an asset (strings are copied; symbol, name and platforms may be NULL; platforms is
 * CoinGecko's JSON object of platform -> address; market_cap <= 0 or NaN: unknown). Must be
 * followed by alias_universe_seal before mapping. 0 or -ENOMEM. */
int alias_universe_add(struct alias_universe *u, const char *id, const char *symbol,
                       const char *name, const char *platforms, double market_cap);

/* Builds the lookup indexes. 0 or -ENOMEM. */
int alias_universe_seal(struct alias_universe *u);

/* A sealed universe from the rows of ALIAS_UNIVERSE_SQL; NULL on OOM or rows of another
 * shape. */
struct alias_universe *alias_universe_from_rows(const struct store_rows *rows);

size_t alias_universe_size(const struct alias_universe *u);

struct run;

/* Called with the universe alias_read_universe read (the caller owns it), or NULL when there
 * is no database, the read failed (warned) or memory ran out: then only [aliases] overrides
 * map, and alias_map_keys is told the universe is not known. */
typedef void (*alias_universe_cb)(struct run *run, struct alias_universe *u);

/* Reads the universe for a run's job: ALIAS_UNIVERSE_SQL through run_read, same-symbol
 * candidates ranked by `canonical_source`'s usd market caps. done runs once, on the loop
 * thread, possibly before this returns (a store without a database). 0, or run_read's error
 * (then done is not called). */
int alias_read_universe(struct run *run, const char *canonical_source, alias_universe_cb done);

/* What a source knows of one of its keys. */
struct alias_key {
    const char *key;              /* the source's key: "BTC", "bitcoin" */
    const char *symbol;           /* may be NULL */
    const char *name;             /* may be NULL */
    const char *const *addresses; /* token contract addresses, may be NULL */
    size_t naddresses;
    const char *override_id; /* the [aliases] entry for the key, or NULL */
};

struct alias_result {
    enum alias_method method;
    const char *asset_id;  /* the canonical id (the universe's or the override's string),
                              NULL when not mapped */
    char candidates[1024]; /* ambiguous: the candidates' ids, comma-separated (cut at a
                              whole id, "..." when there are more) */
};

/* Maps one key by the rules above. `u` may be NULL (only overrides map then). Always fills
 * `out`. */
void alias_map(const struct alias_universe *u, const struct alias_key *k, struct alias_result *out);

/* Appends the asset_aliases row for a mapped or unmapped key to `b` (BATCH_ASSET_ALIASES).
 * 0, -EINVAL (another spec) or -ENOMEM. */
int alias_add_row(struct batch *b, const char *source, const struct alias_key *k,
                  const struct alias_result *r, int64_t now_ms);

/*
 * A mapping pass over a source's keys: maps keys[i] into res[i], appends to `rows`
 * (BATCH_ASSET_ALIASES, may be NULL) a row per mapped key and, when `universe_known`, per
 * unmapped key (a universe that could not be read must not overwrite good mappings with
 * NULLs), and names the unmapped keys in one warn line and in the counter
 * coingest_unmapped_keys_total. Returns how many keys are not mapped.
 */
size_t alias_map_keys(const struct alias_universe *u, bool universe_known, const char *source,
                      const struct alias_key *keys, size_t n, struct alias_result *res,
                      struct batch *rows, int64_t now_ms);

#endif
