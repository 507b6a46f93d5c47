/*
 * ctest-labels: tsan
 * test_sink_crash: kill -9 with rows in the spool, then a restart replays them.
 *
 * The test forks a child process (before any thread or connection exists) that runs a real
 * sink against a database that is down (nothing listens on port 1), so every accepted row
 * ends in the spool. The child reports over a pipe how many rows are durably spooled, and the
 * parent kills it with SIGKILL: once when it sits idle with everything spooled, and once in
 * the middle of a stream of submissions, so the kill may tear the record being written. The
 * parent then starts its own sink on the same spool with the database up and checks that
 * every row the child reported as spooled is in the table exactly once. A third case appends
 * garbage to the newest segment before the restart: it is skipped with a warning and a count.
 *
 * test_kill_after_accept (issue 12, item 1) is the database-up case: a child like a daemon
 * right after a run (20,000 rows in 250-row pages with batch_rows 999 and a flush interval of
 * an hour, then the run's job_runs row) reports the rows sink_submit accepted and is killed at
 * once, three times over on the same spool; every accepted row and every job_runs row must be
 * in the database after a restart. Rows waiting in memory for the flush interval used to die
 * with the process.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/db.h"
#include "coingest/metrics.h"
#include "coingest/sink.h"
#include "coingest/timers.h"
#include "testdb.h"

#define PAGE 100

/* --- the child: a sink with the database down ---------------------------------------------- */

struct child {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    uv_timer_t tick;
    int fd;
    int next;
    int limit;      /* rows to submit; 0: forever */
    uint64_t acked; /* last count written to the pipe */
};

static struct batch *page(const char *prefix, int from, int n)
{
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, (uint32_t)n);
    for (int i = from; i < from + n; i++) {
        int r = batch_add_row(b);
        char id[64];
        int len = snprintf(id, sizeof(id), "%s-%07d", prefix, i);
        batch_set_str(b, (uint32_t)r, 0, id, (size_t)len);
        batch_set_str(b, (uint32_t)r, 1, "usd", 3);
        batch_set_str(b, (uint32_t)r, 2, "coingecko", 9);
        batch_set_time(b, (uint32_t)r, 3, 1739122947000);
        batch_set_dbl(b, (uint32_t)r, 5, 1e-11);
        batch_set_json(b, (uint32_t)r, 24, "{\"times\":2.5}", 13);
        batch_set_time(b, (uint32_t)r, 25, 1739122947000);
    }
    return b;
}

/* Every tick: report what is durably spooled; submit more while the limit allows. Rows held
 * in memory (before the sink gives up on the database) are not reported. */
static void on_tick(uv_timer_t *t)
{
    struct child *c = t->data;
    struct sink_stats st;
    sink_get_stats(c->s, &st);
    if (st.rows_spooled != c->acked) {
        c->acked = st.rows_spooled;
        if (write(c->fd, &c->acked, sizeof(c->acked)) != (ssize_t)sizeof(c->acked))
            _exit(5);
    }
    if (c->limit == 0 || c->next < c->limit) {
        if (sink_submit(c->s, page("crash", c->next, PAGE)) != 0)
            _exit(6);
        c->next += PAGE;
    }
}

static void child_main(const char *spool, int fd, int limit)
{
    alarm(120); /* never outlive a parent that failed */
    struct config *cfg = config_defaults();
    free(cfg->daemon.spool_dir);
    cfg->daemon.spool_dir = strdup(spool);
    free(cfg->database.host);
    cfg->database.host = strdup("127.0.0.1");
    cfg->database.port = 1;
    cfg->database.connect_timeout_ms = 1000;
    cfg->database.flush_interval_ms = 5;
    struct child c = {.fd = fd, .limit = limit};
    if (uv_loop_init(&c.loop) || !(c.timers = timers_new(&c.loop)) ||
        !(c.s = sink_new(&c.loop, c.timers, cfg)) || sink_start(c.s))
        _exit(2);
    uv_timer_init(&c.loop, &c.tick);
    c.tick.data = &c;
    uv_timer_start(&c.tick, on_tick, 1, 1);
    uv_run(&c.loop, UV_RUN_DEFAULT); /* until SIGKILL */
    _exit(3);
}

/* Forks the child and kills it once it reported at least `want` spooled rows. Returns the
 * last count it reported before the kill. */
static uint64_t run_and_kill(const char *spool, int limit, uint64_t want)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        child_main(spool, p[1], limit);
    }
    close(p[1]);
    uint64_t last = 0, v;
    while (last < want) {
        ssize_t n = read(p[0], &v, sizeof(v));
        if (n != (ssize_t)sizeof(v))
            fail_msg("child ended early (read %zd)", n);
        last = v;
    }
    assert_int_equal(kill(pid, SIGKILL), 0);
    /* Counts the child wrote before it died are durable too. */
    while (read(p[0], &v, sizeof(v)) == (ssize_t)sizeof(v))
        last = v;
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    return last;
}

/* --- a child with the database up: a run's rows, then kill -9 ------------------------------ */

#define RUN_ROWS 20000
#define RUN_PAGE 250

struct runner_child {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    int fd;
    int round;
};

