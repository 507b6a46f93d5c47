/*
 * db: connections and migrations.
 *
 * A connection is set up the same way everywhere (writers, --migrate, tests): utf8mb4, UTC
 * session time zone, strict sql_mode without NO_BACKSLASH_ESCAPES (so mysql_real_escape_string
 * output means what it says), timeouts so a dead server is noticed, and the server's
 * max_allowed_packet, which db_connect() stores in the connection's own option of that name
 * (the client must not send more than the server takes anyway) for db_max_packet(). With
 * `[database] hosts`, the nodes are tried in turn from the one that answered last in the
 * process; a Galera node with wsrep_on but not wsrep_ready (outside the primary component, or
 * joining) counts as down, since it would answer every statement with error 1047.
 *
 * Migrations are named NNN_name.sql and applied in numeric order, each as one multi-statement
 * query (the server splits it, so semicolons inside string literals and comments are no
 * trouble) and then recorded in schema_migrations with the SHA-256 of its text, computed by
 * the server's SHA2() so no crypto library is needed. They come compiled into the binary
 * (sql/ at build time, db_builtin_migrations() in the generated migrations.c) unless a
 * directory is given, whose files are read instead: the text, hence the checksum, of a file
 * and of its built-in copy is the same, so a database migrated one way is current the other. DDL is
 * not transactional in MySQL, so files must be safe to re-run after a failure halfway (CREATE TABLE
 * IF NOT EXISTS...). GET_LOCK serialises migrators across connections and processes.
 */
#include "coingest/db.h"

#include <dirent.h>
#include <errno.h>
#include <errmsg.h>
#include <inttypes.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coingest/log.h"

#define MIGRATE_LOCK        "coingest.migrate"
#define MIGRATE_LOCK_WAIT_S 120

/* --- library ------------------------------------------------------------------------------ */

static pthread_once_t lib_once = PTHREAD_ONCE_INIT;
static int lib_rc;

static void lib_init(void)
{
    lib_rc = mysql_library_init(0, NULL, NULL) ? -EIO : 0;
}

int db_library_init(void)
{
    pthread_once(&lib_once, lib_init);
    return lib_rc;
}

void db_library_end(void)
{
    mysql_library_end();
}

/* --- errors ------------------------------------------------------------------------------- */

/* Codes that only MySQL has (its headers are not always the ones installed). */
#define MYSQL_ER_INVALID_JSON_TEXT         3140
#define MYSQL_ER_CHECK_CONSTRAINT_VIOLATED 3819
#define MYSQL_ER_READ_ONLY_TRANSACTION     1792

enum db_err_class db_error_class(unsigned int err)
{
    switch (err) {
    case ER_NET_PACKET_TOO_LARGE:
    case CR_NET_PACKET_TOO_LARGE:
        return DB_ERR_PACKET;
    case CR_COMMANDS_OUT_OF_SYNC:
    case ER_SERVER_SHUTDOWN:
    case ER_CONNECTION_KILLED:
    case ER_CON_COUNT_ERROR:
    case ER_TOO_MANY_USER_CONNECTIONS:
    case ER_ABORTING_CONNECTION:
    case ER_NEW_ABORTING_CONNECTION:
    case ER_NET_READ_ERROR:
    case ER_NET_READ_INTERRUPTED:
    case ER_NET_ERROR_ON_WRITE:
    case ER_NET_WRITE_INTERRUPTED:
    case ER_NET_READ_ERROR_FROM_PIPE:
    case ER_ACCESS_DENIED_ERROR:
    case ER_BAD_DB_ERROR:
    case ER_HOST_IS_BLOCKED:
    case ER_HOST_NOT_PRIVILEGED:
    /* Galera: "WSREP has not yet prepared node for application use" -- the node left the
     * primary component or is still joining. Another node may serve: reconnect. */
    case ER_UNKNOWN_COM_ERROR:
        return DB_ERR_CONNECTION;
    /* On Galera a certification failure (a conflicting write committed first on another
     * node) reaches the client as ER_LOCK_DEADLOCK at COMMIT, or at the next statement of a
     * transaction a replicated write aborted: the whole transaction is retried. */
    case ER_LOCK_DEADLOCK:
    case ER_LOCK_WAIT_TIMEOUT:
    case ER_ERROR_DURING_COMMIT:
    case ER_LOCK_ABORTED:
    case ER_LOCK_TABLE_FULL:
    case ER_QUERY_INTERRUPTED:
    case ER_STATEMENT_TIMEOUT:
    case ER_OUT_OF_RESOURCES:
    case ER_OPTION_PREVENTS_STATEMENT:
    case ER_READ_ONLY_MODE:
    case MYSQL_ER_READ_ONLY_TRANSACTION:
        return DB_ERR_TRANSIENT;
    case ER_NO_SUCH_TABLE:
    case ER_NO_SUCH_TABLE_IN_ENGINE:
    case ER_BAD_FIELD_ERROR:
    case ER_TABLEACCESS_DENIED_ERROR:
    case ER_COLUMNACCESS_DENIED_ERROR:
    case ER_DBACCESS_DENIED_ERROR:
    case ER_SPECIFIC_ACCESS_DENIED_ERROR:
    case ER_NO_DB_ERROR:
        return DB_ERR_SCHEMA;
    default:
        break;
    }
    /* Every other client-side error (2000..2999) is about the connection. */
    if (err >= CR_MIN_ERROR && err <= CR_MAX_ERROR)
        return DB_ERR_CONNECTION;
    return DB_ERR_ROW;
}

