/*
 * ctest-labels: tsan
 * test_sink_outage: MariaDB stopped for 10 s in the middle of a stream of 100,000 rows and
 * started again; afterwards every row is in the table exactly once.
 *
 * The test runs its own private server (scripts/mariadb-private in a directory of its own),
 * so stopping it disturbs no other test. The loop submits 250-row pages of market_snapshots
 * every 10 ms; once half the rows are submitted a controller thread stops the server, waits
 * 10 s and starts it again, while the stream goes on. Rows in flight when the server stops
 * are retried, rows submitted while it is away go to the spool, and the spool is replayed
 * when it is back. The test then waits for the sink to be idle (a condition, not a time) and
 * counts rows and distinct keys.
 *
 * Skipped (77) when no MariaDB server binary is installed. The 10 s pause is the scenario,
 * not a synchronisation: nothing passes or fails on timing.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
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

#define TOTAL_ROWS 100000
#define PAGE_ROWS  250
#define OUTAGE_S   10

static char srvdir[128];
static char script[1024];

struct t {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    struct config *cfg;
    char db[128];
    char spool[128];
    uv_timer_t feed, poll, watchdog;
    int submitted;
    bool outage_started;
    pthread_t ctl;
    atomic_bool outage_done;
    atomic_int ctl_rc;
    bool idle, stopped;
    uint64_t max_spooled;
};

static int server(const char *cmd)
{
    char line[2048];
    snprintf(line, sizeof(line), "'%s' %s '%s' >/dev/null", script, cmd, srvdir);
    return system(line);
}

static void *controller(void *arg)
{
    struct t *t = arg;
    int rc = server("stop");
    struct timespec ts = {.tv_sec = OUTAGE_S};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
    rc = rc ? rc : server("start");
    atomic_store(&t->ctl_rc, rc);
    atomic_store(&t->outage_done, true);
    return NULL;
}

static struct batch *page(int from)
{
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, PAGE_ROWS);
    for (int i = from; i < from + PAGE_ROWS; i++) {
        int r = batch_add_row(b);
        char id[32];
        int n = snprintf(id, sizeof(id), "asset-%06d", i);
        batch_set_str(b, (uint32_t)r, 0, id, (size_t)n);
        batch_set_str(b, (uint32_t)r, 1, "usd", 3);
        batch_set_str(b, (uint32_t)r, 2, "coingecko", 9);
        batch_set_time(b, (uint32_t)r, 3, 1739122947000);
        batch_set_int(b, (uint32_t)r, 4, i + 1);
        batch_set_dbl(b, (uint32_t)r, 5, 1e-11 * (i + 1));
        batch_set_dbl(b, (uint32_t)r, 16, 1.157920892373162e77);
        batch_set_time(b, (uint32_t)r, 25, 1739122947000);
    }
    return b;
}

static void on_feed(uv_timer_t *h)
{
    struct t *t = h->data;
    assert_int_equal(sink_submit(t->s, page(t->submitted)), 0);
    t->submitted += PAGE_ROWS;
    struct sink_stats st;
    sink_get_stats(t->s, &st);
    if (st.rows_spooled > t->max_spooled)
        t->max_spooled = st.rows_spooled;
    if (!t->outage_started && t->submitted >= TOTAL_ROWS / 2) {
        t->outage_started = true;
        assert_int_equal(pthread_create(&t->ctl, NULL, controller, t), 0);
    }
    if (t->submitted >= TOTAL_ROWS)
        uv_timer_stop(h);
}

static void on_poll(uv_timer_t *h)
{
    struct t *t = h->data;
    struct sink_stats st;
    sink_get_stats(t->s, &st);
    if (st.rows_spooled > t->max_spooled)
        t->max_spooled = st.rows_spooled;
}

static void on_watchdog(uv_timer_t *h)
{
    (void)h;
    fail_msg("test_sink_outage: watchdog fired");
}

static void on_idle(void *arg)
{
    ((struct t *)arg)->idle = true;
}

static void on_stopped(void *arg)
{
    ((struct t *)arg)->stopped = true;
}

static void test_outage(void **state)
{
    (void)state;
    struct t *t = calloc(1, sizeof(*t));
    MYSQL *admin = testdb_create("test_sink_outage", t->db, sizeof(t->db));
    assert_non_null(admin);
    snprintf(t->spool, sizeof(t->spool), "/tmp/test_sink_outage_spool.XXXXXX");
    assert_non_null(mkdtemp(t->spool));
    t->cfg = config_defaults();
    testdb_fill_config(t->cfg, t->db);
    free(t->cfg->daemon.spool_dir);
    t->cfg->daemon.spool_dir = strdup(t->spool);
    t->cfg->database.flush_interval_ms = 20;
    t->cfg->database.connect_timeout_ms = 2000;
    t->cfg->database.workers = 2;
    t->cfg->database.max_pending_rows = 20000;

    assert_int_equal(uv_loop_init(&t->loop), 0);
    t->timers = timers_new(&t->loop);
    t->s = sink_new(&t->loop, t->timers, t->cfg);
    assert_non_null(t->s);
    assert_int_equal(sink_start(t->s), 0);
    uv_timer_init(&t->loop, &t->feed);
    uv_timer_init(&t->loop, &t->poll);
    uv_timer_init(&t->loop, &t->watchdog);
    t->feed.data = t->poll.data = t;
    uv_timer_start(&t->watchdog, on_watchdog, 240000, 0);
    uv_timer_start(&t->feed, on_feed, 10, 10);
    uv_timer_start(&t->poll, on_poll, 50, 50);
    /* Until the whole stream is in and the server is back... */
    while (t->submitted < TOTAL_ROWS || !atomic_load(&t->outage_done))
        uv_run(&t->loop, UV_RUN_ONCE);
    pthread_join(t->ctl, NULL);
    assert_int_equal(atomic_load(&t->ctl_rc), 0);
    /* ...then until nothing is pending. */
    sink_on_idle(t->s, on_idle, t);
    while (!t->idle)
        uv_run(&t->loop, UV_RUN_ONCE);
    struct sink_stats st;
    sink_get_stats(t->s, &st);
    fprintf(stderr,
            "test_sink_outage: rows_committed=%llu batches=%llu max_spooled=%llu"
            " write_errors_connection=%.0f\n",
            (unsigned long long)st.rows_committed, (unsigned long long)st.batches_committed,
            (unsigned long long)t->max_spooled,
            metrics_get("coingest_write_errors_total", "reason=\"connection\""));
    assert_int_equal(st.rows_accepted, TOTAL_ROWS);
    assert_int_equal(st.rows_pending, 0);
    assert_true(t->max_spooled > 0); /* the spool carried rows through the outage */
    assert_true(st.rows_committed >= TOTAL_ROWS);

    /* The server restarted: a fresh connection for the checks. */
    mysql_close(admin);
    admin = testdb_connect(t->db);
    assert_non_null(admin);
    assert_int_equal(testdb_scalar(admin, "SELECT COUNT(*) FROM market_snapshots"), TOTAL_ROWS);
    assert_int_equal(testdb_scalar(admin, "SELECT COUNT(DISTINCT asset_id) FROM market_snapshots"),
                     TOTAL_ROWS);
    assert_int_equal(testdb_scalar(admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                          " market_cap_rank = CAST(SUBSTRING(asset_id, 7) AS"
                                          " UNSIGNED) + 1 AND total_supply ="
                                          " 1.157920892373162e77"),
                     TOTAL_ROWS);
    assert_int_equal(testdb_scalar(admin, "SELECT COUNT(*) FROM rejected_rows"), 0);

    sink_shutdown(t->s, 5000, on_stopped, t);
    while (!t->stopped)
        uv_run(&t->loop, UV_RUN_ONCE);
    sink_free(t->s);
    timers_free(t->timers);
    uv_close((uv_handle_t *)&t->feed, NULL);
    uv_close((uv_handle_t *)&t->poll, NULL);
    uv_close((uv_handle_t *)&t->watchdog, NULL);
    uv_run(&t->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&t->loop), 0);
    testdb_drop(admin, t->db);
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", t->spool);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", t->spool);
    config_free(t->cfg);
    free(t);
}

