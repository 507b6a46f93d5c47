/*
 * ctest-labels: tsan
 * test_sink: the sink end to end against a real MariaDB: a libuv loop, the real timers, the
 * writer threads and a spool in a temp directory.
 *
 * Round trip: for every UPSERT spec, rows whose values cover NULLs, 1e-11,
 * 1.157920892373162e77, emoji/CJK/4-byte UTF-8, quotes, backslashes, a NUL byte and
 * `x'); DROP TABLE assets; --` are written and read back through the binary protocol (so
 * doubles compare bit for bit); value kinds per column come from information_schema, so the
 * test follows the schema. Then: idempotent re-write (CHECKSUM TABLE unchanged), rejected
 * rows (the rest of the batch is written), the STATEMENT barrier with 4 writers and one row
 * per job, max_pending_rows overflow into the spool, a database that is down at startup, a
 * restart that replays the spool, and a hard shutdown that spools what is in flight;
 * sink_submit_many: the batches of one call (two tables, an empty one among them) cost one
 * spool fdatasync, are accepted together and all reach their tables; sink_submit_async: the
 * rows count as accepted only when its callback reports the sync (once, from the loop, never
 * inline), and a shutdown right after the call waits for that callback.
 *
 * Failures: a spool that refuses writes (a "full disk": RLIMIT_FSIZE makes writes past a size
 * fail with EFBIG) keeps rows in memory up to twice max_pending_rows and refuses, and counts
 * as lost, only the rest; a hard stop with a failing spool counts the rows left in memory; a
 * sink that never started stops its timers, so it can be freed after the timers facility; a
 * spool_dir held by another process fails sink_start with -EBUSY and the never-started sink
 * stops without crashing when its shutdown callback frees the timers (the daemon's order); a
 * stop while a migration waits on GET_LOCK cuts the wait off instead of sitting out its 120 s.
 *
 * Reads (sink_read): rows committed before a read are seen, with names and text values;
 * NULL parameters and cells; a long cell; -E2BIG, -EIO with the server's message, -EINVAL;
 * -ENOTCONN promptly with the database down; -ECANCELED for a queued and for a running read
 * at shutdown; a read that passes a write stuck on a row lock.
 *
 * Tests wait for conditions (sink_on_idle, the shutdown callback, a stats predicate checked on
 * a loop timer), never for a fixed time, and every wait has a deadline: past it the test fails
 * with a message naming what did not happen (not a CTest timeout). A watchdog timer is the
 * backstop for a test as a whole.
 */
#include <dirent.h>
#include <sys/stat.h>
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <uv.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/db.h"
#include "coingest/metrics.h"
#include "coingest/sink.h"
#include "coingest/spool.h"
#include "coingest/timers.h"
#include "coingest/util.h"
#include "coingest/wheel.h"
#include "testdb.h"

/* Every wait for the loop has a deadline that fails the test with a message naming what did
 * not happen (WAIT_MS unless the test says otherwise); the watchdog is the backstop for a
 * test as a whole. */
#define WAIT_MS     90000
#define WATCHDOG_MS 180000

struct h {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    struct config *cfg;
    char db[128];
    char spool[128];
    MYSQL *admin;
    uv_timer_t watchdog;
    uv_timer_t poll;
    bool (*pred)(struct h *);
    bool idle, stopped, ready, pred_met;
    const bool *flag; /* for flag_set() */
    void *user;       /* for a test's own predicate */
};

static void on_watchdog(uv_timer_t *t)
{
    (void)t;
    fail_msg("test_sink: watchdog fired (a wait never ended)");
}

static struct config *good_cfg(struct h *h)
{
    struct config *cfg = config_defaults();
    assert_non_null(cfg);
    testdb_fill_config(cfg, h->db);
    free(cfg->daemon.spool_dir);
    cfg->daemon.spool_dir = strdup(h->spool);
    cfg->database.flush_interval_ms = 5;
    cfg->database.connect_timeout_ms = 2000;
    cfg->database.workers = 3;
    return cfg;
}

/* A config whose server does not exist (nothing listens on port 1). */
static struct config *down_cfg(struct h *h)
{
    struct config *cfg = good_cfg(h);
    free(cfg->database.socket);
    cfg->database.socket = NULL;
    free(cfg->database.host);
    cfg->database.host = strdup("127.0.0.1");
    cfg->database.port = 1;
    return cfg;
}

static int setup(void **state)
{
    struct h *h = calloc(1, sizeof(*h));
    h->admin = testdb_create("test_sink", h->db, sizeof(h->db));
    if (!h->admin)
        return -1;
    snprintf(h->spool, sizeof(h->spool), "/tmp/test_sink.XXXXXX");
    if (!mkdtemp(h->spool))
        return -1;
    if (uv_loop_init(&h->loop))
        return -1;
    h->timers = timers_new(&h->loop);
    uv_timer_init(&h->loop, &h->watchdog);
    uv_timer_start(&h->watchdog, on_watchdog, WATCHDOG_MS, 0);
    uv_timer_init(&h->loop, &h->poll);
    h->cfg = good_cfg(h);
    metrics_reset();
    *state = h;
    return 0;
}

static void on_stopped(void *arg);
static bool run_until(struct h *h, bool (*pred)(struct h *), uint64_t ms);
static bool flag_set(struct h *h);

static int teardown(void **state)
{
    struct h *h = *state;
    struct rlimit rl;
    if (getrlimit(RLIMIT_FSIZE, &rl) == 0 && rl.rlim_cur != rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max; /* a test that failed with a "full disk" */
        setrlimit(RLIMIT_FSIZE, &rl);
    }
    if (h->s) {
        /* A test that failed with its sink running: stop it, or the loop never ends. */
        h->stopped = false;
        sink_shutdown(h->s, 0, on_stopped, h);
        sink_shutdown(h->s, 0, on_stopped, h);
        h->flag = &h->stopped;
        if (!run_until(h, flag_set, WAIT_MS)) {
            /* Its threads still run: freeing it would wait for them. Leave it. */
            fprintf(stderr, "test_sink: teardown: the sink did not stop within %d ms\n", WAIT_MS);
            return -1;
        }
        sink_free(h->s);
        h->s = NULL;
    }
    if (h->timers)
        timers_free(h->timers);
    uv_close((uv_handle_t *)&h->watchdog, NULL);
    uv_close((uv_handle_t *)&h->poll, NULL);
    /* Close callbacks need an iteration or two; a handle left open fails the test (below)
     * instead of blocking the run. */
    for (int i = 0; i < 10000 && uv_loop_alive(&h->loop); i++) {
        uv_run(&h->loop, UV_RUN_NOWAIT);
        usleep(1000);
    }
    int rc = uv_loop_close(&h->loop);
    if (rc)
        fprintf(stderr, "test_sink: teardown: a handle is still open\n");
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->spool);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", h->spool);
    testdb_drop(h->admin, h->db);
    config_free(h->cfg);
    free(h);
    return rc == 0 ? 0 : -1; /* every handle closed */
}

/* --- loop helpers ------------------------------------------------------------------------- */

static void on_idle(void *arg)
{
    ((struct h *)arg)->idle = true;
}

static void on_ready(void *arg)
{
    ((struct h *)arg)->ready = true;
}

static void on_stopped(void *arg)
{
    ((struct h *)arg)->stopped = true;
}

static void start_sink(struct h *h, const struct config *cfg)
{
    h->s = sink_new(&h->loop, h->timers, cfg);
    assert_non_null(h->s);
    assert_int_equal(sink_start(h->s), 0);
    h->ready = false;
    sink_on_ready(h->s, on_ready, h);
}

static void wait_flag(struct h *h, const bool *flag, uint64_t ms, const char *what);

static void wait_idle(struct h *h)
{
    h->idle = false;
    sink_on_idle(h->s, on_idle, h);
    wait_flag(h, &h->idle, WAIT_MS, "the sink to be idle (every row committed)");
}

static void on_poll(uv_timer_t *t)
{
    struct h *h = t->data;
    if (h->pred(h)) {
        h->pred_met = true;
        uv_timer_stop(t);
    }
}

/* Runs the loop until pred holds, checking it every 5 ms of loop time (so the loop never
 * blocks for longer, whatever sets the condition), for at most `ms` of loop time. Returns
 * whether it holds. */
static bool run_until(struct h *h, bool (*pred)(struct h *), uint64_t ms)
{
    h->pred = pred;
    h->pred_met = pred(h);
    h->poll.data = h;
    uv_update_time(&h->loop);
    uint64_t deadline = uv_now(&h->loop) + ms;
    if (!h->pred_met)
        uv_timer_start(&h->poll, on_poll, 5, 5);
    while (!h->pred_met && uv_now(&h->loop) < deadline)
        uv_run(&h->loop, UV_RUN_ONCE);
    uv_timer_stop(&h->poll);
    return h->pred_met;
}

/* run_until, failing the test with a message naming `what` when pred does not hold in time. */
static void wait_until(struct h *h, bool (*pred)(struct h *), uint64_t ms, const char *what)
{
    if (!run_until(h, pred, ms))
        fail_msg("test_sink: %s did not happen within %" PRIu64 " ms", what, ms);
}

static bool flag_set(struct h *h)
{
    return *h->flag;
}

/* Runs the loop until *flag is set, for at most ms (then the test fails, naming what). */
static void wait_flag(struct h *h, const bool *flag, uint64_t ms, const char *what)
{
    h->flag = flag;
    wait_until(h, flag_set, ms, what);
}

static void stop_sink(struct h *h, uint64_t timeout_ms)
{
    h->stopped = false;
    sink_shutdown(h->s, timeout_ms, on_stopped, h);
    wait_flag(h, &h->stopped, timeout_ms + WAIT_MS, "the shutdown callback");
    /* The stop leaves no sink timer behind (the harness itself uses only uv timers). */
    assert_int_equal(wheel_count(timers_wheel(h->timers)), 0);
    sink_free(h->s);
    h->s = NULL;
}

