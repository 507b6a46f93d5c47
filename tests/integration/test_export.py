# ctest-labels: tsan
"""The export job: closed days to files, re-exports, backfills and kill -9 (docs/export.md).

A week of data for 1,000 assets (exportcheck.seed: prices hourly, market snapshots and daily
indicators once a day, global snapshots hourly; hourly candles of 50 products, hourly and daily
rollups of 100 assets), with NULLs, quotes, commas, a line break and
non-ASCII text in strings, plus rows of today (an open day) and of 8 days ago (outside the
window).

1. `--once export` writes TABLE/date=D/ for each of the 7 closed days of the 6 default tables; each part's sha256 matches its manifest; the files
   read back (gzip + RFC 4180 CSV with the NULL rule, and JSON Lines) equal the database row
   for row, NULLs included.
2. A second run rewrites nothing (every file keeps its inode and mtime).
3. A late backfill of one day (new rows and a changed value) re-exports exactly that day; its
   manifest says what it replaces, and it reads back equal to the database.
4. kill -9 while a day is being written: every date= directory is complete and valid; the next
   run completes, leaves no temporary directory, and every day reads back equal.
5. SIGTERM while a day is being written: the daemon cancels the export (the read is dropped,
   the day's temporary directory removed) and exits 0; what is under final names is complete.
The upload to S3 is test_export_s3.py.
"""
import glob
import json
import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402
from exportcheck import ASSETS, TABLES, check_day, day_valid, prepare, snapshot  # noqa: E402


def main():
    h.need_env()
    c = h.Check()
    work, db, out, conf, write_conf, dates = prepare(h, c, "coingest-export-", "coingest_it_export")

    # 1. The first export.
    t0 = time.time()
    rc, _, err = h.run_daemon(conf, "--once", "export")
    print(f"first export: {time.time() - t0:.1f}s")
    c.eq(rc, 0, "first export exits 0")
    if rc != 0:
        print(err[-3000:])
    c.eq(sorted(os.listdir(out)), sorted(TABLES), "one directory per table with rows")
    for t in TABLES:
        c.eq(sorted(os.listdir(os.path.join(out, t))), [f"date={d}" for d in dates],
             f"{t}: the 7 closed days, not today, not 8 days ago")
    bad = [(t, d, check_day(db, out, t, d)) for t in TABLES for d in dates]
    bad = [b for b in bad if b[2]]
    c(not bad, f"every day reads back equal to the database (csv and jsonl): {bad[:3]}")
    m = json.load(open(os.path.join(out, "prices", f"date={dates[2]}", "_manifest.json")))
    c(len([f for f in m["files"] if f["format"] == "csv.gz"]) > 1, "prices days have several parts")
    c.eq(m["replaces"], None, "a first export replaces nothing")
    c.eq(m["rows"], ASSETS * 24, "a prices day has 24 rows per asset")

    # 2. Nothing changed: nothing rewritten.
    before = snapshot(out)
    rc, _, err = h.run_daemon(conf, "--once", "export")
    c.eq(rc, 0, "second export exits 0")
    again = snapshot(out)
    c(again == before and len(before) > 100,
      f"a re-export rewrites nothing ({len(before)} files)")
    c(f"days_unchanged={7 * len(TABLES)}" in err,
      f"the log says {7 * len(TABLES)} days unchanged")

    # 3. A late backfill of one day re-exports exactly that day.
    day = dates[3]
    db.sql(f"""
INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price, fetched_at)
SELECT CONCAT('late-', seq), 'usd', 'coincap', TIMESTAMP('{day}') + INTERVAL seq MINUTE,
       seq / 9e0, NOW(3) FROM seq_1_to_100;
UPDATE prices SET price = price * 1.5 WHERE asset_id = 'coin-7'
    AND source_updated_at >= '{day}' AND source_updated_at < '{day}' + INTERVAL 1 DAY;
""")
    rc, _, err = h.run_daemon(conf, "--once", "export")
    c.eq(rc, 0, "export after a backfill exits 0")
    after = snapshot(out)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    target = os.path.join(out, "prices", f"date={day}")
    c(changed and all(p == target or p.startswith(target + "/") for p in changed),
      f"only prices/date={day} changed ({len(changed)} paths)")
    c.eq(check_day(db, out, "prices", day), None, "the backfilled day reads back equal")
    m = json.load(open(os.path.join(target, "_manifest.json")))
    c(m["replaces"] is not None and m["replaces"]["rows"] == ASSETS * 24,
      "its manifest says what it replaces")
    c.eq(m["rows"], ASSETS * 24 + 100, "the backfilled day has the new rows")

    # 4. kill -9 during an export.
    out2 = os.path.join(work, "out2")
    write_conf(out2)
    p = h.start_daemon(conf, "--once", "export")
    try:
        h.wait_for(lambda: glob.glob(os.path.join(out2, "*", ".tmp-date=*", "part-*")),
                   timeout=60, step=0.005, what="a day being written")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    tmps = glob.glob(os.path.join(out2, "*", ".tmp-*"))
    c(tmps, f"killed while writing: a temporary directory is left ({len(tmps)})")
    finals = glob.glob(os.path.join(out2, "*", "date=*"))
    bad = [(f, day_valid(f)) for f in finals if day_valid(f)]
    c(not bad, f"every final day directory after kill -9 is complete ({len(finals)}): {bad[:2]}")
    rc, _, err = h.run_daemon(conf, "--once", "export")
    c.eq(rc, 0, "the run after kill -9 exits 0")
    c.eq(glob.glob(os.path.join(out2, "*", ".*")), [], "no temporary directory is left")
    bad = [(t, d, check_day(db, out2, t, d)) for t in TABLES for d in dates]
    bad = [b for b in bad if b[2]]
    c(not bad, f"after kill -9 and a rerun every day reads back equal: {bad[:3]}")

    # 5. SIGTERM during an export.
    out3 = os.path.join(work, "out3")
    write_conf(out3)
    log = os.path.join(work, "term.log")
    p = h.start_daemon(conf, stderr_path=log)
    try:
        h.wait_for(lambda: glob.glob(os.path.join(out3, "*", ".tmp-date=*", "part-*")),
                   timeout=60, step=0.005, what="a day being written")
    finally:
        p.send_signal(signal.SIGTERM)
        rc = p.wait(timeout=120)
    c.eq(rc, 0, "SIGTERM during an export: the daemon exits 0")
    text = open(log).read()
    c("job=export status=" in text, "the export run ended and was reported")
    c.eq(glob.glob(os.path.join(out3, "*", ".*")), [], "no temporary directory is left")
    finals = glob.glob(os.path.join(out3, "*", "date=*"))
    bad = [(f, day_valid(f)) for f in finals if day_valid(f)]
    c(not bad, f"every final day directory after SIGTERM is complete ({len(finals)}): {bad[:2]}")

    db.drop()
    c.done()


if __name__ == "__main__":
    main()
