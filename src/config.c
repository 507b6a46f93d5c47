/*
 * config: reads the INI file (through libinih) and the environment into a validated, immutable
 * struct config.
 *
 * How it works. The whole file is read into memory, then handed to ini_parse_stream() through
 * our own line reader. Debian's libinih is built without INI_HANDLER_LINENO, so the handler is
 * never told which line it is on; the reader counts lines instead (inih asks for exactly one line
 * before each handler call, so the reader's count is the handler's line). The reader also makes
 * the parse independent of how inih was built: it removes comments itself (a ';' or '#' at the
 * start of a line or after whitespace), unquotes a value written in double quotes (inside them
 * ';' and '#' are literal; the value reaches the handler through p->qval, because inih would
 * otherwise cut it at an inline comment and trim its blanks), strips a UTF-8 BOM, rejects lines
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

#include "coingest/budget.h"

#include "coingest/runner.h"
#include "coingest/source.h"
#include "coingest/util.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <ini.h>
#include <pthread.h>
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
    K_PLAN,        /* uint32_t index into the section's source's plans */
    K_SSL_MODE,    /* enum db_ssl_mode */
    K_STR,         /* char *, has a default */
    K_OPTSTR,      /* char *, NULL when unset */
    K_LISTEN,      /* char *, HOST:PORT or "" */
    K_URL,         /* char *, http(s)://... */
    K_SECRET,      /* char *, NULL when unset, masked by the dump */
    K_SECRET_FILE, /* not stored in the config: read into the matching K_SECRET */
    K_DURATION,    /* uint64_t ms */
    K_EVERY,       /* a job's every_ms: a duration, or `auto` (cfg_job.every_auto) */
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
    R_JOBKEY,   /* a job's own key: its next run uses it */
};

struct keydef {
    const char *name;
    enum ktype type;
    size_t off; /* from the section's base (built-in keys) */
    uint64_t min, max;
    enum reload reload;
    int value; /* a source's or job's own key: 1 + index into its values; 0 for built-in keys */
};

#define DAEMON(f)   offsetof(struct config, daemon.f)
#define DB(f)       offsetof(struct cfg_database, f)
#define SRC(f)      offsetof(struct cfg_source, f)
#define UNIVERSE(f) offsetof(struct config, universe.f)
#define CLUSTER(f)  offsetof(struct config, cluster.f)
#define JOB(f)      offsetof(struct cfg_job, f)
#define NOLIMIT     0, UINT64_MAX

static const struct keydef daemon_keys[] = {
    {"log_level", K_LEVEL, DAEMON(log_level), NOLIMIT, R_LOG, 0},
    {"log_format", K_FORMAT, DAEMON(log_format), NOLIMIT, R_LOG, 0},
    {"metrics_listen", K_LISTEN, DAEMON(metrics_listen), NOLIMIT, R_RESTART, 0},
    {"spool_dir", K_STR, DAEMON(spool_dir), NOLIMIT, R_RESTART, 0},
    {"shutdown_timeout", K_DURATION, DAEMON(shutdown_timeout_ms), NOLIMIT, R_LIVE, 0},
    {"health_db_grace", K_DURATION, DAEMON(health_db_grace_ms), NOLIMIT, R_LIVE, 0},
};

static const struct keydef database_keys[] = {
    {"host", K_STR, DB(host), NOLIMIT, R_DATABASE, 0},
    {"port", K_U32, DB(port), 1, 65535, R_DATABASE, 0},
    {"socket", K_OPTSTR, DB(socket), NOLIMIT, R_DATABASE, 0},
    {"user", K_STR, DB(user), NOLIMIT, R_DATABASE, 0},
    {"password", K_SECRET, DB(password), NOLIMIT, R_DATABASE, 0},
    {"password_file", K_SECRET_FILE, 0, NOLIMIT, R_DATABASE, 0},
    {"database", K_STR, DB(database), NOLIMIT, R_DATABASE, 0},
    {"workers", K_U32, DB(workers), 1, 64, R_DATABASE, 0},
    {"batch_rows", K_U32, DB(batch_rows), 1, 1000000, R_DATABASE, 0},
    {"batch_bytes", K_SIZE, DB(batch_bytes), KIB, GIB, R_DATABASE, 0},
    {"flush_interval", K_DURATION, DB(flush_interval_ms), 1, UINT64_MAX, R_DATABASE, 0},
    {"max_pending_rows", K_U64, DB(max_pending_rows), 1, UINT64_MAX, R_DATABASE, 0},
    {"binary_writes", K_BOOL, DB(binary_writes), NOLIMIT, R_DATABASE, 0},
    {"connect_timeout", K_DURATION, DB(connect_timeout_ms), MS_SECOND, UINT64_MAX, R_DATABASE, 0},
    {"auto_migrate", K_BOOL, DB(auto_migrate), NOLIMIT, R_DATABASE, 0},
    {"migrations_dir", K_OPTSTR, DB(migrations_dir), NOLIMIT, R_DATABASE, 0},
    {"ssl_mode", K_SSL_MODE, DB(ssl_mode), NOLIMIT, R_DATABASE, 0},
    {"ssl_ca", K_OPTSTR, DB(ssl_ca), NOLIMIT, R_DATABASE, 0},
    {"ssl_cert", K_OPTSTR, DB(ssl_cert), NOLIMIT, R_DATABASE, 0},
    {"ssl_key", K_OPTSTR, DB(ssl_key), NOLIMIT, R_DATABASE, 0},
    {"hosts", K_OPTSTR, DB(hosts), NOLIMIT, R_DATABASE, 0},
};

static const struct keydef cluster_keys[] = {
    {"enabled", K_BOOL, CLUSTER(enabled), NOLIMIT, R_RESTART, 0},
    {"instance", K_OPTSTR, CLUSTER(instance), NOLIMIT, R_RESTART, 0},
    {"lease", K_DURATION, CLUSTER(lease_ms), 2 * MS_SECOND, UINT64_MAX, R_RESTART, 0},
    {"renew", K_DURATION, CLUSTER(renew_ms), 100, UINT64_MAX, R_RESTART, 0},
};

static const struct keydef source_keys[] = {
    {"enabled", K_BOOL, SRC(enabled), NOLIMIT, R_RESTART, 0},
    {"base_url", K_URL, SRC(base_url), NOLIMIT, R_SOURCE, 0},
    {"plan", K_PLAN, SRC(plan), NOLIMIT, R_SOURCE, 0},
    {"api_key", K_SECRET, SRC(api_key), NOLIMIT, R_SOURCE, 0},
    {"api_key_file", K_SECRET_FILE, 0, NOLIMIT, R_SOURCE, 0},
    {"rate_limit", K_RATE, SRC(rate_limit), NOLIMIT, R_RATE, 0},
    {"burst", K_U32, SRC(burst), 1, 1000000, R_RATE, 0},
    {"timeout", K_DURATION, SRC(timeout_ms), 1, UINT64_MAX, R_SOURCE, 0},
    {"connect_timeout", K_DURATION, SRC(connect_timeout_ms), 1, UINT64_MAX, R_SOURCE, 0},
    {"max_retries", K_U32, SRC(max_retries), 0, 100, R_SOURCE, 0},
    {"backoff_base", K_DURATION, SRC(backoff_base_ms), 1, UINT64_MAX, R_SOURCE, 0},
    {"backoff_cap", K_DURATION, SRC(backoff_cap_ms), 1, UINT64_MAX, R_SOURCE, 0},
    {"max_body_size", K_SIZE, SRC(max_body_bytes), KIB, UINT64_MAX, R_SOURCE, 0},
    {"max_url_bytes", K_U32, SRC(max_url_bytes), 256, 1048576, R_SOURCE, 0},
    {"max_in_flight", K_U32, SRC(max_in_flight), 0, 64, R_SOURCE, 0},
    {"ca_file", K_OPTSTR, SRC(ca_file), NOLIMIT, R_SOURCE, 0},
    {"monthly_credits", K_U64, SRC(monthly_credits), NOLIMIT, R_SOURCE, 0},
    {"credit_reserve", K_U64, SRC(credit_reserve), NOLIMIT, R_SOURCE, 0},
    {"plan_limit", K_RATE, SRC(plan_limit), NOLIMIT, R_SOURCE, 0},
};

