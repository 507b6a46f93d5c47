/*
 * config: reads the INI file (through libinih) and the environment into a validated, immutable
 * struct config.
 *
 * How it works. The whole file is read into memory, then handed to ini_parse_stream() through
 * our own line reader. Debian's libinih is built without INI_HANDLER_LINENO, so the handler is
 * never told which line it is on; the reader counts lines instead (inih asks for exactly one line
 * before each handler call, so the reader's count is the handler's line). The reader also makes
 * the parse independent of how inih was built: it removes comments itself (a ';' at the start of
 * a line or after whitespace, '#' at the start of a line), strips a UTF-8 BOM, rejects lines
 * longer than inih's line buffer instead of letting inih split them, and checks each [section]
 * header as it passes, so an unknown or repeated section is reported on its own line even when it
 * holds no keys. Indented lines that hold no '=' are continuation lines; only list keys (ids,
 * categories, vs_currencies) accept them, so a long list can span lines.
 *
 * Every key is described once in a table (section, name, type, range, reload class); parsing,
 * config_dump() and config_diff() all walk that table, so a key cannot be parsed but forgotten
 * by the dump or the diff. Values are parsed strictly (see the config_parse_* functions) and
 * the first error, by line, is the one reported. After the file come the environment overrides,
 * the secrets (`*_file` keys and COINGEST_*_FILE), the per-plan defaults for the keys the file
 * did not set, and the checks that involve more than one key.
 *
 * An empty value (`socket =`) means "not set": the key keeps its default, or stays unset when it
 * has none. The one exception is metrics_listen, where an empty value disables the endpoint.
 */
#include "coingest/config.h"

#include "coingest/util.h"
#include "coingest/version.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define MASK           "********"
#define MAX_FILE_BYTES (1u << 20)
#define MAX_SECRET_LEN 4096
#define MS_SECOND      1000ull
#define MS_MINUTE      (60 * MS_SECOND)
#define MS_HOUR        (60 * MS_MINUTE)
#define MS_DAY         (24 * MS_HOUR)
#define KIB            1024ull
#define MIB            (1024 * KIB)
#define GIB            (1024 * MIB)

/* ---- value parsers --------------------------------------------------------------------- */

/* Reads one or more decimal digits. -EINVAL when there are none; -ERANGE (after consuming
 * them all) when the number does not fit in 64 bits. */
static int read_digits(const char **p, uint64_t *v)
{
    const char *s = *p;
    uint64_t n = 0;
    bool overflow = false;
    if (*s < '0' || *s > '9')
        return -EINVAL;
    for (; *s >= '0' && *s <= '9'; s++) {
        unsigned d = (unsigned)(*s - '0');
        if (n > (UINT64_MAX - d) / 10)
            overflow = true;
        else
            n = n * 10 + d;
    }
    *p = s;
    *v = n;
    return overflow ? -ERANGE : 0;
}

/* The internal parsers return -ERANGE for numbers that are well formed but too large, so that
 * messages can say so; the exported ones fold that into -EINVAL as config.h promises. */
static int duration_parse(const char *s, uint64_t *ms)
{
    static const struct {
        const char *unit;
        uint64_t mul;
    } units[] = {{"ms", 1}, {"s", MS_SECOND}, {"m", MS_MINUTE}, {"h", MS_HOUR}, {"d", MS_DAY}};
    if (!s)
        return -EINVAL;
    if (strcmp(s, "0") == 0) {
        *ms = 0;
        return 0;
    }
    const char *p = s;
    uint64_t n;
    int r = read_digits(&p, &n);
    if (r == -EINVAL)
        return r;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (r == -ERANGE || n > UINT64_MAX / units[i].mul)
            return -ERANGE;
        *ms = n * units[i].mul;
        return 0;
    }
    return -EINVAL;
}

static int rate_parse(const char *s, struct rate *rt)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"s", MS_SECOND},   {"sec", MS_SECOND},    {"second", MS_SECOND}, {"m", MS_MINUTE},
                 {"min", MS_MINUTE}, {"minute", MS_MINUTE}, {"h", MS_HOUR},        {"hr", MS_HOUR},
                 {"hour", MS_HOUR},  {"d", MS_DAY},         {"day", MS_DAY}};
    if (!s)
        return -EINVAL;
    const char *p = s;
    uint64_t n;
    int r = read_digits(&p, &n);
    if (r == -EINVAL || *p != '/')
        return -EINVAL;
    p++;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (r == -ERANGE || n > UINT32_MAX)
            return -ERANGE;
        if (n == 0)
            return -EINVAL;
        rt->count = (uint32_t)n;
        rt->period_ms = units[i].ms;
        return 0;
    }
    return -EINVAL;
}

static int size_parse(const char *s, uint64_t *bytes)
{
    static const struct {
        const char *unit;
        uint64_t mul;
    } units[] = {{"", 1}, {"B", 1}, {"KiB", KIB}, {"MiB", MIB}, {"GiB", GIB}, {"TiB", 1024 * GIB}};
    if (!s)
        return -EINVAL;
    const char *p = s;
    uint64_t n;
    int r = read_digits(&p, &n);
    if (r == -EINVAL)
        return r;
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcmp(p, units[i].unit) != 0)
            continue;
        if (r == -ERANGE || n > UINT64_MAX / units[i].mul)
            return -ERANGE;
        *bytes = n * units[i].mul;
        return 0;
    }
    return -EINVAL;
}

static int uint_parse(const char *s, uint64_t max, uint64_t *v)
{
    if (!s)
        return -EINVAL;
    const char *p = s;
    uint64_t n;
    int r = read_digits(&p, &n);
    if (r == -EINVAL || *p != '\0')
        return -EINVAL;
    if (r == -ERANGE || n > max)
        return -ERANGE;
    *v = n;
    return 0;
}

int config_parse_duration(const char *s, uint64_t *ms)
{
    return duration_parse(s, ms) ? -EINVAL : 0;
}

int config_parse_rate(const char *s, struct rate *r)
{
    return rate_parse(s, r) ? -EINVAL : 0;
}

int config_parse_size(const char *s, uint64_t *bytes)
{
    return size_parse(s, bytes) ? -EINVAL : 0;
}

int config_parse_uint(const char *s, uint64_t max, uint64_t *v)
{
    return uint_parse(s, max, v) ? -EINVAL : 0;
}

int config_parse_bool(const char *s, bool *b)
{
    static const char *const yes[] = {"true", "yes", "on", "1"};
    static const char *const no[] = {"false", "no", "off", "0"};
    if (!s)
        return -EINVAL;
    for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *b = true;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *b = false;
            return 0;
        }
    }
    return -EINVAL;
}

/* ---- formatting values back (for config_dump and messages) ------------------------------ */

static void format_duration(uint64_t ms, char *buf, size_t cap)
{
    static const struct {
        const char *unit;
        uint64_t mul;
    } units[] = {{"d", MS_DAY}, {"h", MS_HOUR}, {"m", MS_MINUTE}, {"s", MS_SECOND}};
    if (ms == 0) {
        snprintf(buf, cap, "0");
        return;
    }
    for (size_t i = 0; i < ARRAY_SIZE(units); i++) {
        if (ms % units[i].mul == 0) {
            snprintf(buf, cap, "%llu%s", (unsigned long long)(ms / units[i].mul), units[i].unit);
            return;
        }
    }
    snprintf(buf, cap, "%llums", (unsigned long long)ms);
}

static void format_rate(const struct rate *r, char *buf, size_t cap)
{
    switch (r->period_ms) {
    case MS_SECOND:
        snprintf(buf, cap, "%u/s", r->count);
        break;
    case MS_MINUTE:
        snprintf(buf, cap, "%u/min", r->count);
        break;
    case MS_HOUR:
        snprintf(buf, cap, "%u/h", r->count);
        break;
    case MS_DAY:
        snprintf(buf, cap, "%u/day", r->count);
        break;
    default:
        /* Only the parser and the defaults make rates, and they use the periods above. */
        snprintf(buf, cap, "%u/%llums", r->count, (unsigned long long)r->period_ms);
        break;
    }
}

