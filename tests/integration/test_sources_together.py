#!/usr/bin/env python3
"""CoinGecko, Coinbase and CoinCap in one daemon, each under its own token bucket.
ctest-labels: slow

Three fakes: fakeapi.py (a 30-coin universe), coinbase.py (ten products C00001-USD..) and
coincap.py (30 assets coin00001.., whose symbols, names and token addresses are those of the
CoinGecko universe's coins, with the universe's awkward identities making some of them
unmappable). CoinGecko's `assets` and `market_caps` run first (`--once`), as docs/sources.md
says mapping needs. Then one daemon runs every job of the three sources at start, while
CoinCap's first answer is a 429 with Retry-After: 3. Checked:

- CoinCap waited out its 429, and meanwhile the other two APIs were served (the pause is
  CoinCap's bucket's, not the daemon's); each API got its own credentials (CoinCap's Bearer
  key, CoinGecko's demo key header) and /metrics counts requests per API;
- rows of all three sources land under canonical ids (assets.id) only: prices (coingecko,
  coincap), candles (coinbase); keys that map onto nothing are listed in unmapped_asset_keys,
  have no rows, and are counted in coingest_unmapped_keys_total;
- the README's query comparing the sources' latest prices for the top 10 assets, run as
  written, shows the three sources side by side for the assets all three map.
"""
import os
import re
import signal
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

KEY = "cc-together-key-42"
CG_KEY = "cg-together-key-42"
CLOCK_SLACK_S = 0.005  # tests/support/fakeapi_proc.h's FAKEAPI_CLOCK_SLACK_S
PAUSE_S = 3


def readme_query():
    text = open(os.path.join(os.environ["COINGEST_SOURCE_DIR"], "README.md")).read()
    m = re.search(r"^-- the sources side by side.*?;\n", text, re.S | re.M)
    return m.group(0) if m else None


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("cg-together-")
    db = h.Database("cg_sources_together")
    products = ",".join("C%05d-USD" % i for i in range(1, 11))
    # --epoch now: mapping ranks same-symbol assets by market caps of the last two days.
    cg = h.FakeAPI(work, "--universe", "30", "--epoch", "now", "--require-key", CG_KEY)
    cb = h.FakeAPI(work, "--products", products, script="coinbase.py", prefix="")
    cc = h.FakeAPI(work, "--assets", "30", "--require-key", KEY, script="coincap.py",
                   prefix="/v3")
    try:
        run(check, work, db, cg, cb, cc)
    finally:
        for f in (cg, cb, cc):
            f.stop()
        db.drop()
    check.done()


