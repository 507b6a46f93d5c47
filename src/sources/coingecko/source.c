/*
 * coingecko: the CoinGecko source -- its plans, keys, error bodies and jobs (source.h).
 *
 * Plans (docs/config.md and docs/sources.md cite where each figure comes from): `public` is
 * keyless and limited per IP (shared with anything else on that IP, so the default is
 * conservative); `demo` sends its key in x-cg-demo-api-key to the public host: 100 calls a
 * minute in CoinGecko's current "Errors & Rate Limits" page (30 on its older pricing page) and
 * 10,000 call credits a month; `pro` sends x-cg-pro-api-key to the pro host, and its defaults
 * are the smallest paid plan's (Basic: 250 a minute, 100,000 credits a month) until GET /key
 * reports the account's own figures (runner_set_account). Keys only ever travel in headers; the
 * query parameter names are still masked in logs in case a user pastes a URL that carries one.
 */
#include <errno.h>
#include <jansson.h>
#include <string.h>

#include "coingest/fetch.h"
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/coingecko/coingecko.h"
#include "sources/coingecko/history.h"

#define MINUTE_MS 60000u

/* Demo (and keyless) requests go to api.coingecko.com, pro requests to pro-api.coingecko.com;
 * each host refuses the other kind of key. */
static const char *const public_hosts[] = {"api.coingecko.com", NULL};
static const char *const pro_hosts[] = {"pro-api.coingecko.com", NULL};

static const struct source_plan plans[] = {
    {.name = "public",
     .base_url = "https://api.coingecko.com/api/v3",
     .rate_limit = {10, MINUTE_MS},
     .monthly_credits = 0,
     .hosts = public_hosts},
    {.name = "demo",
     .base_url = "https://api.coingecko.com/api/v3",
     .rate_limit = {100, MINUTE_MS},
     .monthly_credits = 10000,
     .key_header = "x-cg-demo-api-key",
     .hosts = public_hosts},
    {.name = "pro",
     .base_url = "https://pro-api.coingecko.com/api/v3",
     .rate_limit = {250, MINUTE_MS},
     .monthly_credits = 100000,
     .key_header = "x-cg-pro-api-key",
     .hosts = pro_hosts,
     .account_path = "/key"},
};

static const struct cfg_key keys[] = {
    /* /coins/markets page size; CoinGecko serves at most 250. */
    {"per_page", CFG_KEY_U64, "250", 1, 250},
    /* A /coins/list that would delist more than this share (percent) of the coins listed
     * before is refused: no delisting, the universe keeps the previous list (jobs.c). */
    {"max_delist_percent", CFG_KEY_U64, "10", 0, 100},
    /* Ids one /simple/price request may carry, besides max_url_bytes: CoinGecko documents 515
     * addresses a call for its token-price lookup and client projects report a cap of the
     * same order for ids (docs/config.md). A 414 answer halves a request anyway (jobs.c). */
    {"max_ids_per_request", CFG_KEY_U64, "500", 1, 100000},
};

static const char *const secret_params[] = {
    "x_cg_demo_api_key=", "x_cg_pro_api_key=", "x-cg-demo-api-key:", "x-cg-pro-api-key:", NULL,
};

static const struct job_def *const jobs[] = {
    &coingecko_assets_job,      &coingecko_prices_job,
    &coingecko_market_caps_job, &coingecko_history_job, /* history.c */
    &coingecko_ohlc_job,                                /* ohlc.c */
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

/* GET /key: {"plan", "rate_limit_request_per_minute", "monthly_call_credit",
 * "current_total_monthly_calls", "current_remaining_monthly_calls"}, numbers as JSON numbers
 * (docs.coingecko.com/reference/api-usage). A field that is absent or not a non-negative
 * number is left unknown; an answer without any of them is not /key's. */
static bool account_number(json_t *o, const char *key, uint64_t *out)
{
    json_t *v = json_object_get(o, key);
    double d = json_is_integer(v) ? (double)json_integer_value(v)
               : json_is_real(v)  ? json_real_value(v)
                                  : -1;
    if (!(d >= 0 && d < 1e15))
        return false;
    *out = (uint64_t)d;
    return true;
}

int coingecko_parse_account(const char *body, size_t len, struct account_info *out)
{
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!json_is_object(root)) {
        json_decref(root);
        return -EBADMSG;
    }
    bool any = account_number(root, "rate_limit_request_per_minute", &out->rate_per_min);
    any |= account_number(root, "monthly_call_credit", &out->monthly_credits);
    out->has_calls_this_month =
        account_number(root, "current_total_monthly_calls", &out->calls_this_month);
    out->has_calls_left = account_number(root, "current_remaining_monthly_calls", &out->calls_left);
    any |= out->has_calls_this_month || out->has_calls_left;
    json_decref(root);
    return any ? 0 : -EBADMSG;
}

/* A 429 whose message speaks of the monthly credits (or calls), not of the per-minute rate:
 * the month is spent. */
static bool credits_exhausted(long status, const char *message)
{
    if (status != 429 || !message)
        return false;
    char low[512];
    size_t n = 0;
    for (; message[n] && n < sizeof(low) - 1; n++)
        low[n] = (char)(message[n] >= 'A' && message[n] <= 'Z' ? message[n] + 32 : message[n]);
    low[n] = '\0';
    return strstr(low, "monthly") && (strstr(low, "credit") || strstr(low, "call"));
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
    .parse_account = coingecko_parse_account,
    .credits_exhausted = credits_exhausted,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
    .state_new = coingecko_state_new,
    .state_free = coingecko_state_free,
    .reconfigure = coingecko_reconfigure,
};
