/*
 * sbuf: a growable byte buffer for building text (SQL statements, JSON, messages).
 *
 * A zero-initialised `struct sbuf` is an empty buffer that owns no memory; the first append
 * allocates. The content is p[0..len), any bytes, and once anything was appended p[len] is a
 * NUL, so the text can be handed to functions that want a C string. Capacity doubles as it
 * grows and is kept by sbuf_reset, so a buffer reused for every row or statement stops
 * allocating after the first few.
 *
 * Errors: an append that cannot get memory returns -ENOMEM, leaves the content as it was and
 * marks the buffer failed; every later append fails the same way (and changes nothing) until
 * sbuf_reset. So a caller may either check each call, or make a series of appends and check
 * sbuf_failed once at the end.
 *
 * Writing in place: sbuf_reserve(b, n) guarantees room for n bytes plus the NUL at p + len;
 * write there, then add what was written to len (and store the NUL at p[len] when the text is
 * to be read as a C string).
 *
 * Thread: none of its own; a buffer is used by one thread at a time.
 */
#ifndef COINGEST_SBUF_H
#define COINGEST_SBUF_H

#include <stdbool.h>
#include <stddef.h>
#include <string.h>

struct sbuf {
    char *p;    /* the content, NUL-terminated once allocated; NULL before the first append */
    size_t len; /* bytes of content, the NUL not included */
    size_t cap; /* bytes allocated at p */
    bool oom;   /* an append failed since the last reset */
};

/* Makes room for `n` more bytes and the NUL after them. 0, or -ENOMEM (content unchanged,
 * buffer marked failed) also when the buffer had already failed. */
int sbuf_reserve(struct sbuf *b, size_t n);

/* Appends s[0..n) (any bytes). 0 or -ENOMEM as sbuf_reserve. */
static inline int sbuf_append(struct sbuf *b, const void *s, size_t n)
{
    /* The common case, room to spare, stays inline: serializers append a byte at a time. */
    if (b->oom || b->cap - b->len <= n) {
        int rc = sbuf_reserve(b, n);
        if (rc)
            return rc;
    }
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

/* Appends one byte. 0 or -ENOMEM. */
static inline int sbuf_putc(struct sbuf *b, char c)
{
    return sbuf_append(b, &c, 1);
}

/* Appends a NUL-terminated string (without its NUL). 0 or -ENOMEM. */
static inline int sbuf_puts(struct sbuf *b, const char *s)
{
    return sbuf_append(b, s, strlen(s));
}

/* Appends printf-formatted text. 0, -ENOMEM (content unchanged), or -EINVAL when the format
 * itself fails (vsnprintf < 0; the buffer is not marked failed then). */
int sbuf_printf(struct sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Appends a finite double as the shortest of %.15g..%.17g that reads back as the same double
 * (strtod), whole numbers below 2^53 without a fraction or exponent ("3", not "3.0"). This is
 * the one spelling of a DOUBLE in everything coingest writes out (JSON columns, exports).
 * 0, -ENOMEM, or -EDOM for NaN and infinities (nothing appended: the caller decides how to
 * spell them). */
int sbuf_put_double(struct sbuf *b, double d);

/* True when an append failed since the buffer was last reset. */
static inline bool sbuf_failed(const struct sbuf *b)
{
    return b->oom;
}

/* Empties the buffer and clears the failed mark; the memory is kept for reuse. */
void sbuf_reset(struct sbuf *b);

/* Frees the memory and leaves an empty, zero-initialised buffer. NULL is a no-op. */
void sbuf_free(struct sbuf *b);

#endif
