/*
 * spool: append-only segment files with a checksum per record, indexed in memory by seq.
 *
 * Layout and guarantees are described in spool.h. How it works:
 *
 * - Segments are kept in a list ordered by id; the newest one (`active`) takes appends and is
 *   open read-write, so records appended in this run can be loaded back through the same
 *   descriptor. Older segments are opened read-only on demand, one at a time.
 * - At open, each segment is mapped and walked record by record. A record is accepted only if
 *   its magic, length and CRC-32C check out and its payload starts like a batch encoding; any
 *   other bytes form a corrupt region that is warned about, counted and skipped by searching
 *   for the next magic (a torn tail is such a region at the end of a file). Appends never go
 *   to a segment found at open: a new segment is started, so new records never follow a torn
 *   tail.
 * - The index is a binary min-heap of unread records keyed by (seq, segment, offset); loaded
 *   records leave the heap and come back if unloaded. Every record also sits on one list so
 *   spool_close() can free them whatever their state. Each segment counts its live records;
 *   at zero it is deleted (the active one too, so a drained spool leaves no files behind).
 */
#include "coingest/spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "coingest/list.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/util.h"

#define REC_MAGIC 0x50534743u /* "CGSP" read as a little-endian u32 */
/* A committed record: its magic overwritten in place, so a scan skips it without a warning
 * (the checksum covers the length and payload, not the magic). */
#define REC_DONE 0x44534743u /* "CGSD" */
#define REC_HDR  12u
#define REC_SEQ  8u
/* seq + "CGB1" + u16 id + u16 ncols + u32 nrows */
#define REC_MIN_PAYLOAD (REC_SEQ + 12u)

struct segment {
    struct segment *next;
    uint64_t id;
    uint64_t size;
    uint32_t live;
    bool active;
    bool marks_dirty; /* committed marks written since the last fdatasync (not the active one) */
};

struct spool_rec {
    struct list_link link; /* in spool->all */
    struct segment *seg;
    uint64_t off; /* of the header */
    uint64_t seq;
    uint32_t len; /* payload bytes */
    uint32_t nrows;
    size_t heap_idx; /* SIZE_MAX: loaded */
};

struct spool {
    char *dir;
    int dirfd;
    int lockfd;
    uint64_t seg_max;
    struct segment *segs; /* by id */
    struct segment *active;
    int active_fd;
    bool dirty, dir_dirty;
    uint64_t next_seg_id;
    struct segment *read_seg;
    int read_fd;
    struct spool_rec **heap;
    size_t heap_n, heap_cap;
    struct list_link all; /* every record (struct spool_rec) */
    struct spool_stats st;
};

/* --- little-endian helpers ---------------------------------------------------------------- */

static void put_le32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_le64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_le32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint64_t get_le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static uint32_t rec_crc(const unsigned char *lenbytes, const unsigned char *payload, size_t len)
{
    return util_crc32c(util_crc32c(0, lenbytes, 4), payload, len);
}

/* --- heap --------------------------------------------------------------------------------- */

static bool rec_before(const struct spool_rec *a, const struct spool_rec *b)
{
    if (a->seq != b->seq)
        return a->seq < b->seq;
    if (a->seg->id != b->seg->id)
        return a->seg->id < b->seg->id;
    return a->off < b->off;
}

static void heap_set(struct spool *sp, size_t i, struct spool_rec *r)
{
    sp->heap[i] = r;
    r->heap_idx = i;
}

static void heap_up(struct spool *sp, size_t i)
{
    struct spool_rec *r = sp->heap[i];
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (!rec_before(r, sp->heap[parent]))
            break;
        heap_set(sp, i, sp->heap[parent]);
        i = parent;
    }
    heap_set(sp, i, r);
}

static void heap_down(struct spool *sp, size_t i)
{
    struct spool_rec *r = sp->heap[i];
    for (;;) {
        size_t l = 2 * i + 1, m = i;
        const struct spool_rec *best = r;
        if (l < sp->heap_n && rec_before(sp->heap[l], best)) {
            m = l;
            best = sp->heap[l];
        }
        if (l + 1 < sp->heap_n && rec_before(sp->heap[l + 1], best))
            m = l + 1;
        if (m == i)
            break;
        heap_set(sp, i, sp->heap[m]);
        i = m;
    }
    heap_set(sp, i, r);
}

