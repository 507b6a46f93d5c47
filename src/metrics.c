/*
 * metrics: a small registry of labelled series behind one mutex.
 *
 * Series are kept in an open hash table keyed by "name{labels}". Rendering groups series by
 * metric name (sorted, so the output is stable and each family's HELP/TYPE appears once), as
 * Prometheus' text format requires.
 */
#include "coingest/metrics.h"

#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

enum mtype { M_COUNTER, M_GAUGE, M_SUMMARY, M_UNTYPED };

struct mdesc {
    const char *name;
    enum mtype type;
    const char *help;
};

/* Every metric the daemon exports; docs/operations.md lists them for operators. */
static const struct mdesc descs[] = {
    {"coingest_http_requests_total", M_COUNTER, "HTTP requests sent, by API and status"},
    {"coingest_http_retries_total", M_COUNTER, "HTTP requests retried, by API and reason"},
    {"coingest_http_429_total", M_COUNTER, "HTTP 429 answers, by API"},
    {"coingest_http_errors_total", M_COUNTER, "Requests that failed for good, by API and reason"},
    {"coingest_http_bytes_total", M_COUNTER, "Response body bytes received, by API"},
    {"coingest_bucket_wait_seconds_total", M_COUNTER, "Seconds requests waited for the bucket"},
    {"coingest_bucket_queued", M_GAUGE, "Requests waiting for the bucket, by API"},
    {"coingest_rows_written_total", M_COUNTER, "Rows committed to the database, by table"},
    {"coingest_batches_total", M_COUNTER, "Batches committed, by table"},
    {"coingest_write_seconds", M_SUMMARY, "Time to write and commit one batch"},
    {"coingest_write_errors_total", M_COUNTER, "Failed batch writes (retried), by reason"},
    {"coingest_pending_rows", M_GAUGE, "Rows accepted and not yet committed (memory and spool)"},
    {"coingest_spool_rows", M_GAUGE, "Rows in the spool"},
    {"coingest_spool_bytes", M_GAUGE, "Bytes in the spool"},
    {"coingest_spool_corrupt_records_total", M_COUNTER, "Spool records skipped as corrupt"},
    {"coingest_rejected_rows_total", M_COUNTER, "Rows the database rejected for good, by table"},
    {"coingest_rows_lost_total", M_COUNTER,
     "Rows neither committed nor spooled (spool failing and memory full, out of memory, left "
     "in memory at shutdown), by reason"},
    {"coingest_db_up", M_GAUGE, "1 while the database is reachable"},
    {"coingest_parse_errors_total", M_COUNTER, "Responses that failed to parse, by API and job"},
    {"coingest_field_errors_total", M_COUNTER, "Fields of the wrong type stored as NULL"},
    {"coingest_source_errors_total", M_COUNTER,
     "Answers that cannot be right (endless walks, gutted coin lists, no rows), by API, job and "
     "reason"},
    {"coingest_unknown_ids_total", M_COUNTER,
     "Configured ids the API's coin list does not hold, once per run, by API and job"},
    {"coingest_job_runs_total", M_COUNTER, "Job runs, by job and status"},
    {"coingest_job_skipped_total", M_COUNTER,
     "Ticks skipped because the previous run was still going, by job"},
    {"coingest_job_duration_seconds", M_SUMMARY, "Job run duration, by job"},
    {"coingest_job_last_success_timestamp_seconds", M_GAUGE, "Last successful run, by job"},
    {"coingest_job_consecutive_failures", M_GAUGE, "Runs in a row that failed, by job"},
    {"coingest_reloads_total", M_COUNTER, "Configuration reloads applied"},
    {"coingest_reload_failures_total", M_COUNTER, "Configuration reloads refused"},
    {"coingest_unmapped_keys_total", M_COUNTER,
     "Source asset keys a mapping pass left unmapped (ambiguous or unknown)"},
    {"coingest_retention_deleted_rows_total", M_COUNTER,
     "Raw rows the retention job deleted (covered by a daily rollup), by table"},
    {"coingest_export_rows_total", M_COUNTER, "Rows the export job wrote to day files"},
    {"coingest_export_files_total", M_COUNTER, "Files (parts) the export job wrote"},
    {"coingest_export_uploaded_files_total", M_COUNTER,
     "Exported files uploaded to S3 and confirmed by their checksum"},
    {"coingest_export_upload_failures_total", M_COUNTER,
     "Exported files whose upload failed for good in a run (retried next run)"},
    {"coingest_api_calls_month", M_GAUGE,
     "Request attempts sent to the API this calendar month (UTC), from the ledger, by API"},
    {"coingest_api_credits_left", M_GAUGE,
     "Monthly credits left (-1: the plan has no monthly cap), by API"},
    {"coingest_history_points_total", M_COUNTER,
     "Price points the history job stored (market_chart/range windows)"},
    {"coingest_history_series_left", M_GAUGE,
     "Series (asset x currency) the history pass has not brought up to date yet"},
    {"coingest_history_series_done", M_GAUGE,
     "Series (asset x currency) the history pass has brought up to date"},
    {"coingest_api_credits_projected", M_GAUGE,
     "Calls the month will have used at its end on the schedule being run, by API"},
    {"coingest_job_interval_seconds", M_GAUGE,
     "The interval a job runs at: its configured every, or longer when the month's credits "
     "cannot carry it, by job"},
    {"coingest_cluster_instance_info", M_GAUGE,
     "1, labelled with this instance's [cluster] name (cluster mode only)"},
    {"coingest_cluster_lease_held", M_GAUGE,
     "1 while this instance holds the lease (job:NAME or budget:SOURCE), by lease"},
    {"coingest_cluster_lease_changes_total", M_COUNTER,
     "Leases this instance acquired or lost, by lease and change"},
};

