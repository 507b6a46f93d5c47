/*
 * log: structured log lines (logfmt or JSON), one write(2) per line, safe from any thread.
 *
 * How it works. log_emit() collects its fields, formats the whole line into a buffer on its own
 * stack with log_format_line() and writes it with one write(2), so lines from different threads
 * never interleave and no lock is held while writing. The settings (level, format, journal mode,
 * fd) are atomics written by the loop thread and read by everyone.
 *
 * Secrets are masked while a line is formatted, on the raw text of the message and of every
 * string value, before any escaping: a registered secret is found even when it holds characters
 * that the output escapes, and the replacement is written whole or not at all, so a line that is
 * cut at LOG_LINE_MAX never ends in half a secret. Not only whole secrets are masked: any run of
 * LOG_SECRET_FRAGMENT_MIN (8) or more consecutive characters of one (a secret cut short by
 * whoever wrote the text, or quoted in part) is masked too, longest run first, so text cut
 * before it reached us shows at most 7 characters of a secret at the cut. The values of the query
 * parameters and headers that carry keys (api_key=, apikey=, plus each source's own, registered at
 * startup with log_add_secret_param) are masked up to the next '&', quote or whitespace whether or
 * not the key was registered. The registered secrets are a small array kept sorted longest first
 * (so a secret that contains another is masked whole) and guarded by a mutex that is held only
 * while a line is formatted.
 *
 * Cutting: a line that does not fit ends with "..." (inside a quoted value: `..."`); a cut JSON
 * line stays valid JSON and ends with "truncated":true (a value cut inside a string ends with
 * `..."`; a line cut between fields just drops the fields that did not fit). Escapes and UTF-8
 * sequences are never split. JSON output is always valid UTF-8: bytes that are not are written as
 * \ufffd.
 */
#include "coingest/log.h"

#include "coingest/util.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#define MASK     "********"
#define MASK_LEN 8

/* Fields beyond this many in one log_emit() call are dropped. */
#define LOG_MAX_FIELDS 32
/* Room kept at the end of the buffer for the ending of a cut line. */
#define LOG_RESERVE 32

static atomic_int cur_level = LOG_INFO;
static atomic_int cur_format = LOG_FORMAT_TEXT;
static atomic_bool cur_journal = false;
static atomic_int cur_fd = 2;

static pthread_mutex_t secrets_lock = PTHREAD_MUTEX_INITIALIZER;
static char **secrets;      /* longest first */
static size_t *secret_lens; /* parallel to secrets */
static size_t nsecrets;

static const char *const level_names[] = {"error", "warn", "info", "debug"};
static const char *const journal_prefix[] = {"<3>", "<4>", "<6>", "<7>"};

const char *log_level_name(enum log_level level)
{
    if ((unsigned)level >= ARRAY_SIZE(level_names))
        return "unknown";
    return level_names[level];
}

void log_setup(enum log_level level, enum log_format format)
{
    const char *js = getenv("JOURNAL_STREAM");
    atomic_store(&cur_level, (int)level);
    atomic_store(&cur_format, (int)format);
    atomic_store(&cur_journal, js && *js);
}

void log_set_fd(int fd)
{
    atomic_store(&cur_fd, fd);
}

bool log_enabled(enum log_level level)
{
    return (int)level <= atomic_load_explicit(&cur_level, memory_order_relaxed);
}

/* ---- secrets ----------------------------------------------------------------------------- */

