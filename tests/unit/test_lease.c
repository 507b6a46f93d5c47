/*
 * lease and cluster against the private MariaDB: two lease clients (two connections, two
 * holder names) on one table -- one holder at a time, expiry and takeover, the fencing token
 * refusing a holder that came back late, release, a race for a free lease that exactly one
 * client wins; then two cluster objects (the lease thread and the loop's view) on one loop,
 * where the standby takes over once the holder stops; and `[database] hosts` failing over a
 * dead node. ctest-labels: tsan
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>
#include <mysqld_error.h>
#include <uv.h>

#include "coingest/cluster.h"
#include "coingest/db.h"
#include "coingest/lease.h"
#include "coingest/log.h"
#include "coingest/util.h"
#include "testdb.h"

struct ctx {
    MYSQL *admin;
    char db[64];
    struct config *cfg;
    MYSQL *a, *b; /* two clients */
};

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    c->admin = testdb_create("test_lease", c->db, sizeof(c->db));
    if (!c->admin)
        return -1;
    c->cfg = config_defaults();
    testdb_fill_config(c->cfg, c->db);
    char err[512];
    c->a = db_connect(&c->cfg->database, err, sizeof(err));
    c->b = db_connect(&c->cfg->database, err, sizeof(err));
    if (!c->a || !c->b) {
        fprintf(stderr, "db_connect: %s\n", err);
        return -1;
    }
    if (db_migrate(c->a, NULL, err, sizeof(err)) < 0) {
        fprintf(stderr, "db_migrate: %s\n", err);
        return -1;
    }
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    if (!c)
        return 0;
    mysql_close(c->a);
    mysql_close(c->b);
    testdb_drop(c->admin, c->db);
    config_free(c->cfg);
    free(c);
    return 0;
}

static void test_one_holder(void **state)
{
    struct ctx *c = *state;
    char err[512];
    uint64_t ta = 0, tb = 0;
    assert_int_equal(lease_ensure(c->a, "job:prices", err, sizeof(err)), 0);
    assert_int_equal(lease_ensure(c->b, "job:prices", err, sizeof(err)), 0); /* idempotent */
    assert_int_equal(lease_acquire(c->a, "job:prices", "a", 60000, &ta, err, sizeof(err)), 1);
    assert_int_equal(ta, 1);
    /* Held: the other client cannot take it, renew it or release it. */
    assert_int_equal(lease_acquire(c->b, "job:prices", "b", 60000, &tb, err, sizeof(err)), 0);
    assert_int_equal(lease_renew(c->b, "job:prices", "b", 1, 60000, err, sizeof(err)), 0);
    assert_int_equal(lease_release(c->b, "job:prices", "b", 1, err, sizeof(err)), 0);
    assert_int_equal(lease_renew(c->a, "job:prices", "a", ta, 60000, err, sizeof(err)), 1);
    /* Nor can the holder take it twice: acquire is for a free lease only. */
    assert_int_equal(lease_acquire(c->a, "job:prices", "a", 60000, &ta, err, sizeof(err)), 0);

    struct lease_row rows[4];
    assert_int_equal(lease_list(c->b, rows, 4, err, sizeof(err)), 1);
    assert_string_equal(rows[0].name, "job:prices");
    assert_string_equal(rows[0].holder, "a");
    assert_int_equal(rows[0].token, 1);
    assert_true(rows[0].expires_in_ms > 0);
}

static void test_expiry_and_fencing(void **state)
{
    struct ctx *c = *state;
    char err[512];
    uint64_t ta = 0, tb = 0;
    assert_int_equal(lease_ensure(c->a, "budget:coingecko", err, sizeof(err)), 0);
    assert_int_equal(lease_acquire(c->a, "budget:coingecko", "a", 300, &ta, err, sizeof(err)), 1);
    /* a stops renewing (a pause, a partition); once the lease has expired b takes it over. */
    usleep(400 * 1000);
    assert_int_equal(lease_acquire(c->b, "budget:coingecko", "b", 60000, &tb, err, sizeof(err)), 1);
    assert_int_equal(tb, ta + 1);
    /* a comes back with its old token: refused, whatever it believed. */
    assert_int_equal(lease_renew(c->a, "budget:coingecko", "a", ta, 60000, err, sizeof(err)), 0);
    assert_int_equal(lease_release(c->a, "budget:coingecko", "a", ta, err, sizeof(err)), 0);
    /* Even under b's name, an old token matches nothing. */
    assert_int_equal(lease_renew(c->a, "budget:coingecko", "b", ta, 60000, err, sizeof(err)), 0);
    struct lease_row row;
    assert_int_equal(lease_list(c->a, &row, 1, err, sizeof(err)), 1);
    assert_string_equal(row.holder, "b");
    assert_int_equal(row.token, tb);
    assert_true(row.expires_in_ms > 1000);

    /* Released, the lease is free at once: a takes it back with the next token. */
    assert_int_equal(lease_release(c->b, "budget:coingecko", "b", tb, err, sizeof(err)), 1);
    assert_int_equal(lease_acquire(c->a, "budget:coingecko", "a", 60000, &ta, err, sizeof(err)), 1);
    assert_int_equal(ta, tb + 1);
    assert_int_equal(lease_renew(c->b, "budget:coingecko", "b", tb, 60000, err, sizeof(err)), 0);
}

