/*
 * lease: one row of cluster_leases as a lease with a fencing token (sql/007_cluster.sql).
 *
 * A lease is a named right to act (`job:prices`, `budget:coingecko`) that one instance holds
 * until a time the database keeps (expires_at, the database's own clock, so the instances'
 * clocks do not matter). Every operation is one conditional UPDATE in its own transaction:
 *
 *   acquire  holder := me, token := token + 1, expires_at := NOW + lease
 *            WHERE name AND expires_at <= NOW           (free, or its holder stopped renewing)
 *   renew    expires_at := NOW + lease  WHERE name AND holder = me AND token = mine
 *   release  expires_at := NOW          WHERE name AND holder = me AND token = mine
 *
 * The token is the fence: it grows by one at every takeover, so a holder that was away (a
 * pause, a partition) and comes back with an old token matches no row and learns that it lost
 * the lease; it can neither renew nor release what another instance now holds. Two instances
 * racing for a free lease both run the UPDATE; on one server InnoDB's row lock orders them
 * and the second finds the row taken, on Galera the second COMMIT fails certification
 * (ER_LOCK_DEADLOCK) -- either way one wins. GET_LOCK is not used: on Galera it is local to
 * one node.
 *
 * The caller keeps its own deadline as well: a lease renewed by a statement sent at local
 * monotonic time t is valid at most until t + lease (the database computed NOW after t), so
 * the holder stops acting by then even when it cannot reach the database to hear the answer.
 *
 * These are blocking calls on a connection the caller owns (autocommit on).
 * Thread: the thread that owns the connection.
 */
#ifndef COINGEST_LEASE_H
#define COINGEST_LEASE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <mysql.h>

#define LEASE_NAME_MAX   100 /* cluster_leases.name */
#define LEASE_HOLDER_MAX 128 /* cluster_leases.holder */

/* What the database says about a lease. */
struct lease_row {
    char name[LEASE_NAME_MAX + 1];
    char holder[LEASE_HOLDER_MAX + 1]; /* "" when never held */
    uint64_t token;
    int64_t expires_in_ms; /* from the database's now; <= 0: expired (free) */
};

/* Creates the lease's row when missing (INSERT IGNORE). 0, or -errno with the server's
 * message in err (db_error_code of its errno). */
int lease_ensure(MYSQL *conn, const char *name, char *err, size_t errlen);

/* Takes the lease for `holder` when it is free or expired. Returns 1 with the new token in
 * *token, 0 when another holder has it (or won the race: a certification failure is a lost
 * race), or -errno with the reason in err. */
int lease_acquire(MYSQL *conn, const char *name, const char *holder, uint64_t lease_ms,
                  uint64_t *token, char *err, size_t errlen);

/* Extends the lease `holder` holds with `token` to now + lease_ms. 1: renewed; 0: the lease is
 * no longer ours (another token, or another holder); -errno on a database error (the caller
 * does not know; its own deadline decides). */
int lease_renew(MYSQL *conn, const char *name, const char *holder, uint64_t token,
                uint64_t lease_ms, char *err, size_t errlen);

/* Ends the lease now if `holder` still holds it with `token`, so another instance may take it
 * over without waiting for it to expire. 1 released, 0 not ours, -errno. */
int lease_release(MYSQL *conn, const char *name, const char *holder, uint64_t token, char *err,
                  size_t errlen);

/* Reads every lease (up to cap rows, by name) into rows. Returns the count, or -errno. */
int lease_list(MYSQL *conn, struct lease_row *rows, size_t cap, char *err, size_t errlen);

#endif