static void format_size(uint64_t bytes, char *buf, size_t cap)
{
    static const struct {
        const char *unit;
        uint64_t mul;
    } units[] = {{"TiB", 1024 * GIB}, {"GiB", GIB}, {"MiB", MIB}, {"KiB", KIB}};
    for (size_t i = 0; bytes && i < ARRAY_SIZE(units); i++) {
        if (bytes % units[i].mul == 0) {
            snprintf(buf, cap, "%llu%s", (unsigned long long)(bytes / units[i].mul), units[i].unit);
            return;
        }
    }
    snprintf(buf, cap, "%llu", (unsigned long long)bytes);
}

/* ---- the key table ---------------------------------------------------------------------- */

enum ktype {
    K_LEVEL,       /* enum log_level */
    K_FORMAT,      /* enum log_format */
    K_PLAN,        /* enum api_plan */
    K_SSL_MODE,    /* enum db_ssl_mode */
    K_STR,         /* char *, has a default */
    K_OPTSTR,      /* char *, NULL when unset */
    K_LISTEN,      /* char *, HOST:PORT or "" */
    K_URL,         /* char *, http(s)://... */
    K_SECRET,      /* char *, NULL when unset, masked by the dump */
    K_SECRET_FILE, /* not stored in the config: read into the matching K_SECRET */
    K_DURATION,    /* uint64_t ms */
    K_RATE,        /* struct rate */
    K_SIZE,        /* uint64_t bytes */
    K_BOOL,        /* bool */
    K_U32,         /* uint32_t */
    K_U64,         /* uint64_t */
    K_IDS,         /* struct strlist + universe.all */
    K_NAMES,       /* struct strlist */
    K_CURRENCIES,  /* struct strlist, lowercased */
};

/* What a reload does when the key changes; config_diff() reports it. */
enum reload {
    R_LOG,      /* applied live */
    R_RESTART,  /* only a restart applies it */
    R_LIVE,     /* read when used, nothing to do (shutdown_timeout) */
    R_DATABASE, /* the pool reconnects */
    R_RATE,     /* the bucket is resized */
    R_SOURCE,   /* used by the next request */
    R_UNIVERSE, /* used by the next job runs */
    R_JOB,      /* the job is rescheduled */
};

struct keydef {
    const char *name;
    enum ktype type;
    size_t off; /* from the section's base */
    uint64_t min, max;
    enum reload reload;
};

#define DAEMON(f)   offsetof(struct config, daemon.f)
#define DB(f)       offsetof(struct config, database.f)
#define SRC(f)      offsetof(struct cfg_source, f)
#define UNIVERSE(f) offsetof(struct config, universe.f)
#define JOB(f)      offsetof(struct cfg_job, f)
#define NOLIMIT     0, UINT64_MAX

static const struct keydef daemon_keys[] = {
    {"log_level", K_LEVEL, DAEMON(log_level), NOLIMIT, R_LOG},
    {"log_format", K_FORMAT, DAEMON(log_format), NOLIMIT, R_LOG},
    {"metrics_listen", K_LISTEN, DAEMON(metrics_listen), NOLIMIT, R_RESTART},
    {"spool_dir", K_STR, DAEMON(spool_dir), NOLIMIT, R_RESTART},
    {"shutdown_timeout", K_DURATION, DAEMON(shutdown_timeout_ms), NOLIMIT, R_LIVE},
    {"health_db_grace", K_DURATION, DAEMON(health_db_grace_ms), NOLIMIT, R_LIVE},
};

static const struct keydef database_keys[] = {
    {"host", K_STR, DB(host), NOLIMIT, R_DATABASE},
    {"port", K_U32, DB(port), 1, 65535, R_DATABASE},
    {"socket", K_OPTSTR, DB(socket), NOLIMIT, R_DATABASE},
    {"user", K_STR, DB(user), NOLIMIT, R_DATABASE},
    {"password", K_SECRET, DB(password), NOLIMIT, R_DATABASE},
    {"password_file", K_SECRET_FILE, 0, NOLIMIT, R_DATABASE},
    {"database", K_STR, DB(database), NOLIMIT, R_DATABASE},
    {"workers", K_U32, DB(workers), 1, 64, R_DATABASE},
    {"batch_rows", K_U32, DB(batch_rows), 1, 1000000, R_DATABASE},
    {"batch_bytes", K_SIZE, DB(batch_bytes), KIB, GIB, R_DATABASE},
    {"flush_interval", K_DURATION, DB(flush_interval_ms), 1, UINT64_MAX, R_DATABASE},
    {"max_pending_rows", K_U64, DB(max_pending_rows), 1, UINT64_MAX, R_DATABASE},
    {"connect_timeout", K_DURATION, DB(connect_timeout_ms), MS_SECOND, UINT64_MAX, R_DATABASE},
    {"auto_migrate", K_BOOL, DB(auto_migrate), NOLIMIT, R_DATABASE},
    {"migrations_dir", K_STR, DB(migrations_dir), NOLIMIT, R_DATABASE},
    {"ssl_mode", K_SSL_MODE, DB(ssl_mode), NOLIMIT, R_DATABASE},
    {"ssl_ca", K_OPTSTR, DB(ssl_ca), NOLIMIT, R_DATABASE},
    {"ssl_cert", K_OPTSTR, DB(ssl_cert), NOLIMIT, R_DATABASE},
    {"ssl_key", K_OPTSTR, DB(ssl_key), NOLIMIT, R_DATABASE},
};

static const struct keydef source_keys[] = {
    {"base_url", K_URL, SRC(base_url), NOLIMIT, R_SOURCE},
    {"plan", K_PLAN, SRC(plan), NOLIMIT, R_SOURCE},
    {"api_key", K_SECRET, SRC(api_key), NOLIMIT, R_SOURCE},
    {"api_key_file", K_SECRET_FILE, 0, NOLIMIT, R_SOURCE},
    {"rate_limit", K_RATE, SRC(rate_limit), NOLIMIT, R_RATE},
    {"burst", K_U32, SRC(burst), 1, 1000000, R_RATE},
    {"timeout", K_DURATION, SRC(timeout_ms), 1, UINT64_MAX, R_SOURCE},
    {"connect_timeout", K_DURATION, SRC(connect_timeout_ms), 1, UINT64_MAX, R_SOURCE},
    {"max_retries", K_U32, SRC(max_retries), 0, 100, R_SOURCE},
    {"backoff_base", K_DURATION, SRC(backoff_base_ms), 1, UINT64_MAX, R_SOURCE},
    {"backoff_cap", K_DURATION, SRC(backoff_cap_ms), 1, UINT64_MAX, R_SOURCE},
    {"max_body_size", K_SIZE, SRC(max_body_bytes), KIB, UINT64_MAX, R_SOURCE},
    {"max_url_bytes", K_U32, SRC(max_url_bytes), 256, 1048576, R_SOURCE},
    {"per_page", K_U32, SRC(per_page), 1, 250, R_SOURCE},
    {"ca_file", K_OPTSTR, SRC(ca_file), NOLIMIT, R_SOURCE},
    {"monthly_credits", K_U64, SRC(monthly_credits), NOLIMIT, R_SOURCE},
    {"plan_limit", K_RATE, SRC(plan_limit), NOLIMIT, R_SOURCE},
};

static const struct keydef universe_keys[] = {
    {"ids", K_IDS, UNIVERSE(ids), NOLIMIT, R_UNIVERSE},
    {"top", K_U32, UNIVERSE(top), 0, UINT32_MAX, R_UNIVERSE},
    {"categories", K_NAMES, UNIVERSE(categories), NOLIMIT, R_UNIVERSE},
    {"vs_currencies", K_CURRENCIES, UNIVERSE(vs_currencies), NOLIMIT, R_UNIVERSE},
};

static const struct keydef job_keys[] = {
    {"enabled", K_BOOL, JOB(enabled), NOLIMIT, R_JOB},
    {"every", K_DURATION, JOB(every_ms), 1, UINT64_MAX, R_JOB},
    {"align", K_BOOL, JOB(align), NOLIMIT, R_JOB},
    {"offset", K_DURATION, JOB(offset_ms), NOLIMIT, R_JOB},
    {"jitter", K_DURATION, JOB(jitter_ms), NOLIMIT, R_JOB},
    {"run_at_start", K_BOOL, JOB(run_at_start), NOLIMIT, R_JOB},
};

