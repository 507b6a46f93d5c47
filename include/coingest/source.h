/*
 * source: what a remote API is to the daemon, and the registry of the APIs it knows.
 *
 * A source is a folder, src/sources/NAME/, that defines one `struct source_def`: its name (the
 * config section [source.NAME], the `api` metrics label, the `source` column of its rows), its
 * plans (base URL, documented rate limit, monthly credits, the header that carries the key),
 * its own config keys, the query parameters and headers whose values are secret (so that every
 * log line masks them), how its error bodies read, and the jobs it offers (runner.h). Nothing
 * outside that folder names the API: the fetch engine takes the key header and the error
 * reader from here, the config builds [source.NAME] and [job.NAME] sections from the registry,
 * and the daemon starts one API (token bucket + fetch client) per enabled source.
 *
 * Registering a source is one line in src/sources/list.h. The registry is static: it is read
 * by every thread and never changes while the process runs.
 *
 * Thread: any (everything here is read-only).
 */
#ifndef COINGEST_SOURCE_H
#define COINGEST_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/config.h"

struct job_def;

/* What an API says about the account its key belongs to (CoinGecko: GET /key). */
struct account_info {
    uint64_t rate_per_min;     /* rate_limit_request_per_minute; 0: not said */
    uint64_t monthly_credits;  /* monthly_call_credit; 0: not said */
    uint64_t calls_this_month; /* current_total_monthly_calls */
    uint64_t calls_left;       /* current_remaining_monthly_calls */
    bool has_calls_this_month, has_calls_left;
};

/* A plan: what one kind of account with the API gets. plans[0] of a source is its default. */
struct source_plan {
    const char *name;         /* the value of `plan =`, e.g. "public" */
    const char *base_url;     /* default base_url, no trailing '/' */
    struct rate rate_limit;   /* the documented per-period limit: default rate_limit and
                                 plan_limit */
    uint64_t monthly_credits; /* default monthly_credits; 0 = no monthly cap */
    const char *key_header;   /* the header that carries api_key ("x-api-key"); NULL when the
                                 plan takes no key */
    const char *key_prefix;   /* written before the key in that header ("Bearer " for
                                 "Authorization: Bearer KEY"); NULL: the key alone */
    const char *const *hosts; /* the API's hosts this plan's key works on, NULL-terminated; NULL:
                                 any. A base_url set explicitly whose host belongs to another
                                 plan of the source and not to this one is a config error (a
                                 proxy or a test server on another host is fine). */
    const char *account_path; /* GET it at start and after each reload: the account's own
                                 limits and usage (source_def.parse_account); NULL: none */
};

struct source_def {
    const char *name;        /* [source.NAME]; lower-case letters, digits and '_' */
    const char *title;       /* for humans: "CoinGecko" */
    bool enabled_by_default; /* false: the source runs only when its section says enabled */

    /* No plans (nplans 0): a source without a remote API, whose jobs only read and write the
     * database (analytics). It gets no API, no token bucket and no budget; the generic keys
     * of [source.NAME] other than `enabled` mean nothing to it. */
    const struct source_plan *plans;
    size_t nplans;

    /* Keys of [source.NAME] beyond the generic ones (config.h, struct cfg_key). */
    const struct cfg_key *keys;
    size_t nkeys;

    /* Query parameters ("x_cg_pro_api_key=") and headers ("x-cg-pro-api-key:") whose values
     * are secret: log lines mask their values whether or not the key itself is known.
     * NULL-terminated; may be NULL. */
    const char *const *secret_params;

    /* Reads the API's own message out of an error body into buf (NUL-terminated) and returns
     * 0, or -ENOENT when the body holds none. NULL: the engine's generic reader (a top-level
     * "error" or "message" string). Must not allocate anything it keeps. */
    int (*error_message)(const char *body, size_t len, char *buf, size_t cap);

    /* Does a final error answer (HTTP status and the API's message, as fetch_result.error)
     * say that the month's credits are spent? Then the runner sends nothing more to this API
     * until the month rolls over (a key shared with another client, or a count the ledger
     * lost). NULL: no answer says so. */
    bool (*credits_exhausted)(long status, const char *message);

    /* Reads the answer to a plan's account_path into *out (zeroed by the caller). Returns 0,
     * or -EBADMSG when the body is not what the endpoint answers. NULL when no plan has an
     * account_path. */
    int (*parse_account)(const char *body, size_t len, struct account_info *out);

    /* The jobs this source offers, in the order `--once` runs them by default. */
    const struct job_def *const *jobs;
    size_t njobs;

    /* State shared by the source's jobs across runs (caches), made when the runner starts and
     * freed with it; both may be NULL. `reconfigure` sees a reloaded config before the next
     * run starts. */
    void *(*state_new)(void);
    void (*state_free)(void *state);
    void (*reconfigure)(void *state, const struct config *old, const struct config *cfg);
};

/* The registered sources, in registration order, and how many there are. */
extern const struct source_def *const source_defs[];
extern const size_t source_count;

/* The source called `name`, or NULL. */
const struct source_def *source_find(const char *name);

/* Index of a plan of `def` by name, or -1. */
int source_plan_index(const struct source_def *def, const char *name);

/* Registers every source's secret parameters with the log (log_add_secret_param). Call once
 * at startup, before the first line that could hold a URL. Returns 0 or -ENOMEM. */
int source_register_log_masks(void);

#endif
