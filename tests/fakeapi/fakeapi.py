#!/usr/bin/env python3
"""fakeapi: a stand-in for the CoinGecko v3 API that tests start on a loopback port.

Standard library only (no pip). One ThreadingHTTPServer speaking HTTP/1.1 with keep-alive
and Content-Length, serving:

  * recorded real responses from tests/fixtures/coingecko (the default "fixture" mode), or
  * a deterministic synthetic universe of N coins (--universe N) shaped exactly like the
    real pages, with a market "tick" that a control call advances,

under the /api/v3 prefix (base_url = http://127.0.0.1:PORT/api/v3). It enforces an optional
server-side rate limit (sliding window, 429 + Retry-After + the real 429 body), injects
faults on request (status, Retry-After, delay, truncated body, HTML body, connection reset,
oversized body) and keeps a request log with monotonic and wall timestamps. Tests drive it
through a small JSON control API under /_control/ whose requests are neither logged nor
rate limited. tests/fakeapi/README.md documents every route, option and control call.
"""

import argparse
import bisect
import calendar
import email.utils
import gzip
import json
import math
import os
import random
import signal
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import cg_history  # market_chart/range and ohlc of the synthetic universe

PREFIX = "/api/v3"
CONTROL = "/_control/"

# 2025-02-09T17:00:00Z: the synthetic market's time at tick 0 (the fixture pages' day).
EPOCH_DEFAULT = 1739120400
TICK_SECONDS = 60

# vs currencies of the synthetic universe: code -> units per USD.
CURRENCIES = [
    ("usd", 1.0), ("eur", 0.9216), ("gbp", 0.7921), ("jpy", 151.62), ("aud", 1.5912),
    ("cad", 1.4316), ("chf", 0.9104), ("cny", 7.2881), ("inr", 87.51), ("krw", 1452.3),
    ("myr", 4.4615), ("idr", 16329.5), ("btc", 1.0 / 96114.08481738689),
    ("eth", 1.0 / 2631.65), ("bnb", 1.0 / 585.4),
]
RATES = dict(CURRENCIES)

PCP_KEYS = ("1h", "24h", "7d", "14d", "30d", "200d", "1y")

# Synthetic categories: (id, name, modulus). Coin i belongs to category j when
# (i + j) % modulus == 0; a modulus of 0 means no members.
CATEGORIES = [
    ("layer-1", "Layer 1 (L1)", 2),
    ("smart-contract-platform", "Smart Contract Platform", 3),
    ("decentralized-finance-defi", "Decentralized Finance (DeFi)", 5),
    ("meme-token", "Meme", 7),
    ("stablecoins", "Stablecoins", 11),
    ("gaming", "Gaming (GameFi)", 13),
    ("artificial-intelligence", "Artificial Intelligence (AI)", 17),
    ("real-world-assets-rwa", "Real World Assets (RWA)", 19),
    ("exchange-based-tokens", "Exchange-based Tokens", 23),
    ("ethereum-ecosystem", "Ethereum Ecosystem", 29),
    ("solana-ecosystem", "Solana Ecosystem \U0001F680", 31),
    ("empty-category", "Empty Category", 0),
]

# Coins whose identity is deliberately awkward, as on the real /coins/list. They sit among
# the largest market caps so they appear on the first markets page.
TRICKY = {
    3: {"id": "coin 00003", "name": "Coin With A Space"},           # id with a space
    5: {"symbol": "\U0001F921", "name": "\U0001F921 Clown Coin"},   # 4-byte UTF-8
    6: {"symbol": "\u5e01\u5b89", "name": "\u5e01\u5b89\u4eba\u751f"},  # CJK
    8: {"symbol": ""},                                              # empty symbol
    9: {"symbol": "\"\u3000\"", "name": "Quote\u3000Coin"},         # quotes and U+3000
    10: {"name": "\u200b\u200bStable"},                             # zero-width spaces
    12: {"id": "_", "symbol": "_", "name": "_"},
    14: {"id": "-2", "symbol": "-2", "name": "-2"},
}

ERR_429_BODY = (b'{"status":{"error_code":429,"error_message":"You\'ve exceeded the Rate Limit. '
                b'Please visit https://www.coingecko.com/en/api/pricing to subscribe to our API '
                b'plans for higher rate limits."}}')
NOT_FOUND_BODY = b'{"error":"Incorrect path. Please check https://www.coingecko.com/api/"}'
# What the CDN in front of the API answers to a request line it finds too long.
ERR_414_BODY = (b"<html>\r\n<head><title>414 Request-URI Too Large</title></head>\r\n<body>\r\n"
                b"<center><h1>414 Request-URI Too Large</h1></center>\r\n</body>\r\n</html>\r\n")
HTML_1015 = b"error code: 1015"
HTML_DENIED = (b"<!DOCTYPE html>\n<html><head><title>Access denied | api.coingecko.com used "
               b"Cloudflare to restrict access</title></head><body><h1>Access denied</h1>"
               b"<p>Error code 1020</p></body></html>\n")


