/*
 * export job: [job.export] (off by default). On the loop thread a run only checks and copies
 * its settings into a struct export_plan -- the tables, the formats, the window, the database
 * settings and the S3 credentials (from the environment, else from s3_credentials_file) -- and
 * hands the plan to run_work(); export_execute() (day.c) then does everything on a thread off
 * the loop with its own database connection, and the run ends when the plan comes back.
 * Cancelling the run (shutdown) sets the plan's flag, which the work checks between rows,
 * files and retries.
 *
 * The run's own connection, not a writer of the sink's pool: a day's read streams for as long
 * as its files take to write, and a writer held that long would stall the rows of every other
 * job.
 */
#include <errno.h>
#include <ini.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/runner.h"
#include "coingest/util.h"
#include "sources/export/export.h"

static const struct cfg_key export_keys[] = {
    {"dir", CFG_KEY_STR, NULL, 0, 0},
    {"tables", CFG_KEY_NAMES,
     "prices, market_snapshots, global_snapshots, candles, price_rollups, indicators_daily", 0, 0},
    {"formats", CFG_KEY_NAMES, "csv.gz", 0, 0},
    {"days", CFG_KEY_U64, "7", 1, 3660},
    {"part_max_bytes", CFG_KEY_U64, "67108864", 1024, 5368709120ull},
    {"s3_bucket", CFG_KEY_STR, NULL, 0, 0},
    {"s3_prefix", CFG_KEY_STR, NULL, 0, 0},
    {"s3_region", CFG_KEY_STR, "us-east-1", 0, 0},
    {"s3_endpoint", CFG_KEY_STR, NULL, 0, 0},
    {"s3_path_style", CFG_KEY_BOOL, "false", 0, 0},
    {"s3_credentials_file", CFG_KEY_STR, NULL, 0, 0},
    {"s3_profile", CFG_KEY_STR, "default", 0, 0},
    {"s3_delete_local", CFG_KEY_BOOL, "false", 0, 0},
    {"s3_requests_per_second", CFG_KEY_U64, "10", 1, 10000},
    {"s3_retries", CFG_KEY_U64, "5", 0, 100},
    {"s3_timeout", CFG_KEY_DURATION, "5m", 1000, 86400000},
};

struct export_run {
    struct export_plan *plan;
};

void export_db_clear(struct cfg_database *db)
{
    free(db->host);
    free(db->socket);
    free(db->user);
    free(db->password);
    free(db->database);
    free(db->migrations_dir);
    free(db->ssl_ca);
    free(db->ssl_cert);
    free(db->ssl_key);
    memset(db, 0, sizeof(*db));
}

int export_db_copy(struct cfg_database *dst, const struct cfg_database *src)
{
    *dst = *src;
    char **fields[] = {&dst->host,     &dst->socket,   &dst->user,
                       &dst->password, &dst->database, &dst->migrations_dir,
                       &dst->ssl_ca,   &dst->ssl_cert, &dst->ssl_key};
    int rc = 0;
    for (size_t i = 0; i < ARRAY_SIZE(fields); i++) {
        if (!*fields[i])
            continue;
        char *copy = strdup(*fields[i]);
        if (!copy)
            rc = -ENOMEM;
        *fields[i] = copy;
    }
    return rc;
}

void export_plan_clear(struct export_plan *p)
{
    free(p->dir);
    for (size_t i = 0; i < p->ntables; i++)
        free(p->tables[i]);
    free(p->tables);
    export_db_clear(&p->db);
    free(p->s3.bucket);
    free(p->s3.prefix);
    free(p->s3.region);
    free(p->s3.endpoint);
    free(p->s3.access_key);
    free(p->s3.secret_key);
    free(p->s3.session_token);
}

/* The AWS shared credentials file (INI): the profile's three keys. */
struct creds_read {
    const char *profile;
    struct export_s3 *s3;
};

static int on_creds(void *arg, const char *section, const char *name, const char *value)
{
    struct creds_read *cr = arg;
    if (strcmp(section, cr->profile) != 0)
        return 1;
    char **slot = strcmp(name, "aws_access_key_id") == 0       ? &cr->s3->access_key
                  : strcmp(name, "aws_secret_access_key") == 0 ? &cr->s3->secret_key
                  : strcmp(name, "aws_session_token") == 0     ? &cr->s3->session_token
                                                               : NULL;
    if (slot) {
        free(*slot);
        *slot = strdup(value);
    }
    return 1;
}

