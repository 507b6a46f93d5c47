/*
 * export: what the files of the export source share (private to src/sources/export/ and its
 * tests). docs/export.md has the layout, the NULL rule, the manifest and the design.
 *
 * The job (job.c) runs on the loop thread only long enough to copy its settings into a
 * `struct export_plan` and hand that to run_work(): everything else -- the database reads, the
 * gzip files, the uploads -- happens in export_execute() on a thread off the loop, with its
 * own database connection, and the result comes back to the loop in the plan.
 *
 * Thread: export_execute and everything it calls run on the work thread; the format functions
 * are pure and run anywhere.
 */
#ifndef COINGEST_SOURCES_EXPORT_H
#define COINGEST_SOURCES_EXPORT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/config.h"
#include "coingest/runner.h"
#include "coingest/sbuf.h"

extern const struct job_def export_job;

#define EXPORT_MS_DAY 86400000ll

/* The longest export dir: room under PATH_MAX for TABLE/date=D/NAME. */
#define EXPORT_DIR_MAX 3072

/* A table export knows: its name, the column whose UTC day puts a row in a day, and a
 * condition ANDed to the day's range (NULL: none) that lets the server use an index whose
 * first column is not the day column. */
struct export_table {
    const char *name;
    const char *day_col;
    const char *index_hint;
};

/* The tables export can write, and the one called `name` (NULL when unknown). */
extern const struct export_table export_tables[];
extern const size_t export_ntables;
const struct export_table *export_table_find(const char *name);

/* ---- format.c: one value as CSV and as JSON ------------------------------------------------ */

/* How a column is written; from its SQL type (export_kind_of). */
enum export_kind {
    EXPORT_INT,    /* integer types: digits */
    EXPORT_DOUBLE, /* DOUBLE/FLOAT: sbuf_put_double (round-trips exactly) */
    EXPORT_TIME,   /* DATETIME/TIMESTAMP: 2026-11-01T13:45:07.123Z */
    EXPORT_DATE,   /* DATE: 2026-11-01 */
    EXPORT_NUMBER, /* DECIMAL: the server's digits, unquoted */
    EXPORT_TEXT,   /* everything else (VARCHAR, TEXT, JSON): a string */
};

/* The kind of a column from information_schema's DATA_TYPE ("bigint", "double", ...). */
enum export_kind export_kind_of(const char *data_type);

/* One value; `null` or the member of the column's kind. */
struct export_value {
    bool null;
    bool is_unsigned; /* EXPORT_INT */
    long long i;      /* EXPORT_INT (as unsigned long long when is_unsigned) */
    double d;         /* EXPORT_DOUBLE */
    int64_t ms;       /* EXPORT_TIME: ms since the epoch; EXPORT_DATE: the day's midnight */
    const char *s;    /* EXPORT_TEXT, EXPORT_NUMBER: s[0..n), any bytes */
    size_t n;
};

/* Appends the value as one RFC 4180 field: NULL is an empty unquoted field (the one NULL
 * spelling), strings are always quoted (so an empty string is ""), with quotes doubled;
 * numbers and times unquoted. A DOUBLE that is NaN or infinite (MariaDB stores neither) is
 * written as NULL. 0 or -ENOMEM. */
int export_csv_value(struct sbuf *b, enum export_kind kind, const struct export_value *v);

/* Appends the value as a JSON value: null, a number, or a string (times as in CSV; JSON
 * columns as the string of their text). Invalid UTF-8 bytes become U+FFFD. 0 or -ENOMEM. */
int export_json_value(struct sbuf *b, enum export_kind kind, const struct export_value *v);

/* Appends s[0..n) as a JSON string (quotes included). 0 or -ENOMEM. */
int export_json_string(struct sbuf *b, const char *s, size_t n);

/* ms since the epoch as 2026-11-01T13:45:07.123Z, and a day number (days since 1970-01-01) as
 * 2026-11-01; buf at least 32 bytes. */
