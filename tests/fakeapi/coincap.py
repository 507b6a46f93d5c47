#!/usr/bin/env python3
"""coincap: a stand-in for the CoinCap v3 REST API (rest.coincap.io/v3).

Standard library only. It is fakeapi.py's server (same options, the same /_control/ API:
faults, log, reset, tick, ratelimit, state; the same --port 0 --port-file/--port-fd and parent
watch) with CoinCap's routes under /v3 (base_url = http://127.0.0.1:PORT/v3):

  GET /v3/assets?limit=&offset=&ids=   assets by rank: {"data": [...], "timestamp": ms}
  GET /v3/assets/{id}                  one asset: {"data": {...}, "timestamp": ms}
  GET /v3/assets/{id}/history?interval=d1|h1&start=&end=
                                       {"data": [{priceUsd, time, circulatingSupply, date}],
                                       "timestamp": ms}
  GET /v2/...                          the v2 shutdown notice, HTTP 200 (the recorded body)

Every number is a JSON string (or null). tests/fakeapi/README.md ("CoinCap") says what is
recorded, what is synthetic, and which answers are this stand-in's own choice because no
recording of CoinCap's was found (the 401, 429, 404 and out-of-credits bodies).
"""
import json
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fakeapi  # noqa: E402
from fakeapi import ApiError, dumps, unit  # noqa: E402

MAX_LIMIT = 2000
INTERVALS = {"m1": 60, "m5": 300, "m15": 900, "m30": 1800, "h1": 3600, "h2": 7200,
             "h6": 21600, "h12": 43200, "d1": 86400}
# Bodies no recording shows; shaped like v2's documented errors ({"error": "..."}).
ERR_429 = b'{"error":"Too many requests, please slow down"}'
ERR_401 = b'{"error":"Unauthorized: a valid API key is required (Authorization: Bearer KEY)"}'
ERR_CREDITS = {"error": "API credit limit reached for this billing period"}
NOT_FOUND = b'{"error":"Not found"}'

FIXTURE_LIST = "v2_assets_limit1000_2020-02-10_tabs.json"
FIXTURE_BITCOIN = "v3_assets_bitcoin_2026-04-06.json"
FIXTURE_V2_NOTICE = "v2_assets_deprecation_notice_2025-04-16.json"
FIXTURE_HISTORY = {("ark", "h1"): "v2_assets_ark_history_h1_24rows_2020-02-10_tabs.json",
                   ("bitcoin", "d1"):
                   "v2_assets_bitcoin_history_d1_8rows-trimmed_2021-04-12_pyliteral.json"}


def num(x):
    """A number as v3 writes it: a string with 18 decimals (binary artefacts included:
    "87711.199999999997089617"), or null."""
    return None if x is None else "%.18f" % x


def iso_ms(ms):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms // 1000)) + ".%03dZ" % (ms % 1000)


def address(i, salt):
    """The contract address fakeapi.py's universe gives coin i (salt 0: ethereum, 1: polygon),
    so that CoinCap's `tokens` and CoinGecko's `platforms` agree."""
    if salt == 0:
        return "0x%040x" % (i * 0x9E3779B97F4A7C15 % (1 << 160))
    return "0x%040x" % (i * 31337 % (1 << 160))


