/*
 * daemon: the running daemon on one libuv loop.
 *
 * daemon_run() sets the modules up in the order daemon.h gives and tears them down in reverse
 * through one chain of close steps. Everything here runs on the loop thread; the writer
 * threads inside the sink are the only other threads, and signals reach the loop through
 * uv_signal (they were blocked in main() until the handlers existed, so an early SIGHUP waits
 * instead of killing the process).
 *
 * Stopping: SIGTERM/SIGINT (or the end of a --once run) stops the scheduler and stops the APIs
 * (api_stop: requests waiting for a token, a backoff or a 429 pause end at once, nothing is
 * retried), so the running jobs finish as soon as their transfers in flight have ended; those
 * get DAEMON_STOP_INFLIGHT_MS (at most shutdown_timeout) before they are cancelled. Then the sink
 * flushes in what is left of shutdown_timeout, so with the database up every row, the runs'
 * job_runs rows included, is committed and nothing is spooled; only what cannot be committed in
 * time is. A second signal cuts every wait short.
 * Only then are the HTTP endpoint, the APIs, the fetch engine and the timers closed, and the
 * loop runs until every handle is closed, so uv_loop_close() succeeds.
 */
#include "coingest/daemon.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sysexits.h>

#include "coingest/cluster.h"
#include "coingest/db.h"
#include "coingest/fetch.h"
#include "coingest/lease.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/notify.h"
#include "coingest/runner.h"
#include "coingest/sched.h"
#include "coingest/server.h"
#include "coingest/sink.h"
#include "coingest/source.h"
#include "coingest/status.h"
#include "coingest/timers.h"
#include "coingest/util.h"

/* How long transfers in flight may go on after a stop signal before they are cancelled. */
#define DAEMON_STOP_INFLIGHT_MS 1000u

struct daemon;

/* A job's place on the schedule. */
struct jobslot {
    struct daemon *d;
    size_t id;                     /* index into cfg->jobs */
    struct sched_entry *sched_job; /* NULL when not scheduled */
    uint64_t every_ms;             /* the interval it is scheduled at (fit_schedule) */
    unsigned failed_streak;        /* runs in a row that failed, up to the last one */
};

struct daemon {
    uv_loop_t loop;
    struct config *cfg;
    const struct daemon_opts *opts;

    struct timers *timers;
    struct sink *sink;
    struct fetcher *fetcher;
    struct api **apis; /* per source; NULL for a source that is off */
    size_t napis;
    struct runner *runner;
    struct sched *sched;
    struct server *server;
    struct status *status;   /* the status page's histories; with the server */
    struct cluster *cluster; /* [cluster] enabled (not with --once), else NULL */
    char instance[LEASE_HOLDER_MAX + 1];
    uint64_t started_wall_ms;
    struct jobslot *slots; /* per job */
    size_t nslots;

    uv_signal_t sig_hup, sig_term, sig_int, sig_usr1;
    struct wheel_timer watchdog_timer;
    struct wheel_timer stop_timer;
    struct wheel_timer once_timer;
    struct wheel_timer inflight_timer; /* a stop: when transfers in flight are cancelled */
    struct wheel_timer month_timer;    /* the month's turn: ledgers roll, the schedule refits */
    uint64_t watchdog_ms;
    uint64_t stop_deadline; /* monotonic ms */

    int stopping;       /* 0 running, 1 graceful stop, 2 hurry */
    bool sink_stopping; /* sink_shutdown was called */
    size_t nsignals;    /* signal handles initialised, in sig_hup..sig_usr1 order */
    bool closing;       /* handles are being closed */
    int exit_code;

    int once_next; /* index into opts->once_order */
    bool once_failed;
    bool once_waiting; /* all --once jobs done, waiting for the sink to be idle */
};

void daemon_block_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* A peer closing a socket must be an error return, not a signal. */
    signal(SIGPIPE, SIG_IGN);
}

static void unblock_signals(void)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGHUP);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGUSR1);
    pthread_sigmask(SIG_UNBLOCK, &set, NULL);
}

/* --- status ------------------------------------------------------------------------------- */

static void send_status(struct daemon *d)
{
    char buf[512];
    size_t n = 0;
    buf[0] = '\0';
    for (size_t i = 0; d->runner && i < d->cfg->njobs; i++) {
        const struct run_summary *s = runner_last(d->runner, i);
        if (!s || s->started_wall_ms == 0)
            continue;
        char when[32];
        util_format_iso8601(s->finished_wall_ms, when, sizeof(when));
        n += (size_t)snprintf(buf + n, sizeof(buf) - n, "%s%s %s %llu rows at %s", n ? "; " : "",
                              s->name, run_status_name(s->status), (unsigned long long)s->rows,
                              when);
        if (n >= sizeof(buf))
            break;
    }
    notify_status("%s", n ? buf : "running, no job finished yet");
}

