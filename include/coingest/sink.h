/*
 * sink: where rows go. Every batch handed to the sink on the loop thread is first written to
 * a durable spool on disk (one fdatasync per batch), then coalesced per spec and written by a
 * pool of writer threads (one MariaDB/MySQL connection each, one transaction per task,
 * multi-row INSERT ... ON DUPLICATE KEY UPDATE); while the database is away or too many rows
 * are pending it waits in the spool only. A batch the sink accepted is never lost, also on
 * kill -9 or power loss: it is committed, or it is in the spool and replayed (in order) when
 * the database is back, including after a restart (docs/guarantees.md).
 *
 * Jobs can also read through the same writers (sink_read): one SELECT, off the loop thread.
 *
 * Lifecycle (loop thread): sink_new -> sink_start -> sink_submit/sink_read... ->
 * sink_shutdown -> the shutdown callback -> sink_free. Writer threads never touch loop
 * objects; results come back through a mutex-protected queue and uv_async_send.
 *
 * Thread: every function here is for the loop thread.
 */
#ifndef COINGEST_SINK_H
#define COINGEST_SINK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "coingest/batch.h"
#include "coingest/config.h"
#include "coingest/timers.h"

struct sink;

struct sink_stats {
    uint64_t rows_accepted;  /* submitted and accepted: durable in the spool (sink_submit's 0) */
    uint64_t rows_committed; /* committed to the database */
    uint64_t rows_pending;   /* accepted or kept, not yet committed */
    uint64_t rows_spooled;   /* waiting in the spool only (the backlog: not held in memory) */
    uint64_t spool_bytes;    /* the segment files, held records (the journal) included */
    uint64_t rows_rejected;  /* rejected by the server for good (to rejected_rows) */
    uint64_t batches_committed;
    bool db_up;                     /* the last connection attempt succeeded */
    bool schema_ready;              /* migrations are current */
    uint64_t last_db_ok_mono_ms;    /* last successful statement (monotonic ms), 0 never */
    uint64_t rows_lost;             /* handed to the sink but neither committed nor spooled: refused
                                       by sink_submit (spool failing and memory full), dropped on an
                                       allocation failure, or left in memory at shutdown */
    uint64_t db_down_since_mono_ms; /* when the database was found unreachable (a connection
                                       attempt failed with no writer connected), first since it
                                       was last reachable or since the start (monotonic ms,
                                       util_mono_ms); 0 while it is up or not known down */
    bool spool_failing;             /* the last spool write for a submitted batch failed (or a
                                       spill could not write): new rows are not accepted */
    uint64_t spool_syncs;           /* fdatasyncs of the spool's data since the start */
};

/* Creates the sink; reads cfg->database and cfg->daemon.spool_dir (copied). No thread and no
 * connection yet. NULL on failure. */
struct sink *sink_new(uv_loop_t *loop, struct timers *timers, const struct config *cfg);

/* Opens the spool (creating spool_dir), starts the writer threads, which connect, apply
 * migrations when auto_migrate is on, and then replay the spool. The database may be down:
 * the sink keeps trying with backoff. Returns 0 or -errno, fatal either way, with the reason
 * logged here: -EBUSY when another process holds spool_dir's lock (the message names the
 * directory and that process's pid when known), another -errno when spool_dir is unusable or
 * no writer thread could start. After a failure, sink_shutdown and sink_free still work. */
int sink_start(struct sink *s);

/* Hands a batch to the sink, which takes ownership (also on error). Returns 0 when accepted:
 * every row is in the spool and synced (fdatasync, once for the whole batch), so it survives
 * kill -9 and power loss; the rows then also wait in memory for the writers, or only in the
 * spool. Returns -errno when not every row is durable: the spool's error when it cannot be
 * written (rows_accepted counts the part that was; the others stay in memory and are written
 * if the database takes them before the process ends, up to twice max_pending_rows; past that
 * cap they are logged as lost and counted in rows_lost), -ENOTCONN when the sink never started
 * (the rows stay in memory until it stops), -ESHUTDOWN after a stop of a sink that never
 * started (the rows are lost). */
int sink_submit(struct sink *s, struct batch *b);

/* sink_submit for n batches (NULL entries skipped) with one fdatasync for all of them: what a
 * page that fills two tables hands over. Each batch is handled as sink_submit would, in order;
 * returns 0 when every row of every batch is accepted, else the first error. *accepted (may
 * be NULL) gets the rows of the call that were accepted, also on error. */
int sink_submit_many(struct sink *s, struct batch *const *bs, size_t n, uint64_t *accepted);

/* Called on the loop thread when the rows of a sink_submit_async call are durable (0) or
 * could not all be made so (-errno: they stay in memory, as with sink_submit's spool errors);
 * `accepted` is the number of the call's rows that were accepted. */
typedef void (*sink_accept_cb)(int rc, uint64_t accepted, void *arg);

