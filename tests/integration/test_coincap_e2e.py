#!/usr/bin/env python3
"""CoinCap v3 end to end: the real daemon, a private database, tests/fakeapi/coincap.py.
ctest-labels: slow

The fake serves a synthetic universe of 20 assets (coin00001.., numbers as strings, nulls in
supply, maxSupply, marketCapUsd, changePercent24Hr and vwap24Hr, v3 `tokens`) plus five whose
symbols collide with the canonical universe's, and checks the Bearer key. The canonical
universe (what CoinGecko's jobs would have stored) has duplicate symbols. Then:

1. `--once coincap_assets` (top 26 in pages of 3: the fake has 25): prices and
   market_snapshots (source coincap) hold exactly what the fake served, row for row and field
   for field, under the canonical ids; the mapping is exactly the unambiguous keys (contract,
   symbol_name, symbol_market_cap), and the other two (on different pages) are listed in
   unmapped_asset_keys and in the run's one warn line, with no rows.
2. A 429 storm (four answers with Retry-After: 1): the run still stores every row, and no
   request reaches the API before the advised second has passed. Then a truncated body, an
   HTML page with status 200, a 502 and an answer slower than the timeout, one per page: each
   page is asked again and the run stores every row.
3. `--once coincap_history` (12 assets x 60 days of h1, two windows each, the fake leaving out
   about one hour in 13) killed with SIGKILL midway, then run again: no point twice, no gap
   other than the fake's, every price the fake's, and the second run resumed (fewer windows).
4. base_url left on the retired /v2: a clear error naming CoinCap's notice, exit code 1, one
   request (not retried), nothing stored; a wrong key: exit 1 with the API's message.
5. The recorded bodies (the fake without --assets): coincap_assets stores bitcoin's row of the
   recorded 1000-asset list as recorded, and a d1 backfill of bitcoin reaching back to 2021
   stores exactly the 8 recorded daily points, price for price.
6. Credits used up (the fake answers 403 once --credits are spent): exit 1 with the message,
   one request, not retried.
"""
import json
import os
import signal
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

KEY = "cc-test-key-0123456789"
H_MS = 3600 * 1000
# tests/support/fakeapi_proc.h's FAKEAPI_CLOCK_SLACK_S: the loop clock is
# CLOCK_MONOTONIC_COARSE in whole ms, so a pause can look up to this much short.
CLOCK_SLACK_S = 0.005

USDC = "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48"
# Assets beyond the 20 synthetic ones, ranked 21..25 (what --assets-file appends).
EXTRA = [
    {"id": "binance-coin", "symbol": "BNB", "name": "BNB", "tokens": {}},
    {"id": "ethereum", "symbol": "ETH", "name": "Ethereum (PoS)", "tokens": {}},
    {"id": "usd-coin", "symbol": "USDC", "name": "USD Coin",
     "tokens": {"1": ["0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"]}},
    {"id": "dupa-coin", "symbol": "DUPA", "name": "Dupa", "tokens": {}},
    {"id": "zzz", "symbol": "ZZZ", "name": "Zzz", "tokens": {}},
]


def addr(i):
    return "0x%040x" % (i * 0x9E3779B97F4A7C15 % (1 << 160))


def canonical():
    """(id, symbol, name, platforms, usd market cap) as CoinGecko's jobs would store them."""
    rows = []
    for i in range(1, 21):
        plat = {"ethereum": addr(i)} if i % 3 == 1 else None
        rows.append(("coin-%05d" % i, "c%05d" % i, "Coin %05d" % i, plat, 1e9 / i))
    rows += [("bitcoin", "btc", "Bitcoin", None, 1.3e12), ("batcat", "btc", "BatCat", None, 2e5),
             ("binancecoin", "bnb", "BNB", None, 8e10),
             ("ethereum", "eth", "Ethereum", None, 4e11),
             ("eth-clone", "eth", "Ether Clone", None, 1e6),
             ("usd-coin", "usdc", "USDC", {"ethereum": USDC}, 6e10),
             ("usdc-bridged", "usdc", "USDC", {"polygon-pos": "0x" + "27" * 20}, 5e8),
             ("dupa-one", "dupa", "Dupa One", None, 5e6),
             ("dupa-two", "dupa", "Dupa Two", None, 4e6)]
    return rows


def expected_aliases():
    want = {}
    for i in range(1, 21):
        want["coin%05d" % i] = ("coin-%05d" % i, "contract" if i % 3 == 1 else "symbol_name")
    want.update({"binance-coin": ("binancecoin", "symbol_name"),
                 "ethereum": ("ethereum", "symbol_market_cap"),
                 "usd-coin": ("usd-coin", "contract"),
                 "dupa-coin": (None, "ambiguous"), "zzz": (None, "unknown")})
    return want