static const struct keydef universe_keys[] = {
    {"ids", K_IDS, UNIVERSE(ids), NOLIMIT, R_UNIVERSE, 0},
    {"top", K_U32, UNIVERSE(top), 0, UINT32_MAX, R_UNIVERSE, 0},
    {"categories", K_NAMES, UNIVERSE(categories), NOLIMIT, R_UNIVERSE, 0},
    {"vs_currencies", K_CURRENCIES, UNIVERSE(vs_currencies), NOLIMIT, R_UNIVERSE, 0},
};

static const struct keydef job_keys[] = {
    {"enabled", K_BOOL, JOB(enabled), NOLIMIT, R_JOB, 0},
    {"every", K_EVERY, JOB(every_ms), 1, UINT64_MAX, R_JOB, 0},
    {"align", K_BOOL, JOB(align), NOLIMIT, R_JOB, 0},
    {"offset", K_DURATION, JOB(offset_ms), NOLIMIT, R_JOB, 0},
    {"jitter", K_DURATION, JOB(jitter_ms), NOLIMIT, R_JOB, 0},
    {"run_at_start", K_BOOL, JOB(run_at_start), NOLIMIT, R_JOB, 0},
};

/* The sections, in the order config_dump writes them: [daemon], [database], one
 * [source.NAME] per registered source, [universe], one [job.NAME] per job, [aliases]; the ones
 * from the registry are built once (sections_init). [aliases] has no key table: its keys are
 * free-form (SK_FREE), each line an entry of a list (see alias_line). */
enum section_id {
    SEC_DAEMON,
    SEC_DATABASE,
    SEC_CLUSTER,
    SEC_FIRST_SOURCE,
    SEC_NONE = -1, /* before the first header */
    SEC_BAD = -2,  /* inside a section already reported as wrong */
};

enum section_kind { SK_ROOT, SK_SOURCE, SK_JOB, SK_FREE };

struct section {
    char name[64];
    const struct keydef *keys;
    size_t nkeys;
    enum section_kind kind;
    size_t index; /* SK_SOURCE, SK_JOB: index into config.sources / config.jobs */
    const struct source_def *src;
};

/* Sources and jobs a config can hold: the config_diff masks have one bit each. */
#define MAX_SOURCES 64
#define MAX_JOBS    64

static struct section *sections;
static int nsections;
static int sec_universe; /* after the sources */
#define SEC_UNIVERSE sec_universe
static size_t njobs_total;
static size_t max_keys;
static int sections_rc;
static pthread_once_t sections_once = PTHREAD_ONCE_INIT;

/* A section's key table: the generic keys followed by the definition's own. */
static struct keydef *merge_keys(const struct keydef *base, size_t nbase, const struct cfg_key *own,
                                 size_t nown, enum reload reload)
{
    static const enum ktype types[] = {
        [CFG_KEY_U64] = K_U64,    [CFG_KEY_BOOL] = K_BOOL,   [CFG_KEY_DURATION] = K_DURATION,
        [CFG_KEY_STR] = K_OPTSTR, [CFG_KEY_NAMES] = K_NAMES, [CFG_KEY_CURRENCIES] = K_CURRENCIES,
    };
    struct keydef *k = calloc(nbase + nown, sizeof(*k));
    if (!k)
        return NULL;
    memcpy(k, base, nbase * sizeof(*k));
    for (size_t i = 0; i < nown; i++) {
        bool bounded = own[i].type == CFG_KEY_U64 || own[i].type == CFG_KEY_DURATION;
        k[nbase + i] = (struct keydef){.name = own[i].name,
                                       .type = types[own[i].type],
                                       .min = bounded ? own[i].min : 0,
                                       .max = bounded && own[i].max ? own[i].max : UINT64_MAX,
                                       .reload = reload,
                                       .value = (int)i + 1};
    }
    return k;
}

static void sections_init(void)
{
    size_t njobs = 0;
    for (size_t i = 0; i < source_count; i++)
        njobs += source_defs[i]->njobs;
    if (source_count > MAX_SOURCES || njobs > MAX_JOBS) {
        sections_rc = -E2BIG;
        return;
    }
    nsections = SEC_FIRST_SOURCE + (int)(source_count + 1 + njobs + 1);
    sec_universe = SEC_FIRST_SOURCE + (int)source_count;
    sections = calloc((size_t)nsections, sizeof(*sections));
    if (!sections) {
        sections_rc = -ENOMEM;
        return;
    }
    sections[SEC_DAEMON] = (struct section){
        .name = "daemon", .keys = daemon_keys, .nkeys = ARRAY_SIZE(daemon_keys), .kind = SK_ROOT};
    sections[SEC_DATABASE] = (struct section){.name = "database",
                                              .keys = database_keys,
                                              .nkeys = ARRAY_SIZE(database_keys),
                                              .kind = SK_ROOT};
    sections[SEC_CLUSTER] = (struct section){.name = "cluster",
                                             .keys = cluster_keys,
                                             .nkeys = ARRAY_SIZE(cluster_keys),
                                             .kind = SK_ROOT};
    sections[SEC_UNIVERSE] = (struct section){.name = "universe",
                                              .keys = universe_keys,
                                              .nkeys = ARRAY_SIZE(universe_keys),
                                              .kind = SK_ROOT};
    int sec = SEC_FIRST_SOURCE;
    for (size_t i = 0; i < source_count; i++, sec++) {
        const struct source_def *d = source_defs[i];
        struct section *s = &sections[sec];
        snprintf(s->name, sizeof(s->name), "source.%s", d->name);
        s->kind = SK_SOURCE;
        s->index = i;
        s->src = d;
        /* A source without a remote API (no plans) has only `enabled` of the generic keys:
         * the others (URL, key, rates, timeouts) would mean nothing to it. */
        size_t nbase = d->nplans ? ARRAY_SIZE(source_keys) : 1;
        s->nkeys = nbase + d->nkeys;
        if (!(s->keys = merge_keys(source_keys, nbase, d->keys, d->nkeys, R_SOURCE))) {
            sections_rc = -ENOMEM;
            return;
        }
    }
    size_t j = 0;
    sec++; /* [universe] */
    for (size_t i = 0; i < source_count; i++) {
        for (size_t k = 0; k < source_defs[i]->njobs; k++, j++, sec++) {
            const struct job_def *jd = source_defs[i]->jobs[k];
            struct section *s = &sections[sec];
            snprintf(s->name, sizeof(s->name), "job.%s", jd->name);
            s->kind = SK_JOB;
            s->index = j;
            s->src = source_defs[i];
            s->nkeys = ARRAY_SIZE(job_keys) + jd->nkeys;
            if (!(s->keys =
                      merge_keys(job_keys, ARRAY_SIZE(job_keys), jd->keys, jd->nkeys, R_JOBKEY))) {
                sections_rc = -ENOMEM;
                return;
            }
        }
    }
    sections[sec] = (struct section){.name = "aliases", .kind = SK_FREE};
    njobs_total = njobs;
    for (int i = 0; i < nsections; i++)
        if (sections[i].nkeys > max_keys)
            max_keys = sections[i].nkeys;
}

