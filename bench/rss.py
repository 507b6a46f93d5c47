#!/usr/bin/env python3
"""bench/rss.py: memory over time. Does the daemon's resident set stay flat over many runs?

ONE coingestd process, as it runs in production (not --once), with only the prices job
enabled (`every = 250ms`, not aligned: a run takes longer, so the next one starts at the
grid point after it ends and the runs follow each other closely; assets and market_caps
disabled) on a synthetic universe of 17,500 coins served by the fake API on
loopback with no rate limit. After each run (the daemon's `msg="job finished"` log line) the
script reads VmRSS from /proc/PID/status and moves the fake market one tick, so the next run
fetches new prices and writes new rows (17,500 per run, less the few duplicates below).
After BENCH_RSS_RUNS runs (default 1000) it stops the daemon with SIGTERM and prints

  bench=rss runs=.. universe=.. rss_first_kb=.. rss_max_kb=.. rss_last_kb=.. growth_kb=..
    growth_after_10_kb=.. slope_kb_per_100_runs=.. wall_s=.. s_per_run=.. cpu_s=..
    cpu_ms_per_run=.. rows=.. db_rows=.. duplicate_rows=.. min_rows_per_asset=..
    rows_committed=.. rows_spooled=.. skipped_ticks=.. failed_runs=.. exit=.. peak_rss_kb=..

rss_first_kb is after the first run (which also fetched the 17,500-coin /coins/list);
growth_kb = last - first; growth_after_10_kb = last - the sample after run 10 (allocator
warm-up done); slope_kb_per_100_runs is the least-squares slope over runs 10..N. cpu_s and
peak_rss_kb come from wait4() on the daemon.

Nothing lost: the daemon must exit 0 after SIGTERM with every run ok, its final `sink
stopped` line must say rows_spooled=0 and rows_committed = the rows its runs reported + their
job_runs rows, the table must hold one job_runs row per run and prices rows for all the
universe's assets. The market tick is sent when a run has finished (the fake API has no clock
of its own); when the next run starts before it lands (the grid point can come a few
milliseconds after a run ends, and the tick takes up to ~100 ms on a busy machine) its first
pages still carry the old tick and the upsert keeps the one row it has for that quote:
duplicate_rows = rows reported - rows in the table. They are upserts, not losses;
min_rows_per_asset shows how many distinct quotes the least lucky asset got.
BENCH_RSS_CSV=FILE also writes every sample (run,rss_kb,seconds_since_start).

Environment: COINGESTD, FAKEAPI, COINGEST_SOURCE_DIR, COINGEST_TEST_DB_*, BENCH_UNIVERSE
(17500), BENCH_RSS_RUNS (1000), BENCH_RSS_EVERY (250ms), BENCH_WORKDIR.
Nothing here passes or fails on time; a failed run or lost rows is an error (exit 1).
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("COINGEST_SOURCE_DIR") or os.path.dirname(HERE)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
import harness as h  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import e2e  # noqa: E402

FINISHED = re.compile(r'msg="job finished" job=prices status=(\S+) requests=(\d+) rows=(\d+)')
SKIPPED = 'msg="job still running, tick skipped"'
STOPPED = re.compile(r'msg="sink stopped" rows_committed=(\d+) rows_spooled=(\d+)')


def need(var):
    v = os.environ.get(var)
    if not v:
        sys.exit(f"bench/rss.py: {var} is not set (run bench/run)")
    return v


def rss_config(path, db, base_url, spool_dir, every):
    """e2e's configuration with only the prices job, every `every`, unaligned."""
    e2e.bench_config(path, db, base_url, spool_dir, extra=f"""
[job.assets]
enabled = false

[job.market_caps]
enabled = false

[job.prices]
every = {every}
align = false
run_at_start = true
""")


def vm_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for ln in f:
            if ln.startswith("VmRSS:"):
                return int(ln.split()[1])
    return 0