int db_error_is_transient(unsigned int err)
{
    enum db_err_class c = db_error_class(err);
    return c == DB_ERR_CONNECTION || c == DB_ERR_TRANSIENT || c == DB_ERR_SCHEMA;
}

int db_error_code(unsigned int err)
{
    switch (err) {
    case ER_LOCK_DEADLOCK:
        return -EDEADLK;
    case ER_LOCK_WAIT_TIMEOUT:
        return -ETIMEDOUT;
    case ER_ACCESS_DENIED_ERROR:
    case ER_TABLEACCESS_DENIED_ERROR:
    case ER_COLUMNACCESS_DENIED_ERROR:
    case ER_DBACCESS_DENIED_ERROR:
    case ER_SPECIFIC_ACCESS_DENIED_ERROR:
        return -EACCES;
    default:
        break;
    }
    switch (db_error_class(err)) {
    case DB_ERR_CONNECTION:
        return -ECONNREFUSED;
    case DB_ERR_SCHEMA:
        return -ENOENT;
    case DB_ERR_PACKET:
        return -EMSGSIZE;
    case DB_ERR_ROW:
        return -EINVAL;
    default:
        return -EIO;
    }
}

const char *db_error_reason(unsigned int err)
{
    if (err == ER_LOCK_DEADLOCK)
        return "deadlock";
    if (err == ER_LOCK_WAIT_TIMEOUT)
        return "lock_wait";
    switch (db_error_class(err)) {
    case DB_ERR_CONNECTION:
        return "connection";
    case DB_ERR_SCHEMA:
        return "schema";
    case DB_ERR_PACKET:
        return "packet";
    case DB_ERR_ROW:
        return "row";
    default:
        return "other";
    }
}

/* --- time --------------------------------------------------------------------------------- */

void db_format_time(int64_t wall_ms, char *buf, size_t cap)
{
    int64_t secs = wall_ms / 1000, ms = wall_ms % 1000;
    if (ms < 0) {
        ms += 1000;
        secs--;
    }
    time_t t = (time_t)secs;
    struct tm tm;
    if (!gmtime_r(&t, &tm)) {
        snprintf(buf, cap, "invalid");
        return;
    }
    snprintf(buf, cap, "%04d-%02d-%02d %02d:%02d:%02d.%03d", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)ms);
}

/* --- connect ------------------------------------------------------------------------------ */

/* Session settings every coingest connection uses. STRICT_ALL_TABLES makes a too-long value
 * an error; leaving NO_BACKSLASH_ESCAPES out keeps escaping as the client library does it. */
#define SESSION_SETUP                                                                              \
    "SET time_zone = '+00:00', sql_mode = 'STRICT_ALL_TABLES,NO_ENGINE_SUBSTITUTION'"

