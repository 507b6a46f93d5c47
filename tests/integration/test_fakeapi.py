#!/usr/bin/env python3
"""Standalone checks of the fake API (tests/fakeapi/fakeapi.py), which other tests build on.

Runs the server's own --selftest, then starts it as the daemon's tests do (--port 0
--port-file, SIGTERM to stop) and checks that the synthetic universe is shaped exactly like
the recorded real responses: the same field names in the same order, and every JSON type the
real pages use for a field (int, float, null, object) also appears in the synthetic rows.
Exit 0 on success, 1 on failure, 77 when python3 cannot run the script.
"""
import calendar
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = os.environ.get("COINGEST_SOURCE_DIR", os.path.join(HERE, "..", ".."))
FAKEAPI = os.environ.get("FAKEAPI", os.path.join(SRC, "tests", "fakeapi", "fakeapi.py"))
FIXTURES = os.environ.get("COINGEST_FIXTURES", os.path.join(SRC, "tests", "fixtures"))
CG = os.path.join(FIXTURES, "coingecko")

failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what, file=sys.stderr)


TEMPDIRS = []


def start(*args):
    d = tempfile.mkdtemp(prefix="fakeapi-test-")
    TEMPDIRS.append(d)
    port_file = os.path.join(d, "port")
    p = subprocess.Popen([sys.executable, FAKEAPI, "--port", "0", "--port-file", port_file]
                         + list(args))
    deadline = time.monotonic() + 30
    while not os.path.exists(port_file):
        if p.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("fakeapi did not start")
        time.sleep(0.02)
    with open(port_file) as fh:
        port = int(fh.read())
    return p, "http://127.0.0.1:%d" % port


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        rc = p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = None
    check(rc == 0, "fakeapi exits 0 on SIGTERM (got %r)" % rc)


