/*
 * export day: one run of the export job on its work thread (export_execute).
 *
 * For each table, for each closed UTC day in the window (the `days` days before the run's
 * day), in one read-only transaction WITH CONSISTENT SNAPSHOT on the run's own connection:
 *   1. The day's fingerprint, computed by the server: the row count, the sum of CRC32 and the
 *      XOR of the first 64 bits of MD5 over each row's text (every column, NULLs marked).
 *      The same snapshot then reads the rows, so the fingerprint describes exactly the files.
 *   2. When DIR/TABLE/date=D/_manifest.json holds that fingerprint and the same formats, the
 *      day is unchanged and nothing is written. A day without rows is not exported.
 *   3. Otherwise the rows stream (a prepared statement, fetched row by row without buffering
 *      the result, so memory stays flat whatever the day's size) into gzip parts under
 *      DIR/TABLE/.tmp-date=D/ (deflate straight into the file, sha256 and md5 of the bytes
 *      taken as they are written), part-NNNNN.FORMAT cut at part_max_bytes, each fsync'd; then
 *      _manifest.json; then the directory is swapped in for date=D (renameat2 RENAME_EXCHANGE
 *      when a previous export is there, so the final name always holds one complete export)
 *      and the previous export, now under the temporary name, is removed.
 * A crash leaves at worst a .tmp-/.old- directory, which the next run removes first.
 *
 * Then the uploads, when s3_bucket is set (export_upload_table): every date=D directory of
 * the table whose _upload.json (local only) does not say its manifest was uploaded gets its
 * parts PUT (each part recorded in _upload.json only once the store confirmed its checksum),
 * then the keys of a replaced export that the new one no longer has are deleted, then the
 * manifest is PUT last, so a manifest in the bucket always describes parts that are there.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <mysql.h>
#include <openssl/evp.h>
#include <zlib.h>

#include "coingest/db.h"
#include "coingest/log.h"
#include "coingest/util.h"
#include "coingest/version.h"
#include "sources/export/export.h"

#define OUT_CHUNK 65536

/* Paths under the export directory. job.c refuses a dir longer than EXPORT_DIR_MAX, and what
 * is added to it here is short (a table, a day, a file name), so these never truncate. */
static void pathf(char *buf, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, PATH_MAX, fmt, ap);
    va_end(ap);
}

void export_fail(struct export_plan *p, const char *what, const char *why)
{
    log_error("export failed", LOG_S("what", what), LOG_S("error", why));
    if (!p->error[0])
        snprintf(p->error, sizeof(p->error), "%s: %s", what, why);
}

static bool cancelled(struct export_plan *p)
{
    return atomic_load(&p->cancel);
}

/* ---- files ----------------------------------------------------------------------------- */

