/*
 * memstore: an in-memory store (runner.h, struct store) for the job tests of the sources that
 * read what they wrote: it keeps every batch it is given, appended per spec, and answers the
 * two reads those jobs make from what it holds: the alias universe (rows the test sets) and
 * candle_fill (the largest filled_to per product written so far). Answers come on the next
 * loop iteration, never inline, as the sink's do.
 *
 * Header-only: a test program includes it and hands memstore_store() to jobenv_start (jobenv.h);
 * the loop is the test's.
 */
#ifndef COINGEST_TEST_MEMSTORE_H
#define COINGEST_TEST_MEMSTORE_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "coingest/alias.h"
#include "coingest/batch.h"
#include "coingest/runner.h"

struct memstore {
    uv_loop_t *loop;
    struct batch *kept[BATCH_SPEC_COUNT];
    bool can_read;
    /* The assets the universe read answers: id, symbol, name, platforms, market_cap. */
    const char *const *assets;
    size_t nassets;
    uint64_t reads;
};

static inline int memstore_submit(void *ctx, struct batch *b)
{
    struct memstore *m = ctx;
    enum batch_spec_id id = b->spec->id;
    int rc = 0;
    if (!m->kept[id])
        m->kept[id] = batch_new(id, 64);
    rc = m->kept[id] ? batch_append(m->kept[id], b) : -ENOMEM;
    batch_free(b);
    return rc;
}

struct memread {
    uv_timer_t t;
    store_read_cb cb;
    void *arg;
    struct store_rows rows;
    char *names[5];
    char **cells;
    size_t ncells;
};

static inline void memread_closed(uv_handle_t *h)
{
    struct memread *r = h->data;
    for (size_t i = 0; i < r->ncells; i++)
        free(r->cells[i]);
    free(r->cells);
    free(r);
}

static inline void memread_fire(uv_timer_t *t)
{
    struct memread *r = t->data;
    r->cb(0, &r->rows, NULL, r->arg);
    uv_close((uv_handle_t *)t, memread_closed);
}

static inline int memstore_read(void *ctx, const char *sql, const char *const *params,
                                size_t nparams, size_t max_rows, store_read_cb cb, void *arg)
{
    (void)nparams;
    (void)max_rows;
    struct memstore *m = ctx;
    struct memread *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    m->reads++;
    r->cb = cb;
    r->arg = arg;
    r->rows.names = r->names;
    if (strstr(sql, "FROM assets")) {
        r->rows.ncols = 5;
        r->rows.nrows = (uint32_t)m->nassets;
        r->ncells = m->nassets * 5;
        r->cells = calloc(r->ncells + 1, sizeof(char *));
        for (size_t i = 0; i < r->ncells; i++)
            r->cells[i] = m->assets[i] ? strdup(m->assets[i]) : NULL;
    } else if (strstr(sql, "FROM candle_fill")) {
        /* source = ? AND interval_s = ?: the largest filled_to per product */
        const struct batch *f = m->kept[BATCH_CANDLE_FILL];
        r->rows.ncols = 2;
        r->cells = calloc(2 * (f ? f->nrows : 0) + 1, sizeof(char *));
        for (uint32_t i = 0; f && i < f->nrows; i++) {
            const struct val *p = batch_val(f, i, BATCH_CANDLE_FILL_COL_PRODUCT);
            const struct val *g = batch_val(f, i, BATCH_CANDLE_FILL_COL_INTERVAL_S);
            const struct val *to = batch_val(f, i, BATCH_CANDLE_FILL_COL_FILLED_TO);
            if (params && (uint64_t)g->u.i != strtoull(params[1], NULL, 10))
                continue;
            uint32_t k = 0;
            for (; k < r->rows.nrows; k++)
                if (strlen(r->cells[2 * k]) == p->len &&
                    memcmp(r->cells[2 * k], p->u.s, p->len) == 0)
                    break;
            char t[32];
            if (k == r->rows.nrows) {
                r->cells[2 * k] = strndup(p->u.s, p->len);
                r->rows.nrows++;
            } else if (strtoll(r->cells[2 * k + 1], NULL, 10) * 1000 >= to->u.i) {
                continue;
            } else {
                free(r->cells[2 * k + 1]);
            }
            snprintf(t, sizeof(t), "%lld.000", (long long)(to->u.i / 1000));
            r->cells[2 * k + 1] = strdup(t);
        }
        r->ncells = 2 * r->rows.nrows;
    } else {
        free(r);
        return -EINVAL;
    }
    r->rows.cells = r->cells;
    uv_timer_init(m->loop, &r->t);
    r->t.data = r;
    uv_timer_start(&r->t, memread_fire, 0, 0);
    return 0;
}

static inline struct store memstore_store(struct memstore *m)
{
    return (struct store){
        .submit = memstore_submit, .read = m->can_read ? memstore_read : NULL, .ctx = m};
}

static inline void memstore_clear(struct memstore *m)
{
    for (size_t i = 0; i < BATCH_SPEC_COUNT; i++) {
        batch_free(m->kept[i]);
        m->kept[i] = NULL;
    }
}

/* The string of (row, col) as a NUL-terminated copy in buf. */
static inline const char *memstore_str(const struct batch *b, uint32_t row, uint16_t col, char *buf,
                                       size_t cap)
{
    const struct val *v = batch_val(b, row, col);
    if (v->type != VAL_STR && v->type != VAL_JSON)
        return NULL;
    snprintf(buf, cap, "%.*s", (int)v->len, v->u.s);
    return buf;
}

#endif
