/*
 * export s3: PUT and DELETE of exported files on S3 or an S3-compatible store, from the
 * export's work thread, one blocking request at a time (curl easy; the loop's curl multi is
 * not involved).
 *
 * Signing: libcurl's CURLOPT_AWS_SIGV4 ("aws:amz:REGION:s3") with the access key as user and
 * the secret as password. libcurl cannot hash an upload it reads through a callback; it takes
 * the payload hash from an x-amz-content-sha256 header the caller sets (curl PR #9804; without
 * it recent versions sign S3 requests as UNSIGNED-PAYLOAD). So every request carries that
 * header with the real sha256 (of the file, or of the empty body), which S3 requires and
 * verifies against the body; a PUT also carries Content-MD5, which the store checks too. The
 * answer's ETag (the MD5 of a single-part upload) must then equal the file's md5: only then is
 * the part confirmed. The key in the URL is percent-encoded per segment as SigV4's canonical
 * URI wants it ('=' of date= becomes %3D), since libcurl signs the path as given.
 *
 * Pacing: the uploads have their own token bucket (tbucket.h, used from this thread only),
 * s3_requests_per_second tokens a second, burst the same. Retries: network errors, 5xx, 429
 * and 408 are retried up to s3_retries times with full-jitter backoff (backoff.h); other
 * answers are final.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include <curl/curl.h>
#include <openssl/evp.h>

#include "coingest/backoff.h"
#include "coingest/log.h"
#include "coingest/sbuf.h"
#include "coingest/tbucket.h"
#include "coingest/util.h"
#include "sources/export/export.h"

/* sha256 of the empty string, the payload hash of a request without a body. */
#define EMPTY_SHA256 "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

struct export_s3_client {
    const struct export_plan *p;
    CURL *h;
    struct tbucket *bucket;
    struct rng rng;
    char sigv4[128];
    struct sbuf body; /* the answer's body, kept short, for error messages */
    char etag[128];
};

struct export_s3_client *export_s3_new(const struct export_plan *p)
{
    struct export_s3_client *c = calloc(1, sizeof(*c));
    if (!c)
        return NULL;
    c->p = p;
    uint64_t rps = p->s3.requests_per_second ? p->s3.requests_per_second : 1;
    c->bucket = tbucket_new((struct rate){(uint32_t)rps, 1000}, (uint32_t)rps, util_mono_ms());
    c->h = curl_easy_init();
    if (!c->bucket || !c->h) {
        export_s3_free(c);
        return NULL;
    }
    rng_seed(&c->rng, util_wall_ms() ^ (uint64_t)(uintptr_t)c);
    snprintf(c->sigv4, sizeof(c->sigv4), "aws:amz:%s:s3", p->s3.region);
    return c;
}

void export_s3_free(struct export_s3_client *c)
{
    if (!c)
        return;
    if (c->h)
        curl_easy_cleanup(c->h);
    tbucket_free(c->bucket);
    sbuf_free(&c->body);
    free(c);
}

int export_s3_key(const struct export_s3 *s3, const char *table, const char *date, const char *name,
                  char *buf, size_t cap)
{
    const char *prefix = s3->prefix ? s3->prefix : "";
    while (*prefix == '/')
        prefix++;
    size_t pl = strlen(prefix);
    while (pl && prefix[pl - 1] == '/')
        pl--;
    int n = snprintf(buf, cap, "%.*s%s%s/date=%s/%s", (int)pl, prefix, pl ? "/" : "", table, date,
                     name);
    return n < 0 || (size_t)n >= cap ? -ENAMETOOLONG : 0;
}

/* Sleeps ms in slices, returning early (false) when the run is cancelled. */
static bool nap(const struct export_plan *p, uint64_t ms)
{
    while (ms > 0 && !atomic_load(&((struct export_plan *)p)->cancel)) {
        uint64_t step = ms < 100 ? ms : 100;
        struct timespec ts = {(time_t)(step / 1000), (long)(step % 1000) * 1000000l};
        nanosleep(&ts, NULL);
        ms -= step;
    }
    return !atomic_load(&((struct export_plan *)p)->cancel);
}

