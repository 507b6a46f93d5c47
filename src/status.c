/*
 * status: the status page and /status.json (see status.h).
 *
 * status_json() builds the snapshot from what the daemon lends it (struct status_view) and
 * from the two histories kept here: committed rows per minute, sampled from the sink on a
 * wheel timer, and the month's calls per job, read from job_runs once a minute through
 * sink_read. status_html() then walks that JSON object only, so the page cannot show a number
 * the JSON does not have: each value is written with a data-k attribute holding its JSON path
 * ("jobs.1.last_run.rows") and, where the text is made for humans ("5m", "12 s ago"), a
 * data-v attribute with the raw value.
 */
#include "coingest/status.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "coingest/log.h"
#include "coingest/sbuf.h"
#include "coingest/source.h"
#include "coingest/util.h"
#include "coingest/version.h"

#define STATUS_MONTH_READ_MS 60000u
#define STATUS_MONTH_JOBS    64

struct month_job {
    char name[64];
    uint64_t requests;
};

struct status {
    struct timers *timers;
    struct sink *sink;
    const struct config *cfg;
    struct wheel_timer timer;

    /* committed rows per wall-clock minute: slot i holds minute minute_of[i] */
    uint64_t minute_of[STATUS_MINUTES];
    uint64_t rows[STATUS_MINUTES];
    uint64_t last_committed; /* the sink counts from 0 at its start, just before ours */

    /* the month's calls per job, from job_runs */
    uint64_t next_month_read; /* monotonic ms */
    bool month_reading;
    bool month_known;
    struct month_job month[STATUS_MONTH_JOBS];
    size_t nmonth;
};

void status_month_start(uint64_t wall_ms, char *buf, size_t cap)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    snprintf(buf, cap, "%04u-%02u-01 00:00:00", (unsigned)(tm.tm_year + 1900) % 10000u,
             (unsigned)(tm.tm_mon + 1) % 100u);
}

/* ---- histories ---------------------------------------------------------------------------- */

static void sample(struct status *st)
{
    struct sink_stats ss;
    sink_get_stats(st->sink, &ss);
    uint64_t minute = util_wall_ms() / 60000;
    size_t i = (size_t)(minute % STATUS_MINUTES);
    if (st->minute_of[i] != minute) {
        st->minute_of[i] = minute;
        st->rows[i] = 0;
    }
    if (ss.rows_committed >= st->last_committed)
        st->rows[i] += ss.rows_committed - st->last_committed;
    st->last_committed = ss.rows_committed;
}

static void month_done(int rc, const struct sink_rows *rows, const char *err, void *arg)
{
    struct status *st = arg;
    st->month_reading = false;
    if (rc != 0) {
        /* No database now, or shutting down: the page keeps the last answer. */
        if (rc != -ENOTCONN && rc != -ECANCELED)
            log_debug("status: cannot read the month's calls", LOG_S("error", err));
        return;
    }
    st->nmonth = 0;
    for (uint32_t r = 0; r < rows->nrows && st->nmonth < STATUS_MONTH_JOBS; r++) {
        const char *job = rows->cells[r * rows->ncols];
        const char *n = rows->cells[r * rows->ncols + 1];
        if (!job)
            continue;
        struct month_job *m = &st->month[st->nmonth++];
        snprintf(m->name, sizeof(m->name), "%s", job);
        m->requests = n ? strtoull(n, NULL, 10) : 0;
    }
    st->month_known = true;
}

static void read_month(struct status *st)
{
    static const char sql[] = "SELECT job, CAST(SUM(requests) AS UNSIGNED) FROM job_runs "
                              "WHERE started_at >= ? GROUP BY job";
    char since[32];
    status_month_start(util_wall_ms(), since, sizeof(since));
    const char *params[] = {since};
    if (sink_read(st->sink, sql, params, 1, STATUS_MONTH_JOBS, month_done, st) == 0)
        st->month_reading = true;
}

static void on_timer(struct wheel_timer *tm, void *arg)
{
    struct status *st = arg;
    sample(st);
    uint64_t now = timers_now(st->timers);
    if (!st->month_reading && now >= st->next_month_read) {
        st->next_month_read = now + STATUS_MONTH_READ_MS;
        read_month(st);
    }
    timers_start(st->timers, tm, STATUS_SAMPLE_MS);
}

