/*
 * Unit tests for full-jitter backoff: the ceiling (with its overflow edges), the range and
 * spread of the jittered delay, and that a seeded source makes it reproducible.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "coingest/backoff.h"

static void test_ceiling(void **state)
{
    (void)state;
    /* The daemon's defaults: base 1 s, cap 5 min. */
    assert_true(backoff_ceiling(1000, 300000, 0) == 1000);
    assert_true(backoff_ceiling(1000, 300000, 1) == 2000);
    assert_true(backoff_ceiling(1000, 300000, 8) == 256000);
    assert_true(backoff_ceiling(1000, 300000, 9) == 300000);
    assert_true(backoff_ceiling(1000, 300000, 63) == 300000);
    assert_true(backoff_ceiling(1000, 300000, 64) == 300000);
    assert_true(backoff_ceiling(1000, 300000, 100000) == 300000);
    /* Exactly at the cap. */
    assert_true(backoff_ceiling(1000, 256000, 8) == 256000);
    assert_true(backoff_ceiling(1000, 255999, 8) == 255999);
    /* A base above the cap is capped at once. */
    assert_true(backoff_ceiling(5000, 3000, 0) == 3000);
    assert_true(backoff_ceiling(0, 3000, 5) == 0);
    assert_true(backoff_ceiling(7, 0, 0) == 0);
    /* No overflow anywhere near 2^64. */
    assert_true(backoff_ceiling(1, UINT64_MAX, 63) == (1ull << 63));
    assert_true(backoff_ceiling(1, UINT64_MAX, 64) == UINT64_MAX);
    assert_true(backoff_ceiling(3, UINT64_MAX, 62) == (3ull << 62));
    assert_true(backoff_ceiling(3, UINT64_MAX, 63) == UINT64_MAX);
    assert_true(backoff_ceiling(5, UINT64_MAX, 62) == UINT64_MAX);
    assert_true(backoff_ceiling(UINT64_MAX, UINT64_MAX, 0) == UINT64_MAX);
}

static void test_full_jitter_range_and_spread(void **state)
{
    (void)state;
    struct rng r;
    rng_seed(&r, 2024);
    for (unsigned attempt = 0; attempt < 12; attempt++) {
        uint64_t ceil = backoff_ceiling(1000, 300000, attempt);
        uint64_t min = UINT64_MAX, max = 0;
        double sum = 0;
        const int n = 20000;
        for (int i = 0; i < n; i++) {
            uint64_t d = backoff_full_jitter(&r, 1000, 300000, attempt);
            assert_true(d <= ceil);
            if (d < min)
                min = d;
            if (d > max)
                max = d;
            sum += (double)d;
        }
        /* Full jitter: the whole window is used, its mean is the middle. */
        assert_true(min < ceil / 100 + 1);
        assert_true(max > ceil - ceil / 100 - 1);
        double mean = sum / n;
        assert_true(mean > ceil * 0.48 && mean < ceil * 0.52);
    }
    /* Degenerate windows. */
    assert_true(backoff_full_jitter(&r, 0, 300000, 3) == 0);
    assert_true(backoff_full_jitter(&r, 5, 0, 3) == 0);
    /* The full 64-bit window does not wrap to an empty one. */
    int nonzero = 0;
    for (int i = 0; i < 8; i++)
        nonzero += backoff_full_jitter(&r, 1, UINT64_MAX, 64) != 0;
    assert_true(nonzero > 0);
}

static void test_deterministic(void **state)
{
    (void)state;
    struct rng a, b;
    rng_seed(&a, 7);
    rng_seed(&b, 7);
    for (unsigned i = 0; i < 1000; i++)
        assert_true(backoff_full_jitter(&a, 250, 60000, i % 20) ==
                    backoff_full_jitter(&b, 250, 60000, i % 20));
    rng_seed(&b, 8);
    int same = 0;
    for (unsigned i = 0; i < 100; i++)
        same += backoff_full_jitter(&a, 250, 60000, 10) == backoff_full_jitter(&b, 250, 60000, 10);
    assert_true(same < 5);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ceiling),
        cmocka_unit_test(test_full_jitter_range_and_spread),
        cmocka_unit_test(test_deterministic),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
