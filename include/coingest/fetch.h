/*
 * fetch: the HTTP engine. libcurl's multi interface driven by the libuv loop (one uv_poll per
 * curl socket, one timer for curl's timeout), every request gated by its API's token bucket,
 * with retries that a rate-limited public API will thank us for.
 *
 * An API (struct api) is one remote service: base URL, plan and key header, token bucket,
 * retry policy, limits, all from a struct cfg_source and its source's definition (source.h),
 * which also says how the service's error bodies read. A request is a GET of base_url + path.
 * The engine retries (full-jitter backoff, up to max_retries) connection errors, timeouts,
 * 5xx, 408, truncated bodies, 2xx bodies that are not JSON, and 2xx bodies the caller's parse
 * callback rejects. A 429 pauses the API's whole bucket (for Retry-After, or a backoff delay
 * without it) and is retried without counting against max_retries, up to 50 rate-limited
 * answers per request, so a long rate-limit episode delays a page walk but never skips a page.
 * Other 4xx are final. The done callback runs exactly once per request, on the loop thread, with
 * the final outcome. Response headers over 100 KiB are retried like a 5xx.
 *
 * API keys go in the header the source's plan names, never in the URL, and never appear in
 * logs, metrics or error messages, whole or as a run of LOG_SECRET_FRAGMENT_MIN characters
 * (log.h). A key with a control character is never sent (the request ends at once).
 *
 * Thread: loop thread only.
 */
#ifndef COINGEST_FETCH_H
#define COINGEST_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "coingest/config.h"
#include "coingest/tbucket.h"
#include "coingest/timers.h"

struct fetcher;
struct api;
struct fetch_req;

enum fetch_outcome {
    FETCH_OK = 0,        /* 2xx, body accepted by the parse callback (if any) */
    FETCH_HTTP_ERROR,    /* a final HTTP error (4xx other than 408/429), retries exhausted, or
                            a key that cannot be a header value (nothing sent) */
    FETCH_NETWORK_ERROR, /* connection/timeout/truncation/oversized headers, retries exhausted */
    FETCH_BAD_BODY,      /* 2xx whose body was not JSON or failed to parse, retries exhausted */
    FETCH_TOO_LARGE,     /* body exceeded max_body_bytes or the request's limit, or its parse
                            would take too much memory */
    FETCH_CANCELLED      /* fetch_cancel / api_cancel_all / fetcher shutdown */
};

struct fetch_result {
    enum fetch_outcome outcome;
    long status;      /* last HTTP status, 0 when none */
    const char *body; /* last body, NUL-terminated; valid during the callback only */
    size_t len;
    unsigned attempts; /* requests sent, including the first */
    double seconds;    /* from first send to done, including waits */
    const char *error; /* human-readable reason when outcome != FETCH_OK: the API's own
                          message (read by its source's error reader) when it sent one, else
                          curl's or the engine's; masked with log_mask_secrets before it is
                          cut to 255 bytes: never contains a key nor 8 characters of one */
};

/* Called on a 2xx JSON-looking body before it counts as success. Returns 0 to accept, or a
 * negative value to reject (the request is retried like a bad body; -E2BIG: the body is too
 * large to parse and the request ends with FETCH_TOO_LARGE, no retry; -EPROTO: the body is the
 * API's own error or notice sent with a 2xx, such as a retired version's shutdown notice, and
 * the request ends with FETCH_BAD_BODY, no retry, as a 4xx would); writes why into err.
 * It must have no lasting effect when it rejects (parse into a temporary, keep on accept). */
typedef int (*fetch_parse_cb)(const char *body, size_t len, void *arg, char *err, size_t errlen);
typedef void (*fetch_done_cb)(const struct fetch_result *res, void *arg);

/* The engine on `loop`, using `timers` for backoff waits and bucket wake-ups.
 * Calls curl_global_init once. NULL on failure. */
