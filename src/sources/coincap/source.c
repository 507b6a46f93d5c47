/*
 * coincap: the CoinCap v3 source -- its plan, keys and jobs (source.h).
 *
 * One plan, `v3`: rest.coincap.io/v3 with the key sent as `Authorization: Bearer KEY` (from
 * api_key, api_key_file or COINGEST_COINCAP_API_KEY[_FILE], like every source's key). CoinCap
 * meters v3 by monthly credits per plan. No page of CoinCap's own stating the figures could be
 * read for this work (docs/sources.md, "Rate and credit limits"): the monthly default, 2,500,
 * is the free plan's as a third party quoted CoinCap's pricing in May 2025, and the rate, 60
 * requests a minute, is a conservative guess (no v3 figure found). Both are meant to be set
 * from the account's own plan. Error and notice bodies, the retired v2's
 * {"data": {"message": ..}} included, are read by coincap_error_message.
 */
#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "sources/coincap/coincap.h"

static const char *const v3_hosts[] = {"rest.coincap.io", NULL};

static const struct source_plan plans[] = {
    {.name = "v3",
     .base_url = "https://rest.coincap.io/v3",
     .rate_limit = {60, 60000},
     .monthly_credits = 2500,
     .key_header = "Authorization",
     .key_prefix = "Bearer ",
     .hosts = v3_hosts},
};

static const struct job_def *const jobs[] = {
    &coincap_assets_job,
    &coincap_history_job,
};

const struct source_def coincap_source = {
    .name = "coincap",
    .title = "CoinCap",
    .enabled_by_default = false,
    .plans = plans,
    .nplans = ARRAY_SIZE(plans),
    .keys = NULL,
    .nkeys = 0,
    .secret_params = NULL, /* the key travels in a header; the log masks its value */
    .error_message = coincap_error_message,
    .jobs = jobs,
    .njobs = ARRAY_SIZE(jobs),
};