HISTORY_H1 = "top = 12\ninterval = h1\ndays = 60"


def write_conf(path, work, db, base, key=KEY, history=HISTORY_H1, assets="top = 26\nlimit = 3"):
    with open(path, "w") as f:
        f.write(h.daemon_sections(db, f"{work}/spool", "100ms", "workers = 2") + f"""
[source.coingecko]
enabled = false

[source.coincap]
enabled = true
base_url = {base}
api_key = {key}
rate_limit = 5/s
burst = 2
timeout = 2s
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms

[job.coincap_assets]
{assets}

[job.coincap_history]
{history}
""")


def fake_get(fake, path):
    req = urllib.request.Request(f"http://127.0.0.1:{fake.port}/v3{path}",
                                 headers={"Authorization": "Bearer " + KEY})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def num(s):
    return None if s is None else float(s)


def ms(v):
    return int(round(float(v) * 1000))


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("cg-coincap-")
    db = h.Database("cg_coincap_e2e")
    extra = os.path.join(work, "extra.json")
    with open(extra, "w") as f:
        json.dump(EXTRA, f)
    epoch = int(time.time()) // 60 * 60 + 17  # never on the hour: history's points are
    fake = h.FakeAPI(work, "--assets", "20", "--assets-file", extra, "--require-key", KEY,
                     "--history-gaps", "13", "--epoch", str(epoch), script="coincap.py",
                     prefix="/v3")
    try:
        run(check, work, db, fake)
    finally:
        fake.stop()
        db.drop()
    check.done()


def run(check, work, db, fake):
    conf = os.path.join(work, "c.conf")
    write_conf(conf, work, db, fake.base_url)
    rc, out, err = h.run_daemon(conf, "--migrate", timeout=120)
    check.eq(rc, 0, "--migrate" if rc == 0 else f"--migrate ({err.strip()[-300:]})")
    values, snaps = [], []
    for a, s, n, plat, cap in canonical():
        p = "NULL" if plat is None else "'%s'" % json.dumps(plat)
        values.append(f"('{a}','{s}','{n}',{p},UTC_TIMESTAMP(3),UTC_TIMESTAMP(3))")
        snaps.append(f"('{a}','usd','coingecko',UTC_TIMESTAMP(3),{cap},UTC_TIMESTAMP(3))")
    db.sql("INSERT INTO assets (id, symbol, name, platforms, first_seen_at, updated_at) VALUES "
           + ",".join(values) + "; INSERT INTO market_snapshots (asset_id, vs_currency, source,"
           " snapshot_at, market_cap, fetched_at) VALUES " + ",".join(snaps))

    assets_run(check, work, db, fake, conf)
    storm(check, db, fake, conf)
    faults(check, db, fake, conf)
    history(check, work, db, fake, conf)
    refusals(check, work, db, fake)
    recorded(check, work, db)


def shape(check, fake):
    """The synthetic bodies are shaped like the recorded v3 one: the same keys in the same
    order, envelope included, every number a string (or null)."""
    fx = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "tests", "fixtures", "coincap",
                      "v3_assets_bitcoin_2026-04-06.json")
    rec = json.load(open(fx))
    got = fake_get(fake, "/assets?limit=25")
    check.eq(list(got), list(rec), "fake: the envelope's keys, in the recorded order")
    check(all(list(a) == list(rec["data"]) for a in got["data"]),
          "fake: every asset has the recorded v3 asset's keys, in its order")
    numeric = [k for k in rec["data"] if k not in ("id", "symbol", "name", "explorer", "tokens")]
    check(all(a[k] is None or isinstance(a[k], str) for a in got["data"] for k in numeric),
          "fake: every number is a JSON string or null")


