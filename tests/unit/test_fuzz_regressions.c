/*
 * test_fuzz_regressions: replays, in the normal suite, what the fuzzers found and what they
 * start from, with the fuzz targets' own checks (tests/fuzz/fuzz_parsers.h).
 *
 * - Every file in tests/fuzz/regressions/ goes through the parser its name starts with
 *   (markets-*, coins_list-*, categories-*, simple_price-*, global-*), or through config_load
 *   for config-*; a file with another name goes through every parser.
 * - Every recorded CoinGecko fixture goes through every parser (most are the wrong shape for
 *   most parsers, which is the point: -EBADMSG and untouched outputs), and through each of them
 *   cut short at a few lengths.
 * A check that fails aborts, which cmocka reports as a failure of the test.
 */
#include <dirent.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "../fuzz/fuzz_parsers.h"
#include "coingest/config.h"

static char *read_all(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 65536;
            char *p = realloc(buf, cap);
            assert_non_null(p);
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    *len = n;
    return buf;
}

/* Sorted regular file names of a directory (NULL-terminated; caller frees). */
static char **list_dir(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return NULL;
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (e->d_name[0] == '.')
            continue;
        names = realloc(names, (n + 2) * sizeof(*names));
        assert_non_null(names);
        names[n++] = strdup(e->d_name);
        names[n] = NULL;
    }
    closedir(d);
    for (size_t i = 1; i < n; i++)
        for (size_t j = i; j > 0 && strcmp(names[j - 1], names[j]) > 0; j--) {
            char *t = names[j];
            names[j] = names[j - 1];
            names[j - 1] = t;
        }
    return names;
}

static void free_list(char **names)
{
    for (size_t i = 0; names && names[i]; i++)
        free(names[i]);
    free(names);
}

static const char *source_dir(void)
{
    const char *s = getenv("COINGEST_SOURCE_DIR");
    return s ? s : ".";
}

/* A config regression: config_load must fail cleanly or give a config equal to itself. */
static void replay_config(const char *path)
{
    struct config *cfg = NULL;
    char err[1024] = "";
    int rc = config_load(path, &cfg, err, sizeof(err));
    if (rc) {
        assert_true(rc < 0);
        assert_true(err[0] != '\0');
        assert_null(cfg);
        return;
    }
    assert_non_null(cfg);
    FILE *devnull = fopen("/dev/null", "w");
    assert_non_null(devnull);
    config_dump(cfg, devnull);
    fclose(devnull);
    struct config_diff d, zero;
    memset(&zero, 0, sizeof(zero));
    config_diff(cfg, cfg, &d);
    assert_memory_equal(&d, &zero, sizeof(d));
    config_free(cfg);
}

static void test_regressions(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tests/fuzz/regressions", source_dir());
    char **names = list_dir(dir);
    assert_non_null(names);
    size_t replayed = 0;
    for (size_t i = 0; names[i]; i++) {
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        if (strncmp(names[i], "config-", 7) == 0) {
            replay_config(path);
            replayed++;
            continue;
        }
        size_t len;
        char *body = read_all(path, &len);
        assert_non_null(body);
        int matched = 0;
        for (int e = 0; e < FUZZ_ENDPOINTS; e++) {
            size_t n = strlen(fuzz_endpoint_names[e]);
            if (strncmp(names[i], fuzz_endpoint_names[e], n) == 0 && names[i][n] == '-') {
                fuzz_run_parser((enum fuzz_endpoint)e, (const uint8_t *)body, len);
                matched = 1;
            }
        }
        if (!matched)
            for (int e = 0; e < FUZZ_ENDPOINTS; e++)
                fuzz_run_parser((enum fuzz_endpoint)e, (const uint8_t *)body, len);
        free(body);
        replayed++;
    }
    print_message("replayed %zu regression files\n", replayed);
    assert_true(replayed > 0);
    free_list(names);
}

static void test_fixtures_through_every_parser(void **state)
{
    (void)state;
    char dir[4096];
    snprintf(dir, sizeof(dir), "%s/tests/fixtures/coingecko", source_dir());
    char **names = list_dir(dir);
    assert_non_null(names);
    size_t files = 0, accepted = 0;
    for (size_t i = 0; names[i]; i++) {
        char path[8192];
        snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
        size_t len;
        char *body = read_all(path, &len);
        assert_non_null(body);
        for (int e = 0; e < FUZZ_ENDPOINTS; e++) {
            accepted += fuzz_run_parser((enum fuzz_endpoint)e, (const uint8_t *)body, len) == 0;
            /* Cut short: never accepted, never a crash. */
            size_t end = len;
            while (end > 0 && strchr(" \t\r\n", body[end - 1]))
                end--;
            size_t cuts[] = {0, 1, end / 3, end - 1};
            for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]) && end > 1; c++)
                assert_int_equal(
                    fuzz_run_parser((enum fuzz_endpoint)e, (const uint8_t *)body, cuts[c]),
                    -EBADMSG);
        }
        free(body);
        files++;
    }
    /* The list fixtures fit coins_list and (as arrays of objects) markets and categories, the
     * simple/price and market_chart objects fit simple_price, and so on: plenty are accepted. */
    assert_true(files >= 29);
    assert_true(accepted >= 29);
    free_list(names);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_regressions),
        cmocka_unit_test(test_fixtures_through_every_parser),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