static struct batch *job_run_row(int round)
{
    struct batch *b = batch_new(BATCH_JOB_RUNS, 1);
    int r = batch_add_row(b);
    batch_set_str(b, (uint32_t)r, 0, "prices", 6);
    batch_set_time(b, (uint32_t)r, 1, 1739122947000 + round * 2000);
    batch_set_time(b, (uint32_t)r, 2, 1739122947000 + round * 2000 + 900);
    batch_set_str(b, (uint32_t)r, 3, "ok", 2);
    batch_set_int(b, (uint32_t)r, 4, RUN_ROWS / RUN_PAGE);
    batch_set_int(b, (uint32_t)r, 5, RUN_ROWS);
    batch_set_int(b, (uint32_t)r, 6, 900);
    return b;
}

/* Once the database is reachable: the run's rows and its job_runs row, as a job submits them,
 * then the count of accepted rows (sink_submit returned 0) to the parent, which kills us. */
static void on_child_ready(void *arg)
{
    struct runner_child *c = arg;
    char prefix[32];
    snprintf(prefix, sizeof(prefix), "run%d", c->round);
    uint64_t accepted = 0;
    for (int i = 0; i < RUN_ROWS; i += RUN_PAGE)
        if (sink_submit(c->s, page(prefix, i, RUN_PAGE)) == 0)
            accepted += RUN_PAGE;
    if (sink_submit(c->s, job_run_row(c->round)) == 0)
        accepted += 1;
    if (write(c->fd, &accepted, sizeof(accepted)) != (ssize_t)sizeof(accepted))
        _exit(5);
}

static void runner_child_main(const char *spool, const char *db, int fd, int round)
{
    alarm(120);
    struct config *cfg = config_defaults();
    testdb_fill_config(cfg, db);
    free(cfg->daemon.spool_dir);
    cfg->daemon.spool_dir = strdup(spool);
    cfg->database.batch_rows = 999;
    cfg->database.flush_interval_ms = 3600000; /* partial tasks wait in memory */
    struct runner_child c = {.fd = fd, .round = round};
    if (uv_loop_init(&c.loop) || !(c.timers = timers_new(&c.loop)) ||
        !(c.s = sink_new(&c.loop, c.timers, cfg)) || sink_start(c.s))
        _exit(2);
    sink_on_ready(c.s, on_child_ready, &c);
    uv_run(&c.loop, UV_RUN_DEFAULT); /* until SIGKILL */
    _exit(3);
}

/* Runs one child round and kills it as soon as it reports; returns what it accepted. */
static uint64_t run_round_and_kill(const char *spool, const char *db, int round)
{
    int p[2];
    assert_int_equal(pipe(p), 0);
    fflush(NULL);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        close(p[0]);
        runner_child_main(spool, db, p[1], round);
    }
    close(p[1]);
    uint64_t accepted = 0;
    ssize_t n = read(p[0], &accepted, sizeof(accepted));
    kill(pid, SIGKILL);
    close(p[0]);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    if (n != (ssize_t)sizeof(accepted))
        fail_msg("child ended before reporting (read %zd, status %d)", n, status);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    return accepted;
}

/* --- the parent: restart with the database up ---------------------------------------------- */

struct parent {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    bool idle, stopped;
};

static void on_idle(void *arg)
{
    ((struct parent *)arg)->idle = true;
}

static void on_stopped(void *arg)
{
    ((struct parent *)arg)->stopped = true;
}

/* Starts a sink on `spool` against database `db`, waits until it is idle, stops it; its
 * final stats go to *out. */
static void restart_and_drain(const char *spool, const char *db, struct sink_stats *out)
{
    struct config *cfg = config_defaults();
    testdb_fill_config(cfg, db);
    free(cfg->daemon.spool_dir);
    cfg->daemon.spool_dir = strdup(spool);
    cfg->database.flush_interval_ms = 5;
    struct parent p = {0};
    assert_int_equal(uv_loop_init(&p.loop), 0);
    p.timers = timers_new(&p.loop);
    p.s = sink_new(&p.loop, p.timers, cfg);
    assert_non_null(p.s);
    assert_int_equal(sink_start(p.s), 0);
    sink_on_idle(p.s, on_idle, &p);
    while (!p.idle)
        uv_run(&p.loop, UV_RUN_ONCE);
    sink_get_stats(p.s, out);
    sink_shutdown(p.s, 5000, on_stopped, &p);
    while (!p.stopped)
        uv_run(&p.loop, UV_RUN_ONCE);
    sink_free(p.s);
    timers_free(p.timers);
    uv_run(&p.loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&p.loop), 0);
    config_free(cfg);
}

/* Counts segment files; puts the path of the newest (highest name) in `newest` if given. */
static int count_segments(const char *dir, char *newest, size_t cap)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    char best[256] = "";
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "spool-", 6) != 0)
            continue;
        n++;
        if (strcmp(de->d_name, best) > 0)
            snprintf(best, sizeof(best), "%s", de->d_name);
    }
    closedir(d);
    if (newest)
        snprintf(newest, cap, "%s/%s", dir, best);
    return n;
}

