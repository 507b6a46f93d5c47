/*
 * ctest-labels: tsan
 * test_spool: the durable spool on a real directory: append, sync, reopen and replay in seq
 * order, segment rotation and deletion, the directory lock, a process killed with SIGKILL
 * right after a sync, and damage: a torn tail, a corrupt record in the middle, garbage
 * between records and a record damaged after it was indexed. Damage must be skipped with a
 * warning and a counter, never crash the replay, and never hide the good records around it;
 * a segment full of garbage gets one warning line, not one per region. Held records (the
 * sink's journal): a committed one is marked and never replayed, an uncommitted one replays
 * after a restart, and a drained spool leaves no file behind.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "coingest/batch.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/spool.h"

static char dir[128];

static int setup(void **state)
{
    (void)state;
    snprintf(dir, sizeof(dir), "/tmp/test_spool.XXXXXX");
    if (!mkdtemp(dir))
        return -1;
    metrics_reset();
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *de;
        while ((de = readdir(d)) != NULL) {
            if (de->d_name[0] == '.')
                continue;
            char p[512];
            snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
            unlink(p);
        }
        closedir(d);
    }
    rmdir(dir);
    return 0;
}

/* A categories batch of n rows whose ids are "<tag>-<i>". */
static struct batch *make_batch(const char *tag, int n)
{
    struct batch *b = batch_new(BATCH_CATEGORIES, 4);
    assert_non_null(b);
    for (int i = 0; i < n; i++) {
        int r = batch_add_row(b);
        assert_true(r >= 0);
        char id[64];
        int len = snprintf(id, sizeof(id), "%s-%d", tag, i);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 0, id, (size_t)len), 0);
        assert_int_equal(batch_set_str(b, (uint32_t)r, 1, "名前 ✓", strlen("名前 ✓")), 0);
        batch_set_time(b, (uint32_t)r, 2, 1739122947123 + i);
    }
    return b;
}

static void expect_batch(const struct batch *b, const char *tag, int n)
{
    assert_int_equal(b->spec->id, BATCH_CATEGORIES);
    assert_int_equal(b->nrows, n);
    for (int i = 0; i < n; i++) {
        char id[64];
        int len = snprintf(id, sizeof(id), "%s-%d", tag, i);
        const struct val *v = batch_val(b, (uint32_t)i, 0);
        assert_int_equal(v->type, VAL_STR);
        assert_int_equal(v->len, len);
        assert_memory_equal(v->u.s, id, (size_t)len);
        assert_int_equal(batch_val(b, (uint32_t)i, 2)->u.i, 1739122947123 + i);
    }
}

static void append(struct spool *sp, uint64_t seq, const char *tag, int n)
{
    struct batch *b = make_batch(tag, n);
    assert_int_equal(spool_append(sp, seq, b, NULL), 0);
    batch_free(b);
}

static int count_segments(void)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        struct stat st;
        /* A drained active segment is emptied and kept while the spool is open: only segments
         * holding records count. */
        if (strncmp(de->d_name, "spool-", 6) == 0 && fstatat(dirfd(d), de->d_name, &st, 0) == 0 &&
            st.st_size > 0)
            n++;
    }
    closedir(d);
    return n;
}

/* Path of the one (or first) segment file. */
static void first_segment(char *out, size_t cap)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    char best[256] = "";
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "spool-", 6) == 0 && (!best[0] || strcmp(de->d_name, best) < 0))
            snprintf(best, sizeof(best), "%s", de->d_name);
    closedir(d);
    assert_true(best[0]);
    snprintf(out, cap, "%s/%s", dir, best);
}

static struct spool *reopen(struct spool *sp)
{
    spool_close(sp);
    struct spool *n = NULL;
    assert_int_equal(spool_open(dir, 0, &n), 0);
    return n;
}

/* Loads the head record and checks it is `tag` with n rows, then commits it. */
static void load_expect(struct spool *sp, uint64_t seq, const char *tag, int n)
{
    struct spool_rec *rec = spool_peek(sp);
    assert_non_null(rec);
    assert_int_equal(spool_rec_seq(rec), seq);
    assert_int_equal(spool_rec_rows(rec), n);
    struct batch *b = NULL;
    assert_int_equal(spool_load(sp, rec, &b), 0);
    expect_batch(b, tag, n);
    batch_free(b);
    spool_commit(sp, rec);
}

