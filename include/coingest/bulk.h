/*
 * bulk: the binary write path for upsert batches. Rows go to the server through one prepared
 * `INSERT ... VALUES (?,...,?) ON DUPLICATE KEY UPDATE ...` per spec and connection, executed
 * with MariaDB Connector/C's array binding (mysql_stmt_attr_set STMT_ATTR_ARRAY_SIZE, which
 * sends COM_STMT_BULK_EXECUTE): many rows per round trip, each value in its binary form.
 * Doubles travel as their 8 bytes (never through text), integers as 8 bytes, times as
 * MYSQL_TIME, strings and JSON as counted bytes in the connection's character set (utf8mb4),
 * NULL as an indicator. The server parses the statement once per connection.
 *
 * A range of rows is cut into executions by two rules: the estimated bytes of one execution
 * stay under the caller's cap (batch_bytes and max_allowed_packet), and each column keeps one
 * binary type within an execution (a column whose rows mix, say, integers and doubles starts a
 * new execution where the type changes; NULL fits any type).
 *
 * Array binding needs a MariaDB server (10.2 and later); bulk_supported() tells, and the sink
 * keeps its SQL text path for the others (MySQL).
 *
 * Thread: a struct bulk belongs to one connection and is used by the thread that owns it.
 */
#ifndef COINGEST_BULK_H
#define COINGEST_BULK_H

#include <mysql.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

struct bulk;

/* An empty set of statements and buffers; NULL on OOM. */
struct bulk *bulk_new(void);

/* Closes every prepared statement (call it before the connection they belong to is closed)
 * and keeps the buffers for the next connection. NULL is a no-op. */
void bulk_forget(struct bulk *k);

/* Closes the statements and frees everything; NULL is a no-op. */
void bulk_free(struct bulk *k);

/* Does the server at the other end of conn take array binding (a MariaDB server that
 * announces bulk operations)? */
bool bulk_supported(MYSQL *conn);

/* Writes rows [lo, hi) of an upsert batch on conn, inside the caller's transaction (no
 * commit, no rollback here). Each execution's estimated size stays under `cap` bytes; a row
 * that alone would exceed `hard` is refused. Returns 0; -ENOMEM; -E2BIG (one row too big,
 * message in err); -ENOTSUP (the spec's statement cannot take this path: use SQL text, nothing
 * was sent); or -EIO with the server's (or client library's) error number in *err_no
 * and its message in err. */
int bulk_upsert(struct bulk *k, MYSQL *conn, const struct batch *b, uint32_t lo, uint32_t hi,
                uint64_t cap, uint64_t hard, unsigned *err_no, char *err, size_t errlen);

#endif
