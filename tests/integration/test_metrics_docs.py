"""/metrics of a running daemon against the metric list in docs/operations.md, both ways.

The documented list is the table under "### Metrics" in docs/operations.md: one row per metric
family, the family name in backticks in the first column, its type in the second and every
label it carries (in backticks) in the third. The test reads that table, never the sources.

A real coingestd runs against the fake API (a 200-coin universe) and a private database, with
metrics_listen on a free port and the three jobs running at start. So that every documented
family has a series, the run provokes the events that create them:

- the first /simple/price answer is delayed 5 s while prices ticks every 2 s: ticks are
  skipped (coingest_job_skipped_total{job="prices"} must count them);
- /coins/categories/list answers a 429 first (http_429_total, http_retries_total), then a
  category whose id is longer than its column, which the database rejects for good
  (rejected_rows_total{table="categories"});
- the first /coins/markets page is not a JSON array (parse_errors_total, retried);
- /global answers 404 (http_errors_total: a 4xx is not retried);
- once the jobs ran, the test kills the daemon's database connections, so the next write
  fails and is retried (write_errors_total);
- SIGHUP with the same file (reloads_total), then with a broken one (reload_failures_total).

Counters without labels that the daemon shows at 0 from the start (spool_corrupt_records,
field_errors) need no event. Some families are not produced here, and the test says so instead of
passing over them silently: coingest_rows_lost_total needs the spool to fail while memory is
full, and the coingest_cluster_* families need [cluster] enabled (test_cluster_galera checks
those on a running cluster); each is checked like any other family if it does appear. Waits
are bounded.

The checks: every coingest_* family exposed is documented, with the documented type and a HELP
line; every label an exposed series carries is in its family's row; every documented family is
exposed (except those above) and every documented label is seen on one of its series.
"""
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

# Documented families this run cannot produce, and why.
NOT_PRODUCED = {
    "coingest_rows_lost_total": "needs the spool failing while memory is full",
    "coingest_cluster_instance_info": "needs [cluster] enabled (test_cluster_galera checks it)",
    "coingest_cluster_lease_held": "needs [cluster] enabled (test_cluster_galera checks it)",
    "coingest_cluster_lease_changes_total": "needs [cluster] enabled (test_cluster_galera)",
}
# Documented labels that the code does not carry yet, and why. Remove an entry once the label
# is exposed (the test prints a note when it sees one).
PENDING_LABELS = {}

DOC_ROW = re.compile(r"^\|\s*`(coingest_[a-z0-9_]+)`\s*\|\s*([a-z]+)\s*\|([^|]*)\|")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)$")


def documented(path):
    """{family: (type, {labels})} from the table under '### Metrics'."""
    out = {}
    in_section = False
    for line in open(path, encoding="utf-8"):
        if line.startswith("#"):
            in_section = line.strip() == "### Metrics"
            continue
        m = DOC_ROW.match(line) if in_section else None
        if m:
            if m.group(1) in out:
                raise AssertionError(f"{m.group(1)} is documented twice")
            out[m.group(1)] = (m.group(2), set(re.findall(r"`([a-zA-Z_][a-zA-Z0-9_]*)`",
                                                          m.group(3))))
    return out


