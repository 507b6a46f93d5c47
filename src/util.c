/*
 * util: clocks, a seedable random source, ISO-8601 times, CRC-32C and string lists.
 *
 * The CRC is the bitwise-table form of CRC-32C; it guards spool records, where a few hundred
 * MB/s is far more than the disk gives, so no hardware path is needed.
 */
#include "coingest/util.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

uint64_t util_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct timespec util_mono_deadline(uint64_t ms)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += (time_t)(ms / 1000);
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    return ts;
}

uint64_t util_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void rng_seed(struct rng *r, uint64_t seed)
{
    r->state = seed;
}

uint64_t rng_next(struct rng *r)
{
    uint64_t z = (r->state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

uint64_t rng_below(struct rng *r, uint64_t bound)
{
    if (bound == 0)
        return 0;
    /* Rejection sampling keeps the result uniform for any bound. */
    uint64_t limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t x;
    do {
        x = rng_next(r);
    } while (x >= limit);
    return x % bound;
}

void util_format_iso8601(uint64_t wall_ms, char *buf, size_t cap)
{
    time_t secs = (time_t)(wall_ms / 1000u);
    struct tm tm;
    gmtime_r(&secs, &tm);
    snprintf(buf, cap, "%04d-%02d-%02dT%02d:%02d:%02d.%03uZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (unsigned)(wall_ms % 1000u));
}

static int digits(const char **p, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -EINVAL;
        v = v * 10 + (c - '0');
    }
    *p += n;
    *out = v;
    return 0;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar (Howard Hinnant's
 * days_from_civil), so no timegm() or TZ is involved. */
static int64_t days_from_civil(int64_t y, unsigned m, unsigned d)
{
    y -= m <= 2;
    const int64_t era = (y >= 0 ? y : y - 399) / 400;
    const unsigned yoe = (unsigned)(y - era * 400);
    const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (int64_t)doe - 719468;
}

int util_parse_iso8601(const char *s, int64_t *wall_ms)
{
    const char *p = s;
    int y, mo, d, h, mi, sec, ms = 0;
    if (!s || digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
        digits(&p, 2, &d) || (*p != 'T' && *p != ' '))
        return -EINVAL;
    p++;
    if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi) || *p++ != ':' ||
        digits(&p, 2, &sec))
        return -EINVAL;
    if (*p == '.') {
        p++;
        int n = 0;
        while (*p >= '0' && *p <= '9') {
            if (n < 3)
                ms = ms * 10 + (*p - '0');
            n++;
            p++;
        }
        if (n == 0)
            return -EINVAL;
        for (; n < 3; n++)
            ms *= 10;
    }
    if (*p == 'Z')
        p++;
    else if (strncmp(p, "+00:00", 6) == 0)
        p += 6;
    else
        return -EINVAL;
    if (*p != '\0' || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 || sec > 60)
        return -EINVAL;
    int64_t days = days_from_civil(y, (unsigned)mo, (unsigned)d);
    *wall_ms = ((days * 86400 + h * 3600 + mi * 60 + sec) * 1000) + ms;
    return 0;
}

char *util_strdup0(const char *s)
{
    return s ? strdup(s) : NULL;
}

static uint32_t crc_table[256];
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
static bool crc_hw; /* the CPU has SSE4.2: crc32c_hw below */
#endif
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++)
            c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
        crc_table[i] = c;
    }
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    crc_hw = __builtin_cpu_supports("sse4.2");
#endif
}

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
/* SSE4.2's CRC32 instruction computes exactly CRC-32C, 8 bytes at a time: the spool checksums
 * every record, and the table loop below was 5% of a market sweep's CPU. */
