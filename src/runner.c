/*
 * runner: the lifecycle every job shares (see runner.h).
 *
 * The runner keeps one slot per job of the config (the registry's order) and one shared state
 * per source. A run wraps the job's own state: the runner's part counts requests, rows and
 * anomalies, keeps the first error, and knows the one request in flight so that a shutdown
 * can cancel it. Requests go through small trampolines (on_parse, on_done) that do the
 * bookkeeping before the job's callbacks see the result; the job never touches the API, the
 * sink or the metrics itself.
 *
 * The monthly ledger. Every attempt a request made (res->attempts, retries included) counts
 * against its source's month (calendar month, UTC). The count lives in memory per source and
 * in the api_usage table: when a source is first used (and at each new month) the month's row
 * is read back through the store, and requests wait for that read; afterwards the absolute
 * count is written through the store (an upsert that never lowers it) at the end of every
 * run and at most once a minute during a long one. A kill -9 thus loses at most the calls of
 * the last minute, or of the run in progress: a restart may send that many more than the
 * plan allows, which the reserve absorbs. When the row cannot be read (the database is down,
 * the table missing) the runner counts from what it sent itself, writes nothing that could
 * be mistaken for the month's total, and asks again a minute later. A request is refused
 * (never sent) once the month's count reaches monthly_credits - credit_reserve; the run fails
 * with that as its error, logged once per run.
 */
#include "coingest/runner.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/source.h"
#include "coingest/util.h"

struct run {
    struct runner *rn;
    size_t job;
    const struct job_def *def;
    const struct config *cfg; /* as the run started: a reload mid-run is harmless */
    runner_done_cb done;
    void *done_arg;
    struct run_summary sum;
    uint64_t ok_requests, failed_requests;
    bool cancelled;
    bool finished;

    /* the request in flight */
    struct fetch_req *req;
    fetch_parse_cb parse;
    fetch_done_cb req_done;
    char path[160];      /* its beginning, for error messages */
    long handled_status; /* a final HTTP status the job handles itself (run_handle_status) */
    char *waiting_path;  /* a request waiting for its source's ledger to be read, or NULL */
    size_t waiting_max_body;
    bool credits_logged; /* the run has said that the month's credits are used up */

    void *state; /* def->run_size bytes */
};

enum ledger_state {
    LEDGER_UNREAD = 0, /* the month's row has not been asked for */
    LEDGER_READING,    /* it has; requests wait */
    LEDGER_READ,       /* base holds it */
    LEDGER_UNKNOWN     /* the read failed: own calls only, asked again after a minute */
};

/* One source's calls this month (see the file comment). */
struct ledger {
    enum ledger_state state;
    int64_t period_ms;   /* the month counted: its first day, 00:00 UTC */
    uint64_t base;       /* calls the database held for the month when it was read */
    uint64_t own;        /* calls this process made in the month */
    uint64_t flushed;    /* base + own at the last write */
    uint64_t flushed_ms; /* wall time of the last write */
    uint64_t failed_ms;  /* wall time of the last failed read */
};

struct ledger_read {
    struct runner *rn;
    size_t source;
    int64_t period_ms;
};

struct runner {
    const struct config *cfg;
    struct ledger *ledgers; /* per source */
    struct api **apis;      /* per source */
    void **source_state;    /* per source */
    struct store store;
    struct run **runs;        /* per job */
    struct run_summary *last; /* per job */
    size_t nsources, njobs;
};

const char *run_status_name(enum run_status s)
{
    switch (s) {
    case RUN_OK:
        return "ok";
    case RUN_PARTIAL:
        return "partial";
    default:
        return "failed";
    }
}

/* ---- the monthly ledger ------------------------------------------------------------------ */

/* Days since 1970-01-01 of a civil date, and back (proleptic Gregorian, UTC). */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

static void civil_from_days(int64_t z, int64_t *y, unsigned *m)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int64_t)yoe + era * 400 + (*m <= 2);
}

/* The first day of the month of wall_ms (00:00 UTC), and of the month after it, in ms. */
static int64_t month_start_ms(uint64_t wall_ms, int next)
{
    int64_t y;
    unsigned m;
    civil_from_days((int64_t)(wall_ms / 86400000), &y, &m);
    if (next && ++m > 12) {
        m = 1;
        y++;
    }
    return days_from_civil(y, m, 1) * 86400000;
}

