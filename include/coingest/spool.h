/*
 * spool: the sink's durable, append-only store for accepted batches. Every batch the sink
 * accepts is a record here first (its write-ahead journal): records the sink holds in memory
 * while writers commit them ("held"), and records waiting to be replayed because they cannot
 * be written to the database yet (database away, too many rows pending, shutdown).
 *
 * The spool is a directory of segment files, spool-NNNNNNNNNNNN.seg, each a sequence of
 * records:
 *
 *   u32 magic "CGSP" | u32 len | u32 crc32c(len bytes || payload) | payload (len bytes)
 *   payload = u64 seq | batch_encode() of one batch
 *
 * (all integers little-endian). A committed record has its magic overwritten with "CGSD"
 * (not synced; see spool_commit), so a restart skips it. `seq` is the sink's submission order;
 * the spool replays records by ascending seq, whatever the file they sit in, so a batch the
 * sink spools late (an older batch a writer gave back) still replays before newer ones.
 * Appends go to the newest segment, which rotates past a size limit; a new file is made
 * durable by an fsync of the directory. When every record of the active segment is committed
 * the file is emptied and reused.
 *
 * spool_open() reads every segment once, checks every record's checksum and keeps a small
 * index entry (seq, segment, offset, length, rows) per valid record, about 64 bytes per record
 * (a record is a whole batch), so memory does not grow with the rows in the spool. A record
 * that fails its checksum, or a torn tail after a crash, is reported with a warning, counted
 * in coingest_spool_corrupt_records_total and skipped: the scan resumes at the next magic. One
 * warning per segment sums up its corrupt regions (count, bytes, first offset and reason).
 * Records are loaded (read, checked again, decoded) a few at a time as the sink replays them,
 * and forgotten once committed; a segment whose records are all committed is deleted.
 *
 * A lock file (flock on spool.lock) keeps two processes from sharing one spool directory; the
 * holder writes its pid into it, so a second process can say who holds the directory.
 *
 * Thread: a spool is used from one thread (the sink's loop thread).
 */
#ifndef COINGEST_SPOOL_H
#define COINGEST_SPOOL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "coingest/batch.h"

#define SPOOL_SEGMENT_BYTES_DEFAULT (64u * 1024u * 1024u)
/* A record larger than this is refused on append and treated as corrupt on read. */
#define SPOOL_RECORD_MAX (1024u * 1024u * 1024u)

struct spool;
/* One record in the index. Owned by the spool; valid until spool_commit() or spool_close(). */
struct spool_rec;

struct spool_stats {
    uint64_t rows;     /* rows in live records (unread and loaded) */
    uint64_t records;  /* live records */
    uint64_t unread;   /* live records not loaded */
    uint64_t bytes;    /* bytes of the segment files on disk */
    uint64_t segments; /* segment files on disk */
    uint64_t corrupt;  /* records skipped as corrupt since open */
    uint64_t max_seq;  /* highest seq ever seen (0 when none) */
    uint64_t syncs;    /* fdatasync calls of spool_sync since open */
};

/* Opens (creating it with mode 0700 if needed) the spool in `dir`, takes its lock and indexes
 * every valid record. `segment_bytes` is the rotation size (0: the default). Returns 0 and the
 * spool in *out, or -errno: -EBUSY when another process holds the directory's lock. */
int spool_open(const char *dir, uint64_t segment_bytes, struct spool **out);

/* The pid of the process holding `dir`'s lock, as that process recorded it in the lock file
 * (spool.lock) when it opened the spool; 0 when unknown (no file, nothing recorded yet, or
 * unreadable). Meant for the message after spool_open() returned -EBUSY. Thread: any. */
long spool_holder(const char *dir);

/* Closes files and frees the index; records stay on disk (a drained active segment is
 * deleted). NULL is a no-op. */
void spool_close(struct spool *sp);

/* Appends batch `b` (not taken) as a record with order `seq`. The record is written but not
 * yet durable: call spool_sync() before reporting the batch as accepted. With `held` NULL the
 * record is unread (spool_peek/spool_load replay it); otherwise it is created loaded, as if
 * spool_load had returned it, and *held is set: the caller keeps the batch in memory and ends
 * with spool_commit() or spool_unload(). Returns 0 or -errno (the segment is truncated back,
 * so a failed append leaves no partial record; *held is untouched). */
int spool_append(struct spool *sp, uint64_t seq, const struct batch *b, struct spool_rec **held);

/* Makes every append so far durable (fdatasync of the segment, and an fsync of the directory
 * when a segment was created). 0 or -errno. */
int spool_sync(struct spool *sp);

/* For an fdatasync off the loop thread: fsyncs the directory here when a segment was created,
 * then sets *fd to a new descriptor of the active segment (the caller fdatasyncs and closes
 * it; the segment may be closed or deleted meanwhile), or to -1 when nothing was appended
 * since the last spool_sync. The appends stay marked unsynced, so the next spool_sync still
 * syncs them itself. 0 or -errno. */
int spool_sync_fd(struct spool *sp, int *fd);

/* The unread record with the lowest seq, or NULL when none. */
struct spool_rec *spool_peek(struct spool *sp);

/* Reads, checks and decodes an unread record into a new batch (*out, owned by the caller) and
 * marks it loaded. Returns 0, or -EBADMSG when the record no longer checks out (it is warned
 * about, counted and dropped from the index), or another -errno (I/O; the record stays
 * unread). */
int spool_load(struct spool *sp, struct spool_rec *rec, struct batch **out);

/* Puts a loaded record back to unread (its batch was dropped from memory). */
void spool_unload(struct spool *sp, struct spool_rec *rec);

/* Forgets a loaded record whose rows are committed and marks it committed in its segment (a
 * 4-byte pwrite, not synced: it survives a kill -9, and if a power loss undoes it the record
 * only replays once more, before anything newer; marks of older segments are synced before a
 * segment is deleted so that this order holds). Deletes its segment when that was the
 * segment's last live record; the active segment is emptied and reused instead, and
 * spool_close() deletes it, so a drained spool leaves no files behind. `rec` is freed. */
void spool_commit(struct spool *sp, struct spool_rec *rec);

uint64_t spool_rec_seq(const struct spool_rec *rec);
uint32_t spool_rec_rows(const struct spool_rec *rec);

void spool_get_stats(const struct spool *sp, struct spool_stats *out);

/* The directory (for the dead-letter file and messages). */
const char *spool_dir(const struct spool *sp);

#endif
