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
 * (COINGEST_DB_PASSWORD, and COINGEST_<SOURCE>_API_KEY for [source.<source>], each also as
 * *_FILE naming a file). The environment wins over the file.
 *
 * Sources and jobs come from the registry (source.h, runner.h): there is one [source.NAME]
 * section per registered source and one [job.NAME] per job it offers, each with the generic
 * keys below plus the keys its definition adds (struct cfg_key). Secrets are never printed:
 * config_dump() masks them.
 *
 * Thread safety: a built config is read-only, so any thread may read it while it is alive.
 */
#ifndef COINGEST_CONFIG_H
#define COINGEST_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "coingest/log.h"
#include "coingest/util.h"

/* [database] ssl_mode, weakest first (docs/config.md says what each one guarantees). */
enum db_ssl_mode {
    DB_SSL_DISABLED = 0,        /* never TLS */
    DB_SSL_PREFERRED = 1,       /* TLS when the server offers it, no certificate check */
    DB_SSL_REQUIRED = 2,        /* TLS or no connection, no certificate check */
    DB_SSL_VERIFY_CA = 3,       /* TLS, the server's chain must lead to ssl_ca */
    DB_SSL_VERIFY_IDENTITY = 4, /* verify_ca, and the certificate must name host */
};

struct source_def;
struct job_def;

/* A key that a source or a job adds to its own section (source.h, runner.h). Its value is
 * parsed, checked and reported (file:line) like every built-in key, dumped by config_dump and
 * compared by config_diff (a change applies to the next request or run). */
enum cfg_key_type {
    CFG_KEY_U64,        /* unsigned integer in [min, max] */
    CFG_KEY_BOOL,       /* true/false, yes/no, on/off, 1/0 */
    CFG_KEY_DURATION,   /* ms, in [min, max] */
    CFG_KEY_STR,        /* a string without control characters; NULL when unset */
    CFG_KEY_NAMES,      /* a comma-separated list (may span indented lines) */
    CFG_KEY_CURRENCIES, /* a list of currency codes, lower-cased */
};

struct cfg_key {
    const char *name;
    enum cfg_key_type type;
    const char *dflt; /* the default, as it would be written in the file; NULL: unset */
    uint64_t min, max;
};

/* The value of a cfg_key. Only the member of its type is meaningful. */
struct cfg_value {
    bool set;            /* given in the file (or by a default) */
    uint64_t u;          /* CFG_KEY_U64, CFG_KEY_DURATION */
    bool b;              /* CFG_KEY_BOOL */
    char *s;             /* CFG_KEY_STR */
    struct strlist list; /* CFG_KEY_NAMES, CFG_KEY_CURRENCIES */
};

/* [job.NAME]: one per job of the registry (runner.h), in registry order. */
struct cfg_job {
    const struct job_def *def;
    const char *name;         /* def->name (static) */
    size_t source;            /* index of its source in config.sources */
    bool enabled;             /* default from the job definition */
    uint64_t every_ms;        /* default from the job definition; with every_auto, the
                                 shortest interval (BUDGET_AUTO_MIN_MS) */
    bool every_auto;          /* every = auto: as often as the month's credits allow */
    bool align;               /* default true: fire on wall-clock multiples of every */
    uint64_t offset_ms;       /* default 0: shift the aligned grid by this much */
    uint64_t jitter_ms;       /* default 0: random delay in [0, jitter) per tick */
    bool run_at_start;        /* default true */
    struct cfg_value *values; /* def->nkeys values of the job's own keys */
};

