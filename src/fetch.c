/*
 * fetch: the HTTP engine. libcurl's multi interface on the libuv loop, every attempt gated by
 * its API's token bucket, retries with full-jitter backoff.
 *
 * How curl rides the loop (the pattern of curl's docs/examples/multi-uv.c). curl tells us
 * which sockets to watch through CURLMOPT_SOCKETFUNCTION: each socket gets one uv_poll
 * (struct sock, attached to curl's socket with curl_multi_assign), started for the events curl
 * asks for and stopped when curl says CURL_POLL_REMOVE, which curl does before it closes the
 * socket, so a socket is never closed while polled. The uv_poll memory is freed in its close
 * callback. curl's single timeout (CURLMOPT_TIMERFUNCTION) is one non-repeating uv_timer (-1
 * stops it) and, for a timeout of 0 ("now"), one uv_idle: curl is entered from the loop, never
 * from inside its own callback, and each "now" waits for the next loop iteration, so the loop
 * polls for I/O between two of them. (A zero uv_timer started from a timer callback runs in
 * the same pass: against an API that answers at once, a walk of 70 pages then parsed every
 * page in one pass, and the writers' completions, the signals and the listener waited ~150 ms
 * for it.) Readiness and timeouts are handed to curl_multi_socket_action (a poll error as
 * CURL_CSELECT_ERR); finished transfers are then collected with curl_multi_info_read, outside
 * any curl callback, and handed to their callbacks.
 *
 * A request's life. api_get() creates a struct fetch_req and asks the API's bucket for a
 * token: granted at once (tbucket_try_take) or queued (tbucket_enqueue) and granted later by
 * tbucket_dispatch(), which the API's bucket timer (a wheel timer, armed for the time
 * dispatch returns) calls. A granted request builds its easy handle (one per request, reused
 * for its retries) with the API's current settings and joins the multi. When it completes,
 * the outcome is classified: 2xx with a JSON-looking body that the parse callback accepts is
 * success; connection errors, timeouts, truncated bodies, 5xx, 408, 429, non-JSON 2xx bodies
 * and parse rejections are retried after a full-jitter backoff (a wheel timer) and go through
 * the bucket again (except a parse that says the body is the API's own error, -EPROTO);
 * everything else is final. A 429 pauses the whole bucket: until the time
 * Retry-After advises (delta seconds or an HTTP date, capped at an hour) or, without the
 * header, for a backoff delay; the request goes straight back to the paused bucket. The
 * advised wait is logged once per episode (an episode ends with the first non-429 answer to a
 * request sent after the pause).
 *
 * Retry budget. max_retries counts failures only: a request is sent at most max_retries + 1
 * times not counting its 429 answers. A 429 is the server asking us to wait, not a failure, so
 * a long rate-limit episode does not end a request (a job walking pages would otherwise skip
 * the rest of the walk). So that a server that answers nothing but 429 cannot hold a request
 * forever, a request ends (FETCH_HTTP_ERROR, status 429) with its FETCH_RATE_LIMITED_MAX-th
 * (50th) 429. The backoff exponent counts failures for failures and consecutive 429s for a
 * 429 without Retry-After, so one kind of wait does not inflate the other.
 *
 * Every attempt takes a token, because the server counts every request. A body is buffered in
 * memory up to max_body_bytes: curl refuses a larger Content-Length up front
 * (CURLOPT_MAXFILESIZE_LARGE) and the write callback aborts a body that grows past the limit
 * (chunked or compressed), so memory is never used unbounded.
 *
 * Reentrancy. User code (done callbacks) runs only from the engine's entry points: after
 * curl_multi_socket_action returned, from a request's own wheel timer, or synchronously in
 * fetch_cancel/api_cancel_all/api_free/fetcher_free. It may start, cancel and free anything,
 * including the fetcher: while an engine callback is on the stack (`depth`), fetcher_free
 * only cancels and marks; the multi handle is torn down when the outermost callback returns.
 * Parse callbacks run between an attempt and its classification and must not free the API or
 * the fetcher (they may cancel their own request: it is finished once the parse returns).
 *
 * Secrets. The API key goes in a request header only; it is never logged, counted or copied
 * into an error message. api_new and api_update register it with log_add_secret, and every
 * error message goes through log_mask_secrets, the same routine that masks log lines, before
 * it is cut to FETCH_ERR_MAX: a server that echoes the key back, whole or in part, gets
 * "********" in the message (the cut comes after the mask, so it cannot leave part of a key
 * behind). A key with a control character is never put in a header line: CR or LF there would
 * end the header and start another (header injection); the config refuses such keys, and
 * build_headers refuses them again.
 *
 * What an operator sees. Every failed attempt (a retry or a final failure; a 429 has its own
 * line per episode) is a warn line, "request failing", rate-limited per API to one line per
 * FETCH_WARN_INTERVAL_MS that says how many failures it stands for; the first success after
 * failures is an info line, "requests succeed again", with their count and how long it took.
 * The per-attempt detail stays at debug ("retrying request").
 *
 * Stopping. api_stop() is the first step of a prompt shutdown: requests waiting for a token, a
 * backoff or a 429 pause end at once (FETCH_CANCELLED), a transfer in flight may finish but is
 * not retried, and a request made afterwards ends on the next loop iteration, unsent.
 *
 * Response headers. More than FETCH_HEADER_MAX bytes of headers in one response (or one header
 * line over curl's own limit, which curl reports as "Out of memory") is a broken answer from
 * the server or something in between, retried like a 5xx with the error "response header too
 * large".
 */
#include "coingest/fetch.h"

#include <curl/curl.h>
#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "coingest/backoff.h"
#include "coingest/list.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "coingest/version.h"

#if LIBCURL_VERSION_NUM < 0x075400
#error "fetch.c needs libcurl >= 7.84 (curl_easy_header)"
#endif

#define FETCH_USER_AGENT "coingest/" COINGEST_VERSION

/* A server may ask for a long pause; more than an hour is treated as an hour. */
#define FETCH_RETRY_AFTER_MAX_MS (3600u * 1000u)
/* Low-speed abort: less than this many bytes/s for FETCH_LOW_SPEED_SECS. */
#define FETCH_LOW_SPEED_BYTES 1
#define FETCH_LOW_SPEED_SECS  30
/* Connections curl may open: per host, and in all. Further transfers wait inside curl for a
 * free connection (that wait counts towards the request's timeout). */
#define FETCH_MAX_HOST_CONNS     8
#define FETCH_MAX_TOTAL_CONNS    32
#define FETCH_DEFAULT_TIMEOUT_MS (30u * 1000u)
#define FETCH_DEFAULT_CONNECT_MS (10u * 1000u)
#define FETCH_DEFAULT_BODY_MAX   (64ull << 20)
#define FETCH_ERR_MAX            256
/* Room for a message before it is masked and cut to FETCH_ERR_MAX: an API's error message is
 * read whole up to this size, so a key near its end is masked before anything is cut. */
#define FETCH_MSG_MAX 4096
/* Bytes of response headers one response may have; curl's own limit for one header line
 * (CURL_MAX_HTTP_HEADER) is the same. */
#define FETCH_HEADER_MAX (100u * 1024u)
/* 429 answers one request may get before it ends: they do not use up max_retries (see the
 * retry budget above), this bounds them instead. */
#define FETCH_RATE_LIMITED_MAX 50
/* At most one "request failing" warn line per API in this time; it carries the count of the
 * failures it did not log. */
