/*
 * runner: runs jobs, the same way for every job of every source.
 *
 * A job (struct job_def) belongs to a source (source.h) and says what one run does: its steps,
 * written as a small state machine in the source's folder, its request priority, its own
 * config keys, and how many requests a run costs (for the budget). The runner owns everything
 * else: one run of a job at a time (-EBUSY otherwise), the run's summary, its `job_runs` row,
 * the job metrics, cancellation at shutdown, and the seams a run talks to the world through.
 *
 * Seams. A run sends requests with run_get() (through its source's API: token bucket,
 * retries; fetch.h), hands rows out with run_emit() and reads what it needs from the database
 * with run_read(). Rows and reads go through a `struct store`: in the daemon that is the sink
 * (its writer pool commits, or spools, every batch, and answers reads on a writer connection
 * off the loop thread); in tests it is an in-memory collector, so a job runs without a
 * database.
 *
 * A run's life: runner_start() allocates the job's run state (def->run_size bytes, zeroed)
 * and calls def->start(); the job sends requests and, in their callbacks, emits rows and
 * plans the next request; when it has nothing left to do it calls run_finish(), exactly once,
 * possibly from inside start(). The runner then writes the `job_runs` row (through the store,
 * like any row), counts the metrics, calls def->cleanup(), and reports the summary to the
 * runner_start() caller.
 *
 * Status: ok when no request failed for good and no error was recorded; partial when some
 * requests succeeded and something failed; failed when nothing succeeded or the run could
 * not start. run_fail() records an error (the first one is kept).
 *
 * The monthly ledger: the runner counts every attempt sent to a source's API against the
 * calendar month (UTC), reads the month's count from api_usage through the store when the
 * source is first used (its requests wait for that read), writes it back at each run's end
 * and at most once a minute, and refuses requests once the count reaches monthly_credits -
 * credit_reserve (src/runner.c says how; docs/operations.md "Monthly credits").
 *
 * Thread: loop thread only. Store callbacks run on the loop thread too.
 */
#ifndef COINGEST_RUNNER_H
#define COINGEST_RUNNER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/fetch.h"
#include "coingest/source.h"

enum run_status { RUN_OK = 0, RUN_PARTIAL = 1, RUN_FAILED = 2 };

/* Kinds of anomalies one run keeps apart (run_count_kind); more kinds count as "other". */
#define RUN_COUNTED_KINDS 12

struct run_summary {
    size_t job;       /* index into config.jobs */
    const char *name; /* the job's name (static) */
    enum run_status status;
    uint64_t requests; /* HTTP requests the run made (attempts, including retries) */
    uint64_t rows;     /* rows handed to the store and accepted */
    uint64_t counted;  /* anomalies counted, not errors: coins left out, bad fields */
    struct {
        const char *kind; /* static: "missing_coins", "wrong_type_fields", ... */
        uint64_t n;
    } counted_by[RUN_COUNTED_KINDS]; /* `counted` by kind, in the order first counted */
    size_t ncounted_by;
    uint64_t started_wall_ms, finished_wall_ms;
    char error[512]; /* first error, "" when none */
};

/* The result of a read: nrows x ncols text cells (NULL for SQL NULL), row-major, plus the
 * column names. Valid during the read callback only. */
struct store_rows {
    uint32_t nrows, ncols;
    char **names;
    char **cells;
};

/* rc 0 with rows, or -errno (-ENOTCONN: no database now; -EIO: the server refused the query,
 * err says why; -E2BIG: more than max_rows; -ECANCELED: shutting down). */
typedef void (*store_read_cb)(int rc, const struct store_rows *rows, const char *err, void *arg);

