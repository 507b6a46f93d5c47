"""The export job: closed days to files, re-exports, backfills, S3, and kill -9.

A week of data for 1,000 assets (prices hourly, market snapshots and daily indicators once a
day, global snapshots hourly), with NULLs, quotes, commas, a line break and non-ASCII text in
strings, plus rows of today (an open day) and of 8 days ago (outside the window).

1. `--once export` writes TABLE/date=D/ for each of the 7 closed days of the 4 tables with rows
   (the empty default tables get nothing); each part's sha256 matches its manifest; the files
   read back (gzip + RFC 4180 CSV with the NULL rule, and JSON Lines) equal the database row
   for row, NULLs included.
2. A second run rewrites nothing (every file keeps its inode and mtime).
3. A late backfill of one day (new rows and a changed value) re-exports exactly that day; its
   manifest says what it replaces, and it reads back equal to the database.
4. kill -9 while a day is being written: every date= directory is complete and valid; the next
   run completes and leaves no temporary directory.
5. Upload to s3rver behind a proxy that verifies every SigV4 signature (tests/integration/
   s3check.py): every part and manifest arrives with the right bytes and nothing is refused;
   an injected 503 is retried; kill -9 in the middle of the uploads, then a run that completes
   them all; _upload.json only ever lists parts the store holds.
s3rver comes from npm into the build tree's cache; step 5 SKIPs (the test then still passes
steps 1-4) only when it cannot be installed -- the reason is printed.
"""
import glob
import gzip
import hashlib
import json
import os
import re
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402
import s3check  # noqa: E402

ASSETS = 1000
TABLES = ["prices", "market_snapshots", "global_snapshots", "indicators_daily"]

FIELD = re.compile(r'("(?:[^"]|"")*"|[^,"\r\n]*)(,|\r\n|$)')


def parse_csv(text):
    """RFC 4180 records; a field is None (empty and unquoted: NULL) or its string."""
    records, rec, pos = [], [], 0
    while pos < len(text):
        m = FIELD.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"bad CSV at {pos}: {text[pos:pos + 40]!r}")
        f, term = m.group(1), m.group(2)
        if f.startswith('"'):
            rec.append(f[1:-1].replace('""', '"'))
        else:
            rec.append(f if f else None)
        pos = m.end()
        if term != ",":
            records.append(rec)
            rec = []
    return records


def norm(kind, v):
    """One value in a comparable form: None, or a string."""
    if v is None:
        return None
    if kind == "double":
        return repr(float(v))
    if kind in ("datetime", "timestamp"):
        v = str(v)
        return v if v.endswith("Z") else v.replace(" ", "T") + "Z"
    if kind == "int":
        return str(int(v))
    return str(v)


def kind_of(sqltype):
    t = sqltype.split("(")[0].split()[0]
    if t in ("double", "float"):
        return "double"
    if t in ("datetime", "timestamp", "date"):
        return t
    if t.endswith("int"):
        return "int"
    return "text"


def db_rows(db, table, daycol, date, cols):
    sel = ", ".join(f"IF(`{c}` IS NULL, 'N', CONCAT('V', HEX(CAST(`{c}` AS CHAR))))"
                    for c, _ in cols)
    rows = db.sql(f"SELECT {sel} FROM `{table}` WHERE `{daycol}` >= '{date}' AND "
                  f"`{daycol}` < '{date}' + INTERVAL 1 DAY")
    out = []
    for r in rows:
        out.append(tuple(None if v == "N" else norm(k, bytes.fromhex(v[1:]).decode())
                         for v, (_, k) in zip(r, cols)))
    return sorted(out, key=repr)