enum section_id {
    SEC_DAEMON,
    SEC_DATABASE,
    SEC_COINGECKO,
    SEC_UNIVERSE,
    SEC_JOB_ASSETS,
    SEC_JOB_PRICES,
    SEC_JOB_MARKET_CAPS,
    SEC_COUNT,
    SEC_NONE = -1, /* before the first header */
    SEC_BAD = -2,  /* inside a section already reported as wrong */
};

struct section {
    const char *name;
    const struct keydef *keys;
    size_t nkeys;
    size_t base;
    int job; /* enum job_id, or -1 */
};

#define JOB_BASE(i) (offsetof(struct config, jobs) + (i) * sizeof(struct cfg_job))

static const struct section sections[SEC_COUNT] = {
    {"daemon", daemon_keys, ARRAY_SIZE(daemon_keys), 0, -1},
    {"database", database_keys, ARRAY_SIZE(database_keys), 0, -1},
    {"source.coingecko", source_keys, ARRAY_SIZE(source_keys), offsetof(struct config, coingecko),
     -1},
    {"universe", universe_keys, ARRAY_SIZE(universe_keys), 0, -1},
    {"job.assets", job_keys, ARRAY_SIZE(job_keys), JOB_BASE(JOB_ASSETS), JOB_ASSETS},
    {"job.prices", job_keys, ARRAY_SIZE(job_keys), JOB_BASE(JOB_PRICES), JOB_PRICES},
    {"job.market_caps", job_keys, ARRAY_SIZE(job_keys), JOB_BASE(JOB_MARKET_CAPS), JOB_MARKET_CAPS},
};

#define MAX_KEYS 19 /* the largest table above */

static const char *const job_names[JOB_COUNT] = {"assets", "prices", "market_caps"};

static void *field(struct config *cfg, int sec, const struct keydef *k)
{
    return (char *)cfg + sections[sec].base + k->off;
}

static const void *cfield(const struct config *cfg, int sec, const struct keydef *k)
{
    return (const char *)cfg + sections[sec].base + k->off;
}

