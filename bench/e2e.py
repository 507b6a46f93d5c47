#!/usr/bin/env python3
"""bench/e2e.py: the whole pipeline measured, end to end.

The real coingestd against the fake API's synthetic universe (17,500 coins by default, shaped
like the real /coins/markets pages) on loopback with no rate limit, writing into a fresh
database on the private MariaDB that bench/run starts:

  run=first   `--once assets,market_caps` into an empty database (schema migration included)
  run=tick    the market moves one tick, then `--once assets,market_caps` again
  run=prices  the market moves one more tick, then `--once prices` (the 5-minute job)

Each case is repeated BENCH_E2E_REPS times (default 3), each repetition on a fresh database
and with the fake API back at tick 0; the repetition with the median wall time is printed.
With BENCH_PRERENDER=1 (the default) the fake API runs with --prerender and one untimed
repetition comes first: every page the client asks for is then served from the fake's memory,
as a real API's cache would, so that wall_s measures the client and not the stand-in's Python
building the page (BENCH_PRERENDER=0: every page is built on request, as before).

  bench=e2e run=first universe=.. wall_s=.. rows=.. rows_per_s=.. requests=..
    requests_per_s=.. cpu_s=.. rows_per_cpu_s=.. peak_rss_kb=.. jobs_s=.. new_db_rows=..
    api_cpu_s=.. db_cpu_s=.. prerender=0|1

rows and requests are the daemon's own summary lines (`job=.. rows=N requests=N`); cpu_s
(user+sys) and peak_rss_kb come from wait4() on the daemon, so they are the daemon's alone.
jobs_s is the time the jobs ran (fetch, parse, hand-off), wall_s adds process start, schema
check and the wait until every row is committed. new_db_rows counts rows that did not exist
before (the tick run updates the assets rather than adding them). api_cpu_s and db_cpu_s are
the CPU the fake API and the MariaDB server used during the run: what else the 2 cores did.

Before each run the fake API computes the new tick (one warm-up request, then its request log
is cleared): that Python work belongs to the stand-in, not to anything a real API would make
the daemon wait for. Nothing here passes or fails on time; a run that fails is an error.

Environment: COINGESTD, FAKEAPI, COINGEST_SOURCE_DIR (as ctest sets them), COINGEST_TEST_DB_*
(scripts/mariadb-private), BENCH_UNIVERSE (17500), BENCH_E2E_REPS (3), BENCH_PRERENDER (1),
BENCH_WORKDIR.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("COINGEST_SOURCE_DIR") or os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
import harness as h  # noqa: E402

TABLES = ("assets", "prices", "market_snapshots", "global_snapshots", "categories",
          "asset_categories", "job_runs", "rejected_rows")
SUMMARY = re.compile(r"^job=(\S+) status=(\S+) requests=(\d+) rows=(\d+) counted=\d+ "
                     r"seconds=([0-9.]+)")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def need(var):
    v = os.environ.get(var)
    if not v:
        sys.exit(f"bench/e2e.py: {var} is not set (run bench/run)")
    return v


def bench_config(path, db, base_url, spool_dir, extra=""):
    """The default configuration, except: no client-side rate limit (the fake API has none
    either), and flush_interval 100ms so that commits follow the runs closely. `extra` is
    appended (more sections)."""
    with open(path, "w") as f:
        f.write(h.daemon_sections(db, spool_dir, "100ms", shutdown_timeout="120s") + f"""
[source.coingecko]
base_url = {base_url}
plan = public
rate_limit = 1000000/s
burst = 1000000
plan_limit = 1000000/s

[universe]
ids = all
{extra}""")


def proc_cpu_s(pid):
    """utime+stime of a whole process (every thread), in seconds; 0 when unknown."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK
    except (OSError, IndexError, ValueError):
        return 0.0


def db_server_pid():
    d = os.environ.get("COINGEST_TEST_DB_DIR")
    try:
        with open(os.path.join(d, "mariadb.pid")) as f:
            return int(f.read().strip())
    except (TypeError, OSError, ValueError):
        return None


def db_rows(db):
    q = " UNION ALL ".join(f"SELECT COUNT(*) FROM `{t}`" for t in TABLES)
    try:
        return sum(int(r[0]) for r in db.sql(q))
    except RuntimeError:
        return 0  # before the first run the schema does not exist yet


def warm(api):
    """Makes the fake API compute the current tick, then forgets that request."""
    url = api.base_url + "/coins/markets?vs_currency=usd&per_page=1&page=1"
    with urllib.request.urlopen(url, timeout=120) as r:
        r.read()
    api.control("POST", "reset", {})


