"""Recorded real responses land in MariaDB with the same values.

The fake API serves recorded CoinGecko bodies (tests/fixtures/coingecko); coingestd runs
`--once assets,market_caps`. The expected values come from an independent route: Python's own
JSON parser reading the same fixture files, compared with what a SQL query reads back.

- coins_markets_usd_p1_250_precision-full_*.json: every field of every one of the 250 rows
  equals the database's value (doubles bit-for-bit, times to the millisecond, roi as JSON),
  and the count of NULLs per column matches the count of nulls/missing keys in the file;
- coins_list_2025-07_pyindent.json (17,589 coins, \\u escapes with surrogate pairs): every
  id, symbol and name is stored byte-exact (compared as hex);
- global_2025-04-07.json: one global_snapshots row with the recorded totals.
"""
import datetime
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

MARKETS = "coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json"
LIST_2025 = "coins_list_2025-07_pyindent.json"

# market_snapshots column <- JSON key (None: computed)
COLUMNS = [
    ("market_cap_rank", "market_cap_rank"), ("price", "current_price"),
    ("market_cap", "market_cap"), ("fully_diluted_valuation", "fully_diluted_valuation"),
    ("total_volume", "total_volume"), ("high_24h", "high_24h"), ("low_24h", "low_24h"),
    ("price_change_24h", "price_change_24h"),
    ("price_change_pct_24h", "price_change_percentage_24h"),
    ("market_cap_change_24h", "market_cap_change_24h"),
    ("market_cap_change_pct_24h", "market_cap_change_percentage_24h"),
    ("circulating_supply", "circulating_supply"), ("total_supply", "total_supply"),
    ("max_supply", "max_supply"), ("ath", "ath"), ("ath_change_pct", "ath_change_percentage"),
    ("atl", "atl"), ("atl_change_pct", "atl_change_percentage"),
]
TIMES = [("snapshot_at", "last_updated"), ("ath_date", "ath_date"), ("atl_date", "atl_date")]


def iso_ms(s):
    """'2025-02-09T17:44:07.123Z' -> 'YYYY-MM-DD HH:MM:SS.mmm' as DATETIME(3) prints it."""
    d = datetime.datetime.strptime(s[:19], "%Y-%m-%dT%H:%M:%S")
    frac = s[19:].rstrip("Z")
    ms = int((frac[1:] + "000")[:3]) if frac.startswith(".") else 0
    return d.strftime("%Y-%m-%d %H:%M:%S") + f".{ms:03d}"


