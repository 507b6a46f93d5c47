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

#include "coingest/budget.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/source.h"
#include "coingest/tbucket.h"
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
    const char *cancel_why; /* static; NULL: the shutdown */
    bool finished;

    /* the request in flight */
    struct fetch_req *req;
    fetch_parse_cb parse;
    fetch_done_cb req_done;
    char path[160];      /* its beginning, for error messages */
    long handled_status; /* a final HTTP status the job handles itself (run_handle_status) */
    char *waiting_path;  /* a request waiting for its source's ledger to be read, or NULL */
    size_t waiting_max_body;
    bool credits_logged;    /* the run has said that the month's credits are used up */
    bool spare_logged;      /* the run has said that it pauses for the live jobs' credits */
    struct run_req *tagged; /* requests sent with run_get_tagged, in flight or waiting */
    struct run_emit *emits; /* run_emit_many hand-overs the store has not accepted yet */
    bool finish_due;        /* run_finish waits for them */

    void *state; /* def->run_size bytes */
};

/* One run_emit_many hand-over whose acceptance the store reports later (submit_async). */
struct run_emit {
    struct run_emit *next;
    struct run *r; /* NULL once the run is gone */
};

/* A request of run_get_tagged: one of several a run keeps in flight together. */
struct run_req {
    struct run_req *next;
    struct run *r;
    struct fetch_req *req;
    fetch_parse_cb parse;
    fetch_done_cb done;
    void *arg;
    size_t max_body;
    char *waiting; /* the whole path while it waits for its source's ledger, else NULL */
    char path[160];
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
    int64_t period_ms;     /* the month counted: its first day, 00:00 UTC */
    uint64_t base;         /* calls the database held for the month when it was read */
    uint64_t own;          /* calls this process made in the month */
    uint64_t flushed;      /* base + own at the last write */
    uint64_t flushed_ms;   /* wall time of the last write */
    uint64_t failed_ms;    /* wall time of the last failed read */
    bool exhausted_logged; /* "monthly credits exhausted" was logged for this month */
    bool api_exhausted;    /* the API answered that the month's credits are spent */
    /* What the API reported about the account (runner_set_account): its credits, and its own
     * count of the month's calls when that was more than ours (own_at_api: `own` then). */
    uint64_t api_credits;
    uint64_t api_used, own_at_api;
    uint64_t charged_flushed; /* api_used at the last write (api_usage.charged) */
    /* The month's count this process knew before a re-read (runner_ledger_reread): the read
     * may answer before this process's own last write has committed, and must not lower it. */
    uint64_t floor;
    bool api_counted;
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
    void (*budget_cb)(void *arg); /* runner_on_budget */
    void *budget_arg;
    struct account_probe **probes; /* per source: the account request in flight, or NULL */
    struct run **runs;             /* per job */
    struct run_summary *last;      /* per job */
    size_t nsources, njobs;
    char *instance; /* job_runs.instance, or NULL */
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
    uint64_t ours = l->base + l->own;
    /* The API's count (a key shared with another client) and our calls since it reported. */
    uint64_t api = l->api_counted ? l->api_used + (l->own - l->own_at_api) : 0;
    return api > ours ? api : ours;
}

uint64_t runner_monthly_credits(const struct runner *rn, size_t s)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    if (src->monthly_credits_set || !rn->ledgers[s].api_credits)
        return src->monthly_credits;
    return rn->ledgers[s].api_credits;
}

/* The calls of the month never spent: credit_reserve, at most the credits in force; unset,
 * 2% of the credits in force (which GET /key may have changed from the plan's). */
static uint64_t credit_reserve(const struct runner *rn, size_t s)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    uint64_t credits = runner_monthly_credits(rn, s);
    uint64_t reserve = src->credit_reserve_set ? src->credit_reserve : credits / 50;
    return reserve < credits ? reserve : credits;
}

static void budget_changed(struct runner *rn)
{
    if (rn->budget_cb)
        rn->budget_cb(rn->budget_arg);
}

/* coingest_api_calls_month and coingest_api_credits_left (-1: the plan has no monthly cap). */
static void ledger_metrics(const struct runner *rn, size_t s)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct ledger *l = &rn->ledgers[s];
    char labels[96];
    snprintf(labels, sizeof(labels), "api=\"%s\"", src->name);
    uint64_t used = ledger_used(l), credits = runner_monthly_credits(rn, s);
    metrics_set("coingest_api_calls_month", labels, (double)used);
    metrics_set("coingest_api_credits_left", labels,
                !credits         ? -1.0
                : used < credits ? (double)(credits - used)
                                 : 0.0);
}

/* Writes the month's count through the store when it changed; only a count that includes
 * the database's own (LEDGER_READ) is ever written. */