/* sink_submit_many without waiting for the spool's fdatasync: the batches are appended and
 * handed to the writers as sink_submit_many does, and the sync runs on libuv's thread pool
 * while the loop goes on (the next page's parse need not wait for this page's disk flush).
 * Returns 0 when the sync is under way: cb is called once, later, and the rows count as
 * accepted only then. Returns 1 when every row is already durable (nothing was appended
 * unsynced: the spool took the batches as a backlog, or they were empty), -errno like
 * sink_submit_many; cb is not called then, and *accepted (may be NULL) has the accepted rows.
 * The shutdown waits for syncs under way. */
int sink_submit_async(struct sink *s, struct batch *const *bs, size_t n, sink_accept_cb cb,
                      void *arg, uint64_t *accepted);

/* Calls cb once, the first time the database has been reached and the schema is current
 * (immediately on the next loop iteration if that already happened). For READY=1. */
void sink_on_ready(struct sink *s, void (*cb)(void *arg), void *arg);

/* Calls cb once when no row is pending (memory and spool both empty); immediately (next
 * iteration) if already so. Batches still coalescing are handed to the writers at once
 * rather than after flush_interval. Used by --once. */
void sink_on_idle(struct sink *s, void (*cb)(void *arg), void *arg);

/* The result of a read: nrows x ncols text cells (NULL for SQL NULL), row-major (the cell of
 * row r, column c is cells[r * ncols + c]), plus the ncols column names (the SELECT's aliases).
 * Cells are the client library's text for each value: integers and doubles as numbers,
 * DATETIME(3) as 2025-02-09 17:44:07.123 (UTC: the session time zone is +00:00), strings and
 * JSON as stored. Owned by the sink. */
struct sink_rows {
    uint32_t nrows, ncols;
    char **names;
    char **cells;
};

/* rc 0 with rows (valid during the callback only; err NULL), or rc < 0 with rows NULL and err
 * a message (valid during the callback only). */
typedef void (*sink_read_cb)(int rc, const struct sink_rows *rows, const char *err, void *arg);

/* Runs one SELECT with `nparams` string parameters bound to its `?`s (NULL param = SQL NULL)
 * on a writer connection, off the loop thread, as a prepared statement in a read-only
 * transaction. `sql` and `params` are copied. At most max_rows rows (more is an error,
 * -E2BIG). cb runs exactly once on the loop thread, never inline: rc 0 with rows, or
 * -ENOTCONN when the database is not reachable at the time (known down when the read is
 * issued or while it waits, or the connection broke during it: the caller may retry later),
 * -EIO with the server's message in err (bad SQL, a missing table, a statement that writes:
 * the transaction is read-only), -EINVAL when the statement returns no result set or its
 * `?`s are not nparams, -E2BIG, -ENOMEM, or -ECANCELED when the sink shuts down first.
 *
 * Order: a read is queued with the writers' tasks, first come first served, and the next free
 * writer takes it; it waits for nothing else (not for rows submitted before it). It sees every
 * row committed before its SELECT starts, so at least every batch whose commit the sink had
 * seen when sink_read was called (for example all rows once sink_on_idle has called back).
 * Rows still coalescing in memory, waiting for a writer, being written, or in the spool are
 * NOT visible. While the database is starting up (not yet reached, not known down) a read
 * waits for the first connection.
 *
 * Returns 0, or -errno and cb will not run: -EINVAL (no sql or cb), -ENOMEM, -ENOTCONN (the
 * sink never started), -ESHUTDOWN (sink_shutdown was called). */
int sink_read(struct sink *s, const char *sql, const char *const *params, size_t nparams,
              size_t max_rows, sink_read_cb cb, void *arg);

/* Applies a reloaded config: if [database] changed the writers reconnect with the new
 * settings after their current batch; batch sizes and limits apply to the next batch. */
void sink_reconfigure(struct sink *s, const struct config *cfg);

/* Graceful stop: flush what is in memory to the database within timeout_ms, spool whatever
 * is left, stop the threads, then call cb on the loop thread. Reads still queued end with
 * -ECANCELED at once; a read a writer is running completes, or ends with -ECANCELED when the
 * threads stop; every read callback runs before cb. Calling it again (second
 * SIGTERM) cuts the wait short: everything not yet committed is spooled at once. cb never
 * runs inline; it runs from a handle's close callback, not from a timer callback, also for a
 * sink that never started, so cb may free the timers facility. */
void sink_shutdown(struct sink *s, uint64_t timeout_ms, void (*cb)(void *arg), void *arg);

/* Frees the sink. After its shutdown callback ran it may be called after timers_free (the
 * shutdown stopped every sink timer); without a completed shutdown, call it before
 * timers_free (rows still in memory are then counted as lost). NULL is a no-op. */
void sink_free(struct sink *s);

void sink_get_stats(const struct sink *s, struct sink_stats *out);

#endif