void log_add_secret(const char *secret)
{
    if (!secret || !*secret)
        return;
    size_t len = strlen(secret);
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < nsecrets; i++) {
        if (secret_lens[i] == len && memcmp(secrets[i], secret, len) == 0)
            goto out;
    }
    char *copy = strdup(secret);
    char **ns = realloc(secrets, (nsecrets + 1) * sizeof(*ns));
    if (ns)
        secrets = ns;
    size_t *nl = realloc(secret_lens, (nsecrets + 1) * sizeof(*nl));
    if (nl)
        secret_lens = nl;
    if (!copy || !ns || !nl) {
        free(copy);
        goto out;
    }
    size_t at = 0;
    while (at < nsecrets && secret_lens[at] >= len)
        at++;
    memmove(secrets + at + 1, secrets + at, (nsecrets - at) * sizeof(*secrets));
    memmove(secret_lens + at + 1, secret_lens + at, (nsecrets - at) * sizeof(*secret_lens));
    secrets[at] = copy;
    secret_lens[at] = len;
    nsecrets++;
out:
    pthread_mutex_unlock(&secrets_lock);
}

void log_clear_secrets(void)
{
    pthread_mutex_lock(&secrets_lock);
    for (size_t i = 0; i < nsecrets; i++) {
        /* Do not leave the secret behind in freed memory. */
        explicit_bzero(secrets[i], secret_lens[i]);
        free(secrets[i]);
    }
    free(secrets);
    free(secret_lens);
    secrets = NULL;
    secret_lens = NULL;
    nsecrets = 0;
    pthread_mutex_unlock(&secrets_lock);
}

/* Parameters and headers whose values are keys: the generic ones, then the sources'. Guarded
 * by secrets_lock like the secrets. */
#define KEY_PARAMS_MAX 64
struct key_param {
    char name[64];
    size_t len;
    bool header; /* "name: value" */
};
static struct key_param key_params[KEY_PARAMS_MAX] = {
    {"api_key=", 8, false},
    {"apikey=", 7, false},
};
static size_t nkey_params = 2;

int log_add_secret_param(const char *name)
{
    size_t len = name ? strlen(name) : 0;
    if (len < 2 || len >= sizeof(key_params[0].name) ||
        (name[len - 1] != '=' && name[len - 1] != ':'))
        return -EINVAL;
    int rc = 0;
    pthread_mutex_lock(&secrets_lock);
    bool known = false;
    for (size_t k = 0; k < nkey_params && !known; k++)
        known = key_params[k].len == len && strncasecmp(key_params[k].name, name, len) == 0;
    if (!known && nkey_params == KEY_PARAMS_MAX) {
        rc = -ENOMEM;
    } else if (!known) {
        struct key_param *kp = &key_params[nkey_params++];
        memcpy(kp->name, name, len + 1);
        kp->len = len;
        kp->header = name[len - 1] == ':';
    }
    pthread_mutex_unlock(&secrets_lock);
    return rc;
}

/* Length of the longest run at the start of s[0..n) that is also a run of the secret's
 * characters, if it is at least LOG_SECRET_FRAGMENT_MIN long (or the whole secret, for one
 * shorter than that); else 0. A whole secret is the longest run there is, so it is masked in
 * one piece. */
static size_t fragment_at(const char *s, size_t n, const char *secret, size_t len)
{
    size_t min = len < LOG_SECRET_FRAGMENT_MIN ? len : LOG_SECRET_FRAGMENT_MIN;
    size_t best = 0;
    if (n < min)
        return 0;
    for (size_t j = 0; j + min <= len; j++) {
        if (secret[j] != s[0])
            continue;
        size_t m = 1;
        while (m < n && j + m < len && s[m] == secret[j + m])
            m++;
        if (m >= min && m > best)
            best = m;
    }
    return best;
}

static bool ends_param(char c)
{
    return c == '&' || c == '"' || c == '\'' || (unsigned char)c <= ' ' || c == 0x7f;
}

/* Is there something to mask at s[i]? Returns how many bytes from i it spans (0: nothing) and
 * sets *keep to how many of them are written as they are (a parameter's name) before MASK
 * replaces the rest. Caller holds secrets_lock. */