def file_rows(daydir, manifest, fmt):
    cols = [(c["name"], kind_of(c["type"])) for c in manifest["columns"]]
    names = [c for c, _ in cols]
    out = []
    for f in manifest["files"]:
        if f["format"] != fmt:
            continue
        text = gzip.decompress(open(os.path.join(daydir, f["name"]), "rb").read()).decode()
        if fmt == "csv.gz":
            recs = parse_csv(text)
            assert recs[0] == names, f"header {recs[0]}"
            body = recs[1:]
        else:
            body = []
            for line in text.splitlines():
                o = json.loads(line)
                assert list(o) == names, f"keys {list(o)}"
                body.append([o[n] for n in names])
        assert len(body) == f["rows"], f"{f['name']}: {len(body)} rows, manifest {f['rows']}"
        for r in body:
            out.append(tuple(norm(k, v) for v, (_, k) in zip(r, cols)))
    return sorted(out, key=repr)


def day_valid(daydir):
    """Why a final day directory is not a complete export, or None."""
    try:
        m = json.load(open(os.path.join(daydir, "_manifest.json")))
    except (OSError, ValueError) as e:
        return f"manifest: {e}"
    for f in m["files"]:
        p = os.path.join(daydir, f["name"])
        if not os.path.exists(p):
            return f"{f['name']} missing"
        data = open(p, "rb").read()
        if hashlib.sha256(data).hexdigest() != f["sha256"] or len(data) != f["bytes"]:
            return f"{f['name']} differs from its manifest"
        gzip.decompress(data)
    names = {f["name"] for f in m["files"]} | {"_manifest.json", "_upload.json"}
    extra = set(os.listdir(daydir)) - names
    if extra:
        return f"unexpected files {sorted(extra)}"
    return None


def snapshot(d):
    """Every file's identity: a rewritten file gets a new inode (written elsewhere, renamed)."""
    out = {}
    for p in glob.glob(os.path.join(d, "**", "*"), recursive=True):
        st = os.stat(p)
        if not os.path.isdir(p):
            out[p] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def seed(db):
    db.sql("""
INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price, market_cap,
                    volume_24h, change_24h_pct, fetched_at)
SELECT CASE a.seq WHEN 1 THEN 'q"uo,te' WHEN 2 THEN 'ünï cødé ₿' WHEN 3 THEN 'line\\nbreak'
                  ELSE CONCAT('coin-', a.seq) END,
       'usd', 'coingecko',
       TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL h.seq HOUR
           + INTERVAL (a.seq * 1000) MICROSECOND,
       IF(h.seq % 7 = 0, NULL, a.seq / 7e0 + h.seq * 0.1e0),
       a.seq * 1e9 / 3e0, IF(a.seq % 5 = 0, NULL, 1e-300 * a.seq), -1e0 / 3e0,
       TIMESTAMP(CURRENT_DATE) + INTERVAL 1 MINUTE
FROM seq_1_to_1000 a CROSS JOIN seq_0_to_167 h;
INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price, fetched_at)
SELECT CONCAT('coin-', seq), 'eur', 'coingecko', TIMESTAMP(CURRENT_DATE) + INTERVAL seq SECOND,
       1.5, NOW(3) FROM seq_1_to_10;
INSERT INTO prices (asset_id, vs_currency, source, source_updated_at, price, fetched_at)
SELECT CONCAT('coin-', seq), 'eur', 'coingecko',
       TIMESTAMP(CURRENT_DATE - INTERVAL 8 DAY) + INTERVAL seq SECOND, 2.5, NOW(3)
FROM seq_1_to_10;
INSERT INTO market_snapshots (asset_id, vs_currency, source, snapshot_at, market_cap_rank, price,
                              market_cap, ath, ath_date, roi, fetched_at)
SELECT CONCAT('coin-', a.seq), 'usd', 'coingecko',
       TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL d.seq DAY + INTERVAL 12 HOUR,
       IF(a.seq % 10 = 0, NULL, a.seq), 0.1e0 * a.seq + d.seq, 12345678.9e0 * a.seq,
       PI() * a.seq, '2021-11-10 14:24:11.123',
       IF(a.seq % 3 = 0, CONCAT('{"times": ', a.seq / 7e0, ', "currency": "usd"}'), NULL),
       NOW(3)
FROM seq_1_to_1000 a CROSS JOIN seq_0_to_6 d;
INSERT INTO global_snapshots (source, snapshot_at, active_cryptocurrencies, markets,
                              total_market_cap_usd, btc_dominance, total_market_cap, fetched_at)
SELECT 'coingecko', TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL h.seq HOUR,
       10000 + h.seq, NULL, 2.5e12 + h.seq / 3e0, IF(h.seq % 2 = 0, NULL, 52.1e0),
       '{"usd": 2500000000000.5, "eur": 2.3e12}', NOW(3)
FROM seq_0_to_167 h;
INSERT INTO indicators_daily (source, asset_id, vs_currency, day, close, market_cap, return_1d,
                              return_nd, return_days, rsi_14, avg_gain, avg_loss,
                              volatility_14d, volatility_30d)
SELECT 'coingecko', CONCAT('coin-', a.seq), 'usd', CURRENT_DATE - INTERVAL 7 DAY + INTERVAL d.seq DAY,
       a.seq / 3e0, NULL, IF(d.seq = 0, NULL, 0.01e0 * d.seq), NULL, 7,
       IF(d.seq < 3, NULL, 100e0 / 7e0), NULL, NULL, NULL, NULL
FROM seq_1_to_1000 a CROSS JOIN seq_0_to_6 d;
""")


