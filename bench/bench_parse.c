/*
 * bench_parse: how fast the CoinGecko parsers turn recorded bodies into rows.
 *
 * Cases (one key=value line each):
 *   json_load_markets  jansson alone on the 250-row 2025 markets page (the floor)
 *   parse_markets      coingecko_parse_markets on that page: snapshots + assets + ids
 *   parse_coins_list   coingecko_parse_coins_list on the 17,589-coin 2025 list
 * Each case repeats its work for about `seconds` (argv[1], default 1) after one warm-up run
 * and reports the best throughput (MB/s of body, rows/s). Fixtures come from
 * $COINGEST_FIXTURES, else tests/fixtures relative to the working directory or its parents.
 * Nothing here passes or fails on time.
 */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coingest/batch.h"
#include "sources/coingecko/coingecko.h"

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static char *read_fixture(const char *name, size_t *len)
{
    const char *env = getenv("COINGEST_FIXTURES");
    const char *dirs[] = {env, "tests/fixtures", "../tests/fixtures", "../../tests/fixtures"};
    for (size_t i = 0; i < sizeof(dirs) / sizeof(dirs[0]); i++) {
        if (!dirs[i])
            continue;
        char path[4096];
        snprintf(path, sizeof(path), "%s/coingecko/%s", dirs[i], name);
        FILE *f = fopen(path, "rb");
        if (!f)
            continue;
        fseek(f, 0, SEEK_END);
        long n = ftell(f);
        fseek(f, 0, SEEK_SET);
        char *buf = malloc((size_t)n + 1);
        if (buf && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            buf[n] = '\0';
            *len = (size_t)n;
            fclose(f);
            return buf;
        }
        free(buf);
        fclose(f);
    }
    fprintf(stderr, "bench_parse: fixture %s not found (set COINGEST_FIXTURES)\n", name);
    return NULL;
}

enum bench_case { CASE_JSON_LOAD, CASE_MARKETS, CASE_COINS_LIST };

static const struct coingecko_times times = {1739123100000LL, 1739123047000LL};

/* One run of a case; returns rows produced, or -1 on failure. */
static long run_once(enum bench_case c, const char *body, size_t len)
{
    char err[256];
    long rows = -1;
    switch (c) {
    case CASE_JSON_LOAD: {
        json_error_t je;
        json_t *root = json_loadb(body, len, JSON_DECODE_INT_AS_REAL | JSON_ALLOW_NUL, &je);
        if (root) {
            rows = (long)json_array_size(root);
            json_decref(root);
        }
        break;
    }
    case CASE_MARKETS: {
        struct batch *sn = batch_new(BATCH_MARKET_SNAPSHOTS, 256);
        struct batch *am = batch_new(BATCH_ASSETS_MARKET, 256);
        struct strlist ids = {0};
        struct coingecko_markets_out out = {.snapshots = sn, .assets = am, .ids = &ids};
        struct coingecko_stats st = {0};
        if (sn && am &&
            coingecko_parse_markets(body, len, &times, "usd", NULL, &out, &st, err, sizeof(err)) ==
                0)
            rows = (long)sn->nrows;
        coingecko_strlist_free(&ids);
        batch_free(sn);
        batch_free(am);
        break;
    }
    case CASE_COINS_LIST: {
        struct batch *as = batch_new(BATCH_ASSETS_LIST, 1024);
        struct strlist ids = {0};
        struct coingecko_stats st = {0};
        if (as &&
            coingecko_parse_coins_list(body, len, &times, as, &ids, &st, err, sizeof(err)) == 0)
            rows = (long)as->nrows;
        coingecko_strlist_free(&ids);
        batch_free(as);
        break;
    }
    }
    return rows;
}

static int bench(const char *name, enum bench_case c, const char *fixture, double seconds)
{
    size_t len;
    char *body = read_fixture(fixture, &len);
    if (!body)
        return 1;
    long rows = run_once(c, body, len); /* warm-up */
    if (rows < 0) {
        fprintf(stderr, "bench_parse: %s failed\n", name);
        free(body);
        return 1;
    }
    double best = 1e9, start = now_s();
    long iters = 0;
    do {
        double t0 = now_s();
        run_once(c, body, len);
        double dt = now_s() - t0;
        if (dt < best)
            best = dt;
        iters++;
    } while (now_s() - start < seconds);
    printf("bench=%s bytes=%zu rows=%ld iters=%ld ms_per_body=%.3f mb_per_s=%.1f rows_per_s=%.0f\n",
           name, len, rows, iters, best * 1e3, (double)len / best / 1e6, (double)rows / best);
    free(body);
    return 0;
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? atof(argv[1]) : 1.0;
    if (seconds <= 0)
        seconds = 1.0;
    const char *markets = "coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json";
    int rc = 0;
    rc |= bench("json_load_markets", CASE_JSON_LOAD, markets, seconds);
    rc |= bench("parse_markets", CASE_MARKETS, markets, seconds);
    rc |= bench("parse_coins_list", CASE_COINS_LIST, "coins_list_2025-07_pyindent.json", seconds);
    return rc;
}
