"""Coinbase candles end to end: the real daemon, a private database, tests/fakeapi/coinbase.py.

A backfill of 20 products x 30 days of hourly candles (the fake leaves about 1 hour in 11
without trades, and answers one candle more than asked at every window's start) is killed with
SIGKILL once some windows are stored, then run again to completion with `--once`. Then:

- no candle is stored twice, and every product's stored hours are exactly the fake's traded
  hours over the span (the fake itself is the oracle, asked window by window): no gap other
  than its trade-less hours;
- the second run fetched less than a whole backfill (it resumed from candle_fill);
- the universe has duplicate symbols: the 20 products' base currencies each match one asset,
  DUPA matches two assets of similar market cap, ZZZ none, and BTC two of which one dominates.
  Exactly the unambiguous ones are mapped (asset_aliases), DUPA and ZZZ are listed in
  unmapped_asset_keys and none of their candles are stored.
"""
import json
import os
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

H = 3600


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("cg-coinbase-")
    db = h.Database("cg_coinbase_backfill")
    products = ["C%05d-USD" % i for i in range(1, 21)] + ["DUPA-USD", "ZZZ-USD", "BTC-USD"]
    fake = h.FakeAPI(work, "--products", ",".join(products), "--gaps", "11", "--extra-candle",
                     script="coinbase.py", prefix="")
    try:
        run(check, work, db, fake, fake.base_url)
    finally:
        fake.stop()
        db.drop()
    check.done()


def run(check, work, db, fake, base):
    # Migrate, then the canonical universe: what CoinGecko's jobs would have stored.
    conf = os.path.join(work, "c.conf")
    with open(conf, "w") as f:
        f.write(h.daemon_sections(db, f"{work}/spool", "100ms", "workers = 2") + f"""
[source.coingecko]
enabled = false

[source.coinbase]
enabled = true
base_url = {base}
rate_limit = 8/s
burst = 2
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms
quote_currencies = usd

[job.coinbase_candles]
granularity = 3600
days = 30
""")
    rc, out, err = h.run_daemon(conf, "--migrate", timeout=120)
    check.eq(rc, 0, "--migrate" if rc == 0 else f"--migrate ({err.strip()[-300:]})")
    rows = []
    for i in range(1, 21):
        rows.append(("coin-%05d" % i, "c%05d" % i, "Coin %05d" % i, 1e9 / i))
    rows += [("dupa-one", "dupa", "Dupa One", 5e6), ("dupa-two", "dupa", "Dupa Two", 4e6),
             ("bitcoin", "btc", "Bitcoin", 1.3e12), ("batcat", "btc", "BatCat", 2e5)]
    values = ",".join(f"('{a}','{s}','{n}',UTC_TIMESTAMP(3),UTC_TIMESTAMP(3))" for a, s, n, _ in rows)
    snaps = ",".join(f"('{a}','usd','coingecko',UTC_TIMESTAMP(3),{c},UTC_TIMESTAMP(3))"
                     for a, _, _, c in rows)
    db.sql(f"INSERT INTO assets (id, symbol, name, first_seen_at, updated_at) VALUES {values};"
           f"INSERT INTO market_snapshots (asset_id, vs_currency, source, snapshot_at, market_cap,"
           f" fetched_at) VALUES {snaps}")

    # Run 1, killed once a few windows are in.
    p = h.start_daemon(conf, "--once", "coinbase_candles", stderr_path=os.path.join(work, "d1.log"))
    try:
        h.wait_for(lambda: db.count("candle_fill") >= 8 or p.poll() is not None, 120,
                   what="some windows stored")
    finally:
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait(30)
    check(killed, "run 1 was killed midway (not finished before)")
    fills_1 = db.count("candle_fill")
    n_req_1 = len(fake.requests())
    check(fills_1 < 23 * 3, f"run 1 stopped partway ({fills_1} windows recorded)")

    # Run 2 to completion.
    rc, out, err = h.run_daemon(conf, "--once", "coinbase_candles", timeout=300)
    check.eq(rc, 0, "run 2 exit code" if rc == 0 else f"run 2 ({err.strip()[-500:]})")
    reqs = fake.requests()[n_req_1:]
    candle_reqs = [r for r in reqs if r["path"].endswith("/candles")]
    check(len(candle_reqs) < 21 * 3, f"run 2 resumed: {len(candle_reqs)} candle requests")
    check(all(r["headers"].get("user-agent") for r in reqs), "every request had a User-Agent")

    # No duplicates (the key forbids them; the count says the product/time pairs agree).
    dup = db.scalar("SELECT COUNT(*) - COUNT(DISTINCT product, open_time) FROM candles")
    check.eq(int(dup), 0, "no candle stored twice")

    # No gaps: each product's hours are exactly the fake's traded hours over the span.
    now = int(time.time())
    for pid in ["C%05d-USD" % i for i in range(1, 21)] + ["BTC-USD"]:
        got = [int(float(r[0])) for r in db.sql(
            f"SELECT UNIX_TIMESTAMP(open_time) FROM candles WHERE product = '{pid}'"
            " ORDER BY open_time")]
        if not got:
            check(False, f"{pid}: candles stored")
            continue
        want = oracle(pid, got[0], got[-1], "http://127.0.0.1:%d" % fake.port)
        check(got == want, f"{pid}: {len(got)} hours stored, the fake traded {len(want)} "
                           f"in that span (missing {sorted(set(want) - set(got))[:3]}, "
                           f"extra {sorted(set(got) - set(want))[:3]})")
        check(got[0] <= now - 30 * 86400 + 2 * H and got[-1] >= now - 4 * H - H * 3,
              f"{pid}: the span covers 30 days up to the last closed hours")

    # Mapping: the unambiguous ones, and the rest listed.
    aliases = {r[0]: (r[1], r[2]) for r in db.sql(
        "SELECT source_key, asset_id, method FROM asset_aliases WHERE source = 'coinbase'")}
    check.eq(aliases.get("C00007"), ("coin-00007", "symbol_market_cap"), "C00007 mapped")
    check.eq(aliases.get("BTC"), ("bitcoin", "symbol_market_cap"), "BTC: the dominant one")
    check.eq(sum(1 for v in aliases.values() if v[0]), 21, "21 keys mapped")
    unmapped = {r[0]: (r[1], r[2]) for r in db.sql(
        "SELECT source_key, reason, candidates FROM unmapped_asset_keys WHERE source = 'coinbase'")}
    check.eq(unmapped, {"DUPA": ("ambiguous", "dupa-one,dupa-two"), "ZZZ": ("unknown", None)},
             "unmapped_asset_keys lists exactly DUPA and ZZZ")
    check.eq(db.count("candles", "product IN ('DUPA-USD', 'ZZZ-USD')"), 0,
             "no candles for unmapped keys")
    check.eq(db.count("candles", "asset_id = 'bitcoin' AND vs_currency = 'usd' AND source = 'coinbase'"),
             db.count("candles", "product = 'BTC-USD'"), "BTC-USD candles are bitcoin's")


def oracle(pid, first, last, base):
    """The fake's hours for pid in [first, last], asked window by window."""
    out = []
    t = first
    while t <= last:
        end = min(t + 299 * H, last)
        url = f"{base}/products/{pid}/candles?granularity=3600&start={t}&end={end}"
        with urllib.request.urlopen(url, timeout=30) as r:
            rows = json.loads(r.read())
        out += [row[0] for row in rows if t <= row[0] <= end]
        t = end + H
    return sorted(set(out))


if __name__ == "__main__":
    main()