static int count_segments(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        /* A drained active segment is emptied and kept while the spool is open: only segments
         * holding records count. */
        if (strncmp(de->d_name, "spool-", 6) == 0 && fstatat(dirfd(d), de->d_name, &st, 0) == 0 &&
            st.st_size > 0)
            n++;
    }
    closedir(d);
    return n;
}

/* --- rows that follow the schema ---------------------------------------------------------- */

struct colinfo {
    char kind; /* s string, d double, i integer, t time, D date, j JSON */
    unsigned maxlen;
    bool nullable;
};

static void load_colinfo(MYSQL *m, const struct batch_spec *spec, struct colinfo *ci)
{
    for (uint16_t c = 0; c < spec->ncols; c++) {
        char sql[1024];
        snprintf(sql, sizeof(sql),
                 "SELECT DATA_TYPE, IFNULL(CHARACTER_MAXIMUM_LENGTH, 0), IS_NULLABLE = 'YES',"
                 " (SELECT COUNT(*) FROM information_schema.check_constraints k WHERE"
                 " k.constraint_schema = DATABASE() AND k.table_name = '%s' AND"
                 " k.check_clause LIKE '%%json_valid(`%s`)%%')"
                 " FROM information_schema.columns WHERE table_schema = DATABASE() AND"
                 " table_name = '%s' AND column_name = '%s'",
                 spec->table, spec->cols[c], spec->table, spec->cols[c]);
        assert_int_equal(mysql_query(m, sql), 0);
        MYSQL_RES *res = mysql_store_result(m);
        MYSQL_ROW row = mysql_fetch_row(res);
        if (!row)
            fail_msg("column %s.%s of spec %s is not in the schema", spec->table, spec->cols[c],
                     spec->name);
        const char *t = row[0];
        ci[c].maxlen = (unsigned)atoi(row[1]);
        ci[c].nullable = atoi(row[2]) != 0;
        if (strcmp(t, "json") == 0 || atoi(row[3]) > 0)
            ci[c].kind = 'j';
        else if (strcmp(t, "double") == 0)
            ci[c].kind = 'd';
        else if (strstr(t, "int"))
            ci[c].kind = 'i';
        else if (strcmp(t, "datetime") == 0)
            ci[c].kind = 't';
        else if (strcmp(t, "date") == 0)
            ci[c].kind = 'D'; /* written and read back as 'YYYY-MM-DD' text */
        else
            ci[c].kind = 's';
        mysql_free_result(res);
    }
}

/* The last one holds a NUL byte: strings are length-counted all the way. */
static const char str_nul[] = "O'Brien\\\\ \xc3\xa9 \x00nul ;-- /* */";
static const char *const strs[] = {
    "plain",
    "x'); DROP TABLE assets; --",
    "🚀 比特币 𝄞 ビットコイン \\ ' \" ` \n\t %_ \\0 \\'",
    str_nul,
};
static const double dbls[] = {0.0, 1e-11, 1.157920892373162e77, 0.30000000000000004};
static const int64_t ints[] = {0, 1, 4294967295, 42};
static const char *const jsons[] = {"null", "{\"a\":\"x'); DROP TABLE assets; --\"}",
                                    "[\"🚀\",\"\\\\\",1e-11,\"比特币\"]",
                                    "{\"nested\":{\"q\":\"O'Brien\"},\"n\":1.157920892373162e77}"};

static size_t str_len(int v)
{
    return v == 3 ? sizeof(str_nul) - 1 : strlen(strs[v]);
}

/* Cuts a UTF-8 string to at most max characters. */
static size_t cut_chars(const char *s, size_t len, unsigned max)
{
    size_t i = 0;
    unsigned n = 0;
    while (i < len && n < max) {
        unsigned char c = (unsigned char)s[i];
        size_t w = c < 0x80 ? 1 : c < 0xe0 ? 2 : c < 0xf0 ? 3 : 4;
        if (i + w > len)
            break;
        i += w;
        n++;
    }
    return i;
}

/* Row r of a spec with variant v (0: NULLs where allowed). tag keeps specs apart. */
static void gen_row(struct batch *b, const struct colinfo *ci, char tag, uint32_t r, int v)
{
    int row = batch_add_row(b);
    assert_true(row >= 0);
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        if (v == 0 && ci[c].nullable)
            continue;
        char buf[256];
        size_t n;
        switch (ci[c].kind) {
        case 's':
            n = (size_t)snprintf(buf, sizeof(buf), "%c%u ", tag, r);
            memcpy(buf + n, strs[v], str_len(v));
            n += str_len(v);
            n = cut_chars(buf, n, ci[c].maxlen ? ci[c].maxlen : 64);
            assert_int_equal(batch_set_str(b, (uint32_t)row, c, buf, n), 0);
            break;
        case 'j':
            assert_int_equal(batch_set_json(b, (uint32_t)row, c, jsons[v], strlen(jsons[v])), 0);
            break;
        case 'd':
            assert_int_equal(batch_set_dbl(b, (uint32_t)row, c, dbls[v]), 0);
            break;
        case 'i':
            batch_set_int(b, (uint32_t)row, c, ints[v]);
            break;
        case 'D': {
            /* A DATE column (indicators_daily.day) takes the day as text, as its writer sends
             * it; a day per row. */
            time_t day = (time_t)1739122947 + (time_t)r * 86400;
            struct tm tm;
            gmtime_r(&day, &tm);
            n = strftime(buf, sizeof(buf), "%Y-%m-%d", &tm);
            assert_int_equal(batch_set_str(b, (uint32_t)row, c, buf, n), 0);
            break;
        }
        default:
            batch_set_time(b, (uint32_t)row, c, 1739122947123 + (int64_t)r * 1000 + v * 7 + c);
            break;
        }
    }
}

static struct batch *gen_batch(const struct batch_spec *spec, const struct colinfo *ci, char tag,
                               uint32_t from, uint32_t n)
{
    struct batch *b = batch_new(spec->id, n);
    for (uint32_t r = from; r < from + n; r++)
        gen_row(b, ci, tag, r, (int)(r % 4));
    return b;
}

static int64_t time_ms(const MYSQL_TIME *t)
{
    struct tm tm = {.tm_year = (int)t->year - 1900,
                    .tm_mon = (int)t->month - 1,
                    .tm_mday = (int)t->day,
                    .tm_hour = (int)t->hour,
                    .tm_min = (int)t->minute,
                    .tm_sec = (int)t->second};
    return (int64_t)timegm(&tm) * 1000 + (int64_t)(t->second_part / 1000);
}

/* Reads every row of spec's table whose first column starts with tag through the binary
 * protocol and checks it against `expect` row by row, matching rows by all their values of
 * the key-ish columns (here simply: the first column, unique per generated row). */
static void verify(MYSQL *m, const struct batch *expect, const struct colinfo *ci, char tag)
{
    const struct batch_spec *spec = expect->spec;
    char sql[2048];
    int n = snprintf(sql, sizeof(sql), "SELECT ");
    for (uint16_t c = 0; c < spec->ncols; c++)
        n += snprintf(sql + n, sizeof(sql) - (size_t)n, "%s`%s`", c ? "," : "", spec->cols[c]);
    snprintf(sql + n, sizeof(sql) - (size_t)n, " FROM `%s` WHERE `%s` LIKE '%c%%'", spec->table,
             spec->cols[0], tag);
    MYSQL_STMT *st = mysql_stmt_init(m);
    assert_int_equal(mysql_stmt_prepare(st, sql, strlen(sql)), 0);
    assert_int_equal(mysql_stmt_execute(st), 0);
    uint16_t nc = spec->ncols;
    MYSQL_BIND *bind = calloc(nc, sizeof(*bind));
    double *d = calloc(nc, sizeof(double));
    int64_t *iv = calloc(nc, sizeof(int64_t));
    MYSQL_TIME *tv = calloc(nc, sizeof(MYSQL_TIME));
    char **sv = calloc(nc, sizeof(char *));
    unsigned long *len = calloc(nc, sizeof(unsigned long));
    my_bool *isnull = calloc(nc, sizeof(my_bool));
    for (uint16_t c = 0; c < nc; c++) {
        bind[c].is_null = &isnull[c];
        bind[c].length = &len[c];
        switch (ci[c].kind) {
        case 'd':
            bind[c].buffer_type = MYSQL_TYPE_DOUBLE;
            bind[c].buffer = &d[c];
            break;
        case 'i':
            bind[c].buffer_type = MYSQL_TYPE_LONGLONG;
            bind[c].buffer = &iv[c];
            break;
        case 't':
            bind[c].buffer_type = MYSQL_TYPE_DATETIME;
            bind[c].buffer = &tv[c];
            break;
        default:
            sv[c] = malloc(65536);
            bind[c].buffer_type = MYSQL_TYPE_STRING;
            bind[c].buffer = sv[c];
            bind[c].buffer_length = 65536;
            break;
        }
    }
    assert_int_equal(mysql_stmt_bind_result(st, bind), 0);
    assert_int_equal(mysql_stmt_store_result(st), 0);
    uint32_t seen = 0;
    bool *matched = calloc(expect->nrows, sizeof(bool));
    while (mysql_stmt_fetch(st) == 0) {
        seen++;
        /* Find the expected row by the first column. */
        int found = -1;
        for (uint32_t r = 0; r < expect->nrows && found < 0; r++) {
            const struct val *v = batch_val(expect, r, 0);
            if (!isnull[0] && v->len == len[0] && memcmp(v->u.s, sv[0], len[0]) == 0)
                found = (int)r;
        }
        if (found < 0)
            fail_msg("%s: unexpected row %.*s", spec->table, (int)len[0], sv[0]);
        assert_false(matched[found]);
        matched[found] = true;
        for (uint16_t c = 0; c < nc; c++) {
            const struct val *v = batch_val(expect, (uint32_t)found, c);
            if (v->type == VAL_NULL) {
                if (!isnull[c])
                    fail_msg("%s.%s row %d: expected NULL", spec->table, spec->cols[c], found);
                continue;
            }
            if (isnull[c])
                fail_msg("%s.%s row %d: unexpected NULL", spec->table, spec->cols[c], found);
            switch (v->type) {
            case VAL_DBL:
                if (memcmp(&d[c], &v->u.d, sizeof(double)) != 0)
                    fail_msg("%s.%s: %.17g came back as %.17g", spec->table, spec->cols[c], v->u.d,
                             d[c]);
                break;
            case VAL_INT:
                assert_true(iv[c] == v->u.i);
                break;
            case VAL_TIME:
                if (time_ms(&tv[c]) != v->u.i)
                    fail_msg("%s.%s: time %" PRId64 " came back as %" PRId64, spec->table,
                             spec->cols[c], v->u.i, time_ms(&tv[c]));
                break;
            default:
                if (len[c] != v->len || memcmp(sv[c], v->u.s, v->len) != 0)
                    fail_msg("%s.%s: '%.*s' came back as '%.*s'", spec->table, spec->cols[c],
                             (int)v->len, v->u.s, (int)len[c], sv[c]);
                break;
            }
        }
    }
    assert_int_equal(seen, expect->nrows);
    mysql_stmt_close(st);
    for (uint16_t c = 0; c < nc; c++)
        free(sv[c]);
    free(matched);
    free(bind);
    free(d);
    free(iv);
    free(tv);
    free(sv);
    free(len);
    free(isnull);
}

