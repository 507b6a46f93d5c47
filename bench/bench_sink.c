/*
 * bench_sink: rows per second the sink writes into market_snapshots, for batch sizes 1, 100,
 * 1000 and 5000 and 1, 2 and 4 writer threads, beside LOAD DATA LOCAL INFILE of the same rows
 * (the ceiling for bulk loading into that table) in the same run.
 *
 *   bench_sink [ROWS]        (or COINGEST_BENCH_ROWS; default 1000000)
 *
 * Database: the COINGEST_TEST_DB_* variables (scripts/mariadb-private start DIR prints them);
 * the bench creates a database of its own and drops it at the end. Each case starts from an
 * empty table, runs a real sink (loop thread, writer threads, migrations already applied)
 * fed with 250-row pages as a parser would produce them, with at most a few batches per
 * writer pending so no row has to wait in the spool only (spooled=0), and times from the
 * first submit until every row is committed. Batch size 1 commits one transaction per row, so
 * it is capped at 20000 rows (said in its lines as capped=1). submit_ms is the mean time the
 * loop thread spent in one sink_submit of a page: every accepted batch is synced to the spool
 * first, so that is about one fdatasync on the disk under /tmp, where the bench makes its
 * spool. LOAD DATA times only the statement, not writing the file. One key=value line per
 * case on stdout. Nothing here passes or fails on time.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/db.h"
#include "coingest/log.h"
#include "coingest/sink.h"
#include "coingest/timers.h"

#define PAGE       250
#define BATCH1_CAP 20000

static const int64_t T0 = 1739122947000;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* --- the rows ----------------------------------------------------------------------------- */

/* Row i's values, shared by the sink cases and the LOAD DATA file. */
struct row {
    char id[32];
    int64_t snap;
    int64_t rank;
    double d[17]; /* the columns price .. atl_change_pct, except ath_date */
    int64_t ath_date, atl_date;
    bool has_roi;
};

static void make_row(uint64_t i, struct row *r)
{
    snprintf(r->id, sizeof(r->id), "asset-%07" PRIu64, i % 10000);
    r->snap = T0 + (int64_t)(i / 10000) * 60000;
    r->rank = (int64_t)(i % 10000) + 1;
    double base = 1e-11 * (double)(i + 1) * 1234.5;
    for (int k = 0; k < 17; k++)
        r->d[k] = base * (k + 1) + (double)k * 0.001;
    r->d[11] = 1.157920892373162e77; /* total_supply of some meme token */
    r->ath_date = T0 - 86400000;
    r->atl_date = T0 - 2 * 86400000;
    r->has_roi = i % 7 == 0;
}

static const char *const roi = "{\"times\":2.5,\"currency\":\"usd\",\"percentage\":250.0}";

static struct batch *make_page(uint64_t from, uint32_t n)
{
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, n);
    if (!b)
        return NULL;
    for (uint64_t i = from; i < from + n; i++) {
        struct row r;
        make_row(i, &r);
        uint32_t x = (uint32_t)batch_add_row(b);
        batch_set_str(b, x, BATCH_MARKET_SNAPSHOTS_COL_ASSET_ID, r.id, strlen(r.id));
        batch_set_str(b, x, BATCH_MARKET_SNAPSHOTS_COL_VS_CURRENCY, "usd", 3);
        batch_set_str(b, x, BATCH_MARKET_SNAPSHOTS_COL_SOURCE, "coingecko", 9);
        batch_set_time(b, x, BATCH_MARKET_SNAPSHOTS_COL_SNAPSHOT_AT, r.snap);
        batch_set_int(b, x, BATCH_MARKET_SNAPSHOTS_COL_MARKET_CAP_RANK, r.rank);
        /* The columns from price to atl_change_pct: doubles, except ath_date. */
        int k = 0;
        for (uint16_t c = BATCH_MARKET_SNAPSHOTS_COL_PRICE;
             c <= BATCH_MARKET_SNAPSHOTS_COL_ATL_CHANGE_PCT; c++) {
            if (c == BATCH_MARKET_SNAPSHOTS_COL_ATH_DATE)
                batch_set_time(b, x, c, r.ath_date);
            else
                batch_set_dbl(b, x, c, r.d[k++]);
        }
        batch_set_time(b, x, BATCH_MARKET_SNAPSHOTS_COL_ATL_DATE, r.atl_date);
        if (r.has_roi)
            batch_set_json(b, x, BATCH_MARKET_SNAPSHOTS_COL_ROI, roi, strlen(roi));
        batch_set_time(b, x, BATCH_MARKET_SNAPSHOTS_COL_FETCHED_AT, T0);
    }
    return b;
}

