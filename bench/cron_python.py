#!/usr/bin/env python3
"""bench/cron_python.py: the baseline coingest replaces, measured on the same work.

A lean cron-plus-Python ETL script, standard library only, doing what `coingestd --once
assets,market_caps` does on the same synthetic universe, the same fake API and the same kind
of fresh database (schema applied beforehand, untimed):

  GET /coins/list?include_platform=true      -> assets (multi-row upsert)
  GET /coins/markets pages of 250 until short -> market_snapshots, and the assets' rank/image
  GET /global                                 -> global_snapshots

It fetches with urllib (one connection per request, as urllib does), parses with json, and
writes through ONE `mariadb` client process fed multi-row `INSERT ... ON DUPLICATE KEY
UPDATE` statements of 1,000 rows, each committed on its own: the same SQL shape the daemon
uses, so the comparison is about the process, not the statements. It has none of the
daemon's guarantees (no rate limiting, retries, spool or job_runs bookkeeping). Each run is a
fresh `python3 cron_python.py --once` process, as cron would start it; cpu_s and peak_rss_kb
come from wait4() on it and include the mariadb client it waited for (a Python driver would
do that work in-process).

Prints, for the median of BENCH_E2E_REPS repetitions (fresh database each), like e2e.py:

  bench=cron_python run=first|tick universe=.. wall_s=.. rows=.. rows_per_s=.. requests=..
    requests_per_s=.. cpu_s=.. rows_per_cpu_s=.. peak_rss_kb=..

Environment: as bench/e2e.py (COINGESTD for the schema, FAKEAPI, COINGEST_SOURCE_DIR,
COINGEST_TEST_DB_*, BENCH_UNIVERSE, BENCH_E2E_REPS, BENCH_WORKDIR).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("COINGEST_SOURCE_DIR") or os.path.dirname(HERE)
STMT_ROWS = 1000

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
DATES = {"last_updated", "ath_date", "atl_date"}


# --- the cron job itself -------------------------------------------------------------------

def lit(v):
    """A Python value as an SQL literal."""
    if v is None:
        return "NULL"
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, (int, float)):
        return repr(v) if v == v and v not in (float("inf"), float("-inf")) else "NULL"
    s = str(v)
    for a, b in (("\\", "\\\\"), ("'", "\\'"), ("\0", "\\0"), ("\n", "\\n"), ("\r", "\\r"),
                 ("\x1a", "\\Z")):
        s = s.replace(a, b)
    return "'" + s + "'"


def dt(iso):
    """2025-02-09T17:44:04.143Z -> 2025-02-09 17:44:04.143 (None stays None)."""
    if not iso:
        return None
    return iso.replace("T", " ").rstrip("Z")[:23]


class Writer:
    def __init__(self, args):
        self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                  text=True, encoding="utf-8")
        self.p.stdin.write("SET time_zone = '+00:00';\nSET autocommit = 1;\n")
        self.rows = 0

    def upsert(self, table, cols, rows, update):
        for i in range(0, len(rows), STMT_ROWS):
            chunk = rows[i:i + STMT_ROWS]
            values = ",".join("(" + ",".join(lit(v) for v in r) + ")" for r in chunk)
            self.p.stdin.write(f"INSERT INTO `{table}` ({','.join(cols)}) VALUES {values} "
                               f"ON DUPLICATE KEY UPDATE {update};\n")
            self.rows += len(chunk)

    def close(self):
        self.p.stdin.close()
        return self.p.wait()


def cron_once(base_url, db_args):
    requests = 0

    def get(path):
        nonlocal requests
        requests += 1
        with urllib.request.urlopen(base_url + path, timeout=60) as r:
            return json.loads(r.read())

    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    w = Writer(db_args)
    coins = get("/coins/list?include_platform=true")
    w.upsert("assets", ("id", "symbol", "name", "platforms", "first_seen_at", "updated_at",
                        "listed_at"),
             [(c["id"], c.get("symbol"), c.get("name"), json.dumps(c.get("platforms") or {}),
               now, now, now) for c in coins],
             "symbol=VALUES(symbol),name=VALUES(name),platforms=VALUES(platforms),"
             "updated_at=VALUES(updated_at),listed_at=VALUES(listed_at),delisted_at=NULL")
    page = 1
    while True:
        rows = get(f"/coins/markets?vs_currency=usd&order=market_cap_desc&per_page=250"
                   f"&page={page}&precision=full&price_change_percentage=1h,24h,7d")
        snaps, ranks = [], []
        for c in rows:
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
            snaps.append(snap)
            ranks.append((c["id"], c.get("market_cap_rank"), c.get("image"), now, now))
        w.upsert("market_snapshots", SNAP_COLS, snaps,
                 "market_cap_rank=VALUES(market_cap_rank),price=VALUES(price),"
                 "market_cap=VALUES(market_cap),total_volume=VALUES(total_volume)")
        w.upsert("assets", ("id", "market_cap_rank", "image_url", "first_seen_at", "updated_at"),
                 ranks, "market_cap_rank=VALUES(market_cap_rank),image_url=VALUES(image_url),"
                        "updated_at=VALUES(updated_at)")
        if len(rows) < 250:
            break
        page += 1
    g = get("/global")["data"]
    w.upsert("global_snapshots", ("source", "snapshot_at", "active_cryptocurrencies", "markets",
                                  "total_market_cap_usd", "total_volume_usd", "btc_dominance",
                                  "eth_dominance", "market_cap_change_pct_24h_usd",
                                  "total_market_cap", "total_volume", "market_cap_percentage",
                                  "fetched_at"),
             [("coingecko", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(g["updated_at"])),
               g.get("active_cryptocurrencies"), g.get("markets"),
               (g.get("total_market_cap") or {}).get("usd"),
               (g.get("total_volume") or {}).get("usd"),
               (g.get("market_cap_percentage") or {}).get("btc"),
               (g.get("market_cap_percentage") or {}).get("eth"),
               g.get("market_cap_change_percentage_24h_usd"),
               json.dumps(g.get("total_market_cap")), json.dumps(g.get("total_volume")),
               json.dumps(g.get("market_cap_percentage")), now)],
             "active_cryptocurrencies=VALUES(active_cryptocurrencies)")
    rc = w.close()
    print(f"rows={w.rows} requests={requests} rc={rc}")
    return rc


# --- the driver ----------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--once":
        sys.exit(1 if cron_once(sys.argv[2], sys.argv[3:]) else 0)

    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
    import harness as h
    sys.path.insert(0, HERE)
    import e2e

    coingestd = e2e.need("COINGESTD")
    e2e.need("FAKEAPI")
    n = int(os.environ.get("BENCH_UNIVERSE", "17500"))
    reps = max(1, int(os.environ.get("BENCH_E2E_REPS", "3")))
    work = tempfile.mkdtemp(prefix="bench-cron.", dir=os.environ.get("BENCH_WORKDIR"))
    api = h.FakeAPI(work, "--universe", str(n))
    results = {"first": [], "tick": []}
    try:
        for rep in range(reps):
            db = h.Database(f"bench_cron_{os.getpid()}_{rep}")
            try:
                conf = os.path.join(work, f"cron{rep}.conf")
                e2e.bench_config(conf, db, api.base_url, os.path.join(work, f"spool{rep}"))
                subprocess.run([coingestd, "-c", conf, "--migrate"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                api.control("POST", "reset", {"all": True})
                for run in ("first", "tick"):
                    if run == "tick":
                        api.control("POST", "tick", {})
                    e2e.warm(api)
                    t0 = time.monotonic()
                    p = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--once",
                                          api.base_url] + db._args(db.name),
                                         stdout=subprocess.PIPE, text=True)
                    out = p.stdout.read()
                    _, status, ru = os.wait4(p.pid, 0)
                    wall = time.monotonic() - t0
                    p.returncode = os.waitstatus_to_exitcode(status)
                    p.stdout.close()
                    if p.returncode != 0:
                        sys.exit(f"bench/cron_python.py: the cron run failed: {out}")
                    kv = dict(x.split("=", 1) for x in out.split())
                    results[run].append({
                        "wall_s": wall, "rows": int(kv["rows"]), "requests": int(kv["requests"]),
                        "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kb": ru.ru_maxrss})
            finally:
                db.drop()
    finally:
        api.stop()
    for run in ("first", "tick"):
        rs = sorted(results[run], key=lambda r: r["wall_s"])
        r = rs[len(rs) // 2]
        wall, cpu = r["wall_s"], r["cpu_s"]
        print(f"bench=cron_python run={run} universe={n} wall_s={wall:.3f} rows={r['rows']} "
              f"rows_per_s={r['rows'] / wall:.0f} requests={r['requests']} "
              f"requests_per_s={r['requests'] / wall:.1f} cpu_s={cpu:.3f} "
              f"rows_per_cpu_s={r['rows'] / cpu if cpu > 0 else 0:.0f} "
              f"peak_rss_kb={r['peak_rss_kb']}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
