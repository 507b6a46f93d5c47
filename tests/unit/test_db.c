/*
 * test_db: connections and migrations against a real MariaDB (tests/support/testdb.h).
 *
 * Migration files are written into a fresh temp directory per test. Each file appends a row to
 * a `trail` table, so the order in which files ran is visible in the database; versions 1, 9
 * and 10 make numeric order differ from the names' lexical order. A file that depends on the
 * one before it fails if run out of order.
 *
 * The migrations compiled into the binary are checked against sql/ (names, order, text), and
 * a database migrated from them is current for the files and the other way round.
 */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>
#include <errmsg.h>
#include <mysqld_error.h>

#include "coingest/config.h"
#include "coingest/db.h"
#include "testdb.h"

struct ctx {
    char db[128];
    char dir[128];
    MYSQL *admin; /* the test's own connection (testdb) */
    MYSQL *conn;  /* a db_connect connection */
    struct config *cfg;
};

static void write_file(const char *dir, const char *name, const char *text)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void remove_file(const char *dir, const char *name)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    unlink(path);
}

static int setup(void **state)
{
    struct ctx *c = calloc(1, sizeof(*c));
    c->admin = testdb_create("test_db", c->db, sizeof(c->db));
    if (!c->admin)
        return -1;
    c->cfg = config_defaults();
    testdb_fill_config(c->cfg, c->db);
    char err[512];
    c->conn = db_connect(&c->cfg->database, err, sizeof(err));
    if (!c->conn) {
        fprintf(stderr, "db_connect: %s\n", err);
        return -1;
    }
    snprintf(c->dir, sizeof(c->dir), "/tmp/test_db.XXXXXX");
    if (!mkdtemp(c->dir))
        return -1;
    *state = c;
    return 0;
}

static int teardown(void **state)
{
    struct ctx *c = *state;
    char cmd[256];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "cleanup of %s failed\n", c->dir);
    mysql_close(c->conn);
    testdb_drop(c->admin, c->db);
    config_free(c->cfg);
    free(c);
    return 0;
}

static const char *m1 = "-- first; with a semicolon in a comment\n"
                        "CREATE TABLE trail (n INT AUTO_INCREMENT PRIMARY KEY, v INT NOT NULL,"
                        " note VARCHAR(64) COMMENT 'a; b');\n"
                        "CREATE TABLE t1 (id INT PRIMARY KEY);\n"
                        "INSERT INTO trail (v) VALUES (1);\n";
static const char *m9 = "CREATE TABLE t9 (id INT PRIMARY KEY);\n"
                        "INSERT INTO t9 SELECT id FROM t1;\n"
                        "INSERT INTO trail (v, note) VALUES (9, 'semi;colon');\n";
static const char *m10 = "CREATE TABLE t10 AS SELECT * FROM t9;\n"
                         "INSERT INTO trail (v) VALUES (10);\n";

static void write_three(struct ctx *c)
{
    write_file(c->dir, "1_first.sql", m1);
    write_file(c->dir, "9_second.sql", m9);
    write_file(c->dir, "10_third.sql", m10);
}

static void test_connect(void **state)
{
    struct ctx *c = *state;
    assert_int_equal(testdb_scalar(c->conn, "SELECT @@session.time_zone = '+00:00'"), 1);
    assert_int_equal(testdb_scalar(c->conn, "SELECT FIND_IN_SET('STRICT_ALL_TABLES',"
                                            " @@session.sql_mode) > 0"),
                     1);
    assert_int_equal(testdb_scalar(c->conn, "SELECT FIND_IN_SET('NO_BACKSLASH_ESCAPES',"
                                            " @@session.sql_mode)"),
                     0);
    assert_int_equal(testdb_scalar(c->conn, "SELECT @@character_set_connection = 'utf8mb4'"), 1);
    long long pkt = testdb_scalar(c->conn, "SELECT @@max_allowed_packet");
    assert_true(pkt > 0);
    assert_int_equal((long long)db_max_packet(c->conn), pkt);
    /* UTC: NOW() and UTC_TIMESTAMP() agree in this session. */
    assert_int_equal(testdb_scalar(c->conn, "SELECT ABS(TIMESTAMPDIFF(SECOND, NOW(),"
                                            " UTC_TIMESTAMP())) < 5"),
                     1);
}