def run(check, work, db, cg, cb, cc):
    conf = os.path.join(work, "c.conf")
    port = h.free_port()
    extra = f"""
[source.coinbase]
enabled = true
base_url = {cb.base_url}
rate_limit = 2/s
burst = 1
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms
products = {",".join("C%05d-USD" % i for i in range(1, 11))}

[source.coincap]
enabled = true
base_url = {cc.base_url}
api_key = {KEY}
; burst 1 at 2/s: the 429 reaches the daemon before a second request may leave (a request
; already in flight when the 429 comes back would be no fault of the bucket's).
rate_limit = 2/s
burst = 1
max_retries = 3
backoff_base = 50ms
backoff_cap = 500ms

[job.coinbase_candles]
granularity = 3600
days = 2

[job.coincap_assets]
top = 30
limit = 30

[job.coincap_history]
top = 10
interval = h1
days = 2
"""
    h.write_config(conf, db, cg.base_url, os.path.join(work, "spool"), extra=extra)
    text = open(conf).read().replace("plan = public\n", f"plan = demo\napi_key = {CG_KEY}\n")
    text = text.replace("metrics_listen =\n", f"metrics_listen = 127.0.0.1:{port}\n")
    open(conf, "w").write(text)
    rc, out, err = h.run_daemon(conf, "--migrate", timeout=120)
    check.eq(rc, 0, "--migrate" if rc == 0 else f"--migrate ({err[-300:]})")
    rc, out, err = h.run_daemon(conf, "--once", "assets,market_caps", timeout=120)
    check.eq(rc, 0, "CoinGecko's universe first" if rc == 0 else f"--once assets ({err[-300:]})")

    # One daemon, every job at start; CoinCap's first answer asks for a 3-second pause.
    cc.control("POST", "faults", {"match": "/assets", "status": 429, "retry_after": PAUSE_S})
    marks = {f: (f.requests() or [{"seq": 0}])[-1]["seq"] for f in (cg, cb, cc)}
    p = h.start_daemon(conf, stderr_path=os.path.join(work, "daemon.log"))
    jobs = ("prices", "market_caps", "coinbase_candles", "coincap_assets", "coincap_history")
    try:
        h.wait_for(lambda: p.poll() is not None or all(
            db.count("job_runs", f"job = '{j}' AND status = 'ok'") >= (2 if j == "market_caps"
                                                                       else 1) for j in jobs),
            180, what="a finished run of every job")
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
        metrics = metrics.decode()
    finally:
        running = p.poll() is None
        if running:
            p.send_signal(signal.SIGTERM)
        rc = p.wait(60)
    check(running, "the daemon ran until stopped")
    check.eq(rc, 0, "the daemon stopped cleanly on SIGTERM")

    reqs = {f: [r for r in f.requests() if r["seq"] > marks[f]] for f in (cg, cb, cc)}
    r429 = [r for r in reqs[cc] if r["status"] == 429]
    check.eq(len(r429), 1, "CoinCap answered one 429")
    if r429:
        t0 = r429[0]["t_done_mono"]
        nxt = [r for r in reqs[cc] if r["t_mono"] > t0]
        check(nxt and nxt[0]["t_mono"] >= t0 + PAUSE_S - CLOCK_SLACK_S,
              "CoinCap's next request came after its Retry-After: %s" % [
                  (r["path"], r["status"], round(r["t_mono"] - t0, 3)) for r in reqs[cc][:4]])
        meanwhile = [r for f in (cg, cb) for r in reqs[f]
                     if t0 < r["t_mono"] < t0 + PAUSE_S - CLOCK_SLACK_S]
        check(len(meanwhile) > 0, f"the other APIs were served during CoinCap's pause "
                                  f"({len(meanwhile)} requests)")
    check(reqs[cc] and all(r["headers"].get("authorization") == "Bearer " + KEY
                           for r in reqs[cc]), "CoinCap got its Bearer key on every request")
    check(reqs[cg] and all(r["headers"].get("x-cg-demo-api-key") == CG_KEY for r in reqs[cg])
          and not any("authorization" in r["headers"] for r in reqs[cg]),
          "CoinGecko got its own key header, not CoinCap's")
    check(reqs[cb] and not any("authorization" in r["headers"] or "x-cg-demo-api-key"
                               in r["headers"] for r in reqs[cb]),
          "Coinbase (keyless) got no key")
    for api in ("coingecko", "coinbase", "coincap"):
        m = re.search(r'^coingest_http_requests_total\{[^}]*api="%s"[^}]*\} (\S+)' % api,
                      metrics, re.M)
        check(m and float(m.group(1)) > 0, f"/metrics counts {api}'s requests")

    # Rows under canonical ids only.
    for table, src in (("prices", "coingecko"), ("prices", "coincap"), ("candles", "coinbase")):
        n = db.count(table, f"source = '{src}'")
        stray = db.count(table, f"source = '{src}' AND asset_id NOT IN (SELECT id FROM assets)")
        check(n > 0 and stray == 0, f"{table} of {src}: {n} rows, all under canonical ids")
    unmapped = db.sql("SELECT source, source_key FROM unmapped_asset_keys")
    check(any(s == "coincap" for s, _ in unmapped) and any(s == "coinbase" for s, _ in unmapped),
          f"unmapped keys of both sources are listed ({len(unmapped)})")
    leaked = db.count("candles", "product IN (SELECT CONCAT(source_key, '-USD') FROM"
                                 " unmapped_asset_keys WHERE source = 'coinbase')")
    check.eq(leaked, 0, "no candles of unmapped Coinbase keys")
    m = re.search(r"^coingest_unmapped_keys_total (\S+)", metrics, re.M)
    check(m and float(m.group(1)) >= len(unmapped),
          f"coingest_unmapped_keys_total counts them ({m.group(1) if m else None})")

    # The README's comparison, as written.
    q = readme_query()
    check(q is not None, "the README has the query comparing the sources' latest prices")
    rows = db.sql(q) if q else []
    by_asset = {}
    for asset, source, price, at, pct in rows:
        by_asset.setdefault(asset, set()).add(source)
    top10 = [r[0] for r in db.sql("SELECT id FROM assets WHERE market_cap_rank IS NOT NULL"
                                  " ORDER BY market_cap_rank LIMIT 10")]
    check(set(by_asset) <= set(top10), "the comparison lists top-10 assets only")
    three = [a for a, s in by_asset.items() if s == {"coingecko", "coinbase", "coincap"}]
    check(len(three) >= 3, f"the three sources side by side for {three}")
    mapped_cb = {r[0] for r in db.sql("SELECT asset_id FROM asset_aliases WHERE source ="
                                      " 'coinbase' AND asset_id IS NOT NULL")}
    mapped_cc = {r[0] for r in db.sql("SELECT asset_id FROM asset_aliases WHERE source ="
                                      " 'coincap' AND asset_id IS NOT NULL")}
    check.eq(sorted(three), sorted(set(top10) & mapped_cb & mapped_cc),
             "exactly the top-10 assets both other sources map have all three")


if __name__ == "__main__":
    main()