struct ctx {
    char spool[128];
    char db[128];
    MYSQL *admin;
};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    snprintf(c->spool, sizeof(c->spool), "/tmp/test_sink_crash.XXXXXX");
    if (!mkdtemp(c->spool))
        return -1;
    metrics_reset();
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (c->admin)
        testdb_drop(c->admin, c->db);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->spool);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", c->spool);
    free(c);
    return 0;
}

static void test_kill_idle(void **state)
{
    struct ctx *c = *state;
    /* 3000 rows, all spooled, then the child idles until killed. */
    uint64_t acked = run_and_kill(c->spool, 3000, 3000);
    assert_int_equal(acked, 3000);
    assert_true(count_segments(c->spool, NULL, 0) > 0);
    c->admin = testdb_create("test_sink_crash", c->db, sizeof(c->db));
    assert_non_null(c->admin);
    struct sink_stats st;
    restart_and_drain(c->spool, c->db, &st);
    assert_int_equal(st.rows_committed, 3000);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM market_snapshots"), 3000);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(DISTINCT asset_id) FROM"
                                             " market_snapshots"),
                     3000);
    assert_int_equal(count_segments(c->spool, NULL, 0), 0);
}

static void test_kill_mid_stream(void **state)
{
    struct ctx *c = *state;
    /* An endless stream; the kill lands while records are being appended. */
    uint64_t acked = run_and_kill(c->spool, 0, 5000);
    assert_true(acked >= 5000);
    c->admin = testdb_create("test_sink_crash", c->db, sizeof(c->db));
    assert_non_null(c->admin);
    struct sink_stats st;
    restart_and_drain(c->spool, c->db, &st);
    long long n = testdb_scalar(c->admin, "SELECT COUNT(*) FROM market_snapshots");
    fprintf(stderr, "test_kill_mid_stream: acknowledged %llu, replayed %lld\n",
            (unsigned long long)acked, n);
    /* Every acknowledged row arrived, each once; maybe a few more that were spooled after
     * the last report. */
    assert_true((uint64_t)n >= acked);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(DISTINCT asset_id) FROM"
                                             " market_snapshots"),
                     n);
    assert_int_equal(n % PAGE, 0); /* whole batches only */
    assert_int_equal(count_segments(c->spool, NULL, 0), 0);
}

static void test_corrupt_tail_skipped(void **state)
{
    struct ctx *c = *state;
    uint64_t acked = run_and_kill(c->spool, 2000, 2000);
    assert_int_equal(acked, 2000);
    char newest[512];
    assert_true(count_segments(c->spool, newest, sizeof(newest)) > 0);
    /* A torn write: half a record header and some bytes. */
    int fd = open(newest, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "CGSP\x40\x00\x00\x00garbage", 15), 15);
    close(fd);
    c->admin = testdb_create("test_sink_crash", c->db, sizeof(c->db));
    assert_non_null(c->admin);
    struct sink_stats st;
    restart_and_drain(c->spool, c->db, &st);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM market_snapshots"), 2000);
    assert_int_equal((int)metrics_get("coingest_spool_corrupt_records_total", ""), 1);
    assert_int_equal(count_segments(c->spool, NULL, 0), 0);
}

static void test_kill_after_accept(void **state)
{
    struct ctx *c = *state;
    c->admin = testdb_create("test_sink_crash", c->db, sizeof(c->db));
    assert_non_null(c->admin);
    uint64_t accepted = 0;
    for (int round = 0; round < 3; round++) {
        uint64_t a = run_round_and_kill(c->spool, c->db, round);
        fprintf(stderr,
                "test_kill_after_accept: round %d accepted %llu rows, %lld in the table "
                "at the kill\n",
                round, (unsigned long long)a,
                testdb_scalar(c->admin, "SELECT COUNT(*) FROM market_snapshots"));
        assert_int_equal(a, RUN_ROWS + 1); /* the database is up: everything is accepted */
        accepted += a;
    }
    struct sink_stats st;
    restart_and_drain(c->spool, c->db, &st);
    long long rows = testdb_scalar(c->admin, "SELECT COUNT(*) FROM market_snapshots");
    long long runs = testdb_scalar(c->admin, "SELECT COUNT(*) FROM job_runs");
    fprintf(stderr,
            "test_kill_after_accept: accepted %llu, in the database %lld rows + %lld runs\n",
            (unsigned long long)accepted, rows, runs);
    assert_int_equal(rows, 3 * RUN_ROWS);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(DISTINCT asset_id) FROM"
                                             " market_snapshots"),
                     3 * RUN_ROWS);
    assert_int_equal(runs, 3);
    assert_int_equal((uint64_t)(rows + runs), accepted);
    assert_int_equal(count_segments(c->spool, NULL, 0), 0);
}

int main(void)
{
    if (!testdb_available()) {
        fprintf(stderr, "test_sink_crash: no test database (COINGEST_TEST_DB_*); skipped\n");
        return TESTDB_SKIP;
    }
    if (db_library_init())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_kill_idle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_mid_stream, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_tail_skipped, setup, teardown),
        cmocka_unit_test_setup_teardown(test_kill_after_accept, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    db_library_end();
    return rc;
}