#define FETCH_WARN_INTERVAL_MS 60000u
/* Attempts per second over the last FETCH_CALLS_SLOTS seconds, for api_get_stats. */
#define FETCH_CALLS_SLOTS 60

/* ---- types ------------------------------------------------------------------------------ */

struct fetcher {
    uv_loop_t *loop;
    struct timers *timers;
    CURLM *multi;
    uv_timer_t curl_timer;
    uv_idle_t curl_now; /* curl's timeout of 0: the next loop iteration */
    struct list_link apis;
    struct list_link socks; /* polled sockets */
    struct rng rng;
    uint64_t next_seq;
    unsigned depth;           /* engine callbacks on the stack */
    unsigned closing_handles; /* uv handles whose close callback is pending */
    bool closing;             /* fetcher_free was called */
    bool torn_down;           /* the multi is gone and curl_timer is closing */
    void (*free_cb)(void *arg);
    void *free_arg;
};

/* One polled curl socket. */
struct sock {
    uv_poll_t poll;
    struct list_link link; /* in fetcher->socks */
    struct fetcher *f;
    curl_socket_t fd;
};

struct api {
    struct list_link link; /* in fetcher->apis */
    struct fetcher *f;
    struct cfg_source cfg; /* deep copy; base_url defaulted by plan, no trailing '/' */
    char label[128];       /* api="name" for metrics */
    struct tbucket *bucket;
    struct wheel_timer bucket_timer;
    struct list_link reqs; /* in order of creation (seq) */
    size_t pending;
    bool rl_episode;   /* a 429 was logged and no answer since has ended the episode */
    uint64_t rl_until; /* monotonic ms at which the latest 429 pause ends */
    bool closing;
    bool stopping; /* api_stop was called */

    /* failures since the last success, for the warn and recovery lines */
    struct log_ratelimit warn_rl;
    uint64_t failing_since; /* monotonic ms of the first failure since a success, 0: none */
    uint64_t failures;      /* failed attempts since then */

    /* attempts sent: in all, and per second for the last FETCH_CALLS_SLOTS seconds */
    uint64_t calls_total;
    uint64_t calls_sec[FETCH_CALLS_SLOTS];
    uint64_t calls_stamp[FETCH_CALLS_SLOTS]; /* the second (monotonic) each slot counts */
};

enum req_state {
    REQ_IDLE,     /* between steps */
    REQ_BUCKET,   /* queued in the bucket */
    REQ_BACKOFF,  /* waiting on its timer before going back to the bucket */
    REQ_FLIGHT,   /* easy handle in the multi */
    REQ_PARSING,  /* inside the parse callback */
    REQ_DEFERRED, /* to be finished from its timer (failures found while sending) */
    REQ_DONE      /* its done callback is running */
};

struct fetch_req {
    struct list_link link; /* in api->reqs */
    struct api *api;
    uint64_t seq;
    char *path;
    int prio;
    fetch_parse_cb parse;
    fetch_done_cb done;
    void *arg;
    enum req_state state;
    bool cancel_requested; /* fetch_cancel during the parse callback */
    struct tbucket_waiter waiter;
    struct wheel_timer timer;
    CURL *easy;
    struct curl_slist *headers;
    char *body; /* NUL-terminated */
    size_t len, cap, max_body;
    size_t body_limit; /* the caller's limit for this request (0: none), below max_body_bytes */
    bool too_large, oom;
    size_t header_bytes;   /* of the response being received */
    bool in_headers;       /* a status line came, the blank line after the headers did not */
    bool header_too_large; /* over FETCH_HEADER_MAX: aborted in on_header */
    unsigned attempts;     /* requests sent, 429s included */
    unsigned rate_limited; /* of those, answered 429: not counted against max_retries */
    uint64_t start_ns;     /* uv_hrtime at api_get */
    uint64_t sent_at;      /* monotonic ms of the last send */
    long status;
    enum fetch_outcome fin_outcome; /* for REQ_DEFERRED */
    char err[FETCH_ERR_MAX];
    char curl_err[CURL_ERROR_SIZE];
};

static void req_wait_bucket(struct fetch_req *r);
static void req_finish(struct fetch_req *r, enum fetch_outcome oc, const char *msg);
static void count_call(struct api *a, uint64_t now);

/* ---- small helpers ---------------------------------------------------------------------- */

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

/* Copies n bytes of text from outside into buf (cap bytes): masked first (the API key and any
 * other registered secret, whole or in part, see log.h), then cut on a UTF-8 boundary with
 * control characters made spaces. Masking before cutting is what keeps a cut from leaving
 * part of a key behind. */
static void copy_masked(char *buf, size_t cap, const char *src, size_t n)
{
    /* Room for the text and for masks longer than the short secrets they replace. */
    char tmp[2 * FETCH_MSG_MAX];
    if (n > FETCH_MSG_MAX)
        n = FETCH_MSG_MAX;
    memcpy(tmp, src, n);
    n = log_mask_secrets(tmp, n, sizeof(tmp));
    util_copy_clean(buf, cap, tmp, n);
}

static void set_error(struct fetch_req *r, const char *msg)
{
    char tmp[FETCH_ERR_MAX];
    copy_masked(tmp, sizeof(tmp), msg, strlen(msg)); /* msg may be r->err */
    memcpy(r->err, tmp, strlen(tmp) + 1);
}

static bool looks_like_json(const char *body, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        char c = body[i];
        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        return c == '{' || c == '[';
    }
    return false;
}

/* Counts one metric for the API with an optional second label. */
static void api_count(const struct api *a, const char *name, const char *key, const char *value,
                      double v)
{
    char labels[256];
    if (key)
        snprintf(labels, sizeof(labels), "%s,%s=\"%s\"", a->label, key, value);
    else
        snprintf(labels, sizeof(labels), "%s", a->label);
    metrics_add(name, labels, v);
}

/* ---- exported parsers ------------------------------------------------------------------- */

int fetch_parse_retry_after(const char *value, uint64_t now_wall_ms, uint64_t *delay_ms)
{
    if (!value || !delay_ms)
        return -EINVAL;
    while (*value == ' ' || *value == '\t')
        value++;
    size_t n = strlen(value);
    while (n > 0 && (value[n - 1] == ' ' || value[n - 1] == '\t' || value[n - 1] == '\r' ||
                     value[n - 1] == '\n'))
        n--;
    char buf[128];
    if (n == 0 || n >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, value, n);
    buf[n] = '\0';

    if (buf[0] >= '0' && buf[0] <= '9') {
        /* delta-seconds: digits only */
        uint64_t secs = 0;
        for (size_t i = 0; i < n; i++) {
            if (buf[i] < '0' || buf[i] > '9')
                return -EINVAL;
            unsigned d = (unsigned)(buf[i] - '0');
            if (secs > (UINT64_MAX / 1000u - d) / 10u)
                return -EINVAL;
            secs = secs * 10u + d;
        }
        *delay_ms = secs * 1000u;
        return 0;
    }
    /* An HTTP-date always starts with a day name. */
    if (!((buf[0] >= 'A' && buf[0] <= 'Z') || (buf[0] >= 'a' && buf[0] <= 'z')))
        return -EINVAL;
    time_t t = curl_getdate(buf, NULL);
    if (t < 0)
        return -EINVAL;
    uint64_t at = (uint64_t)t * 1000u;
    *delay_ms = at > now_wall_ms ? at - now_wall_ms : 0;
    return 0;
}