/* --- database ----------------------------------------------------------------------------- */

static const char *env(const char *k, const char *dflt)
{
    const char *v = getenv(k);
    return v && *v ? v : dflt;
}

static struct config *bench_cfg(const char *db)
{
    struct config *cfg = config_defaults();
    if (!cfg)
        return NULL;
    free(cfg->database.host);
    cfg->database.host = strdup(env("COINGEST_TEST_DB_HOST", "127.0.0.1"));
    cfg->database.port = (uint32_t)atoi(env("COINGEST_TEST_DB_PORT", "3306"));
    const char *sock = getenv("COINGEST_TEST_DB_SOCKET");
    cfg->database.socket = sock ? strdup(sock) : NULL;
    free(cfg->database.user);
    cfg->database.user = strdup(env("COINGEST_TEST_DB_USER", "coingest"));
    cfg->database.password = strdup(env("COINGEST_TEST_DB_PASSWORD", "coingest"));
    free(cfg->database.database);
    cfg->database.database = strdup(db);
    char dir[4096];
    const char *src = getenv("COINGEST_SOURCE_DIR");
    if (src) {
        snprintf(dir, sizeof(dir), "%s/sql", src);
    } else {
        /* bench/bench_sink.c -> sql/ */
        snprintf(dir, sizeof(dir), "%s", __FILE__);
        char *slash = strrchr(dir, '/');
        if (slash)
            *slash = '\0';
        strncat(dir, "/../sql", sizeof(dir) - strlen(dir) - 1);
    }
    free(cfg->database.migrations_dir);
    cfg->database.migrations_dir = strdup(dir);
    cfg->database.flush_interval_ms = 10;
    return cfg;
}

