/*
 * fakeapi_proc: the fake API as a child process, and a blocking client for its control API.
 *
 * The port comes back through a pipe (--port-fd): the child writes "PORT\n" once its socket
 * listens, and the parent's read() returns then, or at EOF if the child died first. A poll()
 * with a generous limit guards against a child that hangs before listening.
 */
#include "fakeapi_proc.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <limits.h>
#include <unistd.h>

#define FAKEAPI_START_TIMEOUT_MS 30000
#define FAKEAPI_MAX_ARGS         64

struct fakeapi {
    pid_t pid;
    int port;
    char base_url[64];
    char root_url[48];
    CURL *easy;
};

bool fakeapi_available(void)
{
    const char *script = getenv("FAKEAPI");
    if (!script || !*script || access(script, R_OK) != 0)
        return false;
    return system("python3 -c '' >/dev/null 2>&1") == 0;
}

struct fakeapi *fakeapi_start(const char *const *extra_args)
{
    return fakeapi_start_script(NULL, "/api/v3", extra_args);
}

struct fakeapi *fakeapi_start_script(const char *name, const char *prefix,
                                     const char *const *extra_args)
{
    const char *fake = getenv("FAKEAPI");
    if (!fake || !*fake) {
        fprintf(stderr, "fakeapi: FAKEAPI is not set\n");
        return NULL;
    }
    char path[PATH_MAX];
    const char *script = fake;
    if (name) {
        /* Another API's fake lives beside fakeapi.py. */
        const char *slash = strrchr(fake, '/');
        int dir = slash ? (int)(slash - fake) : 1;
        snprintf(path, sizeof(path), "%.*s/%s", dir, slash ? fake : ".", name);
        script = path;
    }
    int fds[2];
    if (pipe(fds) != 0) {
        perror("fakeapi: pipe");
        return NULL;
    }
    fcntl(fds[0], F_SETFD, FD_CLOEXEC);

    char fdarg[16];
    snprintf(fdarg, sizeof(fdarg), "%d", fds[1]);
    const char *argv[FAKEAPI_MAX_ARGS + 8];
    size_t n = 0;
    argv[n++] = "python3";
    argv[n++] = script;
    argv[n++] = "--port";
    argv[n++] = "0";
    argv[n++] = "--port-fd";
    argv[n++] = fdarg;
    for (size_t i = 0; extra_args && extra_args[i] && i < FAKEAPI_MAX_ARGS; i++)
        argv[n++] = extra_args[i];
    argv[n] = NULL;

    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fakeapi: fork");
        close(fds[0]);
        close(fds[1]);
        return NULL;
    }
    if (pid == 0) {
        execvp("python3", (char *const *)argv);
        perror("fakeapi: exec python3");
        _exit(127);
    }
    close(fds[1]);

    char buf[32];
    size_t got = 0;
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    while (got < sizeof(buf) - 1 && !memchr(buf, '\n', got)) {
        int pr = poll(&pfd, 1, FAKEAPI_START_TIMEOUT_MS);
        if (pr <= 0)
            break;
        ssize_t r = read(fds[0], buf + got, sizeof(buf) - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    buf[got] = '\0';
    int port = atoi(buf);
    if (port <= 0) {
        fprintf(stderr, "fakeapi: the server did not start (see its messages above)\n");
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return NULL;
    }

    struct fakeapi *f = calloc(1, sizeof(*f));
    if (!f) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return NULL;
    }
    f->pid = pid;
    f->port = port;
    snprintf(f->base_url, sizeof(f->base_url), "http://127.0.0.1:%d%s", port, prefix ? prefix : "");
    snprintf(f->root_url, sizeof(f->root_url), "http://127.0.0.1:%d", port);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    return f;
}

int fakeapi_port(const struct fakeapi *f)
{
    return f->port;
}

const char *fakeapi_base_url(const struct fakeapi *f)
{
    return f->base_url;
}

struct membuf {
    char *data;
    size_t len;
};

static size_t collect(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct membuf *b = ud;
    size_t n = size * nmemb;
    char *nd = realloc(b->data, b->len + n + 1);
    if (!nd)
        return 0;
    memcpy(nd + b->len, ptr, n);
    b->data = nd;
    b->len += n;
    b->data[b->len] = '\0';
    return n;
}

int fakeapi_control(struct fakeapi *f, const char *method, const char *path, const char *json_body,
                    char **response)
{
    if (response)
        *response = NULL;
    if (!f->easy && !(f->easy = curl_easy_init()))
        return -ENOMEM;
    CURL *e = f->easy;
    curl_easy_reset(e);
    char url[512];
    snprintf(url, sizeof(url), "%s%s", f->root_url, path);
    struct membuf b = {0};
    struct curl_slist *h = curl_slist_append(NULL, "Content-Type: application/json");
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, 60L);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, collect);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, &b);
    if (json_body) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, json_body);
    } else if (strcmp(method, "POST") == 0) {
        curl_easy_setopt(e, CURLOPT_POSTFIELDS, "");
    }
    CURLcode rc = curl_easy_perform(e);
    curl_slist_free_all(h);
    if (rc != CURLE_OK) {
        fprintf(stderr, "fakeapi: %s %s: %s\n", method, path, curl_easy_strerror(rc));
        free(b.data);
        return -EIO;
    }
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    if (response)
        *response = b.data ? b.data : strdup("");
    else
        free(b.data);
    return (int)status;
}

int fakeapi_fault(struct fakeapi *f, const char *json)
{
    char *resp = NULL;
    int st = fakeapi_control(f, "POST", "/_control/faults", json, &resp);
    if (st != 200)
        fprintf(stderr, "fakeapi: fault %s: %d %s\n", json, st, resp ? resp : "");
    free(resp);
    return st == 200 ? 0 : -EIO;
}

json_t *fakeapi_log(struct fakeapi *f, long since)
{
    char path[64], *resp = NULL;
    snprintf(path, sizeof(path), "/_control/log?since=%ld", since);
    int st = fakeapi_control(f, "GET", path, NULL, &resp);
    json_t *out = NULL;
    if (st == 200) {
        json_error_t err;
        json_t *root = json_loads(resp, 0, &err);
        json_t *reqs = json_object_get(root, "requests");
        if (json_is_array(reqs))
            out = json_incref(reqs);
        json_decref(root);
    }
    free(resp);
    return out;
}

int fakeapi_reset(struct fakeapi *f)
{
    return fakeapi_control(f, "POST", "/_control/reset", "{}", NULL) == 200 ? 0 : -EIO;
}

void fakeapi_stop(struct fakeapi *f)
{
    if (!f)
        return;
    if (f->easy)
        curl_easy_cleanup(f->easy);
    kill(f->pid, SIGTERM);
    for (int i = 0; i < 500; i++) {
        if (waitpid(f->pid, NULL, WNOHANG) == f->pid)
            goto done;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    kill(f->pid, SIGKILL);
    waitpid(f->pid, NULL, 0);
done:
    free(f);
}