static int heap_push(struct spool *sp, struct spool_rec *r)
{
    if (sp->heap_n == sp->heap_cap) {
        size_t cap = sp->heap_cap ? sp->heap_cap * 2 : 64;
        struct spool_rec **h = realloc(sp->heap, cap * sizeof(*h));
        if (!h)
            return -ENOMEM;
        sp->heap = h;
        sp->heap_cap = cap;
    }
    sp->heap[sp->heap_n] = r;
    r->heap_idx = sp->heap_n++;
    heap_up(sp, r->heap_idx);
    sp->st.unread++;
    return 0;
}

static void heap_remove(struct spool *sp, struct spool_rec *r)
{
    size_t i = r->heap_idx;
    struct spool_rec *last = sp->heap[--sp->heap_n];
    r->heap_idx = SIZE_MAX;
    sp->st.unread--;
    if (last == r)
        return;
    heap_set(sp, i, last);
    heap_up(sp, i);
    heap_down(sp, last->heap_idx);
}

/* --- segments ----------------------------------------------------------------------------- */

static void seg_name(uint64_t id, char *buf, size_t cap)
{
    snprintf(buf, cap, "spool-%012" PRIu64 ".seg", id);
}

static int parse_seg_name(const char *name, uint64_t *id)
{
    const char *p = name;
    if (strncmp(p, "spool-", 6) != 0)
        return -1;
    p += 6;
    uint64_t v = 0;
    int n = 0;
    while (*p >= '0' && *p <= '9') {
        if (v > (UINT64_MAX - 9) / 10)
            return -1;
        v = v * 10 + (uint64_t)(*p++ - '0');
        n++;
    }
    if (n == 0 || strcmp(p, ".seg") != 0)
        return -1;
    *id = v;
    return 0;
}

/* Makes the committed marks of segments older than `seg` durable before `seg` goes: a record
 * replayed after a power loss must not be older than a record whose segment is gone, or it
 * would overwrite newer values of the same key. Rarely has anything to do (segments usually
 * drain oldest first). */
static void sync_older_marks(struct spool *sp, const struct segment *seg)
{
    for (struct segment *o = sp->segs; o && o->id < seg->id; o = o->next) {
        if (!o->marks_dirty)
            continue;
        char name[64];
        seg_name(o->id, name, sizeof(name));
        int fd = openat(sp->dirfd, name, O_RDONLY | O_CLOEXEC);
        if (fd >= 0 && fdatasync(fd) == 0)
            o->marks_dirty = false;
        else
            log_warn("spool: cannot sync committed marks; those records may replay again after "
                     "a power loss",
                     LOG_S("dir", sp->dir), LOG_S("file", name), LOG_S("error", strerror(errno)));
        if (fd >= 0)
            close(fd);
    }
}

static void seg_delete(struct spool *sp, struct segment *seg)
{
    char name[64];
    seg_name(seg->id, name, sizeof(name));
    sync_older_marks(sp, seg);
    if (sp->read_seg == seg) {
        close(sp->read_fd);
        sp->read_fd = -1;
        sp->read_seg = NULL;
    }
    if (sp->active == seg) {
        close(sp->active_fd);
        sp->active_fd = -1;
        sp->active = NULL;
        sp->dirty = false;
    }
    if (unlinkat(sp->dirfd, name, 0) != 0 && errno != ENOENT)
        log_warn("spool: cannot delete segment", LOG_S("dir", sp->dir), LOG_S("file", name),
                 LOG_S("error", strerror(errno)));
    for (struct segment **pp = &sp->segs; *pp; pp = &(*pp)->next) {
        if (*pp == seg) {
            *pp = seg->next;
            break;
        }
    }
    sp->st.bytes -= seg->size;
    sp->st.segments--;
    free(seg);
}

