/*
 * coingecko: the CoinGecko source -- its plans, keys, error bodies and jobs (source.h).
 *
 * Plans (docs/config.md cites where each figure comes from): `public` is keyless and limited
 * per IP (shared with anything else on that IP, so the default is conservative), `demo` sends
 * its key in x-cg-demo-api-key to the public host, `pro` sends x-cg-pro-api-key to the pro
 * host. Keys only ever travel in headers; the query parameter names are still masked in logs
 * in case a user pastes a URL that carries one.
 */
#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/coingecko/coingecko.h"

#define MINUTE_MS 60000u

static const struct source_plan plans[] = {
    {"public", "https://api.coingecko.com/api/v3", {10, MINUTE_MS}, 0, NULL, NULL},
    {"demo", "https://api.coingecko.com/api/v3", {30, MINUTE_MS}, 10000, "x-cg-demo-api-key", NULL},
    {"pro",
     "https://pro-api.coingecko.com/api/v3",
     {500, MINUTE_MS},
     500000,
     "x-cg-pro-api-key",
     NULL},
};

static const struct cfg_key keys[] = {
    /* /coins/markets page size; CoinGecko serves at most 250. */
    {"per_page", CFG_KEY_U64, "250", 1, 250},
    /* A /coins/list that would delist more than this share (percent) of the coins listed
     * before is refused: no delisting, the universe keeps the previous list (jobs.c). */
    {"max_delist_percent", CFG_KEY_U64, "10", 0, 100},
};

static const char *const secret_params[] = {
    "x_cg_demo_api_key=", "x_cg_pro_api_key=", "x-cg-demo-api-key:", "x-cg-pro-api-key:", NULL,
};

static const struct job_def *const jobs[] = {
    &coingecko_assets_job,
    &coingecko_prices_job,
    &coingecko_market_caps_job,
};

/* {"status": {"error_code": N, "error_message": "..."}}, possibly inside "error". */
static const char *status_message(json_t *o, long long *code, int depth)
{
    json_t *st = json_object_get(o, "status");
    if (json_is_object(st)) {
        json_t *m = json_object_get(st, "error_message");
        if (json_is_string(m)) {
            json_t *c = json_object_get(st, "error_code");
            if (json_is_integer(c))
                *code = json_integer_value(c);
            return json_string_value(m);
        }
    }
    json_t *e = json_object_get(o, "error");
    return json_is_object(e) && depth < 3 ? status_message(e, code, depth + 1) : NULL;
}

int coingecko_error_message(const char *body, size_t len, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return -EINVAL;
    buf[0] = '\0';
    if (!body || len == 0)
        return -ENOENT;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        return -ENOENT;
    long long code = -1;
    const char *msg = json_is_object(root) ? status_message(root, &code, 0) : NULL;
    int rc = -ENOENT;
    if (msg && *msg) {
        char tmp[1024];
        if (code >= 0)
            snprintf(tmp, sizeof(tmp), "%s (error_code %lld)", msg, code);
        else
            snprintf(tmp, sizeof(tmp), "%s", msg);
        util_copy_clean(buf, cap, tmp, strlen(tmp));
        rc = 0;
    }
    json_decref(root);
    /* Not CoinGecko's own shape: {"error": "..."} and the like read the generic way. */
    return rc == 0 ? 0 : fetch_api_error_message(body, len, buf, cap);
}

const struct source_def coingecko_source = {
    .name = "coingecko",
    .title = "CoinGecko",
    .enabled_by_default = true,
    .plans = plans,
    .nplans = ARRAY_SIZE(plans),
    .keys = keys,
    .nkeys = ARRAY_SIZE(keys),
    .secret_params = secret_params,
    .error_message = coingecko_error_message,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
    .state_new = coingecko_state_new,
    .state_free = coingecko_state_free,
    .reconfigure = coingecko_reconfigure,
};