static void migrate_now(struct h *h)
{
    char err[1024];
    MYSQL *m = db_connect(&h->cfg->database, err, sizeof(err));
    assert_non_null(m);
    int rc = db_migrate(m, h->cfg->database.migrations_dir, err, sizeof(err));
    if (rc < 0)
        fail_msg("migrate: %s", err);
    mysql_close(m);
}

static long long checksum_table(struct h *h, const char *table)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "CHECKSUM TABLE `%s`", table);
    assert_int_equal(mysql_query(h->admin, sql), 0);
    MYSQL_RES *res = mysql_store_result(h->admin);
    MYSQL_ROW row = mysql_fetch_row(res);
    long long v = atoll(row[1]);
    mysql_free_result(res);
    return v;
}

/* --- tests -------------------------------------------------------------------------------- */

/* The server's count of executed prepared statements (COM_STMT_EXECUTE, which also counts
 * array-bound executions), for all sessions. */
static long long stmt_executions(struct h *h)
{
    return testdb_scalar(h->admin, "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS"
                                   " WHERE VARIABLE_NAME = 'COM_STMT_EXECUTE'");
}

/* Every upsert spec written with cfg and read back bit for bit, then written again unchanged. */
static void roundtrip(struct h *h, const struct config *cfg)
{
    double written0 = metrics_get("coingest_rows_written_total", "table=\"market_snapshots\"");
    start_sink(h, cfg);
    /* The sink migrates on its first connection; the schema is needed for colinfo. */
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    struct colinfo ci[BATCH_SPEC_COUNT][32];
    struct batch *expect[BATCH_SPEC_COUNT] = {0};
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        const struct batch_spec *spec = batch_spec((enum batch_spec_id)id);
        if (spec->kind != BATCH_KIND_UPSERT)
            continue;
        load_colinfo(h->admin, spec, ci[id]);
        char tag = (char)('A' + id);
        expect[id] = gen_batch(spec, ci[id], tag, 0, 40);
        /* Submit in uneven pieces so coalescing and splitting both happen. */
        for (uint32_t from = 0; from < 40; from += 7) {
            uint32_t n = 40 - from < 7 ? 40 - from : 7;
            assert_int_equal(sink_submit(h->s, gen_batch(spec, ci[id], tag, from, n)), 0);
        }
    }
    wait_idle(h);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_rejected, 0);
    assert_int_equal(st.rows_committed, st.rows_accepted);
    assert_int_equal(st.rows_pending, 0);
    assert_true(st.db_up);
    assert_true(st.schema_ready);
    long long sums[BATCH_SPEC_COUNT];
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        if (!expect[id])
            continue;
        verify(h->admin, expect[id], ci[id], (char)('A' + id));
        sums[id] = checksum_table(h, expect[id]->spec->table);
    }
    /* The injection attempt is a string like any other. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM assets WHERE name LIKE"
                                             " '%x''); DROP TABLE assets; --%'"),
                     20);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM assets WHERE platforms"
                                             " LIKE '%DROP TABLE%'"),
                     10);
    /* 40 rows per upsert spec of the table (CoinCap's spec writes market_snapshots too). */
    long long snapshot_specs = 0;
    for (int id = 0; id < BATCH_SPEC_COUNT; id++)
        snapshot_specs += expect[id] && strcmp(expect[id]->spec->table, "market_snapshots") == 0;
    assert_int_equal(
        (long long)(metrics_get("coingest_rows_written_total", "table=\"market_snapshots\"") -
                    written0),
        40 * snapshot_specs);

    /* Writing the same rows again changes nothing. */
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        if (!expect[id])
            continue;
        char tag = (char)('A' + id);
        assert_int_equal(sink_submit(h->s, gen_batch(expect[id]->spec, ci[id], tag, 0, 40)), 0);
    }
    wait_idle(h);
    for (int id = 0; id < BATCH_SPEC_COUNT; id++) {
        if (!expect[id])
            continue;
        verify(h->admin, expect[id], ci[id], (char)('A' + id));
        assert_int_equal(checksum_table(h, expect[id]->spec->table), sums[id]);
    }
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM rejected_rows"), 0);
    stop_sink(h, 5000);
    for (int id = 0; id < BATCH_SPEC_COUNT; id++)
        batch_free(expect[id]);
    assert_int_equal(count_segments(h->spool), 0);
}

/* The default: binary writes (array binding), so the server executes prepared statements. */
static void test_roundtrip_every_spec(void **state)
{
    struct h *h = *state;
    long long before = stmt_executions(h);
    roundtrip(h, h->cfg);
    assert_true(stmt_executions(h) > before);
}

/* binary_writes = false: the SQL text path (the one a MySQL server gets) keeps every value. */
static void test_roundtrip_text_path(void **state)
{
    struct h *h = *state;
    struct config *cfg = good_cfg(h);
    cfg->database.binary_writes = false;
    roundtrip(h, cfg);
    config_free(cfg);
}

/* batch_bytes at its minimum: every task takes many executions (binary) or statements (text),
 * and nothing is lost or changed at the cuts. */
static void test_roundtrip_small_statements(void **state)
{
    struct h *h = *state;
    for (int binary = 0; binary < 2; binary++) {
        struct config *cfg = good_cfg(h);
        cfg->database.batch_bytes = 1024;
        cfg->database.binary_writes = binary;
        roundtrip(h, cfg);
        config_free(cfg);
    }
}

/* Times through the binary path (MYSQL_TIME computed without gmtime_r) land as the text
 * path's literal says: the epoch, leap days, year ends, 2100 (not a leap year), 9999. */
static void test_binary_times(void **state)
{
    struct h *h = *state;
    start_sink(h, h->cfg);
    static const int64_t ms[] = {
        0,               /* 1970-01-01 00:00:00.000 */
        951868799999,    /* 2000-02-29 23:59:59.999 */
        951868800000,    /* 2000-03-01 */
        1709164800001,   /* 2024-02-29 00:00:00.001 */
        1735689599999,   /* 2024-12-31 23:59:59.999 */
        4107542400000,   /* 2100-03-01 (2100-02-28 the day before) */
        4107456000000,   /* 2100-02-28 */
        253402300799999, /* 9999-12-31 23:59:59.999 */
        1739122947123,   /* 2025-02-09 17:42:27.123 */
    };
    size_t n = sizeof(ms) / sizeof(ms[0]);
    struct batch *b = batch_new(BATCH_PRICES, (uint32_t)n);
    for (size_t i = 0; i < n; i++) {
        int row = batch_add_row(b);
        assert_true(row >= 0);
        char id[32];
        int len = snprintf(id, sizeof(id), "time-%zu", i);
        assert_int_equal(
            batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_ASSET_ID, id, (size_t)len), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_VS_CURRENCY, "usd", 3),
                         0);
        assert_int_equal(batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_SOURCE, "test", 4), 0);
        batch_set_time(b, (uint32_t)row, BATCH_PRICES_COL_SOURCE_UPDATED_AT, ms[i]);
        batch_set_time(b, (uint32_t)row, BATCH_PRICES_COL_FETCHED_AT, ms[i]);
    }
    assert_int_equal(sink_submit(h->s, b), 0);
    wait_idle(h);
    stop_sink(h, 5000);
    for (size_t i = 0; i < n; i++) {
        char text[40], sql[256];
        db_format_time(ms[i], text, sizeof(text));
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM prices WHERE asset_id = 'time-%zu' AND source_updated_at = "
                 "'%s' AND fetched_at = '%s'",
                 i, text, text);
        if (testdb_scalar(h->admin, sql) != 1)
            fail_msg("%" PRId64 " ms did not land as %s", ms[i], text);
    }
}

/* One DOUBLE column that holds integers, doubles and NULLs in turn within one task: the
 * binary path starts a new execution where a column's type changes, and each value lands as
 * the text path would store it (an integer as its exact double). */
