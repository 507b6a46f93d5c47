/*
 * backoff: full-jitter exponential backoff, sleep = random(0, min(cap, base * 2^attempt)).
 *
 * Full jitter spreads the retries of many clients that failed together over the whole window
 * instead of bunching them at its end (AWS, "Exponential Backoff and Jitter"). The ceiling is
 * computed without ever forming base * 2^attempt, so any attempt number is safe.
 */
#include "coingest/backoff.h"

uint64_t backoff_ceiling(uint64_t base_ms, uint64_t cap_ms, unsigned attempt)
{
    if (base_ms == 0)
        return 0;
    /* base * 2^attempt > cap exactly when base > floor(cap / 2^attempt). */
    if (attempt >= 64 || base_ms > (cap_ms >> attempt))
        return cap_ms;
    return base_ms << attempt;
}

uint64_t backoff_full_jitter(struct rng *rng, uint64_t base_ms, uint64_t cap_ms, unsigned attempt)
{
    uint64_t ceiling = backoff_ceiling(base_ms, cap_ms, attempt);
    if (ceiling == UINT64_MAX)
        return rng_next(rng);
    return rng_below(rng, ceiling + 1);
}
