/*
 * coingecko history: the `history` job (a resumable price backfill that then keeps current,
 * from /coins/{id}/market_chart/range) and the `ohlc` job (/coins/{id}/ohlc into candles),
 * with their pure parts exported for the unit tests: the window planner and the two parsers.
 *
 * Windows. CoinGecko picks a range's granularity from its length (docs/history.md cites the
 * page): 1 day from now is 5-minutely, any other range up to 90 days hourly, above 90 days
 * daily at 00:00 UTC. coingecko_history_window() chooses the next range to ask for, per the
 * configured granularity, and the part of its answer to keep, so that consecutive windows
 * meet edge to edge (keep_from <= t < keep_to) and the stored series has the wanted spacing:
 *   daily:  ranges of 91 to 365 days (asked longer than 90 days even when less is missing,
 *           and only the missing part kept); only points at 00:00 UTC are kept.
 *   hourly: ranges of 2 to 89 days (asked at least 2 days, so never 5-minutely); every point
 *           of the window is kept (CoinGecko's hourly points are not on the hour).
 *   auto:   exactly the missing range, at most 365 days; what CoinGecko serves is kept (a
 *           first 365-day backfill is daily, a catch-up within the last day 5-minutely).
 * The last point of an answer that reaches "now" is off the grid; no window reaches past
 * coingecko_history_end(), so that point is never kept (daily: it is not at 00:00 UTC).
 *
 * Thread: any for the pure functions; the jobs run on the loop thread.
 */
#ifndef COINGEST_COINGECKO_HISTORY_H
#define COINGEST_COINGECKO_HISTORY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

/* `granularity =` of [job.history]; the value is the candle_fill interval_s of its marks. */
enum cg_granularity { CG_GRAN_AUTO = 0, CG_GRAN_HOURLY = 3600, CG_GRAN_DAILY = 86400 };

#define CG_DAY_MS 86400000LL
/* CoinGecko's oldest data (bitcoin, 2013-04-28): where `days = max` starts. */
#define CG_HISTORY_EPOCH_MS 1367107200000LL
/* Public and Demo plans reach this far back; an older `from` answers HTTP 401, code 10012. */
#define CG_PLAN_REACH_DAYS 365

/* One request: what to ask for and which points of the answer to keep. */
struct cg_window {
    int64_t ask_from_s, ask_to_s;     /* the request's from and to, unix seconds */
    int64_t keep_from_ms, keep_to_ms; /* points kept: keep_from <= t < keep_to */
    int64_t grid_ms;                  /* kept points are multiples of it; 0: any time */
};

/* The exclusive end of history at now_ms: the last point a run stores lies before it. daily:
 * the start of tomorrow once today's 00:00 point is an hour old (else of today); hourly: the
 * hour that began 10 minutes ago or earlier; auto: likewise on a 5-minute grid. */
int64_t coingecko_history_end(enum cg_granularity g, int64_t now_ms);

/* The next window of a series stored up to filled_ms (0: nothing), wanted from start_ms up to
 * end_ms (exclusive). Returns 0 with *w set, or 1 when nothing is missing. */
int coingecko_history_window(enum cg_granularity g, int64_t filled_ms, int64_t start_ms,
                             int64_t end_ms, struct cg_window *w);

struct cg_chart_stats {
    uint64_t points;   /* elements of `prices` */
    uint64_t rows;     /* rows appended */
    uint64_t outside;  /* points outside [keep_from, keep_to): a neighbour window's, or "now" */
    uint64_t off_grid; /* points in the window but off its grid (daily: not at 00:00 UTC) */
    uint64_t bad;      /* elements that are not [ms, number-or-null] */
};

/*
 * /coins/{id}/market_chart/range ({"prices": [[ms, p]...], "market_caps": [...],
 * "total_volumes": [...]}): one BATCH_PRICES row per kept point (source coingecko, price,
 * market_cap and volume_24h of the same time, source_updated_at = the point's time,
 * fetched_at = fetched_ms). A point whose time repeats an earlier one is kept once.
 * 0, -EBADMSG (not that object; message in err), -ENOMEM; on error the batch is as before.
 */
int coingecko_parse_market_chart(const char *body, size_t len, const char *asset_id,
                                 const char *vs_currency, const struct cg_window *w,
                                 int64_t fetched_ms, struct batch *prices,
                                 struct cg_chart_stats *st, char *err, size_t errlen);

/* Candle length CoinGecko serves for /ohlc?days=N: 30 minutes for 1-2 days, 4 hours for
 * 3-30, 4 days beyond. */
uint32_t coingecko_ohlc_interval_s(uint32_t days);

/*
 * /coins/{id}/ohlc ([[close_ms, open, high, low, close]...]; the time is the candle's close):
 * one BATCH_CANDLES row per candle, open_time = close_ms - interval_s, product = asset_id,
 * volume NULL (the endpoint has none). A candle whose close lies after fetched_ms is still
 * open and is stored as it stands; the next run updates it in place (same key). *bad counts
 * elements of the wrong shape (skipped). 0, -EBADMSG, -ENOMEM; on error the batch is as before.
 */
int coingecko_parse_ohlc(const char *body, size_t len, const char *asset_id,
                         const char *vs_currency, uint32_t interval_s, int64_t fetched_ms,
                         struct batch *candles, uint64_t *rows, uint64_t *bad, char *err,
                         size_t errlen);

/* Is this error body CoinGecko's "exceeds the allowed time range" (error_code 10012)? */
bool coingecko_range_refused(const char *body, size_t len);

extern const struct job_def coingecko_history_job;
extern const struct job_def coingecko_ohlc_job;

#endif