static uint64_t query_u64(MYSQL *conn, const char *sql, int *ok)
{
    *ok = 0;
    if (mysql_query(conn, sql))
        return 0;
    MYSQL_RES *res = mysql_store_result(conn);
    if (!res)
        return 0;
    MYSQL_ROW row = mysql_fetch_row(res);
    uint64_t v = 0;
    if (row && row[0]) {
        v = strtoull(row[0], NULL, 10);
        *ok = 1;
    }
    mysql_free_result(res);
    return v;
}

/*
 * TLS per [database] ssl_mode, as MariaDB Connector/C 3.x can honour it:
 * - MYSQL_OPT_SSL_ENFORCE turns TLS on, but when the server does not offer TLS the library
 *   goes on in plaintext (its documentation says so), so `required` and `verify_ca` are
 *   checked after the handshake with mysql_get_ssl_cipher() and the connection is refused
 *   there. `preferred` accepts the plaintext fallback; `disabled` never asks for TLS.
 * - With a CA file (MYSQL_OPT_SSL_CA) the library verifies the server's chain against it.
 * - MYSQL_OPT_SSL_VERIFY_SERVER_CERT adds the host name check, and makes the library refuse a
 *   server without TLS before it authenticates: that is `verify_identity`.
 * config_load() has already checked that the keys agree (verify_* have a CA, and so on).
 */
static void tls_options(MYSQL *c, const struct cfg_database *db)
{
    enum db_ssl_mode mode = db->ssl_mode;
    my_bool on = mode != DB_SSL_DISABLED;
    my_bool verify_host = mode == DB_SSL_VERIFY_IDENTITY;
    mysql_optionsv(c, MYSQL_OPT_SSL_ENFORCE, &on);
    mysql_optionsv(c, MYSQL_OPT_SSL_VERIFY_SERVER_CERT, &verify_host);
    if (mode >= DB_SSL_VERIFY_CA && db->ssl_ca)
        mysql_optionsv(c, MYSQL_OPT_SSL_CA, db->ssl_ca);
    if (on && db->ssl_cert && db->ssl_key) {
        mysql_optionsv(c, MYSQL_OPT_SSL_CERT, db->ssl_cert);
        mysql_optionsv(c, MYSQL_OPT_SSL_KEY, db->ssl_key);
    }
}

static const char *ssl_mode_name(enum db_ssl_mode mode)
{
    static const char *const names[] = {"disabled", "preferred", "required", "verify_ca",
                                        "verify_identity"};
    return (unsigned)mode < sizeof(names) / sizeof(names[0]) ? names[mode] : "?";
}

/* Writes "HOST:PORT" or the socket path: where a connection goes, for messages. */
static void connect_target(const char *host, uint32_t port, const char *sock, char *buf, size_t cap)
{
    if (sock)
        snprintf(buf, cap, "%s", sock);
    else
        snprintf(buf, cap, "%s:%" PRIu32, host ? host : "localhost", port);
}

/* The value of a SHOW ... LIKE 'name' row into buf ("" when there is none). */
static void show_value(MYSQL *c, const char *sql, char *buf, size_t cap)
{
    buf[0] = '\0';
    if (mysql_query(c, sql))
        return; /* the next statement will say what is wrong */
    MYSQL_RES *res = mysql_store_result(c);
    MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
    if (row && mysql_num_fields(res) >= 2 && row[1])
        snprintf(buf, cap, "%s", row[1]);
    mysql_free_result(res);
}

/* Galera's wsrep_ready: OFF on a node outside the primary component (it answers queries
 * with ER_UNKNOWN_COM_ERROR). A server without Galera, or with wsrep_on = OFF (a plain
 * MariaDB that merely has the provider installed reports wsrep_ready OFF), is ready. */
static bool node_ready(MYSQL *c, char *state, size_t cap)
{
    char on[16];
    snprintf(state, cap, "?");
    show_value(c, "SHOW VARIABLES LIKE 'wsrep_on'", on, sizeof(on));
    if (strcmp(on, "ON") != 0)
        return true;
    show_value(c, "SHOW STATUS LIKE 'wsrep_ready'", state, cap);
    return strcmp(state, "OFF") != 0;
}