void export_format_time(int64_t ms, char *buf, size_t cap);
void export_format_day(int64_t day, char *buf, size_t cap);

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
int64_t export_days_from_civil(int y, unsigned m, unsigned d);

/* "date=YYYY-MM-DD" to a day number; 0 or -EINVAL. */
int export_parse_day_dir(const char *name, int64_t *day);

/* ---- the plan: what one run does, copied off the config on the loop thread ---------------- */

struct export_s3 {
    char *bucket, *prefix, *region, *endpoint; /* endpoint without a trailing '/' */
    bool path_style;
    bool delete_local;
    char *access_key, *secret_key, *session_token;
    uint64_t requests_per_second;
    uint32_t retries;
    uint64_t retry_base_ms, retry_cap_ms;
    uint64_t timeout_ms;
};

struct export_plan {
    /* in */
    char *dir;
    char **tables; /* names, checked against export_tables */
    size_t ntables;
    bool csv, jsonl;
    uint32_t days;
    uint64_t part_max_bytes;
    int64_t now_ms;         /* the run's start: the last closed day is the one before it */
    struct cfg_database db; /* a deep copy (export_db_copy) */
    bool upload;            /* s3 is set */
    struct export_s3 s3;
    atomic_bool cancel;
    void *owner; /* the run (job.c); not for the work thread */

    /* out */
    uint64_t days_written, days_unchanged, days_failed;
    uint64_t rows_written, files_written, bytes_written;
    uint64_t files_uploaded, bytes_uploaded, upload_failures, stale_deleted;
    char error[512]; /* first error, "" when none */
};

/* Frees what the plan holds (not the plan). */
void export_plan_clear(struct export_plan *p);

/* Deep copy of the database settings; 0 or -ENOMEM (dst then holds what was copied). */
int export_db_copy(struct cfg_database *dst, const struct cfg_database *src);
void export_db_clear(struct cfg_database *db);

/* Does the whole run (day.c): exports every closed day of every table in the window that is
 * missing or whose rows changed, then uploads what is not yet uploaded. Records the first
 * error in p->error; stops early when p->cancel is set. Work thread. */
void export_execute(struct export_plan *p);

/* Records an error in the plan (the first one is kept) and logs it. */
void export_fail(struct export_plan *p, const char *what, const char *why);

/* ---- s3.c ----------------------------------------------------------------------------------- */

struct export_s3_client;

/* A client for one run: a curl easy handle and the uploads' own token bucket. NULL on OOM. */
struct export_s3_client *export_s3_new(const struct export_plan *p);
void export_s3_free(struct export_s3_client *c);

/* PUTs the file at `path` as object `key` (export_s3_key), signed with SigV4, with its sha256
 * (hex) and md5 (hex) -- the store checks both; returns 0 only when the store answered 2xx
 * with an ETag equal to the md5, i.e. it holds exactly these bytes. Retries with backoff on
 * network errors, 5xx, 429 and 408. -ECANCELED when the run was cancelled, -EBADMSG for an
 * ETag that differs, another -errno otherwise; the reason in err. Work thread. */
int export_s3_put(struct export_s3_client *c, const char *key, const char *path,
                  const char *content_type, const char *sha256_hex, const char *md5_hex, char *err,
                  size_t errlen);

/* DELETEs a key (204 and 404 are both success). 0 or -errno with the reason in err. */
int export_s3_delete(struct export_s3_client *c, const char *key, char *err, size_t errlen);

/* The object key of a file: PREFIX/TABLE/date=D/NAME (no leading '/'; no prefix: TABLE/...). */
int export_s3_key(const struct export_s3 *s3, const char *table, const char *date, const char *name,
                  char *buf, size_t cap);

/* ---- files: sha256/md5 of a file ------------------------------------------------------------ */

/* The hex sha256 and md5 of the file at `path` (65 and 33 bytes). 0 or -errno. */
int export_file_digests(const char *path, char *sha256_hex, char *md5_hex, uint64_t *bytes);

#endif
