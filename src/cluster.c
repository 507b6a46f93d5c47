/*
 * cluster: the lease thread and the loop's view of it (see cluster.h).
 *
 * Slots. The cluster keeps one slot per lease it wants, budget leases first (so that within
 * one pass a job lease is asked for only after its source's budget lease was renewed or
 * taken). A slot's token and local deadline are written by the thread under `mu`; the loop
 * reads them under `mu` and keeps its own `on` flag, the state it last reported through the
 * change callback, so every gain and loss is reported once, in order, on the loop thread.
 *
 * Deadlines. A statement sent at monotonic time t that renews or takes a lease makes it valid
 * here until t + lease - renew. The database set its expiry at NOW + lease, NOW being later
 * than t, so this side stops at least one renew interval before any other instance can take
 * the lease over; the loop timer that notices a passed deadline runs every renew / 2, well
 * inside that margin.
 *
 * The thread. Each pass (every `renew`): connect when needed, create missing lease rows once
 * per connection, then per slot renew (held) or acquire (wanted) -- or release a job lease
 * whose source's budget lease this instance no longer holds -- and finally read the table for
 * the status page. A connection error ends the pass, closes the connection and the next pass
 * reconnects (to the next node of `[database] hosts` when this one is gone). At the stop the
 * thread releases what it holds, so the other instances need not wait for the leases to
 * expire.
 */
#include "coingest/cluster.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "coingest/db.h"
#include "coingest/lease.h"
#include "coingest/log.h"
#include "coingest/metrics.h"
#include "coingest/source.h"
#include "coingest/util.h"

/* Rows of cluster_leases the status page shows. */
#define CLUSTER_TABLE_MAX 256

struct slot {
    char name[LEASE_NAME_MAX + 1];
    size_t job;    /* index into cfg->jobs, or SIZE_MAX for a budget lease */
    size_t source; /* index into cfg->sources */
    long budget;   /* the slot of the budget lease this job lease needs, or -1 */
    /* written by the thread under mu */
    uint64_t token;       /* 0: not held */
    uint64_t valid_until; /* monotonic ms */
    /* the loop's own */
    bool on;
};

struct cluster {
    uv_loop_t *loop;
    const struct config *cfg;
    char instance[LEASE_HOLDER_MAX + 1];
    cluster_change_cb cb;
    void *arg;
    uint64_t lease_ms, renew_ms;

    struct slot *slots;
    size_t nslots;
    struct cfg_database db; /* the thread's copy */

    pthread_t tid;
    bool thread_started;
    bool sync_init; /* mu and cv exist */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stop;       /* under mu */
    bool exited;     /* under mu */
    bool first_pass; /* under mu: the thread has been through its first pass */
    bool first_told; /* the loop's own: first_cb has run */
    void (*first_cb)(void *arg);
    void *first_arg;

    /* under mu: the table as last read, and the last database error ("" when none) */
    struct lease_row *table;
    size_t ntable;
    char db_error[512];

    uv_async_t async;
    uv_timer_t timer;
    int handles_open;
    void (*stop_cb)(void *arg);
    void *stop_arg;
};

void cluster_instance_name(const struct config *cfg, char *buf, size_t cap)
{
    if (cfg->cluster.instance && *cfg->cluster.instance) {
        snprintf(buf, cap, "%s", cfg->cluster.instance);
        return;
    }
    char host[65] = "";
    if (gethostname(host, sizeof(host) - 1) != 0 || !host[0])
        snprintf(host, sizeof(host), "host");
    host[sizeof(host) - 1] = '\0';
    snprintf(buf, cap, "%s-%ld", host, (long)getpid());
}

const char *cluster_instance(const struct cluster *cl)
{
    return cl->instance;
}

/* ---- the thread --------------------------------------------------------------------------- */

static bool is_connection_error(MYSQL *conn, int rc)
{
    return rc < 0 && db_error_class(mysql_errno(conn)) == DB_ERR_CONNECTION;
}

static void set_error(struct cluster *cl, const char *err)
{
    pthread_mutex_lock(&cl->mu);
    snprintf(cl->db_error, sizeof(cl->db_error), "%s", err);
    pthread_mutex_unlock(&cl->mu);
}

static void publish(struct cluster *cl, size_t i, uint64_t token, uint64_t until)
{
    pthread_mutex_lock(&cl->mu);
    cl->slots[i].token = token;
    cl->slots[i].valid_until = until;
    pthread_mutex_unlock(&cl->mu);
}