/* Finds the message in one JSON object; depth bounds {"error":{"error":...}} nesting. */
static const char *error_in(json_t *o, int depth)
{
    json_t *e = json_object_get(o, "error");
    if (json_is_string(e))
        return json_string_value(e);
    if (json_is_object(e) && depth < 3) {
        const char *m = error_in(e, depth + 1);
        if (m)
            return m;
    }
    static const char *const keys[] = {"error_message", "message"};
    for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
        json_t *m = json_object_get(o, keys[i]);
        if (json_is_string(m))
            return json_string_value(m);
    }
    return NULL;
}

int fetch_api_error_message(const char *body, size_t len, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return -EINVAL;
    buf[0] = '\0';
    if (!body || len == 0 || !looks_like_json(body, len))
        return -ENOENT;
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        return -ENOENT;
    int rc = -ENOENT;
    const char *msg = json_is_object(root) ? error_in(root, 0) : NULL;
    if (msg && *msg) {
        util_copy_clean(buf, cap, msg, strlen(msg));
        rc = 0;
    }
    json_decref(root);
    return rc;
}

/* ---- curl on the loop ------------------------------------------------------------------- */

static void teardown(struct fetcher *f);

static void enter(struct fetcher *f)
{
    f->depth++;
}

static void leave(struct fetcher *f)
{
    if (--f->depth == 0 && f->closing && !f->torn_down)
        teardown(f);
}

static void maybe_free(struct fetcher *f)
{
    if (!f->torn_down || f->closing_handles > 0)
        return;
    void (*cb)(void *) = f->free_cb;
    void *arg = f->free_arg;
    free(f);
    if (cb)
        cb(arg);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct fetcher *f;
    if (h->type == UV_POLL) {
        struct sock *s = h->data;
        f = s->f;
        free(s);
    } else {
        f = h->data;
    }
    f->closing_handles--;
    maybe_free(f);
}

static void check_multi_info(struct fetcher *f);
static void on_transfer_done(struct fetch_req *r, CURLcode rc);

static void on_poll(uv_poll_t *h, int status, int events)
{
    struct sock *s = h->data;
    struct fetcher *f = s->f;
    if (f->torn_down)
        return;
    int flags = 0;
    if (status < 0) {
        flags = CURL_CSELECT_ERR;
    } else {
        if (events & UV_READABLE)
            flags |= CURL_CSELECT_IN;
        if (events & UV_WRITABLE)
            flags |= CURL_CSELECT_OUT;
    }
    int running;
    enter(f);
    curl_multi_socket_action(f->multi, s->fd, flags, &running);
    check_multi_info(f);
    leave(f);
}

static void curl_timeout_now(struct fetcher *f)
{
    int running;
    enter(f);
    curl_multi_socket_action(f->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(f);
    leave(f);
}

static void on_curl_timeout(uv_timer_t *t)
{
    struct fetcher *f = t->data;
    if (!f->torn_down)
        curl_timeout_now(f);
}

static void on_curl_now(uv_idle_t *h)
{
    struct fetcher *f = h->data;
    uv_idle_stop(h);
    if (!f->torn_down)
        curl_timeout_now(f);
}

/* CURLMOPT_TIMERFUNCTION: only (re)arms curl_timer, never calls into curl. */
static int on_curl_timer(CURLM *multi, long timeout_ms, void *userp)
{
    struct fetcher *f = userp;
    (void)multi;
    if (f->torn_down)
        return 0;
    uv_timer_stop(&f->curl_timer);
    if (timeout_ms != 0)
        uv_idle_stop(&f->curl_now);
    if (timeout_ms == 0)
        uv_idle_start(&f->curl_now, on_curl_now);
    else if (timeout_ms > 0)
        uv_timer_start(&f->curl_timer, on_curl_timeout, (uint64_t)timeout_ms, 0);
    return 0;
}

static void sock_close(struct fetcher *f, struct sock *s)
{
    list_remove(&s->link);
    uv_poll_stop(&s->poll);
    f->closing_handles++;
    uv_close((uv_handle_t *)&s->poll, on_handle_closed);
}

/* CURLMOPT_SOCKETFUNCTION: watch, change or forget one socket. */
static int on_curl_socket(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    struct fetcher *f = userp;
    struct sock *s = socketp;
    (void)easy;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            if (!f->torn_down)
                curl_multi_assign(f->multi, fd, NULL);
            sock_close(f, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        if (uv_poll_init_socket(f->loop, &s->poll, fd) != 0) {
            free(s);
            return -1;
        }
        s->poll.data = s;
        s->f = f;
        s->fd = fd;
        list_append(&f->socks, &s->link);
        curl_multi_assign(f->multi, fd, s);
    }
    int events = 0;
    if (what & CURL_POLL_IN)
        events |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        events |= UV_WRITABLE;
    return uv_poll_start(&s->poll, events, on_poll) == 0 ? 0 : -1;
}

static void check_multi_info(struct fetcher *f)
{
    CURLMsg *m;
    int left;
    while (!f->closing && (m = curl_multi_info_read(f->multi, &left)) != NULL) {
        if (m->msg != CURLMSG_DONE)
            continue;
        CURLcode rc = m->data.result; /* m is invalid once the handle is removed */
        char *priv = NULL;
        curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, &priv);
        if (priv)
            on_transfer_done((struct fetch_req *)priv, rc);
    }
}

/* ---- requests --------------------------------------------------------------------------- */

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *userdata)
{
    struct fetch_req *r = userdata;
    size_t n = size * nmemb;
    if (n > r->max_body || r->len > r->max_body - n) {
        r->too_large = true;
        return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
    }
    if (r->len + n + 1 > r->cap) {
        size_t want = r->cap ? r->cap : 16384;
        while (want < r->len + n + 1)
            want = want > SIZE_MAX / 2 ? r->len + n + 1 : want * 2;
        if (want > r->max_body + 1)
            want = r->max_body + 1;
        char *nb = realloc(r->body, want);
        if (!nb) {
            r->oom = true;
            return 0;
        }
        r->body = nb;
        r->cap = want;
    }
    memcpy(r->body + r->len, ptr, n);
    r->len += n;
    r->body[r->len] = '\0';
    return n;
}

/* Counts the response's header bytes; aborts the transfer (CURLE_WRITE_ERROR) past
 * FETCH_HEADER_MAX. A status line starts a response (an interim 1xx has its own); the blank
 * line ends its headers. */
static size_t on_header(char *ptr, size_t size, size_t nitems, void *userdata)
{
    struct fetch_req *r = userdata;
    size_t n = size * nitems;
    if (n >= 5 && memcmp(ptr, "HTTP/", 5) == 0) {
        r->header_bytes = 0;
        r->in_headers = true;
    }
    if (n > FETCH_HEADER_MAX || r->header_bytes > FETCH_HEADER_MAX - n) {
        r->header_too_large = true;
        return 0;
    }
    r->header_bytes += n;
    if ((n == 2 && ptr[0] == '\r' && ptr[1] == '\n') || (n == 1 && ptr[0] == '\n'))
        r->in_headers = false;
    return n;
}

/* The plan the API is on, from its source's definition; NULL without one. */
static const struct source_plan *api_plan(const struct cfg_source *c)
{
    return c->def && c->plan < c->def->nplans ? &c->def->plans[c->plan] : NULL;
}

/* Can `v` be a header value? Not with CR or LF (they would end the line and start another
 * header: an injection), nor any other control character but tab. A NUL cannot be in a C
 * string: a key with one was cut there when it was read, and the config refuses it. */