/* "YYYY-MM-DD HH:MM:SS" of a wall time, as the database reads it. */
static void sql_datetime(int64_t ms, char *buf, size_t cap)
{
    int64_t days = ms / 86400000, sec = (ms % 86400000) / 1000, y;
    unsigned m;
    civil_from_days(days, &y, &m);
    unsigned d = (unsigned)(days - days_from_civil(y, m, 1)) + 1;
    snprintf(buf, cap, "%04lld-%02u-%02u %02lld:%02lld:%02lld", (long long)y, m, d,
             (long long)(sec / 3600), (long long)(sec / 60 % 60), (long long)(sec % 60));
}

static uint64_t ledger_used(const struct ledger *l)
{
    return l->base + l->own;
}

/* coingest_api_calls_month and coingest_api_credits_left (-1: the plan has no monthly cap). */
static void ledger_metrics(const struct runner *rn, size_t s)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct ledger *l = &rn->ledgers[s];
    char labels[96];
    snprintf(labels, sizeof(labels), "api=\"%s\"", src->name);
    uint64_t used = ledger_used(l);
    metrics_set("coingest_api_calls_month", labels, (double)used);
    metrics_set("coingest_api_credits_left", labels,
                !src->monthly_credits         ? -1.0
                : used < src->monthly_credits ? (double)(src->monthly_credits - used)
                                              : 0.0);
}

/* Writes the month's count through the store when it changed; only a count that includes
 * the database's own (LEDGER_READ) is ever written. */
static void ledger_flush(struct runner *rn, size_t s)
{
    struct ledger *l = &rn->ledgers[s];
    uint64_t used = ledger_used(l);
    if (l->state != LEDGER_READ || used == l->flushed)
        return;
    const char *name = rn->cfg->sources[s].name;
    uint64_t now = util_wall_ms();
    struct batch *b = batch_new(BATCH_API_USAGE, 1);
    if (!b || batch_add_row(b) != 0 ||
        batch_set_str(b, 0, BATCH_API_USAGE_COL_SOURCE, name, strlen(name)) != 0) {
        batch_free(b);
        log_warn("api_usage row not written: out of memory", LOG_S("source", name));
        return;
    }
    batch_set_time(b, 0, BATCH_API_USAGE_COL_PERIOD_START, l->period_ms);
    batch_set_int(b, 0, BATCH_API_USAGE_COL_CALLS, (int64_t)used);
    batch_set_time(b, 0, BATCH_API_USAGE_COL_UPDATED_AT, (int64_t)now);
    if (rn->store.submit(rn->store.ctx, b) != 0) {
        log_warn("api_usage row not written", LOG_S("source", name));
        return;
    }
    l->flushed = used;
    l->flushed_ms = now;
}

/* Requests per month the schedule implies for source s with `universe` assets (printing the
 * per-job budget lines to out when not NULL), and the universe the budget assumes. */
static double source_month_need(const struct config *cfg, size_t s, uint64_t universe, FILE *out);
static uint64_t budget_universe(const struct config *cfg, uint64_t universe_size);

static void ledger_log(const struct runner *rn, size_t s, uint64_t now)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct ledger *l = &rn->ledgers[s];
    uint64_t used = ledger_used(l);
    int64_t end = month_start_ms(now, 1);
    double left_of_month = (double)(end - (int64_t)now) / (double)(end - l->period_ms);
    double projected =
        (double)used +
        source_month_need(rn->cfg, s, budget_universe(rn->cfg, 0), NULL) * left_of_month;
    log_info("monthly credits", LOG_S("source", src->name), LOG_U("used", used),
             LOG_U("monthly_credits", src->monthly_credits),
             LOG_U("credit_reserve", src->credit_reserve),
             LOG_U("left", src->monthly_credits > used ? src->monthly_credits - used : 0),
             LOG_U("projected", (uint64_t)llround(projected)));
}

static int send_checked(struct run *r, const char *path_query, size_t max_body);
static void on_done(const struct fetch_result *res, void *arg);

/* Sends the requests that waited for source s's ledger (a request refused now ends as a
 * failed one, through the job's done callback: we are in a callback already). */