struct status *status_new(struct timers *timers, struct sink *sink, const struct config *cfg)
{
    struct status *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    st->timers = timers;
    st->sink = sink;
    st->cfg = cfg;
    wheel_timer_init(&st->timer, on_timer, st);
    /* The first sample and read soon after start, then every STATUS_SAMPLE_MS. */
    timers_start(timers, &st->timer, 1000);
    return st;
}

void status_set_config(struct status *st, const struct config *cfg)
{
    if (st)
        st->cfg = cfg;
}

void status_run_finished(struct status *st)
{
    if (st)
        st->next_month_read = 0;
}

void status_free(struct status *st)
{
    if (!st)
        return;
    timers_stop(st->timers, &st->timer);
    free(st);
}

/* ---- the snapshot ------------------------------------------------------------------------- */

static json_t *iso(uint64_t wall_ms)
{
    if (!wall_ms)
        return json_null();
    char buf[40];
    util_format_iso8601(wall_ms, buf, sizeof(buf));
    return json_string(buf);
}

static double round2(double x)
{
    return round(x * 100.0) / 100.0;
}

static double per_minute(const struct rate *r)
{
    return r->period_ms ? (double)r->count * 60000.0 / (double)r->period_ms : 0;
}

/* Adds the month's calls of the jobs of source `si`; false when not known. */
static bool month_calls(const struct status *st, const struct config *cfg, size_t si, uint64_t *out)
{
    if (!st->month_known)
        return false;
    uint64_t sum = 0;
    for (size_t m = 0; m < st->nmonth; m++) {
        int j = config_job_index(cfg, st->month[m].name);
        if (j >= 0 && cfg->jobs[j].source == si)
            sum += st->month[m].requests;
    }
    *out = sum;
    return true;
}

static json_t *source_json(const struct status *st, const struct status_view *v, size_t si)
{
    const struct cfg_source *src = &v->cfg->sources[si];
    struct api_stats as;
    api_get_stats(v->apis[si], &as);
    json_t *o = json_object();
    const struct source_def *def = src->def;
    json_object_set_new(o, "name", json_string(src->name));
    json_object_set_new(o, "title", json_string(def && def->title ? def->title : src->name));
    json_object_set_new(
        o, "plan", json_string(def && src->plan < def->nplans ? def->plans[src->plan].name : ""));
    json_object_set_new(o, "rate_limit_per_min", json_real(round2(per_minute(&src->rate_limit))));
    json_object_set_new(o, "monthly_credits", json_integer((json_int_t)src->monthly_credits));
    json_t *b = json_object();
    json_object_set_new(b, "tokens", json_real(round2(as.tokens)));
    json_object_set_new(b, "burst", json_integer(as.burst));
    json_object_set_new(b, "queued",
                        json_integer((json_int_t)tbucket_queued(api_bucket(v->apis[si]))));
    json_object_set_new(b, "paused_s", json_integer((json_int_t)((as.paused_ms + 999) / 1000)));
    json_object_set_new(o, "bucket", b);
    json_object_set_new(o, "calls_last_minute", json_integer((json_int_t)as.calls_last_minute));
    json_object_set_new(o, "calls_since_start", json_integer((json_int_t)as.calls_total));
    uint64_t month = 0;
    if (month_calls(st, v->cfg, si, &month)) {
        json_object_set_new(o, "calls_this_month", json_integer((json_int_t)month));
        json_object_set_new(
            o, "credits_left",
            src->monthly_credits
                ? json_integer(
                      (json_int_t)(month < src->monthly_credits ? src->monthly_credits - month : 0))
                : json_null());
    } else {
        json_object_set_new(o, "calls_this_month", json_null());
        json_object_set_new(o, "credits_left", json_null());
    }
    json_object_set_new(o, "requests_in_flight", json_integer((json_int_t)as.in_flight));
    json_object_set_new(o, "requests_waiting",
                        json_integer((json_int_t)(as.pending - as.in_flight)));
    json_object_set_new(o, "failing", json_boolean(as.failures > 0));
    json_object_set_new(o, "failures", json_integer((json_int_t)as.failures));
    json_object_set_new(o, "failing_s", json_integer((json_int_t)(as.failing_ms / 1000)));
    return o;
}

