#!/usr/bin/env python3
"""bench/bulk_python.py: a straightforward Python bulk loader, measured on coingest's own work.

What a competent Python programmer would write to do `coingestd --once assets,market_caps`:
requests (one keep-alive Session) for the HTTP, its .json() for parsing, and MySQLdb
(python3-mysqldb, the C client binding) with `executemany` of a parameterised
`INSERT ... ON DUPLICATE KEY UPDATE` that updates every field, one commit per page:

  GET /coins/list?include_platform=true      -> assets
  GET /coins/markets pages of 250 until short -> market_snapshots, and the assets' rank/image
  GET /global                                 -> global_snapshots

Same synthetic universe, fake API and kind of fresh database (schema applied beforehand by
`coingestd --migrate`, untimed) as bench/e2e.py. Each run is a fresh `python3 bulk_python.py
--once` process; cpu_s and peak_rss_kb come from wait4() on it. It has none of the daemon's
guarantees (rate limiting, retries, spool, job_runs bookkeeping, bit-exact checks).

Prints, for the median (by wall time) of BENCH_E2E_REPS repetitions, each on a fresh database
(after one untimed repetition that fills the fake API's --prerender cache, as bench/e2e.py
does; BENCH_PRERENDER=0 turns both off):

  bench=bulk_python run=first|tick universe=.. wall_s=.. rows=.. rows_per_s=.. requests=..
    requests_per_s=.. cpu_s=.. rows_per_cpu_s=.. peak_rss_kb=.. api_cpu_s=.. db_cpu_s=..
    prerender=0|1

api_cpu_s and db_cpu_s are the CPU the fake API and the MariaDB server used during the run
(as in bench/e2e.py).

Needs python3-requests and python3-mysqldb (Debian packages; bench/run installs them); the
loader runs on BENCH_PYTHON, by default /usr/bin/python3 (Debian's, which has them).
Environment: as bench/e2e.py (COINGESTD for the schema, FAKEAPI, COINGEST_SOURCE_DIR,
COINGEST_TEST_DB_*, BENCH_UNIVERSE, BENCH_E2E_REPS, BENCH_PRERENDER, BENCH_WORKDIR).
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


def upsert_sql(table, cols, nkey, extra=""):
    """INSERT of every column, ON DUPLICATE KEY UPDATE of every non-key column."""
    upd = ",".join(f"`{c}`=VALUES(`{c}`)" for c in cols[nkey:]) + extra
    return (f"INSERT INTO `{table}` ({','.join('`' + c + '`' for c in cols)}) "
            f"VALUES ({','.join(['%s'] * len(cols))}) ON DUPLICATE KEY UPDATE {upd}")


def dt(iso):
    """2025-02-09T17:44:04.143Z -> 2025-02-09 17:44:04.143 (None stays None)."""
    if not iso:
        return None
    return iso.replace("T", " ").rstrip("Z")[:23]


def load_once(base_url, sock, port, user, password, dbname):
    import MySQLdb
    import requests

    kw = {"unix_socket": sock} if sock else {"host": "127.0.0.1", "port": int(port)}
    db = MySQLdb.connect(user=user, passwd=password, db=dbname, charset="utf8mb4", **kw)
    cur = db.cursor()
    cur.execute("SET time_zone = '+00:00'")
    http = requests.Session()
    nreq = nrows = 0

    def get(path):
        nonlocal nreq
        nreq += 1
        r = http.get(base_url + path, timeout=60)
        r.raise_for_status()
        return r.json()

    def put(sql, rows):
        nonlocal nrows
        if rows:
            cur.executemany(sql, rows)
            db.commit()
            nrows += len(rows)

    now = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    coins = get("/coins/list?include_platform=true")
    put(upsert_sql("assets", ("id", "symbol", "name", "platforms", "listed_at", "first_seen_at",
                              "updated_at"), 1, ",`delisted_at`=NULL"),
        [(c["id"], c.get("symbol"), c.get("name"), json.dumps(c.get("platforms") or {}), now,
          now, now) for c in coins])
    snap_sql = upsert_sql("market_snapshots", SNAP_COLS, SNAP_PK)
    asset_sql = upsert_sql("assets", ("id", "symbol", "name", "market_cap_rank", "image_url",
                                      "first_seen_at", "updated_at"), 1)
    page = 1
    while True:
        rows = get(f"/coins/markets?vs_currency=usd&order=market_cap_desc&per_page=250"
                   f"&page={page}&precision=full")
        snaps, assets = [], []
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
            assets.append((c["id"], c.get("symbol"), c.get("name"), c.get("market_cap_rank"),
                           c.get("image"), now, now))
        put(snap_sql, snaps)
        put(asset_sql, assets)
        if len(rows) < 250:
            break
        page += 1
    g = get("/global")["data"]
    put(upsert_sql("global_snapshots", GLOBAL_COLS, 2),
        [("coingecko", time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(g["updated_at"])),
          g.get("active_cryptocurrencies"), g.get("markets"),
          (g.get("total_market_cap") or {}).get("usd"), (g.get("total_volume") or {}).get("usd"),
          (g.get("market_cap_percentage") or {}).get("btc"),
          (g.get("market_cap_percentage") or {}).get("eth"),
          g.get("market_cap_change_percentage_24h_usd"), json.dumps(g.get("total_market_cap")),
          json.dumps(g.get("total_volume")), json.dumps(g.get("market_cap_percentage")), now)])
    db.close()
    print(f"rows={nrows} requests={nreq}")
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--once":
        sys.exit(load_once(*sys.argv[2:8]))

    sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "integration"))
    import harness as h
    sys.path.insert(0, HERE)
    import e2e

    # The loader runs on Debian's interpreter, where python3-requests and python3-mysqldb live
    # (a python3 earlier in PATH, e.g. pyenv's, does not see them).
    py = os.environ.get("BENCH_PYTHON") or (
        "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    if subprocess.run([py, "-c", "import MySQLdb, requests"]).returncode != 0:
        sys.exit(f"bench/bulk_python.py: {py} lacks MySQLdb or requests "
                 "(apt-get install python3-requests python3-mysqldb)")
    coingestd = e2e.need("COINGESTD")
    e2e.need("FAKEAPI")
    n = int(os.environ.get("BENCH_UNIVERSE", "17500"))
    reps = max(1, int(os.environ.get("BENCH_E2E_REPS", "3")))
    work = tempfile.mkdtemp(prefix="bench-bulk.", dir=os.environ.get("BENCH_WORKDIR"))
    api_args, primes = e2e.prerender()
    api = h.FakeAPI(work, "--universe", str(n), *api_args)
    results = {"first": [], "tick": []}
    try:
        for rep in range(-primes, reps):
            db = h.Database(f"bench_bulk_{os.getpid()}_{rep + primes}")
            try:
                conf = os.path.join(work, f"bulk{rep}.conf")
                e2e.bench_config(conf, db, api.base_url, os.path.join(work, f"spool{rep}"))
                subprocess.run([coingestd, "-c", conf, "--migrate"], check=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                api.control("POST", "reset", {"all": True})
                for run in ("first", "tick"):
                    if run == "tick":
                        api.control("POST", "tick", {})
                    e2e.warm(api)
                    api_cpu0 = e2e.proc_cpu_s(api.proc.pid)
                    dbpid = e2e.db_server_pid()
                    db_cpu0 = e2e.proc_cpu_s(dbpid) if dbpid else 0.0
                    t0 = time.monotonic()
                    p = subprocess.Popen([py, os.path.abspath(__file__), "--once",
                                          api.base_url, db.socket or "", str(db.port), db.user,
                                          db.password, db.name],
                                         stdout=subprocess.PIPE, text=True)
                    out = p.stdout.read()
                    _, status, ru = os.wait4(p.pid, 0)
                    wall = time.monotonic() - t0
                    api_cpu = e2e.proc_cpu_s(api.proc.pid) - api_cpu0
                    db_cpu = (e2e.proc_cpu_s(dbpid) - db_cpu0) if dbpid else 0.0
                    p.returncode = os.waitstatus_to_exitcode(status)
                    p.stdout.close()
                    if p.returncode != 0:
                        sys.exit(f"bench/bulk_python.py: the loader failed: {out}")
                    kv = dict(x.split("=", 1) for x in out.split())
                    if rep < 0:
                        continue  # the untimed repetition that filled the fake API's cache
                    results[run].append({
                        "wall_s": wall, "rows": int(kv["rows"]), "requests": int(kv["requests"]),
                        "cpu_s": ru.ru_utime + ru.ru_stime, "peak_rss_kb": ru.ru_maxrss,
                        "api_cpu_s": api_cpu, "db_cpu_s": db_cpu})
            finally:
                db.drop()
    finally:
        api.stop()
    for run in ("first", "tick"):
        rs = sorted(results[run], key=lambda r: r["wall_s"])
        r = rs[len(rs) // 2]
        wall, cpu = r["wall_s"], r["cpu_s"]
        print(f"bench=bulk_python run={run} universe={n} wall_s={wall:.3f} rows={r['rows']} "
              f"rows_per_s={r['rows'] / wall:.0f} requests={r['requests']} "
              f"requests_per_s={r['requests'] / wall:.1f} cpu_s={cpu:.3f} "
              f"rows_per_cpu_s={r['rows'] / cpu if cpu > 0 else 0:.0f} "
              f"peak_rss_kb={r['peak_rss_kb']} api_cpu_s={r['api_cpu_s']:.2f} "
              f"db_cpu_s={r['db_cpu_s']:.2f} prerender={int(primes > 0)}", flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