static bool header_value_ok(const char *v)
{
    for (; *v; v++) {
        unsigned char c = (unsigned char)*v;
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    return true;
}

/* The request's header list. Returns 0, -ENOMEM, or -EINVAL for a key that cannot be a header
 * value (nothing is sent then). */
static int build_headers(struct fetch_req *r)
{
    const struct cfg_source *c = &r->api->cfg;
    struct curl_slist *h = curl_slist_append(NULL, "Accept: application/json");
    if (!h)
        return -ENOMEM;
    const struct source_plan *plan = api_plan(c);
    const char *name = plan ? plan->key_header : NULL;
    const char *prefix = plan && plan->key_prefix ? plan->key_prefix : "";
    if (name && c->api_key && *c->api_key) {
        if (!header_value_ok(c->api_key)) {
            curl_slist_free_all(h);
            return -EINVAL;
        }
        size_t len = strlen(name) + 2 + strlen(prefix) + strlen(c->api_key) + 1;
        char *line = malloc(len);
        if (!line)
            goto fail;
        snprintf(line, len, "%s: %s%s", name, prefix, c->api_key);
        struct curl_slist *nh = curl_slist_append(h, line);
        explicit_bzero(line, len);
        free(line);
        if (!nh)
            goto fail;
        h = nh;
    }
    curl_slist_free_all(r->headers);
    r->headers = h;
    return 0;
fail:
    curl_slist_free_all(h);
    return -ENOMEM;
}

/* Sets every option of the easy handle for one attempt. */
static CURLcode setup_easy(struct fetch_req *r, const char *url)
{
    const struct cfg_source *c = &r->api->cfg;
    CURL *e = r->easy;
    CURLcode rc;
    long timeout = (long)c->timeout_ms;
    long low_speed_secs = timeout > 0 && timeout / 1000 < FETCH_LOW_SPEED_SECS
                              ? (timeout / 1000 > 0 ? timeout / 1000 : 1)
                              : FETCH_LOW_SPEED_SECS;

#define SET(opt, val)                                                                              \
    do {                                                                                           \
        if ((rc = curl_easy_setopt(e, opt, val)) != CURLE_OK)                                      \
            return rc;                                                                             \
    } while (0)
    SET(CURLOPT_URL, url);
    SET(CURLOPT_PRIVATE, r);
    SET(CURLOPT_HTTPHEADER, r->headers);
    SET(CURLOPT_USERAGENT, FETCH_USER_AGENT);
    SET(CURLOPT_ACCEPT_ENCODING, "");
    SET(CURLOPT_NOSIGNAL, 1L);
    SET(CURLOPT_PROTOCOLS_STR, "http,https");
    SET(CURLOPT_FOLLOWLOCATION, 0L);
    SET(CURLOPT_TIMEOUT_MS, timeout);
    SET(CURLOPT_CONNECTTIMEOUT_MS, (long)c->connect_timeout_ms);
    SET(CURLOPT_LOW_SPEED_LIMIT, (long)FETCH_LOW_SPEED_BYTES);
    SET(CURLOPT_LOW_SPEED_TIME, low_speed_secs);
    SET(CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)r->max_body);
    SET(CURLOPT_WRITEFUNCTION, on_body);
    SET(CURLOPT_WRITEDATA, r);
    SET(CURLOPT_HEADERFUNCTION, on_header);
    SET(CURLOPT_HEADERDATA, r);
    SET(CURLOPT_ERRORBUFFER, r->curl_err);
    SET(CURLOPT_SSL_VERIFYPEER, 1L);
    SET(CURLOPT_SSL_VERIFYHOST, 2L);
    SET(CURLOPT_CAINFO, c->ca_file); /* NULL: the default store */
    SET(CURLOPT_TCP_KEEPALIVE, 1L);
    SET(CURLOPT_PIPEWAIT, 1L);
#undef SET
    /* HTTP/2 when the server offers it over TLS; a curl without HTTP/2 still works. */
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    return CURLE_OK;
}

static void on_req_timer(struct wheel_timer *tm, void *arg);

/* Finishes the request from its own timer: for failures found while sending, where the
 * done callback must not run inside tbucket_dispatch or api_get. */
static void req_defer_finish(struct fetch_req *r, enum fetch_outcome oc, const char *msg)
{
    set_error(r, msg);
    r->fin_outcome = oc;
    r->state = REQ_DEFERRED;
    wheel_timer_init(&r->timer, on_req_timer, r);
    timers_start(r->api->f->timers, &r->timer, 0);
}

static void req_send(struct fetch_req *r, uint64_t now)
{
    struct api *a = r->api;
    struct fetcher *f = a->f;
    const struct cfg_source *c = &a->cfg;
    char msg[FETCH_ERR_MAX];

    r->state = REQ_IDLE;
    size_t blen = strlen(c->base_url), plen = strlen(r->path);
    if (c->max_url_bytes && blen + plen > c->max_url_bytes) {
        snprintf(msg, sizeof(msg), "URL of %zu bytes is longer than max_url_bytes (%u)",
                 blen + plen, (unsigned)c->max_url_bytes);
        req_defer_finish(r, FETCH_HTTP_ERROR, msg);
        return;
    }
    char *url = malloc(blen + plen + 1);
    if (!url)
        goto oom;
    memcpy(url, c->base_url, blen);
    memcpy(url + blen, r->path, plen + 1);
    if (!r->easy && !(r->easy = curl_easy_init()))
        goto oom_url;
    int hrc = build_headers(r);
    if (hrc == -EINVAL) {
        free(url);
        req_defer_finish(r, FETCH_HTTP_ERROR,
                         "the API key contains a control character (CR, LF or other); "
                         "no request was sent");
        return;
    }
    if (hrc != 0)
        goto oom_url;
    r->max_body = c->max_body_bytes > SIZE_MAX - 1 ? SIZE_MAX - 1 : (size_t)c->max_body_bytes;
    if (r->body_limit && r->body_limit < r->max_body)
        r->max_body = r->body_limit; /* what this endpoint's body can be */
    CURLcode rc = setup_easy(r, url);
    free(url);
    if (rc != CURLE_OK) {
        snprintf(msg, sizeof(msg), "curl setup: %s", curl_easy_strerror(rc));
        req_defer_finish(r, FETCH_NETWORK_ERROR, msg);
        return;
    }
    r->len = 0;
    r->too_large = r->oom = false;
    r->header_bytes = 0;
    r->in_headers = r->header_too_large = false;
    r->curl_err[0] = '\0';
    if (r->body)
        r->body[0] = '\0';
    CURLMcode mc = curl_multi_add_handle(f->multi, r->easy);
    if (mc != CURLM_OK) {
        snprintf(msg, sizeof(msg), "curl: %s", curl_multi_strerror(mc));
        req_defer_finish(r, FETCH_NETWORK_ERROR, msg);
        return;
    }
    r->attempts++;
    r->sent_at = now;
    r->state = REQ_FLIGHT;
    count_call(a, now);
    return;

oom_url:
    free(url);
oom:
    req_defer_finish(r, FETCH_NETWORK_ERROR, "out of memory");
}

/* One attempt sent at monotonic ms `now`, for api_get_stats. */
static void count_call(struct api *a, uint64_t now)
{
    uint64_t sec = now / 1000;
    size_t i = (size_t)(sec % FETCH_CALLS_SLOTS);
    if (a->calls_stamp[i] != sec) {
        a->calls_stamp[i] = sec;
        a->calls_sec[i] = 0;
    }
    a->calls_sec[i]++;
    a->calls_total++;
}

/* A failed attempt: a warn line, unless one went out less than FETCH_WARN_INTERVAL_MS ago
 * (then it is counted, and the next line says how many were held back). */
