/*
 * alias: mapping other sources' asset keys onto canonical asset ids (the rules are in
 * include/coingest/alias.h).
 *
 * A universe is an array of assets plus two sorted indexes: one by ASCII-folded symbol (the
 * candidates of a symbol are a contiguous range found by binary search) and one by contract
 * address (0x addresses folded to lower case, since their hex digits come in either case;
 * other chains' addresses are case-sensitive and kept as they are). Mapping a key is then a
 * few binary searches; nothing here allocates after the universe is sealed.
 */
#include "coingest/alias.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"

struct asset {
    char *id;
    char *symbol; /* folded to lower case; "" when unknown */
    char *name;
    double market_cap; /* 0 when unknown */
};

struct address {
    char *addr; /* 0x...: lower case */
    size_t asset;
};

struct alias_universe {
    struct asset *assets;
    size_t n, cap;
    struct address *addrs;
    size_t naddrs, capaddrs;
    size_t *by_symbol; /* asset indexes sorted by symbol */
};

static const char *const method_names[] = {
    [ALIAS_OVERRIDE] = "override",       [ALIAS_CONTRACT] = "contract",
    [ALIAS_SYMBOL_NAME] = "symbol_name", [ALIAS_SYMBOL_MARKET_CAP] = "symbol_market_cap",
    [ALIAS_AMBIGUOUS] = "ambiguous",     [ALIAS_UNKNOWN] = "unknown",
};

const char *alias_method_name(enum alias_method m)
{
    return (unsigned)m < sizeof(method_names) / sizeof(method_names[0]) ? method_names[m] : "?";
}

struct alias_universe *alias_universe_new(void)
{
    return calloc(1, sizeof(struct alias_universe));
}

void alias_universe_free(struct alias_universe *u)
{
    if (!u)
        return;
    for (size_t i = 0; i < u->n; i++) {
        free(u->assets[i].id);
        free(u->assets[i].symbol);
        free(u->assets[i].name);
    }
    for (size_t i = 0; i < u->naddrs; i++)
        free(u->addrs[i].addr);
    free(u->assets);
    free(u->addrs);
    free(u->by_symbol);
    free(u);
}

size_t alias_universe_size(const struct alias_universe *u)
{
    return u ? u->n : 0;
}

static void fold(char *s)
{
    for (; *s; s++)
        if (*s >= 'A' && *s <= 'Z')
            *s = (char)(*s - 'A' + 'a');
}

/* An address as the index keeps it (a malloc'd copy), or NULL on OOM. */
static char *address_key(const char *a)
{
    char *k = strdup(a);
    if (k && (strncmp(k, "0x", 2) == 0 || strncmp(k, "0X", 2) == 0))
        fold(k);
    return k;
}