static void test_binary_mixed_column_types(void **state)
{
    struct h *h = *state;
    start_sink(h, h->cfg);
    const double dbl = 0.30000000000000004;
    struct batch *b = batch_new(BATCH_PRICES, 64);
    for (uint32_t r = 0; r < 60; r++) {
        int row = batch_add_row(b);
        assert_true(row >= 0);
        char id[32];
        int n = snprintf(id, sizeof(id), "mix-%02u", r);
        assert_int_equal(batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_ASSET_ID, id, (size_t)n),
                         0);
        assert_int_equal(batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_VS_CURRENCY, "usd", 3),
                         0);
        assert_int_equal(batch_set_str(b, (uint32_t)row, BATCH_PRICES_COL_SOURCE, "test", 4), 0);
        batch_set_time(b, (uint32_t)row, BATCH_PRICES_COL_SOURCE_UPDATED_AT, 1739122947123);
        batch_set_time(b, (uint32_t)row, BATCH_PRICES_COL_FETCHED_AT, 1739122947999);
        /* runs of 1, 2 and 3 rows of each kind */
        switch ((r / (1 + r % 3)) % 3) {
        case 0:
            batch_set_int(b, (uint32_t)row, BATCH_PRICES_COL_PRICE, 9007199254740991);
            break;
        case 1:
            assert_int_equal(batch_set_dbl(b, (uint32_t)row, BATCH_PRICES_COL_PRICE, dbl), 0);
            break;
        default:
            break; /* NULL */
        }
    }
    struct batch *expect = batch_new(BATCH_PRICES, 64);
    assert_int_equal(batch_append(expect, b), 0);
    assert_int_equal(sink_submit(h->s, b), 0);
    wait_idle(h);
    stop_sink(h, 5000);
    for (uint32_t r = 0; r < expect->nrows; r++) {
        const struct val *id = batch_val(expect, r, BATCH_PRICES_COL_ASSET_ID);
        const struct val *v = batch_val(expect, r, BATCH_PRICES_COL_PRICE);
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM prices WHERE asset_id = '%.*s' AND price %s", (int)id->len,
                 id->u.s,
                 v->type == VAL_NULL  ? "IS NULL"
                 : v->type == VAL_INT ? "= 9007199254740991e0"
                                      : "= 0.30000000000000004e0");
        if (testdb_scalar(h->admin, sql) != 1)
            fail_msg("row %u: %s", r, sql);
    }
    batch_free(expect);
}

static void add_asset(struct batch *b, const char *id, const char *name, size_t name_len,
                      const char *platforms, int64_t listed_at)
{
    int r = batch_add_row(b);
    assert_true(r >= 0);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, id, strlen(id)), 0);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 1, "sym", 3), 0);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 2, name, name_len), 0);
    if (platforms)
        assert_int_equal(batch_set_json(b, (uint32_t)r, 3, platforms, strlen(platforms)), 0);
    batch_set_time(b, (uint32_t)r, 4, listed_at);
    batch_set_time(b, (uint32_t)r, 5, listed_at);
    batch_set_time(b, (uint32_t)r, 6, listed_at);
}

static void test_rejected_rows(void **state)
{
    struct h *h = *state;
    start_sink(h, h->cfg);
    char *longname = malloc(600);
    memset(longname, 'n', 600);
    struct batch *b = batch_new(BATCH_ASSETS_LIST, 50);
    for (int i = 0; i < 50; i++) {
        char id[32];
        snprintf(id, sizeof(id), "coin-%02d", i);
        if (i == 10)
            add_asset(b, id, longname, 600, NULL, 1739122947000); /* VARCHAR(512) */
        else if (i == 33)
            add_asset(b, id, "bad json", 8, "{\"eth\": ", 1739122947000);
        else
            add_asset(b, id, "fine", 4, "{\"ethereum\":\"0xabc\"}", 1739122947000);
    }
    free(longname);
    assert_int_equal(sink_submit(h->s, b), 0);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM assets"), 48);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM assets WHERE id IN"
                                             " ('coin-10', 'coin-33')"),
                     0);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM rejected_rows"), 2);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM rejected_rows WHERE"
                                             " table_name = 'assets' AND JSON_VALID(row_json)"
                                             " AND JSON_VALUE(row_json, '$.id') = 'coin-10'"
                                             " AND error LIKE '%too long%'"),
                     1);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM rejected_rows WHERE"
                                             " JSON_VALUE(row_json, '$.id') = 'coin-33'"
                                             " AND JSON_VALUE(row_json, '$.platforms') ="
                                             " '{\"eth\": '"),
                     1);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_rejected, 2);
    assert_int_equal(st.rows_committed, 48);
    assert_int_equal((int)metrics_get("coingest_rejected_rows_total", "table=\"assets\""), 2);
    stop_sink(h, 5000);
}

static void test_statement_barrier(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 4;
    h->cfg->database.batch_rows = 1;
    start_sink(h, h->cfg);
    const int64_t t0 = 1739122947000;
    for (int round = 0; round < 3; round++) {
        /* Before the barrier: listed at t0 (older than listed_before): must be delisted. */
        for (int i = 0; i < 20; i++) {
            struct batch *b = batch_new(BATCH_ASSETS_LIST, 1);
            char id[32];
            snprintf(id, sizeof(id), "pre-%d-%02d", round, i);
            add_asset(b, id, "pre", 3, NULL, t0);
            assert_int_equal(sink_submit(h->s, b), 0);
        }
        struct batch *d = batch_new(BATCH_ASSETS_DELIST, 1);
        int r = batch_add_row(d);
        batch_set_time(d, (uint32_t)r, 0, t0 + 5000 + round); /* delisted_at */
        batch_set_time(d, (uint32_t)r, 1, t0 + 1);            /* listed_before */
        assert_int_equal(sink_submit(h->s, d), 0);
        /* After the barrier: also old, but written after the statement: stays listed. */
        for (int i = 0; i < 20; i++) {
            struct batch *b = batch_new(BATCH_ASSETS_LIST, 1);
            char id[32];
            snprintf(id, sizeof(id), "post-%d-%02d", round, i);
            add_asset(b, id, "post", 4, NULL, t0 - 1000);
            assert_int_equal(sink_submit(h->s, b), 0);
        }
        wait_idle(h);
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM assets WHERE id LIKE 'pre-%d-%%' AND delisted_at ="
                 " FROM_UNIXTIME(%" PRId64 " / 1000)",
                 round, t0 + 5000 + round);
        assert_int_equal(testdb_scalar(h->admin, sql), 20);
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM assets WHERE id LIKE 'post-%d-%%' AND delisted_at IS NULL",
                 round);
        assert_int_equal(testdb_scalar(h->admin, sql), 20);
    }
    stop_sink(h, 5000);
}

static bool all_spooled(struct h *h)
{
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    return st.rows_spooled == st.rows_accepted && st.rows_accepted > 0;
}

static struct batch *snapshots(const char *prefix, int from, int n)
{
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, (uint32_t)n);
    for (int i = from; i < from + n; i++) {
        int r = batch_add_row(b);
        char id[64];
        int len = snprintf(id, sizeof(id), "%s-%06d", prefix, i);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 0, id, (size_t)len), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 1, "usd", 3), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 2, "coingecko", 9), 0);
        batch_set_time(b, (uint32_t)r, 3, 1739122947000 + i);
        batch_set_int(b, (uint32_t)r, 4, i);
        batch_set_dbl(b, (uint32_t)r, 5, 1e-11 * (i + 1));
        batch_set_time(b, (uint32_t)r, 25, 1739122947000);
    }
    return b;
}

static void test_db_down_at_start(void **state)
{
    struct h *h = *state;
    struct config *down = down_cfg(h);
    start_sink(h, down);
    for (int i = 0; i < 10; i++)
        assert_int_equal(sink_submit(h->s, snapshots("down", i * 100, 100)), 0);
    /* The first connection fails; after the grace period everything is in the spool. */
    wait_until(h, all_spooled, WAIT_MS, "every row in the spool");
    assert_false(h->ready);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_false(st.db_up);
    assert_int_equal(st.rows_committed, 0);
    /* When the outage began, for /healthz: the first failed connection. */
    assert_true(st.db_down_since_mono_ms > 0 && st.db_down_since_mono_ms <= util_mono_ms());
    assert_true(util_mono_ms() - st.db_down_since_mono_ms >= 1000); /* the spill waited 1 s */
    assert_false(st.spool_failing);
    assert_true(count_segments(h->spool) > 0);
    /* Rows that arrive now go straight to the spool. */
    assert_int_equal(sink_submit(h->s, snapshots("down", 1000, 50)), 0);
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_spooled, 1050);
    /* The database "comes back": the writers reconnect, migrate, replay. */
    sink_reconfigure(h->s, h->cfg);
    wait_idle(h);
    assert_true(h->ready);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 1050);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(DISTINCT asset_id) FROM"
                                             " market_snapshots"),
                     1050);
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_spooled, 0);
    assert_int_equal(st.rows_committed, 1050);
    assert_int_equal(st.db_down_since_mono_ms, 0);
    assert_int_equal(count_segments(h->spool), 0);
    stop_sink(h, 5000);
    config_free(down);
}

/* The loss and rejection counters are on /metrics at 0 once the sink started, before any
 * event, so an alert on increase() sees the first one. */
static void test_counters_exist_at_zero(void **state)
{
    struct h *h = *state;
    start_sink(h, h->cfg);
    size_t len;
    char *text = metrics_render(&len);
    assert_non_null(text);
    static const char *const want[] = {
        "coingest_rows_lost_total{reason=\"spool\"} 0\n",
        "coingest_rows_lost_total{reason=\"memory\"} 0\n",
        "coingest_rows_lost_total{reason=\"shutdown\"} 0\n",
        "coingest_rejected_rows_total{table=\"market_snapshots\"} 0\n",
        "coingest_rejected_rows_total{table=\"assets\"} 0\n",
        "coingest_rejected_rows_total{table=\"job_runs\"} 0\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (!strstr(text, want[i]))
            fail_msg("/metrics lacks %s", want[i]);
    free(text);
    stop_sink(h, 5000);
}

static void test_restart_replays_spool(void **state)
{
    struct h *h = *state;
    struct config *down = down_cfg(h);
    start_sink(h, down);
    for (int i = 0; i < 5; i++)
        assert_int_equal(sink_submit(h->s, snapshots("restart", i * 300, 300)), 0);
    wait_until(h, all_spooled, WAIT_MS, "every row in the spool");
    stop_sink(h, 1000);
    config_free(down);
    assert_true(count_segments(h->spool) > 0);
    /* A new process: same spool, a database that is up. */
    start_sink(h, h->cfg);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_spooled, 1500);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                             " asset_id LIKE 'restart-%'"),
                     1500);
    assert_int_equal(count_segments(h->spool), 0);
    stop_sink(h, 5000);
}