def exposed(text):
    """({family: type}, {family: help}, {family: [label dicts]}) from a Prometheus text body."""
    types, helps, series = {}, {}, {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
        elif line.startswith("# HELP "):
            parts = line.split(" ", 3)
            helps[parts[2]] = parts[3] if len(parts) > 3 else ""
        elif line and not line.startswith("#"):
            m = SAMPLE.match(line)
            if not m:
                raise AssertionError(f"unparsable /metrics line: {line!r}")
            name = m.group(1)
            family = name
            if name not in types:
                for suffix in ("_sum", "_count"):
                    base = name[:-len(suffix)]
                    if name.endswith(suffix) and types.get(base) == "summary":
                        family = base
            series.setdefault(family, []).append(dict(LABEL.findall(m.group(2) or "")))
    return types, helps, series


def value(text, name, labels=""):
    """The value of one series (labels as rendered, e.g. 'job="prices"'), or None."""
    want = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return None


def main():
    h.need_env()
    check = h.Check()
    doc_path = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "docs", "operations.md")
    docs = documented(doc_path)
    check(len(docs) >= 20, f"the metric table in docs/operations.md parses ({len(docs)} rows)")

    work = h.tempdir("coingest-metrics-docs.")
    api = h.FakeAPI(work, "--universe", "200")
    db = h.Database(f"metrics_docs_{os.getpid()}")
    port = h.free_port()
    conf = os.path.join(work, "metrics.conf")
    jobs = ("[job.assets]\nevery = 24h\n"
            "[job.prices]\nevery = 2s\nalign = false\n"
            "[job.market_caps]\nevery = 24h\n")
    h.write_config(conf, db, api.base_url, os.path.join(work, "spool"), jobs=jobs)
    good = open(conf).read().replace("metrics_listen =\n", f"metrics_listen = 127.0.0.1:{port}\n")
    open(conf, "w").write(good)

    long_id = "x" * 300  # categories.id is VARCHAR(255): rejected in strict mode
    api.control("POST", "faults", [
        {"match": "/simple/price", "kind": "delay", "seconds": 5},
        {"match": "/coins/categories/list", "status": 429, "retry_after": 0},
        {"match": "/coins/categories/list", "status": 200,
         "body": [{"category_id": "layer-1", "name": "Layer 1 (L1)"},
                  {"category_id": long_id, "name": "Too long"}]},
        {"match": "/coins/markets", "status": 200, "body": {"not": "a page"}},
        {"match": "/global", "status": 404},
    ])

    stderr_path = os.path.join(work, "daemon.log")
    d = h.start_daemon(conf, stderr_path=stderr_path)

    def scrape():
        if d.poll() is not None:
            raise AssertionError(f"the daemon exited ({d.returncode}): "
                                 + open(stderr_path).read()[-3000:])
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
                return r.read().decode()
        except OSError:
            return ""

    def wait_series(name, labels="", at_least=1, timeout=120):
        def seen():
            v = value(scrape(), name, labels)
            return v is not None and v >= at_least
        h.wait_for(seen, timeout, step=0.3,
                   what=f"{name}{{{labels}}} >= {at_least} on /metrics (daemon log: "
                        f"{stderr_path})")

    try:
        # Every job has finished a run (whatever its outcome), and prices skipped a tick.
        for job in ("assets", "prices", "market_caps"):
            h.wait_for(lambda: any(f'job="{job}"' in line for line in scrape().splitlines()
                                   if line.startswith("coingest_job_runs_total{")),
                       120, step=0.3, what=f"a finished {job} run on /metrics")
        check(True, "the three jobs ran")
        wait_series("coingest_job_skipped_total", 'job="prices"')
        check(True, "prices skipped a tick while its slow run was going")
        wait_series("coingest_rejected_rows_total", 'table="categories"')
        check(True, "the too-long category was rejected")

        # The next write after its connections are killed fails and is retried.
        rows = db.sql("SELECT ID FROM information_schema.PROCESSLIST "
                      f"WHERE DB = '{db.name}' AND ID <> CONNECTION_ID()")
        check(len(rows) >= 1, f"the daemon's database connections found ({len(rows)})")
        for (cid,) in rows:
            try:
                db.sql(f"KILL CONNECTION {int(cid)}")
            except RuntimeError:
                pass  # it ended by itself meanwhile
        wait_series("coingest_write_errors_total",
                    'reason="connection"', timeout=60)
        check(True, "a write on a killed connection counted as a write error")

        # A reload that applies, then one that is refused.
        d.send_signal(signal.SIGHUP)
        wait_series("coingest_reloads_total", timeout=30)
        open(conf, "w").write(good.replace("every = 2s", "every = 2 fortnights"))
        d.send_signal(signal.SIGHUP)
        wait_series("coingest_reload_failures_total", timeout=30)
        open(conf, "w").write(good)
        check(True, "reloads and a refused reload counted")

        text = scrape()
    except AssertionError as e:
        check(False, str(e))
        text = scrape() if d.poll() is None else ""
    finally:
        if d.poll() is None:
            d.send_signal(signal.SIGTERM)
            try:
                d.wait(60)
            except subprocess.TimeoutExpired:
                d.kill()
                d.wait()
        api.stop()
        db.drop()

    types, helps, series = exposed(text)
    families = {n for n in set(types) | set(series) if n.startswith("coingest_")}
    check(len(families) > 0, f"/metrics exposes coingest_* families ({len(families)})")

    # Exposed -> documented.
    for fam in sorted(families):
        if fam not in docs:
            check(False, f"{fam} is exposed but not documented in docs/operations.md")
            continue
        want_type, want_labels = docs[fam]
        check.eq(types.get(fam), want_type, f"{fam}: TYPE as documented")
        check(bool(helps.get(fam)), f"{fam}: has a HELP text")
        seen = set().union(*(set(s) for s in series.get(fam, [{}])))
        extra = seen - want_labels
        check(not extra, f"{fam}: every exposed label is documented"
                         + (f" (undocumented: {sorted(extra)})" if extra else ""))

    # Documented -> exposed.
    for fam, (_, want_labels) in sorted(docs.items()):
        if fam in NOT_PRODUCED and fam not in series:
            print(f"NOT CHECKED: {fam} is documented but this run cannot produce it: "
                  f"{NOT_PRODUCED[fam]}")
            continue
        if not series.get(fam):
            check(False, f"{fam} is documented but /metrics has no series of it")
            continue
        seen = set().union(*(set(s) for s in series[fam]))
        missing = want_labels - seen
        pending, why = PENDING_LABELS.get(fam, (set(), ""))
        for label in sorted(missing & pending):
            print(f"NOT CHECKED: {fam} label {label!r} is documented ahead of the code: {why}")
        for label in sorted(pending & seen):
            print(f"NOTE: {fam} now carries {label!r}: remove it from PENDING_LABELS")
        missing -= pending
        check(not missing, f"{fam}: every documented label is exposed"
                           + (f" (never seen: {sorted(missing)})" if missing else ""))

    check.done()


if __name__ == "__main__":
    main()