static void note_failure(struct api *a, const struct fetch_req *r, bool retrying)
{
    uint64_t now = timers_now(a->f->timers);
    if (!a->failing_since)
        a->failing_since = now ? now : 1;
    a->failures++;
    uint64_t held = 0;
    if (!log_ratelimit(&a->warn_rl, now, FETCH_WARN_INTERVAL_MS, &held))
        return;
    /* Long id lists make long paths: the line keeps their beginning. */
    char path[128];
    size_t plen = strlen(r->path);
    snprintf(path, sizeof(path), "%.120s%s", r->path, plen > 120 ? "..." : "");
    log_warn("request failing", LOG_S("api", a->cfg.name), LOG_S("path", path),
             LOG_I("status", r->status), LOG_U("attempt", r->attempts), LOG_B("retrying", retrying),
             LOG_S("error", r->err), LOG_U("failures", a->failures),
             LOG_U("failing_s", (now - a->failing_since) / 1000), LOG_U("not_logged", held));
}

/* A success: the end of a run of failures is an info line. */
static void note_success(struct api *a)
{
    if (!a->failures)
        return;
    uint64_t now = timers_now(a->f->timers);
    log_info("requests succeed again", LOG_S("api", a->cfg.name), LOG_U("failures", a->failures),
             LOG_U("failing_s", (now - a->failing_since) / 1000));
    a->failures = 0;
    a->failing_since = 0;
    memset(&a->warn_rl, 0, sizeof(a->warn_rl));
}

static void api_kick(struct api *a)
{
    struct fetcher *f = a->f;
    uint64_t next = tbucket_dispatch(a->bucket, timers_now(f->timers));
    metrics_set("coingest_bucket_queued", a->label, (double)tbucket_queued(a->bucket));
    if (next == UINT64_MAX)
        timers_stop(f->timers, &a->bucket_timer);
    else
        timers_start_at(f->timers, &a->bucket_timer, next);
}

static void on_grant(struct tbucket_waiter *w, void *arg)
{
    struct fetch_req *r = arg;
    struct api *a = r->api;
    uint64_t now = timers_now(a->f->timers);
    if (now > w->enqueued_at)
        metrics_add("coingest_bucket_wait_seconds_total", a->label,
                    (double)(now - w->enqueued_at) / 1000.0);
    req_send(r, now);
}

static void req_wait_bucket(struct fetch_req *r)
{
    struct api *a = r->api;
    uint64_t now = timers_now(a->f->timers);
    if (tbucket_try_take(a->bucket, now)) {
        req_send(r, now);
        return;
    }
    r->state = REQ_BUCKET;
    tbucket_enqueue(a->bucket, &r->waiter, r->prio, on_grant, r, now);
    api_kick(a);
}

static void on_req_timer(struct wheel_timer *tm, void *arg)
{
    struct fetch_req *r = arg;
    struct fetcher *f = r->api->f;
    (void)tm;
    enter(f);
    if (r->state == REQ_DEFERRED)
        req_finish(r, r->fin_outcome, r->err);
    else if (r->state == REQ_BACKOFF)
        req_wait_bucket(r);
    leave(f);
}

static void on_bucket_timer(struct wheel_timer *tm, void *arg)
{
    struct api *a = arg;
    struct fetcher *f = a->f;
    (void)tm;
    enter(f);
    api_kick(a);
    leave(f);
}

/* Takes the request out of whatever it waits in. */
static void req_detach(struct fetch_req *r)
{
    struct api *a = r->api;
    switch (r->state) {
    case REQ_BUCKET:
        tbucket_cancel(a->bucket, &r->waiter);
        metrics_set("coingest_bucket_queued", a->label, (double)tbucket_queued(a->bucket));
        if (tbucket_queued(a->bucket) == 0)
            timers_stop(a->f->timers, &a->bucket_timer); /* no wake-up for nobody */
        break;
    case REQ_BACKOFF:
    case REQ_DEFERRED:
        timers_stop(a->f->timers, &r->timer);
        break;
    case REQ_FLIGHT:
        curl_multi_remove_handle(a->f->multi, r->easy);
        break;
    default:
        break;
    }
    r->state = REQ_IDLE;
}

static void req_free(struct fetch_req *r)
{
    if (r->easy)
        curl_easy_cleanup(r->easy);
    curl_slist_free_all(r->headers);
    free(r->body);
    free(r->path);
    free(r);
}

static const char *outcome_reason(enum fetch_outcome oc)
{
    switch (oc) {
    case FETCH_HTTP_ERROR:
        return "http";
    case FETCH_NETWORK_ERROR:
        return "network";
    case FETCH_BAD_BODY:
        return "bad_body";
    case FETCH_TOO_LARGE:
        return "too_large";
    default:
        return "other";
    }
}

/* Runs the done callback once and frees the request. Nothing may touch the API after the
 * callback: it may have been freed there. */
static void req_finish(struct fetch_req *r, enum fetch_outcome oc, const char *msg)
{
    struct api *a = r->api;
    req_detach(r);
    list_remove(&r->link);
    a->pending--;
    if (oc != FETCH_OK && msg)
        set_error(r, msg);
    if (oc != FETCH_OK && oc != FETCH_CANCELLED) {
        api_count(a, "coingest_http_errors_total", "reason", outcome_reason(oc), 1);
        note_failure(a, r, false);
    } else if (oc == FETCH_OK) {
        note_success(a);
    }
    struct fetch_result res = {
        .outcome = oc,
        .status = r->status,
        .body = r->body ? r->body : "",
        .len = r->len,
        .attempts = r->attempts,
        .seconds = (double)(uv_hrtime() - r->start_ns) / 1e9,
        .error = oc == FETCH_OK ? NULL : r->err,
    };
    r->state = REQ_DONE;
    r->done(&res, r->arg);
    req_free(r);
}

/* Attempts that count against max_retries: every one but those answered 429. */
static unsigned req_failures(const struct fetch_req *r)
{
    return r->attempts - r->rate_limited;
}

/* Retries after a backoff (or `min_delay_ms` if longer; straight to the bucket when
 * `no_backoff`), or finishes with `fail` when the retries are used up: max_retries failures,
 * or FETCH_RATE_LIMITED_MAX 429s (handle_429 counts them before calling this). */
static void req_retry(struct fetch_req *r, const char *reason, enum fetch_outcome fail,
                      const char *msg, uint64_t min_delay_ms, bool no_backoff)
{
    struct api *a = r->api;
    struct fetcher *f = a->f;
    set_error(r, msg);
    unsigned failures = req_failures(r);
    if (failures > a->cfg.max_retries || r->rate_limited >= FETCH_RATE_LIMITED_MAX) {
        req_finish(r, fail, r->err);
        return;
    }
    if (a->stopping) {
        /* No retry once the stop began: the run hears "cancelled" at once. */
        if (!no_backoff)
            note_failure(a, r, false);
        req_finish(r, FETCH_CANCELLED, "cancelled: stopping");
        return;
    }
    if (!no_backoff)
        note_failure(a, r, true); /* a 429 (no_backoff) has its own line per episode */
    api_count(a, "coingest_http_retries_total", "reason", reason, 1);
    uint64_t delay = no_backoff || failures == 0
                         ? 0
                         : backoff_full_jitter(&f->rng, a->cfg.backoff_base_ms,
                                               a->cfg.backoff_cap_ms, failures - 1);
    if (delay < min_delay_ms)
        delay = min_delay_ms;
    log_debug("retrying request", LOG_S("api", a->cfg.name), LOG_S("path", r->path),
              LOG_S("reason", reason), LOG_U("attempt", r->attempts), LOG_U("delay_ms", delay),
              LOG_S("error", r->err));
    if (delay == 0) {
        req_wait_bucket(r);
        return;
    }
    r->state = REQ_BACKOFF;
    wheel_timer_init(&r->timer, on_req_timer, r);
    timers_start(f->timers, &r->timer, delay);
}

