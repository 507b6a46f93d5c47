/*
 * daemon: the running daemon on one libuv loop.
 *
 * daemon_run() sets the modules up in the order daemon.h gives and tears them down in reverse
 * through one chain of close steps. Everything here runs on the loop thread; the writer
 * threads inside the sink are the only other threads, and signals reach the loop through
 * uv_signal (they were blocked in main() until the handlers existed, so an early SIGHUP waits
 * instead of killing the process).
 *
 * Stopping: SIGTERM/SIGINT (or the end of a --once run) stops the scheduler, lets running jobs
 * finish within shutdown_timeout (then cancels them), then asks the sink to flush, which
 * spools whatever it cannot commit in the time left. A second signal cuts both waits short.
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

#include "coingest/db.h"
#include "coingest/fetch.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/notify.h"
#include "coingest/runner.h"
#include "coingest/sched.h"
#include "coingest/server.h"
#include "coingest/sink.h"
#include "coingest/source.h"
#include "coingest/timers.h"
#include "coingest/util.h"

struct daemon;

/* A job's place on the schedule. */
struct jobslot {
    struct daemon *d;
    size_t id;                     /* index into cfg->jobs */
    struct sched_entry *sched_job; /* NULL when not scheduled */
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
    struct jobslot *slots; /* per job */
    size_t nslots;

    uv_signal_t sig_hup, sig_term, sig_int, sig_usr1;
    struct wheel_timer watchdog_timer;
    struct wheel_timer stop_timer;
    struct wheel_timer once_timer;
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

/*
 * /healthz. A database that is away is not by itself unhealthy: rows wait in the spool, and an
 * orchestrator restarting the daemon would only make things worse. So the answer is 503 only
 * when rows are being lost (the spool failed and memory was full: a promise broken, and it stays
 * 503 until a restart, so the loss is not hidden by the next good probe), or when the database
 * has been unreachable for longer than [daemon] health_db_grace (0: at once). Otherwise 200,
 * with "db":"down" and the spool's counts while the database is away.
 *
 * How long the database has been away is counted from the first probe that saw it down (the
 * sink does not say when it went down), so it can read up to one probe interval short.
 */
static int health(void *arg, char *json, size_t cap)
{
    static uint64_t down_since_ms; /* loop thread only; 0 while the database is up */
    struct daemon *d = arg;
    struct sink_stats st;
    sink_get_stats(d->sink, &st);
    uint64_t now = util_mono_ms();
    if (st.db_up)
        down_since_ms = 0;
    else if (down_since_ms == 0)
        down_since_ms = now ? now : 1;
    unsigned long long down_s = st.db_up ? 0 : (now - down_since_ms) / 1000;
    uint64_t grace = d->cfg->daemon.health_db_grace_ms;
    char reason[96] = "";
    if (st.rows_lost > 0)
        snprintf(reason, sizeof(reason), "%llu rows lost (the spool is failing)",
                 (unsigned long long)st.rows_lost);
    else if (!st.db_up && (grace == 0 || now - down_since_ms >= grace))
        snprintf(reason, sizeof(reason), "database unreachable for %llus", down_s);
    int n = snprintf(json, cap, "{\"status\":\"%s\",", reason[0] ? "unhealthy" : "ok");
    if (reason[0] && n > 0 && (size_t)n < cap)
        n += snprintf(json + n, cap - (size_t)n, "\"reason\":\"%s\",", reason);
    if (n > 0 && (size_t)n < cap)
        snprintf(json + n, cap - (size_t)n,
                 "\"db\":\"%s\",\"db_down_s\":%llu,\"pending_rows\":%llu,\"spool_rows\":%llu,"
                 "\"rows_lost\":%llu}",
                 st.db_up ? "up" : "down", down_s, (unsigned long long)st.rows_pending,
                 (unsigned long long)st.rows_spooled, (unsigned long long)st.rows_lost);
    return reason[0] ? 503 : 200;
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

/* Closes everything but the sink, in reverse order of setup; the loop then runs dry. */
static void teardown(struct daemon *d)
{
    d->closing = true;
    if (d->timers) {
        timers_stop(d->timers, &d->watchdog_timer);
        timers_stop(d->timers, &d->stop_timer);
        timers_stop(d->timers, &d->once_timer);
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
    d->stop_deadline = timers_now(d->timers) + d->cfg->daemon.shutdown_timeout_ms;
    timers_start(d->timers, &d->stop_timer, d->cfg->daemon.shutdown_timeout_ms);
    log_info("stopping", LOG_U("shutdown_timeout_ms", d->cfg->daemon.shutdown_timeout_ms));
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

static void tick_done(const struct run_summary *s, void *arg)
{
    struct jobslot *slot = arg;
    struct daemon *d = slot->d;
    sched_job_done(slot->sched_job);
    log_info("job finished", LOG_S("job", s->name), LOG_S("status", run_status_name(s->status)),
             LOG_U("requests", s->requests), LOG_U("rows", s->rows), LOG_U("counted", s->counted),
             LOG_F("seconds", (double)(s->finished_wall_ms - s->started_wall_ms) / 1000.0),
             LOG_S("error", s->error));
    send_status(d);
    stop_progress(d);
}

static void tick(struct sched_entry *job, void *arg)
{
    struct jobslot *slot = arg;
    struct daemon *d = slot->d;
    if (d->stopping || !d->cfg->jobs[slot->id].enabled) {
        sched_job_done(job);
        return;
    }
    int rc = runner_start(d->runner, slot->id, tick_done, slot);
    if (rc < 0) {
        log_error("cannot start job", LOG_S("job", d->cfg->jobs[slot->id].name), LOG_I("rc", rc));
        sched_job_done(job);
    }
}

/* The jobs' store is the sink: rows go to its writers, reads run on a writer connection. */
static int store_submit(void *ctx, struct batch *b)
{
    return sink_submit(ctx, b);
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
    for (size_t i = 0; i < d->nslots; i++) {
        /* --once runs have no schedule to change. */
        if ((diff.job >> i & 1) && d->slots[i].sched_job)
            sched_job_update(d->slots[i].sched_job, &next->jobs[i]);
    }
    struct config *old = d->cfg;
    d->cfg = next;
    config_free(old);
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
    struct store store = {.submit = store_submit, .read = store_read, .ctx = d->sink};
    d->runner = runner_new(cfg, d->apis, store);
    d->sched = sched_new(d->timers);
    d->nslots = cfg->njobs;
    d->slots = calloc(d->nslots + 1, sizeof(*d->slots));
    if (!d->runner || !d->sched || !d->slots)
        goto fail_setup;

    if (cfg->daemon.metrics_listen && cfg->daemon.metrics_listen[0] && !opts->once) {
        d->server = server_new(&d->loop, cfg->daemon.metrics_listen, health, d, err, sizeof(err));
        if (!d->server) {
            log_error("cannot serve metrics", LOG_S("metrics_listen", cfg->daemon.metrics_listen),
                      LOG_S("error", err));
            status = EX_OSERR;
            goto fail_setup;
        }
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
        for (size_t i = 0; i < d->nslots; i++) {
            d->slots[i].d = d;
            d->slots[i].id = i;
            /* The jobs of a source that is off are not scheduled. */
            if (!cfg->sources[cfg->jobs[i].source].enabled)
                continue;
            d->slots[i].sched_job = sched_add(d->sched, &cfg->jobs[i], tick, &d->slots[i]);
            if (!d->slots[i].sched_job)
                goto fail_setup;
        }
    }

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