static void test_max_pending_overflow(void **state)
{
    struct h *h = *state;
    h->cfg->database.max_pending_rows = 300;
    h->cfg->database.batch_rows = 100;
    start_sink(h, h->cfg);
    bool spooled = false;
    for (int i = 0; i < 40; i++) {
        assert_int_equal(sink_submit(h->s, snapshots("pending", i * 50, 50)), 0);
        struct sink_stats st;
        sink_get_stats(h->s, &st);
        spooled = spooled || st.rows_spooled > 0;
        assert_true(st.rows_pending - st.rows_spooled <= 300);
    }
    assert_true(spooled);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 2000);
    /* Replay kept every row once and in order: the snapshot rank grows with the id. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(DISTINCT asset_id) FROM"
                                             " market_snapshots"),
                     2000);
    stop_sink(h, 5000);
}

static void test_last_write_wins(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 4;
    h->cfg->database.batch_rows = 3;
    h->cfg->database.max_pending_rows = 40;
    start_sink(h, h->cfg);
    /* The same 10 categories renamed 200 times, through memory and the spool: the last name
     * must win, which only holds if rows of one key are written in submission order. */
    for (int gen = 0; gen < 200; gen++) {
        struct batch *b = batch_new(BATCH_CATEGORIES, 10);
        for (int i = 0; i < 10; i++) {
            int r = batch_add_row(b);
            char id[16], name[32];
            snprintf(id, sizeof(id), "cat-%d", i);
            int n = snprintf(name, sizeof(name), "gen-%03d", gen);
            assert_int_equal(batch_set_str(b, (uint32_t)r, 0, id, strlen(id)), 0);
            assert_int_equal(batch_set_str(b, (uint32_t)r, 1, name, (size_t)n), 0);
            batch_set_time(b, (uint32_t)r, 2, 1739122947000 + gen);
        }
        assert_int_equal(sink_submit(h->s, b), 0);
    }
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM categories WHERE"
                                             " name = 'gen-199'"),
                     10);
    stop_sink(h, 5000);
}

/* A categories batch of n rows named "<prefix>-<i>". */
static struct batch *categories_batch(const char *prefix, int n)
{
    struct batch *b = batch_new(BATCH_CATEGORIES, (uint32_t)n);
    assert_non_null(b);
    for (int i = 0; i < n; i++) {
        int r = batch_add_row(b);
        char id[32];
        int len = snprintf(id, sizeof(id), "%s-%d", prefix, i);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 0, id, (size_t)len), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 1, id, (size_t)len), 0);
        batch_set_time(b, (uint32_t)r, 2, 1739122947000);
    }
    return b;
}

/* Starts the sink on h->cfg, waits until the migrations' rows are in, and takes the stats. */
static void start_settled(struct h *h, struct sink_stats *before)
{
    start_sink(h, h->cfg);
    wait_idle(h);
    sink_get_stats(h->s, before);
}

static void test_submit_many_one_sync(void **state)
{
    struct h *h = *state;
    struct sink_stats before, after;
    start_settled(h, &before);
    /* Two tables and an empty batch between them: one hand-over, one sync. */
    struct batch *asset = batch_new(BATCH_ASSETS_MARKET, 4);
    assert_non_null(asset);
    for (int i = 0; i < 4; i++) {
        int r = batch_add_row(asset);
        char id[32];
        int len = snprintf(id, sizeof(id), "many-%d", i);
        assert_int_equal(
            batch_set_str(asset, (uint32_t)r, BATCH_ASSETS_MARKET_COL_ID, id, (size_t)len), 0);
        batch_set_time(asset, (uint32_t)r, BATCH_ASSETS_MARKET_COL_FIRST_SEEN_AT, 1739122947000);
        batch_set_time(asset, (uint32_t)r, BATCH_ASSETS_MARKET_COL_UPDATED_AT, 1739122947000);
    }
    struct batch *bs[] = {categories_batch("many", 5), batch_new(BATCH_PRICES, 1), NULL, asset};
    uint64_t accepted = 0;
    assert_int_equal(sink_submit_many(h->s, bs, 4, &accepted), 0);
    assert_int_equal(accepted, 9);
    sink_get_stats(h->s, &after);
    assert_int_equal(after.spool_syncs - before.spool_syncs, 1);
    assert_int_equal(after.rows_accepted - before.rows_accepted, 9);
    /* A call whose last batch is empty still syncs what came before it. */
    struct batch *tail[] = {categories_batch("tail", 3), batch_new(BATCH_PRICES, 1)};
    assert_int_equal(sink_submit_many(h->s, tail, 2, &accepted), 0);
    assert_int_equal(accepted, 3);
    struct sink_stats last;
    sink_get_stats(h->s, &last);
    assert_int_equal(last.spool_syncs - after.spool_syncs, 1);
    assert_int_equal(last.rows_accepted - after.rows_accepted, 3);
    /* sink_submit keeps one sync per batch. */
    assert_int_equal(sink_submit(h->s, categories_batch("one", 2)), 0);
    assert_int_equal(sink_submit(h->s, categories_batch("two", 2)), 0);
    sink_get_stats(h->s, &after);
    assert_int_equal(after.spool_syncs - last.spool_syncs, 2);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM categories WHERE"
                                             " id LIKE 'many-%'"),
                     5);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM categories WHERE"
                                             " id LIKE 'tail-%'"),
                     3);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM assets WHERE id LIKE 'many-%'"),
                     4);
    stop_sink(h, 5000);
}

struct accepted {
    int calls, rc;
    uint64_t rows;          /* the callback's count of accepted rows */
    uint64_t accepted_then; /* rows_accepted when the callback ran */
    struct sink *s;
    bool stopped_first; /* the shutdown callback had run already */
    const bool *stopped;
};

static void on_accepted(int rc, uint64_t rows, void *arg)
{
    struct accepted *a = arg;
    a->calls++;
    a->rc = rc;
    a->rows = rows;
    struct sink_stats st;
    sink_get_stats(a->s, &st);
    a->accepted_then = st.rows_accepted;
    a->stopped_first = a->stopped && *a->stopped;
}

static bool accepted_once(struct h *h)
{
    return ((struct accepted *)h->user)->calls > 0;
}

static bool late_rows_committed(struct h *h)
{
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    return st.rows_committed >= ((struct sink_stats *)h->user)->rows_committed + 13;
}

static bool flag_never(struct h *h)
{
    (void)h;
    return false;
}

/* Holds libuv's thread pool (one thread in this program) until released. */
struct blocker {
    uv_work_t w;
    uv_sem_t sem;
    bool done;
};

static void blocker_work(uv_work_t *w)
{
    uv_sem_wait(&((struct blocker *)w->data)->sem);
}

static void blocker_done(uv_work_t *w, int status)
{
    (void)status;
    struct blocker *k = w->data;
    uv_sem_destroy(&k->sem);
    k->done = true;
}

static void blocker_start(struct h *h, struct blocker *k)
{
    k->done = false;
    k->w.data = k;
    assert_int_equal(uv_sem_init(&k->sem, 0), 0);
    assert_int_equal(uv_queue_work(&h->loop, &k->w, blocker_work, blocker_done), 0);
}

static void blocker_release(struct blocker *k)
{
    uv_sem_post(&k->sem);
}

static void test_submit_async(void **state)
{
    struct h *h = *state;
    struct sink_stats before, now;
    start_settled(h, &before);
    struct accepted a = {.s = h->s};
    struct batch *bs[] = {categories_batch("async", 6), categories_batch("async2", 4)};
    assert_int_equal(sink_submit_async(h->s, bs, 2, on_accepted, &a, NULL), 0);
    sink_get_stats(h->s, &now);
    assert_int_equal(a.calls, 0); /* never inline */
    assert_int_equal(now.rows_accepted, before.rows_accepted);
    h->user = &a;
    wait_until(h, accepted_once, WAIT_MS, "the acceptance callback");
    assert_int_equal(a.rc, 0);
    assert_int_equal(a.rows, 10);
    assert_int_equal(a.accepted_then - before.rows_accepted, 10);
    sink_get_stats(h->s, &now);
    assert_int_equal(now.spool_syncs - before.spool_syncs, 1);
    wait_idle(h);
    assert_int_equal(a.calls, 1);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM categories WHERE"
                                             " id LIKE 'async%'"),
                     10);
    /* A shutdown waits for a sync under way. The pool's only thread (UV_THREADPOOL_SIZE=1,
     * set in main) is held by a blocker, so the sync cannot run: the writers commit the rows
     * and exit, and the shutdown still does not complete until the blocker lets the sync go. */
    struct blocker k;
    blocker_start(h, &k);
    struct accepted b = {.s = h->s, .stopped = &h->stopped};
    struct batch *more[] = {categories_batch("late", 3)};
    assert_int_equal(sink_submit_async(h->s, more, 1, on_accepted, &b, NULL), 0);
    h->stopped = false;
    sink_shutdown(h->s, 5000, on_stopped, h);
    h->user = &before;
    wait_until(h, late_rows_committed, WAIT_MS, "the late rows to commit");
    run_until(h, flag_never, 300); /* time for the writers to exit: the stop must not finish */
    assert_false(h->stopped);
    assert_int_equal(b.calls, 0);
    blocker_release(&k);
    wait_flag(h, &h->stopped, WAIT_MS, "the shutdown callback after the sync");
    assert_int_equal(b.calls, 1);
    assert_int_equal(b.rc, 0);
    assert_int_equal(b.rows, 3);
    assert_false(b.stopped_first);
    assert_true(k.done);
    sink_free(h->s);
    h->s = NULL;
}