static size_t mask_at(const char *s, size_t n, size_t i, size_t *keep)
{
    size_t best = 0;
    for (size_t k = 0; k < nsecrets; k++) {
        size_t m = fragment_at(s + i, n - i, secrets[k], secret_lens[k]);
        if (m > best)
            best = m;
    }
    if (best) {
        *keep = 0;
        return best;
    }
    char c = (char)(s[i] | 0x20);
    for (size_t k = 0; k < nkey_params; k++) {
        if ((key_params[k].name[0] | 0x20) != c)
            continue;
        size_t len = key_params[k].len;
        if (len > n - i || strncasecmp(s + i, key_params[k].name, len) != 0)
            continue;
        size_t v = i + len;
        if (key_params[k].header)
            while (v < n && (s[v] == ' ' || s[v] == '\t'))
                v++;
        size_t e = v;
        while (e < n && !ends_param(s[e]))
            e++;
        if (e == v)
            return 0;
        *keep = v - i;
        return e - i;
    }
    return 0;
}

/* ---- the output buffer -------------------------------------------------------------------- */

enum esc {
    ESC_NONE,   /* bytes as they are */
    ESC_LOGFMT, /* inside a quoted logfmt value */
    ESC_JSON,   /* inside a JSON string */
};

struct out {
    char *buf;
    size_t len;
    size_t limit;   /* the body may grow up to here */
    size_t cap;     /* the ending may use up to cap - 1 (the NUL) */
    bool full;      /* something did not fit: the line is cut */
    bool in_string; /* inside a quoted value (for the ending of a cut line) */
};

static bool put(struct out *o, const char *s, size_t n)
{
    if (o->full || n > o->limit - o->len) {
        o->full = true;
        return false;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return true;
}

static bool puts0(struct out *o, const char *s)
{
    return put(o, s, strlen(s));
}

/* Writes the ending beyond `limit`, in the reserved room. */
static void put_end(struct out *o, const char *s)
{
    size_t n = strlen(s);
    if (o->cap == 0 || n > o->cap - 1 - o->len)
        n = o->cap > o->len + 1 ? o->cap - 1 - o->len : 0;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
}

/* Length of the valid UTF-8 sequence at s, or 0 if the bytes there are not one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    unsigned char lo = 0x80, hi = 0xBF;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF)
        len = 2;
    else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        if (c == 0xE0)
            lo = 0xA0;
        else if (c == 0xED)
            hi = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        if (c == 0xF0)
            lo = 0x90;
        else if (c == 0xF4)
            hi = 0x8F;
    } else
        return 0;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return len;
}

/* Writes the character at s (one byte, or one UTF-8 sequence in JSON) escaped for `esc`.
 * Returns the bytes consumed, or 0 when it did not fit. */
static size_t put_char(struct out *o, const char *s, size_t n, enum esc esc)
{
    unsigned char c = (unsigned char)*s;
    char tmp[8];
    if (esc == ESC_NONE)
        return put(o, s, 1) ? 1 : 0;
    switch (c) {
    case '"':
        return put(o, "\\\"", 2) ? 1 : 0;
    case '\\':
        return put(o, "\\\\", 2) ? 1 : 0;
    case '\n':
        return put(o, "\\n", 2) ? 1 : 0;
    case '\r':
        return put(o, "\\r", 2) ? 1 : 0;
    case '\t':
        return put(o, "\\t", 2) ? 1 : 0;
    default:
        break;
    }
    if (c < 0x20 || c == 0x7f) {
        snprintf(tmp, sizeof(tmp), "\\u%04x", c);
        return put(o, tmp, 6) ? 1 : 0;
    }
    if (c < 0x80 || esc != ESC_JSON)
        return put(o, s, 1) ? 1 : 0;
    size_t len = utf8_len((const unsigned char *)s, n);
    if (len == 0)
        return put(o, "\\ufffd", 6) ? 1 : 0;
    return put(o, s, len) ? len : 0;
}

/* Writes s[0..n) with secrets masked and characters escaped for `esc`. Caller holds
 * secrets_lock. Returns false when the line is full. */
static bool put_masked(struct out *o, const char *s, size_t n, enum esc esc)
{
    size_t i = 0;
    while (i < n) {
        size_t keep, m = mask_at(s, n, i, &keep);
        if (m) {
            for (size_t j = 0; j < keep;) {
                size_t adv = put_char(o, s + i + j, keep - j, esc);
                if (!adv)
                    return false;
                j += adv;
            }
            if (!put(o, MASK, MASK_LEN))
                return false;
            i += m;
            continue;
        }
        size_t adv = put_char(o, s + i, n - i, esc);
        if (!adv)
            return false;
        i += adv;
    }
    return true;
}

/* ---- formatting -------------------------------------------------------------------------- */

static bool logfmt_needs_quotes(const char *s)
{
    if (*s == '\0')
        return true;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c == '"' || c == '=' || c == 0x7f)
            return true;
    }
    return false;
}