static int add_address(struct alias_universe *u, const char *a, size_t asset)
{
    if (!a || !*a)
        return 0;
    if (u->naddrs == u->capaddrs) {
        size_t cap = u->capaddrs ? u->capaddrs * 2 : 256;
        struct address *v = realloc(u->addrs, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        u->addrs = v;
        u->capaddrs = cap;
    }
    char *k = address_key(a);
    if (!k)
        return -ENOMEM;
    u->addrs[u->naddrs++] = (struct address){k, asset};
    return 0;
}

int alias_universe_add(struct alias_universe *u, const char *id, const char *symbol,
                       const char *name, const char *platforms, double market_cap)
{
    if (!id || !*id)
        return 0;
    if (u->n == u->cap) {
        size_t cap = u->cap ? u->cap * 2 : 1024;
        struct asset *v = realloc(u->assets, cap * sizeof(*v));
        if (!v)
            return -ENOMEM;
        u->assets = v;
        u->cap = cap;
    }
    struct asset *a = &u->assets[u->n];
    *a = (struct asset){strdup(id), strdup(symbol ? symbol : ""), strdup(name ? name : ""),
                        isfinite(market_cap) && market_cap > 0 ? market_cap : 0};
    if (!a->id || !a->symbol || !a->name) {
        free(a->id);
        free(a->symbol);
        free(a->name);
        return -ENOMEM;
    }
    fold(a->symbol);
    u->n++;
    if (platforms && *platforms) {
        json_t *p = json_loads(platforms, 0, NULL);
        const char *platform;
        json_t *addr;
        int rc = 0;
        if (json_is_object(p))
            json_object_foreach(p, platform, addr) if (!rc && json_is_string(addr)) rc =
                add_address(u, json_string_value(addr), u->n - 1);
        json_decref(p);
        if (rc)
            return rc;
    }
    return 0;
}

/* qsort has no context argument: the universe being sealed, on this thread. */
static _Thread_local const struct alias_universe *sorting;

static int by_symbol_cmp(const void *a, const void *b)
{
    const struct asset *x = &sorting->assets[*(const size_t *)a];
    const struct asset *y = &sorting->assets[*(const size_t *)b];
    int c = strcmp(x->symbol, y->symbol);
    return c ? c : strcmp(x->id, y->id);
}

static int by_addr_cmp(const void *a, const void *b)
{
    const struct address *x = a, *y = b;
    int c = strcmp(x->addr, y->addr);
    return c ? c : (x->asset > y->asset) - (x->asset < y->asset);
}

int alias_universe_seal(struct alias_universe *u)
{
    free(u->by_symbol);
    u->by_symbol = malloc((u->n ? u->n : 1) * sizeof(size_t));
    if (!u->by_symbol)
        return -ENOMEM;
    for (size_t i = 0; i < u->n; i++)
        u->by_symbol[i] = i;
    sorting = u;
    qsort(u->by_symbol, u->n, sizeof(size_t), by_symbol_cmp);
    sorting = NULL;
    if (u->naddrs) /* qsort must not be handed a NULL array, even an empty one */
        qsort(u->addrs, u->naddrs, sizeof(*u->addrs), by_addr_cmp);
    return 0;
}

struct alias_universe *alias_universe_from_rows(const struct store_rows *rows)
{
    if (!rows || rows->ncols != 5)
        return NULL;
    struct alias_universe *u = alias_universe_new();
    for (uint32_t r = 0; u && r < rows->nrows; r++) {
        char *const *c = &rows->cells[(size_t)r * rows->ncols];
        double cap = c[4] ? strtod(c[4], NULL) : 0;
        if (alias_universe_add(u, c[0], c[1], c[2], c[3], cap)) {
            alias_universe_free(u);
            return NULL;
        }
    }
    if (u && alias_universe_seal(u)) {
        alias_universe_free(u);
        return NULL;
    }
    return u;
}

struct universe_call {
    struct run *run;
    alias_universe_cb done;
};

static void universe_read(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct universe_call c = *(struct universe_call *)arg;
    free(arg);
    struct alias_universe *u = NULL;
    if (rc == 0)
        u = alias_universe_from_rows(rows);
    else
        log_warn("assets could not be read; only [aliases] overrides map",
                 LOG_S("job", run_name(c.run)), LOG_S("error", err ? err : strerror(-rc)));
    c.done(c.run, u);
}

int alias_read_universe(struct run *run, const char *canonical_source, alias_universe_cb done)
{
    struct universe_call *c = malloc(sizeof(*c));
    if (!c)
        return -ENOMEM;
    *c = (struct universe_call){run, done};
    const char *params[] = {canonical_source};
    int rc =
        run_read(run, ALIAS_UNIVERSE_SQL, params, 1, ALIAS_UNIVERSE_MAX_ROWS, universe_read, c);
    if (rc == -ENOTSUP) { /* a store without a database: overrides only */
        free(c);
        done(run, NULL);
        return 0;
    }
    if (rc != 0)
        free(c);
    return rc;
}

/* The range [*lo, *hi) of by_symbol whose folded symbol is `sym` (already folded). */
static void symbol_range(const struct alias_universe *u, const char *sym, size_t *lo, size_t *hi)
{
    size_t a = 0, b = u->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (strcmp(u->assets[u->by_symbol[m]].symbol, sym) < 0)
            a = m + 1;
        else
            b = m;
    }
    *lo = a;
    b = u->n;
    while (a < b) {
        size_t m = a + (b - a) / 2;
        if (strcmp(u->assets[u->by_symbol[m]].symbol, sym) <= 0)
            a = m + 1;
        else
            b = m;
    }
    *hi = a;
}

