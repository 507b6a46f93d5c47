/*
 * sink: batches from the loop thread to MariaDB/MySQL through a pool of writer threads, with
 * a durable spool for whatever cannot be written now. docs/sink.md has the full design; in
 * short:
 *
 * LOOP THREAD. Every submitted batch gets a sequence number (its place in submission order)
 * and becomes, after coalescing, one or more tasks of at most batch_rows rows. A task is first
 * "open" (one per spec, still taking rows) until it is full or flush_interval has passed,
 * then "ready" (a list sorted by seq), then "in flight" (handed to the writers). The loop
 * hands a ready task to the writers only if nothing it could overtake touches the same rows:
 * each task carries the sorted hashes of its rows' primary keys, and a task waits while an
 * earlier task for the same table with a common key is ready or in flight. So rows of one key
 * are written in submission order, while unrelated tasks (even of one table) run in parallel.
 * A STATEMENT task is a full barrier: it runs alone, after everything before it.
 *
 * THE SPOOL. A batch goes to the spool instead of memory when the database is known to be
 * down (after a short grace period), when memory already holds max_pending_rows, when the
 * spool still holds unread records (so new rows queue behind old ones), and during shutdown.
 * When the database has been down for the grace period, everything in memory that is not in
 * flight is spilled to the spool, so memory stays bounded whatever the outage length. Spool
 * records keep their seq, and the spool replays by seq; replayed tasks go through the same
 * ready list and key checks, a few records at a time. A memory task never overtakes an unread
 * spool record with a smaller seq.
 *
 * WHEN THE SPOOL FAILS (disk full, I/O error) the rows it did not take stay in memory, up to
 * a hard cap of twice max_pending_rows; past it they are refused, logged and counted as lost
 * (coingest_rows_lost_total, sink_stats.rows_lost), and only they are reported as not kept.
 * Rows kept in memory this way get a seq after every record spooled before them, and the rule
 * above keeps them behind older unread records, so per-key order holds. Rows that can never
 * be written (left in memory at the end of a shutdown, or dropped on an allocation failure)
 * are counted the same way.
 *
 * TIMERS. Every sink timer is armed through tstart()/tstop(); the end of the shutdown stops
 * them all and sets timers_off, after which none is armed again. So sink_free() never touches
 * the timers facility once the shutdown callback has run: the daemon may free the timers
 * first. (Without a completed shutdown, sink_free must run before timers_free.)
 *
 * WRITER THREADS. Each owns one connection and loops: connect (with full-jitter backoff; the
 * first one to connect runs the migrations), take a task from the shared work queue, write it
 * in one transaction of multi-row INSERT ... ON DUPLICATE KEY UPDATE statements (each under
 * batch_bytes and max_allowed_packet), and put it on the done queue with uv_async_send. A row
 * the server refuses for good is isolated by bisecting the task; the good rows are committed
 * and each bad one goes to rejected_rows (or a dead-letter file). A lost connection gives the
 * task back (RETRY) and the writer reconnects; deadlocks and lock waits are retried in place.
 * Writers never touch loop objects; everything shared sits under `mu`.
 */
#include "coingest/sink.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <jansson.h>
#include <mysqld_error.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "coingest/backoff.h"
#include "coingest/bulk.h"
#include "coingest/db.h"
#include "coingest/list.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/sbuf.h"
#include "coingest/spool.h"
#include "coingest/util.h"

/* How long the database may be unreachable before memory is spilled to the spool. */
#define SINK_DOWN_GRACE_MS 1000
/* When the spool refuses rows, memory may hold up to this many times max_pending_rows. */
#define SINK_MEM_HARD_FACTOR 2
/* Room left in a statement for the protocol header and our own slack. */
#define PACKET_SLACK 1024
/* Tasks handed to the writers per writer: one being written and one waiting in the work queue,
 * so a writer that finishes takes its next task at once instead of waiting for the loop thread
 * (busy parsing a page) to see the completion and dispatch again. */
#define TASKS_PER_WRITER 2
/* How far down the ready list dispatch looks for a task that may overtake blocked ones. */
#define DISPATCH_LOOKAHEAD 64
/* Writers' reconnect backoff. */
#define CONNECT_BACKOFF_BASE_MS 200
#define CONNECT_BACKOFF_CAP_MS  5000
/* In-place retries of deadlocks and lock wait timeouts before the task goes back. */
#define TRANSIENT_RETRIES 6
/* A row that alone exceeds max_allowed_packet: not a server code, counted as a row error. */
#define ERR_ROW_TOO_BIG 1u
/* Out of memory while building SQL: retried like a transient error. */
#define ERR_NOMEM ER_OUT_OF_RESOURCES

/* --- primary keys ------------------------------------------------------------------------- */

/* How many leading columns of each spec form the table's primary (or unique) key. The column
 * order in batch.c puts them first. 0: no key known, the task conflicts with every task of its
 * table (safe for a spec added later). */
_Static_assert(BATCH_SPEC_COUNT == 25, "give the new spec its key width below");
static const uint8_t key_cols[BATCH_SPEC_COUNT] = {
    [BATCH_ASSETS_LIST] = 1,
    [BATCH_ASSETS_MARKET] = 1,
    [BATCH_PRICES] = 4,
    [BATCH_MARKET_SNAPSHOTS] = 4,
    [BATCH_GLOBAL_SNAPSHOTS] = 2,
    [BATCH_CATEGORIES] = 1,
    [BATCH_ASSET_CATEGORIES] = 2,
    [BATCH_JOB_RUNS] = 2,
    [BATCH_ASSETS_DELIST] = 0,
    [BATCH_CANDLES] = 5,
    [BATCH_ASSET_ALIASES] = 2,
    [BATCH_PRICES_VWAP] = 4,
    [BATCH_MARKET_SNAPSHOTS_VWAP] = 4,
    [BATCH_CANDLE_FILL] = 0,
    /* analytics: statements are barriers and need none */
    [BATCH_ANALYTICS_STATE] = 1,
    [BATCH_INDICATORS_DAILY] = 4,
    [BATCH_API_USAGE] = 2,
};

/* --- tasks -------------------------------------------------------------------------------- */

enum task_result { TASK_OK = 0, TASK_RETRY = 1 };

struct task {
    struct list_link link; /* in one tlist at a time */
    struct batch *b;
    uint64_t seq;
    const char *table;
    bool barrier;
    bool keyed; /* keys computed */
    uint64_t *keys;
    uint32_t nkeys;
    /* The spool records that hold this task's rows, each whole (none: the spool refused them,
     * the rows are only here). A task made by the replay holds one. */
    struct spool_rec **recs;
    uint32_t nrecs, recs_cap;
    bool replay;        /* loaded by the replay: rows counted in replay_rows */
    uint64_t opened_ms; /* open tasks: when the first rows came */
    uint64_t stmt_cap;  /* bytes per statement (batch_bytes at dispatch) */
    uint64_t ticket;    /* place in the writers' queue, shared with reads (under mu) */
    /* Set by the writer. */
    enum task_result result;
    bool conn_lost;
    uint32_t committed, rejected;
};

/* A list of tasks (list.h) that knows its length. */
struct tlist {
    struct list_link head;
    size_t n;
};

#define TASK_OF(l) LIST_CONTAINER_OF(l, struct task, link)

static void tl_init(struct tlist *l)
{
    list_init(&l->head);
    l->n = 0;
}

static bool tl_empty(const struct tlist *l)
{
    return list_empty(&l->head);
}

static struct task *tl_first(struct tlist *l)
{
    return tl_empty(l) ? NULL : TASK_OF(l->head.next);
}

/* The task after t in l, or NULL at the end. */
static struct task *tl_next(struct tlist *l, struct task *t)
{
    return t->link.next == &l->head ? NULL : TASK_OF(t->link.next);
}

static void tl_push(struct tlist *l, struct task *t)
{
    list_append(&l->head, &t->link);
    l->n++;
}

static void tl_remove(struct tlist *l, struct task *t)
{
    list_remove(&t->link);
    l->n--;
}

/* Inserts by ascending seq, searching from the tail (new tasks usually go last). */
static void tl_insert_sorted(struct tlist *l, struct task *t)
{
    struct list_link *p = l->head.prev;
    while (p != &l->head && TASK_OF(p)->seq > t->seq)
        p = p->prev;
    list_insert_after(p, &t->link);
    l->n++;
}

static struct task *task_new(struct batch *b, uint64_t seq)
{
    struct task *t = calloc(1, sizeof(*t));
    if (!t)
        return NULL;
    t->b = b;
    t->seq = seq;
    t->table = b->spec->table;
    t->barrier = b->spec->kind == BATCH_KIND_STATEMENT;
    return t;
}

static void task_free(struct task *t)
{
    if (!t)
        return;
    batch_free(t->b);
    free(t->keys);
    free(t->recs);
    free(t);
}

static int task_add_rec(struct task *t, struct spool_rec *rec)
{
    if (t->nrecs == t->recs_cap) {
        uint32_t cap = t->recs_cap ? 2 * t->recs_cap : 2;
        struct spool_rec **r = realloc(t->recs, cap * sizeof(*r));
        if (!r)
            return -ENOMEM;
        t->recs = r;
        t->recs_cap = cap;
    }
    t->recs[t->nrecs++] = rec;
    return 0;
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
    const unsigned char *c = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ c[i]) * 1099511628211ull;
    return h;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Hashes each row's key columns (sorted, unique). Strings lose trailing spaces first: the
 * tables' PAD SPACE collation makes 'a' and 'a ' the same key. */
static void task_keys(struct task *t)
{
    if (t->keyed)
        return;
    t->keyed = true;
    const struct batch *b = t->b;
    uint8_t k = key_cols[b->spec->id];
    if (k == 0 || b->nrows == 0)
        return;
    t->keys = malloc((size_t)b->nrows * sizeof(uint64_t));
    if (!t->keys)
        return; /* no keys: conflicts with everything of its table */
    for (uint32_t r = 0; r < b->nrows; r++) {
        uint64_t h = fnv(1469598103934665603ull, t->table, strlen(t->table));
        for (uint16_t c = 0; c < k; c++) {
            const struct val *v = batch_val(b, r, c);
            h = fnv(h, &v->type, 1);
            if (v->type == VAL_STR || v->type == VAL_JSON) {
                size_t n = v->len;
                while (n > 0 && v->u.s[n - 1] == ' ')
                    n--;
                h = fnv(h, v->u.s, n);
            } else if (v->type != VAL_NULL) {
                h = fnv(h, &v->u.i, sizeof(v->u.i));
            }
            h = fnv(h, "\x1f", 1);
        }
        t->keys[r] = h;
    }
    qsort(t->keys, b->nrows, sizeof(uint64_t), cmp_u64);
    uint32_t n = 1;
    for (uint32_t i = 1; i < b->nrows; i++)
        if (t->keys[i] != t->keys[n - 1])
            t->keys[n++] = t->keys[i];
    t->nkeys = n;
}

/* May a and b not run in either order? */
static bool must_keep_order(struct task *a, struct task *b)
{
    if (a->barrier || b->barrier)
        return true;
    if (strcmp(a->table, b->table) != 0)
        return false;
    task_keys(a);
    task_keys(b);
    if (!a->keys || !b->keys)
        return true;
    uint32_t i = 0, k = 0;
    while (i < a->nkeys && k < b->nkeys) {
        if (a->keys[i] == b->keys[k])
            return true;
        if (a->keys[i] < b->keys[k])
            i++;
        else
            k++;
    }
    return false;
}

/* --- reads -------------------------------------------------------------------------------- */

/* One sink_read: made on the loop, run by a writer, answered on the loop. */
struct read {
    struct read *next;
    uint64_t ticket; /* place in the writers' queue, shared with tasks (under mu) */
    char *sql;
    char **params; /* nparams of them; NULL for SQL NULL */
    size_t nparams;
    size_t max_rows;
    sink_read_cb cb;
    void *arg;
    /* Set by the writer, or by the loop when it answers the read itself. */
    int rc;
    bool conn_lost;
    char err[640]; /* room for "database unreachable: " + the last connect error */
    struct sink_rows rows;
};

/* A FIFO of reads. */
struct rqueue {
    struct read *head, **tail;
};

static void rq_init(struct rqueue *q)
{
    q->head = NULL;
    q->tail = &q->head;
}

static void rq_push(struct rqueue *q, struct read *r)
{
    r->next = NULL;
    *q->tail = r;
    q->tail = &r->next;
}

static struct read *rq_pop(struct rqueue *q)
{
    struct read *r = q->head;
    if (r) {
        q->head = r->next;
        if (!q->head)
            q->tail = &q->head;
        r->next = NULL;
    }
    return r;
}