static int write_all(int fd, const void *buf, size_t n)
{
    const char *p = buf;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int fsync_path(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    int rc = fsync(fd) < 0 ? -errno : 0;
    close(fd);
    return rc;
}

static int mkdirs(const char *path)
{
    char tmp[PATH_MAX];
    if (strlen(path) >= sizeof(tmp))
        return -ENAMETOOLONG;
    memcpy(tmp, path, strlen(path) + 1);
    for (char *s = tmp + 1; *s; s++) {
        if (*s != '/')
            continue;
        *s = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -errno;
        *s = '/';
    }
    return mkdir(tmp, 0755) < 0 && errno != EEXIST ? -errno : 0;
}

/* Removes a directory of plain files (an export's day directory). */
static int remove_dir(const char *path)
{
    DIR *d = opendir(path);
    if (!d)
        return errno == ENOENT ? 0 : -errno;
    struct dirent *e;
    char sub[PATH_MAX];
    while ((e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        pathf(sub, "%s/%s", path, e->d_name);
        unlink(sub);
    }
    closedir(d);
    return rmdir(path) < 0 && errno != ENOENT ? -errno : 0;
}

static void hex(const unsigned char *b, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = '\0';
}

int export_file_digests(const char *path, char *sha256_hex, char *md5_hex, uint64_t *bytes)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    EVP_MD_CTX *sha = EVP_MD_CTX_new(), *md5 = EVP_MD_CTX_new();
    unsigned char *buf = malloc(OUT_CHUNK);
    int rc = 0;
    *bytes = 0;
    if (!sha || !md5 || !buf || !EVP_DigestInit_ex(sha, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(md5, EVP_md5(), NULL))
        rc = -ENOMEM;
    while (!rc) {
        ssize_t n = read(fd, buf, OUT_CHUNK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            rc = -errno;
        if (n <= 0)
            break;
        EVP_DigestUpdate(sha, buf, (size_t)n);
        EVP_DigestUpdate(md5, buf, (size_t)n);
        *bytes += (uint64_t)n;
    }
    if (!rc) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dn;
        EVP_DigestFinal_ex(sha, d, &dn);
        hex(d, dn, sha256_hex);
        EVP_DigestFinal_ex(md5, d, &dn);
        hex(d, dn, md5_hex);
    }
    free(buf);
    EVP_MD_CTX_free(sha);
    EVP_MD_CTX_free(md5);
    close(fd);
    return rc;
}

/* Writes a JSON document to dir/name through dir/.name.tmp, fsync'd, then renamed. */
static int write_json_atomic(const char *dir, const char *name, json_t *doc)
{
    char tmp[PATH_MAX], final[PATH_MAX];
    pathf(tmp, "%s/.%s.tmp", dir, name);
    pathf(final, "%s/%s", dir, name);
    char *text = json_dumps(doc, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    if (!text)
        return -ENOMEM;
    int fd = open(tmp, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    int rc = fd < 0 ? -errno : 0;
    if (!rc)
        rc = write_all(fd, text, strlen(text));
    if (!rc)
        rc = write_all(fd, "\n", 1);
    if (!rc && fsync(fd) < 0)
        rc = -errno;
    if (fd >= 0)
        close(fd);
    free(text);
    if (!rc && rename(tmp, final) < 0)
        rc = -errno;
    if (rc)
        unlink(tmp);
    return rc;
}

/* ---- a gzip part being written ------------------------------------------------------------ */

struct part {
    int fd;
    z_stream z;
    EVP_MD_CTX *sha, *md5;
    unsigned char *out;
    uint64_t rows;
    bool open;
    char name[64];
};

static int part_drain(struct part *pt)
{
    size_t n = OUT_CHUNK - pt->z.avail_out;
    if (n == 0)
        return 0;
    EVP_DigestUpdate(pt->sha, pt->out, n);
    EVP_DigestUpdate(pt->md5, pt->out, n);
    int rc = write_all(pt->fd, pt->out, n);
    pt->z.next_out = pt->out;
    pt->z.avail_out = OUT_CHUNK;
    return rc;
}

static int part_open(struct part *pt, const char *dir, const char *name)
{
    char path[PATH_MAX];
    memset(pt, 0, sizeof(*pt));
    pt->fd = -1;
    snprintf(pt->name, sizeof(pt->name), "%s", name);
    pathf(path, "%s/%s", dir, name);
    pt->out = malloc(OUT_CHUNK);
    pt->sha = EVP_MD_CTX_new();
    pt->md5 = EVP_MD_CTX_new();
    if (!pt->out || !pt->sha || !pt->md5 || !EVP_DigestInit_ex(pt->sha, EVP_sha256(), NULL) ||
        !EVP_DigestInit_ex(pt->md5, EVP_md5(), NULL) ||
        deflateInit2(&pt->z, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
        free(pt->out);
        EVP_MD_CTX_free(pt->sha);
        EVP_MD_CTX_free(pt->md5);
        return -ENOMEM;
    }
    pt->z.next_out = pt->out;
    pt->z.avail_out = OUT_CHUNK;
    pt->fd = open(path, O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0644);
    pt->open = true;
    return pt->fd < 0 ? -errno : 0;
}

static int part_write(struct part *pt, const void *data, size_t n)
{
    pt->z.next_in = (unsigned char *)data;
    pt->z.avail_in = (uInt)n;
    while (pt->z.avail_in) {
        if (deflate(&pt->z, Z_NO_FLUSH) == Z_STREAM_ERROR)
            return -EIO;
        if (pt->z.avail_out == 0) {
            int rc = part_drain(pt);
            if (rc)
                return rc;
        }
    }
    return 0;
}

/* Finishes the gzip stream, fsyncs and closes; fills the part's entry of the manifest. */
static int part_close(struct part *pt, json_t *entry)
{
    int rc = 0, z;
    do {
        z = deflate(&pt->z, Z_FINISH);
        if (z == Z_STREAM_ERROR)
            rc = -EIO;
        else
            rc = part_drain(pt);
    } while (!rc && z != Z_STREAM_END);
    if (!rc && fsync(pt->fd) < 0)
        rc = -errno;
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int dn;
    char sha[65], md5[33];
    EVP_DigestFinal_ex(pt->sha, d, &dn);
    hex(d, dn, sha);
    EVP_DigestFinal_ex(pt->md5, d, &dn);
    hex(d, dn, md5);
    if (entry) {
        json_object_set_new(entry, "name", json_string(pt->name));
        json_object_set_new(entry, "rows", json_integer((json_int_t)pt->rows));
        json_object_set_new(entry, "bytes", json_integer((json_int_t)pt->z.total_out));
        json_object_set_new(entry, "sha256", json_string(sha));
        json_object_set_new(entry, "md5", json_string(md5));
    }
    deflateEnd(&pt->z);
    if (pt->fd >= 0 && close(pt->fd) < 0 && !rc)
        rc = -errno;
    free(pt->out);
    EVP_MD_CTX_free(pt->sha);
    EVP_MD_CTX_free(pt->md5);
    pt->open = false;
    return rc;
}

/* ---- one table ------------------------------------------------------------------------------ */

enum { FMT_CSV = 0, FMT_JSONL = 1, NFMT = 2 };
static const char *const fmt_ext[NFMT] = {"csv.gz", "jsonl.gz"};

struct column {
    char *name;
    char *type; /* COLUMN_TYPE, for the manifest */
    enum export_kind kind;
    bool is_unsigned;
};

struct table_run {
    struct export_plan *p;
    MYSQL *conn;
    const struct export_table *t;
    struct column *cols;
    size_t ncols;
    char tdir[PATH_MAX]; /* DIR/TABLE */
    struct sbuf sql, line;
};

static void table_run_clear(struct table_run *tr)
{
    for (size_t i = 0; i < tr->ncols; i++) {
        free(tr->cols[i].name);
        free(tr->cols[i].type);
    }
    free(tr->cols);
    tr->cols = NULL;
    tr->ncols = 0;
    sbuf_free(&tr->sql);
    sbuf_free(&tr->line);
}

static void fail_db(struct table_run *tr, const char *what)
{
    char msg[400];
    snprintf(msg, sizeof(msg), "%s (mysql error %u)", mysql_error(tr->conn), mysql_errno(tr->conn));
    char w[200];
    snprintf(w, sizeof(w), "%s %s", tr->t->name, what);
    export_fail(tr->p, w, msg);
}

/* The table's columns in order; 0 with ncols 0 when the table does not exist. */
static int load_columns(struct table_run *tr)
{
    char q[512];
    snprintf(q, sizeof(q),
             "SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE FROM information_schema.COLUMNS"
             " WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = '%s' ORDER BY ORDINAL_POSITION",
             tr->t->name);
    if (mysql_query(tr->conn, q) != 0) {
        fail_db(tr, "reading its columns");
        return -EIO;
    }
    MYSQL_RES *res = mysql_store_result(tr->conn);
    if (!res) {
        fail_db(tr, "reading its columns");
        return -EIO;
    }
    size_t n = (size_t)mysql_num_rows(res);
    tr->cols = calloc(n + 1, sizeof(*tr->cols));
    if (!tr->cols) {
        mysql_free_result(res);
        return -ENOMEM;
    }
    MYSQL_ROW row;
    while ((row = mysql_fetch_row(res))) {
        struct column *c = &tr->cols[tr->ncols++];
        c->name = strdup(row[0] ? row[0] : "");
        c->type = strdup(row[2] ? row[2] : "");
        c->kind = export_kind_of(row[1] ? row[1] : "");
        c->is_unsigned = row[2] && strstr(row[2], "unsigned") != NULL;
        if (!c->name || !c->type) {
            mysql_free_result(res);
            return -ENOMEM;
        }
    }
    mysql_free_result(res);
    return 0;
}

/* The WHERE clause of one day. */
static void day_range(struct table_run *tr, int64_t day, char *buf, size_t cap)
{
    char from[32], to[32];
    export_format_day(day, from, sizeof(from));
    export_format_day(day + 1, to, sizeof(to));
    snprintf(buf, cap, "`%s` >= '%s' AND `%s` < '%s'%s%s", tr->t->day_col, from, tr->t->day_col, to,
             tr->t->index_hint ? " AND " : "", tr->t->index_hint ? tr->t->index_hint : "");
}

/* The day's row count and fingerprint (see the top of the file). */
static int fingerprint(struct table_run *tr, int64_t day, uint64_t *rows, char *fp, size_t cap)
{
    char where[256];
    day_range(tr, day, where, sizeof(where));
    struct sbuf *q = &tr->sql;
    sbuf_reset(q);
    sbuf_puts(q, "SELECT COUNT(*), COALESCE(SUM(CRC32(r)), 0),"
                 " COALESCE(BIT_XOR(CAST(CONV(LEFT(MD5(r), 16), 16, 10) AS UNSIGNED)), 0)"
                 " FROM (SELECT CONCAT_WS(0x1f");
    for (size_t i = 0; i < tr->ncols; i++)
        sbuf_printf(q, ", IFNULL(`%s`, 0x1e)", tr->cols[i].name);
    sbuf_printf(q, ") AS r FROM `%s` WHERE %s) x", tr->t->name, where);
    if (sbuf_failed(q))
        return -ENOMEM;
    if (mysql_real_query(tr->conn, q->p, q->len) != 0) {
        fail_db(tr, "computing a day's fingerprint");
        return -EIO;
    }
    MYSQL_RES *res = mysql_store_result(tr->conn);
    MYSQL_ROW row = res ? mysql_fetch_row(res) : NULL;
    if (!row) {
        if (res)
            mysql_free_result(res);
        fail_db(tr, "computing a day's fingerprint");
        return -EIO;
    }
    *rows = strtoull(row[0] ? row[0] : "0", NULL, 10);
    snprintf(fp, cap, "%s:%s:%s", row[0] ? row[0] : "0", row[1] ? row[1] : "0",
             row[2] ? row[2] : "0");
    mysql_free_result(res);
    return 0;
}

/* The formats of a manifest equal the run's? */
static bool same_formats(json_t *m, const bool *want)
{
    json_t *f = json_object_get(m, "formats");
    size_t n = 0;
    for (int i = 0; i < NFMT; i++)
        n += want[i];
    if (!json_is_array(f) || json_array_size(f) != n)
        return false;
    for (int i = 0; i < NFMT; i++) {
        if (!want[i])
            continue;
        bool found = false;
        for (size_t j = 0; j < json_array_size(f); j++)
            found |= json_is_string(json_array_get(f, j)) &&
                     strcmp(json_string_value(json_array_get(f, j)), fmt_ext[i]) == 0;
        if (!found)
            return false;
    }
    return true;
}

/* One result column as fetched with the binary protocol. */
struct cell {
    MYSQL_TIME t;
    long long i;
    double d;
    char *buf;
    unsigned long cap, len;
    my_bool is_null, error;
};

static int bind_results(MYSQL_STMT *st, struct table_run *tr, struct cell *cells, MYSQL_BIND *b)
{
    memset(b, 0, sizeof(*b) * tr->ncols);
    for (size_t i = 0; i < tr->ncols; i++) {
        struct cell *c = &cells[i];
        b[i].is_null = &c->is_null;
        b[i].error = &c->error;
        b[i].length = &c->len;
        switch (tr->cols[i].kind) {
        case EXPORT_INT:
            b[i].buffer_type = MYSQL_TYPE_LONGLONG;
            b[i].buffer = &c->i;
            b[i].is_unsigned = tr->cols[i].is_unsigned;
            break;
        case EXPORT_DOUBLE:
            b[i].buffer_type = MYSQL_TYPE_DOUBLE;
            b[i].buffer = &c->d;
            break;
        case EXPORT_TIME:
        case EXPORT_DATE:
            b[i].buffer_type =
                tr->cols[i].kind == EXPORT_TIME ? MYSQL_TYPE_DATETIME : MYSQL_TYPE_DATE;
            b[i].buffer = &c->t;
            break;
        default:
            if (!c->buf) {
                c->cap = 256;
                if (!(c->buf = malloc(c->cap)))
                    return -ENOMEM;
            }
            b[i].buffer_type = MYSQL_TYPE_STRING;
            b[i].buffer = c->buf;
            b[i].buffer_length = c->cap;
            break;
        }
    }
    return mysql_stmt_bind_result(st, b) ? -EIO : 0;
}

static int64_t time_ms(const MYSQL_TIME *t)
{
    int64_t day = export_days_from_civil((int)t->year, t->month, t->day);
    return ((day * 24 + t->hour) * 60 + t->minute) * 60000ll + t->second * 1000ll +
           t->second_part / 1000;
}

/* The writers of one day: per format, the part open now and the manifest's list of parts. */
struct day_out {
    struct table_run *tr;
    char dir[PATH_MAX];
    bool on[NFMT];
    struct part part[NFMT];
    unsigned next[NFMT];
    json_t *files;
    uint64_t rows[NFMT];
};

static int header(struct day_out *o, int f)
{
    if (f != FMT_CSV)
        return 0;
    struct sbuf h = {0}; /* not tr->line: it holds the row that opens this part */
    for (size_t i = 0; i < o->tr->ncols; i++) {
        if (i)
            sbuf_putc(&h, ',');
        sbuf_puts(&h, o->tr->cols[i].name);
    }
    sbuf_append(&h, "\r\n", 2);
    int rc = sbuf_failed(&h) ? -ENOMEM : part_write(&o->part[f], h.p, h.len);
    sbuf_free(&h);
    return rc;
}

static int close_part(struct day_out *o, int f)
{
    json_t *e = json_object();
    if (!e)
        return -ENOMEM;
    int rc = part_close(&o->part[f], e);
    json_object_set_new(e, "format", json_string(fmt_ext[f]));
    json_array_append_new(o->files, e);
    return rc;
}

static int write_row(struct day_out *o, int f)
{
    struct part *pt = &o->part[f];
    int rc = 0;
    if (!pt->open) {
        char name[64];
        snprintf(name, sizeof(name), "part-%05u.%s", o->next[f]++, fmt_ext[f]);
        if ((rc = part_open(pt, o->dir, name)) || (rc = header(o, f)))
            return rc;
    }
    struct sbuf *l = &o->tr->line;
    if ((rc = part_write(pt, l->p, l->len)))
        return rc;
    pt->rows++;
    o->rows[f]++;
    if (pt->z.total_out >= o->tr->p->part_max_bytes)
        rc = close_part(o, f);
    return rc;
}

/* Streams the day's rows into the parts. Returns the rows read, or -errno. */
static int64_t stream_rows(struct day_out *o, int64_t day)
{
    struct table_run *tr = o->tr;
    char where[256];
    day_range(tr, day, where, sizeof(where));
    struct sbuf *q = &tr->sql;
    sbuf_reset(q);
    sbuf_puts(q, "SELECT ");
    for (size_t i = 0; i < tr->ncols; i++)
        sbuf_printf(q, "%s`%s`", i ? ", " : "", tr->cols[i].name);
    sbuf_printf(q, " FROM `%s` WHERE %s ORDER BY `%s`", tr->t->name, where, tr->t->day_col);
    if (sbuf_failed(q))
        return -ENOMEM;
    MYSQL_STMT *st = mysql_stmt_init(tr->conn);
    struct cell *cells = calloc(tr->ncols, sizeof(*cells));
    MYSQL_BIND *binds = calloc(tr->ncols, sizeof(*binds));
    int64_t rc = 0, rows = 0;
    if (!st || !cells || !binds) {
        rc = -ENOMEM;
        goto out;
    }
    if (mysql_stmt_prepare(st, q->p, q->len) || mysql_stmt_execute(st)) {
        export_fail(tr->p, tr->t->name, mysql_stmt_error(st));
        rc = -EIO;
        goto out;
    }
    if ((rc = bind_results(st, tr, cells, binds)))
        goto out;
    for (;;) {
        int fr = mysql_stmt_fetch(st);
        if (fr == MYSQL_NO_DATA)
            break;
        if (fr == 1) {
            export_fail(tr->p, tr->t->name, mysql_stmt_error(st));
            rc = -EIO;
            goto out;
        }
        /* A string longer than its buffer: grow it and fetch the column again. */
        for (size_t i = 0; fr == MYSQL_DATA_TRUNCATED && i < tr->ncols; i++) {
            struct cell *c = &cells[i];
            if (binds[i].buffer_type != MYSQL_TYPE_STRING || c->is_null || c->len <= c->cap)
                continue;
            char *nb = realloc(c->buf, c->len + 1);
            if (!nb) {
                rc = -ENOMEM;
                goto out;
            }
            c->buf = nb;
            c->cap = c->len + 1;
            binds[i].buffer = c->buf;
            binds[i].buffer_length = c->cap;
            if (mysql_stmt_fetch_column(st, &binds[i], (unsigned)i, 0)) {
                export_fail(tr->p, tr->t->name, mysql_stmt_error(st));
                rc = -EIO;
                goto out;
            }
        }
        if (fr == MYSQL_DATA_TRUNCATED && mysql_stmt_bind_result(st, binds)) {
            rc = -EIO;
            goto out;
        }
        rows++;
        for (int f = 0; f < NFMT && !rc; f++) {
            if (!o->on[f])
                continue;
            struct sbuf *l = &tr->line;
            sbuf_reset(l);
            if (f == FMT_JSONL)
                sbuf_putc(l, '{');
            for (size_t i = 0; i < tr->ncols; i++) {
                struct cell *c = &cells[i];
                struct export_value v = {.null = c->is_null != 0,
                                         .is_unsigned = tr->cols[i].is_unsigned,
                                         .i = c->i,
                                         .d = c->d,
                                         .s = c->buf,
                                         .n = c->len};
                if (tr->cols[i].kind == EXPORT_TIME || tr->cols[i].kind == EXPORT_DATE)
                    v.ms = time_ms(&c->t);
                if (f == FMT_CSV) {
                    if (i)
                        sbuf_putc(l, ',');
                    export_csv_value(l, tr->cols[i].kind, &v);
                } else {
                    if (i)
                        sbuf_putc(l, ',');
                    export_json_string(l, tr->cols[i].name, strlen(tr->cols[i].name));
                    sbuf_putc(l, ':');
                    export_json_value(l, tr->cols[i].kind, &v);
                }
            }
            if (f == FMT_CSV)
                sbuf_append(l, "\r\n", 2);
            else
                sbuf_append(l, "}\n", 2);
            rc = sbuf_failed(l) ? -ENOMEM : write_row(o, f);
        }
        if (rc)
            goto out;
        if ((rows & 4095) == 0 && cancelled(tr->p)) {
            rc = -ECANCELED;
            goto out;
        }
    }
out:
    for (size_t i = 0; cells && i < tr->ncols; i++)
        free(cells[i].buf);
    free(cells);
    free(binds);
    if (st && rc == -ECANCELED) {
        /* Reading the rest of the result would take as long as the rest of the day; closing
         * the connection drops it at once (the statement is then freed without a word to the
         * server). The run ends here. */
        mysql_close(tr->conn);
        tr->conn = NULL;
    }
    if (st)
        mysql_stmt_close(st);
    return rc ? rc : rows;
}

/* Names of files a previous export had that this one does not (to delete from the bucket). */
static json_t *stale_names(json_t *old, json_t *files)
{
    json_t *out = json_array();
    if (!old || !out)
        return out;
    json_t *lists[2] = {json_object_get(old, "files"), json_object_get(old, "stale")};
    for (int l = 0; l < 2; l++) {
        size_t i;
        json_t *e;
        json_array_foreach(lists[l], i, e)
        {
            const char *name = json_is_string(e) ? json_string_value(e)
                                                 : json_string_value(json_object_get(e, "name"));
            if (!name)
                continue;
            bool keep = true;
            size_t j;
            json_t *n;
            json_array_foreach(files, j, n) keep &=
                strcmp(json_string_value(json_object_get(n, "name")), name) != 0;
            json_array_foreach(out, j, n) keep &= strcmp(json_string_value(n), name) != 0;
            if (keep)
                json_array_append_new(out, json_string(name));
        }
    }
    return out;
}

static json_t *build_manifest(struct table_run *tr, int64_t day, uint64_t rows, const char *fp,
                              const bool *on, json_t *files, json_t *old)
{
    char date[32], now[40];
    export_format_day(day, date, sizeof(date));
    export_format_time((int64_t)util_wall_ms(), now, sizeof(now));
    json_t *m = json_object(), *cols = json_array(), *fmts = json_array();
    if (!m || !cols || !fmts) {
        json_decref(m);
        json_decref(cols);
        json_decref(fmts);
        return NULL;
    }
    json_object_set_new(m, "table", json_string(tr->t->name));
    json_object_set_new(m, "date", json_string(date));
    json_object_set_new(m, "day_column", json_string(tr->t->day_col));
    json_object_set_new(m, "rows", json_integer((json_int_t)rows));
    json_object_set_new(m, "fingerprint", json_string(fp));
    json_object_set_new(m, "exported_at", json_string(now));
    json_object_set_new(m, "daemon_version", json_string(COINGEST_VERSION));
    json_object_set_new(m, "manifest_version", json_integer(1));
    for (size_t i = 0; i < tr->ncols; i++)
        json_array_append_new(
            cols, json_pack("{s:s,s:s}", "name", tr->cols[i].name, "type", tr->cols[i].type));
    json_object_set_new(m, "columns", cols);
    for (int f = 0; f < NFMT; f++)
        if (on[f])
            json_array_append_new(fmts, json_string(fmt_ext[f]));
    json_object_set_new(m, "formats", fmts);
    json_object_set_new(m, "null", json_string("csv: an empty unquoted field; jsonl: null"));
    json_object_set_new(m, "files", json_incref(files));
    if (old) {
        json_t *prev = json_object();
        json_object_set_new(prev, "exported_at", json_incref(json_object_get(old, "exported_at")));
        json_object_set_new(prev, "rows", json_incref(json_object_get(old, "rows")));
        json_object_set_new(prev, "fingerprint", json_incref(json_object_get(old, "fingerprint")));
        json_object_set_new(m, "replaces", prev);
    } else {
        json_object_set_new(m, "replaces", json_null());
    }
    json_object_set_new(m, "stale", stale_names(old, files));
    return m;
}

/* Puts the export in `tmp` in place of `final` (see the top of the file). */
static int swap_in(const char *tmp, const char *final, const char *tdir, const char *date)
{
    struct stat sb;
    int rc = 0;
    if (stat(final, &sb) == 0) {
        if (renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_EXCHANGE) == 0) {
            rc = fsync_path(tdir);
            remove_dir(tmp); /* the old export, now under the temporary name */
            return rc;
        }
        /* A file system without RENAME_EXCHANGE: the old export steps aside first; a crash
         * between the two renames leaves no date= directory, and the next run exports the day
         * again. */
        char old[PATH_MAX];
        pathf(old, "%s/.old-date=%s", tdir, date);
        remove_dir(old);
        if (rename(final, old) < 0)
            return -errno;
        if (rename(tmp, final) < 0)
            return -errno;
        rc = fsync_path(tdir);
        remove_dir(old);
        return rc;
    }
    if (rename(tmp, final) < 0)
        return -errno;
    return fsync_path(tdir);
}

/* Exports one day when it is missing or changed. */
static int export_day(struct table_run *tr, int64_t day)
{
    struct export_plan *p = tr->p;
    char date[32], final[PATH_MAX], tmp[PATH_MAX], mpath[PATH_MAX], fp[128];
    export_format_day(day, date, sizeof(date));
    pathf(final, "%s/date=%s", tr->tdir, date);
    pathf(tmp, "%s/.tmp-date=%s", tr->tdir, date);
    pathf(mpath, "%s/_manifest.json", final);

    if (mysql_query(tr->conn, "START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY") != 0) {
        fail_db(tr, "starting a read");
        return -EIO;
    }
    uint64_t rows = 0;
    int rc = fingerprint(tr, day, &rows, fp, sizeof(fp));
    json_t *old = NULL, *files = NULL, *m = NULL;
    struct day_out o = {.tr = tr, .on = {p->csv, p->jsonl}};
    if (rc || rows == 0)
        goto done;
    old = json_load_file(mpath, 0, NULL);
    const char *ofp = json_string_value(json_object_get(old, "fingerprint"));
    if (ofp && strcmp(ofp, fp) == 0 && same_formats(old, o.on)) {
        p->days_unchanged++;
        goto done;
    }
    remove_dir(tmp);
    if ((rc = mkdirs(tmp)) != 0) {
        export_fail(p, tmp, strerror(-rc));
        goto done;
    }
    pathf(o.dir, "%s", tmp);
    if (!(files = json_array())) {
        rc = -ENOMEM;
        goto done;
    }
    o.files = files;
    int64_t got = stream_rows(&o, day);
    for (int f = 0; f < NFMT; f++) {
        if (o.part[f].open) {
            int crc = close_part(&o, f);
            if (!rc && got >= 0)
                rc = crc;
        }
    }
    if (got < 0 || rc) {
        rc = got < 0 ? (int)got : rc;
        if (rc != -ECANCELED && rc != -EIO)
            export_fail(p, tmp, strerror(-rc));
        goto done;
    }
    if ((uint64_t)got != rows) {
        export_fail(p, tr->t->name, "the rows read differ from the day's count");
        rc = -EIO;
        goto done;
    }
    if (!(m = build_manifest(tr, day, rows, fp, o.on, files, old)) ||
        (rc = write_json_atomic(tmp, "_manifest.json", m)) != 0 || (rc = fsync_path(tmp)) != 0 ||
        (rc = swap_in(tmp, final, tr->tdir, date)) != 0) {
        rc = rc ? rc : -ENOMEM;
        export_fail(p, final, strerror(-rc));
        goto done;
    }
    p->days_written++;
    p->rows_written += rows;
    for (size_t i = 0; i < json_array_size(files); i++) {
        p->files_written++;
        p->bytes_written +=
            (uint64_t)json_integer_value(json_object_get(json_array_get(files, i), "bytes"));
    }
    log_info("export day written", LOG_S("table", tr->t->name), LOG_S("date", date),
             LOG_U("rows", rows), LOG_U("files", json_array_size(files)),
             LOG_B("replaced", old != NULL));
done:
    for (int f = 0; f < NFMT; f++)
        if (o.part[f].open)
            part_close(&o.part[f], NULL);
    if (rc)
        remove_dir(tmp);
    json_decref(old);
    json_decref(files);
    json_decref(m);
    /* Read-only: nothing to commit, the snapshot just ends. */
    if (tr->conn && mysql_query(tr->conn, "COMMIT") != 0 && !rc) {
        fail_db(tr, "ending a read");
        rc = -EIO;
    }
    return rc;
}

/* Removes what a crashed run left: .tmp-* and .old-* day directories. */
static void sweep(const char *tdir)
{
    DIR *d = opendir(tdir);
    if (!d)
        return;
    struct dirent *e;
    char sub[PATH_MAX];
    while ((e = readdir(d))) {
        if (strncmp(e->d_name, ".tmp-", 5) != 0 && strncmp(e->d_name, ".old-", 5) != 0)
            continue;
        pathf(sub, "%s/%s", tdir, e->d_name);
        log_info("export: removing what an interrupted run left", LOG_S("path", sub));
        remove_dir(sub);
    }
    closedir(d);
}

/* ---- uploads ------------------------------------------------------------------------------ */

static int upload_file(struct export_plan *p, struct export_s3_client *c, const char *table,
                       const char *date, const char *dir, const char *name, const char *want_sha,
                       const char *ctype)
{
    char path[PATH_MAX], key[2048], sha[65], md5[33], err[512];
    uint64_t bytes;
    pathf(path, "%s/%s", dir, name);
    int rc = export_file_digests(path, sha, md5, &bytes);
    if (rc) {
        export_fail(p, path,
                    rc == -ENOENT ? "the local file is gone before its upload" : strerror(-rc));
        return rc;
    }
    if (want_sha && strcmp(sha, want_sha) != 0) {
        export_fail(p, path, "the local file's sha256 differs from its manifest's");
        return -EBADMSG;
    }
    if (export_s3_key(&p->s3, table, date, name, key, sizeof(key)) != 0) {
        export_fail(p, path, "object key too long");
        return -ENAMETOOLONG;
    }
    rc = export_s3_put(c, key, path, ctype, sha, md5, err, sizeof(err));
    if (rc) {
        p->upload_failures++;
        if (rc != -ECANCELED)
            export_fail(p, key, err);
        return rc;
    }
    p->files_uploaded++;
    p->bytes_uploaded += bytes;
    return 0;
}

static void upload_day(struct export_plan *p, struct export_s3_client *c, const char *tdir,
                       const char *table, const char *date)
{
    char dir[PATH_MAX], path[PATH_MAX], now[40], key[2048], err[512];
    pathf(dir, "%s/date=%s", tdir, date);
    pathf(path, "%s/_manifest.json", dir);
    json_t *m = json_load_file(path, 0, NULL);
    if (!m)
        return;
    pathf(path, "%s/_upload.json", dir);
    json_t *st = json_load_file(path, 0, NULL);
    /* Progress belongs to one export of the day and one destination: a re-export or a new
     * bucket, prefix or endpoint starts over. */
    json_t *exported = json_object_get(m, "exported_at");
    char dest[1024];
    snprintf(dest, sizeof(dest), "%s s3://%s/%s", p->s3.endpoint ? p->s3.endpoint : "aws",
             p->s3.bucket, p->s3.prefix ? p->s3.prefix : "");
    if (!st || !json_equal(json_object_get(st, "exported_at"), exported) ||
        !json_is_string(json_object_get(st, "destination")) ||
        strcmp(json_string_value(json_object_get(st, "destination")), dest) != 0) {
        json_decref(st);
        st = json_pack("{s:O,s:s,s:{}}", "exported_at", exported, "destination", dest, "files");
    }
    if (!st || json_object_get(st, "manifest_uploaded_at")) {
        json_decref(st);
        json_decref(m);
        return;
    }
    json_t *done = json_object_get(st, "files");
    size_t i;
    json_t *f;
    int rc = 0;
    json_array_foreach(json_object_get(m, "files"), i, f)
    {
        const char *name = json_string_value(json_object_get(f, "name"));
        const char *sha = json_string_value(json_object_get(f, "sha256"));
        if (!name || !sha) {
            export_fail(p, dir, "a manifest entry without name or sha256");
            rc = -EBADMSG;
            break;
        }
        const char *had = json_string_value(json_object_get(json_object_get(done, name), "sha256"));
        if (had && strcmp(had, sha) == 0)
            continue;
        if (cancelled(p) ||
            (rc = upload_file(p, c, table, date, dir, name, sha, "application/gzip")) != 0)
            break;
        export_format_time((int64_t)util_wall_ms(), now, sizeof(now));
        json_object_set_new(done, name, json_pack("{s:s,s:s}", "sha256", sha, "uploaded_at", now));
        if ((rc = write_json_atomic(dir, "_upload.json", st)) != 0) {
            export_fail(p, dir, strerror(-rc));
            break;
        }
        if (p->s3.delete_local) {
            char fpath[PATH_MAX];
            pathf(fpath, "%s/%s", dir, name);
            unlink(fpath);
        }
    }
    if (!rc && !cancelled(p) && !json_is_true(json_object_get(st, "stale_deleted"))) {
        json_array_foreach(json_object_get(m, "stale"), i, f)
        {
            if (export_s3_key(&p->s3, table, date, json_string_value(f), key, sizeof(key)) ||
                (rc = export_s3_delete(c, key, err, sizeof(err))) != 0) {
                if (rc != -ECANCELED)
                    export_fail(p, key, rc ? err : "object key too long");
                rc = rc ? rc : -ENAMETOOLONG;
                break;
            }
            p->stale_deleted++;
        }
        if (!rc) {
            json_object_set_new(st, "stale_deleted", json_true());
            rc = write_json_atomic(dir, "_upload.json", st);
        }
    }
    if (!rc && !cancelled(p) &&
        (rc = upload_file(p, c, table, date, dir, "_manifest.json", NULL, "application/json")) ==
            0) {
        export_format_time((int64_t)util_wall_ms(), now, sizeof(now));
        json_object_set_new(st, "manifest_uploaded_at", json_string(now));
        if ((rc = write_json_atomic(dir, "_upload.json", st)) != 0)
            export_fail(p, dir, strerror(-rc));
        else
            log_info("export day uploaded", LOG_S("table", table), LOG_S("date", date));
    }
    json_decref(st);
    json_decref(m);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Uploads every day directory of a table that is not fully uploaded, oldest first. */
static void upload_table(struct export_plan *p, struct export_s3_client *c, const char *tdir,
                         const char *table)
{
    DIR *d = opendir(tdir);
    if (!d)
        return;
    struct strlist days = {0};
    struct dirent *e;
    int64_t day;
    while ((e = readdir(d)))
        if (export_parse_day_dir(e->d_name, &day) == 0)
            strlist_push(&days, e->d_name + 5, strlen(e->d_name + 5));
    closedir(d);
    qsort(days.items, days.n, sizeof(*days.items), cmp_str);
    for (size_t i = 0; i < days.n && !cancelled(p); i++)
        upload_day(p, c, tdir, table, days.items[i]);
    strlist_clear(&days);
}

/* ---- the run ------------------------------------------------------------------------------ */

void export_execute(struct export_plan *p)
{
    char err[512];
    mysql_thread_init();
    MYSQL *conn = db_connect(&p->db, err, sizeof(err));
    if (!conn) {
        export_fail(p, "connecting to the database", err);
        mysql_thread_end();
        return;
    }
    int64_t today = p->now_ms / EXPORT_MS_DAY;
    for (size_t t = 0; t < p->ntables && conn && !cancelled(p); t++) {
        struct table_run tr = {.p = p, .conn = conn, .t = export_table_find(p->tables[t])};
        pathf(tr.tdir, "%s/%s", p->dir, tr.t->name);
        if (load_columns(&tr) != 0 || tr.ncols == 0) {
            if (tr.ncols == 0 && !p->error[0])
                log_info("export: no such table, skipped", LOG_S("table", tr.t->name));
            table_run_clear(&tr);
            continue;
        }
        sweep(tr.tdir); /* the table's directory is made with its first day */
        for (int64_t day = today - (int64_t)p->days; day < today && !cancelled(p); day++) {
            if (export_day(&tr, day) != 0)
                p->days_failed++;
            if (!tr.conn || mysql_ping(tr.conn) != 0)
                break; /* the connection is gone: the next run tries again */
        }
        conn = tr.conn; /* NULL when a cancelled read closed it */
        table_run_clear(&tr);
    }
    if (conn)
        mysql_close(conn);
    mysql_thread_end();
    if (!p->upload || cancelled(p))
        return;
    struct export_s3_client *c = export_s3_new(p);
    if (!c) {
        export_fail(p, "s3", "out of memory");
        return;
    }
    for (size_t t = 0; t < p->ntables && !cancelled(p); t++) {
        char tdir[PATH_MAX];
        pathf(tdir, "%s/%s", p->dir, p->tables[t]);
        upload_table(p, c, tdir, p->tables[t]);
    }
    export_s3_free(c);
}