/* Appends an id to the candidate list, keeping it within its buffer. */
static void add_candidate(struct alias_result *out, const char *id, size_t *count)
{
    size_t len = strlen(out->candidates);
    size_t cap = sizeof(out->candidates);
    if (len && strcmp(out->candidates + len - 3, "...") == 0)
        return;
    const char *sep = len ? "," : "";
    if (len + strlen(sep) + strlen(id) + 4 < cap)
        snprintf(out->candidates + len, cap - len, "%s%s", sep, id);
    else if (len + 4 < cap)
        snprintf(out->candidates + len, cap - len, "%s...", sep);
    (*count)++;
}

/* Rule 2: the assets holding one of the key's addresses. 1: mapped; 0: none; -1: several
 * (listed as candidates). */
static int by_contract(const struct alias_universe *u, const struct alias_key *k,
                       struct alias_result *out)
{
    size_t found[16], nfound = 0;
    bool more = false;
    for (size_t i = 0; i < k->naddresses; i++) {
        if (!k->addresses[i] || !*k->addresses[i])
            continue;
        char *key = address_key(k->addresses[i]);
        if (!key)
            continue;
        size_t a = 0, b = u->naddrs;
        while (a < b) {
            size_t m = a + (b - a) / 2;
            if (strcmp(u->addrs[m].addr, key) < 0)
                a = m + 1;
            else
                b = m;
        }
        for (; a < u->naddrs && strcmp(u->addrs[a].addr, key) == 0; a++) {
            bool seen = false;
            for (size_t j = 0; j < nfound && !seen; j++)
                seen = found[j] == u->addrs[a].asset;
            if (seen)
                continue;
            if (nfound < sizeof(found) / sizeof(found[0]))
                found[nfound++] = u->addrs[a].asset;
            else
                more = true;
        }
        free(key);
    }
    if (nfound == 0)
        return 0;
    if (nfound == 1) {
        out->method = ALIAS_CONTRACT;
        out->asset_id = u->assets[found[0]].id;
        return 1;
    }
    size_t count = 0;
    for (size_t j = 0; j < nfound; j++)
        add_candidate(out, u->assets[found[j]].id, &count);
    if (more)
        add_candidate(out, "...", &count);
    return -1;
}