static void test_append_replay(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    assert_null(spool_peek(sp));
    append(sp, 1, "a", 3);
    append(sp, 2, "b", 1);
    append(sp, 3, "c", 250);
    assert_int_equal(spool_sync(sp), 0);
    struct spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 3);
    assert_int_equal(st.rows, 254);
    assert_int_equal(st.max_seq, 3);
    assert_true(st.bytes > 0);

    sp = reopen(sp);
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 3);
    assert_int_equal(st.unread, 3);
    assert_int_equal(st.rows, 254);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(st.max_seq, 3);
    load_expect(sp, 1, "a", 3);
    load_expect(sp, 2, "b", 1);
    /* Unloading puts a record back in line. */
    struct spool_rec *rec = spool_peek(sp);
    struct batch *b = NULL;
    assert_int_equal(spool_load(sp, rec, &b), 0);
    batch_free(b);
    assert_null(spool_peek(sp));
    spool_unload(sp, rec);
    assert_ptr_equal(spool_peek(sp), rec);
    load_expect(sp, 3, "c", 250);
    assert_null(spool_peek(sp));
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 0);
    assert_int_equal(st.rows, 0);
    /* Everything committed: no segment is left behind. */
    assert_int_equal(count_segments(), 0);
    spool_close(sp);
}

static void test_order_by_seq(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    /* A tiny segment size: every record gets its own file. */
    assert_int_equal(spool_open(dir, 64, &sp), 0);
    append(sp, 10, "ten", 2);
    append(sp, 11, "eleven", 2);
    append(sp, 4, "four", 2); /* an older batch spooled late */
    append(sp, 12, "twelve", 2);
    assert_int_equal(spool_sync(sp), 0);
    assert_int_equal(count_segments(), 4);
    sp = reopen(sp);
    load_expect(sp, 4, "four", 2);
    load_expect(sp, 10, "ten", 2);
    /* New appends after reopening go to a new segment and still sort by seq. */
    append(sp, 5, "five", 1);
    assert_int_equal(spool_sync(sp), 0);
    load_expect(sp, 5, "five", 1);
    load_expect(sp, 11, "eleven", 2);
    load_expect(sp, 12, "twelve", 2);
    assert_null(spool_peek(sp));
    assert_int_equal(count_segments(), 0);
    spool_close(sp);
}

static void test_rotation(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 2048, &sp), 0);
    for (int i = 0; i < 40; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "r%d", i);
        append(sp, (uint64_t)i + 1, tag, 5);
    }
    assert_int_equal(spool_sync(sp), 0);
    int segs = count_segments();
    assert_true(segs > 3);
    struct spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.segments, segs);
    /* Committing the first records deletes the first segment only once all of it is done. */
    sp = reopen(sp);
    for (int i = 0; i < 40; i++) {
        char tag[16];
        snprintf(tag, sizeof(tag), "r%d", i);
        load_expect(sp, (uint64_t)i + 1, tag, 5);
        assert_true(count_segments() <= segs);
    }
    assert_int_equal(count_segments(), 0);
    spool_close(sp);
}

static void test_lock(void **state)
{
    (void)state;
    struct spool *a = NULL, *b = NULL;
    assert_int_equal(spool_open(dir, 0, &a), 0);
    assert_int_equal(spool_open(dir, 0, &b), -EBUSY);
    assert_null(b);
    /* The holder recorded its pid for the busy message. */
    assert_int_equal(spool_holder(dir), (long)getpid());
    spool_close(a);
    assert_int_equal(spool_open(dir, 0, &b), 0);
    spool_close(b);
}

static void test_killed_after_sync(void **state)
{
    (void)state;
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        struct spool *sp = NULL;
        if (spool_open(dir, 0, &sp))
            _exit(2);
        struct batch *b = make_batch("k", 7);
        if (spool_append(sp, 1, b, NULL) || spool_sync(sp))
            _exit(3);
        raise(SIGKILL); /* no close, no exit handlers */
        _exit(4);
    }
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_true(WIFSIGNALED(status));
    assert_int_equal(WTERMSIG(status), SIGKILL);
    struct spool *sp = NULL;
    /* The lock died with the process. */
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    load_expect(sp, 1, "k", 7);
    spool_close(sp);
}

static void test_torn_tail(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 1, "a", 2);
    append(sp, 2, "b", 2);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    char path[512];
    first_segment(path, sizeof(path));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* A crash in the middle of the second record's write. */
    assert_int_equal(truncate(path, st.st_size - 5), 0);
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    assert_int_equal(ss.records, 1);
    assert_int_equal(ss.corrupt, 1);
    assert_int_equal((int)metrics_get("coingest_spool_corrupt_records_total", ""), 1);
    load_expect(sp, 1, "a", 2);
    assert_null(spool_peek(sp));
    spool_close(sp);

    /* A torn header: a few bytes of a record that never got its length. */
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 3, "c", 1);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    first_segment(path, sizeof(path));
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "CGS", 3), 3);
    close(fd);
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    spool_get_stats(sp, &ss);
    assert_int_equal(ss.corrupt, 1);
    load_expect(sp, 3, "c", 1);
    spool_close(sp);
}

