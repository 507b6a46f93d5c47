/*
 * lease: the conditional UPDATEs of lease.h on one connection.
 *
 * Names and holders are short printable strings (the config checks instance names; lease
 * names are built from job and source names), escaped with mysql_real_escape_string all the
 * same. Each operation runs in its own transaction so that a certification failure on Galera
 * surfaces at its COMMIT, where it means "someone else won", never in a later statement.
 */
#include "coingest/lease.h"

#include <errno.h>
#include <inttypes.h>
#include <mysqld_error.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/db.h"

/* Statements here are short: names and holders are bounded, so is the SQL. */
#define LEASE_SQL_MAX 1024

static int fail(MYSQL *conn, const char *what, char *err, size_t errlen)
{
    unsigned no = mysql_errno(conn);
    snprintf(err, errlen, "%s: %s (%u)", what, mysql_error(conn), no);
    return db_error_code(no);
}

/* Escapes s (at most max bytes) into out, which holds 2 * max + 1 bytes. */
static int escape(MYSQL *conn, const char *s, size_t max, char *out, char *err, size_t errlen)
{
    size_t n = strlen(s);
    if (n == 0 || n > max) {
        snprintf(err, errlen, "lease name or holder \"%.40s\" is empty or longer than %zu", s, max);
        return -EINVAL;
    }
    mysql_real_escape_string(conn, out, s, (unsigned long)n);
    return 0;
}

/* Runs one statement and returns the rows it matched (>= 0) or -errno. An UPDATE's affected
 * rows count only the rows it changed, and a renewal within the same millisecond as the last
 * one changes nothing, so the count comes from the server's "Rows matched: N" info. */
static int64_t exec(MYSQL *conn, const char *sql, const char *what, char *err, size_t errlen)
{
    if (mysql_query(conn, sql))
        return fail(conn, what, err, errlen);
    const char *info = mysql_info(conn);
    unsigned long matched;
    if (info && sscanf(info, "Rows matched: %lu", &matched) == 1)
        return (int64_t)matched;
    return (int64_t)mysql_affected_rows(conn);
}

/* Ends a transaction begun by the caller: COMMIT, or ROLLBACK when rc < 0 already. A failed
 * COMMIT that is a lost race (deadlock, certification) returns 0 ("not ours"). */
static int finish(MYSQL *conn, int rc, const char *what, char *err, size_t errlen)
{
    if (rc < 0) {
        mysql_query(conn, "ROLLBACK");
        return rc;
    }
    if (mysql_query(conn, "COMMIT") == 0)
        return rc;
    unsigned no = mysql_errno(conn);
    int code = fail(conn, what, err, errlen);
    mysql_query(conn, "ROLLBACK");
    return db_error_class(no) == DB_ERR_TRANSIENT ? 0 : code;
}

int lease_ensure(MYSQL *conn, const char *name, char *err, size_t errlen)
{
    char en[2 * LEASE_NAME_MAX + 1], sql[LEASE_SQL_MAX];
    int rc = escape(conn, name, LEASE_NAME_MAX, en, err, errlen);
    if (rc)
        return rc;
    snprintf(sql, sizeof(sql), "INSERT IGNORE INTO cluster_leases (name) VALUES ('%s')", en);
    int64_t n = exec(conn, sql, "creating the lease row", err, errlen);
    return n < 0 ? (int)n : 0;
}