static bool retryable_curl(CURLcode rc)
{
    switch (rc) {
    case CURLE_COULDNT_RESOLVE_HOST:
    case CURLE_COULDNT_RESOLVE_PROXY:
    case CURLE_COULDNT_CONNECT:
    case CURLE_PARTIAL_FILE:
    case CURLE_OPERATION_TIMEDOUT:
    case CURLE_GOT_NOTHING:
    case CURLE_SEND_ERROR:
    case CURLE_RECV_ERROR:
    case CURLE_HTTP2:
    case CURLE_HTTP2_STREAM:
    case CURLE_HTTP3:
    case CURLE_SSL_CONNECT_ERROR:
    case CURLE_BAD_CONTENT_ENCODING:
    case CURLE_WEIRD_SERVER_REPLY:
    case CURLE_AGAIN:
        return true;
    default:
        return false;
    }
}

static const char *curl_reason(CURLcode rc)
{
    switch (rc) {
    case CURLE_OPERATION_TIMEDOUT:
        return "timeout";
    case CURLE_PARTIAL_FILE:
    case CURLE_BAD_CONTENT_ENCODING:
        return "truncated";
    default:
        return "network";
    }
}

static void handle_429(struct fetch_req *r, const char *retry_after, const char *msg)
{
    struct api *a = r->api;
    struct fetcher *f = a->f;
    uint64_t delay = 0;
    bool advised = retry_after &&
                   fetch_parse_retry_after(retry_after, util_wall_ms(), &delay) == 0 && delay > 0;
    r->rate_limited++;
    if (!advised)
        delay = backoff_full_jitter(&f->rng, a->cfg.backoff_base_ms, a->cfg.backoff_cap_ms,
                                    r->rate_limited - 1);
    if (delay > FETCH_RETRY_AFTER_MAX_MS)
        delay = FETCH_RETRY_AFTER_MAX_MS;
    api_count(a, "coingest_http_429_total", NULL, NULL, 1);
    uint64_t until = timers_now(f->timers) + delay;
    tbucket_pause_until(a->bucket, until);
    if (until > a->rl_until)
        a->rl_until = until;
    if (!a->rl_episode) {
        a->rl_episode = true;
        log_warn(advised ? "rate limited, pausing" : "rate limited, backing off",
                 LOG_S("api", a->cfg.name), LOG_F("wait_s", (double)delay / 1000.0),
                 LOG_B("retry_after", advised));
    }
    /* The paused bucket is the wait: the request queues there like any other. */
    req_retry(r, "429", FETCH_HTTP_ERROR, msg, 0, true);
}

/* Did the attempt fail on its response headers? Over FETCH_HEADER_MAX in all (on_header), or
 * one header line over curl's limit, which curl reports as out of memory (7.x) or too large
 * (8.6 on) while a response's headers are being read. */
static bool header_too_large(const struct fetch_req *r, CURLcode rc)
{
    if (r->header_too_large)
        return true;
#if LIBCURL_VERSION_NUM >= 0x080600
    if (rc == CURLE_TOO_LARGE && r->in_headers)
        return true;
#endif
    return rc == CURLE_OUT_OF_MEMORY && r->in_headers;
}

static void on_transfer_done(struct fetch_req *r, CURLcode rc)
{
    struct api *a = r->api;
    struct fetcher *f = a->f;
    char msg[FETCH_MSG_MAX];
    char retry_after[128] = "";
    long status = 0;
    struct curl_header *h;

    curl_easy_getinfo(r->easy, CURLINFO_RESPONSE_CODE, &status);
    if (curl_easy_header(r->easy, "Retry-After", 0, CURLH_HEADER, -1, &h) == CURLHE_OK)
        snprintf(retry_after, sizeof(retry_after), "%s", h->value);
    curl_multi_remove_handle(f->multi, r->easy);
    r->state = REQ_IDLE;
    r->status = status;

    char st[24] = "none";
    if (status > 0)
        snprintf(st, sizeof(st), "%ld", status);
    api_count(a, "coingest_http_requests_total", "status", st, 1);
    if (r->len > 0)
        api_count(a, "coingest_http_bytes_total", NULL, NULL, (double)r->len);

    if (r->too_large || rc == CURLE_FILESIZE_EXCEEDED) {
        log_warn("response too large, aborted", LOG_S("api", a->cfg.name), LOG_S("path", r->path),
                 LOG_U("max_body_bytes", r->max_body));
        snprintf(msg, sizeof(msg), "response body larger than max_body_bytes (%zu)", r->max_body);
        req_finish(r, FETCH_TOO_LARGE, msg);
        return;
    }
    if (r->oom) {
        req_finish(r, FETCH_NETWORK_ERROR, "out of memory for the response body");
        return;
    }
    if (header_too_large(r, rc)) {
        snprintf(msg, sizeof(msg), "response header too large (over %u KiB)",
                 FETCH_HEADER_MAX / 1024u);
        req_retry(r, "header_too_large", FETCH_NETWORK_ERROR, msg, 0, false);
        return;
    }
    if (rc != CURLE_OK) {
        snprintf(msg, sizeof(msg), "%s", r->curl_err[0] ? r->curl_err : curl_easy_strerror(rc));
        if (retryable_curl(rc))
            req_retry(r, curl_reason(rc), FETCH_NETWORK_ERROR, msg, 0, false);
        else
            req_finish(r, FETCH_NETWORK_ERROR, msg);
        return;
    }
    if (status != 429 && r->sent_at >= a->rl_until)
        a->rl_episode = false;

    if (status >= 200 && status < 300) {
        if (!looks_like_json(r->body, r->len)) {
            char snippet[64];
            copy_masked(snippet, sizeof(snippet), r->body ? r->body : "", r->len);
            snprintf(msg, sizeof(msg), "response is not JSON: \"%s\"", snippet);
            req_retry(r, "bad_body", FETCH_BAD_BODY, msg, 0, false);
            return;
        }
        if (r->parse) {
            char perr[FETCH_MSG_MAX - 8] = "";
            r->state = REQ_PARSING;
            int prc = r->parse(r->body, r->len, r->arg, perr, sizeof(perr));
            r->state = REQ_IDLE;
            if (r->cancel_requested) {
                req_finish(r, FETCH_CANCELLED, "cancelled");
                return;
            }
            if (prc == -E2BIG) {
                /* The body's shape would take too much memory: no retry brings a better one
                 * sooner than the next run. */
                snprintf(msg, sizeof(msg), "parse: %s", perr[0] ? perr : "too large to parse");
                log_warn("response refused: too large to parse", LOG_S("api", a->cfg.name),
                         LOG_S("path", r->path), LOG_U("bytes", r->len));
                req_finish(r, FETCH_TOO_LARGE, msg);
                return;
            }
            if (prc == -EPROTO) {
                /* The API's own error or notice: asking again gets the same answer. */
                snprintf(msg, sizeof(msg), "%s", perr[0] ? perr : "the API answered an error");
                req_finish(r, FETCH_BAD_BODY, msg);
                return;
            }
            if (prc < 0) {
                snprintf(msg, sizeof(msg), "parse: %s", perr[0] ? perr : "rejected");
                req_retry(r, "parse", FETCH_BAD_BODY, msg, 0, false);
                return;
            }
        }
        req_finish(r, FETCH_OK, NULL);
        return;
    }

    const struct source_def *def = r->api->cfg.def;
    int (*read_error)(const char *, size_t, char *, size_t) =
        def && def->error_message ? def->error_message : fetch_api_error_message;
    if (read_error(r->body, r->len, msg, sizeof(msg)) != 0)
        snprintf(msg, sizeof(msg), "HTTP %ld", status);
    /* A 429 that says the month's credits are spent is no rate limit: waiting a minute does
     * not bring them back. Final, so that the runner stops the API until the month rolls over
     * (source.h, credits_exhausted) instead of retrying it 50 times. */
    if (status == 429 && def && def->credits_exhausted && def->credits_exhausted(status, msg)) {
        req_finish(r, FETCH_HTTP_ERROR, msg);
        return;
    }
    if (status == 429) {
        handle_429(r, retry_after, msg);
        return;
    }
    if (status == 408 || status >= 500) {
        uint64_t advised = 0;
        if (status == 503 && retry_after[0] &&
            fetch_parse_retry_after(retry_after, util_wall_ms(), &advised) != 0)
            advised = 0;
        if (advised > FETCH_RETRY_AFTER_MAX_MS)
            advised = FETCH_RETRY_AFTER_MAX_MS;
        req_retry(r, status == 408 ? "408" : "5xx", FETCH_HTTP_ERROR, msg, advised, false);
        return;
    }
    req_finish(r, FETCH_HTTP_ERROR, msg);
}