static void ledger_release(struct runner *rn, size_t s)
{
    for (size_t j = 0; j < rn->njobs; j++) {
        struct run *r = rn->runs[j];
        if (!r || !r->waiting_path || rn->cfg->jobs[j].source != s)
            continue;
        char *path = r->waiting_path;
        r->waiting_path = NULL;
        int rc = r->cancelled ? -ECANCELED : send_checked(r, path, r->waiting_max_body);
        free(path);
        if (rc != 0) {
            struct fetch_result res = {.outcome =
                                           rc == -ECANCELED ? FETCH_CANCELLED : FETCH_HTTP_ERROR,
                                       .error = rc == -ENOMEM ? "out of memory" : r->sum.error};
            on_done(&res, r);
        }
    }
}

static void ledger_read_done(int rc, const struct store_rows *rows, const char *err, void *arg)
{
    struct ledger_read *lr = arg;
    struct runner *rn = lr->rn;
    struct ledger *l = &rn->ledgers[lr->source];
    const char *name = rn->cfg->sources[lr->source].name;
    uint64_t now = util_wall_ms();
    if (l->state != LEDGER_READING || l->period_ms != lr->period_ms) {
        /* a new month began while the read was away: its answer is stale */
    } else if (rc == 0) {
        l->base = 0;
        if (rows && rows->nrows > 0 && rows->ncols > 0 && rows->cells[0])
            l->base = strtoull(rows->cells[0], NULL, 10);
        l->state = LEDGER_READ;
        l->flushed = ledger_used(l) == l->base ? l->base : 0;
        ledger_metrics(rn, lr->source);
        ledger_log(rn, lr->source, now);
    } else {
        l->state = LEDGER_UNKNOWN;
        l->failed_ms = now;
        log_warn("cannot read the month's API calls; counting this process's calls only",
                 LOG_S("source", name), LOG_S("error", err ? err : strerror(-rc)));
    }
    size_t source = lr->source;
    free(lr);
    ledger_release(rn, source);
}

/* Starts a new month's count when the month changed; asks the store for the month's row when
 * it has not been read (or a failed read is a minute old). Returns true when requests of
 * source s must wait for that read. */
static bool ledger_prepare(struct runner *rn, size_t s, uint64_t now)
{
    struct ledger *l = &rn->ledgers[s];
    int64_t period = month_start_ms(now, 0);
    if (l->period_ms != period) {
        ledger_flush(rn, s); /* the month that ended keeps its count */
        *l = (struct ledger){.period_ms = period};
    }
    if (l->state == LEDGER_READING)
        return true;
    if (l->state == LEDGER_READ || (l->state == LEDGER_UNKNOWN && now - l->failed_ms < 60000))
        return false;
    if (!rn->store.read) { /* no database to read: the count starts here */
        l->state = LEDGER_READ;
        ledger_metrics(rn, s);
        return false;
    }
    struct ledger_read *lr = malloc(sizeof(*lr));
    if (!lr)
        return false;
    *lr = (struct ledger_read){rn, s, period};
    char start[32];
    sql_datetime(period, start, sizeof(start));
    const char *params[] = {rn->cfg->sources[s].name, start};
    l->state = LEDGER_READING;
    int rc = rn->store.read(rn->store.ctx,
                            "SELECT calls FROM api_usage WHERE source = ? AND period_start = ?",
                            params, 2, 1, ledger_read_done, lr);
    if (rc != 0) {
        free(lr);
        l->state = LEDGER_UNKNOWN;
        l->failed_ms = now;
        log_warn("cannot read the month's API calls; counting this process's calls only",
                 LOG_S("source", rn->cfg->sources[s].name), LOG_S("error", strerror(-rc)));
        return false;
    }
    return true;
}

/* Counts a request's attempts against its source's month; writes the count at most once a
 * minute (run_finish writes it at the end of every run). */
static void ledger_count(struct runner *rn, size_t s, unsigned attempts)
{
    struct ledger *l = &rn->ledgers[s];
    uint64_t now = util_wall_ms();
    if (l->period_ms != month_start_ms(now, 0))
        ledger_prepare(rn, s, now);
    l->own += attempts;
    ledger_metrics(rn, s);
    if (now - l->flushed_ms >= 60000)
        ledger_flush(rn, s);
}