static void log_stats(struct daemon *d)
{
    struct sink_stats st;
    sink_get_stats(d->sink, &st);
    /* Requests waiting in every API; tokens of the first one (usually the only one). */
    size_t queued = 0;
    double tokens = -1;
    for (size_t i = 0; i < d->napis; i++) {
        if (!d->apis[i])
            continue;
        queued += api_pending(d->apis[i]);
        if (tokens < 0)
            tokens = tbucket_tokens(api_bucket(d->apis[i]), timers_now(d->timers));
    }
    log_info("stats", LOG_B("db_up", st.db_up), LOG_U("rows_committed", st.rows_committed),
             LOG_U("rows_pending", st.rows_pending), LOG_U("rows_spooled", st.rows_spooled),
             LOG_U("spool_bytes", st.spool_bytes), LOG_U("rows_rejected", st.rows_rejected),
             LOG_U("requests_queued", queued), LOG_F("bucket_tokens", tokens < 0 ? 0 : tokens));
}

/* "degraded": a source one of whose jobs failed its last run(s) (not a run the stop cut short).
 * Writes the reason ("source coingecko: prices failed its last 2 runs (GET ...: why)") and
 * returns true. Only the first such job is named in full; the others are counted. */
static bool degraded(struct daemon *d, char *reason, size_t cap)
{
    size_t n = 0, more = 0;
    for (size_t i = 0; d->runner && i < d->nslots; i++) {
        const struct jobslot *slot = &d->slots[i];
        if (!slot->failed_streak)
            continue;
        if (n) {
            more++;
            continue;
        }
        const struct run_summary *s = runner_last(d->runner, i);
        const struct cfg_job *jb = &d->cfg->jobs[i];
        char why[121] = ""; /* cut on a UTF-8 boundary: the reason is a JSON string */
        if (s)
            util_copy_clean(why, sizeof(why), s->error, strlen(s->error));
        int w = snprintf(reason, cap, "source %s: %s failed its last %u run%s (%s)",
                         d->cfg->sources[jb->source].name, jb->name, slot->failed_streak,
                         slot->failed_streak > 1 ? "s" : "", why);
        n = w > 0 ? (size_t)w : 0;
    }
    if (more && n < cap)
        snprintf(reason + n, cap - n, "; %zu more job%s failing", more, more > 1 ? "s" : "");
    /* The reason goes into a JSON string as it is: no quote, backslash or control character. */
    for (char *c = reason; *c; c++)
        if (*c == '"' || *c == '\\' || (unsigned char)*c < 0x20)
            *c = *c == '"' ? '\'' : *c == '\\' ? '/' : ' ';
    return n > 0;
}

/*
 * /healthz. A database that is away is not by itself unhealthy: rows wait in the spool, and an
 * orchestrator restarting the daemon would only make things worse. So the answer is 503 only
 * when the spool is failing (new rows are not accepted: a promise broken), when rows were lost
 * (it stays 503 until a restart, so the loss is not hidden by the next good probe), or when
 * the database has been unreachable for at least [daemon] health_db_grace (0: at once), counted
 * from when the sink found it unreachable. Otherwise 200, with "db":"down" and the spool's
 * counts while the database is away, and "status":"degraded" (still 200) while a job's last
 * run failed (degraded() above says which).
 */
static int health(void *arg, char *json, size_t cap)
{
    struct daemon *d = arg;
    struct sink_stats st;
    sink_get_stats(d->sink, &st);
    uint64_t now = util_mono_ms();
    uint64_t since = st.db_down_since_mono_ms;
    uint64_t down_ms = since && now > since ? now - since : 0;
    unsigned long long down_s = down_ms / 1000;
    uint64_t grace = d->cfg->daemon.health_db_grace_ms;
    char reason[320] = "";
    if (st.spool_failing)
        snprintf(reason, sizeof(reason), "the spool cannot be written: rows are not accepted");
    else if (st.rows_lost > 0)
        snprintf(reason, sizeof(reason), "%llu rows lost (the spool is failing)",
                 (unsigned long long)st.rows_lost);
    else if (since && down_ms >= grace)
        snprintf(reason, sizeof(reason), "database unreachable for %llus", down_s);
    bool unhealthy = reason[0] != '\0';
    bool deg = !unhealthy && degraded(d, reason, sizeof(reason));
    int n = snprintf(json, cap, "{\"status\":\"%s\",",
                     unhealthy ? "unhealthy"
                     : deg     ? "degraded"
                               : "ok");
    if (reason[0] && n > 0 && (size_t)n < cap)
        n += snprintf(json + n, cap - (size_t)n, "\"reason\":\"%s\",", reason);
    if (n > 0 && (size_t)n < cap)
        snprintf(json + n, cap - (size_t)n,
                 "\"db\":\"%s\",\"db_down_s\":%llu,\"pending_rows\":%llu,\"spool_rows\":%llu,"
                 "\"rows_lost\":%llu}",
                 st.db_up ? "up" : "down", down_s, (unsigned long long)st.rows_pending,
                 (unsigned long long)st.rows_spooled, (unsigned long long)st.rows_lost);
    return unhealthy ? 503 : 200;
}

static bool any_job_running(struct daemon *d)
{
    return runner_any_running(d->runner);
}

/* --- teardown ----------------------------------------------------------------------------- */

