"""The Grafana dashboards and the compose stack that serves them (issue 18, "dashboards").

Docker cannot run here, so the stack is checked statically and every query is run for real:

1. dashboards/grafana/dashboards/*.json parse, have unique uids and panel ids, and every
   panel names a data source the provisioning file defines (by uid and type).
2. The metrics dashboard: every metric family its PromQL names is in docs/operations.md's
   metric table, and in a live /metrics of a daemon that ran its jobs (families that appear
   only on some event, e.g. a 429, are allowed when documented); with the Debian prometheus
   package installed, a real Prometheus scrapes that daemon and answers every expression
   (Grafana's $__rate_interval as 1m) without an error.
3. The data dashboard: every SQL panel runs against the test database that daemon filled
   (Grafana's $__timeFilter(col) as a range over all time), and the panels the issue names --
   latest prices, market cap of the top 20, job runs -- return rows.
4. docker-compose.yml: grafana mounts the provisioning and the dashboards where the provider
   file looks, prometheus gets a config that scrapes coingest:9464, metabase-setup runs
   dashboards/metabase/setup.sh (shellcheck-clean when shellcheck is installed).
"""
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

HERE = os.environ.get("COINGEST_SOURCE_DIR", ".")
DASH = os.path.join(HERE, "dashboards")


def get(url):
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.read().decode()


def documented_families():
    text = open(os.path.join(HERE, "docs", "operations.md")).read()
    return set(re.findall(r"^\| `(coingest_[a-z0-9_]+)` \|", text, re.M))


def live_families(metrics_text):
    fams = set()
    for line in metrics_text.splitlines():
        m = re.match(r"# TYPE (\S+) ", line)
        if m:
            fams.add(m.group(1))
    return fams


