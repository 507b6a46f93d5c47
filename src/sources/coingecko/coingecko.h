/*
 * coingecko: parsers that turn complete CoinGecko response bodies into typed rows.
 *
 * One function per endpoint. Each takes the whole body (as the fetch engine hands it to its
 * parse callback), parses it with jansson (through include/coingest/jrows.h, the JSON -> rows
 * library every source shares), and appends rows to batches the caller owns
 * (include/coingest/batch.h; the columns are those of sql/001_initial.sql). docs/parsing.md
 * lists, endpoint by endpoint, which JSON field fills which column.
 *
 * What the parsers promise, for every endpoint:
 * - Numbers are stored as the double nearest to their JSON text, whether the API wrote them
 *   as integers, decimals or with exponents. Integers too big for 64 bits (uint256 supplies)
 *   become doubles; a number beyond the range of a double (1e400) is stored as NULL and
 *   counted in `overflow_numbers`, it does not fail the body.
 * - Strings are stored byte-exact after JSON unescaping (\u escapes and surrogate pairs become
 *   UTF-8); empty strings stay empty strings, ids with spaces stay as they are.
 * - `null` or a missing key gives a NULL column (a missing key is counted in missing_fields).
 *   A field of the wrong JSON type (a string where a number belongs, a non-integral rank, a
 *   time that does not parse) gives a NULL column and is counted; the row and the rest of the
 *   body are kept.
 * - An element without a usable id (not an object, id missing, not a string, empty, or holding
 *   a NUL byte) is skipped and counted in `skipped`.
 * - A body that is not JSON, or whose top level is not the endpoint's shape (an object where
 *   an array belongs, an error object, CoinCap's deprecation notice), returns -EBADMSG with a
 *   message in `err`; the fetch engine then retries it.
 * - All or nothing: when a call returns an error, the output batches, id lists and stats are
 *   exactly as they were before the call. Out of memory gives -ENOMEM, or -EBADMSG when jansson
 *   itself reports the failure as a syntax error. On success rows are appended after any rows the
 *   batches already hold, so one batch can collect several pages.
 *
 * Times: `run_ms` is the time of the job run (listed_at, first_seen_at, updated_at,
 * last_seen_at); `fetched_ms` is when the body arrived (fetched_at, and the stand-in for a
 * quote's own time when the API did not send one). Both are ms since the epoch, passed in so
 * tests are deterministic.
 *
 * Thread: any. A call touches only its arguments, so parsers may run on libuv's work queue.
 */
#ifndef COINGEST_COINGECKO_H
#define COINGEST_COINGECKO_H

#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"
#include "coingest/util.h" /* struct strlist */

/* The source column's value for every row these parsers make. */
#define COINGECKO_SOURCE "coingecko"

struct coingecko_times {
    int64_t run_ms;     /* the job run: listed_at, first_seen_at, updated_at, last_seen_at */
    int64_t fetched_ms; /* the body's arrival: fetched_at and fallback quote times */
};

/* Counters a parse adds to (the caller zeroes them, then may sum several calls). */
struct coingecko_stats {
    uint64_t items;                /* elements of the top-level array, or coins of the object */
    uint64_t rows;                 /* rows appended, all output batches together */
    uint64_t skipped;              /* elements skipped: not an object, or no usable id */
    uint64_t field_type_errors;    /* fields of the wrong type or unusable value, stored NULL */
    uint64_t bad_times;            /* time fields (ISO-8601 or unix) that did not parse */
    uint64_t missing_last_updated; /* quote times that fell back to fetched_ms */
    uint64_t missing_coins;        /* simple/price: requested ids absent, or answered {} */
    uint64_t missing_currencies;   /* simple/price: (coin, currency) pairs without a price key */
    uint64_t overflow_numbers;     /* numbers beyond the range of a double, stored NULL */
    uint64_t missing_fields;       /* mapped keys absent from an element (not null), stored NULL;
                                      information, not an error */
};

/*
 * /coins/list (with or without include_platform=true): one BATCH_ASSETS_LIST row per coin
 * in `assets` (id, symbol, name, platforms as compact JSON text or NULL when absent,
 * listed_at = first_seen_at = updated_at = run_ms).
 * `ids` (may be NULL) gets a malloc'd NUL-terminated copy of each stored id appended, in body
 * order; free them with coingecko_strlist_free(). The job needs them for the universe and to
 * tell which assets left the list.
 * Returns 0, -EBADMSG (not a JSON array; message in err), -EINVAL (a batch of the wrong spec)
 * or -ENOMEM.
 */
int coingecko_parse_coins_list(const char *body, size_t len, const struct coingecko_times *t,
                               struct batch *assets, struct strlist *ids,
                               struct coingecko_stats *st, char *err, size_t errlen);

/*
 * /coins/categories/list ([{category_id, name}]): one BATCH_CATEGORIES row per category
 * (id, name, updated_at = run_ms). Returns as coingecko_parse_coins_list.
 */
int coingecko_parse_categories_list(const char *body, size_t len, const struct coingecko_times *t,
                                    struct batch *categories, struct coingecko_stats *st, char *err,
                                    size_t errlen);