static struct segment *seg_add(struct spool *sp, uint64_t id)
{
    struct segment *seg = calloc(1, sizeof(*seg));
    if (!seg)
        return NULL;
    seg->id = id;
    struct segment **pp = &sp->segs;
    while (*pp && (*pp)->id < id)
        pp = &(*pp)->next;
    seg->next = *pp;
    *pp = seg;
    sp->st.segments++;
    return seg;
}

/* --- records ------------------------------------------------------------------------------ */

/* A new index entry, unread (in the heap) or, with `unread` false, loaded (held by the caller). */
static struct spool_rec *rec_new(struct spool *sp, struct segment *seg, uint64_t off, uint32_t len,
                                 uint64_t seq, uint32_t nrows, bool unread)
{
    struct spool_rec *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->seg = seg;
    r->off = off;
    r->len = len;
    r->seq = seq;
    r->nrows = nrows;
    r->heap_idx = SIZE_MAX;
    if (unread && heap_push(sp, r)) {
        free(r);
        return NULL;
    }
    list_append(&sp->all, &r->link);
    seg->live++;
    sp->st.records++;
    sp->st.rows += nrows;
    if (seq > sp->st.max_seq)
        sp->st.max_seq = seq;
    return r;
}

/* The active segment has no live record left: empty it and keep appending to it (its records
 * are all committed or corrupt). Cheaper than a new file and a directory fsync every time a
 * healthy sink catches up; spool_close() deletes it. */
static void drain_active(struct spool *sp)
{
    struct segment *seg = sp->active;
    if (seg->size == 0)
        return;
    sync_older_marks(sp, seg); /* its records must not outlive older unmarked ones */
    if (ftruncate(sp->active_fd, 0) != 0) {
        log_debug("spool: cannot empty the drained segment", LOG_S("dir", sp->dir),
                  LOG_S("error", strerror(errno)));
        return;
    }
    sp->st.bytes -= seg->size;
    seg->size = 0;
}

/* Forgets a record (committed or corrupt); deletes its segment (empties the active one) when it
 * was the last one. */
static void rec_drop(struct spool *sp, struct spool_rec *r)
{
    if (r->heap_idx != SIZE_MAX)
        heap_remove(sp, r);
    list_remove(&r->link);
    struct segment *seg = r->seg;
    seg->live--;
    sp->st.records--;
    sp->st.rows -= r->nrows;
    free(r);
    if (seg->live == 0) {
        if (seg->active)
            drain_active(sp);
        else
            seg_delete(sp, seg);
    }
}

static void report_corrupt(struct spool *sp, uint64_t seg_id, uint64_t off, uint64_t bytes,
                           const char *what)
{
    char name[64];
    seg_name(seg_id, name, sizeof(name));
    log_warn("spool: corrupt record skipped", LOG_S("dir", sp->dir), LOG_S("file", name),
             LOG_U("offset", off), LOG_U("bytes", bytes), LOG_S("reason", what));
    metrics_add("coingest_spool_corrupt_records_total", "", 1);
    sp->st.corrupt++;
}

/* Checks a record at p (avail bytes from there). Returns its total size, 0 when it is not a
 * valid record, and sets *why. A committed record (REC_DONE) checks out like any other, with
 * *done set; pass done NULL to accept live records only. */
static size_t check_record(const unsigned char *p, size_t avail, const char **why, bool *done)
{
    if (avail < REC_HDR) {
        *why = "torn header";
        return 0;
    }
    uint32_t magic = get_le32(p);
    if (magic != REC_MAGIC && !(done && magic == REC_DONE)) {
        *why = "bad magic";
        return 0;
    }
    if (done)
        *done = magic == REC_DONE;
    uint32_t len = get_le32(p + 4);
    if (len < REC_MIN_PAYLOAD || len > SPOOL_RECORD_MAX) {
        *why = "bad length";
        return 0;
    }
    if ((size_t)len > avail - REC_HDR) {
        *why = "torn record";
        return 0;
    }
    if (rec_crc(p + 4, p + REC_HDR, len) != get_le32(p + 8)) {
        *why = "checksum mismatch";
        return 0;
    }
    if (memcmp(p + REC_HDR + REC_SEQ, "CGB1", 4) != 0) {
        *why = "not a batch";
        return 0;
    }
    return REC_HDR + len;
}