static MYSQL *connect_one(const struct cfg_database *db, const char *host, uint32_t port,
                          unsigned rw_timeout_s, char *err, size_t errlen);

/* The node of a `hosts` list that answered last: every connection of the process starts
 * there, so writers and the lease client stay together and move on together. */
static _Atomic unsigned preferred_host;

MYSQL *db_connect(const struct cfg_database *db, char *err, size_t errlen)
{
    return db_connect_rw(db, 0, err, errlen);
}

MYSQL *db_connect_rw(const struct cfg_database *db, unsigned rw_timeout_s, char *err, size_t errlen)
{
    bool sock = db->socket && *db->socket;
    if (sock || !db->hosts || !*db->hosts)
        return connect_one(db, db->host, db->port, rw_timeout_s, err, errlen);
    size_t n = 0;
    char host[256];
    uint32_t port;
    while (config_host_at(db->hosts, n, db->port, host, sizeof(host), &port) == 0)
        n++;
    if (n == 0) {
        snprintf(err, errlen, "[database] hosts holds no usable entry: \"%s\"", db->hosts);
        return NULL;
    }
    unsigned first = preferred_host % (unsigned)n;
    char last[400] = "";
    for (size_t k = 0; k < n; k++) {
        unsigned i = (unsigned)((first + k) % n);
        if (config_host_at(db->hosts, i, db->port, host, sizeof(host), &port) != 0)
            continue;
        MYSQL *c = connect_one(db, host, port, rw_timeout_s, last, sizeof(last));
        if (c) {
            if (i != first)
                log_warn("database node unavailable; failed over", LOG_S("to", host),
                         LOG_U("port", port), LOG_S("error", err[0] ? err : last));
            preferred_host = i;
            return c;
        }
        snprintf(err, errlen, "%s", last);
    }
    snprintf(err, errlen, "no node of [database] hosts answered (%zu tried); last: %s", n, last);
    return NULL;
}

static MYSQL *connect_one(const struct cfg_database *db, const char *host, uint32_t port,
                          unsigned rw_timeout_s, char *err, size_t errlen)
{
    MYSQL *c = mysql_init(NULL);
    if (!c) {
        snprintf(err, errlen, "mysql_init: out of memory");
        return NULL;
    }
    unsigned ct = (unsigned)((db->connect_timeout_ms + 999) / 1000);
    if (ct == 0)
        ct = 1;
    /* A statement may legitimately take a while (a big batch on a busy server); these only
     * catch a peer that vanished without closing the connection. */
    unsigned rwt = rw_timeout_s ? rw_timeout_s : ct * 6 < 30 ? 30 : ct * 6;
    mysql_options(c, MYSQL_OPT_CONNECT_TIMEOUT, &ct);
    mysql_options(c, MYSQL_OPT_READ_TIMEOUT, &rwt);
    mysql_options(c, MYSQL_OPT_WRITE_TIMEOUT, &rwt);
    mysql_options(c, MYSQL_SET_CHARSET_NAME, "utf8mb4");
    tls_options(c, db);
    const char *sock = db->socket && *db->socket ? db->socket : NULL;
    char target[300];
    connect_target(host, port, sock, target, sizeof(target));
    enum db_ssl_mode mode = db->ssl_mode;
    if (!mysql_real_connect(c, sock ? NULL : host, db->user, db->password, db->database,
                            sock ? 0 : port, sock, 0)) {
        unsigned e = mysql_errno(c);
        if (e == CR_SSL_CONNECTION_ERROR && mode >= DB_SSL_VERIFY_CA)
            snprintf(err, errlen, "connect to %s: TLS failed (ssl_mode = %s, ssl_ca = %s): %s (%u)",
                     target, ssl_mode_name(mode), db->ssl_ca, mysql_error(c), e);
        else if (e == CR_SSL_CONNECTION_ERROR)
            snprintf(err, errlen, "connect to %s: TLS failed (ssl_mode = %s): %s (%u)", target,
                     ssl_mode_name(mode), mysql_error(c), e);
        else if (mode == DB_SSL_DISABLED && !sock && e == ER_ACCESS_DENIED_ERROR)
            /* MariaDB answers a plaintext client with "Access denied" when it has
             * require_secure_transport = ON, which hides the real cause. */
            snprintf(err, errlen,
                     "connect to %s: %s (%u) (ssl_mode = disabled: if the server requires secure "
                     "transport, set ssl_mode = required or stronger)",
                     target, mysql_error(c), e);
        else
            snprintf(err, errlen, "connect to %s: %s (%u)", target, mysql_error(c), e);
        mysql_close(c);
        return NULL;
    }
    if (mode >= DB_SSL_REQUIRED && !mysql_get_ssl_cipher(c)) {
        snprintf(err, errlen,
                 "connect to %s: the server did not agree to TLS, which ssl_mode = %s requires "
                 "(the server needs ssl_cert and ssl_key)",
                 target, ssl_mode_name(mode));
        mysql_close(c);
        return NULL;
    }
    char wsrep[32];
    if (!node_ready(c, wsrep, sizeof(wsrep))) {
        snprintf(err, errlen,
                 "connect to %s: the Galera node is not ready (wsrep_ready = %s): it is outside "
                 "the cluster's primary component or still joining",
                 target, wsrep);
        mysql_close(c);
        return NULL;
    }
    if (mysql_query(c, SESSION_SETUP)) {
        snprintf(err, errlen, "session setup: %s (%u)", mysql_error(c), mysql_errno(c));
        mysql_close(c);
        return NULL;
    }
    int ok;
    uint64_t pkt = query_u64(c, "SELECT @@max_allowed_packet", &ok);
    if (!ok) {
        snprintf(err, errlen, "reading max_allowed_packet: %s (%u)", mysql_error(c),
                 mysql_errno(c));
        mysql_close(c);
        return NULL;
    }
    size_t v = (size_t)pkt;
    mysql_options(c, MYSQL_OPT_MAX_ALLOWED_PACKET, &v);
    return c;
}

