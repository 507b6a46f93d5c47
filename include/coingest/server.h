/*
 * server: the daemon's small HTTP/1.1 endpoint on the libuv loop, for GET /metrics (Prometheus
 * text format 0.0.4, from metrics_render()) and GET /healthz (200 or 503 with a short JSON body,
 * decided by a callback the daemon provides).
 *
 * It serves one request per connection and closes it ("Connection: close"): Prometheus and
 * health probes open a connection per scrape anyway. Everything happens on the loop thread
 * with non-blocking libuv I/O; a response body is owned by the connection until its write
 * completes.
 *
 * Defences, since the port may be reachable by more than the scraper:
 * - the request line plus headers may be at most SERVER_MAX_REQUEST bytes (431 past it);
 * - the whole request head must arrive within SERVER_DEFAULT_HEAD_TIMEOUT_MS of accept, however
 *   steadily it trickles in (slowloris), or the connection is closed without an answer;
 * - each connection has a deadline from accept to close (SERVER_DEFAULT_TIMEOUT_MS), which
 *   bounds a client that never reads its response or never closes;
 * - at most SERVER_DEFAULT_MAX_CLIENTS connections are open at once. When a new one arrives
 *   with the table full, the oldest connection still reading its head is closed to make room
 *   (else the oldest whose answer is already written and that is only waiting for the
 *   client's close); only when every slot is writing an answer is the new one closed
 *   unanswered. So slow clients cannot keep a health probe out: a probe sends its head at
 *   once and is answered, unless more than SERVER_DEFAULT_MAX_CLIENTS newer connections
 *   arrive before its head is read.
 *
 * Responses: GET or HEAD /metrics -> 200 text/plain; version=0.0.4; /healthz -> the callback's
 * status with its JSON; a path added with server_route -> what its handler answers (the daemon
 * adds the status page, "/" and "/status.json"); other paths -> 404; other methods -> 405 with
 * Allow: GET, HEAD; a malformed request line -> 400. A query string is ignored.
 *
 * Thread: loop thread only, including the health callback, which runs on the loop thread
 * while a /healthz request is being answered and must not block.
 */
#ifndef COINGEST_SERVER_H
#define COINGEST_SERVER_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define SERVER_MAX_REQUEST             8192
#define SERVER_DEFAULT_TIMEOUT_MS      10000
#define SERVER_DEFAULT_HEAD_TIMEOUT_MS 2000
#define SERVER_DEFAULT_MAX_CLIENTS     64
#define SERVER_MAX_ROUTES              8

struct server;

/*
 * Decides /healthz: writes a short JSON object (NUL-terminated, at most `cap` bytes including
 * the NUL) into `json` and returns the HTTP status, 200 when healthy or 503 with the reason in
 * the JSON, e.g. {"status":"unhealthy","reason":"database unreachable for 95s"}. A status
 * outside 200..599 is answered as 500; an empty json gets a default body.
 * Called on the loop thread.
 */
typedef int (*server_health_cb)(void *arg, char *json, size_t cap);

/*
 * Answers one GET (or HEAD) of a route's path: sets *content_type (a static string, e.g.
 * "text/html; charset=utf-8"), *body (malloc'd; the server frees it) and *len, and returns the
 * HTTP status. A handler that sets no body (*body NULL) with status 200 is answered 500. Called
 * on the loop thread; it must not block.
 */
typedef int (*server_route_cb)(void *arg, const char **content_type, char **body, size_t *len);

/*
 * Starts listening on `listen`: "IPV4:PORT" ("127.0.0.1:9464", "0.0.0.0:9464"),
 * "[IPV6]:PORT" ("[::1]:9464", "[::]:9464") or "HOSTNAME:PORT" ("localhost" is 127.0.0.1;
 * another name is resolved with getaddrinfo, which may block: call this at startup). Port 0
 * picks a free port (see server_port). `health` may be NULL (then /healthz always answers
 * 200). Returns the server, or NULL with a message in err (an address that does not parse or
 * resolve, or the bind/listen error, e.g. "127.0.0.1:9464: address already in use"). On a
 * bind or listen
 * failure the listener handle has already been initialised: its memory is released by a close
 * callback, so run the loop once more before uv_loop_close().
 * Thread: loop thread.
 */
struct server *server_new(uv_loop_t *loop, const char *listen, server_health_cb health, void *arg,
                          char *err, size_t errlen);

/*
 * Adds a route: GET and HEAD of exactly `path` (copied; it must start with '/', at most 63
 * bytes; a query string is ignored) are answered by cb. Returns 0, -EINVAL, -EEXIST (the path
 * is taken, also /metrics and /healthz) or -ENOSPC (SERVER_MAX_ROUTES already). Thread: loop
 * thread.
 */
int server_route(struct server *s, const char *path, server_route_cb cb, void *arg);

/* The port actually bound (useful after listening on port 0), or a negative errno. */
int server_port(struct server *s);

/*
 * Changes the per-connection deadline (ms from accept to close; > 0) and the most
 * connections open at once (> 0) for connections accepted from now on; a zero leaves that
 * limit as it is. For tests and tuning. Thread: loop thread.
 */
void server_set_limits(struct server *s, uint64_t timeout_ms, unsigned max_clients);

/*
 * Changes the head deadline (ms from accept until the blank line that ends the request head;
 * > 0, capped by the connection deadline) for connections accepted from now on; zero leaves it
 * as it is. For tests and tuning. Thread: loop thread.
 */
void server_set_head_timeout(struct server *s, uint64_t head_timeout_ms);

/*
 * Stops listening and closes every open connection (a response being written is dropped).
 * When the last handle's close callback has run, the memory is freed and then `cb(arg)` is
 * called (cb may be NULL). The loop must keep running until then. s may be NULL (metrics
 * disabled): then cb is called at once, before server_close returns. The server must not be
 * used after this call. Thread: loop thread.
 */
void server_close(struct server *s, void (*cb)(void *), void *arg);

#endif