static int find_key(int sec, const char *name)
{
    for (size_t i = 0; i < sections[sec].nkeys; i++)
        if (strcmp(sections[sec].keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

static int find_section(const char *name)
{
    for (int i = 0; i < SEC_COUNT; i++)
        if (strcmp(sections[i].name, name) == 0)
            return i;
    return -1;
}

int config_job_index(const char *name)
{
    for (int i = 0; name && i < JOB_COUNT; i++)
        if (strcmp(job_names[i], name) == 0)
            return i;
    return -1;
}

/* ---- lists ------------------------------------------------------------------------------ */

/* ---- defaults --------------------------------------------------------------------------- */

struct plan_defaults {
    const char *base_url;
    struct rate rate;
    uint64_t monthly_credits;
};

static const struct plan_defaults plan_defaults[] = {
    [PLAN_PUBLIC] = {"https://api.coingecko.com/api/v3", {10, MS_MINUTE}, 0},
    [PLAN_DEMO] = {"https://api.coingecko.com/api/v3", {30, MS_MINUTE}, 10000},
    [PLAN_PRO] = {"https://pro-api.coingecko.com/api/v3", {500, MS_MINUTE}, 500000},
};

static const char *const plan_names[] = {"public", "demo", "pro"};
static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const format_names[] = {"text", "json"};
static const char *const ssl_mode_names[] = {"disabled", "preferred", "required", "verify_ca",
                                             "verify_identity"};

static int set_str(char **slot, const char *value)
{
    char *copy = NULL;
    if (value && !(copy = strdup(value)))
        return -ENOMEM;
    free(*slot);
    *slot = copy;
    return 0;
}

struct config *config_defaults(void)
{
    struct config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return NULL;
    cfg->daemon.log_level = LOG_INFO;
    cfg->daemon.log_format = LOG_FORMAT_TEXT;
    cfg->daemon.shutdown_timeout_ms = 30 * MS_SECOND;
    cfg->daemon.health_db_grace_ms = 5 * MS_MINUTE;

    cfg->database.port = 3306;
    cfg->database.workers = 2;
    cfg->database.batch_rows = 1000;
    cfg->database.batch_bytes = 4 * MIB;
    cfg->database.flush_interval_ms = MS_SECOND;
    cfg->database.max_pending_rows = 200000;
    cfg->database.connect_timeout_ms = 5 * MS_SECOND;
    cfg->database.auto_migrate = true;
    cfg->database.ssl_mode = DB_SSL_PREFERRED;

    struct cfg_source *src = &cfg->coingecko;
    src->plan = PLAN_PUBLIC;
    src->rate_limit = plan_defaults[PLAN_PUBLIC].rate;
    src->plan_limit = plan_defaults[PLAN_PUBLIC].rate;
    src->monthly_credits = plan_defaults[PLAN_PUBLIC].monthly_credits;
    src->burst = 1;
    src->timeout_ms = 30 * MS_SECOND;
    src->connect_timeout_ms = 10 * MS_SECOND;
    src->max_retries = 5;
    src->backoff_base_ms = MS_SECOND;
    src->backoff_cap_ms = 5 * MS_MINUTE;
    src->max_body_bytes = 64 * MIB;
    src->max_url_bytes = 8000;
    src->per_page = 250;

    cfg->universe.all = true;

    static const uint64_t every[JOB_COUNT] = {MS_DAY, 5 * MS_MINUTE, MS_HOUR};
    for (int i = 0; i < JOB_COUNT; i++) {
        cfg->jobs[i] = (struct cfg_job){.name = job_names[i],
                                        .enabled = true,
                                        .every_ms = every[i],
                                        .align = true,
                                        .run_at_start = true};
    }

    if (set_str(&cfg->daemon.metrics_listen, "127.0.0.1:9464") ||
        set_str(&cfg->daemon.spool_dir, "/var/lib/coingest/spool") ||
        set_str(&cfg->database.host, "127.0.0.1") || set_str(&cfg->database.user, "coingest") ||
        set_str(&cfg->database.database, "coingest") ||
        set_str(&cfg->database.migrations_dir, COINGEST_DEFAULT_SQL_DIR) ||
        set_str(&src->name, "coingecko") ||
        set_str(&src->base_url, plan_defaults[PLAN_PUBLIC].base_url) ||
        strlist_push(&cfg->universe.vs_currencies, "usd", 3)) {
        config_free(cfg);
        return NULL;
    }
    return cfg;
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    free(cfg->path);
    free(cfg->daemon.metrics_listen);
    free(cfg->daemon.spool_dir);
    free(cfg->database.host);
    free(cfg->database.socket);
    free(cfg->database.user);
    free(cfg->database.password);
    free(cfg->database.database);
    free(cfg->database.migrations_dir);
    free(cfg->database.ssl_ca);
    free(cfg->database.ssl_cert);
    free(cfg->database.ssl_key);
    free(cfg->coingecko.name);
    free(cfg->coingecko.base_url);
    free(cfg->coingecko.api_key);
    free(cfg->coingecko.ca_file);
    strlist_clear(&cfg->universe.ids);
    strlist_clear(&cfg->universe.categories);
    strlist_clear(&cfg->universe.vs_currencies);
    free(cfg);
}

/* ---- parse state and errors --------------------------------------------------------------- */

struct parse {
    const char *path;
    struct config *cfg;

    /* The reader's view of the file. */
    const char *data;
    size_t size, pos;
    int line;         /* the physical line last handed to inih */
    bool cont_line;   /* that line is an indented continuation line */
    const char *pend; /* the rest of a long list line, still to be handed over in pieces */
    size_t pend_len;
    int sec; /* enum section_id, SEC_NONE or SEC_BAD */

    int sec_line[SEC_COUNT];
    int key_line[SEC_COUNT][MAX_KEYS];    /* where the key was given, 0 if not in the file */
    bool key_set[SEC_COUNT][MAX_KEYS];    /* given with a non-empty value */
    int last_key;                         /* the key a continuation line continues, or -1 */
    int comma_line, comma_sec, comma_key; /* a list line that ended in ',' */

    char *password_file, *api_key_file;

    /* The first error by line (line 0 for errors that are not about one line). */
    bool failed;
    int err_line;
    int rc;
    char *err;
    size_t errlen;
};

/* Records `PATH:LINE: [section] key: message`. Keeps the error on the earliest line, since the
 * reader can notice an error (a dangling comma) after a later line was already read. */
static void fail(struct parse *p, int line, int sec, const char *key, int rc, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
static void fail(struct parse *p, int line, int sec, const char *key, int rc, const char *fmt, ...)
{
    if (p->failed && p->err_line <= line)
        return;
    p->failed = true;
    p->err_line = line;
    p->rc = rc;
    if (!p->err || p->errlen == 0)
        return;
    int w = snprintf(p->err, p->errlen, "%s:%d: ", p->path, line);
    size_t n = w > 0 ? (size_t)w : 0;
    if (n < p->errlen && sec >= 0) {
        w = snprintf(p->err + n, p->errlen - n, "[%s] ", sections[sec].name);
        n += w > 0 ? (size_t)w : 0;
    }
    if (n < p->errlen && key) {
        w = snprintf(p->err + n, p->errlen - n, "%s: ", key);
        n += w > 0 ? (size_t)w : 0;
    }
    if (n < p->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(p->err + n, p->errlen - n, fmt, ap);
        va_end(ap);
    }
}

static void fail_nomem(struct parse *p, int line)
{
    fail(p, line, -1, NULL, -ENOMEM, "out of memory");
}

/* ---- applying one value ------------------------------------------------------------------ */

static bool valid_listen(const char *s)
{
    const char *colon = strrchr(s, ':');
    if (!colon || colon == s)
        return false;
    uint64_t port;
    if (uint_parse(colon + 1, 65535, &port) || port == 0)
        return false;
    size_t hlen = (size_t)(colon - s);
    if (s[0] == '[') {
        /* [v6]:port */
        if (hlen < 3 || s[hlen - 1] != ']')
            return false;
        for (size_t i = 1; i < hlen - 1; i++)
            if (!isxdigit((unsigned char)s[i]) && s[i] != ':' && s[i] != '.')
                return false;
        return true;
    }
    for (size_t i = 0; i < hlen; i++)
        if (!isalnum((unsigned char)s[i]) && s[i] != '.' && s[i] != '-' && s[i] != '_')
            return false;
    return true;
}

static bool valid_url(const char *s)
{
    const char *rest;
    if (strncmp(s, "https://", 8) == 0)
        rest = s + 8;
    else if (strncmp(s, "http://", 7) == 0)
        rest = s + 7;
    else
        return false;
    if (*rest == '\0' || *rest == '/')
        return false;
    for (const char *c = s; *c; c++)
        if ((unsigned char)*c <= ' ' || *c == 0x7f || *c == '?' || *c == '#')
            return false;
    return true;
}

static bool has_control(const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return true;
    return false;
}

static int parse_enum(const char *value, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(value, names[i]) == 0)
            return (int)i;
    return -1;
}

static void list_names(const char *const *names, size_t n, char *buf, size_t cap)
{
    size_t len = 0;
    buf[0] = '\0';
    for (size_t i = 0; i < n && len < cap; i++) {
        int w = snprintf(buf + len, cap - len, "%s%s", i ? ", " : "", names[i]);
        len += w > 0 ? (size_t)w : 0;
    }
}

/* Appends the items of one line of a list key. `first` clears the default list. A trailing
 * comma is allowed only when a continuation line follows; the reader checks that. */
static int apply_list(struct parse *p, int line, int sec, int ki, const char *label,
                      const char *value, bool first)
{
    const struct keydef *k = &sections[sec].keys[ki];
    struct strlist *l = field(p->cfg, sec, k);
    if (first)
        strlist_clear(l);
    const char *s = value;
    for (;;) {
        const char *comma = strchr(s, ',');
        const char *end = comma ? comma : s + strlen(s);
        const char *b = s, *e = end;
        while (b < e && isspace((unsigned char)*b))
            b++;
        while (e > b && isspace((unsigned char)e[-1]))
            e--;
        size_t len = (size_t)(e - b);
        if (len == 0) {
            if (!comma && s != value) {
                p->comma_line = line;
                p->comma_sec = sec;
                p->comma_key = ki;
                return 0;
            }
            fail(p, line, sec, label, -EINVAL,
                 "empty item in list \"%s\" (items are separated by single commas)", value);
            return -EINVAL;
        }
        char item[256];
        if (len >= sizeof(item)) {
            fail(p, line, sec, label, -EINVAL, "item \"%.*s...\" is longer than %zu characters", 20,
                 b, sizeof(item) - 1);
            return -EINVAL;
        }
        memcpy(item, b, len);
        item[len] = '\0';
        if (k->type == K_CURRENCIES) {
            for (size_t i = 0; i < len; i++)
                item[i] = (char)tolower((unsigned char)item[i]);
            bool ok = len <= 16;
            for (size_t i = 0; i < len; i++)
                ok = ok && (islower((unsigned char)item[i]) || isdigit((unsigned char)item[i]));
            if (!ok) {
                fail(p, line, sec, label, -EINVAL,
                     "\"%s\" is not a currency code (letters and digits, e.g. usd, eur, btc)",
                     item);
                return -EINVAL;
            }
        } else if (has_control(item, len)) {
            fail(p, line, sec, label, -EINVAL, "item \"%s\" contains a control character", item);
            return -EINVAL;
        }
        if (strlist_has(l, item, len)) {
            fail(p, line, sec, label, -EINVAL, "\"%s\" is listed twice", item);
            return -EINVAL;
        }
        if (strlist_push(l, item, len)) {
            fail_nomem(p, line);
            return -ENOMEM;
        }
        if (!comma)
            return 0;
        s = comma + 1;
    }
}

/* Parses `value` (non-empty) into key `ki` of section `sec`. `label` names the key in messages
 * ("port", or "port (COINGEST_DB_PORT)" for the environment). Returns 0 or -errno after fail(). */
static int apply(struct parse *p, int line, int sec, int ki, const char *label, const char *value)
{
    const struct keydef *k = &sections[sec].keys[ki];
    void *f = field(p->cfg, sec, k);
    uint64_t u;
    int r, e;
    char lo[32], hi[32];

    switch (k->type) {
    case K_LEVEL:
        if ((e = parse_enum(value, level_names, ARRAY_SIZE(level_names))) < 0)
            goto bad_enum;
        *(enum log_level *)f = (enum log_level)e;
        return 0;
    case K_FORMAT:
        if ((e = parse_enum(value, format_names, ARRAY_SIZE(format_names))) < 0)
            goto bad_enum;
        *(enum log_format *)f = (enum log_format)e;
        return 0;
    case K_PLAN:
        if ((e = parse_enum(value, plan_names, ARRAY_SIZE(plan_names))) < 0)
            goto bad_enum;
        *(enum api_plan *)f = (enum api_plan)e;
        return 0;
    case K_SSL_MODE:
        if ((e = parse_enum(value, ssl_mode_names, ARRAY_SIZE(ssl_mode_names))) < 0)
            goto bad_enum;
        *(enum db_ssl_mode *)f = (enum db_ssl_mode)e;
        return 0;
    case K_LISTEN:
        if (!valid_listen(value)) {
            fail(p, line, sec, label, -EINVAL,
                 "\"%s\" is not HOST:PORT (e.g. 127.0.0.1:9464 or [::1]:9464; empty disables)",
                 value);
            return -EINVAL;
        }
        goto string;
    case K_URL:
        if (!valid_url(value)) {
            fail(p, line, sec, label, -EINVAL,
                 "\"%s\" is not an http:// or https:// URL without query or fragment", value);
            return -EINVAL;
        }
        goto string;
    case K_STR:
    case K_OPTSTR:
    case K_SECRET:
    string:
        if (has_control(value, strlen(value))) {
            fail(p, line, sec, label, -EINVAL, "value contains a control character");
            return -EINVAL;
        }
        if (set_str(f, value)) {
            fail_nomem(p, line);
            return -ENOMEM;
        }
        return 0;
    case K_SECRET_FILE: {
        char **slot = sec == SEC_DATABASE ? &p->password_file : &p->api_key_file;
        if (set_str(slot, value)) {
            fail_nomem(p, line);
            return -ENOMEM;
        }
        return 0;
    }
    case K_DURATION:
        r = duration_parse(value, &u);
        if (r == -EINVAL) {
            fail(p, line, sec, label, -EINVAL, "\"%s\" is not a duration (e.g. 30s, 5m, 1h)",
                 value);
            return -EINVAL;
        }
        if (r == -ERANGE || u > k->max) {
            fail(p, line, sec, label, -EINVAL, "\"%s\" is too large", value);
            return -EINVAL;
        }
        if (u < k->min) {
            format_duration(k->min, lo, sizeof(lo));
            fail(p, line, sec, label, -EINVAL, "\"%s\" is too short (at least %s)", value, lo);
            return -EINVAL;
        }
        *(uint64_t *)f = u;
        return 0;
    case K_RATE:
        r = rate_parse(value, f);
        if (r) {
            fail(p, line, sec, label, -EINVAL,
                 r == -ERANGE ? "\"%s\" is too large a rate (at most 4294967295 per period)"
                              : "\"%s\" is not a rate (e.g. 30/min, 5/s, 100/h)",
                 value);
            return -EINVAL;
        }
        return 0;
    case K_SIZE:
        r = size_parse(value, &u);
        if (r == -EINVAL) {
            fail(p, line, sec, label, -EINVAL,
                 "\"%s\" is not a size (e.g. 65536, 64KiB, 4MiB, 1GiB)", value);
            return -EINVAL;
        }
        if (r == -ERANGE || u < k->min || u > k->max) {
            format_size(k->min, lo, sizeof(lo));
            if (k->max == UINT64_MAX)
                fail(p, line, sec, label, -EINVAL, "\"%s\" is out of range (at least %s)", value,
                     lo);
            else {
                format_size(k->max, hi, sizeof(hi));
                fail(p, line, sec, label, -EINVAL, "\"%s\" is out of range (%s to %s)", value, lo,
                     hi);
            }
            return -EINVAL;
        }
        *(uint64_t *)f = u;
        return 0;
    case K_BOOL:
        if (config_parse_bool(value, f)) {
            fail(p, line, sec, label, -EINVAL,
                 "\"%s\" is not a boolean (true/false, yes/no, on/off, 1/0)", value);
            return -EINVAL;
        }
        return 0;
    case K_U32:
    case K_U64:
        if (uint_parse(value, k->max, &u) || u < k->min) {
            fail(p, line, sec, label, -EINVAL, "\"%s\" is not an integer in %llu..%llu", value,
                 (unsigned long long)k->min, (unsigned long long)k->max);
            return -EINVAL;
        }
        if (k->type == K_U32)
            *(uint32_t *)f = (uint32_t)u;
        else
            *(uint64_t *)f = u;
        return 0;
    case K_IDS:
    case K_NAMES:
    case K_CURRENCIES:
        return apply_list(p, line, sec, ki, label, value, true);
    }
    return 0;

bad_enum : {
    char names[128];
    const char *what;
    if (k->type == K_LEVEL) {
        list_names(level_names, ARRAY_SIZE(level_names), names, sizeof(names));
        what = "a log level";
    } else if (k->type == K_FORMAT) {
        list_names(format_names, ARRAY_SIZE(format_names), names, sizeof(names));
        what = "a log format";
    } else if (k->type == K_SSL_MODE) {
        list_names(ssl_mode_names, ARRAY_SIZE(ssl_mode_names), names, sizeof(names));
        what = "an ssl_mode";
    } else {
        list_names(plan_names, ARRAY_SIZE(plan_names), names, sizeof(names));
        what = "a plan";
    }
    fail(p, line, sec, label, -EINVAL, "\"%s\" is not %s (%s)", value, what, names);
    return -EINVAL;
}
}

/* ---- the reader and the handler ----------------------------------------------------------- */

static void check_dangling_comma(struct parse *p)
{
    if (!p->comma_line)
        return;
    fail(p, p->comma_line, p->comma_sec, sections[p->comma_sec].keys[p->comma_key].name, -EINVAL,
         "list ends with a comma but no indented continuation line follows");
    p->comma_line = 0;
}

static void unknown_section(struct parse *p, const char *name)
{
    char known[256];
    if (strncmp(name, "source.", 7) == 0) {
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: unknown source \"%s\" (known: coingecko)", name,
             name + 7);
    } else if (strncmp(name, "job.", 4) == 0) {
        list_names(job_names, JOB_COUNT, known, sizeof(known));
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: unknown job \"%s\" (known: %s)", name, name + 4,
             known);
    } else {
        size_t n = 0;
        known[0] = '\0';
        for (int i = 0; i < SEC_COUNT; i++) {
            int w =
                snprintf(known + n, sizeof(known) - n, "%s[%s]", i ? ", " : "", sections[i].name);
            n += w > 0 ? (size_t)w : 0;
        }
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: unknown section (known: %s)", name, known);
    }
}

/* Handles a [section] line (trimmed, from '[' to the end). Returns what to hand to inih. */
static const char *section_line(struct parse *p, const char *s, size_t len, char *scratch,
                                size_t cap)
{
    const char *close = memchr(s, ']', len);
    if (!close) {
        fail(p, p->line, -1, NULL, -EINVAL, "section header without a closing \"]\"");
        p->sec = SEC_BAD;
        return "\n";
    }
    for (const char *c = close + 1; c < s + len; c++) {
        if (!isspace((unsigned char)*c)) {
            fail(p, p->line, -1, NULL, -EINVAL, "%.*s: unexpected text after \"]\"",
                 (int)(close + 1 - s), s);
            p->sec = SEC_BAD;
            return "\n";
        }
    }
    const char *b = s + 1, *e = close;
    while (b < e && isspace((unsigned char)*b))
        b++;
    while (e > b && isspace((unsigned char)e[-1]))
        e--;
    char name[64];
    size_t n = (size_t)(e - b);
    if (n >= sizeof(name))
        n = sizeof(name) - 1;
    memcpy(name, b, n);
    name[n] = '\0';
    int sec = find_section(name);
    if (sec < 0) {
        unknown_section(p, name);
        p->sec = SEC_BAD;
    } else if (p->sec_line[sec]) {
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: section appears twice (first at line %d)", name,
             p->sec_line[sec]);
        p->sec = SEC_BAD;
    } else {
        p->sec_line[sec] = p->line;
        p->sec = sec;
    }
    p->last_key = -1;
    /* inih still sees a header so that it resets its own state (no continuation across). */
    snprintf(scratch, cap, "[%s]\n", sec >= 0 ? name : "x");
    return scratch;
}

