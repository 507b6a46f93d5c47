/*
 * config: the daemon's configuration, read from one INI file (libinih) plus environment.
 *
 * config_load() parses the file into a fresh, fully validated struct config; nothing else in
 * the daemon parses configuration. Once built a config is immutable: a SIGHUP reload builds a
 * new one with config_load() and the loop thread swaps it in (config_diff() says what changed).
 * A failed load leaves nothing behind and says file, line, section, key and what was expected.
 *
 * Value types are parsed strictly: durations (500ms 30s 5m 1h 24h 7d), rates (30/min, 5/s,
 * 100/h), sizes (512 64KiB 4MiB 1GiB), booleans (true/false/yes/no/on/off/1/0), unsigned
 * integers, and comma-separated lists. Unknown sections and keys are errors.
 *
 * Secrets: [database] password and [source.*] api_key may come from the file, from a
 * `*_file = PATH` key (first line of that file), or from the environment
 * (COINGEST_DB_PASSWORD, COINGEST_COINGECKO_API_KEY, each also as *_FILE naming a file).
 * The environment wins over the file. Secrets are never printed: config_dump() masks them.
 *
 * Thread safety: a built config is read-only, so any thread may read it while it is alive.
 */
#ifndef COINGEST_CONFIG_H
#define COINGEST_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "coingest/util.h"

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };
enum log_format { LOG_FORMAT_TEXT = 0, LOG_FORMAT_JSON = 1 };
enum api_plan { PLAN_PUBLIC = 0, PLAN_DEMO = 1, PLAN_PRO = 2 };

/* [database] ssl_mode, weakest first (docs/config.md says what each one guarantees). */
enum db_ssl_mode {
    DB_SSL_DISABLED = 0,        /* never TLS */
    DB_SSL_PREFERRED = 1,       /* TLS when the server offers it, no certificate check */
    DB_SSL_REQUIRED = 2,        /* TLS or no connection, no certificate check */
    DB_SSL_VERIFY_CA = 3,       /* TLS, the server's chain must lead to ssl_ca */
    DB_SSL_VERIFY_IDENTITY = 4, /* verify_ca, and the certificate must name host */
};

/* A rate: `count` requests per `period_ms`. */
struct rate {
    uint32_t count;
    uint64_t period_ms;
};

/* Names of the jobs the daemon knows, in the order --once runs them by default. */
enum job_id { JOB_ASSETS = 0, JOB_PRICES = 1, JOB_MARKET_CAPS = 2, JOB_COUNT = 3 };

struct cfg_job {
    const char *name;   /* "assets", "prices", "market_caps" (static) */
    bool enabled;       /* default true */
    uint64_t every_ms;  /* default 24h / 5m / 1h */
    bool align;         /* default true: fire on wall-clock multiples of every */
    uint64_t offset_ms; /* default 0: shift the aligned grid by this much */
    uint64_t jitter_ms; /* default 0: random delay in [0, jitter) per tick */
    bool run_at_start;  /* default true */
};

struct cfg_source {
    char *name;     /* "coingecko" */
    char *base_url; /* default by plan: public/demo api.coingecko.com/api/v3, pro pro-api... */
    enum api_plan plan;
    char *api_key;               /* secret; NULL when unset */
    struct rate rate_limit;      /* default by plan: public 10/min, demo 30/min, pro 500/min */
    uint32_t burst;              /* default 1 */
    uint64_t timeout_ms;         /* default 30s: total per request */
    uint64_t connect_timeout_ms; /* default 10s */
    uint32_t max_retries;        /* default 5 */
    uint64_t backoff_base_ms;    /* default 1s */
    uint64_t backoff_cap_ms;     /* default 5m */
    uint64_t max_body_bytes;     /* default 64MiB */
    uint32_t max_url_bytes;      /* default 8000 */
    uint32_t per_page;           /* default 250 */
    char *ca_file;               /* NULL: the system's CA store */
    uint64_t monthly_credits;    /* default by plan: public 0 (no cap), demo 10000, pro 500000 */
    struct rate plan_limit;      /* the plan's documented limit, for the budget warning */
};

struct config {
    char *path; /* the file it was read from */

