/*
 * ctest-labels: tsan
 * test_notify: the sd_notify protocol against a real unix datagram socket.
 *
 * Each test binds its own receiving socket (a path under a fresh temp dir, or an abstract name
 * carrying the pid), points NOTIFY_SOCKET at it, calls the notify functions and reads what
 * arrived. Local unix datagrams are queued by sendto() itself, so the message is there to read
 * as soon as the call returns: no waiting.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "coingest/notify.h"

struct rx {
    int fd;
    char dir[64];
    char path[96];
    char env[128];
};

/* Binds a datagram socket at a filesystem path and sets NOTIFY_SOCKET to it. */
static void rx_open_path(struct rx *rx)
{
    memset(rx, 0, sizeof(*rx));
    snprintf(rx->dir, sizeof(rx->dir), "/tmp/test_notify.XXXXXX");
    assert_non_null(mkdtemp(rx->dir));
    snprintf(rx->path, sizeof(rx->path), "%s/notify", rx->dir);
    rx->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(rx->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", rx->path);
    assert_int_equal(bind(rx->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    snprintf(rx->env, sizeof(rx->env), "%s", rx->path);
    assert_int_equal(setenv("NOTIFY_SOCKET", rx->env, 1), 0);
}

/* Binds an abstract datagram socket and sets NOTIFY_SOCKET to "@name". */
static void rx_open_abstract(struct rx *rx)
{
    memset(rx, 0, sizeof(*rx));
    char name[64];
    int n = snprintf(name, sizeof(name), "coingest-test-notify-%ld", (long)getpid());
    rx->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    assert_true(rx->fd >= 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    memcpy(sa.sun_path + 1, name, (size_t)n);
    socklen_t len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + (size_t)n);
    assert_int_equal(bind(rx->fd, (struct sockaddr *)&sa, len), 0);
    snprintf(rx->env, sizeof(rx->env), "@%s", name);
    assert_int_equal(setenv("NOTIFY_SOCKET", rx->env, 1), 0);
}

static void rx_close(struct rx *rx)
{
    close(rx->fd);
    if (rx->path[0]) {
        unlink(rx->path);
        rmdir(rx->dir);
    }
    unsetenv("NOTIFY_SOCKET");
}

/* Reads one queued datagram into buf as a string; fails the test when none is queued. */
static void rx_read(struct rx *rx, char *buf, size_t cap)
{
    ssize_t n = recv(rx->fd, buf, cap - 1, MSG_DONTWAIT);
    assert_true(n >= 0);
    buf[n] = '\0';
}

static void assert_nothing_queued(struct rx *rx)
{
    char buf[16];
    ssize_t n = recv(rx->fd, buf, sizeof(buf), MSG_DONTWAIT);
    assert_int_equal(n, -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
}

static void test_unset_is_noop(void **state)
{
    (void)state;
    unsetenv("NOTIFY_SOCKET");
    assert_int_equal(notify_ready(), 0);
    assert_int_equal(notify_status("x %d", 1), 0);
    assert_int_equal(notify_watchdog(), 0);
    setenv("NOTIFY_SOCKET", "", 1);
    assert_int_equal(notify_stopping(), 0);
    unsetenv("NOTIFY_SOCKET");
}

static void test_path_socket_messages(void **state)
{
    (void)state;
    struct rx rx;
    char buf[NOTIFY_MSG_MAX + 64];
    rx_open_path(&rx);

    assert_int_equal(notify_ready(), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1");

    assert_int_equal(notify_stopping(), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "STOPPING=1");

    assert_int_equal(notify_watchdog(), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "WATCHDOG=1");

    assert_int_equal(notify_send("STATUS=a\nREADY=1"), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "STATUS=a\nREADY=1");

    assert_nothing_queued(&rx);
    rx_close(&rx);
}

static void test_abstract_socket(void **state)
{
    (void)state;
    struct rx rx;
    char buf[256];
    rx_open_abstract(&rx);
    assert_int_equal(notify_ready(), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "READY=1");
    assert_int_equal(notify_status("prices ok %s", "12:00"), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "STATUS=prices ok 12:00");
    assert_nothing_queued(&rx);
    rx_close(&rx);
}

static void test_reloading_monotonic_usec(void **state)
{
    (void)state;
    struct rx rx;
    char buf[256];
    rx_open_path(&rx);

    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long before =
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;
    assert_int_equal(notify_reloading(), 0);
    clock_gettime(CLOCK_MONOTONIC, &ts);
    unsigned long long after =
        (unsigned long long)ts.tv_sec * 1000000ull + (unsigned long long)ts.tv_nsec / 1000ull;

    rx_read(&rx, buf, sizeof(buf));
    static const char head[] = "RELOADING=1\nMONOTONIC_USEC=";
    assert_memory_equal(buf, head, sizeof(head) - 1);
    const char *digits = buf + sizeof(head) - 1;
    /* Decimal digits only, nothing after them: systemd parses it strictly. */
    assert_true(*digits >= '1' && *digits <= '9');
    assert_int_equal(strspn(digits, "0123456789"), strlen(digits));
    unsigned long long usec = strtoull(digits, NULL, 10);
    assert_true(usec >= before && usec <= after);
    rx_close(&rx);
}

static void test_status_formatting(void **state)
{
    (void)state;
    struct rx rx;
    char buf[NOTIFY_MSG_MAX + 64];
    rx_open_path(&rx);

    /* A newline would smuggle in a second assignment. */
    assert_int_equal(notify_status("line1\nREADY=1\r%s", "x"), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_string_equal(buf, "STATUS=line1 READY=1 x");

    /* An overlong status is cut to the protocol limit, not refused. */
    char *big = malloc(NOTIFY_MSG_MAX * 2);
    assert_non_null(big);
    memset(big, 'a', NOTIFY_MSG_MAX * 2 - 1);
    big[NOTIFY_MSG_MAX * 2 - 1] = '\0';
    assert_int_equal(notify_status("%s", big), 0);
    rx_read(&rx, buf, sizeof(buf));
    assert_int_equal(strlen(buf), NOTIFY_MSG_MAX);
    assert_memory_equal(buf, "STATUS=aaa", 10);
    free(big);
    rx_close(&rx);
}

static void test_errors(void **state)
{
    (void)state;
    struct rx rx;
    rx_open_path(&rx);
    assert_int_equal(notify_send(""), -EINVAL);
    assert_int_equal(notify_send(NULL), -EINVAL);
    char *big = malloc(NOTIFY_MSG_MAX + 2);
    assert_non_null(big);
    memset(big, 'b', NOTIFY_MSG_MAX + 1);
    big[NOTIFY_MSG_MAX + 1] = '\0';
    assert_int_equal(notify_send(big), -EINVAL);
    free(big);
    assert_nothing_queued(&rx);
    rx_close(&rx);

    /* Nobody listening at that path. */
    setenv("NOTIFY_SOCKET", "/nonexistent-dir-coingest/notify", 1);
    assert_int_equal(notify_ready(), -ENOENT);
    /* Nobody bound to that abstract name. */
    setenv("NOTIFY_SOCKET", "@coingest-test-nobody-here-xyzzy", 1);
    assert_int_equal(notify_ready(), -ECONNREFUSED);
    /* Not a unix address. */
    setenv("NOTIFY_SOCKET", "vsock:2:1234", 1);
    assert_int_equal(notify_ready(), -EAFNOSUPPORT);
    setenv("NOTIFY_SOCKET", "@", 1);
    assert_int_equal(notify_ready(), -EINVAL);
    char longpath[200];
    memset(longpath, 'p', sizeof(longpath) - 1);
    longpath[0] = '/';
    longpath[sizeof(longpath) - 1] = '\0';
    setenv("NOTIFY_SOCKET", longpath, 1);
    assert_int_equal(notify_ready(), -EINVAL);
    unsetenv("NOTIFY_SOCKET");
}

static void test_watchdog_interval(void **state)
{
    (void)state;
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());

    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
    assert_int_equal(notify_watchdog_interval_ms(), 0);

    setenv("WATCHDOG_USEC", "60000000", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 30000);

    setenv("WATCHDOG_PID", pid, 1);
    assert_int_equal(notify_watchdog_interval_ms(), 30000);

    /* Meant for another process. */
    setenv("WATCHDOG_PID", "1", 1);
    if (getpid() != 1)
        assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_PID", "12x", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_PID", pid, 1);

    /* Rounds down, never below 1 ms while on. */
    setenv("WATCHDOG_USEC", "3999", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 1);
    setenv("WATCHDOG_USEC", "1", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 1);

    /* Off or garbage. */
    setenv("WATCHDOG_USEC", "0", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_USEC", "", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_USEC", "-5", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_USEC", "10s", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);
    setenv("WATCHDOG_USEC", "99999999999999999999999", 1);
    assert_int_equal(notify_watchdog_interval_ms(), 0);

    unsetenv("WATCHDOG_USEC");
    unsetenv("WATCHDOG_PID");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_unset_is_noop),     cmocka_unit_test(test_path_socket_messages),
        cmocka_unit_test(test_abstract_socket),   cmocka_unit_test(test_reloading_monotonic_usec),
        cmocka_unit_test(test_status_formatting), cmocka_unit_test(test_errors),
        cmocka_unit_test(test_watchdog_interval),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