def get(url, data=None, method=None):
    req = urllib.request.Request(url, data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def types_of(rows):
    t = collections.defaultdict(set)
    for r in rows:
        for k, v in r.items():
            t[k].add("null" if v is None else type(v).__name__)
    return t


def same_shape(real, fake, what):
    check(list(real[0].keys()) == list(fake[0].keys()),
          "%s: field names and order (%s vs %s)" % (what, list(real[0]), list(fake[0])))
    rt, ft = types_of(real), types_of(fake)
    for k in rt:
        check(rt[k] <= ft.get(k, set()),
              "%s: %s types %s not all produced (%s)" % (what, k, rt[k], ft.get(k)))


def load(name):
    with open(os.path.join(CG, name), "rb") as fh:
        return json.load(fh)


def main():
    if subprocess.call([sys.executable, "-c", ""]) != 0:
        return 77
    rc = subprocess.call([sys.executable, FAKEAPI, "--selftest", "--fixtures", FIXTURES])
    check(rc == 0, "selftest")

    p, root = start("--universe", "17000")
    try:
        base = root + "/api/v3"
        st, body = get(base + "/coins/markets?vs_currency=usd&per_page=250&page=1"
                       "&precision=full&price_change_percentage=1h,24h,1y")
        check(st == 200, "markets 200")
        fake = json.loads(body)
        check(len(fake) == 250, "250 rows")
        real = load("coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json")
        # the synthetic page over many pages, for rarer shapes (nulls, zero caps)
        many = list(fake)
        for page in range(2, 69):
            st, body = get(base + "/coins/markets?vs_currency=usd&per_page=250&page=%d"
                           "&price_change_percentage=1h,24h,1y" % page)
            many.extend(json.loads(body))
        check(len(many) == 17000, "68 pages hold 17000 coins (%d)" % len(many))
        check(len({r["id"] for r in many}) == 17000, "ids unique across pages")
        same_shape(real, many, "markets")
        check(b"e-0" in get(base + "/coins/markets?vs_currency=usd&per_page=250&page=3")[1],
              "exponent notation on the wire")
        check(any(r["market_cap_rank"] is None for r in many), "null market_cap_rank")
        ids = {r["id"] for r in many}
        check({"coin 00003", "_", "-2"} <= ids, "tricky ids present")
        check(any(r["symbol"] == "" for r in many), "empty symbol")

        st, body = get(base + "/coins/list?include_platform=true")
        lst = json.loads(body)
        check(len(lst) == 17000, "coins/list has 17000")
        real_list = load("coins_list_include_platform_2024-01_indent2.json")
        same_shape(real_list, lst, "coins/list include_platform")
        check(list(json.loads(get(base + "/coins/list")[1])[0].keys()) ==
              ["id", "symbol", "name"], "coins/list without platforms")

        st, body = get(base + "/global")
        g = json.loads(body)["data"]
        rg = load("global_2025-04-07.json")["data"]
        check(list(g.keys()) == list(rg.keys()), "global keys")

        st, body = get(base + "/coins/categories/list")
        cats = json.loads(body)
        check(list(cats[0].keys()) == list(load("coins_categories_list_2021.json")[0].keys()),
              "categories/list keys")
        st, body = get(base + "/coins/categories")
        same_shape(load("coins_categories_2025-03-04_indent4.json"), json.loads(body),
                   "categories")
        st, body = get(base + "/coins/markets?vs_currency=usd&category=meme-token&per_page=250")
        check(st == 200 and all((int(r["id"][5:]) + 3) % 7 == 0 for r in json.loads(body)
                                if r["id"].startswith("coin-")), "category membership")

        q = ("/simple/price?ids=coin-00001,coin-00002&vs_currencies=usd,eur"
             "&include_market_cap=true&include_24hr_vol=true&include_24hr_change=true"
             "&include_last_updated_at=true")
        sp1 = json.loads(get(base + q)[1])
        check(set(sp1["coin-00001"]) == {"usd", "usd_market_cap", "usd_24h_vol",
                                         "usd_24h_change", "eur", "eur_market_cap",
                                         "eur_24h_vol", "eur_24h_change", "last_updated_at"},
              "simple/price keys")
        st, body = get(root + "/_control/tick", data=b"{}", method="POST")
        check(json.loads(body)["tick"] == 1, "tick advances")
        sp2 = json.loads(get(base + q)[1])
        check(sp2["coin-00001"]["usd"] != sp1["coin-00001"]["usd"] and
              sp2["coin-00001"]["last_updated_at"] == sp1["coin-00001"]["last_updated_at"] + 60,
              "a tick moves prices and last_updated")

        # rate limit: 3/min lets three through, then 429 with Retry-After and the real body
        get(root + "/_control/ratelimit", data=b'{"per_min":3}', method="POST")
        codes = [get(base + "/ping")[0] for _ in range(4)]
        check(codes == [200, 200, 200, 429], "rate limit codes %r" % codes)
        req = urllib.request.Request(base + "/ping")
        try:
            urllib.request.urlopen(req, timeout=10)
            check(False, "429 expected")
        except urllib.error.HTTPError as e:
            check(e.code == 429 and int(e.headers["Retry-After"]) >= 1, "Retry-After on 429")
            with open(os.path.join(CG, "error_429_rate_limit_2022-09.json"), "rb") as fh:
                check(e.read() == fh.read(), "the real 429 body")
        st, body = get(root + "/_control/log")
        log = json.loads(body)["requests"]
        check(all("t_mono" in e and "t_wall" in e for e in log), "log timestamps")
        check(not any(e["path"].startswith("/_control") for e in log), "control not logged")
    finally:
        stop(p)

    # Fixture mode: /simple/price for ids no recording answers comes from the 2025 markets
    # page, with market cap, volume, change and last_updated_at when asked (issue 18).
    page = load("coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json")
    p, root = start("--fixtures", FIXTURES)
    try:
        q = ("/api/v3/simple/price?ids=%s,not-a-coin&vs_currencies=usd"
             "&include_market_cap=true&include_24hr_vol=true&include_24hr_change=true"
             "&include_last_updated_at=true&precision=full" % ",".join(r["id"] for r in page))
        st, body = get(root + q)
        sp = json.loads(body)
        check(st == 200 and len(sp) == len(page), "fixture simple/price answers all %d page ids "
              "and drops unknown ones (%d)" % (len(page), len(sp)))
        bad = [r["id"] for r in page if sp.get(r["id"], {}) != {
            "usd": r["current_price"], "usd_market_cap": r["market_cap"],
            "usd_24h_vol": r["total_volume"], "usd_24h_change": r["price_change_percentage_24h"],
            "last_updated_at": calendar.timegm(time.strptime(r["last_updated"][:19],
                                                             "%Y-%m-%dT%H:%M:%S"))}]
        check(not bad, "fixture simple/price carries the page's price, market cap, volume, "
              "change and last_updated for every id (wrong: %s)" % bad[:5])
        st, body = get(root + "/api/v3/simple/price?ids=bitcoin,ethereum&vs_currencies=usd")
        check(json.loads(body) == {"bitcoin": {"usd": page[0]["current_price"]},
                                   "ethereum": {"usd": page[1]["current_price"]}},
              "without include_* only the price, as the real API answers")
    finally:
        stop(p)

    for d in TEMPDIRS:
        shutil.rmtree(d, ignore_errors=True)
    if failures:
        print("%d failure(s)" % len(failures), file=sys.stderr)
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