struct runner *runner_new(const struct config *cfg, struct api *const *apis, struct store store)
{
    struct runner *rn = calloc(1, sizeof(*rn));
    if (!rn)
        return NULL;
    rn->cfg = cfg;
    rn->store = store;
    rn->nsources = cfg->nsources;
    rn->njobs = cfg->njobs;
    rn->apis = calloc(rn->nsources + 1, sizeof(*rn->apis));
    rn->source_state = calloc(rn->nsources + 1, sizeof(*rn->source_state));
    rn->runs = calloc(rn->njobs + 1, sizeof(*rn->runs));
    rn->last = calloc(rn->njobs + 1, sizeof(*rn->last));
    rn->ledgers = calloc(rn->nsources + 1, sizeof(*rn->ledgers));
    if (!rn->apis || !rn->source_state || !rn->runs || !rn->last || !rn->ledgers)
        goto fail;
    for (size_t i = 0; i < rn->nsources; i++) {
        rn->apis[i] = apis ? apis[i] : NULL;
        const struct source_def *d = cfg->sources[i].def;
        if (d && d->state_new && !(rn->source_state[i] = d->state_new()))
            goto fail;
        if (rn->apis[i])
            ledger_metrics(rn, i);
    }
    for (size_t i = 0; i < rn->njobs; i++) {
        rn->last[i].job = i;
        rn->last[i].name = cfg->jobs[i].name;
        const struct job_def *def = cfg->jobs[i].def;
        const char *api = config_job_source(cfg, &cfg->jobs[i])->name;
        for (size_t k = 0; def && def->source_errors && def->source_errors[k]; k++) {
            char labels[256];
            snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\",reason=\"%s\"", api,
                     cfg->jobs[i].name, def->source_errors[k]);
            metrics_add("coingest_source_errors_total", labels, 0);
        }
    }
    return rn;
fail:
    runner_free(rn);
    return NULL;
}

static void run_free(struct run *r)
{
    free(r->waiting_path);
    if (r->def->cleanup)
        r->def->cleanup(r);
    free(r->state);
    free(r);
}

void runner_free(struct runner *rn)
{
    if (!rn)
        return;
    for (size_t i = 0; rn->runs && i < rn->njobs; i++)
        if (rn->runs[i])
            run_free(rn->runs[i]);
    for (size_t i = 0; rn->source_state && i < rn->nsources; i++) {
        const struct source_def *d = rn->cfg->sources[i].def;
        if (rn->source_state[i] && d->state_free)
            d->state_free(rn->source_state[i]);
    }
    free(rn->apis);
    free(rn->source_state);
    free(rn->runs);
    free(rn->last);
    free(rn->ledgers);
    free(rn);
}

void runner_set_config(struct runner *rn, const struct config *cfg)
{
    for (size_t i = 0; i < rn->nsources; i++) {
        const struct source_def *d = cfg->sources[i].def;
        if (d && d->reconfigure && rn->source_state[i])
            d->reconfigure(rn->source_state[i], rn->cfg, cfg);
    }
    rn->cfg = cfg;
}

bool runner_running(const struct runner *rn, size_t job)
{
    return job < rn->njobs && rn->runs[job] != NULL;
}

bool runner_any_running(const struct runner *rn)
{
    for (size_t i = 0; rn && i < rn->njobs; i++)
        if (rn->runs[i])
            return true;
    return false;
}

const struct run_summary *runner_last(const struct runner *rn, size_t job)
{
    return job < rn->njobs ? &rn->last[job] : NULL;
}

/* ---- the run's record -------------------------------------------------------------------- */

