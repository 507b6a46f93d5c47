/*
 * server: a one-request-per-connection HTTP/1.1 responder on the libuv loop.
 *
 * Each accepted connection is a struct conn holding a TCP handle, a deadline timer and a fixed
 * SERVER_MAX_REQUEST buffer, and it walks through four states:
 *
 *   READING  bytes go into the buffer until the blank line that ends the headers arrives
 *            (then reading stops and the request is answered), or the buffer fills (431);
 *   WRITING  one uv_write of the response head plus body; the body (metrics_render's string)
 *            belongs to the connection until the write callback frees it;
 *   LINGER   after the response, a shutdown sends our FIN and we read and discard whatever
 *            the client still sends until its EOF, so unread input (an oversized request)
 *            does not make the kernel answer with a RST that would destroy the response;
 *   CLOSING  both handles are being closed; the memory goes in the last close callback.
 *
 * One timer per connection carries two deadlines. While READING it fires head_timeout_ms after
 * accept (SERVER_DEFAULT_HEAD_TIMEOUT_MS), however steadily the client trickles bytes: a probe
 * sends its whole head at once, so only a slow or hostile client is cut off. Once the head is in,
 * the timer is re-armed for what is left of timeout_ms from accept, which bounds WRITING (a
 * client that never reads its response); LINGER gets at most SERVER_LINGER_MS. When the timer
 * fires the connection is closed in whatever state it is.
 *
 * When the table is full (max_clients), a new connection does not simply lose: the oldest
 * connection still READING its head is evicted (closed without an answer) to make room, or
 * failing that the oldest one in LINGER, whose answer has already been written. Only when every
 * slot is WRITING is the new connection closed unanswered. So slow readers cannot keep a probe
 * out: each new connection pushes out the longest-waiting incomplete request, and a probe, which
 * completes its head at once, is answered before enough newer connections arrive to push it out.
 *
 * The server itself counts its live handles (the listener plus each connection not yet freed);
 * server_close() closes everything and the last close callback frees the server and calls the
 * caller's callback. Nothing is freed outside a close callback, as libuv requires.
 */
#include "coingest/server.h"

#include <errno.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/list.h"
#include "coingest/metrics.h"

#define SERVER_LINGER_MS  1000
#define SERVER_HEALTH_MAX 1024

enum conn_state { CONN_READING, CONN_WRITING, CONN_LINGER, CONN_CLOSING };

struct server;

struct conn {
    struct server *srv;
    struct list_link link; /* in the server's list of open connections */
    uv_tcp_t tcp;
    uv_timer_t timer;
    uv_write_t wreq;
    uv_shutdown_t sreq;
    enum conn_state state;
    int handles;          /* handles still to be closed before the conn can be freed */
    uint64_t accepted_ms; /* uv_now() at accept */
    uint64_t timeout_ms;  /* the server's timeout_ms at accept: accept to close */
    size_t len;           /* bytes of request in buf */
    char *body;           /* response body being written (owned), or NULL */
    char head[512];
    char buf[SERVER_MAX_REQUEST];
};

struct route {
    char path[64];
    server_route_cb cb;
    void *arg;
};

struct server {
    uv_loop_t *loop;
    uv_tcp_t listener;
    server_health_cb health;
    void *health_arg;
    struct route routes[SERVER_MAX_ROUTES];
    size_t nroutes;
    struct list_link conns; /* open connections (struct conn) */
    unsigned nconns;
    unsigned max_clients;
    uint64_t timeout_ms;
    uint64_t head_timeout_ms;
    unsigned live; /* listener (until closed) + conns not yet freed */
    bool closing;
    void (*close_cb)(void *);
    void *close_arg;
};

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void server_maybe_done(struct server *s)
{
    if (!s->closing || s->live > 0)
        return;
    void (*cb)(void *) = s->close_cb;
    void *arg = s->close_arg;
    free(s);
    if (cb)
        cb(arg);
}

static void on_conn_handle_closed(uv_handle_t *h)
{
    struct conn *c = h->data;
    if (--c->handles > 0)
        return;
    struct server *s = c->srv;
    free(c->body);
    free(c);
    s->live--;
    server_maybe_done(s);
}