/* Where coingecko_parse_markets puts what it finds. Batches may be NULL when not wanted. */
struct coingecko_markets_out {
    struct batch *snapshots;        /* BATCH_MARKET_SNAPSHOTS: one row per coin */
    struct batch *assets;           /* BATCH_ASSETS_MARKET: one row per coin */
    struct batch *asset_categories; /* BATCH_ASSET_CATEGORIES: one row per coin, only filled
                                       when a category is given */
    struct strlist *ids;            /* ids stored, appended (malloc'd copies) */
    size_t ncoins;                  /* set: elements in the page array, skipped ones included;
                                       fewer than per_page means the last page */
};

/*
 * /coins/markets?vs_currency=...: one BATCH_MARKET_SNAPSHOTS row per coin (snapshot_at = the
 * coin's last_updated, or fetched_ms when that is missing or bad, counted in
 * missing_last_updated), one BATCH_ASSETS_MARKET row (id, symbol, name, market_cap_rank,
 * image_url, first_seen_at = updated_at = run_ms) and, when `category` is not NULL (the page
 * was fetched with category=...), one BATCH_ASSET_CATEGORIES row (category, id, run_ms,
 * run_ms). `vs_currency` is stored lower-cased. out->ncoins is set on success.
 * Returns 0, -EBADMSG (not a JSON array), -EINVAL (a batch of the wrong spec, no snapshots
 * batch, or a category without an asset_categories batch) or -ENOMEM.
 */
int coingecko_parse_markets(const char *body, size_t len, const struct coingecko_times *t,
                            const char *vs_currency, const char *category,
                            struct coingecko_markets_out *out, struct coingecko_stats *st,
                            char *err, size_t errlen);

/* What a /simple/price request asked for: the ids and vs currencies of its query. */
struct coingecko_price_req {
    const char *const *ids;
    size_t nids;
    const char *const *vs_currencies;
    size_t nvs;
};

/*
 * /simple/price?ids=..&vs_currencies=..&include_market_cap=true&include_24hr_vol=true
 * &include_24hr_change=true&include_last_updated_at=true: for each coin of the answer and each
 * requested currency c the coin has a key c for, one BATCH_PRICES row (price = c,
 * market_cap = c_market_cap, volume_24h = c_24h_vol, change_24h_pct = c_24h_change,
 * source_updated_at = last_updated_at (unix seconds; fetched_ms when missing, counted),
 * fetched_at = fetched_ms). Coins appear in body order, currencies in request order.
 * A requested id that is absent or answered {} counts in missing_coins; a coin without a
 * requested currency counts in missing_currencies; neither is an error. A coin in the answer
 * that was not requested is stored all the same.
 * Returns 0, -EBADMSG (not a JSON object), -EINVAL (wrong batch spec) or -ENOMEM.
 */
int coingecko_parse_simple_price(const char *body, size_t len, const struct coingecko_times *t,
                                 const struct coingecko_price_req *req, struct batch *prices,
                                 struct coingecko_stats *st, char *err, size_t errlen);

/*
 * /global: one BATCH_GLOBAL_SNAPSHOTS row (snapshot_at = data.updated_at, unix seconds, or
 * fetched_ms when missing, counted; total_market_cap / total_volume / market_cap_percentage
 * also kept whole as compact JSON text).
 * Returns 0, -EBADMSG (not an object with a `data` object), -EINVAL or -ENOMEM.
 */
int coingecko_parse_global(const char *body, size_t len, const struct coingecko_times *t,
                           struct batch *global, struct coingecko_stats *st, char *err,
                           size_t errlen);

/*
 * /simple/supported_vs_currencies (["btc", "eth", ..., "usd", ...]): the currency codes
 * (lower-case letters and digits, at most 16 bytes; anything else is skipped), sorted and
 * unique, replace *codes. Returns 0, -EBADMSG (not a JSON array; message in err) or -ENOMEM
 * (codes untouched on error).
 */
int coingecko_parse_supported_vs(const char *body, size_t len, struct strlist *codes, char *err,
                                 size_t errlen);

/* Frees the strings of an id list filled by these parsers and empties it; NULL is a no-op. */
void coingecko_strlist_free(struct strlist *l);

/* ---- the source (source.c) and its jobs (jobs.c) ------------------------------------------ */

struct config;

/* CoinGecko's error bodies: {"error": "..."}, {"status": {"error_code", "error_message"}}
 * (also nested under "error"), or the generic shapes. Contract as source_def.error_message. */
int coingecko_error_message(const char *body, size_t len, char *buf, size_t cap);

/* GET /key (pro plan): the account's rate limit, monthly credits and the month's calls.
 * Contract as source_def.parse_account. */
struct account_info;
int coingecko_parse_account(const char *body, size_t len, struct account_info *out);

/* The jobs (runner.h) and the state they share across runs. */
extern const struct job_def coingecko_assets_job;
extern const struct job_def coingecko_prices_job;
extern const struct job_def coingecko_market_caps_job;
void *coingecko_state_new(void);
void coingecko_state_free(void *state);
void coingecko_reconfigure(void *state, const struct config *old, const struct config *cfg);

#endif