def assets_run(check, work, db, fake, conf):
    shape(check, fake)
    since = fake.requests()[-1]["seq"]
    rc, out, err = h.run_daemon(conf, "--once", "coincap_assets", timeout=120)
    check.eq(rc, 0, "coincap_assets exit code" if rc == 0 else f"coincap_assets ({err[-500:]})")
    reqs = [r for r in fake.requests() if r["route"] == "/assets" and r["seq"] > since]
    check.eq([(r["params"].get("limit"), r["params"].get("offset")) for r in reqs],
             [("3", str(o)) for o in range(0, 24, 3)] + [("2", "24")],
             "pages by limit/offset up to top = 26")
    check(all(r["headers"].get("authorization") == "Bearer " + KEY for r in reqs),
          "every request carried the key as a Bearer token")

    # The mapping: exactly the unambiguous keys; the rest listed, in the view and the log.
    got = {r[0]: (r[1], r[2]) for r in db.sql(
        "SELECT source_key, asset_id, method FROM asset_aliases WHERE source = 'coincap'")}
    check.eq(got, expected_aliases(), "asset_aliases: the CoinCap ids and how they mapped")
    unmapped = {r[0]: (r[1], r[2]) for r in db.sql(
        "SELECT source_key, reason, candidates FROM unmapped_asset_keys WHERE source = 'coincap'")}
    check.eq(unmapped, {"dupa-coin": ("ambiguous", "dupa-one,dupa-two"),
                        "zzz": ("unknown", None)}, "unmapped_asset_keys lists dupa-coin and zzz")
    warn = [ln for ln in err.splitlines() if "asset keys not mapped" in ln]
    check(len(warn) == 1 and "dupa-coin" in warn[0] and "zzz" in warn[0]
          and "unmapped=2" in warn[0], f"one warn line names the unmapped keys: {warn}")
    compare_assets(check, db, fake, "run 1")


def compare_assets(check, db, fake, what):
    """The rows of the fake's current answer (the same tick: the same answer), field by
    field."""
    served = fake_get(fake, "/assets?limit=26&offset=0")
    ts = served["timestamp"]
    alias = expected_aliases()
    prices = {r[0]: r[1:] for r in db.sql(
        "SELECT asset_id, price, market_cap, volume_24h, change_24h_pct, vwap_24h FROM prices"
        f" WHERE source = 'coincap' AND vs_currency = 'usd'"
        f" AND source_updated_at = FROM_UNIXTIME({ts / 1000:.3f})")}
    snaps = {r[0]: r[1:] for r in db.sql(
        "SELECT asset_id, market_cap_rank, price, market_cap, total_volume,"
        " price_change_pct_24h, circulating_supply, max_supply, vwap_24h FROM market_snapshots"
        f" WHERE source = 'coincap' AND vs_currency = 'usd'"
        f" AND snapshot_at = FROM_UNIXTIME({ts / 1000:.3f})")}
    want_p, want_s = {}, {}
    for a in served["data"]:
        cid = alias[a["id"]][0]
        if cid is None:
            continue
        want_p[cid] = (num(a["priceUsd"]), num(a["marketCapUsd"]), num(a["volumeUsd24Hr"]),
                       num(a["changePercent24Hr"]), num(a["vwap24Hr"]))
        want_s[cid] = (int(a["rank"]), num(a["priceUsd"]), num(a["marketCapUsd"]),
                       num(a["volumeUsd24Hr"]), num(a["changePercent24Hr"]), num(a["supply"]),
                       num(a["maxSupply"]), num(a["vwap24Hr"]))
    got_p = {k: tuple(num(x) for x in v) for k, v in prices.items()}
    got_s = {k: (int(v[0]),) + tuple(num(x) for x in v[1:]) for k, v in snaps.items()}
    check.eq(len(want_p), 23, f"{what}: 23 of the 25 served assets are mapped")
    check.eq(got_p, want_p, f"{what}: prices rows (source coincap) are the served assets'")
    check.eq(got_s, want_s, f"{what}: market_snapshots rows are the served assets'")
    nulls = sum(1 for v in want_s.values() if None in v)
    check(nulls >= 10, f"{what}: the served nulls are stored as NULL ({nulls} rows with one)")


def storm(check, db, fake, conf):
    fake.control("POST", "tick", {"n": 1})
    fake.control("POST", "faults", {"match": "/assets", "status": 429, "retry_after": 1,
                                    "count": 4})
    since = fake.requests()[-1]["seq"]
    rc, out, err = h.run_daemon(conf, "--once", "coincap_assets", timeout=120)
    check.eq(rc, 0, "429 storm: the run succeeds" if rc == 0 else f"429 storm ({err[-500:]})")
    reqs = [r for r in fake.requests() if r["seq"] > since]
    n429 = [r for r in reqs if r["status"] == 429]
    check.eq(len(n429), 4, "429 storm: four 429 answers")
    early = []
    for r in n429:
        after = [x for x in reqs if x["t_mono"] > r["t_done_mono"]]
        if after and after[0]["t_mono"] < r["t_done_mono"] + 1.0 - CLOCK_SLACK_S:
            early.append(after[0]["t_mono"] - r["t_done_mono"])
    check(not early, f"429 storm: no request before Retry-After had passed (early by {early})")
    check.eq(len([r for r in reqs if r["status"] == 200]), 9, "429 storm: then the 9 pages")
    compare_assets(check, db, fake, "after the storm")


