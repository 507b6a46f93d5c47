/*
 * coincap: the CoinCap v3 source (rest.coincap.io/v3, key as a Bearer token): its parsers and
 * its jobs.
 *
 * Every body is an envelope {"data": ..., "timestamp": ms}, and every number in it is a JSON
 * string ("priceUsd": "67187.3358936566", "rank": "1"), or null. GET /assets?limit=&offset=
 * answers an array of assets ranked by market cap (id "bitcoin", symbol, name, supply,
 * maxSupply, marketCapUsd, volumeUsd24Hr, priceUsd, changePercent24Hr, vwap24Hr and, in v3,
 * `tokens`: chain id -> contract addresses); GET /assets/{id} the same object alone;
 * GET /assets/{id}/history?interval=d1|h1&start=&end= an array of {priceUsd, time (ms), date}.
 * Version 2 (api.coincap.io/v2) is shut down and answers {"data": {"message": "We are
 * deprecating this version ..."}}: `data` an object with a message and no id, which the
 * parsers refuse with that message and -EPROTO (fetch.h: final, no retry), as they refuse
 * {"error": "..."}; a body that is neither data nor a message is -EBADMSG (retried).
 *
 * Parsers follow the jrows contract (include/coingest/jrows.h): all or nothing, -EBADMSG with
 * a message for a body of the wrong shape, numbers (strings included) as the double nearest to
 * their text.
 *
 * Thread: any for the parsers (they touch only their arguments); the jobs run on the loop.
 */
#ifndef COINGEST_COINCAP_H
#define COINGEST_COINCAP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

/* The source column's value for every row of this source. */
#define COINCAP_SOURCE "coincap"

/* The largest `limit` /assets takes. */
#define COINCAP_MAX_LIMIT 2000

struct coincap_asset {
    char *id;         /* bitcoin */
    char *symbol;     /* BTC, NULL when absent */
    char *name;       /* Bitcoin, NULL when absent */
    char **addresses; /* every contract address under `tokens` */
    size_t naddresses;
    /* NaN when absent, null or not a number. */
    double rank, price, supply, max_supply, market_cap, volume_24h, change_24h_pct, vwap_24h;
};

struct coincap_assets {
    struct coincap_asset *items;
    size_t n;
    int64_t timestamp_ms; /* the envelope's `timestamp`; 0 when absent */
};

/* Frees the assets and empties the list; NULL is a no-op. */
void coincap_assets_clear(struct coincap_assets *l);

/* Frees the assets after the first n (the list keeps its first n); NULL is a no-op. */
void coincap_assets_truncate(struct coincap_assets *l, size_t n);

/*
 * /assets (data an array) or /assets/{id} (data one object): appends one entry per asset with
 * a usable `id` (others are counted in *skipped) and sets timestamp_ms. A number that is not
 * one (or a rank that is not whole and positive) reads as NaN and is counted in *bad. 0,
 * -EPROTO (an error or notice body; its message in err), -EBADMSG (no such envelope) or
 * -ENOMEM; on error `out` is as before.
 */
int coincap_parse_assets(const char *body, size_t len, struct coincap_assets *out,
                         uint64_t *skipped, uint64_t *bad, char *err, size_t errlen);

/* What one history request was for. */
struct coincap_history_req {
    const char *asset_id;   /* the canonical id */
    int64_t from_ms, to_ms; /* points with time in [from_ms, to_ms) are kept */
    int64_t fetched_ms;
};

struct coincap_history_stats {
    uint64_t points;  /* elements of `data` */
    uint64_t rows;    /* rows appended */
    uint64_t outside; /* points outside the window, not stored */
    uint64_t bad;     /* points without a price or a time, not stored */
};

/*
 * /assets/{id}/history: one BATCH_PRICES row per point in the window (source coincap,
 * vs_currency usd, source_updated_at = time, price = priceUsd). 0, -EPROTO (an error or notice
 * body; its message in err), -EBADMSG (not {"data": [...]}) or -EINVAL/-ENOMEM.
 */
int coincap_parse_history(const char *body, size_t len, const struct coincap_history_req *req,
                          struct batch *prices, struct coincap_history_stats *st, char *err,
                          size_t errlen);

/* The message of a CoinCap error or notice body ({"error": ..}, {"message": ..},
 * {"data": {"message": ..}}) into buf; 0 or -ENOENT (source_def.error_message). */
int coincap_error_message(const char *body, size_t len, char *buf, size_t cap);

/* The jobs (jobs.c). */
extern const struct job_def coincap_assets_job;
extern const struct job_def coincap_history_job;

#endif