def dumps(obj):
    """Compact JSON with raw UTF-8, as the real API serves it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def iso(ts):
    """Seconds since the epoch as 2025-02-09T17:44:04.143Z."""
    ms = int(round(ts * 1000))
    t = time.gmtime(ms // 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + ".%03dZ" % (ms % 1000)


def iso_seconds(text):
    """Unix seconds of an ISO time as the API writes it ("2025-02-09T17:44:04.143Z")."""
    return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))


def unit(i, t, k):
    """A deterministic pseudo-random number in [-1, 1) from coin, tick and channel (the same
    hash as cg_history's, scaled: h / 2**31 - 1, exactly)."""
    return 2.0 * cg_history.hash01(i, t, k) - 1.0


class Universe:
    """N synthetic coins. Static attributes are drawn once per coin from a seeded RNG; prices,
    market caps and last_updated move with the tick, so every tick yields new rows."""

    def __init__(self, n, epoch):
        self.n = n
        self.epoch = epoch
        self.coins = [self._make(i) for i in range(1, n + 1)]
        self.by_id = {c["id"]: c for c in self.coins}
        self.lock = threading.Lock()
        self.cache = {}  # tick -> dict of per-tick state
        self.list_cache = {}

    def _make(self, i):
        r = random.Random(i * 7919 + 17)
        c = {"i": i, "id": "coin-%05d" % i, "symbol": "c%05d" % i, "name": "Coin %05d" % i}
        if i % 40 == 4:
            c["symbol"] = "usdt"  # duplicate symbols are the rule on the real list
        elif i % 40 == 24:
            c["symbol"] = "weth"
        c.update(TRICKY.get(i, {}))
        c["image"] = ("https://coin-images.coingecko.com/coins/images/%d/large/coin-%05d.png"
                      "?1696501400" % (i, i))
        price = 10 ** r.uniform(-7.0, 4.7)
        cap = 2e12 / (i ** 1.25) * r.uniform(0.7, 1.3)
        c["zero_cap"] = (i % 997 == 0)
        c["price0"] = price
        circ = cap / price
        c["circ"] = float(round(circ, 1)) if circ > 1 else circ
        total = circ * r.uniform(1.0, 1.5)
        if i % 101 == 0:
            total = 4.2e17  # huge supplies exist (baby-doge-coin)
        c["total"] = float(round(total, 1)) if total > 1 else total
        c["max"] = None if i % 2 == 0 else c["total"] * r.uniform(1.0, 2.0)
        c["fdv_null"] = (i % 4 == 2)
        c["ath_f"] = r.uniform(1.05, 30.0)
        c["atl_f"] = r.uniform(0.001, 0.9)
        c["ath_date"] = iso(days_before_epoch(r, 1, 900))
        c["atl_date"] = iso(days_before_epoch(r, 900, 4000))
        c["vol_f"] = r.uniform(0.001, 0.3)
        c["roi"] = None
        if i % 9 == 0:
            times = r.uniform(-0.9, 80.0)
            c["roi"] = {"times": times, "currency": r.choice(["usd", "btc", "eth"]),
                        "percentage": times * 100.0}
        c["nulls"] = (i % 307 == 5)  # a row with null 24h fields, as on the real page
        c["platforms"] = self._platforms(i)
        return c

    @staticmethod
    def _platforms(i):
        addr = "0x%040x" % (i * 0x9E3779B97F4A7C15 % (1 << 160))
        if i % 3 == 0:
            return {}
        if i % 50 == 7:
            return {"Bitcichain": ""}  # empty values and non-lower-case keys exist
        if i % 3 == 1:
            return {"ethereum": addr}
        return {"ethereum": addr, "polygon-pos": "0x%040x" % (i * 31337 % (1 << 160))}

    def state(self, tick):
        """Per-tick prices, caps and orderings (cached)."""
        with self.lock:
            st = self.cache.get(tick)
            if st is not None:
                return st
            prices, prices24, caps, vols = [], [], [], []
            for c in self.coins:
                i = c["i"]
                p = c["price0"] * (1.0 + 0.03 * unit(i, tick, 1))
                p24 = c["price0"] * (1.0 + 0.03 * unit(i, tick, 2))
                prices.append(p)
                prices24.append(p24)
                caps.append(0 if c["zero_cap"] else int(p * c["circ"]))
                vols.append(p * c["circ"] * c["vol_f"] if not c["zero_cap"] else p * 1000.0)
            idx = range(len(self.coins))
            by_cap = sorted(idx, key=lambda k: (-caps[k], self.coins[k]["id"]))
            rank = {}
            for pos, k in enumerate(by_cap):
                if caps[k] > 0:
                    rank[k] = pos + 1
            st = {
                "prices": prices, "prices24": prices24, "caps": caps, "vols": vols,
                "rank": rank,
                "order": {
                    "market_cap_desc": by_cap,
                    "market_cap_asc": list(reversed(by_cap)),
                    "volume_desc": sorted(idx, key=lambda k: (-vols[k], self.coins[k]["id"])),
                    "volume_asc": sorted(idx, key=lambda k: (vols[k], self.coins[k]["id"])),
                    "id_asc": sorted(idx, key=lambda k: self.coins[k]["id"]),
                    "id_desc": sorted(idx, key=lambda k: self.coins[k]["id"], reverse=True),
                },
            }
            self.cache = {tick: st}  # only the current tick is worth keeping
            return st

    def last_updated(self, c, tick):
        return self.epoch + tick * TICK_SECONDS + (c["i"] % 50) + (c["i"] % 997) / 1000.0

    def market_row(self, k, tick, vs, pcp, precision):
        c = self.coins[k]
        st = self.state(tick)
        i = c["i"]
        rate = RATES[vs]
        rnd = (lambda x: x) if precision is None else (lambda x: round(x, precision))
        p = st["prices"][k] * rate
        p24 = st["prices24"][k] * rate
        cap = int(st["caps"][k] * rate)
        cap24 = int(c["price0"] * rate * c["circ"]) if not c["zero_cap"] else 0
        fdv = None
        if not c["fdv_null"] and not c["zero_cap"]:
            fdv = int(p * (c["max"] if c["max"] is not None else c["total"]))
        vol = st["vols"][k] * rate
        vol = int(vol) if i % 2 else vol  # int in one row, float in the next, like the API
        ath = c["price0"] * c["ath_f"] * rate
        atl = c["price0"] * c["atl_f"] * rate
        atl_pct = (p - atl) / atl * 100.0
        if i == 31:
            atl, atl_pct = 0.0, 1.9737441501355628e+37  # bone-shibaswap, 2022
        high = max(p, p24) * 1.01
        low = min(p, p24) * 0.99
        row = {
            "id": c["id"], "symbol": c["symbol"], "name": c["name"], "image": c["image"],
            "current_price": rnd(p),
            "market_cap": cap,
            "market_cap_rank": st["rank"].get(k),
            "fully_diluted_valuation": fdv,
            "total_volume": vol,
            "high_24h": int(high) if (i % 5 == 0 and high > 100) else rnd(high),
            "low_24h": int(low) if (i % 5 == 0 and low > 100) else rnd(low),
            "price_change_24h": rnd(p - p24),
            "price_change_percentage_24h": round((p - p24) / p24 * 100.0, 5),
            "market_cap_change_24h": (cap - cap24) if i % 3 == 0 else float(cap - cap24) + 0.5,
            "market_cap_change_percentage_24h":
                round((cap - cap24) / cap24 * 100.0, 5) if cap24 else 0.0,
            "circulating_supply": c["circ"],
            "total_supply": c["total"],
            "max_supply": c["max"],
            "ath": int(ath) if (i % 7 == 0 and ath > 100) else rnd(ath),
            "ath_change_percentage": round((p - ath) / ath * 100.0, 5),
            "ath_date": c["ath_date"],
            "atl": atl if i == 31 else (int(atl) if (i % 7 == 0 and atl > 100) else rnd(atl)),
            "atl_change_percentage": atl_pct if i == 31 else round(atl_pct, 5),
            "atl_date": c["atl_date"],
            "roi": c["roi"],
            "last_updated": iso(self.last_updated(c, tick)),
        }
        if c["nulls"]:
            for key in ("high_24h", "low_24h", "price_change_24h", "price_change_percentage_24h",
                        "market_cap_change_24h", "market_cap_change_percentage_24h"):
                row[key] = None
        for key in sorted(pcp):
            v = None if c["nulls"] else 100.0 * 0.05 * unit(i, tick, 10 + PCP_KEYS.index(key))
            if key == "24h" and not c["nulls"]:
                v = (p - p24) / p24 * 100.0
            row["price_change_percentage_%s_in_currency" % key] = v
        return row

    def members(self, cat_index):
        mod = CATEGORIES[cat_index][2]
        if mod == 0:
            return set()
        return {k for k, c in enumerate(self.coins) if (c["i"] + cat_index) % mod == 0}

    def coins_list(self, include_platform):
        with self.lock:
            body = self.list_cache.get(include_platform)
            if body is None:
                out = []
                for c in sorted(self.coins, key=lambda c: c["id"]):
                    e = {"id": c["id"], "symbol": c["symbol"], "name": c["name"]}
                    if include_platform:
                        e["platforms"] = c["platforms"]
                    out.append(e)
                body = dumps(out)
                self.list_cache[include_platform] = body
            return body


def days_before_epoch(r, lo_days, hi_days):
    """A fixed past date (ath/atl dates do not move with the tick or --epoch)."""
    return EPOCH_DEFAULT - r.uniform(lo_days, hi_days) * 86400.0


class ApiError(Exception):
    def __init__(self, status, body):
        super().__init__(status)
        self.status = status
        self.body = body if isinstance(body, bytes) else dumps(body)


def need(params, key):
    v = params.get(key)
    if v is None or v == "":
        raise ApiError(422, {"error": "Missing parameter %s" % key})
    return v


def parse_precision(params):
    p = params.get("precision")
    if p is None or p == "full":
        return None
    if p.isdigit() and int(p) <= 18:
        return int(p)
    raise ApiError(422, {"error": "invalid precision"})


def parse_paging(params):
    try:
        per_page = int(params.get("per_page", "100"))
        page = int(params.get("page", "1"))
    except ValueError:
        raise ApiError(422, {"error": "invalid per_page or page"})
    per_page = max(1, min(per_page, 250))
    page = max(1, page)
    return per_page, page


class SyntheticRoutes:
    """Routes served from the synthetic universe."""

    def __init__(self, app, n, epoch):
        self.app = app
        self.u = Universe(n, epoch)
        self.u.history_reach_days = app.args.history_reach_days

    def route(self, path, params):
        u = self.u
        tick = self.app.tick
        if path == "/ping":
            return {"gecko_says": "(V3) To the Moon!"}
        if path == "/coins/list":
            return u.coins_list(params.get("include_platform", "false") == "true")
        if path == "/coins/markets":
            return self.markets(params, tick)
        if path == "/simple/price":
            return self.simple_price(params, tick)
        if path == "/global":
            return self.global_(tick)
        if path == "/coins/categories/list":
            return [{"category_id": cid, "name": name} for cid, name, _ in CATEGORIES]
        if path == "/coins/categories":
            return self.categories(tick)
        out = cg_history.route(u, urllib.parse.unquote(path), params, RATES, ApiError)
        if out is not None:
            return out
        raise ApiError(404, NOT_FOUND_BODY)

    def markets(self, params, tick):
        u = self.u
        vs = need(params, "vs_currency").lower()
        if vs not in RATES:
            raise ApiError(422, {"error": "invalid vs_currency"})
        per_page, page = parse_paging(params)
        precision = parse_precision(params)
        order = params.get("order", "market_cap_desc")
        st = u.state(tick)
        if order not in st["order"]:
            raise ApiError(422, {"error": "invalid order"})
        pcp = []
        for key in params.get("price_change_percentage", "").split(","):
            key = key.strip()
            if key:
                if key not in PCP_KEYS:
                    raise ApiError(422, {"error": "invalid price_change_percentage"})
                pcp.append(key)
        keys = self.app.plan.churned(st["order"][order], order)
        if params.get("ids"):
            wanted = {u.by_id[x]["i"] - 1 for x in params["ids"].split(",") if x in u.by_id}
            keys = [k for k in keys if k in wanted]
        if params.get("category"):
            cat = [j for j, c in enumerate(CATEGORIES) if c[0] == params["category"]]
            if not cat:
                raise ApiError(404, {"error": "category not found"})
            members = u.members(cat[0])
            keys = [k for k in keys if k in members]
        start = (page - 1) * per_page
        return [u.market_row(k, tick, vs, pcp, precision) for k in keys[start:start + per_page]]

    def simple_price(self, params, tick):
        u = self.u
        ids = need(params, "ids")
        vs_list = need(params, "vs_currencies").split(",")
        precision = parse_precision(params)
        flags = {f: params.get(f, "false") == "true" for f in (
            "include_market_cap", "include_24hr_vol", "include_24hr_change",
            "include_last_updated_at")}
        st = u.state(tick)
        out = {}
        for cid in ids.split(","):
            c = u.by_id.get(cid)
            if c is None:
                continue  # unknown ids are silently dropped
            k = c["i"] - 1
            e = {}
            for vs in vs_list:
                if vs not in RATES:
                    continue  # unknown currencies too: {"bitcoin":{}}
                rate = RATES[vs]
                p = st["prices"][k] * rate
                e[vs] = p if precision is None else round(p, precision)
                if flags["include_market_cap"]:
                    e[vs + "_market_cap"] = st["caps"][k] * rate
                if flags["include_24hr_vol"]:
                    e[vs + "_24h_vol"] = st["vols"][k] * rate
                if flags["include_24hr_change"]:
                    p24 = st["prices24"][k] * rate
                    e[vs + "_24h_change"] = None if c["nulls"] else (p - p24) / p24 * 100.0
            if flags["include_last_updated_at"]:
                e["last_updated_at"] = int(u.last_updated(c, tick))
            out[cid] = e
        return out

    def global_(self, tick):
        u = self.u
        st = u.state(tick)
        total_cap = float(sum(st["caps"]))
        total_vol = float(sum(st["vols"]))
        top = st["order"]["market_cap_desc"][:10]
        pct = {}
        for k in top:
            sym = u.coins[k]["symbol"] or u.coins[k]["id"]
            pct.setdefault(sym, st["caps"][k] / total_cap * 100.0)
        cap24 = float(sum(int(c["price0"] * c["circ"]) for c in u.coins if not c["zero_cap"]))
        return {"data": {
            "active_cryptocurrencies": u.n,
            "upcoming_icos": 0,
            "ongoing_icos": 49,
            "ended_icos": 3376,
            "markets": 1297,
            "total_market_cap": {vs: total_cap * r for vs, r in CURRENCIES},
            "total_volume": {vs: total_vol * r for vs, r in CURRENCIES},
            "market_cap_percentage": pct,
            "market_cap_change_percentage_24h_usd": (total_cap - cap24) / cap24 * 100.0,
            "updated_at": int(u.epoch + tick * TICK_SECONDS),
        }}

    def categories(self, tick):
        u = self.u
        st = u.state(tick)
        out = []
        for j, (cid, name, _) in enumerate(CATEGORIES):
            members = sorted(u.members(j), key=lambda k: -st["caps"][k])
            if not members:
                out.append({"id": cid, "name": name, "market_cap": None,
                            "market_cap_change_24h": None, "content": "",
                            "top_3_coins_id": [], "top_3_coins": [], "volume_24h": None,
                            "updated_at": None})
                continue
            cap = float(sum(st["caps"][k] for k in members))
            out.append({
                "id": cid, "name": name, "market_cap": cap,
                # an int now and then, and a null content, as on the real list
                "market_cap_change_24h": (int(3.0 * unit(j, tick, 99)) if j % 4 == 1
                                          else 3.0 * unit(j, tick, 99)),
                "content": None if j == 9 else "Synthetic category %s." % name,
                "top_3_coins_id": [u.coins[k]["id"] for k in members[:3]],
                "top_3_coins": [u.coins[k]["image"] for k in members[:3]],
                "volume_24h": float(sum(st["vols"][k] for k in members)),
                "updated_at": iso(u.epoch + tick * TICK_SECONDS),
            })
        out.sort(key=lambda e: -(e["market_cap"] or 0.0))
        return out


# Fixture mode: (route, params that must match, file under coingecko/). The entry that
# matches the most parameters wins; ties go to the earlier entry.
FIXTURE_MAP = [
    ("/coins/list", {"include_platform": "true"}, "coins_list_include_platform_2024-01_indent2.json"),
    ("/coins/list", {}, "coins_list_2022-05.json"),
    ("/coins/markets", {"vs_currency": "usd", "ids": "bitcoin"}, "coins_markets_ids-bitcoin_usd_2021-05.json"),
    ("/coins/markets", {"vs_currency": "myr", "ids": "bitcoin"}, "coins_markets_ids-bitcoin_myr_2021-05.json"),
    ("/coins/markets", {"vs_currency": "eth", "ids": "bitcoin, ethereum"}, "coins_markets_ids-bitcoin-ethereum_eth_2021-05.json"),
    ("/coins/markets", {"vs_currency": "eur"}, "coins_markets_eur_per_page30_2025-03-04_indent4.json"),
    ("/coins/markets", {"vs_currency": "usd"}, "coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json"),
    ("/simple/price", {"ids": "bitcoin", "vs_currencies": "usd"}, "simple_price_bitcoin_usd_2021-05.json"),
    ("/simple/price", {"ids": "bitcoin, ethereum, litecoin", "vs_currencies": "usd, myr, eth"}, "simple_price_ids_with_spaces_partial.json"),
    ("/simple/price", {"ids": "bitcoin", "vs_currencies": "ethereum"}, "simple_price_unknown_vs_currency_empty_object.json"),
    ("/global", {}, "global_2025-04-07.json"),
    ("/coins/categories/list", {}, "coins_categories_list_2021.json"),
    ("/coins/categories", {}, "coins_categories_2025-03-04_indent4.json"),
    ("/coins/bitcoin/ohlc", {"vs_currency": "usd", "days": "7"}, "ohlc_bitcoin_usd_days7_2021-05.json"),
    ("/coins/bitcoin/ohlc", {"vs_currency": "myr", "days": "30"}, "ohlc_bitcoin_myr_days30_2021-05.json"),
    ("/coins/bitcoin/market_chart", {"vs_currency": "usd", "days": "1"}, "market_chart_bitcoin_usd_days1_5min_2021-05.json"),
    ("/coins/bitcoin/market_chart", {"vs_currency": "usd", "days": "30"}, "market_chart_bitcoin_usd_days30_hourly_2021-05.json"),
    ("/coins/bitcoin/market_chart", {"vs_currency": "usd", "days": "90"}, "market_chart_bitcoin_usd_days90_daily_2021-05.json"),
    ("/coins/bitcoin/market_chart/range", {"vs_currency": "usd"}, "market_chart_range_1y_daily_365rows_2020-02-20_tabs.json"),
]
# The page that /coins/markets?vs_currency=usd&ids=... and /simple/price fall back to.
FIXTURE_USD_PAGE = "coins_markets_usd_p1_250_precision-full_pcp-1h-24h-1y_2025-02-09.json"


class FixtureRoutes:
    """Routes served from recorded responses (bytes as recorded)."""

    def __init__(self, app, fixtures_dir):
        self.app = app
        d = fixtures_dir
        if os.path.isdir(os.path.join(d, "coingecko")):
            d = os.path.join(d, "coingecko")
        self.dir = d
        self.files = {}
        self.lock = threading.Lock()
        for _, _, name in FIXTURE_MAP:
            if not os.path.exists(os.path.join(d, name)):
                raise SystemExit("fakeapi: fixture %s not found in %s" % (name, d))

    def load(self, name):
        with self.lock:
            body = self.files.get(name)
            if body is None:
                with open(os.path.join(self.dir, name), "rb") as fh:
                    body = fh.read()
                self.files[name] = body
            return body

    def usd_rows(self):
        return json.loads(self.load(FIXTURE_USD_PAGE))

    def simple_price_from_page(self, params):
        """/simple/price for ids no recording answers, from the 2025 page's rows: the price,
        and as the real API does when asked (include_*=true), market cap, 24h volume, 24h
        change and last_updated_at (the row's last_updated, so that asking again gives the
        same rows). Only usd is known; other currencies leave {} as the real API does."""
        rows = {r["id"]: r for r in self.usd_rows()}
        vs_list = [v.strip() for v in params["vs_currencies"].split(",")]
        flag = lambda f: params.get(f, "false") == "true"
        out = {}
        for cid in (i.strip() for i in params["ids"].split(",")):
            r = rows.get(cid)
            if r is None:
                continue  # unknown ids are dropped
            e = {}
            if "usd" in vs_list:
                e["usd"] = r["current_price"]
                if flag("include_market_cap"):
                    e["usd_market_cap"] = r["market_cap"]
                if flag("include_24hr_vol"):
                    e["usd_24h_vol"] = r["total_volume"]
                if flag("include_24hr_change"):
                    e["usd_24h_change"] = r["price_change_percentage_24h"]
                if flag("include_last_updated_at") and r.get("last_updated"):
                    e["last_updated_at"] = int(iso_seconds(r["last_updated"]))
            out[cid] = e
        return out

    def route(self, path, params):
        if path == "/ping":
            return {"gecko_says": "(V3) To the Moon!"}
        if path == "/coins/markets":
            need(params, "vs_currency")
            per_page, page = parse_paging(params)
            if page > 1:
                return []
        if path == "/simple/price":
            need(params, "ids")
            need(params, "vs_currencies")
        if path.endswith("/ohlc") and (not params.get("vs_currency") or not params.get("days")):
            raise ApiError(500, self.load("error_500_ohlc_missing_params.json"))
        best, best_score = None, -1
        for route, want, name in FIXTURE_MAP:
            if route != path:
                continue
            if all(params.get(k) == v for k, v in want.items()) and len(want) > best_score:
                best, best_score = name, len(want)
        # Queries no recording answers: derive a correctly shaped answer from the 2025 page.
        if path == "/coins/markets" and params.get("ids") and (
                best is None or best_score < 2) and params["vs_currency"] == "usd":
            ids = set(params["ids"].split(","))
            return [r for r in self.usd_rows() if r["id"] in ids]
        if path == "/simple/price" and best_score < 2:
            return self.simple_price_from_page(params)
        if best is None:
            raise ApiError(404, NOT_FOUND_BODY)
        return self.load(best)



# ---- plans: keys on the wrong host, GET /key, the month's credits, "Throttled", rank churn --
# (issue 13). Options --api-host, --monthly-credits, --credits-used, --key-rate,
# --throttled-text, --churn-ranks; control call /_control/credits. README, "Plans".

# CoinGecko's answers to a key sent to the other plan's host (its error codes 10010/10011,
# https://docs.coingecko.com/docs/errors-and-rate-limits).
ERR_PRO_KEY_ON_PUBLIC = (
    b'{"status":{"error_code":10010,"error_message":"If you are using Pro API key, please '
    b'change your root URL from api.coingecko.com to pro-api.coingecko.com"}}')
ERR_DEMO_KEY_ON_PRO = (
    b'{"status":{"error_code":10011,"error_message":"If you are using Demo API key, please '
    b'change your root URL from pro-api.coingecko.com to api.coingecko.com"}}')
# The month's credits used up: a 429 in CoinGecko's status shape. (Modelled on its rate-limit
# body; CoinGecko does not document the exact text.)
ERR_CREDITS_BODY = (
    b'{"status":{"error_code":429,"error_message":"You have exceeded your monthly API call '
    b'credits. Please upgrade your plan at https://www.coingecko.com/en/api/pricing or wait '
    b'for the next billing cycle."}}')
# What the public API's edge answers to a keyless client over its limit: plain text.
THROTTLED_BODY = b"Throttled"
# /simple/supported_vs_currencies: the codes the real API lists (2025), the synthetic
# universe's currencies among them.
SUPPORTED_VS = sorted(set(RATES) | {
    "ltc", "bch", "eos", "xrp", "xlm", "link", "dot", "yfi", "aed", "ars", "bdt", "bhd", "bmd",
    "brl", "clp", "czk", "dkk", "gel", "hkd", "huf", "ils", "kwd", "lkr", "mmk", "mxn", "ngn",
    "nok", "nzd", "php", "pkr", "pln", "rub", "sar", "sek", "sgd", "thb", "try", "twd", "uah",
    "vef", "vnd", "zar", "xdr", "xag", "xau", "bits", "sats"})


class PlanModel:
    """The account behind the key: which host this fake stands for, the month's credits and
    how many are used, the rate limit /key reports."""

    def __init__(self, args):
        self.host = getattr(args, "api_host", None)
        self.credits = getattr(args, "monthly_credits", 0) or 0
        self.used = getattr(args, "credits_used", 0) or 0
        self.rate = getattr(args, "key_rate", 0) or 0
        self.throttled_text = getattr(args, "throttled_text", False)
        self.churn = getattr(args, "churn_ranks", False)
        self.churn_seq = 0
        self.lock = threading.Lock()

    def gate(self, headers, route):
        """None when the request may be served (and then it counts against the month), else
        (status, body, headers, content type)."""
        demo = headers.get("x-cg-demo-api-key")
        pro = headers.get("x-cg-pro-api-key")
        if self.host == "public" and pro:
            return 401, ERR_PRO_KEY_ON_PUBLIC, None, None
        if self.host == "pro" and demo:
            return 401, ERR_DEMO_KEY_ON_PRO, None, None
        with self.lock:
            if self.credits and self.used >= self.credits:
                return 429, ERR_CREDITS_BODY, None, None
            self.used += 1
        return None

    def key_answer(self):
        """GET /key, after gate() counted it."""
        with self.lock:
            credits, used, rate = self.credits, self.used, self.rate
        return {"plan": "Basic", "rate_limit_request_per_minute": rate,
                "monthly_call_credit": credits, "current_total_monthly_calls": used,
                "current_remaining_monthly_calls": max(0, credits - used)}

    def rate_limited_body(self, default):
        """The 429 body of the per-minute limit: the API's JSON, or the edge's plain text."""
        if self.throttled_text:
            return THROTTLED_BODY, "text/plain"
        return default, None

    def churned(self, keys, order):
        """Rank churn: every market_cap_desc request sees the ranks reshuffled (coins cross
        page boundaries between the pages of one walk), as on the real API during a slow
        walk. Other orders are stable."""
        if not self.churn or order != "market_cap_desc":
            return keys
        with self.lock:
            self.churn_seq += 1
            seq = self.churn_seq
        keys = list(keys)
        random.Random(seq).shuffle(keys)
        return keys

    def control(self, method, req):
        with self.lock:
            if method == "POST":
                if "used" in req:
                    self.used = int(req["used"])
                if "credits" in req:
                    self.credits = int(req["credits"])
                if "rate" in req:
                    self.rate = int(req["rate"])
            return 200, {"used": self.used, "credits": self.credits, "rate": self.rate}


def add_plan_arguments(p):
    p.add_argument("--api-host", choices=("public", "pro"),
                   help="stand for api.coingecko.com (a pro key is refused, 10010) or "
                        "pro-api.coingecko.com (a demo key is refused, 10011)")
    p.add_argument("--monthly-credits", type=int, default=0,
                   help="requests the month allows; past it every request answers 429")
    p.add_argument("--credits-used", type=int, default=0, help="requests the month has used")
    p.add_argument("--key-rate", type=int, default=0,
                   help="rate_limit_request_per_minute that GET /key reports")
    p.add_argument("--throttled-text", action="store_true",
                   help="the per-minute limit answers 429 with a plain-text 'Throttled' body")
    p.add_argument("--churn-ranks", action="store_true",
                   help="reshuffle the market_cap_desc order on every /coins/markets request")


class RateLimit:
    """Sliding-window limit: at most `count` served requests in any `window` seconds.
    A request older than window - slack has left the window; the slack absorbs scheduling
    jitter so that a client pacing itself exactly at the limit is not refused."""

    def __init__(self, count, window, slack):
        self.count = count
        self.window = window
        self.slack = slack
        self.times = deque()

    def check(self, now):
        """Returns None when the request may be served (and counts it), else the seconds
        the client should wait (Retry-After)."""
        if not self.count:
            return None
        edge = self.window - self.slack
        while self.times and now - self.times[0] >= edge:
            self.times.popleft()
        if len(self.times) >= self.count:
            return max(1, int(math.ceil(self.times[0] + edge - now)))
        self.times.append(now)
        return None


def parse_rate(s):
    """'30/min' | '5/s' | '100/h' | '30' (per minute) -> (count, window seconds)."""
    if s is None or s in ("", "0", "off"):
        return 0, 60.0
    if "/" in s:
        n, unit_ = s.split("/", 1)
        window = {"s": 1.0, "sec": 1.0, "second": 1.0, "min": 60.0, "m": 60.0, "minute": 60.0,
                  "h": 3600.0, "hour": 3600.0}.get(unit_.strip())
        if window is None:
            raise ValueError("bad rate unit in %r" % s)
        return int(n), window
    return int(s), 60.0


class App:
    """Shared state: routes, faults, rate limit, request log. One lock guards it."""

    def __init__(self, args, routes=None):
        """`routes` (for the other APIs' fakes, which import this module): a function of the
        App that returns the routes object; default the CoinGecko routes."""
        self.args = args
        self.lock = threading.Lock()
        self.tick = 0
        self.faults = []
        self.log = []
        self.seq = 0
        self.conn_seq = 0
        count, window = parse_rate(args.rate_limit)
        self.rate_initial = (count, window)
        self.rate = RateLimit(count, window, args.rate_slack_ms / 1000.0)
        self.log_file = open(args.log, "a", encoding="utf-8") if args.log else None
        self.plan = PlanModel(args)
        self.prerendered = {}
        self.prerendered_bytes = 0
        if routes:
            self.routes = routes(self)
        elif args.universe:
            epoch = int(time.time()) if args.epoch == "now" else int(args.epoch or EPOCH_DEFAULT)
            self.routes = SyntheticRoutes(self, args.universe, epoch)
        else:
            fixtures = args.fixtures or os.path.join(
                os.path.dirname(os.path.abspath(__file__)), "..", "fixtures")
            self.routes = FixtureRoutes(self, fixtures)

    # --prerender: the universe's answers kept by (tick, route, query), so that a benchmark
    # measures its client, not this stand-in's Python building the same page again.
    PRERENDER_ROUTES = ("/coins/list", "/coins/markets", "/global", "/simple/price",
                        "/coins/categories", "/coins/categories/list")
    PRERENDER_MAX_BYTES = 512 << 20

    def prerender_key(self, route, params):
        """The cache key of an answer, or None when it is not to be kept (no --prerender, not
        the universe, rank churn, which differs on every request, or another route)."""
        if (not getattr(self.args, "prerender", False) or not getattr(self.args, "universe", 0)
                or self.plan.churn or route not in self.PRERENDER_ROUTES):
            return None
        return (self.tick, route, tuple(sorted(params.items())))

    def keep_prerendered(self, key, body):
        with self.lock:
            if self.prerendered_bytes + len(body) > self.PRERENDER_MAX_BYTES:
                self.prerendered.clear()
                self.prerendered_bytes = 0
            if key not in self.prerendered:
                self.prerendered[key] = body
                self.prerendered_bytes += len(body)

    def next_conn(self):
        with self.lock:
            self.conn_seq += 1
            return self.conn_seq

    def take_fault(self, route, path, params=None):
        with self.lock:
            for f in self.faults:
                m = f.get("match", "")
                want = f.get("params") or {}
                if any((params or {}).get(k) != str(v) for k, v in want.items()):
                    continue
                if route.startswith(m) or path.startswith(m):
                    if f.get("skip", 0) > 0:  # let this many matching requests through first
                        f["skip"] -= 1
                        continue
                    f["remaining"] -= 1
                    if f["remaining"] <= 0:
                        self.faults.remove(f)
                    return dict(f)
        return None

    def add_log(self, entry):
        with self.lock:
            self.seq += 1
            entry["seq"] = self.seq
            self.log.append(entry)
            if len(self.log) > self.args.log_keep:
                del self.log[:len(self.log) - self.args.log_keep]

    def record(self, entry, status, nbytes):
        """Completes a log entry with what is about to be sent, before a byte of it goes out:
        a client that has its answer always finds the entry complete, in memory and (flushed)
        in the --log file. So t_done_mono is the time the answer was ready to be written; the
        client cannot have seen any of it earlier."""
        with self.lock:
            if entry["t_done_mono"] is not None:
                return
            entry["status"] = status
            entry["bytes"] = nbytes
            entry["t_done_mono"] = time.monotonic()
            if self.log_file:
                self.log_file.write(json.dumps(entry) + "\n")
                self.log_file.flush()

    # ---- control API -----------------------------------------------------------------
    def control(self, method, path, params, body):
        name = path[len(CONTROL):].strip("/")
        try:
            req = json.loads(body) if body else {}
        except ValueError:
            return 400, {"error": "body is not JSON"}
        if name == "credits":
            return self.plan.control(method, req)
        if name == "faults" and method == "POST":
            items = req.get("faults", req) if isinstance(req, dict) else req
            if isinstance(items, dict):
                items = [items]
            queued = []
            for f in items:
                kind = f.get("kind", "status")
                if kind not in ("status", "delay", "truncate", "html", "reset", "big", "rewrite",
                                "extend"):
                    return 400, {"error": "unknown fault kind %r" % kind}
                f = dict(f)
                f["kind"] = kind
                f["remaining"] = int(f.get("count", 1))
                queued.append(f)
            with self.lock:
                self.faults.extend(queued)
                pending = len(self.faults)
            return 200, {"queued": len(queued), "pending": pending}
        if name == "faults" and method == "GET":
            with self.lock:
                return 200, {"faults": list(self.faults)}
        if name == "faults" and method == "DELETE":
            with self.lock:
                self.faults = []
            return 200, {"ok": True}
        if name == "log" and method == "GET":
            since = int(params.get("since", "0") or 0)
            with self.lock:
                k = bisect.bisect_right([e["seq"] for e in self.log], since) if since else 0
                # Copies taken under the lock: handler threads complete entries in place.
                return 200, {"requests": [dict(e) for e in self.log[k:]], "last_seq": self.seq}
        if name == "reset" and method == "POST":
            with self.lock:
                self.faults = []
                self.log = []
                self.rate.times.clear()
                if req.get("all"):
                    self.tick = 0
                    self.rate.count, self.rate.window = self.rate_initial
            return 200, {"ok": True}
        if name == "tick" and method == "POST":
            with self.lock:
                self.tick += int(req.get("n", 1))
                return 200, {"tick": self.tick}
        if name == "ratelimit" and method == "POST":
            with self.lock:
                if "per_min" in req:
                    self.rate.count = int(req["per_min"] or 0)
                    self.rate.window = 60.0
                if "count" in req:
                    self.rate.count = int(req["count"] or 0)
                    self.rate.window = float(req.get("period_s", 60.0))
                if "slack_ms" in req:
                    self.rate.slack = float(req["slack_ms"]) / 1000.0
                self.rate.times.clear()
                return 200, {"count": self.rate.count, "window_s": self.rate.window}
        if name == "state" and method == "GET":
            with self.lock:
                return 200, {"tick": self.tick, "requests": len(self.log), "last_seq": self.seq,
                             "faults_pending": len(self.faults),
                             "rate_count": self.rate.count, "rate_window_s": self.rate.window,
                             "connections": self.conn_seq,
                             "mode": "universe" if self.args.universe else "fixtures"}
        return 404, {"error": "unknown control call %s %s" % (method, path)}


class Handler(BaseHTTPRequestHandler):
    """The API side of the server. Another API's fake subclasses it and sets these: the
    path prefix of the API, its 429, 404 and 401 bodies, and which request headers carry a key
    (key_ok)."""
    prefix = PREFIX
    err_429_body = ERR_429_BODY
    not_found_body = NOT_FOUND_BODY
    unauthorized_body = b'{"status":{"error_code":10002,"error_message":"API Key Missing"}}'
    protocol_version = "HTTP/1.1"
    server_version = "fakeapi/1"
    sys_version = ""

    def setup(self):
        super().setup()
        # Headers and body go out in separate writes; without NODELAY Nagle and the client's
        # delayed ACK would add 40 ms to every keep-alive request.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.conn_id = self.server.app.next_conn()

    def log_message(self, fmt, *args):
        if self.server.app.args.verbose:
            sys.stderr.write("fakeapi: %s\n" % (fmt % args))

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_DELETE(self):
        self.dispatch("DELETE")

    def do_CONNECT(self):
        """A proxy tunnel request (a client whose https_proxy points here): logged, refused."""
        app = self.server.app
        entry = {"conn": self.conn_id, "method": "CONNECT", "path": self.path, "route": None,
                 "query": "", "params": {},
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "http_version": self.request_version, "t_mono": time.monotonic(),
                 "t_wall": time.time(), "t_done_mono": None, "status": None, "fault": None,
                 "bytes": 0}
        app.add_log(entry)
        try:
            self.answer(entry, 502, dumps({"error": "fakeapi is not a proxy"}))
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            pass
        self.close_connection = True

    def read_body(self):
        n = int(self.headers.get("Content-Length", "0") or 0)
        return self.rfile.read(n) if n > 0 else b""

    def dispatch(self, method):
        app = self.server.app
        t_mono, t_wall = time.monotonic(), time.time()
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        params = {k: v[0] for k, v in urllib.parse.parse_qs(
            url.query, keep_blank_values=True).items()}
        body = self.read_body()
        try:
            if path.startswith(CONTROL):
                status, obj = app.control(method, path, params, body)
                self.send(status, dumps(obj))
                return
            self.serve_api(app, method, path, url.query, params, t_mono, t_wall)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.close_connection = True

    def serve_api(self, app, method, path, query, params, t_mono, t_wall):
        route = path[len(self.prefix):] if path.startswith(self.prefix + "/") else None
        entry = {"conn": self.conn_id, "method": method, "path": path, "route": route,
                 "query": query, "params": params,
                 "headers": {k.lower(): v for k, v in self.headers.items()},
                 "http_version": self.request_version,
                 "t_mono": t_mono, "t_wall": t_wall, "t_done_mono": None,
                 "status": None, "fault": None, "bytes": 0}
        app.add_log(entry)
        try:
            if self.too_long(app, route, params):
                self.answer(entry, 414, ERR_414_BODY, ctype="text/html")
                return
            fault = app.take_fault(route or "", path, params)
            if fault:
                entry["fault"] = fault["kind"]
                self.apply_fault(app, fault, route, params, entry)
                return
            if app.args.require_key and not self.key_ok(app.args.require_key):
                self.answer(entry, 401, self.unauthorized_body)
                return
            with app.lock:
                wait = app.rate.check(time.monotonic())
            if wait is not None:
                body, ctype = app.plan.rate_limited_body(self.err_429_body)
                self.answer(entry, 429, body, {"Retry-After": str(wait)}, ctype)
                return
            refused = app.plan.gate(entry["headers"], route)
            if refused:
                self.answer(entry, refused[0], refused[1], refused[2], refused[3])
                return
            if route == "/key" and method == "GET":
                self.answer(entry, 200, dumps(app.plan.key_answer()))
                return
            if route == "/simple/supported_vs_currencies" and method == "GET":
                self.answer(entry, 200, dumps(SUPPORTED_VS))
                return
            status, body = self.route(app, method, route, params)
            self.answer(entry, status, body)
        finally:
            # Only an answer that failed before it was recorded (a bug in a route) gets here
            # unrecorded; record it as it stands so the log still shows the request.
            app.record(entry, entry["status"], entry["bytes"])

    def too_long(self, app, route, params):
        """--max-url-bytes: the request target (path and query) is longer; --max-ids: a
        /simple/price asks for more ids. Both answer 414, before anything else, as an edge in
        front of the API would."""
        if app.args.max_url_bytes and len(self.path) > app.args.max_url_bytes:
            return True
        if app.args.max_ids and route == "/simple/price":
            return len(params.get("ids", "").split(",")) > app.args.max_ids
        return False

    def key_ok(self, key):
        return key in (self.headers.get("x-cg-demo-api-key"), self.headers.get("x-cg-pro-api-key"))

    def route(self, app, method, route, params):
        if method != "GET" or route is None:
            return 404, self.not_found_body
        key = app.prerender_key(route, params)
        if key is not None:
            body = app.prerendered.get(key)
            if body is not None:
                return 200, body
        try:
            out = app.routes.route(route, params)
        except ApiError as e:
            return e.status, e.body
        if isinstance(out, ApiError):
            return out.status, out.body
        body = out if isinstance(out, bytes) else dumps(out)
        if key is not None:
            app.keep_prerendered(key, body)
        return 200, body

    def apply_fault(self, app, f, route, params, entry):
        if f.get("delay") or f["kind"] == "delay":
            time.sleep(float(f.get("delay", f.get("seconds", 0))))
        kind = f["kind"]
        extra = dict(f.get("headers", {}))
        if f.get("retry_after") is not None:
            extra["Retry-After"] = str(f["retry_after"])
        if f.get("retry_after_in") is not None:
            extra["Retry-After"] = email.utils.formatdate(
                time.time() + float(f["retry_after_in"]), usegmt=True)
        if kind == "delay":
            status, body = self.route(app, "GET", route, params)
            self.answer(entry, status, body, extra)
        elif kind == "status":
            status = int(f.get("status", 500))
            body = f.get("body")
            if body is None:
                body = self.err_429_body if status == 429 else dumps(
                    {"error": "injected %d" % status})
            elif not isinstance(body, str):
                body = dumps(body)
            if isinstance(body, str):
                body = body.encode("utf-8")
            self.answer(entry, status, body, extra, f.get("content_type"))
        elif kind == "html":
            body = f.get("body")
            body = (HTML_DENIED if f.get("page") == "access_denied" else HTML_1015) \
                if body is None else body.encode("utf-8")
            self.answer(entry, int(f.get("status", 200)), body, extra, "text/html; charset=UTF-8")
        elif kind == "truncate":
            status, body = self.route(app, "GET", route, params)
            app.record(entry, status, len(body) // 2)
            self.send(status, body, headers=extra, truncate=True)
        elif kind == "big":
            n = int(f.get("bytes", 1 << 20))
            elem = str(f.get("element", "0")).encode()
            body = b"[" + (elem + b",") * max(0, (n - 2 - len(elem)) // (len(elem) + 1)) + elem + b"]"
            body = body + b" " * max(0, n - len(body))
            if f.get("chunked"):
                app.record(entry, 200, len(body))
                self.send_chunked(200, body)
            else:
                self.answer(entry, 200, body, extra)
        elif kind == "reset":
            app.record(entry, 0, 0)
            self.reset()
        elif kind == "rewrite":
            # The answer to the same route with some parameters replaced: {"page": "1"} is a
            # cache in front of the API that ignores `page`.
            q = dict(params)
            q.update({k: str(v) for k, v in (f.get("set_params") or {}).items()})
            status, body = self.route(app, "GET", route, q)
            self.answer(entry, status, body, extra)
        elif kind == "extend":
            # The normal answer with elements appended (an array) or keys merged (an object).
            status, body = self.route(app, "GET", route, params)
            if status == 200:
                doc = json.loads(body)
                if isinstance(doc, list):
                    doc.extend(f.get("append") or [])
                elif isinstance(doc, dict):
                    doc.update(f.get("merge") or {})
                body = dumps(doc)
            self.answer(entry, status, body, extra)

    def answer(self, entry, status, body, headers=None, ctype=None):
        self.server.app.record(entry, status, len(body))
        self.send(status, body, ctype=ctype, headers=headers)

    def send(self, status, body, ctype=None, headers=None, truncate=False):
        enc = None
        if (self.server.app.args.gzip and len(body) > 512
                and "gzip" in self.headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=1)
            enc = "gzip"
        self.send_response(status)
        self.send_header("Content-Type", ctype or "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        if enc:
            self.send_header("Content-Encoding", enc)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if truncate:
            self.send_header("Connection", "close")
        self.end_headers()
        if truncate:
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.close_connection = True
            return
        self.wfile.write(body)

    def send_chunked(self, status, body):
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        step = 65536
        for k in range(0, len(body), step):
            part = body[k:k + step]
            self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def reset(self):
        """Closes the connection with a TCP RST and no answer."""
        self.close_connection = True
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                       struct.pack("ii", 1, 0))
            fd = self.connection.detach()
            os.close(fd)
        except OSError:
            pass


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        if self.app.args.verbose:
            super().handle_error(request, client_address)


def build_parser():
    p = argparse.ArgumentParser(description="Fake CoinGecko API for coingest's tests.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--port-fd", type=int, help="write the bound port to this inherited fd")
    p.add_argument("--fixtures", help="directory holding coingecko/ (default tests/fixtures)")
    p.add_argument("--universe", type=int, default=0, help="synthesise N coins")
    p.add_argument("--epoch", help="tick 0 time of the universe: unix seconds or 'now'")
    p.add_argument("--rate-limit", help="server-side limit, e.g. 30/min (default off)")
    p.add_argument("--rate-slack-ms", type=float, default=100.0,
                   help="jitter tolerance at the window edge (default 100)")
    p.add_argument("--require-key", help="answer 401 unless a key header carries this value")
    p.add_argument("--max-url-bytes", type=int, default=0,
                   help="answer 414 to a request target (path + query) longer than this")
    p.add_argument("--max-ids", type=int, default=0,
                   help="answer 414 to a /simple/price asking for more ids than this")
    p.add_argument("--history-reach-days", type=int, default=365,
                   help="market_chart/range refuses older `from` (401, code 10012); 0: no limit")
    p.add_argument("--gzip", action="store_true", help="gzip bodies over 512 bytes if accepted")
    p.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate (and --tls-key)")
    p.add_argument("--tls-key", help="the certificate's PEM private key")
    p.add_argument("--log", help="append one JSON line per API request to this file")
    p.add_argument("--log-keep", type=int, default=100000,
                   help="request log entries kept in memory (oldest dropped; default 100000)")
    p.add_argument("--no-parent-watch", action="store_true",
                   help="keep running when the parent process exits")
    p.add_argument("--prerender", action="store_true",
                   help="universe mode: keep each answer by (tick, route, query) and serve it "
                        "again from memory (for benchmarks)")
    p.add_argument("--verbose", action="store_true")
    p.add_argument("--selftest", action="store_true", help="run built-in checks and exit")
    add_plan_arguments(p)
    return p


def make_server(args, routes=None, handler=Handler):
    app = App(args, routes)
    httpd = Server((args.host, args.port), handler)
    httpd.app = app
    if args.tls_cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(args.tls_cert, args.tls_key)
        ctx.set_alpn_protocols(["http/1.1"])
        # The handshake runs on the connection's own thread (first read), not in accept().
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True,
                                       do_handshake_on_connect=False)
    return httpd


def write_port(args, port):
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as fh:
            fh.write("%d\n" % port)
        os.rename(tmp, args.port_file)
    if args.port_fd is not None:
        os.write(args.port_fd, b"%d\n" % port)
        os.close(args.port_fd)


def watch_parent(httpd):
    ppid = os.getppid()

    def run():
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid:
                httpd.shutdown()
                return
    threading.Thread(target=run, daemon=True).start()


def serve(args, routes=None, handler=Handler):
    """Runs a server until SIGTERM/SIGINT or the parent's exit (the other fakes call this)."""
    httpd = make_server(args, routes, handler)

    def stop(signum, frame):
        threading.Thread(target=httpd.shutdown, daemon=True).start()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if not args.no_parent_watch:
        watch_parent(httpd)
    write_port(args, httpd.server_address[1])
    try:
        httpd.serve_forever(poll_interval=0.2)
    finally:
        httpd.server_close()
    return 0


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.selftest:
        return selftest(args)
    return serve(args)


# ---- self test ---------------------------------------------------------------------------

def selftest(args):
    """Starts servers on ephemeral ports and checks routes, faults, limits and the log."""
    import http.client

    def start(extra):
        a = build_parser().parse_args(extra)
        httpd = make_server(a)
        threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1},
                         daemon=True).start()
        return httpd

    def get(conn, path, method="GET", body=None):
        conn.request(method, path, body=body, headers={"x-cg-demo-api-key": "selftest-key"})
        r = conn.getresponse()
        return r.status, dict(r.getheaders()), r.read()

    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)
            print("selftest: FAIL %s" % what, file=sys.stderr)

    fx = ["--fixtures", args.fixtures] if args.fixtures else []
    srv = start(fx)
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    st, _, body = get(c, PREFIX + "/ping")
    check(st == 200 and json.loads(body)["gecko_says"], "fixtures: ping")
    st, _, body = get(c, PREFIX + "/coins/markets?vs_currency=usd&per_page=250&page=1")
    check(st == 200 and len(json.loads(body)) == 250, "fixtures: markets page 1")
    st, _, body = get(c, PREFIX + "/coins/markets?vs_currency=usd&page=2")
    check(st == 200 and json.loads(body) == [], "fixtures: markets page 2 is empty")
    st, _, body = get(c, PREFIX + "/coins/markets")
    check(st == 422 and b"vs_currency" in body, "fixtures: 422 without vs_currency")
    st, _, body = get(c, PREFIX + "/simple/price?ids=bitcoin&vs_currencies=usd")
    check(st == 200 and json.loads(body) == {"bitcoin": {"usd": 49013}}, "fixtures: simple/price")
    st, _, body = get(c, PREFIX + "/nope")
    check(st == 404, "fixtures: 404")
    get(c, CONTROL + "faults", "POST", json.dumps(
        {"faults": [{"match": "/ping", "kind": "status", "status": 429, "retry_after": 7}]}))
    st, hdr, body = get(c, PREFIX + "/ping")
    check(st == 429 and hdr.get("Retry-After") == "7" and b"error_code" in body, "fault 429")
    get(c, CONTROL + "faults", "POST", json.dumps({"match": "/ping", "kind": "html"}))
    st, hdr, body = get(c, PREFIX + "/ping")
    check(st == 200 and body == HTML_1015, "fault html")
    get(c, CONTROL + "faults", "POST", json.dumps({"match": "/global", "kind": "truncate"}))
    try:
        get(c, PREFIX + "/global")
        check(False, "fault truncate")
    except http.client.IncompleteRead:
        pass
    c.close()
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    get(c, CONTROL + "faults", "POST", json.dumps({"match": "/ping", "kind": "reset"}))
    try:
        get(c, PREFIX + "/ping")
        check(False, "fault reset")
    except (ConnectionError, http.client.RemoteDisconnected):
        pass
    c.close()
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    get(c, CONTROL + "faults", "POST", json.dumps({"match": "/ping", "kind": "big",
                                                   "bytes": 100000}))
    st, _, body = get(c, PREFIX + "/ping")
    check(st == 200 and len(body) == 100000 and len(json.loads(body)) > 1000, "fault big")
    st, _, body = get(c, CONTROL + "log")
    log = json.loads(body)["requests"]
    check(len(log) == 11 and log[0]["headers"].get("x-cg-demo-api-key") == "selftest-key",
          "log: %d entries with headers" % len(log))
    check(all(e["t_done_mono"] >= e["t_mono"] for e in log), "log: timestamps")
    get(c, CONTROL + "ratelimit", "POST", json.dumps({"per_min": 2}))
    codes = [get(c, PREFIX + "/ping")[0] for _ in range(3)]
    check(codes == [200, 200, 429], "rate limit: %r" % codes)
    get(c, CONTROL + "reset", "POST", b"{}")
    st, _, body = get(c, CONTROL + "log")
    check(json.loads(body)["requests"] == [], "reset clears the log")
    c.close()
    srv.shutdown()
    srv.server_close()

    srv = start(["--universe", "1200"])
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    st, _, body = get(c, PREFIX + "/coins/list?include_platform=true")
    lst = json.loads(body)
    check(st == 200 and len(lst) == 1200 and "platforms" in lst[0], "universe: coins/list")
    seen = []
    for page in (1, 2, 3, 4, 5, 6):
        st, _, body = get(c, PREFIX + "/coins/markets?vs_currency=usd&per_page=250&page=%d"
                          % page)
        seen.extend(r["id"] for r in json.loads(body))
    check(len(seen) == 1200 and len(set(seen)) == 1200, "universe: pages cover all coins")
    st, _, body = get(c, PREFIX + "/simple/price?ids=coin-00001,coin%2000003,nope"
                      "&vs_currencies=usd,eur&include_last_updated_at=true")
    sp = json.loads(body)
    check(set(sp) == {"coin-00001", "coin 00003"} and "eur" in sp["coin-00001"],
          "universe: simple/price")
    before = sp["coin-00001"]["last_updated_at"]
    get(c, CONTROL + "tick", "POST", b"{}")
    st, _, body = get(c, PREFIX + "/simple/price?ids=coin-00001&vs_currencies=usd"
                      "&include_last_updated_at=true")
    check(json.loads(body)["coin-00001"]["last_updated_at"] > before, "universe: tick moves")
    c.close()
    srv.shutdown()
    srv.server_close()

    srv = start(["--universe", "300", "--prerender"])
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    q = PREFIX + "/coins/markets?vs_currency=usd&per_page=250&page=1&precision=full"
    bodies = [get(c, q)[2], get(c, q)[2]]
    get(c, CONTROL + "tick", "POST", b"{}")
    bodies.append(get(c, q)[2])
    check(bodies[0] == bodies[1] and bodies[1] != bodies[2] and len(json.loads(bodies[2])) == 250,
          "prerender: the same page again, a new one after a tick")
    check(len(srv.app.prerendered) == 2, "prerender: one entry per tick and query")
    c.close()
    srv.shutdown()
    srv.server_close()

    srv = start(["--universe", "50", "--max-url-bytes", "120", "--max-ids", "3"])
    c = http.client.HTTPConnection("127.0.0.1", srv.server_address[1], timeout=10)
    q = PREFIX + "/simple/price?vs_currencies=usd&ids="
    codes = [get(c, q + "coin-00001,coin-00002,coin-00004")[0],
             get(c, q + "coin-00001,coin-00002,coin-00004,coin-00007")[0],
             get(c, PREFIX + "/coins/markets?vs_currency=usd&ids=" + "x" * 120)[0]]
    check(codes == [200, 414, 414], "414 on too many ids and on a long URL: %r" % codes)
    c.close()
    srv.shutdown()
    srv.server_close()
    print("selftest: %s" % ("ok" if not failures else "%d failure(s)" % len(failures)))
    return 0 if not failures else 1


if __name__ == "__main__":
    sys.exit(main())
