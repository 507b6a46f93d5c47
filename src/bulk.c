/*
 * bulk: upsert rows through MariaDB's array binding (see bulk.h for the contract).
 *
 * Column-wise binding: for each column one array of indicators (STMT_INDICATOR_NONE or _NULL),
 * one array of 8-byte cells and, for strings, one array of lengths. Connector/C reads a cell
 * by the buffer type's packed length: 8-byte integers and doubles are read in place, while
 * strings and times (no fixed packed length) are read through a pointer per row, so a string
 * cell holds a pointer into the batch's own arena (no copy) and a time cell a pointer to a
 * MYSQL_TIME in a pool. The arrays are sized for the largest execution seen and kept across
 * tasks, so a writer stops allocating after its first batch of each shape.
 *
 * The statement of each spec is prepared on first use and kept until bulk_forget (the
 * connection is closing). A statement whose parameter count does not match the spec is a
 * programming error reported as -EIO with the server's answer.
 */
#include "coingest/bulk.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coingest/sbuf.h"

/* Rows per execution at most: bounds the buffers (about 17 bytes a cell) whatever the cap. */
#define BULK_MAX_ROWS 1000
/* What a COM_STMT_BULK_EXECUTE packet holds besides the rows: header, flags, types. */
#define BULK_HEADER_BYTES 16

enum cls { CLS_NONE = 0, CLS_INT, CLS_DBL, CLS_STR, CLS_TIME };

union cell {
    int64_t i;
    double d;
    const char *s;
    MYSQL_TIME *t;
};

struct column {
    char *ind;
    union cell *cell;
    unsigned long *len;
    MYSQL_TIME *tm;
    enum cls cls;
};

struct bulk {
    MYSQL_STMT *stmt[BATCH_SPEC_COUNT];
    struct column *cols;
    MYSQL_BIND *bind;
    uint16_t ncols_cap;
    uint32_t rows_cap;
    struct sbuf sql;
};

struct bulk *bulk_new(void)
{
    return calloc(1, sizeof(struct bulk));
}

void bulk_forget(struct bulk *k)
{
    if (!k)
        return;
    for (size_t i = 0; i < BATCH_SPEC_COUNT; i++) {
        if (k->stmt[i])
            mysql_stmt_close(k->stmt[i]);
        k->stmt[i] = NULL;
    }
}

static void free_columns(struct bulk *k)
{
    for (uint16_t c = 0; c < k->ncols_cap; c++) {
        free(k->cols[c].ind);
        free(k->cols[c].cell);
        free(k->cols[c].len);
        free(k->cols[c].tm);
    }
    free(k->cols);
    free(k->bind);
    k->cols = NULL;
    k->bind = NULL;
    k->ncols_cap = 0;
    k->rows_cap = 0;
}

void bulk_free(struct bulk *k)
{
    if (!k)
        return;
    bulk_forget(k);
    free_columns(k);
    sbuf_free(&k->sql);
    free(k);
}

bool bulk_supported(MYSQL *conn)
{
    unsigned long caps = 0, ext = 0;
    if (mariadb_get_infov(conn, MARIADB_CONNECTION_SERVER_CAPABILITIES, &caps) != 0 ||
        (caps & CLIENT_MYSQL))
        return false; /* a MySQL server: no COM_STMT_BULK_EXECUTE */
    if (mariadb_get_infov(conn, MARIADB_CONNECTION_EXTENDED_SERVER_CAPABILITIES, &ext) != 0)
        return false;
    return (ext & (MARIADB_CLIENT_STMT_BULK_OPERATIONS >> 32)) != 0;
}

/* Room for ncols columns of rows rows (every array of a column grows together; a time pool
 * only for columns that hold times). 0 or -ENOMEM. */
static int reserve(struct bulk *k, uint16_t ncols, uint32_t rows)
{
    if (ncols > k->ncols_cap) {
        struct column *cols = calloc(ncols, sizeof(*cols));
        MYSQL_BIND *bind = calloc(ncols, sizeof(*bind));
        if (!cols || !bind) {
            free(cols);
            free(bind);
            return -ENOMEM;
        }
        free_columns(k);
        k->cols = cols;
        k->bind = bind;
        k->ncols_cap = ncols;
    }
    if (rows <= k->rows_cap)
        return 0;
    for (uint16_t c = 0; c < k->ncols_cap; c++) {
        struct column *col = &k->cols[c];
        char *ind = realloc(col->ind, rows);
        if (ind)
            col->ind = ind;
        union cell *cell = realloc(col->cell, rows * sizeof(*cell));
        if (cell)
            col->cell = cell;
        unsigned long *len = realloc(col->len, rows * sizeof(*len));
        if (len)
            col->len = len;
        if (!ind || !cell || !len)
            return -ENOMEM;
        free(col->tm); /* allocated on demand, see time_pool */
        col->tm = NULL;
    }
    k->rows_cap = rows;
    return 0;
}