/* Where rows go and reads come from. submit takes the batch (also on error) and returns 0
 * when the rows are accepted (committed, or durably on their way), else -errno. read runs a
 * SELECT with string parameters and calls cb exactly once, later, on the loop thread; it
 * returns 0, or -errno when cb will not run. read may be NULL (no database to read).
 *
 * work runs fn(arg) on a thread off the loop (in the daemon: libuv's thread pool), then
 * done(arg) on the loop thread, exactly once and never inline; it returns 0, or -errno when
 * neither will run. It is for jobs that stream more than a read's rows should hold (export):
 * fn may block for long (its own database connection, files, HTTP), must not touch loop
 * objects, and should end soon once the job is cancelled. work may be NULL (no threads: the
 * unit tests' stores); work_ctx is its ctx. */
struct store {
    int (*submit)(void *ctx, struct batch *b);
    /* Optional: n batches at once (NULL entries skipped), as one durable hand-over (the sink
     * syncs its spool once for all of them); *accepted: the rows that were accepted, also on
     * error. Without it, run_emit_many submits one by one. */
    int (*submit_many)(void *ctx, struct batch *const *bs, size_t n, uint64_t *accepted);
    /* Optional: submit_many whose acceptance comes later: 0 when cb(rc, accepted, arg) will
     * report it (once, on the loop thread), 1 when the rows are accepted already, -errno when
     * not all are (cb is not called then). `accepted`: the rows of the call that were.
     * run_emit_many prefers it; a run then finishes only once every row it handed over is
     * accepted or refused. */
    int (*submit_async)(void *ctx, struct batch *const *bs, size_t n,
                        void (*cb)(int rc, uint64_t accepted, void *arg), void *arg,
                        uint64_t *accepted);
    int (*read)(void *ctx, const char *sql, const char *const *params, size_t nparams,
                size_t max_rows, store_read_cb cb, void *arg);
    void *ctx;
    int (*work)(void *work_ctx, void (*fn)(void *arg), void (*done)(void *arg), void *arg);
    void *work_ctx;
};

struct run;

/* What a job is. Definitions are static and live in their source's folder. */
struct job_def {
    const char *name;           /* [job.NAME], `--once NAME`, job_runs.job */
    uint64_t every_ms;          /* default interval */
    bool enabled;               /* default */
    int priority;               /* token bucket class of its requests (tbucket.h) */
    const struct cfg_key *keys; /* the job's own keys in [job.NAME] */
    size_t nkeys;
    size_t run_size; /* bytes of run state runner_start allocates, zeroed; run_state() */
    /* Begins a run: sends the first request, or calls run_finish(). Returns 0, or -errno
     * when the run could not begin (it is then finished as failed; do not call run_finish). */
    int (*start)(struct run *r);
    /* Frees what the run state holds (not the state itself); may be NULL. */
    void (*cleanup)(struct run *r);
    /* Called by runner_cancel (and runner_cancel_job) for a run going on, on the loop thread, after
     * run_cancelled() became true: for a job whose work runs off the loop (run_work), to tell that
     * work to stop early. May be NULL (a job that only sends requests and reads: those end by
     * themselves). Must not finish the run. */
    void (*cancel)(struct run *r);
    /* Requests one run makes with this config, for the budget; `universe` is the number of
     * tracked assets. */
    uint64_t (*requests_per_run)(const struct config *cfg, const struct cfg_job *job,
                                 uint64_t universe);
    /* When the month's credits cannot carry the configured schedule, jobs with a lower
     * `budget_keep` are stretched first (budget.h): what matters least gives way first. */
    int budget_keep;
    /* The `reason`s this job passes to run_source_error(), NULL-terminated (may be NULL):
     * runner_new() shows each one's counter at 0, so a scraper sees its first increase. */
    const char *const *source_errors;
};

typedef void (*runner_done_cb)(const struct run_summary *sum, void *arg);

struct runner;

/* The runner over a config (which must outlive it or be replaced with runner_set_config),
 * the APIs of the sources (apis[i] for cfg->sources[i]; NULL for a source that is off or has
 * no plans: the jobs of an enabled source without plans run without an API) and
 * a store (copied). Makes each source's shared state. NULL on OOM. */