static void rows_free(struct sink_rows *rows)
{
    if (rows->names)
        for (uint32_t c = 0; c < rows->ncols; c++)
            free(rows->names[c]);
    if (rows->cells)
        for (size_t i = 0; i < (size_t)rows->nrows * rows->ncols; i++)
            free(rows->cells[i]);
    free(rows->names);
    free(rows->cells);
    memset(rows, 0, sizeof(*rows));
}

static void read_free(struct read *r)
{
    if (!r)
        return;
    free(r->sql);
    for (size_t i = 0; r->params && i < r->nparams; i++)
        free(r->params[i]);
    free(r->params);
    rows_free(&r->rows);
    free(r);
}

static void read_fail(struct read *r, int rc, const char *msg)
{
    r->rc = rc;
    snprintf(r->err, sizeof(r->err), "%s", msg);
}

/* --- shared state ------------------------------------------------------------------------- */

/* The [database] settings a writer connects with; replaced as a whole on reload. */
struct dbconf {
    unsigned refs;
    uint64_t gen;
    struct cfg_database db; /* a deep copy */
};

enum schema_state { SCHEMA_NONE = 0, SCHEMA_RUNNING, SCHEMA_READY };

enum shut_state { SHUT_NONE = 0, SHUT_GRACEFUL, SHUT_HARD, SHUT_STOPPING, SHUT_DONE };

struct writer {
    struct sink *s;
    unsigned idx;
    pthread_t tid;
    bool started;
    /* Writer-thread only. */
    MYSQL *conn;
    uint64_t max_packet;
    uint64_t gen;
    struct rng rng;
    struct sbuf stmt, row, prefix;
    struct bulk *bulk; /* the binary path's statements and buffers (made on first use) */
    bool bulk_ok;      /* the connection takes array binding (a MariaDB server) */
    unsigned err_no;
    char err_msg[512];
    /* Under mu. */
    int sockfd; /* while a task runs, for an abort */
    bool exited;
};

struct sink {
    uv_loop_t *loop;
    struct timers *timers;

    /* Loop thread. */
    uint32_t batch_rows;
    uint64_t batch_bytes;
    uint64_t flush_ms;
    uint64_t max_pending;
    char *spool_path;
    struct spool *spool;
    bool started;
    uint64_t next_seq;
    struct task *open[BATCH_SPEC_COUNT];
    struct tlist ready;
    struct task **inflight;
    unsigned ninflight, inflight_cap;
    unsigned syncs_inflight; /* sink_submit_async: fdatasyncs on libuv's thread pool */
    uint64_t spool_failures; /* spool_outcome's failures so far: a sync that succeeds clears
                                spool_failing only if none came after it was handed over */
    bool barrier_inflight;
    uint64_t mem_rows;    /* rows of tasks not made by the replay, wherever they are */
    uint64_t bare_rows;   /* of those, rows in no spool record (the spool refused them) */
    uint64_t replay_rows; /* rows of tasks loaded from the spool */
    unsigned replay_tasks;
    bool db_up, db_down, spilled, ever_ready;
    bool spool_failing; /* the last spool write for a submitted batch failed (logged once) */
    int shut;
    struct wheel_timer flush_timer, grace_timer, shut_timer, cb_timer, replay_timer;
    bool timers_off; /* every timer stopped for good: the timers facility may be gone */
    void (*ready_cb)(void *);
    void *ready_arg;
    bool ready_due;
    void (*idle_cb)(void *);
    void *idle_arg;
    bool idle_due;
    void (*shut_cb)(void *);
    void *shut_arg;
    uv_async_t async;
    bool async_init;
    struct sink_stats st;

    /* Shared with the writers, under mu. */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct tlist work, done;
    struct rqueue reads, rdone; /* queued for a writer; answered, for the loop */
    uint64_t ticket;            /* next place in the writers' queue */
    struct writer **w;
    unsigned nw;        /* threads started */
    unsigned nworkers;  /* wanted; writers with idx >= nworkers retire */
    unsigned connected; /* writers with a usable connection */
    bool connect_failed;
    char last_err[512];
    int schema;
    bool stop, abort;
    struct dbconf *conf;
    unsigned exited;
    bool down_logged;
    uint64_t last_ok_mono;
    pthread_mutex_t dl_mu; /* the dead-letter file */
};

/* --- dbconf ------------------------------------------------------------------------------- */

static void dbconf_unref(struct dbconf *c)
{
    if (!c || --c->refs > 0)
        return;
    config_database_clear(&c->db);
    free(c);
}

static struct dbconf *dbconf_new(const struct config *cfg, uint64_t gen)
{
    struct dbconf *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->refs = 1;
    c->gen = gen;
    if (config_database_copy(&c->db, &cfg->database) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

/* Are cfg's connection settings the ones the writers use? config_database_equal() walks
 * config.c's own key table, so a connection key added there is compared here without a change.
 * The keys the sink applies without reconnecting (workers, batch sizes, flush interval,
 * max_pending_rows) are copied from the current settings before comparing: only a real
 * connection change makes the writers reconnect. A key added to [database] later counts as a
 * connection setting until it is listed here (the safe side: a needless reconnect). */
static bool dbconf_same(const struct dbconf *c, const struct config *cfg)
{
    struct cfg_database next = cfg->database;
    next.workers = c->db.workers;
    next.batch_rows = c->db.batch_rows;
    next.batch_bytes = c->db.batch_bytes;
    next.flush_interval_ms = c->db.flush_interval_ms;
    next.max_pending_rows = c->db.max_pending_rows;
    return config_database_equal(&c->db, &next);
}

/* --- small helpers ------------------------------------------------------------------------ */

static void table_labels(char *buf, size_t cap, const char *table)
{
    snprintf(buf, cap, "table=\"%s\"", table);
}

/* --- SQL text (writer threads) ------------------------------------------------------------ */

/* One value as an SQL literal. Doubles print with 17 significant digits and always as an
 * approximate-value literal (with an exponent), so the server parses them as DOUBLE and the
 * stored value is bit-identical to ours. */
static void put_val(struct sbuf *sb, MYSQL *conn, const struct val *v)
{
    char tmp[64];
    int n;
    switch (v->type) {
    case VAL_INT:
        n = snprintf(tmp, sizeof(tmp), "%" PRId64, v->u.i);
        sbuf_append(sb, tmp, (size_t)n);
        break;
    case VAL_DBL:
        n = snprintf(tmp, sizeof(tmp), "%.17g", v->u.d);
        sbuf_append(sb, tmp, (size_t)n);
        if (!strpbrk(tmp, "eE"))
            sbuf_append(sb, "e0", 2);
        break;
    case VAL_TIME:
        db_format_time(v->u.i, tmp + 1, sizeof(tmp) - 2);
        tmp[0] = '\'';
        n = (int)strlen(tmp);
        tmp[n++] = '\'';
        sbuf_append(sb, tmp, (size_t)n);
        break;
    case VAL_STR:
    case VAL_JSON:
        sbuf_reserve(sb, 2 * (size_t)v->len + 4);
        if (sb->oom)
            return;
        sb->p[sb->len++] = '\'';
        if (v->len)
            sb->len += mysql_real_escape_string(conn, sb->p + sb->len, v->u.s, v->len);
        sb->p[sb->len++] = '\'';
        sb->p[sb->len] = '\0';
        break;
    default:
        sbuf_append(sb, "NULL", 4);
        break;
    }
}

static void put_row(struct sbuf *sb, MYSQL *conn, const struct batch *b, uint32_t r)
{
    sbuf_append(sb, "(", 1);
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        if (c)
            sbuf_append(sb, ",", 1);
        put_val(sb, conn, batch_val(b, r, c));
    }
    sbuf_append(sb, ")", 1);
}

/* A row as a JSON object, for rejected_rows and the dead-letter file. */
static char *row_json(const struct batch *b, uint32_t r)
{
    json_t *o = json_object();
    if (!o)
        return NULL;
    for (uint16_t c = 0; c < b->spec->ncols; c++) {
        const struct val *v = batch_val(b, r, c);
        json_t *x = NULL;
        char tmp[40];
        switch (v->type) {
        case VAL_INT:
            x = json_integer(v->u.i);
            break;
        case VAL_DBL:
            x = json_real(v->u.d);
            break;
        case VAL_TIME:
            util_format_iso8601((uint64_t)v->u.i, tmp, sizeof(tmp));
            x = json_string(tmp);
            break;
        case VAL_JSON:
            x = json_loadb(v->u.s ? v->u.s : "", v->len, JSON_DECODE_ANY, NULL);
            if (x)
                break;
            /* Invalid JSON is kept as its text. */
            /* fall through */
        case VAL_STR:
            x = json_stringn(v->u.s ? v->u.s : "", v->len);
            if (!x) {
                /* Not UTF-8: keep the bytes in hex. */
                char *hex = malloc(2 * (size_t)v->len + 1);
                if (hex) {
                    for (uint32_t i = 0; i < v->len; i++)
                        sprintf(hex + 2 * i, "%02x", (unsigned char)v->u.s[i]);
                    hex[2 * (size_t)v->len] = '\0';
                    x = json_pack("{s:s}", "hex", hex);
                    free(hex);
                }
            }
            break;
        default:
            x = json_null();
            break;
        }
        json_object_set_new(o, b->spec->cols[c], x ? x : json_null());
    }
    char *s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
    json_decref(o);
    return s;
}

/* --- writer: statements ------------------------------------------------------------------- */

static void werr(struct writer *w, unsigned no, const char *msg)
{
    w->err_no = no;
    snprintf(w->err_msg, sizeof(w->err_msg), "%s", msg);
}

/* Runs one statement; on failure records the error and rolls back. */
static int wexec(struct writer *w, const char *sql, size_t len)
{
    if (mysql_real_query(w->conn, sql, (unsigned long)len) == 0)
        return 0;
    werr(w, mysql_errno(w->conn), mysql_error(w->conn));
    if (db_error_class(w->err_no) != DB_ERR_CONNECTION)
        mysql_rollback(w->conn);
    return -1;
}

static int wcommit(struct writer *w)
{
    if (mysql_commit(w->conn) == 0)
        return 0;
    werr(w, mysql_errno(w->conn), mysql_error(w->conn));
    if (db_error_class(w->err_no) != DB_ERR_CONNECTION)
        mysql_rollback(w->conn);
    return -1;
}

static uint64_t stmt_limit(const struct writer *w, const struct task *t)
{
    uint64_t hard = w->max_packet > 2 * PACKET_SLACK ? w->max_packet - PACKET_SLACK : 0;
    uint64_t cap = t->stmt_cap ? t->stmt_cap : hard;
    if (hard && cap > hard)
        cap = hard;
    return cap;
}

/* Sends w->stmt as built; an allocation that failed while building it fails the batch.
 * 0, or -1 with the error in w. */
static int wexec_stmt(struct writer *w)
{
    if (w->stmt.oom) {
        werr(w, ERR_NOMEM, "out of memory building a statement");
        mysql_rollback(w->conn);
        return -1;
    }
    return wexec(w, w->stmt.p, w->stmt.len);
}

/* Ends the multi-row INSERT in w->stmt with its ON DUPLICATE KEY UPDATE clause and sends it. */
static int wexec_upsert(struct writer *w, const char *upd, const char *sql)
{
    sbuf_puts(&w->stmt, upd);
    sbuf_puts(&w->stmt, sql);
    return wexec_stmt(w);
}

/* Rows [lo, hi) of an UPSERT task in one transaction through array binding (bulk.h): the
 * same statement and the same transaction as the text path, with every value in binary. 0, or
 * -1 with the error in w. */
static int try_upsert(struct writer *w, struct task *t, uint32_t lo, uint32_t hi);

static int try_upsert_bulk(struct writer *w, struct task *t, uint32_t lo, uint32_t hi)
{
    uint64_t hard = w->max_packet > 2 * PACKET_SLACK ? w->max_packet - PACKET_SLACK : UINT64_MAX;
    unsigned no = 0;
    int rc = bulk_upsert(w->bulk, w->conn, t->b, lo, hi, stmt_limit(w, t), hard, &no, w->err_msg,
                         sizeof(w->err_msg));
    if (rc == 0)
        return wcommit(w);
    if (rc == -ENOTSUP) {
        log_warn("binary writes unavailable for a table; using SQL text on this connection",
                 LOG_S("table", t->table), LOG_S("error", w->err_msg));
        w->bulk_ok = false;
        return try_upsert(w, t, lo, hi);
    }
    if (rc == -ENOMEM)
        werr(w, ERR_NOMEM, "out of memory building a statement");
    else
        w->err_no = rc == -E2BIG ? ERR_ROW_TOO_BIG : no;
    if (db_error_class(w->err_no) != DB_ERR_CONNECTION)
        mysql_rollback(w->conn);
    return -1;
}

/* Rows [lo, hi) of an UPSERT task in one transaction, as few statements as the byte cap
 * allows: in binary where the server takes it, else as SQL text. 0, or -1 with the error in
 * w. */
static int try_upsert(struct writer *w, struct task *t, uint32_t lo, uint32_t hi)
{
    if (w->bulk_ok && !w->bulk && !(w->bulk = bulk_new())) {
        werr(w, ERR_NOMEM, "out of memory building a statement");
        mysql_rollback(w->conn);
        return -1;
    }
    if (w->bulk_ok)
        return try_upsert_bulk(w, t, lo, hi);
    const struct batch *b = t->b;
    const struct batch_spec *spec = b->spec;
    uint64_t cap = stmt_limit(w, t);
    uint64_t hard = w->max_packet > 2 * PACKET_SLACK ? w->max_packet - PACKET_SLACK : UINT64_MAX;
    sbuf_reset(&w->prefix);
    sbuf_puts(&w->prefix, "INSERT INTO `");
    sbuf_puts(&w->prefix, spec->table);
    sbuf_puts(&w->prefix, "` (");
    for (uint16_t c = 0; c < spec->ncols; c++) {
        sbuf_puts(&w->prefix, c ? ",`" : "`");
        sbuf_puts(&w->prefix, spec->cols[c]);
        sbuf_puts(&w->prefix, "`");
    }
    sbuf_puts(&w->prefix, ") VALUES ");
    const char *upd = " ON DUPLICATE KEY UPDATE ";
    size_t tail = strlen(upd) + strlen(spec->sql);
    uint32_t in_stmt = 0;
    sbuf_reset(&w->stmt);
    sbuf_append(&w->stmt, w->prefix.p, w->prefix.len);
    for (uint32_t r = lo; r < hi; r++) {
        sbuf_reset(&w->row);
        put_row(&w->row, w->conn, b, r);
        if (w->row.oom || w->stmt.oom || w->prefix.oom) {
            werr(w, ERR_NOMEM, "out of memory building a statement");
            mysql_rollback(w->conn);
            return -1;
        }
        if (in_stmt && w->stmt.len + 1 + w->row.len + tail > cap) {
            if (wexec_upsert(w, upd, spec->sql))
                return -1;
            sbuf_reset(&w->stmt);
            sbuf_append(&w->stmt, w->prefix.p, w->prefix.len);
            in_stmt = 0;
        }
        if (!in_stmt && w->prefix.len + w->row.len + tail > hard) {
            char msg[128];
            snprintf(msg, sizeof(msg), "row of %zu bytes exceeds max_allowed_packet (%" PRIu64 ")",
                     w->row.len, w->max_packet);
            werr(w, ERR_ROW_TOO_BIG, msg);
            mysql_rollback(w->conn);
            return -1;
        }
        if (in_stmt)
            sbuf_append(&w->stmt, ",", 1);
        sbuf_append(&w->stmt, w->row.p, w->row.len);
        in_stmt++;
    }
    if (in_stmt) {
        if (wexec_upsert(w, upd, spec->sql))
            return -1;
    }
    return wcommit(w);
}

/* Rows [lo, hi) of a STATEMENT task: the spec's statement once per row, with the row's values
 * in place of the `?` placeholders (outside quotes), in one transaction. */
static int try_statement(struct writer *w, struct task *t, uint32_t lo, uint32_t hi)
{
    const struct batch *b = t->b;
    const char *sql = b->spec->sql;
    for (uint32_t r = lo; r < hi; r++) {
        sbuf_reset(&w->stmt);
        uint16_t col = 0;
        char quote = 0;
        for (const char *p = sql; *p; p++) {
            if (quote) {
                if (*p == quote)
                    quote = 0;
                sbuf_append(&w->stmt, p, 1);
            } else if (*p == '\'' || *p == '"' || *p == '`') {
                quote = *p;
                sbuf_append(&w->stmt, p, 1);
            } else if (*p == '?' && col < b->spec->ncols) {
                put_val(&w->stmt, w->conn, batch_val(b, r, col++));
            } else {
                sbuf_append(&w->stmt, p, 1);
            }
        }
        if (wexec_stmt(w))
            return -1;
    }
    return wcommit(w);
}

static int try_rows(struct writer *w, struct task *t, uint32_t lo, uint32_t hi)
{
    if (t->b->spec->kind == BATCH_KIND_STATEMENT)
        return try_statement(w, t, lo, hi);
    return try_upsert(w, t, lo, hi);
}

/* --- writer: rejected rows ---------------------------------------------------------------- */

static void dead_letter(struct writer *w, const char *table, const char *json, const char *error)
{
    struct sink *s = w->s;
    json_t *o = json_pack("{s:s, s:s, s:s}", "table", table, "error", error, "row_json",
                          json ? json : "null");
    char ts[40];
    util_format_iso8601(util_wall_ms(), ts, sizeof(ts));
    if (o)
        json_object_set_new(o, "rejected_at", json_string(ts));
    char *line = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(o);
    char path[4096];
    snprintf(path, sizeof(path), "%s/dead-letter.jsonl", s->spool_path);
    int ok = 0;
    pthread_mutex_lock(&s->dl_mu);
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd >= 0 && line) {
        size_t n = strlen(line);
        line[n] = '\n'; /* in place of the NUL, restored below */
        ssize_t wr = write(fd, line, n + 1);
        line[n] = '\0';
        ok = wr == (ssize_t)(n + 1) && fdatasync(fd) == 0;
    }
    if (fd >= 0)
        close(fd);
    pthread_mutex_unlock(&s->dl_mu);
    if (ok)
        log_error("rejected row could not be stored in rejected_rows; written to the dead-letter "
                  "file",
                  LOG_S("table", table), LOG_S("file", path), LOG_S("error", error));
    else
        log_error("rejected row lost: neither rejected_rows nor the dead-letter file took it",
                  LOG_S("table", table), LOG_S("row", json ? json : "?"), LOG_S("error", error));
    free(line);
}