static void close_walk(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static void fetcher_closed(void *arg)
{
    struct daemon *d = arg;
    d->fetcher = NULL;
    /* The sink stopped its own timers when its shutdown finished, so the facility can go
     * first; the sink is freed after the loop has run dry (this may run inside the sink's
     * shutdown callback). */
    timers_free(d->timers);
    d->timers = NULL;
    uv_signal_t *sigs[] = {&d->sig_hup, &d->sig_term, &d->sig_int, &d->sig_usr1};
    for (size_t i = 0; i < d->nsignals; i++)
        uv_close((uv_handle_t *)sigs[i], NULL);
}

static void server_closed(void *arg)
{
    struct daemon *d = arg;
    d->server = NULL;
    status_free(d->status); /* the sink has answered its reads: it has shut down */
    d->status = NULL;
    runner_free(d->runner);
    d->runner = NULL;
    sched_free(d->sched);
    d->sched = NULL;
    for (size_t i = 0; i < d->napis; i++) {
        api_free(d->apis[i]);
        d->apis[i] = NULL;
    }
    if (d->fetcher)
        fetcher_free(d->fetcher, fetcher_closed, d);
    else
        fetcher_closed(d);
}

static void teardown(struct daemon *d);

static void cluster_stopped(void *arg)
{
    struct daemon *d = arg;
    cluster_free(d->cluster);
    d->cluster = NULL;
    teardown(d);
}

/* Closes everything but the sink, in reverse order of setup; the loop then runs dry. The
 * leases go first (after the sink has flushed, so that the month's calls are in api_usage
 * before another instance takes the budget over and reads them). */
static void teardown(struct daemon *d)
{
    if (d->cluster) {
        cluster_stop(d->cluster, cluster_stopped, d);
        return;
    }
    d->closing = true;
    if (d->timers) {
        timers_stop(d->timers, &d->watchdog_timer);
        timers_stop(d->timers, &d->stop_timer);
        timers_stop(d->timers, &d->once_timer);
        timers_stop(d->timers, &d->inflight_timer);
        timers_stop(d->timers, &d->month_timer);
    }
    if (d->server)
        server_close(d->server, server_closed, d);
    else
        server_closed(d);
}

static void sink_done(void *arg)
{
    struct daemon *d = arg;
    struct sink_stats st;
    sink_get_stats(d->sink, &st);
    log_info("stopped", LOG_U("rows_committed", st.rows_committed),
             LOG_U("rows_in_spool", st.rows_spooled));
    /* --once fails when a job failed, when a stop signal cut the list of jobs short, or when
     * rows are left uncommitted (they are in the spool). */
    if (d->opts->once && d->exit_code == 0 &&
        (st.rows_pending > 0 || d->once_failed || d->once_waiting ||
         d->once_next < d->opts->once_count || any_job_running(d)))
        d->exit_code = 1;
    teardown(d);
}

/* Moves the stop along: once no job runs, the sink flushes in the time that is left. */
static void stop_progress(struct daemon *d)
{
    if (!d->stopping || d->sink_stopping || any_job_running(d))
        return;
    d->sink_stopping = true;
    uint64_t now = timers_now(d->timers);
    uint64_t left = d->stopping >= 2 || now >= d->stop_deadline ? 0 : d->stop_deadline - now;
    sink_shutdown(d->sink, left, sink_done, d);
}

static void stop_timeout(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct daemon *d = arg;
    /* Jobs still running get cancelled; their parsed rows still reach the sink, which was
     * or now is told the time left (none): the sink owns its own deadline. */
    if (any_job_running(d)) {
        log_warn("shutdown_timeout reached: cancelling running jobs");
        if (d->runner)
            runner_cancel(d->runner);
    }
    stop_progress(d);
}

static void stop_inflight(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct daemon *d = arg;
    if (!any_job_running(d))
        return;
    log_info("cancelling the transfers still in flight");
    runner_cancel(d->runner);
    stop_progress(d);
}

static void begin_stop(struct daemon *d, bool hurry)
{
    if (d->closing)
        return;
    if (d->stopping && hurry) {
        log_warn("second stop signal: cutting the wait short, pending rows go to the spool");
        d->stopping = 2;
        if (d->runner)
            runner_cancel(d->runner);
        if (d->sink_stopping)
            sink_shutdown(d->sink, 0, sink_done, d);
        stop_progress(d);
        return;
    }
    if (d->stopping)
        return;
    d->stopping = 1;
    notify_stopping();
    sched_stop(d->sched);
    uint64_t timeout = d->cfg->daemon.shutdown_timeout_ms;
    d->stop_deadline = timers_now(d->timers) + timeout;
    timers_start(d->timers, &d->stop_timer, timeout);
    /* What the stop waits for, said before the waits that api_stop ends. */
    size_t running = 0, in_flight = 0, waiting = 0;
    for (size_t i = 0; d->runner && i < d->cfg->njobs; i++)
        running += runner_running(d->runner, i);
    for (size_t i = 0; i < d->napis; i++) {
        struct api_stats as;
        api_get_stats(d->apis[i], &as);
        in_flight += as.in_flight;
        waiting += as.pending - as.in_flight;
    }
    uint64_t inflight_ms = timeout < DAEMON_STOP_INFLIGHT_MS ? timeout : DAEMON_STOP_INFLIGHT_MS;
    log_info("stopping", LOG_U("jobs_running", running), LOG_U("requests_in_flight", in_flight),
             LOG_U("requests_waiting_cancelled", waiting), LOG_U("in_flight_grace_ms", inflight_ms),
             LOG_U("shutdown_timeout_ms", timeout));
    if (running)
        timers_start(d->timers, &d->inflight_timer, inflight_ms);
    for (size_t i = 0; i < d->napis; i++)
        api_stop(d->apis[i]);
    stop_progress(d);
}

/* --- jobs --------------------------------------------------------------------------------- */

static void print_summary(const struct run_summary *s)
{
    double secs = (double)(s->finished_wall_ms - s->started_wall_ms) / 1000.0;
    printf("job=%s status=%s requests=%llu rows=%llu counted=%llu seconds=%.3f", s->name,
           run_status_name(s->status), (unsigned long long)s->requests, (unsigned long long)s->rows,
           (unsigned long long)s->counted, secs);
    if (s->error[0])
        printf(" error=\"%s\"", s->error);
    printf("\n");
    fflush(stdout);
}

static void once_next(struct daemon *d);

static void once_idle(void *arg)
{
    struct daemon *d = arg;
    if (!d->once_waiting)
        return;
    d->once_waiting = false;
    timers_stop(d->timers, &d->once_timer);
    d->exit_code = d->once_failed ? 1 : 0;
    log_info("every row is committed");
    begin_stop(d, false);
}

static void once_wait_timeout(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct daemon *d = arg;
    if (!d->once_waiting)
        return;
    d->once_waiting = false;
    struct sink_stats st;
    sink_get_stats(d->sink, &st);
    log_error("rows not committed within shutdown_timeout; they are safe in the spool",
              LOG_U("rows_pending", st.rows_pending), LOG_B("db_up", st.db_up));
    d->exit_code = 1;
    begin_stop(d, false);
}

static void once_job_done(const struct run_summary *s, void *arg)
{
    struct daemon *d = arg;
    print_summary(s);
    if (s->status == RUN_FAILED)
        d->once_failed = true;
    send_status(d);
    if (d->stopping) {
        stop_progress(d);
        return;
    }
    once_next(d);
}

static void once_next(struct daemon *d)
{
    if (d->once_next < d->opts->once_count) {
        size_t id = d->opts->once_order[d->once_next++];
        int rc = runner_start(d->runner, id, once_job_done, d);
        if (rc < 0) {
            log_error("cannot start job", LOG_S("job", d->cfg->jobs[id].name), LOG_I("rc", rc));
            d->once_failed = true;
            once_next(d);
        }
        return;
    }
    /* Every job ran: wait until their rows are committed (the database may be down, so at
     * most shutdown_timeout). */
    d->once_waiting = true;
    timers_start(d->timers, &d->once_timer, d->cfg->daemon.shutdown_timeout_ms);
    sink_on_idle(d->sink, once_idle, d);
}

/* Schedules each job at the interval the month's credits allow (runner_plan_schedule): the
 * configured one while it fits, longer when it does not. A job moves only when its interval
 * changes by more than a tenth, so the small drift of the ledger between runs does not keep
 * shifting the grid. Logs the schedule whenever it changes. */
static void fit_schedule(struct daemon *d)
{
    if (!d->runner || d->opts->once || d->stopping || !d->nslots)
        return;
    uint64_t every[64];
    if (d->nslots > 64)
        return;
    bool stretched = runner_plan_schedule(d->runner, util_wall_ms(), every);
    bool changed = false;
    for (size_t i = 0; i < d->nslots; i++) {
        struct jobslot *slot = &d->slots[i];
        if (!slot->sched_job || !d->cfg->jobs[i].enabled)
            continue;
        uint64_t cur = slot->every_ms;
        uint64_t diff = every[i] > cur ? every[i] - cur : cur - every[i];
        if (cur && diff * 10 <= cur)
            continue;
        struct cfg_job c = d->cfg->jobs[i];
        c.every_ms = every[i];
        sched_job_update(slot->sched_job, &c);
        slot->every_ms = every[i];
        changed = true;
    }
    if (!changed)
        return;
    for (size_t i = 0; i < d->nslots; i++) {
        const struct cfg_job *jb = &d->cfg->jobs[i];
        if (!d->slots[i].sched_job || !jb->enabled)
            continue;
        log_emit(stretched && d->slots[i].every_ms > jb->every_ms ? LOG_WARN : LOG_INFO,
                 "job schedule", LOG_S("job", jb->name),
                 LOG_S("every", jb->every_auto ? "auto" : "fixed"),
                 LOG_F("configured_s", (double)jb->every_ms / 1000.0),
                 LOG_F("running_s", (double)d->slots[i].every_ms / 1000.0),
                 LOG_B("stretched_for_credits", d->slots[i].every_ms > jb->every_ms), LOG_END);
    }
}

static void budget_changed(void *arg)
{
    fit_schedule(arg);
}

static void tick_done(const struct run_summary *s, void *arg)
{
    struct jobslot *slot = arg;
    struct daemon *d = slot->d;
    sched_job_done(slot->sched_job);
    char counted_detail[1024];
    if (run_counted_json(s, counted_detail, sizeof(counted_detail)) < 0)
        snprintf(counted_detail, sizeof(counted_detail), "{}");
    /* A failed run is an error (a warn when the stop cut it short), a partial one a warn. */
    enum log_level level = s->status == RUN_OK        ? LOG_INFO
                           : s->status == RUN_PARTIAL ? LOG_WARN
                           : d->stopping              ? LOG_WARN
                                                      : LOG_ERROR;
    log_emit(level, "job finished", LOG_S("job", s->name),
             LOG_S("status", run_status_name(s->status)), LOG_U("requests", s->requests),
             LOG_U("rows", s->rows), LOG_U("counted", s->counted),
             LOG_S("counted_detail", counted_detail),
             LOG_F("seconds", (double)(s->finished_wall_ms - s->started_wall_ms) / 1000.0),
             LOG_S("error", s->error), LOG_END);
    if (s->status == RUN_FAILED && !d->stopping) {
        slot->failed_streak++;
    } else if (s->status != RUN_FAILED && slot->failed_streak) {
        log_info("job recovered", LOG_S("job", s->name),
                 LOG_S("status", run_status_name(s->status)),
                 LOG_U("failed_runs_before", slot->failed_streak));
        slot->failed_streak = 0;
    }
    char labels[160];
    snprintf(labels, sizeof(labels), "job=\"%s\"", s->name);
    metrics_set("coingest_job_consecutive_failures", labels, slot->failed_streak);
    status_run_finished(d->status);
    send_status(d);
    stop_progress(d);
    fit_schedule(d);
}

static void tick(struct sched_entry *job, void *arg)
{
    struct jobslot *slot = arg;
    struct daemon *d = slot->d;
    if (d->stopping || !d->cfg->jobs[slot->id].enabled) {
        sched_job_done(job);
        return;
    }
    if (d->cluster && !cluster_may_run(d->cluster, slot->id)) {
        /* A standby: another instance holds the job's lease (or its source's budget). */
        log_debug("tick skipped: another instance runs the job",
                  LOG_S("job", d->cfg->jobs[slot->id].name), LOG_S("instance", d->instance));
        sched_job_done(job);
        return;
    }
    int rc = runner_start(d->runner, slot->id, tick_done, slot);
    if (rc < 0) {
        log_error("cannot start job", LOG_S("job", d->cfg->jobs[slot->id].name), LOG_I("rc", rc));
        sched_job_done(job);
    }
}

/* A lease came or went (cluster.h). A lost job lease stops that job's run; a lost budget
 * lease stops every run of the source. A budget lease taken over means another instance spent
 * the source's budget until now: the month is read again and the token bucket starts empty,
 * so that the two together stay within the API's rate. */
/* GET /key and the like: by the instance that holds a source's budget lease only (the others
 * do not call the API); without [cluster], for every source. */
static void probe_accounts(struct daemon *d)
{
    if (d->opts->once)
        return;
    if (!d->cluster) {
        runner_probe_accounts(d->runner);
        return;
    }
    for (size_t s = 0; s < d->cfg->nsources; s++)
        if (cluster_holds_budget(d->cluster, s))
            runner_probe_account(d->runner, s);
}

static void on_lease_change(void *arg, size_t job, size_t source, bool held)
{
    struct daemon *d = arg;
    if (!d->runner)
        return;
    if (job != SIZE_MAX) {
        if (!held)
            runner_cancel_job(d->runner, job,
                              "lease lost: this instance no longer holds the job's lease");
        return;
    }
    if (held) {
        runner_ledger_reread(d->runner, source);
        if (!d->opts->once)
            runner_probe_account(d->runner, source); /* the account as it is now */
        struct api *api = source < d->napis ? d->apis[source] : NULL;
        struct tbucket *b = api ? api_bucket(api) : NULL;
        uint64_t now = timers_now(d->timers);
        while (b && tbucket_try_take(b, now))
            ;
        return;
    }
    for (size_t j = 0; j < d->cfg->njobs; j++)
        if (d->cfg->jobs[j].source == source)
            runner_cancel_job(
                d->runner, j,
                "lease lost: this instance no longer holds the source's budget lease");
}

/* The jobs' store is the sink: rows go to its writers, reads run on a writer connection. */
static int store_submit(void *ctx, struct batch *b)
{
    return sink_submit(ctx, b);
}

static int store_submit_many(void *ctx, struct batch *const *bs, size_t n, uint64_t *accepted)
{
    return sink_submit_many(ctx, bs, n, accepted);
}

static int store_submit_async(void *ctx, struct batch *const *bs, size_t n,
                              void (*cb)(int rc, uint64_t accepted, void *arg), void *arg,
                              uint64_t *accepted)
{
    return sink_submit_async(ctx, bs, n, cb, arg, accepted);
}

struct store_read_call {
    store_read_cb cb;
    void *arg;
};

static void store_read_done(int rc, const struct sink_rows *rows, const char *err, void *arg)
{
    struct store_read_call call = *(struct store_read_call *)arg;
    free(arg);
    struct store_rows out = {0};
    if (rows)
        out = (struct store_rows){rows->nrows, rows->ncols, rows->names, rows->cells};
    call.cb(rc, rows ? &out : NULL, err, call.arg);
}

static int store_read(void *ctx, const char *sql, const char *const *params, size_t nparams,
                      size_t max_rows, store_read_cb cb, void *arg)
{
    struct store_read_call *call = malloc(sizeof(*call));
    if (!call)
        return -ENOMEM;
    *call = (struct store_read_call){cb, arg};
    int rc = sink_read(ctx, sql, params, nparams, max_rows, store_read_done, call);
    if (rc != 0)
        free(call);
    return rc;
}

/* Work off the loop (export) runs on libuv's thread pool; the runner waits for its run to end
 * before the daemon stops, so no work is left queued when the loop closes. */
struct store_work_call {
    uv_work_t req;
    void (*fn)(void *arg);
    void (*done)(void *arg);
    void *arg;
};

static void store_work_run(uv_work_t *req)
{
    struct store_work_call *call = req->data;
    call->fn(call->arg);
}

static void store_work_done(uv_work_t *req, int status)
{
    (void)status; /* never cancelled: uv_cancel is not used on these */
    struct store_work_call call = *(struct store_work_call *)req->data;
    free(req->data);
    call.done(call.arg);
}

static int store_work(void *ctx, void (*fn)(void *arg), void (*done)(void *arg), void *arg)
{
    struct store_work_call *call = malloc(sizeof(*call));
    if (!call)
        return -ENOMEM;
    *call = (struct store_work_call){.fn = fn, .done = done, .arg = arg};
    call->req.data = call;
    int rc = uv_queue_work(ctx, &call->req, store_work_run, store_work_done);
    if (rc != 0)
        free(call);
    return rc;
}

/* --- the status page ---------------------------------------------------------------------- */

/* The snapshot of everything the page shows (status.h), or NULL on OOM. */
static json_t *status_snapshot(struct daemon *d)
{
    size_t n = d->cfg->njobs;
    uint64_t *next = calloc(n + 1, sizeof(*next));
    unsigned *streak = calloc(n + 1, sizeof(*streak));
    json_t *j = NULL;
    if (next && streak) {
        for (size_t i = 0; i < n && i < d->nslots; i++) {
            struct sched_entry_stats ss = {0};
            if (d->slots[i].sched_job)
                sched_job_stats(d->slots[i].sched_job, &ss);
            next[i] = ss.next_due_wall_ms;
            streak[i] = d->slots[i].failed_streak;
        }
        char hjson[1024];
        int hstatus = health(d, hjson, sizeof(hjson));
        struct status_view v = {
            .cfg = d->cfg,
            .apis = d->apis,
            .runner = d->runner,
            .next_run_wall_ms = next,
            .failed_streak = streak,
            .health_json = hjson,
            .health_status = hstatus,
            .stopping = d->stopping != 0,
            .started_wall_ms = d->started_wall_ms,
        };
        j = status_json(d->status, &v);
        if (j && d->cluster)
            json_object_set_new(j, "cluster", cluster_json(d->cluster));
    }
    free(next);
    free(streak);
    return j;
}

static int serve_status_json(void *arg, const char **ctype, char **body, size_t *len)
{
    json_t *j = status_snapshot(arg);
    *ctype = "application/json";
    *body = j ? json_dumps(j, JSON_INDENT(1) | JSON_PRESERVE_ORDER) : NULL;
    json_decref(j);
    *len = *body ? strlen(*body) : 0;
    return 200;
}

static int serve_status_page(void *arg, const char **ctype, char **body, size_t *len)
{
    json_t *j = status_snapshot(arg);
    *ctype = "text/html; charset=utf-8";
    *body = j ? status_html(j, len) : NULL;
    json_decref(j);
    return 200;
}

/* --- the schedule ------------------------------------------------------------------------- */

/* Puts every job of an enabled source on the schedule. 0, or -ENOMEM. */
static int schedule(struct daemon *d)
{
    const struct config *cfg = d->cfg;
    /* The first schedule assumes nothing used this month; the ledger's read (asked for at
     * start) and the account's report refit it (budget_changed). */
    uint64_t every[64] = {0};
    if (d->nslots <= 64)
        runner_plan_schedule(d->runner, util_wall_ms(), every);
    for (size_t i = 0; i < d->nslots; i++) {
        d->slots[i].d = d;
        d->slots[i].id = i;
        /* The jobs of a source that is off are not scheduled. */
        if (!cfg->sources[cfg->jobs[i].source].enabled)
            continue;
        struct cfg_job c = cfg->jobs[i];
        if (i < 64 && every[i])
            c.every_ms = every[i];
        d->slots[i].every_ms = c.every_ms;
        d->slots[i].sched_job = sched_add(d->sched, &c, tick, &d->slots[i]);
        if (!d->slots[i].sched_job)
            return -ENOMEM;
        char labels[160];
        snprintf(labels, sizeof(labels), "job=\"%s\"", cfg->jobs[i].name);
        metrics_set("coingest_job_consecutive_failures", labels, 0);
    }
    for (size_t i = 0; i < d->nslots; i++) {
        const struct cfg_job *jb = &cfg->jobs[i];
        if (d->slots[i].sched_job && jb->enabled && d->slots[i].every_ms != jb->every_ms)
            log_warn("job schedule", LOG_S("job", jb->name),
                     LOG_S("every", jb->every_auto ? "auto" : "fixed"),
                     LOG_F("configured_s", (double)jb->every_ms / 1000.0),
                     LOG_F("running_s", (double)d->slots[i].every_ms / 1000.0),
                     LOG_B("stretched_for_credits", true));
    }
    return 0;
}

/* Cluster mode: the schedule starts after the lease thread's first pass (cluster.h). */
static void schedule_jobs(void *arg)
{
    struct daemon *d = arg;
    if (d->stopping)
        return;
    if (schedule(d) != 0) {
        log_error("cannot schedule the jobs: out of memory");
        d->exit_code = EX_OSERR;
        begin_stop(d, true);
    }
}

/* --- signals and reload ------------------------------------------------------------------- */

static void register_secrets(const struct config *cfg)
{
    log_clear_secrets();
    log_add_secret(cfg->database.password);
    for (size_t i = 0; i < cfg->nsources; i++)
        log_add_secret(cfg->sources[i].api_key);
}

static void reload(struct daemon *d)
{
    notify_reloading();
    char err[2048];
    struct config *next = NULL;
    if (config_load(d->opts->config_path, &next, err, sizeof(err)) != 0) {
        log_error("reload refused; keeping the running configuration", LOG_S("error", err));
        metrics_add("coingest_reload_failures_total", "", 1);
        notify_ready();
        return;
    }
    struct config_diff diff;
    config_diff(d->cfg, next, &diff);
    if (diff.restart_needed)
        log_warn("some changed keys apply only after a restart",
                 LOG_S("keys", "[daemon] metrics_listen, spool_dir; [source.*] enabled"));
    log_setup(next->daemon.log_level, next->daemon.log_format);
    register_secrets(next);
    for (size_t i = 0; i < d->napis; i++)
        if (d->apis[i])
            api_update(d->apis[i], &next->sources[i]);
    sink_reconfigure(d->sink, next);
    runner_set_config(d->runner, next);
    status_set_config(d->status, next);
    for (size_t i = 0; i < d->nslots; i++) {
        /* --once runs have no schedule to change. */
        if ((diff.job >> i & 1) && d->slots[i].sched_job) {
            sched_job_update(d->slots[i].sched_job, &next->jobs[i]);
            d->slots[i].every_ms = next->jobs[i].every_ms;
        }
    }
    struct config *old = d->cfg;
    d->cfg = next;
    config_free(old);
    /* The new schedule against the month's credits, and the account's figures again. */
    fit_schedule(d);
    probe_accounts(d);
    metrics_add("coingest_reloads_total", "", 1);
    log_info("configuration reloaded", LOG_S("path", d->opts->config_path),
             LOG_B("database", diff.database), LOG_B("rate", diff.source_rate != 0),
             LOG_B("universe", diff.universe));
    notify_ready();
}

static void on_signal(uv_signal_t *h, int signum)
{
    struct daemon *d = h->data;
    if (d->closing)
        return; /* the modules a handler would use are being taken down */
    switch (signum) {
    case SIGHUP:
        if (d->stopping)
            log_info("SIGHUP ignored while stopping");
        else
            reload(d);
        break;
    case SIGTERM:
    case SIGINT:
        log_info("stop signal", LOG_S("signal", signum == SIGTERM ? "TERM" : "INT"));
        begin_stop(d, true);
        break;
    case SIGUSR1:
        log_stats(d);
        break;
    default:
        break;
    }
}

static void month_turn(struct wheel_timer *tm, void *arg)
{
    struct daemon *d = arg;
    if (d->stopping || !d->runner)
        return;
    /* a second past the turn, so that the wall clock is in the new month when it fires */
    timers_start(d->timers, tm, runner_month_tick(d->runner) + 1000);
}

static void watchdog(struct wheel_timer *tm, void *arg)
{
    struct daemon *d = arg;
    notify_watchdog();
    timers_start(d->timers, tm, d->watchdog_ms);
}

static void on_ready(void *arg)
{
    struct daemon *d = arg;
    log_info("database reached and schema current: ready");
    notify_ready();
    send_status(d);
}

/* --- run ---------------------------------------------------------------------------------- */

static int start_signal(struct daemon *d, uv_signal_t *h, int signum)
{
    int rc = uv_signal_init(&d->loop, h);
    if (rc)
        return rc;
    d->nsignals++;
    h->data = d;
    return uv_signal_start(h, on_signal, signum);
}

int daemon_run(struct config *cfg, const struct daemon_opts *opts)
{
    struct daemon *d = calloc(1, sizeof(*d));
    if (!d) {
        config_free(cfg);
        return EX_OSERR;
    }
    d->cfg = cfg;
    d->opts = opts;
    d->started_wall_ms = util_wall_ms();
    int status = EX_SOFTWARE;
    char err[512];

    if (db_library_init() != 0) {
        log_error("cannot initialise the MySQL client library");
        goto fail_lib;
    }
    if (uv_loop_init(&d->loop) != 0)
        goto fail_loop;
    if (start_signal(d, &d->sig_hup, SIGHUP) || start_signal(d, &d->sig_term, SIGTERM) ||
        start_signal(d, &d->sig_int, SIGINT) || start_signal(d, &d->sig_usr1, SIGUSR1)) {
        log_error("cannot install signal handlers");
        goto fail_setup;
    }
    /* Handlers exist: a signal that came during startup is delivered now. */
    unblock_signals();

    d->timers = timers_new(&d->loop);
    if (!d->timers)
        goto fail_setup;
    wheel_timer_init(&d->watchdog_timer, watchdog, d);
    wheel_timer_init(&d->stop_timer, stop_timeout, d);
    wheel_timer_init(&d->once_timer, once_wait_timeout, d);
    wheel_timer_init(&d->inflight_timer, stop_inflight, d);
    wheel_timer_init(&d->month_timer, month_turn, d);

    d->sink = sink_new(&d->loop, d->timers, cfg);
    if (!d->sink)
        goto fail_setup;
    int rc = sink_start(d->sink);
    if (rc < 0) {
        /* sink_start logged why. A spool_dir another daemon holds may be free later. */
        status = rc == -EBUSY ? EX_TEMPFAIL : EX_OSERR;
        goto fail_setup;
    }
    sink_on_ready(d->sink, on_ready, d);

    d->fetcher = fetcher_new(&d->loop, d->timers);
    if (!d->fetcher)
        goto fail_setup;
    d->napis = cfg->nsources;
    d->apis = calloc(d->napis + 1, sizeof(*d->apis));
    if (!d->apis)
        goto fail_setup;
    for (size_t i = 0; i < cfg->nsources; i++) {
        /* A source without plans (analytics) needs no API; its jobs still run. */
        if (!cfg->sources[i].enabled || cfg->sources[i].def->nplans == 0)
            continue;
        if (!(d->apis[i] = api_new(d->fetcher, &cfg->sources[i])))
            goto fail_setup;
    }
    struct store store = {.submit = store_submit,
                          .submit_many = store_submit_many,
                          .submit_async = store_submit_async,
                          .read = store_read,
                          .ctx = d->sink,
                          .work = store_work,
                          .work_ctx = &d->loop};
    d->runner = runner_new(cfg, d->apis, store);
    d->sched = sched_new(d->timers);
    d->nslots = cfg->njobs;
    d->slots = calloc(d->nslots + 1, sizeof(*d->slots));
    if (!d->runner || !d->sched || !d->slots)
        goto fail_setup;
    cluster_instance_name(cfg, d->instance, sizeof(d->instance));
    runner_set_instance(d->runner, d->instance);
    if (cfg->cluster.enabled && !opts->once) {
        d->cluster = cluster_new(&d->loop, cfg, d->instance, on_lease_change, d);
        if (!d->cluster)
            goto fail_setup;
    }

    if (cfg->daemon.metrics_listen && cfg->daemon.metrics_listen[0] && !opts->once) {
        d->server = server_new(&d->loop, cfg->daemon.metrics_listen, health, d, err, sizeof(err));
        if (!d->server) {
            log_error("cannot serve metrics", LOG_S("metrics_listen", cfg->daemon.metrics_listen),
                      LOG_S("error", err));
            status = EX_OSERR;
            goto fail_setup;
        }
        d->status = status_new(d->timers, d->sink, cfg);
        if (!d->status || server_route(d->server, "/", serve_status_page, d) != 0 ||
            server_route(d->server, "/status.json", serve_status_json, d) != 0)
            goto fail_setup;
    }

    d->watchdog_ms = notify_watchdog_interval_ms();
    if (d->watchdog_ms)
        timers_start(d->timers, &d->watchdog_timer, d->watchdog_ms);

    log_info("coingestd started", LOG_S("config", opts->config_path), LOG_B("once", opts->once),
             LOG_U("workers", cfg->database.workers));
    if (opts->once) {
        once_next(d);
    } else {
        runner_print_budget(cfg, 0, NULL);
        if (d->cluster)
            cluster_on_first_pass(d->cluster, schedule_jobs, d); /* once the leases are known */
        else if (schedule(d) != 0)
            goto fail_setup;
    }

    runner_on_budget(d->runner, budget_changed, d);
    runner_load_ledgers(d->runner);
    probe_accounts(d); /* in cluster mode, none yet: on gaining a budget lease */
    if (!opts->once)
        month_turn(&d->month_timer, d);

    uv_run(&d->loop, UV_RUN_DEFAULT);
    status = d->exit_code;
    goto done;

fail_setup:
    /* A failed start: close what exists, in reverse order, flushing nothing new. */
    d->stopping = 2;
    if (d->sink) {
        d->sink_stopping = true;
        sink_shutdown(d->sink, 0, sink_done, d);
    } else {
        teardown(d);
    }
    uv_run(&d->loop, UV_RUN_DEFAULT);
done:
    sink_free(d->sink);
    if (uv_loop_close(&d->loop) != 0) {
        uv_walk(&d->loop, close_walk, NULL);
        uv_run(&d->loop, UV_RUN_DEFAULT);
        uv_loop_close(&d->loop);
    }
fail_loop:
    db_library_end();
fail_lib:
    config_free(d->cfg);
    free(d->apis);
    free(d->slots);
    free(d);
    return status;
}