/* Where to cut a list of `len` bytes so the first piece fits in `room`: just after the last
 * comma that fits, or 0 when none does. */
static size_t list_cut(const char *t, size_t len, size_t room)
{
    for (size_t i = len < room ? len : room; i > 0; i--)
        if (t[i - 1] == ',')
            return i;
    return 0;
}

/* inih's line buffer holds 200 bytes. A longer list line (an `ids` list of a few dozen coins)
 * is handed over as its first piece followed by indented continuation pieces, cut after
 * commas, exactly as if the user had wrapped it; all pieces count as the same line. */
static char *next_piece(struct parse *p, char *str, int num)
{
    const char *t = p->pend;
    size_t tlen = p->pend_len;
    while (tlen && isspace((unsigned char)*t)) {
        t++;
        tlen--;
    }
    size_t room = (size_t)num - 3; /* leading blank, newline, NUL */
    size_t cut = tlen > room ? list_cut(t, tlen, room) : tlen;
    if (cut == 0) {
        fail(p, p->line, -1, NULL, -EINVAL, "an item of a list is longer than %d characters",
             num - 3);
        p->pend_len = 0;
        snprintf(str, (size_t)num, "\n");
        return str;
    }
    str[0] = ' ';
    memcpy(str + 1, t, cut);
    str[cut + 1] = '\n';
    str[cut + 2] = '\0';
    p->pend = t + cut;
    p->pend_len = tlen - cut;
    p->cont_line = true;
    return str;
}

/* inih's fgets-style reader: hands over one cleaned-up physical line per call (see the file
 * comment), so that the handler can use p->line. */