uint64_t db_max_packet(MYSQL *conn)
{
    unsigned long v = 0;
    if (mysql_get_option(conn, MYSQL_OPT_MAX_ALLOWED_PACKET, &v))
        return 0;
    return v;
}

/* --- migrations --------------------------------------------------------------------------- */

struct mfile {
    unsigned long version;
    char *file;       /* NNN_name.sql */
    char *name;       /* name */
    const char *text; /* the migration's bytes: built-in, or `owned` */
    size_t len;
    char *owned; /* text read from a file; NULL for a built-in migration */
};

const char *db_migrations_source(const char *dir)
{
    return dir && dir[0] ? dir : "built-in";
}

/* "dir/NNN_name.sql" or "built-in NNN_name.sql", for messages. */
static void mwhere(char *buf, size_t cap, const char *dir, const char *file)
{
    if (dir && dir[0])
        snprintf(buf, cap, "%s/%s", dir, file);
    else
        snprintf(buf, cap, "built-in %s", file);
}

static void mfiles_free(struct mfile *f, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        free(f[i].file);
        free(f[i].name);
        free(f[i].owned);
    }
    free(f);
}

static int mfile_cmp(const void *a, const void *b)
{
    const struct mfile *x = a, *y = b;
    return x->version < y->version ? -1 : x->version > y->version;
}

/* NNN_name.sql with NNN digits and name of [A-Za-z0-9_-]. */
static int parse_mname(const char *fn, unsigned long *version, char **name)
{
    const char *p = fn;
    unsigned long v = 0;
    int digits = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > 99999999ul)
            return -1;
        v = v * 10 + (unsigned long)(*p++ - '0');
        digits++;
    }
    if (digits == 0 || *p++ != '_')
        return -1;
    const char *start = p;
    while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
           *p == '_' || *p == '-')
        p++;
    if (p == start || strcmp(p, ".sql") != 0)
        return -1;
    *version = v;
    *name = strndup(start, (size_t)(p - start));
    return *name ? 0 : -1;
}

/* Appends a migration named `file` to f[n] (growing it). 0, -EINVAL for a malformed name
 * (reason in err), or -ENOMEM. */