static void test_connect_fails(void **state)
{
    struct ctx *c = *state;
    struct config *bad = config_defaults();
    testdb_fill_config(bad, c->db);
    free(bad->database.socket);
    bad->database.socket = NULL;
    free(bad->database.host);
    bad->database.host = strdup("127.0.0.1");
    bad->database.port = 1; /* nothing listens there */
    bad->database.connect_timeout_ms = 1000;
    char err[512] = "";
    MYSQL *m = db_connect(&bad->database, err, sizeof(err));
    assert_null(m);
    assert_non_null(strstr(err, "127.0.0.1:1"));
    config_free(bad);

    bad = config_defaults();
    testdb_fill_config(bad, c->db);
    free(bad->database.password);
    bad->database.password = strdup("wrong");
    m = db_connect(&bad->database, err, sizeof(err));
    assert_null(m);
    assert_non_null(strstr(err, "1045"));
    config_free(bad);
}

static void test_error_classes(void **state)
{
    (void)state;
    assert_int_equal(db_error_class(CR_SERVER_LOST), DB_ERR_CONNECTION);
    assert_int_equal(db_error_class(CR_SERVER_GONE_ERROR), DB_ERR_CONNECTION);
    assert_int_equal(db_error_class(CR_CONN_HOST_ERROR), DB_ERR_CONNECTION);
    assert_int_equal(db_error_class(ER_SERVER_SHUTDOWN), DB_ERR_CONNECTION);
    assert_int_equal(db_error_class(ER_LOCK_DEADLOCK), DB_ERR_TRANSIENT);
    assert_int_equal(db_error_class(ER_LOCK_WAIT_TIMEOUT), DB_ERR_TRANSIENT);
    assert_int_equal(db_error_class(ER_NO_SUCH_TABLE), DB_ERR_SCHEMA);
    assert_int_equal(db_error_class(ER_NET_PACKET_TOO_LARGE), DB_ERR_PACKET);
    assert_int_equal(db_error_class(ER_DATA_TOO_LONG), DB_ERR_ROW);
    assert_int_equal(db_error_class(ER_CONSTRAINT_FAILED), DB_ERR_ROW);
    assert_int_equal(db_error_class(ER_TRUNCATED_WRONG_VALUE_FOR_FIELD), DB_ERR_ROW);
    assert_true(db_error_is_transient(CR_SERVER_LOST));
    assert_true(db_error_is_transient(ER_LOCK_DEADLOCK));
    assert_true(db_error_is_transient(ER_LOCK_WAIT_TIMEOUT));
    assert_false(db_error_is_transient(ER_DATA_TOO_LONG));
    assert_int_equal(db_error_code(ER_LOCK_DEADLOCK), -EDEADLK);
    assert_int_equal(db_error_code(ER_DATA_TOO_LONG), -EINVAL);
    assert_string_equal(db_error_reason(ER_LOCK_WAIT_TIMEOUT), "lock_wait");
    assert_string_equal(db_error_reason(CR_SERVER_LOST), "connection");

    char buf[32];
    db_format_time(1739122947123, buf, sizeof(buf));
    assert_string_equal(buf, "2025-02-09 17:42:27.123");
    db_format_time(-1, buf, sizeof(buf));
    assert_string_equal(buf, "1969-12-31 23:59:59.999");
    db_format_time(0, buf, sizeof(buf));
    assert_string_equal(buf, "1970-01-01 00:00:00.000");
}