static void test_hard_shutdown_spools(void **state)
{
    struct h *h = *state;
    h->cfg->database.batch_rows = 50;
    h->cfg->database.max_pending_rows = 1000000;
    start_sink(h, h->cfg);
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    for (int i = 0; i < 100; i++)
        assert_int_equal(sink_submit(h->s, snapshots("hard", i * 100, 100)), 0);
    /* A zero timeout: whatever is not committed right now goes to the spool. */
    struct sink_stats st;
    h->stopped = false;
    sink_shutdown(h->s, 0, on_stopped, h);
    sink_shutdown(h->s, 0, on_stopped, h); /* a second SIGTERM is harmless */
    wait_flag(h, &h->stopped, WAIT_MS, "the shutdown callback");
    sink_get_stats(h->s, &st);
    long long in_db = testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots");
    /* Nothing is lost: committed (possibly also spooled, if a commit raced the abort) plus
     * spooled covers every row. */
    assert_true((uint64_t)in_db + st.rows_spooled >= 10000);
    assert_true(st.rows_committed <= (uint64_t)in_db);
    sink_free(h->s);
    h->s = NULL;
    start_sink(h, h->cfg);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 10000);
    stop_sink(h, 5000);
}

/* A "full disk" for this process: files may not grow past `bytes` (RLIMIT_FSIZE; a write
 * past it fails with EFBIG, SIGXFSZ is ignored in main). RLIM_INFINITY lifts it. */
static void limit_file_size(rlim_t bytes)
{
    struct rlimit rl;
    assert_int_equal(getrlimit(RLIMIT_FSIZE, &rl), 0);
    rl.rlim_cur = bytes == RLIM_INFINITY || bytes > rl.rlim_max ? rl.rlim_max : bytes;
    assert_int_equal(setrlimit(RLIMIT_FSIZE, &rl), 0);
}

static uint64_t spool_bytes(struct h *h)
{
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    return st.spool_bytes;
}

/* Rows of `n` snapshots like snapshots(), with market_cap_rank = i + rank_add. */
static struct batch *snapshots_ranked(const char *prefix, int from, int n, int rank_add)
{
    struct batch *b = snapshots(prefix, from, n);
    for (uint32_t r = 0; r < b->nrows; r++)
        batch_set_int(b, r, 4, from + (int)r + rank_add);
    return b;
}

/* The spool path is taken (memory holds max_pending_rows) and the spool starts refusing
 * writes: sink_submit no longer accepts (it returns the spool's error), but the rows stay in
 * memory up to twice max_pending_rows and are written; past that only the rows the spool did
 * not take are refused and counted as lost; part of a batch spooled before the failure counts
 * as accepted (and is written). Rows kept in memory keep their place in submission order: a
 * later batch with the same keys wins. */
static void test_spool_full_keeps_rows_in_memory(void **state)
{
    struct h *h = *state;
    h->cfg->database.batch_rows = 100;
    h->cfg->database.max_pending_rows = 300; /* hard cap in memory: 600 */
    start_sink(h, h->cfg);
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    /* The writers wait on a table lock until the disk has room again, so no task completes
     * (the loop takes completions at every dispatch, not only in its async callback) and the
     * memory figures are exact. */
    assert_int_equal(testdb_exec(h->admin, "LOCK TABLES market_snapshots WRITE"), 0);
    assert_int_equal(sink_submit(h->s, snapshots("full", 0, 300)), 0); /* memory+spool: 300 */
    uint64_t before = spool_bytes(h);
    assert_int_equal(sink_submit(h->s, snapshots("full", 300, 100)), 0); /* spool: 1 record */
    uint64_t rec = spool_bytes(h) - before;
    assert_true(rec > 0);

    /* Room for one more 100-row record: the first part of a 250-row batch is spooled, the
     * next one fails, and the 150 rows left go to memory (300 + 150 <= 600), not accepted. */
    limit_file_size(spool_bytes(h) + rec + rec / 2);
    assert_int_equal(sink_submit(h->s, snapshots("full", 400, 250)), -EFBIG);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_accepted, 500);
    assert_int_equal(st.rows_lost, 0);
    assert_int_equal(st.rows_pending, 650);
    assert_true(st.spool_failing);

    /* Again one record of room: 100 rows spooled, 200 left, 450 + 200 > 600: refused. */
    limit_file_size(spool_bytes(h) + rec + rec / 2);
    assert_true(sink_submit(h->s, snapshots("full", 650, 300)) < 0);
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_accepted, 600);
    assert_int_equal(st.rows_lost, 200);
    assert_true(metrics_get("coingest_rows_lost_total", "reason=\"spool\"") == 200);

    /* The disk has room again: the same keys as the 250-row batch, newer values, through the
     * spool (memory is over max_pending_rows). They must win over the memory copies. */
    limit_file_size(RLIM_INFINITY);
    assert_int_equal(sink_submit(h->s, snapshots_ranked("full", 400, 250, 1000000)), 0);
    sink_get_stats(h->s, &st);
    assert_false(st.spool_failing);
    assert_int_equal(testdb_exec(h->admin, "UNLOCK TABLES"), 0);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 750);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                             " asset_id BETWEEN 'full-000650' AND 'full-000749'"),
                     100);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                             " asset_id BETWEEN 'full-000400' AND 'full-000649'"
                                             " AND market_cap_rank >= 1000000"),
                     250);
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_committed, 1000);
    assert_int_equal(st.rows_lost, 200);
    stop_sink(h, 5000);
}

/* A submit_many whose second batch the spool refuses (a "full disk": the first batch's record
 * fits, the second's does not): the call fails, the first batch's rows, appended without their
 * sync, are not counted as accepted, and spool_failing stays set (the closing sync of the
 * first batch's record must not clear it). */
static void test_submit_many_spool_fails(void **state)
{
    struct h *h = *state;
    h->cfg->database.batch_rows = 100;
    start_sink(h, h->cfg);
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    uint64_t before = spool_bytes(h);
    assert_int_equal(sink_submit(h->s, snapshots("mfail", 0, 100)), 0);
    uint64_t rec = spool_bytes(h) - before;
    assert_true(rec > 0);
    struct sink_stats st0, st;
    sink_get_stats(h->s, &st0);
    limit_file_size(spool_bytes(h) + rec + rec / 2);
    struct batch *bs[] = {snapshots("mfail", 100, 100), snapshots("mfail", 200, 100)};
    uint64_t accepted = 99;
    assert_int_equal(sink_submit_many(h->s, bs, 2, &accepted), -EFBIG);
    sink_get_stats(h->s, &st);
    assert_int_equal(accepted, 0);
    assert_int_equal(st.rows_accepted, st0.rows_accepted);
    assert_true(st.spool_failing);
    limit_file_size(RLIM_INFINITY);
    wait_idle(h); /* kept in memory, written all the same */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                             " asset_id LIKE 'mfail-%'"),
                     300);
    stop_sink(h, 5000);
}

/* A hard stop while the database is away and the spool refuses writes: the rows the spool
 * refused at submit (not accepted, kept in memory) are counted as lost at the stop (stats and
 * metric), not freed silently. */
static void test_rows_lost_at_hard_stop(void **state)
{
    struct h *h = *state;
    struct config *down = down_cfg(h);
    start_sink(h, down);
    limit_file_size(spool_bytes(h));
    assert_int_equal(sink_submit(h->s, snapshots("lost", 0, 120)), -EFBIG); /* memory only */
    h->stopped = false;
    sink_shutdown(h->s, 0, on_stopped, h);
    sink_shutdown(h->s, 0, on_stopped, h);
    wait_flag(h, &h->stopped, WAIT_MS, "the shutdown callback");
    limit_file_size(RLIM_INFINITY);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_accepted, 0);
    assert_int_equal(st.rows_lost, 120);
    assert_int_equal(st.rows_spooled, 0);
    assert_int_equal(st.rows_pending, 0);
    assert_true(metrics_get("coingest_rows_lost_total", "reason=\"shutdown\"") == 120);
    assert_int_equal(wheel_count(timers_wheel(h->timers)), 0);
    sink_free(h->s);
    h->s = NULL;
    config_free(down);
}

/* A sink that never started: rows submitted to it are counted as lost when it stops, its
 * flush timer is stopped, and it can be freed after the timers facility (the daemon's
 * order). */
static void test_unstarted_sink_frees_after_timers(void **state)
{
    struct h *h = *state;
    h->cfg->database.flush_interval_ms = 3600000; /* the open job's timer stays armed */
    h->s = sink_new(&h->loop, h->timers, h->cfg);
    assert_non_null(h->s);
    /* Not accepted (no spool yet), kept in memory until the stop. */
    assert_int_equal(sink_submit(h->s, snapshots("unstarted", 0, 10)), -ENOTCONN);
    assert_int_equal(wheel_count(timers_wheel(h->timers)), 1);
    h->stopped = false;
    sink_shutdown(h->s, 1000, on_stopped, h);
    wait_flag(h, &h->stopped, WAIT_MS, "the shutdown callback");
    assert_int_equal(wheel_count(timers_wheel(h->timers)), 0);
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_lost, 10);
    /* After the stop nothing is kept any more: refused and counted. */
    assert_true(sink_submit(h->s, snapshots("unstarted", 10, 5)) < 0);
    sink_get_stats(h->s, &st);
    assert_int_equal(st.rows_lost, 15);
    assert_int_equal(st.rows_accepted, 0);
    timers_free(h->timers);
    h->timers = NULL;
    uv_run(&h->loop, UV_RUN_NOWAIT);
    sink_free(h->s); /* must not touch the freed timers (ASan checks) */
    h->s = NULL;
}

/* The daemon's teardown after a failed start frees the timers facility inside the sink's
 * shutdown callback. */
static void on_stopped_free_timers(void *arg)
{
    struct h *h = arg;
    timers_free(h->timers);
    h->timers = NULL;
    h->stopped = true;
}

/* A spool_dir that another process holds: sink_start returns -EBUSY, and the sink that never
 * started stops like the daemon stops it, freeing the timers in its shutdown callback. That
 * used to run inside a wheel callback and crash in the advance (the SIGSEGV a second daemon on
 * one spool_dir died of); it must now come from outside any timer callback. */