static void format_double(double d, bool json, char *buf, size_t cap)
{
    if (isnan(d)) {
        snprintf(buf, cap, "%s", json ? "null" : "NaN");
        return;
    }
    if (isinf(d)) {
        snprintf(buf, cap, "%s", json ? "null" : d > 0 ? "+Inf" : "-Inf");
        return;
    }
    /* Six significant digits, as people read a log line (rates, seconds, ratios: 8.98472, not
     * 8.9847222222222225); a large whole amount keeps all its digits instead of an exponent. */
    double a = fabs(d);
    if (a >= 1e6 && a < 1e15)
        snprintf(buf, cap, "%.0f", d);
    else
        snprintf(buf, cap, "%.6g", d);
}

/* A field's scalar value as text; false for strings. */
static bool format_scalar(const struct log_field *f, bool json, char *buf, size_t cap)
{
    switch (f->type) {
    case LOG_T_INT:
        snprintf(buf, cap, "%lld", (long long)f->v.i);
        return true;
    case LOG_T_UINT:
        snprintf(buf, cap, "%llu", (unsigned long long)f->v.u);
        return true;
    case LOG_T_DBL:
        format_double(f->v.d, json, buf, cap);
        return true;
    case LOG_T_BOOL:
        snprintf(buf, cap, "%s", f->v.b ? "true" : "false");
        return true;
    case LOG_T_STR:
        if (!f->v.s) {
            snprintf(buf, cap, "null");
            return true;
        }
        return false;
    case LOG_T_END:
        break;
    }
    snprintf(buf, cap, "null");
    return true;
}

/* logfmt keys are code constants; anything that would break the line becomes '_'. */
static void logfmt_key(struct out *o, const char *key)
{
    char tmp[128];
    size_t n = 0;
    for (; key && *key && n < sizeof(tmp); key++) {
        unsigned char c = (unsigned char)*key;
        tmp[n++] = (c <= ' ' || c == '"' || c == '=' || c == 0x7f) ? '_' : (char)c;
    }
    put(o, tmp, n);
}

/* Writes one logfmt `key=value` (with its leading space unless first). */
static bool logfmt_field(struct out *o, const char *key, const struct log_field *f, bool first)
{
    char tmp[192];
    char num[40];
    struct out kv = {.buf = tmp, .limit = sizeof(tmp), .cap = sizeof(tmp)};
    if (!first)
        put(&kv, " ", 1);
    logfmt_key(&kv, key);
    put(&kv, "=", 1);
    if (format_scalar(f, false, num, sizeof(num))) {
        /* Key and number go in whole or not at all. */
        puts0(&kv, num);
        return put(o, tmp, kv.len);
    }
    const char *s = f->v.s;
    bool quote = logfmt_needs_quotes(s);
    if (quote)
        put(&kv, "\"", 1);
    if (!put(o, tmp, kv.len))
        return false;
    o->in_string = quote;
    if (!put_masked(o, s, strlen(s), quote ? ESC_LOGFMT : ESC_NONE))
        return false;
    if (quote && !put(o, "\"", 1))
        return false;
    o->in_string = false;
    return true;
}