static json_t *job_json(const struct status_view *v, size_t ji, uint64_t now)
{
    const struct cfg_job *jb = &v->cfg->jobs[ji];
    json_t *o = json_object();
    json_object_set_new(o, "name", json_string(jb->name));
    json_object_set_new(o, "source", json_string(v->cfg->sources[jb->source].name));
    json_object_set_new(o, "enabled", json_boolean(jb->enabled));
    json_object_set_new(o, "every_s", json_integer((json_int_t)(jb->every_ms / 1000)));
    json_object_set_new(o, "running", json_boolean(v->runner && runner_running(v->runner, ji)));
    json_object_set_new(o, "failed_streak",
                        json_integer(v->failed_streak ? v->failed_streak[ji] : 0));
    uint64_t next = v->next_run_wall_ms ? v->next_run_wall_ms[ji] : 0;
    json_object_set_new(o, "next_run", iso(next));
    json_object_set_new(o, "next_run_in_s",
                        next ? json_integer((json_int_t)(next > now ? (next - now) / 1000 : 0))
                             : json_null());
    const struct run_summary *s = v->runner ? runner_last(v->runner, ji) : NULL;
    if (!s || !s->started_wall_ms) {
        json_object_set_new(o, "last_run", json_null());
        return o;
    }
    json_t *r = json_object();
    json_object_set_new(r, "status", json_string(run_status_name(s->status)));
    json_object_set_new(r, "started_at", iso(s->started_wall_ms));
    json_object_set_new(r, "finished_at", iso(s->finished_wall_ms));
    json_object_set_new(
        r, "ago_s",
        json_integer(
            (json_int_t)(now > s->finished_wall_ms ? (now - s->finished_wall_ms) / 1000 : 0)));
    json_object_set_new(
        r, "duration_s",
        json_real(round2((double)(s->finished_wall_ms - s->started_wall_ms) / 1000.0)));
    json_object_set_new(r, "requests", json_integer((json_int_t)s->requests));
    json_object_set_new(r, "rows", json_integer((json_int_t)s->rows));
    json_object_set_new(r, "counted", json_integer((json_int_t)s->counted));
    json_object_set_new(r, "error", s->error[0] ? json_string(s->error) : json_null());
    json_object_set_new(o, "last_run", r);
    return o;
}

static json_t *sink_json(const struct status *st)
{
    struct sink_stats ss;
    sink_get_stats(st->sink, &ss);
    json_t *o = json_object();
    json_object_set_new(o, "db", json_string(ss.db_up ? "up" : "down"));
    json_object_set_new(o, "rows_committed", json_integer((json_int_t)ss.rows_committed));
    json_object_set_new(o, "rows_pending", json_integer((json_int_t)ss.rows_pending));
    json_object_set_new(o, "spool_rows", json_integer((json_int_t)ss.rows_spooled));
    json_object_set_new(o, "spool_bytes", json_integer((json_int_t)ss.spool_bytes));
    json_object_set_new(o, "rows_rejected", json_integer((json_int_t)ss.rows_rejected));
    json_object_set_new(o, "rows_lost", json_integer((json_int_t)ss.rows_lost));
    return o;
}

static json_t *recent_json(void)
{
    struct log_recent lines[LOG_RECENT_MAX];
    size_t n = log_recent(lines, LOG_RECENT_MAX);
    json_t *a = json_array();
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_object();
        json_object_set_new(o, "at", iso(lines[i].wall_ms));
        json_object_set_new(o, "level", json_string(log_level_name(lines[i].level)));
        /* A line cut inside a UTF-8 sequence is not a JSON string: keep the valid prefix. */
        json_t *text = json_string(lines[i].line);
        for (size_t cut = strlen(lines[i].line); !text && cut > 0; cut--)
            text = json_stringn(lines[i].line, cut - 1);
        json_object_set_new(o, "line", text ? text : json_string(""));
        json_array_append_new(a, o);
    }
    return a;
}

static json_t *rows_json(const struct status *st, uint64_t now)
{
    json_t *a = json_array();
    uint64_t this_minute = now / 60000;
    for (uint64_t m = this_minute - (STATUS_MINUTES - 1); m <= this_minute; m++) {
        size_t i = (size_t)(m % STATUS_MINUTES);
        json_t *o = json_object();
        json_object_set_new(o, "minute", iso(m * 60000));
        json_object_set_new(o, "rows",
                            json_integer((json_int_t)(st->minute_of[i] == m ? st->rows[i] : 0)));
        json_array_append_new(a, o);
    }
    return a;
}