def main():
    h.need_env()
    check = h.Check()
    work = h.tempdir("coingest-fixtures.")
    src = os.path.join(os.environ["COINGEST_FIXTURES"], "coingecko")
    # The fake API's fixture mode serves the 2024 include_platform list for /coins/list;
    # a fixture dir of our own serves the 17,589-coin 2025 list in its place.
    fx = os.path.join(work, "fixtures", "coingecko")
    os.makedirs(fx)
    for name in os.listdir(src):
        target = os.path.join(src, LIST_2025 if name.startswith("coins_list_include_platform") else name)
        os.symlink(target, os.path.join(fx, name))
    api = h.FakeAPI(work, "--fixtures", os.path.join(work, "fixtures"))
    db = h.Database(f"fixtures_{os.getpid()}")
    try:
        conf = os.path.join(work, "fx.conf")
        h.write_config(conf, db, api.base_url, os.path.join(work, "spool"))
        rc, out, err = h.run_daemon(conf, "--once", "assets,market_caps")
        print(out)
        if rc:
            print(err[-3000:])
        check.eq(rc, 0, "--once assets,market_caps on recorded responses exits 0")

        # --- the 250-row markets page, field by field -------------------------------------
        rows = json.load(open(os.path.join(src, MARKETS)))
        check.eq(db.count("market_snapshots"), len(rows), "one snapshot per recorded row")
        cols = ", ".join(c for c, _ in COLUMNS)
        tcols = ", ".join(c for c, _ in TIMES)
        # Doubles as their IEEE bits (HEX of the 8-byte value is not available in SQL, so
        # print 17 significant digits, which round-trips a double exactly).
        sel = ", ".join(f"IF({c} IS NULL, 'NULL', FORMAT({c}, 0))" if c == "market_cap_rank"
                        else f"IF({c} IS NULL, 'NULL', CAST({c} AS CHAR))" for c, _ in COLUMNS)
        got = {}
        for r in db.sql(f"SELECT HEX(asset_id), {sel}, {tcols}, roi FROM market_snapshots"):
            got[bytes.fromhex(r[0]).decode()] = r[1:]
        mismatches = 0
        nulls_db = [0] * len(COLUMNS)
        nulls_json = [0] * len(COLUMNS)
        for row in rows:
            g = got.get(row["id"])
            if g is None:
                mismatches += 1
                print("missing row", row["id"])
                continue
            for i, (col, key) in enumerate(COLUMNS):
                want = row.get(key)
                have = g[i]
                if want is None:
                    nulls_json[i] += 1
                if have == "NULL" or have is None:
                    nulls_db[i] += 1
                    if want is not None:
                        mismatches += 1
                        print("NULL where the file has", row["id"], col, want)
                    continue
                if want is None:
                    mismatches += 1
                    print("value where the file has null", row["id"], col, have)
                    continue
                if col == "market_cap_rank":
                    ok = int(have.replace(",", "")) == int(want)
                else:
                    ok = struct.pack("<d", float(have)) == struct.pack("<d", float(want))
                if not ok:
                    mismatches += 1
                    print("value differs", row["id"], col, "file", repr(want), "db", have)
            for j, (col, key) in enumerate(TIMES):
                want = row.get(key)
                have = g[len(COLUMNS) + j]
                if want and have != iso_ms(want):
                    mismatches += 1
                    print("time differs", row["id"], col, want, have)
            roi = g[len(COLUMNS) + len(TIMES)]
            if (row.get("roi") is None) != (roi is None):
                mismatches += 1
                print("roi differs", row["id"], row.get("roi"), roi)
            elif roi is not None and json.loads(roi) != row["roi"]:
                mismatches += 1
                print("roi differs", row["id"], row["roi"], roi)
        check.eq(mismatches, 0, "every field of the 250 recorded rows equals the stored value")
        check.eq(nulls_db, nulls_json, "NULLs per column match nulls in the file")
        mx = COLUMNS.index(("max_supply", "max_supply"))
        check.eq(nulls_db[mx], 117, "max_supply is NULL for the 117 coins without one")
        check.eq(db.count("market_snapshots", "roi IS NULL"), 217, "roi is NULL 217 times")
        check.eq(db.count("market_snapshots", "source = 'coingecko' AND vs_currency = 'usd'"),
                 250, "source and vs_currency set")

        # --- the 17,589-coin list, byte-exact ---------------------------------------------
        coins = json.load(open(os.path.join(src, LIST_2025)))
        want = {}
        for c in coins:
            want[c["id"]] = (c["symbol"], c["name"])
        have = {}
        for r in db.sql("SELECT HEX(id), HEX(symbol), HEX(name) FROM assets"):
            have[bytes.fromhex(r[0]).decode()] = (bytes.fromhex(r[1] or "").decode(),
                                                 bytes.fromhex(r[2] or "").decode())
        check.eq(len(coins), 17589, "the 2025 list holds 17,589 coins")
        missing = [k for k in want if k not in have]
        check.eq(missing[:5], [], "every listed coin is in assets")
        diff = [k for k in want if k in have and have[k] != want[k]]
        check.eq(diff[:5], [], "symbols and names are stored byte-exact (\\u escapes decoded)")
        emoji = [k for k, (s, n) in want.items() if any(ord(ch) > 0xFFFF for ch in s + n)]
        check(len(emoji) > 0 and all(have.get(k) == want[k] for k in emoji),
              f"{len(emoji)} coins with 4-byte UTF-8 (emoji) round-trip")
        check("1move token" in have, "an id with a space is kept")

        # --- /global ------------------------------------------------------------------------
        g = json.load(open(os.path.join(src, "global_2025-04-07.json")))["data"]
        r = db.sql("SELECT active_cryptocurrencies, markets, CAST(total_market_cap_usd AS CHAR),"
                   " CAST(btc_dominance AS CHAR), snapshot_at FROM global_snapshots")
        check.eq(len(r), 1, "one global snapshot")
        if r:
            check.eq(int(r[0][0]), g["active_cryptocurrencies"], "active_cryptocurrencies")
            check.eq(int(r[0][1]), g["markets"], "markets")
            check.eq(float(r[0][2]), float(g["total_market_cap"]["usd"]), "total_market_cap_usd")
            check.eq(float(r[0][3]), float(g["market_cap_percentage"]["btc"]), "btc_dominance")
            t = datetime.datetime.fromtimestamp(g["updated_at"], datetime.timezone.utc)
            check.eq(r[0][4][:19], t.strftime("%Y-%m-%d %H:%M:%S"), "snapshot_at = updated_at")
    finally:
        api.stop()
        db.drop()
    check.done()


if __name__ == "__main__":
    main()