static void ledger_flush(struct runner *rn, size_t s)
{
    struct ledger *l = &rn->ledgers[s];
    uint64_t used = ledger_used(l);
    bool charged_new = l->api_counted && l->api_used != l->charged_flushed;
    if (l->state != LEDGER_READ || (used == l->flushed && !charged_new))
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
    if (l->api_counted) /* the API's own count, as it last reported it */
        batch_set_int(b, 0, BATCH_API_USAGE_COL_CHARGED, (int64_t)l->api_used);
    if (rn->store.submit(rn->store.ctx, b) != 0) {
        log_warn("api_usage row not written", LOG_S("source", name));
        return;
    }
    l->flushed = used;
    l->flushed_ms = now;
    if (l->api_counted)
        l->charged_flushed = l->api_used;
}

/* The universe the budget assumes. */
static uint64_t budget_universe(const struct config *cfg, uint64_t universe_size);

static double plan_source(const struct runner *rn, size_t s, uint64_t now, uint64_t *every_ms,
                          bool *stretched);

static void ledger_log(const struct runner *rn, size_t s, uint64_t now)
{
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct ledger *l = &rn->ledgers[s];
    uint64_t used = ledger_used(l);
    /* The month's end on the schedule the daemon runs (fitted to the credits left). */
    uint64_t *every = calloc(rn->cfg->njobs + 1, sizeof(*every));
    bool stretched = false;
    double projected = every ? plan_source(rn, s, now, every, &stretched) : (double)used;
    free(every);
    uint64_t credits = runner_monthly_credits(rn, s);
    log_info("monthly credits", LOG_S("source", src->name), LOG_U("used", used),
             LOG_U("monthly_credits", credits), LOG_U("credit_reserve", credit_reserve(rn, s)),
             LOG_U("left", credits > used ? credits - used : 0),
             LOG_U("projected", (uint64_t)llround(projected)), LOG_B("stretched", stretched));
}

