/*
 * fuzz_coingecko: libFuzzer entry point for the CoinGecko parsers. tests/fuzz/CMakeLists.txt
 * builds this file once per endpoint (fuzz_markets, fuzz_coins_list, fuzz_categories,
 * fuzz_simple_price, fuzz_global) with FUZZ_ENDPOINT set, so each target gets a corpus of its
 * own shape; the checks live in fuzz_parsers.h, shared with the regression test.
 * Run them with scripts/fuzz.
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_parsers.h"

#ifndef FUZZ_ENDPOINT
#error "build with -DFUZZ_ENDPOINT=FUZZ_MARKETS (or another enum fuzz_endpoint value)"
#endif

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_run_parser(FUZZ_ENDPOINT, data, size);
    return 0;
}