/* Closes a connection in any state; idempotent. Pending write/shutdown callbacks run with
 * UV_ECANCELED before the close callbacks. */
static void conn_close(struct conn *c)
{
    if (c->state == CONN_CLOSING)
        return;
    c->state = CONN_CLOSING;
    struct server *s = c->srv;
    list_remove(&c->link);
    s->nconns--;
    uv_close((uv_handle_t *)&c->timer, on_conn_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_conn_handle_closed);
}

static void on_deadline(uv_timer_t *t)
{
    conn_close(t->data);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    struct conn *c = h->data;
    /* READING never leaves the buffer full (a full buffer is answered with 431 and reading
     * stops); LINGER discards into the whole buffer. */
    if (c->state == CONN_LINGER)
        c->len = 0;
    *buf = uv_buf_init(c->buf + c->len, (unsigned)(sizeof(c->buf) - c->len));
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct conn *c = req->data;
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0) {
        conn_close(c);
        return;
    }
    c->state = CONN_LINGER;
    uint64_t linger = c->srv->timeout_ms < SERVER_LINGER_MS ? c->srv->timeout_ms : SERVER_LINGER_MS;
    uv_timer_start(&c->timer, on_deadline, linger, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

static void on_write(uv_write_t *req, int status)
{
    struct conn *c = req->data;
    free(c->body);
    c->body = NULL;
    if (c->state == CONN_CLOSING)
        return;
    if (status < 0 || uv_shutdown(&c->sreq, (uv_stream_t *)&c->tcp, on_shutdown) < 0)
        conn_close(c);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 200:
        return "OK";
    case 400:
        return "Bad Request";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "Status";
    }
}

/* Sends the response and takes ownership of body (malloc'd, may be NULL when len is 0).
 * With head_only (HEAD), Content-Length says what GET would send but no body is sent. */
static void conn_respond(struct conn *c, int status, const char *ctype, char *body, size_t len,
                         bool head_only)
{
    c->state = CONN_WRITING;
    uv_read_stop((uv_stream_t *)&c->tcp);
    /* The head deadline is met: from now on the whole-connection deadline applies. */
    uint64_t age = uv_now(c->srv->loop) - c->accepted_ms;
    uv_timer_start(&c->timer, on_deadline, age < c->timeout_ms ? c->timeout_ms - age : 1, 0);
    int n = snprintf(c->head, sizeof(c->head),
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: %s\r\n"
                     "Content-Length: %zu\r\n"
                     "Cache-Control: no-store\r\n"
                     "%s"
                     "Connection: close\r\n"
                     "\r\n",
                     status, reason_phrase(status), ctype, len,
                     status == 405 ? "Allow: GET, HEAD\r\n" : "");
    uv_buf_t bufs[2];
    unsigned nbufs = 1;
    bufs[0] = uv_buf_init(c->head, (unsigned)n);
    if (head_only) {
        free(body);
        body = NULL;
    } else if (body && len) {
        bufs[nbufs++] = uv_buf_init(body, (unsigned)len);
    }
    c->body = body;
    c->wreq.data = c;
    if (uv_write(&c->wreq, (uv_stream_t *)&c->tcp, bufs, nbufs, on_write) < 0)
        conn_close(c); /* the close callback frees the body */
}

/* Responds with a fixed text body. */
static void conn_respond_text(struct conn *c, int status, const char *text, bool head_only)
{
    char *body = strdup(text);
    conn_respond(c, status, "text/plain; charset=utf-8", body, body ? strlen(body) : 0, head_only);
}

static void serve_health(struct conn *c, bool head_only)
{
    char json[SERVER_HEALTH_MAX];
    json[0] = '\0';
    int status = 200;
    if (c->srv->health)
        status = c->srv->health(c->srv->health_arg, json, sizeof(json));
    if (status < 200 || status > 599)
        status = 500;
    json[sizeof(json) - 1] = '\0';
    if (!json[0])
        snprintf(json, sizeof(json), "{\"status\":\"%s\"}", status == 200 ? "ok" : "unhealthy");
    size_t n = strlen(json);
    char *body = malloc(n + 2);
    if (body) {
        memcpy(body, json, n);
        body[n++] = '\n';
        body[n] = '\0';
    }
    conn_respond(c, status, "application/json", body, body ? n : 0, head_only);
}