/* Counters without labels that are rendered at 0 until their first event, so that rate() and
 * increase() see that event (a series that appears at 1 shows no increase). A labelled
 * counter cannot be listed here: only the module that counts knows its label values. */
static const char *const zero_at_start[] = {
    "coingest_spool_corrupt_records_total",
    "coingest_field_errors_total",
    "coingest_reloads_total",
    "coingest_reload_failures_total",
    "coingest_unmapped_keys_total",
    "coingest_history_points_total",
    "coingest_history_series_left",
    "coingest_history_series_done",
    "coingest_export_rows_total",
    "coingest_export_files_total",
    "coingest_export_uploaded_files_total",
    "coingest_export_upload_failures_total",
};

struct series {
    char *key; /* name{labels} or name */
    char *name;
    char *labels;
    double value; /* counter/gauge; summary: sum */
    double count; /* summary */
    int kind;     /* 0 value, 1 summary */
};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static struct series *table;
static size_t cap, used;

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    while (*s)
        h = (h ^ (unsigned char)*s++) * 1099511628211ull;
    return h;
}

static int grow(void)
{
    size_t ncap = cap ? cap * 2 : 64;
    struct series *nt = calloc(ncap, sizeof(*nt));
    if (!nt)
        return -1;
    for (size_t i = 0; i < cap; i++) {
        if (!table[i].key)
            continue;
        size_t j = hash(table[i].key) & (ncap - 1);
        while (nt[j].key)
            j = (j + 1) & (ncap - 1);
        nt[j] = table[i];
    }
    free(table);
    table = nt;
    cap = ncap;
    return 0;
}

/* Finds or creates a series; called with mu held. NULL on OOM. */
static struct series *lookup(const char *name, const char *labels, int kind)
{
    char key[512];
    labels = labels ? labels : "";
    snprintf(key, sizeof(key), "%s{%s}", name, labels);
    if ((used + 1) * 2 > cap && grow())
        return NULL;
    size_t j = hash(key) & (cap - 1);
    while (table[j].key) {
        if (strcmp(table[j].key, key) == 0)
            return &table[j];
        j = (j + 1) & (cap - 1);
    }
    struct series *s = &table[j];
    s->key = strdup(key);
    s->name = strdup(name);
    s->labels = strdup(labels);
    if (!s->key || !s->name || !s->labels) {
        free(s->key);
        free(s->name);
        free(s->labels);
        memset(s, 0, sizeof(*s));
        return NULL;
    }
    s->kind = kind;
    used++;
    return s;
}