json_t *status_json(struct status *st, const struct status_view *v)
{
    sample(st);
    uint64_t now = util_wall_ms();
    json_t *j = json_object();
    if (!j)
        return NULL;
    json_object_set_new(j, "version", json_string(COINGEST_VERSION));
    json_object_set_new(j, "generated_at", iso(now));
    json_object_set_new(j, "uptime_s",
                        json_integer((json_int_t)(now > v->started_wall_ms && v->started_wall_ms
                                                      ? (now - v->started_wall_ms) / 1000
                                                      : 0)));
    json_object_set_new(j, "refresh_s", json_integer(STATUS_REFRESH_S));
    json_object_set_new(j, "stopping", json_boolean(v->stopping));

    json_t *health = v->health_json ? json_loads(v->health_json, 0, NULL) : NULL;
    if (!json_is_object(health)) {
        json_decref(health);
        health = json_object();
        json_object_set_new(health, "status", json_string("unknown"));
    }
    json_object_set_new(health, "http_status", json_integer(v->health_status));
    json_object_set_new(j, "health", health);

    json_t *sources = json_array();
    for (size_t i = 0; i < v->cfg->nsources; i++)
        if (v->apis[i])
            json_array_append_new(sources, source_json(st, v, i));
    json_object_set_new(j, "sources", sources);

    json_t *jobs = json_array();
    for (size_t i = 0; i < v->cfg->njobs; i++)
        if (v->apis[v->cfg->jobs[i].source])
            json_array_append_new(jobs, job_json(v, i, now));
    json_object_set_new(j, "jobs", jobs);

    json_object_set_new(j, "sink", sink_json(st));
    json_object_set_new(j, "recent_errors", recent_json());
    json_object_set_new(j, "rows_per_minute", rows_json(st, now));
    return j;
}

/* ---- the page ----------------------------------------------------------------------------- */

static void esc(struct sbuf *b, const char *s)
{
    for (; s && *s; s++) {
        switch (*s) {
        case '&':
            sbuf_puts(b, "&amp;");
            break;
        case '<':
            sbuf_puts(b, "&lt;");
            break;
        case '>':
            sbuf_puts(b, "&gt;");
            break;
        case '"':
            sbuf_puts(b, "&quot;");
            break;
        case '\'':
            sbuf_puts(b, "&#39;");
            break;
        default:
            sbuf_putc(b, *s);
        }
    }
}

/* The value as the page writes it in data-v and, for plain cells, as its text. */
static void value_text(const json_t *v, char *buf, size_t cap)
{
    if (json_is_integer(v))
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT, json_integer_value(v));
    else if (json_is_real(v))
        snprintf(buf, cap, "%.2f", json_real_value(v));
    else if (json_is_string(v))
        snprintf(buf, cap, "%s", json_string_value(v));
    else if (json_is_true(v))
        snprintf(buf, cap, "yes");
    else if (json_is_false(v))
        snprintf(buf, cap, "no");
    else
        snprintf(buf, cap, "n/a");
}

/* "1h 5m", "42 s": a number of seconds for humans. */
static void human_s(json_int_t s, char *buf, size_t cap)
{
    if (s >= 3600 && s % 3600 == 0)
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT "h", s / 3600);
    else if (s >= 60 && s % 60 == 0)
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT "m", s / 60);
    else if (s < 120)
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT " s", s);
    else if (s < 7200)
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT "m %" JSON_INTEGER_FORMAT "s", s / 60, s % 60);
    else if (s < 172800)
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT "h %" JSON_INTEGER_FORMAT "m", s / 3600,
                 s / 60 % 60);
    else
        snprintf(buf, cap, "%" JSON_INTEGER_FORMAT "d %" JSON_INTEGER_FORMAT "h", s / 86400,
                 s / 3600 % 24);
}

/* A cell (`tag`, usually td) for the value at key `key` of object `o`, whose JSON path is
 * `path`; `shown` (may be NULL) is the text for humans, the raw value going to data-v. */