static void serve_route(struct conn *c, const struct route *r, bool head_only)
{
    const char *ctype = "text/plain; charset=utf-8";
    char *body = NULL;
    size_t len = 0;
    int status = r->cb(r->arg, &ctype, &body, &len);
    if (status < 200 || status > 599 || (!body && status == 200)) {
        free(body);
        conn_respond_text(c, 500, "internal error\n", head_only);
        return;
    }
    conn_respond(c, status, ctype, body, body ? len : 0, head_only);
}

static void serve_metrics(struct conn *c, bool head_only)
{
    size_t len = 0;
    char *body = metrics_render(&len);
    if (!body) {
        conn_respond_text(c, 500, "out of memory\n", head_only);
        return;
    }
    conn_respond(c, 200, "text/plain; version=0.0.4; charset=utf-8", body, len, head_only);
}

/* Answers the complete request head in c->buf[0..c->len). */
static void conn_handle(struct conn *c)
{
    /* Request line: METHOD SP TARGET SP HTTP/1.x */
    char *line = c->buf;
    char *eol = memchr(line, '\n', c->len);
    if (!eol) {
        conn_respond_text(c, 400, "bad request\n", false);
        return;
    }
    *eol = '\0';
    if (eol > line && eol[-1] == '\r')
        eol[-1] = '\0';
    char *sp1 = strchr(line, ' ');
    char *sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
    if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 ||
        strchr(sp2 + 1, ' ')) {
        conn_respond_text(c, 400, "bad request\n", false);
        return;
    }
    *sp1 = '\0';
    *sp2 = '\0';
    const char *method = line;
    char *target = sp1 + 1;
    char *q = strchr(target, '?');
    if (q)
        *q = '\0';

    bool head_only = strcmp(method, "HEAD") == 0;
    if (!head_only && strcmp(method, "GET") != 0) {
        conn_respond_text(c, 405, "method not allowed\n", false);
        return;
    }
    if (strcmp(target, "/metrics") == 0)
        serve_metrics(c, head_only);
    else if (strcmp(target, "/healthz") == 0)
        serve_health(c, head_only);
    else {
        for (size_t i = 0; i < c->srv->nroutes; i++) {
            if (strcmp(target, c->srv->routes[i].path) == 0) {
                serve_route(c, &c->srv->routes[i], head_only);
                return;
            }
        }
        conn_respond_text(c, 404, "not found\n", head_only);
    }
}

/* Is the head complete: a blank line (CRLF CRLF, or bare LF LF from lenient clients)? */
static bool head_complete(const char *buf, size_t len)
{
    for (size_t i = 1; i < len; i++) {
        if (buf[i] != '\n')
            continue;
        if (buf[i - 1] == '\n')
            return true;
        if (i >= 2 && buf[i - 1] == '\r' && buf[i - 2] == '\n')
            return true;
    }
    return false;
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    (void)buf;
    struct conn *c = stream->data;
    if (c->state == CONN_CLOSING)
        return;
    if (nread < 0) {
        /* EOF or error: the client is gone (READING) or done (LINGER). */
        conn_close(c);
        return;
    }
    if (c->state != CONN_READING)
        return; /* LINGER: discard */
    /* Search from a little before the new bytes: the blank line may straddle two reads. */
    size_t from = c->len >= 3 ? c->len - 3 : 0;
    c->len += (size_t)nread;
    if (head_complete(c->buf + from, c->len - from))
        conn_handle(c);
    else if (c->len == sizeof(c->buf))
        conn_respond_text(c, 431, "request header fields too large\n", false);
}

/* The connection to evict when the table is full and `fresh` wants a slot: the oldest one still
 * reading its head, else the oldest lingering one (its answer is already written), else NULL.
 * The list runs oldest first (connections are appended), so the first match is the oldest. */
