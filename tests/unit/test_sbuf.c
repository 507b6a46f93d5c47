/*
 * test_sbuf: the growable text buffer (include/coingest/sbuf.h): appends of any bytes, the NUL
 * after the content, growth, printf in one and in two passes, reset and free, writing in place,
 * and what an allocation failure does (content unchanged, the failure sticky until reset).
 */
#include <errno.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/sbuf.h"

/* Allocation failure injection for the error paths (tests/support/allocfail.h): under
 * ASan/TSan the replacement is left out and the tests that need it skip. */
#include "allocfail.h"

static void test_zero_is_empty(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(b.len, 0);
    assert_false(sbuf_failed(&b));
    sbuf_reset(&b); /* nothing allocated: still fine */
    assert_null(b.p);
    sbuf_free(&b);
    sbuf_free(NULL);
    assert_int_equal(sbuf_append(&b, "", 0), 0);
    assert_non_null(b.p); /* an append, even of nothing, gives a C string */
    assert_string_equal(b.p, "");
    sbuf_free(&b);
    assert_null(b.p);
    assert_int_equal(b.cap, 0);
}

static void test_append_bytes_and_nul(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_puts(&b, "ab"), 0);
    assert_int_equal(sbuf_putc(&b, 'c'), 0);
    assert_int_equal(sbuf_append(&b, "d\0e", 3), 0); /* any bytes, NULs included */
    assert_int_equal(b.len, 6);
    assert_memory_equal(b.p, "abcd\0e", 7);
    assert_int_equal(b.p[b.len], '\0');
    sbuf_free(&b);
}

static void test_growth(void **state)
{
    (void)state;
    struct sbuf b = {0};
    char want[100000];
    for (size_t i = 0; i < sizeof(want); i++) {
        want[i] = (char)('a' + i % 26);
        assert_int_equal(sbuf_putc(&b, want[i]), 0);
        assert_true(b.cap > b.len);
    }
    assert_int_equal(b.len, sizeof(want));
    assert_memory_equal(b.p, want, sizeof(want));
    assert_int_equal(b.p[b.len], '\0');
    /* One append bigger than the doubling step. */
    size_t len = b.len;
    assert_int_equal(sbuf_append(&b, want, sizeof(want)), 0);
    assert_int_equal(b.len, 2 * len);
    assert_memory_equal(b.p + len, want, sizeof(want));
    sbuf_free(&b);
}

static void test_printf(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_printf(&b, "%s=%d", "x", 42), 0); /* first allocation */
    assert_string_equal(b.p, "x=42");
    assert_int_equal(b.len, 4);
    /* Longer than the room left: formatted twice, the first attempt leaves no trace. */
    char big[3000];
    memset(big, 'z', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(sbuf_printf(&b, ",%.999s,%u", big, 7u), 0);
    assert_int_equal(b.len, 4 + 1 + 999 + 2);
    assert_memory_equal(b.p, "x=42,zzz", 8);
    assert_string_equal(b.p + b.len - 2, ",7");
    /* Exactly filling the room: the NUL still fits. */
    sbuf_reset(&b);
    size_t room = b.cap - 1;
    assert_true(room < sizeof(big));
    assert_int_equal(sbuf_printf(&b, "%.*s", (int)room, big), 0);
    assert_int_equal(b.len, room);
    assert_int_equal(b.p[room], '\0');
    assert_int_equal(sbuf_printf(&b, "%s", ""), 0);
    assert_int_equal(b.len, room);
    sbuf_free(&b);
}

static void test_reset_keeps_memory(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_puts(&b, "hello"), 0);
    char *p = b.p;
    size_t cap = b.cap;
    sbuf_reset(&b);
    assert_int_equal(b.len, 0);
    assert_string_equal(b.p, "");
    assert_ptr_equal(b.p, p);
    assert_int_equal(b.cap, cap);
    assert_int_equal(sbuf_puts(&b, "again"), 0);
    assert_string_equal(b.p, "again");
    sbuf_free(&b);
}

static void test_reserve_in_place(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_puts(&b, "id="), 0);
    assert_int_equal(sbuf_reserve(&b, 600), 0);
    assert_true(b.cap - b.len >= 601);
    int n = snprintf(b.p + b.len, 601, "%0600d", 5);
    assert_int_equal(n, 600);
    b.len += (size_t)n;
    assert_int_equal(sbuf_putc(&b, ';'), 0);
    assert_int_equal(b.len, 3 + 600 + 1);
    assert_memory_equal(b.p, "id=000", 6);
    assert_string_equal(b.p + b.len - 2, "5;");
    sbuf_free(&b);
}