/* ---- APIs ------------------------------------------------------------------------------- */

static void source_clear(struct cfg_source *c)
{
    free(c->name);
    free(c->base_url);
    if (c->api_key) {
        explicit_bzero(c->api_key, strlen(c->api_key));
        free(c->api_key);
    }
    free(c->ca_file);
    memset(c, 0, sizeof(*c));
}

/* Deep copy with the engine's defaults for unset values. */
static int source_copy(struct cfg_source *dst, const struct cfg_source *src)
{
    struct cfg_source c = *src;
    const struct source_plan *plan = api_plan(src);
    const char *base = src->base_url && *src->base_url ? src->base_url : plan ? plan->base_url : "";
    c.values = NULL; /* the source's own keys belong to its jobs, not to the engine */
    c.name = strdup(src->name && *src->name ? src->name : "api");
    c.base_url = strdup(base);
    c.api_key = util_strdup0(src->api_key);
    c.ca_file = util_strdup0(src->ca_file && *src->ca_file ? src->ca_file : NULL);
    if (!c.name || !c.base_url || (src->api_key && !c.api_key) ||
        (src->ca_file && *src->ca_file && !c.ca_file)) {
        source_clear(&c);
        return -ENOMEM;
    }
    size_t n = strlen(c.base_url);
    while (n > 0 && c.base_url[n - 1] == '/')
        c.base_url[--n] = '\0';
    if (c.timeout_ms == 0)
        c.timeout_ms = FETCH_DEFAULT_TIMEOUT_MS;
    if (c.connect_timeout_ms == 0)
        c.connect_timeout_ms = FETCH_DEFAULT_CONNECT_MS;
    if (c.max_body_bytes == 0)
        c.max_body_bytes = FETCH_DEFAULT_BODY_MAX;
    if (c.burst == 0)
        c.burst = 1;
    *dst = c;
    return 0;
}

/* The bucket's rate: a zero rate means "no limit" (a million per second). */
static struct rate api_rate(const struct cfg_source *c, uint32_t *burst)
{
    *burst = c->burst ? c->burst : 1;
    if (c->rate_limit.count == 0 || c->rate_limit.period_ms == 0) {
        if (*burst < 1000)
            *burst = 1000;
        return (struct rate){.count = 1000, .period_ms = 1};
    }
    return c->rate_limit;
}

static void api_set_label(struct api *a)
{
    char name[64];
    size_t j = 0;
    /* Label values are quoted; keep the name to characters that need no escaping. */
    for (const char *p = a->cfg.name; *p && j < sizeof(name) - 1; p++)
        name[j++] = (*p == '"' || *p == '\\' || (unsigned char)*p < 0x20) ? '_' : *p;
    name[j] = '\0';
    snprintf(a->label, sizeof(a->label), "api=\"%s\"", name);
}

struct api *api_new(struct fetcher *f, const struct cfg_source *src)
{
    if (!f || !src || f->closing)
        return NULL;
    struct api *a = calloc(1, sizeof(*a));
    if (!a)
        return NULL;
    if (source_copy(&a->cfg, src) != 0)
        goto fail_copy;
    log_add_secret(a->cfg.api_key); /* masked in every log line and error message */
    uint32_t burst;
    struct rate rate = api_rate(&a->cfg, &burst);
    a->bucket = tbucket_new(rate, burst, timers_now(f->timers));
    if (!a->bucket)
        goto fail_bucket;
    a->f = f;
    api_set_label(a);
    wheel_timer_init(&a->bucket_timer, on_bucket_timer, a);
    list_init(&a->reqs);
    list_append(&f->apis, &a->link);
    const struct source_plan *plan = api_plan(&a->cfg);
    if (plan && plan->key_header && !(a->cfg.api_key && *a->cfg.api_key))
        log_warn("no API key for a keyed plan; requests go without one", LOG_S("api", a->cfg.name),
                 LOG_S("plan", plan->name));
    metrics_set("coingest_bucket_queued", a->label, 0);
    return a;

fail_bucket:
    source_clear(&a->cfg);
fail_copy:
    free(a);
    return NULL;
}

void api_update(struct api *a, const struct cfg_source *src)
{
    if (!a || !src)
        return;
    struct cfg_source c;
    if (source_copy(&c, src) != 0) {
        log_warn("api update failed: out of memory; keeping the old settings",
                 LOG_S("api", a->cfg.name));
        return;
    }
    bool rate_changed = c.rate_limit.count != a->cfg.rate_limit.count ||
                        c.rate_limit.period_ms != a->cfg.rate_limit.period_ms ||
                        c.burst != a->cfg.burst;
    /* In-flight transfers do not point into the old strings: curl copies string options and
     * each request owns its header list. */
    source_clear(&a->cfg);
    a->cfg = c;
    log_add_secret(a->cfg.api_key);
    api_set_label(a);
    if (rate_changed) {
        uint32_t burst;
        struct rate rate = api_rate(&a->cfg, &burst);
        tbucket_resize(a->bucket, rate, burst, timers_now(a->f->timers));
        api_kick(a);
    }
}

/* Cancels the API's requests created before `limit` (all of them for UINT64_MAX). A request
 * inside its parse callback is only marked; it finishes when the parse returns. */
static void cancel_reqs(struct api *a, uint64_t limit)
{
    for (;;) {
        struct fetch_req *victim = NULL;
        struct list_link *l;
        LIST_FOR_EACH (l, &a->reqs) {
            struct fetch_req *r = LIST_CONTAINER_OF(l, struct fetch_req, link);
            if (r->seq >= limit)
                break;
            if (r->state == REQ_PARSING) {
                r->cancel_requested = true;
                continue;
            }
            victim = r;
            break;
        }
        if (!victim)
            return;
        req_finish(victim, FETCH_CANCELLED, "cancelled");
    }
}

void api_cancel_all(struct api *a)
{
    if (a)
        cancel_reqs(a, a->f->next_seq);
}