void metrics_add(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&mu);
    struct series *s = lookup(name, labels, 0);
    if (s)
        s->value += v;
    pthread_mutex_unlock(&mu);
}

void metrics_set(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&mu);
    struct series *s = lookup(name, labels, 0);
    if (s)
        s->value = v;
    pthread_mutex_unlock(&mu);
}

void metrics_observe(const char *name, const char *labels, double v)
{
    pthread_mutex_lock(&mu);
    struct series *s = lookup(name, labels, 1);
    if (s) {
        s->value += v;
        s->count += 1;
    }
    pthread_mutex_unlock(&mu);
}

double metrics_get(const char *name, const char *labels)
{
    char key[512];
    snprintf(key, sizeof(key), "%s{%s}", name, labels ? labels : "");
    double v = 0;
    pthread_mutex_lock(&mu);
    if (cap) {
        size_t j = hash(key) & (cap - 1);
        while (table[j].key) {
            if (strcmp(table[j].key, key) == 0) {
                v = table[j].value;
                break;
            }
            j = (j + 1) & (cap - 1);
        }
    }
    pthread_mutex_unlock(&mu);
    return v;
}

static const struct mdesc *describe(const char *name)
{
    for (size_t i = 0; i < sizeof(descs) / sizeof(descs[0]); i++)
        if (strcmp(descs[i].name, name) == 0)
            return &descs[i];
    return NULL;
}

static int by_key(const void *a, const void *b)
{
    const struct series *x = *(struct series *const *)a, *y = *(struct series *const *)b;
    int c = strcmp(x->name, y->name);
    return c ? c : strcmp(x->labels, y->labels);
}

static void emit_value(FILE *f, const char *name, const char *suffix, const char *labels, double v)
{
    if (*labels)
        fprintf(f, "%s%s{%s} %.17g\n", name, suffix, labels, v);
    else
        fprintf(f, "%s%s %.17g\n", name, suffix, v);
}

char *metrics_render(size_t *len)
{
    char *out = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&out, &n);
    if (!f)
        return NULL;
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < sizeof(zero_at_start) / sizeof(zero_at_start[0]); i++)
        lookup(zero_at_start[i], "", 0); /* on OOM it is just not shown yet */
    struct series **sorted = calloc(used ? used : 1, sizeof(*sorted));
    size_t k = 0;
    for (size_t i = 0; sorted && i < cap; i++)
        if (table[i].key)
            sorted[k++] = &table[i];
    if (sorted)
        qsort(sorted, k, sizeof(*sorted), by_key);
    const char *last = "";
    for (size_t i = 0; sorted && i < k; i++) {
        struct series *s = sorted[i];
        if (strcmp(s->name, last) != 0) {
            const struct mdesc *d = describe(s->name);
            static const char *const tnames[] = {"counter", "gauge", "summary", "untyped"};
            fprintf(f, "# HELP %s %s\n", s->name, d ? d->help : "coingest metric");
            fprintf(f, "# TYPE %s %s\n", s->name, tnames[d ? d->type : M_UNTYPED]);
            last = s->name;
        }
        if (s->kind == 1) {
            emit_value(f, s->name, "_sum", s->labels, s->value);
            emit_value(f, s->name, "_count", s->labels, s->count);
        } else {
            emit_value(f, s->name, "", s->labels, s->value);
        }
    }
    pthread_mutex_unlock(&mu);
    free(sorted);
    fclose(f);
    if (len)
        *len = n;
    return out;
}

void metrics_reset(void)
{
    pthread_mutex_lock(&mu);
    for (size_t i = 0; i < cap; i++) {
        free(table[i].key);
        free(table[i].name);
        free(table[i].labels);
    }
    free(table);
    table = NULL;
    cap = used = 0;
    pthread_mutex_unlock(&mu);
}