static struct conn *eviction_victim(struct server *s, const struct conn *fresh)
{
    struct conn *reading = NULL, *linger = NULL;
    struct list_link *l;
    LIST_FOR_EACH (l, &s->conns) {
        struct conn *c = LIST_CONTAINER_OF(l, struct conn, link);
        if (c == fresh)
            continue;
        if (c->state == CONN_READING && !reading)
            reading = c;
        else if (c->state == CONN_LINGER && !linger)
            linger = c;
    }
    return reading ? reading : linger;
}

static void on_connection(uv_stream_t *listener, int status)
{
    struct server *s = listener->data;
    if (status < 0 || s->closing)
        return;
    struct conn *c = calloc(1, sizeof(*c));
    if (!c)
        return; /* the connection waits in the backlog until memory returns */
    c->srv = s;
    if (uv_tcp_init(s->loop, &c->tcp) < 0) {
        free(c);
        return;
    }
    c->tcp.data = c;
    c->sreq.data = c;
    c->wreq.data = c;
    /* uv_timer_init cannot fail on a live loop. */
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->handles = 2;
    c->state = CONN_READING;
    list_append(&s->conns, &c->link);
    s->nconns++;
    s->live++;

    if (uv_accept(listener, (uv_stream_t *)&c->tcp) < 0) {
        conn_close(c);
        return;
    }
    if (s->nconns > s->max_clients) {
        struct conn *victim = eviction_victim(s, c);
        if (!victim) {
            conn_close(c); /* every slot is writing an answer: refuse this one */
            return;
        }
        conn_close(victim);
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->accepted_ms = uv_now(s->loop);
    c->timeout_ms = s->timeout_ms;
    uint64_t head = s->head_timeout_ms < s->timeout_ms ? s->head_timeout_ms : s->timeout_ms;
    uv_timer_start(&c->timer, on_deadline, head, 0);
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) < 0)
        conn_close(c);
}

/* Is host a name to resolve (letters, digits, '.', '-', '_', at least one letter)? A
 * dotted-digits string that is not an IPv4 address must not go to the resolver. */
static bool is_hostname(const char *host)
{
    bool letter = false;
    for (const char *c = host; *c; c++) {
        if ((*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z'))
            letter = true;
        else if (!(*c >= '0' && *c <= '9') && *c != '.' && *c != '-' && *c != '_')
            return false;
    }
    return letter;
}

/* Parses "IPV4:PORT", "[IPV6]:PORT" or "HOSTNAME:PORT" into ss ("localhost" is 127.0.0.1
 * without asking the resolver). Returns 0, -EINVAL for bad syntax, or -ENOENT when a name
 * does not resolve (with the resolver's reason in err). */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, char *err, size_t errlen)
{
    char host[256];
    const char *port;
    if (!listen || !*listen)
        return -EINVAL;
    if (listen[0] == '[') {
        const char *end = strchr(listen, ']');
        if (!end || end[1] != ':' || (size_t)(end - listen - 1) >= sizeof(host))
            return -EINVAL;
        memcpy(host, listen + 1, (size_t)(end - listen - 1));
        host[end - listen - 1] = '\0';
        port = end + 2;
    } else {
        const char *colon = strrchr(listen, ':');
        if (!colon || (size_t)(colon - listen) >= sizeof(host) || colon == listen)
            return -EINVAL;
        memcpy(host, listen, (size_t)(colon - listen));
        host[colon - listen] = '\0';
        if (strchr(host, ':'))
            return -EINVAL; /* a bare IPv6 address needs brackets */
        port = colon + 1;
    }
    if (!*port || strlen(port) > 5 || strspn(port, "0123456789") != strlen(port))
        return -EINVAL;
    long p = strtol(port, NULL, 10);
    if (p > 65535)
        return -EINVAL;
    if (listen[0] == '[')
        return uv_ip6_addr(host, (int)p, (struct sockaddr_in6 *)ss) ? -EINVAL : 0;
    if (strcmp(host, "localhost") == 0)
        snprintf(host, sizeof(host), "127.0.0.1");
    if (uv_ip4_addr(host, (int)p, (struct sockaddr_in *)ss) == 0)
        return 0;
    if (!is_hostname(host))
        return -EINVAL;
    /* A name: resolved once, at startup, before the loop serves anything. */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &ai);
    if (rc != 0 || !ai) {
        snprintf(err, errlen, "%s: cannot resolve %s: %s", listen, host,
                 rc ? gai_strerror(rc) : "no address");
        return -ENOENT;
    }
    memcpy(ss, ai->ai_addr, ai->ai_addrlen);
    if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)p);
    else
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)p);
    freeaddrinfo(ai);
    return 0;
}