int lease_acquire(MYSQL *conn, const char *name, const char *holder, uint64_t lease_ms,
                  uint64_t *token, char *err, size_t errlen)
{
    char en[2 * LEASE_NAME_MAX + 1], eh[2 * LEASE_HOLDER_MAX + 1], sql[LEASE_SQL_MAX];
    int rc = escape(conn, name, LEASE_NAME_MAX, en, err, errlen);
    if (rc || (rc = escape(conn, holder, LEASE_HOLDER_MAX, eh, err, errlen)))
        return rc;
    if (mysql_query(conn, "START TRANSACTION"))
        return fail(conn, "acquiring a lease", err, errlen);
    snprintf(sql, sizeof(sql),
             "UPDATE cluster_leases SET holder = '%s', token = token + 1, "
             "expires_at = NOW(3) + INTERVAL %" PRIu64 " MICROSECOND, acquired_at = NOW(3), "
             "renewed_at = NOW(3) WHERE name = '%s' AND expires_at <= NOW(3)",
             eh, lease_ms * 1000, en);
    int64_t n = exec(conn, sql, "acquiring a lease", err, errlen);
    if (n < 0 && db_error_class(mysql_errno(conn)) == DB_ERR_TRANSIENT)
        n = 0; /* aborted by a conflicting write from another node: it won */
    rc = n < 0 ? (int)n : n > 0;
    if (rc == 1) {
        snprintf(sql, sizeof(sql), "SELECT token FROM cluster_leases WHERE name = '%s'", en);
        rc = -EIO;
        if (mysql_query(conn, sql) == 0) {
            MYSQL_RES *res = mysql_store_result(conn);
            MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
            if (row && row[0]) {
                *token = strtoull(row[0], NULL, 10);
                rc = 1;
            }
            mysql_free_result(res);
        }
        if (rc < 0)
            rc = fail(conn, "reading the lease's token", err, errlen);
    }
    return finish(conn, rc, "acquiring a lease", err, errlen);
}

/* renew and release: the same fenced UPDATE with another new expiry. */
static int fenced_update(MYSQL *conn, const char *name, const char *holder, uint64_t token,
                         const char *expires, const char *what, char *err, size_t errlen)
{
    char en[2 * LEASE_NAME_MAX + 1], eh[2 * LEASE_HOLDER_MAX + 1], sql[LEASE_SQL_MAX];
    int rc = escape(conn, name, LEASE_NAME_MAX, en, err, errlen);
    if (rc || (rc = escape(conn, holder, LEASE_HOLDER_MAX, eh, err, errlen)))
        return rc;
    if (mysql_query(conn, "START TRANSACTION"))
        return fail(conn, what, err, errlen);
    snprintf(sql, sizeof(sql),
             "UPDATE cluster_leases SET expires_at = %s, renewed_at = NOW(3) "
             "WHERE name = '%s' AND holder = '%s' AND token = %" PRIu64,
             expires, en, eh, token);
    int64_t n = exec(conn, sql, what, err, errlen);
    if (n < 0 && db_error_class(mysql_errno(conn)) == DB_ERR_TRANSIENT) {
        /* Not a verdict: a conflicting write aborted ours. The caller tries again. */
        mysql_query(conn, "ROLLBACK");
        return -EAGAIN;
    }
    rc = n < 0 ? (int)n : n > 0;
    rc = finish(conn, rc, what, err, errlen);
    return rc == 0 && n > 0 ? -EAGAIN : rc; /* a failed COMMIT of a match is no verdict */
}

int lease_renew(MYSQL *conn, const char *name, const char *holder, uint64_t token,
                uint64_t lease_ms, char *err, size_t errlen)
{
    char expires[64];
    snprintf(expires, sizeof(expires), "NOW(3) + INTERVAL %" PRIu64 " MICROSECOND",
             lease_ms * 1000);
    return fenced_update(conn, name, holder, token, expires, "renewing a lease", err, errlen);
}

int lease_release(MYSQL *conn, const char *name, const char *holder, uint64_t token, char *err,
                  size_t errlen)
{
    return fenced_update(conn, name, holder, token, "NOW(3)", "releasing a lease", err, errlen);
}

int lease_list(MYSQL *conn, struct lease_row *rows, size_t cap, char *err, size_t errlen)
{
    if (mysql_query(conn, "SELECT name, COALESCE(holder, ''), token, "
                          "TIMESTAMPDIFF(MICROSECOND, NOW(3), expires_at) DIV 1000 "
                          "FROM cluster_leases ORDER BY name"))
        return fail(conn, "reading the leases", err, errlen);
    MYSQL_RES *res = mysql_store_result(conn);
    if (!res)
        return fail(conn, "reading the leases", err, errlen);
    size_t n = 0;
    MYSQL_ROW row;
    while (n < cap && (row = mysql_fetch_row(res))) {
        struct lease_row *r = &rows[n++];
        snprintf(r->name, sizeof(r->name), "%s", row[0] ? row[0] : "");
        snprintf(r->holder, sizeof(r->holder), "%s", row[1] ? row[1] : "");
        r->token = row[2] ? strtoull(row[2], NULL, 10) : 0;
        r->expires_in_ms = row[3] ? strtoll(row[3], NULL, 10) : 0;
    }
    mysql_free_result(res);
    return (int)n;
}