def faults(check, db, fake, conf):
    fake.control("POST", "tick", {"n": 1})
    kinds = [{"kind": "truncate"}, {"kind": "html"}, {"status": 502},
             {"kind": "delay", "seconds": 3}]
    for k, f in enumerate(kinds):
        f.update({"match": "/assets", "params": {"offset": str(3 * k)}})
    fake.control("POST", "faults", kinds)
    since = fake.requests()[-1]["seq"]
    rc, out, err = h.run_daemon(conf, "--once", "coincap_assets", timeout=120)
    check.eq(rc, 0, "faults: the run succeeds" if rc == 0 else f"faults ({err[-500:]})")
    reqs = [r for r in fake.requests() if r["seq"] > since]
    offsets = [r["params"].get("offset") for r in reqs]
    check.eq([offsets.count(str(3 * k)) for k in range(5)], [2, 2, 2, 2, 1],
             "faults: each faulted page was asked again, once")
    compare_assets(check, db, fake, "after the faults")


def history(check, work, db, fake, conf):
    since = fake.requests()[-1]["seq"]
    p = h.start_daemon(conf, "--once", "coincap_history", stderr_path=os.path.join(work, "h1.log"))
    try:
        h.wait_for(lambda: db.count("candle_fill", "source = 'coincap'") >= 5
                   or p.poll() is not None, 120, what="some history windows stored")
    finally:
        killed = p.poll() is None
        if killed:
            p.send_signal(signal.SIGKILL)
        p.wait(30)
    check(killed, "history run 1 was killed midway (not finished before)")
    fills_1 = db.count("candle_fill", "source = 'coincap'")
    check(fills_1 < 12, f"history run 1 stopped partway ({fills_1} assets with a window)")
    mid = fake.requests()[-1]["seq"]

    rc, out, err = h.run_daemon(conf, "--once", "coincap_history", timeout=300)
    check.eq(rc, 0, "history run 2 exit code" if rc == 0 else f"history run 2 ({err[-500:]})")
    wins_1 = [r for r in fake.requests() if since < r["seq"] <= mid and "history" in r["path"]]
    wins_2 = [r for r in fake.requests() if r["seq"] > mid and "history" in r["path"]]
    check(len(wins_2) < 24, f"run 2 resumed: {len(wins_2)} windows (run 1 asked {len(wins_1)})")
    check(all(r["params"].get("interval") == "h1" for r in wins_2), "windows ask interval=h1")
    check.eq(db.count("candle_fill", "source = 'coincap' AND interval_s = 3600"), 12,
             "candle_fill: the 12 assets")

    now_ms = int(time.time() * 1000)
    top = fake_get(fake, "/assets?limit=12")["data"]
    for a in top:
        cid = expected_aliases()[a["id"]][0]
        rows = db.sql("SELECT UNIX_TIMESTAMP(source_updated_at), price FROM prices"
                      f" WHERE asset_id = '{cid}' AND source = 'coincap'"
                      " AND MOD(UNIX_TIMESTAMP(source_updated_at), 3600) = 0"
                      " ORDER BY source_updated_at")
        got = [(ms(t), float(v)) for t, v in rows]
        if not got:
            check(False, f"{a['id']}: history stored")
            continue
        first, last = got[0][0], got[-1][0]
        served = fake_get(fake, f"/assets/{a['id']}/history?interval=h1&start={first}"
                                f"&end={last}")["data"]
        want = [(p["time"], float(p["priceUsd"])) for p in served]
        missing = sorted(set(t for t, _ in want) - set(t for t, _ in got))[:3]
        extra = sorted(set(t for t, _ in got) - set(t for t, _ in want))[:3]
        check(got == want, f"{a['id']}: {len(got)} hours stored = the fake's {len(want)}, prices "
                           f"equal (missing {missing}, extra {extra})")
        check(first <= now_ms - 60 * 86400 * 1000 + 2 * H_MS and last >= now_ms - 3 * H_MS,
              f"{a['id']}: 60 days up to the last closed hour")
    dup = db.scalar("SELECT COUNT(*) - COUNT(DISTINCT asset_id, source_updated_at) FROM prices"
                    " WHERE source = 'coincap'")
    check.eq(int(dup), 0, "no price stored twice")


