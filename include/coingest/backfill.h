/*
 * backfill: how far a source's resumable backfill has come, kept in the candle_fill table.
 *
 * A backfill job (Coinbase candles, CoinCap history) fetches a product's history window by
 * window. After a window's rows it records `filled_to` with backfill_mark: a statement batch,
 * so the sink runs it only after every row emitted before it has committed, and the mark can
 * never be ahead of the rows (a restart after kill -9 refetches at most the windows whose mark
 * was not yet committed; upserts make that harmless). At the start of a run, backfill_read asks
 * for every product's mark of one source and interval; backfill_row reads the answer.
 *
 * Thread: loop thread (through the runner's store, runner.h).
 */
#ifndef COINGEST_BACKFILL_H
#define COINGEST_BACKFILL_H

#include <stdbool.h>
#include <stdint.h>

#include "coingest/runner.h"

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

#endif
