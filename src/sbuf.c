/*
 * sbuf: the out-of-line half of the growable text buffer (include/coingest/sbuf.h); appends
 * that fit are inline in the header, growing and formatting are here.
 *
 * Growth starts at 256 bytes and doubles, so building n bytes costs O(n) copies in all. A
 * failed allocation leaves the old block in place (realloc's contract), so the content
 * survives; the failed mark makes the error sticky until the owner resets the buffer.
 */
#include "coingest/sbuf.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#define SBUF_FIRST_CAP 256

int sbuf_reserve(struct sbuf *b, size_t n)
{
    if (b->oom)
        return -ENOMEM;
    if (b->cap - b->len > n)
        return 0;
    if (n >= SIZE_MAX / 2 - b->len) {
        b->oom = true;
        return -ENOMEM;
    }
    size_t need = b->len + n + 1, cap = b->cap ? b->cap : SBUF_FIRST_CAP;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    if (!p) {
        b->oom = true;
        return -ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

int sbuf_printf(struct sbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    /* Try in the room there is; most texts fit, and then this is the only formatting pass. */
    size_t room = b->oom ? 0 : b->cap - b->len;
    int n = vsnprintf(room ? b->p + b->len : NULL, room, fmt, ap);
    va_end(ap);
    if (n < 0) {
        if (room)
            b->p[b->len] = '\0';
        return -EINVAL;
    }
    if ((size_t)n >= room) {
        int rc = sbuf_reserve(b, (size_t)n);
        if (rc) {
            if (room)
                b->p[b->len] = '\0';
            return rc;
        }
        va_start(ap, fmt);
        vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
        va_end(ap);
    }
    b->len += (size_t)n;
    return 0;
}

void sbuf_reset(struct sbuf *b)
{
    b->len = 0;
    b->oom = false;
    if (b->p)
        b->p[0] = '\0';
}

void sbuf_free(struct sbuf *b)
{
    if (!b)
        return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->oom = false;
}

int sbuf_put_double(struct sbuf *b, double d)
{
    char tmp[40];
    if (!isfinite(d))
        return -EDOM;
    if (d == floor(d) && fabs(d) < 9007199254740992.0) {
        snprintf(tmp, sizeof(tmp), "%.0f", d);
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
            if (strtod(tmp, NULL) == d)
                break;
        }
    }
    return sbuf_append(b, tmp, strlen(tmp));
}