static void test_migrate_order(void **state)
{
    struct ctx *c = *state;
    write_three(c);
    char err[1024] = "";
    assert_int_equal(db_migrations_pending(c->conn, c->dir, err, sizeof(err)), 3);
    int n = db_migrate(c->conn, c->dir, err, sizeof(err));
    if (n < 0)
        fprintf(stderr, "%s\n", err);
    assert_int_equal(n, 3);
    /* Numeric order: 1, 9, 10. */
    assert_int_equal(testdb_scalar(c->admin, "SELECT GROUP_CONCAT(v ORDER BY n) = '1,9,10'"
                                             " FROM trail"),
                     1);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM schema_migrations"), 3);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM schema_migrations WHERE"
                                             " version = 9 AND name = 'second' AND"
                                             " LENGTH(checksum) = 64 AND applied_at IS NOT NULL"),
                     1);
    /* The stored checksum is the SHA-256 of the file. */
    assert_int_equal(testdb_scalar(c->admin, "SELECT checksum = SHA2(CONCAT("
                                             "'CREATE TABLE t10 AS SELECT * FROM t9;', CHAR(10),"
                                             " 'INSERT INTO trail (v) VALUES (10);', CHAR(10)),"
                                             " 256) FROM schema_migrations WHERE version = 10"),
                     1);
    assert_int_equal(testdb_scalar(c->admin, "SELECT note = 'semi;colon' FROM trail WHERE v = 9"),
                     1);
    assert_int_equal(db_migrations_pending(c->conn, c->dir, err, sizeof(err)), 0);
}

static void test_migrate_idempotent(void **state)
{
    struct ctx *c = *state;
    write_three(c);
    char err[1024];
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 3);
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 0);
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 0);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM trail"), 3);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM schema_migrations"), 3);
    /* A new file is picked up and applied alone. */
    write_file(c->dir, "11_fourth.sql", "INSERT INTO trail (v) VALUES (11);");
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 1);
    assert_int_equal(testdb_scalar(c->admin, "SELECT GROUP_CONCAT(v ORDER BY n) = '1,9,10,11'"
                                             " FROM trail"),
                     1);
}

static void test_checksum_refused(void **state)
{
    struct ctx *c = *state;
    write_three(c);
    char err[1024] = "";
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 3);
    /* Someone edits an applied file and adds a new one. */
    write_file(c->dir, "9_second.sql", "CREATE TABLE t9 (id BIGINT PRIMARY KEY);\n");
    write_file(c->dir, "12_new.sql", "INSERT INTO trail (v) VALUES (12);\n");
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "9_second.sql"));
    assert_non_null(strstr(err, "changed"));
    /* Nothing after the refused file ran. */
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM trail WHERE v = 12"), 0);
    err[0] = '\0';
    assert_int_equal(db_migrations_pending(c->conn, c->dir, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "9_second.sql"));
    /* Restoring the file makes it acceptable again. */
    write_file(c->dir, "9_second.sql", m9);
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), 1);
}

static void test_bad_files(void **state)
{
    struct ctx *c = *state;
    char err[1024] = "";
    write_file(c->dir, "readme.sql", "SELECT 1;");
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "readme.sql"));
    remove_file(c->dir, "readme.sql");
    write_file(c->dir, "1_a.sql", "CREATE TABLE a (x INT);");
    write_file(c->dir, "001_b.sql", "CREATE TABLE b (x INT);");
    assert_int_equal(db_migrate(c->conn, c->dir, err, sizeof(err)), -EINVAL);
    assert_non_null(strstr(err, "same version"));
    remove_file(c->dir, "001_b.sql");
    /* A failing statement names the file and the statement, and is not recorded. */
    write_file(c->dir, "2_broken.sql", "CREATE TABLE ok2 (x INT);\nCREATE TABLE nope (;\n");
    int rc = db_migrate(c->conn, c->dir, err, sizeof(err));
    assert_true(rc < 0);
    assert_non_null(strstr(err, "2_broken.sql"));
    assert_non_null(strstr(err, "statement 2"));
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM schema_migrations"), 1);
    /* The connection is still usable after the failure. */
    assert_int_equal(mysql_query(c->conn, "SELECT 1"), 0);
    mysql_free_result(mysql_store_result(c->conn));
    /* A missing directory. */
    assert_int_equal(db_migrate(c->conn, "/nonexistent/coingest-sql", err, sizeof(err)), -ENOENT);
}