static const char *str_value(const struct cfg_job *job, const char *key)
{
    const struct cfg_value *v = config_job_value(job, key);
    return v && v->s && *v->s ? v->s : NULL;
}

static uint64_t u_value(const struct cfg_job *job, const char *key, uint64_t dflt)
{
    const struct cfg_value *v = config_job_value(job, key);
    return v ? v->u : dflt;
}

static bool b_value(const struct cfg_job *job, const char *key)
{
    const struct cfg_value *v = config_job_value(job, key);
    return v && v->b;
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* Fills the plan from the job's config; on a config error returns -EINVAL with why. */
static int make_plan(struct run *r, struct export_plan *p, char *why, size_t cap)
{
    const struct cfg_job *job = run_job(r);
    const char *dir = str_value(job, "dir");
    if (!dir) {
        snprintf(why, cap, "[job.export] dir is not set (where the files go)");
        return -EINVAL;
    }
    if (strlen(dir) > EXPORT_DIR_MAX) {
        snprintf(why, cap, "[job.export] dir is longer than %d bytes", EXPORT_DIR_MAX);
        return -EINVAL;
    }
    const struct cfg_value *tables = config_job_value(job, "tables");
    const struct cfg_value *formats = config_job_value(job, "formats");
    if (!(p->dir = strdup(dir)) || !(p->tables = calloc(tables->list.n + 1, sizeof(char *))))
        return -ENOMEM;
    for (size_t i = 0; i < tables->list.n; i++) {
        const char *t = tables->list.items[i];
        if (!export_table_find(t)) {
            snprintf(why, cap, "[job.export] tables: unknown table \"%s\"", t);
            return -EINVAL;
        }
        if (!(p->tables[p->ntables++] = strdup(t)))
            return -ENOMEM;
    }
    for (size_t i = 0; i < formats->list.n; i++) {
        const char *f = formats->list.items[i];
        if (strcmp(f, "csv.gz") == 0)
            p->csv = true;
        else if (strcmp(f, "jsonl.gz") == 0)
            p->jsonl = true;
        else {
            snprintf(why, cap, "[job.export] formats: \"%s\" is neither csv.gz nor jsonl.gz", f);
            return -EINVAL;
        }
    }
    if (!p->csv && !p->jsonl) {
        snprintf(why, cap, "[job.export] formats is empty");
        return -EINVAL;
    }
    p->days = (uint32_t)u_value(job, "days", 7);
    p->part_max_bytes = u_value(job, "part_max_bytes", 67108864);
    p->now_ms = (int64_t)run_started_ms(r);
    if (export_db_copy(&p->db, &run_config(r)->database) != 0)
        return -ENOMEM;

    const char *bucket = str_value(job, "s3_bucket");
    if (!bucket)
        return 0;
    struct export_s3 *s3 = &p->s3;
    p->upload = true;
    s3->path_style = b_value(job, "s3_path_style");
    s3->delete_local = b_value(job, "s3_delete_local");
    s3->requests_per_second = u_value(job, "s3_requests_per_second", 10);
    s3->retries = (uint32_t)u_value(job, "s3_retries", 5);
    s3->retry_base_ms = 500;
    s3->retry_cap_ms = 30000;
    s3->timeout_ms = u_value(job, "s3_timeout", 300000);
    const char *endpoint = str_value(job, "s3_endpoint");
    if (!(s3->bucket = strdup(bucket)) ||
        !(s3->region =
              strdup(str_value(job, "s3_region") ? str_value(job, "s3_region") : "us-east-1")))
        return -ENOMEM;
    if (str_value(job, "s3_prefix") && !(s3->prefix = strdup(str_value(job, "s3_prefix"))))
        return -ENOMEM;
    if (endpoint) {
        if (!strstr(endpoint, "://")) {
            snprintf(why, cap, "[job.export] s3_endpoint \"%s\" is not a URL (https://host)",
                     endpoint);
            return -EINVAL;
        }
        if (!(s3->endpoint = strdup(endpoint)))
            return -ENOMEM;
        size_t n = strlen(s3->endpoint);
        while (n && s3->endpoint[n - 1] == '/')
            s3->endpoint[--n] = '\0';
    }
    const char *key = getenv("AWS_ACCESS_KEY_ID"), *secret = getenv("AWS_SECRET_ACCESS_KEY");
    if (key && *key && secret && *secret) {
        s3->access_key = strdup(key);
        s3->secret_key = strdup(secret);
        s3->session_token = dup_or_null(getenv("AWS_SESSION_TOKEN"));
    } else if (str_value(job, "s3_credentials_file")) {
        const char *file = str_value(job, "s3_credentials_file");
        struct creds_read cr = {
            str_value(job, "s3_profile") ? str_value(job, "s3_profile") : "default", s3};
        int line = ini_parse(file, on_creds, &cr);
        if (line != 0) {
            snprintf(why, cap, "[job.export] s3_credentials_file %s: %s", file,
                     line < 0 ? "cannot be read" : "not an INI file");
            return -EINVAL;
        }
        if (!s3->access_key || !s3->secret_key) {
            snprintf(why, cap,
                     "[job.export] s3_credentials_file %s: profile [%s] has no "
                     "aws_access_key_id and aws_secret_access_key",
                     file, cr.profile);
            return -EINVAL;
        }
    } else {
        snprintf(why, cap,
                 "s3_bucket is set but there are no credentials: set AWS_ACCESS_KEY_ID and "
                 "AWS_SECRET_ACCESS_KEY, or [job.export] s3_credentials_file");
        return -EINVAL;
    }
    if (!s3->access_key || !s3->secret_key)
        return -ENOMEM;
    log_add_secret(s3->secret_key);
    log_add_secret(s3->session_token);
    return 0;
}

static void work(void *arg)
{
    struct export_plan *p = arg;
    export_execute(p);
}

static void work_done(void *arg)
{
    struct export_plan *p = arg;
    struct run *r = p->owner;
    if (p->error[0])
        run_fail(r, "export", p->error);
    metrics_add("coingest_export_rows_total", "", (double)p->rows_written);
    metrics_add("coingest_export_files_total", "", (double)p->files_written);
    metrics_add("coingest_export_uploaded_files_total", "", (double)p->files_uploaded);
    metrics_add("coingest_export_upload_failures_total", "", (double)p->upload_failures);
    log_info("export done", LOG_U("days_written", p->days_written),
             LOG_U("days_unchanged", p->days_unchanged), LOG_U("days_failed", p->days_failed),
             LOG_U("rows", p->rows_written), LOG_U("files", p->files_written),
             LOG_U("bytes", p->bytes_written), LOG_U("uploaded", p->files_uploaded),
             LOG_U("uploaded_bytes", p->bytes_uploaded),
             LOG_U("upload_failures", p->upload_failures),
             LOG_U("stale_deleted", p->stale_deleted));
    run_finish(r);
}

static int export_start(struct run *r)
{
    struct export_run *st = run_state(r);
    char why[512] = "";
    /* Off and not configured: `--once all` runs every job of every enabled source, and a
     * default config must not fail it. Switched on without a dir is an error (below). */
    if (!run_job(r)->enabled && !str_value(run_job(r), "dir")) {
        log_warn("export: [job.export] is off and has no dir; nothing to export");
        run_finish(r);
        return 0;
    }
    if (!(st->plan = calloc(1, sizeof(*st->plan))))
        return -ENOMEM;
    atomic_init(&st->plan->cancel, false);
    st->plan->owner = r;
    int rc = make_plan(r, st->plan, why, sizeof(why));
    if (rc == 0)
        rc = run_work(r, work, work_done, st->plan);
    if (rc == -ENOTSUP)
        snprintf(why, sizeof(why), "this store cannot run work off the loop");
    if (rc != 0) {
        run_fail(r, "export", why[0] ? why : strerror(-rc));
        run_finish(r);
    }
    return 0;
}

static void export_cancel(struct run *r)
{
    struct export_run *st = run_state(r);
    if (st->plan)
        atomic_store(&st->plan->cancel, true);
}

static void export_cleanup(struct run *r)
{
    struct export_run *st = run_state(r);
    if (st->plan) {
        export_plan_clear(st->plan);
        free(st->plan);
        st->plan = NULL;
    }
}

const struct job_def export_job = {
    .name = "export",
    .every_ms = 3600000,
    .enabled = false,
    .keys = export_keys,
    .nkeys = ARRAY_SIZE(export_keys),
    .run_size = sizeof(struct export_run),
    .start = export_start,
    .cleanup = export_cleanup,
    .cancel = export_cancel,
};