static char *read_line(char *str, int num, void *stream)
{
    struct parse *p = stream;
    if (p->pend_len)
        return next_piece(p, str, num);
    if (p->pos >= p->size) {
        check_dangling_comma(p);
        return NULL;
    }
    const char *s = p->data + p->pos;
    const char *nl = memchr(s, '\n', p->size - p->pos);
    size_t len = nl ? (size_t)(nl - s) : p->size - p->pos;
    p->pos += len + (nl ? 1 : 0);
    p->line++;
    p->cont_line = false;

    const char *out = "\n";
    char scratch[80];
    if (memchr(s, '\0', len)) {
        fail(p, p->line, -1, NULL, -EINVAL, "NUL byte in the file");
        goto done;
    }
    if (p->line == 1 && len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0) {
        s += 3;
        len -= 3;
    }
    /* Comments: ';' at the start or after whitespace, '#' at the start. */
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ';' && (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t')) {
            len = i;
            break;
        }
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    size_t lead = 0;
    while (lead < len && isspace((unsigned char)s[lead]))
        lead++;
    if (lead == len || s[lead] == '#')
        goto done;

    const char *t = s + lead;
    size_t tlen = len - lead;
    bool cont = lead > 0 && !memchr(t, '=', tlen) && !memchr(t, ':', tlen) && t[0] != '[';
    if (!cont)
        check_dangling_comma(p);
    if (t[0] == '[') {
        out = section_line(p, t, tlen, scratch, sizeof(scratch));
        goto done;
    }
    if (cont) {
        /* Keep one blank so that inih sees the indentation. */
        t = s + lead - 1;
        tlen++;
        p->cont_line = true;
    }
    if (num < 3) {
        fail(p, p->line, -1, NULL, -EINVAL, "line buffer too small");
        goto done;
    }
    if (tlen > (size_t)num - 2) {
        /* Only a list can be cut (after a comma); anything else this long is an error. */
        size_t cut = list_cut(t, tlen, (size_t)num - 2);
        if (cut == 0) {
            fail(p, p->line, -1, NULL, -EINVAL, "line is longer than %d characters", num - 2);
            goto done;
        }
        p->pend = t + cut;
        p->pend_len = tlen - cut;
        tlen = cut;
    }
    memcpy(str, t, tlen);
    str[tlen] = '\n';
    str[tlen + 1] = '\0';
    return str;

done:
    snprintf(str, (size_t)num, "%s", out);
    return str;
}

static int on_value(void *user, const char *section, const char *name, const char *value)
{
    struct parse *p = user;
    (void)section; /* the reader tracks sections itself */
    int line = p->line;
    int sec = p->sec;

    if (sec == SEC_BAD)
        return 1; /* reported at the header */
    if (sec == SEC_NONE) {
        fail(p, line, -1, name, -EINVAL, "key outside any [section]");
        return 0;
    }
    if (p->cont_line) {
        if (p->last_key < 0)
            return 1; /* continues a key already reported */
        const struct keydef *k = &sections[sec].keys[p->last_key];
        if (k->type != K_IDS && k->type != K_NAMES && k->type != K_CURRENCIES) {
            fail(p, line, sec, k->name, -EINVAL,
                 "indented continuation line (only ids, categories and vs_currencies may span "
                 "lines)");
            return 0;
        }
        p->comma_line = 0;
        bool first = !p->key_set[sec][p->last_key];
        p->key_set[sec][p->last_key] = true;
        return apply_list(p, line, sec, p->last_key, k->name, value, first) == 0;
    }
    p->last_key = -1;
    if (*name == '\0') {
        fail(p, line, sec, NULL, -EINVAL, "missing key name before \"=\"");
        return 0;
    }
    int ki = find_key(sec, name);
    if (ki < 0) {
        char known[512];
        size_t n = 0;
        known[0] = '\0';
        for (size_t i = 0; i < sections[sec].nkeys; i++) {
            int w = snprintf(known + n, sizeof(known) - n, "%s%s", i ? ", " : "",
                             sections[sec].keys[i].name);
            n += w > 0 ? (size_t)w : 0;
        }
        fail(p, line, sec, name, -EINVAL, "unknown key (known: %s)", known);
        return 0;
    }
    if (p->key_line[sec][ki]) {
        fail(p, line, sec, name, -EINVAL, "duplicate key (first set at line %d)",
             p->key_line[sec][ki]);
        return 0;
    }
    p->key_line[sec][ki] = line;
    p->last_key = ki;
    const struct keydef *k = &sections[sec].keys[ki];
    if (*value == '\0') {
        /* Empty means unset, except that an empty metrics_listen disables the endpoint. */
        if (k->type == K_LISTEN) {
            if (set_str(field(p->cfg, sec, k), "")) {
                fail_nomem(p, line);
                return 0;
            }
            p->key_set[sec][ki] = true;
        }
        return 1;
    }
    p->key_set[sec][ki] = true;
    return apply(p, line, sec, ki, name, value) == 0;
}

/* ---- after the file: environment, secrets, plan defaults, cross-checks ------------------- */

static int read_file(const char *path, size_t max, char **out, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int e = -errno;
        close(fd);
        return e;
    }
    if (S_ISDIR(st.st_mode)) {
        close(fd);
        return -EISDIR;
    }
    size_t cap = 4096, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return -ENOMEM;
    }
    for (;;) {
        if (n == cap) {
            if (cap >= max) {
                free(buf);
                close(fd);
                return -EFBIG;
            }
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb) {
                free(buf);
                close(fd);
                return -ENOMEM;
            }
            buf = nb;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int e = -errno;
            free(buf);
            close(fd);
            return e;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    if (n > max) {
        free(buf);
        return -EFBIG;
    }
    buf[n] = '\0';
    *out = buf;
    *len = n;
    return 0;
}

/* Reads the first line of a secret file into *out. `label` is the key ("password_file" or
 * "password_file (COINGEST_DB_PASSWORD_FILE)"). */
static int read_secret_file(struct parse *p, int line, int sec, const char *label, const char *path,
                            char **out)
{
    char *data;
    size_t len;
    int r = read_file(path, 64 * KIB, &data, &len);
    if (r == -EFBIG) {
        fail(p, line, sec, label, -EINVAL, "\"%s\" is larger than 64KiB", path);
        return -EINVAL;
    }
    if (r) {
        fail(p, line, sec, label, -EINVAL, "cannot read \"%s\": %s", path, strerror(-r));
        return -EINVAL;
    }
    size_t n = strcspn(data, "\n");
    if (n > 0 && data[n - 1] == '\r')
        n--;
    if (n == 0 || n > MAX_SECRET_LEN || memchr(data, '\0', n)) {
        fail(p, line, sec, label, -EINVAL,
             n == 0 ? "\"%s\" is empty (expected the secret on its first line)"
                    : "\"%s\" does not hold a secret on its first line (too long or binary)",
             path);
        free(data);
        return -EINVAL;
    }
    data[n] = '\0';
    free(*out);
    *out = data;
    return 0;
}

static const char *env_value(const char *name)
{
    const char *v = getenv(name);
    return v && *v ? v : NULL;
}

/* Resolves one secret: env value > env file > file *_file key > file value. */
static int resolve_secret(struct parse *p, int sec, const char *key, const char *file_key,
                          const char *env, const char *env_file, char *file_path, char **slot)
{
    int ki = find_key(sec, key), fi = find_key(sec, file_key);
    const char *ev = env_value(env), *ef = env_value(env_file);
    char label[96];
    if (ev && ef) {
        fail(p, 0, sec, key, -EINVAL, "%s and %s are both set (set one)", env, env_file);
        return -EINVAL;
    }
    if (ev)
        return set_str(slot, ev) ? (fail_nomem(p, 0), -ENOMEM) : 0;
    if (ef) {
        snprintf(label, sizeof(label), "%s (%s)", file_key, env_file);
        return read_secret_file(p, 0, sec, label, ef, slot);
    }
    if (file_path && p->key_set[sec][ki]) {
        int line = p->key_line[sec][ki] > p->key_line[sec][fi] ? p->key_line[sec][ki]
                                                               : p->key_line[sec][fi];
        fail(p, line, sec, line == p->key_line[sec][ki] ? key : file_key, -EINVAL,
             "set %s or %s, not both", key, file_key);
        return -EINVAL;
    }
    if (file_path)
        return read_secret_file(p, p->key_line[sec][fi], sec, file_key, file_path, slot);
    return 0;
}