/* Stores row r of t in rejected_rows with the server's reason (w->err_msg). 0, or -1 when
 * the database failed in a way that is not about this row (the task is retried). */
static int reject_row(struct writer *w, struct task *t, uint32_t r)
{
    const char *table = t->b->spec->table;
    char reason[sizeof(w->err_msg) + 16];
    snprintf(reason, sizeof(reason), "%s (%u)", w->err_msg, w->err_no);
    char *json = row_json(t->b, r);
    char lbl[128];
    table_labels(lbl, sizeof(lbl), table);
    log_warn("row rejected by the database", LOG_S("table", table), LOG_S("error", reason));
    metrics_add("coingest_rejected_rows_total", lbl, 1);
    t->rejected++;
    struct val vals[3] = {
        {.type = VAL_STR, .len = (uint32_t)strlen(table), .u.s = table},
        {.type = VAL_STR, .len = json ? (uint32_t)strlen(json) : 4, .u.s = json ? json : "null"},
        {.type = VAL_STR, .len = (uint32_t)strlen(reason), .u.s = reason},
    };
    sbuf_reset(&w->stmt);
    sbuf_puts(&w->stmt,
              "INSERT INTO rejected_rows (table_name, row_json, error, rejected_at) VALUES (");
    for (int i = 0; i < 3; i++) {
        put_val(&w->stmt, w->conn, &vals[i]);
        sbuf_puts(&w->stmt, ", ");
    }
    sbuf_puts(&w->stmt, "UTC_TIMESTAMP(3))");
    int rc = 0;
    if (w->stmt.oom) {
        dead_letter(w, table, json, reason);
    } else if (wexec(w, w->stmt.p, w->stmt.len) || wcommit(w)) {
        if (db_error_is_transient(w->err_no) || w->err_no == ERR_NOMEM) {
            rc = -1;
            t->rejected--;
        } else {
            dead_letter(w, table, json, reason);
        }
    }
    free(json);
    return rc;
}

/* Writes rows [lo, hi); a range the server refuses for a row's sake is halved until the bad
 * rows are alone, and those are rejected. 0, or -1 with a non-row error in w. */
static int write_range(struct writer *w, struct task *t, uint32_t lo, uint32_t hi)
{
    if (try_rows(w, t, lo, hi) == 0) {
        t->committed += hi - lo;
        return 0;
    }
    if (db_error_class(w->err_no) != DB_ERR_ROW)
        return -1;
    if (hi - lo == 1)
        return reject_row(w, t, lo);
    uint32_t mid = lo + (hi - lo) / 2;
    if (write_range(w, t, lo, mid))
        return -1;
    return write_range(w, t, mid, hi);
}

/* --- writer: thread ----------------------------------------------------------------------- */

/* Sleeps up to ms on the shared condition variable; returns early on stop/abort, and when the
 * [database] settings move past generation `gen` (0: ignore). mu held. */