/* A request api_stop ends at once: one waiting for a token, a backoff or a 429 pause. */
static struct fetch_req *first_waiting(struct api *a)
{
    struct list_link *l;
    LIST_FOR_EACH (l, &a->reqs) {
        struct fetch_req *r = LIST_CONTAINER_OF(l, struct fetch_req, link);
        if (r->state == REQ_BUCKET || r->state == REQ_BACKOFF)
            return r;
    }
    return NULL;
}

void api_stop(struct api *a)
{
    if (!a || a->stopping)
        return;
    a->stopping = true;
    struct fetch_req *r;
    /* Searched again after each one: a done callback may start (and so end) others. */
    while ((r = first_waiting(a)) != NULL)
        req_finish(r, FETCH_CANCELLED, "cancelled: stopping");
}

void api_get_stats(const struct api *a, struct api_stats *out)
{
    memset(out, 0, sizeof(*out));
    if (!a)
        return;
    uint64_t now = timers_now(a->f->timers);
    uint64_t sec = now / 1000;
    for (size_t i = 0; i < FETCH_CALLS_SLOTS; i++)
        if (a->calls_stamp[i] + FETCH_CALLS_SLOTS > sec && a->calls_stamp[i] <= sec)
            out->calls_last_minute += a->calls_sec[i];
    out->calls_total = a->calls_total;
    out->pending = a->pending;
    struct list_link *l;
    LIST_FOR_EACH (l, &a->reqs) {
        const struct fetch_req *r = LIST_CONTAINER_OF(l, struct fetch_req, link);
        if (r->state == REQ_FLIGHT || r->state == REQ_PARSING)
            out->in_flight++;
    }
    out->failures = a->failures;
    out->failing_ms = a->failing_since ? now - a->failing_since : 0;
    out->tokens = tbucket_tokens(a->bucket, now);
    out->burst = a->cfg.burst;
    uint64_t paused = tbucket_paused_until(a->bucket);
    out->paused_ms = paused > now ? paused - now : 0;
    out->stopping = a->stopping;
}

void api_free(struct api *a)
{
    if (!a)
        return;
    struct fetcher *f = a->f;
    a->closing = true;
    cancel_reqs(a, UINT64_MAX);
    timers_stop(f->timers, &a->bucket_timer);
    list_remove(&a->link);
    metrics_set("coingest_bucket_queued", a->label, 0);
    tbucket_free(a->bucket);
    source_clear(&a->cfg);
    free(a);
}

struct fetch_req *api_get(struct api *a, const char *path_query, int prio, fetch_parse_cb parse,
                          fetch_done_cb done, void *arg)
{
    return api_get_limited(a, path_query, prio, 0, parse, done, arg);
}

struct fetch_req *api_get_limited(struct api *a, const char *path_query, int prio, size_t max_body,
                                  fetch_parse_cb parse, fetch_done_cb done, void *arg)
{
    if (!a || !path_query || !done || a->closing || a->f->closing)
        return NULL;
    struct fetcher *f = a->f;
    struct fetch_req *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->path = strdup(path_query);
    if (!r->path) {
        free(r);
        return NULL;
    }
    r->api = a;
    r->seq = f->next_seq++;
    r->prio = prio < 0 ? 0 : prio >= TBUCKET_PRIO_COUNT ? TBUCKET_PRIO_COUNT - 1 : prio;
    r->parse = parse;
    r->done = done;
    r->arg = arg;
    r->body_limit = max_body;
    r->start_ns = uv_hrtime();
    wheel_timer_init(&r->timer, on_req_timer, r);
    list_append(&a->reqs, &r->link);
    a->pending++;
    if (path_query[0] != '/') {
        req_defer_finish(r, FETCH_HTTP_ERROR, "path must start with '/'");
        return r;
    }
    if (a->stopping) {
        req_defer_finish(r, FETCH_CANCELLED, "cancelled: stopping");
        return r;
    }
    req_wait_bucket(r);
    return r;
}

void fetch_cancel(struct fetch_req *r)
{
    if (!r || r->state == REQ_DONE)
        return;
    if (r->state == REQ_PARSING) {
        r->cancel_requested = true;
        return;
    }
    req_finish(r, FETCH_CANCELLED, "cancelled");
}

size_t api_pending(const struct api *a)
{
    return a ? a->pending : 0;
}

struct tbucket *api_bucket(struct api *a)
{
    return a ? a->bucket : NULL;
}

/* ---- the engine ------------------------------------------------------------------------- */

struct fetcher *fetcher_new(uv_loop_t *loop, struct timers *timers)
{
    if (!loop || !timers)
        return NULL;
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK)
        return NULL;
    struct fetcher *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->loop = loop;
    f->timers = timers;
    list_init(&f->apis);
    list_init(&f->socks);
    rng_seed(&f->rng, uv_hrtime() ^ (uint64_t)(uintptr_t)f);
    f->multi = curl_multi_init();
    if (!f->multi)
        goto fail_multi;
    /* Both only register the handle with the loop; libuv's return 0 always. */
    if (uv_timer_init(loop, &f->curl_timer) != 0 || uv_idle_init(loop, &f->curl_now) != 0)
        goto fail_timer;
    f->curl_timer.data = f;
    f->curl_now.data = f;
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETFUNCTION, on_curl_socket);
    curl_multi_setopt(f->multi, CURLMOPT_SOCKETDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERFUNCTION, on_curl_timer);
    curl_multi_setopt(f->multi, CURLMOPT_TIMERDATA, f);
    curl_multi_setopt(f->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(f->multi, CURLMOPT_MAX_HOST_CONNECTIONS, (long)FETCH_MAX_HOST_CONNS);
    curl_multi_setopt(f->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)FETCH_MAX_TOTAL_CONNS);
    return f;

fail_timer:
    curl_multi_cleanup(f->multi);
fail_multi:
    free(f);
    return NULL;
}

/* Destroys the multi (curl closes its cached connections, telling us to stop polling their
 * sockets first) and closes the timer and the idle handle; the memory goes when the last close
 * callback ran. */
static void teardown(struct fetcher *f)
{
    f->torn_down = true;
    uv_timer_stop(&f->curl_timer);
    uv_idle_stop(&f->curl_now);
    curl_multi_cleanup(f->multi);
    f->multi = NULL;
    /* curl removes every socket it watched before closing it; anything left is closed here
     * rather than left polling for a freed fetcher. */
    struct list_link *l;
    while ((l = list_first(&f->socks)) != NULL)
        sock_close(f, LIST_CONTAINER_OF(l, struct sock, link));
    f->closing_handles += 2;
    uv_close((uv_handle_t *)&f->curl_timer, on_handle_closed);
    uv_close((uv_handle_t *)&f->curl_now, on_handle_closed);
}

/* An API with a request that cancel_reqs would cancel (one not inside its parse callback). */
static struct api *api_with_cancellable(struct fetcher *f)
{
    struct list_link *l, *k;
    LIST_FOR_EACH (l, &f->apis) {
        struct api *a = LIST_CONTAINER_OF(l, struct api, link);
        LIST_FOR_EACH (k, &a->reqs)
            if (LIST_CONTAINER_OF(k, struct fetch_req, link)->state != REQ_PARSING)
                return a;
    }
    return NULL;
}

void fetcher_free(struct fetcher *f, void (*cb)(void *arg), void *arg)
{
    if (!f || f->closing)
        return;
    f->closing = true;
    f->free_cb = cb;
    f->free_arg = arg;
    /* Done callbacks may free APIs, so the list is searched again after every API. */
    struct api *busy;
    while ((busy = api_with_cancellable(f)) != NULL)
        cancel_reqs(busy, UINT64_MAX);
    if (f->depth == 0)
        teardown(f);
}