static int apply_env(struct parse *p)
{
    static const struct {
        const char *env;
        const char *key;
    } overrides[] = {
        {"COINGEST_DB_HOST", "host"},     {"COINGEST_DB_PORT", "port"},
        {"COINGEST_DB_SOCKET", "socket"}, {"COINGEST_DB_USER", "user"},
        {"COINGEST_DB_NAME", "database"},
    };
    for (size_t i = 0; i < ARRAY_SIZE(overrides); i++) {
        const char *v = env_value(overrides[i].env);
        if (!v)
            continue;
        char label[64];
        snprintf(label, sizeof(label), "%s (%s)", overrides[i].key, overrides[i].env);
        int r = apply(p, 0, SEC_DATABASE, find_key(SEC_DATABASE, overrides[i].key), label, v);
        if (r)
            return r;
    }
    int r =
        resolve_secret(p, SEC_DATABASE, "password", "password_file", "COINGEST_DB_PASSWORD",
                       "COINGEST_DB_PASSWORD_FILE", p->password_file, &p->cfg->database.password);
    if (r)
        return r;
    return resolve_secret(p, SEC_COINGECKO, "api_key", "api_key_file", "COINGEST_COINGECKO_API_KEY",
                          "COINGEST_COINGECKO_API_KEY_FILE", p->api_key_file,
                          &p->cfg->coingecko.api_key);
}

static bool key_set(const struct parse *p, int sec, const char *key)
{
    return p->key_set[sec][find_key(sec, key)];
}

static int key_line(const struct parse *p, int sec, const char *key)
{
    return p->key_line[sec][find_key(sec, key)];
}

static int apply_plan_defaults(struct parse *p)
{
    struct cfg_source *src = &p->cfg->coingecko;
    const struct plan_defaults *d = &plan_defaults[src->plan];
    if (!key_set(p, SEC_COINGECKO, "base_url") && set_str(&src->base_url, d->base_url)) {
        fail_nomem(p, 0);
        return -ENOMEM;
    }
    if (!key_set(p, SEC_COINGECKO, "rate_limit"))
        src->rate_limit = d->rate;
    if (!key_set(p, SEC_COINGECKO, "plan_limit"))
        src->plan_limit = d->rate;
    if (!key_set(p, SEC_COINGECKO, "monthly_credits"))
        src->monthly_credits = d->monthly_credits;
    return 0;
}

static int finish_ids(struct parse *p)
{
    struct strlist *ids = &p->cfg->universe.ids;
    if (!key_set(p, SEC_UNIVERSE, "ids") || ids->n == 0) {
        p->cfg->universe.all = true;
        strlist_clear(ids);
        return 0;
    }
    if (strlist_has(ids, "all", 3)) {
        if (ids->n > 1) {
            fail(p, key_line(p, SEC_UNIVERSE, "ids"), SEC_UNIVERSE, "ids", -EINVAL,
                 "\"all\" cannot be combined with other ids");
            return -EINVAL;
        }
        strlist_clear(ids);
        p->cfg->universe.all = true;
        return 0;
    }
    p->cfg->universe.all = false;
    return 0;
}

/* The line to blame for a cross-field error: the key's own line, or else the line of `other`. */
static int blame_line(const struct parse *p, int sec, const char *key, const char *other)
{
    int l = key_line(p, sec, key);
    return l ? l : key_line(p, sec, other);
}

static int cross_check(struct parse *p)
{
    const struct config *cfg = p->cfg;
    const struct cfg_source *src = &cfg->coingecko;
    char a[32], b[32];

    if (src->plan != PLAN_PUBLIC && !src->api_key) {
        fail(p, key_line(p, SEC_COINGECKO, "plan"), SEC_COINGECKO, "plan", -EINVAL,
             "plan \"%s\" needs an API key (set api_key or api_key_file, or "
             "COINGEST_COINGECKO_API_KEY or COINGEST_COINGECKO_API_KEY_FILE)",
             plan_names[src->plan]);
        return -EINVAL;
    }
    if (src->plan == PLAN_PUBLIC && src->api_key) {
        int line = key_line(p, SEC_COINGECKO, "api_key");
        if (!line)
            line = key_line(p, SEC_COINGECKO, "api_key_file");
        const char *label = "api_key";
        if (env_value("COINGEST_COINGECKO_API_KEY")) {
            line = 0;
            label = "api_key (COINGEST_COINGECKO_API_KEY)";
        } else if (env_value("COINGEST_COINGECKO_API_KEY_FILE")) {
            line = 0;
            label = "api_key (COINGEST_COINGECKO_API_KEY_FILE)";
        } else if (!key_set(p, SEC_COINGECKO, "api_key")) {
            label = "api_key_file";
        }
        fail(p, line, SEC_COINGECKO, label, -EINVAL,
             "an API key is set but plan is public (set plan = demo or plan = pro)");
        return -EINVAL;
    }
    if (src->backoff_cap_ms < src->backoff_base_ms) {
        format_duration(src->backoff_cap_ms, a, sizeof(a));
        format_duration(src->backoff_base_ms, b, sizeof(b));
        fail(p, blame_line(p, SEC_COINGECKO, "backoff_cap", "backoff_base"), SEC_COINGECKO,
             key_line(p, SEC_COINGECKO, "backoff_cap") ? "backoff_cap" : "backoff_base", -EINVAL,
             "backoff_cap (%s) is less than backoff_base (%s)", a, b);
        return -EINVAL;
    }
    for (int j = 0; j < JOB_COUNT; j++) {
        int sec = SEC_JOB_ASSETS + j;
        const struct cfg_job *job = &cfg->jobs[j];
        static const char *const keys[] = {"offset", "jitter"};
        const uint64_t vals[] = {job->offset_ms, job->jitter_ms};
        for (int i = 0; i < 2; i++) {
            if (vals[i] < job->every_ms)
                continue;
            format_duration(vals[i], a, sizeof(a));
            format_duration(job->every_ms, b, sizeof(b));
            fail(p, blame_line(p, sec, keys[i], "every"), sec,
                 key_line(p, sec, keys[i]) ? keys[i] : "every", -EINVAL,
                 "%s (%s) must be less than every (%s)", keys[i], a, b);
            return -EINVAL;
        }
    }
    return 0;
}

/* The [database] TLS keys must agree with each other, and the files they name must be
 * readable now (the writers read them at each connect). */
static int check_database_tls(struct parse *p)
{
    const struct config *cfg = p->cfg;
    enum db_ssl_mode mode = cfg->database.ssl_mode;
    const char *mname = ssl_mode_names[mode];
    int mline = key_line(p, SEC_DATABASE, "ssl_mode");
    static const char *const files[] = {"ssl_ca", "ssl_cert", "ssl_key"};
    const char *const paths[] = {cfg->database.ssl_ca, cfg->database.ssl_cert,
                                 cfg->database.ssl_key};

    if (mode >= DB_SSL_VERIFY_CA && !paths[0]) {
        fail(p, mline, SEC_DATABASE, "ssl_mode", -EINVAL,
             "%s needs ssl_ca (the PEM file of the CA that signed the server's certificate)",
             mname);
        return -EINVAL;
    }
    if (mode < DB_SSL_VERIFY_CA && paths[0]) {
        fail(p, blame_line(p, SEC_DATABASE, "ssl_ca", "ssl_mode"), SEC_DATABASE, "ssl_ca", -EINVAL,
             "ssl_ca is only used by ssl_mode = verify_ca or verify_identity (it is %s)", mname);
        return -EINVAL;
    }
    if (!paths[1] != !paths[2]) {
        const char *set = paths[1] ? "ssl_cert" : "ssl_key";
        fail(p, key_line(p, SEC_DATABASE, set), SEC_DATABASE, set, -EINVAL,
             "ssl_cert and ssl_key go together (set both, or neither)");
        return -EINVAL;
    }
    if (mode == DB_SSL_DISABLED && paths[1]) {
        fail(p, blame_line(p, SEC_DATABASE, "ssl_cert", "ssl_mode"), SEC_DATABASE, "ssl_cert",
             -EINVAL, "a client certificate is set but ssl_mode is disabled");
        return -EINVAL;
    }
    for (size_t i = 0; i < ARRAY_SIZE(files); i++) {
        if (paths[i] && access(paths[i], R_OK) != 0) {
            fail(p, key_line(p, SEC_DATABASE, files[i]), SEC_DATABASE, files[i], -EINVAL,
                 "cannot read \"%s\": %s", paths[i], strerror(errno));
            return -EINVAL;
        }
    }
    return 0;
}

