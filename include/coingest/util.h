/*
 * util: small helpers every module uses: clocks, a seedable random source, ISO-8601 times,
 * CRC-32C and string lists. Nothing here keeps global state.
 */
#ifndef COINGEST_UTIL_H
#define COINGEST_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <time.h>

/* A rate: `count` events per `period_ms` (a config value, the token bucket's refill). */
struct rate {
    uint32_t count;
    uint64_t period_ms;
};

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Milliseconds since the Unix epoch (CLOCK_REALTIME). Thread: any. */
uint64_t util_wall_ms(void);
/* Milliseconds from an arbitrary origin (CLOCK_MONOTONIC). Thread: any. */
uint64_t util_mono_ms(void);

/* The CLOCK_MONOTONIC time `ms` from now, as pthread_cond_timedwait takes it (for a condition
 * variable whose clock was set to CLOCK_MONOTONIC). */
struct timespec util_mono_deadline(uint64_t ms);

/* A small, fast, seedable random source (splitmix64). Not for secrets.
 * Tests seed it to make jitter deterministic. */
struct rng {
    uint64_t state;
};
void rng_seed(struct rng *r, uint64_t seed);
uint64_t rng_next(struct rng *r);
/* Uniform in [0, bound); 0 when bound is 0. */
uint64_t rng_below(struct rng *r, uint64_t bound);

/* Formats ms since the epoch as 2026-11-23T13:20:01.123Z into buf (at least 25 bytes). */
void util_format_iso8601(uint64_t wall_ms, char *buf, size_t cap);

/* Parses ISO-8601 UTC times as the APIs send them: 2025-02-09T17:44:07.123Z, with or without
 * fraction (any digits, truncated to ms), with Z or +00:00. Returns 0 or -EINVAL. */
int util_parse_iso8601(const char *s, int64_t *wall_ms);

/* strdup that returns NULL for NULL. */
char *util_strdup0(const char *s);

/* CRC-32C (Castagnoli) of a buffer, continuing from `crc` (start with 0). */
uint32_t util_crc32c(uint32_t crc, const void *buf, size_t len);

/* A list of malloc'd NUL-terminated strings. Zero-initialised is an empty list. */
struct strlist {
    char **items;
    size_t n;
};

/* Appends a copy of s[0..len). 0 or -ENOMEM (the list is unchanged then). */
int strlist_push(struct strlist *l, const char *s, size_t len);
/* Appends copies of every item of src. 0 or -ENOMEM (items appended so far stay). */
int strlist_append(struct strlist *dst, const struct strlist *src);
/* Frees every item and empties the list. */
void strlist_clear(struct strlist *l);
/* Linear search for s[0..len). */
bool strlist_has(const struct strlist *l, const char *s, size_t len);
/* Same items in the same order. */
bool strlist_equal(const struct strlist *a, const struct strlist *b);
/* Sorts (strcmp order) and removes duplicates. */
void strlist_sort_uniq(struct strlist *l);
/* Adds copies of src's items (any order) to dst (sorted and unique, as strlist_sort_uniq
 * leaves it), keeping dst sorted and unique, in O(|dst| + |src| log |src|); *added counts the
 * items that were not in dst. 0, or -ENOMEM with dst unchanged. */
int strlist_merge_sorted(struct strlist *dst, const struct strlist *src, size_t *added);
/* Binary search in a list sorted by strlist_sort_uniq. */
bool strlist_contains_sorted(const struct strlist *l, const char *s);

/* Copies n bytes of src into buf (cap bytes, NUL-terminated), replacing control characters
 * with spaces and never cutting a UTF-8 sequence in half. For text that came from outside. */
void util_copy_clean(char *buf, size_t cap, const char *src, size_t n);

#endif
