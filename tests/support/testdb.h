/*
 * testdb: gives a unit test a real MariaDB database of its own on the private server that
 * scripts/test starts (COINGEST_TEST_DB_* in the environment). No mocks: tests talk to a real
 * server. Each call creates a fresh database named after the test and the pid, so tests can
 * run in parallel; testdb_drop() removes it.
 */
#ifndef COINGEST_TESTDB_H
#define COINGEST_TESTDB_H

#include <stdbool.h>
#include <stddef.h>
#include <mysql.h>

#include "coingest/config.h"

/* Exit code CTest treats as "skipped" (SKIP_RETURN_CODE). */
#define TESTDB_SKIP 77

/* True when the environment names a test server. */
bool testdb_available(void);

/* Creates database `<prefix>_<pid>` (dropping a leftover one) and returns its name in
 * name (cap bytes). Returns a connection to it with time_zone '+00:00' and utf8mb4,
 * or NULL after printing why. */
MYSQL *testdb_create(const char *prefix, char *name, size_t cap);

/* Opens another connection to an existing test database. NULL after printing why. */
MYSQL *testdb_connect(const char *dbname);

/* Drops the database and closes the connection. */
void testdb_drop(MYSQL *conn, const char *name);

/* Fills cfg->database from the environment for database `name` (strings are malloc'd and
 * owned by cfg, as config_free expects). migrations_dir points at the source tree's sql/. */
void testdb_fill_config(struct config *cfg, const char *name);

/* Runs a query that returns one integer (e.g. SELECT COUNT(*)); -1 on error (printed). */
long long testdb_scalar(MYSQL *conn, const char *sql);

/* Runs a statement; 0 or -1 (printed). */
int testdb_exec(MYSQL *conn, const char *sql);

/* Reads a file from tests/fixtures (COINGEST_FIXTURES) into a malloc'd NUL-terminated
 * buffer; NULL after printing why. */
char *testdb_read_fixture(const char *relpath, size_t *len);

/* The same for tests/fixtures/<dir>/<name>, failing the test (cmocka) when it cannot be read. */
char *testdb_fixture(const char *dir, const char *name, size_t *len);

#endif