/* Waits for a token of the uploads' bucket. */
static bool take_token(struct export_s3_client *c)
{
    for (;;) {
        uint64_t now = util_mono_ms();
        if (tbucket_try_take(c->bucket, now))
            return true;
        double tokens = tbucket_tokens(c->bucket, now);
        uint64_t rps = c->p->s3.requests_per_second ? c->p->s3.requests_per_second : 1;
        uint64_t wait = (uint64_t)((1.0 - tokens) * 1000.0 / (double)rps) + 1;
        if (!nap(c->p, wait))
            return false;
    }
}

static size_t on_body(char *data, size_t size, size_t n, void *arg)
{
    struct export_s3_client *c = arg;
    size_t len = size * n;
    if (c->body.len < 2048)
        sbuf_append(&c->body, data, len < 2048 - c->body.len ? len : 2048 - c->body.len);
    return len;
}

static size_t on_header(char *data, size_t size, size_t n, void *arg)
{
    struct export_s3_client *c = arg;
    size_t len = size * n;
    if (len > 5 && strncasecmp(data, "etag:", 5) == 0) {
        const char *v = data + 5;
        size_t vl = len - 5;
        while (vl && (*v == ' ' || *v == '"')) {
            v++;
            vl--;
        }
        while (vl &&
               (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == '"' || v[vl - 1] == ' '))
            vl--;
        util_copy_clean(c->etag, sizeof(c->etag), v, vl);
    }
    return len;
}

/* The URL of a key: endpoint/bucket/key (path style) or scheme://bucket.host/key. */
static int build_url(const struct export_s3 *s3, const char *key, struct sbuf *url)
{
    char dflt[128];
    const char *ep = s3->endpoint;
    if (!ep || !*ep) {
        snprintf(dflt, sizeof(dflt), "https://s3.%s.amazonaws.com", s3->region);
        ep = dflt;
    }
    const char *host = strstr(ep, "://");
    if (!host)
        return -EINVAL;
    host += 3;
    if (s3->path_style)
        sbuf_printf(url, "%s/%s/", ep, s3->bucket);
    else
        sbuf_printf(url, "%.*s%s.%s/", (int)(host - ep), ep, s3->bucket, host);
    for (const unsigned char *k = (const unsigned char *)key; *k; k++) {
        if ((*k >= 'A' && *k <= 'Z') || (*k >= 'a' && *k <= 'z') || (*k >= '0' && *k <= '9') ||
            *k == '-' || *k == '_' || *k == '.' || *k == '~' || *k == '/')
            sbuf_putc(url, (char)*k);
        else
            sbuf_printf(url, "%%%02X", *k);
    }
    return sbuf_failed(url) ? -ENOMEM : 0;
}

static bool retryable(CURLcode cc, long status)
{
    if (cc != CURLE_OK)
        return cc != CURLE_READ_ERROR && cc != CURLE_OUT_OF_MEMORY;
    return status >= 500 || status == 429 || status == 408;
}

