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
import subprocess
import sys
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from baseline import GLOBAL_COLS, SNAP_COLS, global_row, line, measure, snapshot_row  # noqa: E402

STMT_ROWS = 1000


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
            snaps.append(snapshot_row(c, now))
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
    w.upsert("global_snapshots", GLOBAL_COLS, [global_row(g, now)],
             "active_cryptocurrencies=VALUES(active_cryptocurrencies)")
    rc = w.close()
    print(f"rows={w.rows} requests={requests} rc={rc}")
    return rc


# --- the driver ----------------------------------------------------------------------------

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--once":
        sys.exit(1 if cron_once(sys.argv[2], sys.argv[3:]) else 0)

    def loader(api, db):
        return [sys.executable, os.path.abspath(__file__), "--once", api.base_url] + \
            db._args(db.name)

    n, results = measure("cron_python", loader)
    for run in ("first", "tick"):
        print(line("cron_python", run, n, results[run]), flush=True)


if __name__ == "__main__":
    main()