static int sections_ready(void)
{
    pthread_once(&sections_once, sections_init);
    return sections_rc;
}

/* The struct a section's built-in keys live in. */
static void *section_base(struct config *cfg, int sec)
{
    if (sec == SEC_DATABASE)
        return &cfg->database;
    switch (sections[sec].kind) {
    case SK_SOURCE:
        return &cfg->sources[sections[sec].index];
    case SK_JOB:
        return &cfg->jobs[sections[sec].index];
    default:
        return cfg;
    }
}

/* The value of a source's or job's own key (k->value > 0). */
static struct cfg_value *own_slot(struct config *cfg, int sec, const struct keydef *k)
{
    struct cfg_value *values = sections[sec].kind == SK_SOURCE
                                   ? cfg->sources[sections[sec].index].values
                                   : cfg->jobs[sections[sec].index].values;
    return &values[k->value - 1];
}

static void *field(struct config *cfg, int sec, const struct keydef *k)
{
    if (k->value == 0)
        return (char *)section_base(cfg, sec) + k->off;
    struct cfg_value *v = own_slot(cfg, sec, k);
    switch (k->type) {
    case K_BOOL:
        return &v->b;
    case K_OPTSTR:
        return &v->s;
    case K_NAMES:
    case K_CURRENCIES:
        return &v->list;
    default:
        return &v->u;
    }
}

static const void *cfield(const struct config *cfg, int sec, const struct keydef *k)
{
    return field((struct config *)cfg, sec, k);
}