static void cell(struct sbuf *b, const char *tag, const char *cls, const char *path,
                 const json_t *o, const char *key, const char *shown)
{
    const json_t *v = json_object_get(o, key);
    char raw[512];
    value_text(v, raw, sizeof(raw));
    sbuf_printf(b, "<%s", tag);
    if (cls) {
        sbuf_puts(b, " class=\"");
        esc(b, cls);
        sbuf_puts(b, "\"");
    }
    sbuf_printf(b, " data-k=\"%s%s%s\"", path, path[0] ? "." : "", key);
    if (shown) {
        sbuf_puts(b, " data-v=\"");
        esc(b, raw);
        sbuf_puts(b, "\"");
    }
    sbuf_puts(b, ">");
    esc(b, shown ? shown : raw);
    sbuf_printf(b, "</%s>", tag);
}

static json_int_t int_at(const json_t *o, const char *key)
{
    return json_integer_value(json_object_get(o, key));
}

static const char *str_at(const json_t *o, const char *key)
{
    const char *s = json_string_value(json_object_get(o, key));
    return s ? s : "";
}

static const char STYLE[] =
    "body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;background:#f6f7f9;"
    "color:#1d2430}"
    "header{background:#1d2430;color:#fff;padding:12px 24px;display:flex;gap:16px;"
    "align-items:baseline;flex-wrap:wrap}"
    "header h1{font-size:20px;margin:0}header .meta{color:#aab3c0;font-size:12px}"
    "main{padding:8px 24px 24px}h2{font-size:15px;margin:20px 0 6px}"
    "table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0002}"
    "th,td{text-align:left;padding:5px 10px;border-bottom:1px solid #e4e7ec;vertical-align:top}"
    "th{background:#eef1f5;font-weight:600;font-size:12px;color:#4a5566}"
    "td.n{text-align:right;font-variant-numeric:tabular-nums}"
    ".pill{display:inline-block;padding:1px 8px;border-radius:9px;font-size:12px;"
    "font-weight:600}"
    ".ok{background:#d7f5df;color:#17692f}.partial,.degraded,.warn{background:#fff0c2;"
    "color:#7a5500}"
    ".failed,.unhealthy,.error,.down{background:#ffd9d6;color:#9b1c13}.up{background:#d7f5df;"
    "color:#17692f}"
    ".unknown{background:#e4e7ec}.err{color:#9b1c13;font-size:12px;max-width:420px;"
    "word-break:break-word}"
    ".reason{color:#ffd27a}.muted{color:#7a8494}"
    "ol.log{background:#fff;margin:0;padding:6px 6px 6px 36px;font:12px/1.5 ui-monospace,"
    "monospace;box-shadow:0 1px 2px #0002}"
    "ol.log li{word-break:break-all}svg{background:#fff;box-shadow:0 1px 2px #0002}"
    "footer{padding:0 24px 24px;font-size:12px;color:#7a8494}";

static void page_sources(struct sbuf *b, const json_t *j)
{
    sbuf_puts(b, "<h2>Sources</h2><table><tr><th>source</th><th>plan</th><th>rate limit/min</th>"
                 "<th>bucket tokens</th><th>burst</th><th>queued</th><th>paused</th>"
                 "<th>calls last minute</th><th>calls since start</th><th>calls this month</th>"
                 "<th>credits left</th><th>in flight</th><th>failures</th></tr>");
    const json_t *src;
    size_t i;
    json_array_foreach(json_object_get(j, "sources"), i, src)
    {
        char p[64], pb[80], txt[64];
        snprintf(p, sizeof(p), "sources.%zu", i);
        snprintf(pb, sizeof(pb), "%s.bucket", p);
        const json_t *bk = json_object_get(src, "bucket");
        sbuf_puts(b, "<tr>");
        cell(b, "td", NULL, p, src, "name", NULL);
        cell(b, "td", NULL, p, src, "plan", NULL);
        cell(b, "td", "n", p, src, "rate_limit_per_min", NULL);
        cell(b, "td", "n", pb, bk, "tokens", NULL);
        cell(b, "td", "n", pb, bk, "burst", NULL);
        cell(b, "td", "n", pb, bk, "queued", NULL);
        human_s(int_at(bk, "paused_s"), txt, sizeof(txt));
        cell(b, "td", "n", pb, bk, "paused_s", int_at(bk, "paused_s") ? txt : "no");
        cell(b, "td", "n", p, src, "calls_last_minute", NULL);
        cell(b, "td", "n", p, src, "calls_since_start", NULL);
        cell(b, "td", "n", p, src, "calls_this_month", NULL);
        cell(b, "td", "n", p, src, "credits_left",
             json_is_null(json_object_get(src, "credits_left")) &&
                     int_at(src, "monthly_credits") == 0
                 ? "no cap"
                 : NULL);
        cell(b, "td", "n", p, src, "requests_in_flight", NULL);
        cell(b, "td", int_at(src, "failures") ? "n failed" : "n", p, src, "failures", NULL);
        sbuf_puts(b, "</tr>");
    }
    sbuf_puts(b, "</table>");
}