class CoincapRoutes:
    def __init__(self, app):
        self.app = app
        a = app.args
        base = a.fixtures or os.path.join(os.path.dirname(os.path.abspath(__file__)), "..",
                                          "fixtures")
        self.fixtures = os.path.join(base, "coincap")
        self.epoch = int(time.time()) if (a.epoch or "now") == "now" else int(a.epoch)
        self.lock = threading.Lock()
        self.credits_used = 0
        self.synthetic = bool(a.assets or a.assets_file)
        if self.synthetic:
            idents = [{"id": "coin%05d" % i, "symbol": "C%05d" % i, "name": "Coin %05d" % i,
                       "tokens": self.tokens(i)} for i in range(1, (a.assets or 0) + 1)]
            if a.assets_file:
                with open(a.assets_file) as fh:
                    idents += json.load(fh)
            self.assets = idents
        else:
            doc = json.loads(self.load(FIXTURE_LIST))
            self.recorded_ts = doc["timestamp"]
            self.assets = []
            for row in doc["data"]:
                row = dict(row)
                row["tokens"] = {}  # v3 adds the contract addresses; v2 had none
                self.assets.append(row)
        self.index = {e["id"]: k for k, e in enumerate(self.assets)}

    @staticmethod
    def tokens(i):
        if i % 3 == 0:
            return {}
        if i % 3 == 1:
            return {"1": [address(i, 0)]}
        return {"1": [address(i, 0)], "137": [address(i, 1)]}

    def load(self, name):
        with open(os.path.join(self.fixtures, name), "rb") as fh:
            return fh.read()

    # ---- the market -----------------------------------------------------------------
    def timestamp(self):
        """The envelope's timestamp: the epoch plus a minute per tick (whole ms)."""
        return (self.epoch + 60 * self.app.tick) * 1000

    def row(self, k, tick):
        """Asset at rank k+1 (synthetic numbers, the identity as configured)."""
        e = self.assets[k]
        if not self.synthetic:
            return e
        i = k + 1
        price0 = 10 ** (4.5 - 9.0 * ((i * 0.6180339887) % 1.0))
        price = price0 * (1.0 + 0.03 * unit(i, tick, 1))
        cap = 2e12 / (i ** 1.25)
        supply = cap / price0
        out = {"id": e["id"], "rank": str(i), "symbol": e.get("symbol"), "name": e.get("name"),
               "supply": num(None if i % 11 == 6 else supply),
               "maxSupply": num(None if i % 2 == 0 else supply * 1.5),
               "marketCapUsd": num(None if i % 11 == 6 else supply * price),
               "volumeUsd24Hr": num(cap * 0.05 * (1.5 + unit(i, tick, 2))),
               "priceUsd": num(price),
               "changePercent24Hr": None if i % 7 == 3 else repr(5.0 * unit(i, tick, 3)),
               "vwap24Hr": None if i % 5 == 0 else repr(price * (1.0 + 0.01 * unit(i, tick, 4))),
               "explorer": "https://explorer.example/%s" % e["id"],
               "tokens": e.get("tokens", {})}
        return out

    def envelope(self, data):
        ts = self.timestamp() if self.synthetic else self.recorded_ts
        return {"timestamp": ts, "data": data}

    def history_price(self, k, t_ms, g):
        i = k + 1
        base = 10 ** (4.5 - 9.0 * ((i * 0.6180339887) % 1.0))
        return base * (1.0 + 0.05 * unit(i, t_ms // (g * 1000), 5))

    # ---- routes ---------------------------------------------------------------------
    def spend(self):
        """--credits: every answered API request costs one credit (this stand-in's
        simplification; CoinCap's own metering is not documented where it could be read)."""
        a = self.app.args
        if a.credits is None:
            return
        with self.lock:
            if self.credits_used >= a.credits:
                raise ApiError(a.credits_status, ERR_CREDITS)
            self.credits_used += 1

    def route(self, path, params):
        self.spend()
        parts = path.strip("/").split("/")
        if parts == ["assets"]:
            return self.list(params)
        if len(parts) == 2 and parts[0] == "assets":
            return self.one(parts[1])
        if len(parts) == 3 and parts[0] == "assets" and parts[2] == "history":
            return self.history(parts[1], params)
        raise ApiError(404, NOT_FOUND)

    def list(self, params):
        try:
            limit = int(params.get("limit", "100"))
            offset = int(params.get("offset", "0"))
        except ValueError:
            raise ApiError(400, {"error": "limit and offset must be numbers"})
        if limit > MAX_LIMIT:
            raise ApiError(400, {"error": "limit exceeds 2000"})
        limit, offset = max(1, limit), max(0, offset)
        tick = self.app.tick
        if params.get("ids"):
            keys = [self.index[x] for x in params["ids"].split(",") if x in self.index]
        else:
            keys = list(range(len(self.assets)))
        return self.envelope([self.row(k, tick) for k in keys[offset:offset + limit]])

    def one(self, aid):
        if aid == "bitcoin" and not self.synthetic:
            return self.load(FIXTURE_BITCOIN)
        if aid not in self.index:
            raise ApiError(404, {"error": "%s not found" % aid})
        return self.envelope(self.row(self.index[aid], self.app.tick))

    def history(self, aid, params):
        if aid not in self.index:
            raise ApiError(404, {"error": "%s not found" % aid})
        interval = params.get("interval")
        if not interval:
            raise ApiError(400, {"error": "missing interval"})
        if interval not in INTERVALS:
            raise ApiError(400, {"error": "use valid interval: m1, m5, m15, m30, h1, h2, h6, "
                                          "h12, d1"})
        if params.get("start") and not params.get("end"):
            raise ApiError(400, {"error": "query requires end"})
        if params.get("end") and not params.get("start"):
            raise ApiError(400, {"error": "query requires start"})
        g = INTERVALS[interval]
        now_ms = int(time.time() * 1000)
        try:
            if params.get("start"):
                start, end = int(params["start"]), int(params["end"])
            else:
                end = now_ms
                start = end - 100 * g * 1000
        except ValueError:
            raise ApiError(400, {"error": "start and end must be unix milliseconds"})
        recorded = FIXTURE_HISTORY.get((aid, interval))
        if recorded and not self.synthetic:
            doc = json.loads(self.load(recorded))
            doc["data"] = [p for p in doc["data"] if start <= p["time"] <= end]
            return doc
        k = self.index[aid]
        step = g * 1000
        first = start + (-start) % step
        # Points on the interval grid in [start, end]; the interval under way is included,
        # as the real API did (an h1 series asked at 13:07 ends with 13:00's point).
        data = []
        for t in range(first, min(end, now_ms) + 1, step):
            if self.app.args.history_gaps and self.gap(k, t):
                continue
            data.append({"priceUsd": num(self.history_price(k, t, g)), "time": t,
                         "circulatingSupply": num(1e6 * (k + 1)), "date": iso_ms(t)})
        return {"data": data, "timestamp": now_ms}

    def gap(self, k, t):
        """--history-gaps N: about 1 point in N is missing (deterministic)."""
        h = int(abs(unit(k + 1, t // 1000, 9)) * 1000003)
        return h % self.app.args.history_gaps == 0


class Handler(fakeapi.Handler):
    prefix = "/v3"
    err_429_body = ERR_429
    not_found_body = NOT_FOUND
    unauthorized_body = ERR_401

    def key_ok(self, key):
        # The retired v2 answered its notice to anyone, key or not.
        if self.path.startswith("/v2/") or self.path == "/v2":
            return True
        return self.headers.get("Authorization") == "Bearer " + key

    def route(self, app, method, route, params):
        if method == "GET" and route is None and self.path.startswith("/v2"):
            return 200, app.routes.load(FIXTURE_V2_NOTICE)
        return super().route(app, method, route, params)


def build_parser():
    p = fakeapi.build_parser()
    p.description = "Fake CoinCap v3 API for coingest's tests."
    p.add_argument("--assets", type=int, default=0,
                   help="a synthetic universe of N assets (coin00001..) instead of the "
                        "recorded 1000-asset list")
    p.add_argument("--assets-file",
                   help="JSON list of {id, symbol, name, tokens} appended to the synthetic "
                        "universe (ranked after the --assets ones)")
    p.add_argument("--credits", type=int, default=None,
                   help="answer --credits-status once this many requests have been answered")
    p.add_argument("--credits-status", type=int, default=403,
                   help="the status of the out-of-credits answer (default 403)")
    p.add_argument("--history-gaps", type=int, default=0,
                   help="leave out about 1 in N history points (0: none)")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    return fakeapi.serve(args, CoincapRoutes, Handler)


if __name__ == "__main__":
    sys.exit(main())
