"""Helpers of the export tests (test_export.py, test_export_s3.py): the seed data, an RFC 4180
reader that keeps the NULL rule (an empty unquoted field is NULL), and the read-back check of a
day directory against the database, value by value.

Python standard library only; SQL through harness.Database (the mariadb client).
"""
import glob
import gzip
import hashlib
import json
import os
import re

ASSETS = 1000
TABLES = ["prices", "market_snapshots", "global_snapshots", "candles", "price_rollups",
          "indicators_daily"]
DAYCOL = {"prices": "source_updated_at", "market_snapshots": "snapshot_at",
          "global_snapshots": "snapshot_at", "candles": "open_time",
          "price_rollups": "bucket_start", "indicators_daily": "day"}

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
                              total_market_cap_usd, btc_dominance, total_market_cap,
                              total_volume, fetched_at)
SELECT 'coingecko', TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL h.seq HOUR,
       10000 + h.seq, NULL, 2.5e12 + h.seq / 3e0, IF(h.seq % 2 = 0, NULL, 52.1e0),
       '{"usd": 2500000000000.5, "eur": 2.3e12}',
       IF(h.seq % 5 = 0, CONCAT('{"long": "', REPEAT('ab,cé ', 100 * h.seq), '"}'), NULL),
       NOW(3)
FROM seq_0_to_167 h;
INSERT INTO candles (source, asset_id, vs_currency, interval_s, open_time, product, open, high,
                     low, close, volume, fetched_at)
SELECT 'coinbase', CONCAT('coin-', a.seq), 'usd', 3600,
       TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL h.seq HOUR, CONCAT('C', a.seq, '-USD'),
       a.seq + h.seq / 8e0, a.seq + h.seq / 4e0, a.seq + 0e0, a.seq + h.seq / 6e0,
       IF(h.seq % 4 = 0, NULL, h.seq * 1.1e0), NOW(3)
FROM seq_1_to_50 a CROSS JOIN seq_0_to_167 h;
INSERT INTO price_rollups (source, asset_id, vs_currency, bucket, bucket_start, open, high, low,
                           close, samples, volume_24h, market_cap, computed_at)
SELECT 'coingecko', CONCAT('coin-', a.seq), 'usd', IF(h.seq < 168, '1h', '1d'),
       IF(h.seq < 168, TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL h.seq HOUR,
          TIMESTAMP(CURRENT_DATE - INTERVAL 7 DAY) + INTERVAL (h.seq - 168) DAY),
       1e0 / a.seq, 2e0 / a.seq, 0.5e0 / a.seq, 1.5e0 / a.seq, 12,
       IF(a.seq % 2 = 0, NULL, 1e6 * a.seq), NULL, NOW(3)
FROM seq_1_to_100 a CROSS JOIN seq_0_to_174 h;
INSERT INTO indicators_daily (source, asset_id, vs_currency, day, close, market_cap, return_1d,
                              return_nd, return_days, rsi_14, avg_gain, avg_loss,
                              volatility_14d, volatility_30d)
SELECT 'coingecko', CONCAT('coin-', a.seq), 'usd',
       CURRENT_DATE - INTERVAL 7 DAY + INTERVAL d.seq DAY,
       a.seq / 3e0, NULL, IF(d.seq = 0, NULL, 0.01e0 * d.seq), NULL, 7,
       IF(d.seq < 3, NULL, 100e0 / 7e0), NULL, NULL, NULL, NULL
FROM seq_1_to_1000 a CROSS JOIN seq_0_to_6 d;
""")


def check_day(db, root, table, date, formats=("csv.gz", "jsonl.gz")):
    """Why TABLE/date=D under root is not the database's day exactly, or None."""
    d = os.path.join(root, table, f"date={date}")
    why = day_valid(d)
    if why:
        return why
    m = json.load(open(os.path.join(d, "_manifest.json")))
    cols = [(x["name"], kind_of(x["type"])) for x in m["columns"]]
    want = db_rows(db, table, DAYCOL[table], date, cols)
    if m["rows"] != len(want):
        return f"manifest rows {m['rows']}, database {len(want)}"
    for fmt in formats:
        got = file_rows(d, m, fmt)
        if got != want:
            diff = [g for g in got if g not in set(want)][:2]
            return f"{fmt}: {len(got)} rows differ from the database's {len(want)}: {diff}"
    return None


def closed_days(db):
    """The 7 closed UTC days the seed fills, oldest first."""
    today = db.scalar("SELECT CURRENT_DATE")
    return [db.scalar(f"SELECT DATE('{today}' - INTERVAL {n} DAY)") for n in range(7, 0, -1)]


def write_conf(h, conf, db, work, dir_, extra=""):
    h.write_config(conf, db, "http://127.0.0.1:9", os.path.join(work, "spool"), jobs=f"""
[job.export]
enabled = true
dir = {dir_}
formats = csv.gz, jsonl.gz
days = 7
part_max_bytes = 65536
{extra}
""")


def prepare(h, c, prefix, dbname):
    """A test's start: a work directory, database `dbname` migrated (checked with c) and
    seeded, and a config (work/c.conf) exporting to work/out. Returns (work, db, out, conf,
    write_conf, dates): write_conf(dir_, extra="") rewrites the config, dates are the closed
    days of the seed."""
    work = h.tempdir(prefix)
    db = h.Database(dbname)
    out = os.path.join(work, "out")
    conf = os.path.join(work, "c.conf")

    def rewrite(dir_, extra=""):
        write_conf(h, conf, db, work, dir_, extra)

    rewrite(out)
    rc, _, err = h.run_daemon(conf, "--migrate")
    c.eq(rc, 0, "migrate" if rc == 0 else f"migrate ({err.strip()[-300:]})")
    seed(db)
    return work, db, out, conf, rewrite, closed_days(db)