static void on_listener_closed(uv_handle_t *h)
{
    struct server *s = h->data;
    s->live--;
    server_maybe_done(s);
}

struct server *server_new(uv_loop_t *loop, const char *listen, server_health_cb health, void *arg,
                          char *err, size_t errlen)
{
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    int prc = parse_listen(listen, &ss, err, errlen);
    if (prc == -EINVAL)
        snprintf(err, errlen,
                 "%s: not a listen address (expected IPV4:PORT, [IPV6]:PORT or HOST:PORT)",
                 listen ? listen : "(null)");
    if (prc < 0)
        return NULL;
    struct server *s = calloc(1, sizeof(*s));
    if (!s) {
        snprintf(err, errlen, "%s: out of memory", listen);
        return NULL;
    }
    s->loop = loop;
    s->health = health;
    s->health_arg = arg;
    list_init(&s->conns);
    s->max_clients = SERVER_DEFAULT_MAX_CLIENTS;
    s->timeout_ms = SERVER_DEFAULT_TIMEOUT_MS;
    s->head_timeout_ms = SERVER_DEFAULT_HEAD_TIMEOUT_MS;
    int rc = uv_tcp_init(loop, &s->listener);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", listen, uv_strerror(rc));
        free(s);
        return NULL;
    }
    s->listener.data = s;
    s->live = 1;
    rc = uv_tcp_bind(&s->listener, (const struct sockaddr *)&ss, 0);
    if (rc == 0)
        rc = uv_listen((uv_stream_t *)&s->listener, 128, on_connection);
    if (rc < 0) {
        snprintf(err, errlen, "%s: %s", listen, uv_strerror(rc));
        s->closing = true; /* the close callback frees it; nobody is told */
        uv_close((uv_handle_t *)&s->listener, on_listener_closed);
        return NULL;
    }
    return s;
}

int server_route(struct server *s, const char *path, server_route_cb cb, void *arg)
{
    if (!s || !cb || !path || path[0] != '/' || strlen(path) >= sizeof(s->routes[0].path))
        return -EINVAL;
    if (strcmp(path, "/metrics") == 0 || strcmp(path, "/healthz") == 0)
        return -EEXIST;
    for (size_t i = 0; i < s->nroutes; i++)
        if (strcmp(s->routes[i].path, path) == 0)
            return -EEXIST;
    if (s->nroutes == SERVER_MAX_ROUTES)
        return -ENOSPC;
    struct route *r = &s->routes[s->nroutes++];
    snprintf(r->path, sizeof(r->path), "%s", path);
    r->cb = cb;
    r->arg = arg;
    return 0;
}

int server_port(struct server *s)
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    int rc = uv_tcp_getsockname(&s->listener, (struct sockaddr *)&ss, &len);
    if (rc < 0)
        return rc;
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

void server_set_limits(struct server *s, uint64_t timeout_ms, unsigned max_clients)
{
    if (timeout_ms)
        s->timeout_ms = timeout_ms;
    if (max_clients)
        s->max_clients = max_clients;
}

void server_set_head_timeout(struct server *s, uint64_t head_timeout_ms)
{
    if (head_timeout_ms)
        s->head_timeout_ms = head_timeout_ms;
}

void server_close(struct server *s, void (*cb)(void *), void *arg)
{
    if (!s) {
        if (cb)
            cb(arg);
        return;
    }
    s->closing = true;
    s->close_cb = cb;
    s->close_arg = arg;
    struct list_link *l;
    while ((l = list_first(&s->conns)) != NULL)
        conn_close(LIST_CONTAINER_OF(l, struct conn, link));
    uv_close((uv_handle_t *)&s->listener, on_listener_closed);
}