static int mfiles_add(struct mfile **f, size_t *n, size_t *cap, const char *dir, const char *file,
                      char *err, size_t errlen)
{
    struct mfile m = {0};
    if (parse_mname(file, &m.version, &m.name)) {
        char where[4352];
        mwhere(where, sizeof(where), dir, file);
        snprintf(err, errlen, "%s: migration files are named NNN_name.sql", where);
        return -EINVAL;
    }
    m.file = strdup(file);
    if (*n == *cap) {
        size_t ncap = *cap ? *cap * 2 : 8;
        struct mfile *t = realloc(*f, ncap * sizeof(*t));
        if (!t) {
            free(m.name);
            free(m.file);
            return -ENOMEM;
        }
        *f = t;
        *cap = ncap;
    }
    (*f)[(*n)++] = m;
    return m.file ? 0 : -ENOMEM;
}

static char *read_file(const char *dir, const char *file, size_t *len, char *err, size_t errlen)
{
    char path[4096];
    snprintf(path, sizeof(path), "%s/%s", dir, file);
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (cap - n < 4096) {
            cap = cap ? cap * 2 : 8192;
            char *t = realloc(buf, cap);
            if (!t) {
                free(buf);
                fclose(fp);
                snprintf(err, errlen, "%s: out of memory", path);
                return NULL;
            }
            buf = t;
        }
        size_t r = fread(buf + n, 1, cap - n - 1, fp);
        n += r;
        if (r == 0)
            break;
    }
    int bad = ferror(fp);
    fclose(fp);
    if (bad) {
        free(buf);
        snprintf(err, errlen, "%s: read error", path);
        return NULL;
    }
    buf[n] = '\0';
    *len = n;
    return buf;
}

/* The *.sql files of `dir`, each with its text read. 0 or -errno with the reason in err. */
static int list_dir(const char *dir, struct mfile **f, size_t *n, char *err, size_t errlen)
{
    DIR *d = opendir(dir);
    if (!d) {
        int rc = -errno;
        snprintf(err, errlen, "migrations directory %s: %s", dir, strerror(errno));
        return rc;
    }
    size_t cap = 0;
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        size_t l = strlen(de->d_name);
        if (l < 4 || strcmp(de->d_name + l - 4, ".sql") != 0)
            continue;
        rc = mfiles_add(f, n, &cap, dir, de->d_name, err, errlen);
    }
    closedir(d);
    if (rc == -ENOMEM)
        snprintf(err, errlen, "out of memory");
    for (size_t i = 0; rc == 0 && i < *n; i++) {
        struct mfile *m = &(*f)[i];
        m->owned = read_file(dir, m->file, &m->len, err, errlen);
        if (!m->owned)
            rc = -EIO;
        m->text = m->owned;
    }
    return rc;
}

/* The migrations compiled into the binary. 0 or -errno with the reason in err. */
static int list_builtin(struct mfile **f, size_t *n, char *err, size_t errlen)
{
    size_t nb, cap = 0;
    const struct db_migration *b = db_builtin_migrations(&nb);
    for (size_t i = 0; i < nb; i++) {
        int rc = mfiles_add(f, n, &cap, NULL, b[i].file, err, errlen);
        if (rc) {
            if (rc == -ENOMEM)
                snprintf(err, errlen, "out of memory");
            return rc;
        }
        (*f)[*n - 1].text = b[i].text;
        (*f)[*n - 1].len = b[i].len;
    }
    return 0;
}

/* The migrations of `dir` (NULL or "": the built-in ones), by version, each with its text.
 * 0 or -errno with the reason in err. */
static int list_migrations(const char *dir, struct mfile **out, size_t *nout, char *err,
                           size_t errlen)
{
    struct mfile *f = NULL;
    size_t n = 0;
    int rc = dir && dir[0] ? list_dir(dir, &f, &n, err, errlen) : list_builtin(&f, &n, err, errlen);
    if (!rc) {
        qsort(f, n, sizeof(*f), mfile_cmp);
        for (size_t i = 1; i < n; i++) {
            if (f[i].version == f[i - 1].version) {
                snprintf(err, errlen, "%s: %s and %s have the same version",
                         db_migrations_source(dir), f[i - 1].file, f[i].file);
                rc = -EINVAL;
                break;
            }
        }
    }
    if (rc) {
        mfiles_free(f, n);
        return rc;
    }
    *out = f;
    *nout = n;
    return 0;
}

