/*
 * allocfail: allocation failure injection for unit tests. Including this header in ONE source
 * file of a test program replaces malloc, calloc, realloc and free for the whole program (glibc
 * routes its own internal calls, strdup's and jansson's included, through these symbols) with
 * versions that fail the Nth call once armed and count live blocks, so a test can walk every
 * error path of a parser and check that nothing leaked.
 *
 *   allocfail_countdown = n;   arm: the call that finds the countdown at 0 fails (once)
 *   allocfail_countdown = -1;  disarm (the default)
 *   allocfail_live             blocks allocated and not yet freed
 *
 * Sanitizer runtimes own malloc themselves, so under ASan/TSan/MSan nothing is replaced and
 * ALLOCFAIL is 0: tests that need the injection skip then.
 *
 * Thread: single-threaded tests only (the counters are plain variables).
 */
#ifndef COINGEST_TEST_ALLOCFAIL_H
#define COINGEST_TEST_ALLOCFAIL_H

#include <stddef.h>

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define ALLOCFAIL 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer) ||                         \
    __has_feature(memory_sanitizer)
#define ALLOCFAIL 0
#endif
#endif
#ifndef ALLOCFAIL
#define ALLOCFAIL 1
#endif

#if ALLOCFAIL
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

static long allocfail_countdown = -1; /* < 0: off; the call that finds it at 0 fails */
static long allocfail_live;           /* blocks allocated and not yet freed */

static int allocfail_now(void)
{
    return allocfail_countdown >= 0 && allocfail_countdown-- == 0;
}

void *malloc(size_t n)
{
    void *p = allocfail_now() ? NULL : __libc_malloc(n);
    allocfail_live += p != NULL;
    return p;
}

void *calloc(size_t n, size_t size)
{
    void *p = allocfail_now() ? NULL : __libc_calloc(n, size);
    allocfail_live += p != NULL;
    return p;
}

void *realloc(void *p, size_t n)
{
    if (allocfail_now())
        return NULL;
    void *q = __libc_realloc(p, n);
    allocfail_live += !p && q;
    return q;
}

void free(void *p)
{
    allocfail_live -= p != NULL;
    __libc_free(p);
}
#endif

#endif