struct fetcher *fetcher_new(uv_loop_t *loop, struct timers *timers);

/* Cancels every request (done callbacks run with FETCH_CANCELLED), closes handles and frees
 * the engine once they are closed; `cb` (may be NULL) runs then. APIs must be freed first. */
void fetcher_free(struct fetcher *f, void (*cb)(void *arg), void *arg);

/* An API from its config section (copied). NULL on failure. */
struct api *api_new(struct fetcher *f, const struct cfg_source *src);
/* Applies a reloaded section: rate/burst resize the bucket keeping earned tokens; other keys
 * apply to requests sent after this call. */
void api_update(struct api *a, const struct cfg_source *src);
/* Cancels the API's requests and frees it. */
void api_free(struct api *a);

/* Starts GET base_url + path_query (path_query starts with '/', already URL-encoded).
 * `prio` is a tbucket priority class. Returns the request, or NULL on OOM (no callback).
 * The request is freed by the engine after `done` returns. */
struct fetch_req *api_get(struct api *a, const char *path_query, int prio, fetch_parse_cb parse,
                          fetch_done_cb done, void *arg);

/* As api_get, with a limit on this request's body (0: none) below the API's max_body_size:
 * a source knows how large each endpoint's answer can be, and a larger one is refused
 * (FETCH_TOO_LARGE) before it is parsed. */
struct fetch_req *api_get_limited(struct api *a, const char *path_query, int prio, size_t max_body,
                                  fetch_parse_cb parse, fetch_done_cb done, void *arg);

/* Cancels a request still in flight or waiting; its done callback runs (FETCH_CANCELLED)
 * before this returns. */
void fetch_cancel(struct fetch_req *r);
/* Cancels every request of the API. */
void api_cancel_all(struct api *a);

/* Shutdown, step one: every request of the API waiting for a token, a backoff or a 429 pause
 * ends now (done callbacks run with FETCH_CANCELLED before this returns); a transfer in flight
 * goes on, but ends FETCH_CANCELLED instead of being retried if it fails; api_get from now on
 * returns a request that ends FETCH_CANCELLED on the next loop iteration without being sent.
 * Cancel what is still in flight later with api_cancel_all (or fetch_cancel). Idempotent. */
void api_stop(struct api *a);

/* What the status page shows of an API (api_get_stats). */
struct api_stats {
    uint64_t calls_total;       /* attempts sent since the API was made */
    uint64_t calls_last_minute; /* attempts sent in the last 60 s */
    size_t pending;             /* requests in flight or waiting */
    size_t in_flight;           /* of those, transfers under way */
    uint64_t failures;          /* failed attempts since the last success (0: healthy) */
    uint64_t failing_ms;        /* since the first of them */
    double tokens;              /* in the bucket now */
    uint32_t burst;             /* the bucket's capacity */
    uint64_t paused_ms;         /* left of a 429 pause, 0: none */
    bool stopping;              /* api_stop was called */
};
void api_get_stats(const struct api *a, struct api_stats *out);

/* Requests in flight or waiting (bucket, backoff) for the API. */
size_t api_pending(const struct api *a);

/* The API's bucket (statistics, tests). */
struct tbucket *api_bucket(struct api *a);

/* Parses a Retry-After value (delta seconds or an HTTP date) into a delay in ms from
 * `now_wall_ms`. Returns 0 or -EINVAL. Exported for tests. */
int fetch_parse_retry_after(const char *value, uint64_t now_wall_ms, uint64_t *delay_ms);

/* The generic error reader: the message of a JSON error body ({"error": "..."}, also nested
 * as {"error": {"error": ...}}, {"message": "..."} or {"error_message": "..."}) into buf,
 * control characters made spaces, cut on a UTF-8 boundary. Returns 0 when one was found,
 * -ENOENT when not. Sources with their own shapes wrap it (source_def.error_message). */
int fetch_api_error_message(const char *body, size_t len, char *buf, size_t cap);

#endif