static int fail_sql(MYSQL *conn, char *err, size_t errlen, const char *what)
{
    unsigned e = mysql_errno(conn);
    snprintf(err, errlen, "%s: %s (%u)", what, mysql_error(conn), e);
    return e ? db_error_code(e) : -EIO;
}

/* The SHA-256 of a file as 64 hex digits, by the server. */
static int checksum(MYSQL *conn, const char *text, size_t len, char out[65], char *err,
                    size_t errlen)
{
    char *sql = malloc(2 * len + 64);
    if (!sql) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    int n = sprintf(sql, "SELECT LOWER(SHA2(X'");
    n += (int)mysql_hex_string(sql + n, text, (unsigned long)len);
    n += sprintf(sql + n, "', 256))");
    int rc = 0;
    if (mysql_real_query(conn, sql, (unsigned long)n)) {
        rc = fail_sql(conn, err, errlen, "computing a migration checksum");
        goto out;
    }
    MYSQL_RES *res = mysql_store_result(conn);
    MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
    if (!row || !row[0] || strlen(row[0]) != 64) {
        rc = -EIO;
        snprintf(err, errlen, "computing a migration checksum: no result");
    } else {
        memcpy(out, row[0], 65);
    }
    if (res)
        mysql_free_result(res);
out:
    free(sql);
    return rc;
}

/* Runs a whole file as one multi-statement query and drains every result. */
static int run_script(MYSQL *conn, const char *dir, const struct mfile *m, char *err, size_t errlen)
{
    const char *text = m->text;
    size_t len = m->len;
    if (mysql_set_server_option(conn, MYSQL_OPTION_MULTI_STATEMENTS_ON))
        return fail_sql(conn, err, errlen, "enabling multi-statements");
    int rc = 0, stmt = 1;
    int status = mysql_real_query(conn, text, (unsigned long)len);
    for (;;) {
        if (status > 0 || mysql_errno(conn)) {
            char where[4352], what[4416];
            mwhere(where, sizeof(where), dir, m->file);
            snprintf(what, sizeof(what), "%s: statement %d failed", where, stmt);
            rc = fail_sql(conn, err, errlen, what);
            break;
        }
        MYSQL_RES *res = mysql_store_result(conn);
        if (res)
            mysql_free_result(res);
        status = mysql_next_result(conn);
        if (status == -1)
            break;
        stmt++;
    }
    /* After an error the connection may be gone; the option is per session anyway. */
    mysql_set_server_option(conn, MYSQL_OPTION_MULTI_STATEMENTS_OFF);
    return rc;
}

struct applied {
    unsigned long version;
    char checksum[65];
};