/* [source.NAME]: one per source of the registry (source.h), in registry order. */
struct cfg_source {
    const struct source_def *def; /* NULL only in tests that build an API by hand */
    char *name;                   /* def->name */
    bool enabled;                 /* default def->enabled_by_default */
    char *base_url;               /* default by plan */
    uint32_t plan;                /* index into def->plans; default 0 */
    char *api_key;                /* secret; NULL when unset */
    struct rate rate_limit;       /* default by plan */
    uint32_t burst;               /* default 1 */
    uint64_t timeout_ms;          /* default 30s: total per request */
    uint64_t connect_timeout_ms;  /* default 10s */
    uint32_t max_retries;         /* default 5 */
    uint64_t backoff_base_ms;     /* default 1s */
    uint64_t backoff_cap_ms;      /* default 5m */
    uint64_t max_body_bytes;      /* default 64MiB */
    uint32_t max_url_bytes;       /* default 8000 */
    uint32_t max_in_flight;       /* requests one page walk keeps in flight; 0 (default): by the
                                     rate limit, see config_source_in_flight */
    char *ca_file;                /* NULL: the system's CA store */
    uint64_t monthly_credits;     /* default by plan (0: no cap) */
    uint64_t credit_reserve;      /* calls of the month never spent; default monthly_credits/50 */
    struct rate plan_limit;       /* the plan's documented limit, for the budget warning */
    bool rate_limit_set;          /* rate_limit was given (file or environment), not the plan's */
    bool monthly_credits_set;     /* monthly_credits was given, not the plan's */
    bool credit_reserve_set;      /* credit_reserve was given, not 2% of the credits */
    struct cfg_value *values;     /* def->nkeys values of the source's own keys */
};

struct config {
    char *path; /* the file it was read from */
    /* Holders (config_hold; config_free drops one): a run keeps the configuration it started
     * with, so a reload frees the old one only when the last run that holds it has ended.
     * Loop thread only. */
    unsigned refs;

    struct {
        enum log_level log_level;     /* default info */
        enum log_format log_format;   /* default text */
        char *metrics_listen;         /* default "127.0.0.1:9464"; "" disables */
        char *spool_dir;              /* default /var/lib/coingest/spool */
        uint64_t shutdown_timeout_ms; /* default 30s */
        uint64_t health_db_grace_ms;  /* default 5m: /healthz is 503 once the database has been
                                         unreachable this long; 0: as soon as it is */
    } daemon;

    struct cfg_database {
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
        bool binary_writes;          /* default true: array binding where the server has it */
        uint64_t connect_timeout_ms; /* default 5s */
        bool auto_migrate;           /* default true */
        char *migrations_dir;        /* NULL or "": the built-in migrations */
        enum db_ssl_mode ssl_mode;   /* default preferred */
        char *ssl_ca;                /* PEM CA file; NULL when unset; verify_* need it */
        char *ssl_cert;              /* PEM client certificate; NULL when unset */
        char *ssl_key;               /* PEM key of ssl_cert; NULL when unset */
        char *hosts;                 /* "a:3306, b, c:3307": nodes to fail over between, tried
                                        in turn instead of host/port; NULL when unset */
    } database;

    /* [cluster]: several instances against one database, one active per job (docs/cluster.md). */
    struct cfg_cluster {
        bool enabled;      /* default false */
        char *instance;    /* NULL: hostname-pid, resolved at start (cluster_instance_name) */
        uint64_t lease_ms; /* default 15s */
        uint64_t renew_ms; /* default 5s; less than lease */
    } cluster;

    struct cfg_source *sources; /* source_count entries, registry order */
    size_t nsources;

    struct {
        bool all;                     /* ids = all (default) */
        struct strlist ids;           /* explicit ids when !all */
        uint32_t top;                 /* default 0 (no limit) */
        struct strlist categories;    /* default empty */
        struct strlist vs_currencies; /* default "usd" */
    } universe;

    struct cfg_job *jobs; /* every job of every source, registry order */
    size_t njobs;