struct racer {
    MYSQL *conn;
    const char *holder;
    pthread_barrier_t *go;
    int rc;
    uint64_t token;
};

static void *race(void *arg)
{
    struct racer *r = arg;
    char err[512];
    mysql_thread_init();
    pthread_barrier_wait(r->go);
    r->rc = lease_acquire(r->conn, "job:race", r->holder, 60000, &r->token, err, sizeof(err));
    if (r->rc < 0)
        fprintf(stderr, "acquire: %s\n", err);
    mysql_thread_end();
    return NULL;
}

static void test_race_one_winner(void **state)
{
    struct ctx *c = *state;
    char err[512];
    assert_int_equal(lease_ensure(c->a, "job:race", err, sizeof(err)), 0);
    for (int round = 0; round < 20; round++) {
        pthread_barrier_t go;
        pthread_barrier_init(&go, NULL, 2);
        struct racer ra = {c->a, "a", &go, 0, 0}, rb = {c->b, "b", &go, 0, 0};
        pthread_t t1, t2;
        pthread_create(&t1, NULL, race, &ra);
        pthread_create(&t2, NULL, race, &rb);
        pthread_join(t1, NULL);
        pthread_join(t2, NULL);
        pthread_barrier_destroy(&go);
        assert_true(ra.rc >= 0 && rb.rc >= 0);
        assert_int_equal(ra.rc + rb.rc, 1);
        struct racer *w = ra.rc ? &ra : &rb;
        assert_int_equal(w->token, (uint64_t)round + 1);
        assert_int_equal(lease_release(w->conn, "job:race", w->holder, w->token, err, sizeof(err)),
                         1);
    }
}

/* ---- two cluster objects on one loop ------------------------------------------------------ */

struct watch {
    size_t job; /* the one job watched */
    int gained, lost;
    bool held;
};

static void on_change(void *arg, size_t job, size_t source, bool held)
{
    (void)source;
    struct watch *w = arg;
    if (job != w->job)
        return;
    if (held)
        w->gained++;
    else
        w->lost++;
    w->held = held;
}

struct until {
    uv_loop_t *loop;
    bool (*cond)(void *arg);
    void *arg;
    uint64_t deadline;
};

static void poll_cb(uv_timer_t *t)
{
    struct until *u = t->data;
    if (u->cond(u->arg) || util_mono_ms() > u->deadline)
        uv_stop(u->loop);
}

/* Runs the loop until cond holds (or a generous 30 s, which the caller then sees). */
static bool run_until(uv_loop_t *loop, bool (*cond)(void *arg), void *arg)
{
    struct until u = {loop, cond, arg, util_mono_ms() + 30000};
    uv_timer_t t;
    uv_timer_init(loop, &t);
    t.data = &u;
    uv_timer_start(&t, poll_cb, 20, 20);
    uv_run(loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&t, NULL);
    uv_run(loop, UV_RUN_NOWAIT);
    return cond(arg);
}

struct pair {
    struct cluster *a, *b;
    struct watch wa, wb;
    size_t job;
    bool a_stopped;
};

static bool one_holds(void *arg)
{
    struct pair *p = arg;
    return cluster_may_run(p->a, p->job) != cluster_may_run(p->b, p->job);
}

static bool b_holds(void *arg)
{
    struct pair *p = arg;
    return cluster_may_run(p->b, p->job);
}

static bool a_stopped(void *arg)
{
    return ((struct pair *)arg)->a_stopped;
}

static void stopped_cb(void *arg)
{
    *(bool *)arg = true;
}