/* Starts the private server and puts its COINGEST_TEST_DB_* lines into the environment. */
static int start_private_server(void)
{
    char line[2048];
    snprintf(line, sizeof(line), "'%s' start '%s'", script, srvdir);
    FILE *p = popen(line, "r");
    if (!p)
        return -1;
    char buf[1024];
    while (fgets(buf, sizeof(buf), p)) {
        buf[strcspn(buf, "\n")] = '\0';
        char *eq = strchr(buf, '=');
        if (eq && strncmp(buf, "COINGEST_TEST_DB_", 17) == 0) {
            *eq = '\0';
            setenv(buf, eq + 1, 1);
        }
    }
    return pclose(p) == 0 ? 0 : -1;
}

int main(void)
{
    if (system("command -v mariadbd >/dev/null 2>&1 || test -x /usr/sbin/mariadbd || "
               "command -v mysqld >/dev/null 2>&1 || test -x /usr/sbin/mysqld") != 0) {
        fprintf(stderr, "test_sink_outage: no MariaDB server binary; skipped\n");
        return TESTDB_SKIP;
    }
    const char *src = getenv("COINGEST_SOURCE_DIR");
    snprintf(script, sizeof(script), "%s/scripts/mariadb-private", src ? src : ".");
    if (access(script, X_OK) != 0) {
        fprintf(stderr, "test_sink_outage: %s not found; skipped\n", script);
        return TESTDB_SKIP;
    }
    snprintf(srvdir, sizeof(srvdir), "/tmp/test_sink_outage_db.%ld", (long)getpid());
    if (start_private_server() != 0) {
        fprintf(stderr, "test_sink_outage: cannot start a private server in %s\n", srvdir);
        return 1;
    }
    if (db_library_init())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_outage),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    db_library_end();
    server("stop");
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", srvdir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", srvdir);
    return rc;
}
