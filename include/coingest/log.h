/*
 * log: structured log lines, logfmt or JSON, one line per event, safe from any thread.
 *
 *   log_info("job finished", LOG_S("job", "prices"), LOG_U("rows", n));
 *   -> ts=2026-11-23T13:20:01.123Z level=info msg="job finished" job=prices rows=17500
 *   -> {"ts":"2026-11-23T13:20:01.123Z","level":"info","msg":"job
 * finished","job":"prices","rows":17500}
 *
 * When JOURNAL_STREAM is set (stderr is connected to journald), `ts` is dropped and the line is
 * prefixed with its syslog priority (`<6>` for info) so journald keeps levels.
 *
 * Secrets registered with log_add_secret() are replaced by "********" wherever they appear in a
 * line, and so is any run of LOG_SECRET_FRAGMENT_MIN or more consecutive characters of one
 * (a secret shorter than that is masked when whole), and the values of query parameters and headers
 * that carry API keys are masked too (api_key=, apikey= and whatever the sources register with
 * log_add_secret_param(), e.g. x_cg_pro_api_key=), so no secret reaches a log line even by
 * accident.
 *
 * Each line is formatted into a local buffer and written with one write(2): lines from
 * different threads never interleave. Lines longer than LOG_LINE_MAX are cut with "...".
 */
#ifndef COINGEST_LOG_H
#define COINGEST_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/config.h"

#define LOG_LINE_MAX 8192

/* The rule for parts of a secret: a run of this many consecutive characters of a registered
 * secret is masked wherever it appears (at the start or end of a text cut by someone else
 * too); a shorter run is too common to mean anything ("CG-", a few digits) and is left. Text
 * that this process cuts itself is masked first and cut after, so no cut of ours ever leaves a
 * run behind. Masking errs on the side of hiding: an unrelated 8-character run that happens to
 * occur in a secret is masked as well. */
#define LOG_SECRET_FRAGMENT_MIN 8

enum log_field_type { LOG_T_END = 0, LOG_T_STR, LOG_T_INT, LOG_T_UINT, LOG_T_DBL, LOG_T_BOOL };

struct log_field {
    const char *key;
    enum log_field_type type;
    union {
        const char *s;
        int64_t i;
        uint64_t u;
        double d;
        bool b;
    } v;
};

#define LOG_S(k, x) ((struct log_field){.key = (k), .type = LOG_T_STR, .v.s = (x)})
#define LOG_I(k, x) ((struct log_field){.key = (k), .type = LOG_T_INT, .v.i = (int64_t)(x)})
#define LOG_U(k, x) ((struct log_field){.key = (k), .type = LOG_T_UINT, .v.u = (uint64_t)(x)})
#define LOG_F(k, x) ((struct log_field){.key = (k), .type = LOG_T_DBL, .v.d = (double)(x)})
#define LOG_B(k, x) ((struct log_field){.key = (k), .type = LOG_T_BOOL, .v.b = (bool)(x)})
#define LOG_END     ((struct log_field){.key = NULL, .type = LOG_T_END})

/* Emits one line if `level` is enabled; a warn or error line is also kept for log_recent,
 * enabled or not. Fields are passed by value and end with LOG_END; the macros below add it.
 * Thread: any. */
void log_emit(enum log_level level, const char *msg, ...);

#define log_error(...) log_emit(LOG_ERROR, __VA_ARGS__, LOG_END)
#define log_warn(...)  log_emit(LOG_WARN, __VA_ARGS__, LOG_END)
#define log_info(...)  log_emit(LOG_INFO, __VA_ARGS__, LOG_END)
#define log_debug(...) log_emit(LOG_DEBUG, __VA_ARGS__, LOG_END)

/* Sets level and format; reads JOURNAL_STREAM once. Call on the loop thread (at start and on
 * reload); other threads only read the settings. */
void log_setup(enum log_level level, enum log_format format);

/* Where lines go (default 2, stderr). For tests. */
void log_set_fd(int fd);

/* Is `level` enabled? */
bool log_enabled(enum log_level level);

/* Registers a secret (copied) to be masked in every later line; empty or NULL is ignored.
 * log_clear_secrets() forgets them all (on reload, before registering the new ones). */
void log_add_secret(const char *secret);
void log_clear_secrets(void);

/* Registers a query parameter ("x_cg_pro_api_key=", ending in '=') or a header
 * ("x-cg-pro-api-key:", ending in ':') whose value is masked in every later line, up to the
 * next '&', quote or whitespace, whether or not the secret itself is registered. Matching
 * ignores case. Registering the same name twice is harmless. Returns 0, -EINVAL (no '=' or
 * ':' at the end, or longer than 63 bytes) or -ENOMEM. Thread: any, but meant for startup. */
int log_add_secret_param(const char *name);

/* Formats one line into buf (no trailing newline is added beyond what the format has) and
 * returns its length. The same routine log_emit uses; exported for tests. `fields` ends with
 * a LOG_T_END entry. `wall_ms` is the timestamp to print. */
size_t log_format_line(char *buf, size_t cap, enum log_level level, enum log_format format,
                       bool journal, uint64_t wall_ms, const char *msg,
                       const struct log_field *fields);

/* Masks registered secrets (and runs of their characters, see LOG_SECRET_FRAGMENT_MIN) and
 * key query parameters in buf[0..len) in place, within cap bytes with the NUL; returns the new
 * length. A mask that does not fit is dropped with the rest of the text, never written in part.
 * The one routine for every text that leaves the process: log lines and the fetch engine's
 * error messages (which become job_runs.error and the --once summary). Thread: any. */
size_t log_mask_secrets(char *buf, size_t len, size_t cap);

/* A rate limit for one kind of line (a storm of failures is one line a minute with a count):
 * log_ratelimit() says whether a line may go out at `now_ms` and, when it may, puts in
 * *suppressed how many lines it held back since the last one that went out. The first line
 * always goes out; then at most one per `interval_ms`. Zero it to start or to reset (say, on
 * recovery, so that the next failure is logged at once). Not locked: one per owner thread. */
struct log_ratelimit {
    uint64_t next_ms;    /* no line before this time (0: the next one goes out) */
    uint64_t suppressed; /* held back since the last line that went out */
};
bool log_ratelimit(struct log_ratelimit *rl, uint64_t now_ms, uint64_t interval_ms,
                   uint64_t *suppressed);

/* The most recent warn and error lines, kept whatever log_level says (for the status page):
 * LOG_RECENT_MAX of them, each masked like any line, in logfmt without the time stamp and cut
 * to LOG_RECENT_LINE bytes. */
#define LOG_RECENT_MAX  20
#define LOG_RECENT_LINE 512
struct log_recent {
    uint64_t wall_ms;
    enum log_level level;
    char line[LOG_RECENT_LINE];
};
/* Copies up to `max` of them into out, newest first; returns how many. Thread: any. */
size_t log_recent(struct log_recent *out, size_t max);
/* Forgets them (tests). */
void log_recent_clear(void);

/* Name of a level ("error", "warn", "info", "debug"). */
const char *log_level_name(enum log_level level);

#endif