static void test_real_schema(void **state)
{
    struct ctx *c = *state;
    char err[1024] = "";
    const char *dir = c->cfg->database.migrations_dir;
    int n = db_migrate(c->conn, dir, err, sizeof(err));
    if (n < 0)
        fprintf(stderr, "%s\n", err);
    assert_true(n >= 1);
    static const char *tables[] = {"assets",           "prices",        "market_snapshots",
                                   "global_snapshots", "categories",    "asset_categories",
                                   "job_runs",         "rejected_rows", "schema_migrations"};
    for (size_t i = 0; i < sizeof(tables) / sizeof(tables[0]); i++) {
        char sql[256];
        snprintf(sql, sizeof(sql),
                 "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema ="
                 " DATABASE() AND table_name = '%s' AND engine = 'InnoDB' AND"
                 " table_collation LIKE 'utf8mb4%%'",
                 tables[i]);
        assert_int_equal(testdb_scalar(c->admin, sql), 1);
    }
    /* Every time column is DATETIME(3). */
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM information_schema.columns"
                                             " WHERE table_schema = DATABASE() AND"
                                             " data_type = 'datetime' AND datetime_precision"
                                             " <> 3"),
                     0);
    assert_int_equal(db_migrate(c->conn, dir, err, sizeof(err)), 0);
    assert_int_equal(db_migrations_pending(c->conn, dir, err, sizeof(err)), 0);
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The migrations compiled into the binary are sql/'s files: the same names in the same order
 * (by name), byte for byte the same text. Read here with plain stdio, not with db.c. */
static void test_builtin_matches_sql_dir(void **state)
{
    (void)state;
    const char *src = getenv("COINGEST_SOURCE_DIR");
    if (!src)
        skip(); /* run through ctest, which sets it */
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/sql", src);
    DIR *d = opendir(dir);
    assert_non_null(d);
    char *names[256];
    size_t n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l > 4 && strcmp(de->d_name + l - 4, ".sql") == 0) {
            assert_true(n < 256);
            names[n++] = strdup(de->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof(names[0]), cmp_names);
    size_t nb = 0;
    const struct db_migration *b = db_builtin_migrations(&nb);
    assert_true(n >= 1);
    assert_int_equal(nb, n);
    for (size_t i = 0; i < n; i++) {
        assert_string_equal(b[i].file, names[i]);
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        FILE *f = fopen(path, "rb");
        assert_non_null(f);
        fseek(f, 0, SEEK_END);
        long len = ftell(f);
        rewind(f);
        char *text = malloc((size_t)len + 1);
        assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
        fclose(f);
        if (b[i].len != (size_t)len || memcmp(b[i].text, text, (size_t)len) != 0)
            fail_msg("built-in %s differs from %s (rebuild?)", b[i].file, path);
        assert_int_equal(b[i].text[b[i].len], '\0');
        free(text);
        free(names[i]);
    }
}

/* No migrations_dir (NULL or "") means the built-in list; a database migrated from it is
 * current for sql/'s files and the other way round: the checksums are the same. */
