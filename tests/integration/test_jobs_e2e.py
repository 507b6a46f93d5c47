# ctest-labels: tsan
"""The three CoinGecko jobs end to end: the real coingestd against the fake API's synthetic
universe and the private MariaDB.

- `--once assets,prices,market_caps` gives exactly the expected row counts;
- running it again on the same market adds no row (idempotent upserts);
- after the market moves one tick, one new prices and market_snapshots row per asset;
- a universe with `top = 100`, and one with `categories`, fetch only what they need;
- every run leaves a job_runs row.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

N = int(os.environ.get("COINGEST_E2E_UNIVERSE", "3000"))


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-e2e.")
    api = h.FakeAPI(work, "--universe", str(N))
    db = h.Database(f"e2e_{os.getpid()}")
    try:
        conf = os.path.join(work, "e2e.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"))
        rc, out, err = h.run_daemon(conf, "--once", "assets,prices,market_caps")
        print(out)
        if rc != 0:
            print(err[-4000:])
        check.eq(rc, 0, "--once all three jobs exits 0")
        check(out.count("status=ok") == 3, "three summary lines with status=ok")
        check.eq(db.count("assets"), N, "assets: one row per coin of /coins/list")
        check.eq(db.count("prices"), N, "prices: one row per coin")
        check.eq(db.count("market_snapshots"), N, "market_snapshots: one row per coin")
        check.eq(db.count("global_snapshots"), 1, "global_snapshots: one row")
        check(db.count("categories") > 0, "categories filled from /coins/categories/list")
        check.eq(db.count("job_runs", "status='ok'"), 3, "three ok job_runs rows")
        ranked = db.count("market_snapshots", "market_cap_rank IS NOT NULL")
        check(ranked > N * 0.9, f"most snapshots carry a rank ({ranked})")
        check.eq(db.count("assets", "market_cap_rank IS NOT NULL"), ranked,
                 "market_caps set the rank of every ranked asset")
        check.eq(db.count("assets", "delisted_at IS NOT NULL"), 0, "nothing delisted")

        # Same market again: nothing new.
        rc, out, _ = h.run_daemon(conf, "--once", "assets,prices,market_caps")
        check.eq(rc, 0, "second run exits 0")
        check.eq(db.count("prices"), N, "second run on the same market adds no prices row")
        check.eq(db.count("market_snapshots"), N, "... and no market_snapshots row")
        check.eq(db.count("assets"), N, "... and no assets row")

        # The market moves: one new row per asset.
        api.control("POST", "tick", {})
        rc, out, _ = h.run_daemon(conf, "--once", "prices,market_caps")
        check.eq(rc, 0, "run after a tick exits 0")
        check.eq(db.count("prices"), 2 * N, "after a tick: one new prices row per asset")
        check.eq(db.count("market_snapshots"), 2 * N, "after a tick: one new snapshot per asset")
        check.eq(db.count("job_runs"), 8, "every run left a job_runs row")

        # top = 100: one page of 100 coins, nothing more.
        db2 = h.Database(f"e2e_top_{os.getpid()}")
        try:
            api.control("POST", "reset", {})
            conf2 = os.path.join(work, "top.conf")
            h.write_config(conf2, db2, api.base_url, os.path.join(work, "spool2"),
                           universe="ids = all\ntop = 100")
            rc, out, _ = h.run_daemon(conf2, "--once", "market_caps,prices")
            check.eq(rc, 0, "top=100 run exits 0")
            check.eq(db2.count("market_snapshots"), 100, "top=100: 100 snapshots")
            check.eq(db2.count("prices"), 100, "top=100: 100 prices")
            paths = [r.get("path", "") for r in api.requests()]
            markets = [p for p in paths if p.endswith("/coins/markets")]
            check(len(markets) <= 3, f"top=100 fetched few markets pages ({len(markets)})")
            check(not any(p.endswith("/coins/list") for p in paths),
                  "top=100 never fetched the whole coin list")
        finally:
            db2.drop()

        # top = 300: two pages, the second trimmed; exactly the 300 largest.
        db4 = h.Database(f"e2e_top300_{os.getpid()}")
        try:
            conf4 = os.path.join(work, "top300.conf")
            h.write_config(conf4, db4, api.base_url, os.path.join(work, "spool4"),
                           universe="ids = all\ntop = 300")
            rc, out, _ = h.run_daemon(conf4, "--once", "market_caps,prices")
            check.eq(rc, 0, "top=300 run exits 0")
            want = set(largest(api, 300))
            got = {r[0] for r in db4.sql("SELECT asset_id FROM market_snapshots")}
            check.eq(len(got), 300, "top=300: 300 snapshots")
            check(got == want, "top=300: exactly the 300 largest by market cap")
            got_p = {r[0] for r in db4.sql("SELECT asset_id FROM prices")}
            check(got_p == want, "top=300: prices for exactly those 300")
        finally:
            db4.drop()

        # An explicit list, with an id holding a space, and max_url_bytes far above the
        # default: only those coins, whatever the chunking.
        db5 = h.Database(f"e2e_ids_{os.getpid()}")
        try:
            ids = largest(api, 20)
            conf5 = os.path.join(work, "ids.conf")
            h.write_config(conf5, db5, api.base_url, os.path.join(work, "spool5"),
                           universe="ids = " + ", ".join(ids) + "\nvs_currencies = usd, eur")
            text = open(conf5).read().replace("[source.coingecko]\n",
                                              "[source.coingecko]\nmax_url_bytes = 100000\n")
            open(conf5, "w").write(text)
            rc, out, _ = h.run_daemon(conf5, "--once", "prices,market_caps")
            check.eq(rc, 0, "explicit ids run exits 0")
            check(any(" " in i for i in ids), "the list holds an id with a space")
            got = {r[0] for r in db5.sql("SELECT asset_id FROM prices")}
            check(got == set(ids), "prices for exactly the listed ids")
            check.eq(db5.count("prices"), 40, "two currencies each")
            check.eq(db5.count("market_snapshots"), 40, "market snapshots by id, two currencies")
        finally:
            db5.drop()

        # categories: only their members.
        db3 = h.Database(f"e2e_cat_{os.getpid()}")
        try:
            api.control("POST", "reset", {})
            cats = api_categories(api)
            conf3 = os.path.join(work, "cat.conf")
            h.write_config(conf3, db3, api.base_url, os.path.join(work, "spool3"),
                           universe=f"ids = all\ncategories = {cats[0]}")
            rc, out, _ = h.run_daemon(conf3, "--once", "assets,prices")
            check.eq(rc, 0, "categories run exits 0")
            members = db3.count("asset_categories", f"category_id = '{cats[0]}'")
            check(0 < members < N, f"asset_categories holds the category's members ({members})")
            check.eq(db3.count("prices"), members, "prices only for the category's members")
        finally:
            db3.drop()
    finally:
        api.stop()
        db.drop()
    check.done()


def largest(api, n):
    """The n largest coins by market cap, as the fake API pages them."""
    import json
    import urllib.request
    out = []
    page = 1
    while len(out) < n:
        url = (api.base_url + "/coins/markets?vs_currency=usd&order=market_cap_desc"
               f"&per_page=250&page={page}")
        with urllib.request.urlopen(url, timeout=30) as r:
            rows = json.loads(r.read())
        if not rows:
            break
        out += [c["id"] for c in rows]
        page += 1
    return out[:n]


def api_categories(api):
    import json
    import urllib.request
    with urllib.request.urlopen(api.base_url + "/coins/categories/list", timeout=10) as r:
        cats = json.loads(r.read())
    return [c["category_id"] for c in cats]


if __name__ == "__main__":
    main()