/* A size no allocator can give fails cleanly, without touching the content. */
static void test_impossible_size(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_puts(&b, "keep"), 0);
    assert_int_equal(sbuf_reserve(&b, SIZE_MAX), -ENOMEM);
    assert_true(sbuf_failed(&b));
    assert_string_equal(b.p, "keep");
    sbuf_reset(&b);
    assert_false(sbuf_failed(&b));
    sbuf_free(&b);
}

static void test_out_of_memory_is_sticky(void **state)
{
    (void)state;
#if ALLOCFAIL
    struct sbuf b = {0};
    /* The very first allocation fails: still empty, still owning nothing. */
    allocfail_countdown = 0;
    assert_int_equal(sbuf_puts(&b, "x"), -ENOMEM);
    allocfail_countdown = -1;
    assert_true(sbuf_failed(&b));
    assert_null(b.p);
    assert_int_equal(b.len, 0);
    sbuf_reset(&b);

    assert_int_equal(sbuf_puts(&b, "head"), 0);
    size_t cap = b.cap;
    char big[4096];
    memset(big, 'q', sizeof(big));
    /* Growing fails: content and size as before, and later appends fail too, even small
     * ones that would fit, and printf as well. */
    allocfail_countdown = 0;
    assert_int_equal(sbuf_append(&b, big, sizeof(big)), -ENOMEM);
    allocfail_countdown = -1;
    assert_true(sbuf_failed(&b));
    assert_int_equal(b.cap, cap);
    assert_int_equal(b.len, 4);
    assert_string_equal(b.p, "head");
    assert_int_equal(sbuf_putc(&b, '!'), -ENOMEM);
    assert_int_equal(sbuf_printf(&b, "%d", 1), -ENOMEM);
    assert_int_equal(sbuf_reserve(&b, 1), -ENOMEM);
    assert_string_equal(b.p, "head");

    /* printf that needs to grow and cannot: content unchanged (its first try is undone). */
    sbuf_reset(&b);
    assert_int_equal(sbuf_puts(&b, "ab"), 0);
    allocfail_countdown = 0;
    assert_int_equal(sbuf_printf(&b, "%.*s", (int)sizeof(big), big), -ENOMEM);
    allocfail_countdown = -1;
    assert_int_equal(b.len, 2);
    assert_string_equal(b.p, "ab");

    /* Reset clears the mark; the buffer works again. */
    sbuf_reset(&b);
    assert_false(sbuf_failed(&b));
    assert_int_equal(sbuf_append(&b, big, sizeof(big)), 0);
    assert_int_equal(b.len, sizeof(big));
    sbuf_free(&b);
#else
    skip();
#endif
}

/* sbuf_put_double: the shortest text that reads back as the same double; whole numbers below
 * 2^53 as integers; NaN and infinities refused without a byte appended. */
static void test_put_double(void **state)
{
    (void)state;
    struct sbuf b = {0};
    assert_int_equal(sbuf_put_double(&b, 0.1), 0);
    assert_string_equal(b.p, "0.1");
    sbuf_reset(&b);
    assert_int_equal(sbuf_put_double(&b, 0.1 + 0.2), 0);
    assert_string_equal(b.p, "0.30000000000000004");
    sbuf_reset(&b);
    assert_int_equal(sbuf_put_double(&b, 3.0), 0);
    assert_string_equal(b.p, "3");
    sbuf_reset(&b);
    assert_int_equal(sbuf_put_double(&b, 1e300), 0);
    assert_string_equal(b.p, "1e+300");
    sbuf_reset(&b);
    assert_int_equal(sbuf_put_double(&b, NAN), -EDOM);
    assert_int_equal(sbuf_put_double(&b, -INFINITY), -EDOM);
    assert_int_equal(b.len, 0);
    assert_false(sbuf_failed(&b));
    sbuf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_zero_is_empty),
        cmocka_unit_test(test_append_bytes_and_nul),
        cmocka_unit_test(test_growth),
        cmocka_unit_test(test_printf),
        cmocka_unit_test(test_reset_keeps_memory),
        cmocka_unit_test(test_reserve_in_place),
        cmocka_unit_test(test_impossible_size),
        cmocka_unit_test(test_out_of_memory_is_sticky),
        cmocka_unit_test(test_put_double),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