/* The job_runs row, columns by name (the constants come from the table's one spec). */
static struct batch *job_runs_row(const struct run_summary *s)
{
    struct batch *b = batch_new(BATCH_JOB_RUNS, 1);
    if (!b || batch_add_row(b) != 0) {
        batch_free(b);
        return NULL;
    }
    const char *status = run_status_name(s->status);
    int rc = batch_set_str(b, 0, BATCH_JOB_RUNS_COL_JOB, s->name, strlen(s->name));
    batch_set_time(b, 0, BATCH_JOB_RUNS_COL_STARTED_AT, (int64_t)s->started_wall_ms);
    batch_set_time(b, 0, BATCH_JOB_RUNS_COL_FINISHED_AT, (int64_t)s->finished_wall_ms);
    rc |= batch_set_str(b, 0, BATCH_JOB_RUNS_COL_STATUS, status, strlen(status));
    batch_set_int(b, 0, BATCH_JOB_RUNS_COL_REQUESTS, (int64_t)s->requests);
    batch_set_int(b, 0, BATCH_JOB_RUNS_COL_ROWS_WRITTEN, (int64_t)s->rows);
    batch_set_int(b, 0, BATCH_JOB_RUNS_COL_DURATION_MS,
                  (int64_t)(s->finished_wall_ms - s->started_wall_ms));
    if (s->error[0])
        rc |= batch_set_str(b, 0, BATCH_JOB_RUNS_COL_ERROR, s->error, strlen(s->error));
    if (rc) {
        batch_free(b);
        return NULL;
    }
    return b;
}

void run_finish(struct run *r)
{
    struct runner *rn = r->rn;
    if (r->finished)
        return;
    r->finished = true;
    r->sum.finished_wall_ms = util_wall_ms();
    if (r->cancelled)
        run_fail(r, "run", "cancelled by shutdown");
    if (r->failed_requests == 0 && !r->sum.error[0])
        r->sum.status = RUN_OK;
    else if (r->ok_requests > 0)
        r->sum.status = RUN_PARTIAL;
    else
        r->sum.status = RUN_FAILED;

    /* The month's calls, then the run's own record, through the store like every other row. */
    ledger_flush(rn, rn->cfg->jobs[r->job].source);
    struct batch *b = job_runs_row(&r->sum);
    if (!b)
        log_warn("job_runs row lost: out of memory", LOG_S("job", r->sum.name));
    else if (rn->store.submit(rn->store.ctx, b) != 0)
        log_warn("job_runs row lost", LOG_S("job", r->sum.name));

    char labels[160];
    snprintf(labels, sizeof(labels), "job=\"%s\",status=\"%s\"", r->sum.name,
             run_status_name(r->sum.status));
    metrics_add("coingest_job_runs_total", labels, 1);
    snprintf(labels, sizeof(labels), "job=\"%s\"", r->sum.name);
    metrics_observe("coingest_job_duration_seconds", labels,
                    (double)(r->sum.finished_wall_ms - r->sum.started_wall_ms) / 1000.0);
    if (r->sum.status == RUN_OK)
        metrics_set("coingest_job_last_success_timestamp_seconds", labels,
                    (double)r->sum.finished_wall_ms / 1000.0);

    rn->last[r->job] = r->sum;
    rn->runs[r->job] = NULL;
    runner_done_cb done = r->done;
    void *arg = r->done_arg;
    struct run_summary sum = r->sum;
    run_free(r);
    done(&sum, arg);
}

int runner_start(struct runner *rn, size_t job, runner_done_cb done, void *arg)
{
    if (job >= rn->njobs)
        return -EINVAL;
    if (rn->runs[job])
        return -EBUSY;
    const struct cfg_job *cj = &rn->cfg->jobs[job];
    const struct cfg_source *src = &rn->cfg->sources[cj->source];
    /* A source without plans (analytics) has no API: its jobs only use the store. */
    bool api_less = src->def && src->def->nplans == 0;
    if (api_less ? !src->enabled : !rn->apis[cj->source])
        return -ENODEV;
    struct run *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->rn = rn;
    r->job = job;
    r->def = cj->def;
    r->cfg = rn->cfg;
    r->done = done;
    r->done_arg = arg;
    r->sum.job = job;
    r->sum.name = cj->name;
    r->sum.started_wall_ms = util_wall_ms();
    if (r->def->run_size && !(r->state = calloc(1, r->def->run_size))) {
        free(r);
        return -ENOMEM;
    }
    rn->runs[job] = r;
    log_info("job started", LOG_S("job", cj->name));
    int rc = r->def->start(r);
    if (rc < 0) {
        /* The job could not begin: finish it as failed, the caller hears it through done. */
        run_fail_errno(r, "start", rc);
        run_finish(r);
    }
    return 0;
}