static void test_busy_spool_fails_start_cleanly(void **state)
{
    struct h *h = *state;
    struct spool *other = NULL;
    assert_int_equal(spool_open(h->spool, 0, &other), 0);
    assert_int_equal(spool_holder(h->spool), (long)getpid());
    h->s = sink_new(&h->loop, h->timers, h->cfg);
    assert_non_null(h->s);
    assert_int_equal(sink_start(h->s), -EBUSY);
    h->stopped = false;
    sink_shutdown(h->s, 0, on_stopped_free_timers, h);
    wait_flag(h, &h->stopped, WAIT_MS, "the shutdown callback");
    uv_run(&h->loop, UV_RUN_NOWAIT); /* the timers' close callback */
    sink_free(h->s);
    h->s = NULL;
    spool_close(other);
}

/* A statement of this test's connections (its database: other tests on the same server run
 * theirs at the same time) whose text starts with `prefix`, is running. */
static bool running_here(struct h *h, const char *prefix)
{
    char q[512];
    snprintf(q, sizeof(q),
             "SELECT COUNT(*) FROM information_schema.processlist WHERE"
             " info LIKE '%s%%' AND db = '%s'",
             prefix, h->db);
    return testdb_scalar(h->admin, q) > 0;
}

/* A read's SELECT SLEEP is running on the server. */
static bool read_sleeping(struct h *h)
{
    return running_here(h, "SELECT SLEEP(");
}

/* A writer's INSERT waits for a row lock. */
static bool write_waiting(struct h *h)
{
    return running_here(h, "INSERT INTO `market_snapshots`");
}

static bool migration_waiting(struct h *h)
{
    return running_here(h, "SELECT GET_LOCK(");
}

/* Another process holds the migration lock, so the sink's writer waits on GET_LOCK (up to
 * 120 s). A stop must cut that wait off: with nothing to write (the end of a graceful stop)
 * and with rows in memory (the hard stop after the timeout, rows spooled). Each stop must
 * call back within 30 s, well under the lock wait's 120 s. */
static void test_stop_cuts_migration_wait(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 1;
    assert_int_equal(testdb_scalar(h->admin, "SELECT GET_LOCK('coingest.migrate', 60)"), 1);

    start_sink(h, h->cfg);
    wait_until(h, migration_waiting, WAIT_MS, "the writer waiting on the migration lock");
    /* Nothing pending: the stop is immediate. */
    h->stopped = false;
    sink_shutdown(h->s, 5000, on_stopped, h);
    wait_flag(h, &h->stopped, 30000, "the graceful stop cutting the migration's lock wait off");
    sink_free(h->s);
    h->s = NULL;

    start_sink(h, h->cfg);
    wait_until(h, migration_waiting, WAIT_MS, "the writer waiting on the migration lock");
    assert_int_equal(sink_submit(h->s, snapshots("migwait", 0, 40)), 0);
    h->stopped = false;
    sink_shutdown(h->s, 50, on_stopped, h);
    wait_flag(h, &h->stopped, 30000, "the hard stop cutting the migration's lock wait off");
    struct sink_stats st;
    sink_get_stats(h->s, &st);
    assert_false(st.schema_ready);
    assert_int_equal(st.rows_spooled, 40);
    assert_int_equal(st.rows_lost, 0);
    sink_free(h->s);
    h->s = NULL;

    assert_int_equal(testdb_exec(h->admin, "DO RELEASE_LOCK('coingest.migrate')"), 0);
    /* Nothing was migrated behind the lock holder's back. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM information_schema.tables"
                                             " WHERE table_schema = DATABASE()"),
                     0);
    /* And the spooled rows arrive once the lock is free. */
    start_sink(h, h->cfg);
    wait_idle(h);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots"), 40);
    stop_sink(h, 5000);
}

static void test_idle_and_ready_callbacks(void **state)
{
    struct h *h = *state;
    migrate_now(h);
    start_sink(h, h->cfg);
    /* Idle right away: nothing pending. */
    wait_idle(h);
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    /* Registered after the fact: fires on the next iteration. */
    h->ready = false;
    sink_on_ready(h->s, on_ready, h);
    assert_false(h->ready);
    wait_flag(h, &h->ready, WAIT_MS, "the ready callback");
    stop_sink(h, 1000);
}

/* --- reads ------------------------------------------------------------------------------- */

/* What a read's callback saw, copied (rows are valid during the callback only). */
struct rd {
    bool done;
    int calls, rc;
    char err[1024];
    uint32_t nrows, ncols;
    char **names, **cells;
};

static void on_read(int rc, const struct sink_rows *rows, const char *err, void *arg)
{
    struct rd *r = arg;
    r->calls++;
    r->done = true;
    r->rc = rc;
    snprintf(r->err, sizeof(r->err), "%s", err ? err : "");
    if (rc == 0) {
        assert_non_null(rows);
        assert_null(err);
        r->nrows = rows->nrows;
        r->ncols = rows->ncols;
        r->names = calloc(rows->ncols, sizeof(char *));
        r->cells = calloc((size_t)rows->nrows * rows->ncols + 1, sizeof(char *));
        for (uint32_t c = 0; c < rows->ncols; c++)
            r->names[c] = strdup(rows->names[c]);
        for (size_t i = 0; i < (size_t)rows->nrows * rows->ncols; i++)
            r->cells[i] = rows->cells[i] ? strdup(rows->cells[i]) : NULL;
    } else {
        assert_null(rows);
        assert_non_null(err);
    }
}

static void rd_free(struct rd *r)
{
    for (uint32_t c = 0; r->names && c < r->ncols; c++)
        free(r->names[c]);
    for (size_t i = 0; r->cells && i < (size_t)r->nrows * r->ncols; i++)
        free(r->cells[i]);
    free(r->names);
    free(r->cells);
    memset(r, 0, sizeof(*r));
}

static const char *cell(const struct rd *r, uint32_t row, uint32_t col)
{
    assert_true(row < r->nrows && col < r->ncols);
    return r->cells[(size_t)row * r->ncols + col];
}

/* Issues a read and waits (bounded) for its one callback. */
static void read_sync(struct h *h, struct rd *r, const char *sql, const char *const *params,
                      size_t nparams, size_t max_rows)
{
    memset(r, 0, sizeof(*r));
    assert_int_equal(sink_read(h->s, sql, params, nparams, max_rows, on_read, r), 0);
    assert_false(r->done); /* never inline */
    wait_flag(h, &r->done, 30000, "a read's callback");
    assert_int_equal(r->calls, 1);
}

/* Rows committed before the read are all there, with their column names; values come as
 * text (times in UTC with milliseconds). */
static void test_read_sees_committed_rows(void **state)
{
    struct h *h = *state;
    migrate_now(h);
    start_sink(h, h->cfg);
    assert_int_equal(sink_submit(h->s, snapshots("rd", 0, 30)), 0);
    wait_idle(h); /* every row committed */
    const char *p[] = {"rd-%", "usd"};
    struct rd r;
    read_sync(h, &r,
              "SELECT asset_id, market_cap_rank AS rnk, snapshot_at, price FROM market_snapshots"
              " WHERE asset_id LIKE ? AND vs_currency = ? ORDER BY asset_id",
              p, 2, 100);
    if (r.rc)
        fail_msg("read: %d %s", r.rc, r.err);
    assert_int_equal(r.nrows, 30);
    assert_int_equal(r.ncols, 4);
    assert_string_equal(r.names[0], "asset_id");
    assert_string_equal(r.names[1], "rnk");
    assert_string_equal(cell(&r, 0, 0), "rd-000000");
    assert_string_equal(cell(&r, 29, 0), "rd-000029");
    assert_string_equal(cell(&r, 7, 1), "7");
    assert_string_equal(cell(&r, 0, 2), "2025-02-09 17:42:27.000");
    assert_string_equal(cell(&r, 29, 2), "2025-02-09 17:42:27.029");
    assert_true(strtod(cell(&r, 3, 3), NULL) == 1e-11 * 4);
    rd_free(&r);
    /* The last stored point, as a history backfill asks for it. */
    read_sync(h, &r,
              "SELECT asset_id, MAX(snapshot_at) FROM market_snapshots WHERE asset_id = ?"
              " GROUP BY asset_id",
              (const char *const[]){"rd-000012"}, 1, 10);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nrows, 1);
    assert_string_equal(cell(&r, 0, 1), "2025-02-09 17:42:27.012");
    rd_free(&r);
    stop_sink(h, 5000);
}

/* NULL parameters bind SQL NULL; NULL cells come back as NULL pointers; a long cell comes
 * back whole; a statement that returns no rows and a wrong parameter count are refused;
 * more rows than max_rows is -E2BIG and the connection stays usable; bad SQL is -EIO with
 * the server's message. */