static void page_jobs(struct sbuf *b, const json_t *j)
{
    sbuf_puts(b, "<h2>Jobs</h2><table><tr><th>job</th><th>source</th><th>every</th>"
                 "<th>last run</th><th>finished</th><th>duration s</th><th>requests</th>"
                 "<th>rows</th><th>error</th><th>failed in a row</th><th>next run</th></tr>");
    const json_t *job;
    size_t i;
    json_array_foreach(json_object_get(j, "jobs"), i, job)
    {
        char p[64], pr[80], txt[96];
        snprintf(p, sizeof(p), "jobs.%zu", i);
        snprintf(pr, sizeof(pr), "%s.last_run", p);
        sbuf_puts(b, "<tr>");
        cell(b, "td", NULL, p, job, "name", NULL);
        cell(b, "td", NULL, p, job, "source", NULL);
        human_s(int_at(job, "every_s"), txt, sizeof(txt));
        cell(b, "td", NULL, p, job, "every_s", txt);
        const json_t *run = json_object_get(job, "last_run");
        if (json_is_object(run)) {
            sbuf_puts(b, "<td>");
            char cls[48];
            snprintf(cls, sizeof(cls), "pill %s", str_at(run, "status"));
            cell(b, "span", cls, pr, run, "status", NULL);
            if (json_is_true(json_object_get(job, "running")))
                sbuf_puts(b, " <span class=\"muted\">running again</span>");
            sbuf_puts(b, "</td>");
            char ago[64];
            human_s(int_at(run, "ago_s"), ago, sizeof(ago));
            snprintf(txt, sizeof(txt), "%s ago", ago);
            cell(b, "td", NULL, pr, run, "ago_s", txt);
            cell(b, "td", "n", pr, run, "duration_s", NULL);
            cell(b, "td", "n", pr, run, "requests", NULL);
            cell(b, "td", "n", pr, run, "rows", NULL);
            const json_t *err = json_object_get(run, "error");
            cell(b, "td", "err", pr, run, "error", json_is_null(err) ? "" : NULL);
        } else {
            sbuf_printf(b, "<td colspan=\"6\" class=\"muted\" data-k=\"%s.last_run\">%s</td>", p,
                        json_is_true(json_object_get(job, "running")) ? "first run going on"
                                                                      : "no run yet");
        }
        cell(b, "td", int_at(job, "failed_streak") ? "n failed" : "n", p, job, "failed_streak",
             NULL);
        const json_t *in = json_object_get(job, "next_run_in_s");
        if (json_is_integer(in)) {
            char when[64];
            human_s(json_integer_value(in), when, sizeof(when));
            snprintf(txt, sizeof(txt), "in %s", when);
        } else {
            snprintf(txt, sizeof(txt), "%s",
                     json_is_true(json_object_get(job, "enabled")) ? "not scheduled" : "disabled");
        }
        cell(b, "td", NULL, p, job, "next_run_in_s", txt);
        sbuf_puts(b, "</tr>");
    }
    sbuf_puts(b, "</table>");
}

