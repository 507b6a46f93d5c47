/*
 * coinbase: the Coinbase Exchange source -- its plan, keys and job (source.h).
 *
 * One plan, `public`: keyless, limited per IP. Coinbase documents 10 requests a second for
 * public endpoints with bursts of 15 (docs/sources.md cites the page); the default rate is
 * that limit and `burst = 15` is safe to set. The engine sends a User-Agent on every request,
 * which this API requires. Errors come as {"message": "..."}, which the engine's generic
 * reader reads, so there is no error_message hook.
 */
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/coinbase/coinbase.h"

static const struct source_plan plans[] = {
    {"public", "https://api.exchange.coinbase.com", {10, 1000}, 0, NULL, NULL},
};

static const struct cfg_key keys[] = {
    /* Which products to follow: these ids (BTC-USD) and/or every online product quoted in
     * these currencies. */
    {"products", CFG_KEY_NAMES, NULL, 0, 0},
    {"quote_currencies", CFG_KEY_CURRENCIES, NULL, 0, 0},
};

static const struct job_def *const jobs[] = {
    &coinbase_candles_job,
};

const struct source_def coinbase_source = {
    .name = "coinbase",
    .title = "Coinbase Exchange",
    .enabled_by_default = false,
    .plans = plans,
    .nplans = ARRAY_SIZE(plans),
    .keys = keys,
    .nkeys = ARRAY_SIZE(keys),
    .secret_params = NULL,
    .error_message = NULL,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
};
