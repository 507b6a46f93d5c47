/*
 * backfill: how far a source's resumable backfill has come, kept in the candle_fill table.
 *
 * A backfill job (Coinbase candles, CoinCap history) fetches a product's history window by
 * window. After a window's rows it records `filled_to` with backfill_mark: a statement batch,
 * so the sink runs it only after every row emitted before it has committed, and the mark can
 * never be ahead of the rows (a restart after kill -9 refetches at most the windows whose mark
 * was not yet committed; upserts make that harmless). At the start of a run, backfill_read asks
 * for every product's mark of one source and interval; backfill_row reads the answer.
 * backfill_walk (below) does all of that for a job that plans windows: the Coinbase candles,
 * the CoinCap history and the CoinGecko history all walk their products through it.
 *
 * Thread: loop thread (through the runner's store, runner.h).
 */
#ifndef COINGEST_BACKFILL_H
#define COINGEST_BACKFILL_H

#include <stdbool.h>
#include <stdint.h>

#include "coingest/runner.h"
#include "coingest/sbuf.h"

/* Sends the read of source's marks for interval_s (columns: product, filled_to as unix
 * seconds). Returns as run_read: 0 (cb runs later), -ENOTSUP without a database, or -errno. */
int backfill_read(struct run *r, const char *source, int64_t interval_s, store_read_cb cb,
                  void *arg);

/* Row i of backfill_read's answer: its product and filled_to in ms since the epoch. False for
 * a row with a NULL cell. */
bool backfill_row(const struct store_rows *rows, uint32_t i, const char **product,
                  int64_t *filled_ms);

/* Logs that the marks could not be read (rc, err from the read callback): the run backfills
 * from the start, which is slow but harmless. */
void backfill_read_failed(struct run *r, int rc, const char *err);

/* Emits the mark "product of source at interval_s is filled up to filled_to_ms". Returns 0,
 * -ENOMEM (nothing emitted), or run_emit's error (the run's error is then recorded). */
int backfill_mark(struct run *r, const char *source, const char *product, int64_t interval_s,
                  int64_t filled_to_ms);

/*
 * The window walk every backfill shares. A job lists its products (the candle_fill keys), and
 * the walk reads their marks once, then per product asks window after window, each planned by
 * the job from how far the product is filled: GET the window, hand its rows out, then the
 * mark (backfill_mark) at the window's end. A window that fails for good ends that product for
 * this run (the next run resumes at its mark); a walk never asks for two windows at once.
 *
 * The walk lives at the start of the job's run state (run_state(run) must point at it: the
 * walk's request callbacks find it from the run), and calls the job back through its ops.
 */
struct backfill_window {
    int64_t from_ms, to_ms; /* the span the window fills; its mark is to_ms */
    size_t max_body;        /* the request's body limit (run_get_limited) */
};

struct backfill_ops {
    const char *source;      /* candle_fill.source */
    enum batch_spec_id spec; /* the rows of a window */
    /* Plans product i's next window from filled_ms (0: no mark): 0 with *w set and the
     * request's path and query written to path, 1 when the product needs nothing more, or
     * -errno (the walk ends with that error). */
    int (*plan)(void *job, size_t i, int64_t filled_ms, struct backfill_window *w,
                struct sbuf *path);
    /* Parses a 2xx body of product i's window into b, all or nothing (fetch_parse_cb). */
    int (*parse)(void *job, size_t i, const struct backfill_window *w, const char *body, size_t len,
                 struct batch *b, char *err, size_t errlen);
    /* Optional. A final answer with HTTP status handle_status is the job's to judge: return 1
     * to plan product i again (the job changed something), 0 to end product i for this run,
     * -1 to end the walk. The runner records nothing for it; the job does when it must. */
    long handle_status;
    int (*refused)(void *job, size_t i, const struct fetch_result *res);
    /* Optional. Asked before every request; false ends the walk (a budget that ran out).
     * Unset: run_may_spend (a backfill never takes the live jobs' credits). */
    bool (*may_send)(void *job);
    /* Optional. Called once the marks are read (before the first window); after each window
     * whose rows and mark were handed out; and once per product when it needs nothing more
     * (found so when planned, or right after its last window). */
    void (*marks_read)(void *job);
    void (*window_done)(void *job, size_t i, uint64_t rows);
    void (*complete)(void *job, size_t i);
    /* The walk is over (also after an error or a cancellation): the job goes on or calls
     * run_finish. */
    void (*finished)(void *job);
};

struct backfill_walk {
    struct run *run;
    const struct backfill_ops *ops;
    void *job;
    int64_t interval_s;          /* candle_fill.interval_s of the marks */
    const char *const *products; /* borrowed */
    int64_t *filled_ms;
    bool *ended;
    size_t n, cur;
    struct backfill_window w;
    struct batch *b;
    struct sbuf path;
};

/* Starts the walk over n products (their keys borrowed until it finishes), marked at
 * interval_s. Returns 0; on error (-ENOMEM) the run's error is recorded and ops->finished has
 * been called. */
int backfill_walk_start(struct backfill_walk *w, struct run *r, const struct backfill_ops *ops,
                        void *job, int64_t interval_s, const char *const *products, size_t n);

/* How far product i is filled (ms), as the marks and this run's windows say. */
int64_t backfill_walk_filled(const struct backfill_walk *w, size_t i);

/* Frees what the walk holds (the job's cleanup calls it); a zeroed walk is fine. */
void backfill_walk_clear(struct backfill_walk *w);

#endif