def main():
    h.need_env()
    c = h.Check()
    work = h.tempdir("coingest-export-")
    db = h.Database("coingest_it_export")
    out = os.path.join(work, "out")
    conf = os.path.join(work, "c.conf")

    def write_conf(dir_, extra=""):
        h.write_config(conf, db, "http://127.0.0.1:9", os.path.join(work, "spool"), jobs=f"""
[job.export]
enabled = true
dir = {dir_}
formats = csv.gz, jsonl.gz
days = 7
part_max_bytes = 65536
{extra}
""")

    write_conf(out)
    rc, _, err = h.run_daemon(conf, "--migrate")
    c.eq(rc, 0, "migrate")
    seed(db)
    today = db.scalar("SELECT CURRENT_DATE")
    dates = [db.scalar(f"SELECT DATE('{today}' - INTERVAL {n} DAY)") for n in range(7, 0, -1)]
    daycol = {"prices": "source_updated_at", "market_snapshots": "snapshot_at",
              "global_snapshots": "snapshot_at", "indicators_daily": "day"}

    def check_day(root, table, date, formats=("csv.gz", "jsonl.gz")):
        d = os.path.join(root, table, f"date={date}")
        why = day_valid(d)
        if why:
            return why
        m = json.load(open(os.path.join(d, "_manifest.json")))
        cols = [(x["name"], kind_of(x["type"])) for x in m["columns"]]
        want = db_rows(db, table, daycol[table], date, cols)
        if m["rows"] != len(want):
            return f"manifest rows {m['rows']}, database {len(want)}"
        for fmt in formats:
            got = file_rows(d, m, fmt)
            if got != want:
                diff = [g for g in got if g not in set(want)][:2]
                return f"{fmt}: {len(got)} rows differ from the database's {len(want)}: {diff}"
        return None

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
    bad = [(t, d, check_day(out, t, d)) for t in TABLES for d in dates]
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
    c("days_unchanged=28" in err, "the log says 28 days unchanged")

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
    c.eq(check_day(out, "prices", day), None, "the backfilled day reads back equal")
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
    bad = [(t, d, check_day(out2, t, d)) for t in TABLES for d in dates]
    bad = [b for b in bad if b[2]]
    c(not bad, f"after kill -9 and a rerun every day reads back equal: {bad[:3]}")

    # 5. S3.
    cache = os.path.join(os.environ.get("COINGEST_BUILD_DIR", work), "npm-cache", "s3rver")
    binary, why = s3check.install_s3rver(cache)
    if not binary:
        print("SKIP (S3 part):", why)
        db.drop()
        c.done()
    s3 = s3check.S3(binary, work, "coingest-lake")
    env = {"AWS_ACCESS_KEY_ID": s3check.ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": s3check.SECRET_KEY}
    try:
        def s3conf(prefix):
            write_conf(out, f"""s3_bucket = coingest-lake
s3_prefix = {prefix}
s3_region = {s3check.REGION}
s3_endpoint = {s3.endpoint}
s3_path_style = true
s3_requests_per_second = 200
""")

        def check_bucket(prefix):
            bad = []
            for t in TABLES:
                for d in dates:
                    dd = os.path.join(out, t, f"date={d}")
                    m = json.load(open(os.path.join(dd, "_manifest.json")))
                    for f in m["files"]:
                        st, data = s3.get(f"{prefix}/{t}/date={d}/{f['name']}")
                        if st != 200 or hashlib.sha256(data).hexdigest() != f["sha256"]:
                            bad.append((t, d, f["name"], st))
                    st, data = s3.get(f"{prefix}/{t}/date={d}/_manifest.json")
                    if st != 200 or data != open(os.path.join(dd, "_manifest.json"), "rb").read():
                        bad.append((t, d, "_manifest.json", st))
                    up = json.load(open(os.path.join(dd, "_upload.json")))
                    if "manifest_uploaded_at" not in up:
                        bad.append((t, d, "_upload.json", up))
            return bad

        s3conf("lake/v1")
        s3.proxy.fail_next = 2
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "export with upload exits 0")
        if rc:
            print(err[-3000:])
        c.eq(s3.proxy.failures, [], "every request carried a valid SigV4 signature")
        nfiles = sum(len(json.load(open(m))["files"]) + 1
                     for m in glob.glob(os.path.join(out, "*", "date=*", "_manifest.json")))
        c.eq(s3.proxy.puts, nfiles + 2, "every part and manifest PUT once, plus 2 retried 503s")
        bad = check_bucket("lake/v1")
        c(not bad, f"the bucket holds every part and manifest byte for byte: {bad[:3]}")
        before_puts = s3.proxy.puts
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq((rc, s3.proxy.puts), (0, before_puts), "a second run uploads nothing")

        # kill -9 in the middle of the uploads (a new prefix: everything uploads again).
        s3conf("lake/v2")
        s3.proxy.stall_s = 0.2
        start = s3.proxy.puts
        p = h.start_daemon(conf, "--once", "export", env=env)
        try:
            h.wait_for(lambda: s3.proxy.puts >= start + 12, timeout=120, step=0.01,
                       what="uploads under way")
        finally:
            p.send_signal(signal.SIGKILL)
            p.wait()
        s3.proxy.stall_s = 0
        lies = []
        for f in glob.glob(os.path.join(out, "*", "date=*", "_upload.json")):
            dd = os.path.dirname(f)
            t, d = dd.split(os.sep)[-2], dd.split("date=")[-1]
            up = json.load(open(f))
            if not up["destination"].endswith("lake/v2"):
                continue  # a day the killed run had not reached yet
            for name, rec in up["files"].items():
                st, data = s3.get(f"lake/v2/{t}/date={d}/{name}")
                if st != 200 or hashlib.sha256(data).hexdigest() != rec["sha256"]:
                    lies.append((t, d, name))
        c(not lies, f"after kill -9 every part marked uploaded is in the bucket: {lies[:3]}")
        bad = [b for b in [day_valid(x) for x in glob.glob(os.path.join(out, "*", "date=*"))] if b]
        c(not bad, f"the local files are intact after kill -9 during upload: {bad[:2]}")
        rc, _, err = h.run_daemon(conf, "--once", "export", env=env)
        c.eq(rc, 0, "the run after kill -9 during upload exits 0")
        bad = check_bucket("lake/v2")
        c(not bad, f"and the bucket is complete: {bad[:3]}")
        c.eq(s3.proxy.failures, [], "still every signature valid")
    finally:
        s3.close()
    db.drop()
    c.done()


if __name__ == "__main__":
    main()
