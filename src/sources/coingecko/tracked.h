/*
 * coingecko tracked: which assets and currencies the history and ohlc jobs follow.
 *
 * The job's `ids` when set; else the [universe]'s explicit ids; else (`ids = all`) the assets
 * the database lists (not delisted), best market_cap_rank first, narrowed to the universe's
 * categories (asset_categories) and cut to `top` (the job's when not 0, else the universe's).
 * Reading the database rather than fetching /coins/list keeps these low-priority jobs off the
 * API for what the assets and market_caps jobs already store. Currencies: the job's
 * `vs_currencies`, else the universe's. An explicit list is taken as it is (no `top`).
 *
 * Thread: loop thread (through the runner's store).
 */
#ifndef COINGEST_COINGECKO_TRACKED_H
#define COINGEST_COINGECKO_TRACKED_H

#include <stdint.h>

#include "coingest/runner.h"
#include "coingest/util.h"

struct cg_tracked {
    struct strlist ids; /* sorted, unique */
    struct strlist vs;
    /* the pending resolution */
    struct run *run;
    void (*done)(struct run *r, int rc);
};

/* Resolves the tracked assets of the run's job into t; done(run, rc) runs once, later or
 * before this returns (rc 0, or -errno with the run's error recorded). Returns 0. */
int coingecko_tracked_resolve(struct run *r, struct cg_tracked *t,
                              void (*done)(struct run *r, int rc));

/* Appends a coin id to a request path, percent-encoded (ids may hold spaces). */
struct sbuf;
void coingecko_path_id(struct sbuf *sb, const char *id);

/* Frees what t holds. */
void coingecko_tracked_clear(struct cg_tracked *t);

/* Series (asset x currency) the job's config implies with a universe of n assets, for the
 * budget: explicit ids, else min(top, n). */
uint64_t coingecko_tracked_count(const struct config *cfg, const struct cfg_job *job, uint64_t n);

#endif