/* The next live or committed record's magic at or after p, or end. */
static const unsigned char *find_magic(const unsigned char *p, const unsigned char *end)
{
    unsigned char m[4], d[4];
    put_le32(m, REC_MAGIC);
    put_le32(d, REC_DONE);
    if (p >= end)
        return end;
    const unsigned char *q = memmem(p, (size_t)(end - p), m, 4);
    const unsigned char *r = memmem(p, (size_t)((q ? q : end) - p), d, 4);
    return r ? r : q ? q : end;
}

/* Indexes the valid records of one segment file. */
static int scan_segment(struct spool *sp, struct segment *seg)
{
    char name[64];
    seg_name(seg->id, name, sizeof(name));
    int fd = openat(sp->dirfd, name, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat stt;
    if (fstat(fd, &stt) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    seg->size = (uint64_t)stt.st_size;
    sp->st.bytes += seg->size;
    if (seg->size == 0) {
        close(fd);
        return 0;
    }
    unsigned char *map = mmap(NULL, seg->size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED)
        return -errno;
    const unsigned char *p = map, *end = map + seg->size;
    int rc = 0;
    /* Corrupt regions are summed up in one line per segment: a segment of garbage that happens
     * to repeat the magic would otherwise log a line per 4 bytes. */
    uint64_t bad = 0, bad_bytes = 0, first_off = 0;
    const char *first_why = NULL;
    while (p < end) {
        const char *why = NULL;
        bool done = false;
        size_t n = check_record(p, (size_t)(end - p), &why, &done);
        if (n) {
            uint64_t off = (uint64_t)(p - map);
            const unsigned char *pl = p + REC_HDR;
            uint32_t nrows = get_le32(pl + REC_SEQ + 8);
            if (!done && !rec_new(sp, seg, off, get_le32(p + 4), get_le64(pl), nrows, true)) {
                rc = -ENOMEM;
                break;
            }
            if (done && get_le64(pl) > sp->st.max_seq)
                sp->st.max_seq = get_le64(pl); /* seqs keep increasing across a restart */
            p += n;
            continue;
        }
        const unsigned char *next = find_magic(p + 1, end);
        if (bad++ == 0) {
            first_off = (uint64_t)(p - map);
            first_why = next == end ? (strcmp(why, "bad magic") ? why : "torn tail") : why;
        }
        bad_bytes += (uint64_t)(next - p);
        p = next;
    }
    munmap(map, seg->size);
    if (bad) {
        log_warn("spool: corrupt records skipped", LOG_S("dir", sp->dir), LOG_S("file", name),
                 LOG_U("records", bad), LOG_U("bytes", bad_bytes), LOG_U("first_offset", first_off),
                 LOG_S("first_reason", first_why));
        metrics_add("coingest_spool_corrupt_records_total", "", (double)bad);
        sp->st.corrupt += bad;
    }
    return rc;
}

/* --- open/close --------------------------------------------------------------------------- */

static int mkdir_p(const char *dir)
{
    char *tmp = strdup(dir);
    if (!tmp)
        return -ENOMEM;
    int rc = 0;
    for (char *p = tmp + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(tmp, 0700) != 0 && errno != EEXIST) {
                rc = -errno;
                break;
            }
            *p = c;
            if (c == '\0')
                break;
        }
    }
    free(tmp);
    return rc;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int scan_dir(struct spool *sp)
{
    int fd = dup(sp->dirfd);
    if (fd < 0)
        return -errno;
    DIR *d = fdopendir(fd);
    if (!d) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    uint64_t *ids = NULL;
    size_t n = 0, cap = 0;
    int rc = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        uint64_t id;
        if (parse_seg_name(de->d_name, &id))
            continue;
        if (n == cap) {
            cap = cap ? cap * 2 : 16;
            uint64_t *t = realloc(ids, cap * sizeof(*t));
            if (!t) {
                rc = -ENOMEM;
                goto out;
            }
            ids = t;
        }
        ids[n++] = id;
    }
    if (n > 1)
        qsort(ids, n, sizeof(*ids), cmp_u64);
    for (size_t i = 0; i < n; i++) {
        struct segment *seg = seg_add(sp, ids[i]);
        if (!seg) {
            rc = -ENOMEM;
            goto out;
        }
        if (ids[i] >= sp->next_seg_id)
            sp->next_seg_id = ids[i] + 1;
        rc = scan_segment(sp, seg);
        if (rc)
            goto out;
        if (seg->live == 0)
            seg_delete(sp, seg);
    }
out:
    free(ids);
    closedir(d);
    return rc;
}

