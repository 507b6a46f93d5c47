/*
 * backfill: candle_fill marks for resumable backfills (see backfill.h).
 */
#include "coingest/backfill.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/batch.h"
#include "coingest/log.h"
#include "coingest/util.h"

/* A source has at most a few thousand products; this only bounds a broken table. */
#define BACKFILL_MAX_ROWS 1000000

int backfill_read(struct run *r, const char *source, int64_t interval_s, store_read_cb cb,
                  void *arg)
{
    char g[24];
    snprintf(g, sizeof(g), "%lld", (long long)interval_s);
    const char *params[] = {source, g};
    return run_read(r,
                    "SELECT product, UNIX_TIMESTAMP(filled_to) FROM candle_fill"
                    " WHERE source = ? AND interval_s = ?",
                    params, 2, BACKFILL_MAX_ROWS, cb, arg);
}

bool backfill_row(const struct store_rows *rows, uint32_t i, const char **product,
                  int64_t *filled_ms)
{
    const char *p = rows->cells[(size_t)i * rows->ncols];
    const char *f = rows->cells[(size_t)i * rows->ncols + 1];
    if (!p || !f)
        return false;
    *product = p;
    *filled_ms = (int64_t)(strtod(f, NULL) * 1000.0);
    return true;
}

void backfill_read_failed(struct run *r, int rc, const char *err)
{
    log_warn("candle_fill could not be read; backfilling from the start", LOG_S("job", run_name(r)),
             LOG_S("error", err ? err : strerror(-rc)));
}

int backfill_mark(struct run *r, const char *source, const char *product, int64_t interval_s,
                  int64_t filled_to_ms)
{
    struct batch *f = batch_new(BATCH_CANDLE_FILL, 1);
    if (!f || batch_add_row(f) < 0 ||
        batch_set_str(f, 0, BATCH_CANDLE_FILL_COL_SOURCE, source, strlen(source)) ||
        batch_set_str(f, 0, BATCH_CANDLE_FILL_COL_PRODUCT, product, strlen(product))) {
        batch_free(f);
        return -ENOMEM;
    }
    batch_set_int(f, 0, BATCH_CANDLE_FILL_COL_INTERVAL_S, interval_s);
    batch_set_time(f, 0, BATCH_CANDLE_FILL_COL_FILLED_TO, filled_to_ms);
    batch_set_time(f, 0, BATCH_CANDLE_FILL_COL_UPDATED_AT, (int64_t)util_wall_ms());
    return run_emit(r, f);
}