static void test_read_values_and_errors(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 1; /* every read on the one connection */
    migrate_now(h);
    start_sink(h, h->cfg);
    struct rd r;
    const char *p[] = {NULL, "x"};
    read_sync(h, &r,
              "SELECT ? AS a, ? AS b, NULL AS c, 42 AS d, ? IS NULL AS e, REPEAT('y', 5000) AS f",
              (const char *const[]){NULL, "x", NULL}, 3, 1);
    if (r.rc)
        fail_msg("read: %d %s", r.rc, r.err);
    assert_int_equal(r.nrows, 1);
    assert_int_equal(r.ncols, 6);
    assert_null(cell(&r, 0, 0));
    assert_string_equal(cell(&r, 0, 1), "x");
    assert_null(cell(&r, 0, 2));
    assert_string_equal(cell(&r, 0, 3), "42");
    assert_string_equal(cell(&r, 0, 4), "1");
    assert_int_equal(strlen(cell(&r, 0, 5)), 5000);
    assert_int_equal(strspn(cell(&r, 0, 5), "y"), 5000);
    rd_free(&r);

    read_sync(h, &r, "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3", NULL, 0, 2);
    assert_int_equal(r.rc, -E2BIG);
    assert_non_null(strstr(r.err, "max_rows"));
    rd_free(&r);
    read_sync(h, &r, "SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3", NULL, 0, 3);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nrows, 3);
    rd_free(&r);
    read_sync(h, &r, "SELECT 1 FROM DUAL WHERE 1 = 0", NULL, 0, 0);
    assert_int_equal(r.rc, 0);
    assert_int_equal(r.nrows, 0);
    assert_int_equal(r.ncols, 1);
    rd_free(&r);

    read_sync(h, &r, "SELEC 1", NULL, 0, 10);
    assert_int_equal(r.rc, -EIO);
    assert_non_null(strstr(r.err, "SQL syntax"));
    rd_free(&r);
    read_sync(h, &r, "SELECT * FROM no_such_table", NULL, 0, 10);
    assert_int_equal(r.rc, -EIO);
    assert_non_null(strstr(r.err, "no_such_table"));
    rd_free(&r);
    read_sync(h, &r, "SELECT ?", p, 2, 10);
    assert_int_equal(r.rc, -EINVAL);
    rd_free(&r);
    /* A statement that writes is refused by the read-only transaction... */
    assert_int_equal(testdb_exec(h->admin, "INSERT INTO categories (id, name, updated_at)"
                                           " VALUES ('keep', 'keep', UTC_TIMESTAMP(3))"),
                     0);
    read_sync(h, &r, "DELETE FROM categories", NULL, 0, 10);
    assert_int_equal(r.rc, -EIO);
    assert_non_null(strstr(r.err, "READ ONLY"));
    rd_free(&r);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM categories"), 1);
    /* ...and one that returns no rows is not run. */
    read_sync(h, &r, "DO 1", NULL, 0, 10);
    assert_int_equal(r.rc, -EINVAL);
    rd_free(&r);
    assert_int_equal(sink_read(h->s, NULL, NULL, 0, 1, on_read, &r), -EINVAL);
    assert_int_equal(sink_read(h->s, "SELECT 1", NULL, 0, 1, NULL, &r), -EINVAL);
    stop_sink(h, 5000);
}

/* A database that cannot be reached: a read is answered -ENOTCONN promptly, whether it was
 * issued before the sink knew (it waits for the first connection attempt) or after. */
static void test_read_db_down(void **state)
{
    struct h *h = *state;
    struct config *down = down_cfg(h);
    start_sink(h, down);
    struct rd r;
    uint64_t t0 = uv_now(&h->loop);
    read_sync(h, &r, "SELECT 1", NULL, 0, 1);
    assert_int_equal(r.rc, -ENOTCONN);
    assert_non_null(strstr(r.err, "unreachable"));
    assert_true(uv_now(&h->loop) - t0 < 10000);
    rd_free(&r);
    read_sync(h, &r, "SELECT 1", NULL, 0, 1);
    assert_int_equal(r.rc, -ENOTCONN);
    rd_free(&r);
    stop_sink(h, 1000);
    config_free(down);
}

/* A read still queued when the sink shuts down (the only writer waits on the migration lock),
 * and one a writer is running (SELECT SLEEP) when the threads stop: both end with
 * -ECANCELED, before the shutdown callback; afterwards sink_read is refused. */
static void test_read_canceled_by_shutdown(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 1;
    /* The lock is the server's, not the database's: another test's migration on the same
     * server may hold it for a moment (ctest -j), so wait for it rather than fail. */
    assert_int_equal(testdb_scalar(h->admin, "SELECT GET_LOCK('coingest.migrate', 60)"), 1);
    start_sink(h, h->cfg);
    wait_until(h, migration_waiting, 30000, "the writer waiting on the migration lock");
    struct rd queued = {0};
    assert_int_equal(sink_read(h->s, "SELECT 1", NULL, 0, 1, on_read, &queued), 0);
    h->stopped = false;
    sink_shutdown(h->s, 5000, on_stopped, h);
    assert_int_equal(sink_read(h->s, "SELECT 1", NULL, 0, 1, on_read, &queued), -ESHUTDOWN);
    wait_flag(h, &h->stopped, 30000, "the shutdown callback");
    assert_true(queued.done);
    assert_int_equal(queued.calls, 1);
    assert_int_equal(queued.rc, -ECANCELED);
    sink_free(h->s);
    h->s = NULL;
    assert_int_equal(testdb_exec(h->admin, "DO RELEASE_LOCK('coingest.migrate')"), 0);

    migrate_now(h);
    start_sink(h, h->cfg);
    struct rd running = {0};
    uv_update_time(&h->loop);
    uint64_t t0 = uv_now(&h->loop);
    assert_int_equal(sink_read(h->s, "SELECT SLEEP(60)", NULL, 0, 1, on_read, &running), 0);
    wait_until(h, read_sleeping, 30000, "the read running on the server");
    bool ended_first = running.done;
    uint64_t asked = uv_now(&h->loop) - t0;
    h->stopped = false;
    sink_shutdown(h->s, 5000, on_stopped, h);
    wait_flag(h, &h->stopped, 20000, "the shutdown callback (the running read cut off)");
    uint64_t stopped = uv_now(&h->loop) - t0;
    assert_true(running.done);
    /* Said in full when it fails (seen once in a loaded CI run: -ENOTCONN after ~30 s, the
     * client's read timeout): whether the read had ended before the stop was asked, when. */
    if (running.rc != -ECANCELED)
        fail_msg("the running read ended with %d (%s); ended before the stop: %s; stop asked "
                 "after %llu ms, done after %llu ms",
                 running.rc, running.err, ended_first ? "yes" : "no", (unsigned long long)asked,
                 (unsigned long long)stopped);
    sink_free(h->s);
    h->s = NULL;
}

/* A read is not held up by writes: with one writer blocked on a row lock, a read issued
 * after the stuck batch goes to the other writer and is answered. */
static void test_read_not_blocked_by_writes(void **state)
{
    struct h *h = *state;
    h->cfg->database.workers = 2;
    migrate_now(h);
    start_sink(h, h->cfg);
    assert_int_equal(sink_submit(h->s, snapshots("lock", 0, 1)), 0);
    wait_idle(h);
    /* Hold the row's lock: the next write of it waits (innodb_lock_wait_timeout). */
    assert_int_equal(testdb_exec(h->admin, "START TRANSACTION"), 0);
    assert_int_equal(testdb_scalar(h->admin, "SELECT COUNT(*) FROM market_snapshots WHERE"
                                             " asset_id = 'lock-000000' FOR UPDATE"),
                     1);
    assert_int_equal(sink_submit(h->s, snapshots("lock", 0, 1)), 0);
    h->idle = false;
    sink_on_idle(h->s, on_idle, h); /* flushes the batch to the writers now */
    wait_until(h, write_waiting, 30000, "the write waiting on the row lock");
    struct rd r;
    read_sync(h, &r, "SELECT COUNT(*) FROM market_snapshots WHERE asset_id LIKE ?",
              (const char *const[]){"lock-%"}, 1, 1);
    assert_int_equal(r.rc, 0);
    assert_string_equal(cell(&r, 0, 0), "1");
    rd_free(&r);
    assert_false(h->idle); /* the write is still stuck */
    assert_int_equal(testdb_exec(h->admin, "ROLLBACK"), 0);
    wait_flag(h, &h->idle, 30000, "the stuck write to commit");
    stop_sink(h, 5000);
}

int main(void)
{
    if (!testdb_available()) {
        fprintf(stderr, "test_sink: no test database (COINGEST_TEST_DB_*); skipped\n");
        return TESTDB_SKIP;
    }
    if (db_library_init())
        return 1;
    signal(SIGXFSZ, SIG_IGN); /* limit_file_size(): EFBIG instead of a signal */
    /* One thread in libuv's pool, so test_submit_async can hold it (read at its first use). */
    setenv("UV_THREADPOOL_SIZE", "1", 1);
    /* COINGEST_TEST_FILTER=pattern runs only the matching tests (cmocka's glob), for
     * debugging one of them. */
    if (getenv("COINGEST_TEST_FILTER"))
        cmocka_set_test_filter(getenv("COINGEST_TEST_FILTER"));
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_roundtrip_every_spec, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_text_path, setup, teardown),
        cmocka_unit_test_setup_teardown(test_roundtrip_small_statements, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_mixed_column_types, setup, teardown),
        cmocka_unit_test_setup_teardown(test_binary_times, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rejected_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_statement_barrier, setup, teardown),
        cmocka_unit_test_setup_teardown(test_last_write_wins, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_many_one_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_async, setup, teardown),
        cmocka_unit_test_setup_teardown(test_submit_many_spool_fails, setup, teardown),
        cmocka_unit_test_setup_teardown(test_max_pending_overflow, setup, teardown),
        cmocka_unit_test_setup_teardown(test_db_down_at_start, setup, teardown),
        cmocka_unit_test_setup_teardown(test_counters_exist_at_zero, setup, teardown),
        cmocka_unit_test_setup_teardown(test_restart_replays_spool, setup, teardown),
        cmocka_unit_test_setup_teardown(test_hard_shutdown_spools, setup, teardown),
        cmocka_unit_test_setup_teardown(test_idle_and_ready_callbacks, setup, teardown),
        cmocka_unit_test_setup_teardown(test_spool_full_keeps_rows_in_memory, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rows_lost_at_hard_stop, setup, teardown),
        cmocka_unit_test_setup_teardown(test_unstarted_sink_frees_after_timers, setup, teardown),
        cmocka_unit_test_setup_teardown(test_busy_spool_fails_start_cleanly, setup, teardown),
        cmocka_unit_test_setup_teardown(test_stop_cuts_migration_wait, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_sees_committed_rows, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_values_and_errors, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_db_down, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_canceled_by_shutdown, setup, teardown),
        cmocka_unit_test_setup_teardown(test_read_not_blocked_by_writes, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    db_library_end();
    return rc;
}