/* The MYSQL_TIME pool of a column that holds times. NULL on OOM. */
static MYSQL_TIME *time_pool(struct bulk *k, struct column *col)
{
    if (!col->tm)
        col->tm = malloc((size_t)k->rows_cap * sizeof(MYSQL_TIME));
    return col->tm;
}

static enum cls cls_of(uint8_t type)
{
    switch (type) {
    case VAL_INT:
        return CLS_INT;
    case VAL_DBL:
        return CLS_DBL;
    case VAL_STR:
    case VAL_JSON:
        return CLS_STR;
    case VAL_TIME:
        return CLS_TIME;
    default:
        return CLS_NONE;
    }
}

/* Bytes a row takes in the bulk packet (an upper bound): an indicator per value, then the
 * value as the protocol encodes it. */
static uint64_t row_bytes(const struct batch *b, uint32_t r)
{
    uint64_t n = 0;
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        const struct val *v = batch_val(b, r, c);
        n += 1;
        switch (cls_of(v->type)) {
        case CLS_INT:
        case CLS_DBL:
            n += 8;
            break;
        case CLS_TIME:
            n += 12;
            break;
        case CLS_STR:
            n += 9 + (uint64_t)v->len;
            break;
        default:
            break;
        }
    }
    return n;
}

/* Can row r join an execution whose columns have the classes set so far? */
static bool row_fits(const struct bulk *k, const struct batch *b, uint32_t r)
{
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        enum cls x = cls_of(batch_val(b, r, c)->type);
        if (x != CLS_NONE && k->cols[c].cls != CLS_NONE && k->cols[c].cls != x)
            return false;
    }
    return true;
}

/* Milliseconds since the epoch as a UTC MYSQL_TIME. The date comes from the day count by the
 * proleptic Gregorian calendar's 400-year cycles (146,097 days), with years starting on
 * 1 March so that the leap day ends a year; no gmtime_r, whose time zone lock and conversion
 * were 2% of a sweep's CPU. */
static void to_mysql_time(int64_t wall_ms, MYSQL_TIME *t)
{
    int64_t secs = wall_ms / 1000, ms = wall_ms % 1000;
    if (ms < 0) {
        ms += 1000;
        secs--;
    }
    int64_t days = secs / 86400, sod = secs % 86400;
    if (sod < 0) {
        sod += 86400;
        days--;
    }
    days += 719468; /* from 1970-01-01 to 0000-03-01 */
    int64_t era = (days >= 0 ? days : days - 146096) / 146097;
    int64_t doe = days - era * 146097;                                   /* day of the era */
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365; /* year of the era */
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);               /* day of the year */
    int64_t mp = (5 * doy + 2) / 153;                                    /* month, March = 0 */
    int64_t month = mp < 10 ? mp + 3 : mp - 9;
    memset(t, 0, sizeof(*t));
    t->year = (unsigned)(yoe + era * 400 + (month <= 2));
    t->month = (unsigned)month;
    t->day = (unsigned)(doy - (153 * mp + 2) / 5 + 1);
    t->hour = (unsigned)(sod / 3600);
    t->minute = (unsigned)(sod / 60 % 60);
    t->second = (unsigned)(sod % 60);
    t->second_part = (unsigned long)ms * 1000;
    t->time_type = MYSQL_TIMESTAMP_DATETIME;
}

/* Stores row r of b as row n of the execution. 0 or -ENOMEM. */
static int put_row(struct bulk *k, const struct batch *b, uint32_t r, uint32_t n)
{
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        const struct val *v = batch_val(b, r, c);
        struct column *col = &k->cols[c];
        enum cls x = cls_of(v->type);
        if (x == CLS_NONE) {
            col->ind[n] = STMT_INDICATOR_NULL;
            col->cell[n].s = NULL;
            col->len[n] = 0;
            continue;
        }
        col->cls = x;
        col->ind[n] = STMT_INDICATOR_NONE;
        col->len[n] = 0;
        switch (x) {
        case CLS_INT:
            col->cell[n].i = v->u.i;
            break;
        case CLS_DBL:
            col->cell[n].d = v->u.d;
            break;
        case CLS_STR:
            col->cell[n].s = v->len ? v->u.s : "";
            col->len[n] = v->len;
            break;
        case CLS_TIME:
            if (!time_pool(k, col))
                return -ENOMEM;
            to_mysql_time(v->u.i, &col->tm[n]);
            col->cell[n].t = &col->tm[n];
            break;
        default:
            break;
        }
    }
    return 0;
}

static enum enum_field_types field_type(enum cls x)
{
    switch (x) {
    case CLS_INT:
        return MYSQL_TYPE_LONGLONG;
    case CLS_DBL:
        return MYSQL_TYPE_DOUBLE;
    case CLS_TIME:
        return MYSQL_TYPE_DATETIME;
    default:
        return MYSQL_TYPE_STRING; /* strings, JSON, and a column that is NULL throughout */
    }
}

static int stmt_fail(MYSQL_STMT *st, unsigned *err_no, char *err, size_t errlen)
{
    *err_no = mysql_stmt_errno(st);
    snprintf(err, errlen, "%s", mysql_stmt_error(st));
    return -EIO;
}