def slope(points):
    """Least-squares slope of (x, y) points; 0 with fewer than two."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    return sxy / sxx if sxx else 0.0


def main():
    coingestd = need("COINGESTD")
    need("FAKEAPI")
    if not (os.environ.get("COINGEST_TEST_DB_SOCKET") or os.environ.get("COINGEST_TEST_DB_PORT")):
        sys.exit("bench/rss.py: no COINGEST_TEST_DB_* (scripts/mariadb-private start DIR)")
    n = int(os.environ.get("BENCH_UNIVERSE", "17500"))
    runs_wanted = max(1, int(os.environ.get("BENCH_RSS_RUNS", "1000")))
    every = os.environ.get("BENCH_RSS_EVERY", "250ms")
    csv_path = os.environ.get("BENCH_RSS_CSV")
    work = tempfile.mkdtemp(prefix="bench-rss.", dir=os.environ.get("BENCH_WORKDIR"))
    api = h.FakeAPI(work, "--universe", str(n))
    db = h.Database(f"bench_rss_{os.getpid()}")
    errlog_path = os.path.join(work, "coingestd.log")
    samples = []  # (run, rss_kb, t)
    rows = skipped = failed = 0
    committed = spooled = -1
    proc = None
    try:
        conf = os.path.join(work, "rss.conf")
        rss_config(conf, db, api.base_url, os.path.join(work, "spool"), every)
        errlog = open(errlog_path, "w")
        t0 = time.monotonic()
        proc = subprocess.Popen([coingestd, "-c", conf], stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True)
        for ln in proc.stderr:
            if SKIPPED in ln:
                skipped += 1
                continue
            m = FINISHED.search(ln)
            if not m:
                if 'level=error' in ln:
                    errlog.write(ln)
                continue
            if m.group(1) != "ok":
                failed += 1
                errlog.write(ln)
            rows += int(m.group(3))
            samples.append((len(samples) + 1, vm_rss_kb(proc.pid), time.monotonic() - t0))
            if len(samples) >= runs_wanted:
                break
            api.control("POST", "tick", {})
            # The fake API's own request log would grow by 31 entries a run; keep it small.
            if len(samples) % 100 == 0:
                api.control("POST", "reset", {})
        wall = time.monotonic() - t0
        proc.send_signal(signal.SIGTERM)
        # Drain stderr so the daemon never blocks on a full pipe while it stops; a run that
        # started meanwhile and was cut short by the stop still counts its accepted rows.
        for ln in proc.stderr:
            m = FINISHED.search(ln)
            if m:
                rows += int(m.group(3))
                errlog.write(ln)
            elif STOPPED.search(ln):
                m = STOPPED.search(ln)
                committed, spooled = int(m.group(1)), int(m.group(2))
                errlog.write(ln)
            elif 'level=error' in ln:
                errlog.write(ln)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        errlog.close()
        db_rows = db.count("prices")
        job_runs = db.count("job_runs")
        per_asset = db.sql("SELECT COUNT(*), COALESCE(MIN(c), 0) FROM "
                           "(SELECT COUNT(*) AS c FROM prices GROUP BY asset_id) t")[0]
        assets_seen, min_per_asset = int(per_asset[0]), int(per_asset[1])
    finally:
        if proc and proc.returncode is None:
            proc.kill()
            proc.wait()
        api.stop()
        db.drop()

    if len(samples) < runs_wanted:
        sys.exit(f"bench/rss.py: the daemon stopped after {len(samples)} runs; see {errlog_path}")
    if csv_path:
        with open(csv_path, "w") as f:
            f.write("run,rss_kb,seconds\n")
            for run, kb, t in samples:
                f.write(f"{run},{kb},{t:.3f}\n")
    kbs = [kb for _, kb, _ in samples]
    warm = min(10, len(samples)) - 1
    cpu = ru.ru_utime + ru.ru_stime
    print(f"bench=rss runs={len(samples)} universe={n} every={every} rss_first_kb={kbs[0]} "
          f"rss_max_kb={max(kbs)} rss_last_kb={kbs[-1]} growth_kb={kbs[-1] - kbs[0]} "
          f"growth_after_10_kb={kbs[-1] - kbs[warm]} "
          f"slope_kb_per_100_runs={100 * slope([(r, kb) for r, kb, _ in samples[warm:]]):.1f} "
          f"wall_s={wall:.1f} s_per_run={wall / len(samples):.3f} cpu_s={cpu:.2f} "
          f"cpu_ms_per_run={1000 * cpu / len(samples):.1f} rows={rows} db_rows={db_rows} "
          f"duplicate_rows={rows - db_rows} min_rows_per_asset={min_per_asset} "
          f"rows_committed={committed} rows_spooled={spooled} "
          f"skipped_ticks={skipped} failed_runs={failed} exit={proc.returncode} "
          f"peak_rss_kb={ru.ru_maxrss}", flush=True)
    problems = []
    if failed:
        problems.append(f"{failed} runs failed")
    if proc.returncode != 0:
        problems.append(f"the daemon exited {proc.returncode}")
    if spooled != 0 or committed != rows + job_runs:
        problems.append(f"the sink committed {committed} rows and spooled {spooled}; the runs "
                        f"reported {rows} rows and {job_runs} job_runs rows")
    if job_runs < len(samples):
        problems.append(f"{job_runs} job_runs rows for {len(samples)} runs")
    if assets_seen != n or db_rows > rows:
        problems.append(f"{assets_seen} assets in prices (want {n}), {db_rows} rows "
                        f"(at most {rows})")
    if problems:
        print("bench/rss.py: " + "; ".join(problems) + f"; see {errlog_path}", file=sys.stderr)
        sys.exit(1)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