static int read_applied(MYSQL *conn, struct applied **out, size_t *nout, char *err, size_t errlen)
{
    if (mysql_query(conn, "SELECT version, checksum FROM schema_migrations ORDER BY version"))
        return fail_sql(conn, err, errlen, "reading schema_migrations");
    MYSQL_RES *res = mysql_store_result(conn);
    if (!res)
        return fail_sql(conn, err, errlen, "reading schema_migrations");
    size_t n = (size_t)mysql_num_rows(res);
    struct applied *a = calloc(n ? n : 1, sizeof(*a));
    if (!a) {
        mysql_free_result(res);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    MYSQL_ROW row;
    size_t i = 0;
    while ((row = mysql_fetch_row(res)) && i < n) {
        a[i].version = strtoul(row[0], NULL, 10);
        snprintf(a[i].checksum, sizeof(a[i].checksum), "%s", row[1] ? row[1] : "");
        i++;
    }
    mysql_free_result(res);
    *out = a;
    *nout = i;
    return 0;
}

static const struct applied *find_applied(const struct applied *a, size_t n, unsigned long v)
{
    for (size_t i = 0; i < n; i++)
        if (a[i].version == v)
            return &a[i];
    return NULL;
}

static int migrate(MYSQL *conn, const char *dir, bool apply, char *err, size_t errlen)
{
    struct mfile *files = NULL;
    size_t nfiles = 0;
    struct applied *done = NULL;
    size_t ndone = 0;
    bool locked = false;
    int count = 0;
    int rc = list_migrations(dir, &files, &nfiles, err, errlen);
    if (rc)
        return rc;
    if (apply) {
        int ok;
        char sql[128];
        snprintf(sql, sizeof(sql), "SELECT GET_LOCK('%s', %d)", MIGRATE_LOCK, MIGRATE_LOCK_WAIT_S);
        uint64_t got = query_u64(conn, sql, &ok);
        if (!ok) {
            rc = fail_sql(conn, err, errlen, "taking the migration lock");
            goto out;
        }
        if (got != 1) {
            snprintf(err, errlen, "another process holds the migration lock %s", MIGRATE_LOCK);
            rc = -EBUSY;
            goto out;
        }
        locked = true;
    }
    if (apply &&
        mysql_query(conn, "CREATE TABLE IF NOT EXISTS schema_migrations ("
                          " version INT UNSIGNED NOT NULL,"
                          " name VARCHAR(255) NOT NULL,"
                          " checksum CHAR(64) NOT NULL,"
                          " applied_at DATETIME(3) NOT NULL,"
                          " PRIMARY KEY (version)"
                          ") ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin")) {
        rc = fail_sql(conn, err, errlen, "creating schema_migrations");
        goto out;
    }
    rc = read_applied(conn, &done, &ndone, err, errlen);
    if (rc == -ENOENT && !apply) {
        /* No schema_migrations yet: everything is pending. */
        rc = 0;
        ndone = 0;
    }
    if (rc)
        goto out;
    for (size_t i = 0; i < ndone; i++) {
        bool known = false;
        for (size_t j = 0; j < nfiles; j++)
            known = known || files[j].version == done[i].version;
        if (!known)
            log_warn("schema has a migration this build does not know (a newer coingest?)",
                     LOG_U("version", done[i].version), LOG_S("dir", db_migrations_source(dir)));
    }
    for (size_t i = 0; i < nfiles; i++) {
        char sum[65];
        rc = checksum(conn, files[i].text, files[i].len, sum, err, errlen);
        if (rc)
            goto out;
        const struct applied *a = find_applied(done, ndone, files[i].version);
        if (a) {
            if (strcmp(a->checksum, sum) != 0) {
                char where[4352];
                mwhere(where, sizeof(where), dir, files[i].file);
                snprintf(err, errlen,
                         "%s was changed after it was applied (checksum %.12s... in "
                         "schema_migrations, %.12s... now): applied migrations are never "
                         "edited; restore the file and add a new NNN_name.sql instead",
                         where, a->checksum, sum);
                rc = -EBADMSG;
                goto out;
            }
            continue;
        }
        if (!apply) {
            count++;
            continue;
        }
        rc = run_script(conn, dir, &files[i], err, errlen);
        if (rc)
            goto out;
        char *ename = malloc(2 * strlen(files[i].name) + 1);
        if (!ename) {
            rc = -ENOMEM;
            snprintf(err, errlen, "out of memory");
            goto out;
        }
        mysql_real_escape_string(conn, ename, files[i].name, (unsigned long)strlen(files[i].name));
        char sql[1024];
        snprintf(sql, sizeof(sql),
                 "INSERT INTO schema_migrations (version, name, checksum, applied_at)"
                 " VALUES (%lu, '%s', '%s', UTC_TIMESTAMP(3))",
                 files[i].version, ename, sum);
        free(ename);
        if (mysql_query(conn, sql) || mysql_commit(conn)) {
            rc = fail_sql(conn, err, errlen, "recording a migration");
            goto out;
        }
        log_info("migration applied", LOG_S("file", files[i].file),
                 LOG_U("version", files[i].version));
        count++;
    }
    rc = count;
out:
    if (locked) {
        char sql[128];
        snprintf(sql, sizeof(sql), "DO RELEASE_LOCK('%s')", MIGRATE_LOCK);
        mysql_query(conn, sql);
    }
    free(done);
    mfiles_free(files, nfiles);
    return rc;
}

int db_migrate(MYSQL *conn, const char *dir, char *err, size_t errlen)
{
    return migrate(conn, dir, true, err, errlen);
}

int db_migrations_pending(MYSQL *conn, const char *dir, char *err, size_t errlen)
{
    return migrate(conn, dir, false, err, errlen);
}