static void test_corrupt_middle(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 1, "a", 2);
    append(sp, 2, "b", 2);
    append(sp, 3, "c", 2);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    char path[512];
    first_segment(path, sizeof(path));
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    /* Flip one byte in the middle of the file: inside record 2's payload. */
    int fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    off_t mid = st.st_size / 2;
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, mid), 1);
    c ^= 0x5a;
    assert_int_equal(pwrite(fd, &c, 1, mid), 1);
    close(fd);
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    assert_int_equal(ss.records, 2);
    assert_int_equal(ss.corrupt, 1);
    load_expect(sp, 1, "a", 2);
    load_expect(sp, 3, "c", 2);
    assert_null(spool_peek(sp));
    spool_close(sp);
}

static void test_garbage_between(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 1, "a", 2);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    char path[512];
    first_segment(path, sizeof(path));
    /* Garbage, including a fake magic with a bogus length, then a good record. */
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    static const unsigned char junk[] = "xxxxCGSP\xff\xff\xff\x7fjunkjunkCGSP\x10\x00\x00\x00zzzz";
    assert_int_equal(write(fd, junk, sizeof(junk) - 1), (ssize_t)sizeof(junk) - 1);
    close(fd);
    /* Append a good record to the same file by hand: write it in a scratch spool, copy. */
    char dir2[256];
    snprintf(dir2, sizeof(dir2), "%s/sub", dir);
    assert_int_equal(spool_open(dir2, 0, &sp), 0);
    append(sp, 2, "b", 3);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    char p2[512];
    DIR *d = opendir(dir2);
    struct dirent *de;
    p2[0] = '\0';
    while ((de = readdir(d)) != NULL)
        if (strncmp(de->d_name, "spool-", 6) == 0)
            snprintf(p2, sizeof(p2), "%s/%s", dir2, de->d_name);
    closedir(d);
    char buf[8192];
    int in = open(p2, O_RDONLY);
    ssize_t n = read(in, buf, sizeof(buf));
    close(in);
    assert_true(n > 0);
    fd = open(path, O_WRONLY | O_APPEND);
    assert_int_equal(write(fd, buf, (size_t)n), n);
    close(fd);
    unlink(p2);
    snprintf(p2, sizeof(p2), "%s/spool.lock", dir2);
    unlink(p2);
    rmdir(dir2);

    assert_int_equal(spool_open(dir, 0, &sp), 0);
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    assert_int_equal(ss.records, 2);
    assert_true(ss.corrupt >= 1);
    load_expect(sp, 1, "a", 2);
    load_expect(sp, 2, "b", 3);
    spool_close(sp);
}

static void test_damaged_after_open(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 1, "a", 2);
    append(sp, 2, "b", 2);
    assert_int_equal(spool_sync(sp), 0);
    char path[512];
    first_segment(path, sizeof(path));
    int fd = open(path, O_RDWR);
    unsigned char c;
    assert_int_equal(pread(fd, &c, 1, 20), 1);
    c ^= 0xff;
    assert_int_equal(pwrite(fd, &c, 1, 20), 1);
    close(fd);
    struct spool_rec *rec = spool_peek(sp);
    struct batch *b = NULL;
    assert_int_equal(spool_load(sp, rec, &b), -EBADMSG);
    assert_null(b);
    struct spool_stats ss;
    spool_get_stats(sp, &ss);
    assert_int_equal(ss.corrupt, 1);
    assert_int_equal(ss.records, 1);
    load_expect(sp, 2, "b", 2);
    spool_close(sp);
}

static void test_empty_batch_and_big_strings(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    struct batch *b = batch_new(BATCH_MARKET_SNAPSHOTS, 1);
    int r = batch_add_row(b);
    size_t big = 3 * 1024 * 1024;
    char *s = malloc(big);
    memset(s, 'x', big);
    assert_int_equal(batch_set_str(b, (uint32_t)r, 0, s, big), 0);
    batch_set_dbl(b, (uint32_t)r, 5, 1e-11);
    assert_int_equal(spool_append(sp, 7, b, NULL), 0);
    assert_int_equal(spool_sync(sp), 0);
    batch_free(b);
    sp = reopen(sp);
    struct spool_rec *rec = spool_peek(sp);
    assert_non_null(rec);
    assert_int_equal(spool_load(sp, rec, &b), 0);
    assert_int_equal(batch_val(b, 0, 0)->len, big);
    assert_memory_equal(batch_val(b, 0, 0)->u.s, s, big);
    assert_true(batch_val(b, 0, 5)->u.d == 1e-11);
    batch_free(b);
    spool_commit(sp, rec);
    free(s);
    spool_close(sp);
}

