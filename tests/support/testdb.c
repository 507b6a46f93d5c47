/*
 * testdb: real databases for unit tests on the private MariaDB of scripts/test.
 */
#include "testdb.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

static const char *env(const char *k, const char *dflt)
{
    const char *v = getenv(k);
    return v && *v ? v : dflt;
}

bool testdb_available(void)
{
    return getenv("COINGEST_TEST_DB_SOCKET") || getenv("COINGEST_TEST_DB_PORT");
}

static MYSQL *open_conn(const char *db)
{
    MYSQL *c = mysql_init(NULL);
    if (!c)
        return NULL;
    const char *sock = getenv("COINGEST_TEST_DB_SOCKET");
    unsigned port = (unsigned)atoi(env("COINGEST_TEST_DB_PORT", "3306"));
    mysql_options(c, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    mysql_options(c, MYSQL_INIT_COMMAND, "SET time_zone = '+00:00'");
    if (!mysql_real_connect(c, sock ? NULL : env("COINGEST_TEST_DB_HOST", "127.0.0.1"),
                            env("COINGEST_TEST_DB_USER", "coingest"),
                            env("COINGEST_TEST_DB_PASSWORD", "coingest"), db, port, sock, 0)) {
        fprintf(stderr, "testdb: connect: %s\n", mysql_error(c));
        mysql_close(c);
        return NULL;
    }
    return c;
}

MYSQL *testdb_create(const char *prefix, char *name, size_t cap)
{
    snprintf(name, cap, "%s_%ld", prefix, (long)getpid());
    MYSQL *c = open_conn(NULL);
    if (!c)
        return NULL;
    char sql[512];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS `%s`", name);
    if (testdb_exec(c, sql))
        goto fail;
    snprintf(sql, sizeof(sql),
             "CREATE DATABASE `%s` CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci", name);
    if (testdb_exec(c, sql))
        goto fail;
    if (mysql_select_db(c, name)) {
        fprintf(stderr, "testdb: select %s: %s\n", name, mysql_error(c));
        goto fail;
    }
    return c;
fail:
    mysql_close(c);
    return NULL;
}

MYSQL *testdb_connect(const char *dbname)
{
    return open_conn(dbname);
}

void testdb_drop(MYSQL *conn, const char *name)
{
    if (!conn)
        return;
    char sql[512];
    snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS `%s`", name);
    testdb_exec(conn, sql);
    mysql_close(conn);
}

static void set_str(char **dst, const char *v)
{
    free(*dst);
    *dst = v ? strdup(v) : NULL;
}

void testdb_fill_config(struct config *cfg, const char *name)
{
    const char *sock = getenv("COINGEST_TEST_DB_SOCKET");
    set_str(&cfg->database.host, env("COINGEST_TEST_DB_HOST", "127.0.0.1"));
    cfg->database.port = (unsigned)atoi(env("COINGEST_TEST_DB_PORT", "3306"));
    set_str(&cfg->database.socket, sock);
    set_str(&cfg->database.user, env("COINGEST_TEST_DB_USER", "coingest"));
    set_str(&cfg->database.password, env("COINGEST_TEST_DB_PASSWORD", "coingest"));
    set_str(&cfg->database.database, name);
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/sql", env("COINGEST_SOURCE_DIR", "."));
    set_str(&cfg->database.migrations_dir, dir);
}

long long testdb_scalar(MYSQL *conn, const char *sql)
{
    if (mysql_query(conn, sql)) {
        fprintf(stderr, "testdb: %s: %s\n", sql, mysql_error(conn));
        return -1;
    }
    MYSQL_RES *res = mysql_store_result(conn);
    if (!res)
        return -1;
    MYSQL_ROW row = mysql_fetch_row(res);
    long long v = row && row[0] ? atoll(row[0]) : -1;
    mysql_free_result(res);
    return v;
}

int testdb_exec(MYSQL *conn, const char *sql)
{
    if (mysql_query(conn, sql)) {
        fprintf(stderr, "testdb: %s: %s\n", sql, mysql_error(conn));
        return -1;
    }
    return 0;
}

char *testdb_read_fixture(const char *relpath, size_t *len)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", env("COINGEST_FIXTURES", "tests/fixtures"), relpath);
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        return NULL;
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) {
        buf[n] = '\0';
        if (len)
            *len = (size_t)n;
    }
    return buf;
}

char *testdb_fixture(const char *dir, const char *name, size_t *len)
{
    char rel[256];
    snprintf(rel, sizeof(rel), "%s/%s", dir, name);
    char *buf = testdb_read_fixture(rel, len);
    assert_non_null(buf);
    return buf;
}