/* One request (method PUT with the file `f`, or DELETE), retried; the final status in *status. */
static int request(struct export_s3_client *c, const char *method, const char *key, FILE *f,
                   uint64_t size, const char *ctype, const char *sha256_hex, const char *md5_b64,
                   long *status, char *err, size_t errlen)
{
    const struct export_plan *p = c->p;
    struct sbuf url = {0};
    int rc = build_url(&p->s3, key, &url);
    if (rc) {
        snprintf(err, errlen, "cannot build the URL of %s", key);
        sbuf_free(&url);
        return rc;
    }
    struct curl_slist *hdrs = NULL;
    char line[256];
    snprintf(line, sizeof(line), "x-amz-content-sha256: %s", sha256_hex);
    hdrs = curl_slist_append(hdrs, line);
    if (md5_b64) {
        snprintf(line, sizeof(line), "Content-MD5: %s", md5_b64);
        hdrs = curl_slist_append(hdrs, line);
    }
    if (ctype) {
        snprintf(line, sizeof(line), "Content-Type: %s", ctype);
        hdrs = curl_slist_append(hdrs, line);
    }
    struct sbuf tok = {0};
    if (p->s3.session_token) {
        sbuf_printf(&tok, "x-amz-security-token: %s", p->s3.session_token);
        hdrs = sbuf_failed(&tok) ? NULL : curl_slist_append(hdrs, tok.p);
    }
    if (!hdrs) {
        sbuf_free(&url);
        sbuf_free(&tok);
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    rc = -EIO;
    for (uint32_t attempt = 0; attempt <= p->s3.retries; attempt++) {
        if (attempt > 0 && !nap(p, backoff_full_jitter(&c->rng, p->s3.retry_base_ms,
                                                       p->s3.retry_cap_ms, attempt - 1))) {
            rc = -ECANCELED;
            break;
        }
        if (!take_token(c)) {
            rc = -ECANCELED;
            break;
        }
        CURL *h = c->h;
        curl_easy_reset(h);
        sbuf_reset(&c->body);
        c->etag[0] = '\0';
        curl_easy_setopt(h, CURLOPT_URL, url.p);
        curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
        curl_easy_setopt(h, CURLOPT_AWS_SIGV4, c->sigv4);
        curl_easy_setopt(h, CURLOPT_USERNAME, p->s3.access_key);
        curl_easy_setopt(h, CURLOPT_PASSWORD, p->s3.secret_key);
        curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, c);
        curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, on_header);
        curl_easy_setopt(h, CURLOPT_HEADERDATA, c);
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, (long)p->s3.timeout_ms);
        curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        if (f) {
            rewind(f);
            curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
            curl_easy_setopt(h, CURLOPT_READDATA, f);
            curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t)size);
        } else {
            curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
            curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
        }
        CURLcode cc = curl_easy_perform(h);
        *status = 0;
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, status);
        if (cc == CURLE_OK && *status >= 200 && *status < 300) {
            rc = 0;
            break;
        }
        if (cc == CURLE_OK && strcmp(method, "DELETE") == 0 && *status == 404) {
            rc = 0;
            break;
        }
        if (cc != CURLE_OK)
            snprintf(err, errlen, "%s %s: %s", method, key, curl_easy_strerror(cc));
        else
            snprintf(err, errlen, "%s %s: HTTP %ld: %.300s", method, key, *status,
                     c->body.p ? c->body.p : "");
        log_warn("export upload attempt failed", LOG_S("error", err), LOG_U("attempt", attempt));
        if (!retryable(cc, *status))
            break;
    }
    curl_slist_free_all(hdrs);
    sbuf_free(&url);
    sbuf_free(&tok);
    return rc;
}

int export_s3_put(struct export_s3_client *c, const char *key, const char *path,
                  const char *content_type, const char *sha256_hex, const char *md5_hex, char *err,
                  size_t errlen)
{
    unsigned char md5[16];
    for (int i = 0; i < 16; i++) {
        unsigned v;
        if (sscanf(md5_hex + 2 * i, "%2x", &v) != 1)
            return -EINVAL;
        md5[i] = (unsigned char)v;
    }
    char b64[32];
    EVP_EncodeBlock((unsigned char *)b64, md5, 16);
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -errno;
    }
    struct stat sb;
    if (fstat(fileno(f), &sb) < 0) {
        int e = errno;
        fclose(f);
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    long status = 0;
    int rc = request(c, "PUT", key, f, (uint64_t)sb.st_size, content_type, sha256_hex, b64, &status,
                     err, errlen);
    fclose(f);
    if (rc)
        return rc;
    if (strcasecmp(c->etag, md5_hex) != 0) {
        snprintf(err, errlen, "PUT %s: the store's ETag \"%s\" is not the file's md5 %s", key,
                 c->etag, md5_hex);
        return -EBADMSG;
    }
    return 0;
}

int export_s3_delete(struct export_s3_client *c, const char *key, char *err, size_t errlen)
{
    long status = 0;
    return request(c, "DELETE", key, NULL, 0, NULL, EMPTY_SHA256, NULL, &status, err, errlen);
}