static void wait_ms_locked(struct sink *s, uint64_t ms, uint64_t gen)
{
    uint64_t deadline = util_mono_ms() + ms;
    while (!s->stop && !s->abort && (gen == 0 || s->conf->gen == gen)) {
        uint64_t now = util_mono_ms();
        if (now >= deadline)
            break;
        struct timespec ts = util_mono_deadline(deadline - now);
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
}

static void run_task(struct writer *w, struct task *t)
{
    struct sink *s = w->s;
    char lbl[128];
    uint64_t t0 = uv_hrtime(); /* thread-safe: no loop involved */
    for (unsigned attempt = 0;; attempt++) {
        t->committed = t->rejected = 0;
        if (write_range(w, t, 0, t->b->nrows) == 0) {
            t->result = TASK_OK;
            table_labels(lbl, sizeof(lbl), t->table);
            metrics_add("coingest_rows_written_total", lbl, t->committed);
            metrics_add("coingest_batches_total", lbl, 1);
            metrics_observe("coingest_write_seconds", "", (double)(uv_hrtime() - t0) / 1e9);
            pthread_mutex_lock(&s->mu);
            s->last_ok_mono = util_mono_ms();
            pthread_mutex_unlock(&s->mu);
            return;
        }
        snprintf(lbl, sizeof(lbl), "reason=\"%s\"",
                 w->err_no == ERR_NOMEM ? "memory" : db_error_reason(w->err_no));
        metrics_add("coingest_write_errors_total", lbl, 1);
        enum db_err_class cls = db_error_class(w->err_no);
        t->result = TASK_RETRY;
        if (cls == DB_ERR_CONNECTION || cls == DB_ERR_PACKET) {
            log_debug("write failed; reconnecting", LOG_S("table", t->table),
                      LOG_S("error", w->err_msg), LOG_U("code", w->err_no));
            if (cls == DB_ERR_PACKET && w->max_packet > 4 * PACKET_SLACK)
                w->max_packet /= 2; /* until the reconnect reads it again */
            t->conn_lost = true;
            return;
        }
        pthread_mutex_lock(&s->mu);
        bool give_up = s->stop || s->abort || w->gen != s->conf->gen;
        if (!give_up) {
            uint64_t delay;
            if (cls == DB_ERR_TRANSIENT || w->err_no == ERR_NOMEM) {
                give_up = attempt + 1 >= TRANSIENT_RETRIES;
                delay = backoff_full_jitter(&w->rng, 50, 2000, attempt);
            } else {
                /* Schema trouble: nothing a row did. Keep the rows, wait, try again. */
                if (attempt == 0)
                    log_error("database refuses writes to a table; rows are kept and retried",
                              LOG_S("table", t->table), LOG_S("error", w->err_msg),
                              LOG_U("code", w->err_no));
                delay = backoff_full_jitter(&w->rng, 1000, 30000, attempt);
            }
            if (!give_up)
                wait_ms_locked(s, delay, w->gen);
        }
        give_up = give_up || s->stop || s->abort;
        pthread_mutex_unlock(&s->mu);
        if (give_up)
            return;
    }
}

/* --- writer: reads ----------------------------------------------------------------------- */

/* Bytes fetched per cell at first; longer values are fetched again whole. */
#define READ_CELL_BUF 256

/* A failed call: a lost connection is -ENOTCONN (the writer then reconnects), anything else
 * -EIO with the server's (or the client library's) message. */
static void read_error(struct read *r, unsigned no, const char *msg)
{
    if (db_error_class(no) == DB_ERR_CONNECTION) {
        r->conn_lost = true;
        r->rc = -ENOTCONN;
    } else {
        r->rc = -EIO;
    }
    snprintf(r->err, sizeof(r->err), "%s (%u)", msg, no);
}

/* Copies the current row of `st` (bound to rb) into r->rows. 0, or -1 with the error in r. */
static int read_row(struct read *r, MYSQL_STMT *st, MYSQL_BIND *rb, size_t *cap)
{
    struct sink_rows *rows = &r->rows;
    if (rows->nrows >= r->max_rows) {
        char msg[96];
        snprintf(msg, sizeof(msg), "the query returns more than max_rows (%zu) rows", r->max_rows);
        read_fail(r, -E2BIG, msg);
        return -1;
    }
    if (rows->nrows == *cap) {
        size_t ncap = *cap ? *cap * 2 : 16;
        char **cells = realloc(rows->cells, ncap * rows->ncols * sizeof(*cells));
        if (!cells) {
            read_fail(r, -ENOMEM, "out of memory");
            return -1;
        }
        rows->cells = cells;
        *cap = ncap;
    }
    char **cell = rows->cells + (size_t)rows->nrows * rows->ncols;
    memset(cell, 0, rows->ncols * sizeof(*cell));
    rows->nrows++; /* so that rows_free frees the cells made so far */
    for (uint32_t c = 0; c < rows->ncols; c++) {
        if (rb[c].is_null_value)
            continue;
        unsigned long len = rb[c].length_value;
        char *v = malloc((size_t)len + 1);
        if (!v) {
            read_fail(r, -ENOMEM, "out of memory");
            return -1;
        }
        cell[c] = v;
        if (len <= rb[c].buffer_length) {
            memcpy(v, rb[c].buffer, len);
        } else {
            MYSQL_BIND whole;
            memset(&whole, 0, sizeof(whole));
            whole.buffer_type = MYSQL_TYPE_STRING;
            whole.buffer = v;
            whole.buffer_length = len + 1;
            whole.length = &whole.length_value;
            if (mysql_stmt_fetch_column(st, &whole, c, 0)) {
                read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
                return -1;
            }
        }
        v[len] = '\0';
    }
    return 0;
}

/* Runs a read as a prepared statement in a read-only transaction (so it cannot write, and
 * each read starts from a fresh snapshot), every value fetched as text. Sets r->rc. */
static void run_read(struct writer *w, struct read *r)
{
    MYSQL_STMT *st = NULL;
    MYSQL_RES *meta = NULL;
    MYSQL_BIND *pb = NULL, *rb = NULL;
    char *bufs = NULL;
    size_t cap = 0;
    r->rc = 0;
    if (mysql_query(w->conn, "START TRANSACTION READ ONLY")) {
        read_error(r, mysql_errno(w->conn), mysql_error(w->conn));
        goto out;
    }
    st = mysql_stmt_init(w->conn);
    if (!st) {
        read_fail(r, -ENOMEM, "out of memory");
        goto out;
    }
    if (mysql_stmt_prepare(st, r->sql, (unsigned long)strlen(r->sql))) {
        read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
        goto out;
    }
    unsigned long np = mysql_stmt_param_count(st);
    unsigned nc = mysql_stmt_field_count(st);
    if (np != r->nparams || nc == 0) {
        char msg[128];
        if (nc == 0)
            snprintf(msg, sizeof(msg), "not a query that returns rows: sink_read runs SELECTs");
        else
            snprintf(msg, sizeof(msg), "the statement has %lu placeholders, %zu parameters given",
                     np, r->nparams);
        read_fail(r, -EINVAL, msg);
        goto out;
    }
    pb = calloc(np ? np : 1, sizeof(*pb));
    rb = calloc(nc, sizeof(*rb));
    bufs = malloc((size_t)nc * READ_CELL_BUF);
    r->rows.names = calloc(nc, sizeof(*r->rows.names));
    if (!pb || !rb || !bufs || !r->rows.names) {
        read_fail(r, -ENOMEM, "out of memory");
        goto out;
    }
    r->rows.ncols = nc;
    for (unsigned long i = 0; i < np; i++) {
        if (r->params[i]) {
            pb[i].buffer_type = MYSQL_TYPE_STRING;
            pb[i].buffer = r->params[i];
            pb[i].buffer_length = (unsigned long)strlen(r->params[i]);
        } else {
            pb[i].buffer_type = MYSQL_TYPE_NULL;
        }
    }
    if ((np && mysql_stmt_bind_param(st, pb)) || mysql_stmt_execute(st)) {
        read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
        goto out;
    }
    meta = mysql_stmt_result_metadata(st);
    if (!meta) {
        read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
        goto out;
    }
    MYSQL_FIELD *f = mysql_fetch_fields(meta);
    for (unsigned c = 0; c < nc; c++) {
        r->rows.names[c] = strdup(f[c].name ? f[c].name : "");
        if (!r->rows.names[c]) {
            read_fail(r, -ENOMEM, "out of memory");
            goto out;
        }
        rb[c].buffer_type = MYSQL_TYPE_STRING;
        rb[c].buffer = bufs + (size_t)c * READ_CELL_BUF;
        rb[c].buffer_length = READ_CELL_BUF;
        rb[c].length = &rb[c].length_value;
        rb[c].is_null = &rb[c].is_null_value;
    }
    if (mysql_stmt_bind_result(st, rb)) {
        read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
        goto out;
    }
    for (;;) {
        int fr = mysql_stmt_fetch(st);
        if (fr == MYSQL_NO_DATA)
            break;
        if (fr == 1) {
            read_error(r, mysql_stmt_errno(st), mysql_stmt_error(st));
            goto out;
        }
        /* 0, or MYSQL_DATA_TRUNCATED: a long cell, fetched whole by read_row. */
        if (read_row(r, st, rb, &cap))
            goto out;
    }
out:
    if (r->rc)
        rows_free(&r->rows);
    if (meta)
        mysql_free_result(meta);
    if (st)
        mysql_stmt_close(st); /* also reads away the rows left after -E2BIG */
    free(pb);
    free(rb);
    free(bufs);
    if (!r->conn_lost)
        mysql_rollback(w->conn); /* ends the read-only transaction */
}

static void wake_loop(struct sink *s)
{
    uv_async_send(&s->async);
}

/* Closes the writer's connection; mu held. */
static void drop_conn_locked(struct writer *w)
{
    struct sink *s = w->s;
    if (!w->conn)
        return;
    w->sockfd = -1;
    MYSQL *c = w->conn;
    w->conn = NULL;
    w->bulk_ok = false;
    s->connected--;
    pthread_mutex_unlock(&s->mu);
    bulk_forget(w->bulk); /* its statements belong to the connection */
    mysql_close(c);
    pthread_mutex_lock(&s->mu);
}

/* The migrations (or, with auto_migrate off, the check that none is pending) on a fresh
 * connection: the built-in ones, or migrations_dir's files when it is set, exactly as
 * coingestd --migrate does. >= 0, or -errno with the reason in err. No lock held. */
static int migrate(const struct dbconf *conf, MYSQL *conn, char *err, size_t errlen)
{
    const char *dir = conf->db.migrations_dir;
    if (conf->db.auto_migrate)
        return db_migrate(conn, dir, err, errlen);
    int n = db_migrations_pending(conn, dir, err, errlen);
    if (n > 0) {
        snprintf(err, errlen,
                 "%d migration(s) (%s) not applied and auto_migrate is off: run "
                 "coingestd --migrate",
                 n, db_migrations_source(dir));
        n = -EAGAIN;
    }
    return n;
}

/* Connects and brings the schema up to date (the first writer migrates, the others wait).
 * Once the sink is stopping (stop or abort) no migration starts and no connection is kept.
 * While migrating, the connection's socket is published in w->sockfd like a running task's,
 * so that a hard stop (go_hard) or the end of a stop (stop_threads) cuts off a migration
 * waiting on GET_LOCK (up to 120 s) or on a long statement. mu held on entry and exit. 0, or
 * -1 after logging why (then backoff). */
static int writer_connect_locked(struct writer *w)
{
    struct sink *s = w->s;
    struct dbconf *conf = s->conf;
    conf->refs++;
    pthread_mutex_unlock(&s->mu);
    char err[512];
    MYSQL *conn = db_connect(&conf->db, err, sizeof(err));
    bool ok = conn != NULL;
    pthread_mutex_lock(&s->mu);
    while (ok && s->schema == SCHEMA_RUNNING && !s->stop && !s->abort)
        pthread_cond_wait(&s->cv, &s->mu);
    bool quit = s->stop || s->abort;
    if (ok && !quit && s->schema == SCHEMA_NONE && conf->gen == s->conf->gen) {
        s->schema = SCHEMA_RUNNING;
        w->sockfd = (int)mysql_get_socket(conn);
        pthread_mutex_unlock(&s->mu);
        int n = migrate(conf, conn, err, sizeof(err));
        pthread_mutex_lock(&s->mu);
        w->sockfd = -1; /* under mu: go_hard may be about to shut it down */
        quit = s->stop || s->abort;
        if (n < 0) {
            snprintf(s->last_err, sizeof(s->last_err), "%s", err);
            s->schema = SCHEMA_NONE;
            ok = false;
        } else {
            s->schema = SCHEMA_READY;
        }
        pthread_cond_broadcast(&s->cv);
        if (n < 0) {
            pthread_mutex_unlock(&s->mu);
            if (quit)
                log_info("schema migration interrupted by the shutdown; it runs again at the "
                         "next start",
                         LOG_S("error", err));
            else
                log_error("schema migration failed; rows are spooled until it succeeds",
                          LOG_S("error", err),
                          LOG_S("dir", db_migrations_source(conf->db.migrations_dir)));
            pthread_mutex_lock(&s->mu);
            quit = s->stop || s->abort;
        }
    } else if (!ok) {
        snprintf(s->last_err, sizeof(s->last_err), "%s", err);
    }
    if (ok && (quit || s->schema != SCHEMA_READY || conf->gen != s->conf->gen))
        ok = false; /* stopping, someone else's migration failed, or the config moved on */
    if (!ok) {
        if (!quit) {
            /* A failure, not a stop: the loop may count the database as down. */
            s->connect_failed = true;
            wake_loop(s);
        }
        dbconf_unref(conf);
        pthread_mutex_unlock(&s->mu);
        if (conn)
            mysql_close(conn);
        pthread_mutex_lock(&s->mu);
        return -1;
    }
    mysql_autocommit(conn, 0);
    w->conn = conn;
    w->max_packet = db_max_packet(conn);
    w->bulk_ok = conf->db.binary_writes && bulk_supported(conn);
    w->gen = conf->gen;
    dbconf_unref(conf);
    s->connected++;
    s->connect_failed = false;
    wake_loop(s);
    return 0;
}

static void *writer_main(void *arg)
{
    struct writer *w = arg;
    struct sink *s = w->s;
    mysql_thread_init();
    unsigned attempt = 0;
    pthread_mutex_lock(&s->mu);
    while (!s->stop) {
        if (w->idx >= s->nworkers)
            break; /* retired by a reload */
        if (w->conn && w->gen != s->conf->gen)
            drop_conn_locked(w);
        if (!w->conn) {
            if (s->abort) {
                /* A hard stop: no new connection, wait for the stop itself. */
                pthread_cond_wait(&s->cv, &s->mu);
                continue;
            }
            if (writer_connect_locked(w) == 0) {
                attempt = 0;
                continue;
            }
            wait_ms_locked(s,
                           backoff_full_jitter(&w->rng, CONNECT_BACKOFF_BASE_MS,
                                               CONNECT_BACKOFF_CAP_MS, attempt++),
                           s->conf->gen);
            continue;
        }
        struct task *t = tl_first(&s->work);
        struct read *r = s->reads.head;
        if (r && (!t || r->ticket < t->ticket)) {
            /* First come, first served between reads and tasks. */
            rq_pop(&s->reads);
            w->sockfd = (int)mysql_get_socket(w->conn);
            pthread_mutex_unlock(&s->mu);
            run_read(w, r);
            bool lost = r->conn_lost;
            pthread_mutex_lock(&s->mu);
            w->sockfd = -1;
            if (r->rc == -ENOTCONN && (s->stop || s->abort))
                read_fail(r, -ECANCELED, "the sink is shutting down");
            rq_push(&s->rdone, r);
            wake_loop(s);
            if (lost)
                drop_conn_locked(w);
            continue;
        }
        if (!t) {
            pthread_cond_wait(&s->cv, &s->mu);
            continue;
        }
        tl_remove(&s->work, t);
        w->sockfd = (int)mysql_get_socket(w->conn);
        pthread_mutex_unlock(&s->mu);
        run_task(w, t);
        bool lost = t->conn_lost;
        pthread_mutex_lock(&s->mu);
        w->sockfd = -1;
        tl_push(&s->done, t);
        wake_loop(s);
        if (lost)
            drop_conn_locked(w);
    }
    drop_conn_locked(w);
    w->exited = true;
    s->exited++;
    wake_loop(s);
    pthread_mutex_unlock(&s->mu);
    sbuf_free(&w->stmt);
    sbuf_free(&w->row);
    sbuf_free(&w->prefix);
    bulk_free(w->bulk);
    w->bulk = NULL;
    mysql_thread_end();
    return NULL;
}

static int start_writer(struct sink *s, unsigned idx)
{
    struct writer *w = calloc(1, sizeof(*w));
    if (!w)
        return -ENOMEM;
    w->s = s;
    w->idx = idx;
    w->sockfd = -1;
    rng_seed(&w->rng, util_mono_ms() ^ ((uint64_t)(idx + 1) * 0x9e3779b97f4a7c15ull));
    struct writer **arr = realloc(s->w, (s->nw + 1) * sizeof(*arr));
    if (!arr) {
        free(w);
        return -ENOMEM;
    }
    s->w = arr;
    s->w[s->nw] = w;
    /* Writers read s->w only through their own pointer; the array is the loop's. */
    int rc = pthread_create(&w->tid, NULL, writer_main, w);
    if (rc) {
        free(w);
        return -rc;
    }
    w->started = true;
    pthread_mutex_lock(&s->mu);
    s->nw++;
    pthread_mutex_unlock(&s->mu);
    return 0;
}

/* --- loop: bookkeeping -------------------------------------------------------------------- */

static void pump(struct sink *s);

/* Timers: every start and stop goes through these, so that none is armed once the shutdown
 * stopped them all (timers_off). */
static void tstart(struct sink *s, struct wheel_timer *tm, uint64_t delay_ms)
{
    if (!s->timers_off)
        timers_start(s->timers, tm, delay_ms);
}

static void tstart_at(struct sink *s, struct wheel_timer *tm, uint64_t at_ms)
{
    if (!s->timers_off)
        timers_start_at(s->timers, tm, at_ms);
}

static void tstop(struct sink *s, struct wheel_timer *tm)
{
    if (!s->timers_off)
        timers_stop(s->timers, tm);
}

/* Stops every sink timer for good: afterwards the sink never touches s->timers again. */
static void stop_all_timers(struct sink *s)
{
    tstop(s, &s->flush_timer);
    tstop(s, &s->grace_timer);
    tstop(s, &s->shut_timer);
    tstop(s, &s->cb_timer);
    tstop(s, &s->replay_timer);
    s->timers_off = true;
}

/* Rows that will reach neither the database nor the spool: logged with their number and
 * counted (coingest_rows_lost_total{reason}, sink_stats.rows_lost). */
static void lose_rows(struct sink *s, uint64_t rows, const char *reason, const char *why)
{
    if (rows == 0)
        return;
    char lbl[64];
    snprintf(lbl, sizeof(lbl), "reason=\"%s\"", reason);
    metrics_add("coingest_rows_lost_total", lbl, (double)rows);
    s->st.rows_lost += rows;
    log_error("rows lost", LOG_U("rows", rows), LOG_S("reason", reason), LOG_S("why", why));
}

/* Answers the queued reads that no writer took yet with rc and msg (they go to rdone, for
 * the next on_async). mu held. */
static void fail_queued_reads_locked(struct sink *s, int rc, const char *msg)
{
    struct read *r;
    while ((r = rq_pop(&s->reads)) != NULL) {
        read_fail(r, rc, msg);
        rq_push(&s->rdone, r);
    }
}

/* Calls back and frees answered reads, in order. A callback may call sink_read (or anything
 * else a loop callback may): nothing here is held across it. */
static void answer_reads(struct rqueue *q)
{
    struct read *r;
    while ((r = rq_pop(q)) != NULL) {
        if (r->rc == 0)
            r->cb(0, &r->rows, NULL, r->arg);
        else
            r->cb(r->rc, NULL, r->err, r->arg);
        read_free(r);
    }
}

/* Takes every answered read, and with `cancel` every queued one too (as -ECANCELED), and
 * answers them. Loop thread. */
static void drain_reads(struct sink *s, bool cancel)
{
    struct rqueue q;
    rq_init(&q);
    pthread_mutex_lock(&s->mu);
    if (cancel)
        fail_queued_reads_locked(s, -ECANCELED, "the sink is shutting down");
    while (s->rdone.head)
        rq_push(&q, rq_pop(&s->rdone));
    pthread_mutex_unlock(&s->mu);
    answer_reads(&q);
}

/* May memory take `rows` more that the spool refused? Up to SINK_MEM_HARD_FACTOR x
 * max_pending_rows, and only while writers may still write them. */
static bool mem_may_take(const struct sink *s, uint64_t rows)
{
    if (s->shut >= SHUT_HARD)
        return false;
    uint64_t cap = s->max_pending > UINT64_MAX / SINK_MEM_HARD_FACTOR
                       ? UINT64_MAX
                       : s->max_pending * SINK_MEM_HARD_FACTOR;
    return s->mem_rows <= cap && rows <= cap - s->mem_rows;
}

/* Rows pending (accepted or kept, not committed) and rows whose only copy is the spool (the
 * backlog: unread records and records the replay loaded). Every other spool record is held by
 * a task in memory, so the spool's live rows are the backlog plus memory's rows in records. */
static void pending_rows(const struct sink *s, uint64_t *pending, uint64_t *spooled,
                         uint64_t *bytes)
{
    struct spool_stats ss = {0};
    if (s->spool)
        spool_get_stats(s->spool, &ss);
    uint64_t held = s->mem_rows - s->bare_rows;
    *pending = ss.rows + s->bare_rows;
    *spooled = ss.rows > held ? ss.rows - held : 0;
    *bytes = ss.bytes;
}

static void update_gauges(struct sink *s)
{
    uint64_t pending, spooled, bytes;
    pending_rows(s, &pending, &spooled, &bytes);
    metrics_set("coingest_pending_rows", "", (double)pending);
    metrics_set("coingest_spool_rows", "", (double)spooled);
    metrics_set("coingest_spool_bytes", "", (double)bytes);
}

static uint64_t unread_records(struct sink *s)
{
    if (!s->spool)
        return 0;
    struct spool_stats ss;
    spool_get_stats(s->spool, &ss);
    return ss.unread;
}

static void arm_flush(struct sink *s)
{
    uint64_t due = UINT64_MAX;
    for (int i = 0; i < BATCH_SPEC_COUNT; i++)
        if (s->open[i] && s->open[i]->opened_ms + s->flush_ms < due)
            due = s->open[i]->opened_ms + s->flush_ms;
    if (due == UINT64_MAX)
        tstop(s, &s->flush_timer);
    else
        tstart_at(s, &s->flush_timer, due);
}

static void close_open(struct sink *s, int spec)
{
    struct task *t = s->open[spec];
    if (!t)
        return;
    s->open[spec] = NULL;
    tl_insert_sorted(&s->ready, t);
}

static void close_all_open(struct sink *s)
{
    for (int i = 0; i < BATCH_SPEC_COUNT; i++)
        close_open(s, i);
    tstop(s, &s->flush_timer);
}

/* A task leaves memory: its rows no longer count there. */
static void task_uncount(struct sink *s, const struct task *t)
{
    uint32_t n = t->b->nrows;
    if (t->replay) {
        s->replay_rows -= n;
        s->replay_tasks--;
        return;
    }
    s->mem_rows -= n;
    if (t->nrecs == 0)
        s->bare_rows -= n;
}

/* Gives a task's records back to the spool as unread (they replay later, by seq). */
static void task_unload(struct sink *s, struct task *t)
{
    for (uint32_t i = 0; i < t->nrecs; i++)
        spool_unload(s->spool, t->recs[i]);
    t->nrecs = 0;
}

/* Moves a task out of memory into the spool and frees it. A task whose rows are in spool
 * records (every task but those the spool refused at submit) only gives them back: no I/O.
 * Other rows are appended (not synced). 0, or -errno (the task is untouched). */
static int task_to_spool(struct sink *s, struct task *t)
{
    if (t->nrecs == 0) {
        int rc = spool_append(s->spool, t->seq, t->b, NULL);
        if (rc)
            return rc;
    }
    task_uncount(s, t);
    task_unload(s, t);
    task_free(t);
    return 0;
}

/* Takes back the tasks no writer has picked up yet. */
static void reclaim_work(struct sink *s)
{
    pthread_mutex_lock(&s->mu);
    struct task *t;
    while ((t = tl_first(&s->work)) != NULL) {
        tl_remove(&s->work, t);
        for (unsigned i = 0; i < s->ninflight; i++) {
            if (s->inflight[i] == t) {
                s->inflight[i] = s->inflight[--s->ninflight];
                break;
            }
        }
        if (t->barrier)
            s->barrier_inflight = false;
        tl_insert_sorted(&s->ready, t);
    }
    pthread_mutex_unlock(&s->mu);
}

/* Moves everything in memory that no writer holds to the spool. */
static void spill(struct sink *s)
{
    if (!s->spool)
        return;
    reclaim_work(s);
    close_all_open(s);
    uint64_t rows = 0;
    struct task *t = tl_first(&s->ready);
    while (t) {
        struct task *next = tl_next(&s->ready, t);
        uint32_t n = t->b->nrows;
        bool from_spool = t->replay;
        tl_remove(&s->ready, t);
        int rc = task_to_spool(s, t);
        if (rc) {
            tl_insert_sorted(&s->ready, t);
            s->spool_failing = true;
            log_error("spool write failed; rows stay in memory", LOG_S("dir", s->spool_path),
                      LOG_S("error", strerror(-rc)));
            break;
        }
        if (!from_spool)
            rows += n;
        t = next;
    }
    int rc = spool_sync(s->spool);
    if (rc)
        log_error("spool fsync failed", LOG_S("dir", s->spool_path), LOG_S("error", strerror(-rc)));
    if (rows)
        log_info("rows left memory; they wait in the spool", LOG_U("rows", rows));
}

static void handle_done(struct sink *s, struct task *t)
{
    for (unsigned i = 0; i < s->ninflight; i++) {
        if (s->inflight[i] == t) {
            s->inflight[i] = s->inflight[--s->ninflight];
            break;
        }
    }
    if (t->barrier)
        s->barrier_inflight = false;
    if (t->result == TASK_OK) {
        s->st.rows_committed += t->committed;
        s->st.rows_rejected += t->rejected;
        s->st.batches_committed++;
        task_uncount(s, t);
        for (uint32_t i = 0; i < t->nrecs; i++)
            spool_commit(s->spool, t->recs[i]);
        task_free(t);
        return;
    }
    t->conn_lost = false;
    if ((s->spilled || s->shut >= SHUT_HARD) && s->spool) {
        int rc = task_to_spool(s, t);
        if (rc == 0)
            rc = spool_sync(s->spool);
        if (rc == 0)
            return;
        log_error("spool write failed; rows stay in memory", LOG_S("dir", s->spool_path),
                  LOG_S("error", strerror(-rc)));
    }
    tl_insert_sorted(&s->ready, t);
}

/* Loads spool records into the ready list, a few at a time. */
static void load_replay(struct sink *s)
{
    if (!s->spool)
        return;
    unsigned max_tasks = (TASKS_PER_WRITER + 1) * s->nworkers + 2;
    uint64_t max_rows = (uint64_t)s->batch_rows * (TASKS_PER_WRITER * s->nworkers + 1);
    while (s->replay_tasks == 0 || (s->replay_tasks < max_tasks && s->replay_rows < max_rows)) {
        struct spool_rec *rec = spool_peek(s->spool);
        if (!rec)
            break;
        struct batch *b = NULL;
        int rc = spool_load(s->spool, rec, &b);
        if (rc == -EBADMSG)
            continue;
        if (rc) {
            log_error("spool read failed; retrying", LOG_S("dir", s->spool_path),
                      LOG_S("error", strerror(-rc)));
            tstart(s, &s->replay_timer, 1000);
            break;
        }
        struct task *t = task_new(b, spool_rec_seq(rec));
        if (!t || task_add_rec(t, rec)) {
            if (t)
                task_free(t);
            else
                batch_free(b);
            spool_unload(s->spool, rec);
            tstart(s, &s->replay_timer, 1000);
            break;
        }
        t->replay = true;
        s->replay_rows += b->nrows;
        s->replay_tasks++;
        tl_insert_sorted(&s->ready, t);
    }
}

static bool open_before(struct sink *s, uint64_t seq)
{
    for (int i = 0; i < BATCH_SPEC_COUNT; i++)
        if (s->open[i] && s->open[i]->seq < seq)
            return true;
    return false;
}

/* Moves the writers' finished tasks to `out`; mu held. */
static void take_done_locked(struct sink *s, struct tlist *out)
{
    while (!tl_empty(&s->done)) {
        struct task *t = tl_first(&s->done);
        tl_remove(&s->done, t);
        tl_push(out, t);
    }
}

static void handle_all_done(struct sink *s, struct tlist *done)
{
    struct task *t;
    while ((t = tl_first(done)) != NULL) {
        tl_remove(done, t);
        handle_done(s, t);
    }
}

/* Takes the tasks the writers finished since on_async last ran. The loop thread calls this
 * whenever it dispatches (every submitted page does), so writers that finish while the loop
 * is busy parsing (several answers can come in one loop iteration) get new tasks without
 * waiting for the loop to come round to on_async. handle_done calls no user callback. */
static void reap_done(struct sink *s)
{
    struct tlist done;
    tl_init(&done);
    pthread_mutex_lock(&s->mu);
    take_done_locked(s, &done);
    pthread_mutex_unlock(&s->mu);
    handle_all_done(s, &done);
}

static void dispatch(struct sink *s)
{
    if (!s->db_up || s->shut >= SHUT_HARD)
        return;
    reap_done(s);
    if (s->barrier_inflight)
        return;
    struct spool_rec *head = s->spool ? spool_peek(s->spool) : NULL;
    uint64_t min_unread = head ? spool_rec_seq(head) : UINT64_MAX;
    struct task *skipped[DISPATCH_LOOKAHEAD];
    unsigned nskipped = 0, scanned = 0, sent = 0;
    struct task *t = tl_first(&s->ready);
    while (t && s->ninflight < s->nworkers * TASKS_PER_WRITER && scanned++ < DISPATCH_LOOKAHEAD) {
        struct task *next = tl_next(&s->ready, t);
        if (t->seq > min_unread)
            break;
        if (t->barrier) {
            if (open_before(s, t->seq)) {
                /* Rows submitted before the barrier must be written before it. */
                for (int i = 0; i < BATCH_SPEC_COUNT; i++)
                    if (s->open[i] && s->open[i]->seq < t->seq)
                        close_open(s, i);
                arm_flush(s);
                break; /* the closed tasks sort in front; the next pass sends them */
            }
            if (s->ninflight > 0 || nskipped > 0)
                break;
        }
        bool blocked = false;
        for (unsigned i = 0; i < s->ninflight && !blocked; i++)
            blocked = must_keep_order(t, s->inflight[i]);
        for (unsigned i = 0; i < nskipped && !blocked; i++)
            blocked = must_keep_order(t, skipped[i]);
        if (blocked) {
            skipped[nskipped++] = t;
            t = next;
            continue;
        }
        tl_remove(&s->ready, t);
        if (s->ninflight == s->inflight_cap) {
            unsigned cap = s->inflight_cap ? s->inflight_cap * 2 : 8;
            struct task **arr = realloc(s->inflight, cap * sizeof(*arr));
            if (!arr) {
                tl_insert_sorted(&s->ready, t);
                break;
            }
            s->inflight = arr;
            s->inflight_cap = cap;
        }
        task_keys(t); /* computed on the loop: writers never touch the keys */
        t->stmt_cap = s->batch_bytes;
        t->result = TASK_RETRY;
        s->inflight[s->ninflight++] = t;
        pthread_mutex_lock(&s->mu);
        t->ticket = s->ticket++;
        tl_push(&s->work, t);
        pthread_mutex_unlock(&s->mu);
        sent++;
        if (t->barrier) {
            s->barrier_inflight = true;
            break;
        }
        t = next;
    }
    if (sent) {
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
}

static bool is_idle(struct sink *s)
{
    struct spool_stats ss = {0};
    if (s->spool)
        spool_get_stats(s->spool, &ss);
    return s->mem_rows == 0 && ss.records == 0 && s->ninflight == 0 && s->syncs_inflight == 0;
}

static void stop_threads(struct sink *s)
{
    s->shut = SHUT_STOPPING;
    tstop(s, &s->shut_timer);
    pthread_mutex_lock(&s->mu);
    s->stop = true;
    /* Nothing is in flight now, so a socket still published belongs to a migration (perhaps
     * waiting up to 120 s on GET_LOCK) or a read: cut it off rather than wait. A migration
     * stopped halfway runs again at the next start (migration files are safe to re-run); the
     * read ends with -ECANCELED. */
    for (unsigned i = 0; i < s->nw; i++)
        if (s->w[i]->sockfd >= 0)
            shutdown(s->w[i]->sockfd, SHUT_RDWR);
    pthread_cond_broadcast(&s->cv);
    bool all = s->exited == s->nw;
    pthread_mutex_unlock(&s->mu);
    if (all)
        wake_loop(s);
}

static void check_shutdown(struct sink *s)
{
    if (s->shut == SHUT_GRACEFUL) {
        /* Loaded spool records are safe where they are: give them back. */
        if (s->ninflight == 0) {
            struct task *t = tl_first(&s->ready);
            while (t) {
                struct task *next = tl_next(&s->ready, t);
                if (t->replay) {
                    tl_remove(&s->ready, t);
                    task_to_spool(s, t);
                }
                t = next;
            }
        }
        bool open = false;
        for (int i = 0; i < BATCH_SPEC_COUNT; i++)
            open = open || s->open[i];
        if (!open && tl_empty(&s->ready) && s->ninflight == 0)
            stop_threads(s);
    } else if (s->shut == SHUT_HARD) {
        if (s->ninflight == 0)
            stop_threads(s);
    }
}

static void go_hard(struct sink *s)
{
    if (s->shut >= SHUT_HARD)
        return;
    s->shut = SHUT_HARD;
    tstop(s, &s->shut_timer);
    reclaim_work(s);
    pthread_mutex_lock(&s->mu);
    s->abort = true;
    /* Writers blocked in a statement get an error right away; what they held is spooled
     * (a commit that raced this is harmless: writing a row twice changes nothing). */
    for (unsigned i = 0; i < s->nw; i++)
        if (s->w[i]->sockfd >= 0)
            shutdown(s->w[i]->sockfd, SHUT_RDWR);
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
    spill(s);
    check_shutdown(s);
}

static void pump(struct sink *s)
{
    if (s->shut >= SHUT_STOPPING)
        return;
    if (s->db_up && s->shut == SHUT_NONE && !s->spilled)
        load_replay(s);
    dispatch(s);
    update_gauges(s);
    if (s->idle_cb && !s->idle_due && is_idle(s)) {
        s->idle_due = true;
        tstart(s, &s->cb_timer, 0);
    }
    check_shutdown(s);
}

/* --- loop: callbacks ---------------------------------------------------------------------- */

static void on_cb_timer(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct sink *s = arg;
    /* A sink that never started calls its shutdown callback from here; every other timer was
     * stopped then, and this one has just fired, so none is pending any more. */
    if (s->shut == SHUT_DONE)
        s->timers_off = true;
    if (s->ready_due) {
        s->ready_due = false;
        void (*cb)(void *) = s->ready_cb;
        s->ready_cb = NULL;
        if (cb)
            cb(s->ready_arg);
    }
    if (s->idle_due) {
        s->idle_due = false;
        void (*cb)(void *) = s->idle_cb;
        s->idle_cb = NULL;
        if (cb)
            cb(s->idle_arg);
    }
}

static void on_flush_timer(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct sink *s = arg;
    uint64_t now = timers_now(s->timers);
    for (int i = 0; i < BATCH_SPEC_COUNT; i++)
        if (s->open[i] && s->open[i]->opened_ms + s->flush_ms <= now)
            close_open(s, i);
    arm_flush(s);
    pump(s);
}

static void on_grace_timer(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct sink *s = arg;
    if (!s->db_down || s->spilled)
        return;
    s->spilled = true;
    spill(s);
    pump(s);
}

static void on_shut_timer(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    struct sink *s = arg;
    log_warn("shutdown timeout: spooling what is not written yet");
    go_hard(s);
}

static void on_replay_timer(struct wheel_timer *tm, void *arg)
{
    (void)tm;
    pump(arg);
}

static void on_async_closed(uv_handle_t *h)
{
    struct sink *s = h->data;
    s->shut = SHUT_DONE;
    if (s->shut_cb)
        s->shut_cb(s->shut_arg);
}

/* Frees every task still in memory. Tasks whose rows are in spool records only give them back
 * (they replay at the next start); the others' rows are lost, and counted as such. Loop
 * thread, no writer running. */
static void drop_memory(struct sink *s, const char *why)
{
    uint64_t lost = 0;
    struct tlist *lists[] = {&s->ready, &s->work, &s->done};
    for (int i = 0; i < BATCH_SPEC_COUNT; i++) {
        if (s->open[i]) {
            tl_push(&s->ready, s->open[i]);
            s->open[i] = NULL;
        }
    }
    for (size_t l = 0; l < ARRAY_SIZE(lists); l++) {
        struct task *t;
        while ((t = tl_first(lists[l])) != NULL) {
            tl_remove(lists[l], t);
            if (t->nrecs && s->spool)
                task_unload(s, t);
            else
                lost += t->b->nrows;
            task_free(t);
        }
    }
    s->ninflight = 0;
    s->mem_rows = 0;
    s->bare_rows = 0;
    s->replay_rows = 0;
    s->replay_tasks = 0;
    lose_rows(s, lost, "shutdown", why);
}

static void finish_shutdown(struct sink *s)
{
    for (unsigned i = 0; i < s->nw; i++) {
        if (s->w[i]->started) {
            pthread_join(s->w[i]->tid, NULL);
            s->w[i]->started = false;
        }
    }
    stop_all_timers(s);
    if (s->spool) {
        /* A last try for rows an earlier spill could not write (the disk may have room now);
         * spill() syncs. */
        spill(s);
    }
    drop_memory(s, "left in memory at shutdown: the spool could not take them");
    drain_reads(s, true); /* none should be left; the contract is that each read is answered */
    struct sink_stats st;
    sink_get_stats(s, &st);
    log_info("sink stopped", LOG_U("rows_committed", st.rows_committed),
             LOG_U("rows_spooled", st.rows_spooled), LOG_U("rows_lost", st.rows_lost));
    uv_close((uv_handle_t *)&s->async, on_async_closed);
}

static void on_async(uv_async_t *h)
{
    struct sink *s = h->data;
    struct tlist done;
    tl_init(&done);
    struct rqueue answered;
    rq_init(&answered);
    pthread_mutex_lock(&s->mu);
    take_done_locked(s, &done);
    bool up = s->connected > 0 && s->schema == SCHEMA_READY;
    bool down = s->connected == 0 && s->connect_failed;
    char err[sizeof(s->last_err)];
    memcpy(err, s->last_err, sizeof(err));
    bool all_exited = s->exited == s->nw;
    bool schema_ready = s->schema == SCHEMA_READY;
    s->st.last_db_ok_mono_ms = s->last_ok_mono;
    if (down) {
        /* No writer can take them now: a read does not wait out an outage. */
        char msg[sizeof(s->last_err) + 32];
        snprintf(msg, sizeof(msg), "database unreachable: %s", err);
        fail_queued_reads_locked(s, -ENOTCONN, msg);
    }
    while (s->rdone.head)
        rq_push(&answered, rq_pop(&s->rdone));
    pthread_mutex_unlock(&s->mu);

    /* Reads first: every read a writer answered before it exited is answered before
     * finish_shutdown below calls the shutdown callback. */
    answer_reads(&answered);
    handle_all_done(s, &done);
    if (up && !s->db_up) {
        log_info("database reachable", LOG_U("spooled_rows", s->st.rows_spooled));
        metrics_set("coingest_db_up", "", 1);
        s->spilled = false;
        tstop(s, &s->grace_timer);
        if (!s->ever_ready) {
            s->ever_ready = true;
            if (s->ready_cb) {
                s->ready_due = true;
                tstart(s, &s->cb_timer, 0);
            }
        }
    }
    if (down && !s->db_down) {
        log_warn("database unreachable; rows go to the spool", LOG_S("error", err));
        metrics_set("coingest_db_up", "", 0);
        tstart(s, &s->grace_timer, SINK_DOWN_GRACE_MS);
    }
    if (up)
        s->st.db_down_since_mono_ms = 0;
    else if (down && s->st.db_down_since_mono_ms == 0)
        s->st.db_down_since_mono_ms = util_mono_ms() ? util_mono_ms() : 1;
    s->db_up = up;
    s->db_down = down;
    s->st.db_up = up;
    s->st.schema_ready = schema_ready;
    if (s->shut == SHUT_STOPPING) {
        if (all_exited && s->syncs_inflight == 0)
            finish_shutdown(s);
        return;
    }
    pump(s);
}

/* --- API ---------------------------------------------------------------------------------- */

struct sink *sink_new(uv_loop_t *loop, struct timers *timers, const struct config *cfg)
{
    struct sink *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->loop = loop;
    s->timers = timers;
    tl_init(&s->ready);
    tl_init(&s->work);
    tl_init(&s->done);
    rq_init(&s->reads);
    rq_init(&s->rdone);
    s->batch_rows = cfg->database.batch_rows ? cfg->database.batch_rows : 1;
    s->batch_bytes = cfg->database.batch_bytes;
    s->flush_ms = cfg->database.flush_interval_ms;
    s->max_pending = cfg->database.max_pending_rows;
    s->nworkers = cfg->database.workers ? cfg->database.workers : 1;
    s->next_seq = 1;
    s->spool_path = util_strdup0(cfg->daemon.spool_dir);
    s->conf = dbconf_new(cfg, 1);
    if (!s->spool_path || !s->conf)
        goto fail;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    int rc = pthread_cond_init(&s->cv, &ca);
    pthread_condattr_destroy(&ca);
    if (rc)
        goto fail;
    pthread_mutex_init(&s->mu, NULL);
    pthread_mutex_init(&s->dl_mu, NULL);
    wheel_timer_init(&s->flush_timer, on_flush_timer, s);
    wheel_timer_init(&s->grace_timer, on_grace_timer, s);
    wheel_timer_init(&s->shut_timer, on_shut_timer, s);
    wheel_timer_init(&s->cb_timer, on_cb_timer, s);
    wheel_timer_init(&s->replay_timer, on_replay_timer, s);
    return s;
fail:
    dbconf_unref(s->conf);
    free(s->spool_path);
    free(s);
    return NULL;
}

/* The loss and rejection counters exist at 0 from the start, one series per reason and per
 * table, so an alert on increase() sees their first event. */
static void register_counters(void)
{
    static const char *const reasons[] = {"spool", "memory", "shutdown"};
    char lbl[128];
    for (size_t i = 0; i < ARRAY_SIZE(reasons); i++) {
        snprintf(lbl, sizeof(lbl), "reason=\"%s\"", reasons[i]);
        metrics_add("coingest_rows_lost_total", lbl, 0);
    }
    for (int i = 0; i < BATCH_SPEC_COUNT; i++) {
        const struct batch_spec *spec = batch_spec((enum batch_spec_id)i);
        if (!spec)
            continue;
        table_labels(lbl, sizeof(lbl), spec->table);
        metrics_add("coingest_rejected_rows_total", lbl, 0); /* twice for a shared table: +0 */
    }
}

int sink_start(struct sink *s)
{
    if (s->started)
        return -EALREADY;
    int rc = db_library_init();
    if (rc) {
        log_error("cannot initialise the MariaDB client library");
        return rc;
    }
    rc = spool_open(s->spool_path, 0, &s->spool);
    if (rc == -EBUSY) {
        char holder[24] = "unknown";
        long pid = spool_holder(s->spool_path);
        if (pid > 0)
            snprintf(holder, sizeof(holder), "%ld", pid);
        log_error("spool_dir is in use by another process (another coingestd on the same "
                  "spool_dir?); not starting",
                  LOG_S("spool_dir", s->spool_path), LOG_S("holder_pid", holder));
        return rc;
    }
    if (rc) {
        log_error("cannot open the spool directory", LOG_S("spool_dir", s->spool_path),
                  LOG_S("error", strerror(-rc)));
        return rc;
    }
    struct spool_stats ss;
    spool_get_stats(s->spool, &ss);
    if (ss.max_seq >= s->next_seq)
        s->next_seq = ss.max_seq + 1;
    if (ss.records)
        log_info("spool holds rows from before; replaying once the database is reachable",
                 LOG_U("rows", ss.rows), LOG_U("records", ss.records), LOG_U("bytes", ss.bytes));
    rc = uv_async_init(s->loop, &s->async, on_async);
    if (rc) {
        log_error("cannot start the sink", LOG_S("error", uv_strerror(rc)));
        spool_close(s->spool);
        s->spool = NULL;
        return rc;
    }
    s->async.data = s;
    s->async_init = true;
    s->started = true;
    metrics_set("coingest_db_up", "", 0);
    register_counters();
    for (unsigned i = 0; i < s->nworkers; i++) {
        rc = start_writer(s, i);
        if (rc) {
            log_error("cannot start a writer thread", LOG_S("error", strerror(-rc)));
            if (i == 0)
                return rc; /* no thread runs: the caller may still shut down and free */
            break;
        }
    }
    update_gauges(s);
    return 0;
}

/* Cuts b (taken) into pieces, in order: first `head` rows (0: no such piece), then pieces of at
 * most `per` rows. Tails are cut off from the end, so each row is copied once. When an
 * allocation fails the first piece is bigger than planned (it keeps the rows not cut off):
 * no row is ever dropped. Returns the number of pieces in *out (malloc'd, or `one` when there
 * is a single piece). */
static size_t cut_pieces(struct batch *b, uint32_t head, uint32_t per, struct batch ***out,
                         struct batch **one)
{
    uint32_t n = b->nrows;
    if (head >= n) {
        head = 0; /* it all fits: one piece */
        per = n;
    }
    uint32_t after = head ? n - head : n;
    size_t count = (head ? 1 : 0) + (after + (uint64_t)per - 1) / per;
    struct batch **p = count > 1 ? malloc(count * sizeof(*p)) : NULL;
    if (!p) {
        *one = b;
        *out = one;
        return 1;
    }
    size_t first = 0; /* index of the piece that keeps b */
    for (size_t i = count - 1; i > 0; i--) {
        uint32_t from = head ? head + (uint32_t)(i - 1) * per : (uint32_t)i * per;
        struct batch *t = batch_split_tail(b, from);
        if (!t) {
            first = i;
            break;
        }
        p[i] = t;
    }
    p[first] = b;
    if (first) {
        memmove(p, p + first, (count - first) * sizeof(*p));
        count -= first;
    }
    *out = p;
    return count;
}

/* Counts rows that came into memory with a task (rec: they are in a spool record). */
static void count_in(struct sink *s, uint64_t rows, bool rec)
{
    s->mem_rows += rows;
    if (!rec)
        s->bare_rows += rows;
}

/* Puts one piece of a submitted batch into memory, with `rec`, the held spool record of its
 * rows (NULL: the spool refused them). A STATEMENT piece is a task of its own, after closing
 * every open task. Rows of an UPSERT spec go into the spec's open task when it has room
 * (batch_rows, batch_bytes) and holds the same kind of rows (in records or not), else into a
 * new task: full ones are ready at once, a short one becomes the open task. Out of memory
 * never drops rows that are in the spool: their record goes back to it (unread: it replays). */
static void place_piece(struct sink *s, struct batch *p, struct spool_rec *rec, uint64_t seq)
{
    const struct batch_spec *spec = p->spec;
    uint32_t n = p->nrows;
    if (spec->kind == BATCH_KIND_STATEMENT) {
        close_all_open(s);
    } else {
        struct task *open = s->open[spec->id];
        bool fits = open && (open->nrecs > 0) == (rec != NULL) &&
                    open->b->nrows + (uint64_t)n <= s->batch_rows &&
                    (!s->batch_bytes || open->b->bytes + p->bytes <= s->batch_bytes);
        if (fits && (!rec || task_add_rec(open, rec) == 0)) {
            uint32_t before = open->b->nrows;
            int rc = batch_append(open->b, p);
            count_in(s, open->b->nrows - before, rec != NULL);
            if (open->b->nrows != before) {
                open->keyed = false;
                free(open->keys);
                open->keys = NULL;
            }
            if (rc == 0) {
                batch_free(p);
                if (open->b->nrows >= s->batch_rows)
                    close_open(s, spec->id);
                return;
            }
            /* Part of the rows may be in both (written twice, harmless); the piece and its
             * record become a task of their own below. */
            if (rec)
                open->nrecs--;
        }
        /* An open task holds older rows: it goes first, then this one. */
        close_open(s, spec->id);
    }
    struct task *t = task_new(p, seq);
    if (!t || (rec && task_add_rec(t, rec))) {
        if (t)
            task_free(t);
        else
            batch_free(p);
        if (rec) {
            spool_unload(s->spool, rec);
            log_warn("out of memory making a task; the rows wait in the spool", LOG_U("rows", n));
        } else {
            lose_rows(s, n, "memory", "out of memory making a task");
        }
        return;
    }
    count_in(s, n, rec != NULL);
    if (spec->kind == BATCH_KIND_STATEMENT || n >= s->batch_rows) {
        tl_insert_sorted(&s->ready, t);
    } else {
        t->opened_ms = timers_now(s->timers);
        s->open[spec->id] = t;
    }
}

/* Notes the outcome of a spool write for a submitted batch (logged once per episode). */
static void spool_outcome(struct sink *s, int rc)
{
    if (rc) {
        s->spool_failures++;
        metrics_add("coingest_write_errors_total", "reason=\"spool\"", 1);
        if (!s->spool_failing)
            log_error("spool write failed; rows are not accepted, but kept in memory and written "
                      "while it fails, up to twice max_pending_rows",
                      LOG_S("dir", s->spool_path), LOG_S("error", strerror(-rc)));
        s->spool_failing = true;
    } else if (s->spool_failing) {
        log_info("spool writable again", LOG_S("dir", s->spool_path));
        s->spool_failing = false;
    }
}

/* The sync that covered the records a sink_submit_many/async call appended without one
 * (*owed rows): they are accepted when it succeeded (when it failed they stay in memory, as
 * sink_submit's do). */
static void settle_owed(struct sink *s, uint64_t *owed, int sync_rc)
{
    if (sync_rc == 0)
        s->st.rows_accepted += *owed;
    *owed = 0;
}

/*
 * Every submitted batch is first written to the spool, whatever happens next: cut into pieces
 * of at most batch_rows rows (the first one sized to top up the spec's open task), each
 * appended as a record, then one fdatasync for the whole batch (group commit: one sync per
 * sink_submit, not per row; sink_submit_many syncs once for all its batches). Only then is it
 * accepted. Normally the records are "held": the pieces also go into memory for the writers,
 * and each record is marked committed once its task commits, so a restart after a kill -9 or
 * a power loss replays exactly the rows not yet committed. When the rows must wait (database
 * away, memory full, older records unread, shutdown) the records are left unread for the
 * replay and nothing stays in memory.
 */
static int submit_one(struct sink *s, struct batch *b, bool defer_sync, uint64_t *owed)
{
    if (!b)
        return -EINVAL;
    b->next = NULL; /* the chain link is ours now */
    if (b->nrows == 0) {
        batch_free(b);
        return 0;
    }
    uint64_t n = b->nrows;
    const struct batch_spec *spec = b->spec;
    bool backlog = s->spool && (s->shut != SHUT_NONE || s->spilled || unread_records(s) > 0 ||
                                s->mem_rows + n > s->max_pending);
    bool stmt = spec->kind == BATCH_KIND_STATEMENT;
    uint32_t head = 0;
    if (backlog || stmt) {
        close_all_open(s); /* rows submitted before these are written before them */
    } else {
        /* A task of another spec on the same table must not be overtaken by this one. */
        for (int i = 0; i < BATCH_SPEC_COUNT; i++)
            if (i != (int)spec->id && s->open[i] && strcmp(s->open[i]->table, spec->table) == 0)
                close_open(s, i);
        const struct task *open = s->open[spec->id];
        if (open && (open->nrecs > 0) == (s->spool != NULL) && open->b->nrows < s->batch_rows &&
            (!s->batch_bytes || open->b->bytes + b->bytes <= s->batch_bytes))
            head = s->batch_rows - open->b->nrows;
    }
    struct batch *one, **pieces;
    size_t np = cut_pieces(b, head, stmt ? UINT32_MAX : s->batch_rows, &pieces, &one);
    uint64_t seq0 = s->next_seq;
    s->next_seq += np;
    struct spool_rec **recs = backlog ? NULL : calloc(np, sizeof(*recs));

    /* The spool: append every piece, then one sync. */
    int rc = 0;
    size_t appended = 0;
    if (!s->spool)
        rc = s->shut != SHUT_NONE ? -ESHUTDOWN : -ENOTCONN; /* never started: memory only */
    else if (!backlog && !recs)
        rc = -ENOMEM;
    while (rc == 0 && appended < np) {
        rc = spool_append(s->spool, seq0 + appended, pieces[appended],
                          backlog ? NULL : &recs[appended]);
        if (rc == 0)
            appended++;
    }
    uint64_t durable = 0;
    if (appended && defer_sync && !backlog && rc == 0) {
        /* Held records go to memory whatever their sync does: the caller syncs them with
         * the next batch (sink_submit_many). */
        for (size_t i = 0; i < appended; i++)
            *owed += pieces[i]->nrows;
    } else if (appended) {
        int src = spool_sync(s->spool);
        if (rc == 0)
            rc = src;
        for (size_t i = 0; src == 0 && i < appended; i++)
            durable += pieces[i]->nrows;
        settle_owed(s, owed, rc); /* after a failed append, what came before is not trusted */
        /* Unread records that did not sync may not be readable later: memory keeps them too
         * (a replay of the record then only writes the same rows again). Held ones are in
         * memory anyway. */
        if (src && backlog)
            appended = 0;
    }
    if (s->spool && (rc || *owed == 0))
        spool_outcome(s, rc);

    /* Memory: held pieces with their records; the pieces the spool did not take as bare
     * tasks, within the hard cap, after them in seq order. */
    uint64_t bare = 0;
    for (size_t i = appended; i < np; i++)
        bare += pieces[i]->nrows;
    bool keep_bare = s->shut < SHUT_HARD && (!s->spool || mem_may_take(s, bare));
    for (size_t i = 0; i < np; i++) {
        struct batch *p = pieces[i];
        if (i < appended && backlog) {
            batch_free(p); /* in the spool, unread */
        } else if (i < appended || keep_bare) {
            place_piece(s, p, i < appended ? recs[i] : NULL, seq0 + i);
        } else {
            lose_rows(s, p->nrows, s->spool ? "spool" : "shutdown",
                      s->spool ? "the spool refused them and memory is full"
                               : "the sink is stopped");
            batch_free(p);
        }
    }
    if (pieces != &one)
        free(pieces);
    free(recs);
    arm_flush(s);
    s->st.rows_accepted += durable;
    pump(s);
    return rc;
}

/* The end of a call that appended without syncing: one sync for what is owed. Its rows are
 * accepted only when it succeeds and no batch of the call failed (rc); a failure of the call
 * leaves spool_failing as the batch set it. Returns the sync's result. */
static int sync_owed_now(struct sink *s, uint64_t *owed, int rc)
{
    int src = spool_sync(s->spool);
    settle_owed(s, owed, rc ? rc : src);
    if (src || !rc)
        spool_outcome(s, src);
    return src;
}

int sink_submit_many(struct sink *s, struct batch *const *bs, size_t n, uint64_t *accepted)
{
    uint64_t before = s->st.rows_accepted, owed = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int r = bs[i] ? submit_one(s, bs[i], i + 1 < n, &owed) : 0;
        if (r && !rc)
            rc = r;
    }
    if (owed) { /* the last batches were empty */
        int src = sync_owed_now(s, &owed, rc);
        if (src && !rc)
            rc = src;
    }
    if (accepted)
        *accepted = s->st.rows_accepted - before;
    return rc;
}

int sink_submit(struct sink *s, struct batch *b)
{
    return b ? sink_submit_many(s, &b, 1, NULL) : -EINVAL;
}

/* sink_submit_async: the fdatasync runs on libuv's thread pool (on a descriptor of its own),
 * and the rows are accepted when it reports back on the loop. */
struct sync_req {
    uv_work_t work;
    struct sink *s;
    int fd;
    int rc;
    uint64_t rows;     /* accepted when the sync succeeds */
    uint64_t early;    /* accepted during the call (batches synced in place) */
    uint64_t failures; /* s->spool_failures when it was handed over */
    sink_accept_cb cb;
    void *arg;
};

static void sync_work(uv_work_t *w)
{
    struct sync_req *q = w->data;
    q->rc = fdatasync(q->fd) == 0 ? 0 : -errno;
    close(q->fd);
}

static void sync_done(uv_work_t *w, int status)
{
    struct sync_req *q = w->data;
    struct sink *s = q->s;
    if (status != 0 && q->rc == 0)
        q->rc = status; /* not run (the loop is closing): not durable */
    s->syncs_inflight--;
    if (q->rc == 0)
        s->st.rows_accepted += q->rows;
    if (q->rc || q->failures == s->spool_failures)
        spool_outcome(s, q->rc);
    sink_accept_cb cb = q->cb;
    void *arg = q->arg;
    int rc = q->rc;
    uint64_t accepted = q->early + (rc == 0 ? q->rows : 0);
    free(q);
    cb(rc, accepted, arg);
    if (s->shut == SHUT_STOPPING)
        wake_loop(s); /* the shutdown waited for this sync */
}

int sink_submit_async(struct sink *s, struct batch *const *bs, size_t n, sink_accept_cb cb,
                      void *arg, uint64_t *accepted)
{
    uint64_t before = s->st.rows_accepted, owed = 0;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        int r = bs[i] ? submit_one(s, bs[i], true, &owed) : 0;
        if (r && !rc)
            rc = r;
    }
    int src = 0;
    if (owed) {
        struct sync_req *q = rc ? NULL : calloc(1, sizeof(*q));
        int fd = -1;
        src = q ? spool_sync_fd(s->spool, &fd) : rc ? rc : -ENOMEM;
        if (src == 0 && fd < 0) {
            settle_owed(s, &owed, 0); /* nothing appended since the last sync: durable */
        } else if (src == 0) {
            q->work.data = q;
            q->s = s;
            q->fd = fd;
            q->rows = owed;
            q->early = s->st.rows_accepted - before;
            q->failures = s->spool_failures;
            q->cb = cb;
            q->arg = arg;
            src = uv_queue_work(s->loop, &q->work, sync_work, sync_done);
            if (src == 0) {
                s->syncs_inflight++;
                return 0;
            }
            close(fd);
        }
        free(q);
        if (owed) /* the sync could not be handed over, or a batch failed */
            src = sync_owed_now(s, &owed, rc);
    }
    if (accepted)
        *accepted = s->st.rows_accepted - before;
    return rc ? rc : src ? src : 1;
}

