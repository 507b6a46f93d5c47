#!/usr/bin/env python3
"""bench/history.py: a large CoinGecko history backfill, measured (docs/history.md).

The real coingestd, `--once history`, against the fake API's synthetic universe on loopback
with no rate limit (client or server), into a fresh database on the private MariaDB that
bench/run starts (the assets job lists the universe first, not measured):

  run=daily   BENCH_HISTORY_ASSETS (default 2000) assets x 365 days, granularity = daily:
              one market_chart/range window of ~365 points per asset
  run=hourly  BENCH_HISTORY_HOURLY_ASSETS (default 100) assets x 365 days, granularity =
              hourly: five 89-day windows of ~2,100 points per asset

  bench=history run=.. assets=.. wall_s=.. rows=.. rows_per_s=.. requests=.. cpu_s=..
    cpu_ms_per_1000_points=.. peak_rss_kb=.. api_cpu_s=.. db_cpu_s=..

rows and requests are the daemon's own summary line; cpu_s (user+sys) and peak_rss_kb come
from wait4() on the daemon; wall_s includes the wait until every row is committed; api_cpu_s
and db_cpu_s are what the fake API and MariaDB used meanwhile on the same cores. Nothing passes
or fails on time; a run that fails is an error.

Environment: COINGESTD, FAKEAPI, COINGEST_SOURCE_DIR, COINGEST_TEST_DB_*, BENCH_WORKDIR,
BENCH_HISTORY_ASSETS, BENCH_HISTORY_HOURLY_ASSETS.
"""
import os
import shutil
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import e2e  # noqa: E402  (its config, run and CPU helpers)

h = e2e.h


def main():
    coingestd = e2e.need("COINGESTD")
    e2e.need("FAKEAPI")
    if not (os.environ.get("COINGEST_TEST_DB_SOCKET") or os.environ.get("COINGEST_TEST_DB_PORT")):
        sys.exit("bench/history.py: no COINGEST_TEST_DB_* (scripts/mariadb-private start DIR)")
    cases = [("daily", int(os.environ.get("BENCH_HISTORY_ASSETS", "2000"))),
             ("hourly", int(os.environ.get("BENCH_HISTORY_HOURLY_ASSETS", "100")))]
    work = tempfile.mkdtemp(prefix="bench-history.", dir=os.environ.get("BENCH_WORKDIR"))
    api = h.FakeAPI(work, "--universe", str(max(n for _, n in cases)))
    try:
        for gran, n in cases:
            db = h.Database(f"bench_history_{os.getpid()}_{gran}")
            try:
                conf = os.path.join(work, f"{gran}.conf")
                e2e.bench_config(conf, db, api.base_url, os.path.join(work, f"spool-{gran}"),
                                 f"top = {n}\nvs_currencies = usd\n"
                                 "[source.analytics]\nenabled = false\n"
                                 f"[job.history]\nenabled = true\ndays = 365\n"
                                 f"granularity = {gran}\n")
                errlog = os.path.join(work, f"{gran}.log")
                api.control("POST", "reset", {})
                e2e.run_once(coingestd, conf, "assets", db, api, errlog)
                api.control("POST", "reset", {})
                r = e2e.run_once(coingestd, conf, "history", db, api, errlog)
                # job_runs rows are counted by the daemon too; points are the prices rows.
                points = int(db.scalar("SELECT COUNT(*) FROM prices"))
                wall, cpu = r["wall_s"], r["cpu_s"]
                print(f"bench=history run={gran} assets={n} wall_s={wall:.3f} rows={points} "
                      f"rows_per_s={points / wall:.0f} requests={r['requests']} cpu_s={cpu:.3f} "
                      f"cpu_ms_per_1000_points={1000.0 * cpu / points * 1000 if points else 0:.2f} "
                      f"peak_rss_kb={r['peak_rss_kb']} api_cpu_s={r['api_cpu_s']:.2f} "
                      f"db_cpu_s={r['db_cpu_s']:.2f}", flush=True)
            finally:
                db.drop()
    finally:
        api.stop()
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
