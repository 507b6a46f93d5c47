/*
 * db: one MariaDB/MySQL connection as coingest uses it, and schema migrations.
 *
 * db_connect() opens a connection with utf8mb4, time_zone '+00:00', a connect timeout, and
 * reads max_allowed_packet. db_migrate() applies sql/NNN_name.sql files in order, recording
 * each in schema_migrations(version, name, checksum, applied_at); a file already applied
 * whose checksum changed is refused. Errors are converted here, at the module edge, from
 * mysql_errno into -errno-style codes plus the server's message.
 *
 * Thread: a connection belongs to one thread at a time. mysql_library_init must have been
 * called (db_library_init) before any thread uses the client library.
 */
#ifndef COINGEST_DB_H
#define COINGEST_DB_H

#include <stddef.h>
#include <stdint.h>
#include <mysql.h>

#include "coingest/config.h"

/* Calls mysql_library_init once; call on the main thread before starting any thread. */
int db_library_init(void);
void db_library_end(void);

/* Connects per cfg->database. Returns the connection or NULL with the reason in err. */
MYSQL *db_connect(const struct config *cfg, char *err, size_t errlen);

/* Applies pending migrations from `dir`. Returns the number applied (>= 0) or a negative
 * code with the reason in err (a changed checksum names the file). */
int db_migrate(MYSQL *conn, const char *dir, char *err, size_t errlen);

/* max_allowed_packet read at connect (bytes). */
uint64_t db_max_packet(MYSQL *conn);

/* Is this mysql_errno a lost-connection/server-gone/deadlock/lock-wait error worth retrying
 * (as opposed to a row the server rejects for good)? */
int db_error_is_transient(unsigned int err);

#endif
