/*
 * backfill: candle_fill marks for resumable backfills, and the window walk the backfill jobs
 * share (see backfill.h).
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

/* ---- the window walk ------------------------------------------------------------------------ */

static void walk_next(struct backfill_walk *w);

void backfill_walk_clear(struct backfill_walk *w)
{
    free(w->filled_ms);
    free(w->ended);
    batch_free(w->b);
    sbuf_free(&w->path);
    w->filled_ms = NULL;
    w->ended = NULL;
    w->b = NULL;
}

int64_t backfill_walk_filled(const struct backfill_walk *w, size_t i)
{
    return i < w->n ? w->filled_ms[i] : 0;
}

static void walk_finish(struct backfill_walk *w)
{
    w->cur = w->n;
    w->ops->finished(w->job);
}

/* Product indexes sorted by key, for the marks' lookup (products may come in any order). */
static int by_key(const void *a, const void *b, void *keys)
{
    const char *const *k = keys;
    return strcmp(k[*(const size_t *)a], k[*(const size_t *)b]);
}

static void walk_marks(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct backfill_walk *w = run_state(arg);
    if (rc != 0)
        backfill_read_failed(w->run, rc, err);
    size_t *idx = rc == 0 && rows->nrows ? malloc(w->n * sizeof(*idx)) : NULL;
    if (idx) {
        for (size_t i = 0; i < w->n; i++)
            idx[i] = i;
        qsort_r(idx, w->n, sizeof(*idx), by_key, (void *)w->products);
    }
    for (uint32_t k = 0; idx && k < rows->nrows; k++) {
        const char *product;
        int64_t filled_ms;
        if (!backfill_row(rows, k, &product, &filled_ms))
            continue;
        size_t lo = 0, hi = w->n;
        while (lo < hi) {
            size_t mid = lo + (hi - lo) / 2;
            int c = strcmp(w->products[idx[mid]], product);
            if (c == 0) {
                w->filled_ms[idx[mid]] = filled_ms;
                break;
            }
            if (c < 0)
                lo = mid + 1;
            else
                hi = mid;
        }
    }
    if (rc == 0 && rows->nrows && !idx)
        log_warn("candle_fill marks not applied: out of memory; backfilling from the start",
                 LOG_S("job", run_name(w->run)));
    free(idx);
    if (w->ops->marks_read)
        w->ops->marks_read(w->job);
    walk_next(w);
}

int backfill_walk_start(struct backfill_walk *w, struct run *r, const struct backfill_ops *ops,
                        void *job, int64_t interval_s, const char *const *products, size_t n)
{
    w->run = r;
    w->ops = ops;
    w->job = job;
    w->interval_s = interval_s;
    w->products = products;
    w->n = n;
    w->cur = 0;
    w->filled_ms = calloc(n + 1, sizeof(*w->filled_ms));
    w->ended = calloc(n + 1, sizeof(*w->ended));
    if (!w->filled_ms || !w->ended) {
        run_fail_errno(r, "backfill", -ENOMEM);
        walk_finish(w);
        return -ENOMEM;
    }
    int rc = backfill_read(r, ops->source, interval_s, walk_marks, r);
    if (rc == -ENOTSUP) { /* a store without a database: from the start */
        if (ops->marks_read)
            ops->marks_read(job);
        walk_next(w);
    } else if (rc != 0) {
        walk_marks(rc, NULL, NULL, r);
    }
    return 0;
}

static int walk_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct backfill_walk *w = run_state(arg);
    return w->ops->parse(w->job, w->cur, &w->w, body, len, w->b, err, errlen);
}

static void walk_done(const struct fetch_result *res, void *arg)
{
    struct backfill_walk *w = run_state(arg);
    const struct backfill_ops *ops = w->ops;
    size_t i = w->cur;
    struct batch *b = w->b;
    w->b = NULL;
    if (res->outcome == FETCH_HTTP_ERROR && ops->refused && res->status == ops->handle_status) {
        batch_free(b);
        int again = ops->refused(w->job, i, res);
        if (again < 0) {
            walk_finish(w);
            return;
        }
        if (again == 0)
            w->ended[w->cur++] = true;
        walk_next(w);
        return;
    }
    if (res->outcome != FETCH_OK) {
        batch_free(b); /* the runner recorded why; the next run resumes at the mark */
        w->ended[w->cur++] = true;
        walk_next(w);
        return;
    }
    uint64_t rows = b ? b->nrows : 0;
    if (run_emit(w->run, b) != 0 ||
        backfill_mark(w->run, ops->source, w->products[i], w->interval_s, w->w.to_ms) != 0) {
        w->ended[w->cur++] = true; /* the store refused: the error is recorded */
        walk_next(w);
        return;
    }
    w->filled_ms[i] = w->w.to_ms;
    if (ops->window_done)
        ops->window_done(w->job, i, rows);
    walk_next(w); /* plans product i again: its next window, or it is complete */
}

static void walk_next(struct backfill_walk *w)
{
    const struct backfill_ops *ops = w->ops;
    for (; w->cur < w->n; w->cur++) {
        if (w->ended[w->cur])
            continue;
        if (run_cancelled(w->run))
            break;
        sbuf_reset(&w->path);
        int rc = ops->plan(w->job, w->cur, w->filled_ms[w->cur], &w->w, &w->path);
        if (rc == 1) {
            w->ended[w->cur] = true;
            if (ops->complete)
                ops->complete(w->job, w->cur);
            continue;
        }
        if (rc == 0 && !(ops->may_send ? ops->may_send(w->job) : run_may_spend(w->run)))
            break;
        if (rc == 0 && (sbuf_failed(&w->path) || !(w->b = batch_new(ops->spec, 256))))
            rc = -ENOMEM;
        if (rc == 0) {
            if (ops->refused)
                run_handle_status(w->run, ops->handle_status);
            rc = run_get_limited(w->run, w->path.p, w->w.max_body, walk_parse, walk_done);
        }
        if (rc == 0)
            return;
        batch_free(w->b);
        w->b = NULL;
        run_fail_errno(w->run, "request", rc);
        break;
    }
    walk_finish(w);
}