/* Every spool-* file, empty or not. */
static int count_files(void)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL)
        n += strncmp(de->d_name, "spool-", 6) == 0;
    closedir(d);
    return n;
}

static struct spool_rec *append_held(struct spool *sp, uint64_t seq, const char *tag, int n)
{
    struct batch *b = make_batch(tag, n);
    struct spool_rec *rec = NULL;
    assert_int_equal(spool_append(sp, seq, b, &rec), 0);
    assert_non_null(rec);
    batch_free(b);
    return rec;
}

/* Held records: not replayed in this run; a committed one is marked on disk and skipped at
 * the next open (no warning, no replay), one left held (a kill -9 before its commit) replays.
 * max_seq still counts the committed ones, so seqs keep growing. */
static void test_held_records(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    struct spool_rec *a = append_held(sp, 1, "a", 2);
    struct spool_rec *b = append_held(sp, 2, "b", 3);
    struct spool_rec *c = append_held(sp, 3, "c", 4);
    assert_int_equal(spool_sync(sp), 0);
    assert_null(spool_peek(sp)); /* held: not for the replay */
    struct spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 3);
    assert_int_equal(st.rows, 9);
    assert_int_equal(st.unread, 0);
    spool_commit(sp, a);
    spool_commit(sp, c);
    (void)b;
    spool_close(sp); /* as after a kill -9: b was never committed nor given back */

    assert_int_equal(spool_open(dir, 0, &sp), 0);
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 1);
    assert_int_equal(st.corrupt, 0);
    assert_int_equal(st.max_seq, 3);
    load_expect(sp, 2, "b", 3);
    assert_null(spool_peek(sp));
    /* Given back (a spill): it replays. */
    struct spool_rec *d = append_held(sp, 4, "d", 1);
    spool_unload(sp, d);
    load_expect(sp, 4, "d", 1);
    spool_get_stats(sp, &st);
    assert_int_equal(st.records, 0);
    assert_int_equal(st.bytes, 0); /* the drained active segment is emptied... */
    spool_close(sp);
    assert_int_equal(count_files(), 0); /* ...and deleted at close */
}

/* 400 KB of the record magic repeated: every 4 bytes start a "record" with a bad length, so
 * the scan skips 102,400 regions. One warning line sums them up; the counter has them all;
 * the good record before them still replays. */
static void test_garbage_segment_one_line(void **state)
{
    (void)state;
    struct spool *sp = NULL;
    assert_int_equal(spool_open(dir, 0, &sp), 0);
    append(sp, 1, "a", 2);
    assert_int_equal(spool_sync(sp), 0);
    spool_close(sp);
    char path[512];
    first_segment(path, sizeof(path));
    size_t n = 400 * 1024;
    char *junk = malloc(n);
    assert_non_null(junk);
    for (size_t i = 0; i < n; i += 4)
        memcpy(junk + i, "CGSP", 4);
    int fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, junk, n), (ssize_t)n);
    close(fd);
    free(junk);

    char logpath[256];
    snprintf(logpath, sizeof(logpath), "%s/log", dir);
    int lfd = open(logpath, O_RDWR | O_CREAT | O_TRUNC, 0600);
    assert_true(lfd >= 0);
    log_set_fd(lfd);
    int rc = spool_open(dir, 0, &sp);
    log_set_fd(2);
    assert_int_equal(rc, 0);
    struct spool_stats st;
    spool_get_stats(sp, &st);
    assert_int_equal(st.corrupt, n / 4);
    assert_int_equal((uint64_t)metrics_get("coingest_spool_corrupt_records_total", ""), n / 4);
    load_expect(sp, 1, "a", 2);
    spool_close(sp);

    char text[4096];
    ssize_t got = pread(lfd, text, sizeof(text) - 1, 0);
    close(lfd);
    unlink(logpath);
    assert_true(got > 0);
    text[got] = '\0';
    int lines = 0;
    for (char *p = text; (p = strchr(p, '\n')) != NULL; p++)
        lines++;
    assert_int_equal(lines, 1);
    assert_non_null(strstr(text, "records=102400"));
    assert_non_null(strstr(text, "first_offset="));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_append_replay, setup, teardown),
        cmocka_unit_test_setup_teardown(test_order_by_seq, setup, teardown),
        cmocka_unit_test_setup_teardown(test_rotation, setup, teardown),
        cmocka_unit_test_setup_teardown(test_lock, setup, teardown),
        cmocka_unit_test_setup_teardown(test_killed_after_sync, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_middle, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_between, setup, teardown),
        cmocka_unit_test_setup_teardown(test_damaged_after_open, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_batch_and_big_strings, setup, teardown),
        cmocka_unit_test_setup_teardown(test_held_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_segment_one_line, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