void sink_on_ready(struct sink *s, void (*cb)(void *arg), void *arg)
{
    s->ready_cb = cb;
    s->ready_arg = arg;
    if (s->ever_ready) {
        s->ready_due = true;
        tstart(s, &s->cb_timer, 0);
    }
}

void sink_on_idle(struct sink *s, void (*cb)(void *arg), void *arg)
{
    s->idle_cb = cb;
    s->idle_arg = arg;
    s->idle_due = false;
    if (is_idle(s)) {
        s->idle_due = true;
        tstart(s, &s->cb_timer, 0);
        return;
    }
    /* Whoever waits for idle (--once) has no more rows coming: batches still coalescing go
     * to the writers now instead of after flush_interval. */
    close_all_open(s);
    pump(s);
}

int sink_read(struct sink *s, const char *sql, const char *const *params, size_t nparams,
              size_t max_rows, sink_read_cb cb, void *arg)
{
    if (!sql || !cb || (nparams && !params))
        return -EINVAL;
    if (s->shut != SHUT_NONE)
        return -ESHUTDOWN;
    if (!s->started)
        return -ENOTCONN;
    struct read *r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    r->sql = strdup(sql);
    r->params = calloc(nparams ? nparams : 1, sizeof(*r->params));
    r->nparams = nparams;
    bool oom = !r->sql || !r->params;
    for (size_t i = 0; !oom && i < nparams; i++)
        oom = params[i] && !(r->params[i] = strdup(params[i]));
    if (oom) {
        read_free(r);
        return -ENOMEM;
    }
    r->max_rows = max_rows;
    r->cb = cb;
    r->arg = arg;
    pthread_mutex_lock(&s->mu);
    bool down = s->db_down;
    if (down) {
        char msg[sizeof(s->last_err) + 32];
        snprintf(msg, sizeof(msg), "database unreachable: %s", s->last_err);
        read_fail(r, -ENOTCONN, msg);
        rq_push(&s->rdone, r);
    } else {
        r->ticket = s->ticket++;
        rq_push(&s->reads, r);
        pthread_cond_broadcast(&s->cv);
    }
    pthread_mutex_unlock(&s->mu);
    if (down)
        wake_loop(s); /* answered from on_async, never inline */
    return 0;
}