static void page_sink(struct sbuf *b, const json_t *j)
{
    const json_t *s = json_object_get(j, "sink");
    sbuf_puts(b, "<h2>Database and spool</h2><table><tr><th>database</th><th>rows committed</th>"
                 "<th>rows pending</th><th>spool rows</th><th>spool bytes</th>"
                 "<th>rows rejected</th><th>rows lost</th></tr><tr><td>");
    char cls[48];
    snprintf(cls, sizeof(cls), "pill %s", str_at(s, "db"));
    cell(b, "span", cls, "sink", s, "db", NULL);
    sbuf_puts(b, "</td>");
    cell(b, "td", "n", "sink", s, "rows_committed", NULL);
    cell(b, "td", "n", "sink", s, "rows_pending", NULL);
    cell(b, "td", "n", "sink", s, "spool_rows", NULL);
    cell(b, "td", "n", "sink", s, "spool_bytes", NULL);
    cell(b, "td", "n", "sink", s, "rows_rejected", NULL);
    cell(b, "td", "n", "sink", s, "rows_lost", NULL);
    sbuf_puts(b, "</tr></table>");
}

/* [cluster]: this instance and every lease in cluster_leases (the daemon adds "cluster" to the
 * snapshot only in cluster mode; cluster.h). */
static void page_cluster(struct sbuf *b, const json_t *j)
{
    const json_t *c = json_object_get(j, "cluster");
    if (!json_is_object(c))
        return;
    sbuf_puts(b, "<h2>Cluster: this instance is ");
    cell(b, "span", NULL, "cluster", c, "instance", NULL);
    sbuf_puts(b, "</h2><table><tr><th>lease</th><th>holder</th><th>held here</th>"
                 "<th>token</th><th>expires in (ms)</th></tr>");
    const json_t *leases = json_object_get(c, "leases");
    for (size_t i = 0; i < json_array_size(leases); i++) {
        const json_t *l = json_array_get(leases, i);
        char path[64];
        snprintf(path, sizeof(path), "cluster.leases.%zu", i);
        sbuf_puts(b, "<tr>");
        cell(b, "td", NULL, path, l, "name", NULL);
        cell(b, "td", NULL, path, l, "holder",
             json_is_null(json_object_get(l, "holder")) ? "(expired)" : NULL);
        cell(b, "td", NULL, path, l, "mine", NULL);
        cell(b, "td", "n", path, l, "token", NULL);
        cell(b, "td", "n", path, l, "expires_in_ms", NULL);
        sbuf_puts(b, "</tr>");
    }
    if (json_is_string(json_object_get(c, "db_error"))) {
        sbuf_puts(b, "<tr><td colspan=\"5\">");
        cell(b, "span", "err", "cluster", c, "db_error", NULL);
        sbuf_puts(b, "</td></tr>");
    }
    sbuf_puts(b, "</table>");
}

/* Bars of committed rows per minute, oldest on the left, scaled to the largest. */
static void page_chart(struct sbuf *b, const json_t *j)
{
    const json_t *a = json_object_get(j, "rows_per_minute");
    size_t n = json_array_size(a);
    json_int_t max = 0, total = 0;
    for (size_t i = 0; i < n; i++) {
        json_int_t r = int_at(json_array_get(a, i), "rows");
        total += r;
        if (r > max)
            max = r;
    }
    const int W = 720, H = 140, top = 18, bottom = 18, left = 8;
    double bw = n ? (double)(W - 2 * left) / (double)n : 0;
    sbuf_printf(b,
                "<h2>Rows committed per minute, last hour (<span data-k=\"rows_per_minute_total\" "
                "data-v=\"%" JSON_INTEGER_FORMAT "\">%" JSON_INTEGER_FORMAT
                " rows</span>)</h2><svg width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
                "role=\"img\" aria-label=\"rows committed per minute\">",
                total, total, W, H, W, H);
    sbuf_printf(
        b,
        "<text x=\"%d\" y=\"12\" font-size=\"11\" fill=\"#7a8494\" data-k=\"rows_per_minute_max\" "
        "data-v=\"%" JSON_INTEGER_FORMAT "\">max %" JSON_INTEGER_FORMAT "/min</text>",
        left, max, max);
    for (size_t i = 0; i < n; i++) {
        const json_t *m = json_array_get(a, i);
        json_int_t r = int_at(m, "rows");
        double h = max ? (double)r * (H - top - bottom) / (double)max : 0;
        if (r > 0 && h < 1)
            h = 1;
        sbuf_printf(
            b,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"#3b7dd8\" "
            "data-k=\"rows_per_minute.%zu.rows\" data-v=\"%" JSON_INTEGER_FORMAT "\"><title>",
            left + (double)i * bw + 1, (double)(H - bottom) - h, bw > 2 ? bw - 2 : bw, h, i, r);
        esc(b, str_at(m, "minute"));
        sbuf_printf(b, ": %" JSON_INTEGER_FORMAT " rows</title></rect>", r);
    }
    sbuf_printf(b,
                "<line x1=\"%d\" y1=\"%d\" x2=\"%d\" y2=\"%d\" stroke=\"#c5ccd6\"/>"
                "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#7a8494\">-60 min</text>"
                "<text x=\"%d\" y=\"%d\" font-size=\"11\" fill=\"#7a8494\" "
                "text-anchor=\"end\">now</text></svg>",
                left, H - bottom, W - left, H - bottom, left, H - 4, W - left, H - 4);
}