    /* [aliases]: `SOURCE.KEY = ASSET_ID` lines (coinbase.BTC = bitcoin), in file order: the
     * canonical asset a source's key stands for, ahead of any automatic mapping. */
    struct cfg_alias {
        char *source;   /* a registered source's name */
        char *key;      /* that source's key, as the source writes it ("BTC") */
        char *asset_id; /* the CoinGecko id */
    } * aliases;
    size_t naliases;
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

/* Drops one holder of a config and frees it with the last; NULL is a no-op. */
void config_free(struct config *cfg);

/* One more holder of cfg (a run that keeps the configuration it started with); returns cfg.
 * Each hold is ended by a config_free. Loop thread only. */
const struct config *config_hold(const struct config *cfg);

/* Prints the effective configuration as INI, secrets masked as "********". */
void config_dump(const struct config *cfg, FILE *out);

/* Which parts differ between two configs (for reload). The bit masks have one bit per source or
 * job index; the registry holds at most 64 of each (checked when the config is built). */
struct config_diff {
    bool daemon_log;       /* log_level / log_format (applied live) */
    bool restart_needed;   /* keys that only a restart applies (metrics_listen, spool_dir,
                              a source's `enabled`) */
    bool database;         /* any [database] key: the pool reconnects */
    uint64_t source_rate;  /* rate_limit or burst of that source: its bucket is resized */
    uint64_t source_other; /* other keys of that source: used by its next request */
    bool universe;         /* the next job runs use the new universe */
    uint64_t job;          /* schedule of that job changed: it is rescheduled */
    uint64_t job_other;    /* the job's own keys changed: its next run uses them */
    bool aliases;          /* [aliases] changed: the next job runs use them */
};
void config_diff(const struct config *a, const struct config *b, struct config_diff *d);

/* Do two [database] sections hold the same settings? (The sink reconnects when not.) */
bool config_database_equal(const struct cfg_database *a, const struct cfg_database *b);

/* A deep copy of a [database] section, for a holder that outlives the config (the sink's
 * writers). Returns 0, or -ENOMEM with dst left empty. Free with config_database_clear. */
int config_database_copy(struct cfg_database *dst, const struct cfg_database *src);
void config_database_clear(struct cfg_database *db);

/* Parsers for the value types, exported for tests and for other modules' own keys.
 * Each returns 0 or -EINVAL. */
int config_parse_duration(const char *s, uint64_t *ms);
int config_parse_rate(const char *s, struct rate *r);
int config_parse_size(const char *s, uint64_t *bytes);
int config_parse_bool(const char *s, bool *b);
int config_parse_uint(const char *s, uint64_t max, uint64_t *v);

/* Entry i of a `[database] hosts` list ("a:3306, b, c:3307"): its host into host (cap bytes)
 * and its port (default_port when the entry has none). 0, -ENOENT past the last entry, or
 * -EINVAL for an entry that does not parse. Thread: any. */
int config_host_at(const char *hosts, size_t i, uint32_t default_port, char *host, size_t cap,
                   uint32_t *port);

/* Index of a job in cfg->jobs by name, or -1. */
int config_job_index(const struct config *cfg, const char *name);

/* The section of the source called `name`, or NULL. */
const struct cfg_source *config_source(const struct config *cfg, const char *name);

/* The source a job belongs to. */
static inline const struct cfg_source *config_job_source(const struct config *cfg,
                                                         const struct cfg_job *job)
{
    return &cfg->sources[job->source];
}

/* The [aliases] override for `key` of source `source` (case-sensitive), or NULL. */
const char *config_alias(const struct config *cfg, const char *source, const char *key);

/* Name of the plan a source is on ("public"). */
const char *config_plan_name(const struct cfg_source *src);

/* The value of a source's or a job's own key by name; NULL when it has no such key. */
const struct cfg_value *config_source_value(const struct cfg_source *src, const char *key);
const struct cfg_value *config_job_value(const struct cfg_job *job, const char *key);

/* The requests one page walk of src may keep in flight together: max_in_flight when set,
 * else one per request the rate limit allows a second, from 1 (public and demo plans) to 4
 * (pro, or no real limit). Thread: any. */
uint32_t config_source_in_flight(const struct cfg_source *src);

#endif