struct runner *runner_new(const struct config *cfg, struct api *const *apis, struct store store);

/* Frees the runner; runs still going are freed without their done callbacks (cancel first,
 * and wait for the runs: a run waiting for its source's ledger read ends when the read
 * answers). */
void runner_free(struct runner *rn);

/* A reloaded config: each source's reconfigure hook sees it; the next runs use it. */
void runner_set_config(struct runner *rn, const struct config *cfg);

/* Starts one run of job `job` (index into cfg->jobs). Returns 0, -EBUSY if that job is already
 * running, -ENODEV if its source is off (for a source with plans: has no API in `apis`), -EINVAL
 * for a bad index, -ENOMEM. `done` runs once on the loop thread when the run is over -- possibly
 * before runner_start returns. */
int runner_start(struct runner *rn, size_t job, runner_done_cb done, void *arg);

/* Cancels every run (shutdown): in-flight requests are cancelled, rows already emitted stay
 * emitted, and each run's done callback reports it. */
void runner_cancel(struct runner *rn);

/* Cancels the run of one job, if one is going (its lease was lost, cluster.h): as
 * runner_cancel for that run, with "lease lost" as its error. */
void runner_cancel_job(struct runner *rn, size_t job, const char *why);

/* The name job_runs rows carry in their `instance` column (copied; NULL or "": NULL). */
void runner_set_instance(struct runner *rn, const char *instance);

/* Another instance may have spent source s's month since it was read: the next request of the
 * source reads the month's count from api_usage again first (this instance has just taken over
 * the source's budget lease, cluster.h). Writes this instance's own count first. */
void runner_ledger_reread(struct runner *rn, size_t source);

/* Is a run of `job` going on? Is any? */
bool runner_running(const struct runner *rn, size_t job);
bool runner_any_running(const struct runner *rn);

/* The last summary of a job (zeroed, with its name, before its first run). */
const struct run_summary *runner_last(const struct runner *rn, size_t job);

/* Reads each source's month from api_usage now (rather than at its first request), so the
 * schedule can be fitted to it from the start. */
void runner_load_ledgers(struct runner *rn);

/* `cb(arg)` runs (on the loop thread) whenever what the schedule is fitted to changes: a
 * source's month was read, the API reported the account's credits, a month began. NULL: none. */
void runner_on_budget(struct runner *rn, void (*cb)(void *arg), void *arg);

/* The intervals the month's credits allow now: every_ms[j] for each job j of the config
 * (jobs of a source without monthly credits keep their configured interval; `every = auto`
 * jobs of such a source run at BUDGET_AUTO_MIN_MS). Fits what is left of the month
 * (monthly_credits - credit_reserve - used) to the time left of it, with each job's cost from
 * its last successful run (else requests_per_run). Returns true when some job runs less often
 * than configured. */
bool runner_plan_schedule(struct runner *rn, uint64_t now_wall_ms, uint64_t *every_ms);

/* What the API says about the account (struct account_info, source.h; GET /key for
 * CoinGecko's pro plan): replaces the plan's monthly credits unless the config sets them, and
 * raises the month's count when the API counted more (another client on the same key). The
 * rate limit is the API's business (api_update). Calls the budget callback. */
void runner_set_account(struct runner *rn, size_t source, const struct account_info *info);

/* Asks each source whose plan has an account_path (source.h) and that has a key what the
 * API says about the account, through its API (the attempts count in the ledger); the answer
 * goes to runner_set_account, and its rate limit resizes the API's bucket unless the config
 * sets rate_limit. A failure is logged and the plan's figures stay. Call at start and after
 * each reload (after runner_set_config and api_update). */
void runner_probe_accounts(struct runner *rn);

/* At a month's turn (UTC): every source whose ledger counts the month that ended starts the
 * new one (its count read back, the "spent" state gone) and the schedule is refitted, so that
 * jobs stretched for the old month's credits do not wait for their next tick. Returns the ms
 * until the next month begins, for the caller's timer. */
