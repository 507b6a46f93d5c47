/*
 * daemon: the running daemon: wires the modules together on one libuv loop, in order, and
 * takes them down in reverse order.
 *
 * Startup order (each step needs the ones before it):
 *   signals (blocked since main() began, handled on the loop) -> timers -> sink (spool, writer
 *   threads; the database may still be down) -> fetch engine and one API per enabled source ->
 *   job runner and scheduler ->
 *   HTTP endpoint -> watchdog -> the first runs (scheduled, or the --once list); READY=1 once
 *   the sink reports the database reached and the schema current. Teardown is the reverse.
 *
 * Signals: SIGHUP reloads (a bad file is logged and the old config stays), SIGTERM/SIGINT stop
 * gracefully (a second one cuts the wait short), SIGUSR1 logs a one-line stats snapshot.
 *
 * Thread: the main thread runs the loop; daemon_run returns when the loop is done.
 */
#ifndef COINGEST_DAEMON_H
#define COINGEST_DAEMON_H

#include <stdbool.h>

#include "coingest/config.h"

struct daemon_opts {
    const char *config_path;
    bool once;                /* run the once_order jobs, wait for their rows, exit */
    const size_t *once_order; /* indices into cfg->jobs, in --once order, once_count entries */
    int once_count;
};

/* Runs the daemon with an already loaded config (ownership passes to the daemon, which may
 * replace it on reload). Returns the process exit status: 0 on a clean stop or when every
 * --once job succeeded, 1 when a --once job failed or rows could not be committed in time,
 * 70 (EX_SOFTWARE) or 71 (EX_OSERR) when startup failed. */
int daemon_run(struct config *cfg, const struct daemon_opts *opts);

/* Blocks the signals the daemon handles on the loop, so that one arriving during startup
 * waits instead of killing the process. Call first thing in main(). */
void daemon_block_signals(void);

#endif
