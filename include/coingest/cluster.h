/*
 * cluster: several coingestd instances against one database, one active per job.
 *
 * With `[cluster] enabled`, every job of an enabled source (enabled at start) has a lease
 * `job:NAME`, and every source with a remote API a lease `budget:SOURCE` (lease.h). The holder
 * of a source's budget lease is the one instance that sends requests to that API, so the
 * instances share one rate budget and one monthly ledger without counting each other's
 * requests; an instance asks for a job's lease only while it holds the budget lease of the
 * job's source (and gives job leases back when it loses that), so a source's jobs gather on
 * the instance that spends its budget. Jobs of a source without an API (analytics) are leased
 * one by one. The scheduler runs everywhere; a tick on an instance that does not hold the
 * job's lease is skipped (a standby).
 *
 * A thread of its own owns one database connection (db_connect_rw, with a read timeout of
 * about one renew interval, and `[database] hosts` failover) and, every `renew`, renews the
 * leases it holds and tries to take those it wants, then reads the whole lease table for the
 * status page. It never waits behind the sink's batches. Results reach the loop thread
 * through uv_async_send; the loop also checks every lease's local deadline on a timer, so a
 * thread stuck on a dead node cannot keep a job running past its lease: a lease renewed by a
 * statement sent at monotonic time t counts as held until t + lease, never longer.
 *
 * Thread: everything here is called on the loop thread.
 */
#ifndef COINGEST_CLUSTER_H
#define COINGEST_CLUSTER_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "coingest/config.h"

struct cluster;

/* Called on the loop thread when this instance gains (held true) or loses a lease: `job` is
 * the job's index in cfg->jobs for a job lease, else SIZE_MAX and `source` the source's index
 * for a budget lease. */
typedef void (*cluster_change_cb)(void *arg, size_t job, size_t source, bool held);

/* The instance's name: [cluster] instance, or "HOSTNAME-PID". Writes into buf (cap bytes). */
void cluster_instance_name(const struct config *cfg, char *buf, size_t cap);

/* Makes the lease table for cfg (which must outlive the cluster) and starts the lease thread
 * and the loop timer. NULL after logging why (out of memory, thread). */
struct cluster *cluster_new(uv_loop_t *loop, const struct config *cfg, const char *instance,
                            cluster_change_cb cb, void *arg);

/* cb(arg) runs once on the loop thread after the lease thread's first pass (leases taken, or
 * the database found unreachable), after the change callbacks of that pass. The daemon starts
 * its schedule then, so that a job's run at start is not skipped only because the leases had
 * not been asked for yet. */
void cluster_on_first_pass(struct cluster *cl, void (*cb)(void *arg), void *arg);

/* May this instance run job `job` now: it holds the job's lease and, for a source with an
 * API, the source's budget lease, both within their local deadlines. */
bool cluster_may_run(struct cluster *cl, size_t job);

/* Does this instance hold source `source`'s budget lease now (within its local deadline)? */
bool cluster_holds_budget(struct cluster *cl, size_t source);

/* The instance name given to cluster_new. */
const char *cluster_instance(const struct cluster *cl);

/* The cluster part of the status page: {"instance", "lease_ms", "renew_ms", "db_error",
 * "leases": [{"name", "holder", "token", "expires_in_ms", "mine"}]} (the table as last read,
 * plus this instance's own view). A new reference, or NULL on OOM. */
json_t *cluster_json(struct cluster *cl);

/* Stops: the thread releases the leases it holds (so another instance takes over at once
 * instead of after a lease length), closes its connection and exits; the loop handles are
 * closed; then cb(arg) runs on the loop thread and the cluster may be freed. Call once. */
void cluster_stop(struct cluster *cl, void (*cb)(void *arg), void *arg);

/* Frees a stopped cluster (or one whose cluster_stop callback ran). NULL is a no-op. */
void cluster_free(struct cluster *cl);

#endif