    struct {
        enum log_level log_level;     /* default info */
        enum log_format log_format;   /* default text */
        char *metrics_listen;         /* default "127.0.0.1:9464"; "" disables */
        char *spool_dir;              /* default /var/lib/coingest/spool */
        uint64_t shutdown_timeout_ms; /* default 30s */
        uint64_t health_db_grace_ms;  /* default 5m: /healthz is 503 once the database has been
                                         unreachable this long; 0: as soon as it is */
    } daemon;

    struct {
        char *host;                  /* default 127.0.0.1 */
        uint32_t port;               /* default 3306 */
        char *socket;                /* NULL when unset; used instead of host/port */
        char *user;                  /* default coingest */
        char *password;              /* secret; NULL when unset */
        char *database;              /* default coingest */
        uint32_t workers;            /* default 2 */
        uint32_t batch_rows;         /* default 1000 */
        uint64_t batch_bytes;        /* default 4MiB; also capped by max_allowed_packet */
        uint64_t flush_interval_ms;  /* default 1s */
        uint64_t max_pending_rows;   /* default 200000: past it, batches go to the spool */
        uint64_t connect_timeout_ms; /* default 5s */
        bool auto_migrate;           /* default true */
        char *migrations_dir;        /* default COINGEST_DEFAULT_SQL_DIR */
        enum db_ssl_mode ssl_mode;   /* default preferred */
        char *ssl_ca;                /* PEM CA file; NULL when unset; verify_* need it */
        char *ssl_cert;              /* PEM client certificate; NULL when unset */
        char *ssl_key;               /* PEM key of ssl_cert; NULL when unset */
    } database;

    struct cfg_source coingecko;

    struct {
        bool all;                     /* ids = all (default) */
        struct strlist ids;           /* explicit ids when !all */
        uint32_t top;                 /* default 0 (no limit) */
        struct strlist categories;    /* default empty */
        struct strlist vs_currencies; /* default "usd" */
    } universe;

    struct cfg_job jobs[JOB_COUNT];
};

/*
 * Reads and validates `path`, applies the environment, and returns a new config in *out.
 * Returns 0, or -EINVAL (bad content) / -errno (file unreadable) with a message in err of
 * the form `PATH:LINE: [section] key: what is wrong (what was expected)`.
 * Thread: any. The caller owns *out and frees it with config_free().
 */
int config_load(const char *path, struct config **out, char *err, size_t errlen);

/* The built-in defaults with no file (for tests and --help). NULL on allocation failure. */
struct config *config_defaults(void);

/* Frees a config; NULL is a no-op. */
void config_free(struct config *cfg);

/* Prints the effective configuration as INI, secrets masked as "********". */
void config_dump(const struct config *cfg, FILE *out);

/* Which parts differ between two configs (for reload). */
struct config_diff {
    bool daemon_log;     /* log_level / log_format (applied live) */
    bool restart_needed; /* keys that only a restart applies (metrics_listen, spool_dir) */
    bool database;       /* any [database] key: the pool reconnects */
    bool source_rate;    /* rate_limit or burst: the bucket is resized */
    bool source_other;   /* other [source.*] keys: used by the next request */
    bool universe;       /* the next job runs use the new universe */
    bool job[JOB_COUNT]; /* schedule of that job changed: it is rescheduled */
};
void config_diff(const struct config *a, const struct config *b, struct config_diff *d);

/* Parsers for the value types, exported for tests and for other modules' own keys.
 * Each returns 0 or -EINVAL. */
int config_parse_duration(const char *s, uint64_t *ms);
int config_parse_rate(const char *s, struct rate *r);
int config_parse_size(const char *s, uint64_t *bytes);
int config_parse_bool(const char *s, bool *b);
int config_parse_uint(const char *s, uint64_t max, uint64_t *v);

/* Index of a job by name, or -1. */
int config_job_index(const char *name);

/* Name of a job ("assets", "prices", "market_caps"); "?" when out of range. */
static inline const char *config_job_name(enum job_id id)
{
    static const char *const names[JOB_COUNT] = {"assets", "prices", "market_caps"};
    return (unsigned)id < JOB_COUNT ? names[id] : "?";
}

#endif
