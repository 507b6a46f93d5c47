/*
 * coingecko tracked: the assets and currencies the history and ohlc jobs follow (tracked.h).
 */
#include "sources/coingecko/tracked.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/sbuf.h"

/* The listed assets: about 17,500 on CoinGecko; this bounds a broken table. */
#define TRACKED_MAX_ROWS 1000000

static const struct strlist *job_list(const struct cfg_job *job, const char *key)
{
    const struct cfg_value *v = config_job_value(job, key);
    return v && v->set && v->list.n ? &v->list : NULL;
}

static uint64_t job_top(const struct config *cfg, const struct cfg_job *job)
{
    const struct cfg_value *v = config_job_value(job, "top");
    return v && v->u ? v->u : cfg->universe.top;
}

static void assets_read(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct cg_tracked *t = arg;
    struct run *run = t->run;
    if (rc != 0) {
        char why[512];
        snprintf(why, sizeof(why), "%s", err ? err : strerror(-rc));
        run_fail(run, "assets could not be read", why);
    }
    for (uint32_t i = 0; rc == 0 && i < rows->nrows; i++) {
        const char *id = rows->cells[(size_t)i * rows->ncols];
        if (id && *id && strlist_push(&t->ids, id, strlen(id)) != 0) {
            run_fail_errno(run, "assets", -ENOMEM);
            rc = -ENOMEM;
        }
    }
    if (rc == 0)
        strlist_sort_uniq(&t->ids);
    t->done(run, rc);
}

int coingecko_tracked_resolve(struct run *r, struct cg_tracked *t,
                              void (*done)(struct run *r, int rc))
{
    const struct config *cfg = run_config(r);
    const struct cfg_job *job = run_job(r);
    const struct strlist *ids = job_list(job, "ids");
    const struct strlist *vs = job_list(job, "vs_currencies");
    t->run = r;
    t->done = done;
    if (!ids && !cfg->universe.all)
        ids = &cfg->universe.ids;
    if (strlist_append(&t->vs, vs ? vs : &cfg->universe.vs_currencies) != 0 ||
        (ids && strlist_append(&t->ids, ids) != 0)) {
        run_fail_errno(r, "assets", -ENOMEM);
        done(r, -ENOMEM);
        return 0;
    }
    if (ids) {
        strlist_sort_uniq(&t->ids);
        done(r, 0);
        return 0;
    }
    /* ids = all: the database's listed assets, ranked, in the universe's categories. */
    char sql[640], limit[32] = "";
    uint64_t top = job_top(cfg, job);
    if (top)
        snprintf(limit, sizeof(limit), " LIMIT %llu", (unsigned long long)top);
    bool cats = cfg->universe.categories.n > 0;
    snprintf(sql, sizeof(sql),
             "SELECT id FROM assets WHERE delisted_at IS NULL%s"
             " ORDER BY market_cap_rank IS NULL, market_cap_rank, id%s",
             cats ? " AND id IN (SELECT asset_id FROM asset_categories"
                    " WHERE FIND_IN_SET(category_id, ?))"
                  : "",
             limit);
    struct sbuf csv = {0};
    for (size_t i = 0; cats && i < cfg->universe.categories.n; i++)
        sbuf_printf(&csv, "%s%s", i ? "," : "", cfg->universe.categories.items[i]);
    const char *params[] = {csv.p ? csv.p : ""};
    int rc = sbuf_failed(&csv)
                 ? -ENOMEM
                 : run_read(r, sql, params, cats ? 1 : 0, TRACKED_MAX_ROWS, assets_read, t);
    sbuf_free(&csv); /* run_read copies its parameters */
    if (rc != 0) {
        run_fail(r, "assets",
                 rc == -ENOTSUP ? "no database to read the listed assets from" : strerror(-rc));
        done(r, rc);
    }
    return 0;
}

void coingecko_path_id(struct sbuf *sb, const char *id)
{
    static const char hex[] = "0123456789ABCDEF";
    for (; *id; id++) {
        unsigned char c = (unsigned char)*id;
        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
            c == '-' || c == '.' || c == '_' || c == '~') {
            sbuf_putc(sb, (char)c);
        } else {
            sbuf_putc(sb, '%');
            sbuf_putc(sb, hex[c >> 4]);
            sbuf_putc(sb, hex[c & 15]);
        }
    }
}

void coingecko_tracked_clear(struct cg_tracked *t)
{
    strlist_clear(&t->ids);
    strlist_clear(&t->vs);
}

uint64_t coingecko_tracked_count(const struct config *cfg, const struct cfg_job *job, uint64_t n)
{
    const struct strlist *ids = job_list(job, "ids");
    const struct strlist *vs = job_list(job, "vs_currencies");
    uint64_t assets;
    if (ids)
        assets = ids->n;
    else if (!cfg->universe.all)
        assets = cfg->universe.ids.n;
    else {
        uint64_t top = job_top(cfg, job);
        assets = top && top < n ? top : n;
    }
    uint64_t nvs = vs ? vs->n : cfg->universe.vs_currencies.n;
    return assets * (nvs ? nvs : 1);
}