/* Is slot i held by this thread's own account (token and deadline)? */
static bool holds(struct cluster *cl, size_t i, uint64_t now)
{
    pthread_mutex_lock(&cl->mu);
    bool h = cl->slots[i].token && now < cl->slots[i].valid_until;
    pthread_mutex_unlock(&cl->mu);
    return h;
}

/* One pass over the slots. 0, or -1 when the connection is gone. */
static int pass(struct cluster *cl, MYSQL *conn)
{
    char err[512];
    uint64_t margin = cl->lease_ms - cl->renew_ms;
    for (size_t i = 0; i < cl->nslots; i++) {
        struct slot *s = &cl->slots[i];
        pthread_mutex_lock(&cl->mu);
        uint64_t token = s->token;
        pthread_mutex_unlock(&cl->mu);
        uint64_t t = util_mono_ms();
        int rc;
        if (s->budget >= 0 && !holds(cl, (size_t)s->budget, t)) {
            /* The source's budget is another instance's: so are its jobs. */
            if (!token)
                continue;
            rc = lease_release(conn, s->name, cl->instance, token, err, sizeof(err));
            if (is_connection_error(conn, rc))
                return -1;
            publish(cl, i, 0, 0);
            log_info("lease released: the source's budget lease is gone", LOG_S("lease", s->name),
                     LOG_S("instance", cl->instance));
            continue;
        }
        if (token) {
            rc = lease_renew(conn, s->name, cl->instance, token, cl->lease_ms, err, sizeof(err));
            if (rc == 1) {
                publish(cl, i, token, t + margin);
            } else if (rc == 0) {
                publish(cl, i, 0, 0);
                log_warn("lease lost: another instance holds it now", LOG_S("lease", s->name),
                         LOG_S("instance", cl->instance), LOG_U("token", token));
            } else if (rc != -EAGAIN) {
                log_warn("cannot renew a lease", LOG_S("lease", s->name), LOG_S("error", err));
                set_error(cl, err);
                if (is_connection_error(conn, rc))
                    return -1;
            }
            continue;
        }
        uint64_t got = 0;
        rc = lease_acquire(conn, s->name, cl->instance, cl->lease_ms, &got, err, sizeof(err));
        if (rc == 1) {
            publish(cl, i, got, t + margin);
            log_info("lease acquired", LOG_S("lease", s->name), LOG_S("instance", cl->instance),
                     LOG_U("token", got));
        } else if (rc < 0) {
            log_warn("cannot acquire a lease", LOG_S("lease", s->name), LOG_S("error", err));
            set_error(cl, err);
            if (is_connection_error(conn, rc))
                return -1;
        }
    }
    struct lease_row *rows = calloc(CLUSTER_TABLE_MAX, sizeof(*rows));
    int n = rows ? lease_list(conn, rows, CLUSTER_TABLE_MAX, err, sizeof(err)) : -ENOMEM;
    if (n < 0) {
        free(rows);
        return is_connection_error(conn, n) ? -1 : 0;
    }
    pthread_mutex_lock(&cl->mu);
    free(cl->table);
    cl->table = rows;
    cl->ntable = (size_t)n;
    cl->db_error[0] = '\0';
    pthread_mutex_unlock(&cl->mu);
    return 0;
}

/* Creates the rows of every slot. 0, or -1 after recording why. */
static int ensure_rows(struct cluster *cl, MYSQL *conn)
{
    char err[512];
    for (size_t i = 0; i < cl->nslots; i++) {
        if (lease_ensure(conn, cl->slots[i].name, err, sizeof(err)) != 0) {
            /* Before the sink's writers have migrated, the table may not be there yet. */
            set_error(cl, err);
            log_warn("cannot create lease rows; retrying", LOG_S("error", err));
            return -1;
        }
    }
    return 0;
}

/* Sleeps until `until` (monotonic ms) or the stop; mu held. */
static void wait_until_locked(struct cluster *cl, uint64_t until)
{
    while (!cl->stop) {
        uint64_t now = util_mono_ms();
        if (now >= until)
            return;
        struct timespec ts = util_mono_deadline(until - now);
        pthread_cond_timedwait(&cl->cv, &cl->mu, &ts);
    }
}