/* Records our pid in the lock file we hold, for the message of a process that finds the
 * directory busy. Best effort: the lock alone is what keeps others out. */
static void write_holder(int fd)
{
    char buf[32];
    int n = snprintf(buf, sizeof(buf), "%ld\n", (long)getpid());
    if (ftruncate(fd, 0) == 0 && pwrite(fd, buf, (size_t)n, 0) == n)
        return;
    log_debug("cannot record the pid in the spool lock file", LOG_S("error", strerror(errno)));
}

long spool_holder(const char *dir)
{
    char path[PATH_MAX];
    if (snprintf(path, sizeof(path), "%s/spool.lock", dir) >= (int)sizeof(path))
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[32];
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    char *end;
    long pid = strtol(buf, &end, 10);
    return pid > 0 && *end == '\n' ? pid : 0;
}

int spool_open(const char *dir, uint64_t segment_bytes, struct spool **out)
{
    int rc;
    struct spool *sp = calloc(1, sizeof(*sp));
    if (!sp)
        return -ENOMEM;
    sp->dirfd = sp->lockfd = sp->active_fd = sp->read_fd = -1;
    list_init(&sp->all);
    sp->seg_max = segment_bytes ? segment_bytes : SPOOL_SEGMENT_BYTES_DEFAULT;
    sp->next_seg_id = 1;
    sp->dir = strdup(dir);
    if (!sp->dir) {
        rc = -ENOMEM;
        goto fail;
    }
    rc = mkdir_p(dir);
    if (rc)
        goto fail;
    sp->dirfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dirfd < 0) {
        rc = -errno;
        goto fail;
    }
    sp->lockfd = openat(sp->dirfd, "spool.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (sp->lockfd < 0) {
        rc = -errno;
        goto fail;
    }
    if (flock(sp->lockfd, LOCK_EX | LOCK_NB) != 0) {
        rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
        goto fail;
    }
    write_holder(sp->lockfd);
    rc = scan_dir(sp);
    if (rc)
        goto fail;
    *out = sp;
    return 0;
fail:
    spool_close(sp);
    return rc;
}

void spool_close(struct spool *sp)
{
    if (!sp)
        return;
    struct list_link *l;
    while ((l = list_first(&sp->all)) != NULL) {
        list_remove(l);
        free(LIST_CONTAINER_OF(l, struct spool_rec, link));
    }
    if (sp->active && sp->active->live == 0) {
        seg_delete(sp, sp->active); /* a drained spool leaves no files behind */
    } else if (sp->active_fd >= 0 && fdatasync(sp->active_fd) != 0) {
        log_debug("spool: cannot sync the active segment at close", LOG_S("dir", sp->dir),
                  LOG_S("error", strerror(errno)));
    }
    while (sp->segs) {
        struct segment *s = sp->segs;
        sp->segs = s->next;
        free(s);
    }
    if (sp->active_fd >= 0)
        close(sp->active_fd);
    if (sp->read_fd >= 0)
        close(sp->read_fd);
    if (sp->lockfd >= 0)
        close(sp->lockfd);
    if (sp->dirfd >= 0)
        close(sp->dirfd);
    free(sp->heap);
    free(sp->dir);
    free(sp);
}

/* --- append ------------------------------------------------------------------------------- */