/* The spec's prepared statement on conn, prepared on first use. NULL with the error set. */
static MYSQL_STMT *statement(struct bulk *k, MYSQL *conn, const struct batch_spec *spec,
                             unsigned *err_no, char *err, size_t errlen, int *rc)
{
    if (k->stmt[spec->id])
        return k->stmt[spec->id];
    sbuf_reset(&k->sql);
    sbuf_puts(&k->sql, "INSERT INTO `");
    sbuf_puts(&k->sql, spec->table);
    sbuf_puts(&k->sql, "` (");
    for (uint16_t c = 0; c < spec->ncols; c++) {
        sbuf_puts(&k->sql, c ? ",`" : "`");
        sbuf_puts(&k->sql, spec->cols[c]);
        sbuf_puts(&k->sql, "`");
    }
    sbuf_puts(&k->sql, ") VALUES (");
    for (uint16_t c = 0; c < spec->ncols; c++)
        sbuf_puts(&k->sql, c ? ",?" : "?");
    sbuf_puts(&k->sql, ") ON DUPLICATE KEY UPDATE ");
    sbuf_puts(&k->sql, spec->sql);
    if (k->sql.oom) {
        *rc = -ENOMEM;
        return NULL;
    }
    MYSQL_STMT *st = mysql_stmt_init(conn);
    if (!st) {
        *rc = -ENOMEM;
        return NULL;
    }
    if (mysql_stmt_prepare(st, k->sql.p, (unsigned long)k->sql.len) != 0) {
        *rc = stmt_fail(st, err_no, err, errlen);
        mysql_stmt_close(st);
        return NULL;
    }
    if (mysql_stmt_param_count(st) != spec->ncols) {
        /* The spec's update clause holds a `?` of its own: not a statement for this path. */
        *err_no = 0;
        snprintf(err, errlen, "bulk statement for %s has %lu parameters, expected %u", spec->table,
                 mysql_stmt_param_count(st), (unsigned)spec->ncols);
        mysql_stmt_close(st);
        *rc = -ENOTSUP;
        return NULL;
    }
    k->stmt[spec->id] = st;
    return st;
}

/* Sends the n rows gathered in k's columns. 0 or -EIO. */
static int execute(struct bulk *k, MYSQL_STMT *st, uint16_t ncols, uint32_t n, unsigned *err_no,
                   char *err, size_t errlen)
{
    for (uint16_t c = 0; c < ncols; c++) {
        struct column *col = &k->cols[c];
        MYSQL_BIND *bd = &k->bind[c];
        memset(bd, 0, sizeof(*bd));
        bd->buffer_type = field_type(col->cls);
        bd->buffer = col->cell;
        bd->u.indicator = col->ind;
        if (col->cls == CLS_STR || col->cls == CLS_NONE)
            bd->length = col->len;
    }
    unsigned int size = n;
    if (mysql_stmt_attr_set(st, STMT_ATTR_ARRAY_SIZE, &size) != 0 ||
        mysql_stmt_bind_param(st, k->bind) != 0 || mysql_stmt_execute(st) != 0)
        return stmt_fail(st, err_no, err, errlen);
    return 0;
}

int bulk_upsert(struct bulk *k, MYSQL *conn, const struct batch *b, uint32_t lo, uint32_t hi,
                uint64_t cap, uint64_t hard, unsigned *err_no, char *err, size_t errlen)
{
    const struct batch_spec *spec = b->spec;
    uint16_t ncols = spec->ncols;
    *err_no = 0;
    err[0] = '\0';
    if (lo >= hi)
        return 0;
    uint32_t want = hi - lo < BULK_MAX_ROWS ? hi - lo : BULK_MAX_ROWS;
    if (reserve(k, ncols, want) != 0)
        return -ENOMEM;
    int rc = 0;
    MYSQL_STMT *st = statement(k, conn, spec, err_no, err, errlen, &rc);
    if (!st)
        return rc;
    uint64_t header = BULK_HEADER_BYTES + 2 * (uint64_t)ncols;
    uint32_t r = lo;
    while (r < hi) {
        for (uint16_t c = 0; c < ncols; c++)
            k->cols[c].cls = CLS_NONE;
        uint32_t n = 0;
        uint64_t bytes = header;
        for (; r < hi && n < k->rows_cap; r++, n++) {
            uint64_t rb = row_bytes(b, r);
            if (n == 0 && header + rb > hard) {
                snprintf(err, errlen, "row of %" PRIu64 " bytes exceeds max_allowed_packet", rb);
                return -E2BIG;
            }
            if (n > 0 && (bytes + rb > cap || !row_fits(k, b, r)))
                break;
            if (put_row(k, b, r, n) != 0)
                return -ENOMEM;
            bytes += rb;
        }
        rc = execute(k, st, ncols, n, err_no, err, errlen);
        if (rc)
            return rc;
    }
    return 0;
}