static void release_all(struct cluster *cl, MYSQL *conn)
{
    char err[512];
    for (size_t i = cl->nslots; i-- > 0;) { /* job leases before the budgets they need */
        pthread_mutex_lock(&cl->mu);
        uint64_t token = cl->slots[i].token;
        pthread_mutex_unlock(&cl->mu);
        if (!token)
            continue;
        publish(cl, i, 0, 0);
        if (conn &&
            lease_release(conn, cl->slots[i].name, cl->instance, token, err, sizeof(err)) == 1)
            log_info("lease released", LOG_S("lease", cl->slots[i].name),
                     LOG_S("instance", cl->instance));
    }
}

static void *thread_main(void *arg)
{
    struct cluster *cl = arg;
    mysql_thread_init();
    /* A statement that hangs (a dead node, a cluster reconfiguring) ends within the margin
     * between a lease's local deadline and its expiry; by then the lease is lost here anyway. */
    unsigned rwt = (unsigned)((cl->lease_ms - cl->renew_ms + 999) / 1000);
    if (rwt < 1)
        rwt = 1;
    MYSQL *conn = NULL;
    bool ensured = false;
    char err[512];
    uint64_t started = util_mono_ms();
    pthread_mutex_lock(&cl->mu);
    while (!cl->stop) {
        pthread_mutex_unlock(&cl->mu);
        uint64_t t0 = util_mono_ms();
        if (!conn) {
            conn = db_connect_rw(&cl->db, rwt, err, sizeof(err));
            ensured = false;
            if (!conn) {
                set_error(cl, err);
                log_warn("lease client cannot reach the database", LOG_S("error", err));
            }
        }
        if (conn && !ensured && !(ensured = ensure_rows(cl, conn) == 0) &&
            db_error_class(mysql_errno(conn)) == DB_ERR_CONNECTION) {
            mysql_close(conn);
            conn = NULL;
        }
        /* The first pass is over once the leases were asked for, or the database is out of
         * reach, or a lease length went by (lease rows the sink's migrations have not created
         * yet are waited for that long). */
        bool done = !conn || (ensured && conn) || t0 - started >= cl->lease_ms;
        if (conn && ensured && pass(cl, conn) != 0) {
            log_warn("lease client lost its database connection; reconnecting",
                     LOG_S("error", mysql_error(conn)));
            mysql_close(conn);
            conn = NULL;
        }
        pthread_mutex_lock(&cl->mu);
        cl->first_pass = cl->first_pass || done;
        pthread_mutex_unlock(&cl->mu);
        uv_async_send(&cl->async);
        pthread_mutex_lock(&cl->mu);
        wait_until_locked(cl, t0 + cl->renew_ms);
    }
    pthread_mutex_unlock(&cl->mu);
    release_all(cl, conn);
    if (conn)
        mysql_close(conn);
    mysql_thread_end();
    pthread_mutex_lock(&cl->mu);
    cl->exited = true;
    pthread_mutex_unlock(&cl->mu);
    uv_async_send(&cl->async);
    return NULL;
}

/* ---- the loop's view ---------------------------------------------------------------------- */

static void lease_labels(const struct slot *s, char *buf, size_t cap)
{
    snprintf(buf, cap, "lease=\"%s\"", s->name);
}

/* Reports every slot whose held state changed since the last report. */
static void sync_view(struct cluster *cl)
{
    uint64_t now = util_mono_ms();
    for (size_t i = 0; i < cl->nslots; i++) {
        struct slot *s = &cl->slots[i];
        pthread_mutex_lock(&cl->mu);
        bool on = s->token && now < s->valid_until;
        pthread_mutex_unlock(&cl->mu);
        if (on == s->on)
            continue;
        s->on = on;
        char labels[160], change[200];
        lease_labels(s, labels, sizeof(labels));
        metrics_set("coingest_cluster_lease_held", labels, on ? 1 : 0);
        if (cl->stop_cb)
            continue; /* released at the stop: nothing left to tell */
        snprintf(change, sizeof(change), "%s,change=\"%s\"", labels, on ? "acquired" : "lost");
        metrics_add("coingest_cluster_lease_changes_total", change, 1);
        if (!on)
            log_warn("lease no longer held here; its work stops", LOG_S("lease", s->name),
                     LOG_S("instance", cl->instance));
        if (cl->cb)
            cl->cb(cl->arg, s->job, s->source, on);
    }
}

