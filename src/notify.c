/*
 * notify: the sd_notify datagram protocol, spoken directly.
 *
 * Every message opens a fresh non-blocking AF_UNIX datagram socket, sends one datagram to the
 * address in NOTIFY_SOCKET and closes the socket. That costs a few microseconds per message and
 * the daemon sends a handful a minute, so there is no cached descriptor to guard between
 * threads or to leak into children. An abstract address ('@name') maps to a sun_path whose
 * first byte is NUL, and its length counts only the name's bytes, as the kernel expects.
 *
 * The manager may hold the datagram queue full for a moment; we do not wait for it
 * (MSG_DONTWAIT) because a daemon must never stall its loop on its supervisor. A lost READY=1
 * would be retried by nobody, but the queue is only full under pathological load, and the
 * result is returned so the caller can log it.
 */
#include "coingest/notify.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

/* Fills *sa from NOTIFY_SOCKET's value; returns the address length or a negative errno. */
static int notify_address(const char *path, struct sockaddr_un *sa, socklen_t *salen)
{
    size_t n = strlen(path);
    memset(sa, 0, sizeof(*sa));
    sa->sun_family = AF_UNIX;
    if (path[0] == '@') {
        /* Abstract: sun_path[0] stays NUL, the name follows, no terminator is counted. */
        if (n < 2 || n > sizeof(sa->sun_path))
            return -EINVAL;
        memcpy(sa->sun_path + 1, path + 1, n - 1);
        *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n);
        return 0;
    }
    if (path[0] != '/')
        return -EAFNOSUPPORT; /* e.g. "vsock:..." from newer managers; not ours to speak */
    if (n >= sizeof(sa->sun_path))
        return -EINVAL;
    memcpy(sa->sun_path, path, n);
    *salen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
    return 0;
}

int notify_send(const char *msg)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path)
        return 0;
    if (!msg || !*msg)
        return -EINVAL;
    size_t len = strlen(msg);
    if (len > NOTIFY_MSG_MAX)
        return -EINVAL;

    struct sockaddr_un sa;
    socklen_t salen;
    int rc = notify_address(path, &sa, &salen);
    if (rc)
        return rc;

    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return -errno;
    ssize_t sent;
    do
        sent = sendto(fd, msg, len, MSG_NOSIGNAL | MSG_DONTWAIT, (struct sockaddr *)&sa, salen);
    while (sent < 0 && errno == EINTR);
    rc = sent < 0 ? -errno : 0;
    if (rc == 0 && (size_t)sent != len)
        rc = -EMSGSIZE; /* datagrams go whole or not at all; this is only defensive */
    close(fd);
    return rc;
}

int notify_ready(void)
{
    return notify_send("READY=1");
}

int notify_reloading(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long usec =
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;
    char msg[64];
    snprintf(msg, sizeof(msg), "RELOADING=1\nMONOTONIC_USEC=%llu", usec);
    return notify_send(msg);
}

int notify_stopping(void)
{
    return notify_send("STOPPING=1");
}

int notify_watchdog(void)
{
    return notify_send("WATCHDOG=1");
}

int notify_status(const char *fmt, ...)
{
    static const char prefix[] = "STATUS=";
    char msg[NOTIFY_MSG_MAX + 1];
    memcpy(msg, prefix, sizeof(prefix) - 1);
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg + sizeof(prefix) - 1, sizeof(msg) - (sizeof(prefix) - 1), fmt, ap);
    va_end(ap);
    if (n < 0)
        return -ENOMEM;
    /* One assignment per line: a newline inside the text would start a bogus assignment. */
    for (char *p = msg + sizeof(prefix) - 1; *p; p++)
        if (*p == '\n' || *p == '\r')
            *p = ' ';
    return notify_send(msg);
}

/* Parses a whole decimal unsigned number; -1 when s is not one. */
static int parse_ull(const char *s, unsigned long long *v)
{
    if (!s || *s < '0' || *s > '9')
        return -1;
    char *end;
    errno = 0;
    unsigned long long x = strtoull(s, &end, 10);
    if (errno || *end)
        return -1;
    *v = x;
    return 0;
}

uint64_t notify_watchdog_interval_ms(void)
{
    unsigned long long usec, pid;
    if (parse_ull(getenv("WATCHDOG_USEC"), &usec) || usec == 0)
        return 0;
    const char *p = getenv("WATCHDOG_PID");
    if (p && *p) {
        /* The keep-alives are meant for another process (e.g. our parent before an exec). */
        if (parse_ull(p, &pid) || pid != (unsigned long long)getpid())
            return 0;
    }
    uint64_t ms = usec / 2000ull;
    return ms ? ms : 1;
}