void sink_reconfigure(struct sink *s, const struct config *cfg)
{
    s->batch_rows = cfg->database.batch_rows ? cfg->database.batch_rows : 1;
    s->batch_bytes = cfg->database.batch_bytes;
    s->flush_ms = cfg->database.flush_interval_ms;
    s->max_pending = cfg->database.max_pending_rows;
    arm_flush(s);
    pthread_mutex_lock(&s->mu);
    bool same = dbconf_same(s->conf, cfg);
    unsigned want = cfg->database.workers ? cfg->database.workers : 1;
    unsigned have = s->nworkers;
    s->nworkers = want;
    pthread_mutex_unlock(&s->mu);
    if (!same) {
        struct dbconf *c = dbconf_new(cfg, s->conf->gen + 1);
        if (!c) {
            log_error("out of memory applying [database]; keeping the old settings");
        } else {
            pthread_mutex_lock(&s->mu);
            dbconf_unref(s->conf);
            s->conf = c;
            s->schema = SCHEMA_NONE; /* maybe another database: check it again */
            pthread_cond_broadcast(&s->cv);
            pthread_mutex_unlock(&s->mu);
            log_info("[database] changed: writers reconnect after their current batch");
        }
    }
    if (s->started && s->shut == SHUT_NONE) {
        /* Retired writers exit by themselves; new ones start here, reusing free indexes. */
        for (unsigned i = have; i < want; i++) {
            /* A writer of that index that has not exited yet sees the new count and stays. */
            bool idx_free = true;
            pthread_mutex_lock(&s->mu);
            for (unsigned k = 0; k < s->nw; k++)
                idx_free = idx_free && !(s->w[k]->idx == i && !s->w[k]->exited);
            pthread_mutex_unlock(&s->mu);
            if (idx_free && start_writer(s, i) != 0)
                break;
        }
        pthread_mutex_lock(&s->mu);
        pthread_cond_broadcast(&s->cv);
        pthread_mutex_unlock(&s->mu);
    }
    pump(s);
}