bool cluster_may_run(struct cluster *cl, size_t job)
{
    uint64_t now = util_mono_ms();
    for (size_t i = 0; i < cl->nslots; i++) {
        const struct slot *s = &cl->slots[i];
        if (s->job != job)
            continue;
        bool ok = holds(cl, i, now) && (s->budget < 0 || holds(cl, (size_t)s->budget, now));
        return ok;
    }
    return false;
}

bool cluster_holds_budget(struct cluster *cl, size_t source)
{
    uint64_t now = util_mono_ms();
    for (size_t i = 0; i < cl->nslots; i++)
        if (cl->slots[i].job == SIZE_MAX && cl->slots[i].source == source)
            return holds(cl, i, now);
    return false;
}

static void on_handle_closed(uv_handle_t *h)
{
    struct cluster *cl = h->data;
    if (--cl->handles_open == 0 && cl->stop_cb)
        cl->stop_cb(cl->stop_arg);
}

static void on_async(uv_async_t *h)
{
    struct cluster *cl = h->data;
    pthread_mutex_lock(&cl->mu);
    bool exited = cl->exited, first = cl->first_pass;
    pthread_mutex_unlock(&cl->mu);
    sync_view(cl);
    if (first && !cl->first_told && !cl->stop_cb) {
        cl->first_told = true;
        if (cl->first_cb)
            cl->first_cb(cl->first_arg);
    }
    if (exited && cl->thread_started) {
        pthread_join(cl->tid, NULL);
        cl->thread_started = false;
        uv_close((uv_handle_t *)&cl->async, on_handle_closed);
        uv_close((uv_handle_t *)&cl->timer, on_handle_closed);
    }
}

static void on_timer(uv_timer_t *t)
{
    sync_view(t->data);
}

/* ---- setup and status ---------------------------------------------------------------------- */

static int add_slot(struct cluster *cl, const char *kind, const char *what, size_t job,
                    size_t source, long budget)
{
    struct slot *s = &cl->slots[cl->nslots];
    int n = snprintf(s->name, sizeof(s->name), "%s:%s", kind, what);
    if (n < 0 || (size_t)n >= sizeof(s->name))
        return -ENAMETOOLONG;
    s->job = job;
    s->source = source;
    s->budget = budget;
    char labels[160];
    lease_labels(s, labels, sizeof(labels));
    metrics_set("coingest_cluster_lease_held", labels, 0);
    cl->nslots++;
    return 0;
}

struct cluster *cluster_new(uv_loop_t *loop, const struct config *cfg, const char *instance,
                            cluster_change_cb cb, void *arg)
{
    struct cluster *cl = calloc(1, sizeof(*cl));
    if (!cl)
        goto fail_nomem;
    cl->loop = loop;
    cl->cfg = cfg;
    cl->cb = cb;
    cl->arg = arg;
    cl->lease_ms = cfg->cluster.lease_ms;
    cl->renew_ms = cfg->cluster.renew_ms;
    snprintf(cl->instance, sizeof(cl->instance), "%s", instance);
    cl->slots = calloc(cfg->nsources + cfg->njobs + 1, sizeof(*cl->slots));
    if (!cl->slots || config_database_copy(&cl->db, &cfg->database) != 0)
        goto fail_nomem;
    long *budget_of = calloc(cfg->nsources + 1, sizeof(*budget_of));
    if (!budget_of)
        goto fail_nomem;
    for (size_t s = 0; s < cfg->nsources; s++) {
        const struct cfg_source *src = &cfg->sources[s];
        budget_of[s] = -1;
        if (!src->enabled || !src->def || src->def->nplans == 0)
            continue;
        budget_of[s] = (long)cl->nslots;
        if (add_slot(cl, "budget", src->name, SIZE_MAX, s, -1) != 0)
            goto fail_name;
    }
    for (size_t j = 0; j < cfg->njobs; j++) {
        const struct cfg_job *jb = &cfg->jobs[j];
        if (!jb->enabled || !cfg->sources[jb->source].enabled)
            continue;
        if (add_slot(cl, "job", jb->name, j, jb->source, budget_of[jb->source]) != 0)
            goto fail_name;
    }
    free(budget_of);
    budget_of = NULL;
    char labels[200];
    snprintf(labels, sizeof(labels), "instance=\"%s\"", cl->instance);
    metrics_set("coingest_cluster_instance_info", labels, 1);

    pthread_mutex_init(&cl->mu, NULL);
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&cl->cv, &ca);
    pthread_condattr_destroy(&ca);
    cl->sync_init = true;
    if (uv_async_init(loop, &cl->async, on_async) != 0)
        goto fail_handles;
    cl->async.data = cl;
    cl->handles_open++;
    uv_timer_init(loop, &cl->timer);
    cl->timer.data = cl;
    cl->handles_open++;
    uint64_t every = cl->renew_ms / 2 ? cl->renew_ms / 2 : 1;
    uv_timer_start(&cl->timer, on_timer, every, every);
    if (pthread_create(&cl->tid, NULL, thread_main, cl) != 0) {
        log_error("cannot start the lease thread");
        uv_close((uv_handle_t *)&cl->async, NULL);
        uv_close((uv_handle_t *)&cl->timer, NULL);
        cl->handles_open = 0;
        /* The handles finish closing while the loop runs; the cluster is freed after it. */
        return NULL;
    }
    cl->thread_started = true;
    log_info("cluster mode", LOG_S("instance", cl->instance), LOG_U("leases", cl->nslots),
             LOG_U("lease_ms", cl->lease_ms), LOG_U("renew_ms", cl->renew_ms));
    return cl;