def refusals(check, work, db, fake):
    before = db.count("prices")
    v2 = os.path.join(work, "v2.conf")
    write_conf(v2, work, db, f"http://127.0.0.1:{fake.port}/v2")
    since = fake.requests()[-1]["seq"]
    rc, out, err = h.run_daemon(v2, "--once", "coincap_assets", timeout=120)
    check.eq(rc, 1, "base_url on /v2: exit code 1")
    check("We are deprecating this version of the CoinCap API" in out + err,
          "base_url on /v2: the error carries CoinCap's notice")
    reqs = [r for r in fake.requests() if r["seq"] > since]
    check.eq([(r["path"], r["status"]) for r in reqs], [("/v2/assets", 200)],
             "base_url on /v2: one request, not retried")
    check.eq(db.count("prices"), before, "base_url on /v2: nothing stored")

    bad = os.path.join(work, "bad.conf")
    write_conf(bad, work, db, fake.base_url, key="not-the-key")
    rc, out, err = h.run_daemon(bad, "--once", "coincap_assets", timeout=120)
    check.eq(rc, 1, "a wrong key: exit code 1")
    check("a valid API key is required" in out + err and "not-the-key" not in out + err,
          "a wrong key: the API's message, and the key is not printed")


def recorded(check, work, db):
    fx = os.path.join(os.environ["COINGEST_SOURCE_DIR"], "tests", "fixtures", "coincap")
    listed = json.load(open(os.path.join(fx, "v2_assets_limit1000_2020-02-10_tabs.json")))
    daily = json.load(open(os.path.join(
        fx, "v2_assets_bitcoin_history_d1_8rows-trimmed_2021-04-12_pyliteral.json")))
    rdir = os.path.join(work, "recorded")
    os.makedirs(rdir)
    fake = h.FakeAPI(rdir, "--require-key", KEY, script="coincap.py", prefix="/v3")
    try:
        conf = os.path.join(rdir, "c.conf")
        days = (int(time.time()) - 1609459200) // 86400 + 10
        write_conf(conf, rdir, db, fake.base_url,
                   history=f"ids = bitcoin\ninterval = d1\ndays = {days}")
        rc, out, err = h.run_daemon(conf, "--once", "coincap_assets,coincap_history", timeout=120)
        check.eq(rc, 0, "recorded: exit code" if rc == 0 else f"recorded ({err[-500:]})")
        btc = listed["data"][0]
        row = db.sql("SELECT price, market_cap, volume_24h, change_24h_pct, vwap_24h FROM prices"
                     " WHERE asset_id = 'bitcoin' AND source = 'coincap' AND source_updated_at ="
                     f" FROM_UNIXTIME({listed['timestamp'] / 1000:.3f})")
        check.eq([tuple(float(x) for x in r) for r in row],
                 [(float(btc["priceUsd"]), float(btc["marketCapUsd"]), float(btc["volumeUsd24Hr"]),
                   float(btc["changePercent24Hr"]), float(btc["vwap24Hr"]))],
                 "recorded: bitcoin's /assets row as recorded (2020-02-10)")
        got = db.sql("SELECT UNIX_TIMESTAMP(source_updated_at), price FROM prices WHERE asset_id ="
                     " 'bitcoin' AND source = 'coincap' AND source_updated_at >= '2021-01-01'"
                     " AND source_updated_at < '2021-02-01' ORDER BY 1")
        check.eq([(ms(t), float(v)) for t, v in got],
                 [(p["time"], float(p["priceUsd"])) for p in daily["data"]],
                 "recorded: the 8 recorded daily points of January 2021, price for price")
    finally:
        fake.stop()

    cdir = os.path.join(work, "credits")
    os.makedirs(cdir)
    fake = h.FakeAPI(cdir, "--require-key", KEY, "--credits", "1", script="coincap.py",
                     prefix="/v3")
    try:
        conf = os.path.join(cdir, "c.conf")
        write_conf(conf, cdir, db, fake.base_url, assets="top = 10")
        rc1, _, err1 = h.run_daemon(conf, "--once", "coincap_assets", timeout=120)
        rc2, out2, err2 = h.run_daemon(conf, "--once", "coincap_assets", timeout=120)
        check.eq((rc1, rc2), (0, 1), "credits: the first run succeeds, the second exits 1")
        check("API credit limit reached" in out2 + err2, "credits: the API's message is shown")
        check.eq([r["status"] for r in fake.requests()], [200, 403],
                 "credits: one refused request, not retried")
    finally:
        fake.stop()


if __name__ == "__main__":
    main()
