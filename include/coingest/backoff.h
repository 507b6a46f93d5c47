/*
 * backoff: full-jitter exponential backoff (AWS, "Exponential Backoff and Jitter"):
 *   sleep = random(0, min(cap, base * 2^attempt))
 * with attempt counted from 0. Deterministic when the rng is seeded (tests).
 * Thread: any (the rng is the caller's).
 */
#ifndef COINGEST_BACKOFF_H
#define COINGEST_BACKOFF_H

#include <stdint.h>

#include "coingest/util.h"

/* The upper bound min(cap, base * 2^attempt), without overflow. */
uint64_t backoff_ceiling(uint64_t base_ms, uint64_t cap_ms, unsigned attempt);

/* A delay in [0, ceiling]. */
uint64_t backoff_full_jitter(struct rng *rng, uint64_t base_ms, uint64_t cap_ms, unsigned attempt);

#endif
