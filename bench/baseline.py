"""bench/baseline.py: what the two Python baselines (cron_python.py, bulk_python.py) share.

The market_snapshots and global_snapshots rows they build from /coins/markets and /global, and
the driver that measures them: BENCH_E2E_REPS repetitions, each on a fresh database (schema
applied by `coingestd --migrate`, untimed), each a `first` run then a `tick` run of the loader
as a fresh process, timed with wait4() on it; the median (by wall time) is reported.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("COINGEST_SOURCE_DIR") or os.path.dirname(HERE)

SNAP_COLS = ("asset_id", "vs_currency", "source", "snapshot_at", "market_cap_rank", "price",
             "market_cap", "fully_diluted_valuation", "total_volume", "high_24h", "low_24h",
             "price_change_24h", "price_change_pct_24h", "market_cap_change_24h",
             "market_cap_change_pct_24h", "circulating_supply", "total_supply", "max_supply",
             "ath", "ath_change_pct", "ath_date", "atl", "atl_change_pct", "atl_date", "roi",
             "fetched_at")
SNAP_KEYS = (None, None, None, "last_updated", "market_cap_rank", "current_price", "market_cap",
             "fully_diluted_valuation", "total_volume", "high_24h", "low_24h",
             "price_change_24h", "price_change_percentage_24h", "market_cap_change_24h",
             "market_cap_change_percentage_24h", "circulating_supply", "total_supply",
             "max_supply", "ath", "ath_change_percentage", "ath_date", "atl",
             "atl_change_percentage", "atl_date", "roi", None)
SNAP_PK = 4  # asset_id, vs_currency, source, snapshot_at
DATES = {"last_updated", "ath_date", "atl_date"}
GLOBAL_COLS = ("source", "snapshot_at", "active_cryptocurrencies", "markets",
               "total_market_cap_usd", "total_volume_usd", "btc_dominance", "eth_dominance",
               "market_cap_change_pct_24h_usd", "total_market_cap", "total_volume",
               "market_cap_percentage", "fetched_at")


def dt(iso):
    """2025-02-09T17:44:04.143Z -> 2025-02-09 17:44:04.143 (None stays None)."""
    if not iso:
        return None
    return iso.replace("T", " ").rstrip("Z")[:23]


def snapshot_row(c, now):
    """A /coins/markets element (vs usd) as a market_snapshots row in SNAP_COLS order."""
    snap = []
    for col, key in zip(SNAP_COLS, SNAP_KEYS):
        if col == "asset_id":
            snap.append(c["id"])
        elif col == "vs_currency":
            snap.append("usd")
        elif col == "source":
            snap.append("coingecko")
        elif col == "fetched_at":
            snap.append(now)
        elif col == "roi":
            snap.append(json.dumps(c["roi"]) if c.get("roi") else None)
        elif key in DATES:
            snap.append(dt(c.get(key)))
        else:
            snap.append(c.get(key))
    return snap


def global_row(g, now):
    """/global's data as a global_snapshots row in GLOBAL_COLS order."""
    return ("coingecko", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(g["updated_at"])),
            g.get("active_cryptocurrencies"), g.get("markets"),
            (g.get("total_market_cap") or {}).get("usd"), (g.get("total_volume") or {}).get("usd"),
            (g.get("market_cap_percentage") or {}).get("btc"),
            (g.get("market_cap_percentage") or {}).get("eth"),
            g.get("market_cap_change_percentage_24h_usd"), json.dumps(g.get("total_market_cap")),
            json.dumps(g.get("total_volume")), json.dumps(g.get("market_cap_percentage")), now)


def measure(name, loader_argv, api_args=(), primes=0):
    """Runs the loader (loader_argv(api, db): its command line, which prints `rows=N
    requests=N`) against the fake API's universe of BENCH_UNIVERSE assets, started with
    api_args; `primes` untimed repetitions come first (they fill the fake API's --prerender
    cache). Returns (universe, {"first": r, "tick": r}), r the median repetition: wall_s,
    rows, requests, cpu_s, peak_rss_kb, api_cpu_s, db_cpu_s."""
    sys.path.insert(0, HERE)
    import e2e
    h = e2e.h

    coingestd = e2e.need("COINGESTD")
    e2e.need("FAKEAPI")
    n = int(os.environ.get("BENCH_UNIVERSE", "17500"))
    reps = max(1, int(os.environ.get("BENCH_E2E_REPS", "3")))
    work = tempfile.mkdtemp(prefix=f"bench-{name}.", dir=os.environ.get("BENCH_WORKDIR"))
    api = h.FakeAPI(work, "--universe", str(n), *api_args)
    results = {"first": [], "tick": []}
    try:
        for rep in range(-primes, reps):
            db = h.Database(f"bench_{name}_{os.getpid()}_{rep + primes}")
            try:
                conf = os.path.join(work, f"{name}{rep}.conf")
                e2e.bench_config(conf, db, api.base_url, os.path.join(work, f"spool{rep}"))
                subprocess.run([coingestd, "-c", conf, "--migrate"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                api.control("POST", "reset", {"all": True})
                for run in ("first", "tick"):
                    if run == "tick":
                        api.control("POST", "tick", {})
                    e2e.warm(api)
                    r = timed(name, loader_argv(api, db), api.proc.pid, e2e)
                    if rep >= 0:  # not an untimed repetition that filled the fake's cache
                        results[run].append(r)
            finally:
                db.drop()
    finally:
        api.stop()
    shutil.rmtree(work, ignore_errors=True)
    median = {}
    for run, rs in results.items():
        rs = sorted(rs, key=lambda r: r["wall_s"])
        median[run] = rs[len(rs) // 2]
    return n, median


def timed(name, argv, api_pid, e2e):
    """One run of the loader, with the CPU it, the fake API and the MariaDB server used."""
    api_cpu0 = e2e.proc_cpu_s(api_pid)
    dbpid = e2e.db_server_pid()
    db_cpu0 = e2e.proc_cpu_s(dbpid) if dbpid else 0.0
    t0 = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t0
    api_cpu = e2e.proc_cpu_s(api_pid) - api_cpu0
    db_cpu = (e2e.proc_cpu_s(dbpid) - db_cpu0) if dbpid else 0.0
    p.returncode = os.waitstatus_to_exitcode(status)
    p.stdout.close()
    if p.returncode != 0:
        sys.exit(f"bench/{name}.py: the loader run failed: {out}")
    kv = dict(x.split("=", 1) for x in out.split())
    return {"wall_s": wall, "rows": int(kv["rows"]), "requests": int(kv["requests"]),
            "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kb": ru.ru_maxrss,
            "api_cpu_s": api_cpu, "db_cpu_s": db_cpu}


def line(name, run, n, r):
    """The figures every baseline prints, `bench=NAME run=RUN universe=N wall_s=..`."""
    wall, cpu = r["wall_s"], r["cpu_s"]
    return (f"bench={name} run={run} universe={n} wall_s={wall:.3f} rows={r['rows']} "
            f"rows_per_s={r['rows'] / wall:.0f} requests={r['requests']} "
            f"requests_per_s={r['requests'] / wall:.1f} cpu_s={cpu:.3f} "
            f"rows_per_cpu_s={r['rows'] / cpu if cpu > 0 else 0:.0f} "
            f"peak_rss_kb={r['peak_rss_kb']}")