/* Writes one JSON `,"key":value` (without the comma when first). */
static bool json_field(struct out *o, const char *key, const struct log_field *f, bool first)
{
    char tmp[256];
    char num[40];
    struct out kv = {.buf = tmp, .limit = sizeof(tmp), .cap = sizeof(tmp)};
    if (!first)
        put(&kv, ",", 1);
    put(&kv, "\"", 1);
    if (!put_masked(&kv, key ? key : "", key ? strlen(key) : 0, ESC_JSON))
        return true; /* an absurdly long key: skip the field */
    put(&kv, "\":", 2);
    if (format_scalar(f, true, num, sizeof(num))) {
        puts0(&kv, num);
        return kv.full ? true : put(o, tmp, kv.len);
    }
    put(&kv, "\"", 1);
    if (kv.full || !put(o, tmp, kv.len))
        return false;
    o->in_string = true;
    if (!put_masked(o, f->v.s, strlen(f->v.s), ESC_JSON) || !put(o, "\"", 1))
        return false;
    o->in_string = false;
    return true;
}

size_t log_format_line(char *buf, size_t cap, enum log_level level, enum log_format format,
                       bool journal, uint64_t wall_ms, const char *msg,
                       const struct log_field *fields)
{
    if (cap == 0)
        return 0;
    struct out o = {.buf = buf, .cap = cap};
    o.limit = cap > LOG_RESERVE + 1 ? cap - 1 - LOG_RESERVE : 0;
    bool json = format == LOG_FORMAT_JSON;
    unsigned lv = (unsigned)level < ARRAY_SIZE(level_names) ? (unsigned)level : LOG_ERROR;
    char ts[32];
    util_format_iso8601(wall_ms, ts, sizeof(ts));
    struct log_field m = LOG_S("msg", msg ? msg : "");

    pthread_mutex_lock(&secrets_lock);
    if (journal)
        puts0(&o, journal_prefix[lv]);
    if (json) {
        puts0(&o, "{");
        if (!journal) {
            puts0(&o, "\"ts\":\"");
            puts0(&o, ts);
            puts0(&o, "\",");
        }
        puts0(&o, "\"level\":\"");
        puts0(&o, level_names[lv]);
        puts0(&o, "\"");
        json_field(&o, "msg", &m, false);
        for (const struct log_field *f = fields; f && f->type != LOG_T_END && !o.full; f++)
            json_field(&o, f->key, f, false);
    } else {
        if (!journal) {
            puts0(&o, "ts=");
            puts0(&o, ts);
            puts0(&o, " ");
        }
        puts0(&o, "level=");
        puts0(&o, level_names[lv]);
        logfmt_field(&o, "msg", &m, false);
        for (const struct log_field *f = fields; f && f->type != LOG_T_END && !o.full; f++)
            logfmt_field(&o, f->key, f, false);
    }
    pthread_mutex_unlock(&secrets_lock);

    if (o.full) {
        /* Between JSON fields there is no place for "...": the flag says it. */
        if (o.in_string)
            put_end(&o, "...\"");
        else if (!json)
            put_end(&o, "...");
        if (json)
            put_end(&o, ",\"truncated\":true}");
    } else if (json) {
        put_end(&o, "}");
    }
    put_end(&o, "\n");
    buf[o.len] = '\0';
    return o.len;
}

size_t log_mask_secrets(char *buf, size_t len, size_t cap)
{
    if (cap == 0)
        return 0;
    char stack[LOG_LINE_MAX + 1];
    char *tmp = cap <= sizeof(stack) ? stack : malloc(cap);
    if (!tmp) {
        /* Without room to work, the safe answer is an empty line. */
        buf[0] = '\0';
        return 0;
    }
    struct out o = {.buf = tmp, .limit = cap - 1, .cap = cap};
    pthread_mutex_lock(&secrets_lock);
    put_masked(&o, buf, len, ESC_NONE);
    pthread_mutex_unlock(&secrets_lock);
    memcpy(buf, tmp, o.len);
    buf[o.len] = '\0';
    if (tmp != stack)
        free(tmp);
    return o.len;
}