static int find_key(int sec, const char *name)
{
    for (size_t i = 0; i < sections[sec].nkeys; i++)
        if (strcmp(sections[sec].keys[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Other names a section answers to: a job's section under the name its issue gave it. */
static const struct {
    const char *alias, *name;
} section_aliases[] = {
    {"retention", "job.retention"}, /* the analytics retention job (docs/analytics.md) */
};

static int find_section(const char *name)
{
    for (int i = 0; i < nsections; i++)
        if (strcmp(sections[i].name, name) == 0)
            return i;
    for (size_t a = 0; a < ARRAY_SIZE(section_aliases); a++)
        if (strcmp(section_aliases[a].alias, name) == 0)
            return find_section(section_aliases[a].name);
    return -1;
}

static int job_section(size_t job)
{
    return SEC_FIRST_SOURCE + (int)(source_count + 1 + job);
}

static int source_section(size_t src)
{
    return SEC_FIRST_SOURCE + (int)src;
}

int config_job_index(const struct config *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->njobs; i++)
        if (strcmp(cfg->jobs[i].name, name) == 0)
            return (int)i;
    return -1;
}

const struct cfg_source *config_source(const struct config *cfg, const char *name)
{
    for (size_t i = 0; name && i < cfg->nsources; i++)
        if (strcmp(cfg->sources[i].name, name) == 0)
            return &cfg->sources[i];
    return NULL;
}

const char *config_plan_name(const struct cfg_source *src)
{
    return src->def && src->plan < src->def->nplans ? src->def->plans[src->plan].name : "?";
}

static const struct cfg_value *own_value(const struct cfg_key *keys, size_t n,
                                         const struct cfg_value *values, const char *key)
{
    for (size_t i = 0; values && i < n; i++)
        if (strcmp(keys[i].name, key) == 0)
            return &values[i];
    return NULL;
}

const struct cfg_value *config_source_value(const struct cfg_source *src, const char *key)
{
    return src->def ? own_value(src->def->keys, src->def->nkeys, src->values, key) : NULL;
}

const struct cfg_value *config_job_value(const struct cfg_job *job, const char *key)
{
    return job->def ? own_value(job->def->keys, job->def->nkeys, job->values, key) : NULL;
}

/* ---- defaults --------------------------------------------------------------------------- */

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

static int own_defaults(struct config *cfg);

/* A source's plan-dependent defaults. */
static int plan_defaults(struct cfg_source *src, bool base_url, bool rate, bool plan_limit,
                         bool credits)
{
    if (src->def->nplans == 0)
        return 0; /* a source without a remote API */
    const struct source_plan *pl = &src->def->plans[src->plan];
    if (base_url && set_str(&src->base_url, pl->base_url))
        return -ENOMEM;
    if (rate)
        src->rate_limit = pl->rate_limit;
    if (plan_limit)
        src->plan_limit = pl->rate_limit;
    if (credits)
        src->monthly_credits = pl->monthly_credits;
    return 0;
}

uint32_t config_source_in_flight(const struct cfg_source *src)
{
    if (src->max_in_flight)
        return src->max_in_flight;
    const struct rate *r = &src->rate_limit;
    uint64_t per_s = r->period_ms ? (uint64_t)r->count * 1000 / r->period_ms : 0;
    return per_s < 1 ? 1 : per_s > 4 ? 4 : (uint32_t)per_s;
}

struct config *config_defaults(void)
{
    if (sections_ready() != 0)
        return NULL;
    struct config *cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        return NULL;
    cfg->refs = 1;
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
    cfg->database.binary_writes = true;
    cfg->database.ssl_mode = DB_SSL_PREFERRED;

    cfg->cluster.lease_ms = 15 * MS_SECOND;
    cfg->cluster.renew_ms = 5 * MS_SECOND;

    cfg->universe.all = true;

    cfg->sources = calloc(source_count, sizeof(*cfg->sources));
    cfg->jobs = calloc(njobs_total, sizeof(*cfg->jobs));
    if ((source_count && !cfg->sources) || (njobs_total && !cfg->jobs))
        goto fail;
    cfg->nsources = source_count;
    cfg->njobs = njobs_total;
    size_t j = 0;
    for (size_t i = 0; i < source_count; i++) {
        const struct source_def *d = source_defs[i];
        struct cfg_source *src = &cfg->sources[i];
        src->def = d;
        src->enabled = d->enabled_by_default;
        src->plan = 0;
        src->burst = 1;
        src->timeout_ms = 30 * MS_SECOND;
        src->connect_timeout_ms = 10 * MS_SECOND;
        src->max_retries = 5;
        src->backoff_base_ms = MS_SECOND;
        src->backoff_cap_ms = 5 * MS_MINUTE;
        src->max_body_bytes = 64 * MIB;
        src->max_url_bytes = 8000;
        if (set_str(&src->name, d->name) || plan_defaults(src, true, true, true, true) ||
            (d->nkeys && !(src->values = calloc(d->nkeys, sizeof(*src->values)))))
            goto fail;
        /* As apply_plan_defaults: unset, the reserve is 2% of the default plan's credits. */
        src->credit_reserve = src->monthly_credits / 50;
        for (size_t k = 0; k < d->njobs; k++, j++) {
            const struct job_def *jd = d->jobs[k];
            cfg->jobs[j] = (struct cfg_job){.def = jd,
                                            .name = jd->name,
                                            .source = i,
                                            .enabled = jd->enabled,
                                            .every_ms = jd->every_ms,
                                            .align = true,
                                            .run_at_start = true};
            if (jd->nkeys && !(cfg->jobs[j].values = calloc(jd->nkeys, sizeof(struct cfg_value))))
                goto fail;
        }
    }

    if (set_str(&cfg->daemon.metrics_listen, "127.0.0.1:9464") ||
        set_str(&cfg->daemon.spool_dir, "/var/lib/coingest/spool") ||
        set_str(&cfg->database.host, "127.0.0.1") || set_str(&cfg->database.user, "coingest") ||
        set_str(&cfg->database.database, "coingest") ||
        strlist_push(&cfg->universe.vs_currencies, "usd", 3) || own_defaults(cfg))
        goto fail;
    return cfg;
fail:
    config_free(cfg);
    return NULL;
}

static void free_values(struct cfg_value *v, size_t n)
{
    for (size_t i = 0; v && i < n; i++) {
        free(v[i].s);
        strlist_clear(&v[i].list);
    }
    free(v);
}

const struct config *config_hold(const struct config *cfg)
{
    ((struct config *)cfg)->refs++;
    return cfg;
}

void config_free(struct config *cfg)
{
    if (!cfg)
        return;
    if (cfg->refs > 1) {
        cfg->refs--;
        return;
    }
    free(cfg->path);
    free(cfg->daemon.metrics_listen);
    free(cfg->daemon.spool_dir);
    config_database_clear(&cfg->database);
    free(cfg->cluster.instance);
    for (size_t i = 0; i < cfg->nsources; i++) {
        struct cfg_source *src = &cfg->sources[i];
        free(src->name);
        free(src->base_url);
        free(src->api_key);
        free(src->ca_file);
        free_values(src->values, src->def ? src->def->nkeys : 0);
    }
    free(cfg->sources);
    for (size_t i = 0; i < cfg->njobs; i++)
        free_values(cfg->jobs[i].values, cfg->jobs[i].def ? cfg->jobs[i].def->nkeys : 0);
    free(cfg->jobs);
    strlist_clear(&cfg->universe.ids);
    strlist_clear(&cfg->universe.categories);
    strlist_clear(&cfg->universe.vs_currencies);
    for (size_t i = 0; i < cfg->naliases; i++) {
        free(cfg->aliases[i].source);
        free(cfg->aliases[i].key);
        free(cfg->aliases[i].asset_id);
    }
    free(cfg->aliases);
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
    const char *qval; /* the line's value without its quotes, when it was quoted; else NULL */
    size_t qlen;
    int sec; /* enum section_id, SEC_NONE or SEC_BAD */

    int *sec_line;  /* per section: its header's line, 0 when absent */
    int *key_lines; /* [section * max_keys + key]: where the key was given, 0 if not in the file */
    bool *key_sets; /* [section * max_keys + key]: given with a non-empty value */
    int last_key;   /* the key a continuation line continues, or -1 */
    int comma_line, comma_sec, comma_key; /* a list line that ended in ',' */

    char *password_file;
    char **api_key_files; /* per source */

    /* The first error by line (line 0 for errors that are not about one line). */
    bool failed;
    int err_line;
    int rc;
    char *err;
    size_t errlen;
};

/* Where key `ki` of section `sec` was given (0: not in the file), and whether with a value. */
static int *key_line_at(const struct parse *p, int sec, int ki)
{
    return &p->key_lines[(size_t)sec * max_keys + (size_t)ki];
}

static bool *key_set_at(const struct parse *p, int sec, int ki)
{
    return &p->key_sets[(size_t)sec * max_keys + (size_t)ki];
}

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
    if (k->value)
        own_slot(p->cfg, sec, k)->set = true;
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
        if ((e = source_plan_index(sections[sec].src, value)) < 0)
            goto bad_enum;
        *(uint32_t *)f = (uint32_t)e;
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
        char **slot =
            sec == SEC_DATABASE ? &p->password_file : &p->api_key_files[sections[sec].index];
        if (set_str(slot, value)) {
            fail_nomem(p, line);
            return -ENOMEM;
        }
        return 0;
    }
    case K_EVERY:
        /* `auto`: as often as the month's credits allow (budget.h); every_ms holds the
         * shortest interval it may run at, for everything that reads it without a budget. */
        p->cfg->jobs[sections[sec].index].every_auto = strcmp(value, "auto") == 0;
        if (p->cfg->jobs[sections[sec].index].every_auto) {
            *(uint64_t *)f = BUDGET_AUTO_MIN_MS;
            return 0;
        }
        /* fall through */
    case K_DURATION:
        r = duration_parse(value, &u);
        if (r == -EINVAL) {
            fail(p, line, sec, label, -EINVAL, "\"%s\" is not a duration (e.g. 30s, 5m, 1h%s)",
                 value, k->type == K_EVERY ? ", or auto" : "");
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
        const struct source_def *d = sections[sec].src;
        size_t n = 0;
        names[0] = '\0';
        for (size_t i = 0; i < d->nplans && n < sizeof(names); i++) {
            int w = snprintf(names + n, sizeof(names) - n, "%s%s", i ? ", " : "", d->plans[i].name);
            n += w > 0 ? (size_t)w : 0;
        }
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

/* Lists the names of the sections of one kind, without their "source."/"job." prefix. */
static void list_sections(enum section_kind kind, char *buf, size_t cap)
{
    size_t n = 0;
    buf[0] = '\0';
    for (int i = 0; i < nsections && n < cap; i++) {
        if (sections[i].kind != kind)
            continue;
        const char *name = strchr(sections[i].name, '.') + 1;
        int w = snprintf(buf + n, cap - n, "%s%s", n ? ", " : "", name);
        n += w > 0 ? (size_t)w : 0;
    }
}

static void unknown_section(struct parse *p, const char *name)
{
    char known[512];
    if (strncmp(name, "source.", 7) == 0) {
        list_sections(SK_SOURCE, known, sizeof(known));
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: unknown source \"%s\" (known: %s)", name,
             name + 7, known);
    } else if (strncmp(name, "job.", 4) == 0) {
        list_sections(SK_JOB, known, sizeof(known));
        fail(p, p->line, -1, NULL, -EINVAL, "[%s]: unknown job \"%s\" (known: %s)", name, name + 4,
             known);
    } else {
        size_t n = 0;
        known[0] = '\0';
        for (int i = 0; i < nsections && n < sizeof(known); i++) {
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
/* Finds a quoted value in the key line s[lead..len): after the first '=' or ':' (where inih
 * splits key and value) and any blanks, a '"' opens it and the next '"' closes it. Sets *open
 * and *close to their offsets (both 0 when the value is not quoted); -EINVAL when the closing
 * quote is missing. There are no escapes: a value that starts with '"' and holds another one
 * belongs in a *_file key or the environment. */
static int quoted_value(const char *s, size_t lead, size_t len, size_t *open, size_t *close)
{
    size_t i = lead;
    while (i < len && s[i] != '=' && s[i] != ':')
        i++;
    if (i == len)
        return 0;
    for (i++; i < len && (s[i] == ' ' || s[i] == '\t'); i++)
        ;
    if (i == len || s[i] != '"')
        return 0;
    const char *end = memchr(s + i + 1, '"', len - i - 1);
    if (!end)
        return -EINVAL;
    *open = i;
    *close = (size_t)(end - s);
    return 0;
}

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
    p->qval = NULL;

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
    size_t lead = 0;
    while (lead < len && isspace((unsigned char)s[lead]))
        lead++;
    if (lead == len || s[lead] == '#' || s[lead] == ';')
        goto done;
    /* A value that starts with '"' runs to the next '"'; no comment starts inside it. */
    size_t qopen = 0, qclose = 0;
    if (s[lead] != '[' && quoted_value(s, lead, len, &qopen, &qclose) != 0) {
        fail(p, p->line, -1, NULL, -EINVAL, "a value that starts with '\"' needs a closing '\"'");
        goto done;
    }
    /* Comments: ';' or '#' at the start, after whitespace or right after a closing quote. */
    for (size_t i = qclose ? qclose + 1 : 0; i < len; i++) {
        if ((s[i] == ';' || s[i] == '#') &&
            (i == 0 || s[i - 1] == ' ' || s[i - 1] == '\t' || (qclose && i == qclose + 1))) {
            len = i;
            break;
        }
    }
    while (len && isspace((unsigned char)s[len - 1]))
        len--;
    if (qclose && len != qclose + 1) {
        fail(p, p->line, -1, NULL, -EINVAL,
             "only a comment may follow the closing '\"' of a quoted value");
        goto done;
    }

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
    if (qclose && tlen <= (size_t)num - 2) {
        /* inih gets "key = \"" and the handler takes the value from p->qval. */
        p->qval = s + qopen + 1;
        p->qlen = qclose - qopen - 1;
        tlen = qopen + 1 - lead;
    } else if (tlen > (size_t)num - 2 && qclose) {
        fail(p, p->line, -1, NULL, -EINVAL, "line is longer than %d characters", num - 2);
        goto done;
    } else if (tlen > (size_t)num - 2) {
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

/* One line of [aliases]: `SOURCE.KEY = ASSET_ID`, SOURCE a registered source, each
 * SOURCE.KEY at most once. Returns 0, or -errno after recording the error. */
static int alias_line(struct parse *p, int line, int sec, const char *name, const char *value)
{
    struct config *cfg = p->cfg;
    if (p->cont_line) {
        fail(p, line, sec, NULL, -EINVAL, "indented continuation line (one alias per line)");
        return -EINVAL;
    }
    const char *dot = strchr(name, '.');
    char src[64];
    size_t n = dot ? (size_t)(dot - name) : 0;
    if (!dot || n == 0 || n >= sizeof(src) || dot[1] == '\0') {
        fail(p, line, sec, name, -EINVAL,
             "expected SOURCE.KEY = ASSET_ID (e.g. <source>.BTC = bitcoin)");
        return -EINVAL;
    }
    memcpy(src, name, n);
    src[n] = '\0';
    if (!source_find(src)) {
        char known[512];
        list_sections(SK_SOURCE, known, sizeof(known));
        fail(p, line, sec, name, -EINVAL, "unknown source \"%s\" (known: %s)", src, known);
        return -EINVAL;
    }
    if (*value == '\0') {
        fail(p, line, sec, name, -EINVAL, "no asset id");
        return -EINVAL;
    }
    for (const char *c = value; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            fail(p, line, sec, name, -EINVAL, "control character in the asset id");
            return -EINVAL;
        }
    }
    if (config_alias(cfg, src, dot + 1)) {
        fail(p, line, sec, name, -EINVAL, "duplicate alias");
        return -EINVAL;
    }
    struct cfg_alias *a = realloc(cfg->aliases, (cfg->naliases + 1) * sizeof(*a));
    if (!a) {
        fail_nomem(p, line);
        return -ENOMEM;
    }
    cfg->aliases = a;
    a = &cfg->aliases[cfg->naliases];
    *a = (struct cfg_alias){strdup(src), strdup(dot + 1), strdup(value)};
    if (!a->source || !a->key || !a->asset_id) {
        free(a->source);
        free(a->key);
        free(a->asset_id);
        fail_nomem(p, line);
        return -ENOMEM;
    }
    cfg->naliases++;
    return 0;
}

const char *config_alias(const struct config *cfg, const char *source, const char *key)
{
    for (size_t i = 0; source && key && i < cfg->naliases; i++)
        if (strcmp(cfg->aliases[i].source, source) == 0 && strcmp(cfg->aliases[i].key, key) == 0)
            return cfg->aliases[i].asset_id;
    return NULL;
}

static int on_value(void *user, const char *section, const char *name, const char *value)
{
    struct parse *p = user;
    (void)section; /* the reader tracks sections itself */
    int line = p->line;
    int sec = p->sec;
    char unquoted[256]; /* a line is at most 198 characters */
    if (p->qval) {
        snprintf(unquoted, sizeof(unquoted), "%.*s", (int)p->qlen, p->qval);
        value = unquoted;
        p->qval = NULL;
    }

    if (sec == SEC_BAD)
        return 1; /* reported at the header */
    if (sec == SEC_NONE) {
        fail(p, line, -1, name, -EINVAL, "key outside any [section]");
        return 0;
    }
    if (sections[sec].kind == SK_FREE)
        return alias_line(p, line, sec, name, value) == 0;
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
        bool first = !(*key_set_at(p, sec, p->last_key));
        (*key_set_at(p, sec, p->last_key)) = true;
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
    if ((*key_line_at(p, sec, ki))) {
        fail(p, line, sec, name, -EINVAL, "duplicate key (first set at line %d)",
             (*key_line_at(p, sec, ki)));
        return 0;
    }
    (*key_line_at(p, sec, ki)) = line;
    p->last_key = ki;
    const struct keydef *k = &sections[sec].keys[ki];
    if (*value == '\0') {
        /* Empty means unset, except that an empty metrics_listen disables the endpoint. */
        if (k->type == K_LISTEN) {
            if (set_str(field(p->cfg, sec, k), "")) {
                fail_nomem(p, line);
                return 0;
            }
            (*key_set_at(p, sec, ki)) = true;
        }
        return 1;
    }
    (*key_set_at(p, sec, ki)) = true;
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
    if (has_control(data, n)) {
        /* A CR or LF inside the key would become a second header line (an injection); the
         * secret itself is never printed. */
        fail(p, line, sec, label, -EINVAL,
             "\"%s\" holds a control character (CR, LF, tab or other) in its first line", path);
        explicit_bzero(data, len);
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

/* Resolves one secret: env value > env file > file *_file key > file value. From whichever
 * source, a secret with a control character is refused (the file value is checked in apply). */
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
    if (ev && has_control(ev, strlen(ev))) {
        snprintf(label, sizeof(label), "%s (%s)", key, env);
        fail(p, 0, sec, label, -EINVAL,
             "%s holds a control character (CR, LF, tab or other); its value is not used", env);
        return -EINVAL;
    }
    if (ev)
        return set_str(slot, ev) ? (fail_nomem(p, 0), -ENOMEM) : 0;
    if (ef) {
        snprintf(label, sizeof(label), "%s (%s)", file_key, env_file);
        return read_secret_file(p, 0, sec, label, ef, slot);
    }
    if (file_path && (*key_set_at(p, sec, ki))) {
        int line = (*key_line_at(p, sec, ki)) > (*key_line_at(p, sec, fi))
                       ? (*key_line_at(p, sec, ki))
                       : (*key_line_at(p, sec, fi));
        fail(p, line, sec, line == (*key_line_at(p, sec, ki)) ? key : file_key, -EINVAL,
             "set %s or %s, not both", key, file_key);
        return -EINVAL;
    }
    if (file_path)
        return read_secret_file(p, (*key_line_at(p, sec, fi)), sec, file_key, file_path, slot);
    return 0;
}

/* COINGEST_<NAME>_<SUFFIX>: the variable that holds a key of a source's section. */
static void source_env(const struct cfg_source *src, const char *suffix, char *buf, size_t cap)
{
    size_t n = (size_t)snprintf(buf, cap, "COINGEST_");
    for (const char *c = src->name; *c && n + 1 < cap; c++)
        buf[n++] = (char)toupper((unsigned char)*c);
    snprintf(buf + n, cap - n, "_%s", suffix);
}

/* COINGEST_<NAME>_API_KEY: the variable that holds a source's key. */
static void key_env(const struct cfg_source *src, char *buf, size_t cap)
{
    source_env(src, "API_KEY", buf, cap);
}

/* The keys of every [source.NAME] a container can set without a file, and the suffix of
 * their variable (COINGEST_<NAME>_PLAN, ...). The key is parsed and checked as in the file. */
static const struct {
    const char *key;
    const char *suffix;
} source_overrides[] = {
    {"plan", "PLAN"},
    {"base_url", "BASE_URL"},
    {"rate_limit", "RATE_LIMIT"},
    {"monthly_credits", "MONTHLY_CREDITS"},
};

/* How an error names a source key and which line it blames: "plan (COINGEST_COINGECKO_PLAN)"
 * and line 0 when the variable set it, else the key and its line in the file. */
static int source_key_label(const struct parse *p, size_t i, const char *key, char *label,
                            size_t cap);

static int apply_source_env(struct parse *p, size_t i)
{
    int sec = source_section(i);
    for (size_t k = 0; k < ARRAY_SIZE(source_overrides); k++) {
        char env[96], label[160];
        source_env(&p->cfg->sources[i], source_overrides[k].suffix, env, sizeof(env));
        const char *v = env_value(env);
        if (!v)
            continue;
        int ki = find_key(sec, source_overrides[k].key);
        snprintf(label, sizeof(label), "%s (%s)", source_overrides[k].key, env);
        int r = apply(p, 0, sec, ki, label, v);
        if (r)
            return r;
        /* Set, as if in the file: the plan's defaults do not replace it. */
        *key_set_at(p, sec, ki) = true;
    }
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
    for (size_t i = 0; !r && i < p->cfg->nsources; i++)
        r = apply_source_env(p, i);
    for (size_t i = 0; !r && i < p->cfg->nsources; i++) {
        char env[96], env_file[104];
        key_env(&p->cfg->sources[i], env, sizeof(env));
        snprintf(env_file, sizeof(env_file), "%s_FILE", env);
        r = resolve_secret(p, source_section(i), "api_key", "api_key_file", env, env_file,
                           p->api_key_files[i], &p->cfg->sources[i].api_key);
    }
    return r;
}

static bool key_set(const struct parse *p, int sec, const char *key)
{
    return (*key_set_at(p, sec, find_key(sec, key)));
}

static int key_line(const struct parse *p, int sec, const char *key)
{
    return (*key_line_at(p, sec, find_key(sec, key)));
}

/* The defaults of the sources' and jobs' own keys, parsed like file values. A default that
 * does not parse is a bug in its definition: the config is not built. */
static int own_defaults(struct config *cfg)
{
    struct parse p = {.path = "(built-in defaults)", .cfg = cfg, .sec = SEC_NONE};
    for (int sec = SEC_FIRST_SOURCE; sec < nsections; sec++) {
        for (size_t i = 0; i < sections[sec].nkeys; i++) {
            const struct keydef *k = &sections[sec].keys[i];
            if (k->value == 0)
                continue;
            const struct source_def *d = sections[sec].src;
            const struct cfg_key *own;
            if (sections[sec].kind == SK_SOURCE) {
                own = &d->keys[k->value - 1];
            } else {
                const struct job_def *jd = cfg->jobs[sections[sec].index].def;
                own = &jd->keys[k->value - 1];
            }
            if (own->dflt && apply(&p, 0, sec, (int)i, k->name, own->dflt) != 0)
                return -EINVAL;
        }
    }
    return 0;
}

/* The plan's defaults for the keys the file did not set. */
static int apply_plan_defaults(struct parse *p)
{
    for (size_t i = 0; i < p->cfg->nsources; i++) {
        int sec = source_section(i);
        if (plan_defaults(&p->cfg->sources[i], !key_set(p, sec, "base_url"),
                          !key_set(p, sec, "rate_limit"), !key_set(p, sec, "plan_limit"),
                          !key_set(p, sec, "monthly_credits"))) {
            fail_nomem(p, 0);
            return -ENOMEM;
        }
        /* What the API reports about the account (GET /key for CoinGecko's pro plan) replaces
         * the plan's figures, never these. */
        p->cfg->sources[i].rate_limit_set = key_set(p, sec, "rate_limit");
        p->cfg->sources[i].monthly_credits_set = key_set(p, sec, "monthly_credits");
        p->cfg->sources[i].credit_reserve_set = key_set(p, sec, "credit_reserve");
        /* Unset, the reserve is 2% of the month's credits (200 of a Demo key's 10,000). */
        if (!key_set(p, sec, "credit_reserve"))
            p->cfg->sources[i].credit_reserve = p->cfg->sources[i].monthly_credits / 50;
    }
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

static int source_key_label(const struct parse *p, size_t i, const char *key, char *label,
                            size_t cap)
{
    char env[96];
    for (size_t k = 0; k < ARRAY_SIZE(source_overrides); k++) {
        if (strcmp(source_overrides[k].key, key) != 0)
            continue;
        source_env(&p->cfg->sources[i], source_overrides[k].suffix, env, sizeof(env));
        if (env_value(env)) {
            snprintf(label, cap, "%s (%s)", key, env);
            return 0;
        }
    }
    snprintf(label, cap, "%s", key);
    return key_line(p, source_section(i), key);
}

/* The host of an http(s) URL that valid_url() accepted, into buf (lower-cased). */
static void url_host(const char *url, char *buf, size_t cap)
{
    const char *h = strstr(url, "://");
    h = h ? h + 3 : url;
    size_t n = strcspn(h, "/?#");
    const char *at = memchr(h, '@', n);
    if (at) {
        n -= (size_t)(at + 1 - h);
        h = at + 1;
    }
    size_t end = 0;
    if (n && h[0] == '[') {
        const char *rb = memchr(h, ']', n);
        end = rb ? (size_t)(rb + 1 - h) : n;
    } else {
        const char *colon = memchr(h, ':', n);
        end = colon ? (size_t)(colon - h) : n;
    }
    size_t k = 0;
    for (; k < end && k + 1 < cap; k++)
        buf[k] = (char)tolower((unsigned char)h[k]);
    if (cap)
        buf[k] = '\0';
}

static bool host_listed(const char *const *hosts, const char *host)
{
    for (; hosts && *hosts; hosts++)
        if (strcasecmp(*hosts, host) == 0)
            return true;
    return false;
}

/* A base_url set explicitly on a host that belongs to another plan of the source, not to this
 * one (a pro key sent to the demo host, or the reverse): the API would refuse every request.
 * Any other host (a proxy, a test server) is the user's business. */
static int check_plan_host(struct parse *p, size_t i)
{
    const struct cfg_source *src = &p->cfg->sources[i];
    const struct source_plan *plan = &src->def->plans[src->plan];
    int sec = source_section(i);
    if (!plan->hosts || !src->base_url || !key_set(p, sec, "base_url"))
        return 0;
    char host[256];
    url_host(src->base_url, host, sizeof(host));
    if (host_listed(plan->hosts, host))
        return 0;
    char others[128] = "", mine[128] = "";
    size_t n = 0;
    for (size_t k = 0; k < src->def->nplans && n < sizeof(others); k++) {
        if (k == src->plan || !host_listed(src->def->plans[k].hosts, host))
            continue;
        int w = snprintf(others + n, sizeof(others) - n, "%s%s", n ? ", " : "",
                         src->def->plans[k].name);
        n += w > 0 ? (size_t)w : 0;
    }
    if (n == 0)
        return 0;
    n = 0;
    for (const char *const *h = plan->hosts; *h && n < sizeof(mine); h++) {
        int w = snprintf(mine + n, sizeof(mine) - n, "%s%s", n ? " or " : "", *h);
        n += w > 0 ? (size_t)w : 0;
    }
    char label[160];
    int line = source_key_label(p, i, "base_url", label, sizeof(label));
    fail(p, line, sec, label, -EINVAL,
         "%s is the host of plan %s; plan %s goes with %s (leave base_url unset to get the "
         "plan's own)",
         host, others, plan->name, mine);
    return -EINVAL;
}

static int check_source(struct parse *p, size_t i)
{
    const struct cfg_source *src = &p->cfg->sources[i];
    if (src->def->nplans == 0)
        return 0; /* no remote API: nothing to check */
    const struct source_plan *plan = &src->def->plans[src->plan];
    int sec = source_section(i);
    char a[32], b[32], env[96], env_file[104];
    key_env(src, env, sizeof(env));
    snprintf(env_file, sizeof(env_file), "%s_FILE", env);

    /* A source that is off needs no key: CoinCap's only plan is keyed and off by default. */
    if (plan->key_header && !src->api_key && src->enabled) {
        char label[160];
        int line = source_key_label(p, i, "plan", label, sizeof(label));
        fail(p, line, sec, label, -EINVAL,
             "plan \"%s\" needs an API key (set api_key or api_key_file, or %s or %s)", plan->name,
             env, env_file);
        return -EINVAL;
    }
    if (!plan->key_header && src->api_key) {
        int line = key_line(p, sec, "api_key");
        if (!line)
            line = key_line(p, sec, "api_key_file");
        char label[128];
        snprintf(label, sizeof(label), "api_key");
        if (env_value(env)) {
            line = 0;
            snprintf(label, sizeof(label), "api_key (%s)", env);
        } else if (env_value(env_file)) {
            line = 0;
            snprintf(label, sizeof(label), "api_key (%s)", env_file);
        } else if (!key_set(p, sec, "api_key")) {
            snprintf(label, sizeof(label), "api_key_file");
        }
        /* Name the plans that do take a key. */
        char keyed[128];
        size_t n = 0;
        keyed[0] = '\0';
        for (size_t k = 0; k < src->def->nplans && n < sizeof(keyed); k++) {
            if (!src->def->plans[k].key_header)
                continue;
            int w = snprintf(keyed + n, sizeof(keyed) - n, "%splan = %s", n ? " or " : "",
                             src->def->plans[k].name);
            n += w > 0 ? (size_t)w : 0;
        }
        char plan_env[96];
        source_env(src, "PLAN", plan_env, sizeof(plan_env));
        fail(p, line, sec, label, -EINVAL, "an API key is set but plan is %s (set %s%s%s)",
             plan->name, n ? keyed : "no key", n ? ", or " : "", n ? plan_env : "");
        return -EINVAL;
    }
    if (check_plan_host(p, i))
        return -EINVAL;
    if (src->backoff_cap_ms < src->backoff_base_ms) {
        format_duration(src->backoff_cap_ms, a, sizeof(a));
        format_duration(src->backoff_base_ms, b, sizeof(b));
        fail(p, blame_line(p, sec, "backoff_cap", "backoff_base"), sec,
             key_line(p, sec, "backoff_cap") ? "backoff_cap" : "backoff_base", -EINVAL,
             "backoff_cap (%s) is less than backoff_base (%s)", a, b);
        return -EINVAL;
    }
    return 0;
}

static int cross_check(struct parse *p)
{
    const struct config *cfg = p->cfg;
    char a[32], b[32];

    for (size_t i = 0; i < cfg->nsources; i++)
        if (check_source(p, i))
            return -EINVAL;
    for (size_t j = 0; j < cfg->njobs; j++) {
        int sec = job_section(j);
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

static void parse_free(struct parse *p, char *data)
{
    free(data);
    free(p->password_file);
    for (size_t i = 0; p->api_key_files && i < source_count; i++)
        free(p->api_key_files[i]);
    free(p->api_key_files);
    free(p->sec_line);
    free(p->key_lines);
    free(p->key_sets);
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

int config_host_at(const char *hosts, size_t i, uint32_t default_port, char *host, size_t cap,
                   uint32_t *port)
{
    const char *p = hosts ? hosts : "";
    for (size_t n = 0;; n++) {
        while (*p == ' ' || *p == '\t')
            p++;
        const char *end = p + strcspn(p, ",");
        if (n == i) {
            const char *stop = end;
            while (stop > p && (stop[-1] == ' ' || stop[-1] == '\t'))
                stop--;
            if (stop == p)
                return *end || n ? -EINVAL : -ENOENT; /* "a,,b" or a trailing comma */
            const char *colon = memchr(p, ':', (size_t)(stop - p));
            const char *hend = colon ? colon : stop;
            if (hend == p || (size_t)(hend - p) >= cap || memchr(p, ' ', (size_t)(hend - p)))
                return -EINVAL;
            memcpy(host, p, (size_t)(hend - p));
            host[hend - p] = '\0';
            *port = default_port;
            if (colon) {
                char num[8];
                size_t nl = (size_t)(stop - colon - 1);
                uint64_t v;
                if (nl == 0 || nl >= sizeof(num))
                    return -EINVAL;
                memcpy(num, colon + 1, nl);
                num[nl] = '\0';
                if (config_parse_uint(num, 65535, &v) || v == 0)
                    return -EINVAL;
                *port = (uint32_t)v;
            }
            return 0;
        }
        if (!*end)
            return -ENOENT;
        p = end + 1;
    }
}

/* [database] hosts must parse, and [cluster] renew must come well inside a lease. */
static int check_cluster(struct parse *p)
{
    const struct config *cfg = p->cfg;
    if (cfg->database.hosts) {
        char host[256];
        uint32_t port;
        int rc = 0;
        size_t i = 0;
        while ((rc = config_host_at(cfg->database.hosts, i, 3306, host, sizeof(host), &port)) == 0)
            i++;
        if (rc != -ENOENT || i == 0) {
            fail(p, key_line(p, SEC_DATABASE, "hosts"), SEC_DATABASE, "hosts", -EINVAL,
                 "expected a comma-separated list of HOST or HOST:PORT (entry %zu is not)", i + 1);
            return -EINVAL;
        }
    }
    const struct cfg_cluster *cl = &cfg->cluster;
    if (cl->renew_ms * 3 > cl->lease_ms) {
        fail(p, blame_line(p, SEC_CLUSTER, "renew", "lease"), SEC_CLUSTER, "renew", -EINVAL,
             "renew (%llums) must be at most a third of lease (%llums): a holder counts a lease "
             "as its own for lease - renew after each renewal, which must outlast the next one",
             (unsigned long long)cl->renew_ms, (unsigned long long)cl->lease_ms);
        return -EINVAL;
    }
    if (cl->instance) {
        size_t n = strlen(cl->instance);
        bool ok = n > 0 && n <= 100;
        for (size_t i = 0; ok && i < n; i++)
            ok = (unsigned char)cl->instance[i] > ' ' && (unsigned char)cl->instance[i] < 127 &&
                 cl->instance[i] != '"' && cl->instance[i] != '\\';
        if (!ok) {
            fail(p, key_line(p, SEC_CLUSTER, "instance"), SEC_CLUSTER, "instance", -EINVAL,
                 "an instance name is 1 to 100 printable ASCII characters without spaces, "
                 "quotes or backslashes");
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
    if (sections_ready() != 0) {
        fail(&p, 0, -1, NULL, sections_rc, "the source registry is invalid (%s)",
             strerror(-sections_rc));
        return sections_rc;
    }
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
    p.sec_line = calloc((size_t)nsections, sizeof(*p.sec_line));
    p.key_lines = calloc((size_t)nsections * max_keys, sizeof(*p.key_lines));
    p.key_sets = calloc((size_t)nsections * max_keys, sizeof(*p.key_sets));
    p.api_key_files = calloc(source_count ? source_count : 1, sizeof(*p.api_key_files));
    if (!p.sec_line || !p.key_lines || !p.key_sets || !p.api_key_files) {
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
        check_database_tls(&p) || check_cluster(&p))
        goto fail;

    parse_free(&p, data);
    *out = p.cfg;
    return 0;

fail:
    parse_free(&p, data);
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

/* Whether a string must be written in quotes to read back the same: it has blanks at either
 * end, starts with '"', or holds what would start a comment. */
static bool needs_quotes(const char *s)
{
    size_t n = strlen(s);
    if (isspace((unsigned char)s[0]) || isspace((unsigned char)s[n - 1]) || s[0] == '"' ||
        s[0] == ';' || s[0] == '#')
        return true;
    for (size_t i = 1; i < n; i++)
        if ((s[i] == ';' || s[i] == '#') && (s[i - 1] == ' ' || s[i - 1] == '\t'))
            return true;
    return false;
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
        if (sections[sec].src->nplans) /* a source without plans has no `plan` to print */
            fprintf(out, "%s = %s\n", k->name, sections[sec].src->plans[*(const uint32_t *)f].name);
        break;
    case K_SSL_MODE:
        fprintf(out, "%s = %s\n", k->name, ssl_mode_names[*(const enum db_ssl_mode *)f]);
        break;
    case K_STR:
    case K_OPTSTR:
    case K_LISTEN:
    case K_URL: {
        const char *s = *(char *const *)f;
        const char *fmt = !s || !*s ? "%s =\n" : needs_quotes(s) ? "%s = \"%s\"\n" : "%s = %s\n";
        fprintf(out, fmt, k->name, s ? s : "");
        break;
    }
    case K_SECRET:
        fprintf(out, *(char *const *)f ? "%s = " MASK "\n" : "%s =\n", k->name);
        break;
    case K_SECRET_FILE:
        break; /* already read into the secret */
    case K_EVERY:
        if (cfg->jobs[sections[sec].index].every_auto) {
            fprintf(out, "%s = auto\n", k->name);
            break;
        }
        /* fall through */
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
    for (int sec = 0; sec < nsections; sec++) {
        fprintf(out, "\n[%s]\n", sections[sec].name);
        for (size_t i = 0; i < sections[sec].nkeys; i++)
            dump_key(out, cfg, sec, &sections[sec].keys[i]);
        if (sections[sec].kind == SK_FREE)
            for (size_t i = 0; i < cfg->naliases; i++)
                fprintf(out, "%s.%s = %s\n", cfg->aliases[i].source, cfg->aliases[i].key,
                        cfg->aliases[i].asset_id);
    }
}

static bool str_equal(const char *a, const char *b)
{
    if (!a || !b)
        return a == b;
    return strcmp(a, b) == 0;
}

static bool value_equal(const struct keydef *k, const void *fa, const void *fb)
{
    switch (k->type) {
    case K_LEVEL:
        return *(const enum log_level *)fa == *(const enum log_level *)fb;
    case K_FORMAT:
        return *(const enum log_format *)fa == *(const enum log_format *)fb;
    case K_PLAN:
        return *(const uint32_t *)fa == *(const uint32_t *)fb;
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
    case K_EVERY:
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
    case K_NAMES:
    case K_CURRENCIES:
        return strlist_equal(fa, fb);
    }
    return true;
}

static bool key_equal(const struct config *a, const struct config *b, int sec,
                      const struct keydef *k)
{
    if (k->type == K_IDS && a->universe.all != b->universe.all)
        return false;
    if (k->type == K_EVERY &&
        a->jobs[sections[sec].index].every_auto != b->jobs[sections[sec].index].every_auto)
        return false;
    return value_equal(k, cfield(a, sec, k), cfield(b, sec, k));
}

static bool is_string_key(const struct keydef *k)
{
    return k->type == K_STR || k->type == K_OPTSTR || k->type == K_SECRET;
}

void config_database_clear(struct cfg_database *db)
{
    if (!db || sections_ready() != 0)
        return;
    for (size_t i = 0; i < sections[SEC_DATABASE].nkeys; i++) {
        const struct keydef *k = &sections[SEC_DATABASE].keys[i];
        if (!is_string_key(k))
            continue;
        char **slot = (char **)((char *)db + k->off);
        if (*slot && k->type == K_SECRET)
            explicit_bzero(*slot, strlen(*slot));
        free(*slot);
    }
    memset(db, 0, sizeof(*db));
}

int config_database_copy(struct cfg_database *dst, const struct cfg_database *src)
{
    *dst = *src;
    if (sections_ready() != 0) {
        memset(dst, 0, sizeof(*dst));
        return -ENOMEM;
    }
    /* Every string key of the table, so a key added there is copied without a change here. */
    int rc = 0;
    for (size_t i = 0; i < sections[SEC_DATABASE].nkeys; i++) {
        const struct keydef *k = &sections[SEC_DATABASE].keys[i];
        if (!is_string_key(k))
            continue;
        char **slot = (char **)((char *)dst + k->off);
        if (*slot && !(*slot = strdup(*slot)))
            rc = -ENOMEM;
    }
    if (rc) {
        config_database_clear(dst);
        return rc;
    }
    return 0;
}

bool config_database_equal(const struct cfg_database *a, const struct cfg_database *b)
{
    if (sections_ready() != 0)
        return false;
    for (size_t i = 0; i < sections[SEC_DATABASE].nkeys; i++) {
        const struct keydef *k = &sections[SEC_DATABASE].keys[i];
        if (!value_equal(k, (const char *)a + k->off, (const char *)b + k->off))
            return false;
    }
    return true;
}

void config_diff(const struct config *a, const struct config *b, struct config_diff *d)
{
    memset(d, 0, sizeof(*d));
    d->aliases = a->naliases != b->naliases;
    for (size_t i = 0; !d->aliases && i < a->naliases; i++)
        d->aliases = strcmp(a->aliases[i].source, b->aliases[i].source) != 0 ||
                     strcmp(a->aliases[i].key, b->aliases[i].key) != 0 ||
                     strcmp(a->aliases[i].asset_id, b->aliases[i].asset_id) != 0;
    for (int sec = 0; sec < nsections; sec++) {
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
                d->source_rate |= 1ull << sections[sec].index;
                break;
            case R_SOURCE:
                d->source_other |= 1ull << sections[sec].index;
                break;
            case R_UNIVERSE:
                d->universe = true;
                break;
            case R_JOB:
                d->job |= 1ull << sections[sec].index;
                break;
            case R_JOBKEY:
                d->job_other |= 1ull << sections[sec].index;
                break;
            }
        }
    }
}