def family(name):
    for suffix in ("_sum", "_count", "_bucket"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def promql(expr):
    return expr.replace("$__rate_interval", "1m").replace("$__interval", "15s").replace(
        "$__range", "1h")


def grafana_sql(q):
    far = "'1970-01-01 00:00:00' AND '2100-01-01 00:00:00'"
    q = re.sub(r"\$__timeFilter\(([^)]+)\)", lambda m: f"{m.group(1)} BETWEEN {far}", q)
    return q.replace("$__timeFrom()", "'1970-01-01 00:00:00'").replace(
        "$__timeTo()", "'2100-01-01 00:00:00'")


def main():
    h.need_env()
    try:
        import yaml
    except ImportError:
        h.skip("python3-yaml is missing (scripts/test installs it)")
    check = h.Check()
    work = h.tempdir("coingest-dash.")
    api = db = d = prom = None

    # --- 1. the files ------------------------------------------------------------------------
    prov = yaml.safe_load(open(os.path.join(DASH, "grafana", "provisioning", "datasources",
                                            "coingest.yml")))
    sources = {s["uid"]: s["type"] for s in prov["datasources"]}
    check(sources == {"coingest-prometheus": "prometheus", "coingest-mysql": "mysql"},
          f"provisioned data sources {sources}")
    dashboards = {}
    for path in sorted(glob.glob(os.path.join(DASH, "grafana", "dashboards", "*.json"))):
        try:
            dashboards[os.path.basename(path)] = json.load(open(path))
        except ValueError as e:
            check(False, f"{path} parses: {e}")
    check(set(dashboards) == {"coingest-metrics.json", "coingest-data.json"},
          f"two dashboards: {sorted(dashboards)}")
    uids = [dsh["uid"] for dsh in dashboards.values()]
    check(len(set(uids)) == len(uids), f"unique dashboard uids {uids}")
    exprs, sqls = [], []
    for name, dsh in dashboards.items():
        ids = [p["id"] for p in dsh["panels"]]
        check(len(set(ids)) == len(ids), f"{name}: unique panel ids")
        for p in dsh["panels"]:
            ds = p.get("datasource") or {}
            ok = sources.get(ds.get("uid")) == ds.get("type") and p.get("targets")
            check(ok, f"{name}: panel '{p['title']}' uses a provisioned data source")
            for t in p.get("targets", []):
                tds = t.get("datasource", ds)
                if tds.get("type") == "prometheus":
                    exprs.append((p["title"], t["expr"]))
                else:
                    sqls.append((p["title"], t["rawSql"]))
    check(len(exprs) >= 10 and len(sqls) >= 5, f"{len(exprs)} PromQL and {len(sqls)} SQL queries")

    try:
        # --- a daemon that ran its jobs ------------------------------------------------------
        api = h.FakeAPI(work, "--universe", "40")
        db = h.Database(f"dash_{os.getpid()}")
        port = h.free_port()
        conf = os.path.join(work, "d.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"),
                       jobs="[job.assets]\nevery = 1h\n[job.prices]\nevery = 1h\n"
                            "[job.market_caps]\nevery = 1h\n")
        text = open(conf).read().replace("metrics_listen =", f"metrics_listen = 127.0.0.1:{port}")
        open(conf, "w").write(text)
        d = h.start_daemon(conf, stderr_path=os.path.join(work, "daemon.log"))
        h.wait_for(lambda: db.count("job_runs") >= 3 if db.scalar(
            "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() "
            "AND table_name = 'job_runs'") == "1" else False, timeout=90, what="three job runs")
        metrics = get(f"http://127.0.0.1:{port}/metrics")

        # --- 2. PromQL -----------------------------------------------------------------------
        docs = documented_families()
        live = live_families(metrics)
        used = set()
        for _, e in exprs:
            used |= {family(n) for n in re.findall(r"\bcoingest_[a-z0-9_]+", e)}
        check(used and not (used - docs),
              f"{len(used)} metric families the dashboard queries are documented "
              f"(not: {sorted(used - docs)})")
        event_only = used - live
        print("note: families that appear on their first event, not in this run's /metrics:",
              sorted(event_only))
        check(not (event_only - docs), "and each one the live /metrics lacks is documented")
        check(len(used & live) >= 15, f"{len(used & live)} of them are in the live /metrics")

        promtool = shutil.which("prometheus")
        if not promtool:
            print("NOT CHECKED: the PromQL against a real Prometheus (Debian package prometheus "
                  "missing)")
        else:
            pport = h.free_port()
            pconf = os.path.join(work, "prometheus.yml")
            open(pconf, "w").write(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: coingest\n"
                f"    static_configs:\n      - targets: ['127.0.0.1:{port}']\n")
            plog = open(os.path.join(work, "prometheus.log"), "w")
            prom = subprocess.Popen(
                [promtool, f"--config.file={pconf}",
                 f"--storage.tsdb.path={os.path.join(work, 'tsdb')}",
                 f"--web.listen-address=127.0.0.1:{pport}"], stdout=plog, stderr=subprocess.STDOUT)
            purl = f"http://127.0.0.1:{pport}/api/v1/query?query="

            def scraped():
                try:
                    r = json.loads(get(purl + urllib.parse.quote("up{job='coingest'}")))
                except OSError:
                    return False
                res = r.get("data", {}).get("result", [])
                return res and res[0]["value"][1] == "1"

            h.wait_for(scraped, timeout=60, step=0.5, what="Prometheus scraping the daemon")
            time.sleep(2.5)  # a few samples, so rate() has two points
            bad = []
            for title, e in exprs:
                try:
                    r = json.loads(get(purl + urllib.parse.quote(promql(e))))
                    if r.get("status") != "success":
                        bad.append(f"{title}: {e}: {r}")
                except OSError as err:
                    bad.append(f"{title}: {e}: {err}")
            check(not bad, f"Prometheus answers all {len(exprs)} expressions ({bad[:3]})")
            r = json.loads(get(purl + urllib.parse.quote(
                "sum by (status) (increase(coingest_http_requests_total[1m]))")))
            check(r["status"] == "success", "a query over the daemon's counters runs")

        # --- 3. SQL --------------------------------------------------------------------------
        results = {}
        for title, q in sqls:
            try:
                results[title] = db.sql(grafana_sql(q))
                check(True, f"SQL of '{title}' runs ({len(results[title])} rows)")
            except RuntimeError as e:
                check(False, f"SQL of '{title}': {e}")
        for title in ("Latest prices (USD), top 50 by market cap",
                      "Market cap of the top 20 (USD)", "Job runs"):
            check(results.get(title), f"'{title}' returns rows")
        top = results.get("Market cap of the top 20 (USD)") or []
        caps = [float(r[1]) for r in top]
        check(0 < len(top) <= 20 and caps == sorted(caps, reverse=True),
              f"top 20: {len(top)} assets, largest first")
    finally:
        for p in (prom, d):
            if p and p.poll() is None:
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        if api:
            api.stop()
        if db:
            db.drop()

    # --- 4. the compose stack ----------------------------------------------------------------
    compose = yaml.safe_load(open(os.path.join(HERE, "docker-compose.yml")))
    svc = compose["services"]
    for name in ("prometheus", "grafana", "metabase", "metabase-setup"):
        check(name in svc and "dashboards" in (svc[name].get("profiles") or []),
              f"compose service {name} under the dashboards profile")
    gvol = " ".join(svc["grafana"].get("volumes", []))
    provider = yaml.safe_load(open(os.path.join(DASH, "grafana", "provisioning", "dashboards",
                                                "coingest.yml")))
    ppath = provider["providers"][0]["options"]["path"]
    check("./dashboards/grafana/provisioning:/etc/grafana/provisioning" in gvol and
          f"./dashboards/grafana/dashboards:{ppath}" in gvol,
          "grafana mounts the provisioning and the dashboards where the provider looks")
    check("db_password" in (svc["grafana"].get("secrets") or []),
          "grafana gets the database password the data source reads ($__file)")
    pconf = yaml.safe_load(open(os.path.join(DASH, "prometheus", "prometheus.yml")))
    targets = pconf["scrape_configs"][0]["static_configs"][0]["targets"]
    check(targets == ["coingest:9464"], f"prometheus scrapes coingest:9464 ({targets})")
    check(any("setup.sh" in v for v in svc["metabase-setup"].get("volumes", [])),
          "metabase-setup runs dashboards/metabase/setup.sh")
    if shutil.which("shellcheck"):
        p = subprocess.run(["shellcheck", os.path.join(DASH, "metabase", "setup.sh")],
                           capture_output=True, text=True)
        check(p.returncode == 0, f"setup.sh is shellcheck-clean {p.stdout[:300]}")
    check.done()


if __name__ == "__main__":
    main()