/* ---- emitting ---------------------------------------------------------------------------- */

static void write_line(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t w = write(fd, buf, len);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere to report it */
        buf += w;
        len -= (size_t)w;
    }
}

bool log_ratelimit(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                   uint64_t *suppressed)
{
    if (rl->next_ms != 0 && now_ms < rl->next_ms) {
        rl->suppressed++;
        return false;
    }
    if (suppressed)
        *suppressed = rl->suppressed;
    rl->suppressed = 0;
    rl->next_ms = now_ms + interval_ms;
    if (rl->next_ms == 0)
        rl->next_ms = 1;
    return true;
}

/* The ring of recent warn and error lines (log_recent). */
static pthread_mutex_t recent_lock = PTHREAD_MUTEX_INITIALIZER;
static struct log_recent recent[LOG_RECENT_MAX];
static size_t recent_next, recent_count;

static void recent_add(enum log_level level, uint64_t wall_ms, const char *msg,
                       const struct log_field *fields)
{
    /* Formatted for the journal, which drops the time stamp, and then without the "<4>"
     * priority prefix: the time is kept apart. */
    char buf[LOG_RECENT_LINE + 3];
    size_t len =
        log_format_line(buf, sizeof(buf), level, LOG_FORMAT_TEXT, true, wall_ms, msg, fields);
    while (len > 0 && buf[len - 1] == '\n')
        buf[--len] = '\0';
    const char *line = len >= 3 ? buf + 3 : "";
    pthread_mutex_lock(&recent_lock);
    struct log_recent *e = &recent[recent_next];
    e->wall_ms = wall_ms;
    e->level = level;
    snprintf(e->line, sizeof(e->line), "%s", line);
    recent_next = (recent_next + 1) % LOG_RECENT_MAX;
    if (recent_count < LOG_RECENT_MAX)
        recent_count++;
    pthread_mutex_unlock(&recent_lock);
}

size_t log_recent(struct log_recent *out, size_t max)
{
    pthread_mutex_lock(&recent_lock);
    size_t n = recent_count < max ? recent_count : max;
    for (size_t i = 0; i < n; i++)
        out[i] = recent[(recent_next + LOG_RECENT_MAX - 1 - i) % LOG_RECENT_MAX];
    pthread_mutex_unlock(&recent_lock);
    return n;
}

void log_recent_clear(void)
{
    pthread_mutex_lock(&recent_lock);
    recent_next = recent_count = 0;
    pthread_mutex_unlock(&recent_lock);
}

void log_emit(enum log_level level, const char *msg, ...)
{
    bool keep = level <= LOG_WARN; /* for log_recent, whatever the level */
    if (!keep && !log_enabled(level))
        return;
    struct log_field fields[LOG_MAX_FIELDS + 1];
    size_t n = 0;
    va_list ap;
    va_start(ap, msg);
    for (;;) {
        struct log_field f = va_arg(ap, struct log_field);
        if (f.type == LOG_T_END)
            break;
        if (n < LOG_MAX_FIELDS)
            fields[n++] = f;
    }
    va_end(ap);
    fields[n] = LOG_END;

    int saved = errno; /* logging must not disturb the caller's errno */
    uint64_t now = util_wall_ms();
    if (keep)
        recent_add(level, now, msg, fields);
    if (log_enabled(level)) {
        char buf[LOG_LINE_MAX + 1];
        size_t len =
            log_format_line(buf, sizeof(buf), level, (enum log_format)atomic_load(&cur_format),
                            atomic_load(&cur_journal), now, msg, fields);
        write_line(atomic_load(&cur_fd), buf, len);
    }
    errno = saved;
}