fail_name:
    log_error("a lease name is too long", LOG_U("max", LEASE_NAME_MAX));
    free(budget_of);
    cluster_free(cl);
    return NULL;
fail_handles:
    log_error("cannot set up the lease handles");
    cluster_free(cl);
    return NULL;
fail_nomem:
    log_error("cluster: out of memory");
    cluster_free(cl);
    return NULL;
}

void cluster_on_first_pass(struct cluster *cl, void (*cb)(void *arg), void *arg)
{
    cl->first_cb = cb;
    cl->first_arg = arg;
}

json_t *cluster_json(struct cluster *cl)
{
    json_t *j = json_object();
    json_t *leases = json_array();
    if (!j || !leases) {
        json_decref(j);
        json_decref(leases);
        return NULL;
    }
    json_object_set_new(j, "instance", json_string(cl->instance));
    json_object_set_new(j, "lease_ms", json_integer((json_int_t)cl->lease_ms));
    json_object_set_new(j, "renew_ms", json_integer((json_int_t)cl->renew_ms));
    uint64_t now = util_mono_ms();
    pthread_mutex_lock(&cl->mu);
    json_object_set_new(j, "db_error", cl->db_error[0] ? json_string(cl->db_error) : json_null());
    for (size_t i = 0; i < cl->ntable; i++) {
        const struct lease_row *r = &cl->table[i];
        bool mine = false;
        for (size_t k = 0; k < cl->nslots; k++)
            if (strcmp(cl->slots[k].name, r->name) == 0)
                mine = cl->slots[k].token == r->token && cl->slots[k].token &&
                       now < cl->slots[k].valid_until;
        json_t *o = json_object();
        if (!o)
            break;
        json_object_set_new(o, "name", json_string(r->name));
        json_object_set_new(o, "holder",
                            r->holder[0] && r->expires_in_ms > 0 ? json_string(r->holder)
                                                                 : json_null());
        json_object_set_new(o, "last_holder", r->holder[0] ? json_string(r->holder) : json_null());
        json_object_set_new(o, "token", json_integer((json_int_t)r->token));
        json_object_set_new(o, "expires_in_ms", json_integer((json_int_t)r->expires_in_ms));
        json_object_set_new(o, "mine", json_boolean(mine));
        json_array_append_new(leases, o);
    }
    pthread_mutex_unlock(&cl->mu);
    json_object_set_new(j, "leases", leases);
    return j;
}

void cluster_stop(struct cluster *cl, void (*cb)(void *arg), void *arg)
{
    cl->stop_cb = cb;
    cl->stop_arg = arg;
    pthread_mutex_lock(&cl->mu);
    cl->stop = true;
    pthread_cond_broadcast(&cl->cv);
    pthread_mutex_unlock(&cl->mu);
    /* on_async joins the thread once it has released its leases, then closes the handles. */
}

void cluster_free(struct cluster *cl)
{
    if (!cl)
        return;
    if (cl->sync_init) {
        pthread_mutex_destroy(&cl->mu);
        pthread_cond_destroy(&cl->cv);
    }
    free(cl->table);
    free(cl->slots);
    config_database_clear(&cl->db);
    free(cl);
}