uint64_t runner_month_tick(struct runner *rn);

/* The same for source s alone (cluster mode: the instance that gains s's budget lease asks;
 * the others do not call the API at all). A probe already under way is left alone. */
void runner_probe_account(struct runner *rn, size_t s);

/* The monthly credits in force for a source (the config's, or the API's report). */
uint64_t runner_monthly_credits(const struct runner *rn, size_t source);

/* Prints the request budget the configuration implies per source (requests per minute and per
 * month per job, from each job's requests_per_run) against each source's limits; returns true
 * when everything fits. `universe_size` 0 estimates. out NULL logs instead. */
bool runner_print_budget(const struct config *cfg, uint64_t universe_size, FILE *out);

const char *run_status_name(enum run_status s);

/* ---- for job definitions ------------------------------------------------------------------ */

void *run_state(struct run *r);        /* the job's run_size bytes */
void *run_source_state(struct run *r); /* the source's shared state (state_new), or NULL */
const struct config *run_config(const struct run *r); /* the config the run started with */
const struct cfg_job *run_job(const struct run *r);
const struct cfg_source *run_source(const struct run *r);
const char *run_name(const struct run *r);
uint64_t run_started_ms(const struct run *r); /* wall ms */
bool run_cancelled(const struct run *r);

/* Sends GET base_url + path_query through the source's API at the job's priority. `parse`
 * (may be NULL) vets a 2xx body as in fetch.h; when it rejects one, the runner counts a parse
 * error (coingest_parse_errors_total{api,job}) and logs it, and the engine retries. `done`
 * runs once with the final result. Both callbacks get the run (struct run *) as their arg.
 * Before `done` runs, the runner has already counted the attempts and, for a
 * request that failed for good, recorded "GET path: reason" as the run's error (first one
 * wins) -- for FETCH_CANCELLED, run_cancelled() is true. One request at a time per run.
 * Returns 0, -ENOMEM, -ENODEV (a source without plans has no API), or -EDQUOT when the
 * source's monthly credits are used up (the request is not sent; it counts as failed,
 * "monthly credits exhausted: N of M used; requests resume on YYYY-MM-01" is the run's error,
 * logged once per run); no callback then. A request that waited for the month's count to be
 * read and is refused then ends through `done` instead, as a FETCH_HTTP_ERROR with status 0
 * and that error. */
int run_get(struct run *r, const char *path_query, fetch_parse_cb parse, fetch_done_cb done);

/* As run_get, with a limit on the body's size (0: only the source's max_body_size): what the
 * endpoint's answer can be, so a hostile or broken answer is refused before it is parsed. */
int run_get_limited(struct run *r, const char *path_query, size_t max_body, fetch_parse_cb parse,
                    fetch_done_cb done);

/* As run_get_limited, for one of several requests a run keeps in flight together (a page walk
 * with max_in_flight > 1): `parse` and `done` get `arg` instead of the run, and `done` runs
 * once for each request sent (also for one that waited for the month's count and is refused
 * then, and with FETCH_CANCELLED after runner_cancel). Any number may be in flight, beside a
 * run_get() one; the job must not finish the run before each has reported. run_handle_status
 * does not apply to them. Same returns as run_get_limited (no callback on an error). */
int run_get_tagged(struct run *r, const char *path_query, size_t max_body, fetch_parse_cb parse,
                   fetch_done_cb done, void *arg);

/* Makes a final answer with HTTP `status` (FETCH_HTTP_ERROR) to the next request sent with
 * run_get() the job's own business: the runner then neither counts that request as failed nor
 * records an error, and `done` decides what it means (a 414 the job answers by splitting the
 * request). Applies to that one request; the attempts still count in `requests`. */
void run_handle_status(struct run *r, long status);

