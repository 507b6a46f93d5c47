/*
 * bench_fetch: requests per second and CPU per request of the fetch engine against the fake
 * API on loopback, rate limit off. Prints one key=value line per case:
 *
 *   bench=fetch case=ping requests=N concurrency=C wall_s=.. rps=.. cpu_us_per_req=..
 *         server_cpu_us_per_req=..
 *   bench=fetch case=markets_page ... bytes_per_req=245863 mb_per_s=..
 *
 * cpu_us_per_req is this process's user+system time (the engine, curl, libuv) divided by the
 * requests; the fake API runs in its own process (Python), and its CPU is reported apart,
 * because on loopback it, not the engine, is the bottleneck.
 *
 * Usage: bench_fetch [ping_requests [concurrency [page_requests]]]. The fake API is found
 * through FAKEAPI, else next to this source file (tests/fakeapi/fakeapi.py). Without python3
 * the bench prints `bench=fetch skipped=1` and exits 0. It never passes or fails on time.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "coingest/fetch.h"
#include "coingest/log.h"
#include "coingest/timers.h"

struct server {
    pid_t pid;
    int port;
};

static const char *fakeapi_path(char *buf, size_t cap)
{
    const char *env = getenv("FAKEAPI");
    if (env && *env)
        return env;
    /* __FILE__ is the absolute path CMake compiled: <src>/bench/bench_fetch.c */
    snprintf(buf, cap, "%s", __FILE__);
    char *slash = strrchr(buf, '/');
    if (!slash)
        return NULL;
    *slash = '\0';
    size_t n = strlen(buf);
    snprintf(buf + n, cap - n, "/../tests/fakeapi/fakeapi.py");
    return access(buf, R_OK) == 0 ? buf : NULL;
}

static int server_start(struct server *s, const char *script)
{
    int fds[2];
    if (pipe(fds) != 0)
        return -errno;
    char fdarg[16];
    snprintf(fdarg, sizeof(fdarg), "%d", fds[1]);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return -errno;
    if (pid == 0) {
        close(fds[0]);
        execlp("python3", "python3", script, "--port", "0", "--port-fd", fdarg, (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char buf[32] = "";
    size_t got = 0;
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    while (got < sizeof(buf) - 1 && !memchr(buf, '\n', got) && poll(&pfd, 1, 30000) > 0) {
        ssize_t r = read(fds[0], buf + got, sizeof(buf) - 1 - got);
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    close(fds[0]);
    buf[got] = '\0';
    s->pid = pid;
    s->port = atoi(buf);
    if (s->port <= 0) {
        kill(pid, SIGKILL);
        waitpid(pid, NULL, 0);
        return -EIO;
    }
    return 0;
}

static void server_stop(struct server *s)
{
    kill(s->pid, SIGTERM);
    waitpid(s->pid, NULL, 0);
}

/* user+system CPU of a process in microseconds (/proc/PID/stat, clock ticks). */
static double proc_cpu_us(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *fp = fopen(path, "r");
    if (!fp)
        return 0;
    char line[1024];
    double us = 0;
    if (fgets(line, sizeof(line), fp)) {
        char *p = strrchr(line, ')'); /* skip pid and (comm) */
        unsigned long utime = 0, stime = 0;
        if (p && sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &utime,
                        &stime) == 2)
            us = (double)(utime + stime) * 1e6 / (double)sysconf(_SC_CLK_TCK);
    }
    fclose(fp);
    return us;
}

static double self_cpu_us(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
           (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
}

struct run {
    struct api *api;
    const char *path;
    long to_start;
    long remaining;
    long ok;
    double bytes;
};

static void on_done(const struct fetch_result *r, void *arg)
{
    struct run *run = arg;
    if (r->outcome == FETCH_OK) {
        run->ok++;
        run->bytes += (double)r->len;
    }
    run->remaining--;
    if (run->to_start > 0) {
        run->to_start--;
        api_get(run->api, run->path, 0, NULL, on_done, run);
    }
}

static void on_freed(void *arg)
{
    *(int *)arg = 1;
}

static void bench_case(const char *name, const struct server *srv, const char *path, long n,
                       long concurrency)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    struct timers *timers = timers_new(&loop);
    struct fetcher *f = fetcher_new(&loop, timers);
    char base[64], api_name[] = "bench";
    snprintf(base, sizeof(base), "http://127.0.0.1:%d/api/v3", srv->port);
    struct cfg_source src;
    memset(&src, 0, sizeof(src));
    src.name = api_name;
    src.base_url = base;
    src.plan = 0;                                               /* no source definition: keyless */
    src.rate_limit = (struct rate){.count = 0, .period_ms = 0}; /* off */
    src.burst = (uint32_t)concurrency;
    src.timeout_ms = 30000;
    src.connect_timeout_ms = 5000;
    src.max_retries = 0;
    src.max_body_bytes = 64u << 20;
    src.max_url_bytes = 8000;
    struct api *api = api_new(f, &src);
    if (!f || !api) {
        printf("bench=fetch case=%s error=setup\n", name);
        return;
    }
    struct run run = {.api = api, .path = path, .to_start = n, .remaining = n};

    double cpu0 = self_cpu_us(), scpu0 = proc_cpu_us(srv->pid);
    uint64_t t0 = uv_hrtime();
    for (long i = 0; i < concurrency && run.to_start > 0; i++) {
        run.to_start--;
        api_get(api, path, 0, NULL, on_done, &run);
    }
    while (run.remaining > 0 && uv_run(&loop, UV_RUN_ONCE) != 0)
        ;
    double wall = (double)(uv_hrtime() - t0) / 1e9;
    double cpu = self_cpu_us() - cpu0, scpu = proc_cpu_us(srv->pid) - scpu0;

    api_free(api);
    int freed = 0;
    fetcher_free(f, on_freed, &freed);
    timers_free(timers);
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);

    printf("bench=fetch case=%s requests=%ld ok=%ld concurrency=%ld wall_s=%.3f rps=%.0f "
           "cpu_us_per_req=%.1f server_cpu_us_per_req=%.1f bytes_per_req=%.0f mb_per_s=%.1f\n",
           name, n, run.ok, concurrency, wall, (double)n / wall, cpu / (double)n, scpu / (double)n,
           run.ok ? run.bytes / (double)run.ok : 0.0, run.bytes / wall / 1e6);
    fflush(stdout);
}

int main(int argc, char **argv)
{
    long pings = argc > 1 ? atol(argv[1]) : 5000;
    long concurrency = argc > 2 ? atol(argv[2]) : 32;
    long pages = argc > 3 ? atol(argv[3]) : 300;
    if (pings <= 0 || concurrency <= 0 || pages < 0) {
        fprintf(stderr, "usage: bench_fetch [ping_requests [concurrency [page_requests]]]\n");
        return 2;
    }
    char buf[4096];
    const char *script = fakeapi_path(buf, sizeof(buf));
    struct server srv;
    if (!script || system("python3 -c '' >/dev/null 2>&1") != 0 ||
        server_start(&srv, script) != 0) {
        printf("bench=fetch skipped=1 reason=no_fakeapi\n");
        return 0;
    }
    log_setup(LOG_ERROR, LOG_FORMAT_TEXT);
    bench_case("ping", &srv, "/ping", pings, concurrency);
    if (pages > 0)
        bench_case("markets_page", &srv, "/coins/markets?vs_currency=usd&per_page=250&page=1",
                   pages, concurrency < 4 ? concurrency : 4);
    server_stop(&srv);
    return 0;
}
