/*
 * runner: the lifecycle every job shares (see runner.h).
 *
 * The runner keeps one slot per job of the config (the registry's order) and one shared state
 * per source. A run wraps the job's own state: the runner's part counts requests, rows and
 * anomalies, keeps the first error, and knows the one request in flight so that a shutdown
 * can cancel it. Requests go through small trampolines (on_parse, on_done) that do the
 * bookkeeping before the job's callbacks see the result; the job never touches the API, the
 * sink or the metrics itself.
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

    void *state; /* def->run_size bytes */
};

struct runner {
    const struct config *cfg;
    struct api **apis;   /* per source */
    void **source_state; /* per source */
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
    if (!rn->apis || !rn->source_state || !rn->runs || !rn->last)
        goto fail;
    for (size_t i = 0; i < rn->nsources; i++) {
        rn->apis[i] = apis ? apis[i] : NULL;
        const struct source_def *d = cfg->sources[i].def;
        if (d && d->state_new && !(rn->source_state[i] = d->state_new()))
            goto fail;
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

    /* The run's own record, through the store like every other row. */
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
        run_fail_request(r, "start", rc == -ENOMEM ? "out of memory" : strerror(-rc));
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
        if (r->req)
            fetch_cancel(r->req); /* the job's done callback runs and finishes the run */
    }
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

int run_get_limited(struct run *r, const char *path_query, size_t max_body, fetch_parse_cb parse,
                    fetch_done_cb done)
{
    struct api *api = r->rn->apis[r->rn->cfg->jobs[r->job].source];
    if (!api)
        return -ENODEV; /* a source without plans has no API */
    r->parse = parse;
    r->req_done = done;
    /* Long id lists make long paths: the error message keeps their beginning. */
    snprintf(r->path, sizeof(r->path), "%.100s", path_query);
    r->req = api_get_limited(api, path_query, r->def->priority, max_body, parse ? on_parse : NULL,
                             on_done, r);
    if (!r->req)
        r->handled_status = 0;
    return r->req ? 0 : -ENOMEM;
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

/* ---- budget ------------------------------------------------------------------------------- */

static double per_minute(const struct rate *rt)
{
    return rt->period_ms ? (double)rt->count * 60000.0 / (double)rt->period_ms : 0;
}

bool runner_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out)
{
    uint64_t n = universe_size;
    if (!n)
        n = cfg->universe.all ? 17500 : cfg->universe.ids.n;
    if (cfg->universe.top && cfg->universe.top < n)
        n = cfg->universe.top;
    bool all_fit = true;
    for (size_t s = 0; s < cfg->nsources; s++) {
        const struct cfg_source *src = &cfg->sources[s];
        if (!src->enabled || (src->def && src->def->nplans == 0))
            continue; /* no API, no requests */
        double per_min = 0, per_month = 0;
        for (size_t i = 0; i < cfg->njobs; i++) {
            const struct cfg_job *jb = &cfg->jobs[i];
            if (jb->source != s || !jb->enabled || !jb->every_ms)
                continue;
            uint64_t reqs = jb->def->requests_per_run ? jb->def->requests_per_run(cfg, jb, n) : 1;
            double runs_per_min = 60000.0 / (double)jb->every_ms;
            double rpm = (double)reqs * runs_per_min;
            per_min += rpm;
            per_month += rpm * 60 * 24 * 30;
            if (out)
                fprintf(out,
                        "budget: job=%s requests_per_run=%llu every=%llus "
                        "requests_per_min=%.2f requests_per_month=%.0f\n",
                        jb->name, (unsigned long long)reqs,
                        (unsigned long long)(jb->every_ms / 1000), rpm, rpm * 60 * 24 * 30);
        }
        double limit = per_minute(&src->rate_limit);
        double plan = src->plan_limit.period_ms ? per_minute(&src->plan_limit) : limit;
        bool fits = per_min <= limit && per_min <= plan &&
                    (!src->monthly_credits || per_month <= (double)src->monthly_credits);
        all_fit = all_fit && fits;
        if (out) {
            fprintf(out,
                    "budget: total requests_per_min=%.2f rate_limit_per_min=%.2f "
                    "plan_limit_per_min=%.2f requests_per_month=%.0f monthly_credits=%llu "
                    "universe=%llu fits=%s source=%s\n",
                    per_min, limit, plan, per_month, (unsigned long long)src->monthly_credits,
                    (unsigned long long)n, fits ? "yes" : "no", src->name);
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
                     LOG_U("monthly_credits", src->monthly_credits), LOG_U("universe", n),
                     LOG_B("fits", fits));
            if (!fits)
                log_warn("the configured jobs need more requests than the limits allow",
                         LOG_S("source", src->name));
        }
    }
    return all_fit;
}