static void page_recent(struct sbuf *b, const json_t *j)
{
    const json_t *a = json_object_get(j, "recent_errors");
    sbuf_printf(b,
                "<h2>Recent warnings and errors (<span data-k=\"recent_errors_count\" "
                "data-v=\"%zu\">%zu</span>, newest first)</h2>",
                json_array_size(a), json_array_size(a));
    if (!json_array_size(a)) {
        sbuf_puts(b, "<p class=\"muted\">none since the daemon started</p>");
        return;
    }
    sbuf_puts(b, "<ol class=\"log\">");
    const json_t *e;
    size_t i;
    json_array_foreach(a, i, e)
    {
        char p[64];
        snprintf(p, sizeof(p), "recent_errors.%zu", i);
        sbuf_puts(b, "<li>");
        char cls[48];
        snprintf(cls, sizeof(cls), "pill %s", str_at(e, "level"));
        cell(b, "span", cls, p, e, "level", NULL);
        sbuf_puts(b, " ");
        cell(b, "span", "muted", p, e, "at", NULL);
        sbuf_puts(b, " ");
        cell(b, "span", NULL, p, e, "line", NULL);
        sbuf_puts(b, "</li>");
    }
    sbuf_puts(b, "</ol>");
}

char *status_html(const json_t *j, size_t *len)
{
    struct sbuf b = {0};
    const json_t *health = json_object_get(j, "health");
    char up[64];
    human_s(int_at(j, "uptime_s"), up, sizeof(up));
    sbuf_printf(&b,
                "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
                "<meta http-equiv=\"refresh\" content=\"%" JSON_INTEGER_FORMAT "\">"
                "<meta name=\"viewport\" content=\"width=device-width\">"
                "<title>coingest status</title><style>%s</style></head><body><header>"
                "<h1>coingest</h1>",
                int_at(j, "refresh_s"), STYLE);
    char cls[48];
    snprintf(cls, sizeof(cls), "pill %s", str_at(health, "status"));
    cell(&b, "span", cls, "health", health, "status", NULL);
    if (json_is_string(json_object_get(health, "reason"))) {
        sbuf_puts(&b, " ");
        cell(&b, "span", "reason", "health", health, "reason", NULL);
    }
    if (json_is_true(json_object_get(j, "stopping")))
        sbuf_puts(&b, " <span class=\"pill warn\">stopping</span>");
    sbuf_puts(&b, "<span class=\"meta\">version ");
    esc(&b, str_at(j, "version"));
    sbuf_puts(&b, " &middot; up ");
    esc(&b, up);
    sbuf_puts(&b, " &middot; ");
    cell(&b, "span", NULL, "", j, "generated_at", NULL);
    sbuf_printf(&b, " &middot; refreshes every %" JSON_INTEGER_FORMAT " s</span></header><main>",
                int_at(j, "refresh_s"));
    page_sources(&b, j);
    page_jobs(&b, j);
    page_sink(&b, j);
    page_cluster(&b, j);
    page_chart(&b, j);
    page_recent(&b, j);
    sbuf_puts(&b, "</main><footer>The same data as JSON: <a href=\"/status.json\">/status.json"
                  "</a> &middot; <a href=\"/metrics\">/metrics</a> &middot; "
                  "<a href=\"/healthz\">/healthz</a>. Calls this month count the requests of "
                  "the month's finished runs (job_runs).</footer></body></html>\n");
    if (sbuf_failed(&b)) {
        sbuf_free(&b);
        return NULL;
    }
    *len = b.len;
    return b.p;
}
