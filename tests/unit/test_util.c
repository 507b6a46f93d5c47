/*
 * test_util: small pieces of util.h. CRC-32C against the published check value and against a
 * bit-by-bit reference on random buffers of every length and alignment, also continued across
 * splits (the spool checksums records in pieces); the sorted string list's merge
 * (strlist_merge_sorted, which page walks use for the ids they have seen) against appending
 * and strlist_sort_uniq; strlist_sort_uniq itself (a natural merge sort) against qsort on
 * inputs in order, reversed, in short runs like CoinGecko's coin list, random, and with
 * duplicates.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "coingest/util.h"

/* CRC-32C one bit at a time: the definition. */
static uint32_t crc_ref(uint32_t crc, const unsigned char *p, size_t len)
{
    crc = ~crc;
    while (len--) {
        crc ^= *p++;
        for (int k = 0; k < 8; k++)
            crc = (crc & 1) ? (crc >> 1) ^ 0x82f63b78u : crc >> 1;
    }
    return ~crc;
}

static void test_crc32c(void **state)
{
    (void)state;
    assert_int_equal(util_crc32c(0, "123456789", 9), 0xe3069283u); /* the check value */
    assert_int_equal(util_crc32c(0, "", 0), 0);
    unsigned char buf[300];
    srand(11);
    for (size_t i = 0; i < sizeof(buf); i++)
        buf[i] = (unsigned char)rand();
    for (size_t off = 0; off < 9; off++) {
        for (size_t len = 0; off + len <= sizeof(buf); len += 1 + len / 8) {
            uint32_t want = crc_ref(0, buf + off, len);
            assert_int_equal(util_crc32c(0, buf + off, len), want);
            size_t cut = len / 3;
            assert_int_equal(
                util_crc32c(util_crc32c(0, buf + off, cut), buf + off + cut, len - cut), want);
        }
    }
}

/* Random lists merged into a sorted one give what append + sort_uniq gives, and `added`
 * counts exactly the new items (duplicates inside a page and across pages included). */
static void test_strlist_merge_sorted(void **state)
{
    (void)state;
    srand(7);
    struct strlist merged = {0}, model = {0};
    for (int round = 0; round < 200; round++) {
        struct strlist page = {0};
        int n = rand() % 12;
        for (int i = 0; i < n; i++) {
            char s[16];
            int len = snprintf(s, sizeof(s), "c%d", rand() % 300);
            assert_int_equal(strlist_push(&page, s, (size_t)len), 0);
        }
        size_t before = model.n, added = 99;
        assert_int_equal(strlist_append(&model, &page), 0);
        strlist_sort_uniq(&model);
        assert_int_equal(strlist_merge_sorted(&merged, &page, &added), 0);
        assert_int_equal(added, model.n - before);
        assert_int_equal(merged.n, model.n);
        for (size_t i = 0; i < model.n; i++)
            assert_string_equal(merged.items[i], model.items[i]);
        strlist_clear(&page);
    }
    strlist_clear(&merged);
    strlist_clear(&model);
}

static int cmp_ref(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void test_strlist_sort_uniq(void **state)
{
    (void)state;
    unsigned seed = 7;
    const size_t sizes[] = {0, 1, 2, 3, 17, 1000, 4097};
    for (size_t si = 0; si < sizeof(sizes) / sizeof(sizes[0]); si++) {
        for (int shape = 0; shape < 5; shape++) {
            size_t n = sizes[si];
            struct strlist l = {0};
            char **ref = calloc(n ? n : 1, sizeof(*ref));
            assert_non_null(ref);
            for (size_t i = 0; i < n; i++) {
                unsigned v;
                seed = seed * 1103515245u + 12345u;
                switch (shape) {
                case 0:
                    v = (unsigned)i;
                    break; /* in order */
                case 1:
                    v = (unsigned)(n - i);
                    break; /* reversed */
                case 2:
                    v = (unsigned)(i % 10 == 0 ? i + 7 : i);
                    break; /* short runs */
                case 3:
                    v = seed >> 8;
                    break; /* random */
                default:
                    v = (seed >> 8) % (unsigned)(n / 4 + 1);
                    break; /* duplicates */
                }
                char buf[32];
                snprintf(buf, sizeof(buf), "coin-%08u", v);
                assert_int_equal(strlist_push(&l, buf, strlen(buf)), 0);
                ref[i] = l.items[i];
            }
            qsort(ref, n, sizeof(*ref), cmp_ref);
            size_t m = 0; /* ref made unique */
            for (size_t i = 0; i < n; i++)
                if (m == 0 || strcmp(ref[i], ref[m - 1]) != 0)
                    ref[m++] = ref[i];
            char **copy = calloc(m ? m : 1, sizeof(*copy));
            assert_non_null(copy);
            for (size_t i = 0; i < m; i++)
                assert_non_null(copy[i] = strdup(ref[i]));
            strlist_sort_uniq(&l);
            assert_int_equal(l.n, m);
            for (size_t i = 0; i < m; i++)
                assert_string_equal(l.items[i], copy[i]);
            for (size_t i = 0; i < m; i++)
                free(copy[i]);
            free(copy);
            free(ref);
            strlist_clear(&l);
        }
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c),
        cmocka_unit_test(test_strlist_merge_sorted),
        cmocka_unit_test(test_strlist_sort_uniq),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