/* Hands a batch to the store (which takes it); an empty batch is just freed. Counts the rows.
 * Returns 0, or -errno after recording an error when the store refused the rows. */
int run_emit(struct run *r, struct batch *b);

/* run_emit for n batches (NULL entries skipped) that belong together, e.g. the two tables one
 * page fills: the store takes them in one hand-over. Returns 0, or the first -errno. With a
 * store that accepts later (submit_async), the rows count (and a failure fails the run) when
 * the store reports, and run_finish waits for that. */
int run_emit_many(struct run *r, struct batch *const *bs, size_t n);

/* Reads through the store (see struct store); -ENOTSUP when the store cannot read. */
int run_read(struct run *r, const char *sql, const char *const *params, size_t nparams,
             size_t max_rows, store_read_cb cb, void *arg);

/* Runs fn(arg) off the loop thread and then done(arg) on it, through the store (struct store,
 * `work`). Returns 0, or -ENOTSUP when the store has no threads, or the store's -errno; then
 * neither callback runs. */
int run_work(struct run *r, void (*fn)(void *arg), void (*done)(void *arg), void *arg);

/* Records an error ("what: why"; the first one is kept). */
void run_fail(struct run *r, const char *what, const char *why);

/* Records a source error: the API answered, but what it said cannot be right (a page walk
 * that does not end, a coin list that lost most of its coins, no rows where rows were
 * expected). Counts coingest_source_errors_total{api,job,reason}, logs a warning with `what`
 * and `why`, and records the error as run_fail() does (so the run is partial, or failed when
 * no request succeeded). `reason` is a short label value from the job's source_errors. */
void run_source_error(struct run *r, const char *reason, const char *what, const char *why);

/* A request the job could not even send (its URL would be too long, out of memory): counts as
 * a failed request and records the error. */
void run_fail_request(struct run *r, const char *what, const char *why);

/* run_fail_request with why = the text of -errno `rc` ("out of memory" for -ENOMEM); -EDQUOT
 * (run_get refused the request, and recorded it and why) adds nothing. */
void run_fail_errno(struct run *r, const char *what, int rc);

/* Counts anomalies that are not errors (skipped elements, bad fields), as kind "other". */
void run_count(struct run *r, uint64_t n);

/* Requests the run's source can still spend this month beyond what its live jobs need for the
 * rest of it: the monthly credits in force (GET /key's on pro, unless configured) less the
 * reserve, less the month's projection on the schedule being run (the count so far plus the
 * fitted live jobs' requests to the month's end; backfill-priority jobs are outside the fit).
 * UINT64_MAX when the plan has no monthly cap; 0 once the API said the month is spent.
 * Backfill jobs send a request only while this is above 0, so they never take what the live
 * schedule needs. Until the month's count has been read (the source's first request waits
 * for it), the count is this process's own, so a backfill's first request may find out. */
uint64_t run_credits_spare(struct run *r);

/* True when the run may send a request now: always at live priority; at backfill priority
 * only while run_credits_spare is above 0 (else one warn line per run says the backfill
 * pauses). Backfill jobs ask before each request and end the pass, not fail, when it is
 * false: the next pass goes on from where this one stopped. */
bool run_may_spend(struct run *r);

/* Counts n anomalies of one kind (a static string: "missing_coins", "wrong_type_fields"; the
 * kinds are documented in docs/jobs.md, "What counted means"); n 0 is a no-op. `counted` in the
 * summary, the log and job_runs is the sum; job_runs.counted_detail and the log's
 * counted_detail say how much of each kind. */
void run_count_kind(struct run *r, const char *kind, uint64_t n);

/* The summary's counts by kind as a compact JSON object ({"missing_coins":3}) in buf; "{}" when
 * nothing was counted. Returns the length, or -ENOSPC when buf is too small. */
int run_counted_json(const struct run_summary *s, char *buf, size_t cap);

/* Ends the run (see above). The run and its state are gone when this returns. */
void run_finish(struct run *r);

#endif