def run_once(coingestd, conf, jobs, db, api, errlog):
    before = db_rows(db)
    dbpid = db_server_pid()
    api_cpu0 = proc_cpu_s(api.proc.pid)
    db_cpu0 = proc_cpu_s(dbpid) if dbpid else 0.0
    with open(errlog, "a") as err:
        t0 = time.monotonic()
        p = subprocess.Popen([coingestd, "-c", conf, "--once", jobs], stdout=subprocess.PIPE,
                             stderr=err, text=True)
        out = p.stdout.read()
        _, status, ru = os.wait4(p.pid, 0)
        wall = time.monotonic() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        p.stdout.close()
    api_cpu = proc_cpu_s(api.proc.pid) - api_cpu0
    db_cpu = (proc_cpu_s(dbpid) - db_cpu0) if dbpid else 0.0
    if p.returncode != 0:
        sys.exit(f"bench/e2e.py: coingestd --once {jobs} exited {p.returncode}; see {errlog}\n"
                 + out)
    rows = requests = 0
    jobs_s = 0.0
    for line in out.splitlines():
        m = SUMMARY.match(line)
        if not m:
            continue
        if m.group(2) != "ok":
            sys.exit(f"bench/e2e.py: {line}")
        requests += int(m.group(3))
        rows += int(m.group(4))
        jobs_s += float(m.group(5))
    served = len(api.requests())
    if served != requests:
        print(f"# e2e: the daemon counted {requests} requests, the fake API served {served}",
              file=sys.stderr)
    cpu = ru.ru_utime + ru.ru_stime
    return {
        "wall_s": wall, "rows": rows, "requests": requests, "cpu_s": cpu,
        "peak_rss_kb": ru.ru_maxrss, "jobs_s": jobs_s, "new_db_rows": db_rows(db) - before,
        "api_cpu_s": api_cpu, "db_cpu_s": db_cpu,
    }


def prerender():
    """BENCH_PRERENDER (default 1): the fake API's extra arguments and the number of untimed
    repetitions that fill its cache."""
    on = os.environ.get("BENCH_PRERENDER", "1") != "0"
    return (["--prerender"], 1) if on else ([], 0)


def line(run, n, r):
    wall, cpu = r["wall_s"], r["cpu_s"]
    return (f"bench=e2e run={run} universe={n} wall_s={wall:.3f} rows={r['rows']} "
            f"rows_per_s={r['rows'] / wall:.0f} requests={r['requests']} "
            f"requests_per_s={r['requests'] / wall:.1f} cpu_s={cpu:.3f} "
            f"rows_per_cpu_s={r['rows'] / cpu if cpu > 0 else 0:.0f} "
            f"peak_rss_kb={r['peak_rss_kb']} jobs_s={r['jobs_s']:.3f} "
            f"new_db_rows={r['new_db_rows']} api_cpu_s={r['api_cpu_s']:.2f} "
            f"db_cpu_s={r['db_cpu_s']:.2f} prerender={r['prerender']}")


def main():
    coingestd = need("COINGESTD")
    need("FAKEAPI")
    if not (os.environ.get("COINGEST_TEST_DB_SOCKET") or os.environ.get("COINGEST_TEST_DB_PORT")):
        sys.exit("bench/e2e.py: no COINGEST_TEST_DB_* (scripts/mariadb-private start DIR)")
    n = int(os.environ.get("BENCH_UNIVERSE", "17500"))
    reps = max(1, int(os.environ.get("BENCH_E2E_REPS", "3")))
    work = tempfile.mkdtemp(prefix="bench-e2e.", dir=os.environ.get("BENCH_WORKDIR"))
    api_args, primes = prerender()
    api = h.FakeAPI(work, "--universe", str(n), *api_args)
    results = {"first": [], "tick": [], "prices": []}
    try:
        for rep in range(-primes, reps):
            db = h.Database(f"bench_e2e_{os.getpid()}_{rep + primes}")
            try:
                conf = os.path.join(work, f"e2e{rep}.conf")
                bench_config(conf, db, api.base_url, os.path.join(work, f"spool{rep}"))
                errlog = os.path.join(work, f"coingestd{rep}.log")
                api.control("POST", "reset", {"all": True})
                warm(api)
                results["first"].append(run_once(coingestd, conf, "assets,market_caps", db, api,
                                                 errlog))
                api.control("POST", "tick", {})
                warm(api)
                results["tick"].append(run_once(coingestd, conf, "assets,market_caps", db, api,
                                                errlog))
                api.control("POST", "tick", {})
                warm(api)
                results["prices"].append(run_once(coingestd, conf, "prices", db, api, errlog))
                if rep < 0:  # the untimed repetition that filled the fake API's cache
                    for rs in results.values():
                        rs.pop()
            finally:
                db.drop()
    finally:
        api.stop()
    for run in ("first", "tick", "prices"):
        rs = sorted(results[run], key=lambda r: r["wall_s"])
        print(line(run, n, dict(rs[len(rs) // 2], prerender=int(primes > 0))), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