static MYSQL *admin_connect(const char *db, bool local_infile)
{
    MYSQL *m = mysql_init(NULL);
    unsigned on = 1;
    if (local_infile)
        mysql_options(m, MYSQL_OPT_LOCAL_INFILE, &on);
    mysql_options(m, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    const char *sock = getenv("COINGEST_TEST_DB_SOCKET");
    if (!mysql_real_connect(m, sock ? NULL : env("COINGEST_TEST_DB_HOST", "127.0.0.1"),
                            env("COINGEST_TEST_DB_USER", "coingest"),
                            env("COINGEST_TEST_DB_PASSWORD", "coingest"), db,
                            (unsigned)atoi(env("COINGEST_TEST_DB_PORT", "3306")), sock, 0)) {
        fprintf(stderr, "bench_sink: connect: %s\n", mysql_error(m));
        mysql_close(m);
        return NULL;
    }
    if (mysql_query(m, "SET time_zone = '+00:00'")) {
        mysql_close(m);
        return NULL;
    }
    return m;
}

static int exec(MYSQL *m, const char *sql)
{
    if (mysql_query(m, sql)) {
        fprintf(stderr, "bench_sink: %s: %s\n", sql, mysql_error(m));
        return -1;
    }
    MYSQL_RES *res = mysql_store_result(m);
    if (res)
        mysql_free_result(res);
    return 0;
}

static long long count_rows(MYSQL *m)
{
    if (mysql_query(m, "SELECT COUNT(*) FROM market_snapshots"))
        return -1;
    MYSQL_RES *res = mysql_store_result(m);
    MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
    long long n = row && row[0] ? atoll(row[0]) : -1;
    if (res)
        mysql_free_result(res);
    return n;
}

/* --- one sink case ------------------------------------------------------------------------ */

struct run {
    uv_loop_t loop;
    struct timers *timers;
    struct sink *s;
    uv_check_t check;
    uv_timer_t kick;
    uint64_t rows, fed, window;
    uint64_t submits;
    double submit_s; /* inside sink_submit */
    bool idle, stopped, failed;
};

static void feed(struct run *r)
{
    struct sink_stats st;
    sink_get_stats(r->s, &st);
    while (r->fed < r->rows && st.rows_pending < r->window) {
        uint32_t n = r->rows - r->fed < PAGE ? (uint32_t)(r->rows - r->fed) : PAGE;
        struct batch *b = make_page(r->fed, n);
        double t0 = now_s();
        int rc = b ? sink_submit(r->s, b) : -1;
        r->submit_s += now_s() - t0;
        r->submits++;
        if (rc != 0) {
            r->failed = true;
            r->fed = r->rows;
            break;
        }
        r->fed += n;
        st.rows_pending += n;
    }
    if (r->fed >= r->rows)
        uv_check_stop(&r->check);
}

/* After every loop iteration (a writer finished a batch...), top the pending rows up. */
static void on_check(uv_check_t *h)
{
    feed(h->data);
}

static void on_kick(uv_timer_t *h)
{
    feed(h->data);
}

static void on_idle(void *arg)
{
    ((struct run *)arg)->idle = true;
}

static void on_stopped(void *arg)
{
    ((struct run *)arg)->stopped = true;
}

static int run_case(const struct config *base, MYSQL *admin, uint32_t batch, uint32_t workers,
                    uint64_t rows, bool capped)
{
    if (exec(admin, "TRUNCATE TABLE market_snapshots"))
        return -1;
    struct config cfg = *base; /* shallow: the sink copies what it keeps */
    cfg.database.batch_rows = batch;
    cfg.database.workers = workers;
    uint64_t window = (uint64_t)batch * workers * 3;
    if (window < 4 * PAGE)
        window = 4 * PAGE;
    cfg.database.max_pending_rows = window + 2 * PAGE; /* never spool */
    cfg.database.batch_bytes = 16u * 1024 * 1024;
    struct run r = {.rows = rows, .window = window};
    uv_loop_init(&r.loop);
    r.timers = timers_new(&r.loop);
    r.s = sink_new(&r.loop, r.timers, &cfg);
    if (!r.s || sink_start(r.s))
        return -1;
    /* Wait for the writers to connect, so connecting is not timed. */
    struct sink_stats st;
    do {
        uv_run(&r.loop, UV_RUN_ONCE);
        sink_get_stats(r.s, &st);
    } while (!st.schema_ready);
    uv_check_init(&r.loop, &r.check);
    r.check.data = &r;
    uv_timer_init(&r.loop, &r.kick);
    r.kick.data = &r;
    double t0 = now_s();
    uv_check_start(&r.check, on_check);
    uv_timer_start(&r.kick, on_kick, 0, 0);
    /* The feeder may top up between the sink finding itself idle and the callback, so the
     * end is: idle, everything fed, nothing pending. */
    for (;;) {
        r.idle = false;
        sink_on_idle(r.s, on_idle, &r);
        while (!r.idle)
            uv_run(&r.loop, UV_RUN_ONCE);
        sink_get_stats(r.s, &st);
        if (r.fed >= r.rows && st.rows_pending == 0)
            break;
    }
    double secs = now_s() - t0;
    sink_shutdown(r.s, 10000, on_stopped, &r);
    while (!r.stopped)
        uv_run(&r.loop, UV_RUN_ONCE);
    sink_free(r.s);
    timers_free(r.timers);
    uv_close((uv_handle_t *)&r.check, NULL);
    uv_close((uv_handle_t *)&r.kick, NULL);
    uv_run(&r.loop, UV_RUN_DEFAULT);
    uv_loop_close(&r.loop);
    long long n = count_rows(admin);
    printf("bench=sink case=upsert batch=%u workers=%u rows=%" PRIu64 " capped=%d seconds=%.3f"
           " rows_per_s=%.0f batches=%" PRIu64 " rows_in_table=%lld spooled=%" PRIu64
           " submits=%" PRIu64 " submit_ms=%.3f ok=%d\n",
           batch, workers, rows, capped ? 1 : 0, secs, (double)rows / secs, st.batches_committed, n,
           st.rows_spooled, r.submits, r.submits ? 1000.0 * r.submit_s / (double)r.submits : 0.0,
           !r.failed && n == (long long)rows && st.rows_committed == rows);
    fflush(stdout);
    return 0;
}

/* --- LOAD DATA ---------------------------------------------------------------------------- */

static void tsv_time(FILE *f, int64_t ms)
{
    char buf[32];
    db_format_time(ms, buf, sizeof(buf));
    fputs(buf, f);
}

static int write_tsv(const char *path, uint64_t rows)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return -errno;
    for (uint64_t i = 0; i < rows; i++) {
        struct row r;
        make_row(i, &r);
        fprintf(f, "%s\tusd\tcoingecko\t", r.id);
        tsv_time(f, r.snap);
        fprintf(f, "\t%" PRId64, r.rank);
        int k = 0;
        for (int c = 5; c <= 22; c++) {
            fputc('\t', f);
            if (c == 20)
                tsv_time(f, r.ath_date);
            else
                fprintf(f, "%.17g", r.d[k++]);
        }
        fputc('\t', f);
        tsv_time(f, r.atl_date);
        fputc('\t', f);
        fputs(r.has_roi ? roi : "\\N", f);
        fputc('\t', f);
        tsv_time(f, T0);
        fputc('\n', f);
    }
    return fclose(f) == 0 ? 0 : -EIO;
}

