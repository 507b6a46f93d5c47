/*
 * fakeapi_proc: runs tests/fakeapi/fakeapi.py (or another API's fake beside it) as a child process
 * for a unit test and talks to its control API (tests/fakeapi/README.md).
 *
 * fakeapi_start() forks `python3 $FAKEAPI --port 0 --port-fd N [extra args]` and blocks until
 * the server has written its port to the pipe (it is listening then), so no polling or sleep
 * is involved. The server exits by itself if the test process dies (it watches its parent).
 * Control calls are blocking libcurl easy requests; use them from the test's own thread
 * before or after running the loop, or from loop callbacks (they block the loop briefly).
 *
 * Thread: the test's thread. Not for the daemon.
 */
#ifndef COINGEST_FAKEAPI_PROC_H
#define COINGEST_FAKEAPI_PROC_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

struct fakeapi;

/* How far the daemon's clock may trail the fake server's when a test compares them: the
 * bucket reads libuv's loop clock, which is CLOCK_MONOTONIC_COARSE (up to a tick behind
 * CLOCK_MONOTONIC) truncated to whole milliseconds, while the server stamps requests with
 * CLOCK_MONOTONIC. Lower bounds on arrival times subtract this; load only adds to them. */
#define FAKEAPI_CLOCK_SLACK_S 0.005

/* True when FAKEAPI names the script and python3 can be found; tests skip (77) otherwise. */
bool fakeapi_available(void);

/* Starts the fake API with extra arguments (a NULL-terminated list, may be NULL), e.g.
 * {"--universe", "17000", "--rate-limit", "30/min", NULL}. NULL after printing why. */
struct fakeapi *fakeapi_start(const char *const *extra_args);

/* As fakeapi_start, for another API's fake: `name` is a script beside $FAKEAPI (e.g.
 * "coinbase.py"; NULL: fakeapi.py itself) and `prefix` the path of its API under the server
 * root ("" for Coinbase, "/v3" for CoinCap), which fakeapi_base_url then ends with. */
struct fakeapi *fakeapi_start_script(const char *name, const char *prefix,
                                     const char *const *extra_args);

/* The bound port, and "http://127.0.0.1:PORT/api/v3" (owned by f). */
int fakeapi_port(const struct fakeapi *f);
const char *fakeapi_base_url(const struct fakeapi *f);

/* One control call: method "GET"/"POST"/"DELETE", path under the server root (e.g.
 * "/_control/faults"), optional JSON body. Returns the HTTP status, or -errno when the call
 * failed. *response (if response is not NULL) receives the malloc'd NUL-terminated body,
 * which the caller frees. */
int fakeapi_control(struct fakeapi *f, const char *method, const char *path, const char *json_body,
                    char **response);

/* Queues faults (the JSON of one fault object, a list, or {"faults":[...]}). 0 or -EIO. */
int fakeapi_fault(struct fakeapi *f, const char *json);

/* The request log entries with seq > since, as a new reference to a JSON array (the
 * "requests" member of GET /_control/log); NULL on failure. */
json_t *fakeapi_log(struct fakeapi *f, long since);

/* Clears faults, log and the rate window (POST /_control/reset). 0 or -EIO. */
int fakeapi_reset(struct fakeapi *f);

/* Stops the server (SIGTERM, then SIGKILL after 5 s) and frees f. NULL is a no-op. */
void fakeapi_stop(struct fakeapi *f);

#endif