static int send_checked(struct run *r, const char *path_query, size_t max_body);
static void on_done(const struct fetch_result *res, void *arg);
static int tagged_send(struct run_req *q, const char *path_query);
static int credits_check(struct run *r);
static void tagged_done(const struct fetch_result *res, void *arg);

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
    /* The same for tagged requests. A done callback may send more of them (they go to the
     * head of the list, not waiting: the ledger is read now), so each pass starts over. */
    for (bool again = true; again;) {
        again = false;
        for (size_t j = 0; j < rn->njobs && !again; j++) {
            struct run *r = rn->runs[j];
            if (!r || rn->cfg->jobs[j].source != s)
                continue;
            for (struct run_req *q = r->tagged; q; q = q->next) {
                if (!q->waiting)
                    continue;
                char *path = q->waiting;
                q->waiting = NULL;
                int rc = r->cancelled ? -ECANCELED : tagged_send(q, path);
                free(path);
                if (rc != 0) {
                    struct fetch_result res = {
                        .outcome = rc == -ECANCELED ? FETCH_CANCELLED : FETCH_HTTP_ERROR,
                        .error = rc == -ENOMEM ? "out of memory" : r->sum.error};
                    tagged_done(&res, q);
                }
                again = true;
                break;
            }
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
        if (l->base < l->floor)
            l->base = l->floor;
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
    budget_changed(rn);
}

/* Starts a new month's count when the month changed; asks the store for the month's row when
 * it has not been read (or a failed read is a minute old). Returns true when requests of
 * source s must wait for that read. */
static bool ledger_prepare(struct runner *rn, size_t s, uint64_t now)
{
    struct ledger *l = &rn->ledgers[s];
    int64_t period = month_start_ms(now, 0);
    if (l->period_ms != period) {
        bool rolled = l->period_ms != 0;
        ledger_flush(rn, s);                   /* the month that ended keeps its count */
        uint64_t api_credits = l->api_credits; /* the account's size outlives the month */
        *l = (struct ledger){.period_ms = period, .api_credits = api_credits};
        if (rolled)
            budget_changed(rn);
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
    rn->probes = calloc(rn->nsources + 1, sizeof(*rn->probes));
    if (!rn->apis || !rn->source_state || !rn->runs || !rn->last || !rn->ledgers || !rn->probes)
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

/* An account request (runner_probe_accounts). It outlives a runner freed while it is in
 * flight: the runner detaches it (rn = NULL), and its done callback frees it. */
struct account_probe {
    struct runner *rn;
    size_t source;
};

static void runner_detach_probes(struct runner *rn)
{
    for (size_t s = 0; rn->probes && s < rn->nsources; s++) {
        if (rn->probes[s])
            rn->probes[s]->rn = NULL;
        rn->probes[s] = NULL;
    }
}

static void run_free(struct run *r)
{
    for (struct run_emit *e = r->emits; e; e = e->next)
        e->r = NULL;    /* freed by on_emitted when the store reports */
    while (r->tagged) { /* none when the job waited for its requests, as it must */
        struct run_req *q = r->tagged;
        r->tagged = q->next;
        free(q->waiting);
        free(q);
    }
    free(r->waiting_path);
    if (r->def->cleanup)
        r->def->cleanup(r);
    free(r->state);
    config_free((struct config *)r->cfg); /* the run's hold (run_start) */
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
    runner_detach_probes(rn);
    free(rn->probes);
    free(rn->instance);
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
static struct batch *job_runs_row(const struct run_summary *s, const char *instance)
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
    batch_set_int(b, 0, BATCH_JOB_RUNS_COL_COUNTED, (int64_t)s->counted);
    char detail[1024];
    int dn = run_counted_json(s, detail, sizeof(detail));
    if (s->ncounted_by && dn > 0)
        rc |= batch_set_str(b, 0, BATCH_JOB_RUNS_COL_COUNTED_DETAIL, detail, (size_t)dn);
    if (instance)
        rc |= batch_set_str(b, 0, BATCH_JOB_RUNS_COL_INSTANCE, instance, strlen(instance));
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
    if (r->emits) {
        r->finish_due = true; /* on_emitted finishes it once the store accepted every row */
        return;
    }
    r->finished = true;
    r->sum.finished_wall_ms = util_wall_ms();
    if (r->cancelled)
        run_fail(r, "run", r->cancel_why ? r->cancel_why : "cancelled by shutdown");
    if (r->failed_requests == 0 && !r->sum.error[0])
        r->sum.status = RUN_OK;
    else if (r->ok_requests > 0)
        r->sum.status = RUN_PARTIAL;
    else
        r->sum.status = RUN_FAILED;

    /* The month's calls, then the run's own record, through the store like every other row. */
    ledger_flush(rn, rn->cfg->jobs[r->job].source);
    struct batch *b = job_runs_row(&r->sum, rn->instance);
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
    r->cfg = config_hold(rn->cfg); /* a reload frees it only after this run */
    r->done = done;
    r->done_arg = arg;
    r->sum.job = job;
    r->sum.name = cj->name;
    r->sum.started_wall_ms = util_wall_ms();
    if (r->def->run_size && !(r->state = calloc(1, r->def->run_size))) {
        config_free((struct config *)r->cfg);
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

/* Cancels run r, the one of job `job`: its request and every tagged one; each one's done
 * callback runs (and unlinks it), and the job's callbacks finish the run. */
static void cancel_run(struct runner *rn, size_t job, struct run *r, const char *why)
{
    r->cancelled = true;
    if (why)
        r->cancel_why = why; /* a lost lease stays the reason if the shutdown follows */
    if (r->def->cancel)
        r->def->cancel(r); /* work off the loop (a database read) is the job's to stop */
    if (r->req)
        fetch_cancel(r->req);
    for (bool again = true; again && rn->runs[job] == r;) {
        again = false;
        for (struct run_req *q = r->tagged; q; q = q->next) {
            if (q->req) {
                struct fetch_req *fr = q->req;
                q->req = NULL;
                fetch_cancel(fr);
                again = true;
                break;
            }
        }
    }
}

void runner_cancel(struct runner *rn)
{
    for (size_t i = 0; i < rn->njobs; i++)
        if (rn->runs[i])
            cancel_run(rn, i, rn->runs[i], NULL);
    /* A request waiting for a ledger read ends as cancelled when the read answers (the store
     * answers every read, -ECANCELED at its shutdown), as a job's own read would. */
}

void runner_cancel_job(struct runner *rn, size_t job, const char *why)
{
    struct run *r = job < rn->njobs ? rn->runs[job] : NULL;
    if (r && !r->cancelled)
        cancel_run(rn, job, r, why);
}

void runner_set_instance(struct runner *rn, const char *instance)
{
    free(rn->instance);
    rn->instance = instance && *instance ? strdup(instance) : NULL;
}

void runner_ledger_reread(struct runner *rn, size_t source)
{
    if (source >= rn->nsources)
        return;
    struct ledger *l = &rn->ledgers[source];
    if (l->state == LEDGER_READING)
        return; /* the read under way answers after the takeover */
    ledger_flush(rn, source);
    /* What this instance counted stays in the database (GREATEST never lowers it); the next
     * read brings in what the other instances added, and never less than what this one knew
     * (the flush just queued may commit after the read). What the API said about the account
     * (its size, and that the month is spent) holds for every instance: it stays. */
    *l = (struct ledger){.period_ms = l->period_ms,
                         .floor = ledger_used(l),
                         .api_credits = l->api_credits,
                         .api_exhausted = l->api_exhausted,
                         .exhausted_logged = l->exhausted_logged};
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
    if (rc == -EDQUOT)
        return; /* run_get's refusal: it counted the request and recorded why already */
    run_fail_request(r, what, rc == -ENOMEM ? "out of memory" : strerror(-rc));
}

void run_count_kind(struct run *r, const char *kind, uint64_t n)
{
    if (!n)
        return;
    struct run_summary *s = &r->sum;
    s->counted += n;
    size_t i = 0;
    while (i < s->ncounted_by && strcmp(s->counted_by[i].kind, kind) != 0)
        i++;
    if (i == s->ncounted_by) {
        if (i == RUN_COUNTED_KINDS) { /* full: the last slot becomes "other" */
            i = RUN_COUNTED_KINDS - 1;
            s->counted_by[i].kind = "other";
        } else {
            s->counted_by[i].kind = kind;
            s->ncounted_by++;
        }
    }
    s->counted_by[i].n += n;
}

void run_count(struct run *r, uint64_t n)
{
    run_count_kind(r, "other", n);
}

int run_counted_json(const struct run_summary *s, char *buf, size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i <= s->ncounted_by; i++) {
        int w = i == s->ncounted_by
                    ? snprintf(buf + n, cap - n, "}")
                    : snprintf(buf + n, cap - n, "%s\"%s\":%llu", i ? "," : "{",
                               s->counted_by[i].kind, (unsigned long long)s->counted_by[i].n);
        if (w < 0 || (size_t)w >= cap - n)
            return -ENOSPC;
        n += (size_t)w;
    }
    if (!s->ncounted_by) {
        if (cap < 3)
            return -ENOSPC;
        memcpy(buf, "{}", 3);
        n = 2;
    }
    return (int)n;
}

static int on_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct run *r = arg;
    int rc = r->parse(body, len, r, err, errlen);
    if (rc != 0) {
        char labels[160];
        snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\"", run_source(r)->name, r->sum.name);
        metrics_add("coingest_parse_errors_total", labels, 1);
        log_warn(rc == -EPROTO ? "the API answered an error instead of data"
                               : "response did not parse; retrying",
                 LOG_S("job", r->sum.name), LOG_S("error", err));
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
    const struct source_def *sd = run_source(r)->def;
    if (res->outcome == FETCH_HTTP_ERROR && sd && sd->credits_exhausted &&
        sd->credits_exhausted(res->status, res->error)) {
        struct ledger *l = &r->rn->ledgers[r->rn->cfg->jobs[r->job].source];
        if (!l->api_exhausted) {
            l->api_exhausted = true;
            log_error("the API says the month's credits are spent; no request is sent until "
                      "the month rolls over",
                      LOG_S("source", run_source(r)->name), LOG_S("job", r->sum.name),
                      LOG_S("error", res->error));
            l->exhausted_logged = true; /* that was the month's one line */
            budget_changed(r->rn);
        }
    }
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

static int tagged_parse(const char *body, size_t len, void *arg, char *err, size_t errlen)
{
    struct run_req *q = arg;
    struct run *r = q->r;
    int rc = q->parse(body, len, q->arg, err, errlen);
    if (rc != 0) {
        char labels[160];
        snprintf(labels, sizeof(labels), "api=\"%s\",job=\"%s\"", run_source(r)->name, r->sum.name);
        metrics_add("coingest_parse_errors_total", labels, 1);
        log_warn("response did not parse; retrying", LOG_S("job", r->sum.name),
                 LOG_S("error", err));
    }
    return rc;
}

/* As on_done, for a tagged request: unlinks and frees it, then calls the job's callback. */
static void tagged_done(const struct fetch_result *res, void *arg)
{
    struct run_req *q = arg;
    struct run *r = q->r;
    for (struct run_req **p = &r->tagged; *p; p = &(*p)->next) {
        if (*p == q) {
            *p = q->next;
            break;
        }
    }
    r->sum.requests += res->attempts;
    if (res->attempts)
        ledger_count(r->rn, r->rn->cfg->jobs[r->job].source, res->attempts);
    if (res->outcome == FETCH_CANCELLED) {
        r->cancelled = true;
    } else if (res->outcome != FETCH_OK) {
        r->failed_requests++;
        char what[192];
        snprintf(what, sizeof(what), "GET %s", q->path);
        run_fail(r, what, res->error);
    } else {
        r->ok_requests++;
    }
    fetch_done_cb done = q->done;
    void *done_arg = q->arg;
    free(q);
    done(res, done_arg);
}

/* Sends a tagged request now, unless the month's credits are used up. 0, -EDQUOT, -ENOMEM. */
static int tagged_send(struct run_req *q, const char *path_query)
{
    struct run *r = q->r;
    int rc = credits_check(r);
    if (rc != 0)
        return rc;
    struct api *api = r->rn->apis[r->rn->cfg->jobs[r->job].source];
    q->req = api_get_limited(api, path_query, r->def->priority, q->max_body,
                             q->parse ? tagged_parse : NULL, tagged_done, q);
    return q->req ? 0 : -ENOMEM;
}

int run_get_tagged(struct run *r, const char *path_query, size_t max_body, fetch_parse_cb parse,
                   fetch_done_cb done, void *arg)
{
    if (!r->rn->apis[r->rn->cfg->jobs[r->job].source])
        return -ENODEV;
    struct run_req *q = calloc(1, sizeof(*q));
    if (!q)
        return -ENOMEM;
    q->r = r;
    q->parse = parse;
    q->done = done;
    q->arg = arg;
    q->max_body = max_body;
    snprintf(q->path, sizeof(q->path), "%.100s", path_query);
    int rc = 0;
    q->next = r->tagged;
    r->tagged = q;
    if (ledger_prepare(r->rn, r->rn->cfg->jobs[r->job].source, util_wall_ms())) {
        if (!(q->waiting = strdup(path_query)))
            rc = -ENOMEM;
    } else {
        rc = tagged_send(q, path_query);
        if (rc == -EDQUOT)
            r->failed_requests++;
    }
    if (rc != 0) {
        r->tagged = q->next; /* still the head: nothing ran in between */
        free(q);
    }
    return rc;
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
    struct ledger *l = &r->rn->ledgers[s];
    uint64_t used = ledger_used(l), credits = runner_monthly_credits(r->rn, s);
    uint64_t reserve = credit_reserve(r->rn, s);
    /* While GET /key has not answered, the plan's figure is a guess (the account may be
     * larger): nothing is refused on it. The API's own refusal still stops requests. */
    bool guess = !src->monthly_credits_set && !l->api_credits && r->rn->probes[s];
    if (!l->api_exhausted && (!credits || guess || used < credits - reserve))
        return 0;
    char resume[32], why[160];
    sql_datetime(month_start_ms(util_wall_ms(), 1), resume, sizeof(resume));
    resume[10] = '\0';
    if (l->api_exhausted)
        snprintf(why, sizeof(why),
                 "the API says the month's credits are spent (%llu calls counted here); "
                 "requests resume on %s",
                 (unsigned long long)used, resume);
    else if (reserve)
        snprintf(why, sizeof(why),
                 "%llu of %llu used (%llu kept in reserve); requests resume on %s",
                 (unsigned long long)used, (unsigned long long)credits, (unsigned long long)reserve,
                 resume);
    else
        snprintf(why, sizeof(why), "%llu of %llu used; requests resume on %s",
                 (unsigned long long)used, (unsigned long long)credits, resume);
    run_fail(r, "monthly credits exhausted", why);
    /* One line for the month, not one per run: every run until the rollover ends the same. */
    if (!r->credits_logged && !l->exhausted_logged) {
        l->exhausted_logged = true;
        log_error("monthly credits exhausted; no request is sent until the month rolls over",
                  LOG_S("source", src->name), LOG_S("job", r->sum.name), LOG_S("error", why));
    }
    r->credits_logged = true;
    return -EDQUOT;
}

uint64_t run_credits_spare(struct run *r)
{
    struct runner *rn = r->rn;
    size_t s = rn->cfg->jobs[r->job].source;
    uint64_t credits = runner_monthly_credits(rn, s);
    if (!credits)
        return UINT64_MAX;
    if (rn->ledgers[s].api_exhausted)
        return 0;
    /* What the month ends with on the schedule being run (fitted to the credits, with what
     * GET /key reported; backfill jobs are outside the fit), against what may be spent. */
    uint64_t *every = calloc(rn->cfg->njobs + 1, sizeof(*every));
    if (!every)
        return 0; /* no room to plan: spend nothing rather than guess */
    bool stretched = false;
    double projected = plan_source(rn, s, util_wall_ms(), every, &stretched);
    free(every);
    double spare = (double)(credits - credit_reserve(rn, s)) - ceil(projected);
    return spare > 0 ? (uint64_t)spare : 0;
}

bool run_may_spend(struct run *r)
{
    if (r->def->priority == TBUCKET_PRIO_LIVE || run_credits_spare(r) > 0)
        return true;
    if (!r->spare_logged) {
        r->spare_logged = true;
        log_warn("backfill paused: the month's credits left are for the live jobs",
                 LOG_S("job", r->sum.name),
                 LOG_S("source", r->rn->cfg->sources[r->rn->cfg->jobs[r->job].source].name));
    }
    return false;
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
    if (r->cancelled)
        return -ECANCELED; /* runner_cancel_job between two requests */
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

/* The run's error when the store refused rows (tests and operators match this text). */
static void run_fail_stored(struct run *r)
{
    run_fail(r, "sink", "rows could not be stored or spooled");
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
        run_fail_stored(r);
        return rc;
    }
    r->sum.rows += n;
    return 0;
}

static void on_emitted(int rc, uint64_t accepted, void *arg)
{
    struct run_emit *e = arg;
    struct run *r = e->r;
    if (r) {
        struct run_emit **p = &r->emits;
        while (*p != e)
            p = &(*p)->next;
        *p = e->next;
        r->sum.rows += accepted;
        if (rc)
            run_fail_stored(r);
    }
    free(e);
    if (r && !r->emits && r->finish_due) {
        r->finish_due = false;
        run_finish(r);
    }
}

int run_emit_many(struct run *r, struct batch *const *bs, size_t n)
{
    const struct store *st = &r->rn->store;
    if (!st->submit_many && !st->submit_async) {
        int rc = 0;
        for (size_t i = 0; i < n; i++) {
            int e = run_emit(r, bs[i]);
            if (e && !rc)
                rc = e;
        }
        return rc;
    }
    uint64_t rows = 0;
    for (size_t i = 0; i < n; i++)
        rows += bs[i] ? bs[i]->nrows : 0;
    if (rows == 0) {
        for (size_t i = 0; i < n; i++)
            batch_free(bs[i]);
        return 0;
    }
    uint64_t accepted = 0;
    struct run_emit *e = st->submit_async ? calloc(1, sizeof(*e)) : NULL;
    int rc;
    if (e) {
        e->r = r;
        rc = st->submit_async(st->ctx, bs, n, on_emitted, e, &accepted);
        if (rc == 0) { /* counted in on_emitted */
            e->next = r->emits;
            r->emits = e;
            return 0;
        }
        free(e);
        rc = rc > 0 ? 0 : rc;
    } else if (st->submit_many) {
        rc = st->submit_many(st->ctx, bs, n, &accepted);
    } else {
        for (size_t i = 0; i < n; i++)
            batch_free(bs[i]);
        rc = -ENOMEM;
    }
    r->sum.rows += accepted;
    if (rc != 0)
        run_fail_stored(r);
    return rc;
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

static uint64_t budget_universe(const struct config *cfg, uint64_t universe_size)
{
    uint64_t n = universe_size;
    if (!n)
        n = cfg->universe.all ? 17500 : cfg->universe.ids.n;
    if (cfg->universe.top && cfg->universe.top < n)
        n = cfg->universe.top;
    return n;
}

/* The jobs of source s that run on a schedule, as budget_fit() takes them (their indexes into
 * cfg->jobs in idx). A job's cost is its last successful run's requests when `last` is given
 * and it ran, else requests_per_run with `universe` assets. Returns how many. */
static size_t budget_jobs(const struct config *cfg, size_t s, uint64_t universe,
                          const struct run_summary *last, struct budget_job *bj, size_t *idx,
                          size_t cap)
{
    size_t n = 0;
    for (size_t i = 0; i < cfg->njobs && n < cap; i++) {
        const struct cfg_job *jb = &cfg->jobs[i];
        if (jb->source != s || !jb->enabled || !jb->every_ms)
            continue;
        uint64_t reqs =
            jb->def->requests_per_run ? jb->def->requests_per_run(cfg, jb, universe) : 1;
        if (last && last[i].status == RUN_OK && last[i].requests)
            reqs = last[i].requests;
        /* A backfill (priority below live) spends only what the live jobs leave of the
         * month (run_credits_spare): it is not fitted and needs nothing of the plan. */
        bj[n] = (struct budget_job){.requested_ms = jb->every_ms,
                                    .auto_every = jb->every_auto,
                                    .requests_per_run = reqs,
                                    .keep = jb->def->budget_keep,
                                    .outside = jb->def->priority != TBUCKET_PRIO_LIVE};
        idx[n++] = i;
    }
    return n;
}

/* "5m", "200m", "1h", "90s": the largest unit that divides ms (intervals are whole seconds). */
static void interval_text(uint64_t ms, char *buf, size_t cap)
{
    if (ms % 3600000 == 0)
        snprintf(buf, cap, "%lluh", (unsigned long long)(ms / 3600000));
    else if (ms % 60000 == 0)
        snprintf(buf, cap, "%llum", (unsigned long long)(ms / 60000));
    else
        snprintf(buf, cap, "%llus", (unsigned long long)((ms + 999) / 1000));
}

void runner_load_ledgers(struct runner *rn)
{
    uint64_t now = util_wall_ms();
    for (size_t s = 0; s < rn->nsources; s++)
        if (rn->apis[s])
            ledger_prepare(rn, s, now);
}

void runner_on_budget(struct runner *rn, void (*cb)(void *arg), void *arg)
{
    rn->budget_cb = cb;
    rn->budget_arg = arg;
}

/* Fits source s's jobs to what is left of its month at `now` (every_ms[j] for its jobs j);
 * returns the calls the month ends with on that schedule, and sets *stretched when a job runs
 * less often than configured. */
static double plan_source(const struct runner *rn, size_t s, uint64_t now, uint64_t *every_ms,
                          bool *stretched)
{
    const struct config *cfg = rn->cfg;
    uint64_t credits = runner_monthly_credits(rn, s);
    const struct ledger *l = &rn->ledgers[s];
    int64_t end = month_start_ms(now, 1);
    uint64_t left_ms = (uint64_t)(end - (int64_t)now);
    /* A month the ledger has not started yet (its first request starts it) is unused. */
    uint64_t used = l->period_ms == month_start_ms(now, 0) ? ledger_used(l) : 0;
    struct budget_job bj[64];
    size_t idx[64];
    size_t n = budget_jobs(cfg, s, budget_universe(cfg, 0), rn->last, bj, idx, 64);
    if (credits) {
        uint64_t usable = credits - credit_reserve(rn, s);
        double spendable = used < usable && !l->api_exhausted ? (double)(usable - used) : 0;
        if (!budget_fit(bj, n, spendable, left_ms))
            *stretched = true;
    } else {
        for (size_t k = 0; k < n; k++) /* no monthly cap: as configured */
            bj[k].every_ms = bj[k].auto_every ? BUDGET_AUTO_MIN_MS : bj[k].requested_ms;
    }
    for (size_t k = 0; k < n; k++)
        every_ms[idx[k]] = bj[k].every_ms;
    return (double)used + budget_need(bj, n, left_ms);
}

bool runner_plan_schedule(struct runner *rn, uint64_t now, uint64_t *every_ms)
{
    const struct config *cfg = rn->cfg;
    bool stretched = false;
    for (size_t j = 0; j < cfg->njobs; j++)
        every_ms[j] = cfg->jobs[j].every_auto ? BUDGET_AUTO_MIN_MS : cfg->jobs[j].every_ms;
    for (size_t s = 0; s < rn->nsources; s++) {
        if (!rn->apis[s])
            continue;
        double projected = plan_source(rn, s, now, every_ms, &stretched);
        char labels[96];
        snprintf(labels, sizeof(labels), "api=\"%s\"", cfg->sources[s].name);
        metrics_set("coingest_api_credits_projected", labels, projected);
    }
    for (size_t j = 0; j < cfg->njobs; j++) {
        char labels[160];
        snprintf(labels, sizeof(labels), "job=\"%s\"", cfg->jobs[j].name);
        metrics_set("coingest_job_interval_seconds", labels, (double)every_ms[j] / 1000.0);
    }
    return stretched;
}

static void account_done(const struct fetch_result *res, void *arg)
{
    struct account_probe *p = arg;
    struct runner *rn = p->rn;
    size_t s = p->source;
    free(p);
    if (!rn)
        return; /* the runner is gone */
    rn->probes[s] = NULL;
    if (res->attempts)
        ledger_count(rn, s, res->attempts);
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct source_def *d = src->def;
    const char *path = d->plans[src->plan].account_path;
    struct account_info info = {0};
    if (res->outcome == FETCH_CANCELLED)
        return;
    if (res->outcome != FETCH_OK || d->parse_account(res->body, res->len, &info) != 0) {
        log_warn("cannot read the account's limits; the plan's figures stay",
                 LOG_S("source", src->name), LOG_S("path", path),
                 LOG_S("error", res->outcome != FETCH_OK ? res->error : "not the expected answer"));
        return;
    }
    if (info.rate_per_min && !src->rate_limit_set && rn->apis[s] &&
        info.rate_per_min <= UINT32_MAX) {
        struct cfg_source c = *src; /* api_update copies what it keeps */
        c.rate_limit = (struct rate){(uint32_t)info.rate_per_min, 60000};
        c.plan_limit = c.rate_limit;
        api_update(rn->apis[s], &c);
    }
    runner_set_account(rn, s, &info);
}

uint64_t runner_month_tick(struct runner *rn)
{
    uint64_t now = util_wall_ms();
    for (size_t s = 0; s < rn->nsources; s++) {
        struct ledger *l = &rn->ledgers[s];
        if (rn->apis[s] && l->period_ms && l->period_ms != month_start_ms(now, 0))
            ledger_prepare(rn, s, now); /* rolls the month over and refits (budget_changed) */
    }
    int64_t next = month_start_ms(now, 1);
    return next > (int64_t)now ? (uint64_t)(next - (int64_t)now) : 1000;
}

void runner_probe_account(struct runner *rn, size_t s)
{
    if (s >= rn->nsources)
        return;
    const struct cfg_source *src = &rn->cfg->sources[s];
    const struct source_def *d = src->def;
    if (!rn->apis[s] || !d || !d->nplans || !d->parse_account ||
        !d->plans[src->plan].account_path || !src->api_key || rn->probes[s])
        return;
    struct account_probe *p = malloc(sizeof(*p));
    if (!p)
        return;
    *p = (struct account_probe){rn, s};
    rn->probes[s] = p; /* before the call, in case it answers at once */
    if (!api_get_limited(rn->apis[s], d->plans[src->plan].account_path, TBUCKET_PRIO_LIVE,
                         64 * 1024, NULL, account_done, p)) {
        rn->probes[s] = NULL;
        free(p);
    }
}

void runner_probe_accounts(struct runner *rn)
{
    for (size_t s = 0; s < rn->nsources; s++)
        runner_probe_account(rn, s);
}

void runner_set_account(struct runner *rn, size_t s, const struct account_info *info)
{
    if (s >= rn->nsources)
        return;
    struct ledger *l = &rn->ledgers[s];
    uint64_t now = util_wall_ms();
    if (l->period_ms != month_start_ms(now, 0))
        ledger_prepare(rn, s, now);
    if (info->monthly_credits)
        l->api_credits = info->monthly_credits;
    uint64_t api_used = 0;
    bool counted = false;
    if (info->has_calls_this_month) {
        api_used = info->calls_this_month;
        counted = true;
    } else if (info->has_calls_left && info->monthly_credits >= info->calls_left) {
        api_used = info->monthly_credits - info->calls_left;
        counted = true;
    }
    if (counted) {
        l->api_counted = true;
        l->api_used = api_used;
        l->own_at_api = l->own;
        ledger_flush(rn, s); /* api_usage.charged */
    }
    const struct cfg_source *src = &rn->cfg->sources[s];
    log_info("the API reported the account", LOG_S("source", src->name),
             LOG_U("rate_limit_per_min", info->rate_per_min),
             LOG_U("monthly_credits", info->monthly_credits), LOG_U("calls_this_month", api_used),
             LOG_U("monthly_credits_in_force", runner_monthly_credits(rn, s)),
             LOG_B("config_overrides_credits", src->monthly_credits_set));
    ledger_metrics(rn, s);
    budget_changed(rn);
}

/* --check-config's lines for the jobs of source s: requested interval, the interval a month
 * of the plan's credits allows (with nothing used yet), calls a month at each; and, when the
 * requested schedule does not fit, a [job.*] block that does. */
static double print_jobs(const struct config *cfg, size_t s, uint64_t universe, FILE *out)
{
    const struct cfg_source *src = &cfg->sources[s];
    const uint64_t month_ms = 30ull * 86400000;
    struct budget_job bj[64];
    size_t idx[64];
    size_t n = budget_jobs(cfg, s, universe, NULL, bj, idx, 64);
    uint64_t usable =
        src->monthly_credits > src->credit_reserve ? src->monthly_credits - src->credit_reserve : 0;
    bool fits = true;
    if (src->monthly_credits)
        fits = budget_fit(bj, n, (double)usable, month_ms);
    else
        for (size_t k = 0; k < n; k++)
            bj[k].every_ms = bj[k].auto_every ? BUDGET_AUTO_MIN_MS : bj[k].requested_ms;
    /* What the configuration asks for: fixed jobs at their interval, `auto` ones at what the
     * credits allow (asking for "as often as allowed" cannot be asking too much). */
    double asked = 0;
    for (size_t k = 0; k < n; k++)
        asked += (double)bj[k].requests_per_run * (double)month_ms /
                 (double)(bj[k].auto_every ? bj[k].every_ms : bj[k].requested_ms);
    for (size_t k = 0; k < n && out; k++) {
        const struct cfg_job *jb = &cfg->jobs[idx[k]];
        double rpm = (double)bj[k].requests_per_run * 60000.0 / (double)jb->every_ms;
        double allowed = (double)bj[k].requests_per_run * (double)month_ms / (double)bj[k].every_ms;
        char every[32];
        if (jb->every_auto)
            snprintf(every, sizeof(every), "auto");
        else
            snprintf(every, sizeof(every), "%llus", (unsigned long long)(jb->every_ms / 1000));
        fprintf(out,
                "budget: job=%s requests_per_run=%llu every=%s requests_per_min=%.2f "
                "requests_per_month=%.0f allowed_every=%llus allowed_requests_per_month=%.0f\n",
                jb->name, (unsigned long long)bj[k].requests_per_run, every, rpm,
                rpm * 60 * 24 * 30, (unsigned long long)((bj[k].every_ms + 999) / 1000), allowed);
    }
    if (fits || !n || !out)
        return asked;
    fprintf(out,
            "# a schedule that fits source %s's %llu monthly credits (less a reserve of %llu; "
            "lower-priority jobs stretched first):\n",
            src->name, (unsigned long long)src->monthly_credits,
            (unsigned long long)src->credit_reserve);
    for (size_t k = 0; k < n; k++) {
        char every[32];
        interval_text(bj[k].every_ms, every, sizeof(every));
        fprintf(out, "[job.%s]\nevery = %s\n", cfg->jobs[idx[k]].name, every);
    }
    fprintf(out, "# (or `every = auto` in a job: as often as the credits allow; the daemon "
                 "stretches the schedule by itself when the month runs short)\n");
    return asked;
}

bool runner_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out)
{
    uint64_t n = budget_universe(cfg, universe_size);
    bool all_fit = true;
    for (size_t s = 0; s < cfg->nsources; s++) {
        const struct cfg_source *src = &cfg->sources[s];
        if (!src->enabled || (src->def && src->def->nplans == 0))
            continue; /* no API, no requests */
        double per_month = print_jobs(cfg, s, n, out);
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
                        "limits allow; the daemon stretches their intervals to last the month "
                        "(allowed_every above), or runs take longer than their interval\n",
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
