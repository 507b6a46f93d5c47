/*
 * coinbase: the Coinbase Exchange source (public REST, keyless): its parsers and its job.
 *
 * Two endpoints matter. GET /products lists the markets (`id` BTC-USD, `base_currency`,
 * `quote_currency`, `status`, `trading_disabled`); GET /products/{id}/candles?granularity=G
 * &start=..&end=.. answers at most 300 candles, newest first, each [time, low, high, open,
 * close, volume] with time the unix second the interval opens; intervals without trades are
 * simply absent, and start and end are both inclusive, so consecutive pages asked for edge to
 * edge share one candle. Errors come as {"message": "..."} (400 when more than 300 candles are
 * asked for, 429 for the rate limit), which the fetch engine's generic reader already reads.
 *
 * Parsers follow the jrows contract (include/coingest/jrows.h): all or nothing, -EBADMSG with
 * a message for a body of the wrong shape, numbers as the double nearest to their text.
 *
 * Thread: any for the parsers (they touch only their arguments); the job runs on the loop.
 */
#ifndef COINGEST_COINBASE_H
#define COINGEST_COINBASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

/* The source column's value for every row of this source. */
#define COINBASE_SOURCE "coinbase"

/* Candles one request may ask for. */
#define COINBASE_MAX_CANDLES 300

struct coinbase_product {
    char *id;    /* BTC-USD */
    char *base;  /* BTC */
    char *quote; /* USD */
    bool online; /* status "online" and trading not disabled */
};

struct coinbase_products {
    struct coinbase_product *items;
    size_t n;
};

/* Frees the products and empties the list; NULL is a no-op. */
void coinbase_products_clear(struct coinbase_products *l);

/*
 * /products: appends one entry per element with a usable `id`, `base_currency` and
 * `quote_currency` (others are counted in *skipped). 0, -EBADMSG (not an array; message in
 * err) or -ENOMEM; on error `out` is as before.
 */
int coinbase_parse_products(const char *body, size_t len, struct coinbase_products *out,
                            uint64_t *skipped, char *err, size_t errlen);

/* What one candles request was for. */
struct coinbase_candle_req {
    const char *product;     /* BTC-USD */
    const char *asset_id;    /* the canonical id of the base currency */
    const char *vs_currency; /* the quote currency, lower case */
    uint32_t interval_s;     /* granularity */
    int64_t from_s, to_s;    /* the window: candles opening in [from_s, to_s) are kept */
    int64_t fetched_ms;
};

struct coinbase_candle_stats {
    uint64_t candles;    /* elements of the answer */
    uint64_t rows;       /* rows appended */
    uint64_t outside;    /* candles outside the window (the neighbour page's), not stored */
    uint64_t bad;        /* elements that are not [time, low, high, open, close, volume] */
    uint64_t misaligned; /* times not a multiple of the granularity, not stored */
};

/*
 * /products/{id}/candles: one BATCH_CANDLES row per candle in the window (source coinbase,
 * open_time = time, fetched_at = fetched_ms). A candle of the wrong shape (not an array of at
 * least six numbers with a whole, in-range time) is counted in `bad` and skipped; the body
 * still counts. 0, -EBADMSG (not an array: an error object, say) or -EINVAL/-ENOMEM.
 */
int coinbase_parse_candles(const char *body, size_t len, const struct coinbase_candle_req *req,
                           struct batch *candles, struct coinbase_candle_stats *st, char *err,
                           size_t errlen);

/* The job (jobs.c). */
extern const struct job_def coinbase_candles_job;

#endif