static void test_builtin_migrate(void **state)
{
    struct ctx *c = *state;
    char err[1024] = "";
    const char *files = c->cfg->database.migrations_dir; /* the source tree's sql/ */
    size_t nb = 0;
    db_builtin_migrations(&nb);
    assert_int_equal(db_migrations_pending(c->conn, NULL, err, sizeof(err)), (int)nb);
    int n = db_migrate(c->conn, NULL, err, sizeof(err));
    if (n < 0)
        fail_msg("built-in migrations: %s", err);
    assert_int_equal(n, (int)nb);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM schema_migrations"), (int)nb);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM information_schema.tables"
                                             " WHERE table_schema = DATABASE() AND"
                                             " table_name = 'prices'"),
                     1);
    assert_int_equal(db_migrations_pending(c->conn, "", err, sizeof(err)), 0);
    assert_int_equal(db_migrations_pending(c->conn, files, err, sizeof(err)), 0);
    assert_int_equal(db_migrate(c->conn, files, err, sizeof(err)), 0);
    assert_string_equal(db_migrations_source(NULL), "built-in");
    assert_string_equal(db_migrations_source(""), "built-in");
    assert_string_equal(db_migrations_source(files), files);
}

/* A database migrated from the files is current for the built-in list. */
static void test_files_then_builtin(void **state)
{
    struct ctx *c = *state;
    char err[1024] = "";
    const char *files = c->cfg->database.migrations_dir;
    int n = db_migrate(c->conn, files, err, sizeof(err));
    if (n < 0)
        fail_msg("%s: %s", files, err);
    assert_true(n >= 1);
    assert_int_equal(db_migrations_pending(c->conn, NULL, err, sizeof(err)), 0);
    assert_int_equal(db_migrate(c->conn, NULL, err, sizeof(err)), 0);
    /* A changed built-in text would be refused like a changed file, naming it. */
    assert_int_equal(
        mysql_query(c->conn, "UPDATE schema_migrations SET checksum = REPEAT('0', 64)"), 0);
    mysql_commit(c->conn);
    assert_int_equal(db_migrations_pending(c->conn, NULL, err, sizeof(err)), -EBADMSG);
    assert_non_null(strstr(err, "built-in 001_"));
}

struct migrator {
    MYSQL *conn;
    const char *dir;
    int rc;
    char err[1024];
};

static void *migrate_thread(void *arg)
{
    struct migrator *m = arg;
    mysql_thread_init();
    m->rc = db_migrate(m->conn, m->dir, m->err, sizeof(m->err));
    mysql_thread_end();
    return NULL;
}

static void test_concurrent_migrators(void **state)
{
    struct ctx *c = *state;
    write_three(c);
    /* Two connections migrate the same directory at once: the lock makes one apply all three
     * and the other find nothing left to do. */
    char err[1024];
    struct migrator m[2] = {
        {.conn = c->conn, .dir = c->dir},
        {.conn = db_connect(&c->cfg->database, err, sizeof(err)), .dir = c->dir}};
    assert_non_null(m[1].conn);
    pthread_t t[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&t[i], NULL, migrate_thread, &m[i]), 0);
    for (int i = 0; i < 2; i++)
        pthread_join(t[i], NULL);
    assert_true(m[0].rc >= 0 && m[1].rc >= 0);
    assert_int_equal(m[0].rc + m[1].rc, 3);
    assert_int_equal(testdb_scalar(c->admin, "SELECT COUNT(*) FROM trail"), 3);
    mysql_close(m[1].conn);
}

int main(void)
{
    if (!testdb_available()) {
        fprintf(stderr, "test_db: no test database (COINGEST_TEST_DB_*); skipped\n");
        return TESTDB_SKIP;
    }
    if (db_library_init())
        return 1;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_connect, setup, teardown),
        cmocka_unit_test_setup_teardown(test_connect_fails, setup, teardown),
        cmocka_unit_test(test_error_classes),
        cmocka_unit_test_setup_teardown(test_migrate_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_migrate_idempotent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_checksum_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_bad_files, setup, teardown),
        cmocka_unit_test_setup_teardown(test_real_schema, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_migrators, setup, teardown),
        cmocka_unit_test(test_builtin_matches_sql_dir),
        cmocka_unit_test_setup_teardown(test_builtin_migrate, setup, teardown),
        cmocka_unit_test_setup_teardown(test_files_then_builtin, setup, teardown),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    db_library_end();
    return rc;
}
