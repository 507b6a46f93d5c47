/*
 * db: one MariaDB/MySQL connection as coingest uses it, and schema migrations.
 *
 * db_connect() opens a connection with utf8mb4, time_zone '+00:00', strict sql_mode (so a
 * value that does not fit is an error, not a silent truncation), connect/read/write timeouts,
 * and reads max_allowed_packet. With `[database] hosts` it fails over between the nodes of a
 * cluster, and it refuses a Galera node that is not ready (docs/cluster.md). db_migrate() applies
 * the migrations sql/NNN_name.sql in order (compiled into the binary, or read from a directory that
 * overrides them), recording each in schema_migrations(version, name, checksum, applied_at); a
 * migration already applied whose checksum (SHA-256 of its text) changed is refused. Concurrent
 * migrators (several writers, several daemons) are serialised with GET_LOCK (per node on Galera:
 * docs/cluster.md says to run --migrate once there). Errors are converted
 * here, at the module edge, from mysql_errno into classes and -errno-style codes plus the server's
 * message.
 *
 * Thread: a connection belongs to one thread at a time. mysql_library_init must have been
 * called (db_library_init) before any thread uses the client library.
 */
#ifndef COINGEST_DB_H
#define COINGEST_DB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <mysql.h>

#include "coingest/config.h"

/* Calls mysql_library_init once; call on the main thread before starting any thread.
 * Returns 0 or -EIO. db_library_end() undoes it (at exit). */
int db_library_init(void);
void db_library_end(void);

/* Connects per cfg->database (socket when set, else host:port), sets the session up and
 * reads max_allowed_packet. Returns the connection (the caller closes it with mysql_close)
 * or NULL with the reason in err. Thread: any thread that called mysql_thread_init or the
 * main thread. */
MYSQL *db_connect(const struct cfg_database *db, char *err, size_t errlen);

/* As db_connect, with the read/write timeout of the connection set to rw_timeout_s seconds
 * (0: db_connect's own, at least 30 s): the lease client notices a dead node within a renew
 * interval. With `[database] hosts` set (and no socket), the nodes are tried in turn, starting
 * with the one that answered last in this process; a node that is up but not ready (Galera's
 * wsrep_ready is OFF) counts as down. */
MYSQL *db_connect_rw(const struct cfg_database *db, unsigned rw_timeout_s, char *err,
                     size_t errlen);

/* One migration compiled into the binary: sql/NNN_name.sql as it was at build time, its
 * file name and its exact bytes (NUL-terminated; len does not count the NUL). */
struct db_migration {
    const char *file;
    const char *text;
    size_t len;
};

/* The built-in migrations (generated from sql/ at build time into migrations.c by
 * cmake/embed_migrations.cmake), sorted by file name; *n gets their number. Static data.
 * Thread: any. */
const struct db_migration *db_builtin_migrations(size_t *n);

/* Where migrations come from, for messages: `dir`, or "built-in" when dir is NULL or "". */
const char *db_migrations_source(const char *dir);

/* Applies pending migrations: the files in `dir` when it is set (the [database]
 * migrations_dir override), the built-in ones when dir is NULL or "". Either way each is
 * recorded with the SHA-256 of its text, so a file and its built-in copy have one checksum.
 * Returns the number applied (>= 0) or a negative code with the reason in err: -EBADMSG when
 * an applied migration's checksum changed (the message names it), -ENOENT/-EINVAL for an
 * unreadable directory or a malformed file name, -EIO (or the db_error_code of the server
 * error) when a statement failed. */
int db_migrate(MYSQL *conn, const char *dir, char *err, size_t errlen);

/* Like db_migrate but applies nothing: returns the number of migrations not yet applied
 * (>= 0), or the same negative codes (a changed checksum is reported here too). */
int db_migrations_pending(MYSQL *conn, const char *dir, char *err, size_t errlen);

/* max_allowed_packet of the server, read by db_connect (bytes); 0 if unknown. */
uint64_t db_max_packet(MYSQL *conn);

/* What a failed statement means for the batch it carried. */
enum db_err_class {
    DB_ERR_CONNECTION = 0, /* the connection is gone or unusable: reconnect, retry the batch */
    DB_ERR_TRANSIENT = 1,  /* deadlock, lock wait timeout, read-only failover...: retry */
    DB_ERR_SCHEMA = 2,     /* missing table/column, no privilege: retry later, never blame rows */
    DB_ERR_PACKET = 3,     /* statement larger than max_allowed_packet: split it */
    DB_ERR_ROW = 4,        /* some row's value is refused for good (too long, bad JSON...) */
};

/* The class of a mysql_errno (unknown codes count as DB_ERR_ROW: bisecting then finds out). */
enum db_err_class db_error_class(unsigned int err);

/* Is this mysql_errno a lost-connection/server-gone/deadlock/lock-wait error worth retrying
 * (as opposed to a row the server rejects for good)? True for the CONNECTION, TRANSIENT and
 * SCHEMA classes. */
int db_error_is_transient(unsigned int err);

/* A negative errno for a mysql_errno: -ECONNREFUSED (connection), -EDEADLK (deadlock),
 * -ETIMEDOUT (lock wait), -EACCES (privileges), -ENOENT (schema), -EMSGSIZE (packet),
 * -EINVAL (row), -EIO (anything else). */
int db_error_code(unsigned int err);

/* A short label for metrics: "connection", "deadlock", "lock_wait", "schema", "packet",
 * "row" or "other". */
const char *db_error_reason(unsigned int err);

/* Formats ms since the epoch as a DATETIME(3) literal body, 2025-02-09 17:44:07.123 (UTC),
 * into buf (at least 32 bytes). Years outside 0..9999 are printed as they are (the server
 * refuses them). Thread: any. */
void db_format_time(int64_t wall_ms, char *buf, size_t cap);

#endif