__attribute__((target("sse4.2"))) static uint32_t crc32c_hw(uint32_t crc, const unsigned char *p,
                                                            size_t len)
{
    uint64_t c = ~crc;
    for (; len >= 8; p += 8, len -= 8) {
        uint64_t v;
        memcpy(&v, p, 8);
        c = __builtin_ia32_crc32di(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    while (len--)
        c32 = __builtin_ia32_crc32qi(c32, *p++);
    return ~c32;
}
#endif

uint32_t util_crc32c(uint32_t crc, const void *buf, size_t len)
{
    pthread_once(&crc_once, crc_init);
    const unsigned char *p = buf;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    if (crc_hw)
        return crc32c_hw(crc, p, len);
#endif
    crc = ~crc;
    while (len--)
        crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
    return ~crc;
}

/* --- string lists ------------------------------------------------------------------------- */

int strlist_push(struct strlist *l, const char *s, size_t len)
{
    char *copy = strndup(s, len);
    if (!copy)
        return -ENOMEM;
    char **items = realloc(l->items, (l->n + 1) * sizeof(*items));
    if (!items) {
        free(copy);
        return -ENOMEM;
    }
    items[l->n++] = copy;
    l->items = items;
    return 0;
}

int strlist_append(struct strlist *dst, const struct strlist *src)
{
    if (src->n == 0)
        return 0;
    /* One allocation for the array, whatever the count: lists of 17,500 ids are copied on
     * every prices run. */
    char **items = realloc(dst->items, (dst->n + src->n) * sizeof(*items));
    if (!items)
        return -ENOMEM;
    dst->items = items;
    for (size_t i = 0; i < src->n; i++) {
        char *copy = strdup(src->items[i]);
        if (!copy)
            return -ENOMEM;
        dst->items[dst->n++] = copy;
    }
    return 0;
}

void strlist_clear(struct strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

bool strlist_has(const struct strlist *l, const char *s, size_t len)
{
    for (size_t i = 0; i < l->n; i++)
        if (strlen(l->items[i]) == len && memcmp(l->items[i], s, len) == 0)
            return true;
    return false;
}

bool strlist_equal(const struct strlist *a, const struct strlist *b)
{
    if (a->n != b->n)
        return false;
    for (size_t i = 0; i < a->n; i++)
        if (strcmp(a->items[i], b->items[i]) != 0)
            return false;
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Stable merge of the sorted ranges a[lo, mid) and a[mid, hi) into out[lo, hi). */
static void merge_runs(char *const *a, char **out, size_t lo, size_t mid, size_t hi)
{
    size_t i = lo, j = mid, k = lo;
    while (i < mid && j < hi)
        out[k++] = strcmp(a[j], a[i]) < 0 ? a[j++] : a[i++];
    while (i < mid)
        out[k++] = a[i++];
    while (j < hi)
        out[k++] = a[j++];
}

/* Sorts n strings by strcmp as a natural merge sort: the ascending runs the input already has
 * are merged pairwise, bottom up. Lists from the APIs come largely in order (CoinGecko's
 * /coins/list in runs of about ten ids in byte order, a walk's page by id_asc in one run), so
 * this compares less than qsort's merge sort, which splits blindly: an input in order costs one
 * pass. False (nothing changed) when the scratch memory cannot be had. */
static bool sort_runs(char **a, size_t n)
{
    size_t *start = malloc((n + 1) * sizeof(*start));
    char **tmp = malloc(n * sizeof(*tmp));
    if (!start || !tmp) {
        free(start);
        free(tmp);
        return false;
    }
    size_t nr = 0;
    start[nr++] = 0;
    for (size_t i = 1; i < n; i++)
        if (strcmp(a[i - 1], a[i]) > 0)
            start[nr++] = i;
    start[nr] = n;
    char **src = a, **dst = tmp;
    while (nr > 1) {
        size_t w = 0;
        for (size_t r = 0; r < nr; r += 2) {
            size_t lo = start[r], mid = start[r + 1], hi = r + 2 <= nr ? start[r + 2] : n;
            if (r + 1 == nr)
                memcpy(dst + lo, src + lo, (n - lo) * sizeof(*src)); /* the odd run out */
            else
                merge_runs(src, dst, lo, mid, hi);
            start[w++] = lo;
        }
        start[w] = n;
        nr = w;
        char **t = src;
        src = dst;
        dst = t;
    }
    if (src != a)
        memcpy(a, src, n * sizeof(*a));
    free(start);
    free(tmp);
    return true;
}

void strlist_sort_uniq(struct strlist *l)
{
    if (l->n < 2)
        return;
    if (!sort_runs(l->items, l->n))
        qsort(l->items, l->n, sizeof(char *), cmp_str);
    size_t w = 1;
    for (size_t r = 1; r < l->n; r++) {
        if (strcmp(l->items[r], l->items[w - 1]) == 0)
            free(l->items[r]);
        else
            l->items[w++] = l->items[r];
    }
    l->n = w;
}

int strlist_merge_sorted(struct strlist *dst, const struct strlist *src, size_t *added)
{
    *added = 0;
    struct strlist add = {0};
    if (strlist_append(&add, src) != 0) {
        strlist_clear(&add);
        return -ENOMEM;
    }
    strlist_sort_uniq(&add);
    if (add.n == 0)
        return 0;
    char **items = malloc((dst->n + add.n) * sizeof(*items));
    if (!items) {
        strlist_clear(&add);
        return -ENOMEM;
    }
    size_t a = 0, b = 0, w = 0;
    while (a < dst->n || b < add.n) {
        int c = a == dst->n ? 1 : b == add.n ? -1 : strcmp(dst->items[a], add.items[b]);
        if (c < 0) {
            items[w++] = dst->items[a++];
        } else if (c > 0) {
            items[w++] = add.items[b++];
            (*added)++;
        } else {
            items[w++] = dst->items[a++];
            free(add.items[b++]);
        }
    }
    free(dst->items);
    free(add.items);
    dst->items = items;
    dst->n = w;
    return 0;
}

bool strlist_contains_sorted(const struct strlist *l, const char *s)
{
    return l->n && bsearch(&s, l->items, l->n, sizeof(char *), cmp_str) != NULL;
}

void util_copy_clean(char *buf, size_t cap, const char *src, size_t n)
{
    if (cap == 0)
        return;
    if (n > cap - 1) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--; /* src[n] continues a sequence: cut before its lead byte */
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)src[i];
        buf[i] = (c < 0x20 || c == 0x7f) ? ' ' : (char)c;
    }
    buf[n] = '\0';
}