void sink_shutdown(struct sink *s, uint64_t timeout_ms, void (*cb)(void *arg), void *arg)
{
    if (s->shut == SHUT_NONE) {
        s->shut_cb = cb;
        s->shut_arg = arg;
        if (!s->started || !s->async_init) {
            s->shut = SHUT_DONE;
            /* No writer ever ran: rows in memory can only go to the spool, if it is open. */
            if (s->spool)
                spill(s);
            drop_memory(s, "submitted to a sink that never started");
            if (s->spool) {
                spool_close(s->spool);
                s->spool = NULL;
            }
            s->ready_cb = NULL;
            /* Nothing runs: call back on the next iteration, never inline, and from a close
             * callback as a started sink does, not from a timer: the callback may free the
             * timers facility (the daemon's teardown after a failed start does), which a
             * wheel callback must not. */
            if (uv_async_init(s->loop, &s->async, on_async) == 0) {
                stop_all_timers(s);
                s->async.data = s;
                s->async_init = true;
                uv_close((uv_handle_t *)&s->async, on_async_closed);
                return;
            }
            /* No handle to close (out of file descriptors?): cb_timer stays the one timer
             * armed; on_cb_timer sets timers_off when it fires. */
            tstop(s, &s->flush_timer);
            tstop(s, &s->grace_timer);
            tstop(s, &s->shut_timer);
            tstop(s, &s->replay_timer);
            s->idle_cb = cb;
            s->idle_arg = arg;
            s->idle_due = true;
            tstart(s, &s->cb_timer, 0);
            return;
        }
        s->shut = SHUT_GRACEFUL;
        /* Queued reads are answered now (-ECANCELED, on the next on_async); a read a writer
         * runs completes or is cut off with the threads. */
        pthread_mutex_lock(&s->mu);
        fail_queued_reads_locked(s, -ECANCELED, "the sink is shutting down");
        bool answered = s->rdone.head != NULL;
        pthread_mutex_unlock(&s->mu);
        if (answered)
            wake_loop(s);
        close_all_open(s);
        if (s->spilled || s->db_down)
            spill(s);
        tstart(s, &s->shut_timer, timeout_ms);
        pump(s);
        return;
    }
    if (s->shut == SHUT_GRACEFUL)
        go_hard(s);
}