void runner_cancel(struct runner *rn)
{
    for (size_t i = 0; i < rn->njobs; i++) {
        struct run *r = rn->runs[i];
        if (!r)
            continue;
        r->cancelled = true;
        if (r->def->cancel)
            r->def->cancel(r);
        if (r->req)
            fetch_cancel(r->req); /* the job's done callback runs and finishes the run */
    }
    /* A request waiting for a ledger read ends as cancelled when the read answers (the store
     * answers every read, -ECANCELED at its shutdown), as a job's own read would. */
}

/* ---- for job definitions ------------------------------------------------------------------ */

void *run_state(struct run *r)
{
    return r->state;
}

void *run_source_state(struct run *r)
{
    return r->rn->source_state[r->rn->cfg->jobs[r->job].source];
}

const struct config *run_config(const struct run *r)
{
    return r->cfg;
}

const struct cfg_job *run_job(const struct run *r)
{
    return &r->cfg->jobs[r->job];
}

const struct cfg_source *run_source(const struct run *r)
{
    return config_job_source(r->cfg, &r->cfg->jobs[r->job]);
}

const char *run_name(const struct run *r)
{
    return r->sum.name;
}

uint64_t run_started_ms(const struct run *r)
{
    return r->sum.started_wall_ms;
}

bool run_cancelled(const struct run *r)
{
    return r->cancelled;
}

void run_fail(struct run *r, const char *what, const char *why)
{
    if (r->sum.error[0])
        return;
    snprintf(r->sum.error, sizeof(r->sum.error), "%s: %s", what, why ? why : "failed");
}

void run_source_error(struct run *r, const char *reason, const char *what, const char *why)
{
    char labels[256];
    snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\",reason=\"%s\"", run_source(r)->name,
             r->sum.name, reason);
    metrics_add("coingest_source_errors_total", labels, 1);
    log_warn("source error", LOG_S("job", r->sum.name), LOG_S("reason", reason),
             LOG_S("what", what), LOG_S("error", why));
    run_fail(r, what, why);
}

void run_fail_request(struct run *r, const char *what, const char *why)
{
    r->failed_requests++;
    run_fail(r, what, why);
}

void run_fail_errno(struct run *r, const char *what, int rc)
{
    run_fail_request(r, what, rc == -ENOMEM ? "out of memory" : strerror(-rc));
}

void run_count(struct run *r, uint64_t n)
{
    r->sum.counted += n;
}

static int on_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct run *r = arg;
    int rc = r->parse(body, len, r, err, errlen);
    if (rc != 0) {
        char labels[160];
        snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\"", run_source(r)->name, r->sum.name);
        metrics_add("coingest_parse_errors_total", labels, 1);
        log_warn("response did not parse; retrying", LOG_S("job", r->sum.name),
                 LOG_S("error", err));
    }
    return rc;
}

static void on_done(const struct fetch_result *res, void *arg)
{
    struct run *r = arg;
    r->req = NULL;
    r->sum.requests += res->attempts;
    if (res->attempts)
        ledger_count(r->rn, r->rn->cfg->jobs[r->job].source, res->attempts);
    long handled = r->handled_status;
    r->handled_status = 0;
    if (res->outcome == FETCH_CANCELLED) {
        r->cancelled = true;
    } else if (res->outcome == FETCH_HTTP_ERROR && handled && res->status == handled) {
        /* The job's own business (run_handle_status): neither a success nor a failure. */
    } else if (res->outcome != FETCH_OK) {
        r->failed_requests++;
        char what[192];
        snprintf(what, sizeof(what), "GET %s", r->path);
        run_fail(r, what, res->error);
    } else {
        r->ok_requests++;
    }
    r->req_done(res, r);
}

int run_get(struct run *r, const char *path_query, fetch_parse_cb parse, fetch_done_cb done)
{
    return run_get_limited(r, path_query, 0, parse, done);
}

/* Refuses the request when its source's month is used up (monthly_credits - credit_reserve):
 * records "monthly credits exhausted: ..." as the run's error and logs it once per run.
 * Returns 0 when the request may be sent, else -EDQUOT. */
