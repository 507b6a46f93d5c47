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
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from baseline import (GLOBAL_COLS, SNAP_COLS, SNAP_PK, global_row, line, measure,  # noqa: E402
                      snapshot_row)


def upsert_sql(table, cols, nkey, extra=""):
    """INSERT of every column, ON DUPLICATE KEY UPDATE of every non-key column."""
    upd = ",".join(f"`{c}`=VALUES(`{c}`)" for c in cols[nkey:]) + extra
    return (f"INSERT INTO `{table}` ({','.join('`' + c + '`' for c in cols)}) "
            f"VALUES ({','.join(['%s'] * len(cols))}) ON DUPLICATE KEY UPDATE {upd}")


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
            snaps.append(snapshot_row(c, now))
            assets.append((c["id"], c.get("symbol"), c.get("name"), c.get("market_cap_rank"),
                           c.get("image"), now, now))
        put(snap_sql, snaps)
        put(asset_sql, assets)
        if len(rows) < 250:
            break
        page += 1
    g = get("/global")["data"]
    put(upsert_sql("global_snapshots", GLOBAL_COLS, 2), [global_row(g, now)])
    db.close()
    print(f"rows={nrows} requests={nreq}")
    return 0


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--once":
        sys.exit(load_once(*sys.argv[2:8]))

    # The loader runs on Debian's interpreter, where python3-requests and python3-mysqldb live
    # (a python3 earlier in PATH, e.g. pyenv's, does not see them).
    py = os.environ.get("BENCH_PYTHON") or (
        "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    if subprocess.run([py, "-c", "import MySQLdb, requests"]).returncode != 0:
        sys.exit(f"bench/bulk_python.py: {py} lacks MySQLdb or requests "
                 "(apt-get install python3-requests python3-mysqldb)")
    sys.path.insert(0, HERE)
    import e2e

    def loader(api, db):
        return [py, os.path.abspath(__file__), "--once", api.base_url, db.socket or "",
                str(db.port), db.user, db.password, db.name]

    api_args, primes = e2e.prerender()
    n, results = measure("bulk_python", loader, api_args, primes)
    for run in ("first", "tick"):
        r = results[run]
        print(line("bulk_python", run, n, r) + f" api_cpu_s={r['api_cpu_s']:.2f} "
              f"db_cpu_s={r['db_cpu_s']:.2f} prerender={int(primes > 0)}", flush=True)


if __name__ == "__main__":
    main()