void alias_map(const struct alias_universe *u, const struct alias_key *k, struct alias_result *out)
{
    memset(out, 0, sizeof(*out));
    out->method = ALIAS_UNKNOWN;
    if (k->override_id && *k->override_id) {
        out->method = ALIAS_OVERRIDE;
        out->asset_id = k->override_id;
        return;
    }
    if (!u || !u->n)
        return;
    int c = by_contract(u, k, out);
    if (c > 0)
        return;
    if (c < 0) {
        out->method = ALIAS_AMBIGUOUS;
        return;
    }
    if (!k->symbol || !*k->symbol)
        return;
    char sym[256];
    snprintf(sym, sizeof(sym), "%s", k->symbol);
    fold(sym);
    size_t lo, hi;
    symbol_range(u, sym, &lo, &hi);
    if (lo == hi)
        return;
    /* Rule 3: symbol and name. */
    size_t named = SIZE_MAX, nnamed = 0;
    for (size_t i = lo; k->name && *k->name && i < hi; i++) {
        if (strcasecmp(u->assets[u->by_symbol[i]].name, k->name) == 0) {
            named = u->by_symbol[i];
            nnamed++;
        }
    }
    if (nnamed == 1) {
        out->method = ALIAS_SYMBOL_NAME;
        out->asset_id = u->assets[named].id;
        return;
    }
    /* Rule 4: one clearly dominant market cap. */
    size_t best = SIZE_MAX;
    double first = 0, second = 0;
    for (size_t i = lo; i < hi; i++) {
        double cap = u->assets[u->by_symbol[i]].market_cap;
        if (cap > first) {
            second = first;
            first = cap;
            best = u->by_symbol[i];
        } else if (cap > second) {
            second = cap;
        }
    }
    if (best != SIZE_MAX && first >= ALIAS_DOMINANCE * second) {
        out->method = ALIAS_SYMBOL_MARKET_CAP;
        out->asset_id = u->assets[best].id;
        return;
    }
    out->method = ALIAS_AMBIGUOUS;
    size_t count = 0;
    for (size_t i = lo; i < hi; i++)
        add_candidate(out, u->assets[u->by_symbol[i]].id, &count);
}

static int put_str(struct batch *b, uint32_t row, uint16_t col, const char *s)
{
    return s ? batch_set_str(b, row, col, s, strlen(s)) : 0;
}

int alias_add_row(struct batch *b, const char *source, const struct alias_key *k,
                  const struct alias_result *r, int64_t now_ms)
{
    if (!b || b->spec->id != BATCH_ASSET_ALIASES)
        return -EINVAL;
    int row = batch_add_row(b);
    if (row < 0)
        return row;
    uint32_t i = (uint32_t)row;
    int rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_SOURCE, source);
    if (!rc)
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_SOURCE_KEY, k->key);
    if (!rc)
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_ASSET_ID, r->asset_id);
    if (!rc)
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_METHOD, alias_method_name(r->method));
    if (!rc)
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_SYMBOL, k->symbol);
    if (!rc)
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_NAME, k->name);
    if (!rc && r->candidates[0])
        rc = put_str(b, i, BATCH_ASSET_ALIASES_COL_CANDIDATES, r->candidates);
    batch_set_time(b, i, BATCH_ASSET_ALIASES_COL_UPDATED_AT, now_ms);
    if (rc)
        batch_drop_last(b);
    return rc;
}

size_t alias_map_keys(const struct alias_universe *u, bool universe_known, const char *source,
                      const struct alias_key *keys, size_t n, struct alias_result *res,
                      struct batch *rows, int64_t now_ms)
{
    size_t unmapped = 0;
    char list[512] = "";
    size_t len = 0;
    for (size_t i = 0; i < n; i++) {
        alias_map(u, &keys[i], &res[i]);
        bool mapped = res[i].asset_id != NULL;
        if (rows && (mapped || universe_known))
            alias_add_row(rows, source, &keys[i], &res[i], now_ms);
        if (mapped)
            continue;
        unmapped++;
        if (len + strlen(keys[i].key) + 20 < sizeof(list))
            len += (size_t)snprintf(list + len, sizeof(list) - len, "%s%s (%s)", len ? ", " : "",
                                    keys[i].key, alias_method_name(res[i].method));
        else if (len + 5 < sizeof(list) && strcmp(list + len - 3, "...") != 0)
            len += (size_t)snprintf(list + len, sizeof(list) - len, ", ...");
    }
    if (unmapped) {
        log_warn("asset keys not mapped; their rows are not stored (see unmapped_asset_keys)",
                 LOG_S("source", source), LOG_U("unmapped", unmapped), LOG_U("keys", n),
                 LOG_S("which", list), LOG_B("universe_known", universe_known));
        metrics_add("coingest_unmapped_keys_total", "", (double)unmapped);
    }
    return unmapped;
}