static int credits_check(struct run *r)
{
    size_t s = r->rn->cfg->jobs[r->job].source;
    const struct cfg_source *src = &r->rn->cfg->sources[s];
    uint64_t used = ledger_used(&r->rn->ledgers[s]);
    uint64_t reserve =
        src->credit_reserve < src->monthly_credits ? src->credit_reserve : src->monthly_credits;
    if (!src->monthly_credits || used < src->monthly_credits - reserve)
        return 0;
    char resume[32], why[160];
    sql_datetime(month_start_ms(util_wall_ms(), 1), resume, sizeof(resume));
    resume[10] = '\0';
    if (reserve)
        snprintf(why, sizeof(why),
                 "%llu of %llu used (%llu kept in reserve); requests resume on %s",
                 (unsigned long long)used, (unsigned long long)src->monthly_credits,
                 (unsigned long long)reserve, resume);
    else
        snprintf(why, sizeof(why), "%llu of %llu used; requests resume on %s",
                 (unsigned long long)used, (unsigned long long)src->monthly_credits, resume);
    run_fail(r, "monthly credits exhausted", why);
    if (!r->credits_logged) {
        r->credits_logged = true;
        log_error("monthly credits exhausted; no request is sent", LOG_S("source", src->name),
                  LOG_S("job", r->sum.name), LOG_S("error", why));
    }
    return -EDQUOT;
}

/* Sends now, unless the month's credits are used up. 0, -EDQUOT or -ENOMEM. */
static int send_checked(struct run *r, const char *path_query, size_t max_body)
{
    int rc = credits_check(r);
    if (rc != 0)
        return rc;
    struct api *api = r->rn->apis[r->rn->cfg->jobs[r->job].source];
    r->req = api_get_limited(api, path_query, r->def->priority, max_body,
                             r->parse ? on_parse : NULL, on_done, r);
    if (!r->req)
        r->handled_status = 0;
    return r->req ? 0 : -ENOMEM;
}

int run_get_limited(struct run *r, const char *path_query, size_t max_body, fetch_parse_cb parse,
                    fetch_done_cb done)
{
    if (!r->rn->apis[r->rn->cfg->jobs[r->job].source])
        return -ENODEV; /* a source without plans has no API */
    r->parse = parse;
    r->req_done = done;
    /* Long id lists make long paths: the error message keeps their beginning. */
    snprintf(r->path, sizeof(r->path), "%.100s", path_query);
    if (ledger_prepare(r->rn, r->rn->cfg->jobs[r->job].source, util_wall_ms())) {
        /* The month's count is being read: the request waits for it (ledger_release). */
        if (!(r->waiting_path = strdup(path_query)))
            return -ENOMEM;
        r->waiting_max_body = max_body;
        return 0;
    }
    int rc = send_checked(r, path_query, max_body);
    if (rc == -EDQUOT)
        r->failed_requests++;
    return rc;
}

void run_handle_status(struct run *r, long status)
{
    r->handled_status = status;
}

int run_emit(struct run *r, struct batch *b)
{
    if (!b)
        return 0;
    if (b->nrows == 0) {
        batch_free(b);
        return 0;
    }
    uint64_t n = b->nrows;
    int rc = r->rn->store.submit(r->rn->store.ctx, b);
    if (rc != 0) {
        run_fail(r, "sink", "rows could not be stored or spooled");
        return rc;
    }
    r->sum.rows += n;
    return 0;
}

int run_read(struct run *r, const char *sql, const char *const *params, size_t nparams,
             size_t max_rows, store_read_cb cb, void *arg)
{
    if (!r->rn->store.read)
        return -ENOTSUP;
    return r->rn->store.read(r->rn->store.ctx, sql, params, nparams, max_rows, cb, arg);
}

int run_work(struct run *r, void (*fn)(void *arg), void (*done)(void *arg), void *arg)
{
    if (!r->rn->store.work)
        return -ENOTSUP;
    return r->rn->store.work(r->rn->store.work_ctx, fn, done, arg);
}

/* ---- budget ------------------------------------------------------------------------------- */

static double per_minute(const struct rate *rt)
{
    return rt->period_ms ? (double)rt->count * 60000.0 / (double)rt->period_ms : 0;
}