static int new_active(struct spool *sp)
{
    struct segment *old = sp->active;
    if (old) {
        if (sp->dirty && fdatasync(sp->active_fd) != 0)
            return -errno;
        sp->dirty = false;
        old->active = false;
        close(sp->active_fd);
        sp->active_fd = -1;
        sp->active = NULL;
        if (old->live == 0)
            seg_delete(sp, old);
    }
    char name[64];
    seg_name(sp->next_seg_id, name, sizeof(name));
    /* No O_APPEND: records go at explicit offsets (pwritev), and a commit overwrites a record's
     * magic in place, which pwrite on an O_APPEND descriptor cannot do on Linux. */
    int fd = openat(sp->dirfd, name, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    struct segment *seg = seg_add(sp, sp->next_seg_id);
    if (!seg) {
        close(fd);
        unlinkat(sp->dirfd, name, 0);
        return -ENOMEM;
    }
    sp->next_seg_id++;
    seg->active = true;
    sp->active = seg;
    sp->active_fd = fd;
    sp->dir_dirty = true;
    return 0;
}

static int write_all(int fd, struct iovec *iov, int n, uint64_t off)
{
    while (n > 0) {
        ssize_t w = pwritev(fd, iov, n, (off_t)off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (w == 0)
            return -EIO;
        off += (uint64_t)w;
        size_t left = (size_t)w;
        while (n > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            n--;
        }
        if (n > 0) {
            iov->iov_base = (char *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

int spool_append(struct spool *sp, uint64_t seq, const struct batch *b, struct spool_rec **held)
{
    size_t elen;
    unsigned char *enc = batch_encode(b, &elen);
    if (!enc)
        return -ENOMEM;
    int rc = 0;
    if (elen > SPOOL_RECORD_MAX - REC_SEQ) {
        rc = -EFBIG;
        goto out;
    }
    if (!sp->active || sp->active->size >= sp->seg_max) {
        rc = new_active(sp);
        if (rc)
            goto out;
    }
    uint32_t len = (uint32_t)(REC_SEQ + elen);
    unsigned char hdr[REC_HDR], seqb[REC_SEQ];
    put_le32(hdr, REC_MAGIC);
    put_le32(hdr + 4, len);
    put_le64(seqb, seq);
    put_le32(hdr + 8,
             util_crc32c(util_crc32c(util_crc32c(0, hdr + 4, 4), seqb, REC_SEQ), enc, elen));
    struct iovec iov[3] = {{hdr, REC_HDR}, {seqb, REC_SEQ}, {enc, elen}};
    struct segment *seg = sp->active;
    rc = write_all(sp->active_fd, iov, 3, seg->size);
    if (rc) {
        /* Leave no partial record behind: the next append starts at a clean boundary. */
        if (ftruncate(sp->active_fd, (off_t)seg->size) != 0)
            log_warn("spool: cannot truncate after a failed append", LOG_S("dir", sp->dir),
                     LOG_S("error", strerror(errno)));
        goto out;
    }
    uint64_t off = seg->size;
    seg->size += REC_HDR + len;
    sp->st.bytes += REC_HDR + len;
    sp->dirty = true;
    struct spool_rec *r = rec_new(sp, seg, off, len, seq, b->nrows, held == NULL);
    if (!r) {
        /* The record is on disk but not indexed; it is found again at the next open. */
        rc = -ENOMEM;
    } else if (held) {
        *held = r;
    }
out:
    free(enc);
    return rc;
}

int spool_sync(struct spool *sp)
{
    if (sp->dirty) {
        sp->st.syncs++;
        if (fdatasync(sp->active_fd) != 0)
            return -errno;
        sp->dirty = false;
    }
    if (sp->dir_dirty) {
        if (fsync(sp->dirfd) != 0)
            return -errno;
        sp->dir_dirty = false;
    }
    return 0;
}

int spool_sync_fd(struct spool *sp, int *fd)
{
    *fd = -1;
    if (sp->dir_dirty) {
        if (fsync(sp->dirfd) != 0)
            return -errno;
        sp->dir_dirty = false;
    }
    if (!sp->dirty || sp->active_fd < 0)
        return 0;
    *fd = fcntl(sp->active_fd, F_DUPFD_CLOEXEC, 0);
    if (*fd < 0)
        return -errno;
    sp->st.syncs++;
    return 0;
}

/* --- replay ------------------------------------------------------------------------------- */

struct spool_rec *spool_peek(struct spool *sp)
{
    return sp->heap_n ? sp->heap[0] : NULL;
}

static int fd_for(struct spool *sp, struct segment *seg)
{
    if (seg == sp->active)
        return sp->active_fd;
    if (sp->read_seg == seg)
        return sp->read_fd;
    if (sp->read_fd >= 0)
        close(sp->read_fd);
    sp->read_seg = NULL;
    char name[64];
    seg_name(seg->id, name, sizeof(name));
    sp->read_fd = openat(sp->dirfd, name, O_RDWR | O_CLOEXEC); /* RDWR: spool_commit marks */
    if (sp->read_fd < 0)
        return -errno;
    sp->read_seg = seg;
    return sp->read_fd;
}

int spool_load(struct spool *sp, struct spool_rec *rec, struct batch **out)
{
    if (rec->heap_idx == SIZE_MAX)
        return -EINVAL;
    int fd = fd_for(sp, rec->seg);
    if (fd < 0)
        return fd;
    size_t n = REC_HDR + (size_t)rec->len;
    unsigned char *buf = malloc(n);
    if (!buf)
        return -ENOMEM;
    size_t got = 0;
    while (got < n) {
        ssize_t r = pread(fd, buf + got, n - got, (off_t)(rec->off + got));
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            int rc = -errno;
            free(buf);
            return rc;
        }
        if (r == 0)
            break;
        got += (size_t)r;
    }
    const char *why = "short read";
    struct batch *b = NULL;
    if (got == n && check_record(buf, n, &why, NULL) == n) {
        if (get_le64(buf + REC_HDR) != rec->seq)
            why = "sequence changed";
        else if (!(b = batch_decode(buf + REC_HDR + REC_SEQ, rec->len - REC_SEQ)))
            why = "undecodable batch";
    }
    free(buf);
    if (!b) {
        report_corrupt(sp, rec->seg->id, rec->off, n, why);
        rec_drop(sp, rec);
        return -EBADMSG;
    }
    heap_remove(sp, rec);
    *out = b;
    return 0;
}

void spool_unload(struct spool *sp, struct spool_rec *rec)
{
    if (rec->heap_idx != SIZE_MAX)
        return;
    if (heap_push(sp, rec)) {
        /* Out of memory for the heap: the record stays on disk and is found at the next
         * open; keep the index consistent by forgetting it without deleting the segment. */
        rec->seg->live++; /* pins the segment */
        rec_drop(sp, rec);
        log_warn("spool: out of memory; a record will replay after a restart",
                 LOG_S("dir", sp->dir));
    }
}

void spool_commit(struct spool *sp, struct spool_rec *rec)
{
    /* Mark the record committed on disk, so that a restart does not replay it. Not synced:
     * the page cache survives a kill -9; after a power loss an unmarked committed record only
     * replays again, in seq order, which rewrites the same values (sync_older_marks keeps the
     * order). A failed mark has the same harmless effect. */
    struct segment *seg = rec->seg;
    if (seg->live > 1) { /* the last one: its segment is deleted or emptied below */
        unsigned char m[4];
        put_le32(m, REC_DONE);
        int fd = fd_for(sp, seg);
        if (fd < 0 || pwrite(fd, m, 4, (off_t)rec->off) != 4)
            log_debug("spool: cannot mark a committed record; it replays after a restart",
                      LOG_S("dir", sp->dir), LOG_S("error", strerror(fd < 0 ? -fd : errno)));
        else if (!seg->active)
            seg->marks_dirty = true;
    }
    rec_drop(sp, rec);
}

uint64_t spool_rec_seq(const struct spool_rec *rec)
{
    return rec->seq;
}

uint32_t spool_rec_rows(const struct spool_rec *rec)
{
    return rec->nrows;
}

void spool_get_stats(const struct spool *sp, struct spool_stats *out)
{
    *out = sp->st;
}

const char *spool_dir(const struct spool *sp)
{
    return sp->dir;
}