int config_load(const char *path, struct config **out, char *err, size_t errlen)
{
    struct parse p = {.path = path ? path : "(null)", .err = err, .errlen = errlen};
    char *data = NULL;
    size_t len = 0;
    int r;

    *out = NULL;
    if (err && errlen)
        err[0] = '\0';
    if (!path) {
        fail(&p, 0, -1, NULL, -EINVAL, "no configuration file given");
        return -EINVAL;
    }
    r = read_file(path, MAX_FILE_BYTES, &data, &len);
    if (r) {
        if (err && errlen) {
            if (r == -EFBIG)
                snprintf(err, errlen, "%s: larger than 1MiB; is this a configuration file?", path);
            else
                snprintf(err, errlen, "%s: cannot read: %s", path, strerror(-r));
        }
        return r == -EFBIG ? -EINVAL : r;
    }
    p.cfg = config_defaults();
    if (!p.cfg || !(p.cfg->path = strdup(path))) {
        fail_nomem(&p, 0);
        goto fail;
    }
    p.data = data;
    p.size = len;
    p.sec = SEC_NONE;
    p.last_key = -1;

    r = ini_parse_stream(read_line, &p, on_value, &p);
    if (r < 0) {
        fail_nomem(&p, 0);
        goto fail;
    }
    /* inih reports lines it could not parse itself (no '=', and so on) without calling us. */
    if (r > 0)
        fail(&p, r, -1, NULL, -EINVAL,
             "syntax error (expected \"key = value\", \"[section]\" or a comment)");
    if (p.failed)
        goto fail;
    if (finish_ids(&p) || apply_env(&p) || apply_plan_defaults(&p) || cross_check(&p) ||
        check_database_tls(&p))
        goto fail;

    free(data);
    free(p.password_file);
    free(p.api_key_file);
    *out = p.cfg;
    return 0;

fail:
    free(data);
    free(p.password_file);
    free(p.api_key_file);
    config_free(p.cfg);
    return p.rc ? p.rc : -EINVAL;
}

/* ---- dump and diff ---------------------------------------------------------------------- */

static void dump_list(FILE *out, const char *key, const struct strlist *l)
{
    /* Long lists wrap onto indented continuation lines, which config_load reads back. */
    size_t col = (size_t)fprintf(out, "%s =", key);
    for (size_t i = 0; i < l->n; i++) {
        size_t w = strlen(l->items[i]);
        if (i > 0 && col + w + 2 > 96) {
            fputs(",\n   ", out);
            col = 3;
        } else if (i > 0) {
            fputc(',', out);
            col++;
        }
        fprintf(out, " %s", l->items[i]);
        col += w + 1;
    }
    fputc('\n', out);
}

static void dump_key(FILE *out, const struct config *cfg, int sec, const struct keydef *k)
{
    const void *f = cfield(cfg, sec, k);
    char buf[64];
    switch (k->type) {
    case K_LEVEL:
        fprintf(out, "%s = %s\n", k->name, level_names[*(const enum log_level *)f]);
        break;
    case K_FORMAT:
        fprintf(out, "%s = %s\n", k->name, format_names[*(const enum log_format *)f]);
        break;
    case K_PLAN:
        fprintf(out, "%s = %s\n", k->name, plan_names[*(const enum api_plan *)f]);
        break;
    case K_SSL_MODE:
        fprintf(out, "%s = %s\n", k->name, ssl_mode_names[*(const enum db_ssl_mode *)f]);
        break;
    case K_STR:
    case K_OPTSTR:
    case K_LISTEN:
    case K_URL: {
        const char *s = *(char *const *)f;
        fprintf(out, s && *s ? "%s = %s\n" : "%s =\n", k->name, s ? s : "");
        break;
    }
    case K_SECRET:
        fprintf(out, *(char *const *)f ? "%s = " MASK "\n" : "%s =\n", k->name);
        break;
    case K_SECRET_FILE:
        break; /* already read into the secret */
    case K_DURATION:
        format_duration(*(const uint64_t *)f, buf, sizeof(buf));
        fprintf(out, "%s = %s\n", k->name, buf);
        break;
    case K_RATE:
        format_rate(f, buf, sizeof(buf));
        fprintf(out, "%s = %s\n", k->name, buf);
        break;
    case K_SIZE:
        format_size(*(const uint64_t *)f, buf, sizeof(buf));
        fprintf(out, "%s = %s\n", k->name, buf);
        break;
    case K_BOOL:
        fprintf(out, "%s = %s\n", k->name, *(const bool *)f ? "true" : "false");
        break;
    case K_U32:
        fprintf(out, "%s = %u\n", k->name, *(const uint32_t *)f);
        break;
    case K_U64:
        fprintf(out, "%s = %llu\n", k->name, (unsigned long long)*(const uint64_t *)f);
        break;
    case K_IDS:
        if (cfg->universe.all)
            fprintf(out, "%s = all\n", k->name);
        else
            dump_list(out, k->name, f);
        break;
    case K_NAMES:
    case K_CURRENCIES:
        dump_list(out, k->name, f);
        break;
    }
}

void config_dump(const struct config *cfg, FILE *out)
{
    fprintf(out, "; coingest effective configuration (%s), secrets masked\n",
            cfg->path ? cfg->path : "built-in defaults");
    for (int sec = 0; sec < SEC_COUNT; sec++) {
        fprintf(out, "\n[%s]\n", sections[sec].name);
        for (size_t i = 0; i < sections[sec].nkeys; i++)
            dump_key(out, cfg, sec, &sections[sec].keys[i]);
    }
}

static bool str_equal(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool key_equal(const struct config *a, const struct config *b, int sec,
                      const struct keydef *k)
{
    const void *fa = cfield(a, sec, k), *fb = cfield(b, sec, k);
    switch (k->type) {
    case K_LEVEL:
        return *(const enum log_level *)fa == *(const enum log_level *)fb;
    case K_FORMAT:
        return *(const enum log_format *)fa == *(const enum log_format *)fb;
    case K_PLAN:
        return *(const enum api_plan *)fa == *(const enum api_plan *)fb;
    case K_SSL_MODE:
        return *(const enum db_ssl_mode *)fa == *(const enum db_ssl_mode *)fb;
    case K_STR:
    case K_OPTSTR:
    case K_LISTEN:
    case K_URL:
    case K_SECRET:
        return str_equal(*(char *const *)fa, *(char *const *)fb);
    case K_SECRET_FILE:
        return true;
    case K_DURATION:
    case K_SIZE:
    case K_U64:
        return *(const uint64_t *)fa == *(const uint64_t *)fb;
    case K_RATE: {
        const struct rate *ra = fa, *rb = fb;
        return ra->count == rb->count && ra->period_ms == rb->period_ms;
    }
    case K_BOOL:
        return *(const bool *)fa == *(const bool *)fb;
    case K_U32:
        return *(const uint32_t *)fa == *(const uint32_t *)fb;
    case K_IDS:
        return a->universe.all == b->universe.all && strlist_equal(fa, fb);
    case K_NAMES:
    case K_CURRENCIES:
        return strlist_equal(fa, fb);
    }
    return true;
}

void config_diff(const struct config *a, const struct config *b, struct config_diff *d)
{
    memset(d, 0, sizeof(*d));
    for (int sec = 0; sec < SEC_COUNT; sec++) {
        for (size_t i = 0; i < sections[sec].nkeys; i++) {
            const struct keydef *k = &sections[sec].keys[i];
            if (key_equal(a, b, sec, k))
                continue;
            switch (k->reload) {
            case R_LOG:
                d->daemon_log = true;
                break;
            case R_RESTART:
                d->restart_needed = true;
                break;
            case R_LIVE:
                break;
            case R_DATABASE:
                d->database = true;
                break;
            case R_RATE:
                d->source_rate = true;
                break;
            case R_SOURCE:
                d->source_other = true;
                break;
            case R_UNIVERSE:
                d->universe = true;
                break;
            case R_JOB:
                d->job[sections[sec].job] = true;
                break;
            }
        }
    }
}