/* Months are counted as 30 days here, as the budget lines always have. */
static double source_month_need(const struct config *cfg, size_t s, uint64_t universe, FILE *out)
{
    double per_month = 0;
    for (size_t i = 0; i < cfg->njobs; i++) {
        const struct cfg_job *jb = &cfg->jobs[i];
        if (jb->source != s || !jb->enabled || !jb->every_ms)
            continue;
        uint64_t reqs =
            jb->def->requests_per_run ? jb->def->requests_per_run(cfg, jb, universe) : 1;
        double rpm = (double)reqs * 60000.0 / (double)jb->every_ms;
        per_month += rpm * 60 * 24 * 30;
        if (out)
            fprintf(out,
                    "budget: job=%s requests_per_run=%llu every=%llus "
                    "requests_per_min=%.2f requests_per_month=%.0f\n",
                    jb->name, (unsigned long long)reqs, (unsigned long long)(jb->every_ms / 1000),
                    rpm, rpm * 60 * 24 * 30);
    }
    return per_month;
}

static uint64_t budget_universe(const struct config *cfg, uint64_t universe_size)
{
    uint64_t n = universe_size;
    if (!n)
        n = cfg->universe.all ? 17500 : cfg->universe.ids.n;
    if (cfg->universe.top && cfg->universe.top < n)
        n = cfg->universe.top;
    return n;
}

bool runner_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out)
{
    uint64_t n = budget_universe(cfg, universe_size);
    bool all_fit = true;
    for (size_t s = 0; s < cfg->nsources; s++) {
        const struct cfg_source *src = &cfg->sources[s];
        if (!src->enabled || (src->def && src->def->nplans == 0))
            continue; /* no API, no requests */
        double per_month = source_month_need(cfg, s, n, out);
        double per_min = per_month / (60 * 24 * 30);
        double limit = per_minute(&src->rate_limit);
        double plan = src->plan_limit.period_ms ? per_minute(&src->plan_limit) : limit;
        uint64_t usable = src->monthly_credits > src->credit_reserve
                              ? src->monthly_credits - src->credit_reserve
                              : 0;
        bool fits = per_min <= limit && per_min <= plan &&
                    (!src->monthly_credits || per_month <= (double)usable);
        all_fit = all_fit && fits;
        if (out) {
            fprintf(out,
                    "budget: total requests_per_min=%.2f rate_limit_per_min=%.2f "
                    "plan_limit_per_min=%.2f requests_per_month=%.0f monthly_credits=%llu "
                    "credit_reserve=%llu universe=%llu fits=%s source=%s\n",
                    per_min, limit, plan, per_month, (unsigned long long)src->monthly_credits,
                    (unsigned long long)src->credit_reserve, (unsigned long long)n,
                    fits ? "yes" : "no", src->name);
            /* --check-config does not reach the database: the month's calls so far are in
             * api_usage, and the daemon logs them (used, left, projected) when it starts. */
            if (src->monthly_credits)
                fprintf(out,
                        "budget: month source=%s used=unknown (the daemon reads api_usage at "
                        "start) left=%llu projected=%.0f (a whole month of this schedule; "
                        "requests stop at %llu)\n",
                        src->name, (unsigned long long)src->monthly_credits, per_month,
                        (unsigned long long)usable);
            if (!fits)
                fprintf(out,
                        "warning: the configured jobs of source %s need more requests than the "
                        "limits allow; runs will take longer than their interval or exhaust the "
                        "plan\n",
                        src->name);
        } else {
            /* Rates to two decimals and monthly counts as whole numbers, as the
             * --check-config lines above print them. */
            log_info("request budget", LOG_S("source", src->name),
                     LOG_F("requests_per_min", round(per_min * 100) / 100),
                     LOG_F("rate_limit_per_min", round(limit * 100) / 100),
                     LOG_F("plan_limit_per_min", round(plan * 100) / 100),
                     LOG_U("requests_per_month", (uint64_t)llround(per_month)),
                     LOG_U("monthly_credits", src->monthly_credits),
                     LOG_U("credit_reserve", src->credit_reserve), LOG_U("universe", n),
                     LOG_B("fits", fits));
            if (!fits)
                log_warn("the configured jobs need more requests than the limits allow",
                         LOG_S("source", src->name));
        }
    }
    return all_fit;
}
