/*
 * notify: tells the service manager how the daemon is doing, with systemd's sd_notify datagram
 * protocol spoken directly (no libsystemd).
 *
 * The manager passes the address of a unix datagram socket in NOTIFY_SOCKET: a filesystem path
 * ("/run/systemd/notify") or an abstract name written with a leading '@'. Each message is one
 * datagram of newline-separated VAR=VALUE assignments (READY=1, RELOADING=1, STOPPING=1,
 * STATUS=..., WATCHDOG=1). When NOTIFY_SOCKET is unset (run by hand, in a container) every
 * function here is a no-op that returns 0, so callers never need to check whether they run
 * under systemd.
 *
 * The watchdog: with WatchdogSec= in the unit, the manager sets WATCHDOG_USEC (and WATCHDOG_PID,
 * the pid meant to send keep-alives). The daemon sends WATCHDOG=1 from a loop timer every
 * notify_watchdog_interval_ms(), half the configured interval, so a loop that stops turning
 * stops the keep-alives and systemd restarts the service.
 *
 * Thread: any. Each call opens, uses and closes its own socket and reads the environment, so
 * nothing is shared; keep the environment unchanged while other threads call these.
 */
#ifndef COINGEST_NOTIFY_H
#define COINGEST_NOTIFY_H

#include <stdint.h>

/* Longest message notify_send() accepts, in bytes (without the terminating NUL). */
#define NOTIFY_MSG_MAX 4096

/*
 * Sends `msg` (newline-separated VAR=VALUE lines) as one datagram to NOTIFY_SOCKET.
 * Returns 0 when sent or when NOTIFY_SOCKET is unset or empty; -EINVAL when msg is NULL, empty
 * or longer than NOTIFY_MSG_MAX, or the address is too long for sockaddr_un; -EAFNOSUPPORT when
 * the address is neither a path nor '@name'; otherwise the -errno of socket(2) or sendto(2)
 * (e.g. -ENOENT, -ECONNREFUSED when nobody listens). Never blocks for long: the socket is
 * non-blocking, so a full manager queue gives -EAGAIN. Thread: any.
 */
int notify_send(const char *msg);

/* READY=1: startup finished (database reached, schema current) or a reload finished.
 * Returns as notify_send(). Thread: any. */
int notify_ready(void);

/* RELOADING=1 plus MONOTONIC_USEC=<CLOCK_MONOTONIC now in microseconds>, as systemd >= 253
 * expects for Type=notify-reload (older managers ignore the extra line). Send notify_ready()
 * when the reload is done, whether it was applied or refused. Returns as notify_send(). */
int notify_reloading(void);

/* STOPPING=1: a graceful stop has begun. Returns as notify_send(). Thread: any. */
int notify_stopping(void);

/* STATUS=<printf-formatted text>: a one-line status shown by `systemctl status`. Newlines in
 * the text are replaced by spaces; text past NOTIFY_MSG_MAX is cut. Returns as notify_send(),
 * or -ENOMEM when formatting fails. Thread: any. */
int notify_status(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* WATCHDOG=1: the keep-alive. Returns as notify_send(). Thread: any, but send it from a loop
 * timer so a stuck loop misses it. */
int notify_watchdog(void);

/*
 * How often to send WATCHDOG=1, in milliseconds: half of WATCHDOG_USEC (at least 1 ms), or 0
 * when the watchdog is off: WATCHDOG_USEC unset, empty, zero or not a number, or WATCHDOG_PID
 * set to a pid other than getpid(). Thread: any.
 */
uint64_t notify_watchdog_interval_ms(void);

#endif