static void test_cluster_standby_takes_over(void **state)
{
    struct ctx *c = *state;
    struct config *cfg = c->cfg;
    /* The tests above left budget:coingecko held for a minute. */
    assert_int_equal(testdb_exec(c->a, "DELETE FROM cluster_leases"), 0);
    cfg->cluster.enabled = true;
    /* A long margin (lease - renew): a loaded machine (valgrind, sanitizers) must not let a
     * holder's lease lapse locally while the test watches. */
    cfg->cluster.lease_ms = 5000;
    cfg->cluster.renew_ms = 250;
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct pair p = {0};
    p.job = (size_t)config_job_index(cfg, "prices");
    p.wa.job = p.wb.job = p.job;
    p.a = cluster_new(&loop, cfg, "inst-a", on_change, &p.wa);
    assert_non_null(p.a);
    assert_true(run_until(&loop, b_holds, &(struct pair){.b = p.a, .job = p.job}));
    p.b = cluster_new(&loop, cfg, "inst-b", on_change, &p.wb);
    assert_non_null(p.b);
    /* Several renew intervals: b stays a standby while a renews. */
    uint64_t t0 = util_mono_ms();
    while (util_mono_ms() - t0 < 1500) {
        assert_true(run_until(&loop, one_holds, &p));
        assert_true(cluster_may_run(p.a, p.job));
    }
    assert_int_equal(p.wb.gained, 0);
    json_t *j = cluster_json(p.b);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "instance")), "inst-b");
    json_t *leases = json_object_get(j, "leases");
    bool seen = false;
    for (size_t i = 0; i < json_array_size(leases); i++) {
        json_t *o = json_array_get(leases, i);
        if (strcmp(json_string_value(json_object_get(o, "name")), "job:prices") == 0) {
            assert_string_equal(json_string_value(json_object_get(o, "holder")), "inst-a");
            assert_false(json_is_true(json_object_get(o, "mine")));
            seen = true;
        }
    }
    assert_true(seen);
    json_decref(j);

    /* a stops (releasing its leases): b takes the job over. */
    cluster_stop(p.a, stopped_cb, &p.a_stopped);
    assert_true(run_until(&loop, a_stopped, &p));
    cluster_free(p.a);
    p.a = NULL;
    assert_true(run_until(&loop, b_holds, &p));
    assert_true(p.wb.gained >= 1);
    assert_true(p.wb.held);
    bool b_stopped = false;
    cluster_stop(p.b, stopped_cb, &b_stopped);
    while (!b_stopped)
        uv_run(&loop, UV_RUN_ONCE);
    cluster_free(p.b);
    assert_int_equal(uv_loop_close(&loop), 0);
    cfg->cluster.enabled = false;
}

/* ---- failover ----------------------------------------------------------------------------- */

static void test_hosts_failover(void **state)
{
    struct ctx *c = *state;
    struct cfg_database db;
    assert_int_equal(config_database_copy(&db, &c->cfg->database), 0);
    free(db.socket);
    db.socket = NULL;
    db.connect_timeout_ms = 1000;
    /* A free port where nothing listens, then the real server. */
    uv_loop_t loop;
    uv_loop_init(&loop);
    uv_tcp_t probe;
    uv_tcp_init(&loop, &probe);
    struct sockaddr_in sa;
    uv_ip4_addr("127.0.0.1", 0, &sa);
    assert_int_equal(uv_tcp_bind(&probe, (const struct sockaddr *)&sa, 0), 0);
    struct sockaddr_storage name;
    int len = sizeof(name);
    uv_tcp_getsockname(&probe, (struct sockaddr *)&name, &len);
    unsigned dead = ntohs(((struct sockaddr_in *)&name)->sin_port);
    uv_close((uv_handle_t *)&probe, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);

    char hosts[128], err[512];
    snprintf(hosts, sizeof(hosts), "127.0.0.1:%u, %s:%u", dead, db.host, db.port);
    db.hosts = strdup(hosts);
    MYSQL *conn = db_connect(&db, err, sizeof(err));
    if (!conn)
        fprintf(stderr, "db_connect: %s\n", err);
    assert_non_null(conn);
    mysql_close(conn);
    /* Only dead nodes: the message says so. */
    free(db.hosts);
    snprintf(hosts, sizeof(hosts), "127.0.0.1:%u", dead);
    db.hosts = strdup(hosts);
    assert_null(db_connect(&db, err, sizeof(err)));
    assert_non_null(strstr(err, "no node of [database] hosts answered (1 tried)"));
    config_database_clear(&db);
}

static void test_wsrep_error_classes(void **state)
{
    (void)state;
    assert_int_equal(db_error_class(ER_LOCK_DEADLOCK), DB_ERR_TRANSIENT); /* certification */
    assert_int_equal(db_error_class(ER_ERROR_DURING_COMMIT), DB_ERR_TRANSIENT);
    assert_int_equal(db_error_class(ER_LOCK_WAIT_TIMEOUT), DB_ERR_TRANSIENT);
    assert_int_equal(db_error_class(ER_QUERY_INTERRUPTED), DB_ERR_TRANSIENT);
    assert_int_equal(db_error_class(ER_UNKNOWN_COM_ERROR), DB_ERR_CONNECTION); /* not primary */
}

int main(void)
{
    if (!testdb_available()) {
        fprintf(stderr, "test_lease: no test database (COINGEST_TEST_DB_*); skipped\n");
        return TESTDB_SKIP;
    }
    if (db_library_init() != 0)
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_wsrep_error_classes),        cmocka_unit_test(test_one_holder),
        cmocka_unit_test(test_expiry_and_fencing),         cmocka_unit_test(test_race_one_winner),
        cmocka_unit_test(test_cluster_standby_takes_over), cmocka_unit_test(test_hosts_failover),
    };
    int rc = cmocka_run_group_tests(tests, setup, teardown);
    db_library_end();
    return rc;
}