static void run_load_data(const char *db, MYSQL *admin, uint64_t rows)
{
    char path[] = "/tmp/bench_sink.XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0)
        return;
    close(fd);
    if (write_tsv(path, rows) || exec(admin, "TRUNCATE TABLE market_snapshots")) {
        unlink(path);
        return;
    }
    MYSQL *m = admin_connect(db, true);
    if (!m) {
        unlink(path);
        return;
    }
    char sql[2048];
    const struct batch_spec *spec = batch_spec(BATCH_MARKET_SNAPSHOTS);
    int n = snprintf(sql, sizeof(sql), "LOAD DATA LOCAL INFILE '%s' INTO TABLE market_snapshots (",
                     path);
    for (uint16_t c = 0; c < spec->ncols; c++)
        n += snprintf(sql + n, sizeof(sql) - (size_t)n, "%s`%s`", c ? "," : "", spec->cols[c]);
    snprintf(sql + n, sizeof(sql) - (size_t)n, ")");
    double t0 = now_s();
    int rc = exec(m, sql);
    double secs = now_s() - t0;
    mysql_close(m);
    unlink(path);
    long long in = count_rows(admin);
    printf("bench=sink case=load_data rows=%" PRIu64 " seconds=%.3f rows_per_s=%.0f"
           " rows_in_table=%lld ok=%d\n",
           rows, secs, (double)rows / secs, in, rc == 0 && in == (long long)rows);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    uint64_t rows = strtoull(argc > 1 ? argv[1] : env("COINGEST_BENCH_ROWS", "1000000"), NULL, 10);
    if (rows == 0)
        rows = 1000000;
    if (!getenv("COINGEST_TEST_DB_SOCKET") && !getenv("COINGEST_TEST_DB_PORT")) {
        fprintf(stderr, "bench_sink: set COINGEST_TEST_DB_* (scripts/mariadb-private start DIR)\n");
        return 2;
    }
    log_setup(LOG_WARN, LOG_FORMAT_TEXT);
    if (db_library_init())
        return 1;
    char db[64];
    snprintf(db, sizeof(db), "coingest_bench_%ld", (long)getpid());
    MYSQL *admin = admin_connect(NULL, false);
    if (!admin)
        return 1;
    char sql[256];
    snprintf(sql, sizeof(sql), "CREATE DATABASE `%s` CHARACTER SET utf8mb4", db);
    if (exec(admin, sql) || mysql_select_db(admin, db))
        return 1;
    struct config *cfg = bench_cfg(db);
    char err[1024];
    MYSQL *mig = db_connect(&cfg->database, err, sizeof(err));
    if (!mig || db_migrate(mig, cfg->database.migrations_dir, err, sizeof(err)) < 0) {
        fprintf(stderr, "bench_sink: migrate: %s\n", err);
        return 1;
    }
    mysql_close(mig);
    char spool[] = "/tmp/bench_sink_spool.XXXXXX";
    if (!mkdtemp(spool))
        return 1;
    free(cfg->daemon.spool_dir);
    cfg->daemon.spool_dir = strdup(spool);

    printf("bench=sink rows=%" PRIu64 " batch1_rows=%" PRIu64 " note=batch_size_1_is_capped\n",
           rows, rows < BATCH1_CAP ? rows : BATCH1_CAP);
    run_load_data(db, admin, rows);
    static const uint32_t batches[] = {1, 100, 1000, 5000};
    static const uint32_t workers[] = {1, 2, 4};
    for (size_t b = 0; b < 4; b++) {
        for (size_t w = 0; w < 3; w++) {
            bool capped = batches[b] == 1 && rows > BATCH1_CAP;
            run_case(cfg, admin, batches[b], workers[w], capped ? BATCH1_CAP : rows, capped);
        }
    }
    snprintf(sql, sizeof(sql), "DROP DATABASE `%s`", db);
    exec(admin, sql);
    mysql_close(admin);
    rmdir(spool);
    config_free(cfg);
    db_library_end();
    return 0;
}