/* The daemon frees the timers facility before the sink. That is safe once the shutdown
 * callback has run: by then every sink timer is stopped and timers_off is set, so nothing
 * below touches s->timers. A sink freed without a completed shutdown (a failed start) still
 * has live timers to stop: then sink_free must run before timers_free. */
void sink_free(struct sink *s)
{
    if (!s)
        return;
    if (!s->timers_off)
        stop_all_timers(s);
    for (unsigned i = 0; i < s->nw; i++) {
        if (s->w[i]->started)
            pthread_join(s->w[i]->tid, NULL);
        free(s->w[i]);
    }
    free(s->w);
    drop_memory(s, "left in memory when the sink was freed");
    /* A completed shutdown answered every read, and a sink that never started took none. */
    struct read *r;
    while ((r = rq_pop(&s->reads)) != NULL)
        read_free(r);
    while ((r = rq_pop(&s->rdone)) != NULL)
        read_free(r);
    free(s->inflight);
    spool_close(s->spool);
    dbconf_unref(s->conf);
    pthread_mutex_destroy(&s->mu);
    pthread_mutex_destroy(&s->dl_mu);
    pthread_cond_destroy(&s->cv);
    free(s->spool_path);
    free(s);
}

void sink_get_stats(const struct sink *s, struct sink_stats *out)
{
    *out = s->st;
    pending_rows(s, &out->rows_pending, &out->rows_spooled, &out->spool_bytes);
    out->spool_failing = s->spool_failing;
    struct spool_stats ss = {0};
    if (s->spool)
        spool_get_stats(s->spool, &ss);
    out->spool_syncs = ss.syncs;
}
