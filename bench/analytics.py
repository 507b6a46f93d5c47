#!/usr/bin/env python3
"""bench/analytics.py: the analytics jobs on a year of daily history (docs/analytics.md).

A fresh database on the private MariaDB gets BENCH_ANALYTICS_ASSETS assets (default 1,000) with
BENCH_ANALYTICS_PER_DAY prices rows a day (default 4) for the BENCH_ANALYTICS_DAYS closed UTC
days (default 365) before yesterday, written straight into `prices` (MariaDB's seq_ tables; a
deterministic walk). Then the real coingestd runs, each as its own `--once`:

  run=scratch_rollups     every hourly and daily candle of the year
  run=scratch_indicators  every day's indicators and movers
  (yesterday's rows are added, fetched now: late rows, since the first run closed that day)
  run=day_rollups_mark    the run that marks their hours (a rollups run reads the marks
                          before it makes new ones)
  run=day_rollups         the next run: the new day's hourly and daily candles
  run=day_indicators      the new day's indicators and movers (the year's candles are first
                          dated as computed a day earlier, see below)

One line per run:
  bench=analytics run=.. assets=.. days=.. per_day=.. wall_s=.. rollups_1d=.. rollups_1h=..
    indicators=.. movers=..
wall_s is the whole process: start, schema check, the run, and the wait until its statements
have committed. Nothing here passes or fails on time; a run that fails is an error.

Environment: COINGESTD, COINGEST_SOURCE_DIR, COINGEST_TEST_DB_* (scripts/mariadb-private),
BENCH_ANALYTICS_ASSETS, BENCH_ANALYTICS_DAYS, BENCH_ANALYTICS_PER_DAY, BENCH_WORKDIR.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "integration"))
import harness as h  # noqa: E402


def fill(db, assets, first_day, ndays, per_day, fetched):
    """prices rows: asset a, day d (offset from first_day), sample k at 00:00 + k * 24h/per_day.
    fetched: an SQL expression for fetched_at (the sample's own time for history)."""
    step_min = 24 * 60 // per_day
    t = f"TIMESTAMP('{first_day}') + INTERVAL d.seq DAY + INTERVAL k.seq * {step_min} MINUTE"
    # A walk that is the same in every run: a trend and two waves per asset.
    price = ("100 * (1 + a.seq % 7) * EXP(0.001 * (CAST(a.seq % 11 AS SIGNED) - 5) * (d.seq + k.seq / 24)"
             " + 0.05 * SIN(a.seq + d.seq / 3 + k.seq) + 0.02 * COS(a.seq * d.seq))")
    db.sql(f"INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price,"
           f" market_cap, volume_24h, change_24h_pct, fetched_at)"
           f" SELECT CONCAT('asset-', LPAD(a.seq, 5, '0')), 'usd', 'coingecko', {t}, {price},"
           f" {price} * 1e6 * (1 + a.seq % 50), 1e6, NULL, {fetched.replace('@t', t)}"
           f" FROM seq_1_to_{assets} a JOIN seq_0_to_{ndays - 1} d"
           f" JOIN seq_0_to_{per_day - 1} k")


def counts(db):
    return {
        "rollups_1d": db.count("price_rollups", "bucket = '1d'"),
        "rollups_1h": db.count("price_rollups", "bucket = '1h'"),
        "indicators": db.count("indicators_daily"),
        "movers": db.count("movers_daily"),
    }


def once(conf, job, db, line):
    t0 = time.monotonic()
    rc, out, err = h.run_daemon(conf, "--once", job, timeout=3600)
    wall = time.monotonic() - t0
    if rc != 0:
        sys.exit(f"bench/analytics: --once {job} failed ({rc}): {err[-2000:]}")
    c = counts(db)
    if os.environ.get("BENCH_ANALYTICS_DEBUG"):
        print(err, file=sys.stderr)
    print(f"{line} wall_s={wall:.2f} " + " ".join(f"{k}={v}" for k, v in c.items()), flush=True)


def main():
    for k in ("COINGESTD", "COINGEST_SOURCE_DIR"):
        if not os.environ.get(k):
            sys.exit(f"bench/analytics: {k} is not set (bench/run sets it)")
    if not (os.environ.get("COINGEST_TEST_DB_SOCKET") or os.environ.get("COINGEST_TEST_DB_PORT")):
        sys.exit("bench/analytics: no database (COINGEST_TEST_DB_*, scripts/mariadb-private)")
    assets = int(os.environ.get("BENCH_ANALYTICS_ASSETS", "1000"))
    ndays = int(os.environ.get("BENCH_ANALYTICS_DAYS", "365"))
    per_day = int(os.environ.get("BENCH_ANALYTICS_PER_DAY", "4"))
    work = tempfile.mkdtemp(prefix="bench-analytics.", dir=os.environ.get("BENCH_WORKDIR"))
    db = h.Database(f"bench_analytics_{os.getpid()}")
    try:
        conf = os.path.join(work, "bench.conf")
        # No API is called: only the analytics jobs run.
        h.write_config(conf, db, "http://127.0.0.1:9", os.path.join(work, "spool"))
        # --once waits up to shutdown_timeout for its statements to commit: a year from scratch
        # takes longer than the harness's 20 s.
        with open(conf) as f:
            text = f.read().replace("shutdown_timeout = 20s", "shutdown_timeout = 1h")
        with open(conf, "w") as f:
            f.write(text)
        rc, out, err = h.run_daemon(conf, "--migrate", timeout=300)
        if rc != 0:
            sys.exit(f"bench/analytics: --migrate failed: {err[-2000:]}")
        today = db.scalar("SELECT UTC_DATE()")
        first = db.scalar(f"SELECT UTC_DATE() - INTERVAL {ndays + 1} DAY")
        t0 = time.monotonic()
        fill(db, assets, first, ndays, per_day, "@t")
        print(f"bench/analytics: {db.count('prices')} prices rows written in"
              f" {time.monotonic() - t0:.1f} s (today {today})", file=sys.stderr)
        line = f"bench=analytics assets={assets} days={ndays} per_day={per_day}"
        once(conf, "rollups", db, f"{line} run=scratch_rollups")
        once(conf, "indicators", db, f"{line} run=scratch_indicators")
        # As if the year had been computed a day ago: the indicators job re-checks the candles
        # computed within 10 minutes of its last run (a margin for the server's clock), and
        # right after the scratch runs that would be the whole year, not the steady state.
        db.sql("UPDATE price_rollups SET computed_at = computed_at - INTERVAL 1 DAY")
        yesterday = db.scalar("SELECT UTC_DATE() - INTERVAL 1 DAY")
        fill(db, assets, yesterday, 1, per_day, "UTC_TIMESTAMP(3)")
        # The rows came after their day was closed (late rows): the first run marks their
        # hours, the next computes them (docs/analytics.md, "Late rows").
        once(conf, "rollups", db, f"{line} run=day_rollups_mark")
        once(conf, "rollups", db, f"{line} run=day_rollups")
        once(conf, "indicators", db, f"{line} run=day_indicators")
    finally:
        db.drop()


if __name__ == "__main__":
    main()
